"""On-device answer extraction against the host reference, the answer hash, and the canonicaliser.

Tokenizers are built locally (no hub): a char-level vocabulary, and two byte-level BPEs trained on MATH-500
solutions from /work/shared/data, one with GPT-2 pre-tokenisation (merges such as "}$", "{\\", "}}$.") and one
splitting only at spaces (merges such as " \\boxed{", "5}", "\\frac{1}{2}", "}{2}"), so markers and braces
straddle token boundaries and share tokens with other characters.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from urlvr_jax.rewards.answers import (
    AnswerExtractor,
    answer_hash,
    answer_id_from_text,
    canonical_answer_ids,
    decode_answers,
    extract_boxed,
    span_mask,
    token_bytes,
)
from urlvr_jax.rewards.ensemble import majority_vote

DATA = "/work/shared/data"
_SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
if not os.path.isdir(DATA) and os.path.isdir(_SHARED):
    DATA = _SHARED


def _math_texts():
    path = os.path.join(DATA, "math500", "test.jsonl")
    if not os.path.exists(path):
        pytest.skip(f"real data not found at {path}")
    return [json.loads(line)["solution"] for line in open(path, encoding="utf-8")]


def _train_bpe(texts, split_only_spaces: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if split_only_spaces:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(" ", behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<eos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def bpes():
    texts = _math_texts()
    return {"gpt2": _train_bpe(texts, False), "spaces": _train_bpe(texts, True)}


@pytest.fixture(scope="module")
def extractors(bpes):
    return {name: AnswerExtractor.from_tokenizer(tok) for name, tok in bpes.items()}


# One batch shape for every BPE call: each new (tables, shape) pair costs a few seconds of compilation.
P0, N0, T0 = 64, 16, 48


# Fragments for random responses: partial and complete markers, nested / unbalanced braces, merged
# punctuation, newlines, multi-byte characters, "Answer:" lines.
FRAGS = ["\\boxed{", "\\fbox{", "\\boxed", "{", "}", "}$", "}$.", "{\\", "}}", "}{", "\\frac{1}{2}", "3", "35",
         "x", " ", "  ", "\n", "$", "\\", "box", "ed{", "\\sqrt{2}", "π", "√", "½", "Answer:", "Answer: 12\n",
         "\\text{(A)}", "-", "0.5", "\\{1,2\\}", "\\boxed{ 7 }", "the answer is ", "=", ",", "\\left(", "\\right)"]


def random_texts(rng, n, max_frags=10):
    """Random fragment soup; half of the texts also get a boxed answer (whose content may unbalance it)."""
    def soup(k):
        return "".join(FRAGS[i] for i in rng.integers(0, len(FRAGS), size=int(rng.integers(0, k + 1))))

    out = []
    for _ in range(n):
        text = soup(max_frags)
        if rng.random() < 0.5:
            text += rng.choice(["\\boxed{", "\\fbox{", " $\\boxed{"]) + soup(3) + "}" + soup(2)
        out.append(text)
    return out


def host_span(text, markers, mode, tok_byte_lens):
    """Reference (start, end) token indices: tokens holding the marker's last byte and the closing byte."""
    best = max((text.rfind(m) + len(m) if text.rfind(m) >= 0 else -1) for m in markers)
    if best < 0:
        return -1, -1
    close = None
    if mode == "line":
        j = text.find("\n", best)
        close = j if j >= 0 else None
    else:
        depth = 1
        for i in range(best, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                close = i
                break
    ends = np.cumsum(tok_byte_lens)

    def tok_of(char_idx):
        b = len(text[:char_idx].encode("utf-8", "surrogateescape"))
        return int(np.searchsorted(ends, b, side="right"))

    start = tok_of(best - 1)
    end = tok_of(close) if close is not None else len(tok_byte_lens) - 1
    return start, end


def batch_encode(tok, texts, P, N, T, eos_id, rng=None, holes=False):
    """[P, N, T] tokens and mask; EOS appended when it fits; optional masked-out junk tokens inside.

    Text r goes to row divmod(r, N); rows past len(texts) stay empty (mask 0)."""
    tokens = np.full((P, N, T), eos_id, np.int32)
    mask = np.zeros((P, N, T), np.int32)
    kept = []
    for r, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"][: T - 1] + [eos_id]
        p, n = divmod(r, N)
        row, m = [], []
        for t in ids:
            if holes and rng.random() < 0.15 and len(row) < T - 1:
                row.append(int(rng.integers(0, len(tok))))  # junk that must be ignored
                m.append(0)
            row.append(t)
            m.append(1)
        row, m = row[:T], m[:T]
        tokens[p, n, : len(row)] = row
        mask[p, n, : len(m)] = m
        kept.append([t for t, mm in zip(row, m) if mm])
    return tokens, mask, kept


@pytest.mark.parametrize("name", ["gpt2", "spaces"])
def test_device_matches_host_on_random_responses(bpes, extractors, name):
    tok, ex = bpes[name], extractors[name]
    tb = token_bytes(tok)
    rng = np.random.default_rng(0 if name == "gpt2" else 1)
    P, N, T = P0, N0, T0
    texts = random_texts(rng, P * N)
    eos = tok.eos_token_id
    tokens, mask, kept = batch_encode(tok, texts, P, N, T, eos, rng, holes=True)
    aid, start, end = ex.extract(tokens, mask)
    aid, start, end = np.asarray(aid), np.asarray(start), np.asarray(end)
    n_answers = 0
    for r in range(P * N):
        p, n = divmod(r, N)
        dec = tok.decode(kept[r], skip_special_tokens=True)
        raw = b"".join(tb[t] for t in kept[r])
        ref = answer_id_from_text(raw)
        if "\ufffd" not in dec:  # not cut inside a multi-byte character: the text itself is the reference
            assert dec.encode() == raw  # byte tables == the decoder
            assert ref == answer_id_from_text(dec)
        else:
            dec = raw.decode("utf-8", "surrogateescape")
        assert aid[p, n] == ref, (dec, extract_boxed(dec))
        if ref >= 0:
            n_answers += 1
            valid_pos = np.nonzero(mask[p, n])[0]
            s, e = host_span(dec, ["\\boxed{", "\\fbox{"], "braces", [len(tb[t]) for t in kept[r]])
            assert (start[p, n], end[p, n]) == (valid_pos[s], valid_pos[e]), dec
        else:
            assert start[p, n] == -1 and end[p, n] == -1
    # the random corpus must exercise both outcomes substantially
    assert 0.25 * P * N < n_answers < 0.9 * P * N, n_answers


def test_sentencepiece_style_tokenizer():
    """A Metaspace ("▁") BPE: token bytes come from the generic anchor-decoding path, not the byte alphabet."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(_math_texts()[:200], vocab_size=1000, special_tokens=["<unk>", "<eos>"],
                           show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, eos_token="<eos>", unk_token="<unk>")
    tb = token_bytes(tok)
    assert tb[tok.convert_tokens_to_ids("▁and")] == b" and"  # the leading space survives
    ex = AnswerExtractor.from_tokenizer(tok)
    rng = np.random.default_rng(5)
    ascii_frags = [f for f in FRAGS if f.isascii()]
    texts = ["".join(ascii_frags[i] for i in rng.integers(0, len(ascii_frags), size=int(rng.integers(0, 10))))
             + rng.choice(["", " \\boxed{ 35 }.", "\\fbox{\\frac{1}{2}}$"]) for _ in range(P0 * N0)]
    tokens, mask, kept = batch_encode(tok, texts, P0, N0, T0, tok.eos_token_id)
    aid = np.asarray(ex.extract(tokens, mask)[0]).reshape(-1)
    ref = [answer_id_from_text(tok.decode(k, skip_special_tokens=True)) for k in kept]
    np.testing.assert_array_equal(aid, ref)
    assert sum(r >= 0 for r in ref) > 200


def test_char_level_and_line_marker(bpes):
    """A char-level vocabulary (every marker spans 7 tokens) and an "Answer:" marker up to newline/EOS."""
    chars = sorted(set("".join(FRAGS) + "abcdefghijklmnopqrstuvwxyz0123456789 .:"))
    vocab = ["<eos>"] + chars
    enc = {c: i for i, c in enumerate(vocab)}
    rng = np.random.default_rng(2)
    texts = random_texts(rng, 512)
    T = 64  # longer texts are cut: the reference is the decoded kept tokens, so cuts are fine
    tokens = np.zeros((len(texts), T), np.int32)
    mask = np.zeros_like(tokens)
    for r, t in enumerate(texts):
        ids = [enc[c] for c in t][:T]
        tokens[r, : len(ids)] = ids
        mask[r, : len(ids)] = 1
    for marker, mode in [(("\\boxed{", "\\fbox{"), "braces"), ("Answer:", "line")]:
        strings = [""] + chars  # "<eos>" is special: empty
        ex = AnswerExtractor.from_token_strings(strings, marker=marker)
        assert ex.mode == mode
        aid = np.asarray(ex.extract(tokens, mask)[0])
        decoded = ["".join(vocab[i] for i in tokens[r][mask[r] == 1]) for r in range(len(texts))]
        ref = [ex.host_reference(d) for d in decoded]
        np.testing.assert_array_equal(aid, ref)
        assert sum(x >= 0 for x in ref) > 50
    # line mode on the BPE: content runs to the newline, or to the end (EOS) without one
    tok = bpes["gpt2"]
    ex = AnswerExtractor.from_tokenizer(tok, marker="Answer:")
    texts = ["Reasoning...\nAnswer: 42\nDone", "Answer: 1\nAnswer:  \\frac{1}{2} ", "no marker", "Answer:\n"]
    tokens, mask, _ = batch_encode(tok, texts, P0, N0, T0, tok.eos_token_id)
    aid, start, end = (np.asarray(x)[0, :4] for x in ex.extract(tokens, mask))
    assert list(aid) == [answer_hash("42"), answer_hash("\\frac{1}{2}"), -1, -1]
    assert end[1] == int(mask[0, 1].sum()) - 1  # ran to the last valid token (EOS)


def test_same_answer_same_id_across_tokenisations(bpes, extractors):
    """The id depends on the answer text only, not on how the tokenizer split it."""
    a, b = bpes["gpt2"], bpes["spaces"]
    texts = ["Thus \\boxed{35}.", "so $\\boxed{ 35 }$", "\\boxed{3 5}", "\\fbox{35}", "x \\boxed{\\boxed{35}}"]
    ids = []
    for name, tok in (("gpt2", a), ("spaces", b)):
        tokens, mask, _ = batch_encode(tok, texts, P0, N0, T0, tok.eos_token_id)
        ids.append(np.asarray(extractors[name].extract(tokens, mask)[0])[0, : len(texts)])
    assert np.all(ids[0] == answer_hash("35")) and np.all(ids[1] == answer_hash("35"))
    # the splits really differ between the two tokenizers
    assert a.tokenize("\\boxed{35}") != b.tokenize("\\boxed{35}")


def test_hash_equal_and_distinct():
    rng = np.random.default_rng(3)
    alphabet = list("0123456789+-/\\{}()^.,xyπ√abc") + ["\\frac", "\\sqrt"]
    strings = set()
    while len(strings) < 60_000:
        k = int(rng.integers(1, 12))
        strings.add("".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=k)))
    strings = sorted(strings)
    ids = np.array([answer_hash(s) for s in strings], np.int64)
    assert ids.min() >= 0 and ids.max() < 2**31
    assert all(answer_hash(s) == i for s, i in zip(strings[:1000], ids[:1000]))  # deterministic
    # whitespace-insensitive by definition; otherwise distinct strings give distinct ids:
    # 100k random distinct pairs, expected number of collisions 100k / 2^31 ~ 5e-5
    a = rng.integers(0, len(strings), size=100_000)
    b = rng.integers(0, len(strings), size=100_000)
    distinct = a != b
    assert np.sum(ids[a[distinct]] == ids[b[distinct]]) == 0
    # and within groups of 64 (what voting compares): no collision in 2000 random groups
    for _ in range(2000):
        g = ids[rng.choice(len(strings), size=64, replace=False)]
        assert len(set(g.tolist())) == 64
    assert answer_hash(" 3 ") == answer_hash("3") and answer_hash("  ") == -1 and answer_hash(None) == -1


def test_limitations_and_edge_cases(bpes, extractors):
    tok, ex = bpes["gpt2"], extractors["gpt2"]
    texts = ["\\boxed {5}", "\\boxed 5", "\\boxed{1} then \\boxed{2", "\\boxed{}", "\\boxed{\\{1,2\\}}",
             "\\boxed{a}\\fbox{b}", "", "\\boxed{" + "{" * 9 + "x" + "}" * 9 + "}"]
    tokens, mask, _ = batch_encode(tok, texts, P0, N0, T0, tok.eos_token_id)
    aid = list(np.asarray(ex.extract(tokens, mask)[0])[0, : len(texts)])
    assert aid == [-1, -1, -1, -1, answer_hash("\\{1,2\\}"), answer_hash("b"), -1, answer_hash("{" * 9 + "x" + "}" * 9)]
    assert [extract_boxed(t) for t in texts] == \
        [None, None, None, None, "\\{1,2\\}", "b", None, "{" * 9 + "x" + "}" * 9]


def test_sharded_extract_and_span_mask(bpes, extractors):
    tok, ex = bpes["spaces"], extractors["spaces"]
    rng = np.random.default_rng(4)
    P, N, T = P0, N0, T0
    tokens, mask, _ = batch_encode(tok, random_texts(rng, P * N), P, N, T, tok.eos_token_id)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    sh = NamedSharding(mesh, PS("data", None, None))
    out_sharded = ex.extract(jax.device_put(tokens, sh), jax.device_put(mask, sh))
    assert len(out_sharded[0].sharding.device_set) == 8
    out = ex.extract(tokens, mask)
    for a, b in zip(out_sharded, out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m = np.asarray(span_mask(out[1], out[2], T))
    s, e = np.asarray(out[1]), np.asarray(out[2])
    for p in range(P):
        for n in range(N):
            expect = np.zeros(T, bool)
            if s[p, n] >= 0:
                expect[s[p, n]: e[p, n] + 1] = True
            np.testing.assert_array_equal(m[p, n], expect)


def test_bad_inputs():
    ex = AnswerExtractor.from_token_strings(["a", "{", "}"])
    with pytest.raises(ValueError, match="same shape"):
        ex.extract(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        ex.extract(jnp.zeros((2, 3), jnp.float32), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="must end with"):
        AnswerExtractor.from_token_strings(["a"], marker="Answer:", mode="braces")
    with pytest.raises(TypeError, match="fast tokenizer"):
        token_bytes(object())


def test_canonical_answer_ids_and_vote():
    groups = [
        ["0.5", "\\frac12", "1/2", None, "3", "x=3", "\\dfrac{1}{2}", "4"],
        ["\\text{(A)}", "A", "(B)", "  ", "B", "B", "\\textbf{A}", "C"],
        ["1,000", "1000", "10^3", "1000.0", "999", "\\$1000", "1000 dollars", None],
        ["[1,2)", "[1, 2)", "(1,2]", "\\{1,2\\}", "\\{2,1\\}", "x^2+2x", "x(x+2)", "2x+x^2"],
    ]
    ids = canonical_answer_ids(groups, timeout_s=5.0, processes=2)
    assert ids.dtype == np.int32 and ids.shape == (4, 8)
    assert ids[0].tolist() == [0, 0, 0, -1, 4, 4, 0, 7]
    assert ids[1].tolist() == [0, 0, 2, -1, 2, 2, 0, 7]
    assert ids[2].tolist() == [0, 0, 0, 0, 4, 0, 0, -1]  # 10^3 joins through math-verify
    assert ids[3].tolist() == [0, 0, 2, 3, 3, 5, 5, 5]
    vote = majority_vote(ids)
    assert np.asarray(vote.majority_id).tolist() == [0, 0, 0, 5]
    np.testing.assert_allclose(np.asarray(vote.majority_ratio), [4 / 8, 3 / 8, 6 / 8, 3 / 8], rtol=1e-6)
    # without math-verify only normal forms merge: 10^3 and x(x+2) stay apart
    ids_fast = canonical_answer_ids(groups, use_math_verify=False)
    assert ids_fast[2].tolist() == [0, 0, 2, 0, 4, 0, 0, -1]
    assert ids_fast[3][5:].tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="group 1 has 2 answers"):
        canonical_answer_ids([["1", "2", "3"], ["1", "2"]])


def test_decode_answers_feeds_canonicaliser(bpes):
    tok = bpes["gpt2"]
    texts = ["so \\boxed{0.5}.", "hence $\\boxed{\\frac{1}{2}}$", "\\boxed{3", "\\boxed{2}"]
    tokens, mask, _ = batch_encode(tok, texts, 1, 4, 32, tok.eos_token_id)
    strings = decode_answers(tok, tokens, mask)
    assert strings == [["0.5", "\\frac{1}{2}", None, "2"]]
    assert canonical_answer_ids(strings, use_math_verify=False).tolist() == [[0, 0, -1, 3]]
