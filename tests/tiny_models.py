"""Tiny random Hugging Face models built locally (no hub), shared by the parity and sampler tests."""
import numpy as np
import torch
import transformers

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(tie_word_embeddings=False)),
    "llama3_rope_tied_bias": (
        transformers.LlamaConfig, transformers.LlamaForCausalLM,
        dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_theta=500000.0,
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}),
    ),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=16, tie_word_embeddings=False)),
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2ForCausalLM,
              dict(tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial norms and biases, so a mapping mistake in them cannot hide behind ones/zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if "norm" in name else
                        0.1 * torch.randn(p.shape, generator=g))


def make_hf_model(family: str, path, seed: int = 0, logit_scale: float = 1.0, **overrides):
    """logit_scale > 1 sharpens the output distribution (greedy comparisons then have no near-ties)."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**SMALL, **extra, **overrides})).eval()
    _randomise(model, seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale)
    model.save_pretrained(path)
    return model


def torch_logits(model, ids_list):
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].numpy() for ids in ids_list]


def left_pad(ids_list, pad_id=0):
    T = max(len(x) for x in ids_list)
    ids = np.full((len(ids_list), T), pad_id, np.int32)
    mask = np.zeros((len(ids_list), T), np.int32)
    for i, x in enumerate(ids_list):
        ids[i, T - len(x):] = x
        mask[i, T - len(x):] = 1
    return ids, mask


