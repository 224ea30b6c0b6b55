"""Self-verification (external reward by generation–verification asymmetry).

The policy itself judges each (question, solution) pair: it is prompted with
`external.build_verification_prompt` and samples K verdicts per solution; the reward is the mean of the
parsed verdicts (\\boxed{True} = 1, \\boxed{False} = 0; an unparsable verdict counts as `unparsed`).
Checking is easier than solving, so this reward need not only sharpen the policy's own prior.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from urlvr_jax.rewards.external import build_verification_prompts, self_verification_rewards
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
from urlvr_jax.sharding import shard_batch
from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, pad_id_of

VERDICT_SAMPLING = SamplingConfig(max_new_tokens=256, temperature=0.6, top_p=0.95)


def self_verification_reward(model, tokenizer, questions: Sequence[str], solutions: Sequence[Sequence[str]],
                             key: jax.Array, sampling: SamplingConfig = VERDICT_SAMPLING, num_verdicts: int = 1,
                             unparsed: float = 0.0, prompt_wrapper=None) -> tuple[np.ndarray, np.ndarray, list]:
    """Rewards [P, N] float32, parsed fraction [P, N] and the verdict texts [P][N][K].

    questions [P]; solutions [P][N] (decoded responses). prompt_wrapper(str) -> str may apply a chat
    template to each verification prompt.
    """
    prompts = build_verification_prompts(questions, solutions)
    P, N = len(prompts), len(prompts[0]) if prompts else 0
    flat = [p for group in prompts for p in group]
    if prompt_wrapper is not None:
        flat = [prompt_wrapper(p) for p in flat]
    ids, mask = encode_prompts(tokenizer, flat)
    rules = getattr(model, "rules", None)
    out = generate_ids(model, shard_batch(ids, rules), shard_batch(mask, rules), key, sampling,
                       num_samples=num_verdicts, eos_ids=eos_ids_of(tokenizer, model.cfg), pad_id=pad_id_of(tokenizer))
    tokens, rmask = jax.device_get((out.tokens, out.mask))
    texts = decode_responses(tokenizer, tokens, rmask)
    verdicts = [[texts[(p * N + i) * num_verdicts:(p * N + i + 1) * num_verdicts] for i in range(N)] for p in range(P)]
    rewards, parsed = self_verification_rewards(verdicts, unparsed=unparsed)
    return rewards, parsed, verdicts
