"""LoRA: low-rank adapters on the decoder's projections (issue 15, item 3).

A target projection y = x W (a `decoder.Linear`, kernel W [*in, *out]) gets

  y = x W + (alpha / r) (x A) B,   A [*in, r],  B [r, *out]

(Hu et al. 2021, eq. 3; PEFT's `LoraLayer` with `use_rslora=False`). A and B
are `nnx.LoRAParam` variables `lora_a` / `lora_b` of the Linear itself
(`add_adapters`), stacked over layers like the kernel
(`layers/attn/q/lora_a` [L, D, r], `layers/attn/q/lora_b` [L, r, N, Dh]), with
the kernel's logical axes on their in / out dimensions, so the mesh rules
shard them like the weight they adapt.

Why an adapter in `decoder.Linear` and not `flax.nnx.LoRA` (qwix is not
installed): nnx.LoRA wraps a 2-D [in, out] module and moves its kernel under
`base_module/`, while our kernels are multi-axis ([D, N, Dh], [N, Dh, D]),
stacked over layers and carry logical-axis metadata; the in-Linear adapter
keeps every base parameter's path (HF import, export, checkpoints and the
sampler are unchanged) and keeps the Linear's one 2-D matmul.

Initialization as PEFT's default (`init_lora_weights=True`): A uniform in
+-1/sqrt(prod(in)) (torch's kaiming_uniform(a=sqrt(5)) of an nn.Linear
[r, in] weight), B = 0, so at init the adapted model is the base model.
Default alpha (`model.lora_alpha`) = 8, PEFT's `LoraConfig` default
(a rank-8 adapter then has scale 1). Adapters are float32 whatever the
compute dtype; their products run in the compute dtype like the kernel's.

Training (`training/step.py:split_model`): the trained params are the
adapters only; the base weights are the frozen `rest` the jitted steps take
as a separate argument (no gradient, no optimizer state). Sampling and
evaluation use the merged weights W + (alpha / r) A B (`merge_flat`, one
[*in, r] x [r, *out] product per target and layer), which the KV-cache decode
path reads directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

from etils import epath
from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rlvr_jax import checkpoints
from rlvr_jax import sharding
from rlvr_jax.models import decoder as decoder_lib

# The decoder's Linear attributes an adapter may target, and their block.
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_OWNER = {"q": "attn", "k": "attn", "v": "attn", "o": "attn",
          "gate": "mlp", "up": "mlp", "down": "mlp"}
DEFAULT_ALPHA = 8.0  # PEFT's LoraConfig default lora_alpha.
ADAPTER_NAMES = ("lora_a", "lora_b")
_VALUE = "/value"  # orbax's level of an nnx Variable in a saved State


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """The adapters of a run (flags `model.lora_rank`, `model.lora_alpha`, `model.lora_targets`).

  Attributes:
    rank: r, the adapters' inner width (>= 1).
    alpha: alpha; the update is scaled by alpha / r.
    targets: names of the decoder's Linear attributes adapted (`TARGETS`).
  """

  rank: int
  alpha: float = DEFAULT_ALPHA
  targets: tuple[str, ...] = TARGETS

  def __post_init__(self):
    check(self.rank, self.alpha, self.targets)

  @property
  def scale(self) -> float:
    """alpha / r."""
    return self.alpha / self.rank


def check(rank: int, alpha: float, targets: Sequence[str]) -> None:
  """ValueError naming the `--config.model.lora_*` flag of a bad adapter setting.

  Args:
    rank: `model.lora_rank` (here >= 1; 0 = off is the caller's case).
    alpha: `model.lora_alpha`, finite and > 0.
    targets: `model.lora_targets`, a non-empty subset of `TARGETS` without repeats.
  """
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"--config.model.lora_rank={rank!r}: must be 0 (off) or an integer >= 1.")
  if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
    raise ValueError(f"--config.model.lora_alpha={alpha!r}: must be a finite number > 0.")
  targets = tuple(targets)
  unknown = [t for t in targets if t not in TARGETS]
  if not targets or unknown or len(set(targets)) != len(targets):
    raise ValueError(f"--config.model.lora_targets={targets!r}: a non-empty list without "
                     f"repeats of the decoder's projections {list(TARGETS)}.")


def _linear(model: decoder_lib.Decoder, target: str) -> decoder_lib.Linear:
  return getattr(getattr(model.layers, _OWNER[target]), target)


def has_adapters(model: nnx.Module) -> bool:
  """Whether `model` holds any `nnx.LoRAParam`."""
  return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def add_adapters(model: decoder_lib.Decoder, spec: LoraConfig, *, seed: int = 0,
                 mesh: jax.sharding.Mesh | None = None) -> None:
  """Gives each target Linear of `model` its adapters A, B (in place; module docstring).

  Args:
    model: the (stacked) decoder; its base weights are kept as they are.
    spec: rank, alpha and targets.
    seed: seed of A's draw (one key per target, folded in by target index).
    mesh: optional mesh; the adapters are placed by their logical axes.

  Raises:
    ValueError: the model already holds adapters.
  """
  if has_adapters(model):
    raise ValueError("the model already holds LoRA adapters.")
  key = jax.random.key(seed)
  num_layers = model.config.num_layers
  for index, target in enumerate(spec.targets):
    linear = _linear(model, target)
    kernel = linear.kernel
    axes = tuple(kernel.get_metadata()["logical_axes"])
    in_shape = tuple(kernel.shape[1:1 + linear.in_dims])
    out_shape = tuple(kernel.shape[1 + linear.in_dims:])
    a_axes, b_axes = axes[:linear.in_dims] + (None,), (None,) + axes[linear.in_dims:]
    a_shape, b_shape = (num_layers, *in_shape, spec.rank), (num_layers, spec.rank, *out_shape)
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    draw = lambda k: (jax.random.uniform(k, a_shape, jnp.float32, -bound, bound),
                      jnp.zeros(b_shape, jnp.float32))
    out_shardings = None
    if mesh is not None:  # created in place, as loader._random_model does
      out_shardings = tuple(jax.sharding.NamedSharding(
          mesh, sharding.logical_to_spec(("layers",) + names, shape, mesh))
                            for names, shape in ((a_axes, a_shape), (b_axes, b_shape)))
    a, b = jax.jit(draw, out_shardings=out_shardings)(jax.random.fold_in(key, index))
    # nnx.data: the Linear declared them as static None.
    linear.lora_a = nnx.data(nnx.LoRAParam(a, logical_axes=a_axes))
    linear.lora_b = nnx.data(nnx.LoRAParam(b, logical_axes=b_axes))
    linear.lora_scale = spec.scale


def flat(tree: Any) -> dict[str, Any]:
  """A parameter tree as {'layers/attn/q/kernel': array}, orbax's 'value' level dropped.

  Args:
    tree: an nnx.State, its pure dict, or a checkpoint's restored tree (each
      Variable as {'value': array}).
  """
  if isinstance(tree, nnx.State):
    tree = nnx.to_pure_dict(tree)
  out = {}
  for path, value in traverse_util.flatten_dict(dict(tree), sep="/").items():
    out[path[:-len(_VALUE)] if path.endswith(_VALUE) else path] = value
  return out


def is_adapter_path(path: str) -> bool:
  """Whether a slash path ('layers/attn/q/lora_a', optionally '/value') names an adapter."""
  path = path[:-len(_VALUE)] if path.endswith(_VALUE) else path
  return path.rsplit("/", 1)[-1] in ADAPTER_NAMES


def is_adapter_tree(tree: Any) -> bool:
  """Whether a parameter tree (`flat`'s layouts) holds adapters."""
  return any(is_adapter_path(path) for path in flat(tree))


def merge_flat(base: Mapping[str, Any], adapters: Mapping[str, Any], *, scale: float,
               dtype: Any = None) -> dict[str, Any]:
  """W + scale A B for every adapted kernel: the full parameters the adapters stand for.

  Per target and layer: kernel [*in, *out] + scale * (A [*in, r] reshaped to
  [prod(in), r]) @ (B [r, *out] reshaped to [r, prod(out)]), in float32, then
  cast to `dtype` (default the kernel's dtype). Pure (jnp): jit it for device
  arrays, or call it on host numpy arrays.

  Args:
    base: `flat` base parameters ('layers/attn/q/kernel' [L, *in, *out], ...).
    adapters: `flat` adapters ('layers/attn/q/lora_a' [L, *in, r],
      'layers/attn/q/lora_b' [L, r, *out]).
    scale: alpha / r.
    dtype: dtype of the merged kernels; None keeps each kernel's.

  Returns:
    A new flat dict with every key of `base`, adapted kernels replaced.

  Raises:
    ValueError: an adapter without its pair or its kernel, or shapes that do
      not match the kernel (naming the parameter).
  """
  merged = dict(base)
  prefixes = sorted({p.rsplit("/", 1)[0] for p in adapters})
  for prefix in prefixes:
    names = {n: f"{prefix}/{n}" for n in ("lora_a", "lora_b", "kernel")}
    missing = [p for n, p in names.items() if (adapters if n != "kernel" else base).get(p)
               is None]
    if missing:
      raise ValueError(f"LoRA merge: {missing} missing for the adapters of {prefix!r}.")
    kernel, a, b = base[names["kernel"]], adapters[names["lora_a"]], adapters[names["lora_b"]]
    layers, rank = a.shape[0], a.shape[-1]
    if (a.shape[:-1] + b.shape[2:] != kernel.shape or b.shape[:2] != (layers, rank)):
      raise ValueError(f"LoRA merge: {prefix!r} kernel {tuple(kernel.shape)} does not match "
                       f"lora_a {tuple(a.shape)} and lora_b {tuple(b.shape)}.")
    delta = jnp.matmul(jnp.asarray(a, jnp.float32).reshape(layers, -1, rank),
                       jnp.asarray(b, jnp.float32).reshape(layers, rank, -1))
    out = jnp.asarray(kernel, jnp.float32) + scale * delta.reshape(kernel.shape)
    merged[names["kernel"]] = out.astype(dtype or kernel.dtype)
  return merged


def merged_params(adapters: nnx.State, frozen: nnx.State, *, scale: float) -> dict[str, Any]:
  """The base-model pure Param dict with the adapters merged in (the sampler's params).

  Args:
    adapters: the trained adapters (the LoRA model's params).
    frozen: the LoRA model's `rest`: the frozen base Params and any other
      state; only the Params are returned.
    scale: alpha / r.

  Returns:
    The pure dict of the base decoder's Params (docs/CONVENTIONS.md), each
    adapted kernel W + scale A B in the frozen kernel's dtype.
  """
  base_params, _ = nnx.split_state(frozen, nnx.Param, ...)
  merged = merge_flat(flat(base_params), flat(adapters), scale=scale)
  return traverse_util.unflatten_dict(merged, sep="/")


def merge_checkpoint(base: Any, adapters: Any, *, scale: float) -> dict[str, np.ndarray]:
  """Host merge of a base model's params and a checkpoint's adapters (export, evaluation).

  Args:
    base: the base model's Params (any layout `flat` reads).
    adapters: a checkpoint's params item (adapters only).
    scale: alpha / r of the run.

  Returns:
    The nested pure dict of full parameters, host numpy, base dtypes.
  """
  host = lambda tree: {k: np.asarray(jax.device_get(v)) for k, v in flat(tree).items()}
  with jax.default_device(jax.devices("cpu")[0]):
    merged = merge_flat(host(base), host(adapters), scale=scale)
  return traverse_util.unflatten_dict({k: np.asarray(v) for k, v in merged.items()}, sep="/")


def merge_into(model: decoder_lib.Decoder, adapters: Any, *, scale: float) -> None:
  """Replaces `model`'s weights by W + scale A B for a checkpoint's adapters (in place).

  Args:
    model: the base decoder (no adapters); its Params give dtypes and shardings.
    adapters: the adapters (any layout `flat` reads).
    scale: alpha / r of the run.
  """
  state = nnx.state(model, nnx.Param)
  merged = merge_checkpoint(state, adapters, scale=scale)
  shardings = jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, jax.device_put(merged, shardings))
  nnx.update(model, state)


def restore_adapters(directory: str, step: int) -> dict[str, Any] | None:
  """A checkpoint's adapters on the host CPU, or None when its params are full weights.

  Args:
    directory: a run's workdir (or RELEX output folder) or its `checkpoints/`.
    step: the checkpoint step.

  Returns:
    The restored `params` item (nested, each Variable as {'value': array}) of
    a LoRA run, or None for a full-parameter checkpoint.
  """
  root = epath.Path(checkpoints.orbax_dir(directory))
  if root.name != "checkpoints":
    root = root / "checkpoints"
  tree = ocp.PyTreeCheckpointHandler().metadata(root / str(step) / "params").tree
  if not is_adapter_tree(tree):
    return None
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
  return checkpoints.restore_params(os.fspath(root), step, target=target)


def run_scale(run_config: Mapping[str, Any], origin: str) -> float:
  """alpha / r from a run's config.json (`model.lora_alpha`, `model.lora_rank`).

  Args:
    run_config: the run's config as a mapping.
    origin: the config file, for the error.

  Raises:
    ValueError: the config has no LoRA settings (naming the file).
  """
  model = run_config["model"]
  if "lora_rank" not in model or not model["lora_rank"]:
    raise ValueError(f"{origin}: the checkpoint holds LoRA adapters but model.lora_rank "
                     "is not set; the adapters' scale alpha / r is unknown.")
  return float(model["lora_alpha"]) / int(model["lora_rank"])
