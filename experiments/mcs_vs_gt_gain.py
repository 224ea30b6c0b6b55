"""Finding 2 (paper finding 4): does the Model Collapse Step rank base models by what GT-reward RL gains them?

For each rung of the ladder (q = 0.1 … 0.8, confidence–correctness alignment from good to bad):
  MCS probe   majority-vote URLVR with aggressive settings (lr 3e-3 = 3x the main job's), up to
              `mcs_steps` steps, stopped once the sustained MCS fires; MCS = first step with reward accuracy
              < 1% (the paper's definition: raw first crossing, and sustained = first of 5 consecutive steps).
  GT gain     a ground_truth-reward run with a fixed budget (`gt_steps` steps at the main job's lr 1e-3):
              held-out avg@16 after − before (same problems, same sampling seed, T = 1.0), paired SE over
              problems.
  pass@k gain the competing predictor, measured on the base model: pass@16 − pass@1 (the head-room that
              sampling shows; the paper says it does not rank models correctly).
Spearman correlations (scipy.stats.spearmanr) of each predictor with the GT gain over the 5 rungs, with the
exact permutation p-value (all 120 orderings). Censoring: a run without collapse gets MCS = its last step + 1
(it ranks above every collapsed run, ties among the censored).

Declared before any run, because reward accuracy in this world may never reach 1% (on problems without a
systematic error path the majority is usually right, so reward accuracy stays high unless the policy
degenerates): two secondary collapse measures, reported with their own Spearman —
  MCS@0.5   first step where the 5-step trailing mean of reward accuracy < 0.5 (the proxy no better than a
            coin at telling right from wrong); censored like MCS;
  mean RA   mean reward accuracy over the probe's step budget (steps after a sustained-MCS stop count as 0).

    python experiments/mcs_vs_gt_gain.py            # full (~35 min on a busy 2-core CPU)
    python experiments/mcs_vs_gt_gain.py --smoke    # wiring check

Writes <out>/mcs_vs_gt_gain.{md,json}, mcs_vs_gt_gain.png (predictors vs GT gain), mcs_curves.png.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import numpy as np  # noqa: E402

NAME = "mcs_vs_gt_gain"
FULL = dict(rungs=C.RUNGS, prompts=8, samples=8, mcs_steps=100, mcs_lr=3e-3, gt_steps=40, gt_lr=1e-3,
            ckpt_every=10, eval_problems=128, eval_samples=16)
SMOKE = dict(rungs=("q0.1", "q0.8"), prompts=2, samples=4, mcs_steps=2, mcs_lr=1e-3, gt_steps=2, gt_lr=1e-3,
             ckpt_every=1, eval_problems=8, eval_samples=4)
HALF_WINDOW = 5


def mcs_config(p: dict, rung: str):
    """The MCS probe's config (theorem1_rate.py reuses these runs)."""
    return C.experiment_config(rung, "majority_vote", steps=p["mcs_steps"], prompts=p["prompts"], samples=p["samples"],
                               lr=p["mcs_lr"], **{"train.stop_at_collapse": True,
                                                  "train.checkpoint_every": p["ckpt_every"],
                                                  "train.keep_checkpoints": 1000,
                                                  "train.pistar_diagnostics": False})


def gt_config(p: dict, rung: str):
    return C.experiment_config(rung, "ground_truth", steps=p["gt_steps"], prompts=p["prompts"], samples=p["samples"],
                               lr=p["gt_lr"], **{"train.pistar_diagnostics": False})


def collapse_measures(records: list, budget: int) -> dict:
    last = records[-1]
    ran = int(last["step"])
    raw = None if last.get("mcs/raw", -1) == -1 else int(last["mcs/raw"])
    sus = None if last.get("mcs/sustained", -1) == -1 else int(last["mcs/sustained"])
    s, ra = C.curve(records, "urlvr/reward_accuracy")
    trailing = C.moving_average(ra, HALF_WINDOW)
    below = np.flatnonzero((trailing < 0.5) & (np.arange(len(ra)) >= HALF_WINDOW - 1))
    half = int(s[below[0]]) if len(below) else None
    mean_ra = float(np.concatenate([ra, np.zeros(max(budget - len(ra), 0))]).mean())
    cens = lambda x: x if x is not None else ran + 1  # noqa: E731  (ranks above every collapsed run)
    return {"steps_run": ran, "mcs_raw": raw, "mcs_sustained": sus, "mcs_half": half,
            "mcs_raw_ranked": cens(raw), "mcs_sustained_ranked": cens(sus), "mcs_half_ranked": cens(half),
            "mean_reward_accuracy": mean_ra,
            "reward_accuracy_first5": float(ra[:5].mean()), "reward_accuracy_last5": float(ra[-5:].mean())}


def spearman(x, y) -> dict:
    """rho (scipy) and the exact two-sided permutation p-value over all orderings of y."""
    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant side (e.g. every run censored): no rank correlation
        return {"rho": float("nan"), "p_exact": float("nan"), "n": len(x)}
    rho = float(spearmanr(x, y).statistic)
    # Spearman = Pearson of the average ranks; every ordering of y's ranks at once (n! x n)
    rx, ry = rankdata(x), rankdata(y)
    perms = np.array(list(itertools.permutations(ry)))
    cx, cp = rx - rx.mean(), perms - perms.mean(axis=1, keepdims=True)
    r_perm = cp @ cx / (np.linalg.norm(cx) * np.linalg.norm(cp, axis=1))
    p = float(np.mean(np.abs(r_perm) >= abs(rho) - 1e-12))
    return {"rho": rho, "p_exact": p, "n": len(x)}


def evaluate(model, tokenizer, problems, n: int) -> dict:
    s = C.sample_problems(model, tokenizer, problems, n, seed=C.EVAL_SEED)
    maj = [C.majority(row)[0] for row in s["answers"]]
    maj_correct = [bool(m is not None and s["correct"][i][row.index(m)])
                   for i, (m, row) in enumerate(zip(maj, s["answers"]))]
    return {"per_problem": s["correct"].mean(axis=1), "avg": float(s["correct"].mean()),
            "pass": float(s["correct"].any(axis=1).mean()), "maj": float(np.mean(maj_correct))}


def plot(out: Path, rows: list, records: dict, stats: dict, p: dict) -> list[str]:
    plt = C.pyplot()
    gain = [r["gt_gain"] for r in rows]
    err = [2 * r["gt_gain_se"] for r in rows]
    preds = [("mcs_raw_ranked", "MCS (raw, the headline; censored = budget+1)"),
             ("mcs_sustained_ranked", "MCS (sustained; censored = budget+1)"),
             ("mcs_half_ranked", "MCS@0.5 (censored = budget+1)"),
             ("mean_reward_accuracy", "mean reward accuracy of the probe"),
             ("passk_gain", f"pass@{p['eval_samples']} − pass@1 (base)")]
    fig, axes = plt.subplots(1, len(preds), figsize=(4.4 * len(preds), 3.8))
    for ax, (key, label) in zip(axes, preds):
        x = [r[key] for r in rows]
        ax.errorbar(x, gain, yerr=err, fmt="o", capsize=3)
        for xi, yi, r in zip(x, gain, rows):
            ax.annotate(r["rung"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        st = stats[key]
        ax.set_title(f"Spearman ρ = {st['rho']:.2f} (exact p = {st['p_exact']:.2f}, n = {st['n']})", fontsize=9)
        ax.set_xlabel(label, fontsize=9)
        ax.axhline(0, color="gray", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"GT gain: held-out avg@{p['eval_samples']} after {p['gt_steps']} GT steps (±2 SE)")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for r in rows:
        rec = records[r["rung"]]
        s, ra = C.curve(rec["mcs"], "urlvr/reward_accuracy")
        axes[0].plot(s, C.moving_average(ra, HALF_WINDOW), label=r["rung"])
        s, gt = C.curve(rec["mcs"], "urlvr/gt_reward_mean")
        axes[1].plot(s, C.moving_average(gt, HALF_WINDOW), label=r["rung"])
        s, gt = C.curve(rec["gt"], "urlvr/gt_reward_mean")
        axes[2].plot(s, C.moving_average(gt, HALF_WINDOW), label=r["rung"])
    axes[0].axhline(0.01, color="red", ls=":", label="MCS threshold 0.01")
    axes[0].axhline(0.5, color="gray", ls=":", label="MCS@0.5 threshold")
    axes[0].set_title(f"MCS probe: reward accuracy ({HALF_WINDOW}-step mean)", fontsize=10)
    axes[1].set_title("MCS probe: GT accuracy of training batches", fontsize=10)
    axes[2].set_title("GT-reward run: GT accuracy of training batches", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "mcs_curves.png", dpi=110)
    plt.close(fig)
    return [f"{NAME}.png", "mcs_curves.png"]


def markdown(rows: list, stats: dict, prior: dict, p: dict) -> str:
    cen = lambda x, r: str(x) if x is not None else f">{r['steps_run']}"  # noqa: E731
    k = p["eval_samples"]
    table = C.markdown_table(
        ["rung", f"base avg@{k}", f"base maj@{k}", f"base pass@{k}", f"pass@{k} − pass@1", "MCS raw", "MCS sustained",
         "MCS@0.5",
         "mean RA", "RA first5 → last5", f"GT-run avg@{k}", "GT gain", "±SE", "MCS probe s", "GT run s"],
        [[r["rung"], r["base_avg"], r["base_maj"], r["base_pass"], r["passk_gain"], cen(r["mcs_raw"], r),
          cen(r["mcs_sustained"], r), cen(r["mcs_half"], r), r["mean_reward_accuracy"],
          f"{r['reward_accuracy_first5']:.2f} → {r['reward_accuracy_last5']:.2f}", r["gt_avg"], r["gt_gain"],
          r["gt_gain_se"], f"{r['mcs_seconds']:.0f}", f"{r['gt_seconds']:.0f}"] for r in rows])
    st = C.markdown_table(["predictor", "Spearman ρ with GT gain", "exact p", "Spearman ρ with base maj@N (the prior)",
                           "exact p", "n"],
                          [[k, v["rho"], v["p_exact"], prior[k]["rho"], prior[k]["p_exact"], v["n"]]
                           for k, v in stats.items()])
    return (f"# Finding 2: Model Collapse Step vs GT gain across the ladder\n\n"
            f"MCS probe: majority vote, lr {p['mcs_lr']:g}, ≤ {p['mcs_steps']} steps (stop at sustained MCS); "
            f"GT run: ground_truth, lr {p['gt_lr']:g}, {p['gt_steps']} steps; both {p['prompts']} prompts × "
            f"{p['samples']} samples, seed {C.SEED}. Held-out: {p['eval_problems']} eval problems × "
            f"{p['eval_samples']} samples, T = 1.0. RA = reward accuracy. "
            f"Exact p: share of the {math.factorial(len(rows))} "
            f"orderings with |ρ| at least as large (with n = 5 the smallest possible p is 2/120 = 0.017).\n\n"
            + table + "\n" + st)


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("--rungs", nargs="+", help="ladder rungs (default all five)")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    if args.rungs:
        p["rungs"] = tuple(args.rungs)
    C.setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    rows, records = [], {}
    t_all = time.perf_counter()
    for rung in tqdm(p["rungs"], desc=NAME, unit="rung", position=0):
        problems = C.eval_problems(rung, p["eval_problems"])
        base = evaluate(*C.load_policy(rung), problems, p["eval_samples"])
        t0 = time.perf_counter()
        mcs = C.run_training(mcs_config(p, rung), runs_dir / f"mcs_{rung}", fresh=args.fresh)
        t1 = time.perf_counter()
        gt = C.run_training(gt_config(p, rung), runs_dir / f"gt_{rung}", fresh=args.fresh)
        after = evaluate(*C.load_policy(rung, runs_dir / f"gt_{rung}"), problems, p["eval_samples"])
        diff = after["per_problem"] - base["per_problem"]
        records[rung] = {"mcs": mcs["records"], "gt": gt["records"]}
        rows.append({"rung": rung, "base_avg": base["avg"], "base_maj": base["maj"], "base_pass": base["pass"],
                     "passk_gain": base["pass"] - base["avg"], **collapse_measures(mcs["records"], p["mcs_steps"]),
                     "gt_avg": after["avg"], "gt_gain": float(diff.mean()),
                     "gt_gain_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                     "mcs_seconds": mcs["seconds"] if mcs["reused"] else t1 - t0,
                     "gt_seconds": gt["seconds"]})
    gain = [r["gt_gain"] for r in rows]
    stats = {k: spearman([r[k] for r in rows], gain) for k in
             ("mcs_raw_ranked", "mcs_sustained_ranked", "mcs_half_ranked", "mean_reward_accuracy", "passk_gain")}
    prior = {k: spearman([r[k] for r in rows], [r["base_maj"] for r in rows]) for k in stats}
    plots = plot(out, rows, records, stats, p)
    md = markdown(rows, stats, prior, p)
    (out / f"{NAME}.md").write_text(md)
    C.write_json(out / f"{NAME}.json", {
        "params": p, "seed": C.SEED, "eval_seed": C.EVAL_SEED, "rows": rows, "spearman_with_gt_gain": stats,
        "spearman_with_base_maj": prior,
        "total_seconds": time.perf_counter() - t_all, "plots": plots,
        "curves": {rung: {"mcs_reward_accuracy": C.curve(v["mcs"], "urlvr/reward_accuracy")[1].round(4).tolist(),
                          "mcs_gt_accuracy": C.curve(v["mcs"], "urlvr/gt_reward_mean")[1].round(4).tolist(),
                          "gt_run_gt_accuracy": C.curve(v["gt"], "urlvr/gt_reward_mean")[1].round(4).tolist()}
                   for rung, v in records.items()}})
    print(md)
    return {"rows": rows, "stats": stats, "prior": prior}


if __name__ == "__main__":
    main()
