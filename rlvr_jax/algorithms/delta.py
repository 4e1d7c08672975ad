"""DelTA: discriminative token credit assignment (METHODS.md section 2).

DelTA (2026) reads the token-mean policy-gradient update at the old policy as
a linear discriminator: it raises log p of every token whose gradient proxy v
lies closer to the advantage-weighted centroid mu+ of the positive side than
to mu- of the negative side. A token typical of its own side gets a
coefficient above 1, a token shared by both sides (formatting) one below 1;
the loss then uses A * c~ (METHODS.md 2 step 9, in `losses.py`).

Two entry points compute the same coefficients:
- `delta_coefficients` takes the hidden states of the whole rollout batch,
  [B, T, D];
- `delta_coefficients_chunked` takes them as Nk chunks stacked along a leading
  axis, [Nk, Bk, T, D], and only ever builds fp32 gradient proxies of one chunk
  (the stored hidden states may stay in bf16). Each refinement iteration is one
  pass over the chunks that accumulates additive sufficient statistics.

Both run the single refinement procedure `_refine`; they differ only in the
`reduce` that sums a per-token statistic over the tokens of a unit (one call
on the whole array, or a `lax.scan` over chunks), so no formula is written
twice. Under `jit` with the batch sharded over devices the sums are global
(METHODS.md 2 (decision): statistics over the whole rollout batch).

Decisions where METHODS.md 2 is silent, also stated where they apply:
- Sides: a token is positive when its advantage A[i, t] > 0, negative when
  A[i, t] < 0. A sequence-level advantage [B] (or a [B, T] advantage constant
  over each row, as every sequence-level estimator produces) makes this the
  sign of the sequence-level advantage, as METHODS.md 2 states; a token-level
  advantage (SCRL) puts each token on the side of its own advantage, which is
  how steps 2 and 7 are written (w+- = max(+-A, 0) m, sign(A)).
- "Not centred for the margin" (step 5): gamma+- is the population standard
  deviation of the margin over the side's tokens, computed in the one-pass form
  sqrt(max(E[x^2] - E[x]^2, 1e-8)) (so it accumulates over chunks); the margin
  itself is not centred anywhere: the sigmoids of steps 6 and 7 take M / gamma,
  never (M - E[M]) / gamma, so M = 0 (equidistant from both centroids) always
  maps to the midpoint (lam_min + lam_max) / 2. E is the plain mean over the
  side's valid tokens (each token counts once, not weighted by |A|).
- Step 6 ordering: iteration j computes M_{j-1} with the current centroids
  mu_{j-1}, the soft weights from M_{j-1} and the current gammas, the new
  centroids mu_j, then the gammas from M_{j-1}; so iteration j >= 2 uses the
  gammas of M_{j-2}, and the coefficient (step 7) uses M_K with the gammas of
  M_{K-1} (of M_0 when K = 0). This is step 6 read literally, and it lets one
  pass over the tokens serve a whole iteration; for K <= 1 (default K = 1) it
  equals the reading where each iteration uses the gammas of its own margins.
- Empty side (no tokens with A > 0, or none with A < 0): its centroid is 0
  (the max(sum w, 1e-8) floor of step 3), so the other side's tokens are
  scored against the origin; its gamma is the floor sqrt(1e-8) = 1e-4 and is
  never used. A batch with all advantages 0 gets lam_min everywhere, which the
  normalization turns into 1. Nothing divides by a possibly-zero number, so
  the result is finite for any finite input; such units are counted in
  `delta/degenerate`.
- scope='group': steps 1-7 per prompt group; the normalization (step 8) stays
  over all valid tokens of the rollout batch, as step 8 says.
- Coefficients are 0 on invalid (mask 0) tokens.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

SCOPES = ("batch", "group")

# Floor on the side weight sums in the centroids (METHODS.md 2 step 3).
_WEIGHT_FLOOR = 1e-8
# Floor on the margin variance (METHODS.md 2 step 5).
_VARIANCE_FLOOR = 1e-8
# Floor on the denominators sum(c m) of step 8 and |mu+| |mu-| of the logged
# cosine.
_NORM_FLOOR = 1e-8
# fp32 dot products also on TPU/GPU, whose default drops to bf16 passes; the
# margin subtracts two large numbers.
_PRECISION = jax.lax.Precision.HIGHEST


def token_gradient_proxy(hidden: jax.Array, p_old: jax.Array) -> jax.Array:
  """Gradient proxy v = (1 - p) h of each sampled token.

  v[..., t, :] = (1 - p_old[..., t]) * hidden[..., t, :] is the gradient of
  log p(y_t) with respect to the LM-head row of the sampled token y_t.
  METHODS.md 2 step 1.

  Args:
    hidden: [B, T, D] (any leading dims) final hidden states h at the old
      policy, the input of the LM head (after the last norm); any float dtype.
    p_old: [B, T] probability pi_old(y_t) of the sampled token, from the same
      logits at the rollout temperature (exp of the old log-probs).

  Returns:
    [B, T, D] float32 v.
  """
  if hidden.shape[:-1] != p_old.shape:
    raise ValueError(
        f"hidden {hidden.shape} and p_old {p_old.shape} disagree: hidden must "
        "be p_old's shape plus a trailing D."
    )
  one_minus_p = 1.0 - p_old.astype(jnp.float32)
  return one_minus_p[..., None] * hidden.astype(jnp.float32)


class _Tokens(NamedTuple):
  """Per-token inputs of the statistics; leading dims [...] = [R, T] or chunk.

  Attributes:
    v: [..., D] gradient proxy (step 1).
    w_pos: [...] max(A, 0) m (step 2).
    w_neg: [...] max(-A, 0) m.
    is_pos: [...] 1.0 on valid tokens with A > 0.
    is_neg: [...] 1.0 on valid tokens with A < 0.
    valid: [...] 1.0 on valid tokens (mask > 0).
  """

  v: jax.Array
  w_pos: jax.Array
  w_neg: jax.Array
  is_pos: jax.Array
  is_neg: jax.Array
  valid: jax.Array


def _tokens(
    hidden: jax.Array, p_old: jax.Array, adv: jax.Array, mask: jax.Array
) -> _Tokens:
  """Builds `_Tokens` from hidden [..., D], p_old, adv and mask [...]."""
  valid = mask > 0
  mask = mask.astype(jnp.float32)
  return _Tokens(
      v=token_gradient_proxy(hidden, p_old),
      w_pos=jnp.maximum(adv, 0.0) * mask,
      w_neg=jnp.maximum(-adv, 0.0) * mask,
      is_pos=(valid & (adv > 0)).astype(jnp.float32),
      is_neg=(valid & (adv < 0)).astype(jnp.float32),
      valid=valid.astype(jnp.float32),
  )


class _CentroidSums(NamedTuple):
  """Additive sums for the centroids: sum(w v) [D] and sum(w) [] per side."""

  wv_pos: jax.Array
  wv_neg: jax.Array
  w_pos: jax.Array
  w_neg: jax.Array


class _MarginMoments(NamedTuple):
  """Additive moments of the margin per side, [] each (step 5).

  The positive side holds count, sum M, sum M^2 over its tokens; the negative
  side the same for -M.
  """

  n_pos: jax.Array
  x_pos: jax.Array
  xx_pos: jax.Array
  n_neg: jax.Array
  x_neg: jax.Array
  xx_neg: jax.Array


class _UnitStats(NamedTuple):
  """Final statistics of one statistics unit (the batch, or one group).

  Attributes:
    mu_pos: [D] positive centroid mu+ after the K refinements.
    mu_neg: [D] negative centroid mu-.
    gamma_pos: [] scale gamma+ used in step 7.
    gamma_neg: [] scale gamma-.
    n_pos: [] number of valid tokens with A > 0.
    n_neg: [] number of valid tokens with A < 0.
  """

  mu_pos: jax.Array
  mu_neg: jax.Array
  gamma_pos: jax.Array
  gamma_neg: jax.Array
  n_pos: jax.Array
  n_neg: jax.Array


def _sum_all(x: jax.Array) -> jax.Array:
  return jnp.sum(x, dtype=jnp.float32)


def _centroid_sums(
    v: jax.Array, weight_pos: jax.Array, weight_neg: jax.Array
) -> _CentroidSums:
  """sum(w+- v) and sum(w+-) over all tokens; v [..., D], weights [...]."""
  axes = weight_pos.ndim
  return _CentroidSums(
      wv_pos=jnp.tensordot(weight_pos, v, axes=axes, precision=_PRECISION),
      wv_neg=jnp.tensordot(weight_neg, v, axes=axes, precision=_PRECISION),
      w_pos=_sum_all(weight_pos),
      w_neg=_sum_all(weight_neg),
  )


def _centroids(sums: _CentroidSums) -> tuple[jax.Array, jax.Array]:
  """mu+- = sum(w+- v) / max(sum w+-, 1e-8), [D] each. Step 3."""
  mu_pos = sums.wv_pos / jnp.maximum(sums.w_pos, _WEIGHT_FLOOR)
  mu_neg = sums.wv_neg / jnp.maximum(sums.w_neg, _WEIGHT_FLOOR)
  return mu_pos, mu_neg


def _margin(v: jax.Array, mu_pos: jax.Array, mu_neg: jax.Array) -> jax.Array:
  """M = 2 v.(mu+ - mu-) - (|mu+|^2 - |mu-|^2), [..., D] -> [...]. Step 4.

  Equals ||v - mu-||^2 - ||v - mu+||^2 without forming either distance.
  """
  direction = mu_pos - mu_neg
  offset = jnp.dot(mu_pos, mu_pos, precision=_PRECISION) - jnp.dot(
      mu_neg, mu_neg, precision=_PRECISION
  )
  score = jnp.einsum("...d,d->...", v, direction, precision=_PRECISION)
  return 2.0 * score - offset


def _margin_moments(margin: jax.Array, tokens: _Tokens) -> _MarginMoments:
  """Count, sum and sum of squares of M (positive) and -M (negative). Step 5."""
  return _MarginMoments(
      n_pos=_sum_all(tokens.is_pos),
      x_pos=_sum_all(tokens.is_pos * margin),
      xx_pos=_sum_all(tokens.is_pos * margin * margin),
      n_neg=_sum_all(tokens.is_neg),
      x_neg=_sum_all(tokens.is_neg * -margin),
      xx_neg=_sum_all(tokens.is_neg * margin * margin),
  )


def _population_std(n: jax.Array, x: jax.Array, xx: jax.Array) -> jax.Array:
  """sqrt(max(E[x^2] - E[x]^2, 1e-8)) from count, sum and sum of squares.

  An empty side (n = 0) gives the floor sqrt(1e-8).
  """
  count = jnp.maximum(n, 1.0)
  mean = x / count
  return jnp.sqrt(jnp.maximum(xx / count - mean * mean, _VARIANCE_FLOOR))


def _gammas(moments: _MarginMoments) -> tuple[jax.Array, jax.Array]:
  """gamma+ = std of M on the positive side, gamma- of -M on the negative."""
  gamma_pos = _population_std(moments.n_pos, moments.x_pos, moments.xx_pos)
  gamma_neg = _population_std(moments.n_neg, moments.x_neg, moments.xx_neg)
  return gamma_pos, gamma_neg


# `reduce(fn)` applies fn to the `_Tokens` of every chunk of one statistics
# unit and returns the sum of the results (fn returns a pytree of sums).
_Reduce = Callable[[Callable[[_Tokens], Any]], Any]


def _refine(reduce: _Reduce, *, k: int) -> _UnitStats:
  """Centroids and scales after K refinements. METHODS.md 2 steps 3-6.

  Passes over the tokens: one for the centroids mu_0 (step 3), one for the
  gammas of M_0 (steps 4-5), then one per refinement iteration j = 1..K that,
  with M_{j-1} computed from mu_{j-1}, accumulates the soft-weighted centroid
  sums of mu_j and the moments of M_{j-1} (the gammas of the next iteration).

  Args:
    reduce: sums a per-token statistic over the unit (see `_Reduce`).
    k: number K of refinement iterations, >= 0.

  Returns:
    `_UnitStats` with mu_K and the gammas of M_{max(K - 1, 0)}.
  """
  mu_pos, mu_neg = _centroids(
      reduce(lambda t: _centroid_sums(t.v, t.w_pos, t.w_neg))
  )
  moments = reduce(lambda t: _margin_moments(_margin(t.v, mu_pos, mu_neg), t))
  gamma_pos, gamma_neg = _gammas(moments)

  def iteration(_, carry):
    mu_pos, mu_neg, gamma_pos, gamma_neg = carry

    def statistics(t: _Tokens):
      margin = _margin(t.v, mu_pos, mu_neg)
      soft_pos = jax.nn.sigmoid(margin / gamma_pos) * t.w_pos
      soft_neg = jax.nn.sigmoid(-margin / gamma_neg) * t.w_neg
      return (
          _centroid_sums(t.v, soft_pos, soft_neg),
          _margin_moments(margin, t),
      )

    sums, moments = reduce(statistics)
    return _centroids(sums) + _gammas(moments)

  mu_pos, mu_neg, gamma_pos, gamma_neg = jax.lax.fori_loop(
      0, k, iteration, (mu_pos, mu_neg, gamma_pos, gamma_neg)
  )
  return _UnitStats(
      mu_pos, mu_neg, gamma_pos, gamma_neg, moments.n_pos, moments.n_neg
  )


def _raw_coefficients(
    tokens: _Tokens, stats: _UnitStats, *, lam_min: float, lam_max: float
) -> jax.Array:
  """Coefficient c before normalization, [...]. METHODS.md 2 step 7.

  c = lam_min + (lam_max - lam_min) sigmoid(sign(A) M / gamma_side) for
  A != 0 and c = lam_min for A = 0, with M from the final centroids; 0 on
  invalid tokens.
  """
  margin = _margin(tokens.v, stats.mu_pos, stats.mu_neg)
  on_side = tokens.is_pos * jax.nn.sigmoid(
      margin / stats.gamma_pos
  ) + tokens.is_neg * jax.nn.sigmoid(-margin / stats.gamma_neg)
  return tokens.valid * (lam_min + (lam_max - lam_min) * on_side)


def _unit_coefficients(
    hidden: jax.Array,
    p_old: jax.Array,
    adv: jax.Array,
    mask: jax.Array,
    *,
    k: int,
    lam_min: float,
    lam_max: float,
) -> tuple[jax.Array, _UnitStats]:
  """Steps 1-7 on one statistics unit held whole: hidden [R, T, D] -> [R, T]."""
  tokens = _tokens(hidden, p_old, adv, mask)
  stats = _refine(lambda fn: fn(tokens), k=k)
  raw = _raw_coefficients(tokens, stats, lam_min=lam_min, lam_max=lam_max)
  return raw, stats


def _scan_reduce(chunks: tuple[jax.Array, ...]) -> _Reduce:
  """A `_Reduce` that sums over chunks with one `lax.scan` pass.

  Args:
    chunks: (hidden [Nk, Bk, T, D], p_old, adv, mask [Nk, Bk, T]).

  Returns:
    reduce(fn) = sum over c of fn(_tokens(chunk c)); only one chunk's v exists
    at a time.
  """

  def reduce(fn: Callable[[_Tokens], Any]) -> Any:
    def per_chunk(chunk):
      return fn(_tokens(*chunk))

    chunk_shape = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), chunks
    )
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(per_chunk, chunk_shape),
    )

    def step(total, chunk):
      return jax.tree.map(jnp.add, total, per_chunk(chunk)), None

    return jax.lax.scan(step, zeros, chunks)[0]

  return reduce


def _split_rows(x: jax.Array, group_size: int) -> jax.Array:
  """[R, ...] -> [R // G, G, ...]: one prompt group per leading index."""
  return x.reshape((x.shape[0] // group_size, group_size) + x.shape[1:])


def _check_inputs(
    hidden: jax.Array,
    p_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    row_axis: int,
    k: int,
    lam_min: float,
    lam_max: float,
    scope: str,
    group_size: int | None,
) -> jax.Array:
  """Validates the arguments; returns the advantages as float32 [..., T].

  Args:
    hidden: [..., T, D] with `row_axis` the axis of rows a group splits.
    p_old: [..., T].
    advantages: [...] (one per row) or [..., T].
    mask: [..., T].
    row_axis: index of the row axis (0 for [B, T], 1 for [Nk, Bk, T]).
    k: refinement iterations.
    lam_min: lower coefficient bound.
    lam_max: upper coefficient bound.
    scope: one of `SCOPES`.
    group_size: rows per prompt group (scope 'group').

  Returns:
    [..., T] float32 advantages.
  """
  token_shape = hidden.shape[:-1]
  if hidden.ndim != row_axis + 3:
    raise ValueError(
        f"hidden must have {row_axis + 3} dims, got shape {hidden.shape}."
    )
  for name, array in (("p_old", p_old), ("mask", mask)):
    if array.shape != token_shape:
      raise ValueError(
          f"{name} {array.shape} must equal hidden {hidden.shape} without its "
          "last (D) axis."
      )
  if advantages.shape == token_shape[:-1]:
    advantages = jnp.broadcast_to(advantages[..., None], token_shape)
  elif advantages.shape != token_shape:
    raise ValueError(
        f"advantages {advantages.shape} must be {token_shape[:-1]} (per row) "
        f"or {token_shape} (per token) to match hidden {hidden.shape}."
    )
  if isinstance(k, bool) or not isinstance(k, int) or k < 0:
    raise ValueError(
        f"k (refinement iterations) must be an int >= 0, got {k!r}."
    )
  if not 0.0 < lam_min <= lam_max:
    raise ValueError(
        f"need 0 < lam_min <= lam_max, got lam_min={lam_min!r}, "
        f"lam_max={lam_max!r}."
    )
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
  if scope == "group":
    rows = token_shape[row_axis]
    if not isinstance(group_size, int) or group_size < 1:
      raise ValueError(
          f"scope='group' needs group_size, a positive int; got {group_size!r}."
      )
    if rows % group_size:
      raise ValueError(
          f"scope='group': {rows} rows per {'chunk' if row_axis else 'batch'} "
          f"are not a multiple of group_size={group_size}."
      )
  return advantages.astype(jnp.float32)


def _normalize_with_metrics(
    raw: jax.Array, adv: jax.Array, mask: jax.Array, stats: _UnitStats
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Self-normalization (step 8) and the logged diagnostics.

  c~ = c * sum(m) / sum(c m) over all valid tokens of the rollout batch.

  Args:
    raw: [..., T] coefficients c, 0 on invalid tokens.
    adv: [..., T] advantages.
    mask: [..., T] response mask m.
    stats: `_UnitStats` stacked over Nu statistics units ([Nu, D] and [Nu]).

  Returns:
    (c~ [..., T], metrics): flat dict of float32 scalars:
      delta/coef_mean_pos, delta/coef_mean_neg: mean c~ on each side;
      delta/frac_above_one: fraction of valid tokens with c~ > 1;
      delta/norm_scale: sum(m) / sum(c m), so c~ = c * norm_scale;
      delta/gamma_pos, delta/gamma_neg, delta/centroid_distance
        (|mu+ - mu-|), delta/centroid_cosine: means over the units with
        tokens on both sides (0 when there are none);
      delta/degenerate: number of units without a positive or without a
        negative token.
  """
  mask = mask.astype(jnp.float32)
  valid = (mask > 0).astype(jnp.float32)
  scale = _sum_all(mask) / jnp.maximum(_sum_all(raw * mask), _NORM_FLOOR)
  coef = raw * scale

  is_pos = valid * (adv > 0)
  is_neg = valid * (adv < 0)

  def mean(values, weights):
    return _sum_all(values * weights) / jnp.maximum(_sum_all(weights), 1.0)

  degenerate = ((stats.n_pos == 0) | (stats.n_neg == 0)).astype(jnp.float32)
  usable = 1.0 - degenerate
  norm_pos = jnp.linalg.norm(stats.mu_pos, axis=-1)
  norm_neg = jnp.linalg.norm(stats.mu_neg, axis=-1)
  cosine = jnp.sum(stats.mu_pos * stats.mu_neg, axis=-1) / jnp.maximum(
      norm_pos * norm_neg, _NORM_FLOOR
  )
  distance = jnp.linalg.norm(stats.mu_pos - stats.mu_neg, axis=-1)
  metrics = {
      "delta/coef_mean_pos": mean(coef, is_pos),
      "delta/coef_mean_neg": mean(coef, is_neg),
      "delta/frac_above_one": mean((coef > 1.0).astype(jnp.float32), valid),
      "delta/norm_scale": scale,
      "delta/gamma_pos": mean(stats.gamma_pos, usable),
      "delta/gamma_neg": mean(stats.gamma_neg, usable),
      "delta/centroid_distance": mean(distance, usable),
      "delta/centroid_cosine": mean(cosine, usable),
      "delta/degenerate": _sum_all(degenerate),
  }
  return coef, metrics


_STATIC = ("k", "lam_min", "lam_max", "scope", "group_size")


@functools.partial(jax.jit, static_argnames=_STATIC)
def delta_coefficients(
    hidden: jax.Array,
    p_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    k: int = 1,
    lam_min: float = 0.8,
    lam_max: float = 1.2,
    scope: str = "batch",
    group_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DelTA token coefficients c~ of a rollout batch (DelTA, 2026).

  METHODS.md 2 steps 1-8, with v = (1 - p_old) h:
    w+- = max(+-A, 0) m;  mu+- = sum(w+- v) / max(sum w+-, 1e-8);
    M = 2 v.(mu+ - mu-) - (|mu+|^2 - |mu-|^2);
    gamma+ = std(M | A > 0), gamma- = std(-M | A < 0), population std
      sqrt(max(E[x^2] - E[x]^2, 1e-8));
    K times: s+ = sigmoid(M / gamma+), s- = sigmoid(-M / gamma-), centroids
      from s+- w+-, gammas from this iteration's M, centroids replaced;
    c = lam_min + (lam_max - lam_min) sigmoid(sign(A) M / gamma_side), or
      lam_min where A = 0;  c~ = c sum(m) / sum(c m).
  The loss multiplies A by stop_gradient(c~) (step 9). See the module
  docstring for the decisions where METHODS.md is silent (sides of token-level
  advantages, what "not centred" means, the step-6 order, empty sides).

  Args:
    hidden: [B, T, D] final hidden states h at the old policy (input of the LM
      head), any float dtype; computed in float32.
    p_old: [B, T] pi_old(y_t) of the sampled tokens (exp of old log-probs).
    advantages: [B] sequence-level or [B, T] token advantages A.
    mask: [B, T] response mask m (1 on generated tokens).
    k: number K of refinement iterations (step 6), >= 0.
    lam_min: coefficient of the least typical token, > 0.
    lam_max: coefficient of the most typical token, >= lam_min.
    scope: 'batch' (statistics over the whole batch) or 'group' (steps 1-7
      per prompt group; step 8 still over the whole batch).
    group_size: G, rows per prompt group, contiguous; used by scope 'group'
      and must divide B.

  Returns:
    (coef, metrics): coef [B, T] float32 c~ (0 on invalid tokens; mean 1 over
    the valid tokens), metrics a flat dict of float32 scalars (see
    `_normalize_with_metrics`).

  Warning: the DelTA release computed the statistics per data-parallel shard
  and ran extra forward passes for h; here they are global over the batch on
  any mesh and h comes from the old-log-prob forward pass (METHODS.md 2).
  """
  adv = _check_inputs(
      hidden, p_old, advantages, mask, row_axis=0, k=k, lam_min=lam_min,
      lam_max=lam_max, scope=scope, group_size=group_size,
  )
  unit = functools.partial(
      _unit_coefficients, k=k, lam_min=lam_min, lam_max=lam_max
  )
  if scope == "batch":
    raw, stats = unit(hidden, p_old, adv, mask)
    stats = jax.tree.map(lambda x: x[None], stats)
  else:
    grouped = [_split_rows(x, group_size) for x in (hidden, p_old, adv, mask)]
    raw, stats = jax.vmap(unit)(*grouped)
    raw = raw.reshape(mask.shape)
  return _normalize_with_metrics(raw, adv, mask, stats)


@functools.partial(jax.jit, static_argnames=_STATIC)
def delta_coefficients_chunked(
    hidden: jax.Array,
    p_old: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    k: int = 1,
    lam_min: float = 0.8,
    lam_max: float = 1.2,
    scope: str = "batch",
    group_size: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`delta_coefficients` over a batch stored as Nk chunks of Bk rows.

  Same formulas and results (to float32 summation order) as
  `delta_coefficients` on the batch `x.reshape(Nk * Bk, ...)`, for batches whose
  fp32 v does not fit at once. METHODS.md 2 (decision: accumulate the sums
  chunk by chunk). scope 'batch': K + 3 `lax.scan` passes over the chunks
  (centroids; gammas of M_0; one per refinement iteration; coefficients), each
  carrying only sums: sum(w v) [D] and sum(w) per side, count, sum M and
  sum M^2 per side. scope 'group': every chunk holds whole groups, so the
  chunks are processed one after another by `lax.map`.

  Args:
    hidden: [Nk, Bk, T, D] final hidden states, any float dtype (bf16 storage
      halves the memory; each chunk is cast to float32 when used).
    p_old: [Nk, Bk, T] pi_old(y_t).
    advantages: [Nk, Bk] sequence-level or [Nk, Bk, T] token advantages.
    mask: [Nk, Bk, T] response mask.
    k: number K of refinement iterations, >= 0.
    lam_min: coefficient lower bound, > 0.
    lam_max: coefficient upper bound, >= lam_min.
    scope: 'batch' or 'group'.
    group_size: G, must divide Bk for scope 'group'.

  Returns:
    (coef [Nk, Bk, T] float32 c~, metrics) as in `delta_coefficients`.
  """
  adv = _check_inputs(
      hidden, p_old, advantages, mask, row_axis=1, k=k, lam_min=lam_min,
      lam_max=lam_max, scope=scope, group_size=group_size,
  )
  chunks = (hidden, p_old, adv, mask)
  if scope == "batch":
    stats = _refine(_scan_reduce(chunks), k=k)
    raw = jax.lax.map(
        lambda chunk: _raw_coefficients(
            _tokens(*chunk), stats, lam_min=lam_min, lam_max=lam_max
        ),
        chunks,
    )
    stats = jax.tree.map(lambda x: x[None], stats)
  else:
    unit = functools.partial(
        _unit_coefficients, k=k, lam_min=lam_min, lam_max=lam_max
    )
    raw, stats = jax.lax.map(
        lambda chunk: jax.vmap(unit)(
            *[_split_rows(x, group_size) for x in chunk]
        ),
        chunks,
    )
    raw = raw.reshape(mask.shape)
    stats = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), stats)
  return _normalize_with_metrics(raw, adv, mask, stats)
