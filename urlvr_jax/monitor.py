"""Host-side monitoring of a training run: grading each step's rollout, the π* probe between epochs, and
evaluation while training. Gold answers enter only here (metrics), never the training signal of an
unsupervised run.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from urlvr_jax.data.tasks import PROBE_SEED_OFFSET, Task
from urlvr_jax.diagnostics.metrics import step_metrics
from urlvr_jax.diagnostics.optimal_policy import optimal_policy_diagnostics
from urlvr_jax.evaluate import EVAL_SAMPLING, evaluate
from urlvr_jax.metrics_io import MetricsWriter
from urlvr_jax.rl.step import StepConfig, make_probe
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.sharding import replicate, shard_batch, to_host
from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of

VOTING_METRICS = ("majority_vote", "ground_truth")  # rewards whose majority ratio is logged


@dataclasses.dataclass(frozen=True)
class MonitorSettings:
    """What the host grading needs to know about the run."""

    reward: str  # rl.reward
    num_samples: int  # N
    n_train: int  # samples per prompt the update trains on (TTRL: fewer than N)
    binary: bool  # whether the proxy reward is 0/1 (majority vote, ground truth, checkers, one verdict)
    beta: float  # β of the closed-form π* diagnostics


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Evaluation while training (train.eval_* keys)."""

    task: Task  # the held-out problems (data/tasks.py: evaluation_task)
    k: int
    max_new_tokens: int
    batch_size: int
    temperature: float = EVAL_SAMPLING.temperature  # train.eval_temperature
    top_p: float = EVAL_SAMPLING.top_p  # train.eval_top_p
    seed: int = -1  # train.eval_seed: -1 = the step; >= 0 = the same draws at every evaluation


def monitor(out, problems, gold_ids, tokenizer, task: Task, settings: MonitorSettings,
            reference_length: float | None = None, texts: list[str] | None = None) -> dict[str, float]:
    """Host-side metrics of one step's rollout (host arrays). GT correctness is for monitoring only;
    reference_length: the base model's mean response length (step 1's rollout), for collapse/length_ratio;
    texts: the decoded responses [P·N] if already decoded."""
    P, N, n = len(problems), settings.num_samples, settings.n_train
    tokens, mask, answer_ids, rewards = out.rollout.tokens, out.rollout.mask, out.answer_ids, out.rewards
    old_lp, ref_lp = out.old_logprob, out.ref_logprob
    T = tokens.shape[-1]
    if task.gt_by_hash:
        correct = (answer_ids == np.asarray(gold_ids)[:, None]) & (answer_ids >= 0)
    else:
        correct = task.correct(problems, texts if texts is not None else decode_responses(tokenizer, tokens, mask), N)
    label_correct = None
    if settings.reward == "majority_vote":
        # the majority (pseudo) label is correct iff a response carrying it is correct
        carries = (answer_ids == out.majority_id[:, None]) & (out.majority_id[:, None] >= 0)
        label_correct = np.any(carries & correct, axis=1)
    m = mask.reshape(P, N, T)[:, :n]
    metrics = step_metrics(rewards, correct[:, :n].astype(np.float32), m, binary_proxy=settings.binary,
                           label_correct=label_correct,
                           majority_ratio=out.majority_ratio if settings.reward in VOTING_METRICS else None,
                           entropy=out.rollout.stats.entropy.reshape(P, N, T)[:, :n],
                           tokens=tokens.reshape(P, N, T)[:, :n],
                           truncated=out.rollout.truncated.reshape(P, N)[:, :n],
                           eos_id=(eos_ids_of(tokenizer) or [None])[0], reference_length=reference_length)
    metrics["urlvr/pass_at_n"] = float(np.mean(np.any(correct, axis=1)))
    if ref_lp is not None:
        # KL(π_old ‖ π_ref) of the rollout policy (the pre-update policy, which sampled these tokens) to the
        # frozen reference, estimated on the sampled response tokens (all N samples), as means over tokens:
        # k1 = log π_old - log π_ref = -d (unbiased, can be negative on a batch) and verl's k3 = exp(d) - d - 1
        # (unbiased, >= 0, lower variance), d = log π_ref - log π_old; plus the k1 sum per response
        d = np.where(mask > 0, np.asarray(ref_lp, np.float64) - np.asarray(old_lp, np.float64), 0.0)
        metrics["kl_to_ref/k1_token_mean"] = float((-d).sum() / max(mask.sum(), 1))
        metrics["kl_to_ref/k3_token_mean"] = float((np.expm1(d) - d).sum() / max(mask.sum(), 1))
        metrics["kl_to_ref/k1_seq_mean"] = float((-d).sum(-1).mean())
        seq = lambda lp: (lp * mask).sum(-1).reshape(P, N)[:, :n]  # noqa: E731
        metrics.update(optimal_policy_diagnostics(rewards, correct[:, :n], seq(ref_lp), settings.beta,
                                                  policy_logprob=seq(old_lp)))
    return {k: float(v) for k, v in metrics.items()}


def monitor_record(step: int, epoch: int, out, batch, gold, tokenizer, task: Task, settings: MonitorSettings,
                   device_metrics: dict, times: dict, reference_length: float | None = None,
                   writer: MetricsWriter | None = None) -> tuple[dict, dict]:
    """(This step's metrics record, its times) — runs in the grading thread. With a writer, the step's
    problems, responses and rewards also go to rollouts.jsonl."""
    t0 = time.perf_counter()
    texts = decode_responses(tokenizer, out.rollout.tokens, out.rollout.mask)
    metrics = monitor(out, batch, gold, tokenizer, task, settings, reference_length, texts=texts)
    n_tokens = float(np.asarray(out.rollout.mask).sum())
    times["time/grading"] = time.perf_counter() - t0
    record = {"step": step, "epoch": epoch, **device_metrics, **metrics,
              "throughput/tokens_per_s": n_tokens / max(times["time/step"], 1e-9)}
    if "time/rollout" in times:
        record["throughput/rollout_tokens_per_s"] = n_tokens / max(times["time/rollout"], 1e-9)
    if writer is not None:
        N, n = settings.num_samples, settings.n_train
        writer.write_rollout({"step": step, "problems": [{"id": p.id, "problem": p.problem} for p in batch],
                              "responses": [texts[i * N:(i + 1) * N] for i in range(len(batch))],
                              "rewards": np.asarray(out.rewards, np.float64).reshape(len(batch), n).tolist()})
    return record, times


class EpochProbe:
    """The closed-form π* diagnostics between epochs (diagnostics/optimal_policy.py): sample N responses
    for a fixed probe batch (the first `n_prompts` training problems) with the current policy, score them
    with the policy and the frozen reference, reward them with the training reward (a host reward through
    `host_rewarder`), and estimate π*'s accuracy ceiling, entropy and KLs by self-normalised importance
    sampling. GT answers enter only the diagnostics. Compiled at its first call."""

    def __init__(self, task: Task, n_prompts: int, max_prompt_length: int, tokenizer, graphdef, ref_graphdef,
                 step_cfg: StepConfig, settings: MonitorSettings, mesh, rules, seed: int, host_rewarder=None):
        self.task, self.tokenizer, self.mesh, self.settings = task, tokenizer, mesh, settings
        self.host_rewarder = host_rewarder
        self.batch = list(task.problems[:n_prompts])
        ids, mask = encode_prompts(tokenizer, task.prompts(self.batch, tokenizer), width=max_prompt_length,
                                   width_name="config.data.max_prompt_length")
        self.ids, self.mask = shard_batch(ids, rules), shard_batch(mask, rules)
        self.gold = task.gold_hashes(self.batch)
        cfg = dataclasses.replace(step_cfg, use_reference=True, skip_redundant_old_pass=False,
                                  dynamic_sampling_groups=0)
        self.fn = make_probe(graphdef, ref_graphdef, cfg)
        self.key = jax.random.key(seed + PROBE_SEED_OFFSET)

    def __call__(self, epoch: int, params, ref_params, extractor) -> dict[str, float]:
        host = self.host_rewarder.for_batch(self.batch) if self.host_rewarder is not None else None
        out = self.fn(params, ref_params, self.ids, self.mask, replicate(self.gold, self.mesh),
                      replicate(jax.random.fold_in(self.key, epoch & 0xFFFFFFFF), self.mesh), extractor,  # -1: base
                      host_reward=host)
        out = to_host(out)
        metrics = monitor(out, self.batch, self.gold, self.tokenizer, self.task, self.settings)
        metrics.update({k: float(v) for k, v in out.metrics.items()})  # the host reward's own metrics
        # π* and the probe's own accuracy / reward, under a probe/ prefix where not already pistar/
        return {(k if k.startswith("pistar/") else f"probe/{k}"): v for k, v in metrics.items()}


def end_of_epoch(epoch: int, step: int, writer: MetricsWriter, probe: EpochProbe | None, params, ref_params,
                 graphdef, tokenizer, extractor, evaluation: EvalSettings | None = None) -> dict[str, Any]:
    """The epochs.jsonl line of a finished epoch; epoch -1 (step 0) is the base model before training.
    Every process runs the probe and the evaluation (collectives on multi-host runs); process 0 writes."""
    record: dict[str, Any] = {"epoch": epoch, "step": step}
    if epoch >= 0:
        record.update(writer.epoch_means(epoch))
    if probe is not None:
        t0 = time.perf_counter()
        record.update(probe(epoch, params, ref_params, extractor))
        record["time/pistar_probe"] = time.perf_counter() - t0
    if evaluation is not None:
        t0 = time.perf_counter()
        record.update(run_eval(evaluation, nnx.merge(graphdef, params), tokenizer, step,
                               writer.path.parent / "eval" / f"epoch_{epoch}_step_{step:06d}"))
        record["time/eval"] = time.perf_counter() - t0
    return record


def run_eval(settings: EvalSettings, model, tokenizer, step: int,
             out_dir: str | os.PathLike | None = None, writer: MetricsWriter | None = None) -> dict[str, float]:
    """Periodic evaluation (avg@k, pass@k, maj@k) through the evaluation API; with out_dir, its per-problem
    records.jsonl (responses, extracted answers, correctness) and summary.json are written there; with
    writer, one evals.jsonl line (`eval_record`: the scalars plus per-problem accuracies, for the report's
    standard errors). The sampling seed is the step (settings.seed = -1), so runs evaluated at the same steps
    share their random numbers (paired comparisons across runs), or settings.seed at every evaluation (paired
    across steps as well)."""
    task = settings.task
    sampling = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                              top_p=settings.top_p)
    result = evaluate(model, tokenizer, task, k=settings.k, sampling=sampling, batch_size=settings.batch_size,
                      seed=step if settings.seed < 0 else settings.seed, progress=False)
    if out_dir is not None:
        result.write(out_dir)
    record = {**eval_record(result.records, step, settings.k), "eval_sampling/temperature": settings.temperature,
              "eval_sampling/top_p": settings.top_p}
    if writer is not None:
        writer.write_eval(record)
    return {k: v for k, v in record.items() if k.startswith("eval/")}


def eval_record(records: list[dict[str, Any]], step: int, k: int) -> dict[str, Any]:
    """An evals.jsonl line from an evaluation's per-problem records (each with a list `correct` of k bools and
    `majority_correct`): eval/avg, eval/maj, eval/pass (avg@k, maj@k, pass@k over problems), eval/avg_se and
    eval/maj_se (standard errors over problems: std of the per-problem values (ddof 1) / sqrt(P)),
    eval/n_problems, eval/k, and the per-problem values problem/avg (share of the k samples correct) and
    problem/maj (0/1), in the task's problem order (the same at every step)."""
    if not records:
        raise ValueError(f"eval_record: the evaluation at step {step} has no problems")
    acc = np.array([np.mean(r["correct"]) for r in records], np.float64)
    maj = np.array([float(r["majority_correct"]) for r in records], np.float64)
    anyc = np.array([float(any(r["correct"])) for r in records], np.float64)
    se = lambda x: float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")  # noqa: E731
    return {"step": step, "eval/avg": float(acc.mean()), "eval/maj": float(maj.mean()), "eval/pass": float(anyc.mean()),
            "eval/avg_se": se(acc), "eval/maj_se": se(maj), "eval/n_problems": len(records), "eval/k": k,
            "problem/avg": [round(float(a), 6) for a in acc], "problem/maj": [int(m) for m in maj]}
