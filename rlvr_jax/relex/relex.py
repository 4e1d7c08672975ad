"""RELEX: rank-r extrapolation of RLVR checkpoints (METHODS.md section 4).

For each parameter tensor n separately, with theta_0 the base checkpoint and
theta_{s_1..s_T} the checkpoints of the observation window:

  D_t   = vec(theta_{s_t}[n] - theta_0[n])          t = 1..T, fp32, uncentred
  G     = D D^T                                     [T, T], float64
  G u_r = lambda_r u_r, sigma_r = sqrt(lambda_r)    top r eigenpairs
  c_r   = sigma_r u_r                               c_{r,t} = <D_t, v_r>,
                                                    v_r = D^T u_r / sigma_r
  c_r  ~ a_r s + b_r                                least squares with
                                                    intercept on the TRUE
                                                    step numbers s_t
  theta*[n] = theta_0[n] + sum_r c*_r v_r
            = theta_0[n] + sum_t w_t D_t,         w = sum_r (c*_r / sigma_r) u_r

Tensor granularity: a parameter stacked over layers ([L, ...], every key
under `layers/` in the parameter tree of docs/CONVENTIONS.md) is L tensors,
one per layer slice, exactly as in the per-layer HF checkpoints the paper
extrapolated; each slice gets its own Gram, direction and line. Every other
parameter (embedding, final norm, untied `lm_head`) is one tensor. A tied LM
head has no parameter of its own: extrapolating the embedding extrapolates the
head.

Memory: G is accumulated over boxes (column chunks) of the tensor. For one box
the T delta rows are read one checkpoint at a time into a [nl, T, C] float64
buffer (nl layers of C elements each), so the working set is
`gram_bytes_per_element(T) * box_elements <= max_chunk_bytes` and the
T x numel matrix never exists. The second pass needs no T axis: it reads the
checkpoints of a box one at a time and adds w_t D_t into a float64 sum
(COMBINE_BYTES_PER_ELEMENT per element). Boxes never cross a storage chunk of
the checkpoint, so a reader that decodes whole storage chunks (tensorstore
over orbax's zarr) decodes at most one chunk per read; the layer axis of a
stacked parameter is split last, so one storage chunk spanning all layers is
read once per box, not once per layer.

Everything here is host NumPy in float64: JAX float64 needs the global x64
switch, and the Gram is a T x T reduction over the whole tensor that float32
accumulation would blur.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Protocol, Sequence

import numpy as np

# Fit name (flag `fit`) -> polynomial degree of the coefficient trajectory.
FITS = {"linear": 1, "quadratic": 2}

# A component r is used only if lambda_r > _RTOL * trace(G): below that the
# eigenpair is float64 rounding of the Gram, and a tensor whose deltas are all
# zero (trace 0) stays at theta_0 (METHODS.md 4 step 3, "sigma ~ 0").
_RTOL = 1e-10

Box = tuple[slice, ...]


class TensorSource(Protocol):
  """Read access to one parameter (possibly stacked [L, ...]) over steps."""

  @property
  def shape(self) -> tuple[int, ...]:
    """Global shape of the parameter, identical at every step."""

  @property
  def chunk_shape(self) -> tuple[int, ...]:
    """Storage chunk shape; boxes are aligned to it."""

  def read(self, step: int, box: Box) -> np.ndarray:
    """The values of `box` (one slice per axis) at `step`, stored dtype."""


# Host bytes per box element in the second pass: float32 base, float64 sum,
# float64 term, the raw read and its float32 copy, the output cast and the
# reference and last-step reads with their float64 difference.
COMBINE_BYTES_PER_ELEMENT = 64


def gram_bytes_per_element(num_steps: int) -> int:
  """Host bytes per box element of the Gram pass, for a window of T steps.

  The float64 delta buffer takes 8 T; the float32 base and one raw read with
  its float32 copy take at most 16 more.

  Args:
    num_steps: T, checkpoints in the window.

  Returns:
    8 * (T + 2).
  """
  return 8 * (num_steps + 2)


def plan_boxes(
    shape: Sequence[int],
    *,
    chunk_shape: Sequence[int],
    max_elements: int,
    stacked: bool,
    region: Box | None = None,
) -> list[Box]:
  """Tiles `shape` (or `region` of it) with boxes of at most `max_elements`.

  The box shape starts at the storage chunk. If the chunk is too large it is
  cut, splitting the axes in order 1, 2, ..., ndim-1, then the layer axis 0 for
  a stacked parameter (0, 1, ... otherwise): earlier axes go to length 1
  before a later one is cut, so a budget below one row gives pieces of a row.
  A cut box stays inside one chunk. If the chunk is smaller than the budget,
  whole chunks are merged, the layer axis first for a stacked parameter, then
  the trailing axes from the last.

  Args:
    shape: the parameter's global shape.
    chunk_shape: its storage chunk shape (same rank).
    max_elements: most elements of one box (all layers included).
    stacked: whether axis 0 is the layer axis.
    region: optional box of `shape`; the result then tiles only it.

  Returns:
    Boxes (tuples of slices, one per axis) that partition the region.
  """
  ndim = len(shape)
  if len(chunk_shape) != ndim:
    raise ValueError(f"chunk_shape {tuple(chunk_shape)} and shape "
                     f"{tuple(shape)} differ in rank.")
  if max_elements < 1:
    raise ValueError(f"max_elements={max_elements} must be >= 1.")
  chunk = [min(max(1, c), max(1, s)) for c, s in zip(chunk_shape, shape)]
  split_order = list(range(1, ndim)) + [0] if stacked and ndim else list(
      range(ndim))
  box = list(chunk)
  if math.prod(box) > max_elements:
    for axis in split_order:
      rest = math.prod(box) // box[axis]
      if rest <= max_elements:
        box[axis] = max_elements // rest
        break
      box[axis] = 1
  else:
    grow_order = ([0] + list(range(ndim - 1, 0, -1)) if stacked and ndim
                  else list(range(ndim - 1, -1, -1)))
    for axis in grow_order:
      multiple = max_elements // math.prod(box)
      box[axis] = min(shape[axis], chunk[axis] * multiple)
      if box[axis] < shape[axis]:
        break
  region = region if region is not None else tuple(slice(0, s) for s in shape)
  intervals = []
  for axis in range(ndim):
    lo, hi, _ = region[axis].indices(shape[axis])
    if box[axis] <= chunk[axis]:
      starts = [(c0 + k, min(c0 + k + box[axis], c0 + chunk[axis], shape[axis]))
                for c0 in range(0, shape[axis], chunk[axis])
                for k in range(0, chunk[axis], box[axis])
                if c0 + k < shape[axis]]
    else:
      starts = [(s, min(s + box[axis], shape[axis]))
                for s in range(0, shape[axis], box[axis])]
    intervals.append([(max(s, lo), min(e, hi)) for s, e in starts
                      if max(s, lo) < min(e, hi)])
  return [tuple(slice(s, e) for s, e in combo)
          for combo in itertools.product(*intervals)]


def _max_box_elements(per_element: int, max_chunk_bytes: int) -> int:
  """Elements per box allowed by `max_chunk_bytes`; ValueError if none."""
  if max_chunk_bytes < per_element:
    raise ValueError(
        f"max_chunk_bytes={max_chunk_bytes} is below the {per_element} bytes "
        "one box element needs; raise --max_chunk_bytes.")
  return max_chunk_bytes // per_element


def _layers_of(box: Box, stacked: bool) -> slice:
  """The layer rows a box covers, as a slice into a [L, ...] result."""
  return box[0] if stacked and box else slice(0, 1)


def _read_rows(source: TensorSource, step: int, box: Box,
               stacked: bool) -> np.ndarray:
  """Box of `step` as float32 [nl, C]: nl layers (1 if not stacked)."""
  values = np.asarray(source.read(step, box), dtype=np.float32)
  rows = values.shape[0] if stacked and values.ndim else 1
  return values.reshape(rows, -1)


def _read_deltas(
    source: TensorSource,
    *,
    base: np.ndarray,
    steps: Sequence[int],
    box: Box,
    stacked: bool,
) -> np.ndarray:
  """D rows of one box, read one checkpoint at a time.

  Args:
    source: the parameter.
    base: theta_0 of the box, float32 [nl, C].
    steps: the T window steps.
    box: the box.
    stacked: whether axis 0 is the layer axis.

  Returns:
    [nl, T, C] float64; row t is the float32 difference theta_{s_t} - theta_0
    (METHODS.md 4 step 1), widened exactly.
  """
  deltas = np.empty((base.shape[0], len(steps), base.shape[1]), np.float64)
  for t, step in enumerate(steps):
    np.subtract(_read_rows(source, step, box, stacked), base,
                out=deltas[:, t, :], dtype=np.float32, casting="unsafe")
  return deltas


def accumulate_gram(
    source: TensorSource,
    *,
    base_step: int,
    steps: Sequence[int],
    stacked: bool,
    max_chunk_bytes: int,
) -> np.ndarray:
  """Per-layer uncentred Gram G = D D^T of the deltas (METHODS.md 4 step 2).

  Args:
    source: the parameter, [L, ...] if `stacked` else any shape.
    base_step: step of theta_0.
    steps: the T window steps (rows of D, in this order).
    stacked: whether axis 0 is the layer axis (one tensor per layer).
    max_chunk_bytes: bound on the box working set, see
      `gram_bytes_per_element`.

  Returns:
    [L, T, T] float64 (L = 1 when not stacked).
  """
  num_layers = source.shape[0] if stacked and source.shape else 1
  gram = np.zeros((num_layers, len(steps), len(steps)), np.float64)
  boxes = plan_boxes(
      source.shape, chunk_shape=source.chunk_shape, stacked=stacked,
      max_elements=_max_box_elements(gram_bytes_per_element(len(steps)),
                                     max_chunk_bytes))
  for box in boxes:
    base = _read_rows(source, base_step, box, stacked)
    deltas = _read_deltas(source, base=base, steps=steps, box=box,
                          stacked=stacked)
    layers = _layers_of(box, stacked)
    for i, layer in enumerate(range(*layers.indices(num_layers))):
      block = deltas[i]
      gram[layer] += block @ block.T
  return gram


def top_eigenpairs(gram: np.ndarray, *, rank: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The `rank` largest eigenpairs of a symmetric PSD Gram (METHODS.md 4.3).

  Signs are fixed so that the largest-magnitude entry of each eigenvector is
  positive (first such entry on ties); the extrapolation does not depend on
  the sign, the plotted coefficients do.

  Args:
    gram: [T, T] float64, symmetric.
    rank: r, 1 <= r <= T.

  Returns:
    (lambda [r] descending; u [T, r] orthonormal columns; all T eigenvalues
     descending), eigenvalues clipped at 0.
  """
  T = gram.shape[0]
  if gram.shape != (T, T):
    raise ValueError(f"gram must be square, got shape {gram.shape}.")
  if not 1 <= rank <= T:
    raise ValueError(f"rank={rank} must be in [1, T={T}].")
  spectrum, eigenvectors = np.linalg.eigh(gram)
  spectrum = np.maximum(spectrum[::-1], 0.0)
  eigenvectors = eigenvectors[:, ::-1][:, :rank]
  pivot = np.argmax(np.abs(eigenvectors), axis=0)
  signs = np.where(eigenvectors[pivot, np.arange(rank)] < 0, -1.0, 1.0)
  return spectrum[:rank], eigenvectors * signs, spectrum


def fit_polynomial(steps: np.ndarray, values: np.ndarray, *, degree: int
                   ) -> tuple[np.ndarray, float, float, float]:
  """Least squares c(s) = sum_k p_k (s - m)^k with intercept (METHODS.md 4.4).

  The steps are centred at their mean m for conditioning; the fit is the
  same line (or parabola) as on raw steps.

  Args:
    steps: [T] true step numbers.
    values: [T] coefficients c_t.
    degree: 1 (linear) or 2 (quadratic); needs T > degree distinct steps.

  Returns:
    (p [degree + 1] lowest power first, m, residual sum of squares,
     total sum of squares around the mean of `values`).
  """
  steps = np.asarray(steps, np.float64)
  values = np.asarray(values, np.float64)
  if steps.shape != values.shape or steps.ndim != 1:
    raise ValueError(f"steps {steps.shape} and values {values.shape} must be "
                     "equal-length vectors.")
  if len(np.unique(steps)) <= degree:
    raise ValueError(f"a degree-{degree} fit needs more than {degree} distinct "
                     f"steps, got {steps.tolist()}.")
  center = float(np.mean(steps))
  design = np.vander(steps - center, degree + 1, increasing=True)
  coeffs = np.linalg.lstsq(design, values, rcond=None)[0]
  residual = values - design @ coeffs
  ss_res = float(residual @ residual)
  deviation = values - np.mean(values)
  return coeffs, center, ss_res, float(deviation @ deviation)


def evaluate_polynomial(coeffs: np.ndarray, center: float,
                        step: float) -> float:
  """sum_k p_k (step - m)^k for coefficients from `fit_polynomial`."""
  return float(np.polynomial.polynomial.polyval(step - center, coeffs))


@dataclasses.dataclass(frozen=True)
class TensorFit:
  """Spectrum and coefficient fits of one tensor (one layer slice).

  Attributes:
    steps: [T] true step numbers of the window.
    eigenvalues: [R] lambda_r of G, descending.
    eigenvectors: [T, R] u_r.
    spectrum: [T] all eigenvalues of G, descending.
    trace: trace(G) = sum of all T eigenvalues (total energy).
    active: [R] whether component r is used (lambda_r > rtol * trace).
    center: m, the step mean the polynomials are centred at.
    poly: [R, degree + 1] fitted p_k of c_r(s), lowest power first.
    ss_res: [R] residual sum of squares of each fit.
    ss_tot: [R] total sum of squares of each c_r around its mean.
  """

  steps: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  spectrum: np.ndarray
  trace: float
  active: np.ndarray
  center: float
  poly: np.ndarray
  ss_res: np.ndarray
  ss_tot: np.ndarray

  @property
  def sigma(self) -> np.ndarray:
    """[R] singular values sqrt(lambda_r)."""
    return np.sqrt(self.eigenvalues)

  @property
  def coefficients(self) -> np.ndarray:
    """[R, T] c_r = sigma_r u_r (zero rows for inactive components)."""
    return np.where(self.active[:, None],
                    self.sigma[:, None] * self.eigenvectors.T, 0.0)

  @property
  def r2(self) -> np.ndarray:
    """[R] R^2 = 1 - ss_res / ss_tot of each fit; NaN when ss_tot = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(self.ss_tot > 0, 1.0 - self.ss_res / self.ss_tot, np.nan)

  def predict_coefficients(self, target_step: float) -> np.ndarray:
    """[R] c*_r = fitted c_r(s*); 0 for inactive components."""
    return np.array([
        evaluate_polynomial(p, self.center, target_step) if on else 0.0
        for p, on in zip(self.poly, self.active)])

  def weights(self, target_step: float) -> np.ndarray:
    """[T] w = sum_r (c*_r / sigma_r) u_r, so theta* = theta_0 + D^T w."""
    sigma = np.where(self.active, self.sigma, 1.0)
    return self.eigenvectors @ (self.predict_coefficients(target_step) / sigma)


def fit_tensor(gram: np.ndarray, steps: Sequence[int], *, rank: int,
               fit: str) -> TensorFit:
  """Top-r spectrum of G and a fitted trajectory per component (METHODS 4.3-4).

  Args:
    gram: [T, T] float64 Gram of the tensor's deltas.
    steps: [T] true step numbers of the rows of D.
    rank: r, components kept (flag `rank`).
    fit: a key of FITS (flag `fit`).

  Returns:
    The TensorFit.
  """
  if fit not in FITS:
    raise ValueError(f"fit={fit!r}; choose one of {sorted(FITS)}.")
  steps = np.asarray(steps, np.float64)
  if gram.shape != (len(steps), len(steps)):
    raise ValueError(f"gram shape {gram.shape} does not match {len(steps)} "
                     "steps.")
  eigenvalues, eigenvectors, spectrum = top_eigenpairs(gram, rank=rank)
  trace = float(np.trace(gram))
  active = eigenvalues > _RTOL * trace
  coefficients = np.sqrt(eigenvalues)[:, None] * eigenvectors.T
  fits = [fit_polynomial(steps, c, degree=FITS[fit]) for c in coefficients]
  return TensorFit(
      steps=steps, eigenvalues=eigenvalues, eigenvectors=eigenvectors,
      spectrum=spectrum, trace=trace, active=active, center=fits[0][1],
      poly=np.stack([f[0] for f in fits]),
      ss_res=np.array([f[2] for f in fits]),
      ss_tot=np.array([f[3] for f in fits]))


def extrapolate_region(
    source: TensorSource,
    *,
    base_step: int,
    steps: Sequence[int],
    weights: np.ndarray,
    stacked: bool,
    max_chunk_bytes: int,
    out_dtype: np.dtype,
    region: Box | None = None,
    reference_step: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Second pass: theta_0 + sum_t w_t D_t over a region (METHODS.md 4 step 5).

  Args:
    source: the parameter.
    base_step: step of theta_0.
    steps: the T window steps, in the order of the columns of `weights`.
    weights: [L, T] float64, `TensorFit.weights` of each layer (L = 1 if not
      stacked). A layer whose weights are all zero is theta_0 and its deltas
      are not read.
    stacked: whether axis 0 is the layer axis.
    max_chunk_bytes: bound on the box working set, see
      COMBINE_BYTES_PER_ELEMENT.
    out_dtype: dtype of the result; the sum is formed in float64 and rounded
      once.
    region: box of the parameter to compute (a device shard); all of it if
      None.
    reference_step: a real checkpoint at the target step, if one exists.

  Returns:
    (the region's values [region shape] in `out_dtype`,
     [L, 3] float64 sums over the region for the relative error against the
     reference: sum (theta* - theta_ref)^2, sum (theta_ref - theta_0)^2,
     sum (theta_{s_T} - theta_ref)^2; zeros without a reference).
  """
  shape = tuple(source.shape)
  region = region if region is not None else tuple(slice(0, s) for s in shape)
  bounds = [r.indices(s)[:2] for r, s in zip(region, shape)]
  out = np.empty(tuple(hi - lo for lo, hi in bounds), out_dtype)
  errors = np.zeros((weights.shape[0], 3), np.float64)
  boxes = plan_boxes(
      shape, chunk_shape=source.chunk_shape, stacked=stacked, region=region,
      max_elements=_max_box_elements(COMBINE_BYTES_PER_ELEMENT,
                                     max_chunk_bytes))
  for box in boxes:
    layers = _layers_of(box, stacked)
    w = weights[layers]
    base = _read_rows(source, base_step, box, stacked)
    result = base.astype(np.float64)
    if np.any(w):
      term = np.empty_like(result)
      for t, step in enumerate(steps):
        np.subtract(_read_rows(source, step, box, stacked), base, out=term,
                    dtype=np.float32, casting="unsafe")
        term *= w[:, t, None]
        result += term
    values = result.astype(out_dtype)
    local = tuple(slice(b.start - lo, b.stop - lo)
                  for b, (lo, _) in zip(box, bounds))
    out[local] = values.reshape(out[local].shape)
    if reference_step is not None:
      reference = _read_rows(source, reference_step, box, stacked)
      last = _read_rows(source, steps[-1], box, stacked)
      errors[layers, 0] += np.sum(
          np.square(values.astype(np.float64) - reference), axis=1)
      errors[layers, 1] += np.sum(
          np.square(reference.astype(np.float64) - base), axis=1)
      errors[layers, 2] += np.sum(
          np.square(last.astype(np.float64) - reference), axis=1)
  return out, errors
