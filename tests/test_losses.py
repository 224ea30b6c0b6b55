"""Policy loss and its gradient against an independent float64 NumPy reference.

The reference is written per token by case analysis (which side of the clip / dual clip a token is on,
which KL clamp is active), with the gradient by the analytic formula; the analytic gradient itself is
checked against float64 central finite differences of the reference loss. Batches hold ratios below,
inside and above the clip range, above the dual-clip bound and beyond the +-20 log-ratio clamp, positive,
negative and zero advantages, k3 values beyond its clamp, and padding filled with NaN / inf.

Tolerance (chosen once): |jax - ref| <= 1e-5 |ref| + 1e-6 S, S = the sum of the absolute values of the
terms being added (float32 accumulation over ~70 terms); finite differences: 1e-6 relative.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_advantages import ref_advantages

from urlvr_jax.rl import advantages as A
from urlvr_jax.rl import losses as L

RTOL, STOL = 1e-5, 1e-6
CLIP_LOW, CLIP_HIGH, DUAL = 0.2, 0.28, 3.0
KL_COEF, ENT_COEF = 0.05, 0.01
P, N, T = 3, 4, 6
AGGS = L.AGGREGATIONS
KLS = ("k1", "k2", "k3")


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    B = P * N
    lengths = np.array([5, 1, 4, 5, 3, 6, 2, 6, 5, 0, 4, 3])  # row 9 is all padding
    mask = np.arange(T)[None, :] < lengths[:, None]
    old = rng.uniform(-3.0, -0.05, size=(B, T))
    # log-ratios: below 1 - 0.2, inside, above 1 + 0.28, above the dual clip 3, beyond the +-20 clamp
    deltas = np.log([0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.4, 2.0, 3.5, 5.0])
    delta = rng.choice(deltas, size=(B, T))
    delta[0, 0], delta[5, 1], delta[7, 2] = 25.0, -25.0, 22.0
    lp = old + delta
    # reference gaps logp_ref - logp: small, large (k3 > 10 beyond 2.6), beyond the +-20 clamp
    gap = rng.choice([-1.0, -0.3, 0.0, 0.4, 1.5, 3.0, -4.0], size=(B, T))
    gap[2, 0], gap[3, 1] = 25.0, -23.0
    ref = lp + gap
    ent = rng.uniform(0.0, 3.0, size=(B, T))
    for x in (lp, old, ref, ent):  # padding holds garbage that must not leak
        x[~mask] = np.nan
    lp[~mask & (np.arange(T)[None, :] % 2 == 0)] = -np.inf
    rewards = rng.normal(size=(P, N)).astype(np.float32)
    rewards[1] = [1.0, 0.0, 0.0, 1.0]
    return dict(lp=lp.astype(np.float32), old=old.astype(np.float32), ref=ref.astype(np.float32),
                ent=ent.astype(np.float32), mask=mask, rewards=rewards)


def _weights(mask, agg):
    """Per-token aggregation weights, by the formulas (N tokens, S non-empty sequences, T_max = T)."""
    lengths = mask.sum(1)
    n_tok, n_seq, t_max = lengths.sum(), (lengths > 0).sum(), mask.shape[1]
    w = np.zeros(mask.shape)
    for b, t in zip(*np.nonzero(mask)):
        w[b, t] = {"token-mean": 1.0 / n_tok,
                   "seq-mean-token-mean": 1.0 / (lengths[b] * n_seq),
                   "seq-mean-token-sum": 1.0 / n_seq,
                   "seq-mean-token-sum-norm": 1.0 / (n_seq * t_max)}[agg]
    return w


def ref_pg_token(lp, old, a, clip_low, clip_high, dual):
    """(loss, dloss/dlp, clip_active, dual_active) of one token, by cases."""
    d = lp - old
    dc = min(max(d, -20.0), 20.0)
    r = np.exp(dc)
    dr = r if -20.0 < d < 20.0 else 0.0
    if a == 0.0:
        return 0.0, 0.0, False, False
    if a > 0:
        if r > 1.0 + clip_high:
            return -a * (1.0 + clip_high), 0.0, True, False
        return -a * r, -a * dr, False, False
    # a < 0: the loss grows with the ratio; below 1 - clip_low the clipped (constant) term wins
    if r < 1.0 - clip_low:
        return -a * (1.0 - clip_low), 0.0, True, False
    if dual is not None and r > dual:
        return -a * dual, 0.0, False, True
    return -a * r, -a * dr, False, False


def ref_kl_token(lp, ref, est):
    if est == "k1":
        return lp - ref, 1.0
    if est == "k2":
        return 0.5 * (lp - ref) ** 2, lp - ref
    x = ref - lp
    xc = min(max(x, -20.0), 20.0)
    v = np.exp(xc) - xc - 1.0
    if v > 10.0:
        return 10.0, 0.0
    if not -20.0 < x < 20.0:
        return v, 0.0
    return v, 1.0 - np.exp(x)


def ref_loss(lp, old, adv, mask, ref, ent, agg, est, dual=DUAL, kl_coef=KL_COEF, ent_coef=ENT_COEF):
    """float64: (loss, grad wrt lp [B, T], metrics, scale S)."""
    lp, old = np.asarray(lp, np.float64), np.asarray(old, np.float64)
    w = _weights(mask, agg)
    n_tok = mask.sum()
    loss = 0.0
    grad = np.zeros(mask.shape)
    scale = 0.0
    m = dict(pg_loss=0.0, kl=0.0, entropy=0.0, clip_frac=0.0, dual_clip_frac=0.0, approx_kl=0.0,
             ppo_kl=0.0, ratio_mean=0.0, ratio_max=0.0)
    for b, t in zip(*np.nonzero(mask)):
        pg, gpg, c1, c2 = ref_pg_token(lp[b, t], old[b, t], float(adv[b]), CLIP_LOW, CLIP_HIGH, dual)
        k, gk = ref_kl_token(lp[b, t], float(ref[b, t]), est) if ref is not None else (0.0, 0.0)
        h = float(ent[b, t]) if ent is not None else 0.0
        term = w[b, t] * (pg + kl_coef * k - ent_coef * h)
        loss += term
        scale += w[b, t] * (abs(pg) + abs(kl_coef * k) + abs(ent_coef * h))
        grad[b, t] = w[b, t] * (gpg + kl_coef * gk)
        m["pg_loss"] += w[b, t] * pg
        m["kl"] += w[b, t] * k
        m["entropy"] += w[b, t] * h
        d = lp[b, t] - old[b, t]
        dc = min(max(d, -20.0), 20.0)
        m["clip_frac"] += c1 / n_tok
        m["dual_clip_frac"] += c2 / n_tok
        m["approx_kl"] += 0.5 * d * d / n_tok
        m["ppo_kl"] += -dc / n_tok
        m["ratio_mean"] += np.exp(dc) / n_tok
        m["ratio_max"] = max(m["ratio_max"], np.exp(dc))
    m["loss"] = loss
    return loss, grad, m, scale


def _close(got, want, scale, what):
    err = np.abs(np.asarray(got, np.float64) - want)
    bound = RTOL * np.abs(want) + STOL * scale
    assert np.all(err <= bound), f"{what}: max err {err.max()} vs bound {np.min(bound)}; got {got}, want {want}"


@functools.partial(jax.jit, static_argnames=("combos", "dual_clip", "max_response_length"))
def _variants(lp, old, adv, mask, ref, ent, n_tok=None, n_seq=None, *, combos, dual_clip=DUAL,
              max_response_length=None):
    """{(agg, est): (loss, grad wrt logprob, metrics)} for every requested combination, in one compile
    (eager dispatch would compile each primitive separately for every new shape: far slower on CPU)."""
    out = {}
    for agg, est in combos:
        def f(x, agg=agg, est=est):
            return L.policy_loss(x, old, adv, mask, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, dual_clip=dual_clip,
                                 aggregation=agg, ref_logprob=ref, kl_coef=KL_COEF, kl_estimator=est,
                                 entropy=ent, entropy_coef=ENT_COEF, global_num_tokens=n_tok,
                                 global_num_seqs=n_seq, max_response_length=max_response_length)
        (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(lp)
        out[(agg, est)] = (loss, grad, metrics)
    return out


def _jax_losses(batch, adv, combos, n_tok=None, n_seq=None, **kw):
    return _variants(batch["lp"], batch["old"], jnp.asarray(adv, jnp.float32), batch["mask"], batch["ref"],
                     batch["ent"], n_tok, n_seq, combos=tuple(combos), **kw)


ALL = tuple(itertools.product(AGGS, KLS))


@pytest.fixture(scope="module")
def batch():
    return _batch()


def test_reference_gradient_matches_finite_differences(batch):
    """The analytic reference gradient is what float64 central differences of the reference loss give."""
    adv = ref_advantages("grpo", batch["rewards"]).reshape(-1)
    lp = batch["lp"].astype(np.float64)
    h = 1e-6
    for agg, est in itertools.product(AGGS, KLS):
        _, g, _, _ = ref_loss(lp, batch["old"], adv, batch["mask"], batch["ref"], batch["ent"], agg, est)
        for b, t in zip(*np.nonzero(batch["mask"])):
            up, dn = lp.copy(), lp.copy()
            up[b, t] += h
            dn[b, t] -= h
            fd = (ref_loss(up, batch["old"], adv, batch["mask"], batch["ref"], batch["ent"], agg, est)[0]
                  - ref_loss(dn, batch["old"], adv, batch["mask"], batch["ref"], batch["ent"], agg, est)[0]) / (2 * h)
            assert abs(fd - g[b, t]) <= 1e-6 * max(1.0, abs(g[b, t])), (agg, est, b, t, fd, g[b, t])


@pytest.mark.parametrize("name", A.ESTIMATORS)
def test_loss_and_grad_match_reference(batch, name):
    """Every advantage estimator x aggregation x KL estimator: loss, gradient and metrics."""
    adv_jax = A.compute_advantages(name, jnp.asarray(batch["rewards"])).reshape(-1)
    adv_ref = ref_advantages(name, batch["rewards"]).reshape(-1)
    np.testing.assert_allclose(np.asarray(adv_jax), adv_ref, rtol=1e-5, atol=1e-6)
    assert np.any(adv_ref > 0) and np.any(adv_ref < 0)
    results = _jax_losses(batch, adv_jax, ALL)
    for agg, est in ALL:
        loss, grad, metrics = results[(agg, est)]
        want, gwant, mwant, scale = ref_loss(batch["lp"], batch["old"], adv_ref, batch["mask"], batch["ref"],
                                             batch["ent"], agg, est)
        what = f"{name}/{agg}/{est}"
        _close(loss, want, scale, what + " loss")
        grad = np.asarray(grad)
        assert np.all(grad[~batch["mask"]] == 0.0), what + ": padding got a gradient"
        _close(grad, gwant, scale, what + " grad")
        for k, v in mwant.items():
            _close(metrics[k], v, scale if k in ("loss", "pg_loss", "kl", "entropy") else abs(v), f"{what} {k}")
        assert float(metrics["clip_frac"]) > 0 and float(metrics["dual_clip_frac"]) > 0, what


def test_no_dual_clip(batch):
    adv = ref_advantages("drgrpo", batch["rewards"]).reshape(-1)
    combos = tuple((agg, "k3") for agg in AGGS)
    results = _jax_losses(batch, adv, combos, dual_clip=None)
    for agg, est in combos:
        loss, grad, metrics = results[(agg, est)]
        want, gwant, _, scale = ref_loss(batch["lp"], batch["old"], adv, batch["mask"], batch["ref"],
                                         batch["ent"], agg, est, dual=None)
        _close(loss, want, scale, f"{agg} loss")
        _close(np.asarray(grad), gwant, scale, f"{agg} grad")
        assert float(metrics["dual_clip_frac"]) == 0.0
    # A < 0 tokens with a ratio above c now count in full: the loss is larger than with the dual clip
    with_dual = ref_loss(batch["lp"], batch["old"], adv, batch["mask"], batch["ref"], batch["ent"], "token-mean", "k3")
    assert float(results[("token-mean", "k3")][0]) > with_dual[0] + 0.1


def test_hand_computed_single_tokens():
    """Three one-token responses worked out by hand (eps_low 0.2, eps_high 0.28, c = 3)."""
    old = jnp.zeros((3, 1))
    lp = jnp.log(jnp.array([[1.5], [0.5], [5.0]]))
    adv = jnp.array([1.0, -2.0, -1.0])
    mask = jnp.ones((3, 1), bool)
    # A=+1, r=1.5 -> clipped at 1.28: -1.28, grad 0.   A=-2, r=0.5 -> clipped at 0.8: 1.6, grad 0.
    # A=-1, r=5 -> unclipped 5, dual clip min(5, 3) = 3, grad 0.  token-mean: (-1.28 + 1.6 + 3) / 3
    loss, m = jax.jit(lambda *a: L.policy_loss(*a, clip_low=0.2, clip_high=0.28, dual_clip=3.0))(lp, old, adv, mask)
    np.testing.assert_allclose(float(loss), (-1.28 + 1.6 + 3.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_frac"]), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(m["dual_clip_frac"]), 1 / 3, rtol=1e-6)
    # inside the range: A=+1, r=1.1 -> -1.1, d/dlogp = -1.1
    g = jax.jit(jax.grad(lambda x: L.policy_loss(x, jnp.zeros((1, 1)), jnp.ones(1), jnp.ones((1, 1)))[0]))(
        jnp.log(jnp.full((1, 1), 1.1)))
    np.testing.assert_allclose(float(g[0, 0]), -1.1, rtol=1e-6)


def test_micro_batches_sum_to_full_batch(batch):
    """Whole-group micro-batches with unequal token counts and unequal padding: for every aggregation the
    sum of losses, gradients and additive metrics equals the full batch; ratio_max combines by max."""
    adv = A.compute_advantages("grpo", jnp.asarray(batch["rewards"])).reshape(-1)
    combos = tuple((agg, "k3") for agg in AGGS)
    n_tok, n_seq = L.count_valid(batch["mask"])
    full = _jax_losses(batch, adv, combos)
    parts = [slice(0, N), slice(N, 3 * N)]  # group 0 | groups 1-2
    assert int(batch["mask"][parts[0]].sum()) != int(batch["mask"][parts[1]].sum())
    micro, local = [], []
    for sl in parts:
        mb = {k: v[sl] for k, v in batch.items() if k != "rewards"}
        t_used = int(mb["mask"].sum(1).max())  # trim this micro-batch's padding: T differs between them
        mb = {k: v[:, :t_used] for k, v in mb.items()}
        micro.append((t_used, _jax_losses(mb, adv[sl], combos, n_tok=n_tok, n_seq=n_seq, max_response_length=T)))
        local.append(_jax_losses(mb, adv[sl], combos, *L.count_valid(mb["mask"]), max_response_length=T))
    assert micro[0][0] != micro[1][0]
    for key in combos:
        agg = key[0]
        full_loss, full_grad, full_m = full[key]
        _, _, _, scale = ref_loss(batch["lp"], batch["old"], np.asarray(adv), batch["mask"], batch["ref"],
                                  batch["ent"], agg, "k3")
        total = sum(float(res[key][0]) for _, res in micro)
        grads = np.concatenate([np.pad(np.asarray(res[key][1]), ((0, 0), (0, T - t))) for t, res in micro])
        _close(total, float(full_loss), scale, f"{agg} summed loss")
        _close(grads, np.asarray(full_grad), scale, f"{agg} concatenated grads")
        for k, how in L.METRIC_REDUCTIONS.items():
            vals = [float(res[key][2][k]) for _, res in micro]
            comb = sum(vals) if how == "sum" else max(vals)
            _close(comb, float(full_m[k]), abs(float(full_m[k])) + scale, f"{agg} metric {k}")
        # without the global counts the local normalisers make the sum wrong (so this test can fail)
        assert abs(sum(float(res[key][0]) for res in local) - float(full_loss)) > 1e-3, agg


@pytest.mark.parametrize("est", ("k1", "kl", "k2", "mse", "k3", "low_var_kl"))
def test_kl_in_reward(batch, est):
    coef = 0.1
    pen, m = L.kl_in_reward(batch["old"], batch["ref"], batch["mask"], kl_coef=coef, kl_estimator=est)
    base = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}.get(est, est)
    want = np.zeros(P * N)
    seq_means = []
    for b in range(P * N):
        ks = [ref_kl_token(float(batch["old"][b, t]), float(batch["ref"][b, t]), base)[0]
              for t in np.nonzero(batch["mask"][b])[0]]
        want[b] = coef * sum(ks)
        if ks:
            seq_means.append(np.mean(ks))
    scale = coef * sum(abs(ref_kl_token(float(batch["old"][b, t]), float(batch["ref"][b, t]), base)[0])
                       for b, t in zip(*np.nonzero(batch["mask"])))
    _close(np.asarray(pen), want, scale, f"kl_in_reward {est}")
    _close(float(m["kl_in_reward"]), np.mean(seq_means), abs(np.mean(seq_means)), "kl_in_reward metric")
    assert np.asarray(pen)[9] == 0.0  # the all-padding row


def test_kl_metric_without_coef_and_on_policy_gradient():
    """kl is reported (diagnostic) with kl_coef 0 and does not enter the loss; on-policy (ratio 1)
    token-mean gradient is -A / N_tokens."""
    rng = np.random.default_rng(3)
    lp = jnp.asarray(rng.uniform(-2, -0.1, (4, 5)), jnp.float32)
    mask = jnp.ones((4, 5), bool)
    adv = jnp.array([1.0, -1.0, 0.5, 0.0])

    @jax.jit
    def run(lp):
        loss0, m0 = L.policy_loss(lp, lp, adv, mask, ref_logprob=lp + 0.3)
        loss1, _ = L.policy_loss(lp, lp, adv, mask)
        g = jax.grad(lambda x: L.policy_loss(x, lp, adv, mask)[0])(lp)
        return loss0, loss1, m0["kl"], g

    loss0, loss1, kl, g = run(lp)
    assert float(loss0) == float(loss1)
    np.testing.assert_allclose(float(kl), np.exp(0.3) - 0.3 - 1, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(-np.asarray(adv)[:, None] / 20, (4, 5)), rtol=1e-6)


def test_empty_batch_is_zero_not_nan():
    z = jnp.zeros((2, 3))

    @jax.jit
    def run(z):
        return [L.policy_loss(z, z, jnp.ones(2), jnp.zeros((2, 3), bool), aggregation=agg, ref_logprob=z,
                              kl_coef=0.1, entropy=z, entropy_coef=0.1) for agg in AGGS]

    for loss, m in run(z):
        assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())


def test_bad_input_errors():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="unknown aggregation 'seq-mean'"):
        L.policy_loss(x, x, jnp.ones(2), x, aggregation="seq-mean")
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        L.policy_loss(x, x, jnp.ones(2), x, ref_logprob=x, kl_estimator="k4")
    with pytest.raises(ValueError, match="kl_coef=0.1 needs ref_logprob"):
        L.policy_loss(x, x, jnp.ones(2), x, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy_coef=0.01 needs"):
        L.policy_loss(x, x, jnp.ones(2), x, entropy_coef=0.01)
    with pytest.raises(ValueError, match="dual_clip=1.0 must be > 1"):
        L.policy_loss(x, x, jnp.ones(2), x, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low=1.2"):
        L.policy_loss(x, x, jnp.ones(2), x, clip_low=1.2)
    with pytest.raises(ValueError, match=r"old_logprob must have the shape of logprob \(2, 3\)"):
        L.policy_loss(x, jnp.zeros((3, 2)), jnp.ones(2), x)
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        L.policy_loss(x, x, jnp.ones(3), x)
    with pytest.raises(ValueError, match=r"logprob must be \[B, T\]"):
        L.policy_loss(jnp.zeros(3), jnp.zeros(3), jnp.ones(3), jnp.ones(3))
