"""Policy losses, loss aggregation and KL estimators (METHODS.md 1.2-1.4).

Every array is [B, T]: B rows of a (micro-)batch, T response tokens, with the
response mask m (1 on generated tokens up to and including EOS). Masked
positions may hold any finite garbage; they never reach a value or a gradient.

Contract with the trainer (METHODS.md 1.3). A mini-batch is split into
micro-batches along B (and sharded along B over devices). The loss of the
mini-batch is numerator / denominator where both are sums over all of its
tokens or rows, so the denominator is computed once, from the mini-batch mask,
before the micro-batch loop; each micro-batch then contributes
numerator_micro / denominator_minibatch, and losses, gradients and metrics
simply add:

  loss_den = aggregation_denominator(minibatch_mask, loss_agg=loss_agg,
                                     max_response_len=T_max)
  token_count = jnp.sum(minibatch_mask)
  for micro in micro_batches:
    # loss_fn computes logp and calls policy_loss(..., loss_denominator=
    # loss_den, token_count=token_count).
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(...)
    total_grads = jax.tree.map(jnp.add, total_grads, grads)
    total_metrics = combine_metrics([total_metrics, metrics], shares=True)

(`combine_metrics` is the trainer's one metric rule, in training/metrics.py;
`total_metrics` may start as zeros of the same structure.) Under `jax.jit` with
rows sharded over devices every sum here is global, so the same code is
correct on any mesh.

Registries map flag values to functions: `POLICY_LOSSES` (`policy_loss`),
`AGGREGATIONS` (`loss_agg`), `KL_ESTIMATORS` (`kl_estimator`).
"""

from typing import Callable

import jax
import jax.numpy as jnp

# Bound on a log-ratio before exp (METHODS.md 1.2); also bounds k3's exponent.
_LOG_RATIO_BOUND = 20.0
# Below this |log-ratio|, k3 is computed from its Taylor series (`kl_k3`).
_K3_SERIES_BOUND = 0.1

PolicyLossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
AggregationFn = Callable[..., tuple[jax.Array, jax.Array]]
KLFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_token_shapes(**arrays: jax.Array) -> tuple[int, int]:
  """Checks that every array is [B, T] with one shared (B, T); returns it."""
  (first_name, first), *rest = arrays.items()
  if first.ndim != 2:
    raise ValueError(f"{first_name} must be [B, T], got shape {first.shape}.")
  for name, array in rest:
    if array.shape != first.shape:
      hint = (
          " (a [B] advantage goes through advantages.broadcast_to_tokens)"
          if name == "advantages" else ""
      )
      raise ValueError(
          f"{name} has shape {array.shape} but {first_name} has "
          f"{first.shape}; both must be [B, T]{hint}."
      )
  return first.shape


def _where_valid(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x where m > 0, else 0: masked values never reach a sum. [B, T]."""
  return jnp.where(mask > 0, x, 0.0)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, and 0 when the denominator is 0."""
  return numerator / jnp.where(denominator > 0, denominator, 1.0)


def masked_mean_pair(
    x: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Masked mean as a pair: (sum_{i,t} m*x, sum_{i,t} m).

  Args:
    x: [B, T] values (garbage allowed where m is 0).
    mask: [B, T] response mask m in {0, 1}.

  Returns:
    (sum, count), float32 scalars.
  """
  check_token_shapes(x=x, mask=mask)
  mask = mask.astype(jnp.float32)
  return jnp.sum(_where_valid(x.astype(jnp.float32), mask)), jnp.sum(mask)


# ---------------------------------------------------------------------------
# Ratios and the clipped surrogate (METHODS.md 1.2).
# ---------------------------------------------------------------------------


def token_ratio(logp: jax.Array, old_logp: jax.Array) -> jax.Array:
  """rho[i,t] = exp(clip(logp - logp_old, -20, 20)). METHODS.md 1.2.

  Args:
    logp: [B, T] log-probs under the current policy.
    old_logp: [B, T] log-probs under the sampling policy.

  Returns:
    [B, T] float32 importance ratios.
  """
  log_ratio = logp.astype(jnp.float32) - old_logp.astype(jnp.float32)
  return jnp.exp(jnp.clip(log_ratio, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))


def sequence_ratio(
    logp: jax.Array, old_logp: jax.Array, mask: jax.Array
) -> jax.Array:
  """GSPO sequence ratio s_i = exp(clip(mean_t (logp - logp_old), -20, 20)).

  The mean runs over the row's valid tokens (sum_t m * (logp - logp_old) /
  max(sum_t m, 1)); a row without valid tokens gets s = 1. METHODS.md 1.2.

  Args:
    logp: [B, T] log-probs under the current policy.
    old_logp: [B, T] log-probs under the sampling policy.
    mask: [B, T] response mask m.

  Returns:
    [B] float32 sequence ratios (differentiable through every valid logp).
  """
  check_token_shapes(logp=logp, old_logp=old_logp, mask=mask)
  log_ratio = _where_valid(
      logp.astype(jnp.float32) - old_logp.astype(jnp.float32), mask
  )
  tokens = jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=-1), 1.0)
  mean_log_ratio = jnp.sum(log_ratio, axis=-1) / tokens
  return jnp.exp(
      jnp.clip(mean_log_ratio, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
  )


def clipped_surrogate(
    ratio: jax.Array,
    advantages: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate with asymmetric clip range and optional dual clip.

  l = -min(rho*A, clip(rho, 1 - eps_low, 1 + eps_high)*A); with the dual-clip
  constant c (`dual_clip`), l = min(l, -A*c) where A < 0. METHODS.md 1.2.

  Args:
    ratio: [B, T] importance ratio rho (token or sequence level).
    advantages: [B, T] advantages A.
    eps_low: lower clip width, rho >= 1 - eps_low.
    eps_high: upper clip width, rho <= 1 + eps_high (DAPO: 0.28).
    dual_clip: c > 1, or None for no dual clip.

  Returns:
    (l [B, T], indicators): `indicators` holds [B, T] float32 0/1 arrays
    `clipped_low` (A < 0 and rho < 1 - eps_low: the lower clip is binding),
    `clipped_high` (A > 0 and rho > 1 + eps_high) and, with a dual clip,
    `clipped_dual` (A < 0 and the bound -A*c is binding).

  Warning: verl logs one `pg_clipfrac` (either clip binding) and counts the
  dual clip among all tokens; here low and high are separate (as in TRL) and
  every fraction is over the valid tokens.
  """
  if not 0.0 <= eps_low < 1.0:
    raise ValueError(f"eps_low must be in [0, 1), got {eps_low}.")
  if eps_high < 0.0:
    raise ValueError(f"eps_high must be >= 0, got {eps_high}.")
  if dual_clip is not None and dual_clip <= 1.0:
    raise ValueError(f"dual_clip must be > 1 or None, got {dual_clip}.")
  check_token_shapes(ratio=ratio, advantages=advantages)
  advantages = advantages.astype(jnp.float32)
  clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
  negative = advantages < 0
  indicators = {
      "clipped_low": negative & (ratio < 1.0 - eps_low),
      "clipped_high": (advantages > 0) & (ratio > 1.0 + eps_high),
  }
  if dual_clip is not None:
    bound = -advantages * dual_clip
    indicators["clipped_dual"] = negative & (loss > bound)
    loss = jnp.where(negative, jnp.minimum(loss, bound), loss)
  return loss, {k: v.astype(jnp.float32) for k, v in indicators.items()}


# ---------------------------------------------------------------------------
# Policy losses: POLICY_LOSSES[name](logp, old_logp, advantages, mask, *,
# eps_low, eps_high, dual_clip) -> (l [B, T], diagnostics of [B, T] arrays).
# ---------------------------------------------------------------------------


def ppo_clip(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-level PPO clipped loss on rho = `token_ratio`. METHODS.md 1.2.

  Args:
    logp: [B, T] log-probs under the current policy.
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m (only checked: the aggregation applies it).
    eps_low: lower clip width.
    eps_high: upper clip width.
    dual_clip: dual-clip constant c, or None.

  Returns:
    (l [B, T] per-token loss, diagnostics): the `clipped_surrogate`
    indicators plus `ratio` [B, T].
  """
  check_token_shapes(logp=logp, old_logp=old_logp, advantages=advantages,
                mask=mask)
  ratio = token_ratio(logp, old_logp)
  loss, diagnostics = clipped_surrogate(
      ratio, advantages, eps_low=eps_low, eps_high=eps_high,
      dual_clip=dual_clip,
  )
  return loss, {**diagnostics, "ratio": ratio}


def gspo(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GSPO: the clipped surrogate on the sequence ratio s_i, per token.

  l[i,t] = -min(s_i*A[i,t], clip(s_i, 1 - eps_low, 1 + eps_high)*A[i,t]),
  s_i = `sequence_ratio`. The gradient of s_i spreads over every token of the
  row, so with token advantages each token's gradient mixes the row's
  advantages. METHODS.md 1.2 `gspo`.

  Warning: the GSPO paper averages per sequence; that is `loss_agg=
  seq_mean_token_mean` here, while the aggregation is the caller's choice.

  Args:
    logp: [B, T] log-probs under the current policy.
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m (selects the tokens of the mean log-ratio).
    eps_low: lower clip width.
    eps_high: upper clip width.
    dual_clip: dual-clip constant c, or None.

  Returns:
    (l [B, T], diagnostics) as `ppo_clip`; `ratio` is s_i on every token.
  """
  B, T = check_token_shapes(logp=logp, old_logp=old_logp, advantages=advantages,
                       mask=mask)
  ratio = jnp.broadcast_to(sequence_ratio(logp, old_logp, mask)[:, None],
                           (B, T))
  loss, diagnostics = clipped_surrogate(
      ratio, advantages, eps_low=eps_low, eps_high=eps_high,
      dual_clip=dual_clip,
  )
  return loss, {**diagnostics, "ratio": ratio}


def gspo_token(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GSPO-token: per-token ratio sg(s_i) * exp(logp - sg(logp)).

  Its value is s_i on every token and its gradient is sg(s_i) * grad logp[i,t],
  so each token keeps its own advantage A[i,t]; with a row-constant advantage
  it has the same value and gradient as `gspo`. METHODS.md 1.2 `gspo-token`.

  Warning: METHODS.md writes s_i * exp(logp - sg(logp)) without the stop
  gradient on s_i; the GSPO paper (its GSPO-token equation) and verl stop it,
  and so does this function (otherwise the token term and the s_i term both
  carry the gradient).

  Args:
    logp: [B, T] log-probs under the current policy.
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m.
    eps_low: lower clip width.
    eps_high: upper clip width.
    dual_clip: dual-clip constant c, or None.

  Returns:
    (l [B, T], diagnostics) as `ppo_clip`; `ratio` is s_i on every token.
  """
  check_token_shapes(logp=logp, old_logp=old_logp, advantages=advantages,
                mask=mask)
  logp = logp.astype(jnp.float32)
  seq_ratio = jax.lax.stop_gradient(sequence_ratio(logp, old_logp, mask))
  ratio = seq_ratio[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))
  loss, diagnostics = clipped_surrogate(
      ratio, advantages, eps_low=eps_low, eps_high=eps_high,
      dual_clip=dual_clip,
  )
  return loss, {**diagnostics, "ratio": ratio}


# ---------------------------------------------------------------------------
# Aggregations: AGGREGATIONS[name](l, mask, *, max_response_len)
# -> (numerator, denominator) of this (micro-)batch. METHODS.md 1.3.
# ---------------------------------------------------------------------------


def token_mean(
    loss: jax.Array, mask: jax.Array, *, max_response_len: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """`token_mean`: (sum_{i,t} m*l, sum_{i,t} m). METHODS.md 1.3.

  Args:
    loss: [B, T] per-token loss l.
    mask: [B, T] response mask m.
    max_response_len: unused (one signature for every aggregation).

  Returns:
    (numerator, denominator), float32 scalars.
  """
  del max_response_len  # One signature for every aggregation.
  return masked_mean_pair(loss, mask)


def seq_mean_token_mean(
    loss: jax.Array, mask: jax.Array, *, max_response_len: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """`seq_mean_token_mean`: mean over rows of each row's token mean.

  numerator = sum_i (sum_t m*l / max(sum_t m, 1)); denominator = number of
  rows with at least one valid token. METHODS.md 1.3.

  Warning: a row without valid tokens (for example a truncated completion
  masked out entirely) counts in neither sum, so it does not dilute the mean;
  the original GRPO code divided by every row (and by 0 for an empty row).

  Args:
    loss: [B, T] per-token loss l.
    mask: [B, T] response mask m.
    max_response_len: unused (one signature for every aggregation).

  Returns:
    (numerator, denominator), float32 scalars.
  """
  del max_response_len  # One signature for every aggregation.
  check_token_shapes(loss=loss, mask=mask)
  mask = mask.astype(jnp.float32)
  row_tokens = jnp.sum(mask, axis=-1)
  row_sums = jnp.sum(_where_valid(loss.astype(jnp.float32), mask), axis=-1)
  row_means = row_sums / jnp.maximum(row_tokens, 1.0)
  return jnp.sum(row_means), jnp.sum((row_tokens > 0).astype(jnp.float32))


def seq_mean_token_sum_norm(
    loss: jax.Array, mask: jax.Array, *, max_response_len: int | None = None
) -> tuple[jax.Array, jax.Array]:
  """`seq_mean_token_sum_norm` (Dr. GRPO): (sum_{i,t} m*l, B * T_max).

  METHODS.md 1.3. The denominator is a constant of the batch shape: every row
  counts in B, including rows without valid tokens.

  Args:
    loss: [B, T] per-token loss l.
    mask: [B, T] response mask m.
    max_response_len: T_max, the configured maximum response length; >= T.

  Returns:
    (numerator, denominator), float32 scalars.
  """
  B, T = check_token_shapes(loss=loss, mask=mask)
  if max_response_len is None:
    raise ValueError(
        "loss_agg=seq_mean_token_sum_norm needs max_response_len (T_max)."
    )
  if max_response_len < T:
    raise ValueError(
        f"max_response_len={max_response_len} is shorter than the response "
        f"arrays (T={T})."
    )
  numerator, _ = masked_mean_pair(loss, mask)
  return numerator, jnp.asarray(B * max_response_len, jnp.float32)


# ---------------------------------------------------------------------------
# KL to the reference: KL_ESTIMATORS[name](logp, ref_logp) -> [B, T].
# delta = logp_ref - logp. METHODS.md 1.4.
# ---------------------------------------------------------------------------


def kl_k1(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k1 = -delta = logp - logp_ref. [B, T] -> [B, T]. METHODS.md 1.4.

  As a loss its expected gradient is zero; it is useful as a logged value.
  """
  return logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)


def kl_k2(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k2 = delta^2 / 2. [B, T] -> [B, T]. METHODS.md 1.4.

  Its gradient, (logp - logp_ref) * grad logp, is the correct gradient of
  KL(pi || pi_ref) on on-policy samples.
  """
  delta = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
  return 0.5 * delta * delta


def kl_k3(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """k3 = exp(delta) - delta - 1 (unbiased, >= 0). [B, T]. METHODS.md 1.4.

  Computed as expm1(delta) - delta, and for |delta| < 0.1 as its Taylor
  series delta^2 (1/2 + delta/6 + delta^2/24 + delta^3/120 + delta^4/720)
  (the first omitted term, delta^7 / 5040, is under 4e-9 of k3 at 0.1).
  In float32, exp(delta) - 1 carries the rounding of exp near 1 (an ulp,
  1.2e-7), 4.7% of k3 ~ delta^2 / 2 at delta = 1e-3; expm1(delta) - delta
  still cancels to 0.1% at 1e-4. The series is exact to float32 rounding.

  **(decision)** The exponent is clipped to [-20, 20] (the ratio bound of
  METHODS.md 1.2) while the linear term is not: beyond |delta| = 20 the value
  grows linearly instead of exponentially, so a token far less likely under
  the policy than under the reference gives a large finite value
  (expm1(20) - delta ~ 4.85e8 - delta), not inf. Past |delta| = 20 the value
  is then no longer the exact k3.
  """
  delta = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
  clipped = jnp.clip(delta, -_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
  small = jnp.abs(delta) < _K3_SERIES_BOUND
  d = jnp.where(small, delta, 0.0)
  series = d * d * (
      1 / 2 + d * (1 / 6 + d * (1 / 24 + d * (1 / 120 + d / 720))))
  return jnp.where(small, series, jnp.expm1(clipped) - delta)


def kl_k3_straight_through(
    logp: jax.Array, ref_logp: jax.Array
) -> jax.Array:
  """Value of k3, gradient of k2: k2 + sg(k3 - k2). [B, T]. METHODS.md 1.4.

  This is what `kl_estimator=k3` (the default) means: the logged and added
  value is the unbiased k3 estimate, the gradient is k2's, the one that is
  correct for KL(pi || pi_ref).

  Warning: verl's `low_var_kl` and TRL's beta term back-propagate through k3
  itself (clamped to [-10, 10] in verl), whose gradient is
  (1 - exp(delta)) * grad logp.
  """
  k2 = kl_k2(logp, ref_logp)
  return k2 + jax.lax.stop_gradient(kl_k3(logp, ref_logp) - k2)


# ---------------------------------------------------------------------------
# Registries.
# ---------------------------------------------------------------------------

POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo_clip": ppo_clip,
    "gspo": gspo,
    "gspo_token": gspo_token,
}

AGGREGATIONS: dict[str, AggregationFn] = {
    "token_mean": token_mean,
    "seq_mean_token_mean": seq_mean_token_mean,
    "seq_mean_token_sum_norm": seq_mean_token_sum_norm,
}

# `k3` is the straight-through form (value k3, gradient k2), METHODS.md 1.4.
KL_ESTIMATORS: dict[str, KLFn] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3_straight_through,
}


def _lookup(registry: dict[str, Callable], flag: str, name: str) -> Callable:
  if name not in registry:
    raise ValueError(f"{flag}={name!r} is unknown; valid: {sorted(registry)}.")
  return registry[name]


def get_policy_loss(name: str) -> PolicyLossFn:
  """Returns `POLICY_LOSSES[name]`; ValueError listing valid names if absent."""
  return _lookup(POLICY_LOSSES, "policy_loss", name)


def get_aggregation(name: str) -> AggregationFn:
  """Returns `AGGREGATIONS[name]`; ValueError listing valid names if absent."""
  return _lookup(AGGREGATIONS, "loss_agg", name)


def get_kl_estimator(name: str) -> KLFn:
  """Returns `KL_ESTIMATORS[name]`; ValueError listing valid names if absent."""
  return _lookup(KL_ESTIMATORS, "kl_estimator", name)


# ---------------------------------------------------------------------------
# The trainer's entry points.
# ---------------------------------------------------------------------------


def aggregation_denominator(
    mask: jax.Array, *, loss_agg: str, max_response_len: int | None = None
) -> jax.Array:
  """Loss denominator of a whole mini-batch, computed before its micro-batches.

  token_mean: sum m; seq_mean_token_mean: rows with a valid token;
  seq_mean_token_sum_norm: B * T_max. METHODS.md 1.3.

  Args:
    mask: [B, T] response mask m of the whole mini-batch.
    loss_agg: a key of `AGGREGATIONS` (the `loss_agg` flag).
    max_response_len: T_max; needed by `seq_mean_token_sum_norm`.

  Returns:
    float32 scalar denominator.
  """
  mask = jnp.asarray(mask, jnp.float32)
  _, denominator = get_aggregation(loss_agg)(
      jnp.zeros_like(mask), mask, max_response_len=max_response_len
  )
  return denominator


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    loss_denominator: jax.Array,
    token_count: jax.Array,
    policy_loss: str = "ppo_clip",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    loss_agg: str = "token_mean",
    max_response_len: int | None = None,
    ref_logp: jax.Array | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    pg_loss_fn: PolicyLossFn | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One micro-batch's share of the mini-batch loss, and additive metrics.

  l_total[i,t] = l[i,t] + kl_coef * k[i,t], with l from `policy_loss`
  (METHODS.md 1.2) and k from `kl_estimator` (METHODS.md 1.4); the returned
  loss is agg_numerator(l_total) / loss_denominator (METHODS.md 1.3). The KL
  term uses the same aggregation as the policy term.

  Args:
    logp: [B, T] log-probs under the current policy (differentiated).
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m.
    loss_denominator: `aggregation_denominator` of the whole mini-batch
      (pass this micro-batch's own for a single call).
    token_count: sum of the whole mini-batch's mask; normalizes the token
      metrics.
    policy_loss: a key of `POLICY_LOSSES` (the `policy_loss` flag).
    eps_low: lower clip width (METHODS.md default 0.2).
    eps_high: upper clip width (0.2; DAPO 0.28).
    dual_clip: dual-clip constant c (DelTA's release: 10), or None.
    loss_agg: a key of `AGGREGATIONS` (the `loss_agg` flag).
    max_response_len: T_max, needed by `seq_mean_token_sum_norm`.
    ref_logp: [B, T] reference log-probs; required when kl_coef > 0, and the
      KL is logged whenever it is given.
    kl_coef: KL weight, >= 0.
    kl_estimator: a key of `KL_ESTIMATORS`; `k3` is the straight-through form
      (value k3, gradient k2).
    pg_loss_fn: a per-token policy loss with the signature of
      `POLICY_LOSSES` values, used instead of `policy_loss` when given (the
      trainer's KL-Cov loss, `kl_cov.kl_cov_loss` bound to its selection).

  Returns:
    (loss, metrics): the float32 scalar loss share, and a flat dict of float32
    scalars, each this micro-batch's share of the mini-batch value, combined
    over micro-batches by `training.metrics.combine_metrics`: `policy/loss`,
    `policy/pg_loss`, `policy/clipfrac_low`, `policy/clipfrac_high`,
    `policy/ratio_mean`, `policy/ratio_max` (combined by max), plus
    `policy/clipfrac_dual` with a dual clip and `policy/kl` (token mean of
    the KL value) with `ref_logp`.
  """
  check_token_shapes(
      logp=logp, old_logp=old_logp, advantages=advantages, mask=mask,
      **({} if ref_logp is None else {"ref_logp": ref_logp}),
  )
  if kl_coef < 0.0:
    raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
  if kl_coef > 0.0 and ref_logp is None:
    raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logp.")
  mask = mask.astype(jnp.float32)
  aggregate = get_aggregation(loss_agg)
  pg_loss, diagnostics = (pg_loss_fn or get_policy_loss(policy_loss))(
      logp, old_logp, advantages, mask,
      eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip,
  )
  pg_numerator, _ = aggregate(pg_loss, mask, max_response_len=max_response_len)
  total_loss = pg_loss
  metrics = {}
  if ref_logp is not None:
    kl = get_kl_estimator(kl_estimator)(logp, ref_logp)
    total_loss = pg_loss + kl_coef * kl
    metrics["policy/kl"] = _safe_divide(
        masked_mean_pair(kl, mask)[0], token_count
    )
  numerator, _ = aggregate(total_loss, mask, max_response_len=max_response_len)
  loss = _safe_divide(numerator, loss_denominator)
  ratio = diagnostics.pop("ratio")
  metrics["policy/loss"] = loss
  metrics["policy/pg_loss"] = _safe_divide(pg_numerator, loss_denominator)
  metrics["policy/ratio_mean"] = _safe_divide(
      masked_mean_pair(ratio, mask)[0], token_count
  )
  metrics["policy/ratio_max"] = jnp.max(_where_valid(ratio, mask))
  for name, indicator in diagnostics.items():
    metrics["policy/clipfrac_" + name.removeprefix("clipped_")] = (
        _safe_divide(masked_mean_pair(indicator, mask)[0], token_count)
    )
  metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
  return loss, metrics
