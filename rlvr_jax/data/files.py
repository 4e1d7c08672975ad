"""Local JSONL and parquet files as lists of records, through a column mapping.

A record is the unit every data source of rlvr_jax yields (see `tasks.py`):
`{'id': str, 'problem': str, 'answer': str, 'task': str, 'metadata': dict}`.

The column mapping (flag/config field `data.columns`) is either a preset name
from `PRESETS` or a string `'src:dst[|transform],...'`:

- `src` is a column, or a dotted path into nested values, where an integer
  component indexes a list: `prompt.0.content` is
  `row['prompt'][0]['content']`. (A column whose name contains a dot cannot be
  addressed.)
- `dst` is one of `id`, `problem`, `answer`, `task`, `metadata` (the value must
  be a dict, merged into the record's metadata), `metadata.<key>`,
  `subproblems` (an SCRL chain: a non-empty list of objects with non-empty
  text `statement` and `ground_truth`, as `data.subproblems` and
  `experiments.make_subproblems` write it) or `reference_solution` (text).
- `transform` (optional) is a name from `TRANSFORMS`, applied to the string
  value: `gsm8k_final`, `last_boxed`, `dapo_problem`.

`problem` and `answer` must be mapped; a row where either is missing, empty or
fails its transform is malformed. The other targets are optional: a row without
that column simply lacks it. Defaults: `id` is `'<file name>:<line>'`, `task`
is `'math'` (answers checked by math-verify; a reasoning-gym task name selects
that task's exact scorer instead), `metadata` is `{}`.

Presets and the public layouts they read:

- `default`: our own record layout (a JSONL dump of records round-trips,
  SCRL chains and reference solutions included).
- `gsm8k` (openai/gsm8k): `question`, `answer` = worked solution with
  calculator annotations `<<48/2=24>>` ending in `#### 72`; the answer is the
  text after the last `####` with thousands separators removed, and the full
  solution is kept as `metadata.solution` (SCRL derives subproblems from its
  annotations).
- `math` (hendrycks MATH): `problem`, `solution`, `level`, `type`; the answer
  is the content of the last `\\boxed{...}` of the solution.
- `math500` (HuggingFaceH4/MATH-500): `problem`, `solution`, `answer`,
  `subject`, `level`, `unique_id`; the answer column is used as is.
- `deepmath` (zwhe99/DeepMath-103K): `question`, `final_answer`,
  `difficulty`, `topic` (the three long `r1_solution_*` columns are not read).
- `dapo` (BytedTsinghua-SIA/DAPO-Math-17k, verl RL parquet layout):
  `data_source` ('math_dapo'), `prompt` = a list with one chat message
  `{'role': 'user', 'content': ...}`, `ability` ('MATH'), `reward_model` =
  `{'ground_truth': str, 'style': 'rule-lean'}`, `extra_info` =
  `{'index': str}`. The content wraps the problem in DAPO's "Answer: $Answer"
  instruction, which `dapo_problem` strips so that our own prompt template
  and answer instruction apply. Note that the released
  `dapo-math-17k.parquet` repeats each of its ~17k problems many times; the
  rows are kept as they are.

Malformed rows (invalid UTF-8 or JSON, including integers over 4,300 digits
and nesting past the recursion limit, not an object, missing or empty
problem/answer, failing transform, metadata that is not JSON-serializable) are
skipped and counted with file and line (parquet: 1-based row number); blank
JSONL lines are not rows. A file with no usable row raises ValueError naming
the file.
"""

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import pyarrow as pa
import pyarrow.parquet as pq

from rlvr_jax.rewards import answers

Record = dict[str, Any]

PRESETS: dict[str, str] = {
    "default": (
        "id:id,problem:problem,answer:answer,task:task,metadata:metadata,"
        "subproblems:subproblems,reference_solution:reference_solution"
    ),
    "gsm8k": (
        "question:problem,answer:answer|gsm8k_final,answer:metadata.solution"
    ),
    "math": (
        "problem:problem,solution:answer|last_boxed,"
        "solution:metadata.solution,level:metadata.level,type:metadata.type"
    ),
    "math500": (
        "unique_id:id,problem:problem,answer:answer,solution:metadata.solution,"
        "subject:metadata.subject,level:metadata.level"
    ),
    "deepmath": (
        "question:problem,final_answer:answer,difficulty:metadata.difficulty,"
        "topic:metadata.topic"
    ),
    "dapo": (
        "extra_info.index:id,prompt.0.content:problem|dapo_problem,"
        "reward_model.ground_truth:answer,data_source:metadata.data_source"
    ),
}

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your "
    "response should be of the form Answer: $Answer (without quotes) where "
    "$Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

_RECORD_KEYS = (
    "id", "problem", "answer", "task", "metadata", "subproblems",
    "reference_solution",
)
_CHAIN_KEYS = ("statement", "ground_truth")
_REQUIRED = ("problem", "answer")
_MAX_LOGGED_SKIPS = 10


class MalformedRowError(ValueError):
  """A row that cannot be converted to a record; the message is the reason."""


def gsm8k_final_answer(solution: str) -> str:
  """Returns the text after the last `####`, without thousands separators.

  Args:
    solution: a GSM8K worked solution, e.g. `'... 48+24=72\\n#### 72'`.

  Raises:
    MalformedRowError: no `####` or nothing after it.
  """
  if "####" not in solution:
    raise MalformedRowError("no '####' final answer")
  answer = solution.rsplit("####", 1)[1].strip()
  answer = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", answer)
  if not answer:
    raise MalformedRowError("empty answer after '####'")
  return answer


def last_boxed(text: str) -> str:
  """The content of the last `\\boxed{...}` of a solution.

  Uses `rlvr_jax.rewards.answers.extract_boxed`, as the reward does.

  Raises:
    MalformedRowError: no well-formed, non-empty last box.
  """
  boxed = answers.extract_boxed(text)
  if boxed is None:
    raise MalformedRowError("no well-formed \\boxed{...} answer")
  return boxed


def dapo_problem(content: str) -> str:
  """Strips DAPO-Math-17k's answer-format instruction around the problem.

  The prefix `DAPO_PREFIX` and suffix `DAPO_SUFFIX` are removed where present;
  other text (e.g. an already processed variant of the data set) is returned
  unchanged.
  """
  if content.startswith(DAPO_PREFIX):
    content = content[len(DAPO_PREFIX):]
  if content.endswith(DAPO_SUFFIX):
    content = content[: -len(DAPO_SUFFIX)]
  return content


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "gsm8k_final": gsm8k_final_answer,
    "last_boxed": last_boxed,
    "dapo_problem": dapo_problem,
}


@dataclasses.dataclass(frozen=True)
class ColumnMap:
  """One `src:dst|transform` entry of a column mapping.

  Attributes:
    src: path into the row, one component per nesting level.
    dst: record field, `metadata` or `metadata.<key>`.
    transform: a key of `TRANSFORMS`, or None.
  """

  src: tuple[str, ...]
  dst: str
  transform: str | None


def parse_columns(columns: str) -> tuple[ColumnMap, ...]:
  """Parses a preset name or a `'src:dst[|transform],...'` mapping string.

  An empty string means the `default` preset.

  Raises:
    ValueError: naming the `columns` flag, for a malformed entry, an unknown
      target or transform, a target given twice, or a missing problem/answer.
  """
  spec = PRESETS.get(columns or "default", columns)
  maps = []
  for entry in spec.split(","):
    entry = entry.strip()
    src, sep, rest = entry.partition(":")
    dst, _, transform = rest.partition("|")
    if not sep or not src or not dst:
      raise ValueError(
          f"columns={columns!r}: entry {entry!r} is not 'src:dst[|transform]'"
          f" (or use a preset: {sorted(PRESETS)})"
      )
    if dst not in _RECORD_KEYS and not (
        dst.startswith("metadata.") and len(dst) > len("metadata.")
    ):
      raise ValueError(
          f"columns={columns!r}: target {dst!r} is not one of {_RECORD_KEYS}"
          " or 'metadata.<key>'"
      )
    if transform and transform not in TRANSFORMS:
      raise ValueError(
          f"columns={columns!r}: unknown transform {transform!r}; valid:"
          f" {sorted(TRANSFORMS)}"
      )
    maps.append(ColumnMap(tuple(src.split(".")), dst, transform or None))
  targets = [m.dst for m in maps]
  for dst in set(targets):
    if targets.count(dst) > 1:
      raise ValueError(f"columns={columns!r}: target {dst!r} given twice")
  for dst in _REQUIRED:
    if dst not in targets:
      raise ValueError(f"columns={columns!r}: nothing is mapped to {dst!r}")
  return tuple(maps)


def _lookup(row: Any, path: Sequence[str]) -> tuple[bool, Any]:
  """Follows `path` into nested dicts/lists; returns (found, value)."""
  value = row
  for part in path:
    if isinstance(value, Mapping) and part in value:
      value = value[part]
    elif (
        isinstance(value, (list, tuple))
        and part.isdigit()
        and int(part) < len(value)
    ):
      value = value[int(part)]
    else:
      return False, None
  return value is not None, value


def _as_text(value: Any, dst: str) -> str:
  """Converts a problem/answer/id/task value to a non-empty string."""
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise MalformedRowError(f"{dst} is a {type(value).__name__}, not text")
  text = str(value).strip()
  if not text:
    raise MalformedRowError(f"{dst} is empty")
  return text


def _as_chain(value: Any) -> list[dict[str, str]]:
  """Checks an SCRL chain: a non-empty list of {statement, ground_truth}."""
  if not isinstance(value, list) or not value:
    raise MalformedRowError("subproblems is not a non-empty list")
  chain = []
  for j, item in enumerate(value):
    if not isinstance(item, Mapping):
      raise MalformedRowError(
          f"subproblems[{j}] is a {type(item).__name__}, not an object"
      )
    chain.append({
        key: _as_text(item.get(key), f"subproblems[{j}].{key}")
        for key in _CHAIN_KEYS
    })
  return chain


def convert_row(
    row: Any, maps: Sequence[ColumnMap], *, default_id: str
) -> Record:
  """Converts one raw row to a record.

  Args:
    row: a decoded JSON value or a parquet row as a dict.
    maps: the parsed column mapping.
    default_id: the id when none is mapped.

  Returns:
    The record.

  Raises:
    MalformedRowError: the row cannot be converted; the message is the reason.
  """
  if not isinstance(row, Mapping):
    raise MalformedRowError(f"row is a {type(row).__name__}, not an object")
  record: Record = {"id": default_id, "task": "math", "metadata": {}}
  for m in maps:
    found, value = _lookup(row, m.src)
    if not found:
      if m.dst in _REQUIRED:
        raise MalformedRowError(f"missing {'.'.join(m.src)!r} for {m.dst}")
      continue
    if m.transform is not None:
      value = TRANSFORMS[m.transform](_as_text(value, m.dst))
    if m.dst == "metadata":
      if not isinstance(value, Mapping):
        raise MalformedRowError("metadata is not an object")
      record["metadata"].update(value)
    elif m.dst.startswith("metadata."):
      record["metadata"][m.dst[len("metadata."):]] = value
    elif m.dst == "subproblems":
      record["subproblems"] = _as_chain(value)
    else:
      record[m.dst] = _as_text(value, m.dst)
  try:
    record["metadata"] = json.loads(json.dumps(record["metadata"]))
  except (TypeError, ValueError, RecursionError) as e:
    raise MalformedRowError(
        f"metadata is not JSON-serializable: {type(e).__name__}: "
        f"{e}") from e
  return record


@dataclasses.dataclass(frozen=True)
class LoadedFile:
  """The usable records of one file and the rows that were skipped.

  Attributes:
    path: the file.
    records: records in file order.
    skipped: (line, reason) of every malformed row; line is 1-based (the row
      number for parquet).
  """

  path: str
  records: list[Record]
  skipped: list[tuple[int, str]]


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
  """Yields (line, decoded JSON or MalformedRowError) for non-blank lines."""
  with open(path, "rb") as f:
    for line, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield line, MalformedRowError(f"not UTF-8: {e}")
        continue
      if not text.strip():
        continue
      try:
        yield line, json.loads(text)
      except ValueError as e:
        # JSONDecodeError, or an integer literal over Python's 4,300-digit
        # conversion limit.
        yield line, MalformedRowError(f"invalid JSON: {e}")
      except RecursionError:
        yield line, MalformedRowError("invalid JSON: nested too deeply")


def _parquet_rows(
    path: str, maps: Sequence[ColumnMap]
) -> Iterator[tuple[int, Any]]:
  """Yields (row number, row dict) reading only the mapped top-level columns."""
  try:
    parquet = pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: not a readable parquet file: {e}") from e
  names = parquet.schema_arrow.names
  for m in maps:
    if m.dst in _REQUIRED and m.src[0] not in names:
      raise ValueError(
          f"{path}: column {m.src[0]!r} (mapped to {m.dst}) is absent; the"
          f" file has columns {names}"
      )
  wanted = sorted({m.src[0] for m in maps if m.src[0] in names})
  line = 0
  for batch in parquet.iter_batches(columns=wanted):
    for row in batch.to_pylist():
      line += 1
      yield line, row


def load_records(
    path: str, *, columns: str, file_format: str | None = None
) -> LoadedFile:
  """Reads a JSONL or parquet file into records.

  Args:
    path: the file.
    columns: a preset name or mapping string (module docstring).
    file_format: 'jsonl' or 'parquet'; None picks it from the extension
      (.jsonl/.json or .parquet).

  Returns:
    The records and the skipped rows, each skip also logged with file and
    line.

  Raises:
    ValueError: an unknown format or mapping, a parquet file without a mapped
      problem/answer column, or no usable row (the message names the file).
  """
  maps = parse_columns(columns)
  if file_format is None:
    ext = os.path.splitext(path)[1].lower()
    file_format = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
    file_format = file_format.get(ext)
    if file_format is None:
      raise ValueError(f"{path}: cannot tell the format from extension {ext!r}")
  if file_format == "jsonl":
    rows = _jsonl_rows(path)
  elif file_format == "parquet":
    rows = _parquet_rows(path, maps)
  else:
    raise ValueError(f"file_format={file_format!r}: use 'jsonl' or 'parquet'")
  name = os.path.basename(path)
  records, skipped = [], []
  for line, row in rows:
    try:
      if isinstance(row, MalformedRowError):
        raise row
      records.append(convert_row(row, maps, default_id=f"{name}:{line}"))
    except MalformedRowError as e:
      skipped.append((line, str(e)))
      if len(skipped) <= _MAX_LOGGED_SKIPS:
        logging.warning("%s:%d: skipped malformed row: %s", path, line, e)
  if skipped:
    logging.warning(
        "%s: skipped %d malformed rows, kept %d", path, len(skipped),
        len(records)
    )
  if not records:
    first = f"; first: line {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
    raise ValueError(
        f"{path}: no usable rows ({len(skipped)} malformed{first})"
    )
  return LoadedFile(path=path, records=records, skipped=skipped)
