"""Tests for rlvr_jax.algorithms.pow3r (METHODS.md 6.3)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import pow3r

pytestmark = pytest.mark.usefixtures("strict_rank")

# One group, G = 4, M = 5; categories [0, 0, 0, 1, 1], weights [1, 1, 2, 3, 1].
#   criterion       verdicts    p = (passes + .5) / 5     s = sqrt(p (1 - p))
#   0 saturated     1 1 1 1     0.9                       0.3
#   1 dead          0 0 0 0     0.1                       0.3
#   2 mixed         1 1 0 0     0.5                       0.5
#   3 mixed         1 0 1 0     0.5                       0.5
#   4 dead          0 0 0 0     0.1                       0.3
_V = np.array([[1, 0, 1, 1, 0],
               [1, 0, 1, 0, 0],
               [1, 0, 0, 1, 0],
               [1, 0, 0, 0, 0]], np.float32)
_W = np.array([1.0, 1.0, 2.0, 3.0, 1.0], np.float32)
_CAT = np.array([0, 0, 0, 1, 1], np.int32)


def test_weights_hand_values_default_flags():
  # cat 0: mean s = 1.1 / 3, alpha = [9/11, 9/11, 15/11]; w alpha =
  #   [9/11, 9/11, 30/11], sum 48/11, total 4, factor 11/12 ->
  #   w~ = [3/4, 3/4, 5/2].
  # cat 1: mean s = 0.4, alpha = [1.25, 0.75]; w alpha = [3.75, 0.75], sum
  #   4.5, total 4, factor 8/9 -> w~ = [10/3, 2/3].
  got = pow3r.pow3r_weights(_V, _W, group_size=4, categories=_CAT)
  np.testing.assert_allclose(got, [[0.75, 0.75, 2.5, 10 / 3, 2 / 3]],
                             rtol=1e-6)


def test_floor_and_ceiling_and_rewards_hand_values():
  # alpha_min = 0.9, alpha_max = 1.2 bind:
  # cat 0: alpha = [0.9 (floor), 0.9 (floor), 1.2 (ceiling)]; w alpha =
  #   [0.9, 0.9, 2.4], sum 4.2, total 4 -> w~ = [6/7, 6/7, 16/7].
  # cat 1: alpha = [1.2 (ceiling), 0.9 (floor)]; w alpha = [3.6, 0.9], sum
  #   4.5 -> w~ = [3.2, 0.8].
  # R_i = sum_j w~_j v_ij / 8:
  #   row 0: (6/7 + 16/7 + 3.2) / 8 = 0.792857
  #   row 1: (6/7 + 16/7) / 8 = 0.392857
  #   row 2: (6/7 + 3.2) / 8 = 0.507143
  #   row 3: (6/7) / 8 = 0.107143
  # Static: (1 + 2 + 3, 1 + 2, 1 + 3, 1) / 8.
  fn = functools.partial(pow3r.pow3r_weights, group_size=4, categories=_CAT,
                         alpha_min=0.9, alpha_max=1.2)
  np.testing.assert_allclose(
      jax.jit(fn)(_V, _W), [[6 / 7, 6 / 7, 16 / 7, 3.2, 0.8]], rtol=1e-6)
  got = pow3r.pow3r_rewards(_V, _W, group_size=4, categories=_CAT,
                            alpha_min=0.9, alpha_max=1.2)
  np.testing.assert_allclose(
      got, [(22 / 7 + 3.2) / 8, 22 / 7 / 8, (6 / 7 + 3.2) / 8, 6 / 7 / 8],
      rtol=1e-6)
  static = pow3r.weighted_rewards(_V, _W, group_size=4)
  np.testing.assert_allclose(static, [6 / 8, 3 / 8, 4 / 8, 1 / 8], rtol=1e-6)


def _np_pow3r(v, w, cat, valid, G, a, b, lo, hi):
  """Loop-by-loop NumPy version of METHODS.md 6.3: weights [N, M], R [B]."""
  B, M = v.shape
  N = B // G
  tilde = np.zeros((N, M))
  rewards = np.zeros(B)
  for n in range(N):
    group = v[n * G:(n + 1) * G].astype(np.float64)
    s = np.zeros(M)
    for j in np.flatnonzero(valid[n]):
      p = (group[:, j].sum() + a) / (G + a + b)
      s[j] = np.sqrt(p * (1 - p))
    for c in set(cat[n][valid[n]].tolist()):
      members = [j for j in range(M) if valid[n, j] and cat[n, j] == c]
      alpha = {j: min(max(s[j] / np.mean(s[members]), lo), hi)
               for j in members}
      total = sum(w[n, j] for j in members)
      scaled = sum(w[n, j] * alpha[j] for j in members)
      for j in members:
        tilde[n, j] = w[n, j] * alpha[j] * total / scaled if scaled else 0.0
    for i in range(G):
      rewards[n * G + i] = (tilde[n] * np.where(valid[n], group[i], 0)).sum(
      ) / tilde[n].sum()
  return tilde, rewards


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_on_random_inputs(seed):
  rng = np.random.default_rng(seed)
  N, G, M = 3, 6, 7
  v = rng.choice([0.0, 0.5, 1.0], size=(N * G, M)).astype(np.float32)
  v[:G, 0] = 1.0  # A saturated criterion.
  v[G:2 * G, 1] = 0.0  # A dead one.
  w = rng.uniform(0.1, 3.0, size=(N, M)).astype(np.float32)
  cat = rng.integers(0, 3, size=(N, M)).astype(np.int32)
  valid = np.ones((N, M), bool)
  valid[2, 5:] = False  # The third prompt has only 5 criteria.
  v[2 * G:, 5:] = 7.0  # Padding garbage must not matter.
  flags = dict(a=0.5, b=0.5, alpha_min=0.1, alpha_max=3.0)
  want_w, want_r = _np_pow3r(v, w, cat, valid, G, 0.5, 0.5, 0.1, 3.0)
  got_w = pow3r.pow3r_weights(v, w, group_size=G, categories=cat,
                              criterion_mask=valid, **flags)
  got_r = pow3r.pow3r_rewards(v, w, group_size=G, categories=cat,
                              criterion_mask=valid, **flags)
  np.testing.assert_allclose(got_w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_r, want_r, rtol=1e-5, atol=1e-6)
  # Category totals are preserved.
  for n in range(N):
    for c in range(3):
      members = valid[n] & (cat[n] == c)
      np.testing.assert_allclose(np.asarray(got_w)[n][members].sum(),
                                 w[n][members].sum(), rtol=1e-5)


def test_all_weights_zero_gives_zero_reward():
  v = np.ones((2, 3), np.float32)
  np.testing.assert_array_equal(
      pow3r.pow3r_rewards(v, np.zeros(3), group_size=2), [0.0, 0.0])


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="alpha_max"):
    pow3r.pow3r_weights(_V, _W, group_size=4, alpha_min=2.0, alpha_max=1.0)
  with pytest.raises(ValueError, match="a must be > 0"):
    pow3r.pow3r_weights(_V, _W, group_size=4, a=0.0)
  with pytest.raises(ValueError, match="group_size"):
    pow3r.pow3r_weights(_V, _W, group_size=3)
  with pytest.raises(ValueError, match="categories"):
    pow3r.pow3r_weights(_V, _W, group_size=4, categories=np.zeros(4, int))
  with pytest.raises(ValueError, match="verdicts"):
    pow3r.weighted_rewards(jnp.ones(4), _W, group_size=4)
