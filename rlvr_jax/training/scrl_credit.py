"""SCRL as a credit-assignment plug-in of the trainer (METHODS.md 3).

Each prompt's group of G rows is split in two halves (`algorithms/scrl.py`
row order): G/2 responses to the curriculum prompt (the problem, its K
subproblems, the instruction to answer in K blocks <p1>..</pK>) and G/2 to
the plain prompt every method is evaluated on.

- Curriculum rows: per-block verification with the prefix rule
  (`rewards/scrl_blocks.py`, on the host), per-position normalization over
  the G/2 curriculum rows of the problem, each position's advantage placed on
  the tokens of its answer span (jitted `scrl.mixed_batch_advantages`).
- Plain rows: `grpo` over their own G/2 siblings, with the run's reward.

With `reward.mask_truncated`, truncated rows of both halves leave the loss
mask (as in `OutcomeCredit`); a truncated curriculum row is malformed anyway
(advantage 0), but without the flag it stays in token-mean denominators. The
`reward/*` metrics are `RewardOutput.step_metrics` of the plain rows, the
same keys every method logs.

Subproblem chains come from the record when it has them (files written by
`experiments.make_subproblems`) and are otherwise computed by the task's
procedural rule (`data/subproblems.py`); a record with no usable chain is
asked as a one-block chain (the problem itself), so the run never stops on
one item. A stored chain longer than `algo.scrl_k` keeps its last K items.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from rlvr_jax.algorithms import scrl
from rlvr_jax.data import prompts as prompts_lib
from rlvr_jax.data import scrl_prompts
from rlvr_jax.data import subproblems
from rlvr_jax.rewards import scorers
from rlvr_jax.rewards import scrl_blocks
from rlvr_jax.training import study_mechanisms

Record = dict[str, Any]


class ScrlCredit:
  """Curriculum + plain halves, per-span advantages on the curriculum half."""

  def __init__(self, *, config, tokenizer, pool, render_plain: Callable[[Record], str]):
    c = config
    self.k = c.algo.scrl_k
    self.group_size = c.rl.group_size
    self.half = c.rl.group_size // 2
    self.render_plain = render_plain
    # Few-shot examples answer in one box, not in K blocks: the curriculum
    # message is asked without them, through the chat template when there is one.
    template = c.data.template
    if template == "few_shot":
      template = "chat" if tokenizer.chat_template else "plain"
    self.render_curriculum = lambda record: prompts_lib.render_prompt(
        record, template=template, instruction="", system_prompt=c.data.system_prompt,
        tokenizer=tokenizer, message=scrl_prompts.curriculum_message(record))
    self.plain_reward_fn = scorers.RewardFunction(
        checker=c.reward.checker, max_response_len=c.rl.max_new_tokens,
        format_weight=c.reward.format_weight, overlong_buffer=c.reward.overlong_buffer,
        pool=pool)
    self.pool = pool
    self.mask_truncated = c.reward.mask_truncated
    self.decode = functools.partial(tokenizer.decode, skip_special_tokens=True)

  def _with_chain(self, record: Record) -> Record:
    """The record with a chain of at most K subproblems.

    A stored chain longer than K (a file made with a larger K) keeps its last
    K subproblems, the hardest ones, ending with the problem itself (the
    procedural rules also keep the last K - 1 steps).
    """
    if record.get("subproblems"):
      return {**record, "subproblems": record["subproblems"][-self.k:]}
    try:
      return subproblems.with_subproblems(record, k=self.k)
    except (subproblems.UnusableItemError, ValueError):
      chain = [{"statement": record["problem"], "ground_truth": record["answer"]}]
      return {**record, "subproblems": chain}

  def prompts(self, records):
    texts, examples = [], []
    for record in records:
      record = self._with_chain(record)
      texts += [self.render_curriculum(record)] * self.half
      texts += [self.render_plain(record)] * self.half
      examples += [record] * self.group_size
    return texts, examples

  def _check(self, pred: str, gold: str) -> float:
    """One block's answer against its ground truth: math-verify in the pool
    (exact comparison without one); subproblem answers are numbers."""
    if self.pool is None:
      return scorers.exact_item(gold, pred)[0]
    scores, _ = self.pool.score([gold], [pred])
    return float(scores[0])

  def advantages(self, examples: Sequence[Record], texts, response_tokens, response_mask,
                 truncated):
    b, _ = response_mask.shape
    p = b // self.group_size
    rows = np.arange(b).reshape(p, 2, self.half)
    cur, plain = rows[:, 0].reshape(-1), rows[:, 1].reshape(-1)
    chains = [examples[i]["subproblems"] for i in cur]
    scores = scrl_blocks.score_curriculum(
        response_tokens[cur], response_mask[cur],
        [[s["ground_truth"] for s in chain] for chain in chains],
        k=self.k, decode=self.decode, check=self._check)
    lengths = response_mask.sum(axis=1)
    plain_scored = self.plain_reward_fn([examples[i] for i in plain],
                                        [texts[i] for i in plain], lengths[plain])
    chain_lengths = np.asarray([len(examples[g * self.group_size]["subproblems"])
                                for g in range(p)], np.int32)
    span_index = np.full(response_mask.shape, -1, np.int32)
    span_index[cur] = scores.span_index
    adv = scrl.mixed_batch_advantages(
        scores.rewards.reshape(p, self.half, self.k),
        plain_scored.rewards.reshape(p, self.half), span_index, response_mask,
        chain_lengths)
    metrics = scrl.scrl_metrics(
        scores.raw.reshape(p, self.half, self.k), scores.rewards.reshape(p, self.half, self.k),
        scores.malformed.reshape(p, self.half), plain_scored.correct.reshape(p, self.half),
        response_mask, chain_lengths)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics.update(study_mechanisms.prefix_rule_shares(scores.raw, scores.rewards))
    # The `reward/*` keys every method logs, over the plain rows (groups of
    # G/2 siblings), the ones every method is evaluated on.
    metrics.update(plain_scored.step_metrics(group_size=self.half))
    metrics.update({
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": float(np.mean(truncated)),
    })
    loss_mask = response_mask
    if self.mask_truncated:
      loss_mask = response_mask * ~np.asarray(truncated, bool)[:, None]
    return np.asarray(adv, np.float32), loss_mask.astype(np.float32), metrics
