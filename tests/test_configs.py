"""Configs: every preset in configs/ (each variant) builds, validates and dry-runs offline (model shapes
with jax.eval_shape and the memory estimate, no weights); unknown keys and bad values are errors that
name them, from the command line as from Python."""
import importlib.util
from pathlib import Path

import pytest

from urlvr_jax.config import base_config, validate
from urlvr_jax.dry_run import dry_run
from urlvr_jax.main import train_main

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILES = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))
PRESETS = [(name, variant) for name in FILES for variant in load(name).VARIANTS]


def test_every_config_file_is_covered():
    assert {"default", "paper", "smollm2"} <= set(FILES)
    assert len(PRESETS) >= 14


@pytest.mark.parametrize("name,variant", PRESETS, ids=[f"{n}:{v}" for n, v in PRESETS])
def test_every_preset_validates_and_dry_runs(name, variant):
    c = validate(load(name).get_config(variant))
    out = dry_run(c, n_devices=8, compile=False)  # the hand estimate (compiling 14 presets takes too long)
    assert out["logits_shape"][:2] == [c.data.prompt_batch_size, c.data.max_prompt_length]
    assert out["memory_gb/total"] > 0
    if name == "paper":  # Qwen3-1.7B-Base: 1.72B parameters (tied embeddings)
        assert 1.6e9 < out["params"] < 1.8e9 and c.rl.learning_rate == 1e-6 and c.rl.kl_coef == 0
    if (name, variant) == ("paper", "default"):  # the paper's run: 64 prompts x 8 rollouts, 7168 tokens
        assert (c.data.prompt_batch_size, c.rl.num_samples, c.sampling.max_new_tokens) == (64, 8, 7168)
    if (name, variant) == ("paper", "ttrl"):
        assert (c.rl.n_votes, c.rl.n_train) == (64, 32)


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match=r"configs/default.py: unknown variant 'nope'.*mcs_probe"):
        load("default").get_config("nope")


@pytest.mark.parametrize("key,value,match", [
    ("rl.reward", "nope", r"config\.rl\.reward='nope': unknown reward"),
    ("rl.num_samples", 0, r"config\.rl\.num_samples=0: must be >= 1"),
    ("sampling.top_p", 1.5, r"config\.sampling\.top_p=1\.5"),
    ("rl.mini_batches", 99, r"config\.rl\.mini_batches=99: must be in \[1, data\.prompt_batch_size"),
])
def test_bad_values_name_the_key(key, value, match):
    c = load("default").get_config()
    section, leaf = key.split(".")
    c[section][leaf] = value
    with pytest.raises(ValueError, match=match):
        validate(c)


def test_command_line_errors_name_the_key(capsys, tmp_path):
    cfg = str(ROOT / "configs" / "default.py")
    # a value that fails validation: refused before anything is written (in process)
    assert train_main([f"--config={cfg}", "--config.rl.num_samples=0", f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "config.rl.num_samples=0: must be >= 1" in err and "--help" in err
    assert not any(tmp_path.iterdir())
    # flags that do not parse
    assert train_main([f"--config={cfg}", "--config.rl.no_such_key=1", f"--workdir={tmp_path}"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert train_main([f"--config={cfg}", "--config.rl.num_samples=many", f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "num_samples" in err and "bad flag" in err


def test_command_line_override_reaches_the_dry_run(capsys):
    import json

    cfg = str(ROOT / "configs" / "default.py")
    assert train_main([f"--config={cfg}", "--config.data.prompt_batch_size=8", "--config.data.max_prompt_length=24",
                       "--dry_run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["logits_shape"][:2] == [8, 24]
    from urlvr_jax.aot import tpu_available

    if tpu_available():  # the memory figures are then the compiler's, for a v5e slice of as many devices
        assert out["memory_source"].startswith("XLA:TPU compiler, v5e:2x4 (8 devices)")
        assert {"memory_gb/rollout", "memory_gb/update", "estimate_gb/total"} <= set(out)
        assert out["memory_gb/total"] == max(out["memory_gb/rollout"], out["memory_gb/update"],
                                             out["memory_gb/reward"])
    else:
        assert out["memory_source"].startswith("estimate")


def test_base_config_alone_asks_for_a_model():
    with pytest.raises(ValueError, match=r"config\.model\.path='': set a model path"):
        validate(base_config())


def test_memory_estimate_follows_remat_and_micro_batches_and_refuses_what_cannot_fit():
    from urlvr_jax.dry_run import check_fits, estimate_memory, model_config_for

    c = load("smollm2").get_config()
    cfg = model_config_for(c)
    remat = estimate_memory(c, cfg, 1)["memory_gb/activations"]
    c.model.remat = False
    full = estimate_memory(c, cfg, 1)["memory_gb/activations"]
    c.rl.micro_batch_groups = 0  # the whole batch (4 groups) in one pass
    whole = estimate_memory(c, cfg, 1)["memory_gb/activations"]
    assert remat < full / 10 and 3.9 < whole / full < 4.1
    # the un-rematerialised 4 x 4-row update measured 14 GB of host memory: the estimate must not be below it
    assert estimate_memory(c, cfg, 1)["memory_gb/total"] > 13
    with pytest.raises(MemoryError, match=r"largest part is activations.*model\.remat=True"):
        check_fits(c, cfg, 1, device_memory_gb=8.0)


@pytest.mark.parametrize("shards,n_train,expected", [(1, 0, 1), (8, 0, 1), (16, 0, 2), (64, 0, 8), (6, 0, 3),
                                                     (64, 32, 2), (512, 0, 64)])
def test_per_device_micro_batch_gives_every_batch_shard_whole_rows(shards, n_train, expected):
    from urlvr_jax.config import micro_batch_groups_for

    c = load("paper").get_config()  # 64 prompts x 8 samples, micro_batch_groups=-1
    c.rl.n_train = n_train
    if n_train:
        c.rl.num_samples = c.rl.n_votes = 64
    groups = micro_batch_groups_for(c, shards)
    assert groups == expected
    assert (groups * (n_train or 8)) % shards == 0 or groups == c.data.prompt_batch_size
