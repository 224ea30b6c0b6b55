"""Finding 5 of the paper (§7.5): external rewards vs an intrinsic one on Countdown.

The paper: on Countdown, self-verification (the policy judges its own solutions; checking is easier than
solving) keeps improving, near GT supervision, while the trajectory-entropy reward degrades. Here, from one
synthetic Countdown base model, three arms with the same RL seeds, prompts and hyper-parameters:

  countdown           the exact Countdown checker (urlvr_jax.rewards.external.countdown_response_reward:
                      the boxed expression uses the given numbers and hits the target) — a programmatic
                      verifier that needs no labels; on this task it coincides with GT supervision
  self_verification   the policy itself judges each of its solutions (one sampled verdict,
                      \\boxed{True}/\\boxed{False}, parsed by urlvr_jax.rewards.external.parse_verdict)
  trajectory_entropy  (1/T) Σ_t log π(y_t), the intrinsic certainty reward (urlvr_jax.rewards.registry)

The base model. A tiny Llama (82k parameters) trained with urlvr_jax.sft's recipe (two data phases:
correct/noisy traces, then traces with the systematic "greedy" wrong path at rate --q; noise 0.3) on
Countdown with 3 numbers from 1..9 and targets 10..40 (larger tasks are out of reach for this model:
see TASK below), with verification pairs mixed into both phases so that self-verification
means something for a model this small: prompt "V: make <target> from <numbers> by <expression>\nA: ",
completion = the step-by-step evaluation of the expression, the value compared with the target
("10!=11" / "11=11") and the verdict \boxed{True}/\boxed{False} (the exact checker's). The judged
expressions are drawn from the same trace distribution (correct, systematic and noisy paths), so the
verifier has seen the kinds of mistakes the solver makes; it was never taught to check which numbers
were used.

Each arm is a variant of configs/external_rewards.py run through the trainer (urlvr_jax.train: external
rewards go through the step's host-reward port), with train.seed = the RL seed; held-out accuracy is
measured from the checkpoints (measure(): T = 1, the same draws at every evaluation) and the verifier's
verdict quality from the logged rollouts (rollouts.jsonl).

    python experiments/external_rewards.py                   # base model + 3 arms x RL seeds 0, 1 x 100 steps
    python experiments/external_rewards.py --arms countdown trajectory_entropy --steps 40
    python experiments/external_rewards.py --smoke

Writes to --out: results.md, results.json (settings, base-model recipe and prior, table, every per-step
record), external_rewards.png. Under --runs-dir: base_model/ (the Countdown base model, reused when its
recipe matches; --rebuild to force) and <arm>_s<seed>/ (trainer workdirs, reused when the config matches; --fresh).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    EVAL_SEED,
    add_common_args,
    curve,
    load_policy,
    moving_average,
    pyplot,
    run_training,
    setup_jax,
    write_json,
)
from dataset_size import SMOOTH, checkpoint_steps, fmt, machine_line, md_table, mean_first_last, measure  # noqa: E402

NAME = "external_rewards"
ARMS = ("countdown", "self_verification", "trajectory_entropy")
BINARY = ("countdown", "self_verification")
VERSION = 3  # of the base-model recipe below (part of the cache key); 2: number check, more verification data;
# 3: shifted-target negatives, 8000 SFT steps
EVAL_DRAWS = 1  # seed of the held-out evaluation draws: the same at every evaluation, in every arm and run


# ----------------------------------------------------------------------------------------------------
# Verification traces
# ----------------------------------------------------------------------------------------------------
def _fmt_value(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _fmt_operand(v: Fraction) -> str:
    s = _fmt_value(v)
    return f"({s})" if (v < 0 or v.denominator != 1) else s


def evaluation_lines(expression: str) -> tuple[Fraction | None, list[str]]:
    """Evaluate an expression step by step, post-order, in the solve traces' format ("9+7=16").

    Returns (value, lines); value None if it does not parse or divides by zero (lines then stop there).
    """
    from urlvr_jax.data.synthetic import ExpressionError, parse_expression

    try:
        tree = parse_expression(expression)
    except ExpressionError:
        return None, []
    lines: list[str] = []

    def go(t) -> Fraction | None:
        if isinstance(t, int):
            return Fraction(t)
        op, left, right = t
        a = go(left)
        b = go(right) if a is not None else None
        if a is None or b is None or (op == "/" and b == 0):
            return None
        c = {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b
        lines.append(f"{_fmt_operand(a)}{op}{_fmt_operand(b)}={_fmt_value(c)}")
        return c

    return go(tree), lines


def verification_prompt(problem, expression: str) -> str:
    """The judge's prompt, in the format the trainer's self-verification uses (data/tasks.py: Task)."""
    from urlvr_jax.data.tasks import SYNTHETIC_VERIFY_PREFIX

    return f"{SYNTHETIC_VERIFY_PREFIX}{problem.problem} by {expression}\nA: "


def number_lines(numbers, expression: str) -> tuple[bool, list[str]]:
    """Cross the expression's numbers, left to right, off the given ones: "8 2 4", "-8: 2 4", "-4: 2",
    "-2: .", "ok"; a number that is not (or no longer) available ends it with "-5: no". One local step per
    line (copy the remaining list without one occurrence), so a tiny model can check each number at most
    once. Returns (ok, lines); an expression that does not parse gives (False, [])."""
    from urlvr_jax.data.synthetic import ExpressionError, leaves, parse_expression

    try:
        used = leaves(parse_expression(expression))
    except ExpressionError:
        return False, []
    left = [int(x) for x in numbers]
    lines = [" ".join(map(str, left))]
    for x in used:
        if x not in left:
            return False, lines + [f"-{x}: no"]
        left.remove(x)
        lines.append(f"-{x}: {' '.join(map(str, left)) or '.'}")
    return True, lines + ["ok"]


def verification_completion(problem, expression: str) -> str:
    """Check the numbers (number_lines), evaluate step by step, compare with the target; the verdict is the
    exact checker's. Recipe v1 (VERSION 1) had no number check: an expression hitting the target with a
    number that was not given was judged True."""
    from urlvr_jax.data.synthetic import check_answer

    ok, lines = number_lines(problem.extra["numbers"], expression)
    if ok:
        value, steps = evaluation_lines(expression)
        target = problem.extra["target"]
        lines += steps
        if value is not None:
            lines.append(f"{_fmt_value(value)}{'=' if value == target else '!='}{target}")
    verdict = "True" if check_answer(problem, f"\\boxed{{{expression}}}") else "False"
    if ok and verdict == "True" and not lines[-1].endswith(f"={problem.extra['target']}"):
        raise AssertionError(f"verification trace disagrees with the checker: {problem.problem} by {expression}")
    return "\n".join(lines + [f"\\boxed{{{verdict}}}"])


def swap_a_number(expression: str, rng) -> str:
    """The expression with one of its numbers replaced by another digit 1..9 (a hard negative for the number
    check: the solver's own traces rarely use a number that was not given)."""
    import re

    spans = [m.span() for m in re.finditer(r"\d+", expression)]
    if not spans:
        return expression
    a, b = spans[rng.randrange(len(spans))]
    old = int(expression[a:b])
    new = rng.choice([d for d in range(1, 10) if d != old])
    return expression[:a] + str(new) + expression[b:]


def shift_target(problem, rng, max_shift: int = 5):
    """The problem with its target moved by 1..max_shift either way (a hard negative for the comparison: the
    expression's value then misses the target by a little, and a verifier that writes the target as the
    result of a step it is unsure of says True)."""
    import dataclasses

    numbers, target = problem.extra["numbers"], problem.extra["target"]
    new = max(1, target + rng.choice([d for d in range(-max_shift, max_shift + 1) if d]))
    text = f"make {new} from {' '.join(str(x) for x in numbers)}"
    return dataclasses.replace(problem, problem=text, extra={**problem.extra, "target": new})


def verification_pairs(problems, q: float, family_params, seed: int, per_problem: int, swap: float = 0.0,
                       shift: float = 0.0) -> tuple[list[tuple[str, str]], dict]:
    """(prompt, completion) pairs judging the expressions of SFT traces drawn with systematic rate q and
    the base model's error process `family_params` (its recipe's); a share `swap` of them with one number
    of the expression replaced (swap_a_number), a share `shift` of the others with the target moved
    (shift_target)."""
    import random

    from urlvr_jax.data import synthetic as syn
    from urlvr_jax.rewards.grading import extract_boxed

    traces = syn.make_sft_traces(problems, q, family_params, seed=seed, samples_per_problem=per_problem)
    by_id = {p.id: p for p in problems}
    rng = random.Random(seed)
    pairs, n_true = [], 0
    for t in traces.traces:
        p = by_id[t.problem_id]
        expr = extract_boxed(t.completion)
        if rng.random() < swap:
            expr = swap_a_number(expr, rng)
        elif rng.random() < shift:
            p = shift_target(p, rng)
        completion = verification_completion(p, expr)
        n_true += completion.endswith("{True}")
        pairs.append((verification_prompt(p, expr), completion))
    return pairs, {"pairs": len(pairs), "true_fraction": n_true / max(len(pairs), 1), "paths": traces.path_counts()}


# ----------------------------------------------------------------------------------------------------
# The Countdown base model (solver + verifier)
# ----------------------------------------------------------------------------------------------------
# The task: 3 numbers from 1..9, targets 10..40 (~730 train-split and ~190 eval-split problems). Larger
# tasks are beyond this model size and budget. The default Countdown task of urlvr_jax.sft (4 numbers from
# 1..12, targets 10..99), built with build_base_model's defaults: held-out avg@16 0.004, pass@16 0.06 —
# no reward signal. 3 numbers from 1..12, targets 10..60 (this recipe, 2000 problems): avg@8 0.06,
# pass@8 0.30, and the verifier below chance (accuracy 0.43): the model had not learned the arithmetic
# (products up to 144; "11*1=51"), so it could neither solve nor check.
TASK = {"n_numbers": 3, "max_number": 9, "target_range": (10, 40)}


def base_recipe(args) -> dict:
    return {"version": VERSION, "q": args.q, "seed": args.base_seed,
            "task": {**TASK, "target_range": list(TASK["target_range"])},
            "sft_steps": args.sft_steps, "n_problems": args.n_problems,
            "sft_skip": args.sft_skip, "traces_per_problem": args.traces_per_problem,
            "verify_per_problem": args.verify_per_problem, "verify_swap": args.verify_swap,
            "verify_shift": args.verify_shift, "size": args.size,
            "lr": 1e-2, "batch_size": 32}


def build_countdown_base(out_dir: Path, args, progress: bool = True) -> dict:
    """Train the Countdown base model (solver + verifier) into out_dir/model, or reuse a matching one.

    build_base_model's recipe (urlvr_jax.sft: tiny Llama, AdamW lr 1e-2, batch 32, two data phases in one
    run: skill traces at q = 0, then the last third of the steps on traces with systematic rate q; the
    countdown error process of sft.DEFAULT_FAMILY_PARAMS), with verification pairs (verification_pairs)
    added to both phases (the same pairs, a quarter of the rows at the defaults).
    """
    import numpy as np

    from urlvr_jax.data import synthetic as syn
    from urlvr_jax.data.synthetic_tokenizer import build_synthetic_tokenizer
    from urlvr_jax.models.weights import init_model, save_model
    from urlvr_jax.sft import (
        DEFAULT_FAMILY_PARAMS,
        RECIPE_FILE,
        base_model_config,
        encode_sft_examples,
        make_problems,
        train_sft_arrays,
    )

    recipe = base_recipe(args)
    meta_file = out_dir / "c2_recipe.json"
    if meta_file.exists() and not args.rebuild and json.loads(meta_file.read_text()).get("recipe") == recipe:
        return {**json.loads(meta_file.read_text()), "reused": True}
    t0 = time.perf_counter()
    fp = {"countdown": dict(DEFAULT_FAMILY_PARAMS["countdown"])}
    # SFT problems: --n-problems of the train split after the first --sft-skip (those are left unseen for RL)
    problems = make_problems("countdown", args.sft_skip + args.n_problems, args.base_seed, "train", TASK)
    problems = problems[args.sft_skip:]
    skill = syn.make_sft_traces(problems, 0.0, fp, seed=args.base_seed, samples_per_problem=args.traces_per_problem)
    traces = syn.make_sft_traces(problems, args.q, fp, seed=args.base_seed, samples_per_problem=args.traces_per_problem)
    verify, vstats = verification_pairs(problems, args.q, fp, seed=args.base_seed + 1,
                                        per_problem=args.verify_per_problem, swap=args.verify_swap,
                                        shift=args.verify_shift)
    tok = build_synthetic_tokenizer()
    phase1 = [(t.prompt, t.completion) for t in skill.traces] + verify
    phase2 = [(t.prompt, t.completion) for t in traces.traces] + verify
    ids, mask = encode_sft_examples(tok, phase1 + phase2)  # one width for both phases: one compiled step
    n = len(phase1)
    cfg = base_model_config(args.size)
    model = init_model(cfg, seed=args.base_seed)
    prior_steps = args.sft_steps // 3
    model, losses = train_sft_arrays(model, ids[:n], mask[:n], args.sft_steps, 32, 1e-2, args.base_seed,
                                     progress=progress,
                                     then=(args.sft_steps - prior_steps, ids[n:], mask[n:]))
    final = out_dir / "model"
    save_model(model, final, tokenizer=tok)
    sft_recipe = {"q": args.q, "family": "countdown", "task": recipe["task"], "family_params": {"countdown": {
        "rules": list(fp["countdown"]["rules"]), "noise": fp["countdown"]["noise"]}}, "size": args.size,
        "num_params": cfg.num_params(), "seed": args.base_seed, "steps": args.sft_steps, "prior_steps": prior_steps,
        "batch_size": 32, "lr": 1e-2, "n_problems": args.n_problems, "made_by": "experiments/external_rewards.py"}
    (final / RECIPE_FILE).write_text(json.dumps(sft_recipe, indent=2))  # problems_for_model reads family + task
    meta = {"recipe": recipe, "model_dir": str(final), "num_params": cfg.num_params(), "rows_per_phase": n,
            "solve_paths_skill_phase": skill.path_counts(), "solve_paths": traces.path_counts(),
            "verification_data": vstats, "loss_first10": float(np.mean(losses[:10])),
            "loss_last10": float(np.mean(losses[-10:])), "seconds": time.perf_counter() - t0}
    meta_file.write_text(json.dumps(meta, indent=1))
    return {**meta, "reused": False}


# ----------------------------------------------------------------------------------------------------
# The arms: trainer runs of configs/external_rewards.py
# ----------------------------------------------------------------------------------------------------
def arm_config(arm: str, seed: int, args, model_dir: str):
    """configs/external_rewards.py:<arm> with this run's sizes and RL seed."""
    spec = importlib.util.spec_from_file_location("external_rewards_config", ROOT / "configs" / "external_rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arm)
    c.model.path = str(model_dir)
    c.data.synthetic_size, c.data.synthetic_seed = args.train_size, args.base_seed
    c.data.prompt_batch_size, c.data.max_prompt_length = args.prompts, args.prompt_width
    c.rl.num_samples, c.rl.learning_rate = args.samples, args.lr
    c.sampling.max_new_tokens = args.max_new_tokens
    c.verify.max_prompt_length, c.verify.max_new_tokens = args.verify_width, args.verdict_tokens
    c.train.steps, c.train.checkpoint_every, c.train.seed = args.steps, args.every, seed
    c.train.progress = not args.smoke
    return c


def rollout_verdict_metrics(workdir: Path, problems_by_id: dict, verdicts: bool) -> dict[int, dict[str, float]]:
    """Per step, the share of responses with a boxed answer and (verdicts=True: self-verification) how the
    verdicts (reward > 0.5 = 'True') relate to the exact checker, read from rollouts.jsonl (responses and the
    rewards the step trained on)."""
    import numpy as np

    from urlvr_jax.data.synthetic import check_answer
    from urlvr_jax.data.tasks import make_task

    task = make_task(list(problems_by_id.values())[:1])
    out = {}
    for line in (workdir / "rollouts.jsonl").read_text().splitlines():
        ro = json.loads(line)
        batch = [problems_by_id[p["id"]] for p in ro["problems"]]
        texts = ro["responses"]
        correct = np.array([[check_answer(p, t) for t in group] for p, group in zip(batch, texts)], bool)
        asked = np.array([[task.verification_prompt(p, t) is not None for t in group]
                          for p, group in zip(batch, texts)])
        v = verdict_metrics(np.asarray(ro["rewards"]), correct, None, asked) if verdicts else {}
        out[ro["step"]] = {**v, "response/answered_frac": float(np.mean([["\\boxed{" in t for t in g] for g in texts]))}
    return out


def run_arm(arm: str, seed: int, args, model_dir: str, train_problems, heldout, workdir: Path) -> dict[str, Any]:
    """One trainer run with reward `arm` and RL seed `seed`, then held-out measure() of the base model and every
    checkpoint (cached in measurements.json). Returns records (the trainer's, with eval/* at the measured
    steps and step 0 = the base model), the MCS summary, wall-clock and examples (the first two prompts'
    responses of the last step, with their rewards)."""
    from urlvr_jax.data.synthetic import check_answer

    config = arm_config(arm, seed, args, model_dir)
    run = run_training(config, workdir, fresh=args.fresh)
    steps = checkpoint_steps(workdir)
    cache = workdir / "measurements.json"
    settings = {"samples": args.samples_eval, "eval_limit": args.eval_limit, "steps": steps,
                "max_new_tokens": args.max_new_tokens}
    if cache.exists() and json.loads(cache.read_text())["settings"] == settings and run["reused"]:
        evals = {int(k): v for k, v in json.loads(cache.read_text())["evals"].items()}
    else:
        evals = {}
        for step in [0] + steps:
            policy, tok = load_policy(model_dir, workdir if step else None, step or None)
            evals[step] = {f"eval/{k}": v for k, v in measure(policy, tok, heldout, args.samples_eval,
                                                              args.max_new_tokens, EVAL_DRAWS).items()}
        cache.write_text(json.dumps({"settings": settings, "evals": evals}))
    verdicts = rollout_verdict_metrics(workdir, {p.id: p for p in train_problems}, arm == "self_verification")
    records = [{"step": 0, **evals[0]}]
    for r in run["records"]:
        records.append({**r, **verdicts.get(r["step"], {}), **evals.get(r["step"], {})})
    last = json.loads((workdir / "rollouts.jsonl").read_text().splitlines()[-1])
    by_id = {p.id: p for p in train_problems}
    examples = [{"problem": p["problem"], "response": t, "reward": r, "correct": check_answer(by_id[p["id"]], t)}
                for p, group, rs in zip(last["problems"][:2], last["responses"], last["rewards"])
                for t, r in zip(group, rs)]
    summary = json.loads((workdir / "summary.json").read_text())
    return {"records": records, "mcs": summary["mcs"], "wall_s": run["seconds"], "examples": examples,
            "reused": run["reused"]}


def verdict_metrics(rewards, correct, parsed, asked) -> dict[str, float]:
    """How the self-verifier's verdicts (reward > 0.5 = 'True') relate to the exact checker."""
    import numpy as np

    said_true = np.asarray(rewards) > 0.5
    nan = float("nan")
    out = {"verify/asked_frac": float(asked.mean())}
    if parsed is not None:
        out["verify/parsed_frac"] = float(np.asarray(parsed)[asked].mean()) if asked.any() else nan
    return {**out, "verify/true_given_correct": float(said_true[correct].mean()) if correct.any() else nan,
            "verify/false_given_wrong": float((~said_true[~correct]).mean()) if (~correct).any() else nan,
            "verify/accuracy": float((said_true == correct).mean())}


# ----------------------------------------------------------------------------------------------------
# Prior of the base model (solver and verifier)
# ----------------------------------------------------------------------------------------------------
def measure_base(model_dir: str, heldout, args) -> dict[str, float]:
    """Solve avg/maj/pass (measure(): T=1, --samples-eval draws) and the verifier's verdicts on the model's
    own T=1 solutions to the held-out problems, judged as in training (the trainer's HostRewarder, one
    verdict per solution)."""
    import jax
    import numpy as np
    from flax import nnx

    from urlvr_jax.data.tasks import make_task
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.rewards.host import HostRewarder, VerifySettings
    from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
    from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, load_tokenizer, pad_id_of

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    out = {f"solve_{k}": v for k, v in measure(model, tok, heldout, args.samples_eval, args.max_new_tokens,
                                               EVAL_DRAWS).items()}
    task = make_task(heldout)
    graphdef, params = nnx.split(model)
    verifier = HostRewarder("self_verification", tok, num_samples=args.samples, task=task, graphdef=graphdef,
                            model_cfg=model.cfg, verify=VerifySettings(max_prompt_length=args.verify_width,
                                                                       max_new_tokens=args.verdict_tokens))
    N, P = args.samples, args.prompts
    rewards, truth, parsed, asked = [], [], [], []
    for b in range(0, len(heldout) - P + 1, P):
        batch = heldout[b:b + P]
        ids, pmask = encode_prompts(tok, task.prompts(batch, tok), width=args.prompt_width)
        ro = generate_ids(model, ids, pmask, jax.random.key(1000 + b),
                          SamplingConfig(max_new_tokens=args.max_new_tokens), num_samples=N,
                          eos_ids=tuple(eos_ids_of(tok, model.cfg)), pad_id=pad_id_of(tok))
        texts = decode_responses(tok, *jax.device_get((ro.tokens, ro.mask)))
        groups = [texts[i * N:(i + 1) * N] for i in range(P)]
        truth.append(task.correct(batch, texts, N))
        judged = verifier(batch, groups, params, jax.random.key(2000 + b))
        rewards.append(judged.rewards), parsed.append(judged.metrics["verify/parsed_frac"])
        asked.append(np.array([[task.verification_prompt(p, t) is not None for t in g] for p, g in zip(batch, groups)]))
    v = verdict_metrics(*(np.concatenate(x) for x in (rewards, truth)), None, np.concatenate(asked))
    out.update({"samples_accuracy_t1": float(np.concatenate(truth).mean()),
                **{k.replace("verify/", "verifier_"): x for k, x in v.items()},
                "verifier_parsed_frac": float(np.mean(parsed))})
    return out


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    add_common_args(p, NAME)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--samples", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--lr", type=float, default=1e-3, help="RL learning rate (the default config's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompt-width", type=int, default=40, help="solve prompts are left-padded to this")
    p.add_argument("--verify-width", type=int, default=64, help="verification prompts are left-padded to this")
    p.add_argument("--verdict-tokens", type=int, default=64)
    p.add_argument("--every", type=int, default=20, help="held-out evaluation period (steps)")
    p.add_argument("--eval-limit", type=int, default=64, help="held-out problems")
    p.add_argument("--samples-eval", type=int, default=8, help="samples per held-out problem (T=1)")
    p.add_argument("--train-size", type=int, default=700, help="RL training problems (train split; the SFT ones)")
    p.add_argument("--q", type=float, default=0.3, help="systematic-error rate of the base model's traces")
    p.add_argument("--sft-steps", type=int, default=8000, help="SFT steps of the base model (batch 32)")
    p.add_argument("--n-problems", type=int, default=700, help="SFT problems of the base model (train split)")
    p.add_argument("--sft-skip", type=int, default=0,
                   help="skip the first N train-split problems in SFT (RL can then train on problems never seen)")
    p.add_argument("--traces-per-problem", type=int, default=24, help="solve traces per SFT problem")
    p.add_argument("--verify-per-problem", type=int, default=24, help="verification pairs per SFT problem")
    p.add_argument("--verify-swap", type=float, default=0.15,
                   help="share of verification pairs whose expression has one number replaced (hard negatives)")
    p.add_argument("--verify-shift", type=float, default=0.25,
                   help="share of the other verification pairs whose target is moved by 1..5 (hard negatives)")
    p.add_argument("--size", default="tiny", choices=("tiny", "small", "medium"),
                   help="base model size (urlvr_jax.sft.SIZES)")
    p.add_argument("--build-only", action="store_true", help="build (or reuse) the base model, measure it, stop")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RL seeds (prompt order, sampling keys)")
    p.add_argument("--base-seed", type=int, default=0, help="seed of the base model (SFT) and of the problem sets")
    p.add_argument("--rebuild", action="store_true", help="rebuild the base model even if a matching one exists")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.prompts, a.samples, a.max_new_tokens, a.verdict_tokens, a.seeds = 2, 2, 2, 16, 16, [0]
        a.every, a.eval_limit, a.samples_eval, a.train_size = 2, 2, 2, 8
        a.sft_steps, a.n_problems, a.traces_per_problem, a.verify_per_problem = 3, 16, 2, 1
    if a.steps < 1 or a.every < 1:
        p.error("--steps and --every must be >= 1")
    return a


def summarize(arm: str, seed: int, run: dict) -> dict[str, Any]:
    recs = [r for r in run["records"] if r["step"] > 0]
    ev = [r for r in run["records"] if "eval/avg" in r]
    row = {"arm": arm, "seed": seed, "mcs": run["mcs"]["mcs_sustained"], "wall_s": run["wall_s"]}
    for k in ("avg", "maj", "pass"):
        vals = [r[f"eval/{k}"] for r in ev]
        row[f"heldout_{k}_base"], row[f"heldout_{k}_peak"], row[f"heldout_{k}_final"] = vals[0], max(vals), vals[-1]
    for name, key in (("rollout_gt", "urlvr/gt_reward_mean"), ("proxy", "urlvr/proxy_reward_mean"),
                      ("reward_acc", "urlvr/reward_accuracy"), ("entropy", "response/entropy_mean"),
                      ("length", "response/length_mean"), ("answered", "response/answered_frac"),
                      ("true_given_correct", "verify/true_given_correct"),
                      ("false_given_wrong", "verify/false_given_wrong")):
        _, v = curve(recs, key)
        v = [x for x in v if x == x]
        if v:
            row[f"{name}_first"], row[f"{name}_last"] = mean_first_last(v)
    return row


COLUMNS = [("arm", "reward", "str"), ("seed", "seed", "str"), ("heldout_avg_base", "held-out avg base", "f3"),
           ("heldout_avg_peak", "peak", "f3"), ("heldout_avg_final", "final", "f3"),
           ("heldout_maj_base", "held-out maj base", "f3"), ("heldout_maj_final", "final", "f3"),
           ("heldout_pass_final", "held-out pass final", "f3"),
           ("rollout_gt_first", "rollout GT first", "f3"), ("rollout_gt_last", "last", "f3"),
           ("proxy_first", "proxy first", "f3"), ("proxy_last", "last", "f3"),
           ("reward_acc_first", "reward acc first", "f3"), ("reward_acc_last", "last", "f3"),
           ("entropy_first", "entropy first", "f3"), ("entropy_last", "last", "f3"),
           ("length_first", "length first", "f1"), ("length_last", "last", "f1"), ("mcs", "MCS", "str"),
           ("wall_s", "s", "f0")]


def plot(path: Path, runs: dict, args) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(2, 3, figsize=(16, 8.5))
    panels = [("eval/avg", f"held-out avg@{args.samples_eval} (T=1, {args.eval_limit} problems)", False),
              ("urlvr/gt_reward_mean", f"rollout GT accuracy (trailing mean {SMOOTH})", True),
              ("urlvr/proxy_reward_mean", f"proxy reward (trailing mean {SMOOTH}; trajectory entropy ≤ 0)", True),
              ("urlvr/reward_accuracy", f"reward accuracy (trailing mean {SMOOTH})", True),
              ("response/entropy_mean", f"mean token entropy (trailing mean {SMOOTH})", True),
              ("response/length_mean", f"response length (trailing mean {SMOOTH})", True)]
    colors = {arm: f"C{i}" for i, arm in enumerate(ARMS)}
    styles = ["-", "--", ":", "-."]
    for (key, title, smooth), a in zip(panels, ax.flat):
        for (arm, seed), run in runs.items():
            recs = run["records"] if key.startswith("eval/") else [r for r in run["records"] if r["step"] > 0]
            s, v = curve(recs, key)
            ls = styles[args.seeds.index(seed) % len(styles)]
            a.plot(s, moving_average(v, SMOOTH) if smooth else v, ls if smooth else "o" + ls, color=colors[arm],
                   label=f"{arm}, seed {seed}", ms=3)
        a.set_title(title, fontsize=10)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    ax[0, 0].legend(fontsize=7)
    for (arm, seed), run in runs.items():
        if arm != "self_verification":
            continue
        recs = [r for r in run["records"] if r["step"] > 0]
        for key, ls in (("verify/true_given_correct", "--"), ("verify/false_given_wrong", ":")):
            pts = [(r["step"], r[key]) for r in recs if key in r and r[key] == r[key]]
            if pts:
                ax[1, 0].plot([x for x, _ in pts], moving_average([y for _, y in pts], SMOOTH), ls, color="gray",
                              alpha=0.6 + 0.4 * (seed == args.seeds[0]),
                              label=f"self-verifier, seed {seed}: "
                                    f"P({'True | correct' if 'true' in key else 'False | wrong'})")
    ax[1, 0].legend(fontsize=6)
    fig.suptitle(f"Countdown: external rewards vs trajectory entropy (tiny synthetic model, q={args.q}, "
                 f"{args.prompts} prompts x {args.samples} samples per step, lr {args.lr:g}, seeds {args.seeds})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from urlvr_jax.sft import problems_for_model

    args = parse_args(argv)
    setup_jax()
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    base = build_countdown_base(runs_dir / "base_model", args, progress=not args.smoke)
    model_dir = base["model_dir"]
    train_problems = problems_for_model(model_dir, args.train_size, args.base_seed, split="train")
    heldout = problems_for_model(model_dir, args.eval_limit, EVAL_SEED, split="eval")
    prior = measure_base(model_dir, heldout, args)
    write_json(runs_dir / "base_model" / "prior.json", prior)
    if args.build_only:
        print(json.dumps({"base_model": base, "prior": prior}, indent=1))
        return {"base_model": base, "prior": prior}
    runs, rows = {}, []
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    bar = tqdm(jobs, desc=NAME, unit="run", disable=args.smoke)
    for arm, seed in bar:
        bar.set_postfix(arm=arm, seed=seed)
        runs[(arm, seed)] = run_arm(arm, seed, args, model_dir, train_problems, heldout, runs_dir / f"{arm}_s{seed}")
        rows.append(summarize(arm, seed, runs[(arm, seed)]))
    rows.sort(key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
    plot(out / f"{NAME}.png", runs, args)
    total = time.perf_counter() - t_start
    write_json(out / "results.json", {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}, "base_model": base,
        "prior": prior, "rows": rows, "total_wall_s": total, "machine": machine_line(),
        "examples": {f"{arm}_s{seed}": runs[(arm, seed)]["examples"] for arm, seed in runs},
        "curves": {f"{arm}_s{seed}": runs[(arm, seed)]["records"] for arm, seed in runs}})
    md = [f"# Finding 5: external rewards vs trajectory entropy (Countdown, q={args.q})", "",
          f"{args.steps} GRPO steps of {args.prompts} prompts x {args.samples} samples x {args.max_new_tokens} tokens, "
          f"lr {args.lr:g}, RL seeds {args.seeds}, {args.train_size} training problems. Held-out: {args.eval_limit} "
          f"eval-split problems, avg/maj/pass over {args.samples_eval} samples at T=1 (same draws at every "
          "evaluation); "
          f"'first'/'last' = mean of the first/last {SMOOTH} steps; MCS = sustained Model Collapse Step (— = never).",
          "", "Base model before RL: " + ", ".join(f"{k} {fmt(v)}" for k, v in prior.items()) + ".", "",
          md_table(COLUMNS, rows), ""]
    for r in rows:
        if r["arm"] == "self_verification" and "true_given_correct_first" in r:
            md += [f"Self-verification verdicts, seed {r['seed']}: "
                   f"P(True | correct) {fmt(r['true_given_correct_first'])} "
                   f"→ {fmt(r['true_given_correct_last'])}, P(False | wrong) {fmt(r.get('false_given_wrong_first'))} → "
                   f"{fmt(r.get('false_given_wrong_last'))} (first → last {SMOOTH} steps).", ""]
    sv = [(seed, runs[(arm, seed)]["examples"]) for arm, seed in runs if arm == "self_verification"]
    if sv:
        seed, ex = sv[0]
        md += [f"Last-step responses of the self-verification run (seed {seed}), with the policy's own verdict "
               "(its reward: 1 = \\boxed{True}):", "",
               "```"]
        md += [f"{e['problem']}: {e['response'].replace(chr(10), ' ; ')}  [{'correct' if e['correct'] else 'wrong'}; "
               f"reward {e['reward']:g}]" for e in ex[:6]]
        md += ["```", ""]
    md += [f"Total wall-clock {total:.0f} s (base model {'reused' if base.get('reused') else 'built'}); "
           f"{machine_line()}.", "", f"![curves]({NAME}.png)", ""]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return {"rows": rows, "prior": prior, "base_model": base}


if __name__ == "__main__":
    main()
