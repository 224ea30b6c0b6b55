"""The grader against math-verify's documented behaviour, per category, and its worst time on pathological input.

    python benchmarks/grading_agreement.py                  # agreement table + pathological timing
    python benchmarks/grading_agreement.py --math-verify    # also raw math-verify: verify(parse(g), parse(p))
    python benchmarks/grading_agreement.py --no-timing      # agreement only

Cases: tests/data/grading_cases.jsonl (pred, gold, expected, category, source: the math-verify test, README rule
or project rule each label follows; set: "dev" cases were written before the grader was changed, "holdout"
cases after, and measured without changing the grader for them). Agreement = share of cases where
`urlvr_jax.rewards.grading.grade` returns `expected`. The raw math-verify column calls math-verify the way its
own tests do, in this process, with its own 5 s timeouts; where it differs from `expected`, the label follows a
documented rule that raw math-verify applies only at another precision (rounded matrix entries and interval
endpoints; see each case's source), or raw math-verify finds no answer in a bare prediction without a LaTeX
environment ("x != 3").

Timing: each pathological answer is graded alone against gold "3" with the default 5 s bound; the printed time
is the grader's dispatch-to-answer time of the answer (`GraderStats.max_task_s`, the quantity the bound covers;
0 when the parent decides without a worker) and the wall time of the call. The last lines print the worst of each
and the headroom bound / worst.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from urlvr_jax.rewards import grading  # noqa: E402

CASES = ROOT / "tests" / "data" / "grading_cases.jsonl"

# Inputs that made sympy / math-verify spin (or could): huge powers and factorials, deep nesting, long strings.
PATHOLOGICAL = [
    "9^{9^{9^{9}}}", "9^9^9^9", "9^{9^{9}}", "10^{10^{10}}", "2^{3^{20}}", "10^{10^{10^{10}}}",
    "2^{2^{2^{2^{2^{2}}}}}", "10^{100000}", "2^{10^{6}}",
    "10^10^10", "1.5^{10^{7}}", "\\sqrt{2}^{10^{6}}", "e^{e^{e^{100}}}", "x^{x^{x^{x^{x}}}}",
    "(10^{10})!", "99999999!", "1000000!!", "\\binom{10^{9}}{10^{5}}", "\\binom{100000}{50000}",
    "\\sum_{k=1}^{10^{9}} k^{k}", "\\prod_{k=1}^{10^{8}} k", "(1+x)^{100000}", "(x+1)^{5000}-(1+x)^{5000}",
    "{" * 50_000 + "1" + "}" * 50_000, "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "{" * 1500 + "1" + "}" * 1500, "\\frac{" * 900 + "1" + "}{2}" * 900, "(" * 900 + "1" + ")" * 900,
    "\\sqrt{" * 500 + "2" + "}" * 500, "\\left(" * 300 + "x" + "\\right)" * 300, "[" * 900 + "1" + "]" * 900,
    "x" * 100_000, "1+" * 50_000 + "1", "1+" * 900 + "1", "x+" * 900 + "x", "1" * 1999, "9" * 1000 + "^{9}",
    "\\begin{pmatrix}" + " \\\\ ".join(" & ".join("x" for _ in range(30)) for _ in range(30)) + "\\end{pmatrix}",
    "\\det\\begin{pmatrix}" + " \\\\ ".join(" & ".join(f"x_{i}{j}" for j in range(9)) for i in range(9))
    + "\\end{pmatrix}",
    "\x00\x01\udcff" * 1000, "\\boxed{1}, " * 600, "$1$ and " * 300 + "$2$", "1,2" * 600,
]


def load_cases(path: Path = CASES) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def raw_math_verify(cases: list[dict]) -> list[bool]:
    import logging

    from math_verify import parse, verify

    logging.disable(logging.CRITICAL)
    out = []
    for c in cases:
        try:
            out.append(bool(verify(parse(c["gold"]), parse(c["pred"]))))
        except Exception:  # noqa: BLE001 - a failure is a False verdict, as in math-verify's own metric
            out.append(False)
    return out


def agreement(cases: list[dict], with_math_verify: bool) -> tuple[float, list[dict]]:
    got = grading.grade_batch([c["pred"] for c in cases], [c["gold"] for c in cases], timeout_s=30.0)
    raw = raw_math_verify(cases) if with_math_verify else [None] * len(cases)
    by_cat: dict[str, list] = defaultdict(list)
    misses = []
    for c, g, r in zip(cases, got, raw):
        by_cat[c["category"]].append((g == c["expected"], r == c["expected"] if r is not None else None))
        if g != c["expected"]:
            misses.append(dict(c, got=g))
    head = f"{'category':22s} {'n':>4s} {'ours':>8s}" + (f" {'raw m-v':>8s}" if with_math_verify else "")
    print(head)
    print("-" * len(head))
    total, agree, agree_raw = 0, 0, 0
    for cat in sorted(by_cat):
        rows = by_cat[cat]
        ok = sum(a for a, _ in rows)
        line = f"{cat:22s} {len(rows):4d} {100 * ok / len(rows):7.1f}%"
        if with_math_verify:
            ok_raw = sum(b for _, b in rows)
            agree_raw += ok_raw
            line += f" {100 * ok_raw / len(rows):7.1f}%"
        print(line)
        total, agree = total + len(rows), agree + ok
    line = f"{'all':22s} {total:4d} {100 * agree / total:7.1f}%"
    if with_math_verify:
        line += f" {100 * agree_raw / total:7.1f}%"
    print(line)
    for part in sorted({c.get("set", "dev") for c in cases}):
        rows = [g == c["expected"] for c, g in zip(cases, got) if c.get("set", "dev") == part]
        print(f"{'  set ' + part:22s} {len(rows):4d} {100 * sum(rows) / len(rows):7.1f}%")
    return agree / total, misses


def timing(bound_s: float) -> float:
    grading.grade_batch(["\\sqrt{4}"], ["3"], timeout_s=bound_s)  # start a worker outside the timings
    worst_task, worst_wall, worst_input = 0.0, 0.0, ""
    for p in PATHOLOGICAL:
        grading.reset_stats()
        t0 = time.perf_counter()
        verdict = grading.grade_batch([p], ["3"], timeout_s=bound_s, processes=1)[0]
        wall = time.perf_counter() - t0
        st = grading.STATS
        task = st.max_task_s
        how = ("timeout" if st.timeouts else "soft timeout" if st.soft_timeouts else "crash" if st.crashes
               else "error" if st.errors else "too long" if st.too_long else "too costly" if st.too_costly
               else "parent" if st.fast_path else "worker")
        shown = f"{p[:60]!r}{'…' if len(p) > 60 else ''}"
        print(f"  {task:6.2f}s task {wall:6.2f}s wall  {how:12s} {verdict!s:5s} {shown}")
        if task > worst_task:
            worst_task, worst_input = task, p
        worst_wall = max(worst_wall, wall)
    print(f"worst_task_s={worst_task:.2f} (input {worst_input[:60]!r}) worst_wall_s={worst_wall:.2f} "
          f"bound_s={bound_s:.1f} headroom={bound_s / max(worst_task, 1e-9):.1f}x")
    return worst_task


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--math-verify", action="store_true", help="add raw math-verify's agreement per category")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--bound", type=float, default=grading.DEFAULT_TIMEOUT_S)
    ap.add_argument("--cases", type=Path, default=CASES, help="a JSONL case file (default: %(default)s)")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    cases = load_cases(args.cases)
    share, misses = agreement(cases, args.math_verify)
    if args.show_misses:
        for m in misses:
            print(f"  MISS [{m['category']}] gold={m['gold']!r} pred={m['pred']!r} expected={m['expected']}")
    print(f"agreement={share:.3f}")
    if not args.no_timing:
        timing(args.bound)
    return 0


if __name__ == "__main__":
    sys.exit(main())
