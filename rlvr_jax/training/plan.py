"""Will a run fit? Compiles the trainer's jitted programs for a TPU topology.

With `libtpu` installed, `jax.experimental.topologies.get_topology_desc` gives
the devices of a TPU slice on a host that has no TPU; `jax.jit(f).lower(
abstract args with shardings).compile()` then runs XLA's TPU compiler and its
`memory_analysis()` / `cost_analysis()` give per-device bytes and FLOPs. No
weights are read: the model is `nnx.eval_shape` of its config.

The programs are the ones the trainer runs (loop.py), built by the same code:

  generate: the sampler's `_generate` (prefill of the distinct prompts and the
    KV-cache decode loop over all rollouts), sampler.py.
  stats:    `step.rollout_stats` (old log-probs, entropies, DelTA's hidden
    states, reference log-probs), step.py.
  delta:    `delta.delta_coefficients` on those hidden states (DelTA on).
  update:   `step.update_step` on one mini-batch with its micro-batches.
  merge:    with LoRA (`--config.model.lora_rank`), the merge of the adapters
    into the frozen base (compute dtype) that the sampler is given; stats and
    update then train the float32 adapters (and their Adam moments) only.

Per device, a program needs its arguments + outputs + temporaries, less the
outputs that reuse donated argument buffers (`alias`). A program "fits" when
that total is at most the chip's HBM.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any, Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rlvr_jax import sharding
from rlvr_jax.algorithms import delta as delta_lib
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import lora
from rlvr_jax.sampling import sampler as sampler_lib
from rlvr_jax.training import config_checks
from rlvr_jax.training import optimizer as optimizer_lib
from rlvr_jax.training import step as step_lib

GiB = 1024 ** 3

# HBM per chip (bytes), by the generation prefix of a topology name
# (cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version
# pages: v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e (Trillium) 32 GiB).
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_REQUIRED = re.compile(r"memory required for HLO temporaries \(([\d.]+[KMGT]?)\)")
_HLO_VALUE = re.compile(r"%([\w.\-]+) = (pred|[suf]\d+|bf16)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """Compiled size of one program, per device.

  Attributes:
    name: generate | stats | delta | update | merge (LoRA).
    argument_bytes: inputs resident on one device (XLA's count: TPU layouts
      pad the last two dimensions to tiles).
    sharded_argument_bytes: the same inputs' shard sizes without padding.
    output_bytes: outputs on one device.
    temp_bytes: XLA's scratch (activations, intermediates).
    alias_bytes: outputs written into donated inputs (counted once).
    flops: XLA's cost-analysis FLOPs of one device's program.
    largest_argument: (path, per-device bytes) of the largest input.
    largest_buffer: (HLO value, shape, bytes) of the largest array in the
      compiled (per-device) program.
    error: the compiler's refusal when the temporaries alone exceed HBM
      (then temp_bytes is its required size and output / alias are unknown).
  """

  name: str
  argument_bytes: int
  sharded_argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  flops: float
  largest_argument: tuple[str, int]
  largest_buffer: tuple[str, str, int]
  error: str = ""

  @property
  def total_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes


def hbm_bytes(topology: str) -> int:
  """HBM of one chip of `topology` ('v5e:8x8', 'v5p:2x2x1', ...)."""
  generation = topology.split(":")[0]
  if generation not in HBM_BYTES:
    raise ValueError(f"--topology={topology!r}: the generation must be one of "
                     f"{sorted(HBM_BYTES)} (e.g. 'v5e:8x8').")
  return HBM_BYTES[generation]


# libtpu's chip configuration per generation. A v4 chip has two TensorCores
# that libtpu describes, by default, as two devices per chip; JAX's mesh
# utilities refuse that ("Creating meshes for TPU >v3 requires one device per
# chip"), and a v4 slice runs in megacore mode: one device per chip, both
# cores, the chip's 32 GiB. (v5p is megacore already; v5e / v6e have one core
# per chip and no megacore config.)
_CHIP_CONFIG = {"v4": "megacore"}


def topology_devices(topology: str) -> list[jax.Device]:
  """The devices of a TPU slice, one per chip, compiled for from this host (needs libtpu)."""
  hbm_bytes(topology)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  chip_config = _CHIP_CONFIG.get(topology.split(":")[0], "default")
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                        chip_config_name=chip_config)
  except Exception as e:  # libtpu missing or an unknown shape: say which.
    raise ValueError(f"--topology={topology!r}: no TPU topology ({e}). It needs libtpu "
                     "(pip install 'jax[tpu]==<jax version>') and a name like "
                     "'v5e:4x4', 'v5p:2x2x1', 'v4:2x2x2', 'v6e:2x2'.") from e
  return list(desc.devices)


def model_config(preset: str, config: ml_collections.ConfigDict,
                 base: config_lib.ModelConfig | None = None) -> config_lib.ModelConfig:
  """The preset (or `base`) with the run's dtypes and remat (`--config.model.*`)."""
  return (base or config_lib.get_preset(preset)).replace(
      dtype=config.model.dtype, param_dtype=config.model.param_dtype,
      remat=config.model.remat)


def loss_config(config: ml_collections.ConfigDict) -> step_lib.LossConfig:
  """The trainer's LossConfig for `config` (as loop.Trainer builds it)."""
  return step_lib.LossConfig.from_config(config)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The trainer's AdamW for `config` (as loop.Trainer builds it)."""
  c = config
  return optimizer_lib.make_optimizer(
      lr=c.optim.lr, warmup_steps=c.optim.warmup_steps,
      total_steps=c.rl.steps * c.rl.mini_batches, decay=c.optim.decay,
      weight_decay=c.optim.weight_decay, grad_clip=c.optim.grad_clip,
      b1=c.optim.b1, b2=c.optim.b2)


def _abstract(shape: Sequence[int], dtype: Any, shard: jax.sharding.Sharding
              ) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=shard)


def _place(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` with `shardings` (a prefix tree of shardings)."""
  return jax.tree.map(
      lambda s, sub: jax.tree.map(lambda x: _abstract(x.shape, x.dtype, s), sub),
      shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


def itemsize(dtype: Any) -> int:
  """Bytes per element; a PRNG key counts its uint32 key data."""
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct((), dtype))
    return int(np.prod(data.shape)) * data.dtype.itemsize
  return jnp.dtype(dtype).itemsize


def per_device_bytes(x: jax.ShapeDtypeStruct) -> int:
  """Bytes of one device's shard of an abstract array with a sharding."""
  shard = x.sharding.shard_shape(x.shape)
  return int(np.prod(shard, dtype=np.int64)) * itemsize(x.dtype)


def _largest_argument(args: Any, names: Sequence[str]) -> tuple[str, int]:
  best = ("", 0)
  for arg_name, arg in zip(names, args):
    for path, leaf in jax.tree_util.tree_leaves_with_path(arg):
      if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is not None:
        size = per_device_bytes(leaf)
        if size > best[1]:
          name = "/".join([arg_name] + [str(getattr(k, "key", getattr(k, "idx", k)))
                                        for k in path if str(k) != ".value"])
          best = (f"{name} {leaf.dtype}{list(leaf.shape)}", size)
  return best


def largest_buffer(hlo_text: str) -> tuple[str, str, int]:
  """(value name, 'dtype[dims]', bytes) of the largest array in optimized HLO."""
  best = ("", "", 0)
  for name, dtype, dims in _HLO_VALUE.findall(hlo_text):
    n = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
    size = n * _DTYPE_BYTES.get(dtype, 4)
    if size > best[2]:
      best = (name, f"{dtype}[{dims}]", size)
  return best


def _bytes(text: str) -> int:
  """'131.80G' (XLA's size notation) -> bytes."""
  scale = {"": 1, "K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 * GiB}
  return int(float(text[:-1] if text[-1] in scale else text) * scale.get(text[-1], 1))


def _report(name: str, lower: Callable[..., Any], args: tuple[Any, ...],
            arg_names: Sequence[str], mesh: jax.sharding.Mesh) -> ProgramReport:
  """Compiles one program; a compile the TPU compiler refuses for HBM is a report too.

  XLA:TPU refuses to compile a program whose temporaries exceed HBM
  (RESOURCE_EXHAUSTED, "the total memory required for HLO temporaries (X)");
  the report then carries X as temp bytes, the sharded argument sizes, no
  FLOPs, and the compiler's message.
  """
  sharded = sum(per_device_bytes(x) for x in jax.tree.leaves(args))
  largest = _largest_argument(args, arg_names)
  with sharding.use_mesh(mesh):
    lowered = lower(*args)
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      message = str(e)
      required = _REQUIRED.search(message)
      if "RESOURCE_EXHAUSTED" not in message or required is None:
        raise
      return ProgramReport(
          name=name, argument_bytes=sharded, sharded_argument_bytes=sharded,
          output_bytes=0, temp_bytes=_bytes(required.group(1)), alias_bytes=0, flops=0.0,
          largest_argument=largest, largest_buffer=("", "", 0),
          error=message.strip().splitlines()[0])
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return ProgramReport(
      name=name, argument_bytes=int(mem.argument_size_in_bytes),
      sharded_argument_bytes=sharded,
      output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      alias_bytes=int(mem.alias_size_in_bytes), flops=float((cost or {}).get("flops", 0.0)),
      largest_argument=largest, largest_buffer=largest_buffer(compiled.as_text()))


_ARG_NAMES = {
    "generate": ("params", "rest", "prompt_tokens", "prompt_mask", "source", "row_valid",
                 "key", "temperature", "top_p", "stop_seqs"),
    "stats": ("params", "rest", "batch", "ref_params"),
    "delta": ("hidden", "old_logp", "advantages", "response_mask"),
    "update": ("params", "rest", "opt_state", "batch"),
    "merge": ("params", "rest"),
}


@dataclasses.dataclass
class Programs:
  """The abstract (sharded) inputs and jitted functions of one run's programs."""

  mesh: jax.sharding.Mesh
  model_config: config_lib.ModelConfig
  entries: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]


def _lora_state(config: ml_collections.ConfigDict, model: config_lib.ModelConfig,
                mesh: jax.sharding.Mesh, base_params: Any
                ) -> tuple[Any, Any, Any, Any, Any]:
  """The LoRA train state as loop.Trainer builds it, abstract and sharded.

  The trained params are the adapters (float32, so Adam's moments are too);
  `rest` holds the frozen base weights in the compute dtype; the sampler gets
  the merged weights, also in the compute dtype and laid out like the base
  params (`base_params`, sharded), from the `merge` program.

  Returns:
    (graphdef, adapters, frozen rest, the sampler's merged params, the jitted
    merge).
  """
  c = config
  spec = lora.LoraConfig(rank=c.model.lora_rank, alpha=float(c.model.lora_alpha),
                         targets=tuple(c.model.lora_targets))

  def adapted():
    decoder = decoder_lib.create_model(model)
    lora.add_adapters(decoder, spec)
    return decoder

  graphdef, adapters, frozen = step_lib.split_model(nnx.eval_shape(adapted))
  dtype = jnp.dtype(model.dtype)
  frozen = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, frozen)
  adapters = _place(adapters, sharding.state_shardings(adapters, mesh))
  frozen = _place(frozen, sharding.state_shardings(frozen, mesh))
  shardings = jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(base_params))
  merge = jax.jit(functools.partial(lora.merged_params, scale=spec.scale),
                  out_shardings=shardings)
  merged = jax.tree.map(lambda x, sh: _abstract(x.shape, x.dtype, sh),
                        jax.eval_shape(merge, adapters, frozen), shardings)
  return graphdef, adapters, frozen, merged, merge


def build_programs(config: ml_collections.ConfigDict, model: config_lib.ModelConfig,
                   devices: Sequence[jax.Device]) -> Programs:
  """The trainer's jitted programs for `config` and abstract sharded inputs.

  Shapes (trainer): rollout rows B = prompts_per_batch * group_size, update
  rows per mini-batch = update_rows / mini_batches, P = max_prompt_len,
  T = max_new_tokens, S = P + T.

  Raises:
    ValueError: a mesh or batch flag that does not fit the devices (names the
      `--config.` flag).
  """
  c = config
  config_checks.validate(c)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, devices=devices)
  shards = sharding.batch_shards(mesh)
  p, t = c.rl.max_prompt_len, c.rl.max_new_tokens
  s = p + t
  rows = c.rl.prompts_per_batch * c.rl.group_size
  mini = config_checks.update_rows(c) // c.rl.mini_batches
  for flag, value in (("rl.prompts_per_batch*rl.group_size", rows),
                      ("rl.update_groups*rl.group_size/rl.mini_batches", mini)):
    if value % shards:
      raise ValueError(f"--config.{flag}={value} rows do not split over the {shards} "
                       "batch shards (mesh data x fsdp).")
  if mini % c.rl.micro_batches:
    raise ValueError(f"--config.rl.micro_batches={c.rl.micro_batches} does not divide the "
                     f"{mini}-row mini-batch.")

  abstract_model = nnx.eval_shape(lambda: decoder_lib.create_model(model))
  graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
  params = _place(params, sharding.state_shardings(params, mesh))
  rest = _place(rest, sharding.replicated(mesh))
  sampler_graphdef, sampler_params, sampler_rest = graphdef, nnx.to_pure_dict(params), rest
  merge = None
  if c.model.lora_rank:
    graphdef, params, rest, sampler_params, merge = _lora_state(c, model, mesh, params)
  optimizer = make_optimizer(c)
  opt_shardings = optax.tree_map_params(
      optimizer, lambda _, sh: sh, jax.eval_shape(optimizer.init, params),
      jax.tree.map(lambda x: x.sharding, params),
      transform_non_params=lambda _: sharding.replicated(mesh))
  opt_state = _place(jax.eval_shape(optimizer.init, params), opt_shardings)
  rep = sharding.replicated(mesh)
  batch = lambda shape, dtype: _abstract(shape, dtype, sharding.batch_sharding(mesh, len(shape)))
  losses = loss_config(c)
  ref = params if c.algo.kl_coef > 0 else None
  entries = {}

  # generate: no shared prefix, every prompt distinct (the largest prefill).
  u = sampler_lib._prefill_rows(c.rl.prompts_per_batch, rows, shards)  # pylint: disable=protected-access
  loop_cfg = sampler_lib._LoopConfig(  # pylint: disable=protected-access
      max_new_tokens=t, greedy=False, top_k=int(c.rl.top_k), use_top_p=c.rl.top_p < 1.0,
      eos_token_ids=model.eos_token_ids, pad_token_id=model.pad_token_id, prefix_len=0)
  generate = sampler_lib._jitted_generate(sampler_graphdef, mesh)  # pylint: disable=protected-access
  key = jax.eval_shape(lambda: jax.random.key(0))
  if merge is not None:  # LoRA: the sampler's params are the merged weights.
    entries["merge"] = (merge.lower, (params, rest))
  entries["generate"] = (
      lambda *a: generate.lower(*a, cfg=loop_cfg),
      (sampler_params, nnx.to_pure_dict(sampler_rest),
       batch((u, p), jnp.int32),
       batch((u, p), jnp.bool_), batch((rows,), jnp.int32), batch((rows,), jnp.bool_),
       _abstract(key.shape, key.dtype, rep), _abstract((), jnp.float32, rep),
       _abstract((), jnp.float32, rep), _abstract((0, 0), jnp.int32, rep)))

  stats = step_lib.jit_rollout_stats(
      graphdef, prompt_len=p, num_micro=c.rl.micro_batches, loss_config=losses,
      with_hidden=bool(c.algo.delta))
  entries["stats"] = (stats.lower, (params, rest, {"tokens": batch((rows, s), jnp.int32),
                                                  "input_mask": batch((rows, s), jnp.bool_)},
                                    ref))
  if c.algo.delta:
    delta = lambda h, logp, adv, m: delta_lib.delta_coefficients(
        h, jnp.exp(logp), adv, m, k=c.algo.delta_k, lam_min=c.algo.delta_lam_min,
        lam_max=c.algo.delta_lam_max, scope=c.algo.delta_scope, group_size=c.rl.group_size)
    entries["delta"] = (jax.jit(delta).lower,
                        (batch((rows, t, model.hidden_size), jnp.float32),
                         batch((rows, t), jnp.float32), batch((rows, t), jnp.float32),
                         batch((rows, t), jnp.float32)))

  update = step_lib.jit_update_step(
      graphdef, optimizer=optimizer, prompt_len=p, num_micro=c.rl.micro_batches,
      loss_config=losses)
  mb = {"tokens": batch((mini, s), jnp.int32), "input_mask": batch((mini, s), jnp.bool_),
        "response_mask": batch((mini, t), jnp.float32),
        "old_logp": batch((mini, t), jnp.float32), "advantages": batch((mini, t), jnp.float32)}
  if c.algo.kl_coef > 0:
    mb["ref_logp"] = batch((mini, t), jnp.float32)
  entries["update"] = (update.lower, (params, rest, opt_state, mb))
  return Programs(mesh=mesh, model_config=model, entries=entries)


def compile_programs(programs: Programs, names: Sequence[str] | None = None
                     ) -> list[ProgramReport]:
  """Compiles the programs (all, or `names`) and returns their reports."""
  out = []
  for name, (lower, args) in programs.entries.items():
    if names is None or name in names:
      out.append(_report(name, lower, args, _ARG_NAMES[name], programs.mesh))
  return out


def _fmt(n: float) -> str:
  return f"{n / GiB:8.2f} GiB"


def param_count(model: config_lib.ModelConfig) -> int:
  """Parameters of `model` (from its abstract state; no memory)."""
  abstract = nnx.eval_shape(lambda: decoder_lib.create_model(model))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def suggest(report: ProgramReport, config: ml_collections.ConfigDict,
            model: config_lib.ModelConfig, hbm: int, mesh: dict[str, int]) -> list[str]:
  """Levers for a program that does not fit, from what dominates its bytes.

  Besides the compiler's numbers it estimates, per chip: the sampler's
  compute-dtype copy of every layer's weights (gathered over fsdp, split over
  tensor), its KV cache, and the float32 attention scores [rows, N, S, S] of
  one micro-batch in one layer (the decoder's attention is not chunked).
  """
  c = config
  tensor = mesh["tensor"]
  shards = mesh["data"] * mesh["fsdp"]
  chips = shards * tensor
  p, t = c.rl.max_prompt_len, c.rl.max_new_tokens
  width = jnp.dtype(model.dtype).itemsize
  kv_heads = model.num_kv_heads // tensor if model.num_kv_heads % tensor == 0 else \
      model.num_kv_heads
  heads = model.num_heads // tensor if model.num_heads % tensor == 0 else model.num_heads
  rows = c.rl.prompts_per_batch * c.rl.group_size
  mini = config_checks.update_rows(c) // c.rl.mini_batches
  levers = []
  resident = report.argument_bytes + report.output_bytes - report.alias_bytes
  if resident > hbm // 2 and (mesh["fsdp"] < chips // tensor):
    levers.append("more fsdp: --config.mesh.fsdp=-1 --config.mesh.data=1 (parameters and "
                  "optimizer state sharded over every chip)")
  if report.temp_bytes <= resident and levers:
    return levers
  if report.name == "generate":
    weights = param_count(model) * width / tensor
    cache = (rows / shards * model.num_layers * 2 * kv_heads * (p + t) * model.head_dim
             * width)
    what = (f"the sampler's {model.dtype} copy of all layers' weights ~{_fmt(weights).strip()}"
            f" per chip, its KV cache ~{_fmt(cache).strip()} per chip")
    if weights >= cache:
      levers.append(f"tensor parallelism: --config.mesh.tensor=4 --config.mesh.fsdp="
                    f"{chips // 4} ({what}; fsdp does not split the gathered weights, "
                    "tensor does)")
    else:
      levers.append(f"fewer rollouts per sampler call or more chips ({what})")
  if report.name in ("stats", "update"):
    if str(model.vocab_size) in report.largest_buffer[1] and not c.train.logprob_chunk:
      levers.append("logprob chunk: --config.train.logprob_chunk=512 (the [rows, T, V] "
                    "logits are the largest temporary)")
    if model.remat == "none" and report.name == "update":
      levers.append("remat: --config.model.remat=full (keep one [rows, S, D] per layer)")
    batch_rows = rows if report.name == "stats" else mini
    per_chip = max(1, batch_rows // (c.rl.micro_batches * shards))
    scores = per_chip * heads * (p + t) ** 2 * 4
    one_row = batch_rows // shards
    if per_chip > 1:
      levers.append(
          f"micro-batches: --config.rl.micro_batches={one_row} (one row per chip; the "
          f"float32 attention scores [rows, N, S, S] of one layer are "
          f"~{_fmt(scores).strip()} per chip at {per_chip} rows)")
    else:
      levers.append(f"at one row per chip per micro-batch the attention scores [N, S, S] "
                    f"float32 are ~{_fmt(scores).strip()} per layer: shorter sequences, "
                    "tensor parallelism over heads (--config.mesh.tensor) or a chunked "
                    "(flash) attention")
  if report.name == "delta":
    levers.append("micro-batches do not shrink DelTA's [rows, T, D] float32 hidden "
                  "states: more chips on the batch axes")
  return levers


def format_table(reports: Sequence[ProgramReport], *, hbm: int, title: str) -> str:
  """One line per program: per-device bytes vs HBM, FLOPs, verdict."""
  head = (f"{'program':<9} {'argument':>12} {'output':>12} {'temp':>12} {'alias':>12} "
          f"{'total':>12} {'% HBM':>7} {'TFLOPs':>9}  verdict")
  lines = [title, f"HBM per chip: {_fmt(hbm).strip()}", head, "-" * len(head)]
  for r in reports:
    lines.append(
        f"{r.name:<9} {_fmt(r.argument_bytes)} {_fmt(r.output_bytes)} {_fmt(r.temp_bytes)} "
        f"{_fmt(r.alias_bytes)} {_fmt(r.total_bytes)} {100 * r.total_bytes / hbm:6.1f}% "
        f"{r.flops / 1e12:9.2f}  {'fits' if r.total_bytes <= hbm else 'DOES NOT FIT'}")
  return "\n".join(lines)


def explain(reports: Sequence[ProgramReport], config: ml_collections.ConfigDict,
            model: config_lib.ModelConfig, hbm: int, mesh: dict[str, int]) -> str:
  """For each program over HBM: its largest arrays and the levers to pull."""
  lines = []
  for r in reports:
    if r.total_bytes <= hbm:
      continue
    arg_name, arg_bytes = r.largest_argument
    value, shape, size = r.largest_buffer
    largest = (f"; largest array: {shape} '{value}' ({_fmt(size).strip()})" if size else "")
    lines.append(f"{r.name} does not fit: {_fmt(r.total_bytes).strip()} > "
                 f"{_fmt(hbm).strip()}. Largest argument: {arg_name} "
                 f"({_fmt(arg_bytes).strip()} per device){largest}.")
    if r.error:
      lines.append(f"  compiler: {r.error}")
    lines.extend(f"  lever: {lever}" for lever in suggest(r, config, model, hbm, mesh))
  return "\n".join(lines)


def summary(reports: Sequence[ProgramReport], *, hbm: int) -> dict[str, Any]:
  """The JSON line: fits, hbm_bytes (per chip), programs {name: bytes, flops}."""
  return {
      "fits": all(r.total_bytes <= hbm for r in reports),
      "hbm_bytes": hbm,
      "programs": {r.name: {"bytes_per_device": r.total_bytes, "flops": r.flops,
                            "argument_bytes": r.argument_bytes,
                            "sharded_argument_bytes": r.sharded_argument_bytes,
                            "temp_bytes": r.temp_bytes,
                            "largest_argument": r.largest_argument[0],
                            "largest_array": r.largest_buffer[1], "error": r.error}
                   for r in reports},
  }


def plan(config: ml_collections.ConfigDict, *, preset: str, topology: str,
         names: Sequence[str] | None = None, model: config_lib.ModelConfig | None = None
         ) -> tuple[str, dict[str, Any]]:
  """Compiles the run of `config` for `preset` on `topology`.

  `model` (e.g. read from a run's `--config.model.source`, as
  `experiments.train --plan_only` does) replaces the preset's config; `preset`
  then only names it in the table and the JSON line.

  Returns:
    (printable table and explanations, the summary dict of `summary`).
  """
  hbm = hbm_bytes(topology)
  model = model_config(preset, config, base=model)
  devices = topology_devices(topology)
  programs = build_programs(config, model, devices)
  reports = compile_programs(programs, names)
  mesh = dict(programs.mesh.shape)
  title = (f"{preset} on {topology} ({len(devices)} chips, mesh {mesh}); "
           f"{config.rl.prompts_per_batch}x{config.rl.group_size} rollouts, "
           f"P={config.rl.max_prompt_len} T={config.rl.max_new_tokens}, "
           f"dtype={model.dtype} params={model.param_dtype} remat={model.remat} "
           f"micro={config.rl.micro_batches} delta={bool(config.algo.delta)} "
           f"lora_rank={config.model.lora_rank}")
  text = format_table(reports, hbm=hbm, title=title)
  why = explain(reports, config, model, hbm, mesh)
  out = summary(reports, hbm=hbm)
  out.update(model=preset, topology=topology, chips=len(devices), mesh=mesh,
             lora_rank=config.model.lora_rank)
  return text + ("\n" + why if why else ""), out


def to_json(out: dict[str, Any]) -> str:
  return json.dumps(out, sort_keys=False)
