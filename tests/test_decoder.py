"""Decoder invariants: KV cache == recomputation, sharded == 1 device, remat."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.models import config as config_lib
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


def test_prefill_then_decode_equals_full_forward():
  model = decoder_lib.create_model(_CFG)
  tokens, mask = _batch()
  b, t = tokens.shape
  positions = decoder_lib.positions_from_mask(mask)
  full, _ = model(tokens, positions, mask)

  step = nnx.jit(lambda m, *args: m(*args))
  prefill = 5
  cache = model.init_cache(b, t)
  kv_mask = mask.at[:, prefill:].set(False)
  out, cache = step(model, tokens[:, :prefill], positions[:, :prefill], kv_mask, cache, 0)
  outs = [out]
  for i in range(prefill, t):
    kv_mask = kv_mask.at[:, i].set(mask[:, i])
    out, cache = step(model, tokens[:, i:i + 1], positions[:, i:i + 1], kv_mask, cache,
                      jnp.int32(i))
    outs.append(out)
  cached = jnp.concatenate(outs, axis=1)
  np.testing.assert_allclose(np.where(mask[..., None], cached, 0),
                             np.where(mask[..., None], full, 0), atol=1e-5)


def test_left_padding_does_not_change_real_tokens():
  """A row's outputs depend only on its real tokens, not on pad count."""
  model = decoder_lib.create_model(_CFG)
  tokens, _ = _batch(b=1, t=6)
  mask = jnp.ones((1, 6), bool)
  ref, _ = model(tokens, decoder_lib.positions_from_mask(mask), mask)
  padded = jnp.concatenate([jnp.full((1, 3), 7), tokens], axis=1)
  pmask = jnp.concatenate([jnp.zeros((1, 3), bool), mask], axis=1)
  out, _ = model(padded, decoder_lib.positions_from_mask(pmask), pmask)
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
