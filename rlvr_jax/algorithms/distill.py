"""On-policy distillation: OPD, POPD/TOPD horizons, DistIL (METHODS.md 7).

Every array is [B, T] (B rows, T response tokens) or [B, T, V] / [B, T, k]
with the vocabulary V or the teacher's top k last; rows of one prompt are G
contiguous rows; m is the response mask (1 on generated tokens up to and
including EOS). Masked positions may hold any finite garbage.

How the pieces plug into the trainer:

- OPD (7.1): the statistics pass runs the teacher on the student's rollout
  batch (`models.logprobs.response_logprobs`, chunked over T) and gives
  teacher_logp [B, T]; `opd_advantages(teacher_logp, old_logp, mask, ...)` is
  the advantage of the usual clipped loss.
- POPD/TOPD (7.2): `horizon(step, ...)` on the host gives the rollout length
  H of step k; the sampler generates at most H tokens and the truncated rows
  stay in the loss (no masking of rows cut at H).
- DistIL (7.3): the statistics pass runs the policy itself on the
  feedback-conditioned batch (`rlvr_jax.data.feedback.build_teacher_batch`) and
  keeps only `teacher_topk` of its logits, [B, T, k] ids and probabilities;
  the update recomputes the student's logits chunk by chunk and takes
  `topk_cross_entropy` on each chunk (`map_token_chunks`), so no [B, T, V]
  array is ever held; `distil_loss_pair` aggregates it like the policy loss
  (losses.AGGREGATIONS) and `future_credit_advantages` turns the same CE into
  REINFORCE advantages.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlvr_jax.algorithms import losses

HORIZON_SCHEDULES = ("full", "topd", "popd")


# ---------------------------------------------------------------------------
# OPD (METHODS.md 7.1).
# ---------------------------------------------------------------------------


@jax.jit
def _opd_advantages(teacher_logp, student_logp, mask, outcome, opd_coef,
                    outcome_coef):
  log_ratio = (teacher_logp.astype(jnp.float32)
               - student_logp.astype(jnp.float32))
  combined = opd_coef * log_ratio + outcome_coef * outcome.astype(jnp.float32)
  return jax.lax.stop_gradient(jnp.where(mask > 0, combined, 0.0))


def opd_advantages(
    teacher_logp: jax.Array,
    student_logp: jax.Array,
    mask: jax.Array,
    *,
    outcome_advantages: jax.Array | None = None,
    opd_coef: float = 1.0,
    outcome_coef: float = 0.0,
) -> jax.Array:
  """OPD per-token advantages from the teacher/student log-ratio.

  A[i,t] = m[i,t] * (c_opd * (log pi_T(o[i,t]) - log pi_theta(o[i,t]))
  + c_out * A_out[i,t]), with log pi_T = `teacher_logp`, log pi_theta =
  `student_logp` (the sampling policy's log-probs of the sampled tokens), c_opd
  = `opd_coef`, c_out = `outcome_coef` and A_out = `outcome_advantages` (for
  example GRPO's, broadcast to tokens). The log-ratio is the single-sample
  estimate of -KL(pi_theta || pi_T) per token (discount 0). METHODS.md 7.1.
  The result carries no gradient.

  Args:
    teacher_logp: [B, T] teacher log-probs of the sampled tokens.
    student_logp: [B, T] student (sampling policy) log-probs of the same.
    mask: [B, T] response mask m.
    outcome_advantages: [B, T] outcome advantages; required when
      outcome_coef != 0.
    opd_coef: weight of the log-ratio (`--config.distill.opd_coef`).
    outcome_coef: weight of the outcome advantage
      (`--config.distill.outcome_coef`).

  Returns:
    [B, T] float32 advantages, 0 where m is 0.
  """
  arrays = {"teacher_logp": teacher_logp, "student_logp": student_logp,
            "mask": mask}
  if outcome_advantages is not None:
    arrays["outcome_advantages"] = outcome_advantages
  losses.check_token_shapes(**arrays)
  if outcome_coef != 0.0 and outcome_advantages is None:
    raise ValueError(
        f"outcome_coef={outcome_coef} != 0 needs outcome_advantages."
    )
  outcome = (jnp.zeros(teacher_logp.shape, jnp.float32)
             if outcome_advantages is None else outcome_advantages)
  return _opd_advantages(teacher_logp, student_logp, mask, outcome,
                         jnp.float32(opd_coef), jnp.float32(outcome_coef))


# ---------------------------------------------------------------------------
# POPD and TOPD horizons (METHODS.md 7.2), host side.
# ---------------------------------------------------------------------------


def topd_horizon(max_response_len: int, *, rho: float) -> int:
  """TOPD's fixed horizon H = ceil(rho * T), at least 1. METHODS.md 7.2.

  Rounding: up, so rho * T = 25.6 gives 26 and rho = 1 gives T. The product
  is rounded to 9 decimals first, so float noise (0.3 * 10 =
  3.0000000000000004) does not add a token.

  Args:
    max_response_len: T, the full response length
      (`--config.rl.max_new_tokens`).
    rho: the fraction of T kept, in (0, 1] (`--config.distill.rho`).

  Returns:
    H, an int in [1, T].
  """
  if max_response_len < 1:
    raise ValueError(
        f"max_response_len={max_response_len} must be >= 1 "
        "(--config.rl.max_new_tokens)."
    )
  if not 0.0 < rho <= 1.0:
    raise ValueError(f"--config.distill.rho={rho} must be in (0, 1].")
  return max(1, math.ceil(round(rho * max_response_len, 9)))


def popd_horizon(
    step: int, max_response_len: int, *, h0: int, dh: int, dk: int
) -> int:
  """POPD's horizon H_k = min(T, H_0 + dH * floor(k / dk)). METHODS.md 7.2.

  Args:
    step: k, the training step (0 for the first).
    max_response_len: T, the full response length.
    h0: H_0 >= 1, the first horizon (`--config.distill.popd_h0`).
    dh: dH >= 0, tokens added per stage (`--config.distill.popd_dh`).
    dk: dk >= 1, steps per stage (`--config.distill.popd_dk`).

  Returns:
    H_k, an int in [1, T] (H_0 > T gives T).
  """
  if step < 0:
    raise ValueError(f"step={step} must be >= 0.")
  if max_response_len < 1:
    raise ValueError(
        f"max_response_len={max_response_len} must be >= 1 "
        "(--config.rl.max_new_tokens)."
    )
  if h0 < 1:
    raise ValueError(f"--config.distill.popd_h0={h0} must be >= 1.")
  if dh < 0:
    raise ValueError(f"--config.distill.popd_dh={dh} must be >= 0.")
  if dk < 1:
    raise ValueError(f"--config.distill.popd_dk={dk} must be >= 1.")
  return min(max_response_len, h0 + dh * (step // dk))


def horizon(
    step: int,
    *,
    schedule: str,
    max_response_len: int,
    rho: float = 0.1,
    h0: int = 1,
    dh: int = 0,
    dk: int = 1,
) -> int:
  """Rollout horizon of step k under `--config.distill.horizon`. METHODS.md 7.2.

  'full': T (plain OPD); 'topd': `topd_horizon` (rho); 'popd':
  `popd_horizon` (h0, dh, dk). Parameters of the other schedules are ignored.

  Args:
    step: k, the training step.
    schedule: one of `HORIZON_SCHEDULES`.
    max_response_len: T.
    rho: TOPD's fraction.
    h0: POPD's first horizon.
    dh: POPD's increment.
    dk: POPD's steps per increment.

  Returns:
    The number of tokens to generate at step k, in [1, T].
  """
  if schedule == "full":
    return topd_horizon(max_response_len, rho=1.0)
  if schedule == "topd":
    return topd_horizon(max_response_len, rho=rho)
  if schedule == "popd":
    return popd_horizon(step, max_response_len, h0=h0, dh=dh, dk=dk)
  raise ValueError(
      f"--config.distill.horizon={schedule!r} is unknown; valid: "
      f"{list(HORIZON_SCHEDULES)}."
  )


# ---------------------------------------------------------------------------
# DistIL (METHODS.md 7.3): top-k forward cross-entropy, per token.
# ---------------------------------------------------------------------------


def teacher_topk(
    teacher_logits: jax.Array, *, k: int
) -> tuple[jax.Array, jax.Array]:
  """The teacher's top-k tokens and their probabilities renormalized over them.

  p~_T(v) = exp(z_T(v)) / sum_{u in topk} exp(z_T(u)) for v among the k
  largest teacher logits z_T, i.e. p_T restricted to its top k and divided by
  their total mass. Stop-gradient (the teacher is a target). Per token, so it
  can run on any chunk of T. METHODS.md 7.3.

  Args:
    teacher_logits: [B, T, V] teacher logits (the policy's on
      prompt + feedback + response, aligned to the student's positions).
    k: number of teacher tokens kept, 1 <= k <= V (`--config.distill.topk`).

  Returns:
    (ids [B, T, k] int32, probs [B, T, k] float32 summing to 1 over k).
  """
  if teacher_logits.ndim != 3:
    raise ValueError(
        f"teacher_logits must be [B, T, V], got shape {teacher_logits.shape}."
    )
  V = teacher_logits.shape[-1]
  if not 1 <= k <= V:
    raise ValueError(f"--config.distill.topk={k} must be in [1, V={V}].")
  logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  top_logits, ids = jax.lax.top_k(logits, k)
  return ids.astype(jnp.int32), jax.nn.softmax(top_logits, axis=-1)


def topk_cross_entropy(
    student_logits: jax.Array, topk_ids: jax.Array, topk_probs: jax.Array
) -> jax.Array:
  """Forward cross-entropy against the teacher's renormalized top k, per token.

  CE[i,t] = -sum_{v in topk[i,t]} p~_T(v) log pi_theta(v | s_t), with
  log pi_theta = log_softmax(`student_logits`) over the full vocabulary and
  (topk, p~_T) = (`topk_ids`, `topk_probs`) from `teacher_topk`. Its gradient
  with respect to the student logits is softmax(z_S) - q, q the teacher's
  top-k probabilities scattered over V. Per token, so a caller may compute it
  one chunk of T at a time (`map_token_chunks`). METHODS.md 7.3.

  Args:
    student_logits: [B, T, V] student logits (differentiated).
    topk_ids: [B, T, k] int32 teacher token ids.
    topk_probs: [B, T, k] float32 teacher probabilities (no gradient).

  Returns:
    [B, T] float32 CE, finite everywhere (mask it downstream).
  """
  if student_logits.ndim != 3:
    raise ValueError(
        f"student_logits must be [B, T, V], got shape {student_logits.shape}."
    )
  if topk_ids.shape != topk_probs.shape or topk_ids.ndim != 3:
    raise ValueError(
        f"topk_ids {topk_ids.shape} and topk_probs {topk_probs.shape} must "
        "both be [B, T, k]."
    )
  if topk_ids.shape[:2] != student_logits.shape[:2]:
    raise ValueError(
        f"topk_ids {topk_ids.shape} and student_logits "
        f"{student_logits.shape} disagree on [B, T]."
    )
  log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, topk_ids, axis=-1)
  target = jax.lax.stop_gradient(topk_probs.astype(jnp.float32))
  return -jnp.sum(target * picked, axis=-1)


def map_token_chunks(
    fn: Callable[..., Any],
    *arrays: jax.Array,
    chunk_size: int | None = None,
) -> Any:
  """fn over chunks of T under jax.checkpoint, concatenated back along T.

  For per-token functions of hidden states, such as the update's `lambda h,
  ids, p: topk_cross_entropy(head(h), ids, p)` or the statistics pass's
  `lambda h: teacher_topk(head(h), k=k)`: each chunk's [B, chunk, V] logits
  exist only inside the chunk, in the forward and (recomputed) backward pass,
  as in `models.logprobs.logprobs_from_hidden`. T is padded up to a multiple
  of the chunk with zeros (sliced off after).

  Args:
    fn: (*chunks [B, c, ...]) -> an array or pytree of arrays [B, c, ...];
      must treat tokens independently.
    *arrays: [B, T, ...] arrays sharing B and T.
    chunk_size: tokens per chunk; None = all of T at once.

  Returns:
    fn's output over the whole sequence: each leaf [B, T, ...].
  """
  if not arrays:
    raise ValueError("map_token_chunks needs at least one array.")
  B, T = arrays[0].shape[:2]
  for index, array in enumerate(arrays):
    if array.shape[:2] != (B, T):
      raise ValueError(
          f"arrays[{index}] has shape {array.shape}; every array must start "
          f"with [B, T] = {(B, T)}."
      )
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size} must be None or >= 1.")
  chunk = T if chunk_size is None else min(chunk_size, T)
  n_chunks = -(-T // chunk)
  pad = n_chunks * chunk - T

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return x.reshape(B, n_chunks, chunk, *x.shape[2:]).swapaxes(0, 1)

  chunked = jax.checkpoint(lambda args: fn(*args))
  out = jax.lax.map(chunked, tuple(split(x) for x in arrays))

  def merge(y):
    y = y.swapaxes(0, 1)
    return y.reshape(B, n_chunks * chunk, *y.shape[3:])[:, :T]

  return jax.tree.map(merge, out)


def distil_loss_pair(
    ce: jax.Array,
    mask: jax.Array,
    *,
    loss_agg: str = "token_mean",
    max_response_len: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """DistIL's local CE term as a (numerator, denominator) pair (METHODS.md 7.3).

  `losses.AGGREGATIONS[loss_agg](ce, m)`: for `token_mean`, (sum_{i,t} m*CE,
  sum_{i,t} m). Under the trainer's contract (losses module docstring) a
  micro-batch contributes numerator / (the whole mini-batch's
  `losses.aggregation_denominator`), the same denominator as the policy term.

  Args:
    ce: [B, T] per-token CE from `topk_cross_entropy`.
    mask: [B, T] response mask m.
    loss_agg: a key of `losses.AGGREGATIONS` (`--config.algo.loss_agg`).
    max_response_len: T_max, for `seq_mean_token_sum_norm`.

  Returns:
    (numerator, denominator), float32 scalars.
  """
  losses.check_token_shapes(ce=ce, mask=mask)
  return losses.get_aggregation(loss_agg)(
      ce, mask, max_response_len=max_response_len
  )


# ---------------------------------------------------------------------------
# DistIL future credit (METHODS.md 7.3).
# ---------------------------------------------------------------------------


def _group_position_baseline(values: jax.Array, mask: jax.Array) -> jax.Array:
  """values minus the mean over the group's rows valid at that position.

  [G, T] -> [G, T]; a position valid in no row gives 0.
  """
  count = jnp.sum(mask, axis=0, keepdims=True)
  mean = jnp.sum(values * mask, axis=0, keepdims=True) / jnp.maximum(count, 1.0)
  return (values - mean) * mask


@functools.partial(jax.jit, static_argnames=("group_size",))
def _future_credit(ce, mask, *, group_size):
  B, T = ce.shape
  mask = (mask > 0).astype(jnp.float32)
  ce = jnp.where(mask > 0, ce.astype(jnp.float32), 0.0)
  # suffix[t] = sum_{t' >= t} CE[t']; future[t] = suffix[t] - CE[t].
  suffix = jnp.cumsum(ce[:, ::-1], axis=-1)[:, ::-1]
  raw = -(suffix - ce)
  grouped = jax.vmap(_group_position_baseline)(
      raw.reshape(B // group_size, group_size, T),
      mask.reshape(B // group_size, group_size, T),
  )
  return jax.lax.stop_gradient(grouped.reshape(B, T))


def future_credit_advantages(
    ce: jax.Array, mask: jax.Array, *, group_size: int
) -> jax.Array:
  """DistIL's future-credit advantages with a per-position group baseline.

  R[i,t] = -sum_{t' > t} m[i,t'] CE[i,t'] (the CE still to come after token
  t, negated); A[i,t] = m[i,t] * (R[i,t] - b[g,t]) with the baseline
  b[g,t] = sum_{j in g} m[j,t] R[j,t] / sum_{j in g} m[j,t], the mean over
  the rows of group g that have a token at position t (ours, METHODS.md 7.3).
  So a position reached by one row of its group gets A = 0, and rows that
  ended earlier do not pull the baseline. No gradient.

  Args:
    ce: [B, T] per-token CE (from `topk_cross_entropy`).
    mask: [B, T] response mask m.
    group_size: G; rows of one prompt are G contiguous rows, G divides B.

  Returns:
    [B, T] float32 advantages, 0 where m is 0.
  """
  B, _ = losses.check_token_shapes(ce=ce, mask=mask)
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(
        f"--config.rl.group_size={group_size!r} must be a positive int."
    )
  if B % group_size:
    raise ValueError(
        f"ce has {B} rows, not a multiple of group_size={group_size} "
        "(--config.rl.group_size)."
    )
  return _future_credit(ce, mask, group_size=group_size)

