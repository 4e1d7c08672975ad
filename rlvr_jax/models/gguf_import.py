"""GGUF (llama.cpp) files -> our decoder: metadata -> ModelConfig, dequantized weights.

The config comes from `read_metadata`, which parses only the file's header
(its scalar metadata and tensor index, skipping arrays such as the
vocabulary without building them): a few milliseconds, where gguf's reader
spends seconds on SmolLM2's ~100k vocabulary and merge strings. The weights
come through gguf's reader (`open_gguf`), opened only when they are read.

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

import contextlib
import dataclasses
import mmap
import os
import struct
from typing import Any, Iterator

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

_NOT_GGUF = "not a readable GGUF file (wrong format, truncated or corrupt)"
_VERSIONS = (2, 3)  # what gguf's reader reads
# GGUF metadata value types (gguf.GGUFValueType) -> struct formats of scalars.
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                   10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


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


@contextlib.contextmanager
def _named_errors(path: str) -> Iterator[None]:
  """Raises FileNotFoundError for a missing `path`; names it in any parse error."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
  try:
    yield
  except (ValueError, IndexError, KeyError, OverflowError, struct.error) as e:
    # gguf and struct report a bad magic, an empty file or a cut-off header
    # this way, without the file's name.
    raise ValueError(f"{path}: {_NOT_GGUF}: {e}") from e


def open_gguf(path: str) -> GGUFReader:
  """Opens a GGUF file with gguf's reader (for its tensors); errors as `read_metadata`."""
  with _named_errors(path):
    return GGUFReader(path)


@dataclasses.dataclass(frozen=True)
class GGUFMetadata:
  """The header of a GGUF file: its metadata and tensor index (no tensor data).

  Attributes:
    fields: metadata key -> value (int, float, bool or str) of every scalar or
      string key; array values (the vocabulary, merges, token types) are
      skipped and absent.
    tensor_shapes: tensor name -> its dims as the file lists them (ggml's ne,
      fastest-varying first: the embedding is (D, V)).
  """

  fields: dict[str, Any]
  tensor_shapes: dict[str, tuple[int, ...]]


class _Header:
  """A cursor over a GGUF file's bytes, in its byte order (GGUF v2/v3 layout)."""

  def __init__(self, buffer: Any):
    self.buffer = buffer
    if bytes(buffer[:4]) != b"GGUF":
      raise ValueError(f"the magic is {bytes(buffer[:4])!r}, not b'GGUF'")
    # A file of the other byte order shows its small version in the high bytes.
    self.order = "<"
    self.pos = 4
    if self.scalar("I") & 0xFFFF == 0:
      self.order = ">"
    self.pos = 4
    version = self.scalar("I")
    if version not in _VERSIONS:
      raise ValueError(f"GGUF version {version}; readable: {list(_VERSIONS)}")

  def scalar(self, fmt: str) -> Any:
    (value,) = struct.unpack_from(self.order + fmt, self.buffer, self.pos)
    self.pos += struct.calcsize(fmt)
    return value

  def string(self) -> str:
    size = self.scalar("Q")
    if self.pos + size > len(self.buffer):
      raise ValueError(f"a string of {size} bytes at byte {self.pos} runs past the end")
    text = bytes(self.buffer[self.pos:self.pos + size]).decode("utf-8")
    self.pos += size
    return text

  def skip_array(self) -> None:
    kind, count = self.scalar("I"), self.scalar("Q")
    if kind in _SCALAR_FORMATS:
      self.pos += count * struct.calcsize(_SCALAR_FORMATS[kind])
    elif kind == _STRING:
      for _ in range(count):
        size = self.scalar("Q")  # read before `pos +=` loads pos
        self.pos += size
    elif kind == _ARRAY:
      for _ in range(count):
        self.skip_array()
    else:
      raise ValueError(f"unknown array item type {kind}")

  def value(self, kind: int) -> Any:
    """The value of one metadata key; None for an array (skipped)."""
    if kind in _SCALAR_FORMATS:
      return self.scalar(_SCALAR_FORMATS[kind])
    if kind == _STRING:
      return self.string()
    if kind == _ARRAY:
      self.skip_array()
      return None
    raise ValueError(f"unknown metadata value type {kind}")


def read_metadata(path: str) -> GGUFMetadata:
  """Reads a GGUF file's header: scalar metadata and tensor index, no arrays or data.

  Args:
    path: the .gguf file.

  Returns:
    Its metadata.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: the file is not a GGUF file, or a truncated or corrupt one;
      the message names it.
  """
  with (_named_errors(path), open(path, "rb") as f,
        mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer):
    header = _Header(buffer)
    num_tensors, num_fields = header.scalar("Q"), header.scalar("Q")
    fields = {}
    for _ in range(num_fields):
      key = header.string()
      value = header.value(header.scalar("I"))
      if value is not None:
        fields[key] = value
    shapes = {}
    for _ in range(num_tensors):
      name = header.string()
      dims = [header.scalar("Q") for _ in range(header.scalar("I"))]
      header.pos += 4 + 8  # ggml type (uint32), data offset (uint64)
      shapes[name] = tuple(dims)
    if header.pos > len(buffer):
      raise ValueError("the tensor index runs past the end")
  return GGUFMetadata(fields=fields, tensor_shapes=shapes)


def _field(metadata: GGUFMetadata, key: str, default: Any = None) -> Any:
  return metadata.fields.get(key, default)


def _required(metadata: GGUFMetadata, key: str, path: str) -> Any:
  value = _field(metadata, key)
  if value is None:
    raise ValueError(f"{path}: GGUF metadata key {key!r} is missing.")
  return value


def gguf_architecture(metadata: GGUFMetadata, path: str) -> str:
  """`general.architecture`, checked against the supported ones."""
  arch = _required(metadata, "general.architecture", path)
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"{path}: unknown GGUF architecture {arch!r}; supported: {list(ARCHITECTURES)}.")
  return arch


def config_from_gguf(metadata: GGUFMetadata, path: str, *, dtype: str = "float32",
                     param_dtype: str = "float32", remat: str = "none") -> ModelConfig:
  """ModelConfig from the `{arch}.*` and `tokenizer.ggml.*` metadata of a GGUF file.

  Args:
    metadata: the file's header (`read_metadata`).
    path: its path, for error messages.
    dtype: compute dtype.
    param_dtype: storage dtype of the parameters.
    remat: rematerialization per block.

  Returns:
    The ModelConfig; the head is tied when the file has no `output.weight`.
    EOS ids are `tokenizer.ggml.eos_token_id` then `eot_token_id` when
    present; the pad id is `padding_token_id`, else the first EOS id.
  """
  arch = gguf_architecture(metadata, path)
  names = metadata.tensor_shapes
  if "rope_freqs.weight" in names:
    raise ValueError(
        f"{path}: per-frequency RoPE factors (rope_freqs.weight, llama3 scaling) are "
        "not supported in GGUF; load the HF checkpoint instead.")
  num_heads = int(_required(metadata, f"{arch}.attention.head_count", path))
  hidden = int(_required(metadata, f"{arch}.embedding_length", path))
  head_dim = int(_field(metadata, f"{arch}.attention.key_length", hidden // num_heads))
  rope_dim = int(_field(metadata, f"{arch}.rope.dimension_count", head_dim))
  if rope_dim != head_dim:
    raise ValueError(
        f"{path}: {arch}.rope.dimension_count={rope_dim} != head_dim={head_dim} "
        "(partial RoPE is not supported).")
  scaling_type = _field(metadata, f"{arch}.rope.scaling.type", "none")
  if scaling_type == "linear":
    rope_scaling = RopeScaling(
        "linear", factor=float(_required(metadata, f"{arch}.rope.scaling.factor", path)))
  elif scaling_type == "none":
    rope_scaling = None
  else:
    raise ValueError(
        f"{path}: {arch}.rope.scaling.type={scaling_type!r} is not supported; "
        "'none' or 'linear'.")
  vocab = _field(metadata, f"{arch}.vocab_size")
  if vocab is None:  # The embedding's ne is (D, V).
    if "token_embd.weight" not in names:
      raise ValueError(f"{path}: neither {arch}.vocab_size nor a token_embd.weight tensor.")
    vocab = names["token_embd.weight"][-1]
  eos = (_field(metadata, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot"))
  eos = tuple(dict.fromkeys(int(i) for i in eos if i is not None))
  pad = _field(metadata, "tokenizer.ggml.padding_token_id", eos[0] if eos else 0)
  bos = _field(metadata, "tokenizer.ggml.bos_token_id")
  return ModelConfig(
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(_required(metadata, f"{arch}.feed_forward_length", path)),
      num_layers=int(_required(metadata, f"{arch}.block_count", path)),
      num_heads=num_heads,
      num_kv_heads=int(_field(metadata, f"{arch}.attention.head_count_kv", num_heads)),
      head_dim=head_dim,
      rope_theta=float(_field(metadata, f"{arch}.rope.freq_base", 10000.0)),
      rope_scaling=rope_scaling,
      rms_norm_eps=float(_required(metadata, f"{arch}.attention.layer_norm_rms_epsilon", path)),
      tie_word_embeddings="output.weight" not in names,
      qkv_bias=arch == "qwen2",
      qk_norm=arch == "qwen3",
      max_position_embeddings=int(_required(metadata, f"{arch}.context_length", path)),
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


def gguf_source(path: str, metadata: GGUFMetadata, config: ModelConfig
                ) -> weights.TensorSource:
  """HF-named, dequantized float32 tensors of a GGUF file (opened here: `open_gguf`).

  Args:
    path: the .gguf file.
    metadata: its header (`read_metadata`).
    config: its config (`config_from_gguf`).

  Returns:
    The tensor source `weights.load_from_source` reads.
  """
  arch = gguf_architecture(metadata, path)
  by_name = {}
  for tensor in open_gguf(path).tensors:
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
  metadata = read_metadata(path)
  config = config_from_gguf(metadata, path, dtype=dtype, param_dtype=param_dtype, remat=remat)
  model = weights.load_from_source(gguf_source(path, metadata, config), config, mesh)
  return model, config
