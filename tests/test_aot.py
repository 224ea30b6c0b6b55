"""AOT compilation for a TPU slice from this CPU machine (urlvr_jax/aot.py, urlvr_jax/hlo_cost.py).

The compile tests need libtpu (the `tpu` extra, installed by the README's test command) and are skipped
without it. They check that the report's numbers are the compiler's (memory_analysis of the same program
compiled independently), that loop-corrected FLOPs are exact on a program with a known count, and the
command line's exit codes."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from urlvr_jax import aot
from urlvr_jax.api import get_config
from urlvr_jax.hlo_cost import hlo_cost, shape_bytes

needs_libtpu = pytest.mark.skipif(not aot.tpu_available(), reason="libtpu not installed (pip install '.[tpu]')")


def _tiny():
    from pathlib import Path

    c = get_config(str(Path(__file__).resolve().parents[1] / "configs" / "default.py"), validate=False)
    c.data.prompt_batch_size, c.rl.num_samples = 4, 2
    c.data.max_prompt_length, c.sampling.max_new_tokens = 16, 8
    return c


@pytest.mark.parametrize("name,topology,chips", [("v5e-16", "v5e:4x4", 16), ("v5e-64", "v5e:8x8", 64),
                                                 ("v5p-8", "v5p:2x2x1", 4), ("v6e-4", "v6e:2x2", 4),
                                                 ("v5e:2x2", "v5e:2x2", 4)])
def test_parse_target(name, topology, chips):
    t, chip, n = aot.parse_target(name)
    assert (t, n) == (topology, chips) and chip is aot.CHIPS[name[:3]]


@pytest.mark.parametrize("bad", ["v5e-3", "h100-8", "v5e"])
def test_parse_target_rejects_unknown_slices(bad):
    with pytest.raises(ValueError, match="compile_for"):
        aot.parse_target(bad)


def test_shape_bytes():
    assert shape_bytes("bf16[8,1024]{1,0:T(8,128)(2,1)}") == 8 * 1024 * 2
    assert shape_bytes("(s32[], f32[4,4]{1,0}, pred[3])") == 4 + 64 + 3


@needs_libtpu
def test_loop_corrected_flops_are_exact_for_a_scanned_stack():
    """XLA's cost_analysis counts a scan body once; hlo_cost multiplies it by the trip count."""
    target = aot.make_target("v5e:2x2")
    mesh = Mesh(np.array(target.devices).reshape(4), ("x",))
    L, M, K = 6, 512, 256

    def f(w, x):
        h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)
        return jnp.sum(h)

    w = jax.ShapeDtypeStruct((L, K, K), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    x = jax.ShapeDtypeStruct((M, K), jnp.bfloat16, sharding=NamedSharding(mesh, P("x")))
    compiled = jax.jit(jax.grad(f)).lower(w, x).compile()
    expected = 3 * 2 * (M // 4) * K * K * L  # per device: forward, grad wrt h, grad wrt w, for each layer
    cost = hlo_cost(compiled.as_text())
    assert cost.flops == expected
    assert any(trips == L for _, trips in cost.loops) and not cost.unknown_loops
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    assert xla["flops"] < expected / 2  # what the correction is for


@needs_libtpu
def test_report_numbers_are_the_compilers():
    config = _tiny()
    report = aot.compile_for(config, "v5e:2x2", "tiny", programs=("update",))
    (update,) = report.programs
    assert update.name == "update" and not update.error
    # compile the same update independently and compare its memory analysis with the report's
    from urlvr_jax.rl.step import update_phase

    a = aot.abstract_step(config, report.target.devices)
    _, (roll, old, ref_lp, rewarded) = _phase_inputs(a)
    jitted = jax.jit(functools.partial(update_phase, graphdef=a.graphdef, tx=a.tx, cfg=a.step_cfg),
                     donate_argnums=(0, 1))
    mem = jitted.lower(a.params, a.opt_state, a.prompt_ids, a.prompt_mask, roll, old, ref_lp,
                       rewarded).compile().memory_analysis()
    assert (update.argument, update.output, update.temp, update.alias) == (
        mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes, mem.alias_size_in_bytes)
    assert update.peak == update.argument + update.output + update.temp - update.alias + update.resident_extra
    assert update.flops > update.xla_flops > 0  # layer scan: the corrected count is larger
    assert report.fits() and "fits" in report.table()
    assert report.state_bytes["params"] == aot.per_device_bytes(a.params) > 0


def _phase_inputs(a):
    from urlvr_jax.rl.step import reward_phase, rollout_phase, scoring_phase

    rules = a.rules
    roll = aot._guess_outputs(jax.jit(functools.partial(rollout_phase, graphdef=a.graphdef, cfg=a.step_cfg)),
                              (a.params, a.prompt_ids, a.prompt_mask, a.key), rules)
    old = ref_lp = None
    if a.step_cfg.old_policy_pass or a.step_cfg.use_reference:
        scoring = jax.jit(functools.partial(scoring_phase, graphdef=a.graphdef, ref_graphdef=a.ref_graphdef,
                                            cfg=a.step_cfg))
        ref = a.ref_params if a.step_cfg.use_reference else None  # configs/default.py logs KL: reference on
        old, ref_lp = aot._guess_outputs(scoring, (a.params, ref, a.prompt_ids, a.prompt_mask, roll.tokens,
                                                   roll.mask), rules)
    reward = jax.jit(functools.partial(reward_phase, cfg=a.step_cfg, vocab_size=a.model_cfg.vocab_size))
    rewarded = aot._guess_outputs(reward, (roll, old, ref_lp, a.gold, a.extractor, None, a.key), rules)
    return None, (roll, old, ref_lp, rewarded)


def test_failures_name_the_program_and_the_knob():
    target = aot.Target("v5e-16", "v5e:4x4", aot.CHIPS["v5e"], 16, tuple(range(16)))
    big = aot.ProgramCost("rollout", argument=2 * aot.GIB, temp=20 * aot.GIB)
    refused = aot.ProgramCost("update", error="RESOURCE_EXHAUSTED: Ran out of memory", temp=87 * aot.GIB)
    ok = aot.ProgramCost("reward", argument=aot.GIB)
    report = aot.CompileReport(target, "x", [big, refused, ok], {"params": 0, "opt": 0, "ref": 0}, 10, 10)
    assert not report.fits()
    failures = report.failures()
    assert len(failures) == 2
    assert failures[0].startswith("rollout: needs 22.00 GiB per device") and "max_new_tokens" in failures[0]
    assert failures[1].startswith("update: XLA:TPU refused") and "micro_batch_groups" in failures[1]
    assert "DOES NOT FIT" in report.table()
    assert math.isclose(report.roofline_s(ok), 0.0)


@needs_libtpu
def test_command_line_compile_for(capsys):
    from urlvr_jax.main import train_main

    rc = train_main(["--config=configs/default.py", "--compile_for=v5e-99"])
    assert rc == 2 and "no standard v5e slice" in capsys.readouterr().err


@needs_libtpu
@pytest.mark.slow
def test_command_line_compiles_every_program(tmp_path, capsys):
    import json

    from urlvr_jax.main import train_main

    out = tmp_path / "report.json"
    rc = train_main(["--config=configs/default.py", "--compile_for=v5e:2x2", f"--compile_json={out}",
                     "--config.data.prompt_batch_size=4", "--config.rl.num_samples=2",
                     "--config.data.max_prompt_length=16", "--config.sampling.max_new_tokens=8"])
    table = capsys.readouterr().out
    assert rc == 0, table
    report = json.loads(out.read_text())
    # configs/default.py logs KL to the reference every step (train.kl_metrics): a scoring program (reference only)
    assert [p["name"] for p in report["programs"]] == ["rollout", "scoring", "reward", "update"]
    assert report["fits"] and all(p["peak"] > 0 and not p["error"] for p in report["programs"])
    for p in report["programs"]:
        assert f"| {p['name']} | {p['argument'] / 2**30:.2f} |" in table
