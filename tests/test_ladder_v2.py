"""Ladder v2 (issue #13): per-fact systematic errors, the restate trace format and its variants, the 0..99
answer space, vocab-101 models, the shared skill phase, "ladder_v2/..." names and the shipped rungs.

References: the times table (a*b and its neighbouring entries), exact re-execution of each trace's lines,
binomial tolerances stated at each statistical check (fixed seeds, so the checks are deterministic), a
float64 NumPy KL(U || p) over the 101 logits for self-certainty, and one uninterrupted SFT run for the
split (skill phase, then prior phase) run.
"""
import dataclasses
import itertools
import json
import math
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from urlvr_jax import sft
from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.synthetic_tokenizer import VOCAB_SIZE, build_synthetic_tokenizer
from urlvr_jax.data.tasks import make_problems
from urlvr_jax.models.paths import LADDER_DIR, LADDER_V2_DIR, resolve_model_path
from urlvr_jax.models.weights import init_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
V2_JSON = ROOT / "experiments" / "results" / "ladder_v2" / "ladder_v2.json"
LINE_RE = re.compile(r"^(\d+)([-+*])(\d+)=(\d+)(?: so (.+))?$")


@pytest.fixture(scope="module")
def problems():
    return make_problems("arithmetic", 400, 7, "train", sft.V2_TASK)


@pytest.fixture(scope="module")
def traces(problems):
    return syn.make_sft_traces(problems, 0.3, sft.v2_family_params(), seed=3, samples_per_problem=50)


@pytest.fixture(scope="module")
def tok():
    return build_synthetic_tokenizer()


# ------------------------------------------------------------------------------------------ the fact rule
def test_every_fact_has_its_own_fixed_plausible_wrong_product():
    assert len(syn.FACT_ERRORS) == 45  # unordered pairs of 1..9
    for (a, b), w in syn.FACT_ERRORS.items():
        assert w != a * b
        nb = {(a - 1) * b, (a + 1) * b, a * (b - 1), a * (b + 1)}  # the neighbouring table entries
        assert w in nb and w == syn.fact_error_value(b, a) == syn.fact_error_value(a, b)
        assert w in syn.fact_neighbours(a, b)
    assert len(set(syn.FACT_ERRORS.values())) > 20  # a table of different errors, not one shift
    with pytest.raises(ValueError, match="not a times-table fact"):
        syn.fact_neighbours(3, 12)


def _step_lines(completion):
    return [ln for ln in completion.split("\n") if LINE_RE.match(ln)]


def _wrong_facts_of(completion):
    """{fact: wrong?} read from a trace's '*' lines (each value must be the product or the fact's error)."""
    seen = {}
    for ln in _step_lines(completion):
        a, op, b, c, _ = LINE_RE.match(ln).groups()
        if op != "*":
            continue
        a, b, c = int(a), int(b), int(c)
        key = syn.fact_key(a, b)
        assert c in (a * b, syn.FACT_ERRORS[key]), ln
        wrong = c != a * b
        assert seen.setdefault(key, wrong) == wrong  # one draw per fact per trace
    return seen


def test_each_fact_is_wrong_with_probability_q_and_errors_propagate(problems, traces):
    q = 0.3
    by_id = {p.id: p for p in problems}
    per_fact = Counter()
    per_fact_wrong = Counter()
    both, two_fact, n_noise = 0, 0, 0
    for t in traces.traces:
        if t.variant == "answer_only":
            continue
        p = by_id[t.problem_id]
        prof = traces.profiles[p.id]
        if t.path == "noise":  # a corrupted digit (possibly in a '*' step), drawn only where no fact went wrong:
            n_noise += 1       # its facts count as right (the variant is drawn apart from the path: no bias)
            for f in prof.facts:
                per_fact[f] += 1
            continue
        facts = _wrong_facts_of(t.completion)
        assert set(facts) == set(prof.facts)
        for f, w in facts.items():
            per_fact[f] += 1
            per_fact_wrong[f] += w
        if len(prof.facts) == 2:
            two_fact += 1
            both += all(facts.values())
        # honest propagation: the boxed answer is the problem computed with exactly these facts wrong
        wrong = frozenset(f for f, w in facts.items() if w)
        assert Fraction(int(t.answer)) == syn._run(syn.parse_expression(p.problem), wrong_facts=wrong)[1]
        assert t.path == ("correct" if not wrong else "systematic" if len(wrong) == len(facts) else "partial")
    # Noise: w.p. 0.1 on traces without a fact error (and on problems without facts); ~1200 expected.
    assert 900 < n_noise < 1600
    # Each fact of each trace is wrong w.p. q. Pooled n ~ 19000 -> SE 0.0033; tolerance 0.015 (4.5 SE).
    n = sum(per_fact.values())
    assert n > 10000
    assert abs(sum(per_fact_wrong.values()) / n - q) < 0.015
    # Every well-sampled fact on its own (n >= 150 -> SE <= 0.037): within 0.16 (4.3 SE).
    for f, k in per_fact.items():
        if k >= 150:
            assert abs(per_fact_wrong[f] / k - q) < 0.16, (f, per_fact_wrong[f], k)
    # Two distinct facts draw independently: both wrong w.p. q^2 = 0.09 among the non-noise traces of 2-fact
    # problems up to the noise conditioning (0.09 / (1 - 0.1 * 0.49) = 0.095); n ~ 1200 -> SE 0.008; tol 0.035.
    assert two_fact > 500 and abs(both / two_fact - q * q) < 0.035


def test_error_profile_and_classify_answer_with_fact_errors(problems):
    fp = sft.v2_family_params()
    n_two = 0
    for p in problems:
        prof = syn.error_profile(p, fp)
        tree = syn.parse_expression(p.problem)
        facts = syn.problem_facts(p)
        if not facts:
            assert prof.error_type is None and prof.systematic_answer is None
            continue
        assert prof.error_type == "fact_error" and prof.facts == facts
        all_wrong = syn._run(tree, wrong_facts=frozenset(facts))[1]
        assert prof.systematic_answer == str(all_wrong) != p.answer
        assert syn.classify_answer(p, f"x\n\\boxed{{{prof.systematic_answer}}}", prof) == "systematic"
        assert syn.classify_answer(p, f"\\boxed{{{p.answer}}}", prof) == "correct"
        if len(facts) == 2:  # the one-fact-wrong answers are partial: "other", not "systematic"
            n_two += 1
            assert len(prof.partial_answers) == 2
            assert len({p.answer, prof.systematic_answer, *prof.partial_answers}) == 4
            for a in prof.partial_answers:
                assert syn.classify_answer(p, f"\\boxed{{{a}}}", prof) == "other"
        else:
            assert prof.partial_answers == ()
        assert prof.systematic_trace.endswith(f"\\boxed{{{prof.systematic_answer}}}")
    assert n_two > 10
    with pytest.raises(ValueError, match="variants"):
        syn.error_profile(problems[0], {"arithmetic": {"rules": ("fact_error",), "noise": 0.1,
                                                       "variants": {"answer_only": 0.7, "repeated": 0.4}}})


# ------------------------------------------------------------------------------------------ answers, problems
def test_v2_problems_answers_in_0_99_and_mostly_with_a_multiplication():
    ps = make_problems("arithmetic", 1000, 11, "eval", sft.V2_TASK)
    fp = sft.v2_family_params()
    share = np.mean(["*" in p.problem for p in ps])
    assert abs(share - 0.9) < 0.035  # binomial SE 0.0095 at n=1000: 3.7 SE
    for p in ps:
        prof = syn.error_profile(p, fp)
        for a in (p.answer, prof.systematic_answer, *prof.partial_answers):
            assert a is None or 0 <= int(a) <= 99
        assert p.extra["steps"] == 3 and p.id.startswith("arithmetic/eval/")
    tr = syn.make_sft_traces(ps[:200], 0.5, sft.v2_family_params(0.6), seed=0, samples_per_problem=10)
    assert all(0 <= int(t.answer) <= 99 for t in tr.traces)
    assert tr.path_counts()["noise"] > 300  # the noise paths are kept in range, not dropped


def test_v1_generator_and_traces_are_unchanged_by_the_v2_knobs():
    """The v2 knobs are off by default: the v1 stream of problems and traces does not see them."""
    a = syn.make_arithmetic_dataset(50, 3, steps=(2,), max_value=20)
    b = syn.make_arithmetic_dataset(50, 3, steps=(2,), max_value=20, table_facts=False, mul_share=None)
    assert [p.problem for p in a] == [p.problem for p in b]
    tr = syn.make_sft_traces(a, 0.5, {"arithmetic": {"rules": ("mul_as_add",), "noise": 0.3}}, seed=1,
                             samples_per_problem=4)
    assert all(t.variant == "standard" and " so " not in t.completion for t in tr.traces)
    assert tr.path_counts()["partial"] == 0


# ------------------------------------------------------------------------------------------ format, variants
def test_restate_format_lines_are_exact(problems):
    for p in problems[:100]:
        text = syn.correct_trace(p, "restate")
        lines = text.split("\n")
        assert lines[-1] == f"\\boxed{{{p.answer}}}"
        cur = Fraction(0)
        for i, ln in enumerate(lines[:-1]):
            a, op, b, c, rest = LINE_RE.match(ln).groups()
            cur = syn.evaluate(syn.parse_expression(f"{a}{op}{b}"))
            assert cur == int(c)
            if i < len(lines) - 2:  # the restated remaining expression has the problem's value
                assert syn.evaluate(syn.parse_expression(rest)) == int(p.answer)
            else:
                assert rest is None
        assert cur == int(p.answer)


def test_trace_variant_frequencies_and_shapes(traces, tok):
    n = len(traces.traces)  # 20000
    counts = traces.variant_counts()
    # binomial SEs at n = 20000: 0.0012 (3%), 0.0021 (10%), 0.0010 (2%); tolerances ~4.5 SE
    assert abs(counts["answer_only"] / n - 0.03) < 0.0055
    assert abs(counts["restated"] / n - 0.10) < 0.01
    assert abs(counts["repeated"] / n - 0.02) < 0.0045
    reps = Counter()
    for t in traces.traces:
        # an answer-only trace whose answer is the give-up answer reads as give-up (ladder v3; sft.response_shape)
        give_up_text = t.completion == f"\\boxed{{{syn.GIVE_UP_ANSWER}}}"
        assert sft.response_shape(t.completion) == ("give_up" if give_up_text else t.variant)
        assert syn.last_boxed(t.completion) == t.answer
        lines = t.completion.split("\n")
        if t.variant == "answer_only":
            assert t.completion == f"\\boxed{{{t.answer}}}"
        elif t.variant == "repeated":
            runs = [len(list(g)) for _, g in itertools.groupby(lines)]
            assert max(runs) in (2, 3, 4) and sorted(runs)[-2:-1] in ([], [1])
            reps[max(runs)] += 1
        elif t.variant == "restated":
            (check,) = [ln for ln in lines if ln.startswith("check: ")]
            assert any(ln.split(" so ")[0] == check[len("check: "):] for ln in lines if ln != check)
        row = 1 + syn._n_tokens(t.prompt) + syn._n_tokens(t.completion) + 1
        assert row <= sft.V2_MAX_LEN and syn._n_tokens(t.completion) + 1 <= sft.V2_MAX_NEW_TOKENS
    assert set(reps) == {2, 3, 4}
    sample = traces.traces[::997]
    assert [len(tok(t.completion, add_special_tokens=False)["input_ids"]) for t in sample] == \
        [syn._n_tokens(t.completion) for t in sample]
    std = [syn._n_tokens(t.completion) for t in traces.traces if t.variant == "standard"]
    assert np.mean(std) >= 40


# ------------------------------------------------------------------------------------------ models
def _micro_cfg():
    return dataclasses.replace(sft.base_model_config("tiny", VOCAB_SIZE), hidden_size=32, intermediate_size=64,
                               num_layers=1, head_dim=8)


def test_vocab_101_model_samples_saves_and_self_certainty_uses_real_ids(tmp_path, tok, problems):
    from urlvr_jax.rewards.certainty import self_certainty
    from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
    from urlvr_jax.tokenizer import encode_prompts

    cfg = _micro_cfg()
    assert cfg.vocab_size == VOCAB_SIZE == len(tok) == 101
    with pytest.raises(ValueError, match="vocab_size"):
        sft.base_model_config("tiny", 100)
    model = init_model(cfg, seed=0)
    save_model(model, tmp_path / "m", tokenizer=tok)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vocab_size"] == 101
    loaded = load_model(tmp_path / "m")
    ids, mask = encode_prompts(tok, [syn.synthetic_prompt(p) for p in problems[:2]])
    z = np.asarray(jax.jit(lambda m, x: m(x))(loaded, jnp.asarray(ids)))
    assert z.shape[-1] == 101
    np.testing.assert_allclose(z, np.asarray(model(jnp.asarray(ids))), rtol=1e-5, atol=1e-5)
    out = generate_ids(loaded, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0),
                       SamplingConfig(max_new_tokens=12, temperature=1.0), num_samples=2, eos_ids=(2,), pad_id=0)
    toks = np.asarray(out.tokens)
    assert toks.max() < 101
    # self-certainty = mean_t KL(U_101 || p_t): recompute each step's logits with a forward pass (float64)
    T = toks.shape[1]  # rows are prompt-major: row r is sample r % 2 of prompt r // 2
    stats = jax.tree.map(lambda x: x.reshape(2, 2, T), out.stats)
    sc = np.asarray(self_certainty(stats, out.mask.reshape(2, 2, T), cfg.vocab_size)).reshape(-1)
    rmask = np.asarray(out.mask)
    for r in range(toks.shape[0]):
        p_ids = ids[r // 2][mask[r // 2] == 1]
        seq = np.concatenate([p_ids, toks[r]])
        logits = np.asarray(loaded(jnp.asarray(seq[None])), np.float64)[0, len(p_ids) - 1:-1]
        lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
        kl = lse - logits.mean(-1) - math.log(101)
        want = kl[rmask[r] == 1].mean()
        np.testing.assert_allclose(sc[r], want, rtol=2e-4, atol=2e-4)
    texts, cert, trunc, lens = sft.sample_responses(loaded, tok, problems[:2], 2, max_new_tokens=12, batch_size=2,
                                                    return_lengths=True)
    assert len(texts) == 2 and lens.shape == (2, 2) and np.all(lens <= 12)


def test_split_training_equals_one_run():
    """The shared skill phase: steps 0..k then k..n from the returned state == one uninterrupted run."""
    cfg = _micro_cfg()
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 101, (24, 16)).astype(np.int32)
    ids2 = rng.integers(4, 101, (24, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    model = init_model(cfg, seed=1)
    one, l_one = sft.train_sft_arrays(model, ids, mask, 6, 4, 1e-2, 0, progress=False, then=(4, ids2, mask))
    _, l1, state = sft.train_sft_arrays(model, ids, mask, 6, 4, 1e-2, 0, progress=False, stop=4, return_state=True)
    two, l2 = sft.train_sft_arrays(model, ids2, mask, 6, 4, 1e-2, 0, progress=False, start=4, state=state)
    np.testing.assert_array_equal(l_one, np.concatenate([l1, l2]))
    for a, b in zip(jax.tree.leaves(nnx.state(one)), jax.tree.leaves(nnx.state(two))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the cached state stays usable (the step donates copies, not the caller's buffers)
    again, l3 = sft.train_sft_arrays(model, ids2, mask, 6, 4, 1e-2, 0, progress=False, start=4, state=state)
    np.testing.assert_array_equal(l2, l3)
    with pytest.raises(ValueError, match="start"):
        sft.train_sft_arrays(model, ids, mask, 6, 4, 1e-2, 0, progress=False, start=2)


def test_response_shape():
    assert sft.response_shape("\\boxed{12}") == "answer_only"
    assert sft.response_shape("1+2=3 so 3*4\n1+2=3 so 3*4\n3*4=12\n\\boxed{12}") == "repeated"
    assert sft.response_shape("1+2=3 so 3*4\ncheck: 1+2=3\n3*4=12\n\\boxed{12}") == "restated"
    assert sft.response_shape("1+2=3 so 3*4\n3*4=12\n\\boxed{12}") == "standard"
    assert sft.response_shape("1+2=3 so 3*4\n3*4=12") == "other"


# ------------------------------------------------------------------------------------------ names, shipped rungs
def test_ladder_v2_names_resolve_and_v1_still_does():
    assert resolve_model_path("ladder/q0.1") == str(Path(LADDER_DIR) / "q0.1")
    shipped = sorted(d.name for d in Path(LADDER_V2_DIR).iterdir() if d.is_dir())
    assert shipped, "no ladder v2 rung is shipped"
    for name in shipped:
        assert resolve_model_path(f"ladder_v2/{name}") == str(Path(LADDER_V2_DIR) / name)
    with pytest.raises(FileNotFoundError, match=r"no shipped base model 'ladder_v2/q0\.123'.*--v2"):
        resolve_model_path("ladder_v2/q0.123")
    assert resolve_model_path("/some/ladder_v2/q0.2") == "/some/ladder_v2/q0.2"


def test_shipped_v2_rungs_load_with_their_recipe():
    from urlvr_jax.api import load_model as api_load_model
    from urlvr_jax.api import load_tokenizer
    from urlvr_jax.data.tasks import load_recipe, problems_for_model

    data = json.loads(V2_JSON.read_text())
    names = [r["name"] for r in data["rungs"]]
    assert names and set(names) == {d.name for d in Path(LADDER_V2_DIR).iterdir() if d.is_dir()}
    for r in data["rungs"]:
        folder = resolve_model_path(f"ladder_v2/{r['name']}")
        recipe = load_recipe(folder)
        assert recipe["max_new_tokens"] == 96 and recipe["vocab_size"] == 101 and recipe["world"] == "ladder_v2"
        assert recipe["q"] == r["q"] and recipe["family_params"]["arithmetic"]["noise"] == r["noise"]
        assert recipe["family_params"]["arithmetic"]["rules"] == ["fact_error"]
        assert json.loads((Path(folder) / "config.json").read_text())["vocab_size"] == 101
        assert (Path(folder) / "model.safetensors").stat().st_size < 400_000
    model = api_load_model(f"ladder_v2/{names[0]}")
    tok = load_tokenizer(f"ladder_v2/{names[0]}")
    assert model.cfg.vocab_size == len(tok) == 101
    ps = problems_for_model(resolve_model_path(f"ladder_v2/{names[0]}"), 4, 1, split="eval")
    assert all(p.extra["steps"] == 3 for p in ps)
