"""The on-device sampler and the scoring pass.

References: transformers `generate` (greedy, token for token), a chi-square goodness-of-fit test of the
sampling distribution (significance level 1e-3, fixed seeds), and float64 NumPy statistics from full
logits (tolerance 2e-5 absolute on float32 statistics of O(1-5) magnitude).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from tiny_models import FAMILIES, left_pad, make_hf_model

from urlvr_jax.models.weights import load_model, model_from_state_dict, state_dict
from urlvr_jax.rollout.sampler import SamplingConfig, filter_logits, generate_ids, score
from urlvr_jax.sharding import make_mesh

PROMPTS = [[5, 17, 33, 2, 90, 11, 4, 8, 61], [7, 3, 44], [12, 80, 1, 9, 9, 30]]
STATS_ATOL = 2e-5
ALPHA = 1e-3


def hf_greedy(hf, prompts, max_new, eos):
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=max_new,
                          do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_transformers_generate(family, tmp_path):
    hf = make_hf_model(family, tmp_path, logit_scale=30.0)
    model = load_model(tmp_path)
    max_new, eos = 12, 3
    ref = hf_greedy(hf, PROMPTS, max_new, eos)
    ids, mask = left_pad(PROMPTS)
    out = generate_ids(model, ids, mask, jax.random.key(0), SamplingConfig(max_new_tokens=max_new, greedy=True),
                       eos_ids=[eos], pad_id=0)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    for i in range(len(PROMPTS)):
        n = int(m[i].sum())
        np.testing.assert_array_equal(toks[i, :n], ref[i, :n], err_msg=f"{family} row {i}")
        if n < max_new:  # a row that stopped early stopped on EOS, which is kept in its mask
            assert toks[i, n - 1] == eos and not bool(out.truncated[i])
        else:
            assert bool(out.truncated[i]) == (toks[i, n - 1] != eos)
        if n < ref.shape[1]:  # transformers pads after EOS as well
            assert (ref[i, n:] == 0).all()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_hf_model("llama", path, logit_scale=3.0)
    return load_model(path)


def numpy_stats(model, prompt, response, temperature):
    """float64 statistics from the full logits of the whole sequence (teacher forcing)."""
    ids = np.asarray(list(prompt) + list(response))[None]
    logits = np.asarray(model(jnp.asarray(ids)), np.float64)[0, len(prompt) - 1:-1] / temperature
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    logp = logits - lse[:, None]
    p = np.exp(logp)
    top2 = np.sort(p, -1)[:, ::-1][:, :2]
    return dict(logprob=logp[np.arange(len(response)), response], entropy=-(p * logp).sum(-1),
                self_certainty=lse - logits.mean(-1), top_gap=top2[:, 0] - top2[:, 1])


def test_in_loop_stats_equal_scoring_pass_and_float64(llama):
    ids, mask = left_pad(PROMPTS)
    temperature = 0.7
    out = generate_ids(llama, ids, mask, jax.random.key(1), SamplingConfig(max_new_tokens=10, temperature=temperature),
                       num_samples=2, eos_ids=[3], pad_id=0)
    rep_ids, rep_mask = np.repeat(ids, 2, 0), np.repeat(mask, 2, 0)
    scored = score(llama, rep_ids, rep_mask, out.tokens, out.mask, temperature=temperature, chunk=4)
    m = np.asarray(out.mask).astype(bool)
    for name in ("logprob", "entropy", "self_certainty", "top_gap"):
        np.testing.assert_allclose(np.asarray(getattr(scored, name)), np.asarray(getattr(out.stats, name)),
                                   atol=STATS_ATOL, rtol=0, err_msg=name)
    for row in range(len(PROMPTS) * 2):
        prompt = PROMPTS[row // 2]
        resp = np.asarray(out.tokens)[row][m[row]]
        ref = numpy_stats(llama, prompt, resp, temperature)
        for name, val in ref.items():
            np.testing.assert_allclose(np.asarray(getattr(out.stats, name))[row][m[row]], val, atol=STATS_ATOL,
                                       rtol=0, err_msg=f"{name} row {row}")
    assert np.all(np.asarray(out.stats.entropy)[~m] == 0)


def test_groups_are_contiguous_and_deterministic(llama):
    ids, mask = left_pad(PROMPTS)
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0)
    a = generate_ids(llama, ids, mask, jax.random.key(7), cfg, num_samples=4, eos_ids=[3], pad_id=0)
    b = generate_ids(llama, ids, mask, jax.random.key(7), cfg, num_samples=4, eos_ids=[3], pad_id=0)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert a.tokens.shape == (12, 6)
    # Row r belongs to prompt r // 4: its first token's log-prob equals the scoring pass under that prompt.
    rep_ids, rep_mask = np.repeat(ids, 4, 0), np.repeat(mask, 4, 0)
    s = score(llama, rep_ids, rep_mask, a.tokens, a.mask, temperature=1.0)
    np.testing.assert_allclose(np.asarray(s.logprob), np.asarray(a.stats.logprob), atol=STATS_ATOL)


def test_eos_and_stop_sequences(llama):
    ids, mask = left_pad(PROMPTS)
    cfg = SamplingConfig(max_new_tokens=8, greedy=True)
    free = np.asarray(generate_ids(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[], pad_id=0).tokens)
    # stop on the pair of tokens greedy decoding produces at steps 2-3 of row 0
    stop = [int(free[0, 2]), int(free[0, 3])]
    out = generate_ids(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[], stop_sequences=[stop], pad_id=0)
    toks, m = np.asarray(out.tokens), np.asarray(out.mask)
    assert m[0].sum() <= 4 and list(toks[0, m[0].sum() - 2: m[0].sum()]) == stop
    assert not bool(out.truncated[0])
    # EOS = the first greedy token of row 1: row 1 is one token long, EOS included in the mask
    out = generate_ids(llama, ids, mask, jax.random.key(0), cfg, eos_ids=[int(free[1, 0])], pad_id=0)
    assert int(out.lengths[1]) == 1 and int(np.asarray(out.mask)[1, 0]) == 1 and not bool(out.truncated[1])
    assert (np.asarray(out.tokens)[1, 1:] == 0).all()


def _chi_square_first_token(model, prompt, cfg, n_samples):
    ids, mask = left_pad([prompt])
    out = generate_ids(model, ids, mask, jax.random.key(123), cfg, num_samples=n_samples, eos_ids=[], pad_id=0)
    first = np.asarray(out.tokens)[:, 0]
    logits = np.asarray(model(jnp.asarray(ids)), np.float64)[0, -1] / cfg.temperature
    order = np.argsort(-logits)
    keep = np.ones_like(logits, bool)
    if cfg.top_k:
        keep[order[cfg.top_k:]] = False
    p = np.exp(logits - logits.max()) * keep
    p /= p.sum()
    if cfg.top_p < 1:
        ps = p[order]
        before = np.cumsum(ps) - ps
        nucleus = np.zeros_like(keep)
        nucleus[order[before < cfg.top_p]] = True
        p = p * nucleus
        p /= p.sum()
    assert np.all(p[np.unique(first)] > 0), "sampled a token outside the top-k / top-p support"
    support = p > 0
    counts = np.bincount(first, minlength=len(p))[support]
    expected = p[support] * n_samples
    # merge rare cells so every expected count is >= 5 (chi-square validity)
    idx = np.argsort(expected)
    e, c = expected[idx], counts[idx]
    merged_e, merged_c, acc_e, acc_c = [], [], 0.0, 0
    for ee, cc in zip(e, c):
        acc_e, acc_c = acc_e + ee, acc_c + cc
        if acc_e >= 5:
            merged_e.append(acc_e), merged_c.append(acc_c)
            acc_e, acc_c = 0.0, 0
    if acc_e > 0:
        merged_e[-1] += acc_e
        merged_c[-1] += acc_c
    if len(merged_e) < 2:
        return 1.0
    return scipy_stats.chisquare(merged_c, merged_e).pvalue


@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=1, temperature=0.8),
                                 SamplingConfig(max_new_tokens=1, temperature=1.3, top_k=5),
                                 SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.6)],
                         ids=["temperature", "top_k", "top_p"])
def test_sampling_distribution_chi_square(llama, cfg):
    pvalue = _chi_square_first_token(llama, PROMPTS[0], cfg, n_samples=4000)
    assert pvalue > ALPHA, f"chi-square rejects the sampling distribution (p={pvalue:.2e})"


def test_chi_square_detects_a_wrong_temperature(llama):
    """The statistical test has power: samples at T=1.4 are rejected as draws from T=0.8."""
    ids, mask = left_pad([PROMPTS[0]])
    wrong = SamplingConfig(max_new_tokens=1, temperature=1.4)
    out = generate_ids(llama, ids, mask, jax.random.key(5), wrong, num_samples=4000, eos_ids=[], pad_id=0)
    first = np.asarray(out.tokens)[:, 0]
    logits = np.asarray(llama(jnp.asarray(ids)), np.float64)[0, -1] / 0.8
    p = np.exp(logits - logits.max())
    p /= p.sum()
    keep = p * 4000 >= 5
    counts = np.bincount(first, minlength=len(p))
    obs, exp = counts[keep], p[keep] * 4000
    if (~keep).any():  # pool the rare cells into one
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, p[~keep].sum() * 4000)
    assert scipy_stats.chisquare(obs, exp).pvalue < ALPHA


def test_filter_logits_keeps_at_least_the_top_token():
    z = jnp.asarray([[3.0, 1.0, 0.5, -1.0]])
    assert np.isfinite(np.asarray(filter_logits(z, 0, 0.01))).sum() == 1
    assert np.isfinite(np.asarray(filter_logits(z, 2, 1.0))).sum() == 2


def test_sharded_sampling_equals_single_device(llama):
    mesh8 = make_mesh({"fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    sharded = model_from_state_dict(llama.cfg, state_dict(llama), mesh=mesh8)
    single = model_from_state_dict(llama.cfg, state_dict(llama), mesh=make_mesh({"fsdp": 1}, jax.devices()[:1]))
    prompts = PROMPTS + [[4, 4, 4, 4], [9]]
    prompts = prompts + prompts[:3]
    ids, mask = left_pad(prompts)
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = generate_ids(single, ids, mask, jax.random.key(11), cfg, num_samples=2, eos_ids=[3], pad_id=0)
    batch = jax.sharding.NamedSharding(mesh8, jax.sharding.PartitionSpec(("data", "fsdp")))
    b = generate_ids(sharded, jax.device_put(jnp.asarray(ids), batch), jax.device_put(jnp.asarray(mask), batch),
                     jax.random.key(11), cfg, num_samples=2, eos_ids=[3], pad_id=0)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_allclose(np.asarray(a.stats.logprob), np.asarray(b.stats.logprob), atol=STATS_ATOL)


# ------------------------------------------------------------------ sort-free samplers and statistics
def _chi_square_pvalue(draws, p, n):
    """Chi-square goodness of fit of integer draws to probabilities p (every expected count >= 5 here)."""
    support = p > 0
    assert np.all(support[np.unique(draws)]), "drew a token of probability 0"
    counts = np.bincount(draws, minlength=len(p))[support]
    return scipy_stats.chisquare(counts, p[support] * n).pvalue


def _nucleus_reference(z, top_p):
    """float64 nucleus distribution: keep token j iff the mass of larger logits is < top_p."""
    p = np.exp(z - z.max())
    p /= p.sum()
    above = np.array([p[z > zj].sum() for zj in z])
    p = np.where(above < top_p, p, 0.0)
    return p / p.sum()


Z12 = np.log(np.array([0.22, 0.18, 0.14, 0.12, 0.1, 0.08, 0.06, 0.04, 0.03, 0.015, 0.01, 0.005]))


@pytest.mark.parametrize("rounds", [1, 4])
def test_nucleus_rejection_sampler_distribution(rounds):
    """rounds=1 sends ~40% of rows to the exact-cutoff fallback, rounds=4 almost none: both must give the
    nucleus distribution (chi-square, alpha 1e-3, 4,000 draws)."""
    from urlvr_jax.rollout.sampler import sample_nucleus

    n, top_p = 4000, 0.6  # nucleus {0, 1, 2, 3} (mass above token 3 is 0.54), p(nucleus) = 0.66
    logits = jnp.asarray(np.tile(Z12 * 0.8, (n, 1)), jnp.float32)  # temperature 0.8 gives back Z12
    draws = np.asarray(jax.jit(lambda k, x: sample_nucleus(k, x, top_p, 0.8, rounds=rounds, block=5))(
        jax.random.key(3), logits))
    ref = _nucleus_reference(Z12, top_p)
    assert set(np.unique(draws)) <= {0, 1, 2, 3}
    assert _chi_square_pvalue(draws, ref, n) > ALPHA


def test_inverse_cdf_sampler_distribution_and_excluded_tokens():
    from urlvr_jax.rollout.sampler import sample_inverse_cdf

    n = 4000
    z = np.tile(Z12, (n, 1))
    z[:, [1, 7]] = -np.inf  # excluded (as by a top-k filter); block 5 splits V = 12 into 3 blocks, one padded
    draws = np.asarray(jax.jit(lambda u, z: sample_inverse_cdf(u, z, block=5))(
        jax.random.uniform(jax.random.key(4), (n,)), jnp.asarray(z, jnp.float32)))
    p = np.exp(z[0] - Z12.max())
    p /= p.sum()
    assert not np.isin(draws, [1, 7]).any()
    expected_ok = p * n >= 5
    pooled = np.append(np.bincount(draws, minlength=12)[expected_ok],
                       np.isin(draws, np.flatnonzero(~expected_ok)).sum())
    exp = np.append(p[expected_ok], p[~expected_ok].sum()) * n
    assert scipy_stats.chisquare(pooled[exp > 0], exp[exp > 0]).pvalue > ALPHA


def test_sort_free_statistics_under_jit_with_ties():
    """Jitted statistics equal float64 NumPy (2e-5) at temperature 0.7, including rows whose maximum is
    tied (top-1 − top-2 gap 0); first_argmax picks the lowest tied index like np.argmax."""
    from urlvr_jax.rollout.stats import first_argmax, token_stats_from_logits

    x = np.asarray(jax.random.normal(jax.random.key(0), (6, 300)), np.float32) * 3
    x[1, [17, 230]] = x[1].max() + 1.0  # tied maximum
    x[2, 5] = x[2].max() + 0.5  # ordinary maximum, plus a tied runner-up
    x[2, [40, 41]] = x[2, 5] - 0.25
    tokens = np.asarray([3, 17, 5, 0, 299, 150])
    got = jax.jit(lambda x, t: token_stats_from_logits(x, t, 0.7))(jnp.asarray(x), jnp.asarray(tokens))
    z = x.astype(np.float64) / 0.7
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    logp = z - lse[:, None]
    p = np.exp(logp)
    top2 = np.sort(p, -1)[:, ::-1][:, :2]
    ref = dict(logprob=logp[np.arange(6), tokens], entropy=-(p * logp).sum(-1), self_certainty=lse - z.mean(-1),
               top_gap=top2[:, 0] - top2[:, 1])
    for name, val in ref.items():
        np.testing.assert_allclose(np.asarray(getattr(got, name)), val, atol=STATS_ATOL, rtol=0, err_msg=name)
    assert float(got.top_gap[1]) == 0.0
    np.testing.assert_array_equal(np.asarray(jax.jit(first_argmax)(jnp.asarray(x))), np.argmax(x, -1))
