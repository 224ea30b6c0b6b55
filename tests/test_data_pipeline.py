"""grain prompt pipeline: determinism, per-epoch permutations, disjoint host shards, tail handling and
exact resume from a JSON-serialised iterator state.

References are set arithmetic on record indices: every epoch of a shard must be a permutation of the
shard's indices, shards must be pairwise disjoint and cover range(n), and a resumed stream must equal
the uninterrupted one batch for batch.
"""
import json

import numpy as np
import pytest

from urlvr_jax.data import MathProblem, PromptLoader, load_math_dataset, make_prompt_dataset

N = 211  # prime, so no batch size or shard count below divides it


@pytest.fixture(scope="module")
def records():
    return [MathProblem(id=f"r{i}", problem=f"problem {i}", answer=str(i), source="toy") for i in range(N)]


def _ids(batch):
    return [int(r.id[1:]) for r in batch]


def _take(loader, k):
    return [_ids(next(loader)) for _ in range(k)]


def test_deterministic_for_a_seed(records):
    a = _take(PromptLoader(records, 16, seed=7, shard_index=0, shard_count=1), 16)
    b = _take(PromptLoader(records, 16, seed=7, shard_index=0, shard_count=1), 16)
    c = _take(PromptLoader(records, 16, seed=8, shard_index=0, shard_count=1), 16)
    assert a == b
    assert a != c


def test_neighbouring_seeds_are_not_shifted_copies(records):
    # grain alone shuffles epoch e with seed + e; the loader hashes the seed so that run seed=8 does
    # not replay the epoch-1 order of run seed=7.
    a = sum(_take(PromptLoader(records, N, seed=7, shard_index=0, shard_count=1), 2), [])
    b = sum(_take(PromptLoader(records, N, seed=8, shard_index=0, shard_count=1), 1), [])
    assert a[N:] != b


def test_every_epoch_is_a_fresh_permutation_and_batches_stay_full(records):
    loader = PromptLoader(records, 20, seed=1, shard_index=0, shard_count=1)
    batches = _take(loader, 32)  # 640 records: 3 full epochs + 7
    assert all(len(b) == 20 for b in batches)
    flat = sum(batches, [])
    epochs = [flat[e * N:(e + 1) * N] for e in range(3)]
    for ep in epochs:
        assert sorted(ep) == list(range(N))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(N))  # actually shuffled
    assert loader.epoch == 640 // N and loader.steps_per_epoch == N / 20


@pytest.mark.parametrize("shard_count", [1, 3, 4])
def test_shards_are_disjoint_and_cover_everything(records, shard_count):
    shards = []
    for h in range(shard_count):
        loader = PromptLoader(records, 16, seed=3, num_epochs=1, shard_index=h, shard_count=shard_count)
        got = sum([_ids(b) for b in loader], [])
        assert len(got) == len(set(got)) == loader.shard_size
        shards.append(set(got))
        # the second epoch of an endless stream uses the same shard
        endless = PromptLoader(records, loader.shard_size, seed=3, shard_index=h, shard_count=shard_count)
        assert set(_ids(next(endless))) == set(_ids(next(endless))) == set(got)
    assert set().union(*shards) == set(range(N))
    assert sum(len(s) for s in shards) == N
    assert sorted(len(s) for s in shards)[-1] - sorted(len(s) for s in shards)[0] <= 1


def test_final_partial_batch_is_kept_or_dropped_explicitly(records):
    keep = PromptLoader(records, 40, seed=0, num_epochs=2, shard_index=0, shard_count=1)
    sizes = [len(b) for b in keep]  # 422 records = 10 batches of 40 + 22
    assert sizes == [40] * 10 + [22] and len(keep) == 11 and keep.num_dropped == 0
    drop = PromptLoader(records, 40, seed=0, num_epochs=2, shard_index=0, shard_count=1, drop_remainder=True)
    assert [len(b) for b in drop] == [40] * 10 and drop.num_dropped == 22
    with pytest.raises(TypeError, match="endless"):
        len(PromptLoader(records, 5, shard_index=0, shard_count=1))


def test_no_shuffle_keeps_order_and_indices_mode(records):
    loader = PromptLoader(records, 30, shuffle=False, num_epochs=1, shard_index=1, shard_count=2)
    assert sum([_ids(b) for b in loader], []) == list(range(1, N, 2))
    ds = make_prompt_dataset(records, 32, seed=5, num_epochs=1, shard_index=0, shard_count=1,
                             return_indices=True)
    rec = make_prompt_dataset(records, 32, seed=5, num_epochs=1, shard_index=0, shard_count=1)
    for idx, batch in zip(ds, rec):
        assert isinstance(idx, np.ndarray) and idx.dtype == np.int64
        assert [records[i] for i in idx] == batch


# host 1 of 2 has 105 records: stop mid-epoch, just before the batch that straddles epochs 0/1, in epoch 1
@pytest.mark.parametrize("stop_after", [3, 6, 9])
def test_exact_resume_from_saved_state(records, stop_after):
    full = _take(PromptLoader(records, 16, seed=11, shard_index=1, shard_count=2), stop_after + 8)
    first = PromptLoader(records, 16, seed=11, shard_index=1, shard_count=2)
    head = _take(first, stop_after)
    state = json.loads(json.dumps(first.get_state()))  # what a checkpoint would store
    resumed = PromptLoader(records, 16, seed=11, shard_index=1, shard_count=2)
    resumed.set_state(state)
    assert head + _take(resumed, 8) == full
    assert resumed.get_state()["next_batch"] == stop_after + 8


def test_resume_of_a_finite_run_ends_in_the_same_place(records):
    full = [_ids(b) for b in PromptLoader(records, 32, seed=2, num_epochs=2, shard_index=0, shard_count=1)]
    a = PromptLoader(records, 32, seed=2, num_epochs=2, shard_index=0, shard_count=1)
    head = _take(a, 7)
    b = PromptLoader(records, 32, seed=2, num_epochs=2, shard_index=0, shard_count=1)
    b.set_state(a.get_state())
    rest = [_ids(x) for x in b]
    assert head + rest == full and len(full) == -(-2 * N // 32) and len(full[-1]) == 2 * N % 32


def test_state_from_other_settings_is_rejected(records):
    a = PromptLoader(records, 5, seed=1, shard_index=0, shard_count=1)
    next(a)
    state = a.get_state()
    with pytest.raises(ValueError, match=r"seed=1 but this loader has seed=2"):
        PromptLoader(records, 5, seed=2, shard_index=0, shard_count=1).set_state(state)
    other = records[:-1] + [MathProblem("zz", "p", "a", "toy")]
    with pytest.raises(ValueError, match="records_fingerprint"):
        PromptLoader(other, 5, seed=1, shard_index=0, shard_count=1).set_state(state)
    with pytest.raises(ValueError, match="not a PromptLoader state"):
        PromptLoader(records, 5, seed=1, shard_index=0, shard_count=1).set_state({"next_index": 3})


def test_defaults_and_bad_arguments(records):
    # one process here: the default shard is (jax.process_index(), jax.process_count()) == (0, 1)
    st = PromptLoader(records, 5).get_state()
    assert (st["shard_index"], st["shard_count"]) == (0, 1)
    with pytest.raises(ValueError, match="shard_index"):
        make_prompt_dataset(records, 5, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_prompt_dataset(records, 0, shard_index=0, shard_count=1)
    with pytest.raises(ValueError, match="cannot be split over"):
        make_prompt_dataset(records[:2], 1, shard_index=0, shard_count=3)
    with pytest.raises(ValueError, match="num_epochs"):
        make_prompt_dataset(records, 5, num_epochs=0, shard_index=0, shard_count=1)


def test_real_training_split_one_epoch(records):
    train = load_math_dataset("gsm8k", "train")
    loader = PromptLoader(train, 64, seed=0, num_epochs=1, shard_index=0, shard_count=1)
    seen = [p.id for b in loader for p in b]
    assert len(seen) == len(set(seen)) == 7473 and len(loader) == -(-7473 // 64)


def test_batches_of_one_and_a_single_record_stream_endlessly(records):
    # The paper's single-problem runs: one prompt per step, a one-record data set. grain's endless repeat
    # once made len() of a batch-1 stream overflow (float rounding of sys.maxsize / 1).
    one = PromptLoader(records[:1], 1, seed=0, shard_index=0, shard_count=1)
    assert _take(one, 5) == [[0]] * 5
    batches = _take(PromptLoader(records, 1, seed=3, shard_index=0, shard_count=1), N + 3)
    assert sorted(sum(batches[:N], [])) == list(range(N))
