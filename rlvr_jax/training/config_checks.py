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
  _validate_reward_methods(c)


def _validate_reward_methods(c: ml_collections.ConfigDict) -> None:
  """The flags of the reward channels and reward-side methods (METHODS.md 6)."""
  from rlvr_jax.training import channel_credit  # pylint: disable=g-import-not-at-top
  channel_credit.parse_channel_weights(c.reward.channel_weights)
  if c.reward.fn:
    from rlvr_jax.rewards import channels  # pylint: disable=g-import-not-at-top
    channels.load_reward_fn(c.reward.fn)
  rubric = c.data.task == data_iterator.RUBRIC_TASK and c.data.source == "reasoning_gym"
  if c.algo.advantage == "scrl" and (c.reward.fn or c.reward.channel_weights or c.reward.pow3r
                                     or c.reward.longtrace_eta or c.reward.label_free
                                     or rubric):
    _fail("algo.advantage", "scrl",
          "SCRL has its own per-block reward; reward.fn, reward.channel_weights, "
          "reward.pow3r, reward.longtrace_eta, reward.label_free and the rubric task "
          "work with grpo, dr_grpo, rloo or gdpo.")
  if not 0.0 <= c.reward.longtrace_eta <= 1.0:
    _fail("reward.longtrace_eta", c.reward.longtrace_eta, "must be in [0, 1] (0 = off).")
  if c.reward.pow3r_a <= 0 or c.reward.pow3r_b <= 0:
    _fail("reward.pow3r_a", (c.reward.pow3r_a, c.reward.pow3r_b),
          "pow3r_a and pow3r_b must be > 0.")
  if not 0 < c.reward.pow3r_alpha_min <= c.reward.pow3r_alpha_max:
    _fail("reward.pow3r_alpha_min", c.reward.pow3r_alpha_min,
          f"need 0 < pow3r_alpha_min <= pow3r_alpha_max={c.reward.pow3r_alpha_max}.")
  if c.reward.pow3r and c.reward.longtrace_eta > 0:
    _fail("reward.pow3r", True, "choose POW3R or LongTraceRL (reward.longtrace_eta), not both.")
  if c.reward.label_free and (c.reward.pow3r or c.reward.longtrace_eta > 0 or c.reward.fn
                              or rubric):
    _fail("reward.label_free", True,
          "CIRCA's channels replace the reward: it does not combine with reward.pow3r, "
          "reward.longtrace_eta, reward.fn or the rubric task.")
  if c.reward.label_free and (c.rl.prompts_per_batch * c.rl.group_size) % c.rl.micro_batches:
    _fail("rl.micro_batches", c.rl.micro_batches,
          "reward.label_free runs the statistics pass on the whole rollout batch: must "
          f"divide prompts_per_batch * group_size = {c.rl.prompts_per_batch * c.rl.group_size}.")
  if c.reward.longtrace_eta > 0 and (rubric or c.reward.fn):
    _fail("reward.longtrace_eta", c.reward.longtrace_eta,
          "LongTraceRL gates on the built-in correctness with subproblem entities; not with "
          "the rubric task or reward.fn.")
  if c.algo.advantage == "gdpo" and (c.reward.pow3r or c.reward.longtrace_eta > 0 or rubric):
    _fail("algo.advantage", "gdpo",
          "POW3R, LongTraceRL and the rubric task derive one scalar reward per rollout; use "
          "grpo (or dr_grpo, rloo).")
  if rubric:
    if c.reward.checker != "exact":
      _fail("reward.checker", c.reward.checker,
            "the rubric task is scored by its criteria; set it to 'exact' (no checker pool).")
    if set(dict(c.data.task_kwargs)) - {"difficulty"}:
      _fail("data.task_kwargs", dict(c.data.task_kwargs),
            "the rubric task takes only {'difficulty': 1..5}.")
    if not 1 <= int(dict(c.data.task_kwargs).get("difficulty", 2)) <= 5:
      _fail("data.task_kwargs", dict(c.data.task_kwargs), "difficulty must be in 1..5.")
  if not 0.0 <= c.algo.kl_cov_ratio <= 1.0:
    _fail("algo.kl_cov_ratio", c.algo.kl_cov_ratio, "must be in [0, 1] (0 = off).")
  if c.algo.kl_cov_beta < 0:
    _fail("algo.kl_cov_beta", c.algo.kl_cov_beta, "must be >= 0.")
  if c.algo.kl_cov_ratio > 0 and c.algo.policy_loss != "ppo_clip":
    _fail("algo.policy_loss", c.algo.policy_loss,
          "KL-Cov (algo.kl_cov_ratio > 0) replaces the loss of PPO-clip on its tokens; use "
          "ppo_clip.")
