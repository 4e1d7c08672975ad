"""RELEX's two passes over the checkpoints: the Gram and theta* (METHODS.md 4).

The pure fit of one tensor's Gram (eigenpairs, trajectory lines, weights w)
is `relex.fit`; the whole run (arguments, reading, saving, diagnostics) is
`relex.pipeline`. This module streams the checkpoints through bounded boxes.

For each parameter tensor n separately, with theta_0 the base checkpoint and
theta_{s_1..s_R} the checkpoints of the observation window:

  D_t   = vec(theta_{s_t}[n] - theta_0[n])          t = 1..R, fp32, uncentred
  G     = D D^T                                     [R, R], float64
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
the R delta rows are read one checkpoint at a time into a [nl, R, Nb] float64
buffer (nl layers of Nb elements each), so the working set is
`gram_bytes_per_element(R) * box_elements <= max_chunk_bytes` and the
R x numel matrix never exists. The second pass needs no R axis: it reads the
checkpoints of a box one at a time and adds w_t D_t into a float64 sum
(COMBINE_BYTES_PER_ELEMENT per element). Boxes never cross a storage chunk of
the checkpoint, so a reader that decodes whole storage chunks (tensorstore
over orbax's zarr) decodes at most one chunk per read; the layer axis of a
stacked parameter is split last, so one storage chunk spanning all layers is
read once per box, not once per layer.

Everything here is host NumPy in float64: JAX float64 needs the global x64
switch, and the Gram is an R x R reduction over the whole tensor that float32
accumulation would blur.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol, Sequence

import numpy as np

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
  """Host bytes per box element of the Gram pass, for a window of R steps.

  The float64 delta buffer takes 8 R; the float32 base and one raw read with
  its float32 copy take at most 16 more.

  Args:
    num_steps: R, checkpoints in the window.

  Returns:
    8 * (R + 2).
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
  """Box of `step` as float32 [nl, Nb]: nl layers (1 if not stacked)."""
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
    base: theta_0 of the box, float32 [nl, Nb].
    steps: the R window steps.
    box: the box.
    stacked: whether axis 0 is the layer axis.

  Returns:
    [nl, R, Nb] float64; row t is the float32 difference theta_{s_t} - theta_0
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
    steps: the R window steps (rows of D, in this order).
    stacked: whether axis 0 is the layer axis (one tensor per layer).
    max_chunk_bytes: bound on the box working set, see
      `gram_bytes_per_element`.

  Returns:
    [L, R, R] float64 (L = 1 when not stacked).
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
    steps: the R window steps, in the order of the columns of `weights`.
    weights: [L, R] float64, `TensorFit.weights` of each layer (L = 1 if not
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
     sum (theta_{s_R} - theta_ref)^2; zeros without a reference).
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
