"""Tests for rlvr_jax.evaluation.passk (METHODS.md 5)."""

from fractions import Fraction
import itertools
import math

import numpy as np
import pytest

from rlvr_jax.evaluation import passk
from rlvr_jax.rewards.answers import normalize_answer


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
  """Fraction of all k-subsets of n samples (c correct) holding a correct one."""
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8])
def test_pass_at_k_matches_brute_force_over_all_subsets(n):
  cs = np.arange(n + 1)  # every c in [0, n], one problem each
  for k in range(1, n + 1):
    got = passk.pass_at_k(cs, num_samples=n, k=k)
    want = [_brute_pass_at_k(n, int(c), k) for c in cs]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_pass_at_k_hand_values():
  # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2.
  # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 7/10.
  # n=5, c=2, k=1: c/n = 2/5.
  np.testing.assert_allclose(passk.pass_at_k([1], num_samples=4, k=2), [0.5], atol=1e-15)
  np.testing.assert_allclose(passk.pass_at_k([2], num_samples=5, k=2), [0.7], atol=1e-15)
  np.testing.assert_allclose(passk.pass_at_k([2], num_samples=5, k=1), [0.4], atol=1e-15)


def test_pass_at_k_edge_cases():
  # c = 0 -> 0 for every k; c = n -> 1 for every k; k = n -> 1 iff c > 0.
  n = 6
  for k in range(1, n + 1):
    np.testing.assert_array_equal(passk.pass_at_k([0], num_samples=n, k=k), [0.0])
    np.testing.assert_array_equal(passk.pass_at_k([n], num_samples=n, k=k), [1.0])
  np.testing.assert_array_equal(passk.pass_at_k([0, 1, 3, 6], num_samples=n, k=n),
                                [0.0, 1.0, 1.0, 1.0])


def test_pass_at_k_rejects_bad_arguments():
  with pytest.raises(ValueError, match="k = 5 exceeds num_samples = 4"):
    passk.pass_at_k([1, 2], num_samples=4, k=5)
  with pytest.raises(ValueError, match="k = 3 exceeds num_samples = 2"):
    passk.pass_at_k([1, 2], num_samples=[4, 2], k=3)
  with pytest.raises(ValueError, match="k must be >= 1"):
    passk.pass_at_k([1], num_samples=4, k=0)
  with pytest.raises(ValueError, match="num_correct must lie in"):
    passk.pass_at_k([5], num_samples=4, k=1)
  with pytest.raises(ValueError, match="num_correct must lie in"):
    passk.pass_at_k([-1], num_samples=4, k=1)
  with pytest.raises(ValueError, match="num_correct must hold whole numbers"):
    passk.pass_at_k([1.5], num_samples=4, k=1)
  with pytest.raises(ValueError, match="num_samples .* and num_correct"):
    passk.pass_at_k([1, 2], num_samples=[4, 4, 4], k=1)
  with pytest.raises(ValueError, match=r"num_correct must be \[Q\]"):
    passk.pass_at_k([[1]], num_samples=4, k=1)


def test_pass_at_k_large_n_is_exact_in_product_form():
  # C(1000, 10) ~ 2.6e23 overflows no float here, but the ratio is checked
  # against exact rational arithmetic.
  n, k = 1000, 10
  cs = np.array([1, 17, 500, 990, 991])
  got = passk.pass_at_k(cs, num_samples=n, k=k)
  want = [float(1 - Fraction(math.comb(n - int(c), k), math.comb(n, k))) for c in cs]
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_pass_at_k_per_problem_num_samples():
  # Problem 0: n=4, c=1 -> 1/2 at k=2; problem 1: n=3, c=1 -> 1 - C(2,2)/C(3,2) = 2/3.
  np.testing.assert_allclose(passk.pass_at_k([1, 1], num_samples=[4, 3], k=2),
                             [0.5, 2 / 3], atol=1e-15)


@pytest.mark.parametrize("n, want", [(1, (1,)), (2, (1, 2)), (3, (1, 2, 3)),
                                     (8, (1, 2, 4, 8)), (12, (1, 2, 4, 8, 12))])
def test_power_of_two_ks(n, want):
  assert passk.power_of_two_ks(n) == want


def test_pass_at_ks_and_summarize():
  # n=4, c = [0, 2, 4]:
  #   pass@1 = c/n = [0, 1/2, 1]                    -> mean 1/2
  #   pass@2 = [0, 1 - C(2,2)/C(4,2) = 5/6, 1]      -> mean 11/18
  #   pass@4 = [0, 1, 1]                            -> mean 2/3
  #   avg@4 = mean [0, 1/2, 1] = 1/2; maj [0, 1, 1]  -> 2/3.
  per_k = passk.pass_at_ks([0, 2, 4], num_samples=4)
  assert list(per_k) == [1, 2, 4]
  np.testing.assert_allclose(per_k[2], [0, 5 / 6, 1], atol=1e-15)
  metrics = passk.summarize([0, 2, 4], num_samples=4, maj=np.array([0.0, 1.0, 1.0]))
  want = {"eval/pass@1": 0.5, "eval/pass@2": 11 / 18, "eval/pass@4": 2 / 3,
          "eval/avg@4": 0.5, "eval/maj@4": 2 / 3}
  assert metrics.keys() == want.keys()
  for key, value in want.items():
    assert metrics[key] == pytest.approx(value, abs=1e-15), key
  np.testing.assert_allclose(passk.avg_at_n([0, 2, 4], num_samples=4), [0, 0.5, 1])


def test_summarize_rejects_mismatched_maj():
  with pytest.raises(ValueError, match="maj"):
    passk.summarize([0, 2, 4], num_samples=4, maj=np.zeros([2]))


@pytest.mark.parametrize("answers, want", [
    (["5", "7", "5.0", None], 0),        # '5' and '5.0' normalize alike: 2 votes
    (["7", "5", "5", "7"], 0),           # tie 2-2: '7' appears first
    (["7", "5", "5"], 1),                # '5' has more votes although '7' is first
    ([None, None, None, "3"], 3),        # unextractable answers never win
    ([None, None], None),                # nothing to vote on
    (["$", " ", "4"], 2),                # '$' and ' ' normalize to '': no vote
    (["1,000", "1000", "10", "10", "10"], 2),  # 3 votes beat 2
])
def test_majority_vote(answers, want):
  assert passk.majority_vote(answers, normalize=normalize_answer) == want


def test_maj_at_n_hand_cases():
  answers = [
      ["5", "7", "5.0", None],   # vote '5' (index 0), correct -> 1
      ["7", "5", "5", "7"],      # tie -> '7' (index 0), wrong -> 0
      [None, None, None, None],  # no answer -> 0
      ["2", "3", "3", "2"],      # tie -> '2' (index 0), correct -> 1
  ]
  correct = np.array([
      [1, 0, 1, 0],
      [0, 1, 1, 0],
      [0, 0, 0, 0],
      [1, 0, 0, 1],
  ], bool)
  got = passk.maj_at_n(answers, correct, normalize=normalize_answer)
  np.testing.assert_array_equal(got, [1.0, 0.0, 0.0, 1.0])


def test_maj_at_n_uses_first_appearance_verdict():
  # Both answers normalize to '5'; the voted sample is index 0, judged wrong.
  got = passk.maj_at_n([["5", "5.0"]], np.array([[0, 1]]), normalize=normalize_answer)
  np.testing.assert_array_equal(got, [0.0])


def test_maj_at_n_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r"correct must be \[Q, E\]"):
    passk.maj_at_n([["1"]], np.zeros([2, 1]), normalize=normalize_answer)
  with pytest.raises(ValueError, match=r"answers\[0\] has 2 answers"):
    passk.maj_at_n([["1", "2"]], np.zeros([1, 3]), normalize=normalize_answer)
