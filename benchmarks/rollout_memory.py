"""Compiled rollout memory per device: static sampler vs continuous-batching engine, against max_new_tokens.

Compiles the trainer's rollout (`generate_traced` on the policy's own sharded parameters, as
`rl/step.py:rollout_phase` runs it) for a training config — by default configs/paper.py (Qwen3-1.7B-Base,
64 prompts × 8 samples, prompts of 1024 tokens, bfloat16 compute, float32 parameters) — ahead of time for
an abstract device mesh, without any weights or devices: abstract TPU chips from libtpu's topology
description (`--topology`, default v5e:2x4 = 8 chips) or, with `--platform cpu`, the host CPU split into
`--devices` fake devices. The mesh is the config's (mesh.data × mesh.fsdp × mesh.tensor). For each
engine and each `--new-tokens` value it prints XLA's `memory_analysis()` per device: arguments (the
parameter shards and prompts), outputs (the Rollout) and temporaries (KV caches, logits, loop state),
in GiB, and the analytic KV-cache size of each engine:

    static      rows × (prompt + max_new_tokens) × per-token KV / devices on the batch axes
    continuous  (prompts × prompt + slots × max_new_tokens) × per-token KV / devices on the batch axes

    python3 benchmarks/rollout_memory.py                                  # paper.py, TPU v5e 2x4, full model
    python3 benchmarks/rollout_memory.py --layers 2 --new-tokens 1024,7168 --platform cpu   # quick look
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default="configs/paper.py", help="training config file[:variant]")
    p.add_argument("--platform", choices=("tpu", "cpu"), default="tpu", help="abstract TPU chips or fake CPUs")
    p.add_argument("--topology", default="v5e:2x4", help="TPU topology name (--platform tpu)")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices (--platform cpu)")
    p.add_argument("--new-tokens", default="1024,2048,4096,7168", help="comma list of max_new_tokens")
    p.add_argument("--max-inflight", type=int, default=0,
                   help="the engine's decode slots (0 = the config's sampling.max_inflight, or 128 if that is 0)")
    p.add_argument("--engines", default="static,continuous", help="comma list of static, continuous")
    p.add_argument("--layers", type=int, default=0, help="override the model's layer count (0 = as configured)")
    args = p.parse_args(argv)
    args.new_tokens = [int(x) for x in args.new_tokens.split(",") if x.strip()]
    args.engines = [x.strip() for x in args.engines.split(",") if x.strip()]
    if not args.new_tokens or min(args.new_tokens) < 1 or set(args.engines) - {"static", "continuous"}:
        p.error("--new-tokens must be positive integers and --engines a list of static, continuous")
    return args


def make_devices(args):
    import jax

    if args.platform == "cpu":
        return jax.devices("cpu")[: args.devices]
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices)


def compile_rollout(config, cfg, devices, engine: str, new_tokens: int, max_inflight: int):
    """(memory_analysis(), compile seconds) of the jitted rollout for one engine and length cap."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from urlvr_jax.models.transformer import Transformer
    from urlvr_jax.models.weights import _state_shardings
    from urlvr_jax.rollout.sampler import SamplingConfig, generate_traced
    from urlvr_jax.sharding import MESH_AXES, ShardingRules

    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    known = int(np.prod([s for s in sizes if s > 0]))
    sizes = [s if s > 0 else len(devices) // known for s in sizes]
    mesh = Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)
    rules = ShardingRules(mesh)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    param_dtype = jnp.bfloat16 if config.model.param_dtype == "bfloat16" else jnp.float32
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype,
                                                  rules=rules))
    graphdef, state = nnx.split(abstract)
    shardings = _state_shardings(cfg, state, rules)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    s = config.sampling
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              engine=engine, max_inflight=max_inflight, decode_block=s.decode_block,
                              prefill_chunk=s.prefill_chunk)
    B, Tp = config.data.prompt_batch_size, config.data.max_prompt_length
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    ids = jax.ShapeDtypeStruct((B, Tp), jnp.int32, sharding=batch)
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=NamedSharding(mesh, P()))

    def rollout(state, prompt_ids, prompt_mask, key):
        model = nnx.merge(graphdef, state)
        return generate_traced(model, prompt_ids, prompt_mask, key, sampling=sampling,
                               num_samples=config.rl.num_samples, eos_ids=(cfg.eos_token_ids or (0,))[:1],
                               stop_seqs=(), pad_id=0)

    t0 = time.perf_counter()
    compiled = jax.jit(rollout).lower(state, ids, ids, key).compile()
    return compiled.memory_analysis(), time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    # libtpu's lock file would refuse a second process (or a test run beside this one); nothing here runs
    # on a real TPU, the chips are abstract (as in urlvr_jax/aot.py)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if args.platform == "cpu":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.getcwd())
    import dataclasses

    import jax

    from urlvr_jax.api import get_config
    from urlvr_jax.dry_run import model_config_for

    config = get_config(args.config, validate=False)
    cfg = model_config_for(config)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    devices = make_devices(args)
    slots = args.max_inflight or config.sampling.max_inflight or 128
    P, N, Tp = config.data.prompt_batch_size, config.rl.num_samples, config.data.max_prompt_length
    b = 2 if config.model.dtype == "bfloat16" else 4
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * b
    batch_devices = len(devices) // max(config.mesh.tensor, 1) if config.mesh.tensor > 0 else len(devices)
    gib = 1024 ** 3
    print(f"jax {jax.__version__}; config {args.config}: {cfg.architecture} {cfg.num_layers} layers, "
          f"{cfg.num_kv_heads} KV heads x {cfg.head_dim}, {config.model.dtype} compute; {P} prompts x {N} samples "
          f"= {P * N} rows, prompts of {Tp} tokens; {len(devices)} {devices[0].device_kind} devices, mesh "
          f"data/fsdp/tensor {config.mesh.data}/{config.mesh.fsdp}/{config.mesh.tensor}; engine slots {slots}; "
          f"KV {per_token / 1024:.0f} KiB per token")
    print()
    print("| engine | max_new_tokens | KV analytic GiB/device | arguments GiB | outputs GiB | temporaries GiB | "
          "compile s |")
    print("|---|---|---|---|---|---|---|")
    for engine in args.engines:
        for T in args.new_tokens:
            if engine == "static":
                kv = P * N * (Tp + T) * per_token / batch_devices
            else:
                from urlvr_jax.rollout.engine import engine_shapes
                from urlvr_jax.rollout.sampler import SamplingConfig

                S, _, cap = engine_shapes(SamplingConfig(max_new_tokens=T, max_inflight=slots,
                                                         decode_block=config.sampling.decode_block), P * N)
                kv = (P * Tp + S * cap) * per_token / batch_devices
            mem, secs = compile_rollout(config, cfg, devices, engine, T, slots)
            print(f"| {engine} | {T} | {kv / gib:.2f} | {mem.argument_size_in_bytes / gib:.2f} | "
                  f"{mem.output_size_in_bytes / gib:.2f} | {mem.temp_size_in_bytes / gib:.2f} | {secs:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
