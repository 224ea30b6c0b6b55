"""What a training run writes as it goes: metrics.jsonl, epochs.jsonl, evals.jsonl, rollouts.jsonl, TensorBoard,
the bar.

Only process 0 writes. On resume every JSONL file is cut back to the restored step, so a resumed run's
files equal an uninterrupted run's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from urlvr_jax.diagnostics.collapse import ModelCollapseTracker

try:  # a declared dependency; TensorBoard events are skipped if it is missing
    from tensorboardX import SummaryWriter
except ImportError:  # pragma: no cover
    SummaryWriter = None

# shown in the progress bar: name -> metrics key
BAR_METRICS = {"gt_acc": "urlvr/gt_reward_mean", "proxy": "urlvr/proxy_reward_mean",
               "reward_acc": "urlvr/reward_accuracy"}


class MetricsWriter:
    """metrics.jsonl (one object per step), epochs.jsonl (one per finished epoch), evals.jsonl (one per periodic
    evaluation, step 0 included: scalars and per-problem accuracies, monitor.eval_record), rollouts.jsonl (with
    `log_rollouts`: each step's problems, responses and rewards) + TensorBoard; only process 0 writes."""

    def __init__(self, workdir: Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.epochs_path = workdir / "epochs.jsonl"
        self.rollouts_path = workdir / "rollouts.jsonl"
        self.evals_path = workdir / "evals.jsonl"
        self.tb = None
        if not self.enabled:
            return
        for path in (self.path, self.epochs_path, self.rollouts_path, self.evals_path):
            if path.exists():  # keep only what the restored checkpoint covers
                lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
                kept = [ln for ln in lines if json.loads(ln)["step"] <= resume_step]
                path.write_text("".join(ln + "\n" for ln in kept))
        if SummaryWriter is not None:
            self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        self._write(self.path, record, "")

    def write_epoch(self, record: dict[str, Any]) -> None:
        self._write(self.epochs_path, record, "epoch/")

    def write_eval(self, record: dict[str, Any]) -> None:
        """One evaluation (its scalars also ride on that step's metrics.jsonl line, except step 0's)."""
        self._write(self.evals_path, record, None)

    def write_rollout(self, record: dict[str, Any]) -> None:
        self._write(self.rollouts_path, record, None)

    def _write(self, path: Path, record: dict[str, Any], tb_prefix: str | None) -> None:
        if not self.enabled:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and tb_prefix is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and np.isfinite(v):
                    self.tb.add_scalar(tb_prefix + k, v, record["step"])

    def epoch_means(self, epoch: int) -> dict[str, float]:
        """Means over the steps of `epoch` of every numeric per-step metric (timings and counters aside)."""
        if not self.enabled or not self.path.exists():
            return {}
        rows = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if r.get("epoch") == epoch]
        keys = [k for k in (rows[0] if rows else {}) if not k.startswith(("time/", "throughput/", "mcs/"))
                and k not in ("step", "epoch") and isinstance(rows[0][k], (int, float))]
        out: dict[str, float] = {"steps": len(rows)}
        for k in keys:
            vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            finite = [v for v in vals if np.isfinite(v)]
            if finite:
                out[f"mean/{k}"] = float(np.mean(finite))
        return out

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def progress_bar(total_steps: int, start: int, enabled: bool):
    return tqdm(total=total_steps, initial=start, desc="urlvr", unit="step",
                disable=not enabled or jax.process_index() != 0)


def emit(record: dict[str, Any], times: dict[str, float], writer: MetricsWriter, tracker: ModelCollapseTracker,
         bar) -> None:
    """Update the collapse tracker with a step's record, write it (with its times and MCS), move the bar."""
    record = {**record, **times}
    if "urlvr/reward_accuracy" in record:
        tracker.update(record["step"], record["urlvr/reward_accuracy"])
    s = tracker.summary()
    record["mcs/raw"] = -1 if s.get("mcs_raw") is None else s["mcs_raw"]
    record["mcs/sustained"] = -1 if s.get("mcs_sustained") is None else s["mcs_sustained"]
    writer.write(record)
    bar.update(1)
    postfix = {name: f"{record[k]:.2f}" for name, k in BAR_METRICS.items() if k in record}
    postfix["mcs"] = "-" if record["mcs/raw"] == -1 else record["mcs/raw"]
    bar.set_postfix(postfix)
