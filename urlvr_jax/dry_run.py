"""Shape-level dry run and per-device memory estimate of a training config.

`dry_run(config)` validates the config, builds the policy abstractly with `jax.eval_shape` (no weights,
no memory), and estimates the bytes each device holds during a step. `check_fits` refuses a config
whose estimate exceeds the device memory, and says which knob to turn.

The estimate (per device, mesh data × fsdp × tensor = D devices, model-parallel M = fsdp × tensor):
  parameters   P·b_param / M                    (policy; the reference adds the same again)
  optimizer    2·P·4 / M                        (AdamW moments, float32)
  gradients    P·4 / M
  KV cache     2·L·(B·N / (data·fsdp))·(Tp+T)·K·hd·b / tensor
               (continuous engine: 2·L·((B·Tp + slots·T) / (data·fsdp))·K·hd·b / tensor)
  activations  (B·N / (data·fsdp))·(Tp+T)·D_model·4·(L if no remat else 2)   (residual stream per layer)
  logits chunk (B·N / (data·fsdp))·chunk·V·4·3 / tensor                     (logits, softmax, grad)
It is an estimate (XLA's buffer assignment differs), meant to catch configurations that cannot fit.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from urlvr_jax.config import mesh_sizes, micro_batch_groups_for, validate
from urlvr_jax.models.attention import choose_attention
from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.paths import model_config_for
from urlvr_jax.models.transformer import Transformer


def estimate_memory(config, cfg: ModelConfig, n_devices: int) -> dict[str, float]:
    mesh = mesh_sizes(config, n_devices)
    model_par = mesh["fsdp"] * mesh["tensor"]
    batch_par = mesh["data"] * mesh["fsdp"]
    b_param = 2 if config.model.param_dtype == "bfloat16" else 4
    b_act = 2 if config.model.dtype == "bfloat16" else 4
    P = cfg.num_params()
    # the update runs one micro-batch (or, without micro-batching, one mini-batch) at a time
    groups = (micro_batch_groups_for(config, batch_par)
              or config.data.prompt_batch_size / max(config.rl.mini_batches, 1))
    update_rows = max(groups * config.rl.num_samples / batch_par, 1.0)
    seq = config.data.max_prompt_length + config.sampling.max_new_tokens
    D, F, H, K, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # what the backward keeps of one layer, per token: the norms' inputs and outputs and the residuals
    # (~6 D), q/k/v before and after RoPE, the attention output, the MLP's gate, up and product (3 F),
    # plus, with dense attention, float32 scores and probabilities (2 H x seq); flash attention keeps a
    # float32 output accumulator and log-sum-exp per query head instead (linear in seq). An upper estimate:
    # XLA fuses some of these away (SmolLM2-135M, 16 rows x ~410 tokens, no remat: 18 GiB estimated, 14 GB
    # measured on CPU).
    impl = config.model.get("attention", "auto")
    attention = "flash" if impl == "cudnn" else choose_attention(impl, seq, seq, hd, "tpu")  # cudnn: fused, linear
    attention_per_token = 4 * 2 * H * seq if attention == "dense" else 4 * (H * hd + H)
    per_token_layer = (b_act * (6 * D + 2 * (H * hd + 2 * K * hd) + H * hd + 3 * F) + attention_per_token) \
        / mesh["tensor"]
    one_layer = update_rows * seq * per_token_layer
    # remat keeps each layer's input and recomputes one layer at a time in the backward
    activations = (cfg.num_layers * update_rows * seq * D * b_act + one_layer) if config.model.remat \
        else cfg.num_layers * one_layer
    reference = 1 if (config.rl.kl_coef or config.train.get("pistar_diagnostics", True)) else 0
    gb = 1024 ** 3
    est = {
        "params": (1 + reference) * P * b_param / model_par,
        "optimizer": 2 * P * 4 / model_par,
        "gradients": P * 4 / model_par,
        "kv_cache": 2 * cfg.num_layers * _kv_positions(config, batch_par) * cfg.num_kv_heads * cfg.head_dim * b_act
        / mesh["tensor"],
        "activations": activations,
        "logits_chunk": (update_rows * min(128, config.sampling.max_new_tokens) * cfg.vocab_size * 4 * 3
                         / mesh["tensor"]),
    }
    est = {k: v / gb for k, v in est.items()}
    est["total"] = sum(est.values())
    return {f"memory_gb/{k}": round(v, 3) for k, v in est.items()}


def _kv_positions(config, batch_par: int) -> float:
    """KV-cache positions per device: rows × (prompt + new tokens) for the static sampler; for the
    continuous engine, prompts × prompt + slots × new tokens (rollout/engine.py)."""
    rows = config.data.prompt_batch_size * config.rl.num_samples
    Tp, T = config.data.max_prompt_length, config.sampling.max_new_tokens
    if config.sampling.get("engine", "static") == "continuous":
        slots = min(config.sampling.max_inflight or rows, rows)
        return (config.data.prompt_batch_size * Tp + slots * T) / batch_par
    return rows * (Tp + T) / batch_par


def check_fits(config, cfg: ModelConfig, n_devices: int, device_memory_gb: float) -> dict[str, float]:
    est = estimate_memory(config, cfg, n_devices)
    total = est["memory_gb/total"]
    if total > device_memory_gb:
        biggest = max((k for k in est if k != "memory_gb/total"), key=est.get)
        advice = {
            "memory_gb/activations": "set config.model.remat=True or lower data.prompt_batch_size / rl.num_samples",
            "memory_gb/kv_cache": "lower sampling.max_new_tokens, data.prompt_batch_size or rl.num_samples, or add "
                                  "devices on mesh.data/fsdp",
            "memory_gb/optimizer": "shard more: raise mesh.fsdp / mesh.tensor",
            "memory_gb/params": "shard more (mesh.fsdp / mesh.tensor) or use model.param_dtype='bfloat16'",
            "memory_gb/gradients": "shard more: raise mesh.fsdp / mesh.tensor",
            "memory_gb/logits_chunk": "lower data.prompt_batch_size or raise mesh.tensor",
        }[biggest]
        raise MemoryError(f"this config needs about {total:.1f} GiB per device but a device has "
                          f"{device_memory_gb:.1f} GiB; the largest part is {biggest.split('/')[1]} "
                          f"({est[biggest]:.1f} GiB): {advice}")
    return est


def dry_run(config, n_devices: int | None = None, compile: bool | None = None) -> dict[str, Any]:
    """Shapes and per-device memory of a config, offline.

    The memory figures are the hand estimate above, unless the compiler can be asked: with libtpu installed
    (compile=None: whenever it is; compile=True: required) the step's programs are compiled for a TPU v5e
    slice with the same number of devices (aot.py) and `memory_gb/<program>` are the compiler's per-device
    peaks (`memory_source` says which); the estimate is then kept under `estimate_gb/*`."""
    validate(config)
    cfg = model_config_for(config)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    if n_params != cfg.num_params():
        raise AssertionError(f"abstract model has {n_params} parameters but the config implies {cfg.num_params()}")
    n = n_devices or jax.device_count()
    out = {"model": cfg.architecture, "params": n_params, "devices": n,
           **estimate_memory(config, cfg, n)}
    ids = jax.ShapeDtypeStruct((config.data.prompt_batch_size, config.data.max_prompt_length), jnp.int32)
    logits = jax.eval_shape(lambda m, i: m(i), abstract, ids)
    out["logits_shape"] = list(logits.shape)
    out["memory_source"] = "estimate (dry_run.estimate_memory)"
    from urlvr_jax import aot  # noqa: PLC0415  (imports the step: only needed here)

    slice_name = f"v5e-{n}"
    if compile is None:
        compile = aot.tpu_available() and n in aot.V5E_SLICES
    if compile:
        report = aot.compile_for(config, slice_name, "dry_run")
        out = {k.replace("memory_gb/", "estimate_gb/"): v for k, v in out.items()}
        out.update({f"memory_gb/{p.name}": round(p.peak / aot.GIB, 3) for p in report.programs})
        out["memory_gb/total"] = max(out[f"memory_gb/{p.name}"] for p in report.programs)
        out["memory_source"] = (f"XLA:TPU compiler, {report.target.topology} ({n} devices): peak per program "
                                f"incl. resident state; fits {report.target.hbm_per_device / aot.GIB:.0f} GiB: "
                                f"{report.fits()}")
    return out
