"""Majority vote and semantic clustering against a collections.Counter reference (first-seen tie-break)."""
from collections import Counter

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from urlvr_jax.rewards.ensemble import majority_vote, semantic_cluster


def ref_majority(row, n_votes, n_train):
    votes = [a for a in row[:n_votes] if a >= 0]
    if not votes:
        return [0.0] * n_train, -1, 0.0, False
    c = Counter(votes)
    best = max(c.values())
    maj = next(a for a in votes if c[a] == best)  # first seen among the tied
    rewards = [1.0 if (a >= 0 and a == maj) else 0.0 for a in row[:n_train]]
    return rewards, maj, best / n_votes, True


def ref_cluster(row):
    n = len(row)
    c = Counter(a for a in row if a >= 0)
    if not c or max(c.values()) <= 1:
        return [0.0] * n
    return [c[a] / n if a >= 0 else 0.0 for a in row]


def random_groups(rng, P, N):
    """Groups of every kind: few distinct answers (ties likely), all distinct, no answers, mixtures."""
    kinds = rng.integers(0, 5, size=P)
    ids = np.empty((P, N), np.int32)
    for p, k in enumerate(kinds):
        if k == 0:  # few distinct values, many ties
            ids[p] = rng.integers(-1, 3, size=N)
        elif k == 1:  # all distinct (plus some no-answers)
            ids[p] = rng.permutation(10_000)[:N]
            ids[p][rng.random(N) < 0.3] = -1
        elif k == 2:  # no answers at all
            ids[p] = -1
        elif k == 3:  # big hash-like ids
            ids[p] = rng.choice(np.array([7, 2**31 - 1, 123456789, 0], np.int32), size=N)
            ids[p][rng.random(N) < 0.2] = -1
        else:  # exact two-way tie in a known order
            half = N // 2
            ids[p] = np.array([5, 9] * half + [-1] * (N - 2 * half), np.int32)
    return ids


@pytest.fixture(scope="module")
def groups():
    rng = np.random.default_rng(0)
    return random_groups(rng, 4096, 8)


def check_vote(ids, out, n_votes, n_train):
    rewards, maj, ratio, has = (np.asarray(x) for x in out)
    assert rewards.shape == (ids.shape[0], n_train) and rewards.dtype == np.float32
    for p, row in enumerate(ids.tolist()):
        r, m, q, h = ref_majority(row, n_votes, n_train)
        assert maj[p] == m, (p, row)
        assert has[p] == h, (p, row)
        # tolerance: 1 float32 ulp (XLA's CPU division goes through a reciprocal, not always correctly rounded)
        assert abs(ratio[p] - np.float32(q)) <= np.spacing(np.float32(q)), (p, row)
        np.testing.assert_array_equal(rewards[p], np.asarray(r, np.float32), err_msg=str(row))


def test_majority_vote_matches_counter(groups):
    f = jax.jit(majority_vote)
    check_vote(groups, f(groups), 8, 8)
    # the test can fail: a last-seen tie-break would disagree on the tie groups
    tie = np.array([[5, 9, 9, 5]], np.int32)
    assert int(majority_vote(tie).majority_id[0]) == 5
    assert int(majority_vote(np.array([[-1, 9, 5, 5, 9]], np.int32)).majority_id[0]) == 9


def test_majority_vote_ttrl_mode():
    rng = np.random.default_rng(1)
    ids = random_groups(rng, 1024, 16)
    f = jax.jit(majority_vote, static_argnames=("n_votes", "n_train"))
    for n_votes, n_train in [(16, 8), (12, 16), (5, 3)]:
        check_vote(ids, f(ids, n_votes=n_votes, n_train=n_train), n_votes, n_train)


def test_semantic_cluster_matches_counter(groups):
    out = np.asarray(jax.jit(semantic_cluster)(groups))
    ref = np.array([ref_cluster(r) for r in groups.tolist()], np.float32)
    np.testing.assert_array_equal(out, ref)
    # spot checks of the definition
    np.testing.assert_array_equal(np.asarray(semantic_cluster(np.array([[1, 2, 3, -1]]))), [[0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(semantic_cluster(np.array([[4, 4, -1, 7]]))), [[0.5, 0.5, 0, 0.25]])


def test_sharded_over_eight_devices(groups):
    devices = jax.devices()[:8]
    assert len(devices) == 8, "tests/conftest.py should provide 8 fake CPU devices"
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    x = jax.device_put(groups, NamedSharding(mesh, PS("data", None)))
    vote = jax.jit(majority_vote)(x)
    assert vote.rewards.sharding.spec[0] == "data" or len(vote.rewards.sharding.device_set) == 8
    check_vote(groups, vote, 8, 8)
    clus = jax.jit(semantic_cluster)(x)
    np.testing.assert_array_equal(np.asarray(clus), np.asarray(semantic_cluster(groups)))


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"\[P, N\]"):
        majority_vote(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match="n_votes"):
        majority_vote(np.zeros((2, 3), np.int32), n_votes=4)
    with pytest.raises(ValueError, match="integer"):
        semantic_cluster(np.zeros((2, 3), np.float32))
