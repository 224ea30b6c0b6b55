"""Rollout speed: urlvr-jax's sampler against transformers `generate` (PyTorch), same weights, same work.

A Llama-architecture model with random weights is built with transformers, saved with `save_pretrained`
to a temporary folder and loaded into ours with `urlvr_jax.models.weights.load_model`, so both sides
run the same float32 weights. Both generate exactly `--new-tokens` tokens for the same left-padded batch
of prompts of varied lengths (no EOS can stop a row early), greedy and sampled (temperature, top-p).
Each side is warmed up once (for ours that is the jit compilation), then the two sides are timed
alternately `--repeats` times (so load from other processes hits both alike); the median is reported. Greedy
outputs are compared token for token so the speed comparison is of equal work.

The timed work includes the prefill. Ours also computes the per-token statistics (log-prob, entropy,
self-certainty, top-1 − top-2 gap) inside the loop; transformers computes none of them.

Also printed: prefill and per-step decode time of both sides (from a 1-token run: decode/step =
(t(T) − t(1)) / (T − 1)), and on a GPU the decode time per step against the HBM-bandwidth floor
(parameter bytes + KV-cache bytes read per step) / bandwidth.

The last line is `speedup_vs_transformers_generate=<x>` with x the geometric mean over the modes run
of (our tokens/s) / (transformers tokens/s).

    python3 benchmarks/rollout.py                 # ~30M params, batch 32 x 128 new tokens (minutes on CPU)
    python3 benchmarks/rollout.py --tiny          # smoke run (seconds)
    python3 benchmarks/rollout.py --lengths longtail          # ragged responses: engine vs static vs transformers
    python3 benchmarks/rollout.py --lengths longtail --tiny   # its smoke run

`--lengths longtail`: RL rollouts are ragged (most responses far below the length cap, a few at it). Each
row r gets a response length L_r drawn once from a log-normal with mean `--mean-fraction` × cap (cap =
`--new-tokens`, default 1024 here; fixed seed), clipped to [1, cap], and ends there on all three sides: a
per-row stopping criterion in transformers `generate` (the row is finished after L_r tokens, as if it had
emitted EOS), the per-row length limit (`max_lengths`) in ours. Three sides run the same rows in the same
process, timed alternately: the continuous-batching engine (one side per `--max-inflight` slot count), our
static sampler, and transformers `generate`. Useful tokens/s = sum(L_r) / seconds. Also printed: the fraction of decode
row-steps that produced a kept token (static: sum(L) / (rows × max(L)); engine: sum(L) / (slots × steps)).
The last two lines are `longtail_speedup_vs_transformers_generate=<x>` and `longtail_speedup_vs_static=<x>`
(tokens/s of the engine with the first `--max-inflight` slot count over the peer's, geometric mean over the
modes run).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import numpy as np

# 30M-parameter default: 8 layers, d=512, 8 heads / 4 KV heads, MLP 1408, vocab 8192 (untied) -> ~32M.
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, batch=4, new_tokens=8,
            prompt_len=8, repeats=1)
TINY_LONGTAIL = dict(TINY, batch=8, new_tokens=64, max_inflight="3,8", decode_block=16)
# --lengths longtail defaults (a flag given on the command line wins)
LONGTAIL = dict(new_tokens=1024, batch=32, modes="greedy,sampled", repeats=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s of urlvr-jax's JAX sampler vs transformers `generate` (PyTorch) on the same "
                    "random Llama model, batch and lengths. Last line: speedup_vs_transformers_generate=<x> "
                    "(geometric mean over the modes run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("workload")
    g.add_argument("--lengths", choices=("fixed", "longtail"), default="fixed",
                   help="fixed: every row generates --new-tokens tokens; longtail: ragged rows, three-way comparison "
                        "with the continuous-batching engine (see the module docstring)")
    g.add_argument("--batch", type=int, default=None, help="number of prompts (rows) generated together "
                   f"(fixed: 32, longtail: {LONGTAIL['batch']})")
    g.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (no EOS stops a row); "
                   f"longtail: the length cap (fixed: 128, longtail: {LONGTAIL['new_tokens']})")
    g.add_argument("--mean-fraction", type=float, default=0.3, help="longtail: mean response length / cap")
    g.add_argument("--length-sigma", type=float, default=1.0, help="longtail: sigma of log(length)")
    g.add_argument("--max-inflight", default="",
                   help="longtail: comma list of the engine's decode-slot counts, one engine side each; the first "
                        "gives the headline ratios (default: half the rows, all the rows)")
    g.add_argument("--decode-block", type=int, default=128, help="longtail: the engine's attention block")
    g.add_argument("--prompt-len", type=int, default=64,
                   help="longest prompt; prompt lengths are spread over [prompt_len/4, prompt_len], left-padded")
    g.add_argument("--modes", default=None, help="comma list of greedy, sampled (default: both)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampled mode temperature")
    g.add_argument("--top-p", type=float, default=0.95, help="sampled mode nucleus mass (1 disables)")
    g.add_argument("--repeats", type=int, default=None,
                   help="timed runs per side and mode, median reported (fixed: 3, longtail: 1)")
    g.add_argument("--seed", type=int, default=0, help="weights, prompts and sampling keys")
    m = p.add_argument_group("model (Llama architecture, random weights)")
    m.add_argument("--hidden", type=int, default=512, help="model width d")
    m.add_argument("--layers", type=int, default=8, help="decoder layers")
    m.add_argument("--heads", type=int, default=8, help="query heads (head_dim = hidden / heads)")
    m.add_argument("--kv-heads", type=int, default=4, help="key/value heads (grouped-query attention)")
    m.add_argument("--intermediate", type=int, default=1408, help="MLP width")
    m.add_argument("--vocab", type=int, default=8192, help="vocabulary (untied input/output embeddings)")
    m.add_argument("--logit-scale", type=float, default=10.0,
                   help="multiply lm_head by this: random weights give near-flat logits whose argmax flips "
                        "on float32 rounding; a sharper head makes greedy parity meaningful")
    o = p.add_argument_group("other")
    o.add_argument("--tiny", action="store_true",
                   help=f"smoke-test configuration (overrides the sizes above): {TINY}")
    o.add_argument("--no-split", action="store_true", help="skip the prefill / per-step decode breakdown")
    o.add_argument("--hbm-gbps", type=float, default=3350.0,
                   help="accelerator memory bandwidth in GB/s for the decode floor (GPU only; H100 SXM = 3350)")
    args = p.parse_args(argv)
    longtail = args.lengths == "longtail"
    defaults = dict(new_tokens=128, batch=32, modes="greedy,sampled", repeats=3)
    for k, v in (LONGTAIL if longtail else defaults).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.tiny:
        for k, v in (TINY_LONGTAIL if longtail else TINY).items():
            setattr(args, k, v)
    try:
        args.max_inflight = [int(x) for x in str(args.max_inflight).split(",") if x.strip()]
    except ValueError:
        p.error(f"--max-inflight must be a comma list of integers, got {args.max_inflight!r}")
    if longtail and not args.max_inflight:
        args.max_inflight = [max(1, args.batch // 2), args.batch]
    if not (0 < args.mean_fraction <= 1) or args.length_sigma < 0 or args.decode_block < 1 or \
            any(not 0 < m <= args.batch for m in args.max_inflight):
        p.error("--mean-fraction must be in (0, 1], --length-sigma >= 0, --decode-block >= 1, --max-inflight "
                "values in [1, --batch]")
    args.modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    bad = [s for s in args.modes if s not in ("greedy", "sampled")]
    if bad or not args.modes:
        p.error(f"--modes: unknown {bad}; use greedy and/or sampled")
    if args.prompt_len < 1 or args.new_tokens < 2 or args.batch < 1 or args.repeats < 1:
        p.error("--prompt-len, --batch, --repeats must be >= 1 and --new-tokens >= 2")
    return args


# ------------------------------------------------------------------------------------------ setup
def build_hf_model(args, folder: str):
    """A random float32 LlamaForCausalLM saved to `folder`; returns (model, parameter count)."""
    import torch
    import transformers

    torch.manual_seed(args.seed)
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(2048, args.prompt_len + args.new_tokens), tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval().to(torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(args.logit_scale)
    model.save_pretrained(folder)
    # Nothing may stop a row early: generation runs without any EOS on both sides.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    n_params = sum(p.numel() for p in model.parameters())
    return model, n_params


def make_prompts(args) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [B, Tp] of lengths spread over [Tp/4, Tp] (token ids avoid 0..2)."""
    rng = np.random.default_rng(args.seed)
    Tp = args.prompt_len
    lengths = np.linspace(max(1, Tp // 4), Tp, args.batch).round().astype(int)
    rng.shuffle(lengths)
    ids = np.zeros((args.batch, Tp), np.int32)
    mask = np.zeros((args.batch, Tp), np.int32)
    for i, n in enumerate(lengths):
        ids[i, Tp - n:] = rng.integers(3, args.vocab, n)
        mask[i, Tp - n:] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------ runners
def _interleaved_medians(fn_a, fn_b, repeats: int):
    """Warm up both (compilation for ours), then time them alternately so both see the same machine load.

    Returns (median seconds of a, output of a, median seconds of b, output of b).
    """
    fn_a(), fn_b()
    times_a, times_b, out_a, out_b = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out_a = fn_a()
        t1 = time.perf_counter()
        out_b = fn_b()
        t2 = time.perf_counter()
        times_a.append(t1 - t0)
        times_b.append(t2 - t1)
    return statistics.median(times_a), out_a, statistics.median(times_b), out_b


def hf_runner(hf, ids, mask, mode: str, new_tokens: int, args):
    import torch

    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kw = dict(max_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
    if mode == "greedy":
        kw.update(do_sample=False)
    else:  # top_k=0: transformers defaults to top-k 50, which ours does not apply
        kw.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0)

    def run():
        torch.manual_seed(args.seed)
        with torch.inference_mode():
            out = hf.generate(ids_t, attention_mask=mask_t, **kw)
        new = out[:, ids.shape[1]:].numpy()
        if new.shape != (ids.shape[0], new_tokens):
            raise RuntimeError(f"transformers generated {new.shape}, expected {(ids.shape[0], new_tokens)}: "
                               "a row stopped early, so the comparison would not be of equal work")
        return new

    return run


def ours_runner(model, ids, mask, mode: str, new_tokens: int, args):
    import jax
    import jax.numpy as jnp

    from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids

    if mode == "greedy":
        sampling = SamplingConfig(max_new_tokens=new_tokens, greedy=True)
    else:
        sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=args.temperature, top_p=args.top_p)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    key = jax.random.key(args.seed)

    def run():
        out = generate_ids(model, ids_j, mask_j, key, sampling, num_samples=1, eos_ids=[], pad_id=0)
        tokens = np.asarray(jax.block_until_ready(out.tokens))
        if int(np.asarray(out.lengths).min()) != new_tokens:
            raise RuntimeError("our sampler stopped a row early; the comparison would not be of equal work")
        return tokens

    return run


# ------------------------------------------------------------------------------------------ report
def hbm_floor_s(args, n_params: int, mean_context: float, bytes_per: int = 4) -> tuple[float, float]:
    """Seconds per decode step to read (parameters + KV cache) once at --hbm-gbps.

    Returns (floor at the mean valid context, floor when the whole preallocated cache [Tp + T] is read,
    which is what a dense attention over the preallocated cache does). The input embedding table is
    gathered, not read whole, so it is left out.
    """
    head_dim = args.hidden // args.heads
    weights = (n_params - args.vocab * args.hidden) * bytes_per
    kv_per_slot = 2 * args.layers * args.batch * args.kv_heads * head_dim * bytes_per
    bw = args.hbm_gbps * 1e9
    full = args.prompt_len + args.new_tokens
    return (weights + kv_per_slot * mean_context) / bw, (weights + kv_per_slot * full) / bw


def floor_line(args, n_params: int, mean_prompt: float, step_s: float) -> str:
    """The decode-step time against the HBM-bandwidth floor, as one printable line."""
    mean_ctx = mean_prompt + args.new_tokens / 2
    floor_valid, floor_full = hbm_floor_s(args, n_params, mean_ctx)
    share = f"{100 * floor_valid / step_s:.1f}%" if step_s > 0 else "n/a (non-positive step time: noisy run)"
    return (f"HBM floor at {args.hbm_gbps:.0f} GB/s: {floor_valid * 1e6:.1f} us/step (params + KV at the mean valid "
            f"context {mean_ctx:.0f}), {floor_full * 1e6:.1f} us/step (whole preallocated cache "
            f"{args.prompt_len + args.new_tokens}); ours {step_s * 1e6:.1f} us/step = {share} of the bandwidth bound")


def main(argv=None) -> float:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import torch

    from urlvr_jax.models.weights import load_model

    platform = jax.devices()[0].platform
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"jax {jax.__version__} on {platform} ({jax.device_count()} device(s): {jax.devices()[0].device_kind}); "
          f"torch {torch.__version__} with torch.get_num_threads()={torch.get_num_threads()}; "
          f"{os.cpu_count()} CPUs, load average {load} (a shared machine makes timings noisy)")

    with tempfile.TemporaryDirectory() as folder:
        hf, n_params = build_hf_model(args, folder)
        ours = load_model(folder, dtype=jnp.float32)
    ids, mask = make_prompts(args)
    lens = mask.sum(1)
    B, T = args.batch, args.new_tokens
    print(f"model: Llama d={args.hidden} L={args.layers} heads={args.heads}/{args.kv_heads} "
          f"mlp={args.intermediate} vocab={args.vocab} untied, float32, {n_params / 1e6:.2f}M parameters")
    if args.lengths == "longtail":
        return longtail_main(args, ours, hf, ids, mask, n_params)
    print(f"work: batch {B} x {T} new tokens, prompt lengths {lens.min()}..{lens.max()} (left-padded to "
          f"{args.prompt_len}), no EOS; warm-up 1 + median of {args.repeats} timed runs per side and mode, "
          f"the two sides timed alternately")

    rows, ratios, greedy_equal = [], [], None
    for mode in args.modes:
        t_hf, out_hf, t_us, out_us = _interleaved_medians(
            hf_runner(hf, ids, mask, mode, T, args), ours_runner(ours, ids, mask, mode, T, args), args.repeats)
        tps_hf, tps_us = B * T / t_hf, B * T / t_us
        ratios.append(tps_us / tps_hf)
        rows.append((mode, t_hf, tps_hf, t_us, tps_us))
        if mode == "greedy":
            greedy_equal = float(np.mean(out_hf == out_us))
            rows_equal = int(np.all(out_hf == out_us, axis=1).sum())
            print(f"greedy parity: {greedy_equal:.4f} of tokens equal, {rows_equal}/{B} rows identical")
        else:
            print(f"sampled: {len(np.unique(out_us))} distinct tokens (ours), {len(np.unique(out_hf))} (transformers)")

    split = None
    if not args.no_split:
        # prefill (+1 sampled token) alone, to separate prefill from decode
        mode0 = "greedy" if "greedy" in args.modes else rows[0][0]
        t1_hf, _, t1_us, _ = _interleaved_medians(
            hf_runner(hf, ids, mask, mode0, 1, args), ours_runner(ours, ids, mask, mode0, 1, args), args.repeats)
        t_full = {r[0]: r for r in rows}[mode0]
        step_hf = (t_full[1] - t1_hf) / (T - 1)
        step_us = (t_full[3] - t1_us) / (T - 1)
        split = (t1_hf, step_hf, t1_us, step_us)

    speedup = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print()
    print("| mode | transformers generate s | transformers tok/s | urlvr-jax s | urlvr-jax tok/s | speedup |")
    print("|---|---|---|---|---|---|")
    for mode, t_hf, tps_hf, t_us, tps_us in rows:
        print(f"| {mode} | {t_hf:.3f} | {tps_hf:.1f} | {t_us:.3f} | {tps_us:.1f} | {tps_us / tps_hf:.2f}x |")
    print(f"| geometric mean | | | | | {speedup:.2f}x |")
    if split:
        t1_hf, step_hf, t1_us, step_us = split
        print(f"\n{mode0} split: prefill+1 token: transformers {t1_hf * 1e3:.1f} ms, ours {t1_us * 1e3:.1f} ms; "
              f"decode per step: transformers {step_hf * 1e3:.2f} ms, ours {step_us * 1e3:.2f} ms")
        if platform == "gpu":
            print(floor_line(args, n_params, float(lens.mean()), step_us))
            print("note: transformers ran on torch's CPU build; the speedup below compares devices, not code")
    if greedy_equal is not None:
        print(f"greedy tokens equal to transformers: {greedy_equal:.4f}")
    print(f"speedup_vs_transformers_generate={speedup:.3f}")
    return speedup


# ------------------------------------------------------------------------------------------ longtail
def longtail_lengths(args) -> np.ndarray:
    """Response length of each row [batch]: log-normal with mean mean_fraction × cap, clipped to [1, cap]."""
    rng = np.random.default_rng(args.seed + 1)
    cap, sigma = args.new_tokens, args.length_sigma
    mu = math.log(args.mean_fraction * cap) - sigma ** 2 / 2  # E[exp(N(mu, sigma^2))] = mean_fraction × cap
    return np.clip(np.round(rng.lognormal(mu, sigma, args.batch)), 1, cap).astype(np.int32)


def hf_longtail_runner(hf, ids, mask, mode: str, lengths: np.ndarray, args):
    """transformers `generate` where row r is finished after lengths[r] new tokens (a per-row stopping
    criterion: the loop ends when every row is finished, as with EOS)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowLengths(StoppingCriteria):
        def __init__(self, prompt_len: int, lengths: np.ndarray):
            self.prompt_len, self.lengths = prompt_len, torch.tensor(lengths)

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - self.prompt_len) >= self.lengths

    ids_t, mask_t = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    kw = dict(max_new_tokens=int(lengths.max()), pad_token_id=0, eos_token_id=None,
              stopping_criteria=StoppingCriteriaList([RowLengths(ids.shape[1], lengths)]))
    if mode == "greedy":
        kw.update(do_sample=False)
    else:
        kw.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0)

    def run():
        torch.manual_seed(args.seed)
        with torch.inference_mode():
            out = hf.generate(ids_t, attention_mask=mask_t, **kw)
        new = out[:, ids.shape[1]:].numpy()
        if new.shape[1] != lengths.max():
            raise RuntimeError(f"transformers generated {new.shape[1]} steps, expected {lengths.max()}")
        return new, None

    return run


def ours_longtail_runner(model, ids, mask, mode: str, lengths: np.ndarray, args, engine: str, slots: int = 0):
    """Our static sampler or continuous engine with per-row length limits; returns (tokens, decode steps)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from urlvr_jax.rollout.engine import continuous_generate
    from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids

    if mode == "greedy":
        sampling = SamplingConfig(max_new_tokens=args.new_tokens, greedy=True)
    else:
        sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p)
    sampling = dataclasses.replace(sampling, engine=engine, max_inflight=slots,
                                   decode_block=args.decode_block)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    key = jax.random.key(args.seed)
    limits = jnp.asarray(lengths)

    def run(limits=limits):
        if engine == "continuous":
            out, steps = continuous_generate(model, ids_j, mask_j, key, sampling, eos_ids=[], pad_id=0,
                                             max_lengths=limits)
            steps = int(steps)
        else:
            out = generate_ids(model, ids_j, mask_j, key, sampling, eos_ids=[], pad_id=0, max_lengths=limits)
            steps = None
        tokens = np.asarray(jax.block_until_ready(out.tokens))
        if not np.array_equal(np.asarray(out.lengths), np.asarray(limits)):
            raise RuntimeError(f"{engine}: row lengths differ from the drawn lengths")
        return tokens, steps

    return run


def longtail_main(args, ours, hf, ids, mask, n_params: int):
    import jax.numpy as jnp

    lengths = longtail_lengths(args)
    B, cap = args.batch, args.new_tokens
    useful = int(lengths.sum())
    print(f"longtail: {B} rows, cap {cap}, lengths log-normal (mean {args.mean_fraction:.2f} x cap, sigma "
          f"{args.length_sigma}): mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, max {lengths.max()}, "
          f"{int((lengths == cap).sum())} at the cap; {useful} useful tokens. Engine: {args.max_inflight} slots, "
          f"attention "
          f"blocks of {args.decode_block}. Warm-up (compilation) with every row 1 token long, then "
          f"{args.repeats} timed run(s) per side, the three sides alternately")
    static_kept = useful / (B * int(lengths.max()))
    ones = np.ones_like(lengths)
    rows, speed_hf, speed_static = [], [], []
    engines = [f"urlvr-jax engine, {S} slots" for S in args.max_inflight]
    for mode in args.modes:
        runners = {"transformers generate": hf_longtail_runner(hf, ids, mask, mode, lengths, args),
                   "urlvr-jax static sampler": ours_longtail_runner(ours, ids, mask, mode, lengths, args, "static")}
        for name, S in zip(engines, args.max_inflight):
            runners[name] = ours_longtail_runner(ours, ids, mask, mode, lengths, args, "continuous", S)
        hf_longtail_runner(hf, ids, mask, mode, ones, args)()
        for name, fn in runners.items():  # compiles ours (shapes do not depend on lengths)
            if name != "transformers generate":
                fn(jnp.asarray(ones))
        times = {k: [] for k in runners}
        outs = {}
        for _ in range(args.repeats):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        tok_hf, _ = outs["transformers generate"]
        tok_static, _ = outs["urlvr-jax static sampler"]
        valid = np.arange(cap)[None, :] < lengths[:, None]
        valid_hf = valid[:, : tok_hf.shape[1]]
        kept = [f"static {static_kept:.3f} ({B} rows x {lengths.max()} steps)"]
        for name, S in zip(engines, args.max_inflight):
            tok_engine, steps = outs[name]
            line = (f"{mode}: {name}: tokens equal to the static sampler's: "
                    f"{float(np.mean(tok_engine[valid] == tok_static[valid])):.4f}")
            if mode == "greedy":
                hf_equal = float(np.mean(tok_engine[:, :tok_hf.shape[1]][valid_hf] == tok_hf[valid_hf]))
                line += f"; to transformers': {hf_equal:.4f}"
            print(line)
            kept.append(f"engine {useful / (S * steps):.3f} ({S} slots x {steps} steps)")
        print(f"{mode}: kept-token fraction of decode row-steps: {', '.join(kept)}")
        for name in runners:
            rows.append((mode, name, med[name], useful / med[name]))
        speed_hf.append(med["transformers generate"] / med[engines[0]])
        speed_static.append(med["urlvr-jax static sampler"] / med[engines[0]])
    geo = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print()
    print(f"| mode | side | s | useful tok/s | speedup of the {engines[0]} |")
    print("|---|---|---|---|---|")
    for mode, name, t, tps in rows:
        engine_t = [r[2] for r in rows if r[0] == mode and r[1] == engines[0]][0]
        print(f"| {mode} | {name} | {t:.3f} | {tps:.1f} | {t / engine_t:.2f}x |")
    print(f"load average at the end: {load}")
    print(f"longtail_speedup_vs_transformers_generate={geo(speed_hf):.3f}")
    print(f"longtail_speedup_vs_static={geo(speed_static):.3f}")
    return geo(speed_static)


if __name__ == "__main__":
    main()
