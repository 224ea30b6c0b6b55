"""Finding 4 of the paper (§7.3): test-time training on a small evaluation set.

The paper trains with the majority-vote reward (TTRL) on the 40 unlabeled AMC23 problems and reports
that AMC23 and AIME24 accuracy improve. Here, from one synthetic base model (a shipped ladder rung):

  ttt       majority-vote URLVR on the unlabeled problems of a small evaluation set E (held-out
            eval-split problems; their answers are never used for training),
  disjoint  the same budget (steps, prompts per step, samples, seed) on the same number of training-split
            problems (disjoint from E),

and accuracy before/after on E itself and on a transfer set T of other held-out problems (the AIME24
analogue: same task distribution, never trained on by either run), every --every steps.

    python experiments/testtime_training.py                 # |E| = 64, |T| = 256, 120 steps per run
    python experiments/testtime_training.py --steps 60 --out /tmp/ttt --runs-dir /tmp/ttt_runs
    python experiments/testtime_training.py --smoke --out /tmp/ttt --runs-dir /tmp/ttt_runs

Measurements (dataset_size.measure): --samples-eval samples per problem at temperature 1 (the RL and
ladder-measurement temperature), exact checker; avg, maj, pass over those samples; the same random
draws for every checkpoint and both runs; KL(π_θ ‖ π_ref) on E as well.

Writes to --out: results.md, results.json, test_time_training.png; runs (checkpoints) under --runs-dir.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EVAL_SEED,
    add_common_args,
    curve,
    eval_problems,
    experiment_config,
    load_policy,
    moving_average,
    pyplot,
    run_training,
    setup_jax,
    write_json,
)
from dataset_size import SMOOTH, checkpoint_steps, machine_line, md_table, mean_first_last, measure  # noqa: E402

NAME = "test_time_training"  # results/ and runs/ folder names (the script is testtime_training.py: not a test)
ARMS = ("ttt", "disjoint")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_common_args(p, NAME)
    p.add_argument("--rung", default="q0.3", help="base model: a ladder rung (q0.1 ... q0.8) or a folder")
    p.add_argument("--n-eval", type=int, default=64, help="|E|: the evaluation set trained on at test time")
    p.add_argument("--n-transfer", type=int, default=256, help="|T|: other held-out problems (transfer)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--samples", type=int, default=8, help="rollouts per prompt (the vote)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--every", type=int, default=40, help="checkpoint (measurement) period in steps")
    p.add_argument("--samples-eval", type=int, default=8, help="samples per problem in each measurement")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.smoke:
        a.n_eval, a.n_transfer, a.steps, a.prompts, a.samples = 4, 4, 2, 2, 2
        a.max_new_tokens, a.every, a.samples_eval = 16, 1, 2
    if a.n_eval < 1 or a.n_transfer < 1 or a.steps < 1 or a.every < 1:
        p.error("--n-eval, --n-transfer, --steps and --every must be >= 1")
    return a


def arm_config(args, arm: str):
    overrides = {"sampling.max_new_tokens": args.max_new_tokens, "train.checkpoint_every": args.every,
                 "train.keep_checkpoints": args.steps // args.every + 2}
    if arm == "ttt":  # the held-out problems of E, unlabeled (problems_for_model(.., EVAL_SEED, "eval")[:n_eval])
        overrides.update({"data.split": "eval", "data.synthetic_seed": EVAL_SEED, "data.synthetic_size": args.n_eval})
    else:  # the same number of training-split problems (the content-hash split keeps them disjoint from E)
        overrides.update({"data.split": "train", "data.limit": args.n_eval})
    if args.smoke:
        overrides["train.pistar_diagnostics"] = False
    return experiment_config(args.rung, "majority_vote", steps=args.steps, prompts=args.prompts, samples=args.samples,
                             lr=args.lr, seed=args.seed, **overrides)


def problem_sets(args):
    """E, T and each arm's training problems, checked: ttt trains on exactly E; disjoint and T avoid E."""
    from urlvr_jax.train import load_task

    E = eval_problems(args.rung, args.n_eval, EVAL_SEED)
    e_ids = {p.id for p in E}
    pool = eval_problems(args.rung, args.n_eval + args.n_transfer, EVAL_SEED + 1)
    T = [p for p in pool if p.id not in e_ids][: args.n_transfer]
    if len(T) < args.n_transfer:
        raise ValueError(f"only {len(T)} transfer problems disjoint from E; lower --n-transfer")
    train_sets = {arm: list(load_task(arm_config(args, arm)).problems) for arm in ARMS}
    if [p.id for p in train_sets["ttt"]] != [p.id for p in E]:
        raise AssertionError("the ttt arm does not train on exactly the evaluation set E")
    if e_ids & {p.id for p in train_sets["disjoint"]} or len(train_sets["disjoint"]) != args.n_eval:
        raise AssertionError("the disjoint arm's training set overlaps E or has the wrong size")
    return E, T, train_sets


def measure_run(args, workdir, E, T) -> list[dict]:
    """measure() on E (with KL) and T at step 0 and every checkpoint; cached in <workdir>/measurements.json."""
    steps = [0] + (checkpoint_steps(workdir) if workdir is not None else [])
    settings = {"samples": args.samples_eval, "n_eval": args.n_eval, "n_transfer": args.n_transfer, "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "steps": steps}
    cache = None if workdir is None else Path(workdir) / "measurements.json"
    if cache is not None and cache.exists() and json.loads(cache.read_text())["settings"] == settings:
        return json.loads(cache.read_text())["rows"]
    reference, tok = load_policy(args.rung)
    rows = []
    for step in steps if workdir is not None else [0]:
        policy = reference if step == 0 else load_policy(args.rung, workdir, step)[0]
        row = {"step": step}
        row.update({f"E/{k}": v for k, v in measure(policy, tok, E, args.samples_eval, args.max_new_tokens,
                                                     args.seed + 1, reference=reference).items()})
        row.update({f"T/{k}": v for k, v in measure(policy, tok, T, args.samples_eval, args.max_new_tokens,
                                                     args.seed + 2).items()})
        rows.append(row)
    if cache is not None:
        cache.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    return rows


COLUMNS = [("run", "run", "str"), ("step", "step", "str"),
           ("E/avg", "E avg", "f3"), ("E/maj", "E maj", "f3"), ("E/pass", "E pass", "f3"),
           ("T/avg", "T avg", "f3"), ("T/maj", "T maj", "f3"), ("T/pass", "T pass", "f3"),
           ("E/kl_k3_tok", "KL k3/token on E", "f4"), ("E/kl_seq", "KL/response on E", "f3"),
           ("epochs", "epochs on its set", "f1"), ("mcs", "MCS", "str"),
           ("reward_acc_first", "reward acc first", "f3"), ("reward_acc_last", "last", "f3"),
           ("rollout_gt_first", "rollout GT first", "f3"), ("rollout_gt_last", "last", "f3"),
           ("wall_s", "train s", "f0")]


def plot(path: Path, runs: dict, meas: dict, args) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 4, figsize=(19, 4.3))
    for arm in ARMS:
        rows = meas[arm]
        st = [r["step"] for r in rows]
        line, = ax[0].plot(st, [r["E/maj"] for r in rows], "o-", label=f"{arm}: maj")
        col = line.get_color()
        ax[0].plot(st, [r["E/avg"] for r in rows], "s--", color=col, label=f"{arm}: avg")
        ax[1].plot(st, [r["T/maj"] for r in rows], "o-", color=col, label=f"{arm}: maj")
        ax[1].plot(st, [r["T/avg"] for r in rows], "s--", color=col, label=f"{arm}: avg")
        recs = runs[arm]["records"]
        s, v = curve(recs, "urlvr/gt_reward_mean")
        ax[2].plot(s, moving_average(v, SMOOTH), color=col, label=f"{arm}: rollout GT accuracy")
        s, v = curve(recs, "urlvr/reward_accuracy")
        ax[3].plot(s, moving_average(v, SMOOTH), color=col, label=f"{arm}: reward accuracy")
        s, v = curve(recs, "urlvr/proxy_reward_mean")
        ax[3].plot(s, moving_average(v, SMOOTH), ":", color=col, label=f"{arm}: proxy reward")
    titles = [f"E ({args.n_eval} problems): maj/avg@{args.samples_eval}, T=1",
              f"T ({args.n_transfer} other held-out problems)",
              f"rollouts on the training prompts (trailing mean {SMOOTH})",
              f"reward accuracy / proxy (trailing {SMOOTH})"]
    for a, t in zip(ax, titles):
        a.set_title(t, fontsize=10)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"Test-time training on E vs the same budget on disjoint training problems (ladder {args.rung})")
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
    E, T, train_sets = problem_sets(args)
    runs, meas = {}, {}
    bar = tqdm(ARMS, desc=NAME, unit="run", disable=args.smoke)
    for arm in bar:
        bar.set_postfix(arm=arm)
        wd = runs_dir / arm
        runs[arm] = run_training(arm_config(args, arm), wd, fresh=args.fresh)
        meas[arm] = measure_run(args, wd, E, T)
    rows = [{"run": "base", **meas["ttt"][0]}]
    for arm in ARMS:
        recs = runs[arm]["records"]
        _, ra = curve(recs, "urlvr/reward_accuracy")
        _, gt = curve(recs, "urlvr/gt_reward_mean")
        mcs = recs[-1].get("mcs/sustained", -1)
        r = {"run": arm, **meas[arm][-1], "epochs": len(recs) * args.prompts / args.n_eval,
             "mcs": None if mcs is None or mcs < 0 else mcs, "wall_s": runs[arm]["seconds"]}
        r["reward_acc_first"], r["reward_acc_last"] = mean_first_last(ra)
        r["rollout_gt_first"], r["rollout_gt_last"] = mean_first_last(gt)
        rows.append(r)
    plot(out / f"{NAME}.png", runs, meas, args)
    total = time.perf_counter() - t_start
    keep = ("step", "urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "urlvr/label_accuracy",
            "urlvr/majority_ratio", "mcs/sustained", "time/step")
    write_json(out / "results.json", {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}, "rows": rows,
        "measurements": meas, "total_wall_s": total, "machine": machine_line(),
        "E_ids": [p.id for p in E], "T_ids": [p.id for p in T],
        "disjoint_train_ids": [p.id for p in train_sets["disjoint"]],
        "curves": {arm: [{k: r[k] for k in keep if k in r} for r in runs[arm]["records"]] for arm in runs}})
    md = [f"# Finding 4: test-time training (ladder {args.rung})", "",
          f"Majority-vote URLVR for {args.steps} steps of {args.prompts} prompts x {args.samples} samples x "
          f"{args.max_new_tokens} tokens, lr {args.lr:g}, seed {args.seed}. ttt: trained on the {args.n_eval} "
          f"unlabeled problems of the evaluation set E; disjoint: the same budget on {args.n_eval} training-split "
          f"problems. E and T ({args.n_transfer} other held-out problems): avg / maj / pass over "
          f"{args.samples_eval} samples per problem "
          f"at T=1, the same draws for every row. 'first'/'last' = mean of the first/last {SMOOTH} steps; MCS = "
          f"sustained Model Collapse Step (— = never).", "", md_table(COLUMNS, rows), "",
          f"Total wall-clock {total:.0f} s; {machine_line()}.", "", f"![curves]({NAME}.png)", ""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return {"rows": rows, "measurements": meas}


if __name__ == "__main__":
    main()
