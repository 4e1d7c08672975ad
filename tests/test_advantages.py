"""Tests for rlvr_jax.algorithms.advantages (METHODS.md 1.1, 6)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import advantages
from rlvr_jax.training import credit

pytestmark = pytest.mark.usefixtures("strict_rank")

EPS = 1e-6


def _run(fn, rewards, **kwargs):
  """fn(rewards, **kwargs) under jit: one compile instead of one per op."""
  return jax.jit(functools.partial(fn, **kwargs))(jnp.asarray(rewards))


def _np_grpo(rewards, group_size):
  """Independent loop implementation of METHODS.md 1.1 `grpo`."""
  out = np.zeros(len(rewards), np.float64)
  for start in range(0, len(rewards), group_size):
    group = np.asarray(rewards[start:start + group_size], np.float64)
    if len(group) == 1 or np.all(group == group[0]):
      continue
    out[start:start + group_size] = (group - group.mean()) / (
        group.std(ddof=1) + EPS
    )
  return out


def _np_rloo(rewards, group_size):
  out = np.zeros(len(rewards), np.float64)
  for start in range(0, len(rewards), group_size):
    group = np.asarray(rewards[start:start + group_size], np.float64)
    if len(group) == 1:
      continue
    for i in range(len(group)):
      out[start + i] = group[i] - np.delete(group, i).mean()
  return out


def test_grpo_hand_values():
  # Group 0: [0, 0, 0, 4]: mean 1, deviations [-1, -1, -1, 3], sum of squares
  #   12, ddof=1 variance 12 / 3 = 4, std 2 -> A = dev / (2 + 1e-6).
  # Group 1: [1, 1, 1, -3]: mean 0, same spread -> A = [1, 1, 1, -3] / 2.
  # Group 2: all equal -> 0.
  rewards = jnp.array([0, 0, 0, 4, 1, 1, 1, -3, 0.3, 0.3, 0.3, 0.3])
  got = _run(advantages.grpo, rewards, group_size=4)
  want = np.array([-1, -1, -1, 3, 1, 1, 1, -3, 0, 0, 0, 0]) / (2 + EPS)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got.dtype == jnp.float32


def test_grpo_constant_group_is_exactly_zero():
  # 0.1 has no exact float: the mean of three 0.1s can differ from 0.1 by an
  # ulp, which divided by (0 + 1e-6) would give ~1e-2 instead of 0.
  got = _run(advantages.grpo, jnp.full((3,), 0.1), group_size=3)
  np.testing.assert_array_equal(got, np.zeros(3))



@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "gdpo"])
def test_equal_weighted_rewards_give_exactly_zero(name):
  # Rewards as format_weight and the overlong penalty make them: a correct
  # boxed answer with format_weight 0.1 gives 1.1; a wrong boxed answer with
  # format_weight 0.9 and overlong -0.25 gives 0.9 - 0.25 = 0.65; 1.1 - 0.3 =
  # 0.8. In float32, 1.1 * 3 / 3 rounds to 1.1 - 1.19e-7, so an unguarded
  # dr_grpo or rloo returned about +-1e-7 for these groups of equal rewards.
  rewards = np.array([1.1] * 3 + [0.9 - 0.25] * 3 + [1.1 - 0.3] * 3,
                     np.float32)
  got = np.asarray(_run(advantages.get_estimator(name), rewards, group_size=3))
  np.testing.assert_array_equal(got, np.zeros(9))
  if name == "gdpo":
    return  # gdpo whitens over the batch: other groups shift with a signal.
  # One group with signal keeps its (nonzero) advantages, the others stay 0.
  rewards[:3] = [1.1, 0.1, 0.1]
  got = np.asarray(_run(advantages.get_estimator(name), rewards, group_size=3))
  np.testing.assert_array_equal(got[3:], np.zeros(6))
  assert np.all(got[:3] != 0)


def test_gdpo_per_channel_guard_on_equal_weighted_channel():
  # Channel 1 (format 0.9 - overlong 0.25 in every row) is constant in both
  # groups, so only channel 0 (outcome) contributes: a = [1, -1, 1, -1] *
  # 1/sqrt(2) / (1/sqrt(2) + 1e-6) after the per-group grpo of [1, 0] (mean
  # 0.5, ddof=1 std 1/sqrt(2)); whitening [a, -a, a, -a] over B = 4 (ddof=1
  # std of [1, -1, 1, -1] * c is c * 2/sqrt(3)) gives +-sqrt(3)/2 / (1 +
  # 1e-6 / c) ~ +-0.8660254.
  rewards = np.array([[1.0, 0.65], [0.0, 0.65], [1.0, 0.65], [0.0, 0.65]],
                     np.float32)
  got = np.asarray(_run(advantages.gdpo, rewards, group_size=2,
                        weights=[1.0, 5.0]))
  np.testing.assert_allclose(got, np.sqrt(3) / 2 * np.array([1, -1, 1, -1]),
                             rtol=1e-5)

def test_group_of_one_gives_zero():
  rewards = jnp.array([1.0, 5.0, -2.0])
  for name in ("grpo", "dr_grpo", "rloo"):
    got = _run(advantages.get_estimator(name), rewards, group_size=1)
    np.testing.assert_array_equal(got, np.zeros(3), err_msg=name)


def test_dr_grpo_hand_values():
  # [0, 0, 0, 4] - mean 1 = [-1, -1, -1, 3]; [2, 6] - 4 = [-2, 2].
  got = _run(advantages.dr_grpo, jnp.array([0, 0, 0, 4, 2, 6, 1, 1.]),
             group_size=2)
  np.testing.assert_allclose(got, [0, 0, -2, 2, -2, 2, 0, 0])
  got = _run(advantages.dr_grpo, jnp.array([0, 0, 0, 4.]), group_size=4)
  np.testing.assert_allclose(got, [-1, -1, -1, 3])


def test_rloo_hand_values():
  # [0, 0, 0, 4]: rows 0-2: 0 - (0 + 0 + 4) / 3 = -4/3; row 3: 4 - 0 = 4.
  # [1, 2, 3]: 1 - 2.5 = -1.5, 2 - 2 = 0, 3 - 1.5 = 1.5.
  got = _run(advantages.rloo, jnp.array([0, 0, 0, 4.]), group_size=4)
  np.testing.assert_allclose(got, [-4 / 3, -4 / 3, -4 / 3, 4], rtol=1e-6)
  got = _run(advantages.rloo, jnp.array([1, 2, 3.]), group_size=3)
  np.testing.assert_allclose(got, [-1.5, 0, 1.5], rtol=1e-6)


@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_estimators_match_numpy_on_random_rewards(group_size):
  rng = np.random.default_rng(group_size)
  # Binary rewards (as in RLVR) make all-equal groups common; add a few
  # continuous ones so the std is exercised too.
  rewards = rng.integers(0, 2, size=32).astype(np.float32)
  rewards[:group_size] = rng.normal(size=group_size)
  grouped = rewards.reshape(-1, group_size).astype(np.float64)
  np.testing.assert_allclose(
      _run(advantages.grpo, rewards, group_size=group_size),
      _np_grpo(rewards, group_size), rtol=1e-5, atol=1e-6,
  )
  np.testing.assert_allclose(
      _run(advantages.dr_grpo, rewards, group_size=group_size),
      (grouped - grouped.mean(1, keepdims=True)).reshape(-1),
      rtol=1e-5, atol=1e-6,
  )
  np.testing.assert_allclose(
      _run(advantages.rloo, rewards, group_size=group_size),
      _np_rloo(rewards, group_size), rtol=1e-5, atol=1e-6,
  )


def test_gdpo_hand_values():
  # G = 2, so a group of two different rewards normalizes to +-s with
  # s = (d/2) / (|d|/sqrt(2)) = 1/sqrt(2) (ignoring the 1e-6).
  # channel 0: [1, 0 | 1, 1] -> [ s, -s, 0,  0]
  # channel 1: [0, 2 | 3, 1] -> [-s,  s, s, -s]
  # sum:                        [ 0,  0, s, -s]; batch mean 0, ddof=1
  # variance (s^2 + s^2) / 3 = 1/3, std 1/sqrt(3) -> A = [0, 0, s*sqrt(3),
  # -s*sqrt(3)] = [0, 0, sqrt(1.5), -sqrt(1.5)].
  rewards = jnp.array([[1, 0], [0, 2], [1, 3], [1, 1.]])
  got = _run(advantages.gdpo, rewards, group_size=2)
  np.testing.assert_allclose(got, [0, 0, 1.5**0.5, -1.5**0.5], rtol=1e-5,
                             atol=1e-6)
  # Weights [2, 0] drop channel 1: sum = [2s, -2s, 0, 0], variance 8 s^2 / 3
  # = 4/3, std 2/sqrt(3) -> A = [sqrt(1.5), -sqrt(1.5), 0, 0].
  got = _run(advantages.gdpo, rewards, group_size=2, weights=[2.0, 0.0])
  np.testing.assert_allclose(got, [1.5**0.5, -1.5**0.5, 0, 0], rtol=1e-5,
                             atol=1e-6)


def test_gdpo_matches_numpy_on_random_rewards():
  rng = np.random.default_rng(0)
  rewards = rng.integers(0, 3, size=(24, 3)).astype(np.float32)
  weights = np.array([1.0, 0.5, 2.0], np.float32)
  summed = sum(
      w * _np_grpo(rewards[:, c], 4) for c, w in enumerate(weights)
  )
  want = (summed - summed.mean()) / (summed.std(ddof=1) + EPS)
  got = _run(advantages.gdpo, rewards, group_size=4, weights=weights)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gdpo_single_channel_is_whitened_grpo():
  rewards = jnp.array([0, 0, 0, 4, 1, 2, 3, 4.])
  a = _np_grpo(np.asarray(rewards), 4)
  want = (a - a.mean()) / (a.std(ddof=1) + EPS)
  np.testing.assert_allclose(_run(advantages.gdpo, rewards, group_size=4),
                             want, rtol=1e-5, atol=1e-6)


def test_estimators_under_jit_with_rows_sharded_over_8_devices():
  rng = np.random.default_rng(1)
  rewards = jnp.asarray(rng.integers(0, 2, size=(32, 2)).astype(np.float32))
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(
      rewards, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
          "data"))
  )
  for name in ("grpo", "dr_grpo", "rloo"):
    fn = jax.jit(lambda r, f=advantages.ESTIMATORS[name]: f(r, group_size=4))
    np.testing.assert_allclose(fn(sharded[:, 0]), fn(rewards[:, 0]),
                               rtol=1e-6, err_msg=name)
  gdpo = jax.jit(lambda r: advantages.gdpo(r, group_size=4))
  # The batch whitening is global: equal to the unsharded computation.
  np.testing.assert_allclose(gdpo(sharded), gdpo(rewards), rtol=1e-5,
                             atol=1e-6)


def test_broadcast_to_tokens():
  adv = jnp.array([2.0, -1.0])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]], jnp.float32)
  got = advantages.broadcast_to_tokens(adv, mask)
  np.testing.assert_array_equal(got, [[2, 2, 0], [-1, 0, 0]])
  with pytest.raises(ValueError, match="rows"):
    advantages.broadcast_to_tokens(adv[:1], mask)
  with pytest.raises(ValueError, match=r"\[B\]"):
    advantages.broadcast_to_tokens(mask, mask)


def test_input_errors():
  with pytest.raises(ValueError, match="group_size=4"):
    advantages.grpo(jnp.zeros(6), group_size=4)
  with pytest.raises(ValueError, match="group_size"):
    advantages.rloo(jnp.zeros(6), group_size=0)
  with pytest.raises(ValueError, match="gdpo"):
    advantages.grpo(jnp.zeros((4, 2)), group_size=2)
  with pytest.raises(ValueError, match="weights"):
    advantages.gdpo(jnp.zeros((4, 2)), group_size=2, weights=[1.0])


def test_registry():
  assert set(advantages.ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "gdpo"}
  assert hasattr(advantages.get_estimator("rloo"), "lower")  # jitted
  with pytest.raises(ValueError, match=r"advantage='ppo'.*dr_grpo.*grpo"):
    advantages.get_estimator("ppo")


def test_select_groups_takes_groups_with_signal_first():
  # 4 groups of 2 rows, T = 2. Group 0: all zero; group 1: a nonzero
  # advantage under the mask; group 2: nonzero only where masked out (no
  # signal); group 3: signal.
  adv = np.array([[0, 0], [0, 0], [0.5, 0.5], [-0.5, 0], [0, 3], [0, 3],
                  [-1, -1], [1, 1]], np.float32)
  mask = np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 0], [1, 0],
                   [1, 1], [1, 1]], np.float32)
  rows, valid, with_signal = credit.select_groups(adv, mask, group_size=2, num_groups=3)
  np.testing.assert_array_equal(rows, [2, 3, 6, 7, 0, 1])
  np.testing.assert_array_equal(valid, [True, True, True, True, False, False])
  assert with_signal == 2
  rows, valid, _ = credit.select_groups(adv, mask, group_size=2, num_groups=1)
  np.testing.assert_array_equal(rows, [2, 3])
  np.testing.assert_array_equal(valid, [True, True])
  with pytest.raises(ValueError, match="do not make 5 groups"):
    credit.select_groups(adv, mask, group_size=2, num_groups=5)
  # A method with a token loss of its own (DistIL's CE): every group with a
  # loss token has a signal, zero advantages or not; a group without one none.
  mask[2:4] = 0
  rows, valid, with_signal = credit.select_groups(adv, mask, group_size=2, num_groups=4,
                                                  token_loss=True)
  np.testing.assert_array_equal(rows, [0, 1, 4, 5, 6, 7, 2, 3])
  np.testing.assert_array_equal(valid, [True] * 6 + [False] * 2)
  assert with_signal == 3
