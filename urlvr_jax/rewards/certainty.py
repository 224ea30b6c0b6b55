"""Certainty-based intrinsic rewards (paper §2): one scalar per response from per-token statistics.

Every estimator is a pure, jittable function of a group batch:

    (stats: TokenStats with fields [P, N, T], mask [P, N, T]) -> reward [P, N] float32

P prompts, N rollouts per prompt, T response positions. `mask` is the response mask (1 for valid
tokens, EOS included; 0 for padding); T_i below is the number of valid tokens of response i.
The per-token statistics come from `urlvr_jax.rollout.stats.token_stats_from_logits`, i.e. from
z_t = logits_t / temperature and p_t = softmax(z_t).

Formulas as implemented (sums over valid positions only):

  self_certainty         (1/T_i) Σ_t [self_certainty_t − log|V|]   = (1/T_i) Σ_t KL(U ‖ p_t)
  token_entropy          −(1/T_i) Σ_t H(p_t)
  trajectory_entropy     (1/T_i) Σ_t log p_t(y_t)
  probability            exp(Σ_t log p_t(y_t))                       (no length normalisation)
  probability_disparity  (1/|A_i|) Σ_{t∈A_i} [p_t(top-1) − p_t(top-2)], A_i = answer ∩ valid tokens

A response with no valid token (or, for probability_disparity, no answer token) gets reward 0, never
NaN. Padding positions are excluded with `where`, not multiplication, so NaN/inf garbage in padded
statistics cannot leak into the reward.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from urlvr_jax.rollout.stats import TokenStats

__all__ = [
    "self_certainty",
    "token_entropy",
    "trajectory_entropy",
    "probability",
    "probability_disparity",
    "CERTAINTY_ESTIMATORS",
]


def _check(stats: TokenStats, mask: jax.Array, fn: str) -> None:
    """Shapes are static under jit, so these checks cost nothing at run time."""
    if not isinstance(stats, TokenStats):
        raise TypeError(f"certainty.{fn}: `stats` must be a urlvr_jax.rollout.stats.TokenStats, got {type(stats)!r}")
    if mask.ndim != 3:
        raise ValueError(
            f"certainty.{fn}: `mask` must have shape [P, N, T] (prompts, rollouts, positions), got {mask.shape}"
        )
    for name, arr in zip(stats._fields, stats):
        if arr.shape != mask.shape:
            raise ValueError(
                f"certainty.{fn}: stats.{name} has shape {arr.shape} but `mask` has shape {mask.shape}; "
                "both must be [P, N, T] — score the same padded response batch the mask describes"
            )


def _masked_sum(x: jax.Array, m: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(m, x.astype(jnp.float32), 0.0), axis=-1)


def _masked_mean(x: jax.Array, m: jax.Array) -> jax.Array:
    """Mean of x over positions where m, per row; 0 where a row has no such position."""
    count = jnp.sum(m, axis=-1).astype(jnp.float32)
    total = _masked_sum(x, m)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def self_certainty(stats: TokenStats, mask: jax.Array, vocab_size: int) -> jax.Array:
    """Self-certainty reward (Intuitor / RLIF): mean over valid tokens of KL(U ‖ p_t).

    vocab_size must be |V| of the logits the statistics were computed from (their last dimension,
    padded vocabulary included), because stats.self_certainty averages z over exactly those entries.
    Returns [P, N] float32, ≥ 0 up to rounding.
    """
    _check(stats, mask, "self_certainty")
    if int(vocab_size) < 1:
        raise ValueError(f"certainty.self_certainty: vocab_size must be a positive int, got {vocab_size!r}")
    m = mask.astype(bool)
    return _masked_mean(stats.self_certainty.astype(jnp.float32) - jnp.float32(math.log(int(vocab_size))), m)


def token_entropy(stats: TokenStats, mask: jax.Array) -> jax.Array:
    """Token-level entropy reward (RENT / EM-RL): −(1/T_i) Σ_t H(p_t). Returns [P, N] float32, ≤ 0."""
    _check(stats, mask, "token_entropy")
    return -_masked_mean(stats.entropy, mask.astype(bool))


def trajectory_entropy(stats: TokenStats, mask: jax.Array) -> jax.Array:
    """Trajectory-level entropy reward (EM-RL): (1/T_i) Σ_t log p_t(y_t). Returns [P, N] float32, ≤ 0."""
    _check(stats, mask, "trajectory_entropy")
    return _masked_mean(stats.logprob, mask.astype(bool))


def probability(stats: TokenStats, mask: jax.Array) -> jax.Array:
    """Sequence probability reward (RLSC): exp(Σ_t log p_t(y_t)), no length normalisation.

    Returns [P, N] float32 in [0, 1]; long responses underflow to 0 in float32 (the paper's
    length-collapse pressure). An empty response gets 0, not exp(0) = 1.
    """
    _check(stats, mask, "probability")
    m = mask.astype(bool)
    has_tokens = jnp.any(m, axis=-1)
    return jnp.where(has_tokens, jnp.exp(_masked_sum(stats.logprob, m)), 0.0)


def probability_disparity(
    stats: TokenStats, mask: jax.Array, answer_mask: jax.Array | None = None
) -> jax.Array:
    """Probability-disparity reward (RLSF): mean over answer tokens of p_t(top-1) − p_t(top-2).

    answer_mask [P, N, T] marks the answer tokens (e.g. the inside of the last \\boxed{}); it is
    intersected with `mask`. Default: every valid token. Returns [P, N] float32 in [0, 1]; 0 for a
    response without answer tokens.
    """
    _check(stats, mask, "probability_disparity")
    m = mask.astype(bool)
    if answer_mask is not None:
        if answer_mask.shape != mask.shape:
            raise ValueError(
                f"certainty.probability_disparity: `answer_mask` has shape {answer_mask.shape} but `mask` "
                f"has shape {mask.shape}; pass a [P, N, T] mask over the same response positions"
            )
        m = m & answer_mask.astype(bool)
    return _masked_mean(stats.top_gap, m)


# Name -> estimator, for the reward registry. Extra keyword arguments: self_certainty needs
# vocab_size=..., probability_disparity takes an optional answer_mask=...
CERTAINTY_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "self_certainty": self_certainty,
    "token_entropy": token_entropy,
    "trajectory_entropy": trajectory_entropy,
    "probability": probability,
    "probability_disparity": probability_disparity,
}
