"""The run report's held-out headline (report.heldout_summary): window means with standard errors over
problems, rise and fall as paired differences, from evals.jsonl lines (monitor.eval_record); make_report
writes it and its plots."""
import json

import numpy as np
import pytest

from urlvr_jax.monitor import eval_record
from urlvr_jax.report import heldout_summary, make_report


def _evals(acc: np.ndarray, steps) -> list[dict]:
    """evals.jsonl-like lines from per-problem accuracies acc [evaluations, problems]."""
    return [{"step": s, "eval/avg": float(a.mean()), "eval/k": 4, "problem/avg": a.tolist()}
            for s, a in zip(steps, acc)]


def test_windows_rise_and_fall_against_a_hand_computation():
    rng = np.random.default_rng(0)
    P = 50
    means = [0.5, 0.55, 0.7, 0.72, 0.69, 0.5, 0.4, 0.35]  # peak window = evaluations 2-4 (steps 20-40)
    acc = np.stack([np.clip(m + 0.1 * rng.standard_normal(P), 0, 1) for m in means])
    steps = [0, 10, 20, 30, 40, 50, 60, 70]
    h = heldout_summary(_evals(acc, steps))
    win = [acc[i:i + 3].mean(0) for i in range(6)]
    best = int(np.argmax([w.mean() for w in win]))
    assert best == 2 and h["peak_window"]["steps"] == [20, 30, 40] and h["final_window"]["steps"] == [50, 60, 70]
    se = lambda x: x.std(ddof=1) / np.sqrt(P)  # noqa: E731
    assert h["start"]["mean"] == pytest.approx(acc[0].mean()) and h["start"]["se"] == pytest.approx(se(acc[0]))
    assert h["peak_window"]["mean"] == pytest.approx(win[2].mean())
    assert h["peak_window"]["se"] == pytest.approx(se(win[2]))
    assert h["final_window"]["mean"] == pytest.approx(win[5].mean())
    assert h["rise"]["mean"] == pytest.approx(win[2].mean() - acc[0].mean())
    assert h["rise"]["se"] == pytest.approx(se(win[2] - acc[0]))  # paired over problems
    assert h["fall"]["mean"] == pytest.approx(win[2].mean() - win[5].mean())
    assert h["fall"]["se"] == pytest.approx(se(win[2] - win[5]))
    assert h["n_problems"] == P and h["metric"] == "avg@4" and h["window"] == 3


def test_no_step0_no_start_short_runs_and_bad_input():
    acc = np.full((2, 4), 0.5)
    h = heldout_summary(_evals(acc, [10, 20]))
    assert h["start"] is None and h["rise"] is None and h["window"] == 2 and h["fall"]["mean"] == 0.0
    assert heldout_summary([]) is None
    # two evaluations: one window of both; means only without per-problem values
    means_only = heldout_summary([{"step": 0, "eval/avg": 0.4}, {"step": 5, "eval/avg": 0.6}])
    assert means_only["rise"]["mean"] == pytest.approx(0.1) and means_only["rise"]["se"] is None
    bad = _evals(acc, [0, 10])
    bad[1]["problem/avg"] = [0.5] * 3
    with pytest.raises(ValueError, match="evals.jsonl: evaluations have different numbers of problems"):
        heldout_summary(bad)


def test_eval_record_from_per_problem_records():
    recs = [{"correct": [True, False, True, True], "majority_correct": True},
            {"correct": [False] * 4, "majority_correct": False},
            {"correct": [True, False, False, False], "majority_correct": False}]
    r = eval_record(recs, 25, 4)
    acc = np.array([0.75, 0.0, 0.25])
    assert r["step"] == 25 and r["problem/avg"] == acc.tolist() and r["problem/maj"] == [1, 0, 0]
    assert r["eval/avg"] == pytest.approx(acc.mean())
    assert r["eval/avg_se"] == pytest.approx(acc.std(ddof=1) / np.sqrt(3))
    assert r["eval/maj"] == pytest.approx(1 / 3) and r["eval/pass"] == pytest.approx(2 / 3)
    assert r["eval/n_problems"] == 3


def test_make_report_headline_and_plots(tmp_path):
    rng = np.random.default_rng(1)
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 31):
            f.write(json.dumps({"step": s, "urlvr/gt_reward_mean": float(rng.uniform()),
                                "urlvr/proxy_reward_mean": 0.5 + s / 100}) + "\n")
    acc = np.clip(np.array([0.5, 0.6, 0.65, 0.6])[:, None] + 0.05 * rng.standard_normal((4, 20)), 0, 1)
    with open(tmp_path / "evals.jsonl", "w") as f:
        for e in _evals(acc, [0, 10, 20, 30]):
            f.write(json.dumps({**e, "eval/avg_se": float(np.std(e["problem/avg"], ddof=1) / np.sqrt(20))}) + "\n")
    rep = make_report(tmp_path)
    h = rep["heldout"]
    assert h["start"]["mean"] == pytest.approx(acc[0].mean()) and h["peak_window"]["steps"] == [10, 20, 30]
    assert "train_batch_gt_accuracy_peak" in rep and "gt_accuracy_peak" not in rep
    assert "accuracy_vs_proxy.png" in rep["plots"] and (tmp_path / "accuracy_vs_proxy.png").stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["heldout"] == h
