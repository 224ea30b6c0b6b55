"""Model Collapse Step tracker on synthetic reward-accuracy curves with hand-derived answers."""
import json

import numpy as np
import pytest

from urlvr_jax.diagnostics.collapse import ModelCollapseTracker


def _run(curve, **kw):
    """Feed (step, acc) pairs; return the tracker and the first step at which should_stop was true."""
    t = ModelCollapseTracker(**kw)
    stopped_at = None
    for step, acc in curve:
        if t.update(step, acc) and stopped_at is None:
            stopped_at = step
    return t, stopped_at


def _noisy_collapse_curve():
    """Noisy decline clipped to >= 0.02, ONE noise spike (0.005) at step 30, true collapse from step 100
    on (values in [0, 0.009]); the last value before the collapse is 0.3."""
    rng = np.random.default_rng(0)
    curve = []
    for s in range(150):
        if s == 30:
            acc = 0.005
        elif s < 100:
            acc = float(np.clip(0.6 - 0.003 * s + 0.05 * rng.standard_normal(), 0.02, 1.0))
            if s == 99:
                acc = 0.3
        else:
            acc = float(rng.uniform(0.0, 0.009))
        curve.append((s, acc))
    return curve


def test_noisy_curve_raw_vs_sustained():
    curve = _noisy_collapse_curve()
    t, stopped = _run(curve, window=5, mode="consecutive")
    s = t.summary()
    assert s["mcs_raw"] == 30  # the noise spike
    assert s["mcs_sustained"] == 100 and s["mcs_sustained_confirmed_at"] == 104
    assert s["mcs"] == 100 and "consecutive" in s["mcs_variant"]
    assert stopped == 104 and s["should_stop"]
    # Moving average: the first full window inside the collapse is steps 100..104 (step 99 is 0.3,
    # which keeps every earlier window mean above 0.3/5 = 0.06); the spike's window mean is ~0.4.
    t, stopped = _run(curve, window=5, mode="moving_average")
    assert t.summary()["mcs_sustained"] == 104 and stopped == 104 and t.summary()["mcs_raw"] == 30
    assert "moving average" in t.summary()["mcs_variant"]


def test_crossing_then_recovering():
    curve = [(s, 0.0 if s in (50, 51, 52) else 0.3) for s in range(120)]
    t, stopped = _run(curve, window=5, mode="consecutive")
    assert t.summary()["mcs_raw"] == 50 and t.summary()["mcs_sustained"] is None
    assert t.summary()["mcs"] is None and stopped is None and not t.should_stop
    t, _ = _run(curve, window=5, mode="moving_average")  # window mean (0+0+0+.3+.3)/5 = .12
    assert t.summary()["mcs_sustained"] is None
    t, stopped = _run(curve, window=5, stop_on="raw")
    assert stopped == 50 and t.summary()["mcs"] == 50 and t.summary()["mcs_variant"].startswith("raw")
    # A window of 3 sees the 3-step dip as sustained.
    t, stopped = _run(curve, window=3)
    assert t.summary()["mcs_sustained"] == 50 and stopped == 52


def test_never_crossing():
    # Exactly at the threshold is not "below" it.
    curve = [(s, 0.01 if s % 7 == 0 else 0.2 + 0.1 * np.sin(s)) for s in range(200)]
    for mode in ("consecutive", "moving_average"):
        t, stopped = _run(curve, window=5, mode=mode)
        s = t.summary()
        assert s["mcs_raw"] is None and s["mcs_sustained"] is None and s["mcs"] is None
        assert stopped is None and s["steps_seen"] == 200 and s["last_step"] == 199


def test_flickering_near_threshold_separates_the_variants():
    """Alternating 0.0 / 0.015 after step 200: no 5-long run below 1%, but the moving average is 0.006."""
    curve = [(s, 0.4) for s in range(200)] + [(s, 0.0 if s % 2 == 0 else 0.015) for s in range(200, 260)]
    t, _ = _run(curve, window=5, mode="consecutive")
    assert t.summary()["mcs_raw"] == 200 and t.summary()["mcs_sustained"] is None
    t, stopped = _run(curve, window=5, mode="moving_average")
    assert t.summary()["mcs_sustained"] == 204 and stopped == 204


def test_state_dict_round_trip_resumes_exactly():
    curve = _noisy_collapse_curve()
    full, _ = _run(curve, window=5)
    head = ModelCollapseTracker(window=5)
    for step, acc in curve[:102]:  # stop in the middle of the confirming window
        head.update(step, acc)
    resumed = ModelCollapseTracker.from_state_dict(json.loads(json.dumps(head.state_dict())))
    assert resumed.summary()["mcs_sustained"] is None
    for step, acc in curve[102:]:
        resumed.update(step, acc)
    assert resumed.summary() == full.summary()


def test_bad_input_raises():
    t = ModelCollapseTracker()
    t.update(3, 0.5)
    with pytest.raises(ValueError, match="steps must increase"):
        t.update(3, 0.5)
    with pytest.raises(ValueError, match="finite value"):
        t.update(4, float("nan"))
    with pytest.raises(ValueError, match="mode"):
        ModelCollapseTracker(mode="ema")
    with pytest.raises(ValueError, match="missing key"):
        ModelCollapseTracker.from_state_dict({"threshold": 0.01})
