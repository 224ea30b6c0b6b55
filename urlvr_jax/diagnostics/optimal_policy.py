"""Closed-form optimal-policy diagnostics (paper §3): where is KL-regularised training heading?

The KL-regularised objective  max_π E_π[r] − β KL(π ‖ π_ref)  is maximised by
    π*(y|x) = π_ref(y|x) · exp(r(x,y)/β) / Z(x),      Z(x) = E_{π_ref}[exp(r/β)].
Between epochs we sample N responses per evaluation prompt from the current policy π_θ, score them
(reward r_i, GT correctness c_i, sequence log-probs log π_ref(y_i) and log π_θ(y_i)) and estimate
π*'s properties by self-normalised importance sampling (SNIS) with proposal π_θ:

    a_i   = r_i/β + log π_ref(y_i) − log π_θ(y_i)          (log of π*·Z / π_θ at y_i)
    w_i   = softmax_i(a_i)                                   (self-normalised weights, Σ w_i = 1)
    log Ẑ = logsumexp_i(a_i) − log N                        (log of the unbiased estimate of Z)

    accuracy(π*)         Σ_i w_i c_i                                     — the predicted accuracy ceiling
    H(π*)                −Σ_i w_i (log π_ref(y_i) + r_i/β) + log Ẑ       — sequence-level entropy, nats
    KL(π* ‖ π_ref)       Σ_i w_i r_i/β − log Ẑ
    KL(π_θ ‖ π*)         (1/N) Σ_i (log π_θ(y_i) − log π_ref(y_i) − r_i/β) + log Ẑ = log Ẑ − mean_i a_i
                         — a plain Monte-Carlo mean under π_θ (the samples' own distribution), ≥ 0
                         by Jensen, plus the log Ẑ plug-in.
    ess_frac             (1/Σ_i w_i²)/N, the SNIS effective sample size as a share of N.

When the samples come from π_ref itself (policy_logprob=None), a_i = r_i/β and w_i ∝ exp(r_i/β).
The SNIS ratios and log Ẑ are consistent but biased at O(1/N) (log Ẑ underestimates log Z by about
Var(Ẑ)/(2Z²)); watch ess_frac: with small ESS the estimates describe only the sampled support.
All log-probs are SEQUENCE log-probs under the distribution the responses were sampled from
(temperature included), summed over the valid response tokens. The reward r must be the training
reward (e.g. majority vote on that same group), β > 0 the KL coefficient whose optimum is studied —
with the paper's default β = 0 choose a nominal β, since π* then degenerates to the argmax.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["group_estimates", "optimal_policy_diagnostics", "DIAGNOSTIC_NAMES"]

DIAGNOSTIC_NAMES = (
    "pistar/accuracy",
    "pistar/entropy",
    "pistar/kl_to_ref",
    "pistar/kl_policy_to_pistar",
    "pistar/log_partition",
    "pistar/ess_frac",
    "pistar/policy_accuracy",
)


def _check(rewards, correct, ref_logprob, policy_logprob, beta) -> None:
    shape = jnp.shape(rewards)
    if len(shape) != 2:
        raise ValueError(f"optimal_policy: `rewards` must be [P, N] (prompts, samples), got shape {shape}")
    for name, x in (("correct", correct), ("ref_logprob", ref_logprob), ("policy_logprob", policy_logprob)):
        if x is not None and jnp.shape(x) != shape:
            raise ValueError(f"optimal_policy: `{name}` has shape {jnp.shape(x)}, expected {shape} like `rewards`")
    try:
        b = float(beta)
    except (TypeError, ValueError):
        b = float("nan")
    if not (math.isfinite(b) and b > 0):
        raise ValueError(
            "optimal_policy: beta must be a finite float > 0 (the KL coefficient of π* = π_ref·exp(r/β)/Z), "
            f"got {beta!r}"
        )


@jax.jit
def _estimates(rewards, correct, ref_logprob, policy_logprob, beta):
    r_over_beta = rewards.astype(jnp.float32) / beta
    ref = ref_logprob.astype(jnp.float32)
    a = r_over_beta if policy_logprob is None else r_over_beta + ref - policy_logprob.astype(jnp.float32)
    n = a.shape[-1]
    lse = jax.nn.logsumexp(a, axis=-1)
    w = jnp.exp(a - lse[:, None])
    log_z = lse - jnp.log(jnp.float32(n))
    c = (correct.astype(jnp.float32) > 0.5).astype(jnp.float32)  # GT correctness, 1 = correct
    return {
        "accuracy": jnp.sum(w * c, axis=-1),
        "entropy": -jnp.sum(w * (ref + r_over_beta), axis=-1) + log_z,
        "kl_to_ref": jnp.sum(w * r_over_beta, axis=-1) - log_z,
        "kl_policy_to_pistar": log_z - jnp.mean(a, axis=-1),
        "log_partition": log_z,
        "ess_frac": jnp.minimum(1.0 / jnp.sum(w * w, axis=-1) / n, 1.0),  # clip float32 rounding above 1
        "policy_accuracy": jnp.mean(c, axis=-1),
    }


def group_estimates(rewards, correct, ref_logprob, beta: float, policy_logprob=None) -> dict[str, jax.Array]:
    """Per-prompt SNIS estimates of π*'s properties (module docstring): each value [P] float32.

    rewards, correct, ref_logprob, policy_logprob: [P, N]. policy_logprob=None means the samples were
    drawn from π_ref. Keys: accuracy, entropy, kl_to_ref, kl_policy_to_pistar, log_partition, ess_frac,
    policy_accuracy (plain mean of correct under the sampling policy).
    """
    _check(rewards, correct, ref_logprob, policy_logprob, beta)
    pol = None if policy_logprob is None else jnp.asarray(policy_logprob)
    return _estimates(jnp.asarray(rewards), jnp.asarray(correct), jnp.asarray(ref_logprob), pol,
                      jnp.float32(float(beta)))


def optimal_policy_diagnostics(rewards, correct, ref_logprob, beta: float, policy_logprob=None) -> dict[str, float]:
    """Between-epoch diagnostics over an evaluation set: the per-prompt estimates averaged over prompts.

    Inputs as in `group_estimates` (concatenate the evaluation prompts along P). Returns host floats
    under DIAGNOSTIC_NAMES, e.g. "pistar/accuracy" = mean over prompts of Σ_i w_i c_i.
    """
    est = group_estimates(rewards, correct, ref_logprob, beta, policy_logprob)
    means = jax.device_get({k: jnp.mean(v) for k, v in est.items()})
    return {f"pistar/{k}": float(v) for k, v in means.items()}
