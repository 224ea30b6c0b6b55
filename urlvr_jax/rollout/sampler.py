"""On-device sampler: jitted prefill + a `while_loop` decode over a preallocated KV cache.

The sampler reads the model's own (sharded) parameters: there is no copy between "trainer" and
"inference engine". One call samples N responses for each of B left-padded prompts; the B·N rows are
ordered prompt-major (rows i·N … i·N+N−1 belong to prompt i) so groups stay contiguous. The prompt is
prefilled once per prompt and its KV cache repeated N times.

Per-token statistics (`TokenStats`: log-prob, entropy, self-certainty term, top-1 − top-2 gap) are
computed inside the loop from the logits of each step and returned with the tokens, so no [B, T, V]
tensor ever leaves the device. They refer to softmax(logits / temperature) over the full vocabulary —
the same distribution the scoring pass (`score`) recomputes; top-k / top-p only restrict which token is
drawn. Greedy decoding reports them at temperature 1.

Drawing: greedy is a sort-free argmax; sampling uses one uniform per row and an inverse CDF over
vocabulary blocks (no [B, V] Gumbel noise); top-p draws by rejection (accept a draw iff it lies in the
nucleus) with an exact bisection-cutoff fallback. None of these sorts the vocabulary (a sort per
decode step dominated CPU decoding); only top-k > 0 does (`lax.top_k` in `filter_logits`).

The prompt runs once through the scanned full-sequence forward (`Transformer.prefill`); the decode
loop then calls `Transformer.decode_step` with per-layer weights sliced once per call.

Stopping: a row finishes at an EOS token (kept in the response mask) or when its tail matches a stop
token sequence (also kept); the loop exits early once every row has finished, else after
`max_new_tokens` (those rows are marked truncated).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from urlvr_jax.models.transformer import Transformer
from urlvr_jax.rollout.stats import TokenStats, first_argmax, token_stats_from_logits


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to draw tokens. temperature > 0; top_k = 0 and top_p = 1 disable those filters."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    # "static": every row decodes from the first step to the last row's end in a [rows, prompt + max_new_tokens]
    # cache; "continuous": `max_inflight` decode slots refilled from a queue of rows as rows finish, prompt KV
    # shared by a prompt's samples, attention bounded by the rows' lengths (rollout/engine.py).
    engine: str = "static"
    max_inflight: int = 0  # continuous: decode slots (rows in flight at once); 0 = all rows
    decode_block: int = 128  # continuous: response positions per attention block (the length-bound granularity)
    prefill_chunk: int = 0  # continuous: prompts per prefill forward (bounds prefill activations); 0 = all at once

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"top_k must be >= 0 and max_new_tokens >= 1, got {self.top_k}, {self.max_new_tokens}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.max_inflight < 0 or self.decode_block < 1 or self.prefill_chunk < 0:
            raise ValueError(f"max_inflight and prefill_chunk must be >= 0 and decode_block >= 1, got "
                             f"{self.max_inflight}, {self.prefill_chunk}, {self.decode_block}")


ENGINES = ("static", "continuous")


class Rollout(NamedTuple):
    """Sampled responses, rows prompt-major ([B·N, T] with T = max_new_tokens)."""

    tokens: jax.Array  # int32, pad_id after the end
    mask: jax.Array  # int32, 1 for response tokens incl. the EOS / stop tokens
    stats: TokenStats  # float32 [B·N, T] each, 0 where mask is 0
    lengths: jax.Array  # int32 [B·N]
    truncated: jax.Array  # bool [B·N]: hit max_new_tokens without EOS / stop sequence


def filter_logits(z: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask (to -inf) the tokens outside the top-k and outside the top-p nucleus. z [..., V]."""
    if top_k and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if top_p < 1.0:
        z = jnp.where(z < nucleus_cutoff(z, top_p), -jnp.inf, z)
    return z


def nucleus_cutoff(z: jax.Array, top_p: float, iterations: int = 32) -> jax.Array:
    """Smallest logit kept by top-p: token j is kept iff the mass of tokens with larger logits is < top_p.

    Bisection on the cutoff instead of a sort (a full vocabulary sort per step is the slowest op of a
    decode step on CPU): mass(z > t) falls as t rises, so the kept set is {z >= t*}; after `iterations`
    halvings of [min z, max z] the bracket is below float32 resolution of the logits. The top token is
    always kept (mass above the maximum is 0). Returns [..., 1].
    """
    p = jax.nn.softmax(z, axis=-1)
    finite = jnp.isfinite(z)
    lo = jnp.min(jnp.where(finite, z, jnp.inf), axis=-1, keepdims=True) - 1.0
    hi = jnp.max(z, axis=-1, keepdims=True)

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        inside = jnp.sum(jnp.where(z > mid, p, 0.0), axis=-1, keepdims=True) < top_p
        return jnp.where(inside, lo, mid), jnp.where(inside, mid, hi)

    _, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return hi


def token_keys(key: jax.Array, rows: jax.Array, positions: jax.Array) -> jax.Array:
    """The key of each row's token at each response position: fold_in(fold_in(key, row), position), [B].

    A token's randomness depends only on (key, row, position), not on the decode step or the batch slot
    it ran in, so the static sampler and the continuous-batching engine draw the same tokens.
    """
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(key, r), t))(rows, positions)


def row_uniforms(keys: jax.Array, draw: jax.Array | int) -> jax.Array:
    """One uniform in [0, 1) per row [B] from per-row keys [B]; `draw` numbers independent draws."""
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, draw)))(keys)


def sample_token_rows(keys: jax.Array, logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token per row from float32 logits [B, V], row i drawn with its own key keys[i] (`token_keys`)."""
    if sampling.greedy:
        return first_argmax(logits)
    z = logits / sampling.temperature
    if sampling.top_k:
        return sample_inverse_cdf(row_uniforms(keys, 0), filter_logits(z, sampling.top_k, sampling.top_p))
    if sampling.top_p < 1.0:
        return _sample_nucleus(lambda r: row_uniforms(keys, r), logits, sampling.top_p, sampling.temperature)
    return sample_inverse_cdf(row_uniforms(keys, 0), z)


def sample_token(key: jax.Array, logits: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token per row from float32 logits [B, V], all rows from one key."""
    if sampling.greedy:
        return first_argmax(logits)
    z = logits / sampling.temperature
    if sampling.top_k:
        filtered = filter_logits(z, sampling.top_k, sampling.top_p)
        return sample_inverse_cdf(jax.random.uniform(key, z.shape[:1]), filtered)
    if sampling.top_p < 1.0:
        return sample_nucleus(key, logits, sampling.top_p, sampling.temperature)
    return sample_inverse_cdf(jax.random.uniform(key, z.shape[:1]), z)


def _block_weights(z: jax.Array, block: int):
    """Unnormalised weights exp(z - max) [B, nb, block] (zero padded) and their block sums [B, nb]."""
    B, V = z.shape
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    nb = -(-V // block)
    e = jnp.pad(e, ((0, 0), (0, nb * block - V))).reshape(B, nb, block)
    return e, jnp.sum(e, axis=-1)


def _first_above(cum: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Index of the first entry with cum > target [B], never past the last entry of positive weight."""
    n = cum.shape[-1]
    i = jnp.sum((cum <= target[:, None]).astype(jnp.int32), axis=-1)
    last = jnp.max(jnp.where(weights > 0, jnp.arange(n, dtype=jnp.int32), 0), axis=-1)
    return jnp.minimum(i, last)  # float rounding can leave target >= the last cumulative sum


def _inverse_cdf(u: jax.Array, e: jax.Array, block_sums: jax.Array) -> jax.Array:
    """Token j with cumsum(weights)_j > u · sum(weights), weights e [B, nb, block]; u [B] in [0, 1).

    Two levels (block sums, then one block) so the per-draw work is O(nb + block), not O(V).
    """
    block = e.shape[-1]
    bcum = jnp.cumsum(block_sums, axis=-1)
    target = u * bcum[:, -1]
    b = _first_above(bcum, target, block_sums)
    before = jnp.where(b > 0, jnp.take_along_axis(bcum, jnp.maximum(b - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
    inner = jnp.take_along_axis(e, b[:, None, None], axis=1)[:, 0]  # [B, block]
    j = _first_above(before[:, None] + jnp.cumsum(inner, axis=-1), target, inner)
    return (b * block + j).astype(jnp.int32)


def sample_inverse_cdf(u: jax.Array, z: jax.Array, block: int = 128) -> jax.Array:
    """Draw from softmax(z) (z [B, V], -inf = excluded) with one uniform u [B] per row.

    Inverse-CDF sampling in vocabulary order: one uniform per row instead of the [B, V] Gumbel noise
    of `jax.random.categorical` (hashing V random numbers per row per step is a large share of a CPU
    decode step).
    """
    e, sums = _block_weights(z, block)
    return _inverse_cdf(u, e, sums)


def sample_nucleus(key: jax.Array, logits: jax.Array, top_p: float, temperature: float = 1.0, rounds: int = 4,
                   block: int = 128) -> jax.Array:
    """Draw from softmax(logits / temperature) restricted to the top-p nucleus (the distribution of
    `filter_logits(z, 0, top_p)`). logits [B, V].

    Rejection sampling: draw y from softmax(z) by inverse CDF and accept it iff y is in the nucleus,
    i.e. the mass of tokens with larger logits is < top_p (one masked sum). An accepted draw has
    exactly the nucleus distribution p / p(nucleus); p(nucleus) >= top_p, so a row is still rejected
    after `rounds` draws with probability <= (1 - top_p)^rounds. Rows rejected every time (all rows,
    in that rare case) draw from the exactly filtered distribution (bisection cutoff) instead. The
    fallback draw is independent of the rejections, so the mixture is still exactly the nucleus
    distribution.
    """
    B = logits.shape[0]
    return _sample_nucleus(lambda r: jax.random.uniform(jax.random.fold_in(key, r), (B,)), logits, top_p,
                           temperature, rounds, block)


def _sample_nucleus(uniforms, logits: jax.Array, top_p: float, temperature: float = 1.0, rounds: int = 4,
                    block: int = 128) -> jax.Array:
    """`sample_nucleus` with the draws' uniforms given by `uniforms(r)` -> [B] for draw r = 0 .. rounds."""
    B = logits.shape[0]
    z = logits / temperature
    e, sums = _block_weights(z, block)
    flat = e.reshape(B, -1)[:, : z.shape[1]]
    limit = top_p * jnp.sum(sums, axis=-1)

    def draw(state):
        r, tok, ok = state
        y = _inverse_cdf(uniforms(r), e, sums)
        # "larger logit" is decided on the raw logits: XLA may round logits / temperature differently
        # in different fusions, and y must never count as larger than itself
        x_y = jnp.take_along_axis(logits, y[:, None], axis=-1)
        inside = jnp.sum(jnp.where(logits > x_y, flat, 0.0), axis=-1) < limit
        return r + 1, jnp.where(inside & ~ok, y, tok), ok | inside

    # stops as soon as every row has accepted a draw (usually after the first)
    init = (jnp.int32(0), jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool))
    _, tok, ok = jax.lax.while_loop(lambda s: (s[0] < rounds) & ~jnp.all(s[2]), draw, init)

    def fallback(tok):
        exact = sample_inverse_cdf(uniforms(rounds), filter_logits(z, 0, top_p), block)
        return jnp.where(ok, tok, exact)

    return jax.lax.cond(jnp.all(ok), lambda t: t, fallback, tok)


def _ends_with_any(generated: jax.Array, step: jax.Array, stop_seqs: tuple[tuple[int, ...], ...]) -> jax.Array:
    """Whether the tokens written up to and including `step` end with one of `stop_seqs`. [B] bool."""
    out = jnp.zeros(generated.shape[0], bool)
    for seq in stop_seqs:
        n = len(seq)
        start = jnp.maximum(step - n + 1, 0)
        tail = jax.lax.dynamic_slice_in_dim(generated, start, n, axis=1)
        out = out | ((step + 1 >= n) & jnp.all(tail == jnp.asarray(seq, jnp.int32), axis=1))
    return out


def _row_limits(max_lengths, rows: int, cap: int) -> jax.Array:
    """Per-row response-length limits [rows] int32: max_lengths clipped to [1, cap], or cap for every row."""
    if max_lengths is None:
        return jnp.full((rows,), cap, jnp.int32)
    return jnp.clip(jnp.asarray(max_lengths, jnp.int32), 1, cap)


def static_generate_traced(model: Transformer, prompt_ids, prompt_mask, key, *, sampling: SamplingConfig,
                           num_samples: int, eos_ids: tuple[int, ...], stop_seqs: tuple[tuple[int, ...], ...],
                           pad_id: int, max_lengths: jax.Array | None = None) -> Rollout:
    """The static sampler (traceable; call it inside jit): all B·N rows decode together in a
    [B·N, Tp + max_new_tokens] cache until the last row ends. max_lengths [B·N] (optional): row r stops
    (truncated) after max_lengths[r] tokens."""
    B, Tp = prompt_ids.shape
    N, T = num_samples, sampling.max_new_tokens
    prompt_mask = prompt_mask.astype(jnp.int32)
    logits, cache = model.prefill(prompt_ids, prompt_mask, Tp + T)
    weights = model.layer_weights()  # sliced once here, read in place by every decode step

    # Repeat the prefilled prompt N times: rows i*N .. i*N+N-1 belong to prompt i.
    rep = lambda x: jnp.repeat(x, N, axis=0)  # noqa: E731
    cache = jax.tree.map(rep, cache)
    last_logits = rep(logits)
    key_mask = rep(jnp.concatenate([prompt_mask, jnp.zeros((B, T), jnp.int32)], axis=1))
    next_pos = rep(jnp.sum(prompt_mask, axis=1))  # position id of the first generated token
    R = B * N
    rows = jnp.arange(R, dtype=jnp.int32)
    limits = _row_limits(max_lengths, R, T)
    stats_temperature = 1.0 if sampling.greedy else sampling.temperature
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def cond(carry):
        step, done = carry[0], carry[4]
        return (step < T) & ~jnp.all(done)

    def body(carry):
        step, cache, last_logits, key_mask, done, stopped, tokens, stats = carry
        tok = sample_token_rows(token_keys(key, rows, jnp.full((R,), step)), last_logits, sampling)
        tok = jnp.where(done, pad_id, tok)
        st = token_stats_from_logits(last_logits, tok, stats_temperature)
        live = ~done
        tokens = tokens.at[:, step].set(tok)
        stats = TokenStats(*(buf.at[:, step].set(jnp.where(live, v, 0.0)) for buf, v in zip(stats, st)))
        stop_now = live & (jnp.any(tok[:, None] == eos[None, :], axis=1) | _ends_with_any(tokens, step, stop_seqs))
        new_done = done | stop_now | (live & (step + 1 >= limits))
        key_mask = key_mask.at[:, Tp + step].set(live.astype(jnp.int32))
        logits, cache = model.decode_step(weights, tok, next_pos + step, key_mask, cache, Tp + step)
        return step + 1, cache, logits, key_mask, new_done, stopped | stop_now, tokens, stats

    tokens = jnp.full((R, T), pad_id, jnp.int32)
    stats = TokenStats(*(jnp.zeros((R, T), jnp.float32) for _ in range(4)))
    done = jnp.zeros((R,), bool)
    carry = (jnp.int32(0), cache, last_logits, key_mask, done, done, tokens, stats)
    step, _, _, key_mask, done, stopped, tokens, stats = jax.lax.while_loop(cond, body, carry)
    mask = key_mask[:, Tp:]
    lengths = jnp.sum(mask, axis=1)
    return Rollout(tokens=tokens, mask=mask, stats=stats, lengths=lengths, truncated=~stopped)


def generate_traced(model: Transformer, prompt_ids, prompt_mask, key, *, sampling: SamplingConfig, num_samples: int,
                    eos_ids: tuple[int, ...], stop_seqs: tuple[tuple[int, ...], ...], pad_id: int,
                    max_lengths: jax.Array | None = None) -> Rollout:
    """Sample `num_samples` responses per left-padded prompt, traceable (the trainer calls it inside its
    jitted step). Runs `sampling.engine`: the static sampler or the continuous-batching engine; both give
    the same Rollout, and for the same key the same tokens (a token's randomness is keyed by its row and
    position). max_lengths [B·N] (optional): per-row response-length limits <= max_new_tokens."""
    kw = dict(sampling=sampling, num_samples=num_samples, eos_ids=eos_ids, stop_seqs=stop_seqs, pad_id=pad_id,
              max_lengths=max_lengths)
    if sampling.engine == "continuous":
        from urlvr_jax.rollout.engine import continuous_generate_traced

        return continuous_generate_traced(model, prompt_ids, prompt_mask, key, **kw)[0]
    return static_generate_traced(model, prompt_ids, prompt_mask, key, **kw)


_generate = generate_traced  # the name other modules imported before it was public


@functools.lru_cache(maxsize=64)
def _jitted_generate(graphdef, sampling, num_samples, eos_ids, stop_seqs, pad_id):
    def fn(state, prompt_ids, prompt_mask, key, max_lengths):
        model = nnx.merge(graphdef, state)
        return generate_traced(model, prompt_ids, prompt_mask, key, sampling=sampling, num_samples=num_samples,
                               eos_ids=eos_ids, stop_seqs=stop_seqs, pad_id=pad_id, max_lengths=max_lengths)

    return jax.jit(fn)


def generate_ids(
    model: Transformer,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    key: jax.Array,
    sampling: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    eos_ids: Sequence[int] | None = None,
    stop_sequences: Sequence[Sequence[int]] = (),
    pad_id: int | None = None,
    max_lengths: Sequence[int] | jax.Array | None = None,
) -> Rollout:
    """Sample `num_samples` responses per left-padded prompt. prompt_ids/prompt_mask [B, Tp].

    eos_ids defaults to the model config's EOS ids. Deterministic for a given key, whichever engine
    (`sampling.engine`) runs. The batch may be sharded over the mesh (data/fsdp); parameters are read in
    place. max_lengths [B·N] (optional): row r stops after max_lengths[r] tokens (marked truncated unless it
    ended on EOS / a stop sequence first).
    """
    cfg = model.cfg
    eos = tuple(int(e) for e in (cfg.eos_token_ids if eos_ids is None else eos_ids))
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    stops = tuple(tuple(int(t) for t in s) for s in stop_sequences if len(s))
    rows = int(prompt_ids.shape[0]) * int(num_samples)
    if max_lengths is not None and tuple(jnp.shape(max_lengths)) != (rows,):
        raise ValueError(f"generate_ids: max_lengths has shape {tuple(jnp.shape(max_lengths))}, expected ({rows},) "
                         f"= prompts x num_samples")
    graphdef, state = nnx.split(model)
    fn = _jitted_generate(graphdef, sampling, int(num_samples), eos, stops, int(pad_id))
    limits = _row_limits(max_lengths, rows, sampling.max_new_tokens)
    return fn(state, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32), key, limits)


# ------------------------------------------------------------------------------------ scoring pass
def score_traced(model: Transformer, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float,
                 chunk: int, remat_chunks: bool = False) -> TokenStats:
    """Statistics of the response tokens under `model`; differentiable (the trainer's forward).

    remat_chunks: under `jax.grad`, recompute each chunk's [B, chunk, V] logits in the backward pass
    instead of keeping them, so training memory holds no full [B, T, V] tensor either.
    """
    ids = jnp.concatenate([prompt_ids, response_ids], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    hidden = model.hidden_states(ids, mask)
    Tp, Tr = prompt_ids.shape[1], response_ids.shape[1]
    h = hidden[:, Tp - 1: Tp + Tr - 1]  # the hidden state at t predicts token t+1
    # Project to the vocabulary a chunk of positions at a time: never a full [B, T, V] tensor.
    n_chunks = -(-Tr // chunk)
    pad = n_chunks * chunk - Tr
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
    toks = jnp.pad(response_ids, ((0, 0), (0, pad)))
    hc = h.reshape(h.shape[0], n_chunks, chunk, h.shape[-1]).swapaxes(0, 1)
    tc = toks.reshape(toks.shape[0], n_chunks, chunk).swapaxes(0, 1)

    def one(args):
        hh, tt = args
        return token_stats_from_logits(model.logits(hh), tt, temperature)

    if remat_chunks:
        one = jax.checkpoint(one)

    stats = jax.lax.map(one, (hc, tc))
    m = response_mask.astype(jnp.float32)
    return TokenStats(*(s.swapaxes(0, 1).reshape(h.shape[0], -1)[:, :Tr] * m for s in stats))


_score = score_traced  # the name other modules imported before it was public


@functools.lru_cache(maxsize=64)
def _jitted_score(graphdef, temperature, chunk):
    def fn(state, prompt_ids, prompt_mask, response_ids, response_mask):
        model = nnx.merge(graphdef, state)
        return score_traced(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature, chunk)

    return jax.jit(fn)


def score(model: Transformer, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float = 1.0,
          chunk: int = 128) -> TokenStats:
    """Recompute per-token statistics of given responses under `model` (policy or frozen reference).

    prompt_ids/prompt_mask [B, Tp] left-padded; response_ids/response_mask [B, Tr] right-padded.
    Returns TokenStats [B, Tr] (0 at padding), identical in definition to the sampler's.
    """
    graphdef, state = nnx.split(model)
    fn = _jitted_score(graphdef, float(temperature), int(min(chunk, response_ids.shape[1])))
    return fn(state, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32),
              jnp.asarray(response_ids, jnp.int32), jnp.asarray(response_mask, jnp.int32))
