"""Theorem 1 of the paper, simulated exactly: majority-vote URLVR sharpens onto the INITIAL majority.

A categorical policy π over K items (answers, or full sequences each carrying an answer id) follows
the ideal KL-regularised update with π_ref := π_k:

    π_{k+1}(y) ∝ π_k(y) · exp(r_k(y)/β),     r_k(y) = 1[ans(y) = m_k],

where m_k is the majority answer at step k:
  population version (n_samples=None): m_k = argmax_a π_k(a), the answer with the largest mass
      (first answer id on exact ties) — the N → ∞ limit of the vote;
  sampled version (n_samples=N): m_k = the most frequent answer among N i.i.d. draws from π_k, ties
      to the first seen in draw order (the on-device vote's rule); the update itself stays exact
      (it applies to every item, drawn or not).
With p_k the majority mass, p_{k+1} = p_k e^{1/β} / (p_k e^{1/β} + 1 − p_k): the odds grow by e^{1/β}
per step, so 1 − p_k → 0 geometrically with rate e^{−1/β}, and the limit is π_0 renormalised on the
items whose answer is the initial majority — right or wrong.

Everything is float64 NumPy on the host and done in log space; 1 − p_k is computed as the sum of the
other items' masses (never as 1 − p, which would cancel to 0 long before the masses underflow).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Trajectory", "simulate_majority_vote", "closed_form_majority_mass", "theoretical_rate", "measured_rate"]


@dataclass(frozen=True)
class Trajectory:
    """probs [S+1, K]: π_k over items; answer_mass [S+1, A]: π_k per answer; majority [S]: m_k, the
    answer rewarded at step k; winner: argmax answer of π_S; initial_majority: argmax answer of π_0;
    residual [S+1]: 1 − π_k(winner answer), as the sum of the other items' masses."""

    probs: np.ndarray
    answer_mass: np.ndarray
    majority: np.ndarray
    residual: np.ndarray
    winner: int
    initial_majority: int
    beta: float
    n_samples: int | None


def theoretical_rate(beta: float) -> float:
    """Asymptotic per-step contraction factor of 1 − p_k: e^{−1/β}."""
    return float(np.exp(-1.0 / beta))


def closed_form_majority_mass(p0: float, beta: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(p_k, 1 − p_k) for k = 0..steps from odds_k = odds_0 · e^{k/β} (population version, fixed majority)."""
    k = np.arange(steps + 1, dtype=np.float64)
    log_odds = np.log(p0) - np.log1p(-p0) + k / beta
    p = np.exp(-np.logaddexp(0.0, -log_odds))  # sigmoid, overflow-free
    residual = np.exp(-np.logaddexp(0.0, log_odds))
    return p, residual


def _logsumexp(x: np.ndarray) -> float:
    m = np.max(x)
    return float(m + np.log(np.sum(np.exp(x - m))))


def simulate_majority_vote(
    p0,
    beta: float,
    steps: int,
    *,
    answers=None,
    n_samples: int | None = None,
    seed: int = 0,
) -> Trajectory:
    """Run `steps` ideal KL-regularised updates with the majority-vote reward (module docstring).

    p0 [K]: initial distribution over items (normalised here; must be positive). answers [K] int:
    the answer id of each item (default: item k has answer k). n_samples: None for the population
    version, else the vote size N of the sampled version (numpy Generator seeded with `seed`).
    """
    p0 = np.asarray(p0, dtype=np.float64)
    if p0.ndim != 1 or p0.size < 2 or not np.all(np.isfinite(p0)) or np.any(p0 <= 0):
        raise ValueError(f"theory.simulate_majority_vote: p0 must be a 1-D vector of >= 2 positive masses, got {p0!r}")
    if not beta > 0:
        raise ValueError(f"theory.simulate_majority_vote: beta must be > 0, got {beta!r}")
    if int(steps) < 1:
        raise ValueError(f"theory.simulate_majority_vote: steps must be >= 1, got {steps!r}")
    if n_samples is not None and int(n_samples) < 1:
        raise ValueError(f"theory.simulate_majority_vote: n_samples must be None or >= 1, got {n_samples!r}")
    answers = np.arange(p0.size) if answers is None else np.asarray(answers)
    if answers.shape != p0.shape or not np.issubdtype(answers.dtype, np.integer) or answers.min() < 0:
        raise ValueError(
            f"theory.simulate_majority_vote: answers must be non-negative int ids, one per item of p0 {p0.shape}, "
            f"got {answers!r}"
        )
    n_ans = int(answers.max()) + 1
    rng = np.random.default_rng(seed)

    logp = np.log(p0) - _logsumexp(np.log(p0))
    log_traj = [logp]
    majority = []
    for _ in range(int(steps)):
        p = np.exp(logp)
        if n_samples is None:
            m = int(np.argmax(np.bincount(answers, weights=p, minlength=n_ans)))
        else:
            drawn = answers[rng.choice(p.size, size=int(n_samples), p=p / p.sum())]
            counts = np.bincount(drawn, minlength=n_ans)
            tied = np.flatnonzero(counts == counts.max())
            first_seen = {int(a): i for i, a in reversed(list(enumerate(drawn)))}
            m = int(min(tied, key=lambda a: first_seen[int(a)]))
        majority.append(m)
        logp = logp + (answers == m) / beta
        logp = logp - _logsumexp(logp)
        log_traj.append(logp)

    probs = np.exp(np.stack(log_traj))
    answer_mass = np.stack([np.bincount(answers, weights=row, minlength=n_ans) for row in probs])
    winner = int(np.argmax(answer_mass[-1]))
    residual = probs[:, answers != winner].sum(axis=1)
    return Trajectory(
        probs=probs,
        answer_mass=answer_mass,
        majority=np.asarray(majority),
        residual=residual,
        winner=winner,
        initial_majority=int(np.argmax(answer_mass[0])),
        beta=float(beta),
        n_samples=None if n_samples is None else int(n_samples),
    )


def measured_rate(trajectory, tail: float = 1e-2, floor: float = 1e-250) -> float:
    """Geometric rate of 1 − p_k, fitted in its asymptotic regime.

    trajectory: a Trajectory, or a 1-D array of residuals 1 − p_k at steps 0, 1, 2, ...
    Least-squares fit of log(1 − p_k) = a + k·log(ρ) over the steps with floor < 1 − p_k ≤ tail (the
    early transient contracts more slowly — factor 1/(p + (1 − p)e^{−1/β}) ≥ 1 of e^{−1/β} — and values
    near float64 underflow are not trusted). Returns ρ; raises if fewer than 3 such steps exist.
    """
    res = np.asarray(trajectory.residual if isinstance(trajectory, Trajectory) else trajectory, dtype=np.float64)
    if res.ndim != 1:
        raise ValueError(f"theory.measured_rate: residuals must be 1-D (one per step), got shape {res.shape}")
    steps = np.arange(res.size, dtype=np.float64)
    keep = (res > floor) & (res <= tail)
    if keep.sum() < 3:
        raise ValueError(
            f"theory.measured_rate: only {int(keep.sum())} steps have {floor:g} < 1 - p_k <= {tail:g}; "
            "simulate more steps (or raise `tail`) so the asymptotic regime is reached"
        )
    slope = np.polyfit(steps[keep], np.log(res[keep]), 1)[0]
    return float(np.exp(slope))
