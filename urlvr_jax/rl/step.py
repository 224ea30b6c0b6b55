"""The rollout-and-loss step: sample, score, reward, advantage, update — one XLA program.

    prompts [P, Tp] ──► rollout: sampler (policy params, read in place) ──► tokens [P·N, T] + sampler stats
                   ──► scoring: pre-update policy (old log-probs, entropies, self-certainty) — skipped when
                       redundant (StepConfig.old_policy_pass) — and the frozen reference when KL needs it
                   ──► [host reward: external rewards only — the rollout's token ids go to the host, are
                       decoded and checked (or judged by the policy through the sampler), rewards [P, N] come
                       back; the scoring pass runs on the device meanwhile]
                   ──► reward: answer extraction on token ids ──► reward by name (registry) or the host's
                       rewards ──► advantages
                   ──► update: for each mini-batch, grad of the PPO loss summed over micro-batches of whole
                       groups (exact global token-mean) ──► optax update (skipped if non-finite)

The phases are listed once (`PHASE_LIST`: what each reads and writes); `StepRunner` runs the list.
`make_step` jits the device phases as one program (as few as the host reward allows: rollout | scoring |
reward + update); `make_step(..., phased=True)` runs them as one jitted function each with a sync after
each and records each phase's wall-clock time (the trainer's default, for the per-phase times in
metrics.jsonl); `make_probe` is the fused runner without the update. For device rewards nothing leaves the
device inside the step; it returns the new parameters/optimizer state, the rollout (for host-side
grading, logging and diagnostics) and a dict of scalar metrics.

Group integrity: rows are prompt-major ([P, N] groups contiguous). A micro-batch holds whole groups;
when P is not a multiple of the micro-batch size the last one is padded with masked copies that carry
zero weight (never dropped, never split).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from urlvr_jax.rewards.answers import AnswerExtractor
from urlvr_jax.rewards.registry import CERTAINTY, EXTERNAL, GroupBatch, HostRewards, RewardOutput, device_reward
from urlvr_jax.rl.advantages import compute_advantages, group_is_constant
from urlvr_jax.rl.losses import METRIC_REDUCTIONS, count_valid, kl_penalty, policy_loss
from urlvr_jax.rollout.sampler import Rollout, SamplingConfig, generate_traced, score_traced
from urlvr_jax.rollout.stats import TokenStats
from urlvr_jax.sharding import replicate, to_host


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
    # Skip the old-policy scoring pass when it is redundant: with one update per rollout batch the
    # pre-update policy is the current one, so the loss forward's own (stop-gradient) log-probs are the
    # old ones. It is still run when something needs the old statistics before the update (certainty
    # rewards, KL in the reward) or on rows the update does not see (n_train < N, dynamic sampling).
    skip_redundant_old_pass: bool = True

    @property
    def train_samples(self) -> int:
        return self.n_train or self.num_samples

    @property
    def old_policy_pass(self) -> bool:
        """Whether the step runs a separate scoring pass with the pre-update policy."""
        redundant = (self.mini_batches == 1 and self.reward not in CERTAINTY
                     and not (self.kl_coef and self.kl_in_reward)
                     and self.train_samples == self.num_samples and not self.dynamic_sampling_groups)
        return not (redundant and self.skip_redundant_old_pass)


REWARD_KEY_FOLD = 2  # the reward phase's key: fold_in(step key, 2) (1 is the host reward's)


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
    stats = score_traced(model, batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["score_mask"],
                   cfg.sampling.temperature if not cfg.sampling.greedy else 1.0, cfg.score_chunk, remat_chunks=True)
    # Without an old-policy pass (one update per rollout batch) the pre-update policy IS the current one:
    # old = stop_gradient(logprob), so ratio = 1 with the gradient of logprob (what TRL/verl do then).
    old = batch["old_logprob"] if "old_logprob" in batch else jax.lax.stop_gradient(stats.logprob)
    loss, metrics = policy_loss(
        stats.logprob, old, batch["advantages"], batch["mask"], clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, aggregation=cfg.aggregation,
        ref_logprob=batch.get("ref_logprob") if cfg.kl_coef and not cfg.kl_in_reward else None,
        kl_coef=0.0 if cfg.kl_in_reward else cfg.kl_coef, kl_estimator=cfg.kl_estimator,
        entropy=stats.entropy if cfg.entropy_coef else None, entropy_coef=cfg.entropy_coef,
        global_num_tokens=n_tokens, global_num_seqs=n_seqs, max_response_length=cfg.sampling.max_new_tokens)
    return loss, (metrics, jax.lax.stop_gradient(stats.logprob))


def _update(params, opt_state, graphdef, tx, cfg: StepConfig, data: dict[str, jax.Array]):
    """One optimizer step over one mini-batch; gradients summed over micro-batches of whole groups.

    data: arrays with a leading group axis [G, n_train, ...] (prompt arrays [G, ...]).
    Returns (params, opt_state, loss, grad_norm, finite, metrics, logprob [G, n_train, T]) where logprob is
    the loss forward's (pre-update) log-probs of the response tokens.
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
        (loss, (met, logprob)), g = grad_fn(params, graphdef, cfg, mb, n_tokens, n_seqs)
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        # with global counts, every metric is additive over micro-batches except maxima
        met_acc = {k: jnp.maximum(met_acc[k], v) if METRIC_REDUCTIONS.get(k) == "max" else met_acc[k] + v
                   for k, v in met.items()}
        return (g_acc, loss_acc + loss, met_acc), logprob

    first = jax.tree.map(lambda v: v[0], micro)
    if n_micro == 1:  # no accumulation loop (and no zero gradient tree) for a single micro-batch
        (loss, (met, logprob)), grads = grad_fn(params, graphdef, cfg, first, n_tokens, n_seqs)
        logprob = logprob[None]
    else:
        zeros = jax.tree.map(jnp.zeros_like, params)
        met_shape = jax.eval_shape(lambda: grad_fn(params, graphdef, cfg, first, n_tokens, n_seqs)[0][1][0])
        met0 = {k: jnp.full(s.shape, -jnp.inf if METRIC_REDUCTIONS.get(k) == "max" else 0, s.dtype)
                for k, s in met_shape.items()}
        (grads, loss, met), logprob = jax.lax.scan(accumulate, (zeros, jnp.float32(0), met0), micro)
    logprob = logprob.reshape((n_micro * m, n) + logprob.shape[2:])[:G]

    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite loss or gradient skips the update (parameters and optimizer state unchanged).
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    return keep(new_params, params), keep(new_opt_state, opt_state), loss, grad_norm, finite, met, logprob


# ------------------------------------------------------------------------------------------ phases
# The step's phases as pure functions; the phase list and its runners are below.
class Rewarded(NamedTuple):
    answer_ids: jax.Array  # [P, N] int32, −1 = no answer
    rewards: jax.Array  # [P, n_train] (after any KL-in-reward penalty)
    advantages: jax.Array  # [P, n_train]
    majority_id: jax.Array  # [P]
    majority_ratio: jax.Array  # [P]
    informative: jax.Array  # [P] bool: rewards not all equal within the group


def rollout_phase(params, prompt_ids, prompt_mask, key, *, graphdef, cfg: StepConfig) -> Rollout:
    """Sample N responses per prompt with the policy. prompt_ids/mask [P, Tp] → Rollout [P·N, T]."""
    policy = nnx.merge(graphdef, params)
    sample_key, _ = jax.random.split(key)
    # cfg.sampling.engine picks the static sampler or the continuous-batching engine (same Rollout)
    return generate_traced(policy, prompt_ids, prompt_mask, sample_key, sampling=cfg.sampling,
                           num_samples=cfg.num_samples, eos_ids=cfg.eos_ids, stop_seqs=cfg.stop_sequences,
                           pad_id=cfg.pad_id)


def scoring_phase(params, ref_params, prompt_ids, prompt_mask, tokens, mask, *, graphdef, ref_graphdef,
                  cfg: StepConfig) -> tuple[TokenStats | None, jax.Array | None]:
    """(old-policy TokenStats [P·N, T] or None when skipped, reference log-probs [P·N, T] or None)."""
    N = cfg.num_samples
    rep_ids, rep_mask = jnp.repeat(prompt_ids, N, axis=0), jnp.repeat(prompt_mask, N, axis=0)
    temperature = 1.0 if cfg.sampling.greedy else cfg.sampling.temperature
    old = None
    if cfg.old_policy_pass:
        old = score_traced(nnx.merge(graphdef, params), rep_ids, rep_mask, tokens, mask, temperature, cfg.score_chunk)
        old = jax.tree.map(jax.lax.stop_gradient, old)
    ref_logprob = None
    if cfg.use_reference:
        ref_logprob = score_traced(nnx.merge(ref_graphdef, ref_params), rep_ids, rep_mask, tokens, mask, temperature,
                             cfg.score_chunk).logprob
    return old, ref_logprob


def reward_phase(rollout: Rollout, old: TokenStats | None, ref_logprob, gold_ids, extractor: AnswerExtractor,
                 host_rewards: jax.Array | None = None, key: jax.Array | None = None, *, cfg: StepConfig,
                 vocab_size: int) -> Rewarded:
    """Answer extraction on token ids, reward by name — or, for an EXTERNAL reward, the host's rewards
    host_rewards [P, N] — , KL-in-reward penalty, advantages (all [P, ·]). `key` is the step's key; the
    `random` control draws its rewards from fold_in(key, REWARD_KEY_FOLD) (the rollout uses split(key)[0], a
    host reward fold_in(key, 1)), so they depend on train.seed and the step only, never on the responses."""
    N, n = cfg.num_samples, cfg.train_samples
    P = rollout.tokens.shape[0] // N
    grouped = lambda x: x.reshape((P, N) + x.shape[1:])  # noqa: E731
    tokens, mask = grouped(rollout.tokens), grouped(rollout.mask)
    answer_ids, _, _ = extractor.extract(tokens, mask)
    # certainty rewards read the old policy's statistics (old_policy_pass is on for them); the others
    # read none, and get the sampler's when that pass is skipped
    stats = TokenStats(*(grouped(s) for s in (old if old is not None else rollout.stats)))
    if cfg.reward in EXTERNAL:
        if host_rewards is None:
            raise ValueError(f"reward {cfg.reward!r} is computed on the host: pass its rewards [P, N] as host_rewards")
        reward_out = RewardOutput(jnp.asarray(host_rewards, jnp.float32)[:, :n], jnp.full((P,), -1, jnp.int32),
                                  jnp.zeros((P,), jnp.float32))
    else:
        reward_key = None if key is None else jax.random.fold_in(key, REWARD_KEY_FOLD)
        reward_out = device_reward(cfg.reward, GroupBatch(tokens, mask, stats, answer_ids, None, gold_ids),
                                   vocab_size=vocab_size, n_votes=cfg.n_votes, n_train=n, key=reward_key)
    rewards = reward_out.rewards
    if cfg.kl_coef and cfg.kl_in_reward:
        kl_tok = kl_penalty(grouped(old.logprob)[:, :n], grouped(ref_logprob)[:, :n], cfg.kl_estimator)
        kl_seq = jnp.sum(kl_tok * mask[:, :n], -1)
        rewards = rewards - cfg.kl_coef * kl_seq
    advantages = compute_advantages(cfg.advantage, rewards)
    return Rewarded(answer_ids, rewards, advantages, reward_out.majority_id, reward_out.majority_ratio,
                    ~group_is_constant(rewards))


def update_phase(params, opt_state, prompt_ids, prompt_mask, rollout: Rollout, old: TokenStats | None, ref_logprob,
                 rewarded: Rewarded, *, graphdef, tx, cfg: StepConfig):
    """Mini-batches × micro-batches of whole groups → optax updates. Returns (params, opt_state, old_logprob
    [P·N, T] — the scoring pass's, or the loss forward's when that pass is skipped — , metrics)."""
    N, n = cfg.num_samples, cfg.train_samples
    P = prompt_ids.shape[0]
    grouped = lambda x: x.reshape((P, N) + x.shape[1:])  # noqa: E731
    tokens, mask = grouped(rollout.tokens), grouped(rollout.mask)
    train_mask = mask[:, :n]
    if cfg.mask_truncated:
        train_mask = train_mask * (~grouped(rollout.truncated)[:, :n])[..., None]
    data = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "tokens": tokens[:, :n], "mask": train_mask,
            "score_mask": mask[:, :n], "advantages": rewarded.advantages}
    if old is not None:
        data["old_logprob"] = grouped(old.logprob)[:, :n]
    if ref_logprob is not None:
        data["ref_logprob"] = grouped(ref_logprob)[:, :n]
    P_train = P
    if cfg.dynamic_sampling_groups:
        data, P_train = select_informative_groups(data, rewarded.informative, cfg.dynamic_sampling_groups)
    # mini-batches: consecutive slices of whole groups, one optimizer step each
    per = -(-P_train // cfg.mini_batches)
    losses, norms, finites, mets, logprobs = [], [], [], [], []
    for i in range(cfg.mini_batches):
        chunk = {k: v[i * per:(i + 1) * per] for k, v in data.items()}
        if chunk["tokens"].shape[0] == 0:
            continue
        params, opt_state, loss, gnorm, finite, met, lp = _update(params, opt_state, graphdef, tx, cfg, chunk)
        losses.append(loss), norms.append(gnorm), finites.append(finite), mets.append(met), logprobs.append(lp)
    if old is not None:
        old_logprob = old.logprob
    else:  # one mini-batch over all P groups and all N samples, in order (see StepConfig.old_policy_pass)
        old_logprob = logprobs[0].reshape(rollout.tokens.shape)

    valid = rollout.mask.astype(jnp.float32)
    drift = jnp.abs(rollout.stats.logprob - old_logprob) * valid  # sampler vs trainer
    informative = rewarded.informative
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
    return params, opt_state, old_logprob, metrics


def _output(rollout, rewarded: Rewarded, old_logprob, ref_logprob, metrics) -> StepOutput:
    return StepOutput(rollout=rollout, answer_ids=rewarded.answer_ids, rewards=rewarded.rewards,
                      advantages=rewarded.advantages, majority_id=rewarded.majority_id,
                      majority_ratio=rewarded.majority_ratio, old_logprob=old_logprob, ref_logprob=ref_logprob,
                      metrics=metrics)


# ------------------------------------------------------------------------------------------ the phase list
# The step's phases, listed once. Each reads named values of the step's state and writes new ones. The
# runners below ("fused": as few jitted programs as the host allows; "phased": one jitted function per
# phase, timed; the probe: the fused runner without the update) execute this list.
class Phase(NamedTuple):
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    on_host: bool = False  # runs on the host between jitted programs (the host-reward port)


PHASE_LIST = (
    Phase("rollout", ("params", "prompt_ids", "prompt_mask", "key"), ("rollout",)),
    Phase("scoring", ("params", "ref_params", "prompt_ids", "prompt_mask", "rollout"), ("old", "ref_logprob")),
    Phase("host_reward", ("params", "rollout", "key", "host_reward"), ("host_rewards", "host_metrics"), on_host=True),
    Phase("reward", ("rollout", "old", "ref_logprob", "gold_ids", "extractor", "host_rewards", "key"), ("rewarded",)),
    Phase("update", ("params", "opt_state", "prompt_ids", "prompt_mask", "rollout", "old", "ref_logprob",
                     "rewarded"), ("params", "opt_state", "old_logprob", "metrics")),
)
PHASES = ("rollout", "scoring", "reward", "update")  # the device phases, in order
DONATED = ("params", "opt_state")  # donated to the program that holds the update


# host_reward(tokens [P·N, T], mask [P·N, T] (numpy), params, key) -> HostRewards. The step calls it with the
# rollout of the policy `params` (before the update) and a key of its own (fold_in(step key, 1)).
HostReward = Callable[..., HostRewards]


def active_phases(cfg: StepConfig, train: bool = True) -> tuple[Phase, ...]:
    """The phases a step with `cfg` runs: scoring only when an old-policy or reference pass is needed, the
    host reward only for EXTERNAL rewards, the update only when training (not in the probe)."""
    keep = {"rollout", "reward"}
    if cfg.old_policy_pass or cfg.use_reference:
        keep.add("scoring")
    if cfg.reward in EXTERNAL:
        keep.add("host_reward")
    if train:
        keep.add("update")
    return tuple(p for p in PHASE_LIST if p.name in keep)


def _model_vocab_size(graphdef, params) -> int:
    """The vocabulary size from the graph definition's static model config (merges only if it is absent)."""
    for attr in getattr(graphdef, "attributes", ()):
        if isinstance(attr, tuple) and attr[0] == "cfg" and hasattr(getattr(attr[1], "value", None), "vocab_size"):
            return int(attr[1].value.vocab_size)
    return int(nnx.merge(graphdef, params).cfg.vocab_size)


def _bind(graphdef, ref_graphdef, tx, cfg: StepConfig, vocab_size: int) -> dict[str, Callable]:
    """Each device phase as fn(*reads) -> writes (a tuple), with its static settings bound."""

    def rollout(params, prompt_ids, prompt_mask, key):
        return (rollout_phase(params, prompt_ids, prompt_mask, key, graphdef=graphdef, cfg=cfg),)

    def scoring(params, ref_params, prompt_ids, prompt_mask, ro):
        return scoring_phase(params, ref_params, prompt_ids, prompt_mask, ro.tokens, ro.mask, graphdef=graphdef,
                             ref_graphdef=ref_graphdef, cfg=cfg)

    def reward(ro, old, ref_logprob, gold_ids, extractor, host_rewards, key):
        return (reward_phase(ro, old, ref_logprob, gold_ids, extractor, host_rewards, key, cfg=cfg,
                             vocab_size=vocab_size),)

    def update(params, opt_state, prompt_ids, prompt_mask, ro, old, ref_logprob, rewarded):
        return update_phase(params, opt_state, prompt_ids, prompt_mask, ro, old, ref_logprob, rewarded,
                            graphdef=graphdef, tx=tx, cfg=cfg)

    return {"rollout": rollout, "scoring": scoring, "reward": reward, "update": update}


def _run_phases(phases, fns, state: dict) -> dict:
    """Trace/run device phases in order on a state dict; returns what they wrote."""
    written = {}
    for ph in phases:
        out = fns[ph.name](*(state[k] for k in ph.reads))
        new = dict(zip(ph.writes, out))
        state = {**state, **new}
        written.update(new)
    return written


def _inputs(group: tuple[Phase, ...]) -> list[str]:
    """The names a group of phases reads that no earlier phase of the group writes."""
    written: set[str] = set()
    out: list[str] = []
    for p in group:
        out += [k for k in p.reads if k not in written and k not in out]
        written |= set(p.writes)
    return out


def _groups(phases: tuple[Phase, ...], phased: bool) -> list[tuple[Phase, ...]]:
    """Split the phase list into programs: one per device phase (phased), else maximal runs of device phases
    between host phases; before a host phase, the phases it does not read from form their own program,
    dispatched before the host work so that the device runs them meanwhile (e.g. scoring during a host reward)."""
    if phased:
        return [(p,) for p in phases]
    groups: list[tuple[Phase, ...]] = []
    run: list[Phase] = []
    for p in phases:
        if not p.on_host:
            run.append(p)
            continue
        needed = set(p.reads)
        before, independent = [], []
        for q in reversed(run):  # walk back: a phase is needed if the host phase (or a needed one) reads it
            if needed & set(q.writes):
                before.insert(0, q)
                needed |= set(q.reads)
            else:
                independent.insert(0, q)
        groups += [g for g in (tuple(before), tuple(independent)) if g] + [(p,)]
        run = []
    if run:
        groups.append(tuple(run))
    return groups


class StepRunner:
    """Runs the phase list as jitted programs (see `_groups`) with host phases between them.

    Called as runner(params, opt_state, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor,
    host_reward=None) -> (params, opt_state, StepOutput) when training, or, without the update (the probe),
    runner(params, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor, host_reward=None) -> StepOutput.
    Parameters and optimizer state are donated to the program that holds the update. With `timed`, every
    program is waited for and its wall-clock time recorded in `last_times` (seconds, by phase name); a
    program dispatched before a host phase that does not need it keeps running during that phase and its
    time is only the wait that remains after it (time/scoring then counts what the host reward did not hide).
    """

    def __init__(self, graphdef, ref_graphdef, tx, cfg: StepConfig, *, phased: bool = False, train: bool = True,
                 timed: bool | None = None):
        self.cfg, self.graphdef, self.ref_graphdef, self.tx, self.train = cfg, graphdef, ref_graphdef, tx, train
        self.phases = active_phases(cfg, train)
        self.groups = _groups(self.phases, phased)
        self.timed = phased if timed is None else timed
        self._programs: list | None = None  # built on the first call (the vocabulary size is read then)
        self.last_times: dict[str, float] = {}

    @property
    def num_jitted(self) -> int:
        return sum(1 for g in self.groups if not g[0].on_host)

    def _build(self, params):
        fns = _bind(self.graphdef, self.ref_graphdef, self.tx, self.cfg, _model_vocab_size(self.graphdef, params))
        programs = []
        for group in self.groups:
            if group[0].on_host:
                programs.append(None)
                continue
            donate = any(set(p.writes) & set(DONATED) for p in group)

            def program(donated, kept, _group=group):
                return _run_phases(_group, fns, {**kept, **donated})

            programs.append(jax.jit(program, donate_argnums=(0,) if donate else ()))
        return programs

    def run(self, state: dict) -> dict:
        """Run every phase on `state` (a dict of the names the phases read); returns the final state."""
        if self.cfg.reward in EXTERNAL and state.get("host_reward") is None:
            raise ValueError(f"reward {self.cfg.reward!r} is computed on the host: pass host_reward= to the step "
                             "(urlvr_jax.rewards.host.HostRewarder)")
        if self._programs is None:
            self._programs = self._build(state["params"])
        state = {"host_rewards": None, "host_metrics": {}, "old": None, "ref_logprob": None, **state}
        times: dict[str, float] = {}
        pending: tuple[str, Any] | None = None  # a program left running during the next host phase
        for i, (group, program) in enumerate(zip(self.groups, self._programs)):
            name = "+".join(p.name for p in group)
            t0 = time.perf_counter()
            if program is None:
                written = _host_phase(state)
            else:
                donated = {k: state[k] for k in DONATED if any(k in p.writes for p in group)}
                kept = {k: state[k] for k in _inputs(group) if k not in donated}
                written = program(donated, kept)
                nxt = self.groups[i + 1][0] if i + 1 < len(self.groups) else None
                overlaps = nxt is not None and nxt.on_host and not set(nxt.reads) & set(written)
                if self.timed and overlaps:
                    pending = (name, written)
                    state.update(written)
                    continue
                if self.timed:
                    jax.block_until_ready(written)
            state.update(written)
            times[name] = time.perf_counter() - t0
            if pending is not None:
                t1 = time.perf_counter()
                jax.block_until_ready(pending[1])
                times[pending[0]] = time.perf_counter() - t1
                pending = None
        if self.timed:
            self.last_times = times
        return state

    def __call__(self, *args, host_reward: HostReward | None = None):
        if self.train:
            params, opt_state, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor = args
        else:
            (params, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor), opt_state = args, None
        s = self.run({"params": params, "opt_state": opt_state, "ref_params": ref_params, "prompt_ids": prompt_ids,
                      "prompt_mask": prompt_mask, "gold_ids": gold_ids, "key": key, "extractor": extractor,
                      "host_reward": host_reward})
        if not self.train:
            return _output(s["rollout"], s["rewarded"], s["old"].logprob, s["ref_logprob"], dict(s["host_metrics"]))
        metrics = {**s["metrics"], **s["host_metrics"]}
        return s["params"], s["opt_state"], _output(s["rollout"], s["rewarded"], s["old_logprob"], s["ref_logprob"],
                                                    metrics)


def _host_phase(state: dict) -> dict:
    """The host-reward port: fetch the rollout, call the host reward, put its rewards on the devices."""
    rollout = state["rollout"]
    tokens, mask = to_host((rollout.tokens, rollout.mask))
    out = state["host_reward"](tokens, mask, state["params"], jax.random.fold_in(state["key"], 1))
    rewards = np.asarray(out.rewards, np.float32)
    if rewards.ndim != 2 or rewards.shape[0] * rewards.shape[1] != tokens.shape[0]:
        raise ValueError(f"the host reward returned rewards of shape {rewards.shape}; expected [P, N] with "
                         f"P·N = {tokens.shape[0]} rollout rows")
    mesh = getattr(rollout.tokens.sharding, "mesh", None)
    # replicated on the rollout's mesh (a multi-host global array), else on the default device
    rewards = replicate(rewards, mesh) if isinstance(mesh, jax.sharding.Mesh) else jnp.asarray(rewards)
    return {"host_rewards": rewards, "host_metrics": {k: float(v) for k, v in out.metrics.items()}}


def rl_step(params, opt_state, ref_params, prompt_ids, prompt_mask, gold_ids, key, *, graphdef, ref_graphdef, tx,
            cfg: StepConfig, extractor: AnswerExtractor) -> tuple[Any, Any, StepOutput]:
    """One URLVR iteration with an on-device reward (pure; `make_step` jits it). gold_ids [P] (−1 = unknown)
    for metrics only. External rewards need the host between phases: use `make_step`."""
    if cfg.reward in EXTERNAL:
        raise ValueError(f"rl_step: reward {cfg.reward!r} is computed on the host; use make_step(...)")
    fns = _bind(graphdef, ref_graphdef, tx, cfg, _model_vocab_size(graphdef, params))
    s = _run_phases(active_phases(cfg), fns, {
        "params": params, "opt_state": opt_state, "ref_params": ref_params, "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask, "gold_ids": gold_ids, "key": key, "extractor": extractor, "old": None,
        "ref_logprob": None, "host_rewards": None})
    return s["params"], s["opt_state"], _output(s["rollout"], s["rewarded"], s["old_logprob"],
                                                s.get("ref_logprob"), s["metrics"])


class PhasedStep(StepRunner):
    """The step run as one jitted function per phase with a sync after each, so that every phase's
    wall-clock time is measured (`last_times`, seconds; 'scoring' is absent when there is neither an
    old-policy nor a reference pass, 'host_reward' present for external rewards). Same signature and results
    as the fused step; it costs one device-to-host sync per phase and gives up cross-phase fusion (see
    benchmarks/README.md)."""

    def __init__(self, graphdef, ref_graphdef, tx, cfg: StepConfig):
        super().__init__(graphdef, ref_graphdef, tx, cfg, phased=True)


def make_step(graphdef, ref_graphdef, tx, cfg: StepConfig, extractor: AnswerExtractor | None = None, *,
              phased: bool = False) -> StepRunner:
    """The step as one jitted program (parameters and optimizer state donated) — two or three around the
    host phase of an external reward — or, with phased=True, as a `PhasedStep` (one jitted function per
    phase, timed). Both are called as
    step(params, opt_state, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor, host_reward=None)."""
    if phased:
        return PhasedStep(graphdef, ref_graphdef, tx, cfg)
    return StepRunner(graphdef, ref_graphdef, tx, cfg)


def make_probe(graphdef, ref_graphdef, cfg: StepConfig) -> StepRunner:
    """Rollout → scoring (old policy and reference) → reward with no update, for the π* diagnostics between
    epochs: probe(params, ref_params, prompt_ids, prompt_mask, gold_ids, key, extractor, host_reward=None)
    → StepOutput (metrics: the host reward's only). cfg must have use_reference and old_policy_pass on."""
    if not (cfg.use_reference and cfg.old_policy_pass):
        raise ValueError("make_probe: the probe scores with both the policy and the reference; set "
                         "use_reference=True and skip_redundant_old_pass=False in its StepConfig")
    return StepRunner(graphdef, ref_graphdef, None, cfg, train=False)
