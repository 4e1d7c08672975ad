"""GGUF (llama.cpp) files -> our decoder: metadata -> ModelConfig, dequantized weights.

Supports the GGUF architectures `llama`, `qwen2` (q/k/v biases) and `qwen3`
(q/k norm). Tensors are dequantized to float32 with `gguf.quants.dequantize`
(any quantization type the gguf package knows), renamed to their HF names and
loaded through the same name/shape checks and placement as an HF checkpoint
(weights.load_from_source).

Q/K permutation (llama only). llama.cpp computes RoPE on interleaved pairs
(features 2j, 2j+1 of a head rotate together), while HF and our decoder use
the "rotate half" layout (features j and j + Dh/2 rotate together). Its
converter (convert_hf_to_gguf.py, LlamaModel.permute) therefore stores the
rows of q_proj / k_proj permuted within each head h of H heads (H = N for q,
K for k), for i in {0, 1} (which half) and j in [0, Dh/2):

  gguf_row(h * Dh + 2 * j + i) = hf_row(h * Dh + i * Dh/2 + j)

i.e. `W_gguf = W_hf.reshape(H, 2, Dh/2, D).swapaxes(1, 2).reshape(H*Dh, D)`.
We undo it with `W_hf = W_gguf.reshape(H, Dh/2, 2, D).swapaxes(1, 2)
.reshape(H*Dh, D)`. The Qwen2/Qwen3 converters use llama.cpp's NEOX (rotate
half) RoPE and store q/k unpermuted.
"""

from __future__ import annotations

import os
from typing import Any

import gguf
import jax
import numpy as np

from rlvr_jax.models import decoder
from rlvr_jax.models import weights
from rlvr_jax.models.config import ModelConfig, RopeScaling

ARCHITECTURES = ("llama", "qwen2", "qwen3")

# GGUF tensor name (after `blk.{i}.`, or the whole name) -> HF name.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


class GGUFReader(gguf.GGUFReader):
  """gguf.GGUFReader over a plain ndarray view of the file's memmap.

  The reader slices its buffer once per metadata element (about 100k slices
  for SmolLM2's vocabulary and merges); each slice of an np.memmap runs
  memmap's Python bookkeeping, which makes opening about 3x slower.
  """

  @property
  def data(self) -> np.ndarray:
    return self._plain_data

  @data.setter
  def data(self, value: np.ndarray) -> None:
    self._plain_data = np.asarray(value)


def open_gguf(path: str) -> GGUFReader:
  """Opens a GGUF file (header, metadata and tensor index; no tensor data).

  Args:
    path: the .gguf file.

  Returns:
    The reader.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a GGUF file, or a truncated or corrupt one;
      the message names it.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
  try:
    return GGUFReader(path)
  except (ValueError, IndexError, KeyError, OverflowError) as e:
    # gguf reports a bad magic, an empty file or a cut-off header this way,
    # without the file's name.
    raise ValueError(f"{path}: not a readable GGUF file (wrong format, truncated or "
                     f"corrupt): {e}") from e


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def _required(reader: gguf.GGUFReader, key: str, path: str) -> Any:
  value = _field(reader, key)
  if value is None:
    raise ValueError(f"{path}: GGUF metadata key {key!r} is missing.")
  return value


def gguf_architecture(reader: gguf.GGUFReader, path: str) -> str:
  """`general.architecture`, checked against the supported ones."""
  arch = _required(reader, "general.architecture", path)
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"{path}: unknown GGUF architecture {arch!r}; supported: {list(ARCHITECTURES)}.")
  return arch


def config_from_gguf(reader: gguf.GGUFReader, path: str, *, dtype: str = "float32",
                     param_dtype: str = "float32", remat: str = "none") -> ModelConfig:
  """ModelConfig from the `{arch}.*` and `tokenizer.ggml.*` metadata of a GGUF file.

  Args:
    reader: the open file.
    path: its path, for error messages.
    dtype: compute dtype.
    param_dtype: storage dtype of the parameters.
    remat: rematerialization per block.

  Returns:
    The ModelConfig; the head is tied when the file has no `output.weight`.
    EOS ids are `tokenizer.ggml.eos_token_id` then `eot_token_id` when
    present; the pad id is `padding_token_id`, else the first EOS id.
  """
  arch = gguf_architecture(reader, path)
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise ValueError(
        f"{path}: per-frequency RoPE factors (rope_freqs.weight, llama3 scaling) are "
        "not supported in GGUF; load the HF checkpoint instead.")
  num_heads = int(_required(reader, f"{arch}.attention.head_count", path))
  hidden = int(_required(reader, f"{arch}.embedding_length", path))
  head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // num_heads))
  rope_dim = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise ValueError(
        f"{path}: {arch}.rope.dimension_count={rope_dim} != head_dim={head_dim} "
        "(partial RoPE is not supported).")
  scaling_type = _field(reader, f"{arch}.rope.scaling.type", "none")
  if scaling_type == "linear":
    rope_scaling = RopeScaling(
        "linear", factor=float(_required(reader, f"{arch}.rope.scaling.factor", path)))
  elif scaling_type == "none":
    rope_scaling = None
  else:
    raise ValueError(
        f"{path}: {arch}.rope.scaling.type={scaling_type!r} is not supported; "
        "'none' or 'linear'.")
  vocab = _field(reader, f"{arch}.vocab_size")
  if vocab is None:  # The embedding's ne is (D, V).
    vocab = next(t.shape[-1] for t in reader.tensors if t.name == "token_embd.weight")
  eos = tuple(int(_field(reader, f"tokenizer.ggml.{k}_token_id"))
              for k in ("eos", "eot") if _field(reader, f"tokenizer.ggml.{k}_token_id") is not None)
  eos = tuple(dict.fromkeys(eos))
  pad = _field(reader, "tokenizer.ggml.padding_token_id", eos[0] if eos else 0)
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  return ModelConfig(
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(_required(reader, f"{arch}.feed_forward_length", path)),
      num_layers=int(_required(reader, f"{arch}.block_count", path)),
      num_heads=num_heads,
      num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", num_heads)),
      head_dim=head_dim,
      rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
      rope_scaling=rope_scaling,
      rms_norm_eps=float(_required(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
      tie_word_embeddings="output.weight" not in names,
      qkv_bias=arch == "qwen2",
      qk_norm=arch == "qwen3",
      max_position_embeddings=int(_required(reader, f"{arch}.context_length", path)),
      param_dtype=param_dtype,
      dtype=dtype,
      remat=remat,
      bos_token_id=None if bos is None else int(bos),
      eos_token_ids=eos,
      pad_token_id=int(pad),
  )


def _hf_name(name: str, path: str) -> str:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".", 2)
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
    return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
  raise ValueError(f"{path}: unexpected GGUF tensor {name!r} (no HF counterpart).")


def _unpermute_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row permutation (module docstring): [H*Dh, D] -> [H*Dh, D]."""
  rows = w.shape[0]
  half = rows // num_heads // 2
  return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_source(reader: gguf.GGUFReader, path: str, config: ModelConfig) -> weights.TensorSource:
  """HF-named, dequantized float32 tensors of a GGUF file."""
  arch = gguf_architecture(reader, path)
  by_name = {}
  for tensor in reader.tensors:
    by_name[_hf_name(tensor.name, path)] = tensor
  # GGUF lists dims fastest-first (ggml's ne); HF/numpy order is the reverse.
  shapes = {name: tuple(int(d) for d in reversed(t.shape)) for name, t in by_name.items()}
  permuted = {}
  if arch == "llama":
    for i in range(config.num_layers):
      permuted[f"model.layers.{i}.self_attn.q_proj.weight"] = config.num_heads
      permuted[f"model.layers.{i}.self_attn.k_proj.weight"] = config.num_kv_heads

  def read(name: str) -> np.ndarray:
    tensor = by_name[name]
    w = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
    w = w.reshape(shapes[name])
    if name in permuted:
      w = _unpermute_rows(w, permuted[name])
    return w

  return weights.TensorSource(path, shapes, read)


def load_gguf(path: str, *, dtype: str = "float32", param_dtype: str = "float32",
              remat: str = "none", mesh: jax.sharding.Mesh | None = None
              ) -> tuple[decoder.Decoder, ModelConfig]:
  """Loads a GGUF file into a Decoder.

  Args:
    path: the .gguf file.
    dtype: compute dtype.
    param_dtype: storage dtype the dequantized weights are cast to.
    remat: rematerialization per block.
    mesh: optional mesh to place the parameters on.

  Returns:
    (model, config).
  """
  reader = open_gguf(path)
  config = config_from_gguf(reader, path, dtype=dtype, param_dtype=param_dtype, remat=remat)
  model = weights.load_from_source(gguf_source(reader, path, config), config, mesh)
  return model, config
