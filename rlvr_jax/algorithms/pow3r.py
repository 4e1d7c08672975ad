"""POW3R: policy-aware criterion weights for rubric rewards (METHODS.md 6.3).

A rubric reward scores Cr criteria per response, verdicts v[i, j] in [0, 1],
and combines them with task weights w_j. Static aggregation spends weight on
criteria that every rollout of the group passes (saturated) or fails (dead),
which carry no signal between rollouts. POW3R (arXiv 2605.20164; no code
released) reweights each criterion by how much the group disagrees on it:

  p_j     = (sum_i v[i, j] + a) / (G + a + b)             smoothed pass rate
  s_j     = sqrt(p_j (1 - p_j))                            contrast
  alpha_j = clip(s_j / mean_{k in cat(j)} s_k, alpha_min, alpha_max)
  w~_j    = w_j alpha_j * W_cat(j) / sum_{k in cat(j)} w_k alpha_k,
            W_cat(j) = sum_{k in cat(j)} w_k  (category total kept)
  R_i     = sum_j w~_j v[i, j] / sum_j w~_j

then the usual group advantage of R. Evaluation keeps the static weights
(`weighted_rewards` with the task weights). The constants a = b = 0.5,
alpha_min = 0.1, alpha_max = 3 are METHODS.md's reconstruction; each is a
keyword argument (a flag).

Arrays: B = Q * G rows with each group's G rollouts contiguous; Cr criteria
slots per prompt, padded with `criterion_mask` = 0 where a prompt has fewer.
Per-prompt arrays (weights, categories, criterion_mask) are [Q, Cr], or [Cr]
when every prompt shares them. Written per group and `jax.vmap`ped.

Decisions where METHODS.md 6.3 is silent:
- The category mean of s is the plain (unweighted) mean over the category's
  valid criteria, padding excluded.
- A category whose weights are all 0 keeps total 0 (w~ = 0 there).
- A row whose weights sum to 0 (no valid weighted criterion) gets R = 0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Pow3rFlags(NamedTuple):
  """POW3R constants (METHODS.md 6.3), one flag each.

  Attributes:
    a: pseudo-passes of the smoothed pass rate, > 0.
    b: pseudo-failures of the smoothed pass rate, > 0.
    alpha_min: floor of the multiplier (keeps every criterion alive), > 0.
    alpha_max: ceiling of the multiplier, >= alpha_min.
  """
  a: float = 0.5
  b: float = 0.5
  alpha_min: float = 0.1
  alpha_max: float = 3.0


def _check_flags(a: float, b: float, alpha_min: float,
                 alpha_max: float) -> None:
  if a <= 0.0:
    raise ValueError(f"a must be > 0 (pass-rate smoothing), got {a}.")
  if b <= 0.0:
    raise ValueError(f"b must be > 0 (pass-rate smoothing), got {b}.")
  if alpha_min <= 0.0:
    raise ValueError(f"alpha_min must be > 0, got {alpha_min}.")
  if alpha_max < alpha_min:
    raise ValueError(
        f"alpha_max={alpha_max} must be >= alpha_min={alpha_min}.")


def _per_prompt(name: str, x: jax.Array | None, Q: int, Cr: int,
                dtype: jnp.dtype, default: float) -> jax.Array:
  """[Cr] or [Q, Cr] -> [Q, Cr] of `dtype` (`default` everywhere when None)."""
  if x is None:
    return jnp.full((Q, Cr), default, dtype)
  x = jnp.asarray(x)
  if x.shape == (Cr,):
    x = jnp.broadcast_to(x[None, :], (Q, Cr))
  if x.shape != (Q, Cr):
    raise ValueError(
        f"{name} has shape {x.shape}; verdicts give {Q} groups of {Cr} "
        f"criteria, so it must be [{Cr}] or [{Q}, {Cr}].")
  return x.astype(dtype)


def _grouped(
    verdicts: jax.Array,
    weights: jax.Array,
    criterion_mask: jax.Array | None,
    group_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks the shared arguments; verdicts by group, weights, validity.

  Args:
    verdicts: [B, Cr] verdicts, groups of `group_size` contiguous rows.
    weights: [Cr] or [Q, Cr] weights.
    criterion_mask: [Cr] or [Q, Cr] (0 on padding) or None (all real).
    group_size: G.

  Returns:
    ([Q, G, Cr] float32 verdicts, [Q, Cr] float32 weights with 0 on padding,
    [Q, Cr] bool validity).
  """
  if verdicts.ndim != 2:
    raise ValueError(f"verdicts must be [B, Cr], got shape {verdicts.shape}.")
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  B, Cr = verdicts.shape
  if B % group_size:
    raise ValueError(
        f"verdicts has {B} rows, not a multiple of group_size={group_size}.")
  Q = B // group_size
  weights = _per_prompt("weights", weights, Q, Cr, jnp.float32, 1.0)
  valid = _per_prompt("criterion_mask", criterion_mask, Q, Cr, bool, True)
  grouped = verdicts.astype(jnp.float32).reshape(Q, group_size, Cr)
  return grouped, jnp.where(valid, weights, 0.0), valid


def _group_weights(
    verdicts: jax.Array,
    weights: jax.Array,
    categories: jax.Array,
    valid: jax.Array,
    flags: Pow3rFlags,
) -> jax.Array:
  """POW3R weights of one group: [G, Cr] verdicts -> [Cr] weights w~ (0 on padding)."""
  G = verdicts.shape[0]
  passes = jnp.sum(jnp.where(valid[None, :], verdicts, 0.0), axis=0)
  p = (passes + flags.a) / (G + flags.a + flags.b)
  s = jnp.sqrt(p * (1.0 - p))
  same = (categories[:, None] == categories[None, :]) & valid[None, :]
  same = same.astype(jnp.float32)
  members = jnp.sum(same, axis=1)
  s_mean = (same @ s) / jnp.maximum(members, 1.0)
  alpha = jnp.clip(s / s_mean, flags.alpha_min, flags.alpha_max)
  scaled = weights * alpha
  total = same @ weights
  scaled_total = same @ scaled
  factor = total / jnp.where(scaled_total > 0, scaled_total, 1.0)
  return jnp.where(valid & (scaled_total > 0), scaled * factor, 0.0)


def pow3r_weights(
    verdicts: jax.Array,
    weights: jax.Array,
    *,
    group_size: int,
    categories: jax.Array | None = None,
    criterion_mask: jax.Array | None = None,
    a: float = 0.5,
    b: float = 0.5,
    alpha_min: float = 0.1,
    alpha_max: float = 3.0,
) -> jax.Array:
  """Policy-aware criterion weights w~ of every group. METHODS.md 6.3.

  See the module docstring for the formula; a, b, alpha_min, alpha_max are
  its symbols. Within each category of each prompt the total weight is kept:
  sum_{k in c} w~_k = sum_{k in c} w_k.

  Args:
    verdicts: [B, Cr] float verdicts v in [0, 1]; groups of `group_size`
      contiguous rows.
    weights: [Cr] or [Q, Cr] task weights w >= 0 (Q = B // G prompts).
    group_size: G, rollouts per prompt.
    categories: [Cr] or [Q, Cr] integer category ids; None puts every
      criterion of a prompt in one category.
    criterion_mask: [Cr] or [Q, Cr], 1 on real criteria, 0 on padding; None
      means all are real.
    a: pseudo-passes, > 0.
    b: pseudo-failures, > 0.
    alpha_min: multiplier floor, > 0.
    alpha_max: multiplier ceiling, >= alpha_min.

  Returns:
    [Q, Cr] float32 training weights w~ (0 on padding).
  """
  _check_flags(a, b, alpha_min, alpha_max)
  grouped, weights, valid = _grouped(verdicts, weights, criterion_mask, group_size)
  Q, _, Cr = grouped.shape
  categories = _per_prompt("categories", categories, Q, Cr, jnp.int32, 0)
  flags = Pow3rFlags(a=a, b=b, alpha_min=alpha_min, alpha_max=alpha_max)
  return jax.vmap(_group_weights, in_axes=(0, 0, 0, 0, None))(
      grouped, weights, categories, valid, flags)


def weighted_rewards(
    verdicts: jax.Array,
    weights: jax.Array,
    *,
    group_size: int,
    criterion_mask: jax.Array | None = None,
) -> jax.Array:
  """R_i = sum_j w_j v[i, j] / sum_j w_j with the weights of row i's prompt.

  Static aggregation with the task weights (evaluation; METHODS.md 6.3), or
  the POW3R reward when given `pow3r_weights`. A row whose valid weights sum
  to 0 gets R = 0.

  Args:
    verdicts: [B, Cr] verdicts v in [0, 1], groups of `group_size` rows.
    weights: [Cr] or [Q, Cr] weights w >= 0.
    group_size: G, rollouts per prompt.
    criterion_mask: [Cr] or [Q, Cr], 0 on padding criteria; None: all real.

  Returns:
    [B] float32 rewards.
  """
  grouped, weights, valid = _grouped(verdicts, weights, criterion_mask, group_size)
  Q, G, _ = grouped.shape
  numerator = jnp.einsum("qgc,qc->qg", jnp.where(valid[:, None], grouped, 0.0),
                         weights)
  denominator = jnp.sum(weights, axis=1, keepdims=True)
  rewards = numerator / jnp.where(denominator > 0, denominator, 1.0)
  return jnp.where(denominator > 0, rewards, 0.0).reshape(Q * G)


def pow3r_rewards(
    verdicts: jax.Array,
    weights: jax.Array,
    *,
    group_size: int,
    categories: jax.Array | None = None,
    criterion_mask: jax.Array | None = None,
    a: float = 0.5,
    b: float = 0.5,
    alpha_min: float = 0.1,
    alpha_max: float = 3.0,
) -> jax.Array:
  """Training reward R_i = sum_j w~_j v[i, j] / sum_j w~_j. METHODS.md 6.3.

  `weighted_rewards` with `pow3r_weights`; feed the result to a group
  advantage estimator (`advantages.grpo`). Arguments as `pow3r_weights`.

  Returns:
    [B] float32 rewards.
  """
  tilde = pow3r_weights(
      verdicts, weights, group_size=group_size, categories=categories,
      criterion_mask=criterion_mask, a=a, b=b, alpha_min=alpha_min,
      alpha_max=alpha_max)
  return weighted_rewards(verdicts, tilde, group_size=group_size,
                          criterion_mask=criterion_mask)
