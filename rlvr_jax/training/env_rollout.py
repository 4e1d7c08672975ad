"""Environment episodes as the trainer's rollout and credit plug-in (issue 18).

METHODS.md section 8. Selected by `--config.env.name`: 'ecom' (the
e-commerce environment) or 'reasoning_gym:<task>' (a one-turn task with
levels), or several of them comma-separated. `EnvRollout` stands in for both
the trainer's sampler and its credit method, so the trainer's iteration runs
unchanged:

  prompts(records)   -> B = groups x G episode specs {env, seed, level}; the
                        data records are ignored. Each group's environment is
                        drawn by the curriculum's sampler (signal-weighted),
                        its level is the environment's controller's level
                        (or `env.level` when `curriculum.adaptive` is False),
                        its seed the next of a counter; the G episodes of a
                        group share (env, seed, level).
  generate(specs)    -> the episodes (`multiturn.MultiTurnSampler`) in the
                        rollout layout: loss mask on the model's tokens only.
  advantages(...)    -> the `success` channel is the scalar reward; the
                        group estimator (`algo.advantage`) over each group of
                        G whole episodes, broadcast over the model's tokens;
                        each group is then recorded in the curriculum.

Metrics per step: reward/{mean,accuracy,std}, env/<env>/<channel> (the mean
over the step's episodes of that environment that report the channel),
episode/{turns_mean,truncated_frac}, curriculum/<env>/{level,accuracy,weight}.
The state (curriculum and seed counter) goes into the checkpoint's meta and
is restored on resume exactly (`state_dict`). The held-out evaluation plays
a fixed list of episodes greedily: `env.eval_episodes` seeds per environment
at level `env.eval_level` (-1 = the hardest), generated apart from training
(the reasoning-gym 'eval' split; e-commerce seeds offset by 10**9).

Config (checked here, errors name the flag): env.{name, level, max_turns,
max_turn_tokens, max_results, eval_episodes, eval_level} and
curriculum.{adaptive, window, up_threshold, down_threshold, signal_window,
signal_floor, seed}. `rl.stop_strings` does not apply: a model turn stops at
the end-of-turn token or the tool-call close tag.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlvr_jax.algorithms import advantages as advantages_lib
from rlvr_jax.envs import base as env_base
from rlvr_jax.envs import curriculum as curriculum_lib
from rlvr_jax.envs import ecom
from rlvr_jax.envs import reasoning_gym_env
from rlvr_jax.evaluation import heldout
from rlvr_jax.envs import multiturn
from rlvr_jax.sampling import sampler as sampler_lib
from rlvr_jax.training import metrics as metrics_lib

_ECOM_EVAL_OFFSET = 10**9  # e-commerce held-out seeds start here


def env_factories(config: ml_collections.ConfigDict
                  ) -> dict[str, Callable[[str], env_base.Environment]]:
  """Environment name -> factory(split) for `--config.env.name`.

  Args:
    config: the run config (env.name, env.max_turns, env.max_results,
      data.seed).

  Returns:
    An ordered dict from each environment's name (its metric name) to a
    function of the split ('train' or 'eval') that builds one instance.

  Raises:
    ValueError: naming --config.env.name for an unknown or repeated entry.
  """
  c = config
  out: dict[str, Callable[[str], env_base.Environment]] = {}
  for entry in [e.strip() for e in c.env.name.split(",") if e.strip()]:
    if entry == "ecom":
      name = ecom.EcomEnv.name
      make = lambda split: ecom.EcomEnv(max_turns=c.env.max_turns,
                                        max_results=c.env.max_results)
    elif entry.startswith("reasoning_gym:"):
      task = entry[len("reasoning_gym:"):]
      if task not in reasoning_gym_env.LEVELS or task not in reasoning_gym_env.IN_PROCESS_TASKS:
        raise ValueError(f"--config.env.name={c.env.name!r}: reasoning-gym task {task!r} has "
                         f"no level table here; choose from {sorted(reasoning_gym_env.LEVELS)}.")
      name = task
      make = (lambda split, task=task: reasoning_gym_env.ReasoningGymEnv(
          task, data_seed=c.data.seed, split=split))
    else:
      raise ValueError(f"--config.env.name={c.env.name!r}: {entry!r} is not 'ecom' or "
                       "'reasoning_gym:<task>'.")
    if name in out:
      raise ValueError(f"--config.env.name={c.env.name!r} names {name!r} twice.")
    out[name] = make
  if not out:
    raise ValueError(f"--config.env.name={c.env.name!r} names no environment.")
  return out


def _check(config: ml_collections.ConfigDict, num_levels: Mapping[str, int]) -> None:
  c = config
  for path, value in (("env.max_turns", c.env.max_turns),
                      ("env.max_turn_tokens", c.env.max_turn_tokens),
                      ("env.max_results", c.env.max_results),
                      ("env.eval_episodes", c.env.eval_episodes)):
    if value < 1:
      raise ValueError(f"--config.{path}={value!r}: must be >= 1.")
  if c.env.few_shot < 0:
    raise ValueError(f"--config.env.few_shot={c.env.few_shot!r}: must be >= 0.")
  fewest = min(num_levels.values())
  if not 0 <= c.env.level < fewest:
    raise ValueError(f"--config.env.level={c.env.level!r}: must be in [0, {fewest}) "
                     f"(levels: {dict(num_levels)}).")
  if not -1 <= c.env.eval_level < fewest:
    raise ValueError(f"--config.env.eval_level={c.env.eval_level!r}: must be -1 (the "
                     f"hardest) or in [0, {fewest}).")


def _worked_examples(config: ml_collections.ConfigDict,
                     envs: Mapping[str, env_base.Environment]) -> list[tuple[str, str]]:
  """`--config.env.few_shot` worked examples of the one environment, as chat turns."""
  k = config.env.few_shot
  if not k:
    return []
  if len(envs) > 1:
    raise ValueError(f"--config.env.few_shot={k!r}: worked examples need a single "
                     f"environment; --config.env.name={config.env.name!r} names {len(envs)}.")
  (env,) = envs.values()
  try:
    return [turn for i in range(k) for turn in env.worked_example(i)]
  except (NotImplementedError, ValueError) as e:
    raise ValueError(f"--config.env.few_shot={k!r}: {e}") from e


class EnvRollout:
  """Environment episodes for the trainer: its sampler and credit (module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, *, model: Any, tokenizer: Any):
    """Builds the environments, the curriculum and the multi-turn sampler.

    Args:
      config: the run config (env, curriculum, rl, algo, data, reward).
      model: the policy decoder.
      tokenizer: its tokenizer (with a chat template).

    Raises:
      ValueError: naming the --config flag that is out of range.
    """
    c = self.config = config
    self.factories = env_factories(c)
    self.names = tuple(self.factories)
    self.group_size = c.rl.group_size
    self.rows = c.rl.prompts_per_batch * c.rl.group_size
    self._train_envs: dict[str, list[env_base.Environment]] = {}
    probe = {n: make("train") for n, make in self.factories.items()}
    self.num_levels = {n: env.num_levels for n, env in probe.items()}
    _check(c, self.num_levels)
    self._train_envs = {n: [env] for n, env in probe.items()}
    k = c.curriculum
    controllers = {n: curriculum_lib.LevelController(
        num_levels=self.num_levels[n], window=k.window, up_threshold=k.up_threshold,
        down_threshold=k.down_threshold, start_level=c.env.level) for n in self.names}
    sampler = curriculum_lib.EnvSampler(self.names, window=k.signal_window,
                                        floor=k.signal_floor, seed=k.seed)
    self.curriculum = curriculum_lib.Curriculum(controllers, sampler)
    self.adaptive = bool(k.adaptive)
    self.groups_drawn = 0
    self.estimator = advantages_lib.get_estimator(c.algo.advantage)
    try:
      chat = multiturn.ChatTurns.from_tokenizer(
          tokenizer, system_prompt=c.data.system_prompt, examples=_worked_examples(c, probe))
    except ValueError as e:
      raise ValueError(f"--config.model.source={c.model.source!r}: {e}") from e
    self.sampler = multiturn.MultiTurnSampler(
        model, tokenizer, chat, max_prompt_len=c.rl.max_prompt_len,
        max_new_tokens=c.rl.max_new_tokens, max_turn_tokens=c.env.max_turn_tokens)
    self.prompt_len = c.rl.max_prompt_len
    self._episodes: multiturn.Episodes | None = None

  def _envs(self, name: str, count: int) -> list[env_base.Environment]:
    """`count` distinct training instances of environment `name` (kept)."""
    envs = self._train_envs.setdefault(name, [])
    while len(envs) < count:
      envs.append(self.factories[name]("train"))
    return envs[:count]

  # -- the trainer's Credit interface -------------------------------------------

  def prompts(self, records: Sequence[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """B episode specs, the G of a group adjacent; `records` are not used."""
    groups = len(records)
    names = (self.curriculum.sampler.sample(groups) if len(self.names) > 1
             else [self.names[0]] * groups)
    specs = []
    for name in names:
      level = self.curriculum.controllers[name].level if self.adaptive else self.config.env.level
      spec = {"env": name, "seed": self.groups_drawn, "level": int(level)}
      self.groups_drawn += 1
      specs += [spec] * self.group_size
    return specs, specs

  def advantages(self, examples: Sequence[Mapping[str, Any]], texts: Sequence[str],
                 response_tokens: np.ndarray, response_mask: np.ndarray, truncated: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Group advantages of the success channel over whole episodes (module docstring).

    Args:
      examples: the B specs of `prompts`.
      texts: B transcripts of the model's turns (unused).
      response_tokens: [B, T] (unused).
      response_mask: [B, T] the model's tokens.
      truncated: [B] episodes cut by the response width.

    Returns:
      (advantages [B, T], loss mask [B, T], metrics).
    """
    del texts, response_tokens
    episodes = self._episodes
    if episodes is None or len(episodes.rewards) != len(examples):
      raise RuntimeError("advantages() needs the episodes of the preceding generate()")
    success = np.asarray([r[env_base.SUCCESS] for r in episodes.rewards], np.float32)
    adv = self.estimator(jnp.asarray(success), group_size=self.group_size)
    adv = np.asarray(advantages_lib.broadcast_to_tokens(adv, jnp.asarray(response_mask)))
    loss_mask = response_mask
    if self.config.reward.mask_truncated:
      loss_mask = response_mask * (~truncated)[:, None]
    g = self.group_size
    for j in range(len(examples) // g):
      spec = examples[j * g]
      group = success[j * g:(j + 1) * g]
      if self.adaptive:
        self.curriculum.record(spec["env"], spec["level"], group, group)
      else:
        self.curriculum.sampler.record(spec["env"], group)
    metrics = channel_means(examples, episodes.rewards)
    metrics.update({
        "reward/mean": float(success.mean()),
        "reward/accuracy": float(success.mean()),
        "reward/std": float(success.std()),
        "episode/turns_mean": float(episodes.num_turns.mean()),
        "episode/truncated_frac": float(np.mean(truncated)),
        "response/length_mean": float(response_mask.sum(axis=1).mean()),
    })
    metrics.update(self.curriculum_metrics())
    return adv.astype(np.float32), loss_mask.astype(np.float32), metrics

  def curriculum_metrics(self) -> dict[str, float]:
    """curriculum/<env>/{level,weight} and, when adaptive, /accuracy (finite)."""
    out = {}
    for key, value in self.curriculum.metrics().items():
      if key.endswith("/accuracy") and not np.isfinite(value):
        continue  # no episode at the current level yet
      out[key] = float(value)
    return out

  # -- the trainer's Sampler interface ------------------------------------------

  def generate(self, specs: Sequence[Mapping[str, Any]], *, key: jax.Array,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               stop_strings: Sequence[str] = (), greedy: bool = False,
               params: Any = None) -> sampler_lib.SampleOutput:
    """Plays the episodes of `specs`; the rollout layout as a SampleOutput.

    `stop_strings` (the text tasks' `rl.stop_strings`) is ignored: model
    turns stop at the end-of-turn token or the tool-call close tag. `params`
    are the policy's (the trainer's one train state).
    """
    del stop_strings
    count = collections.Counter(s["env"] for s in specs)
    pools = {n: iter(self._envs(n, k)) for n, k in count.items()}
    envs = [next(pools[s["env"]]) for s in specs]
    episodes = self.sampler.rollout(
        envs, seeds=[s["seed"] for s in specs], levels=[s["level"] for s in specs], key=key,
        temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy, params=params)
    self._episodes = episodes
    return _as_sample_output(episodes)

  # -- held-out evaluation ------------------------------------------------------

  def eval_specs(self) -> list[dict[str, Any]]:
    """The fixed held-out episodes: eval_episodes seeds per environment."""
    c = self.config
    specs = []
    for name in self.names:
      level = c.env.eval_level if c.env.eval_level >= 0 else self.num_levels[name] - 1
      offset = _ECOM_EVAL_OFFSET if name == ecom.EcomEnv.name else 0
      specs += [{"env": name, "seed": offset + k, "level": level}
                for k in range(c.env.eval_episodes)]
    return specs

  def eval_records(self) -> list[dict[str, str]]:
    """The held-out episodes as records for `HeldOutResult.to_json`."""
    return [{"problem": f"{s['env']} seed {s['seed']} level {s['level']}", "answer": ""}
            for s in self.eval_specs()]

  def evaluate(self, *, batch_size: int, params: Any = None) -> heldout.HeldOutResult:
    """Greedy success over `eval_specs()` with the policy's parameters.

    Args:
      batch_size: episodes per rollout call.
      params: the policy's parameters (the trainer's train state).

    Returns:
      HeldOutResult: correct = success, formatted = the 'format' channel
      where the environment has one, else 'checked_out', else 0, channels =
      the per-channel means 'env/<env>/<channel>'.
    """
    specs = self.eval_specs()
    envs = {n: [self.factories[n]("eval") for _ in range(min(batch_size, len(specs)))]
            for n in self.names}
    rewards, lengths, responses = [], [], []
    for start in range(0, len(specs), batch_size):
      chunk = specs[start:start + batch_size]
      pools = {n: iter(envs[n]) for n in self.names}
      episodes = self.sampler.rollout(
          [next(pools[s["env"]]) for s in chunk], seeds=[s["seed"] for s in chunk],
          levels=[s["level"] for s in chunk], key=jax.random.key(0), greedy=True,
          params=params)
      rewards += episodes.rewards
      lengths += episodes.response_mask.sum(axis=1).tolist()
      responses += ["\n---\n".join(t) for t in episodes.turns]
    formatted = [r.get("format", r.get("checked_out", 0.0)) for r in rewards]
    return heldout.HeldOutResult(
        correct=np.asarray([r[env_base.SUCCESS] for r in rewards], np.float32),
        formatted=np.asarray(formatted, np.float32), lengths=np.asarray(lengths),
        responses=responses, channels=channel_means(specs, rewards))

  # -- checkpoint state and plots -------------------------------------------------

  def state_dict(self) -> dict[str, Any]:
    """The curriculum's state and the seed counter (JSON types)."""
    return {"curriculum": self.curriculum.state_dict(), "groups_drawn": self.groups_drawn}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores `state_dict()` output."""
    self.curriculum.load_state_dict(state["curriculum"])
    self.groups_drawn = int(state["groups_drawn"])

  def plot_levels(self, metrics_path: str, out_path: str) -> str:
    """Each environment's level over steps (from metrics.jsonl) into a PNG."""
    keys = tuple(f"curriculum/{n}/level" for n in self.names)
    return metrics_lib.plot_curves(metrics_path, keys, out_path, title="curriculum levels")


def channel_means(specs: Sequence[Mapping[str, Any]], rewards: Sequence[Mapping[str, float]]
                  ) -> dict[str, float]:
  """'env/<env>/<channel>': the mean over the episodes of <env> that report <channel>.

  Args:
    specs: B episode specs ({'env', ...}).
    rewards: B reward-channel dicts.

  Returns:
    One mean per (environment, channel) seen.
  """
  values: dict[str, list[float]] = collections.defaultdict(list)
  for spec, channels in zip(specs, rewards):
    for channel, value in channels.items():
      values[f"env/{spec['env']}/{channel}"].append(float(value))
  return {k: float(np.mean(v)) for k, v in sorted(values.items())}


def _as_sample_output(episodes: multiturn.Episodes) -> sampler_lib.SampleOutput:
  """Episodes in the single-turn sampler's output type (what the trainer reads)."""
  return sampler_lib.SampleOutput(
      tokens=episodes.tokens, input_mask=episodes.input_mask,
      response_mask=episodes.response_mask, logp=episodes.logp,
      texts=["\n".join(t) for t in episodes.turns],
      finish_reasons=["length" if t else "stop" for t in episodes.truncated],
      prompt_len=episodes.prompt_len)
