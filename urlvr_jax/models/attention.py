"""Attention of full sequences (the update's forward/backward, the scoring pass, the prefill).

The implementations behind one switch, `model.attention` (config) / `Transformer(attention=...)`:

  dense   materialises float32 scores [B, H, T, S]: fastest for short sequences on CPU, quadratic memory.
  flash   blockwise online-softmax attention in plain JAX with a FlashAttention-2-style `jax.custom_vjp`:
          the forward saves only the output and the per-row log-sum-exp, the backward recomputes the
          probabilities block by block, so forward and backward memory is linear in the sequence length
          (differentiating through a chunked loop instead would save a per-block carry, still quadratic).
          Runs on CPU, GPU and TPU.
  splash  the Pallas TPU splash-attention kernel (causal mask, left padding as segment ids), under
          `shard_map` over the batch (and heads) mesh axes. TPU only; falls back to flash where the
          kernel does not import or the shapes do not fit it.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`. GPU only (see `cudnn_attention` for how
          left padding is expressed).
  auto    per platform and sequence length: `choose_attention`.

Every implementation computes the model's mask, `tril(T, S) & key_valid[b, s]` (query t sees real keys
s <= t), on every real token's row. Rows at padding positions differ between implementations and are never
read by a real token (padding keys are masked everywhere): a row with no visible key (left padding) gives a
uniform average in dense and zeros in flash; splash lets padding rows see the padding before them; cudnn
gives zeros on every padding row.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

_NEG_INF = -1e30  # finite: a fully masked row never computes inf - inf

IMPLEMENTATIONS = ("auto", "dense", "flash", "splash", "cudnn")

# "auto" on CPU: dense up to this many query positions, flash above. Measured (benchmarks/attention.py,
# benchmarks/README.md) at Qwen3-1.7B's heads and at the RL benchmark's: up to T = 384 dense's forward +
# backward was as fast as flash's or faster, from T = 512 flash took 0.4-0.7x dense's time and less memory.
AUTO_DENSE_MAX_LEN_CPU = 512
# "auto" on GPU, and on TPU where splash does not fit: dense up to this length, flash above. Not measured
# on these devices (none was available): the length where dense's scores reach 64 MiB per row and layer
# (16 heads). On TPU, "auto" takes splash wherever it fits (`splash_fits`), as MaxText does.
AUTO_DENSE_MAX_LEN_ACCEL = 1024

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256


# ------------------------------------------------------------------------------------------ dense
def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention. q [B,T,H,hd], k/v [B,S,K,hd], mask [B,T,S] bool -> [B,T,H,hd].

    Heads are moved before positions and each KV head's g query heads are stacked into one [g·T, hd]
    operand, so both products are one batched GEMM per (batch row, KV head) with g·T rows: on XLA:CPU
    forward + gradient 1.6x faster than the [B,T,K,g,hd] einsums (benchmarks/README.md)."""
    B, T, H, hd = q.shape
    S, K = k.shape[1], k.shape[2]
    g = H // K
    qg = q.reshape(B, T, K, g, hd).transpose(0, 2, 3, 1, 4).reshape(B, K, g * T, hd)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, hd]
    scores = jnp.einsum("bkmd,bksd->bkms", qg, kh, preferred_element_type=jnp.float32)
    scores = scores.reshape(B, K, g, T, S) / jnp.sqrt(jnp.float32(hd))
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(B, K, g * T, S)
    out = jnp.einsum("bkms,bksd->bkmd", probs, vh).reshape(B, K, g, T, hd)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)


def causal_mask(key_valid: jax.Array, T: int) -> jax.Array:
    """The model's mask [B, T, S]: query t sees key s when s <= t and key_valid[b, s]."""
    S = key_valid.shape[1]
    return jnp.tril(jnp.ones((T, S), bool))[None] & key_valid.astype(bool)[:, None, :]


# ------------------------------------------------------------------------------------------ flash
def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array | None = None,
    *,
    causal: bool = True,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> jax.Array:
    """Blockwise grouped-query attention with linear memory. q [B,T,H,hd], k/v [B,S,K,hd] (H a multiple of K;
    KV heads are never repeated), key_valid [B,S] bool (None: all keys real) -> [B,T,H,hd] in q's dtype.

    Mask: key_valid[b, s], and s <= t when causal. Scores, softmax statistics and the output accumulator are
    float32 whatever the input dtype. T and S need not be multiples of the blocks: each length is split into
    ceil(length / block) equal blocks of at most `block` positions, the last padded internally. With causal,
    key blocks entirely after a query block are skipped, and key blocks that are padding in every row are
    skipped in both passes.
    """
    B, T, H, hd = q.shape
    S, K = k.shape[1], k.shape[2]
    if k.shape != (B, S, K, hd) or v.shape != k.shape or H % K:
        raise ValueError(f"flash_attention: q {q.shape}, k {k.shape}, v {v.shape}: expected q [B,T,H,hd] and "
                         "k, v [B,S,K,hd] with H a multiple of K")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"flash_attention: block sizes must be positive (block_q={block_q}, block_k={block_k})")
    if key_valid is None:
        key_valid = jnp.ones((B, S), bool)
    elif key_valid.shape != (B, S):
        raise ValueError(f"flash_attention: key_valid {key_valid.shape} must be [B, S] = {(B, S)}")
    bq, bk = _balanced_block(T, block_q), _balanced_block(S, block_k)
    return _flash(q, k, v, key_valid.astype(bool), causal, bq, bk)


def _balanced_block(n: int, block: int) -> int:
    """The block size that covers n positions in as many blocks as `block` does, with the least padding
    (T = 320 with block 256: two blocks of 160, not two of 256)."""
    return -(-n // -(-n // block))


def _q_blocks(x: jax.Array, K: int, bq: int) -> jax.Array:
    """[B, T, H, d] -> [nq, B, K, g·bq, d]: row r of a block is query head (r // bq) of the KV head's group at
    position r % bq, so each block's products are one GEMM per (row, KV head) with g·bq rows."""
    B, T, H, d = x.shape
    nq, g = -(-T // bq), H // K
    x = jnp.pad(x, ((0, 0), (0, nq * bq - T), (0, 0), (0, 0)))
    return x.reshape(B, nq, bq, K, g, d).transpose(1, 0, 3, 4, 2, 5).reshape(nq, B, K, g * bq, d)


def _q_unblock(x: jax.Array, T: int, H: int) -> jax.Array:
    """Inverse of `_q_blocks`: [nq, B, K, g·bq, d] -> [B, T, H, d]."""
    nq, B, K, m, d = x.shape
    g = H // K
    bq = m // g
    return x.reshape(nq, B, K, g, bq, d).transpose(1, 0, 4, 2, 3, 5).reshape(B, nq * bq, H, d)[:, :T]


def _kv_blocks(x: jax.Array, bk: int) -> jax.Array:
    """[B, S, K, d] -> [nk, B, K, bk, d]."""
    B, S, K, d = x.shape
    nk = -(-S // bk)
    x = jnp.pad(x, ((0, 0), (0, nk * bk - S), (0, 0), (0, 0)))
    return x.reshape(B, nk, bk, K, d).transpose(1, 0, 3, 2, 4)


def _valid_blocks(key_valid: jax.Array, bk: int) -> jax.Array:
    """[B, S] -> [nk, B, bk] (padding positions are not valid)."""
    B, S = key_valid.shape
    nk = -(-S // bk)
    return jnp.pad(key_valid, ((0, 0), (0, nk * bk - S))).reshape(B, nk, bk).transpose(1, 0, 2)


def _block_mask(valid_j, i, j, g, bq, bk, causal):
    """Visibility [B, 1, g·bq, bk] of key block j to query block i."""
    mask = valid_j[:, None, None, :]
    if causal:
        q_pos = i * bq + jnp.tile(jnp.arange(bq), g)
        k_pos = j * bk + jnp.arange(bk)
        mask = mask & (q_pos[:, None] >= k_pos[None, :])[None, None]
    return mask


def _acc_dtype(dtype):
    """Accumulation dtype: float32 for bf16/f16/f32 inputs, float64 for float64 (the exactness tests)."""
    return jnp.promote_types(dtype, jnp.float32)


def _scores(qi, kj, hd):
    acc = _acc_dtype(qi.dtype)
    s = jnp.einsum("bkmd,bksd->bkms", qi, kj, preferred_element_type=acc)
    return s / jnp.sqrt(jnp.asarray(hd, acc))


def _first_key_block(kvb: jax.Array) -> jax.Array:
    """Index of the first key block holding a real key in any row (blocks before it are skipped)."""
    return jnp.argmax(jnp.any(kvb, axis=(1, 2))).astype(jnp.int32)


def _flash_forward(q, k, v, key_valid, causal, bq, bk):
    """(output [B,T,H,hd], log-sum-exp [nq, B, K, g·bq] in the accumulation dtype; 0 on rows that see no key)."""
    B, T, H, hd = q.shape
    K = k.shape[2]
    g = H // K
    qb, kb, vb, kvb = _q_blocks(q, K, bq), _kv_blocks(k, bk), _kv_blocks(v, bk), _valid_blocks(key_valid, bk)
    nk = kb.shape[0]
    start = _first_key_block(kvb)
    adt = _acc_dtype(q.dtype)

    def q_block(_, xs):
        i, qi = xs
        stop = jnp.minimum(nk, ((i + 1) * bq + bk - 1) // bk).astype(jnp.int32) if causal else jnp.int32(nk)

        def kv_step(j, carry):
            m, l, acc = carry
            s = _scores(qi, kb[j], hd)
            mask = _block_mask(kvb[j], i, j, g, bq, bk, causal)
            s = jnp.where(mask, s, _NEG_INF)
            m_new = jnp.maximum(m, s.max(axis=-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            l = l * alpha + p.sum(axis=-1)
            pv = jnp.einsum("bkms,bksd->bkmd", p.astype(vb.dtype), vb[j], preferred_element_type=adt)
            return m_new, l, acc * alpha[..., None] + pv

        m0 = jnp.full(qi.shape[:-1], _NEG_INF, adt)
        init = (m0, jnp.zeros_like(m0), jnp.zeros(qi.shape, adt))
        m, l, acc = jax.lax.fori_loop(start, stop, kv_step, init)
        seen = l > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return None, (out.astype(q.dtype), lse)

    _, (ob, lse) = jax.lax.scan(q_block, None, (jnp.arange(qb.shape[0], dtype=jnp.int32), qb))
    return _q_unblock(ob, T, H), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash(q, k, v, key_valid, causal, bq, bk):
    return _flash_forward(q, k, v, key_valid, causal, bq, bk)[0]


def _flash_fwd(q, k, v, key_valid, causal, bq, bk):
    out, lse = _flash_forward(q, k, v, key_valid, causal, bq, bk)
    return out, (q, k, v, key_valid, out, lse)


def _flash_bwd(causal, bq, bk, res, dout):
    """FlashAttention-2 backward: per key block j (outer loop), per query block i (inner): recompute
    P = exp(S - lse), dV_j += Pᵀ dO, dS = P ∘ (dO Vᵀ - rowsum(dO ∘ O)), dQ_i += dS K / √hd,
    dK_j += dSᵀ Q / √hd. dQ is one float32 (float64 for float64 inputs) accumulator the size of q; nothing
    is quadratic."""
    q, k, v, key_valid, out, lse = res
    B, T, H, hd = q.shape
    S, K = k.shape[1], k.shape[2]
    g = H // K
    adt = _acc_dtype(q.dtype)
    qb, dob = _q_blocks(q, K, bq), _q_blocks(dout.astype(q.dtype), K, bq)
    kb, vb, kvb = _kv_blocks(k, bk), _kv_blocks(v, bk), _valid_blocks(key_valid, bk)
    nq, nk = qb.shape[0], kb.shape[0]
    delta = _q_blocks(jnp.sum(dout.astype(adt) * out.astype(adt), axis=-1, keepdims=True),
                      K, bq)[..., 0]  # [nq, B, K, g·bq]
    start = _first_key_block(kvb)
    scale = 1.0 / jnp.sqrt(jnp.asarray(hd, adt))

    def kv_block(dq, xs):
        j, kj, vj, valid_j = xs
        first = (j * bk) // bq if causal else 0
        first = jnp.where(j < start, nq, first).astype(jnp.int32)  # a key block of padding only: no query sees it

        def q_step(i, carry):
            dq, dk, dv = carry
            qi, doi = qb[i], dob[i]
            mask = _block_mask(valid_j, i, j, g, bq, bk, causal)
            p = jnp.where(mask, jnp.exp(_scores(qi, kj, hd) - lse[i][..., None]), 0.0)
            dv = dv + jnp.einsum("bkms,bkmd->bksd", p.astype(doi.dtype), doi, preferred_element_type=adt)
            dp = jnp.einsum("bkmd,bksd->bkms", doi, vj, preferred_element_type=adt)
            ds = (p * (dp - delta[i][..., None]) * scale).astype(qi.dtype)
            dq = dq.at[i].add(jnp.einsum("bkms,bksd->bkmd", ds, kj, preferred_element_type=adt))
            dk = dk + jnp.einsum("bkms,bkmd->bksd", ds, qi, preferred_element_type=adt)
            return dq, dk, dv

        zeros = jnp.zeros(kj.shape, adt)
        dq, dk, dv = jax.lax.fori_loop(first, jnp.int32(nq), q_step, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq0 = jnp.zeros(qb.shape, adt)
    dq, (dkb, dvb) = jax.lax.scan(kv_block, dq0, (jnp.arange(nk, dtype=jnp.int32), kb, vb, kvb))
    dq = _q_unblock(dq, T, H).astype(q.dtype)

    def kv_unblock(x, dtype):  # [nk, B, K, bk, hd] -> [B, S, K, hd]
        return x.transpose(1, 0, 3, 2, 4).reshape(B, nk * bk, K, hd)[:, :S].astype(dtype)

    return dq, kv_unblock(dkb, k.dtype), kv_unblock(dvb, v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------------------ splash (TPU)
SPLASH_BLOCKS = (512, 256, 128)  # splash block size: the largest of these that divides T


def splash_fits(T: int, S: int, hd: int) -> bool:
    """Whether the TPU splash kernel takes these shapes (self-attention, length a multiple of 128, head_dim a
    multiple of 64: 64 and 128 compile for v5e) and imports."""
    if T != S or T % 128 or hd % 64:
        return False
    try:
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, rules=None,
                     interpret: bool = False) -> jax.Array:
    """Causal grouped-query attention with the Pallas TPU splash kernel (`make_splash_mha`, KV heads not
    repeated). q [B,T,H,hd], k/v [B,T,K,hd], key_valid [B,T] -> [B,T,H,hd]. Shapes must pass `splash_fits`.

    The kernel's masks are static, so the per-row padding goes in as segment ids: real tokens are segment
    1, padding segment 0, and a key is visible when its segment equals the query's and it is not in the
    future. Real query rows therefore see exactly the model's mask; a padding row sees the padding before
    it (itself at least, so no row is empty; its output is never read by a real token). The kernel runs one
    batch row at a time (vmap) under `shard_map` over the mesh's batch axes, and over its tensor axis when
    both head counts divide by it (rules: the model's ShardingRules; None: no shard_map, one device).
    interpret: run the kernel in the Pallas interpreter (any platform; the CPU tests' numerics check).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    B, T, H, hd = q.shape
    K = k.shape[2]
    scale = 1.0 / math.sqrt(hd)
    block = next(b for b in SPLASH_BLOCKS if T % b == 0)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    batch_axes = head_axis = None
    if rules is not None:
        batch_axes = rules.spec(("batch",), (B,))[0]
        tensor = rules.spec(("act_heads",))[0]  # a mesh axis name, a tuple of them, or None
        t_axes = (tensor,) if isinstance(tensor, str) else tuple(tensor or ())
        t_size = math.prod(rules.mesh.shape[a] for a in t_axes)
        head_axis = tensor if t_axes and H % t_size == 0 and K % t_size == 0 else None

    def local(q, k, v, valid):  # [b, T, h, hd], [b, T, kh, hd], [b, T]
        h = q.shape[2]
        mask = sm.MultiHeadMask([sm.CausalMask((T, T)) for _ in range(h)])
        kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        seg = valid.astype(jnp.int32)
        qh = (q.astype(jnp.float32) * scale).astype(q.dtype).transpose(0, 2, 1, 3)  # [b, h, T, hd]
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        out = _splash_default_precision(kernel, qh, kh, vh, seg)
        return out.transpose(0, 2, 1, 3)

    if rules is None:
        return local(q, k, v, key_valid)
    from jax.sharding import PartitionSpec as P

    spec = P(batch_axes, None, head_axis, None)
    return jax.shard_map(local, mesh=rules.mesh, in_specs=(spec, spec, spec, P(batch_axes, None)),
                         out_specs=spec, check_vma=False)(q, k, v, key_valid)


def _splash_batched(kernel, q, k, v, ids):
    """The splash kernel over a batch: q [b, h, T, hd], k/v [b, kh, T, hd], segment ids [b, T]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    return jax.vmap(lambda qi, ki, vi, si: kernel(qi, ki, vi, SegmentIds(q=si, kv=si)))(q, k, v, ids)


@jax.custom_vjp
def _splash_default_precision(kernel, q, k, v, ids):
    """`_splash_batched`, forward and backward traced under the default matmul precision.

    The splash kernels' bf16 dots do not compile (Mosaic: "Bad lhs type") when a global
    jax_default_matmul_precision of 'highest' is set (the test suite sets it); a context manager around
    the call covers only the forward, since the kernel's backward is traced later, while the caller's
    gradient is transposed. Hence this custom_vjp, whose backward runs the kernel's VJP in the context.
    The kernel (its mask tables) is an argument, not a closure: under jit its arrays are tracers."""
    with jax.default_matmul_precision("default"):
        return _splash_batched(kernel, q, k, v, ids)


def _splash_fwd(kernel, q, k, v, ids):
    with jax.default_matmul_precision("default"):
        out, vjp = jax.vjp(lambda a, b, c: _splash_batched(kernel, a, b, c, ids), q, k, v)
    return out, vjp


def _splash_bwd(vjp, g):
    with jax.default_matmul_precision("default"):
        return (None, *vjp(g), None)


_splash_default_precision.defvjp(_splash_fwd, _splash_bwd)


# ------------------------------------------------------------------------------------------ cuDNN (GPU)
def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
                    implementation: str = "cudnn") -> jax.Array:
    """Causal grouped-query attention with cuDNN's fused flash kernel (`jax.nn.dot_product_attention(
    implementation="cudnn")`). q [B,T,H,hd], k/v [B,T,K,hd], key_valid [B,T] -> [B,T,H,hd]. GPU only.

    cuDNN expresses padding only as per-row lengths of *right* padding (a boolean mask would become a
    [B, H, T, T] bias, quadratic again). The model's batches are left padded, so each row is rotated left
    by its number of leading padding positions (a per-row gather, linear in T), attended with is_causal and
    query/key lengths = the row's real-token count, and rotated back. This requires each row's real tokens
    to be one contiguous run (left padding, optionally right padding after it); padding rows give zeros.
    cuDNN takes bfloat16/float16 only (model.dtype = "bfloat16"). implementation="xla" runs the same
    rotation and lengths through jax.nn's XLA path (the CPU test of this function).
    """
    B, T, H, hd = q.shape
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention 'cudnn': cuDNN flash attention takes bfloat16/float16, got {q.dtype}; "
                         "set model.dtype='bfloat16' or use model.attention='flash'")
    valid = key_valid.astype(bool)
    lead = jnp.argmax(valid, axis=1).astype(jnp.int32)  # leading padding per row (0 for an all-padding row)
    lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
    idx = (jnp.arange(T, dtype=jnp.int32)[None, :] + lead[:, None]) % T  # rotated position -> source

    def rotate(x):
        return jnp.take_along_axis(x, idx[:, :, None, None], axis=1)

    out = jax.nn.dot_product_attention(rotate(q), rotate(k), rotate(v), is_causal=True, implementation=implementation,
                                       query_seq_lengths=lengths, key_value_seq_lengths=lengths)
    back = (jnp.arange(T, dtype=jnp.int32)[None, :] - lead[:, None]) % T
    out = jnp.take_along_axis(out, back[:, :, None, None], axis=1)
    real = (jnp.arange(T)[None, :] >= lead[:, None]) & (jnp.arange(T)[None, :] < (lead + lengths)[:, None])
    return jnp.where(real[:, :, None, None], out, 0).astype(q.dtype)


# ------------------------------------------------------------------------------------------ dispatch
def target_platform(rules=None) -> str:
    """The platform the model compiles for: its mesh's devices (abstract TPU devices when compiling ahead of
    time for a TPU topology from a CPU host), else JAX's default backend."""
    if rules is not None:
        return rules.mesh.devices.flat[0].platform
    return jax.default_backend()


def choose_attention(implementation: str, T: int, S: int, hd: int, platform: str) -> str:
    """The implementation `attention` runs: an explicit choice is kept where its platform allows (splash
    falls back to flash off TPU or where `splash_fits` is false; cudnn requires a GPU). "auto": on TPU the
    splash kernel wherever it fits; otherwise dense up to AUTO_DENSE_MAX_LEN_CPU (CPU) or
    AUTO_DENSE_MAX_LEN_ACCEL (GPU, TPU) query positions, flash above. "auto" never picks cudnn (untested
    here: no GPU was available)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: expected one of {IMPLEMENTATIONS}")
    if implementation == "cudnn":
        if platform not in ("gpu", "cuda"):
            raise ValueError(f"attention 'cudnn' needs a GPU (target platform: {platform}); use 'flash' or 'auto'")
        return "cudnn"
    if implementation == "splash":
        return "splash" if platform == "tpu" and splash_fits(T, S, hd) else "flash"
    if implementation != "auto":
        return implementation
    if platform == "tpu" and splash_fits(T, S, hd):
        return "splash"
    limit = AUTO_DENSE_MAX_LEN_CPU if platform == "cpu" else AUTO_DENSE_MAX_LEN_ACCEL
    return "dense" if T <= limit else "flash"


def make_attention(implementation: str, key_valid: jax.Array, *, head_dim: int, rules=None,
                   block_q: int | None = None, block_k: int | None = None) -> Callable:
    """`attend(q, k, v) -> [B,T,H,hd]` for causal self-attention over a batch whose real tokens are
    key_valid [B, T] (the model's mask tril(T, T) & key_valid), built once per forward (outside the layer
    scan: the dense mask is built once, not per layer). implementation: one of IMPLEMENTATIONS; flash block
    sizes default to DEFAULT_BLOCK_Q / DEFAULT_BLOCK_K (read at call time)."""
    B, T = key_valid.shape
    block_q, block_k = block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K
    chosen = choose_attention(implementation, T, T, head_dim, target_platform(rules))
    valid = key_valid.astype(bool)
    if chosen == "dense":
        mask = causal_mask(valid, T)
        return lambda q, k, v: dense_attention(q, k, v, mask)
    if chosen == "flash":
        return lambda q, k, v: flash_attention(q, k, v, valid, block_q=block_q, block_k=block_k)
    if chosen == "splash":
        return lambda q, k, v: splash_attention(q, k, v, valid, rules)
    return lambda q, k, v: cudnn_attention(q, k, v, valid)
