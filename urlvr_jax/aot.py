"""Compile a training config's step for a TPU pod from a CPU-only machine, and read its cost from the compiler.

`libtpu` (pip install "urlvr-jax[tpu]") gives abstract TPU devices for a named topology on any host
(`jax.experimental.topologies.get_topology_desc`). The step's programs — the same jitted phase functions
`train` runs (rollout, scoring, reward, update; rl/step.py), with the same shardings (mesh from
config.mesh, parameters by the sharding rules, batches over data × fsdp, optimizer moments like their
parameters) — are lowered with abstract, sharded inputs and compiled by XLA:TPU. Per program and per
device the compiler then reports argument / output / temp / alias bytes (`memory_analysis`), and the
optimised HLO gives FLOPs and HBM bytes with loops multiplied out (hlo_cost.py).

    urlvr-train --config=configs/paper.py --compile_for=v5e-16
    python -m urlvr_jax.aot --config=configs/paper.py:ttrl --compile_for=v5e-64

Peak per device of a program = its arguments + outputs + temporaries - donated (aliased) bytes + the
training state that stays resident while it runs without being one of its arguments (optimizer state
during the rollout, the reference model, ...). A program fits when that peak is within the chip's HBM.
When XLA:TPU itself refuses a program ("ran out of memory in memory space hbm") that is reported as not
fitting, with the compiler's message.

Roofline time of a program = max(FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth), with the chip's
published figures (CHIPS). It is a lower bound on the step time, not a prediction.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from urlvr_jax.config import validate
from urlvr_jax.hlo_cost import hlo_cost
from urlvr_jax.models.paths import model_config_for, resolve_model_path
from urlvr_jax.models.transformer import Transformer
from urlvr_jax.models.weights import _state_shardings
from urlvr_jax.rewards.answers import AnswerExtractor
from urlvr_jax.rl.step import reward_phase, rollout_phase, scoring_phase, update_phase
from urlvr_jax.sharding import ShardingRules, make_mesh
from urlvr_jax.tokenizer import load_tokenizer
from urlvr_jax.train import make_optimizer, needs_reference, pool_size, step_config

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures (cloud.google.com/tpu/docs/<version>)."""

    name: str
    hbm_gib: float
    bf16_tflops: float
    hbm_gbps: float  # GB/s


CHIPS = {
    "v4": Chip("TPU v4", 32, 275, 1228),
    "v5e": Chip("TPU v5e", 16, 197, 819),
    "v5p": Chip("TPU v5p", 95, 459, 2765),
    "v6e": Chip("TPU v6e", 32, 918, 1640),
}
# chips of a slice -> topology; v5e/v6e slices are named by chips, v4/v5p slices by TensorCores (2 per chip)
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
V5E_SLICES = tuple(_2D)
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # as given, e.g. "v5e-16"
    topology: str  # libtpu's name, e.g. "v5e:4x4"
    chip: Chip
    chips: int
    devices: tuple  # abstract jax devices

    @property
    def devices_per_chip(self) -> int:
        return max(len(self.devices) // self.chips, 1)

    @property
    def hbm_per_device(self) -> float:
        return self.chip.hbm_gib * GIB / self.devices_per_chip

    @property
    def flops_per_device(self) -> float:
        return self.chip.bf16_tflops * 1e12 / self.devices_per_chip

    @property
    def bandwidth_per_device(self) -> float:
        return self.chip.hbm_gbps * 1e9 / self.devices_per_chip


def parse_target(name: str) -> tuple[str, Chip, int]:
    """'v5e-16' / 'v5p-8' / 'v5e:4x4' -> (libtpu topology name, chip, number of chips)."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e)[-:](\S+)", name.strip().lower())
    if not m:
        raise ValueError(f"--compile_for={name!r}: expected a TPU slice like v5e-16, v5e-64, v5p-8, v6e-16, v4-8 "
                         f"or a topology like v5e:4x4 (chips: {sorted(CHIPS)})")
    version, size = m.groups()
    chip = CHIPS[version]
    if "x" in size:
        chips = math.prod(int(s) for s in size.split("x"))
        return f"{version}:{size}", chip, chips
    n = int(size)
    chips = n if version in ("v5e", "v6e") else n // 2
    table = _2D if version in ("v5e", "v6e") else _3D
    if chips not in table:
        raise ValueError(f"--compile_for={name!r}: no standard {version} slice with {chips} chips; "
                         f"known sizes: {sorted(k if version in ('v5e', 'v6e') else 2 * k for k in table)}")
    return f"{version}:{table[chips]}", chip, chips


def tpu_available() -> bool:
    try:
        import libtpu  # noqa: F401  (optional dependency: urlvr-jax[tpu])
    except ImportError:
        return False
    return True


def make_target(name: str) -> Target:
    topology, chip, chips = parse_target(name)
    if not tpu_available():
        raise RuntimeError(f"--compile_for={name}: libtpu is not installed; pip install 'urlvr-jax[tpu]' "
                           "(or pip install 'jax[tpu]==<your jax version>') — it runs on CPU-only machines")
    import os

    from jax.experimental import topologies

    # libtpu takes a machine-wide lock file unless told otherwise: let several compiling processes coexist
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    return Target(name, topology, chip, chips, tuple(topo.devices))


# ------------------------------------------------------------------------------ abstract inputs
def _sds(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


@dataclasses.dataclass
class AbstractStep:
    """Everything `train` places on the devices before its first step, as sharded ShapeDtypeStructs."""

    mesh: Any
    rules: Any
    model_cfg: Any
    graphdef: Any
    params: Any
    ref_graphdef: Any
    ref_params: Any  # None when no reference model is loaded
    tx: Any
    opt_state: Any
    step_cfg: Any
    prompt_ids: Any
    prompt_mask: Any
    gold: Any
    key: Any
    extractor: Any


class _StandInTokenizer:
    """EOS / pad ids for a config whose tokenizer is not on this machine (a preset-only dry run)."""

    eos_token_id, pad_token_id = 1, 0


def _local_tokenizer(config):
    path = _local_model_path(config)
    if path is None:
        return None
    try:
        return load_tokenizer(config.model.tokenizer or path)
    except (OSError, ValueError):  # a model folder without a tokenizer
        return None


def _extractor(config, model_cfg, mesh, tokenizer):
    """The answer extractor's tables for the model's tokenizer when it is on this machine, else for a
    stand-in vocabulary of the same size (the tables' shapes then differ slightly: the reward program is
    tiny either way)."""
    if tokenizer is not None:
        extractor = AnswerExtractor.from_tokenizer(tokenizer)
    else:
        extractor = jax.eval_shape(lambda: AnswerExtractor.from_token_strings(
            [f"t{i}" for i in range(model_cfg.vocab_size)]))
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: _sds(x, replicated), extractor)


def _local_model_path(config) -> str | None:
    """The model's local folder/file when it is on this machine (a preset-only config has none)."""
    import os

    if not config.model.path:
        return None
    try:
        path = resolve_model_path(config.model.path)
    except (FileNotFoundError, ImportError):
        return None
    return path if os.path.exists(path) else None


def abstract_step(config, devices) -> AbstractStep:
    """The step's inputs for `config` on a mesh of `devices` (abstract: no memory is allocated)."""

    model_cfg = model_config_for(config)
    tokenizer = _local_tokenizer(config)
    mesh = make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor},
                     devices=list(devices))
    rules = ShardingRules(mesh)
    dtype, param_dtype = getattr(jnp, config.model.dtype), getattr(jnp, config.model.param_dtype)

    def build(remat):
        return nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype,
                                                  remat=remat, rules=rules, attention=config.model.attention))

    graphdef, state = nnx.split(build(config.model.remat))
    params = jax.tree.map(_sds, state, _state_shardings(model_cfg, state, rules))
    ref_graphdef, ref_params = graphdef, None
    if needs_reference(config):
        ref_graphdef, ref_state = nnx.split(build(False))
        ref_params = jax.tree.map(_sds, ref_state, _state_shardings(model_cfg, ref_state, rules))
    tx = make_optimizer(config)
    replicated = NamedSharding(mesh, P())
    opt_shapes = jax.eval_shape(tx.init, params)
    opt_state = optax.tree_utils.tree_map_params(
        tx, lambda x, p: _sds(x, p.sharding), opt_shapes, params,
        transform_non_params=lambda x: _sds(x, replicated))
    # the trainer's own StepConfig (sampling engine, micro-batches resolved for this mesh's device count, ...)
    # so the compiled programs are the ones `train` runs; EOS/pad ids only need to exist
    step_cfg = step_config(config, tokenizer or _StandInTokenizer(), model_cfg, n_devices=len(devices))
    B, Tp = pool_size(config), config.data.max_prompt_length
    batch = rules.sharding(("batch", None), (B, Tp), name="batch")
    key = jax.eval_shape(lambda: jax.random.key(0))
    return AbstractStep(
        mesh=mesh, rules=rules, model_cfg=model_cfg, graphdef=graphdef, params=params, ref_graphdef=ref_graphdef,
        ref_params=ref_params, tx=tx, opt_state=opt_state, step_cfg=step_cfg,
        prompt_ids=jax.ShapeDtypeStruct((B, Tp), jnp.int32, sharding=batch),
        prompt_mask=jax.ShapeDtypeStruct((B, Tp), jnp.int32, sharding=batch),
        gold=jax.ShapeDtypeStruct((B,), jnp.int32, sharding=replicated),
        key=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
        extractor=_extractor(config, model_cfg, mesh, tokenizer))


# ------------------------------------------------------------------------------ compile and measure
@dataclasses.dataclass
class ProgramCost:
    name: str
    argument: int = 0
    output: int = 0
    temp: int = 0
    alias: int = 0
    resident_extra: int = 0  # training state on the device while it runs that is not one of its arguments
    flops: float = 0.0
    bytes_accessed: float = 0.0
    xla_flops: float = 0.0  # XLA's cost_analysis (loop bodies counted once), for reference
    compile_s: float = 0.0
    error: str = ""  # the compiler's refusal, when it refused
    loops: list = dataclasses.field(default_factory=list)
    opaque: list = dataclasses.field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.argument + self.output + self.temp - self.alias + self.resident_extra


def _guess_outputs(jitted, args, rules):
    """Abstract outputs of a program that was not compiled: shapes from jax.eval_shape, rows (the leading
    axis of every non-scalar output) sharded over the batch axes as the compiled programs place them."""
    def place(x):
        if not x.shape:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(rules.mesh, P()))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rules.sharding(
            ("batch",) + (None,) * (len(x.shape) - 1), x.shape, name="output"))

    return jax.tree.map(place, jax.eval_shape(jitted, *args))


_REFUSAL = re.compile(r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\)")


def _measure(name: str, jitted, args: tuple, resident_extra: int, rules, compile_it: bool = True
             ) -> tuple[ProgramCost | None, Any]:
    import time

    if not compile_it:
        return None, _guess_outputs(jitted, args, rules)
    cost = ProgramCost(name, resident_extra=resident_extra)
    t0 = time.perf_counter()
    try:
        lowered = jitted.lower(*args)
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA:TPU refuses programs that cannot fit; report, don't crash
        cost.compile_s = time.perf_counter() - t0
        cost.error = " ".join(str(e).split())[:600]
        m = _REFUSAL.search(cost.error)
        if m:  # the compiler's own figure for what it needed
            unit = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[m.group(2)]
            cost.temp = int(float(m.group(1)) * unit)
        return cost, _guess_outputs(jitted, args, rules)
    cost.compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost.argument, cost.output = mem.argument_size_in_bytes, mem.output_size_in_bytes
    cost.temp, cost.alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    cost.xla_flops = float((xla or {}).get("flops", 0.0))
    # FLOPs from the program before partitioning and optimisation (dots with explicit batch dimensions;
    # XLA:TPU rewrites batched dots into dilated convolutions whose window is mostly padding), divided
    # evenly over the devices; HBM bytes from the optimised per-device program (fusions decide the traffic)
    pre = hlo_cost(lowered.as_text(dialect="hlo"))
    cost.flops = pre.flops / rules.mesh.size
    hc = hlo_cost(compiled.as_text())
    cost.bytes_accessed = hc.bytes_accessed
    cost.loops, cost.opaque = pre.loops, sorted(set(pre.opaque_custom_calls))
    outs = jax.tree.map(lambda info, sh: jax.ShapeDtypeStruct(info.shape, info.dtype, sharding=sh),
                        compiled.out_info, compiled.output_shardings)
    return cost, outs


PROGRAMS = ("rollout", "scoring", "reward", "update")


def compile_step(config, devices, programs=PROGRAMS) -> tuple[list[ProgramCost], AbstractStep]:
    """Compile the step's programs for `devices` (abstract TPU devices, or real ones) and measure them.

    programs: which to compile; the others are only shape-evaluated to feed the next phase."""
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise ValueError(f"compile_step: unknown programs {sorted(unknown)}; choose from {PROGRAMS}")
    a = abstract_step(config, devices)
    cfg, rules = a.step_cfg, a.rules
    state = {"params": per_device_bytes(a.params), "opt": per_device_bytes(a.opt_state),
             "ref": per_device_bytes(a.ref_params) if a.ref_params is not None else 0}
    costs = []
    rollout = jax.jit(functools.partial(rollout_phase, graphdef=a.graphdef, cfg=cfg))
    c, roll = _measure("rollout", rollout, (a.params, a.prompt_ids, a.prompt_mask, a.key),
                       state["opt"] + state["ref"], rules, "rollout" in programs)
    costs.append(c)
    old = ref_lp = None
    if cfg.old_policy_pass or cfg.use_reference:
        scoring = jax.jit(functools.partial(scoring_phase, graphdef=a.graphdef, ref_graphdef=a.ref_graphdef,
                                            cfg=cfg))
        others = per_device_bytes(roll) - per_device_bytes((roll.tokens, roll.mask))  # rollout held meanwhile
        c, (old, ref_lp) = _measure(
            "scoring", scoring, (a.params, a.ref_params if cfg.use_reference else None, a.prompt_ids,
                                 a.prompt_mask, roll.tokens, roll.mask),
            state["opt"] + (0 if cfg.use_reference else state["ref"]) + others, rules, "scoring" in programs)
        costs.append(c)
    reward = jax.jit(functools.partial(reward_phase, cfg=cfg, vocab_size=a.model_cfg.vocab_size))
    c, rewarded = _measure("reward", reward, (roll, old, ref_lp, a.gold, a.extractor, None, a.key),
                           sum(state.values()), rules,
                           "reward" in programs)
    costs.append(c)
    update = jax.jit(functools.partial(update_phase, graphdef=a.graphdef, tx=a.tx, cfg=cfg),
                     donate_argnums=(0, 1))
    c, _ = _measure("update", update, (a.params, a.opt_state, a.prompt_ids, a.prompt_mask, roll, old, ref_lp,
                                       rewarded), state["ref"], rules, "update" in programs)
    costs.append(c)
    return [c for c in costs if c is not None], a


# ------------------------------------------------------------------------------ report
ADVICE = {
    "rollout": "the rollout's KV cache: with sampling.engine='continuous' lower sampling.max_inflight (the KV "
               "budget); else lower sampling.max_new_tokens, data.prompt_batch_size or rl.num_samples; or use "
               "more devices on mesh.data/fsdp",
    "scoring": "the scoring pass: lower data.prompt_batch_size or use more devices on mesh.data/fsdp",
    "reward": "lower data.prompt_batch_size",
    "update": "the update's activations: set rl.micro_batch_groups=-1 (per-device micro-batches), model.remat=True, "
              "model.attention='flash', "
              "or use more devices on mesh.fsdp",
}


@dataclasses.dataclass
class CompileReport:
    target: Target
    config_name: str
    programs: list[ProgramCost]
    state_bytes: dict[str, int]
    params: int
    tokens_per_step: int

    def fits(self) -> bool:
        return all(not p.error and p.peak <= self.target.hbm_per_device for p in self.programs)

    def failures(self) -> list[str]:
        out = []
        for p in self.programs:
            if p.error:
                out.append(f"{p.name}: XLA:TPU refused to compile it ({p.error[:300]}) — {ADVICE[p.name]}")
            elif p.peak > self.target.hbm_per_device:
                out.append(f"{p.name}: needs {p.peak / GIB:.2f} GiB per device but a {self.target.chip.name} device "
                           f"has {self.target.hbm_per_device / GIB:.1f} GiB — {ADVICE[p.name]}")
        return out

    def roofline_s(self, p: ProgramCost) -> float:
        t = self.target
        return max(p.flops / t.flops_per_device, p.bytes_accessed / t.bandwidth_per_device)

    def table(self) -> str:
        t = self.target
        lines = [f"{self.config_name} on {t.name} ({t.topology}: {len(t.devices)} devices, {t.chip.name}, "
                 f"{t.hbm_per_device / GIB:.1f} GiB HBM, {t.flops_per_device / 1e12:.0f} TFLOP/s bf16, "
                 f"{t.bandwidth_per_device / 1e9:.0f} GB/s per device) — compiler numbers, per device",
                 f"resident state: params {self.state_bytes['params'] / GIB:.2f} GiB, optimizer "
                 f"{self.state_bytes['opt'] / GIB:.2f} GiB, reference {self.state_bytes['ref'] / GIB:.2f} GiB",
                 "| program | args GiB | out GiB | temp GiB | alias GiB | +resident GiB | peak GiB | % HBM | "
                 "TFLOP | GB moved | roofline s | compile s |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in self.programs:
            if p.error:
                need = f"temporaries alone {p.temp / GIB:.2f} GiB" if p.temp else p.error[:160]
                lines.append(f"| {p.name} | refused by XLA:TPU | | {need} | | {p.resident_extra / GIB:.2f} | "
                             f"> {p.peak / GIB:.2f} | > {100 * p.peak / t.hbm_per_device:.0f}% | | | | "
                             f"{p.compile_s:.1f} |")
                continue
            lines.append(
                f"| {p.name} | {p.argument / GIB:.2f} | {p.output / GIB:.2f} | {p.temp / GIB:.2f} | "
                f"{p.alias / GIB:.2f} | {p.resident_extra / GIB:.2f} | {p.peak / GIB:.2f} | "
                f"{100 * p.peak / t.hbm_per_device:.0f}% | {p.flops / 1e12:.2f} | {p.bytes_accessed / 1e9:.1f} | "
                f"{self.roofline_s(p):.3f} | {p.compile_s:.1f} |")
        update = next((p for p in self.programs if p.name == "update" and not p.error), None)
        if update is not None and self.tokens_per_step:
            model = 6 * self.params * self.tokens_per_step / len(t.devices)
            compute_s = update.flops / t.flops_per_device
            memory_s = update.bytes_accessed / t.bandwidth_per_device
            lines.append(f"update: {update.flops / 1e12:.2f} TFLOP per device vs 6·params·tokens = "
                         f"{model / 1e12:.2f} TFLOP ({update.flops / model:.2f}x: attention, remat recompute, "
                         f"logits); at peak FLOP/s {compute_s:.2f} s, at peak HBM bandwidth {memory_s:.2f} s "
                         f"(bytes: an upper bound, every operand of every fused op each time it runs); MFU "
                         f"bound = 6·N·D / (roofline time × peak) = "
                         f"{model / (self.roofline_s(update) * t.flops_per_device):.0%} (compute-bound only: "
                         f"{model / (compute_s * t.flops_per_device):.0%})")
        lines.append("fits" if self.fits() else "DOES NOT FIT:\n  " + "\n  ".join(self.failures()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target.name, "topology": self.target.topology, "config": self.config_name,
                "hbm_per_device_gib": self.target.hbm_per_device / GIB, "fits": self.fits(),
                "state_gib": {k: v / GIB for k, v in self.state_bytes.items()},
                "programs": [{**{k: v for k, v in dataclasses.asdict(p).items() if k not in ("loops", "opaque")},
                              "peak": p.peak, "roofline_s": self.roofline_s(p),
                              "loops": [list(x) for x in p.loops[:8]], "opaque_custom_calls": p.opaque[:8]}
                             for p in self.programs],
                "failures": self.failures()}


def compile_for(config, target: str | Target, config_name: str = "", programs=PROGRAMS) -> CompileReport:
    """AOT-compile `config`'s step for a TPU slice (e.g. 'v5e-16') and measure its programs."""
    validate(config)
    t = make_target(target) if isinstance(target, str) else target
    programs, a = compile_step(config, t.devices, programs)
    train_rows = config.data.prompt_batch_size * (config.rl.n_train or config.rl.num_samples)
    tokens = train_rows * (config.data.max_prompt_length + config.sampling.max_new_tokens)
    return CompileReport(t, config_name, programs,
                         {"params": per_device_bytes(a.params), "opt": per_device_bytes(a.opt_state),
                          "ref": per_device_bytes(a.ref_params) if a.ref_params is not None else 0},
                         a.model_cfg.num_params(), tokens)


def main(argv=None) -> int:
    import argparse
    import json

    from urlvr_jax.api import get_config

    parser = argparse.ArgumentParser(prog="python -m urlvr_jax.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="configs/<file>.py[:variant]")
    parser.add_argument("--compile_for", required=True, help="TPU slice: v5e-16, v5e-64, v5p-8, v6e-16, v4-8, v5e:4x4")
    parser.add_argument("--json", default="", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    config = get_config(args.config, validate=False)
    report = compile_for(config, args.compile_for, args.config)
    print(report.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if report.fits() else 1


if __name__ == "__main__":
    sys.exit(main())
