"""Smoke test of benchmarks/rollout.py: the script runs end to end on a tiny configuration.

Not a timing test: it checks that the script finishes, that both sides produced equal greedy tokens on
a sharp tiny model (greedy parity must be exactly 1.0: the tiny model has logit scale 10, so no
near-ties), and that the last line has the documented `speedup_vs_transformers_generate=<float>` form.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout.py"


@pytest.mark.slow  # runs the benchmark (with transformers)
def test_rollout_benchmark_tiny_runs_and_reports():
    env = dict(os.environ)
    # conftest forces 8 fake CPU devices for the in-process tests; the benchmark runs as on a real host.
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--no-split"], capture_output=True, text=True,
                          timeout=180, env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    m = re.fullmatch(r"speedup_vs_transformers_generate=(\d+(?:\.\d+)?)", lines[-1])
    assert m, f"last line has the wrong form: {lines[-1]!r}"
    assert float(m.group(1)) > 0
    parity = [ln for ln in lines if ln.startswith("greedy tokens equal to transformers:")]
    assert parity and float(parity[0].split(":")[1]) == 1.0, parity
    assert "| greedy |" in proc.stdout and "| sampled |" in proc.stdout


def test_rollout_benchmark_help_lists_flags():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--batch", "--new-tokens", "--prompt-len", "--repeats", "--tiny", "--hidden", "--layers",
                 "--hbm-gbps"):
        assert flag in proc.stdout, flag


def test_hbm_floor_matches_hand_computation():
    """The GPU-only floor line is plain arithmetic: check it on CPU against a hand computation."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import rollout
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = rollout.parse_args(["--hidden", "512", "--layers", "8", "--heads", "8", "--kv-heads", "4",
                               "--vocab", "8192", "--batch", "32", "--prompt-len", "64", "--new-tokens", "128",
                               "--hbm-gbps", "1000"])
    n_params = 31_990_272  # the default model: 2 x 8192 x 512 + 8 x 2,950,144 + 512
    # weights without the (gathered) input embedding, float32; KV: K and V, 8 layers, 32 rows, 4 heads x 64
    weights = (n_params - 8192 * 512) * 4
    kv_slot = 2 * 8 * 32 * 4 * 64 * 4
    valid, full = rollout.hbm_floor_s(args, n_params, mean_context=100.0)
    assert valid == (weights + kv_slot * 100.0) / 1e12
    assert full == (weights + kv_slot * 192) / 1e12
    line = rollout.floor_line(args, n_params, mean_prompt=36.0, step_s=2 * valid)
    assert "50.0% of the bandwidth bound" in line and "context 100" in line
    assert "n/a" in rollout.floor_line(args, n_params, 36.0, step_s=-1e-3)


def test_rollout_benchmark_longtail_tiny_runs_and_reports():
    """The three-way ragged-length run: the engine's tokens equal the static sampler's (greedy and sampled,
    same key) and transformers' (greedy), every row ends at its drawn length on every side, and the
    kept-token fractions and both speedups are printed."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--lengths", "longtail", "--tiny"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=SCRIPT.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert re.fullmatch(r"longtail_speedup_vs_static=\d+(\.\d+)?", lines[-1]), lines[-1]
    assert re.fullmatch(r"longtail_speedup_vs_transformers_generate=\d+(\.\d+)?", lines[-2]), lines[-2]
    equal = [ln for ln in lines if "tokens equal to the static sampler's" in ln]  # 2 modes x 2 slot counts
    assert len(equal) == 4 and all(ln.split(": ")[3].split(";")[0] == "1.0000" for ln in equal), equal
    assert all("to transformers': 1.0000" in ln for ln in equal if ln.startswith("greedy")), equal
    kept = [ln for ln in lines if "kept-token fraction" in ln]
    assert len(kept) == 2
    static = float(re.search(r"static (\d\.\d+)", kept[0]).group(1))
    engine = [float(m) for m in re.findall(r"engine (\d\.\d+) \(\d+ slots", kept[0])]
    assert len(engine) == 2 and 0 < static < engine[0] <= 1 and engine[1] == static, kept[0]  # 3 slots; all 8 rows
    for side in ("transformers generate", "urlvr-jax static sampler", "urlvr-jax engine, 3 slots",
                 "urlvr-jax engine, 8 slots"):
        assert f"| greedy | {side} |" in proc.stdout and f"| sampled | {side} |" in proc.stdout
