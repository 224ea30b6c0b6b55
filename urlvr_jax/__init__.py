"""urlvr-jax: unsupervised reinforcement learning with verifiable rewards (URLVR) for LLMs in JAX.

The public API is small and lives here; every name is imported on first use, so ``import urlvr_jax``
does not import jax, flax or transformers:

    import urlvr_jax as ux

    model = ux.load_model("ladder/q0.1")                    # HF folder, .gguf, 'smollm2', 'ladder/<q>'
    tokenizer = ux.load_tokenizer("ladder/q0.1")
    responses = ux.generate(model, tokenizer, "Q: 3+4\\nA: ", ux.SamplingConfig(max_new_tokens=48), num_samples=4)
    ux.grade(responses[0], "7")                             # the response's answer vs gold, as math-verify
    result = ux.evaluate(model, tokenizer, "synthetic/arithmetic", k=4, limit=16, split="eval")
    ux.train(ux.get_config("configs/default.py"), "runs/default")

  load_model, save_model, load_tokenizer, make_mesh    models and meshes (urlvr_jax.api, models.weights, sharding)
  generate, score, SamplingConfig                      text-level sampling and scoring (urlvr_jax.api)
  evaluate, EvalResult                                 avg@k / pass@k / maj@k on a math set (urlvr_jax.evaluate)
  grade, grade_batch                                   answer equivalence (urlvr_jax.rewards.grading)
  train                                                the RL loop (urlvr_jax.train)
  base_config, validate, get_config                    configs (urlvr_jax.config, urlvr_jax.api)

Everything else lives in the sub-packages:
  models/      Flax NNX transformer (Llama, Qwen2, Qwen3, OLMo-2), HF/GGUF weight I/O
  sharding.py  device mesh and logical-axis rules
  rollout/     on-device sampler and scoring pass with per-token statistics
  rewards/     reward estimators, answer extraction, grading
  diagnostics/ URLVR metrics, Model Collapse Step, closed-form optimal-policy diagnostics
  data/        math datasets, synthetic worlds, prompt templates, input pipelines
"""
import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access, PEP 562)
_LAZY = {
    "load_model": "urlvr_jax.api",
    "load_tokenizer": "urlvr_jax.api",
    "generate": "urlvr_jax.api",
    "score": "urlvr_jax.api",
    "get_config": "urlvr_jax.api",
    "save_model": "urlvr_jax.models.weights",
    "make_mesh": "urlvr_jax.sharding",
    "SamplingConfig": "urlvr_jax.rollout.sampler",
    "evaluate": "urlvr_jax.evaluate",
    "EvalResult": "urlvr_jax.evaluate",
    "grade": "urlvr_jax.rewards.grading",
    "grade_batch": "urlvr_jax.rewards.grading",
    "train": "urlvr_jax.train",
    "base_config": "urlvr_jax.config",
    "validate": "urlvr_jax.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'urlvr_jax' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted([*__all__, "__version__"])


class _Package(_types.ModuleType):
    """`urlvr_jax.train` and `urlvr_jax.evaluate` are the public functions, although sub-modules of the
    same names exist: importing such a sub-module (`from urlvr_jax.train import Checkpointer`) would
    otherwise replace the package attribute with the module. Reach those modules with `from urlvr_jax.train
    import …` or `importlib.import_module("urlvr_jax.train")`."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, _types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
