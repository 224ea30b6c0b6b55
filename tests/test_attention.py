"""Linear-memory attention (models/attention.py) against dense attention computed in float64.

The reference is the textbook definition (KV heads repeated, masked softmax, rows with no visible key give
zeros) in JAX with x64 enabled, differentiated by autodiff: independent of the FlashAttention-2 backward
formulas under test. Tolerances, chosen once:
  float64 inputs   1e-10  (same arithmetic up to summation order: checks the algorithm exactly)
  float32 inputs   atol 2e-5, rtol 1e-5 on values and gradients of magnitude ~1 (float32 rounding, ~1e-7 per
                   op, over block-wise rescaling)
  bfloat16 inputs  atol 4e-2 on values, 1e-1 on gradients (output and cotangents rounded to 8 mantissa
                   bits; dense attention in bfloat16 is off from the float64 reference by the same order)
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urlvr_jax.models import attention as attn
from urlvr_jax.models.attention import causal_mask, choose_attention, dense_attention, flash_attention


def reference(q, k, v, mask):
    """Textbook grouped-query attention in the inputs' dtype; a row with no visible key gives zeros."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    s = jnp.where(mask[:, None], s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.where(mask[:, None], jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0)), 0)
    den = jnp.sum(e, axis=-1, keepdims=True)
    return jnp.einsum("bhts,bshd->bthd", e / jnp.where(den > 0, den, 1), v)


def make_case(seed, B, T, H, K, hd, pads, S=None):
    """Random q/k/v (numpy float64), key_valid with pads[b] leading padding positions, a cotangent that is
    zero on rows that see no key (their output differs by design between implementations)."""
    rng = np.random.default_rng(seed)
    S = T if S is None else S
    q, k, v = rng.normal(size=(B, T, H, hd)), rng.normal(size=(B, S, K, hd)), rng.normal(size=(B, S, K, hd))
    valid = np.arange(S)[None, :] >= np.asarray(pads)[:, None]
    ct = rng.normal(size=(B, T, H, hd))
    return q, k, v, valid, ct


def values_and_grads(fn, q, k, v, ct):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(jnp.asarray(ct, out.dtype)))


def reference_case(q, k, v, valid, ct, causal=True):
    with jax.enable_x64(True):
        T, S = q.shape[1], k.shape[1]
        mask = jnp.asarray(np.tril(np.ones((T, S), bool))[None] & valid[:, None, :] if causal
                           else np.broadcast_to(valid[:, None, :], (q.shape[0], T, S)))
        res = values_and_grads(lambda a, b, c: reference(a, b, c, mask), *map(jnp.asarray, (q, k, v)), ct)
        return [np.asarray(x) for x in res], np.asarray(mask.any(-1))


CASES = [  # B, T, H, K, hd, leading padding per row, block_q, block_k
    (2, 16, 2, 2, 8, [0, 0], 8, 8),  # MHA, blocks divide T
    (3, 37, 4, 2, 16, [0, 5, 20], 8, 16),  # GQA, T not a multiple of either block, rows padded differently
    (3, 29, 6, 2, 8, [3, 0, 29], 16, 8),  # a fully padded row; block_q > block_k
    (2, 50, 4, 1, 8, [7, 49], 7, 5),  # MQA, odd blocks, a row with one real token
    (1, 24, 4, 2, 8, [0], 512, 512),  # blocks larger than T: one block each
]


@pytest.mark.parametrize("B,T,H,K,hd,pads,bq,bk", CASES)
def test_flash_float64_equals_reference(B, T, H, K, hd, pads, bq, bk):
    q, k, v, valid, ct = make_case(0, B, T, H, K, hd, pads)
    ref, _ = reference_case(q, k, v, valid, ct)
    with jax.enable_x64(True):
        got = values_and_grads(lambda a, b, c: flash_attention(a, b, c, jnp.asarray(valid), block_q=bq, block_k=bk),
                               *map(jnp.asarray, (q, k, v)), ct)
        assert all(x.dtype == jnp.float64 for x in got)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-10, rtol=0, err_msg=name)


@pytest.mark.parametrize("B,T,H,K,hd,pads,bq,bk", CASES)
def test_flash_float32_values_and_grads(B, T, H, K, hd, pads, bq, bk):
    q, k, v, valid, ct = make_case(1, B, T, H, K, hd, pads)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    ref, seen = reference_case(q, k, v, valid, ct)
    fn = jax.jit(lambda a, b, c: flash_attention(a, b, c, jnp.asarray(valid), block_q=bq, block_k=bk))
    got = [np.asarray(x) for x in values_and_grads(fn, q, k, v, ct.astype(np.float32))]
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in got)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)
    # rows that see no key: exactly zero output (not NaN, not an average of padding values)
    assert not np.any(got[0][~seen])
    # and the model's dense attention agrees on every row that sees a key
    dense = np.asarray(dense_attention(q, k, v, causal_mask(jnp.asarray(valid), T)))
    np.testing.assert_allclose(got[0][seen], dense[seen], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("B,T,H,K,hd,pads,bq,bk", [CASES[1], CASES[2]])
def test_flash_bfloat16_accumulates_in_float32(B, T, H, K, hd, pads, bq, bk):
    q, k, v, valid, ct = make_case(2, B, T, H, K, hd, pads)
    q, k, v, ct = (np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64) for x in (q, k, v, ct))
    ref, _ = reference_case(q, k, v, valid, ct)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    fn = jax.jit(lambda a, b, c: flash_attention(a, b, c, jnp.asarray(valid), block_q=bq, block_k=bk))
    got = values_and_grads(fn, *bf, ct)
    assert all(x.dtype == jnp.bfloat16 for x in got)
    for name, a, b, tol in zip(("out", "dq", "dk", "dv"), got, ref, (4e-2, 1e-1, 1e-1, 1e-1)):
        np.testing.assert_allclose(np.asarray(a.astype(jnp.float32)), b, atol=tol, rtol=0, err_msg=name)


def test_flash_without_causal_mask_and_different_lengths():
    """causal=False with T != S: a padding mask only (cross-attention form)."""
    q, k, v, valid, ct = make_case(3, 2, 13, 4, 2, 8, [2, 9], S=21)
    ref, _ = reference_case(q, k, v, valid, ct, causal=False)
    with jax.enable_x64(True):
        got = values_and_grads(lambda a, b, c: flash_attention(a, b, c, jnp.asarray(valid), causal=False,
                                                               block_q=4, block_k=6), *map(jnp.asarray, (q, k, v)), ct)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-10, rtol=0, err_msg=name)


def test_flash_rejects_bad_shapes():
    q, k = jnp.zeros((1, 8, 3, 4)), jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="H a multiple of K"):
        flash_attention(q, k, k)
    with pytest.raises(ValueError, match=r"key_valid \(1, 7\)"):
        flash_attention(jnp.zeros((1, 8, 2, 4)), k, k, jnp.ones((1, 7), bool))


# ------------------------------------------------------------------------------------------ memory
def grad_temp_bytes(impl, T, B=1, H=4, K=2, hd=64):
    """Compiled temp memory of d(sum(out²))/d(q, k, v) (XLA:CPU's buffer assignment, nothing runs)."""
    def loss(q, k, v, valid):
        out = (flash_attention(q, k, v, valid) if impl == "flash"
               else dense_attention(q, k, v, causal_mask(valid, T)))
        return jnp.sum(jnp.square(out))

    sds = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((B, T, H, hd), (B, T, K, hd), (B, T, K, hd))]
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*sds, jax.ShapeDtypeStruct((B, T), bool)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_flash_gradient_memory_is_linear_in_length():
    flash = grad_temp_bytes("flash", 2048) / grad_temp_bytes("flash", 1024)
    dense = grad_temp_bytes("dense", 2048) / grad_temp_bytes("dense", 1024)
    assert flash <= 2.5, f"flash grad temp memory grew {flash:.2f}x from T=1k to 2k (linear: <= 2.5x)"
    assert dense >= 3.5, f"dense grad temp memory grew {dense:.2f}x (expected ~4x: quadratic)"


# ------------------------------------------------------------------------------------------ dispatch
def test_choose_attention():
    assert choose_attention("auto", 256, 256, 128, "cpu") == "dense"
    assert choose_attention("auto", attn.AUTO_DENSE_MAX_LEN_CPU, attn.AUTO_DENSE_MAX_LEN_CPU, 128, "cpu") == "dense"
    assert choose_attention("auto", 4096, 4096, 128, "cpu") == "flash"
    assert choose_attention("auto", 4096, 4096, 128, "gpu") == "flash"
    assert choose_attention("auto", 4096, 4096, 128, "tpu") == "splash"
    assert choose_attention("auto", 256, 256, 128, "tpu") == "splash"
    assert choose_attention("auto", 4000, 4000, 128, "tpu") == "flash"  # not a multiple of 128: no splash
    assert choose_attention("auto", 100, 100, 128, "tpu") == "dense"
    assert choose_attention("auto", 4096, 4096, 32, "tpu") == "flash"  # head_dim 32: no splash
    assert choose_attention("splash", 4096, 4096, 128, "cpu") == "flash"  # clean fallback off TPU
    assert choose_attention("dense", 8192, 8192, 128, "tpu") == "dense"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU"):
        choose_attention("cudnn", 256, 256, 128, "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        choose_attention("flash2", 256, 256, 128, "cpu")


def test_config_validates_attention():
    from urlvr_jax.config import base_config, validate

    c = base_config()
    c.model.path = "x"
    c.model.attention = "fast"
    with pytest.raises(ValueError, match=r"config.model.attention='fast'.*choose auto, dense, flash"):
        validate(c)


# ------------------------------------------------------------------------------------------ in the model
def test_model_flash_matches_dense_logits_and_grads(monkeypatch):
    """The whole model (layer scan, remat, sharded on 4 devices) with flash in several blocks: logits and
    parameter gradients of a masked loss equal the dense model's on real tokens."""
    from flax import nnx

    from urlvr_jax.models.config import ModelConfig
    from urlvr_jax.models.weights import init_model
    from urlvr_jax.sharding import make_mesh

    monkeypatch.setattr(attn, "DEFAULT_BLOCK_Q", 8)
    monkeypatch.setattr(attn, "DEFAULT_BLOCK_K", 16)
    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0)
    mesh = make_mesh({"fsdp": 2, "tensor": 2}, devices=jax.devices()[:4])
    rng = np.random.default_rng(0)
    B, T = 4, 45
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    mask = jnp.asarray(np.arange(T)[None, :] >= np.array([0, 3, 17, 30])[:, None], jnp.int32)

    model = init_model(cfg, seed=0, mesh=mesh, remat=True, attention="dense")

    def loss(m):
        logits = m(ids, mask)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(jnp.max(logp, axis=-1) * mask) / jnp.sum(mask), logits

    def loss_and_grads(impl):
        model.attention = impl  # a static attribute: the jitted function retraces
        (value, logits), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
        return value, np.asarray(logits), jax.tree.map(np.asarray, nnx.to_pure_dict(grads))

    v_d, l_d, g_d = loss_and_grads("dense")
    v_f, l_f, g_f = loss_and_grads("flash")
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(l_f[real], l_d[real], atol=2e-5, rtol=1e-5)
    # padding positions differ by design (flash: zeros, dense: an average): proof that flash ran
    assert not np.allclose(l_f[~real], l_d[~real], atol=1e-3)
    np.testing.assert_allclose(v_f, v_d, atol=2e-5, rtol=1e-5)
    for path, a in jax.tree_util.tree_leaves_with_path(g_d):
        b = g_f
        for key in path:
            b = b[key.key]
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------------------------------------ TPU splash kernel
def test_splash_kernel_numerics_in_interpreter():
    """The TPU splash path (segment ids for the padding, q pre-scaled, heads-major layout, GQA) run in the
    Pallas interpreter on CPU: values and gradients equal the float64 reference on rows that see a key."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    B, T, H, K, hd = 2, 256, 4, 2, 128
    q, k, v, valid, ct = make_case(4, B, T, H, K, hd, [0, 100])
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    ct = ct * valid[:, :, None, None]  # padding rows see padding keys in splash (their outputs are unused)
    ref, seen = reference_case(q, k, v, valid, ct)
    fn = jax.jit(lambda a, b, c: attn.splash_attention(a, b, c, jnp.asarray(valid), interpret=True))
    got = [np.asarray(x) for x in values_and_grads(fn, q, k, v, ct.astype(np.float32))]
    np.testing.assert_allclose(got[0][seen], ref[0][seen], atol=2e-5, rtol=1e-5, err_msg="out")
    for name, a, b in zip(("dq", "dk", "dv"), got[1:], ref[1:]):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)


# ------------------------------------------------------------------------------------------ TPU (compiled, not run)
def _tpu_mesh():
    """A (fsdp 2, tensor 2) mesh of abstract TPU v5e devices (libtpu compiles for them on this CPU host)."""
    topologies = pytest.importorskip("jax.experimental.topologies")
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
    except Exception as e:  # libtpu absent or unusable: nothing to compile with
        pytest.skip(f"no TPU compiler (libtpu): {e}")
    from urlvr_jax.sharding import make_mesh

    return make_mesh({"fsdp": 2, "tensor": 2}, devices=topo.devices)


def test_splash_compiles_for_tpu_with_less_memory_than_dense():
    """On a TPU target, "auto" at T = 2048 picks the Pallas splash kernel; its gradient lowers to a Mosaic
    custom call under shard_map (batch over fsdp, heads over tensor) and compiles with libtpu, and its
    compiled temp memory is a small fraction of dense attention's."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from urlvr_jax.sharding import ShardingRules

    mesh = _tpu_mesh()
    rules = ShardingRules(mesh)
    B, T, H, K, hd = 4, 2048, 16, 8, 128
    heads = NamedSharding(mesh, P("fsdp", None, "tensor", None))
    shapes = ((B, T, H, hd), (B, T, K, hd), (B, T, K, hd))
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=heads) for s in shapes]
    args.append(jax.ShapeDtypeStruct((B, T), bool, sharding=NamedSharding(mesh, P("fsdp", None))))

    def compiled(impl):
        def loss(q, k, v, valid):
            out = attn.make_attention(impl, valid, head_dim=hd, rules=rules)(q, k, v)
            return jnp.sum(jnp.square(out.astype(jnp.float32)))
        lowered = jax.jit(jax.grad(loss, (0, 1, 2))).lower(*args)
        return lowered.as_text(), lowered.compile().memory_analysis().temp_size_in_bytes

    assert attn.target_platform(rules) == "tpu"
    assert choose_attention("auto", T, T, hd, "tpu") == "splash"
    splash_text, splash_temp = compiled("auto")
    dense_text, dense_temp = compiled("dense")
    assert "tpu_custom_call" in splash_text and "tpu_custom_call" not in dense_text
    assert splash_temp * 4 < dense_temp, (splash_temp, dense_temp)


def test_cudnn_path_rotation_and_lengths_with_xla():
    """The cuDNN path's left-padding handling (rotate each row to right padding, causal + per-row lengths,
    rotate back) through jax.nn's XLA implementation on CPU (cuDNN itself needs a GPU): equal to the float64
    reference on real rows, zeros on padding rows. Rows: no padding, left padding, left + right padding,
    all padding."""
    B, T, H, K, hd = 4, 24, 4, 2, 16
    q, k, v, valid, ct = make_case(5, B, T, H, K, hd, [0, 5, 9, 24])
    valid[2, 20:] = False  # right padding after the real tokens
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    real = valid.copy()
    ref, _ = reference_case(q, k, v, valid, ct * real[:, :, None, None])
    fn = jax.jit(lambda a, b, c: attn.cudnn_attention(a, b, c, jnp.asarray(valid), implementation="xla"))
    got = [np.asarray(x) for x in values_and_grads(fn, q, k, v, (ct * real[:, :, None, None]).astype(np.float32))]
    np.testing.assert_allclose(got[0][real], ref[0][real], atol=2e-5, rtol=1e-5, err_msg="out")
    assert not np.any(got[0][~real])
    for name, a, b in zip(("dq", "dk", "dv"), got[1:], ref[1:]):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="bfloat16/float16"):
        attn.cudnn_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid))


def test_attention_benchmark_runs():
    """benchmarks/attention.py end to end on tiny shapes (a smoke run, not a timing test)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "attention.py"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(script), "--lengths", "40", "80", "--heads", "2", "--kv-heads", "1",
                           "--head-dim", "8", "--block", "16", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=script.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| 40 |") or ln.startswith("| 80 |")]
    assert len(rows) == 4 and all("nan" not in r for r in rows), proc.stdout
    assert "auto at T=80 on cpu: dense" in proc.stdout
    assert "flash (block 16): fwd+bwd temp memory T=80 / T=40" in proc.stdout
