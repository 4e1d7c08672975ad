"""Tests of DelTA coefficients and reports (METHODS.md section 2)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from matplotlib import image
from scipy import special

from rlvr_jax.algorithms import delta
from rlvr_jax.training import delta_report

pytestmark = pytest.mark.usefixtures("strict_rank")


def _reference_unit(h, p, adv, mask, *, k, lam_min, lam_max):
  """Steps 1-7 of METHODS.md 2 on one unit, float64, written from the text.

  Margins are explicit squared distances ||v - mu-||^2 - ||v - mu+||^2, the
  standard deviation is numpy's two-pass one, the refinement a Python loop.

  Args:
    h: [R, T, D]; p, adv, mask: [R, T].

  Returns:
    (c [R, T] before normalization, mu+ [D], mu- [D], gamma+, gamma-,
    number of positive tokens, number of negative tokens).
  """
  D = h.shape[-1]
  v = ((1.0 - p)[..., None] * h).reshape(-1, D)
  a = adv.reshape(-1)
  m = mask.reshape(-1)
  pos = (a > 0) & (m > 0)
  neg = (a < 0) & (m > 0)
  w_pos = np.maximum(a, 0.0) * m
  w_neg = np.maximum(-a, 0.0) * m

  def centroid(w):
    return (w[:, None] * v).sum(axis=0) / max(w.sum(), 1e-8)

  def margin(mu_pos, mu_neg):
    return ((v - mu_neg) ** 2).sum(axis=1) - ((v - mu_pos) ** 2).sum(axis=1)

  def std(x):
    variance = np.var(x) if x.size else 0.0
    return math.sqrt(max(variance, 1e-8))

  mu_pos, mu_neg = centroid(w_pos), centroid(w_neg)
  M = margin(mu_pos, mu_neg)
  gamma_pos, gamma_neg = std(M[pos]), std(-M[neg])
  for _ in range(k):
    s_pos = special.expit(M / gamma_pos)
    s_neg = special.expit(-M / gamma_neg)
    new_pos, new_neg = centroid(s_pos * w_pos), centroid(s_neg * w_neg)
    gamma_pos, gamma_neg = std(M[pos]), std(-M[neg])
    mu_pos, mu_neg = new_pos, new_neg
    M = margin(mu_pos, mu_neg)
  span = lam_max - lam_min
  c = np.full_like(M, lam_min)
  c[pos] = lam_min + span * special.expit(M[pos] / gamma_pos)
  c[neg] = lam_min + span * special.expit(-M[neg] / gamma_neg)
  c = c * (m > 0)
  return (c.reshape(adv.shape), mu_pos, mu_neg, gamma_pos, gamma_neg,
          pos.sum(), neg.sum())


def _reference(h, p, adv, mask, *, k, lam_min=0.8, lam_max=1.2,
               group_size=None):
  """Coefficients c~ [B, T] and metrics; group_size None means scope batch."""
  h, p, mask = (np.asarray(x, np.float64) for x in (h, p, mask))
  adv = np.asarray(adv, np.float64)
  if adv.ndim == 1:
    adv = np.repeat(adv[:, None], mask.shape[1], axis=1)
  B = h.shape[0]
  G = group_size or B
  units = [
      _reference_unit(h[s:s + G], p[s:s + G], adv[s:s + G], mask[s:s + G],
                      k=k, lam_min=lam_min, lam_max=lam_max)
      for s in range(0, B, G)
  ]
  c = np.concatenate([u[0] for u in units])
  coef = c * mask.sum() / (c * mask).sum()
  valid = mask > 0
  pos, neg = valid & (adv > 0), valid & (adv < 0)
  usable = [u for u in units if u[5] > 0 and u[6] > 0]

  def mean_over_usable(fn):
    return np.mean([fn(u) for u in usable]) if usable else 0.0

  metrics = {
      "delta/coef_mean_pos": coef[pos].mean() if pos.any() else 0.0,
      "delta/coef_mean_neg": coef[neg].mean() if neg.any() else 0.0,
      "delta/frac_above_one": (coef[valid] > 1).mean(),
      "delta/norm_scale": mask.sum() / (c * mask).sum(),
      "delta/gamma_pos": mean_over_usable(lambda u: u[3]),
      "delta/gamma_neg": mean_over_usable(lambda u: u[4]),
      "delta/centroid_distance": mean_over_usable(
          lambda u: np.linalg.norm(u[1] - u[2])),
      "delta/centroid_cosine": mean_over_usable(
          lambda u: u[1] @ u[2] / (np.linalg.norm(u[1]) * np.linalg.norm(u[2]))
      ),
      "delta/degenerate": float(len(units) - len(usable)),
  }
  return coef, metrics


def _random_batch(seed, B=8, T=6, D=16):
  """Random h, p, per-row advantages with both signs and zeros, ragged mask."""
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(B, T, D)).astype(np.float32)
  p = rng.uniform(0.05, 0.95, size=(B, T)).astype(np.float32)
  # Every group of 4 rows has a positive, a negative and a zero advantage.
  pattern = np.array([1.3, -0.6, 0.0, 0.4], np.float32)
  adv = np.tile(pattern, B // 4) * rng.uniform(0.5, 1.5, size=B)
  adv = adv.astype(np.float32)
  lengths = rng.integers(1, T + 1, size=B)
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  return h, p, adv, mask


def _assert_metrics(got, expected, rtol=1e-5, atol=1e-6):
  assert set(got) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol,
                               err_msg=key)


def test_token_gradient_proxy_by_hand():
  # v = (1 - p) h: (1 - 0.25) * [2, -4] = [1.5, -3]; (1 - 1) * [8, 8] = [0, 0].
  h = jnp.array([[[2.0, -4.0], [8.0, 8.0]]], jnp.bfloat16)
  p = jnp.array([[0.25, 1.0]])
  v = delta.token_gradient_proxy(h, p)
  assert v.dtype == jnp.float32
  np.testing.assert_array_equal(v, [[[1.5, -3.0], [0.0, 0.0]]])


def _hand_batch():
  # D = 1, p = 0.5 everywhere, so v = h / 2. Three rows of two tokens:
  #   row 0, A = +1: v = 3, 5
  #   row 1, A = -1: v = -1, 1
  #   row 2, A = 0:  v = 7, and one padding token (mask 0).
  h = np.array([[6.0, 10.0], [-2.0, 2.0], [14.0, 18.0]], np.float32)[..., None]
  p = np.full((3, 2), 0.5, np.float32)
  adv = np.array([1.0, -1.0, 0.0], np.float32)
  mask = np.array([[1, 1], [1, 1], [1, 0]], np.float32)
  return h, p, adv, mask


def test_hand_worked_example_k0():
  # mu+ = (3 + 5) / 2 = 4, mu- = (-1 + 1) / 2 = 0.
  # M = 2 v (4 - 0) - (16 - 0) = 8 v - 16: row 0 -> 8, 24; row 1 -> -24, -8.
  # gamma+ = std{8, 24} = 8; gamma- = std{24, 8} = 8.
  # c: row 0 -> 0.8 + 0.4 s(1), 0.8 + 0.4 s(3); row 1 (-M / 8 = 3, 1) ->
  # 0.8 + 0.4 s(3), 0.8 + 0.4 s(1); row 2 (A = 0) -> 0.8; padding -> 0.
  # sum(c m) = 4 + 0.8 (s(1) + s(3)); c~ = c * 5 / sum(c m).
  s1, s3 = special.expit(1.0), special.expit(3.0)
  c = np.array([[0.8 + 0.4 * s1, 0.8 + 0.4 * s3],
                [0.8 + 0.4 * s3, 0.8 + 0.4 * s1],
                [0.8, 0.0]])
  scale = 5.0 / (4.0 + 0.8 * (s1 + s3))
  coef, metrics = delta.delta_coefficients(*_hand_batch(), k=0)
  np.testing.assert_allclose(coef, c * scale, rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/norm_scale"], scale, rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/gamma_pos"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/gamma_neg"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/centroid_distance"], 4.0)
  # mu- = 0: the cosine's denominator is floored, so it is 0, not NaN.
  assert metrics["delta/centroid_cosine"] == 0.0
  assert metrics["delta/degenerate"] == 0.0


def test_hand_worked_example_k1():
  # From M_0 and gammas (8, 8) of the K = 0 example: soft weights
  # s+ = s(8/8), s(24/8) on v = 3, 5 and s- = s(24/8), s(8/8) on v = -1, 1:
  #   mu+_1 = (3 s(1) + 5 s(3)) / (s(1) + s(3)),
  #   mu-_1 = (-s(3) + s(1)) / (s(1) + s(3)).
  # The gammas are recomputed from M_0, so stay 8; then
  #   M_1 = 2 v (mu+_1 - mu-_1) - (mu+_1^2 - mu-_1^2).
  s1, s3 = special.expit(1.0), special.expit(3.0)
  mu_pos = (3 * s1 + 5 * s3) / (s1 + s3)
  mu_neg = (s1 - s3) / (s1 + s3)
  v = np.array([[3.0, 5.0], [-1.0, 1.0]])
  M = 2 * v * (mu_pos - mu_neg) - (mu_pos**2 - mu_neg**2)
  c = np.array([0.8 + 0.4 * special.expit(M[0] / 8.0),
                0.8 + 0.4 * special.expit(-M[1] / 8.0),
                [0.8, 0.0]])
  coef, metrics = delta.delta_coefficients(*_hand_batch(), k=1)
  np.testing.assert_allclose(coef, c * 5.0 / c.sum(), rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/gamma_pos"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(metrics["delta/centroid_distance"],
                             mu_pos - mu_neg, rtol=1e-6)


@pytest.mark.parametrize("scope", ["batch", "group"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_matches_numpy_reference(k, scope):
  h, p, adv, mask = _random_batch(seed=k)
  group_size = 4 if scope == "group" else None
  coef, metrics = delta.delta_coefficients(
      h, p, adv, mask, k=k, scope=scope, group_size=group_size)
  expected, expected_metrics = _reference(h, p, adv, mask, k=k,
                                          group_size=group_size)
  np.testing.assert_allclose(coef, expected, rtol=1e-5, atol=1e-5)
  _assert_metrics(metrics, expected_metrics)
  # Step 8: mean c~ over the valid tokens is 1; A = 0 tokens get lam_min
  # before the normalization; invalid tokens get 0.
  coef = np.asarray(coef)
  np.testing.assert_allclose((coef * mask).sum() / mask.sum(), 1.0, rtol=1e-6)
  zero = (mask > 0) & (adv[:, None] == 0)
  assert zero.any()
  np.testing.assert_allclose(coef[zero],
                             0.8 * metrics["delta/norm_scale"], rtol=1e-6)
  np.testing.assert_array_equal(coef[mask == 0], 0.0)


@pytest.mark.parametrize("scope", ["batch", "group"])
def test_token_level_advantages_match_reference(scope):
  # Token-varying A (as SCRL gives): each token is on the side of its own A.
  h, p, _, mask = _random_batch(seed=11)
  rng = np.random.default_rng(12)
  adv = (rng.normal(size=mask.shape) * (rng.uniform(size=mask.shape) > 0.2))
  adv = adv.astype(np.float32)
  group_size = 4 if scope == "group" else None
  coef, metrics = delta.delta_coefficients(
      h, p, adv, mask, k=2, lam_min=0.5, lam_max=1.5, scope=scope,
      group_size=group_size)
  expected, expected_metrics = _reference(
      h, p, adv, mask, k=2, lam_min=0.5, lam_max=1.5, group_size=group_size)
  np.testing.assert_allclose(coef, expected, rtol=1e-5, atol=1e-5)
  _assert_metrics(metrics, expected_metrics)


def test_row_advantages_equal_broadcast_token_advantages():
  h, p, adv, mask = _random_batch(seed=3)
  kwargs = dict(k=2)
  per_row, _ = delta.delta_coefficients(h, p, adv, mask, **kwargs)
  per_token, _ = delta.delta_coefficients(
      h, p, np.repeat(adv[:, None], mask.shape[1], axis=1), mask, **kwargs)
  np.testing.assert_allclose(per_row, per_token, rtol=1e-6)


def test_margin_equals_difference_of_squared_distances():
  rng = np.random.default_rng(5)
  v, mu_pos, mu_neg = (rng.normal(size=s).astype(np.float32)
                       for s in ((4, 3, 8), (8,), (8,)))
  expected = (((v - mu_neg) ** 2).sum(-1) - ((v - mu_pos) ** 2).sum(-1))
  got = delta._margin(jnp.asarray(v), jnp.asarray(mu_pos), jnp.asarray(mu_neg))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "scope,k,dtype",
    [("batch", 0, jnp.float32), ("batch", 2, jnp.float32),
     ("group", 1, jnp.float32), ("batch", 1, jnp.bfloat16)],
)
def test_chunked_matches_whole_batch(scope, k, dtype):
  h, p, adv, mask = _random_batch(seed=21)
  h = jnp.asarray(h, dtype)
  group_size = 4 if scope == "group" else None
  kwargs = dict(k=k, scope=scope, group_size=group_size)
  whole, whole_metrics = delta.delta_coefficients(h, p, adv, mask, **kwargs)
  C, Bc = 2, 4
  chunked, chunked_metrics = delta.delta_coefficients_chunked(
      h.reshape(C, Bc, *h.shape[1:]), p.reshape(C, Bc, -1),
      adv.reshape(C, Bc), mask.reshape(C, Bc, -1), **kwargs)
  np.testing.assert_allclose(chunked.reshape(whole.shape), whole,
                             rtol=1e-6, atol=1e-6)
  _assert_metrics(chunked_metrics, whole_metrics, rtol=1e-6)


@pytest.mark.parametrize("scope", ["batch", "group"])
def test_eight_devices_match_one_device(scope):
  h, p, adv, mask = _random_batch(seed=31)
  group_size = 4 if scope == "group" else None
  fn = functools.partial(delta.delta_coefficients, k=2, scope=scope,
                         group_size=group_size)
  one = jax.devices()[0]
  single, single_metrics = fn(*(jax.device_put(x, one)
                                for x in (h, p, adv, mask)))
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded_inputs = [jax.device_put(x, rows) for x in (h, p, adv, mask)]
  sharded, sharded_metrics = fn(*sharded_inputs)
  assert len(sharded_inputs[0].sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-6, atol=1e-6)
  _assert_metrics(sharded_metrics, single_metrics, rtol=1e-6)


def _edge_case(name):
  """A batch of 4 rows x 3 tokens, D = 4, with one degenerate feature."""
  rng = np.random.default_rng(41)
  h = rng.normal(size=(4, 3, 4)).astype(np.float32)
  p = rng.uniform(0.1, 0.9, size=(4, 3)).astype(np.float32)
  adv = np.array([1.0, -2.0, 0.5, -0.5], np.float32)
  mask = np.ones((4, 3), np.float32)
  if name == "no_positive":
    adv = -np.abs(adv)
  elif name == "no_negative":
    adv = np.abs(adv)
  elif name == "all_zero_advantage":
    adv = np.zeros_like(adv)
  elif name == "single_token":
    mask = np.zeros_like(mask)
    mask[1, 0] = 1.0
  elif name == "masked_rows":
    mask[0] = 0.0
    mask[3] = 0.0
  elif name == "all_masked":
    mask = np.zeros_like(mask)
  return h, p, adv, mask


@pytest.mark.parametrize(
    "name,degenerate",
    [("no_positive", 1.0), ("no_negative", 1.0), ("all_zero_advantage", 1.0),
     ("single_token", 1.0), ("masked_rows", 0.0), ("all_masked", 1.0)],
)
def test_edge_cases_are_finite_and_match_reference(name, degenerate):
  h, p, adv, mask = _edge_case(name)
  coef, metrics = delta.delta_coefficients(h, p, adv, mask, k=2)
  assert np.isfinite(coef).all()
  assert all(np.isfinite(value) for value in metrics.values())
  assert metrics["delta/degenerate"] == degenerate
  np.testing.assert_array_equal(np.asarray(coef)[mask == 0], 0.0)
  if mask.any():
    expected, expected_metrics = _reference(h, p, adv, mask, k=2)
    np.testing.assert_allclose(coef, expected, rtol=1e-5, atol=1e-5)
    _assert_metrics(metrics, expected_metrics)
    np.testing.assert_allclose((coef * mask).sum() / mask.sum(), 1.0,
                               rtol=1e-6)


def test_all_zero_advantages_give_coefficient_one():
  # Every valid token gets lam_min, and lam_min * n / (lam_min * n) = 1.
  h, p, adv, mask = _edge_case("all_zero_advantage")
  coef, _ = delta.delta_coefficients(h, p, adv, mask, k=2)
  np.testing.assert_allclose(coef, mask, rtol=1e-6)


def test_group_scope_counts_degenerate_groups():
  # Groups of 2 rows: (+, -) usable; (+, 0) lacks a negative side.
  h, p, _, mask = _edge_case("masked_rows")
  mask = np.ones_like(mask)
  adv = np.array([1.0, -1.0, 1.0, 0.0], np.float32)
  coef, metrics = delta.delta_coefficients(h, p, adv, mask, k=2,
                                           scope="group", group_size=2)
  assert metrics["delta/degenerate"] == 1.0
  expected, expected_metrics = _reference(h, p, adv, mask, k=2, group_size=2)
  np.testing.assert_allclose(coef, expected, rtol=1e-5, atol=1e-5)
  _assert_metrics(metrics, expected_metrics)


def test_unit_bounds_give_exactly_one():
  # lam_min = lam_max = 1: c = 1 on every valid token and sum(c m) = sum(m),
  # so A * c~ = A and the DelTA loss is the plain loss.
  h, p, adv, mask = _random_batch(seed=51)
  kwargs = dict(k=2, lam_min=1.0, lam_max=1.0)
  coef, _ = delta.delta_coefficients(h, p, adv, mask, **kwargs)
  np.testing.assert_array_equal(coef, mask)
  chunked, _ = delta.delta_coefficients_chunked(
      h.reshape(2, 4, *h.shape[1:]), p.reshape(2, 4, -1), adv.reshape(2, 4),
      mask.reshape(2, 4, -1), scope="group", group_size=2, **kwargs)
  np.testing.assert_array_equal(chunked.reshape(mask.shape), mask)


@pytest.mark.parametrize(
    "change,message",
    [(dict(p_old=np.zeros((4, 2))), "p_old"),
     (dict(mask=np.zeros((3, 3))), "mask"),
     (dict(advantages=np.zeros((5,))), "advantages"),
     (dict(hidden=np.zeros((4, 3))), "hidden"),
     (dict(k=-1), "k "),
     (dict(k=1.0), "k "),
     (dict(lam_min=0.0), "lam_min"),
     (dict(lam_min=1.3), "lam_max"),
     (dict(scope="row"), "scope"),
     (dict(scope="group"), "group_size"),
     (dict(scope="group", group_size=3), "group_size=3")],
)
def test_invalid_arguments_raise(change, message):
  h, p, adv, mask = _edge_case("masked_rows")
  kwargs = dict(hidden=h, p_old=p, advantages=adv, mask=mask) | change
  with pytest.raises(ValueError, match=message):
    delta.delta_coefficients(**kwargs)


def test_chunked_group_scope_needs_whole_groups_per_chunk():
  h, p, adv, mask = _random_batch(seed=1)
  with pytest.raises(ValueError, match="rows per chunk"):
    delta.delta_coefficients_chunked(
        h.reshape(2, 4, *h.shape[1:]), p.reshape(2, 4, -1), adv.reshape(2, 4),
        mask.reshape(2, 4, -1), scope="group", group_size=3)


def test_coefficient_histogram_writes_png(tmp_path):
  h, p, adv, mask = _random_batch(seed=61)
  coef, _ = delta.delta_coefficients(h, p, adv, mask)
  path = delta_report.coefficient_histogram(
      np.asarray(coef), mask, adv, str(tmp_path / "plots" / "delta.png"), 7)
  # figsize (10, 3.5) inches at 100 dpi.
  assert image.imread(path).shape[:2] == (350, 1000)
  with pytest.raises(ValueError, match="advantages"):
    delta_report.coefficient_histogram(coef, mask, adv[:3], path, 7)


def _byte_level_tokenizer():
  """A real `tokenizers` tokenizer with a byte-level vocabulary of 5 entries.

  Byte-level BPE (the SmolLM2/Qwen family) writes a space as 'Ġ' and a newline
  as 'Ċ'; the ByteLevel decoder maps them back.
  """
  vocab = {"<unk>": 0, "Ċ": 1, "ĠThe": 2, "\\boxed": 3, "Ġanswer": 4}
  tokenizer = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  return tokenizer


def test_extreme_tokens_table():
  coef = np.array([[0.7, 1.3, 0.9], [1.1, 0.5, 2.0]], np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  ids = np.array([[1, 4, 2], [3, 1, 0]])
  table = delta_report.extreme_tokens(coef, mask, ids, _byte_level_tokenizer(),
                                      n=2)
  # Valid tokens by coefficient: 0.5 (row 1, newline), 0.7 (row 0, newline),
  # 0.9, 1.1, 1.3 (" answer"); the masked 2.0 is left out.
  assert table.splitlines() == [
      "lowest DelTA coefficients (5 valid tokens)",
      "rank      coef    row    pos       id  token",
      "   1    0.5000      1      1        1  '\\n'",
      "   2    0.7000      0      0        1  '\\n'",
      "highest DelTA coefficients (5 valid tokens)",
      "rank      coef    row    pos       id  token",
      "   1    1.3000      0      1        4  ' answer'",
      "   2    1.1000      1      0        3  '\\\\boxed'",
  ]
  with pytest.raises(ValueError, match="token_ids"):
    delta_report.extreme_tokens(coef, mask, ids[:1], _byte_level_tokenizer())
