"""The policy loss: PPO clip with clip-higher and dual-clip, KL to a reference, entropy bonus, aggregation.

Pure functions of per-token arrays [B, T] (B = flattened responses, T = padded response length) with a
validity mask [B, T] (1 = a real response token: EOS included, padding and masked truncated responses
excluded). Everything is computed in float32 whatever the input dtype. Semantics follow verl
(`verl/trainer/ppo/core_algos.py` of volcengine/verl: `compute_policy_loss_vanilla`, `agg_loss`,
`kl_penalty`; the actor adds `kl_loss_coef * agg_loss(kl)` and subtracts `entropy_coeff * agg_loss(H)`;
`apply_kl_penalty` in the ray trainer for the KL-in-reward variant):

  log_ratio = clip(logp - logp_old, -20, 20); ratio = exp(log_ratio)          (verl clamps for stability)
  pg1 = -A ratio;  pg2 = -A clip(ratio, 1 - clip_low, 1 + clip_high);  pg = max(pg1, pg2)
  dual clip (A < 0 only): pg = min(pg, -A c), c = dual_clip > 1            (dual_clip=None disables it)
  k1 = logp - logp_ref;  k2 = 0.5 (logp - logp_ref)^2;
  k3 = clip(exp(x) - x - 1, -10, 10) with x = clip(logp_ref - logp, -20, 20)   (verl's low_var_kl)
  loss = agg(pg) + kl_coef agg(k) - entropy_coef agg(H)

Aggregation (`agg`) of a per-token matrix l with mask m; L_b = sum_t m_bt; S = number of sequences with
L_b > 0; N = sum_b L_b:
  token-mean               sum_bt m l / N                     (verl's default and ours)
  seq-mean-token-mean      sum_b (sum_t m l / L_b) / S
  seq-mean-token-sum       sum_b sum_t m l / S
  seq-mean-token-sum-norm  sum_b sum_t m l / (S T_max)       (Dr. GRPO; T_max = max_response_length,
                           default T. verl divides by T_max only, without S: a constant factor B)
verl averages over every row (an all-padding row gives NaN under seq-mean-token-mean); we count only
non-empty rows in S, so all-padding rows (e.g. filler for a dropped group) are inert. An empty batch
gives 0, not NaN.

Micro-batching: pass `global_num_tokens` (N) and `global_num_seqs` (S) of the WHOLE batch (see
`count_valid`); each micro-batch then returns sum_local / global_count and the sum of the micro-batch
losses -- and of their gradients -- is the full-batch loss. Micro-batches must keep whole sequences (and,
for the advantages, whole groups); T may differ between micro-batches (pass max_response_length for
seq-mean-token-sum-norm so T_max does not change with the padding).
"""
from __future__ import annotations

from numbers import Number
from typing import Optional

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
# verl's kl_penalty names -> ours.
_KL_NAMES = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
KL_ESTIMATORS = tuple(_KL_NAMES)
LOG_RATIO_CLAMP = 20.0  # verl: clamp(logp - logp_old, -20, 20) before exp, and the same on the k3 log ratio
K3_CLAMP = 10.0  # verl: clamp(k3, -10, 10)

# How to combine each metric over micro-batches (given global counts): "sum" metrics are normalised by the
# global counts, so their micro-batch values add up to the full-batch value; "max" metrics take the max.
METRIC_REDUCTIONS = {
    "loss": "sum", "pg_loss": "sum", "kl": "sum", "entropy": "sum",
    "clip_frac": "sum", "dual_clip_frac": "sum", "approx_kl": "sum", "ppo_kl": "sum",
    "ratio_mean": "sum", "ratio_max": "max",
}


def _kl_name(estimator: str) -> str:
    if estimator not in _KL_NAMES:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {list(_KL_NAMES)} "
                         "(k1 = 'kl', k2 = 'mse', k3 = 'low_var_kl' in verl)")
    return _KL_NAMES[estimator]


def kl_penalty(logprob: jax.Array, ref_logprob: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token KL(pi || pi_ref) estimate [B, T] from sampled-token log-probs [B, T] (verl `kl_penalty`).

    k1 = logp - logp_ref (unbiased, high variance); k2 = 0.5 (logp - logp_ref)^2;
    k3 = exp(x) - x - 1, x = logp_ref - logp clamped to [-20, 20], result clamped to [-10, 10] (the
    clamps are verl's; where one is active the gradient is 0).
    """
    kind = _kl_name(estimator)
    logprob = jnp.asarray(logprob, jnp.float32)
    ref_logprob = jnp.asarray(ref_logprob, jnp.float32)
    if kind == "k1":
        return logprob - ref_logprob
    if kind == "k2":
        d = logprob - ref_logprob
        return 0.5 * d * d
    x = jnp.clip(ref_logprob - logprob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(x) - x - 1.0, -K3_CLAMP, K3_CLAMP)


def count_valid(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(num_tokens, num_seqs) float32 scalars of a mask [B, T]: valid tokens, and rows with >= 1 valid token.

    Sum these over all micro-batches (and hosts) of a batch to get `global_num_tokens` / `global_num_seqs`.
    """
    m = jnp.asarray(mask) > 0
    lengths = jnp.sum(m, axis=-1, dtype=jnp.float32)
    return jnp.sum(lengths), jnp.sum((lengths > 0).astype(jnp.float32))


def aggregate(loss_mat: jax.Array, mask: jax.Array, aggregation: str = "token-mean", *,
              global_num_tokens=None, global_num_seqs=None, max_response_length=None) -> jax.Array:
    """Reduce a per-token matrix [B, T] to a scalar (formulas in the module docstring).

    Masked entries are ignored even if they hold NaN/inf. global_num_tokens / global_num_seqs replace the
    local N / S (micro-batching); max_response_length replaces T for seq-mean-token-sum-norm.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {list(AGGREGATIONS)}")
    m = jnp.asarray(mask) > 0
    masked = jnp.where(m, jnp.asarray(loss_mat, jnp.float32), 0.0)
    seq_sum = jnp.sum(masked, axis=-1)
    lengths = jnp.sum(m, axis=-1, dtype=jnp.float32)
    if aggregation == "token-mean":
        n = jnp.sum(lengths) if global_num_tokens is None else jnp.asarray(global_num_tokens, jnp.float32)
        return jnp.sum(seq_sum) / jnp.maximum(n, 1.0)
    s = (jnp.sum((lengths > 0).astype(jnp.float32)) if global_num_seqs is None
         else jnp.asarray(global_num_seqs, jnp.float32))
    s = jnp.maximum(s, 1.0)
    if aggregation == "seq-mean-token-mean":
        return jnp.sum(seq_sum / jnp.maximum(lengths, 1.0)) / s
    if aggregation == "seq-mean-token-sum":
        return jnp.sum(seq_sum) / s
    t_max = masked.shape[-1] if max_response_length is None else max_response_length
    return jnp.sum(seq_sum) / (s * jnp.asarray(t_max, jnp.float32))


def _check_tokens(name: str, x, shape, fn: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.shape != shape:
        raise ValueError(f"{fn}: {name} must have the shape of logprob {shape} ([B, T]), got {x.shape}")
    return x


def _check_static(clip_low, clip_high, dual_clip):
    if isinstance(clip_low, Number) and not 0.0 <= clip_low < 1.0:
        raise ValueError(f"policy_loss: clip_low={clip_low} must be in [0, 1) (ratio lower bound 1 - clip_low)")
    if isinstance(clip_high, Number) and clip_high < 0.0:
        raise ValueError(f"policy_loss: clip_high={clip_high} must be >= 0")
    if isinstance(dual_clip, Number) and not dual_clip > 1.0:
        raise ValueError(f"policy_loss: dual_clip={dual_clip} must be > 1 (verl's clip_ratio_c), or None to "
                         "disable the dual clip")


def policy_loss(logprob: jax.Array, old_logprob: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                clip_low=0.2, clip_high=0.2, dual_clip: Optional[float] = 3.0,
                aggregation: str = "token-mean", ref_logprob: Optional[jax.Array] = None, kl_coef=0.0,
                kl_estimator: str = "k3", entropy: Optional[jax.Array] = None, entropy_coef=0.0,
                global_num_tokens=None, global_num_seqs=None, max_response_length=None):
    """PPO-clip loss (+ KL to the reference, - entropy bonus) and its metrics.

    logprob, old_logprob, mask, ref_logprob, entropy: [B, T]; advantages: [B] (broadcast over T) or [B, T].
    logprob is the one to differentiate; old_logprob / ref_logprob / advantages are treated as data
    (stop their gradients upstream if they come out of the same computation).
    Returns (loss scalar float32, metrics dict of float32 scalars; see METRIC_REDUCTIONS):
      loss, pg_loss, kl (aggregated estimator; 0 without ref_logprob), entropy (aggregated; 0 without),
      clip_frac (tokens where the ratio clip binds: pg2 > pg1), dual_clip_frac (A < 0 tokens where the
      dual clip binds), approx_kl = 0.5 mean (logp - logp_old)^2, ppo_kl = mean (logp_old - logp) (verl's,
      on the clamped log ratio), ratio_mean, ratio_max -- token means over valid tokens, normalised by
      global_num_tokens when given.
    aggregation, kl_estimator and whether dual_clip / ref_logprob / entropy are None must be static.
    """
    fn = "policy_loss"
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"{fn}: unknown aggregation {aggregation!r}; choose one of {list(AGGREGATIONS)}")
    _kl_name(kl_estimator)
    _check_static(clip_low, clip_high, dual_clip)
    logprob = jnp.asarray(logprob)
    if logprob.ndim != 2:
        raise ValueError(f"{fn}: logprob must be [B, T] (responses x tokens), got shape {logprob.shape}")
    shape = logprob.shape
    old_logprob = _check_tokens("old_logprob", old_logprob, shape, fn)
    m = _check_tokens("mask", mask, shape, fn) > 0
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.shape == (shape[0],):
        adv = adv[:, None]
    elif adv.shape != shape:
        raise ValueError(f"{fn}: advantages must be [B] = ({shape[0]},) or [B, T] = {shape}, got {adv.shape}")
    if ref_logprob is None and isinstance(kl_coef, Number) and kl_coef != 0.0:
        raise ValueError(f"{fn}: kl_coef={kl_coef} needs ref_logprob (the frozen reference's log-probs)")
    if entropy is None and isinstance(entropy_coef, Number) and entropy_coef != 0.0:
        raise ValueError(f"{fn}: entropy_coef={entropy_coef} needs the per-token entropy [B, T]")

    # Zero the padding first: garbage (even -inf) there must not reach exp() or the gradient.
    lp = jnp.where(m, logprob.astype(jnp.float32), 0.0)
    old = jnp.where(m, old_logprob.astype(jnp.float32), 0.0)
    agg = dict(global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs,
               max_response_length=max_response_length)

    log_ratio = jnp.clip(lp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = jnp.maximum(pg1, pg2)
    clip_active = pg2 > pg1
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        dual_active = (pg > pg3) & (adv < 0)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    else:
        dual_active = jnp.zeros(shape, bool)
    pg_loss = aggregate(pg, m, aggregation, **agg)
    loss = pg_loss

    zero = jnp.zeros((), jnp.float32)
    kl = zero
    if ref_logprob is not None:
        ref = jnp.where(m, _check_tokens("ref_logprob", ref_logprob, shape, fn).astype(jnp.float32), 0.0)
        kl = aggregate(kl_penalty(lp, ref, kl_estimator), m, aggregation, **agg)
        loss = loss + kl_coef * kl
    ent = zero
    if entropy is not None:
        h = jnp.where(m, _check_tokens("entropy", entropy, shape, fn).astype(jnp.float32), 0.0)
        ent = aggregate(h, m, aggregation, **agg)
        loss = loss - entropy_coef * ent

    def token_mean(x):
        return aggregate(x, m, "token-mean", global_num_tokens=global_num_tokens)

    d = lp - old
    metrics = dict(
        loss=loss, pg_loss=pg_loss, kl=kl, entropy=ent,
        clip_frac=token_mean(clip_active.astype(jnp.float32)),
        dual_clip_frac=token_mean(dual_active.astype(jnp.float32)),
        approx_kl=token_mean(0.5 * d * d),
        ppo_kl=token_mean(-log_ratio),
        ratio_mean=token_mean(ratio),
        ratio_max=jnp.max(jnp.where(m, ratio, 0.0)),  # ratio > 0, so 0 only for an empty batch
    )
    return loss, jax.lax.stop_gradient(metrics)


def kl_in_reward(old_logprob: jax.Array, ref_logprob: jax.Array, mask: jax.Array, *, kl_coef,
                 kl_estimator: str = "k1"):
    """KL penalty to subtract from each response's reward (verl's use_kl_in_reward / apply_kl_penalty).

    old_logprob, ref_logprob, mask: [B, T] (the behaviour policy's log-probs, as in verl).
    Returns (penalty [B] float32 = kl_coef * sum_t m kl_t, metrics) where kl_t is `kl_penalty(old, ref,
    kl_estimator)` (verl's default for the reward is 'kl' = k1). verl subtracts kl_coef * kl_t from the
    token-level rewards, which outcome estimators sum over the response: the same as rewards - penalty.
    metrics: kl_in_reward = mean over non-empty responses of the per-response token-mean kl_t (verl's
    actor/reward_kl_penalty), kl_in_reward_coef.
    """
    old_logprob = jnp.asarray(old_logprob)
    if old_logprob.ndim != 2:
        raise ValueError(f"kl_in_reward: old_logprob must be [B, T], got shape {old_logprob.shape}")
    shape = old_logprob.shape
    ref = _check_tokens("ref_logprob", ref_logprob, shape, "kl_in_reward")
    m = _check_tokens("mask", mask, shape, "kl_in_reward") > 0
    kld = kl_penalty(jnp.where(m, old_logprob, 0.0), jnp.where(m, ref, 0.0), kl_estimator)
    kld = jnp.where(m, kld, 0.0)
    seq_sum = jnp.sum(kld, axis=-1)
    penalty = kl_coef * seq_sum
    metrics = dict(kl_in_reward=aggregate(kld, m, "seq-mean-token-mean"),
                   kl_in_reward_coef=jnp.asarray(kl_coef, jnp.float32))
    return penalty.astype(jnp.float32), metrics
