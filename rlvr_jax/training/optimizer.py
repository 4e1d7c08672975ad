"""AdamW with warmup + decay and global-norm clipping (METHODS.md 1.5)."""

from __future__ import annotations

import jax
import optax

_DECAYS = ("constant", "cosine", "linear")


def learning_rate_schedule(*, lr: float, warmup_steps: int, total_steps: int,
                           decay: str = "constant", final_lr_fraction: float = 0.0
                           ) -> optax.Schedule:
  """Linear warmup to `lr` over `warmup_steps`, then `decay` to the end.

  Optimizer step k (counting from 0) of the warmup uses lr * (k + 1) /
  warmup_steps, so the first update is never taken at learning rate 0 (a
  plain `optax.linear_schedule(0, lr, n)` starts at 0, which wastes the first
  rollout batch of a run: a few percent of a short RL run's data, and RELEX's
  first window step). warmup_steps = 1 is therefore the same as no warmup.

  Args:
    lr: peak learning rate.
    warmup_steps: optimizer steps of linear warmup (0 = none).
    total_steps: optimizer steps of the whole run.
    decay: 'constant', 'cosine' or 'linear' after warmup.
    final_lr_fraction: lr at the last step as a fraction of `lr`.

  Returns:
    An optax schedule step -> learning rate.
  """
  if decay not in _DECAYS:
    raise ValueError(f"optim.decay={decay!r}; choose one of {_DECAYS}.")
  decay_steps = max(total_steps - warmup_steps, 1)
  if decay == "constant":
    after = optax.constant_schedule(lr)
  elif decay == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_fraction)
  else:
    after = optax.linear_schedule(lr, lr * final_lr_fraction, decay_steps)
  if warmup_steps <= 1:
    return after
  warmup = optax.linear_schedule(lr / warmup_steps, lr, warmup_steps - 1)
  return optax.join_schedules([warmup, after], [warmup_steps - 1])


def _decay_mask(params):
  """Weight decay on matrices only: norms' scales and biases are not decayed
  (the HF Trainer / TRL convention)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(*, lr: float, warmup_steps: int, total_steps: int,
                   decay: str = "constant", final_lr_fraction: float = 0.0,
                   weight_decay: float = 0.1, grad_clip: float = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
  """clip_by_global_norm(grad_clip) then AdamW with the schedule above.

  `total_steps` counts optimizer steps (rollout steps x mini-batches).
  grad_clip <= 0 disables clipping.
  """
  schedule = learning_rate_schedule(lr=lr, warmup_steps=warmup_steps,
                                    total_steps=total_steps, decay=decay,
                                    final_lr_fraction=final_lr_fraction)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=_decay_mask)
  if grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
  return adamw
