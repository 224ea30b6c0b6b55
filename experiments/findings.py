"""The paper's six findings on ladder v2 at the calibrated learning rate, with rules fixed before the runs.

Issue 13 / science review §3 (E1-E6), sized to the time this machine has: every experiment below runs on
ladder v2 (urlvr_jax/models/ladder_v2) at lr 3e-5 (experiments/calibrate_lr.py: the largest lr whose
random-reward arm is inert), GRPO without KL, T = 1.0, 96 new tokens, and has its decision rule written here,
in this docstring, in the commit before its runs (git log shows the order). Held-out accuracy is avg@8 at
T = 1.0 on the ladder's held-out problems, step as the evaluation seed (all arms share random numbers);
uncertainty is a crossed bootstrap over seeds × problems (four_arms.crossed_bootstrap, 2000 draws) unless
stated. Windows as in four_arms: start = step 0, peak window = best 3 consecutive evaluations, final window =
last 3; rise = peak − start, fall = peak − final, change = final − start.

E1  Finding 1: intrinsic rewards rise, then fall (paper: Qwen3-1.7B, every intrinsic reward rises then falls;
    collapse of the most stable settings at ~1000 steps, ~4 epochs; probability -> length collapse,
    token/trajectory entropy -> repetition collapse).
    Runs: ladder_v2/q0.05, 16 prompts × 8 samples, 120 steps (0.47 epoch of the 4096-prompt set), 3 seeds,
    256 held-out × 8 every 20 steps, i.e. four_arms' configuration; the majority-vote, ground-truth and random
    arms are four_arms' (its runs are reused), the four certainty rewards (self_certainty, token_entropy,
    trajectory_entropy, probability) are new.
    Gate: a reward is tested if its within-group point-biserial correlation with correctness over the first 5
    training steps (urlvr/point_biserial, mean over seeds) is >= 0.25 (~AUROC 0.64 for normal scores).
    Rise: four_arms' R1 (rise CI > 0 and rise − random's rise > 2 SE). Fall: R2 (fall CI > 0 and fall −
    random's fall > 2 SE). Failure modes (descriptive): response length and repetition, last 10 steps vs
    first 10.
    Verdict: "reproduced" if every gated reward rises and falls; "rise reproduced, fall untestable" if every
    gated reward rises and none falls — 120 steps is 0.12 of the paper's collapse horizon and 0.47 epoch, so
    the absence of a fall has no power; "not reproduced" if a gated reward does not rise.

E1b Finding 1's fall at a longer horizon (session 7; rule written before its runs). E1's 120 steps are 0.12 of
    the paper's collapse horizon, so no fall could show. Runs: ladder_v2/q0.05, majority_vote,
    trajectory_entropy (the paper: repetition collapse) and random (control), 8 prompts × 8 samples, 1000 steps
    (8000 prompts, ~2 epochs of the 4096-prompt set; the paper collapses at ~4 epochs), lr 3e-5, 3 seeds,
    256 held-out × 8 every 100 steps (11 evaluations; windows of 3 evaluations = 300 steps).
    Rules: R1 (rise) and R2 (fall) as in E1, against the random arm. Verdict per reward: "rises then falls"
    (R1 and R2), "rises, no fall within 1000 steps" (R1 only), "does not rise"; the finding's fall is
    "reproduced" if both rewards rise and fall, "not reproduced at 1000 steps" if both rise and neither falls
    (the power of that negative: the random arm's change and KL at 1000 steps are reported beside it — a fall
    smaller than 2 SE of the fall statistic would be missed), "partly" otherwise. Reported: KL k1, reward
    accuracy, response length and repetition over the last 50 steps vs the first 50 (the failure modes).

E1c Finding 1's fall for the other two intrinsic rewards at 1000 steps (session 8; written after E1b's results,
    before any E1c run). E1b tested majority vote and trajectory entropy; the paper names a different failure
    mode for the probability reward (no length normalisation: length collapse to short answers — ladder v2's SFT
    gives answer-only responses 3% of the mass, so the shortcut is reachable) and token entropy (repetition
    collapse). Runs: E1b's design exactly (ladder_v2/q0.05, 8×8, 1000 steps, lr 3e-5, 3 seeds, 256 held-out × 8
    every 100 steps) with rewards probability and token_entropy; the random arm is E1b's own three runs (the
    same configuration; reused, not rerun). Rules and verdicts: E1b's, unchanged. Reported beside them: response
    length and repetition over the first vs last 50 steps (a length collapse shows as length falling toward the
    answer-only ~5 tokens).

E1d Finding 1 at the paper's horizon, ~4 epochs (session 8; written after E1b's and before any E1d step, while
    E1c ran). E1b's runs stopped at 1000 steps, ~2 epochs of the 4096-prompt set; the paper's most stable
    settings collapse at ~4 epochs. E1d continues each of E1b's nine runs (majority_vote, trajectory_entropy,
    random × 3 seeds) from its step-1000 checkpoint to step 2000 (16000 prompts, 3.9 epochs): the trainer
    restores parameters, optimizer state, data iterator and step, the lr is constant, and every step's key is
    fold_in(seed, step), so a continued run is the 2000-step run. Evaluations every 100 steps (21). Rules and
    verdicts: E1b's (R1 / R2 with windows of 3 evaluations, against the random arm) on the 2000-step curves.

E2  Finding 2: the Model Collapse Step ranks priors like their ground-truth gain (paper: 7 models, MCS and
    GT gain in the same order).
    GT gain: each of the 7 q-rungs + the inflated rung, ground-truth reward, four_arms' configuration (16×8,
    120 steps, lr 3e-5) with 2 seeds, evaluated on 256 held-out × 8 at steps 0 and 120 only (q0.05: the
    four_arms good_gt runs, seeds 0 and 1, final evaluation at 120); gain = acc(120) − acc(0).
    MCS probe (aggressive, as the paper's cheap probe: its mini-batch-1 / N = 32 settings): majority vote,
    8 prompts × 8 samples, lr 3e-4 (10× the calibrated lr), up to 150 steps, 3 seeds per rung, stopping at the
    sustained MCS: reward accuracy below f0 + 0.01 for 5 consecutive steps, f0 = the accuracy of the best
    constant-answer policy on the training problems (W1). A run that does not collapse gets MCS = 151
    (censored; Spearman uses ranks, ties averaged). Control: the random reward on q0.05 at the probe setting
    (3 seeds) — if it collapses as early as the majority-vote probes, the MCS measures drift, not the prior.
    A random reward's reward accuracy is ~0.5 whatever the policy does, so the control is compared on the
    accuracy-collapse step instead: the training batch's accuracy below f0 + 0.01 for 5 consecutive steps
    (computed the same way for every probe; a probe stopped at its MCS counts as never accuracy-collapsed
    when its accuracy had not yet stayed below for 5 steps).
    Gate: the 7 q-rungs' GT gains span >= 6 SE (SE of a gain: bootstrap over seeds × problems) — otherwise
    "uninformative".
    Pass (reproduced): Spearman(median MCS, GT gain) over the 7 q-rungs >= 0.786, the tables' critical value
    (= 1 − 6·12/336 = 0.7857, exact two-sided p = 0.0480 over the 5040 permutations), and the random control's
    median accuracy-collapse step is later than that of the majority-vote probe of every rung with base
    maj@16 < 0.5. Reported beside it: Spearman of pass@16 − avg@16 (the base models' measured prior, ladder v2
    README) with the GT gain, and where the inflated rung falls.
    Added after the first 10 probes (q0.05-q0.5: all ran 150 steps without reaching the MCS) and before any
    GT-gain run: if no majority-vote probe reaches the MCS, the verdict is "untestable at this budget" (the MCS
    then carries no ranking); a post-hoc, descriptive Spearman of the probes' final reward accuracy with the
    GT gain is reported and decides nothing.

E2b Finding 2 on a world where majority vote can collapse (session 9; written before any E2b run). In E2 no probe
    reached the MCS: on ladder v2 a majority-vote run sharpens each prompt onto its own majority, so reward
    accuracy tends to maj@N, not to 0. The paper's MCS (reward accuracy < 1%) needs a state in which the samples
    agree and are wrong on nearly every prompt. Ladder v3 (urlvr_jax/models/ladder_v3) is ladder v2 plus a
    universal give-up answer, \\boxed{0} (0 is the answer of ~1% of problems), on a share 0.2 of every rung's
    prior-phase SFT traces — the same share on every rung, so a rung's MCS is decided by how its own answers
    compete with the attractor, not by a share set per rung. The share was chosen on a pilot of the middle rung
    q0.5 only (sft.V3_GIVE_UP: 0.1 was driven out in 300 steps, 0.2 collapsed at step 72; no other rung was
    probed before this rule).
    Design: E2's, on ladder_v3, with these changes: GT gain with 3 seeds (E2: 2) and the same evaluation draws at
    steps 0 and 120 (train.eval_seed 0, as E4b: the gain is paired draw for draw); MCS probes up to 300 steps
    (the paper's MCS values are 34-383), never = 301; the raw first crossing is reported beside the sustained
    MCS. Gate (GT gains span >= 6 SE), pass rule (Spearman(median MCS, GT gain) over the 7 q-rungs >= 0.786
    and the random control's median accuracy-collapse step later than every bad-prior probe's, bad = base maj@16
    < 0.5 on this ladder), "untestable" if no probe reaches the MCS, and the reported extras: E2's, unchanged.
    Amended during the GT runs (after q0.05-q0.65 and one q0.8 seed, before any probe; for time): the inflated
    rung's GT runs are dropped. It is not one of the 7 q-rungs, so the rule does not read it; the extra "where
    the inflated rung falls" is not reported.

E2c Finding 2 with a collapse rate (session 10; written after E2b's results, before any E2c run). E2b's probes
    showed that the collapse onto the give-up answer is a first-passage event: the same rung collapses in one seed
    and not in the next (q0.05-q0.65 in 1 or 2 of 3 seeds), so a median of 3 seeds is mostly noise. E2c: E2b's
    design with 10 probe seeds per rung (seeds 0-2 are E2b's runs, the same configuration, reused from its run
    folder; seeds 3-9 new; run seed by seed across the rungs), E2b's GT gains (its runs, reused) and E2b's random
    control (3 seeds). Statistic: per rung the restricted mean MCS, RMST = the mean over its 10 seeds of
    min(MCS, 301) (a seed that never collapses counts 301): the expected MCS within the probe's horizon, which
    does not jump with one seed as a median of few seeds does.
    Pass (reproduced): Spearman(RMST, GT gain) over the 7 q-rungs >= 0.786 (E2's critical value) and the control
    holds: the random reward's median accuracy-collapse step is later than the median MCS of the majority-vote
    probes that reached the MCS (a collapse earlier than the random reward's is the reward's, not drift; E2b's
    control compared against rungs that never collapsed, which no control can beat). Otherwise "not
    reproduced"; "untestable at this budget" if no probe reaches the MCS.
    Reported: the collapse rate per rung (exact 95% CI) and Spearman(1 - collapse rate, GT gain); a bootstrap
    over the seeds within each rung (2000 draws) of Spearman(RMST, GT gain), whose 95% interval says whether 10
    seeds pin the ranking down; E2's median-MCS statistics on the 10 seeds.

E3  Finding 3: small training sets do not collapse, large ones do; KL(π‖π_ref) about 2× larger at 512 than at 32
    prompts (paper: sizes 32..16384, batch 32, 600 steps; <= 128 prompts never collapse, >= 512 hack).
    Runs: ladder_v2/q0.05, majority vote, 8 prompts × 8 samples, 200 steps, lr 3e-5, training sets of 32, 128,
    512 and 2048 prompts (the first N of the training split), 3 seeds each; held-out 256 × 8 at 0, 100, 200;
    KL k1 per token on the training rollouts.
    Collapse (fixed): final held-out avg@8 < base − 0.10, or reward accuracy over the last 20 steps < 0.3.
    Pass: 0/6 collapses at <= 128 and >= 4/6 at >= 512 (Fisher exact one-sided p = 0.030). Reported: the KL
    ratio 512/32 over the last 20 steps (bootstrap over seeds) beside the paper's ~2×, and the held-out change
    per size (crossed bootstrap). If no run at any size collapses, the collapse part is "untestable at this
    budget" (200 steps at the calibrated lr), and the verdict rests on the KL ratio: "KL part reproduced" if
    its CI lies above 1, "not reproduced" if its CI lies at or below 1. Control: the random reward at 512
    prompts (3 seeds); if >= 2 of its 3 seeds collapse (held-out criterion), no collapse is attributed to the
    size ("not attributable").

E3b Finding 3 with a reward that collapses (session 8; written after E1c's results, before any E3b run). E3 had
    no power: majority vote did not collapse at any size in 200 steps. E1c found one reward that does collapse
    at the calibrated lr — token entropy, held-out 0.434 -> 0.228 over 1000 steps on the 4096-prompt set. E3b:
    E3's design and rules with reward token_entropy, 1000 steps (8×8), evaluations every 100 steps, training
    sets of 32, 128, 512 and 4096 prompts × 3 seeds (4096: E1c's three token-entropy runs, the same
    configuration, reused), and the random reward at 512 prompts (3 seeds, 1000 steps) as the control. Collapse
    criterion, pass rule (0/6 at <= 128 and >= 4/6 at >= 512), KL ratio 512/32 and the control's veto: E3's,
    unchanged.

E4  Finding 4: test-time training on a small test set improves it without hurting other problems (paper:
    TTT on AMC23, 40 problems, batch 40: the vote reward rises then stabilises; AMC23 and AIME24 improve).
    Runs: ladder_v2/q0.05, majority vote, E = the first 40 held-out problems, all of E in every step (40 × 8),
    60 steps, lr 3e-5, 3 seeds; control arm: 40 training-split problems in the same setting.
    Evaluated on 256 held-out × 8 every 20 steps: E = problems 0-39 of that set, T = the other 216.
    Random-reward arm: trained on E with the random reward (3 seeds).
    Pass: ΔE (final evaluation − start, TTT arm) has a CI above 0; the lower CI bound of ΔT (TTT arm) is above
    −0.02; TTT's ΔE exceeds the control arm's and the random arm's ΔE (difference CIs above 0). Verdict
    "reproduced" if all three.

E4b Finding 4 with the power E4 lacked (session 8; written after E4's and E5b's results, before any E4b run).
    E4's failing part, ΔE's CI above 0, had an SE of 0.043 on 40 problems: the paper's effect size (AMC23
    +0.045) would pass about one time in four. E4b: E = the first 128 held-out problems (T = the other 128),
    32 of them per step (E cycled, each problem every 4th step) × 8 samples, 120 steps (30 passes over E; E4:
    60 updates on all 40, here 120 updates), lr 3e-5, 3 seeds; control: 128 training-split problems in the same
    setting; random-reward arm on E. Held-out avg@8 at steps 0, 40, 80, 120 on the 256 held-out problems, every
    evaluation with the same draws (train.eval_seed 0, as E5b), so start and final are paired draw for draw.
    Expected power: SE of ΔE ≈ 0.043·√(40/128) ≈ 0.024 before the pairing of the draws, so an effect of +0.05
    (E4's estimate) passes with probability ≈ 0.55 or more. Rules and verdict: E4's, unchanged (all three parts).
    Both E4 and E4b stay in the table; neither overrides the other.

E5  Finding 5: external rewards (self-verification) keep improving where intrinsic rewards fall (paper: Countdown,
    self-verification 0.55-0.75 vs trajectory entropy ~0.40 and then down).
    Session 6: the gate below failed on the Countdown base of recipe v1 (TPR 0.70, TNR 0.65): "untestable".
    Session 7 (this rule written before any E5 run of recipe v2): the base is experiments/external_rewards.py's
    recipe v2 — its verification traces cross the expression's numbers off the given ones one per line,
    evaluate step by step and compare with the target (one local fact per line), on 24 verification pairs per
    SFT problem (half of the rows), 15% of them with one number swapped (hard negatives); 3000 SFT steps.
    Revised under the clause below before any RL run (E5_ATTEMPTS lists each try's gate numbers): recipe v3
    adds a quarter of the other pairs with the target moved by 1..5 (the verifier had learned to write the
    target as a step's result) and trains 8000 SFT steps (the tiny model; a 4× larger one did worse at 4000).
    Gate (before any RL run): the verifier's verdicts on the model's own T = 1 solutions (64 held-out problems ×
    8) have TPR and TNR >= 0.9, and solve avg@8 is in [0.10, 0.35]. The recipe may be revised until the gate
    holds — it calibrates the instrument, no RL outcome is seen before — and every attempt's gate numbers are
    reported.
    Runs (once the gate holds): five arms from that base, 3 seeds each, 16 prompts × 8 samples, 120 steps, lr
    3e-5 (the calibrated lr of ladder v2: the same model size and SFT recipe), GRPO without KL, T = 1, 64 new
    tokens; held-out avg@8 (T = 1) on all 192 eval-split problems of the task every 20 steps (fewer than 256:
    the task has no more). Arms: countdown (the exact checker; on this task = ground truth), self_verification
    (the policy judges each solution, one verdict at T = 0.6), frozen_verification (the initial model judges:
    a verifier that cannot be trained to agree), trajectory_entropy, random (control).
    Rules (four_arms' R1/R2 on the held-out curves, against the random arm):
      power: the countdown arm rises (R1); else "untestable at this budget".
      drift (added before any E5 RL run, when a larger base model became a candidate for the gate): the
      random arm's change lies within 2 SE of 0; else "untestable (the lr drifts without a signal)".
      F5a: self_verification rises (R1). F5b: it does not fall (R2 false).
      F5c: trajectory_entropy falls (R2), the paper's contrast.
    Verdict (given power): "reproduced" if F5a, F5b and F5c; "self-verification part reproduced, the
    intrinsic contrast untestable at this budget" if F5a and F5b but not F5c (120 steps: as in E1, no fall
    has power here); "not reproduced" if F5a or F5b fails.
    Reported: each arm's rise, fall and change with CIs, the judges' agreement with the checker (reward
    accuracy, first vs last 10 steps) for the policy judge and the frozen one, and the failure modes.

E5b Finding 5 on problems the base model never saw (session 7; written after E5's runs, before E5b's). E5's
    RL problems were the base model's 700 SFT problems (their rollout accuracy 0.49 against 0.19 held out:
    memorised), and no arm — the exact checker included — moved held-out accuracy. E5b: the recipe-v3 base
    trained on problems 300-699 of those 700 (400 problems, 8000 SFT steps), RL on problems 0-299 (never seen
    in SFT), 200 steps; the gate, arms, seeds, batch, lr, evaluation and rules are E5's. Revised before any
    E5b RL run: that base missed the gate (TPR 0.893), so 12000 SFT steps. Evaluation amended before E5b's
    runs: the same draws at every evaluation (train.eval_seed 0). In E5 every arm, the random one included,
    went 0.194 -> 0.171-0.176 from step 0 to step 20 and stayed there, the arms within 0.009 of each other at
    every evaluation, with KL 0.001: a lucky step-0 draw shared by all arms (the evaluation seed was the step),
    which E5's drift check read as drift. With one draw for every evaluation, a change is the policy's.

E5c Finding 5's contrast over a longer run (session 11; written after E5b's results, before any E5c run). In E5b
    every arm rose by ~0.01 in 200 steps and none fell, so the contrast was untestable. E5c runs 3× longer and
    adds the intrinsic reward that does fall in this project's worlds: token entropy (E1c: held-out −0.158
    over 1000 steps at this lr; E3b: every run fell), beside the paper's trajectory entropy.
    Base: E5b's (recipe v3, problems 300-699, 12000 SFT steps; the same gate, measured again and reported).
    Runs: arms countdown (power), self_verification, token_entropy, trajectory_entropy, random (control);
    frozen_verification is dropped (in E5b it matched self_verification at every evaluation to 0.001). 3 seeds,
    600 steps (3× E5b) of 16 prompts × 8 samples on problems 0-299 (never seen in SFT), lr 3e-5, GRPO without
    KL, T = 1, 64 new tokens; held-out avg@8 (T = 1) on the 192 eval-split problems every 100 steps with the
    same draws at every evaluation (train.eval_seed 0). Timing before the rule (30 steps per arm, no accuracy
    read): 0.45-0.49 s per step, ~5 s per evaluation, so ~80 min for the 15 runs — over the 1-hour target,
    kept: in E1c token entropy began to fall only after step 500, and a shorter run would likely test nothing.
    The base was rebuilt on this machine from E5b's recipe; build-only measured TPR 0.991, TNR 0.972, solve
    avg@8 0.221 (E5b's build: 0.903, 0.990, 0.186) — the same recipe and countdown code, not bit-identical.
    Rules (four_arms' R1/R2 on the held-out curves; both already compare each arm with the random arm, so no
    separate drift gate: over 600+ steps the random arm is expected to drift — E1c's fell 0.039 in 1000 steps —
    and a fall counts only when it exceeds the control's):
      power: the countdown arm rises (R1); else "untestable at this budget".
      F5a: self_verification rises (R1). F5b: it does not fall (R2 false).
      F5c: trajectory_entropy falls (R2) — the paper's contrast. F5c': token_entropy falls (R2).
    Verdict (given power): "not reproduced" if F5a or F5b fails; else "reproduced" if F5c; else "reproduced with
    token entropy as the intrinsic reward (trajectory entropy does not fall within 600 steps)" if F5c';
    else "self-verification part reproduced; no intrinsic reward falls within 600 steps".
    Reported: each arm's rise, fall and change with CIs; the contrast change(self_verification) − change(arm)
    for each intrinsic arm with its crossed-bootstrap 95% CI; reward accuracy, length and KL per arm.

E6  Theorem 1 (paper: 25 problems, each trained alone for 100 epochs with the trajectory-level entropy reward;
    greedy correctness flipped 3/25).
    Runs: ladder_v2/q0.35 (maj@16 0.52: right and wrong majorities both common), 25 single problems (held-out
    distribution, synthetic seeds 7000..7024, one problem each), trajectory_entropy reward, 1 prompt × 16
    samples per step, 100 steps, lr 3e-5, checkpoints every 20 steps.
    Probe at step 0 and every checkpoint: the greedy answer and 64 samples at T = 1 of the trained problem;
    p_k = share of samples giving the problem's initial majority m (majority of a separate 64-sample draw of
    the base model). Rate = least-squares slope of the smoothed logit of p_k on k (per problem).
    Gate (power): mean p_100 − p_0 >= 0.10 (training moved the policy).
    T1a: greedy correctness flips (step 100 vs step 0) <= 7 of 25 (one-sided exact binomial test of flip
    probability >= 0.5 rejects at 0.05); exact 95% CI beside the paper's 3/25.
    T1b: the median rate is > 0 (bootstrap CI over problems above 0) among right-majority and among
    wrong-majority problems alike (each group needs >= 5 problems, else "untestable"), and >= 80% of the
    problems end with the initial majority as their sample majority.
    Verdict: reproduced if the gate, T1a and T1b hold. Reported: regression of the rate on logit p_0 (the
    theorem: no dependence).
    Control (added in session 7, after the verdict above and before the control's runs; it can only demote
    the verdict): the same 25 problems trained with the random reward (same steps, samples, lr), probed at
    steps 0 and 100. Statistic: mean over problems of Δp = p_100 − p_0, trajectory entropy − random, with a
    bootstrap CI over problems (paired). If that CI does not lie above 0, the gate fails ("untestable: the
    move is not larger than a random reward's").

    python experiments/findings.py e6 [--smoke]      # one experiment (e1 ... e6)
    python experiments/findings.py table              # the verdict table from the experiments' JSON

Writes <out>/<experiment>.{md,json,png}; training runs under <runs-dir>/<experiment>/ (reused when rerun with the
same settings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import mcs_vs_gt_gain  # noqa: E402
import numpy as np  # noqa: E402
from theorem1_rate import smoothed_logit  # noqa: E402

NAME = "findings"
LR = 3e-5
RANDOM_NAME = "good_random"  # four_arms.summarize_arms compares every arm with the arm of this name


def save_figure(fig, out: Path, name: str) -> str:
    """Lay out, write <out>/<name>.png and close a figure; returns the file name."""
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    C.pyplot().close(fig)
    return f"{name}.png"


def plot_arm_curves(out: Path, name: str, steps, arms: dict, label, title: str, ylabel: str, spread: float) -> str:
    """One figure of held-out curves, mean over seeds ± 2 SE, one line per arm (offset by `spread` steps so the
    error bars do not overlap); label(arm, stats) names each line. Returns the file name."""
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.asarray(steps, float)
    for i, (arm, a) in enumerate(arms.items()):
        ax.errorbar(steps + (i - (len(arms) - 1) / 2) * spread, a["curve"], yerr=2 * np.asarray(a["curve_se"]),
                    marker="o", markersize=3, capsize=2, label=label(arm, a))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out, name)


def exact_binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion k / n."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def slope(x, y) -> float:
    """Least-squares slope of y on x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def bootstrap_median_ci(x, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(x, float)
    rng = np.random.default_rng(seed)
    meds = np.median(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


# ---------------------------------------------------------------------------------------------- E1
CERTAINTY = ("self_certainty", "token_entropy", "trajectory_entropy", "probability")
E1 = dict(rung="ladder_v2/q0.05", rewards=CERTAINTY, four_arms_runs=str(C.RUNS / "four_arms_v2"), gate=0.25)
E1_SMOKE = dict(E1, rewards=("self_certainty",), four_arms_runs=None)
E1_FROM_FOUR_ARMS = (("majority_vote", "good_mv"), ("ground_truth", "good_gt"), ("random", "good_random"))


def four_arms_params(smoke: bool) -> dict:
    import four_arms as F

    return dict(F.SMOKE if smoke else F.FULL)


def run_e1(p: dict, runs: Path) -> dict:
    """Trains (or reuses) the certainty arms and four_arms' majority-vote / ground-truth / random arms."""
    import four_arms as F

    smoke = p["four_arms_runs"] is None
    fa = four_arms_params(smoke)
    arms = [(r, r, runs / r) for r in p["rewards"]] + [
        (reward, name, Path(p["four_arms_runs"]) / name if not smoke else runs / name)
        for reward, name in E1_FROM_FOUR_ARMS]
    accs, records, per_seed = {}, {}, {}
    ref = None
    for reward, name, base in arms:
        per, recs = [], []
        for seed in range(fa["seeds"]):
            wd = Path(f"{base}_s{seed}")
            got, steps, acc, _, ids = F.train_and_read(F.run_config(C.model_path(p["rung"]), reward, seed, fa), wd, ref)
            ref = ref or (steps, ids)
            per.append(acc)
            recs.append(got["records"])
            per_seed[f"{name}_s{seed}"] = json.loads((wd / "report.json").read_text())["heldout"]
            print(f"e1 {name} seed {seed} done", file=sys.stderr, flush=True)
        accs[name] = np.stack(per)
        records[name] = recs
    return analyse_e1(p, fa, accs, records, ref[0], per_seed)


def _first_last(records: list[list[dict]], key: str, n: int = 10) -> tuple[float, float]:
    """Mean over runs of the mean of `key` over the first and the last n steps."""
    firsts, lasts = [], []
    for recs in records:
        _, y = C.curve(recs, key)
        firsts.append(np.mean(y[:n]))
        lasts.append(np.mean(y[-n:]))
    return float(np.mean(firsts)), float(np.mean(lasts))


def analyse_e1(p, fa, accs, records, steps, per_seed) -> dict:
    import four_arms as F

    s = F.summarize_arms(accs, steps, fa["boot"])
    d = F.decide(s)
    rows = {}
    for name in accs:
        pb = float(np.mean([np.mean(C.curve(r, "urlvr/point_biserial")[1][:5]) for r in records[name]]))
        rows[name] = {"point_biserial_first5": pb,
                      "gated": (name in p["rewards"] or name == "good_mv") and pb >= p["gate"],
                      "rises": bool(d.get(f"R1_rise/{name}", False)), "falls": bool(d.get(f"R2_fall/{name}", False)),
                      "length_first_last": _first_last(records[name], "response/length_mean"),
                      "repetition_first_last": _first_last(records[name], "collapse/repetition_mean"),
                      "kl_k1_last10": float(np.mean([np.mean(C.curve(r, "kl_to_ref/k1_token_mean")[1][-10:])
                                                     for r in records[name]]))}
    intrinsic = [n for n in accs if n in p["rewards"] or n == "good_mv"]
    tested = [n for n in intrinsic if rows[n]["gated"]]
    if not tested:
        verdict = "untestable (no intrinsic reward passes the gate)"
    elif not all(rows[n]["rises"] for n in tested):
        verdict = "not reproduced (a gated reward does not rise: " + ", ".join(
            n for n in tested if not rows[n]["rises"]) + ")"
    elif all(rows[n]["falls"] for n in tested):
        verdict = "reproduced"
    elif any(rows[n]["falls"] for n in tested):
        verdict = "rise reproduced; fall partly (" + ", ".join(n for n in tested if rows[n]["falls"]) + ")"
    else:
        verdict = "rise reproduced, fall untestable at this budget"
    stat = "; ".join(f"{n}: rise {s['arms'][n]['rise']['mean']:+.3f} [{s['arms'][n]['rise']['ci95'][0]:+.3f}, "
                     f"{s['arms'][n]['rise']['ci95'][1]:+.3f}]" for n in tested)
    return {"params": p, "four_arms_params": fa, "eval_steps": steps, "summary": s, "decision": d, "rows": rows,
            "tested": tested, "verdict": verdict, "statistic": stat, "per_seed": per_seed}


def markdown_e1(r: dict, minutes: float) -> str:
    import four_arms as F

    fa, s = r["four_arms_params"], r["summary"]
    lines = [f"# E1 — finding 1: intrinsic rewards rise, then fall? (`{r['params']['rung']}`)", "",
             f"{fa['seeds']} seeds × {fa['steps']} steps of {fa['prompts']}×{fa['samples']}, lr {fa['lr']}; held-out "
             f"avg@{fa['eval_k']} (T = 1) on {fa['eval_problems']} problems every {fa['eval_every']} steps; ± SE and "
             f"[95% CI] from a crossed bootstrap over seeds × problems. Majority-vote, ground-truth and random arms "
             f"are four_arms' runs. Wall-clock {minutes:.1f} min (reused runs count 0).", "",
             "| arm | point-biserial (steps 1-5) | gated | rise | fall | change | rises (R1) | falls (R2) | length "
             "first → last 10 steps | repetition | KL k1 (last 10) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        a = s["arms"][name]
        lines.append(f"| {name} | {row['point_biserial_first5']:.3f} | {row['gated']} | {F.fmt_ci(a['rise'])} | "
                     f"{F.fmt_ci(a['fall'])} | {F.fmt_ci(a['change'])} | {row['rises']} | {row['falls']} | "
                     f"{row['length_first_last'][0]:.1f} → {row['length_first_last'][1]:.1f} | "
                     f"{row['repetition_first_last'][0]:.3f} → {row['repetition_first_last'][1]:.3f} | "
                     f"{row['kl_k1_last10']:.4f} |")
    lines += ["", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e1(out: Path, r: dict) -> str:
    return plot_arm_curves(
        out, "e1", r["eval_steps"], r["summary"]["arms"],
        lambda name, a: f"{name}: rise {a['rise']['mean']:+.3f}, change {a['change']['mean']:+.3f}",
        f"E1 — intrinsic rewards on {r['params']['rung']} at lr {r['four_arms_params']['lr']}",
        "held-out avg@8 (T = 1), mean over seeds ± 2 SE", 0.6)


# ---------------------------------------------------------------------------------------------- E1b
E1B = dict(rung="ladder_v2/q0.05", rewards=("majority_vote", "trajectory_entropy", "random"), steps=1000, prompts=8,
           samples=8, eval_every=100, checkpoint_every=250)
E1B_SMOKE = dict(E1B, rewards=("majority_vote", "random"), steps=4, eval_every=2, checkpoint_every=2)
E1C = dict(E1B, name="e1c", rewards=("probability", "token_entropy", "random"), random_from="e1b")
E1C_SMOKE = dict(E1B_SMOKE, name="e1c", rewards=("probability", "random"), random_from="e1b")
E1D = dict(E1B, name="e1d", steps=2000, extend_from="e1b")
E1D_SMOKE = dict(E1B_SMOKE, name="e1d", steps=6, extend_from="e1b")


def run_e1b(p: dict, runs: Path) -> dict:
    import four_arms as F

    fa = dict(four_arms_params(p["steps"] < 100), steps=p["steps"], prompts=p["prompts"], samples=p["samples"],
              eval_every=p["eval_every"])
    accs, records = {}, {}
    ref = None
    for seed in range(fa["seeds"]):  # seed-major: every arm has seed 0 before any has seed 1
        for reward in p["rewards"]:
            name = RANDOM_NAME if reward == "random" else reward
            cfg = F.run_config(C.model_path(p["rung"]), reward, seed, fa)
            cfg.train.checkpoint_every = p["checkpoint_every"]
            # E1c: the random control is E1b's runs (the same configuration: reused by run_training)
            home = runs.parent / p["random_from"] if reward == "random" and p.get("random_from") else runs
            # E1d: each run continues E1b's run of the same reward and seed from its last checkpoint
            source = runs.parent / p["extend_from"] / f"{reward}_s{seed}" if p.get("extend_from") else None
            got, steps, acc, _, ids = F.train_and_read(cfg, home / f"{reward}_s{seed}", ref, continue_from=source)
            ref = ref or (steps, ids)
            accs.setdefault(name, []).append(acc)
            records.setdefault(name, []).append(got["records"])
            print(f"{p.get('name', 'e1b')} {reward} seed {seed} done", file=sys.stderr, flush=True)
    return analyse_e1b(p, fa, {k: np.stack(v) for k, v in accs.items()}, records, ref[0])


def analyse_e1b(p: dict, fa: dict, accs: dict, records: dict, steps: list[int]) -> dict:
    import four_arms as F

    s = F.summarize_arms(accs, steps, fa["boot"])
    d = F.decide(s)
    rows = {}
    for name in accs:
        rows[name] = {"rises": bool(d.get(f"R1_rise/{name}", False)), "falls": bool(d.get(f"R2_fall/{name}", False)),
                      **{f"{k}_first_last": _first_last(records[name], key, 50) for k, key in (
                          ("kl_k1", "kl_to_ref/k1_token_mean"), ("reward_accuracy", "urlvr/reward_accuracy"),
                          ("length", "response/length_mean"), ("repetition", "collapse/repetition_mean"))}}
        rows[name]["verdict"] = ("rises then falls" if rows[name]["rises"] and rows[name]["falls"] else
                                 f"rises, no fall within {p['steps']} steps" if rows[name]["rises"] else
                                 "does not rise")
    tested = [n for n in accs if n != RANDOM_NAME]
    if all(rows[n]["rises"] and rows[n]["falls"] for n in tested):
        verdict = "reproduced (rise and fall)"
    elif all(rows[n]["rises"] for n in tested) and not any(rows[n]["falls"] for n in tested):
        verdict = f"rise reproduced, fall not reproduced at {p['steps']} steps"
    else:
        verdict = "partly: " + "; ".join(f"{n} {rows[n]['verdict']}" for n in tested)
    stat = "; ".join(f"{n}: rise {s['arms'][n]['rise']['mean']:+.3f}, fall {F.fmt_ci(s['arms'][n]['fall'])}"
                     for n in tested)
    return {"params": p, "four_arms_params": fa, "eval_steps": steps, "summary": s, "decision": d, "rows": rows,
            "verdict": verdict, "statistic": stat}


def markdown_e1b(r: dict, minutes: float) -> str:
    import four_arms as F

    fa, s = r["four_arms_params"], r["summary"]
    name = r["params"].get("name", "e1b")
    lines = [f"# {name.capitalize()} — finding 1's fall at {fa['steps']} steps (`{r['params']['rung']}`)", "",
             f"{fa['seeds']} seeds × {fa['steps']} steps of {fa['prompts']}×{fa['samples']}, lr {fa['lr']}; held-out "
             f"avg@{fa['eval_k']} (T = 1) on {fa['eval_problems']} problems every {fa['eval_every']} steps; ± SE and "
             f"[95% CI] from a crossed bootstrap over seeds × problems. Wall-clock {minutes:.1f} min.", "",
             "| arm | start | rise | fall | change | verdict | KL k1 first → last 50 steps | reward accuracy | length "
             "| repetition |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        a = s["arms"][name]
        fl = lambda k: f"{row[k][0]:.3f} → {row[k][1]:.3f}"  # noqa: E731
        lines.append(f"| {'random' if name == RANDOM_NAME else name} | {a['start']['mean']:.3f} | "
                     f"{F.fmt_ci(a['rise'])} | {F.fmt_ci(a['fall'])} | {F.fmt_ci(a['change'])} | "
                     f"{row['verdict'] if name != RANDOM_NAME else 'control'} | {fl('kl_k1_first_last')} | "
                     f"{fl('reward_accuracy_first_last')} | {fl('length_first_last')} | "
                     f"{fl('repetition_first_last')} |")
    lines += ["", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e1b(out: Path, r: dict) -> str:
    name = r["params"].get("name", "e1b")
    return plot_arm_curves(
        out, name, r["eval_steps"], r["summary"]["arms"],
        lambda arm, a: f"{'random' if arm == RANDOM_NAME else arm}: rise {a['rise']['mean']:+.3f}, "
                       f"fall {a['fall']['mean']:+.3f}",
        f"{name.capitalize()} — {r['four_arms_params']['steps']} steps on {r['params']['rung']}: "
        f"{r['verdict']}", "held-out avg@8 (T = 1), mean over seeds ± 2 SE", 4)


# ---------------------------------------------------------------------------------------------- E2
Q_RUNGS = ("q0.05", "q0.2", "q0.35", "q0.5", "q0.65", "q0.8", "q0.95")
E2 = dict(rungs=Q_RUNGS + ("inflated",), gt_seeds=2, probe_seeds=3, probe_steps=150, probe_lr=3e-4, probe_prompts=8,
          probe_samples=8, window=5, four_arms_runs=str(C.RUNS / "four_arms_v2"))
E2_SMOKE = dict(E2, rungs=("q0.05", "q0.8"), gt_seeds=1, probe_seeds=1, probe_steps=3, four_arms_runs=None, smoke=True)
E2B = dict(E2, name="e2b", ladder="ladder_v3", rungs=Q_RUNGS, gt_seeds=3, gt_eval_seed=0, probe_steps=300,
           four_arms_runs=None)
E2B_SMOKE = dict(E2B, rungs=("q0.05", "q0.8"), gt_seeds=1, probe_seeds=1, probe_steps=3, smoke=True)
E2C = dict(E2B, name="e2c", probe_seeds=10, control_seeds=3, runs_from="e2b")
E2C_SMOKE = dict(E2B_SMOKE, name="e2c", probe_seeds=2, control_seeds=1, runs_from="e2b")


def best_constant_accuracy(rung: str, size: int = 4096) -> float:
    """f0: the accuracy of the best constant-answer policy on the rung's training problems."""
    from collections import Counter

    from urlvr_jax.data.tasks import make_task
    from urlvr_jax.models.paths import resolve_model_path

    task = make_task("synthetic/arithmetic", split="train", size=size, seed=0,
                     model_dir=resolve_model_path(C.model_path(rung)))
    counts = Counter(p.answer for p in task.problems)
    return counts.most_common(1)[0][1] / len(task.problems)


def sustained_below(values, threshold: float, window: int) -> int | None:
    """The first step (1-based) from which `window` consecutive values are < threshold."""
    run = 0
    for i, v in enumerate(values):
        run = run + 1 if v < threshold else 0
        if run == window:
            return i - window + 2
    return None


RHO_CRIT = 1 - 6 * 12 / (7 * 48)  # Spearman's two-sided 5% critical value at n = 7 (0.786 in the tables)


def spearman_exact(x, y) -> tuple[float, float]:
    """Spearman's rho and its exact two-sided permutation p (mcs_vs_gt_gain.spearman; nan when a side is constant)."""
    s = mcs_vs_gt_gain.spearman(x, y)
    return s["rho"], s["p_exact"]


def spearman_over_rungs(x, y) -> tuple[float, float]:
    """spearman_exact, or (nan, nan) with fewer than 3 rungs (smoke runs)."""
    return spearman_exact(x, y) if len(x) > 2 else (float("nan"), float("nan"))


def e2_probe_arms(p: dict) -> list[tuple[str, str]]:
    return [(r, "majority_vote") for r in p["rungs"] if r != "inflated"] + [("q0.05", "random")]


def e2_probe_config(p: dict, path: str, reward: str, seed: int, threshold: float):
    return C.experiment_config(
        path, reward, steps=p["probe_steps"], prompts=p["probe_prompts"], samples=p["probe_samples"],
        lr=p["probe_lr"], seed=seed,
        **{"train.stop_at_collapse": True, "train.mcs_threshold": threshold, "train.mcs_window": p["window"],
           "train.progress": False, "train.pistar_diagnostics": False, "train.checkpoint_every": p["probe_steps"]})


def run_e2(p: dict, runs: Path) -> dict:
    return analyse_e2(p, *collect_e2(p, runs))


def collect_e2(p: dict, runs: Path):
    """Train (or reuse) E2's GT runs and probes; probes run seed by seed across the rungs, so a stopped
    experiment leaves the same number of seeds on every rung. p["runs_from"]: another experiment's run folder
    (E2c extends E2b's runs)."""
    import four_arms as F

    if p.get("runs_from"):
        runs = runs.parent / p["runs_from"]
    ladder = p.get("ladder", "ladder_v2")
    fa = dict(four_arms_params(p.get("smoke", False)))
    fa_gt = dict(fa, eval_every=fa["steps"])
    f0 = best_constant_accuracy(C.model_path(f"{ladder}/q0.05"))
    thr = f0 + 0.01
    gains, probes = {}, {}
    for rung in p["rungs"]:
        path = C.model_path(f"{ladder}/{rung}")
        per = []
        for seed in range(p["gt_seeds"]):
            if rung == "q0.05" and p["four_arms_runs"]:
                wd, cfg = Path(p["four_arms_runs"]) / f"good_gt_s{seed}", F.run_config(path, "ground_truth", seed, fa)
            else:
                wd, cfg = runs / f"gt_{rung}_s{seed}", F.run_config(path, "ground_truth", seed, fa_gt)
                if p.get("gt_eval_seed") is not None:  # the same evaluation draws at step 0 and at the end
                    cfg.train.eval_seed = int(p["gt_eval_seed"])
            C.run_training(cfg, wd)
            steps, acc, _, ids = F.read_evals(wd)
            per.append(acc[[0, steps.index(fa["steps"])]])
            print(f"{p.get('name', 'e2')} gt {rung} seed {seed} done", file=sys.stderr, flush=True)
        gains[rung] = np.stack(per)  # [S, 2, P]
    for seed in range(p["probe_seeds"]):
        for rung, reward in e2_probe_arms(p):
            if reward == "random" and seed >= p.get("control_seeds", p["probe_seeds"]):
                continue
            path = C.model_path(f"{ladder}/{rung}")
            out = probes.setdefault(f"{reward}/{rung}", [])
            got = C.run_training(e2_probe_config(p, path, reward, seed, thr), runs / f"probe_{reward}_{rung}_s{seed}")
            ra = C.curve(got["records"], "urlvr/reward_accuracy")[1]
            acc = C.curve(got["records"], "urlvr/gt_reward_mean")[1]
            length = C.curve(got["records"], "response/length_mean")[1]
            out.append({"mcs": sustained_below(ra, thr, p["window"]), "mcs_raw": sustained_below(ra, thr, 1),
                        "acc_collapse": sustained_below(acc, thr, p["window"]), "steps_run": int(len(ra)),
                        "ra_first5": float(np.mean(ra[:5])), "acc_first5": float(np.mean(acc[:5])),
                        "ra_last10": float(np.mean(ra[-10:])), "acc_last10": float(np.mean(acc[-10:])),
                        "length_first5_last5": [float(np.mean(length[:5])), float(np.mean(length[-5:]))]})
            print(f"{p.get('name', 'e2')} probe {reward} {rung} seed {seed}: {out[-1]}", file=sys.stderr, flush=True)
    return fa, gains, probes, f0


def analyse_e2(p, fa, gains, probes, f0) -> dict:
    censor = p["probe_steps"] + 1
    rng = np.random.default_rng(0)
    g = {}
    for rung, a in gains.items():
        S, _, P = a.shape
        point = float((a[:, 1] - a[:, 0]).mean())
        boots = []
        for _ in range(fa["boot"]):
            si, pi = rng.integers(0, S, S), rng.integers(0, P, P)
            b = a[si][:, :, pi]
            boots.append((b[:, 1] - b[:, 0]).mean())
        g[rung] = {"gain": point, "se": float(np.std(boots, ddof=1)),
                   "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
                   "start": float(a[:, 0].mean()), "end": float(a[:, 1].mean())}
    med = lambda runs, k: float(np.median([censor if x[k] is None else x[k] for x in runs]))  # noqa: E731
    mcs = {k: med(v, "mcs") for k, v in probes.items()}
    acc_collapse = {k: med(v, "acc_collapse") for k, v in probes.items()}
    qr = [r for r in Q_RUNGS if r in g and f"majority_vote/{r}" in mcs]
    gate_span = (max(g[r]["gain"] for r in qr) - min(g[r]["gain"] for r in qr)) / max(
        np.mean([g[r]["se"] for r in qr]), 1e-12)
    rho, pval = spearman_over_rungs([mcs[f"majority_vote/{r}"] for r in qr], [g[r]["gain"] for r in qr])
    prior = ladder_prior(p.get("ladder", "ladder_v2"))
    rho_pk, p_pk = spearman_over_rungs([prior[r]["pass"] - prior[r]["avg"] for r in qr],
                                       [g[r]["gain"] for r in qr])
    bad = [r for r in qr if prior[r]["maj"] < 0.5]
    ctrl = acc_collapse.get("random/q0.05")
    control_ok = ctrl is not None and all(ctrl > acc_collapse[f"majority_vote/{r}"] for r in bad)
    collapsed = sum(x["mcs"] is not None for r in qr for x in probes[f"majority_vote/{r}"])
    ra_end = {r: float(np.median([x.get("ra_last10", np.nan) for x in probes[f"majority_vote/{r}"]])) for r in qr}
    rho_ra, p_ra = spearman_over_rungs([ra_end[r] for r in qr], [g[r]["gain"] for r in qr])
    if collapsed == 0:
        verdict = f"untestable at this budget (no majority-vote probe reached the MCS in {p['probe_steps']} steps)"
    elif gate_span < 6:
        verdict = f"uninformative (GT gains span {gate_span:.1f} SE < 6)"
    elif rho >= RHO_CRIT - 1e-9 and control_ok:
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    stat = (f"{collapsed} of {sum(len(probes[f'majority_vote/{r}']) for r in qr)} probes reached the MCS; "
            f"Spearman(MCS, GT gain) {rho:+.3f} (exact p {pval:.3f}) over {len(qr)} rungs; pass@16 − avg@16 vs GT "
            f"gain {rho_pk:+.3f}; GT gains span {gate_span:.1f} SE")
    return {"params": p, "f0": f0, "threshold": f0 + 0.01, "gt_gain": g, "probes": probes, "median_mcs": mcs,
            "median_acc_collapse": acc_collapse, "gate_span_se": float(gate_span), "spearman": rho, "spearman_p": pval,
            "spearman_passk": rho_pk, "spearman_passk_p": p_pk, "control_ok": bool(control_ok),
            "probes_collapsed": int(collapsed), "ra_last10_median": ra_end, "spearman_ra_end": rho_ra,
            "spearman_ra_end_p": p_ra,
            "prior": {r: prior.get(r) for r in g}, "verdict": verdict, "statistic": stat}


def run_e2c(p: dict, runs: Path) -> dict:
    return analyse_e2c(p, *collect_e2(p, runs))


def analyse_e2c(p, fa, gains, probes, f0, boot: int = 2000) -> dict:
    """E2c's rule (the docstring): Spearman(RMST, GT gain) over the q-rungs, the control against the collapsed
    probes' median MCS; E2's statistics on the same probes are kept under e2_*."""
    from scipy.stats import spearmanr

    r = analyse_e2(p, fa, gains, probes, f0)
    censor = p["probe_steps"] + 1
    qr = [q for q in Q_RUNGS if q in r["gt_gain"] and f"majority_vote/{q}" in probes]
    mcs = {q: np.array([censor if x["mcs"] is None else x["mcs"] for x in probes[f"majority_vote/{q}"]], float)
           for q in qr}
    gain = [r["gt_gain"][q]["gain"] for q in qr]
    rmst = {q: float(v.mean()) for q, v in mcs.items()}
    rate = {}
    for q, v in mcs.items():
        k, n = int((v < censor).sum()), len(v)
        rate[q] = {"collapsed": k, "n": n, "rate": k / n, "ci95": list(exact_binomial_ci(k, n))}
    rho, pval = spearman_over_rungs([rmst[q] for q in qr], gain)
    rho_rate, p_rate = spearman_over_rungs([1 - rate[q]["rate"] for q in qr], gain)
    rng, rhos = np.random.default_rng(0), []
    for _ in range(boot):
        x = [mcs[q][rng.integers(0, len(mcs[q]), len(mcs[q]))].mean() for q in qr]
        rhos.append(spearmanr(x, gain).statistic if np.ptp(x) > 0 else np.nan)
    rhos = np.asarray(rhos, float)
    lo, hi = (np.nanpercentile(rhos, [2.5, 97.5]) if np.isfinite(rhos).any() else (np.nan, np.nan))
    collapsed = [x["mcs"] for q in qr for x in probes[f"majority_vote/{q}"] if x["mcs"] is not None]
    ctrl = r["median_acc_collapse"].get("random/q0.05")
    control_ok = bool(collapsed) and ctrl is not None and ctrl > float(np.median(collapsed))
    if not collapsed:
        verdict = f"untestable at this budget (no majority-vote probe reached the MCS in {p['probe_steps']} steps)"
    elif rho >= RHO_CRIT - 1e-9 and control_ok:
        verdict = "reproduced"
    else:
        verdict = "not reproduced"
    stat = (f"{len(collapsed)} of {sum(len(v) for v in mcs.values())} probes reached the MCS; Spearman(RMST, GT "
            f"gain) {rho:+.3f} (exact p {pval:.3f}; seed bootstrap 95% [{lo:+.2f}, {hi:+.2f}]) over {len(qr)} rungs; "
            f"1 − collapse rate vs GT gain {rho_rate:+.3f}; GT gains span {r['gate_span_se']:.1f} SE")
    r.update(e2_verdict=r["verdict"], e2_statistic=r["statistic"], e2_control_ok=r["control_ok"], rmst=rmst,
             collapse_rate=rate, spearman_rmst=rho, spearman_rmst_p=pval, spearman_rate=rho_rate,
             spearman_rate_p=p_rate, spearman_rmst_boot95=[float(lo), float(hi)],
             collapsed_median_mcs=float(np.median(collapsed)) if collapsed else None, control_ok=control_ok,
             verdict=verdict, statistic=stat)
    return r


def markdown_e2c(r: dict, minutes: float) -> str:
    p = r["params"]
    head = markdown_e2(dict(r, verdict=f"{r['e2_verdict']} (E2's median-MCS rule, reported; E2c's rule below)",
                            statistic=r["e2_statistic"], control_ok=r["e2_control_ok"]), minutes)
    lines = ["", f"## E2c's rule: the restricted mean MCS over {p['probe_seeds']} seeds", "",
             f"RMST = mean over seeds of min(MCS, {p['probe_steps'] + 1}); collapse rate with an exact 95% CI.", "",
             "| rung | GT gain | probes that reached the MCS | collapse rate [95% CI] | RMST |",
             "|---|---|---|---|---|"]
    for q, c in r["collapse_rate"].items():
        lines.append(f"| {q} | {r['gt_gain'][q]['gain']:+.3f} | {c['collapsed']}/{c['n']} | {c['rate']:.2f} "
                     f"[{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] | {r['rmst'][q]:.1f} |")
    ctrl = r["median_acc_collapse"].get("random/q0.05")
    lines += ["", f"Control: the random reward's median accuracy-collapse step {ctrl} vs the median MCS of the "
              f"probes that collapsed {r['collapsed_median_mcs']}: {'holds' if r['control_ok'] else 'fails'}.", "",
              r["statistic"], "", f"**Verdict: {r['verdict']}**", ""]
    return head + "\n".join(lines) + "\n"


def plot_e2c(out: Path, r: dict) -> str:
    return plot_e2(out, dict(r, median_mcs={f"majority_vote/{q}": v for q, v in r["rmst"].items()},
                             spearman=r["spearman_rmst"]),
                   xlabel=f"RMST: mean over seeds of min(MCS, {r['params']['probe_steps'] + 1}) (majority vote, "
                          f"lr {r['params']['probe_lr']})", point_label="mean of seeds (RMST)")


def ladder_prior(ladder: str = "ladder_v2") -> dict:
    """avg@16 / maj@16 / pass@16 of each rung of a v2-style ladder (its measured prior, its README table)."""
    from urlvr_jax.models.paths import resolve_model_path

    out = {}
    root = Path(resolve_model_path(f"{ladder}/q0.05")).parent
    for line in (root / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 7 and (cells[0] in Q_RUNGS or cells[0] == "inflated") and cells[0] not in out:
            out[cells[0]] = {"avg": float(cells[3]), "maj": float(cells[4]), "pass": float(cells[5])}
    return out


def markdown_e2(r: dict, minutes: float) -> str:
    p = r["params"]
    name, ladder = p.get("name", "e2"), p.get("ladder", "ladder_v2")
    paired = "" if p.get("gt_eval_seed") is None else ", the same evaluation draws at both (train.eval_seed)"
    extra = all("length_first5_last5" in x for v in r["probes"].values() for x in v)  # recorded since E2b
    lines = [f"# {name.capitalize()} — finding 2: does the Model Collapse Step rank priors like their GT gain?", "",
             f"Rungs: {ladder}. GT gain: ground-truth reward, 16×8, 120 steps, lr {LR}, {p['gt_seeds']} seeds, "
             f"held-out avg@8 on 256 problems at steps 0 and 120{paired} (± SE, [95% CI]: crossed bootstrap). "
             f"MCS probe: majority vote, "
             f"{p['probe_prompts']}×{p['probe_samples']}, lr {p['probe_lr']}, ≤ {p['probe_steps']} steps, "
             f"{p['probe_seeds']} seeds; MCS = reward accuracy < f0 + 0.01 = {r['threshold']:.3f} for {p['window']} "
             f"steps (f0 = {r['f0']:.3f}, best constant answer); never = {p['probe_steps'] + 1}. "
             f"Wall-clock {minutes:.1f} min.", "",
             "| rung | base avg@16 / maj@16 / pass@16 | GT gain | median MCS (seeds) | median accuracy-collapse step |"
             + (" raw first crossing (seeds) | response length, first 5 → last 5 steps (seeds) |" if extra else ""),
             "|---|---|---|---|---|" + ("---|---|" if extra else "")]
    for rung, g in r["gt_gain"].items():
        pr = r["prior"].get(rung) or {}
        k = f"majority_vote/{rung}"
        seeds = ", ".join("never" if x["mcs"] is None else str(x["mcs"]) for x in r["probes"].get(k, []))
        row = (f"| {rung} | {pr.get('avg', float('nan')):.3f} / {pr.get('maj', float('nan')):.3f} / "
               f"{pr.get('pass', float('nan')):.3f} | {g['gain']:+.3f} ± {g['se']:.3f} [{g['ci95'][0]:+.3f}, "
               f"{g['ci95'][1]:+.3f}] | {r['median_mcs'].get(k, '—')} ({seeds}) | "
               f"{r['median_acc_collapse'].get(k, '—')} |")
        if extra:
            runs = r["probes"].get(k, [])
            row += (" " + ", ".join("never" if x.get("mcs_raw") is None else str(x["mcs_raw"]) for x in runs) + " | "
                    + ", ".join(f"{a:.0f} → {b:.0f}" for a, b in (x["length_first5_last5"] for x in runs)) + " |")
        lines.append(row)
    ctrl = r["probes"].get("random/q0.05", [])
    mv = {k.split("/")[1]: v for k, v in r["probes"].items() if k.startswith("majority_vote/")}
    lines += ["", "Probes that reached the MCS, per rung: " + ", ".join(
        f"{rung} {sum(x['mcs'] is not None for x in v)}/{len(v)}" for rung, v in mv.items()) + "."]
    lines += ["", "Post hoc (descriptive, not pre-registered): median reward accuracy over each probe's last 10 "
              "steps — " + ", ".join(f"{k} {v:.2f}" for k, v in r["ra_last10_median"].items())
              + f"; Spearman(final reward accuracy, GT gain) {r['spearman_ra_end']:+.3f} (exact p "
              f"{r['spearman_ra_end_p']:.3f}; a slower decline for a better prior gives +1)."]
    lines += ["", f"Random-reward control on q0.05 at the probe setting: accuracy-collapse steps "
              f"{[x['acc_collapse'] for x in ctrl]} (median {r['median_acc_collapse'].get('random/q0.05')}); "
              f"later than every bad-prior (maj@16 < 0.5) majority-vote probe: {r['control_ok']}.", "",
              f"{r['statistic']}", "", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e2(out: Path, r: dict, xlabel: str | None = None, point_label: str = "median of seeds") -> str:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for rung, g in r["gt_gain"].items():
        k = f"majority_vote/{rung}"
        if k not in r["median_mcs"]:
            continue
        ax.errorbar(r["median_mcs"][k], g["gain"], yerr=2 * g["se"], marker="o", capsize=3, color="C0",
                    label=point_label if rung == Q_RUNGS[0] else None)
        seeds = [r["params"]["probe_steps"] + 1 if x["mcs"] is None else x["mcs"] for x in r["probes"][k]]
        ax.scatter(seeds, [g["gain"]] * len(seeds), marker="x", color="0.5", s=18, zorder=3,
                   label="one seed" if rung == Q_RUNGS[0] else None)
        ax.annotate(rung, (r["median_mcs"][k], g["gain"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel or f"median MCS (majority vote, lr {r['params']['probe_lr']}; "
                            f"{r['params']['probe_steps'] + 1} = never)")
    ax.set_ylabel("GT-RL gain, held-out avg@8 (± 2 SE)")
    name = r["params"].get("name", "e2")
    ax.set_title(f"{name.capitalize()} — Spearman {r['spearman']:+.2f} (paper: 1.0)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out, name)


# ---------------------------------------------------------------------------------------------- E3
E3 = dict(rung="ladder_v2/q0.05", sizes=(32, 128, 512, 2048), random_size=512, seeds=3, steps=200, prompts=8,
          samples=8, eval_every=100, eval_problems=256, eval_k=8, boot=2000, tail=20)
E3_SMOKE = dict(E3, sizes=(8, 32), random_size=32, seeds=1, steps=2, eval_every=1, eval_problems=16, eval_k=2,
                boot=100, tail=1)
E3B = dict(E3, name="e3b", reward="token_entropy", sizes=(32, 128, 512, 4096), steps=1000, eval_every=100,
           checkpoint_every=250, reuse={4096: "e1c/token_entropy"})
E3B_SMOKE = dict(E3_SMOKE, name="e3b", reward="token_entropy", checkpoint_every=2)


def e3_config(p: dict, size: int, seed: int, reward: str = "majority_vote"):
    return C.experiment_config(
        p["rung"], reward, steps=p["steps"], prompts=p["prompts"], samples=p["samples"], lr=LR, seed=seed,
        **{"data.synthetic_size": size, "train.eval_every": p["eval_every"], "train.eval_limit": p["eval_problems"],
           "train.eval_k": p["eval_k"], "train.eval_temperature": 1.0, "train.eval_top_p": 1.0,
           "train.kl_metrics": True, "train.pistar_diagnostics": False,
           "train.checkpoint_every": p.get("checkpoint_every", p["steps"]), "train.progress": False})


def run_e3(p: dict, runs: Path) -> dict:
    import four_arms as F

    accs, kl, ra, ref = {}, {}, {}, None
    for size in p["sizes"]:
        per, k1, r_ = [], [], []
        for seed in range(p["seeds"]):
            reused = (p.get("reuse") or {}).get(size)  # E3b: E1c's runs are this size's (the same configuration)
            wd = runs.parent / f"{reused}_s{seed}" if reused else runs / f"size{size}_s{seed}"
            got, steps, acc, _, ids = F.train_and_read(e3_config(p, size, seed, p.get("reward", "majority_vote")),
                                                       wd, ref)
            ref = ref or (steps, ids)
            per.append(acc)
            k1.append(float(np.mean(C.curve(got["records"], "kl_to_ref/k1_token_mean")[1][-p["tail"]:])))
            r_.append(float(np.mean(C.curve(got["records"], "urlvr/reward_accuracy")[1][-p["tail"]:])))
            print(f"{p.get('name', 'e3')} size {size} seed {seed}: KL {k1[-1]:.4f}, RA {r_[-1]:.3f}", file=sys.stderr,
                  flush=True)
        accs[size], kl[size], ra[size] = np.stack(per), np.array(k1), np.array(r_)
    rnd_acc, rnd_kl = [], []
    for seed in range(p["seeds"]):
        wd = runs / f"random{p['random_size']}_s{seed}"
        got, _, acc, _, _ = F.train_and_read(e3_config(p, p["random_size"], seed, "random"), wd, ref)
        rnd_acc.append(acc)
        rnd_kl.append(float(np.mean(C.curve(got["records"], "kl_to_ref/k1_token_mean")[1][-p["tail"]:])))
        print(f"e3 random seed {seed}: KL {rnd_kl[-1]:.4f}", file=sys.stderr, flush=True)
    return analyse_e3(p, accs, kl, ra, {"acc": np.stack(rnd_acc), "kl": np.array(rnd_kl)})


def analyse_e3(p, accs, kl, ra, random: dict | None = None) -> dict:
    import four_arms as F
    from scipy.stats import fisher_exact

    sizes = list(accs)
    change = {}
    boot = F.crossed_bootstrap({str(k): v for k, v in accs.items()},
                               lambda k, a: (a[:, -1] - a[:, 0]).mean(), p["boot"])
    for size in sizes:
        a = accs[size]
        b = boot[str(size)]
        change[size] = {"mean": float((a[:, -1] - a[:, 0]).mean()), "se": float(b.std(ddof=1)),
                        "ci95": [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))]}
    collapsed = {size: [bool(accs[size][s, -1].mean() < accs[size][s, 0].mean() - 0.10 or ra[size][s] < 0.3)
                        for s in range(accs[size].shape[0])] for size in sizes}
    small = [c for sz in sizes if sz <= 128 for c in collapsed[sz]]
    large = [c for sz in sizes if sz >= 512 for c in collapsed[sz]]
    fisher_p = float(fisher_exact([[sum(large), len(large) - sum(large)], [sum(small), len(small) - sum(small)]],
                                  alternative="greater")[1]) if small and large else float("nan")
    rng = np.random.default_rng(0)
    lo_s, hi_s = min(sizes), (512 if 512 in kl else max(sizes))
    ratios = []
    for _ in range(p["boot"]):
        a = kl[hi_s][rng.integers(0, kl[hi_s].size, kl[hi_s].size)].mean()
        b = kl[lo_s][rng.integers(0, kl[lo_s].size, kl[lo_s].size)].mean()
        ratios.append(a / b if b > 0 else np.nan)
    ratio = float(kl[hi_s].mean() / kl[lo_s].mean()) if kl[lo_s].mean() > 0 else float("nan")
    ratio_ci = [float(np.nanpercentile(ratios, 2.5)), float(np.nanpercentile(ratios, 97.5))]
    any_collapse = any(small) or any(large)
    rnd = None
    if random is not None:
        a = random["acc"]
        rnd = {"collapsed": [bool(a[s, -1].mean() < a[s, 0].mean() - 0.10) for s in range(a.shape[0])],
               "change": float((a[:, -1] - a[:, 0]).mean()), "kl_k1_last": random["kl"].tolist()}
    if rnd is not None and sum(rnd["collapsed"]) * 3 >= 2 * len(rnd["collapsed"]):
        verdict = "not attributable (the random-reward arm collapses too: drift)"
    elif any_collapse:
        ok = not any(small) and sum(large) >= 4
        verdict = "reproduced" if ok else "not reproduced"
    elif ratio_ci[0] > 1:
        verdict = "KL part reproduced; collapse untestable at this budget (no run collapsed)"
    elif ratio_ci[1] <= 1:
        verdict = "not reproduced (KL ratio not above 1; no run collapsed)"
    else:
        verdict = "untestable at this budget (no run collapsed; KL ratio CI spans 1)"
    stat = (f"collapses {sum(small)}/{len(small)} at <= 128, {sum(large)}/{len(large)} at >= 512; KL ratio "
            f"{hi_s}/{lo_s} {ratio:.2f} [{ratio_ci[0]:.2f}, {ratio_ci[1]:.2f}] (paper ~2); held-out change "
            + ", ".join(f"{sz}: {change[sz]['mean']:+.3f}" for sz in sizes))
    return {"params": p, "sizes": sizes, "change": change, "collapsed": collapsed, "fisher_p": fisher_p,
            "kl_k1_last": {sz: kl[sz].tolist() for sz in sizes}, "ra_last": {sz: ra[sz].tolist() for sz in sizes},
            "kl_ratio": ratio, "kl_ratio_ci95": ratio_ci, "kl_ratio_sizes": [hi_s, lo_s],
            "start": float(np.mean([accs[sz][:, 0].mean() for sz in sizes])), "random": rnd, "verdict": verdict,
            "statistic": stat}


def markdown_e3(r: dict, minutes: float) -> str:
    p = r["params"]
    lines = [f"# {p.get('name', 'e3').capitalize()} — finding 3: does the training-set size decide collapse?", "",
             f"`{p['rung']}`, {p.get('reward', 'majority_vote')}, {p['prompts']}×{p['samples']}, {p['steps']} steps, "
             f"lr {LR}, "
             f"{p['seeds']} seeds per size; held-out avg@{p['eval_k']} (T = 1) on {p['eval_problems']} problems; "
             f"KL k1 per token and reward accuracy over the last {p['tail']} steps. Wall-clock {minutes:.1f} min.", "",
             "| prompts | held-out change (± SE, 95% CI) | collapsed (per seed) | KL k1 (per seed) | reward accuracy |",
             "|---|---|---|---|---|"]
    for sz in r["sizes"]:
        c = r["change"][sz]
        lines.append(f"| {sz} | {c['mean']:+.3f} ± {c['se']:.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | "
                     f"{r['collapsed'][sz]} | {', '.join(f'{x:.4f}' for x in r['kl_k1_last'][sz])} | "
                     f"{', '.join(f'{x:.2f}' for x in r['ra_last'][sz])} |")
    if r.get("random"):
        rd = r["random"]
        lines.append(f"| random reward, {r['params']['random_size']} | {rd['change']:+.3f} | {rd['collapsed']} | "
                     f"{', '.join(f'{x:.4f}' for x in rd['kl_k1_last'])} | — |")
    lines += ["", f"{r['statistic']}; Fisher one-sided p {r['fisher_p']:.3f}", "", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e3(out: Path, r: dict) -> str:
    plt = C.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    sz = r["sizes"]
    ax.errorbar(sz, [r["change"][s]["mean"] for s in sz], yerr=[2 * r["change"][s]["se"] for s in sz], marker="o",
                capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training prompts")
    ax.set_ylabel("held-out change, final − start (± 2 SE)")
    ax.grid(alpha=0.3)
    for s in sz:
        ax2.scatter([s] * len(r["kl_k1_last"][s]), r["kl_k1_last"][s], color="C1")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("training prompts")
    ax2.set_ylabel("KL k1 per token, last steps (per seed)")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{r['params'].get('name', 'e3').capitalize()} ({r['params'].get('reward', 'majority_vote')}) — "
                 f"{r['verdict']}", fontsize=9)
    return save_figure(fig, out, r["params"].get("name", "e3"))


# ---------------------------------------------------------------------------------------------- E4
E4 = dict(rung="ladder_v2/q0.05", n_test=40, seeds=3, steps=60, samples=8, eval_every=20, eval_problems=256,
          eval_k=8, boot=2000)
E4_SMOKE = dict(E4, n_test=4, seeds=1, steps=2, samples=2, eval_every=1, eval_problems=8, eval_k=2, boot=100)
E4B = dict(E4, name="e4b", n_test=128, prompts=32, steps=120, eval_every=40, eval_seed=0)
E4B_SMOKE = dict(E4_SMOKE, name="e4b", n_test=4, prompts=2, eval_seed=0)


def e4_config(p: dict, arm: str, seed: int):
    from urlvr_jax.data.tasks import RECIPE_EVAL_SEED

    data = ({"data.split": "train", "data.synthetic_seed": 0} if arm == "control"
            else {"data.split": "eval", "data.synthetic_seed": RECIPE_EVAL_SEED})
    return C.experiment_config(
        p["rung"], "random" if arm == "random" else "majority_vote", steps=p["steps"],
        prompts=p.get("prompts", p["n_test"]),
        samples=p["samples"], lr=LR, seed=seed,
        **data, **{"data.synthetic_size": p["n_test"], "train.eval_every": p["eval_every"],
                   "train.eval_limit": p["eval_problems"], "train.eval_k": p["eval_k"], "train.eval_temperature": 1.0,
                   "train.eval_top_p": 1.0, "train.kl_metrics": True, "train.pistar_diagnostics": False,
                   "train.checkpoint_every": p["steps"], "train.progress": False,
                   "train.eval_seed": p.get("eval_seed", -1)})


def run_e4(p: dict, runs: Path) -> dict:
    import four_arms as F

    accs, ref = {}, None
    for arm in ("ttt", "control", "random"):
        per = []
        for seed in range(p["seeds"]):
            _, steps, acc, _, ids = F.train_and_read(e4_config(p, arm, seed), runs / f"{arm}_s{seed}", ref)
            ref = ref or (steps, ids)
            per.append(acc)
            print(f"{p.get('name', 'e4')} {arm} seed {seed} done", file=sys.stderr, flush=True)
        accs[arm] = np.stack(per)
    # E must be the first n_test held-out problems: the TTT arm's training set is exactly those.
    from urlvr_jax.data.tasks import training_task
    from urlvr_jax.models.paths import resolve_model_path

    cfg = e4_config(p, "ttt", 0)
    e_ids = [q.id for q in training_task(cfg.data, resolve_model_path(cfg.model.path)).problems]
    if e_ids != ref[1][:p["n_test"]]:
        raise ValueError("E4: the TTT arm's training problems are not the first held-out problems")
    return analyse_e4(p, accs, steps)


def analyse_e4(p, accs, steps) -> dict:
    import four_arms as F

    n = p["n_test"]
    split = {"E": slice(0, n), "T": slice(n, None)}
    stats = {}
    for part, sl in split.items():
        sub = {arm: a[:, :, sl] for arm, a in accs.items()}
        b = F.crossed_bootstrap(sub, lambda k, a: (a[:, -1] - a[:, 0]).mean(), p["boot"])
        for arm, a in sub.items():
            stats[f"{arm}/{part}"] = {"mean": float((a[:, -1] - a[:, 0]).mean()), "se": float(b[arm].std(ddof=1)),
                                      "ci95": [float(np.percentile(b[arm], 2.5)), float(np.percentile(b[arm], 97.5))],
                                      "start": float(a[:, 0].mean()), "final": float(a[:, -1].mean()),
                                      "curve": a.mean(axis=(0, 2)).tolist()}
        for other in ("control", "random"):
            if part == "E" and other in sub:
                d = b["ttt"] - b[other]
                stats[f"ttt_minus_{other}/E"] = {
                    "mean": stats["ttt/E"]["mean"] - stats[f"{other}/E"]["mean"], "se": float(d.std(ddof=1)),
                    "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]}
    c1 = stats["ttt/E"]["ci95"][0] > 0
    c2 = stats["ttt/T"]["ci95"][0] > -0.02
    c3 = stats["ttt_minus_control/E"]["ci95"][0] > 0 and (
        "ttt_minus_random/E" not in stats or stats["ttt_minus_random/E"]["ci95"][0] > 0)
    verdict = "reproduced" if c1 and c2 and c3 else "not reproduced"
    f = lambda x: f"{x['mean']:+.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"  # noqa: E731
    stat = (f"ΔE (TTT) {f(stats['ttt/E'])}; ΔT (TTT) {f(stats['ttt/T'])}; ΔE TTT − control "
            f"{f(stats['ttt_minus_control/E'])}; paper: AMC23 and AIME24 both improve")
    return {"params": p, "eval_steps": steps, "stats": stats, "E_improves": c1, "T_not_hurt": c2,
            "beats_control": c3, "verdict": verdict, "statistic": stat}


def markdown_e4(r: dict, minutes: float) -> str:
    p = r["params"]
    st = r["stats"]
    f = lambda x: f"{x['mean']:+.3f} ± {x['se']:.3f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"  # noqa: E731
    name, per_step = p.get("name", "e4"), p.get("prompts", p["n_test"])
    batch = (f"all {p['n_test']} problems of the training set in every step ({per_step}×{p['samples']})"
             if per_step == p["n_test"] else
             f"{per_step} of the {p['n_test']} training problems per step ({per_step}×{p['samples']})")
    draws = (" Every evaluation uses the same draws (train.eval_seed 0)." if p.get("eval_seed", -1) >= 0 else "")
    lines = [f"# {name.capitalize()} — finding 4: test-time training", "",
             f"`{p['rung']}`, majority vote, {batch}, {p['steps']} steps, lr {LR}, {p['seeds']} seeds. "
             f"TTT arm: trained on "
             f"E = the first {p['n_test']} held-out problems; control: {p['n_test']} training-split problems. "
             f"Held-out avg@{p['eval_k']} (T = 1) on {p['eval_problems']} problems at steps {r['eval_steps']}; "
             f"change = final − start, crossed bootstrap over seeds × problems.{draws} Wall-clock {minutes:.1f} min.",
             "",
             "| arm | E: start → final | ΔE | T: start → final | ΔT |", "|---|---|---|---|---|"]
    for arm in [a for a in ("ttt", "control", "random") if f"{a}/E" in st]:
        e, t = st[f"{arm}/E"], st[f"{arm}/T"]
        lines.append(f"| {arm} | {e['start']:.3f} → {e['final']:.3f} | {f(e)} | {t['start']:.3f} → {t['final']:.3f} | "
                     f"{f(t)} |")
    lines += ["", f"ΔE, TTT − control: {f(st['ttt_minus_control/E'])}"
              + (f"; TTT − random: {f(st['ttt_minus_random/E'])}" if "ttt_minus_random/E" in st else ""), "",
              f"E improves: {r['E_improves']}; T not hurt (lower bound > −0.02): {r['T_not_hurt']}; TTT beats the "
              f"control on E: {r['beats_control']}", "", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e4(out: Path, r: dict) -> str:
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, arm in enumerate(a for a in ("ttt", "control", "random") if f"{a}/E" in r["stats"]):
        for part, ls in (("E", "-"), ("T", "--")):
            ax.plot(r["eval_steps"], r["stats"][f"{arm}/{part}"]["curve"], ls, color=f"C{i}", marker="o",
                    markersize=3, label=f"{arm}, {part}")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out avg@8 (T = 1), mean over seeds")
    ax.set_title(f"{r['params'].get('name', 'e4').capitalize()} — test-time training: {r['verdict']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out, r["params"].get("name", "e4"))


# ---------------------------------------------------------------------------------------------- E5
E5_ARMS = ("countdown", "self_verification", "frozen_verification", "trajectory_entropy", "random")
# Gate attempts, in order (the docstring: the instrument is calibrated before any RL run).
E5_ATTEMPTS = ({"recipe": "v1 (session 6: no number check, 8 verification pairs per problem, 1500 SFT steps)",
                "tpr": 0.704, "tnr": 0.646, "solve_avg": 0.117},
               {"recipe": "v2 (session 7: number check, 24 verification pairs per problem, swapped numbers 0.15, "
                          "3000 SFT steps; false positives: the verifier wrote the target as the result of a step, "
                          "e.g. 21-6=10 for 'make 10')", "tpr": 0.965, "tnr": 0.880, "solve_avg": 0.148},
               {"recipe": "v3 (session 7: v2 + a quarter of the other pairs with the target moved by 1..5, 4000 SFT "
                          "steps; errors moved to the comparison line, e.g. '24=14', '13!=13')", "tpr": 0.423,
                "tnr": 0.654, "solve_avg": 0.193},
               {"recipe": "v3 with a 4× larger model ('small', 4000 SFT steps)", "tpr": 0.800, "tnr": 0.820,
                "solve_avg": 0.113})
E5 = dict(name="e5", base_runs=str(C.RUNS / "external_rewards"), attempts=E5_ATTEMPTS, arms=E5_ARMS, seeds=3,
          steps=120, prompts=16, samples=8, eval_every=20, eval_problems=192, eval_k=8, boot=2000, tpr=0.9, tnr=0.9,
          solve=(0.10, 0.35))
E5B = dict(E5, name="e5b", base_runs=str(C.RUNS / "external_rewards_e5b"), sft_skip=300, n_problems=400,
           sft_steps=12000, rl_limit=300, steps=200, eval_seed=0, attempts=E5_ATTEMPTS + (
               {"recipe": "v3 (8000 SFT steps on 700 problems: E5's base, gate met)", "tpr": 0.938, "tnr": 0.952,
                "solve_avg": 0.197},
               {"recipe": "v3 on problems 300-699 (400 problems), 8000 SFT steps; the misses are arithmetic slips "
                          "(17+7=2, 28-7=11)", "tpr": 0.893, "tnr": 0.995, "solve_avg": 0.115}))
E5C = dict(E5B, name="e5c", arms=("countdown", "self_verification", "token_entropy", "trajectory_entropy", "random"),
           steps=600, eval_every=100, intrinsic=("trajectory_entropy", "token_entropy"), drift_gate=False,
           attempts=E5B["attempts"] + ({"recipe": "v3 on problems 300-699, 12000 SFT steps (E5b's base, gate met)",
                                        "tpr": 0.903, "tnr": 0.990, "solve_avg": 0.186},))
E5_SMOKE = dict(E5, base_runs=None, arms=("countdown", "frozen_verification", "random"), seeds=1, steps=2,
                prompts=2, samples=2, eval_every=1, eval_problems=4, eval_k=2, boot=50)

E5C_SMOKE = dict(E5_SMOKE, arms=("countdown", "self_verification", "token_entropy", "trajectory_entropy", "random"),
                 intrinsic=E5C["intrinsic"], drift_gate=False)


def e5_gate(prior: dict, p: dict) -> bool:
    """The docstring's gate on the base model's measured prior (external_rewards.measure_base)."""
    return bool(prior["verifier_true_given_correct"] >= p["tpr"] and prior["verifier_false_given_wrong"] >= p["tnr"]
                and p["solve"][0] <= prior["solve_avg"] <= p["solve"][1])


def e5_args(p: dict, smoke: bool, runs: Path):
    """external_rewards.py's arguments (its base recipe and the gate's measurement) for this experiment."""
    import external_rewards as X

    base = runs if p["base_runs"] is None else Path(p["base_runs"])
    extra = ["--sft-skip", str(p["sft_skip"]), "--n-problems", str(p["n_problems"]),
             "--sft-steps", str(p["sft_steps"])] if "sft_skip" in p else []
    return X.parse_args(["--runs-dir", str(base), "--out", str(runs)] + extra + (["--smoke"] if smoke else []))


def e5_config(p: dict, arm: str, seed: int, args, model_dir: str):
    import external_rewards as X

    c = X.arm_config(arm, seed, args, model_dir)
    c.data.prompt_batch_size, c.rl.num_samples, c.rl.learning_rate = p["prompts"], p["samples"], LR
    c.train.steps, c.train.checkpoint_every, c.train.progress = p["steps"], p["steps"], False
    c.train.eval_every, c.train.eval_limit, c.train.eval_k = p["eval_every"], p["eval_problems"], p["eval_k"]
    c.train.eval_temperature, c.train.eval_top_p, c.train.kl_metrics = 1.0, 1.0, True
    c.data.limit = p.get("rl_limit", 0)  # E5b: the first 300 train-split problems, which SFT skipped
    c.train.eval_seed = p.get("eval_seed", -1)  # E5b: the same draws at every evaluation
    return c


def run_e5(p: dict, runs: Path) -> dict:
    import external_rewards as X
    import four_arms as F

    from urlvr_jax.sft import problems_for_model

    smoke = p["base_runs"] is None
    args = e5_args(p, smoke, runs)
    base = X.build_countdown_base(Path(args.runs_dir) / "base_model", args, progress=not smoke)
    model_dir = base["model_dir"]
    heldout = problems_for_model(model_dir, args.eval_limit, C.EVAL_SEED, split="eval")
    prior = X.measure_base(model_dir, heldout, args)
    tpr, tnr, solve = prior["verifier_true_given_correct"], prior["verifier_false_given_wrong"], prior["solve_avg"]
    gate = e5_gate(prior, p)
    r = base["recipe"]
    recipe = (f"v{r['version']} (this run: number check, {r['verify_per_problem']} verification pairs per problem, "
              f"swapped numbers {r['verify_swap']}, shifted targets {r.get('verify_shift', 0)}, {r['sft_steps']} SFT "
              "steps)")
    attempts = list(p["attempts"]) + [{"recipe": recipe, "tpr": tpr, "tnr": tnr, "solve_avg": solve}]
    out = {"params": p, "prior": prior, "gate": gate, "attempts": attempts, "base_recipe": base["recipe"],
           "statistic": f"verifier TPR {tpr:.2f}, TNR {tnr:.2f} (need >= 0.9 each); solve avg@8 {solve:.3f}"}
    if not gate and not smoke:
        return {**out, "verdict": "untestable (gate: the synthetic self-verifier is not reliable on the model's own "
                                  "solutions)"}
    accs, records = {}, {}
    ref = None
    for arm in p["arms"]:
        name = RANDOM_NAME if arm == "random" else arm
        per, recs = [], []
        for seed in range(p["seeds"]):
            config = e5_config(p, arm, seed, args, model_dir)
            got, steps, acc, _, ids = F.train_and_read(config, runs / f"{arm}_s{seed}", ref)
            ref = ref or (steps, ids)
            per.append(acc)
            recs.append(got["records"])
            print(f"e5 {arm} seed {seed} done", file=sys.stderr, flush=True)
        accs[name], records[name] = np.stack(per), recs
    return {**out, **analyse_e5(p, accs, records, ref[0])}


def analyse_e5(p: dict, accs: dict, records: dict, steps: list[int]) -> dict:
    import four_arms as F

    intrinsic = p.get("intrinsic", ("trajectory_entropy",))
    pairs = tuple(("self_verification", arm) for arm in intrinsic if "self_verification" in accs and arm in accs)
    s = F.summarize_arms(accs, steps, p["boot"], contrasts=pairs)
    d = F.decide(s)
    rows = {name: {"rises": bool(d.get(f"R1_rise/{name}", False)), "falls": bool(d.get(f"R2_fall/{name}", False)),
                   "reward_accuracy_first_last": _first_last(records[name], "urlvr/reward_accuracy"),
                   "length_first_last": _first_last(records[name], "response/length_mean"),
                   "kl_k1_last10": float(np.mean([np.mean(C.curve(r, "kl_to_ref/k1_token_mean")[1][-10:])
                                                  for r in records[name]]))} for name in accs}

    def rule(name, key):
        return rows[name][key] if name in rows else None

    power, f5a, f5b = (rule("countdown", "rises"), rule("self_verification", "rises"),
                       None if "self_verification" not in rows else not rows["self_verification"]["falls"])
    falls = {arm: rule(arm, "falls") for arm in intrinsic}
    f5c = falls.get("trajectory_entropy")
    drift = p.get("drift_gate", True) and RANDOM_NAME in s["arms"] and abs(
        s["arms"][RANDOM_NAME]["change"]["mean"]) >= 2 * s["arms"][RANDOM_NAME]["change"]["se"]
    if drift:
        verdict = "untestable (the lr drifts without a signal: the random arm's change is beyond 2 SE)"
    elif not power:
        verdict = "untestable at this budget (the exact-checker arm does not rise)"
    elif not (f5a and f5b):
        verdict = "not reproduced (self-verification " + ("falls" if f5a else "does not rise") + ")"
    elif f5c:
        verdict = "reproduced"
    elif len(intrinsic) == 1:
        verdict = "self-verification part reproduced, the intrinsic contrast untestable at this budget"
    elif falls.get("token_entropy"):
        verdict = ("reproduced with token entropy as the intrinsic reward (trajectory entropy does not fall within "
                   f"{p['steps']} steps)")
    else:
        verdict = f"self-verification part reproduced; no intrinsic reward falls within {p['steps']} steps"
    contrast = {b: s["contrasts"][f"{a}-{b}"] for a, b in pairs}
    sv = s["arms"].get("self_verification")
    stat = ""
    if sv and all(arm in s["arms"] for arm in intrinsic):
        stat = (f"self-verification rise {F.fmt_ci(sv['rise'])}, fall {sv['fall']['mean']:+.3f}; checker rise "
                f"{s['arms']['countdown']['rise']['mean']:+.3f}; " + "; ".join(
                    f"{arm.replace('_', ' ')} change {s['arms'][arm]['change']['mean']:+.3f}"
                    + (f" (self-verification − it {F.fmt_ci(contrast[arm])})" if arm in contrast else "")
                    for arm in intrinsic))
    return {"eval_steps": steps, "summary": s, "decision": d, "rows": rows, "drift": drift, "power": power,
            "F5a": f5a, "F5b": f5b, "F5c": f5c, "intrinsic_falls": falls, "contrast": contrast,
            "verdict": verdict, "statistic": stat or None}


def markdown_e5(r: dict, minutes: float) -> str:
    import four_arms as F

    p = r["params"]
    lines = [f"# {p.get('name', 'e5').capitalize()} — finding 5: external rewards (Countdown)", "",
             "Gate (before any RL run): the Countdown base's verifier on its own T = 1 solutions (64 held-out problems "
             f"× 8) needs TPR and TNR ≥ {p['tpr']} and solve avg@8 in {p['solve'][0]}–{p['solve'][1]}. Attempts:", "",
             "| base recipe | TPR | TNR | solve avg@8 |", "|---|---|---|---|"]
    lines += [f"| {a['recipe']} | {a['tpr']:.3f} | {a['tnr']:.3f} | {a['solve_avg']:.3f} |" for a in r["attempts"]]
    lines += ["", f"Gate {'met' if r['gate'] else 'not met'}.", ""]
    if "summary" in r:
        s = r["summary"]
        lines += [f"{p['seeds']} seeds × {p['steps']} steps of {p['prompts']}×{p['samples']}, lr {LR}, GRPO without "
                  f"KL; held-out avg@{p['eval_k']} (T = 1) on {p['eval_problems']} eval-split problems every "
                  f"{p['eval_every']} steps; ± SE and [95% CI] from a crossed bootstrap over seeds × problems. "
                  f"Wall-clock {minutes:.1f} min.", "",
                  "| arm | start | rise | fall | change | rises (R1) | falls (R2) | reward accuracy first → last 10 "
                  "steps | length | KL k1 (last 10) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, row in r["rows"].items():
            a = s["arms"][name]
            lines.append(f"| {'random' if name == RANDOM_NAME else name} | {a['start']['mean']:.3f} | "
                         f"{F.fmt_ci(a['rise'])} | {F.fmt_ci(a['fall'])} | {F.fmt_ci(a['change'])} | {row['rises']} | "
                         f"{row['falls']} | {row['reward_accuracy_first_last'][0]:.3f} → "
                         f"{row['reward_accuracy_first_last'][1]:.3f} | {row['length_first_last'][0]:.1f} → "
                         f"{row['length_first_last'][1]:.1f} | {row['kl_k1_last10']:.4f} |")
        falls = r.get("intrinsic_falls") or {"trajectory_entropy": r["F5c"]}
        lines += ["", f"Power (checker rises): {r['power']}; F5a (self-verification rises): {r['F5a']}; F5b (it does "
                  f"not fall): {r['F5b']}; " + "; ".join(
                      f"F5c{'' if arm == 'trajectory_entropy' else chr(39)} ({arm.replace('_', ' ')} falls): {v}"
                      for arm, v in falls.items())]
        if r.get("contrast"):
            lines += ["", "| contrast | change(self_verification) − change(arm), ± SE [95% CI] |", "|---|---|"]
            lines += [f"| self_verification − {arm} | {F.fmt_ci(c)} |" for arm, c in r["contrast"].items()]
    lines += ["", f"**Verdict: {r['verdict']}**", ""]
    return "\n".join(lines) + "\n"


def plot_e5(out: Path, r: dict) -> str:
    if "summary" not in r:
        return ""
    name = r["params"].get("name", "e5")
    return plot_arm_curves(
        out, name, r["eval_steps"], r["summary"]["arms"],
        lambda arm, a: f"{'random' if arm == RANDOM_NAME else arm}: change {a['change']['mean']:+.3f}",
        f"{name.capitalize()} — external rewards on Countdown at lr {LR}:\n{r['verdict']}",
        f"held-out avg@{r['params']['eval_k']} (T = 1), mean over seeds ± 2 SE", 0.6)


# ---------------------------------------------------------------------------------------------- E6
E6 = dict(rung="ladder_v2/q0.35", problems=25, seed0=7000, steps=100, samples=16, every=20, probe=64,
          reward="trajectory_entropy", control="random")
E6_SMOKE = dict(E6, problems=2, steps=2, every=1, probe=4, samples=4)


def e6_config(p: dict, seed: int):
    return C.experiment_config(
        p["rung"], p["reward"], steps=p["steps"], prompts=1, samples=p["samples"], lr=LR, seed=0,
        **{"data.split": "eval", "data.synthetic_size": 1, "data.synthetic_seed": seed,
           "train.checkpoint_every": p["every"], "train.keep_checkpoints": p["steps"] // p["every"] + 1,
           "train.progress": False, "train.pistar_diagnostics": False})


def e6_problem(p: dict, seed: int):
    from urlvr_jax.data.tasks import make_task
    from urlvr_jax.models.paths import resolve_model_path

    return make_task("synthetic/arithmetic", split="eval", size=1, seed=seed,
                     model_dir=resolve_model_path(C.model_path(p["rung"]))).problems[0]


def e6_probe(p: dict, problem, workdir: Path | None, step: int | None, m) -> dict:
    """Greedy correctness and the share p of `probe` samples answering m, for the policy at `step`."""
    from urlvr_jax.data.synthetic import check_answer

    model, tok = C.load_policy(p["rung"], workdir, step)
    greedy = C.sample_problems(model, tok, [problem], 1, max_new_tokens=96, greedy=True)
    s = C.sample_problems(model, tok, [problem], p["probe"], seed=1000 + (step or 0), max_new_tokens=96)
    answers = s["answers"][0]
    return {"greedy_correct": bool(check_answer(problem, greedy["texts"][0][0])),
            "greedy_answer": greedy["answers"][0][0], "p_m": float(np.mean([a == m for a in answers])),
            "acc": float(s["correct"].mean()), "majority": C.majority(answers)[0]}


def run_e6(p: dict, runs: Path) -> dict:
    problems = []
    base, tok = C.load_policy(p["rung"])
    for i in range(p["problems"]):
        seed = p["seed0"] + i
        problem = e6_problem(p, seed)
        m = C.majority(C.sample_problems(base, tok, [problem], p["probe"], seed=99, max_new_tokens=96)["answers"][0])[0]
        wd = runs / f"problem_{seed}"
        got = C.run_training(e6_config(p, seed), wd)
        steps = list(range(0, p["steps"] + 1, p["every"]))
        probes = [e6_probe(p, problem, None if k == 0 else wd, None if k == 0 else k, m) for k in steps]
        control = None
        if p.get("control"):
            cwd = runs / f"problem_{seed}_{p['control']}"
            C.run_training(e6_config(dict(p, reward=p["control"]), seed), cwd)
            control = e6_probe(p, problem, cwd, p["steps"], m)
        problems.append({"seed": seed, "id": problem.id, "problem": problem.problem, "answer": problem.answer,
                         "initial_majority": m, "majority_right": m is not None and str(m) == str(problem.answer),
                         "steps": steps, "probes": probes, "control_end": control, "train_seconds": got["seconds"]})
        print(f"e6 problem {i}: {problem.problem} = {problem.answer}, m = {m}, p_m "
              f"{probes[0]['p_m']:.2f} -> {probes[-1]['p_m']:.2f}, greedy {probes[0]['greedy_correct']} -> "
              f"{probes[-1]['greedy_correct']}", file=sys.stderr, flush=True)
    return analyse_e6(problems, p)


def analyse_e6(problems: list[dict], p: dict) -> dict:
    from scipy.stats import binomtest

    n = len(problems)
    p0 = np.array([q["probes"][0]["p_m"] for q in problems])
    pend = np.array([q["probes"][-1]["p_m"] for q in problems])
    flips = sum(q["probes"][0]["greedy_correct"] != q["probes"][-1]["greedy_correct"] for q in problems)
    rates = np.array([slope(q["steps"], smoothed_logit([r["p_m"] for r in q["probes"]], p["probe"]))
                      for q in problems])
    right = np.array([q["majority_right"] for q in problems])
    kept = float(np.mean([q["probes"][-1]["majority"] == q["initial_majority"] for q in problems]))
    groups = {}
    for name, sel in (("right_majority", right), ("wrong_majority", ~right)):
        if sel.sum() >= 5:
            lo, hi = bootstrap_median_ci(rates[sel])
            groups[name] = {"n": int(sel.sum()), "median_rate": float(np.median(rates[sel])), "ci95": [lo, hi],
                            "positive": lo > 0}
        else:
            groups[name] = {"n": int(sel.sum()), "median_rate": float(np.median(rates[sel])) if sel.any() else None,
                            "ci95": None, "positive": None}
    l0 = smoothed_logit(p0, p["probe"])
    b = slope(l0, rates) if np.ptp(l0) > 0 else float("nan")  # undefined when every p0 is the same
    rng = np.random.default_rng(0)
    boots = [float("nan")]
    for _ in range(2000):
        i = rng.integers(0, n, n)
        if np.ptp(l0[i]) > 0:
            boots.append(slope(l0[i], rates[i]))
    gate = float((pend - p0).mean()) >= 0.10
    control = None
    if all(q.get("control_end") for q in problems):
        d = (pend - p0) - (np.array([q["control_end"]["p_m"] for q in problems]) - p0)
        means = d[rng.integers(0, n, (2000, n))].mean(axis=1)
        control = {"reward": p["control"], "mean_dp": float((pend - p0 - d).mean()), "diff": float(d.mean()),
                   "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
                   "flips": int(sum(q["probes"][0]["greedy_correct"] != q["control_end"]["greedy_correct"]
                                    for q in problems))}
        gate = gate and control["ci95"][0] > 0
    t1a = flips <= 7
    t1b = all(g["positive"] for g in groups.values()) and kept >= 0.8  # None (too few to test) fails
    verdict = ("untestable (the policy did not move more than under a random reward: gate)" if not gate else
               "reproduced" if t1a and t1b else "not reproduced")
    return {"params": p, "n": n, "mean_p0": float(p0.mean()), "mean_p_end": float(pend.mean()), "gate_moved": gate,
            "greedy_correct_start": int(sum(q["probes"][0]["greedy_correct"] for q in problems)),
            "greedy_correct_end": int(sum(q["probes"][-1]["greedy_correct"] for q in problems)),
            "flips": int(flips), "flips_ci95": exact_binomial_ci(flips, n),
            "flips_p_vs_half": float(binomtest(flips, n, 0.5, alternative="less").pvalue),
            "paper_flips": "3/25", "T1a": t1a, "groups": groups, "kept_majority_share": kept, "T1b": bool(t1b),
            "rate_on_logit_p0": {"slope": b, "ci95": [float(np.nanpercentile(boots, 2.5)),
                                                      float(np.nanpercentile(boots, 97.5))]},
            "rates": rates.tolist(), "control": control, "verdict": verdict, "problems": problems,
            "statistic": (f"greedy flips {flips}/{n} (95% CI {exact_binomial_ci(flips, n)[0]:.2f}–"
                          f"{exact_binomial_ci(flips, n)[1]:.2f}; paper 3/25); initial majority kept {kept:.2f}; "
                          f"p {p0.mean():.2f} → {pend.mean():.2f}")}


def markdown_e6(r: dict, minutes: float) -> str:
    p = r["params"]
    g = r["groups"]
    fmt_g = lambda x: (f"n = {x['n']}, median rate {x['median_rate']:+.4f}/step"  # noqa: E731
                       + (f" [{x['ci95'][0]:+.4f}, {x['ci95'][1]:+.4f}]" if x["ci95"] else " (too few to test)"))
    lines = [f"# E6 — Theorem 1 on single problems (`{p['rung']}`, {p['reward']})", "",
             f"{r['n']} problems, each trained alone: {p['steps']} steps of 1 × {p['samples']}, lr {LR}; probes of "
             f"{p['probe']} samples (T = 1) and the greedy answer at steps 0, {p['every']}, … {p['steps']}. "
             f"Wall-clock {minutes:.1f} min.", "",
             f"- Initial-majority share p: {r['mean_p0']:.3f} → {r['mean_p_end']:.3f} (gate ≥ +0.10: "
             f"{'met' if r['gate_moved'] else 'not met'})",
             f"- Greedy correct: {r['greedy_correct_start']}/{r['n']} → {r['greedy_correct_end']}/{r['n']}; "
             f"**flips {r['flips']}/{r['n']}** (95% CI {r['flips_ci95'][0]:.2f}–{r['flips_ci95'][1]:.2f}; "
             f"one-sided p vs 0.5 = {r['flips_p_vs_half']:.4f}); the paper: 3/25. T1a (≤ 7): {r['T1a']}",
             f"- Rate of logit p (per step): right-majority problems {fmt_g(g['right_majority'])}; "
             f"wrong-majority problems {fmt_g(g['wrong_majority'])}",
             f"- Problems ending on their initial majority: {r['kept_majority_share']:.2f} (≥ 0.8 required). "
             f"T1b: {r['T1b']}",
             f"- Rate regressed on logit p0: slope {r['rate_on_logit_p0']['slope']:+.4f} "
             f"[{r['rate_on_logit_p0']['ci95'][0]:+.4f}, {r['rate_on_logit_p0']['ci95'][1]:+.4f}] "
             "(Theorem 1: 0)"]
    if r.get("control"):
        c = r["control"]
        lines.append(f"- Control ({c['reward']} reward, same problems and steps): Δp {c['mean_dp']:+.3f}; "
                     f"{p['reward']} − {c['reward']}: {c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] "
                     f"(must lie above 0); greedy flips under the control {c['flips']}/{r['n']}")
    lines += ["", f"**Verdict: {r['verdict']}**", "",
             "| seed | problem | answer | initial majority (p0) | p at the end | greedy start → end | rate/step |",
             "|---|---|---|---|---|---|---|"]
    for q, rate in zip(r["problems"], r["rates"]):
        a, z = q["probes"][0], q["probes"][-1]
        lines.append(f"| {q['seed']} | `{q['problem']}` | {q['answer']} | {q['initial_majority']} ({a['p_m']:.2f}) | "
                     f"{z['p_m']:.2f} | {a['greedy_answer']} → {z['greedy_answer']} | {rate:+.4f} |")
    return "\n".join(lines) + "\n"


def plot_e6(out: Path, r: dict) -> str:
    plt = C.pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for q in r["problems"]:
        color = "C2" if q["majority_right"] else "C3"
        ax.plot(q["steps"], [x["p_m"] for x in q["probes"]], color=color, alpha=0.6)
    ax.plot([], [], color="C2", label="initial majority right")
    ax.plot([], [], color="C3", label="initial majority wrong")
    ax.set_xlabel("step (one problem per run)")
    ax.set_ylabel("share of samples giving the initial majority")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    p0 = [q["probes"][0]["p_m"] for q in r["problems"]]
    ax2.scatter(p0, r["rates"], c=["C2" if q["majority_right"] else "C3" for q in r["problems"]])
    ax2.set_xlabel("p0 (base model)")
    ax2.set_ylabel("fitted rate of logit p per step")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"E6 — Theorem 1 on single problems: flips {r['flips']}/{r['n']} (paper 3/25)", fontsize=10)
    return save_figure(fig, out, "e6")


EXPERIMENTS = {"e1": (E1, E1_SMOKE, run_e1, markdown_e1, plot_e1),
               "e1b": (E1B, E1B_SMOKE, run_e1b, markdown_e1b, plot_e1b),
               "e1c": (E1C, E1C_SMOKE, run_e1b, markdown_e1b, plot_e1b),
               "e1d": (E1D, E1D_SMOKE, run_e1b, markdown_e1b, plot_e1b),
               "e2": (E2, E2_SMOKE, run_e2, markdown_e2, plot_e2),
               "e2b": (E2B, E2B_SMOKE, run_e2, markdown_e2, plot_e2),
               "e2c": (E2C, E2C_SMOKE, run_e2c, markdown_e2c, plot_e2c),
               "e3": (E3, E3_SMOKE, run_e3, markdown_e3, plot_e3),
               "e3b": (E3B, E3B_SMOKE, run_e3, markdown_e3, plot_e3),
               "e4": (E4, E4_SMOKE, run_e4, markdown_e4, plot_e4),
               "e4b": (E4B, E4B_SMOKE, run_e4, markdown_e4, plot_e4),
               "e5": (E5, E5_SMOKE, run_e5, markdown_e5, plot_e5),
               "e5b": (E5B, E5_SMOKE, run_e5, markdown_e5, plot_e5),
               "e5c": (E5C, E5C_SMOKE, run_e5, markdown_e5, plot_e5),
               "e6": (E6, E6_SMOKE, run_e6, markdown_e6, plot_e6)}


def int_keys(obj):
    """JSON turns int dict keys (E3's training-set sizes) into strings; --render turns them back."""
    if isinstance(obj, dict):
        return {int(k) if isinstance(k, str) and k.isdigit() else k: int_keys(v) for k, v in obj.items()}
    return [int_keys(v) for v in obj] if isinstance(obj, list) else obj


def main(argv=None) -> dict:
    ap = C.add_common_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                                   formatter_class=argparse.RawDescriptionHelpFormatter), NAME)
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS) + ["table"], help="which experiment to run")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the experiment's markdown and plot from its JSON in --out, without training")
    args = ap.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.experiment == "table":
        md = verdict_table(out, runs.parent)
        print(md)
        return {}
    full, smoke, run, markdown, plot = EXPERIMENTS[args.experiment]
    if args.render:
        path = out / f"{args.experiment}.json"
        if not path.exists():
            raise SystemExit(f"--render: {path} does not exist; run `findings.py {args.experiment}` first")
        r = int_keys(json.loads(path.read_text()))
        plot(out, r)
        md = markdown(r, r["total_minutes"])
        (out / f"{args.experiment}.md").write_text(md)
        print(md)
        return r
    p = dict(smoke if args.smoke else full)
    C.setup_jax()
    t0 = time.perf_counter()
    r = run(p, runs / args.experiment)
    minutes = (time.perf_counter() - t0) / 60
    r["total_minutes"] = minutes
    r["training_minutes"] = training_minutes(args.experiment, runs.parent)  # kept: runs/ is not committed
    r["plots"] = [x for x in [plot(out, r)] if x]
    (out / f"{args.experiment}.md").write_text(markdown(r, minutes))
    C.write_json(out / f"{args.experiment}.json", r)
    print(markdown(r, minutes))
    return r


ROWS = {  # experiment -> (finding, the paper's figure)
    "e1": ("F1: intrinsic rewards rise, then fall", "all five rise then fall; the most stable collapse at ~1000 steps"),
    "e1b": ("F1's fall at 1000 steps", "the most stable settings collapse at ~1000 steps (~4 epochs)"),
    "e1c": ("F1's fall at 1000 steps: probability, token entropy", "probability: length collapse; token entropy: "
            "repetition collapse; all by ~1000 steps"),
    "e1d": ("F1's fall at 2000 steps (~4 epochs)", "the most stable settings collapse at ~1000 steps (~4 epochs)"),
    "e2": ("F2: the MCS ranks priors like GT-RL gain", "7 models, ranks match exactly (ρ = 1)"),
    "e2b": ("F2 on ladder v3 (a universal give-up answer)", "7 models, ranks match exactly (ρ = 1)"),
    "e2c": ("F2 on ladder v3, 10 probe seeds (restricted mean MCS)", "7 models, ranks match exactly (ρ = 1)"),
    "e3": ("F3: small training sets do not collapse", "≤ 128 prompts: 3/3 seeds stable; ≥ 512: hacking; KL ~2× at 512 "
           "vs 32 (0.057)"),
    "e3b": ("F3 with token entropy at 1000 steps", "≤ 128 prompts: 3/3 seeds stable; ≥ 512: hacking; KL ~2× at 512 "
            "vs 32"),
    "e4": ("F4: test-time training helps the test set and beyond", "AMC23 and AIME24 both improve (vote reward)"),
    "e4b": ("F4 with 128 test problems", "AMC23 (40 problems) +0.045 and AIME24 both improve (vote reward)"),
    "e5": ("F5: self-verification keeps improving", "Countdown: self-verification 0.55–0.75 vs TLE ~0.40, then down"),
    "e5b": ("F5 on problems the base never saw", "Countdown: self-verification 0.55–0.75 vs TLE ~0.40, then down"),
    "e5c": ("F5 at 600 steps, token entropy beside trajectory entropy", "Countdown: self-verification 0.55–0.75 vs "
            "TLE ~0.40, then down"),
    "e6": ("Theorem 1: sharpening keeps the initial majority", "25 single problems, greedy correctness flipped 3/25"),
}
RUN_DIRS = {"e1": ("findings/e1/*", "four_arms_v2/good_mv_s*", "four_arms_v2/good_gt_s*",
                   "four_arms_v2/good_random_s*"),
            "e2": ("findings/e2/*", "four_arms_v2/good_gt_s[01]"), "e2b": ("findings/e2b/*",),
            "e2c": ("findings/e2b/*",), "e3": ("findings/e3/*",),
            "e3b": ("findings/e3b/*", "findings/e1c/token_entropy_s*"),
            "e4": ("findings/e4/*",), "e4b": ("findings/e4b/*",), "e5": ("findings/e5/*",),
            "e5b": ("findings/e5b/*",), "e5c": ("findings/e5c/*",), "e6": ("findings/e6/*",),
            "e1b": ("findings/e1b/*",),
            "e1c": ("findings/e1c/*", "findings/e1b/random_s*"), "e1d": ("findings/e1d/*",)}


def training_minutes(experiment: str, runs_root: Path = C.RUNS) -> float:
    """Sum of the training wall-clock of the runs an experiment uses (experiment_done.json), in minutes."""
    total = 0.0
    for pattern in RUN_DIRS[experiment]:
        for done in runs_root.glob(f"{pattern}/experiment_done.json"):
            total += json.loads(done.read_text()).get("seconds") or 0.0
    return total / 60


def verdict_table(out: Path, runs_root: Path = C.RUNS) -> str:
    rows = ["| finding | the paper | ours (statistic, 95% CI) | verdict | training time (sum of its runs) |",
            "|---|---|---|---|---|"]
    for name, (finding, paper) in ROWS.items():
        f = out / f"{name}.json"
        if not f.exists():
            rows.append(f"| {finding} | {paper} | not run | — | — |")
            continue
        r = json.loads(f.read_text())
        train, script = r.get("training_minutes", training_minutes(name, runs_root)), r["total_minutes"]
        extra = f" (the script: {script:.0f} min with its probes)" if script > train + 1 else ""
        rows.append(f"| {finding} ([{name}]({name}.md)) | {paper} | {r.get('statistic', '')} | **{r['verdict']}** | "
                    f"{train:.0f} min{extra} |")
    md = "\n".join(rows) + "\n"
    (out / "verdicts.md").write_text(md)
    return md


if __name__ == "__main__":
    main()
