"""The learning-rate schedule and AdamW's decay mask, by hand."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlvr_jax.training import optimizer


@pytest.mark.parametrize("decay, after", [
    # Warmup 4: lr/4, 2lr/4, 3lr/4 at steps 0..2, then lr at step 3.
    ("constant", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    # Linear from lr at step 3 to 0 at step 3 + (10 - 4) = 9.
    ("linear", [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]),
    # Cosine over the same 6 steps: (1 + cos(pi * i / 6)) / 2.
    ("cosine", [(1 + np.cos(np.pi * i / 6)) / 2 for i in range(7)]),
])
def test_schedule_by_hand(decay, after):
  lr = 2e-5
  schedule = optimizer.learning_rate_schedule(lr=lr, warmup_steps=4, total_steps=10,
                                              decay=decay)
  got = [float(schedule(k)) for k in range(10)]
  want = [lr / 4, lr / 2, 3 * lr / 4] + [lr * a for a in after]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("warmup_steps", [0, 1])
def test_first_update_is_taken_at_full_rate_without_warmup(warmup_steps):
  schedule = optimizer.learning_rate_schedule(lr=1e-3, warmup_steps=warmup_steps,
                                              total_steps=5)
  assert [float(schedule(k)) for k in range(3)] == pytest.approx([1e-3] * 3)


def test_first_adamw_step_moves_every_parameter_by_lr():
  """Adam's first step is lr * sign(g) (bias-corrected m / sqrt(v) = +-1);
  norms' scales (1-D) get no weight decay, matrices get lr * wd * p."""
  params = {"w": jnp.asarray([[1.0, -2.0]]), "scale": jnp.asarray([3.0, 4.0])}
  grads = {"w": jnp.asarray([[0.5, -0.1]]), "scale": jnp.asarray([-2.0, 1e-3])}
  opt = optimizer.make_optimizer(lr=0.01, warmup_steps=1, total_steps=3, weight_decay=0.1,
                                 grad_clip=0.0, eps=0.0)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["w"], [[1.0 - 0.01 - 0.01 * 0.1 * 1.0,
                                         -2.0 + 0.01 - 0.01 * 0.1 * -2.0]], rtol=1e-6)
  np.testing.assert_allclose(new["scale"], [3.0 + 0.01, 4.0 - 0.01], rtol=1e-6)


def test_unknown_decay_names_the_flag():
  with pytest.raises(ValueError, match="optim.decay"):
    optimizer.learning_rate_schedule(lr=1.0, warmup_steps=0, total_steps=2, decay="step")
