"""Train/held-out sources from the config; one resumable, sharded iterator.

`make_sources(config.data)` reads these fields of the `data` ConfigDict:

- `data.source`: 'reasoning_gym' | 'jsonl' | 'parquet' | 'tfds'.
- `data.seed`: int >= 0. The data seed: reasoning-gym generator seeds of the
  train and held-out splits (`tasks.generator_seed`), and the seeded choice of
  held-out rows carved from a file or tfds split.
- `data.eval_size`: int >= 0, number of held-out records (0: none).
- reasoning_gym only: `data.task` (dataset name), `data.task_kwargs` (dict of
  its config fields, over the task's defaults: `tasks.task_kwargs`),
  `data.train_size` (items in one training epoch).
  `data.task='rubric'` is the rubric task instead (`_rubric_records`).
- jsonl / parquet only: `data.path` (training file), `data.columns` (preset or
  mapping string, `files.py`), `data.eval_path` (held-out file of the same
  layout: its first `eval_size` usable rows; '' carves `eval_size` rows of
  `data.path`, chosen by `data.seed`, out of training).
- tfds only: `data.task` (the prepared dataset's tfds name, e.g.
  'local_records/gsm8k'), `data.path` (its tfds data_dir). The held-out set is
  the first `eval_size` records of its 'test' split if it has one, else
  `eval_size` records of 'train' carved out by `data.seed`.

Whatever the source, the training source drops every record whose problem
text is a held-out problem (`tasks.DropHeldOut`), so the two never share a
problem.

`PromptIterator` turns a source into an endless (or `num_epochs`-long) stream
of batches, built on grain: a seeded shuffle reseeded every epoch, repeat,
sharding of the global stream by host, skip of excluded (None) records, and a
JSON-serializable position (`get_state` / `set_state`).
"""

import dataclasses
from typing import Any

import grain
import ml_collections
import numpy as np

from rlvr_jax.data import files
from rlvr_jax.data import rubric
from rlvr_jax.data import tasks
from rlvr_jax.data import tfds_builder

Record = dict[str, Any]
SOURCES = ("reasoning_gym", "jsonl", "parquet", "tfds")
# `data.task` of the rubric task (with data.source='reasoning_gym', the
# procedural source): prompts with checkable criteria, `data/rubric.py`.
RUBRIC_TASK = "rubric"


@dataclasses.dataclass(frozen=True)
class Sources:
  """The training source and the held-out records.

  Attributes:
    train: random-access training source (None for dropped records).
    eval: held-out records, disjoint in problem text from `train`.
  """

  train: tasks.RecordSource
  eval: list[Record]


def _carve(
    n: int, eval_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Splits range(n) into (train, held-out) index arrays, both sorted."""
  if eval_size >= n:
    raise ValueError(
        f"eval_size={eval_size}: must be smaller than the {n} training rows it"
        " is carved from"
    )
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[eval_size:]), np.sort(order[:eval_size])


def _first(source: tasks.RecordSource, size: int, what: str) -> list[Record]:
  """The first `size` records of a source; ValueError naming it if fewer."""
  if len(source) < size:
    raise ValueError(f"eval_size={size}: {what} has only {len(source)} records")
  return [source[i] for i in range(size)]


def make_sources(data: ml_collections.ConfigDict) -> Sources:
  """Builds the training source and held-out set from `config.data`.

  Args:
    data: the `data` ConfigDict; fields in the module docstring.

  Returns:
    The training source and the held-out records.

  Raises:
    ValueError: an unknown `data.source`, a bad seed/size, or any error of
      the underlying loader (naming the task, file or split).
  """
  if data.source not in SOURCES:
    raise ValueError(f"data.source={data.source!r}: must be one of {SOURCES}")
  if data.eval_size < 0:
    raise ValueError(f"data.eval_size={data.eval_size}: must be >= 0")
  indices = None
  if data.source == "reasoning_gym" and data.task == RUBRIC_TASK:
    base, held_out, indices = _rubric_records(data)
  elif data.source == "reasoning_gym":
    kwargs = tasks.task_kwargs(data.task, dict(data.task_kwargs))
    held_out = tasks.held_out_records(
        data.task, task_kwargs=kwargs, seed=data.seed, size=data.eval_size
    )
    base = tasks.TaskSource(
        data.task,
        task_kwargs=kwargs,
        seed=data.seed,
        split="train",
        size=data.train_size,
    )
  elif data.source in ("jsonl", "parquet"):
    base = files.load_records(
        data.path, columns=data.columns, file_format=data.source
    ).records
    if data.eval_path:
      eval_file = files.load_records(
          data.eval_path, columns=data.columns, file_format=data.source
      ).records
      held_out = _first(eval_file, data.eval_size, data.eval_path)
    else:
      indices, held = _carve(len(base), data.eval_size, data.seed)
      held_out = [base[i] for i in held]
  else:
    splits = tfds_builder.split_names(data.task, data_dir=data.path)
    base = tfds_builder.TfdsSource(data.task, data_dir=data.path, split="train")
    if "test" in splits:
      test = tfds_builder.TfdsSource(
          data.task, data_dir=data.path, split="test"
      )
      held_out = _first(test, data.eval_size, f"{data.task} split 'test'")
    else:
      indices, held = _carve(len(base), data.eval_size, data.seed)
      held_out = [base[int(i)] for i in held]
  train = tasks.DropHeldOut(base, held_out=held_out, indices=indices)
  return Sources(train=train, eval=held_out)


def _rubric_records(data: ml_collections.ConfigDict
                    ) -> tuple[list[Record], list[Record], np.ndarray | None]:
  """The rubric task (`data/rubric.py`): (train rows, held-out, train indices).

  With `data.path`, prompts from that rubric JSONL file (`rubric.read_jsonl`)
  and the held-out set from `data.eval_path` (its first `eval_size`) or carved
  out by `data.seed`; otherwise `rubric.generate` with the split's generator
  seed, `data.train_size` and `data.eval_size` prompts, at
  `data.task_kwargs['difficulty']` (default 2).
  """
  if data.path:
    base = [p.record() for p in rubric.read_jsonl(data.path)]
    if data.eval_path:
      eval_file = [p.record() for p in rubric.read_jsonl(data.eval_path)]
      return base, _first(eval_file, data.eval_size, data.eval_path), None
    indices, held = _carve(len(base), data.eval_size, data.seed)
    return base, [base[i] for i in held], indices
  difficulty = int(dict(data.task_kwargs).get("difficulty", 2))
  make = lambda n, split: [p.record() for p in rubric.generate(
      n, seed=tasks.generator_seed(data.seed, split), difficulty=difficulty)]
  return make(data.train_size, "train"), make(data.eval_size, "eval"), None


class PromptIterator:
  """Batches of records from a random-access source: seeded, sharded, resumable.

  The global stream is epoch e's permutation of the source (seeded by `seed`,
  a fresh permutation every epoch), epochs concatenated. Host `shard_index`
  of `shard_count` takes the global positions p with
  p % shard_count == shard_index, so the shards are disjoint and together
  cover the stream. Records that are None (held-out duplicates, wrong gold
  answers; `tasks.RecordSource`) are skipped, so every batch holds
  `batch_size` records; with a finite `num_epochs` the last incomplete batch
  is dropped.
  """

  def __init__(
      self,
      source: tasks.RecordSource,
      *,
      batch_size: int,
      seed: int,
      shard_index: int = 0,
      shard_count: int = 1,
      num_epochs: int | None = None,
  ):
    """Initializes the iterator at the start of the stream.

    Args:
      source: `len` and `__getitem__` (records or None), e.g. `Sources.train`.
      batch_size: records (prompts) per batch on this host.
      seed: shuffle seed.
      shard_index: this host's index, usually `jax.process_index()`.
      shard_count: number of hosts, usually `jax.process_count()`.
      num_epochs: passes over the source; None repeats forever.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if not 0 <= shard_index < shard_count:
      raise ValueError(
          f"shard_index={shard_index}: must be in"
          f" [0, shard_count={shard_count})"
      )
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs={num_epochs}: must be >= 1 or None")
    if len(source) == 0:
      raise ValueError("source is empty")
    self._settings = {
        "batch_size": batch_size,
        "seed": seed,
        "shard_index": shard_index,
        "shard_count": shard_count,
        "num_epochs": num_epochs,
        "source_len": len(source),
    }
    dataset = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat(num_epochs)
    )
    dataset = dataset[shard_index::shard_count]
    # No prefetch threads: reasoning-gym items are generated on access and
    # threads would compete with the trainer for the CPU.
    dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    ).batch(batch_size, drop_remainder=True, batch_fn=list)
    self._iterator = iter(dataset)

  def __iter__(self) -> "PromptIterator":
    return self

  def __next__(self) -> list[Record]:
    return next(self._iterator)

  def get_state(self) -> dict[str, Any]:
    """The position in the stream, JSON-serializable, with the settings."""
    return {
        "settings": dict(self._settings),
        "grain": self._iterator.get_state(),
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Moves to a position saved by `get_state` of an identical iterator.

    Raises:
      ValueError: the state was saved with other settings (batch size, seed,
        sharding, epochs or source length), which would silently change the
        data order.
    """
    if state["settings"] != self._settings:
      raise ValueError(
          f"state: saved with settings {state['settings']}, this iterator has"
          f" {self._settings}"
      )
    self._iterator.set_state(state["grain"])
