"""Answer extraction on device from token ids, answer ids for voting, and the host-side canonicaliser.

On device (jittable, no host round trip):
    ex = AnswerExtractor.from_tokenizer(tokenizer)                  # tables built once on the host
    answer_id, start, end = ex.extract(tokens, mask)                # [P, N, T] -> [P, N] x 3

What `extract` computes, per response (the valid tokens only, in order; mask 0 tokens are skipped):
  * the response is read as the concatenation of its tokens' BYTES (UTF-8 for byte-level BPE; see
    `token_bytes`); special tokens count as empty;
  * "braces" mode (markers ending in "{", default ``\\boxed{`` and ``\\fbox{``): the LAST marker occurrence
    (largest end position, so in ``\\boxed{\\boxed{3}}`` the inner one), and its content up to the matching
    "}" by raw brace counting ("\\{" counts as a brace, as in MATH's ``last_boxed_only_string``). Markers may
    span any number of tokens, and braces may share a token with other characters ("}$", "{\\", "}}",
    "{3}"): the tables work per byte inside a token. An unclosed last group gives no answer (even if an
    earlier group was closed);
  * "line" mode (e.g. ``Answer:``): the content after the last marker, up to the first "\\n" or the end of
    the valid tokens;
  * answer_id = ``answer_hash(content)``: a hash of the content's bytes with ASCII whitespace removed, so the
    same answer string gets the same id however it was tokenised ("{3" + "5}" vs "{" + "35" + "}") and
    "\\boxed{ 3 }" == "\\boxed{3}". -1 when there is no marker, the group is unclosed, or the content is blank;
  * start / end = token indices (inclusive) of the tokens holding the content's opening and closing
    delimiters (the marker's last byte and the matching "}" / the "\\n"; in line mode without a newline,
    end = the last valid token). -1 with no answer. ``span_mask`` turns them into a [.., T] mask.
This is exactly ``answer_id_from_text(decoded_text)`` with ``extract_after_marker`` on the host, whenever
the decoded text is the concatenation of the per-token byte strings (true for byte-level BPE; see
`token_bytes` for the others); the tests check that on thousands of random responses.

Hash: h = sum_i v(b_i) * B^(m-1-i) mod 2^32 over the m non-whitespace bytes, v(b) = an odd-multiplier mix of
the byte value, then id = fmix32(h xor fmix32(m)) & 0x7fffffff (31 bits, >= 0). Equal contents always get
equal ids. Different contents collide with probability ~2^-31 per pair for non-adversarial strings
(polynomial hashes mod 2^32 have known structured collisions, e.g. Thue-Morse strings of length >= 2^11,
which are not answers). Ids are only ever compared inside one group (N <= a few hundred responses: ~1e-6
chance of any collision per group of 64); across a whole dataset birthday collisions are expected and
harmless. Vote with them, never use them as global keys.

Limitations (stated precisely, and tested where they matter):
  * tokenizers whose pieces are not byte strings (SentencePiece "▁" pieces): `token_bytes` decodes each
    token after an anchor token to recover leading spaces; pieces that are partial UTF-8 sequences without
    byte fallback cannot be recovered, so answers with such characters may hash differently from the host.
  * ``\\boxed 5`` (no braces) and ``\\boxed {5}`` (space before the brace) are not recognised, on host and
    device alike.
  * out-of-range token ids (>= vocabulary size of the tables) are clipped to the last id.

On the host:
    extract_boxed(text) -> str | None                            (re-exported from grading.py)
    canonical_answer_ids(answer_strings) -> np.ndarray [P, N]    ids of mathematical equivalence classes
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from urlvr_jax.rewards.grading import (
    BOX_MARKERS,
    DEFAULT_TIMEOUT_S,
    cluster_answers,
    extract_after_marker,
    extract_boxed,
)

__all__ = [
    "AnswerExtractor", "extract_boxed", "extract_after_marker", "answer_hash", "answer_id_from_text",
    "canonical_answer_ids", "span_mask", "token_bytes", "decode_answers", "BOX_MARKERS",
]

_B = 0x5BD1E995  # odd multiplier of the polynomial hash (invertible mod 2^32)
_WS = frozenset(b" \t\n\r\x0b\x0c")
_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------
# The hash, on the host (reference) and on device.
# ----------------------------------------------------------------------------------------------------
def _byte_value_table() -> np.ndarray:
    """v(b) for b in 0..255: nonzero; 0 marks whitespace (skipped by the hash)."""
    b = np.arange(256, dtype=np.uint64)
    v = ((b + 1) * np.uint64(0x9E3779B1) + np.uint64(0x7F4A7C15)) & np.uint64(_M32)
    v[v == 0] = 1
    for w in _WS:
        v[w] = 0
    return v.astype(np.uint32)


_BYTE_VALUE = _byte_value_table()


def _fmix32_py(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def _fmix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _poly_hash_bytes(data: bytes) -> tuple[int, int]:
    h, m = 0, 0
    for byte in data:
        v = int(_BYTE_VALUE[byte])
        if v:
            h = (h * _B + v) & _M32
            m += 1
    return h, m


def answer_hash(content: Optional[str | bytes]) -> int:
    """The answer id of a content string (host reference of the device hash); -1 for None / blank."""
    if content is None:
        return -1
    data = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else bytes(content)
    h, m = _poly_hash_bytes(data)
    if m == 0:
        return -1
    return _fmix32_py(h ^ _fmix32_py(m)) & 0x7FFFFFFF


def answer_id_from_text(text: str | bytes, markers: Sequence[str] = BOX_MARKERS, mode: str = "braces") -> int:
    """Host reference of `AnswerExtractor.extract` on a decoded response.

    Pass bytes (the concatenated token bytes) when the response may end inside a multi-byte character
    (truncation): they are read with "surrogateescape", so every byte survives as the device sees it.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    return answer_hash(extract_after_marker(text, markers, mode))


# ----------------------------------------------------------------------------------------------------
# Per-token byte strings.
# ----------------------------------------------------------------------------------------------------
def _gpt2_byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the alphabet of byte-level BPE vocabularies)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a HF fast tokenizer (or the object itself)."""
    if hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer.backend_tokenizer
    if hasattr(tokenizer, "_tokenizer") and hasattr(tokenizer._tokenizer, "to_str"):
        return tokenizer._tokenizer
    if hasattr(tokenizer, "to_str") and hasattr(tokenizer, "id_to_token"):
        return tokenizer
    return None


def _is_byte_level(decoder: Optional[dict]) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(d) for d in decoder.get("decoders", []) or [])


def token_bytes(tokenizer) -> list[bytes]:
    """The byte string of every token id in 0..V-1 (V includes added tokens); b"" for special tokens.

    Byte-level BPE (GPT-2, Qwen, Llama-3, SmolLM2 ...): the exact bytes, by inverting the byte-to-unicode
    alphabet, so the concatenation of a response's token bytes is exactly its UTF-8 text.
    Other tokenizers (SentencePiece-style "▁" / Metaspace, WordLevel, ...): each token is decoded after an
    anchor token and the anchor's text is cut off (this keeps leading spaces that decode([i]) would drop);
    "<0xHH>" byte-fallback pieces become that byte. See the module docstring for what cannot be recovered.
    Accepts a HF tokenizer (fast) or a `tokenizers.Tokenizer`.
    """
    backend = _backend(tokenizer)
    if backend is None:
        raise TypeError(
            f"token_bytes: expected a transformers fast tokenizer or a tokenizers.Tokenizer, got "
            f"{type(tokenizer).__name__}; build one with PreTrainedTokenizerFast(tokenizer_object=...) or use "
            "AnswerExtractor.from_token_bytes(list_of_bytes)")
    spec = json.loads(backend.to_str())
    vocab_size = backend.get_vocab_size(with_added_tokens=True)
    if hasattr(tokenizer, "__len__") and not hasattr(tokenizer, "to_str"):
        vocab_size = max(vocab_size, len(tokenizer))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    out: list[bytes] = [b""] * vocab_size
    if _is_byte_level(spec.get("decoder")):
        dec = _gpt2_byte_decoder()
        for i in range(vocab_size):
            if i in added:
                out[i] = b"" if added[i].get("special") else added[i]["content"].encode("utf-8")
                continue
            piece = backend.id_to_token(i)
            if piece is None:
                continue
            try:
                out[i] = bytes(dec[c] for c in piece)
            except KeyError:  # a piece outside the byte alphabet: take its text
                out[i] = piece.encode("utf-8")
        return out
    # Generic path: decode [anchor, i] and cut the anchor's text.
    anchor = None
    for i in range(vocab_size):
        if i in added:
            continue
        t = backend.decode([i], skip_special_tokens=False)
        if t and t.isalnum() and backend.decode([i, i], skip_special_tokens=False) == t + t:
            anchor, base = i, t
            break
    ids = [i for i in range(vocab_size) if not (i in added and added[i].get("special"))]
    texts = backend.decode_batch([[anchor, i] if anchor is not None else [i] for i in ids],
                                 skip_special_tokens=False)
    for i, t in zip(ids, texts):
        piece = backend.id_to_token(i) or ""
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                out[i] = bytes([int(piece[3:5], 16)])
                continue
            except ValueError:
                pass
        if anchor is not None and t.startswith(base):
            t = t[len(base):]
        out[i] = t.encode("utf-8")
    return out


# ----------------------------------------------------------------------------------------------------
# The device extractor.
# ----------------------------------------------------------------------------------------------------
def _build_dfa(markers: Sequence[bytes]):
    """Aho-Corasick automaton over bytes: (delta [S, 256] int, accept [S] bool)."""
    goto = [{}]
    out = [False]
    for m in markers:
        s = 0
        for b in m:
            if b not in goto[s]:
                goto.append({})
                out.append(False)
                goto[s][b] = len(goto) - 1
            s = goto[s][b]
        out[s] = True
    n = len(goto)
    delta = np.zeros((n, 256), dtype=np.int64)
    fail = [0] * n
    order = []
    for b, s in goto[0].items():
        delta[0, b] = s
        order.append(s)
    i = 0
    while i < len(order):  # BFS: complete the transition function with failure links
        s = order[i]
        i += 1
        out[s] = out[s] or out[fail[s]]
        for b in range(256):
            if b in goto[s]:
                t = goto[s][b]
                fail[t] = delta[fail[s], b]
                delta[s, b] = t
                order.append(t)
            else:
                delta[s, b] = delta[fail[s], b]
    return delta, np.array(out, dtype=bool)


@dataclasses.dataclass(frozen=True)
class AnswerExtractor:
    """Per-vocabulary tables for on-device answer extraction (a pytree: pass it into jitted functions).

    Array fields (V = vocabulary size, S = automaton states, C = total bytes of all tokens, L = max bytes of
    one token):
      trans [V, S] int8/int16   automaton state after the token, entered in state s
      match_pos [V, S] int16/32 byte index (in the token) of the last marker completion, -1 if none
      net [V] int32             (#open - #close) bytes of the token; open = "{" (braces), close = "}" / "\\n"
      min_prefix [V] int32      min over the token's prefixes (incl. empty) of the running depth change (<= 0)
      tok_hash [V] uint32       polynomial hash of the token's non-whitespace bytes
      tok_pow [V] uint32        B ** tok_count
      tok_count [V] int32       number of non-whitespace bytes
      offsets [V] int32, lengths [V] int32, flat_val [C] uint32 (v(b), 0 = whitespace), flat_delta [C] int8
      pow_table [L + 1] uint32  B ** k
    Static: markers (bytes), mode ("braces" | "line"), max_len (L).
    """

    trans: jax.Array
    match_pos: jax.Array
    net: jax.Array
    min_prefix: jax.Array
    tok_hash: jax.Array
    tok_pow: jax.Array
    tok_count: jax.Array
    offsets: jax.Array
    lengths: jax.Array
    flat_val: jax.Array
    flat_delta: jax.Array
    pow_table: jax.Array
    markers: tuple = dataclasses.field(metadata=dict(static=True), default=())
    mode: str = dataclasses.field(metadata=dict(static=True), default="braces")
    max_len: int = dataclasses.field(metadata=dict(static=True), default=1)

    # ---------------------------------------------------------------- construction (host, once)
    @classmethod
    def from_tokenizer(cls, tokenizer, marker: str | Sequence[str] = BOX_MARKERS,
                       mode: Optional[str] = None) -> "AnswerExtractor":
        """Tables for `tokenizer` (HF fast tokenizer or tokenizers.Tokenizer).

        marker: one marker or several (default ``\\boxed{`` and ``\\fbox{``). mode: "braces" (content up to the
        matching "}"; every marker must end with "{") or "line" (content up to the next newline / the end);
        default: "braces" if the markers end with "{", else "line" (e.g. marker="Answer:").
        """
        return cls.from_token_bytes(token_bytes(tokenizer), marker, mode)

    @classmethod
    def from_token_strings(cls, strings: Sequence[str], marker: str | Sequence[str] = BOX_MARKERS,
                           mode: Optional[str] = None) -> "AnswerExtractor":
        """Tables from the text of every token id (UTF-8 encoded)."""
        return cls.from_token_bytes([s.encode("utf-8") for s in strings], marker, mode)

    @classmethod
    def from_token_bytes(cls, pieces: Sequence[bytes], marker: str | Sequence[str] = BOX_MARKERS,
                         mode: Optional[str] = None) -> "AnswerExtractor":
        """Tables from the byte string of every token id (see `token_bytes`)."""
        markers = (marker,) if isinstance(marker, str) else tuple(marker)
        if not markers or any(not m for m in markers):
            raise ValueError(f"AnswerExtractor: markers must be non-empty strings, got {markers!r}")
        if mode is None:
            mode = "braces" if all(m.endswith("{") for m in markers) else "line"
        if mode not in ("braces", "line"):
            raise ValueError(f"AnswerExtractor: mode must be 'braces' or 'line', got {mode!r}")
        if mode == "braces" and not all(m.endswith("{") for m in markers):
            raise ValueError(f"AnswerExtractor: in 'braces' mode every marker must end with '{{', got {markers!r};"
                             " use mode='line' for markers like 'Answer:'")
        if len(pieces) == 0:
            raise ValueError("AnswerExtractor: empty vocabulary")
        mbytes = [m.encode("utf-8") for m in markers]
        delta, accept = _build_dfa(mbytes)
        n_states = delta.shape[0]
        V = len(pieces)
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        L = max(1, int(lengths.max()))
        # Padded byte matrix, processed position by position over the tokens still that long (sorted).
        order = np.argsort(-lengths, kind="stable")
        sorted_len = lengths[order]
        mat = np.zeros((V, L), dtype=np.uint8)
        for r, i in enumerate(order):
            if lengths[i]:
                mat[r, : lengths[i]] = np.frombuffer(pieces[i], dtype=np.uint8)
        state = np.tile(np.arange(n_states, dtype=np.int64), (V, 1))  # [V(sorted), S]
        mpos = np.full((V, n_states), -1, dtype=np.int64)
        if mode == "braces":
            dval = np.zeros(256, dtype=np.int64)
            dval[ord("{")] = 1
            dval[ord("}")] = -1
        else:
            dval = np.zeros(256, dtype=np.int64)
            dval[ord("\n")] = -1
        depth = np.zeros(V, dtype=np.int64)
        minpre = np.zeros(V, dtype=np.int64)
        h = np.zeros(V, dtype=np.uint64)
        cnt = np.zeros(V, dtype=np.int64)
        for k in range(L):
            a = int((sorted_len > k).sum())  # rows [0, a) of the length-sorted order are longer than k
            if a == 0:
                break
            col = mat[:a, k].astype(np.int64)
            state[:a] = delta[state[:a], col[:, None]]
            hit = accept[state[:a]]
            mpos[:a][hit] = k
            depth[:a] += dval[col]
            minpre[:a] = np.minimum(minpre[:a], depth[:a])
            v = _BYTE_VALUE[col].astype(np.uint64)
            nz = v != 0
            h[:a] = np.where(nz, (h[:a] * np.uint64(_B) + v) & np.uint64(_M32), h[:a])
            cnt[:a] += nz
        inv = np.empty(V, dtype=np.int64)
        inv[order] = np.arange(V)
        state, mpos, depth, minpre, h, cnt = (x[inv] for x in (state, mpos, depth, minpre, h, cnt))
        tok_pow = np.array([pow(_B, int(c), 1 << 32) for c in cnt], dtype=np.uint64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = np.frombuffer(b"".join(pieces), dtype=np.uint8) if lengths.sum() else np.zeros(1, np.uint8)
        flat_val = _BYTE_VALUE[flat]
        flat_delta = dval[flat].astype(np.int8)
        if flat.size == 0:
            flat_val, flat_delta = np.zeros(1, np.uint32), np.zeros(1, np.int8)
        pow_table = np.array([pow(_B, k, 1 << 32) for k in range(L + 1)], dtype=np.uint64)
        sdt = np.int8 if n_states <= 127 else np.int16
        pdt = np.int16 if L < 32767 else np.int32
        return cls(
            trans=jnp.asarray(state.astype(sdt)),
            match_pos=jnp.asarray(mpos.astype(pdt)),
            net=jnp.asarray(depth.astype(np.int32)),
            min_prefix=jnp.asarray(minpre.astype(np.int32)),
            tok_hash=jnp.asarray(h.astype(np.uint32)),
            tok_pow=jnp.asarray(tok_pow.astype(np.uint32)),
            tok_count=jnp.asarray(cnt.astype(np.int32)),
            offsets=jnp.asarray(offsets.astype(np.int32)),
            lengths=jnp.asarray(lengths.astype(np.int32)),
            flat_val=jnp.asarray(flat_val.astype(np.uint32)),
            flat_delta=jnp.asarray(flat_delta),
            pow_table=jnp.asarray(pow_table.astype(np.uint32)),
            markers=tuple(mbytes),
            mode=mode,
            max_len=L,
        )

    @property
    def vocab_size(self) -> int:
        return int(self.net.shape[0])

    def host_reference(self, text: str | bytes) -> int:
        """The host answer id that `extract` must produce for a response whose decoded text is `text`."""
        return answer_id_from_text(text, [m.decode("utf-8") for m in self.markers], self.mode)

    # ---------------------------------------------------------------- extraction (device, jittable)
    def extract(self, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(answer_id, start, end), each int32 of shape tokens.shape[:-1]; see the module docstring.

        tokens: [..., T] integer token ids (typically [P, N, T]); mask: [..., T], nonzero = valid token.
        """
        return extract_answers(self, tokens, mask)


jax.tree_util.register_dataclass(
    AnswerExtractor,
    data_fields=["trans", "match_pos", "net", "min_prefix", "tok_hash", "tok_pow", "tok_count", "offsets",
                 "lengths", "flat_val", "flat_delta", "pow_table"],
    meta_fields=["markers", "mode", "max_len"],
)


def _window(ex: AnswerExtractor, tok: jax.Array):
    """Bytes of one token per row: (val [..., L] uint32, delta [..., L] int32, inside [..., L] bool)."""
    k = jnp.arange(ex.max_len, dtype=jnp.int32)
    idx = ex.offsets[tok][..., None] + k
    idx = jnp.clip(idx, 0, ex.flat_val.shape[0] - 1)
    inside = k < ex.lengths[tok][..., None]
    val = jnp.where(inside, ex.flat_val[idx], jnp.uint32(0))
    dlt = jnp.where(inside, ex.flat_delta[idx].astype(jnp.int32), 0)
    return val, dlt, inside


def _piece_hash(ex: AnswerExtractor, val: jax.Array, piece: jax.Array):
    """Polynomial hash and non-whitespace count of the bytes of `val` selected by `piece` ([..., L])."""
    nz = piece & (val != 0)
    cnt = jnp.sum(nz, axis=-1, dtype=jnp.int32)
    after = cnt[..., None] - jnp.cumsum(nz, axis=-1, dtype=jnp.int32)  # non-ws bytes after position k
    terms = jnp.where(nz, val * ex.pow_table[jnp.clip(after, 0, ex.max_len)], jnp.uint32(0))
    return jnp.sum(terms, axis=-1, dtype=jnp.uint32), cnt


@jax.jit
def extract_answers(ex: AnswerExtractor, tokens: jax.Array, mask: jax.Array):
    """Functional form of `AnswerExtractor.extract` (same arguments and results). Jitted (eager execution
    dispatches hundreds of small ops); inside a larger jitted step it is simply inlined.

    Cost: one sequential scan over T of a [...]-shaped table lookup, then O(T + L) vectorised work per
    response. CPU (2 busy cores), [64, 8, 7168]: 0.4 s per call, ~5 s to compile, < 0.5 GB peak."""
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    if tokens.ndim < 1 or tokens.shape != mask.shape:
        raise ValueError(f"extract_answers: tokens {tokens.shape} and mask {mask.shape} must have the same "
                         "shape [..., T] (e.g. [P, N, T]); pass the response tokens, not the prompt")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"extract_answers: tokens must be integer token ids, got dtype {tokens.dtype}")
    T = tokens.shape[-1]
    valid = mask != 0
    tok = jnp.clip(tokens.astype(jnp.int32), 0, ex.vocab_size - 1)
    t_idx = jnp.arange(T, dtype=jnp.int32)

    # 1. marker automaton: the state entering each token. A sequential scan over T with a [...]-shaped
    # carry: O(T) tiny steps, O(size of the batch) memory. (A parallel prefix scan over function
    # compositions needs [..., T, S] arrays per level and compiled ~3x slower; memory matters more here.)
    trans = ex.trans.astype(jnp.int32)

    def step(state, xs):
        tok_t, valid_t = xs
        new = jnp.where(valid_t, trans[tok_t, state], state)  # invalid tokens leave the state alone
        return new, state

    lead = tok.shape[:-1]
    _, state_in = jax.lax.scan(step, jnp.zeros(lead, jnp.int32),
                               (jnp.moveaxis(tok, -1, 0), jnp.moveaxis(valid, -1, 0)), unroll=8)
    state_in = jnp.moveaxis(state_in, 0, -1)  # [..., T]
    mpos = ex.match_pos[tok, state_in].astype(jnp.int32)
    mpos = jnp.where(valid, mpos, -1)
    t_star = jnp.max(jnp.where(mpos >= 0, t_idx, -1), axis=-1)
    found = t_star >= 0
    ts = jnp.maximum(t_star, 0)
    c_star = jnp.take_along_axis(mpos, ts[..., None], axis=-1)[..., 0]
    tok_s = jnp.take_along_axis(tok, ts[..., None], axis=-1)[..., 0]

    # 2. inside the start token: bytes after the marker, depth starting at 1
    k = jnp.arange(ex.max_len, dtype=jnp.int32)
    val_s, dlt_s, in_s = _window(ex, tok_s)
    after_marker = in_s & (k > c_star[..., None])
    d_s = 1 + jnp.cumsum(jnp.where(after_marker, dlt_s, 0), axis=-1)
    hit_s = after_marker & (d_s <= 0)
    close_in_start = jnp.any(hit_s, axis=-1)
    e_s = jnp.min(jnp.where(hit_s, k, ex.max_len), axis=-1)
    depth_after_s = d_s[..., -1]

    # 3. later tokens: first token whose running depth reaches 0
    later = valid & (t_idx > ts[..., None])
    net = jnp.where(later, ex.net[tok], 0)
    d_before = depth_after_s[..., None] + jnp.cumsum(net, axis=-1) - net
    cand = later & (d_before + ex.min_prefix[tok] <= 0) & ~close_in_start[..., None]
    t_e = jnp.min(jnp.where(cand, t_idx, T), axis=-1)
    close_later = t_e < T
    te = jnp.minimum(t_e, T - 1)
    tok_e = jnp.take_along_axis(tok, te[..., None], axis=-1)[..., 0]
    d0_e = jnp.take_along_axis(d_before, te[..., None], axis=-1)[..., 0]
    val_e, dlt_e, in_e = _window(ex, tok_e)
    d_e = d0_e[..., None] + jnp.cumsum(dlt_e, axis=-1)
    e_e = jnp.min(jnp.where(in_e & (d_e <= 0), k, ex.max_len), axis=-1)

    line_mode = ex.mode == "line"
    run_to_end = ~close_in_start & ~close_later
    closed = close_in_start | close_later | (run_to_end if line_mode else False)

    # 4. hash of the content: start piece + whole interior tokens + end piece
    start_piece = after_marker & jnp.where(close_in_start[..., None], k < e_s[..., None], True)
    h_s, m_s = _piece_hash(ex, val_s, start_piece)
    end_piece = in_e & (k < e_e[..., None]) & close_later[..., None]
    h_e, m_e = _piece_hash(ex, val_e, end_piece)
    interior = later & jnp.where(run_to_end[..., None], True, t_idx < t_e[..., None]) & ~close_in_start[..., None]
    h_t = jnp.where(interior, ex.tok_hash[tok], jnp.uint32(0))
    p_t = jnp.where(interior, ex.tok_pow[tok], jnp.uint32(1))
    m_int = jnp.sum(jnp.where(interior, ex.tok_count[tok], 0), axis=-1)
    # suffix products: weight of token t = prod_{u > t} p_u (uint32 arithmetic wraps mod 2^32)
    incl = jnp.flip(jnp.cumprod(jnp.flip(p_t, -1), axis=-1, dtype=jnp.uint32), -1)
    excl = jnp.concatenate([incl[..., 1:], jnp.ones_like(incl[..., :1])], axis=-1)
    h_int = jnp.sum(h_t * excl, axis=-1, dtype=jnp.uint32)
    p_int = incl[..., 0]
    pow_e = ex.pow_table[jnp.clip(m_e, 0, ex.max_len)]
    h = h_s * p_int * pow_e + h_int * pow_e + h_e
    m = m_s + m_int + m_e
    hid = (_fmix32(h ^ _fmix32(m.astype(jnp.uint32))) & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32)

    ok = found & closed & (m > 0)
    answer_id = jnp.where(ok, hid, -1)
    last_valid = jnp.max(jnp.where(valid, t_idx, -1), axis=-1)
    end = jnp.where(close_in_start, ts, jnp.where(close_later, te, last_valid))
    return answer_id, jnp.where(ok, ts, -1), jnp.where(ok, end, -1)


def span_mask(start: jax.Array, end: jax.Array, T: int) -> jax.Array:
    """[..., T] bool mask of tokens start..end inclusive (all False where start == -1)."""
    t = jnp.arange(T)
    return (t >= start[..., None]) & (t <= end[..., None]) & (start[..., None] >= 0)


# ----------------------------------------------------------------------------------------------------
# Host side: decoding for the canonicaliser, and the canonicaliser.
# ----------------------------------------------------------------------------------------------------
def decode_answers(tokenizer, tokens, mask, markers: Sequence[str] = BOX_MARKERS,
                   mode: str = "braces") -> list[list[Optional[str]]]:
    """Host: decode every response's valid tokens and extract its answer string ([P][N], None = no answer).

    The input of `canonical_answer_ids`. tokens / mask: [P, N, T] arrays (NumPy or jax).
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    if tokens.ndim != 3 or tokens.shape != mask.shape:
        raise ValueError(f"decode_answers: tokens {tokens.shape} and mask {mask.shape} must both be [P, N, T]")
    P, N, _ = tokens.shape
    seqs = [tokens[p, n][mask[p, n] != 0].tolist() for p in range(P) for n in range(N)]
    texts = tokenizer.batch_decode(seqs, skip_special_tokens=True, clean_up_tokenization_spaces=False) \
        if hasattr(tokenizer, "batch_decode") else tokenizer.decode_batch(seqs, skip_special_tokens=True)
    flat = [extract_after_marker(t, markers, mode) for t in texts]
    return [flat[p * N:(p + 1) * N] for p in range(P)]


def canonical_answer_ids(answer_strings: Sequence[Sequence[Optional[str]]], timeout_s: float = DEFAULT_TIMEOUT_S,
                         processes: Optional[int] = None, use_math_verify: bool = True) -> np.ndarray:
    """Host: [P][N] answer strings -> [P, N] int32 ids of mathematical equivalence classes within each group.

    id = index (0..N-1) of the first response of the group whose answer is equivalent; -1 for None/blank.
    Equivalence = equal MATH-normal forms (0.5 == \\frac12 == 1/2, "\\text{(A)}" == "A", "x=3" == "3",
    "1,000" == "1000", units/percent/degree signs dropped) or, if use_math_verify, math-verify equivalence
    (greedy first-representative clustering in bounded-time worker processes; see
    `grading.cluster_answers`). Ids are comparable only within a group: feed them to
    `ensemble.majority_vote` / `ensemble.semantic_cluster` instead of the device hash ids.
    """
    groups = [list(g) for g in answer_strings]
    if not groups:
        return np.zeros((0, 0), dtype=np.int32)
    n = len(groups[0])
    for p, g in enumerate(groups):
        if len(g) != n:
            raise ValueError(f"canonical_answer_ids: group {p} has {len(g)} answers but group 0 has {n}; every "
                             "prompt needs the same number N of responses (use None for a missing answer)")
        for i, s in enumerate(g):
            if s is not None and not isinstance(s, str):
                raise ValueError(f"canonical_answer_ids: answer_strings[{p}][{i}] is {type(s).__name__}, "
                                 "expected str or None")
    labels = cluster_answers(groups, timeout_s=timeout_s, processes=processes, use_math_verify=use_math_verify)
    return np.asarray(labels, dtype=np.int32).reshape(len(groups), n)
