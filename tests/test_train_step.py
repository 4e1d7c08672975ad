"""The jitted update step: micro-batch and device-count invariance, NaN guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlvr_jax import sharding
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.training import step as step_lib

_CFG = config_lib.tiny(vocab_size=64).replace(
    num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2,
    num_kv_heads=1, head_dim=16)
_P, _T, _B = 4, 6, 8


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, _CFG.vocab_size, (_B, _P + _T)).astype(np.int32)
  input_mask = np.ones((_B, _P + _T), bool)
  input_mask[::3, :2] = False  # left padding on some prompts
  response_mask = (np.arange(_T)[None] < rng.integers(2, _T + 1, (_B, 1))).astype(np.float32)
  input_mask[:, _P:] = response_mask > 0
  return {
      "tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(input_mask),
      "response_mask": jnp.asarray(response_mask),
      "old_logp": jnp.asarray(rng.normal(-3.0, 0.3, (_B, _T)).astype(np.float32)),
      "advantages": jnp.asarray(rng.normal(size=(_B, _T)).astype(np.float32)),
  }


def _run(num_micro, agg="token_mean", mesh=None, batch=None, optimizer=None):
  model = decoder_lib.create_model(_CFG, seed=3)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optimizer or optax.sgd(1.0)
  opt_state = optimizer.init(params)
  cfg = step_lib.LossConfig(agg=agg, max_response_len=_T, eps_low=0.2, eps_high=0.28)
  fn = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=_P,
                                num_micro=num_micro, loss_config=cfg, donate=False)
  batch = batch or _batch()
  if mesh is not None:
    with sharding.use_mesh(mesh):
      batch = jax.device_put(batch, sharding.batch_sharding(mesh, 2))
      batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
      new_params, _, metrics = fn(params, rest, opt_state, batch)
  else:
    new_params, _, metrics = fn(params, rest, opt_state, batch)
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new_params, params)
  return delta, metrics


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_give_the_same_update(agg):
  ref_delta, ref_metrics = _run(1, agg)
  for m in (2, 4):
    delta, metrics = _run(m, agg)
    np.testing.assert_allclose(metrics["policy/loss"], ref_metrics["policy/loss"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), delta, ref_delta)


def test_update_equals_minus_gradient_of_loss():
  """With SGD(lr=1) the update is -grad of the whole-batch loss, from scratch."""
  delta, metrics = _run(2)
  batch = _batch()
  model = decoder_lib.create_model(_CFG, seed=3)
  graphdef, params, rest = step_lib.split_model(model)
  from flax import nnx  # pylint: disable=g-import-not-at-top

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    logp = logprobs_lib.response_logprobs(m, batch["tokens"], batch["input_mask"],
                                          prompt_len=_P).logp
    mask = batch["response_mask"]
    ratio = jnp.exp(logp - batch["old_logp"])
    a = batch["advantages"]
    per_token = -jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.28) * a)
    return jnp.sum(per_token * mask) / jnp.sum(mask)

  value, grads = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(metrics["policy/loss"], value, rtol=1e-5)
  jax.tree.map(lambda d, g: np.testing.assert_allclose(d, -np.asarray(g), atol=1e-6),
               delta, grads)


def test_eight_devices_give_the_same_update():
  ref_delta, ref_metrics = _run(2)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  delta, metrics = _run(2, mesh=mesh)
  np.testing.assert_allclose(metrics["policy/loss"], ref_metrics["policy/loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), delta, ref_delta)


def test_non_finite_loss_skips_the_update():
  batch = _batch()
  batch["advantages"] = batch["advantages"].at[0, 0].set(jnp.nan)
  delta, metrics = _run(2, batch=batch)
  assert float(metrics["train/skipped"]) == 1.0
  assert all(np.all(d == 0) for d in jax.tree.leaves(delta))


@pytest.mark.parametrize("lr", [float("inf"), float("nan")])
def test_non_finite_update_skips_the_update(lr):
  """Finite loss and gradient, but the applied update overflows: skipped."""
  _, finite_metrics = _run(2)
  assert np.isfinite(finite_metrics["policy/loss"])
  assert np.isfinite(finite_metrics["train/grad_norm"])
  delta, metrics = _run(2, optimizer=optax.sgd(lr))
  assert float(metrics["train/skipped"]) == 1.0
  assert all(np.all(d == 0) for d in jax.tree.leaves(delta))


def test_all_finite_by_hand():
  ok = {"a": jnp.ones((2, 3)), "count": jnp.asarray(3, jnp.int32)}
  assert bool(step_lib.all_finite(ok))
  for bad in (jnp.inf, -jnp.inf, jnp.nan):
    tree = {"a": jnp.ones((2, 3)).at[1, 2].set(bad), "b": jnp.zeros(4, jnp.bfloat16)}
    assert not bool(step_lib.all_finite(tree))
  assert bool(step_lib.all_finite({"count": jnp.asarray(1, jnp.int32)}))
