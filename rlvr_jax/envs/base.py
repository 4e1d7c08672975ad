"""The environment interface: reset(seed, level), step(action text).

METHODS.md section 8. An environment generates a problem from (seed, level),
answers the model's turns with text observations and, when the episode ends,
reports the verified reward as named channels. An episode is:

  observation = env.reset(seed=seed, level=level)   # the first user turn
  while True:
    action = <the model's turn, sampled until its stop token, decoded>
    result = env.step(action)
    if result.done: break
    observation = result.observation                  # the next user turn

Contract for the multi-turn sampler and trainer:
- Observations are plain text; the trainer wraps them in the chat template's
  user role and only the model's turns enter the loss mask.
- `step` never raises on model text (malformed tool calls come back as an
  error observation, `tools.parse_tool_call`); it raises RuntimeError only when
  the caller steps an environment that is not reset or already done.
- The episode ends after at most `max_turns` model turns: the base class
  forces done on the last turn and scores the state reached.
- `StepResult.rewards` is empty until done; the final step's channels always
  include `SUCCESS` in {0, 1}, the episode's verified outcome, which the
  curriculum reads as accuracy. Other channels are environment specific
  (e.g. one per constraint in `ecom`) for reward-channel weighting.
- Generation is a pure function of (seed, level): the same pair gives the same
  problem in every process.
"""

import abc
import dataclasses

SUCCESS = "success"


@dataclasses.dataclass(frozen=True)
class StepResult:
  """What the environment answers to one model turn.

  Attributes:
    observation: the environment's reply (the next user turn); on the final
      step a short closing text.
    done: whether the episode has ended.
    rewards: {} unless done; then channel name -> float, always including
      `SUCCESS` in {0, 1}.
  """
  observation: str
  done: bool
  rewards: dict[str, float] = dataclasses.field(default_factory=dict)


class Environment(abc.ABC):
  """A verifiable environment with difficulty levels 0 .. num_levels - 1.

  Subclasses implement `_reset`, `_step` and `_final_rewards`; this class
  validates arguments, counts turns and ends the episode at `max_turns`.

  Attributes:
    name: the environment's name in metrics and curriculum state.
    max_turns: most model turns per episode (>= 1).
    num_levels: number of difficulty levels (>= 1).
  """

  name: str = "env"

  def __init__(self, *, max_turns: int, num_levels: int):
    """Sets the episode limits.

    Args:
      max_turns: most model turns per episode.
      num_levels: number of difficulty levels.

    Raises:
      ValueError: naming the argument that is below 1.
    """
    if max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if num_levels < 1:
      raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    self.max_turns = max_turns
    self.num_levels = num_levels
    self.turn = 0
    self.done = True
    self.level: int | None = None

  def reset(self, *, seed: int, level: int) -> str:
    """Starts an episode; returns the first observation.

    Args:
      seed: the problem seed (>= 0).
      level: the difficulty level in [0, num_levels).

    Returns:
      The first observation (task, and tools where the environment has any).

    Raises:
      ValueError: naming `seed` or `level` when out of range.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if (not isinstance(level, int) or isinstance(level, bool)
        or not 0 <= level < self.num_levels):
      raise ValueError(f"level must be an int in [0, {self.num_levels}) for "
                       f"{self.name}, got {level!r}")
    self.turn = 0
    self.done = False
    self.level = level
    return self._reset(seed=seed, level=level)

  def step(self, action: str) -> StepResult:
    """Answers one model turn.

    Args:
      action: the model's decoded turn; anything that is not a str counts as
        an empty turn.

    Returns:
      The `StepResult`; done on the turn that ends the episode, at the latest
      on turn `max_turns`.

    Raises:
      RuntimeError: when no episode is running (not reset, or done).
    """
    if self.done:
      raise RuntimeError(f"{self.name}: step() without a running episode; "
                         "call reset() first")
    self.turn += 1
    result = self._step(action if isinstance(action, str) else "")
    if not result.done and self.turn >= self.max_turns:
      result = StepResult(
          observation=(f"{result.observation}\nEpisode over: max_turns="
                       f"{self.max_turns} reached."),
          done=True, rewards=self._final_rewards())
    self.done = result.done
    return result

  def truncate(self) -> StepResult:
    """Ends the running episode before its end (the caller's context is full).

    Returns:
      A done `StepResult` with the reward channels of the state reached (as
      at max_turns).

    Raises:
      RuntimeError: when no episode is running.
    """
    if self.done:
      raise RuntimeError(f"{self.name}: truncate() without a running episode")
    self.done = True
    return StepResult(observation="Episode over: context full.", done=True,
                      rewards=self._final_rewards())

  def worked_example(self, index: int) -> list[tuple[str, str]]:
    """A solved episode for few-shot prompting, as its exchanges.

    Returns [(first observation, model turn), (the environment's answer,
    next model turn), ...] up to the model turn that ends the episode (one
    pair for a one-turn environment).

    Args:
      index: which example (0, 1, ...); examples never coincide with an
        episode the trainer draws.

    Raises:
      NotImplementedError: the environment has no worked examples.
    """
    raise NotImplementedError(f"environment {self.name!r} has no worked examples")

  @abc.abstractmethod
  def _reset(self, *, seed: int, level: int) -> str:
    """Generates the episode's problem from (seed, level); the first text."""

  @abc.abstractmethod
  def _step(self, action: str) -> StepResult:
    """Answers a turn of a running episode (the base class counts turns)."""

  @abc.abstractmethod
  def _final_rewards(self) -> dict[str, float]:
    """The reward channels of the state reached (used at max_turns)."""
