"""Reward channels as a credit-assignment plug-in of the trainer (METHODS.md 6).

`ChannelCredit` gets `RewardChannels` (`rewards/channels.py`) for every
rollout of a batch, derives the scalar reward, and turns it (or, for GDPO,
the channels) into token advantages [B, T]. The channels come from one of:

- the built-in reward (`scorers.RewardFunction`): correct, format, overlong
  (`channels.from_reward_output`; the weights are (1, reward.format_weight,
  1));
- a user function, `--config.reward.fn=pkg.mod:fn` (`channels.load_reward_fn`,
  signature in `rewards/channels.py`);
- the rubric task (`--config.data.task=rubric`): one verdict per criterion
  (`data/rubric.py`), combined with the prompt's static weights, or with
  POW3R's (`--config.reward.pow3r`, METHODS.md 6.3);
- CIRCA, label-free (`--config.reward.label_free`, METHODS.md 6.5): the
  cluster vote of the G answers (the checker pool clusters them) and the
  self-certainty from the statistics pass, which the trainer then runs before
  this step and passes in as `stats['self_certainty']` [B]. No gold answer
  enters the training reward; `reward/accuracy` is still measured against
  the gold answers, as a metric only.

`--config.reward.channel_weights="name=w,..."` overrides channel weights (the
lambda of GDPO). The scalar r = sum_c lambda_c r_c, and then:

- `--config.algo.advantage=gdpo`: GDPO on the channels (METHODS.md 6.2),
  `advantages.gdpo(values [B, C], weights=lambda)`;
- any other estimator: that estimator on the scalar.

Derived scalars replace the weighted sum where a method asks for it:
- POW3R on subproblem data (records with SCRL chains, `data/subproblems.py`;
  the plain prompt is sampled): criteria = "intermediate answer j named in
  the response" for each subproblem but the last (the `longtrace` entity
  test), and "final answer correct", all weight 1 in one category;
- LongTraceRL (`--config.reward.longtrace_eta` > 0, METHODS.md 6.4): the
  intermediate subproblem answers are the gold entities, and
  R = 0 if wrong else (1 - eta) + eta r_rub / max_group r_rub.

Metrics: `reward/channel/<name>` (each channel's mean over the batch; for the
rubric, each criterion kind's pass rate over the rows that have it), and the
`reward/*` keys of `RewardOutput.step_metrics` that every method logs, with
`reward/mean` the training scalar's mean.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from rlvr_jax.algorithms import advantages as advantages_lib
from rlvr_jax.algorithms import circa
from rlvr_jax.algorithms import longtrace
from rlvr_jax.algorithms import pow3r
from rlvr_jax.data import rubric
from rlvr_jax.data import subproblems
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import channels as channels_lib
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers

Record = dict[str, Any]


def parse_channel_weights(spec: str) -> dict[str, float]:
  """`--config.reward.channel_weights` "name=w,name=w" -> {name: w}.

  Args:
    spec: the flag's value; '' gives {}.

  Returns:
    Channel name -> finite weight.

  Raises:
    ValueError: naming the flag, for an item that is not name=number, a
      repeated name or a non-finite weight.
  """
  weights: dict[str, float] = {}
  flag = f"--config.reward.channel_weights={spec!r}"
  for item in (x.strip() for x in str(spec).split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    name = name.strip()
    try:
      weight = float(value)
    except ValueError:
      weight = float("nan")
    if not sep or not name or not np.isfinite(weight):
      raise ValueError(f"{flag}: {item!r} is not name=<finite number>.")
    if name in weights:
      raise ValueError(f"{flag}: channel {name!r} given twice.")
    weights[name] = weight
  return weights


def with_chain(record: Record, k: int) -> Record:
  """The record with its subproblem chain (at most K items), as SCRL builds it.

  A stored chain keeps its last K items; otherwise the task's procedural rule
  makes one; a record without a usable chain gets the one-item chain of the
  problem itself (no intermediate entity).
  """
  if record.get("subproblems"):
    return {**record, "subproblems": record["subproblems"][-k:]}
  try:
    return subproblems.with_subproblems(record, k=k)
  except (subproblems.UnusableItemError, ValueError):
    return {**record, "subproblems": [{"statement": record["problem"],
                                       "ground_truth": record["answer"]}]}


def intermediate_entities(example: Mapping[str, Any]) -> list[str]:
  """The gold intermediate entities of a record: its subproblem answers but
  the last (the last is the problem's own answer)."""
  chain = example.get("subproblems") or []
  return [str(s["ground_truth"]) for s in chain[:-1]]


def _outcome(rewards: np.ndarray, correct: np.ndarray, *, reasons=None,
             fmt: np.ndarray | None = None,
             overlong: np.ndarray | None = None) -> scorers.RewardOutput:
  """A RewardOutput for `step_metrics` (same `reward/*` keys for every method)."""
  zeros = np.zeros_like(correct, dtype=np.float32)
  if reasons is None:
    reasons = [None if c > 0 else f"{math_checker.WRONG}: scored 0" for c in correct]
  return scorers.RewardOutput(
      rewards=np.asarray(rewards, np.float32), correct=np.asarray(correct, np.float32),
      format=zeros if fmt is None else np.asarray(fmt, np.float32),
      overlong=zeros if overlong is None else np.asarray(overlong, np.float32),
      reasons=list(reasons))


class RubricReward:
  """The rubric task's reward with the prompts' static weights (evaluation).

  Called like a `scorers.RewardFunction`; `correct` is strict completion
  (every criterion passed), `rewards` the static weighted criterion score
  sum_j w_j v_j / sum_j w_j (METHODS.md 6.3: evaluation keeps the static
  weights), `format` the clean-box indicator as for every task.
  """

  def __call__(self, examples, responses, response_lengths):
    del response_lengths
    criteria = [rubric.criteria_of(e) for e in examples]
    M = max(len(c) for c in criteria)
    verdicts = rubric.verdict_matrix(criteria, responses, max_criteria=M)
    arrays = rubric.criteria_arrays(criteria, max_criteria=M)
    static = np.asarray(pow3r.weighted_rewards(
        verdicts, arrays.weights, group_size=1, criterion_mask=arrays.mask))
    strict = np.all((verdicts > 0) | ~arrays.mask, axis=1).astype(np.float32)
    fmt = [answers.has_clean_box(t if isinstance(t, str) else "") for t in responses]
    return _outcome(static, strict, fmt=np.asarray(fmt, np.float32), reasons=[
        None if s else f"{math_checker.WRONG}: "
        f"{int(np.sum((verdicts[i] == 0) & arrays.mask[i]))} criteria failed"
        for i, s in enumerate(strict)])


class ChannelCredit:
  """Reward channels -> scalar (or GDPO on the channels) -> [B, T] advantages."""

  def __init__(self, *, config, render: Callable[[Record], str],
               reward_fn: scorers.RewardFunction,
               pool: math_checker.MathChecker | None):
    """Configures the plug-in from the run's config (flags in the module docstring).

    Args:
      config: the run's ConfigDict (already validated by config_checks).
      render: record -> prompt text.
      reward_fn: the built-in training reward.
      pool: the checker pool (CIRCA clusters answers with it), or None.
    """
    c = config
    self.group_size = c.rl.group_size
    self.estimator = c.algo.advantage
    self.render = render
    self.reward_fn = reward_fn
    self.mask_truncated = c.reward.mask_truncated
    self.format_weight = c.reward.format_weight
    self.weights = parse_channel_weights(c.reward.channel_weights)
    self.user_fn = channels_lib.load_reward_fn(c.reward.fn) if c.reward.fn else None
    self.rubric = c.data.task == "rubric"
    self.pow3r = c.reward.pow3r
    self.pow3r_flags = dict(a=c.reward.pow3r_a, b=c.reward.pow3r_b,
                            alpha_min=c.reward.pow3r_alpha_min,
                            alpha_max=c.reward.pow3r_alpha_max)
    self.eta = c.reward.longtrace_eta
    self.label_free = c.reward.label_free
    self.chains = (self.eta > 0 or self.pow3r) and not self.rubric
    self.scrl_k = c.algo.scrl_k
    if pool is not None:
      self.equivalent = circa.checker_equivalence(pool)
    else:
      self.equivalent = lambda refs, cands: [
          float(answers.normalize_answer(r) == answers.normalize_answer(x))
          for r, x in zip(refs, cands)]
    # The trainer runs the statistics pass before `advantages` and passes
    # {'self_certainty': [B]} when this is True.
    self.needs_self_certainty = self.label_free

  def prompts(self, records):
    texts, examples = [], []
    for record in records:
      if self.chains:
        record = with_chain(record, self.scrl_k)
      texts += [self.render(record)] * self.group_size
      examples += [record] * self.group_size
    return texts, examples

  # -- channels of one batch -------------------------------------------------

  def _weighted(self, ch: channels_lib.RewardChannels) -> channels_lib.RewardChannels:
    unknown = sorted(set(self.weights) - set(ch.names))
    if unknown:
      raise ValueError(f"--config.reward.channel_weights names {unknown}, but the reward's "
                       f"channels are {list(ch.names)}.")
    weights = np.array([self.weights.get(n, w) for n, w in zip(ch.names, ch.weights)],
                       np.float32)
    return channels_lib.RewardChannels(ch.names, ch.values, weights, ch.reasons)

  def _rubric(self, examples, texts):
    """Criterion verdicts -> (scalar [B], outcome, channel metrics)."""
    G = self.group_size
    criteria = [rubric.criteria_of(e) for e in examples]
    M = max(len(c) for c in criteria)
    verdicts = rubric.verdict_matrix(criteria, texts, max_criteria=M)
    arrays = rubric.criteria_arrays(criteria[::G], max_criteria=M)
    kwargs = dict(group_size=G, criterion_mask=arrays.mask)
    static = np.asarray(pow3r.weighted_rewards(verdicts, arrays.weights, **kwargs))
    scalar = static
    metrics = {"reward/channel/static": float(static.mean())}
    if self.pow3r:
      scalar = np.asarray(pow3r.pow3r_rewards(
          verdicts, arrays.weights, categories=arrays.categories, **kwargs,
          **self.pow3r_flags))
      metrics["reward/channel/pow3r"] = float(scalar.mean())
    kinds = np.array([[c.kind for c in row] + [""] * (M - len(row)) for row in criteria])
    for kind in sorted(set(kinds.ravel()) - {""}):
      metrics[f"reward/channel/{kind}"] = float(verdicts[kinds == kind].mean())
    outcome = RubricReward()(examples, texts, None)
    return scalar, _outcome(scalar, outcome.correct, reasons=outcome.reasons,
                            fmt=outcome.format), metrics

  def _subproblem_verdicts(self, examples, texts, correct):
    """[B, K] verdicts: intermediate entity j named, then the final answer correct."""
    entities = [intermediate_entities(e) for e in examples]
    K = max(len(e) for e in entities) + 1
    verdicts = np.zeros((len(texts), K), np.float32)
    mask = np.zeros((len(texts) // self.group_size, K), bool)
    for i, (text, row) in enumerate(zip(texts, entities)):
      for j, entity in enumerate(row):
        verdicts[i, j] = longtrace.entity_fraction(text if isinstance(text, str) else "",
                                                   [entity])
      verdicts[i, K - 1] = correct[i]
      mask[i // self.group_size, list(range(len(row))) + [K - 1]] = True
    return verdicts, mask

  def advantages(self, examples, texts, response_tokens, response_mask, truncated,
                 stats: Mapping[str, np.ndarray] | None = None):
    """As `credit.Credit.advantages`; `stats['self_certainty']` [B] when label-free."""
    del response_tokens
    G = self.group_size
    lengths = response_mask.sum(axis=1)
    metrics: dict[str, float] = {}
    ch = None
    if self.rubric:
      scalar, outcome, metrics = self._rubric(examples, texts)
    else:
      scored = None
      if self.user_fn is None:
        scored = self.reward_fn(examples, texts, lengths)
      if self.label_free:
        if stats is None or "self_certainty" not in stats:
          raise ValueError("label-free rewards need stats['self_certainty'] from the "
                           "statistics pass.")
        votes = circa.cluster_votes(texts, group_size=G, equivalent=self.equivalent)
        certainty = np.asarray(stats["self_certainty"], np.float32).reshape(len(texts))
        ch = channels_lib.RewardChannels(
            names=("cluster_vote", "self_certainty"),
            values=np.stack([votes, certainty], axis=1).astype(np.float32),
            weights=np.ones(2, np.float32), reasons=list(scored.reasons))
      elif self.user_fn is not None:
        ch = channels_lib.call_reward_fn(self.user_fn, examples, texts)
      else:
        ch = channels_lib.from_reward_output(scored, format_weight=self.format_weight)
      ch = self._weighted(ch)
      scalar = ch.scalar()
      if scored is None:
        # A user function: its 'correct', 'format', 'overlong' channels where
        # it returns them; otherwise a row counts as correct when r > 0.
        get = lambda name, default: ch.channel(name) if name in ch.names else default
        zeros = np.zeros_like(scalar)
        scored = _outcome(scalar, get("correct", (scalar > 0).astype(np.float32)),
                          fmt=get("format", zeros), overlong=get("overlong", zeros))
      correct = scored.correct
      if self.eta > 0:
        rub = longtrace.rubric_fractions(texts, [intermediate_entities(e) for e in examples])
        scalar = np.asarray(longtrace.gated_rewards(
            jnp.asarray(correct), jnp.asarray(rub), group_size=G, eta=self.eta))
        metrics["reward/channel/entities"] = float(rub.mean())
        metrics["reward/channel/longtrace"] = float(scalar.mean())
      elif self.pow3r:
        verdicts, mask = self._subproblem_verdicts(examples, texts, correct)
        scalar = np.asarray(pow3r.pow3r_rewards(
            verdicts, np.ones(mask.shape, np.float32), group_size=G,
            criterion_mask=mask, **self.pow3r_flags))
        for j in range(verdicts.shape[1] - 1):
          rows = np.repeat(mask[:, j], G)
          if rows.any():
            metrics[f"reward/channel/subproblem_{j + 1}"] = float(verdicts[rows, j].mean())
        metrics["reward/channel/pow3r"] = float(scalar.mean())
      outcome = _outcome(scalar, correct, reasons=scored.reasons, fmt=scored.format,
                         overlong=scored.overlong)
      for c, name in enumerate(ch.names):
        metrics[f"reward/channel/{name}"] = float(ch.values[:, c].mean())

    if self.estimator == "gdpo" and ch is not None and not (self.eta > 0 or self.pow3r):
      adv = advantages_lib.get_estimator("gdpo")(jnp.asarray(ch.values), group_size=G,
                                                 weights=jnp.asarray(ch.weights))
    else:
      adv = advantages_lib.get_estimator(self.estimator)(jnp.asarray(scalar), group_size=G)
    adv = np.asarray(advantages_lib.broadcast_to_tokens(adv, jnp.asarray(response_mask)))
    loss_mask = response_mask
    if self.mask_truncated:
      loss_mask = response_mask * (~np.asarray(truncated, bool))[:, None]
    metrics.update(outcome.step_metrics(group_size=G))
    metrics.update({
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": float(np.mean(truncated)),
    })
    return adv.astype(np.float32), loss_mask.astype(np.float32), metrics
