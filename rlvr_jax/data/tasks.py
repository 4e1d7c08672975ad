"""Reasoning-gym tasks as seeded random-access sources; disjoint held-out sets.

Every data source of rlvr_jax yields records:

    {'id': str, 'problem': str, 'answer': str, 'task': str, 'metadata': dict}

`task` names the checker: a reasoning-gym dataset name (its exact scorer, full
credit only) or 'math' (math-verify). `metadata` is JSON-serializable; for a
reasoning-gym item it is the item's own metadata, which its scorer reads
(tuples become lists; values JSON cannot hold, such as a Fraction, become
their str), plus `solution` = the task's worked solution where the task gives
one (gsm_symbolic's `answer_cot`; `<expression> = <answer>.` for the
arithmetic tasks, so few-shot examples show the computation before the box).

Any registered reasoning-gym dataset works (basic_arithmetic, chain_sum,
gsm_symbolic, countdown, ...); its config fields are passed through as
`task_kwargs` (e.g. basic_arithmetic `min_terms`, `max_terms`, `min_digits`,
`max_digits`, `operators`, `allow_negation`, `allow_parentheses`). `seed` and
`size` are set by this module and may not appear in `task_kwargs`. The kwargs
a run uses are `task_kwargs(task, given)`: the task's entry of `TASK_KWARGS`
(the calibrated defaults of a task; none = reasoning-gym's own) with the
given ones over it, so switching `data.task` never carries another task's
kwargs along.

Held-out disjointness, in two layers:

1. Different generator seeds. reasoning-gym builds item i of a dataset with
   seed s from `random.Random(s + i)`, so the datasets of seeds 0 and 1 share
   all items but one, shifted by one index: "a different seed" alone gives an
   almost identical set. Split k (train 0, held-out 1) of data seed d is
   therefore generated with seed `(2 * d + k) * 2**32`, and item indices stay
   below 2**32, so no two (seed, split) pairs ever share a per-item RNG seed.
2. Deduplication of the problem text. Different RNG seeds can still draw the
   same problem (2-term 1-digit arithmetic has only a few hundred). The
   held-out set keeps the first `size` distinct problems of its split, and the
   training stream drops (yields None for) every item whose whitespace-
   normalized problem text (`problem_key`) is in the held-out set, via
   `DropHeldOut`, which `iterator.make_sources` also applies to file and tfds
   sources.

Gold answers are checked where the item allows it. reasoning-gym 0.1.25's
basic_arithmetic gets some answers wrong: with `allow_parentheses=False` it
evaluates left to right ('5 - 2 * 3' -> 9) and prints divisors it did not use
(measured: 67% of 2000 default-size items wrong, 25% at 2 terms); with the
default `allow_parentheses=True` about 1% of multi-term items with division
are wrong; 2-term items were all right. For basic_arithmetic and chain_sum the
displayed `metadata['expression']` is evaluated exactly (`arithmetic_value`)
and an item whose answer differs is dropped (None, logged), in the training
stream and in the held-out set alike.
"""

import ast
import dataclasses
import fractions
import json
import operator
from typing import Any, Callable, Iterable, Protocol, Sequence

from absl import logging
import reasoning_gym
from reasoning_gym import factory

Record = dict[str, Any]

SPLITS = ("train", "eval")
# Per-task default kwargs (the run's `data.task_kwargs` go over them). The
# default run's task: 2 terms of 1-2 digits with + - * (experiments/configs/
# default.py explains the calibration).
TASK_KWARGS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
        "operators": ("+", "-", "*"), "allow_parentheses": False,
        "allow_negation": False,
    },
}
_SEED_STRIDE = 2**32
# Tasks whose metadata['expression'] is the arithmetic the answer must equal.
CHECKED_TASKS = ("basic_arithmetic", "chain_sum")
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class RecordSource(Protocol):
  """A random-access source of records (a list is one).

  `__getitem__` returns a record, or None for a record that is excluded (a
  duplicate of a held-out problem, or a generated item with a wrong gold
  answer); `iterator.PromptIterator` skips None, as grain does for filtered
  elements.
  """

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Record | None:
    ...


def problem_key(problem: str) -> str:
  """The deduplication key of a problem: its text with whitespace collapsed."""
  return " ".join(problem.split())


def arithmetic_value(expression: str) -> fractions.Fraction:
  """The exact value of integer arithmetic with + - * /, unary -, parentheses.

  Args:
    expression: e.g. '-( 2 + 3 ) * 4 / 8'.

  Returns:
    The value as a Fraction ('/' is true division: '7 / 2' is 7/2).

  Raises:
    ValueError: anything else in the expression, or a division by zero.
  """

  def value(node: ast.AST) -> fractions.Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return fractions.Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
      left, right = value(node.left), value(node.right)
      if isinstance(node.op, ast.Div) and right == 0:
        raise ValueError(f"expression {expression!r}: division by zero")
      return _BINARY[type(node.op)](left, right)
    raise ValueError(f"expression {expression!r}: unsupported {ast.dump(node)}")

  try:
    tree = ast.parse(expression.strip(), mode="eval")
  except SyntaxError as e:
    raise ValueError(f"expression {expression!r}: {e}") from e
  return value(tree.body)


def gold_answer_holds(task: str, answer: str, metadata: dict[str, Any]) -> bool:
  """Whether a checked task's answer equals its expression (module docstring).

  Tasks outside `CHECKED_TASKS` always pass.
  """
  if task not in CHECKED_TASKS:
    return True
  try:
    value = arithmetic_value(metadata["expression"])
    return value == fractions.Fraction(answer)
  except ValueError:
    return False


def task_kwargs(task: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
  """The kwargs a run passes to `task`: `TASK_KWARGS[task]` with `given` over it.

  Args:
    task: a reasoning-gym dataset name.
    given: the run's `data.task_kwargs` ({} or None = the task's defaults).

  Returns:
    A new dict (applying it again gives the same dict).
  """
  return {**TASK_KWARGS.get(task, {}), **dict(given or {})}


def generator_seed(seed: int, split: str) -> int:
  """The reasoning-gym dataset seed of one split (module docstring, item 1)."""
  if seed < 0:
    raise ValueError(f"seed={seed}: must be >= 0")
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: must be one of {SPLITS}")
  return (2 * seed + SPLITS.index(split)) * _SEED_STRIDE


def _create(
    task: str, task_kwargs: dict[str, Any], *, seed: int, size: int
) -> reasoning_gym.dataset.ProceduralDataset:
  """Creates the reasoning-gym dataset, with errors naming our arguments."""
  if task not in factory.DATASETS:
    raise ValueError(
        f"task={task!r} is not a reasoning-gym dataset; e.g."
        f" {sorted(factory.DATASETS)[:8]} (all: reasoning_gym.factory.DATASETS)"
    )
  config_cls = factory.DATASETS[task][1]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  for key in task_kwargs:
    if key in ("seed", "size"):
      raise ValueError(
          f"task_kwargs[{key!r}]: set by data.seed / data.train_size /"
          " data.eval_size, not by the task kwargs"
      )
    if key not in fields:
      raise ValueError(
          f"task_kwargs[{key!r}]: not a field of {task}'s config; valid:"
          f" {sorted(fields - {'seed', 'size'})}"
      )
  if size < 1 or size >= _SEED_STRIDE:
    raise ValueError(f"size={size}: must be in [1, 2**32)")
  try:
    return reasoning_gym.create_dataset(
        task, seed=seed, size=size, **task_kwargs
    )
  except AssertionError as e:
    raise ValueError(f"task_kwargs={task_kwargs!r} for {task}: {e}") from e


class TaskSource:
  """One split of a reasoning-gym task as a random-access source of records.

  Item `index` is a pure function of (task, task_kwargs, seed, split, index),
  generated on access (countdown takes ~30 ms an item, so nothing is
  materialized).
  """

  def __init__(
      self,
      task: str,
      *,
      task_kwargs: dict[str, Any],
      seed: int,
      split: str,
      size: int,
  ):
    """Initializes the source.

    Args:
      task: a reasoning-gym dataset name.
      task_kwargs: fields of that dataset's config.
      seed: the data seed (>= 0); splits get disjoint generator seeds.
      split: 'train' or 'eval'.
      size: number of items (one epoch).
    """
    self.task = task
    self.seed = seed
    self.split = split
    self._dataset = _create(
        task, dict(task_kwargs), seed=generator_seed(seed, split), size=size
    )

  def __len__(self) -> int:
    return len(self._dataset)

  def __getitem__(self, index: int) -> Record | None:
    """The record of item `index`, or None when its gold answer is wrong."""
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range [0, {len(self)})")
    item = self._dataset[index]
    record_id = f"{self.task}/{self.split}/{self.seed}/{index}"
    metadata = json.loads(json.dumps(item["metadata"], default=str))
    answer = str(item["answer"])
    if not gold_answer_holds(self.task, answer, metadata):
      logging.log_first_n(
          logging.WARNING,
          "%s: dropped, reasoning-gym answer %s != value of %r",
          20, record_id, answer, metadata.get("expression"),
      )
      return None
    if "answer_cot" in metadata:
      metadata["solution"] = metadata["answer_cot"]
    elif "expression" in metadata:  # basic_arithmetic, chain_sum
      metadata["solution"] = f"{metadata['expression']} = {answer}."
    return {
        "id": record_id,
        "problem": item["question"],
        "answer": answer,
        "task": self.task,
        "metadata": metadata,
    }


def held_out_records(
    task: str, *, task_kwargs: dict[str, Any], seed: int, size: int
) -> list[Record]:
  """The held-out set: the first `size` distinct problems of the eval split.

  Args:
    task: a reasoning-gym dataset name.
    task_kwargs: fields of that dataset's config.
    seed: the data seed (the same one the training source uses).
    size: number of held-out records.

  Returns:
    `size` records with pairwise distinct `problem_key`s.

  Raises:
    ValueError: the task config cannot produce `size` distinct problems
      (with a correct answer) within `10 * size + 100` draws.
  """
  if size == 0:
    return []
  limit = 10 * size + 100
  source = TaskSource(
      task, task_kwargs=task_kwargs, seed=seed, split="eval", size=limit
  )
  records, seen = [], set()
  for index in range(limit):
    record = source[index]
    if record is None:
      continue
    key = problem_key(record["problem"])
    if key not in seen:
      seen.add(key)
      records.append(record)
      if len(records) == size:
        return records
  raise ValueError(
      f"eval_size={size}: {task} with task_kwargs={task_kwargs!r} gave only"
      f" {len(records)} distinct problems with a correct answer in {limit}"
      " draws"
  )


class DropHeldOut:
  """A view of a source without the held-out problems (and rows).

  Item i is `base[indices[i]]`, or None when its problem is held out.
  """

  def __init__(
      self,
      base: RecordSource,
      *,
      held_out: Iterable[Record],
      indices: Sequence[int] | None = None,
  ):
    """Initializes the view.

    Args:
      base: the full source.
      held_out: the held-out records; their `problem_key`s are excluded.
      indices: the rows of `base` in this view (all rows when None).
    """
    self._base = base
    self._indices = indices
    self._excluded = frozenset(problem_key(r["problem"]) for r in held_out)

  def __len__(self) -> int:
    return len(self._base) if self._indices is None else len(self._indices)

  def __getitem__(self, index: int) -> Record | None:
    if self._indices is not None:
      index = int(self._indices[index])
    record = self._base[index]
    if record is None or problem_key(record["problem"]) in self._excluded:
      return None
    return record
