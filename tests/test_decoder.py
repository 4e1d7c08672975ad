"""Decoder invariants: KV-cache decode path == recomputation, sharded == 1 device,
remat, and RoPE against transformers' own code (torch CPU) at positions ~32k."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from rlvr_jax import sharding
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decode as decode_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib

_CFG = config_lib.tiny(vocab_size=96).replace(
    num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
    num_kv_heads=2, head_dim=16, qk_norm=True, qkv_bias=True)


def _batch(b=8, t=9, left_pad=(0, 3, 1, 0, 2, 0, 4, 1)):
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, _CFG.vocab_size)
  mask = np.ones((b, t), bool)
  for i, p in enumerate(left_pad[:b]):
    mask[i, :p] = False
  return tokens, jnp.asarray(mask)


def _perturbed_model(config):
  """A random model whose biases and norm scales are not 0 and 1 (their init)."""
  model = decoder_lib.create_model(config)
  leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
  keys = jax.random.split(jax.random.key(2), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [
      a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]))
  return model


@pytest.mark.parametrize("tied", [True, False])
def test_decode_path_prefill_then_steps_equals_full_forward(tied):
  """models.decode (the sampler's forward): a 5-token prefill into per-layer
  caches, then one token per step, gives the hidden states and logits of the
  decoder's full forward at every real token."""
  model = _perturbed_model(_CFG.replace(tie_word_embeddings=tied))
  tokens, mask = _batch()
  b, t = tokens.shape
  positions = decoder_lib.positions_from_mask(mask)
  full = model(tokens, positions, mask)

  @nnx.jit
  def run(model, tokens, positions, mask, caches, cache_index):
    layers, head = decode_lib.decode_weights(model)
    hidden, caches = decode_lib.forward(model, layers, tokens, positions, mask, caches,
                                        cache_index)
    return hidden, decode_lib.logits(hidden, head), caches

  slots = jnp.arange(t)
  causal_and_real = lambda start, n: (
      (slots[None, :] <= start + jnp.arange(n)[:, None])[None] & mask[:, None, :])
  prefill = 5
  caches = [decode_lib.empty_cache(_CFG, b, t)] * _CFG.num_layers
  hidden, logits, caches = run(model, tokens[:, :prefill], positions[:, :prefill],
                               causal_and_real(0, prefill), caches, 0)
  hiddens, all_logits = [hidden], [logits]
  for i in range(prefill, t):
    hidden, logits, caches = run(model, tokens[:, i:i + 1], positions[:, i:i + 1],
                                 causal_and_real(i, 1), caches, jnp.int32(i))
    hiddens.append(hidden)
    all_logits.append(logits)
  real = np.asarray(mask)[..., None]
  np.testing.assert_allclose(np.where(real, jnp.concatenate(hiddens, axis=1), 0),
                             np.where(real, full, 0), atol=1e-5)
  np.testing.assert_allclose(np.where(real, jnp.concatenate(all_logits, axis=1), 0),
                             np.where(real, model.logits(full), 0), atol=1e-5)


def test_cache_helpers_grow_the_slots_a_prefill_continues_on():
  """pad_cache (a prefix's cache grown to the batch's slots, then grown again at the end)
  keeps each slot on its axis (keys [B, K, Dh, S], values [B, K, S, Dh]): a prefill
  continued at slot 4 of the grown cache gives the full forward's hidden states."""
  model = _perturbed_model(_CFG)
  tokens, mask = _batch()
  b, t = tokens.shape
  positions = decoder_lib.positions_from_mask(mask)
  full = model(tokens, positions, mask)
  real_slots = jnp.pad(mask, ((0, 0), (0, 3)))  # [B, t + 3]: the grown cache's empty slots
  causal = lambda start, n, size: (
      (jnp.arange(size)[None, :] <= start + jnp.arange(n)[:, None])[None]
      & real_slots[:, None, :size])

  @nnx.jit
  def run(model, tokens, positions, mask, caches, cache_index):
    layers, _ = decode_lib.decode_weights(model)
    return decode_lib.forward(model, layers, tokens, positions, mask, caches, cache_index)

  empty = decode_lib.empty_cache(_CFG, b, 4)
  _, prefix = run(model, tokens[:, :4], positions[:, :4], causal(0, 4, 4),
                  [empty] * _CFG.num_layers, 0)
  joined = [decode_lib.pad_cache(c, t) for c in prefix]
  grown = [decode_lib.pad_cache(c, t + 3) for c in joined]
  assert [decode_lib.cache_slots(c) for c in (empty, joined[0], grown[0])] == [4, t, t + 3]
  for (k4, v4), (k, v) in zip(prefix, grown):
    np.testing.assert_array_equal(k[..., :4], k4)
    np.testing.assert_array_equal(v[:, :, :4], v4)
    assert not np.any(k[..., 4:]) and not np.any(v[:, :, 4:])
  hidden, _ = run(model, tokens[:, 4:], positions[:, 4:], causal(4, t - 4, t + 3), grown, 4)
  real = np.asarray(mask)[:, 4:, None]
  np.testing.assert_allclose(np.where(real, hidden, 0), np.where(real, full[:, 4:], 0),
                             atol=1e-5)


def test_left_padding_does_not_change_real_tokens():
  """A row's outputs depend only on its real tokens, not on pad count."""
  model = decoder_lib.create_model(_CFG)
  tokens, _ = _batch(b=1, t=6)
  mask = jnp.ones((1, 6), bool)
  ref = model(tokens, decoder_lib.positions_from_mask(mask), mask)
  padded = jnp.concatenate([jnp.full((1, 3), 7), tokens], axis=1)
  pmask = jnp.concatenate([jnp.zeros((1, 3), bool), mask], axis=1)
  out = model(padded, decoder_lib.positions_from_mask(pmask), pmask)
  np.testing.assert_allclose(out[:, 3:], ref, atol=1e-5)


def _loss(model, tokens, mask):
  stats = logprobs_lib.response_logprobs(model, tokens, mask, prompt_len=4, chunk_size=3)
  return jnp.sum(stats.logp * mask[:, 4:])


def test_eight_devices_fsdp4_tensor2_equal_one_device():
  model = decoder_lib.create_model(_CFG)
  tokens, mask = _batch()
  ref_loss, ref_grads = nnx.value_and_grad(_loss)(model, tokens, mask)

  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  sharded = sharding.shard_model(decoder_lib.create_model(_CFG), mesh)
  kernel = nnx.state(sharded, nnx.Param)["layers"]["mlp"]["gate"]["kernel"]
  assert kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  batch = sharding.batch_sharding(mesh, 2)

  @nnx.jit
  def sharded_value_and_grad(model, tokens, mask):
    return nnx.value_and_grad(_loss)(model, tokens, mask)

  with sharding.use_mesh(mesh):
    loss, grads = sharded_value_and_grad(
        sharded, jax.device_put(tokens, batch), jax.device_put(mask, batch))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               nnx.to_pure_dict(grads), nnx.to_pure_dict(ref_grads))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_same_value_and_gradient(remat):
  tokens, mask = _batch()
  plain = decoder_lib.create_model(_CFG)
  rematted = decoder_lib.create_model(_CFG.replace(remat=remat))
  v0, g0 = nnx.value_and_grad(_loss)(plain, tokens, mask)
  v1, g1 = nnx.value_and_grad(_loss)(rematted, tokens, mask)
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               nnx.to_pure_dict(g1), nnx.to_pure_dict(g0))


def test_logical_axis_dropped_when_it_does_not_divide():
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  # 3 KV heads (SmolLM2) cannot split over tensor=2: replicated on that dim.
  spec = sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (576, 3, 64), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", None, None)
  spec = sharding.logical_to_spec(("batch", None), (8, 5), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", None)


def test_rope_llama3_scaling_matches_reference_formula():
  """Frequencies of the llama3 variant against a direct NumPy transcription."""
  cfg = _CFG.replace(rope_theta=500000.0, rope_scaling=config_lib.RopeScaling(
      "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=64))
  got = np.asarray(decoder_lib.rope_inverse_frequencies(cfg))
  base = 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16)
  expected = []
  for f in base:
    wavelen = 2 * np.pi / f
    if wavelen < 64 / 4.0:
      expected.append(f)
    elif wavelen > 64 / 1.0:
      expected.append(f / 8.0)
    else:
      smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
      expected.append((1 - smooth) * f / 8.0 + smooth * f)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def _hf_config(config):
  """transformers' LlamaConfig with config's RoPE settings (rope_scaling as in HF files)."""
  scaling = config.rope_scaling
  rope_scaling = None if scaling is None else dict(
      rope_type=scaling.rope_type, factor=scaling.factor,
      low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
      original_max_position_embeddings=scaling.original_max_position_embeddings)
  return transformers.LlamaConfig(
      hidden_size=config.num_heads * config.head_dim, num_attention_heads=config.num_heads,
      head_dim=config.head_dim, rope_theta=config.rope_theta, rope_scaling=rope_scaling,
      max_position_embeddings=131072)


def _rope_configs():
  """(id, config, max ulp from transformers) for each preset and scaling variant."""
  linear = config_lib.RopeScaling("linear", factor=4.0)
  cases = []
  for name in ("smollm2_135m", "qwen2_5_0_5b", "qwen2_5_math_1_5b", "qwen3_0_6b",
               "llama3_2_1b"):
    config = getattr(config_lib, name)()
    # Qwen3 (Dh = 128, theta = 1e6): torch's vectorized powf (Sleef, <= 1 ulp)
    # rounds 1e6^(74/128) = 2942.72717620... down to 2942.727 where the nearest
    # float32 is 2942.7273, so that one frequency of 64 may differ by 1 ulp.
    max_ulp = 1 if name == "qwen3_0_6b" else 0
    cases.append(pytest.param(config, max_ulp, id=name))
    cases.append(pytest.param(config.replace(rope_scaling=linear), max_ulp, id=name + "-linear"))
  return cases


@pytest.mark.parametrize("config, max_ulp", _rope_configs())
def test_rope_inverse_frequencies_equal_transformers_bitwise(config, max_ulp):
  """The frequencies a jitted forward sees equal transformers' own init function.

  Before the fix they were computed under jit (1-4 ulp off: XLA turns x / Dh
  into x * (1 / Dh)); now they are a host constant.
  """
  hf_config = _hf_config(config)
  if config.rope_scaling is None:
    expected = modeling_llama.LlamaRotaryEmbedding(hf_config).inv_freq.numpy()
  else:
    init = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS[config.rope_scaling.rope_type]
    expected = init(hf_config, "cpu")[0].numpy()
  got = np.asarray(jax.jit(lambda: jnp.asarray(decoder_lib.rope_inverse_frequencies(config)))())
  assert got.dtype == np.float32 and got.shape == (config.head_dim // 2,)
  ulps = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32))
  assert ulps.max() <= max_ulp, ulps
  assert np.sum(ulps > 0) <= max_ulp


@pytest.mark.parametrize("name", ["smollm2_135m", "llama3_2_1b"])
def test_rotated_q_near_32k_positions_matches_transformers(name):
  """apply_rope (jitted, as in both forwards) at positions 32000 + [0, 8) and
  32767 against transformers' rotary embedding + apply_rotary_pos_emb."""
  config = getattr(config_lib, name)()
  positions = np.array([[32000 + i for i in range(8)] + [32767]], np.int64)  # [1, 9]
  q = np.random.default_rng(0).standard_normal(
      (1, positions.shape[1], 4, config.head_dim)).astype(np.float32)  # [B, T, N, Dh]
  rotate = jax.jit(lambda q, pos: decoder_lib.apply_rope(
      q, pos, decoder_lib.rope_inverse_frequencies(config)))
  got = np.asarray(rotate(q, positions.astype(np.int32)))

  rotary = modeling_llama.LlamaRotaryEmbedding(_hf_config(config))
  q_t = torch.tensor(q).transpose(1, 2)  # HF layout [B, N, T, Dh]
  with torch.no_grad():
    cos, sin = rotary(q_t, torch.tensor(positions))
    expected, _ = modeling_llama.apply_rotary_pos_emb(q_t, q_t, cos, sin)
  np.testing.assert_allclose(got, expected.transpose(1, 2).numpy(), rtol=0, atol=1e-5)
