"""Reward channels and user reward functions (METHODS.md 6.1).

A reward is a set of named channels per rollout (outcome correctness, format,
overlong penalty, one per subproblem or rubric criterion, intrinsic rewards)
plus the weights that combine them; the scalar reward is derived:

  r_i = sum_c weights[c] * values[i, c]

`RewardChannels` holds one batch of them with the reason each row scored 0,
and logs the same metric keys for every method. GDPO (`advantages.gdpo`)
takes `values` and `weights` directly.

A user reward function is named by import path (`--config.reward.fn=
my_pkg.rewards:score`), loaded with `load_reward_fn` and called through
`call_reward_fn`, which checks what it returns. Its signature:

  def score(examples: list[dict], texts: list[str])
      -> list[float] | dict[str, list[float]]

`examples[i]` is the dataset row of prompt i (its 'problem', 'answer' and any
other fields), `texts[i]` the decoded response; it returns one number per row
(a single channel named 'reward') or a dict of named channels, each one number
per row. Numbers must be finite reals (bool, None and strings are rejected).
"""

import dataclasses
import importlib
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers

UserRewardFn = Callable[[list[dict[str, Any]], list[str]],
                        Sequence[float] | Mapping[str, Sequence[float]]]

# Channel name of a user function that returns one number per row.
SCALAR_CHANNEL = "reward"


@dataclasses.dataclass(frozen=True)
class RewardChannels:
  """Named reward channels of B rollouts.

  Attributes:
    names: C distinct channel names.
    values: [B, C] float32 r[i, c].
    weights: [C] float32 lambda_c; the scalar reward is values @ weights.
    reasons: B entries, None unless row i scored 0, then
      "<category>: <detail>" with a category of
      `math_checker.REASON_CATEGORIES`.
  """
  names: tuple[str, ...]
  values: np.ndarray
  weights: np.ndarray
  reasons: list[str | None]

  def __post_init__(self):
    C = len(self.names)
    if len(set(self.names)) != C:
      raise ValueError(f"channel names must be distinct, got {self.names}.")
    if self.values.ndim != 2 or self.values.shape[1] != C:
      raise ValueError(f"values has shape {self.values.shape}; with {C} "
                       "names it must be [B, C].")
    if self.weights.shape != (C,):
      raise ValueError(f"weights has shape {self.weights.shape}, want ({C},).")
    if len(self.reasons) != self.values.shape[0]:
      raise ValueError(f"reasons has {len(self.reasons)} entries, values has "
                       f"{self.values.shape[0]} rows.")
    if not np.all(np.isfinite(self.values)):
      raise ValueError("values must be finite.")

  def scalar(self) -> np.ndarray:
    """r_i = sum_c weights[c] * values[i, c]. Returns [B] float32."""
    return (self.values.astype(np.float32) @ self.weights.astype(np.float32)
            ).astype(np.float32).reshape(self.values.shape[0])

  def channel(self, name: str) -> np.ndarray:
    """The [B] values of channel `name`."""
    if name not in self.names:
      raise ValueError(f"no channel {name!r}; channels: {self.names}.")
    return self.values[:, self.names.index(name)]

  def metrics(self) -> dict[str, float]:
    """Sums with the row count as their denominator, and reason counts.

    Returns:
      A flat dict: 'reward/count' (B), 'reward/total_sum' (of the scalar),
      'reward/<name>_sum' per channel, and 'reward/reason/<category>' for
      every category of `math_checker.REASON_CATEGORIES` (the same keys as
      `scorers.RewardOutput.metrics` for the channels correct, format,
      overlong).
    """
    metrics = {"reward/count": float(self.values.shape[0]),
               "reward/total_sum": float(self.scalar().sum())}
    for c, name in enumerate(self.names):
      metrics[f"reward/{name}_sum"] = float(self.values[:, c].sum())
    categories = [r.split(":", 1)[0] for r in self.reasons if r is not None]
    for category in math_checker.REASON_CATEGORIES:
      metrics[f"reward/reason/{category}"] = float(categories.count(category))
    return metrics


def from_reward_output(output: scorers.RewardOutput, *,
                       format_weight: float) -> RewardChannels:
  """The built-in reward as channels: correct, format, overlong.

  Weights (1, format_weight, 1), so `scalar()` equals `output.rewards`.

  Args:
    output: a `scorers.RewardFunction` result.
    format_weight: the format channel's weight (the reward's flag).

  Returns:
    RewardChannels with C = 3 and the output's reasons.
  """
  values = np.stack([output.correct, output.format, output.overlong], axis=1)
  return RewardChannels(
      names=("correct", "format", "overlong"),
      values=values.astype(np.float32),
      weights=np.array([1.0, format_weight, 1.0], np.float32),
      reasons=list(output.reasons))


def load_reward_fn(spec: str) -> UserRewardFn:
  """Imports the callable named by `spec`, "package.module:attribute".

  The attribute may be dotted ("my_pkg.rewards:Scorer.score").

  Args:
    spec: the value of `--config.reward.fn`.

  Returns:
    The callable.

  Raises:
    ValueError: naming `--config.reward.fn` when the spec is malformed, the
      module or attribute cannot be found, or it is not callable.
  """
  flag = f"--config.reward.fn={spec!r}"
  module_name, sep, attribute = str(spec).partition(":")
  if not sep or not module_name or not attribute:
    raise ValueError(f"{flag} must look like 'package.module:function'.")
  try:
    target = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{flag}: cannot import {module_name!r}: {e}") from e
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"{flag}: {module_name!r} has no attribute "
                       f"{attribute!r}.")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"{flag}: {attribute!r} is not callable.")
  return target


def _function_name(fn: Callable[..., Any]) -> str:
  module = getattr(fn, "__module__", None) or "?"
  return f"{module}:{getattr(fn, '__qualname__', repr(fn))}"


def _checked_channel(value: Any, rows: int, where: str) -> np.ndarray:
  """One channel as [B] float32, or ValueError naming `where` and the row."""
  if isinstance(value, (str, bytes, Mapping)) or not hasattr(value,
                                                             "__len__"):
    raise ValueError(f"{where} must be a list of {rows} numbers, got "
                     f"{type(value).__name__}.")
  if len(value) != rows:
    raise ValueError(f"{where} has {len(value)} values for {rows} rows.")
  out = np.zeros([rows], np.float32)
  for i, x in enumerate(value):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
      raise ValueError(f"{where}, row {i}: {x!r} ({type(x).__name__}) is not "
                       "a number.")
    if not math.isfinite(float(x)):
      raise ValueError(f"{where}, row {i}: {x!r} is not finite.")
    out[i] = float(x)
  return out


def call_reward_fn(
    fn: UserRewardFn,
    examples: Sequence[Mapping[str, Any]],
    texts: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
) -> RewardChannels:
  """Calls a user reward function and checks what it returns.

  Args:
    fn: the function (see the module docstring for its signature).
    examples: B example dicts, row i is the prompt of text i.
    texts: B decoded responses.
    weights: channel name -> weight; channels it does not name weigh 1.

  Returns:
    RewardChannels: one channel 'reward' for a list, the dict's channels (in
    its order) for a dict. Rows whose scalar reward is 0 get the reason
    "wrong: <function> scored 0".

  Raises:
    ValueError: naming the function, the channel and the row, when the
      return value is not a list or a dict of lists, has the wrong length, or
      holds a non-number or a non-finite number; or naming `weights` when it
      names a channel the function did not return.
  """
  if len(examples) != len(texts):
    raise ValueError(f"examples ({len(examples)}) and texts ({len(texts)}) "
                     "must have the same number of rows.")
  name = _function_name(fn)
  rows = len(texts)
  result = fn([dict(e) for e in examples], list(texts))
  if isinstance(result, Mapping):
    if not result:
      raise ValueError(f"reward function {name} returned an empty dict.")
    for key in result:
      if not isinstance(key, str) or not key:
        raise ValueError(f"reward function {name} returned a dict with the "
                         f"key {key!r}; channel names must be non-empty str.")
    names = tuple(result)
    columns = [_checked_channel(result[k], rows,
                                f"reward function {name}, channel {k!r}")
               for k in names]
  else:
    names = (SCALAR_CHANNEL,)
    columns = [_checked_channel(result, rows, f"reward function {name}")]
  weights = dict(weights or {})
  unknown = sorted(set(weights) - set(names))
  if unknown:
    raise ValueError(f"weights name channels {unknown} that reward function "
                     f"{name} did not return (it returned {list(names)}).")
  channels = RewardChannels(
      names=names,
      values=np.stack(columns, axis=1).reshape(rows, len(names)),
      weights=np.array([weights.get(k, 1.0) for k in names], np.float32),
      reasons=[None] * rows)
  scalar = channels.scalar()
  reasons = [f"{math_checker.WRONG}: {name} scored 0" if s == 0 else None
             for s in scalar]
  return dataclasses.replace(channels, reasons=reasons)
