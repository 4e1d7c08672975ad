"""Credit assignment plug-ins of the trainer: which prompts to sample, and how
rewards become token advantages [B, T].

`OutcomeCredit` is the GRPO family (METHODS.md 1.1): each prompt is sampled G
times and one scalar advantage per response is broadcast over its tokens.
SCRL (METHODS.md 3) implements the same two methods with curriculum prompts
and per-answer-span advantages (`rlvr_jax.training.scrl_credit`).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import jax.numpy as jnp
import numpy as np

from rlvr_jax.algorithms import advantages as advantages_lib

Record = dict[str, Any]


class Credit(Protocol):
  """What the trainer asks of a credit-assignment method."""

  def prompts(self, records: Sequence[Record]) -> tuple[list[str], list[Record]]:
    """B = len(records) * G prompt texts, rows of a group contiguous, and the
    example each row is scored against."""

  def advantages(self, examples: Sequence[Record], texts: Sequence[str],
                 response_tokens: np.ndarray, response_mask: np.ndarray,
                 truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Advantages of a rollout batch.

    Args:
      examples: B records, row i scored against examples[i].
      texts: B decoded responses.
      response_tokens: [B, T] int32 response token ids.
      response_mask: [B, T] float32 response mask m.
      truncated: [B] bool, rows cut by the length limit (no EOS).

    Returns:
      (advantages [B, T], loss mask [B, T], metrics).
    """


class OutcomeCredit:
  """GRPO / Dr. GRPO / RLOO: one outcome reward per response."""

  def __init__(self, *, estimator: str, group_size: int,
               render: Callable[[Record], str], reward_fn: Any,
               mask_truncated: bool):
    self.estimator = advantages_lib.get_estimator(estimator)
    self.group_size = group_size
    self.render = render
    self.reward_fn = reward_fn
    self.mask_truncated = mask_truncated

  def prompts(self, records):
    texts, examples = [], []
    for record in records:
      text = self.render(record)
      texts += [text] * self.group_size
      examples += [record] * self.group_size
    return texts, examples

  def advantages(self, examples, texts, response_tokens, response_mask, truncated):
    del response_tokens
    lengths = response_mask.sum(axis=1)
    scored = self.reward_fn(examples, texts, lengths)
    adv = self.estimator(jnp.asarray(scored.rewards), group_size=self.group_size)
    adv = np.asarray(advantages_lib.broadcast_to_tokens(adv, jnp.asarray(response_mask)))
    loss_mask = response_mask
    if self.mask_truncated:
      loss_mask = response_mask * (~truncated)[:, None]
    # The `reward/*` keys every method logs (`RewardOutput.step_metrics`).
    metrics = scored.step_metrics(group_size=self.group_size)
    metrics.update({
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": float(truncated.mean()),
    })
    return adv.astype(np.float32), loss_mask.astype(np.float32), metrics


def select_groups(advantages: np.ndarray, mask: np.ndarray, *, group_size: int,
                  num_groups: int, token_loss: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, int]:
  """The rows of the update batch: groups with a learning signal first (DAPO).

  DAPO's dynamic sampling (Yu et al., 2025, Sec. 3.3) drops the groups whose
  responses all earn the same reward: their advantages are 0, so they add
  nothing to the gradient but still cost a forward and backward pass, and
  they dilute token-mean losses. Here, without resampling, the update takes
  the first `num_groups` groups that have a nonzero advantage on a loss
  token; when fewer have one, the batch is filled up to `num_groups` groups
  with the first of the others, marked invalid (the caller zeroes their
  mask, so they count in no loss sum or denominator) and kept only so that
  the update has one shape and compiles once.

  Args:
    advantages: [B, T] token advantages, the G rows of a group contiguous.
    mask: [B, T] loss mask.
    group_size: G.
    num_groups: groups in the update batch, <= B / G.
    token_loss: the method has a loss term of its own on every loss token
      besides the advantage-weighted one (DistIL's forward cross-entropy,
      METHODS.md 7.3), so every group with a loss token has a signal, whatever
      its advantages.

  Returns:
    (rows [num_groups * G] int indices into the B rows, valid [num_groups *
    G] bool, the number of groups with a signal in the whole batch).

  Raises:
    ValueError: B is not a multiple of G or has fewer than num_groups groups.
  """
  b = advantages.shape[0]
  if b % group_size or b // group_size < num_groups:
    raise ValueError(f"{b} rows do not make {num_groups} groups of {group_size}")
  weight = mask if token_loss else np.abs(advantages) * mask
  signal = weight.reshape(b // group_size, -1).max(axis=1) > 0
  order = np.concatenate([np.flatnonzero(signal), np.flatnonzero(~signal)])[:num_groups]
  rows = (order[:, None] * group_size + np.arange(group_size)).reshape(-1)
  valid = np.repeat(signal[order], group_size)
  return rows, valid, int(signal.sum())
