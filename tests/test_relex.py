"""Tests of RELEX (METHODS.md section 4): math, chunking, orbax I/O, binary."""

import json
import math
import os
import subprocess
import sys
import textwrap

from absl import flags
from absl.testing import flagsaver
from flax import nnx
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy

from experiments import relex as relex_binary
from rlvr_jax.evaluation import evaluate as evaluate_lib
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder
from rlvr_jax.relex import checkpoint_io
from rlvr_jax.relex import diagnostics
from rlvr_jax.relex import fit as fit_lib
from rlvr_jax.relex import pipeline
from rlvr_jax.relex import relex
from rlvr_jax import checkpoints as train_checkpoints

_TINY = config_lib.ModelConfig(
    vocab_size=16, hidden_size=8, intermediate_size=12, num_layers=2,
    num_heads=2, num_kv_heads=1, head_dim=4, tie_word_embeddings=True)


class ArraySource:
  """In-memory relex.TensorSource: {step: array}."""

  def __init__(self, arrays, chunk_shape=None):
    self.arrays = {s: np.asarray(a, np.float32) for s, a in arrays.items()}
    self.shape = next(iter(self.arrays.values())).shape
    self.chunk_shape = chunk_shape or self.shape

  def read(self, step, box):
    return self.arrays[step][box]


def _extrapolate(source, steps, target, *, rank=1, fit="linear", stacked=False,
                 max_chunk_bytes=1 << 30, base_step=0):
  """Both passes on an ArraySource; returns (fits, output float32)."""
  grams = relex.accumulate_gram(
      source, base_step=base_step, steps=steps, stacked=stacked,
      max_chunk_bytes=max_chunk_bytes)
  fits = [fit_lib.fit_tensor(g, steps, rank=rank, fit=fit) for g in grams]
  weights = np.stack([f.weights(target) for f in fits])
  out, _ = relex.extrapolate_region(
      source, base_step=base_step, steps=steps, weights=weights,
      stacked=stacked, max_chunk_bytes=max_chunk_bytes, out_dtype=np.float32)
  return fits, out


def _trajectory(rng, shape, steps, a, b, noise=0.0):
  """theta_s = theta_0 + (a s + b) V + noise, V unit norm per layer slice."""
  theta0 = rng.standard_normal(shape)
  direction = rng.standard_normal(shape)
  direction /= np.sqrt(np.sum(direction**2, axis=tuple(range(1, len(shape))),
                              keepdims=True))
  arrays = {0: theta0}
  for s in steps:
    coeff = (a * s + b).reshape((-1,) + (1,) * (len(shape) - 1))
    arrays[s] = theta0 + coeff * direction + noise * rng.standard_normal(shape)
  # The float32 values the source holds are the truth the tests compare with.
  arrays = {s: x.astype(np.float32) for s, x in arrays.items()}
  return arrays, direction


# --- Box planning -------------------------------------------------------------


def test_plan_boxes_cuts_a_chunk_into_rows_spanning_all_layers():
  # shape (2, 4, 6) in one chunk, budget 12: splitting axis 1 leaves
  # 2 * 6 = 12 elements per row, so 4 boxes [:, i, :].
  boxes = relex.plan_boxes((2, 4, 6), chunk_shape=(2, 4, 6), max_elements=12,
                           stacked=True)
  assert boxes == [(slice(0, 2), slice(i, i + 1), slice(0, 6))
                   for i in range(4)]


def test_plan_boxes_below_one_row():
  # Budget 4 < a row of 2 * 6: axis 1 -> 1, then axis 2 -> 4 // 2 = 2,
  # boxes (2, 1, 2): 4 rows x 3 pieces.
  boxes = relex.plan_boxes((2, 4, 6), chunk_shape=(2, 4, 6), max_elements=4,
                           stacked=True)
  assert len(boxes) == 12
  assert boxes[:3] == [(slice(0, 2), slice(0, 1), slice(j, j + 2))
                       for j in (0, 2, 4)]


def test_plan_boxes_merges_small_chunks():
  # Chunks (2, 2, 3) of 12 elements, budget 24: layers already whole, axis 2
  # doubles to 6 (full), axis 1 stays 2 -> two boxes of 24.
  boxes = relex.plan_boxes((2, 4, 6), chunk_shape=(2, 2, 3), max_elements=24,
                           stacked=True)
  assert boxes == [(slice(0, 2), slice(0, 2), slice(0, 6)),
                   (slice(0, 2), slice(2, 4), slice(0, 6))]


@pytest.mark.parametrize("seed", range(6))
def test_plan_boxes_partitions_within_budget_and_chunks(seed):
  rng = np.random.default_rng(seed)
  ndim = int(rng.integers(1, 4))
  shape = tuple(int(d) for d in rng.integers(1, 9, ndim))
  chunk = tuple(int(rng.integers(1, d + 1)) for d in shape)
  region = tuple(slice(int(lo), int(rng.integers(lo + 1, d + 1)))
                 for lo, d in ((int(rng.integers(0, d)), d) for d in shape))
  max_elements = int(rng.integers(1, 40))
  boxes = relex.plan_boxes(shape, chunk_shape=chunk, max_elements=max_elements,
                           stacked=bool(seed % 2), region=region)
  covered = np.zeros(shape, np.int32)
  for box in boxes:
    covered[box] += 1
    assert math.prod(b.stop - b.start for b in box) <= max_elements
    for b, c, d in zip(box, chunk, shape):
      inside_one = b.start // c == (b.stop - 1) // c
      whole_chunks = b.start % c == 0 and (b.stop % c == 0 or b.stop == d)
      assert inside_one or whole_chunks, (box, chunk)
  expected = np.zeros(shape, np.int32)
  expected[region] = 1
  np.testing.assert_array_equal(covered, expected)


# --- Fits, spectrum, extrapolation by hand ------------------------------------


def test_fit_polynomial_by_hand():
  # s = 0..3, c = 1, 3, 2, 5: mean s 1.5, mean c 2.75,
  # sum (s - 1.5)(c - 2.75) = 2.625 - 0.125 - 0.375 + 3.375 = 5.5,
  # sum (s - 1.5)^2 = 5 -> slope 1.1; fitted 1.1, 2.2, 3.3, 4.4;
  # ss_res = 0.01 + 0.64 + 1.69 + 0.36 = 2.7; ss_tot = 8.75.
  coeffs, center, ss_res, ss_tot = fit_lib.fit_polynomial(
      np.arange(4.0), np.array([1.0, 3.0, 2.0, 5.0]), degree=1)
  np.testing.assert_allclose(coeffs, [2.75, 1.1], rtol=1e-12)
  assert center == 1.5
  np.testing.assert_allclose([ss_res, ss_tot], [2.7, 8.75], rtol=1e-12)
  # c(10) = 2.75 + 1.1 * 8.5 = 12.1.
  np.testing.assert_allclose(fit_lib.evaluate_polynomial(coeffs, center, 10.0),
                             12.1, rtol=1e-12)


def test_fit_polynomial_quadratic_is_exact_on_a_parabola():
  steps = np.array([1.0, 2.0, 4.0, 7.0])
  coeffs, center, ss_res, _ = fit_lib.fit_polynomial(steps, steps**2, degree=2)
  assert ss_res < 1e-20
  np.testing.assert_allclose(fit_lib.evaluate_polynomial(coeffs, center, 10.0),
                             100.0, rtol=1e-12)


def test_rank_one_extrapolation_by_hand():
  # theta_0 = [1, -1]; D_1 = [3, 4], D_2 = [6, 8] at steps 1, 2.
  # G = [[25, 50], [50, 100]], lambda = 125, u = [1, 2] / sqrt(5),
  # sigma = 5 sqrt(5), c = sigma u = [5, 10] = 5 s -> c*(4) = 20,
  # v = [0.6, 0.8] -> theta* = [1, -1] + 20 [0.6, 0.8] = [13, 15].
  source = ArraySource({0: [1.0, -1.0], 1: [4.0, 3.0], 2: [7.0, 7.0]})
  fits, out = _extrapolate(source, [1, 2], 4)
  fit = fits[0]
  np.testing.assert_allclose(fit.eigenvalues, [125.0], rtol=1e-12)
  np.testing.assert_allclose(fit.spectrum, [125.0, 0.0], atol=1e-12)
  np.testing.assert_allclose(fit.coefficients, [[5.0, 10.0]], rtol=1e-12)
  np.testing.assert_allclose(fit.predict_coefficients(4), [20.0], rtol=1e-12)
  np.testing.assert_allclose(fit.r2, [1.0], rtol=1e-12)
  np.testing.assert_allclose(out, [13.0, 15.0], rtol=1e-6)


def test_zero_deltas_stay_at_base():
  base = np.array([[1.5, -2.0], [0.25, 3.0]])
  source = ArraySource({0: base, 1: base, 2: base})
  fits, out = _extrapolate(source, [1, 2], 10)
  assert fits[0].trace == 0.0 and not fits[0].active[0]
  assert np.isnan(fits[0].r2[0])  # constant (zero) coefficients: undefined
  np.testing.assert_array_equal(fits[0].weights(10), [0.0, 0.0])
  np.testing.assert_array_equal(out, base.astype(np.float32))


def test_quadratic_fit_extrapolates_a_parabola():
  # theta_s = s^2 [0.5, -0.5, 0.5, 0.5]: c = s^2 is exactly quadratic, so
  # c*(10) = 100; the linear fit on s = 1, 2, 3, 4 (c = 1, 4, 9, 16: slope 5,
  # intercept -5) would answer 45.
  direction = np.array([0.5, -0.5, 0.5, 0.5])
  arrays = {0: np.zeros(4)}
  arrays.update({s: s * s * direction for s in (1, 2, 3, 4)})
  source = ArraySource(arrays)
  _, out = _extrapolate(source, [1, 2, 3, 4], 10, fit="quadratic")
  np.testing.assert_allclose(out, 100 * direction, rtol=1e-6)
  _, out = _extrapolate(source, [1, 2, 3, 4], 10, fit="linear")
  np.testing.assert_allclose(out, 45 * direction, rtol=1e-6)
  with pytest.raises(ValueError, match="fit='cubic'"):
    fit_lib.fit_tensor(np.eye(4), [1, 2, 3, 4], rank=1, fit="cubic")


# --- Synthetic trajectories ---------------------------------------------------


def test_noiseless_trajectory_is_recovered_exactly():
  rng = np.random.default_rng(0)
  steps = [10, 12, 14, 16, 18, 20, 22, 24]
  a, b = np.array([0.5, -0.2, 1.0]), np.array([1.0, 3.0, -0.5])
  arrays, direction = _trajectory(rng, (3, 40, 30), steps, a, b)
  fits, out = _extrapolate(ArraySource(arrays), steps, 60, stacked=True)
  delta = np.stack([arrays[s] - arrays[0] for s in steps], axis=1)  # [L, T, n]
  for layer, fit in enumerate(fits):
    c_true = a[layer] * np.array(steps) + b[layer]
    # Up to the float32 rounding of the stored checkpoints.
    np.testing.assert_allclose(np.abs(fit.coefficients[0]), np.abs(c_true),
                               rtol=1e-6)
    v = delta[layer].reshape(len(steps), -1).T @ fit.eigenvectors[:, 0]
    v /= np.sqrt(fit.eigenvalues[0])
    assert abs(v @ direction[layer].ravel()) > 1 - 1e-12
    np.testing.assert_allclose(fit.r2, [1.0], atol=1e-12)
  expected = arrays[0] + (a * 60 + b)[:, None, None] * direction
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_noisy_trajectory_is_recovered_within_the_noise():
  rng = np.random.default_rng(1)
  steps = np.arange(1, 13)
  a, b, sigma, target = np.array([0.3]), np.array([2.0]), 1e-3, 40
  shape = (1, 60, 50)
  n = 60 * 50
  arrays, direction = _trajectory(rng, shape, steps, a, b, noise=sigma)
  fits, out = _extrapolate(ArraySource(arrays), list(steps), target,
                           stacked=True)
  fit = fits[0]
  c_true = a[0] * steps + b[0]
  delta = np.stack([arrays[s] - arrays[0] for s in steps]).reshape(12, n)
  v = delta.T @ fit.eigenvectors[:, 0] / np.sqrt(fit.eigenvalues[0])
  # The direction absorbs the noise averaged over T rows weighted by c:
  # sin(angle) ~ sigma sqrt(n) / ||c||; each c_t moves by ~sigma.
  sin = math.sqrt(max(0.0, 1 - (v @ direction.ravel())**2))
  assert sin < 4 * sigma * math.sqrt(n) / np.linalg.norm(c_true)
  np.testing.assert_allclose(fit.coefficients[0], c_true, atol=5 * sigma)
  # Prediction error: c* times the direction error, plus the OLS prediction
  # error sigma sqrt(1/T + (s* - mean s)^2 / sum (s - mean s)^2).
  c_star = a[0] * target + b[0]
  leverage = math.sqrt(1 / 12 + (target - steps.mean())**2
                       / np.sum((steps - steps.mean())**2))
  bound = 4 * (c_star * sigma * math.sqrt(n) / np.linalg.norm(c_true)
               + sigma * leverage)
  expected = arrays[0] + c_star * direction
  assert np.linalg.norm(out - expected) < bound
  assert np.linalg.norm(out - expected) > 0  # the noise is really there


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("stacked", [False, True])
def test_matches_dense_numpy_svd(rank, stacked):
  rng = np.random.default_rng(rank + 2 * stacked)
  steps = [3, 5, 6, 9, 11, 12]
  shape = (2, 7, 9) if stacked else (11, 13)
  arrays = {s: rng.standard_normal(shape).astype(np.float32)
            for s in [0] + steps}
  for s in steps:  # Make the spectrum decay so the top-r order is stable.
    arrays[s] = (arrays[0] + 0.3 * s * arrays[steps[0]]
                 + 0.1 * arrays[s]).astype(np.float32)
  target = 30
  fits, out = _extrapolate(ArraySource(arrays), steps, target, rank=rank,
                           stacked=stacked)
  layers = shape[0] if stacked else 1
  expected = np.empty((layers,) + (shape[1:] if stacked else shape))
  for layer in range(layers):
    pick = (lambda x: x[layer]) if stacked else (lambda x: x)
    base = pick(arrays[0]).astype(np.float64)
    deltas = np.stack([pick(arrays[s]) - pick(arrays[0])
                       for s in steps]).reshape(len(steps), -1)
    u, svals, vt = np.linalg.svd(deltas.astype(np.float64),
                                 full_matrices=False)
    result = base.ravel().copy()
    for r in range(rank):
      c_ref = u[:, r] * svals[r]
      ours = fits[layer].coefficients[r]
      sign = np.sign(ours @ c_ref)
      np.testing.assert_allclose(ours, sign * c_ref, rtol=1e-9, atol=1e-9)
      v_ours = deltas.T @ fits[layer].eigenvectors[:, r] / svals[r]
      np.testing.assert_allclose(v_ours, sign * vt[r], atol=1e-9)
      slope, intercept = np.polyfit(steps, c_ref, 1)
      result += (slope * target + intercept) * vt[r]
    expected[layer] = result.reshape(expected.shape[1:])
  np.testing.assert_allclose(out, expected.reshape(out.shape), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("elements", [3 * 5 * 7, 3 * 7, 3 * 2, 2, 1])
def test_chunked_equals_unchunked(elements):
  # Boxes of the whole [3, 5, 7] tensor, one row of all layers, less than a
  # row, fewer elements than layers (the layer axis is split last). With T = 4
  # the Gram pass takes 8 * (4 + 2) = 48 bytes per element, so a budget of
  # 64 * elements gives it 64 * elements // 48 >= elements elements and the
  # second pass exactly `elements`.
  rng = np.random.default_rng(7)
  steps = [1, 2, 4, 5]
  arrays = {s: rng.standard_normal((3, 5, 7)) for s in [0] + steps}
  source = ArraySource(arrays)
  budget = relex.COMBINE_BYTES_PER_ELEMENT * elements
  assert relex.gram_bytes_per_element(4) == 48
  whole = relex.accumulate_gram(source, base_step=0, steps=steps, stacked=True,
                                max_chunk_bytes=1 << 30)
  chunked = relex.accumulate_gram(source, base_step=0, steps=steps,
                                  stacked=True, max_chunk_bytes=budget)
  np.testing.assert_allclose(chunked, whole, rtol=1e-12)
  _, out_whole = _extrapolate(source, steps, 9, stacked=True, rank=2)
  _, out_chunked = _extrapolate(source, steps, 9, stacked=True, rank=2,
                                max_chunk_bytes=budget)
  np.testing.assert_allclose(out_chunked, out_whole, rtol=1e-6, atol=1e-6)


def test_budget_below_one_element_is_an_error():
  source = ArraySource({0: np.zeros(3), 1: np.ones(3), 2: np.ones(3)})
  with pytest.raises(ValueError, match="max_chunk_bytes=31 is below the 32"):
    relex.accumulate_gram(source, base_step=0, steps=[1, 2], stacked=False,
                          max_chunk_bytes=31)


def test_save_interval_two_regresses_on_true_steps():
  # Saved every 2 steps: c = 2, 4, 6, 8 at steps 2, 4, 6, 8, i.e. c = s.
  # Asking for step 20 must give c* = 20. The release's regression on
  # positions 0..3 (c = 2 p + 2) would answer 2 * 20 + 2 = 42 (METHODS 4.6).
  direction = np.array([0.5, -0.5, 0.5, 0.5])  # unit, exact in float32
  arrays = {0: np.zeros(4)}
  arrays.update({s: s * direction for s in (2, 4, 6, 8)})
  fits, out = _extrapolate(ArraySource(arrays), [2, 4, 6, 8], 20)
  np.testing.assert_allclose(fits[0].predict_coefficients(20), [20.0],
                             rtol=1e-12)
  np.testing.assert_allclose(out, 20 * direction, rtol=1e-6)


# --- Diagnostics --------------------------------------------------------------


def test_summarize_pairs_by_hand():
  # Tensor A: lambda_1 = 3 of trace 4, R^2 1; tensor B (2 layers): lambda_1
  # = 1 and 0 of traces 4 and 0. Energy = (3 + 1 + 0) / (4 + 4 + 0) = 0.5.
  # Errors of A at step 9: sums (4, 16, 9) -> sqrt(4/16) = 0.5 and
  # sqrt(9/16) = 0.75; B adds (0, 0, 0) and (5, 20, 7) -> model
  # sqrt(9 / 36) = 0.5 and sqrt(16 / 36) = 2/3.
  def fit(lam, trace):
    return fit_lib.TensorFit(
        steps=np.array([1.0, 2.0]), eigenvalues=np.array([lam]),
        eigenvectors=np.array([[1.0], [0.0]]),
        spectrum=np.array([lam, trace - lam]), trace=trace,
        active=np.array([lam > 0]), center=1.5, poly=np.array([[1.0, 0.0]]),
        ss_res=np.array([0.0]), ss_tot=np.array([1.0 if lam else 0.0]))
  result = diagnostics.summarize(
      {"a": [fit(3.0, 4.0)], "layers/b": [fit(1.0, 4.0), fit(0.0, 0.0)]},
      stacked={"a": False, "layers/b": True}, base_step=0, target_steps=[9],
      errors={9: {"a": np.array([[4.0, 16.0, 9.0]]),
                  "layers/b": np.array([[0.0, 0.0, 0.0], [5.0, 20.0, 7.0]])}})
  summary = result["summary"]
  assert summary["relex/energy_fraction"] == 0.5
  assert summary["relex/tensors"] == 3
  assert summary["relex/tensors_at_base"] == 1
  assert summary["relex/r2_weighted"] == 1.0
  assert summary["relex/step_9/relative_error"] == 0.5
  np.testing.assert_allclose(
      summary["relex/step_9/last_observed_relative_error"], 2 / 3)
  tensors = result["tensors"]
  assert tensors["a"]["relative_error"]["9"] == 0.5
  assert tensors["a"]["last_observed_relative_error"]["9"] == 0.75
  assert tensors["layers/b[1]"]["energy_fraction"] is None
  assert tensors["layers/b[0]"]["relative_error"]["9"] is None
  assert "layers/b" in diagnostics.format_table(result)


# --- Orbax runs through the binary --------------------------------------------


def _tiny_shapes():
  model = nnx.eval_shape(lambda: decoder.create_model(_TINY))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _write_run(run_dir, trees, *, config=_TINY):
  """Writes {step: params} with the trainer's CheckpointManager layout."""
  manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"),
                                  item_names=("params", "opt_state", "meta"))
  for step, params in trees.items():
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave({"count": np.zeros((), np.int32)}),
        meta=ocp.args.JsonSave({"step": step,
                                "model_config": config.to_dict()})))
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(run_dir, "model_config.json"), "w") as f:
    json.dump(config.to_dict(), f)


def _linear_run(steps, seed=0):
  """{step: theta_0 + (0.5 s + 1) V} over the tiny model's parameter tree."""
  rng = np.random.default_rng(seed)
  shapes = _tiny_shapes()
  theta0 = jax.tree.map(lambda s: rng.standard_normal(s.shape), shapes)
  direction = jax.tree.map(lambda s: rng.standard_normal(s.shape), shapes)
  at = lambda s: jax.tree.map(
      lambda t, v: (t + (0.5 * s + 1.0) * v * (s > 0)).astype(np.float32),
      theta0, direction)
  return {s: at(s) for s in steps}, at


def _flags(tmp_path, **overrides):
  values = dict(run_dir=str(tmp_path / "run"), window="2:8:2",
                target_step="12,16", output_dir=str(tmp_path / "out"),
                max_chunk_bytes=relex.COMBINE_BYTES_PER_ELEMENT * 5)
  values.update(overrides)
  return values


@pytest.fixture(autouse=True)
def _parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_binary_round_trip_with_save_interval_two(tmp_path):
  trees, at = _linear_run([0, 2, 4, 6, 8, 12])
  _write_run(tmp_path / "run", trees)
  with flagsaver.flagsaver(**_flags(tmp_path, hf_dir=str(tmp_path / "hf"))):
    relex_binary.main(["relex"])
  for target in (12, 16):
    restored = train_checkpoints.restore_params(str(tmp_path / "out"), target)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        np.asarray(x), y, rtol=1e-5, atol=1e-5), restored, at(target))
  with open(tmp_path / "out" / "relex_diagnostics.json") as f:
    result = json.load(f)
  summary = result["summary"]
  assert summary["relex/step_12/relative_error"] < 1e-5
  # Stopping at step 8 misses (0.5 * 12 + 1) - (0.5 * 8 + 1) = 2 of the
  # real change 7: relative error 2/7.
  np.testing.assert_allclose(
      summary["relex/step_12/last_observed_relative_error"], 2 / 7, rtol=1e-5)
  assert "relex/step_16/relative_error" not in summary  # no real step 16
  assert result["tensors"]["layers/mlp/up/kernel[1]"]["r2"][0] > 1 - 1e-9
  assert (tmp_path / "out" / "relex_diagnostics.png").stat().st_size > 0
  assert (tmp_path / "out" / "model_config.json").exists()
  hf = safetensors.numpy.load_file(
      str(tmp_path / "hf" / "16" / "model.safetensors"))
  np.testing.assert_allclose(hf["model.embed_tokens.weight"],
                             at(16)["embed"]["embedding"], rtol=1e-5, atol=1e-5)


def test_binary_bfloat16_output(tmp_path):
  trees, at = _linear_run([0, 1, 2, 3])
  _write_run(tmp_path / "run", trees)
  with flagsaver.flagsaver(**_flags(tmp_path, window="1:3", target_step="5",
                                    dtype="bfloat16")):
    relex_binary.main(["relex"])
  restored = train_checkpoints.restore_params(str(tmp_path / "out"), 5)
  embedding = restored["embed"]["embedding"]
  assert embedding.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(
      np.asarray(embedding),
      at(5)["embed"]["embedding"].astype(ml_dtypes.bfloat16))


def test_sharded_checkpoints_keep_the_base_sharding(tmp_path):
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"))
  specs = {"embed": {"embedding": P("tensor", "fsdp")},
           "layers": {"w": P(None, "fsdp", "tensor")}}
  rng = np.random.default_rng(3)
  theta0 = {"embed": {"embedding": rng.standard_normal((16, 8))},
            "layers": {"w": rng.standard_normal((2, 8, 4))}}
  direction = jax.tree.map(lambda x: rng.standard_normal(x.shape), theta0)
  place = lambda tree: jax.tree.map(
      lambda x, spec: jax.device_put(x.astype(np.float32),
                                     NamedSharding(mesh, spec)), tree, specs)
  trees = {s: place(jax.tree.map(lambda t, v: t + (s > 0) * (s + 2.0) * v,
                                 theta0, direction))
           for s in (0, 1, 2, 3)}
  _write_run(tmp_path / "run", trees)
  kwargs = dict(run_dir=tmp_path / "run", window=[1, 2, 3], target_steps=[6],
                max_chunk_bytes=relex.COMBINE_BYTES_PER_ELEMENT * 7)
  pipeline.run(output_dir=tmp_path / "base", sharding="base", **kwargs)
  pipeline.run(output_dir=tmp_path / "single", sharding="single", **kwargs)
  sharded = train_checkpoints.restore_params(
      str(tmp_path / "base"), 6, target=trees[0])
  single = train_checkpoints.restore_params(str(tmp_path / "single"), 6)
  metadata = ocp.PyTreeCheckpointHandler().metadata(
      tmp_path / "base" / "checkpoints" / "6" / "params").tree
  for keys in (("embed", "embedding"), ("layers", "w")):
    saved = metadata[keys[0]][keys[1]].sharding.to_jax_sharding()
    assert saved == trees[0][keys[0]][keys[1]].sharding
    expected = theta0[keys[0]][keys[1]] + 8.0 * direction[keys[0]][keys[1]]
    np.testing.assert_allclose(np.asarray(sharded[keys[0]][keys[1]]),
                               expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sharded[keys[0]][keys[1]]),
                                  np.asarray(single[keys[0]][keys[1]]))


@pytest.fixture(scope="module")
def linear_run_dir(tmp_path_factory):
  """A run with steps 0, 2, 4, 6, 8 of `_linear_run`, written once."""
  run_dir = tmp_path_factory.mktemp("linear") / "run"
  _write_run(run_dir, _linear_run([0, 2, 4, 6, 8])[0])
  return run_dir


@pytest.mark.parametrize("overrides, match", [
    ({"window": "2:10:2"}, r"steps \[10\] are missing"),
    ({"window": "1:4"}, r"steps \[1, 3\] are missing"),
    ({"window": "4"}, "needs at least 2"),
    ({"window": "0,2,4"}, "base_step=0 is inside --window"),
    ({"window": "2,4", "fit": "quadratic"}, "more than 2 window"),
    ({"rank": 5}, r"--rank=5 must be in \[1, 4\]"),
    ({"window": "2:x"}, "--window='2:x'"),
])
def test_binary_argument_errors(tmp_path, linear_run_dir, overrides, match):
  with flagsaver.flagsaver(**_flags(tmp_path, run_dir=str(linear_run_dir),
                                    **overrides)):
    with pytest.raises(ValueError, match=match):
      relex_binary.main(["relex"])


@pytest.mark.parametrize("change, match", [
    (lambda t: t[6]["layers"]["mlp"]["up"].update(
        kernel=np.zeros((2, 8, 13), np.float32)),
     r"tensor 'layers/mlp/up/kernel' has shape \(2, 8, 13\) at step 6"),
    (lambda t: t[4]["final_norm"].update(
        scale=t[4]["final_norm"]["scale"].astype(ml_dtypes.bfloat16)),
     "tensor 'final_norm/scale' has dtype bfloat16 at step 4"),
])
def test_binary_checkpoint_mismatch_errors(tmp_path, change, match):
  trees, _ = _linear_run([0, 2, 4, 6, 8])
  change(trees)
  _write_run(tmp_path / "run", trees)
  with flagsaver.flagsaver(**_flags(tmp_path)):
    with pytest.raises(ValueError, match=match):
      relex_binary.main(["relex"])


def test_eval_hook(tmp_path, linear_run_dir, monkeypatch):
  """--eval calls the one held-out evaluation on the last observed and each target."""
  calls = []
  monkeypatch.setattr(evaluate_lib, "evaluate_trainer_checkpoint", lambda path, config: (
      calls.append((path, config)) or {"heldout/pass@1": len(calls)}))
  result = pipeline.run(
      run_dir=linear_run_dir, window=[2, 4, 6, 8], target_steps=[12],
      output_dir=tmp_path / "out", eval_config={"name": "cfg"})
  assert calls == [
      (str(linear_run_dir / "checkpoints" / "8" / "params"), {"name": "cfg"}),
      (str(tmp_path / "out" / "checkpoints" / "12" / "params"),
       {"name": "cfg"})]
  assert result["eval"] == {"8": {"heldout/pass@1": 1},
                            "12": {"heldout/pass@1": 2}}


def _no_checkpoint_reads(monkeypatch):
  """Makes any checkpoint read fail the test: arguments must be checked first."""
  def read(*args, **kwargs):
    raise AssertionError("a checkpoint was read before the arguments were checked")
  monkeypatch.setattr(checkpoint_io, "RunCheckpoints", read)


@pytest.mark.parametrize("target, match", [
    ("-3", r"--target_step \[-3\]: every target must be after --base_step=0"),
    ("0", r"--target_step \[0\]: every target must be after --base_step=0"),
    ("0,12", r"--target_step \[0\]"),
])
def test_target_steps_not_after_the_base_are_refused(tmp_path, linear_run_dir, monkeypatch,
                                                    target, match):
  _no_checkpoint_reads(monkeypatch)
  with flagsaver.flagsaver(**_flags(tmp_path, run_dir=str(linear_run_dir),
                                    target_step=target)):
    with pytest.raises(ValueError, match=match):
      relex_binary.main(["relex"])
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["", "relex", "checkpoints"])
def test_output_dir_in_the_run_dir_is_refused(tmp_path, linear_run_dir, monkeypatch, inside):
  _no_checkpoint_reads(monkeypatch)
  out = os.path.join(str(linear_run_dir), inside) if inside else str(linear_run_dir) + "/."
  with flagsaver.flagsaver(**_flags(tmp_path, run_dir=str(linear_run_dir), output_dir=out)):
    with pytest.raises(ValueError, match="--output_dir=.* is (inside )?--run_dir"):
      relex_binary.main(["relex"])
  assert not os.path.exists(os.path.join(str(linear_run_dir), "relex"))


def test_output_dir_with_a_later_step_is_refused_before_any_read(tmp_path, linear_run_dir,
                                                                 monkeypatch):
  pipeline.run(run_dir=linear_run_dir, window=[2, 4, 6, 8], target_steps=[20],
               output_dir=tmp_path / "out")
  _no_checkpoint_reads(monkeypatch)
  for target in ("12", "20"):
    with flagsaver.flagsaver(**_flags(tmp_path, run_dir=str(linear_run_dir),
                                      target_step=target)):
      with pytest.raises(ValueError, match=r"already holds checkpoints \[20\]; target steps "
                         rf"\[{target}\] are not after"):
        relex_binary.main(["relex"])
  (tmp_path / "file").write_text("x")
  with flagsaver.flagsaver(**_flags(tmp_path, run_dir=str(linear_run_dir),
                                    output_dir=str(tmp_path / "file"))):
    with pytest.raises(ValueError, match="is a file"):
      relex_binary.main(["relex"])


def test_save_checkpoint_fails_when_orbax_skips_the_step(tmp_path):
  """orbax's manager skips a step lower than its latest; that must not pass silently."""
  params = {"w": np.ones((2, 3), np.float32)}
  checkpoint_io.save_checkpoint(tmp_path, 20, params, {"step": 20})
  with pytest.raises(ValueError, match="orbax did not write step 12"):
    checkpoint_io.save_checkpoint(tmp_path, 12, params, {"step": 12})
  assert not (tmp_path / "checkpoints" / "12").exists()


def test_parse_steps():
  assert pipeline.parse_steps("2:8:2", "window") == [2, 4, 6, 8]
  assert pipeline.parse_steps("1:3", "window") == [1, 2, 3]
  assert pipeline.parse_steps("5,1,3", "target_step") == [1, 3, 5]
  with pytest.raises(ValueError, match="--window='3:1'"):
    pipeline.parse_steps("3:1", "window")
  with pytest.raises(ValueError, match="repeats"):
    pipeline.parse_steps("1,1", "target_step")


# --- Peak memory --------------------------------------------------------------

_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import orbax.checkpoint as ocp
    from rlvr_jax.relex import checkpoint_io, relex
    from rlvr_jax.relex import fit as fit_lib

    def status(key):
      with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

    run_dir, budget = sys.argv[1], int(sys.argv[2])
    steps = list(range(1, 21))
    manager = ocp.CheckpointManager(run_dir + "/checkpoints",
                                    item_names=("params",))
    for s in [0] + steps:
      # Exactly rank 1 and linear: theta_s = 1 + (0.01 s + 0.1) for s > 0.
      value = 1.0 + (0.01 * s + 0.1) * (s > 0)
      params = {"layers": {"w": np.full((4, 4096, 4096), value, np.float32)}}
      manager.save(s, args=ocp.args.Composite(params=ocp.args.StandardSave(
          params, save_args=checkpoint_io.storage_save_args(
              params, chunk_byte_size=1 << 20))))
      manager.wait_until_finished()
      del params
    run = checkpoint_io.RunCheckpoints(run_dir, steps=[0] + steps)
    source = run.tensor("layers/w")
    start = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS
    grams = relex.accumulate_gram(source, base_step=0, steps=steps,
                                  stacked=True, max_chunk_bytes=budget)
    gram_peak = status("VmHWM:")
    weights = {"layers/w": np.stack([
        fit_lib.fit_tensor(g, steps, rank=1, fit="linear").weights(40)
        for g in grams])}
    params, _ = checkpoint_io.extrapolate_params(
        run, weights, base_step=0, steps=steps, dtype="bfloat16",
        shardings=checkpoint_io.output_shardings(run, "single"),
        max_chunk_bytes=budget)
    out = np.asarray(params["layers"]["w"][::3, ::1000, ::1000], np.float32)
    print(json.dumps({"gram": gram_peak - start,
                      "total": status("VmHWM:") - start,
                      "out_min": float(out.min()), "out_max": float(out.max()),
                      "read": run.stats.bytes}))
""")


def test_peak_memory_is_bounded_by_the_chunk_budget(tmp_path):
  # 64M float32 elements x 20 checkpoints: D alone would be 5.1 GB (10.2 GB in
  # float64). The box buffers stay under the 64 MiB budget; the second pass
  # adds the bfloat16 output (128 MiB) and its copy into a jax.Array.
  budget = 64 << 20
  done = subprocess.run(
      [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path / "run"),
       str(budget)], capture_output=True, text=True, check=False,
      # Threaded OpenBLAS spins against other jobs on a shared 2-core machine.
      env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "OPENBLAS_NUM_THREADS": "1"})
  assert done.returncode == 0, done.stderr[-3000:]
  measured = json.loads(done.stdout.strip().splitlines()[-1])
  output_bytes = 64 * 2**20 * 2
  slack = 64 << 20
  assert measured["gram"] < budget + slack, measured
  assert measured["total"] < budget + 2 * output_bytes + slack, measured
  # theta* = 1 + (0.01 * 40 + 0.1) = 1.5, exact in bfloat16.
  assert measured["out_min"] == measured["out_max"] == 1.5
  # Two passes over the base and 20 steps, nothing read twice within a pass.
  assert measured["read"] == 2 * 21 * 64 * 2**20 * 4
