"""External rewards computed on the host: the host side of the RL step's reward port (rl/step.py).

The step samples on the devices, hands the rollout's token ids to a `HostRewarder` bound to the batch's
problems, and trains on the rewards [P, N] it returns. Two kinds:

  countdown, arithmetic   programmatic checkers on the decoded responses (registry.host_reward): the
                          boxed Countdown expression uses the given numbers and hits the target; the boxed
                          number equals the exact gold value
  self_verification       the policy itself judges each response: the task's verification prompt
                          (Task.verification_prompt) is sampled through the same sampler (a second generate
                          call, with the pre-update policy), K verdicts per response; the reward is the mean
                          of the parsed verdicts (\\boxed{True} = 1, \\boxed{False} = 0, unparsable =
                          `unparsed`). With judge='initial' the judge is the frozen initial model
                          instead (its parameters copied before training: a verifier that cannot be
                          trained to agree). A response with nothing to judge (no boxed answer) or whose
                          verification prompt exceeds `max_prompt_length` tokens gets `unparsed` without
                          a verdict (counted in verify/asked_frac).

Label-free: none of them reads the gold answer (the arithmetic checker is the exception by design — it is
the exact-verifier control of the synthetic world, equal to GT supervision there).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from flax import nnx

from urlvr_jax.rewards.external import self_verification_rewards
from urlvr_jax.rewards.registry import EXTERNAL, JUDGES, HostRewards, host_reward
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
from urlvr_jax.sharding import shard_batch, to_host
from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, pad_id_of


@dataclasses.dataclass(frozen=True)
class VerifySettings:
    """How the policy samples its verdicts under self-verification (config section `verify`)."""

    max_prompt_length: int = 512  # verification prompts are left-padded to this width (one compiled shape)
    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    num_verdicts: int = 1  # K verdicts per response; the reward is their mean
    unparsed: float = 0.0  # the value of a verdict that does not parse (and of a response not judged)
    judge: str = "policy"  # 'policy': the current policy judges; 'initial': the frozen initial model (judge_params)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


class HostRewarder:
    """Rewards [P, N] for an EXTERNAL reward, from the rollout's token ids (see the module docstring).

    `for_batch(problems)` gives the step's host_reward callable for one prompt batch:
    fn(tokens [P·N, T], mask [P·N, T], params, key) -> HostRewards. `graphdef` (the policy's) is needed for
    self-verification only; `task` provides verification prompts (data/tasks.py: Task). With
    verify.judge == 'initial', `judge_params` (the initial model's, copied before training) judge instead of
    the params the step passes.
    """

    def __init__(self, name: str, tokenizer, *, num_samples: int, task=None, graphdef=None, model_cfg=None,
                 verify: VerifySettings = VerifySettings(), judge_params=None):
        if name not in EXTERNAL:
            raise ValueError(f"HostRewarder: {name!r} is not an external reward; external rewards: {EXTERNAL}")
        if name == "self_verification" and (task is None or graphdef is None):
            raise ValueError("HostRewarder: self_verification needs the task (verification prompts) and the "
                             "policy's graphdef (the policy is the judge)")
        if verify.judge not in JUDGES:
            raise ValueError(f"HostRewarder: verify.judge must be one of {JUDGES}, got {verify.judge!r}")
        if name == "self_verification" and verify.judge == "initial" and judge_params is None:
            raise ValueError("HostRewarder: verify.judge='initial' needs judge_params (the initial model's "
                             "parameters, copied before training)")
        self.judge_params = judge_params if verify.judge == "initial" else None
        self.name, self.tokenizer, self.num_samples = name, tokenizer, num_samples
        self.task, self.graphdef, self.verify = task, graphdef, verify
        self.eos_ids = tuple(eos_ids_of(tokenizer, model_cfg))
        self.pad_id = pad_id_of(tokenizer)

    @property
    def binary(self) -> bool:
        """Whether every reward is 0 or 1 (one verdict per response, unparsed 0 or 1)."""
        return self.name != "self_verification" or (self.verify.num_verdicts == 1 and self.verify.unparsed in (0, 1))

    def for_batch(self, problems: Sequence[Any]):
        problems = list(problems)

        def fn(tokens, mask, params, key) -> HostRewards:
            texts = decode_responses(self.tokenizer, tokens, mask)
            N = self.num_samples
            if len(texts) != len(problems) * N:
                raise ValueError(f"host reward: {len(texts)} responses for {len(problems)} prompts x {N} samples")
            return self(problems, [texts[i * N:(i + 1) * N] for i in range(len(problems))], params, key)

        return fn

    def __call__(self, problems: Sequence[Any], texts: Sequence[Sequence[str]], params=None, key=None) -> HostRewards:
        """Rewards for texts [P][N] (decoded responses) of problems [P]."""
        if self.name != "self_verification":
            return HostRewards(np.asarray(host_reward(self.name, texts, problems), np.float32), {})
        return self._self_verification(problems, texts, params, key)

    def _self_verification(self, problems, texts, params, key) -> HostRewards:
        v = self.verify
        P, N = len(problems), len(texts[0]) if texts else 0
        prompts = [self.task.verification_prompt(p, t, self.tokenizer) for p, group in zip(problems, texts)
                   for t in group]
        lengths = [len(self.tokenizer(x)["input_ids"]) if x is not None else 0 for x in prompts]
        asked = np.array([x is not None and n <= v.max_prompt_length for x, n in zip(prompts, lengths)], bool)
        verdicts: list[Any] = [None] * (P * N)
        if asked.any():
            filler = prompts[int(np.argmax(asked))]  # rows not judged keep the shape; their verdicts are dropped
            ids, pmask = encode_prompts(self.tokenizer, [x if a else filler for x, a in zip(prompts, asked)],
                                        width=v.max_prompt_length, width_name="config.verify.max_prompt_length")
            model = nnx.merge(self.graphdef, params if self.judge_params is None else self.judge_params)
            rules = getattr(model, "rules", None)
            out = generate_ids(model, shard_batch(ids, rules), shard_batch(pmask, rules), key, v.sampling,
                               num_samples=v.num_verdicts, eos_ids=self.eos_ids, pad_id=self.pad_id)
            vt, vm = to_host((out.tokens, out.mask))
            decoded = decode_responses(self.tokenizer, vt, vm)
            K = v.num_verdicts
            verdicts = [decoded[i * K:(i + 1) * K] if asked[i] else None for i in range(P * N)]
        groups = [[verdicts[i * N + j] for j in range(N)] for i in range(P)]
        rewards, parsed = self_verification_rewards(groups, unparsed=v.unparsed)
        asked_pn = asked.reshape(P, N)
        metrics = {"verify/asked_frac": float(asked.mean()),
                   "verify/parsed_frac": float(parsed[asked_pn].mean()) if asked.any() else 0.0}
        return HostRewards(rewards.astype(np.float32), metrics)


def verify_settings(config) -> VerifySettings:
    """The VerifySettings of a config's `verify` section."""
    c = config.verify
    return VerifySettings(max_prompt_length=c.max_prompt_length, max_new_tokens=c.max_new_tokens,
                          temperature=c.temperature, top_p=c.top_p, num_verdicts=c.num_verdicts,
                          unparsed=c.unparsed, judge=c.get("judge", "policy"))

