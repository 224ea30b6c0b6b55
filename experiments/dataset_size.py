"""Finding 3 of the paper (§7.3): does a small training set keep majority-vote URLVR from collapsing?

The paper trains with the majority-vote reward on 32 / 128 / ... / 2048+ prompts for 600 steps: with
≤ 128 prompts nothing collapses, with ≥ 512 the policy reward-hacks, and KL(π_600 ‖ π_ref) is 0.057 at
32 prompts and about twice that at 512. Here: the same base model (a shipped synthetic ladder rung), the
same hyper-parameters, and only `data.limit` changes (nested subsets of one shuffled training set: the
32 prompts are part of the 128, which are part of the 2048); two training seeds per size, because
single majority-vote runs from this rung vary a lot (the prompt order decides when the policy locks
onto the systematic error).

    python experiments/dataset_size.py                       # 32, 128, 2048 prompts x seeds 0, 1 x 150 steps
    python experiments/dataset_size.py --sizes 32 2048 --steps 100 --out /tmp/ds --runs-dir /tmp/ds_runs
    python experiments/dataset_size.py --smoke --out /tmp/ds --runs-dir /tmp/ds_runs

Each run is `urlvr_jax.train.train(config, workdir)` (metrics.jsonl: rollout GT accuracy, proxy reward,
reward accuracy, the Model Collapse Step) with a checkpoint every --every steps. The trainer does not
log the policy's KL to the reference (the paper's setting has no KL term), so every checkpoint is
measured afterwards (`measure`): --samples-eval responses per prompt from π_θ at temperature 1 on the
held-out problems and on (up to --eval-limit of) the run's own training prompts, graded by the exact
checker (avg, maj, pass over those samples) and scored under the frozen base model π_ref:
    KL/response = mean over responses of Σ_t [log π_θ(y_t) − log π_ref(y_t)]    (nats; unbiased)
    KL k3/token = token mean of exp(d) − d − 1, d = log π_ref − log π_θ         (verl's low_var_kl)
The same random draws are used at every checkpoint (common random numbers).

Writes to --out: results.md (table), results.json (all numbers and curves), dataset_size.png. Training
work directories (checkpoints) go under --runs-dir and are reused when their config matches (--fresh
reruns them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EVAL_SEED,
    add_common_args,
    curve,
    eval_problems,
    experiment_config,
    load_policy,
    majority,
    moving_average,
    pyplot,
    run_training,
    setup_jax,
    write_json,
)

NAME = "dataset_size"
SMOOTH = 10  # trailing window (steps) for per-step curves in tables and plots


# ----------------------------------------------------------------------------------------------------
# Helpers shared with testtime_training.py and external_rewards.py
# ----------------------------------------------------------------------------------------------------
def sample_scores(problems: Sequence[Any], texts: Sequence[str], n_samples: int) -> dict[str, float]:
    """avg / maj / pass of n_samples responses per problem (texts [P·N], problem-major), exact checker.

    maj: the majority answer (sft.canonical_answer vote keys; no-answer samples do not vote; first-seen
    tie-break) is correct, i.e. some sample carrying it is correct; 0 for a problem nobody answered.
    """
    import numpy as np

    from urlvr_jax.data.synthetic import check_answer
    from urlvr_jax.sft import canonical_answer

    if len(texts) != len(problems) * n_samples:
        raise ValueError(f"sample_scores: {len(texts)} texts for {len(problems)} problems x {n_samples} samples")
    correct, maj = [], []
    for i, p in enumerate(problems):
        row = texts[i * n_samples:(i + 1) * n_samples]
        cor = [check_answer(p, t) for t in row]
        ans = [canonical_answer(t) for t in row]
        winner, _ = majority(ans)
        maj.append(winner is not None and any(c for a, c in zip(ans, cor) if a == winner))
        correct.append(cor)
    correct = np.array(correct, bool)
    return {"avg": float(correct.mean()), "maj": float(np.mean(maj)), "pass": float(correct.any(1).mean())}


def kl_terms(logprob, ref_logprob, mask) -> tuple[float, float, float, float]:
    """Sums for KL(π_θ ‖ π_ref) from responses sampled from π_θ: (Σ_responses Σ_t d, Σ_t k3, #tokens,
    #responses) with d = log π_θ(y_t) − log π_ref(y_t) and k3 = exp(−d) − (−d) − 1 (verl's low_var_kl,
    −d clipped to ±20). logprob, ref_logprob, mask: [R, T]. KL/response = Σd / R (an unbiased estimate of
    the sequence-level KL), per token = Σd / #tokens (k1) or Σk3 / #tokens (k3)."""
    import numpy as np

    lp, ref, m = (np.asarray(x, np.float64) for x in (logprob, ref_logprob, mask))
    d = (lp - ref) * m
    r = np.clip(ref - lp, -20, 20)
    return float(d.sum()), float(((np.exp(r) - r - 1) * m).sum()), float(m.sum()), float(lp.shape[0])


def measure(policy, tokenizer, problems: Sequence[Any], n_samples: int, max_new_tokens: int, seed: int,
            reference=None, temperature: float = 1.0, batch_size: int = 64) -> dict[str, float]:
    """sample_scores of n_samples draws per problem from `policy` (+ mean length in tokens); with
    `reference` also KL(π_θ ‖ π_ref) from the same draws (kl_terms): kl_seq (nats per response), kl_k1_tok,
    kl_k3_tok (per token). KL needs temperature 1 (the sampled distribution is then π_θ itself)."""
    import jax
    import numpy as np

    from urlvr_jax.data.synthetic import synthetic_prompt
    from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids, score
    from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, pad_id_of

    if reference is not None and temperature != 1.0:
        raise ValueError("measure: KL to the reference needs temperature 1 (samples from π_θ itself)")
    problems = list(problems)
    eos, pad = tuple(eos_ids_of(tokenizer, policy.cfg)), pad_id_of(tokenizer)
    texts, lengths, sums = [], [], np.zeros(4)
    key = jax.random.key(seed)
    width = min(batch_size, len(problems))
    for start in range(0, len(problems), width):
        batch = problems[start:start + width]
        filled = batch + [batch[-1]] * (width - len(batch))  # one compiled shape
        ids, mask = encode_prompts(tokenizer, [synthetic_prompt(p) for p in filled])
        out = generate_ids(policy, ids, mask, jax.random.fold_in(key, start),
                           SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
                           num_samples=n_samples, eos_ids=eos, pad_id=pad)
        rows = len(batch) * n_samples
        tokens, rmask, lp = (np.asarray(x)[:rows] for x in jax.device_get((out.tokens, out.mask, out.stats.logprob)))
        texts += decode_responses(tokenizer, tokens, rmask)
        lengths += list(rmask.sum(-1))
        if reference is not None:
            ref = score(reference, np.repeat(ids, n_samples, axis=0), np.repeat(mask, n_samples, axis=0),
                        out.tokens, out.mask).logprob
            sums += kl_terms(lp, np.asarray(jax.device_get(ref))[:rows], rmask)
    res = {**sample_scores(problems, texts, n_samples), "length": float(np.mean(lengths))}
    if reference is not None:
        res.update(kl_seq=sums[0] / sums[3], kl_k1_tok=sums[0] / max(sums[2], 1.0),
                   kl_k3_tok=sums[1] / max(sums[2], 1.0))
    return res


def checkpoint_steps(workdir) -> list[int]:
    d = Path(workdir).absolute() / "checkpoints"
    return sorted(int(p.name) for p in d.glob("[0-9]*") if (p / "state").exists())


def fmt(x, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if x != x else f"{x:.{nd}f}"
    return str(x)


def md_table(columns, rows) -> str:
    """columns: [(key, header, format)] with format 'f3' / 'f1' / 'f0' / 'str'."""
    def cell(v, f):
        if v is None:
            return "—"
        if f == "str" or not isinstance(v, (int, float)):
            return str(v)
        return f"{v:.{int(f[1:])}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    import os

    import jax

    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return (f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}, "
            f"load average at the end {load}")


def mean_first_last(values, w: int = SMOOTH) -> tuple[float, float]:
    import numpy as np

    v = np.asarray(values, float)
    w = max(1, min(w, len(v)))
    return float(v[:w].mean()), float(v[-w:].mean())


# ----------------------------------------------------------------------------------------------------
# This experiment
# ----------------------------------------------------------------------------------------------------
MEASURE_SEEDS = {"heldout": 1, "train": 2}  # the draws of every measurement (common random numbers)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_common_args(p, NAME)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 2048], help="training-set sizes (prompts)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="train.seed of the runs (one run per size and seed)")
    p.add_argument("--steps", type=int, default=150, help="RL steps per run")
    p.add_argument("--rung", default="q0.3", help="base model: a ladder rung (q0.1 ... q0.8) or a folder")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--samples", type=int, default=8, help="rollouts per prompt (the vote)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--every", type=int, default=30, help="checkpoint (measurement) period in steps")
    p.add_argument("--eval-limit", type=int, default=64, help="held-out problems; also the training prompts measured")
    p.add_argument("--samples-eval", type=int, default=8, help="samples per problem in each measurement")
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.seeds, a.steps, a.prompts, a.samples, a.max_new_tokens = [8], [0], 2, 2, 2, 16
        a.every, a.eval_limit, a.samples_eval = 1, 2, 2
    if min(a.sizes) < 1 or a.steps < 1 or a.every < 1:
        p.error("--sizes, --steps and --every must be >= 1")
    return a


def run_config(args, size: int, seed: int):
    overrides = {"data.limit": size, "data.synthetic_size": max(4096, size),
                 "sampling.max_new_tokens": args.max_new_tokens,
                 "train.checkpoint_every": args.every, "train.keep_checkpoints": args.steps // args.every + 2}
    if args.smoke:
        overrides["train.pistar_diagnostics"] = False  # one scoring pass fewer to compile
    return experiment_config(args.rung, "majority_vote", steps=args.steps, prompts=args.prompts,
                             samples=args.samples, lr=args.lr, seed=seed, **overrides)


def measure_run(args, config, workdir: Path, heldout) -> list[dict[str, Any]]:
    """measure() at step 0 (the base model) and every checkpoint; cached in <workdir>/measurements.json."""
    from urlvr_jax.train import load_task

    settings = {"samples": args.samples_eval, "eval_limit": args.eval_limit, "seeds": MEASURE_SEEDS,
                "max_new_tokens": args.max_new_tokens, "steps": checkpoint_steps(workdir)}
    cache = workdir / "measurements.json"
    if cache.exists() and json.loads(cache.read_text())["settings"] == settings:
        return json.loads(cache.read_text())["rows"]
    reference, tok = load_policy(args.rung)
    train_problems = list(load_task(config).problems[: args.eval_limit])
    rows = []
    for step in [0] + settings["steps"]:
        policy = reference if step == 0 else load_policy(args.rung, workdir, step)[0]
        row = {"step": step}
        for tag, probs in (("heldout", heldout), ("train", train_problems)):
            m = measure(policy, tok, probs, args.samples_eval, args.max_new_tokens, MEASURE_SEEDS[tag],
                        reference=reference)
            row.update({f"{tag}/{k}": v for k, v in m.items()})
        rows.append(row)
    cache.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return rows


def summarize(size: int, seed: int, run: dict, rows: list[dict], args) -> dict[str, Any]:
    recs = run["records"]
    _, gt = curve(recs, "urlvr/gt_reward_mean")
    _, ra = curve(recs, "urlvr/reward_accuracy")
    _, proxy = curve(recs, "urlvr/proxy_reward_mean")
    _, mr = curve(recs, "urlvr/majority_ratio")
    last = recs[-1]
    final = rows[-1]
    out = {"size": size, "seed": seed, "steps": len(recs), "epochs": len(recs) * args.prompts / size,
           "mcs_raw": None if last.get("mcs/raw", -1) < 0 else last["mcs/raw"],
           "mcs_sustained": None if last.get("mcs/sustained", -1) < 0 else last["mcs/sustained"],
           "wall_s": run["seconds"], "measured_step": final["step"]}
    for name, v in (("rollout_gt", gt), ("reward_acc", ra), ("proxy", proxy), ("majority_ratio", mr)):
        out[f"{name}_first"], out[f"{name}_last"] = mean_first_last(v)
    out["reward_acc_min"] = float(moving_average(ra, SMOOTH).min())
    for tag in ("heldout", "train"):
        for k in ("avg", "maj", "pass", "kl_seq", "kl_k3_tok", "length"):
            out[f"{tag}_{k}_base"], out[f"{tag}_{k}_final"] = rows[0][f"{tag}/{k}"], final[f"{tag}/{k}"]
        out[f"{tag}_maj_peak"] = max(r[f"{tag}/maj"] for r in rows)
        out[f"{tag}_avg_peak"] = max(r[f"{tag}/avg"] for r in rows)
    return out


COLUMNS = [("size", "prompts", "str"), ("seed", "seed", "str"), ("epochs", "epochs", "f1"),
           ("mcs_sustained", "MCS", "str"),
           ("reward_acc_first", "reward acc first", "f3"), ("reward_acc_last", "last", "f3"),
           ("proxy_first", "proxy first", "f3"), ("proxy_last", "last", "f3"),
           ("heldout_avg_base", "held-out avg base", "f3"), ("heldout_avg_peak", "peak", "f3"),
           ("heldout_avg_final", "final", "f3"),
           ("heldout_maj_base", "held-out maj base", "f3"), ("heldout_maj_peak", "peak", "f3"),
           ("heldout_maj_final", "final", "f3"),
           ("train_avg_base", "train-prompt avg base", "f3"), ("train_avg_final", "final", "f3"),
           ("train_kl_k3_tok_final", "KL k3/token train", "f3"), ("heldout_kl_k3_tok_final", "held-out", "f3"),
           ("train_kl_seq_final", "KL/response train", "f2"), ("heldout_kl_seq_final", "held-out", "f2"),
           ("wall_s", "train s", "f0")]
MEAN_KEYS = ("reward_acc_last", "heldout_avg_final", "heldout_maj_final", "train_avg_final", "train_kl_k3_tok_final",
             "heldout_kl_k3_tok_final", "train_kl_seq_final", "heldout_kl_seq_final")


def mean_rows(rows: list[dict]) -> list[dict]:
    """Per size: the mean over seeds of MEAN_KEYS, and the spread (max − min)."""
    import numpy as np

    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        m = {"size": size, "seeds": len(group)}
        for k in MEAN_KEYS:
            v = np.array([r[k] for r in group], float)
            m[k], m[k + "_spread"] = float(v.mean()), float(v.max() - v.min())
        out.append(m)
    return out


def mean_table(rows: list[dict]) -> str:
    cols = [("size", "prompts", "str"), ("seeds", "seeds", "str")]
    for k in MEAN_KEYS:
        cols.append((k, k.replace("_final", "").replace("_", " ") + " (mean, spread)", "pair"))
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [str(r["size"]), str(r["seeds"])] + [f"{r[k]:.3f} ({r[k + '_spread']:.3f})" for k in MEAN_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, runs: dict, meas: dict, args) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))
    colors = {size: f"C{i}" for i, size in enumerate(args.sizes)}
    styles = ["-", "--", ":", "-."]
    for (size, seed), run in runs.items():
        recs = run["records"]
        col, ls = colors[size], styles[args.seeds.index(seed) % len(styles)]
        lbl = f"{size} prompts, seed {seed}"
        for a, key in ((ax[0, 0], "urlvr/gt_reward_mean"), (ax[0, 1], "urlvr/reward_accuracy"),
                       (ax[0, 2], "urlvr/proxy_reward_mean")):
            s, v = curve(recs, key)
            a.plot(s, moving_average(v, SMOOTH), ls, color=col, label=lbl)
        rows = meas[(size, seed)]
        st = [r["step"] for r in rows]
        for a, key in ((ax[1, 0], "maj"), (ax[1, 1], "avg"), (ax[1, 2], "kl_k3_tok")):
            a.plot(st, [r[f"heldout/{key}"] for r in rows], "s" + ls, color=col, ms=4, label=f"{lbl}: held-out")
            a.plot(st, [r[f"train/{key}"] for r in rows], "o" + ls, color=col, ms=3, alpha=0.45,
                   label=f"{lbl}: train prompts")
    titles = [[f"rollout GT accuracy (trailing mean {SMOOTH})", f"reward accuracy (trailing mean {SMOOTH})",
               f"proxy (majority-vote) reward (trailing mean {SMOOTH})"],
              [f"maj@{args.samples_eval} (T=1) at checkpoints (squares: held-out, faint: train prompts)",
               f"avg@{args.samples_eval} (T=1) at checkpoints", "KL(π_θ ‖ π_ref), k3 per token"]]
    for i in range(2):
        for j in range(3):
            ax[i, j].set_title(titles[i][j], fontsize=9)
            ax[i, j].set_xlabel("step")
            ax[i, j].grid(alpha=0.3)
    ax[0, 0].legend(fontsize=7)
    fig.suptitle(f"Majority-vote URLVR vs training-set size (ladder {args.rung}, {args.prompts} prompts x "
                 f"{args.samples} samples per step, lr {args.lr:g}, seeds {args.seeds})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    heldout = eval_problems(args.rung, args.eval_limit, EVAL_SEED)
    runs, meas, rows = {}, {}, []
    jobs = [(size, seed) for seed in args.seeds for size in args.sizes]
    bar = tqdm(jobs, desc=NAME, unit="run", disable=args.smoke)
    for size, seed in bar:
        bar.set_postfix(size=size, seed=seed)
        config = run_config(args, size, seed)
        workdir = runs_dir / f"n{size}_s{seed}"
        runs[(size, seed)] = run_training(config, workdir, fresh=args.fresh)
        meas[(size, seed)] = measure_run(args, config, workdir, heldout)
        rows.append(summarize(size, seed, runs[(size, seed)], meas[(size, seed)], args))
    rows.sort(key=lambda r: (r["size"], r["seed"]))
    means = mean_rows(rows)
    plot(out / f"{NAME}.png", runs, meas, args)
    total = time.perf_counter() - t_start
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}
    keep = ("step", "urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "urlvr/label_accuracy",
            "urlvr/majority_ratio", "response/entropy_mean", "response/length_mean", "mcs/raw", "mcs/sustained",
            "pistar/accuracy", "time/step")
    write_json(out / "results.json", {
        "settings": settings, "rows": rows, "means": means, "total_wall_s": total, "machine": machine_line(),
        "measurements": {f"n{s}_s{sd}": meas[(s, sd)] for s, sd in meas},
        "curves": {f"n{s}_s{sd}": [{k: r[k] for k in keep if k in r} for r in runs[(s, sd)]["records"]]
                   for s, sd in runs}})
    md = [f"# Finding 3: training-set size (ladder {args.rung})", "",
          f"Majority-vote URLVR, {args.steps} steps of {args.prompts} prompts x {args.samples} samples x "
          f"{args.max_new_tokens} tokens, lr {args.lr:g}, seeds {args.seeds}; sizes are nested subsets of one training "
          f"set. Measured at step {rows[-1]['measured_step'] if rows else '—'} (final) and every {args.every} steps: "
          f"{args.samples_eval} samples at T=1 per problem on {args.eval_limit} held-out problems and on the first "
          f"{args.eval_limit} training prompts of the run (the same draws everywhere); 'first'/'last' = mean of the "
          f"first/last {SMOOTH} steps; MCS = the trainer's sustained Model Collapse Step (reward accuracy < 0.01 for "
          f"5 steps; — = never).", "", md_table(COLUMNS, rows), "", "Mean over seeds (spread = max − min):", "",
          mean_table(means), "", f"Total wall-clock {total:.0f} s (finished runs are reused); {machine_line()}.", "",
          f"![curves]({NAME}.png)", ""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return {"rows": rows, "means": means, "measurements": meas}


if __name__ == "__main__":
    main()
