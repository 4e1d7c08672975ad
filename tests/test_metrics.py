"""The one metric-combining rule (training/metrics.py), checked by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.training import metrics as metrics_lib

# Two parts of a step: an average (loss), a maximum (ratio_max) and a count
# (skipped).
_A = {"policy/loss": 1.0, "policy/ratio_max": 3.0, "train/skipped": 0.0}
_B = {"policy/loss": 0.5, "policy/ratio_max": 2.0, "train/skipped": 1.0}


def test_rule_per_key_suffix():
  assert metrics_lib.combine_rule("policy/ratio_max") == "max"
  assert metrics_lib.combine_rule("train/skipped") == "sum"
  for key in ("policy/loss", "policy/clipfrac_high", "train/grad_norm", "policy/max_len"):
    assert metrics_lib.combine_rule(key) == "mean"


def test_mini_batches_average_max_and_count():
  got = metrics_lib.combine_metrics([_A, _B], shares=False)
  # loss (1.0 + 0.5) / 2 = 0.75; ratio_max max(3, 2) = 3; skipped 0 + 1 = 1.
  assert got == {"policy/loss": 0.75, "policy/ratio_max": 3.0, "train/skipped": 1.0}
  # Three updates: loss (1 + 0.5 + 0.3) / 3 = 0.6, skipped 0 + 1 + 1 = 2.
  three = metrics_lib.combine_metrics(
      [_A, _B, {"policy/loss": 0.3, "policy/ratio_max": 5.0, "train/skipped": 1.0}],
      shares=False)
  np.testing.assert_allclose(three["policy/loss"], 0.6, rtol=1e-15)
  assert three["policy/ratio_max"] == 5.0 and three["train/skipped"] == 2.0


def test_micro_batch_shares_add():
  # Shares of one mini-batch: loss 1.0 + 0.5 = 1.5; ratio_max 3; skipped 1.
  got = metrics_lib.combine_metrics([_A, _B], shares=True)
  assert got == {"policy/loss": 1.5, "policy/ratio_max": 3.0, "train/skipped": 1.0}
  assert metrics_lib.combine_metrics([_A], shares=False) == _A


def test_jitted_pairwise_fold_from_zeros_equals_one_combination():
  # The trainer's micro-batch loop: a scan that folds each micro-batch into
  # a carry that starts at zeros.
  parts = [{k: jnp.float32(v) for k, v in p.items()} for p in (_A, _B, _A)]

  @jax.jit
  def fold(stacked):
    def step(carry, part):
      return metrics_lib.combine_metrics([carry, part], shares=True), None
    zeros = jax.tree.map(lambda x: jnp.zeros_like(x[0]), stacked)
    return jax.lax.scan(step, zeros, stacked)[0]

  got = fold(jax.tree.map(lambda *x: jnp.stack(x), *parts))
  # loss 1 + 0.5 + 1 = 2.5; ratio_max 3; skipped 0 + 1 + 0 = 1.
  assert {k: float(v) for k, v in got.items()} == {
      "policy/loss": 2.5, "policy/ratio_max": 3.0, "train/skipped": 1.0}


def test_a_non_finite_maximum_is_kept():
  got = metrics_lib.combine_metrics([_A, dict(_B, **{"policy/ratio_max": float("nan")})],
                                    shares=False)
  assert np.isnan(got["policy/ratio_max"])


def test_bad_parts_are_refused():
  with pytest.raises(ValueError, match="parts: no metrics"):
    metrics_lib.combine_metrics([], shares=True)
  with pytest.raises(ValueError, match="parts: metric keys differ"):
    metrics_lib.combine_metrics([_A, {"policy/loss": 0.0}], shares=True)


def test_logged_steps():
  # log_every 3 over 7 steps: rows at 3, 6 and the last step 7.
  logged = [s for s in range(1, 8)
            if metrics_lib.is_logged_step(s, log_every=3, last_step=7)]
  assert logged == [3, 6, 7]
  assert all(metrics_lib.is_logged_step(s, log_every=1, last_step=7) for s in range(1, 8))
  with pytest.raises(ValueError, match="train.log_every"):
    metrics_lib.is_logged_step(1, log_every=0, last_step=7)
