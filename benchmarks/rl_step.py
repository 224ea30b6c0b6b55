"""One URLVR RL iteration: urlvr-jax's jitted step against TRL's `GRPOTrainer` (PyTorch), same work.

One iteration = sample N responses for each of P prompts (rollout), score them with the policy (and,
with --kl-coef > 0, the frozen reference), compute a majority-vote reward and group-normalised (GRPO)
advantages, and take one AdamW step on the PPO-clip token-mean loss. Both sides:

  * run the same random float32 Llama-architecture model: built with transformers, saved with
    `save_pretrained` and loaded into ours with `urlvr_jax.models.weights.load_model` (random weights
    sample nearly uniformly over the 101 tokens, so some responses contain a `\\boxed{...}` answer);
  * use the synthetic world's tokenizer (101 tokens, `\\boxed{` is one token) and the same P synthetic
    arithmetic prompts every iteration, N samples per prompt, temperature 1, no top-k / top-p;
  * generate exactly --new-tokens tokens per response: ours stops on no EOS id; TRL suppresses the EOS
    token during generation (so no completion ends early and its padded batch is full length);
  * reward = majority vote over the group's last `\\boxed{...}` answers (no answer: reward 0, no vote;
    ties go to the first-seen answer): ours on device (`rewards.registry.device_reward`), TRL in a
    Python reward function on the decoded completions (it gets the decoded text, as any TRL reward does);
  * one optimizer step per rollout batch: AdamW (lr --lr, betas 0.9/0.999, no weight decay, constant
    schedule) after global grad-norm clipping at 1.0; loss = PPO clip (0.2 / 0.2) with token-mean
    aggregation (TRL's `loss_type="dapo"`), whole batch in one micro-batch; KL to the reference with the
    k3 estimator as a loss term when --kl-coef > 0 (TRL `beta`), else no reference model on either side.

Differences in what is computed (not hidden by the timing): both sides skip the old-policy scoring
pass with one update per rollout batch and use the detached log-probs of the loss forward as the old
ones (ours: `StepConfig.old_policy_pass`, which still runs the pass for certainty rewards, KL in the
reward, several mini-batches, n_train < N or dynamic sampling). Ours computes per-token statistics
(log-prob, entropy, self-certainty, top-2 gap) inside the sampling loop and the sampler-vs-trainer
log-prob drift; transformers `generate` computes none.

Timing: ours is compiled and warmed up first (--warmup iterations; the first call compiles), then
TRL's `trainer.train()` runs --warmup + --repeats steps, and after each timed TRL step (inside its
`on_step_end` callback) one of our iterations runs, so the two sides alternate under the same machine
load (the machine this was written on is shared). Medians are reported. TRL's iteration time is the wall
time from the end of that callback to the end of its next step (everything the trainer does in a step:
data loading, generation, reward, loss, backward, optimizer step, metric bookkeeping). Ours is one call
of the jitted production step (`urlvr_jax.rl.step.make_step`) up to `block_until_ready`.

Per-phase breakdown of ours: the production step's phased form (`make_step(..., phased=True)`, what
the trainer runs by default for its per-phase times: the same phase functions, one jitted function each
— rollout, scoring (only when a pass runs), reward, update — with a sync after each), timed alternately
with the fused step. Its sum differs from the fused step's time by the syncs and the lost cross-phase
fusion.
TRL's breakdown comes from timers wrapped around its own methods (`_generate_single_turn`,
`_get_per_token_logps_and_entropies` under no_grad, `_calculate_rewards`, `training_step`).

On a GPU (jax platform 'gpu') it also prints the update's model-FLOPs utilisation:
6 x parameters (without the input embedding, a gather) x tokens (P·N·(prompt width + new tokens)) /
update time / --peak-tflops. TRL always runs on the CPU (torch CPU build).

The last line is `speedup_vs_trl_grpo=<x>` with x = TRL median iteration time / ours.

    python3 benchmarks/rl_step.py            # ~9.5M params, 8 prompts x 8 samples x 64 tokens (minutes on CPU)
    python3 benchmarks/rl_step.py --tiny     # smoke run (about a minute, mostly imports and compilation)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

TINY = dict(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, prompts=2, samples=2, new_tokens=8,
            repeats=1, warmup=1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Median time of one URLVR RL iteration (rollout, scoring, majority-vote reward, GRPO "
                    "advantages, one AdamW update) of urlvr-jax's jitted step vs TRL's GRPOTrainer on the same "
                    "random Llama model, prompts, group size and generation length. Prints both iteration "
                    "times, the per-phase breakdown of both sides and, on a GPU, the update's MFU. Last line: "
                    "speedup_vs_trl_grpo=<TRL time / our time>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--prompts", type=int, default=8, help="prompts per iteration (P)")
    w.add_argument("--samples", type=int, default=8, help="responses per prompt, the group size (N)")
    w.add_argument("--new-tokens", type=int, default=64,
                   help="tokens generated per response; every response has exactly this length on both sides")
    w.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (both sides)")
    w.add_argument("--kl-coef", type=float, default=0.0,
                   help="k3 KL-to-reference loss coefficient (TRL `beta`); > 0 adds the frozen reference model "
                        "and its scoring pass on both sides")
    w.add_argument("--warmup", type=int, default=1, help="untimed iterations per side (ours: compilation)")
    w.add_argument("--repeats", type=int, default=3, help="timed iterations per side (median reported)")
    w.add_argument("--seed", type=int, default=0)
    m = p.add_argument_group("model (Llama architecture, random weights, synthetic 101-token vocabulary)")
    m.add_argument("--hidden", type=int, default=384)
    m.add_argument("--layers", type=int, default=6)
    m.add_argument("--heads", type=int, default=6)
    m.add_argument("--kv-heads", type=int, default=2)
    m.add_argument("--intermediate", type=int, default=1024)
    o = p.add_argument_group("other")
    o.add_argument("--tiny", action="store_true",
                   help=f"smoke-test configuration (overrides the sizes above): {TINY}")
    o.add_argument("--skip-phases", action="store_true", help="skip our per-phase breakdown (saves compilations)")
    o.add_argument("--peak-tflops", type=float, default=989.0,
                   help="accelerator peak TFLOP/s for the MFU line (GPU only; H100 SXM bf16 dense = 989)")
    args = p.parse_args(argv)
    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
    if args.samples < 2:
        p.error("--samples must be >= 2 (GRPO normalises within a group)")
    if min(args.prompts, args.new_tokens, args.repeats, args.warmup) < 1:
        p.error("--prompts, --new-tokens, --repeats and --warmup must be >= 1")
    if args.kl_coef < 0:
        p.error("--kl-coef must be >= 0")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error("--hidden must be divisible by --heads, and --heads by --kv-heads")
    return args


# ------------------------------------------------------------------------------------------ world
def build_world(args, folder: str):
    """(tokenizer, HF model, parameter count, prompt strings) with the model and tokenizer saved to folder."""
    import torch
    import transformers

    from urlvr_jax.data import build_synthetic_tokenizer, make_arithmetic_dataset, synthetic_prompt

    tok = build_synthetic_tokenizer()
    torch.manual_seed(args.seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    problems = make_arithmetic_dataset(args.prompts, seed=args.seed)
    prompts = [synthetic_prompt(pr) for pr in problems]
    return tok, model, n_params, prompts


def encode_prompts(tok, prompts) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ids/mask [P, Tp], Tp = the longest prompt (the library's encoder, no bucketing)."""
    from urlvr_jax.tokenizer import encode_prompts as encode

    return encode(tok, prompts, bucket=1)


def majority_vote_rewards(answers: list, n: int) -> list[float]:
    """Host majority vote over consecutive groups of n answers (None = no answer: no vote, reward 0).

    The majority is the most frequent answer; a tie goes to the answer seen first (as ours on device).
    """
    out = []
    for g in range(0, len(answers), n):
        group = answers[g:g + n]
        counts = collections.Counter(a for a in group if a is not None)
        maj = None
        if counts:
            best = max(counts.values())
            maj = next(a for a in group if a is not None and counts[a] == best)
        out += [float(a is not None and a == maj) for a in group]
    return out


# ------------------------------------------------------------------------------------------ TRL
class _PhaseClock:
    """Accumulates wall time per named phase within a trainer step; one dict per finished step."""

    def __init__(self):
        self.current = collections.defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.ends: list[float] = []

    def wrap(self, name, fn, when=None):
        @functools.wraps(fn)
        def timed(*a, **kw):
            if when is not None and not when():
                return fn(*a, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.current[name] += time.perf_counter() - t0
        return timed

    def end_step(self):
        self.ends.append(time.perf_counter())
        self.steps.append(dict(self.current))
        self.current.clear()


def run_trl(args, folder: str, tok, prompts, workdir: str, between=None) -> dict:
    """Median iteration time and phase times of TRL's GRPOTrainer on CPU (model loaded from `folder`).

    between(step_index): called after every TRL step (inside its `on_step_end` callback) to run one of our
    iterations there, so that both sides are timed alternately under the same machine load; the time
    spent in it is excluded from TRL's iteration times.
    """
    import datasets
    import torch
    from transformers import LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from urlvr_jax.rewards.grading import extract_boxed

    P, N, T = args.prompts, args.samples, args.new_tokens
    steps = args.warmup + args.repeats
    clock = _PhaseClock()
    resumed = []  # when TRL's next step starts: after the end of the callback

    class StepEnd(TrainerCallback):
        def on_step_end(self, *a, **kw):
            clock.end_step()
            if between is not None:
                between(len(clock.ends) - 1)
            resumed.append(time.perf_counter())

    def majority_vote(prompts, completions, completion_ids, **kw):  # TRL's reward-function signature
        return majority_vote_rewards([extract_boxed(c) for c in completions], N)

    config = GRPOConfig(
        output_dir=os.path.join(workdir, "trl_out"), use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        per_device_train_batch_size=P * N, gradient_accumulation_steps=1, num_generations=N,
        max_completion_length=T, max_steps=steps, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        beta=args.kl_coef, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, shuffle_dataset=False,
        # no completion may end early: EOS can never be sampled (ours: no EOS id stops a row)
        generation_kwargs={"suppress_tokens": [tok.eos_token_id]},
        report_to=[], logging_steps=10 ** 6, save_strategy="no", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0)
    # the same P prompts, in the same order, every iteration (RepeatSampler repeats each one N times)
    data = datasets.Dataset.from_dict({"prompt": prompts * steps})
    # loaded from the folder (not the in-memory object) so that TRL can build its reference model from the
    # same path when --kl-coef > 0
    hf_model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    trainer = GRPOTrainer(model=hf_model, reward_funcs=majority_vote, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[StepEnd()])
    trainer._generate_single_turn = clock.wrap("rollout", trainer._generate_single_turn)
    trainer._get_per_token_logps_and_entropies = clock.wrap(
        "scoring", trainer._get_per_token_logps_and_entropies, when=lambda: not torch.is_grad_enabled())
    trainer._calculate_rewards = clock.wrap("reward", trainer._calculate_rewards)
    trainer._prepare_inputs = clock.wrap("prepare", trainer._prepare_inputs)
    trainer.training_step = clock.wrap("training_step", trainer.training_step)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its end-of-run metrics dict
        trainer.train()
    total = time.perf_counter() - t0
    if len(clock.ends) != steps:
        raise RuntimeError(f"TRL ran {len(clock.ends)} steps, expected {steps}")
    # iteration k: from the end of the callback after step k-1 to the end of step k
    iters = [clock.ends[k] - resumed[k - 1] for k in range(args.warmup, steps)]
    timed = clock.steps[args.warmup:]
    med = lambda k: statistics.median(s.get(k, 0.0) for s in timed)  # noqa: E731
    phases = {
        "rollout": med("rollout"),
        "scoring (no_grad forwards; 0 = skipped)": med("scoring"),
        "reward": med("reward"),
        "other prepare (tokenise, advantages, ...)": med("prepare") - med("rollout") - med("scoring") - med("reward"),
        "loss forward + backward": med("training_step") - med("prepare"),
        "optimizer step + trainer overhead": statistics.median(iters) - med("training_step"),
    }
    return dict(iteration=statistics.median(iters), iterations=list(iters), phases=phases, total=total,
                first=clock.ends[0] - t0)


# ------------------------------------------------------------------------------------------ ours
def _timed(fn) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


class Ours:
    """Our side: the production step (compiled and warmed up on construction) and the separate phases."""

    def __init__(self, args, folder: str, tok, ids_np, mask_np):
        import jax
        import jax.numpy as jnp
        import ml_collections
        from flax import nnx

        from urlvr_jax.models.weights import load_model
        from urlvr_jax.rewards.answers import AnswerExtractor
        from urlvr_jax.rl.step import StepConfig, make_step
        from urlvr_jax.rollout.sampler import SamplingConfig
        from urlvr_jax.sharding import make_mesh
        from urlvr_jax.train import init_opt_state, make_optimizer

        self.args, self.tok = args, tok
        P, N, T = args.prompts, args.samples, args.new_tokens
        self.mesh = make_mesh({"fsdp": 1}, jax.devices()[:1])
        self.model = load_model(folder, mesh=self.mesh, dtype=jnp.float32)
        self.reference = load_model(folder, mesh=self.mesh, dtype=jnp.float32) if args.kl_coef else None
        self.extractor = AnswerExtractor.from_tokenizer(tok)
        self.cfg = StepConfig(num_samples=N, sampling=SamplingConfig(max_new_tokens=T, temperature=1.0),
                              reward="majority_vote", advantage="grpo", clip_low=0.2, clip_high=0.2, dual_clip=None,
                              aggregation="token-mean", kl_coef=args.kl_coef, kl_estimator="k3",
                              use_reference=bool(args.kl_coef), eos_ids=(), pad_id=tok.pad_token_id)
        self.tx = make_optimizer(ml_collections.ConfigDict({
            "rl": {"learning_rate": args.lr, "lr_schedule": "constant", "warmup_steps": 0, "grad_clip": 1.0,
                   "weight_decay": 0.0},
            "train": {"steps": args.warmup + args.repeats}}))
        self.graphdef, self.params0 = nnx.split(self.model)
        self.ref_graphdef, self.ref_params = (nnx.split(self.reference) if self.reference is not None
                                              else (self.graphdef, None))
        self.ids, self.mask = jnp.asarray(ids_np), jnp.asarray(mask_np)
        self.gold = jnp.full((P,), -1, jnp.int32)
        # the production step: one fused XLA program; params / opt_state are donated, so run it on copies
        self.step = make_step(self.graphdef, self.ref_graphdef, self.tx, self.cfg, self.extractor)
        self.params = jax.tree.map(jnp.copy, self.params0)
        self.opt = init_opt_state(self.tx, self.params, self.mesh)
        self.i = 0
        self.out = None
        self.first = _timed(self.full_step)  # compilation + one iteration
        for _ in range(args.warmup - 1):
            self.full_step()
        self.times: list[float] = []

    def full_step(self):
        import jax

        key = jax.random.fold_in(jax.random.key(self.args.seed), self.i)
        self.i += 1
        self.params, self.opt, self.out = self.step(self.params, self.opt, self.ref_params, self.ids, self.mask,
                                                    self.gold, key, self.extractor)
        return self.out

    def timed_step(self) -> float:
        t = _timed(self.full_step)
        self.times.append(t)
        return t

    def summary(self) -> dict:
        import jax

        out = jax.device_get(self.out)
        if int(np.asarray(out.rollout.lengths).min()) != self.args.new_tokens:
            raise RuntimeError("a response stopped early; the comparison would not be of equal work")
        return dict(iteration=statistics.median(self.times), iterations=list(self.times), first=self.first,
                    reward_mean=float(np.mean(out.rewards)), answered=float(np.mean(np.asarray(out.answer_ids) >= 0)),
                    loss=float(out.metrics["loss"]), prompt_width=int(self.ids.shape[1]))

    def phases(self) -> tuple[dict[str, float], float]:
        """Median time of each phase of the production step's phased form (`make_step(..., phased=True)`:
        the same phase functions, one jitted function each, a sync after each), timed alternately with
        the fused step."""
        import jax
        import jax.numpy as jnp

        from urlvr_jax.rl.step import make_step
        from urlvr_jax.train import init_opt_state

        phased = make_step(self.graphdef, self.ref_graphdef, self.tx, self.cfg, self.extractor, phased=True)
        st = {"params": jax.tree.map(jnp.copy, self.params0)}
        st["opt"] = init_opt_state(self.tx, st["params"], self.mesh)
        key = jax.random.key(self.args.seed + 1)

        def run_phased():
            st["params"], st["opt"], out = phased(st["params"], st["opt"], self.ref_params, self.ids, self.mask,
                                                  self.gold, key, self.extractor)
            return dict(phased.last_times)

        for _ in range(self.args.warmup):  # compile + warm up
            run_phased()
        times = collections.defaultdict(list)
        for _ in range(self.args.repeats):  # phased and fused alternately, under the same load
            for name, t in run_phased().items():
                times[name].append(t)
            times["fused"].append(_timed(self.full_step))
        fused = statistics.median(times.pop("fused"))
        return {k: statistics.median(v) for k, v in times.items()}, fused


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> float:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import jax
    import torch

    platform = jax.devices()[0].platform
    print(f"jax {jax.__version__} on {platform} ({jax.devices()[0].device_kind}); torch {torch.__version__} "
          f"(CPU, torch.get_num_threads()={torch.get_num_threads()}); {os.cpu_count()} CPU cores visible; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    P, N, T = args.prompts, args.samples, args.new_tokens
    with tempfile.TemporaryDirectory() as folder:
        tok, hf_model, n_params, prompts = build_world(args, folder)
        ids, mask = encode_prompts(tok, prompts)
        n_embed = len(tok) * args.hidden
        print(f"model: Llama d={args.hidden} L={args.layers} heads={args.heads}/{args.kv_heads} "
              f"mlp={args.intermediate} vocab={len(tok)} untied, float32, {n_params / 1e6:.2f}M parameters")
        print(f"work per iteration: {P} prompts (width {ids.shape[1]}) x {N} samples x {T} new tokens "
              f"(= {P * N * T} generated tokens), majority-vote reward, GRPO advantages, PPO-clip token-mean, "
              f"1 AdamW update{f', k3 KL coef {args.kl_coef}' if args.kl_coef else ', no KL / no reference'}; "
              f"warm-up {args.warmup} + median of {args.repeats} iterations per side")
        ours_side = Ours(args, folder, tok, ids, mask)  # compiled and warmed up
        del hf_model
        # TRL's timed steps and ours alternate: one of our iterations after each timed TRL step
        trl = run_trl(args, folder, tok, prompts, folder,
                      between=lambda i: ours_side.timed_step() if i >= args.warmup else None)
        ours = ours_side.summary()
        if not args.skip_phases:
            ours["phases"], ours["fused_in_phase_block"] = ours_side.phases()

    speedup = trl["iteration"] / ours["iteration"]
    print()
    print("| side | median s / iteration | all timed iterations s | first iteration s | generated tok/s |")
    print("|---|---|---|---|---|")
    for name, r in (("TRL GRPOTrainer (torch CPU)", trl), (f"urlvr-jax step ({platform})", ours)):
        its = ", ".join(f"{t:.3f}" for t in r["iterations"])
        print(f"| {name} | {r['iteration']:.3f} | {its} | {r['first']:.2f} | {P * N * T / r['iteration']:.0f} |")
    print(f"\nours: mean reward {ours['reward_mean']:.3f}, {100 * ours['answered']:.0f}% of responses boxed an "
          f"answer, loss {ours['loss']:.4f}")

    print("\nTRL per-phase (median over the timed iterations; from timers around its methods):")
    for k, v in trl["phases"].items():
        print(f"  {k:<45s} {v:8.3f} s  {100 * v / trl['iteration']:5.1f}%")
    if "phases" in ours:
        tot = sum(ours["phases"].values())
        print("\nours per-phase (the step's phased form: one jitted function per phase, a sync after each):")
        scoring = "scoring, policy" + (" + reference" if args.kl_coef else "")
        labels = {"rollout": "rollout", "scoring": scoring, "reward": "reward + advantages",
                  "update": "loss + grad + AdamW update"}
        for k, label in labels.items():
            if k in ours["phases"]:
                v = ours["phases"][k]
                print(f"  {label:<45s} {v:8.3f} s  {100 * v / tot:5.1f}% of the sum")
            else:  # no scoring pass: the old log-probs come from the loss forward
                print(f"  {label:<45s} {0.0:8.3f} s  (skipped: one update per rollout batch, no reference)")
        print(f"  {'sum of phases':<45s} {tot:8.3f} s  (fused step, timed alternately with the phases: "
              f"{ours['fused_in_phase_block']:.3f} s)")
        if platform == "gpu":
            tokens = P * N * (ours["prompt_width"] + T)
            t_up = ours["phases"]["update"]
            flops = 6 * (n_params - n_embed) * tokens
            print(f"update MFU: 6 x {(n_params - n_embed) / 1e6:.2f}M params x {tokens} tokens / {t_up * 1e3:.2f} ms "
                  f"= {flops / t_up / 1e12:.2f} TFLOP/s = {100 * flops / t_up / (args.peak_tflops * 1e12):.2f}% of "
                  f"{args.peak_tflops:.0f} TFLOP/s (float32 compute)")
    if platform == "gpu":
        print("note: TRL ran on torch's CPU build; the speedup compares devices, not code")
    print(f"speedup_vs_trl_grpo={speedup:.3f}")
    return speedup


if __name__ == "__main__":
    main()
