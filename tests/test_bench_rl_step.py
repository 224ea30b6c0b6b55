"""Smoke test of benchmarks/rl_step.py: one RL iteration, ours vs TRL's GRPOTrainer, end to end on --tiny.

Not a timing test: it checks that the script finishes, that both sides and both per-phase breakdowns are
printed, that our step generated full-length responses (the script raises otherwise), and that the last
line has the documented `speedup_vs_trl_grpo=<float>` form. About a minute on 2 CPU cores, almost all
of it imports and XLA compilation.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_step.py"


@pytest.mark.slow  # runs the benchmark (with TRL)
def test_rl_step_benchmark_tiny_runs_and_reports():
    env = dict(os.environ)
    # conftest forces 8 fake CPU devices for the in-process tests; the benchmark runs as on a real host.
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    m = re.fullmatch(r"speedup_vs_trl_grpo=(\d+(?:\.\d+)?)", lines[-1])
    assert m, f"last line has the wrong form: {lines[-1]!r}"
    assert float(m.group(1)) > 0
    assert "| TRL GRPOTrainer (torch CPU) |" in out and "| urlvr-jax step (cpu) |" in out, out
    assert "TRL per-phase" in out and "ours per-phase" in out, out
    for phase in ("rollout", "scoring, policy", "reward + advantages", "loss + grad + AdamW update",
                  "loss forward + backward"):
        assert re.search(rf"^\s+{re.escape(phase)}\s+\d+\.\d+ s", out, re.M), phase
    assert "update MFU" not in out  # CPU run: the MFU line is for GPUs only


def test_rl_step_benchmark_help_lists_flags():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--prompts", "--samples", "--new-tokens", "--repeats", "--warmup", "--kl-coef", "--tiny",
                 "--hidden", "--layers", "--peak-tflops", "--skip-phases"):
        assert flag in proc.stdout, flag
