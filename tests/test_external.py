"""External verifiers: Countdown (safe exact evaluation), arithmetic checker, self-verification parsing."""
import itertools
import random
import time
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from urlvr_jax.rewards.external import (
    arithmetic_checker,
    build_verification_prompt,
    build_verification_prompts,
    countdown_response_reward,
    countdown_reward,
    evaluate_countdown_expression,
    extract_countdown_expression,
    parse_exact_number,
    parse_verdict,
    self_verification_rewards,
)


def brute_force_reachable(numbers):
    """All exact values reachable with + - * / using each number at most once (reference)."""
    vals = {}

    def combine(items):
        if len(items) == 1:
            return {items[0][0]: items[0][1]}
        out = {}
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            cands = [(a + b, f"({ea}+{eb})"), (a - b, f"({ea}-{eb})"), (a * b, f"({ea}*{eb})")]
            if b != 0:
                cands.append((a / b, f"({ea}/{eb})"))
            for v, e in cands:
                out.update(combine(rest + [(v, e)]))
        out.update({v: e for v, e in items})
        return out

    for r in range(1, len(numbers) + 1):
        for sub in itertools.combinations(numbers, r):
            vals.update(combine([(Fraction(n), str(n)) for n in sub]))
    return vals


def test_countdown_known_cases():
    nums, target = [25, 75, 2, 9], 200
    assert countdown_reward("(25+75)*2", nums, target) == 1.0
    assert countdown_reward("(25 + 75) \\times 2", nums, target) == 1.0
    assert countdown_reward("(25+75) x 2", nums, target) == 1.0
    assert countdown_reward("(25+75)*2 = 200", nums, target) == 1.0
    assert countdown_reward("200 = (25+75)*2", nums, target) == 1.0
    assert countdown_reward("(25+75)*2 = 300", nums, target) == 0.0
    assert countdown_reward("(25+75)*2", nums, target, exact_use=True) == 0.0  # 9 unused
    assert countdown_reward("(25+75)*2*9/9", nums, target, exact_use=True) == 0.0  # 9 used twice
    assert countdown_reward("(25+75)*2+9-9", [25, 75, 2, 9, 9], target, exact_use=True) == 1.0  # given twice
    assert countdown_reward("25+25+150", [25, 150], target) == 0.0  # 25 used twice
    assert countdown_reward("(25+75)*2", nums, 201) == 0.0
    assert countdown_reward("100*2", nums, target) == 0.0  # 100 is not a given number
    assert countdown_reward("(75-25)/(9-9)", [75, 25, 9, 9], 1) == 0.0  # division by zero
    assert countdown_reward("\\frac{75}{25}*2", [75, 25, 2], 6) == 1.0
    assert countdown_reward("6/4*2", [6, 4, 2], 3) == 1.0  # exact fractions, no float rounding
    assert countdown_reward("-2+9", [2, 9], 7) == 0.0  # unary minus is not allowed
    assert countdown_reward(None, nums, target) == 0.0
    assert countdown_response_reward("We try... so the answer is \\boxed{(25+75)*2}.", nums, target) == 1.0
    assert countdown_response_reward("<answer> (25+75)*2 </answer>", nums, target) == 1.0
    assert countdown_response_reward("Answer: (25+75)*2\nthanks", nums, target) == 1.0
    assert extract_countdown_expression("no expression") is None


def test_countdown_against_brute_force():
    """On random instances, a target is reachable iff the checker accepts the witness expression, and a
    wrong target is rejected."""
    rng = random.Random(0)
    for _ in range(40):
        nums = [rng.randint(1, 20) for _ in range(3)]
        reach = brute_force_reachable(nums)
        ints = [v for v in reach if v.denominator == 1]
        target = int(rng.choice(ints))
        expr = reach[Fraction(target)]
        assert countdown_reward(expr, nums, target) == 1.0, (expr, nums, target)
        value, used = evaluate_countdown_expression(expr)
        assert value == target and not (Counter(used) - Counter(nums))  # literals reported, each available
        assert countdown_reward(expr, nums, target + 1) == 0.0


MALICIOUS = [
    "__import__('os').system('echo pwned')", "open('/etc/passwd').read()", "(lambda: 1)()", "9**9**9**9",
    "9^9^9^9", "pow(9, 9)", "[1]*10**9", "1e308*10", "0x10", "1_000", "True+True", "'a'*3", "x", "1 if 1 else 2",
    "((((((((((((((((((((1))))))))))))))))))))" * 20, "(" * 5000 + "1" + ")" * 5000, "1+" * 10000 + "1",
    "9" * 5000, "1.5*2", "2//1", "3%2", "1<<100000", "-(-3)", "+3", "", "   ", "\x00", "a.b", "[][0]",
]


def test_malicious_inputs_rejected_safely():
    t = time.time()
    for s in MALICIOUS:
        assert countdown_reward(s, [1, 2, 3, 9, 9, 9, 9, 10], 3) == 0.0, s
        assert evaluate_countdown_expression(s) is None, s
    assert time.time() - t < 2.0  # everything is rejected without computing anything big


def test_arithmetic_checker():
    assert arithmetic_checker("42", 42) == 1.0
    assert arithmetic_checker("\\boxed{-7/8}", Fraction(-7, 8)) == 1.0
    assert arithmetic_checker("The result is \\boxed{\\frac{14}{16}}.", "7/8") == 1.0
    assert arithmetic_checker("0.875", "7/8") == 1.0
    assert arithmetic_checker("1,234", 1234) == 1.0
    assert arithmetic_checker("$12$.", 12) == 1.0
    assert arithmetic_checker("3.0", 3) == 1.0
    assert arithmetic_checker("0.333333", Fraction(1, 3)) == 0.0  # exact: no rounding
    assert arithmetic_checker("43", 42) == 0.0
    assert arithmetic_checker("4 2", 42) == 0.0  # inner spaces do not glue digits together
    assert arithmetic_checker("1\\,234", 1234) == 1.0  # LaTeX thin space as a thousands separator
    assert arithmetic_checker("2*21", 42) == 0.0  # an expression is not a number
    assert arithmetic_checker(None, 42) == 0.0
    assert arithmetic_checker("1e3", 1000) == 0.0
    assert parse_exact_number("9" * 10_000) is None  # bounded
    with pytest.raises(ValueError, match="not an exact number"):
        arithmetic_checker("1", "one")
    rng = np.random.default_rng(0)
    for _ in range(500):  # random exact comparisons against Fraction
        a, b = int(rng.integers(-10**6, 10**6)), int(rng.integers(1, 1000))
        v = Fraction(a, b)
        assert arithmetic_checker(f"{a}/{b}", v) == 1.0
        assert arithmetic_checker(f"\\frac{{{abs(a)}}}{{{b}}}" if a >= 0 else f"-\\frac{{{-a}}}{{{b}}}", v) == 1.0
        assert arithmetic_checker(f"{a + 1}/{b}", v) == 0.0


def test_verification_prompt_and_verdicts():
    prompt = build_verification_prompt("What is 2+2?", "2+2 = \\boxed{4}")
    assert "What is 2+2?" in prompt and "2+2 = \\boxed{4}" in prompt
    assert "\\boxed{True}" in prompt and "\\boxed{False}" in prompt
    prompts = build_verification_prompts(["q1", "q2"], [["a", "b"], ["c", "d"]])
    assert len(prompts) == 2 and len(prompts[1]) == 2 and "c" in prompts[1][0]
    with pytest.raises(ValueError, match="2 questions but 1 groups"):
        build_verification_prompts(["q1", "q2"], [["a"]])
    cases = {
        "The steps check out. \\boxed{True}": 1.0, "\\boxed{\\text{False}}": 0.0, "\\boxed{ true. }": 1.0,
        "\\boxed{Correct}": 1.0, "\\boxed{incorrect}": 0.0, "\\boxed{False} ... actually \\boxed{True}": 1.0,
        "\\boxed{True} ... no, \\boxed{False}": 0.0, "\\boxed{4}": None, "True": None, "": None, None: None,
        "\\boxed{True": None,
    }
    for text, want in cases.items():
        assert parse_verdict(text) == want, text
    rewards, parsed = self_verification_rewards([["\\boxed{True}", "\\boxed{False}", "junk"],
                                                 ["\\boxed{True}", None, "\\boxed{yes}"]])
    np.testing.assert_array_equal(rewards, [[1, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(parsed, [[1, 1, 0], [1, 0, 1]])
    # K = 3 verdicts per solution: the mean of the parsed ones, unparsable counted as `unparsed`
    rewards, parsed = self_verification_rewards([[["\\boxed{True}", "\\boxed{False}", "\\boxed{True}"],
                                                  ["x", "\\boxed{True}", "y"]]], unparsed=0.5)
    np.testing.assert_allclose(rewards, [[2 / 3, (1 + 0.5 + 0.5) / 3]], rtol=1e-6)
    np.testing.assert_allclose(parsed, [[1.0, 1 / 3]], rtol=1e-6)
    with pytest.raises(ValueError, match="group 1 has 1 solutions"):
        self_verification_rewards([["a", "b"], ["c"]])
