"""Per-token statistics of a sampled token under its sampling distribution.

These are the inputs of every certainty reward (paper §2). With z_t = logits / temperature and
p_t = softmax(z_t):

  logprob        log p_t(y_t)                               (trajectory entropy, probability rewards)
  entropy        H(p_t) = -Σ_j p_tj log p_tj                (token-entropy reward)
  self_certainty logsumexp(z_t) - mean_j z_tj               (self-certainty = this - log|V|, i.e. KL(U‖p_t))
  top_gap        p_t(top-1) - p_t(top-2)                    (probability-disparity reward)

All reductions over the vocabulary run in float32 on device, one position at a time or in chunks,
so a [B, T, V] tensor never needs to reach the host.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TokenStats(NamedTuple):
    """Per-token statistics, each float32 of the same leading shape as the sampled tokens."""

    logprob: jax.Array
    entropy: jax.Array
    self_certainty: jax.Array
    top_gap: jax.Array


def token_stats_from_logits(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> TokenStats:
    """Statistics of `tokens` [...] under softmax(logits / temperature), logits [..., V].

    temperature must be > 0 (greedy decoding reports statistics at temperature 1).
    """
    z = logits.astype(jnp.float32) / jnp.float32(temperature)
    lse = jax.nn.logsumexp(z, axis=-1)
    log_p = z - lse[..., None]
    p = jnp.exp(log_p)
    entropy = -jnp.sum(p * log_p, axis=-1)
    logprob = jnp.take_along_axis(log_p, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    self_certainty = lse - jnp.mean(z, axis=-1)
    # top-1 − top-2 with two max reductions (lax.top_k lowers to a full sort on XLA's CPU backend)
    first = jnp.argmax(p, axis=-1)
    p1 = jnp.max(p, axis=-1)
    others = jnp.where(jnp.arange(p.shape[-1]) == first[..., None], -jnp.inf, p)
    top_gap = p1 - jnp.max(others, axis=-1)
    return TokenStats(logprob=logprob, entropy=entropy, self_certainty=self_certainty, top_gap=top_gap)
