"""The default experiment (README command 1): majority-vote URLVR on the synthetic arithmetic world.

Starts from the best-aligned rung of the shipped base-model ladder (ladder/q0.1: avg@16 0.52, maj@16 0.80;
urlvr_jax/models/ladder/, built by experiments/build_ladder.py), so the majority is usually right and
training first gains accuracy, then sharpens onto its own mistakes. Trains with the label-free
majority-vote reward, and tracks what the paper tracks: GT accuracy (for monitoring only), proxy
reward, reward and label accuracy, entropy, response length, the Model Collapse Step and the closed-form
π* ceiling. Sized to finish in under 10 minutes on a 2-core CPU.

    urlvr-train --config=configs/default.py --workdir=runs/default
    urlvr-train --config=configs/default.py --config.model.path=ladder/q0.6 --workdir=runs/bad_prior
"""
from urlvr_jax.config import base_config


def get_config():
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
    c.train.eval_every = 25
    c.train.eval_dataset = "synthetic/arithmetic"
    c.train.eval_limit = 64
    c.train.eval_k = 4
    return c
