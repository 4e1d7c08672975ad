"""The decoder's forward wired for decoding with a KV cache (used by the sampler).

`rlvr_jax.models.decoder.Decoder.__call__` is the training forward: one
`jax.lax.scan` over the stacked [L, ...] parameters, no cache. Carried through
that scan, a stacked cache [L, B, S, K, Dh] is copied and the stacked weights
are sliced at every layer of every step: for SmolLM2-135M at B = 32 such a
decode step was ~10x slower than this module's, measured side by side (7.8 s
vs 0.72 s per step on the shared 2-core machine under load). So this module
runs the decoder's arithmetic (its `rms_norm`, `rope_inverse_frequencies`,
`apply_rope`, `attention_probs`, SwiGLU and LM head) on the same parameters,
laid out for decoding:
  * the layers are a Python loop over per-layer weights (`decode_weights`),
    sliced from the stacked parameters once per call with q/k/v and gate/up
    side by side (one matmul each), so nothing is sliced or copied inside the
    loop;
  * those weights are stored [out, in] (the LM head is the tied embedding
    [V, D] itself): a decode step's skinny [B, D] x [D, F] products run
    faster against the transposed kernel on XLA:CPU (SmolLM2's 30 layers and
    LM head at B = 32 on the 2-core Xeon: 64 ms, against 86 ms [in, out]);
  * each layer's cache is its own pair of buffers, keys [B, K, Dh, S] and
    values [B, K, S, Dh], updated in place at slot `cache_index`; the keys
    are stored with the slots last so that a decode step's scores run along
    contiguous slots (SmolLM2's 30 layers at B = 32, S = 119: 31 -> 23 ms of
    attention per step on the 2-core Xeon);
  * a decode step's attention (T = 1) multiplies and sums: [G, Dh] x [Dh, S]
    per row and KV head is too small for a matmul library, and XLA:CPU's
    fused multiply-reduce streams each cache once (the step reads the whole
    KV cache and is bound by memory bandwidth).
The hidden states equal `Decoder.__call__`'s on the same tokens
(tests/test_decoder.py); sampling logic (prefill layout, draws, stops,
phases) lives in `rlvr_jax.sampling.sampler`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlvr_jax import sharding
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models.config import ModelConfig

Array = jax.Array
LayerCache = tuple[Array, Array]  # (keys [B, K, Dh, S], values [B, K, S, Dh])

# Logical axes of one layer's keys [B, K, Dh, S] and values [B, K, S, Dh].
KEY_AXES = ("batch", "kv_heads", "head_dim", None)
VALUE_AXES = ("batch", "kv_heads", None, "head_dim")
_KEY_SLOT_AXIS, _VALUE_SLOT_AXIS = 3, 2


class DecodeWeights(NamedTuple):
  """The decoder's parameters laid out for decoding (`decode_weights`).

  Attributes:
    layers: L dicts of one layer's weights in the compute dtype, kernels
      [out, in]: "qkv" [(N + 2K) Dh, D] (the q, k and v kernels one after the
      other), "qkv_bias" [(N + 2K) Dh] or absent, "o" [D, N Dh], "gate_up"
      [2F, D] (gate then up), "down" [D, F], "attn_norm" and "mlp_norm" [D],
      "q_norm" and "k_norm" [Dh] or absent.
    head: the LM head [V, D] in the compute dtype.
  """

  layers: list[dict[str, Array]]
  head: Array


def decode_weights(model: decoder_lib.Decoder) -> DecodeWeights:
  """Slices and casts the stacked [L, ...] parameters once per generation call.

  Nothing is then sliced, cast or transposed inside the decode loop.

  Args:
    model: the decoder.

  Returns:
    DecodeWeights (per-layer weights and the LM head).
  """
  c = model.config
  dtype = jnp.dtype(c.dtype)
  attn, mlp = model.layers.attn, model.layers.mlp
  # Slice each layer's [In, Out] kernels first, then transpose (XLA:CPU's
  # transposing slice of a stacked [L, Out, In] view is 2x slower).
  kernel = lambda param, i: param[i].reshape(c.hidden_size, -1).T  # [Out, D]

  def one_layer(i: int) -> dict[str, Array]:
    w = {"qkv": jnp.concatenate([kernel(p, i) for p in (attn.q.kernel, attn.k.kernel,
                                                        attn.v.kernel)]),
         "o": attn.o.kernel[i].reshape(-1, c.hidden_size).T,
         "gate_up": jnp.concatenate([mlp.gate.kernel[i].T, mlp.up.kernel[i].T]),
         "down": mlp.down.kernel[i].T,
         "attn_norm": model.layers.attn_norm.scale[i],
         "mlp_norm": model.layers.mlp_norm.scale[i]}
    if attn.q.bias is not None:
      w["qkv_bias"] = jnp.concatenate(
          [b[i].reshape(-1) for b in (attn.q.bias, attn.k.bias, attn.v.bias)])
    if attn.q_norm is not None:
      w["q_norm"], w["k_norm"] = attn.q_norm.scale[i], attn.k_norm.scale[i]
    return {name: v.astype(dtype) for name, v in w.items()}

  layers = [one_layer(i) for i in range(c.num_layers)]
  head = (model.embed.embedding[...] if model.lm_head is None
          else model.lm_head.kernel[...].T)
  return DecodeWeights(layers, head.astype(dtype))


def _linear(x: Array, kernel: Array) -> Array:
  """x [..., In] times a kernel stored [Out, In] (`DecodeWeights`) -> [..., Out]."""
  return jnp.einsum("...i,oi->...o", x, kernel)


def empty_cache(config: ModelConfig, rows: int, slots: int) -> LayerCache:
  """One layer's cache of zeros: keys [rows, K, Dh, slots], values [rows, K, slots, Dh]."""
  k, dh, dtype = config.num_kv_heads, config.head_dim, jnp.dtype(config.dtype)
  return jnp.zeros((rows, k, dh, slots), dtype), jnp.zeros((rows, k, slots, dh), dtype)


def cache_slots(cache: LayerCache) -> int:
  """The number of slots S of a layer's cache."""
  return cache[1].shape[_VALUE_SLOT_AXIS]


def pad_cache(cache: LayerCache, slots: int) -> LayerCache:
  """A layer's cache grown to `slots` slots with empty (zero) slots at the end."""
  def pad(a, axis):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, slots - a.shape[axis])
    return jnp.pad(a, widths)
  keys, values = cache
  return (sharding.constrain(pad(keys, _KEY_SLOT_AXIS), KEY_AXES),
          sharding.constrain(pad(values, _VALUE_SLOT_AXIS), VALUE_AXES))



def attend(q: Array, keys: Array, values: Array, mask: Array) -> Array:
  """Grouped-query attention of q over a layer's cache (`decoder.attend`'s arithmetic).

  Scores q.k * Dh^-1/2 in the compute dtype, softmax in float32
  (`decoder.attention_probs`); a decode step (T = 1) multiplies and sums
  instead of calling a batched matmul (module docstring).

  Args:
    q: [B, T, N, Dh] queries after RoPE.
    keys: [B, K, Dh, S].
    values: [B, K, S, Dh].
    mask: [B, T, S] bool, True where query t may attend to slot s.

  Returns:
    [B, T, N * Dh], heads flattened in the order of the o-projection's input.
  """
  b, t, n, dh = q.shape
  k = keys.shape[1]
  q = q.reshape(b, t, k, n // k, dh)
  keys, values = keys.astype(q.dtype), values.astype(q.dtype)
  if t == 1:
    scores = jnp.sum(q[:, 0, :, :, :, None] * keys[:, :, None], axis=-2)[:, :, :, None]
  else:
    scores = jnp.einsum("btkgh,bkhs->bkgts", q, keys)
  probs = decoder_lib.attention_probs(scores * dh ** -0.5, mask[:, None, None],
                                      q.dtype)  # [B, K, G, T, S]
  if t == 1:
    out = jnp.sum(probs[:, :, :, 0, :, None] * values[:, :, None], axis=-2)[:, :, :, None]
  else:
    out = jnp.einsum("bkgts,bksh->bkgth", probs, values)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n * dh)


def layer(w: dict[str, Array], x: Array, positions: Array, inv_freq: Array, mask: Array,
          cache: LayerCache, cache_index: Array | int, *,
          config: ModelConfig) -> tuple[Array, LayerCache]:
  """`decoder.Block` on one layer's `decode_weights`, reading and writing its cache.

  Args:
    w: the layer's weights (`DecodeWeights.layers[i]`).
    x: [B, T, D] residual stream.
    positions: RoPE positions [B, T].
    inv_freq: RoPE inverse frequencies [Dh/2] (the same array for every
      layer, so XLA computes cos / sin once).
    mask: [B, T, S], True where query t may attend to cache slot s (the
      cache after writing this call's keys).
    cache: this layer's keys [B, K, Dh, S] and values [B, K, S, Dh].
    cache_index: cache slot of x[:, 0].
    config: the model config.

  Returns:
    The new residual stream [B, T, D] and the updated cache.
  """
  c = config
  b, t, _ = x.shape
  n_q, n_kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  h = decoder_lib.rms_norm(x, w["attn_norm"], c.rms_norm_eps)
  qkv = _linear(h, w["qkv"])
  if "qkv_bias" in w:
    qkv = qkv + w["qkv_bias"]
  q = qkv[..., :n_q].reshape(b, t, c.num_heads, c.head_dim)
  k = qkv[..., n_q:n_q + n_kv].reshape(b, t, c.num_kv_heads, c.head_dim)
  v = qkv[..., n_q + n_kv:].reshape(b, t, c.num_kv_heads, c.head_dim)
  if "q_norm" in w:
    q = decoder_lib.rms_norm(q, w["q_norm"], c.rms_norm_eps)
    k = decoder_lib.rms_norm(k, w["k_norm"], c.rms_norm_eps)
  q = decoder_lib.apply_rope(q, positions, inv_freq)
  k = decoder_lib.apply_rope(k, positions, inv_freq)
  k_cache, v_cache = cache
  k = k.transpose(0, 2, 3, 1).astype(k_cache.dtype)  # [B, K, Dh, T]
  v = v.swapaxes(1, 2).astype(v_cache.dtype)  # [B, K, T, Dh]
  k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, cache_index, axis=_KEY_SLOT_AXIS)
  v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, cache_index,
                                                axis=_VALUE_SLOT_AXIS)
  x = x + _linear(attend(q, k_cache, v_cache, mask), w["o"])
  h = decoder_lib.rms_norm(x, w["mlp_norm"], c.rms_norm_eps)
  gate, up = jnp.split(_linear(h, w["gate_up"]), 2, axis=-1)
  x = x + _linear(jax.nn.silu(gate) * up, w["down"])
  return sharding.constrain(x, ("batch", None, None)), (k_cache, v_cache)


def forward(model: decoder_lib.Decoder, layers: list[dict[str, Array]], tokens: Array,
            positions: Array, mask: Array, caches: list[LayerCache],
            cache_index: Array | int) -> tuple[Array, list[LayerCache]]:
  """Runs tokens [B, T] through the decoder, writing their keys at `cache_index`.

  Args:
    model: the decoder (its embedding and final norm are used).
    layers: `DecodeWeights.layers` of the same model.
    tokens: [B, T] int32 token ids in [0, V).
    positions: [B, T] int32 RoPE positions.
    mask: [B, T, S] bool, True where query t may attend to cache slot s
      (causality and padding; slots cache_index .. cache_index + T - 1 hold
      this call's keys).
    caches: L per-layer caches, each (keys [B, K, Dh, S], values [B, K, S, Dh]).
    cache_index: cache slot of tokens[:, 0].

  Returns:
    Final-norm hidden states [B, T, D] (compute dtype) and the updated caches.
  """
  c = model.config
  inv_freq = jnp.asarray(decoder_lib.rope_inverse_frequencies(c))
  x = model.embed(tokens).astype(jnp.dtype(c.dtype))
  x = sharding.constrain(x, ("batch", None, None))
  new_caches = []
  for w, cache in zip(layers, caches):
    x, cache = layer(w, x, positions, inv_freq, mask, cache, cache_index, config=c)
    new_caches.append(cache)
  return model.final_norm(x), new_caches


def logits(hidden: Array, head: Array) -> Array:
  """LM-head logits [..., V] float32 of hidden states [..., D] (`DecodeWeights.head` [V, D])."""
  return _linear(hidden, head).astype(jnp.float32)
