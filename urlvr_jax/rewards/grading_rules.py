"""Answer equivalence rules of the grader: pure, linear-time functions on strings (no processes, no sympy).

`urlvr_jax.rewards.grading` runs these in the parent before anything reaches a math-verify worker, and
re-exports every public name here. What they decide:

* which part of a response is the answer (`extract_answer`), in math-verify's order: a signed-off "final
  answer is $…$. I hope", the last group of ``\\boxed{}`` (neighbouring boxes joined into one answer), what
  follows the last "final answer … is", the last math expression (``$…$``, ``$$…$$``, ``\\(…\\)``,
  ``\\[…\\]``, neighbours joined by and/or/comma), else the text itself;
* MATH-style normal forms (`normalize_answer`), one spelling for relations (``!=``, ``\\ne``, ``≠`` ->
  ``\\neq``; ``>=`` -> ``\\geq``);
* exact verdicts where math-verify is wrong or too coarse (`decisive`): exact rationals, numbers in a base,
  unit powers, ``\\neq`` with its sides swapped, and intervals / tuples / matrices whose entries are plain
  numbers — a prediction written with k >= 2 decimals matches a gold value it correctly rounds or truncates
  to k decimals (math-verify's rounded comparison at the precision the prediction states);
* a decimal comma in a plain-text prediction (`read_decimal_comma`), only where it cannot be a thousands
  separator or a list separator;
* inputs too costly for sympy (`too_costly`): deep nesting, power towers, huge factorials / binomials /
  sums / products, long operator chains, big symbolic matrices. They never reach a worker.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Optional, Sequence

BOX_MARKERS = ("\\boxed{", "\\fbox{")

# ----------------------------------------------------------------------------------------------------
# Host-side answer extraction (the reference that the on-device extractor in answers.py must match).
# ----------------------------------------------------------------------------------------------------
def extract_after_marker(text: str, markers: Sequence[str] = BOX_MARKERS, mode: str = "braces") -> Optional[str]:
    """Content after the LAST occurrence of any marker (last = largest end position), or None.

    mode "braces": the marker must end with "{"; the content runs to the matching "}" (raw brace counting:
        "\\{" counts as a brace too, as in MATH's ``last_boxed_only_string``); an unclosed group -> None.
    mode "line":   the content runs to the first "\\n" after the marker, or to the end of the text.
    Returns None as well when the content is empty after removing whitespace. Linear time, no recursion.
    """
    if mode not in ("braces", "line"):
        raise ValueError(f"extract_after_marker: mode must be 'braces' or 'line', got {mode!r}")
    best = -1
    for m in markers:
        i = text.rfind(m)
        if i >= 0:
            best = max(best, i + len(m))
    if best < 0:
        return None
    if mode == "line":
        j = text.find("\n", best)
        content = text[best:] if j < 0 else text[best:j]
    else:
        depth = 1
        content = None
        # Scan only brace characters: linear and fast even for 100k-character inputs.
        for mt in _BRACE_RE.finditer(text, best):
            depth += 1 if mt.group() == "{" else -1
            if depth == 0:
                content = text[best:mt.start()]
                break
        if content is None:
            return None
    if not content.strip():
        return None
    return content


_BRACE_RE = re.compile(r"[{}]")


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (brace-matched), or None.

    None when there is no marker, the last one is not closed, or its content is blank. ``\\boxed 5``
    (no braces) is not recognised, matching the on-device extractor.
    """
    return extract_after_marker(text, BOX_MARKERS, "braces")


# ----------------------------------------------------------------------------------------------------
# Fast path: MATH-style string normalisation.
# ----------------------------------------------------------------------------------------------------
_UNITS = (
    "dollars dollar cents cent percent degrees degree units unit cm mm km m meters meter metres metre "
    "inches inch in feet foot ft yards yard yd miles mile mi mph kph hours hour hrs hr minutes minute min "
    "seconds second sec s days day weeks week years year months month grams gram g kg kilograms pounds "
    "pound lbs lb ounces ounce oz liters liter litres l ml gallons gallon sq square cubic points point "
    "students people times ways"
).split()
_UNIT_WORDS = "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True))
# number followed by unit words only, e.g. "18 dollars", "5 cm", "5 sq units"
_TRAILING_UNITS_RE = re.compile(r"^(.*?\d)\s*(?:(?:" + _UNIT_WORDS + r")\b\s*(?:\^\{?[23]\}?)?\s*)+\.?$")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACES_RE = re.compile(r"(?<!\\)\\[,;:! ]|\\quad|\\qquad|~|\s+")  # a backslash after a backslash is a row break
_FRAC_SHORT_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac\{([^{}]*)\}(\d)|\\frac(\d)\{([^{}]*)\}")
_SQRT_SHORT_RE = re.compile(r"\\sqrt(\w)")
_INT_RE = re.compile(r"^-?\d{1,40}$")
_DEC_RE = re.compile(r"^-?\d{0,40}\.\d{1,40}$")
_LATEX_THOUSANDS_RE = re.compile(r"(?:,|\{,\})\s*\\!\s*")
_SPACED_COMMA_RE = re.compile(r",\s")
_THOUSANDS_RE = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")  # "0,111" is a decimal comma
# one spelling per relation: != \ne ≠ -> \neq, >= \ge ≥ -> \geq, <= \le ≤ -> \leq
_RELATION_RE = re.compile(r"!=|≠|>=|≥|<=|≤|\\neq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\leq?(?![a-zA-Z])")
_RELATION = {"!=": "\\neq", "≠": "\\neq", "\\ne": "\\neq", ">=": "\\geq", "≥": "\\geq", "\\ge": "\\geq",
             "<=": "\\leq", "≤": "\\leq", "\\le": "\\leq"}
_SLASH_FRAC_RE = re.compile(r"^(-?)(\d{1,40})/(\d{1,40})$")
_TEX_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d{1,40})\}\{(-?\d{1,40})\}$")
_CHOICE_RE = re.compile(r"^\(?([A-E])\)?$")
_ASSIGN_RE = re.compile(r"^[a-zA-Z](?:_\{?\w\}?)?=(?!=)")


def _exact_number(s: str) -> Optional[Fraction]:
    """Exact rational value of a plain number string ("12", "-0.5", "3/4", "\\frac{3}{4}"), else None."""
    try:
        if _INT_RE.match(s) or _DEC_RE.match(s):
            return Fraction(s)
        m = _SLASH_FRAC_RE.match(s)
        if m:
            sign, a, b = m.groups()
            return None if int(b) == 0 else Fraction(int(a), int(b)) * (-1 if sign else 1)
        m = _TEX_FRAC_RE.match(s)
        if m:
            sign, a, b = m.groups()
            return None if int(b) == 0 else Fraction(int(a), int(b)) * (-1 if sign else 1)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize_answer(s: Optional[str]) -> str:
    """MATH-style normal form of an answer string ("" for None/blank). Linear time in len(s).

    Two answers with equal non-empty normal forms are the same answer. The converse does not hold
    (that is what math-verify is for). Plain numbers get an exact canonical form ("0.5", "\\frac12",
    "1/2" -> "1/2"; "27.0" -> "27"), choice letters "(A)" / "\\text{(A)}" -> "A".
    """
    s = _normalize_text(s)
    m = _CHOICE_RE.match(s)
    if m:
        return m.group(1).upper()
    v = _exact_number(s)
    if v is not None:
        return f"{v.numerator}/{v.denominator}" if v.denominator != 1 else str(v.numerator)
    return s


def _normalize_text(s: Optional[str]) -> str:
    """The string part of `normalize_answer` (before choice letters and exact numbers)."""
    if s is None:
        return ""
    s = str(s).strip()
    if "\\boxed" in s or "\\fbox" in s:
        inner = extract_boxed(s)
        if inner is not None:
            s = inner
    s = _LATEX_THOUSANDS_RE.sub(",", s)  # "12,\\! 000": a LaTeX thousands separator, whatever the spaces
    spaced_comma = _SPACED_COMMA_RE.search(s) is not None  # "32, 349" is a list (math-verify), not 32349
    s = s.replace("\n", " ").replace("\\!", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\bigl", "").replace("\\bigr", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    # unwrap \text{...} & co. (innermost first; bounded because each round removes one wrapper)
    for _ in range(16):
        s2 = _TEXT_WRAP_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.strip()
    m = _TRAILING_UNITS_RE.match(s) if len(s) <= 200 else None  # bounded: the regex backtracks O(n^2)
    if m:
        s = m.group(1)
    s = _SPACES_RE.sub("", s)
    s = _RELATION_RE.sub(lambda mm: _RELATION[mm.group()[:3] if mm.group()[0] == "\\" else mm.group()], s)
    s = s.rstrip(".")
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    # "x=3" -> "3" (a single variable on the left), as MATH's strip_string does
    m = _ASSIGN_RE.match(s)
    if m and "=" not in s[m.end():]:
        s = s[m.end():]
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_RE.sub(lambda mm: (f"\\frac{{{mm.group(1)}}}{{{mm.group(2)}}}" if mm.group(2) is not None
                                      else f"\\frac{{{mm.group(3)}}}{{{mm.group(4)}}}"), s)
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS_RE.match(s) and not spaced_comma:
        s = s.replace(",", "")
    return s


_BASE_RE = re.compile(r"^([0-9A-Za-z]+)_\{?(\d{1,2})\}?$")
_UNIT_POW_RE = re.compile(
    r"(?:\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z ]+\}|\b(?:" + _UNIT_WORDS + r"))\s*\^\s*\{?(\d)\}?")
_DECIMALS_RE = re.compile(r"^-?\d*\.(\d+)$")


def decisive(pred: Optional[str], gold: Optional[str]) -> Optional[bool]:
    """Exact verdicts for answer kinds where math-verify is known to be wrong or too coarse; None = no verdict.

    * numbers in base b ("52_8", "4210_{5}"): same digits, and the same base if the prediction states one
      (math-verify drops subscripts: it says 52_9 == 52_8);
    * units with different powers ("864 \\mbox{ inches}^3" vs "^2") -> False;
    * two plain numbers (int, decimal, a/b, \\frac{a}{b}): exact rational equality (math-verify rounds to 6
      decimals: it says .0000673 == .0000672), except that a decimal prediction with k >= 2 decimals is
      accepted for a gold that has no exact k-decimal form if it is that gold rounded or truncated to k
      decimals (1/3 ~ 0.33, 0.3333; 2/3 ~ 0.67, 0.66; not 0.34);
    * "a \\neq b" against "b \\neq a" -> True (math-verify flips <, <=, not \\neq);
    * intervals, tuples and matrices of plain numbers (and sqrt / infinity entries in the gold): True when
      the brackets and shape agree and every entry matches under the number rule above (None otherwise:
      math-verify decides).
    """
    if pred is None or gold is None:
        return None
    up, ug = _UNIT_POW_RE.search(pred), _UNIT_POW_RE.search(gold)
    if up and ug and up.group(1) != ug.group(1):
        return False
    p, g = _normalize_text(pred), _normalize_text(gold)
    if not p or not g:
        return None
    mg = _BASE_RE.match(g)
    if mg and not _exact_number(g):
        mp = _BASE_RE.match(p)
        if mp:
            return mp.group(1) == mg.group(1) and int(mp.group(2)) == int(mg.group(2))
        return p == mg.group(1)
    vp, vg = _exact_number(p), _exact_number(g)
    if vp is not None and vg is not None:
        return _entry_matches(p, vp, vg)
    if "\\neq" in p and "\\neq" in g:
        return _neq_swapped(p, g)
    return _structure_matches(p, g)


def _is_rounding(pred: str, value: Fraction | Decimal) -> bool:
    """pred (a decimal string with k >= 2 decimals) is `value` rounded (either way at a tie) or truncated to
    k decimals, and `value` has no exact k-decimal form."""
    md = _DECIMALS_RE.match(pred)
    if not md or len(md.group(1)) < 2:
        return False
    k = len(md.group(1))
    scale = 10 ** k
    v = Fraction(value) if isinstance(value, Decimal) else value
    if (v * scale).denominator == 1 and not isinstance(value, Decimal):
        return False  # the gold has an exact k-decimal form: only that form is right
    vp = Fraction(pred)
    scaled = v * scale
    truncated = Fraction(math.trunc(scaled), scale)
    return vp == truncated or abs(vp - v) <= Fraction(1, 2 * scale)


def _entry_matches(p: str, vp: Fraction, vg: Fraction | Decimal) -> bool:
    if isinstance(vg, Fraction) and vp == vg:
        return True
    return _is_rounding(p, vg)


_NEQ_SPLIT_RE = re.compile(r"\\neq")
_OTHER_REL_RE = re.compile(r"=|<|>|\\[lg]eq?(?![a-zA-Z])|\\in(?![a-zA-Z])")


def _neq_swapped(p: str, g: str) -> Optional[bool]:
    """"a\\neqb" vs "b\\neqa" (normal forms, one \\neq each, no other relation): True; else no verdict."""
    ps, gs = _NEQ_SPLIT_RE.split(p), _NEQ_SPLIT_RE.split(g)
    if len(ps) != 2 or len(gs) != 2 or any(_OTHER_REL_RE.search(x) for x in ps + gs):
        return None
    if ps == gs or ps == gs[::-1]:
        return True
    return None


# ------------------------------------------------------------------- intervals, tuples, matrices of numbers
_MATRIX_RE = re.compile(r"^\\begin\{([pbB]?matrix|array)\}(?:\{[clr|]*\})?(.*)\\end\{\1\}$")
_SEQ_RE = re.compile(r"^([\[(])([^()\[\]]*)([\])])$")
_MEMBER_RE = re.compile(r"^[a-zA-Z](?:_\{?\w\}?)?\\in")
_INF_RE = re.compile(r"^([+-]?)\\infty$")
_SQRT_RE = re.compile(r"^(-?)(\d{0,6})\\sqrt\{(\d{1,6})\}$")
_SQRT_FRAC_RE = re.compile(r"^(-?)\\frac\{(\d{0,6})\\sqrt\{(\d{1,6})\}\}\{(\d{1,6})\}$")


def _split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` characters outside braces."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(s[start:i])
            start = i + 1
    out.append(s[start:])
    return out


def _structure(s: str):
    """(kind, brackets, rows of entry strings) of a normal-form interval / tuple / matrix, or None."""
    s = _MEMBER_RE.sub("", s, count=1)
    m = _MATRIX_RE.match(s)
    if m:  # pmatrix, bmatrix, matrix and array are the same matrix (vmatrix, a determinant, is not)
        rows = s[m.start(2):m.end(2)].split("\\\\")
        while rows and not rows[-1]:
            rows.pop()
        cells = [r.split("&") for r in rows]
        if not cells or len({len(r) for r in cells}) != 1:
            return None
        return "matrix", "", cells
    if s.startswith("[\\begin{array}") and s.endswith("]"):  # \left[ \begin{array}…\end{array} \right]
        return _structure(s[1:-1])
    m = _SEQ_RE.match(s)
    if m:
        items = _split_top(m.group(2), ",")
        if len(items) < 2:
            return None
        return "seq", m.group(1) + m.group(3), [items]
    return None


def _entry_value(s: str):
    """Value of an entry: Fraction (exact), Decimal (a square root), ('inf', sign), or None."""
    v = _exact_number(s)
    if v is not None:
        return v
    m = _INF_RE.match(s)
    if m:
        return ("inf", m.group(1) == "-")
    m = _SQRT_RE.match(s) or _SQRT_FRAC_RE.match(s)
    if m:
        sign, coef, radicand = m.group(1), m.group(2), m.group(3)
        den = int(m.group(4)) if m.re is _SQRT_FRAC_RE else 1
        if den == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 40
            root = Decimal(int(radicand)).sqrt()
            if root == root.to_integral_value():
                return Fraction(int(root) * int(coef or 1), den) * (-1 if sign else 1)
            return root * int(coef or 1) / den * (-1 if sign else 1)
    return None


def _structure_matches(p: str, g: str) -> Optional[bool]:
    """True when p and g are the same interval / tuple / matrix under the number rule; None otherwise."""
    if len(p) > 4000 or len(g) > 4000:
        return None
    sp, sg = _structure(p), _structure(g)
    if sp is None or sg is None or sp[0] != sg[0] or sp[1] != sg[1]:
        return None
    rows_p, rows_g = sp[2], sg[2]
    if len(rows_p) != len(rows_g) or any(len(a) != len(b) for a, b in zip(rows_p, rows_g)):
        return None
    for row_p, row_g in zip(rows_p, rows_g):
        for ep, eg in zip(row_p, row_g):
            vp, vg = _exact_number(ep), _entry_value(eg)
            if vg is None:
                return None
            if isinstance(vg, tuple):
                if _entry_value(ep) != vg:
                    return None
                continue
            if vp is None or not _entry_matches(ep, vp, vg):
                return None
    return True


def fast_equal(pred: Optional[str], gold: Optional[str]) -> bool:
    """True iff both normal forms are non-empty and equal (a sufficient condition for equivalence)."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    return bool(a) and a == b
# ----------------------------------------------------------------------------------------------------
# Which part of a response is the answer.
# ----------------------------------------------------------------------------------------------------
MAX_BOXES = 32  # boxes examined from the right (math-verify joins at most 6)
_SEPARATOR_RE = re.compile(r"\b(?:and|or)\b|,|;")


def _boxes_from_right(text: str):
    """(marker start, content) of each brace-matched \\boxed{} / \\fbox{}, right to left, at most MAX_BOXES.

    A box's closing brace is searched only up to the start of the box after it, so the scan is linear;
    an unclosed box ends the walk (an unclosed last box yields nothing).
    """
    limit = len(text)
    for _ in range(MAX_BOXES):
        start, marker = -1, ""
        for m in BOX_MARKERS:
            i = text.rfind(m, 0, limit)
            if i > start:
                start, marker = i, m
        if start < 0:
            return
        depth, content = 1, None
        for mt in _BRACE_RE.finditer(text, start + len(marker), limit):
            depth += 1 if mt.group() == "{" else -1
            if depth == 0:
                content = (text[start + len(marker):mt.start()], mt.start())
                break
        if content is None:
            return
        yield start, content[0].strip(), content[1]
        limit = start


def extract_boxed_group(text: str) -> Optional[str]:
    """The last \\boxed{} together with the boxes right before it that belong to the same answer, joined by ",".

    math-verify's rule (latex2sympy2_extended ``extract_boxed_content``): walking left from the last box, an
    earlier box joins when fewer than 10 characters separate it from the next one, or fewer than 70 with
    "and", "or", "," or ";" among them and a different content; repeated neighbours count once. So
    ``\\boxed{1}, \\boxed{2}`` is the answer "1,2", while a box a paragraph earlier is not part of it.
    """
    out: list[str] = []
    next_start = None
    for start, content, close in _boxes_from_right(text):
        if next_start is not None:
            between = text[close + 1:next_start]
            near = len(between) < 10
            separated = len(between) < 70 and content != out[-1] and _SEPARATOR_RE.search(between)
            if not (near or separated):
                break
        if not out or content != out[-1]:
            out.append(content)
        next_start = start
    if not out or not out[0]:
        return None
    return ",".join(reversed(out))


_MATH_DELIM_RE = re.compile(r"\\\$|\$\$|\$|\\\(|\\\)|\\\[|\\\]")
_CLOSER = {"$$": "$$", "$": "$", "\\(": "\\)", "\\[": "\\]"}
_JOIN_RE = re.compile(r"\s*(?:,|,?\s*\band\b|,?\s*\bor\b)\s*")
MAX_JOINED = 6


def extract_last_math(text: str) -> Optional[str]:
    """Content of the last LaTeX math span ($…$, $$…$$, \\(…\\), \\[…\\]), with the spans right before it that
    are joined to it by "and", "or" or a comma (up to MAX_JOINED), joined by ","; None if there is none.

    Inline spans ($…$, \\(…\\)) may not cross a line break, display spans may (math-verify's rule); "\\$" is
    a dollar sign, not a delimiter. Linear time.
    """
    spans: list[tuple[int, int, int, int]] = []  # open start, content start, content end, close end
    opener = None
    for m in _MATH_DELIM_RE.finditer(text):
        tok = m.group()
        if tok == "\\$":
            continue
        if opener is not None and tok == _CLOSER[opener[0]]:
            content = text[opener[2]:m.start()]
            if opener[0] in ("$", "\\(") and "\n" in content:
                opener = (tok, m.start(), m.end()) if tok == "$" else None
                continue
            spans.append((opener[1], opener[2], m.start(), m.end()))
            opener = None
        elif opener is None and tok in _CLOSER:
            opener = (tok, m.start(), m.end())
    spans = [s for s in spans if text[s[1]:s[2]].strip()]
    if not spans:
        return None
    group = [spans[-1]]
    for s in reversed(spans[:-1]):
        if len(group) == MAX_JOINED or not _JOIN_RE.fullmatch(text[s[3]:group[-1][0]]):
            break
        group.append(s)
    return ",".join(text[s[1]:s[2]].strip() for s in reversed(group))


_FINAL_RE = re.compile(r"final answer.{0,100}?\s+is\s*:?\s*", re.IGNORECASE | re.DOTALL)
_SENTENCE_RE = re.compile(r"(.+?)(?:\.\s|\.$|\n|\s+I hope|$)", re.DOTALL)
MAX_ANCHOR_SCAN = 20_000  # characters from the end searched for "final answer … is"


def extract_final_answer(text: str) -> tuple[Optional[str], str]:
    """What follows the last "final answer … is" (math-verify's anchored pattern), or (None, "").

    The answer is the math span(s) right after the anchor when it starts with one ("math"), else the rest of
    that sentence ("plain"): "Final Answer: The volume of $V$ is 120. I hope it is correct." -> ("120", "plain").
    """
    tail_start = max(0, len(text) - MAX_ANCHOR_SCAN)
    if "final answer" not in text[tail_start:].lower():
        return None, ""
    last = None
    for m in _FINAL_RE.finditer(text, tail_start):
        last = m
    if last is None:
        return None, ""
    rest = text[last.end():last.end() + 400]
    if rest.startswith(("$", "\\(", "\\[")):
        span_end = rest.find("\n")
        found = extract_last_math(_first_math_group(rest if span_end < 0 else rest[:span_end]))
        if found is not None:
            return found, "math"
    m = _SENTENCE_RE.match(rest)
    answer = m.group(1).strip() if m else ""
    return (answer, "plain") if answer else (None, "")


_FINAL_SIGNED_RE = re.compile(r"final answer is:?\s*(?=\$|\\\(|\\\[)", re.IGNORECASE)
_SIGNED_TAIL_RE = re.compile(r"\.?\s?I hope")


def _final_answer_signed(text: str) -> Optional[str]:
    """The math after the last "final answer is" when it is followed by "I hope" (math-verify's first-priority
    pattern, the Minerva / MATH few-shot sign-off), else None."""
    tail_start = max(0, len(text) - MAX_ANCHOR_SCAN)
    if "i hope" not in text[tail_start:].lower():
        return None
    last = None
    for m in _FINAL_SIGNED_RE.finditer(text, tail_start):
        last = m
    if last is None:
        return None
    group = _first_math_group(text[last.end():last.end() + 400])
    if not _SIGNED_TAIL_RE.match(text, last.end() + len(group)):
        return None
    return extract_last_math(group)


def _first_math_group(text: str) -> str:
    """text up to the end of its first run of math spans joined by and/or/comma (for extract_last_math)."""
    spans_end, pos = 0, 0
    for m in _MATH_DELIM_RE.finditer(text):
        if m.group() == "\\$":
            continue
        pos += 1
        if pos % 2 == 0:  # a closing delimiter
            spans_end = m.end()
            after = text[spans_end:]
            j = _JOIN_RE.match(after)
            if not j or not after[j.end():].startswith(("$", "\\(", "\\[")):
                break
    return text[:spans_end] if spans_end else text


def extract_answer(text: Optional[str]) -> tuple[Optional[str], str]:
    """(answer, kind): the answer a response gives and where it was found.

    In math-verify's order of priority: "math": the math after the last "final answer is", when it is signed
    off with "I hope" (the MATH few-shot format); "boxed": the last group of \\boxed{} (`extract_boxed_group`);
    "math" / "plain": what follows
    the last "final answer … is" (`extract_final_answer`); else "math": the last math expression
    (`extract_last_math`); else "plain": the stripped text itself (a bare answer). An unclosed or empty last
    box gives (None, "boxed"); \\( or \\[ without a well-formed span gives (None, "math").
    """
    if text is None:
        return None, "plain"
    text = str(text)
    strict = _final_answer_signed(text)  # math-verify ranks "final answer is $…$. I hope" above \\boxed{}
    if strict is not None:
        return strict, "math"
    if "\\boxed" in text or "\\fbox" in text:
        return extract_boxed_group(text), "boxed"
    found, kind = extract_final_answer(text)
    if found is not None:
        return found, kind
    if "$" in text or "\\(" in text or "\\[" in text:
        found = extract_last_math(text)
        if found is not None:
            return found, "math"
        if "\\(" in text or "\\[" in text:  # math delimiters, but no well-formed span: no answer
            return None, "math"
    text = text.strip()
    return (text or None), "plain"


_DECIMAL_COMMA_RE = re.compile(r"^(-?)(\d+),(\d+)$")


def read_decimal_comma(pred: str, gold: str) -> str:
    """pred with its decimal comma read as a point, when that is the only reading that fits: pred is a plain
    "d,d" number (no spaces, one comma) that is not a thousands form (three digits after the comma and a
    non-zero integer part) and the gold is a decimal number with a point. Otherwise pred unchanged.

    "1,22" vs "1.22" -> "1.22"; "0,111" vs "0.111" -> "0.111"; "1,234" (thousands) and "1,2" vs "\\{1,2\\}"
    (a list) stay as they are. Apply it to plain-text predictions only: inside \\boxed{} or $…$ a comma
    separates the elements of a set (math-verify's reading).
    """
    m = _DECIMAL_COMMA_RE.match(pred.strip())
    if not m or not _DEC_RE.match(_normalize_text(gold)):
        return pred
    sign, whole, frac = m.groups()
    if len(frac) == 3 and whole.lstrip("0"):
        return pred
    return f"{sign}{whole}.{frac}"


# ----------------------------------------------------------------------------------------------------
# Inputs too costly for sympy (decided in the parent; measured in benchmarks/grading_agreement.py).
# ----------------------------------------------------------------------------------------------------
MAX_NESTING = 24  # brackets of any kind; real answers nest < 10 deep
MAX_OPERATORS = 200  # + - * / ^ , & ; sympy's simplification is super-linear in the number of terms
MAX_POWER_DIGITS = 10**6  # an integer power with more digits than this is not an answer
MAX_FACTORIAL = 5000
# (?<![\d.]) starts each try at the start of a digit run: linear time on long digit strings
_POW_BASE_EXP_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*\^\s*(?:\{\s*(\d+)\s*\}|(\d+))")
_BIG_INT_RE = re.compile(r"\d{5,}")
_POW_TOWER2_RE = re.compile(r"(?<![\d.])(\d{1,6})\s*\^\s*\{\s*(\d{1,6})\s*\^\s*\{?\s*(\d{1,6})\s*\}?\s*\}")
_FACTORIAL_RE = re.compile(r"((?<!\d)[0-9]+|[)}\]])\s*!")
_OPERATORS_RE = re.compile(r"[-+*/^,&;]|\\cdot|\\times")
_BIG_OPS_RE = re.compile(r"\\(?:sum|prod|binom|dbinom|tbinom|det|int|lim)(?![a-zA-Z])")
_NUMERIC_POWER_RE = re.compile(r"\d\s*\^\s*\{?\s*\d")
MAX_DET_CELLS = 16  # "&" in a determinant's matrix: sympy's symbolic determinant is factorial-ish
_GROUP_POWER_RE = re.compile(r"[)}\]]\s*\^\s*\{?\s*(\d{4,})")


def _nesting_depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in "{[(":
            depth += 1
            best = max(best, depth)
        elif ch in "}])":
            depth -= 1
    return best


def _power_depth(s: str) -> int:
    """Carets nested in exponents: 9^{9^{9^{9}}} -> 3, 9^9^9^9 -> 3 (an unbraced exponent is one character, as
    in LaTeX, so 10^10 is 10^1 0 and x^2y^2z^2 is no chain), 9^{9^{9}} -> 2, x^2 -> 1."""
    best, depth = 0, 0
    stack: list[bool] = []  # for each open brace: did it open an exponent?
    pending = False  # the last character was "^": a brace opening now is an exponent
    chain, since_caret = 0, 2  # unbraced a^b^c: carets one character apart
    for ch in s:
        if ch == "^":
            chain = chain + 1 if since_caret == 1 else 1
            best = max(best, depth + chain)
            pending, since_caret = True, 0
            continue
        since_caret += 1
        if ch == "{":
            stack.append(pending)
            depth += pending
            chain = 0
        elif ch == "}":
            if stack and stack.pop():
                depth -= 1
        pending = False
    return best


def too_costly(s: str) -> Optional[str]:
    """Why sympy / math-verify could spin on `s` (a reason string), or None. Linear time.

    Rejected: nesting deeper than MAX_NESTING; towers of three or more exponents; an integer power of more
    than MAX_POWER_DIGITS digits; a factorial of more than MAX_FACTORIAL or of a group with an exponent or a
    big number in it; sums, products, binomials, integrals, limits or determinants next to a number of five or
    more digits or a numeric power; a determinant of more than MAX_DET_CELLS "&" cells; a group raised to a
    power of four or more digits (polynomial expansion); more than MAX_OPERATORS operators. A real final
    answer is none of these (no gold answer of MATH-500, AIME, AMC or the TTRL sets is).
    """
    if _nesting_depth(s) > MAX_NESTING:
        return "nesting"
    if _power_depth(s) >= 3:
        return "power tower"
    for m in _POW_TOWER2_RE.finditer(s):  # a^{b^c} with integers: b^c digits of a
        a, b, c = (int(x) for x in m.groups())
        if a > 1 and b > 1 and (c * math.log10(b) > 15 or b**c * math.log10(a) > MAX_POWER_DIGITS):
            return "huge power"
    for m in _POW_BASE_EXP_RE.finditer(s):
        base, exp = m.group(1), int(m.group(2) or m.group(3))
        whole = base.split(".")[0].lstrip("0")
        digits = math.log10(float(base)) if len(whole) < 300 else len(whole)  # float(base) overflows past 1e308
        if float(base) > 1 and exp * digits > MAX_POWER_DIGITS:
            return "huge power"
    for m in _FACTORIAL_RE.finditer(s):
        arg = m.group(1)
        if arg.isdigit():
            if int(arg) > MAX_FACTORIAL:
                return "huge factorial"
        else:
            opener = {")": "(", "}": "{", "]": "["}[arg]
            inner = s[max(s.rfind(opener, 0, m.start()), 0):m.start()]
            if "^" in inner or _BIG_INT_RE.search(inner):
                return "huge factorial"
    if _BIG_OPS_RE.search(s) and (_BIG_INT_RE.search(s) or _NUMERIC_POWER_RE.search(s)):
        return "huge sum/product/binomial"
    if "\\det" in s and s.count("&") > MAX_DET_CELLS:
        return "big determinant"
    if _GROUP_POWER_RE.search(s):
        return "huge expansion"
    if len(_OPERATORS_RE.findall(s)) > MAX_OPERATORS:
        return "too many terms"
    return None
