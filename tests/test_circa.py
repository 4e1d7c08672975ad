"""Tests for rlvr_jax.algorithms.circa (METHODS.md 6.5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import circa
from rlvr_jax.rewards import math_checker

pytestmark = pytest.mark.usefixtures("strict_rank")


def _in_process_math_verify(refs, cands):
  """math-verify in this process (pytest's main thread), reference as gold."""
  return [math_checker.math_verify_item(r, c, timeout_s=5)[0]
          for r, c in zip(refs, cands)]


def _boxed(answer):
  return f"So the answer is \\boxed{{{answer}}}."


def test_equivalent_forms_fall_in_one_cluster_with_math_verify():
  # G = 6: 1/2, 0.5, \frac{1}{2} are one cluster (3/6); 3 twice (2/6); one
  # response without a box gets 0.
  texts = [_boxed("1/2"), _boxed("3"), _boxed("0.5"), "I give up.",
           _boxed("\\frac{1}{2}"), _boxed("3")]
  got = circa.cluster_votes(texts, group_size=6,
                            equivalent=_in_process_math_verify)
  np.testing.assert_allclose(got, [3 / 6, 2 / 6, 3 / 6, 0.0, 3 / 6, 2 / 6])


def test_checker_pool_equivalence():
  with math_checker.MathChecker(num_workers=1) as pool:
    got = circa.cluster_votes(
        [_boxed("0.5"), _boxed("\\frac{1}{2}"), _boxed("2"), _boxed("1/2")],
        group_size=4, equivalent=circa.checker_equivalence(pool))
  np.testing.assert_allclose(got, [0.75, 0.75, 0.25, 0.75])


def test_clusters_are_greedy_per_group_with_one_batched_call():
  # A toy equivalence: equal first characters. Groups of 3; group 2 has
  # "ab", "ac" (one cluster, 2/3) and "b" (1/3); group 1 has an unbalanced
  # box (no answer, 0), and "x" twice (identical strings, no check needed).
  calls = []

  def first_char(refs, cands):
    calls.append(list(zip(refs, cands)))
    return [float(r[0] == c[0]) for r, c in zip(refs, cands)]

  texts = [_boxed("x"), "\\boxed{x", _boxed("x"),
           _boxed("ab"), _boxed("b"), _boxed("ac")]
  got = circa.cluster_votes(texts, group_size=3, equivalent=first_char)
  np.testing.assert_allclose(got, [2 / 3, 0.0, 2 / 3, 2 / 3, 1 / 3, 2 / 3])
  assert calls == [[("ab", "b"), ("ab", "ac"), ("b", "ac")]]


def test_cluster_votes_checks_its_arguments():
  with pytest.raises(ValueError, match="group_size"):
    circa.cluster_votes(["a"] * 3, group_size=2, equivalent=lambda r, c: [])
  with pytest.raises(ValueError, match="equivalent returned"):
    circa.cluster_votes([_boxed("1"), _boxed("2")], group_size=2,
                        equivalent=lambda r, c: [])


def _np_self_certainty(logits, mask):
  """KL(U || softmax) the long way, in float64, then the masked row mean."""
  z = np.asarray(logits, np.float64)
  V = z.shape[-1]
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  kl = np.sum((1.0 / V) * (np.log(1.0 / V) - np.log(p)), axis=-1)
  counts = mask.sum(-1)
  return np.where(counts > 0, (kl * mask).sum(-1) / np.maximum(counts, 1), 0.0)


def test_self_certainty_hand_value():
  # V = 2, logits (0, ln 3): p = (1/4, 3/4); KL(U || p) = 0.5 ln(0.5/0.25) +
  # 0.5 ln(0.5/0.75) = 0.5 ln(4/3). Uniform logits give 0. Row mean over the
  # two valid tokens: 0.25 ln(4/3); the third (masked) token is ignored.
  logits = jnp.array([[[0.0, np.log(3.0)], [5.0, 5.0], [100.0, -100.0]]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(circa.self_certainty(logits, mask),
                             [0.25 * np.log(4 / 3)], rtol=1e-6)


def test_self_certainty_matches_numpy_and_chunks():
  rng = np.random.default_rng(0)
  B, T, V = 3, 8, 17
  logits = rng.normal(0, 3, size=(B, T, V)).astype(np.float32)
  mask = (np.arange(T)[None] < np.array([[8], [3], [0]])).astype(np.float32)
  want = _np_self_certainty(logits, mask)
  np.testing.assert_allclose(circa.self_certainty(logits, mask), want,
                             rtol=1e-5)
  assert want[2] == 0.0  # A row without response tokens.
  # Chunked as in the statistics pass: [B, 2, V] blocks mapped over T.
  blocks = jnp.asarray(logits).reshape(B, 4, 2, V).swapaxes(0, 1)
  tokens = jax.lax.map(circa.token_self_certainty, blocks)
  tokens = tokens.swapaxes(0, 1).reshape(B, T)
  np.testing.assert_allclose(
      circa.sequence_self_certainty(tokens, jnp.asarray(mask)), want,
      rtol=1e-5)
  grad = jax.grad(lambda z: jnp.sum(circa.self_certainty(z, mask)))(
      jnp.asarray(logits))
  assert not np.any(np.asarray(grad))  # A reward: no gradient.


def test_self_certainty_checks_shapes():
  with pytest.raises(ValueError, match="logits"):
    circa.token_self_certainty(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="mask"):
    circa.sequence_self_certainty(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
