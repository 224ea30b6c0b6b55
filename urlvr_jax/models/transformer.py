"""Decoder-only transformer in Flax NNX for the Llama, Qwen2, Qwen3 and OLMo-2 families.

Layer weights are stacked along a leading `layers` axis and full-sequence forwards (training, scoring,
prefill) run the blocks under `jax.lax.scan`, so compile time does not grow with depth and per-layer
rematerialisation is one `jax.checkpoint`. The one-token decode step is different: it is tiny and runs
hundreds of times per generate call, so it unrolls the layers over weights sliced (and q/k/v and
gate/up fused) once per call (`layer_weights`) and over one KV-cache buffer per layer, updated in place.
Projections are 2-D matmuls ([B·T, D] @ [D, F]), not batched einsums (see `_dot`).
Every parameter is declared once in `param_table` (shape, logical axes, initialiser); initialisation,
sharding and the Hugging Face weight mapping (weights.py) all derive from that table.

Layouts (ours -> transformers): q [D, H, hd] <- q_proj.weight [H*hd, D]; o [H, hd, D] <- o_proj.weight
[D, H*hd]; gate/up [D, F] <- [F, D]; down [F, D] <- [D, F]; lm_head [D, V] <- [V, D].

Left padding: positions count only real tokens (cumsum of the mask), and padded keys are masked, so
the logits of real tokens do not depend on how much padding precedes them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from urlvr_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from urlvr_jax.models.attention import make_attention
from urlvr_jax.models.config import ModelConfig
from urlvr_jax.sharding import ShardingRules, with_logical_constraint

_NEG_INF = -1e30  # finite: a fully padded query row gives a uniform (ignored) softmax, not NaN


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    path: tuple[str, ...]  # attribute path in the NNX module, e.g. ("layers", "q")
    shape: tuple[int, ...]
    logical_axes: tuple[str | None, ...]
    init: str  # "normal" | "ones" | "zeros"


def param_table(cfg: ModelConfig) -> list[ParamSpec]:
    """Every parameter of the model: the single source of shapes, shardings and initialisers."""
    L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    H, K, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    specs = [
        ParamSpec(("embed",), (V, D), ("vocab", "embed"), "normal"),
        ParamSpec(("layers", "norm1"), (L, D), ("layers", "norm"), "ones"),
        ParamSpec(("layers", "norm2"), (L, D), ("layers", "norm"), "ones"),
        ParamSpec(("layers", "q"), (L, D, H, hd), ("layers", "embed", "q_heads", "head_dim"), "normal"),
        ParamSpec(("layers", "k"), (L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        ParamSpec(("layers", "v"), (L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        ParamSpec(("layers", "o"), (L, H, hd, D), ("layers", "q_heads", "head_dim", "embed"), "normal"),
        ParamSpec(("layers", "gate"), (L, D, F), ("layers", "embed", "mlp"), "normal"),
        ParamSpec(("layers", "up"), (L, D, F), ("layers", "embed", "mlp"), "normal"),
        ParamSpec(("layers", "down"), (L, F, D), ("layers", "mlp", "embed"), "normal"),
        ParamSpec(("final_norm",), (D,), ("norm",), "ones"),
    ]
    if cfg.attention_bias:
        specs += [
            ParamSpec(("layers", "q_bias"), (L, H, hd), ("layers", "q_heads", "head_dim"), "zeros"),
            ParamSpec(("layers", "k_bias"), (L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros"),
            ParamSpec(("layers", "v_bias"), (L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros"),
        ]
    if cfg.o_bias:
        specs.append(ParamSpec(("layers", "o_bias"), (L, D), ("layers", "norm"), "zeros"))
    if cfg.mlp_bias:
        specs += [
            ParamSpec(("layers", "gate_bias"), (L, F), ("layers", "mlp"), "zeros"),
            ParamSpec(("layers", "up_bias"), (L, F), ("layers", "mlp"), "zeros"),
            ParamSpec(("layers", "down_bias"), (L, D), ("layers", "norm"), "zeros"),
        ]
    if cfg.qk_norm == "head":
        specs += [
            ParamSpec(("layers", "q_norm"), (L, hd), ("layers", "head_dim"), "ones"),
            ParamSpec(("layers", "k_norm"), (L, hd), ("layers", "head_dim"), "ones"),
        ]
    elif cfg.qk_norm == "full":
        specs += [
            ParamSpec(("layers", "q_norm"), (L, H, hd), ("layers", "q_heads", "head_dim"), "ones"),
            ParamSpec(("layers", "k_norm"), (L, K, hd), ("layers", "kv_heads", "head_dim"), "ones"),
        ]
    if not cfg.tie_word_embeddings:
        specs.append(ParamSpec(("lm_head",), (D, V), ("embed", "vocab"), "normal"))
    return specs


class KVCache(NamedTuple):
    """Per-layer caches: keys [B, K, hd, S] (positions minor), values [B, K, S, hd]. With positions minor
    the decode step's scores q·k are a reduction over hd that XLA:CPU vectorises along S, and the
    weighted sum of values one over S along hd: 3.6x faster than the [B, K, S, hd] key layout's
    batched dot with 2 query rows per KV head (benchmarks/README.md). A decode step writes one
    [B, K, hd, 1] / [B, K, 1, hd] slab in place. One array per layer, not one stacked [L, ...] array:
    the unrolled decode step updates and reads layer i's buffer without slicing a stacked one (a slice
    of a stacked buffer is a copy on XLA:CPU)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers)),
                   tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers)))


# Norm scales stay in their parameter dtype (rms_norm casts them itself, OLMo-2 after scaling in float32);
# every other layer weight is cast to the compute dtype once.
_NORM_KEYS = frozenset({"norm1", "norm2", "q_norm", "k_norm"})


def _compute_weights(p: dict[str, jax.Array], dtype) -> dict[str, jax.Array]:
    return {k: (v if k in _NORM_KEYS else v.astype(dtype)) for k, v in p.items()}


class _Stack(nnx.Module):
    """Container for the layer-stacked parameters (attributes are set from `param_table`)."""


class Transformer(nnx.Module):
    """`model(input_ids, attention_mask=None) -> float32 logits [B, T, V]`.

    attention: the full-sequence attention (training, scoring, prefill), one of "auto", "dense", "flash",
    "splash", "cudnn" (models/attention.py); the decode step always uses `decode_attention`.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        dtype: Any = jnp.float32,
        remat: bool = False,
        rules: ShardingRules | None = None,
        attention: str = "auto",
    ):
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"Transformer(attention={attention!r}): expected one of {ATTENTION_IMPLEMENTATIONS}")
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.rules = rules
        self.attention = attention
        self.layers = _Stack()
        key = rngs.params()
        for i, spec in enumerate(param_table(cfg)):
            if spec.init == "normal":
                value = 0.02 * jax.random.normal(jax.random.fold_in(key, i), spec.shape, jnp.float32)
            elif spec.init == "ones":
                value = jnp.ones(spec.shape, jnp.float32)
            else:
                value = jnp.zeros(spec.shape, jnp.float32)
            owner = self if len(spec.path) == 1 else getattr(self, spec.path[0])
            setattr(owner, spec.path[-1], nnx.Param(value.astype(param_dtype), logical_axes=spec.logical_axes))

    # ------------------------------------------------------------------ public entry points
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Full-sequence forward. input_ids [B, T] int; attention_mask [B, T] (1 = real token)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        return self.logits(hidden)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Final-normed hidden states [B, T, D] (compute dtype); `logits` projects them."""
        return self._forward(input_ids, attention_mask, collect_kv=False)[0]

    def prefill(self, input_ids: jax.Array, attention_mask: jax.Array, max_len: int) -> tuple[jax.Array, KVCache]:
        """Run a left-padded prompt batch and build the decode cache.

        input_ids, attention_mask [B, Tp]; returns float32 logits of the last position [B, V] and a
        KVCache of length max_len (>= Tp) holding the prompt's keys/values in slots 0 .. Tp-1.
        """
        B, Tp = input_ids.shape
        if max_len < Tp:
            raise ValueError(f"prefill: max_len={max_len} is shorter than the prompt length {Tp}")
        hidden, (ks, vs) = self._forward(input_ids, attention_mask, collect_kv=True)
        # scan outputs [L, B, Tp, K, hd] -> per layer keys [B, K, hd, S], values [B, K, S, hd]; once per call
        ks = jnp.pad(ks.transpose(0, 1, 3, 4, 2), ((0, 0), (0, 0), (0, 0), (0, 0), (0, max_len - Tp)))
        vs = jnp.pad(vs.swapaxes(2, 3), ((0, 0), (0, 0), (0, 0), (0, max_len - Tp), (0, 0)))
        L = self.cfg.num_layers
        cache = KVCache(tuple(ks[i] for i in range(L)), tuple(vs[i] for i in range(L)))
        return self.logits(hidden[:, -1]), cache

    def layer_weights(self, fuse: bool = True) -> list[dict[str, jax.Array]]:
        """Per-layer weights (matmul weights in the compute dtype), sliced out of the stacked parameters.

        The decode loop takes these once per generate call: slicing the stacked [L, ...] parameters
        inside every decode step copies every layer's weights every step on XLA:CPU.
        """
        stacked = {s.path[1]: getattr(self.layers, s.path[1])[...] for s in param_table(self.cfg)
                   if s.path[0] == "layers"}
        cfg, layers = self.cfg, []
        D, K = cfg.hidden_size, cfg.num_kv_heads
        for i in range(cfg.num_layers):
            w = _compute_weights({k: v[i] for k, v in stacked.items()}, self.dtype)
            if fuse:
                # Two matmuls per layer instead of five (fewer, larger ops per decode step). The fused
                # axes keep the sharded axis (kv heads, MLP) major, so a tensor-parallel shard of a
                # fused weight is the concatenation of the same shards of its parts: qkv [D, K, (g+2)·hd]
                # holds, per KV head, its g query heads then its key and value; gate_up [D, F, 2].
                q = w.pop("q").reshape(D, K, -1)
                w["qkv"] = jnp.concatenate([q, w.pop("k"), w.pop("v")], axis=-1)
                w["gate_up"] = jnp.stack([w.pop("gate"), w.pop("up")], axis=-1)
            layers.append(w)
        return layers

    def decode_step(
        self,
        weights: list[dict[str, jax.Array]],
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache,
        write_index: jax.Array,
    ) -> tuple[jax.Array, KVCache]:
        """One new token per row against the cache, layers unrolled.

        weights: `layer_weights()`; tokens, positions [B]; key_mask [B, S] (valid cache slots, including
        write_index, where this step's keys/values are written in place). Returns float32 logits [B, V]
        and the updated cache.
        """
        cfg, dtype = self.cfg, self.dtype
        x = jnp.take(self.embed[...], tokens[:, None], axis=0).astype(dtype)  # [B, 1, D]
        cos, sin = rope_cos_sin(cfg, positions[:, None])
        mask = key_mask.astype(bool)[:, None, :]
        zero = jnp.zeros((), jnp.int32)
        index = jnp.asarray(write_index, jnp.int32)
        k_start, v_start = (zero, zero, zero, index), (zero, zero, index, zero)
        ks, vs = list(cache.k), list(cache.v)
        for i, w in enumerate(weights):
            q, k, v = _qkv(cfg, w, x, cos, sin)
            ks[i] = jax.lax.dynamic_update_slice(ks[i], k.transpose(0, 2, 3, 1).astype(ks[i].dtype), k_start)
            vs[i] = jax.lax.dynamic_update_slice(vs[i], v.swapaxes(1, 2).astype(vs[i].dtype), v_start)
            attn = decode_attention(q, ks[i].astype(dtype), vs[i].astype(dtype), mask)
            x = _finish(cfg, w, x, attn, self.rules)
        x = rms_norm(x[:, 0], self.final_norm[...], cfg.rms_norm_eps, cfg.post_norms)
        return self.logits(x), KVCache(tuple(ks), tuple(vs))

    def decode_step_slots(
        self,
        weights: list[dict[str, jax.Array]],
        tokens: jax.Array,
        positions: jax.Array,
        prompt_cache: KVCache,
        prompt_mask: jax.Array,
        prompt_index: jax.Array,
        cache: KVCache,
        write_index: jax.Array,
        block: int,
        groups: int = 1,
    ) -> tuple[jax.Array, KVCache]:
        """One new token per decode slot, each slot at its own response position (continuous batching).

        A slot's keys are two segments: its prompt's, read from `prompt_cache` (one entry per prompt, shared
        by every slot decoding a sample of that prompt: never copied per sample), then its own response's,
        in `cache` (one entry per slot). weights: `layer_weights()`; tokens, positions, write_index [S]
        (write_index = the response position this token's keys/values are written to, in place, and the
        number of response positions before it); prompt_cache: KVCache [P, K, hd, Tp] / [P, K, Tp, hd];
        prompt_mask [P, Tp] bool; prompt_index [S] (the prompt of each slot); cache: KVCache [S, K, hd, T] /
        [S, K, T, hd] with T a multiple of `block`. The response segment is read `block` positions at a
        time, only up to the longest slot's length (`ragged_decode_attention`). Returns float32 logits [S, V]
        and the updated slot cache.

        groups > 1 splits prompts and slots into that many contiguous groups (one per device along the batch
        axes, see `take_in_groups`): a slot of group g must decode a prompt of group g, and then the prompt KV
        a slot reads never leaves its device (one global gather would replicate every prompt's KV on every
        device).
        """
        cfg, dtype = self.cfg, self.dtype
        S = tokens.shape[0]
        x = jnp.take(self.embed[...], tokens[:, None], axis=0).astype(dtype)  # [S, 1, D]
        cos, sin = rope_cos_sin(cfg, positions[:, None])
        slots = jnp.arange(S)
        index = jnp.asarray(write_index, jnp.int32)
        lengths = index + 1  # response positions each slot attends to, this token's included
        p_mask = take_in_groups(prompt_mask.astype(bool), prompt_index, groups)
        ks, vs = list(cache.k), list(cache.v)
        for i, w in enumerate(weights):
            q, k, v = _qkv(cfg, w, x, cos, sin)
            ks[i] = ks[i].at[slots, :, :, index].set(k[:, 0].astype(ks[i].dtype))  # [S, K, hd] at (slot, t)
            vs[i] = vs[i].at[slots, :, index, :].set(v[:, 0].astype(vs[i].dtype))
            pk = take_in_groups(prompt_cache.k[i], prompt_index, groups).astype(dtype)
            pv = take_in_groups(prompt_cache.v[i], prompt_index, groups).astype(dtype)
            attn, ks[i], vs[i] = ragged_decode_attention(q, pk, pv, p_mask, ks[i], vs[i], lengths, block)
            x = _finish(cfg, w, x, attn, self.rules)
        x = rms_norm(x[:, 0], self.final_norm[...], cfg.rms_norm_eps, cfg.post_norms)
        return self.logits(x), KVCache(tuple(ks), tuple(vs))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Project hidden states [..., D] to float32 logits [..., V]."""
        if self.cfg.tie_word_embeddings:
            w = self.embed[...].astype(self.dtype)
            out = jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head[...].astype(self.dtype)
            out = _dot(hidden, w, 1, preferred_element_type=jnp.float32)
        return out.astype(jnp.float32)

    # ------------------------------------------------------------------ internals
    def _forward(self, input_ids, attention_mask, collect_kv: bool):
        """Full-sequence forward under a layer scan: (final-normed hidden [B, T, D], stacked (k, v)
        [L, B, T, K, hd] each, or None)."""
        cfg, dtype = self.cfg, self.dtype
        B, T = input_ids.shape
        mask = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
        positions = positions_from_mask(mask)
        attend = make_attention(self.attention, mask, head_dim=cfg.head_dim, rules=self.rules)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dtype)
        x = with_logical_constraint(x, ("batch", "sequence", "act_embed"), self.rules)
        cos, sin = rope_cos_sin(cfg, positions)
        layer_params = {s.path[1]: getattr(self.layers, s.path[1])[...] for s in param_table(cfg)
                        if s.path[0] == "layers"}

        def body(h, p):
            w = _compute_weights(p, dtype)
            q, k, v = _qkv(cfg, w, h, cos, sin)
            h = _finish(cfg, w, h, attend(q, k, v), self.rules)
            return h, ((k, v) if collect_kv else None)

        if self.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        x, kv = jax.lax.scan(body, x, layer_params)
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps, cfg.post_norms)
        return x, kv


def _dot(x: jax.Array, w: jax.Array, n_contract: int, **kw) -> jax.Array:
    """Contract the last n_contract axes of x [..., *c] with the first of w [*c, *out] -> [..., *out].

    Written as one 2-D matmul [prod(...), prod(c)] @ [prod(c), prod(out)] rather than a batched einsum
    over [B, T, ...]: XLA:CPU's backward of the 3-D einsum writes transposed copies of the activation
    gradients for the weight-gradient dots (measured ~20% of a training update), the 2-D form does not.
    """
    lead, contract, out = x.shape[: x.ndim - n_contract], w.shape[:n_contract], w.shape[n_contract:]
    y = jnp.matmul(x.reshape(-1, math.prod(contract)), w.reshape(math.prod(contract), -1), **kw)
    return y.reshape(*lead, *out)


def _qkv(cfg: ModelConfig, w, x, cos, sin):
    """q [B, T, H, hd], k/v [B, T, K, hd] of x [B, T, D] (w: one layer's `_compute_weights`)."""
    eps = cfg.rms_norm_eps
    attn_in = x if cfg.post_norms else rms_norm(x, w["norm1"], eps, False)
    if "qkv" in w:  # fused decode weights [D, K, (g+2)·hd] (Transformer.layer_weights)
        H, hd = cfg.num_heads, cfg.head_dim
        qkv = _dot(attn_in, w["qkv"], 1)  # [B, T, K, (g+2)·hd]
        g = H // cfg.num_kv_heads
        q = qkv[..., : g * hd].reshape(*qkv.shape[:-2], H, hd)  # query head j·g+i belongs to KV head j
        k, v = qkv[..., g * hd: (g + 1) * hd], qkv[..., (g + 1) * hd:]
    else:
        q, k, v = _dot(attn_in, w["q"], 1), _dot(attn_in, w["k"], 1), _dot(attn_in, w["v"], 1)
    if cfg.attention_bias:
        q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
    if cfg.qk_norm == "head":
        q = rms_norm(q, w["q_norm"], eps, False)
        k = rms_norm(k, w["k_norm"], eps, False)
    elif cfg.qk_norm == "full":  # OLMo-2: one norm over the whole projection (all heads together)
        q = _rms_norm_multi(q, w["q_norm"], eps)
        k = _rms_norm_multi(k, w["k_norm"], eps)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _finish(cfg: ModelConfig, w, x, attn, rules):
    """Output projection, residual, MLP, residual."""
    eps = cfg.rms_norm_eps
    attn = with_logical_constraint(attn, ("batch", "sequence", "act_heads", None), rules)
    out = _dot(attn, w["o"], 2)
    if cfg.o_bias:
        out = out + w["o_bias"]
    if cfg.post_norms:
        out = rms_norm(out, w["norm1"], eps, True)
    x = x + out

    mlp_in = x if cfg.post_norms else rms_norm(x, w["norm2"], eps, False)
    if "gate_up" in w:  # fused decode weights [D, F, 2]
        gate_up = _dot(mlp_in, w["gate_up"], 1)
        gate, up = gate_up[..., 0], gate_up[..., 1]
    else:
        gate, up = _dot(mlp_in, w["gate"], 1), _dot(mlp_in, w["up"], 1)
    if cfg.mlp_bias:
        gate, up = gate + w["gate_bias"], up + w["up_bias"]
    out = _dot(jax.nn.silu(gate) * up, w["down"], 1)
    if cfg.mlp_bias:
        out = out + w["down_bias"]
    if cfg.post_norms:
        out = rms_norm(out, w["norm2"], eps, True)
    x = x + out
    return with_logical_constraint(x, ("batch", "sequence", "act_embed"), rules)


def decode_attention(q: jax.Array, k_t: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of one new position against the cache (the decode step's form of
    `attention`). q [B, 1, H, hd], k_t [B, K, hd, S] (positions minor), v [B, K, S, hd], mask [B, 1, S]
    bool -> [B, 1, H, hd]. The same arithmetic as `attention` (float32 scores, scaled, masked, softmax)."""
    B, _, H, hd = q.shape
    K, S = k_t.shape[1], k_t.shape[3]
    qg = q.reshape(B, K, H // K, hd)
    scores = jnp.einsum("bkgd,bkds->bkgs", qg, k_t, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(hd))
    scores = jnp.where(mask.reshape(B, 1, 1, S), scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
    return out.reshape(B, 1, H, hd)


def take_in_groups(x: jax.Array, index: jax.Array, groups: int) -> jax.Array:
    """x[index] along axis 0, with x [B, ...] and index [S] split into `groups` contiguous groups, where
    index[s] must point into the group of s (B / groups rows of x, S / groups entries of index per group).

    The same values as jnp.take(x, index, axis=0), written as a gather batched over the group axis: when
    both are sharded over that axis (the batch axes of the mesh, one group per device), the SPMD
    partitioner keeps each group's gather on its device instead of all-gathering x.
    """
    if groups == 1:
        return jnp.take(x, index, axis=0)
    B, S = x.shape[0], index.shape[0]
    if B % groups or S % groups:
        raise ValueError(f"take_in_groups: {B} rows and {S} indices do not split into {groups} groups")
    xg = x.reshape((groups, B // groups) + x.shape[1:])
    local = index.reshape(groups, S // groups) - (B // groups) * jnp.arange(groups, dtype=index.dtype)[:, None]
    out = jax.vmap(lambda a, i: jnp.take(a, i, axis=0, mode="clip"))(xg, local)
    return out.reshape((S,) + x.shape[1:])


def ragged_decode_attention(q: jax.Array, prompt_k_t: jax.Array, prompt_v: jax.Array, prompt_mask: jax.Array,
                            k_t: jax.Array, v: jax.Array, lengths: jax.Array, block: int) -> jax.Array:
    """Grouped-query attention of one new position per row against two key segments: the row's prompt
    (prompt_k_t [B, K, hd, Tp], prompt_v [B, K, Tp, hd], prompt_mask [B, Tp] bool) and the first
    `lengths` [B] positions of its response (k_t [B, K, hd, T], v [B, K, T, hd], T a multiple of `block`).
    q [B, 1, H, hd] -> ([B, 1, H, hd], k_t, v): the caches come back unchanged, to be used in place of the
    ones passed in (so XLA can keep one buffer; see the loop below).

    The response segment is read `block` positions at a time with an online softmax (running max, sum and
    weighted values in float32), for ceil(max(lengths) / block) blocks: the cost follows what the longest
    row has written, not the cache's capacity. Positions at or beyond a row's length are masked. Same
    arithmetic as `decode_attention` (float32 scores scaled by 1/sqrt(hd), masked keys excluded) up to the
    summation order of the softmax.
    """
    B, _, H, hd = q.shape
    K, T = k_t.shape[1], k_t.shape[3]
    if T % block:
        raise ValueError(f"ragged_decode_attention: response capacity {T} is not a multiple of block {block}")
    qg = q.reshape(B, K, H // K, hd)
    scale = 1.0 / jnp.sqrt(jnp.float32(hd))
    s = jnp.einsum("bkgd,bkds->bkgs", qg, prompt_k_t, preferred_element_type=jnp.float32) * scale
    s = jnp.where(prompt_mask[:, None, None, :], s, _NEG_INF)
    m = jnp.max(s, axis=-1, keepdims=True)  # [B, K, g, 1]
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    acc = jnp.einsum("bkgs,bksd->bkgd", p.astype(v.dtype), prompt_v, preferred_element_type=jnp.float32)
    offsets = jnp.arange(block, dtype=jnp.int32)

    def one_block(b, carry):
        m, denom, acc, k_t, v = carry
        start = b * block
        kb = jax.lax.dynamic_slice_in_dim(k_t, start, block, axis=3)
        vb = jax.lax.dynamic_slice_in_dim(v, start, block, axis=2)
        s = jnp.einsum("bkgd,bkds->bkgs", qg, kb, preferred_element_type=jnp.float32) * scale
        valid = (start + offsets)[None, :] < lengths[:, None]
        s = jnp.where(valid[:, None, None, :], s, _NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        rescale = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new)
        denom = denom * rescale + jnp.sum(p, axis=-1, keepdims=True)
        acc = acc * rescale + jnp.einsum("bkgs,bksd->bkgd", p.astype(v.dtype), vb,
                                         preferred_element_type=jnp.float32)
        return m_new, denom, acc, k_t, v

    # The caches ride through the loop as carried (unchanged) state and are returned: passed in as
    # loop-invariant operands instead, XLA copies the whole [B, K, hd, T] buffers into the loop at every
    # call (measured on XLA:CPU: the step cost then grows with the capacity T, not the lengths).
    n_blocks = jnp.minimum((jnp.max(lengths) + block - 1) // block, T // block)
    m, denom, acc, k_t, v = jax.lax.fori_loop(0, n_blocks, one_block, (m, denom, acc, k_t, v))
    return (acc / denom).astype(v.dtype).reshape(B, 1, H, hd), k_t, v


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, weight_before_cast: bool) -> jax.Array:
    """RMSNorm over the last axis, statistics in float32.

    Llama/Qwen cast the normalised activations back to the input dtype before scaling by the weight;
    OLMo-2 scales first and casts after (`weight_before_cast`). The two agree in float32.
    """
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if weight_before_cast:
        return (weight.astype(jnp.float32) * xf).astype(dtype)
    return weight.astype(dtype) * xf.astype(dtype)


def _rms_norm_multi(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm over the last two axes [..., heads, hd] jointly (OLMo-2's q/k norm)."""
    shape = x.shape
    flat = x.reshape(*shape[:-2], shape[-2] * shape[-1])
    return rms_norm(flat, weight.reshape(-1), eps, True).reshape(shape)


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Position ids that count only real tokens: [0,0,0,1,2] for mask [0,0,1,1,1] (left padding)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [hd/2], float32 as transformers computes them."""
    hd = cfg.head_dim
    inv = (1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd)))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        inv = inv / np.float32(cfg.rope_factor)
    elif cfg.rope_type == "llama3":
        factor = cfg.rope_factor
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_max_positions
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_cos_sin(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, hd] for integer positions [B, T] (rotate-half layout, as transformers)."""
    inv = jnp.asarray(rope_inv_freq(cfg))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin
