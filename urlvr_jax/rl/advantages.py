"""Group-relative advantage estimators (the GRPO family) for outcome rewards.

Pure, jittable functions of a reward matrix [P, N] (P prompts, N responses each) returning advantages
[P, N] float32: one scalar per response, which the loss broadcasts over that response's tokens. They follow
verl's outcome-reward estimators (`verl/trainer/ppo/core_algos.py`, volcengine/verl; read in the
2025 `compute_grpo_outcome_advantage`, `compute_rloo_outcome_advantage`,
`compute_reinforce_plus_plus_baseline_outcome_advantage`):

  grpo          A_i = (r_i - mean_g) / (std_g + eps), std_g the UNBIASED group std (torch.std default)
  drgrpo        A_i = r_i - mean_g                     (Dr. GRPO: verl's norm_adv_by_std_in_grpo=False)
  rloo          A_i = r_i - mean_{j != i} r_j = n/(n-1) * (r_i - mean_g)
  reinforce_pp  s_i = r_i - mean_g, then whitened over the WHOLE batch (REINFORCE++-baseline):
                A_i = (s_i - mu) / sqrt(var + 1e-8), mu / var the mean / unbiased variance of s over all
                valid TOKENS of the batch (verl tiles s over the response and calls masked_whiten with
                the response mask, so a response weighs by its length). Pass `token_counts` [P, N] (the
                number of valid tokens of each response) to reproduce that weighting exactly; without it
                every response is one item (verl with equal lengths L differs from this only by its
                token-level Bessel factor: A_verl = A * sqrt((nL - 1) / (L (n - 1))), n responses).

`valid` [P, N] bool (optional, default all True) marks the responses that count: a response with
valid=False gets advantage exactly 0 and is excluded from every statistic (its group's mean / std / n, and
reinforce_pp's batch mean / variance). Use it for TTRL (vote over n_votes, train on n_train), for groups
dropped by dynamic sampling (a group with no valid response gets all zeros) and for padding groups.

Edge cases (never NaN or inf for finite rewards):
  * zero-variance group (>= 2 valid responses, all rewards equal, e.g. a unanimous majority vote): every
    estimator returns EXACTLY 0 for it. Computed explicitly (max == min), not left to r - mean in floating
    point, where mean([0.1]*3) - 0.1 != 0. For grpo/drgrpo/rloo this is what verl computes up to rounding;
    for reinforce_pp verl would give such a group -mu/sigma (non-zero only when mu != 0, i.e. with unequal
    response lengths or singleton groups) -- we give 0 so that a unanimous group never moves the policy.
  * singleton group (exactly 1 valid response, e.g. N = 1): verl's rule, mean := 0 and std := 1, so
    grpo -> r / (1 + eps), drgrpo -> r, rloo -> r (verl leaves the score unchanged when n = 1; note that
    verl's `rloo_vectorized` returns 0 there instead -- we follow the reference `rloo`), reinforce_pp ->
    s = r, then batch-whitened.
  * reinforce_pp with fewer than 2 valid items (tokens if token_counts is given, else responses) in the
    whole batch: the batch variance is undefined (verl divides by zero); we return all zeros.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

# verl's masked_whiten adds this inside the rsqrt; it is not the `eps` argument of the estimator.
WHITEN_EPS = 1e-8


def _prepare(rewards, valid, name: str):
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"{name}: rewards must be [P, N] (prompts x responses per prompt), got shape "
                         f"{rewards.shape}; reshape a flat [P*N] vector with rewards.reshape(P, N)")
    r = rewards.astype(jnp.float32)
    if valid is None:
        v = jnp.ones(r.shape, dtype=bool)
    else:
        v = jnp.asarray(valid)
        if v.shape != r.shape:
            raise ValueError(f"{name}: valid must have the shape of rewards {r.shape}, got {v.shape}")
        v = v.astype(bool)
    return r, v


def _group_stats(r: jax.Array, v: jax.Array):
    """Per-group statistics over valid responses.

    Returns (count [P,1], centered [P,N], unbiased_std [P,1], singleton [P,1], zero_var [P,1]) where
    centered = r - mean_g on valid entries (0 elsewhere). The unbiased std uses max(count - 1, 1) so it is
    finite for every group (it is only used where count >= 2).
    The mean is taken of r - r_ref, r_ref one valid reward of the group: the differences of close float32
    values are exact, so a group whose rewards differ in the last few bits (certainty rewards) still gets
    accurate advantages instead of rounding noise divided by a tiny std.
    """
    vf = v.astype(jnp.float32)
    count = jnp.sum(vf, axis=-1, keepdims=True)
    first = jnp.argmax(v, axis=-1)[:, None]
    r_ref = jnp.take_along_axis(jnp.where(v, r, 0.0), first, axis=-1)
    d = jnp.where(v, r - r_ref, 0.0)
    centered = jnp.where(v, d - jnp.sum(d, axis=-1, keepdims=True) / jnp.maximum(count, 1.0), 0.0)
    var = jnp.sum(centered * centered, axis=-1, keepdims=True) / jnp.maximum(count - 1.0, 1.0)
    rmax = jnp.max(jnp.where(v, r, -jnp.inf), axis=-1, keepdims=True)
    rmin = jnp.min(jnp.where(v, r, jnp.inf), axis=-1, keepdims=True)
    singleton = count == 1.0
    zero_var = (count >= 2.0) & (rmax == rmin)
    return count, centered, jnp.sqrt(var), singleton, zero_var


def group_is_constant(rewards: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """[P] bool: the group has >= 2 valid responses and all their rewards are equal (zero advantage).

    This is the test dynamic sampling uses to drop groups, and the per-step "zero-variance group" metric.
    """
    r, v = _prepare(rewards, valid, "group_is_constant")
    return _group_stats(r, v)[4][:, 0]


def grpo_advantages(rewards: jax.Array, eps: float = 1e-6, valid: Optional[jax.Array] = None) -> jax.Array:
    """GRPO: (r - mean_g) / (unbiased std_g + eps). rewards/valid [P, N] -> [P, N] float32."""
    r, v = _prepare(rewards, valid, "grpo_advantages")
    _, centered, std, singleton, zero_var = _group_stats(r, v)
    # verl: a one-response group has mean 0 and std 1
    adv = jnp.where(singleton, r / (1.0 + eps), centered / (std + eps))
    return jnp.where(v & ~zero_var, adv, 0.0)


def drgrpo_advantages(rewards: jax.Array, eps: float = 1e-6, valid: Optional[jax.Array] = None) -> jax.Array:
    """Dr. GRPO: r - mean_g (no std scaling; eps unused). rewards/valid [P, N] -> [P, N] float32."""
    del eps
    r, v = _prepare(rewards, valid, "drgrpo_advantages")
    _, centered, _, singleton, zero_var = _group_stats(r, v)
    return jnp.where(v & ~zero_var, jnp.where(singleton, r, centered), 0.0)


def rloo_advantages(rewards: jax.Array, eps: float = 1e-6, valid: Optional[jax.Array] = None) -> jax.Array:
    """RLOO: r_i - mean of the other valid responses = n/(n-1) (r_i - mean_g); n = valid count.

    rewards/valid [P, N] -> [P, N] float32; eps unused. A singleton group returns r (verl's `rloo`).
    """
    del eps
    r, v = _prepare(rewards, valid, "rloo_advantages")
    count, centered, _, singleton, zero_var = _group_stats(r, v)
    scale = count / jnp.maximum(count - 1.0, 1.0)
    adv = jnp.where(singleton, r, scale * centered)
    return jnp.where(v & ~zero_var, adv, 0.0)


def reinforce_pp_advantages(rewards: jax.Array, eps: float = 1e-6, valid: Optional[jax.Array] = None,
                            token_counts: Optional[jax.Array] = None) -> jax.Array:
    """REINFORCE++-baseline: group-mean baseline, then whitening over the whole batch.

    rewards/valid/token_counts [P, N] -> [P, N] float32. eps is unused (verl's whitening uses a fixed
    1e-8 inside the square root, `WHITEN_EPS`). With token_counts w (valid tokens per response), the batch
    mean and Bessel-corrected variance are token-weighted exactly as verl's masked_whiten over
    [bs, response_length]: mu = sum w s / sum w, var = sum w (s - mu)^2 / (sum w - 1).
    """
    del eps
    r, v = _prepare(rewards, valid, "reinforce_pp_advantages")
    _, centered, _, singleton, zero_var = _group_stats(r, v)
    s = jnp.where(v & ~zero_var, jnp.where(singleton, r, centered), 0.0)
    if token_counts is None:
        w = v.astype(jnp.float32)
    else:
        tc = jnp.asarray(token_counts)
        if tc.shape != r.shape:
            raise ValueError(f"reinforce_pp_advantages: token_counts must have the shape of rewards {r.shape},"
                             f" got {tc.shape}")
        # A response with no valid token contributes nothing to verl's token-level statistics either.
        w = jnp.where(v, tc.astype(jnp.float32), 0.0)
    n = jnp.sum(w)
    mu = jnp.sum(w * s) / jnp.maximum(n, 1.0)
    dev = jnp.where(w > 0, s - mu, 0.0)
    var = jnp.sum(w * dev * dev) / jnp.maximum(n - 1.0, 1.0)
    adv = (s - mu) * jax.lax.rsqrt(var + WHITEN_EPS)
    return jnp.where(v & ~zero_var & (n >= 2.0), adv, 0.0)


_ESTIMATORS: dict[str, Callable] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}
# verl's names for the same estimators, so recipes port unchanged.
_ALIASES = {"dr_grpo": "drgrpo", "reinforce_plus_plus_baseline": "reinforce_pp"}
ESTIMATORS = tuple(_ESTIMATORS)
ESTIMATOR_NAMES = ESTIMATORS + tuple(_ALIASES)  # every name compute_advantages accepts


def compute_advantages(name: str, rewards: jax.Array, eps: float = 1e-6, valid: Optional[jax.Array] = None,
                       token_counts: Optional[jax.Array] = None) -> jax.Array:
    """Dispatch by name: one of ESTIMATORS (or verl's 'dr_grpo' / 'reinforce_plus_plus_baseline').

    rewards, valid, token_counts: [P, N]; returns [P, N] float32. token_counts is only used by
    reinforce_pp (the other estimators are per-group and need no lengths). `name` must be a static string.
    """
    key = _ALIASES.get(name, name)
    if key not in _ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(_ESTIMATORS)} "
                         f"(verl aliases: {sorted(_ALIASES)})")
    if key == "reinforce_pp":
        return reinforce_pp_advantages(rewards, eps, valid, token_counts)
    return _ESTIMATORS[key](rewards, eps, valid)
