"""Logit parity with transformers' PyTorch models on the same weights.

1. Tiny random Llama (default, llama3 and linear RoPE scaling), Qwen2 (qkv
   bias) and Qwen3 (q/k norm, head_dim != D / N) checkpoints written by
   `save_pretrained` and read by our HF loader: f32 logits on a left-padded
   batch agree within 1e-4.
2. SmolLM2-135M-Instruct from its Q4_1 GGUF, loaded by us and by
   transformers (`gguf_file=`), on chat prompts rendered with the GGUF's chat
   template: logits within 1e-3 and identical argmax everywhere.
"""

import os

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlvr_jax.models import decoder
from rlvr_jax.models import gguf_import
from rlvr_jax.models import loader
from rlvr_jax.models import weights

# Every tiny model: GQA (4 query heads, 2 KV heads), 2 layers.
_COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               rms_norm_eps=1e-5)
# rope_theta=100 and head_dim=16 give wavelengths 2 pi 100^(2i/16) =
# 6.3, 11.2, 19.9, 35, ...; with original length 16, low_freq_factor 1 and
# high_freq_factor 2, llama3 scaling leaves 6.3 (< 16/2) alone, smooths 11.2
# and divides the rest by the factor: all three branches are exercised.
_LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
           "high_freq_factor": 2.0, "original_max_position_embeddings": 16}
TINY_CONFIGS = {
    "llama": (transformers.LlamaConfig, dict(rope_theta=100.0, tie_word_embeddings=False)),
    "llama_llama3_rope": (transformers.LlamaConfig, dict(
        rope_theta=100.0, rope_scaling=_LLAMA3, tie_word_embeddings=True)),
    "llama_linear_rope": (transformers.LlamaConfig, dict(
        rope_theta=100.0, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1000.0, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(
        rope_theta=1000.0, head_dim=32, tie_word_embeddings=False)),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """Every tensor random: norm scales 1 + 0.1 N(0, 1), weights and biases 0.1 N(0, 1).

  Norm scales of exactly one or biases of exactly zero would hide a mapping
  error of those tensors.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)


def tiny_torch_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
  config_class, extra = TINY_CONFIGS[name]
  config = config_class(**_COMMON, **extra)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  randomize_(model, seed)
  return model.eval()


def padded_batch(vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """tokens [3, 11] and mask [3, 11]: rows with 0, 3 and 6 left pads."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab_size, (3, 11))
  mask = np.arange(11)[None, :] >= np.array([0, 3, 6])[:, None]
  return tokens, mask


def torch_logits(model: transformers.PreTrainedModel, tokens: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
  """Reference logits [B, T, V], positions counted from the first real token."""
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


def our_logits(model: decoder.Decoder, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  positions = decoder.positions_from_mask(jnp.asarray(mask))
  hidden = model(jnp.asarray(tokens, jnp.int32), positions, jnp.asarray(mask))
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_hf_checkpoint_logit_parity(name, tmp_path):
  torch_model = tiny_torch_model(name)
  torch_model.save_pretrained(tmp_path)
  model, config = weights.load_hf_checkpoint(str(tmp_path))
  assert config.qkv_bias == (name == "qwen2")
  assert config.qk_norm == (name == "qwen3")
  assert config.tie_word_embeddings == torch_model.config.tie_word_embeddings
  rope_type = torch_model.config.rope_parameters["rope_type"]
  assert (config.rope_scaling.rope_type if config.rope_scaling else "default") == rope_type
  tokens, mask = padded_batch(config.vocab_size)
  ref = torch_logits(torch_model, tokens, mask)
  ours = our_logits(model, tokens, mask)
  diff = np.abs(ours - ref)[mask].max()
  print(f"{name}: max abs logit diff {diff:.2e} (max |logit| {np.abs(ref).max():.2f})")
  assert diff < 1e-4


@pytest.fixture(scope="module")
def smollm2():
  """(transformers model, our model, tokenizer) of the default GGUF, loaded once."""
  path = loader.default_gguf_path()
  with pytest.MonkeyPatch.context() as patch:
    # Speed only: gguf's reader over an ndarray view of the same memmap
    # (gguf_import.GGUFReader); transformers' parsing and dequantization are
    # unchanged.
    patch.setattr(gguf, "GGUFReader", gguf_import.GGUFReader)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32)
    model, tokenizer, _ = loader.load_model("smollm2")
  return ref.eval(), model, tokenizer


def test_smollm2_gguf_logit_parity_on_chat_prompts(smollm2):
  ref_model, model, tokenizer = smollm2
  chats = [
      [{"role": "user", "content": "What is 17 * 23? Answer with a number."}],
      [{"role": "system", "content": "You are a careful math tutor."},
       {"role": "user", "content": "Solve $x^2 - 5x + 6 = 0$ and explain briefly."}],
  ]
  prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in chats]
  batch = tokenizer(prompts, padding=True, return_tensors="np")
  tokens, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
  assert not mask[:, 0].all()  # One row is left-padded.
  ref = torch_logits(ref_model, tokens, mask)
  ours = our_logits(model, tokens, mask)
  diff = np.abs(ours - ref)[mask].max()
  agree = (ours.argmax(-1) == ref.argmax(-1))[mask].mean()
  print(f"smollm2 gguf: max abs logit diff {diff:.2e} (max |logit| "
        f"{np.abs(ref).max():.1f}), argmax agreement {agree:.4f} on {mask.sum()} tokens")
  assert diff < 1e-3
  assert agree == 1.0
