"""External rewards: programmatic verifiers (Countdown, exact arithmetic) and self-verification.

Host-side, pure Python, never `eval`. These are the generation-verification-asymmetry rewards of the paper
(§1, §7.5): checking a Countdown expression or an arithmetic result is exact and cheap; self-verification
asks the policy itself to judge (question, solution) and parses its verdict.

Countdown: ``countdown_reward(expr, numbers, target)`` parses `expr` with `ast` and evaluates it with exact
`Fraction` arithmetic, allowing only non-negative integer literals, binary + - * / and parentheses (no unary
minus, no powers, no names, no calls). Every literal must be one of `numbers`, each given number used at
most once (``exact_use=True``: every given number exactly once). 1.0 iff all that holds and the value equals
`target`; 0.0 otherwise (also for division by zero, syntax errors, expressions over MAX_EXPR_CHARS or with
more than MAX_LITERALS literals — so nothing a policy writes can make the check slow or raise).

Self-verification: the trainer samples verdicts for ``build_verification_prompt(question, solution)`` with
the policy, then ``self_verification_rewards(verdict_texts)`` turns them into [P, N] rewards.
"""
from __future__ import annotations

import ast
import re
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

from urlvr_jax.rewards.grading import extract_boxed

MAX_EXPR_CHARS = 512
MAX_LITERALS = 32
MAX_INT_DIGITS = 30

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_LINE_RE = re.compile(r"answer\s*[:：]\s*(.*)", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------
# Countdown
# ----------------------------------------------------------------------------------------------------
def extract_countdown_expression(text: Optional[str]) -> Optional[str]:
    """The expression a response proposes: the last ``\\boxed{...}``, else the last ``<answer>...</answer>``,
    else the rest of the last line containing ``Answer:``; None if none. A trailing "= value" is kept (the
    checker ignores a right-hand side that equals the target)."""
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return tags[-1].strip()
    lines = [m.group(1).strip() for m in _ANSWER_LINE_RE.finditer(text)]
    lines = [line for line in lines if line]
    return lines[-1] if lines else None


_LATEX_OPS = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("·", "*"), ("÷", "/"),
              ("−", "-"), ("–", "-"), ("\\left", ""), ("\\right", ""), ("$", ""), ("\\(", ""), ("\\)", ""))
_TEX_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_TIMES_X_RE = re.compile(r"(?<=[\d)])\s+[xX]\s+(?=[\d(])")  # "3 x 4" (spaces required: "0x10" is not 0*10)
_ALLOWED_CHARS_RE = re.compile(r"^[0-9+\-*/() \t]+$")  # no hex/underscore/exponent literals, no names


def _to_python_syntax(expr: str) -> str:
    for a, b in _LATEX_OPS:
        expr = expr.replace(a, b)
    for _ in range(8):  # \frac{a}{b} -> ((a)/(b)), innermost first, bounded
        new = _TEX_FRAC_RE.sub(r"((\1)/(\2))", expr)
        if new == expr:
            break
        expr = new
    expr = _TIMES_X_RE.sub(" * ", expr)  # "3 x 4" -> "3 * 4"
    expr = expr.replace("{", "(").replace("}", ")").replace("[", "(").replace("]", ")")
    return expr.strip().rstrip(".")


class _Reject(Exception):
    pass


def _eval_exact(node: ast.AST, literals: list[int]) -> Fraction:
    """Exact value of an allowed expression tree; collects the integer literals it uses."""
    if isinstance(node, ast.Expression):
        return _eval_exact(node.body, literals)
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        literals.append(node.value)
        if len(literals) > MAX_LITERALS:
            raise _Reject("too many numbers")
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a = _eval_exact(node.left, literals)
        b = _eval_exact(node.right, literals)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise _Reject("division by zero")
        return a / b
    raise _Reject(f"disallowed syntax: {type(node).__name__}")


def evaluate_countdown_expression(expression: str) -> Optional[tuple[Fraction, list[int]]]:
    """(exact value, literals used) of an allowed arithmetic expression, or None if it is not allowed."""
    if not isinstance(expression, str) or not expression.strip() or len(expression) > MAX_EXPR_CHARS:
        return None
    expr = _to_python_syntax(expression)
    if not expr or len(expr) > MAX_EXPR_CHARS or not _ALLOWED_CHARS_RE.match(expr) \
            or re.search(r"\d{%d,}" % (MAX_INT_DIGITS + 1), expr) or "**" in expr or "//" in expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval")
        literals: list[int] = []
        value = _eval_exact(tree, literals)
    except (_Reject, SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    return value, literals


def countdown_reward(expression: Optional[str], numbers: Sequence[int], target: int,
                     exact_use: bool = False) -> float:
    """1.0 iff `expression` uses the given numbers (each at most once; exactly once if exact_use) with only
    + - * / and parentheses and equals `target` exactly; else 0.0. Never raises on any expression string.

    "expr = target" and "target = expr" are accepted (the plain target number is dropped). `numbers` may repeat
    (a number given twice may be used twice).
    """
    if expression is None:
        return 0.0
    expression = str(expression)
    if expression.count("=") == 1:
        # "expr = target" or "target = expr": the side that is the plain target number is dropped.
        lhs, rhs = expression.split("=")
        if parse_exact_number(rhs) == Fraction(target):
            expression = lhs
        elif parse_exact_number(lhs) == Fraction(target):
            expression = rhs
        else:
            return 0.0
    elif "=" in expression:
        return 0.0
    r = evaluate_countdown_expression(expression)
    if r is None:
        return 0.0
    value, used = r
    avail: dict[int, int] = {}
    for n in numbers:
        avail[int(n)] = avail.get(int(n), 0) + 1
    for u in used:
        if avail.get(u, 0) == 0:
            return 0.0
        avail[u] -= 1
    if exact_use and any(c != 0 for c in avail.values()):
        return 0.0
    return 1.0 if value == Fraction(target) else 0.0


def countdown_response_reward(response: str, numbers: Sequence[int], target: int, exact_use: bool = False) -> float:
    """`countdown_reward` of the expression that `extract_countdown_expression` finds in a response."""
    return countdown_reward(extract_countdown_expression(response), numbers, target, exact_use)


# ----------------------------------------------------------------------------------------------------
# Exact arithmetic checker (synthetic arithmetic tasks)
# ----------------------------------------------------------------------------------------------------
_NUM_RE = re.compile(r"^([+-]?)(\d{1,%d}(?:\.\d{1,%d})?|\.\d{1,%d})$" % (MAX_INT_DIGITS, MAX_INT_DIGITS,
                                                                        MAX_INT_DIGITS))
_FRAC_RE = re.compile(r"^([+-]?)(\d{1,%d})\s*/\s*(\d{1,%d})$" % (MAX_INT_DIGITS, MAX_INT_DIGITS))
_TEXFRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d{1,%d})\}\{([+-]?\d{1,%d})\}$" % (MAX_INT_DIGITS,
                                                                                         MAX_INT_DIGITS))


def parse_exact_number(s: Optional[str]) -> Optional[Fraction]:
    """Exact value of "42", "-3", "+0.25", ".5", "1,234", "7/8", "\\frac{7}{8}" (with optional $...$,
    \\boxed{...}, trailing "."), else None. Scientific notation and expressions are not numbers here."""
    if s is None:
        return None
    s = str(s)
    if len(s) > 4 * MAX_INT_DIGITS + 64:
        return None
    if "\\boxed" in s or "\\fbox" in s:
        s = extract_boxed(s) or ""
    s = s.strip().rstrip(".").strip().strip("$").strip().rstrip(".").replace("\\!", "").replace("\\,", "").strip()
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = _NUM_RE.match(s)
    if m:
        v = Fraction(m.group(2))
        return -v if m.group(1) == "-" else v
    m = _FRAC_RE.match(s) or _TEXFRAC_RE.match(s)
    if m:
        sign, a, b = m.groups()
        if int(b) == 0:
            return None
        v = Fraction(int(a), int(b))
        return -v if sign == "-" else v
    return None


def arithmetic_checker(answer: Optional[str], expected: int | float | str | Fraction) -> float:
    """1.0 iff `answer` parses (see `parse_exact_number`) to exactly `expected`, else 0.0.

    `expected` is an int, a Fraction, or a string in the same formats (a float is converted exactly, so pass
    ints/Fractions for exact tasks). `answer` may be a whole response: its last \\boxed{} is used.
    """
    if isinstance(expected, (int, Fraction)):
        target = Fraction(expected)
    elif isinstance(expected, float):
        target = Fraction(expected)
    else:
        target = parse_exact_number(expected)
        if target is None:
            raise ValueError(f"arithmetic_checker: expected value {expected!r} is not an exact number; pass an "
                             "int, a Fraction or a string like '7/8'")
    v = parse_exact_number(answer)
    return 1.0 if v is not None and v == target else 0.0


# ----------------------------------------------------------------------------------------------------
# Self-verification
# ----------------------------------------------------------------------------------------------------
VERIFICATION_TEMPLATE = (
    "You are given a problem and a proposed solution. Check the solution carefully, step by step: "
    "verify every calculation and whether the final answer satisfies all conditions of the problem.\n\n"
    "Problem:\n{question}\n\n"
    "Proposed solution:\n{solution}\n\n"
    "Is the proposed solution correct? Reason briefly, then give your verdict as \\boxed{{True}} if the "
    "solution and its final answer are correct, or \\boxed{{False}} if they are not."
)

_TRUE = {"true", "correct", "yes", "right", "valid"}
_FALSE = {"false", "incorrect", "no", "wrong", "invalid", "notcorrect"}
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def build_verification_prompt(question: str, solution: str, template: str = VERIFICATION_TEMPLATE) -> str:
    """The prompt that asks the policy to judge `solution` to `question` with \\boxed{True}/\\boxed{False}.

    `template` must contain {question} and {solution} (and double any other literal braces).
    """
    if "{question}" not in template or "{solution}" not in template:
        raise ValueError("build_verification_prompt: template must contain '{question}' and '{solution}'")
    return template.format(question=question, solution=solution)


def build_verification_prompts(questions: Sequence[str], solutions: Sequence[Sequence[str]],
                               template: str = VERIFICATION_TEMPLATE) -> list[list[str]]:
    """[P] questions and [P][N] solutions -> [P][N] verification prompts (to sample verdicts for)."""
    if len(questions) != len(solutions):
        raise ValueError(f"build_verification_prompts: {len(questions)} questions but {len(solutions)} groups "
                         "of solutions; pass one group of N solutions per question")
    return [[build_verification_prompt(q, s, template) for s in group] for q, group in zip(questions, solutions)]


def parse_verdict(text: Optional[str]) -> Optional[float]:
    """1.0 / 0.0 from the last \\boxed{...} of a verdict ("True"/"False", also "correct"/"incorrect",
    "yes"/"no", with \\text{} or punctuation around, case-insensitive); None if there is no boxed verdict or
    it is something else."""
    if not text:
        return None
    box = extract_boxed(text)
    if box is None:
        return None
    box = _TEXT_RE.sub(r"\1", box)
    word = re.sub(r"[^a-z]", "", box.lower())
    if word in _TRUE:
        return 1.0
    if word in _FALSE:
        return 0.0
    return None


def self_verification_rewards(verdict_texts, unparsed: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rewards from sampled verdicts.

    verdict_texts: [P][N] strings (one verdict per solution) or [P][N][K] (K verdicts per solution).
    Returns (rewards [P, N] float32 = mean over K of the parsed verdicts, an unparsable verdict counting as
    `unparsed`; parsed_fraction [P, N] float32 = share of the K verdicts that parsed).
    """
    groups = list(verdict_texts)
    if not groups:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    n = len(groups[0])
    P = len(groups)
    rewards = np.zeros((P, n), np.float32)
    parsed = np.zeros((P, n), np.float32)
    for p, g in enumerate(groups):
        if len(g) != n:
            raise ValueError(f"self_verification_rewards: group {p} has {len(g)} solutions but group 0 has {n}")
        for i, v in enumerate(g):
            samples = [v] if (v is None or isinstance(v, str)) else list(v)
            if not samples:
                raise ValueError(f"self_verification_rewards: verdict_texts[{p}][{i}] is an empty list")
            vals = [parse_verdict(s) for s in samples]
            ok = [x for x in vals if x is not None]
            rewards[p, i] = (sum(ok) + unparsed * (len(vals) - len(ok))) / len(vals)
            parsed[p, i] = len(ok) / len(vals)
    return rewards, parsed
