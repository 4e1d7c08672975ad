"""GGUF header reader (rlvr_jax.models.gguf_import.read_metadata).

Reference: the gguf package's own reader (gguf.GGUFReader), which parses the
whole file independently, on files written with gguf's writer (every value
type, nested arrays, both byte orders) and on the default SmolLM2 file; plus
values written by hand.
"""

import gguf
import numpy as np
import pytest

from rlvr_jax.models import gguf_import
from rlvr_jax.models import loader

# key -> (writer method, value); each scalar type of GGUF once.
_SCALARS = {
    "t.u8": ("add_uint8", 200), "t.i8": ("add_int8", -100),
    "t.u16": ("add_uint16", 60000), "t.i16": ("add_int16", -30000),
    "t.u32": ("add_uint32", 4_000_000_000), "t.i32": ("add_int32", -2_000_000_000),
    "t.u64": ("add_uint64", 2**63 + 5), "t.i64": ("add_int64", -(2**62)),
    "t.f32": ("add_float32", 0.25), "t.f64": ("add_float64", 1e-300),
    "t.bool": ("add_bool", True), "t.str": ("add_string", "héllo </s>"),
}
_TENSORS = {"token_embd.weight": (5, 3), "blk.0.attn_q.weight": (3, 3), "output_norm.weight": (3,)}


def _write(path, endianess=gguf.GGUFEndian.LITTLE):
  """A GGUF file with every scalar type, skipped arrays between them, and 3 tensors."""
  writer = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
  for i, (key, (method, value)) in enumerate(_SCALARS.items()):
    getattr(writer, method)(key, value)
    if i % 4 == 0:  # arrays the reader must step over: strings, ints, nested
      writer.add_array(f"arr.str{i}", ["a", "", "ünï", "</s>" * 50])
      writer.add_array(f"arr.int{i}", [1, 2, 3])
      writer.add_array(f"arr.nested{i}", [["x", "yz"], ["w"]])
  for name, shape in _TENSORS.items():  # numpy order (reversed ne)
    writer.add_tensor(name, np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_scalars_and_tensor_index_match_the_written_values_and_gguf(tmp_path, endianess):
  path = tmp_path / "m.gguf"
  _write(path, endianess)
  got = gguf_import.read_metadata(str(path))
  for key, (_, value) in _SCALARS.items():
    assert got.fields[key] == value, key  # 0.25 and 1e-300 are exact in f32 / f64
  assert got.fields["general.architecture"] == "llama"
  assert not any(k.startswith("arr.") for k in got.fields)  # arrays skipped
  # ne lists dims fastest first: a (5, 3) numpy tensor is ne (3, 5).
  assert got.tensor_shapes == {name: tuple(reversed(s)) for name, s in _TENSORS.items()}
  reference = gguf.GGUFReader(str(path))
  scalars = {k: f.contents() for k, f in reference.fields.items()
             if f.types and f.types[0] != gguf.GGUFValueType.ARRAY and not k.startswith("GGUF.")}
  assert got.fields == scalars
  assert got.tensor_shapes == {t.name: tuple(int(d) for d in t.shape) for t in reference.tensors}


def test_default_model_header_matches_gguf():
  path = loader.default_gguf_path()
  got = gguf_import.read_metadata(path)
  reference = gguf_import.open_gguf(path)
  scalars = {k: f.contents() for k, f in reference.fields.items()
             if f.types and f.types[0] != gguf.GGUFValueType.ARRAY and not k.startswith("GGUF.")}
  assert got.fields == scalars
  assert got.tensor_shapes == {t.name: tuple(int(d) for d in t.shape) for t in reference.tensors}
  # SmolLM2-135M: 30 layers of width 576, 9 heads of 64, 3 KV heads, 49152 tokens.
  config = gguf_import.config_from_gguf(got, path)
  assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads,
          config.head_dim, config.vocab_size) == (30, 576, 9, 3, 64, 49152)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_header_is_named(tmp_path, keep):
  path = tmp_path / "m.gguf"
  _write(path)
  header_end = gguf.GGUFReader(str(path)).data_offset
  path.write_bytes(path.read_bytes()[:int(header_end * keep)])
  with pytest.raises(ValueError, match=r"m\.gguf: not a readable GGUF file"):
    gguf_import.read_metadata(str(path))


def test_missing_file_and_bad_version_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere\.gguf"):
    gguf_import.read_metadata(str(tmp_path / "nowhere.gguf"))
  path = tmp_path / "v9.gguf"
  path.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(16))
  with pytest.raises(ValueError, match=r"v9\.gguf: not a readable GGUF file.*version 9"):
    gguf_import.read_metadata(str(path))
