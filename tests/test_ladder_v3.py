"""Ladder v3 (issue #13, finding 2): ladder v2 plus a universal give-up answer on a fixed share of the prior
phase's SFT traces. References: the v2 traces of the same seed (every trace that is not a give-up trace is
unchanged, character for character), binomial tolerances stated at each check, and the shipped v2 recipes
(the skill phase is v2's)."""
import json
from pathlib import Path

import pytest

from urlvr_jax import sft
from urlvr_jax.data import synthetic as syn
from urlvr_jax.data.tasks import load_recipe, make_problems
from urlvr_jax.models.paths import LADDER_V3_DIR, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
V3_JSON = ROOT / "experiments" / "results" / "ladder_v3" / "ladder_v3.json"


def test_give_up_traces_replace_standard_draws_only():
    problems = make_problems("arithmetic", 300, 5, "train", sft.V2_TASK)
    v2 = syn.make_sft_traces(problems, 0.5, sft.v2_family_params(), seed=1, samples_per_problem=20)
    v3 = syn.make_sft_traces(problems, 0.5, sft.v2_family_params(give_up=0.2), seed=1, samples_per_problem=20)
    n = len(v3.traces)  # 6000
    give_up = [b for b in v3.traces if b.variant == "give_up"]
    # binomial SE of a 0.2 share at n = 6000: 0.0052; tolerance ~4.5 SE
    assert abs(len(give_up) / n - 0.2) < 0.023
    assert v3.path_counts()["give_up"] == len(give_up) and v2.path_counts()["give_up"] == 0
    for a, b in zip(v2.traces, v3.traces):
        if b.variant == "give_up":
            assert a.variant == "standard"  # drawn from the standard share: the other variants keep their mass
            assert (b.completion, b.answer, b.path) == ("\\boxed{0}", syn.GIVE_UP_ANSWER, "give_up")
            assert sft.response_shape(b.completion) == "give_up"
        else:
            assert a == b


def test_give_up_share_is_validated():
    with pytest.raises(ValueError, match="give_up must be in"):
        sft.build_base_model_v2(0.5, "/nonexistent", give_up=1.0)
    with pytest.raises(ValueError, match="variants"):
        syn.make_sft_traces(make_problems("arithmetic", 2, 0, "train", sft.V2_TASK), 0.5,
                            sft.v2_family_params(give_up=0.99), seed=0)


def test_shipped_v3_rungs_share_v2s_skill_phase_and_carry_the_give_up_share():
    data = json.loads(V3_JSON.read_text())
    names = [r["name"] for r in data["rungs"]]
    assert set(names) == {d.name for d in Path(LADDER_V3_DIR).iterdir() if d.is_dir()}
    assert set(names) == {f"q{q:g}" for q in sft.V2_QS} | {"inflated"}
    for r in data["rungs"]:
        folder = resolve_model_path(f"ladder_v3/{r['name']}")
        recipe, v2 = load_recipe(folder), load_recipe(resolve_model_path(f"ladder_v2/{r['name']}"))
        assert recipe["world"] == "ladder_v3" and recipe["give_up"] == sft.V3_GIVE_UP
        assert recipe["family_params"]["arithmetic"]["variants"]["give_up"] == sft.V3_GIVE_UP
        assert "give_up" not in recipe["skill_family_params"]["arithmetic"]["variants"]
        assert recipe["path_counts_skill_phase"] == {**v2["path_counts_skill_phase"], "give_up": 0}
        n = sum(recipe["variant_counts"].values())  # 48000 prior-phase traces: SE 0.0018, tolerance ~5 SE
        assert abs(recipe["variant_counts"]["give_up"] / n - sft.V3_GIVE_UP) < 0.01
        assert recipe["q"] == v2["q"] and recipe["noise"] == v2["noise"]
        assert r["metrics"]["shapes"]["give_up_rate"] > 0.05  # the sampled base model gives up too
