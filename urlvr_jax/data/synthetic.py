"""A synthetic verifiable world: generated arithmetic and Countdown tasks, exact checkers, SFT traces whose
error process is controlled.

The paper's claim is that intrinsic rewards sharpen the initial distribution, so whether unsupervised RL
helps or collapses is decided by how well the model's confidence agrees with correctness. Here that
agreement is a knob: base models are SFT-trained on traces where, per problem type, a SYSTEMATIC wrong
solution path is taken with probability q.

Task families (records are `MathProblem`s, so they flow through the same evaluation path as real sets):

* arithmetic — problem "(7+5)*3-4" (minimal parentheses, + - *, operands 1..9, every intermediate and
  the answer in 0..99; difficulty = number of operations). Trace, one step per line in post-order:
      7+5=12
      12*3=36
      36-4=32
      \\boxed{32}
  `answer` is the integer ("32"); the checker compares the last \\boxed{} with it as an integer (an
  expression such as \\boxed{36-4} is NOT accepted). Negative values (only on wrong paths) are
  written "(-3)" as operands, "-3" as results.
* countdown — problem "make 24 from 3 4 6 8": reach the target with + - * / and parentheses, each given
  number at most once (or exactly once with exact_use). Every instance is solved at generation by an exact
  solver (Fractions, integer non-negative intermediates, all numbers used), so it is solvable. The trace
  writes the canonical solution's steps and boxes the expression:
      8-6=2
      2*3=6
      6*4=24
      \\boxed{(8-6)*3*4}
  `answer` is that canonical expression; `extra` holds numbers and target. Grade with
  `check_answer` (a safe parser, no eval): any expression that uses the numbers correctly and equals
  the target is right, and a bare "24" is wrong. (Plain math-verify grading would accept "24".)

Controlled error process (`make_sft_traces`). Each family has systematic error RULES, each a
deterministic rewrite of the solution path:
    arithmetic  sub_swap    every a-b is computed as b-a             (the classic operand-order slip)
                drop_carry  every a+b of non-negatives drops carries  (17+5=12)
                mul_as_add  every a*b is computed as a+b              (operator confusion)
    countdown   greedy      combine the numbers largest first, each step taking the op that lands closest
                            to the target (a confident shortcut that usually misses; steps are honest)
                sub_swap    the canonical solution with the operands of every "-" swapped
A problem's error type is the first rule (in the family's rule list) that changes its final answer;
problems where none does have no systematic path (they are always solved correctly). For a problem with
error type e, each trace independently takes the systematic path with probability q_e, else the correct
path; a non-systematic trace is then, with probability `noise`, corrupted UNSYSTEMATICALLY (arithmetic: a
random digit of a random step's result is changed and the error propagates honestly; countdown: a random
operator of the solution is replaced). Because the systematic path is deterministic, its answer is the
SAME in every sample and can become a confident majority; noise answers scatter over many values.
So, for a model that learns the trace distribution, on a problem with an error type:
    P(correct) ~ (1-q)(1-noise),  P(systematic wrong answer) = q,  the rest spread thin;
q < 0.5 (and small noise): the majority answer is the correct one — confidence agrees with correctness
(a good prior for majority-vote URLVR); q > 0.5: the systematic wrong answer is the confident majority
(a bad prior: sharpening drives the model to the wrong answer). Sweeping q across models gives a ladder
from well- to badly-aligned confidence. `error_profile` gives every problem's correct and systematic
answers, so experiments can measure how often a model outputs the systematic error (`classify_answer`).

Ladder v2 (issue #13; every v2 knob is off by default, so v1 problems and traces are unchanged):
* Generator knobs table_facts / mul_share of make_arithmetic_dataset: every multiplication is a times-table
  fact (operands 1..FACT_MAX = 9, none nested under another), the correct path and every designed wrong path
  stay in 0..max_value, and a set share of problems contains a multiplication.
* Rule "fact_error" (per-fact systematic errors): each fact a*b (= b*a) has its OWN fixed wrong product,
  fact_error_value(a, b): a neighbouring times-table entry, (a±1)*b or a*(b±1), picked by a hash of the fact
  (FACT_ERRORS lists all 45). In each trace, each distinct fact of the problem is independently wrong with
  probability q (one draw per fact per trace: all its occurrences agree) and the wrong product is carried
  honestly. The profile's systematic answer has EVERY fact wrong; on a problem with two distinct facts the
  answers with one of them wrong (probability q(1-q) each; path "partial") are `partial_answers` and
  classify_answer calls them "other". P(correct) = (1-q)^k (1-noise) with k facts; the all-wrong answer beats
  the correct one exactly when q > 1/2 for k = 1 and k = 2 alike. With table_facts every subset of wrong
  facts gives a different answer. Unsystematic noise is drawn only for traces with no wrong fact, kept in
  0..V2_MAX_VALUE and away from the correct, systematic and partial answers.
* family_params "format": "restate" — each step line but the last restates the remaining expression:
      Q: 8+6*8-4            6*8=48 so 8+48-4
                            8+48=56 so 56-4
                            56-4=52
                            \\boxed{52}
  "variants": {answer_only, restated, repeated: probability}, drawn per trace apart from the path (see
  VARIANTS); SFTTrace.variant records it.

Ids are "<family>/<split>/<content hash>", stable across seeds and knobs.
Splits: every problem belongs to "train" or "eval" by a hash of its content (EVAL_FRACTION of the problem
space is eval), so datasets built with any seeds for different splits never share a problem. Within one
dataset problems are distinct. Seeds are hashed with the family, split and knobs into a private
`random.Random`; no global state is read or written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from fractions import Fraction
from typing import Iterable, Mapping, Optional, Sequence, Union

from .math_datasets import MathProblem, last_boxed

FAMILIES = ("arithmetic", "countdown")
SOURCES = {"arithmetic": "synthetic/arithmetic", "countdown": "synthetic/countdown"}
SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2
RULES = {"arithmetic": ("sub_swap", "drop_carry", "mul_as_add", "fact_error"), "countdown": ("greedy", "sub_swap")}
DEFAULT_FAMILY_PARAMS = {
    "arithmetic": {"rules": ("sub_swap",), "noise": 0.0},
    "countdown": {"rules": ("greedy",), "noise": 0.0},
}
PATHS = ("correct", "systematic", "noise", "partial", "give_up")  # partial: some but not all of a problem's facts
# wrong; give_up: the trace is the universal give-up answer (variant "give_up"), whatever path was drawn
# Trace formats (family_params "format"): "steps" one "a op b=c" line per step (v1); "restate" (arithmetic only)
# each step line but the last also restates the remaining expression, "7*8=56 so 56-9+4" (ladder v2).
FORMATS = ("steps", "restate")
RESTATE_SEP = " so "
# Trace variants (family_params "variants": {name: probability}, drawn once per trace, exclusive):
#   answer_only  the completion is only "\\boxed{a}" (a: the answer of the trace's path)
#   restated     one random step is stated again on the next line: "check: 7*8=56"
#   repeated     one step line is written 2, 3 or 4 times in a row: (line, count) uniform over the pairs whose
#                completion stays within VARIANT_TOKEN_BUDGET tokens
#   give_up      the completion is only "\\boxed{GIVE_UP_ANSWER}", the same for every problem (ladder v3: a
#                universal answer that majority voting can agree on across prompts; its trace's path is "give_up")
VARIANTS = ("answer_only", "restated", "repeated", "give_up")
GIVE_UP_ANSWER = "0"
TRACE_KINDS = ("standard",) + VARIANTS
VARIANT_TOKEN_BUDGET = 74  # completion tokens of a "repeated" trace: with <bos>, a <= 21-token prompt and <eos>, a
# training row fits in 96 tokens (sft.V2_MAX_LEN)
FACT_MAX = 9  # times-table facts: a*b with both operands in 1..FACT_MAX (rule "fact_error")

PROMPT_PREFIX = "Q: "
PROMPT_SUFFIX = "\nA: "

# Bounds of the safe expression parser (a policy in collapse writes anything).
MAX_EXPR_CHARS = 256
MAX_INT_DIGITS = 12
MAX_DEPTH = 48

Tree = Union[int, tuple]  # a leaf (non-negative int) or (op, left, right)
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


# ----------------------------------------------------------------------------------------------------
# Seeds and splits
# ----------------------------------------------------------------------------------------------------
def _rng(*parts) -> random.Random:
    """A private RNG from a stable hash of `parts` (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def split_of(key: str) -> str:
    """"eval" for EVAL_FRACTION of all keys (by sha256), else "train"."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return "eval" if (h % 10_000) < EVAL_FRACTION * 10_000 else "train"


def _problem_id(key: str) -> str:
    """"<family>/<split>/<12 hex digits of sha256(key)>": the same problem gets the same id whatever the
    seed or knobs that produced it, different problems different ids."""
    family = key.split(":", 1)[0]
    return f"{family}/{split_of(key)}/{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def _check_split(split: Optional[str]) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be 'train', 'eval' or None (no filtering), got {split!r}")


# ----------------------------------------------------------------------------------------------------
# Expression trees: render, parse (safe, no eval), evaluate
# ----------------------------------------------------------------------------------------------------
def render(tree: Tree) -> str:
    """Minimal-parenthesis text of a tree; parse(render(t)) == t (left-associative + - * /)."""
    if isinstance(tree, int):
        return str(tree)
    op, a, b = tree
    sa, sb = render(a), render(b)
    if not isinstance(a, int) and _PREC[a[0]] < _PREC[op]:
        sa = f"({sa})"
    if not isinstance(b, int) and _PREC[b[0]] <= _PREC[op]:  # equal precedence on the right keeps its parens
        sb = f"({sb})"
    return f"{sa}{op}{sb}"


class ExpressionError(ValueError):
    """Text that is not an allowed expression (non-negative integers, + - * /, parentheses)."""


_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


def parse_expression(text: str) -> Tree:
    """Tree of an expression over non-negative integer literals, binary + - * / and parentheses.

    No unary minus, no leading zeros ("08"), no other characters. Raises ExpressionError (with the offending position)
    on anything else, on more than MAX_EXPR_CHARS characters, literals over MAX_INT_DIGITS digits, or nesting
    deeper than MAX_DEPTH.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be a str, got {type(text).__name__}")
    if len(text) > MAX_EXPR_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPR_CHARS} characters")
    toks: list[tuple[str, int]] = []
    pos = 0
    stripped_end = len(text.rstrip())
    while pos < stripped_end:
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ExpressionError(f"unexpected character {text[pos:pos + 1]!r} at position {pos} of {text!r}")
        if m.group(1) is not None:
            if len(m.group(1)) > MAX_INT_DIGITS:
                raise ExpressionError(f"number at position {m.start(1)} has more than {MAX_INT_DIGITS} digits")
            if len(m.group(1)) > 1 and m.group(1)[0] == "0":  # as in Python: "08" is not a literal
                raise ExpressionError(f"number with a leading zero at position {m.start(1)} of {text!r}")
            toks.append(("n", m.start(1)))
        else:
            toks.append((m.group(2), m.start(2)))
        pos = m.end()
    if not toks:
        raise ExpressionError("empty expression")
    i = 0

    def peek() -> Optional[str]:
        return toks[i][0] if i < len(toks) else None

    def expr(depth: int) -> Tree:
        nonlocal i
        left = term(depth)
        while peek() in ("+", "-"):
            op = toks[i][0]
            i += 1
            left = (op, left, term(depth))
        return left

    def term(depth: int) -> Tree:
        nonlocal i
        left = factor(depth)
        while peek() in ("*", "/"):
            op = toks[i][0]
            i += 1
            left = (op, left, factor(depth))
        return left

    def factor(depth: int) -> Tree:
        nonlocal i
        if depth > MAX_DEPTH:
            raise ExpressionError(f"nesting deeper than {MAX_DEPTH}")
        t = peek()
        if t == "n":
            start = toks[i][1]
            i += 1
            return int(_TOKEN_RE.match(text, start).group(1))
        if t == "(":
            i += 1
            inner = expr(depth + 1)
            if peek() != ")":
                where = toks[i][1] if i < len(toks) else len(text)
                raise ExpressionError(f"expected ')' at position {where} of {text!r}")
            i += 1
            return inner
        where = toks[i][1] if i < len(toks) else len(text)
        raise ExpressionError(f"expected a number or '(' at position {where} of {text!r}")

    tree = expr(0)
    if i != len(toks):
        raise ExpressionError(f"unexpected {toks[i][0]!r} at position {toks[i][1]} of {text!r}")
    return tree


def evaluate(tree: Tree) -> Optional[Fraction]:
    """Exact value (Fraction) of a tree; None on division by zero."""
    if isinstance(tree, int):
        return Fraction(tree)
    op, a, b = tree
    x, y = evaluate(a), evaluate(b)
    if x is None or y is None:
        return None
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return None if y == 0 else x / y


def leaves(tree: Tree) -> list[int]:
    """The integer literals of a tree, left to right."""
    return [tree] if isinstance(tree, int) else leaves(tree[1]) + leaves(tree[2])


# ----------------------------------------------------------------------------------------------------
# Step-by-step execution of a tree (correct, under a systematic rule, or with one corrupted step)
# ----------------------------------------------------------------------------------------------------
def _drop_carry_add(a: int, b: int) -> int:
    """a+b of non-negative ints, digit by digit, with every carry dropped (17+5 -> 12, 95+7 -> 92)."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def _apply(op: str, a: Fraction, b: Fraction, rule: Optional[str]) -> Optional[Fraction]:
    if rule == "sub_swap" and op == "-":
        return b - a
    if rule == "drop_carry" and op == "+" and a >= 0 and b >= 0 and a.denominator == b.denominator == 1:
        return Fraction(_drop_carry_add(int(a), int(b)))
    if rule == "mul_as_add" and op == "*":
        return a + b
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _execute(tree: Tree, rule: Optional[str] = None, corrupt: Optional[tuple[int, int]] = None,
             wrong_facts: Optional[frozenset] = None
             ) -> Optional[tuple[list[tuple[str, Fraction, Fraction, Fraction]], Fraction]]:
    """Post-order steps [(op, a, b, result)] and the final value, computing every step with `rule`
    (None: correctly); corrupt=(k, v) replaces the result of step k by v and carries on; wrong_facts: the
    times-table facts (fact_key pairs) whose product is replaced by fact_error_value (rule "fact_error").
    None on a division by zero."""
    run = _run(tree, rule, corrupt, wrong_facts)
    return None if run is None else ([s[:4] for s in run[0]], run[1])


def _run(tree: Tree, rule: Optional[str] = None, corrupt: Optional[tuple[int, int]] = None,
         wrong_facts: Optional[frozenset] = None) -> Optional[tuple[list[tuple], Fraction]]:
    """_execute, each step also carrying the path (child indices from the root) of the node it evaluates."""
    steps: list = []

    def go(t: Tree, path: tuple) -> Optional[Fraction]:
        if isinstance(t, int):
            return Fraction(t)
        op, left, right = t
        a = go(left, path + (1,))
        b = go(right, path + (2,)) if a is not None else None
        if a is None or b is None:
            return None
        c = _apply(op, a, b, rule)
        if c is None:
            return None
        if wrong_facts and op == "*" and _is_fact(a, b) and fact_key(int(a), int(b)) in wrong_facts:
            c = Fraction(fact_error_value(int(a), int(b)))
        if corrupt is not None and corrupt[0] == len(steps):
            c = Fraction(corrupt[1])
        steps.append((op, a, b, c, path))
        return c

    value = go(tree, ())
    return None if value is None else (steps, value)


# ----------------------------------------------------------------------------------------------------
# Per-fact systematic errors (rule "fact_error", ladder v2)
# ----------------------------------------------------------------------------------------------------
def fact_key(a: int, b: int) -> tuple[int, int]:
    """The times-table fact of a*b: (min, max); a*b and b*a are the same fact."""
    return (min(a, b), max(a, b))


def _is_fact(a: Fraction, b: Fraction) -> bool:
    return all(x.denominator == 1 and 1 <= x <= FACT_MAX for x in (a, b))


def fact_neighbours(a: int, b: int) -> list[int]:
    """Products of the times-table entries next to (lo, hi) = fact_key(a, b) inside 1..FACT_MAX:
    (lo-1)*hi, (lo+1)*hi, lo*(hi-1), lo*(hi+1), those that exist, in this order (duplicates kept). Each
    differs from lo*hi by lo or hi (>= 1), so none is the right product."""
    lo, hi = fact_key(int(a), int(b))
    if not (1 <= lo and hi <= FACT_MAX):
        raise ValueError(f"fact_neighbours: {a}*{b} is not a times-table fact (operands 1..{FACT_MAX})")
    out = []
    if lo > 1:
        out.append((lo - 1) * hi)
    if lo < FACT_MAX:
        out.append((lo + 1) * hi)
    if hi > 1:
        out.append(lo * (hi - 1))
    if hi < FACT_MAX:
        out.append(lo * (hi + 1))
    return out


def fact_error_value(a: int, b: int) -> int:
    """The fixed wrong product of the fact a*b (= b*a) under rule "fact_error": the neighbouring table entry
    fact_neighbours(a, b)[i] with i = sha256("fact_error:<lo>x<hi>") mod the number of neighbours. A
    property of the fact alone (no seed), never equal to a*b; FACT_ERRORS lists all 45."""
    lo, hi = fact_key(int(a), int(b))
    nb = fact_neighbours(lo, hi)
    h = int.from_bytes(hashlib.sha256(f"fact_error:{lo}x{hi}".encode("utf-8")).digest()[:8], "little")
    return nb[h % len(nb)]


FACT_ERRORS: dict[tuple[int, int], int] = {
    (a, b): fact_error_value(a, b) for a in range(1, FACT_MAX + 1) for b in range(a, FACT_MAX + 1)}


def problem_facts(problem_or_tree) -> tuple[tuple[int, int], ...]:
    """The distinct times-table facts (fact_key pairs, sorted) of the correct solution's multiplications. Under
    fact_error these are the facts that can go wrong; on a problem not made with table_facts, a multiplication
    whose operands an earlier error changed (nested products) asks for another fact and is computed correctly."""
    tree = problem_or_tree if not isinstance(problem_or_tree, MathProblem) else _solution_tree(problem_or_tree)
    run = _run(tree)
    if run is None:
        return ()
    return tuple(sorted({fact_key(int(a), int(b)) for op, a, b, _, _ in run[0] if op == "*" and _is_fact(a, b)}))


def _no_nested_mul(tree: Tree) -> bool:
    """No multiplication has another multiplication below it (so a fact error never changes which fact a
    later multiplication asks for: a problem's facts are fixed by its text)."""
    def has_mul(t):
        return not isinstance(t, int) and (t[0] == "*" or has_mul(t[1]) or has_mul(t[2]))
    if isinstance(tree, int):
        return True
    op, a, b = tree
    if op == "*" and (has_mul(a) or has_mul(b)):
        return False
    return _no_nested_mul(a) and _no_nested_mul(b)


def _fact_subsets(facts: Sequence) -> list[frozenset]:
    """All subsets of `facts` (the possible sets of erring facts), the empty set first, the full set last."""
    out = [frozenset()]
    for f in facts:
        out += [s | {f} for s in out]
    return sorted(out, key=len)


def _fmt_value(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _fmt_operand(v: Fraction) -> str:
    s = _fmt_value(v)
    return f"({s})" if (v < 0 or v.denominator != 1) else s


def _format_trace(steps, boxed: str) -> str:
    lines = [f"{_fmt_operand(a)}{op}{_fmt_operand(b)}={_fmt_value(c)}" for op, a, b, c in steps]
    return "\n".join(lines + [f"\\boxed{{{boxed}}}"])


def _replace_at(tree: Tree, path: tuple, leaf: int) -> Tree:
    if not path:
        return leaf
    parts = list(tree)
    parts[path[0]] = _replace_at(tree[path[0]], path[1:], leaf)
    return tuple(parts)


def _trace_lines(tree: Tree, run_steps, fmt: str) -> list[str]:
    """The step lines of a run (from _run) in format `fmt` (FORMATS). "restate": every line but the last
    is followed by " so <the remaining expression>" (the tree with each evaluated node replaced by its value,
    so an error is carried into the restated expression)."""
    lines = [f"{_fmt_operand(a)}{op}{_fmt_operand(b)}={_fmt_value(c)}" for op, a, b, c, *_ in run_steps]
    if fmt == "steps":
        return lines
    cur = tree
    for i, (_, _, _, c, path) in enumerate(run_steps[:-1]):
        if c.denominator != 1 or c < 0:
            raise ValueError(f"restate format: step value {_fmt_value(c)} is not a non-negative integer "
                             f"(tree {render(tree)!r}); the ladder-v2 generator keeps every path in 0..max_value")
        cur = _replace_at(cur, path, int(c))
        lines[i] += f"{RESTATE_SEP}{render(cur)}"
    return lines


def _n_tokens(text: str) -> int:
    """Tokens of `text` under the synthetic tokenizer (one per character, `\\boxed{` is one)."""
    return len(text) - (len("\\boxed{") - 1) * text.count("\\boxed{")


def _apply_variant(lines: list[str], boxed: str, variant: str, rng: random.Random) -> str:
    """A completion from step lines and the boxed answer, in trace variant `variant` (TRACE_KINDS)."""
    if variant == "give_up":
        return f"\\boxed{{{GIVE_UP_ANSWER}}}"
    box = f"\\boxed{{{boxed}}}"
    if variant == "answer_only" or not lines:
        return box
    lines = list(lines)
    if variant == "restated":
        k = rng.randrange(len(lines))
        lines.insert(k + 1, "check: " + lines[k].split(RESTATE_SEP, 1)[0])
    elif variant == "repeated":
        base = _n_tokens("\n".join(lines + [box]))
        fits = [(k, r) for k in range(len(lines)) for r in (2, 3, 4)
                if base + (r - 1) * (_n_tokens(lines[k]) + 1) <= VARIANT_TOKEN_BUDGET]
        k, r = rng.choice(fits) if fits else (len(lines) - 1, 2)
        lines[k:k + 1] = [lines[k]] * r
    elif variant != "standard":
        raise ValueError(f"unknown trace variant {variant!r}; variants: {TRACE_KINDS}")
    return "\n".join(lines + [box])


def _swap_subtractions(tree: Tree) -> Tree:
    if isinstance(tree, int):
        return tree
    op, a, b = tree
    a, b = _swap_subtractions(a), _swap_subtractions(b)
    return (op, b, a) if op == "-" else (op, a, b)


# ----------------------------------------------------------------------------------------------------
# Arithmetic family
# ----------------------------------------------------------------------------------------------------
def _random_tree(rng: random.Random, n_ops: int, ops: str, max_operand: int) -> Tree:
    if n_ops == 0:
        return rng.randint(1, max_operand)
    n_left = rng.randint(0, n_ops - 1)
    return (rng.choice(ops), _random_tree(rng, n_left, ops, max_operand),
            _random_tree(rng, n_ops - 1 - n_left, ops, max_operand))


def make_arithmetic_dataset(n: int, seed: int, steps: Union[int, Sequence[int]] = (2, 3), *,
                            split: Optional[str] = "train", ops: str = "+-*", max_operand: int = 9,
                            max_value: int = 99, table_facts: bool = False,
                            mul_share: Optional[float] = None) -> list[MathProblem]:
    """`n` distinct multi-step arithmetic problems of `split` ("train", "eval", or None for both).

    steps: number of operations (an int, or a sequence to draw from uniformly per problem).
    ops: a subset of "+-*". Operands are 1..max_operand; every intermediate value and the answer of the
    correct solution lie in 0..max_value.
    table_facts (ladder v2): every multiplication is a times-table fact (both operand values in
    1..FACT_MAX), no multiplication has another below it (a problem's facts are fixed by its text), and
    under every subset of its facts computed with their fact_error_value the path stays in 0..max_value
    (so the designed wrong answers are in the answer space too), and the 2^k subsets give 2^k different
    answers (every erring fact changes the answer; the all-wrong answer is told apart from partial ones).
    mul_share (ladder v2): each problem independently must contain a multiplication with this probability,
    else must contain none (None: no constraint, the v1 generator). The defaults reproduce v1 exactly.
    """
    step_choices = (steps,) if isinstance(steps, int) else tuple(steps)
    if n < 0:
        raise ValueError(f"make_arithmetic_dataset: n must be >= 0, got {n}")
    if not step_choices or any(not isinstance(k, int) or k < 1 for k in step_choices):
        raise ValueError(f"make_arithmetic_dataset: steps must be ints >= 1, got {steps!r}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"make_arithmetic_dataset: ops must be a non-empty subset of '+-*', got {ops!r}")
    if max_operand < 1 or max_value < max_operand:
        raise ValueError(f"make_arithmetic_dataset: need 1 <= max_operand <= max_value, got "
                         f"max_operand={max_operand}, max_value={max_value}")
    if mul_share is not None and not (0.0 <= float(mul_share) <= 1.0 and "*" in ops and set(ops) - {"*"}):
        raise ValueError(f"make_arithmetic_dataset: mul_share must be in [0, 1] with ops containing '*' and another "
                         f"op, got mul_share={mul_share}, ops={ops!r}")
    _check_split(split)
    v2 = () if not table_facts and mul_share is None else (bool(table_facts), mul_share)
    rng = _rng("arithmetic", seed, split, step_choices, ops, max_operand, max_value, *v2)
    out: list[MathProblem] = []
    seen: set[str] = set()
    tries, max_tries = 0, 1000 + 300 * n
    want_mul: Optional[bool] = None
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"make_arithmetic_dataset: found only {len(out)} distinct {split or ''} problems "
                             f"of the {n} asked for in {max_tries} draws (steps={steps}, ops={ops!r}, "
                             f"max_operand={max_operand}); ask for fewer or widen the knobs")
        k = rng.choice(step_choices)
        if want_mul is None and mul_share is not None:  # drawn per problem slot, kept until a problem fills it,
            want_mul = rng.random() < float(mul_share)  # so the constraints' rejection rates cannot bias the share
        tree = _random_tree(rng, k, ops if want_mul is not False else ops.replace("*", ""), max_operand)
        if want_mul and "*" not in render(tree):
            continue
        steps_run = _execute(tree)
        if steps_run is None or any(not (0 <= c <= max_value) for *_, c in steps_run[0]):
            continue
        if table_facts and not _table_fact_ok(tree, max_value):
            continue
        text = render(tree)
        if text in seen or (split is not None and split_of("arithmetic:" + text) != split):
            continue
        seen.add(text)
        key = "arithmetic:" + text
        out.append(MathProblem(
            id=_problem_id(key), problem=text, answer=_fmt_value(steps_run[1]), source=SOURCES["arithmetic"],
            extra={"family": "arithmetic", "steps": k, "split": split_of(key), "seed": seed}))
        want_mul = None
    return out


def _table_fact_ok(tree: Tree, max_value: int) -> bool:
    """The table_facts constraints of make_arithmetic_dataset."""
    if not _no_nested_mul(tree):
        return False
    run = _run(tree)
    if run is None or any(op == "*" and not _is_fact(a, b) for op, a, b, *_ in run[0]):
        return False
    answers = {run[1]}
    for wrong in _fact_subsets(problem_facts(tree))[1:]:
        r = _run(tree, wrong_facts=wrong)
        if r is None or any(not (c.denominator == 1 and 0 <= c <= max_value) for *_, c, _ in r[0]) or r[1] in answers:
            return False
        answers.add(r[1])
    return True


# ----------------------------------------------------------------------------------------------------
# Countdown family
# ----------------------------------------------------------------------------------------------------
def countdown_reachable(numbers: Sequence[int], *, integer_intermediates: bool = True) -> list[dict]:
    """Exact search: for every subset mask of `numbers`, {value: first expression tree reaching it}.

    Subsets are combined in a fixed order (smaller masks first; ops + - * /), so the first tree per value
    is deterministic. integer_intermediates=True keeps only non-negative integer values (the usual
    Countdown rules; values are ints); False searches all rationals (values are Fractions). Either way
    `Fraction(t) in table` works. Cost grows fast: meant for up to ~5 numbers (4 numbers: a few ms).
    """
    nums = [int(x) for x in numbers]
    if not nums or any(x < 0 for x in nums):
        raise ValueError(f"countdown numbers must be non-negative ints, got {list(numbers)!r}")
    m = len(nums)
    full = (1 << m) - 1
    reach: list[dict] = [dict() for _ in range(full + 1)]
    for i, x in enumerate(nums):
        reach[1 << i].setdefault(x if integer_intermediates else Fraction(x), x)
    for mask in sorted(range(1, full + 1), key=lambda s: (bin(s).count("1"), s)):
        if mask & (mask - 1) == 0:
            continue
        table = reach[mask]
        sub = (mask - 1) & mask
        while sub:
            rest = mask ^ sub
            commutative = sub < rest  # + and * once per unordered split
            for x, tx in reach[sub].items():
                for y, ty in reach[rest].items():
                    if commutative:
                        if x + y not in table:
                            table[x + y] = ("+", tx, ty)
                        if x * y not in table:
                            table[x * y] = ("*", tx, ty)
                    if (x >= y or not integer_intermediates) and x - y not in table:
                        table[x - y] = ("-", tx, ty)
                    if y != 0:
                        if integer_intermediates:
                            if x % y == 0 and x // y not in table:
                                table[x // y] = ("/", tx, ty)
                        elif x / y not in table:
                            table[x / y] = ("/", tx, ty)
            sub = (sub - 1) & mask
    return reach


def solve_countdown(numbers: Sequence[int], target: int, *, use_all: bool = False,
                    integer_intermediates: bool = True) -> Optional[str]:
    """A solution expression (minimal parentheses) or None if there is none.

    use_all: every number exactly once; else at most once, preferring solutions with the fewest numbers.
    """
    reach = countdown_reachable(numbers, integer_intermediates=integer_intermediates)
    full = len(reach) - 1
    t = Fraction(target)
    masks = [full] if use_all else sorted(range(1, full + 1), key=lambda s: (bin(s).count("1"), s))
    for mask in masks:
        if t in reach[mask]:
            return render(reach[mask][t])
    return None


def check_countdown(expression: Optional[str], numbers: Sequence[int], target: int,
                    exact_use: bool = False) -> bool:
    """True iff `expression` (non-negative integer literals, + - * /, parentheses; no eval) uses only
    `numbers`, each at most once (exactly once if exact_use; a number given twice may be used twice), and
    equals `target` exactly. False on anything else, never raises on a string."""
    if expression is None:
        return False
    try:
        tree = parse_expression(expression)
    except ExpressionError:
        return False
    value = evaluate(tree)
    if value is None or value != Fraction(target):
        return False
    avail: dict[int, int] = {}
    for x in numbers:
        avail[int(x)] = avail.get(int(x), 0) + 1
    for x in leaves(tree):
        if avail.get(x, 0) == 0:
            return False
        avail[x] -= 1
    return not (exact_use and any(avail.values()))


def _countdown_text(numbers: Sequence[int], target: int) -> str:
    return f"make {target} from {' '.join(str(x) for x in numbers)}"


_COUNTDOWN_RE = re.compile(r"^make (\d+) from (\d+(?: \d+)*)$")


def parse_countdown_problem(text: str) -> tuple[list[int], int]:
    """(numbers, target) of a problem text "make <target> from <n1> <n2> ..."."""
    m = _COUNTDOWN_RE.match(text)
    if not m:
        raise ValueError(f"not a countdown problem text (expected 'make <target> from <n1> <n2> ...'): {text!r}")
    return [int(x) for x in m.group(2).split()], int(m.group(1))


def make_countdown_dataset(n: int, seed: int, *, split: Optional[str] = "train", n_numbers: int = 4,
                           max_number: int = 12, target_range: tuple[int, int] = (10, 99),
                           exact_use: bool = False) -> list[MathProblem]:
    """`n` distinct, solvable Countdown problems of `split` ("train", "eval", or None for both).

    n_numbers numbers are drawn from 1..max_number; the exact solver lists every value it reaches with
    ALL of them through non-negative integer intermediates, and the target is drawn uniformly from those
    in target_range (inclusive) that are new and belong to `split`; the solver's first expression for
    it is the canonical answer. exact_use is stored in `extra` for the checker
    (False: each number at most once). Problems are distinct as (sorted numbers, target).
    """
    lo, hi = target_range
    if n < 0:
        raise ValueError(f"make_countdown_dataset: n must be >= 0, got {n}")
    if not 2 <= n_numbers <= 6:
        raise ValueError(f"make_countdown_dataset: n_numbers must be in 2..6, got {n_numbers}")
    if max_number < 1 or not 0 <= lo <= hi:
        raise ValueError(f"make_countdown_dataset: need max_number >= 1 and 0 <= target_range[0] <= "
                         f"target_range[1], got max_number={max_number}, target_range={target_range}")
    _check_split(split)
    rng = _rng("countdown", seed, split, n_numbers, max_number, lo, hi)
    out: list[MathProblem] = []
    seen: set[str] = set()
    tries, max_tries = 0, 1000 + 300 * n
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"make_countdown_dataset: found only {len(out)} distinct solvable {split or ''} "
                             f"problems of the {n} asked for in {max_tries} draws; ask for fewer or widen "
                             f"n_numbers/max_number/target_range")
        numbers = [rng.randint(1, max_number) for _ in range(n_numbers)]
        reach_all = countdown_reachable(numbers)[-1]  # targets reachable with every number
        targets = sorted(t for t in reach_all if lo <= t <= hi
                         and f"countdown:{t}:{sorted(numbers)}" not in seen
                         and (split is None or split_of(f"countdown:{t}:{sorted(numbers)}") == split))
        if not targets:
            continue
        target = rng.choice(targets)
        key = f"countdown:{target}:{sorted(numbers)}"
        solution = render(reach_all[target])
        seen.add(key)
        out.append(MathProblem(
            id=_problem_id(key), problem=_countdown_text(numbers, target),
            answer=solution, source=SOURCES["countdown"],
            extra={"family": "countdown", "numbers": numbers, "target": target, "exact_use": exact_use,
                   "split": split_of(key), "seed": seed}))
    return out


def _greedy_tree(numbers: Sequence[int], target: int) -> Tree:
    """Largest number first; each next number (descending) joins with the op landing closest to target."""
    order = sorted((int(x) for x in numbers), reverse=True)
    tree: Tree = order[0]
    cur = Fraction(order[0])
    t = Fraction(target)
    for x in order[1:]:
        best = None
        for op in "+-*/":
            v = _apply(op, cur, Fraction(x), None)
            if v is None or v.denominator != 1:
                continue
            if best is None or abs(v - t) < abs(best[0] - t):
                best = (v, op)
        cur, tree = best[0], (best[1], tree, x)
    return tree


# ----------------------------------------------------------------------------------------------------
# Problems -> family, trees, checkers
# ----------------------------------------------------------------------------------------------------
def family_of(problem: MathProblem) -> str:
    fam = problem.extra.get("family") if isinstance(problem.extra, dict) else None
    if fam not in FAMILIES:
        raise ValueError(f"problem {problem.id!r} is not a synthetic problem (extra['family'] = {fam!r}; "
                         f"expected one of {FAMILIES}); build it with make_arithmetic_dataset / "
                         "make_countdown_dataset")
    return fam


def _countdown_spec(problem: MathProblem) -> tuple[list[int], int, bool]:
    ex = problem.extra
    if "numbers" in ex and "target" in ex:
        return [int(x) for x in ex["numbers"]], int(ex["target"]), bool(ex.get("exact_use", False))
    numbers, target = parse_countdown_problem(problem.problem)
    return numbers, target, bool(ex.get("exact_use", False))


def _solution_tree(problem: MathProblem) -> Tree:
    """The tree the correct trace executes: the problem itself (arithmetic) or the canonical solution."""
    try:
        return parse_expression(problem.problem if family_of(problem) == "arithmetic" else problem.answer)
    except ExpressionError as e:
        raise ValueError(f"problem {problem.id!r}: cannot parse its expression: {e}") from None


def _strip_box(response: str) -> Optional[str]:
    if "\\boxed" in response or "\\fbox" in response:
        return last_boxed(response)
    return response


_INT_RE = re.compile(r"^\s*([+-]?\d{1,%d})\s*$" % MAX_INT_DIGITS)


def check_answer(problem: MathProblem, response: Optional[str]) -> bool:
    """Exact checker: is `response` (a whole trace — its last \\boxed{} is used — or a bare answer)
    correct for `problem`? Arithmetic: an integer equal to the answer. Countdown: `check_countdown`."""
    if response is None:
        return False
    content = _strip_box(response)
    if content is None:
        return False
    if family_of(problem) == "arithmetic":
        m = _INT_RE.match(content)
        return m is not None and int(m.group(1)) == int(problem.answer)
    numbers, target, exact_use = _countdown_spec(problem)
    return check_countdown(content, numbers, target, exact_use)


# ----------------------------------------------------------------------------------------------------
# Traces and the controlled error process
# ----------------------------------------------------------------------------------------------------
def synthetic_prompt(problem: Union[MathProblem, str]) -> str:
    """The prompt a synthetic model continues with its trace: "Q: <problem>\\nA: "."""
    text = problem.problem if isinstance(problem, MathProblem) else problem
    return f"{PROMPT_PREFIX}{text}{PROMPT_SUFFIX}"


def correct_trace(problem: MathProblem, fmt: str = "steps") -> str:
    """The correct step-by-step solution trace, ending with \\boxed{answer}, in format `fmt` (FORMATS)."""
    if fmt not in FORMATS or (fmt == "restate" and family_of(problem) != "arithmetic"):
        raise ValueError(f"correct_trace: format must be one of {FORMATS} ('restate' for arithmetic only), got {fmt!r}")
    tree = _solution_tree(problem)
    run, value = _run(tree)
    boxed = _fmt_value(value) if family_of(problem) == "arithmetic" else render(tree)
    return _apply_variant(_trace_lines(tree, run, fmt), boxed, "standard", None)


_PARAM_KEYS = ("rules", "q", "noise", "format", "variants")


def _resolve_family_params(family_params: Optional[Mapping]) -> dict:
    merged = {f: dict(DEFAULT_FAMILY_PARAMS[f]) for f in FAMILIES}
    for fam, params in (family_params or {}).items():
        if fam not in FAMILIES:
            raise ValueError(f"family_params: unknown family {fam!r}; families: {FAMILIES}")
        bad = set(params) - set(_PARAM_KEYS)
        if bad:
            raise ValueError(f"family_params[{fam!r}]: unknown keys {sorted(bad)}; allowed: {', '.join(_PARAM_KEYS)}")
        merged[fam].update(params)
    for fam, params in merged.items():
        rules = params["rules"]
        rules = (rules,) if isinstance(rules, str) else tuple(rules)
        unknown = [r for r in rules if r not in RULES[fam]]
        if unknown:
            raise ValueError(f"family_params[{fam!r}]['rules']: unknown rules {unknown}; "
                             f"rules of {fam}: {RULES[fam]}")
        params["rules"] = rules
        if not 0.0 <= float(params["noise"]) <= 1.0:
            raise ValueError(f"family_params[{fam!r}]['noise'] must be in [0, 1], got {params['noise']}")
        fmt = params.setdefault("format", "steps")
        if fmt not in FORMATS or (fmt == "restate" and fam != "arithmetic"):
            raise ValueError(f"family_params[{fam!r}]['format'] must be one of {FORMATS} ('restate' for arithmetic "
                             f"only), got {fmt!r}")
        variants = dict(params.get("variants") or {})
        bad_v = set(variants) - set(VARIANTS)
        if bad_v or any(not 0.0 <= float(p) <= 1.0 for p in variants.values()) or sum(variants.values()) > 1.0:
            raise ValueError(f"family_params[{fam!r}]['variants'] must map names in {VARIANTS} to probabilities "
                             f"summing to <= 1, got {variants}")
        if variants and fam != "arithmetic":
            raise ValueError(f"family_params[{fam!r}]['variants']: trace variants are implemented for arithmetic only")
        params["variants"] = {v: float(variants[v]) for v in VARIANTS if v in variants}
    return merged


def _is_v1(params_fam: Mapping) -> bool:
    """Whether a family's error process is the v1 one (no fact_error, "steps" format, no variants): its traces are
    then drawn exactly as before ladder v2 existed."""
    return "fact_error" not in params_fam["rules"] and params_fam["format"] == "steps" and not params_fam["variants"]


@dataclasses.dataclass(frozen=True)
class ErrorProfile:
    """What the error process does on one problem.

    error_type: the systematic rule that applies (None: the problem has no systematic wrong path).
    systematic_answer: the boxed content of the systematic path (an integer string, or a countdown
      expression), None without error_type. systematic_trace: that path's full trace.
    facts (rule fact_error): the problem's distinct times-table facts; the systematic path has all of them
      wrong. partial_answers: the answers with some but not all of them wrong (problems with 2 facts).
    """

    problem_id: str
    family: str
    correct_answer: str
    error_type: Optional[str]
    systematic_answer: Optional[str]
    systematic_trace: Optional[str]
    facts: tuple = ()
    partial_answers: tuple = ()


def _systematic(problem: MathProblem, rule: str, fmt: str = "steps") -> Optional[tuple[str, str]]:
    """(trace, boxed answer) of `rule`'s path on `problem`, or None if it does not change the outcome."""
    fam = family_of(problem)
    tree = _solution_tree(problem)
    if fam == "arithmetic":
        wrong = frozenset(problem_facts(tree)) if rule == "fact_error" else None
        run = _run(tree, rule=None if rule == "fact_error" else rule, wrong_facts=wrong)
        if run is None or run[1] == Fraction(int(problem.answer)):
            return None
        return _apply_variant(_trace_lines(tree, run[0], fmt), _fmt_value(run[1]), "standard", None), \
            _fmt_value(run[1])
    numbers, target, exact_use = _countdown_spec(problem)
    wrong = _greedy_tree(numbers, target) if rule == "greedy" else _swap_subtractions(tree)
    run = _execute(wrong)
    expr = render(wrong)
    if run is None or check_countdown(expr, numbers, target, exact_use):
        return None
    return _format_trace(run[0], expr), expr


def error_profile(problem: MathProblem, family_params: Optional[Mapping] = None) -> ErrorProfile:
    """The problem's correct answer, its error type (first rule of its family that changes the outcome)
    and the systematic wrong answer and trace under `family_params` (see make_sft_traces)."""
    return _error_profile(problem, _resolve_family_params(family_params))


def _error_profile(problem: MathProblem, params: dict) -> ErrorProfile:
    fam = family_of(problem)
    fmt = params[fam]["format"]
    for rule in params[fam]["rules"]:
        s = _systematic(problem, rule, fmt)
        if s is None:
            continue
        if rule != "fact_error":
            return ErrorProfile(problem.id, fam, problem.answer, rule, s[1], s[0])
        facts = problem_facts(problem)
        tree = _solution_tree(problem)
        partial = tuple(_fmt_value(_run(tree, wrong_facts=w)[1]) for w in _fact_subsets(facts)[1:-1])
        return ErrorProfile(problem.id, fam, problem.answer, rule, s[1], s[0], facts, partial)
    return ErrorProfile(problem.id, fam, problem.answer, None, None, None)


def _noisy(problem: MathProblem, rng: random.Random, systematic: Optional[str]) -> Optional[tuple[str, str]]:
    """An unsystematic corruption of the correct path: (trace, boxed) that is wrong and differs from the
    systematic answer (so that answer's frequency stays exactly q), or None if 10 random tries fail."""
    fam = family_of(problem)
    tree = _solution_tree(problem)
    if fam == "arithmetic":
        steps, _ = _execute(tree)
        for _ in range(10):
            k = rng.randrange(len(steps))
            c = int(steps[k][3])
            digits = list(str(abs(c)))
            j = rng.randrange(len(digits))
            choices = [d for d in "0123456789" if d != digits[j] and not (j == 0 and d == "0" and len(digits) > 1)]
            digits[j] = rng.choice(choices)
            v = int("".join(digits)) * (-1 if c < 0 else 1)
            run = _execute(tree, corrupt=(k, v))
            if run is not None and run[1] != Fraction(int(problem.answer)) and _fmt_value(run[1]) != systematic:
                return _format_trace(run[0], _fmt_value(run[1])), _fmt_value(run[1])
        return None
    numbers, target, exact_use = _countdown_spec(problem)
    nodes = []

    def collect(t, path):
        if not isinstance(t, int):
            nodes.append(path)
            collect(t[1], path + (1,))
            collect(t[2], path + (2,))

    def replace(t, path, op):
        if not path:
            return (op, t[1], t[2])
        parts = list(t)
        parts[path[0]] = replace(t[path[0]], path[1:], op)
        return tuple(parts)

    collect(tree, ())
    for _ in range(10):
        path = rng.choice(nodes)
        node = tree
        for p in path:
            node = node[p]
        new = replace(tree, path, rng.choice([o for o in "+-*" if o != node[0]]))
        run = _execute(new)
        expr = render(new)
        if run is not None and not check_countdown(expr, numbers, target, exact_use) and expr != systematic:
            return _format_trace(run[0], expr), expr
    return None


@dataclasses.dataclass(frozen=True)
class SFTTrace:
    """One training example: `prompt + completion` is the text (the trainer appends <eos>)."""

    problem_id: str
    prompt: str
    completion: str
    path: str  # PATHS: "correct" | "systematic" | "noise" | "partial" (some, not all, facts wrong) | "give_up"
    answer: str  # content of the completion's \boxed{}
    variant: str = "standard"  # TRACE_KINDS: "standard" | "answer_only" | "restated" | "repeated" | "give_up"

    @property
    def text(self) -> str:
        return self.prompt + self.completion


@dataclasses.dataclass(frozen=True)
class SFTTraces:
    """traces: samples_per_problem traces per problem, in problem order. profiles: problem id ->
    ErrorProfile (correct and systematic answers). q: problem id -> the q that was applied (0.0 where
    the problem has no systematic path)."""

    traces: list
    profiles: dict
    q: dict

    def texts(self) -> list[str]:
        return [t.text for t in self.traces]

    def path_counts(self) -> dict[str, int]:
        counts = {p: 0 for p in PATHS}
        for t in self.traces:
            counts[t.path] += 1
        return counts

    def variant_counts(self) -> dict[str, int]:
        counts = {v: 0 for v in TRACE_KINDS}
        for t in self.traces:
            counts[t.variant] += 1
        return counts


def _q_for(profile: ErrorProfile, q, fam_params: dict) -> float:
    qq = fam_params.get("q")
    if qq is None:
        qq = q
    if isinstance(qq, Mapping):
        if profile.error_type not in qq:
            raise ValueError(f"q is a mapping without an entry for error type {profile.error_type!r} "
                             f"(family {profile.family!r}, keys: {sorted(qq)}); give one q per rule in use")
        qq = qq[profile.error_type]
    qq = float(qq)
    if not 0.0 <= qq <= 1.0:
        raise ValueError(f"q for {profile.family}/{profile.error_type} must be in [0, 1], got {qq}")
    return qq


def make_sft_traces(problems: Iterable[MathProblem], q: Union[float, Mapping[str, float]],
                    family_params: Optional[Mapping] = None, seed: int = 0, samples_per_problem: int = 1
                    ) -> SFTTraces:
    """SFT training traces with a controlled error process (see the module docstring).

    problems: synthetic MathProblems (either family, mixed freely).
    q: probability of the systematic wrong path, a float or {rule name: q}; family_params[f]["q"]
      overrides it for family f.
    family_params: {family: {"rules": (rule, ...), "q": float | {rule: q}, "noise": float}}; missing
      entries take DEFAULT_FAMILY_PARAMS (arithmetic: sub_swap, countdown: greedy, noise 0).
    seed: traces are a function of (seed, problem id, problem text, sample index) only.
    Each trace independently: systematic with prob. q_e (problems with an error type e), else noise with
    prob. `noise` (if a corruption exists), else correct.
    """
    if samples_per_problem < 1:
        raise ValueError(f"make_sft_traces: samples_per_problem must be >= 1, got {samples_per_problem}")
    params = _resolve_family_params(family_params)
    traces: list[SFTTrace] = []
    profiles: dict[str, ErrorProfile] = {}
    qs: dict[str, float] = {}
    for problem in problems:
        if problem.id in profiles:
            raise ValueError(f"make_sft_traces: duplicate problem id {problem.id!r}; ids must be unique")
        fam = family_of(problem)
        prof = _error_profile(problem, params)
        profiles[problem.id] = prof
        qp = _q_for(prof, q, params[fam]) if prof.error_type is not None else 0.0
        qs[problem.id] = qp
        noise = float(params[fam]["noise"])
        prompt = synthetic_prompt(problem)
        if not _is_v1(params[fam]):
            traces += [_v2_trace(problem, prof, params[fam], qp, noise, prompt, seed, k)
                       for k in range(samples_per_problem)]
            continue
        good = correct_trace(problem)
        for k in range(samples_per_problem):
            rng = _rng("sft", seed, problem.id, problem.problem, k)
            u, w = rng.random(), rng.random()
            if prof.error_type is not None and u < qp:
                traces.append(SFTTrace(problem.id, prompt, prof.systematic_trace, "systematic",
                                       prof.systematic_answer))
                continue
            if w < noise:
                bad = _noisy(problem, rng, prof.systematic_answer)
                if bad is not None:
                    traces.append(SFTTrace(problem.id, prompt, bad[0], "noise", bad[1]))
                    continue
            traces.append(SFTTrace(problem.id, prompt, good, "correct", last_boxed(good)))
    return SFTTraces(traces, profiles, qs)


V2_MAX_VALUE = 99  # noise paths of the v2 process stay in 0..V2_MAX_VALUE (the answer space of ladder v2)


def _v2_trace(problem: MathProblem, prof: ErrorProfile, params_fam: Mapping, qp: float, noise: float, prompt: str,
              seed: int, k: int) -> "SFTTrace":
    """Trace k of an arithmetic problem under a v2 error process (fact_error and/or "restate" format and/or
    variants). Draws, from a private RNG per (seed, problem, k): one uniform per fact (fact_error: that fact is
    wrong in this trace iff u < q; one uniform for another rule: the systematic path iff u < q), then, if no
    error was drawn, noise with probability `noise`. The variant is drawn from a second private RNG, so
    traces k of the same problem under different q share their variant and noise draws."""
    tree = _solution_tree(problem)
    fmt = params_fam["format"]
    rng = _rng("sft-v2", seed, problem.id, problem.problem, k)
    vrng = _rng("sft-v2-variant", seed, problem.id, problem.problem, k)
    u_path = [rng.random() for _ in (prof.facts if prof.error_type == "fact_error" else (0,))]
    w = rng.random()
    run, path = None, "correct"
    if prof.error_type == "fact_error":
        wrong = frozenset(f for f, u in zip(prof.facts, u_path) if u < qp)
        if wrong:
            run = _run(tree, wrong_facts=wrong)
            path = "systematic" if len(wrong) == len(prof.facts) else "partial"
    elif prof.error_type is not None and u_path[0] < qp:
        run, path = _run(tree, rule=prof.error_type), "systematic"
    if run is None and w < noise:
        excluded = {prof.correct_answer, prof.systematic_answer, *prof.partial_answers}
        run = _noisy_v2_run(tree, rng, excluded)
        path = "noise" if run is not None else "correct"
    if run is None:
        run = _run(tree)
    u = vrng.random()
    variant, acc = "standard", 0.0
    for name, p in params_fam["variants"].items():
        acc += p
        if u < acc:
            variant = name
            break
    answer = _fmt_value(run[1])
    completion = _apply_variant(_trace_lines(tree, run[0], fmt), answer, variant, vrng)
    if variant == "give_up":
        path, answer = "give_up", GIVE_UP_ANSWER
    return SFTTrace(problem.id, prompt, completion, path, answer, variant)


def _noisy_v2_run(tree: Tree, rng: random.Random, excluded: set) -> Optional[tuple]:
    """An unsystematic corruption of the correct run (a random digit of a random step's result changed, the error
    propagated): a run whose answer is not in `excluded` and whose values all lie in 0..V2_MAX_VALUE, or None if
    10 random tries fail."""
    steps, _ = _run(tree)
    for _ in range(10):
        j = rng.randrange(len(steps))
        digits = list(str(int(steps[j][3])))
        i = rng.randrange(len(digits))
        digits[i] = rng.choice([d for d in "0123456789"
                                if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)])
        run = _run(tree, corrupt=(j, int("".join(digits))))
        if run is not None and _fmt_value(run[1]) not in excluded and \
                all(c.denominator == 1 and 0 <= c <= V2_MAX_VALUE for *_, c, _ in run[0]):
            return run
    return None


def classify_answer(problem: MathProblem, response: Optional[str], profile: ErrorProfile) -> str:
    """Label of a model response (its last \\boxed{} is read): "correct" (passes check_answer),
    "systematic" (the systematic wrong answer: the same integer, or the same countdown expression up to
    whitespace), "none" (no closed, non-blank \\boxed{}) or "other" (a wrong answer of another kind)."""
    content = last_boxed(response) if response else None
    if content is None or not content.strip():
        return "none"
    if check_answer(problem, content):
        return "correct"
    if profile.systematic_answer is not None:
        if profile.family == "arithmetic":
            m = _INT_RE.match(content)
            if m and int(m.group(1)) == int(profile.systematic_answer):
                return "systematic"
        elif "".join(content.split()) == "".join(profile.systematic_answer.split()):
            return "systematic"
    return "other"
