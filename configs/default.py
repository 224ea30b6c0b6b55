"""The default experiment (README command 1): majority-vote URLVR on the synthetic arithmetic world.

Starts from the best-aligned rung of the shipped base-model ladder (ladder/q0.1; urlvr_jax/models/ladder/,
measured in its README, built by experiments/build_ladder.py), so the majority is usually right and
training first gains accuracy, then sharpens onto its own mistakes. Trains with the label-free
majority-vote reward, and tracks what the paper tracks: GT accuracy (for monitoring only), proxy
reward, reward and label accuracy, entropy, response length, the Model Collapse Step and the closed-form
π* ceiling. Sized to finish in under 10 minutes on a 2-core CPU.

    urlvr-train --config=configs/default.py --workdir=runs/default
    urlvr-train --config=configs/default.py --config.model.path=ladder/q0.6 --workdir=runs/bad_prior
    urlvr-train --config=configs/default.py:mcs_probe --workdir=runs/mcs_probe

Variants (after a colon):
  default    the main job above. With lr 1e-3 and 200 steps the accuracy rises and falls, but the paper's
             Model Collapse Step (reward accuracy < 1%) is not reached: the model sharpens onto its wrong
             majority on some problems while staying right on others, so reward accuracy levels off near
             its accuracy; report.json then says MCS null.
  mcs_probe  the paper's aggressive MCS probe on the same prior (§5: "mini-batch 1 ... collapse sooner"):
             8 prompts x 8 samples, one optimizer step per group (8 updates per rollout batch), lr 3e-3, at
             most 100 steps, stopped once reward accuracy stays below 1% for 5 steps (sustained MCS).
             What it measured, and how fragile that is: README.md and experiments/README.md.
"""
from urlvr_jax.config import base_config

VARIANTS = ("default", "mcs_probe")


def get_config(variant: str = "default"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/default.py: unknown variant {variant!r}; choose one of {VARIANTS}")
    c = base_config()
    c.model.path = "ladder/q0.1"
    c.data.dataset = "synthetic/arithmetic"
    c.data.split = "train"
    c.data.synthetic_size = 4096
    c.data.prompt_batch_size = 16
    c.data.max_prompt_length = 32
    c.data.template = "synthetic"
    c.rl.reward = "majority_vote"
    c.rl.num_samples = 8
    c.rl.advantage = "grpo"
    c.rl.learning_rate = 1e-3
    c.rl.weight_decay = 0.0
    c.rl.beta = 0.05
    c.sampling.max_new_tokens = 48
    c.sampling.temperature = 1.0
    c.train.steps = 200
    c.train.checkpoint_every = 50
    # held-out evaluation at step 0 and every 20 steps (11 evaluations): report.json's headline (start, peak and
    # final 3-evaluation windows, rise and fall, SEs over the 256 problems) comes from these
    c.train.eval_every = 20
    c.train.eval_dataset = "synthetic/arithmetic"
    c.train.eval_limit = 256
    c.train.eval_k = 4
    c.train.kl_metrics = True  # KL(π_old ‖ π_ref) per token every step (kl_to_ref/*; the reference pass costs little)
    c.train.probe_prompts = 64  # the π* ceiling from 64 prompts (16 would put it at a 1/16 resolution)
    if variant == "mcs_probe":
        c.data.prompt_batch_size = 8
        c.rl.mini_batches = 8
        c.rl.learning_rate = 3e-3
        c.train.steps = 100
        c.train.stop_at_collapse = True
        c.train.eval_every = 0
    return c
