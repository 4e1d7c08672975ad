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
  norms' scales get no weight decay, kernels get lr * wd * p."""
  params = {"kernel": jnp.asarray([[1.0, -2.0]]), "scale": jnp.asarray([3.0, 4.0])}
  grads = {"kernel": jnp.asarray([[0.5, -0.1]]), "scale": jnp.asarray([-2.0, 1e-3])}
  opt = optimizer.make_optimizer(lr=0.01, warmup_steps=1, total_steps=3, weight_decay=0.1,
                                 grad_clip=0.0, eps=0.0)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["kernel"], [[1.0 - 0.01 - 0.01 * 0.1 * 1.0,
                                         -2.0 + 0.01 - 0.01 * 0.1 * -2.0]], rtol=1e-6)
  np.testing.assert_allclose(new["scale"], [3.0 + 0.01, 4.0 - 0.01], rtol=1e-6)


def test_unknown_decay_names_the_flag():
  with pytest.raises(ValueError, match="optim.decay"):
    optimizer.learning_rate_schedule(lr=1.0, warmup_steps=0, total_steps=2, decay="step")


def test_weight_decay_skips_stacked_norm_scales_and_biases():
  """On the stacked decoder ([L, D] norm scales, [L, H, Dh] biases), with a
  zero gradient only the decayed kinds move, each by exactly lr * wd * p per
  step (Adam's update of a zero gradient is 0); two steps: p * (1 - lr wd)^2."""
  from rlvr_jax.models import config as config_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import decoder as decoder_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  cfg = config_lib.tiny(vocab_size=64).replace(
      num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1,
      head_dim=16, qkv_bias=True, qk_norm=True, tie_word_embeddings=False)
  _, params, _ = step_lib.split_model(decoder_lib.create_model(cfg, seed=0))
  lr, wd = 0.01, 0.1
  opt = optimizer.make_optimizer(lr=lr, warmup_steps=1, total_steps=2, weight_decay=wd,
                                 grad_clip=0.0)
  state = opt.init(params)
  new = params
  zeros = jax.tree.map(jnp.zeros_like, params)
  for _ in range(2):
    updates, state = opt.update(zeros, state, new)
    new = optax.apply_updates(new, updates)
  names = []
  for (path, old), moved in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(new)):
    name = jax.tree_util.keystr(path)
    names.append(name)
    if "['kernel']" in name or "['embedding']" in name:
      np.testing.assert_allclose(moved, np.asarray(old) * (1 - lr * wd) ** 2, rtol=1e-6)
    else:
      assert "['scale']" in name or "['bias']" in name, name
      np.testing.assert_array_equal(moved, old)
  # The tree really holds stacked 2-D norm scales, biases and an untied head.
  assert any("attn_norm']['scale']" in n for n in names)
  assert any("['bias']" in n for n in names)
  assert any("lm_head']['kernel']" in n for n in names)
