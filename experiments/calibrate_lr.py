"""Learning-rate calibration on the controls only (issue 13, science review §3 R1).

The experiments' old learning rate (AdamW 1e-3, no KL) moves the tiny models far faster than the paper's
lr 1e-6 moves Qwen3 (KL to the base 0.2-0.8 nats/token after ~150 steps against the paper's 0.057 after 600),
and the four_arms random-reward arm showed that at 1e-3 pure-noise advantages alone take held-out accuracy
from 0.53 to 0.04. A "fall" under an intrinsic reward is only evidence of reward hacking if the optimiser
without any signal does not fall too. So the learning rate of every experiment is chosen here, from two
control arms that involve no intrinsic reward at all:

  gt       the good prior + ground-truth reward: can this lr learn the task in the budget, stably?
  random   the good prior + i.i.d. Bernoulli(0.5) rewards (`rl.reward = "random"`): does this lr, with
           no signal, leave the model where it was?

Each arm: the main job's batch (16 prompts x 8 samples, GRPO, no KL, T = 1.0), --steps steps, --seeds seeds,
held-out avg@8 on 256 shared problems at T = 1.0 every --eval-every steps; statistics as in four_arms.py
(window means, crossed bootstrap over seeds and problems).

Decision rule (fixed before any run). For each lr in the grid:
  learns   the gt arm's rise (peak window - start) has its 95% CI above 0;
  stable   the gt arm's fall (peak window - final window) is below 2 SE (no collapse under the true reward);
  inert    the random arm's change (final window - start) is within 2 SE of 0, AND its KL(pi || pi_ref)
           (k1 per response token, mean over the last 10 steps and the seeds) is <= 0.1 nats/token.
The calibrated lr is the LARGEST lr of the grid that is learns & stable & inert. If none is, the output
says so and names the largest inert lr (the experiments must then report that their budget cannot show a
GT gain at a drift-free lr — an "untestable" verdict, not a negative).

    python experiments/calibrate_lr.py --model ladder_v2/q0.05          # 3 lrs x 2 arms x 2 seeds x 120 steps
    python experiments/calibrate_lr.py --smoke                          # wiring check

Writes <out>/calibrate_lr.{md,json,png}; runs under <runs-dir>/<arm>_lr<lr>_s<seed>/ (reused when rerun).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import four_arms as F  # noqa: E402
import numpy as np  # noqa: E402

NAME = "calibrate_lr"
# The review's grid was {1e-4, 3e-4, 1e-3}; 1e-3 already failed the random-arm check on the v1 ladder
# (four_arms, 1 seed: held-out 0.53 -> 0.04 under pure-noise rewards, KL k3 3.5), so the grid moves one step down.
GRID = (3e-5, 1e-4, 3e-4)
FULL = dict(steps=120, seeds=2, prompts=16, samples=8, eval_every=20, eval_problems=256, eval_k=8, boot=2000)
SMOKE = dict(steps=2, seeds=1, prompts=4, samples=4, eval_every=1, eval_problems=16, eval_k=2, boot=200)
ARMS = (("gt", "ground_truth"), ("random", "random"))
KL_MAX = 0.1  # nats per response token, the random arm's drift bound
KL_TAIL = 10


def decide_lr(stats: dict[float, dict[str, Any]], kl_random: dict[float, float]) -> dict[str, Any]:
    """The docstring's rule on summarize_arms' per-lr output ({lr: {"gt": arm stats, "random": arm stats}})."""
    rows, chosen, inert_max = {}, None, None
    for lr in sorted(stats):
        gt, rnd = stats[lr]["gt"], stats[lr]["random"]
        learns = gt["rise"]["ci95"][0] > 0
        stable = gt["fall"]["mean"] <= 2 * gt["fall"]["se"]
        inert = abs(rnd["change"]["mean"]) <= 2 * rnd["change"]["se"] and kl_random[lr] <= KL_MAX
        rows[lr] = dict(learns=bool(learns), stable=bool(stable), inert=bool(inert))
        if inert:
            inert_max = lr
        if learns and stable and inert:
            chosen = lr
    verdict = (f"calibrated lr = {chosen:g}" if chosen is not None else
               "no lr of the grid learns, stays stable and is inert"
               + (f"; the largest inert lr is {inert_max:g}" if inert_max is not None else "; none is inert"))
    return {"per_lr": {f"{k:g}": v for k, v in rows.items()}, "calibrated_lr": chosen, "largest_inert_lr": inert_max,
            "verdict": verdict}


def plot(out: Path, stats: dict, steps: list[int], kls: dict, grid) -> str:
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, lr in enumerate(grid):
        color = f"C{i}"
        for ax, arm in zip(axes[:2], ("gt", "random")):
            a = stats[lr][arm]
            ax.errorbar(steps, a["curve"], yerr=2 * np.asarray(a["curve_se"]), color=color, marker="o", markersize=3,
                        capsize=2, label=f"lr {lr:g}")
        x, y = kls[lr]
        axes[2].plot(x, C.moving_average(y, 5), color=color, label=f"lr {lr:g}")
    for ax, title in zip(axes[:2], ("ground-truth reward", "random reward (no signal)")):
        ax.set_title(f"{title}: held-out avg@8 ± 2 SE", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].axhline(KL_MAX, color="black", linestyle=":", label=f"drift bound {KL_MAX}")
    axes[2].set_yscale("symlog", linthresh=0.01)
    axes[2].set_title("random arm: KL(π‖π_ref), k1 per token (5-step mean)", fontsize=9)
    axes[2].set_xlabel("step")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)
    return f"{NAME}.png"


def markdown(model: str, p: dict, grid, stats: dict, kl_random: dict, kl_gt: dict, d: dict, minutes: float) -> str:
    ci = F.fmt_ci
    lines = [f"# calibrate_lr — `{model}`", "",
             f"{p['seeds']} seeds × {p['steps']} steps of {p['prompts']}×{p['samples']} per arm and lr; held-out "
             f"avg@{p['eval_k']} (T = 1.0) on {p['eval_problems']} problems every {p['eval_every']} steps; ± SE "
             f"from a crossed bootstrap over seeds × problems ({p['boot']} draws), [95% CI]. Wall-clock "
             f"{minutes:.1f} min.", "",
             "| lr | gt start | gt rise | gt fall | gt KL k1 | random change | random KL k1 | learns | stable "
             "| inert |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for lr in grid:
        gt, rnd, r = stats[lr]["gt"], stats[lr]["random"], d["per_lr"][f"{lr:g}"]
        lines.append(f"| {lr:g} | {gt['start']['mean']:.3f} | {ci(gt['rise'])} | {ci(gt['fall'])} | {kl_gt[lr]:.3f} "
                     f"| {ci(rnd['change'])} | {kl_random[lr]:.3f} | {r['learns']} | {r['stable']} | {r['inert']} |")
    lines += ["", f"KL columns: k1 per response token, mean over the last {KL_TAIL} steps and the seeds (the paper: "
              "0.057 after 600 steps at 32 prompts).", "", f"**{d['verdict']}**"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("--model", default="ladder_v2/q0.05", help="model.path of the (good) prior")
    ap.add_argument("--lrs", default=",".join(f"{x:g}" for x in GRID), help="comma list of learning rates")
    ap.add_argument("--steps", type=int, help=f"training steps per run (default {FULL['steps']})")
    ap.add_argument("--seeds", type=int, help=f"seeds per arm and lr (default {FULL['seeds']})")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    for k in ("steps", "seeds"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    grid = sorted(float(x) for x in args.lrs.split(",") if x.strip())
    if not grid or min(grid) <= 0 or p["steps"] < 1 or p["seeds"] < 1:
        raise SystemExit("calibrate_lr: --lrs must be positive numbers, --steps and --seeds >= 1")
    if args.smoke:
        grid = grid[-1:]
    model = C.model_path(args.model)
    C.setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats, kl_random, kl_gt, kl_curves, seconds = {}, {}, {}, {}, {}
    ref = None
    for lr in grid:
        accs, kls = {}, {}
        for arm, reward in ARMS:
            per_seed, kl_seed = [], []
            for seed in range(p["seeds"]):
                wd = runs_dir / f"{arm}_lr{lr:g}_s{seed}"
                config = F.run_config(model, reward, seed, dict(p, lr=lr))
                got, steps, acc, _, ids = F.train_and_read(config, wd, ref, fresh=args.fresh)
                ref = ref or (steps, ids)
                seconds[wd.name] = got["seconds"]
                per_seed.append(acc)
                kl_seed.append(C.curve(got["records"], "kl_to_ref/k1_token_mean")[1])
                print(f"{wd.name}: {got['seconds'] or 0:.0f} s", file=sys.stderr, flush=True)
            accs[arm] = np.stack(per_seed)
            kls[arm] = np.mean(kl_seed, axis=0)
        stats[lr] = F.summarize_arms(accs, ref[0], p["boot"])["arms"]
        kl_random[lr] = float(kls["random"][-KL_TAIL:].mean())
        kl_gt[lr] = float(kls["gt"][-KL_TAIL:].mean())
        kl_curves[lr] = (np.arange(1, kls["random"].size + 1), kls["random"])
    d = decide_lr(stats, kl_random)
    minutes = (time.perf_counter() - t0) / 60
    steps_ref = ref[0]
    png = plot(out, stats, steps_ref, kl_curves, grid)
    md = markdown(model, p, grid, stats, kl_random, kl_gt, d, minutes)
    (out / f"{NAME}.md").write_text(md)
    result = {"params": p, "model": model, "grid": grid, "eval_steps": steps_ref, "decision": d,
              "stats": {f"{k:g}": v for k, v in stats.items()}, "kl_k1_random_tail": {f"{k:g}": v for k, v in
                                                                                      kl_random.items()},
              "kl_k1_gt_tail": {f"{k:g}": v for k, v in kl_gt.items()}, "seconds": seconds,
              "total_minutes": minutes, "plots": [png]}
    C.write_json(out / f"{NAME}.json", result)
    print(md)
    return result


if __name__ == "__main__":
    main()
