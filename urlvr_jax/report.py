"""Run report: `report.json` and PNG plots from a workdir's metrics.jsonl.

    python -m urlvr_jax.report runs/default      # (re)build the report of a finished or running run

Headline (report.json "heldout", from evals.jsonl: the periodic held-out evaluations, step 0 included): avg@k
on the same held-out problems at every evaluation, as
  start         the step-0 evaluation (the base model),
  peak_window   the WINDOW (3) consecutive evaluations with the highest mean — a window mean, not a single
                maximum, so much less selection bias than a max over steps (some remains: the window is chosen
                by its mean, and its SE does not account for that choice),
  final_window  the last WINDOW evaluations,
  rise          peak_window − start,  fall  peak_window − final_window,
each with a standard error over problems: a window's per-problem score is that problem's accuracy averaged
over the window's evaluations; SE = std of the per-problem values (ddof 1) / sqrt(problems); rise and fall are
paired (per-problem differences). Training-batch numbers (a different batch every step, smoothed over a few
steps; their peak is a max over steps, selection-biased) are kept under train_batch_* keys.

Plots: GT accuracy vs proxy reward (the rise-then-fall picture; held-out avg@k with ±2 SE bars, the peak and
final windows shaded), reward and label accuracy with the Model Collapse Step marked, entropy, response
length, and the closed-form π* predicted accuracy ceiling (per step when the run computed it, and at each
epoch end from epochs.jsonl) against the held-out accuracy training reached.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 3  # evaluations per window (peak and final)

PANELS = [
    ("accuracy_vs_proxy.png", "GT accuracy vs proxy reward",
     [("urlvr/gt_reward_mean", "GT reward (training accuracy)"), ("urlvr/proxy_reward_mean", "proxy reward"),
      ("evals:eval/avg", "held-out avg@k ± 2 SE")]),
    ("reward_and_label_accuracy.png", "Reward / label accuracy (MCS marked)",
     [("urlvr/reward_accuracy", "reward accuracy"), ("urlvr/label_accuracy", "label accuracy"),
      ("urlvr/majority_ratio", "majority ratio")]),
    ("entropy.png", "Mean token entropy", [("response/entropy_mean", "entropy (nats)")]),
    ("response_length.png", "Response length", [("response/length_mean", "tokens")]),
    ("pistar_ceiling.png", "π* predicted ceiling vs accuracy reached",
     [("urlvr/gt_reward_mean", "policy GT accuracy (training batches)"), ("evals:eval/avg", "held-out avg@k ± 2 SE"),
      ("pistar/accuracy", "π* accuracy of the current policy (SNIS)"),
      ("epochs:pistar/accuracy", "π* accuracy, epoch-end probe (SNIS)"),
      ("epochs:pistar/policy_accuracy", "policy accuracy on the epoch-end probe")]),
]
# keys written "epochs:<key>" are read from epochs.jsonl (one line per finished epoch), "evals:<key>" from
# evals.jsonl (one line per held-out evaluation, drawn with ±2 SE bars), the others from metrics.jsonl (one
# line per step)
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


def _mean_se(x: np.ndarray) -> dict[str, float | None]:
    """{"mean", "se"} of per-problem values (SE = std, ddof 1, / sqrt(n); None for fewer than 2 values)."""
    return {"mean": float(np.mean(x)), "se": float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else None}


def heldout_summary(evals: list[dict[str, Any]], window: int = WINDOW, source: str = "evals.jsonl"
                    ) -> dict[str, Any] | None:
    """The held-out headline from evaluation records (evals.jsonl lines: step, eval/avg and, for standard
    errors, problem/avg — per-problem accuracies on the same problems in the same order every time):
    start (the step-0 evaluation; None without one), peak_window, final_window, rise, fall (see the module
    docstring). Records without problem/avg give means only (se None). None when there is no evaluation."""
    evals = sorted((e for e in evals if e.get("eval/avg") is not None), key=lambda e: e["step"])
    if not evals:
        return None
    steps = [int(e["step"]) for e in evals]
    per_problem = all("problem/avg" in e for e in evals)
    if per_problem:
        acc = [np.asarray(e["problem/avg"], np.float64) for e in evals]
        if len({a.size for a in acc}) != 1:
            raise ValueError(f"{source}: evaluations have different numbers of problems "
                             f"({sorted({a.size for a in acc})}); a window needs the same problems at every step")
        acc = np.stack(acc)  # [evaluations, problems]
    else:  # means only (a run from before evals.jsonl: eval/avg on metrics.jsonl lines)
        acc = np.asarray([[e["eval/avg"]] for e in evals], np.float64)
    w = min(window, len(evals))
    windows = np.stack([acc[i:i + w].mean(0) for i in range(len(evals) - w + 1)])  # [windows, problems]
    best = int(np.argmax(windows.mean(1)))  # the first window with the highest mean
    peak, final = windows[best], windows[-1]

    def stat(x, window_steps=None):
        d = _mean_se(x) if per_problem else {"mean": float(np.mean(x)), "se": None}
        return d if window_steps is None else {**d, "steps": window_steps}

    out: dict[str, Any] = {
        "metric": f"avg@{evals[0].get('eval/k', 'k')}", "temperature": evals[0].get("eval_sampling/temperature"),
        "top_p": evals[0].get("eval_sampling/top_p"), "n_problems": int(acc.shape[1]) if per_problem else None,
        "eval_steps": steps, "window": w,
        "start": stat(acc[0], [steps[0]]) if steps[0] == 0 else None,
        "peak_window": stat(peak, steps[best:best + w]),
        "final_window": stat(final, steps[-w:]),
        "rise": stat(peak - acc[0]) if steps[0] == 0 else None,
        "fall": stat(peak - final),
        "definition": f"window = {w} consecutive evaluations; peak_window = the window with the highest mean "
                      "(a window mean, chosen by its mean: mildly optimistic, not reflected in its SE); "
                      "final_window = the last window; rise = peak_window - start, fall = peak_window - "
                      "final_window; SE over problems (per-problem window means; rise/fall paired per problem)",
    }
    return out


def summarize(records: list[dict[str, Any]], mcs: dict | None = None,
              epochs: list[dict[str, Any]] | None = None,
              evals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Headline numbers of a run: held-out accuracy start / peak window / final window with rise and fall
    (`heldout_summary`, from evals.jsonl; from metrics.jsonl's eval/avg, means only, when a run has no
    evals.jsonl), the training-batch accuracy (train_batch_*), MCS, π* ceiling (from per-step estimates
    when the run made them, else from the first epoch-end probe in epochs.jsonl)."""
    out: dict[str, Any] = {"steps": len(records)}
    heldout = heldout_summary(evals) if evals else heldout_summary(
        [{"step": r["step"], "eval/avg": r["eval/avg"]} for r in records if r.get("eval/avg") is not None],
        source="metrics.jsonl")
    out["heldout"] = heldout
    if not records:
        return out
    s, gt = series(records, "urlvr/gt_reward_mean")
    if len(gt):
        k = max(1, min(5, len(gt) // 5))  # smooth over a few steps: single steps are noisy
        smooth = np.convolve(gt, np.ones(k) / k, mode="valid")
        out.update(train_batch_gt_accuracy_first=float(smooth[0]), train_batch_gt_accuracy_peak=float(smooth.max()),
                   train_batch_gt_accuracy_peak_step=int(s[int(np.argmax(smooth)) + k - 1]),
                   train_batch_gt_accuracy_final=float(smooth[-1]), train_batch_smoothing_window=k,
                   train_batch_note="GT accuracy on the training batches (a different batch each step), "
                                    f"{k}-step means; the peak is a max over steps (selection-biased): "
                                    "use heldout for the headline")
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


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.3f}" + (f" ± {stat['se']:.3f}" if stat.get("se") is not None else "")


def _draw_heldout(ax, evals: list[dict[str, Any]], heldout: dict | None, color: str, label: str) -> bool:
    """Held-out avg@k per evaluation with ±2 SE bars, the peak and final windows shaded with their means."""
    pts = sorted((e["step"], e["eval/avg"], e.get("eval/avg_se")) for e in evals if e.get("eval/avg") is not None)
    if not pts:
        return False
    s, v = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
    se = [p[2] for p in pts]
    err = None if any(x is None for x in se) else 2 * np.array(se, float)
    ax.errorbar(s, v, yerr=err, color=color, marker="o", markersize=3, capsize=2, label=label)
    if heldout:
        for name, shade in (("peak_window", 0.15), ("final_window", 0.08)):
            win = heldout[name]
            lo, hi = min(win["steps"]), max(win["steps"])
            ax.axvspan(lo, hi if hi > lo else lo + 0.5, color=color, alpha=shade)
            ax.hlines(win["mean"], lo, hi if hi > lo else lo + 0.5, color=color, linestyle="--",
                      label=f"{name.replace('_', ' ')} (steps {lo}-{hi}) = {_fmt(win)}")
    return True


def make_report(workdir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json and the PNG plots into workdir; returns the report dict."""
    # Figure objects without pyplot: no global backend switch (a notebook calling this keeps its inline plots)
    from matplotlib.figure import Figure

    workdir = Path(workdir)
    records = read_metrics(workdir)
    epochs = read_metrics(workdir, "epochs.jsonl")
    evals = read_metrics(workdir, "evals.jsonl")
    report = summarize(records, (extra or {}).get("mcs"), epochs, evals)
    heldout = report.get("heldout")
    report.update({k: v for k, v in (extra or {}).items() if k != "mcs"})
    mcs_step = (report.get("model_collapse_step") or {})
    mcs_raw = mcs_step.get("mcs_raw", mcs_step.get("raw"))
    plots = []
    for fname, title, keys in PANELS:
        drawn = False
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
        for i, (key, label) in enumerate(keys):
            color = f"C{i}"
            if key.startswith("evals:"):
                drawn |= _draw_heldout(ax, evals or [{"step": r["step"], "eval/avg": r["eval/avg"]} for r in records
                                                     if r.get("eval/avg") is not None], heldout, color, label)
                continue
            s, v = series(epochs, key[len("epochs:"):]) if key.startswith("epochs:") else series(records, key)
            if not len(s):
                continue
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
