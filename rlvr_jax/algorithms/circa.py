"""CIRCA's two label-free reward channels (METHODS.md 6.5; arXiv 2605.22620).

No gold answer is used. Per rollout i of a group of G:
- cluster vote r_clu[i] = |cluster(i)| / G, the G final answers clustered by
  equivalence (the answer checker); a rollout with no extractable answer gets
  0 (`cluster_votes`, host side);
- self-certainty r_sc[i] = mean_t KL(U || pi(. | q, o_<t))
  = mean_t (logsumexp(z_t) - mean_v z_t - log V) over the response tokens
  (`token_self_certainty`, a per-token reduction over V that the statistics
  pass can run on each [B, chunk, V] block of logits it already computes,
  then `sequence_self_certainty`; no gradient, no extra pass).
CIRCA combines them with GDPO (`advantages.gdpo`, weights (1, 1)) and KL-Cov.

Decisions where METHODS.md 6.5 is silent (cluster vote):
- Answers are the last `\\boxed{}` (`answers.extract_boxed`); identical
  stripped strings are one answer without asking the checker.
- Clustering is greedy in row order: each distinct answer joins the first
  earlier cluster whose representative (its first answer) it is equivalent
  to, checked as equivalent(representative, answer), representative on the
  gold side of math-verify's asymmetric call; otherwise it starts a cluster.
  All pairs a group may need go to the checker in one batched call.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker

# equivalent(references, candidates) -> one score per pair, 1 where
# candidates[i] is equivalent to references[i] (the signature of
# `MathChecker.score`'s scores).
Equivalence = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def checker_equivalence(checker: math_checker.MathChecker) -> Equivalence:
  """The math-verify pool as an `Equivalence` (reference on the gold side)."""
  return lambda refs, cands: checker.score(list(refs), list(cands))[0]


def _cluster_group(answer_list: Sequence[str | None],
                   same: dict[tuple[str, str], bool]) -> np.ndarray:
  """Cluster sizes / G of one group, given the checked pairs."""
  G = len(answer_list)
  distinct = list(dict.fromkeys(a for a in answer_list if a is not None))
  representatives: list[str] = []
  cluster_of: dict[str, int] = {}
  for a in distinct:
    match = next((c for c, rep in enumerate(representatives)
                  if same[(rep, a)]), None)
    if match is None:
      match = len(representatives)
      representatives.append(a)
    cluster_of[a] = match
  sizes = np.zeros(len(representatives), np.int64)
  for a in answer_list:
    if a is not None:
      sizes[cluster_of[a]] += 1
  return np.array([0.0 if a is None else sizes[cluster_of[a]] / G
                   for a in answer_list], np.float32).reshape(G)


def cluster_votes(texts: Sequence[str | None], *, group_size: int,
                  equivalent: Equivalence) -> np.ndarray:
  """Cluster-vote channel r_clu = |cluster(i)| / G. METHODS.md 6.5.

  Args:
    texts: B responses, groups of `group_size` contiguous rows; a non-str
      counts as no answer.
    group_size: G, rollouts per prompt.
    equivalent: batched equivalence test (`checker_equivalence(pool)` for
      math-verify); called once with every pair of distinct answers of a
      group (earlier answer as the reference).

  Returns:
    [B] float32 votes in [0, 1]; 0 where no answer was extracted.
  """
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  if len(texts) % group_size:
    raise ValueError(f"texts has {len(texts)} rows, not a multiple of "
                     f"group_size={group_size}.")
  extracted = [answers.extract_boxed(t) if isinstance(t, str) else None
               for t in texts]
  groups = [extracted[k:k + group_size]
            for k in range(0, len(extracted), group_size)]
  pairs = []
  for group in groups:
    distinct = list(dict.fromkeys(a for a in group if a is not None))
    pairs += [(distinct[j], distinct[i]) for i in range(len(distinct))
              for j in range(i)]
  pairs = list(dict.fromkeys(pairs))
  scores = list(equivalent([r for r, _ in pairs], [c for _, c in pairs])
                ) if pairs else []
  if len(scores) != len(pairs):
    raise ValueError(f"equivalent returned {len(scores)} scores for "
                     f"{len(pairs)} pairs.")
  same = {pair: float(s) == 1.0 for pair, s in zip(pairs, scores)}
  if not groups:
    return np.zeros([0], np.float32)
  return np.concatenate([_cluster_group(g, same) for g in groups])


def token_self_certainty(logits: jax.Array) -> jax.Array:
  """Per-token KL(U || softmax(z)) = logsumexp(z) - mean_v z - log V.

  Runs on any block of positions ([B, chunk, V] inside the chunked LM head
  of the statistics pass, or the full [B, T, V]). METHODS.md 6.5. No
  gradient flows through it (it is a reward).

  Args:
    logits: [B, T, V] logits z (at the temperature the statistics pass uses).

  Returns:
    [B, T] float32 values >= 0.
  """
  if logits.ndim != 3:
    raise ValueError(f"logits must be [B, T, V], got shape {logits.shape}.")
  V = logits.shape[-1]
  z = jax.lax.stop_gradient(logits.astype(jnp.float32))
  return (jax.nn.logsumexp(z, axis=-1) - jnp.mean(z, axis=-1)
          - jnp.log(jnp.float32(V)))


def sequence_self_certainty(token_values: jax.Array,
                            mask: jax.Array) -> jax.Array:
  """r_sc[i] = sum_t m[i,t] sc[i,t] / sum_t m[i,t]; 0 for a row without tokens.

  Args:
    token_values: [B, T] `token_self_certainty` (garbage allowed where m = 0).
    mask: [B, T] response mask m.

  Returns:
    [B] float32 self-certainty channel.
  """
  if token_values.ndim != 2 or token_values.shape != mask.shape:
    raise ValueError(f"token_values {token_values.shape} and mask "
                     f"{mask.shape} must both be [B, T].")
  valid = mask > 0
  total = jnp.sum(jnp.where(valid, token_values.astype(jnp.float32), 0.0),
                  axis=-1)
  count = jnp.sum(valid.astype(jnp.float32), axis=-1)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


@jax.jit
def self_certainty(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Self-certainty channel from full logits. METHODS.md 6.5.

  `sequence_self_certainty(token_self_certainty(logits), mask)`.

  Args:
    logits: [B, T, V] logits z of the response positions.
    mask: [B, T] response mask m.

  Returns:
    [B] float32.
  """
  return sequence_self_certainty(token_self_certainty(logits), mask)
