"""Tokenizers: loading from local folders or GGUF files, and batch encode/decode for the sampler.

Prompts are left-padded (so every row's last prompt token sits in the same column and decoding writes
one aligned column per step) and their padded length is rounded up to a bucket, so a stream of batches
with varying prompt lengths compiles a handful of shapes instead of one per batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from urlvr_jax.models.gguf_io import load_gguf_tokenizer


def load_tokenizer(path: str | os.PathLike):
    """A transformers tokenizer from a local model folder or a .gguf file (never from the hub)."""
    path = Path(path)
    if path.suffix == ".gguf":
        return load_gguf_tokenizer(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a tokenizer folder or .gguf file")
    from transformers import AutoTokenizer  # heavy (torch-free but slow to import): only when a folder is loaded

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: no usable tokenizer files (tokenizer.json / tokenizer_config.json): "
                                f"{e}") from e


def pad_id_of(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def eos_ids_of(tokenizer, model_cfg=None) -> list[int]:
    """EOS ids from the model config (may list several, e.g. <|im_end|> and <|endoftext|>) and tokenizer."""
    ids = list(model_cfg.eos_token_ids) if model_cfg is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_prompts(tokenizer, texts: Sequence[str], bucket: int = 32, max_length: int | None = None,
                   add_special_tokens: bool = True, width: int | None = None,
                   width_name: str = "width") -> tuple[np.ndarray, np.ndarray]:
    """Left-padded int32 ids and mask [B, Tp]: Tp = `width` exactly when given (one compiled shape), else
    the longest prompt rounded up to a multiple of `bucket`.

    A prompt longer than max_length (or width) is an error naming its index and the limit (`width_name`
    for width): silently cutting a math problem would grade the model on a different question.
    """
    encoded = [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    limits = [(max_length, "max_prompt_length"), (width, width_name)]
    for i, ids in enumerate(encoded):
        for limit, name in limits:
            if limit is not None and len(ids) > limit:
                raise ValueError(f"prompt {i} has {len(ids)} tokens > {name}={limit}; raise the limit or drop the "
                                 "record")
    if width is None:
        longest = max(len(x) for x in encoded)
        width = -(-longest // bucket) * bucket
    ids = np.full((len(encoded), width), pad_id_of(tokenizer), np.int32)
    mask = np.zeros((len(encoded), width), np.int32)
    for i, x in enumerate(encoded):
        if x:
            ids[i, width - len(x):] = x
            mask[i, width - len(x):] = 1
    return ids, mask


def decode_responses(tokenizer, tokens: np.ndarray, mask: np.ndarray, skip_special_tokens: bool = True) -> list[str]:
    """Decode each row's valid tokens [R, T] -> R strings."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    return [tokenizer.decode(row[m].tolist(), skip_special_tokens=skip_special_tokens) for row, m in zip(tokens, mask)]


def stop_sequences_from_strings(tokenizer, stop_strings: Sequence[str]) -> list[list[int]]:
    """Token-id stop sequences for stop strings, as the sampler matches them on device.

    A string is matched as the token sequence the tokenizer gives it alone; if the model produces the
    same text split into different tokens, that occurrence is not caught (EOS still ends the row).
    """
    out = []
    for s in stop_strings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"stop string {s!r} encodes to no tokens")
        out.append(list(ids))
    return out
