"""Experiments 3-5 of issue 6 (experiments/dataset_size.py, testtime_training.py, external_rewards.py).

- Verification traces: evaluation lines equal the solve traces of urlvr_jax.data.synthetic (same format),
  the verdict equals the exact Countdown checker.
- sample_scores (avg/maj/pass) against a collections.Counter reference on hand-written responses;
  kl_terms against hand-computed values.
- Each script end to end with --smoke (tables, JSON, plots written; KL of the base model to itself is 0).

external_rewards.py runs its arms through the trainer (configs/external_rewards.py); host rewards in the
trainer are tested in tests/test_train.py.
"""
import collections
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import dataset_size  # noqa: E402
import external_rewards  # noqa: E402


# ---------------------------------------------------------------------------------------------- verification traces
def test_verification_traces_follow_solver_format_and_checker():
    from urlvr_jax.data import synthetic as syn
    from urlvr_jax.rewards.grading import extract_boxed
    from urlvr_jax.sft import DEFAULT_FAMILY_PARAMS, make_problems

    problems = make_problems("countdown", 150, 0, "train", external_rewards.TASK)
    for p in problems:  # the same step lines as the solver's own correct trace
        assert external_rewards.evaluation_lines(p.answer)[1] == syn.correct_trace(p).split("\n")[:-1]
    fp = {"countdown": dict(DEFAULT_FAMILY_PARAMS["countdown"])}
    pairs, stats = external_rewards.verification_pairs(problems, 0.5, fp, seed=3, per_problem=2, swap=0.3)
    assert stats["paths"]["systematic"] > 0 and stats["paths"]["noise"] > 0 and 0.2 < stats["true_fraction"] < 0.8
    by_text = {p.problem: p for p in problems}
    refused = 0
    for prompt, completion in pairs:
        text, expr = prompt[len("V: "):-len("\nA: ")].split(" by ")
        p = by_text[text]
        verdict = extract_boxed(completion)
        assert verdict == ("True" if syn.check_countdown(expr, p.extra["numbers"], p.extra["target"]) else "False")
        lines = completion.split("\n")
        if lines[-2].endswith(": no"):  # a number not (or no longer) available: False before any arithmetic
            refused += 1
            assert verdict == "False"
            continue
        value = syn.evaluate(syn.parse_expression(expr))
        target = p.extra["target"]
        assert lines[-2] == (f"{value}={target}" if value == target else f"{value}!={target}")
    assert refused > 0.1 * len(pairs)  # the swapped-number negatives
    # an expression hitting the target with a number that was not given: the number check says no
    p = problems[0]
    missing = next(x for x in range(1, 10) if x not in p.extra["numbers"])  # targets are >= 10
    expr = f"{p.extra['target'] - missing}+{missing}"
    assert external_rewards.verification_completion(p, expr).split("\n")[-2:] == [
        f"-{p.extra['target'] - missing}: no", "\\boxed{False}"]


def test_number_lines_cross_off_each_number_at_most_once():
    import random

    assert external_rewards.number_lines([6, 5, 6], "6*5+6") == (True, ["6 5 6", "-6: 5 6", "-5: 6", "-6: .", "ok"])
    assert external_rewards.number_lines([5, 6, 6], "6+6+6") == (False, ["5 6 6", "-6: 5 6", "-6: 5", "-6: no"])
    assert external_rewards.number_lines([2, 4, 8], "8*4") == (True, ["2 4 8", "-8: 2 4", "-4: 2", "ok"])
    assert external_rewards.number_lines([2, 4, 8], "(8*") == (False, [])
    rng = random.Random(0)
    for _ in range(50):
        swapped = external_rewards.swap_a_number("(8+4)*3", rng)
        assert swapped != "(8+4)*3" and len(swapped) == len("(8+4)*3")


def test_evaluation_lines_fractions_and_bad_input():
    value, lines = external_rewards.evaluation_lines("7/2*4-3")
    assert value == Fraction(11) and lines == ["7/2=7/2", "(7/2)*4=14", "14-3=11"]
    assert external_rewards.evaluation_lines("5/(3-3)")[0] is None
    assert external_rewards.evaluation_lines("2**3") == (None, [])


# ---------------------------------------------------------------------------------------------- scores and KL
def test_sample_scores_against_counter_reference():
    from urlvr_jax.data.synthetic import make_arithmetic_dataset

    problems = make_arithmetic_dataset(3, 0, split="train")
    a = [int(p.answer) for p in problems]
    texts = [  # 4 samples per problem
        f"\\boxed{{{a[0]}}}", f"\\boxed{{{a[0] + 1}}}", f"\\boxed{{{a[0] + 1}}}", "no answer",  # wrong majority
        # a tie: the first seen wins
        f"\\boxed{{{a[1] + 2}}}", f"\\boxed{{{a[1]}}}", f"\\boxed{{{a[1] + 2}}}", f"\\boxed{{{a[1]}}}",
        "x", "y", "z", f"\\boxed{{{a[2]}}}"]  # one answer: majority of the voters, correct
    got = dataset_size.sample_scores(problems, texts, 4)
    correct = [[t == f"\\boxed{{{a[i]}}}" for t in texts[4 * i:4 * i + 4]] for i in range(3)]
    maj = []
    for i in range(3):
        votes = [t for t in texts[4 * i:4 * i + 4] if t.startswith("\\boxed")]
        top = max(collections.Counter(votes).values())
        winner = next(v for v in votes if collections.Counter(votes)[v] == top)
        maj.append(winner == f"\\boxed{{{a[i]}}}")
    assert got == {"avg": float(np.mean(correct)), "maj": float(np.mean(maj)),
                   "pass": float(np.mean([any(c) for c in correct]))}
    assert maj == [False, False, True]
    with pytest.raises(ValueError, match="texts"):
        dataset_size.sample_scores(problems, texts[:-1], 4)


def test_kl_terms_hand_computed():
    lp = np.log(np.array([[0.5, 0.5, 0.9], [0.25, 1.0, 1.0]]))
    ref = np.log(np.array([[0.25, 0.5, 0.3], [0.5, 0.5, 0.5]]))
    mask = np.array([[1, 1, 0], [1, 1, 0]])
    d_sum, k3_sum, n_tok, n_resp = dataset_size.kl_terms(lp, ref, mask)
    d = [math.log(2), 0.0, math.log(0.5), math.log(2)]
    r = [-x for x in d]
    assert n_tok == 4 and n_resp == 2
    assert d_sum == pytest.approx(sum(d), abs=1e-12)
    assert k3_sum == pytest.approx(sum(math.exp(x) - x - 1 for x in r), abs=1e-12)


# ---------------------------------------------------------------------------------------------- smoke runs
def _smoke(script: str, experiment_smokes):
    """`python experiments/<script> --smoke` the way a user runs it: its own process, one CPU device (not
    the 8 fake devices of this test session); started with the other smoke runs (tests/conftest.py)."""
    out = experiment_smokes.wait(script) / "out"
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), out


@pytest.mark.slow  # experiment smoke runs
def test_dataset_size_smoke(experiment_smokes):
    res, md, out = _smoke("dataset_size.py", experiment_smokes)
    assert [(r["size"], r["seed"]) for r in res["rows"]] == [(8, 0)]
    assert (out / "dataset_size.png").stat().st_size > 10_000
    rows = res["measurements"]["n8_s0"]
    assert [r["step"] for r in rows] == [0, 1, 2]
    # π_θ = π_ref at step 0: only the sampler-vs-scoring-pass float32 rounding remains
    assert abs(rows[0]["heldout/kl_seq"]) < 1e-4 and abs(rows[0]["train/kl_k3_tok"]) < 1e-6
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert "| 8 | 0 |" in md and res["means"][0]["seeds"] == 1


@pytest.mark.slow  # experiment smoke runs
def test_test_time_training_smoke(experiment_smokes):
    res, md, out = _smoke("testtime_training.py", experiment_smokes)
    assert [r["run"] for r in res["rows"]] == ["base", "ttt", "disjoint"]
    assert not set(res["E_ids"]) & set(res["T_ids"]) and not set(res["E_ids"]) & set(res["disjoint_train_ids"])
    assert abs(res["rows"][0]["E/kl_seq"]) < 1e-4 and (out / "test_time_training.png").exists()


@pytest.mark.slow  # experiment smoke runs
def test_external_rewards_smoke(experiment_smokes):
    res, md, out = _smoke("external_rewards.py", experiment_smokes)
    assert [r["arm"] for r in res["rows"]] == list(external_rewards.ARMS)
    for arm in external_rewards.ARMS:
        recs = res["curves"][f"{arm}_s0"]
        assert [r["step"] for r in recs] == [0, 1, 2] and "eval/avg" in recs[-1]
        assert all(math.isfinite(r["grad_norm"]) for r in recs[1:])
    assert res["base_model"]["verification_data"]["pairs"] == 16 and len(res["examples"]["self_verification_s0"]) == 4
    assert (out / "external_rewards.png").exists()


def test_shifted_target_negatives_are_judged_by_the_checker():
    import random

    from urlvr_jax.data import synthetic as syn
    from urlvr_jax.sft import make_problems

    rng = random.Random(0)
    for p in make_problems("countdown", 40, 0, "train", external_rewards.TASK):
        q = external_rewards.shift_target(p, rng)
        assert 1 <= abs(q.extra["target"] - p.extra["target"]) <= 5 and q.extra["numbers"] == p.extra["numbers"]
        assert syn.parse_countdown_problem(q.problem) == (q.extra["numbers"], q.extra["target"])
        lines = external_rewards.verification_completion(q, p.answer).split("\n")
        value = syn.evaluate(syn.parse_expression(p.answer))
        assert lines[-2:] == [f"{value}!={q.extra['target']}", "\\boxed{False}"]
