"""avg@k / pass@k / maj@k against hand-computed values on fixed records."""
import numpy as np
import pytest

from urlvr_jax.evaluate import majority_index, summarize


def test_summary_hand_computed():
    # 3 problems x 4 samples
    correct = np.array([[1, 0, 0, 0],   # c=1
                        [1, 1, 1, 1],   # c=4
                        [0, 0, 0, 0]],  # c=0
                       bool)
    maj = np.array([False, True, False])
    s = summarize(correct, maj)
    assert s["avg@4"] == pytest.approx(5 / 12)
    assert s["maj@4"] == pytest.approx(1 / 3)
    # pass@1 = mean(c/n) = (1/4 + 1 + 0)/3
    assert s["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    # pass@2: problem 1: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; problem 2: 1; problem 3: 0
    assert s["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    # pass@4: any correct
    assert s["pass@4"] == pytest.approx(2 / 3)


def test_majority_index_first_seen_tie_break_and_no_votes():
    # labels are the index of the first member of each answer class, -1 = no answer
    assert majority_index([0, 1, 1, 0]) == 0          # tie 2-2: the class seen first wins
    assert majority_index([-1, 1, 1, 3]) == 1
    assert majority_index([-1, -1, -1]) == -1         # nobody answered
    assert majority_index([-1, 1, 2, 2]) == 2


def test_eval_seed_fixes_the_draws_across_steps(tmp_path):
    """train.eval_seed: -1 samples with the step as the seed (draws differ between steps), a seed >= 0 gives the
    same draws at every evaluation (a change over training is then not a change of draws)."""
    import json

    import torch
    import transformers

    from urlvr_jax.data.synthetic_tokenizer import build_synthetic_tokenizer
    from urlvr_jax.data.tasks import make_task
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.monitor import EvalSettings, run_eval

    tok = build_synthetic_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    model = load_model(tmp_path / "m")
    task = make_task("synthetic/arithmetic", split="eval", size=3, seed=0)

    def responses(seed, step):
        out = tmp_path / f"s{seed}_{step}"
        run_eval(EvalSettings(task=task, k=2, max_new_tokens=8, batch_size=3, temperature=1.0, top_p=1.0, seed=seed),
                 model, tok, step, out)
        return [json.loads(line)["responses"] for line in (out / "records.jsonl").open()]

    assert responses(7, 1) == responses(7, 5)
    assert responses(-1, 1) != responses(-1, 5)
    assert responses(-1, 7) == responses(7, 3)  # -1 means: the step is the seed
