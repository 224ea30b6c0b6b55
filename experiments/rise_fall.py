"""Finding 1: rise-then-fall of intrinsic rewards, with the failure mode each run shows.

From one base model of the ladder (q0.3: a middle rung — its majority is usually right, maj@16 0.72, and its
confidence ranks its own answers well, AUROC within 0.87, so sharpening has something to gain; yet on
problems with a multiplication 26% of its majorities are the systematic error, so it has something to
fall into; it was also the main job's model when these runs were made),
train with each intrinsic reward for the same budget and seed, and track:
  GT accuracy on the training batches (smoothed) and on a held-out set at checkpoints (the rise and fall),
  the proxy reward (does it keep rising while accuracy falls?), reward accuracy and the Model Collapse Step,
  the collapse detectors: response length (length collapse), 4-gram repetition (repetition collapse),
  token entropy, and the share of all held-out answers taken by the single most common answer (a
  prompt-independent answer: the voting hack).

    python experiments/rise_fall.py                 # full run (~25 min on a busy 2-core CPU)
    python experiments/rise_fall.py --smoke         # wiring check (majority vote, 2 steps)

Writes <out>/rise_fall.md, rise_fall.json, rise_fall.png, collapse_detectors.png.
Decision rules (fixed before any run; see README "rise_fall"):
  rise  = held-out peak − held-out step 0 > 2 SE;  fall = held-out peak − held-out final > 2 SE
  (SE of a difference of two held-out accuracies, from per-problem variances; the peak is the max of the
  checkpoints, so a "rise" of about 2 SE can be selection noise);
  length collapse: final/initial mean length < 0.5 or > 2, or final truncation rate > 0.5;
  repetition collapse: final repetitive fraction (4-gram repetition rate >= 0.5) >= 0.2;
  entropy collapse: final token entropy < 0.1 x initial;
  answer collapse: the most common answer takes >= 50% of all held-out samples at the final checkpoint.
  "initial"/"final" on training curves = mean of the first/last 10 steps.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import numpy as np  # noqa: E402

NAME = "rise_fall"
REWARDS = ("self_certainty", "token_entropy", "trajectory_entropy", "probability", "majority_vote")
FULL = dict(rung="q0.3", rewards=REWARDS, steps=100, prompts=8, samples=8, lr=1e-3, ckpt_every=20,
            eval_problems=128, eval_samples=8)
SMOKE = dict(rung="q0.3", rewards=("majority_vote",), steps=2, prompts=2, samples=4, lr=1e-3, ckpt_every=1,
             eval_problems=8, eval_samples=4)
EDGE = 10  # steps averaged for "initial" and "final" on training curves
SMOOTH = 10  # trailing window of the plotted training GT accuracy
CURVE_KEYS = ("urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "response/length_mean",
              "response/entropy_mean", "response/truncation_rate", "collapse/repetition_mean",
              "collapse/repetitive_frac")


def run_config(p: dict, reward: str):
    return C.experiment_config(p["rung"], reward, steps=p["steps"], prompts=p["prompts"], samples=p["samples"],
                               lr=p["lr"], **{"train.checkpoint_every": p["ckpt_every"],
                                              "train.keep_checkpoints": 1000, "train.pistar_diagnostics": False})


def heldout(model, tokenizer, problems, n: int) -> dict:
    """Held-out accuracy (mean over problems of the per-problem mean), its SE, and the global answer mode share."""
    s = C.sample_problems(model, tokenizer, problems, n, seed=C.EVAL_SEED)
    per_problem = s["correct"].mean(axis=1)
    answers = [a for row in s["answers"] for a in row if a is not None]
    top = max((answers.count(a) for a in set(answers)), default=0)
    return {"accuracy": float(per_problem.mean()), "se": float(per_problem.std(ddof=1) / np.sqrt(len(per_problem))),
            "top_answer_share": top / s["correct"].size,
            "no_answer_rate": float(np.mean([a is None for row in s["answers"] for a in row]))}


def edge_mean(records, key, last: bool) -> float:
    _, v = C.curve(records, key)
    if not len(v):
        return float("nan")
    return float(np.mean(v[-EDGE:] if last else v[:EDGE]))


def summarize(reward: str, records: list, evals: dict[int, dict]) -> dict:
    steps = sorted(evals)
    acc = {s: evals[s]["accuracy"] for s in steps}
    peak_step = max(steps, key=lambda s: acc[s])
    se = lambda a, b: float(np.hypot(evals[a]["se"], evals[b]["se"]))  # noqa: E731
    first, final = steps[0], steps[-1]
    rise = acc[peak_step] - acc[first]
    fall = acc[peak_step] - acc[final]
    ini = {k: edge_mean(records, k, False) for k in CURVE_KEYS}
    fin = {k: edge_mean(records, k, True) for k in CURVE_KEYS}
    length_ratio = fin["response/length_mean"] / ini["response/length_mean"]
    modes = []
    if length_ratio < 0.5 or length_ratio > 2 or fin["response/truncation_rate"] > 0.5:
        modes.append("length")
    if fin["collapse/repetitive_frac"] >= 0.2:
        modes.append("repetition")
    if fin["response/entropy_mean"] < 0.1 * ini["response/entropy_mean"]:
        modes.append("entropy")
    if evals[final]["top_answer_share"] >= 0.5:
        modes.append("answer")
    last = records[-1]
    return {
        "reward": reward,
        "heldout": {str(s): evals[s] for s in steps},
        "heldout_first": acc[first], "heldout_peak": acc[peak_step], "heldout_peak_step": peak_step,
        "heldout_final": acc[final],
        "rise": rise, "rise_se": se(peak_step, first), "rose": bool(rise > 2 * se(peak_step, first)),
        "fall": fall, "fall_se": se(peak_step, final), "fell": bool(fall > 2 * se(peak_step, final)),
        "initial": ini, "final": fin, "length_ratio": length_ratio,
        "mcs_raw": None if last.get("mcs/raw", -1) == -1 else last["mcs/raw"],
        "mcs_sustained": None if last.get("mcs/sustained", -1) == -1 else last["mcs/sustained"],
        "failure_modes": modes or ["none"],
    }


def pattern(s: dict) -> str:
    return {(True, True): "rise-then-fall", (True, False): "rise", (False, True): "fall",
            (False, False): "flat (within noise)"}[(s["rose"], s["fell"])]


def plot(out: Path, runs: dict, p: dict) -> list[str]:
    plt = C.pyplot()
    rewards = list(runs)
    cols = min(3, len(rewards))
    rows = -(-len(rewards) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, reward in zip(axes.flat, rewards):
        rec, summ = runs[reward]["records"], runs[reward]["summary"]
        s, gt = C.curve(rec, "urlvr/gt_reward_mean")
        ax.plot(s, C.moving_average(gt, SMOOTH), color="C0", label=f"GT acc, train batches ({SMOOTH}-step mean)")
        es = sorted(int(k) for k in summ["heldout"])
        ax.errorbar(es, [summ["heldout"][str(k)]["accuracy"] for k in es],
                    yerr=[2 * summ["heldout"][str(k)]["se"] for k in es], color="C2", marker="o", capsize=3,
                    label="GT acc, held-out (±2 SE)")
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax2 = ax.twinx()
        s, proxy = C.curve(rec, "urlvr/proxy_reward_mean")
        ax2.plot(s, C.moving_average(proxy, SMOOTH), color="C3", linestyle="--", label="proxy reward (right axis)")
        for m, ls in ((summ["mcs_raw"], ":"),):
            if m is not None:
                ax.axvline(m, color="red", linestyle=ls, label=f"MCS raw = {m}")
        ax.set_title(f"{reward}: {pattern(summ)}", fontsize=10)
        if ax is axes.flat[0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(rewards):]:
        ax.axis("off")
    fig.suptitle(f"Rise-then-fall from ladder/{p['rung']} ({p['prompts']} prompts x {p['samples']} samples, "
                 f"lr {p['lr']:g}, seed {C.SEED})", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "rise_fall.png", dpi=110)
    plt.close(fig)

    panels = [("response/length_mean", "response length (tokens)"), ("response/entropy_mean", "token entropy (nats)"),
              ("collapse/repetitive_frac", "repetitive fraction (4-gram rate >= 0.5)"),
              ("urlvr/reward_accuracy", "reward accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for ax, (key, title) in zip(axes, panels):
        for reward in rewards:
            s, v = C.curve(runs[reward]["records"], key)
            ax.plot(s, C.moving_average(v, SMOOTH), label=reward)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Collapse detectors ({SMOOTH}-step trailing means)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "collapse_detectors.png", dpi=110)
    plt.close(fig)
    return ["rise_fall.png", "collapse_detectors.png"]


def markdown(runs: dict, p: dict, seconds: dict) -> str:
    rows = []
    for reward, r in runs.items():
        s = r["summary"]
        ini, fin = s["initial"], s["final"]
        rows.append([reward, pattern(s),
                     f"{s['heldout_first']:.3f} → {s['heldout_peak']:.3f} (step {s['heldout_peak_step']})"
                     f" → {s['heldout_final']:.3f}", f"±{s['rise_se']:.3f}",
                     f"{ini['urlvr/proxy_reward_mean']:.3g} → {fin['urlvr/proxy_reward_mean']:.3g}",
                     f"{ini['urlvr/reward_accuracy']:.2f} → {fin['urlvr/reward_accuracy']:.2f}",
                     f"{s['mcs_raw'] if s['mcs_raw'] is not None else '—'} / "
                     f"{s['mcs_sustained'] if s['mcs_sustained'] is not None else '—'}",
                     f"{ini['response/length_mean']:.1f} → {fin['response/length_mean']:.1f}",
                     f"{ini['response/entropy_mean']:.3f} → {fin['response/entropy_mean']:.3f}",
                     f"{fin['collapse/repetitive_frac']:.2f}",
                     f"{s['heldout'][str(max(int(k) for k in s['heldout']))]['top_answer_share']:.2f}",
                     ", ".join(s["failure_modes"]), f"{seconds[reward]:.0f}"])
    head = ["reward", "pattern", "held-out GT acc: step 0 → peak → final", "SE(diff)", "proxy reward (first → last 10)",
            "reward acc", "MCS raw / sustained", "length", "entropy", "repetitive frac (final)",
            "top-answer share (final)", "failure mode", "run s"]
    return (f"# Finding 1: rise-then-fall (ladder/{p['rung']})\n\n"
            f"{p['steps']} steps × {p['prompts']} prompts × {p['samples']} samples, lr {p['lr']:g}, seed {C.SEED}; "
            f"held-out: {p['eval_problems']} eval problems × {p['eval_samples']} samples at T = 1.0 every "
            f"{p['ckpt_every']} steps. Decision rules: experiments/rise_fall.py docstring.\n\n"
            + C.markdown_table(head, rows))


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("--rung", help="ladder rung (default q0.3)")
    ap.add_argument("--rewards", nargs="+", choices=REWARDS, help="subset of the rewards")
    ap.add_argument("--steps", type=int, help="training steps per run")
    args = ap.parse_args(argv)
    p = dict(SMOKE if args.smoke else FULL)
    for k in ("rung", "rewards", "steps"):
        if getattr(args, k):
            p[k] = getattr(args, k)
    C.setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    problems = C.eval_problems(p["rung"], p["eval_problems"])
    base = heldout(*C.load_policy(p["rung"]), problems, p["eval_samples"])
    runs, seconds = {}, {}
    t_all = time.perf_counter()
    for reward in tqdm(p["rewards"], desc=NAME, unit="run", position=0):
        wd = runs_dir / reward
        t0 = time.perf_counter()
        got = C.run_training(run_config(p, reward), wd, fresh=args.fresh)
        evals = {0: base}
        for step in range(p["ckpt_every"], p["steps"] + 1, p["ckpt_every"]):
            evals[step] = heldout(*C.load_policy(p["rung"], wd, step), problems, p["eval_samples"])
        seconds[reward] = time.perf_counter() - t0 if not got["reused"] else got["seconds"]
        runs[reward] = {"records": got["records"], "summary": summarize(reward, got["records"], evals)}
    plots = plot(out, runs, p)
    md = markdown(runs, p, seconds)
    (out / f"{NAME}.md").write_text(md)
    result = {"params": p, "seed": C.SEED, "eval_seed": C.EVAL_SEED, "seconds": seconds,
              "total_seconds": time.perf_counter() - t_all, "plots": plots,
              "runs": {r: {"summary": v["summary"],
                           "curves": {k: C.curve(v["records"], k)[1].round(5).tolist() for k in CURVE_KEYS}}
                       for r, v in runs.items()}}
    C.write_json(out / f"{NAME}.json", result)
    print(md)
    return result


if __name__ == "__main__":
    main()
