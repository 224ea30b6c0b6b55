"""Run report: `report.json` and PNG plots from a workdir's metrics.jsonl.

    python -m urlvr_jax.report runs/default      # (re)build the report of a finished or running run

Plots: GT accuracy vs proxy reward (the rise-then-fall picture), reward and label accuracy with the
Model Collapse Step marked, entropy, response length, and the closed-form π* predicted accuracy
ceiling (per step when the run computed it, and at each epoch end from epochs.jsonl) against the GT
accuracy training reached.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

PANELS = [
    ("accuracy_vs_proxy.png", "GT accuracy vs proxy reward",
     [("urlvr/gt_reward_mean", "GT reward (training accuracy)"), ("urlvr/proxy_reward_mean", "proxy reward"),
      ("eval/avg", "eval avg@k")]),
    ("reward_and_label_accuracy.png", "Reward / label accuracy (MCS marked)",
     [("urlvr/reward_accuracy", "reward accuracy"), ("urlvr/label_accuracy", "label accuracy"),
      ("urlvr/majority_ratio", "majority ratio")]),
    ("entropy.png", "Mean token entropy", [("response/entropy_mean", "entropy (nats)")]),
    ("response_length.png", "Response length", [("response/length_mean", "tokens")]),
    ("pistar_ceiling.png", "π* predicted ceiling vs accuracy reached",
     [("urlvr/gt_reward_mean", "policy GT accuracy (training batches)"), ("eval/avg", "eval avg@k"),
      ("pistar/accuracy", "π* accuracy of the current policy (SNIS)"),
      ("epochs:pistar/accuracy", "π* accuracy, epoch-end probe (SNIS)"),
      ("epochs:pistar/policy_accuracy", "policy accuracy on the epoch-end probe")]),
]
# keys written "epochs:<key>" are read from epochs.jsonl (one line per finished epoch), the others from
# metrics.jsonl (one line per step)
# Series drawn as a moving average (raw values faint behind): single steps of 16 prompts are noisy.
SMOOTHED = {"urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "urlvr/label_accuracy",
            "urlvr/majority_ratio", "response/entropy_mean", "response/length_mean", "pistar/accuracy"}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average with a shrinking window at the start (same length as `values`)."""
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _smoothing_window(n: int) -> int:
    return int(np.clip(n // 20, 1, 10))


def read_metrics(workdir: str | Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The records of metrics.jsonl (or of epochs.jsonl with name=...; [] when a run has no epochs.jsonl)."""
    path = Path(workdir) / name
    if name != "metrics.jsonl" and not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON object ({e.msg})") from e
    return records


def series(records, key):
    steps = np.array([r["step"] for r in records if key in r and r[key] is not None], float)
    vals = np.array([r[key] for r in records if key in r and r[key] is not None], float)
    return steps, vals


def summarize(records: list[dict[str, Any]], mcs: dict | None = None,
              epochs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Headline numbers of a run: start / peak / final GT accuracy, MCS, π* ceiling (from per-step estimates
    when the run made them, else from the first epoch-end probe in epochs.jsonl)."""
    out: dict[str, Any] = {"steps": len(records)}
    if not records:
        return out
    s, gt = series(records, "urlvr/gt_reward_mean")
    if len(gt):
        k = max(1, min(5, len(gt) // 5))  # smooth over a few steps: single steps are noisy
        smooth = np.convolve(gt, np.ones(k) / k, mode="valid")
        out.update(gt_accuracy_first=float(smooth[0]), gt_accuracy_peak=float(smooth.max()),
                   gt_accuracy_peak_step=int(s[int(np.argmax(smooth)) + k - 1]), gt_accuracy_final=float(smooth[-1]),
                   smoothing_window=k)
    _, proxy = series(records, "urlvr/proxy_reward_mean")
    if len(proxy):
        out.update(proxy_reward_first=float(proxy[0]), proxy_reward_final=float(proxy[-1]))
    _, ceiling = series(records, "pistar/accuracy")
    if len(ceiling):
        out["pistar_accuracy_first_steps"] = float(np.nanmean(ceiling[: max(1, len(ceiling) // 10)]))
    if epochs:
        out["epochs"] = len(epochs)
        _, by_epoch = series(epochs, "pistar/accuracy")
        if len(by_epoch):
            out["pistar_accuracy_by_epoch"] = [float(v) for v in by_epoch]
            out.setdefault("pistar_accuracy_first_steps", float(by_epoch[0]))
    if mcs is not None:
        out["model_collapse_step"] = mcs
    else:
        last = records[-1]
        out["model_collapse_step"] = {"raw": last.get("mcs/raw"), "sustained": last.get("mcs/sustained")}
    return out


def make_report(workdir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json and the PNG plots into workdir; returns the report dict."""
    # Figure objects without pyplot: no global backend switch (a notebook calling this keeps its inline plots)
    from matplotlib.figure import Figure

    workdir = Path(workdir)
    records = read_metrics(workdir)
    epochs = read_metrics(workdir, "epochs.jsonl")
    report = summarize(records, (extra or {}).get("mcs"), epochs)
    report.update({k: v for k, v in (extra or {}).items() if k != "mcs"})
    mcs_step = (report.get("model_collapse_step") or {})
    mcs_raw = mcs_step.get("mcs_raw", mcs_step.get("raw"))
    plots = []
    for fname, title, keys in PANELS:
        drawn = False
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
        for i, (key, label) in enumerate(keys):
            s, v = series(epochs, key[len("epochs:"):]) if key.startswith("epochs:") else series(records, key)
            if not len(s):
                continue
            color = f"C{i}"
            w = _smoothing_window(len(v)) if key in SMOOTHED else 1
            if w > 1:
                ax.plot(s, v, color=color, alpha=0.2, linewidth=0.8)
                label = f"{label} ({w}-step mean)"
                v = moving_average(v, w)
            ax.plot(s, v, color=color, label=label, marker="." if len(s) < 40 else None)
            drawn = True
        if not drawn:
            continue
        if fname == "pistar_ceiling.png" and report.get("pistar_accuracy_first_steps") is not None:
            ceiling = report["pistar_accuracy_first_steps"]
            ax.axhline(ceiling, color="black", linestyle=":", label=f"π* ceiling predicted at start = {ceiling:.3f}")
            if report.get("gt_accuracy_peak") is not None:
                ax.scatter([report["gt_accuracy_peak_step"]], [report["gt_accuracy_peak"]], color="C0", zorder=5,
                           label=f"peak reached = {report['gt_accuracy_peak']:.3f}")
        if mcs_raw not in (None, -1) and "accuracy" in fname:
            ax.axvline(mcs_raw, color="red", linestyle="--", label=f"MCS = {mcs_raw}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(workdir / fname, dpi=110)
        plots.append(fname)
    report["plots"] = plots
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    print(json.dumps(make_report(sys.argv[1]), indent=2, default=str))
