"""The reward registry: every on-device estimator by name, jitted, non-constant, equal to its module."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urlvr_jax.rewards import certainty, ensemble
from urlvr_jax.rewards.registry import (
    ALL_REWARDS,
    CERTAINTY,
    DEVICE_REWARDS,
    GroupBatch,
    check_reward_name,
    device_reward,
    random_reward,
)
from urlvr_jax.rollout.stats import token_stats_from_logits

P, N, T, V = 3, 6, 7, 11


@pytest.fixture(scope="module")
def batch():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    logits = 3 * jax.random.normal(k1, (P, N, T, V))
    tokens = jax.random.randint(k2, (P, N, T), 0, V)
    lengths = jax.random.randint(k3, (P, N), 1, T + 1)
    mask = (jnp.arange(T) < lengths[..., None]).astype(jnp.int32)
    answer_ids = jax.random.randint(k4, (P, N), -1, 3)
    return GroupBatch(tokens=tokens, mask=mask, stats=token_stats_from_logits(logits, tokens, 0.8),
                      answer_ids=answer_ids, answer_mask=mask, gold_ids=jnp.array([0, 1, 2], jnp.int32))


@pytest.mark.parametrize("name", DEVICE_REWARDS)
def test_every_device_reward_is_jittable_and_non_constant(batch, name):
    out = jax.jit(lambda b, k: device_reward(name, b, vocab_size=V, key=k))(batch, jax.random.key(1))
    r = np.asarray(out.rewards)
    assert r.shape == (P, N) and r.dtype == np.float32 and np.isfinite(r).all()
    assert np.ptp(r) > 1e-6, f"{name} gives a constant reward on varied input"


def test_registry_equals_module_functions(batch):
    for name in CERTAINTY:
        got = np.asarray(device_reward(name, batch, vocab_size=V).rewards)
        fn = getattr(certainty, name)
        args = (batch.stats, batch.mask, V) if name == "self_certainty" else (batch.stats, batch.mask)
        np.testing.assert_array_equal(got, np.asarray(fn(*args)))
    mv = ensemble.majority_vote(batch.answer_ids)
    out = device_reward("majority_vote", batch, vocab_size=V)
    np.testing.assert_array_equal(np.asarray(out.rewards), np.asarray(mv.rewards))
    np.testing.assert_array_equal(np.asarray(out.majority_ratio), np.asarray(mv.majority_ratio))


def test_ground_truth_and_ttrl_mode(batch):
    gt = np.asarray(device_reward("ground_truth", batch, vocab_size=V).rewards)
    ids, gold = np.asarray(batch.answer_ids), np.asarray(batch.gold_ids)
    np.testing.assert_array_equal(gt, ((ids == gold[:, None]) & (ids >= 0)).astype(np.float32))
    ttrl = device_reward("majority_vote", batch, vocab_size=V, n_votes=6, n_train=4)
    assert ttrl.rewards.shape == (P, 4)


def test_unknown_and_misrouted_names():
    with pytest.raises(ValueError, match="unknown reward 'entropy'.*token_entropy"):
        check_reward_name("entropy")
    assert "self_verification" in ALL_REWARDS
    empty = GroupBatch(tokens=jnp.zeros((1, 2, 3), jnp.int32), mask=jnp.ones((1, 2, 3)),
                       stats=token_stats_from_logits(jnp.zeros((1, 2, 3, 4)), jnp.zeros((1, 2, 3), jnp.int32)))
    with pytest.raises(ValueError, match="needs answer_ids"):
        device_reward("majority_vote", empty, vocab_size=4)
    with pytest.raises(ValueError, match="not computed on device"):
        device_reward("countdown", empty, vocab_size=4)


def test_random_reward_is_fair_coin_flips_from_the_key_alone(batch):
    """The `random` control: rewards are i.i.d. Bernoulli(0.5), a function of the key only.

    Statistics (fixed key, so deterministic): 4096 x 8 = 32768 draws, SE of the mean 0.5/sqrt(32768) =
    0.0028; tolerance 4 SE = 0.011 for the mean, and 4/sqrt(n) for the correlations below (each ~N(0, 1/n)
    under independence)."""
    r = np.asarray(random_reward(jax.random.key(7), (4096, 8)))
    n = r.size
    assert set(np.unique(r)) == {0.0, 1.0} and r.dtype == np.float32
    assert abs(r.mean() - 0.5) < 4 * 0.5 / np.sqrt(n), r.mean()
    # no structure across the sample axis (neighbouring samples of one group) or the prompt axis
    flat = r.reshape(-1)
    for a, b in ((r[:, :-1], r[:, 1:]), (r[:-1], r[1:])):
        c = np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]
        assert abs(c) < 4 / np.sqrt(a.size), c
    # independent of a token-derived feature of a large random batch (first token's parity)
    tokens = np.asarray(jax.random.randint(jax.random.key(8), (4096, 8, 5), 0, V))
    feat = (tokens[..., 0] % 2).reshape(-1).astype(float)
    c = np.corrcoef(flat, feat)[0, 1]
    assert abs(c) < 4 / np.sqrt(n), c
    # determinism per key; a different key gives different draws
    np.testing.assert_array_equal(r, np.asarray(random_reward(jax.random.key(7), (4096, 8))))
    assert (np.asarray(random_reward(jax.random.key(9), (4096, 8))) != r).mean() > 0.4


def test_random_reward_ignores_the_batch_and_needs_a_key(batch):
    key = jax.random.key(3)
    a = np.asarray(device_reward("random", batch, vocab_size=V, key=key).rewards)
    other = batch._replace(tokens=(batch.tokens + 1) % V, answer_ids=jnp.zeros_like(batch.answer_ids))
    b = np.asarray(device_reward("random", other, vocab_size=V, key=key).rewards)
    np.testing.assert_array_equal(a, b)  # same key, different responses: same rewards
    np.testing.assert_array_equal(a, np.asarray(random_reward(key, (P, N))))
    assert device_reward("random", batch, vocab_size=V, key=key, n_train=4).rewards.shape == (P, 4)
    with pytest.raises(ValueError, match="'random' draws its rewards from a PRNG key"):
        device_reward("random", batch, vocab_size=V)
