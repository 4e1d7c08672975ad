"""Mesh, logical-axis rules and shardings (declared, never hand-coded).

One `jax.sharding.Mesh` with the named axes (data, fsdp, tensor). Every
parameter carries logical axis names (`logical_axes` metadata, decoder.py);
`LOGICAL_RULES` maps them to
mesh axes. Batches are split over (data, fsdp). `jax.jit` with these
shardings then makes every reduction inside the jitted function global, so
loss denominators and DelTA statistics are correct on any mesh with no
hand-written collectives.

A mesh axis is dropped from a dimension it does not divide (for example
SmolLM2's 3 KV heads on tensor=2): that dimension is then replicated over it.

Multi-host: call `initialize_distributed()` first; the same code then builds a
mesh over all processes' devices.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

from absl import logging
from flax import nnx
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axes. Parameters: D over fsdp, the wide dims over
# tensor. Activations: only their batch dim is constrained.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def _env_int(name: str) -> int | None:
  """The integer in environment variable `name`; None when it is unset or empty."""
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}: must be an integer.") from None


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when running multi-process.

  Multi-process is detected from JAX_COORDINATOR_ADDRESS or a TPU pod slice
  (TPU_WORKER_HOSTNAMES); on a single host, or when JAX's distributed runtime
  is already up, it does nothing. JAX_NUM_PROCESSES and JAX_PROCESS_ID, when
  set, give the process count and this process's index (jax.distributed reads
  neither itself; without them it takes both from the TPU metadata, SLURM or
  Open MPI). On CPU the processes' collectives go through gloo, JAX's default
  `jax_cpu_collectives_implementation`.

  Raises:
    ValueError: JAX_NUM_PROCESSES or JAX_PROCESS_ID is set but not an integer.
  """
  if jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"),
                               process_id=_env_int("JAX_PROCESS_ID"))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one of mesh data/fsdp/tensor may be -1, got {sizes}.")
  known = 1
  for size in sizes:
    if size != -1:
      known *= size
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into mesh {sizes}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if sizes[0] * sizes[1] * sizes[2] != len(devices):
    raise ValueError(
        f"mesh data*fsdp*tensor = {sizes} needs {sizes[0] * sizes[1] * sizes[2]} "
        f"devices, have {len(devices)}.")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _mesh_axes_for(name: str | None, rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, target in rules:
    if logical == name:
      if target is None:
        return ()
      return (target,) if isinstance(target, str) else tuple(target)
  raise ValueError(f"Logical axis {name!r} has no rule in {[r[0] for r in rules]}.")


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules=LOGICAL_RULES) -> PartitionSpec:
  """PartitionSpec for an array with these logical axes on `mesh`.

  Mesh axes of size 1, axes already used by an earlier dimension, and axes
  that do not divide the dimension are dropped.
  """
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    axes = []
    size = 1
    for axis in _mesh_axes_for(name, rules):
      n = mesh.shape[axis]
      if n == 1 or axis in used or dim % (size * n):
        continue
      axes.append(axis)
      size *= n
    used.update(axes)
    spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
  return PartitionSpec(*spec)


def state_shardings(state: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
  """NamedSharding tree for an nnx.State of Variables (or their abstract form)."""

  def one(var):
    names = tuple(var.get_metadata().get("logical_axes") or (None,) * len(var.shape))
    if len(names) == len(var.shape) - 1:  # stacked by the scan over layers
      names = ("layers",) + names
    return NamedSharding(mesh, logical_to_spec(names, var.shape, mesh, rules))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shards(mesh: Mesh | jax.sharding.AbstractMesh | None) -> int:
  """How many ways `mesh` shards the batch: data x fsdp (1 without a mesh or those axes)."""
  if mesh is None or mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
    return 1
  shards = 1
  for axis in BATCH_AXES:
    shards *= mesh.shape[axis]
  return shards


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch array [B, ...]: B over (data, fsdp)."""
  active = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
  lead = active if len(active) > 1 else (active[0] if active else None)
  return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
  """Places every variable of `model` on `mesh` by its logical axes (in place)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


@contextlib.contextmanager
def use_mesh(mesh: Mesh) -> Iterator[Mesh]:
  """Makes `mesh` the current mesh (for `constrain` inside jitted code)."""
  with jax.set_mesh(mesh):
    yield mesh


def constrain(x: jax.Array, logical_axes: Sequence[str | None],
              rules=LOGICAL_RULES) -> jax.Array:
  """with_sharding_constraint by logical axes; a no-op without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules)
  return jax.lax.with_sharding_constraint(x, spec)


def log_mesh(mesh: Mesh) -> None:
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
               mesh.devices.size, jax.process_count())
