"""Reward estimators selected by name (the `rl.reward` config key).

Every on-device estimator maps a group batch to rewards [P, N] inside jitted code:

  certainty (from per-token statistics [P, N, T] and the response mask):
    self_certainty       (1/T) Σ_t KL(U ‖ p_t)                        Intuitor / RLIF
    token_entropy        −(1/T) Σ_t H(p_t)                            RENT / EM-RL
    trajectory_entropy   (1/T) Σ_t log p_t(y_t)                       EM-RL
    probability          exp(Σ_t log p_t(y_t))                        RLSC
    probability_disparity mean over answer tokens of p(top1) − p(top2) RLSF
  ensemble (from answer ids [P, N], −1 = no answer):
    majority_vote        1[answer == majority answer]                 TTRL (n_votes / n_train)
    semantic_cluster     |cluster(answer)| / N                        EMPO
  supervised baseline:
    ground_truth         1[answer id == gold answer id]
  control:
    random               i.i.d. Bernoulli(0.5) per response, from the step's key (independent of the
                         responses): GRPO advantages are pure noise, so a run with it measures what the
                         optimiser does without any signal (drift), the baseline a "fall" is judged against

External rewards (programmatic checkers, self-verification) run on decoded text on the host:
`host_reward(name, texts, problems)`; self-verification needs the sampler (`rewards.self_verify`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from urlvr_jax.rewards import certainty, ensemble, external
from urlvr_jax.rewards.grading import extract_boxed
from urlvr_jax.rollout.stats import TokenStats

CERTAINTY = ("self_certainty", "token_entropy", "trajectory_entropy", "probability", "probability_disparity")
ENSEMBLE = ("majority_vote", "semantic_cluster")
SUPERVISED = ("ground_truth",)
CONTROL = ("random",)
EXTERNAL = ("countdown", "arithmetic", "self_verification")
JUDGES = ("policy", "initial")  # who judges under self_verification (config verify.judge)
DEVICE_REWARDS = CERTAINTY + ENSEMBLE + SUPERVISED + CONTROL
ALL_REWARDS = DEVICE_REWARDS + EXTERNAL


class GroupBatch(NamedTuple):
    """What an on-device reward sees: one group of N responses per prompt."""

    tokens: jax.Array  # [P, N, T] int32
    mask: jax.Array  # [P, N, T] response mask (EOS included)
    stats: TokenStats  # [P, N, T] each; from the trainer's forward with the pre-update weights
    answer_ids: jax.Array | None = None  # [P, N] int32, −1 = no answer
    answer_mask: jax.Array | None = None  # [P, N, T] tokens of the extracted answer span
    gold_ids: jax.Array | None = None  # [P] int32 (ground_truth only; never used by unsupervised rewards)


class RewardOutput(NamedTuple):
    rewards: jax.Array  # [P, n_train] float32
    majority_id: jax.Array  # [P] int32 (−1 when not a voting reward or nobody answered)
    majority_ratio: jax.Array  # [P] float32 (0 when not a voting reward)


class HostRewards(NamedTuple):
    """What an external (host) reward returns for one batch."""

    rewards: Any  # [P, N] float32 (numpy)
    metrics: dict[str, float]  # scalars about them (e.g. the verifier's parse rate)


def check_reward_name(name: str) -> str:
    if name not in ALL_REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {list(ALL_REWARDS)}")
    return name


def random_reward(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The control reward: i.i.d. Bernoulli(0.5) of `shape` as float32 0/1, a function of `key` alone."""
    return jax.random.bernoulli(key, 0.5, shape).astype(jnp.float32)


def device_reward(name: str, batch: GroupBatch, *, vocab_size: int, n_votes: int | None = None,
                  n_train: int | None = None, key: jax.Array | None = None) -> RewardOutput:
    """Rewards [P, n_train] for an on-device estimator (jittable; `name` is static). `key` (a PRNG key) is
    read only by the `random` control, which needs it."""
    check_reward_name(name)
    if name not in DEVICE_REWARDS:
        raise ValueError(f"reward {name!r} is not computed on device; use host_reward / self_verify "
                         f"(external rewards: {EXTERNAL})")
    P, N = batch.tokens.shape[:2]
    n_train = N if n_train is None else n_train
    none_id = jnp.full((P,), -1, jnp.int32)
    zero_ratio = jnp.zeros((P,), jnp.float32)
    if name in CERTAINTY:
        fn: Callable[..., jax.Array] = getattr(certainty, name)
        if name == "self_certainty":
            r = fn(batch.stats, batch.mask, vocab_size)
        elif name == "probability_disparity":
            r = fn(batch.stats, batch.mask, batch.answer_mask)
        else:
            r = fn(batch.stats, batch.mask)
        return RewardOutput(r[:, :n_train], none_id, zero_ratio)
    if name == "random":
        if key is None:
            raise ValueError("reward 'random' draws its rewards from a PRNG key: pass key= to device_reward")
        return RewardOutput(random_reward(key, (P, n_train)), none_id, zero_ratio)
    _need(batch.answer_ids, name, "answer_ids")
    if name == "majority_vote":
        mv = ensemble.majority_vote(batch.answer_ids, n_votes=n_votes, n_train=n_train)
        return RewardOutput(mv.rewards, mv.majority_id, mv.majority_ratio)
    if name == "semantic_cluster":
        return RewardOutput(ensemble.semantic_cluster(batch.answer_ids)[:, :n_train], none_id, zero_ratio)
    _need(batch.gold_ids, name, "gold_ids")  # ground_truth
    r = (batch.answer_ids == batch.gold_ids[:, None]) & (batch.answer_ids >= 0)
    return RewardOutput(r[:, :n_train].astype(jnp.float32), none_id, zero_ratio)


def host_reward(name: str, texts: Sequence[Sequence[str]], problems: Sequence[Any]) -> list[list[float]]:
    """External programmatic rewards on decoded responses: texts [P][N], problems [P] (MathProblem).

    countdown: the last \\boxed{expression} uses the given numbers (each at most once) and hits the target
    (problem.extra["numbers"], problem.extra["target"]); arithmetic: the boxed answer equals the exact
    gold value.
    """
    if name == "countdown":
        return [[external.countdown_response_reward(t, p.extra["numbers"], p.extra["target"]) for t in group]
                for group, p in zip(texts, problems)]
    if name == "arithmetic":
        return [[external.arithmetic_checker(extract_boxed(t), p.answer) for t in group]
                for group, p in zip(texts, problems)]
    if name == "self_verification":
        raise ValueError("self_verification needs the policy as a judge: use urlvr_jax.rewards.self_verify")
    raise ValueError(f"reward {name!r} is an on-device reward; use device_reward")


def _need(x, name: str, what: str):
    if x is None:
        raise ValueError(f"reward {name!r} needs {what} (answer extraction) in the GroupBatch")
