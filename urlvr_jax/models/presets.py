"""Architecture presets of the paper's models (§8), for offline dry runs and memory estimates.

These are the architecture fields of each model's published `config.json`. They are used only when
the checkpoint itself is not on this machine (a `--dry_run` of a paper config); loading a real model
always reads its own config.json.
"""
from __future__ import annotations

from urlvr_jax.models.config import ModelConfig

_QWEN = dict(hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768)

PRESETS: dict[str, dict] = {
    "qwen3-1.7b-base": dict(_QWEN, architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936,
                            hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen3-8b-base": dict(_QWEN, architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936,
                          hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=128, rope_theta=1000000.0, tie_word_embeddings=False),
    "qwen2.5-1.5b": dict(_QWEN, architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936,
                         hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen2.5-math-1.5b": dict(_QWEN, architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=151936,
                              hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True,
                              max_position_embeddings=4096),
    "qwen2.5-7b": dict(_QWEN, architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064,
                       hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, rope_theta=1000000.0, tie_word_embeddings=False),
    "llama-3.1-8b": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         tie_word_embeddings=False),
    "olmo-2-1124-7b": dict(architectures=["Olmo2ForCausalLM"], model_type="olmo2", vocab_size=100352,
                           hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=32, rms_norm_eps=1e-6, rope_theta=500000.0,
                           max_position_embeddings=4096, tie_word_embeddings=False),
    "smollm2-135m": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    # the tiny synthetic base models (urlvr_jax.sft base_model_config("tiny"), the shipped ladder's architecture),
    # for dry runs of synthetic-world configs whose model is built by a script (configs/external_rewards.py)
    "synthetic-tiny": dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128, hidden_size=64,
                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
}


def preset_config(name: str) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return ModelConfig.from_hf_dict(PRESETS[key], source=f"preset {key}")
