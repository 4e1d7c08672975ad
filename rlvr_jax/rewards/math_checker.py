"""Answer checking with math-verify in a process pool (METHODS.md section 5).

math-verify (gold first, prediction second) bounds its own work with
`signal.alarm`, which only works in the main thread of a process and cannot
interrupt long C calls (a huge integer power inside sympy). So every check
runs in a worker process, in that worker's main thread, under a wall-clock
deadline enforced by the trainer process: a worker that misses its deadline is
killed and replaced, a worker that dies is replaced, and the item scores 0
with a reason. The trainer keeps one `MathChecker` for the whole run.

**(decision)** Workers are fresh interpreters (`python -c`, like the spawn
start method) that talk to the pool over one socket pair each, not a
`concurrent.futures.ProcessPoolExecutor`:
- the executor can neither kill one hung worker (Python 3.11 has no public
  API for it) nor tell which item crashed a worker (a crash breaks the whole
  executor and fails every item in flight); with one item per worker the
  culprit is always known and the other items are unaffected;
- spawn and forkserver children re-import the parent's `__main__` module
  (`python -m experiments.train` would import JAX and the whole trainer into
  every worker, several seconds and hundreds of MB each); a `python -c`
  worker imports only this module.

Every score comes with a reason: None for a correct answer, otherwise a short
string `"<category>: <detail>"` with a category from `REASON_CATEGORIES`.
"""

import collections
import dataclasses
import functools
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

from rlvr_jax.rewards import answers

WRONG = "wrong"
NO_ANSWER = "no_answer"
TOO_LONG = "too_long"
UNPARSABLE = "unparsable"
TIMEOUT = "timeout"
CRASH = "crash"
ERROR = "error"
REASON_CATEGORIES = (WRONG, NO_ANSWER, TOO_LONG, UNPARSABLE, TIMEOUT, CRASH,
                     ERROR)

_MAX_REASON_CHARS = 200
_MAX_STARTUP_FAILURES = 3
_READY = "ready"
# Pairs a new worker checks before it takes items: the first check of a
# fraction, a polynomial, a set, an interval and an inequality loads lazily
# imported parts of math-verify and sympy (0.3 to 6 s each on a loaded 2-core
# machine), which must not count against an item's deadline.
_WARMUP_PAIRS = (("\\frac{1}{2}", "0.5"), ("2x+1", "1+2x"),
                 ("\\{1,2\\}", "\\{2,1\\}"), ("[1,3)", "[1,3)"),
                 ("1<x<2", "(1,2)"))
_WORKER_CODE = ("import sys; from rlvr_jax.rewards import math_checker; "
                "math_checker.run_worker(int(sys.argv[1]), "
                "cpu_s=int(sys.argv[2]), memory_bytes=int(sys.argv[3]))")
# Open files a worker may hold once warm (its socket, std streams and lazy
# imports need far fewer).
_MAX_OPEN_FILES = 64
# The directory that holds the rlvr_jax package, put on the workers' path so
# that they import the same code as the trainer.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

Call = tuple[Callable[..., tuple[float, str | None]], tuple[Any, ...]]


def _short(text: str) -> str:
  """`text` cut to the length kept in a reason."""
  return text if len(text) <= _MAX_REASON_CHARS else (
      text[:_MAX_REASON_CHARS] + "...")


class _WarningLog(logging.Handler):
  """Keeps what math-verify logs at WARNING (it logs, not raises, timeouts)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(_short(record.getMessage()))


_MATH_VERIFY_LOG = _WarningLog()


def _math_verify_warnings() -> _WarningLog:
  """Clears `_MATH_VERIFY_LOG` after routing math-verify's log into it.

  Called in the worker that checks answers; math-verify's warnings then stop
  reaching stderr there and become reasons instead.
  """
  logger = logging.getLogger("math_verify")
  if _MATH_VERIFY_LOG not in logger.handlers:
    logger.addHandler(_MATH_VERIFY_LOG)
    logger.propagate = False
  _MATH_VERIFY_LOG.messages.clear()
  return _MATH_VERIFY_LOG


def math_verify_item(gold: str, pred: str, *,
                     timeout_s: int) -> tuple[float, str | None]:
  """Checks one extracted answer against the gold answer with math-verify.

  Runs in a pool worker's main thread. Both strings are wrapped in
  `\\boxed{}` and parsed with math-verify's default extraction, then compared
  with `math_verify.verify(gold, pred)`. The call is asymmetric on purpose
  (METHODS.md section 5): for example gold `1<x<2` accepts the prediction
  `(1,2)`, but gold `(1,2)` does not accept `1<x<2`.

  Args:
    gold: the reference answer (box content or short answer).
    pred: the model's extracted answer.
    timeout_s: math-verify's own per-call limit (seconds, `signal.alarm`);
      the pool's wall-clock limit is the hard bound.

  Returns:
    (score, reason): (1.0, None) when equivalent, else 0.0 and a reason.
  """
  # Imported here, not at the top: a worker interpreter starts by importing
  # this module, and a light top lets a worker that cannot warm up fail fast.
  import math_verify  # pylint: disable=g-import-not-at-top
  from math_verify import errors  # pylint: disable=g-import-not-at-top
  log = _math_verify_warnings()
  parsed = []
  for side, text in (("gold answer", gold), ("prediction", pred)):
    try:
      parsed.append(math_verify.parse(f"\\boxed{{{text}}}",
                                      parsing_timeout=timeout_s,
                                      raise_on_error=True))
    except errors.TimeoutException:
      return 0.0, (f"{TIMEOUT}: math-verify parsing the {side} took over "
                   f"{timeout_s}s")
    except Exception as e:  # pylint: disable=broad-exception-caught
      return 0.0, f"{UNPARSABLE}: {side}: {type(e).__name__}: {_short(str(e))}"
    if not parsed[-1]:
      return 0.0, f"{UNPARSABLE}: {side}: math-verify found no expression"
  if math_verify.verify(parsed[0], parsed[1], timeout_seconds=timeout_s):
    return 1.0, None
  if any("Timeout" in message for message in log.messages):
    return 0.0, f"{TIMEOUT}: math-verify comparison took over {timeout_s}s"
  return 0.0, f"{WRONG}: not equivalent"


def _limit_resources(memory_bytes: int) -> None:
  """Least privilege for a warm worker, where the platform has `resource`.

  RLIMIT_FSIZE = 0: no write into any file (SIGXFSZ is ignored, so a write
  fails with an OSError instead of killing the worker); RLIMIT_NOFILE =
  `_MAX_OPEN_FILES`; RLIMIT_AS = `memory_bytes` (0 leaves it unset). Set
  after the warm-up, so that a warm-up failure can still print its traceback
  to a log file. Limits only ever go down; a hard limit below the wanted one
  is kept.
  """
  try:
    import resource  # pylint: disable=g-import-not-at-top
    import signal  # pylint: disable=g-import-not-at-top
  except ImportError:  # not a Unix platform
    return
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  limits = [(resource.RLIMIT_FSIZE, 0),
            (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES)]
  if memory_bytes > 0:
    limits.append((resource.RLIMIT_AS, memory_bytes))
  for which, value in limits:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _limit_cpu(cpu_s: int) -> None:
  """Lets the next item use at most `cpu_s` more CPU seconds (RLIMIT_CPU).

  The soft limit counts the worker's whole CPU time, so it is moved up to
  the time used so far plus `cpu_s` before each item; past it the kernel's
  SIGXCPU kills the worker and the pool reports a `crash`.
  """
  try:
    import resource  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  usage = resource.getrusage(resource.RUSAGE_SELF)
  soft = int(usage.ru_utime + usage.ru_stime) + 1 + cpu_s
  _, hard = resource.getrlimit(resource.RLIMIT_CPU)
  if hard != resource.RLIM_INFINITY:
    soft = min(soft, hard)
  resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def run_worker(fd: int, *, cpu_s: int = 0, memory_bytes: int = 0) -> None:
  """Entry point of a worker interpreter (started by `MathChecker`).

  Protocol over the socket `fd`: the first message is the warm-up, a
  sequence of calls run before the worker replies `'ready'`; then each
  message is a call `(fn, args)` answered by `(score, reason)`, any exception
  of the call becoming an `error` reason. None or a closed socket ends the
  worker; an exception during the warm-up ends it before it is ready. Once
  warm, the worker limits its resources (`_limit_resources`, and
  `_limit_cpu` before each item).

  Args:
    fd: the worker's end of its socket pair.
    cpu_s: CPU seconds per item (0: no limit).
    memory_bytes: address-space limit (0: none).
  """
  conn = multiprocessing.connection.Connection(fd)
  for fn, args in conn.recv():
    fn(*args)
  _limit_resources(memory_bytes)
  conn.send(_READY)
  while True:
    if cpu_s > 0:
      _limit_cpu(cpu_s)
    try:
      message = conn.recv()
    except EOFError:
      return
    except Exception as e:  # pylint: disable=broad-exception-caught
      conn.send((0.0, f"{ERROR}: cannot unpickle the call: {_short(repr(e))}"))
      continue
    if message is None:
      return
    fn, args = message
    try:
      score, reason = fn(*args)
      result = (float(score), None if reason is None else _short(str(reason)))
    except BaseException as e:  # pylint: disable=broad-exception-caught
      result = (0.0, f"{ERROR}: {type(e).__name__}: {_short(str(e))}")
    conn.send(result)


def _exit_description(returncode: int | None) -> str:
  """'exit code 3' or 'signal 9' for a finished process."""
  if returncode is not None and returncode < 0:
    return f"signal {-returncode}"
  return f"exit code {returncode}"


@dataclasses.dataclass
class _Worker:
  """A worker process, its socket and the item it is running."""
  process: subprocess.Popen
  conn: multiprocessing.connection.Connection
  spawned_at: float
  ready: bool = False
  dead: bool = False
  item: int | None = None
  deadline: float = 0.0


class MathChecker:
  """A pool of answer-checking worker processes with per-item deadlines.

  Use as a context manager, or call `start()` and `close()`:

    with MathChecker(num_workers=2, timeout_s=10.0) as checker:
      scores, reasons = checker.score(golds, preds)

  `score` and `run` start the workers on first use if `start` was not
  called, and never raise for any model output.
  """

  def __init__(self, *, num_workers: int = 2, timeout_s: float = 10.0,
               math_verify_timeout_s: int = 3, warmup: Sequence[Call] = (),
               startup_timeout_s: float = 120.0,
               memory_bytes: int = 8 * 2**30):
    """Configures the pool; no process starts before `start`, `score` or `run`.

    Args:
      num_workers: worker processes.
      timeout_s: wall-clock limit per item, from dispatch to result; a worker
        past it is killed and the item scores 0.
      math_verify_timeout_s: math-verify's own per-call alarm (whole seconds,
        at least 1), which lets most slow items fail cleanly before the
        wall-clock limit kills the worker.
      warmup: calls each new worker runs before it takes items (for example
        a reasoning-gym scorer call, to import reasoning_gym), followed by a
        few math-verify checks that it always runs.
      startup_timeout_s: limit for a new worker to finish its warm-up.
      memory_bytes: **(decision)** each worker's address-space limit
        (RLIMIT_AS; a warm worker maps about 0.3 GiB), 0 for none. Workers
        also get no file writes (RLIMIT_FSIZE = 0), a few open files, a CPU
        limit per item of `timeout_s` rounded up, and a temporary working
        directory removed by `close` (`run_worker`).

    Raises:
      ValueError: naming the argument that is out of range.
    """
    if num_workers < 1:
      raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if timeout_s <= 0:
      raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if int(math_verify_timeout_s) != math_verify_timeout_s or (
        math_verify_timeout_s < 1):
      raise ValueError("math_verify_timeout_s must be a whole number of "
                       f"seconds >= 1, got {math_verify_timeout_s}")
    if startup_timeout_s <= 0:
      raise ValueError(
          f"startup_timeout_s must be > 0, got {startup_timeout_s}")
    if memory_bytes < 0:
      raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
    self.memory_bytes = int(memory_bytes)
    self._workdir: str | None = None
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self.math_verify_timeout_s = int(math_verify_timeout_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self._warmup = tuple(warmup) + tuple(
        (functools.partial(math_verify_item,
                           timeout_s=self.math_verify_timeout_s), pair)
        for pair in _WARMUP_PAIRS)
    self._workers: list[_Worker] = []
    self._startup_failures = 0
    self._last_startup_failure = ""

  def __enter__(self) -> "MathChecker":
    return self.start()

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def start(self) -> "MathChecker":
    """Starts `num_workers` workers and waits until all of them are ready.

    Returns:
      self.

    Raises:
      RuntimeError: when workers fail to start `_MAX_STARTUP_FAILURES` times
        in a row (a warm-up call raises, for example).
    """
    self._spawn_missing()
    while not self._startup_failed() and not all(
        w.ready for w in self._workers):
      self._wait_and_collect([])
      self._spawn_missing()
    if self._startup_failed():
      raise RuntimeError(
          "MathChecker workers failed to start "
          f"{self._startup_failures} times in a row (last: "
          f"{self._last_startup_failure}); see the worker traceback above")
    return self

  def close(self) -> None:
    """Stops all workers (asks, then kills those still alive after 1 s)."""
    for w in self._workers:
      try:
        w.conn.send(None)
      except OSError:
        pass
    deadline = time.monotonic() + 1.0
    for w in list(self._workers):
      self._kill(w, grace_s=max(0.0, deadline - time.monotonic()))
    if self._workdir is not None:
      shutil.rmtree(self._workdir, ignore_errors=True)
      self._workdir = None

  def score(self, golds: Sequence[str],
            preds: Sequence[str | None]) -> tuple[np.ndarray, list[str | None]]:
    """Scores extracted answers against gold answers, 1 if equivalent.

    Fast path without the pool: when both sides are plain integers or
    decimals (`answers.canonical_number`) and their canonical forms are equal
    the score is 1; when both are integers and differ it is 0. Every other
    pair (decimals that differ, which math-verify compares after rounding to
    6 places, and anything non-numeric) goes to `math_verify_item` in the
    pool.

    Args:
      golds: B reference answers (box contents or short answers, see
        `answers.gold_answer`).
      preds: B extracted model answers; None means no answer was found.

    Returns:
      (scores, reasons): scores [B] float32 in {0, 1}; reasons, B entries,
      None where the score is 1.

    Raises:
      ValueError: when `golds` and `preds` differ in length.
    """
    if len(golds) != len(preds):
      raise ValueError(f"golds has {len(golds)} items but preds has "
                       f"{len(preds)}")
    scores = np.zeros([len(golds)], np.float32)
    reasons: list[str | None] = [None] * len(golds)
    pending = []
    for i, (gold, pred) in enumerate(zip(golds, preds)):
      if pred is None or not pred.strip():
        reasons[i] = f"{NO_ANSWER}: no extracted answer"
        continue
      gold_number = answers.canonical_number(gold)
      pred_number = answers.canonical_number(pred)
      if gold_number is not None and gold_number == pred_number:
        scores[i] = 1.0
        continue
      if (gold_number is not None and pred_number is not None and
          "." not in gold_number and "." not in pred_number):
        reasons[i] = f"{WRONG}: integers differ"
        continue
      pending.append(i)
    check = functools.partial(math_verify_item,
                              timeout_s=self.math_verify_timeout_s)
    pool_scores, pool_reasons = self.run(
        [(check, (golds[i], preds[i])) for i in pending])
    for i, score, reason in zip(pending, pool_scores, pool_reasons):
      scores[i] = score
      reasons[i] = reason
    return scores, reasons

  def run(self, calls: Sequence[Call]) -> tuple[np.ndarray, list[str | None]]:
    """Runs `fn(*args)` for each call in the workers, one item per worker.

    `fn` must be importable by reference in a fresh interpreter (a
    module-level function of an installed module, a builtin, or a
    `functools.partial` of one) and return `(score, reason)`. An item that
    raises scores 0 with an `error` reason, one whose worker misses the
    `timeout_s` deadline scores 0 with a `timeout` reason (the worker is
    killed and replaced), one whose worker dies scores 0 with a `crash`
    reason. If no worker can be started at all, the remaining items score 0
    with a `crash` reason.

    Args:
      calls: the (fn, args) pairs.

    Returns:
      (scores, reasons): float32 scores and reasons, one of each per call.
    """
    results: list[tuple[float, str | None] | None] = [None] * len(calls)
    queue = collections.deque(range(len(calls)))
    while queue or any(w.item is not None for w in self._workers):
      self._spawn_missing()
      if self._startup_failed() and not any(w.ready for w in self._workers):
        while queue:
          results[queue.popleft()] = (
              0.0, f"{CRASH}: workers failed to start ("
              f"{self._last_startup_failure})")
        continue
      for w in self._workers:
        if queue and w.ready and w.item is None:
          self._dispatch(w, queue, calls, results)
      self._wait_and_collect(results)
    scores = np.array([r[0] for r in results], np.float32).reshape([-1])
    return scores, [r[1] for r in results]

  def _startup_failed(self) -> bool:
    return self._startup_failures >= _MAX_STARTUP_FAILURES

  def _spawn_missing(self) -> None:
    """Starts workers until there are `num_workers`, unless startup failed."""
    while len(self._workers) < self.num_workers and not self._startup_failed():
      parent_conn, child_conn = multiprocessing.Pipe()
      fd = child_conn.fileno()
      env = dict(os.environ)
      env["PYTHONPATH"] = os.pathsep.join(
          [_PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                             else []))
      if self._workdir is None:
        self._workdir = tempfile.mkdtemp(prefix="rlvr_checker_")
      process = subprocess.Popen(
          [sys.executable, "-c", _WORKER_CODE, str(fd),
           str(math.ceil(self.timeout_s)), str(self.memory_bytes)],
          pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env,
          start_new_session=True, cwd=self._workdir)
      child_conn.close()
      w = _Worker(process=process, conn=parent_conn,
                  spawned_at=time.monotonic())
      self._workers.append(w)
      try:
        parent_conn.send(self._warmup)
      except OSError:
        w.dead = True

  def _dispatch(self, w: _Worker, queue: collections.deque[int],
                calls: Sequence[Call],
                results: list[tuple[float, str | None] | None]) -> None:
    """Sends the next queued item to the idle worker `w`."""
    i = queue.popleft()
    try:
      w.conn.send(calls[i])
    except (pickle.PicklingError, TypeError, AttributeError) as e:
      results[i] = (0.0, f"{ERROR}: cannot pickle the call: {_short(repr(e))}")
      return
    except OSError:
      queue.appendleft(i)
      w.dead = True
      return
    w.item = i
    w.deadline = time.monotonic() + self.timeout_s

  def _wait_and_collect(
      self, results: list[tuple[float, str | None] | None]) -> None:
    """Waits for a message, a death or the next deadline, then handles them.

    A worker's death closes its end of the socket, which wakes the wait.
    """
    deadlines = [w.deadline if w.item is not None else
                 w.spawned_at + self.startup_timeout_s
                 for w in self._workers if w.item is not None or not w.ready]
    if not any(w.dead for w in self._workers):
      timeout = (max(0.0, min(deadlines) - time.monotonic())
                 if deadlines else 0.0)
      multiprocessing.connection.wait([w.conn for w in self._workers],
                                      timeout=timeout)
    now = time.monotonic()
    for w in list(self._workers):
      self._receive(w, results)
      if w.dead or w.process.poll() is not None:
        self._kill(w, grace_s=1.0)
        description = _exit_description(w.process.returncode)
        if w.item is not None:
          results[w.item] = (0.0, f"{CRASH}: worker died ({description})")
        elif not w.ready:
          self._startup_failure(f"worker died while starting ({description})")
      elif w.item is not None and now >= w.deadline:
        self._kill(w)
        results[w.item] = (0.0, f"{TIMEOUT}: no result within "
                           f"{self.timeout_s:g}s, worker killed")
      elif not w.ready and now >= w.spawned_at + self.startup_timeout_s:
        self._kill(w)
        self._startup_failure(
            f"worker not ready within {self.startup_timeout_s:g}s")

  def _receive(self, w: _Worker,
               results: list[tuple[float, str | None] | None]) -> None:
    """Reads every message waiting on `w`'s socket; EOF marks `w` dead."""
    try:
      while w.conn.poll():
        message = w.conn.recv()
        if message == _READY:
          w.ready = True
          self._startup_failures = 0
        elif w.item is not None:
          results[w.item] = message
          w.item = None
    except (EOFError, OSError):
      w.dead = True

  def _startup_failure(self, description: str) -> None:
    self._startup_failures += 1
    self._last_startup_failure = description

  def _kill(self, w: _Worker, grace_s: float = 0.0) -> None:
    """Kills `w` if it still runs after `grace_s`, reaps it and forgets it."""
    try:
      w.process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
      w.process.kill()
      w.process.wait()
    w.conn.close()
    if w in self._workers:
      self._workers.remove(w)
