"""The training loop: exact resume after SIGKILL (metrics.jsonl and epochs.jsonl), per-phase times, SIGTERM,
2 processes = 1 process, the reward actually rises on a shipped ladder model, and external (host) rewards —
the Countdown checker and self-verification — train through the same loop."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from urlvr_jax.data.synthetic_tokenizer import build_synthetic_tokenizer

pytestmark = pytest.mark.slow  # trainer runs in subprocesses (minutes each)

HERE = Path(__file__).parent
TIMING_PREFIXES = ("time/", "throughput/")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_synth")
    tok = build_synthetic_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                                   bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # make '\boxed{', '}' and digits likely, so votes happen from step 1
        model.lm_head.weight[4] += 0.4
        model.lm_head.weight[tok.convert_tokens_to_ids("}")] += 0.3
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(overrides: dict, workdir: Path, cache: Path, kill_at: int | str | None = None,
        devices: int = 8) -> subprocess.CompletedProcess:
    cfg_file = workdir.parent / f"{workdir.name}.json"
    cfg_file.write_text(json.dumps(overrides))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, str(HERE / "train_runner.py"), str(cfg_file), str(workdir)]
    if kill_at is not None:
        cmd.append(str(kill_at))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def lines(workdir: Path, name: str = "metrics.jsonl") -> list[dict]:
    out = []
    for ln in (workdir / name).read_text().splitlines():
        rec = json.loads(ln)
        # NaN (e.g. a correlation over a constant group) compares equal to NaN here
        out.append({k: "nan" if v != v else v for k, v in rec.items() if not k.startswith(TIMING_PREFIXES)})
    return out


def test_exact_resume_after_sigkill(tiny_model, tmp_path):
    # 8 problems, 4 per step: an epoch ends every 2 steps (epochs.jsonl lines at steps 0, 2 and 4)
    overrides = {"model.path": str(tiny_model), "data.dataset": "synthetic/arithmetic", "data.synthetic_size": 64,
                 "data.limit": 8, "data.max_prompt_length": 32, "data.prompt_batch_size": 4,
                 "sampling.max_new_tokens": 12, "rl.num_samples": 4, "rl.reward": "token_entropy",
                 "rl.learning_rate": 3e-3, "train.steps": 5, "train.checkpoint_every": 2, "train.progress": False,
                 "train.kl_metrics": True, "train.eval_every": 2, "train.eval_dataset": "synthetic/arithmetic",
                 "train.eval_limit": 4, "train.eval_k": 2}
    cache = tmp_path / "jax_cache"
    full = run(overrides, tmp_path / "full", cache)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(overrides, tmp_path / "resumed", cache, kill_at=4)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    assert (tmp_path / "resumed" / "checkpoints").exists()
    resumed = run(overrides, tmp_path / "resumed", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 2" in resumed.stderr, resumed.stderr[-2000:]
    a, b = lines(tmp_path / "full"), lines(tmp_path / "resumed")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5]
    assert a == b
    # length collapse against the base model's first rollout (restored from the checkpoint on resume)
    assert abs(a[0]["collapse/length_ratio"] - 1) < 1e-6 and all(r["collapse/length_ratio"] > 0 for r in a)
    # log-only KL to the reference: zero while the policy is the reference (step 1), positive after updates
    kl = [r["kl_to_ref/k3_token_mean"] for r in a]
    assert abs(kl[0]) < 1e-9 and all(k > 0 for k in kl[1:]), kl
    # held-out evaluations: step 0 (base model) and every 2 steps, cut back and redone on resume like the rest
    va, vb = lines(tmp_path / "full", "evals.jsonl"), lines(tmp_path / "resumed", "evals.jsonl")
    assert [r["step"] for r in va] == [0, 2, 4] and va == vb
    assert all(len(r["problem/avg"]) == 4 for r in va) and va[1]["eval/avg"] == a[1]["eval/avg"]  # step 2's line
    ea, eb = lines(tmp_path / "full", "epochs.jsonl"), lines(tmp_path / "resumed", "epochs.jsonl")
    # the base model's probe (epoch -1, step 0), then one line per finished epoch
    assert [(r["epoch"], r["step"], r.get("steps")) for r in ea] == [(-1, 0, None), (0, 2, 2), (1, 4, 2)]
    assert ea == eb  # epoch 1's line was recomputed after the restart (probe, means over steps 3-4)
    assert [r["epoch"] for r in a] == [0, 0, 1, 1, 2]
    for e in ea:  # π* diagnostics from the probe, and the epoch's means of the step metrics
        assert all(k in e for k in ("pistar/accuracy", "pistar/kl_to_ref", "pistar/ess_frac",
                                    "probe/urlvr/proxy_reward_mean"))
        assert 0 < e["pistar/ess_frac"] <= 1
        steps = [r for r in a if r["epoch"] == e["epoch"]]
        if e["epoch"] >= 0:
            assert abs(e["mean/loss"] - sum(r["loss"] for r in steps) / len(steps)) < 1e-9
    # per-phase wall-clock times in every record; the step time is the sum of the device phases
    for rec in (json.loads(ln) for ln in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()):
        phases = [rec[f"time/{k}"] for k in ("rollout", "scoring", "reward", "update")]
        assert all(t > 0 for t in phases) and abs(rec["time/step"] - sum(phases)) < 1e-9
        assert all(rec[k] >= 0 for k in ("time/grading", "time/grading_wait", "time/idle", "time/data"))
        assert rec["throughput/tokens_per_s"] > 0
    # something was learned and logged, not a run of zeros
    assert any(r["grad_norm"] > 0 for r in a)
    # SIGTERM (preemption notice): the run checkpoints the current step and exits cleanly
    term = run(overrides, tmp_path / "term", cache, kill_at="term:3")
    assert term.returncode == 0, term.stderr[-3000:]
    summary = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["last_step"] == 4
    assert (tmp_path / "term" / "checkpoints" / "4").exists()
    assert lines(tmp_path / "term") == a[:4]
    assert lines(tmp_path / "term", "epochs.jsonl") == ea


def test_two_process_run_equals_single_process(tiny_model, tmp_path):
    """jax.distributed with 2 processes x 4 CPU devices on 127.0.0.1 = 1 process x 8 devices.

    (Regression: process 1 once raised at start-up by asking a non-addressable device for its memory
    stats, and process 0 then waited for it in a barrier until the shutdown deadline.)"""
    import socket

    overrides = {"model.path": str(tiny_model), "data.dataset": "synthetic/arithmetic", "data.synthetic_size": 64,
                 "data.max_prompt_length": 32, "data.prompt_batch_size": 8, "sampling.max_new_tokens": 8,
                 "rl.num_samples": 2, "rl.reward": "token_entropy", "rl.learning_rate": 3e-3, "train.steps": 2,
                 "train.checkpoint_every": 2, "train.progress": False, "train.pistar_diagnostics": False}
    # the single-process run uses the fused step (one XLA program), the 2-process run the phased one
    single = run(dict(overrides, **{"train.phase_timing": False}), tmp_path / "single", tmp_path / "cache1")
    assert single.returncode == 0, single.stderr[-3000:]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi = dict(overrides, **{"train.multihost": True, "train.coordinator_address": f"127.0.0.1:{port}",
                               "train.num_processes": 2})
    procs = []
    for pid in range(2):
        cfg_file = tmp_path / f"multi{pid}.json"
        cfg_file.write_text(json.dumps(dict(multi, **{"train.process_id": pid})))
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "train_runner.py"), str(cfg_file),
                                       str(tmp_path / "multi")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    a, b = lines(tmp_path / "single"), lines(tmp_path / "multi")
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("loss", "actor/pg_loss", "grad_norm", "urlvr/proxy_reward_mean", "response/length_mean"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * max(1.0, abs(ra[key])), (key, ra[key], rb[key])


def test_majority_vote_proxy_reward_rises_on_the_ladder_model(tmp_path):
    """A short majority-vote run on the shipped ladder/q0.1 base model: the same 16 prompts every step
    (data.limit = batch), 8 samples each, lr 3e-3. The majority-vote proxy reward (share of samples that
    agree with their group's majority) must rise: mean of steps 6-10 >= mean of steps 1-5 + 0.05.

    Margin chosen once from a pilot run (same settings, 20 steps): proxy 0.641, 0.805, 0.805, 0.836, 0.883 |
    0.875, 0.922, 0.953, 0.969, 0.969 (means 0.794 -> 0.938, +0.144); GT accuracy rose too (0.61 -> 0.85).
    """
    from urlvr_jax.models.paths import resolve_model_path

    overrides = {"model.path": resolve_model_path("ladder/q0.1"), "data.dataset": "synthetic/arithmetic",
                 "data.synthetic_size": 1024, "data.limit": 16, "data.prompt_batch_size": 16,
                 "data.max_prompt_length": 32, "data.template": "synthetic", "sampling.max_new_tokens": 32,
                 "rl.num_samples": 8, "rl.reward": "majority_vote", "rl.learning_rate": 3e-3, "rl.weight_decay": 0.0,
                 "train.steps": 10, "train.checkpoint_every": 100, "train.progress": False,
                 "train.pistar_diagnostics": False, "train.eval_every": 10,
                 "train.eval_dataset": "synthetic/arithmetic", "train.eval_limit": 16, "train.eval_k": 2}
    res = run(overrides, tmp_path / "rise", tmp_path / "cache", devices=1)
    assert res.returncode == 0, res.stderr[-3000:]
    proxy = [r["urlvr/proxy_reward_mean"] for r in lines(tmp_path / "rise")]
    assert len(proxy) == 10
    first, last = sum(proxy[:5]) / 5, sum(proxy[5:]) / 5
    assert last >= first + 0.05, f"proxy reward did not rise: {[round(p, 3) for p in proxy]}"
    # the periodic evaluation: its numbers ride on the step's record, its per-problem records on disk
    last_record = lines(tmp_path / "rise")[-1]
    evaluated = [json.loads(ln) for ln in (tmp_path / "rise" / "eval" / "step_000010" / "records.jsonl").open()]
    assert len(evaluated) == 16 and all(len(r["correct"]) == 2 for r in evaluated)
    avg = sum(sum(r["correct"]) for r in evaluated) / 32
    assert abs(last_record["eval/avg"] - avg) < 1e-9


def test_random_reward_control_ignores_the_responses(tiny_model, tmp_path):
    """rl.reward = 'random': rewards are Bernoulli(0.5) draws from the step's key. Two runs with the same
    seed and different learning rates sample different responses from step 2 on, yet get identical rewards
    at every step; the rewards are 0/1 and not constant. Also: the step-0 evaluation and report.json's
    held-out headline."""
    base = {"model.path": str(tiny_model), "data.dataset": "synthetic/arithmetic", "data.synthetic_size": 64,
            "data.max_prompt_length": 32, "data.prompt_batch_size": 4, "sampling.max_new_tokens": 12,
            "rl.num_samples": 4, "rl.reward": "random", "train.steps": 3, "train.checkpoint_every": 10,
            "train.progress": False, "train.log_rollouts": True, "train.pistar_diagnostics": False,
            "train.eval_every": 2, "train.eval_dataset": "synthetic/arithmetic", "train.eval_limit": 8,
            "train.eval_k": 2, "train.eval_temperature": 1.0, "train.eval_top_p": 1.0}
    cache = tmp_path / "jax_cache"
    for name, lr in (("slow", 1e-3), ("fast", 1e-1)):
        res = run({**base, "rl.learning_rate": lr}, tmp_path / name, cache, devices=1)
        assert res.returncode == 0, res.stderr[-3000:]
    ra, rb = lines(tmp_path / "slow", "rollouts.jsonl"), lines(tmp_path / "fast", "rollouts.jsonl")
    assert [r["step"] for r in ra] == [1, 2, 3]
    assert ra[0]["responses"] == rb[0]["responses"]  # same weights at step 1
    assert any(a["responses"] != b["responses"] for a, b in zip(ra[1:], rb[1:])), "responses never diverged"
    rewards = [r["rewards"] for r in ra]
    assert rewards == [r["rewards"] for r in rb]  # the responses differ, the rewards do not
    flat = [x for step in rewards for row in step for x in row]
    assert set(flat) == {0.0, 1.0} and rewards[0] != rewards[1]
    evals = lines(tmp_path / "slow", "evals.jsonl")
    assert [e["step"] for e in evals] == [0, 2] and evals[0]["eval_sampling/temperature"] == 1.0
    report = json.loads((tmp_path / "slow" / "report.json").read_text())
    assert report["heldout"]["start"]["mean"] == pytest.approx(evals[0]["eval/avg"])
    assert report["heldout"]["n_problems"] == 8


@pytest.fixture(scope="module")
def countdown_model(tmp_path_factory):
    """The shipped ladder/q0.1 weights with a Countdown recipe (2 numbers from 1..4, targets 2..8): an arithmetic
    model on easy Countdown problems, right now and then (its boxed number is sometimes a valid answer)."""
    import shutil

    from urlvr_jax.models.paths import resolve_model_path

    src, path = Path(resolve_model_path("ladder/q0.1")), tmp_path_factory.mktemp("countdown_model")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, path / name)
    (path / "base_model_recipe.json").write_text(json.dumps(
        {"family": "countdown", "task": {"n_numbers": 2, "max_number": 4, "target_range": [2, 8]}}))
    return path


def test_countdown_checker_trains_through_the_trainer_and_resumes_exactly(countdown_model, tmp_path):
    """rl.reward='countdown' (an external reward computed on the host from the decoded responses): the
    rewards the step trained on (rollouts.jsonl) equal the checker's rewards recomputed from the logged
    responses, the logged proxy reward is their mean, some are non-zero, and a run killed at step 4 and
    resumed repeats the uninterrupted one exactly (metrics and rollouts)."""
    from urlvr_jax.data.tasks import problems_for_model
    from urlvr_jax.rewards.registry import host_reward

    overrides = {"model.path": str(countdown_model), "data.dataset": "synthetic/countdown", "data.synthetic_size": 12,
                 "data.max_prompt_length": 24, "data.prompt_batch_size": 4, "sampling.max_new_tokens": 24,
                 "rl.num_samples": 4, "rl.reward": "countdown", "rl.learning_rate": 3e-3, "train.steps": 5,
                 "train.checkpoint_every": 2, "train.progress": False, "train.log_rollouts": True}
    cache = tmp_path / "jax_cache"
    full = run(overrides, tmp_path / "full", cache)
    assert full.returncode == 0, full.stderr[-3000:]
    problems = {p.id: p for p in problems_for_model(countdown_model, 12, 0, split="train")}
    metrics, rollouts = lines(tmp_path / "full"), lines(tmp_path / "full", "rollouts.jsonl")
    assert [r["step"] for r in rollouts] == [1, 2, 3, 4, 5]
    for rec, ro in zip(metrics, rollouts):
        batch = [problems[p["id"]] for p in ro["problems"]]
        assert [p.problem for p in batch] == [p["problem"] for p in ro["problems"]]
        assert ro["rewards"] == host_reward("countdown", ro["responses"], batch)
        flat = [r for group in ro["rewards"] for r in group]
        assert abs(rec["urlvr/proxy_reward_mean"] - sum(flat) / len(flat)) < 1e-6
        # the checker needs no labels, and on Countdown it is exact: reward = correctness
        assert abs(rec["urlvr/gt_reward_mean"] - rec["urlvr/proxy_reward_mean"]) < 1e-6
    assert sum(r for ro in rollouts for group in ro["rewards"] for r in group) > 0, "no reward at all: vacuous"
    killed = run(overrides, tmp_path / "resumed", cache, kill_at=4)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    resumed = run(overrides, tmp_path / "resumed", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stderr, resumed.stderr[-2000:]
    assert lines(tmp_path / "resumed") == metrics
    assert lines(tmp_path / "resumed", "rollouts.jsonl") == rollouts


def test_self_verification_trains_through_the_trainer(countdown_model, tmp_path):
    """rl.reward='self_verification': the policy judges its own responses through the sampler (a second
    generate call per step). The judged share (verify/asked_frac) equals the share of logged responses with a
    boxed expression short enough for the judge's prompt, rewards are verdict means in [0, 1], and the
    proxy reward in metrics.jsonl is the mean of the logged rewards."""
    from urlvr_jax.data.tasks import SYNTHETIC_VERIFY_MAX_EXPR_CHARS
    from urlvr_jax.rewards.grading import extract_boxed

    overrides = {"model.path": str(countdown_model), "data.dataset": "synthetic/countdown", "data.synthetic_size": 12,
                 "data.max_prompt_length": 24, "data.prompt_batch_size": 4, "sampling.max_new_tokens": 24,
                 "rl.num_samples": 4, "rl.reward": "self_verification", "rl.learning_rate": 3e-3, "train.steps": 2,
                 "train.checkpoint_every": 2, "train.progress": False, "train.log_rollouts": True,
                 "train.pistar_diagnostics": False, "verify.max_prompt_length": 64, "verify.max_new_tokens": 16,
                 "verify.num_verdicts": 2}
    res = run(overrides, tmp_path / "sv", tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-3000:]
    for rec, ro in zip(lines(tmp_path / "sv"), lines(tmp_path / "sv", "rollouts.jsonl")):
        texts = [t for group in ro["responses"] for t in group]
        judged = [(e := extract_boxed(t)) is not None and 0 < len(e.strip()) <= SYNTHETIC_VERIFY_MAX_EXPR_CHARS
                  for t in texts]
        assert abs(rec["verify/asked_frac"] - sum(judged) / len(judged)) < 1e-6
        flat = [r for group in ro["rewards"] for r in group]
        assert all(r in (0.0, 0.5, 1.0) for r in flat)  # the mean of 2 verdicts
        assert all(r == 0.0 for r, j in zip(flat, judged) if not j)  # not judged: the unparsed value
        assert abs(rec["urlvr/proxy_reward_mean"] - sum(flat) / len(flat)) < 1e-6
