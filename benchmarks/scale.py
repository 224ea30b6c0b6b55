"""The paper's presets at pod scale, measured by the compiler (no TPU needed: libtpu's abstract devices).

For each preset and TPU slice, compiles the training step's programs (urlvr_jax/aot.py: the same jitted
phases and shardings `urlvr-train` runs) and tabulates the per-device peak memory of each program against
the chip's HBM, with the loop-corrected FLOPs and roofline time of the update. A second table compiles only
the update for growing response lengths and prints how its temporary memory grows (8k / 1k: linear is 8x,
quadratic attention ~64x for the attention part).

    pip install -e ".[tpu]"
    python benchmarks/scale.py                                    # all presets x v5e-16, v5e-64, v5p-8
    python benchmarks/scale.py --presets paper:default --targets v5e-16 --attention dense,flash
    python benchmarks/scale.py --lengths 1024,2048,4096,8192 --length-target v5p-8 --presets none

Writes benchmarks/results/scale_<tag>.json and .md (and prints the tables). Compiles take ~0.5-3 min each on
a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU devices are abstract; everything runs on this CPU

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from urlvr_jax import aot  # noqa: E402
from urlvr_jax.api import get_config  # noqa: E402

GIB = aot.GIB
PRESETS = {
    "paper:default": ("configs/paper.py:default", {}),
    "paper:ttrl": ("configs/paper.py:ttrl", {}),
    "paper:self_certainty": ("configs/paper.py:self_certainty", {}),
    "qwen3-8b": ("configs/paper.py:default", {"model.preset": "qwen3-8b-base"}),
}


def make_config(preset: str, attention: str | None, overrides: dict):
    spec, preset_overrides = PRESETS[preset]
    config = get_config(str(ROOT / spec.split(":")[0]) + ":" + spec.split(":")[1], validate=False)
    for key, value in {**preset_overrides, **overrides}.items():
        section, leaf = key.split(".")
        config[section][leaf] = value
    if attention:
        if "attention" not in config.model:
            raise SystemExit(f"--attention {attention}: this version has no config.model.attention key")
        config.model.attention = attention
    return config


def run_one(preset, target, attention, overrides, programs=aot.PROGRAMS) -> dict:
    config = make_config(preset, attention, overrides)
    t0 = time.perf_counter()
    report = aot.compile_for(config, target, preset, programs=programs)
    out = report.to_dict()
    out.update(preset=preset, attention=attention or "default", overrides=overrides,
               wall_s=time.perf_counter() - t0, table=report.table())
    print(report.table(), flush=True)
    return out


def memory_table(results: list[dict]) -> str:
    lines = ["| preset | slice | attention | overrides | resident GiB | rollout peak | scoring peak | reward peak | "
             "update peak | HBM/device | fits | update TFLOP/device | update roofline s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        by = {p["name"]: p for p in r["programs"]}

        def cell(name):
            p = by.get(name)
            if p is None:
                return "–"
            peak = f"{p['peak'] / GIB:.1f}"
            return f"refused (> {peak})" if p["error"] else peak

        update = by.get("update", {})
        resident = sum(r["state_gib"].values())
        lines.append(
            f"| {r['preset']} | {r['target']} | {r['attention']} | {_fmt(r['overrides'])} | {resident:.2f} | "
            f"{cell('rollout')} | {cell('scoring')} | {cell('reward')} | {cell('update')} | "
            f"{r['hbm_per_device_gib']:.1f} | {'yes' if r['fits'] else 'NO'} | "
            f"{update.get('flops', 0) / 1e12:.1f} | {update.get('roofline_s', 0):.2f} |")
    return "\n".join(lines)


def _fmt(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "–"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma list of {list(PRESETS)} or 'none'")
    parser.add_argument("--targets", default="v5e-16,v5e-64,v5p-8")
    parser.add_argument("--attention", default="", help="comma list of model.attention values (default: the "
                                                        "preset's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every run, e.g. --set rl.micro_batch_groups=-1")
    parser.add_argument("--lengths", default="", help="response lengths for the update-only growth table")
    parser.add_argument("--length-target", default="v5p-8")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args(argv)
    if not aot.tpu_available():
        print("libtpu is not installed: pip install -e '.[tpu]'", file=sys.stderr)
        return 2
    overrides = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "-0123456789tf[{\"" else value
    attentions = [a for a in args.attention.split(",") if a] or [None]
    presets = [] if args.presets == "none" else args.presets.split(",")
    results = []
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        for target in args.targets.split(","):
            for attention in attentions:
                results.append(run_one(preset, target, attention, overrides))
                (out_dir / f"scale_{args.tag}.json").write_text(json.dumps(results, indent=1))
    md = ["## Per-device peak memory by program (GiB, compiler)", "", memory_table(results)] if results else []
    growth = []
    for attention in attentions if args.lengths else []:
        row = {}
        for T in [int(x) for x in args.lengths.split(",")]:
            r = run_one("paper:default", args.length_target, attention,
                        {**overrides, "sampling.max_new_tokens": T}, programs=("update",))
            update = r["programs"][0]
            row[T] = update
            growth.append({"attention": attention or "default", "T": T, **update})
            (out_dir / f"scale_{args.tag}_lengths.json").write_text(json.dumps(growth, indent=1))
        Ts = sorted(row)
        if len(Ts) > 1 and all(row[t]["temp"] > 0 for t in Ts):  # a refusal carries the compiler's figure too
            ratio = row[Ts[-1]]["temp"] / row[Ts[0]]["temp"]
            line = (f"update temp memory on {args.length_target}, attention={attention or 'default'}: "
                    + ", ".join(f"T={t}: {row[t]['temp'] / GIB:.2f} GiB" + (" (refused)" if row[t]["error"] else "")
                                for t in Ts)
                    + f"; {Ts[-1]}/{Ts[0]} = {ratio:.2f}x (tokens grew {Ts[-1] / Ts[0]:.0f}x)")
        else:
            line = (f"update on {args.length_target}, attention={attention or 'default'}: "
                    + ", ".join(f"T={t}: {'refused' if row[t]['error'] else 'ok'} "
                                f"{row[t]['temp'] / GIB:.2f} GiB" for t in Ts))
        print(line, flush=True)
        md += ["", line]
    if md:
        (out_dir / f"scale_{args.tag}.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
