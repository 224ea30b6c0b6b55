"""Data: math problem sets with gold answers, prompt templates, and grain prompt pipelines.

    from urlvr_jax.data import load_math_dataset, build_prompt, PromptLoader
    problems = load_math_dataset("gsm8k", split="train")          # shipped, offline
    loader = PromptLoader(problems, batch_size=64, seed=0)        # endless, per-host shard
    prompts = [build_prompt(p.problem, "qwen_math") for p in next(loader)]

The tensorflow-datasets builder lives in `urlvr_jax.data.tfds_builder` (imported on demand: it pulls
in tensorflow_datasets, not TensorFlow).
"""
from .math_datasets import (
    ASSETS_DIR,
    DatasetFormatError,
    MathProblem,
    asset_file,
    gsm8k_final_answer,
    last_boxed,
    list_datasets,
    load_math_dataset,
    problems_from_rows,
    problems_to_jsonl,
)
from .synthetic import (
    check_answer,
    check_countdown,
    classify_answer,
    error_profile,
    make_arithmetic_dataset,
    make_countdown_dataset,
    make_sft_traces,
    synthetic_prompt,
)
from .synthetic_tokenizer import build_synthetic_tokenizer
from .templates import QWEN_MATH_INSTRUCTION, TEMPLATES, build_prompt, build_prompts

__all__ = [
    "ASSETS_DIR", "DatasetFormatError", "MathProblem", "asset_file", "gsm8k_final_answer", "last_boxed",
    "list_datasets", "load_math_dataset", "problems_from_rows", "problems_to_jsonl",
    "PromptLoader", "make_prompt_dataset",
    "QWEN_MATH_INSTRUCTION", "TEMPLATES", "build_prompt", "build_prompts",
    "check_answer", "check_countdown", "classify_answer", "error_profile", "make_arithmetic_dataset",
    "make_countdown_dataset", "make_sft_traces", "synthetic_prompt", "build_synthetic_tokenizer",
]


def __getattr__(name):
    # grain (and with it jax) is imported only when a pipeline is asked for: loading a data set or
    # building a prompt stays a light import.
    if name in ("PromptLoader", "make_prompt_dataset"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
