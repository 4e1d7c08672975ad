"""pass@k, avg@n and maj@n over n sampled answers per problem (METHODS.md 5).

With n samples of one problem of which c are correct, the unbiased estimator
of pass@k (the chance that at least one of k samples drawn without
replacement from the n is correct) is

  pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i),

the product form being the numerically stable one (no huge binomials).
avg@n = c / n is the mean accuracy of a single sample; maj@n scores the
answer that most samples agree on.

Everything here is host-side NumPy over finished verdicts, vectorized over
problems Q; it is computed in float64 so that a product of up to n factors
keeps full float32 precision in the result.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _counts(num_correct: np.ndarray | Sequence[int],
            num_samples: int | np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Validated ([Q] c, [Q] n) int64 arrays."""
  c = np.asarray(num_correct)
  if c.ndim != 1:
    raise ValueError(f"num_correct must be [Q], got shape {c.shape}.")
  n = np.asarray(num_samples)
  if n.ndim == 0:
    n = np.full(c.shape, n)
  if n.shape != c.shape:
    raise ValueError(f"num_samples {n.shape} and num_correct {c.shape} differ in shape.")
  for name, x in (("num_correct", c), ("num_samples", n)):
    if x.size and not np.array_equal(x, np.round(x)):
      raise ValueError(f"{name} must hold whole numbers, got {x}.")
  c, n = c.astype(np.int64), n.astype(np.int64)
  if np.any(n < 1):
    raise ValueError(f"num_samples must be >= 1, got {n}.")
  if np.any((c < 0) | (c > n)):
    raise ValueError(f"num_correct must lie in [0, num_samples], got {c} for n = {n}.")
  return c, n


def pass_at_k(num_correct: np.ndarray | Sequence[int], *,
              num_samples: int | np.ndarray | Sequence[int], k: int) -> np.ndarray:
  """Unbiased pass@k per problem, 1 - prod_{i=n-c+1}^{n} (1 - k/i).

  c = `num_correct`, n = `num_samples`. When n - c < k every k-subset holds a
  correct sample: the product then contains the factor i = k, which is 0, so
  pass@k = 1 exactly. METHODS.md 5.

  Args:
    num_correct: [Q] correct samples per problem, c in [0, n].
    num_samples: n, one int for all problems or [Q].
    k: samples drawn, 1 <= k <= n for every problem.

  Returns:
    [Q] float64 pass@k in [0, 1].
  """
  c, n = _counts(num_correct, num_samples)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")
  if n.size and k > n.min():
    raise ValueError(f"k = {k} exceeds num_samples = {int(n.min())}.")
  i = np.arange(1, int(n.max(initial=1)) + 1, dtype=np.float64)[None, :]  # [1, max n]
  in_product = (i > (n - c)[:, None]) & (i <= n[:, None])  # [Q, max n]
  factors = np.where(in_product, 1.0 - k / i, 1.0)
  return 1.0 - np.prod(factors, axis=1)


def power_of_two_ks(n: int) -> tuple[int, ...]:
  """The k reported for n samples: 1, 2, 4, ... <= n, then n itself.

  Args:
    n: samples per problem, >= 1.

  Returns:
    Increasing ks, e.g. (1, 2, 4, 8) for n = 8 and (1, 2, 4, 8, 12) for n = 12.
  """
  if n < 1:
    raise ValueError(f"num_samples must be >= 1, got {n}.")
  ks = [1 << j for j in range(n.bit_length()) if 1 << j <= n]
  if ks[-1] != n:
    ks.append(n)
  return tuple(ks)


def pass_at_ks(num_correct: np.ndarray | Sequence[int], *,
               num_samples: int | np.ndarray | Sequence[int]) -> dict[int, np.ndarray]:
  """pass@k per problem for every k of `power_of_two_ks(min n)`.

  Args:
    num_correct: [Q] correct samples per problem.
    num_samples: n, one int or [Q]; the ks go up to the smallest n.

  Returns:
    {k: [Q] float64 pass@k}, ks in increasing order.
  """
  _, n = _counts(num_correct, num_samples)
  if not n.size:
    raise ValueError("num_correct is empty: no problems to score.")
  return {k: pass_at_k(num_correct, num_samples=num_samples, k=k)
          for k in power_of_two_ks(int(n.min()))}


def avg_at_n(num_correct: np.ndarray | Sequence[int], *,
             num_samples: int | np.ndarray | Sequence[int]) -> np.ndarray:
  """avg@n = c / n per problem (METHODS.md 5).

  Args:
    num_correct: [Q] correct samples per problem.
    num_samples: n, one int or [Q].

  Returns:
    [Q] float64 fraction of correct samples.
  """
  c, n = _counts(num_correct, num_samples)
  return c / n


def majority_vote(answers: Sequence[str | None], *,
                  normalize: Callable[[str], str | None]) -> int | None:
  """Index of the sample whose answer wins the vote, or None.

  Answers are grouped by `normalize(answer)`; None answers, and answers that
  normalize to None or to the empty string, take no part. The largest group
  wins; among groups of equal size the one whose answer appears first wins.
  The returned index is that first appearance.

  Args:
    answers: the n extracted answers of one problem (None = none extracted).
    normalize: answer -> comparison key (e.g. `rewards.answers.normalize_answer`).

  Returns:
    The index into `answers` of the winning group's first member, or None
    when no answer could be extracted.
  """
  first: dict[str, int] = {}
  votes: dict[str, int] = {}
  for index, answer in enumerate(answers):
    key = None if answer is None else normalize(answer)
    if not key:
      continue
    first.setdefault(key, index)
    votes[key] = votes.get(key, 0) + 1
  if not votes:
    return None
  winner = max(votes, key=lambda key: (votes[key], -first[key]))
  return first[winner]


def maj_at_n(answers: Sequence[Sequence[str | None]], correct: np.ndarray, *,
             normalize: Callable[[str], str | None]) -> np.ndarray:
  """maj@n per problem: 1 iff the majority-vote answer is correct (METHODS.md 5).

  The verdict of the voted answer is that of its first appearance (the
  sample `majority_vote` returns); a problem with no extracted answer scores 0.

  Args:
    answers: Q lists of n extracted answers (None = none extracted).
    correct: [Q, E] verdict of each sample (bool or {0, 1}).
    normalize: answer -> comparison key, as in `majority_vote`.

  Returns:
    [Q] float64 in {0, 1}.
  """
  correct = np.asarray(correct)
  if correct.ndim != 2 or correct.shape[0] != len(answers):
    raise ValueError(f"correct must be [Q, E] with Q = len(answers) = {len(answers)}, "
                     f"got shape {correct.shape}.")
  out = np.zeros([len(answers)], np.float64)
  for p, row in enumerate(answers):
    if len(row) != correct.shape[1]:
      raise ValueError(f"answers[{p}] has {len(row)} answers but correct has "
                       f"{correct.shape[1]} columns.")
    winner = majority_vote(row, normalize=normalize)
    if winner is not None:
      out[p] = float(bool(correct[p, winner]))
  return out


def summarize(num_correct: np.ndarray | Sequence[int], *, num_samples: int,
              maj: np.ndarray | None = None, prefix: str = "eval") -> dict[str, float]:
  """Means over problems as a flat metric dict.

  Keys: `{prefix}/pass@{k}` for every k of `power_of_two_ks(num_samples)`,
  `{prefix}/avg@{n}` and, when `maj` is given, `{prefix}/maj@{n}`.

  Args:
    num_correct: [Q] correct samples per problem.
    num_samples: n, the same for every problem.
    maj: optional [Q] maj@n per problem (from `maj_at_n`).
    prefix: metric name prefix.

  Returns:
    {name: mean over the Q problems}.
  """
  per_k = pass_at_ks(num_correct, num_samples=num_samples)
  metrics = {f"{prefix}/pass@{k}": float(v.mean()) for k, v in per_k.items()}
  metrics[f"{prefix}/avg@{num_samples}"] = float(
      avg_at_n(num_correct, num_samples=num_samples).mean())
  if maj is not None:
    maj = np.asarray(maj)
    if maj.shape != np.shape(num_correct):
      raise ValueError(f"maj {maj.shape} and num_correct {np.shape(num_correct)} differ in shape.")
    metrics[f"{prefix}/maj@{num_samples}"] = float(maj.mean())
  return metrics
