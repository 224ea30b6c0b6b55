"""A task: the problems a run trains or evaluates on, and how to prompt, check and verify them.

    task = make_task("synthetic/countdown", split="train", size=2048, seed=0)   # or "gsm8k", a path, ...
    prompts = task.prompts(batch, tokenizer)         # what the policy continues
    correct = task.correct(batch, texts, n)          # [P, n] bool: exact checker or the math grader
    gold = task.gold_hashes(batch)                   # [P] int32 answer ids (device metrics; -1 = none)
    text = task.verification_prompt(p, response)     # what the policy judges under self-verification

Two kinds: the synthetic world (`synthetic/arithmetic`, `synthetic/countdown`: "Q: ...\\nA: " prompts, exact
checkers) and math data sets (templates of data/templates.py, the grader of rewards/grading.py). A synthetic
base model's folder carries its recipe (RECIPE_FILE): its problems come from the distribution it was trained
on (`problems_for_model`). Everything that asks "synthetic or real?" asks the Task, not the dataset name.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.math_datasets import MathProblem, load_math_dataset
from urlvr_jax.data.templates import build_prompt
from urlvr_jax.rewards.answers import answer_hash
from urlvr_jax.rewards.external import build_verification_prompt
from urlvr_jax.rewards.grading import extract_boxed, grade_batch

SYNTHETIC_PREFIX = "synthetic/"
RECIPE_FILE = "base_model_recipe.json"
# Seeds of fixed problem sets and keys (named once here; each stays apart from the training seed's streams).
EVAL_SEED = 12345  # synthetic evaluation problems drawn by name (urlvr-eval, evaluate())
RECIPE_EVAL_SEED = 20260308  # held-out problems of a synthetic base model's own task, for evaluation while training
PROBE_SEED_OFFSET = 0x5EED  # the π* probe samples with key(train.seed + PROBE_SEED_OFFSET), apart from the step keys
# Generator knobs of the default tasks of synthetic base models (see make_arithmetic_dataset / make_countdown_dataset).
# Arithmetic: two operations, values capped at 20 (the generator's defaults are 2–3 operations and 99):
# a space of facts a tiny model learns within the budget (4354 train / 1119 eval problems), so its
# errors come from the controlled error process rather than from failing to learn arithmetic. With
# 2–3 operations, the same budget left the model's own errors ("other" answers) at 61% on the problems
# with a systematic path (q = 0.8), drowning the designed ones.
DEFAULT_TASKS = {"arithmetic": {"steps": (2,), "ops": "+-*", "max_operand": 9, "max_value": 20},
                 "countdown": {"n_numbers": 4, "max_number": 12, "target_range": (10, 99)}}
# Self-verification of a synthetic model: "V: <problem> by <expression>\nA: " (the format the Countdown base
# model of experiments/external_rewards.py is trained to judge); longer expressions are not sent to the judge.
SYNTHETIC_VERIFY_PREFIX = "V: "
SYNTHETIC_VERIFY_MAX_EXPR_CHARS = 24


def is_synthetic(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(SYNTHETIC_PREFIX)


def synthetic_family(name: str) -> str:
    family = name[len(SYNTHETIC_PREFIX):]
    if family not in syn.FAMILIES:
        raise ValueError(f"dataset {name!r}: unknown synthetic family; choose "
                         + " or ".join(SYNTHETIC_PREFIX + f for f in syn.FAMILIES))
    return family


# ------------------------------------------------------------------------------------------ recipes
def make_problems(family: str, n: int, seed: int, split: str, task: Optional[Mapping] = None) -> list[MathProblem]:
    """`n` problems of `family` and `split` with the generator knobs `task` (default DEFAULT_TASKS[family]).

    A base model's recipe stores its family and task, so RL prompts and evaluation problems can be drawn
    from the distribution it was trained on (`problems_for_model`); splits never share a problem.
    """
    if family not in syn.FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {syn.FAMILIES}")
    knobs = dict(DEFAULT_TASKS[family] if task is None else task)
    if family == "arithmetic":
        if "steps" in knobs and not isinstance(knobs["steps"], int):
            knobs["steps"] = tuple(knobs["steps"])
        return syn.make_arithmetic_dataset(n, seed, split=split, **knobs)
    if "target_range" in knobs:
        knobs["target_range"] = tuple(knobs["target_range"])
    return syn.make_countdown_dataset(n, seed, split=split, **knobs)


def load_recipe(model_dir) -> dict[str, Any]:
    """The RECIPE_FILE a synthetic base model's folder carries (q, family, task, training settings, …)."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {RECIPE_FILE}; this folder was not written by build_base_model")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def recipe_family(model_dir: Optional[str]) -> Optional[str]:
    """The synthetic family a base model folder was made for (its recipe's), None without a recipe."""
    if not model_dir or not os.path.exists(os.path.join(model_dir, RECIPE_FILE)):
        return None
    return load_recipe(model_dir)["family"]


def problems_for_model(model_dir, n: int, seed: int, split: str = "train") -> list[MathProblem]:
    """Problems from the distribution the base model in `model_dir` was trained on (its recipe's task)."""
    r = load_recipe(model_dir)
    return make_problems(r["family"], n, seed, split, r.get("task"))


# ------------------------------------------------------------------------------------------ the task
@dataclasses.dataclass(frozen=True)
class Task:
    """Problems plus how to prompt, check and verify them (see the module docstring)."""

    name: str  # the dataset name ("synthetic/countdown", "gsm8k", a path, or "records")
    problems: tuple[MathProblem, ...]
    template: str  # "synthetic", or a template of data/templates.py
    synthetic: bool

    def prompt(self, problem: MathProblem, tokenizer=None) -> str:
        if self.synthetic:
            return syn.synthetic_prompt(problem)
        return build_prompt(problem.problem, self.template, tokenizer)

    def prompts(self, problems: Sequence[MathProblem], tokenizer=None) -> list[str]:
        return [self.prompt(p, tokenizer) for p in problems]

    @property
    def gt_by_hash(self) -> bool:
        """Whether correctness is answer-id equality on device (integer answers: exact text equality)."""
        return self.synthetic and bool(self.problems) and syn.family_of(self.problems[0]) == "arithmetic"

    @staticmethod
    def gold_hashes(problems: Sequence[MathProblem]) -> np.ndarray:
        """[P] int32 answer ids of the gold answers (metrics and the ground_truth reward only)."""
        return np.array([answer_hash(p.answer) for p in problems], np.int32)

    def correct(self, problems: Sequence[MathProblem], texts: Sequence[str], n: int) -> np.ndarray:
        """[P, n] bool: texts [P·n] (prompt-major) checked exactly (synthetic) or by the math grader."""
        P = len(problems)
        if len(texts) != P * n:
            raise ValueError(f"Task.correct: {len(texts)} texts for {P} problems x {n} samples")
        if self.synthetic:
            flat = [syn.check_answer(p, texts[i * n + j]) for i, p in enumerate(problems) for j in range(n)]
        else:
            flat = grade_batch([extract_boxed(t) for t in texts], [p.answer for p in problems for _ in range(n)])
        return np.array(flat, bool).reshape(P, n)

    def verification_prompt(self, problem: MathProblem, response: str, tokenizer=None) -> Optional[str]:
        """The prompt asking the policy to judge `response`, or None when there is nothing to judge (no boxed
        answer; for the synthetic world also an expression too long for the judge's format)."""
        if self.synthetic:
            expr = extract_boxed(response)
            if expr is None or not 0 < len(expr.strip()) <= SYNTHETIC_VERIFY_MAX_EXPR_CHARS:
                return None
            return f"{SYNTHETIC_VERIFY_PREFIX}{problem.problem} by {expr.strip()}\nA: "
        if extract_boxed(response) is None:
            return None
        text = build_verification_prompt(problem.problem, response)
        return build_prompt(text, "chat", tokenizer) if self.template == "chat" else text


def make_task(name: str | Sequence[MathProblem], *, split: str = "train", limit: int = 0, template: str = "qwen_math",
              size: int = 2048, seed: int = 0, model_dir: Optional[str] = None) -> Task:
    """The task of a dataset name (or a list of problems, named "records").

    Synthetic names draw `size` problems with `seed` (from the recipe of the base model in `model_dir` when it
    has one of the same family: the task distribution it was made for; else the generator's own defaults);
    math names load the
    shipped/local set. `limit` keeps the first problems (0 = all).
    """
    if not isinstance(name, str):
        problems = list(name)[: limit or None]
        synthetic = bool(problems) and all(is_synthetic(p.source) for p in problems)
        return Task("records", tuple(problems), "synthetic" if synthetic else template, synthetic)
    if is_synthetic(name):
        family = synthetic_family(name)
        if recipe_family(model_dir) == family:
            problems = problems_for_model(model_dir, size, seed, split=split)
        else:
            make = {"arithmetic": syn.make_arithmetic_dataset, "countdown": syn.make_countdown_dataset}[family]
            problems = make(size, seed, split=split)
        return Task(name, tuple(problems[: limit or None]), "synthetic", True)
    problems = load_math_dataset(name, split=split, limit=limit or None)
    return Task(name, tuple(problems), template, False)


def training_task(data, model_dir: Optional[str] = None) -> Task:
    """The training task of a config's `data` section (model_dir: the resolved policy path, for its recipe)."""
    return make_task(data.dataset, split=data.split, limit=data.limit, template=data.template,
                     size=data.synthetic_size, seed=data.synthetic_seed, model_dir=model_dir)


def evaluation_task(name: str, *, limit: int, template: str, model_dir: Optional[str] = None) -> Task:
    """Held-out problems for evaluation while training: a synthetic base model's own task (eval split,
    RECIPE_EVAL_SEED) when it has a recipe, else the named set (synthetic: eval split, EVAL_SEED; math: test)."""
    if is_synthetic(name):
        own = recipe_family(model_dir) == synthetic_family(name)
        return make_task(name, split="eval", limit=limit, size=limit, seed=RECIPE_EVAL_SEED if own else EVAL_SEED,
                         model_dir=model_dir)
    return make_task(name, split="test", limit=limit, template=template)
