"""Flax NNX decoder for the Llama / Qwen2 / Qwen3 family, in one file.

Classes in dependency order: RMSNorm, Embedding, Linear, Attention, MLP, Block, Decoder.
The L blocks are stacked along a leading axis and run by one `jax.lax.scan`,
which keeps compile time independent of depth. `Decoder.__call__` is the
training and scoring forward (causal self-attention over [B, T], no cache);
sampling runs the same arithmetic wired for decoding with a KV cache in
`rlvr_jax.models.decode`, which shares this module's `rms_norm`, RoPE
(`rope_inverse_frequencies`, `apply_rope`) and softmax (`attention_probs`).

Parameter names and shapes are listed in docs/CONVENTIONS.md; every
parameter carries logical axis names (`logical_axes` metadata, without the
stacked layer axis) that `rlvr_jax.sharding` maps to mesh axes.

Numerics follow transformers' PyTorch implementations (LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM): RMSNorm in f32 then cast back before the
weight, RoPE in the "rotate half" layout with inverse frequencies computed
on the host as transformers computes them, softmax in f32.
"""

from __future__ import annotations

import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.models.config import ModelConfig

Array = jax.Array

# Large finite negative logit for masked attention: a row with every key
# masked (a left-pad query) then gets a uniform, finite distribution.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_INIT = nnx.initializers.normal(stddev=0.02)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, normalized in float32."""

  def __init__(self, dim: int, *, eps: float, param_dtype: Any, axis: str):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=(axis,))
    self.eps = eps

  def __call__(self, x: Array) -> Array:
    return rms_norm(x, self.scale[...], self.eps)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """x [..., D] / sqrt(mean(x^2) + eps) in float32, cast back to x's dtype, times scale [D]."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return y.astype(x.dtype) * scale.astype(x.dtype)


class Embedding(nnx.Module):
  """Token embedding table [V, D]."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, param_dtype: Any):
    self.embedding = nnx.Param(_INIT(rngs.params(), (vocab_size, dim), param_dtype),
                               logical_axes=("vocab", "embed"))

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding[...], tokens, axis=0)


class Linear(nnx.Module):
  """A projection of x's last `in_dims` axes onto the kernel's remaining axes.

  y[..., out] = sum_in x[..., in] kernel[in, out], computed as one 2-D matmul
  [prod(batch), prod(in)] @ [prod(in), prod(out)]: XLA:CPU runs the backward
  pass of the equivalent multi-axis einsum ("btd,dnh->btnh") about 1.5x slower
  (benchmarks/train_step.py), while the 2-D form reaches its matmul peak.

  LoRA (`rlvr_jax.models.lora.add_adapters`): with adapters `lora_a`
  [*in, r] and `lora_b` [r, *out] (nnx.LoRAParam, None without LoRA) the
  output adds lora_scale * (x A) B, computed in x's dtype as the kernel's
  product is.
  """

  def __init__(self, kernel_shape: tuple[int, ...], kernel_axes: tuple[str | None, ...], *,
               rngs: nnx.Rngs, param_dtype: Any, in_dims: int = 1, bias_dims: int = 0):
    self.in_dims = in_dims
    self.kernel = nnx.Param(
        _INIT(rngs.params(), kernel_shape, param_dtype), logical_axes=kernel_axes)
    self.bias = nnx.Param(
        jnp.zeros(kernel_shape[-bias_dims:], param_dtype),
        logical_axes=kernel_axes[-bias_dims:]) if bias_dims else None
    self.lora_a: nnx.LoRAParam | None = None
    self.lora_b: nnx.LoRAParam | None = None
    self.lora_scale = 0.0

  def __call__(self, x: Array) -> Array:
    kernel = self.kernel[...].astype(x.dtype)
    in_shape, out_shape = kernel.shape[:self.in_dims], kernel.shape[self.in_dims:]
    batch_shape = x.shape[:x.ndim - self.in_dims]
    x2d = x.reshape(-1, math.prod(in_shape))
    y = x2d @ kernel.reshape(math.prod(in_shape), -1)
    if self.lora_a is not None:
      a = self.lora_a[...].astype(x.dtype)
      a = a.reshape(math.prod(in_shape), a.shape[-1])
      b = self.lora_b[...].astype(x.dtype).reshape(a.shape[1], -1)
      y = y + ((x2d @ a) * jnp.asarray(self.lora_scale, x.dtype)) @ b
    y = y.reshape(*batch_shape, *out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
  """Inverse frequencies [Dh/2] float32 of RoPE, computed on the host as transformers does.

  inv_freq_i = 1 / theta^(2i / Dh), every operation in float32 from integer
  exponents (transformers' `_compute_default_rope_parameters`), then HF's
  scaling: 'linear' divides the frequencies by the factor, 'llama3' rescales
  them by wavelength (`_compute_llama3_parameters`, with torch's
  `scalar / tensor` = `tensor.reciprocal() * scalar`). A NumPy constant, so
  a jitted forward sees these exact bits: computed under jit, XLA rewrites
  1 / theta^e as theta^-e and the frequencies move by 1-4 ulp, about 1e-3 in
  the rotated q and k at position 32k (tests/test_decoder.py).

  theta^e is rounded once to float32 (computed in float64): glibc's powf does
  the same, and torch's vectorized powf (Sleef, within 1 ulp) agrees except
  near a rounding midpoint (Qwen3's Dh = 128, theta = 1e6: one frequency of
  64 is 1 ulp apart). NumPy's own float32 power is not correctly rounded.

  Args:
    config: the model config (head_dim, rope_theta, rope_scaling).

  Returns:
    [Dh/2] float32 NumPy array.
  """
  dh = config.head_dim
  exponents = np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / np.float32(dh)
  theta = np.float64(np.float32(config.rope_theta))
  powers = (theta ** exponents.astype(np.float64)).astype(np.float32)
  inv_freq = np.float32(1.0) / powers
  scaling = config.rope_scaling
  if scaling is None or scaling.rope_type == "default":
    return inv_freq
  factor = np.float32(scaling.factor)
  if scaling.rope_type == "linear":
    return inv_freq / factor
  f32 = np.float32
  old_len = scaling.original_max_position_embeddings
  low_wavelen = f32(old_len / scaling.low_freq_factor)
  high_wavelen = f32(old_len / scaling.high_freq_factor)
  wavelen = (f32(1.0) / inv_freq) * f32(2 * math.pi)
  scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
  smooth = ((f32(1.0) / wavelen) * f32(old_len) - f32(scaling.low_freq_factor)) / f32(
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (f32(1.0) - smooth) * scaled / factor + smooth * scaled
  is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: Array, positions: Array, inv_freq: Array | np.ndarray) -> Array:
  """Rotates features of x [B, T, H, Dh] by positions [B, T] (rotate-half form).

  angle = position * inv_freq (float32, as transformers' `inv_freq @ positions`),
  out[..., :Dh/2] = x1 cos - x2 sin,  out[..., Dh/2:] = x2 cos + x1 sin.
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(nnx.Module):
  """Grouped-query attention with optional q/k norm and qkv bias."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    pd = jnp.dtype(c.param_dtype)
    bias = 2 if c.qkv_bias else 0
    self.q = Linear((c.hidden_size, c.num_heads, c.head_dim),
                    ("embed", "heads", "head_dim"), rngs=rngs, param_dtype=pd,
                    bias_dims=bias)
    self.k = Linear((c.hidden_size, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"), rngs=rngs, param_dtype=pd,
                    bias_dims=bias)
    self.v = Linear((c.hidden_size, c.num_kv_heads, c.head_dim),
                    ("embed", "kv_heads", "head_dim"), rngs=rngs, param_dtype=pd,
                    bias_dims=bias)
    self.o = Linear((c.num_heads, c.head_dim, c.hidden_size),
                    ("heads", "head_dim", "embed"), rngs=rngs, param_dtype=pd, in_dims=2)
    norm = lambda: RMSNorm(c.head_dim, eps=c.rms_norm_eps, param_dtype=pd, axis="head_dim")
    self.q_norm = norm() if c.qk_norm else None
    self.k_norm = norm() if c.qk_norm else None
    self.config = c

  def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
    """Causal self-attention of x [B, T, D] (normalized input).

    Args:
      x: normalized input [B, T, D].
      positions: RoPE positions [B, T].
      mask: [B, T, T] bool, True where query t may attend to key s.

    Returns:
      [B, T, D].
    """
    q, k, v = self.qkv(x, positions)
    return self.o(attend(q, k, v, mask))

  def qkv(self, x: Array, positions: Array) -> tuple[Array, Array, Array]:
    """Projections of x: q [B, T, N, Dh], k [B, T, K, Dh] (q/k norm, RoPE), v [B, T, K, Dh].

    Args:
      x: normalized input [B, T, D].
      positions: RoPE positions [B, T].
    """
    q, k, v = self.q(x), self.k(x), self.v(x)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq = rope_inverse_frequencies(self.config)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Grouped-query softmax attention, scores and softmax in float32.

  The G = N / K query heads that share a kv head are stacked along the query
  axis, and (batch, kv head) is merged into one batch axis, so both matmuls
  are 3-D [B K, G T, Dh] x [B K, S, Dh]: XLA:CPU runs this form about 1.5x
  faster, forward and backward, than the 5-D einsum over (b, t, k, g, h).

  Args:
    q: queries [B, T, N, Dh] (RoPE applied).
    k: keys [B, S, K, Dh].
    v: values [B, S, K, Dh].
    mask: [B, T, S] bool, True where query t may attend to key s.

  Returns:
    [B, T, N, Dh].
  """
  b, t, n, dh = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  q = q.reshape(b, t, kv_heads, g, dh).transpose(0, 2, 3, 1, 4).reshape(b * kv_heads, g * t, dh)
  k = k.transpose(0, 2, 1, 3).reshape(b * kv_heads, s, dh)
  v = v.transpose(0, 2, 1, 3).reshape(b * kv_heads, s, dh)
  scores = jnp.einsum("zqh,zsh->zqs", q, k) * (dh ** -0.5)
  probs = attention_probs(scores.reshape(b, kv_heads, g, t, s), mask[:, None, None], q.dtype)
  probs = probs.reshape(b * kv_heads, g * t, s)
  out = jnp.einsum("zqs,zsh->zqh", probs, v).reshape(b, kv_heads, g, t, dh)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, dh)


def attention_probs(scores: Array, mask: Array, dtype: Any) -> Array:
  """Attention weights: softmax over keys of the masked scores, in float32.

  Shared by `attend` and the decode path (`rlvr_jax.models.decode`).

  Args:
    scores: [..., T, S] query-key products already scaled by Dh^-1/2
      (compute dtype).
    mask: bool, broadcastable to scores, True where query t may attend to
      key s; elsewhere the score is MASK_VALUE.
    dtype: dtype of the returned weights.

  Returns:
    [..., T, S] softmax(where(mask, float32(scores), MASK_VALUE)) cast to dtype.
  """
  scores = jnp.where(mask, scores.astype(jnp.float32), MASK_VALUE)
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    pd = jnp.dtype(c.param_dtype)
    self.gate = Linear((c.hidden_size, c.intermediate_size),
                       ("embed", "mlp"), rngs=rngs, param_dtype=pd)
    self.up = Linear((c.hidden_size, c.intermediate_size),
                     ("embed", "mlp"), rngs=rngs, param_dtype=pd)
    self.down = Linear((c.intermediate_size, c.hidden_size),
                       ("mlp", "embed"), rngs=rngs, param_dtype=pd)

  def __call__(self, x: Array) -> Array:
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(config.param_dtype)
    eps = config.rms_norm_eps
    self.attn_norm = RMSNorm(config.hidden_size, eps=eps, param_dtype=pd, axis="embed")
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.hidden_size, eps=eps, param_dtype=pd, axis="embed")
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
    x = x + self.attn(self.attn_norm(x), positions, mask)
    x = x + self.mlp(self.mlp_norm(x))
    return sharding.constrain(x, ("batch", None, None))


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nnx.Module):
  """Decoder-only transformer; `__call__` returns final hidden states."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    pd = jnp.dtype(c.param_dtype)
    self.embed = Embedding(c.vocab_size, c.hidden_size, rngs=rngs, param_dtype=pd)

    @nnx.split_rngs(splits=c.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs: nnx.Rngs) -> Block:
      return Block(c, rngs=rngs)

    self.layers = make_blocks(rngs)
    self.final_norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, param_dtype=pd, axis="embed")
    self.lm_head = None if c.tie_word_embeddings else Linear(
        (c.hidden_size, c.vocab_size), ("embed", "vocab"),
        rngs=rngs, param_dtype=pd)

  def __call__(self, tokens: Array, positions: Array, input_mask: Array,
               scan_unroll: int = 1) -> Array:
    """Runs the decoder over whole sequences (causal, no cache).

    Args:
      tokens: [B, S] int32 token ids in [0, V) (validate host inputs with
        `rlvr_jax.models.logprobs.check_token_ids`).
      positions: [B, S] int32 RoPE positions.
      input_mask: [B, S] bool, True for real (non-pad) tokens; a query
        attends to the real keys at or before its own index.
      scan_unroll: unroll factor of the scan over layers.

    Returns:
      Final-norm hidden states [B, S, D] (compute dtype).
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    s = tokens.shape[1]
    causal = jnp.arange(s)[None, :] <= jnp.arange(s)[:, None]  # [S, S]
    mask = causal[None] & input_mask[:, None, :]  # [B, S, S]
    x = self.embed(tokens).astype(dtype)
    x = sharding.constrain(x, ("batch", None, None))

    graphdef, layer_state = nnx.split(self.layers)

    def body(x, state):
      return nnx.merge(graphdef, state)(x, positions, mask), None

    if c.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
    x, _ = jax.lax.scan(body, x, layer_state, unroll=scan_unroll)
    return self.final_norm(x)

  def logits(self, hidden: Array) -> Array:
    """LM-head logits [..., V] in float32 from hidden states [..., D]."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if self.lm_head is None:
      out = h @ self.embed.embedding[...].astype(h.dtype).T
    else:
      out = h @ self.lm_head.kernel[...].astype(h.dtype)
    return out.reshape(*hidden.shape[:-1], -1).astype(jnp.float32)


def positions_from_mask(input_mask: Array) -> Array:
  """RoPE positions [B, S] = cumsum(mask) - 1, clipped at 0 (left padding)."""
  return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)


def create_model(config: ModelConfig, seed: int = 0) -> Decoder:
  """A randomly initialized decoder (weights are replaced by an importer)."""
  return Decoder(config, rngs=nnx.Rngs(seed))
