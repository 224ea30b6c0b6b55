"""URLVR metrics (paper §4): what a label-free run tracks every step, plus evaluation helpers.

Per-step metrics are pure jnp functions of a group batch (P prompts × N rollouts; T positions), so
they run on device next to the rewards; `step_metrics` bundles them into one jitted call and returns
host floats under the stable names in `METRIC_NAMES`. Ground truth enters ONLY here (monitoring),
never the training signal.

Inputs and conventions
  proxy_reward [P, N]  the training reward (majority vote, cluster share, a certainty reward, ...)
  gt_reward    [P, N]  GT correctness of each response, 1 = correct, 0 = wrong (> 0.5 counts as correct)
  mask         [P, N, T] response mask (1 valid incl. EOS, 0 padding)

Definitions as implemented (means over prompts are unweighted: every prompt counts once)
  label_accuracy        mean_p label_correct[p]. label_correct = "the group's majority (pseudo) label
                        equals the GT label"; pass it in, or, for a binary majority-vote proxy, it is
                        derived as any_i(proxy_i = 1 ∧ gt_i = 1) (the majority answer is correct iff a
                        response rewarded as majority is correct; no majority => wrong).
  reward_accuracy       mean_p mean_i 1[b_i = gt_i], b = binarised proxy. Binary proxy: b_i = proxy_i > 0.5.
                        Continuous proxy ("best", default): b_i = 1[proxy_i = max_j proxy_j] — the group's
                        best response(s) are the predicted-correct ones; ("above_mean"): b_i = 1[proxy_i >
                        mean_j proxy_j], i.e. the sign of the GRPO advantage.
  proxy_reward_mean     mean over all P·N responses.   gt_reward_mean: same for GT correctness.
  pass_at_n             mean_p any_i gt_i.
  majority_ratio        mean_p majority_ratio[p] if given, else (binary proxy) mean_p mean_i b_i
                        (= count(majority)/N with unanswered responses counted in N).
  point_biserial        per group, Pearson correlation of (gt_i ∈ {0,1}, proxy_i) with population
                        moments — the point-biserial r_pb = (M1 − M0)/s · sqrt(n1 n0)/n; averaged over the
                        groups where both gt and proxy vary (others have no defined r); NaN if none.
                        point_biserial_groups_frac = share of groups that entered the average.
  pseudo_label_accuracy mean_p gt[p, argmax_i proxy_i] (first index on ties).
  zero_variance_frac    share of groups whose proxy rewards are all exactly equal (GRPO advantage 0).
  entropy_mean          token-mean of the per-token entropy over all valid tokens of the batch.
  length_mean           mean number of valid tokens per response.
  truncation_rate       mean of truncated [P, N] (given, or derived with eos_id: non-empty response
                        whose last valid token is not EOS).
  repetition_mean       mean over responses with ≥ n valid tokens of repetition_rate (below).
  repetitive_frac       share of those responses with repetition_rate ≥ repetitive_threshold.
  length_ratio          length_mean / reference_length (e.g. the step-0 mean length): length collapse.

repetition_rate(tokens, mask, n) per response = (M − D)/M, M = number of n-grams fully inside the valid
tokens, D = number of distinct ones (0 if M = 0): the share of n-gram occurrences that repeat an
earlier one. Computed exactly on device (lexicographic sort of the n-gram columns, no hashing).
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "METRIC_NAMES",
    "response_lengths",
    "binarize_proxy",
    "label_correct_from_rewards",
    "label_accuracy",
    "reward_accuracy",
    "pass_at_n",
    "point_biserial",
    "pseudo_label_accuracy",
    "zero_variance_fraction",
    "mean_token_entropy",
    "truncated_from_tokens",
    "repetition_rate",
    "length_ratio",
    "step_metrics",
    "pass_at_k",
    "avg_at_k",
    "maj_at_k",
]

# Stable names. A key is present in step_metrics' dict when its inputs were given (see step_metrics).
METRIC_NAMES = (
    "urlvr/label_accuracy",
    "urlvr/reward_accuracy",
    "urlvr/proxy_reward_mean",
    "urlvr/gt_reward_mean",
    "urlvr/pass_at_n",
    "urlvr/majority_ratio",
    "urlvr/point_biserial",
    "urlvr/point_biserial_groups_frac",
    "urlvr/pseudo_label_accuracy",
    "urlvr/zero_variance_frac",
    "response/entropy_mean",
    "response/length_mean",
    "response/truncation_rate",
    "collapse/repetition_mean",
    "collapse/repetitive_frac",
    "collapse/length_ratio",
)

_BINARIZE = ("best", "above_mean")


def _f32(x):
    return jnp.asarray(x).astype(jnp.float32)


def _correct(gt_reward):
    return jnp.asarray(gt_reward) > 0.5


def _check_pn(name: str, x, shape=None) -> None:
    if x.ndim != 2:
        raise ValueError(f"metrics: `{name}` must have shape [P, N] (prompts, rollouts), got {x.shape}")
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(f"metrics: `{name}` has shape {x.shape}, expected {tuple(shape)} like proxy_reward")


# --------------------------------------------------------------------------------------------- pieces
def response_lengths(mask: jax.Array) -> jax.Array:
    """Number of valid tokens per response: mask [P, N, T] -> [P, N] int32."""
    return jnp.sum(jnp.asarray(mask).astype(jnp.int32), axis=-1)


def binarize_proxy(proxy_reward: jax.Array, binary: bool, continuous_binarize: str = "best") -> jax.Array:
    """Predicted-correct flags [P, N] bool from a proxy reward [P, N] (see module docstring)."""
    r = _f32(proxy_reward)
    if binary:
        return r > 0.5
    if continuous_binarize == "best":
        return r == jnp.max(r, axis=-1, keepdims=True)
    if continuous_binarize == "above_mean":
        return r > jnp.mean(r, axis=-1, keepdims=True)
    raise ValueError(f"metrics: continuous_binarize must be one of {_BINARIZE}, got {continuous_binarize!r}")


def label_correct_from_rewards(proxy_reward: jax.Array, gt_reward: jax.Array) -> jax.Array:
    """[P] bool: for a binary majority-vote proxy, is the majority answer correct?

    True iff some response with proxy reward 1 (its answer is the majority answer) is GT-correct.
    Assumes the vote's answer equivalence and the grader agree on that group.
    """
    return jnp.any((_f32(proxy_reward) > 0.5) & _correct(gt_reward), axis=-1)


def label_accuracy(label_correct: jax.Array) -> jax.Array:
    """Share of prompts whose pseudo label equals the GT label: label_correct [P] -> scalar."""
    return jnp.mean(_f32(label_correct))


def reward_accuracy(
    proxy_reward: jax.Array, gt_reward: jax.Array, binary: bool = True, continuous_binarize: str = "best"
) -> jax.Array:
    """mean_p mean_i 1[binarised proxy_i == gt_i] -> scalar."""
    b = binarize_proxy(proxy_reward, binary, continuous_binarize)
    per_prompt = jnp.mean(_f32(b == _correct(gt_reward)), axis=-1)
    return jnp.mean(per_prompt)


def pass_at_n(gt_reward: jax.Array) -> jax.Array:
    """Share of prompts with at least one correct response among the N: [P, N] -> scalar."""
    return jnp.mean(_f32(jnp.any(_correct(gt_reward), axis=-1)))


def point_biserial(gt_reward: jax.Array, proxy_reward: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean over groups with variance in both of corr(gt, proxy), share of such groups).

    Per group: r = Σ (x_i − x̄)(y_i − ȳ) / sqrt(Σ (x_i − x̄)² Σ (y_i − ȳ)²), x = gt ∈ {0,1}, y = proxy.
    The mean is NaN when no group qualifies.
    """
    x = _f32(_correct(gt_reward))
    y = _f32(proxy_reward)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"metrics.point_biserial: gt_reward {x.shape} and proxy_reward {y.shape} must both be [P, N]")
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    yc = y - jnp.mean(y, axis=-1, keepdims=True)
    sxx = jnp.sum(xc * xc, axis=-1)
    syy = jnp.sum(yc * yc, axis=-1)
    varies = (jnp.max(x, -1) > jnp.min(x, -1)) & (jnp.max(y, -1) > jnp.min(y, -1))
    r = jnp.sum(xc * yc, axis=-1) / jnp.sqrt(jnp.where(varies, sxx * syy, 1.0))
    n_ok = jnp.sum(varies)
    mean_r = jnp.where(n_ok > 0, jnp.sum(jnp.where(varies, r, 0.0)) / jnp.maximum(n_ok, 1), jnp.nan)
    return mean_r, jnp.mean(_f32(varies))


def pseudo_label_accuracy(proxy_reward: jax.Array, gt_reward: jax.Array) -> jax.Array:
    """Share of groups whose highest-proxy response (first on ties) is GT-correct -> scalar."""
    best = jnp.argmax(_f32(proxy_reward), axis=-1)
    hit = jnp.take_along_axis(_correct(gt_reward), best[:, None], axis=-1)[:, 0]
    return jnp.mean(_f32(hit))


def zero_variance_fraction(proxy_reward: jax.Array) -> jax.Array:
    """Share of groups whose rewards are all exactly equal (zero GRPO advantage) -> scalar."""
    r = _f32(proxy_reward)
    return jnp.mean(_f32(jnp.max(r, axis=-1) == jnp.min(r, axis=-1)))


def mean_token_entropy(entropy: jax.Array, mask: jax.Array) -> jax.Array:
    """Token-mean of entropy [P, N, T] over valid positions -> scalar (0 if no valid token)."""
    m = jnp.asarray(mask).astype(bool)
    total = jnp.sum(jnp.where(m, _f32(entropy), 0.0))
    count = jnp.sum(m)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def truncated_from_tokens(tokens: jax.Array, mask: jax.Array, eos_id: int) -> jax.Array:
    """[P, N] bool: response non-empty and its last valid token is not eos_id (cut at max length)."""
    m = jnp.asarray(mask).astype(bool)
    T = m.shape[-1]
    # Index of the last valid position (mask need not be a prefix).
    last = (T - 1) - jnp.argmax(m[..., ::-1], axis=-1)
    last_tok = jnp.take_along_axis(jnp.asarray(tokens), last[..., None], axis=-1)[..., 0]
    return jnp.any(m, axis=-1) & (last_tok != eos_id)


def repetition_rate(tokens: jax.Array, mask: jax.Array, n: int = 4) -> tuple[jax.Array, jax.Array]:
    """Share of repeated n-grams per response, exactly: (rate [P, N] float32, n-gram count M [P, N]).

    An n-gram starts at i and is counted when positions i..i+n-1 are all valid. rate = (M − D)/M with D
    distinct n-grams; 0 when M = 0. The n-grams are sorted lexicographically (invalid ones last) and D
    counts the boundaries between runs of equal n-grams.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"metrics.repetition_rate: n (the n-gram order) must be >= 1, got {n}")
    tok = jnp.asarray(tokens).astype(jnp.int32)
    m = jnp.asarray(mask).astype(bool)
    if tok.shape != m.shape:
        raise ValueError(f"metrics.repetition_rate: tokens {tok.shape} and mask {m.shape} must both be [P, N, T]")
    T = tok.shape[-1]
    pad = [(0, 0)] * (tok.ndim - 1) + [(0, n)]
    tok_p = jnp.pad(tok, pad)
    m_p = jnp.pad(m, pad)
    cols = [tok_p[..., k : k + T] for k in range(n)]  # column k = token at offset k of the n-gram
    valid = m_p[..., 0:T]
    for k in range(1, n):
        valid = valid & m_p[..., k : k + T]
    # lexsort: the LAST key is the primary one -> invalid n-grams go to the end.
    order = jnp.lexsort(tuple(reversed(cols)) + (~valid,), axis=-1)
    s_cols = [jnp.take_along_axis(c, order, axis=-1) for c in cols]
    s_valid = jnp.take_along_axis(valid, order, axis=-1)
    # A new run of equal n-grams starts at sorted position 0 and wherever any column changes.
    changes = s_cols[0][..., 1:] != s_cols[0][..., :-1]
    for c in s_cols[1:]:
        changes = changes | (c[..., 1:] != c[..., :-1])
    new_run = jnp.concatenate([jnp.ones_like(s_valid[..., :1]), changes], axis=-1)
    distinct = jnp.sum(new_run & s_valid, axis=-1)
    total = jnp.sum(valid, axis=-1)
    rate = jnp.where(total > 0, (total - distinct) / jnp.maximum(total, 1), 0.0).astype(jnp.float32)
    return rate, total


def length_ratio(mask: jax.Array, reference_length: float) -> jax.Array:
    """Mean response length / reference_length (e.g. the step-0 mean length) -> scalar."""
    return jnp.mean(_f32(response_lengths(mask))) / jnp.float32(reference_length)


# --------------------------------------------------------------------------------------------- bundle
@partial(jax.jit, static_argnames=("binary", "continuous_binarize", "ngram", "eos_id"))
def _device_metrics(arrays, *, binary, continuous_binarize, ngram, eos_id):
    proxy, gt, mask = arrays["proxy_reward"], arrays["gt_reward"], arrays["mask"]
    out = {}
    if arrays.get("label_correct") is not None:
        out["urlvr/label_accuracy"] = label_accuracy(arrays["label_correct"])
    elif binary:
        out["urlvr/label_accuracy"] = label_accuracy(label_correct_from_rewards(proxy, gt))
    out["urlvr/reward_accuracy"] = reward_accuracy(proxy, gt, binary, continuous_binarize)
    out["urlvr/proxy_reward_mean"] = jnp.mean(_f32(proxy))
    out["urlvr/gt_reward_mean"] = jnp.mean(_f32(_correct(gt)))
    out["urlvr/pass_at_n"] = pass_at_n(gt)
    if arrays.get("majority_ratio") is not None:
        out["urlvr/majority_ratio"] = jnp.mean(_f32(arrays["majority_ratio"]))
    elif binary:
        out["urlvr/majority_ratio"] = jnp.mean(_f32(binarize_proxy(proxy, True)))
    pb, pb_frac = point_biserial(gt, proxy)
    out["urlvr/point_biserial"] = pb
    out["urlvr/point_biserial_groups_frac"] = pb_frac
    out["urlvr/pseudo_label_accuracy"] = pseudo_label_accuracy(proxy, gt)
    out["urlvr/zero_variance_frac"] = zero_variance_fraction(proxy)
    if arrays.get("entropy") is not None:
        out["response/entropy_mean"] = mean_token_entropy(arrays["entropy"], mask)
    lengths = _f32(response_lengths(mask))
    out["response/length_mean"] = jnp.mean(lengths)
    if arrays.get("truncated") is not None:
        out["response/truncation_rate"] = jnp.mean(_f32(arrays["truncated"]))
    elif eos_id is not None and arrays.get("tokens") is not None:
        out["response/truncation_rate"] = jnp.mean(_f32(truncated_from_tokens(arrays["tokens"], mask, eos_id)))
    if arrays.get("tokens") is not None:
        rate, total = repetition_rate(arrays["tokens"], mask, ngram)
        has = total > 0
        n_has = jnp.sum(has)
        out["collapse/repetition_mean"] = jnp.where(
            n_has > 0, jnp.sum(jnp.where(has, rate, 0.0)) / jnp.maximum(n_has, 1), jnp.nan
        )
        out["collapse/repetitive_frac"] = jnp.where(
            n_has > 0,
            jnp.sum(has & (rate >= arrays["repetitive_threshold"])) / jnp.maximum(n_has, 1),
            jnp.nan,
        )
    if arrays.get("reference_length") is not None:
        out["collapse/length_ratio"] = jnp.mean(lengths) / arrays["reference_length"]
    return out


def step_metrics(
    proxy_reward,
    gt_reward,
    mask,
    *,
    binary_proxy: bool,
    label_correct=None,
    majority_ratio=None,
    entropy=None,
    tokens=None,
    truncated=None,
    eos_id: int | None = None,
    reference_length: float | None = None,
    ngram: int = 4,
    repetitive_threshold: float = 0.5,
    continuous_binarize: str = "best",
) -> dict[str, float]:
    """All per-step URLVR metrics of one group batch, as host floats under names from METRIC_NAMES.

    proxy_reward, gt_reward [P, N]; mask [P, N, T]; optional: label_correct [P] bool, majority_ratio [P]
    (from the vote), entropy [P, N, T], tokens [P, N, T] int (repetition; with eos_id also truncation),
    truncated [P, N] bool, reference_length (> 0) for length collapse.
    binary_proxy: True for 0/1 rewards (majority vote), False for continuous ones (certainty rewards,
    cluster share), which are binarised by `continuous_binarize` for reward accuracy.
    Keys always present: reward_accuracy, proxy/gt reward means, pass_at_n, point_biserial(+_groups_frac),
    pseudo_label_accuracy, zero_variance_frac, length_mean. label_accuracy and majority_ratio need
    binary_proxy or their explicit inputs; the others need their inputs. NaN marks an undefined value.
    """
    proxy_reward = jnp.asarray(proxy_reward)
    gt_reward = jnp.asarray(gt_reward)
    mask = jnp.asarray(mask)
    _check_pn("proxy_reward", proxy_reward)
    _check_pn("gt_reward", gt_reward, proxy_reward.shape)
    if mask.ndim != 3 or mask.shape[:2] != proxy_reward.shape:
        raise ValueError(f"metrics.step_metrics: `mask` must be [P, N, T] with [P, N] = {proxy_reward.shape}, "
                         f"got {mask.shape}")
    for name, x, nd in (("entropy", entropy, 3), ("tokens", tokens, 3), ("truncated", truncated, 2)):
        if x is not None and tuple(jnp.shape(x)) != tuple(mask.shape[:nd]):
            raise ValueError(f"metrics.step_metrics: `{name}` has shape {jnp.shape(x)}, expected {mask.shape[:nd]}")
    for name, x in (("label_correct", label_correct), ("majority_ratio", majority_ratio)):
        if x is not None and tuple(jnp.shape(x)) != (proxy_reward.shape[0],):
            raise ValueError(f"metrics.step_metrics: `{name}` has shape {jnp.shape(x)}, "
                             f"expected [P] = ({proxy_reward.shape[0]},)")
    if reference_length is not None and not float(reference_length) > 0:
        raise ValueError(f"metrics.step_metrics: reference_length must be > 0, got {reference_length!r}")
    if continuous_binarize not in _BINARIZE:
        raise ValueError(f"metrics.step_metrics: continuous_binarize must be one of {_BINARIZE}, "
                         f"got {continuous_binarize!r}")
    arrays = {
        "proxy_reward": proxy_reward,
        "gt_reward": gt_reward,
        "mask": mask,
        "label_correct": label_correct,
        "majority_ratio": majority_ratio,
        "entropy": entropy,
        "tokens": tokens,
        "truncated": truncated,
        "reference_length": None if reference_length is None else jnp.float32(reference_length),
        "repetitive_threshold": jnp.float32(repetitive_threshold),
    }
    out = _device_metrics(
        arrays, binary=bool(binary_proxy), continuous_binarize=continuous_binarize, ngram=int(ngram),
        eos_id=None if eos_id is None else int(eos_id),
    )
    return {k: float(v) for k, v in jax.device_get(out).items()}


# ----------------------------------------------------------------------------------------- evaluation
def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k), n samples of which c correct.

    Computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i) in float64 (no huge binomials). n, c may be arrays of the
    same shape (per-problem counts); returns a float or a float64 array.
    """
    n_a, c_a = np.broadcast_arrays(np.asarray(n), np.asarray(c))
    k = int(k)
    if np.any(n_a < 1) or np.any(c_a < 0) or np.any(c_a > n_a):
        raise ValueError(f"metrics.pass_at_k: need n >= 1 and 0 <= c <= n, got n={n!r}, c={c!r}")
    if k < 1 or np.any(k > n_a):
        raise ValueError(f"metrics.pass_at_k: need 1 <= k <= n, got k={k}, n={n!r}")
    out = np.empty(n_a.shape, np.float64)
    for idx in np.ndindex(n_a.shape):
        nn, cc = int(n_a[idx]), int(c_a[idx])
        if nn - cc < k:
            out[idx] = 1.0
        else:
            out[idx] = 1.0 - np.prod(1.0 - k / np.arange(nn - cc + 1, nn + 1, dtype=np.float64))
    return float(out) if out.ndim == 0 else out


def avg_at_k(correct) -> float:
    """avg@k: mean accuracy over the k samples of each prompt, averaged over prompts. correct [P, k]."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(f"metrics.avg_at_k: `correct` must be [P, k] with k >= 1, got {c.shape}")
    return float(c.mean(axis=1).mean())


def maj_at_k(answers: Sequence[Sequence[Hashable]], correct, k: int | None = None, no_answer=None) -> float:
    """maj@k: share of prompts whose majority answer among the first k samples is correct.

    answers [P][n] hashable canonical answers (`no_answer`, default None, = no vote); correct [P][n].
    Majority = most votes, ties to the first seen; the prompt scores the correctness of the first
    response giving that answer; a prompt with no answer at all scores 0.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or len(answers) != correct.shape[0]:
        raise ValueError(f"metrics.maj_at_k: `correct` must be [P, n] matching answers' P={len(answers)}, "
                         f"got {correct.shape}")
    scores = []
    for p, row in enumerate(answers):
        if len(row) != correct.shape[1]:
            raise ValueError(f"metrics.maj_at_k: answers[{p}] has {len(row)} entries, correct has {correct.shape[1]}")
        kk = len(row) if k is None else int(k)
        if not 1 <= kk <= len(row):
            raise ValueError(f"metrics.maj_at_k: need 1 <= k <= n = {len(row)}, got k={k}")
        counts: dict = {}
        first: dict = {}
        for i, a in enumerate(row[:kk]):
            if a is no_answer or (no_answer is not None and a == no_answer):
                continue
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
        if not counts:
            scores.append(0.0)
            continue
        best = max(counts.values())
        winner = min((a for a, c in counts.items() if c == best), key=first.__getitem__)
        scores.append(float(correct[p, first[winner]]))
    return float(np.mean(scores))
