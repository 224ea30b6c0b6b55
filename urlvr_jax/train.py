"""The URLVR training loop around the RL step (`rl/step.py`).

Per step: next prompt batch (grain, per-host shard) → the step's phases (rollout, scoring, reward,
update; one jitted function each with `train.phase_timing`, else one fused program; for an external
reward — countdown, arithmetic, self_verification — the host reward runs between rollout and reward,
rewards/host.py) → host-side grading of this step's rollout (GT correctness, URLVR metrics, Model
Collapse Step; monitor.py) in a background thread while the device runs the next step → JSONL +
TensorBoard + progress bar (metrics_io.py) → Orbax checkpoint every `train.checkpoint_every` steps
(async, keep-N, atomic; checkpoint.py). When the data iterator finishes an epoch:
an `epochs.jsonl` line with the epoch's mean training metrics, the closed-form π* diagnostics on a
fixed probe batch (policy and frozen reference scored on fresh samples) and, with
`train.eval_at_epoch_end`, an evaluation; a fresh run also writes the probe of the base model first
(epoch -1, step 0: the π* ceiling predicted at the start).

Held-out evaluation every `train.eval_every` steps, and at step 0 of a fresh run: avg@k / maj@k / pass@k with
standard errors and per-problem accuracies in `evals.jsonl` (the report's headline numbers come from it), the
scalars also on that step's metrics.jsonl line (not step 0's: there is none), per-problem responses under
eval/step_NNNNNN/. With `train.kl_metrics` (or a KL coefficient) the frozen reference scores every rollout
and each line carries kl_to_ref/k1_token_mean and kl_to_ref/k3_token_mean: KL(π_old ‖ π_ref) per response
token, from the sampled tokens (monitor.py).

Per-step times in metrics.jsonl (seconds): time/rollout, time/scoring (absent when no scoring pass
runs), time/host_reward (external rewards: fetch, decode, check or judge; the scoring pass runs on the
device meanwhile, and time/scoring is then only the wait that remains), time/reward, time/update (their
sum: time/step), time/grading (host grading, overlapped with the
next step), time/grading_wait (the part the loop waited for), time/idle (device idle before this step's
rollout: data, transfers, logging, checkpoints, epoch work and evaluation), time/data; plus
throughput/tokens_per_s (response tokens / time/step) and throughput/rollout_tokens_per_s.

What one step compiles to: with `train.phase_timing` (default) 3 or 4 jitted functions dispatched in
order — rollout, scoring (only when the old-policy pass or the reference runs: not for majority vote
without KL), reward, update — each followed by a wait for the device (3–4 host syncs), then one
device-to-host fetch of the step's outputs for grading and logging; the host sends the prompt ids,
mask and gold hashes (3 transfers) and derives the PRNG key on the devices (one eager fold_in, no
fetch). Without it: 1 jitted program, 1 wait, 1 fetch. An external reward adds one fetch of the rollout's
tokens and one transfer of the rewards, and splits the fused program in three (rollout | scoring, run during
the host reward | reward + update); self-verification adds one generate call. A checkpoint step adds a jitted
device copy of the state; an epoch end the probe (1 jitted program, 1 fetch) and the optional evaluation.

Labels never enter the training signal of an unsupervised run: gold answers are used only for the
metrics here and for evaluation.

Resume: rerunning the same command with the same workdir restores parameters, optimizer state, the
step, the data iterator and the collapse tracker from the newest checkpoint, truncates metrics.jsonl,
epochs.jsonl and rollouts.jsonl to that step, and continues; each step's PRNG key is fold_in(seed, step), so the
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
from jax.experimental import multihost_utils

from urlvr_jax.checkpoint import Checkpointer
from urlvr_jax.config import batch_shards, micro_batch_groups_for, validate
from urlvr_jax.data.pipeline import PromptLoader
from urlvr_jax.data.tasks import Task, evaluation_task, training_task
from urlvr_jax.diagnostics.collapse import ModelCollapseTracker
from urlvr_jax.dry_run import check_fits, estimate_memory
from urlvr_jax.metrics_io import MetricsWriter, emit, progress_bar
from urlvr_jax.models.paths import resolve_model_path
from urlvr_jax.models.weights import load_model
from urlvr_jax.monitor import EpochProbe, EvalSettings, MonitorSettings, end_of_epoch, monitor_record, run_eval
from urlvr_jax.report import make_report
from urlvr_jax.rewards.answers import AnswerExtractor
from urlvr_jax.rewards.external import parse_exact_number
from urlvr_jax.rewards.host import HostRewarder, verify_settings
from urlvr_jax.rewards.registry import EXTERNAL
from urlvr_jax.rl.step import StepConfig, make_step
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.sharding import make_mesh, replicate, shard_batch, to_host
from urlvr_jax.tokenizer import encode_prompts, eos_ids_of, load_tokenizer, pad_id_of

BINARY_REWARDS = ("majority_vote", "ground_truth", "random", "countdown", "arithmetic")  # 0/1 proxy rewards


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
    return bool(config.rl.kl_coef) or config.train.pistar_diagnostics or config.train.kl_metrics


def reference_every_step(config) -> bool:
    """Whether each step scores with the reference (KL and train.kl_metrics need it; π* needs it only at
    epoch ends by default)."""
    per_step_pistar = config.train.pistar_diagnostics and config.train.pistar_every_step
    return bool(config.rl.kl_coef) or config.train.kl_metrics or per_step_pistar


def load_task(config) -> Task:
    """The training task (a synthetic base model's own task distribution when its folder has a recipe),
    checked against what the reward needs."""
    task = training_task(config.data, resolve_model_path(config.model.path))
    check_reward_data(config.rl.reward, task)
    return task


def check_reward_data(reward: str, task: Task) -> None:
    """Refuse data an external checker cannot score: Countdown needs numbers and target on each record,
    the arithmetic checker an exact-number gold answer."""
    for i, p in enumerate(task.problems):
        if reward == "countdown" and not (isinstance(p.extra, dict) and "numbers" in p.extra and "target" in p.extra):
            raise ValueError(f"config.rl.reward='countdown': problem {i} ({p.id!r}) of {task.name!r} has no "
                             "extra['numbers'] / extra['target']; use data.dataset='synthetic/countdown'")
        if reward == "arithmetic" and parse_exact_number(p.answer) is None:
            raise ValueError(f"config.rl.reward='arithmetic': problem {i} ({p.id!r}) of {task.name!r} has gold "
                             f"answer {p.answer!r}, not an exact number; the arithmetic checker cannot score it")


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


def step_config(config, tokenizer, model_cfg, n_devices: int | None = None) -> StepConfig:
    """The step's static settings; micro-batches are resolved for `n_devices` (default: this run's devices)."""
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
        micro_batch_groups=micro_batch_groups_for(config, batch_shards(config, n_devices or jax.device_count())),
        mask_truncated=config.rl.mask_truncated,
        use_reference=reference_every_step(config), eos_ids=tuple(eos_ids_of(tokenizer, model_cfg)),
        pad_id=pad_id_of(tokenizer),
        dynamic_sampling_groups=config.data.prompt_batch_size if config.rl.dynamic_sampling else 0)


def host_rewarder(config, task: Task, tokenizer, graphdef, model_cfg, initial_params=None) -> HostRewarder | None:
    """The host side of an external reward (None for rewards computed on device). `initial_params`: the
    policy's parameters before training (and before a resume), the judge of verify.judge='initial'; copied
    here, since the step donates the policy's buffers."""
    if config.rl.reward not in EXTERNAL:
        return None
    verify = verify_settings(config)
    frozen = None
    if config.rl.reward == "self_verification" and verify.judge == "initial":
        frozen = jax.tree.map(jnp.copy, initial_params)
    return HostRewarder(config.rl.reward, tokenizer, num_samples=config.rl.num_samples, task=task,
                        graphdef=graphdef, model_cfg=model_cfg, verify=verify, judge_params=frozen)


def monitor_settings(config, rewarder: HostRewarder | None) -> MonitorSettings:
    binary = config.rl.reward in BINARY_REWARDS or (rewarder is not None and rewarder.binary)
    return MonitorSettings(reward=config.rl.reward, num_samples=config.rl.num_samples,
                           n_train=config.rl.n_train or config.rl.num_samples, binary=binary, beta=config.rl.beta)


def eval_settings(config) -> EvalSettings:
    task = evaluation_task(config.train.eval_dataset or config.data.dataset, limit=config.train.eval_limit,
                           template=config.data.template, model_dir=resolve_model_path(config.model.path))
    return EvalSettings(task=task, k=config.train.eval_k, max_new_tokens=config.sampling.max_new_tokens,
                        batch_size=min(config.data.prompt_batch_size, config.train.eval_limit),
                        temperature=config.train.eval_temperature, top_p=config.train.eval_top_p,
                        seed=config.train.get("eval_seed", -1))


def pool_size(config) -> int:
    """Prompts sampled per step: the batch, or the oversampled pool under dynamic sampling."""
    if config.rl.dynamic_sampling:
        return int(round(config.rl.oversample * config.data.prompt_batch_size))
    return config.data.prompt_batch_size


def encode_fixed(tokenizer, texts, width: int):
    """Left-padded ids/mask of exactly `width` (= config.data.max_prompt_length) columns; too long is an error."""
    return encode_prompts(tokenizer, texts, width=width, width_name="config.data.max_prompt_length")


def check_memory(config, model_cfg) -> None:
    """Refuse, before compiling, a configuration whose per-device estimate exceeds the device memory."""
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

    # ---- build
    mesh = make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor})
    policy, reference, tokenizer = build_models(config, mesh)
    rules = policy.rules
    task = load_task(config)
    # Every process iterates the same global prompt order (prompts are small) and puts only its own rows
    # on its devices (shard_batch), so a multi-host run sees exactly the batches of a single-host run.
    loader = PromptLoader(list(task.problems), batch_size=pool_size(config), seed=config.train.seed,
                          shard_index=0, shard_count=1)
    extractor = jax.tree.map(lambda x: replicate(x, mesh), AnswerExtractor.from_tokenizer(tokenizer))
    tx = make_optimizer(config)
    graphdef, params = nnx.split(policy)
    ref_graphdef, ref_params = nnx.split(reference) if reference is not None else (graphdef, None)
    opt_state = init_opt_state(tx, params, mesh)
    check_memory(config, policy.cfg)
    step_cfg = step_config(config, tokenizer, policy.cfg)
    step_fn = make_step(graphdef, ref_graphdef, tx, step_cfg, extractor, phased=config.train.phase_timing)
    rewarder = host_rewarder(config, task, tokenizer, graphdef, policy.cfg, params)
    settings = monitor_settings(config, rewarder)
    evaluation = eval_settings(config) if config.train.eval_every or config.train.eval_at_epoch_end else None
    epoch_probe = EpochProbe(task, config.train.probe_prompts or config.data.prompt_batch_size,
                             config.data.max_prompt_length, tokenizer, graphdef, ref_graphdef, step_cfg, settings,
                             mesh, rules, config.train.seed, rewarder) if config.train.pistar_diagnostics else None
    epoch_eval = evaluation if config.train.eval_at_epoch_end else None

    # ---- restore
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
    rollout_writer = writer if config.train.log_rollouts else None
    stop_signal: list[int] = []  # set by SIGTERM: checkpoint this step and stop
    previous = signal.signal(signal.SIGTERM, lambda s, f: stop_signal.append(s))
    base_key = replicate(jax.random.key(config.train.seed), mesh)
    pool = ThreadPoolExecutor(max_workers=1)  # host grading of step t runs while the device runs step t+1
    pending: Future | None = None
    pending_eval: dict[str, float] = {}  # evaluation results ride on the next metrics record
    consecutive_skips = 0
    bar = progress_bar(config.train.steps, start, config.train.progress)
    summary: dict[str, Any] = {}

    def collect():
        """Wait for the pending grading record and write it (with any pending evaluation and the wait time)."""
        nonlocal pending
        if pending is None:
            return
        t0 = time.perf_counter()
        record, times = pending.result()
        pending = None
        times["time/grading_wait"] = time.perf_counter() - t0
        emit({**record, **pending_eval}, times, writer, tracker, bar)
        pending_eval.clear()

    device_free_since = time.perf_counter()  # when the device finished its last piece of training work
    step = start
    try:
        if start == 0 and epoch_probe is not None:  # the π* ceiling predicted for the base model
            writer.write_epoch(end_of_epoch(-1, 0, writer, epoch_probe, params, ref_params, graphdef, tokenizer,
                                            extractor))
        if start == 0 and config.train.eval_every:  # the base model's held-out accuracy (evals.jsonl only)
            run_eval(evaluation, nnx.merge(graphdef, params), tokenizer, 0, workdir / "eval" / "step_000000", writer)
        for step in range(start + 1, config.train.steps + 1):
            # ---- data
            t0 = time.perf_counter()
            epoch = loader.epoch  # of the batch's first record
            batch = next(loader)
            ids, mask = encode_fixed(tokenizer, task.prompts(batch, tokenizer), config.data.max_prompt_length)
            gold = task.gold_hashes(batch)
            times = {"time/data": time.perf_counter() - t0}
            # the key is derived on the devices from the replicated base key: no device-to-host fetch
            inputs = (shard_batch(ids, rules), shard_batch(mask, rules), replicate(gold, mesh),
                      jax.random.fold_in(base_key, step), extractor)
            # ---- step
            t_start = time.perf_counter()
            times["time/idle"] = t_start - device_free_since
            host = rewarder.for_batch(batch) if rewarder is not None else None
            params, opt_state, out = step_fn(params, opt_state, ref_params, *inputs, host_reward=host)
            if config.train.phase_timing:  # ran phase by phase, synchronously
                device_free_since = time.perf_counter()
                times.update({f"time/{k}": v for k, v in step_fn.last_times.items()})
                times["time/step"] = sum(step_fn.last_times.values())
                collect()  # the previous step's grading ran in the background during this step
            else:  # fused programs, dispatched asynchronously: write the previous record meanwhile
                collect()
                out = jax.block_until_ready(out)
                device_free_since = time.perf_counter()
                times["time/step"] = device_free_since - t_start
            out = to_host(out)  # (a collective on multi-host runs: keep it on the main thread)
            device_metrics = {k: float(v) for k, v in out.metrics.items()}
            if reference_length is None:  # length collapse is measured against the base model's first rollout
                lengths = np.asarray(out.rollout.lengths).reshape(len(batch), config.rl.num_samples)
                reference_length = max(float(lengths[:, : settings.n_train].mean()), 1.0)
            consecutive_skips = consecutive_skips + 1 if device_metrics["skipped_updates"] else 0
            # ---- host grading (background) and periodic work
            pending = pool.submit(monitor_record, step, epoch, out, batch, gold, tokenizer, task, settings,
                                  device_metrics, times, reference_length, rollout_writer)
            if config.train.eval_every and step % config.train.eval_every == 0:
                t_eval = time.perf_counter()
                pending_eval.update(run_eval(evaluation, nnx.merge(graphdef, params), tokenizer, step,
                                             workdir / "eval" / f"step_{step:06d}", writer))
                pending_eval["time/eval"] = time.perf_counter() - t_eval
            if consecutive_skips >= config.train.max_consecutive_skips:
                raise TrainingStopped(
                    f"{consecutive_skips} consecutive steps had a non-finite loss or gradient (last: step {step}); "
                    "stopping with the last good checkpoint intact. Lower rl.learning_rate or use float32.")
            if loader.epoch > epoch:  # this batch finished epoch `epoch`
                collect()
                writer.write_epoch(end_of_epoch(epoch, step, writer, epoch_probe, params, ref_params, graphdef,
                                                tokenizer, extractor, epoch_eval))
            if step % config.train.checkpoint_every == 0 or step == config.train.steps or stop_signal:
                collect()
                ckpt.save(step, params, opt_state, {"step": step, "loader": loader.get_state(),
                                                    "tracker": tracker.state_dict(),
                                                    "reference_length": reference_length})
            if stop_signal or tracker.should_stop:
                break
        collect()
        summary = {"last_step": step, "stopped_by": "SIGTERM" if stop_signal else
                   ("collapse" if tracker.should_stop else "steps"), "mcs": tracker.summary()}
        if jax.process_index() == 0:
            (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            writer.close()
            summary["report"] = make_report(workdir, {"mcs": tracker.summary(), "stopped_by": summary["stopped_by"]})
        if jax.process_count() > 1:
            # the other processes wait here while process 0 writes the report, rather than in
            # jax.distributed's shutdown barrier, which has a deadline
            multihost_utils.sync_global_devices("urlvr-train-finished")
    finally:
        ckpt.wait()
        bar.close()
        writer.close()
        pool.shutdown(wait=False)
        signal.signal(signal.SIGTERM, previous)
    return summary
