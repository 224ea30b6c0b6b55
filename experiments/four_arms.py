"""The README figure: does the prior decide whether majority-vote URLVR rises or falls?

Four arms, each the main job's batch (configs/default.py: 16 prompts x 8 samples, GRPO, no KL) at the learning
rate calibrated on the controls (experiments/calibrate_lr.py: 3e-5 on ladder v2; the main job's 1e-3 drifts),
T = 1.0, for the same number of steps and seeds:
  good_mv      good prior  (--good, default ladder_v2/q0.05) + majority vote
  bad_mv       bad prior   (--bad,  default ladder_v2/q0.8) + majority vote
  good_gt      good prior + ground-truth reward (the supervised ceiling of the same budget: is the world
               learnable at this learning rate?)
  good_random  good prior + random reward (i.i.d. Bernoulli(0.5) per response, `rl.reward = "random"`): GRPO
               advantages are pure noise, so this arm is what the optimiser does without any signal (drift)

Measured (in the trainer, train.eval_every): held-out avg@8 on the same 256 problems for every arm and seed
(the ladder's held-out split; the script checks the problem ids agree), sampled at T = 1.0, top-p 1.0 — the
distribution the policy is trained on, which is what sharpening changes (the paper's T = 0.6 validation
already takes much of the sharpening gain; see the README) — at step 0 and every --eval-every steps, each
evaluation with the step as its seed, so all arms and seeds share the evaluation's random numbers at a step.
Each prior's maj@8 (from its step-0 evaluation: the majority of the same 8 samples) is drawn as a line: the
ceiling pure sharpening converges to (Theorem 1). KL(π_old ‖ π_ref) per response token (k3 and k1, on the
training rollouts, train.kl_metrics) is logged every step and reported over the last 10 steps.

Statistics. Windows as in report.json (urlvr_jax/report.py): start = the step-0 evaluation; peak window =
the 3 consecutive evaluations whose seed-mean is highest (chosen once on the point estimate, not re-chosen in
the bootstrap: mildly optimistic for the rise); final window = the last 3 evaluations; rise = peak window −
start, fall = peak window − final window, change = final window − start. Uncertainty: a crossed bootstrap
over seeds and problems (2000 draws; each draw resamples the seeds with replacement and the 256 problems
with replacement, the same draws for every arm, since arms share seeds (data order, rollout keys) and
problems); SE = the bootstrap standard deviation, CI = the 2.5-97.5% percentiles. Curves carry ±2 SE bars
from the same bootstrap. Every seed's own numbers (report.json's heldout, SE over problems) are listed too.

Decision rules (fixed before any run):
  R0 learnable:   good_gt rise has its 95% CI above 0. If not, the budget/lr cannot move accuracy and the
                  other rows are uninformative.
  R1 rise:        an arm "rises" if its rise CI is above 0 AND its rise exceeds good_random's rise by more
                  than 2 SE of the difference (the random arm's rise is the selection bias of picking the best
                  window plus drift).
  R2 fall:        an arm "falls" if its fall CI is above 0 AND its fall exceeds good_random's fall by more
                  than 2 SE of the difference (a fall that the random arm also shows is optimiser drift, not
                  reward hacking).
  R3 the prior decides (the README's claim) if good_mv and bad_mv differ in the direction of their change
     from the start: good_mv rises (R1) and bad_mv does not, or bad_mv's change (final − start) is below
     good_mv's by more than 2 SE of the difference. Otherwise: "not shown at this budget".
  Random arm sanity (review R1): good_random stays within 2 SE of the start (|change| < 2 SE) — if it does
  not, the learning rate alone moves accuracy and every fall must be read against it.

    python experiments/four_arms.py --out experiments/results/four_arms_v2 --runs-dir runs/experiments/four_arms_v2
                          # the README figure: ladder v2, lr 3e-5, 4 arms x 3 seeds x 120 steps
    python experiments/four_arms.py --good ladder/q0.1 --bad ladder/q0.8 --lr 1e-3 --eval-every 10 --seeds 1
                          # the v1 pilot at the main job's lr (results/four_arms)
    python experiments/four_arms.py --smoke               # wiring check (2 steps, 1 seed, 16 problems)

Writes <out>/four_arms.md, four_arms.json, four_arms.png; training runs under <runs-dir>/<arm>_s<seed>/
(reused when rerun with the same settings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import numpy as np  # noqa: E402

NAME = "four_arms"
ARMS = (("good_mv", "good", "majority_vote"), ("bad_mv", "bad", "majority_vote"),
        ("good_gt", "good", "ground_truth"), ("good_random", "good", "random"))
FULL = dict(steps=120, seeds=3, lr=3e-5, prompts=16, samples=8, eval_every=20, eval_problems=256, eval_k=8,
            boot=2000)
SMOKE = dict(steps=2, seeds=1, lr=1e-3, prompts=4, samples=4, eval_every=1, eval_problems=16, eval_k=2, boot=200)
WINDOW = 3
KL_TAIL = 10  # steps averaged for the final KL


def run_config(path: str, reward: str, seed: int, p: dict):
    return C.experiment_config(
        path, reward, steps=p["steps"], prompts=p["prompts"], samples=p["samples"], lr=p["lr"], seed=seed,
        **{"train.eval_every": p["eval_every"], "train.eval_limit": p["eval_problems"], "train.eval_k": p["eval_k"],
           "train.eval_temperature": 1.0, "train.eval_top_p": 1.0, "train.kl_metrics": True,
           "train.pistar_diagnostics": False, "train.checkpoint_every": p["steps"], "train.progress": False})


def read_evals(workdir: Path) -> tuple[list[int], np.ndarray, np.ndarray, list[str]]:
    """(eval steps, per-problem avg [E, P], per-problem maj [E, P], the problem ids of the step-0 evaluation)."""
    from urlvr_jax.report import read_metrics

    evals = sorted(read_metrics(workdir, "evals.jsonl"), key=lambda e: e["step"])
    if not evals or evals[0]["step"] != 0:
        raise ValueError(f"{workdir}/evals.jsonl: no step-0 evaluation")
    ids = [json.loads(ln)["id"] for ln in (workdir / "eval" / "step_000000" / "records.jsonl").open()]
    return ([e["step"] for e in evals], np.array([e["problem/avg"] for e in evals], float),
            np.array([e["problem/maj"] for e in evals], float), ids)


def train_and_read(config, workdir: Path, ref: tuple | None = None, *, fresh: bool = False,
                   continue_from: Path | None = None):
    """C.run_training(config, workdir) (a finished run of the same config is reused; continue_from: see there)
    and its held-out evaluations (read_evals). ref: (steps, ids) of an earlier run — arms are compared problem
    by problem, so a run evaluated at other steps or on other problems is an error. Returns (run_training's
    dict, steps, acc [E, P], maj [E, P], ids)."""
    got = C.run_training(config, workdir, fresh=fresh, continue_from=continue_from)
    steps, acc, maj, ids = read_evals(workdir)
    if ref is not None and (steps, ids) != tuple(ref):
        raise ValueError(f"{workdir}: evaluation steps or problems differ from the first run's; the arms must "
                         "share the held-out problems (the same task family and evaluation settings)")
    return got, steps, acc, maj, ids


def windows(curve: np.ndarray, w: int = WINDOW) -> tuple[int, int]:
    """(index of the first evaluation of the peak window, of the final window) of a mean curve [E]."""
    w = min(w, curve.size)
    means = np.convolve(curve, np.ones(w) / w, mode="valid")
    return int(np.argmax(means)), curve.size - w


def arm_stats(acc: np.ndarray, peak: int, final: int, w: int = WINDOW) -> np.ndarray:
    """[start, peak window, final window, rise, fall, change] from acc [..., E, P] (mean over the rest)."""
    a = acc.mean(axis=tuple(i for i in range(acc.ndim) if i != acc.ndim - 2))  # [E]
    start, pk, fin = a[0], a[peak:peak + w].mean(), a[final:final + w].mean()
    return np.array([start, pk, fin, pk - start, pk - fin, fin - start])


STAT_NAMES = ("start", "peak_window", "final_window", "rise", "fall", "change")


def crossed_bootstrap(accs: dict[str, np.ndarray], fn, n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """fn(name, acc) on n_boot crossed resamples: each draw picks seeds (axis 0) and problems (last axis)
    with replacement, the same indices for every array in accs ([S, E, P] each). Returns name -> [n_boot, ...]."""
    rng = np.random.default_rng(seed)
    S, _, P = next(iter(accs.values())).shape
    out: dict[str, list] = {k: [] for k in accs}
    for _ in range(n_boot):
        si, pi = rng.integers(0, S, S), rng.integers(0, P, P)
        for k, a in accs.items():
            out[k].append(fn(k, a[si][:, :, pi]))
    return {k: np.array(v) for k, v in out.items()}


def summarize_arms(accs: dict[str, np.ndarray], steps: list[int], n_boot: int, w: int = WINDOW,
                   contrasts: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Point estimates, bootstrap SE and 95% CI of STAT_NAMES per arm, the windows, the decision-rule
    comparisons against good_random, and the curves' ±2 SE. contrasts: (a, b) pairs whose change(a) − change(b)
    is added under out["contrasts"]["a-b"] with SE and 95% CI (paired: the same bootstrap draws)."""
    wins = {k: windows(a.mean(axis=(0, 2)), w) for k, a in accs.items()}
    point = {k: arm_stats(a, *wins[k], w) for k, a in accs.items()}
    boot = crossed_bootstrap(accs, lambda k, a: np.concatenate([arm_stats(a, *wins[k], w), a.mean(axis=(0, 2))]),
                             n_boot)
    out: dict[str, Any] = {"arms": {}}
    for k in accs:
        b = boot[k][:, :len(STAT_NAMES)]
        pk, fin = wins[k]
        ww = min(w, len(steps))
        out["arms"][k] = {
            "peak_window_steps": steps[pk:pk + ww], "final_window_steps": steps[fin:fin + ww],
            **{name: {"mean": float(point[k][i]), "se": float(b[:, i].std(ddof=1)),
                      "ci95": [float(np.percentile(b[:, i], 2.5)), float(np.percentile(b[:, i], 97.5))]}
               for i, name in enumerate(STAT_NAMES)},
            "curve": accs[k].mean(axis=(0, 2)).tolist(),
            "curve_se": boot[k][:, len(STAT_NAMES):].std(0, ddof=1).tolist(),
        }

    def minus(a: str, b: str, name: str, ci: bool = False) -> dict[str, Any]:
        i = STAT_NAMES.index(name)
        d = boot[a][:, i] - boot[b][:, i]
        got = {"mean": float(point[a][i] - point[b][i]), "se": float(d.std(ddof=1))}
        return {**got, "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]} if ci else got

    ref = "good_random"
    if ref in accs:
        for k in accs:
            if k != ref:
                out["arms"][k]["minus_random"] = {name: minus(k, ref, name) for name in ("rise", "fall", "change")}
    if "good_mv" in accs and "bad_mv" in accs:
        out["good_mv_minus_bad_mv_change"] = minus("good_mv", "bad_mv", "change")
    if contrasts:
        out["contrasts"] = {f"{a}-{b}": minus(a, b, "change", ci=True) for a, b in contrasts}
    return out


def decide(s: dict[str, Any]) -> dict[str, Any]:
    """The docstring's decision rules on summarize_arms' output."""
    arms = s["arms"]

    def above0(k, name):
        return arms[k][name]["ci95"][0] > 0

    def beats_random(k, name):
        c = arms[k].get("minus_random", {}).get(name)
        return c is not None and c["mean"] > 2 * c["se"]

    out: dict[str, Any] = {}
    if "good_gt" in arms:
        out["R0_learnable"] = above0("good_gt", "rise")
    for k in arms:
        if k == "good_random":
            continue
        out[f"R1_rise/{k}"] = above0(k, "rise") and beats_random(k, "rise")
        out[f"R2_fall/{k}"] = above0(k, "fall") and beats_random(k, "fall")
    if "good_random" in arms:
        ch = arms["good_random"]["change"]
        out["random_within_2se_of_start"] = abs(ch["mean"]) < 2 * ch["se"]
    if "good_mv" in arms and "bad_mv" in arms:
        d = s["good_mv_minus_bad_mv_change"]
        decided = (out["R1_rise/good_mv"] and not out["R1_rise/bad_mv"]) or d["mean"] > 2 * d["se"]
        out["R3_prior_decides"] = bool(decided)
        out["verdict"] = ("the prior decides: " if decided else "not shown at this budget: ") + (
            f"good_mv rise {'yes' if out['R1_rise/good_mv'] else 'no'}, bad_mv rise "
            f"{'yes' if out['R1_rise/bad_mv'] else 'no'}, change(good_mv) - change(bad_mv) = "
            f"{d['mean']:+.3f} ± {d['se']:.3f}")
    return out


def plot(out: Path, s: dict, steps: list[int], maj: dict[str, float], kl: dict[str, tuple], labels: dict,
         k: int) -> str:
    plt = C.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    offsets = np.linspace(-0.6, 0.6, len(s["arms"])) * (steps[1] - steps[0] if len(steps) > 1 else 1) / 10
    for i, (name, a) in enumerate(s["arms"].items()):
        color = f"C{i}"
        x = np.asarray(steps, float) + offsets[i]
        ax.errorbar(x, a["curve"], yerr=2 * np.asarray(a["curve_se"]), color=color, marker="o", markersize=3,
                    capsize=2, label=f"{labels[name]}: rise {a['rise']['mean']:+.3f}, fall {a['fall']['mean']:+.3f}")
        pk = a["peak_window_steps"]
        ax.hlines(a["peak_window"]["mean"], pk[0], pk[-1], color=color, linewidth=3, alpha=0.5)
        if name in kl:
            ax2.plot(kl[name][0], C.moving_average(kl[name][1], 5), color=color, label=labels[name])
    for j, (prior, v) in enumerate(maj.items()):
        ax.axhline(v, color="black", linestyle=":" if j == 0 else "--", linewidth=1,
                   label=f"maj@{k} of {prior} (base, T = 1)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"held-out avg@{k} (T = 1.0)")
    ax.set_title("Held-out accuracy, mean over seeds ± 2 SE (bootstrap over seeds × problems);\n"
                 "thick bar = peak window (3 evaluations)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_ylabel("KL(π_old ‖ π_ref), k3 per token (nats)")
    ax2.set_title("KL to the base model (training rollouts, 5-step mean)", fontsize=9)
    ax2.set_yscale("symlog", linthresh=0.01)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    return f"{NAME}.png"


def fmt_ci(x: dict) -> str:
    """'+0.057 ± 0.012 [+0.034, +0.081]' from a {"mean", "se", "ci95"} statistic (tables of this and calibrate_lr)."""
    return f"{x['mean']:+.3f} ± {x['se']:.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"


def markdown(s: dict, d: dict, p: dict, paths: dict, maj: dict, kl_final: dict, per_seed: dict, minutes: float) -> str:
    f = lambda x: f"{x['mean']:.3f} ± {x['se']:.3f}"  # noqa: E731
    ci = fmt_ci
    lines = [f"# four_arms — good prior `{paths['good']}`, bad prior `{paths['bad']}`", "",
             f"{p['seeds']} seeds × {p['steps']} steps of {p['prompts']}×{p['samples']}, lr {p['lr']}; held-out "
             f"avg@{p['eval_k']} at T = 1.0 on {p['eval_problems']} shared problems every {p['eval_every']} steps; "
             f"± SE from a crossed bootstrap over seeds and problems ({p['boot']} draws), [95% CI]. "
             f"Wall-clock {minutes:.1f} min.", "",
             "| arm | model | reward | start | peak window (steps) | final window | rise | fall | change | "
             f"KL k3 / k1 per token (last {KL_TAIL} steps) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, prior, reward in ARMS:
        if name not in s["arms"]:
            continue
        a = s["arms"][name]
        pk = a["peak_window_steps"]
        k3, k1 = kl_final.get(name, (float("nan"), float("nan")))
        lines.append(f"| {name} | `{paths[prior]}` | {reward} | {f(a['start'])} | {f(a['peak_window'])} "
                     f"({pk[0]}–{pk[-1]}) | {f(a['final_window'])} | {ci(a['rise'])} | {ci(a['fall'])} | "
                     f"{ci(a['change'])} | {k3:.3f} / {k1:.3f} |")
    vs = lambda c: f"{c['mean']:+.3f} ± {c['se']:.3f}"  # noqa: E731
    lines += ["", f"Each prior's base maj@{p['eval_k']} (T = 1, step-0 evaluation): "
              + ", ".join(f"`{k}` {v:.3f}" for k, v in maj.items()), "",
              "Against the random arm (arm − good_random, bootstrap SE): "
              + "; ".join(f"{k}: rise {vs(a['minus_random']['rise'])}, fall {vs(a['minus_random']['fall'])}"
                          for k, a in s["arms"].items() if "minus_random" in a), "",
              "Decision rules (script docstring): " + ", ".join(f"{k} = {v}" for k, v in d.items() if k != "verdict"),
              "", f"**Verdict: {d.get('verdict', 'n/a')}**", "",
              "Per seed (report.json heldout: SE over problems):", "",
              "| run | start | peak window (steps) | final window | rise | fall |", "|---|---|---|---|---|---|"]
    for run, h in per_seed.items():
        pk = h["peak_window"]["steps"]
        lines.append(f"| {run} | {f(h['start'])} | {f(h['peak_window'])} ({pk[0]}–{pk[-1]}) | {f(h['final_window'])} "
                     f"| {f(h['rise'])} | {f(h['fall'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("--good", default="ladder_v2/q0.05", help="model.path of the good prior")
    ap.add_argument("--bad", default="ladder_v2/q0.8", help="model.path of the bad prior")
    ap.add_argument("--steps", type=int, help=f"training steps per run (default {FULL['steps']})")
    ap.add_argument("--seeds", type=int, help=f"seeds per arm, 0..n-1 (default {FULL['seeds']})")
    ap.add_argument("--lr", type=float, help=f"learning rate (default {FULL['lr']}, the main job's)")
    ap.add_argument("--eval-every", type=int, help=f"steps between held-out evaluations (default {FULL['eval_every']})")
    ap.add_argument("--arms", nargs="+", choices=[a[0] for a in ARMS], help="a subset of the arms")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    for k in ("steps", "seeds", "lr", "eval_every"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if p["steps"] < 1 or p["seeds"] < 1 or p["eval_every"] < 1:
        raise SystemExit("four_arms: --steps, --seeds and --eval-every must be >= 1")
    paths = {"good": C.model_path(args.good), "bad": C.model_path(args.bad)}
    arms = [a for a in ARMS if not args.arms or a[0] in args.arms]
    C.setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    seconds, accs, majs, kl, kl_final, per_seed = {}, {}, {}, {}, {}, {}
    ref = None
    for name, prior, reward in arms:
        per_arm, per_arm_maj, kl_curves = [], [], []
        for seed in range(p["seeds"]):
            wd = runs_dir / f"{name}_s{seed}"
            got, steps, acc, maj, ids = train_and_read(run_config(paths[prior], reward, seed, p), wd, ref,
                                                       fresh=args.fresh)
            ref = ref or (steps, ids)
            seconds[f"{name}_s{seed}"] = got["seconds"]
            per_arm.append(acc)
            per_arm_maj.append(maj[0])
            kl_curves.append([C.curve(got["records"], k)[1] for k in ("kl_to_ref/k3_token_mean",
                                                                      "kl_to_ref/k1_token_mean")])
            per_seed[f"{name}_s{seed}"] = json.loads((wd / "report.json").read_text())["heldout"]
            print(f"{name} seed {seed}: {seconds[f'{name}_s{seed}']:.0f} s", file=sys.stderr, flush=True)
        accs[name] = np.stack(per_arm)
        majs.setdefault(paths[prior], float(np.mean(per_arm_maj)))
        k3 = np.mean([c[0] for c in kl_curves], axis=0)
        kl[name] = (np.arange(1, k3.size + 1), k3)
        kl_final[name] = tuple(float(np.mean([c[j][-KL_TAIL:] for c in kl_curves])) for j in (0, 1))
    steps_ref, ids_ref = ref
    s = summarize_arms(accs, steps_ref, p["boot"])
    d = decide(s)
    minutes = (time.perf_counter() - t_all) / 60
    labels = {n: f"{n} ({paths[pr].split('/')[-1]}, {rw})" for n, pr, rw in arms}
    png = plot(out, s, steps_ref, majs, kl, labels, p["eval_k"])
    md = markdown(s, d, p, paths, majs, kl_final, per_seed, minutes)
    (out / f"{NAME}.md").write_text(md)
    result = {"params": p, "model_paths": paths, "eval_steps": steps_ref, "n_problems": len(ids_ref),
              "maj_at_k_base": majs, "kl_final": kl_final, "summary": s, "decision": d, "per_seed": per_seed,
              "seconds": seconds, "total_minutes": minutes, "plots": [png]}
    C.write_json(out / f"{NAME}.json", result)
    print(md)
    return result


if __name__ == "__main__":
    main()
