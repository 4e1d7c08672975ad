"""Tests for rlvr_jax.algorithms.kl_cov (METHODS.md 6.6)."""

import decimal
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlvr_jax.algorithms import kl_cov
from rlvr_jax.algorithms import losses

pytestmark = pytest.mark.usefixtures("strict_rank")

LN = math.log


def _np_selection(logp, adv, mask, ratio):
  """NumPy top-k: stable sort of -cov over valid tokens, exact decimal ceil."""
  logp, adv = np.asarray(logp, np.float64), np.asarray(adv, np.float64)
  valid = np.asarray(mask) > 0
  n = int(valid.sum())
  count = math.ceil(decimal.Decimal(str(ratio)) * n)
  flat = np.flatnonzero(valid.reshape(-1))
  cov = ((logp.reshape(-1)[flat] - logp[valid].mean()) *
         (adv.reshape(-1)[flat] - adv[valid].mean())) if n else np.zeros(0)
  order = np.argsort(-cov, kind="stable")  # Ties: lower flat index first.
  selected = np.zeros(logp.size, bool)
  selected[flat[order[:count]]] = True
  return selected.reshape(logp.shape)


def _np_loss_and_grad(logp, old, adv, sel, *, beta, eps_low, eps_high):
  """Per-token loss and d l / d logp, written from METHODS.md 1.2 and 6.6."""
  rho = np.exp(np.clip(logp - old, -20, 20))
  unclipped = rho * adv
  clipped = np.clip(rho, 1 - eps_low, 1 + eps_high) * adv
  ppo = -np.minimum(unclipped, clipped)
  ppo_grad = np.where(unclipped <= clipped, -adv * rho, 0.0)
  pen = -adv * rho + beta * np.abs(logp - old)
  pen_grad = -adv * rho + beta * np.sign(logp - old)
  return np.where(sel, pen, ppo), np.where(sel, pen_grad, ppo_grad)


# Hand case: B = 2, T = 3, token (1, 2) masked (huge garbage values).
# Valid logp 0, -1, -2, -1, -1: mean -1. Valid A 1, 1, 1, -1, -1: mean 0.2.
# cov = (logp + 1)(A - 0.2): (0,0) 1*0.8 = 0.8, (0,1) 0, (0,2) -0.8,
# (1,0) 0, (1,1) 0. n_valid = 5.
_LOGP = jnp.array([[0.0, -1.0, -2.0], [-1.0, -1.0, 9.0]])
_ADV = jnp.array([[1.0, 1.0, 1.0], [-1.0, -1.0, 100.0]])
_MASK = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)


@pytest.mark.parametrize("ratio,expected", [
    # ceil(0.4 * 5) = 2: 0.8 at (0,0), then the first of the 0-ties (0,1).
    (0.4, [[1, 1, 0], [0, 0, 0]]),
    # ceil(0.5 * 5) = 3: the next 0-tie by flat index is (1,0) (index 3).
    (0.5, [[1, 1, 0], [1, 0, 0]]),
    # ceil(1e-4 * 5) = 1: any positive ratio selects at least one token.
    (1e-4, [[1, 0, 0], [0, 0, 0]]),
    # ratio 0 selects nothing.
    (0.0, [[0, 0, 0], [0, 0, 0]]),
    # ratio 1 selects every valid token and never the masked one.
    (1.0, [[1, 1, 1], [1, 1, 0]]),
])
def test_selection_hand_values(ratio, expected):
  got = jax.jit(functools.partial(kl_cov.kl_cov_selection, ratio=ratio))(
      _LOGP, _ADV, _MASK)
  np.testing.assert_array_equal(got, np.array(expected, bool))


def test_selection_of_a_fully_masked_batch_is_empty():
  got = kl_cov.kl_cov_selection(_LOGP, _ADV, jnp.zeros((2, 3)), ratio=0.5)
  assert not np.any(got)


def test_count_rounding_is_exact_for_exact_products():
  # 0.1 * 30 = 3 exactly; float32 gives 3.0000001, whose plain ceil is 4.
  assert kl_cov.max_selected(0.1, 30) == 3
  rng = np.random.default_rng(0)
  got = kl_cov.kl_cov_selection(
      jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
      jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
      jnp.ones((5, 6)), ratio=0.1)
  assert int(got.sum()) == 3


@pytest.mark.parametrize("seed,ratio", [(0, 0.05), (1, 0.3), (2, 0.013)])
def test_selection_matches_numpy_top_k(seed, ratio):
  rng = np.random.default_rng(seed)
  B, T = 6, 11
  logp = rng.normal(size=(B, T)).astype(np.float32)
  # Advantages constant per row (as sequence-level estimators give) and
  # repeated across rows, so cov has many exact ties.
  adv = np.repeat(rng.choice([-1.0, 0.5, 1.0], size=(B, 1)), T, axis=1)
  adv = adv.astype(np.float32)
  logp[:, ::3] = -1.0  # Ties in logp too.
  mask = (rng.uniform(size=(B, T)) < 0.7).astype(np.float32)
  got = kl_cov.kl_cov_selection(jnp.asarray(logp), jnp.asarray(adv),
                                jnp.asarray(mask), ratio=ratio)
  np.testing.assert_array_equal(got, _np_selection(logp, adv, mask, ratio))
  assert not np.any(np.asarray(got) & (mask == 0))


def test_loss_and_gradient_hand_values():
  # old_logp = 0, so rho = exp(logp); beta = 0.5, eps 0.2.
  #   token  rho  A   S    l                                  d l / d logp
  #   0      1.5  2   yes  -2*1.5 + 0.5*ln 1.5 = -2.797267     -3 + 0.5 = -2.5
  #   1      1.5  2   no   -min(3, 1.2*2) = -2.4 (clipped)     0
  #   2      0.5  -1  yes  0.5 + 0.5*ln 2 = 0.846574           0.5 - 0.5 = 0
  #   3      0.5  -1  no   -min(-0.5, -0.8) = 0.8 (clipped)    0
  logp = jnp.array([[LN(1.5), LN(1.5), LN(0.5), LN(0.5)]])
  adv = jnp.array([[2.0, 2.0, -1.0, -1.0]])
  sel = jnp.array([[True, False, True, False]])
  mask = jnp.ones((1, 4))

  def total(x):
    l, _ = kl_cov.kl_cov_loss(x, jnp.zeros((1, 4)), adv, mask, sel, beta=0.5)
    return jnp.sum(l), l

  (_, loss), grad = jax.value_and_grad(total, has_aux=True)(logp)
  np.testing.assert_allclose(
      loss, [[-3 + 0.5 * LN(1.5), -2.4, 0.5 + 0.5 * LN(2.0), 0.8]],
      rtol=1e-6)
  np.testing.assert_allclose(grad, [[-2.5, 0.0, 0.0, 0.0]], atol=1e-6)
  _, diag = kl_cov.kl_cov_loss(logp, jnp.zeros((1, 4)), adv, mask, sel)
  # Token 0 exceeds 1 + eps_high but is in S: no clip is counted there.
  np.testing.assert_array_equal(diag["clipped_high"], [[0, 1, 0, 0]])
  np.testing.assert_array_equal(diag["clipped_low"], [[0, 0, 0, 1]])
  np.testing.assert_array_equal(diag["kl_cov_selected"], [[1, 0, 1, 0]])


def test_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(3)
  B, T = 4, 9
  old = rng.normal(-1.0, 0.5, size=(B, T)).astype(np.float32)
  logp = old + rng.choice([-1, 1], size=(B, T)) * rng.uniform(
      0.05, 0.5, size=(B, T))
  logp = logp.astype(np.float32)
  adv = rng.normal(size=(B, T)).astype(np.float32)
  sel = rng.uniform(size=(B, T)) < 0.3
  fn = functools.partial(kl_cov.kl_cov_loss, beta=0.7, eps_low=0.2,
                         eps_high=0.28)
  loss, _ = fn(logp, old, adv, jnp.ones((B, T)), sel)
  grad = jax.grad(lambda x: jnp.sum(fn(x, old, adv, jnp.ones((B, T)),
                                       sel)[0]))(jnp.asarray(logp))
  want, want_grad = _np_loss_and_grad(
      logp.astype(np.float64), old.astype(np.float64), adv.astype(np.float64),
      sel, beta=0.7, eps_low=0.2, eps_high=0.28)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


def _batch(B=16, T=12, seed=4):
  rng = np.random.default_rng(seed)
  old = rng.normal(-1.5, 1.0, size=(B, T)).astype(np.float32)
  logp = (old + rng.normal(0, 0.3, size=(B, T))).astype(np.float32)
  adv = np.repeat(rng.normal(size=(B, 1)), T, axis=1).astype(np.float32)
  mask = (np.arange(T)[None] < rng.integers(1, T + 1, size=(B, 1)))
  return logp, old, adv, mask.astype(np.float32)


def _minibatch_loss(logp, old, adv, mask, sel, micro_batches):
  """token_mean loss of a mini-batch summed over micro-batch shares."""
  den = losses.aggregation_denominator(mask, loss_agg="token_mean")

  def share(lp, o, a, m, s):
    l, _ = kl_cov.kl_cov_loss(lp, o, a, m, s, beta=1.0)
    return losses.token_mean(l, m)[0] / den

  total, grads = 0.0, []
  for part in zip(*(np.split(np.asarray(x), micro_batches)
                    for x in (logp, old, adv, mask, sel))):
    value, grad = jax.value_and_grad(share)(*map(jnp.asarray, part))
    total += value
    grads.append(grad)
  return total, np.concatenate(grads)


def test_one_and_four_micro_batches_select_and_lose_the_same():
  logp, old, adv, mask = _batch()
  # One selection for the mini-batch, from the old log-probs.
  sel = np.asarray(kl_cov.kl_cov_selection(old, adv, mask, ratio=0.1))
  assert sel.sum() == math.ceil(0.1 * mask.sum() - 1e-9)
  np.testing.assert_array_equal(sel, _np_selection(old, adv, mask, 0.1))
  one, grad_one = _minibatch_loss(logp, old, adv, mask, sel, 1)
  four, grad_four = _minibatch_loss(logp, old, adv, mask, sel, 4)
  np.testing.assert_allclose(four, one, rtol=1e-6)
  np.testing.assert_allclose(grad_four, grad_one, rtol=1e-6, atol=1e-8)


def test_eight_devices_select_and_lose_the_same():
  logp, old, adv, mask = _batch()
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rows = NamedSharding(mesh, PartitionSpec("data", None))

  def step(lp, o, a, m):
    sel = kl_cov.kl_cov_selection(o, a, m, ratio=0.1)

    def loss(x):
      l, _ = kl_cov.kl_cov_loss(x, o, a, m, sel, beta=1.0)
      num, den = losses.token_mean(l, m)
      return num / den

    return sel, *jax.value_and_grad(loss)(lp)

  args = [jnp.asarray(x) for x in (logp, old, adv, mask)]
  sel_1, loss_1, grad_1 = jax.jit(step)(*args)
  sharded = [jax.device_put(x, rows) for x in args]
  sel_8, loss_8, grad_8 = jax.jit(step)(*sharded)
  assert len(sharded[0].sharding.device_set) == 8
  np.testing.assert_array_equal(sel_8, sel_1)
  np.testing.assert_array_equal(sel_1, _np_selection(old, adv, mask, 0.1))
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6)
  np.testing.assert_allclose(grad_8, grad_1, rtol=1e-6, atol=1e-8)


def test_bad_arguments_name_themselves():
  with pytest.raises(ValueError, match="ratio"):
    kl_cov.kl_cov_selection(_LOGP, _ADV, _MASK, ratio=1.5)
  with pytest.raises(ValueError, match="beta"):
    kl_cov.kl_cov_loss(_LOGP, _LOGP, _ADV, _MASK, _MASK > 0, beta=-1.0)
  with pytest.raises(ValueError, match="selection"):
    kl_cov.kl_cov_loss(_LOGP, _LOGP, _ADV, _MASK, jnp.ones((2, 2), bool))
