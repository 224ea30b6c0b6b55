"""Supervised pretraining (SFT) of tiny base models whose prior is controlled, and the measurement of
that prior.

The paper's central claim is that intrinsic rewards sharpen the model's initial distribution, so
whether label-free RL helps or collapses depends on how well the base model's confidence agrees with
correctness. The synthetic world (`urlvr_jax.data.synthetic`) writes training traces where, per
problem type, a SYSTEMATIC wrong solution path is taken with probability q. A model trained on them
inherits that error process, so q is a knob on its confidence–correctness alignment:

    model = init_model(base_model_config("tiny"), seed=0)
    model, losses = train_sft(model, tok, [(prompt, completion), ...], steps=1500, batch_size=32,
                              lr=1e-2, seed=0, max_len=None)
    build_base_model(0.1, "ckpt/q0.1")          # data + training + save, one call (HF folder + tokenizer)
    problems = problems_for_model("ckpt/q0.1", 256, seed=1, split="eval")   # its task, held out
    measure_prior(model, tok, problems)         # accuracy, maj@N, pass@N, systematic rate, alignment

The default recipe (DEFAULT_* below) builds one model in about 2 CPU-minutes; the shipped ladder
(urlvr_jax/models/ladder, experiments/build_ladder.py) uses it with q in {0.1, 0.3, 0.45, 0.6, 0.8}.
Ladder v2 (V2_* below, `build_base_model_v2`, urlvr_jax/models/ladder_v2, `build_ladder.py --v2`) is the
redesigned world of issue #13: per-fact errors, answers 0..99, noise 0.1, longer traces with variants, the
real 101-id vocabulary and max_new_tokens 96 in the recipe.
`build_base_model` trains in two data phases within one run: first on traces drawn with q = 0 (the
arithmetic skill, identical for every q at a given seed), then, for the last third of the steps, on
traces drawn with q (the prior). The defaults (two-operation arithmetic up to 20, one systematic
rule `mul_as_add`, 30% unsystematic noise) came from measured failures of the first choices, noted
at the constants below.

Training: next-token cross-entropy on the completion tokens (and the <eos> that ends them) only; the
prompt is context, never a target. Sequences are right-padded to a fixed `max_len`, so the whole run
is one compiled program (the jitted step is cached per model structure and schedule). AdamW with linear
warmup and cosine decay, global-norm clipping at 1.0. Everything is a function of `seed` (data, init,
batch order), so a run is reproducible bit for bit on the same platform and software versions.

Measured prior (`prior_metrics`, the pure function behind `measure_prior`; P problems × N samples):
  accuracy           avg@N: mean of correct over all P·N responses.
  maj_accuracy       maj@N: the majority answer (most frequent canonical boxed answer, responses without
                     one do not vote, ties to the first seen) is correct; no answer at all scores 0.
  pass_at_n          share of problems with at least one correct response.
  systematic_rate    share of responses whose answer is the problem's systematic wrong answer
                     (`classify_answer`); other_rate / none_rate likewise ("other" wrong, no \\boxed{}).
  maj_systematic_rate  share of problems whose majority answer is the systematic one.
  majority_ratio     mean over problems of (votes of the majority answer) / N.
  confident_fraction share of problems whose majority is confident: majority_ratio >= 0.5.
  confident_majority_correct  among those problems, the share whose majority answer is correct — the
                     quantity majority-vote RL bets on (NaN if no problem has a confident majority).
  certainty          of a response: its mean token log-prob (1/T) Σ_t log p(y_t) over its T response
                     tokens, <eos> included, at the sampling temperature (trajectory certainty).
  certainty_pb       point-biserial correlation (= Pearson) between correctness (0/1) and certainty,
                     pooled over all P·N responses (NaN if either is constant).
  certainty_auroc    P(certainty of a random correct response > that of a random incorrect one),
                     ties counted 1/2, pooled (Mann–Whitney U / (n_correct·n_incorrect)).
  certainty_pb_within, certainty_auroc_within   the same computed inside each problem's group of N
                     and averaged over the problems whose group is mixed (0 < #correct < N) — the
                     within-group comparison that GRPO advantages make. n_mixed counts those problems.
"""
from __future__ import annotations

import functools
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Hashable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.math_datasets import MathProblem, last_boxed
from urlvr_jax.data.synthetic_tokenizer import VOCAB_SIZE, build_synthetic_tokenizer
from urlvr_jax.data.tasks import DEFAULT_TASKS, RECIPE_FILE, load_recipe, make_problems, problems_for_model  # noqa: F401 (re-exported)
from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.weights import init_model, save_model
from urlvr_jax.rollout.sampler import SamplingConfig, generate_ids
from urlvr_jax.sharding import shard_batch
from urlvr_jax.tokenizer import decode_responses, encode_prompts, eos_ids_of, pad_id_of

# Tiny Llama-architecture models (tied embeddings, GQA 4 heads / 2 kv heads). The vocabulary of the
# synthetic tokenizer (101 ids) is padded to 128 rows: ids 101..127 are never targets, so training
# drives their logits down, and a decoder drops them if one is ever sampled.
PADDED_VOCAB = 128
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2),  # 82k
    "small": dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2),
    "medium": dict(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2),
}
# The error process of the default base models: arithmetic with one systematic rule, taken with
# probability q (every a*b written as a+b: the wrong path uses only facts the model knows, so it
# reproduces it as reliably as the right one — sub_swap's path needs arithmetic on negative numbers,
# which a tiny model trained at small q never learned: in a first ladder the systematic answer
# appeared in 4% of samples at q = 0.3 and 25% at q = 0.8), and unsystematic noise on 30% of the other
# traces (a wrong digit somewhere, propagated honestly: answers that scatter). The noise keeps
# accuracy well below 1 while the correct answer stays the majority for small q, so majority voting
# has room to help; q alone moves the model from well- to badly-aligned confidence.
DEFAULT_FAMILY_PARAMS = {"arithmetic": {"rules": ("mul_as_add",), "noise": 0.3},
                         "countdown": {"rules": ("greedy",), "noise": 0.3}}
# The default recipe: what a tiny model learns in ~2 CPU-minutes. Measured (2 shared cores, 2–3
# operation task): a 128-wide 2-layer model at lr 6e-3 reached 27% accuracy after 1000 steps, the
# 64-wide one at lr 1e-2 73% after 1500 steps in less time (q = 0, no noise) — step count, not width,
# limits these runs.
DEFAULT_SIZE, DEFAULT_STEPS, DEFAULT_BATCH, DEFAULT_LR = "tiny", 1500, 32, 1e-2

# Ladder v2 (urlvr_jax/models/ladder_v2, experiments/build_ladder.py --v2): the redesigned world of issue #13.
# Three-operation problems whose multiplications are times-table facts (answers 0..99, 90% of problems with a
# multiplication), per-fact systematic errors (rule fact_error: each fact's own fixed wrong product, each fact
# wrong with probability q per trace), 10% unsystematic noise, the "restate" trace format (~43 tokens) and small
# SFT mass on the answer-only / restated / repeated variants; the vocabulary is the real one (101 ids) and the
# models are sampled with up to V2_MAX_NEW_TOKENS new tokens.
V2_TASK = {"steps": (3,), "ops": "+-*", "max_operand": 9, "max_value": 99, "table_facts": True, "mul_share": 0.9}
V2_VARIANTS = {"answer_only": 0.03, "restated": 0.10, "repeated": 0.02}
V2_NOISE = 0.1
V2_MAX_NEW_TOKENS = 96
V2_MAX_LEN = 96  # SFT row width: <bos> + prompt (<= 21 tokens) + completion + <eos>; traces are made to fit
# (synthetic.VARIANT_TOKEN_BUDGET), sampling gets V2_MAX_NEW_TOKENS, so a policy has room to grow longer


V2_SIZE, V2_STEPS, V2_PRIOR_STEPS, V2_LR = "tiny", 1800, 600, 1e-2
V2_QS = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)
V2_INFLATED = {"q": 0.5, "noise": 0.6}
# Ladder v3 (urlvr_jax/models/ladder_v3, build_ladder.py --v3): v2 plus the universal give-up answer
# (synthetic.GIVE_UP_ANSWER) on this share of every rung's prior-phase traces. Chosen on a pilot of rung q0.5
# alone (one majority-vote probe each, lr 3e-4, 8x8): 0.1 never reached the Model Collapse Step in 300 steps (the
# give-up answer was driven out), 0.2 reached it at step 72; the smaller share that collapses within the budget.
V3_GIVE_UP = 0.2  # the pass@k-inflated rung: pass@k high, prior bad (the Qwen2.5-Math analogue)


def v2_family_params(noise: float = V2_NOISE, give_up: float = 0.0) -> dict:
    """The ladder-v2 error process (family_params of make_sft_traces) with unsystematic noise `noise` and, for
    ladder v3, the universal give-up answer (variant "give_up") on a share `give_up` of the traces."""
    variants = dict(V2_VARIANTS, **({"give_up": float(give_up)} if give_up else {}))
    return {"arithmetic": {"rules": ("fact_error",), "noise": float(noise), "format": "restate",
                           "variants": variants}}


def base_model_config(size: str = DEFAULT_SIZE, vocab_size: int = PADDED_VOCAB) -> ModelConfig:
    """The ModelConfig of a synthetic base model of a named size (see SIZES). vocab_size: PADDED_VOCAB (v1
    ladder) or VOCAB_SIZE = 101 (ladder v2: no unused ids, so self-certainty averages over real ids only)."""
    if size not in SIZES:
        raise ValueError(f"base_model_config: unknown size {size!r}; sizes: {sorted(SIZES)}")
    if int(vocab_size) < VOCAB_SIZE:
        raise ValueError(f"base_model_config: vocab_size must be >= the synthetic vocabulary ({VOCAB_SIZE}), "
                         f"got {vocab_size}")
    s = SIZES[size]
    return ModelConfig(
        family="llama", vocab_size=int(vocab_size), hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"], num_layers=s["num_layers"], num_heads=s["num_heads"],
        num_kv_heads=s["num_kv_heads"], head_dim=s["hidden_size"] // s["num_heads"], rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=1, eos_token_ids=(2,), pad_token_id=0)


# ----------------------------------------------------------------------------------------------------
# Data: (prompt, completion) pairs -> right-padded ids and a completion-only loss mask
# ----------------------------------------------------------------------------------------------------
def encode_sft_examples(tokenizer, pairs: Sequence[tuple[str, str]], max_len: Optional[int] = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """ids [N, L] int32 (right-padded with the pad id) and loss_mask [N, L] int32.

    Row = <bos> prompt completion <eos>. loss_mask[i, t] = 1 where token t is a completion token or
    the final <eos> (a TARGET position: predicted from positions < t); prompt, <bos> and padding are 0.
    L = max_len, or (None) the longest row rounded up to a multiple of 8. An example longer than
    max_len is an error naming its index (truncating would train on a trace without its answer).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("encode_sft_examples: the tokenizer has no eos_token_id; completions must end with one")
    pad, eos = pad_id_of(tokenizer), int(tokenizer.eos_token_id)
    cache: dict[tuple[str, bool], list[int]] = {}  # traces repeat (same prompt, same correct path)

    def enc(text: str, special: bool) -> list[int]:
        k = (text, special)
        if k not in cache:
            cache[k] = list(tokenizer(text, add_special_tokens=special)["input_ids"])
        return cache[k]

    rows = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"encode_sft_examples: example {i} must be a (prompt, completion) pair of str, "
                             f"got {type(pair).__name__}")
        p, c = enc(pair[0], True), enc(pair[1], False)
        if not c:
            raise ValueError(f"encode_sft_examples: example {i} has an empty completion")
        if max_len is not None and len(p) + len(c) + 1 > max_len:
            raise ValueError(f"encode_sft_examples: example {i} has {len(p) + len(c) + 1} tokens (prompt {len(p)} + "
                             f"completion {len(c)} + <eos>) > max_len={max_len}; raise max_len")
        rows.append((p, c))
    if not rows:
        raise ValueError("encode_sft_examples: no examples")
    width = max_len if max_len is not None else _round_up(max(len(p) + len(c) + 1 for p, c in rows), 8)
    ids = np.full((len(rows), width), pad, np.int32)
    loss_mask = np.zeros((len(rows), width), np.int32)
    for i, (p, c) in enumerate(rows):
        n = len(p) + len(c) + 1
        ids[i, :n] = p + c + [eos]
        loss_mask[i, len(p):n] = 1
    return ids, loss_mask


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


# ----------------------------------------------------------------------------------------------------
# Loss (pure) and the training loop
# ----------------------------------------------------------------------------------------------------
def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token-mean cross-entropy over masked positions.

    logits [B, T, V] (any float dtype; reduced in float32), targets [B, T] int, mask [B, T] (1 = counts).
    Returns (loss, n_tokens): loss = Σ mask·(logsumexp(z) − z[target]) / max(Σ mask, 1).
    """
    z = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(z, axis=-1)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    m = mask.astype(jnp.float32)
    n = jnp.sum(m)
    return jnp.sum((lse - picked) * m) / jnp.maximum(n, 1.0), n


def sft_loss(model, ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Next-token loss of right-padded rows ids [B, T] on the positions loss_mask [B, T] marks as targets."""
    # No attention mask is needed: right padding comes after every target, and causal attention never
    # lets a real token read a later (padding) position.
    logits = model(ids[:, :-1])
    return masked_cross_entropy(logits, ids[:, 1:], loss_mask[:, 1:])[0]


def make_optimizer(lr: float, steps: int, warmup_frac: float = 0.05, weight_decay: float = 0.01,
                   final_frac: float = 0.1) -> optax.GradientTransformation:
    """AdamW, linear warmup over warmup_frac·steps, cosine decay to final_frac·lr; clip at norm 1."""
    warmup = max(1, int(round(warmup_frac * steps)))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=final_frac * lr)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=weight_decay))


@functools.lru_cache(maxsize=16)
def _compiled_step(graphdef, lr: float, steps: int, warmup_frac: float, weight_decay: float):
    """(optimizer, jitted update step) for one model structure and schedule; cached so that repeated runs
    with the same settings (tests, a ladder of models) compile once."""
    tx = make_optimizer(lr, steps, warmup_frac=warmup_frac, weight_decay=weight_decay)

    def step(p, o, b_ids, b_mask):
        loss, grads = jax.value_and_grad(lambda pp: sft_loss(nnx.merge(graphdef, pp), b_ids, b_mask))(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    return tx, jax.jit(step, donate_argnums=(0, 1))


def _batch_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """[steps, batch_size] example indices: concatenated per-epoch permutations (no example is skipped
    while another is repeated within an epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5F7]))
    need = steps * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
    return order.reshape(steps, batch_size)


def train_sft(model, tokenizer, texts_prompt_completion: Sequence[tuple[str, str]], steps: int, batch_size: int,
              lr: float, seed: int, max_len: Optional[int], *, warmup_frac: float = 0.05, weight_decay: float = 0.01,
              progress: bool = True) -> tuple[Any, np.ndarray]:
    """Train `model` (an NNX Transformer) on (prompt, completion) pairs; returns (trained model, losses [steps]).

    Loss: token-mean cross-entropy on completion tokens + <eos> (prompt masked). Batches of
    `batch_size` rows, right-padded to `max_len` (None: the longest example, rounded up to 8), drawn in
    per-epoch permutations fixed by `seed`. The input model is left untouched (its buffers are copied).
    """
    if not texts_prompt_completion:
        raise ValueError("train_sft: no training examples")
    ids, loss_mask = encode_sft_examples(tokenizer, texts_prompt_completion, max_len)
    return train_sft_arrays(model, ids, loss_mask, steps, batch_size, lr, seed, warmup_frac=warmup_frac,
                            weight_decay=weight_decay, progress=progress)


def train_sft_arrays(model, ids: np.ndarray, loss_mask: np.ndarray, steps: int, batch_size: int, lr: float,
                     seed: int, *, warmup_frac: float = 0.05, weight_decay: float = 0.01, progress: bool = True,
                     then: Optional[tuple[int, np.ndarray, np.ndarray]] = None, start: int = 0,
                     stop: Optional[int] = None, state: Optional[tuple] = None, return_state: bool = False):
    """train_sft on already encoded rows: ids, loss_mask [N, L] from encode_sft_examples.

    then = (from_step, ids2, loss_mask2): from step `from_step` on, the rows are read from ids2 /
    loss_mask2 (same [N, L]; row i is the same problem in both) — one run, one optimizer schedule and
    state, two data phases.
    start, stop, state, return_state: run only steps start..stop-1 of the `steps`-step run, from `state` =
    (params, opt_state) as returned after step start-1 (None: the model's parameters and a fresh optimizer;
    then start must be 0). With return_state the result is (model, losses, state). Running 0..k and then
    k..steps from the returned state is the same computation as one run (the schedule lives in opt_state,
    the batch order is fixed by seed): ladder v2 trains the shared skill phase once for every rung.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_sft: steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    ids, loss_mask = np.asarray(ids, np.int32), np.asarray(loss_mask, np.int32)
    if ids.ndim != 2 or ids.shape != loss_mask.shape or ids.shape[0] == 0:
        raise ValueError(f"train_sft: ids and loss_mask must be equal non-empty [N, L], "
                         f"got {ids.shape}, {loss_mask.shape}")
    switch, ids2, mask2 = (steps, ids, loss_mask) if then is None else then
    ids2, mask2 = np.asarray(ids2, np.int32), np.asarray(mask2, np.int32)
    if ids2.shape != ids.shape or mask2.shape != ids.shape:
        raise ValueError(f"train_sft: the second phase's ids/loss_mask {ids2.shape}/{mask2.shape} must have the "
                         f"first phase's shape {ids.shape}")
    stop = steps if stop is None else int(stop)
    if not 0 <= start < stop <= steps or (state is None and start != 0):
        raise ValueError(f"train_sft: need 0 <= start < stop <= steps (start 0 without a state), got start={start}, "
                         f"stop={stop}, steps={steps}, state {'given' if state is not None else 'None'}")
    rules = getattr(model, "rules", None)
    graphdef, params = nnx.split(model)
    tx, step = _compiled_step(graphdef, float(lr), int(steps), float(warmup_frac), float(weight_decay))
    if state is None:
        params = jax.tree.map(jnp.copy, params)  # the step donates its buffers; the caller's model stays valid
        opt_state = tx.init(params)
    else:
        params, opt_state = jax.tree.map(jnp.copy, state)  # the caller's state stays valid too
    order = _batch_order(len(ids), steps, batch_size, seed)
    losses = []
    bar = _progress(stop - start, "sft", progress)
    for s in range(start, stop):
        rows = order[s]
        x, m = (ids, loss_mask) if s < switch else (ids2, mask2)
        params, opt_state, loss = step(params, opt_state, shard_batch(x[rows], rules), shard_batch(m[rows], rules))
        losses.append(loss)
        if bar is not None:
            bar.update(1)
            if s % 20 == 0 or s == steps - 1:
                bar.set_postfix(loss=f"{float(loss):.4f}")
    if bar is not None:
        bar.close()
    losses = np.asarray(jax.device_get(losses), np.float32)
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise FloatingPointError(f"train_sft: loss became non-finite at step {start + bad}; lower lr (was {lr})")
    if return_state:
        return nnx.merge(graphdef, jax.tree.map(jnp.copy, params)), losses, (params, opt_state)
    return nnx.merge(graphdef, params), losses


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------------
# Building a base model
# ----------------------------------------------------------------------------------------------------
def build_base_model(q: float, out_dir, *, family: str = "arithmetic", size: str = DEFAULT_SIZE, seed: int = 0,
                     steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR,
                     prior_steps: Optional[int] = None, n_problems: Optional[int] = 4000,
                     samples_per_problem: int = 12, task: Optional[Mapping] = None,
                     family_params: Optional[Mapping] = None, mesh=None, progress: bool = True,
                     vocab_size: int = PADDED_VOCAB, max_new_tokens: Optional[int] = None,
                     max_len: Optional[int] = None, skill_cache: Optional[dict] = None,
                     extra_recipe: Optional[Mapping] = None,
                     skill_family_params: Optional[Mapping] = None) -> dict[str, Any]:
    """Generate train problems and SFT traces with systematic-error rate `q`, train a tiny Llama, save it.

    Two data phases in one run (one optimizer schedule): the first steps − prior_steps steps train on
    traces drawn with q = 0 (skill: correct and noisy paths only), the last prior_steps (default
    steps // 3) on the same problems' traces drawn with q. For a given seed the skill phase is identical
    for every q, so the rungs of a ladder differ in the error process they were shaped with, not in how
    well a chaotic short run happened to learn arithmetic (observed when all steps used the q traces).
    The two trace sets share every non-systematic draw (make_sft_traces: same seed).

    out_dir receives an HF folder (config.json, model.safetensors, tokenizer files) that loads with
    `load_model` / `load_tokenizer` and in transformers, plus RECIPE_FILE (the arguments, data counts,
    loss curve and timings). Data: n_problems distinct train problems of `task` (None:
    steps·batch_size / samples_per_problem), each with samples_per_problem independent traces
    (make_sft_traces with `family_params`, default DEFAULT_FAMILY_PARAMS); the defaults make 48000
    traces, each seen once by 1500 steps of 32. Returns the recipe, plus "model_object" (the trained model), "losses",
    "out_dir".

    Ladder v2 knobs (defaults: the v1 recipe): vocab_size (VOCAB_SIZE = 101: no unused ids); max_new_tokens, the
    sampling budget the model is made for, recorded in the recipe (every completion + <eos> must fit in it);
    max_len, a fixed row width (None: the longest row); skill_cache, a dict shared across calls: the skill
    phase's end state is stored under a key of everything that determines it (not q) and reused by later calls
    with the same key, bit-identical to recomputing it (needs a fixed max_len so the row width does not depend
    on q); extra_recipe, extra keys written into the recipe; skill_family_params, the error process of the skill
    phase's traces (None: family_params; drawn with q = 0 either way), e.g. the pass@k-inflated rung of ladder v2
    shares the other rungs' skill phase (noise 0.1) and gets its noise 0.6 in the prior phase only.
    """
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"build_base_model: q must be in [0, 1], got {q}")
    if family not in syn.FAMILIES:
        raise ValueError(f"build_base_model: unknown family {family!r}; families: {syn.FAMILIES}")
    fp = {family: dict(DEFAULT_FAMILY_PARAMS[family])} if family_params is None else dict(family_params)
    task = dict(DEFAULT_TASKS[family] if task is None else task)
    n_problems = int(n_problems or max(1, steps * batch_size // samples_per_problem))
    prior_steps = steps // 3 if prior_steps is None else int(prior_steps)
    if not 0 <= prior_steps <= steps:
        raise ValueError(f"build_base_model: prior_steps must be in [0, steps={steps}], got {prior_steps}")
    t0, c0 = time.perf_counter(), time.process_time()
    problems = make_problems(family, n_problems, seed, "train", task)
    sfp = fp if skill_family_params is None else dict(skill_family_params)
    skill = syn.make_sft_traces(problems, 0.0, sfp, seed=seed, samples_per_problem=samples_per_problem)
    traces = syn.make_sft_traces(problems, float(q), fp, seed=seed, samples_per_problem=samples_per_problem)
    tok = build_synthetic_tokenizer()
    pairs = [(t.prompt, t.completion) for t in skill.traces] + [(t.prompt, t.completion) for t in traces.traces]
    if max_new_tokens is not None:
        longest = max(len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for _, c in pairs)
        if longest > int(max_new_tokens):
            raise ValueError(f"build_base_model: a completion has {longest} tokens with <eos> > max_new_tokens="
                             f"{max_new_tokens}; the model would be trained on traces it cannot finish when sampled")
    both, both_mask = encode_sft_examples(tok, pairs, max_len)  # one width for both phases: one compiled step
    n = len(skill.traces)
    t_data, c_data = time.perf_counter() - t0, time.process_time() - c0
    cfg = base_model_config(size, vocab_size)
    model = init_model(cfg, seed=seed, mesh=mesh)
    t1, c1 = time.perf_counter(), time.process_time()
    switch = steps - prior_steps
    key = None
    if skill_cache is not None:
        if max_len is None:
            raise ValueError("build_base_model: skill_cache needs a fixed max_len (the row width must not depend on q)")
        key = repr((family, _jsonable(task), _jsonable(sfp), size, int(vocab_size), seed, steps, switch, batch_size,
                    float(lr), n_problems, samples_per_problem, int(max_len)))
    skill_seconds, reused = None, False
    if switch == 0 or prior_steps == 0 or key is None:
        model, losses = train_sft_arrays(model, both[:n], both_mask[:n], steps, batch_size, lr, seed,
                                         progress=progress, then=(switch, both[n:], both_mask[n:]))
    else:
        reused = key in skill_cache
        if not reused:
            ts = time.perf_counter()
            _, l1, st = train_sft_arrays(model, both[:n], both_mask[:n], steps, batch_size, lr, seed, progress=progress,
                                         stop=switch, return_state=True)
            skill_cache[key] = (l1, st, round(time.perf_counter() - ts, 2))
        l1, st, skill_seconds = skill_cache[key]
        model, l2 = train_sft_arrays(model, both[n:], both_mask[n:], steps, batch_size, lr, seed, progress=progress,
                                     start=switch, state=st)
        losses = np.concatenate([l1, l2])
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
    out_dir = Path(out_dir)
    save_model(model, out_dir, tokenizer=tok)
    recipe = {
        "q": float(q), "family": family, "task": _jsonable(task), "family_params": _jsonable(fp), "size": size,
        "num_params": cfg.num_params(), "seed": seed, "steps": steps, "prior_steps": prior_steps,
        "batch_size": batch_size, "lr": lr, "n_problems": n_problems, "samples_per_problem": samples_per_problem,
        "max_len": int(both.shape[1]), "path_counts_skill_phase": skill.path_counts(),
        "path_counts": traces.path_counts(),
        "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
        "losses_every10": [round(float(x), 5) for x in losses[::10]],
        "seconds_data": round(t_data, 2), "seconds_train": round(t_train, 2),
        "cpu_seconds_data": round(c_data, 2), "cpu_seconds_train": round(c_train, 2),
        "platform": jax.default_backend(), "n_devices": len(jax.devices()), "jax": jax.__version__,
    }
    if skill_family_params is not None:
        recipe["skill_family_params"] = _jsonable(sfp)
    if int(vocab_size) != PADDED_VOCAB:
        recipe["vocab_size"] = int(vocab_size)
    if max_new_tokens is not None:
        recipe["max_new_tokens"] = int(max_new_tokens)
    if key is not None:  # the skill phase came from (or went into) the shared cache: its time is not in this build
        recipe["skill_phase_seconds_shared"] = skill_seconds
        recipe["skill_phase_reused"] = reused
    if any(t.variant != "standard" for t in traces.traces):
        recipe["variant_counts"] = traces.variant_counts()
    recipe.update(dict(extra_recipe or {}))
    with open(out_dir / RECIPE_FILE, "w", encoding="utf-8") as f:
        json.dump(recipe, f, indent=2)
    return {**recipe, "model_object": model, "losses": losses, "out_dir": str(out_dir)}


def build_base_model_v2(q: float, out_dir, *, noise: float = V2_NOISE, give_up: float = 0.0, seed: int = 0,
                        skill_cache: Optional[dict] = None, progress: bool = True, **overrides) -> dict[str, Any]:
    """One rung of ladder v2 (the V2_* recipe): build_base_model with the v2 task, error process (per-fact
    errors with probability q, unsystematic `noise` in the prior phase; the skill phase always uses V2_NOISE),
    the real vocabulary (VOCAB_SIZE ids), rows of V2_MAX_LEN and max_new_tokens = V2_MAX_NEW_TOKENS in the recipe.
    give_up > 0 makes a ladder-v3 rung: the prior phase's traces are the universal give-up answer
    (synthetic.GIVE_UP_ANSWER) with that probability; the skill phase is v2's, so it is shared with v2 rungs.
    `overrides` replace recipe arguments (steps, size, lr, ...)."""
    if not 0.0 <= float(give_up) < 1.0:
        raise ValueError(f"build_base_model_v2: give_up must be in [0, 1), got {give_up}")
    world = {"world": "ladder_v3", "give_up": float(give_up)} if give_up else {"world": "ladder_v2"}
    kw = dict(size=V2_SIZE, steps=V2_STEPS, prior_steps=V2_PRIOR_STEPS, lr=V2_LR, n_problems=4000,
              samples_per_problem=12, task=V2_TASK, family_params=v2_family_params(noise, give_up),
              skill_family_params=v2_family_params(V2_NOISE), vocab_size=VOCAB_SIZE,
              max_new_tokens=V2_MAX_NEW_TOKENS, max_len=V2_MAX_LEN,
              extra_recipe={**world, "noise": float(noise)})
    kw.update(overrides)
    return build_base_model(q, out_dir, seed=seed, skill_cache=skill_cache, progress=progress, **kw)


def _jsonable(x):
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------------
# Measuring the prior
# ----------------------------------------------------------------------------------------------------
_INT_RE = re.compile(r"^\s*([+-]?\d{1,12})\s*$")


def canonical_answer(response: Optional[str]) -> Optional[Hashable]:
    """Vote key of a response: the last \\boxed{} content as an int if it is one, else with whitespace
    removed; None (no vote) without a closed, non-blank \\boxed{}."""
    content = last_boxed(response) if response else None
    if content is None or not content.strip():
        return None
    m = _INT_RE.match(content)
    return int(m.group(1)) if m else "".join(content.split())


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    return float(np.sum(dx * dy) / den) if den > 0 else float("nan")


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + P(pos == neg)/2 over all pairs (NaN if either side is empty)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    # Mann–Whitney via midranks: O(n log n), exact with ties.
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size, np.float64)
    sorted_v = allv[order]
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def prior_metrics(labels: Sequence[Sequence[str]], answers: Sequence[Sequence[Optional[Hashable]]],
                  certainty, confident_threshold: float = 0.5) -> dict[str, float]:
    """The prior's metrics (module docstring) from P problems × N responses.

    labels [P][N]: "correct" | "systematic" | "other" | "none" (classify_answer); answers [P][N]: vote
    keys (None = no answer, no vote); certainty [P, N] float (mean token log-prob of each response).
    """
    lab = np.asarray(labels, dtype=object)
    cert = np.asarray(certainty, np.float64)
    if lab.ndim != 2 or cert.shape != lab.shape or len(answers) != lab.shape[0] or \
            any(len(a) != lab.shape[1] for a in answers):
        raise ValueError(f"prior_metrics: labels, answers and certainty must all be [P, N]; got labels "
                         f"{lab.shape}, certainty {cert.shape}, answers {len(answers)} rows")
    unknown = set(lab.ravel()) - {"correct", "systematic", "other", "none"}
    if unknown:
        raise ValueError(f"prior_metrics: unknown labels {sorted(map(str, unknown))}")
    P, N = lab.shape
    correct = lab == "correct"
    maj_correct = np.zeros(P, bool)
    maj_systematic = np.zeros(P, bool)
    maj_ratio = np.zeros(P, np.float64)
    for p in range(P):
        counts: dict = {}
        first: dict = {}
        for i, a in enumerate(answers[p]):
            if a is None:
                continue
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
        if not counts:
            continue
        best = max(counts.values())
        winner = min((a for a, c in counts.items() if c == best), key=first.__getitem__)
        i = first[winner]
        maj_correct[p] = correct[p, i]
        maj_systematic[p] = lab[p, i] == "systematic"
        maj_ratio[p] = best / N
    confident = maj_ratio >= confident_threshold
    within_pb, within_auc = [], []
    for p in range(P):
        c = int(correct[p].sum())
        if 0 < c < N:
            within_pb.append(_pearson(correct[p], cert[p]))
            within_auc.append(_auroc(cert[p][correct[p]], cert[p][~correct[p]]))
    return {
        "n_problems": P, "n_samples": N,
        "accuracy": float(correct.mean()),
        "maj_accuracy": float(maj_correct.mean()),
        "pass_at_n": float(correct.any(axis=1).mean()),
        "systematic_rate": float(np.mean(lab == "systematic")),
        "other_rate": float(np.mean(lab == "other")),
        "none_rate": float(np.mean(lab == "none")),
        "maj_systematic_rate": float(maj_systematic.mean()),
        "majority_ratio": float(maj_ratio.mean()),
        "confident_fraction": float(confident.mean()),
        "confident_majority_correct": float(maj_correct[confident].mean()) if confident.any() else float("nan"),
        "mean_certainty": float(cert.mean()),
        "certainty_pb": _pearson(correct.ravel(), cert.ravel()),
        "certainty_auroc": _auroc(cert[correct], cert[~correct]),
        "certainty_pb_within": _nanmean(within_pb),
        "certainty_auroc_within": _nanmean(within_auc),
        "n_mixed": len(within_pb),
    }


def response_shape(text: str) -> str:
    """The trace variant a sampled response looks like (synthetic.TRACE_KINDS, plus "other"):
    "give_up" exactly the universal give-up answer (synthetic.GIVE_UP_ANSWER boxed; an answer-only response whose
    answer is that number reads as give_up too); "answer_only" nothing but one \\boxed{...}; "repeated" some
    non-blank line equals the line before it;
    "restated" a line starting "check: "; "standard" anything else that ends in a \\boxed{} line; "other"
    the rest (no final \\boxed{} line). Checked in this order."""
    stripped = text.strip()
    lines = stripped.split("\n")
    if stripped == f"\\boxed{{{syn.GIVE_UP_ANSWER}}}":
        return "give_up"
    if len(lines) == 1 and stripped.startswith("\\boxed{") and stripped.endswith("}"):
        return "answer_only"
    if any(a.strip() and a == b for a, b in zip(lines, lines[1:])):
        return "repeated"
    if any(line.startswith("check: ") for line in lines):
        return "restated"
    return "standard" if lines[-1].startswith("\\boxed{") else "other"


def shape_metrics(texts: Sequence[Sequence[str]], lengths) -> dict[str, float]:
    """Shares of response shapes (response_shape) over all P·N responses, and their mean length in tokens
    (lengths [P, N]: response tokens, <eos> included)."""
    shapes = [response_shape(t) for row in texts for t in row]
    out = {f"{k}_rate": float(np.mean([x == k for x in shapes])) for k in syn.TRACE_KINDS + ("other",)}
    out["mean_length"] = float(np.mean(lengths))
    return out


def sample_responses(model, tokenizer, problems: Sequence[MathProblem], n_samples: int = 16,
                     temperature: float = 1.0, *, seed: int = 0, batch_size: int = 32, max_new_tokens: int = 64,
                     progress: bool = False, return_lengths: bool = False, greedy: bool = False):
    """N sampled responses per problem (prompt synthetic_prompt): texts [P][N], certainty [P, N] (mean
    token log-prob, <eos> included), truncated [P, N] bool, and with return_lengths lengths [P, N] (response
    tokens, <eos> included). One compiled shape (tail batch padded). greedy: argmax decoding (temperature
    is then only the temperature the log-probs are reported at)."""
    rules = getattr(model, "rules", None)
    eos, pad = eos_ids_of(tokenizer, model.cfg), pad_id_of(tokenizer)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, greedy=greedy)
    key = jax.random.key(seed)
    texts: list[list[str]] = []
    cert, trunc, lens = [], [], []
    bar = _progress(len(problems), "measure", progress)
    for start in range(0, len(problems), batch_size):
        batch = list(problems[start:start + batch_size])
        filled = batch + [batch[-1]] * (batch_size - len(batch))
        ids, mask = encode_prompts(tokenizer, [syn.synthetic_prompt(p) for p in filled])
        out = generate_ids(model, shard_batch(ids, rules), shard_batch(mask, rules), jax.random.fold_in(key, start),
                           sampling, num_samples=n_samples, eos_ids=eos, pad_id=pad)
        tokens, rmask, logprob, truncated = jax.device_get((out.tokens, out.mask, out.stats.logprob, out.truncated))
        rmask = np.asarray(rmask)
        c = np.asarray(logprob, np.float64).sum(axis=1) / np.maximum(rmask.sum(axis=1), 1)
        dec = decode_responses(tokenizer, tokens, rmask)
        for i in range(len(batch)):
            sl = slice(i * n_samples, (i + 1) * n_samples)
            texts.append(dec[sl])
            cert.append(c[sl])
            trunc.append(np.asarray(truncated)[sl])
            lens.append(rmask.sum(axis=1)[sl])
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if return_lengths:
        return texts, np.asarray(cert), np.asarray(trunc), np.asarray(lens)
    return texts, np.asarray(cert), np.asarray(trunc)


def measure_prior(model, tokenizer, problems: Sequence[MathProblem], n_samples: int = 16, temperature: float = 1.0,
                  *, family_params: Optional[Mapping] = None, seed: int = 0, batch_size: int = 32,
                  max_new_tokens: int = 64, progress: bool = False) -> dict[str, Any]:
    """Sample n_samples responses per (held-out) problem and measure the prior (module docstring).

    family_params: the error process the model was trained with (default DEFAULT_FAMILY_PARAMS), which
    fixes each problem's systematic wrong answer. Returns prior_metrics over all problems, the same
    restricted to problems that have a systematic path under "on_error_problems", truncation_rate, and
    "shapes" (shape_metrics: shares of answer-only / restated / repeated responses, mean length in tokens).
    """
    if not problems:
        raise ValueError("measure_prior: no problems")
    fp = DEFAULT_FAMILY_PARAMS if family_params is None else family_params
    texts, cert, trunc, lens = sample_responses(model, tokenizer, problems, n_samples, temperature, seed=seed,
                                                batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                progress=progress, return_lengths=True)
    profiles = [syn.error_profile(p, fp) for p in problems]
    labels = [[syn.classify_answer(p, t, prof) for t in row] for p, row, prof in zip(problems, texts, profiles)]
    answers = [[canonical_answer(t) for t in row] for row in texts]
    out: dict[str, Any] = prior_metrics(labels, answers, cert)
    err = [i for i, prof in enumerate(profiles) if prof.error_type is not None]
    out["error_problem_fraction"] = len(err) / len(problems)
    if err:
        out["on_error_problems"] = prior_metrics([labels[i] for i in err], [answers[i] for i in err], cert[err])
    out["truncation_rate"] = float(np.mean(trunc))
    out["shapes"] = shape_metrics(texts, lens)
    out["max_new_tokens"] = int(max_new_tokens)
    out["temperature"] = float(temperature)
    out["seed"] = int(seed)
    return out
