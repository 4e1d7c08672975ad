"""HF checkpoints <-> our decoder: config.json, safetensors (sharded too), export.

Reads a transformers checkpoint directory (config.json, generation_config.json,
`*.safetensors` or `model.safetensors.index.json` with its shards) of a
LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM, with no network, and
writes our parameters back in the same format.

Every HF tensor name is mapped to one entry of our parameter tree
(docs/CONVENTIONS.md, "Parameters"); the layer tensors
`model.layers.{i}.*` are stacked along a leading L axis. Before any tensor is
read, the set of names in the checkpoint is compared with the set the config
implies (missing and unexpected names are errors that list them) and every
shape is checked (the error names the tensor, the expected and the found
shape). The GGUF importer (gguf_import.py) renames its tensors to these HF
names and reuses the same checks and placement.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from typing import Any, Callable, Mapping

from flax import nnx
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
import transformers

from rlvr_jax import sharding
from rlvr_jax.models import decoder
from rlvr_jax.models.config import ModelConfig, RopeScaling

# HF class name -> model_type; these are the checkpoints the decoder covers.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_MODEL_TYPES = {v: k for k, v in ARCHITECTURES.items()}

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# The level orbax gives each nnx Variable in a saved State: {'value': array}.
_VARIABLE_VALUE = "/value"

# Names some older checkpoints store that carry no parameter (RoPE buffers).
_IGNORED = re.compile(r"^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$")

# Our parameter path -> (HF name; `{i}` is the layer index, layout).
# torch's nn.Linear stores W [out, in] and computes x @ W.T. Layouts:
#   ("linear", n_in): our kernel is [*in_dims, *out_dims] with the first n_in
#     dims the input features: ours = W.T.reshape(ours_shape) and
#     W = ours.reshape(prod(in_dims), prod(out_dims)).T. Splitting the flat
#     HF feature axis into (heads, head_dim) is row-major, which is how HF
#     views it (`view(B, T, N, Dh)`): feature n * Dh + h is head n, index h.
#   ("flat", 0): a bias [N, Dh] (ours) is the HF vector [N * Dh] reshaped.
#   ("same", 0): identical arrays (embedding [V, D], norm scales).
_PARAM_MAP: dict[str, tuple[str, tuple[str, int]]] = {
    "embed/embedding": ("model.embed_tokens.weight", ("same", 0)),
    "final_norm/scale": ("model.norm.weight", ("same", 0)),
    # lm_head [D, V] <- W [V, D].
    "lm_head/kernel": ("lm_head.weight", ("linear", 1)),
    "layers/attn_norm/scale": ("model.layers.{i}.input_layernorm.weight", ("same", 0)),
    # q [D, N, Dh] <- W [N * Dh, D]; k, v [D, K, Dh] <- W [K * Dh, D].
    "layers/attn/q/kernel": ("model.layers.{i}.self_attn.q_proj.weight", ("linear", 1)),
    "layers/attn/k/kernel": ("model.layers.{i}.self_attn.k_proj.weight", ("linear", 1)),
    "layers/attn/v/kernel": ("model.layers.{i}.self_attn.v_proj.weight", ("linear", 1)),
    "layers/attn/q/bias": ("model.layers.{i}.self_attn.q_proj.bias", ("flat", 0)),
    "layers/attn/k/bias": ("model.layers.{i}.self_attn.k_proj.bias", ("flat", 0)),
    "layers/attn/v/bias": ("model.layers.{i}.self_attn.v_proj.bias", ("flat", 0)),
    # o [N, Dh, D] <- W [D, N * Dh]: two input dims.
    "layers/attn/o/kernel": ("model.layers.{i}.self_attn.o_proj.weight", ("linear", 2)),
    "layers/attn/q_norm/scale": ("model.layers.{i}.self_attn.q_norm.weight", ("same", 0)),
    "layers/attn/k_norm/scale": ("model.layers.{i}.self_attn.k_norm.weight", ("same", 0)),
    "layers/mlp_norm/scale": ("model.layers.{i}.post_attention_layernorm.weight", ("same", 0)),
    # gate, up [D, F] <- W [F, D]; down [F, D] <- W [D, F].
    "layers/mlp/gate/kernel": ("model.layers.{i}.mlp.gate_proj.weight", ("linear", 1)),
    "layers/mlp/up/kernel": ("model.layers.{i}.mlp.up_proj.weight", ("linear", 1)),
    "layers/mlp/down/kernel": ("model.layers.{i}.mlp.down_proj.weight", ("linear", 1)),
}


@dataclasses.dataclass(frozen=True)
class TensorSource:
  """Named tensors of a checkpoint, readable one at a time.

  Attributes:
    origin: the file or directory, for error messages.
    shapes: HF tensor name -> shape, known without reading the data.
    read: returns the array of one name (HF layout, its stored dtype).
  """

  origin: str
  shapes: Mapping[str, tuple[int, ...]]
  read: Callable[[str], np.ndarray]


def _read_json(path: str) -> dict[str, Any]:
  """The JSON object in `path`; ValueError naming the file when it is not one."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from e
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object, found a {type(value).__name__}.")
  return value


def _as_ids(value: int | list[int] | None) -> tuple[int, ...]:
  if value is None:
    return ()
  return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _unique(ids: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(dict.fromkeys(ids))


def _rope_scaling(params: Mapping[str, Any], origin: str) -> RopeScaling | None:
  """RopeScaling from a standardized HF `rope_parameters` dict."""
  rope_type = params.get("rope_type", "default")
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError(
        f"{origin}: partial_rotary_factor={params['partial_rotary_factor']} is not "
        "supported (RoPE must cover the whole head).")
  if rope_type == "default":
    return None
  if rope_type == "linear":
    return RopeScaling("linear", factor=float(params["factor"]))
  if rope_type == "llama3":
    return RopeScaling(
        "llama3", factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))
  raise ValueError(
      f"{origin}: rope_type={rope_type!r} is not supported; choose 'default', "
      "'linear' or 'llama3'.")


def config_from_hf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                   remat: str = "none") -> ModelConfig:
  """ModelConfig of an HF checkpoint directory (config.json + generation_config.json).

  The file is parsed by transformers' own config class (so every default it
  fills in, e.g. Qwen3's head_dim=128, is the reference's), after checking
  that the architecture is one the decoder implements. EOS ids are the union
  of config.json's and generation_config.json's (in that order); the pad id
  is config.json's, else generation_config.json's, else the first EOS id.

  Args:
    path: the checkpoint directory.
    dtype: compute dtype of the model.
    param_dtype: storage dtype the weights are cast to.
    remat: rematerialization per block ('none', 'full', 'dots').

  Returns:
    The ModelConfig.

  Raises:
    FileNotFoundError: no config.json in `path`.
    ValueError: an unknown architecture or a feature the decoder lacks
      (attention/MLP biases beyond Qwen2's qkv bias, sliding windows, another
      activation or RoPE variant); the message names the file and the key.
  """
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"No config.json in the HF checkpoint directory {path!r}.")
  raw = _read_json(config_file)
  archs = raw.get("architectures") or [_MODEL_TYPES.get(raw.get("model_type"), "")]
  known = [a for a in archs if a in ARCHITECTURES]
  if not known:
    raise ValueError(
        f"{config_file}: unknown architecture {archs} (model_type="
        f"{raw.get('model_type')!r}); supported: {sorted(ARCHITECTURES)}.")
  model_type = ARCHITECTURES[known[0]]
  hf = transformers.AutoConfig.for_model(
      model_type, **{k: v for k, v in raw.items() if k != "model_type"})

  if hf.hidden_act != "silu":
    raise ValueError(f"{config_file}: hidden_act={hf.hidden_act!r}; only 'silu' is supported.")
  if getattr(hf, "mlp_bias", False):
    raise ValueError(f"{config_file}: mlp_bias=true is not supported.")
  if model_type != "qwen2" and getattr(hf, "attention_bias", False):
    raise ValueError(
        f"{config_file}: attention_bias=true (biases on q/k/v and o) is not supported.")
  if "sliding_attention" in (getattr(hf, "layer_types", None) or ()):
    raise ValueError(f"{config_file}: use_sliding_window=true is not supported.")

  generation_file = os.path.join(path, "generation_config.json")
  generation = _read_json(generation_file) if os.path.isfile(generation_file) else {}
  eos = _unique(_as_ids(hf.eos_token_id) + _as_ids(generation.get("eos_token_id")))
  pad = hf.pad_token_id
  if pad is None:
    pad = generation.get("pad_token_id")
  if pad is None:
    pad = eos[0] if eos else 0
  head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
  rope = hf.rope_parameters
  return ModelConfig(
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=hf.num_key_value_heads,
      head_dim=head_dim,
      rope_theta=float(rope["rope_theta"]),
      rope_scaling=_rope_scaling(rope, config_file),
      rms_norm_eps=float(hf.rms_norm_eps),
      tie_word_embeddings=bool(hf.tie_word_embeddings),
      qkv_bias=model_type == "qwen2",
      qk_norm=model_type == "qwen3",
      max_position_embeddings=hf.max_position_embeddings,
      param_dtype=param_dtype,
      dtype=dtype,
      remat=remat,
      bos_token_id=hf.bos_token_id,
      eos_token_ids=eos,
      pad_token_id=int(pad),
  )


def architecture(config: ModelConfig) -> str:
  """The HF class that computes what `config` describes.

  Qwen3 is the only one with q/k norm, Qwen2 the only one with q/k/v biases
  (and no o bias), Llama has neither.
  """
  if config.qk_norm and config.qkv_bias:
    raise ValueError("No HF architecture has both qk_norm and qkv_bias (config).")
  if config.qk_norm:
    return "Qwen3ForCausalLM"
  if config.qkv_bias:
    return "Qwen2ForCausalLM"
  return "LlamaForCausalLM"


def hf_config_dict(config: ModelConfig, *, torch_dtype: str) -> dict[str, Any]:
  """config.json contents for `config` (the reverse of `config_from_hf`).

  RoPE is written in the classic form (`rope_theta`, `rope_scaling`) that
  every transformers version reads; transformers 5 converts it to
  `rope_parameters` on load.
  """
  arch = architecture(config)
  model_type = ARCHITECTURES[arch]
  scaling = config.rope_scaling
  rope_scaling = None
  if scaling is not None and scaling.rope_type == "linear":
    rope_scaling = {"rope_type": "linear", "factor": scaling.factor}
  elif scaling is not None and scaling.rope_type == "llama3":
    rope_scaling = {
        "rope_type": "llama3",
        "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor,
        "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_position_embeddings,
    }
  eos = list(config.eos_token_ids)
  out = {
      "architectures": [arch],
      "model_type": model_type,
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": config.max_position_embeddings,
      "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta,
      "rope_scaling": rope_scaling,
      "tie_word_embeddings": config.tie_word_embeddings,
      "bos_token_id": config.bos_token_id,
      "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
      "pad_token_id": config.pad_token_id,
      "torch_dtype": torch_dtype,
  }
  if model_type in ("llama", "qwen3"):
    out["attention_bias"] = False
  if model_type == "llama":
    out["mlp_bias"] = False
  if model_type in ("qwen2", "qwen3"):
    out["use_sliding_window"] = False
  return out


def _prod(shape) -> int:
  return math.prod(int(d) for d in shape)


def _hf_shape(layout: tuple[str, int], ours: tuple[int, ...]) -> tuple[int, ...]:
  kind, n_in = layout
  if kind == "linear":
    return (_prod(ours[n_in:]), _prod(ours[:n_in]))
  if kind == "flat":
    return (_prod(ours),)
  return tuple(ours)


def _to_ours(layout: tuple[str, int], w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  if layout[0] == "linear":
    return w.T.reshape(ours)  # W [out, in] -> [in, out] -> [*in_dims, *out_dims].
  return w.reshape(ours)


def _to_hf(layout: tuple[str, int], x: np.ndarray) -> np.ndarray:
  kind, n_in = layout
  if kind == "linear":
    # [*in_dims, *out_dims] -> [in, out] -> W [out, in].
    return np.ascontiguousarray(x.reshape(_prod(x.shape[:n_in]), -1).T)
  if kind == "flat":
    return x.reshape(-1)
  return x


def _hf_names(path: str, config: ModelConfig) -> list[str]:
  """HF names of our parameter `path` (one per layer for stacked ones)."""
  if path not in _PARAM_MAP:
    raise ValueError(f"Parameter {path!r} has no HF name in weights._PARAM_MAP.")
  template = _PARAM_MAP[path][0]
  if path.startswith("layers/"):
    return [template.format(i=i) for i in range(config.num_layers)]
  return [template]


def _abstract_model(config: ModelConfig) -> decoder.Decoder:
  return nnx.eval_shape(lambda: decoder.create_model(config))


@functools.partial(jax.jit, static_argnums=0)
def _non_param_state(config: ModelConfig) -> nnx.State:
  """The model's non-parameter variables (RoPE frequencies); XLA drops the unused init."""
  return nnx.state(decoder.create_model(config), nnx.Not(nnx.Param))


def _check_names_and_shapes(source: TensorSource, config: ModelConfig,
                            ours: Mapping[str, tuple[int, ...]]) -> None:
  """Raises ValueError listing missing/unexpected names and wrong shapes."""
  expected = {}
  for path, shape in ours.items():
    per_layer = shape[1:] if path.startswith("layers/") else shape
    for name in _hf_names(path, config):
      expected[name] = _hf_shape(_PARAM_MAP[path][1], per_layer)
  found = set(source.shapes)
  missing = sorted(set(expected) - found)
  unexpected = sorted(n for n in found - set(expected) if not _IGNORED.match(n))
  if config.tie_word_embeddings and "lm_head.weight" in unexpected:
    unexpected.remove("lm_head.weight")  # Checked equal to the embedding on load.
  if missing:
    raise ValueError(f"{source.origin}: missing tensors {missing} for this config.")
  if unexpected:
    raise ValueError(
        f"{source.origin}: unexpected tensors {unexpected} (not in a "
        f"{architecture(config)} with this config).")
  wrong = [f"{name}: expected shape {shape}, found {tuple(source.shapes[name])}"
           for name, shape in expected.items() if tuple(source.shapes[name]) != shape]
  if wrong:
    raise ValueError(f"{source.origin}: shape mismatch: " + "; ".join(wrong))


def _place(x: np.ndarray, target: jax.sharding.Sharding | None) -> jax.Array:
  """Puts a host array on devices; each device copies only its own slice."""
  if target is None:
    return jax.device_put(x)
  return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def load_from_source(source: TensorSource, config: ModelConfig,
                     mesh: jax.sharding.Mesh | None = None) -> decoder.Decoder:
  """Builds a Decoder whose parameters are the tensors of `source`.

  Names and shapes are all checked before any data is read. Each of our
  parameters is then assembled on the host (layers stacked along L), cast to
  `config.param_dtype` and placed on the devices before the next one is read,
  so host memory holds one stacked tensor at a time.

  Args:
    source: HF-named tensors.
    config: the architecture; also fixes the parameter dtype.
    mesh: optional mesh; parameters then get the shardings of
      `rlvr_jax.sharding.state_shardings`.

  Returns:
    The decoder, loaded with `nnx.update`.
  """
  model = _abstract_model(config)
  abstract = nnx.state(model, nnx.Param)
  flat_abstract = traverse_util.flatten_dict(nnx.to_pure_dict(abstract), sep="/")
  ours = {path: tuple(v.shape) for path, v in flat_abstract.items()}
  _check_names_and_shapes(source, config, ours)
  targets = {}
  if mesh is not None:
    targets = traverse_util.flatten_dict(
        nnx.to_pure_dict(sharding.state_shardings(abstract, mesh)), sep="/")

  param_dtype = jnp.dtype(config.param_dtype)
  values = {}
  for path, shape in ours.items():
    layout = _PARAM_MAP[path][1]
    per_layer = shape[1:] if path.startswith("layers/") else shape
    arrays = [_to_ours(layout, source.read(name), per_layer).astype(param_dtype)
              for name in _hf_names(path, config)]
    host = np.stack(arrays) if path.startswith("layers/") else arrays[0]
    values[path] = _place(host, targets.get(path))
  if config.tie_word_embeddings and "lm_head.weight" in source.shapes:
    embed = source.read("model.embed_tokens.weight")
    head = source.read("lm_head.weight")
    if head.shape != embed.shape or not np.array_equal(head, embed):
      raise ValueError(
          f"{source.origin}: tie_word_embeddings is true but lm_head.weight differs "
          "from model.embed_tokens.weight.")

  nnx.replace_by_pure_dict(abstract, traverse_util.unflatten_dict(values, sep="/"))
  rest = _non_param_state(config)
  if mesh is not None:
    rest = jax.device_put(rest, sharding.state_shardings(rest, mesh))
  nnx.update(model, abstract, rest)
  return model


def _safetensors_files(path: str) -> tuple[str, list[str]]:
  """(origin, files) of a checkpoint directory: the index's shards, or every file."""
  index_file = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_file):
    weight_map = _read_json(index_file)["weight_map"]
    files = [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
    for f in files:
      if not os.path.isfile(f):
        raise FileNotFoundError(f"{index_file} lists {f!r}, which does not exist.")
    return index_file, files
  files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(
        f"No {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file in {path!r}.")
  return path, files


def safetensors_source(path: str) -> TensorSource:
  """A TensorSource over the safetensors files of an HF checkpoint directory.

  Every file's header is read here, so a truncated or corrupt file is an
  error (naming it) before any tensor is loaded.
  """
  origin, files = _safetensors_files(path)
  shapes, owner = {}, {}
  for f in files:
    try:
      with safetensors.safe_open(f, framework="np") as handle:
        for name in handle.keys():
          if name in owner:
            raise ValueError(f"{name} is stored twice: in {owner[name]!r} and {f!r}.")
          owner[name] = f
          shapes[name] = tuple(handle.get_slice(name).get_shape())
    except safetensors.SafetensorError as e:
      raise ValueError(f"{f}: not a readable safetensors file (truncated or corrupt?): "
                       f"{e}") from e

  def read(name: str) -> np.ndarray:
    try:
      with safetensors.safe_open(owner[name], framework="np") as handle:
        return handle.get_tensor(name)
    except safetensors.SafetensorError as e:
      raise ValueError(f"{owner[name]}: cannot read tensor {name!r}: {e}") from e

  return TensorSource(origin, shapes, read)


def load_hf_checkpoint(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
                       remat: str = "none", mesh: jax.sharding.Mesh | None = None
                       ) -> tuple[decoder.Decoder, ModelConfig]:
  """Loads an HF checkpoint directory into a Decoder (no network).

  Args:
    path: directory with config.json and safetensors weights.
    dtype: compute dtype.
    param_dtype: storage dtype the weights are cast to.
    remat: rematerialization per block.
    mesh: optional mesh to place the parameters on.

  Returns:
    (model, config).
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"HF checkpoint directory {path!r} does not exist.")
  config = config_from_hf(path, dtype=dtype, param_dtype=param_dtype, remat=remat)
  return load_from_source(safetensors_source(path), config, mesh), config


def _to_host(x: Any) -> np.ndarray:
  """A full host copy of a (possibly multi-host sharded) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """Our parameter tree flattened to {'embed/embedding': array, ...}.

  Accepts each layout a parameter tree comes in: the pure dict of
  docs/CONVENTIONS.md (`nnx.to_pure_dict`), an nnx.State of Params, and the
  tree the trainer (and RELEX) save, where orbax stores every nnx Variable as
  {'value': array} (`embed/embedding/value`); that Variable level is
  dropped here, the one place it is handled.

  Args:
    params: the parameter tree.

  Returns:
    {slash path of docs/CONVENTIONS.md: array}.

  Raises:
    ValueError: a parameter appears both with and without the Variable level.
  """
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  flat = {}
  for path, value in traverse_util.flatten_dict(dict(params), sep="/").items():
    if path.endswith(_VARIABLE_VALUE) and path[:-len(_VARIABLE_VALUE)] in _PARAM_MAP:
      path = path[:-len(_VARIABLE_VALUE)]
    if path in flat:
      raise ValueError(f"params hold {path!r} twice (with and without its 'value' level).")
    flat[path] = value
  return flat


def _torch_dtype_name(dtype: np.dtype) -> str:
  if dtype == ml_dtypes.bfloat16:
    return "bfloat16"
  return np.dtype(dtype).name


def export_hf_safetensors(params: Mapping[str, Any], config: ModelConfig, out_dir: str,
                          tokenizer: Any = None, *,
                          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes our parameters as an HF checkpoint directory transformers loads.

  Writes config.json (architecture from `architecture(config)`),
  generation_config.json, the weights in their own dtype as model.safetensors
  or, when larger than `max_shard_bytes`, as model-0000k-of-0000n.safetensors
  shards with model.safetensors.index.json, and the tokenizer files when a
  tokenizer is given. Multi-host: every process must call it (sharded arrays
  are gathered); only process 0 writes.

  Args:
    params: the parameters as a pure dict (`nnx.to_pure_dict(nnx.state(model,
      nnx.Param))`, docs/CONVENTIONS.md), as that nnx.State, or as a trainer
      or RELEX checkpoint stores them (each weight as {'value': array};
      `flat_params`).
    config: the model's config.
    out_dir: output directory (created).
    tokenizer: optional transformers tokenizer to save beside the weights.
    max_shard_bytes: largest safetensors file before sharding.

  Returns:
    The weight files written (absolute paths).
  """
  flat = flat_params(params)
  tensors = {}
  for path, value in flat.items():
    names = _hf_names(path, config)
    layout = _PARAM_MAP[path][1]
    x = _to_host(value)
    if path.startswith("layers/"):
      if x.shape[0] != config.num_layers:
        raise ValueError(
            f"params[{path!r}] has {x.shape[0]} layers; config.num_layers={config.num_layers}.")
      for name, layer in zip(names, x):
        tensors[name] = _to_hf(layout, layer)
    else:
      tensors[names[0]] = _to_hf(layout, x)
  dtypes = {t.dtype for t in tensors.values()}
  if len(dtypes) != 1:
    raise ValueError(f"params mix dtypes {sorted(map(str, dtypes))}; cast them to one first.")
  if jax.process_index() != 0:
    return []

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_config_dict(config, torch_dtype=_torch_dtype_name(dtypes.pop())), f, indent=2)
  eos = list(config.eos_token_ids)
  generation = {"bos_token_id": config.bos_token_id,
                "eos_token_id": eos[0] if len(eos) == 1 else eos,
                "pad_token_id": config.pad_token_id}
  with open(os.path.join(out_dir, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump(generation, f, indent=2)

  shards, current, size = [], {}, 0
  for name, tensor in tensors.items():
    if current and size + tensor.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = tensor
    size += tensor.nbytes
  shards.append(current)
  metadata = {"format": "pt"}
  if len(shards) == 1:
    files = [os.path.join(out_dir, SINGLE_FILE)]
  else:
    files = [os.path.join(out_dir, f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
             for k in range(len(shards))]
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {name: os.path.basename(f)
                            for f, shard in zip(files, shards) for name in shard}}
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
      json.dump(index, f, indent=2)
  for f, shard in zip(files, shards):
    safetensors.numpy.save_file(shard, f, metadata=metadata)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)
  return files
