"""Advantage estimators against an independent float64 NumPy reference (per-group Python loops).

The reference follows verl's estimators literally: per-group lists, torch.std-style unbiased std,
the leave-one-out mean computed from the other responses (not the n/(n-1) identity), and for
REINFORCE++-baseline the group-centred score tiled over each response's tokens and whitened over the
whole token batch (verl's masked_whiten). Tolerance (chosen once): rtol 1e-5, atol 1e-6 on advantages of
size O(1) computed in float32. Zero-variance groups must be exactly 0.0.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urlvr_jax.rl import advantages as A

RTOL, ATOL = 1e-5, 1e-6
NAMES = ("grpo", "drgrpo", "rloo", "reinforce_pp")
# One compile per (estimator, shapes) instead of eager dispatch compiling every primitive per shape.
adv_fn = jax.jit(A.compute_advantages, static_argnames="name")


def ref_advantages(name, rewards, valid=None, eps=1e-6, token_counts=None):
    """float64 NumPy reference, [P, N] -> [P, N]."""
    r = np.asarray(rewards, np.float64)
    P, N = r.shape
    valid = np.ones((P, N), bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros((P, N))
    centred = {}  # (p, i) -> group-centred score, for reinforce_pp
    constant = set()
    for p in range(P):
        idx = [i for i in range(N) if valid[p, i]]
        vals = [r[p, i] for i in idx]
        n = len(idx)
        if n == 0:
            continue
        if n >= 2 and all(x == vals[0] for x in vals):
            constant.update((p, i) for i in idx)
        if n == 1:  # verl: a one-response group has mean 0, std 1
            mean, std = 0.0, 1.0
        else:
            mean = sum(vals) / n
            std = float(np.sqrt(sum((x - mean) ** 2 for x in vals) / (n - 1)))
        for i in idx:
            if (p, i) in constant:
                out[p, i] = 0.0
                centred[(p, i)] = 0.0
                continue
            if name == "grpo":
                out[p, i] = (r[p, i] - mean) / (std + eps)
            elif name == "drgrpo":
                out[p, i] = r[p, i] - mean
            elif name == "rloo":
                others = [r[p, j] for j in idx if j != i]
                out[p, i] = r[p, i] - sum(others) / len(others) if others else r[p, i]
            centred[(p, i)] = r[p, i] - mean
    if name == "reinforce_pp":
        keys = sorted(centred)
        w = [1 if token_counts is None else int(token_counts[k]) for k in keys]
        tokens = np.repeat([centred[k] for k in keys], w)  # verl tiles the score over the response
        if tokens.size < 2:
            return np.zeros((P, N))
        mu = tokens.mean()
        var = tokens.var(ddof=1)
        for k in keys:
            out[k] = 0.0 if k in constant else (centred[k] - mu) / np.sqrt(var + 1e-8)
    return out


def _rewards(seed=0, P=12, N=8):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(P, N)).astype(np.float32)
    r[1] = rng.integers(0, 2, N)  # binary (majority-vote style)
    r[2] = 1.0  # unanimous right
    r[3] = 0.0  # unanimous wrong
    r[4] = 0.1  # constant but not exactly representable: mean - r is not 0 in floating point
    r[5] = 0.7
    r[6] = rng.uniform(size=N)
    r[7, :] = 0.3
    r[7, 0] = 0.3000001  # almost constant: a tiny, non-zero spread
    return r


@pytest.mark.parametrize("name", NAMES)
def test_estimators_match_float64_reference(name):
    r = _rewards()
    got = np.asarray(adv_fn(name, jnp.asarray(r)))
    want = ref_advantages(name, r)
    assert got.dtype == np.float32 and got.shape == r.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    for p in (2, 3, 4, 5):  # zero-variance groups: exactly 0, not 1e-11 and not NaN
        assert np.all(got[p] == 0.0), (name, p, got[p])
    # the almost-constant group is not treated as constant
    assert np.any(got[7] != 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_valid_mask(name):
    r = _rewards(seed=1)
    rng = np.random.default_rng(2)
    valid = rng.uniform(size=r.shape) < 0.7
    valid[0] = False  # dropped group (dynamic sampling): all zeros
    valid[8] = False
    valid[8, 3] = True  # a single valid response
    valid[2, :] = True
    valid[9, :] = True
    valid[9, 5] = False
    r[9, :] = 2.0
    r[9, 5] = -7.0  # constant among the valid ones; the invalid outlier must not count
    r_nan = r.copy()
    r_nan[~valid] = np.nan  # whatever sits in invalid slots must not leak
    got = np.asarray(adv_fn(name, jnp.asarray(r_nan), valid=jnp.asarray(valid)))
    want = ref_advantages(name, r, valid)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.all(got[~valid] == 0.0)
    assert np.all(got[0] == 0.0) and np.all(got[9] == 0.0)
    assert np.all(np.isfinite(got))
    if name in ("drgrpo", "rloo"):
        assert got[8, 3] == r[8, 3]  # singleton: verl's mean 0 (and, for rloo, unchanged score)
    if name == "grpo":
        np.testing.assert_allclose(got[8, 3], r[8, 3] / (1 + 1e-6), rtol=1e-6)


def test_ttrl_n_train_mask_equals_slicing():
    """Training on the first n_train responses: masking the rest equals computing on the slice."""
    r = _rewards(seed=3)
    n_train = 5
    valid = np.zeros(r.shape, bool)
    valid[:, :n_train] = True
    for name in ("grpo", "drgrpo", "rloo"):
        masked = np.asarray(adv_fn(name, r, valid=valid))
        sliced = np.asarray(adv_fn(name, r[:, :n_train]))
        np.testing.assert_allclose(masked[:, :n_train], sliced, rtol=1e-6, atol=1e-7)
        assert np.all(masked[:, n_train:] == 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_single_response_groups(name):
    r = np.array([[0.5], [1.0], [0.0], [-2.0], [0.25]], np.float32)
    got = np.asarray(adv_fn(name, r))
    np.testing.assert_allclose(got, ref_advantages(name, r), rtol=RTOL, atol=ATOL)
    assert np.all(np.isfinite(got))
    one = np.asarray(adv_fn(name, np.array([[3.0]], np.float32)))
    assert np.all(np.isfinite(one))
    if name == "reinforce_pp":
        assert one[0, 0] == 0.0  # a batch of one response has no variance: 0 (verl would divide by 0)


def test_reinforce_pp_token_weighting():
    """verl whitens over tokens: long responses weigh more in the batch mean / variance."""
    r = _rewards(seed=4, P=8, N=4)
    rng = np.random.default_rng(5)
    counts = rng.integers(1, 40, size=r.shape)
    got = np.asarray(adv_fn("reinforce_pp", r, token_counts=counts))
    want = ref_advantages("reinforce_pp", r, token_counts=counts)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    unweighted = np.asarray(adv_fn("reinforce_pp", r))
    assert np.max(np.abs(unweighted - got)) > 1e-3  # the weighting matters
    for p in (2, 3, 4, 5):
        assert np.all(got[p] == 0.0)
    # Equal lengths L differ from unweighted only by verl's token-level Bessel factor:
    # var_tokens = L SS / (nL - 1) vs var_responses = SS / (n - 1).
    L, n = 7, r.size
    equal = np.asarray(adv_fn("reinforce_pp", r, token_counts=np.full(r.shape, L)))
    np.testing.assert_allclose(equal, unweighted * np.sqrt((n * L - 1) / (L * (n - 1))), rtol=RTOL, atol=ATOL)


def test_reinforce_pp_whole_batch_statistics():
    """The std is over the batch, not the group: scaling one group's spread changes the others."""
    r = _rewards(seed=6, P=8, N=5)
    r2 = r.copy()
    r2[0] *= 10.0
    a = np.asarray(adv_fn("reinforce_pp", r))
    b = np.asarray(adv_fn("reinforce_pp", r2))
    assert not np.allclose(a[1], b[1])
    g = np.asarray(adv_fn("grpo", r))
    g2 = np.asarray(adv_fn("grpo", r2))
    np.testing.assert_allclose(g[1:], g2[1:], rtol=1e-6)  # grpo is per group


def test_verl_aliases_eager_and_group_is_constant():
    """verl's names give the same estimator; the eager path agrees with the jitted one."""
    r = jnp.asarray(_rewards(seed=7))
    valid = jnp.asarray(np.random.default_rng(8).uniform(size=r.shape) < 0.8)
    for alias, name in (("dr_grpo", "drgrpo"), ("reinforce_plus_plus_baseline", "reinforce_pp")):
        np.testing.assert_allclose(np.asarray(A.compute_advantages(alias, r, valid=valid)),
                                   np.asarray(adv_fn(name, r, valid=valid)), rtol=1e-6, atol=1e-7)
    const = np.asarray(A.group_is_constant(r, valid))
    rn, vn = np.asarray(r), np.asarray(valid)
    want = [vn[p].sum() >= 2 and len(set(rn[p][vn[p]].tolist())) == 1 for p in range(rn.shape[0])]
    np.testing.assert_array_equal(const, want)
    assert const[2] and const[3] and not const[0]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        A.compute_advantages("ppo", jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"rewards must be \[P, N\]"):
        A.compute_advantages("grpo", jnp.zeros((6,)))
    with pytest.raises(ValueError, match="valid must have the shape"):
        A.compute_advantages("grpo", jnp.zeros((2, 3)), valid=jnp.ones((3, 2), bool))
    with pytest.raises(ValueError, match="token_counts must have the shape"):
        A.compute_advantages("reinforce_pp", jnp.zeros((2, 3)), token_counts=jnp.ones((6,)))
