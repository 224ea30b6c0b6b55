"""The synthetic verifiable world: generators, exact checkers, the controlled error process, the tokenizer.

References are independent of the module under test: Python's own `ast` + `eval` on the generated
arithmetic strings (their character set is asserted first), AST rewrites for the systematic rules, a
brute-force "pick two numbers, combine, recurse" Countdown solver, the separately written Countdown
checker of urlvr_jax.rewards.external, `token_bytes` of the on-device answer extractor, and binomial
standard errors for the sampled error rates.
"""
import ast
import collections
import math
import random
import re
from fractions import Fraction

import pytest

from urlvr_jax.data import MathProblem, last_boxed
from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.synthetic_tokenizer import BOXED_TOKEN, VOCAB_SIZE, build_synthetic_tokenizer, unencodable_chars

ARITH_CHARS = re.compile(r"^[0-9+\-*()]+$")
STEP_RE = re.compile(r"^(\(-?\d+\)|\d+)([-+*/])(\(-?\d+\)|\d+)=(-?\d+)$")


@pytest.fixture(scope="module")
def arith():
    return syn.make_arithmetic_dataset(1500, seed=0, steps=(2, 3))


@pytest.fixture(scope="module")
def countdown():
    return syn.make_countdown_dataset(400, seed=0)


def _py_eval(expr: str, transform=None):
    """Reference value of a generated arithmetic string with Python's evaluator (charset checked)."""
    assert ARITH_CHARS.match(expr), expr
    tree = ast.parse(expr, mode="eval")
    if transform is not None:
        tree = ast.fix_missing_locations(transform().visit(tree))
    return eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}})


class _SwapSub(ast.NodeTransformer):
    def visit_BinOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Sub):
            node.left, node.right = node.right, node.left
        return node


class _MulAsAdd(ast.NodeTransformer):
    def visit_BinOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Mult):
            node.op = ast.Add()
        return node


class _FractionLiterals(ast.NodeTransformer):
    def visit_Constant(self, node):
        return ast.Call(ast.Name("Fraction", ast.Load()), [node], [])


def _greedy_value(nums, target):
    """The documented greedy shortcut: largest first, then each next-largest number joined by the op
    (+ - * exact-/ in that order of preference on ties) whose result is closest to the target."""
    nums = sorted(nums, reverse=True)
    cur = nums[0]
    for x in nums[1:]:
        cands = [cur + x, cur - x, cur * x] + ([cur // x] if cur % x == 0 else [])
        cur = min(cands, key=lambda v: abs(v - target))  # min keeps the first of equals
    return cur


def _no_carry(a: int, b: int) -> int:
    sa, sb = str(a)[::-1], str(b)[::-1]
    n = max(len(sa), len(sb))
    sa, sb = sa.ljust(n, "0"), sb.ljust(n, "0")
    return int("".join(str((int(x) + int(y)) % 10) for x, y in zip(sa, sb))[::-1])


class _DropCarry(ast.NodeTransformer):
    """a+b -> no-carry sum (both sides evaluated first, as the rule is applied on running values)."""

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Add):
            return ast.Call(ast.Name("_nc", ast.Load()), [node.left, node.right], [])
        return node


def _py_eval_drop_carry(expr):
    assert ARITH_CHARS.match(expr), expr
    tree = ast.fix_missing_locations(_DropCarry().visit(ast.parse(expr, mode="eval")))
    nc = lambda a, b: _no_carry(a, b) if a >= 0 and b >= 0 else a + b  # noqa: E731
    return eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}, "_nc": nc})


def _boxed(text):
    return last_boxed(text)


# ----------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------
def test_reproducible_and_seed_dependent(arith, countdown):
    assert syn.make_arithmetic_dataset(1500, seed=0, steps=(2, 3)) == arith
    assert [p.extra for p in syn.make_countdown_dataset(400, seed=0)] == [p.extra for p in countdown]
    assert syn.make_countdown_dataset(400, seed=0) == countdown
    other = syn.make_arithmetic_dataset(200, seed=1)
    assert [p.problem for p in other] != [p.problem for p in arith[:200]]
    t1 = syn.make_sft_traces(arith[:200] + countdown[:100], 0.4, {"arithmetic": {"noise": 0.3}}, seed=5,
                             samples_per_problem=3)
    t2 = syn.make_sft_traces(arith[:200] + countdown[:100], 0.4, {"arithmetic": {"noise": 0.3}}, seed=5,
                             samples_per_problem=3)
    t3 = syn.make_sft_traces(arith[:200] + countdown[:100], 0.4, {"arithmetic": {"noise": 0.3}}, seed=6,
                             samples_per_problem=3)
    assert t1.traces == t2.traces
    assert t1.traces != t3.traces
    # A problem's traces depend on the seed, its id and text only, not on its neighbours in the list.
    t4 = syn.make_sft_traces(arith[100:200], 0.4, {"arithmetic": {"noise": 0.3}}, seed=5, samples_per_problem=3)
    assert t4.traces == t1.traces[300:600]


def test_arithmetic_answers_and_traces(arith):
    steps = collections.Counter(p.extra["steps"] for p in arith)
    assert set(steps) == {2, 3} and min(steps.values()) > 400
    assert len({p.problem for p in arith}) == len(arith) == len({p.id for p in arith})
    for p in arith:
        assert p.source == "synthetic/arithmetic" and p.extra["split"] == "train"
        ref = _py_eval(p.problem)
        assert p.answer == str(ref) and 0 <= ref <= 99
        assert p.problem.count("+") + p.problem.count("-") + p.problem.count("*") == p.extra["steps"]
        # The minimal-parenthesis rendering reads back as the same tree.
        assert syn.render(syn.parse_expression(p.problem)) == p.problem
        trace = syn.correct_trace(p)
        lines = trace.split("\n")
        assert len(lines) == p.extra["steps"] + 1 and lines[-1] == f"\\boxed{{{ref}}}"
        for line in lines[:-1]:  # every written step is true arithmetic
            a, op, b, c = STEP_RE.match(line).groups()
            assert _py_eval(f"{a}{op}{b}".replace("(", "").replace(")", "")) == int(c)
            assert 0 <= int(c) <= 99
        assert lines[-2].endswith(f"={ref}")
        assert syn.check_answer(p, trace) and syn.check_answer(p, str(ref))
        assert not syn.check_answer(p, trace.replace(f"\\boxed{{{ref}}}", f"\\boxed{{{ref + 1}}}"))
        assert not syn.check_answer(p, f"\\boxed{{{p.problem}}}")  # an expression is not an answer
        assert not syn.check_answer(p, "no answer here") and not syn.check_answer(p, "\\boxed{")


def test_arithmetic_knobs():
    ds = syn.make_arithmetic_dataset(300, seed=3, steps=4, ops="+-", max_operand=5, max_value=30)
    for p in ds:
        assert p.extra["steps"] == 4 and "*" not in p.problem
        assert max(int(x) for x in re.findall(r"\d+", p.problem)) <= 5
        assert 0 <= _py_eval(p.problem) <= 30
    with pytest.raises(ValueError, match="ops"):
        syn.make_arithmetic_dataset(3, seed=0, ops="+/")
    with pytest.raises(ValueError, match="split"):
        syn.make_arithmetic_dataset(3, seed=0, split="test")
    with pytest.raises(ValueError, match="distinct"):  # only 4 distinct problems exist: 1+1 1+2 2+1 2+2
        syn.make_arithmetic_dataset(50, seed=0, steps=1, ops="+", max_operand=2, split=None)


def _brute_reachable(nums):
    """Values reachable with ALL of nums: pick two, combine (+ - * exact /, non-negative ints), recurse."""
    if len(nums) == 1:
        return {nums[0]}
    out = set()
    for i in range(len(nums)):
        for j in range(len(nums)):
            if i == j:
                continue
            a, b = nums[i], nums[j]
            rest = [nums[k] for k in range(len(nums)) if k not in (i, j)]
            vals = [a + b, a * b] + ([a - b] if a >= b else []) + ([a // b] if b and a % b == 0 else [])
            for v in vals:
                out |= _brute_reachable(rest + [v])
    return out


def test_countdown_solver_matches_brute_force():
    rng = random.Random(11)
    for _ in range(25):
        nums = [rng.randint(1, 12) for _ in range(4)]
        reach = syn.countdown_reachable(nums)[-1]
        assert set(reach) == _brute_reachable(nums)
        for v in rng.sample(sorted(reach), 5):
            expr = syn.render(reach[v])
            assert syn.check_countdown(expr, nums, v, exact_use=True), (nums, v, expr)
    # Rational intermediates: 24 from 3 3 8 8 needs 8/(3-8/3); from 1 5 5 5, 5*(5-1/5).
    assert syn.solve_countdown([3, 3, 8, 8], 24, use_all=True) is None
    for nums in ([3, 3, 8, 8], [1, 5, 5, 5]):
        expr = syn.solve_countdown(nums, 24, use_all=True, integer_intermediates=False)
        assert expr is not None and syn.check_countdown(expr, nums, 24, exact_use=True), expr
    assert syn.solve_countdown([1, 1, 1, 1], 99) is None
    assert syn.solve_countdown([2, 3, 50], 53) == "3+50"  # at most once: the fewest numbers first


def test_countdown_instances_solvable_and_checked(countdown):
    from urlvr_jax.rewards.external import countdown_reward  # an independent implementation

    keys = set()
    for p in countdown:
        nums, target = p.extra["numbers"], p.extra["target"]
        assert p.problem == f"make {target} from {' '.join(map(str, nums))}"
        assert syn.parse_countdown_problem(p.problem) == (nums, target)
        assert len(nums) == 4 and all(1 <= x <= 12 for x in nums) and 10 <= target <= 99
        keys.add((target, tuple(sorted(nums))))
        # The canonical solution uses every number and reaches the target: checked by both checkers.
        assert syn.check_countdown(p.answer, nums, target, exact_use=True)
        assert countdown_reward(p.answer, nums, target, exact_use=True) == 1.0
        assert sorted(syn.leaves(syn.parse_expression(p.answer))) == sorted(nums)
        trace = syn.correct_trace(p)
        lines = trace.split("\n")
        assert lines[-1] == f"\\boxed{{{p.answer}}}" and len(lines) == len(nums)
        assert lines[-2].endswith(f"={target}")
        for line in lines[:-1]:
            a, op, b, c = STEP_RE.match(line).groups()
            a, b = int(a.strip("()")), int(b.strip("()"))
            ref = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b) if b else None}[op]
            assert ref == int(c) and int(c) >= 0
        assert syn.check_answer(p, trace)
        assert not syn.check_answer(p, str(target)) or target in nums
    assert len(keys) == len(countdown)


def test_countdown_checker_agrees_with_reference_on_mutations(countdown):
    from urlvr_jax.rewards.external import countdown_reward

    rng = random.Random(2)
    alphabet = "0123456789+-*/() "
    n_true = 0
    for p in countdown[:200]:
        nums, target = p.extra["numbers"], p.extra["target"]
        for _ in range(15):
            s = list(p.answer)
            for _ in range(rng.randint(1, 2)):
                op = rng.random()
                k = rng.randrange(len(s) + 1)
                if op < 0.4 and s:
                    s[min(k, len(s) - 1)] = rng.choice(alphabet)
                elif op < 0.7:
                    s.insert(k, rng.choice(alphabet))
                elif s:
                    del s[min(k, len(s) - 1)]
            expr = "".join(s)
            mine = syn.check_countdown(expr, nums, target)
            assert mine == (countdown_reward(expr, nums, target) == 1.0), (expr, nums, target)
            n_true += mine
    assert n_true > 50  # some mutations stay correct (e.g. commuted), so both answers are exercised
    nums, target = [3, 4, 6, 8], 24
    assert syn.check_countdown("(8-6)*3*4", nums, target)
    assert not syn.check_countdown("(8-6)*3*4*1", nums, target)  # 1 is not given
    assert not syn.check_countdown("8*3", [8, 4, 6, 9], 24)
    assert not syn.check_countdown("6*4", nums, target, exact_use=True)
    assert syn.check_countdown("6*4", nums, target)
    assert not syn.check_countdown("3*8*(4-3)", nums, target)  # 3 used twice
    for bad in ("-3+27", "2**3", "08*3", "abc", "(((", "", "9" * 40, "(" * 100 + "3" + ")" * 100, None):
        assert syn.check_countdown(bad, [2, 3, 8, 9, 27], 24) is False


# ----------------------------------------------------------------------------------------------------
# The controlled error process
# ----------------------------------------------------------------------------------------------------
RULE_REFS = {
    "sub_swap": lambda e: _py_eval(e, _SwapSub),
    "drop_carry": _py_eval_drop_carry,
    "mul_as_add": lambda e: _py_eval(e, _MulAsAdd),
}


def test_error_profiles_match_reference_rules(arith, countdown):
    order = ("mul_as_add", "sub_swap", "drop_carry")
    fp = {"arithmetic": {"rules": order}}
    types = collections.Counter()
    for p in arith:
        prof = syn.error_profile(p, fp)
        correct = int(p.answer)
        expected = next(((r, RULE_REFS[r](p.problem)) for r in order if RULE_REFS[r](p.problem) != correct),
                        (None, None))
        assert (prof.error_type, prof.systematic_answer) == (expected[0], None if expected[1] is None
                                                             else str(expected[1]))
        types[prof.error_type] += 1
        if prof.error_type is not None:
            assert prof.systematic_trace.endswith(f"\\boxed{{{prof.systematic_answer}}}")
            assert not syn.check_answer(p, prof.systematic_trace)
            assert syn.classify_answer(p, prof.systematic_trace, prof) == "systematic"
            assert syn.classify_answer(p, f"\\boxed{{{int(prof.systematic_answer) + 1000}}}", prof) == "other"
    assert all(types[r] > 100 for r in order), types
    # Countdown: the greedy path uses every number once, is a valid expression, and misses the target.
    n_greedy = 0
    for p in countdown:
        prof = syn.error_profile(p)
        if prof.error_type is None:
            continue
        n_greedy += 1
        nums, target = p.extra["numbers"], p.extra["target"]
        tree = syn.parse_expression(prof.systematic_answer)
        assert sorted(syn.leaves(tree)) == sorted(nums) and syn.evaluate(tree) != target
        assert syn.evaluate(tree) == _greedy_value(nums, target)
        assert not syn.check_answer(p, prof.systematic_trace)
        assert syn.classify_answer(p, prof.systematic_trace, prof) == "systematic"
        assert syn.classify_answer(p, syn.correct_trace(p), prof) == "correct"
        assert syn.classify_answer(p, prof.systematic_answer, prof) == "none"  # no \boxed{}
        assert syn.classify_answer(p, "\\boxed{1+2}", prof) == "other"
        last = prof.systematic_trace.split("\n")[-2]
        assert last.endswith("=" + str(syn.evaluate(tree)))  # the steps are honest
    assert n_greedy > 0.6 * len(countdown)
    # Countdown sub_swap: the canonical solution with every "-" swapped (reference: AST rewrite, exact).
    n_swap = 0
    for p in countdown:
        prof = syn.error_profile(p, {"countdown": {"rules": ["sub_swap"]}})
        tree = ast.fix_missing_locations(_SwapSub().visit(ast.parse(p.answer, mode="eval")))
        tree = ast.fix_missing_locations(_FractionLiterals().visit(tree))
        ref = eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}, "Fraction": Fraction})
        if ref == p.extra["target"]:
            assert prof.error_type is None
            continue
        n_swap += 1
        assert prof.error_type == "sub_swap"
        assert syn.evaluate(syn.parse_expression(prof.systematic_answer)) == ref
        assert sorted(syn.leaves(syn.parse_expression(prof.systematic_answer))) == sorted(p.extra["numbers"])
    assert n_swap > 0.3 * len(countdown)


@pytest.mark.parametrize("q", [0.25, 0.7])
def test_systematic_rate_matches_q(arith, countdown, q):
    """The share of systematic traces among problems that have a systematic path is q within 4 standard
    errors of a binomial proportion; it is counted from the TEXT (boxed answer == reference wrong answer)."""
    noise = 0.3
    problems = arith[:600] + countdown[:200]
    k = 16
    out = syn.make_sft_traces(problems, q, {"arithmetic": {"noise": noise}, "countdown": {"noise": noise}},
                              seed=123, samples_per_problem=k)
    assert len(out.traces) == k * len(problems)
    by_id = {p.id: p for p in problems}
    n_aff = n_sys = n_noise = n_free = n_free_noise = 0
    for t in out.traces:
        p = by_id[t.problem_id]
        assert t.prompt == syn.synthetic_prompt(p) == f"Q: {p.problem}\nA: "
        assert _boxed(t.completion) == t.answer
        prof = out.profiles[p.id]
        if p.extra["family"] == "arithmetic":
            ref_wrong = RULE_REFS["sub_swap"](p.problem)
            has_sys = ref_wrong != int(p.answer)
            is_sys = has_sys and int(t.answer) == ref_wrong
        else:
            has_sys = prof.error_type is not None
            is_sys = has_sys and t.answer == prof.systematic_answer
        ok = syn.check_answer(p, t.completion)
        assert ok == (t.path == "correct")
        assert is_sys == (t.path == "systematic")
        if has_sys:
            n_aff += 1
            n_sys += is_sys
            n_noise += (not ok and not is_sys)
        else:
            n_free += 1
            n_free_noise += not ok
    se = math.sqrt(q * (1 - q) / n_aff)
    assert abs(n_sys / n_aff - q) <= 4 * se, (n_sys / n_aff, q, se)
    # Noise on the non-systematic share; a corruption can fail to find a wrong answer in 10 tries
    # (rare), so the observed rate may sit slightly below the nominal one.
    for cnt, n, p_nom in ((n_noise, n_aff, (1 - q) * noise), (n_free_noise, n_free, noise)):
        se = math.sqrt(p_nom * (1 - p_nom) / n)
        assert abs(cnt / n - p_nom) <= 4 * se, (cnt / n, p_nom)
    assert out.path_counts()["systematic"] == sum(t.path == "systematic" for t in out.traces)


def test_majority_follows_q_and_noise_does_not_concentrate(arith):
    """With 64 samples per problem: q = 0.3 -> the majority answer is correct, q = 0.7 -> it is the
    systematic wrong answer, on >= 98% of problems with a systematic path (binomial tail ~1e-3 each).
    Noise (0.4, q = 0) never forms a wrong answer as frequent as the correct one."""
    problems = [p for p in arith[:300] if syn.error_profile(p).error_type is not None][:80]
    assert len(problems) == 80
    for q, want in ((0.3, "correct"), (0.7, "systematic")):
        out = syn.make_sft_traces(problems, q, seed=9, samples_per_problem=64)
        hits = 0
        for p in problems:
            counts = collections.Counter(t.answer for t in out.traces if t.problem_id == p.id)
            top = counts.most_common(1)[0][0]
            label = syn.classify_answer(p, f"\\boxed{{{top}}}", out.profiles[p.id])
            hits += label == want
        assert hits >= 0.98 * len(problems), (q, hits)
    out = syn.make_sft_traces(problems, 0.0, {"arithmetic": {"noise": 0.4}}, seed=9, samples_per_problem=64)
    for p in problems:
        counts = collections.Counter(t.answer for t in out.traces if t.problem_id == p.id)
        wrong = [c for a, c in counts.items() if a != p.answer]
        assert counts[p.answer] > max(wrong, default=0)
        assert len(wrong) >= 3  # spread over several values


def test_q_per_error_type_and_bad_params(arith):
    fp = {"arithmetic": {"rules": ("sub_swap", "mul_as_add"), "q": {"sub_swap": 1.0, "mul_as_add": 0.0}}}
    out = syn.make_sft_traces(arith[:300], 0.5, fp, seed=0, samples_per_problem=2)
    for t in out.traces:
        e = out.profiles[t.problem_id].error_type
        assert t.path == ("systematic" if e == "sub_swap" else "correct")
        assert out.q[t.problem_id] == {"sub_swap": 1.0, "mul_as_add": 0.0, None: 0.0}[e]
    with pytest.raises(ValueError, match="unknown rules"):
        syn.make_sft_traces(arith[:3], 0.5, {"arithmetic": {"rules": ["greedy"]}})
    with pytest.raises(ValueError, match="unknown keys"):
        syn.make_sft_traces(arith[:3], 0.5, {"arithmetic": {"qq": 0.1}})
    with pytest.raises(ValueError, match="no entry for error type|without an entry"):
        syn.make_sft_traces(arith[:50], {"mul_as_add": 0.2})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        syn.make_sft_traces(arith[:50], 1.5)
    with pytest.raises(ValueError, match="not a synthetic problem"):
        syn.make_sft_traces([MathProblem("gsm8k/0", "1+1", "2", "gsm8k")], 0.1)


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------
def test_train_eval_disjoint(arith, countdown):
    ev = syn.make_arithmetic_dataset(400, seed=0, split="eval") + syn.make_arithmetic_dataset(400, seed=1,
                                                                                          split="eval")
    train = arith + syn.make_arithmetic_dataset(1500, seed=1)
    assert not {p.problem for p in ev} & {p.problem for p in train}
    assert all(p.extra["split"] == "eval" for p in ev)
    assert not {p.id for p in ev} & {p.id for p in train}
    # Ids are content hashes: a problem drawn by two seeds has one id, different problems different ids.
    ids = collections.defaultdict(set)
    for p in train + ev:
        ids[p.problem].add(p.id)
    assert all(len(v) == 1 for v in ids.values()) and len(set().union(*ids.values())) == len(ids)
    assert len(ids) < len(train) + len(ev)  # the two train seeds did share problems
    cev = syn.make_countdown_dataset(300, seed=0, split="eval")
    ckey = lambda p: (p.extra["target"], tuple(sorted(p.extra["numbers"])))  # noqa: E731
    ctrain = countdown + syn.make_countdown_dataset(400, seed=1)
    assert not {ckey(p) for p in cev} & {ckey(p) for p in ctrain}
    # The split is a hash of the content: about EVAL_FRACTION of an unfiltered sample is eval.
    both = syn.make_arithmetic_dataset(2000, seed=4, split=None)
    frac = sum(p.extra["split"] == "eval" for p in both) / len(both)
    assert abs(frac - syn.EVAL_FRACTION) <= 4 * math.sqrt(0.2 * 0.8 / len(both))


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip(arith, countdown, tmp_path):
    from transformers import AutoTokenizer

    from urlvr_jax.rewards.answers import token_bytes
    from urlvr_jax.tokenizer import load_tokenizer

    tok = build_synthetic_tokenizer()
    assert len(tok) == VOCAB_SIZE < 128
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(BOXED_TOKEN) == 4
    out = syn.make_sft_traces(arith + countdown, 0.5, {"arithmetic": {"noise": 0.3, "rules": syn.RULES["arithmetic"]},
                                                     "countdown": {"noise": 0.3}}, seed=1, samples_per_problem=2)
    texts = out.texts() + [p.problem for p in arith + countdown]
    assert len(texts) > 5000
    assert all(not unencodable_chars(t) for t in texts)
    enc = tok(texts)["input_ids"]
    tok.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)):
        assert loaded(texts)["input_ids"] == enc
        assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
        assert loaded.get_vocab() == tok.get_vocab()
    assert tok.batch_decode(enc, skip_special_tokens=True) == texts
    tb = token_bytes(tok)
    boxed_id, digit_ids = 4, [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    for t, ids in zip(texts, enc):
        assert ids[0] == tok.bos_token_id
        assert b"".join(tb[i] for i in ids) == t.encode()  # what the on-device answer extractor reads
        # characters are single tokens except \boxed{, which is one
        assert len(ids) - 1 == len(t) - (len(BOXED_TOKEN) - 1) * t.count(BOXED_TOKEN)
        assert ids.count(boxed_id) == t.count(BOXED_TOKEN)
        assert sum(ids.count(d) for d in digit_ids) == sum(c.isdigit() for c in t)
    # Any printable ASCII round-trips; other characters are reported.
    rng = random.Random(0)
    for _ in range(200):
        s = "".join(rng.choice([chr(c) for c in range(32, 127)] + ["\n", "\\boxed{"]) for _ in range(40))
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s
    assert unencodable_chars("1+1=2\té") == {"\t", "é"}
