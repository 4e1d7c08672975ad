"""Orbax checkpoints of a run: params, optimizer state and loop metadata.

Layout (docs/CONVENTIONS.md): `<workdir>/checkpoints/<step>/` with the items
`params` (pure dict of arrays), `opt_state` and `meta` (JSON: step, data
iterator state, RNG seed, model config). Step 0 is the base model, always
kept, so RELEX can difference against it.

Which steps are written and kept:
- every step 0..dense_window is written and kept (RELEX's observation window);
- after that every `save_every` steps, and the final step, of which the
  latest `keep` are kept.
Saves are asynchronous; orbax writes into a temporary folder and renames it
when complete, so a run killed mid-save resumes from the last complete step.

The workdir may be a local path (made absolute) or a URI such as
gs://bucket/run, which orbax and TensorStore open themselves; the folder
moves of this module go through `rlvr_jax.storage`.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from rlvr_jax import storage

_ITEMS = ("params", "opt_state", "meta")

# Storage chunk bound of every saved array: 1M float32 elements. TensorStore
# decodes whole chunks, and orbax's default chunk is the whole array, so
# without a bound RELEX's per-tensor partial reads would decode (and hold)
# every layer of a stacked parameter again for each slice.
DEFAULT_CHUNK_BYTE_SIZE = 4 << 20


def orbax_dir(directory: str) -> str:
  """The folder as orbax takes it: a local path made absolute, a URI kept as it is.

  (`os.path.abspath` would turn gs://bucket/run into <cwd>/gs:/bucket/run.)
  """
  return directory if storage.is_remote(directory) else os.path.abspath(directory)


def storage_save_args(tree: Any, *, chunk_byte_size: int = DEFAULT_CHUNK_BYTE_SIZE) -> Any:
  """`ocp.SaveArgs` for every leaf of `tree`, with zarr chunks <= chunk_byte_size.

  Orbax splits the largest (non-layer) axes first, so a chunk still spans all
  layers of a stacked parameter.
  """
  return jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=chunk_byte_size), tree)


class Checkpointer:
  """A CheckpointManager with the dense-window / save_every / keep policy."""

  def __init__(self, workdir: str, *, save_every: int, keep: int, dense_window: int,
               async_save: bool = True):
    if save_every < 1:
      raise ValueError(f"train.save_every={save_every} must be >= 1.")
    if keep < 1:
      raise ValueError(f"train.keep={keep} must be >= 1.")
    if dense_window < 0:
      raise ValueError(f"train.dense_window={dense_window} must be >= 0.")
    self.directory = orbax_dir(storage.join(workdir, "checkpoints"))
    policies = ocp.checkpoint_managers
    dense = list(range(dense_window + 1))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        save_decision_policy=policies.AnySavePolicy([
            policies.SpecificStepsPolicy(dense),
            policies.FixedIntervalPolicy(save_every),
        ]),
        preservation_policy=policies.AnyPreservationPolicy([
            policies.CustomSteps(dense),
            policies.LatestN(keep),
        ]),
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any],
           *, force: bool = False) -> bool:
    """Saves `step` if the policy (or `force`) asks for it; returns whether."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params, save_args=storage_save_args(params)),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, step: int, params_target: Any, opt_state_target: Any
              ) -> tuple[Any, Any, dict[str, Any]]:
    """Restores (params, opt_state, meta) onto the targets' shapes/shardings."""
    as_abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(as_abstract(params_target)),
            opt_state=ocp.args.StandardRestore(as_abstract(opt_state_target)),
            meta=ocp.args.JsonRestore()))
    logging.info("restored step %d from %s", step, self.directory)
    return restored.params, restored.opt_state, restored.meta

  def restore_latest_intact(self, params_target: Any, opt_state_target: Any
                            ) -> tuple[int, Any, Any, dict[str, Any]] | None:
    """Restores the newest step that reads back whole; None without checkpoints.

    A step that fails to restore (a corrupted or truncated file) is logged
    with a warning, moved to `<workdir>/checkpoints_corrupt/<step>` (kept for
    inspection, out of the way of the step's re-save; process 0 moves it, the
    others wait for it) and the next older step is tried.

    Returns:
      (step, params, opt_state, meta), or None when no step exists.

    Raises:
      RuntimeError: there are steps but none restores.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        params, opt_state, meta = self.restore(step, params_target, opt_state_target)
      except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
        aside = storage.join(storage.path(self.directory).parent, "checkpoints_corrupt")
        if jax.process_index() == 0:
          storage.move(storage.join(self.directory, str(step)), storage.join(aside, str(step)))
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices(f"checkpoint step {step} moved aside")
        self.manager.reload()
        logging.warning("checkpoint step %d in %s does not restore (%s: %s); moved to %s, "
                        "falling back to an older step", step, self.directory,
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "",
                        aside)
        continue
      if step != steps[-1]:
        logging.warning("resuming from step %d, the newest intact checkpoint", step)
      return step, params, opt_state, meta
    if steps:
      raise RuntimeError(f"No checkpoint in {self.directory} restores (tried {steps}).")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_item(directory: str, item: str, step: int | None = None,
                 target: Any = None) -> Any:
  """Reads one item of a run's checkpoint (latest step if None).

  Args:
    directory: a run's workdir or its `checkpoints/` folder (local or a URI).
    item: 'params', 'opt_state' or 'meta'.
    step: the step to read; None = the latest.
    target: optional tree of arrays giving shapes, dtypes and shardings (not
      for 'meta'); needed when the checkpoint was written on another device
      layout, for example by several processes.

  Returns:
    The item (in the target's structure when one is given; nested dicts and
    containers otherwise), or the meta dict.
  """
  if item not in _ITEMS:
    raise ValueError(f"item={item!r}: choose one of {_ITEMS}.")
  if os.path.basename(os.path.normpath(directory)) != "checkpoints":
    directory = storage.join(directory, "checkpoints")
  manager = ocp.CheckpointManager(
      orbax_dir(directory), item_names=_ITEMS,
      options=ocp.CheckpointManagerOptions(read_only=True))
  if step is None:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"Step {step} not in {directory}; available: {sorted(manager.all_steps())}.")
  if item == "meta":
    restore = ocp.args.JsonRestore()
  else:
    restore = ocp.args.StandardRestore(
        None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
  value = manager.restore(step, args=ocp.args.Composite(**{item: restore}))[item]
  manager.close()
  return value


def restore_params(directory: str, step: int | None = None, target: Any = None) -> Any:
  """Reads only the `params` item of a run's checkpoint (`restore_item`).

  Args:
    directory: a run's workdir or its `checkpoints/` folder.
    step: the step to read; None = the latest.
    target: optional tree of arrays giving shapes, dtypes and shardings; it
      must have the saved tree's structure (the trainer saves the model's
      Param state, each Variable as {'value': array}).

  Returns:
    The params, in the target's structure (nested dicts without a target).
  """
  return restore_item(directory, "params", step, target)
