"""Orbax checkpoints in and out of RELEX, one tensor and one box at a time.

Input layout (docs/CONVENTIONS.md): `<run_dir>/checkpoints/<step>/` written by
`orbax.checkpoint.CheckpointManager` with the items `params` (StandardSave of
the pure parameter dict, layers stacked on a leading L axis), `opt_state` and
`meta` (JsonSave). Only `params` (and `meta`, for the model config) is read.

Partial reads: every parameter of every step is opened as its own TensorStore
with the spec orbax itself reads it with (`type_handlers.get_json_tspec_read`)
and only the requested box is read. TensorStore decodes whole zarr chunks, and
orbax's default chunk is a device's whole shard of an array: on one device a
stacked [L, D, F] kernel is ONE chunk, so reading any box of it decodes all of
it (measured with orbax 0.12.8: 30 reads of one layer each of a
[30, 576, 1536] float32 chunk took 8.4 s, one read of all layers 0.26 s).
RELEX therefore reads boxes that span all layers and lie inside one chunk
(relex.plan_boxes). A chunk larger than a box (max_chunk_bytes / (8 (T + 2))
elements in the Gram pass, max_chunk_bytes / 64 in the second) is decoded
once per box inside it, so the host peak adds one decoded chunk and the Gram
pass decodes each chunk ceil(chunk elements * 8 (T + 2) / max_chunk_bytes)
times. Checkpoints written with `storage_save_args` (chunks of at most 4 MiB,
split along the non-layer axes; orbax restores them like any other) are
decoded once per pass for T <= 126 at the default 1 GiB budget: the trainer
should save `params` with it.

Output: the extrapolated parameters as jax.Arrays with a chosen sharding
(the base checkpoint's, or one device), each device shard computed from boxes
of the checkpoints, saved in the same layout under
`<output_dir>/checkpoints/<target_step>/` (items `params`, `meta`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any, Mapping, Sequence

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from rlvr_jax.relex import relex
from rlvr_jax.checkpoints import storage_save_args

# Output dtypes of the `dtype` flag; 'same' keeps each tensor's stored dtype.
OUTPUT_DTYPES = ("same", "float32", "bfloat16", "float16")

# Sharding of the output parameters (flag `sharding`).
SHARDINGS = ("base", "single")


@dataclasses.dataclass
class ReadStats:
  """Bytes and wall seconds of all TensorStore reads so far."""

  bytes: int = 0
  seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class ParamInfo:
  """One parameter of the checkpoints.

  Attributes:
    name: slash-joined path in the parameter dict ('layers/mlp/up/kernel').
    keys: the same path as a tuple of dict keys.
    storage_name: orbax's name of the array inside the `params` item.
    shape: global shape.
    dtype: stored dtype.
    chunk_shape: storage chunk shape common to all read steps (elementwise
      gcd, so a box inside it is inside one chunk of every step).
    stacked: whether axis 0 is the layer axis (one RELEX tensor per layer).
  """

  name: str
  keys: tuple[str, ...]
  storage_name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  chunk_shape: tuple[int, ...]
  stacked: bool


class CheckpointTensor:
  """`relex.TensorSource` over one parameter of several orbax steps."""

  def __init__(self, info: ParamInfo, stores: Mapping[int, ts.TensorStore],
               stats: ReadStats):
    self._info = info
    self._stores = stores
    self._stats = stats

  @property
  def shape(self) -> tuple[int, ...]:
    return self._info.shape

  @property
  def chunk_shape(self) -> tuple[int, ...]:
    return self._info.chunk_shape

  def read(self, step: int, box: relex.Box) -> np.ndarray:
    """The values of `box` at `step`, in the stored dtype."""
    start = time.perf_counter()
    values = self._stores[step][box].read().result()
    self._stats.seconds += time.perf_counter() - start
    self._stats.bytes += values.nbytes
    return values


def _flatten_metadata(tree: Any) -> dict[tuple[str, ...], Any]:
  """{key path: orbax ArrayMetadata} of a params metadata tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(str(k.key) for k in path): leaf for path, leaf in flat}


class RunCheckpoints:
  """The params of selected steps of a run, checked against each other.

  Every requested step must exist and hold the same parameter names, shapes
  and dtypes as the first one (the base); a difference is a ValueError naming
  the tensor and the step.
  """

  def __init__(self, run_dir: str | epath.Path, *, steps: Sequence[int],
               optional_steps: Sequence[int] = (),
               stacked_keys: Sequence[str] = ("layers",)):
    """Opens the metadata of `steps` (base first) under `run_dir`.

    Args:
      run_dir: the trainer's workdir (holds `checkpoints/`).
      steps: steps to read, all required; steps[0] is the reference for names
        and shapes.
      optional_steps: steps also read when they exist (real checkpoints at
        the target steps).
      stacked_keys: top-level keys whose arrays are stacked over layers.
    """
    self.run_dir = epath.Path(run_dir)
    self.directory = self.run_dir / "checkpoints"
    if not self.directory.is_dir():
      raise ValueError(f"run_dir={str(run_dir)!r} has no checkpoints/ "
                       f"directory ({self.directory}).")
    manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(read_only=True))
    self.available_steps = tuple(sorted(manager.all_steps()))
    manager.close()
    missing = sorted(set(steps) - set(self.available_steps))
    if missing:
      raise ValueError(
          f"steps {missing} are missing from {self.directory}; available "
          f"steps: {list(self.available_steps)}.")
    self.steps = tuple(dict.fromkeys(
        [*steps, *(s for s in optional_steps if s in self.available_steps)]))
    self.stats = ReadStats()
    self._context = ocp.type_handlers.get_ts_context(use_ocdbt=True)
    self._layouts = {}
    metadata = {}
    for step in self.steps:
      params_dir = self.directory / str(step) / "params"
      if not params_dir.is_dir():
        raise ValueError(f"step {step} of {self.directory} has no 'params' "
                         "item.")
      tree = ocp.PyTreeCheckpointHandler().metadata(params_dir)
      self._layouts[step] = (params_dir, tree.use_zarr3,
                             ocp.type_handlers.is_ocdbt_checkpoint(params_dir))
      metadata[step] = _flatten_metadata(tree.tree)
    self.params = self._check(metadata, tuple(stacked_keys))
    self.base_metadata = {name: metadata[self.steps[0]][info.keys]
                          for name, info in self.params.items()}

  def _check(self, metadata: Mapping[int, Mapping[tuple[str, ...], Any]],
             stacked_keys: tuple[str, ...]) -> dict[str, ParamInfo]:
    """ParamInfo per tensor; ValueError on any name/shape/dtype mismatch."""
    first = self.steps[0]
    reference = metadata[first]
    for step in self.steps[1:]:
      extra = sorted("/".join(k) for k in set(metadata[step]) - set(reference))
      absent = sorted("/".join(k) for k in set(reference) - set(metadata[step]))
      if extra or absent:
        raise ValueError(
            f"params of step {step} differ from step {first} in "
            f"{self.directory}: missing {absent}, unexpected {extra}.")
      for keys, meta in reference.items():
        other = metadata[step][keys]
        for field in ("shape", "dtype"):
          if getattr(other, field) != getattr(meta, field):
            raise ValueError(
                f"tensor {'/'.join(keys)!r} has {field} "
                f"{getattr(other, field)} at step {step} but "
                f"{getattr(meta, field)} at step {first} ({self.directory}).")
    params = {}
    for keys, meta in reference.items():
      shape = tuple(int(d) for d in meta.shape)
      chunks = [metadata[s][keys].storage.chunk_shape or shape
                for s in self.steps]
      chunk_shape = tuple(int(c) for c in functools.reduce(np.gcd, chunks))
      params["/".join(keys)] = ParamInfo(
          name="/".join(keys), keys=keys, storage_name=meta.name, shape=shape,
          dtype=np.dtype(meta.dtype), chunk_shape=chunk_shape,
          stacked=keys[0] in stacked_keys and len(shape) >= 1)
    return params

  def _open(self, step: int, info: ParamInfo) -> ts.TensorStore:
    params_dir, use_zarr3, use_ocdbt = self._layouts[step]
    spec = ocp.type_handlers.get_json_tspec_read(
        ocp.type_handlers.ParamInfo(
            name=info.storage_name, parent_dir=params_dir, use_zarr3=use_zarr3,
            is_ocdbt_checkpoint=use_ocdbt, ts_context=self._context),
        use_ocdbt=use_ocdbt)
    return ts.open(spec, context=self._context, open=True, read=True).result()

  def tensor(self, name: str) -> CheckpointTensor:
    """Opens parameter `name` at every step of this set."""
    info = self.params[name]
    return CheckpointTensor(info, {s: self._open(s, info) for s in self.steps},
                            self.stats)

  def meta(self, step: int) -> dict[str, Any] | None:
    """The `meta` item of `step`, or None if the step has none."""
    if not (self.directory / str(step) / "meta").exists():
      return None
    manager = ocp.CheckpointManager(
        self.directory, item_names=("meta",),
        options=ocp.CheckpointManagerOptions(read_only=True))
    meta = manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    manager.close()
    return meta


def output_shardings(run: RunCheckpoints,
                     mode: str) -> dict[str, jax.sharding.Sharding]:
  """Sharding of each output tensor.

  Args:
    run: the opened checkpoints; its first step is the base.
    mode: 'base' rebuilds the sharding the base params were saved with (the
      mesh the trainer restores onto; one device when saved from NumPy);
      'single' puts everything on the first local device.

  Returns:
    {tensor name: sharding}.
  """
  if mode not in SHARDINGS:
    raise ValueError(f"sharding={mode!r}; choose one of {SHARDINGS}.")
  single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shardings = {}
  for name, meta in run.base_metadata.items():
    if mode == "single" or meta.sharding is None:
      shardings[name] = single
      continue
    try:
      shardings[name] = meta.sharding.to_jax_sharding()
    except ValueError as e:
      raise ValueError(
          f"cannot rebuild the sharding of tensor {name!r} of the base "
          f"checkpoint on this process's devices ({e}); use --sharding=single."
      ) from e
  return shardings


def output_dtype(info: ParamInfo, dtype: str) -> np.dtype:
  """The output dtype of a tensor for the `dtype` flag value."""
  if dtype not in OUTPUT_DTYPES:
    raise ValueError(f"dtype={dtype!r}; choose one of {OUTPUT_DTYPES}.")
  return info.dtype if dtype == "same" else np.dtype(jax.numpy.dtype(dtype))


def _bounds(index: tuple[slice, ...],
            shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  """A device index as hashable (start, stop) bounds per axis."""
  return tuple(s.indices(d)[:2] for s, d in zip(index, shape))


def extrapolate_params(
    run: RunCheckpoints,
    weights: Mapping[str, np.ndarray],
    *,
    base_step: int,
    steps: Sequence[int],
    dtype: str,
    shardings: Mapping[str, jax.sharding.Sharding],
    max_chunk_bytes: int,
    reference_step: int | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The extrapolated parameter dict, one device shard at a time.

  Each distinct shard region of this process's devices is computed once by
  `relex.extrapolate_region` and copied to the devices that hold it.

  Args:
    run: the opened checkpoints (base, window and reference steps).
    weights: {tensor name: [L, T] float64 combination weights}.
    base_step: step of theta_0.
    steps: the T window steps.
    dtype: a value of OUTPUT_DTYPES.
    shardings: {tensor name: output sharding}.
    max_chunk_bytes: bound on one box's working set.
    reference_step: a real checkpoint at the target step, if any.

  Returns:
    (nested parameter dict of jax.Arrays, {tensor name: [L, 3] error sums of
     `relex.extrapolate_region`, over this process's shards}).
  """
  params: dict[str, Any] = {}
  errors = {}
  for name, info in run.params.items():
    source = run.tensor(name)
    sharding = shardings[name]
    by_region: dict[tuple[tuple[int, int], ...], list[jax.Device]] = {}
    for device, index in sharding.addressable_devices_indices_map(
        info.shape).items():
      by_region.setdefault(_bounds(index, info.shape), []).append(device)
    shards = []
    errors[name] = np.zeros((weights[name].shape[0], 3))
    for region, devices in by_region.items():
      values, region_errors = relex.extrapolate_region(
          source, base_step=base_step, steps=steps, weights=weights[name],
          stacked=info.stacked, max_chunk_bytes=max_chunk_bytes,
          out_dtype=output_dtype(info, dtype),
          region=tuple(slice(lo, hi) for lo, hi in region),
          reference_step=reference_step)
      errors[name] += region_errors
      shards.extend(jax.device_put(values, d) for d in devices)
    node = params
    for key in info.keys[:-1]:
      node = node.setdefault(key, {})
    node[info.keys[-1]] = jax.make_array_from_single_device_arrays(
        info.shape, sharding, shards)
  return params, errors


def save_checkpoint(output_dir: str | epath.Path, step: int, params: Any,
                    meta: Mapping[str, Any]) -> epath.Path:
  """Writes `params` and `meta` as `<output_dir>/checkpoints/<step>/`.

  Same CheckpointManager layout as the trainer's (without `opt_state`), with
  chunks bounded by `storage_save_args`.

  Args:
    output_dir: a workdir-like directory.
    step: the checkpoint step (the RELEX target step).
    params: the parameter dict of jax.Arrays.
    meta: JSON-serializable metadata.

  Returns:
    The `params` item directory of the new checkpoint.
  """
  directory = epath.Path(output_dir) / "checkpoints"
  manager = ocp.CheckpointManager(directory, item_names=("params", "meta"))
  if step in manager.all_steps():
    manager.close()
    raise ValueError(f"output_dir={str(output_dir)!r} already has a checkpoint "
                     f"for step {step}; choose another --output_dir.")
  saved = manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params, save_args=storage_save_args(params)),
      meta=ocp.args.JsonSave(dict(meta))))
  manager.wait_until_finished()
  latest = manager.latest_step()
  manager.close()
  if not saved or not (directory / str(step) / "params").is_dir():
    raise ValueError(f"output_dir={str(output_dir)!r}: orbax did not write step {step} "
                     f"(latest step there: {latest}; it writes only increasing steps); "
                     "choose an empty --output_dir.")
  return directory / str(step) / "params"


def export_hf(params: Any, model_config_path: str | epath.Path,
              out_dir: str | epath.Path) -> None:
  """HF safetensors export of `params` with the run's model config.

  Args:
    params: the parameter dict.
    model_config_path: the run's `model_config.json`.
    out_dir: the HF model directory to write.
  """
  # pylint: disable=g-import-not-at-top
  try:
    from rlvr_jax.models.config import ModelConfig
    from rlvr_jax.models.weights import export_hf_safetensors
  except ImportError as e:
    raise ImportError(
        "--hf_dir needs rlvr_jax.models.weights.export_hf_safetensors("
        f"params, model_config, out_dir), which is not available: {e}") from e
  path = epath.Path(model_config_path)
  if not path.exists():
    raise ValueError(f"--hf_dir needs the model config {path}, which does "
                     "not exist.")
  model_config = ModelConfig.from_dict(json.loads(path.read_text()))
  export_hf_safetensors(params, model_config, str(out_dir))
