"""experiments/four_arms.py: the crossed bootstrap and window statistics against direct computations, the
decision rules on constructed inputs, and the script end to end with --smoke (all four arms, 2 steps)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import four_arms  # noqa: E402


def test_windows_and_arm_stats():
    curve = np.array([0.5, 0.6, 0.7, 0.65, 0.4, 0.3, 0.2])
    assert four_arms.windows(curve) == (1, 4)  # (0.6+0.7+0.65)/3 is the best 3-window; last window starts at 4
    acc = np.tile(curve[None, :, None], (2, 1, 5))  # [seeds, evals, problems], constant over seeds/problems
    start, peak, final, rise, fall, change = four_arms.arm_stats(acc, 1, 4)
    assert start == pytest.approx(0.5) and peak == pytest.approx(0.65) and final == pytest.approx(0.3)
    assert rise == pytest.approx(0.15) and fall == pytest.approx(0.35) and change == pytest.approx(-0.2)


def test_crossed_bootstrap_shares_draws_and_matches_the_problem_se():
    rng = np.random.default_rng(0)
    S, E, P = 3, 4, 400
    a = rng.uniform(size=(S, E, P))
    boot = four_arms.crossed_bootstrap({"x": a, "y": a.copy()}, lambda k, v: v.mean(), 500, seed=1)
    np.testing.assert_array_equal(boot["x"], boot["y"])  # the same seed and problem draws for every arm
    # with no seed-to-seed variation the bootstrap SE is the problem SE of the mean (within 15%: 500 draws)
    flat = np.tile(a[:1], (S, 1, 1))
    b = four_arms.crossed_bootstrap({"x": flat}, lambda k, v: v.mean(), 500, seed=1)["x"]
    se = flat[0].mean(0).std(ddof=1) / np.sqrt(P)
    assert b.std(ddof=1) == pytest.approx(se, rel=0.15)


def test_decision_rules_on_constructed_arms():
    rng = np.random.default_rng(0)
    S, P = 3, 256
    steps = list(range(0, 130, 10))

    def arm(curve):
        return np.clip(np.asarray(curve)[None, :, None] + 0.05 * rng.standard_normal((S, len(curve), P)), 0, 1)

    flat = [0.5] * 13
    rise_fall = [0.5, 0.6, 0.7, 0.7, 0.7, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3]
    up = list(np.linspace(0.5, 0.8, 13))
    down = list(np.linspace(0.5, 0.3, 13))
    s = four_arms.summarize_arms({"good_mv": arm(rise_fall), "bad_mv": arm(down), "good_gt": arm(up),
                                  "good_random": arm(flat)}, steps, 300)
    d = four_arms.decide(s)
    assert d["R0_learnable"] and d["R1_rise/good_mv"] and d["R2_fall/good_mv"] and not d["R1_rise/bad_mv"]
    assert d["random_within_2se_of_start"] and d["R3_prior_decides"] and d["verdict"].startswith("the prior decides")
    assert s["arms"]["good_mv"]["peak_window_steps"] == [20, 30, 40]
    same = four_arms.summarize_arms({"good_mv": arm(flat), "bad_mv": arm(flat), "good_random": arm(flat)}, steps, 300)
    assert not four_arms.decide(same)["R3_prior_decides"]


@pytest.mark.slow  # a subprocess running four short trainings (~1.5 min on a busy 2-core CPU)
def test_four_arms_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", URLVR_XLA_CACHE=str(tmp_path / "xla_cache"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "four_arms.py"), "--smoke", "--out", str(out),
                          "--runs-dir", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    r = json.loads((out / "four_arms.json").read_text())
    assert list(r["summary"]["arms"]) == [a[0] for a in four_arms.ARMS]
    assert r["eval_steps"] == [0, 1, 2] and r["n_problems"] == 16
    assert r["model_paths"] == {"good": "ladder_v2/q0.05", "bad": "ladder_v2/q0.8"}
    for name, a in r["summary"]["arms"].items():
        assert all(np.isfinite(a[k]["mean"]) for k in four_arms.STAT_NAMES), name
    # one prior's arms share the step-0 evaluation (same model, same problems, same evaluation seed)
    starts = {n: r["summary"]["arms"][n]["start"]["mean"] for n in ("good_mv", "good_gt", "good_random")}
    assert len(set(starts.values())) == 1, starts
    assert (out / "four_arms.png").stat().st_size > 10_000 and "| good_random |" in (out / "four_arms.md").read_text()


def test_calibrate_lr_decision_rule():
    """experiments/calibrate_lr.py: the largest lr that learns (gt rise CI > 0), is stable (gt fall <= 2 SE) and
    is inert (random-arm |change| <= 2 SE and KL <= 0.1) is chosen; otherwise the largest inert lr is named."""
    import calibrate_lr

    def arm(rise_lo=0.0, fall=0.0, change=0.0, se=0.01):
        return {"rise": {"mean": 0.1, "se": se, "ci95": [rise_lo, 0.2]}, "fall": {"mean": fall, "se": se},
                "change": {"mean": change, "se": se}}

    stats = {1e-4: {"gt": arm(rise_lo=0.01), "random": arm(change=0.005)},      # learns, stable, inert
             3e-4: {"gt": arm(rise_lo=0.05), "random": arm(change=0.005)},      # same, but KL too large below
             1e-3: {"gt": arm(rise_lo=0.08, fall=0.1), "random": arm(change=-0.3)}}
    kl = {1e-4: 0.02, 3e-4: 0.2, 1e-3: 1.5}
    d = calibrate_lr.decide_lr(stats, kl)
    assert d["calibrated_lr"] == 1e-4 and d["largest_inert_lr"] == 1e-4
    assert d["per_lr"]["0.0003"] == {"learns": True, "stable": True, "inert": False}
    assert d["per_lr"]["0.001"] == {"learns": True, "stable": False, "inert": False}
    stats[1e-4]["gt"] = arm(rise_lo=-0.01)  # the only inert lr cannot learn: no calibrated lr
    d = calibrate_lr.decide_lr(stats, kl)
    assert d["calibrated_lr"] is None and d["largest_inert_lr"] == 1e-4 and "largest inert lr is 0.0001" in d["verdict"]
