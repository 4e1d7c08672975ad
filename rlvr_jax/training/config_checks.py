"""Checks a run's ConfigDict up front, naming the flag of every bad value.

A run that would fail after minutes of compiling and sampling (an unknown
estimator, a batch that does not split into micro-batches) fails here, at
once, with the `--config.<path>` to fix.
"""

from __future__ import annotations

import ml_collections

from rlvr_jax.algorithms import advantages
from rlvr_jax.algorithms import losses
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.data import prompts

_CHOICES = {
    "algo.advantage": tuple(advantages.ESTIMATORS) + ("scrl",),
    "algo.policy_loss": tuple(losses.POLICY_LOSSES),
    "algo.loss_agg": tuple(losses.AGGREGATIONS),
    "algo.kl_estimator": tuple(losses.KL_ESTIMATORS),
    "algo.delta_scope": ("batch", "group"),
    "data.source": data_iterator.SOURCES,
    "data.template": prompts.TEMPLATES,
    "reward.checker": ("reasoning_gym", "exact", "math_verify"),
    "model.remat": ("none", "full", "dots"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.decay": ("constant", "cosine", "linear"),
    "train.old_logp": ("recompute", "sampler"),
}


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _fail(path: str, value, why: str) -> None:
  raise ValueError(f"--config.{path}={value!r}: {why}")


def update_rows(config: ml_collections.ConfigDict) -> int:
  """Rows of one rollout batch's update: (update_groups or prompts_per_batch) * G."""
  return (config.rl.update_groups or config.rl.prompts_per_batch) * config.rl.group_size


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first flag with a bad or incompatible value."""
  for path, choices in _CHOICES.items():
    value = _get(config, path)
    if value not in choices:
      _fail(path, value, f"choose one of {list(choices)}.")
  positive = ("rl.steps", "rl.prompts_per_batch", "rl.group_size", "rl.mini_batches",
              "rl.micro_batches", "rl.max_prompt_len", "rl.max_new_tokens",
              "train.eval_batch_size", "train.eval_max_new_tokens", "train.save_every",
              "train.keep")
  for path in positive:
    if _get(config, path) < 1:
      _fail(path, _get(config, path), "must be >= 1.")
  c = config
  if not 0 <= c.rl.update_groups <= c.rl.prompts_per_batch:
    _fail("rl.update_groups", c.rl.update_groups,
          f"must be 0 (update on every group) or in 1..prompts_per_batch="
          f"{c.rl.prompts_per_batch}.")
  name = "update_groups" if c.rl.update_groups else "prompts_per_batch"
  rows = update_rows(c)
  if rows % c.rl.mini_batches:
    _fail("rl.mini_batches", c.rl.mini_batches,
          f"must divide {name} * group_size = {rows}.")
  if (rows // c.rl.mini_batches) % c.rl.micro_batches:
    _fail("rl.micro_batches", c.rl.micro_batches,
          f"must divide the mini-batch of {rows // c.rl.mini_batches} rows.")
  if c.rl.temperature <= 0:
    _fail("rl.temperature", c.rl.temperature, "must be > 0 (use greedy evaluation instead).")
  if not 0 < c.rl.top_p <= 1:
    _fail("rl.top_p", c.rl.top_p, "must be in (0, 1].")
  if c.algo.eps_low < 0 or c.algo.eps_high < 0:
    _fail("algo.eps_low", (c.algo.eps_low, c.algo.eps_high), "clip widths must be >= 0.")
  if c.algo.dual_clip and c.algo.dual_clip <= 1:
    _fail("algo.dual_clip", c.algo.dual_clip, "must be 0 (off) or > 1.")
  if c.algo.kl_coef < 0:
    _fail("algo.kl_coef", c.algo.kl_coef, "must be >= 0.")
  if c.algo.delta and not 0 < c.algo.delta_lam_min <= c.algo.delta_lam_max:
    _fail("algo.delta_lam_min", c.algo.delta_lam_min,
          f"need 0 < delta_lam_min <= delta_lam_max={c.algo.delta_lam_max}.")
  if c.algo.delta and c.algo.delta_k < 0:
    _fail("algo.delta_k", c.algo.delta_k, "must be >= 0.")
  if c.algo.advantage == "scrl":
    if c.rl.group_size % 2:
      _fail("rl.group_size", c.rl.group_size,
            "SCRL splits each group into curriculum and plain halves: must be even.")
    if c.algo.scrl_k < 1:
      _fail("algo.scrl_k", c.algo.scrl_k, "must be >= 1.")
  if c.algo.advantage == "scrl" and c.algo.policy_loss == "gspo":
    _fail("algo.policy_loss", "gspo",
          "a sequence-level ratio ignores SCRL's token-level advantages; use gspo_token.")
  if c.train.dense_window < 0:
    _fail("train.dense_window", c.train.dense_window, "must be >= 0.")
  if c.optim.lr <= 0:
    _fail("optim.lr", c.optim.lr, "must be > 0.")
