"""On-policy distillation as a credit-assignment plug-in of the trainer (METHODS.md 7).

`--config.algo.advantage=opd | distil` picks the method: OPD and DistIL replace
the advantage estimator (the outcome estimator becomes an optional extra term,
`--config.distill.outcome_estimator` weighted by `--config.distill.outcome_coef`),
so they are values of the estimator flag, as SCRL is.

The trainer runs its statistics pass (old log-probs) before the credit step
for these methods, as for CIRCA's self-certainty (`needs_old_stats`), and
passes its outputs with the rollout tokens as `stats`:

- OPD (7.1): the teacher (`training/teacher.py`, `--config.distill.teacher`)
  scores the sampled tokens in one more forward pass; the advantage is
  `distill.opd_advantages(teacher_logp, old_logp, ...)`: c_opd *
  (log pi_T - log pi_theta) per token (`--config.distill.opd_coef`), plus
  c_out * A_out. The student's log-probs are the statistics pass's old
  log-probs at the sampling temperature (the distribution that sampled); the
  teacher's are at temperature 1.
- DistIL (7.3): the verifier's verdict on each response and the reference
  answer are rendered into a feedback-conditioned prompt
  (`data/feedback.py`, `--config.distill.feedback_template`), the policy
  itself runs on (that prompt + the same response tokens) aligned by
  `feedback.build_teacher_batch` (P' = `--config.distill.max_teacher_prompt_len`,
  one width so it compiles once) and keeps its top k tokens per position
  (`--config.distill.topk`); the per-token top-k forward cross-entropy of the
  student (its hidden states from the statistics pass) gives the
  future-credit advantages (`distill.future_credit_advantages`, weight
  `--config.distill.future_coef`), and the update adds the CE itself as a
  loss term (`distil_loss_term`, weight `--config.distill.ce_coef`) with the
  policy loss's aggregation. Teacher and student logits are both taken at
  temperature 1 (the CE compares the models, not the sampler). The teacher ids
  and probabilities [B, T, k] go into the update batch (`update_inputs`).
- Horizons (7.2, `--config.distill.horizon=full|topd|popd`, with
  `distill.rho`, `distill.popd_h0`, `distill.popd_dh`, `distill.popd_dk`):
  `sampler(step)` returns a Sampler whose T is the step's horizon H (one per
  value, cached), so the rollout stops at H, the truncated rows stay in the
  loss, and the statistics pass and the update run on [B, P + H] rows.

The outcome reward is always computed (for the `reward/*` metrics every
method logs, DistIL's verdicts and the optional outcome term).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.algorithms import advantages as advantages_lib
from rlvr_jax.algorithms import distill
from rlvr_jax.data import feedback
from rlvr_jax.models.decoder import positions_from_mask
from rlvr_jax.training import step as step_lib

Record = dict[str, Any]
Array = jax.Array
METHODS = ("opd", "distil")
OUTCOME_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def _fail(path: str, value: Any, why: str) -> None:
  raise ValueError(f"--config.{path}={value!r}: {why}")


def horizon_of(config: ml_collections.ConfigDict, step: int) -> int:
  """The rollout horizon H of `step` under `--config.distill.horizon` (METHODS.md 7.2)."""
  d = config.distill
  return distill.horizon(step, schedule=d.horizon, max_response_len=config.rl.max_new_tokens,
                         rho=d.rho, h0=d.popd_h0, dh=d.popd_dh, dk=d.popd_dk)


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks the distillation flags (no I/O); a no-op for configs without them.

  Raises:
    ValueError: naming the `--config.<path>` to change.
  """
  if "distill" not in c:
    if c.algo.advantage in METHODS:
      _fail("algo.advantage", c.algo.advantage, "needs the config's distill section "
            "(experiments/configs/default.py).")
    return
  d = c.distill
  method = c.algo.advantage
  horizon_of(c, 0)  # Schedule name and its parameters (errors name the flag).
  if d.horizon != "full" and method not in METHODS:
    _fail("distill.horizon", d.horizon, "rollout horizons are for --config.algo.advantage="
          "opd or distil.")
  if method not in METHODS:
    return
  if c.train.old_logp != "recompute":
    _fail("train.old_logp", c.train.old_logp,
          f"{method} takes the student's log-probs from the statistics pass: set it to "
          "'recompute'.")
  if d.outcome_estimator not in OUTCOME_ESTIMATORS:
    _fail("distill.outcome_estimator", d.outcome_estimator,
          f"choose one of {list(OUTCOME_ESTIMATORS)}.")
  for path in ("opd_coef", "outcome_coef", "ce_coef", "future_coef"):
    if d[path] < 0:
      _fail(f"distill.{path}", d[path], "must be >= 0.")
  if (c.reward.fn or c.reward.label_free or c.reward.pow3r or c.reward.longtrace_eta > 0
      or c.reward.channel_weights or c.data.task == "rubric"):
    _fail("algo.advantage", method,
          "distillation uses the built-in outcome reward; reward.fn, reward.label_free, "
          "reward.pow3r, reward.longtrace_eta, reward.channel_weights and the rubric task "
          "are not supported with it.")
  rows = c.rl.prompts_per_batch * c.rl.group_size
  if rows % c.rl.micro_batches:
    _fail("rl.micro_batches", c.rl.micro_batches,
          f"{method} runs the statistics pass on the whole rollout batch: must divide "
          f"prompts_per_batch * group_size = {rows}.")
  if method == "opd" and not d.teacher:
    _fail("distill.teacher", d.teacher, "OPD needs a teacher: a trainer run folder, an HF "
          "folder, a .gguf, 'smollm2' or 'random:<preset>'.")
  if method == "distil":
    if d.feedback_template not in feedback.FEEDBACK_TEMPLATES:
      _fail("distill.feedback_template", d.feedback_template,
            f"choose one of {sorted(feedback.FEEDBACK_TEMPLATES)}.")
    if d.topk < 1:
      _fail("distill.topk", d.topk, "must be >= 1.")
    if d.max_teacher_prompt_len < 1:
      _fail("distill.max_teacher_prompt_len", d.max_teacher_prompt_len, "must be >= 1.")


# ---------------------------------------------------------------------------
# DistIL's device computations.
# ---------------------------------------------------------------------------


def distil_teacher_stats(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                         teacher_batch: Mapping[str, Array], student_hidden: Array, *,
                         teacher_prompt_len: int, num_micro: int, k: int,
                         chunk_size: int | None) -> dict[str, Array]:
  """The self-teacher's top k and the student's top-k CE, no gradient (METHODS.md 7.3).

  The policy runs on the feedback-conditioned rows; its logits at P' - 1 + t
  (predicting response token t) give the top-k ids and renormalized
  probabilities; the student's logits (the LM head on its statistics-pass
  hidden states at P - 1 + t) give CE[i, t] against them. The LM head runs
  chunk by chunk over T (`distill.map_token_chunks`), micro-batch by
  micro-batch, so no [B, T, V] array is held.

  Args:
    graphdef, params, rest: the split policy.
    teacher_batch: 'tokens' [B, P' + T] int32 and 'input_mask' [B, P' + T]
      bool (`feedback.build_teacher_batch`).
    student_hidden: [B, T, D] the student's final hidden states.
    teacher_prompt_len: P'.
    num_micro: micro-batches M.
    k: teacher tokens kept.
    chunk_size: LM-head chunk over T (None = whole T).

  Returns:
    {'topk_ids' [B, T, k] int32, 'topk_probs' [B, T, k] float32, 'ce' [B, T]
    float32}.
  """
  micro = step_lib.split_micro_batches(
      {"tokens": teacher_batch["tokens"], "input_mask": teacher_batch["input_mask"],
       "hidden": student_hidden}, num_micro)

  def one(mb):
    model = nnx.merge(graphdef, params, rest)
    positions = positions_from_mask(mb["input_mask"])
    hidden = model(mb["tokens"][:, :-1], positions[:, :-1], mb["input_mask"][:, :-1])
    hidden = hidden[:, teacher_prompt_len - 1:]
    ids, probs = distill.map_token_chunks(
        lambda h: distill.teacher_topk(model.logits(h), k=k), hidden, chunk_size=chunk_size)
    ce = distill.map_token_chunks(
        lambda h, i, p: distill.topk_cross_entropy(model.logits(h), i, p),
        mb["hidden"].astype(hidden.dtype), ids, probs, chunk_size=chunk_size)
    return {"topk_ids": ids, "topk_probs": probs, "ce": ce}

  out = jax.lax.map(one, micro)
  return jax.tree.map(lambda x: jax.lax.stop_gradient(step_lib.merge_micro_batches(x)), out)


def distil_loss_term(model: Any, hidden: Array, topk_ids: Array, topk_probs: Array,
                     mask: Array, *, denominator: Array, loss_agg: str,
                     max_response_len: int | None,
                     chunk_size: int | None) -> Array:
  """One micro-batch's share of DistIL's CE loss: numerator / mini-batch denominator.

  CE[i, t] = `distill.topk_cross_entropy` of the student's logits (the LM head
  on `hidden`, chunked over T) against the teacher's top k; the numerator is
  `distill.distil_loss_pair(CE, m, agg)`'s, divided by the whole mini-batch's
  `losses.aggregation_denominator` (the policy term's), so micro-batches add
  up to the mini-batch loss (METHODS.md 1.3, 7.3).

  Args:
    model: the student decoder (its LM head).
    hidden: [B, T, D] the student's final hidden states (differentiated).
    topk_ids: [B, T, k] int32 teacher ids.
    topk_probs: [B, T, k] float32 teacher probabilities.
    mask: [B, T] response mask.
    denominator: the mini-batch's loss denominator.
    loss_agg: `--config.algo.loss_agg`.
    max_response_len: T_max for seq_mean_token_sum_norm.
    chunk_size: LM-head chunk over T.

  Returns:
    A float32 scalar.
  """
  ce = distill.map_token_chunks(
      lambda h, i, p: distill.topk_cross_entropy(model.logits(h), i, p),
      hidden, topk_ids, topk_probs, chunk_size=chunk_size)
  numerator, _ = distill.distil_loss_pair(ce, mask, loss_agg=loss_agg,
                                         max_response_len=max_response_len)
  return numerator / jnp.maximum(denominator, 1e-8)


# ---------------------------------------------------------------------------
# The plug-in.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
  """Arrays of the last credit step that go into the update batch."""
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class DistillCredit:
  """OPD or DistIL advantages [B, T] (module docstring)."""

  # The trainer runs its statistics pass before `advantages` and passes
  # {'old_logp', 'entropy', 'hidden' (DistIL), 'tokens', 'input_mask'}.
  needs_old_stats = True

  def __init__(self, *, config: ml_collections.ConfigDict, trainer: Any,
               render: Callable[[Record], str], reward_fn: Any,
               few_shot_examples: Sequence[Record] = ()):
    """Configures the plug-in; for OPD, loads the teacher.

    Args:
      config: the run's (validated) config.
      trainer: the Trainer; its mesh, tokenizer, model and, at call time, its
        graphdef, params, rest, prompt_len and loss_config are used.
      render: record -> the student's prompt text.
      reward_fn: the built-in outcome reward.
      few_shot_examples: the run's worked examples (DistIL's teacher prompt
        keeps them).
    """
    c = config
    self.config = c
    self.method = c.algo.advantage
    # DistIL's CE term trains every loss token: the update's group filter
    # (`credit.select_groups`) keeps groups whose advantages are all 0.
    self.token_loss = self.method == "distil"
    self.trainer = trainer
    self.group_size = c.rl.group_size
    self.render = render
    self.reward_fn = reward_fn
    self.outcome_estimator = advantages_lib.get_estimator(c.distill.outcome_estimator)
    self.mask_truncated = c.reward.mask_truncated
    self.shots = list(few_shot_examples)
    self._samplers: dict[int, Any] = {}
    self._pending = _Pending()
    self._teacher_fn = None
    self._distil_fn = None
    self.teacher = None
    if self.method == "opd":
      from rlvr_jax.training import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
      self.teacher = teacher_lib.load_teacher(
          c.distill.teacher, student_tokenizer=trainer.tokenizer,
          student_source=c.model.source, dtype=c.model.dtype,
          param_dtype=c.model.param_dtype, mesh=trainer.mesh)

  # -- horizons (METHODS.md 7.2) ------------------------------------------------

  def rollout_sampler(self, step: int, full: Any) -> Any:
    """The rollout sampler of `step`: `full` at the full horizon, else one of T = H.

    A horizon's sampler is `full`'s (model, prompt width, mesh, EOS ids) with
    max_new_tokens = H, built once per H value and cached.
    """
    from rlvr_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
    h = horizon_of(self.config, step)
    if h == full.max_new_tokens:
      return full
    if h not in self._samplers:
      self._samplers[h] = sampler_lib.Sampler(
          full.model, full.tokenizer, max_prompt_len=full.max_prompt_len, max_new_tokens=h,
          mesh=full.mesh, prompt_bucket=full.prompt_bucket, eos_token_ids=full.eos_token_ids)
    return self._samplers[h]

  # -- the credit step ------------------------------------------------------------

  def prompts(self, records):
    texts, examples = [], []
    for record in records:
      texts += [self.render(record)] * self.group_size
      examples += [record] * self.group_size
    return texts, examples

  def update_inputs(self) -> dict[str, np.ndarray]:
    """The last credit step's extra update-batch arrays ({} for OPD), once."""
    arrays, self._pending = self._pending.arrays, _Pending()
    return arrays

  def _global(self, batch: Mapping[str, np.ndarray]) -> dict[str, Array]:
    mesh = self.trainer.mesh
    return {k: jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, v.ndim), v, v.shape) for k, v in batch.items()}

  def _opd(self, stats, mask, outcome_adv):
    t = self.trainer
    if self._teacher_fn is None:
      from rlvr_jax.training import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
      self._teacher_fn = teacher_lib.jit_teacher_logprobs(
          self.teacher, prompt_len=t.prompt_len, num_micro=self.config.rl.micro_batches,
          loss_config=t.loss_config)
    with sharding.use_mesh(t.mesh):
      teacher_logp = self._teacher_fn(self._global({
          "tokens": np.asarray(stats["tokens"], np.int32),
          "input_mask": np.asarray(stats["input_mask"], bool)}))
      adv = distill.opd_advantages(
          teacher_logp, stats["old_logp"], jnp.asarray(mask),
          outcome_advantages=jnp.asarray(outcome_adv),
          opd_coef=self.config.distill.opd_coef, outcome_coef=self.config.distill.outcome_coef)
      log_ratio = (teacher_logp - stats["old_logp"]) * mask
    n = max(float(mask.sum()), 1.0)
    metrics = {"distill/log_ratio": float(jnp.sum(log_ratio)) / n,
               "distill/teacher_logp": float(jnp.sum(teacher_logp * mask)) / n}
    return np.asarray(jax.device_get(adv), np.float32), metrics

  def teacher_batch(self, examples, correct, tokens, input_mask) -> feedback.TeacherBatch:
    """DistIL's feedback-conditioned rows for a rollout batch (`feedback.build_teacher_batch`)."""
    c = self.config
    tokenizer = self.trainer.tokenizer
    ids = [tokenizer.encode(feedback.render_teacher_prompt(
        record, correct=bool(ok), feedback_template=c.distill.feedback_template,
        template=c.data.template, instruction=c.data.instruction,
        system_prompt=c.data.system_prompt, tokenizer=tokenizer,
        few_shot_examples=self.shots), add_special_tokens=False)
           for record, ok in zip(examples, correct)]
    P = c.distill.max_teacher_prompt_len
    return feedback.build_teacher_batch(
        ids, tokens, input_mask, prompt_len=self.trainer.prompt_len,
        pad_id=int(self.trainer.model_config.pad_token_id), max_prompt_len=P, bucket=P)

  def _distil(self, stats, examples, correct, mask):
    c, t = self.config, self.trainer
    tb = self.teacher_batch(examples, correct, np.asarray(stats["tokens"]),
                            np.asarray(stats["input_mask"]))
    if self._distil_fn is None:
      chunk = t.loss_config.logprob_chunk
      self._distil_fn = jax.jit(lambda p, r, batch, h: distil_teacher_stats(
          t.graphdef, p, r, batch, h, teacher_prompt_len=tb.response_start,
          num_micro=c.rl.micro_batches, k=c.distill.topk, chunk_size=chunk))
    with sharding.use_mesh(t.mesh):
      out = self._distil_fn(t.params, t.rest, self._global(
          {"tokens": tb.tokens, "input_mask": tb.input_mask}), stats["hidden"])
      adv = distill.future_credit_advantages(out["ce"], jnp.asarray(mask),
                                             group_size=self.group_size)
    out = {k: np.asarray(jax.device_get(v)) for k, v in out.items()}
    self._pending = _Pending({"topk_ids": out["topk_ids"].astype(np.int32),
                              "topk_probs": out["topk_probs"].astype(np.float32)})
    n = max(float(mask.sum()), 1.0)
    return np.asarray(jax.device_get(adv), np.float32), {
        "distill/ce": float((out["ce"] * mask).sum()) / n}

  def advantages(self, examples, texts, response_tokens, response_mask, truncated,
                 stats: Mapping[str, Any] | None = None):
    """As `credit.Credit.advantages`, with the statistics pass's `stats`."""
    del response_tokens
    if stats is None or "old_logp" not in stats:
      raise ValueError(f"{self.method} needs the statistics pass's outputs (stats).")
    G = self.group_size
    lengths = response_mask.sum(axis=1)
    scored = self.reward_fn(examples, texts, lengths)
    outcome = self.outcome_estimator(jnp.asarray(scored.rewards), group_size=G)
    outcome = np.asarray(advantages_lib.broadcast_to_tokens(outcome, jnp.asarray(response_mask)))
    loss_mask = response_mask
    if self.mask_truncated:
      loss_mask = response_mask * (~np.asarray(truncated, bool))[:, None]
    loss_mask = loss_mask.astype(np.float32)
    if self.method == "opd":
      adv, metrics = self._opd(stats, loss_mask, outcome)
    else:
      adv, metrics = self._distil(stats, examples, scored.correct, loss_mask)
      adv = (self.config.distill.future_coef * adv
             + self.config.distill.outcome_coef * outcome * loss_mask)
    metrics.update(scored.step_metrics(group_size=G))
    metrics.update({
        "response/length_mean": float(lengths.mean()),
        "response/truncated_frac": float(np.mean(truncated)),
        "distill/horizon": float(response_mask.shape[1]),
    })
    return adv.astype(np.float32), loss_mask, metrics
