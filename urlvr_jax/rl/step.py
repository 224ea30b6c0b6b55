"""The jitted rollout-and-loss step: sample, score, reward, advantage, update — one XLA program.

    prompts [P, Tp] ──► sampler (policy params, read in place) ──► tokens [P·N, T] + sampler stats
                   ──► scoring pass, pre-update policy (old log-probs, entropies, self-certainty)
                   ──► scoring pass, frozen reference (only when KL or π* diagnostics need it)
                   ──► answer extraction on token ids ──► reward by name (registry) ──► advantages
                   ──► for each mini-batch: grad of the PPO loss summed over micro-batches of whole
                       groups (exact global token-mean) ──► optax update (skipped if non-finite)

Nothing leaves the device inside the step; it returns the new parameters/optimizer state, the
rollout (for host-side grading, logging and diagnostics) and a dict of scalar metrics.

Group integrity: rows are prompt-major ([P, N] groups contiguous). A micro-batch holds whole groups;
when P is not a multiple of the micro-batch size the last one is padded with masked copies that carry
zero weight (never dropped, never split).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from urlvr_jax.rewards.answers import AnswerExtractor
from urlvr_jax.rewards.registry import GroupBatch, device_reward
from urlvr_jax.rl.advantages import compute_advantages, group_is_constant
from urlvr_jax.rl.losses import METRIC_REDUCTIONS, count_valid, kl_penalty, policy_loss
from urlvr_jax.rollout.sampler import Rollout, SamplingConfig, _generate, _score
from urlvr_jax.rollout.stats import TokenStats


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step (hashable: part of the compiled program's identity)."""

    num_samples: int = 8
    sampling: SamplingConfig = SamplingConfig()
    reward: str = "majority_vote"
    n_votes: int | None = None  # TTRL: vote over the first n_votes of the N samples ...
    n_train: int | None = None  # ... and train on the first n_train (default: all N)
    advantage: str = "grpo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    mini_batches: int = 1  # optimizer updates per rollout batch
    micro_batch_groups: int = 0  # groups per micro-batch (0 = the whole mini-batch at once)
    mask_truncated: bool = False  # drop responses that hit max_new_tokens from the loss
    score_chunk: int = 128  # positions per vocabulary projection chunk
    use_reference: bool = False
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    # DAPO-style dynamic sampling, with static shapes: the step samples an oversampled pool of prompts and
    # trains on the first `dynamic_sampling_groups` groups whose rewards are not all equal (0 = off).
    dynamic_sampling_groups: int = 0

    @property
    def train_samples(self) -> int:
        return self.n_train or self.num_samples


class StepOutput(NamedTuple):
    rollout: Rollout  # all N samples per prompt, rows prompt-major
    answer_ids: jax.Array  # [P, N]
    rewards: jax.Array  # [P, n_train] (after any KL-in-reward penalty)
    advantages: jax.Array  # [P, n_train]
    majority_id: jax.Array  # [P]
    majority_ratio: jax.Array  # [P]
    old_logprob: jax.Array  # [P·N, T] trainer's pre-update log-probs
    ref_logprob: jax.Array | None
    metrics: dict[str, jax.Array]


def _pad_groups(x: jax.Array, n_groups: int, multiple: int) -> jax.Array:
    """Pad the group axis (axis 0, [P, ...]) up to a multiple with zeros (weight-free groups)."""
    pad = (-n_groups) % multiple
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x


def select_informative_groups(data: dict[str, jax.Array], informative: jax.Array, n_groups: int):
    """Keep the first `n_groups` informative groups (pool order); if fewer exist, fill with weight-free groups.

    data: arrays with a leading group axis [G, ...]. Whole groups are moved, never split; a group that is
    kept is kept entirely, and the filler groups carry mask 0 (no tokens, no gradient, not counted).
    """
    G = informative.shape[0]
    if n_groups > G:
        raise ValueError(f"dynamic sampling keeps {n_groups} groups but the pool has only {G}")
    order = jnp.argsort(~informative, stable=True)[:n_groups]  # informative first, pool order kept
    kept = informative[order]
    out = {k: v[order] for k, v in data.items()}
    out["mask"] = out["mask"] * kept[:, None, None].astype(out["mask"].dtype)
    out["advantages"] = jnp.where(kept[:, None], out["advantages"], 0.0)
    return out, n_groups


def _loss_fn(params, graphdef, cfg: StepConfig, batch, n_tokens, n_seqs):
    model = nnx.merge(graphdef, params)
    stats = _score(model, batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["mask"],
                   cfg.sampling.temperature if not cfg.sampling.greedy else 1.0, cfg.score_chunk, remat_chunks=True)
    loss, metrics = policy_loss(
        stats.logprob, batch["old_logprob"], batch["advantages"], batch["mask"], clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, aggregation=cfg.aggregation,
        ref_logprob=batch.get("ref_logprob") if cfg.kl_coef and not cfg.kl_in_reward else None,
        kl_coef=0.0 if cfg.kl_in_reward else cfg.kl_coef, kl_estimator=cfg.kl_estimator,
        entropy=stats.entropy if cfg.entropy_coef else None, entropy_coef=cfg.entropy_coef,
        global_num_tokens=n_tokens, global_num_seqs=n_seqs, max_response_length=cfg.sampling.max_new_tokens)
    return loss, metrics


def _update(params, opt_state, graphdef, tx, cfg: StepConfig, data: dict[str, jax.Array]):
    """One optimizer step over one mini-batch; gradients summed over micro-batches of whole groups.

    data: arrays with a leading group axis [G, n_train, ...] (prompt arrays [G, ...]).
    """
    G = data["tokens"].shape[0]
    m = cfg.micro_batch_groups or G
    n_micro = -(-G // m)
    data = {k: _pad_groups(v, G, m) for k, v in data.items()}  # padded groups have mask 0
    n_tokens, n_seqs = count_valid(data["mask"].reshape(-1, data["mask"].shape[-1]))

    def flat(v, n_rows_per_group):
        # [n_micro*m, N, ...] -> [n_micro, m*N, ...] (prompt arrays are repeated per sample)
        return v.reshape((n_micro, m * n_rows_per_group) + v.shape[2:])

    n = cfg.train_samples
    micro = {}
    for k, v in data.items():
        if k in ("prompt_ids", "prompt_mask"):
            v = jnp.repeat(v[:, None], n, axis=1)
        micro[k] = flat(v, n)

    grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)

    def accumulate(carry, mb):
        g_acc, loss_acc, met_acc = carry
        (loss, met), g = grad_fn(params, graphdef, cfg, mb, n_tokens, n_seqs)
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        # with global counts, every metric is additive over micro-batches except maxima
        met_acc = {k: jnp.maximum(met_acc[k], v) if METRIC_REDUCTIONS.get(k) == "max" else met_acc[k] + v
                   for k, v in met.items()}
        return (g_acc, loss_acc + loss, met_acc), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda v: v[0], micro)
    met_shape = jax.eval_shape(lambda: grad_fn(params, graphdef, cfg, first, n_tokens, n_seqs)[0][1])
    met0 = {k: jnp.full(s.shape, -jnp.inf if METRIC_REDUCTIONS.get(k) == "max" else 0, s.dtype)
            for k, s in met_shape.items()}
    (grads, loss, met), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), met0), micro)

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite loss or gradient skips the update (parameters and optimizer state unchanged).
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    return keep(new_params, params), keep(new_opt_state, opt_state), loss, grad_norm, finite, met


def rl_step(params, opt_state, ref_params, prompt_ids, prompt_mask, gold_ids, key, *, graphdef, ref_graphdef, tx,
            cfg: StepConfig, extractor: AnswerExtractor) -> tuple[Any, Any, StepOutput]:
    """One URLVR iteration (pure; jit it with `make_step`). gold_ids [P] (−1 = unknown) for metrics only."""
    P = prompt_ids.shape[0]
    N, n = cfg.num_samples, cfg.train_samples
    policy = nnx.merge(graphdef, params)
    sample_key, _ = jax.random.split(key)
    rollout = _generate(policy, prompt_ids, prompt_mask, sample_key, sampling=cfg.sampling, num_samples=N,
                        eos_ids=cfg.eos_ids, stop_seqs=cfg.stop_sequences, pad_id=cfg.pad_id)
    rep_ids, rep_mask = jnp.repeat(prompt_ids, N, axis=0), jnp.repeat(prompt_mask, N, axis=0)
    temperature = 1.0 if cfg.sampling.greedy else cfg.sampling.temperature
    old = _score(policy, rep_ids, rep_mask, rollout.tokens, rollout.mask, temperature, cfg.score_chunk)
    old = jax.tree.map(jax.lax.stop_gradient, old)
    ref_logprob = None
    if cfg.use_reference:
        reference = nnx.merge(ref_graphdef, ref_params)
        ref_logprob = _score(reference, rep_ids, rep_mask, rollout.tokens, rollout.mask, temperature,
                             cfg.score_chunk).logprob

    T = rollout.tokens.shape[1]
    grouped = lambda x: x.reshape((P, N) + x.shape[1:])  # noqa: E731
    tokens, mask = grouped(rollout.tokens), grouped(rollout.mask)
    answer_ids, _, _ = extractor.extract(tokens, mask)
    stats = TokenStats(*(grouped(s) for s in old))
    reward_out = device_reward(cfg.reward, GroupBatch(tokens, mask, stats, answer_ids, None, gold_ids),
                               vocab_size=policy.cfg.vocab_size, n_votes=cfg.n_votes, n_train=n)
    rewards = reward_out.rewards
    if cfg.kl_coef and cfg.kl_in_reward:
        kl_tok = kl_penalty(grouped(old.logprob)[:, :n], grouped(ref_logprob)[:, :n], cfg.kl_estimator)
        kl_seq = jnp.sum(kl_tok * mask[:, :n], -1)
        rewards = rewards - cfg.kl_coef * kl_seq

    train_mask = mask[:, :n]
    if cfg.mask_truncated:
        train_mask = train_mask * (~grouped(rollout.truncated)[:, :n])[..., None]
    advantages = compute_advantages(cfg.advantage, rewards)

    data = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "tokens": tokens[:, :n], "mask": train_mask,
            "old_logprob": grouped(old.logprob)[:, :n], "advantages": advantages}
    if ref_logprob is not None:
        data["ref_logprob"] = grouped(ref_logprob)[:, :n]
    informative = ~group_is_constant(rewards)
    P_train = P
    if cfg.dynamic_sampling_groups:
        data, P_train = select_informative_groups(data, informative, cfg.dynamic_sampling_groups)
    # mini-batches: consecutive slices of whole groups, one optimizer step each
    per = -(-P_train // cfg.mini_batches)
    losses, norms, finites, mets = [], [], [], []
    for i in range(cfg.mini_batches):
        chunk = {k: v[i * per:(i + 1) * per] for k, v in data.items()}
        if chunk["tokens"].shape[0] == 0:
            continue
        params, opt_state, loss, gnorm, finite, met = _update(params, opt_state, graphdef, tx, cfg, chunk)
        losses.append(loss), norms.append(gnorm), finites.append(finite), mets.append(met)

    valid = rollout.mask.astype(jnp.float32)
    sampler_lp, trainer_lp = rollout.stats.logprob, old.logprob
    drift = jnp.abs(sampler_lp - trainer_lp) * valid
    metrics = {
        "loss": jnp.mean(jnp.stack(losses)),
        "grad_norm": jnp.mean(jnp.stack(norms)),
        "skipped_updates": jnp.sum(~jnp.stack(finites)).astype(jnp.int32),
        "drift/logprob_abs_mean": jnp.sum(drift) / jnp.maximum(jnp.sum(valid), 1.0),
        "drift/logprob_abs_max": jnp.max(drift),
        "dynamic/informative_groups": jnp.sum(informative).astype(jnp.int32),
        "dynamic/trained_groups": jnp.minimum(jnp.sum(informative), P_train).astype(jnp.int32)
        if cfg.dynamic_sampling_groups else jnp.int32(P),
        **{f"actor/{k}": jnp.mean(jnp.stack([m[k] for m in mets])) for k in mets[0]},
    }
    out = StepOutput(rollout=rollout, answer_ids=answer_ids, rewards=rewards, advantages=advantages,
                     majority_id=reward_out.majority_id, majority_ratio=reward_out.majority_ratio,
                     old_logprob=old.logprob, ref_logprob=ref_logprob, metrics=metrics)
    return params, opt_state, out


def make_step(graphdef, ref_graphdef, tx, cfg: StepConfig, extractor: AnswerExtractor):
    """The jitted step; parameters and optimizer state are donated (updated in place)."""
    fn = functools.partial(rl_step, graphdef=graphdef, ref_graphdef=ref_graphdef, tx=tx, cfg=cfg)
    return jax.jit(lambda p, o, r, ids, m, g, k, ex: fn(p, o, r, ids, m, g, k, extractor=ex), donate_argnums=(0, 1))

