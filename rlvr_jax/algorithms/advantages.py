"""Group-relative advantage estimators of the GRPO family (METHODS.md 1.1, 6).

Rewards arrive one per row, [B], with the G responses of one prompt in G
contiguous rows, so `rewards.reshape(B // G, G)` puts one group per line. Each
estimator is written for one group, [G] -> [G], and `jax.vmap`ped over groups.
The result is a sequence-level advantage [B]; `broadcast_to_tokens` turns it
into the [B, T] array the policy loss takes.

`ESTIMATORS` maps the value of the `advantage` flag to a function
`fn(rewards, *, group_size) -> [B]`. `scrl` (METHODS.md 3) is token-level and
lives in `rlvr_jax/algorithms/scrl.py`, so it is not in this registry.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Added to the standard deviation before dividing (METHODS.md 1.1).
_STD_EPS = 1e-6


def _standardize(values: jax.Array) -> jax.Array:
  """(x - mean) / (std + 1e-6) with ddof=1; 0 for constant or single values.

  Args:
    values: 1-D float32 (one group, or all rows).

  Returns:
    float32 of the same shape. All zeros for a single value (the ddof=1 std
    is undefined) or when every value is equal (exactly, so float noise in
    the mean cannot turn into a 1e6-scaled advantage).
  """
  if values.shape[0] == 1:
    return jnp.zeros_like(values)
  centred = values - jnp.mean(values)
  std = jnp.std(values, ddof=1)
  return _zero_if_constant(values, centred / (std + _STD_EPS))


def _zero_if_constant(values: jax.Array, result: jax.Array) -> jax.Array:
  """`result`, or exactly 0 everywhere when every value is equal. Shape kept.

  The guard every estimator shares: a group of equal rewards carries no
  signal, but float32 rounding of its mean (1.1 * 3 / 3 != 1.1) would leave
  an advantage of about 1e-7 that the group filter counts as a signal.
  """
  return jnp.where(jnp.all(values == values[0]), 0.0, result)


def _center(values: jax.Array) -> jax.Array:
  """x - mean over the group; 0 for equal values. [G] -> [G]."""
  return _zero_if_constant(values, values - jnp.mean(values))


def _leave_one_out(values: jax.Array) -> jax.Array:
  """x_i - mean of the other G - 1 values; 0 for a group of one or of equal
  values. [G] -> [G]."""
  G = values.shape[0]
  if G == 1:
    return jnp.zeros_like(values)
  others_mean = (jnp.sum(values) - values) / (G - 1)
  return _zero_if_constant(values, values - others_mean)


def _per_group(
    group_fn: Callable[[jax.Array], jax.Array],
    rewards: jax.Array,
    group_size: int,
) -> jax.Array:
  """Applies `group_fn` [G] -> [G] to every group of `rewards` [B] -> [B]."""
  if rewards.ndim != 1:
    raise ValueError(
        f"rewards must be [B], got shape {rewards.shape}; a reward matrix "
        "[B, C] goes to `gdpo`."
    )
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  B = rewards.shape[0]
  if B % group_size:
    raise ValueError(
        f"rewards has {B} rows, not a multiple of group_size={group_size}."
    )
  grouped = rewards.astype(jnp.float32).reshape(B // group_size, group_size)
  return jax.vmap(group_fn)(grouped).reshape(B)


def grpo(rewards: jax.Array, *, group_size: int) -> jax.Array:
  """GRPO advantage: reward standardized within its group.

  A_i = (r_i - mean_g r) / (std_g r + 1e-6), std with ddof=1 over the G
  rewards of the group g of row i. A group whose rewards are all equal gives
  A = 0, and so does a group of size 1. METHODS.md 1.1 `grpo`.

  Args:
    rewards: [B] rewards r, groups of `group_size` contiguous rows.
    group_size: G, responses per prompt; must divide B.

  Returns:
    [B] float32 sequence-level advantages.
  """
  return _per_group(_standardize, rewards, group_size)


def dr_grpo(rewards: jax.Array, *, group_size: int) -> jax.Array:
  """Dr. GRPO advantage: reward minus its group mean, no std division.

  A_i = r_i - mean_g r, exactly 0 for a group whose rewards are all equal.
  METHODS.md 1.1 `dr_grpo`.

  Args:
    rewards: [B] rewards r, groups of `group_size` contiguous rows.
    group_size: G, responses per prompt; must divide B.

  Returns:
    [B] float32 sequence-level advantages.
  """
  return _per_group(_center, rewards, group_size)


def rloo(rewards: jax.Array, *, group_size: int) -> jax.Array:
  """REINFORCE leave-one-out advantage.

  A_i = r_i - (sum_{j in g, j != i} r_j) / (G - 1), which equals
  G / (G - 1) * (r_i - mean_g r). A group of size 1, or whose rewards are
  all equal, gives exactly A = 0.
  METHODS.md 1.1 `rloo`.

  Args:
    rewards: [B] rewards r, groups of `group_size` contiguous rows.
    group_size: G, responses per prompt; must divide B.

  Returns:
    [B] float32 sequence-level advantages.
  """
  return _per_group(_leave_one_out, rewards, group_size)


def gdpo(
    rewards: jax.Array,
    *,
    group_size: int,
    weights: Sequence[float] | jax.Array | None = None,
) -> jax.Array:
  """GDPO advantage: per-channel group normalization, weighted sum, whitening.

  a_i = sum_c w_c * grpo(r[:, c])_i, then A_i = (a_i - mean_B a) /
  (std_B a + 1e-6) over all B rows, std with ddof=1 and A = 0 when every a_i
  is equal. Each channel (outcome, format, subproblem, ...) goes through the
  same `grpo` normalization inside its group. METHODS.md 6 (GDPO).

  Under `jax.jit` with rows sharded over devices the batch mean and std are
  global, as the method asks.

  Warning: NVIDIA's release adds 1e-4 to both standard deviations; this uses
  1e-6, the `grpo` convention of METHODS.md 1.1.

  Args:
    rewards: [B, C] reward channels, or [B] for a single channel; groups of
      `group_size` contiguous rows.
    group_size: G, responses per prompt; must divide B.
    weights: [C] channel weights w; all ones when None.

  Returns:
    [B] float32 sequence-level advantages.
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim == 1:
    rewards = rewards[:, None]
  if rewards.ndim != 2:
    raise ValueError(f"rewards must be [B, C] or [B], got {rewards.shape}.")
  C = rewards.shape[1]
  if weights is None:
    weights = jnp.ones((C,), jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (C,):
    raise ValueError(
        f"weights has shape {weights.shape}, rewards has {C} channels."
    )
  per_channel = jax.vmap(
      lambda channel: grpo(channel, group_size=group_size),
      in_axes=1,
      out_axes=1,
  )(rewards)
  return _standardize(per_channel @ weights)


def broadcast_to_tokens(advantages: jax.Array, mask: jax.Array) -> jax.Array:
  """Spreads a sequence advantage over its row's response tokens.

  A[i, t] = A_i * m[i, t] (METHODS.md notation: advantages are always [B, T]).

  Args:
    advantages: [B] sequence-level advantages.
    mask: [B, T] response mask m, 1 on generated tokens.

  Returns:
    [B, T] float32 token advantages, 0 where m is 0.
  """
  if advantages.ndim != 1 or mask.ndim != 2:
    raise ValueError(
        f"advantages must be [B] and mask [B, T]; got {advantages.shape} and "
        f"{mask.shape}."
    )
  if advantages.shape[0] != mask.shape[0]:
    raise ValueError(
        f"advantages has {advantages.shape[0]} rows, mask has {mask.shape[0]}."
    )
  return advantages.astype(jnp.float32)[:, None] * mask.astype(jnp.float32)


ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "grpo": grpo,
    "dr_grpo": dr_grpo,
    "rloo": rloo,
    "gdpo": gdpo,
}


_JITTED = {name: jax.jit(fn, static_argnames=("group_size",))
           for name, fn in ESTIMATORS.items()}


def get_estimator(name: str) -> Callable[..., jax.Array]:
  """Returns the estimator registered as `name` (the `advantage` flag), jitted.

  One compiled program per (B, G) instead of a dozen eager dispatches per
  step; under a mesh the batch statistics stay global (see `gdpo`).

  Args:
    name: a key of `ESTIMATORS`.

  Returns:
    `fn(rewards, *, group_size, **hyperparameters) -> [B]`, `group_size`
    static.

  Raises:
    ValueError: `name` is not registered; the message lists the valid names.
  """
  if name not in ESTIMATORS:
    raise ValueError(
        f"advantage={name!r} is not an estimator; valid: {sorted(ESTIMATORS)}."
    )
  return _JITTED[name]
