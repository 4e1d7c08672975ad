"""SCRL advantages: per-position normalization and span scatter (METHODS.md 3).

Row order of a mixed SCRL rollout batch (every caller follows it): a problem
q has G = 2 * Gc responses in the contiguous rows q * G .. q * G + G - 1; the
first Gc answer the curriculum prompt, the last Gc the plain prompt. So
[B, ...] reshapes to [Q, 2, Gc, ...] with index 0 the curriculum half.

Per-problem chains may be shorter than J (`data.subproblems`): problem q has
J_q = `chain_lengths[q]` subproblems, its rewards are padded to J, and
positions j >= J_q are not positions: their advantage is 0 and they are left
out of the per-position metrics.

The host side (`rewards.scrl_blocks`) produces R, the malformed flags and the
token-to-block index; everything here is jitted array code.
"""

import functools

import jax
import jax.numpy as jnp

from rlvr_jax.algorithms import advantages


def _position_mask(
    chain_lengths: jax.Array | None, Q: int, J: int
) -> jax.Array:
  """[Q, J] bool: j < J_q (all True when chain_lengths is None)."""
  if chain_lengths is None:
    return jnp.ones((Q, J), bool)
  if chain_lengths.shape != (Q,):
    raise ValueError(
        f"chain_lengths has shape {chain_lengths.shape}, expected [Q]=({Q},)"
    )
  return jnp.arange(J)[None, :] < chain_lengths[:, None]


@jax.jit
def positional_advantages(
    rewards: jax.Array, chain_lengths: jax.Array | None = None
) -> jax.Array:
  """Per-position group-normalized advantages of the curriculum responses.

  A_i(j) = (R_i(j) - mean_i R(j)) / (std_i R(j) + 1e-6) over the Gc
  curriculum responses i of one problem, separately for every position j,
  with the `grpo` convention (std ddof=1; a column with no variance or a
  group of one gives 0). METHODS.md 3, "Advantages"; `advantages.grpo` does
  the normalization.

  Args:
    rewards: [Q, Gc, J] R after the prefix rule (0/1), malformed responses
      all 0 (they stay in the statistics).
    chain_lengths: [Q] int J_q; positions j >= J_q get 0. None: all J.

  Returns:
    [Q, Gc, J] float32 advantages.
  """
  Q, Gc, J = rewards.shape
  valid = _position_mask(chain_lengths, Q, J)[:, None, :]
  R = jnp.where(valid, rewards.astype(jnp.float32), 0.0)
  columns = jnp.moveaxis(R, 2, 0).reshape(J, Q * Gc)
  A = jax.vmap(functools.partial(advantages.grpo, group_size=Gc))(columns)
  A = jnp.moveaxis(A.reshape(J, Q, Gc), 0, 2)
  return jnp.where(valid, A, 0.0)


@jax.jit
def span_advantages(
    position_advantages: jax.Array, span_index: jax.Array, mask: jax.Array
) -> jax.Array:
  """Puts each block's advantage on the tokens of its span.

  A[b, t] = A_b(span_index[b, t]) * m[b, t], and 0 where span_index is -1
  (outside every block, padding, every token of a malformed response).
  METHODS.md 3, "Token assignment".

  Args:
    position_advantages: [B, J] A_b(j) of each curriculum row.
    span_index: [B, T] int block index j in 0..J-1 of each token, or -1.
    mask: [B, T] response mask m.

  Returns:
    [B, T] float32 token advantages.
  """
  B, J = position_advantages.shape
  if span_index.shape[0] != B or mask.shape != span_index.shape:
    raise ValueError(
        f"position_advantages {position_advantages.shape}, span_index"
        f" {span_index.shape} and mask {mask.shape} must share B (and T)"
    )
  index = jnp.clip(span_index, 0, J - 1)
  per_token = jnp.take_along_axis(
      position_advantages.astype(jnp.float32), index, axis=1
  )
  return jnp.where(span_index >= 0, per_token, 0.0) * mask.astype(jnp.float32)


def _split_halves(x: jax.Array, Q: int, Gc: int) -> tuple[jax.Array, jax.Array]:
  """[Q * 2 * Gc, ...] -> curriculum [Q * Gc, ...], plain [Q * Gc, ...]."""
  halves = x.reshape(Q, 2, Gc, *x.shape[1:])
  return (halves[:, 0].reshape(Q * Gc, *x.shape[1:]),
          halves[:, 1].reshape(Q * Gc, *x.shape[1:]))


@jax.jit
def mixed_batch_advantages(
    curriculum_rewards: jax.Array,
    plain_rewards: jax.Array,
    span_index: jax.Array,
    response_mask: jax.Array,
    chain_lengths: jax.Array | None = None,
) -> jax.Array:
  """Token advantages of a whole SCRL rollout batch (module docstring order).

  Curriculum rows: `positional_advantages` scattered by `span_advantages`.
  Plain rows: `grpo` over the Gc plain siblings of the same problem,
  broadcast over the response tokens. METHODS.md 3.

  Args:
    curriculum_rewards: [Q, Gc, J] R of the curriculum rows.
    plain_rewards: [Q, Gc] rewards of the plain rows.
    span_index: [B, T] int, B = Q * 2 * Gc; read on curriculum rows only.
    response_mask: [B, T] m.
    chain_lengths: [Q] int J_q, or None for all J.

  Returns:
    [B, T] float32 advantages.
  """
  Q, Gc, J = curriculum_rewards.shape
  B, T = response_mask.shape
  if (plain_rewards.shape != (Q, Gc) or B != 2 * Q * Gc
      or span_index.shape != (B, T)):
    raise ValueError(
        f"curriculum_rewards {curriculum_rewards.shape}, plain_rewards"
        f" {plain_rewards.shape}, span_index {span_index.shape} and"
        f" response_mask {response_mask.shape} disagree (need [Q, Gc],"
        " [2*Q*Gc, T])"
    )
  span_curriculum, _ = _split_halves(span_index, Q, Gc)
  mask_curriculum, mask_plain = _split_halves(response_mask, Q, Gc)
  positional = positional_advantages(curriculum_rewards, chain_lengths)
  curriculum = span_advantages(
      positional.reshape(Q * Gc, J), span_curriculum, mask_curriculum
  )
  plain = advantages.broadcast_to_tokens(
      advantages.grpo(plain_rewards.reshape(Q * Gc), group_size=Gc), mask_plain
  )
  return jnp.stack(
      [curriculum.reshape(Q, Gc, T), plain.reshape(Q, Gc, T)], axis=1
  ).reshape(B, T)


@jax.jit
def scrl_metrics(
    raw: jax.Array,
    rewards: jax.Array,
    malformed: jax.Array,
    plain_rewards: jax.Array,
    response_mask: jax.Array,
    chain_lengths: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Per-step SCRL diagnostics (METHODS.md 3, "Log per step").

  Keys (j = 1..J):
  - `scrl/solve_rate/p{j}`, `scrl/solve_rate_raw/p{j}`: mean R(j) and r(j)
    over curriculum rows whose problem has position j (0 when none has);
  - `scrl/mean_solved_prefix`: mean of sum_j R(j) (the solved prefix length);
  - `scrl/malformed_frac`: fraction of curriculum rows that are malformed;
  - `scrl/accuracy/curriculum`: mean r(J_q), the original problem solved in
    its last block (raw, whatever the earlier blocks);
  - `scrl/accuracy/plain`: mean plain reward (the accuracy when the reward is
    the 0/1 check; this is the number evaluation reports);
  - `scrl/response_length/{curriculum,plain}`: mean generated tokens per row.

  Args:
    raw: [Q, Gc, J] r before the prefix rule.
    rewards: [Q, Gc, J] R after the prefix rule.
    malformed: [Q, Gc] bool.
    plain_rewards: [Q, Gc] rewards of the plain rows.
    response_mask: [B, T] m of the whole batch, B = 2 * Q * Gc.
    chain_lengths: [Q] int J_q, or None for all J.

  Returns:
    Flat dict of float32 scalars.
  """
  Q, Gc, J = rewards.shape
  valid = jnp.broadcast_to(
      _position_mask(chain_lengths, Q, J)[:, None, :], (Q, Gc, J)
  ).astype(jnp.float32)
  count = jnp.sum(valid, axis=(0, 1))
  solved = jnp.sum(rewards * valid, axis=(0, 1)) / jnp.maximum(count, 1.0)
  solved_raw = jnp.sum(raw * valid, axis=(0, 1)) / jnp.maximum(count, 1.0)
  last = (
      jnp.full((Q,), J - 1) if chain_lengths is None else chain_lengths - 1
  )
  last_raw = jnp.take_along_axis(
      raw.astype(jnp.float32),
      jnp.broadcast_to(last[:, None, None], (Q, Gc, 1)),
      axis=2,
  )
  lengths_curriculum, lengths_plain = _split_halves(
      jnp.sum(response_mask.astype(jnp.float32), axis=1), Q, Gc
  )
  metrics = {
      "scrl/mean_solved_prefix": jnp.mean(jnp.sum(rewards * valid, axis=2)),
      "scrl/malformed_frac": jnp.mean(malformed.astype(jnp.float32)),
      "scrl/accuracy/curriculum": jnp.mean(last_raw),
      "scrl/accuracy/plain": jnp.mean(plain_rewards.astype(jnp.float32)),
      "scrl/response_length/curriculum": jnp.mean(lengths_curriculum),
      "scrl/response_length/plain": jnp.mean(lengths_plain),
  }
  for j in range(J):
    metrics[f"scrl/solve_rate/p{j + 1}"] = solved[j]
    metrics[f"scrl/solve_rate_raw/p{j + 1}"] = solved_raw[j]
  return metrics
