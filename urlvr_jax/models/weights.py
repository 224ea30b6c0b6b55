"""Weight I/O between our NNX transformer and Hugging Face checkpoints.

`load_model(path, mesh=...)` reads a local HF folder (config.json + *.safetensors, single file or sharded
with `model.safetensors.index.json`) or a GGUF file straight into sharded arrays: the model is first
built abstractly (`nnx.eval_shape`, no memory), then each parameter is assembled on the host one tensor
at a time and placed with `jax.make_array_from_callback`, so each device only receives its own shard and
the whole model never sits on one device. Pickle checkpoints are refused unless torch can load them
with `weights_only=True`; remote code is never run.

`save_model(model, path)` writes an HF folder that `transformers.AutoModelForCausalLM.from_pretrained`
loads with the same logits. It writes into a temporary folder and renames it into place, so a failure
never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.gguf_io import read_gguf
from urlvr_jax.models.transformer import ParamSpec, Transformer, param_table
from urlvr_jax.sharding import ShardingRules, make_mesh

# Tensors some checkpoints carry that hold no learned weights.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightError(ValueError):
    """A checkpoint whose tensors do not match the model's parameters."""


# ---------------------------------------------------------------------------- name/layout mapping
def _hf_names(cfg: ModelConfig, spec: ParamSpec, layer: int | None) -> str:
    name = spec.path[-1]
    if spec.path[0] != "layers":
        return {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                "lm_head": "lm_head.weight"}[name]
    pre = f"model.layers.{layer}."
    norms = (("post_attention_layernorm", "post_feedforward_layernorm") if cfg.post_norms
             else ("input_layernorm", "post_attention_layernorm"))
    return pre + {
        "norm1": f"{norms[0]}.weight", "norm2": f"{norms[1]}.weight",
        "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
        "o": "self_attn.o_proj.weight", "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
        "v_bias": "self_attn.v_proj.bias", "o_bias": "self_attn.o_proj.bias",
        "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
        "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
        "gate_bias": "mlp.gate_proj.bias", "up_bias": "mlp.up_proj.bias", "down_bias": "mlp.down_proj.bias",
    }[name]


def _per_layer_shape(spec: ParamSpec) -> tuple[int, ...]:
    return spec.shape[1:] if spec.path[0] == "layers" else spec.shape


def _hf_shape(spec: ParamSpec) -> tuple[int, ...]:
    """The transformers shape of one (per-layer) tensor."""
    s = _per_layer_shape(spec)
    name = spec.path[-1]
    if name in ("q", "k", "v"):
        return (s[1] * s[2], s[0])
    if name == "o":
        return (s[2], s[0] * s[1])
    if name in ("gate", "up", "down", "lm_head"):
        return (s[1], s[0])
    flat = name in ("q_bias", "k_bias", "v_bias") or (name in ("q_norm", "k_norm") and len(s) == 2)
    return (int(np.prod(s)),) if flat else s


def _from_hf(spec: ParamSpec, t: np.ndarray) -> np.ndarray:
    """transformers layout -> ours, for one (per-layer) tensor."""
    s = _per_layer_shape(spec)
    name = spec.path[-1]
    if name in ("q", "k", "v"):
        return t.T.reshape(s)
    if name == "o":
        return t.T.reshape(s)
    if name in ("gate", "up", "down", "lm_head"):
        return t.T
    return t.reshape(s)


def _to_hf(spec: ParamSpec, a: np.ndarray) -> np.ndarray:
    """ours -> transformers layout, for one (per-layer) tensor."""
    name = spec.path[-1]
    if name in ("q", "k", "v"):
        return a.reshape(a.shape[0], -1).T
    if name == "o":
        return a.reshape(-1, a.shape[-1]).T
    if name in ("gate", "up", "down", "lm_head"):
        return a.T
    return a.reshape(_hf_shape(spec))


# ---------------------------------------------------------------------------- tensor sources
class _TensorSource:
    """Name -> numpy tensor, read lazily from safetensors files (or held in memory for GGUF)."""

    def __init__(self, names_to_file: dict[str, str] | None = None, arrays: dict[str, np.ndarray] | None = None):
        self._files = names_to_file or {}
        self._arrays = arrays or {}
        self._handles: dict[str, object] = {}

    def names(self) -> set[str]:
        return set(self._files) | set(self._arrays)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._arrays:
            return tuple(self._arrays[name].shape)
        return tuple(self._handle(self._files[name]).get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        if name in self._arrays:
            return np.asarray(self._arrays[name])
        return self._handle(self._files[name]).get_tensor(name)

    def where(self, name: str) -> str:
        return self._files.get(name, "<in-memory state dict>")

    def _handle(self, file: str):
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="numpy")
        return self._handles[file]


def _open_folder(folder: Path) -> _TensorSource:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        with open(index, encoding="utf-8") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightError(f"{index}: not a valid safetensors index ({e})") from e
        files = {name: str(folder / fname) for name, fname in weight_map.items()}
        for fname in set(files.values()):
            if not os.path.exists(fname):
                raise FileNotFoundError(f"{index} names shard {fname}, which does not exist")
        return _TensorSource(names_to_file=files)
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        files = {}
        for shard in shards:
            with safe_open(str(shard), framework="numpy") as f:
                for name in f.keys():
                    files[name] = str(shard)
        return _TensorSource(names_to_file=files)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        return _TensorSource(arrays=_load_pickle_safely(folder / pickles[0]))
    raise FileNotFoundError(f"{folder}: no *.safetensors weights (and no .bin) found")


def _load_pickle_safely(path: Path) -> dict[str, np.ndarray]:
    """Pickle checkpoints execute code when unpickled; only torch's weights_only loader is allowed."""
    try:
        import torch  # optional: only to read a pickle checkpoint safely
    except ImportError as e:
        raise WeightError(
            f"{path}: pickle checkpoints are refused (unpickling can run arbitrary code). Convert it to "
            "safetensors, or install torch so it can be read with torch.load(weights_only=True)."
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError for anything beyond plain tensors
        raise WeightError(f"{path}: refused: not loadable with torch.load(weights_only=True): {e}") from e
    return {k: v.float().numpy() for k, v in state.items()}


# ---------------------------------------------------------------------------- load
def load_model(
    path: str | os.PathLike,
    mesh: jax.sharding.Mesh | None = None,
    dtype=jnp.float32,
    param_dtype=None,
    rules: ShardingRules | None = None,
    remat: bool = False,
    attention: str = "auto",
) -> Transformer:
    """Load a HF folder or a .gguf file into a sharded NNX `Transformer`.

    mesh: device mesh (default: all local devices on the fsdp axis). dtype: compute dtype;
    param_dtype: storage dtype of the parameters (default: dtype). attention: the full-sequence attention
    implementation (models/attention.py: auto | dense | flash | splash | cudnn).
    """
    path = Path(path)
    if path.suffix == ".gguf":
        hf_config, arrays = read_gguf(path)
        cfg = ModelConfig.from_hf_dict(hf_config, source=str(path))
        source = _TensorSource(arrays=arrays)
    elif path.is_dir():
        cfg = ModelConfig.from_file(path)
        source = _open_folder(path)
    elif path.suffix in (".bin", ".pt", ".pth"):
        raise WeightError(f"{path}: pass the model folder (with config.json), not a pickle file")
    else:
        raise FileNotFoundError(f"{path}: not a model folder (config.json + *.safetensors) or a .gguf file")
    return model_from_tensors(cfg, source, mesh=mesh, dtype=dtype, param_dtype=param_dtype, rules=rules,
                              remat=remat, attention=attention)


def model_from_state_dict(cfg: ModelConfig, state_dict: dict[str, np.ndarray], **kwargs) -> Transformer:
    """Build a model from an in-memory HF-named state dict (numpy arrays)."""
    return model_from_tensors(cfg, _TensorSource(arrays=state_dict), **kwargs)


def model_from_tensors(cfg, source: _TensorSource, mesh=None, dtype=jnp.float32, param_dtype=None, rules=None,
                       remat=False, attention="auto") -> Transformer:
    param_dtype = param_dtype or dtype
    mesh = mesh or make_mesh()
    rules = rules or ShardingRules(mesh)
    specs = param_table(cfg)
    _check_names(cfg, specs, source)

    abstract = nnx.eval_shape(
        lambda: Transformer(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype, remat=remat, rules=rules,
                            attention=attention)
    )
    graphdef, state = nnx.split(abstract)
    for spec in specs:
        host = _assemble(cfg, spec, source).astype(jnp.dtype(param_dtype))
        sharding = rules.sharding(spec.logical_axes, spec.shape, name=".".join(spec.path))
        value = jax.make_array_from_callback(spec.shape, sharding, lambda idx, host=host: host[idx])
        node = state
        for key in spec.path:
            node = node[key]
        node.set_value(value)
    return nnx.merge(graphdef, state)


def _expected(cfg: ModelConfig, specs: Iterable[ParamSpec]) -> dict[str, tuple[ParamSpec, int | None]]:
    out = {}
    for spec in specs:
        layers = range(cfg.num_layers) if spec.path[0] == "layers" else [None]
        for i in layers:
            out[_hf_names(cfg, spec, i)] = (spec, i)
    return out


def _check_names(cfg: ModelConfig, specs, source: _TensorSource) -> None:
    expected = _expected(cfg, specs)
    present = {n for n in source.names() if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # some tied checkpoints still store the (identical) head
    missing = sorted(set(expected) - present)
    extra = sorted(present - set(expected))
    if missing:
        raise WeightError(f"checkpoint is missing {len(missing)} tensor(s) for a {cfg.architecture}: "
                          f"{missing[:8]}{' …' if len(missing) > 8 else ''}")
    if extra:
        raise WeightError(f"checkpoint has {len(extra)} unexpected tensor(s) for a {cfg.architecture} "
                          f"(wrong config.json?): {extra[:8]}{' …' if len(extra) > 8 else ''}")
    for name, (spec, _) in expected.items():
        got = source.shape(name)
        if tuple(got) != tuple(_hf_shape(spec)):
            raise WeightError(f"tensor {name} in {source.where(name)} has shape {tuple(got)}, "
                              f"but config.json implies {tuple(_hf_shape(spec))}")


def _assemble(cfg: ModelConfig, spec: ParamSpec, source: _TensorSource) -> np.ndarray:
    """One parameter in our layout on the host (layer tensors stacked)."""
    if spec.path[0] != "layers":
        return _from_hf(spec, source.get(_hf_names(cfg, spec, None)))
    out = np.empty(spec.shape, dtype=np.float32)
    for i in range(cfg.num_layers):
        out[i] = _from_hf(spec, source.get(_hf_names(cfg, spec, i)))
    return out


# ---------------------------------------------------------------------------- save
def state_dict(model: Transformer) -> dict[str, np.ndarray]:
    """The model's parameters as an HF-named float32 numpy state dict (gathered to the host)."""
    cfg = model.cfg
    out = {}
    for spec in param_table(cfg):
        owner = model if len(spec.path) == 1 else getattr(model, spec.path[0])
        value = np.asarray(jax.device_get(_fully_replicated(getattr(owner, spec.path[-1])[...])), dtype=np.float32)
        if spec.path[0] == "layers":
            for i in range(cfg.num_layers):
                out[_hf_names(cfg, spec, i)] = np.ascontiguousarray(_to_hf(spec, value[i]))
        else:
            out[_hf_names(cfg, spec, None)] = np.ascontiguousarray(_to_hf(spec, value))
    return out


def _fully_replicated(x: jax.Array) -> jax.Array:
    if jax.process_count() == 1 or x.is_fully_addressable:
        return x
    return multihost_utils.process_allgather(x, tiled=True)


def save_model(model: Transformer, path: str | os.PathLike, tokenizer=None) -> Path:
    """Write an HF folder (config.json, model.safetensors[, tokenizer files]) atomically.

    In a multi-process run every process must call this (parameters are gathered); only process 0
    writes. An existing folder at `path` is replaced only once the new one is complete.
    """
    path = Path(path)
    tensors = state_dict(model)
    if jax.process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(model.cfg.to_hf_dict(), f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(new: Path, dest: Path) -> None:
    """Move `new` to `dest`; an old `dest` is removed only after the new folder is in place."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def init_model(cfg: ModelConfig, seed: int = 0, mesh=None, dtype=jnp.float32, param_dtype=None, rules=None,
               remat: bool = False, attention: str = "auto") -> Transformer:
    """A randomly initialised model whose parameters are created directly in their shards."""
    param_dtype = param_dtype or dtype
    mesh = mesh or make_mesh()
    rules = rules or ShardingRules(mesh)

    def build():
        return Transformer(cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype, dtype=dtype, remat=remat, rules=rules,
                           attention=attention)

    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = _state_shardings(cfg, abstract_state, rules)
    state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def _state_shardings(cfg: ModelConfig, state, rules: ShardingRules):
    """A pytree like `state` whose leaves are the parameters' NamedShardings."""
    by_path = {spec.path: spec for spec in param_table(cfg)}

    def sharding_for(path, leaf):
        key = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        spec = by_path[key]
        return rules.sharding(spec.logical_axes, spec.shape, name=".".join(key))

    return jax.tree_util.tree_map_with_path(sharding_for, state)
