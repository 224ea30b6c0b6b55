"""The jitted rollout-and-loss step: group integrity under micro-batching, and sharded = single device.

Micro-batches of whole groups with an odd tail (P = 3 prompts, 2 groups per micro-batch) must give the
same update as one full batch, because the token-mean normaliser is global; the 8-device sharded step
must give the same rollout and update as one device (mesh fsdp 4 x tensor 2); the phased step (one jitted
function per phase, timed) must equal the fused one; skipping the redundant old-policy pass (one update
per batch) must give the update and the old log-probs of the run that does the pass. Tolerance 2e-5 absolute on
parameters after one SGD step with lr 1 (= on the gradients) — float32 summation-order differences only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.weights import init_model, model_from_state_dict, state_dict
from urlvr_jax.rewards.answers import AnswerExtractor
from urlvr_jax.rl.step import StepConfig, make_step
from urlvr_jax.rollout.sampler import SamplingConfig
from urlvr_jax.sharding import make_mesh, shard_batch

PIECES = ["<pad>", "<eos>", "\\boxed{", "}"] + [str(i) for i in range(10)] + list("abcdefghij+-*= \n")
CFG = ModelConfig(family="llama", vocab_size=len(PIECES), hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, eos_token_ids=(1,))
ATOL = 2e-5


def boxed_bias_model(mesh):
    """A random model nudged to emit '\\boxed{' and digits, so answers (and votes) actually occur."""
    model = init_model(CFG, seed=1, mesh=mesh)
    sd = state_dict(model)
    sd["lm_head.weight"][2] += 0.5  # \boxed{
    sd["lm_head.weight"][3] += 0.4  # }
    sd["lm_head.weight"][4:8] += 0.3
    return model_from_state_dict(CFG, sd, mesh=mesh)


PROMPTS = jnp.array([[0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 14, 15]], jnp.int32)
PMASK = (PROMPTS > 0).astype(jnp.int32)
GOLD = jnp.array([-1, -1, -1], jnp.int32)


def run(model, cfg, rules=None, phased=False):
    ex = AnswerExtractor.from_token_strings(PIECES)
    graphdef, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)  # the step donates its parameters; keep the model's intact
    # plain SGD with lr 1: the parameter change IS the gradient, so comparing parameters compares
    # gradients (Adam's first step, g/(|g|+eps), would amplify float32 summation-order noise in tiny gradients)
    tx = optax.sgd(1.0)
    opt = tx.init(params)
    step = make_step(graphdef, graphdef, tx, cfg, ex, phased=phased)
    ref = jax.tree.map(jnp.copy, params)  # the frozen reference: its own buffers (params are donated)
    params, opt, out = step(params, opt, ref, shard_batch(PROMPTS, rules), shard_batch(PMASK, rules), GOLD,
                            jax.random.key(3), ex)
    return jax.device_get(params), jax.device_get(out)


BASE = StepConfig(num_samples=4, sampling=SamplingConfig(max_new_tokens=10, temperature=1.5), reward="token_entropy",
                  eos_ids=(1,), pad_id=0, use_reference=True, kl_coef=0.01)


@pytest.fixture(scope="module")
def reference_run():
    model = boxed_bias_model(make_mesh({"fsdp": 1}, jax.devices()[:1]))
    return model, run(model, BASE)


def leaves(p):
    return [np.asarray(x) for x in jax.tree.leaves(p)]


def test_step_updates_and_reports(reference_run):
    model, (params, out) = reference_run
    before = leaves(nnx.state(model))
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(leaves(params), before)), "the update changed nothing"
    assert out.rollout.tokens.shape == (12, 10) and out.rewards.shape == (3, 4)
    assert np.ptp(np.asarray(out.rewards)) > 0
    assert float(out.metrics["skipped_updates"]) == 0
    # the sampler and the trainer's scoring pass agree on the log-probs of the sampled tokens
    assert float(out.metrics["drift/logprob_abs_max"]) < 1e-4


def test_micro_batches_with_odd_tail_equal_full_batch(reference_run):
    model, (params_full, out_full) = reference_run
    micro = StepConfig(**{**BASE.__dict__, "micro_batch_groups": 2})
    params_micro, out_micro = run(model, micro)
    np.testing.assert_array_equal(np.asarray(out_micro.rollout.tokens), np.asarray(out_full.rollout.tokens))
    for a, b in zip(leaves(params_micro), leaves(params_full)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    np.testing.assert_allclose(float(out_micro.metrics["loss"]), float(out_full.metrics["loss"]), atol=1e-5)


def test_sharded_step_equals_single_device(reference_run):
    model, (params_full, out_full) = reference_run
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, jax.devices()[:8])
    sharded = model_from_state_dict(CFG, state_dict(model), mesh=mesh)
    params_s, out_s = run(sharded, BASE, rules=sharded.rules)
    np.testing.assert_array_equal(np.asarray(out_s.rollout.tokens), np.asarray(out_full.rollout.tokens))
    for a, b in zip(leaves(params_s), leaves(params_full)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


def test_dynamic_sampling_moves_whole_groups_and_fills_with_weightless_groups():
    from urlvr_jax.rl.step import select_informative_groups

    G, n, T = 5, 3, 4
    tokens = jnp.arange(G * n * T).reshape(G, n, T)
    data = {"tokens": tokens, "mask": jnp.ones((G, n, T), jnp.int32),
            "advantages": jnp.arange(G * n, dtype=jnp.float32).reshape(G, n) + 1}
    informative = jnp.array([False, True, False, True, True])
    out, k = select_informative_groups(data, informative, 3)
    assert k == 3
    np.testing.assert_array_equal(np.asarray(out["tokens"]), np.asarray(tokens)[[1, 3, 4]])
    assert np.asarray(out["mask"]).all()
    out, _ = select_informative_groups(data, informative, 4)  # only 3 informative: one filler group
    np.testing.assert_array_equal(np.asarray(out["tokens"])[:3], np.asarray(tokens)[[1, 3, 4]])
    assert not np.asarray(out["mask"])[3].any() and not np.asarray(out["advantages"])[3].any()


def test_dynamic_sampling_step_trains_on_at_most_the_kept_groups(reference_run):
    model, _ = reference_run
    cfg = StepConfig(**{**BASE.__dict__, "dynamic_sampling_groups": 2})
    _, out = run(model, cfg)
    assert int(out.metrics["dynamic/trained_groups"]) <= 2
    assert int(out.metrics["dynamic/informative_groups"]) <= 3
    assert out.rewards.shape == (3, 4)  # rewards of the whole pool are reported


def test_phased_step_equals_fused_step(reference_run):
    model, (params_full, out_full) = reference_run
    ex = AnswerExtractor.from_token_strings(PIECES)
    graphdef, params = nnx.split(model)
    tx = optax.sgd(1.0)
    step = make_step(graphdef, graphdef, tx, BASE, ex, phased=True)
    assert step.num_jitted == 4  # rollout, scoring (old policy + reference), reward, update
    params_p, out_p = run(model, BASE, phased=True)
    np.testing.assert_array_equal(np.asarray(out_p.rollout.tokens), np.asarray(out_full.rollout.tokens))
    # different XLA fusion at the phase boundaries: float32 rounding only (entropy rewards differ by ~5e-7)
    np.testing.assert_allclose(np.asarray(out_p.rewards), np.asarray(out_full.rewards), atol=1e-5, rtol=0)
    for a, b in zip(leaves(params_p), leaves(params_full)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    for k in out_full.metrics:
        np.testing.assert_allclose(float(out_p.metrics[k]), float(out_full.metrics[k]), atol=1e-5, err_msg=k)


def test_skipping_the_redundant_old_policy_pass_changes_nothing(reference_run):
    """Majority vote, one update per batch: old = stop_gradient(loss forward's log-probs) gives the update of
    the run with the separate pass (whose ratios are 1 up to float32 noise), and the same old log-probs."""
    model, _ = reference_run
    mv = StepConfig(**{**BASE.__dict__, "reward": "majority_vote", "kl_coef": 0.0, "use_reference": False})
    assert not mv.old_policy_pass
    full = StepConfig(**{**mv.__dict__, "skip_redundant_old_pass": False})
    assert full.old_policy_pass
    # a certainty reward, KL in the reward, several mini-batches or TTRL's n_train < N keep the pass
    for change in ({"reward": "self_certainty"}, {"kl_coef": 0.1, "kl_in_reward": True, "use_reference": True},
                   {"mini_batches": 3}, {"n_train": 2}, {"dynamic_sampling_groups": 2}):
        assert StepConfig(**{**mv.__dict__, **change}).old_policy_pass, change
    params_s, out_s = run(model, mv)
    params_f, out_f = run(model, full)
    np.testing.assert_array_equal(np.asarray(out_s.rollout.tokens), np.asarray(out_f.rollout.tokens))
    assert np.ptp(np.asarray(out_s.rewards)) > 0, "no reward signal: the comparison would be vacuous"
    np.testing.assert_allclose(np.asarray(out_s.old_logprob), np.asarray(out_f.old_logprob), atol=1e-5, rtol=0)
    for a, b in zip(leaves(params_s), leaves(params_f)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    assert float(out_s.metrics["drift/logprob_abs_max"]) < 1e-4
    assert float(out_s.metrics["actor/clip_frac"]) == 0.0 and float(out_s.metrics["actor/ratio_max"]) == 1.0


def test_host_reward_port_fused_equals_phased_and_overlaps_scoring(reference_run):
    """An external reward enters through the host port: the rewards the step trains on are the host function's
    on the sampled tokens; the fused runner (rollout | scoring, dispatched before the host reward | reward +
    update) gives the phased runner's update; without host_reward the step refuses to run."""
    from urlvr_jax.rewards.registry import HostRewards
    from urlvr_jax.rl.step import active_phases, make_step

    def boxed_reward(tokens, mask, params, key):  # 1 for a response holding '\boxed{' (id 2), else 0
        r = ((np.asarray(tokens) == 2) & (np.asarray(mask) > 0)).any(-1).astype(np.float32)
        return HostRewards(r.reshape(3, 4), {"host/calls": 1.0})

    model, _ = reference_run
    cfg = StepConfig(**{**BASE.__dict__, "reward": "countdown"})  # any EXTERNAL name: rewards come from the host
    graphdef, _ = nnx.split(model)
    fused = make_step(graphdef, graphdef, optax.sgd(1.0), cfg)
    assert [[p.name for p in g] for g in fused.groups] == [["rollout"], ["scoring"], ["host_reward"],
                                                           ["reward", "update"]]
    assert [p.name for p in active_phases(cfg)] == ["rollout", "scoring", "host_reward", "reward", "update"]
    outs = {}
    for phased in (False, True):
        ex = AnswerExtractor.from_token_strings(PIECES)
        _, params = nnx.split(model)
        params = jax.tree.map(jnp.copy, params)
        tx = optax.sgd(1.0)
        step = make_step(graphdef, graphdef, tx, cfg, ex, phased=phased)
        ref = jax.tree.map(jnp.copy, params)
        with pytest.raises(ValueError, match="host_reward"):
            step(params, tx.init(params), ref, PROMPTS, PMASK, GOLD, jax.random.key(3), ex)
        params, _, out = step(params, tx.init(params), ref, PROMPTS, PMASK, GOLD, jax.random.key(3), ex,
                              host_reward=boxed_reward)
        outs[phased] = (jax.device_get(params), jax.device_get(out))
        if phased:
            assert set(step.last_times) == {"rollout", "scoring", "host_reward", "reward", "update"}
    (p_fused, o_fused), (p_phased, o_phased) = outs[False], outs[True]
    expected = boxed_reward(o_fused.rollout.tokens, o_fused.rollout.mask, None, None).rewards
    np.testing.assert_array_equal(np.asarray(o_fused.rewards), expected)
    assert 0 < expected.mean() < 1  # a non-trivial reward, so the update is not zero
    assert float(o_fused.metrics["host/calls"]) == 1.0
    np.testing.assert_array_equal(np.asarray(o_phased.rollout.tokens), np.asarray(o_fused.rollout.tokens))
    np.testing.assert_array_equal(np.asarray(o_phased.rewards), np.asarray(o_fused.rewards))
    for a, b in zip(leaves(p_phased), leaves(p_fused)):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
