"""Build and measure the ladder of synthetic base models whose confidence–correctness alignment is set
by the systematic-error rate q of their SFT traces (urlvr_jax.sft).

    python experiments/build_ladder.py                     # build + measure q in 0.1 0.3 0.45 0.6 0.8
    python experiments/build_ladder.py --measure-only      # re-measure the shipped checkpoints
    python experiments/build_ladder.py --qs 0.1 --models-dir /tmp/ladder --results-dir /tmp/ladder_res

Writes:
  <models-dir>/q<q>/            HF folder (config.json, model.safetensors, tokenizer, base_model_recipe.json)
  <models-dir>/README.md        how the checkpoints were made and what they measure
  <results-dir>/ladder.json     per rung: recipe, build time, checkpoint size, prior metrics
  <results-dir>/ladder.md       the table
  <results-dir>/ladder.png      accuracy and alignment against q
Each rung is measured from its saved folder (load_model), on held-out eval problems (split "eval"),
N samples per problem at temperature 1.0 (the RL sampling temperature); metric definitions are in the
docstring of urlvr_jax/sft.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_QS = (0.1, 0.3, 0.45, 0.6, 0.8)
EVAL_SEED = 20260308  # the eval problems: fixed, held out (split "eval" never meets a train problem)

# Table columns: (metric key, header)
COLUMNS = [
    ("accuracy", "avg@N"), ("maj_accuracy", "maj@N"), ("pass_at_n", "pass@N"),
    ("systematic_rate", "systematic"), ("other_rate", "other wrong"), ("maj_systematic_rate", "maj = systematic"),
    ("confident_majority_correct", "confident maj correct"), ("certainty_auroc_within", "AUROC within"),
    ("certainty_pb_within", "r_pb within"), ("certainty_auroc", "AUROC pooled"), ("certainty_pb", "r_pb pooled"),
]


def _fmt(x) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _secs(x) -> str:
    return "—" if x is None else f"{float(x):.0f}"


def _none_to_nan(x):
    if x is None:
        return float("nan")
    if isinstance(x, dict):
        return {k: _none_to_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_none_to_nan(v) for v in x]
    return x


def _nan_to_none(x):
    """Strict JSON: NaN (an undefined metric, e.g. no confident majority) is written as null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    return x


RULE_TEXT = {"mul_as_add": "every a*b computed as a+b", "sub_swap": "every a-b computed as b-a",
             "drop_carry": "every a+b computed without carries"}


def rung_dir(models_dir: Path, q: float) -> Path:
    return models_dir / f"q{q:g}"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(folder: Path, n_eval: int, n_samples: int, seed: int) -> dict:
    from urlvr_jax import sft
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.tokenizer import load_tokenizer

    recipe = sft.load_recipe(folder)
    model, tok = load_model(folder), load_tokenizer(folder)
    problems = sft.problems_for_model(folder, n_eval, EVAL_SEED, split="eval")
    t0 = time.perf_counter()
    metrics = sft.measure_prior(model, tok, problems, n_samples=n_samples, temperature=1.0,
                                family_params=recipe["family_params"], seed=seed, progress=True)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def write_table(rungs: list[dict], config: dict, path: Path) -> str:
    n = config["n_samples"]
    head = "| q | " + " | ".join(h.replace("N", str(n)) if "@N" in h else h for _, h in COLUMNS) + " |"
    sep = "|" + "---|" * (len(COLUMNS) + 1)
    lines = ["# Base-model ladder (measured)", "",
             f"{config['n_eval']} held-out arithmetic problems (split eval, seed {EVAL_SEED}) × {n} samples at "
             f"temperature 1.0; each model measured from its saved folder. Definitions: urlvr_jax/sft.py.", "",
             "## All eval problems", "", head, sep]
    for r in rungs:
        lines.append(f"| {r['q']:g} | " + " | ".join(_fmt(r["metrics"][k]) for k, _ in COLUMNS) + " |")
    rules = ", ".join(r for fam in rungs[0]["recipe"]["family_params"].values() for r in fam["rules"])
    lines += ["", f"## Problems with a systematic path (error type {rules})", "", head, sep]
    for r in rungs:
        sub = r["metrics"].get("on_error_problems", {})
        lines.append(f"| {r['q']:g} | " + " | ".join(_fmt(sub.get(k, float('nan'))) for k, _ in COLUMNS) + " |")
    lines += ["", "## Builds", "",
              "| q | params | steps | final loss | build s (wall) | train CPU s | checkpoint bytes |",
              "|---|---|---|---|---|---|---|"]
    for r in rungs:
        rc = r["recipe"]
        lines.append(f"| {r['q']:g} | {rc['num_params']} | {rc['steps']} | {rc['loss_last10']:.4f} | "
                     f"{_secs(r.get('build_seconds'))} | {_secs(rc.get('cpu_seconds_train'))} | {r['size_bytes']} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(rungs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = [r["q"] for r in rungs]
    m = [r["metrics"] for r in rungs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    ax = axes[0]
    for key, label in [("accuracy", "avg@N"), ("maj_accuracy", "maj@N"), ("pass_at_n", "pass@N"),
                       ("systematic_rate", "systematic answers"), ("maj_systematic_rate", "majority = systematic")]:
        ax.plot(qs, [x[key] for x in m], "o-", label=label)
    ax.set_xlabel("q (systematic-error rate of the SFT traces)")
    ax.set_title("accuracy and systematic errors")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax = axes[1]
    err = [r["metrics"].get("on_error_problems", {}) for r in rungs]
    for (key, label), color in zip([("confident_majority_correct", "confident majority is correct"),
                                    ("certainty_auroc_within", "certainty AUROC (within group)"),
                                    ("certainty_pb_within", "certainty r_pb (within group)")], ("C0", "C1", "C2")):
        ax.plot(qs, [x[key] for x in m], "o-", color=color, label=f"{label}: all problems")
        ax.plot(qs, [x.get(key, float("nan")) for x in err], "s--", color=color,
                label=f"{label}: problems with a systematic path")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("q (systematic-error rate of the SFT traces)")
    ax.set_title("confidence–correctness alignment")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_models_readme(rungs: list[dict], config: dict, models_dir: Path) -> None:
    rc = rungs[0]["recipe"]
    rules = [r for fam in rc["family_params"].values() for r in fam["rules"]]
    noise = max(fam["noise"] for fam in rc["family_params"].values())
    lines = [
        "# Synthetic base-model ladder", "",
        "Tiny Llama-architecture models (HF folders: config.json, model.safetensors float32, the synthetic "
        "tokenizer, base_model_recipe.json) SFT-trained on step-by-step arithmetic traces. On the problems "
        f"where it changes the answer, the systematic wrong path ({', '.join(RULE_TEXT.get(r, r) for r in rules)}) "
        f"is taken with probability q; {noise:.0%} of the other traces carry a random wrong digit, propagated "
        "honestly (answers that scatter). Each model is trained in one run with two data phases: "
        f"{rc['steps'] - rc['prior_steps']} steps on traces drawn with q = 0 (identical for every rung), then "
        f"{rc['prior_steps']} steps on traces drawn with q. q sets how well the model's confidence agrees "
        "with correctness: for small q the confident majority answer is right, for large q it is the "
        "systematic error.", "",
        "Made with:", "", "```", config["command"], "```", "",
        f"Recipe (same for every rung except q): size `{rc['size']}` ({rc['num_params']} parameters: hidden "
        f"{rc_model(rc)['hidden_size']}, {rc_model(rc)['num_hidden_layers']} layers, "
        f"{rc_model(rc)['num_attention_heads']} heads / {rc_model(rc)['num_key_value_heads']} kv heads, "
        f"intermediate {rc_model(rc)['intermediate_size']}, vocab {rc_model(rc)['vocab_size']} (101 used), tied "
        f"embeddings); seed {rc['seed']}; {rc['steps']} AdamW steps of {rc['batch_size']} traces at lr {rc['lr']} "
        f"(5% warmup, cosine to 10%); {rc['n_problems']} train problems × {rc['samples_per_problem']} traces; "
        f"task {json.dumps(rc['task'])}; error process {json.dumps(rc['family_params'])}.", "",
        f"Rebuild one rung in Python: `urlvr_jax.sft.build_base_model(q, out_dir, seed={rc['seed']}, "
        f"steps={rc['steps']})` (the other arguments at their defaults are this recipe).",
        "Problems from the training distribution: `urlvr_jax.sft.problems_for_model(folder, n, seed, split)`.", "",
        f"Measured on {config['n_eval']} held-out problems × {config['n_samples']} samples at temperature 1.0 "
        "(experiments/results/ladder/ladder.md has all columns):", "",
        "| q | avg@N | maj@N | pass@N | systematic | maj = systematic | confident maj correct | AUROC within "
        "| build s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rungs:
        m = r["metrics"]
        lines.append(f"| {r['q']:g} | {m['accuracy']:.3f} | {m['maj_accuracy']:.3f} | {m['pass_at_n']:.3f} | "
                     f"{m['systematic_rate']:.3f} | {m['maj_systematic_rate']:.3f} | "
                     f"{_fmt(m['confident_majority_correct'])} | {_fmt(m['certainty_auroc_within'])} | "
                     f"{_secs(r.get('build_seconds'))} |")
    lines += ["", "The same on the problems with a systematic path (where q acts):", "",
              "| q | avg@N | maj@N | systematic | maj = systematic | confident maj correct | AUROC within |",
              "|---|---|---|---|---|---|---|"]
    for r in rungs:
        m = r["metrics"].get("on_error_problems")
        if m:
            lines.append(f"| {r['q']:g} | {m['accuracy']:.3f} | {m['maj_accuracy']:.3f} | {m['systematic_rate']:.3f} | "
                         f"{m['maj_systematic_rate']:.3f} | {_fmt(m['confident_majority_correct'])} | "
                         f"{_fmt(m['certainty_auroc_within'])} |")
    lines += ["", f"Built on: {config['machine']}. Build time = data + init + compile + 1500 steps + save, "
              "wall-clock, with other jobs sharing the cores."]
    (models_dir / "README.md").write_text("\n".join(lines) + "\n")


def rc_model(rc: dict) -> dict:
    from urlvr_jax.sft import base_model_config

    return base_model_config(rc["size"]).to_hf_dict()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qs", type=float, nargs="+", default=list(DEFAULT_QS))
    p.add_argument("--models-dir", default=str(ROOT / "urlvr_jax" / "models" / "ladder"))
    p.add_argument("--results-dir", default=str(ROOT / "experiments" / "results" / "ladder"))
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="model seed (init, data, batch order) and sampling seed")
    p.add_argument("--steps", type=int, default=None, help="SFT steps (default: urlvr_jax.sft.DEFAULT_STEPS)")
    p.add_argument("--measure-only", action="store_true", help="do not train; measure the existing folders")
    p.add_argument("--report-only", action="store_true",
                   help="neither train nor measure: rewrite ladder.md, ladder.png and the models README from "
                        "ladder.json")
    args = p.parse_args(argv)
    if args.report_only:
        results_dir = Path(args.results_dir)
        data = json.loads((results_dir / "ladder.json").read_text())
        rungs = [dict(r, metrics=_none_to_nan(r["metrics"])) for r in data["rungs"]]
        print(write_table(rungs, data["config"], results_dir / "ladder.md"))
        plot(rungs, results_dir / "ladder.png")
        write_models_readme(rungs, data["config"], Path(args.models_dir))
        return data

    import jax

    from urlvr_jax import sft

    models_dir, results_dir = Path(args.models_dir), Path(args.results_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    old = {}
    if args.measure_only and (results_dir / "ladder.json").exists():  # keep the recorded build times
        old = {r["q"]: r for r in json.loads((results_dir / "ladder.json").read_text())["rungs"]}
    rungs = []
    t_all = time.perf_counter()
    for q in sorted(args.qs):
        folder = rung_dir(models_dir, q)
        entry = {"q": q}
        if not args.measure_only:
            print(f"== building q={q:g} -> {folder}", flush=True)
            t0 = time.perf_counter()
            kw = {} if args.steps is None else {"steps": args.steps}
            sft.build_base_model(q, folder, seed=args.seed, **kw)
            entry["build_seconds"] = round(time.perf_counter() - t0, 1)
        elif q in old:
            entry["build_seconds"] = old[q].get("build_seconds")
        print(f"== measuring q={q:g}", flush=True)
        entry["metrics"] = measure(folder, args.n_eval, args.n_samples, args.seed)
        recipe = sft.load_recipe(folder)
        entry["recipe"] = {k: v for k, v in recipe.items() if k != "losses_every10"}
        entry["size_bytes"] = folder_bytes(folder)
        entry["weights_bytes"] = (folder / "model.safetensors").stat().st_size
        try:
            entry["path"] = str(folder.resolve().relative_to(ROOT))
        except ValueError:
            entry["path"] = str(folder)
        m = entry["metrics"]
        print(f"   q={q:g}: avg@N {m['accuracy']:.3f} maj@N {m['maj_accuracy']:.3f} systematic "
              f"{m['systematic_rate']:.3f} confident-maj-correct {_fmt(m['confident_majority_correct'])} "
              f"AUROC-within {_fmt(m['certainty_auroc_within'])} build {entry.get('build_seconds')} s", flush=True)
        rungs.append(entry)
    extra = sys.argv[1:] if argv is None else list(argv)
    cmd = "python experiments/build_ladder.py" + "".join(" " + a for a in extra)
    config = {"command": cmd, "qs": sorted(args.qs), "n_eval": args.n_eval, "n_samples": args.n_samples,
              "seed": args.seed, "eval_seed": EVAL_SEED, "temperature": 1.0,
              "total_seconds": round(time.perf_counter() - t_all, 1),
              "machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()} "
                         f"({len(jax.devices())} device(s)); load average at the end "
                         f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"}
    out = {"config": config, "rungs": rungs}
    (results_dir / "ladder.json").write_text(json.dumps(_nan_to_none(out), indent=2) + "\n")
    print(write_table(rungs, config, results_dir / "ladder.md"))
    plot(rungs, results_dir / "ladder.png")
    write_models_readme(rungs, config, models_dir)
    return out


if __name__ == "__main__":
    main()
