"""The one config system: ml_collections ConfigDicts, validated at start-up.

`base_config()` lists every key with its default; files in `configs/` start from it and change what
they need. Command-line overrides (`--config.rl.learning_rate=1e-6`) go through ml_collections'
config_flags, which already refuse unknown keys and wrong types; `validate` then checks values and
combinations and names the key at fault.
"""
from __future__ import annotations

import math

import ml_collections

from urlvr_jax.rewards.registry import ALL_REWARDS, JUDGES
from urlvr_jax.rl.advantages import ESTIMATOR_NAMES
from urlvr_jax.rl.losses import AGGREGATIONS, KL_ESTIMATORS


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # HF folder, .gguf, 'smollm2', or '' with model.init for a random model
    c.model.tokenizer = ""  # default: the model's own
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"
    c.model.remat = False  # per-layer rematerialisation in the update
    # full-sequence attention (update, scoring, prefill): auto | dense | flash | splash (TPU) | cudnn (GPU);
    # auto = dense for short sequences, linear-memory flash (splash on TPU) for long (models/attention.py)
    c.model.attention = "auto"
    c.model.reference = "same"  # frozen reference: 'same' (the initial policy) or a path
    c.model.preset = ""  # architecture preset (models/presets.py) for dry runs without the checkpoint

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "gsm8k"  # math set name / local path, or 'synthetic/arithmetic', 'synthetic/countdown'
    c.data.split = "train"
    c.data.limit = 0  # keep only the first N problems (0 = all): the dataset-size experiments
    c.data.template = "qwen_math"
    c.data.prompt_batch_size = 8  # prompts per step (x rl.num_samples rollouts)
    c.data.max_prompt_length = 256  # prompts are left-padded to this fixed width (one compiled shape)
    c.data.synthetic_seed = 0
    c.data.synthetic_size = 2048

    c.rl = ml_collections.ConfigDict()
    c.rl.reward = "majority_vote"
    c.rl.num_samples = 8
    c.rl.n_votes = 0  # TTRL: vote over the first n_votes samples (0 = all)
    c.rl.n_train = 0  # TTRL: train on the first n_train samples (0 = all)
    c.rl.advantage = "grpo"
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.2
    c.rl.dual_clip = 3.0
    c.rl.aggregation = "token-mean"
    c.rl.kl_coef = 0.0
    c.rl.kl_estimator = "k3"
    c.rl.kl_in_reward = False
    c.rl.entropy_coef = 0.0
    c.rl.learning_rate = 1e-6
    c.rl.weight_decay = 0.01
    c.rl.grad_clip = 1.0
    c.rl.warmup_steps = 0
    c.rl.lr_schedule = "constant"  # constant | cosine
    c.rl.mini_batches = 1
    # groups per update micro-batch (gradients accumulate over micro-batches; same update, less memory):
    # 0 = the whole mini-batch at once; -1 = per device, the fewest groups that give every batch shard
    # (mesh data x fsdp) whole rows — verl's per-GPU micro-batch (see micro_batch_groups_for)
    c.rl.micro_batch_groups = 0
    c.rl.mask_truncated = False
    c.rl.dynamic_sampling = False  # DAPO-style: drop zero-variance groups, refill from an oversampled pool
    c.rl.oversample = 2.0  # pool = oversample x data.prompt_batch_size prompts per step (dynamic sampling)
    c.rl.beta = 0.05  # β of the closed-form π* diagnostics (the paper trains with no KL; β is nominal)

    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_new_tokens = 256
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.top_k = 0
    # Rollout engine. "static": all rows decode together in a [rows, prompt + max_new_tokens] KV cache until the
    # last row ends. "continuous": sampling.max_inflight decode slots refilled from a queue as rows finish,
    # each prompt's KV shared by its samples, attention bounded by the rows' lengths: KV memory prompts x
    # prompt length + slots x max_new_tokens instead of rows x both (benchmarks/README.md has the measurements).
    c.sampling.engine = "static"
    c.sampling.max_inflight = 0  # continuous: rows decoded at once (the KV budget); 0 = all rows
    c.sampling.decode_block = 128  # continuous: response positions per attention block
    c.sampling.prefill_chunk = 0  # continuous: prompts per prefill forward; 0 = all at once

    # self-verification (rl.reward='self_verification'): the policy judges each response with the task's
    # verification prompt (data/tasks.py), sampled through the same sampler (rewards/host.py)
    c.verify = ml_collections.ConfigDict()
    c.verify.max_prompt_length = 512  # verification prompts are left-padded to this width; longer ones: not judged
    c.verify.max_new_tokens = 256
    c.verify.temperature = 0.6
    c.verify.top_p = 0.95
    c.verify.num_verdicts = 1  # verdicts per response (the reward is their mean)
    c.verify.unparsed = 0.0  # reward of a verdict that does not parse, and of a response with nothing to judge
    c.verify.judge = "policy"  # who judges: 'policy' (the current policy) or 'initial' (the frozen initial model)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: all remaining devices
    c.mesh.tensor = 1

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.seed = 0
    c.train.checkpoint_every = 20
    c.train.keep_checkpoints = 2
    c.train.eval_every = 0  # 0 = no periodic evaluation
    c.train.eval_dataset = ""
    c.train.eval_limit = 64
    c.train.eval_k = 4
    # sampling of the periodic evaluation: the paper's validation setting (T = 0.6, top-p 0.95) by default; set
    # 1.0 / 1.0 to evaluate the distribution the policy is trained on (what majority-vote sharpening changes)
    c.train.eval_temperature = 0.6
    c.train.eval_top_p = 0.95
    c.train.eval_seed = -1  # -1: the step (runs evaluated at the same steps share draws); >= 0: this seed at
    # every evaluation (the same draws at every step too: a change over training is then not a change of draws)
    c.train.mcs_threshold = 0.01
    c.train.mcs_window = 5
    c.train.stop_at_collapse = False
    c.train.max_consecutive_skips = 3
    c.train.progress = True
    c.train.log_rollouts = False  # rollouts.jsonl: every step's problems, responses and rewards (process 0)
    c.train.pistar_diagnostics = True  # π* estimates at each epoch end (loads the frozen reference model)
    c.train.probe_prompts = 0  # prompts in the π* probe batch (the first training problems); 0 = data.prompt_batch_size
    c.train.kl_metrics = False  # score with the frozen reference every step and log KL(π_old ‖ π_ref), no loss term
    c.train.pistar_every_step = False  # also score with the reference every step for per-step π* estimates
    c.train.eval_at_epoch_end = False  # an evaluation (train.eval_dataset) at each epoch end, in epochs.jsonl
    c.train.phase_timing = True  # one jitted function per phase, timed; False: one fused program (time/step only)
    c.train.device_memory_gb = 0.0  # 0: ask the device (GPU/TPU); on CPU the check is skipped
    c.train.multihost = False  # call jax.distributed.initialize()
    c.train.coordinator_address = ""  # "host:port"; "" = JAX_COORDINATOR_ADDRESS or auto-detect (TPU, SLURM)
    c.train.num_processes = 0  # 0 = JAX_NUM_PROCESSES or auto-detect
    c.train.process_id = -1  # -1 = JAX_PROCESS_ID or auto-detect
    return c


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check values and combinations; raise ValueError naming the key."""

    def bad(key, why):
        raise ValueError(f"config.{key}={_get(c, key)!r}: {why}")

    if c.rl.reward not in ALL_REWARDS:
        bad("rl.reward", f"unknown reward; choose one of {list(ALL_REWARDS)}")
    if c.rl.reward == "countdown" and c.data.dataset == "synthetic/arithmetic":
        bad("rl.reward", "the countdown checker needs Countdown problems (numbers and target): use "
                         "data.dataset='synthetic/countdown' or a set whose records carry them")
    if c.rl.reward == "self_verification":
        if c.verify.num_verdicts < 1:
            bad("verify.num_verdicts", "must be >= 1")
        if c.verify.max_new_tokens < 1 or c.verify.max_prompt_length < 1:
            bad("verify.max_new_tokens", "verify.max_new_tokens and verify.max_prompt_length must be >= 1")
        if c.verify.get("judge", "policy") not in JUDGES:
            bad("verify.judge", f"must be one of {JUDGES}, got {c.verify.judge!r}")
        if c.verify.temperature <= 0 or not 0 < c.verify.top_p <= 1:
            bad("verify.temperature", "need verify.temperature > 0 and verify.top_p in (0, 1]")
    if c.rl.advantage not in ESTIMATOR_NAMES:
        bad("rl.advantage", f"choose one of {list(ESTIMATOR_NAMES)} (the last ones are verl's names)")
    if c.rl.aggregation not in AGGREGATIONS:
        bad("rl.aggregation", f"choose one of {list(AGGREGATIONS)}")
    if c.rl.kl_estimator not in KL_ESTIMATORS:
        bad("rl.kl_estimator", f"choose one of {list(KL_ESTIMATORS)} (k1/k2/k3 and verl's names)")
    if c.rl.num_samples < 1:
        bad("rl.num_samples", "must be >= 1")
    if c.rl.reward in ("majority_vote", "semantic_cluster") and c.rl.num_samples < 2:
        bad("rl.num_samples", "ensemble rewards need at least 2 samples per prompt")
    if c.rl.n_votes and not c.rl.n_train <= c.rl.n_votes <= c.rl.num_samples:
        bad("rl.n_votes", f"need n_train <= n_votes <= num_samples ({c.rl.num_samples})")
    if c.rl.n_train < 0 or c.rl.n_train > c.rl.num_samples:
        bad("rl.n_train", f"must be in [0, num_samples={c.rl.num_samples}]")
    if c.rl.learning_rate <= 0:
        bad("rl.learning_rate", "must be > 0")
    if c.train.probe_prompts < 0:
        bad("train.probe_prompts", "must be >= 0 (0 = data.prompt_batch_size)")
    if c.rl.mini_batches < 1 or c.rl.mini_batches > c.data.prompt_batch_size:
        bad("rl.mini_batches", f"must be in [1, data.prompt_batch_size={c.data.prompt_batch_size}]")
    if c.rl.micro_batch_groups < -1:
        bad("rl.micro_batch_groups", "must be >= 0 (0 = whole mini-batch) or -1 (per device)")
    if c.rl.lr_schedule not in ("constant", "cosine"):
        bad("rl.lr_schedule", "choose constant or cosine")
    if c.rl.dynamic_sampling and c.rl.oversample < 1:
        bad("rl.oversample", "must be >= 1 (the pool of prompts the informative groups are drawn from)")
    if c.rl.beta <= 0:
        bad("rl.beta", "must be > 0")
    if c.train.eval_temperature <= 0:
        bad("train.eval_temperature", "must be > 0")
    if c.train.get("eval_seed", -1) < -1:
        bad("train.eval_seed", f"must be -1 (the step) or a seed >= 0, got {c.train.eval_seed}")
    if not 0 < c.train.eval_top_p <= 1:
        bad("train.eval_top_p", "must be in (0, 1]")
    if c.sampling.temperature <= 0:
        bad("sampling.temperature", "must be > 0")
    if not 0 < c.sampling.top_p <= 1:
        bad("sampling.top_p", "must be in (0, 1]")
    if c.sampling.max_new_tokens < 1:
        bad("sampling.max_new_tokens", "must be >= 1")
    if c.sampling.engine not in ("static", "continuous"):
        bad("sampling.engine", "must be 'static' or 'continuous'")
    if c.sampling.max_inflight < 0:
        bad("sampling.max_inflight", "must be >= 0 (0 = all rows at once)")
    if c.sampling.decode_block < 1:
        bad("sampling.decode_block", "must be >= 1")
    if c.sampling.prefill_chunk < 0:
        bad("sampling.prefill_chunk", "must be >= 0 (0 = all prompts in one forward)")
    if c.data.prompt_batch_size < 1:
        bad("data.prompt_batch_size", "must be >= 1")
    if c.model.dtype not in ("float32", "bfloat16") or c.model.param_dtype not in ("float32", "bfloat16"):
        bad("model.dtype", "dtype and param_dtype must be float32 or bfloat16")
    if c.model.get("attention", "auto") not in ("auto", "dense", "flash", "splash", "cudnn"):
        bad("model.attention", "choose auto, dense, flash, splash (TPU) or cudnn (GPU)")
    if c.train.steps < 1:
        bad("train.steps", "must be >= 1")
    if c.train.checkpoint_every < 1:
        bad("train.checkpoint_every", "must be >= 1")
    if not c.model.path and not c.model.preset:
        bad("model.path", "set a model path (HF folder, .gguf, 'smollm2'), or model.preset for a --dry_run")
    return c


def mesh_sizes(c, n_devices: int) -> dict[str, int]:
    """config.mesh's axis sizes for n_devices, a -1 axis filled by the remaining devices."""
    sizes = {"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor}
    known = math.prod(v for v in sizes.values() if v > 0)
    return {k: (max(n_devices // known, 1) if v == -1 else v) for k, v in sizes.items()}


def batch_shards(c, n_devices: int) -> int:
    """How many ways a batch is split: mesh data x fsdp."""
    sizes = mesh_sizes(c, n_devices)
    return sizes["data"] * sizes["fsdp"]


def micro_batch_groups_for(c, n_batch_shards: int) -> int:
    """rl.micro_batch_groups resolved for a mesh: -1 -> the fewest whole groups whose rows divide evenly
    over the batch shards (e.g. 8 samples per group: 1 group on 8 shards, 2 on 16, 8 on 64), capped at the
    mini-batch. A micro-batch with fewer rows than shards cannot be split and would be replicated on every
    device — each device would then compute (and hold the activations of) the whole micro-batch."""
    groups = c.rl.micro_batch_groups
    if groups != -1:
        return groups
    n = c.rl.n_train or c.rl.num_samples
    per_mini_batch = -(-c.data.prompt_batch_size // c.rl.mini_batches)
    return min(n_batch_shards // math.gcd(n_batch_shards, n), per_mini_batch)


def _get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c
