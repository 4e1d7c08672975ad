"""Chunked per-token log-probs and entropies (rlvr_jax.models.logprobs).

Reference: torch's log_softmax + gather on the same logits (an independent
implementation), and the unchunked computation for every chunk size,
including one that does not divide T, for values and gradients.
"""

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rlvr_jax.models import decoder
from rlvr_jax.models import logprobs
from rlvr_jax.models.config import tiny

P, T = 4, 7  # Prompt and response lengths; S = 11.


@pytest.fixture(scope="module")
def model():
  return decoder.create_model(tiny(vocab_size=64).replace(num_layers=2), seed=0)


@pytest.fixture(scope="module")
def batch():
  """tokens [3, 11] int32, input_mask [3, 11]: prompts with 0, 1 and 3 left pads."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (3, P + T)).astype(np.int32)
  mask = np.arange(P + T)[None, :] >= np.array([0, 1, 3])[:, None]
  return jnp.asarray(tokens), jnp.asarray(mask)


def torch_logp_entropy(logits: np.ndarray, targets: np.ndarray,
                       temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """log_softmax(logits / temperature) gathered at targets, and the entropy."""
  scaled = torch.tensor(logits, dtype=torch.float64) / temperature
  logp_all = torch.log_softmax(scaled, dim=-1)
  logp = torch.gather(logp_all, -1, torch.tensor(targets, dtype=torch.int64)[..., None])[..., 0]
  entropy = -(logp_all.exp() * logp_all).sum(-1)
  return logp.numpy(), entropy.numpy()


def full_forward_logits(model, tokens, mask) -> np.ndarray:
  hidden = model(tokens, decoder.positions_from_mask(mask), mask)
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_equal_torch_log_softmax(model, batch, temperature):
  tokens, mask = batch
  stats = logprobs.response_logprobs(
      model, tokens, mask, prompt_len=P, temperature=temperature, chunk_size=3,
      with_entropy=True, with_hidden=True)
  # Sequence index P - 1 + t predicts response token t (docs/CONVENTIONS.md).
  logits = full_forward_logits(model, tokens, mask)[:, P - 1:P - 1 + T]
  ref_logp, ref_entropy = torch_logp_entropy(logits, np.asarray(tokens)[:, P:], temperature)
  np.testing.assert_allclose(np.asarray(stats.logp), ref_logp, rtol=0, atol=2e-6)
  np.testing.assert_allclose(np.asarray(stats.entropy), ref_entropy, rtol=0, atol=2e-6)
  assert stats.hidden.shape == (3, T, model.config.hidden_size)
  np.testing.assert_allclose(np.asarray(model.logits(stats.hidden)), logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 16])
def test_chunked_equals_unchunked(model, batch, chunk_size):
  # 3 and 4 do not divide T = 7 (padded last chunk); 16 > T is one chunk.
  tokens, mask = batch
  whole = logprobs.response_logprobs(model, tokens, mask, prompt_len=P, with_entropy=True)
  chunked = logprobs.response_logprobs(
      model, tokens, mask, prompt_len=P, chunk_size=chunk_size, with_entropy=True)
  np.testing.assert_allclose(np.asarray(chunked.logp), np.asarray(whole.logp),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(chunked.entropy), np.asarray(whole.entropy),
                             rtol=0, atol=1e-6)
  assert chunked.hidden is None and chunked.logp.shape == (3, T)


def flat_grads(grads: nnx.State) -> dict[str, np.ndarray]:
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(grads), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def test_gradient_chunked_equals_unchunked(model, batch):
  tokens, mask = batch
  weights = jnp.asarray(np.random.default_rng(1).standard_normal((3, T)), jnp.float32)

  def loss(m, chunk_size):
    stats = logprobs.response_logprobs(
        m, tokens, mask, prompt_len=P, chunk_size=chunk_size, with_entropy=True)
    return jnp.sum(stats.logp * weights)

  whole = flat_grads(nnx.grad(lambda m: loss(m, None))(model))
  chunked = flat_grads(nnx.grad(lambda m: loss(m, 3))(model))
  assert sorted(whole) == sorted(chunked)
  for name, g in whole.items():
    assert np.abs(g).max() > 0, name
    # Summation order differs between chunkings: compare to the tensor's scale.
    np.testing.assert_allclose(chunked[name], g, rtol=0, atol=1e-5 * np.abs(g).max(),
                               err_msg=name)


def test_entropy_carries_no_gradient(model, batch):
  tokens, mask = batch
  hidden = logprobs.response_logprobs(
      model, tokens, mask, prompt_len=P, with_hidden=True).hidden
  targets = tokens[:, P:]

  def entropy_sum(h):
    _, entropy = logprobs.logprobs_from_hidden(model, h, targets, chunk_size=3,
                                               with_entropy=True)
    return jnp.sum(entropy)

  assert float(entropy_sum(hidden)) > 0
  np.testing.assert_array_equal(np.asarray(jax.grad(entropy_sum)(hidden)), 0.0)


class IdentityHead:
  """Stands in for the decoder in `logprobs_from_hidden`: logits = hidden."""

  def logits(self, hidden):
    return hidden.astype(jnp.float32)


def test_hand_computed_logprob():
  # Two tokens, logits h = (ln 3, 0): softmax = (3/4, 1/4), so
  # log p(0) = ln 0.75 and log p(1) = ln 0.25; the entropy is
  # -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351.
  hidden = jnp.asarray([[[np.log(3.0), 0.0], [np.log(3.0), 0.0], [np.log(3.0), 0.0]]],
                       jnp.float32)
  logp, entropy = logprobs.logprobs_from_hidden(
      IdentityHead(), hidden, jnp.asarray([[0, 1, 1]]), chunk_size=2, with_entropy=True)
  np.testing.assert_allclose(np.asarray(logp), [[np.log(0.75), np.log(0.25), np.log(0.25)]],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(entropy), [[0.5623351] * 3], rtol=1e-6)
  # At temperature 1 / 2 the logits double: softmax(2 ln 3, 0) = (9/10, 1/10).
  logp, _ = logprobs.logprobs_from_hidden(IdentityHead(), hidden, jnp.asarray([[0, 1, 1]]),
                                          temperature=0.5)
  np.testing.assert_allclose(np.asarray(logp), [[np.log(0.9), np.log(0.1), np.log(0.1)]],
                             rtol=1e-6)


@pytest.mark.parametrize("bad_id", [64, -1, 1000])
def test_check_token_ids_rejects_ids_outside_vocabulary(bad_id):
  # V = 64: the valid ids are 0 .. 63; id 64 used to give NaN log-probs and
  # -1 silently wrapped around to id 63.
  tokens = np.zeros((3, P + T), np.int32)
  tokens[1, 5] = bad_id
  tokens[2, 0] = bad_id
  # The first bad id in row-major order is named, with the count of all of them.
  with pytest.raises(ValueError, match=rf"tokens\[1, 5\] = {bad_id}: token id in row 1 "
                                       rf"outside .*vocab_size=64\) \(2 such"):
    logprobs.check_token_ids(tokens, vocab_size=64)
  with pytest.raises(ValueError, match=rf"prompts\[0\]\[2\] = {bad_id}: token id outside"):
    logprobs.check_token_ids([7, 8, bad_id], vocab_size=64, name="prompts[0]")
  logprobs.check_token_ids(np.array([[0, 63]]), vocab_size=64)  # the edges are valid
  logprobs.check_token_ids([], vocab_size=64)


def test_check_token_ids_rejects_non_integer_ids():
  with pytest.raises(ValueError, match="integer token ids"):
    logprobs.check_token_ids(np.array([1.0, 2.0]), vocab_size=64)


@pytest.mark.parametrize("bad_id", [64, -1])
def test_response_logprobs_rejects_ids_outside_vocabulary(model, batch, bad_id):
  tokens, mask = batch
  with pytest.raises(ValueError, match=rf"tokens\[2, 9\] = {bad_id}: token id in row 2"):
    logprobs.response_logprobs(model, tokens.at[2, 9].set(bad_id), mask, prompt_len=P)
