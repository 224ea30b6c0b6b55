"""Model configuration, read from a Hugging Face `config.json`.

One frozen dataclass covers the four decoder families the paper trains (§8):
  llama  (Llama-3.x, SmolLM2; optional `llama3` rope scaling, optional attention/MLP biases)
  qwen2  (Qwen2.5, Qwen2.5-Math, DeepSeek-R1-Distill-Qwen: q/k/v biases)
  qwen3  (RMSNorm on q and k per head, explicit head_dim)
  olmo2  (no pre-norms; RMSNorm after attention and after the MLP; q/k RMSNorm over the full projection)

Anything in a config that would change the math and that we do not implement (sliding windows, MoE,
other rope types, other activations) is refused with an error that names the field and lists what is
supported. Silently ignoring such a field would give a model that loads and produces wrong logits.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Olmo2ForCausalLM": "olmo2",
}
SUPPORTED_MODEL_TYPES = sorted(set(SUPPORTED_ARCHITECTURES.values()))
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A config.json that this package cannot (or must not) load as-is."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q, k, v (and o for llama's attention_bias)
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # "none" | "head" (qwen3) | "full" (olmo2)
    post_norms: bool = False  # olmo2: norms after attention / MLP instead of before
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}"
            )
        if self.family not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"model family {self.family!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")

    @property
    def architecture(self) -> str:
        return {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.family]

    def num_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        per_layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
        if self.attention_bias:
            per_layer += q + 2 * kv
        if self.qk_norm == "head":
            per_layer += 2 * hd
        elif self.qk_norm == "full":
            per_layer += q + kv
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return emb + self.num_layers * per_layer + d

    # ---------------------------------------------------------------- HF config.json <-> ModelConfig
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Build from the dict of a HF config.json; `source` is named in every error."""

        def need(key):
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{source}: required key {key!r} is missing")
            return hf[key]

        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        family = None
        for arch in archs:
            if arch in SUPPORTED_ARCHITECTURES:
                family = SUPPORTED_ARCHITECTURES[arch]
        if family is None and model_type in SUPPORTED_MODEL_TYPES and not archs:
            family = model_type
        if family is None:
            raise ConfigError(
                f"{source}: unsupported architecture {archs or model_type!r}; supported architectures: "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )

        # Fields that change the math and are not implemented: refuse, never ignore.
        if hf.get("use_sliding_window") or (family == "llama" and hf.get("sliding_window")):
            raise ConfigError(
                f"{source}: sliding-window attention (use_sliding_window/sliding_window) is not supported; "
                "only full causal attention is implemented"
            )
        layer_types = hf.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            bad = sorted(set(t for t in layer_types if t != "full_attention"))
            raise ConfigError(f"{source}: layer_types {bad} are not supported; only 'full_attention'")
        for moe_key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size"):
            if hf.get(moe_key):
                raise ConfigError(f"{source}: mixture-of-experts ({moe_key}={hf[moe_key]}) is not supported")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported; only 'silu' (SwiGLU)")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported; only 1")
        if family == "olmo2" and hf.get("clip_qkv") is not None:
            raise ConfigError(f"{source}: clip_qkv={hf['clip_qkv']} is not supported")
        if hf.get("attention_dropout", 0.0):
            raise ConfigError(f"{source}: attention_dropout={hf['attention_dropout']} != 0 is not supported")

        # RoPE: transformers >= 5 writes `rope_parameters`; older files use rope_theta + rope_scaling.
        rope = dict(hf.get("rope_parameters") or {})
        if not rope:
            rope = dict(hf.get("rope_scaling") or {})
            rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: rope type {rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}"
            )
        if "partial_rotary_factor" in hf and hf["partial_rotary_factor"] not in (None, 1.0):
            raise ConfigError(f"{source}: partial_rotary_factor={hf['partial_rotary_factor']} is not supported")

        num_heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        head_dim = hf.get("head_dim") or hidden // num_heads
        eos = hf.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
        attention_bias = bool(hf.get("attention_bias", False)) or family == "qwen2"
        return cls(
            family=family,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_positions=int(rope.get("original_max_position_embeddings", 8192)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            o_bias=bool(hf.get("attention_bias", False)) and family in ("llama", "olmo2"),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm={"qwen3": "head", "olmo2": "full"}.get(family, "none"),
            post_norms=family == "olmo2",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no config.json (a model folder needs config.json + *.safetensors)")
        with open(path, encoding="utf-8") as f:
            try:
                hf = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        return cls.from_hf_dict(hf, source=path)

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json that transformers' AutoConfig reads back into the same model."""
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "linear":
            rope["factor"] = self.rope_factor
        elif self.rope_type == "llama3":
            rope.update(
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_positions,
            )
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else
            (self.eos_token_ids[0] if self.eos_token_ids else None),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.rope_type != "default":
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
        if self.family in ("llama", "olmo2"):
            out["attention_bias"] = self.attention_bias
        if self.family == "llama":
            out["mlp_bias"] = self.mlp_bias
        if self.family in ("qwen2", "qwen3"):
            out["use_sliding_window"] = False
        return out
