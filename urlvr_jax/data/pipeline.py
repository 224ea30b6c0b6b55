"""Prompt batches for training and evaluation, on grain: shuffled, sharded per host, resumable.

The trainer asks for batches of *records* (MathProblem or anything else); it builds the prompt text and
tokenises itself. The stream is built from grain's `MapDataset`:

    range(num_records)[shard_index::shard_count]      # this host's records, disjoint across hosts
      .shuffle(hash(seed))                             # a fresh permutation every epoch (grain folds
      .repeat(num_epochs)                              #   the epoch into the seed), deterministic
      .batch(batch_size)                               # batches run across epoch boundaries
      .map(index -> record)

Tails are never dropped silently. With `num_epochs=None` (the default, for RL steps) the stream is
endless and a batch that reaches the end of an epoch is completed with the first records of the next
epoch's permutation, so every batch is full and every record is seen once per epoch. With a finite
`num_epochs` the records of all epochs are concatenated the same way and only the very last batch of
the run can be short: it is yielded as a short batch, or dropped when `drop_remainder=True` (the
number of records it held is `PromptLoader.num_dropped`).

Sharding is strided over record positions, so host h gets records h, h + P, h + 2P, ... (P hosts).
When num_records is not a multiple of P the shards differ by one record; with a finite `num_epochs`
hosts may then see a different number of batches (check `num_batches`), the endless stream has no
such issue.

Resume: `PromptLoader.get_state()` is a small JSON-serialisable dict (grain's iterator state plus the
configuration it belongs to); `set_state` on a loader built with the same records and settings
continues with exactly the next batch, so no record is skipped or repeated. A state from a different
configuration is rejected with the name of the setting that differs.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import grain
import numpy as np

STATE_VERSION = 1


def _default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax  # only when the caller relies on the process defaults

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got shard_index={shard_index}, "
                         f"shard_count={shard_count}")
    return int(shard_index), int(shard_count)


def _grain_seed(seed: int) -> int:
    """The seed handed to grain's shuffle, a hash of the user's seed.

    grain shuffles epoch e with seed (seed + e) mod 2**32, so with raw seeds run `seed=s` would see in
    epoch 1 exactly the order that run `seed=s+1` sees in epoch 0: replicate runs with consecutive
    seeds would not be independent. Hashing spreads neighbouring seeds over the 32-bit seed space.
    """
    digest = hashlib.sha256(f"urlvr_jax.prompt_shuffle:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


ENDLESS_ELEMENTS = 2**48  # elements of an 'endless' stream: ~9 million years at a million per second


def make_prompt_dataset(records: Sequence[Any], batch_size: int, seed: int = 0,
                        num_epochs: int | None = None, shard_index: int | None = None,
                        shard_count: int | None = None, shuffle: bool = True, *,
                        drop_remainder: bool = False, return_indices: bool = False) -> grain.MapDataset:
    """A grain MapDataset whose element k is the k-th batch of this host (a list of records).

    records: the whole data set (every host passes the same sequence).
    batch_size: records per batch on this host.
    seed: shuffle seed; the permutation of epoch e is derived from (seed, e) by grain.
    num_epochs: None for an endless stream; else the number of passes over this host's shard.
    shard_index / shard_count: this host and the number of hosts (default: jax.process_index() and
      jax.process_count()).
    shuffle: False keeps file order (e.g. for evaluation).
    drop_remainder: with a finite num_epochs, drop the final short batch instead of yielding it.
    return_indices: yield int64 arrays of positions in `records` instead of lists of records.
    """
    n = len(records)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (endless), got {num_epochs}")
    shard_index, shard_count = _default_shard(shard_index, shard_count)
    if n < shard_count:
        raise ValueError(f"{n} records cannot be split over {shard_count} hosts (each host needs at "
                         "least one record)")
    ds = grain.MapDataset.range(n)[shard_index::shard_count]
    if shuffle:
        ds = ds.shuffle(seed=_grain_seed(seed))
    # reseeds the shuffle each epoch. An endless stream is a finite one too long to exhaust: grain gives
    # repeat(None) the length sys.maxsize, and batch() computes its length through a float, which rounds
    # sys.maxsize / 1 up past the largest index, so batch_size 1 (single-problem runs) overflowed len().
    ds = ds.repeat(num_epochs if num_epochs is not None else max(1, ENDLESS_ELEMENTS // len(ds)))
    if return_indices:
        return ds.batch(batch_size, drop_remainder=drop_remainder,
                        batch_fn=lambda xs: np.asarray(xs, dtype=np.int64))
    return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=lambda xs: [records[i] for i in xs])


def _records_fingerprint(records: Sequence[Any]) -> str | None:
    """Hash of the record ids (records with an `id` attribute), to catch resuming on other data."""
    if not all(hasattr(r, "id") for r in records):
        return None
    h = hashlib.sha256()
    for r in records:
        h.update(str(r.id).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class PromptLoader:
    """An iterator of prompt batches (see module docstring) with a JSON-serialisable state.

    >>> loader = PromptLoader(problems, batch_size=64, seed=0)
    >>> batch = next(loader)                  # list of 64 MathProblem
    >>> state = loader.get_state()            # json.dumps-able; store it with the checkpoint
    >>> loader2 = PromptLoader(problems, batch_size=64, seed=0); loader2.set_state(state)
    >>> next(loader2) == next(loader)         # same next batch
    """

    def __init__(self, records: Sequence[Any], batch_size: int, *, seed: int = 0,
                 num_epochs: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, shuffle: bool = True, drop_remainder: bool = False,
                 return_indices: bool = False):
        shard_index, shard_count = _default_shard(shard_index, shard_count)
        self.records = records
        self.dataset = make_prompt_dataset(records, batch_size, seed, num_epochs, shard_index,
                                           shard_count, shuffle, drop_remainder=drop_remainder,
                                           return_indices=return_indices)
        n = len(records)
        self.shard_size = len(range(shard_index, n, shard_count))
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        total = None if num_epochs is None else self.shard_size * num_epochs
        self.num_batches = None if total is None else len(self.dataset)
        self.num_dropped = 0 if total is None or not drop_remainder else total % batch_size
        self._config = {
            "num_records": n, "batch_size": int(batch_size), "seed": int(seed),
            "num_epochs": num_epochs, "shard_index": shard_index, "shard_count": shard_count,
            "shuffle": bool(shuffle), "drop_remainder": bool(drop_remainder),
            "records_fingerprint": _records_fingerprint(records),
        }
        self._iter = iter(self.dataset.to_iter_dataset())
        self._next_batch = 0

    def __iter__(self) -> "PromptLoader":
        return self

    def __next__(self):
        batch = next(self._iter)
        self._next_batch += 1
        return batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless PromptLoader (num_epochs=None) has no length")
        return self.num_batches

    @property
    def epoch(self) -> int:
        """Epoch (0-based) of the first record of the next batch."""
        return self._next_batch * self.batch_size // self.shard_size

    @property
    def steps_per_epoch(self) -> float:
        """Batches per pass over this host's shard (fractional when batches straddle epochs)."""
        return self.shard_size / self.batch_size

    def get_state(self) -> dict:
        """A JSON-serialisable snapshot: where the next batch starts, and the configuration."""
        state = {"version": STATE_VERSION, "next_batch": self._next_batch,
                 "grain": self._iter.get_state(), **self._config}
        json.dumps(state)  # fail here, not at checkpoint time, if grain's state is not JSON-able
        return state

    def set_state(self, state: dict) -> None:
        """Continues from `state` (from get_state of a loader with the same records and settings)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a PromptLoader state of version {STATE_VERSION}: {state!r:.200}")
        for key, mine in self._config.items():
            if key not in state:
                raise ValueError(f"PromptLoader state lacks key {key!r}")
            if state[key] != mine:
                raise ValueError(f"PromptLoader state was saved with {key}={state[key]!r} but this loader "
                                 f"has {key}={mine!r}; rebuild the loader with the saved settings")
        self._iter.set_state(state["grain"])
        self._next_batch = int(state["next_batch"])
