"""SCRL subproblem chains written by an LLM, validated (METHODS.md 3).

For data with neither a procedural rule nor calculator annotations
(`data.subproblems`), `experiments.make_subproblems` asks a model for J
progressive subproblems. The parts of that tool:

1. `request_message`: the user message. It gives the problem, its answer and
   its reference solution (when the record has one) and asks for exactly J
   subproblems, easy to hard, the last being the problem itself, as a JSON
   array of `{"statement": ..., "ground_truth": ...}` objects and nothing else.
2. `parse_reply`: the validation. A reply is kept when
   - it holds a JSON array of objects: the first `[` from which a JSON value
     decodes to a non-empty list of objects (so a fenced ```json block, text
     around the array and arrays inside statements before it are all fine);
   - the array has exactly J items (**(decision)** no repair of a wrong
     count: a shorter or longer chain is not the progression that was asked
     for);
   - items 1..J-1 each have a non-empty text `statement` and a
     `ground_truth` that is non-empty text or a JSON number (written as
     JSON writes it), and every such ground truth parses (`parses`, e.g.
     `math_verify_parses`, or `number_parses` for plain numbers only).
   Item J is then replaced by the record's own problem and answer, whatever
   the model wrote there. Anything else raises `RejectedReply` with a reason
   from `REJECTIONS`. Note that math-verify reads almost any text (words
   become products of symbols), so `math_verify_parses` mainly rejects
   empty text and text with no math in it (`???`); `number_parses` is the
   strict choice for numeric data.
3. Backends: a `Backend` maps B user messages to B replies (or `Failure`s).
   `LocalBackend` samples any model `models.loader.load_model` loads with
   our KV-cache sampler, through the model's chat template; `OpenAIBackend`
   posts to an OpenAI-compatible `chat/completions` endpoint with urllib.
4. `build_chains`: the resumable loop; `run_file` runs it over a file and
   writes the summary. Records already in the output or the dropped file
   (same `id`, or the same problem text up to whitespace) are skipped.
   `files` gives a row without an id the id `<file name>:<line>`, so such
   an input should only grow by appending. Every kept record and every
   dropped item is appended and flushed as soon as it is known, so a crash
   loses at most the batch in flight (a torn last line is cut off and that
   item asked again). A kept record has the layout of
   `subproblems.with_subproblems`:
   `{..., 'subproblems': [J items], 'reference_solution': str | None}`.
   A dropped line is `{'id', 'problem', 'reason', 'detail', 'reply'}`.
   **(decision)** A `Failure` with `retry=True` (a network error, a server
   error after the retries) is counted but written nowhere, so the next run
   asks again; one with `retry=False` (a prompt longer than the model's
   limit, a request the server rejects) is dropped like a bad reply.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable, Sequence

from absl import logging
import jax
import tqdm

from rlvr_jax.data import files
from rlvr_jax.data import prompts
from rlvr_jax.data import tasks
from rlvr_jax.models import loader
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.sampling import sampler

Record = dict[str, Any]
Chain = list[dict[str, str]]

# The input mapping of `run_file` by default: our record layout plus a
# top-level `solution` column as the reference solution.
DEFAULT_COLUMNS = files.PRESETS["default"] + ",solution:metadata.solution"

# Why a reply is not used (the keys of the dropped counts).
REJECTIONS = (
    "no_json_array", "wrong_count", "bad_item", "unparsable_ground_truth"
)
_ARRAY_START = re.compile(r"\[")


class RejectedReply(ValueError):
  """A reply that gives no usable chain; `reason` is one of `REJECTIONS`."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Failure:
  """A backend that gave no reply for one message.

  Attributes:
    reason: a short count key, e.g. 'prompt_too_long', 'backend_error'.
    detail: what happened.
    retry: True when the item should be asked again by a later run (it is
      then not written to the dropped file).
  """

  reason: str
  detail: str
  retry: bool


Backend = Callable[[Sequence[str]], Sequence[str | Failure]]
Parses = Callable[[Sequence[str]], Sequence[bool]]


def reference_solution(record: Record) -> str | None:
  """The record's worked solution, or None.

  The first non-empty text of `reference_solution`, `solution`,
  `metadata['solution']` and `metadata['answer_cot']`.
  """
  metadata = record.get("metadata") or {}
  for value in (record.get("reference_solution"), record.get("solution"),
                metadata.get("solution"), metadata.get("answer_cot")):
    if isinstance(value, str) and value.strip():
      return value
  return None


def request_message(record: Record, *, k: int) -> str:
  """The user message asking for J progressive subproblems as JSON.

  Args:
    record: a record with `problem`, `answer` and optionally a reference
      solution (`reference_solution`).
    k: J >= 2, the chain length.

  Returns:
    The message text.
  """
  if k < 2:
    raise ValueError(f"k={k}: must be >= 2 (J = 1 is the problem alone)")
  reference = reference_solution(record)
  solution = ""
  if reference:
    solution = f"Reference solution:\n{reference.strip()}\n\n"
  return (
      f"Break the problem below into exactly {k} subproblems that lead step"
      " by step from an easy first step to the problem itself.\n\n"
      f"Problem:\n{record['problem'].strip()}\n\n"
      f"Answer: {record['answer'].strip()}\n\n"
      f"{solution}"
      "Rules:\n"
      "- Each subproblem is a self-contained question: it states every"
      " number it needs and has one final answer that can be checked (a"
      " number or a short math expression).\n"
      "- The subproblems go from easy to hard; each one builds on the"
      " result of the one before it.\n"
      f"- Subproblem {k} is the problem itself, with its answer.\n\n"
      f"Reply with only a JSON array of exactly {k} objects, in order, each"
      ' of the form {"statement": "...", "ground_truth": "..."}.'
  )


def extract_json_array(reply: str) -> list[dict[str, Any]] | None:
  """The first JSON array of objects in a reply (module docstring, 2)."""
  decoder = json.JSONDecoder()
  for match in _ARRAY_START.finditer(reply):
    try:
      value, _ = decoder.raw_decode(reply, match.start())
    except json.JSONDecodeError:
      continue
    if value and all(isinstance(item, dict) for item in value):
      return value
  return None


def _ground_truth_text(value: Any) -> str | None:
  """A ground truth as text: non-empty text or a JSON number, else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return json.dumps(value)
  if isinstance(value, str) and value.strip():
    return value.strip()
  return None


def parse_reply(
    reply: str, *, record: Record, k: int, parses: Parses
) -> Chain:
  """Validates a reply and returns its chain (module docstring, 2).

  Args:
    reply: the model's reply text.
    record: the record asked about (its problem and answer become item J).
    k: J, the number of subproblems asked for.
    parses: ground truths -> whether each parses.

  Returns:
    J items `{'statement', 'ground_truth'}`; item J is the record's problem
    and answer.

  Raises:
    RejectedReply: the reply is not usable; `reason` says why.
  """
  items = extract_json_array(reply)
  if items is None:
    raise RejectedReply("no_json_array", "no JSON array of objects in reply")
  if len(items) != k:
    raise RejectedReply("wrong_count", f"{len(items)} items, {k} asked for")
  chain = []
  for j, item in enumerate(items[:-1], start=1):
    statement = item.get("statement")
    ground_truth = _ground_truth_text(item.get("ground_truth"))
    if not isinstance(statement, str) or not statement.strip():
      raise RejectedReply("bad_item", f"item {j} has no text 'statement'")
    if ground_truth is None:
      raise RejectedReply("bad_item", f"item {j} has no usable 'ground_truth'")
    chain.append({"statement": statement.strip(), "ground_truth": ground_truth})
  ok = parses([s["ground_truth"] for s in chain])
  for j, (step, parsed) in enumerate(zip(chain, ok), start=1):
    if not parsed:
      raise RejectedReply(
          "unparsable_ground_truth",
          f"item {j} ground_truth {step['ground_truth']!r} does not parse",
      )
  chain.append(
      {"statement": record["problem"], "ground_truth": record["answer"]}
  )
  return chain


def number_parses(ground_truths: Sequence[str]) -> list[bool]:
  """Plain integers and decimals only (`answers.canonical_number`)."""
  return [answers.canonical_number(g) is not None for g in ground_truths]


def ground_truth_item(text: str, *, timeout_s: int) -> tuple[float, str | None]:
  """Whether math-verify reads a math object in `text`; a pool worker call.

  `math_verify.parse` of `\\boxed{text}` must give a math object (a sympy
  value, set, interval, ...), not only its string fallback.

  Args:
    text: a ground truth.
    timeout_s: math-verify's own parsing alarm (the pool's deadline is the
      hard bound).

  Returns:
    (1.0, None) or (0.0, the reason), as `math_checker.MathChecker.run`
    expects.
  """
  # Imported here: a worker imports this module before it takes items.
  import math_verify  # pylint: disable=g-import-not-at-top
  try:
    parsed = math_verify.parse(f"\\boxed{{{text}}}", parsing_timeout=timeout_s,
                               raise_on_error=True)
  except Exception as e:  # pylint: disable=broad-exception-caught
    return 0.0, f"{math_checker.UNPARSABLE}: {type(e).__name__}: {e}"
  if any(not isinstance(x, str) for x in parsed):
    return 1.0, None
  return 0.0, f"{math_checker.UNPARSABLE}: no math object in {text!r}"


def math_verify_warmup(timeout_s: int = 3) -> tuple[math_checker.Call, ...]:
  """Warm-up calls for `MathChecker(warmup=...)` before `math_verify_parses`.

  A worker imports this module (and math-verify) while it warms up, so the
  import never counts against an item's deadline.

  Args:
    timeout_s: math-verify's own parsing alarm.

  Returns:
    One call, `ground_truth_item('1')`.
  """
  return ((functools.partial(ground_truth_item, timeout_s=timeout_s), ("1",)),)


def math_verify_parses(
    pool: math_checker.MathChecker, *, timeout_s: int = 3
) -> Parses:
  """Ground truths that are plain numbers or that math-verify reads.

  Plain integers and decimals (`answers.canonical_number`) are settled in
  this process; the rest run `ground_truth_item` in the pool's workers under
  its deadline, as the trainer checks answers (start the pool with
  `warmup=math_verify_warmup(timeout_s)`).

  Args:
    pool: a `MathChecker`.
    timeout_s: math-verify's own parsing alarm.

  Returns:
    The `parses` function.
  """
  check = functools.partial(ground_truth_item, timeout_s=timeout_s)

  def parses(ground_truths: Sequence[str]) -> list[bool]:
    ok = [answers.canonical_number(g) is not None for g in ground_truths]
    pending = [i for i, number in enumerate(ok) if not number]
    scores, _ = pool.run([(check, (ground_truths[i],)) for i in pending])
    for i, score in zip(pending, scores):
      ok[i] = bool(score >= 1.0)
    return ok
  return parses


class LocalBackend:
  """Samples a model our loader reads, one message per row."""

  def __init__(self, source: str, *, max_new_tokens: int, temperature: float,
               max_prompt_len: int = 2048, prompt_bucket: int = 128,
               seed: int = 0):
    """Loads the model.

    Args:
      source: what `models.loader.load_model` takes ('smollm2',
        'random:<preset>', an HF directory or a .gguf file).
      max_new_tokens: the longest reply in tokens.
      temperature: sampling temperature; 0 decodes greedily.
      max_prompt_len: longer prompts get a `prompt_too_long` Failure.
      prompt_bucket: prompts are padded to a multiple of this (one compiled
        sampler per bucket).
      seed: sampling seed; call i uses `fold_in(key(seed), i)`.
    """
    if temperature < 0:
      raise ValueError(f"temperature={temperature}: must be >= 0")
    model, self.tokenizer, _ = loader.load_model(source)
    self.sampler = sampler.Sampler(
        model, self.tokenizer, max_prompt_len=max_prompt_len,
        max_new_tokens=max_new_tokens, prompt_bucket=prompt_bucket)
    self.max_prompt_len = max_prompt_len
    self.temperature = temperature
    self.template = "chat" if self.tokenizer.chat_template else "plain"
    self.key = jax.random.key(seed)
    self.calls = 0

  def __call__(self, messages: Sequence[str]) -> list[str | Failure]:
    texts = [
        prompts.render_prompt({}, template=self.template, instruction="",
                              tokenizer=self.tokenizer, message=m)
        for m in messages
    ]
    lengths = [len(self.tokenizer.encode(t, add_special_tokens=False))
               for t in texts]
    replies: list[str | Failure] = [
        Failure("prompt_too_long",
                f"{n} tokens > max_prompt_len={self.max_prompt_len}", False)
        for n in lengths
    ]
    fits = [i for i, n in enumerate(lengths) if n <= self.max_prompt_len]
    if fits:
      out = self.sampler.generate(
          [texts[i] for i in fits],
          key=jax.random.fold_in(self.key, self.calls),
          temperature=self.temperature, greedy=self.temperature == 0)
      for i, text in zip(fits, out.texts):
        replies[i] = text
    self.calls += 1
    return replies


class OpenAIBackend:
  """An OpenAI-compatible `chat/completions` endpoint, called with urllib.

  Messages of one call are sent concurrently (`concurrency` requests at a
  time). HTTP 429, 5xx, connection errors and timeouts are retried
  `retries` times with exponential backoff, then give a retryable
  `backend_error`; 400, 413 and 422 (the server refuses this request, e.g.
  too long) give a non-retryable `request_rejected`; 401, 403 and 404 (a bad
  key, model or URL, wrong for every item) raise at once.
  """

  def __init__(self, *, url: str, model_name: str, api_key: str | None,
               max_new_tokens: int, temperature: float, concurrency: int = 8,
               timeout_s: float = 120.0, retries: int = 3,
               backoff_s: float = 1.0):
    """Configures the endpoint.

    Args:
      url: the API base (`http://host:8000/v1`) or the full
        `.../chat/completions` URL.
      model_name: the `model` field of each request.
      api_key: sent as `Authorization: Bearer <key>`; None sends no header.
      max_new_tokens: the `max_tokens` field.
      temperature: the `temperature` field.
      concurrency: requests in flight at once.
      timeout_s: per-request timeout.
      retries: further attempts after a transient error.
      backoff_s: the first wait between attempts (doubled each time).
    """
    if not url:
      raise ValueError("url: an OpenAI-compatible endpoint is needed")
    if not model_name:
      raise ValueError("model_name: the endpoint's model name is needed")
    if concurrency < 1 or retries < 0:
      raise ValueError(f"concurrency={concurrency} must be >= 1 and "
                       f"retries={retries} >= 0")
    url = url.rstrip("/")
    self.endpoint = (url if url.endswith("/chat/completions")
                     else f"{url}/chat/completions")
    self.model_name = model_name
    self.api_key = api_key
    self.max_new_tokens = max_new_tokens
    self.temperature = temperature
    self.concurrency = concurrency
    self.timeout_s = timeout_s
    self.retries = retries
    self.backoff_s = backoff_s

  def _request(self, message: str) -> dict[str, Any]:
    body = json.dumps({
        "model": self.model_name,
        "messages": [{"role": "user", "content": message}],
        "temperature": self.temperature,
        "max_tokens": self.max_new_tokens,
    }).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
      return json.loads(response.read())

  def _one(self, message: str) -> str | Failure:
    detail = ""
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      try:
        payload = self._request(message)
      except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")[:300]
        if e.code in (401, 403, 404):
          raise ValueError(
              f"{self.endpoint} answered HTTP {e.code} ({text!r}): check the"
              " url, model_name and api key flags") from e
        if e.code in (400, 413, 422):
          return Failure("request_rejected", f"HTTP {e.code}: {text}", False)
        detail = f"HTTP {e.code}: {text}"
        continue
      except (OSError, http.client.HTTPException) as e:  # connection, timeout
        detail = f"{type(e).__name__}: {e}"
        continue
      except ValueError as e:
        detail = f"response is not JSON: {e}"
        continue
      try:
        content = payload["choices"][0]["message"]["content"]
      except (KeyError, IndexError, TypeError):
        detail = f"no choices[0].message.content in {str(payload)[:300]}"
        continue
      if isinstance(content, str):
        return content
      detail = f"content is a {type(content).__name__}"
    return Failure("backend_error", detail, True)

  def __call__(self, messages: Sequence[str]) -> list[str | Failure]:
    if not messages:
      return []
    workers = min(self.concurrency, len(messages))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      return list(pool.map(self._one, messages))


def companion_paths(output: str) -> tuple[str, str]:
  """(dropped JSONL, summary JSON) beside `x.jsonl`.

  Args:
    output: the kept records' JSONL path, e.g. `x.jsonl`.

  Returns:
    (`x.dropped.jsonl`, `x.summary.json`).
  """
  root, ext = os.path.splitext(output)
  return f"{root}.dropped{ext or '.jsonl'}", f"{root}.summary.json"


def _read_done(path: str) -> list[dict[str, Any]]:
  """The complete lines of a JSONL file; cuts a torn last line off the file.

  A run killed while writing leaves a last line without its newline; it is
  removed (that item is asked again), so appends start on a fresh line.
  """
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  complete = data[:data.rfind(b"\n") + 1]
  if len(complete) < len(data):
    logging.warning("%s: removing a torn last line of %d bytes", path,
                    len(data) - len(complete))
    with open(path, "r+b") as f:
      f.truncate(len(complete))
  rows = []
  for line, raw in enumerate(complete.splitlines(), start=1):
    if not raw.strip():
      continue
    try:
      rows.append(json.loads(raw))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line}: not JSON ({e}); fix or move the file"
                       " before resuming") from e
  return rows


def _keys(record: dict[str, Any]) -> set[tuple[str, str]]:
  """The resume keys of a record: ('id', its id), ('problem', its text)."""
  keys = set()
  if record.get("id") is not None:
    keys.add(("id", str(record["id"])))
  if isinstance(record.get("problem"), str):
    keys.add(("problem", tasks.problem_key(record["problem"])))
  return keys


@dataclasses.dataclass
class Summary:
  """Counts of one `build_chains` call (and totals over its files).

  Attributes:
    kept: records written to the output by this call.
    dropped: items written to the dropped file by this call, by reason.
    retry_later: items left for a later run by this call, by reason.
    already_done: input records found in the output or dropped file.
    duplicates: input records whose id or problem repeats an earlier one.
    total_kept: lines of the output file after this call.
    total_dropped: lines of the dropped file after this call, by reason.
  """

  kept: int = 0
  dropped: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  retry_later: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  already_done: int = 0
  duplicates: int = 0
  total_kept: int = 0
  total_dropped: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)

  def to_dict(self) -> dict[str, Any]:
    """The counts as JSON-serializable values (Counters become dicts)."""
    return {
        f.name: (dict(getattr(self, f.name))
                 if isinstance(getattr(self, f.name), collections.Counter)
                 else getattr(self, f.name))
        for f in dataclasses.fields(self)
    }


def build_chains(
    records: Iterable[Record],
    *,
    backend: Backend,
    k: int,
    parses: Parses,
    output: str,
    batch_size: int,
) -> Summary:
  """Asks the backend for every record's chain; resumable (module docstring).

  Args:
    records: input records (`problem`, `answer`, optional `id` and reference
      solution).
    backend: messages -> replies.
    k: J >= 2.
    parses: ground truths -> whether each parses.
    output: the kept records' JSONL; the dropped items go to
      `companion_paths(output)[0]`.
    batch_size: messages per backend call.

  Returns:
    The counts.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  dropped_path, _ = companion_paths(output)
  summary = Summary()
  done = set()
  for path in (output, dropped_path):
    for row in _read_done(path):
      done |= _keys(row)
      if path == output:
        summary.total_kept += 1
      else:
        summary.total_dropped[row.get("reason")] += 1
  pending, seen = [], set()
  for record in records:
    keys = _keys(record)
    if keys & done:
      summary.already_done += 1
    elif keys & seen:
      summary.duplicates += 1
    else:
      pending.append(record)
    seen |= keys
  if summary.already_done:
    logging.info("%s: %d records already done, %d to ask", output,
                 summary.already_done, len(pending))
  with open(output, "a", encoding="utf-8") as kept_file, \
       open(dropped_path, "a", encoding="utf-8") as dropped_file, \
       tqdm.tqdm(total=len(pending), desc="subproblems") as bar:

    def append(f, row):
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      f.flush()

    def drop(record, reason, detail, reply):
      append(dropped_file, {
          "id": record.get("id"), "problem": record["problem"],
          "reason": reason, "detail": detail, "reply": reply,
      })
      summary.dropped[reason] += 1
      summary.total_dropped[reason] += 1

    for start in range(0, len(pending), batch_size):
      batch = pending[start:start + batch_size]
      replies = backend([request_message(r, k=k) for r in batch])
      if len(replies) != len(batch):
        raise ValueError(f"backend gave {len(replies)} replies for"
                         f" {len(batch)} messages")
      for record, reply in zip(batch, replies):
        if isinstance(reply, Failure):
          if reply.retry:
            summary.retry_later[reply.reason] += 1
            logging.warning("%s: %s (%s), asked again next run",
                            record.get("id"), reply.reason, reply.detail)
          else:
            drop(record, reply.reason, reply.detail, None)
          continue
        try:
          chain = parse_reply(reply, record=record, k=k, parses=parses)
        except RejectedReply as e:
          drop(record, e.reason, e.detail, reply)
          continue
        append(kept_file, {**record, "subproblems": chain,
                           "reference_solution": reference_solution(record)})
        summary.kept += 1
        summary.total_kept += 1
      bar.update(len(batch))
  return summary


def run_file(*, input_path: str, output: str, columns: str, k: int,
             backend: Backend, parses: Parses, batch_size: int,
             limit: int = 0) -> dict[str, Any]:
  """Builds the chains of a file; writes the outputs and the summary.

  Args:
    input_path: JSONL or parquet input.
    output: the kept records' JSONL (resumed when it exists).
    columns: column mapping for `files.load_records`; '' = `DEFAULT_COLUMNS`.
    k: J >= 2.
    backend: messages -> replies.
    parses: ground truths -> whether each parses.
    batch_size: messages per backend call.
    limit: the first `limit` input records only (0: all).

  Returns:
    The summary (`Summary.to_dict()` plus `malformed_input_rows`), also
    printed (a line of counts, then the JSON) and written to
    `companion_paths(output)[1]`.
  """
  if k < 2:
    raise ValueError(f"k={k}: must be >= 2 (J = 1 is the problem alone)")
  if limit < 0:
    raise ValueError(f"limit={limit}: must be >= 0")
  loaded = files.load_records(input_path, columns=columns or DEFAULT_COLUMNS)
  records = loaded.records[:limit] if limit else loaded.records
  counts = build_chains(records, backend=backend, k=k, parses=parses,
                        output=output, batch_size=batch_size)
  summary = {**counts.to_dict(), "malformed_input_rows": len(loaded.skipped)}
  _, summary_path = companion_paths(output)
  with open(summary_path, "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(f"kept {counts.kept} (total {counts.total_kept}); dropped "
        f"{sum(counts.dropped.values())} {dict(counts.dropped)}; asked again "
        f"next run {dict(counts.retry_later)}; already done "
        f"{counts.already_done}; duplicates {counts.duplicates}; malformed "
        f"input rows {len(loaded.skipped)}")
  print(json.dumps(summary), flush=True)
  return summary
