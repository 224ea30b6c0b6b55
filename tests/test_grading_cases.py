"""The grader against math-verify's documented behaviour, per miss category, and its time on pathological input.

Cases: tests/data/grading_cases.jsonl (each with the math-verify test or rule its label follows). The pure rules
(`grading_rules.py`) are tested directly; the categories through `grade_batch`, as users call it.
"""
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from urlvr_jax.rewards import grading
from urlvr_jax.rewards.grading import grade, grade_batch
from urlvr_jax.rewards.grading_rules import (
    decisive,
    extract_answer,
    extract_boxed_group,
    extract_last_math,
    normalize_answer,
    read_decimal_comma,
    too_costly,
)

ROOT = Path(__file__).resolve().parents[1]
CASES = [json.loads(line) for line in open(ROOT / "tests" / "data" / "grading_cases.jsonl", encoding="utf-8")]
BY_CATEGORY = defaultdict(list)
for _case in CASES:
    BY_CATEGORY[_case["category"]].append(_case)

sys.path.insert(0, str(ROOT / "benchmarks"))
from grading_agreement import PATHOLOGICAL  # noqa: E402  (one corpus for the benchmark and the test)


def test_case_file_is_labelled_per_category_with_both_verdicts():
    assert set(BY_CATEGORY) == {"multi_boxed", "inequality_interval", "interval_decimal", "decimal_comma",
                                "unboxed_math", "neq", "matrix_rounded", "ordered_tuple"}
    for cat, cases in BY_CATEGORY.items():
        assert len(cases) >= 10, cat
        assert {c["expected"] for c in cases} == {True, False}, f"{cat}: needs equivalent and non-equivalent pairs"
        assert all(c["source"] for c in cases)


@pytest.mark.parametrize("category", sorted(BY_CATEGORY))
def test_category_agrees_with_math_verify_documented_behaviour(category):
    cases = BY_CATEGORY[category]
    got = grade_batch([c["pred"] for c in cases], [c["gold"] for c in cases], timeout_s=30.0, processes=2)
    wrong = [(c["gold"], c["pred"], c["expected"]) for c, g in zip(cases, got) if g != c["expected"]]
    assert not wrong, wrong


def test_boxed_group_follows_math_verify_neighbour_rule():
    assert extract_boxed_group(r"\boxed{1}, \boxed{2}") == "1,2"
    assert extract_boxed_group(r"\boxed{1}\boxed{2}") == "1,2"
    assert extract_boxed_group(r"\boxed{(2,2)} \quad \text{and} \quad \boxed{(6,2)}") == "(2,2),(6,2)"
    far = r"\boxed{7} but that used the wrong base; redoing all of it from the very start gives \boxed{12}"
    assert extract_boxed_group(far) == "12"  # > 70 characters apart
    assert extract_boxed_group(r"\boxed{7} then a long detour with no separator at all \boxed{12}") == "12"
    assert extract_boxed_group("\\boxed{840}. **Final Answer** \\boxed{840}") == "840"  # a repeat counts once
    assert extract_boxed_group(r"\boxed{3} \boxed{3} \boxed{4}") == "3,4"
    assert extract_boxed_group(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed_group(r"\boxed{3") is None and extract_boxed_group(r"\boxed{ }") is None
    assert extract_boxed_group(r"\fbox{2} or \boxed{3}") == "2,3"


def test_last_math_expression():
    assert extract_last_math("The answer is $12$.") == "12"
    assert extract_last_math(r"first \(3\) then \[ 4 \]") == "4"
    assert extract_last_math("$1$ and $2$, $3$") == "1,2,3"
    assert extract_last_math("$1$ is wrong; $2$") == "2"
    assert extract_last_math("costs \\$5, so $x = 5$") == "x = 5"  # \$ is a dollar sign
    assert extract_last_math("Answer $ \n 9 \n $") is None  # inline math on one line only
    assert extract_last_math("Answer $$ \n 9 \n $$") == "9"
    assert extract_last_math("no math here") is None and extract_last_math("$ $") is None
    assert extract_answer(r"so \boxed{3} and $4$") == ("3", "boxed")
    assert extract_answer("so $4$") == ("4", "math")
    assert extract_answer(" 4 ") == ("4", "plain")


def test_final_answer_anchor_and_its_priority():
    """math-verify's anchored patterns: "final answer … is X" without a box; "final answer is $X$. I hope" wins."""
    assert extract_answer("Final Answer: The volume of $V$ is 120. I hope it is correct.") == ("120", "plain")
    assert extract_answer("Final Answer: The final answer is 7.78.") == ("7.78", "plain")
    assert extract_answer("The final answer is $1$ and $2$. I hope it is correct.") == ("1,2", "math")
    signed = r"so $x = \boxed{255}$. Final Answer: The final answer is $10,455$. I hope it is correct."
    assert extract_answer(signed) == ("10,455", "math")
    assert extract_answer(r"Final Answer: \boxed{3}. The final answer is 4") == ("3", "boxed")  # no sign-off
    assert grade("Final Answer: The final answer is 12,000,023. I hope it is correct.", "12000023")
    assert not grade("Final Answer: The largest $n$ is 34.", "$3$")


def test_spaced_comma_is_a_list_not_thousands():
    assert normalize_answer("32,349") == "32349" and normalize_answer("32, 349") == "32,349"
    assert normalize_answer("11,\\! 111,\\! 100") == "11111100"  # LaTeX's thousands spacing
    assert not grade(r"is $\boxed{32, 349}$", "32349") and grade(r"is $\boxed{32,\! 349}$", "32349")


def test_decimal_comma_only_where_unambiguous():
    assert read_decimal_comma("1,22", "1.22") == "1.22"
    assert read_decimal_comma("-0,25", "-0.25") == "-0.25"
    assert read_decimal_comma("0,111", "0.111") == "0.111"  # a leading 0 is no thousands group
    assert read_decimal_comma("1,234", "1.234") == "1,234"  # thousands separator
    assert read_decimal_comma("1,2", "\\{1,2\\}") == "1,2"  # the gold is a list
    assert read_decimal_comma("1,22", "122") == "1,22"  # the gold has no decimal point
    assert read_decimal_comma("1, 22", "1.22") == "1, 22"  # a space: a list
    assert grade("1,22", "1.22") and not grade("\\boxed{1,22}", "1.22") and not grade("1,234", "1.234")


def test_rounding_rule_for_numbers_and_entries():
    assert decisive("0.33", "\\frac{1}{3}") and decisive("0.3333", "\\frac13") and decisive("0.67", "2/3")
    assert decisive("0.66", "2/3") is True  # truncation
    assert decisive("0.34", "\\frac{1}{3}") is False  # neither rounding nor truncation
    assert decisive("0.3", "\\frac{1}{3}") is False  # one decimal is not an answer
    assert decisive("0.13", "0.125") is True and decisive("0.12", "0.125") is True  # a tie, either way
    assert decisive("0.21", "0.2") is False  # an exact decimal gold has one right form
    assert decisive("1/3", "0.3333") is False  # the allowance is for predictions only
    assert decisive("[0.33, 1.41]", "[\\frac{1}{3}, \\sqrt{2}]") is True
    assert decisive("(0.33, 1]", "[\\frac{1}{3}, 1]") is None  # brackets differ: math-verify decides
    assert decisive("x \\neq 3", "3 != x") is True and decisive("x \\neq 3", "x \\neq 4") is None


def test_relations_have_one_spelling():
    assert normalize_answer("x != 3") == normalize_answer("x \\ne 3") == normalize_answer("x ≠ 3") == "x\\neq3"
    assert normalize_answer("x >= 5") == normalize_answer("x \\ge 5") == "x\\geq5"
    assert normalize_answer("x \\leq 5") == normalize_answer("x ≤ 5")


def test_too_costly_flags_the_pathological_corpus_and_no_real_answer():
    flagged = [p for p in PATHOLOGICAL if len(p) <= grading.DEFAULT_MAX_CHARS and too_costly(p)]
    assert len(flagged) >= 20, flagged
    for fine in ["2^{10}", "10^{100}", "2^{2^{10}}", "5!", "\\binom{10}{3}", "\\sum_{k=1}^{n} k", "(x+1)^{2}",
                 "\\frac{\\sqrt{3}}{2}", "(1,2),(3,4)", "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}"]:
        assert too_costly(fine) is None, fine
    data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "math500", "test.jsonl")
    data = data if os.path.exists(data) else "/work/shared/data/math500/test.jsonl"
    if os.path.exists(data):
        golds = [json.loads(line)["answer"] for line in open(data, encoding="utf-8")]
        assert [g for g in golds if too_costly(g)] == []


def test_pathological_inputs_come_back_with_twice_the_headroom():
    """Every pathological answer is graded (False) well inside the default bound: at most half of it per answer."""
    bound = grading.DEFAULT_TIMEOUT_S
    grade("\\sqrt{4}", "2")  # a started worker, so no answer below pays for a start-up
    worst = 0.0
    for p in PATHOLOGICAL:
        grading.reset_stats()
        t0 = time.perf_counter()
        assert grade_batch([p], ["3"], timeout_s=bound, processes=1) == [False], p[:60]
        wall = time.perf_counter() - t0
        assert grading.STATS.timeouts == 0 and grading.STATS.crashes == 0, (p[:60], grading.STATS)
        worst = max(worst, grading.STATS.max_task_s, wall)
    # the headroom: half the bound, plus 0.25 s of select/IPC slack (stated once, as in test_grading.py)
    assert worst <= bound / 2 + 0.25, worst
    print(f"\nworst pathological answer {worst:.2f}s of the {bound:.0f}s bound")
