"""Greedy held-out accuracy and the paired test between two evaluations.

The trainer measures the same held-out problems before and after training
with the same code; each problem is then a pair (right before, right after),
and McNemar's exact test on the discordant pairs says whether the change is
more than chance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class HeldOutResult:
  """Outcome of one held-out evaluation.

  Attributes:
    correct: [N] float32 in {0, 1}, one entry per problem, in record order.
    formatted: [N] float32, 1 where the response ended in one clean box.
    lengths: [N] response lengths in tokens.
    responses: the N decoded responses.
  """

  correct: np.ndarray
  formatted: np.ndarray
  lengths: np.ndarray
  responses: list[str]

  @property
  def accuracy(self) -> float:
    return float(self.correct.mean()) if self.correct.size else 0.0

  def metrics(self, prefix: str = "eval") -> dict[str, float]:
    return {
        f"{prefix}/accuracy": self.accuracy,
        f"{prefix}/format_rate": float(self.formatted.mean()) if self.formatted.size else 0.0,
        f"{prefix}/response_length": float(self.lengths.mean()) if self.lengths.size else 0.0,
    }


def evaluate_heldout(records: Sequence[Record], *, generate: Callable[..., Any],
                     render: Callable[[Record], str], reward_fn: Callable[..., Any],
                     batch_size: int, progress: Callable[[int], None] | None = None
                     ) -> HeldOutResult:
  """Greedy answers to every record, scored by the trainer's reward function.

  Args:
    records: held-out records {'problem', 'answer', ...}.
    generate: `generate(prompts) -> sampler output` with `.texts` and
      `.response_mask`, already bound to greedy decoding.
    render: record -> prompt text (the training template).
    reward_fn: a `rewards.scorers.RewardFunction`; only its `correct` and
      `format` parts are used (no format bonus in the accuracy).
    batch_size: prompts per generate call (the last batch is padded with
      copies of the first record so shapes, and compiled code, stay fixed).
    progress: optional callback with the number of problems done.

  Returns:
    A HeldOutResult.
  """
  correct, formatted, lengths, texts = [], [], [], []
  for start in range(0, len(records), batch_size):
    chunk = list(records[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[0]] * (batch_size - n)
    out = generate([render(r) for r in chunk])
    response_lengths = np.asarray(jax.device_get(out.response_mask)).sum(axis=1)[:n]
    scored = reward_fn(chunk[:n], list(out.texts[:n]), response_lengths)
    correct.append(scored.correct)
    formatted.append(scored.format)
    lengths.append(response_lengths)
    texts.extend(out.texts[:n])
    if progress is not None:
      progress(n)
  cat = lambda xs: np.concatenate(xs) if xs else np.zeros([0], np.float32)
  return HeldOutResult(cat(correct).astype(np.float32), cat(formatted).astype(np.float32),
                       cat(lengths), texts)


def mcnemar_exact(before: np.ndarray, after: np.ndarray) -> float:
  """Two-sided exact McNemar p-value for paired binary outcomes.

  With b = #(wrong before, right after) and c = #(right before, wrong after),
  under H0 (no change) b ~ Binomial(b + c, 1/2); p = min(1, 2 P[X <= min(b, c)]).

  Args:
    before: [N] in {0, 1}.
    after: [N] in {0, 1}, same problems in the same order.

  Returns:
    The p-value (1.0 when there are no discordant pairs).
  """
  before = np.asarray(before) > 0.5
  after = np.asarray(after) > 0.5
  if before.shape != after.shape:
    raise ValueError(f"before {before.shape} and after {after.shape} differ in shape.")
  b = int(np.sum(~before & after))
  c = int(np.sum(before & ~after))
  n = b + c
  if n == 0:
    return 1.0
  k = min(b, c)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
  return min(1.0, 2.0 * tail)
