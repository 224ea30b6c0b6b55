"""π* diagnostics against EXACT values on an enumerable case: a policy over K = 6 full sequences.

π_ref, π_θ, rewards and correctness are fixed; π* = π_ref·exp(r/β)/Z is computed exactly in float64.
1. Quadrature: every sequence once, proposal declared uniform -> the SNIS estimates are exact
   (tolerance 1e-5 abs: float32 arithmetic on O(10) numbers).
2. Monte Carlo: P = 64 groups of N = 2048 draws from π_θ (fixed seed), or from π_ref. The mean over
   groups must lie within 5 standard errors (SE = across-group std / sqrt(P)) of the exact value; the
   SNIS / log-plug-in bias is O(1/N) ≈ 1e-3·(E[w²]), well inside that. SE itself is asserted small
   (< 0.02) so the check has teeth.
"""
import numpy as np
import pytest

from urlvr_jax.diagnostics import optimal_policy as op

K = 6
PI_REF = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
PI_THETA = np.array([0.10, 0.15, 0.25, 0.20, 0.18, 0.12])
REWARD = np.array([1.0, 0.0, 1.0, 0.3, 0.0, 0.7])  # e.g. majority-vote-like plus a continuous part
CORRECT = np.array([0, 0, 1, 1, 0, 1], np.float64)
BETA = 0.5
P_GROUPS, N_DRAWS = 64, 2048


def _exact():
    pistar = PI_REF * np.exp(REWARD / BETA)
    z = pistar.sum()
    pistar /= z
    return {
        "accuracy": float(pistar @ CORRECT),
        "entropy": float(-(pistar * np.log(pistar)).sum()),
        "kl_to_ref": float((pistar * np.log(pistar / PI_REF)).sum()),
        "kl_policy_to_pistar": float((PI_THETA * np.log(PI_THETA / pistar)).sum()),
        "log_partition": float(np.log(z)),
        "pistar": pistar,
    }


def _tile(x, idx):
    return x[idx].astype(np.float32)


def test_quadrature_is_exact():
    """All K sequences once with a declared uniform proposal: w_k = π*(k) exactly, Ẑ = Z exactly."""
    ex = _exact()
    idx = np.arange(K)[None]
    est = op.group_estimates(
        _tile(REWARD, idx), _tile(CORRECT, idx), _tile(np.log(PI_REF), idx), BETA,
        policy_logprob=np.full((1, K), np.log(1.0 / K), np.float32),
    )
    assert abs(float(est["accuracy"][0]) - ex["accuracy"]) < 1e-5
    assert abs(float(est["entropy"][0]) - ex["entropy"]) < 1e-5
    assert abs(float(est["kl_to_ref"][0]) - ex["kl_to_ref"]) < 1e-5
    assert abs(float(est["log_partition"][0]) - ex["log_partition"]) < 1e-5
    kl_uniform = float((np.full(K, 1 / K) * np.log((1 / K) / ex["pistar"])).sum())
    assert abs(float(est["kl_policy_to_pistar"][0]) - kl_uniform) < 1e-5
    w_ess = 1.0 / (ex["pistar"] ** 2).sum() / K
    assert abs(float(est["ess_frac"][0]) - w_ess) < 1e-5


@pytest.mark.parametrize("proposal", ["policy", "reference"])
def test_monte_carlo_matches_exact_within_standard_error(proposal):
    ex = _exact()
    rng = np.random.default_rng(1234)
    probs = PI_THETA if proposal == "policy" else PI_REF
    idx = rng.choice(K, size=(P_GROUPS, N_DRAWS), p=probs)
    pol = _tile(np.log(PI_THETA), idx) if proposal == "policy" else None
    args = (_tile(REWARD, idx), _tile(CORRECT, idx), _tile(np.log(PI_REF), idx), BETA)
    est = {k: np.asarray(v, np.float64) for k, v in op.group_estimates(*args, policy_logprob=pol).items()}
    keys = ["accuracy", "entropy", "kl_to_ref", "log_partition"]
    if proposal == "policy":  # KL(π_θ‖π*) is only meaningful when the samples come from π_θ
        keys.append("kl_policy_to_pistar")
    for key in keys:
        mean, se = est[key].mean(), est[key].std(ddof=1) / np.sqrt(P_GROUPS)
        assert se < 0.02, (key, se)
        assert abs(mean - ex[key]) < 5 * se, (key, mean, ex[key], se)
    # The summary is the mean of the per-prompt values, under the stable names.
    summ = op.optimal_policy_diagnostics(*args, policy_logprob=pol)
    assert set(summ) == set(op.DIAGNOSTIC_NAMES)
    assert abs(summ["pistar/accuracy"] - est["accuracy"].mean()) < 1e-6
    sampler_acc = float(probs @ CORRECT)
    assert abs(summ["pistar/policy_accuracy"] - sampler_acc) < 5 * np.sqrt(sampler_acc * (1 - sampler_acc) / idx.size)
    # π* tilts π_ref towards the rewarded sequences; in this case that raises accuracy above π_ref's 0.37.
    assert summ["pistar/accuracy"] > float(PI_REF @ CORRECT) + 0.03
    assert 0 < summ["pistar/ess_frac"] <= 1


def test_ignoring_the_policy_ratio_would_be_wrong():
    """The weights must include log π_ref − log π_θ: without them the accuracy estimate is off by far
    more than its standard error (guards against silently dropping policy_logprob)."""
    ex = _exact()
    rng = np.random.default_rng(7)
    idx = rng.choice(K, size=(P_GROUPS, N_DRAWS), p=PI_THETA)
    args = (_tile(REWARD, idx), _tile(CORRECT, idx), _tile(np.log(PI_REF), idx), BETA)
    wrong = float(np.mean(op.group_estimates(*args)["accuracy"]))
    right = float(np.mean(op.group_estimates(*args, policy_logprob=_tile(np.log(PI_THETA), idx))["accuracy"]))
    assert abs(right - ex["accuracy"]) < 0.01 < abs(wrong - ex["accuracy"])


def test_bad_inputs():
    r = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="beta"):
        op.group_estimates(r, r, r, 0.0)
    with pytest.raises(ValueError, match="ref_logprob"):
        op.group_estimates(r, r, np.zeros((2, 4)), 1.0)
    with pytest.raises(ValueError, match=r"\[P, N\]"):
        op.group_estimates(np.zeros(3), np.zeros(3), np.zeros(3), 1.0)
