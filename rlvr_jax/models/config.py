"""Decoder configuration for the Llama / Qwen2 / Qwen3 family, with presets.

One frozen dataclass describes every supported checkpoint; the architecture
differences are three switches (`qkv_bias` for Qwen2, `qk_norm` for Qwen3,
`tie_word_embeddings`) and the RoPE variant. Presets reproduce the HF
`config.json` of the named checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")  # Compute and parameter dtypes.
REMATS = ("none", "full", "dots")  # Rematerialization modes (`ModelConfig.remat`).


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (HF `rope_scaling`).

  Attributes:
    rope_type: 'default' (none), 'linear' (positions divided by `factor`) or
      'llama3' (Llama 3.1 wavelength-dependent interpolation).
    factor: the scaling factor s.
    low_freq_factor: Llama 3 low-frequency factor.
    high_freq_factor: Llama 3 high-frequency factor.
    original_max_position_embeddings: context length before scaling.
  """

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in _ROPE_TYPES:
      raise ValueError(
          f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
          f"choose one of {_ROPE_TYPES}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer.

  Attributes:
    vocab_size: V, rows of the embedding table.
    hidden_size: D, residual stream width.
    intermediate_size: F, width of the SwiGLU MLP.
    num_layers: L, decoder blocks.
    num_heads: N, query heads.
    num_kv_heads: K, key/value heads (grouped-query attention; N % K == 0).
    head_dim: Dh, width of one head (not always D / N, e.g. Qwen3).
    rope_theta: RoPE base frequency.
    rope_scaling: optional RoPE scaling variant.
    rms_norm_eps: epsilon inside every RMSNorm.
    tie_word_embeddings: LM head shares the embedding matrix.
    qkv_bias: biases on the q/k/v projections (Qwen2).
    qk_norm: RMSNorm over Dh on queries and keys before RoPE (Qwen3).
    max_position_embeddings: longest sequence the checkpoint was trained on.
    param_dtype: storage dtype of the parameters.
    dtype: compute dtype of activations (norms, softmax and logits are f32).
    remat: rematerialization of each block in the backward pass: 'none',
      'full' (recompute the block) or 'dots' (keep matmul outputs, recompute
      the elementwise work).
    bos_token_id: beginning-of-sequence id, if the tokenizer has one.
    eos_token_ids: ids that end a generation.
    pad_token_id: id used for padding (never attended to).
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 4096
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}.")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {DTYPES}.")
    if self.remat not in REMATS:
      raise ValueError(f"remat={self.remat!r}; choose one of {REMATS}.")

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["eos_token_ids"] = list(self.eos_token_ids)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
      d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
    return cls(**d)


def smollm2_135m() -> ModelConfig:
  """HuggingFaceTB/SmolLM2-135M(-Instruct) config.json (LlamaForCausalLM)."""
  return ModelConfig(
      vocab_size=49152, hidden_size=576, intermediate_size=1536,
      num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
      max_position_embeddings=8192, bos_token_id=1, eos_token_ids=(2,),
      pad_token_id=2)


def qwen2_5_0_5b() -> ModelConfig:
  """Qwen/Qwen2.5-0.5B config.json (Qwen2ForCausalLM: qkv bias, tied head)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=896, intermediate_size=4864,
      num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qkv_bias=True, max_position_embeddings=32768,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen2_5_math_1_5b() -> ModelConfig:
  """Qwen/Qwen2.5-Math-1.5B config.json (RELEX's smallest model)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=1536, intermediate_size=8960,
      num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qkv_bias=True, max_position_embeddings=4096,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen3_0_6b() -> ModelConfig:
  """Qwen/Qwen3-0.6B-Base config.json (Qwen3ForCausalLM: q/k norm, tied)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=1024, intermediate_size=3072,
      num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qk_norm=True, max_position_embeddings=32768,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen3_4b() -> ModelConfig:
  """Qwen/Qwen3-4B-Base config.json (SCRL's and RELEX's Qwen3-4B-Base)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=2560, intermediate_size=9728,
      num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qk_norm=True, max_position_embeddings=32768,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen3_8b() -> ModelConfig:
  """Qwen/Qwen3-8B-Base config.json (DelTA's main model; untied head)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=4096, intermediate_size=12288,
      num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
      qk_norm=True, max_position_embeddings=32768,
      eos_token_ids=(151643,), pad_token_id=151643)


def llama3_2_1b() -> ModelConfig:
  """meta-llama/Llama-3.2-1B config.json (llama3 RoPE scaling, factor 32)."""
  return ModelConfig(
      vocab_size=128256, hidden_size=2048, intermediate_size=8192,
      num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
      rope_theta=500000.0,
      rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192),
      rms_norm_eps=1e-5, tie_word_embeddings=True,
      max_position_embeddings=131072, bos_token_id=128000,
      eos_token_ids=(128001, 128008, 128009), pad_token_id=128001)


def qwen3_1_7b() -> ModelConfig:
  """Qwen/Qwen3-1.7B-Base config.json (Qwen3ForCausalLM: q/k norm, tied)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=2048, intermediate_size=6144,
      num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qk_norm=True, max_position_embeddings=32768,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen2_5_1_5b() -> ModelConfig:
  """Qwen/Qwen2.5-1.5B config.json (Qwen2ForCausalLM: qkv bias, tied head)."""
  return ModelConfig(
      vocab_size=151936, hidden_size=1536, intermediate_size=8960,
      num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
      qkv_bias=True, max_position_embeddings=131072,
      eos_token_ids=(151643,), pad_token_id=151643)


def qwen2_5_7b() -> ModelConfig:
  """Qwen/Qwen2.5-7B config.json (Qwen2ForCausalLM: qkv bias, untied head)."""
  return ModelConfig(
      vocab_size=152064, hidden_size=3584, intermediate_size=18944,
      num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
      qkv_bias=True, max_position_embeddings=131072,
      eos_token_ids=(151643,), pad_token_id=151643)


def llama3_2_3b() -> ModelConfig:
  """meta-llama/Llama-3.2-3B config.json (llama3 RoPE scaling, factor 32)."""
  return ModelConfig(
      vocab_size=128256, hidden_size=3072, intermediate_size=8192,
      num_layers=28, num_heads=24, num_kv_heads=8, head_dim=128,
      rope_theta=500000.0,
      rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192),
      rms_norm_eps=1e-5, tie_word_embeddings=True,
      max_position_embeddings=131072, bos_token_id=128000,
      eos_token_ids=(128001, 128008, 128009), pad_token_id=128001)


def llama3_1_8b() -> ModelConfig:
  """meta-llama/Llama-3.1-8B config.json (llama3 RoPE scaling, factor 8, untied)."""
  return ModelConfig(
      vocab_size=128256, hidden_size=4096, intermediate_size=14336,
      num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
      rope_theta=500000.0,
      rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 8192),
      rms_norm_eps=1e-5, tie_word_embeddings=False,
      max_position_embeddings=131072, bos_token_id=128000,
      eos_token_ids=(128001, 128008, 128009), pad_token_id=128001)


def tiny(vocab_size: int = 49152) -> ModelConfig:
  """A 4-layer width-256 model for tests and CPU smoke runs (random init).

  Args:
    vocab_size: V; the default matches SmolLM2's tokenizer so the tiny model
      can be trained on real prompts.
  """
  return ModelConfig(
      vocab_size=vocab_size, hidden_size=256, intermediate_size=512,
      num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
      max_position_embeddings=2048, bos_token_id=1, eos_token_ids=(2,),
      pad_token_id=2)


PRESETS = {
    "smollm2_135m": smollm2_135m,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "qwen2_5_math_1_5b": qwen2_5_math_1_5b,
    "qwen3_0_6b": qwen3_0_6b,
    "qwen3_4b": qwen3_4b,
    "qwen3_8b": qwen3_8b,
    "llama3_2_1b": llama3_2_1b,
    "tiny": tiny,
    "qwen3_1_7b": qwen3_1_7b,
    "qwen2_5_1_5b": qwen2_5_1_5b,
    "qwen2_5_7b": qwen2_5_7b,
    "llama3_2_3b": llama3_2_3b,
    "llama3_1_8b": llama3_1_8b,
}


def get_preset(name: str) -> ModelConfig:
  """Returns the preset called `name`; ValueError lists the known names."""
  if name not in PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; known: {sorted(PRESETS)}.")
  return PRESETS[name]()
