"""Adaptive difficulty: per-environment level controllers and an env sampler.

METHODS.md section 8.

`LevelController`: keeps the outcomes (the `success` channel, in {0, 1}) of
the last N episodes played at the current level. Once N are in, with
a = their mean: a > up_threshold moves up a level, a < down_threshold moves
down, otherwise the level holds (and the window rolls on). A level change
empties the window, and outcomes reported for any other level (episodes
sampled before the change) are ignored.

`EnvSampler`: s_e = the fraction of environment e's last N groups that gave
signal (rewards not all equal, i.e. for a {0, 1} reward neither all right
nor all wrong; an environment with no groups yet counts s_e = 1), and

  p_e = floor + (1 - Ne * floor) * s_e / sum_j s_j     (uniform if sum_j s_j = 0)

over the Ne environments, so every p_e >= floor and sum_e p_e = 1.

Both keep all their state in `state_dict()` (plain JSON types) and
`load_state_dict` restores it exactly, so a resumed run makes the same
decisions and draws as an uninterrupted one. Config flags (checked here, named
in errors): --config.curriculum.{window, up_threshold, down_threshold,
start_level, signal_window, signal_floor, seed}.
"""

import collections
from typing import Any, Mapping, Sequence

import numpy as np


class LevelController:
  """The level of one environment from its rolling accuracy."""

  def __init__(self, *, num_levels: int, window: int,
               up_threshold: float = 0.9, down_threshold: float = 0.2,
               start_level: int = 0):
    """Configures the controller.

    Args:
      num_levels: levels 0 .. num_levels - 1 (the environment's).
      window: N, episodes at the current level before any decision.
      up_threshold: move up when the window's accuracy is above this.
      down_threshold: move down when it is below this.
      start_level: the first level.

    Raises:
      ValueError: naming the --config.curriculum flag that is out of range.
    """
    if num_levels < 1:
      raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if window < 1:
      raise ValueError(f"--config.curriculum.window must be >= 1, got {window}")
    if not 0.0 <= down_threshold < up_threshold <= 1.0:
      raise ValueError(
          "--config.curriculum.down_threshold and up_threshold must satisfy "
          f"0 <= down < up <= 1, got {down_threshold} and {up_threshold}")
    if not 0 <= start_level < num_levels:
      raise ValueError(f"--config.curriculum.start_level must be in "
                       f"[0, {num_levels}), got {start_level}")
    self.num_levels = num_levels
    self.window = window
    self.up_threshold = float(up_threshold)
    self.down_threshold = float(down_threshold)
    self.level = start_level
    self._outcomes: collections.deque[float] = collections.deque(
        maxlen=window)

  def accuracy(self) -> float | None:
    """Mean outcome of the current window, None while it is empty."""
    if not self._outcomes:
      return None
    return float(np.mean(np.asarray(self._outcomes, np.float64)))

  def record(self, level: int, outcomes: Sequence[float]) -> int:
    """Adds episode outcomes played at `level`; returns the (new) level.

    Outcomes are taken one at a time; after each, a full window is checked
    against the thresholds. Outcomes for a level other than the current one
    (including those after a change within this call) are ignored.

    Args:
      level: the level the episodes were generated at.
      outcomes: episode successes in [0, 1], one per episode.

    Returns:
      The current level after these outcomes.

    Raises:
      ValueError: when an outcome is outside [0, 1].
    """
    values = np.asarray(outcomes, np.float64).reshape([-1])
    if np.any(~((values >= 0.0) & (values <= 1.0))):
      raise ValueError(f"outcomes must be in [0, 1], got {values.tolist()}")
    for value in values:
      if level != self.level:
        break
      self._outcomes.append(float(value))
      if len(self._outcomes) < self.window:
        continue
      accuracy = self.accuracy()
      new_level = self.level
      if accuracy > self.up_threshold:
        new_level = min(self.level + 1, self.num_levels - 1)
      elif accuracy < self.down_threshold:
        new_level = max(self.level - 1, 0)
      if new_level != self.level:
        self.level = new_level
        self._outcomes.clear()
    return self.level

  def state_dict(self) -> dict[str, Any]:
    """The level and the window's outcomes (JSON types)."""
    return {"level": self.level, "outcomes": list(self._outcomes)}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores `state_dict()` output.

    Raises:
      ValueError: a level outside [0, num_levels) or more outcomes than the
        window holds (a checkpoint of a different configuration).
    """
    level, outcomes = int(state["level"]), list(state["outcomes"])
    if not 0 <= level < self.num_levels:
      raise ValueError(f"checkpointed level {level} is outside "
                       f"[0, {self.num_levels})")
    if len(outcomes) > self.window:
      raise ValueError(f"checkpoint holds {len(outcomes)} outcomes; "
                       f"--config.curriculum.window is {self.window}")
    self.level = level
    self._outcomes = collections.deque((float(o) for o in outcomes),
                                       maxlen=self.window)


def signal_weights(signal: Sequence[float], *, floor: float) -> np.ndarray:
  """p_e = floor + (1 - Ne floor) s_e / sum_j s_j (module docstring).

  Args:
    signal: [Ne] signal fractions s_e in [0, 1].
    floor: the least probability of each environment, in [0, 1 / Ne].

  Returns:
    [Ne] float64 probabilities that sum to 1.

  Raises:
    ValueError: when `signal` is empty or outside [0, 1], or `floor` is
      outside [0, 1 / Ne].
  """
  s = np.asarray(signal, np.float64).reshape([-1])
  num_envs = s.shape[0]
  if num_envs == 0 or np.any(~((s >= 0.0) & (s <= 1.0))):
    raise ValueError(f"signal must be [Ne] values in [0, 1], got {s.tolist()}")
  if not 0.0 <= floor <= 1.0 / num_envs:
    raise ValueError(f"--config.curriculum.signal_floor must be in "
                     f"[0, 1/{num_envs}], got {floor}")
  total = s.sum()
  share = s / total if total > 0 else np.full([num_envs], 1.0 / num_envs)
  return floor + (1.0 - num_envs * floor) * share


class EnvSampler:
  """Samples environments in proportion to the signal their groups give."""

  def __init__(self, names: Sequence[str], *, window: int, floor: float,
               seed: int = 0):
    """Configures the sampler.

    Args:
      names: the environments' names (distinct).
      window: N, groups per environment in its signal fraction.
      floor: the least probability of each environment, in [0, 1 / Ne].
      seed: the seed of the draws.

    Raises:
      ValueError: naming the --config.curriculum flag that is out of range,
        or repeated names.
    """
    if not names or len(set(names)) != len(names):
      raise ValueError(f"names must be distinct and non-empty, got {names}")
    if window < 1:
      raise ValueError(f"--config.curriculum.signal_window must be >= 1, "
                       f"got {window}")
    signal_weights([1.0] * len(names), floor=floor)
    self.names = tuple(names)
    self.window = window
    self.floor = float(floor)
    self.seed = seed
    self._draws = 0
    self._signal = {n: collections.deque(maxlen=window) for n in names}

  def record(self, name: str, group_rewards: np.ndarray) -> bool:
    """Adds groups of environment `name`; returns whether the last had signal.

    Args:
      name: an environment name.
      group_rewards: [G] rewards of one group, or [Q, G] several.

    Returns:
      Whether the last group's rewards were not all equal.

    Raises:
      ValueError: an unknown name, or rewards that are not [G] / [Q, G].
    """
    if name not in self._signal:
      raise ValueError(f"unknown environment {name!r}; known: {self.names}")
    rewards = np.asarray(group_rewards, np.float64)
    if rewards.ndim == 1:
      rewards = rewards[None, :]
    if rewards.ndim != 2 or rewards.size == 0:
      raise ValueError(f"group_rewards must be [G] or [Q, G], got shape "
                       f"{np.shape(group_rewards)}")
    signal = rewards.max(axis=1) > rewards.min(axis=1)
    self._signal[name].extend(bool(x) for x in signal)
    return bool(signal[-1])

  def weights(self) -> dict[str, float]:
    """Environment name -> current sampling probability."""
    fractions = [float(np.mean(self._signal[n])) if self._signal[n] else 1.0
                 for n in self.names]
    p = signal_weights(fractions, floor=self.floor)
    return dict(zip(self.names, p.tolist()))

  def sample(self, num: int) -> list[str]:
    """Draws `num` environment names, independently, by `weights()`.

    Draw k uses `np.random.default_rng((seed, k))`, so the draws depend only
    on the seed, the draw count and the recorded signal.
    """
    rng = np.random.default_rng((self.seed, self._draws))
    self._draws += 1
    p = np.asarray(list(self.weights().values()))
    return [self.names[i] for i in rng.choice(len(self.names), size=num, p=p)]

  def state_dict(self) -> dict[str, Any]:
    """The draw count and every environment's signal window (JSON types)."""
    return {"draws": self._draws,
            "signal": {n: list(self._signal[n]) for n in self.names}}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores `state_dict()` output.

    Raises:
      ValueError: when the checkpoint's environments differ from `names`.
    """
    if set(state["signal"]) != set(self.names):
      raise ValueError(f"checkpointed environments {sorted(state['signal'])} "
                       f"differ from {sorted(self.names)}")
    self._draws = int(state["draws"])
    self._signal = {
        n: collections.deque((bool(x) for x in state["signal"][n]),
                             maxlen=self.window) for n in self.names}


class Curriculum:
  """Controllers for several environments and the sampler over them."""

  def __init__(self, controllers: Mapping[str, LevelController],
               sampler: EnvSampler):
    """Holds the parts; `sampler.names` must be the controllers' names."""
    if set(controllers) != set(sampler.names):
      raise ValueError(f"controllers {sorted(controllers)} and sampler "
                       f"{sorted(sampler.names)} name different environments")
    self.controllers = dict(controllers)
    self.sampler = sampler

  def record(self, name: str, level: int, group_rewards: np.ndarray,
             group_success: np.ndarray) -> int:
    """Adds groups of one environment played at `level`.

    Args:
      name: the environment.
      level: the level the groups were generated at.
      group_rewards: [Q, G] (or [G]) rewards, for the signal fraction.
      group_success: the same episodes' success channel, for the level.

    Returns:
      The environment's level after these episodes.
    """
    self.sampler.record(name, group_rewards)
    return self.controllers[name].record(
        level, np.asarray(group_success).reshape([-1]))

  def metrics(self) -> dict[str, float]:
    """'curriculum/<env>/{level,accuracy,weight}' for every environment."""
    out = {}
    weights = self.sampler.weights()
    for name, controller in self.controllers.items():
      out[f"curriculum/{name}/level"] = float(controller.level)
      accuracy = controller.accuracy()
      out[f"curriculum/{name}/accuracy"] = (
          float("nan") if accuracy is None else accuracy)
      out[f"curriculum/{name}/weight"] = weights[name]
    return out

  def state_dict(self) -> dict[str, Any]:
    """Every controller's and the sampler's state (JSON types)."""
    return {"controllers": {n: c.state_dict()
                            for n, c in self.controllers.items()},
            "sampler": self.sampler.state_dict()}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores `state_dict()` output."""
    if set(state["controllers"]) != set(self.controllers):
      raise ValueError(f"checkpointed environments "
                       f"{sorted(state['controllers'])} differ from "
                       f"{sorted(self.controllers)}")
    for name, controller in self.controllers.items():
      controller.load_state_dict(state["controllers"][name])
    self.sampler.load_state_dict(state["sampler"])
