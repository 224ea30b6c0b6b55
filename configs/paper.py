"""The paper's settings (arXiv 2603.08660 §6) on a real model.

    urlvr-train --config=configs/paper.py --config.model.path=/models/Qwen3-1.7B-Base --workdir=runs/mv
    urlvr-train --config=configs/paper.py:self_certainty ...        # another intrinsic reward
    urlvr-train --config=configs/paper.py:ttrl ...                  # TTRL: vote over 64, train on 32
    urlvr-train --config=configs/paper.py:ttt_amc23 ...             # test-time training on AMC23
    urlvr-train --config=configs/paper.py:mcs_probe ...             # Model Collapse Step probe
    urlvr-train --config=configs/paper.py --dry_run                 # shapes + memory, offline

Variants: default (majority vote), self_certainty, token_entropy, trajectory_entropy, probability,
ground_truth, ttrl, ttt_amc23, ttt_aime24, mcs_probe.
DAPO-Math-17k is not shipped (no offline copy with a clear license): pass a local jsonl/parquet path as
--config.data.dataset, or its hub id when online.
"""
from urlvr_jax.config import base_config

VARIANTS = ("default", "self_certainty", "token_entropy", "trajectory_entropy", "probability", "ground_truth",
            "ttrl", "ttt_amc23", "ttt_aime24", "mcs_probe")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/paper.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    c = base_config()
    c.model.path = ""
    c.model.preset = "qwen3-1.7b-base"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.data.dataset = "BytedTsinghua-SIA/DAPO-Math-17k"
    c.data.split = "train"
    c.data.template = "qwen_math"
    c.data.prompt_batch_size = 64
    c.data.max_prompt_length = 1024
    c.rl.reward = "majority_vote"
    c.rl.num_samples = 8
    c.rl.advantage = "grpo"
    c.rl.learning_rate = 1e-6
    c.rl.weight_decay = 0.01
    c.rl.grad_clip = 1.0
    c.rl.kl_coef = 0.0
    c.rl.clip_low = c.rl.clip_high = 0.2
    c.rl.dual_clip = 3.0
    c.rl.aggregation = "token-mean"
    c.rl.mini_batches = 1  # on-policy: one optimizer step per rollout batch
    # the update one micro-batch at a time, as verl's per-GPU micro-batch: the fewest whole groups that give
    # every device its own rows (1 group of 8 on 8 devices, 2 on 16, 8 on 64): the same step (exact global
    # token-mean) with a fraction of the activations (benchmarks/README.md, scale section)
    c.rl.micro_batch_groups = -1
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 7168
    # Responses are ragged (most far below 7168): the continuous-batching engine with a KV budget of 128 rows
    # in flight (16 per device on 8) holds 64 x 1024 prompt + 128 x 7168 response positions, ~13 GiB per
    # device in bfloat16, against ~56 GiB for the static sampler's 512 x 8192 (benchmarks/README.md).
    c.sampling.engine = "continuous"
    c.sampling.max_inflight = 128
    c.train.steps = 1000
    c.train.eval_every = 20
    c.train.eval_dataset = "aime24"
    c.train.checkpoint_every = 20
    if variant in ("self_certainty", "token_entropy", "trajectory_entropy", "probability", "ground_truth"):
        c.rl.reward = variant
    elif variant == "ttrl":
        c.rl.num_samples, c.rl.n_votes, c.rl.n_train = 64, 64, 32
    elif variant in ("ttt_amc23", "ttt_aime24"):
        c.data.dataset = variant.split("_")[1]
        c.data.split = "test"  # test-time training: train on the evaluation set's unlabeled problems
        c.data.prompt_batch_size = 40 if variant == "ttt_amc23" else 30
        c.train.eval_dataset = c.data.dataset
    elif variant == "mcs_probe":
        c.rl.mini_batches = c.data.prompt_batch_size  # aggressive: mini-batch of 1 prompt (paper §5)
        c.train.stop_at_collapse = True
        c.train.eval_every = 0
    return c
