"""SFT pretraining of the synthetic base models, the prior metrics, and the shipped ladder.

References: float64 NumPy cross-entropy; hand-computed metrics on a fixed set of fake responses;
brute-force pairwise AUROC and np.corrcoef; transformers' PyTorch Llama for the saved checkpoint;
check_answer re-grading of sampled texts. The ladder test reads the committed ladder.json (built by
experiments/build_ladder.py) and checks that the measured priors are ordered as designed.
"""
import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from urlvr_jax import sft
from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.synthetic_tokenizer import build_synthetic_tokenizer
from urlvr_jax.models.weights import init_model, load_model
from urlvr_jax.sharding import make_mesh
from urlvr_jax.tokenizer import load_tokenizer

# One device: 8 fake devices on 2 cores make every compile and step several times slower, and the
# sharded paths are covered by the model, sampler and trainer tests.
MESH1 = make_mesh(devices=jax.devices()[:1])


def nnx_state(model):
    return nnx.state(model)


@functools.lru_cache(maxsize=8)
def _jitted_forward(graphdef):
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def forward(model, ids):
    """Jitted model(ids) -> float32 logits as NumPy (eager NNX calls are slow)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_jitted_forward(graphdef)(state, jnp.asarray(ids, jnp.int32)))


def jitted_sft_loss(model, ids, mask):
    graphdef, state = nnx.split(model)
    return float(jax.jit(lambda s, a, b: sft.sft_loss(nnx.merge(graphdef, s), a, b))(state, ids, mask))

ROOT = Path(__file__).resolve().parents[1]
LADDER_JSON = ROOT / "experiments" / "results" / "ladder" / "ladder.json"
LADDER_MODELS = ROOT / "urlvr_jax" / "models" / "ladder"


@pytest.fixture(scope="module")
def tok():
    return build_synthetic_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    problems = sft.make_problems("arithmetic", 96, seed=3, split="train")
    traces = syn.make_sft_traces(problems, 0.5, sft.DEFAULT_FAMILY_PARAMS, seed=3)
    return [(t.prompt, t.completion) for t in traces.traces]


BUILD = dict(steps=40, batch_size=16, lr=1e-2, n_problems=160, samples_per_problem=2, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 40-step base model built by build_base_model (q = 0.5), saved to a folder."""
    out = tmp_path_factory.mktemp("sft") / "q0.5"
    return sft.build_base_model(0.5, out, progress=False, mesh=MESH1, **BUILD)


@pytest.fixture(scope="module")
def rerun(built, tok):
    """The recipe rebuilt by hand — problems, skill-phase (q = 0) and q traces, one encoding, init,
    train_sft_arrays with the phase switch — with seed 0 and seed 1; plus the text entry point
    train_sft against train_sft_arrays on the same rows. The model shares the built one's sharding
    rules, so the jitted step is reused (one compile for the module)."""
    problems = sft.make_problems("arithmetic", BUILD["n_problems"], BUILD["seed"], "train")
    kw_traces = dict(seed=BUILD["seed"], samples_per_problem=BUILD["samples_per_problem"])
    skill = syn.make_sft_traces(problems, 0.0, sft.DEFAULT_FAMILY_PARAMS, **kw_traces)
    traces = syn.make_sft_traces(problems, 0.5, sft.DEFAULT_FAMILY_PARAMS, **kw_traces)
    pairs_q = [(t.prompt, t.completion) for t in traces.traces]
    ids, mask = sft.encode_sft_examples(tok, [(t.prompt, t.completion) for t in skill.traces] + pairs_q)
    n = len(skill.traces)
    model = init_model(sft.base_model_config(sft.DEFAULT_SIZE), seed=0, rules=built["model_object"].rules)
    before = jax.tree.map(np.asarray, nnx_state(model))
    kw = dict(steps=BUILD["steps"], batch_size=BUILD["batch_size"], lr=BUILD["lr"], progress=False)
    then = (BUILD["steps"] - BUILD["steps"] // 3, ids[n:], mask[n:])
    m0, l0 = sft.train_sft_arrays(model, ids[:n], mask[:n], seed=0, then=then, **kw)
    _, l1 = sft.train_sft_arrays(model, ids[:n], mask[:n], seed=1, then=then, **kw)
    _, l_text = sft.train_sft(model, tok, pairs_q, seed=0, max_len=ids.shape[1], **kw)
    _, l_arr = sft.train_sft_arrays(model, ids[n:], mask[n:], seed=0, **kw)
    return model, before, m0, l0, l1, l_text, l_arr


# ---------------------------------------------------------------------------------------------- data
def test_encoding_masks_exactly_the_completion_and_eos(tok):
    prompt, completion = "Q: 2+3*4\nA: ", "3*4=12\n2+12=14\n\\boxed{14}"
    ids, mask = sft.encode_sft_examples(tok, [(prompt, completion)], max_len=48)
    p = tok(prompt)["input_ids"]  # <bos> + 12 characters
    c = tok(completion, add_special_tokens=False)["input_ids"]
    assert p[0] == tok.bos_token_id and len(p) == 13 and len(c) == 19  # 7 + 8 + \boxed{ (one token) + "14}"
    n = len(p) + len(c) + 1
    np.testing.assert_array_equal(ids[0, :n], p + c + [tok.eos_token_id])
    np.testing.assert_array_equal(ids[0, n:], tok.pad_token_id)
    expected = np.zeros(48, np.int32)
    expected[len(p):n] = 1
    np.testing.assert_array_equal(mask[0], expected)
    # width: the longest row rounded up to a multiple of 8
    assert sft.encode_sft_examples(tok, [(prompt, completion)])[0].shape == (1, 40)


def test_encoding_errors_name_the_example(tok):
    with pytest.raises(ValueError, match="example 1 has 28 tokens.*max_len=20"):
        sft.encode_sft_examples(tok, [("Q: 1\nA: ", "1"), ("Q: 2+3*4\nA: ", "3*4=12\n2+12=14")], max_len=20)
    with pytest.raises(ValueError, match="example 0 must be a \\(prompt, completion\\) pair"):
        sft.encode_sft_examples(tok, ["Q: 1\nA: 1"], max_len=20)
    with pytest.raises(ValueError, match="example 0 has an empty completion"):
        sft.encode_sft_examples(tok, [("Q: 1\nA: ", "")], max_len=20)


# ---------------------------------------------------------------------------------------------- loss
def _np_masked_ce(logits, targets, mask):
    z = np.asarray(logits, np.float64)
    m = z.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(z, np.asarray(targets)[..., None], -1)[..., 0]
    w = np.asarray(mask, np.float64)
    return float(((lse - picked) * w).sum() / max(w.sum(), 1.0))


def test_masked_cross_entropy_matches_float64_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 7, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 7))
    mask = (rng.random((3, 7)) < 0.5).astype(np.int32)
    loss, n = sft.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert int(n) == mask.sum()
    # tolerance: float32 log-sum-exp of O(10) logits, relative 1e-6
    assert float(loss) == pytest.approx(_np_masked_ce(logits, targets, mask), rel=1e-6)
    zero, n0 = sft.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((3, 7), jnp.int32))
    assert float(zero) == 0.0 and int(n0) == 0


def test_sft_loss_ignores_prompt_positions(built, tok, pairs):
    """The loss equals a float64 reference over completion targets only, and is unchanged when the
    logits that predict prompt tokens are replaced by noise, while changing a completion logit changes it."""
    model = built["model_object"]
    ids, mask = sft.encode_sft_examples(tok, pairs[:4], max_len=64)
    logits = forward(model, ids[:, :-1]).astype(np.float64)
    targets, tmask = ids[:, 1:], mask[:, 1:]
    ref = _np_masked_ce(logits, targets, tmask)
    assert jitted_sft_loss(model, ids, mask) == pytest.approx(ref, rel=1e-5)
    # the targets counted are exactly the completion tokens + <eos> of each row
    for row, (p, c) in enumerate(pairs[:4]):
        n_p = len(tok(p)["input_ids"])
        counted = targets[row][tmask[row].astype(bool)]
        assert counted.tolist() == tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert tmask[row, : n_p - 1].sum() == 0
    noisy = logits.copy()
    noisy[tmask == 0] += np.random.default_rng(0).normal(0, 50, noisy[tmask == 0].shape)
    assert _np_masked_ce(noisy, targets, tmask) == ref
    got = sft.masked_cross_entropy(jnp.asarray(noisy, jnp.float32), jnp.asarray(targets), jnp.asarray(tmask))[0]
    assert float(got) == pytest.approx(ref, rel=1e-5)
    r, t = np.argwhere(tmask == 1)[0]
    bumped = logits.copy()
    bumped[r, t, targets[r, t]] -= 5.0
    assert _np_masked_ce(bumped, targets, tmask) > ref + 1e-3


# ---------------------------------------------------------------------------------------------- training
def test_train_sft_loss_decreases_and_is_deterministic(built, rerun):
    losses = built["losses"]
    assert losses.shape == (40,) and np.all(np.isfinite(losses))
    # from ~log(128) = 4.85 at init; 40 steps at lr 1e-2 must at least cut it by a quarter
    assert losses[:5].mean() > 4.0
    assert losses[-5:].mean() < 0.75 * losses[:5].mean()
    model, before, m0, l0, l1, l_text, l_arr = rerun
    np.testing.assert_array_equal(l0, losses)  # the recipe rebuilt by hand: bit-identical
    assert not np.array_equal(l1, losses)  # another seed: another batch order
    np.testing.assert_array_equal(l_text, l_arr)  # text pairs -> the same rows as encode_sft_examples
    assert not np.array_equal(l_arr, l0)  # the skill phase changes the run
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, nnx_state(m0))),
                    jax.tree.leaves(jax.tree.map(np.asarray, nnx_state(built["model_object"])))):
        np.testing.assert_array_equal(a, b)
    # the input model is untouched (train_sft copies before donating buffers)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.tree.map(np.asarray, nnx_state(model)))):
        np.testing.assert_array_equal(a, b)


def test_train_sft_argument_errors(built, tok, pairs):
    model = built["model_object"]
    with pytest.raises(ValueError, match="no training examples"):
        sft.train_sft(model, tok, [], steps=3, batch_size=8, lr=1e-3, seed=0, max_len=64)
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
        sft.train_sft(model, tok, pairs, steps=0, batch_size=8, lr=1e-3, seed=0, max_len=64)


def test_saved_model_loads_in_load_model_and_transformers(built, tok):
    import torch
    import transformers

    m1, folder = built["model_object"], built["out_dir"]
    reloaded = load_model(folder, mesh=MESH1)
    tok2 = load_tokenizer(folder)
    text = "Q: (7+5)-3\nA: 7+5=12\n12-3=9\n\\boxed{9}"
    ids = tok2(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    ours = forward(m1, [ids])[0]
    # tolerances: same float32 weights through our own program: 1e-6; transformers is another float32
    # program (different op order): 1e-4
    np.testing.assert_allclose(forward(reloaded, [ids])[0], ours, atol=1e-6, rtol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.vocab_size == sft.PADDED_VOCAB
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)


def test_build_base_model_writes_its_recipe(built, tmp_path):
    r = sft.load_recipe(built["out_dir"])
    assert r["q"] == 0.5 and r["steps"] == 40 and r["n_problems"] == 160 and r["size"] == sft.DEFAULT_SIZE
    assert r["prior_steps"] == 40 // 3
    assert sum(r["path_counts"].values()) == 320 and r["path_counts"]["systematic"] > 0
    assert sum(r["path_counts_skill_phase"].values()) == 320 and r["path_counts_skill_phase"]["systematic"] == 0
    assert r["task"] == json.loads(json.dumps(sft.DEFAULT_TASKS["arithmetic"]))
    m = load_model(built["out_dir"], mesh=MESH1)
    assert m.cfg.vocab_size == sft.PADDED_VOCAB and m.cfg.tie_word_embeddings
    assert load_tokenizer(built["out_dir"]).eos_token_id == 2
    probs = sft.problems_for_model(built["out_dir"], 5, seed=1, split="eval")
    assert len(probs) == 5 and all(p.id.startswith("arithmetic/eval/") for p in probs)
    assert all(int(p.answer) <= sft.DEFAULT_TASKS["arithmetic"]["max_value"] for p in probs)
    with pytest.raises(ValueError, match="q must be in"):
        sft.build_base_model(1.5, tmp_path / "c")
    with pytest.raises(ValueError, match="prior_steps must be in"):
        sft.build_base_model(0.5, tmp_path / "c", steps=10, prior_steps=11)
    with pytest.raises(ValueError, match="unknown family"):
        sft.build_base_model(0.5, tmp_path / "c", family="algebra")
    with pytest.raises(FileNotFoundError, match="base_model_recipe.json"):
        sft.load_recipe(tmp_path)


# ---------------------------------------------------------------------------------------------- metrics
def _pairwise_auroc(pos, neg):
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def test_prior_metrics_hand_computed():
    C, S, O, N_ = "correct", "systematic", "other", "none"  # noqa: E741 (O: the "other" label)
    labels = [[C, C, S, O],  # majority 7 (2 votes of 4) correct
              [S, S, S, C],  # majority 5 (3/4) systematic
              [O, N_, C, O],  # answers 1, None, 9, 2: all single votes -> first seen (1) wins, wrong
              [N_, N_, N_, N_]]  # nobody votes: maj scores 0, ratio 0
    answers = [[7, 7, 5, 3], [5, 5, 5, 7], [1, None, 9, 2], [None, None, None, None]]
    cert = np.array([[-0.1, -0.2, -0.3, -0.9],
                     [-0.1, -0.1, -0.2, -0.4],
                     [-0.5, -0.6, -0.5, -0.7],
                     [-1.0, -1.0, -1.0, -1.0]])
    m = sft.prior_metrics(labels, answers, cert)
    assert m["n_problems"] == 4 and m["n_samples"] == 4
    assert m["accuracy"] == pytest.approx(4 / 16)
    assert m["maj_accuracy"] == pytest.approx(1 / 4)
    assert m["pass_at_n"] == pytest.approx(3 / 4)
    assert m["systematic_rate"] == pytest.approx(4 / 16)
    assert m["other_rate"] == pytest.approx(3 / 16)
    assert m["none_rate"] == pytest.approx(5 / 16)
    assert m["maj_systematic_rate"] == pytest.approx(1 / 4)
    assert m["majority_ratio"] == pytest.approx((2 / 4 + 3 / 4 + 1 / 4 + 0) / 4)
    # confident (ratio >= 0.5): problems 0 (correct) and 1 (systematic)
    assert m["confident_fraction"] == pytest.approx(2 / 4)
    assert m["confident_majority_correct"] == pytest.approx(1 / 2)
    assert m["mean_certainty"] == pytest.approx(cert.mean())
    correct = np.array([[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], float)
    assert m["certainty_pb"] == pytest.approx(np.corrcoef(correct.ravel(), cert.ravel())[0, 1], rel=1e-12)
    # pooled AUROC by hand: correct certainties {-.1, -.2, -.4, -.5} vs the 12 incorrect ones
    pos = [-0.1, -0.2, -0.4, -0.5]
    neg = [-0.3, -0.9, -0.1, -0.1, -0.2, -0.5, -0.6, -0.7, -1.0, -1.0, -1.0, -1.0]
    wins = {-0.1: 10 + 2 * 0.5, -0.2: 9 + 0.5, -0.4: 8, -0.5: 7 + 0.5}  # per positive: greater + ties/2
    assert sum(wins.values()) == sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert m["certainty_auroc"] == pytest.approx(sum(wins.values()) / 48, rel=1e-12)
    # within: mixed problems 0, 1, 2; problem 0 AUROC 1, problem 1: -0.4 vs {-.1,-.1,-.2} -> 0,
    # problem 2: -0.5 vs {-.5,-.6,-.7} -> (0.5 + 1 + 1)/3
    assert m["n_mixed"] == 3
    assert m["certainty_auroc_within"] == pytest.approx((1 + 0 + 2.5 / 3) / 3, rel=1e-12)
    pbs = [np.corrcoef(correct[p], cert[p])[0, 1] for p in range(3)]
    assert m["certainty_pb_within"] == pytest.approx(np.mean(pbs), rel=1e-12)
    # no confident majority anywhere -> NaN (not 0), and shape errors name the arrays
    m2 = sft.prior_metrics([[C, O]], [[1, 2]], [[0.0, 0.0]], confident_threshold=0.75)
    assert math.isnan(m2["confident_majority_correct"]) and math.isnan(m2["certainty_pb"])
    assert m2["certainty_auroc"] == 0.5
    with pytest.raises(ValueError, match="must all be \\[P, N\\]"):
        sft.prior_metrics(labels, answers, cert[:, :3])
    with pytest.raises(ValueError, match="unknown labels"):
        sft.prior_metrics([["right"]], [[1]], [[0.0]])


def test_auroc_and_pearson_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos = rng.integers(0, 5, rng.integers(1, 9)).astype(float)  # small integer range: many ties
        neg = rng.integers(0, 5, rng.integers(1, 9)).astype(float)
        assert sft._auroc(pos, neg) == pytest.approx(_pairwise_auroc(pos, neg), abs=1e-12)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert sft._pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert math.isnan(sft._auroc([], [1.0]))


def test_canonical_answer():
    assert sft.canonical_answer("1+2=3\n\\boxed{3}") == 3
    assert sft.canonical_answer("\\boxed{ -4 }") == -4
    assert sft.canonical_answer("\\boxed{(8-6)*3 * 4}") == "(8-6)*3*4"
    assert sft.canonical_answer("\\boxed{  }") is None
    assert sft.canonical_answer("no box") is None and sft.canonical_answer(None) is None


def test_measure_prior_grades_the_sampled_texts(built, tok):
    """measure_prior's accuracy and systematic rate equal a re-grading of the same samples (same seed)."""
    model = built["model_object"]
    problems = sft.make_problems("arithmetic", 6, seed=2, split="eval")
    kw = dict(seed=4, batch_size=4, max_new_tokens=48)
    texts, cert, trunc = sft.sample_responses(model, tok, problems, 4, 1.0, **kw)
    m = sft.measure_prior(model, tok, problems, n_samples=4, temperature=1.0, **kw)
    assert len(texts) == 6 and all(len(r) == 4 for r in texts) and cert.shape == (6, 4)
    assert np.all(cert <= 0)
    correct = [[syn.check_answer(p, t) for t in row] for p, row in zip(problems, texts)]
    assert m["accuracy"] == pytest.approx(np.mean(correct))
    profiles = [syn.error_profile(p, sft.DEFAULT_FAMILY_PARAMS) for p in problems]
    sys_rate = np.mean([[syn.classify_answer(p, t, pr) == "systematic" for t in row]
                        for p, row, pr in zip(problems, texts, profiles)])
    assert m["systematic_rate"] == pytest.approx(sys_rate)
    assert m["mean_certainty"] == pytest.approx(cert.mean())
    assert m["error_problem_fraction"] == pytest.approx(np.mean([p.error_type is not None for p in profiles]))
    assert m["truncation_rate"] == pytest.approx(trunc.mean())


# ---------------------------------------------------------------------------------------------- ladder
def test_shipped_ladder_is_ordered_as_designed():
    """The measured priors of the committed ladder are monotone in q (the control parameter):
    confident-majority correctness and within-group certainty AUROC fall, the systematic majority rises —
    over all eval problems and over the problems with a systematic path (where the knob acts)."""
    if not LADDER_JSON.exists():
        pytest.fail(f"{LADDER_JSON} is missing: run `python experiments/build_ladder.py`")
    ladder = json.loads(LADDER_JSON.read_text())
    rungs = sorted(ladder["rungs"], key=lambda r: r["q"])
    assert len(rungs) >= 5
    qs = [r["q"] for r in rungs]
    assert len(set(qs)) == len(qs)

    # slack 0.03: the statistical resolution of a rate over 256 problems x 16 samples (binomial standard
    # error ~0.02-0.03 at the sizes of the subsets used); a rung may not rise above its predecessor by more
    def non_increasing(xs, slack=0.03):
        return all(x is not None for x in xs) and all(b <= a + slack for a, b in zip(xs, xs[1:]))

    for subset in ("all", "on_error_problems"):
        ms = [r["metrics"] if subset == "all" else r["metrics"][subset] for r in rungs]
        for key, sign in (("confident_majority_correct", 1), ("certainty_auroc_within", 1),
                          ("maj_systematic_rate", -1)):
            xs = [m[key] for m in ms]
            assert non_increasing([sign * x if x is not None else None for x in xs]), (subset, key, qs, xs)
    # where the knob acts, the ends are on opposite sides: correct answers are the more certain ones at
    # the low-q end, the less certain ones at the high-q end
    err = [r["metrics"]["on_error_problems"] for r in rungs]
    assert err[0]["certainty_auroc_within"] > 0.5 > err[-1]["certainty_auroc_within"]
    assert err[0]["maj_systematic_rate"] < 0.5 < err[-1]["maj_systematic_rate"]
    # the good end is a prior majority voting can improve: accuracy far from 0 and 1, maj@N above it
    good = rungs[0]["metrics"]
    assert 0.2 < good["accuracy"] < 0.8 and good["maj_accuracy"] > good["accuracy"]
    # shipped checkpoints carry the recipe they were measured with
    for r in rungs:
        folder = ROOT / r["path"]
        if folder.exists():
            assert sft.load_recipe(folder)["q"] == r["q"]
