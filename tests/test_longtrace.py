"""Tests for rlvr_jax.algorithms.longtrace (METHODS.md 6.4)."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import longtrace

pytestmark = pytest.mark.usefixtures("strict_rank")


def test_normalize_text():
  assert longtrace.normalize_text("  The U.S.\n  had 3,000 (ships)!") == (
      "the us had 3000 ships")


def test_entity_fraction_hand_values():
  entities = ["Paris", "3,000", "Marie Curie", "!!"]  # "!!" is dropped.
  # "paris" and "3000" are found, "marie curie" is not: 2 / 3.
  text = "First, PARIS; then 3000 people. Marie went home."
  assert longtrace.entity_fraction(text, entities) == pytest.approx(2 / 3)
  assert longtrace.entity_fraction(text, ["!!"]) == 0.0
  assert longtrace.entity_fraction(text, []) == 0.0
  np.testing.assert_allclose(
      longtrace.rubric_fractions([text, None], [entities, ["paris"]]),
      [2 / 3, 0.0], rtol=1e-6)


def test_gated_rewards_hand_values():
  # Group 1 (G = 4): r_rub = [0.5, 0.25, 1.0, 0.0], max 1.0 (row 2, wrong),
  # eta = 0.3:
  #   row 0 correct: 0.7 + 0.3 * 0.5 / 1 = 0.85
  #   row 1 correct: 0.7 + 0.3 * 0.25 = 0.775
  #   row 2 wrong:   0 (however many entities it names)
  #   row 3 correct: 0.7 + 0 = 0.7
  # Group 2: r_rub = [0.2, 0.4, 0, 0], max 0.4:
  #   row 4 correct: 0.7 + 0.3 * 0.5 = 0.85; row 5 correct: 1.0;
  #   rows 6, 7 wrong: 0.
  # Group 3: r_rub all 0 (max 0, no division): correct rows get 0.7.
  correct = jnp.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1], jnp.float32)
  rubric = jnp.array([0.5, 0.25, 1.0, 0.0, 0.2, 0.4, 0, 0, 0, 0, 0, 0],
                     jnp.float32)
  got = longtrace.gated_rewards(correct, rubric, group_size=4, eta=0.3)
  np.testing.assert_allclose(
      got, [0.85, 0.775, 0.0, 0.7, 0.85, 1.0, 0.0, 0.0, 0.7, 0.0, 0.7, 0.7],
      rtol=1e-6)
  wrong = np.asarray(correct) == 0
  assert np.all(np.asarray(got)[wrong] == 0.0)  # Exactly 0.


def test_gated_rewards_match_numpy():
  rng = np.random.default_rng(0)
  G = 5
  correct = rng.integers(0, 2, size=4 * G).astype(np.float32)
  rubric = rng.choice([0.0, 0.25, 0.5, 1.0], size=4 * G).astype(np.float32)
  rubric[:G] = 0.0
  want = np.zeros(4 * G)
  for n in range(4):
    r = rubric[n * G:(n + 1) * G].astype(np.float64)
    top = r.max()
    tilde = r / top if top > 0 else r
    want[n * G:(n + 1) * G] = np.where(
        correct[n * G:(n + 1) * G] == 1, 0.6 + 0.4 * tilde, 0.0)
  got = longtrace.gated_rewards(jnp.asarray(correct), jnp.asarray(rubric),
                                group_size=G, eta=0.4)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_arguments_name_themselves():
  x = jnp.zeros(4)
  with pytest.raises(ValueError, match="eta"):
    longtrace.gated_rewards(x, x, group_size=2, eta=1.5)
  with pytest.raises(ValueError, match="group_size"):
    longtrace.gated_rewards(x, x, group_size=3)
  with pytest.raises(ValueError, match="rubric"):
    longtrace.gated_rewards(x, jnp.zeros(3), group_size=2)
  with pytest.raises(ValueError, match="entities"):
    longtrace.rubric_fractions(["a"], [])
