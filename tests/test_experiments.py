"""Experiments 1, 2 and 6 (experiments/rise_fall.py, mcs_vs_gt_gain.py, theorem1_rate.py).

One subprocess runs the three scripts' --smoke versions back to back (same process: the smoke runs share
compiled programs; a fresh process because conftest gives this one 8 fake devices, and the scripts are
meant for one). The outputs are checked for content; the analysis helpers are checked against exact
references (no training needed).
"""
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import common as C  # noqa: E402


@pytest.fixture(scope="module")
def smoke(experiment_smokes):
    """rise_fall, mcs_vs_gt_gain and theorem1_rate --smoke, in one process (tests/conftest.py)."""
    return experiment_smokes.wait("chain")


@pytest.mark.slow  # experiment smoke runs
def test_rise_fall_smoke(smoke):
    res = json.loads((smoke / "rf" / "rise_fall.json").read_text())
    run = res["runs"]["majority_vote"]
    assert len(run["curves"]["urlvr/gt_reward_mean"]) == 2  # one record per step
    held = run["summary"]["heldout"]
    assert sorted(int(k) for k in held) == [0, 1, 2]  # base model + every checkpoint evaluated
    for h in held.values():
        assert 0.0 <= h["accuracy"] <= 1.0 and h["se"] >= 0.0
    for name in ("rise_fall.md", "rise_fall.png", "collapse_detectors.png"):
        assert (smoke / "rf" / name).stat().st_size > 0
    assert "| majority_vote |" in (smoke / "rf" / "rise_fall.md").read_text()


@pytest.mark.slow  # experiment smoke runs
def test_mcs_vs_gt_gain_smoke(smoke):
    res = json.loads((smoke / "mcs" / "mcs_vs_gt_gain.json").read_text())
    rows = res["rows"]
    assert [r["rung"] for r in rows] == ["q0.1", "q0.8"]
    for r in rows:
        assert r["base_pass"] >= r["base_avg"]  # pass@k >= pass@1 on the same samples
        assert abs(r["passk_gain"] - (r["base_pass"] - r["base_avg"])) < 1e-12
        assert r["steps_run"] == 2  # a 5-step sustained window cannot fire (and stop the run) in 2 steps
        assert r["mcs_sustained"] is None and r["mcs_sustained_ranked"] == 3  # censored: last step + 1
    assert set(res["spearman_with_gt_gain"]) == {"mcs_raw_ranked", "mcs_sustained_ranked", "mcs_half_ranked",
                                                 "mean_reward_accuracy", "passk_gain"}
    assert (smoke / "mcs" / "mcs_vs_gt_gain.png").stat().st_size > 0


@pytest.mark.slow  # experiment smoke runs
def test_theorem1_rate_smoke(smoke):
    res = json.loads((smoke / "th" / "theorem1_rate.json").read_text())
    assert set(res["runs"]) == {"mcs q0.1", "mcs q0.8", "rise_fall q0.3"}
    for run in res["runs"].values():
        t = run["trajectory"]
        p = np.array(t["p"])
        assert p.shape[1] == len(t["steps"]) and t["steps"][0] == 0
        n = res["params"]["samples"]
        np.testing.assert_allclose(p * n, np.round(p * n), atol=1e-9)  # shares of n samples
        assert np.all((p >= 0) & (p <= 1))
        np.testing.assert_allclose(run["analysis"]["p_mean"], p.mean(axis=0), atol=1e-4)
        assert 0 <= run["analysis"]["rate"] <= 20.0 and abs(run["analysis"]["signed_rate"]) <= 20.0  # inside the grids


# ------------------------------------------------------------------ analysis helpers vs exact references
def test_fit_rate_recovers_a_known_logistic_rate():
    import theorem1_rate as T

    rng = np.random.default_rng(0)
    l0 = rng.normal(0.0, 1.0, 40)
    steps = np.arange(0, 60, 10)
    for true in (0.0, 0.013, 0.2, 1.5):
        p = T.logistic(l0, true, steps)
        assert abs(T.fit_rate(p, l0, steps) - true) <= 0.01 * true + 1e-3  # noise-free: grid resolution only
        assert abs(T.fit_rate(p, l0, steps, T.SIGNED_GRID) - true) <= 0.01 * true + 1e-3
    p = T.logistic(l0, -0.2, steps)  # a shrinking mass: the theorem's family (rate >= 0) can only say 0
    assert T.fit_rate(p, l0, steps) == 0.0
    assert abs(T.fit_rate(p, l0, steps, T.SIGNED_GRID) + 0.2) <= 0.002


def test_logistic_is_theorem1_closed_form():
    import theorem1_rate as T

    from urlvr_jax.diagnostics.theory import closed_form_majority_mass

    beta, p0 = 0.7, 0.3
    p, _ = closed_form_majority_mass(p0, beta, 12)
    got = T.logistic(np.array([np.log(p0 / (1 - p0))]), 1 / beta, np.arange(13))[0]
    np.testing.assert_allclose(got, p, rtol=1e-12)


def test_spearman_exact_p_value():
    import mcs_vs_gt_gain as F2
    from scipy.stats import spearmanr

    s = F2.spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert s["rho"] == pytest.approx(1.0) and s["p_exact"] == pytest.approx(2 / 120)  # only ±identity
    x, y = [3, 1, 4, 1.5, 5], [2, 7, 1, 8, 2.8]
    s = F2.spearman(x, y)
    rho = spearmanr(x, y).statistic
    brute = np.mean([abs(spearmanr(x, list(q)).statistic) >= abs(rho) - 1e-12 for q in itertools.permutations(y)])
    assert s["rho"] == pytest.approx(rho) and s["p_exact"] == pytest.approx(brute)


def test_collapse_measures_censoring_and_half_crossing():
    import mcs_vs_gt_gain as F2

    ra = [0.9] * 10 + [0.3] * 10  # trailing 5-means from index 10: 0.78, 0.66, 0.54, 0.42 -> step 14
    recs = [{"step": i + 1, "urlvr/reward_accuracy": a, "mcs/raw": -1, "mcs/sustained": -1} for i, a in enumerate(ra)]
    m = F2.collapse_measures(recs, budget=40)
    assert m["mcs_half"] == 14 and m["mcs_sustained"] is None and m["mcs_sustained_ranked"] == 21
    assert m["mean_reward_accuracy"] == pytest.approx(sum(ra) / 40)  # steps after the run count as 0


def test_moving_average_and_majority_match_references():
    x = np.random.default_rng(1).normal(size=23)
    ref = [x[max(0, i - 4):i + 1].mean() for i in range(len(x))]
    np.testing.assert_allclose(C.moving_average(x, 5), ref, rtol=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(200):
        row = [None if v == 0 else int(v) for v in rng.integers(0, 4, size=7)]
        counts = Counter(a for a in row if a is not None)
        got, share = C.majority(row)
        if not counts:
            assert got is None and share == 0.0
            continue
        best = max(counts.values())
        assert got == next(a for a in row if a is not None and counts[a] == best)  # first seen among the tied
        assert share == best / len(row)
