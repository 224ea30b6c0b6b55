"""Finding 5 of the paper (§7.5) as trainer configs: external rewards vs an intrinsic one on Countdown.

    python experiments/external_rewards.py --build-only                      # the Countdown base model
    urlvr-train --config=configs/external_rewards.py:countdown --workdir=runs/cd
    urlvr-train --config=configs/external_rewards.py:self_verification --workdir=runs/sv
    urlvr-train --config=configs/external_rewards.py:trajectory_entropy --workdir=runs/te

Variants (the reward; everything else is shared):
  countdown           the exact Countdown checker (rewards/external.py: the boxed expression uses the given
                      numbers, each at most once, and hits the target) — a programmatic verifier, no labels
  self_verification   the policy judges each of its solutions (one verdict sampled at T = 0.6, top-p 0.95
                      through the same sampler, "V: <problem> by <expression>\\nA: " → \\boxed{True/False})
  frozen_verification the same judge prompt, but the judge is the frozen initial model (verify.judge =
                      'initial'): a verifier the policy cannot train to agree with it
  trajectory_entropy  (1/T) Σ_t log π(y_t), the intrinsic certainty reward
  token_entropy       −(1/T) Σ_t H(π(·|y_<t)), the intrinsic reward that falls in this project's worlds (E5c)
  random              i.i.d. Bernoulli(0.5) rewards: the drift control

The model is the synthetic Countdown base model (solver + verifier) that experiments/external_rewards.py
builds into runs/experiments/external_rewards/base_model/model (override with --config.model.path); its
recipe file makes the trainer draw the problems from the task it was trained on (3 numbers from 1..9,
targets 10..40). The script runs the three variants with RL seeds 0 and 1 and measures held-out accuracy
from the checkpoints; results in experiments/README.md.
"""
from urlvr_jax.config import base_config

VARIANTS = ("countdown", "self_verification", "frozen_verification", "trajectory_entropy", "token_entropy", "random")
BASE_MODEL = "runs/experiments/external_rewards/base_model/model"


def get_config(variant: str = "countdown"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/external_rewards.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    c = base_config()
    c.model.path = BASE_MODEL
    c.model.preset = "synthetic-tiny"  # its architecture, for --dry_run before the model is built
    c.data.dataset = "synthetic/countdown"
    c.data.split = "train"
    c.data.synthetic_size = 700  # the base model's SFT problems (train split)
    c.data.synthetic_seed = 0
    c.data.template = "synthetic"
    c.data.prompt_batch_size = 8
    c.data.max_prompt_length = 40
    c.rl.reward = "self_verification" if variant == "frozen_verification" else variant
    c.rl.num_samples = 8
    c.rl.advantage = "grpo"
    c.rl.learning_rate = 1e-3
    c.rl.weight_decay = 0.0
    c.sampling.max_new_tokens = 64
    c.sampling.temperature = 1.0
    c.verify.max_prompt_length = 64
    c.verify.max_new_tokens = 64  # recipe v2's verdict trace: number check, evaluation, comparison
    c.verify.temperature = 0.6
    c.verify.top_p = 0.95
    c.verify.num_verdicts = 1
    c.verify.judge = "initial" if variant == "frozen_verification" else "policy"
    c.train.steps = 100
    c.train.checkpoint_every = 20  # held-out accuracy is measured from the checkpoints
    c.train.keep_checkpoints = 100
    c.train.pistar_diagnostics = False
    c.train.log_rollouts = True  # the verifier's verdict quality is read back from rollouts.jsonl
    return c
