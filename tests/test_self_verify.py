"""Self-verification reward wired through the sampler: the policy judges its own solutions."""
import jax
import numpy as np
import pytest
import torch
import transformers

from urlvr_jax.data.synthetic_tokenizer import build_synthetic_tokenizer
from urlvr_jax.models.weights import load_model
from urlvr_jax.rewards.external import self_verification_rewards
from urlvr_jax.rewards.self_verify import self_verification_reward
from urlvr_jax.rollout.sampler import SamplingConfig


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """The synthetic tokenizer and a random 1-layer Llama saved by transformers and loaded by urlvr_jax."""
    tok = build_synthetic_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("judge")
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return tok, load_model(folder)


def test_self_verification_reward_shapes_order_and_parsing(tiny_judge):
    tok, model = tiny_judge
    questions = ["1+2", "3*4"]
    solutions = [["1+2=3\n\\boxed{3}", "1+2=4\n\\boxed{4}", "x"], ["3*4=12\n\\boxed{12}", "", "3*4=7"]]
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0)
    rewards, parsed, verdicts = self_verification_reward(model, tok, questions, solutions, jax.random.key(0),
                                                         sampling=sampling, num_verdicts=2)
    assert rewards.shape == (2, 3) and parsed.shape == (2, 3)
    assert all(len(v) == 2 for group in verdicts for v in group)
    ref_rewards, ref_parsed = self_verification_rewards(verdicts)
    np.testing.assert_array_equal(rewards, ref_rewards)
    np.testing.assert_array_equal(parsed, ref_parsed)
    again = self_verification_reward(model, tok, questions, solutions, jax.random.key(0), sampling=sampling,
                                     num_verdicts=2)[2]
    assert again == verdicts  # deterministic for a key


def test_frozen_judge_uses_the_initial_parameters(tiny_judge, monkeypatch):
    """verify.judge='initial': the judge is the model with the parameters given at construction, whatever
    params the step passes; judge='policy' judges with the passed params."""
    from flax import nnx

    import urlvr_jax.rewards.host as host
    from urlvr_jax.data.synthetic import make_countdown_dataset
    from urlvr_jax.data.tasks import make_task

    tok, model = tiny_judge
    graphdef, initial = nnx.split(model)
    trained = jax.tree.map(lambda x: x + 1.0, initial)
    problems = make_countdown_dataset(2, 0, n_numbers=3, max_number=9, target_range=(10, 40))
    texts = [["1+2=3\n\\boxed{8+9}", "\\boxed{3*4}"], ["\\boxed{2*5}", "x"]]
    seen = []
    real = host.generate_ids

    def spy(model, *a, **k):
        seen.append(float(jax.tree.leaves(nnx.split(model)[1])[0].sum()))
        return real(model, *a, **k)

    monkeypatch.setattr(host, "generate_ids", spy)
    settings = dict(max_prompt_length=64, max_new_tokens=4)
    frozen = host.HostRewarder("self_verification", tok, num_samples=2, task=make_task(problems), graphdef=graphdef,
                               verify=host.VerifySettings(**settings, judge="initial"), judge_params=initial)
    policy = host.HostRewarder("self_verification", tok, num_samples=2, task=make_task(problems), graphdef=graphdef,
                               verify=host.VerifySettings(**settings))
    frozen(problems, texts, trained, jax.random.key(0))
    policy(problems, texts, initial, jax.random.key(0))
    policy(problems, texts, trained, jax.random.key(0))
    assert seen[0] == seen[1] != seen[2]
    with pytest.raises(ValueError, match="judge_params"):
        host.HostRewarder("self_verification", tok, num_samples=2, task=make_task(problems), graphdef=graphdef,
                          verify=host.VerifySettings(**settings, judge="initial"))
