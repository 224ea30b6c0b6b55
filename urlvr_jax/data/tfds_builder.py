"""A tensorflow-datasets builder for the math sets, in array_record format, without TensorFlow.

TPU input pipelines read random-access sources: `tfds.data_source(...)` returns one (backed by
array_record files) and grain consumes it directly. This module prepares those files from the sets
shipped in `assets/` (and from DAPO-Math-17k, given a local file or the hub), using only the
TF-free path of tfds: a `GeneratorBasedBuilder` whose `file_format` is array_record. Neither writing
(`download_and_prepare`) nor reading (`as_data_source` / `tfds.data_source`) imports TensorFlow;
`tfds.load` (tf.data) would, so it is not used.

    path = build_tfds("gsm8k", "/data/tfds")            # -> /data/tfds/urlvr_math/gsm8k/1.0.0
    src = tfds.data_source("urlvr_math/gsm8k", split="test", data_dir="/data/tfds")
    problems = read_tfds("gsm8k", "test", "/data/tfds")  # back to MathProblem records

Each example has the MathProblem fields (`id`, `problem`, `answer`, `source` as UTF-8 text, `extra`
as a JSON string) plus `index`, its position in the source file. Shuffling at preparation time is
disabled, so example i of a split is record i of `load_math_dataset(name, split)`. Importing this
module registers the builder `urlvr_math` with tfds.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from .math_datasets import HUB_NAMES, SHIPPED, MathProblem, _canonical_name, list_datasets, load_math_dataset

BUILDER_NAME = "urlvr_math"
_VERSION = "1.0.0"


def tfds_config_name(name: str) -> str:
    """tfds config name of a dataset name: 'ttrl/MATH-L1-TTT' -> 'ttrl_math_l1_ttt'."""
    canon = _canonical_name(name)
    if canon is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return canon.lower().replace("/", "_").replace("-", "_")


_CONFIG_TO_NAME = {tfds_config_name(n): n for n in list_datasets()}


def _splits(name: str) -> list[str]:
    return sorted(SHIPPED[name].files) if name in SHIPPED else ["train"]


class UrlvrMath(tfds.core.GeneratorBasedBuilder):
    """Math problems with gold answers (one config per data set). Written as array_record."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "MathProblem records: id, problem, answer, source, extra (JSON), index."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c, description=f"{n} (urlvr_jax.data)")
                       for c, n in _CONFIG_TO_NAME.items()]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9.10 locates the code of a builder that lives in a package through the
        # `importlib_resources` backport, which it declares only for Python < 3.9 (so the lookup
        # raises ModuleNotFoundError here). The path is only used to look for a checksums file.
        return epath.Path(__file__)

    def __init__(self, *, source_path: str | os.PathLike | None = None, **kwargs):
        # source_path: a local file for sets that are not shipped (dapo-math-17k); only read while
        # preparing. Reading an existing build never needs it.
        self._source_path = source_path
        super().__init__(**kwargs)

    @property
    def dataset_name(self) -> str:
        return _CONFIG_TO_NAME[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Math problems with verifiable final answers, as loaded by "
                        "urlvr_jax.data.load_math_dataset. See urlvr_jax/data/assets/README.md for "
                        "sources and licenses.",
            features=tfds.features.FeaturesDict({
                "id": text, "problem": text, "answer": text, "source": text, "extra": text,
                "index": np.int64,
            }),
            disable_shuffling=True,  # keep file order: example i == record i
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded: shipped files, a local file, or `datasets`' cache
        return {split: self._generate_examples(split) for split in _splits(self.dataset_name)}

    def _generate_examples(self, split):
        name = self.dataset_name
        if name in HUB_NAMES and self._source_path is not None:
            problems = load_math_dataset(self._source_path, split=split, dedup=True)
        else:
            problems = load_math_dataset(name, split=split)
        for i, p in enumerate(problems):
            yield i, {"id": p.id, "problem": p.problem, "answer": p.answer, "source": p.source,
                      "extra": json.dumps(p.extra, ensure_ascii=False, sort_keys=True), "index": i}


def build_tfds(name: str, data_dir: str | os.PathLike, *, source_path: str | os.PathLike | None = None
               ) -> Path:
    """Prepares (if not yet there) the array_record build of `name` under data_dir; returns its folder.

    name: a dataset name (see list_datasets()). dapo-math-17k needs source_path (a local
      .parquet/.jsonl/.json file) unless the hub is reachable.
    """
    config = tfds_config_name(name)
    builder = UrlvrMath(config=config, data_dir=os.fspath(data_dir), source_path=source_path,
                        file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    if "tensorflow" in sys.modules:  # a guard for this module's promise, not a user error
        raise AssertionError("building the tfds dataset imported TensorFlow")
    return Path(builder.data_dir)


def tfds_data_source(name: str, split: str, data_dir: str | os.PathLike):
    """`tfds.data_source` of a prepared build: a random-access sequence of feature dicts."""
    return tfds.data_source(f"{BUILDER_NAME}/{tfds_config_name(name)}", split=split,
                            data_dir=os.fspath(data_dir), download=False)


def example_to_problem(ex: dict) -> MathProblem:
    """A decoded tfds example (text as bytes) back to a MathProblem."""
    def s(v):
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    return MathProblem(id=s(ex["id"]), problem=s(ex["problem"]), answer=s(ex["answer"]),
                       source=s(ex["source"]), extra=json.loads(s(ex["extra"])))


def read_tfds(name: str, split: str, data_dir: str | os.PathLike) -> list[MathProblem]:
    """All records of a prepared split, in file order, as MathProblem."""
    src = tfds_data_source(name, split, data_dir)
    return [example_to_problem(src[i]) for i in range(len(src))]
