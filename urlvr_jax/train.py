"""The URLVR training loop around the RL step (`rl/step.py`).

Per step: next prompt batch (grain, per-host shard) → the step's four phases (rollout, scoring, reward,
update; one jitted function each with `train.phase_timing`, else one fused program) → host-side
grading of this step's rollout (GT correctness, URLVR metrics, Model Collapse Step) in a background
thread while the device runs the next step → JSONL + TensorBoard + progress bar → Orbax checkpoint
every `train.checkpoint_every` steps (async, keep-N, atomic). When the data iterator finishes an epoch:
an `epochs.jsonl` line with the epoch's mean training metrics, the closed-form π* diagnostics on a
fixed probe batch (policy and frozen reference scored on fresh samples) and, with
`train.eval_at_epoch_end`, an evaluation; a fresh run also writes the probe of the base model first
(epoch -1, step 0: the π* ceiling predicted at the start).

Per-step times in metrics.jsonl (seconds): time/rollout, time/scoring (absent when no scoring pass
runs), time/reward, time/update (their sum: time/step), time/grading (host grading, overlapped with the
next step), time/grading_wait (the part the loop waited for), time/idle (device idle before this step's
rollout: data, transfers, logging, checkpoints, epoch work and evaluation), time/data; plus
throughput/tokens_per_s (response tokens / time/step) and throughput/rollout_tokens_per_s.

What one step compiles to: with `train.phase_timing` (default) 3 or 4 jitted functions dispatched in
order — rollout, scoring (only when the old-policy pass or the reference runs: not for majority vote
without KL), reward, update — each followed by a wait for the device (3–4 host syncs), then one
device-to-host fetch of the step's outputs for grading and logging; the host sends the prompt ids,
mask and gold hashes (3 transfers) and derives the PRNG key on the devices (one eager fold_in, no
fetch). Without it: 1 jitted program, 1 wait, 1 fetch. A checkpoint step adds a jitted device copy of
the state; an epoch end the probe (1 jitted program, 1 fetch) and the optional evaluation.

Labels never enter the training signal of an unsupervised run: gold answers are used only for the
metrics here and for evaluation.

Resume: rerunning the same command with the same workdir restores parameters, optimizer state, the
step, the data iterator and the collapse tracker from the newest checkpoint, truncates metrics.jsonl
and epochs.jsonl to that step, and continues; each step's PRNG key is fold_in(seed, step), so the
resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from urlvr_jax.config import batch_shards, micro_batch_groups_for, validate
from urlvr_jax.diagnostics.collapse import ModelCollapseTracker
from urlvr_jax.diagnostics.metrics import step_metrics
from urlvr_jax.diagnostics.optimal_policy import optimal_policy_diagnostics
from urlvr_jax.rewards.answers import AnswerExtractor, answer_hash
from urlvr_jax.rewards.grading import extract_boxed, grade_batch
from urlvr_jax.rl.step import StepConfig, StepOutput, make_probe, make_step
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.sharding import make_mesh, replicate, shard_batch, to_host
from urlvr_jax.tokenizer import decode_responses, eos_ids_of, pad_id_of

BINARY_REWARDS = ("majority_vote", "ground_truth")


class TrainingStopped(RuntimeError):
    """Training cannot continue (e.g. repeated non-finite updates); the last good checkpoint is intact."""


# --------------------------------------------------------------------------------------------- setup
def initialize_distributed(config) -> None:
    """jax.distributed from config.train.{coordinator_address,num_processes,process_id} or the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); on TPU pods / SLURM all may be empty."""
    addr = config.train.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    nproc = config.train.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0)) or None
    pid = config.train.process_id if config.train.process_id >= 0 else (
        int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
    jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)


def build_models(config, mesh):
    """(policy, reference or None, tokenizer)."""
    from urlvr_jax.main import resolve_model_path
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.tokenizer import load_tokenizer

    dtype, param_dtype = getattr(jnp, config.model.dtype), getattr(jnp, config.model.param_dtype)
    path = resolve_model_path(config.model.path)
    policy = load_model(path, mesh=mesh, dtype=dtype, param_dtype=param_dtype, remat=config.model.remat,
                        attention=config.model.get("attention", "auto"))
    tokenizer = load_tokenizer(resolve_model_path(config.model.tokenizer) if config.model.tokenizer else path)
    reference = None
    if needs_reference(config):
        ref_path = path if config.model.reference == "same" else resolve_model_path(config.model.reference)
        reference = load_model(ref_path, mesh=mesh, dtype=dtype, param_dtype=param_dtype,
                               attention=config.model.get("attention", "auto"))
    return policy, reference, tokenizer


def needs_reference(config) -> bool:
    """Whether the frozen reference model is loaded (KL, or the π* diagnostics)."""
    return (bool(config.rl.kl_coef) or bool(config.train.get("pistar_diagnostics", True))
            or bool(config.train.get("kl_metrics", False)))


def reference_every_step(config) -> bool:
    """Whether each step scores with the reference (KL and train.kl_metrics need it; π* needs it only at
    epoch ends by default)."""
    per_step_pistar = config.train.get("pistar_diagnostics", True) and config.train.get("pistar_every_step", False)
    return bool(config.rl.kl_coef) or bool(config.train.get("kl_metrics", False)) or bool(per_step_pistar)


def load_problems(config):
    """Training problems and the prompt builder for them."""
    name = config.data.dataset
    if name.startswith("synthetic/"):
        from urlvr_jax.data import synthetic

        family = name.split("/", 1)[1]
        make = {"arithmetic": synthetic.make_arithmetic_dataset, "countdown": synthetic.make_countdown_dataset}
        if family not in make:
            raise ValueError(f"config.data.dataset={name!r}: unknown synthetic family; choose "
                             f"synthetic/arithmetic or synthetic/countdown")
        recipe_dir = _recipe_dir(config)
        if recipe_dir is not None:  # a synthetic base model: train on the task distribution it was made for
            from urlvr_jax.sft import problems_for_model

            problems = problems_for_model(recipe_dir, config.data.synthetic_size, config.data.synthetic_seed,
                                          split=config.data.split)
        else:
            problems = make[family](config.data.synthetic_size, config.data.synthetic_seed, split=config.data.split)
        if config.data.limit:
            problems = problems[: config.data.limit]
        return problems, lambda p, tok: synthetic.synthetic_prompt(p)
    from urlvr_jax.data import build_prompt, load_math_dataset

    problems = load_math_dataset(name, split=config.data.split, limit=config.data.limit or None)
    return problems, lambda p, tok: build_prompt(p.problem, config.data.template, tok)


def _recipe_dir(config) -> str | None:
    from urlvr_jax.main import resolve_model_path

    path = resolve_model_path(config.model.path)
    return path if os.path.exists(os.path.join(path, "base_model_recipe.json")) else None


def make_optimizer(config) -> optax.GradientTransformation:
    lr = config.rl.learning_rate
    if config.rl.lr_schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(config.rl.warmup_steps, 1), config.train.steps)
    elif config.rl.warmup_steps:
        schedule = optax.linear_schedule(0.0, lr, config.rl.warmup_steps)
    else:
        schedule = lr
    return optax.chain(optax.clip_by_global_norm(config.rl.grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=config.rl.weight_decay))


def init_opt_state(tx, params, mesh):
    """Optimizer state placed explicitly: moments sharded like their parameters, scalars replicated.

    (Left to jit, moments of replicated parameters can land on one device; the placement must also be
    the same for a fresh and a restored run.)
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree.map(lambda x: x.sharding, params)
    return optax.tree_utils.tree_map_params(
        tx, lambda x, s: jax.device_put(x, s), jax.jit(tx.init)(params), shardings,
        transform_non_params=lambda x: jax.device_put(x, replicated))


def step_config(config, tokenizer, model_cfg) -> StepConfig:
    s = config.sampling
    return StepConfig(
        num_samples=config.rl.num_samples,
        sampling=SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                top_k=s.top_k, engine=s.engine, max_inflight=s.max_inflight,
                                decode_block=s.decode_block, prefill_chunk=s.prefill_chunk),
        reward=config.rl.reward, n_votes=config.rl.n_votes or None, n_train=config.rl.n_train or None,
        advantage=config.rl.advantage, clip_low=config.rl.clip_low, clip_high=config.rl.clip_high,
        dual_clip=config.rl.dual_clip or None, aggregation=config.rl.aggregation, kl_coef=config.rl.kl_coef,
        kl_estimator=config.rl.kl_estimator, kl_in_reward=config.rl.kl_in_reward,
        entropy_coef=config.rl.entropy_coef, mini_batches=config.rl.mini_batches,
        micro_batch_groups=micro_batch_groups_for(config, batch_shards(config, jax.device_count())),
        mask_truncated=config.rl.mask_truncated,
        use_reference=reference_every_step(config), eos_ids=tuple(eos_ids_of(tokenizer, model_cfg)),
        pad_id=pad_id_of(tokenizer),
        dynamic_sampling_groups=config.data.prompt_batch_size if config.rl.dynamic_sampling else 0)


def pool_size(config) -> int:
    """Prompts sampled per step: the batch, or the oversampled pool under dynamic sampling."""
    if config.rl.dynamic_sampling:
        return int(round(config.rl.oversample * config.data.prompt_batch_size))
    return config.data.prompt_batch_size


def encode_fixed(tokenizer, texts, width: int):
    """Left-padded ids/mask of exactly `width` columns (one compiled shape); too long is an error."""
    ids = np.full((len(texts), width), pad_id_of(tokenizer), np.int32)
    mask = np.zeros((len(texts), width), np.int32)
    for i, t in enumerate(texts):
        x = tokenizer(t)["input_ids"]
        if len(x) > width:
            raise ValueError(f"a prompt has {len(x)} tokens > config.data.max_prompt_length={width}: raise it")
        ids[i, width - len(x):], mask[i, width - len(x):] = x, 1
    return ids, mask


# --------------------------------------------------------------------------------------------- logging
class MetricsWriter:
    """metrics.jsonl (one object per step), epochs.jsonl (one per finished epoch) + TensorBoard; only
    process 0 writes."""

    def __init__(self, workdir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.epochs_path = workdir / "epochs.jsonl"
        self.tb = None
        if not self.enabled:
            return
        for path in (self.path, self.epochs_path):
            if path.exists():  # keep only what the restored checkpoint covers
                lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
                kept = [ln for ln in lines if json.loads(ln)["step"] <= resume_step]
                path.write_text("".join(ln + "\n" for ln in kept))
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # pragma: no cover - a declared dependency
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        self._write(self.path, record, "")

    def write_epoch(self, record: dict[str, Any]) -> None:
        self._write(self.epochs_path, record, "epoch/")

    def _write(self, path: Path, record: dict[str, Any], tb_prefix: str) -> None:
        if not self.enabled:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and np.isfinite(v):
                    self.tb.add_scalar(tb_prefix + k, v, record["step"])

    def epoch_means(self, epoch: int) -> dict[str, float]:
        """Means over the steps of `epoch` of every numeric per-step metric (timings and counters aside)."""
        if not self.enabled or not self.path.exists():
            return {}
        rows = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if r.get("epoch") == epoch]
        keys = [k for k in (rows[0] if rows else {}) if not k.startswith(("time/", "throughput/", "mcs/"))
                and k not in ("step", "epoch") and isinstance(rows[0][k], (int, float))]
        out: dict[str, float] = {"steps": len(rows)}
        for k in keys:
            vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            finite = [v for v in vals if np.isfinite(v)]
            if finite:
                out[f"mean/{k}"] = float(np.mean(finite))
        return out

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None


# --------------------------------------------------------------------------------------------- monitoring
def monitor(out, problems, gold_ids, tokenizer, config, gt_by_hash: bool,
            reference_length: float | None = None) -> dict[str, float]:
    """Host-side metrics of one step's rollout (GT correctness is for monitoring only); reference_length:
    the base model's mean response length (step 1's rollout), for collapse/length_ratio."""
    P = len(problems)
    N, n = config.rl.num_samples, (config.rl.n_train or config.rl.num_samples)
    tokens, mask, answer_ids, rewards, maj_ratio, maj_id, entropy, truncated, old_lp, ref_lp = (
        out.rollout.tokens, out.rollout.mask, out.answer_ids, out.rewards, out.majority_ratio, out.majority_id,
        out.rollout.stats.entropy, out.rollout.truncated, out.old_logprob, out.ref_logprob)
    T = tokens.shape[-1]
    if gt_by_hash:
        correct = (answer_ids == np.asarray(gold_ids)[:, None]) & (answer_ids >= 0)
    elif problems and problems[0].source.startswith("synthetic/"):
        from urlvr_jax.data.synthetic import check_answer

        texts = decode_responses(tokenizer, tokens, mask)
        correct = np.array([check_answer(p, texts[i * N + j]) for i, p in enumerate(problems) for j in range(N)],
                           bool).reshape(P, N)
    else:
        texts = decode_responses(tokenizer, tokens, mask)
        answers = [extract_boxed(t) for t in texts]
        correct = np.array(grade_batch(answers, [p.answer for p in problems for _ in range(N)]), bool).reshape(P, N)
    binary = config.rl.reward in BINARY_REWARDS
    label_correct = None
    if config.rl.reward == "majority_vote":
        # the majority (pseudo) label is correct iff a response carrying it is correct
        carries = (answer_ids == maj_id[:, None]) & (maj_id[:, None] >= 0)
        label_correct = np.any(carries & correct, axis=1)
    m = mask.reshape(P, N, T)[:, :n]
    metrics = step_metrics(rewards, correct[:, :n].astype(np.float32), m, binary_proxy=binary,
                           label_correct=label_correct, majority_ratio=maj_ratio if binary else None,
                           entropy=entropy.reshape(P, N, T)[:, :n], tokens=tokens.reshape(P, N, T)[:, :n],
                           truncated=truncated.reshape(P, N)[:, :n], eos_id=(eos_ids_of(tokenizer) or [None])[0],
                           reference_length=reference_length)
    metrics["urlvr/pass_at_n"] = float(np.mean(np.any(correct, axis=1)))
    if ref_lp is not None:
        # KL of the rollout policy to the frozen reference on the sampled tokens: verl's k3 per token
        # (exp(d) - d - 1, d = log π_ref - log π_old) and the k1 sum per response
        d = np.where(mask > 0, np.asarray(ref_lp, np.float64) - np.asarray(old_lp, np.float64), 0.0)
        metrics["kl_to_ref/k3_token_mean"] = float((np.expm1(d) - d).sum() / max(mask.sum(), 1))
        metrics["kl_to_ref/k1_seq_mean"] = float((-d).sum(-1).mean())
        seq = lambda lp: (lp * mask).sum(-1).reshape(P, N)[:, :n]  # noqa: E731
        metrics.update(optimal_policy_diagnostics(rewards, correct[:, :n], seq(ref_lp), config.rl.beta,
                                                  policy_logprob=seq(old_lp)))
    return {k: float(v) for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------- loop
def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) a URLVR experiment; returns the final summary (also written to summary.json)."""
    validate(config)
    if config.train.multihost:
        initialize_distributed(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor})
    policy, reference, tokenizer = build_models(config, mesh)
    rules = policy.rules
    problems, prompt_fn = load_problems(config)
    from urlvr_jax.data.pipeline import PromptLoader

    # Every process iterates the same global prompt order (prompts are small) and puts only its own rows
    # on its devices (shard_batch), so a multi-host run sees exactly the batches of a single-host run.
    loader = PromptLoader(problems, batch_size=pool_size(config), seed=config.train.seed,
                          shard_index=0, shard_count=1)
    extractor = jax.tree.map(lambda x: replicate(x, mesh), AnswerExtractor.from_tokenizer(tokenizer))
    tx = make_optimizer(config)
    graphdef, params = nnx.split(policy)
    ref_graphdef, ref_params = nnx.split(reference) if reference is not None else (graphdef, None)
    opt_state = init_opt_state(tx, params, mesh)
    check_memory(config, policy.cfg)
    step_cfg = step_config(config, tokenizer, policy.cfg)
    step_fn = make_step(graphdef, ref_graphdef, tx, step_cfg, extractor, phased=config.train.phase_timing)
    gt_by_hash = config.data.dataset == "synthetic/arithmetic"  # integer answers: exact text equality
    epoch_probe = EpochProbe(config, problems, prompt_fn, tokenizer, graphdef, ref_graphdef, step_cfg, mesh, rules,
                             gt_by_hash) if config.train.pistar_diagnostics else None

    ckpt = Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    tracker = ModelCollapseTracker(config.train.mcs_threshold, config.train.mcs_window,
                                   stop_on="sustained" if config.train.stop_at_collapse else None)
    start = 0
    reference_length = None  # the base model's mean response length (set at step 1, kept in checkpoints)
    restored = ckpt.restore_latest(params, opt_state)
    if restored is not None:
        params, opt_state, meta = restored
        start = meta["step"]
        loader.set_state(meta["loader"])
        tracker = ModelCollapseTracker.from_state_dict(meta["tracker"])
        reference_length = meta.get("reference_length")
        print(f"resumed from {workdir}/checkpoints at step {start}", file=sys.stderr)
    writer = MetricsWriter(workdir, start)
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda s, f: stop.__setitem__("signal", s))
    base_key = replicate(jax.random.key(config.train.seed), mesh)
    pool = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    pending_eval: dict[str, float] = {}  # evaluation results ride on the next metrics record
    consecutive_skips = 0
    bar = _bar(config, start)
    summary: dict[str, Any] = {}

    def collect():
        """Wait for the pending grading record and write it, with the time the loop waited for it."""
        nonlocal pending
        if pending is None:
            return
        t0 = time.perf_counter()
        record, times = pending.result()
        pending = None
        times["time/grading_wait"] = time.perf_counter() - t0
        _emit(_with((record, times), pending_eval), writer, tracker, bar)

    device_free_since = time.perf_counter()  # when the device finished its last piece of training work
    try:
        if start == 0 and epoch_probe is not None:  # the π* ceiling predicted for the base model
            writer.write_epoch(end_of_epoch(config, -1, 0, writer, epoch_probe, params, ref_params, graphdef,
                                            tokenizer, extractor, evaluate=False))
        for step in range(start + 1, config.train.steps + 1):
            t0 = time.perf_counter()
            epoch = loader.epoch  # of the batch's first record
            batch = next(loader)
            texts = [prompt_fn(p, tokenizer) for p in batch]
            ids, mask = encode_fixed(tokenizer, texts, config.data.max_prompt_length)
            gold = np.array([answer_hash(p.answer) for p in batch], np.int32)
            times = {"time/data": time.perf_counter() - t0}
            # the key is derived on the devices from the replicated base key: no device-to-host fetch
            inputs = (shard_batch(ids, rules), shard_batch(mask, rules), replicate(gold, mesh),
                      jax.random.fold_in(base_key, step), extractor)
            t_start = time.perf_counter()
            times["time/idle"] = t_start - device_free_since
            params, opt_state, out = step_fn(params, opt_state, ref_params, *inputs)
            if config.train.phase_timing:  # ran phase by phase, synchronously
                device_free_since = time.perf_counter()
                times.update({f"time/{k}": v for k, v in step_fn.last_times.items()})
                times["time/step"] = sum(step_fn.last_times.values())
                collect()  # the previous step's grading ran in the background during this step
            else:  # one fused program, dispatched asynchronously: write the previous record meanwhile
                collect()
                out = jax.block_until_ready(out)
                device_free_since = time.perf_counter()
                times["time/step"] = device_free_since - t_start
            out = to_host(out)  # (a collective on multi-host runs: keep it on the main thread)
            device_metrics = {k: float(v) for k, v in out.metrics.items()}
            if reference_length is None:  # length collapse is measured against the base model's first rollout
                lengths = np.asarray(out.rollout.lengths).reshape(len(batch), config.rl.num_samples)
                reference_length = max(float(lengths[:, : config.rl.n_train or config.rl.num_samples].mean()), 1.0)
            consecutive_skips = consecutive_skips + 1 if device_metrics["skipped_updates"] else 0
            pending = pool.submit(_monitor_record, step, out, batch, gold, tokenizer, config, gt_by_hash,
                                  device_metrics, times, epoch, reference_length)
            if config.train.eval_every and step % config.train.eval_every == 0:
                t_eval = time.perf_counter()
                pending_eval.update(run_eval(config, nnx.merge(graphdef, params), tokenizer, step,
                                             workdir / "eval" / f"step_{step:06d}"))
                pending_eval["time/eval"] = time.perf_counter() - t_eval
            if consecutive_skips >= config.train.max_consecutive_skips:
                raise TrainingStopped(
                    f"{consecutive_skips} consecutive steps had a non-finite loss or gradient (last: step {step}); "
                    "stopping with the last good checkpoint intact. Lower rl.learning_rate or use float32.")
            if loader.epoch > epoch:  # this batch finished epoch `epoch`
                collect()
                epoch_record = end_of_epoch(config, epoch, step, writer, epoch_probe, params, ref_params,
                                            graphdef, tokenizer, extractor)
                writer.write_epoch(epoch_record)
            if step % config.train.checkpoint_every == 0 or step == config.train.steps or stop["signal"]:
                collect()
                ckpt.save(step, params, opt_state, {"step": step, "loader": loader.get_state(),
                                                    "tracker": tracker.state_dict(),
                                                    "reference_length": reference_length})
            if stop["signal"] or tracker.should_stop:
                break
        collect()
        summary = {"last_step": step, "stopped_by": "SIGTERM" if stop["signal"] else
                   ("collapse" if tracker.should_stop else "steps"), "mcs": tracker.summary()}
        if jax.process_index() == 0:
            (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            writer.close()
            from urlvr_jax.report import make_report

            summary["report"] = make_report(workdir, {"mcs": tracker.summary(), "stopped_by": summary["stopped_by"]})
        if jax.process_count() > 1:
            # the other processes wait here while process 0 writes the report, rather than in
            # jax.distributed's shutdown barrier, which has a deadline
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("urlvr-train-finished")
    finally:
        ckpt.wait()
        bar.close()
        writer.close()
        pool.shutdown(wait=False)
        signal.signal(signal.SIGTERM, previous)
    return summary


class EpochProbe:
    """The closed-form π* diagnostics between epochs (diagnostics/optimal_policy.py): sample N responses
    for a fixed probe batch (the first train.probe_prompts training problems, default data.prompt_batch_size) with the current policy,
    score them with the policy and the frozen reference, reward them with the training reward, and
    estimate π*'s accuracy ceiling, entropy and KLs by self-normalised importance sampling. GT answers
    enter only the diagnostics. One jitted program, compiled at the first epoch end."""

    def __init__(self, config, problems, prompt_fn, tokenizer, graphdef, ref_graphdef, step_cfg, mesh, rules,
                 gt_by_hash):
        import dataclasses

        self.config, self.tokenizer, self.mesh, self.gt_by_hash = config, tokenizer, mesh, gt_by_hash
        self.batch = list(problems[: config.train.probe_prompts or config.data.prompt_batch_size])
        ids, mask = encode_fixed(tokenizer, [prompt_fn(p, tokenizer) for p in self.batch],
                                 config.data.max_prompt_length)
        self.ids, self.mask = shard_batch(ids, rules), shard_batch(mask, rules)
        self.gold = np.array([answer_hash(p.answer) for p in self.batch], np.int32)
        cfg = dataclasses.replace(step_cfg, use_reference=True, skip_redundant_old_pass=False, dynamic_sampling_groups=0)
        self.fn = make_probe(graphdef, ref_graphdef, cfg)
        self.key = jax.random.key(config.train.seed + 0x5EED)

    def __call__(self, epoch: int, params, ref_params, extractor) -> dict[str, float]:
        out = self.fn(params, ref_params, self.ids, self.mask, replicate(self.gold, self.mesh),
                      replicate(jax.random.fold_in(self.key, epoch & 0xFFFFFFFF), self.mesh), extractor)  # -1: the base model
        out = to_host(out)
        metrics = monitor(out, self.batch, self.gold, self.tokenizer, self.config, self.gt_by_hash)
        # π* and the probe's own accuracy / reward, under a probe/ prefix where not already pistar/
        return {(k if k.startswith("pistar/") else f"probe/{k}"): v for k, v in metrics.items()}


def end_of_epoch(config, epoch: int, step: int, writer: MetricsWriter, probe: EpochProbe | None, params, ref_params,
                 graphdef, tokenizer, extractor, evaluate: bool = True) -> dict[str, Any]:
    """The epochs.jsonl line of a finished epoch; epoch -1 (step 0) is the base model before training.
    Every process runs the probe and the evaluation (collectives on multi-host runs); process 0 writes."""
    record: dict[str, Any] = {"epoch": epoch, "step": step}
    if epoch >= 0:
        record.update(writer.epoch_means(epoch))
    if probe is not None:
        t0 = time.perf_counter()
        record.update(probe(epoch, params, ref_params, extractor))
        record["time/pistar_probe"] = time.perf_counter() - t0
    if config.train.eval_at_epoch_end and evaluate:
        t0 = time.perf_counter()
        record.update(run_eval(config, nnx.merge(graphdef, params), tokenizer, step,
                               writer.path.parent / "eval" / f"epoch_{epoch}_step_{step:06d}"))
        record["time/eval"] = time.perf_counter() - t0
    return record


def _with(record_and_times: tuple[dict, dict], extra: dict) -> tuple[dict, dict]:
    """Attach (and consume) pending evaluation metrics to a (record, times) pair."""
    record, times = record_and_times
    if extra:
        record = {**record, **extra}
        extra.clear()
    return record, times


def run_eval(config, model, tokenizer, step: int, out_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Periodic evaluation (avg@k, pass@k, maj@k) through the evaluation API; with out_dir, its per-problem
    records.jsonl (responses, extracted answers, correctness) and summary.json are written there."""
    from urlvr_jax.evaluate import EVAL_SAMPLING, evaluate

    name = config.train.eval_dataset or config.data.dataset
    template = config.data.template
    recipe_dir = _recipe_dir(config)
    if name.startswith("synthetic/") and recipe_dir is not None:
        from urlvr_jax.sft import problems_for_model

        name, template = problems_for_model(recipe_dir, config.train.eval_limit, 20260308, split="eval"), "synthetic"
    sampling = SamplingConfig(max_new_tokens=config.sampling.max_new_tokens, temperature=EVAL_SAMPLING.temperature,
                              top_p=EVAL_SAMPLING.top_p)
    result = evaluate(model, tokenizer, name, k=config.train.eval_k, sampling=sampling, limit=config.train.eval_limit,
                      template=template, split="eval" if str(name).startswith("synthetic/") else "test",
                      batch_size=min(config.data.prompt_batch_size, config.train.eval_limit), seed=step, progress=False)
    if out_dir is not None:
        result.write(out_dir)
    k = config.train.eval_k
    return {"eval/avg": result.summary[f"avg@{k}"], "eval/maj": result.summary[f"maj@{k}"],
            "eval/pass": result.summary[f"pass@{k}"]}


def check_memory(config, model_cfg) -> None:
    """Refuse, before compiling, a configuration whose per-device estimate exceeds the device memory."""
    from urlvr_jax.dry_run import check_fits, estimate_memory

    limit = config.train.device_memory_gb
    if not limit:
        # a local device: on a multi-process run jax.devices()[0] belongs to process 0, and asking another
        # process's device raises on every process but 0 (which then waits for it in the next barrier)
        stats = jax.local_devices()[0].memory_stats() or {}
        limit = stats.get("bytes_limit", 0) / 1024 ** 3
    if limit:
        est = check_fits(config, model_cfg, jax.device_count(), limit)
    else:
        est = estimate_memory(config, model_cfg, jax.device_count())
    if jax.process_index() == 0:
        print(f"estimated memory per device: {est['memory_gb/total']:.2f} GiB"
              + (f" of {limit:.1f} GiB" if limit else " (device limit unknown: not checked)"), file=sys.stderr)


def _monitor_record(step, out, batch, gold, tokenizer, config, gt_by_hash, device_metrics, times, epoch,
                    reference_length=None):
    """(This step's metrics record, its times) — runs in the grading thread."""
    t0 = time.perf_counter()
    metrics = monitor(out, batch, gold, tokenizer, config, gt_by_hash, reference_length)
    n_tokens = float(np.asarray(out.rollout.mask).sum())
    times["time/grading"] = time.perf_counter() - t0
    record = {"step": step, "epoch": epoch, **device_metrics, **metrics,
              "throughput/tokens_per_s": n_tokens / max(times["time/step"], 1e-9)}
    if "time/rollout" in times:
        record["throughput/rollout_tokens_per_s"] = n_tokens / max(times["time/rollout"], 1e-9)
    return record, times


def _emit(record_and_times, writer: MetricsWriter, tracker: ModelCollapseTracker, bar) -> None:
    record, times = record_and_times
    record = {**record, **times}
    if "urlvr/reward_accuracy" in record:
        tracker.update(record["step"], record["urlvr/reward_accuracy"])
    s = tracker.summary()
    record["mcs/raw"] = -1 if s.get("mcs_raw") is None else s["mcs_raw"]
    record["mcs/sustained"] = -1 if s.get("mcs_sustained") is None else s["mcs_sustained"]
    writer.write(record)
    bar.update(1)
    shown = {"gt_acc": "urlvr/gt_reward_mean", "proxy": "urlvr/proxy_reward_mean", "reward_acc": "urlvr/reward_accuracy"}
    postfix = {name: f"{record[k]:.2f}" for name, k in shown.items() if k in record}
    postfix["mcs"] = "-" if record["mcs/raw"] == -1 else record["mcs/raw"]
    bar.set_postfix(postfix)


def _bar(config, start):
    from tqdm.auto import tqdm

    return tqdm(total=config.train.steps, initial=start, desc="urlvr", unit="step",
                disable=not config.train.progress or jax.process_index() != 0)


_device_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class Checkpointer:
    """Orbax CheckpointManager: async saves, keep-N, atomic (a step dir appears only when complete)."""

    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.mgr = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
        )

    def save(self, step, params, opt_state, meta) -> None:
        """Start an async save. The arrays are first copied on device: the next step donates (overwrites)
        the live parameter buffers while the background write may still be reading them."""
        ocp = self.ocp
        state = _device_copy({"params": params, "opt_state": opt_state})
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore_latest(self, params, opt_state):
        ocp = self.ocp
        step = self.mgr.latest_step()
        if step is None:
            return None
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              {"params": params, "opt_state": opt_state})
        got = self.mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                             meta=ocp.args.JsonRestore()))
        # place every leaf exactly as the live state is placed (orbax may put scalars on one device)
        state = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), got["state"], target)
        return state["params"], state["opt_state"], got["meta"]

    def wait(self):
        self.mgr.wait_until_finished()
