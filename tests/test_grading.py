"""The grader on answer pairs built from the real data, and its time bound on pathological input.

Equivalent pairs: gold answers of MATH-500, GSM8K, AMC23, AIME24/25 (/work/shared/data) rewritten as
LaTeX wrappers (\\boxed, $...$, \\text{}), decimals/fractions, units, percent, dollar signs, thousands
separators, \\left/\\right intervals, permuted solution lists, and forms only math-verify can match
(sqrt(n^2), (n-1)+1, (a)/(b), sqrt(a^2 b)). Non-equivalent pairs: perturbed numbers, inverted fractions,
flipped interval endpoints, a bumped digit in every MATH-500 answer, other problems' answers.
"""
import json
import os
import random
import re
import threading
import time
from fractions import Fraction

import pytest

from urlvr_jax.rewards import grading
from urlvr_jax.rewards.grading import decisive, extract_boxed, grade, grade_batch, normalize_answer

DATA = "/work/shared/data"
_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
if not os.path.isdir(DATA) and os.path.isdir(_SHARED):
    DATA = _SHARED

INT = re.compile(r"^-?\d+$")
TEXFRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
LIST = re.compile(r"^-?\d+(\s*,\s*-?\d+)+$")
SIMPLEFRAC = re.compile(r"\\frac\{([^{}]+)\}\{([^{}]+)\}")
SQRT = re.compile(r"^(\d*)\\sqrt\{(\d+)\}$")
THOUSANDS = re.compile(r"^(?:\\\$)?-?\d{1,3}(?:,(?:\\!)?\s*\d{3})+(?:\.\d+)?$")


CORRECTNESS_TIMEOUT_S = 30.0

def load_golds():
    path = os.path.join(DATA, "math500", "test.jsonl")
    if not os.path.exists(path):
        pytest.skip(f"real data not found at {path}")
    rng = random.Random(0)
    out = [("math500", json.loads(l)["answer"]) for l in open(path, encoding="utf-8")]
    gsm = [json.loads(l)["answer"].split("####")[-1].strip() for l in open(os.path.join(DATA, "gsm8k", "test.jsonl"))]
    out += [("gsm8k", g) for g in rng.sample(gsm, 150)]
    for l in open(os.path.join(DATA, "amc23", "test.jsonl")):
        a = float(json.loads(l)["answer"])
        out.append(("amc23", str(int(a)) if a.is_integer() else str(a)))
    out += [("aime24", str(json.loads(l)["answer"])) for l in open(os.path.join(DATA, "aime24", "test.jsonl"))]
    out += [("aime25", str(json.loads(l)["answer"])) for l in open(os.path.join(DATA, "aime25", "aime25.jsonl"))]
    return out


def equivalent_rewrites(g):
    """Rewritings of gold g that any correct grader must accept: (kind, text)."""
    out = [("boxed", f"The answer is $\\boxed{{{g}}}$."), ("dollars", f"${g}$"),
           # a space after a thousands separator makes a list: math-verify's tests/test_all.py has
           # \boxed{32, 349} != 32349 (but 11,\! 111 == 11111, LaTeX's spacing), so spaced commas only in lists
           ("spaces", " " + (g if THOUSANDS.match(g) else g.replace(",", ", ")) + " ")]
    if INT.match(g):
        n = int(g)
        out += [("decimal", f"{n}.0"), ("text", f"\\text{{{n}}}"), ("units", f"{n} \\text{{ units}}"),
                ("currency", f"\\${n}"), ("percent", f"{n}\\%"), ("unreduced", f"\\frac{{{2 * n}}}{{2}}"),
                ("word_units", f"{n} dollars")]
        if abs(n) >= 1000:
            out.append(("thousands", f"{n:,}"))
    m = TEXFRAC.match(g)
    if m:
        s, a, b = m.groups()
        v = Fraction(int(a), int(b)) * (-1 if s else 1)
        out += [("slash", f"{s}{a}/{b}"), ("dfrac", g.replace("\\frac", "\\dfrac"))]
        if len(a) == 1 and len(b) == 1:
            out.append(("short_frac", f"{s}\\frac{a}{b}"))
        d = v.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        if d == 1:
            out.append(("decimal", str(float(v))))
    if re.match(r"^[\(\[].*,.*[\)\]]$", g) and "\\left" not in g:
        out.append(("left_right", "\\left" + g[0] + g[1:-1] + "\\right" + g[-1]))
    if "\\text{" in g:
        out.append(("untext", re.sub(r"\\text\{([^{}]*)\}", r"\1", g)))
    return out


def math_verify_rewrites(g):
    """Equivalent rewritings that the normaliser cannot match (they exercise math-verify)."""
    out = []
    if INT.match(g):
        n = int(g)
        if 0 <= n < 10**6:
            out.append(("sqrt_square", f"\\sqrt{{{n * n}}}"))
        out.append(("sum", f"{n - 1}+1"))
    if LIST.match(g) and not re.match(r"^-?\d{1,3}(,\d{3})+$", g.replace(" ", "")):
        out.append(("permuted_list", ", ".join(x.strip() for x in g.split(",")[::-1])))
    if SIMPLEFRAC.search(g) and not TEXFRAC.match(g) and "\\text" not in g and not re.search(r"\d\s*\\frac", g):
        out.append(("slash_frac", SIMPLEFRAC.sub(r"(\1)/(\2)", g)))
    m = SQRT.match(g)
    if m:
        a, b = m.groups()
        a = int(a) if a else 1
        out.append(("sqrt_inside", f"\\sqrt{{{a * a * int(b)}}}"))
    return out


def non_equivalent(g):
    out = []
    if INT.match(g):
        n = int(g)
        out += [("plus_one", str(n + 1)), ("neg", str(-n) if n != 0 else "1")]
        if n != 0:
            out.append(("times_ten", str(10 * n)))
    m = TEXFRAC.match(g)
    if m:
        s, a, b = m.groups()
        out.append(("numerator_plus_one", f"{s}\\frac{{{int(a) + 1}}}{{{b}}}"))
        if a != b:
            out.append(("inverted", f"{s}\\frac{{{b}}}{{{a}}}"))
    if re.match(r"^\[.*\)$", g):
        out.append(("close_endpoint", g[:-1] + "]"))
    if re.match(r"^\(.*\]$", g):
        out.append(("open_endpoint", g[:-1] + ")"))
    return out


def bump_last_digit(g):
    idx = [i for i, c in enumerate(g) if c.isdigit()]
    if not idx:
        return None
    i = idx[-1]
    return g[:i] + str((int(g[i]) + 1) % 10) + g[i + 1:]


@pytest.fixture(scope="module")
def golds():
    return load_golds()


def run_pairs(pairs, expect):
    t = time.time()
    # Correctness, not speed: a generous per-answer bound so a loaded machine cannot turn a slow-but-right
    # verdict into a timeout False (the time bound itself is tested on the pathological corpus below).
    res = grade_batch([p for _, p, _ in pairs], [g for _, _, g in pairs], timeout_s=CORRECTNESS_TIMEOUT_S, processes=2)
    wrong = [(k, p, g) for (k, p, g), r in zip(pairs, res) if r != expect]
    return wrong, time.time() - t


def test_equivalent_rewritings_of_real_golds(golds):
    pairs = [(f"{src}:{k}", p, g) for src, g in golds for k, p in equivalent_rewrites(g)]
    rng = random.Random(1)
    mv = [(f"{src}:{k}", p, g) for src, g in golds for k, p in math_verify_rewrites(g)]
    # keep every rare kind, subsample the two big integer kinds (time budget)
    mv = [x for x in mv if not x[0].endswith(("sum", "sqrt_square"))] + \
        rng.sample([x for x in mv if x[0].endswith(("sum", "sqrt_square"))], 200)
    assert len(pairs) > 3000 and len(mv) > 200
    kinds = {k.split(":")[1] for k, _, _ in pairs + mv}
    assert {"percent", "thousands", "left_right", "decimal", "units", "permuted_list", "slash_frac"} <= kinds
    grading.reset_stats()
    wrong, dt = run_pairs(pairs + mv, True)
    assert not wrong, f"{len(wrong)} equivalent pairs graded False, e.g. {wrong[:10]}"
    assert grading.STATS.verified >= 200  # math-verify really ran on the hard ones
    print(f"\n{len(pairs) + len(mv)} equivalent pairs in {dt:.1f}s, stats {grading.STATS}")


def test_non_equivalent_pairs_are_false(golds):
    pairs = [(f"{src}:{k}", p, g) for src, g in golds for k, p in non_equivalent(g)]
    pairs += [("math500:bump_digit", bump_last_digit(g), g) for src, g in golds
              if src == "math500" and bump_last_digit(g) is not None]
    # another problem's answer, when the normal forms and exact values differ
    rng = random.Random(2)
    math = [g for src, g in golds if src == "math500"]
    for _ in range(80):
        a, b = rng.sample(math, 2)
        if normalize_answer(a) != normalize_answer(b):
            pairs.append(("math500:other_problem", a, b))
    assert len(pairs) > 1000
    wrong, dt = run_pairs(pairs, False)
    assert not wrong, f"{len(wrong)} non-equivalent pairs graded True, e.g. {wrong[:10]}"
    print(f"\n{len(pairs)} non-equivalent pairs in {dt:.1f}s")


HAND_PAIRS = [
    # (prediction, gold, expected)
    ("\\boxed{\\dfrac{1}{2}}", "0.5", True), ("$\\frac12$", "\\frac{1}{2}", True), ("50\\%", "50", True),
    ("\\text{(A)}", "A", True), ("(B)", "\\textbf{(B)}", True), ("x = 3", "3", True), ("y=-2", "-2", True),
    ("1,000,000", "1000000", True), ("\\$18.00", "18", True), ("18 dollars", "18", True),
    ("90^\\circ", "90", True), ("[1, 2)", "[1,2)", True), ("\\left[ -3, \\infty \\right)", "[-3,\\infty)", True),
    ("\\{2, 1\\}", "\\{1,2\\}", True), ("2\\sqrt{3}", "\\sqrt{12}", True), ("x^2+2x", "x(x+2)", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True), ("0.3333", "\\frac13", True), ("52_8", "52_{8}", True),
    ("(1,2]", "[1,2)", False), ("\\{1,3\\}", "\\{1,2\\}", False), ("0.3", "\\frac{1}{3}", False),
    (".0000673", ".0000672", False), ("52_9", "52_8", False), ("3", "4", False), ("x^2-2x", "x(x+2)", False),
    ("864 \\mbox{ inches}^3", "864 \\mbox{ inches}^2", False), ("B", "A", False), ("\\boxed{}", "3", False),
    (None, "3", False), ("no answer here", "3", False), ("\\boxed{3", "3", False),
]


def test_hand_pairs():
    res = grade_batch([p for p, _, _ in HAND_PAIRS], [g for _, g, _ in HAND_PAIRS], timeout_s=CORRECTNESS_TIMEOUT_S,
                      processes=2)
    wrong = [(p, g, e) for (p, g, e), r in zip(HAND_PAIRS, res) if r != e]
    assert not wrong, wrong
    assert grade("so the answer is \\boxed{\\frac{3}{4}}.", "0.75")  # whole responses are fine
    assert decisive("1/3", "0.3333") is False  # the rounding allowance is for predictions only


PATHOLOGICAL = [
    "9^{9^{9^{9}}}", "9^9^9^9", "10^{10^{10^{10}}}", "(10^{10})!", "\\binom{10^{9}}{10^{5}}", "2^{2^{2^{2^{2^{2}}}}}",
    "{" * 50_000 + "1" + "}" * 50_000, "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "x" * 100_000, "1+" * 50_000 + "1", "\\frac{" * 900 + "1" + "}{2}" * 900, "(" * 900 + "1" + ")" * 900,
    "\\sqrt{" * 500 + "2" + "}" * 500, "1+" * 900 + "1", "\\left(" * 300 + "x" + "\\right)" * 300,
    "\x00\x01\udcff" * 1000, "",
]


def test_pathological_inputs_are_bounded():
    """Every answer returns False within the bound; nothing hangs, nothing raises (the screen off: the pool's
    own bound is what is tested here)."""
    timeout_s = 1.5
    grading.reset_stats()
    t = time.time()
    res = grade_batch(PATHOLOGICAL, ["3"] * len(PATHOLOGICAL), timeout_s=timeout_s, processes=2, max_chars=10**6,
                      screen=False)
    wall = time.time() - t
    assert res == [False] * len(PATHOLOGICAL)
    st = grading.STATS
    # the bound: dispatch-to-answer time per answer <= timeout_s (+0.25 s of select/IPC slack, stated once)
    assert st.max_task_s <= timeout_s + 0.25, st
    assert st.soft_timeouts + st.timeouts >= 5, st  # the corpus really is pathological
    print(f"\npathological corpus ({len(PATHOLOGICAL)} answers, max_chars=1e6): wall {wall:.1f}s, "
          f"worst answer {st.max_task_s:.2f}s, {st}")
    # with the defaults (screen on, max_chars) the parent decides them all without a worker
    grading.reset_stats()
    assert grade_batch(PATHOLOGICAL, ["3"] * len(PATHOLOGICAL)) == [False] * len(PATHOLOGICAL)
    st = grading.STATS
    assert st.too_costly >= 5 and st.verified == 0 and st.too_costly + st.too_long == len(PATHOLOGICAL) - 1, st
    # default max_chars: the long ones never reach a worker
    grading.reset_stats()
    long_ones = [p for p in PATHOLOGICAL if len(p) > grading.DEFAULT_MAX_CHARS]
    t = time.time()
    assert grade_batch(long_ones, ["3"] * len(long_ones), timeout_s=timeout_s) == [False] * len(long_ones)
    assert grading.STATS.too_long == len(long_ones) >= 4 and grading.STATS.verified == 0
    assert time.time() - t < 1.0


def test_hard_kill_when_the_worker_cannot_interrupt_itself():
    """With the worker's soft alarm off, only the parent's SIGKILL at the deadline ends the work."""
    grading.reset_stats()
    nested = "{" * 50_000 + "1" + "}" * 50_000
    t = time.time()
    assert grade_batch([nested, "9^{9^{9^{9}}}"], ["3", "3"], timeout_s=1.0, processes=2, max_chars=10**6,
                       soft_timeout=False, screen=False) == [False, False]
    assert grading.STATS.timeouts == 2 and grading.STATS.max_task_s <= 1.25, grading.STATS
    assert time.time() - t < 1.0 + 60  # includes at most the start of fresh workers
    assert grade("0.5", "\\frac{1}{2}") and grade("\\sqrt{4}", "2")  # the pool recovers (fresh workers)


def test_worker_crash_grades_false_and_recovers():
    """A worker that dies mid-answer (here: killed by the test) costs that answer only."""
    grading.reset_stats()
    nested = "{" * 50_000 + "1" + "}" * 50_000
    with grading._POOL.lock:
        grading._POOL.ensure(1)
        victim = grading._POOL.workers[0].proc.pid

    def kill_soon():
        time.sleep(0.5)
        os.kill(victim, 9)  # a process this test session started

    killer = threading.Thread(target=kill_soon)
    killer.start()
    assert grade_batch([nested], ["3"], timeout_s=30.0, processes=1, max_chars=10**6, soft_timeout=False,
                       screen=False) == [False]
    killer.join()
    assert grading.STATS.crashes == 1 and grading.STATS.timeouts == 0, grading.STATS
    assert grading.STATS.max_task_s < 5.0
    assert grade("\\frac{6}{4}", "1.5")


def test_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL the parent while its worker is stuck: the worker must not live on (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(grading.__file__)!r})\n"
        "import grading\n"
        "grading._POOL.ensure(1)\n"
        "print(grading._POOL.workers[0].proc.pid, flush=True)\n"
        "grading.grade_batch(['{' * 50000 + '1' + '}' * 50000], ['3'], timeout_s=120, max_chars=10**6,"
        " soft_timeout=False, screen=False)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        time.sleep(2.0)  # the worker is busy now
        os.kill(worker_pid, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker_pid, 9)
        pytest.fail(f"worker {worker_pid} outlived its killed parent")


def test_threads_and_bad_arguments():
    out = {}

    def work(i):
        out[i] = grade_batch(["\\sqrt{9}", "4"], ["3", "3"], timeout_s=5.0, processes=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert out == {i: [True, False] for i in range(3)}  # math-verify's SIGALRM would fail in a thread
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        grade_batch(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="timeout_s"):
        grade("1", "1", timeout_s=0)


def test_extract_boxed():
    assert extract_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert extract_boxed("\\fbox{7}") == "7" and extract_boxed("\\boxed{\\boxed{3}}") == "3"
    assert extract_boxed("\\boxed{2} and \\boxed{3") is None and extract_boxed("none") is None
    assert extract_boxed("\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}") == "{" * 50_000 + "}" * 50_000
