"""The continuous-batching rollout engine (urlvr_jax/rollout/engine.py).

References: transformers `generate` (greedy, token for token); the static sampler (the same tokens for
the same key, sampled, with any number of slots: a token's randomness is keyed by its row and position);
chi-square goodness of fit of the first token (alpha 1e-3, fixed seeds); float64 NumPy for the two-segment
ragged attention and for the per-token statistics (tolerance 2e-5 absolute, as tests/test_sampler.py).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampler import ALPHA, PROMPTS, STATS_ATOL, hf_greedy, numpy_stats
from test_train import tiny_model  # noqa: F401  (the trainer tests' tiny synthetic model, a fixture)
from tiny_models import FAMILIES, left_pad, make_hf_model

from urlvr_jax.models.transformer import ragged_decode_attention
from urlvr_jax.models.weights import load_model, model_from_state_dict, state_dict
from urlvr_jax.rollout.engine import continuous_generate
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids, score
from urlvr_jax.sharding import make_mesh

STAT_NAMES = ("logprob", "entropy", "self_certainty", "top_gap")


def engine(cfg: SamplingConfig, slots: int, block: int = 4, prefill_chunk: int = 0) -> SamplingConfig:
    return dataclasses.replace(cfg, engine="continuous", max_inflight=slots, decode_block=block,
                               prefill_chunk=prefill_chunk)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_hf_model("llama", path, logit_scale=3.0)
    return load_model(path)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_transformers_generate(family, tmp_path):
    """Two slots for three prompts (a row waits for a slot), attention blocks of 4 over 12 new tokens."""
    hf = make_hf_model(family, tmp_path, logit_scale=30.0)
    model = load_model(tmp_path)
    max_new, eos = 12, 3
    ref = hf_greedy(hf, PROMPTS, max_new, eos)
    ids, mask = left_pad(PROMPTS)
    cfg = engine(SamplingConfig(max_new_tokens=max_new, greedy=True), slots=2)
    out, steps = continuous_generate(model, ids, mask, jax.random.key(0), cfg, eos_ids=[eos], pad_id=0)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for i in range(len(PROMPTS)):
        n = int(m[i].sum())
        assert n == int(out.lengths[i]) and (m[i, :n] == 1).all() and (m[i, n:] == 0).all()
        np.testing.assert_array_equal(toks[i, :n], ref[i, :n], err_msg=f"{family} row {i}")
        if n < max_new:
            assert toks[i, n - 1] == eos and not bool(out.truncated[i])
            assert (toks[i, n:] == 0).all() and (ref[i, n:] == 0).all()
        else:
            assert bool(out.truncated[i]) == (toks[i, n - 1] != eos)
    # every step decodes both slots; the steps cover the rows' lengths exactly when rows queue up
    assert int(np.asarray(out.lengths).sum()) <= 2 * int(steps)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=14, temperature=1.0),
                                      SamplingConfig(max_new_tokens=14, temperature=0.7, top_k=5),
                                      SamplingConfig(max_new_tokens=14, temperature=1.2, top_p=0.8)],
                         ids=["temperature", "top_k", "top_p"])
def test_sampled_tokens_equal_static_sampler_for_any_slot_count(llama, sampling):
    """Same key → the same tokens, masks, lengths and (to float rounding) statistics as the static sampler,
    whether one row runs at a time, a few, or all at once: randomness is keyed by (row, position)."""
    ids, mask = left_pad(PROMPTS)
    kw = dict(num_samples=3, eos_ids=[3, 41], pad_id=0)
    ref = generate_ids(llama, ids, mask, jax.random.key(5), sampling, **kw)
    assert 0 < int(np.asarray(ref.truncated).sum()) < 9, "want both EOS-ended and capped rows"
    for slots in (1, 4, 9):
        out = generate_ids(llama, ids, mask, jax.random.key(5), engine(sampling, slots), **kw)
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens), err_msg=f"slots={slots}")
        np.testing.assert_array_equal(np.asarray(out.mask), np.asarray(ref.mask))
        np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
        np.testing.assert_array_equal(np.asarray(out.truncated), np.asarray(ref.truncated))
        for name in STAT_NAMES:
            np.testing.assert_allclose(np.asarray(getattr(out.stats, name)), np.asarray(getattr(ref.stats, name)),
                                       atol=STATS_ATOL, rtol=0, err_msg=f"{name} slots={slots}")
    other = generate_ids(llama, ids, mask, jax.random.key(6), engine(sampling, 4), **kw)
    assert not np.array_equal(np.asarray(other.tokens), np.asarray(ref.tokens)), "the key must matter"


def test_in_loop_stats_equal_scoring_pass_and_float64(llama):
    ids, mask = left_pad(PROMPTS)
    temperature = 0.7
    cfg = engine(SamplingConfig(max_new_tokens=10, temperature=temperature), slots=4, block=3)
    out, _ = continuous_generate(llama, ids, mask, jax.random.key(1), cfg, num_samples=2, eos_ids=[3], pad_id=0)
    scored = score(llama, np.repeat(ids, 2, 0), np.repeat(mask, 2, 0), out.tokens, out.mask,
                   temperature=temperature, chunk=4)
    m = np.asarray(out.mask).astype(bool)
    for name in STAT_NAMES:
        np.testing.assert_allclose(np.asarray(getattr(scored, name)), np.asarray(getattr(out.stats, name)),
                                   atol=STATS_ATOL, rtol=0, err_msg=name)
    for row in range(len(PROMPTS) * 2):
        ref = numpy_stats(llama, PROMPTS[row // 2], np.asarray(out.tokens)[row][m[row]], temperature)
        for name, val in ref.items():
            np.testing.assert_allclose(np.asarray(getattr(out.stats, name))[row][m[row]], val, atol=STATS_ATOL,
                                       rtol=0, err_msg=f"{name} row {row}")
    for name in STAT_NAMES:
        assert np.all(np.asarray(getattr(out.stats, name))[~m] == 0)


def test_stop_sequences_eos_and_row_limits(llama):
    ids, mask = left_pad(PROMPTS)
    greedy = SamplingConfig(max_new_tokens=8, greedy=True)
    free = np.asarray(generate_ids(llama, ids, mask, jax.random.key(0), greedy, eos_ids=[], pad_id=0).tokens)
    stop = [int(free[0, 2]), int(free[0, 3])]
    cfg = engine(greedy, slots=2, block=2)
    out, _ = continuous_generate(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[int(free[1, 0])],
                                 stop_sequences=[stop], pad_id=0)
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths[0] <= 4 and list(toks[0, lengths[0] - 2: lengths[0]]) == stop and not bool(out.truncated[0])
    assert lengths[1] == 1 and toks[1, 0] == free[1, 0] and not bool(out.truncated[1])
    assert (toks[1, 1:] == 0).all()
    # per-row limits: a row stops (truncated) after its limit; the static sampler agrees
    limits = np.asarray([3, 8, 1])
    a = generate_ids(llama, ids, mask, jax.random.key(0), greedy, eos_ids=[], pad_id=0, max_lengths=limits)
    b = generate_ids(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[], pad_id=0, max_lengths=limits)
    for r in (a, b):
        np.testing.assert_array_equal(np.asarray(r.lengths), limits)
        assert np.asarray(r.truncated).all()
        np.testing.assert_array_equal(np.asarray(r.tokens)[0, :3], free[0, :3])
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    with pytest.raises(ValueError, match="max_lengths has shape"):
        generate_ids(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[], pad_id=0, max_lengths=[1, 2])


@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=1, temperature=0.8),
                                 SamplingConfig(max_new_tokens=1, temperature=1.3, top_k=5),
                                 SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.6)],
                         ids=["temperature", "top_k", "top_p"])
def test_sampling_distribution_chi_square(llama, cfg):
    """4,000 samples of one prompt through 64 slots (63 refills of every slot)."""
    from test_sampler import _chi_square_first_token

    pvalue = _chi_square_first_token(llama, PROMPTS[0], engine(cfg, slots=64), n_samples=4000)
    assert pvalue > ALPHA, f"chi-square rejects the sampling distribution (p={pvalue:.2e})"


def test_chunked_prefill_and_sharded_engine_equal_single_device(llama):
    mesh8 = make_mesh({"fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    sharded = model_from_state_dict(llama.cfg, state_dict(llama), mesh=mesh8)
    prompts = PROMPTS + [[4, 4, 4, 4], [9]]
    prompts = prompts + prompts[:3]
    ids, mask = left_pad(prompts)
    base = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    kw = dict(num_samples=2, eos_ids=[3], pad_id=0)
    a = generate_ids(llama, ids, mask, jax.random.key(11), base, **kw)  # static, one device
    b = generate_ids(llama, ids, mask, jax.random.key(11), engine(base, slots=8, prefill_chunk=3), **kw)
    batch = jax.sharding.NamedSharding(mesh8, jax.sharding.PartitionSpec(("data", "fsdp")))
    c = generate_ids(sharded, jax.device_put(jnp.asarray(ids), batch), jax.device_put(jnp.asarray(mask), batch),
                     jax.random.key(11), engine(base, slots=8), **kw)
    for out in (b, c):
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(a.tokens))
        np.testing.assert_allclose(np.asarray(out.stats.logprob), np.asarray(a.stats.logprob), atol=STATS_ATOL)


def _attention_float64(q, pk, pv, pmask, k, v, lengths):
    """Softmax attention over [prompt keys where pmask] + [the first `lengths` response keys], float64."""
    B, _, H, hd = q.shape
    K = pk.shape[1]
    out = np.zeros((B, H, hd))
    for b in range(B):
        keys = np.concatenate([pk[b][..., pmask[b]], k[b][..., : lengths[b]]], axis=-1)  # [K, hd, n]
        vals = np.concatenate([pv[b][:, pmask[b]], v[b][:, : lengths[b]]], axis=1)  # [K, n, hd]
        for h in range(H):
            kh = h // (H // K)
            s = q[b, 0, h] @ keys[kh] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[b, h] = (p / p.sum()) @ vals[kh]
    return out[:, None]


def test_ragged_decode_attention_equals_float64():
    """Rows of lengths 0 .. 11 over blocks of 4 (capacity 12): the loop runs to the longest row only, and
    keys beyond a row's length never count (they hold garbage here)."""
    rng = np.random.default_rng(0)
    B, H, K, hd, Tp, T = 5, 4, 2, 8, 6, 12
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    q, pk, pv, k0, v0 = f(B, 1, H, hd), f(B, K, hd, Tp), f(B, K, Tp, hd), f(B, K, hd, T), f(B, K, T, hd)
    pmask = np.ones((B, Tp), bool)
    pmask[1, :4] = False  # left padding
    pmask[2, :5] = False
    for lengths in ([0, 3, 4, 11, 12], [1, 1, 2, 0, 5]):
        lengths = np.asarray(lengths)
        k, v = k0.copy(), v0.copy()
        for b, n in enumerate(lengths):  # garbage past each row's length: must carry no weight
            k[b, :, :, n:], v[b, :, n:] = 1e3, -1e3
        got, k_back, v_back = jax.jit(ragged_decode_attention, static_argnums=7)(q, pk, pv, pmask, k, v, lengths, 4)
        np.testing.assert_array_equal(np.asarray(k_back), k)  # the caches come back untouched
        np.testing.assert_array_equal(np.asarray(v_back), v)
        ref = _attention_float64(*(x.astype(np.float64) for x in (q, pk, pv)), pmask,
                                 k.astype(np.float64), v.astype(np.float64), lengths)
        np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="not a multiple of block"):
        ragged_decode_attention(q, pk, pv, pmask, k, v, lengths, 5)


def test_trainer_resume_after_sigkill_with_the_engine(tmp_path, tiny_model):  # noqa: F811  (the fixture)
    """tests/test_train.py's exact-resume check with sampling.engine = "continuous" (6 slots for 4 × 4 rows,
    so rows queue for slots): the run killed at step 4 and resumed writes the same metrics as the
    uninterrupted run."""
    from test_train import lines, run

    overrides = {"model.path": str(tiny_model), "data.dataset": "synthetic/arithmetic", "data.synthetic_size": 64,
                 "data.limit": 8, "data.max_prompt_length": 32, "data.prompt_batch_size": 4,
                 "sampling.max_new_tokens": 12, "sampling.engine": "continuous", "sampling.max_inflight": 6,
                 "sampling.decode_block": 4, "rl.num_samples": 4, "rl.reward": "token_entropy",
                 "rl.learning_rate": 3e-3, "train.steps": 5, "train.checkpoint_every": 2, "train.progress": False,
                 "train.pistar_diagnostics": False}
    cache = tmp_path / "jax_cache"
    full = run(overrides, tmp_path / "full", cache)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(overrides, tmp_path / "resumed", cache, kill_at=4)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    resumed = run(overrides, tmp_path / "resumed", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr, resumed.stderr[-2000:]
    a, b = lines(tmp_path / "full"), lines(tmp_path / "resumed")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5] and a == b
    assert any(r["grad_norm"] > 0 for r in a)


def test_dry_run_kv_estimate_follows_the_engine():
    """configs/paper.py runs the engine: its KV estimate is prompts × prompt + slots × new tokens (a budget),
    and stops growing with the number of rows; the static sampler's is rows × (prompt + new tokens)."""
    import importlib.util
    from pathlib import Path

    from urlvr_jax.dry_run import estimate_memory, model_config_for

    spec = importlib.util.spec_from_file_location("paper", Path(__file__).parents[1] / "configs" / "paper.py")
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    c = paper.get_config()
    cfg = model_config_for(c)
    assert c.sampling.engine == "continuous" and c.sampling.max_inflight == 128
    per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 / 1024 ** 3  # bfloat16, GiB
    engine_kv = estimate_memory(c, cfg, 8)["memory_gb/kv_cache"]
    assert engine_kv == pytest.approx((64 * 1024 + 128 * 7168) / 8 * per_position, abs=1e-3)
    c.rl.num_samples = 16  # twice the rows: the engine's budget does not move
    assert estimate_memory(c, cfg, 8)["memory_gb/kv_cache"] == engine_kv
    c.rl.num_samples, c.sampling.engine = 8, "static"
    assert estimate_memory(c, cfg, 8)["memory_gb/kv_cache"] == pytest.approx(512 * 8192 / 8 * per_position, abs=1e-3)


def test_sharded_engine_keeps_prompt_kv_on_its_device(llama):
    """One row queue per device: the partitioned program never all-gathers the prompt KV or prompt logits.

    With a single global queue any slot may read any prompt, and XLA's SPMD partitioner replicated every
    prompt's KV on every device (a TPU v5e 2x4 compile of a 2-layer Qwen3-1.7B-shaped rollout held 8x its
    prompt KV per device). Checked on the compiled HLO of the 8-device mesh: no all-gather produces a float
    buffer with the full prompt batch in its leading axis and the prompt length or vocabulary in another
    (before the fix: the prompt K and V of every layer and the prompt logits).
    """
    import re

    from flax import nnx

    from urlvr_jax.rollout.engine import continuous_generate_traced, queue_groups

    mesh8 = make_mesh({"fsdp": 8}, devices=jax.devices()[:8])
    sharded = model_from_state_dict(llama.cfg, state_dict(llama), mesh=mesh8)
    B, Tp, N, slots = 16, 24, 2, 16
    assert queue_groups(sharded.rules, B, slots) == 8
    graphdef, state = nnx.split(sharded)
    cfg = engine(SamplingConfig(max_new_tokens=8, temperature=1.0), slots=slots)
    batch = jax.sharding.NamedSharding(mesh8, jax.sharding.PartitionSpec(("data", "fsdp")))
    ids = jax.ShapeDtypeStruct((B, Tp), jnp.int32, sharding=batch)

    def fn(state, ids, mask, key):
        return continuous_generate_traced(nnx.merge(graphdef, state), ids, mask, key, sampling=cfg, num_samples=N,
                                          eos_ids=(3,), stop_seqs=((5, 6),), pad_id=0)

    hlo = jax.jit(fn).lower(state, ids, ids, jax.random.key(0)).compile().as_text()
    # float buffers only: the prefill's embedding lookup all-gathers the int32 prompt ids (an fsdp-sharded
    # table indexed by fsdp-sharded ids; a few bytes per token, the static sampler's too)
    gathered = re.findall(r"= (?:f32|bf16|f16)\[([\d,]+)\]\S* all-gather", hlo)
    V = llama.cfg.vocab_size
    whole = [s for s in gathered if s.split(",")[0] == str(B) and ({str(Tp), str(V)} & set(s.split(",")[1:]))]
    assert not whole, f"all-gathers of whole-batch prompt buffers: {whole}"
