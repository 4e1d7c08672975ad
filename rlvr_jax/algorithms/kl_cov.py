"""KL-Cov: a KL penalty on the few tokens with the largest covariance.

Cui et al. (arXiv 2505.22617) trace entropy collapse to the tokens whose
log-prob and advantage covary most; KL-Cov puts an |logp - logp_old| penalty
on the top `ratio` fraction of them. METHODS.md 6.6; verl
`compute_policy_loss_kl_cov`.

Two entry points, so the batch-global top-k never depends on how a mini-batch
is split:

  # Once per mini-batch, on the whole mini-batch, before the micro-batches:
  selection = kl_cov_selection(old_logp, advantages, mask, ratio=ratio)
  for micro in micro_batches:  # rows of `selection` travel with the micro-batch
    l, diagnostics = kl_cov_loss(logp, old_logp, advantages, mask,
                                 selection_micro, beta=beta, ...)
    # then the usual aggregation (losses.AGGREGATIONS) of l.

**(decision)** The covariance is taken with the old-policy log-probs of the
mini-batch, once. verl recomputes it from the current log-probs in every call
of the loss, that is on every micro-batch and at every optimizer step; at the
first optimizer step on a batch of rollouts the current policy is the sampling
policy, so logp == logp_old and (with verl's micro-batch equal to the
mini-batch) both select the same tokens. Later mini-batch steps differ from
verl by the drift of logp within one batch of rollouts. What this buys: the
selection is a function of the mini-batch alone, so 1 or 4 micro-batches and 1
or 8 devices select the same tokens by construction (under `jax.jit` with rows
sharded over devices the means and the top-k in `kl_cov_selection` are
global).
"""

import math

import jax
import jax.numpy as jnp

from rlvr_jax.algorithms import losses

# Relative slack under ceil so float rounding of an exact product (0.1 * 30
# evaluates to 3.0000001 in float32) never adds a token.
_CEIL_SLACK = 1e-6


def max_selected(ratio: float, num_tokens: int) -> int:
  """k_max = ceil(ratio * num_tokens), the static size of the top-k.

  Args:
    ratio: fraction of tokens penalized, in [0, 1].
    num_tokens: B * T, the token slots of the mini-batch.

  Returns:
    k_max, an int in [0, num_tokens].
  """
  x = ratio * num_tokens
  return min(num_tokens, math.ceil(x - _CEIL_SLACK * x))


def kl_cov_selection(
    logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ratio: float = 2e-4,
) -> jax.Array:
  """The tokens of the KL-Cov set S: the top ratio * n_valid by covariance.

  cov[i,t] = (logp[i,t] - mean logp) (A[i,t] - mean A), both means over the
  n_valid tokens with m > 0 of the whole batch; no gradient. S holds the
  count = ceil(ratio * n_valid) valid tokens of largest cov: a static
  `lax.top_k` of size k_max = ceil(ratio * B * T) over cov (masked tokens set
  to -inf), then ranks >= count dropped. METHODS.md 6.6.

  Rounding: count = ceil(ratio * n_valid), less a relative 1e-6 slack so an
  exact product is not rounded up by float error; count is 0 when ratio is 0
  or no token is valid, and is at least 1 otherwise.
  Ties: equal cov values are ranked by flat index i * T + t, lower first
  (`lax.top_k`'s order), so the selection is deterministic.

  Warning: verl takes max(1, int(ratio * n_valid)) tokens (floor, at least
  one), of the current policy's log-probs, per micro-batch; here the count is
  the ceil from METHODS.md 6.6 and the log-probs are the old policy's, once per
  mini-batch (see the module docstring).

  Args:
    logp: [B, T] log-probs of the response tokens; pass the old (sampling)
      policy's, `old_logp`, of the whole mini-batch.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m.
    ratio: fraction of valid tokens penalized (verl's `kl_cov_ratio`,
      default 2e-4), in [0, 1].

  Returns:
    [B, T] bool, True on the tokens of S (never on a masked token).
  """
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio must be in [0, 1], got {ratio}.")
  B, T = losses.check_token_shapes(logp=logp, advantages=advantages, mask=mask)
  k_max = max_selected(ratio, B * T)
  valid = mask > 0
  if k_max == 0:
    return jnp.zeros((B, T), bool)
  logp = jax.lax.stop_gradient(logp.astype(jnp.float32))
  advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))
  n_valid = jnp.sum(valid.astype(jnp.float32))
  denominator = jnp.maximum(n_valid, 1.0)
  mean_logp = jnp.sum(jnp.where(valid, logp, 0.0)) / denominator
  mean_adv = jnp.sum(jnp.where(valid, advantages, 0.0)) / denominator
  cov = (logp - mean_logp) * (advantages - mean_adv)
  scores = jnp.where(valid, cov, -jnp.inf).reshape(B * T)
  _, top = jax.lax.top_k(scores, k_max)
  x = jnp.float32(ratio) * n_valid
  count = jnp.ceil(x - jnp.float32(_CEIL_SLACK) * x)
  keep = jnp.arange(k_max, dtype=jnp.float32) < count
  selected = jnp.zeros((B * T,), bool).at[top].set(keep)
  return selected.reshape(B, T) & valid


def kl_cov_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    selection: jax.Array,
    *,
    beta: float = 1.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token KL-Cov loss: the penalized surrogate on S, PPO-clip elsewhere.

  On S (`selection`): l[i,t] = -A rho + beta |logp - logp_old|, with
  rho = exp(clip(logp - logp_old, -20, 20)) (`losses.token_ratio`) and no
  clip. Elsewhere l is `losses.ppo_clip` with eps_low, eps_high, dual_clip.
  METHODS.md 6.6.

  Warning: as in verl there is no clip (and no dual clip) on S: the penalty
  replaces it. Unlike verl, whose KL-Cov loss is the unclipped -A rho on every
  other token too, the other tokens keep the usual clipped loss (METHODS.md
  6.6: "elsewhere the usual policy loss").

  Args:
    logp: [B, T] log-probs under the current policy (differentiated).
    old_logp: [B, T] log-probs under the sampling policy.
    advantages: [B, T] advantages A.
    mask: [B, T] response mask m (the aggregation applies it).
    selection: [B, T] bool, S from `kl_cov_selection` on the whole
      mini-batch (these rows of it).
    beta: penalty coefficient (verl's `ppo_kl_coef`, default 1), >= 0.
    eps_low: lower clip width off S.
    eps_high: upper clip width off S.
    dual_clip: dual-clip constant off S, or None.

  Returns:
    (l [B, T], diagnostics) as `losses.ppo_clip`: the clip indicators (0 on
    S), `ratio` [B, T], and `kl_cov_selected` [B, T] float32 (1 on S), so
    that the token mean of the last is the penalized fraction.
  """
  if beta < 0.0:
    raise ValueError(f"beta must be >= 0, got {beta}.")
  losses.check_token_shapes(logp=logp, old_logp=old_logp, advantages=advantages,
                            mask=mask, selection=selection)
  clipped, diagnostics = losses.ppo_clip(
      logp, old_logp, advantages, mask,
      eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip,
  )
  ratio = diagnostics.pop("ratio")
  selected = selection.astype(bool)
  penalty = jnp.abs(logp.astype(jnp.float32) - old_logp.astype(jnp.float32))
  penalized = -advantages.astype(jnp.float32) * ratio + beta * penalty
  loss = jnp.where(selected, penalized, clipped)
  diagnostics = {k: jnp.where(selected, 0.0, v) for k, v in diagnostics.items()}
  return loss, {**diagnostics, "ratio": ratio,
                "kl_cov_selected": selected.astype(jnp.float32)}
