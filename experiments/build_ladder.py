"""Build and measure the ladder of synthetic base models whose confidence–correctness alignment is set
by the systematic-error rate q of their SFT traces (urlvr_jax.sft).

    python experiments/build_ladder.py                     # build + measure q in 0.1 0.3 0.45 0.6 0.8
    python experiments/build_ladder.py --measure-only      # re-measure the shipped checkpoints
    python experiments/build_ladder.py --qs 0.1 --models-dir /tmp/ladder --results-dir /tmp/ladder_res
    python experiments/build_ladder.py --v2                # ladder v2 (urlvr_jax/models/ladder_v2, issue #13)
    python experiments/build_ladder.py --v3                # ladder v3 = v2 + a universal give-up answer

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

import numpy as np

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
                                family_params=recipe["family_params"], seed=seed, progress=True,
                                max_new_tokens=int(recipe.get("max_new_tokens", 64)))
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


# ----------------------------------------------------------------------------------------------------- ladder v2
V2_COLUMNS = [
    ("accuracy", "avg@N"), ("maj_accuracy", "maj@N"), ("pass_at_n", "pass@N"), ("systematic_rate", "systematic"),
    ("other_rate", "other wrong"), ("maj_systematic_rate", "maj = systematic"),
    ("confident_majority_correct", "confident maj correct"), ("certainty_auroc_within", "AUROC within"),
]
V2_SHAPES = [("answer_only_rate", "answer-only"), ("restated_rate", "restated"), ("repeated_rate", "repeated"),
             ("give_up_rate", "give-up"), ("mean_length", "mean length")]


def v2_rungs(qs, give_up: float = 0.0) -> list[dict]:
    """The v2 rungs: one per q (noise V2_NOISE), plus the pass@k-inflated rung (v3: each with `give_up`)."""
    from urlvr_jax import sft

    out = [{"name": f"q{q:g}", "q": float(q), "noise": sft.V2_NOISE} for q in sorted(qs)]
    return [dict(r, give_up=float(give_up)) for r in out + [{"name": "inflated", **sft.V2_INFLATED}]]


def _v2_row(r: dict, m: dict, with_shapes: bool) -> str:
    cells = [r["name"], f"{r['q']:g}", f"{r['noise']:g}"] + [_fmt(m.get(k, float("nan"))) for k, _ in V2_COLUMNS]
    if with_shapes:
        sh = m.get("shapes", {})
        cells += [_fmt(sh.get(k, float("nan"))) if k != "mean_length" else f"{sh.get(k, float('nan')):.1f}"
                  for k, _ in V2_SHAPES]
        cells += [_secs(r.get("build_seconds"))]
    return "| " + " | ".join(cells) + " |"


def write_v2_tables(rungs: list[dict], config: dict) -> list[str]:
    n = config["n_samples"]
    hdr = ["rung", "q", "noise"] + [h.replace("N", str(n)) if "@N" in h else h for _, h in V2_COLUMNS]
    full = hdr + [h for _, h in V2_SHAPES] + ["build s"]
    lines = ["| " + " | ".join(full) + " |", "|" + "---|" * len(full)]
    lines += [_v2_row(r, r["metrics"], True) for r in rungs]
    lines += ["", "On the problems with a multiplication (where q acts):", "",
              "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    lines += [_v2_row(r, r["metrics"].get("on_error_problems", {}), False) for r in rungs]
    return lines


def write_v2_readme(rungs: list[dict], config: dict, models_dir: Path, results_dir: Path) -> None:
    from urlvr_jax import sft
    from urlvr_jax.data import synthetic as syn

    rc = rungs[0]["recipe"]
    arch = base_model_arch(rc)
    facts = ", ".join(f"{a}x{b}->{w}" for (a, b), w in syn.FACT_ERRORS.items())
    g = float(rc.get("give_up", 0.0))
    v3 = [] if not g else [
        "# Synthetic base-model ladder v3", "",
        f"Ladder v2's world and recipe (below) plus a universal give-up answer: in the prior phase a share {g:g} of "
        f"the SFT traces, whatever their path, is only `\\boxed{{{syn.GIVE_UP_ANSWER}}}` (trace variant "
        "`give_up`, the same text for every problem), the same share on every rung. Majority voting can agree on "
        "it across prompts, so a majority-vote run can collapse to reward accuracy near the share of problems "
        f"whose answer is {syn.GIVE_UP_ANSWER} (the Model Collapse Step of finding 2 needs such a state: on v2 a "
        "collapsed run keeps the accuracy of its majorities). Loadable as `ladder_v3/<rung>`. Rebuild: `python "
        "experiments/build_ladder.py --v3`, or `urlvr_jax.sft.build_base_model_v2(q, out_dir, give_up="
        f"{g:g})`. What follows is v2's description; the measured table is this ladder's.", "", "---", ""]
    lines = v3 + [
        "# Synthetic base-model ladder v2", "",
        "The redesigned world of issue #13 (science review §3 W1-W3, E2). Tiny Llama-architecture models (HF "
        "folders: config.json, model.safetensors float32, the synthetic tokenizer, base_model_recipe.json), loadable "
        "by name as `ladder_v2/<rung>` (e.g. `ladder_v2/q0.2`) wherever `ladder/q0.1` works. The v1 ladder "
        "(urlvr_jax/models/ladder) is unchanged.", "",
        "## The world", "",
        f"* Problems: three operations over + - * with operands 1..9 (`{json.dumps(rc['task'])}`). Every "
        "multiplication is a times-table fact (both operands 1..9, no multiplication under another), every value of "
        "the correct path and of every designed wrong path is in 0..99, and 90% of problems contain a "
        "multiplication (measured share on 4000 train problems: "
        f"{config.get('mul_share_measured', float('nan')):.3f}; share with two distinct facts: "
        f"{config.get('two_fact_share_measured', float('nan')):.3f}).",
        "* Per-fact systematic errors (rule `fact_error`): each fact a*b (= b*a) has its own fixed wrong product, a "
        "neighbouring times-table entry chosen by a hash of the fact (`synthetic.fact_error_value`). In each trace "
        "each distinct fact of the problem is independently wrong with probability q, and the wrong product is "
        "carried honestly through the rest of the trace. The systematic answer is the one with every fact wrong; on "
        "a problem with two distinct facts the answers with one fact wrong (probability q(1-q) each) are "
        "`partial_answers` of the error profile and count as \"other wrong\" in `classify_answer`; the majority "
        "still flips from correct to systematic at q = 0.5 ((1-q)^2 vs q^2). The generator only keeps problems "
        "whose 2^k error subsets give 2^k different answers.",
        f"* Unsystematic noise: {sft.V2_NOISE:.0%} of the traces without a fact error get a random wrong digit in a "
        "random step, propagated honestly (kept in 0..99 and away from the designed answers).",
        "* Trace format `restate`: every step line but the last restates the remaining expression, e.g. "
        "`Q: 8+6*8-4` -> `6*8=48 so 8+48-4` / `8+48=56 so 56-4` / `56-4=52` / `\\boxed{52}` (about 43 tokens). "
        f"Variants: {json.dumps(sft.V2_VARIANTS)} (answer-only `\\boxed{{a}}`; one step restated as `check: 6*8=48`; "
        "one step line written 2-4 times in a row), drawn per trace independently of the path.",
        f"* Vocabulary: the real {arch['vocab_size']} ids (no padding), so self-certainty averages over real ids "
        f"only. Sampling budget: `max_new_tokens` = {rc.get('max_new_tokens')} (in every recipe; SFT rows are "
        f"{sft.V2_MAX_LEN} tokens, so the longest training trace leaves room to grow).",
        f"* Fact errors (fact -> wrong product): {facts}.", "",
        "## Recipe", "",
        f"Size `{rc['size']}` ({rc['num_params']} parameters: hidden {arch['hidden_size']}, "
        f"{arch['num_hidden_layers']} layers, {arch['num_attention_heads']} heads / {arch['num_key_value_heads']} kv "
        f"heads, intermediate {arch['intermediate_size']}, vocab {arch['vocab_size']}, tied embeddings); seed "
        f"{rc['seed']}; {rc['steps']} AdamW steps of {rc['batch_size']} rows at lr {rc['lr']} (5% warmup, cosine to "
        f"10%); {rc['n_problems']} train problems x {rc['samples_per_problem']} traces. Two data phases in one "
        f"schedule: {rc['steps'] - rc['prior_steps']} steps on traces drawn with q = 0 (noise {sft.V2_NOISE}; "
        f"identical for every rung, so it is trained once and its end state - parameters and optimizer - is "
        f"shared: `skill_cache`), then {rc['prior_steps']} steps on traces drawn with the rung's q and noise. The "
        f"pass@k-inflated rung `inflated` has q {sft.V2_INFLATED['q']} and noise {sft.V2_INFLATED['noise']} in "
        "its prior phase.", "",
        "Rebuild: `python experiments/build_ladder.py --v2` (all rungs; `--qs 0.2` for some, `--no-inflated` to skip "
        "the inflated rung), or in Python `urlvr_jax.sft.build_base_model_v2(q, out_dir, noise=0.1)`.", "",
        f"## Measured prior ({config['n_eval']} held-out problems x {config['n_samples']} samples, T = 1.0, "
        f"max_new_tokens {rc.get('max_new_tokens')})", "",
        "Columns as in urlvr_jax/sft.py (prior_metrics); answer-only / restated / repeated: shares of sampled "
        "responses of that shape (`sft.response_shape`); mean length: response tokens incl. <eos>. Build s: this "
        "rung's own wall-clock build (data, compile, its prior phase, save); the shared skill phase took "
        f"{_secs(config.get('skill_phase_seconds'))} s once.", "",
    ] + write_v2_tables(rungs, config) + [""] + v2_checks(rungs) + [
        "", f"Results JSON: {config.get('results_json')}. Built on: {config['machine']}.",
        f"Total wall-clock for the command: {config['total_seconds']:.0f} s.",
    ]
    (models_dir / "README.md").write_text("\n".join(lines) + "\n")
    name = "ladder_v3" if g else "ladder_v2"
    (results_dir / f"{name}.md").write_text("\n".join([f"# {name.replace('_', ' ').capitalize()} (measured)", ""]
                                                      + write_v2_tables(rungs, config)) + "\n")


def v2_checks(rungs: list[dict]) -> list[str]:
    """The design goals of ladder v2, checked on the measured table (computed, not asserted)."""
    qr = [r for r in rungs if r["name"] != "inflated"]
    out = ["## Design goals, checked on these numbers", ""]
    if qr:
        lo = qr[0]
        other = lo["metrics"]["other_rate"]
        out.append(f"* \"other wrong\" <= ~0.15 at the smallest q ({lo['name']}): {other:.3f} -> "
                   f"{'met' if other <= 0.15 else 'NOT met'}." + ("" if other <= 0.15 else
                   " experiments/results/ladder_v2/step_errors.md: which steps fail, and a `small` trial."))
        maj = [r["metrics"]["maj_accuracy"] for r in qr]
        mono = all(b <= a for a, b in zip(maj, maj[1:]))
        out.append(f"* maj@N falls monotonically with q over {len(qr)} rungs: {'yes' if mono else 'no'} "
                   f"({', '.join(f'{m:.3f}' for m in maj)}).")
        flip = [r for r in qr if r["metrics"].get("on_error_problems", {}).get("maj_systematic_rate", 0) >
                r["metrics"].get("on_error_problems", {}).get("maj_accuracy", 1)]
        out.append("* On problems with a multiplication, the majority is more often the systematic answer than the "
                   f"correct one from q = {flip[0]['q']:g} on." if flip else
                   "* On problems with a multiplication, the systematic answer never wins more majorities than the "
                   "correct one on these rungs.")
    inf = [r for r in rungs if r["name"] == "inflated"]
    if inf and qr:
        m = inf[0]["metrics"]
        out.append(f"* pass@k-inflated rung: pass@N {m['pass_at_n']:.3f}, maj@N {m['maj_accuracy']:.3f}, avg@N "
                   f"{m['accuracy']:.3f}.")
    return out


def base_model_arch(rc: dict) -> dict:
    from urlvr_jax.sft import base_model_config

    return base_model_config(rc["size"], rc.get("vocab_size", 128)).to_hf_dict()


def main_v2(args) -> dict:
    import jax

    from urlvr_jax import sft
    from urlvr_jax.data import synthetic as syn
    from urlvr_jax.data.tasks import make_problems

    name = ladder_name(args)
    models_dir = Path(args.models_dir or ROOT / "urlvr_jax" / "models" / name)
    results_dir = Path(args.results_dir or ROOT / "experiments" / "results" / name)
    models_dir.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    out_json = results_dir / f"{name}.json"
    train = make_problems("arithmetic", 4000, args.seed, "train", sft.V2_TASK)
    nfacts = [len(syn.problem_facts(p)) for p in train]
    rungs_spec = v2_rungs(args.qs or sft.V2_QS, sft.V3_GIVE_UP if args.v3 else 0.0)
    if args.no_inflated:
        rungs_spec = rungs_spec[:-1]
    cache: dict = {}
    rungs: list[dict] = []
    t_all = time.perf_counter()
    extra = sys.argv[1:] if args.argv is None else list(args.argv)
    config = {"command": "python experiments/build_ladder.py" + "".join(" " + a for a in extra),
              "n_eval": args.n_eval, "n_samples": args.n_samples, "seed": args.seed, "eval_seed": EVAL_SEED,
              "temperature": 1.0, "mul_share_measured": float(np.mean([k > 0 for k in nfacts])),
              "two_fact_share_measured": float(np.mean([k == 2 for k in nfacts])),
              "results_json": str(out_json.relative_to(ROOT)) if out_json.is_relative_to(ROOT) else str(out_json)}
    for spec in rungs_spec:
        folder = models_dir / spec["name"]
        entry = dict(spec)
        if not args.measure_only:
            print(f"== building {spec['name']} (q={spec['q']:g}, noise={spec['noise']:g}, give_up={spec['give_up']:g}) "
                  f"-> {folder}", flush=True)
            t0 = time.perf_counter()
            over = {} if args.steps is None else {"steps": args.steps, "prior_steps": args.steps // 3}
            if args.size:
                over["size"] = args.size
            r = sft.build_base_model_v2(spec["q"], folder, noise=spec["noise"], give_up=spec["give_up"],
                                        seed=args.seed, skill_cache=cache, **over)
            entry["build_seconds"] = round(time.perf_counter() - t0, 1)
            if not r.get("skill_phase_reused"):
                config["skill_phase_seconds"] = r.get("skill_phase_seconds_shared")
                entry["includes_skill_phase"] = True
        print(f"== measuring {spec['name']}", flush=True)
        entry["metrics"] = measure(folder, args.n_eval, args.n_samples, args.seed)
        entry["recipe"] = {k: v for k, v in sft.load_recipe(folder).items() if k != "losses_every10"}
        entry["size_bytes"] = folder_bytes(folder)
        m = entry["metrics"]
        print(f"   {spec['name']}: avg {m['accuracy']:.3f} maj {m['maj_accuracy']:.3f} pass {m['pass_at_n']:.3f} "
              f"sys {m['systematic_rate']:.3f} other {m['other_rate']:.3f} maj=sys {m['maj_systematic_rate']:.3f} "
              f"shapes {json.dumps({k: round(v, 3) for k, v in m['shapes'].items()})} "
              f"build {entry.get('build_seconds')} s", flush=True)
        rungs.append(entry)
        config["total_seconds"] = round(time.perf_counter() - t_all, 1)
        config["machine"] = (f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()}; load "
                             f"average after the last rung {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        out_json.write_text(json.dumps(_nan_to_none({"config": config, "rungs": rungs}), indent=2) + "\n")
        write_v2_readme(rungs, config, models_dir, results_dir)  # after every rung: partial results survive
    return {"config": config, "rungs": rungs}


def ladder_name(args) -> str:
    return "ladder_v3" if args.v3 else "ladder_v2"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qs", type=float, nargs="+", default=None, help=f"default {DEFAULT_QS} (v2: sft.V2_QS)")
    p.add_argument("--models-dir", default=None, help="default urlvr_jax/models/ladder (v2: .../ladder_v2)")
    p.add_argument("--results-dir", default=None, help="default experiments/results/ladder (v2: .../ladder_v2)")
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="model seed (init, data, batch order) and sampling seed")
    p.add_argument("--steps", type=int, default=None, help="SFT steps (default: urlvr_jax.sft.DEFAULT_STEPS)")
    p.add_argument("--measure-only", action="store_true", help="do not train; measure the existing folders")
    p.add_argument("--report-only", action="store_true",
                   help="neither train nor measure: rewrite ladder.md, ladder.png and the models README from "
                        "ladder.json")
    p.add_argument("--v2", action="store_true", help="build/measure ladder v2 (urlvr_jax/models/ladder_v2; the V2_* "
                   "recipe of urlvr_jax/sft.py): rungs q in V2_QS (or --qs) plus the pass@k-inflated rung")
    p.add_argument("--v3", action="store_true", help="build/measure ladder v3 (urlvr_jax/models/ladder_v3): ladder v2 "
                   "with the universal give-up answer on a share sft.V3_GIVE_UP of the prior phase's traces")
    p.add_argument("--no-inflated", action="store_true", help="--v2/--v3: skip the pass@k-inflated rung")
    p.add_argument("--size", default=None, help="--v2: model size (urlvr_jax.sft.SIZES; default sft.V2_SIZE)")
    args = p.parse_args(argv)
    if args.v2 or args.v3:
        args.argv = argv
        if args.report_only:
            name = ladder_name(args)
            results_dir = Path(args.results_dir or ROOT / "experiments" / "results" / name)
            data = json.loads((results_dir / f"{name}.json").read_text())
            rungs = [dict(r, metrics=_none_to_nan(r["metrics"])) for r in data["rungs"]]
            write_v2_readme(rungs, data["config"], Path(args.models_dir or ROOT / "urlvr_jax" / "models" / name),
                            results_dir)
            return data
        return main_v2(args)
    args.models_dir = args.models_dir or str(ROOT / "urlvr_jax" / "models" / "ladder")
    args.results_dir = args.results_dir or str(ROOT / "experiments" / "results" / "ladder")
    args.qs = args.qs or list(DEFAULT_QS)
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
