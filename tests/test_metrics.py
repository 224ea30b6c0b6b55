"""URLVR metrics against hand-computed values on small fixed batches, plus real references
(scipy's point-biserial, a Counter-based n-gram count, exact binomials for pass@k).

Tolerance: the hand values are exact rationals; float32 on device gives them to 1e-6 (abs).
"""
from collections import Counter
from fractions import Fraction
from math import comb

import jax
import numpy as np
import pytest
from scipy import stats as sps

from urlvr_jax.diagnostics import metrics as M

TOL = 1e-6

# P = 3 prompts, N = 4 rollouts, T = 6 positions.
PROXY = np.array([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 0, 1]], np.float32)
GT = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], np.float32)
LENGTHS = np.array([[6, 3, 0, 2], [6, 6, 6, 6], [1, 4, 5, 6]])
MASK = (np.arange(6)[None, None, :] < LENGTHS[..., None]).astype(np.int32)
ENTROPY = np.broadcast_to(np.arange(1, 7, dtype=np.float32), (3, 4, 6)).copy()  # entropy = position + 1
_TOK = [
    [[5, 6, 5, 6, 5, 6], [1, 2, 3, 9, 9, 9], [5, 5, 5, 5, 5, 5], [7, 7, 7, 7, 7, 7]],
    [[9, 9, 9, 9, 9, 9], [1, 2, 3, 4, 5, 6], [1, 2, 1, 2, 3, 3], [4, 4, 5, 4, 4, 5]],
    [[8, 8, 8, 8, 8, 8], [2, 2, 2, 2, 5, 5], [1, 3, 1, 3, 1, 1], [6, 5, 4, 3, 2, 1]],
]
TOKENS = np.array(_TOK, np.int32)  # padding deliberately repeats tokens: it must be ignored
# Bigram repetition by hand, (M - D)/M per response; None = fewer than 2 valid tokens (excluded):
#   p0: 565656 -> 3/5;  123 -> 0;  (empty) None;  77 -> 0
#   p1: 999999 -> 4/5;  123456 -> 0;  121233 -> 1/5;  445445 -> 2/5
#   p2: 8 -> None;  2222 -> 2/3;  13131 -> 2/4;  654321 -> 0
REP_HAND = np.array([[0.6, 0, 0, 0], [0.8, 0, 0.2, 0.4], [0, 2 / 3, 0.5, 0]], np.float32)
REP_MEAN_HAND = (0.6 + 0.8 + 0.2 + 0.4 + 2 / 3 + 0.5) / 10  # 10 responses with >= 1 bigram
REPETITIVE_FRAC_HAND = 4 / 10  # rate >= 0.5: 0.6, 0.8, 2/3, 0.5
EOS = 3  # last valid tokens: only p0r1 (…3) and p1r2 (…3) ended with EOS; p0r2 is empty -> 9/12 truncated


@pytest.fixture(scope="module")
def binary_metrics():
    return M.step_metrics(
        PROXY, GT, MASK, binary_proxy=True, entropy=ENTROPY, tokens=TOKENS, eos_id=EOS,
        reference_length=8.5, ngram=2,
    )


def test_binary_step_metrics_hand_values(binary_metrics):
    m = binary_metrics
    hand = {
        # majority label correct: p0 yes (r=1 & gt=1 at 0), p1 no, p2 yes (at 1)
        "urlvr/label_accuracy": 2 / 3,
        # proxy == gt per prompt: 3/4, 0/4, 3/4
        "urlvr/reward_accuracy": (0.75 + 0.0 + 0.75) / 3,
        "urlvr/proxy_reward_mean": 9 / 12,
        "urlvr/gt_reward_mean": 3 / 12,
        "urlvr/pass_at_n": 2 / 3,
        "urlvr/majority_ratio": (3 / 4 + 4 / 4 + 2 / 4) / 3,
        # p0: corr([1,1,0,0],[1,1,0,1]) = 0.5/sqrt(0.75); p2: corr([0,1,0,0],[0,1,0,1]) = same; p1 excluded
        "urlvr/point_biserial": 0.5 / np.sqrt(0.75),
        "urlvr/point_biserial_groups_frac": 2 / 3,
        # argmax proxy = index 0, 0, 1 -> gt 1, 0, 1
        "urlvr/pseudo_label_accuracy": 2 / 3,
        "urlvr/zero_variance_frac": 1 / 3,
        # Σ over valid of (t+1) = L(L+1)/2 summed: 30 + 84 + 47 = 161 over 51 tokens
        "response/entropy_mean": 161 / 51,
        "response/length_mean": 51 / 12,
        "response/truncation_rate": 9 / 12,
        "collapse/repetition_mean": REP_MEAN_HAND,
        "collapse/repetitive_frac": REPETITIVE_FRAC_HAND,
        "collapse/length_ratio": (51 / 12) / 8.5,
    }
    assert set(m) == set(hand) == set(M.METRIC_NAMES)
    for k, v in hand.items():
        assert abs(m[k] - v) < TOL, (k, m[k], v)
        assert isinstance(m[k], float)


def test_repetition_rate_hand_values():
    rate, total = jax.jit(M.repetition_rate, static_argnames="n")(TOKENS, MASK, n=2)
    np.testing.assert_allclose(np.asarray(rate), REP_HAND, atol=TOL)
    np.testing.assert_array_equal(np.asarray(total), np.maximum(LENGTHS - 1, 0))


def test_repetition_rate_matches_counter_reference():
    """Random responses over a tiny vocabulary (many repeats), n = 1..4, against a Counter count."""
    rng = np.random.default_rng(1)
    P, N, T = 4, 8, 24
    tokens = rng.integers(0, 3, size=(P, N, T)).astype(np.int32)
    lengths = rng.integers(0, T + 1, size=(P, N))
    mask = np.arange(T)[None, None] < lengths[..., None]
    fn = jax.jit(M.repetition_rate, static_argnames="n")
    for n in (1, 2, 3, 4):
        rate, _ = fn(tokens, mask, n=n)
        ref = np.zeros((P, N))
        for p in range(P):
            for i in range(N):
                seq = tokens[p, i, : lengths[p, i]].tolist()
                grams = Counter(tuple(seq[j : j + n]) for j in range(len(seq) - n + 1))
                tot = sum(grams.values())
                ref[p, i] = (tot - len(grams)) / tot if tot else 0.0
        np.testing.assert_allclose(np.asarray(rate), ref, atol=TOL, err_msg=f"n={n}")
        assert ref.std() > 0.05  # the reference is not degenerate


def test_continuous_proxy_binarisation_and_keys():
    proxy = np.array([[0.9, 0.2, 0.9, 0.1], [0.5, 0.4, 0.3, 0.2]], np.float32)
    gt = np.array([[1, 0, 0, 0], [1, 1, 0, 0]], np.float32)
    mask = np.ones((2, 4, 3), np.int32)
    best = M.step_metrics(proxy, gt, mask, binary_proxy=False)
    # best: p0 b=[1,0,1,0] -> 3/4 agree; p1 b=[1,0,0,0] -> 3/4 agree
    assert abs(best["urlvr/reward_accuracy"] - 0.75) < TOL
    above = M.step_metrics(proxy, gt, mask, binary_proxy=False, continuous_binarize="above_mean")
    # above mean: p0 (mean .525) b=[1,0,1,0] -> 3/4; p1 (mean .35) b=[1,1,0,0] -> 4/4
    assert abs(above["urlvr/reward_accuracy"] - 0.875) < TOL
    # argmax (first on ties): p0 -> 0 (correct), p1 -> 0 (correct)
    assert abs(best["urlvr/pseudo_label_accuracy"] - 1.0) < TOL
    ref = np.mean([sps.pointbiserialr(gt[p], proxy[p].astype(np.float64)).statistic for p in range(2)])
    assert abs(best["urlvr/point_biserial"] - ref) < 1e-5
    # No label / majority ratio for a continuous proxy unless given; no token-dependent keys.
    assert "urlvr/label_accuracy" not in best and "urlvr/majority_ratio" not in best
    assert "collapse/repetition_mean" not in best
    given = M.step_metrics(proxy, gt, mask, binary_proxy=False, label_correct=np.array([True, False]),
                           majority_ratio=np.array([0.5, 0.25]))
    assert given["urlvr/label_accuracy"] == 0.5 and given["urlvr/majority_ratio"] == 0.375


def test_point_biserial_against_scipy_on_random_groups():
    rng = np.random.default_rng(2)
    gt = (rng.random((64, 8)) < 0.4).astype(np.float32)
    proxy = rng.standard_normal((64, 8)).astype(np.float32) + gt
    proxy[3] = 0.7  # constant proxy: excluded
    got, frac = jax.jit(M.point_biserial)(gt, proxy)
    ok = [p for p in range(64) if 0 < gt[p].sum() < 8 and proxy[p].std() > 0]
    ref = np.mean([sps.pointbiserialr(gt[p], proxy[p].astype(np.float64)).statistic for p in ok])
    assert abs(float(got) - ref) < 1e-5 and abs(float(frac) - len(ok) / 64) < TOL
    nan, zero = M.point_biserial(np.ones((2, 8)), proxy[:2])
    assert np.isnan(float(nan)) and float(zero) == 0.0


def test_pass_at_k_exact_binomials():
    for n in range(1, 13):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert abs(M.pass_at_k(n, c, k) - float(exact)) < 1e-12, (n, c, k)
    arr = M.pass_at_k(np.array([16, 16, 16]), np.array([0, 1, 16]), 4)
    np.testing.assert_allclose(arr, [0.0, 4 / 16, 1.0], atol=1e-12)
    with pytest.raises(ValueError, match="k <= n"):
        M.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        M.pass_at_k(4, 5, 1)


def test_avg_and_maj_at_k_hand_values():
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    assert abs(M.avg_at_k(correct) - (0.5 + 0.0 + 0.75) / 3) < 1e-12
    answers = [
        ["7", "3", "3", "7"],  # tie 7 vs 3 -> first seen "7" (correct)
        [None, None, None, None],  # no answer -> 0
        ["1", "2", "2", "2"],  # "2" wins (correct)
    ]
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]])
    assert M.maj_at_k(answers, correct) == pytest.approx(2 / 3, abs=1e-12)
    # k = 2: p0 tie 7/3 -> "7" correct; p2 tie 1/2 -> "1" wrong
    assert M.maj_at_k(answers, correct, k=2) == pytest.approx(1 / 3, abs=1e-12)
    ids = [[-1, 4, 5, 5], [-1, -1, -1, 2]]
    assert M.maj_at_k(ids, [[0, 0, 1, 1], [0, 0, 0, 1]], no_answer=-1) == 1.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="gt_reward"):
        M.step_metrics(PROXY, GT[:2], MASK, binary_proxy=True)
    with pytest.raises(ValueError, match="mask"):
        M.step_metrics(PROXY, GT, MASK[:, :3], binary_proxy=True)
    with pytest.raises(ValueError, match="tokens"):
        M.step_metrics(PROXY, GT, MASK, binary_proxy=True, tokens=TOKENS[..., :5])
    with pytest.raises(ValueError, match="reference_length"):
        M.step_metrics(PROXY, GT, MASK, binary_proxy=True, reference_length=0.0)
    with pytest.raises(ValueError, match="continuous_binarize"):
        M.step_metrics(PROXY, GT, MASK, binary_proxy=False, continuous_binarize="median")
