"""Tests for rlvr_jax.algorithms.losses (METHODS.md 1.2-1.4)."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import advantages as advantages_lib
from rlvr_jax.algorithms import losses
from rlvr_jax.training import metrics as metrics_lib

pytestmark = pytest.mark.usefixtures("strict_rank")

LN = math.log
AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _masked_sum_of(fn, mask):
  """x -> sum over valid tokens of fn(x), for gradients of per-token losses."""
  return lambda x: jnp.sum(jnp.where(mask > 0, fn(x), 0.0))


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------

# Two rows of three valid tokens (a b c / d e f) and one masked garbage token
# each; old_logp = 0, so logp = log rho. eps_low = 0.2, eps_high = 0.25, dual
# clip c = 3; the last column applies min(l, 3|A|) where A < 0.
#   token  rho   A    -min(rho*A, clip(rho)*A)            with dual clip
#   a      1.5   2    -min(3, 1.25*2) = -2.5 (high clip)  -2.5
#   b      0.5   2    -min(1, 0.8*2) = -1.0               -1.0
#   c      0.5  -1    -min(-0.5, -0.8) = 0.8 (low clip)   0.8
#   d      1.5  -1    -min(-1.5, -1.25) = 1.5             1.5
#   e      4.0  -1    -min(-4, -1.25) = 4                 min(4, 3) = 3 (dual)
#   f      1.0   0    0                                   0
# d(l)/d(logp) = -rho*A where the unclipped term is the minimum, else 0:
#   a 0, b -1, c 0, d 1.5, e 4 without the dual clip and 0 with it, f 0.
_PPO_LOGP = jnp.array([[LN(1.5), LN(0.5), LN(0.5), 10.0],
                       [LN(1.5), LN(4.0), 0.0, -10.0]])
_PPO_ADV = jnp.array([[2.0, 2.0, -1.0, 1e3], [-1.0, -1.0, 0.0, -1e3]])
_PPO_MASK = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
_PPO_OLD = jnp.zeros((2, 4))


def test_token_ratio_clips_the_log_ratio_at_20():
  got = losses.token_ratio(jnp.array([[30.0, -30.0, LN(2.0)]]),
                           jnp.zeros((1, 3)))
  np.testing.assert_allclose(got, [[math.exp(20), math.exp(-20), 2.0]],
                             rtol=1e-6)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_ppo_clip_hand_values(dual_clip):
  loss, diag = jax.jit(functools.partial(
      losses.ppo_clip, eps_low=0.2, eps_high=0.25, dual_clip=dual_clip))(
          _PPO_LOGP, _PPO_OLD, _PPO_ADV, _PPO_MASK)
  e = 4.0 if dual_clip is None else 3.0
  np.testing.assert_allclose(
      jnp.where(_PPO_MASK > 0, loss, 0.0),
      [[-2.5, -1.0, 0.8, 0], [1.5, e, 0, 0]], rtol=1e-6)
  np.testing.assert_array_equal(diag["clipped_high"][:, :3],
                                [[1, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(diag["clipped_low"][:, :3],
                                [[0, 0, 1], [0, 0, 0]])
  np.testing.assert_allclose(diag["ratio"][:, :3],
                             [[1.5, 0.5, 0.5], [1.5, 4.0, 1.0]], rtol=1e-6)
  if dual_clip is None:
    assert "clipped_dual" not in diag
  else:
    np.testing.assert_array_equal(diag["clipped_dual"][:, :3],
                                  [[0, 0, 0], [0, 1, 0]])
  grad = jax.jit(jax.grad(_masked_sum_of(
      lambda lp: losses.ppo_clip(lp, _PPO_OLD, _PPO_ADV, _PPO_MASK,
                                 eps_low=0.2, eps_high=0.25,
                                 dual_clip=dual_clip)[0],
      _PPO_MASK)))(_PPO_LOGP)
  grad_e = 4.0 if dual_clip is None else 0.0
  np.testing.assert_allclose(grad, [[0, -1, 0, 0], [1.5, grad_e, 0, 0]],
                             rtol=1e-6, atol=1e-7)


# GSPO: three rows, old_logp = 0, eps_low = 0.2, eps_high = 0.25.
#   row 0: m = [1, 1, 0], log-ratios ln1.5 + [0.1, -0.1], garbage 7 masked:
#          s = exp(ln 1.5) = 1.5 > 1.25, A = 2 -> l = -1.25*2 = -2.5 (clipped)
#   row 1: m = [1, 1, 1], ln0.5 + [0.3, -0.1, -0.2]: s = 0.5 < 0.8, A = -1 ->
#          l = -min(-0.5, -0.8) = 0.8 (clipped)
#   row 2: m = [1, 1, 1], ln1.1 + [0.5, -0.5, 0]: s = 1.1, A = [1, -1, 3] ->
#          l = [-1.1, 1.1, -3.3] (unclipped)
# Gradient of the valid-token sum: rows 0, 1 clipped -> 0. Row 2, gspo:
#   d/dlogp_k sum_t(-s*A_t) = -s * sum_t A_t / 3 = -1.1 * 3 / 3 = -1.1 on each
#   token; gspo_token: -s*A_k = [-1.1, 1.1, -3.3].
_GSPO_LOGP = jnp.array([[LN(1.5) + 0.1, LN(1.5) - 0.1, 7.0],
                        [LN(0.5) + 0.3, LN(0.5) - 0.1, LN(0.5) - 0.2],
                        [LN(1.1) + 0.5, LN(1.1) - 0.5, LN(1.1)]])
_GSPO_ADV = jnp.array([[2.0, 2.0, 5.0], [-1.0, -1.0, -1.0], [1.0, -1.0, 3.0]])
_GSPO_MASK = jnp.array([[1, 1, 0], [1, 1, 1], [1, 1, 1]], jnp.float32)
_GSPO_LOSS = [[-2.5, -2.5, 0], [0.8, 0.8, 0.8], [-1.1, 1.1, -3.3]]


@pytest.mark.parametrize("name,row2_grad", [
    ("gspo", [-1.1, -1.1, -1.1]),
    ("gspo_token", [-1.1, 1.1, -3.3]),
])
def test_gspo_hand_values(name, row2_grad):
  fn = functools.partial(losses.POLICY_LOSSES[name],
                         old_logp=jnp.zeros((3, 3)), advantages=_GSPO_ADV,
                         mask=_GSPO_MASK, eps_low=0.2, eps_high=0.25)
  loss, diag = jax.jit(fn)(_GSPO_LOGP)
  np.testing.assert_allclose(jnp.where(_GSPO_MASK > 0, loss, 0.0), _GSPO_LOSS,
                             rtol=1e-5)
  np.testing.assert_allclose(diag["ratio"][1:], [[0.5] * 3, [1.1] * 3],
                             rtol=1e-5)
  np.testing.assert_array_equal(diag["clipped_high"],
                                [[1, 1, 1], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(diag["clipped_low"],
                                [[0, 0, 0], [1, 1, 1], [0, 0, 0]])
  grad = jax.jit(jax.grad(_masked_sum_of(lambda lp: fn(lp)[0], _GSPO_MASK)))(
      _GSPO_LOGP)
  np.testing.assert_allclose(grad, [[0, 0, 0], [0, 0, 0], row2_grad],
                             rtol=1e-5, atol=1e-6)


def test_gspo_token_equals_gspo_for_row_constant_advantages():
  rng = np.random.default_rng(3)
  logp = jnp.asarray(rng.normal(size=(6, 5)) * 0.3, jnp.float32)
  old = jnp.asarray(rng.normal(size=(6, 5)) * 0.3, jnp.float32)
  mask = jnp.asarray(rng.integers(0, 2, size=(6, 5)), jnp.float32)
  adv = advantages_lib.broadcast_to_tokens(
      jnp.asarray(rng.normal(size=6), jnp.float32), mask)
  fns = {name: _masked_sum_of(
      lambda lp, f=losses.POLICY_LOSSES[name]: f(
          lp, old, adv, mask, eps_low=0.2, eps_high=0.28)[0], mask)
         for name in ("gspo", "gspo_token")}
  (value, grad), (want_value, want_grad) = (
      jax.jit(jax.value_and_grad(fns[name]))(logp)
      for name in ("gspo_token", "gspo"))
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


# Aggregations: l = [[1, 2, 3], [4, 5, 6], [7, 8, 9]] with NaN where m = 0,
# m = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]:
#   token_mean:              (1 + 2 + 4, 3)            = (7, 3)
#   seq_mean_token_mean:     (3/2 + 4/1 + 0, 2 rows)   = (5.5, 2)
#   seq_mean_token_sum_norm: (7, B * T_max = 3 * 4)    = (7, 12)
@pytest.mark.parametrize("loss_agg,want", [
    ("token_mean", (7.0, 3.0)),
    ("seq_mean_token_mean", (5.5, 2.0)),
    ("seq_mean_token_sum_norm", (7.0, 12.0)),
])
def test_aggregation_hand_values(loss_agg, want):
  mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], jnp.float32)
  loss = jnp.where(mask > 0, jnp.arange(1.0, 10.0).reshape(3, 3), jnp.nan)
  got = losses.AGGREGATIONS[loss_agg](loss, mask, max_response_len=4)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(
      losses.aggregation_denominator(mask, loss_agg=loss_agg, max_response_len=4),
      want[1])


def test_token_mean_gradient_ignores_masked_tokens():
  mask = jnp.array([[1, 0, 1]], jnp.float32)
  # d/dl of (l0 + l2): [1, 0, 1], whatever the masked value.
  grad = jax.grad(lambda l: losses.token_mean(l, mask)[0])(
      jnp.array([[2.0, 1e30, -3.0]]))
  np.testing.assert_array_equal(grad, [[1, 0, 1]])


# KL with logp = 0: delta = logp_ref - logp = logp_ref.
#   delta = ln 2:  k1 = -ln 2, k2 = (ln 2)^2 / 2, k3 = 2 - ln 2 - 1 = 1 - ln 2
#   delta = -ln 2: k1 = ln 2,  k2 = (ln 2)^2 / 2, k3 = 1/2 + ln 2 - 1
#   delta = 0:     all 0
def test_kl_hand_values():
  logp = jnp.zeros((1, 3))
  ref = jnp.array([[LN(2), -LN(2), 0.0]])
  l2 = LN(2)
  np.testing.assert_allclose(losses.kl_k1(logp, ref), [[-l2, l2, 0]],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.kl_k2(logp, ref),
                             [[l2**2 / 2, l2**2 / 2, 0]], rtol=1e-6)
  k3 = [[1 - l2, l2 - 0.5, 0]]
  np.testing.assert_allclose(losses.kl_k3(logp, ref), k3, rtol=1e-6)
  np.testing.assert_allclose(losses.kl_k3_straight_through(logp, ref), k3,
                             rtol=1e-6)
  # The exponent is clipped at 20: delta = 30 gives e^20 - 31.
  np.testing.assert_allclose(
      losses.kl_k3(jnp.zeros((1, 1)), jnp.full((1, 1), 30.0)),
      [[math.exp(20) - 31]], rtol=1e-6)


def test_k3_value_is_precise_for_small_log_ratios():
  # k3 ~ delta^2 / 2 (5e-7 at 1e-3); float32 exp(delta) - 1 carries an error
  # of up to an ulp of 1 (1.2e-7), 4.7% at 1e-3, and expm1(delta) - delta
  # still 0.1% at 1e-4. Reference: float64 NumPy on
  # the same float32 deltas, k3 = expm1(d) - d.
  # The sweep also crosses the switch from the series to expm1 at 0.1.
  delta = np.array([[1e-3, -1e-3, 1e-4, -1e-4, 3e-4, 0.0999, -0.0999, 0.1,
                     -0.1, 0.5, -3.0, 19.0]], np.float32)
  d64 = delta.astype(np.float64)
  want = np.expm1(d64) - d64
  logp = jnp.zeros(delta.shape)
  for fn in (losses.kl_k3, losses.kl_k3_straight_through):
    got = np.asarray(jax.jit(fn)(logp, jnp.asarray(delta)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_k3_straight_through_gradient_is_k2s():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda lp: jnp.sum(f(lp, ref))))(logp)
  # d/dlogp (ref - logp)^2 / 2 = logp - ref; k3's own: 1 - exp(ref - logp).
  np.testing.assert_allclose(grad(losses.kl_k3_straight_through), logp - ref,
                             rtol=1e-6)
  np.testing.assert_allclose(grad(losses.kl_k3_straight_through),
                             grad(losses.kl_k2), rtol=1e-6)
  np.testing.assert_allclose(grad(losses.kl_k3), 1 - np.exp(ref - logp),
                             rtol=1e-5)
  np.testing.assert_allclose(grad(losses.kl_k1), np.ones((3, 4)))
  assert losses.KL_ESTIMATORS["k3"] is losses.kl_k3_straight_through


def test_policy_loss_hand_values_with_kl():
  # The ppo table above with the dual clip: sum l = -2.5 - 1 + 0.8 + 1.5 + 3
  # + 0 = 1.8 over 6 tokens -> 0.3. ref = logp + ln 2 on every token, so each
  # k3 = 1 - ln 2 and the loss is 0.3 + 0.1 * (1 - ln 2). Ratios (1.5 + 0.5
  # + 0.5 + 1.5 + 4 + 1) / 6 = 1.5, max 4 (the masked e^10 is ignored).
  ref = _PPO_LOGP + LN(2)
  def fn(logp):
    return losses.policy_loss(
        logp, _PPO_OLD, _PPO_ADV, _PPO_MASK, loss_denominator=6.0,
        token_count=6.0, eps_low=0.2, eps_high=0.25, dual_clip=3.0,
        ref_logp=ref, kl_coef=0.1)
  (loss, metrics), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(
      _PPO_LOGP)
  k3 = 1 - LN(2)
  np.testing.assert_allclose(loss, 0.3 + 0.1 * k3, rtol=1e-6)
  want = {
      "policy/loss": 0.3 + 0.1 * k3,
      "policy/pg_loss": 0.3,
      "policy/kl": k3,
      "policy/clipfrac_low": 1 / 6,
      "policy/clipfrac_high": 1 / 6,
      "policy/clipfrac_dual": 1 / 6,
      "policy/ratio_mean": 1.5,
      "policy/ratio_max": 4.0,
  }
  assert set(metrics) == set(want)
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-6, err_msg=key)
  # Policy gradient per token (table above) plus 0.1 * (logp - ref) = -0.1 ln 2
  # on every valid token, all over the 6 tokens.
  pg = np.array([[0, -1, 0, 0], [1.5, 0, 0, 0]])
  want_grad = (pg - 0.1 * LN(2) * np.asarray(_PPO_MASK)) / 6
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# NumPy reference on seeded random inputs.
# ---------------------------------------------------------------------------


def _np_policy_loss(logp, old, adv, mask, ref, *, policy_loss, loss_agg, eps_low,
                    eps_high, dual_clip, kl_coef, t_max):
  """Independent float64 implementation of METHODS.md 1.2-1.4."""
  logp, old, adv, mask, ref = (np.asarray(x, np.float64)
                               for x in (logp, old, adv, mask, ref))
  B, T = logp.shape
  if policy_loss == "ppo_clip":
    ratio = np.exp(np.clip(logp - old, -20, 20))
  else:
    ratio = np.empty((B, T))
    for i in range(B):
      n = mask[i].sum()
      mean = (mask[i] * (logp[i] - old[i])).sum() / n if n else 0.0
      ratio[i] = np.exp(np.clip(mean, -20, 20))
  l = -np.minimum(ratio * adv,
                  np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
  if dual_clip is not None:
    l = np.where(adv < 0, np.minimum(l, -adv * dual_clip), l)
  delta = ref - logp
  l = l + kl_coef * (np.exp(delta) - delta - 1)
  valid = mask > 0
  if loss_agg == "token_mean":
    return l[valid].sum() / valid.sum()
  if loss_agg == "seq_mean_token_mean":
    rows = [l[i][valid[i]].mean() for i in range(B) if valid[i].any()]
    return sum(rows) / len(rows)
  return l[valid].sum() / (B * t_max)


@pytest.mark.parametrize("policy_loss", ["ppo_clip", "gspo", "gspo_token"])
@pytest.mark.parametrize("loss_agg", AGGS)
def test_policy_loss_matches_numpy(policy_loss, loss_agg):
  rng = np.random.default_rng(7)
  B, T = 8, 6
  logp = rng.normal(size=(B, T)) * 0.4 - 1.0
  old = logp + rng.normal(size=(B, T)) * 0.3
  ref = logp + rng.normal(size=(B, T)) * 0.3
  adv = rng.normal(size=(B, T))
  mask = (np.arange(T)[None, :] < rng.integers(0, T + 1, size=(B, 1)))
  mask = mask.astype(np.float32)
  kwargs = dict(policy_loss=policy_loss, loss_agg=loss_agg, eps_low=0.2, eps_high=0.28,
                dual_clip=3.0, kl_coef=0.05)
  den = losses.aggregation_denominator(jnp.asarray(mask), loss_agg=loss_agg,
                                       max_response_len=T + 2)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  fn = jax.jit(functools.partial(losses.policy_loss, max_response_len=T + 2,
                                 **kwargs))
  loss, _ = fn(f32(logp), f32(old), f32(adv), f32(mask), loss_denominator=den,
               token_count=jnp.sum(f32(mask)), ref_logp=f32(ref))
  want = _np_policy_loss(logp, old, adv, mask, ref, t_max=T + 2, **kwargs)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


# ---------------------------------------------------------------------------
# Invariance: micro-batches, devices, padding (toy differentiable policy).
# ---------------------------------------------------------------------------

_B, _T, _F, _V, _T_MAX = 16, 6, 3, 5, 8


def _toy_logp(params, feats, tokens):
  """logp[b, t] = log_softmax(feats[b, t] @ w + bias)[tokens[b, t]]."""
  logits = jnp.einsum("btf,fv->btv", feats, params["w"])
  logits = logits + params["bias"][None, None, :]
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp_all, tokens[..., None], axis=-1)[..., 0]


def _make_problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(_F, _V)).astype(np.float32),
            "bias": rng.normal(size=(_V,)).astype(np.float32)}
  feats = rng.normal(size=(_B, _T, _F)).astype(np.float32)
  tokens = rng.integers(0, _V, size=(_B, _T)).astype(np.int32)
  lengths = rng.integers(1, _T + 1, size=_B)
  lengths[3] = 0  # A row without valid tokens.
  mask = (np.arange(_T)[None, :] < lengths[:, None]).astype(np.float32)
  logp = np.asarray(_toy_logp(params, feats, tokens))
  rewards = rng.integers(0, 2, size=_B).astype(np.float32)
  adv = advantages_lib.broadcast_to_tokens(
      advantages_lib.grpo(jnp.asarray(rewards), group_size=4),
      jnp.asarray(mask))
  batch = {
      "feats": feats,
      "tokens": tokens,
      "mask": mask,
      # Noise of 0.3 makes some ratios leave [0.8, 1.28] and hit every clip.
      "old_logp": (logp + 0.3 * rng.normal(size=(_B, _T))).astype(np.float32),
      "ref_logp": (logp + 0.3 * rng.normal(size=(_B, _T))).astype(np.float32),
      "advantages": np.asarray(adv),
  }
  return params, batch


def _loss_fn(params, batch, loss_den, token_count, *, loss_agg, policy_loss):
  logp = _toy_logp(params, batch["feats"], batch["tokens"])
  return losses.policy_loss(
      logp, batch["old_logp"], batch["advantages"], batch["mask"],
      loss_denominator=loss_den, token_count=token_count, policy_loss=policy_loss,
      eps_low=0.2, eps_high=0.28, dual_clip=3.0, loss_agg=loss_agg,
      max_response_len=_T_MAX, ref_logp=batch["ref_logp"], kl_coef=0.1)


_grad_fn = jax.jit(jax.value_and_grad(_loss_fn, has_aux=True),
                   static_argnames=("loss_agg", "policy_loss"))
_denominator = jax.jit(losses.aggregation_denominator,
                       static_argnames=("loss_agg", "max_response_len"))


def _minibatch(params, batch, *, loss_agg, n_micro, policy_loss="ppo_clip",
               put=jnp.asarray):
  """The trainer's protocol: whole-mini-batch denominators, then micro-batches.

  Returns (loss, grads, metrics) of the mini-batch.
  """
  mask = put(batch["mask"])
  loss_den = _denominator(mask, loss_agg=loss_agg, max_response_len=_T_MAX)
  token_count = jax.jit(jnp.sum)(mask)
  size = len(batch["mask"]) // n_micro
  total = None
  for k in range(n_micro):
    micro = {key: put(value[k * size:(k + 1) * size])
             for key, value in batch.items()}
    (loss, metrics), grads = _grad_fn(params, micro, loss_den, token_count,
                                      loss_agg=loss_agg, policy_loss=policy_loss)
    if total is None:
      total = (loss, grads, metrics)
    else:
      total = (total[0] + loss, jax.tree.map(jnp.add, total[1], grads),
               metrics_lib.combine_metrics([total[2], metrics], shares=True))
  return total


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
  """(loss, grads, metrics) equal: the same tree structure (metric keys), close values."""
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss_agg", AGGS)
def test_micro_batch_split_invariance(loss_agg):
  params, batch = _make_problem()
  whole = _minibatch(params, batch, loss_agg=loss_agg, n_micro=1)
  # Anchor: the whole-batch loss is the NumPy reference's value.
  logp = np.asarray(_toy_logp(params, batch["feats"], batch["tokens"]))
  want = _np_policy_loss(
      logp, batch["old_logp"], batch["advantages"], batch["mask"],
      batch["ref_logp"], policy_loss="ppo_clip", loss_agg=loss_agg, eps_low=0.2,
      eps_high=0.28, dual_clip=3.0, kl_coef=0.1, t_max=_T_MAX)
  np.testing.assert_allclose(whole[0], want, rtol=1e-5)
  # The clips are exercised, so the test covers their gradients too.
  assert whole[2]["policy/clipfrac_low"] > 0
  assert whole[2]["policy/clipfrac_high"] > 0
  for n_micro in (2, 4):
    _assert_same(_minibatch(params, batch, loss_agg=loss_agg, n_micro=n_micro), whole)


def test_micro_batch_split_invariance_gspo():
  params, batch = _make_problem(seed=1)
  whole = _minibatch(params, batch, loss_agg="seq_mean_token_mean", n_micro=1,
                     policy_loss="gspo")
  _assert_same(_minibatch(params, batch, loss_agg="seq_mean_token_mean", n_micro=4,
                          policy_loss="gspo"), whole)


@pytest.mark.parametrize("loss_agg", AGGS)
def test_eight_devices_match_one(loss_agg):
  params, batch = _make_problem()
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single = _minibatch(jax.device_put(params, one_device), batch, loss_agg=loss_agg,
                      n_micro=1, put=lambda x: jax.device_put(x, one_device))
  sharded_params = jax.device_put(params, replicated)
  put_rows = lambda x: jax.device_put(x, rows)
  assert len(put_rows(batch["mask"]).sharding.device_set) == 8
  _assert_same(_minibatch(sharded_params, batch, loss_agg=loss_agg, n_micro=1,
                          put=put_rows), single)
  # 2 micro-batches of 8 rows, each spread over the 8 devices.
  _assert_same(_minibatch(sharded_params, batch, loss_agg=loss_agg, n_micro=2,
                          put=put_rows), single)


@pytest.mark.parametrize("loss_agg", AGGS)
def test_padding_invariance(loss_agg):
  params, batch = _make_problem()
  reference = _minibatch(params, batch, loss_agg=loss_agg, n_micro=1)
  rng = np.random.default_rng(11)
  extra = _T_MAX - _T
  # Extra response columns with m = 0 and garbage everywhere else.
  padded = {}
  for key, value in batch.items():
    pad_shape = (_B, extra) + value.shape[2:]
    if key == "mask":
      pad = np.zeros(pad_shape, np.float32)
    elif key == "tokens":
      pad = rng.integers(0, _V, size=pad_shape).astype(np.int32)
    else:
      pad = (rng.normal(size=pad_shape) * 50).astype(np.float32)
    padded[key] = np.concatenate([value, pad], axis=1)
  _assert_same(_minibatch(params, padded, loss_agg=loss_agg, n_micro=1), reference)
  if loss_agg == "seq_mean_token_sum_norm":
    return  # Its denominator B * T_max counts every row, by definition.
  # Extra rows with m = 0 everywhere.
  rows = {key: np.concatenate([value, value[:4][:, ::-1] * 3], axis=0)
          for key, value in batch.items()}
  rows["mask"][_B:] = 0.0
  _assert_same(_minibatch(params, rows, loss_agg=loss_agg, n_micro=1), reference)


# ---------------------------------------------------------------------------
# Metrics, registries and input errors.
# ---------------------------------------------------------------------------


def test_zero_denominator_gives_zero_loss():
  zeros = jnp.zeros((2, 3))
  loss, metrics = jax.jit(losses.policy_loss)(
      zeros, zeros, jnp.ones((2, 3)), zeros, loss_denominator=0.0,
      token_count=0.0)
  assert float(loss) == 0.0
  assert all(float(v) == 0.0 for v in metrics.values())


def test_registries():
  assert set(losses.POLICY_LOSSES) == {"ppo_clip", "gspo", "gspo_token"}
  assert set(losses.AGGREGATIONS) == set(AGGS)
  assert set(losses.KL_ESTIMATORS) == {"k1", "k2", "k3"}
  for getter, flag in ((losses.get_policy_loss, "policy_loss"),
                       (losses.get_aggregation, "loss_agg"),
                       (losses.get_kl_estimator, "kl_estimator")):
    with pytest.raises(ValueError, match=f"{flag}='nope'.*valid"):
      getter("nope")


def test_input_errors():
  x = jnp.zeros((2, 3))
  kw = dict(loss_denominator=1.0, token_count=1.0)
  with pytest.raises(ValueError, match="advantages.*broadcast_to_tokens"):
    losses.policy_loss(x, x, jnp.zeros(2), x, **kw)
  with pytest.raises(ValueError, match="old_logp"):
    losses.policy_loss(x, jnp.zeros((2, 4)), x, x, **kw)
  with pytest.raises(ValueError, match="ref_logp"):
    losses.policy_loss(x, x, x, x, kl_coef=0.1, **kw)
  with pytest.raises(ValueError, match="kl_coef"):
    losses.policy_loss(x, x, x, x, ref_logp=x, kl_coef=-1.0, **kw)
  with pytest.raises(ValueError, match="max_response_len"):
    losses.policy_loss(x, x, x, x, loss_agg="seq_mean_token_sum_norm", **kw)
  with pytest.raises(ValueError, match="max_response_len=2"):
    losses.aggregation_denominator(x, loss_agg="seq_mean_token_sum_norm",
                                   max_response_len=2)
  with pytest.raises(ValueError, match="eps_low"):
    losses.ppo_clip(x, x, x, x, eps_low=1.0)
  with pytest.raises(ValueError, match="eps_high"):
    losses.ppo_clip(x, x, x, x, eps_high=-0.1)
  with pytest.raises(ValueError, match="dual_clip"):
    losses.ppo_clip(x, x, x, x, dual_clip=1.0)
