"""Checks a run's ConfigDict up front, naming the flag of every bad value.

A run that would fail after minutes of compiling and sampling (an unknown
estimator, a batch that does not split into micro-batches, a prompt longer
than `rl.max_prompt_len`) fails here, at once, with the `--config.<path>` to
fix:

- `validate(config)`: the flags alone (choices, ranges, finiteness), no I/O;
- `resolve(config)`: the run's effective config (task kwargs from the task's
  table, `reward.checker='auto'` chosen by the data source);
- `preflight(config)`: everything else that can fail before the model's
  weights load: the data sources (task kwargs, files), the tokenizer, the
  rendered prompts against `rl.max_prompt_len`, and prompt + response length
  against the model's context length.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import ml_collections

from rlvr_jax.algorithms import advantages
from rlvr_jax.algorithms import delta
from rlvr_jax.algorithms import losses
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.data import prompts
from rlvr_jax.data import tasks
from rlvr_jax.models import config as model_config_lib
from rlvr_jax.models import lora
from rlvr_jax.rewards import scorers
from rlvr_jax.training import optimizer

# Each flag's choices, from the module that owns them (config_checks only adds
# the choices it resolves itself: 'scrl', checker 'auto').
_CHOICES = {
    "algo.advantage": tuple(advantages.ESTIMATORS) + ("scrl", "opd", "distil"),
    "algo.policy_loss": tuple(losses.POLICY_LOSSES),
    "algo.loss_agg": tuple(losses.AGGREGATIONS),
    "algo.kl_estimator": tuple(losses.KL_ESTIMATORS),
    "algo.delta_scope": delta.SCOPES,
    "data.source": data_iterator.SOURCES,
    "data.template": prompts.TEMPLATES,
    "reward.checker": ("auto",) + scorers.CHECKERS,
    "model.remat": model_config_lib.REMATS,
    "model.dtype": model_config_lib.DTYPES,
    "model.param_dtype": model_config_lib.DTYPES,
    "optim.decay": optimizer.DECAYS,
    "train.old_logp": ("recompute", "sampler"),
}


# Float flags: (low, high, low_closed, high_closed); None = unbounded. Every
# float field of the config must also be finite (`_check_finite`).
_FLOAT_RANGES = {
    "rl.temperature": (0.0, None, False, False),
    "rl.top_p": (0.0, 1.0, False, True),
    "algo.eps_low": (0.0, None, True, False),
    "algo.eps_high": (0.0, None, True, False),
    "algo.kl_coef": (0.0, None, True, False),
    "algo.dual_clip": (0.0, None, True, False),
    "reward.format_weight": (0.0, None, True, False),
    "reward.timeout_s": (0.0, None, False, False),
    "optim.lr": (0.0, None, False, False),
    "optim.weight_decay": (0.0, None, True, False),
    "optim.grad_clip": (0.0, None, True, False),
    "optim.b1": (0.0, 1.0, True, False),
    "optim.b2": (0.0, 1.0, True, False),
    "optim.eps": (0.0, None, True, False),
}
# Reasoning-gym tasks scored by their own exact scorer under checker='auto';
# any other data source (files, tfds) is scored with math-verify.
_AUTO_CHECKER = {"reasoning_gym": "reasoning_gym", "jsonl": "math_verify",
                 "parquet": "math_verify", "tfds": "math_verify"}
# Training records rendered by `preflight` to check prompt lengths (beside
# the whole held-out set and the few-shot examples).
PREFLIGHT_TRAIN_RECORDS = 64


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _fail(path: str, value, why: str) -> None:
  raise ValueError(f"--config.{path}={value!r}: {why}")


def _interval(low, high, low_closed, high_closed) -> str:
  left = "[" if low_closed else "("
  right = "]" if high_closed else ")"
  return f"{left}{low}, {'inf' if high is None else high}{right}"


def _check_floats(config: ml_collections.ConfigDict) -> None:
  """Every float field finite; the fields of `_FLOAT_RANGES` in their range."""
  def visit(node, prefix):
    for key, value in node.items():
      path = f"{prefix}{key}"
      if isinstance(value, ml_collections.ConfigDict):
        visit(value, path + ".")
      elif isinstance(value, float) and not math.isfinite(value):
        _fail(path, value, "must be a finite number.")
  visit(config, "")
  for path, (low, high, low_closed, high_closed) in _FLOAT_RANGES.items():
    try:
      value = _get(config, path)
    except (KeyError, AttributeError):
      continue
    above = value >= low if low_closed else value > low
    below = high is None or (value <= high if high_closed else value < high)
    if not (above and below):
      _fail(path, value, f"must be in {_interval(low, high, low_closed, high_closed)}.")


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
              "train.keep", "train.log_every")
  for path in positive:
    if _get(config, path) < 1:
      _fail(path, _get(config, path), "must be >= 1.")
  if config.train.max_skipped_steps < 1:
    _fail("train.max_skipped_steps", config.train.max_skipped_steps, "must be >= 1.")
  _check_floats(config)
  c = config
  if not 0 <= c.rl.update_groups <= c.rl.prompts_per_batch:
    _fail("rl.update_groups", c.rl.update_groups,
          f"must be 0 (update on every group) or in 1..prompts_per_batch="
          f"{c.rl.prompts_per_batch}.")
  name = "update_groups" if c.rl.update_groups else "prompts_per_batch"
  rows = update_rows(c)
  if (rows // c.rl.group_size) % c.rl.mini_batches:  # mini-batches hold whole groups
    _fail("rl.mini_batches", c.rl.mini_batches,
          f"must divide {name} = {rows // c.rl.group_size} (mini-batches hold whole groups).")
  if (rows // c.rl.mini_batches) % c.rl.micro_batches:
    _fail("rl.micro_batches", c.rl.micro_batches,
          f"must divide the mini-batch of {rows // c.rl.mini_batches} rows.")
  if c.algo.dual_clip and c.algo.dual_clip <= 1:
    _fail("algo.dual_clip", c.algo.dual_clip, "must be 0 (off) or > 1.")
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
  if c.optim.warmup_steps < 0:
    _fail("optim.warmup_steps", c.optim.warmup_steps, "must be >= 0.")
  if c.reward.checker == "reasoning_gym" and c.data.source != "reasoning_gym":
    _fail("reward.checker", c.reward.checker,
          f"scores reasoning-gym items only; --config.data.source={c.data.source!r} "
          "needs 'math_verify' (or 'exact', or 'auto').")
  if c.model.lora_rank != 0:  # LoRA (models/lora.py) names its own flags.
    lora.check(c.model.lora_rank, c.model.lora_alpha, c.model.lora_targets)
  _validate_reward_methods(c)
  # On-policy distillation (METHODS.md 7): its flags are checked by its module.
  from rlvr_jax.training import distill_credit  # pylint: disable=g-import-not-at-top
  distill_credit.validate(c)


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


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's effective config (a copy): task defaults and the checker filled in.

  - `data.task_kwargs`: for a reasoning-gym task, its entry of
    `tasks.TASK_KWARGS` with the given kwargs over it (`tasks.task_kwargs`).
  - `reward.checker='auto'`: 'reasoning_gym' for reasoning-gym data (its
    exact scorer), 'math_verify' for files and tfds.

  Args:
    config: a validated run config.

  Returns:
    A copy with those fields resolved (what the run uses and saves).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  if c.data.source == "reasoning_gym":
    c.data.task_kwargs = tasks.task_kwargs(c.data.task, dict(c.data.task_kwargs))
  if c.reward.checker == "auto":
    c.reward.checker = _AUTO_CHECKER[c.data.source]
  return c


@dataclasses.dataclass(frozen=True)
class Preflight:
  """What `preflight` built, for the trainer to reuse.

  Attributes:
    config: the resolved config (`resolve`).
    sources: the training source and held-out records.
    longest_prompt: tokens of the longest prompt rendered (held-out set,
      few-shot examples, a sample of training records; SCRL's curriculum
      prompts too).
    context_length: the model's max_position_embeddings.
  """

  config: ml_collections.ConfigDict
  sources: Any
  longest_prompt: int
  context_length: int


def model_config_and_tokenizer_path(source: str) -> tuple[Any, str]:
  """The model's config (without its weights) and where its tokenizer is.

  Args:
    source: `model.source`: an HF directory, a .gguf path, 'smollm2',
      'random:<preset>' or a Hugging Face hub name 'org/name' (`models/hub.py`).

  Returns:
    (ModelConfig, tokenizer path).

  Raises:
    ValueError: an unknown source, naming `--config.model.source`.
  """
  from rlvr_jax.models import config as config_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import hub  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import weights  # pylint: disable=g-import-not-at-top
  try:
    if source.startswith("random:"):
      return config_lib.get_preset(source[len("random:"):]), loader.default_gguf_path()
    path = loader.default_gguf_path() if source == "smollm2" else source
    if hub.is_hub_name(path):
      path = hub.snapshot_dir(path)
    if path.endswith(".gguf") and os.path.isfile(path):
      from rlvr_jax.models import gguf_import  # pylint: disable=g-import-not-at-top
      return gguf_import.config_from_gguf(gguf_import.read_metadata(path), path), path
    if os.path.isdir(path):
      return weights.config_from_hf(path), path
  except (ValueError, FileNotFoundError, KeyError) as e:
    _fail("model.source", source, str(e))
  _fail("model.source", source, "not an HF checkpoint directory, a .gguf file, "
        "'smollm2' or 'random:<preset>'.")
  raise AssertionError("unreachable")


def rendered_prompts(config: ml_collections.ConfigDict, sources: Any, tokenizer: Any
                     ) -> list[str]:
  """The prompts `preflight` measures: held-out, few-shot and sampled training ones.

  With SCRL, each training record gives its curriculum prompt as well.
  """
  c = config
  shots = []
  if c.data.few_shot:
    shots = prompts.draw_examples(sources.train, k=c.data.few_shot, seed=c.data.seed)
  render = lambda record: prompts.render_prompt(
      record, template=c.data.template, instruction=c.data.instruction,
      system_prompt=c.data.system_prompt, tokenizer=tokenizer, few_shot_examples=shots)
  train = []
  for i in range(min(len(sources.train), 4 * PREFLIGHT_TRAIN_RECORDS)):
    record = sources.train[i]
    if record is not None:
      train.append(record)
      if len(train) == PREFLIGHT_TRAIN_RECORDS:
        break
  records = list(sources.eval) + list(shots) + train
  texts = [render(r) for r in records]
  if c.algo.advantage == "scrl":
    from rlvr_jax.training import scrl_credit  # pylint: disable=g-import-not-at-top
    exact = ml_collections.ConfigDict(c.to_dict())
    exact.reward.checker = "exact"  # no worker pool: only its prompts are used
    credit = scrl_credit.ScrlCredit(config=exact, tokenizer=tokenizer, pool=None,
                                    render_plain=render)
    texts += credit.prompts(train)[0]
  return texts


# The last preflight that passed: (its config as JSON, its result).
_last_preflight: tuple[str, Preflight] | None = None


def preflight(config: ml_collections.ConfigDict) -> Preflight:
  """Every check that can fail, before the model's weights load (seconds).

  Validates the flags, resolves the config, builds the data sources (task
  kwargs, files), loads the tokenizer, renders the prompts and checks their
  length against `rl.max_prompt_len`, and P + T (the longer of
  `rl.max_new_tokens` and `train.eval_max_new_tokens`) against the model's
  context length unless `model.allow_long_context`.

  A second call with the same config (equal JSON) as the last one that passed
  returns that result again (with a copy of its config) without redoing the
  work: the binary checks before the trainer starts and the trainer checks
  the same config again.

  Args:
    config: the run config from the command line.

  Returns:
    The resolved config, the data sources and the measured lengths.

  Raises:
    ValueError: naming the `--config.<path>` to change.
  """
  global _last_preflight
  key = config.to_json(sort_keys=True)
  if _last_preflight is not None and _last_preflight[0] == key:
    last = _last_preflight[1]
    return dataclasses.replace(last, config=ml_collections.ConfigDict(last.config.to_dict()))
  validate(config)
  c = resolve(config)
  try:
    sources = data_iterator.make_sources(c.data)
  except (ValueError, FileNotFoundError) as e:
    field = "data.task_kwargs" if "task_kwargs" in str(e) else (
        "data.path" if c.data.source != "reasoning_gym" else "data.task")
    _fail(field, _get(c, field), str(e))
  model_config, tokenizer_path = model_config_and_tokenizer_path(c.model.source)
  from rlvr_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)
  texts = rendered_prompts(c, sources, tokenizer)
  longest = max(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
  if longest > c.rl.max_prompt_len:
    _fail("rl.max_prompt_len", c.rl.max_prompt_len,
          f"a rendered prompt of this run has {longest} tokens (template "
          f"{c.data.template!r}, task {c.data.task!r}, advantage {c.algo.advantage!r}); "
          f"set it to at least {longest}.")
  context = model_config.max_position_embeddings
  new_tokens = max(c.rl.max_new_tokens, c.train.eval_max_new_tokens)
  if c.rl.max_prompt_len + new_tokens > context and not c.model.allow_long_context:
    _fail("rl.max_prompt_len", c.rl.max_prompt_len,
          f"+ max(--config.rl.max_new_tokens, --config.train.eval_max_new_tokens) = "
          f"{c.rl.max_prompt_len + new_tokens} exceeds the model's context length "
          f"max_position_embeddings={context}; shorten them, or pass "
          "--config.model.allow_long_context=True to go beyond it.")
  checked = Preflight(config=c, sources=sources, longest_prompt=longest,
                      context_length=context)
  _last_preflight = (key, checked)
  return checked
