"""The study's outcome arithmetic: spread over seeds and the paired test against GRPO.

Every model of the study is measured greedily on the same Q held-out
problems (`evaluation.evaluate.evaluate_heldout`), so two methods trained with
the same seed (the same sampling keys and data order) give Q paired verdicts.
Over S seeds, a method and GRPO give S * Q pairs (right with the method,
right with GRPO). The paired test pools them and runs the exact McNemar test
(`heldout.mcnemar_exact`), i.e. the two-sided exact sign test on the
discordant pairs: under H0 (the method and GRPO are equally good) a
discordant pair favours the method with probability 1/2.

Pooling over seeds treats the S * Q pairs as independent; the same problem
appears once per seed, so the p-value is somewhat optimistic when the seeds'
verdicts on a problem are correlated (a problem the base model always gets
right). The per-seed differences are reported beside it for that reason.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlvr_jax.evaluation import heldout


def seed_spread(values: Sequence[float]) -> dict[str, Any]:
  """Mean and sample standard deviation (ddof = 1) of per-seed values.

  Args:
    values: [S] one number per seed (S >= 1).

  Returns:
    {'mean', 'std' (0.0 for one seed), 'seeds': the values as floats}.
  """
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"values must be a non-empty [S] list, got shape {x.shape}.")
  return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
          "seeds": [float(v) for v in x]}


def paired_comparison(method_correct: np.ndarray, reference_correct: np.ndarray
                      ) -> dict[str, Any]:
  """A method against the reference (GRPO) on the same seeds and problems.

  With d_s = mean_q(method[s, q]) - mean_q(reference[s, q]) the accuracy
  difference of seed s, the mean difference is mean_s d_s. Pooled over the
  S * Q pairs, b = #(method right, reference wrong) and c = #(method wrong,
  reference right); p is the exact two-sided McNemar (sign) test,
  min(1, 2 P[X <= min(b, c)]) with X ~ Binomial(b + c, 1/2).

  Args:
    method_correct: [S, Q] verdicts in {0, 1} of the method, seed s's row
      from the run with rl.seed = s.
    reference_correct: [S, Q] the reference's verdicts, same seeds and
      problems in the same order.

  Returns:
    {'diff_mean': mean_s d_s, 'diff_seeds': [S] d_s, 'wins': b,
     'losses': c, 'p_value'}.

  Raises:
    ValueError: the arrays are not [S, Q] of the same shape.
  """
  a = np.asarray(method_correct, np.float32)
  r = np.asarray(reference_correct, np.float32)
  if a.ndim != 2 or a.shape != r.shape:
    raise ValueError(f"method_correct {a.shape} and reference_correct {r.shape} must be "
                     "the same [S, Q].")
  diffs = a.mean(axis=1) - r.mean(axis=1)
  right, ref_right = a > 0.5, r > 0.5
  return {
      "diff_mean": float(diffs.mean()),
      "diff_seeds": [float(d) for d in diffs],
      "wins": int(np.sum(right & ~ref_right)),
      "losses": int(np.sum(~right & ref_right)),
      "p_value": heldout.mcnemar_exact(r.reshape(-1), a.reshape(-1)),
  }


def weighted_mean(means: Sequence[float], counts: Sequence[float]) -> float:
  """sum(mean_i * count_i) / sum(count_i): per-step means pooled (NaN if no count)."""
  m = np.asarray(means, np.float64)
  n = np.asarray(counts, np.float64)
  if m.shape != n.shape:
    raise ValueError(f"means {m.shape} and counts {n.shape} differ in shape.")
  total = n.sum()
  return float((m * n).sum() / total) if total > 0 else float("nan")
