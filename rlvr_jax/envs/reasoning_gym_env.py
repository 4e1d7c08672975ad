"""Reasoning-gym tasks as one-turn environments with difficulty levels.

METHODS.md section 8. A level is a set of the task's own config fields
(`LEVELS`); `reset(seed, level)` generates one item with those fields, the
model answers in one turn with `\\boxed{answer}`, and the reward is the
project's full-credit reasoning-gym scorer (`scorers.reasoning_gym_item`:
only the task's own score of exactly 1 counts).

Level tables (terms and digits grow together; `operators` and the other
fields keep the task defaults):

  level | basic_arithmetic       | chain_sum
        | terms      digits      | terms      digits
  ------+------------------------+-----------------------
    0   | 2          1           | 2          1
    1   | 3          1           | 3          1
    2   | 3          2           | 3          2
    3   | 4          2           | 4          2
    4   | 5          2           | 5          2
    5   | 5          3           | 5          3
    6   | 6          3           | 6          3
    7   | 6          4           | 6          4

(min_terms = max_terms = terms, min_digits = max_digits = digits.) Any other
reasoning-gym task works with a caller-given `levels` list of kwargs.

Generation: the item for (seed, level) is item 0 of the task's dataset with
generator seed `tasks.generator_seed(data_seed, split) + seed` (so the train
and eval splits never share a per-item RNG seed, `rlvr_jax.data.tasks`).
reasoning-gym 0.1.25 prints some wrong gold answers for arithmetic
(`tasks.gold_answer_holds`); such an item is skipped for the next generator
seed, up to `_MAX_SKIPS` times, so the result is still a pure function of
(seed, level).
"""

import dataclasses
import json
from typing import Any, Mapping, Sequence

import reasoning_gym
from reasoning_gym import factory

from rlvr_jax.data import prompts
from rlvr_jax.data import tasks
from rlvr_jax.envs import base
from rlvr_jax.envs import tools
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers


def _terms_digits(terms: int, digits: int) -> dict[str, int]:
  return {"min_terms": terms, "max_terms": terms,
          "min_digits": digits, "max_digits": digits}


_ARITHMETIC_LEVELS = tuple(_terms_digits(t, d) for t, d in (
    (2, 1), (3, 1), (3, 2), (4, 2), (5, 2), (5, 3), (6, 3), (6, 4)))
LEVELS: dict[str, tuple[dict[str, Any], ...]] = {
    "basic_arithmetic": _ARITHMETIC_LEVELS,
    "chain_sum": _ARITHMETIC_LEVELS,
}
# Tasks whose reasoning-gym scorer is a plain string comparison, safe to run
# in this process; any other task's scorer runs in a `MathChecker` pool.
IN_PROCESS_TASKS = ("basic_arithmetic", "chain_sum")
INSTRUCTION = "Put your final answer within \\boxed{}."
_MAX_SKIPS = 100
# Largest seed whose generator seeds stay inside the split's 2**32 range.
_MAX_SEED = 2**32 - _MAX_SKIPS - 1


def _check_level(task: str, level: int, kwargs: Mapping[str, Any]) -> None:
  """Raises ValueError unless `kwargs` is a valid config of `task`."""
  if task not in factory.DATASETS:
    raise ValueError(f"task={task!r} is not a reasoning-gym dataset "
                     "(reasoning_gym.factory.DATASETS)")
  fields = {f.name for f in dataclasses.fields(factory.DATASETS[task][1])}
  for key in kwargs:
    if key in ("seed", "size") or key not in fields:
      valid = sorted(fields - {"seed", "size"})
      raise ValueError(f"levels[{level}][{key!r}] is not a settable field of "
                       f"{task}'s config; valid: {valid}")
  try:
    reasoning_gym.create_dataset(task, seed=0, size=1, **kwargs)
  except AssertionError as e:
    raise ValueError(f"levels[{level}]={dict(kwargs)!r} for {task}: {e}") from e


class ReasoningGymEnv(base.Environment):
  """One reasoning-gym task as a one-turn environment.

  Usage:

    env = ReasoningGymEnv("basic_arithmetic")
    prompt = env.reset(seed=3, level=2)
    result = env.step(model_text)   # done; result.rewards['success'] in {0, 1}
  """

  def __init__(self, task: str, *,
               levels: Sequence[Mapping[str, Any]] | None = None,
               data_seed: int = 0, split: str = "train",
               max_answer_chars: int = 1000,
               pool: math_checker.MathChecker | None = None):
    """Configures the task and its levels.

    Args:
      task: a reasoning-gym dataset name.
      levels: the task's config kwargs per level; None takes `LEVELS[task]`.
      data_seed: the data seed (>= 0) of `tasks.generator_seed`.
      split: 'train' or 'eval' (disjoint generator seeds).
      max_answer_chars: a longer boxed answer scores 0 unchecked.
      pool: a started `MathChecker` built with
        `warmup=(scorers.REASONING_GYM_WARMUP,)`; required for tasks outside
        `IN_PROCESS_TASKS`, whose scorers may run sympy.

    Raises:
      ValueError: naming the argument that is unknown or invalid (an unknown
        task, a task without a level table and no `levels`, a kwarg that is
        not a field of the task's config, a bad split or seed, a missing
        pool).
    """
    if levels is None:
      if task not in LEVELS:
        raise ValueError(f"task={task!r} has no level table; pass levels= "
                         f"(tables exist for {sorted(LEVELS)})")
      levels = LEVELS[task]
    if not levels:
      raise ValueError("levels must hold at least one level")
    if task not in IN_PROCESS_TASKS and pool is None:
      raise ValueError(f"task={task!r} needs pool= (its scorer is only run "
                       f"in-process for {IN_PROCESS_TASKS})")
    if max_answer_chars < 1:
      raise ValueError(f"max_answer_chars must be >= 1, got {max_answer_chars}")
    super().__init__(max_turns=1, num_levels=len(levels))
    self.name = task
    self.task = task
    self.levels = tuple(dict(kw) for kw in levels)
    self.max_answer_chars = max_answer_chars
    self._base_seed = tasks.generator_seed(data_seed, split)
    self._pool = pool
    for level, kwargs in enumerate(self.levels):
      _check_level(task, level, kwargs)
    self.entry: dict[str, Any] | None = None

  def generate(self, *, seed: int, level: int) -> dict[str, Any]:
    """The reasoning-gym entry of (seed, level), a pure function of both.

    Args:
      seed: the problem seed (>= 0).
      level: the level in [0, num_levels).

    Returns:
      {'question', 'answer', 'metadata'} with JSON-serializable metadata.

    Raises:
      ValueError: when `seed` > 2**32 - 101, or `_MAX_SKIPS` generator
        seeds in a row give wrong gold answers (never seen for the tables
        above).
    """
    if seed > _MAX_SEED:
      raise ValueError(f"seed must be <= {_MAX_SEED}, got {seed}")
    kwargs = self.levels[level]
    for skip in range(_MAX_SKIPS):
      dataset = reasoning_gym.create_dataset(
          self.task, seed=self._base_seed + seed + skip, size=1, **kwargs)
      item = dataset[0]
      answer = str(item["answer"])
      metadata = json.loads(json.dumps(item["metadata"], default=str))
      if tasks.gold_answer_holds(self.task, answer, metadata):
        return {"question": item["question"], "answer": answer,
                "metadata": metadata}
    raise ValueError(f"{self.task} level {level} seed {seed}: {_MAX_SKIPS} "
                     "items in a row had wrong gold answers")

  def _reset(self, *, seed: int, level: int) -> str:
    self.entry = self.generate(seed=seed, level=level)
    return f"{self.entry['question']}\n{INSTRUCTION}"

  def worked_example(self, index: int) -> list[tuple[str, str]]:
    """A level-0 item and its solved turn, as the task's few-shot examples.

    The item is this split's (seed = the largest seed - index, level 0), a
    seed the trainer's draws (0, 1, 2, ...) never reach. The turn is
    `{expression} = {answer}.` (for tasks whose metadata has the expression)
    and `The final answer is \\boxed{answer}.`, the worked solution of
    `data.prompts.worked_solution` for the same arithmetic tasks.

    Args:
      index: which example, 0 <= index < 100.

    Returns:
      [(the first observation, the model's turn)].
    """
    if not 0 <= index < 100:
      raise ValueError(f"index must be in [0, 100), got {index}")
    entry = self.generate(seed=_MAX_SEED - index, level=0)
    final = prompts.FINAL_ANSWER.format(answer=entry["answer"])
    expression = entry["metadata"].get("expression")
    turn = f"{expression} = {entry['answer']}.\n{final}" if expression else final
    return [(f"{entry['question']}\n{INSTRUCTION}", turn)]

  def score(self, text: str) -> dict[str, float]:
    """The reward channels of a final turn against the current entry.

    Args:
      text: the model's turn.

    Returns:
      {'success': 1 iff the boxed answer gets the task's full credit,
       'format': 1 iff the turn ends in one clean box}.
    """
    pred = tools.parse_final_answer(text,
                                    max_answer_chars=self.max_answer_chars)
    correct = 0.0
    if pred is not None:
      if self._pool is None:
        correct, _ = scorers.reasoning_gym_item(pred, self.entry)
      else:
        scores, _ = self._pool.run([(scorers.reasoning_gym_item,
                                     (pred, self.entry))])
        correct = float(scores[0])
    return {base.SUCCESS: float(correct),
            "format": float(answers.has_clean_box(text))}

  def _step(self, action: str) -> base.StepResult:
    rewards = self.score(action)
    verdict = "correct" if rewards[base.SUCCESS] == 1.0 else "incorrect"
    return base.StepResult(observation=f"Answer {verdict}.", done=True,
                           rewards=rewards)

  def _final_rewards(self) -> dict[str, float]:
    return {base.SUCCESS: 0.0, "format": 0.0}
