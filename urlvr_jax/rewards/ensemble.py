"""Ensemble rewards from answer ids: majority voting (TTRL) and semantic clustering (EMPO).

Pure, jittable functions of an answer-id matrix [P, N] int32 (P prompts, N responses each; -1 = the
response has no answer). Ids come from `answers.AnswerExtractor.extract` (device hash of the answer text)
or from `answers.canonical_answer_ids` (host, mathematical equivalence classes); only equality of ids
within a row matters. Everything is O(N^2) per prompt (an [P, N, N] equality matrix), which is nothing for
N <= a few hundred and shards along P with no communication.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


class MajorityVote(NamedTuple):
    rewards: jax.Array  # [P, n_train] float32: 1 if the response's answer is the majority answer, else 0
    majority_id: jax.Array  # [P] int32: the majority answer id, -1 if no response in the vote had an answer
    majority_ratio: jax.Array  # [P] float32: count(majority) / n_votes (no-answer responses count in n_votes)
    has_majority: jax.Array  # [P] bool: at least one voting response had an answer


def _check(answer_ids: jax.Array, name: str) -> jax.Array:
    answer_ids = jnp.asarray(answer_ids)
    if answer_ids.ndim != 2:
        raise ValueError(f"{name}: answer_ids must be [P, N] (prompts x responses), got shape {answer_ids.shape}")
    if not jnp.issubdtype(answer_ids.dtype, jnp.integer):
        raise ValueError(f"{name}: answer_ids must be integer ids (-1 = no answer), got dtype {answer_ids.dtype}")
    return answer_ids


def _counts(ids: jax.Array) -> jax.Array:
    """counts[p, i] = #{j : ids[p, j] == ids[p, i] >= 0} (0 where ids[p, i] < 0)."""
    valid = ids >= 0
    same = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    return jnp.sum(same, axis=-1, dtype=jnp.int32)


def majority_vote(answer_ids: jax.Array, n_votes: Optional[int] = None,
                  n_train: Optional[int] = None) -> MajorityVote:
    """Majority-vote rewards (TTRL).

    answer_ids: [P, N] int, -1 = no answer.
    n_votes: the vote is over responses 0..n_votes-1 (default N). n_train: rewards are returned for
    responses 0..n_train-1 (default N), each compared with the majority of the vote (TTRL: vote over 64,
    train on the first 32).
    Majority = the answer with the most votes among the voting responses that have an answer; a tie goes to
    the answer seen first (smallest first index). Responses without an answer get no vote and reward 0.
    majority_ratio = count(majority) / n_votes, counting no-answer responses in n_votes (0 if no answer).
    """
    ids = _check(answer_ids, "majority_vote")
    P, N = ids.shape
    n_votes = N if n_votes is None else int(n_votes)
    n_train = N if n_train is None else int(n_train)
    if not 1 <= n_votes <= N:
        raise ValueError(f"majority_vote: n_votes={n_votes} must be in [1, N={N}] (N = answer_ids.shape[1])")
    if not 1 <= n_train <= N:
        raise ValueError(f"majority_vote: n_train={n_train} must be in [1, N={N}] (N = answer_ids.shape[1])")
    votes = ids[:, :n_votes]
    counts = _counts(votes)  # [P, n_votes]
    best = jnp.max(counts, axis=-1)  # [P]
    # first index whose count is maximal = the first-seen answer among the tied ones
    first = jnp.argmax(counts == best[:, None], axis=-1)
    has = best > 0
    maj = jnp.where(has, jnp.take_along_axis(votes, first[:, None], axis=-1)[:, 0], -1).astype(jnp.int32)
    train = ids[:, :n_train]
    rewards = ((train == maj[:, None]) & (train >= 0) & has[:, None]).astype(jnp.float32)
    ratio = best.astype(jnp.float32) / jnp.float32(n_votes)
    return MajorityVote(rewards, maj, ratio, has)


def semantic_cluster(answer_ids: jax.Array) -> jax.Array:
    """Semantic-cluster rewards (EMPO): [P, N] float32.

    reward_i = |{j : id_j == id_i}| / N for a response with an answer (N counts no-answer responses), 0 for
    a response without one; every reward of a prompt is 0 when no two responses share an answer (all
    distinct, including the case of at most one answer).
    """
    ids = _check(answer_ids, "semantic_cluster")
    N = ids.shape[1]
    counts = _counts(ids)
    any_shared = jnp.max(counts, axis=-1, keepdims=True) > 1
    return jnp.where(any_shared, counts.astype(jnp.float32) / jnp.float32(N), 0.0)
