"""The top-level API: lazy names, the README's Python example run verbatim, and the text-level helpers."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import urlvr_jax as ux

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "flax", "transformers", "torch", "numpy", "ml_collections", "sympy", "math_verify",
         "optax", "orbax")


def readme_example() -> str:
    """The first ```python block of README.md's "## Python API" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    body = section[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", body, re.S)
    assert m, "README.md's '## Python API' section has no ```python block"
    return m.group(1)


def test_import_is_light_and_lazy():
    code = ("import sys, json, urlvr_jax; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(HEAVY), f"import urlvr_jax pulled in {sorted(loaded & set(HEAVY))}"


def test_every_public_name_resolves_and_dir_lists_them():
    assert set(ux.__all__) >= {"load_model", "save_model", "load_tokenizer", "make_mesh", "generate", "score",
                               "evaluate", "grade", "train", "base_config", "validate", "get_config"}
    assert set(ux.__all__) <= set(dir(ux))
    for name in ux.__all__:
        assert callable(getattr(ux, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ux.nope  # noqa: B018


def test_function_names_survive_importing_the_submodules_of_the_same_name():
    import importlib

    from urlvr_jax.evaluate import summarize  # noqa: F401  (imports the sub-module urlvr_jax.evaluate)
    from urlvr_jax.train import Checkpointer  # noqa: F401

    assert ux.train is importlib.import_module("urlvr_jax.train").train
    assert ux.evaluate is importlib.import_module("urlvr_jax.evaluate").evaluate
    from urlvr_jax import evaluate, train

    assert callable(train) and callable(evaluate) and train.__name__ == "train"


def test_readme_example_uses_only_top_level_names():
    tree = ast.parse(readme_example())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(a.name, a.asname) for n in imports for a in n.names] == [("urlvr_jax", "ux")]
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "ux"}
    assert used <= set(ux.__all__), used - set(ux.__all__)
    assert {"load_model", "load_tokenizer", "generate", "grade", "evaluate"} <= used


def test_readme_example_runs(capsys):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md:## Python API", "exec"), namespace)
    responses, result = namespace["responses"], namespace["result"]
    assert len(responses) == 4 and all(isinstance(r, str) and r for r in responses)
    assert any("\\boxed{" in r for r in responses)  # the shipped model writes boxed traces
    s = result.summary
    assert s["n_problems"] == 16 and s["k"] == 4
    assert 0.0 <= s["avg@4"] <= s["pass@4"] <= 1.0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == "True True"  # the two grader examples, as the README's comment says


@pytest.fixture(scope="module")
def ladder():
    return ux.load_model("ladder/q0.1"), ux.load_tokenizer("ladder/q0.1")


def test_generate_text_and_token_ids_agree(ladder):
    model, tok = ladder
    sampling = ux.SamplingConfig(max_new_tokens=24)
    prompts = ["Q: 5+6+1\nA: ", "Q: 8*(6*1)+3\nA: "]
    by_text = ux.generate(model, tok, prompts, sampling, num_samples=3, seed=7)
    ids = [tok(p)["input_ids"] for p in prompts]
    by_ids = ux.generate(model, tok, ids, sampling, num_samples=3, seed=7)
    assert by_text == by_ids
    assert [len(g) for g in by_text] == [3, 3]
    assert ux.generate(model, tok, prompts[0], sampling, num_samples=3, seed=7) != by_text[1]
    with pytest.raises(TypeError, match="prompt 1"):
        ux.generate(model, tok, [ids[0], prompts[1]], sampling)
    with pytest.raises(ValueError, match="num_samples"):
        ux.generate(model, tok, prompts, sampling, num_samples=0)


def test_score_equals_log_softmax_of_a_full_forward(ladder):
    """score's per-token log-probs against float64 log-softmax of the model's own full-sequence logits."""
    model, tok = ladder
    prompts, responses = ["Q: 5+6+1\nA: ", "Q: 2+2\nA: "], ["5+6=11\n11+1=12\n\\boxed{12}", "\\boxed{4}"]
    s = ux.score(model, tok, prompts, responses)
    assert s.logprob.shape == s.mask.shape and s.total_logprob.shape == (2,)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_ids = tok(p)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        ids = np.asarray([p_ids + r_ids], np.int32)
        logits = np.asarray(model(ids, np.ones_like(ids)), np.float64)[0]
        z = logits[len(p_ids) - 1:len(ids[0]) - 1]
        ref = z[np.arange(len(r_ids)), r_ids] - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) - z.max(-1)
        n = int(s.mask[i].sum())
        assert n == len(r_ids)
        np.testing.assert_allclose(s.logprob[i, :n], ref, rtol=0, atol=1e-4)
        assert np.all(s.logprob[i, n:] == 0)


def test_get_config_file_variant_and_errors(tmp_path, monkeypatch):
    c = ux.get_config(str(ROOT / "configs" / "default.py") + ":mcs_probe")
    assert c.rl.learning_rate == 3e-3 and c.model.path == "ladder/q0.1"
    monkeypatch.chdir(tmp_path)  # bare names fall back to the checkout's configs/
    assert ux.get_config("default").train.steps == ux.get_config(str(ROOT / "configs/default.py")).train.steps
    with pytest.raises(ValueError, match="unknown variant"):
        ux.get_config("default:nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        ux.get_config("nope")
    (tmp_path / "bad.py").write_text("from urlvr_jax.config import base_config\n\n\ndef get_config():\n"
                                     "    c = base_config()\n    c.model.path = 'x'\n    c.rl.num_samples = 0\n"
                                     "    return c\n")
    with pytest.raises(ValueError, match="rl.num_samples"):
        ux.get_config("bad.py")  # validate names the key
    assert ux.get_config("bad", validate=False).rl.num_samples == 0
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="must define get_config"):
        ux.get_config("empty.py")
