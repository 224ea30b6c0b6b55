"""Certainty rewards against a float64 NumPy reference computed from the full logits.

Pipeline under test: random logits -> rollout.stats.token_stats_from_logits (float32, JAX) ->
rewards.certainty.<estimator>. The reference recomputes everything from the logits in float64.

Tolerances (chosen from float32 error analysis, V = 97, |z| ≲ 40): per-token statistics carry an
absolute error of a few float32 ulps of the logsumexp (~1e-5 at worst here), so the length-normalised
rewards are compared with rtol = 1e-5, atol = 1e-5. `probability` is exp of a sum of up to T = 12
log-probs: its relative error is the absolute error of that sum, so rtol = 1e-4, atol = 1e-30.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from urlvr_jax.rewards import certainty
from urlvr_jax.rollout.stats import TokenStats, token_stats_from_logits

P, N, T, V = 8, 4, 12, 97
TEMPERATURE = 0.7
RTOL, ATOL = 1e-5, 1e-5
PROB_RTOL, PROB_ATOL = 1e-4, 1e-30
NAMES = ("self_certainty", "token_entropy", "trajectory_entropy", "probability", "probability_disparity")


def _make_batch(seed=0):
    rng = np.random.default_rng(seed)
    # A per-response and per-position scale makes some distributions flat and some very peaked, so
    # every statistic varies across the responses of a group.
    scale = rng.uniform(0.3, 6.0, size=(P, N, 1, 1)) * rng.uniform(0.5, 1.5, size=(P, N, T, 1))
    logits = (rng.standard_normal((P, N, T, V)) * scale).astype(np.float32)
    tokens = rng.integers(0, V, size=(P, N, T)).astype(np.int32)
    # Half of the tokens are the argmax, so log-probs are not uniformly tiny.
    greedy = rng.random((P, N, T)) < 0.5
    tokens = np.where(greedy, logits.argmax(-1), tokens).astype(np.int32)
    lengths = rng.integers(1, T + 1, size=(P, N))
    lengths[0, 0] = 0  # an empty response: reward must be 0, not NaN
    lengths[0, 1] = T  # a full-length (truncated) response
    mask = (np.arange(T)[None, None, :] < lengths[..., None]).astype(np.int32)
    answer_mask = (rng.random((P, N, T)) < 0.4).astype(np.int32)
    answer_mask[1, 0] = 0  # no answer token at all
    return logits, tokens, mask, answer_mask


def _reference(logits, tokens, mask, answer_mask):
    """float64 NumPy reference of all five rewards, from the full logits."""
    z = logits.astype(np.float64) / TEMPERATURE
    zmax = z.max(-1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(-1, keepdims=True)))[..., 0]
    logp = z - lse[..., None]
    p = np.exp(logp)
    ent = -(p * logp).sum(-1)
    kl_u = np.sum((1.0 / V) * (np.log(1.0 / V) - logp), axis=-1)  # KL(U ‖ p_t), the definition
    tok_lp = np.take_along_axis(logp, tokens[..., None].astype(np.int64), -1)[..., 0]
    ps = np.sort(p, axis=-1)
    gap = ps[..., -1] - ps[..., -2]

    m = mask.astype(bool)
    cnt = m.sum(-1)

    def mmean(x, mm):
        c = mm.sum(-1)
        s = np.where(mm, x, 0.0).sum(-1)
        return np.where(c > 0, s / np.maximum(c, 1), 0.0)

    am = m & answer_mask.astype(bool)
    return {
        "self_certainty": mmean(kl_u, m),
        "token_entropy": -mmean(ent, m),
        "trajectory_entropy": mmean(tok_lp, m),
        "probability": np.where(cnt > 0, np.exp(np.where(m, tok_lp, 0.0).sum(-1)), 0.0),
        "probability_disparity": mmean(gap, am),
    }


def _all_rewards(stats, mask, answer_mask):
    return {
        "self_certainty": certainty.self_certainty(stats, mask, vocab_size=V),
        "token_entropy": certainty.token_entropy(stats, mask),
        "trajectory_entropy": certainty.trajectory_entropy(stats, mask),
        "probability": certainty.probability(stats, mask),
        "probability_disparity": certainty.probability_disparity(stats, mask, answer_mask=answer_mask),
    }


@jax.jit
def _pipeline(logits, tokens, mask, answer_mask):
    stats = token_stats_from_logits(logits, tokens, TEMPERATURE)
    return _all_rewards(stats, mask, answer_mask)


@pytest.fixture(scope="module")
def batch():
    logits, tokens, mask, answer_mask = _make_batch()
    # Garbage in the padding (what a padded forward pass may produce) must not leak into rewards.
    logits_padded = np.where(mask[..., None].astype(bool), logits, np.nan).astype(np.float32)
    return logits, logits_padded, tokens, mask, answer_mask


@pytest.fixture(scope="module")
def jitted(batch):
    logits, logits_padded, tokens, mask, answer_mask = batch
    out = _pipeline(logits_padded, tokens, mask, answer_mask)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("name", NAMES)
def test_matches_float64_reference(batch, jitted, name):
    logits, _, tokens, mask, answer_mask = batch
    ref = _reference(logits, tokens, mask, answer_mask)[name]
    got = jitted[name]
    assert got.shape == (P, N) and got.dtype == np.float32
    assert np.all(np.isfinite(got)), f"{name}: non-finite reward {got}"
    if name == "probability":
        np.testing.assert_allclose(got, ref, rtol=PROB_RTOL, atol=PROB_ATOL)
    else:
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_non_constant_within_every_group(batch, jitted, name):
    """The reference code's token_level_entropy path returned all zeros; make that impossible here."""
    _, _, tokens, mask, answer_mask = batch
    r = jitted[name].astype(np.float64)
    for p in range(P):
        # Only responses that have tokens to score (the empty one and the answerless one are 0 by rule).
        valid = mask[p].sum(-1) > 0
        if name == "probability_disparity":
            valid &= (mask[p] * answer_mask[p]).sum(-1) > 0
        vals = r[p][valid]
        assert len(vals) >= 2
        if name == "probability":
            # exp(sum logp) spans many orders of magnitude (and underflows to 0 in float32 for the
            # least likely responses): compare the logs of the positive ones.
            assert np.unique(vals).size >= 2, f"{name}: group {p} reward is constant: {vals}"
            vals = np.log(vals[vals > 0])
            if vals.size < 2:
                continue
        spread = vals.max() - vals.min()
        assert spread > 1e-3, f"{name}: group {p} reward is (nearly) constant: {vals}"
    assert np.any(r != 0.0)


def test_empty_response_and_missing_answer_give_zero(jitted):
    for name in NAMES:
        assert jitted[name][0, 0] == 0.0, name  # no valid token
    assert jitted["probability_disparity"][1, 0] == 0.0  # no answer token


def test_signs_and_ranges(batch, jitted):
    _, _, _, mask, _ = batch
    valid = mask.sum(-1) > 0
    assert np.all(jitted["self_certainty"][valid] > 0)  # KL(U‖p) > 0 for non-uniform p
    assert np.all(jitted["token_entropy"][valid] < 0)
    assert np.all(jitted["trajectory_entropy"][valid] < 0)
    assert np.all((jitted["probability"] >= 0) & (jitted["probability"] <= 1))
    assert np.all((jitted["probability_disparity"] >= 0) & (jitted["probability_disparity"] <= 1))


def test_token_entropy_is_not_trivial_on_hand_case():
    """Hand-computed: entropies [1, 2, 3] with 2 valid tokens -> -(1+2)/2 = -1.5."""
    z = jnp.zeros((1, 1, 3), jnp.float32)
    stats = TokenStats(logprob=z, entropy=jnp.array([[[1.0, 2.0, 3.0]]]), self_certainty=z, top_gap=z)
    mask = jnp.array([[[1, 1, 0]]])
    assert float(certainty.token_entropy(stats, mask)[0, 0]) == -1.5


def test_bad_shapes_raise_clear_errors(batch):
    z = jnp.zeros((2, 3, 4))
    stats = TokenStats(z, z, z, z)
    with pytest.raises(ValueError, match="stats.logprob has shape"):
        certainty.token_entropy(stats, jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\[P, N, T\]"):
        certainty.token_entropy(TokenStats(*(jnp.zeros((6, 4)),) * 4), jnp.ones((6, 4)))
    with pytest.raises(ValueError, match="answer_mask"):
        certainty.probability_disparity(stats, jnp.ones((2, 3, 4)), answer_mask=jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="vocab_size"):
        certainty.self_certainty(stats, jnp.ones((2, 3, 4)), vocab_size=0)


def test_sharded_along_prompts_on_8_devices(batch, jitted):
    devices = jax.devices()[:8]
    assert len(devices) == 8, "conftest must provide 8 fake CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,), devices=devices)
    shard = NamedSharding(mesh, PartitionSpec("data"))
    _, logits_padded, tokens, mask, answer_mask = batch
    args = [jax.device_put(a, shard) for a in (logits_padded, tokens, mask, answer_mask)]
    out = _pipeline(*args)
    for name in NAMES:
        assert out[name].sharding.is_equivalent_to(shard, 2), f"{name}: output not sharded along P"
        # Every reduction runs along T inside one prompt's shard; XLA may vectorise the per-shard
        # program differently, which moves results by an ulp or so (measured: 4.8e-7 abs), hence 1e-6.
        np.testing.assert_allclose(np.asarray(out[name]), jitted[name], rtol=1e-6, atol=1e-30, err_msg=name)


def test_registry_names():
    assert set(certainty.CERTAINTY_ESTIMATORS) == set(NAMES)
