"""Continuous-batching rollout engine: decode slots refilled from a queue, shared prompt KV, ragged attention.

The static sampler (sampler.py) decodes all B·N rows together in a [B·N, Tp + T] KV cache until the last
row ends: its memory is set by the longest possible response, every step attends over the whole cache,
and finished rows keep their place in the batch. This engine instead

  * prefills each prompt once (`sampling.prefill_chunk` prompts per forward) into a prompt KV buffer
    [B, Tp] that the N samples of the prompt all read (never N copies);
  * decodes `sampling.max_inflight` rows at once in slots; a slot's response KV [T] is written in place at
    the row's own position, and when a row finishes (EOS, stop sequence, length cap) the next queued row
    takes its slot on the next step (rows are queued prompt-major, so a prompt's samples run together);
  * attends over [the row's prompt KV] + [its own response KV], the response read in blocks of
    `sampling.decode_block` positions only up to the longest live row (`ragged_decode_attention`).
  * on a mesh, runs one queue per device along the batch axes (`queue_groups`): device g's slots decode
    only the rows of device g's prompts, so prompt KV, prompt logits and outputs are read and written where
    they live (one global queue lets any slot read any prompt, and XLA then replicates all prompts' KV on
    every device: measured 8x the prompt KV per device on a TPU v5e 2x4 compile).

KV memory is prompts × Tp + slots × T (T = max_new_tokens rounded up to a block), not rows × (Tp + T);
the per-step attention cost follows what the live rows have written.

Same outputs as the static sampler: a Rollout with rows prompt-major ([B·N, T]), per-token statistics,
mask, lengths, truncated. A token's randomness is keyed by (key, row, position) (`token_keys`), never by
the slot or the step, so for the same key the engine draws the same tokens as the static sampler, with
any number of slots (up to float rounding of the logits, which differs by summation order).

Everything is plain JAX (one jitted `while_loop`), so it runs on CPU, GPU and TPU and reads the model's own
(sharded) parameters in place.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from urlvr_jax.models.transformer import KVCache, Transformer, init_cache, take_in_groups
from urlvr_jax.rollout.sampler import Rollout, SamplingConfig, _row_limits, sample_token_rows, token_keys
from urlvr_jax.rollout.stats import TokenStats, token_stats_from_logits
from urlvr_jax.sharding import with_logical_constraint


def prefill_prompts(model: Transformer, prompt_ids, prompt_mask, chunk: int) -> tuple[jax.Array, KVCache]:
    """Prompt KV [B, K, hd, Tp] / [B, K, Tp, hd] per layer and last-position logits [B, V].

    chunk > 0 runs `chunk` prompts per forward (a `lax.map`), bounding the prefill's activations; the last
    chunk is padded with empty prompts that are dropped afterwards.
    """
    B, Tp = prompt_ids.shape
    if not chunk or chunk >= B:
        return model.prefill(prompt_ids, prompt_mask, Tp)
    n = -(-B // chunk)
    pad = ((0, n * chunk - B), (0, 0))
    ids = jnp.pad(prompt_ids, pad).reshape(n, chunk, Tp)
    mask = jnp.pad(prompt_mask, pad).reshape(n, chunk, Tp)
    logits, cache = jax.lax.map(lambda a: model.prefill(a[0], a[1], Tp), (ids, mask))
    unchunk = lambda x: x.reshape((n * chunk,) + x.shape[2:])[:B]  # noqa: E731
    return unchunk(logits), jax.tree.map(unchunk, cache)


def _in_groups(fn, groups: int, *arrays):
    """fn applied to each of `groups` contiguous groups of the leading axis of every array, results joined back.

    Each group is one device's share along the batch axes (see `queue_groups`), so a gather or scatter
    written per group stays on its device under the SPMD partitioner.
    """
    if groups == 1:
        return fn(*arrays)
    split = [a.reshape((groups, a.shape[0] // groups) + a.shape[1:]) for a in arrays]
    out = jax.vmap(fn)(*split)
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:]), out)


def _scatter_rows(buf: jax.Array, local_rows: jax.Array, t: jax.Array, values: jax.Array, groups: int) -> jax.Array:
    """buf[row, t] = value for each slot (rows local to the slot's group; a row index >= the group's rows
    drops the write). buf [R, T], local_rows / t / values [S]."""
    return _in_groups(lambda b, r, tt, v: b.at[r, tt].set(v, mode="drop"), groups, buf, local_rows, t, values)


def _rows_end_with_any(tokens: jax.Array, local_rows: jax.Array, t: jax.Array,
                       stop_seqs: tuple[tuple[int, ...], ...], groups: int) -> jax.Array:
    """Whether each slot's row (local to its group) ends with one of `stop_seqs` at position t. [S] bool."""
    out = jnp.zeros(local_rows.shape, bool)
    T = tokens.shape[1]
    for seq in stop_seqs:
        n = len(seq)
        idx = jnp.clip(t[:, None] - n + 1 + jnp.arange(n, dtype=jnp.int32)[None, :], 0, T - 1)
        tail = _in_groups(lambda b, r, i: b[r[:, None], i], groups, tokens, local_rows, idx)
        out = out | ((t + 1 >= n) & jnp.all(tail == jnp.asarray(seq, jnp.int32)[None, :], axis=1))
    return out


def queue_groups(rules, prompts: int, slots: int) -> int:
    """How many independent row queues the engine runs: the number of devices along the mesh's batch axes
    when prompts and slots both divide by it, else 1.

    Group g owns prompts [g·B/G, (g+1)·B/G), their rows, and slots [g·S/G, (g+1)·S/G) — the same blocks
    the batch sharding puts on device g — so a slot only ever reads prompt KV, logits and outputs of its
    own device (a single global queue would let any slot read any prompt, and the partitioner would then
    replicate every prompt's KV on every device).
    """
    if rules is None:
        return 1
    axes = rules.rules.get("batch")
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    g = 1
    for a in axes:
        g *= int(rules.mesh.shape[a])
    return g if g > 1 and prompts % g == 0 and slots % g == 0 else 1


def engine_shapes(sampling: SamplingConfig, rows: int) -> tuple[int, int, int]:
    """(slots, attention block, response KV capacity per slot) for `rows` rows."""
    slots = min(sampling.max_inflight or rows, rows)
    block = min(sampling.decode_block, sampling.max_new_tokens)
    capacity = -(-sampling.max_new_tokens // block) * block
    return slots, block, capacity


def continuous_generate_traced(model: Transformer, prompt_ids, prompt_mask, key, *, sampling: SamplingConfig,
                               num_samples: int, eos_ids: tuple[int, ...], stop_seqs: tuple[tuple[int, ...], ...],
                               pad_id: int, max_lengths: jax.Array | None = None) -> tuple[Rollout, jax.Array]:
    """Sample `num_samples` responses per left-padded prompt with the continuous-batching engine (traceable).

    prompt_ids/prompt_mask [B, Tp]; max_lengths [B·N] (optional per-row length limits <= max_new_tokens).
    Returns (Rollout [B·N, T], number of decode steps run). Each step decodes every slot, so
    sum(lengths) / (steps × slots) is the fraction of slot-steps that produced a kept token.
    """
    B, Tp = prompt_ids.shape
    N, T = num_samples, sampling.max_new_tokens
    R = B * N
    S, block, capacity = engine_shapes(sampling, R)
    rules = model.rules
    G = queue_groups(rules, B, S)
    Rg, Sg = R // G, S // G
    slot_group = jnp.arange(S, dtype=jnp.int32) // Sg  # static: slot s belongs to group s // Sg
    batch_axes = lambda x: with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1), rules)  # noqa: E731
    kv_axes = lambda x: with_logical_constraint(x, ("batch", "act_heads", None, None), rules)  # noqa: E731

    prompt_mask = prompt_mask.astype(jnp.int32)
    prompt_logits, prompt_cache = prefill_prompts(model, prompt_ids, prompt_mask, sampling.prefill_chunk)
    prompt_len = jnp.sum(prompt_mask, axis=1)  # position id of each prompt's first generated token
    weights = model.layer_weights()  # sliced once here, read in place by every decode step
    limits = _row_limits(max_lengths, R, T)
    stats_temperature = 1.0 if sampling.greedy else sampling.temperature
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def cond(carry):
        next_row, live = carry[1], carry[4]
        return jnp.any(live) | jnp.any(next_row < Rg)

    def body(carry):
        steps, next_row, slot_row, slot_t, live, last_logits, cache, tokens, stats, lengths, stopped = carry
        # 1. free slots take the next queued rows of their group (in row order); next_row [G] counts each
        # group's rows taken; a new row starts from its prompt's logits. slot_row is the global row id.
        free = ~live
        new_local = next_row[:, None] + jnp.cumsum(free.reshape(G, Sg).astype(jnp.int32), axis=1) - 1
        take = (free.reshape(G, Sg) & (new_local < Rg)).reshape(S)
        slot_row = jnp.where(take, slot_group * Rg + new_local.reshape(S), slot_row)
        slot_t = jnp.where(take, 0, slot_t)
        live = live | take
        next_row = next_row + jnp.sum(take.reshape(G, Sg).astype(jnp.int32), axis=1)
        prompt_index = slot_row // N
        local_row = slot_row - slot_group * Rg
        last_logits = jnp.where(take[:, None], take_in_groups(prompt_logits, prompt_index, G), last_logits)

        # 2. one token per live slot, keyed by (row, position); statistics and tokens go to the row's outputs
        tok = sample_token_rows(token_keys(key, slot_row, slot_t), last_logits, sampling)
        tok = jnp.where(live, tok, pad_id)
        st = token_stats_from_logits(last_logits, tok, stats_temperature)
        out_row = jnp.where(live, local_row, Rg)  # Rg: out of the group's range, the write is dropped
        tokens = _scatter_rows(tokens, out_row, slot_t, tok, G)
        stats = TokenStats(*(_scatter_rows(buf, out_row, slot_t, v, G) for buf, v in zip(stats, st)))
        stop_now = live & (jnp.any(tok[:, None] == eos[None, :], axis=1)
                           | _rows_end_with_any(tokens, local_row, slot_t, stop_seqs, G))
        finished = stop_now | (live & (slot_t + 1 >= limits[slot_row]))
        fin_row = jnp.where(finished, local_row, Rg)
        lengths = _in_groups(lambda b, r, v: b.at[r].set(v, mode="drop"), G, lengths, fin_row, slot_t + 1)
        stopped = _in_groups(lambda b, r, v: b.at[r].set(v, mode="drop"), G, stopped, fin_row, stop_now)

        # 3. the model step for the continuing rows (finished and idle slots write position 0 of their own
        # slot and attend to one response position, so they never lengthen the attention loop)
        going = live & ~finished
        write = jnp.where(going, slot_t, 0)
        logits, cache = model.decode_step_slots(weights, tok, prompt_len[prompt_index] + slot_t, prompt_cache,
                                                prompt_mask, prompt_index, cache, write, block, G)
        cache = jax.tree.map(kv_axes, cache)
        return (steps + 1, next_row, slot_row, jnp.where(going, slot_t + 1, slot_t), going, logits, cache, tokens,
                stats, lengths, stopped)

    zeros_s = jnp.zeros((S,), jnp.int32)
    cache = jax.tree.map(kv_axes, init_cache(model.cfg, S, capacity, model.dtype))
    last_logits = batch_axes(jnp.zeros((S, prompt_logits.shape[-1]), jnp.float32))
    tokens = batch_axes(jnp.full((R, T), pad_id, jnp.int32))
    stats = TokenStats(*(batch_axes(jnp.zeros((R, T), jnp.float32)) for _ in range(4)))
    carry = (jnp.int32(0), jnp.zeros((G,), jnp.int32), slot_group * Rg, zeros_s, jnp.zeros((S,), bool), last_logits,
             cache, tokens, stats, jnp.zeros((R,), jnp.int32), jnp.zeros((R,), bool))
    out = jax.lax.while_loop(cond, body, carry)
    steps, tokens, stats, lengths, stopped = out[0], out[7], out[8], out[9], out[10]
    mask = (jnp.arange(T, dtype=jnp.int32)[None, :] < lengths[:, None]).astype(jnp.int32)
    return Rollout(tokens=tokens, mask=mask, stats=stats, lengths=lengths, truncated=~stopped), steps


@functools.lru_cache(maxsize=64)
def _jitted_continuous(graphdef, sampling, num_samples, eos_ids, stop_seqs, pad_id):
    def fn(state, prompt_ids, prompt_mask, key, max_lengths):
        model = nnx.merge(graphdef, state)
        return continuous_generate_traced(model, prompt_ids, prompt_mask, key, sampling=sampling,
                                          num_samples=num_samples, eos_ids=eos_ids, stop_seqs=stop_seqs,
                                          pad_id=pad_id, max_lengths=max_lengths)

    return jax.jit(fn)


def continuous_generate(model: Transformer, prompt_ids, prompt_mask, key, sampling: SamplingConfig,
                        num_samples: int = 1, eos_ids: Sequence[int] | None = None,
                        stop_sequences: Sequence[Sequence[int]] = (), pad_id: int | None = None,
                        max_lengths: Sequence[int] | jax.Array | None = None) -> tuple[Rollout, jax.Array]:
    """`generate_ids` with the continuous engine, also returning the number of decode steps it ran."""
    cfg = model.cfg
    eos = tuple(int(e) for e in (cfg.eos_token_ids if eos_ids is None else eos_ids))
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    stops = tuple(tuple(int(t) for t in s) for s in stop_sequences if len(s))
    rows = int(prompt_ids.shape[0]) * int(num_samples)
    graphdef, state = nnx.split(model)
    fn = _jitted_continuous(graphdef, sampling, int(num_samples), eos, stops, int(pad_id))
    limits = _row_limits(max_lengths, rows, sampling.max_new_tokens)
    return fn(state, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), key, limits)
