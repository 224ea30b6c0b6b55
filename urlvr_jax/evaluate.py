"""Sharded evaluation: avg@k, pass@k and maj@k of a model on a math problem set.

For each problem, k responses are sampled (on the model's mesh, batch split over data × fsdp), each is
graded against the gold answer (`urlvr_jax.rewards.grading`: the last \\boxed{…} group, else the last math
expression, as math-verify reads a response; MATH string normalisation, then math-verify in bounded worker
processes), and:
  avg@k  mean accuracy over the k samples (the paper's validation metric, T = 0.6, top-p 0.95);
  pass@j unbiased estimator 1 − C(k−c, j)/C(k, j) for j = 1, 2, 4, …, k (Chen et al. 2021);
  maj@k  the most frequent answer (each response's last \\boxed{} content, as the on-device extractor reads
         it; equivalence classes of the grader, first-seen tie-break, responses without an answer do not
         vote) is correct.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from urlvr_jax.data.math_datasets import MathProblem
from urlvr_jax.data.tasks import EVAL_SEED, Task, is_synthetic, make_task
from urlvr_jax.diagnostics.metrics import pass_at_k
from urlvr_jax.rewards.grading import cluster_answers, extract_boxed, grade_batch
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
from urlvr_jax.sharding import shard_batch
from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, pad_id_of

# The paper's validation sampling (§4): T = 0.6, top-p 0.95.
EVAL_SAMPLING = SamplingConfig(max_new_tokens=1024, temperature=0.6, top_p=0.95)


@dataclasses.dataclass
class EvalResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    def write(self, out_dir: str | os.PathLike) -> Path:
        """records.jsonl (one object per problem) and summary.json; process 0 only."""
        out = Path(out_dir)
        if jax.process_index() != 0:
            return out
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "records.jsonl", "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(out / "summary.json", "w", encoding="utf-8") as f:
            json.dump(self.summary, f, indent=2)
        return out


def majority_index(labels: Sequence[int]) -> int:
    """Index of the first response of the most frequent answer class (first-seen tie-break); -1 if none."""
    counts: dict[int, int] = {}
    for lab in labels:
        if lab >= 0:
            counts[lab] = counts.get(lab, 0) + 1
    if not counts:
        return -1
    best = max(counts.values())
    for lab in labels:  # first seen among the tied
        if lab >= 0 and counts[lab] == best:
            return lab
    return -1


def summarize(correct: np.ndarray, maj_correct: np.ndarray) -> dict[str, float]:
    """avg@k, pass@j (j = 1, 2, 4, …, k) and maj@k from per-sample correctness [P, k] and maj [P]."""
    P, k = correct.shape
    c = correct.sum(axis=1)
    out = {f"avg@{k}": float(correct.mean()), f"maj@{k}": float(maj_correct.mean())}
    j = 1
    while j <= k:
        out[f"pass@{j}"] = float(np.mean(pass_at_k(np.full(P, k), c, j)))
        j *= 2
    out[f"pass@{k}"] = float(np.mean(pass_at_k(np.full(P, k), c, k)))
    return out


def evaluate(
    model,
    tokenizer,
    dataset: str | Sequence[MathProblem] | Task,
    k: int = 4,
    sampling: SamplingConfig = EVAL_SAMPLING,
    template: str = "qwen_math",
    batch_size: int = 8,
    seed: int = 0,
    limit: int | None = None,
    split: str = "test",
    grade_timeout_s: float = 5.0,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `model` on `dataset`: a name like "gsm8k"/"math500"/"aime24"/"synthetic/countdown" (its `split`;
    synthetic sets draw `limit` (default 256) problems with EVAL_SEED), a path, records, or a Task.

        result = evaluate(model, tokenizer, "math500", k=8, limit=64)
        result.summary["avg@8"], result.summary["maj@8"]; result.write("runs/eval")   # records.jsonl, summary.json
    """
    if isinstance(dataset, Task):
        task = dataclasses.replace(dataset, problems=dataset.problems[: limit or None])
    elif is_synthetic(dataset):
        task = make_task(dataset, split=split, size=limit or 256, seed=EVAL_SEED)
    else:
        task = make_task(dataset, split=split, limit=limit or 0, template=template)
    problems = list(task.problems)
    if not problems:
        raise ValueError(f"evaluate: dataset {dataset!r} has no problems")
    name = task.name
    rules = getattr(model, "rules", None)
    eos, pad = eos_ids_of(tokenizer, model.cfg), pad_id_of(tokenizer)
    key = jax.random.key(seed)
    records: list[dict[str, Any]] = []
    gen_tokens, gen_time = 0, 0.0
    bar = _progress(len(problems), f"eval {name}", progress)
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        # keep one batch shape: pad a short tail batch with copies of its last problem, drop them after
        filled = batch + [batch[-1]] * (batch_size - len(batch))
        ids, mask = encode_prompts(tokenizer, task.prompts(filled, tokenizer))
        t0 = time.perf_counter()
        out = generate_ids(model, shard_batch(ids, rules), shard_batch(mask, rules), jax.random.fold_in(key, start),
                           sampling, num_samples=k, eos_ids=eos, pad_id=pad)
        tokens, rmask = jax.device_get((out.tokens, out.mask))
        truncated = np.asarray(jax.device_get(out.truncated))
        gen_time += time.perf_counter() - t0
        gen_tokens += int(rmask.sum())
        texts = decode_responses(tokenizer, tokens, rmask)
        n_real = len(batch) * k
        answers = [extract_boxed(t) for t in texts[:n_real]]
        if task.synthetic:  # exact checkers (countdown accepts any valid expression)
            correct = task.correct(batch, texts[:n_real], k).reshape(-1).tolist()
        else:  # whole responses: the grader finds the answer (boxed groups, the last math expression)
            correct = grade_batch(texts[:n_real], [p.answer for p in batch for _ in range(k)],
                                  timeout_s=grade_timeout_s)
        labels = cluster_answers([answers[i * k:(i + 1) * k] for i in range(len(batch))], timeout_s=grade_timeout_s)
        for i, p in enumerate(batch):
            sl = slice(i * k, (i + 1) * k)
            maj = majority_index(labels[i])
            records.append({
                "id": p.id, "source": p.source, "problem": p.problem, "gold": p.answer,
                "responses": texts[sl], "answers": answers[sl], "correct": [bool(c) for c in correct[sl]],
                "response_tokens": [int(n) for n in rmask[sl].sum(axis=1)],
                "truncated": [bool(t) for t in truncated[sl]],
                "majority_answer": answers[sl][maj] if maj >= 0 else None,
                "majority_correct": bool(correct[sl][maj]) if maj >= 0 else False,
            })
        bar.update(len(batch))
    bar.close()
    correct = np.array([r["correct"] for r in records], bool)
    maj = np.array([r["majority_correct"] for r in records], bool)
    summary = {"dataset": str(name), "n_problems": len(records), "k": k, **summarize(correct, maj),
               "no_answer_rate": float(np.mean([a is None for r in records for a in r["answers"]])),
               "truncation_rate": float(np.mean([t for r in records for t in r["truncated"]])),
               "mean_response_tokens": float(np.mean([n for r in records for n in r["response_tokens"]])),
               "generated_tokens_per_s": gen_tokens / max(gen_time, 1e-9),
               "sampling": dataclasses.asdict(sampling), "template": task.template, "seed": seed}
    return EvalResult(summary=summary, records=records)


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="problem", disable=not enabled or jax.process_index() != 0)
