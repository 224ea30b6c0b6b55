"""Finding 6: Theorem 1's sharpening rate, predicted vs observed in real training runs.

Theorem 1 (paper §3; urlvr_jax/diagnostics/theory.py): under the ideal KL-regularised majority-vote update
with π_ref := π_k, the mass p of the INITIAL majority answer of each prompt obeys
    odds(p_{k+1}) = odds(p_k) · e^{1/β}   ⇒   p_k = sigmoid(logit p_0 + k/β),
i.e. 1 − p shrinks geometrically at the same rate e^{−1/β} for every prompt, whatever p_0 and whether the
majority is right or wrong, and the accuracy ceiling is the initial majority's accuracy (maj@N).

The trainer takes GRPO steps without a KL term (rl.beta is only the nominal β of the π* diagnostics), so
the theorem's β is not a config value: one effective rate r = 1/β_eff per run is fitted (least squares in
probability space) on half of the probe prompts, and the theorem's curve with that r is used to PREDICT
the other half. What is tested is the theorem's content: one logistic rate for every prompt, independent
of p_0 and of correctness, and convergence onto the initial majority.

Data: majority-vote runs that other experiments make (reused when present, trained otherwise): the MCS
probes of mcs_vs_gt_gain.py (5 rungs, lr 3e-3, checkpoints every 10 steps) and the majority-vote run of
rise_fall.py (q0.3, lr 1e-3, checkpoints every 20 steps). At step 0 and at every checkpoint, `probe`
held-out problems × `samples` samples at T = 1.0 (fixed seed): p_i(k) = share of samples giving prompt i's
initial majority answer m_i (majority of a separate sample of the base model, first-seen tie-break, so
that p_i(0) is not inflated by the selection of the winner).

    python experiments/theorem1_rate.py          # ~6 min of probing once the runs exist
    python experiments/theorem1_rate.py --smoke  # wiring check (reuses / makes the smoke runs)

Writes <out>/theorem1_rate.{md,json}, theorem1_rate.png (mean p_k predicted vs observed, by initial
majority right / wrong), predicted_vs_observed.png (held-out prompts, all runs), rate_vs_p0.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import mcs_vs_gt_gain as F2  # noqa: E402
import numpy as np  # noqa: E402
import rise_fall as F1  # noqa: E402

NAME = "theorem1_rate"
FULL = dict(probe=64, samples=16)
SMOKE = dict(probe=8, samples=4)
RATE_GRID = np.concatenate([np.linspace(0, 0.05, 51)[:-1], np.geomspace(0.05, 20, 400)])  # per-step 1/β >= 0
SIGNED_GRID = np.concatenate([-RATE_GRID[:0:-1], RATE_GRID])  # descriptive fit: the mass may also shrink


def logistic(l0, rate, steps):
    """p_k = sigmoid(l0 + k·rate): l0 [P], steps [K] -> [P, K]."""
    from scipy.special import expit  # overflow-free sigmoid

    return expit(np.asarray(l0, float)[:, None] + rate * np.asarray(steps, float)[None, :])


def smoothed_logit(p, n: int):
    """logit of (c + 1/2)/(n + 1), c = p·n: finite at p = 0 and 1."""
    c = np.asarray(p) * n
    return np.log((c + 0.5) / (n - c + 0.5))


def fit_rate(p: np.ndarray, l0: np.ndarray, steps, grid=RATE_GRID) -> float:
    """The single rate minimising Σ (p_ik − sigmoid(l0_i + k·rate))² over the prompts given (grid + refine).
    grid=RATE_GRID: Theorem 1's family (rate = 1/β >= 0); SIGNED_GRID also allows a shrinking mass."""
    err = [np.sum((p - logistic(l0, r, steps)) ** 2) for r in grid]
    j = int(np.argmin(err))
    lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, len(grid) - 1)]
    fine = np.linspace(lo, hi, 101)
    return float(fine[int(np.argmin([np.sum((p - logistic(l0, r, steps)) ** 2) for r in fine]))])


def trajectories(rung: str, workdir: Path, problems, samples: int) -> dict:
    """Probe the base model and every checkpoint of a run: p [P, K] of the initial majority, accuracy, flips.

    The initial majority m_i comes from a SEPARATE base-model sample (seed EVAL_SEED + 2): taking it from
    the same samples that measure p_i(0) would bias p_i(0) upward (the winner of a vote is, by selection,
    over-counted) and make any later probe look like a fall. p_i(k) is then measured with seed
    EVAL_SEED + 1 at every step, step 0 included.
    """
    ck = sorted(int(q.name) for q in (workdir / "checkpoints").glob("[0-9]*") if (q / "state").exists())
    steps = [0] + ck
    base_model, tok = C.load_policy(rung)
    chooser = C.sample_problems(base_model, tok, problems, samples, seed=C.EVAL_SEED + 2)
    probes = []
    for s in steps:
        model, tok = (base_model, tok) if s == 0 else C.load_policy(rung, workdir, s)
        probes.append(C.sample_problems(model, tok, problems, samples, seed=C.EVAL_SEED + 1))
    init = [C.majority(row)[0] for row in chooser["answers"]]
    keep = [i for i, m in enumerate(init) if m is not None]
    P, N = len(keep), samples
    p = np.array([[pr["answers"][i].count(init[i]) / N for pr in probes] for i in keep])
    init_correct = np.array([chooser["correct"][i][chooser["answers"][i].index(init[i])] for i in keep], bool)

    def maj_correct(probe):
        out = []
        for i in keep:
            m = C.majority(probe["answers"][i])[0]
            out.append(m is not None and bool(probe["correct"][i][probe["answers"][i].index(m)]))
        return np.array(out, bool), [C.majority(probe["answers"][i])[0] for i in keep]

    first_ok, _ = maj_correct(probes[0])
    final_ok, final_maj = maj_correct(probes[-1])
    return {"steps": steps, "p": p, "init_correct": init_correct, "n_prompts": P, "n_dropped": len(init) - P,
            "final_majority_is_initial": float(np.mean([m == init[i] for i, m in zip(keep, final_maj)])),
            "flips_right_to_wrong": int(np.sum(first_ok & ~final_ok)),
            "flips_wrong_to_right": int(np.sum(~first_ok & final_ok)),
            "accuracy": [float(pr["correct"].mean()) for pr in probes],
            "maj_accuracy_initial": float(init_correct.mean()), "maj_accuracy_final": float(final_ok.mean()),
            "top_answer_share_final": _top_share(probes[-1])}


def _top_share(probe) -> float:
    ans = [a for row in probe["answers"] for a in row if a is not None]
    return max((ans.count(a) for a in set(ans)), default=0) / probe["correct"].size


def analyse(t: dict, samples: int) -> dict:
    steps, p = np.asarray(t["steps"], float), t["p"]
    l0 = smoothed_logit(p[:, 0], samples)
    fit, test = np.arange(len(p)) % 2 == 0, np.arange(len(p)) % 2 == 1
    rate = fit_rate(p[fit], l0[fit], steps)
    signed = fit_rate(p[fit], l0[fit], steps, SIGNED_GRID)
    pred = logistic(l0[test], rate, steps)
    obs = p[test]
    rmse = float(np.sqrt(np.mean((pred - obs)[:, 1:] ** 2)))
    rmse_static = float(np.sqrt(np.mean((obs[:, :1] - obs)[:, 1:] ** 2)))
    # RMSE that binomial sampling noise alone would give if the predicted p were exactly right
    rmse_floor = float(np.sqrt(np.mean(pred[:, 1:] * (1 - pred[:, 1:]) / samples)))
    ss_res, ss_tot = np.sum((pred - obs)[:, 1:] ** 2), np.sum((obs[:, 1:] - obs[:, 1:].mean()) ** 2)
    per_prompt = np.array([fit_rate(p[i:i + 1], l0[i:i + 1], steps, SIGNED_GRID) for i in range(len(p))])
    from scipy.stats import spearmanr

    rho = float(spearmanr(per_prompt, p[:, 0]).statistic) if np.ptp(per_prompt) > 0 else float("nan")
    ic = t["init_correct"]
    dp = p[:, 1] - p[:, 0]  # change of the initial majority's mass over the first probed interval
    return {"rate": rate, "signed_rate": signed, "first_interval": int(steps[1]),
            "dp_first_right": float(dp[ic].mean()) if ic.any() else float("nan"),
            "dp_first_wrong": float(dp[~ic].mean()) if (~ic).any() else float("nan"),
            "p_mean": p.mean(axis=0).round(4).tolist(), "rho_contraction": float(np.exp(-rate)),
            "beta_eff": (1 / rate) if rate > 0 else float("inf"),
            "rmse_test": rmse, "rmse_no_change": rmse_static, "rmse_noise_floor": rmse_floor,
            "r2_test": float(1 - ss_res / ss_tot) if ss_tot > 0 else float("nan"),
            "spearman_rate_p0": rho,
            "rate_median_init_right": float(np.median(per_prompt[ic])) if ic.any() else float("nan"),
            "rate_median_init_wrong": float(np.median(per_prompt[~ic])) if (~ic).any() else float("nan"),
            "per_prompt_rate": per_prompt.round(5).tolist(), "predicted_test": pred.round(5).tolist(),
            "observed_test": obs.round(5).tolist(), "test_init_correct": ic[test].tolist()}


def plot(out: Path, results: dict) -> list[str]:
    plt = C.pyplot()
    names = list(results)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        r = results[name]
        a, t = r["analysis"], r["traj"]
        steps = t["steps"]
        obs, pred = np.array(a["observed_test"]), np.array(a["predicted_test"])
        ic = np.array(a["test_init_correct"], bool)
        for mask, label, col in ((ic, "initial majority right", "C2"), (~ic, "initial majority wrong", "C3")):
            if mask.any():
                ax.plot(steps, obs[mask].mean(0), "o-", color=col, label=f"observed, {label} ({mask.sum()})")
                ax.plot(steps, pred[mask].mean(0), "--", color=col, label="Theorem 1, fitted rate")
        ax.plot(steps, t["accuracy"], ":", color="k", label="accuracy (all probe samples)")
        ax.axhline(t["maj_accuracy_initial"], color="gray", lw=0.8, label="ceiling = initial maj accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: 1/β_eff = {a['rate']:.3f}/step", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("mass of initial majority (held-out half)", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    for name in names:
        a = results[name]["analysis"]
        ax.scatter(np.array(a["predicted_test"])[:, 1:].ravel(), np.array(a["observed_test"])[:, 1:].ravel(), s=6,
                   alpha=0.5, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("predicted p_k (Theorem 1, rate fitted on the other half)")
    ax.set_ylabel("observed p_k")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_observed.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, name in enumerate(names):
        r = results[name]
        p0 = r["traj"]["p"][:, 0]
        rate = np.array(r["analysis"]["per_prompt_rate"])
        ic = r["traj"]["init_correct"]
        ax.scatter(p0[ic] + 0.004 * k, rate[ic], marker="o", s=10, color=f"C{k}", label=f"{name} (maj right)")
        ax.scatter(p0[~ic] + 0.004 * k, rate[~ic], marker="x", s=14, color=f"C{k}", label=f"{name} (maj wrong)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("initial majority mass p_0")
    ax.set_ylabel("per-prompt fitted rate, unconstrained (1/step)")
    ax.set_title("Theorem 1: the rate should not depend on p_0 or correctness", fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rate_vs_p0.png", dpi=110)
    plt.close(fig)
    return [f"{NAME}.png", "predicted_vs_observed.png", "rate_vs_p0.png"]


def markdown(results: dict, p: dict) -> str:
    rows = []
    for name, r in results.items():
        a, t = r["analysis"], r["traj"]
        rows.append([name, f"{r['lr']:g}", f"0–{t['steps'][-1]} ({len(t['steps'])})",
                     f"{a['dp_first_right']:+.3f} / {a['dp_first_wrong']:+.3f} (0→{a['first_interval']})",
                     " ".join(f"{x:.2f}" for x in a["p_mean"]), a["signed_rate"], a["rate"], a["rho_contraction"],
                     a["rmse_test"], a["rmse_noise_floor"], a["rmse_no_change"], a["r2_test"], a["spearman_rate_p0"],
                     f"{a['rate_median_init_right']:.3f} / {a['rate_median_init_wrong']:.3f}",
                     t["final_majority_is_initial"],
                     f"{t['flips_right_to_wrong']} / {t['flips_wrong_to_right']} of {t['n_prompts']}",
                     t["maj_accuracy_initial"], t["accuracy"][-1], t["maj_accuracy_final"],
                     t["top_answer_share_final"]])
    head = ["run", "lr", "steps probed (n)", "Δp first interval: maj right / wrong (Theorem 1: > 0)",
            "mean p_k over probes", "unconstrained fitted rate", "Theorem-1 fit 1/β_eff ≥ 0", "e^{−1/β_eff}",
            "RMSE Theorem 1 (held-out half)", "RMSE if only sampling noise", "RMSE no-change", "R²",
            "Spearman(rate_i, p0_i)", "median rate_i (unconstrained): maj right / wrong", "final maj = initial maj",
            "majority flips right→wrong / wrong→right",
            "ceiling (initial maj acc)", "final avg acc", "final maj acc", "top-answer share (final)"]
    return (f"# Finding 6: Theorem 1 rate, predicted vs observed\n\n{p['probe']} held-out probe problems × "
            f"{p['samples']} samples (T = 1.0) at step 0 and every checkpoint; the rate is fitted on the even "
            f"prompts and predicts the odd ones. Theorem 1 with the config's nominal β = 0.05 would predict a "
            f"contraction of e^-20 = 2e-9 per step (one-step collapse); the trainer has no KL term, so only the "
            f"fitted β_eff is comparable.\n\n" + C.markdown_table(head, rows))


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("--mcs-runs-dir", default=str(C.RUNS / F2.NAME), help="runs of mcs_vs_gt_gain.py (reused)")
    ap.add_argument("--rf-runs-dir", default=str(C.RUNS / F1.NAME), help="runs of rise_fall.py (reused)")
    ap.add_argument("--no-rise-fall", action="store_true", help="skip the rise_fall.py majority-vote run")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    p2, p1 = dict(F2.SMOKE if args.smoke else F2.FULL), dict(F1.SMOKE if args.smoke else F1.FULL)
    C.setup_jax()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(f"mcs {rung}", rung, F2.mcs_config(p2, rung), Path(args.mcs_runs_dir) / f"mcs_{rung}", p2["mcs_lr"])
            for rung in p2["rungs"]]
    if not args.no_rise_fall:
        jobs.append((f"rise_fall {p1['rung']}", p1["rung"], F1.run_config(p1, "majority_vote"),
                     Path(args.rf_runs_dir) / "majority_vote", p1["lr"]))
    from tqdm.auto import tqdm

    results = {}
    t_all = time.perf_counter()
    for name, rung, cfg, wd, lr in tqdm(jobs, desc=NAME, unit="run", position=0):
        C.run_training(cfg, wd, fresh=args.fresh)
        problems = C.eval_problems(rung, p["probe"])
        traj = trajectories(rung, wd, problems, p["samples"])
        results[name] = {"lr": lr, "traj": traj, "analysis": analyse(traj, p["samples"])}
    plots = plot(out, results)
    md = markdown(results, p)
    (out / f"{NAME}.md").write_text(md)
    C.write_json(out / f"{NAME}.json", {"params": p, "seed": C.SEED, "eval_seed": C.EVAL_SEED + 1, "plots": plots,
                                        "total_seconds": time.perf_counter() - t_all,
                                        "runs": {k: {"lr": v["lr"], "analysis": v["analysis"],
                                                     "trajectory": {kk: vv for kk, vv in v["traj"].items()}}
                                                 for k, v in results.items()}})
    print(md)
    return results


if __name__ == "__main__":
    main()
