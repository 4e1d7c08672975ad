"""Greedy held-out accuracy and the paired test between two evaluations.

The trainer measures the same held-out problems before and after training
with the same code (`evaluation.evaluate.evaluate_heldout`, greedy, n = 1);
each problem is then a pair (right before, right after), and McNemar's exact
test on the discordant pairs says whether the change is more than chance.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from rlvr_jax.evaluation import evaluate


@dataclasses.dataclass(frozen=True)
class HeldOutResult:
  """Outcome of one held-out evaluation.

  Attributes:
    correct: [Q] float32 in {0, 1}, one entry per problem, in record order.
    formatted: [Q] float32, 1 where the response ended in one clean box.
    lengths: [Q] response lengths in tokens.
    responses: the Q decoded responses.
    channels: mean of each reward channel over the problems that report it
      (environment evaluations: 'env/<env>/<channel>', e.g. the e-commerce
      environment's per-constraint pass rates); empty for the task evaluation.
  """

  correct: np.ndarray
  formatted: np.ndarray
  lengths: np.ndarray
  responses: list[str]
  channels: dict[str, float] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_benchmark(cls, result: evaluate.BenchmarkResult) -> HeldOutResult:
    """The held-out view of a greedy (n = 1) BenchmarkResult."""
    if result.num_samples != 1:
      raise ValueError(f"result has {result.num_samples} samples per problem; the held-out "
                       "evaluation is greedy with n = 1.")
    return cls(correct=result.correct[:, 0].astype(np.float32),
               formatted=result.formatted[:, 0].astype(np.float32),
               lengths=result.lengths[:, 0], responses=[t[0] for t in result.texts])

  @property
  def accuracy(self) -> float:
    return float(self.correct.mean()) if self.correct.size else 0.0

  def metrics(self, prefix: str = "eval") -> dict[str, float]:
    return {
        f"{prefix}/accuracy": self.accuracy,
        f"{prefix}/format_rate": float(self.formatted.mean()) if self.formatted.size else 0.0,
        f"{prefix}/response_length": float(self.lengths.mean()) if self.lengths.size else 0.0,
        **{f"{prefix}/{name}": value for name, value in self.channels.items()},
    }

  def to_json(self, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The eval_before/eval_after.json content: accuracy, `correct`, per-problem rows.

    Args:
      records: the held-out records, in evaluation order.

    Returns:
      {'accuracy', 'correct' [Q], 'problems': [{problem, answer, response,
       correct}]}, plus 'channels' when there are any; a resumed run reads
      'correct' back.
    """
    rows = [{"problem": r["problem"], "answer": r["answer"], "response": text,
             "correct": float(ok)}
            for r, text, ok in zip(records, self.responses, self.correct)]
    out = {"accuracy": self.accuracy, "correct": self.correct.tolist(), "problems": rows}
    if self.channels:
      out["channels"] = dict(self.channels)
    return out


def mcnemar_exact(before: np.ndarray, after: np.ndarray) -> float:
  """Two-sided exact McNemar p-value for paired binary outcomes.

  With b = #(wrong before, right after) and c = #(right before, wrong after),
  under H0 (no change) b ~ Binomial(b + c, 1/2); p = min(1, 2 P[X <= min(b, c)]).

  Args:
    before: [Q] in {0, 1}.
    after: [Q] in {0, 1}, same problems in the same order.

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
