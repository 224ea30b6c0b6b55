"""The tokenizer of the synthetic world: character level over printable ASCII, `\\boxed{` as one token.

    tok = build_synthetic_tokenizer()            # a transformers fast tokenizer (TokenizersBackend)
    tok.save_pretrained("ckpt/")                  # tokenizer.json + tokenizer_config.json, like a real model
    AutoTokenizer.from_pretrained("ckpt/")        # (or urlvr_jax.tokenizer.load_tokenizer) loads it back

Vocabulary (101 ids, fixed, so every synthetic model shares it):
    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4 \\boxed{   5 "\\n"   6.. 100: the 95 printable ASCII
    characters " " (6) .. "~" (100) in code-point order, so digit d has id 22 + d.
Every character of the world (digits, + - * / ( ) =, letters of the prompt text, space, newline, "}")
is one token, digits included, and `\\boxed{` is one token, so a sampled answer is easy to locate and the
answer extractor (urlvr_jax.rewards.answers) reads the same bytes as the host. Any printable-ASCII text
(plus "\\n") round-trips exactly: decode(encode(t), skip_special_tokens=True) == t. Other characters
(tabs, non-ASCII) encode to <unk> and are lost; `unencodable_chars` finds them.

Encoding with add_special_tokens=True (the default) prepends <bos>, as Llama tokenizers do; the SFT
and RL code appends <eos> to targets. There is no chat template: synthetic prompts are raw text
("Q: ...\\nA: ", see synthetic.synthetic_prompt).
"""
from __future__ import annotations

import os

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
BOXED_TOKEN = "\\boxed{"
# Every character the world can write; "\n" first, then printable ASCII in code-point order.
CHARACTERS = ("\n",) + tuple(chr(c) for c in range(32, 127))
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + (BOXED_TOKEN,) + CHARACTERS
VOCAB_SIZE = len(VOCAB)

# `\boxed{` is matched first, then any single character ([\s\S]: "." would skip "\n").
_PRETOKENIZE_PATTERN = r"\\boxed\{|[\s\S]"


def build_synthetic_tokenizer():
    """The synthetic world's tokenizer as a `transformers` fast tokenizer.

    Model: WordLevel over VOCAB (unknown characters -> <unk>); pre-tokenizer: split off `\\boxed{` and
    every single character; decoder: Fuse (concatenate, no spaces inserted); post-processor:
    "<bos> $A". pad/bos/eos/unk ids are 0/1/2/3.
    """
    # heavy (transformers): only when the tokenizer is built
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        # The transformers default would turn " ." into "." on decode and break the exact round trip.
        clean_up_tokenization_spaces=False, model_max_length=4096)


def save_synthetic_tokenizer(directory: str | os.PathLike):
    """Builds the tokenizer and writes it to `directory` (tokenizer.json, tokenizer_config.json)."""
    tok = build_synthetic_tokenizer()
    tok.save_pretrained(str(directory))
    return tok


def unencodable_chars(text: str) -> set[str]:
    """The characters of `text` that the synthetic tokenizer maps to <unk> (empty set: round-trips)."""
    allowed = set(CHARACTERS)
    return {c for c in text if c not in allowed}
