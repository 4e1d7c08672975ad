"""Rewards of a rollout batch: correctness, format, DAPO overlong penalty.

METHODS.md sections 1.5 (overlong penalty) and 5 (answer checking). The
reward of response i is

  r_i = correct_i + format_weight * format_i + overlong_i

with correct_i in {0, 1} from the checker named by the `checker` flag
('math_verify', 'exact' or 'reasoning_gym'), format_i in {0, 1} from
`answers.has_clean_box`, and overlong_i in [-1, 0] from `overlong_penalty`.
A `RewardFunction` never raises and never hangs on model output: garbage scores
0 with a reason (see `math_checker.REASON_CATEGORIES`).

**Model text is never run as code.** Audit of every scorer path (reasoning-gym
0.1.19 and math-verify as installed: every call of eval, exec, parse_expr
and sympify in reasoning_gym, math_verify and latex2sympy2_extended; the
reasoning-gym list is checked again by tests/test_rewards.py, so that a new
call site fails the tests):
- 'exact': string normalization only.
- 'math_verify': LaTeX goes through latex2sympy2's ANTLR parser (no eval);
  the plain-expression fallback calls `sympy.parse_expr` only on text its
  regex limits to digits, '.', whitespace and `+ - * / ^ ( ) × ÷`, so no
  name or call can reach eval; a slow expression is stopped by the pool.
  latex2sympy2's own `parse_expr` and `sympify` calls see only its parse
  tree or caller-given variable values.
- 'reasoning_gym': countdown and puzzle24 evaluate the answer with
  `sympy.parse_expr`; their module's `parse_expr` is replaced by
  `safe_arith.evaluate` (an `ast` whitelist of numbers, + - * /, unary signs
  and parentheses, exact Fractions), so their own code still gives the
  verdict (countdown: each given number used exactly once, value within
  1e-6 of the target) for every whitelisted answer, and anything else
  scores as unparsable (RG's own 0.01/0.05, never full credit).
  binary_matrix, n_queens, spiral_matrix and string_insertion `eval` the
  answer only for partial credit after an exact comparison failed; their
  `eval` is replaced by one that raises, which changes no full-credit
  verdict. simple_integration, intermediate_integration and
  polynomial_multiplication parse symbolic answers with `sympy.parse_expr`
  and are refused (`check_reasoning_gym_task`). codeio `exec`s generator
  code, never the answer; number_sorting `eval`s the gold answer only.
The pool's workers also run with resource limits and a temporary working
directory (`math_checker.MathChecker`).

Examples are dicts {'problem': str, 'answer': str} with, for reasoning-gym
tasks, 'metadata': the entry's metadata dict (it names the task in
'source_dataset'); an optional 'task' is not read here.
"""

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import reasoning_gym

from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import safe_arith

CHECKERS = ("math_verify", "exact", "reasoning_gym")


def _check_overlong_flags(*, max_response_len: int,
                          overlong_buffer: int) -> None:
  """Raises ValueError unless 1 <= max_response_len and 0 <= C <= L."""
  if max_response_len < 1:
    raise ValueError(f"max_response_len must be >= 1, got {max_response_len}")
  if not 0 <= overlong_buffer <= max_response_len:
    raise ValueError(f"overlong_buffer must be in [0, max_response_len="
                     f"{max_response_len}], got {overlong_buffer}")


def overlong_penalty(response_lengths: np.ndarray, *, max_response_len: int,
                     overlong_buffer: int) -> np.ndarray:
  """DAPO's soft overlong penalty, linear from 0 to -1 over the last tokens.

  With L_max = max_response_len, L_cache = overlong_buffer (DAPO's symbols)
  and l = response length:

    p(l) = 0                              if l <= L_max - L_cache
         = (L_max - L_cache - l) / L_cache  if L_max - L_cache < l <= L_max
         = -1                             if l > L_max

  (METHODS.md section 1.5; DAPO eq. 13.) L_cache = 0 disables the penalty.
  The length counts the response tokens including EOS, i.e. the row sum of
  `response_mask`; a response cut off at L_max tokens gets -1.

  Args:
    response_lengths: [B] integer response lengths in tokens.
    max_response_len: L_max, the configured maximum response length.
    overlong_buffer: L_cache, the number of final tokens over which the penalty
      grows from 0 to -1.

  Returns:
    [B] float32 penalties in [-1, 0].

  Raises:
    ValueError: when `response_lengths` is not 1-D, `max_response_len` < 1
      or `overlong_buffer` is outside [0, max_response_len].
  """
  lengths = np.asarray(response_lengths)
  if lengths.ndim != 1:
    raise ValueError("response_lengths must be [B], got shape "
                     f"{lengths.shape}")
  _check_overlong_flags(max_response_len=max_response_len,
                        overlong_buffer=overlong_buffer)
  if overlong_buffer == 0:
    return np.zeros(lengths.shape, np.float32)
  expected = np.float32(max_response_len - overlong_buffer)
  penalty = (expected - lengths.astype(np.float32)) / np.float32(
      overlong_buffer)
  return np.clip(penalty, -1.0, 0.0).astype(np.float32)


def exact_item(gold: str, pred: str) -> tuple[float, str | None]:
  """1 iff `answers.normalize_answer` of both sides is the same string.

  Args:
    gold: the reference answer.
    pred: the extracted model answer.

  Returns:
    (score, reason): (1.0, None) or (0.0, a `wrong` reason).
  """
  if answers.normalize_answer(gold) == answers.normalize_answer(pred):
    return 1.0, None
  return 0.0, f"{math_checker.WRONG}: normalized answers differ"


# The reasoning-gym audit (module docstring): tasks whose scorer hands the
# answer to `sympy.parse_expr` (Python's eval) for its arithmetic value; the
# module's `parse_expr` is replaced by `safe_arith.evaluate`.
_SAFE_ARITHMETIC_TASKS = {
    "countdown": "reasoning_gym.games.countdown",
    "puzzle24": "reasoning_gym.games.puzzle24",
}
# Tasks whose scorer calls `eval(answer)` only on the way to partial credit
# (0.1 or 0.5, never 1.0, after an exact comparison failed): the module's
# `eval` is replaced by `_refuse_eval`, which the scorer's own `except`
# turns into 0, so the full-credit verdict is unchanged.
_PARTIAL_CREDIT_EVAL_TASKS = {
    "binary_matrix": "reasoning_gym.algorithmic.binary_matrix",
    "n_queens": "reasoning_gym.games.n_queens",
    "spiral_matrix": "reasoning_gym.algorithmic.spiral_matrix",
    "string_insertion": "reasoning_gym.algorithmic.string_insertion",
}
# Tasks whose scorer parses symbolic answers (variables, functions, powers)
# with `sympy.parse_expr`: no safe replacement, refused.
REFUSED_REASONING_GYM_TASKS = ("intermediate_integration",
                               "polynomial_multiplication",
                               "simple_integration")


def check_reasoning_gym_task(name: str) -> None:
  """Raises ValueError when `name`'s scorer would run the answer as code.

  Args:
    name: a reasoning-gym dataset name (`data.task`).

  Raises:
    ValueError: for a task of `REFUSED_REASONING_GYM_TASKS`.
  """
  if name in REFUSED_REASONING_GYM_TASKS:
    raise ValueError(
        f"reasoning-gym task {name!r} scores answers by running them through "
        "sympy.parse_expr (Python's eval), which would let a model's answer "
        "run code; checker='reasoning_gym' refuses it (refused: "
        f"{REFUSED_REASONING_GYM_TASKS}). Use --config.reward.checker="
        "math_verify or another task.")


def _safe_parse_expr(text: str, *args: Any, **kwargs: Any) -> Any:
  """Stands in for `sympy.parse_expr` in `_SAFE_ARITHMETIC_TASKS` scorers."""
  del args, kwargs
  return safe_arith.evaluate(text)


def _refuse_eval(*args: Any, **kwargs: Any) -> Any:
  """Stands in for `eval` in `_PARTIAL_CREDIT_EVAL_TASKS` scorers."""
  del args, kwargs
  raise ValueError("eval of a model answer is disabled")


@functools.cache
def _reasoning_gym_scorer(name: str) -> Callable[[str, dict[str, Any]],
                                                  float]:
  """The task's own `score_answer`, made safe (module docstring), built once
  per task and process.

  Raises:
    ValueError: for a refused task, or when a patched module no longer has
      the name the audit replaces (a reasoning-gym version that was not
      audited).
  """
  check_reasoning_gym_task(name)
  for tasks, attribute, replacement in (
      (_SAFE_ARITHMETIC_TASKS, "parse_expr", _safe_parse_expr),
      (_PARTIAL_CREDIT_EVAL_TASKS, "eval", _refuse_eval)):
    if name in tasks:
      module = importlib.import_module(tasks[name])
      if attribute == "parse_expr" and not hasattr(module, attribute):
        raise ValueError(
            f"{tasks[name]} has no {attribute}: this reasoning-gym version "
            "was not audited (rlvr_jax/rewards/scorers.py)")
      setattr(module, attribute, replacement)
  return reasoning_gym.get_score_answer_fn(name)


def reasoning_gym_item(pred: str,
                       entry: dict[str, Any]) -> tuple[float, str | None]:
  """Full credit from the task's own reasoning-gym scorer, else 0.

  reasoning-gym scorers give wrong answers partial credit (basic_arithmetic
  gives len(gold) / len(pred) when the gold is a substring, so `-611` for
  `-61` earns 0.75); only a score of exactly 1.0 counts. Scorers that
  would run the answer as code are made safe or refused (module docstring);
  this runs in a `math_checker.MathChecker` worker under its deadline.

  Args:
    pred: the extracted model answer.
    entry: the reasoning-gym entry {'question', 'answer', 'metadata'};
      `metadata['source_dataset']` names the task.

  Returns:
    (score, reason): (1.0, None) or (0.0, a `wrong` reason with the task's
    own score).
  """
  score = float(_reasoning_gym_scorer(entry["metadata"]["source_dataset"])(
      pred, entry))
  if score == 1.0:
    return 1.0, None
  return 0.0, f"{math_checker.WRONG}: reasoning-gym score {score:.3g}"


# A call for `MathChecker(warmup=...)` that imports reasoning_gym and builds a
# scorer in each worker before it takes items (about 3 s), so that cost never
# counts against an item's deadline.
REASONING_GYM_WARMUP = (reasoning_gym_item, (
    "2", {"question": "Calculate 1 + 1.", "answer": "2",
          "metadata": {"source_dataset": "basic_arithmetic"}}))


@dataclasses.dataclass(frozen=True)
class RewardOutput:
  """Rewards of B responses and their parts.

  Attributes:
    rewards: [B] float32, correct + format_weight * format + overlong.
    correct: [B] float32 in {0, 1}.
    format: [B] float32 in {0, 1}, whether the response ends in one clean box.
    overlong: [B] float32 in [-1, 0].
    reasons: B entries, None where correct is 1, else why it is 0
      ("<category>: <detail>").
  """
  rewards: np.ndarray
  correct: np.ndarray
  format: np.ndarray
  overlong: np.ndarray
  reasons: list[str | None]

  def _reason_counts(self) -> dict[str, int]:
    """Rows per category of `math_checker.REASON_CATEGORIES` (all listed)."""
    categories = [r.split(":", 1)[0] for r in self.reasons if r is not None]
    return {c: categories.count(c) for c in math_checker.REASON_CATEGORIES}

  def metrics(self) -> dict[str, float]:
    """Sums, the row count as their denominator, and reason counts.

    Returns:
      A flat dict: 'reward/count' (B), 'reward/{total,correct,format,
      overlong}_sum', and 'reward/reason/<category>' counts for every
      category of `math_checker.REASON_CATEGORIES`.
    """
    metrics = {
        "reward/count": float(len(self.reasons)),
        "reward/total_sum": float(self.rewards.sum()),
        "reward/correct_sum": float(self.correct.sum()),
        "reward/format_sum": float(self.format.sum()),
        "reward/overlong_sum": float(self.overlong.sum()),
    }
    for category, count in self._reason_counts().items():
      metrics[f"reward/reason/{category}"] = float(count)
    return metrics

  def step_metrics(self, *, group_size: int) -> dict[str, float]:
    """The `reward/*` metrics of one training step, the same for every method.

    Both credit plug-ins log exactly these keys (`training/credit.py` over
    the whole batch, `training/scrl_credit.py` over its plain rows):

    - 'reward/mean': mean reward r.
    - 'reward/accuracy': fraction of rows with correct = 1.
    - 'reward/format_rate': fraction of rows ending in one clean box.
    - 'reward/overlong_mean': mean overlong penalty, in [-1, 0].
    - 'reward/groups_mixed': fraction of groups (`group_size` contiguous rows)
      whose rows are not all right or all wrong.
    - 'reward/reason/<category>' for every category of
      `math_checker.REASON_CATEGORIES` (wrong, no_answer, too_long,
      unparsable, timeout, crash, error): the fraction of rows that score 0
      for that reason, so checker failures (timeout, crash, error) show in
      the metrics; correct rows have no reason, so these sum to
      1 - accuracy.

    Args:
      group_size: rows per group; must divide B.

    Returns:
      A flat dict of floats.

    Raises:
      ValueError: when `group_size` does not divide B.
    """
    b = len(self.reasons)
    if group_size < 1 or b % group_size:
      raise ValueError(f"group_size={group_size} does not divide B={b}")
    grouped = self.correct.reshape(-1, group_size)
    metrics = {
        "reward/mean": float(self.rewards.mean()),
        "reward/accuracy": float(self.correct.mean()),
        "reward/format_rate": float(self.format.mean()),
        "reward/overlong_mean": float(self.overlong.mean()),
        "reward/groups_mixed": float(
            (grouped.min(axis=1) != grouped.max(axis=1)).mean()),
    }
    for category, count in self._reason_counts().items():
      metrics[f"reward/reason/{category}"] = count / b
    return metrics


class RewardFunction:
  """Scores a batch of responses; never raises or hangs on model output.

  Usage (the trainer keeps one pool for the run):

    with math_checker.MathChecker(num_workers=2) as pool:
      reward_fn = RewardFunction(checker="math_verify", pool=pool,
                                 max_response_len=256, overlong_buffer=64)
      out = reward_fn(examples, responses, response_lengths)
  """

  def __init__(self, *, checker: str, max_response_len: int,
               format_weight: float = 0.0, overlong_buffer: int = 0,
               last_number_fallback: bool = False,
               max_answer_chars: int = 1000,
               pool: math_checker.MathChecker | None = None):
    """Configures the reward.

    Args:
      checker: 'math_verify' (math-verify, gold first, in the pool), 'exact'
        (normalized string equality, in this process) or 'reasoning_gym'
        (the task's own scorer, full credit only, in the pool).
      max_response_len: L of `overlong_penalty`.
      format_weight: weight of the format reward (0 disables it).
      overlong_buffer: C of `overlong_penalty` (0 disables it).
      last_number_fallback: use the last number of a response that has no
        box as its answer (the format reward is still 0 for it).
      max_answer_chars: **(decision)** an extracted answer longer than this
        scores 0 (`too_long`) without being checked; real final answers are
        short, and this keeps megabyte outputs away from the checkers.
      pool: the answer-checking worker pool, required by 'math_verify' and
        'reasoning_gym' (for the latter, built with
        `warmup=(REASONING_GYM_WARMUP,)`); not started or closed here.

    Raises:
      ValueError: naming the flag that is unknown, out of range or missing.
    """
    if checker not in CHECKERS:
      raise ValueError(f"checker must be one of {CHECKERS}, got {checker!r}")
    if checker != "exact" and pool is None:
      raise ValueError(f"checker={checker!r} needs a pool (a MathChecker)")
    if format_weight < 0:
      raise ValueError(f"format_weight must be >= 0, got {format_weight}")
    if max_answer_chars < 1:
      raise ValueError(f"max_answer_chars must be >= 1, got {max_answer_chars}")
    _check_overlong_flags(max_response_len=max_response_len,
                          overlong_buffer=overlong_buffer)
    self.checker = checker
    self.max_response_len = max_response_len
    self.format_weight = float(format_weight)
    self.overlong_buffer = overlong_buffer
    self.last_number_fallback = last_number_fallback
    self.max_answer_chars = max_answer_chars
    self._pool = pool

  def _extract(self, text: str) -> str | None:
    """The response's answer: its last box, or its last number if asked."""
    pred = answers.extract_boxed(text)
    if pred is None and self.last_number_fallback:
      pred = answers.extract_last_number(text)
    return pred

  def __call__(self, examples: Sequence[Mapping[str, Any]],
               responses: Sequence[str],
               response_lengths: np.ndarray) -> RewardOutput:
    """Rewards of B responses to their examples (row i answers example i).

    Args:
      examples: B example dicts (see the module docstring).
      responses: B decoded responses; anything that is not a str counts as
        an empty response.
      response_lengths: [B] response lengths in tokens (row sums of
        `response_mask`).

    Returns:
      A `RewardOutput` of [B] arrays.

    Raises:
      ValueError: when the argument lengths disagree, or an example lacks
        'answer' (or, for 'reasoning_gym', 'metadata' with
        'source_dataset').
    """
    lengths = np.asarray(response_lengths)
    if len(examples) != len(responses) or lengths.shape != (len(responses),):
      raise ValueError(
          f"examples ({len(examples)}), responses ({len(responses)}) and "
          f"response_lengths {lengths.shape} must all have B rows")
    for i, example in enumerate(examples):
      if not isinstance(example.get("answer"), str):
        raise ValueError(f"examples[{i}] has no string 'answer'")
      if self.checker == "reasoning_gym":
        if "source_dataset" not in (example.get("metadata") or {}):
          raise ValueError(f"checker='reasoning_gym' needs examples[{i}]"
                           "['metadata']['source_dataset']")
        check_reasoning_gym_task(example["metadata"]["source_dataset"])
    texts = [r if isinstance(r, str) else "" for r in responses]
    correct = np.zeros([len(texts)], np.float32)
    reasons: list[str | None] = [None] * len(texts)
    rows = []
    for i, text in enumerate(texts):
      pred = self._extract(text)
      if pred is None:
        reasons[i] = (f"{math_checker.NO_ANSWER}: no \\boxed{{}} answer" +
                      (" and no number" if self.last_number_fallback else ""))
      elif len(pred) > self.max_answer_chars:
        reasons[i] = (f"{math_checker.TOO_LONG}: answer of {len(pred)} "
                      f"characters > max_answer_chars={self.max_answer_chars}")
      else:
        rows.append((i, pred))
    scores, row_reasons = self._check(examples, rows)
    for (i, _), score, reason in zip(rows, scores, row_reasons):
      correct[i] = score
      reasons[i] = reason
    format_ok = np.array([answers.has_clean_box(t) for t in texts],
                         np.float32).reshape([-1])
    overlong = overlong_penalty(lengths, max_response_len=self.max_response_len,
                                overlong_buffer=self.overlong_buffer)
    rewards = correct + np.float32(self.format_weight) * format_ok + overlong
    return RewardOutput(rewards=rewards, correct=correct, format=format_ok,
                        overlong=overlong, reasons=reasons)

  def _check(self, examples: Sequence[Mapping[str, Any]],
             rows: list[tuple[int, str]]
             ) -> tuple[np.ndarray, list[str | None]]:
    """Correctness of the rows (index, extracted answer) with the checker."""
    if self.checker == "exact":
      results = [exact_item(answers.gold_answer(examples[i]["answer"]), pred)
                 for i, pred in rows]
      return (np.array([s for s, _ in results], np.float32).reshape([-1]),
              [r for _, r in results])
    if self.checker == "math_verify":
      return self._pool.score(
          [answers.gold_answer(examples[i]["answer"]) for i, _ in rows],
          [pred for _, pred in rows])
    return self._pool.run([
        (reasoning_gym_item, (pred, {
            "question": examples[i].get("problem", ""),
            "answer": examples[i]["answer"],
            "metadata": examples[i]["metadata"]}))
        for i, pred in rows])
