"""Theorem 1: exact simulation of majority-vote KL-regularised updates on a categorical policy.

Checks: the simulated majority mass equals the closed form odds_k = odds_0·e^{k/β} (rtol 1e-9, float64
log-space vs direct formula); the measured geometric rate of 1 − p_k is within 5% of e^{−1/β} for
several β (the issue's bound); convergence onto the INITIAL majority when it is wrong; the limit is π_0
renormalised on the majority answer's items; the finite-N sampled version.
"""
import numpy as np
import pytest

from urlvr_jax.diagnostics import theory as th

BETAS = (0.25, 0.5, 1.0, 2.0, 5.0)
P0 = np.array([0.35, 0.30, 0.20, 0.15])  # answer 0 is the initial majority
CORRECT = 1  # ... and it is WRONG: answer 1 is the correct one


@pytest.mark.parametrize("beta", BETAS)
def test_population_matches_closed_form_and_rate(beta):
    traj = th.simulate_majority_vote(P0, beta, steps=200)
    assert np.all(traj.majority == 0) and traj.winner == 0 == traj.initial_majority
    p_cf, res_cf = th.closed_form_majority_mass(P0[0], beta, 200)
    ok = res_cf > 1e-300
    np.testing.assert_allclose(traj.probs[:, 0], p_cf, rtol=1e-9)
    np.testing.assert_allclose(traj.residual[ok], res_cf[ok], rtol=1e-9)
    rate = th.measured_rate(traj)
    assert abs(rate / th.theoretical_rate(beta) - 1) < 0.05, (beta, rate, th.theoretical_rate(beta))
    # The rate is a real measurement: fitted on the raw residual array too, and far from other β's rate.
    assert th.measured_rate(traj.residual) == rate
    assert abs(rate / th.theoretical_rate(2 * beta) - 1) > 0.05


def test_converges_onto_the_wrong_initial_majority():
    traj = th.simulate_majority_vote(P0, beta=1.0, steps=60)
    acc = traj.answer_mass[:, CORRECT]
    assert traj.winner == 0 != CORRECT
    assert traj.residual[-1] < 1e-20 and traj.answer_mass[-1, 0] == 1.0
    assert acc[-1] < 1e-20 and np.all(np.diff(acc) < 0)  # the correct answer's mass only shrinks
    # Non-majority answers keep their relative proportions: π_k(1)/π_k(2) = π_0(1)/π_0(2) at every step.
    np.testing.assert_allclose(traj.probs[:, 1] / traj.probs[:, 2], P0[1] / P0[2], rtol=1e-12)


def test_limit_is_pi0_renormalised_on_the_majority_answer():
    """Items = full sequences with answer ids: answer 0 holds items {0, 1, 5} (mass 0.45) -> majority,
    although item 2 (answer 1) is the single most likely sequence."""
    p0 = np.array([0.15, 0.12, 0.30, 0.10, 0.15, 0.18])
    answers = np.array([0, 0, 1, 1, 2, 0])
    traj = th.simulate_majority_vote(p0, beta=0.5, steps=100, answers=answers)
    assert traj.initial_majority == traj.winner == 0
    on = answers == 0
    expected = np.where(on, p0 / p0[on].sum(), 0.0)
    np.testing.assert_allclose(traj.probs[-1], expected, rtol=1e-12, atol=1e-30)


def test_sampled_version():
    # Clear margin, N = 64: every seed votes the initial majority and contracts at e^{-1/β}.
    for seed in range(10):
        traj = th.simulate_majority_vote([0.5, 0.2, 0.2, 0.1], beta=1.0, steps=120, n_samples=64, seed=seed)
        assert traj.winner == traj.initial_majority == 0
        assert abs(th.measured_rate(traj) / th.theoretical_rate(1.0) - 1) < 0.05
    # Near tie, N = 4: the finite vote can lock onto another answer (counted over fixed seeds).
    winners = [
        th.simulate_majority_vote([0.30, 0.28, 0.22, 0.20], beta=1.0, steps=60, n_samples=4, seed=s).winner
        for s in range(50)
    ]
    assert sum(w != 0 for w in winners) > 0
    # Deterministic per seed.
    a = th.simulate_majority_vote(P0, 1.0, 30, n_samples=8, seed=3)
    b = th.simulate_majority_vote(P0, 1.0, 30, n_samples=8, seed=3)
    np.testing.assert_array_equal(a.probs, b.probs)


def test_first_seen_tie_break_in_the_sampled_vote():
    """N = 2 over two items of equal mass: pick a seed whose draws are (1, 0) — a 1-1 tie whose first
    seen answer is 1, where a lowest-id rule would say 0 — and check the vote went to 1."""
    seed = next(s for s in range(100) if list(np.random.default_rng(s).choice(2, size=2, p=[0.5, 0.5])) == [1, 0])
    traj = th.simulate_majority_vote([0.5, 0.5], beta=1.0, steps=1, n_samples=2, seed=seed)
    assert traj.majority[0] == 1 and traj.probs[1, 1] > 0.5


def test_measured_rate_needs_an_asymptotic_regime():
    with pytest.raises(ValueError, match="simulate more steps"):
        th.measured_rate(th.simulate_majority_vote(P0, beta=5.0, steps=5))
    with pytest.raises(ValueError, match="positive masses"):
        th.simulate_majority_vote([0.5, 0.0, 0.5], 1.0, 10)
