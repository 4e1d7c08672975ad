"""A tensorflow-datasets builder over local JSONL/parquet files, without TF.

Route (checked against tensorflow-datasets 4.9.10 with TensorFlow absent):
`tfds.core.GeneratorBasedBuilder.download_and_prepare` with
`file_format='array_record'` serializes examples with tfds' own protobuf code
and writes array_record shards, so a builder class is prepared without
TensorFlow. Reading goes through `tfds.data_source(name, data_dir=...)`, which
returns random-access `ArrayRecordDataSource`s (`tfds.load` / `as_dataset`
would need TensorFlow). The builder is not registered with tfds
(`skip_registration=True`), so `tfds.data_source` reads the prepared
directory from its metadata (a read-only builder) and never needs the source
files again.

Layout: `<data_dir>/local_records/<name>/1.0.0/`, one array_record file set
per split, in file order (shuffling at preparation is disabled; the iterator
shuffles). Features: `id`, `problem`, `answer`, `task` (text) and `metadata`
(the record's metadata as JSON text); `TfdsSource` turns examples back into
records.

Usage:

    prepare(name='gsm8k', split_files={'train': 'train.jsonl',
            'test': 'test.jsonl'}, columns='gsm8k', data_dir='/data/tfds')
    source = TfdsSource('local_records/gsm8k', data_dir='/data/tfds',
                        split='train')
"""

import json
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from rlvr_jax.data import files

Record = dict[str, Any]

BUILDER_NAME = "local_records"
_TEXT_FIELDS = ("id", "problem", "answer", "task")


class LocalRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Records read from local JSONL/parquet files through a column mapping."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Records {id, problem, answer, task, metadata}."}
  # No code directory with download checksums: the data are local files. tfds
  # 4.9.10 looks for that directory through the `importlib_resources`
  # backport (not installed on Python >= 3.9) for a builder defined in a
  # package; None is its documented value for a class without one.
  code_path = None

  def __init__(self, *, split_files: dict[str, str], columns: str, **kwargs):
    """Initializes the builder.

    Args:
      split_files: split name -> JSONL or parquet file.
      columns: the column mapping of `files.load_records`.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (data_dir,
        config, file_format).
    """
    self._split_files = dict(split_files)
    self._columns = columns
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: tfds.features.Text() for k in (*_TEXT_FIELDS, "metadata")}
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"Local files {self._split_files} read with columns="
            f"{self._columns!r}; metadata is JSON text."
        ),
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # Local files only.
    return {
        split: self._generate_examples(path)
        for split, path in self._split_files.items()
    }

  def _generate_examples(
      self, path: str
  ) -> Iterator[tuple[int, dict[str, str]]]:
    loaded = files.load_records(path, columns=self._columns)
    for index, record in enumerate(loaded.records):
      example = {k: record[k] for k in _TEXT_FIELDS}
      example["metadata"] = json.dumps(record["metadata"])
      yield index, example


def prepare(
    *, name: str, split_files: dict[str, str], columns: str, data_dir: str
) -> str:
  """Prepares `local_records/<name>` as array_record; returns its directory.

  Malformed rows are skipped and logged by `files.load_records`; a file with
  no usable row raises ValueError naming it.
  """
  if not split_files:
    raise ValueError("split_files is empty: give at least {'train': path}")
  builder = LocalRecords(
      split_files=split_files,
      columns=columns,
      data_dir=data_dir,
      config=tfds.core.BuilderConfig(name=name, description=f"{name} records"),
      file_format="array_record",
  )
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def split_names(name: str, *, data_dir: str) -> tuple[str, ...]:
  """The splits of a prepared dataset, e.g. ('test', 'train')."""
  return tuple(sorted(_data_sources(name, data_dir)))


def _data_sources(name: str, data_dir: str) -> dict[str, Any]:
  try:
    return tfds.data_source(name, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"tfds dataset {name!r} not found under data_dir={data_dir!r}: prepare"
        " it with rlvr_jax.data.tfds_builder.prepare"
    ) from e


class TfdsSource:
  """One split of a prepared dataset as a random-access source of records."""

  def __init__(self, name: str, *, data_dir: str, split: str):
    """Initializes the source.

    Args:
      name: the tfds name, e.g. 'local_records/gsm8k'.
      data_dir: the tfds data directory it was prepared in.
      split: a split name, e.g. 'train'.
    """
    sources = _data_sources(name, data_dir)
    if split not in sources:
      raise ValueError(
          f"split={split!r}: {name} under {data_dir} has splits"
          f" {sorted(sources)}"
      )
    self._source = sources[split]

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Record:
    example = self._source[index]
    record = {k: example[k].decode("utf-8") for k in _TEXT_FIELDS}
    record["metadata"] = json.loads(example["metadata"].decode("utf-8"))
    return record
