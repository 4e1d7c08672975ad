"""AdamW with warmup + decay and global-norm clipping (METHODS.md 1.5)."""

from __future__ import annotations

from typing import Any

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


# Parameter names (the last key of a parameter's path) that weight decay
# applies to: projection kernels and embeddings. Everything else (norm
# scales, biases) is not decayed, the HF Trainer / TRL convention.
DECAYED_NAMES = ("kernel", "embedding")


def _param_name(path: tuple[Any, ...]) -> str:
  """The parameter's own name: the last path key that is not nnx's `value`."""
  names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  names = [n for n in names if n != "value"]
  return names[-1] if names else ""


def decay_mask(params: Any) -> Any:
  """True for the parameters weight decay applies to, chosen by name.

  The decision is by parameter kind, not by ndim: a stacked model's per-layer
  norm scale is [L, D] (2-D) and is still a norm scale. Decayed: names in
  `DECAYED_NAMES` (projection kernels, the embedding and an untied LM head);
  not decayed: norm scales, biases and anything else.

  Args:
    params: a tree of arrays (a dict or an nnx.State of the model's Params).

  Returns:
    The same tree with a bool per leaf.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _param_name(path) in DECAYED_NAMES, params)


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
                      mask=decay_mask)
  if grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)
  return adamw
