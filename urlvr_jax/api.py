"""The user-facing layer of the top-level API: names in, text in, text out.

The sub-modules work on resolved paths and left-padded token arrays (what the trainer needs); these
wrappers add what a person at a prompt needs and nothing else:

  load_model / load_tokenizer  accept the shipped names ('ladder/q0.1' … 'ladder/q0.8', 'ladder_v2/q0.05' …
                               'ladder_v2/q0.95', 'ladder_v2/inflated', 'ladder_v3/…' the same rungs with a
                               universal give-up answer, 'smollm2') as well as local HF folders
                               and .gguf files;
  generate                     prompts (strings or token-id lists) -> sampled response strings;
  score                        prompts + responses (strings) -> per-token log-prob, entropy, … of the
                               responses under the model;
  get_config                   a configs/*.py file (optionally ':variant'), validated.

    import urlvr_jax as ux
    model = ux.load_model("ladder/q0.1")
    tokenizer = ux.load_tokenizer("ladder/q0.1")
    [responses] = ux.generate(model, tokenizer, ["Q: 3+4*2\\nA: "], num_samples=4)
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from urlvr_jax import tokenizer as tokenizers
from urlvr_jax.models import weights
from urlvr_jax.rollout import sampler
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.sharding import shard_batch

Prompt = Union[str, Sequence[int]]


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """A local path for a model name: 'ladder/<q>', 'ladder_v2/<rung>' or 'ladder_v3/<rung>' (shipped tiny models),
    'smollm2', or a path as given."""
    from urlvr_jax.models.paths import resolve_model_path as resolve

    return resolve(os.fspath(name_or_path))


def load_model(name_or_path: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, dtype="float32",
               param_dtype=None, **kwargs):
    """Load a model into sharded arrays: a local HF folder, a .gguf file, 'smollm2' or 'ladder/<q>'.

    mesh: default all local devices on the fsdp axis (`make_mesh`). dtype / param_dtype: a jnp dtype or
    its name ("float32", "bfloat16"). Other keyword arguments go to `urlvr_jax.models.weights.load_model`.

        model = urlvr_jax.load_model("ladder/q0.1")
        model = urlvr_jax.load_model("/models/Qwen3-1.7B-Base", mesh=urlvr_jax.make_mesh({"fsdp": 4, "tensor": 2}),
                                     dtype="bfloat16")
    """
    dtype = jnp.dtype(dtype)
    param_dtype = None if param_dtype is None else jnp.dtype(param_dtype)
    return weights.load_model(resolve_model_path(name_or_path), mesh=mesh, dtype=dtype, param_dtype=param_dtype,
                              **kwargs)


def load_tokenizer(name_or_path: str | os.PathLike):
    """The tokenizer of a local HF folder or .gguf file, 'smollm2' or 'ladder/<q>' (never from the hub)."""
    return tokenizers.load_tokenizer(resolve_model_path(name_or_path))


def generate(model, tokenizer, prompts: Prompt | Sequence[Prompt], sampling: SamplingConfig = SamplingConfig(),
             num_samples: int = 1, seed: int = 0, stop: Sequence[str] = (),
             skip_special_tokens: bool = True) -> list[str] | list[list[str]]:
    """Sample `num_samples` responses for each prompt and decode them.

    prompts: one prompt or a list; a prompt is a string (tokenised with the tokenizer's special tokens,
        e.g. BOS) or a list of token ids (used as given). Templates are the caller's: see
        `urlvr_jax.data.build_prompts` for the chat / Qwen-math templates.
    sampling: `SamplingConfig` (max_new_tokens, temperature, top_p, top_k, greedy).
    stop: stop strings; a response ends after the first one (kept in the text), or at EOS.
    Returns a list of `num_samples` strings for a single prompt, else one such list per prompt.
    Deterministic for a given seed; the batch is split over the model's mesh.

        [answers] = urlvr_jax.generate(model, tokenizer, ["Q: 3+4\\nA: "],
                                       urlvr_jax.SamplingConfig(max_new_tokens=48), num_samples=4)
    """
    single = isinstance(prompts, str) or _is_ids(prompts)
    batch = [prompts] if single else list(prompts)
    if not batch:
        raise ValueError("generate: no prompts given")
    if num_samples < 1:
        raise ValueError(f"generate: num_samples must be >= 1, got {num_samples}")
    ids, mask = _encode(tokenizer, batch)
    rules = getattr(model, "rules", None)
    out = sampler.generate_ids(model, shard_batch(ids, rules), shard_batch(mask, rules), jax.random.key(seed),
                               sampling, num_samples=num_samples, eos_ids=tokenizers.eos_ids_of(tokenizer, model.cfg),
                               stop_sequences=tokenizers.stop_sequences_from_strings(tokenizer, stop),
                               pad_id=tokenizers.pad_id_of(tokenizer))
    tokens, rmask = jax.device_get((out.tokens, out.mask))
    texts = tokenizers.decode_responses(tokenizer, tokens, rmask, skip_special_tokens=skip_special_tokens)
    grouped = [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(batch))]
    return grouped[0] if single else grouped


@dataclasses.dataclass(frozen=True)
class ResponseScores:
    """Per-token statistics of given responses (numpy, [B, T] with T the longest response; 0 past the end).

    Attributes:
      tokens: the responses' token ids (pad past the end).
      mask: 1 for response tokens.
      logprob, entropy, self_certainty, top_gap: see `urlvr_jax.rollout.stats.TokenStats`.
    """

    tokens: np.ndarray
    mask: np.ndarray
    logprob: np.ndarray
    entropy: np.ndarray
    self_certainty: np.ndarray
    top_gap: np.ndarray

    @property
    def total_logprob(self) -> np.ndarray:
        """log π(response | prompt) per response [B]."""
        return self.logprob.sum(axis=1)


def score(model, tokenizer, prompts: Sequence[Prompt], responses: Sequence[str], temperature: float = 1.0
          ) -> ResponseScores:
    """Score `responses[i]` as a continuation of `prompts[i]` under `model` (no sampling).

    The statistics are those the sampler reports for its own tokens (softmax(logits / temperature) over
    the full vocabulary), so scoring a sampled response reproduces its sampling-time log-probs.

        s = urlvr_jax.score(model, tokenizer, ["Q: 3+4\\nA: "], ["7 \\\\boxed{7}"])
        s.total_logprob  # [1]
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"score: {len(prompts)} prompts and {len(responses)} responses; pass one response per "
                         "prompt (repeat a prompt for several responses)")
    ids, mask = _encode(tokenizer, prompts)
    encoded = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(1, max(len(r) for r in encoded))
    r_ids = np.full((len(encoded), width), tokenizers.pad_id_of(tokenizer), np.int32)
    r_mask = np.zeros((len(encoded), width), np.int32)
    for i, r in enumerate(encoded):
        r_ids[i, :len(r)], r_mask[i, :len(r)] = r, 1
    rules = getattr(model, "rules", None)
    stats = sampler.score(model, *(shard_batch(x, rules) for x in (ids, mask, r_ids, r_mask)),
                          temperature=temperature)
    stats = jax.device_get(stats)
    return ResponseScores(tokens=r_ids, mask=r_mask, **{k: np.asarray(v) for k, v in stats._asdict().items()})


def get_config(spec: str | os.PathLike, validate: bool = True):
    """Load a config file's `get_config(variant)`: "configs/paper.py:self_certainty", a path, or a name.

    A bare name ("default", "paper:ttrl") is looked up in ./configs/ and then in the configs/ folder
    of the checkout this package was imported from. The config is checked with
    `urlvr_jax.config.validate` unless validate=False (e.g. for a preset-only dry-run config).

        config = urlvr_jax.get_config("configs/default.py:mcs_probe")
        config.train.steps = 10
        urlvr_jax.train(config, "runs/probe")
    """
    from urlvr_jax.config import validate as check

    text = os.fspath(spec)
    path, _, variant = text.partition(":") if not os.path.exists(text) else (text, "", "")
    file = _config_file(path)
    module_spec = importlib.util.spec_from_file_location(f"urlvr_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{file}: a config file must define get_config(variant)")
    config = module.get_config(variant) if variant else module.get_config()
    return check(config) if validate else config


def _config_file(path: str) -> Path:
    p = Path(path)
    candidates = [p] if p.suffix == ".py" else [p.with_suffix(".py")]
    if not p.is_absolute() and len(p.parts) == 1:
        name = candidates[0].name
        candidates += [Path("configs") / name, Path(__file__).resolve().parents[1] / "configs" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"config {path!r} not found (looked at {', '.join(map(str, candidates))}); pass a "
                            "configs/*.py path, optionally with ':variant'")


def _is_ids(x) -> bool:
    return isinstance(x, (list, tuple, np.ndarray)) and len(x) > 0 and isinstance(x[0], (int, np.integer))


def _encode(tokenizer, prompts: Sequence[Prompt]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids and mask [B, Tp] for text prompts or token-id prompts (not mixed)."""
    if all(isinstance(p, str) for p in prompts):
        return tokenizers.encode_prompts(tokenizer, prompts)
    for i, p in enumerate(prompts):
        if not _is_ids(p):
            raise TypeError(f"prompt {i}: expected a string or a non-empty list of token ids, got "
                            f"{p!r:.80} (pass all prompts as strings or all as token ids)")
    width = -(-max(len(p) for p in prompts) // 32) * 32
    ids = np.full((len(prompts), width), tokenizers.pad_id_of(tokenizer), np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = np.asarray(p, np.int32), 1
    return ids, mask
