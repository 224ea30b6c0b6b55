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

    temperature must be > 0 (greedy decoding reports statistics at temperature 1). Written as plain
    reductions over z - max(z) that XLA fuses into two passes over the vocabulary (one max, then the
    sibling sums and maxes together); no [..., V] probability or log-probability array is materialised,
    and no sort or arg-reduction (lax.top_k lowers to a full sort on XLA:CPU, argmax to a slow
    variadic reduction).
    """
    x = logits.astype(jnp.float32)
    z = x / jnp.float32(temperature)
    m1 = jnp.max(z, axis=-1, keepdims=True)
    shifted = z - m1  # <= 0
    e = jnp.exp(shifted)
    s = jnp.sum(e, axis=-1)
    log_s = jnp.log(s)
    lse = m1[..., 0] + log_s
    z_tok = jnp.take_along_axis(z, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logprob = z_tok - lse
    # H = -sum p (z - lse) = log s - sum(e * (z - m1)) / s
    entropy = log_s - jnp.sum(e * shifted, axis=-1) / s
    self_certainty = lse - jnp.mean(z, axis=-1)
    # top-1 − top-2 = (1 - exp(z2 - z1)) / s. Ties and the runner-up are found on the raw logits:
    # XLA may round x / temperature differently in different fusions, so comparisons of z against
    # its own maximum are not exact.
    x1 = jnp.max(x, axis=-1, keepdims=True)
    ties = jnp.sum((x == x1).astype(jnp.int32), axis=-1)
    x2 = jnp.max(jnp.where(x < x1, x, -jnp.inf), axis=-1)
    runner_up = jnp.exp((x2 - x1[..., 0]) / jnp.float32(temperature))
    top_gap = jnp.where(ties > 1, 0.0, (1.0 - runner_up) / s)
    return TokenStats(logprob=logprob, entropy=entropy, self_certainty=self_certainty, top_gap=top_gap)


def first_argmax(logits: jax.Array) -> jax.Array:
    """argmax over the last axis (lowest index among ties, as jnp.argmax), int32 [...].

    As a max and a min-reduction of indices, which XLA:CPU vectorises; jnp.argmax lowers to a variadic
    (value, index) reduction that is several times slower on a [B, V] decode-step logit array.
    """
    V = logits.shape[-1]
    hit = logits == jnp.max(logits, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(idx, V - 1)  # all-NaN row: no hit
