"""Decoder-only transformer in Flax NNX for the Llama, Qwen2, Qwen3 and OLMo-2 families.

Layer weights are stacked along a leading `layers` axis and the blocks run under `jax.lax.scan`, so
compile time does not grow with depth and per-layer rematerialisation is one `jax.checkpoint`.
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
    # [L, B, K, S, hd]: heads before positions, so attention reads each head's keys contiguously and a
    # decode step writes one [B, K, 1, hd] slab in place
    k: jax.Array
    v: jax.Array


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


class _Stack(nnx.Module):
    """Container for the layer-stacked parameters (attributes are set from `param_table`)."""


class Transformer(nnx.Module):
    """`model(input_ids, attention_mask=None) -> float32 logits [B, T, V]`."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        dtype: Any = jnp.float32,
        remat: bool = False,
        rules: ShardingRules | None = None,
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.rules = rules
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
        B, T = input_ids.shape
        mask = jnp.ones((B, T), bool) if attention_mask is None else attention_mask.astype(bool)
        positions = positions_from_mask(mask)
        causal = jnp.tril(jnp.ones((T, T), bool))
        attn_mask = causal[None] & mask[:, None, :]
        hidden, _ = self._run(input_ids, positions, attn_mask, cache=None, write_index=None)
        return hidden

    def forward_cached(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: KVCache,
        write_index: jax.Array,
        last_only: bool = False,
    ) -> tuple[jax.Array, KVCache]:
        """Forward T new tokens against a KV cache of length S.

        input_ids, positions [B, T]; key_mask [B, S] (valid cache slots, including the T being written at
        write_index .. write_index+T-1); returns float32 logits [B, T, V] (or [B, 1, V] for the last
        position only, as a prefill needs) and the updated cache.
        """
        T = input_ids.shape[1]
        S = cache.k.shape[3]
        slots = jnp.arange(S)[None, :]
        query_slots = write_index + jnp.arange(T)[:, None]
        attn_mask = (slots <= query_slots)[None] & key_mask.astype(bool)[:, None, :]
        hidden, cache = self._run(input_ids, positions, attn_mask, cache=cache, write_index=write_index)
        if last_only:
            hidden = hidden[:, -1:]
        return self.logits(hidden), cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Project hidden states [..., D] to float32 logits [..., V]."""
        if self.cfg.tie_word_embeddings:
            w = self.embed[...].astype(self.dtype)
            out = jnp.einsum("...d,vd->...v", hidden, w, preferred_element_type=jnp.float32)
        else:
            w = self.lm_head[...].astype(self.dtype)
            out = jnp.einsum("...d,dv->...v", hidden, w, preferred_element_type=jnp.float32)
        return out.astype(jnp.float32)

    # ------------------------------------------------------------------ internals
    def _run(self, input_ids, positions, attn_mask, cache: KVCache | None, write_index):
        cfg, dtype = self.cfg, self.dtype
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dtype)
        x = with_logical_constraint(x, ("batch", "sequence", "act_embed"), self.rules)
        cos, sin = rope_cos_sin(cfg, positions)
        layer_params = {s.path[1]: getattr(self.layers, s.path[1])[...] for s in param_table(cfg) if s.path[0] == "layers"}

        if cache is None:
            def body(h, p):
                return _block(cfg, dtype, p, h, cos, sin, attn_mask, None, write_index, self.rules)[0], None

            if self.remat:
                body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
            x, _ = jax.lax.scan(body, x, layer_params)
            new_cache = None
        else:
            # The whole cache rides in the scan carry and each layer writes its new entries in place
            # (dynamic_update_slice on a carried buffer): a decode step moves O(new tokens), not O(cache).
            def body(carry, xs):
                h, k_all, v_all = carry
                p, layer = xs
                h, (k_new, v_new), keys, values = _block_cached(cfg, dtype, p, h, cos, sin, attn_mask, k_all, v_all,
                                                               layer, write_index, self.rules)
                return (h, k_new, v_new), None

            layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
            (x, k_all, v_all), _ = jax.lax.scan(body, (x, cache.k, cache.v), (layer_params, layers))
            new_cache = KVCache(k_all, v_all)
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps, cfg.post_norms)
        return x, new_cache


def _qkv(cfg: ModelConfig, dtype, p, w, x, cos, sin):
    eps = cfg.rms_norm_eps
    attn_in = x if cfg.post_norms else rms_norm(x, p["norm1"], eps, False)
    q = jnp.einsum("btd,dhk->bthk", attn_in, w["q"])
    k = jnp.einsum("btd,dhk->bthk", attn_in, w["k"])
    v = jnp.einsum("btd,dhk->bthk", attn_in, w["v"])
    if cfg.attention_bias:
        q, k, v = q + w["q_bias"], k + w["k_bias"], v + w["v_bias"]
    if cfg.qk_norm == "head":
        q = rms_norm(q, p["q_norm"], eps, False)
        k = rms_norm(k, p["k_norm"], eps, False)
    elif cfg.qk_norm == "full":  # OLMo-2: one norm over the whole projection (all heads together)
        q = _rms_norm_multi(q, p["q_norm"], eps)
        k = _rms_norm_multi(k, p["k_norm"], eps)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def _finish(cfg: ModelConfig, p, w, x, attn, rules):
    """Output projection, residual, MLP, residual."""
    eps = cfg.rms_norm_eps
    attn = with_logical_constraint(attn, ("batch", "sequence", "act_heads", None), rules)
    out = jnp.einsum("bthk,hkd->btd", attn, w["o"])
    if cfg.o_bias:
        out = out + w["o_bias"]
    if cfg.post_norms:
        out = rms_norm(out, p["norm1"], eps, True)
    x = x + out

    mlp_in = x if cfg.post_norms else rms_norm(x, p["norm2"], eps, False)
    gate = jnp.einsum("btd,df->btf", mlp_in, w["gate"])
    up = jnp.einsum("btd,df->btf", mlp_in, w["up"])
    if cfg.mlp_bias:
        gate, up = gate + w["gate_bias"], up + w["up_bias"]
    hidden = jax.nn.silu(gate) * up
    out = jnp.einsum("btf,fd->btd", hidden, w["down"])
    if cfg.mlp_bias:
        out = out + w["down_bias"]
    if cfg.post_norms:
        out = rms_norm(out, p["norm2"], eps, True)
    x = x + out
    return with_logical_constraint(x, ("batch", "sequence", "act_embed"), rules)


def _block(cfg: ModelConfig, dtype, p, x, cos, sin, attn_mask, kv, write_index, rules):
    """One decoder layer without a cache (full-sequence forward)."""
    w = {k: v.astype(dtype) for k, v in p.items()}
    q, k, v = _qkv(cfg, dtype, p, w, x, cos, sin)
    return _finish(cfg, p, w, x, attention(q, k, v, attn_mask), rules), None


def _block_cached(cfg: ModelConfig, dtype, p, x, cos, sin, attn_mask, k_all, v_all, layer, write_index, rules):
    """One decoder layer against the stacked cache k_all/v_all [L, B, S, K, hd]; writes this layer's
    new keys/values at (layer, :, write_index) in place and attends over the layer's whole cache."""
    w = {k: v.astype(dtype) for k, v in p.items()}
    q, k, v = _qkv(cfg, dtype, p, w, x, cos, sin)
    zero = jnp.zeros((), jnp.int32)
    start = (layer, zero, zero, jnp.asarray(write_index, jnp.int32), zero)
    k_all = jax.lax.dynamic_update_slice(k_all, k.swapaxes(1, 2).astype(k_all.dtype)[None], start)
    v_all = jax.lax.dynamic_update_slice(v_all, v.swapaxes(1, 2).astype(v_all.dtype)[None], start)
    keys = jax.lax.dynamic_index_in_dim(k_all, layer, axis=0, keepdims=False).astype(dtype)
    values = jax.lax.dynamic_index_in_dim(v_all, layer, axis=0, keepdims=False).astype(dtype)
    x = _finish(cfg, p, w, x, attention(q, keys, values, attn_mask, kv_heads_first=True), rules)
    return x, (k_all, v_all), keys, values


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, kv_heads_first: bool = False) -> jax.Array:
    """Grouped-query attention. q [B,T,H,hd], k/v [B,S,K,hd] (or [B,K,S,hd] with kv_heads_first),
    mask [B,T,S] bool -> [B,T,H,hd]."""
    B, T, H, hd = q.shape
    K = k.shape[1] if kv_heads_first else k.shape[2]
    kv = "bksd" if kv_heads_first else "bskd"
    qg = q.reshape(B, T, K, H // K, hd)
    scores = jnp.einsum(f"btkgd,{kv}->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(hd))
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kv}->btkgd", probs, v)
    return out.reshape(B, T, H, hd)


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
