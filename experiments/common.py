"""Shared helpers for the experiment scripts (experiments/*.py) on the synthetic world.

One place for what every experiment does the same way, so the scripts differ only in their question:
  experiment_config   a training config (configs/default.py + the experiment's knobs)
  run_training        train(config, workdir), skipped when the workdir already holds a finished run
  read_records/curve  metrics.jsonl records and one metric's (steps, values)
  moving_average      trailing mean used for every smoothed curve
  load_policy         a model with the parameters of a training checkpoint (or the base model)
  sample_problems     N samples per problem at the RL temperature, graded by the exact checker
  add_common_args     the flags every script takes (--out, --runs-dir, --smoke, --fresh)
  write_json/markdown results files

Runs (with checkpoints) go under runs/experiments/<name>/ (gitignored); results (tables, JSON, PNGs)
under experiments/results/<name>/ (committed). The same seeds everywhere: train.seed = SEED, evaluation
problems from EVAL_SEED (held-out split "eval", as the ladder measurement).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts run as `python experiments/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SEED = 0  # train.seed of every run
EVAL_SEED = 20260308  # held-out evaluation problems (the seed the ladder was measured with)
RUNGS = ("q0.1", "q0.3", "q0.45", "q0.6", "q0.8")  # the shipped ladder (urlvr_jax/models/ladder)
RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "experiments"


def setup_jax(cache_dir: str | os.PathLike | None = None) -> None:
    """Persistent XLA compilation cache: runs with the same shapes, reward and learning rate share one
    compiled step, so a sweep pays each compilation once (a compile costs 30-70 s on a busy 2-core box).
    Set URLVR_XLA_CACHE=off to disable."""
    import jax

    where = os.environ.get("URLVR_XLA_CACHE", str(cache_dir or (ROOT / "runs" / "xla_cache")))
    if where == "off":
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def model_path(rung: str) -> str:
    """'q0.3' -> 'ladder/q0.3' (a shipped rung); anything with a '/' is passed through."""
    return rung if "/" in rung else f"ladder/{rung}"


def experiment_config(rung: str = "q0.3", reward: str = "majority_vote", *, steps: int = 100, prompts: int = 8,
                      samples: int = 8, lr: float = 1e-3, seed: int = SEED, **overrides):
    """The synthetic-world training config every experiment starts from (the values of configs/default.py
    when these runs were made, pinned here so a later change of the default job does not change the
    experiments): arithmetic prompts from the base model's recipe, 48 new tokens (or the recipe's
    max_new_tokens: 96 for ladder v2) at T = 1.0, GRPO, no KL,
    AdamW without weight decay. In-trainer evaluation is off (experiments evaluate checkpoints themselves).
    overrides: dotted keys, e.g. {"rl.mini_batches": 2, "train.checkpoint_every": 10}."""
    from urlvr_jax.config import base_config

    c = base_config()
    c.model.path = model_path(rung)
    c.data.dataset = "synthetic/arithmetic"
    c.data.split = "train"
    c.data.synthetic_size = 4096
    c.data.max_prompt_length = 32
    c.data.template = "synthetic"
    c.data.prompt_batch_size = int(prompts)
    c.rl.reward = reward
    c.rl.num_samples = int(samples)
    c.rl.advantage = "grpo"
    c.rl.learning_rate = float(lr)
    c.rl.weight_decay = 0.0
    c.rl.beta = 0.05
    c.sampling.max_new_tokens = _recipe_max_new_tokens(c.model.path) or 48
    c.sampling.temperature = 1.0
    c.train.steps = int(steps)
    c.train.seed = int(seed)
    c.train.eval_every = 0
    c.train.eval_dataset = "synthetic/arithmetic"
    c.train.eval_limit = 64
    c.train.eval_k = 4
    c.train.checkpoint_every = int(steps)  # the final step is always saved
    c.train.keep_checkpoints = 1
    c.train.progress = True
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"experiment_config: unknown config key {key!r}")
        node[leaf] = value
    return c


def _recipe_max_new_tokens(path: str) -> int | None:
    """The response cap a synthetic base model was built for (ladder v2 records 96 in its recipe; v1 rungs
    have none, and their ~17-token traces use the experiments' historical 48)."""
    from urlvr_jax.data.tasks import RECIPE_FILE, load_recipe
    from urlvr_jax.models.paths import resolve_model_path

    folder = resolve_model_path(path)
    if not (Path(folder) / RECIPE_FILE).exists():
        return None
    value = load_recipe(folder).get("max_new_tokens")
    return int(value) if value else None


def run_training(config, workdir: str | os.PathLike, *, fresh: bool = False,
                 continue_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """train(config, workdir) unless workdir holds a finished run of the same config (then reuse it;
    see _same_run).

    continue_from: a finished run of the same settings with fewer steps; workdir starts as a copy of it (less its
    finished mark), and the trainer resumes from its newest checkpoint — with a constant lr and per-step keys
    fold_in(seed, step), the continued run is the longer run. An unfinished copy is resumed, not restarted.
    Returns {"records": metrics records, "seconds": wall-clock of the training call (None if reused; for a
    continued run, the continuation's), "reused": bool}. fresh=True deletes the workdir first. A run the trainer
    stopped on SIGTERM (it checkpoints and returns) is not marked finished: SystemExit, so a rerun trains it again
    rather than reading a truncated run as done.
    """
    import shutil

    from urlvr_jax.train import train

    workdir = Path(workdir)
    cfg_json = json.loads(config.to_json_best_effort())
    done = workdir / "experiment_done.json"
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    if done.exists() and _same_run(json.loads(done.read_text()).get("config") or {}, cfg_json):
        return {"records": read_records(workdir), "seconds": json.loads(done.read_text())["seconds"], "reused": True}
    if workdir.exists() and (continue_from is None or done.exists()):
        shutil.rmtree(workdir)  # a different or unfinished run: start over (the trainer would resume it)
    if continue_from is not None and not workdir.exists():
        source = Path(continue_from)
        if not (source / "experiment_done.json").exists():
            raise FileNotFoundError(f"{source}: no finished run to continue from; run the experiment that "
                                    "makes it first")
        shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("experiment_done.json"))
    t0 = time.perf_counter()
    summary = train(config, workdir)
    seconds = time.perf_counter() - t0
    if (summary or {}).get("stopped_by") == "SIGTERM":  # preempted: checkpointed, not finished; do not mark it done
        raise SystemExit(f"{workdir}: stopped by SIGTERM at step {summary.get('last_step')} (checkpoint kept); "
                         "not marked finished")
    done.write_text(json.dumps({"config": cfg_json, "seconds": seconds,
                                **({"continued_from": str(continue_from)} if continue_from is not None else {})}))
    return {"records": read_records(workdir), "seconds": seconds, "reused": False}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _same_run(old: dict, new: dict) -> bool:
    """The finished run's config equals the new one on every key it has; keys added to base_config() after
    the run are ignored (a new key's default keeps the old behaviour)."""
    o, n = _flat(old), _flat(new)
    return bool(o) and all(k in n and n[k] == v for k, v in o.items())


def read_records(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    from urlvr_jax.report import read_metrics

    return read_metrics(workdir)


def curve(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric; records without the key (or with None) are skipped."""
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s, float), np.asarray(v, float)


def moving_average(x, k: int) -> np.ndarray:
    """Trailing mean over the last min(k, i+1) values: same length as x, no look-ahead."""
    x = np.asarray(x, float)
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - int(k), 0)
    return (c[idx] - c[lo]) / (idx - lo)


def load_policy(rung: str, workdir: str | os.PathLike | None = None, step: int | None = None):
    """(model, tokenizer): the base model `rung` ('q0.3', 'ladder/q0.3' or a folder), with the parameters of
    checkpoint `step` (default: the newest) of the run in `workdir` when workdir is given."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from urlvr_jax.models.paths import resolve_model_path
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.tokenizer import load_tokenizer

    path = resolve_model_path(model_path(rung))
    model, tokenizer = load_model(path), load_tokenizer(path)
    if workdir is None:
        return model, tokenizer
    ckdir = Path(workdir).absolute() / "checkpoints"
    steps = sorted(int(p.name) for p in ckdir.glob("[0-9]*") if (p / "state").exists())
    if not steps:
        raise FileNotFoundError(f"{ckdir}: no checkpoints (was the run finished?)")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise FileNotFoundError(f"{ckdir}: no checkpoint for step {step}; have {steps}")
    raw = ocp.StandardCheckpointer().restore(ckdir / str(step) / "state")["params"]
    graphdef, params = nnx.split(model)
    strip = lambda t: {k: (strip(v) if "value" not in v else v["value"]) for k, v in t.items()}  # noqa: E731
    nnx.replace_by_pure_dict(params, strip(raw))
    return nnx.merge(graphdef, params), tokenizer


def eval_problems(rung: str, n: int, seed: int = EVAL_SEED):
    """n held-out problems (split "eval") from the distribution the base model was trained on."""
    from urlvr_jax.models.paths import resolve_model_path
    from urlvr_jax.sft import problems_for_model

    return problems_for_model(resolve_model_path(model_path(rung)), n, seed, split="eval")


def sample_problems(model, tokenizer, problems, n_samples: int, *, seed: int = 0, temperature: float = 1.0,
                    max_new_tokens: int = 48, batch_size: int = 32, greedy: bool = False) -> dict[str, Any]:
    """N samples per problem (greedy: argmax decoding), graded exactly. Returns correct [P, N] bool, answers
    [P][N] (vote keys, None = no answer), texts [P][N], certainty [P, N] (mean token log-prob)."""
    from urlvr_jax.data.synthetic import check_answer
    from urlvr_jax.sft import canonical_answer, sample_responses

    texts, cert, _ = sample_responses(model, tokenizer, problems, n_samples, temperature, seed=seed,
                                      batch_size=min(batch_size, len(problems)), max_new_tokens=max_new_tokens,
                                      greedy=greedy)
    correct = np.array([[check_answer(p, t) for t in row] for p, row in zip(problems, texts)], bool)
    answers = [[canonical_answer(t) for t in row] for row in texts]
    return {"correct": correct, "answers": answers, "texts": texts, "certainty": cert}


def majority(answers_row: Sequence) -> tuple[Any, float]:
    """(majority answer, its share of all N samples) with first-seen tie-break; (None, 0.0) if no answers."""
    counts: dict = {}
    for a in answers_row:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None, 0.0
    best = max(counts.values())
    winner = next(a for a in answers_row if a is not None and counts[a] == best)
    return winner, best / len(answers_row)


def add_common_args(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    parser.add_argument("--out", default=str(RESULTS / name), help="results directory (tables, JSON, plots)")
    parser.add_argument("--runs-dir", default=str(RUNS / name), help="training work directories (checkpoints)")
    parser.add_argument("--smoke", action="store_true", help="a tiny version (a few steps) to check the wiring")
    parser.add_argument("--fresh", action="store_true", help="rerun training even where a finished run exists")
    return parser


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(x):
        if x is None:
            return "—"
        if isinstance(x, (float, np.floating)):
            return "nan" if np.isnan(x) else f"{x:.3f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
