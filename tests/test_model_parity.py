"""Logit parity with transformers' PyTorch models, for every supported family.

Each test builds a tiny random HF model locally (no hub), saves it with save_pretrained, loads it with
`load_model`, and compares float32 logits on a left-padded batch against transformers run on each
sequence without padding.

Tolerance: ATOL = 1e-5 on logits of magnitude ~1 (float32 with `highest` matmul precision; the
differences come only from summation order, ~1e-7 per op over a few layers).
"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from urlvr_jax.models.config import ConfigError, ModelConfig
from urlvr_jax.models.weights import WeightError, load_model, save_model
from urlvr_jax.sharding import make_mesh

ATOL = 1e-5

from tiny_models import FAMILIES, SMALL, left_pad, make_hf_model, torch_logits  # noqa: E402

PROMPTS = [[5, 17, 33, 2, 90, 11, 4, 8, 61], [7, 3, 44], [12, 80, 1, 9, 9, 30]]


@pytest.mark.parametrize("attention", ["auto", "flash"])  # auto is dense at these lengths on CPU
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_with_left_padding(family, attention, tmp_path):
    hf = make_hf_model(family, tmp_path)
    model = load_model(tmp_path, mesh=make_mesh({"fsdp": 2, "tensor": 2}, devices=__import__("jax").devices()[:4]),
                       attention=attention)
    ids, mask = left_pad(PROMPTS)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.dtype == np.float32 and ours.shape == (3, ids.shape[1], SMALL["vocab_size"])
    for i, ref in enumerate(torch_logits(hf, PROMPTS)):
        got = ours[i, ids.shape[1] - len(PROMPTS[i]):]
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0, err_msg=f"{family} prompt {i}")


@pytest.mark.parametrize("family", ["qwen3", "olmo2"])
def test_save_model_round_trip(family, tmp_path):
    hf = make_hf_model(family, tmp_path / "orig")
    model = load_model(tmp_path / "orig")
    save_model(model, tmp_path / "saved")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    for ref, got in zip(torch_logits(hf, PROMPTS), torch_logits(reloaded, PROMPTS)):
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # and our own loader reads our folder back to the same parameters
    again = load_model(tmp_path / "saved")
    np.testing.assert_array_equal(np.asarray(again.layers.q[...]), np.asarray(model.layers.q[...]))


@pytest.mark.parametrize("attention", ["auto", "flash"])
def test_bfloat16_compute_is_close(attention, tmp_path):
    hf = make_hf_model("llama", tmp_path)
    model = load_model(tmp_path, dtype=jnp.bfloat16, attention=attention)
    assert model.layers.q[...].dtype == jnp.bfloat16
    ours = np.asarray(model(jnp.asarray([PROMPTS[0]])))[0]
    ref = torch_logits(hf, PROMPTS[:1])[0]
    # bf16 has 8 mantissa bits: ~0.4% relative error per rounding; logits here are O(0.1-1).
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=5e-2, rtol=0)


# ------------------------------------------------------------------------------------- bad input
def test_unsupported_architecture_is_refused(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel.*supported architectures.*LlamaForCausalLM"):
        load_model(tmp_path)


def test_sliding_window_and_moe_are_refused():
    base = dict(SMALL, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    with pytest.raises(ConfigError, match="sliding-window"):
        ModelConfig.from_hf_dict(dict(base, use_sliding_window=True, sliding_window=16), source="x/config.json")
    with pytest.raises(ConfigError, match="num_experts"):
        ModelConfig.from_hf_dict(dict(base, num_experts=8), source="x/config.json")
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        ModelConfig.from_hf_dict(dict(base, rope_scaling={"rope_type": "yarn", "factor": 4.0}))


def _rewrite_safetensors(folder, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    make_hf_model("llama", tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_safetensors(tmp_path, lambda t: t.__setitem__(name, np.zeros((47, 32), np.float32)))
    with pytest.raises(WeightError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(47, 32\).*\(48, 32\)"):
        load_model(tmp_path)


def test_missing_and_extra_tensors_are_named(tmp_path):
    make_hf_model("llama", tmp_path)
    _rewrite_safetensors(tmp_path, lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(WeightError, match=r"missing 1 tensor.*model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_model(tmp_path)
    make_hf_model("llama", tmp_path)
    _rewrite_safetensors(tmp_path, lambda t: t.__setitem__("model.layers.0.extra.weight", np.zeros(3, np.float32)))
    with pytest.raises(WeightError, match=r"unexpected tensor.*model\.layers\.0\.extra\.weight"):
        load_model(tmp_path)


def test_pickle_is_refused(tmp_path):
    import pickle

    make_hf_model("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled arbitrary code",))

    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(WeightError, match=r"pytorch_model\.bin: refused.*weights_only"):
        load_model(tmp_path)
    with pytest.raises(WeightError, match="pass the model folder"):
        load_model(tmp_path / "pytorch_model.bin")


def test_weights_only_pickle_loads(tmp_path):
    hf = make_hf_model("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_model(tmp_path)
    ours = np.asarray(model(jnp.asarray([PROMPTS[1]])))[0]
    np.testing.assert_allclose(ours, torch_logits(hf, PROMPTS[1:2])[0], atol=ATOL, rtol=0)


def test_sharded_checkpoint_with_index(tmp_path):
    hf = make_hf_model("qwen3", tmp_path / "src")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    model = load_model(tmp_path / "sharded")
    ours = np.asarray(model(jnp.asarray([PROMPTS[2]])))[0]
    np.testing.assert_allclose(ours, torch_logits(hf, PROMPTS[2:])[0], atol=ATOL, rtol=0)
