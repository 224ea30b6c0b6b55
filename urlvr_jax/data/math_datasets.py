"""Math problems with verifiable answers: one record type and one loader for every source.

`load_math_dataset(name_or_path, split)` returns a list of `MathProblem(id, problem, answer, source,
extra)`. `problem` is the bare problem text (no instruction: templates.py adds that) and `answer` is
the gold final answer as a string. Sources:

- the evaluation sets shipped in `assets/` (offline, byte-identical copies, see assets/README.md):
  `gsm8k` (train, test), `math500`, `aime24`, `aime25`, `amc23`, and TTRL's test-time sets
  `ttrl/AIME-TTT`, `ttrl/AMC-TTT`, `ttrl/MATH-TTT`, `ttrl/MATH-L1-TTT` .. `ttrl/MATH-L5-TTT`
  (train == test there, see the TTRL README);
- `dapo-math-17k`: the paper's training set, by hub id through `datasets` (online only);
- any local `.jsonl` / `.json` / `.parquet` file, with field names auto-detected or given.

Gold answers per source: GSM8K takes the text after "#### " with thousands commas removed;
MATH-500 and TTRL take their `answer` field verbatim; AIME 2024 answers ("025") and AMC 2023 answers
(27.0) are numbers and become canonical integer strings ("25", "27"; the raw value stays in
`extra["raw_answer"]`); AIME 2025 answers are ints; DAPO takes `reward_model.ground_truth`.

JSON files are parsed here, not by `datasets`, so that a malformed record is reported with its file
and 1-based line number; parquet files and hub ids go through `datasets`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from urlvr_jax.rewards.grading import extract_boxed

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

# The instruction that Qwen's AIME 2025 file (QwQ eval/data/aime25.jsonl) appends to every problem.
_AIME25_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."

# DAPO-Math-17k wraps each problem in this instruction (user message of its verl-style prompt).
_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

DAPO_HUB_ID = "BytedTsinghua-SIA/DAPO-Math-17k"

# Auto-detected field names, in priority order (dotted names reach into nested dicts).
PROBLEM_KEYS = ("problem", "question", "prompt", "query", "input")
ANSWER_KEYS = ("reward_model.ground_truth", "answer", "final_answer", "label", "ground_truth", "gt",
               "target", "solution")
ID_KEYS = ("id", "unique_id", "idx", "extra_info.index")


class DatasetFormatError(ValueError):
    """A record of a data file is malformed; the message names the file, line (or row) and key."""


@dataclasses.dataclass(frozen=True)
class MathProblem:
    """One problem. `answer` is the gold final answer; `extra` keeps the source's other fields."""

    id: str
    problem: str
    answer: str
    source: str
    extra: dict = dataclasses.field(default_factory=dict)

    def __hash__(self) -> int:  # `extra` (a dict) is left out: equal records still hash equal
        return hash((self.id, self.problem, self.answer, self.source))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MathProblem":
        return cls(id=d["id"], problem=d["problem"], answer=d["answer"], source=d["source"],
                   extra=dict(d.get("extra") or {}))


# ----------------------------------------------------------------------------------------------
# Registry of the shipped sets
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Shipped:
    folder: str                  # under ASSETS_DIR
    files: dict                  # split -> file name
    kind: str                    # which record parser


_TTRL_SETS = ("AIME-TTT", "AMC-TTT", "MATH-TTT") + tuple(f"MATH-L{i}-TTT" for i in range(1, 6))

SHIPPED: dict[str, _Shipped] = {
    "gsm8k": _Shipped("gsm8k", {"train": "train.jsonl", "test": "test.jsonl"}, "gsm8k"),
    "math500": _Shipped("math500", {"test": "test.jsonl"}, "math500"),
    "aime24": _Shipped("aime24", {"test": "test.jsonl"}, "aime24"),
    "aime25": _Shipped("aime25", {"test": "aime25.jsonl"}, "aime25"),
    "amc23": _Shipped("amc23", {"test": "test.jsonl"}, "amc23"),
    **{f"ttrl/{s}": _Shipped(f"ttrl/{s}", {"train": "train.json", "test": "test.json"}, "ttrl")
       for s in _TTRL_SETS},
}
HUB_NAMES = {"dapo-math-17k": DAPO_HUB_ID}
_ALIASES = {DAPO_HUB_ID.lower(): "dapo-math-17k", "math-500": "math500"}


def list_datasets() -> list[str]:
    """Every name `load_math_dataset` accepts (besides local paths)."""
    return sorted(SHIPPED) + sorted(HUB_NAMES)


def _canonical_name(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    for n in list(SHIPPED) + list(HUB_NAMES):
        if n.lower() == key:
            return n
    return None


def asset_file(name: str, split: str = "test") -> Path:
    """Path of a shipped set's file, e.g. asset_file("gsm8k", "train")."""
    canon = _canonical_name(name)
    if canon not in SHIPPED:
        raise KeyError(f"{name!r} is not a shipped dataset; shipped: {', '.join(sorted(SHIPPED))}")
    spec = SHIPPED[canon]
    if split not in spec.files:
        raise ValueError(f"dataset {canon!r} has no split {split!r}; available: {sorted(spec.files)}")
    return ASSETS_DIR / spec.folder / spec.files[split]


# ----------------------------------------------------------------------------------------------
# JSON / JSON Lines reading with line numbers
# ----------------------------------------------------------------------------------------------
def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # split on "\n" only: str.splitlines() also splits on U+2028/U+2029/\x85, which JSON allows unescaped
    # inside strings (a GSM8K question has U+2028), and would then misreport line numbers or break records
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                                     "each line of a .jsonl file must be one JSON object") from None


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Yields (line of the element's first character, element) of a top-level JSON array."""
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")

    def lineno(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def fail(pos: int, what: str):
        raise DatasetFormatError(f"{path}:{lineno(pos)}: {what}")

    pos = ws.match(text, 0).end()
    if pos >= len(text) or text[pos] != "[":
        fail(pos, "expected a JSON array of records ('[') or one JSON object per line")
    pos = ws.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") \
                from None
        yield lineno(pos), obj
        pos = ws.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
            continue
        if pos < len(text) and text[pos] == "]":
            return
        fail(pos, "expected ',' or ']' after an array element")


def read_json_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(1-based line, record) pairs of a .jsonl file, or of a .json file holding an array or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        return list(_iter_json_array(path, text))
    return list(_iter_jsonl(path, text))


# ----------------------------------------------------------------------------------------------
# Field helpers
# ----------------------------------------------------------------------------------------------
_MISSING = object()


def _get(row: dict, dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _text_of(value: Any, where: str, key: str) -> str:
    """A problem field: a string, or a chat message list (the last user message's content is taken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user" and isinstance(m.get("content"), str)]
        if users:
            return users[-1]["content"]
        raise DatasetFormatError(f"{where}: key {key!r} is a message list without a user message "
                                 "with string 'content'")
    raise DatasetFormatError(f"{where}: key {key!r} must be a string or a list of chat messages, "
                             f"got {type(value).__name__}")


def _number_to_str(value: Any, where: str, key: str) -> str:
    """Canonical string of a numeric answer: integral values lose their '.0' / leading zeros."""
    if isinstance(value, bool):
        raise DatasetFormatError(f"{where}: key {key!r} is a boolean, expected a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DatasetFormatError(f"{where}: key {key!r} is {value}, expected a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        s = value.strip()
        try:
            return _number_to_str(int(s), where, key)
        except ValueError:
            pass
        try:
            return _number_to_str(float(s), where, key)
        except ValueError:
            raise DatasetFormatError(f"{where}: key {key!r} = {value!r} is not a number") from None
    raise DatasetFormatError(f"{where}: key {key!r} must be a number, got {type(value).__name__}")


def gsm8k_final_answer(solution: str) -> str:
    """The gold answer of a GSM8K solution: text after the last '#### ', commas removed."""
    if "####" not in solution:
        raise ValueError("GSM8K solution has no '#### <answer>' line")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def last_boxed(text: str) -> str | None:
    """Content of the last brace-matched \\boxed{...} (or \\fbox{...}) in text, else None.

    The grader's extractor (one definition for data, rewards and evaluation).
    """
    return extract_boxed(text)


def strip_dapo_instruction(prompt: str) -> str:
    """The bare problem inside DAPO-Math-17k's 'Solve ... Answer: $Answer ...' wrapper (if present)."""
    p = prompt
    if p.startswith(_DAPO_PREFIX):
        p = p[len(_DAPO_PREFIX):]
    if p.endswith(_DAPO_SUFFIX):
        p = p[: -len(_DAPO_SUFFIX)]
    return p


def _require(row: Any, key: str, where: str, types=(str,)) -> Any:
    if not isinstance(row, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    v = _get(row, key)
    if v is _MISSING:
        raise DatasetFormatError(f"{where}: missing key {key!r} (record keys: {sorted(row)})")
    if not isinstance(v, types) or isinstance(v, bool):
        names = "/".join(t.__name__ for t in types)
        raise DatasetFormatError(f"{where}: key {key!r} must be {names}, got {type(v).__name__}")
    return v


# ----------------------------------------------------------------------------------------------
# Per-source record parsers for the shipped sets
# ----------------------------------------------------------------------------------------------
def _parse_shipped(kind: str, name: str, split: str, row: Any, where: str, index: int) -> MathProblem:
    if kind == "gsm8k":
        q = _require(row, "question", where)
        sol = _require(row, "answer", where)
        try:
            ans = gsm8k_final_answer(sol)
        except ValueError:
            raise DatasetFormatError(f"{where}: key 'answer' has no '#### <final answer>' line") from None
        return MathProblem(f"gsm8k/{split}/{index}", q, ans, name, {"solution": sol})
    if kind == "math500":
        p = _require(row, "problem", where)
        a = _require(row, "answer", where)
        uid = _require(row, "unique_id", where)
        extra = {k: row[k] for k in ("solution", "subject", "level") if k in row}
        return MathProblem(f"math500/{uid}", p, a, name, extra)
    if kind == "aime24":
        p = _require(row, "problem", where)
        raw = _require(row, "answer", where, (str, int))
        rid = _require(row, "id", where, (int, str))
        extra = {"raw_answer": raw, **{k: row[k] for k in ("solution", "url") if k in row}}
        return MathProblem(f"aime24/{rid}", p, _number_to_str(raw, where, "answer"), name, extra)
    if kind == "aime25":
        prompt = _require(row, "prompt", where)
        raw = _require(row, "answer", where, (int, str))
        p = prompt[: -len(_AIME25_SUFFIX)] if prompt.endswith(_AIME25_SUFFIX) else prompt
        return MathProblem(f"aime25/{index}", p, _number_to_str(raw, where, "answer"), name,
                           {"raw_answer": raw})
    if kind == "amc23":
        p = _require(row, "problem", where)
        raw = _require(row, "answer", where, (int, float, str))
        rid = _require(row, "id", where, (int, str))
        extra = {"raw_answer": raw, **({"url": row["url"]} if "url" in row else {})}
        return MathProblem(f"amc23/{rid}", p, _number_to_str(raw, where, "answer"), name, extra)
    if kind == "ttrl":
        p = _require(row, "prompt", where)
        a = _require(row, "answer", where)
        rid = _get(row, "id")
        if rid is _MISSING:
            rid = _require(row, "unique_id", where)
        extra = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
        return MathProblem(f"{name}/{rid}", p, a, name, extra)
    raise AssertionError(kind)


def _load_shipped(canon: str, split: str) -> list[MathProblem]:
    spec = SHIPPED[canon]
    path = asset_file(canon, split)
    out = []
    for i, (lineno, row) in enumerate(read_json_records(path)):
        out.append(_parse_shipped(spec.kind, canon, split, row, f"{path}:{lineno}", i))
    return out


# ----------------------------------------------------------------------------------------------
# Generic rows (local files, hub datasets)
# ----------------------------------------------------------------------------------------------
_OWN_FIELDS = {f.name for f in dataclasses.fields(MathProblem)}


def problems_from_rows(rows: Iterable[tuple[str, Any]], source: str, *, problem_key: str | None = None,
                       answer_key: str | None = None, id_key: str | None = None) -> list[MathProblem]:
    """MathProblems from (location, row-dict) pairs; location ("file:line") is used in errors.

    Field names are detected per row among PROBLEM_KEYS / ANSWER_KEYS / ID_KEYS unless given
    (dotted names such as "reward_model.ground_truth" reach into nested dicts). A problem given as a
    chat message list uses its last user message; DAPO's instruction wrapper is stripped. An answer
    taken from a `solution` field is the content of its last \\boxed{}; a GSM8K-style answer
    ("...#### 42") is reduced to the text after "####".
    """
    out = []
    for i, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetFormatError(f"{where}: expected an object with problem/answer fields, "
                                     f"got {type(row).__name__}")
        if set(row) == _OWN_FIELDS and not any((problem_key, answer_key, id_key)):
            # Written by problems_to_jsonl: read back unchanged.
            for k in ("id", "problem", "answer", "source"):
                _require(row, k, where)
            _require(row, "extra", where, (dict,))
            out.append(MathProblem.from_dict(row))
            continue
        pk = problem_key or next((k for k in PROBLEM_KEYS if _get(row, k) is not _MISSING), None)
        if pk is None or _get(row, pk) is _MISSING:
            wanted = repr(problem_key) if problem_key else f"one of {list(PROBLEM_KEYS)}"
            raise DatasetFormatError(f"{where}: missing problem key {wanted} (record keys: "
                                     f"{sorted(row)}); pass problem_key=... to name it")
        ak = answer_key or next((k for k in ANSWER_KEYS if _get(row, k) is not _MISSING), None)
        if ak is None or _get(row, ak) is _MISSING:
            wanted = repr(answer_key) if answer_key else f"one of {list(ANSWER_KEYS)}"
            raise DatasetFormatError(f"{where}: missing answer key {wanted} (record keys: "
                                     f"{sorted(row)}); pass answer_key=... to name it")
        raw_problem = _get(row, pk)
        problem = strip_dapo_instruction(_text_of(raw_problem, where, pk))
        raw_answer = _get(row, ak)
        if raw_answer is None:
            raise DatasetFormatError(f"{where}: answer key {ak!r} is null")
        if isinstance(raw_answer, (int, float)) and not isinstance(raw_answer, bool):
            answer = _number_to_str(raw_answer, where, ak)
        elif isinstance(raw_answer, str):
            answer = raw_answer.strip()
            if ak.split(".")[-1] == "solution":
                boxed = last_boxed(answer)
                if boxed is None:
                    raise DatasetFormatError(f"{where}: answer taken from {ak!r} but it has no "
                                             "\\boxed{...}; pass answer_key=... naming the answer field")
                answer = boxed.strip()
            elif re.search(r"(^|\n)####", answer):
                answer = gsm8k_final_answer(answer)
        else:
            raise DatasetFormatError(f"{where}: answer key {ak!r} must be a string or number, got "
                                     f"{type(raw_answer).__name__}")
        if not answer:
            raise DatasetFormatError(f"{where}: answer key {ak!r} is empty")
        ik = id_key or next((k for k in ID_KEYS if _get(row, k) not in (_MISSING, None)), None)
        if id_key and _get(row, id_key) is _MISSING:
            raise DatasetFormatError(f"{where}: missing id key {id_key!r} (record keys: {sorted(row)})")
        rid = str(_get(row, ik)) if ik else str(i)  # else the row's position
        consumed = {k for k in (pk, ak) if "." not in k}  # nested containers stay whole in extra
        extra = {k: v for k, v in row.items() if k not in consumed}
        if not isinstance(raw_problem, str) or problem != raw_problem:
            extra["original_prompt"] = raw_problem
        if raw_answer != answer:
            extra["raw_answer"] = raw_answer
        out.append(MathProblem(f"{source}/{rid}", problem, answer, source, extra))
    return out


def _dedup(problems: list[MathProblem]) -> list[MathProblem]:
    seen, out = set(), []
    for p in problems:
        if p.problem not in seen:
            seen.add(p.problem)
            out.append(p)
    return out


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be used now (None: try it). Offline mode is left to `datasets` (cache)."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return None  # `datasets` reads its local cache and fails fast if the set is not there
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # reachability is decided by the proxy; let `datasets` try
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        # A quick probe: without it `datasets` retries for ~25 s before failing.
        socket.create_connection((host.split(":")[0], 443), timeout=5).close()
    except OSError as e:
        return f"cannot reach {host} ({e}); set HF_HUB_OFFLINE=1 to use a copy in the datasets cache"
    return None


def _load_hub(canon: str, split: str, dedup: bool, **keys) -> list[MathProblem]:
    hub_id = HUB_NAMES[canon]
    hint = (f"Download it elsewhere (e.g. the parquet file of {hub_id}) and pass its local path: "
            f"load_math_dataset('/path/to/dapo-math-17k.parquet').")
    reason = _hub_unreachable_reason()
    if reason is not None:
        raise RuntimeError(f"dataset {canon!r} ({hub_id}) needs the Hugging Face hub, but {reason}. {hint}")
    import datasets  # heavy import, only when needed

    split = "train" if split == "test" else split  # the hub set has a train split only
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise RuntimeError(f"could not load {hub_id} from the hub or the datasets cache "
                           f"({type(e).__name__}: {e}). {hint}") from e
    rows = ((f"{hub_id}[{split}] row {i + 1}", r) for i, r in enumerate(ds))
    probs = problems_from_rows(rows, canon, **keys)
    return _dedup(probs) if dedup else probs


def _load_local(path: Path, dedup: bool, **keys) -> list[MathProblem]:
    source = path.stem
    if path.suffix in (".jsonl", ".json"):
        rows = ((f"{path}:{ln}", r) for ln, r in read_json_records(path))
    elif path.suffix == ".parquet":
        import datasets  # heavy import, only when needed

        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        rows = ((f"{path} row {i + 1}", r) for i, r in enumerate(ds))
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    probs = problems_from_rows(rows, source, **keys)
    return _dedup(probs) if dedup else probs


def load_math_dataset(name_or_path: str | os.PathLike, split: str = "test", limit: int | None = None,
                      *, problem_key: str | None = None, answer_key: str | None = None,
                      id_key: str | None = None, dedup: bool | None = None) -> list[MathProblem]:
    """Loads a math set as a list of MathProblem, in file order.

    name_or_path: a name from `list_datasets()` (case-insensitive; the DAPO hub id is accepted too)
      or a local .jsonl / .json / .parquet file.
    split: "test" or "train" (gsm8k and ttrl/* have both; the others only "test"). Ignored for local
      files. For dapo-math-17k, which has only a train split, "test" means "train".
    limit: keep the first `limit` problems.
    problem_key / answer_key / id_key: field names for local files / hub sets (auto-detected if None).
    dedup: drop problems whose text repeats an earlier one (default: True for dapo-math-17k, whose hub
      parquet repeats every problem many times; False otherwise).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    keys = dict(problem_key=problem_key, answer_key=answer_key, id_key=id_key)
    canon = _canonical_name(str(name_or_path))
    if canon in SHIPPED:
        if any(keys.values()):
            raise ValueError(f"problem_key/answer_key/id_key apply to local files and hub sets, "
                             f"not to the shipped set {canon!r}")
        probs = _load_shipped(canon, split)
        probs = _dedup(probs) if dedup else probs
    elif canon in HUB_NAMES:
        probs = _load_hub(canon, split, True if dedup is None else dedup, **keys)
    else:
        path = Path(os.path.expanduser(str(name_or_path)))
        if not path.is_file():
            raise ValueError(f"unknown dataset {str(name_or_path)!r}: not a known name and no such file. "
                             f"Known names: {', '.join(list_datasets())}; or pass a local "
                             ".jsonl/.json/.parquet path.")
        probs = _load_local(path, bool(dedup), **keys)
    return probs if limit is None else probs[:limit]


def problems_to_jsonl(problems: Sequence[MathProblem], path: str | os.PathLike) -> None:
    """Writes problems as JSON Lines (fields of MathProblem); `load_math_dataset(path)` reads them back."""
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
