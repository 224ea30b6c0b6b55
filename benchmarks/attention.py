"""Dense vs linear-memory (flash) attention: time and compiled memory, forward and forward + backward.

Shapes: Qwen3-1.7B's attention (16 query heads over 8 KV heads, head_dim 128), one row, causal, the first
5% of positions left padding; T in --lengths. For each implementation and T it prints the median wall time
of the jitted forward and of the jitted gradient of sum(out * cotangent) with respect to q, k, v, and the
compiled temp memory of each (`.compile().memory_analysis().temp_size_in_bytes`: XLA's buffer assignment,
the scratch the program needs beyond its arguments and outputs). Ratios are flash / dense in the same run.
The last lines say which implementation `model.attention="auto"` picks at each T on this platform.

    python benchmarks/attention.py                       # CPU: T = 256, 1024, 2048, 4096
    python benchmarks/attention.py --lengths 1024 --block 256 512 1024   # flash block sizes
    python benchmarks/attention.py --lengths 1024 8192 --compile-only     # memory only (nothing runs)
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from urlvr_jax.models import attention as attn


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--block", type=int, nargs="+", default=[attn.DEFAULT_BLOCK_Q],
                   help="flash block size(s) (block_q = block_k); several: one flash row per size")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per program (median reported)")
    p.add_argument("--max-dense-run-len", type=int, default=4096,
                   help="run (not just compile) dense only up to this T (its grad needs ~4·H·T² float32 bytes)")
    p.add_argument("--compile-only", action="store_true", help="compiled memory only, no timing")
    return p.parse_args()


def programs(impl, T, args, block):
    """(forward, gradient) functions of q, k, v, key_valid, cotangent."""
    def fwd(q, k, v, valid):
        if impl == "dense":
            return attn.dense_attention(q, k, v, attn.causal_mask(valid, T))
        return attn.flash_attention(q, k, v, valid, block_q=block, block_k=block)

    def grad(q, k, v, valid, ct):
        out, vjp = jax.vjp(lambda a, b, c: fwd(a, b, c, valid), q, k, v)
        return vjp(ct)

    return jax.jit(fwd), jax.jit(grad)


def median_time(fn, inputs, repeats):
    jax.block_until_ready(fn(*inputs))  # warm-up (compiled already)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*inputs))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(impl, T, args, block):
    B, H, K, hd = args.batch, args.heads, args.kv_heads, args.head_dim
    dtype = getattr(jnp, args.dtype)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(B, T, H, hd)), dtype)
    k = jnp.asarray(rng.normal(size=(B, T, K, hd)), dtype)
    v = jnp.asarray(rng.normal(size=(B, T, K, hd)), dtype)
    valid = jnp.asarray(np.arange(T)[None, :] >= T // 20).repeat(B, 0)
    ct = jnp.asarray(rng.normal(size=(B, T, H, hd)), dtype)
    fwd, grad = programs(impl, T, args, block)
    row = {}
    for name, fn, inputs in (("fwd", fwd, (q, k, v, valid)), ("grad", grad, (q, k, v, valid, ct))):
        compiled = fn.lower(*inputs).compile()
        row[f"{name}_temp"] = compiled.memory_analysis().temp_size_in_bytes
        run = not args.compile_only and (impl != "dense" or T <= args.max_dense_run_len)
        row[f"{name}_s"] = median_time(compiled, inputs, args.repeats) if run else float("nan")
    return row


def main():
    args = parse_args()
    platform = jax.default_backend()
    print(f"jax {jax.__version__} on {platform}; B={args.batch} H={args.heads} K={args.kv_heads} "
          f"hd={args.head_dim} {args.dtype}, causal, 5% left padding; median of {args.repeats}")
    print()
    print("| T | implementation | fwd ms | fwd+bwd ms | fwd temp MiB | fwd+bwd temp MiB | fwd+bwd time / dense |")
    print("|---|---|---|---|---|---|---|")
    mib = 2 ** 20
    rows_by_len = {}
    for T in args.lengths:
        dense = measure("dense", T, args, 0)
        rows = [("dense", dense)] + [(f"flash (block {b})", measure("flash", T, args, b)) for b in args.block]
        rows_by_len[T] = dict(rows)
        for name, r in rows:
            ratio = r["grad_s"] / dense["grad_s"]
            print(f"| {T} | {name} | {1e3 * r['fwd_s']:.1f} | {1e3 * r['grad_s']:.1f} | {r['fwd_temp'] / mib:.1f} "
                  f"| {r['grad_temp'] / mib:.1f} | {ratio:.2f} |", flush=True)
    if len(args.lengths) > 1:
        first, last = args.lengths[0], args.lengths[-1]
        for name, r0, r1 in [(n, rows_by_len[first][n], rows_by_len[last][n]) for n in rows_by_len[first]]:
            print(f"{name}: fwd+bwd temp memory T={last} / T={first}: {r1['grad_temp'] / r0['grad_temp']:.2f}x "
                  f"(length {last / first:.0f}x)")
    print()
    for T in args.lengths:
        chosen = attn.choose_attention("auto", T, T, args.head_dim, platform)
        print(f"auto at T={T} on {platform}: {chosen}")


if __name__ == "__main__":
    main()
