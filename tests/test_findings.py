"""experiments/findings.py: the statistics against scipy / direct computations, and each experiment's
analysis and decision rule on constructed inputs whose verdict is known (the training runs themselves are
exercised by four_arms' smoke test and the trainer's tests)."""
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, rankdata, spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import findings as F  # noqa: E402


def test_exact_binomial_ci_matches_scipy():
    for k, n in [(0, 25), (3, 25), (7, 25), (25, 25), (12, 40)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert F.exact_binomial_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_spearman_exact_matches_scipy_and_enumerates_permutations():
    rng = np.random.default_rng(0)
    for _ in range(2):
        x, y = rng.normal(size=7), rng.normal(size=7)
        rho, p = F.spearman_exact(x, y)
        assert rho == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
        rx, ry = rankdata(x), rankdata(y)
        brute = np.mean([abs(np.corrcoef(rx, perm)[0, 1]) >= abs(rho) - 1e-12 for perm in itertools.permutations(ry)])
        assert p == pytest.approx(brute)
    # a perfect ranking of 7: only the identity and the reversal are as extreme -> p = 2/5040
    rho, p = F.spearman_exact(range(7), range(7))
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 5040)
    # the issue's threshold: rho >= 0.786 (the tables' rounding of 0.7857) at n = 7 gives p <= 0.048
    x = np.arange(7)
    y = np.array([2, 1, 0, 4, 3, 6, 5])  # sum of squared rank differences 12
    rho, p = F.spearman_exact(x, y)
    assert rho == pytest.approx(F.RHO_CRIT) and round(rho, 3) == 0.786 and p == pytest.approx(0.048, abs=5e-4)
    _, p_next = F.spearman_exact(x, [3, 1, 0, 4, 2, 6, 5])  # rho 0.643: not significant
    assert p_next > 0.05


def test_sustained_below_and_best_constant_answer():
    assert F.sustained_below([0.5, 0.01, 0.01, 0.5, 0.01, 0.01, 0.01], 0.05, 3) == 5
    assert F.sustained_below([0.01, 0.01], 0.05, 3) is None
    assert F.sustained_below([0.01] * 5, 0.05, 5) == 1
    f0 = F.best_constant_accuracy("ladder_v2/q0.05", size=512)
    assert 0 < f0 < 0.2  # answers 0..99: no answer is common


def _e6_problem(p0, pend, right, greedy0, greedy1, probe=64, steps=(0, 50, 100)):
    ps = np.linspace(p0, pend, len(steps))
    return {"seed": 0, "id": "x", "problem": "1+1", "answer": "2", "initial_majority": 2 if right else 3,
            "majority_right": right, "steps": list(steps),
            "probes": [{"p_m": float(p), "greedy_correct": g, "greedy_answer": 2, "acc": 0.5,
                        "majority": 2 if right else 3}
                       for p, g in zip(ps, [greedy0] * (len(steps) - 1) + [greedy1])]}


def test_e6_rules_on_constructed_problems():
    p = dict(F.E6, probe=64)
    sharpening = [_e6_problem(0.5, 0.9, i % 2 == 0, True, True) for i in range(24)] + \
        [_e6_problem(0.5, 0.9, False, True, False)]
    r = F.analyse_e6(sharpening, p)
    assert r["gate_moved"] and r["flips"] == 1 and r["T1a"] and r["T1b"] and r["verdict"] == "reproduced"
    assert all(g["positive"] for g in r["groups"].values())
    still = [_e6_problem(0.5, 0.52, i % 2 == 0, True, True) for i in range(25)]
    assert F.analyse_e6(still, p)["verdict"].startswith("untestable")
    flipping = [_e6_problem(0.5, 0.9, i % 2 == 0, True, i % 3 != 0) for i in range(25)]  # 9 flips
    r = F.analyse_e6(flipping, p)
    assert r["flips"] == 9 and not r["T1a"] and r["verdict"] == "not reproduced"


def test_e3_collapse_counts_and_kl_ratio():
    p = dict(F.E3, boot=300)
    P = 50
    start = np.full((3, 1, P), 0.5)
    keep, drop = np.full((3, 1, P), 0.52), np.full((3, 1, P), 0.2)
    accs = {32: np.concatenate([start, keep], 1), 128: np.concatenate([start, keep], 1),
            512: np.concatenate([start, drop], 1), 2048: np.concatenate([start, drop], 1)}
    kl = {32: np.array([0.01, 0.012, 0.011]), 128: np.array([0.015] * 3), 512: np.array([0.02, 0.024, 0.022]),
          2048: np.array([0.03] * 3)}
    ra = {k: np.full(3, 0.6) for k in accs}
    r = F.analyse_e3(p, accs, kl, ra)
    assert r["verdict"] == "reproduced" and r["kl_ratio"] == pytest.approx(2.0) and r["fisher_p"] < 0.01
    r = F.analyse_e3(p, {k: np.concatenate([start, keep], 1) for k in accs}, kl, ra)
    assert r["verdict"].startswith("KL part reproduced") and r["kl_ratio_ci95"][0] > 1
    r = F.analyse_e3(p, {k: np.concatenate([start, keep], 1) for k in accs}, {k: kl[32] for k in kl}, ra)
    assert not r["verdict"].startswith("KL part reproduced")


def test_e4_rules_on_constructed_arms():
    p = dict(F.E4, boot=300)
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.6, size=(1, 1, 256)).repeat(3, 0)
    ttt_end = base.copy()
    ttt_end[..., :40] += 0.15
    accs = {"ttt": np.concatenate([base, ttt_end], 1), "control": np.concatenate([base, base + 0.01], 1)}
    r = F.analyse_e4(p, accs, [0, 100])
    assert r["E_improves"] and r["T_not_hurt"] and r["beats_control"] and r["verdict"] == "reproduced"
    hurt = ttt_end.copy()
    hurt[..., 40:] -= 0.1
    r = F.analyse_e4(p, {"ttt": np.concatenate([base, hurt], 1), "control": accs["control"]}, [0, 100])
    assert not r["T_not_hurt"] and r["verdict"] == "not reproduced"


def test_e4b_trains_on_the_first_128_held_out_problems_32_per_step_with_fixed_evaluation_draws():
    from urlvr_jax.data.tasks import RECIPE_EVAL_SEED

    ttt, control = F.e4_config(F.E4B, "ttt", 0), F.e4_config(F.E4B, "control", 0)
    assert (ttt.data.split, ttt.data.synthetic_seed, ttt.data.synthetic_size) == ("eval", RECIPE_EVAL_SEED, 128)
    assert (control.data.split, control.data.synthetic_size) == ("train", 128)
    assert ttt.data.prompt_batch_size == 32 and ttt.train.eval_seed == 0 and ttt.train.eval_limit == 256
    assert F.e4_config(F.E4, "ttt", 0).train.eval_seed == -1  # E4 as it ran: the step seeds each evaluation
    # E4's rule on E4b's split: the first 128 of 256 are E
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 0.6, size=(1, 1, 256)).repeat(3, 0)
    end = base.copy()
    end[..., :128] += 0.05
    flat = np.concatenate([base, base], 1)
    r = F.analyse_e4(dict(F.E4B, boot=300), {"ttt": np.concatenate([base, end], 1), "control": flat,
                                            "random": flat}, [0, 120])
    assert r["verdict"] == "reproduced" and r["stats"]["ttt/E"]["mean"] == pytest.approx(0.05)


def _records(n_steps=120, **curves):
    return [{"step": k + 1, **{key: v for key, v in curves.items()}} for k in range(n_steps)]


def _arm(start, curve, P=64, S=3):
    """accs [S, E, P]: every problem's accuracy follows start + curve (E evaluations)."""
    return np.broadcast_to(start + np.asarray(curve, float)[None, :, None], (S, len(curve), P)).copy()


def test_e5_gate_and_rules_on_constructed_arms():
    prior = {"verifier_true_given_correct": 0.95, "verifier_false_given_wrong": 0.92, "solve_avg": 0.2}
    assert F.e5_gate(prior, F.E5)
    assert not F.e5_gate(dict(prior, verifier_false_given_wrong=0.88), F.E5)
    assert not F.e5_gate(dict(prior, solve_avg=0.05), F.E5)
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.01, size=(3, 7, 64))  # noqa: E731
    up, flat, rise_fall = [0, .04, .08, .1, .12, .12, .12], [0] * 7, [0, .06, .1, .1, .04, 0, -.02]
    recs = {k: [_records(**{"urlvr/reward_accuracy": 0.9, "response/length_mean": 20.0,
                           "kl_to_ref/k1_token_mean": 0.01})] * 3
            for k in ("countdown", "self_verification", "frozen_verification", "trajectory_entropy", F.RANDOM_NAME)}
    steps = list(range(0, 121, 20))
    p = dict(F.E5, boot=200)

    def verdict(sv, te, rnd=flat, checker=up):
        accs = {"countdown": _arm(0.2, checker) + noise(), "self_verification": _arm(0.2, sv) + noise(),
                "frozen_verification": _arm(0.2, up) + noise(), "trajectory_entropy": _arm(0.2, te) + noise(),
                F.RANDOM_NAME: _arm(0.2, rnd) + noise()}
        return F.analyse_e5(p, accs, recs, steps)["verdict"]

    assert verdict(up, rise_fall) == "reproduced"
    assert verdict(up, up).startswith("self-verification part reproduced")
    assert verdict(rise_fall, rise_fall).startswith("not reproduced (self-verification falls")
    assert verdict(flat, rise_fall).startswith("not reproduced (self-verification does not rise")
    assert verdict(up, rise_fall, checker=flat).startswith("untestable at this budget")
    assert verdict(up, rise_fall, rnd=[0, -.05, -.1, -.12, -.15, -.15, -.15]).startswith("untestable (the lr drifts")


def test_e5c_rules_token_entropy_beside_trajectory_entropy_against_a_drifting_control():
    rng = np.random.default_rng(1)
    noise = lambda: rng.normal(0, 0.01, size=(3, 7, 64))  # noqa: E731
    up, rise_fall = [0, .04, .08, .1, .12, .12, .12], [0, .06, .1, .1, .04, 0, -.02]
    drift, falls = [0, -.01, -.02, -.03, -.04, -.05, -.05], [0, 0, -.02, -.06, -.12, -.16, -.18]
    arms = ("countdown", "self_verification", "token_entropy", "trajectory_entropy", F.RANDOM_NAME)
    recs = {k: [_records(**{"urlvr/reward_accuracy": 0.9, "response/length_mean": 20.0,
                           "kl_to_ref/k1_token_mean": 0.01})] * 3 for k in arms}
    p = dict(F.E5C, boot=200)

    def analyse(tok, traj, sv=up, rnd=drift):
        curves = dict(zip(arms, (up, sv, tok, traj, rnd)))
        return F.analyse_e5(p, {k: _arm(0.2, c) + noise() for k, c in curves.items()}, recs,
                            list(range(0, 301, 50)))

    r = analyse(falls, up)  # the random arm drifts 0.05: no gate, the falls are measured against it
    assert not r["drift"] and r["intrinsic_falls"] == {"trajectory_entropy": False, "token_entropy": True}
    assert r["verdict"].startswith("reproduced with token entropy") and "600 steps" in r["verdict"]
    c = r["contrast"]["token_entropy"]
    final_windows = 0.12 + (0.12 + 0.16 + 0.18) / 3
    assert c["mean"] == pytest.approx(final_windows, abs=0.01) and c["ci95"][0] > 0.25
    assert abs(r["contrast"]["trajectory_entropy"]["mean"]) < 0.02
    assert "token entropy change -0.15" in r["statistic"] and "self-verification − it" in r["statistic"]
    assert analyse(falls, rise_fall)["verdict"] == "reproduced"
    assert analyse(up, up)["verdict"].startswith("self-verification part reproduced; no intrinsic reward falls")
    assert analyse(drift, drift)["verdict"].startswith("self-verification part reproduced")  # falls no more than random
    assert analyse(falls, falls, sv=falls)["verdict"].startswith("not reproduced (self-verification does not rise")
    md = F.markdown_e5({**r, "params": p, "prior": {}, "gate": True, "attempts": []}, 1.0)
    assert md.startswith("# E5c") and "F5c' (token entropy falls): True" in md
    assert "| self_verification − token_entropy |" in md


def test_e6_random_control_can_only_demote():
    p = dict(F.E6, probe=64)
    problems = [_e6_problem(0.5, 0.9, i % 2 == 0, True, True) for i in range(25)]
    for q in problems:
        q["control_end"] = dict(q["probes"][-1], p_m=0.5)  # the random reward leaves p where it was
    r = F.analyse_e6(problems, p)
    assert r["control"]["diff"] == pytest.approx(0.4) and r["verdict"] == "reproduced"
    for q in problems:
        q["control_end"] = dict(q["probes"][-1], p_m=0.9)  # it moves p as much: the move is drift
    r = F.analyse_e6(problems, p)
    assert r["control"]["ci95"][0] <= 0 and r["verdict"].startswith("untestable")


def test_e1b_rules_on_constructed_arms():
    rng = np.random.default_rng(1)
    steps = list(range(0, 1001, 100))
    up = [0, .03, .06, .08, .09, .1, .1, .1, .1, .1, .1]
    rise_fall = [0, .04, .08, .1, .1, .08, .04, 0, -.04, -.08, -.1]
    recs = {k: [_records(1000, **{"kl_to_ref/k1_token_mean": 0.01, "urlvr/reward_accuracy": 0.8,
                                  "response/length_mean": 40.0, "collapse/repetition_mean": 0.1})] * 3
            for k in ("majority_vote", "trajectory_entropy", F.RANDOM_NAME)}
    fa = dict(F.four_arms_params(False), steps=1000, boot=200)

    def run(mv, te):
        accs = {"majority_vote": _arm(0.5, mv, 256) + rng.normal(0, .01, (3, 11, 256)),
                "trajectory_entropy": _arm(0.5, te, 256) + rng.normal(0, .01, (3, 11, 256)),
                F.RANDOM_NAME: _arm(0.5, [0] * 11, 256) + rng.normal(0, .01, (3, 11, 256))}
        return F.analyse_e1b(F.E1B, fa, accs, recs, steps)

    assert run(rise_fall, rise_fall)["verdict"] == "reproduced (rise and fall)"
    assert run(up, up)["verdict"] == "rise reproduced, fall not reproduced at 1000 steps"
    r = run(rise_fall, up)
    assert r["verdict"].startswith("partly") and r["rows"]["majority_vote"]["verdict"] == "rises then falls"


def test_random_controls_veto_e3_and_e4():
    P = 50
    start, drop = np.full((3, 1, P), 0.5), np.full((3, 1, P), 0.2)
    accs = {sz: np.concatenate([start, np.full((3, 1, P), 0.52) if sz <= 128 else drop], 1)
            for sz in (32, 128, 512, 2048)}
    kl = {sz: np.full(3, 0.01 * (1 + (sz >= 512))) for sz in accs}
    ra = {sz: np.full(3, 0.6) for sz in accs}
    p = dict(F.E3, boot=200)
    assert F.analyse_e3(p, accs, kl, ra, {"acc": np.concatenate([start, start], 1), "kl": np.full(3, 0.01)}
                        )["verdict"] == "reproduced"
    r = F.analyse_e3(p, accs, kl, ra, {"acc": np.concatenate([start, drop], 1), "kl": np.full(3, 0.01)})
    assert r["verdict"].startswith("not attributable") and r["random"]["collapsed"] == [True] * 3
    base = np.full((3, 1, 256), 0.4)
    up = base.copy()
    up[..., :40] += 0.15
    e4 = {"ttt": np.concatenate([base, up], 1), "control": np.concatenate([base, base], 1)}
    assert F.analyse_e4(dict(F.E4, boot=200), {**e4, "random": np.concatenate([base, base], 1)}, [0, 60]
                        )["verdict"] == "reproduced"
    r = F.analyse_e4(dict(F.E4, boot=200), {**e4, "random": np.concatenate([base, up], 1)}, [0, 60])
    assert not r["beats_control"] and r["verdict"] == "not reproduced"


def _e2_inputs(mcs_of, acc_collapse_random):
    rng = np.random.default_rng(0)
    gains, probes = {}, {}
    for i, rung in enumerate(F.Q_RUNGS):
        start = rng.uniform(0.2, 0.5, size=(2, 1, 256))
        gains[rung] = np.concatenate([start, start + 0.20 - 0.03 * i], axis=1)  # gains 0.20 ... 0.02, 2 seeds
        probes[f"majority_vote/{rung}"] = [{"mcs": mcs_of(i), "acc_collapse": mcs_of(i), "ra_last10": 0.5 - 0.05 * i}
                                           for _ in range(3)]
    probes["random/q0.05"] = [{"mcs": None, "acc_collapse": acc_collapse_random, "ra_last10": 0.5}] * 3
    return gains, probes


def test_e2_rules_on_constructed_probes():
    p = dict(F.E2)
    fa = {"boot": 200}
    gains, probes = _e2_inputs(lambda i: 140 - 15 * i, None)  # better prior -> later collapse, as in the paper
    r = F.analyse_e2(p, fa, gains, probes, 0.03)
    assert r["spearman"] == pytest.approx(1.0) and r["gate_span_se"] > 6 and r["control_ok"]
    assert r["verdict"] == "reproduced" and r["probes_collapsed"] == 21
    gains, probes = _e2_inputs(lambda i: 140 - 15 * i, 20)  # the random control collapses first: drift
    assert F.analyse_e2(p, fa, gains, probes, 0.03)["verdict"] == "not reproduced"
    gains, probes = _e2_inputs(lambda i: None, None)  # no probe collapses within the budget
    r = F.analyse_e2(p, fa, gains, probes, 0.03)
    assert r["verdict"].startswith("untestable") and r["spearman_ra_end"] == pytest.approx(1.0)


def test_e1c_reads_its_random_control_from_e1b(monkeypatch, tmp_path):
    """E1c's rule: the random arm is E1b's three runs, reused; the new rewards get their own directories."""
    import four_arms

    seen = []

    def fake(cfg, workdir, ref=None, **kw):
        seen.append((cfg.rl.reward, Path(workdir)))
        acc = np.full((3, 4), 0.5)
        return {"records": [{"step": 1}]}, [0, 100, 200], acc, acc, ["a", "b", "c", "d"]

    monkeypatch.setattr(four_arms, "train_and_read", fake)
    monkeypatch.setattr(F, "analyse_e1b", lambda p, fa, accs, records, steps: accs)
    accs = F.run_e1b(dict(F.E1C), tmp_path / "e1c")
    assert sorted(accs) == sorted(["probability", "token_entropy", F.RANDOM_NAME])
    for reward, workdir in seen:
        assert workdir.parent == tmp_path / ("e1b" if reward == "random" else "e1c"), (reward, workdir)
    assert len(seen) == 9


def test_run_training_continue_from_copies_the_source_once_resumes_and_marks_the_run_finished(monkeypatch, tmp_path):
    """E1d continues E1b's runs: the copy keeps the checkpoints, drops the finished mark, is trained once and
    then reused; an unfinished copy is resumed, not restarted; without continue_from an unfinished run restarts."""
    import importlib
    import json

    import common as C
    from ml_collections import ConfigDict

    T = importlib.import_module("urlvr_jax.train")  # the module (the package re-exports the function)
    calls = []

    def fake_train(config, workdir):
        workdir.mkdir(parents=True, exist_ok=True)  # as the trainer does
        calls.append(sorted(p.name for p in workdir.iterdir()))
        (workdir / "metrics.jsonl").write_text("")

    monkeypatch.setattr(T, "train", fake_train)
    source, target = tmp_path / "e1b" / "r_s0", tmp_path / "e1d" / "r_s0"
    config = ConfigDict({"train": {"steps": 2000}})
    with pytest.raises(FileNotFoundError, match="no finished run to continue from"):
        C.run_training(config, target, continue_from=source)
    (source / "checkpoints").mkdir(parents=True)
    (source / "experiment_done.json").write_text('{"config": {"train": {"steps": 1000}}, "seconds": 1}')
    got = C.run_training(config, target, continue_from=source)
    assert calls == [["checkpoints"]] and not got["reused"]  # resumed from the copied checkpoints, not "finished"
    done = json.loads((target / "experiment_done.json").read_text())
    assert done["config"]["train"]["steps"] == 2000 and done["continued_from"] == str(source)
    assert C.run_training(config, target, continue_from=source)["reused"] and len(calls) == 1
    # an interrupted continuation (no finished mark) keeps its own progress
    (target / "experiment_done.json").unlink()
    (target / "checkpoints" / "step_1500").mkdir()
    C.run_training(config, target, continue_from=source)
    assert (target / "checkpoints" / "step_1500").exists() and len(calls) == 2
    # without continue_from an unfinished run starts over from an empty directory
    (target / "experiment_done.json").unlink()
    C.run_training(config, target)
    assert calls[-1] == []


def test_e3b_reuses_e1c_token_entropy_runs_only_because_their_configuration_is_the_same():
    import common as C
    import four_arms

    fa = dict(F.four_arms_params(False), steps=F.E1C["steps"], prompts=F.E1C["prompts"], samples=F.E1C["samples"],
              eval_every=F.E1C["eval_every"])
    for seed in range(3):
        e1c = four_arms.run_config(C.model_path(F.E1C["rung"]), "token_entropy", seed, fa)
        e1c.train.checkpoint_every = F.E1C["checkpoint_every"]
        e3b = F.e3_config(F.E3B, 4096, seed, F.E3B["reward"])
        assert e3b.to_json_best_effort() == e1c.to_json_best_effort()
    assert F.E3B["reuse"] == {4096: "e1c/token_entropy"}
    assert F.e3_config(F.E3B, 32, 0, "token_entropy").data.synthetic_size == 32


def test_e2b_runs_on_ladder_v3_with_three_paired_gt_seeds_and_300_step_probes(monkeypatch, tmp_path):
    import common as C
    import four_arms as FA

    seen = []

    def fake_run_training(cfg, wd, **kw):
        seen.append((Path(wd).name, cfg))
        ra = [0.5] * 3 + [0.0] * 5 if "probe_majority_vote_q0.05" in str(wd) else [0.5] * 8
        return {"records": [{"step": k + 1, "urlvr/reward_accuracy": v, "urlvr/gt_reward_mean": 0.3,
                             "response/length_mean": 40.0 if v else 4.0} for k, v in enumerate(ra)]}

    monkeypatch.setattr(C, "run_training", fake_run_training)
    monkeypatch.setattr(FA, "read_evals", lambda wd: ([0, 120], np.full((2, 4), 0.3), None, ["a"] * 4))
    monkeypatch.setattr(F, "best_constant_accuracy", lambda path: 0.034)
    r = F.run_e2(dict(F.E2B, rungs=("q0.05", "q0.8")), tmp_path)
    gt = [(name, cfg) for name, cfg in seen if name.startswith("gt_")]
    assert [name for name, _ in gt] == [f"gt_{q}_s{s}" for q in ("q0.05", "q0.8") for s in range(3)]
    assert all(cfg.train.eval_seed == 0 and "ladder_v3" in cfg.model.path for _, cfg in gt)
    probes = [cfg for name, cfg in seen if name.startswith("probe_")]
    assert len(probes) == 3 * 3 and all(cfg.train.steps == 300 and "ladder_v3" in cfg.model.path for cfg in probes)
    assert [x["mcs"] for x in r["probes"]["majority_vote/q0.05"]] == [4, 4, 4]
    assert [x["mcs_raw"] for x in r["probes"]["majority_vote/q0.05"]] == [4, 4, 4]
    assert r["median_mcs"]["majority_vote/q0.8"] == 301  # censored at probe_steps + 1
    assert r["probes"]["majority_vote/q0.05"][0]["length_first5_last5"] == pytest.approx([25.6, 4.0])
    assert F.markdown_e2(r, 1.0).startswith("# E2b") and "ladder_v3" in F.markdown_e2(r, 1.0)


def _e2c_probes(collapses_of, at: int, random_acc_collapse: int):
    """10 seeds per rung; rung i: the first collapses_of(i) seeds reach the MCS at step `at`, the rest never."""
    probes = {f"majority_vote/{q}": [{"mcs": at if s < collapses_of(i) else None, "acc_collapse": None,
                                      "ra_last10": 0.3} for s in range(10)] for i, q in enumerate(F.Q_RUNGS)}
    probes["random/q0.05"] = [{"mcs": None, "acc_collapse": random_acc_collapse, "ra_last10": 0.5}] * 3
    return probes


def test_e2c_rule_ranks_the_restricted_mean_mcs_of_ten_seeds_and_checks_the_control_against_collapsed_probes():
    p, fa = dict(F.E2C), {"boot": 200}
    gains, _ = _e2_inputs(lambda i: None, None)  # GT gains fall with the rung: 0.20 ... 0.02
    # better prior -> fewer collapses (rung i: i + 1 of 10), as the paper's ranking implies
    r = F.analyse_e2c(p, fa, gains, _e2c_probes(lambda i: i + 1, 100, 250), 0.03, boot=200)
    assert r["rmst"]["q0.05"] == pytest.approx((100 + 9 * 301) / 10) and r["rmst"]["q0.95"] == pytest.approx(
        (7 * 100 + 3 * 301) / 10)
    assert r["collapse_rate"]["q0.2"]["collapsed"] == 2 and r["collapse_rate"]["q0.2"]["ci95"] == pytest.approx(
        list(F.exact_binomial_ci(2, 10)))
    assert r["spearman_rmst"] == pytest.approx(1.0) and r["spearman_rate"] == pytest.approx(1.0)
    assert r["collapsed_median_mcs"] == 100 and r["control_ok"] and r["verdict"] == "reproduced"
    # E2's median of 10 seeds is 301 on the four best rungs (<= 4 of 10 collapse): tied, so rho < 1 there
    assert r["median_mcs"]["majority_vote/q0.05"] == 301 and r["spearman"] < 0.99
    # the random reward's accuracy collapses before the probes do: drift, not the reward
    assert F.analyse_e2c(p, fa, gains, _e2c_probes(lambda i: i + 1, 100, 50), 0.03, boot=200)["verdict"] == \
        "not reproduced"
    # the better prior collapses more often: the reverse ranking
    r = F.analyse_e2c(p, fa, gains, _e2c_probes(lambda i: 7 - i, 100, 250), 0.03, boot=200)
    assert r["spearman_rmst"] == pytest.approx(-1.0) and r["verdict"] == "not reproduced"
    assert F.analyse_e2c(p, fa, gains, _e2c_probes(lambda i: 0, 100, 250), 0.03, boot=200)["verdict"].startswith(
        "untestable")
    md = F.markdown_e2c(r, 1.0)
    assert md.startswith("# E2c") and "| q0.05 | +0.200 | 7/10 |" in md and md.rstrip().endswith(
        "**Verdict: not reproduced**")


def test_e2c_extends_e2bs_runs_with_the_same_probe_configuration(monkeypatch, tmp_path):
    import common as C
    import four_arms as FA

    seen = []

    def fake_run_training(cfg, wd, **kw):
        seen.append(Path(wd))
        return {"records": [{"step": k + 1, "urlvr/reward_accuracy": 0.5, "urlvr/gt_reward_mean": 0.3,
                             "response/length_mean": 40.0} for k in range(4)]}

    monkeypatch.setattr(C, "run_training", fake_run_training)
    monkeypatch.setattr(FA, "read_evals", lambda wd: ([0, 120], np.full((2, 4), 0.3), None, ["a"] * 4))
    monkeypatch.setattr(F, "best_constant_accuracy", lambda path: 0.034)
    F.run_e2c(dict(F.E2C, rungs=("q0.05", "q0.8")), tmp_path / "e2c")
    assert {w.parent for w in seen} == {tmp_path / "e2b"}  # E2b's folder: its finished runs are reused
    probes = [w.name for w in seen if w.name.startswith("probe_")]
    assert probes[:3] == ["probe_majority_vote_q0.05_s0", "probe_majority_vote_q0.8_s0", "probe_random_q0.05_s0"]
    assert len(probes) == 2 * 10 + 3 and "probe_random_q0.05_s3" not in probes  # seed by seed; 3 control seeds
    for seed in range(3):  # the same configuration as E2b's probes, so E2b's finished runs are E2c's seeds 0-2
        for q in ("q0.05", "q0.8"):
            path = C.model_path(f"ladder_v3/{q}")
            a, b = (F.e2_probe_config(e, path, "majority_vote", seed, 0.044) for e in (F.E2B, F.E2C))
            assert a.to_dict() == b.to_dict()


def test_run_training_does_not_mark_a_sigterm_stopped_run_finished(monkeypatch, tmp_path):
    """The trainer checkpoints and returns on SIGTERM; such a run must not be read as finished on the next call
    (session 9: a killed E2b run was marked done at step 64 of 120 and its analysis failed)."""
    import importlib

    import common as C
    from ml_collections import ConfigDict

    T = importlib.import_module("urlvr_jax.train")
    stops = ["SIGTERM", "steps"]

    def fake_train(config, workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "metrics.jsonl").write_text("")
        return {"last_step": 64 if stops[0] == "SIGTERM" else 120, "stopped_by": stops.pop(0)}

    monkeypatch.setattr(T, "train", fake_train)
    config, wd = ConfigDict({"train": {"steps": 120}}), tmp_path / "run"
    with pytest.raises(SystemExit, match="stopped by SIGTERM at step 64"):
        C.run_training(config, wd)
    assert not (wd / "experiment_done.json").exists()
    got = C.run_training(config, wd)
    assert not got["reused"] and (wd / "experiment_done.json").exists()


@pytest.mark.parametrize("name", sorted(F.EXPERIMENTS))
def test_render_rewrites_each_committed_markdown_from_its_json_without_training(tmp_path, name):
    """The committed markdown is what the current code makes of the committed JSON (int keys survive JSON)."""
    results = ROOT / "experiments" / "results" / "findings"
    (tmp_path / f"{name}.json").write_text((results / f"{name}.json").read_text())
    r = F.main([name, "--render", "--out", str(tmp_path)])
    assert (tmp_path / f"{name}.md").read_text() == (results / f"{name}.md").read_text()
    assert (tmp_path / f"{name}.png").stat().st_size > 0 and r["verdict"]


def test_render_without_a_result_says_which_file_is_missing(tmp_path):
    with pytest.raises(SystemExit, match="e2.json does not exist"):
        F.main(["e2", "--render", "--out", str(tmp_path)])
