"""The Colab notebooks (colab/*.ipynb) executed headless with nbclient on their smoke configuration.

Each notebook runs in a fresh python3 kernel (the three concurrently) with URLVR_NOTEBOOK_SMOKE=1 (a few steps, a few
prompts), cwd =
colab/, its runs written under a temporary directory, one CPU device (as on a Colab CPU runtime: the 8 fake
devices of conftest.py are removed from the kernel's XLA_FLAGS), and an XLA compilation cache directory shared
by the three kernels. A cell that raises fails the test
(nbclient's CellExecutionError); each cell has CELL_TIMEOUT_S.

Beyond "no cell errored", the tests re-derive what the notebooks report from the files their runs wrote:
evaluation metrics recomputed from the per-problem records (and every sample regraded with the exact
checker), one metrics line per training step with finite values, the Model Collapse Step re-found from the
reward-accuracy curve, the Spearman correlation recomputed with scipy. These are exact comparisons (1e-12).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("quickstart.ipynb", "finding1_rise_then_fall.ipynb", "finding2_mcs_predicts_gain.ipynb")
CELL_TIMEOUT_S = 600  # per cell: a bound against a hang, not a speed target (compiles take ~10-70 s on a busy box)
EXACT = 1e-12


def _kernel_env(runs: Path, xla_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env.update(JAX_PLATFORMS="cpu", URLVR_NOTEBOOK_SMOKE="1", URLVR_NOTEBOOK_RUNS=str(runs),
               JAX_COMPILATION_CACHE_DIR=str(xla_cache), MPLBACKEND="module://matplotlib_inline.backend_inline")
    return env


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """name -> (executed notebook, its NOTEBOOK_RESULT dict), or the exception its execution raised.

    The three notebooks run concurrently, one kernel each: XLA compilation, which dominates, is mostly
    single-threaded, so on 2 cores this roughly halves the wall-clock time."""
    import asyncio

    base = tmp_path_factory.mktemp("notebooks")
    env = _kernel_env(base / "runs", base / "xla_cache")

    async def run(name: str):
        nb = nbformat.read(COLAB / name, as_version=4)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", startup_timeout=180,
                                resources={"metadata": {"path": str(COLAB)}})
        await client.async_execute(env=env, cwd=str(COLAB))
        return nb, _result(nb, name)

    async def run_all():
        return await asyncio.gather(*(run(n) for n in NOTEBOOKS), return_exceptions=True)

    results = dict(zip(NOTEBOOKS, asyncio.run(run_all())))

    def get(name: str):
        if isinstance(results[name], BaseException):
            raise results[name]
        return results[name]

    return get


def _result(nb, name: str) -> dict:
    """The JSON the notebook's last cell prints after its own assertions passed."""
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [ln for ln in text.splitlines() if ln.startswith("NOTEBOOK_RESULT ")]
    assert lines, f"{name}: the last cell printed no NOTEBOOK_RESULT line; its output was:\n{text[-2000:]}"
    return json.loads(lines[-1][len("NOTEBOOK_RESULT "):])


def _metrics(workdir) -> list[dict]:
    with open(Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_run(workdir, steps: int) -> list[dict]:
    """One metrics line per step 1..steps, finite core metrics, report.json with its PNG plots."""
    records = _metrics(workdir)
    assert [r["step"] for r in records] == list(range(1, steps + 1)), workdir
    for key in ("urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "response/entropy_mean",
                "response/length_mean", "loss"):
        values = [r[key] for r in records]
        assert all(math.isfinite(v) for v in values), (workdir, key, values)
    assert all(0.0 <= r["urlvr/gt_reward_mean"] <= 1.0 for r in records)
    report = json.loads((Path(workdir) / "report.json").read_text())
    assert report["steps"] == steps and report["plots"]
    assert all((Path(workdir) / p).stat().st_size > 0 for p in report["plots"])
    return records


def _first_below(records, threshold=0.01):
    """The paper's Model Collapse Step: first step with reward accuracy < 1% (None if none)."""
    return next((r["step"] for r in records if r["urlvr/reward_accuracy"] < threshold), None)


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


# ------------------------------------------------------------------------------------------ static checks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_generated(name):
    """Valid nbformat 4, no outputs, a 'parameters' cell first that reads URLVR_NOTEBOOK_SMOKE, and the file is
    what colab/make_notebooks.py generates (so the cell sources there are the ones committed)."""
    import importlib.util

    nb = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: committed with outputs"
    assert "parameters" in code[0].metadata.get("tags", []) and "URLVR_NOTEBOOK_SMOKE" in code[0].source
    spec = importlib.util.spec_from_file_location("make_notebooks", COLAB / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build(name) == nb, f"{name} differs from colab/make_notebooks.py: run `python colab/make_notebooks.py`"


# ------------------------------------------------------------------------------------------ executed
@pytest.mark.slow  # executes the notebooks
def test_quickstart(executed):
    from urlvr_jax.data.synthetic import check_answer
    from urlvr_jax.sft import problems_for_model

    nb, res = executed("quickstart.ipynb")
    _check_run(res["workdir"], res["steps"])
    assert res["steps"] == 3
    k = res["k"]
    with open(Path(res["eval_dir"]) / "records.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == res["eval"]["n_problems"] > 0
    correct = np.array([r["correct"] for r in records], bool)
    assert correct.shape == (len(records), k)
    # the held-out problems of the model's own task, each sample regraded with the exact checker
    problems = problems_for_model(res["model_path"], len(records), seed=20260308, split="eval")
    assert [(p.id, p.answer) for p in problems] == [(r["id"], r["gold"]) for r in records]
    for p, r in zip(problems, records):
        assert [check_answer(p, t) for t in r["responses"]] == r["correct"], r["id"]
    s = res["eval"]
    assert abs(s[f"avg@{k}"] - correct.mean()) < EXACT
    assert abs(s["pass@1"] - correct.mean()) < EXACT  # the unbiased pass@1 estimator is avg@k
    assert abs(s[f"pass@{k}"] - correct.any(axis=1).mean()) < EXACT
    assert abs(s[f"maj@{k}"] - np.mean([r["majority_correct"] for r in records])) < EXACT
    assert _images(nb) >= 1, "the plot cell displayed no figure"


@pytest.mark.slow  # executes the notebooks
def test_finding1(executed):
    nb, res = executed("finding1_rise_then_fall.ipynb")
    assert res["rewards"] == ["majority_vote", "self_certainty"]
    for reward in res["rewards"]:
        records = _check_run(res["workdirs"][reward], res["steps"])
        row = res["table"][reward]
        gt = [r["urlvr/gt_reward_mean"] for r in records]
        assert abs(row["gt_first"] - gt[0]) < EXACT
        trailing = [np.mean(gt[max(0, i - 4):i + 1]) for i in range(len(gt))]  # 5-step trailing mean
        assert abs(row["gt_peak"] - max(trailing)) < EXACT and abs(row["gt_final"] - trailing[-1]) < EXACT
        assert row["gt_peak_step"] == records[int(np.argmax(trailing))]["step"]
        assert abs(row["proxy_first"] - records[0]["urlvr/proxy_reward_mean"]) < EXACT
        assert row["mcs_raw"] == _first_below(records)
    mv = _metrics(res["workdirs"]["majority_vote"])
    sc = _metrics(res["workdirs"]["self_certainty"])
    assert all(0.0 <= r["urlvr/proxy_reward_mean"] <= 1.0 for r in mv)  # a vote share
    assert all(r["urlvr/proxy_reward_mean"] > 0.0 for r in sc)  # KL(uniform || p) > 0 unless p is uniform
    assert _images(nb) >= 2


@pytest.mark.slow  # executes the notebooks
def test_finding2(executed):
    from scipy.stats import spearmanr

    nb, res = executed("finding2_mcs_predicts_gain.ipynb")
    runs = Path(res["runs_dir"])
    rows = res["rows"]
    assert list(rows) == ["q0.1", "q0.8"]
    for name, row in rows.items():
        probe = _metrics(runs / name / "mcs_probe")
        assert len(probe) == row["probe_steps"] <= res["probe_steps"]
        assert row["mcs_raw"] == _first_below(probe)
        gt = _check_run(runs / name / "ground_truth", res["gt_steps"])
        # ground-truth reward: the proxy reward is the GT reward, response for response
        assert all(abs(r["urlvr/proxy_reward_mean"] - r["urlvr/gt_reward_mean"]) < 1e-6 for r in gt)
        assert abs(row["avg_after"] - gt[-1]["eval/avg"]) < EXACT
        assert abs(row["gt_gain"] - (row["avg_after"] - row["avg_before"])) < EXACT
    gains = [rows[n]["gt_gain"] for n in rows]
    expected_mcs = [rows[n]["mcs_raw"] if rows[n]["mcs_raw"] is not None else res["probe_steps"] + 1 for n in rows]
    assert res["mcs_ranked"] == expected_mcs
    for key, x in (("spearman_mcs_gain", expected_mcs), ("spearman_pass_gain",
                                                          [rows[n][f"pass@{res['eval_k']}_before"] for n in rows])):
        want = spearmanr(x, gains).statistic if np.std(x) > 0 and np.std(gains) > 0 else float("nan")
        got = res[key]
        assert (math.isnan(got) and math.isnan(want)) or abs(got - want) < 1e-9, (key, got, want)
    assert _images(nb) >= 1
