"""KV-cache sampler (rlvr_jax.sampling.sampler).

References: argmax decoding by full recomputation with the decoder's own
forward (no cache), teacher-forced log-probs (`response_logprobs`), and NumPy
implementations of the temperature / top-k / top-p distributions written
here. Models are tiny and random; a character tokenizer makes texts and stop
strings easy to reason about (one character = one token).
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax.models import decoder
from rlvr_jax.models import logprobs
from rlvr_jax.models.config import tiny
from rlvr_jax.sampling import sampler as sampler_lib

V = 64  # vocabulary of the main test model
P, T = 8, 6  # prompt width (max_prompt_len) and max_new_tokens
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXY"  # ids 3 ..
EOS = 2  # tiny()'s EOS and pad id


class CharTokenizer:
  """Token 3 + i is the character _CHARS[i]; ids 0, 1, 2 are special (no text)."""

  eos_token_id = EOS

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [3 + _CHARS.index(ch) for ch in text]

  def decode(self, ids, skip_special_tokens=True):
    del skip_special_tokens
    return "".join(_CHARS[i - 3] for i in ids if i >= 3)


PROMPTS = ["abc", "hello w", "z", "12345678"]  # left-padded from 3, 7, 1, 8 tokens to P
# Prompts sharing their first 16 tokens (a shared prefix of 16, a multiple of
# 8), one of them twice: prefilled as the prefix once plus 3 distinct rows.
PREFIXED = ["the question is abc", "the question is hello", "the question is abc",
            "the question is 12345678"]


@pytest.fixture(scope="module")
def model():
  return decoder.create_model(tiny(vocab_size=V).replace(num_layers=2), seed=0)


@pytest.fixture(scope="module")
def sampler(model):
  return sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=P, max_new_tokens=T)


@pytest.fixture(scope="module")
def sampler_no_eos(model):
  return sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=P, max_new_tokens=T,
                             eos_token_ids=())


def full_logits_fn(model):
  """Jitted logits [B, S, V] of the decoder's forward with no cache."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def fn(state, tokens, mask):
    m = nnx.merge(graphdef, state)
    hidden = m(tokens, decoder.positions_from_mask(mask), mask)
    return m.logits(hidden)

  return lambda tokens, mask: np.asarray(fn(state, tokens, mask))


def teacher_forced_logp(model, out, temperature):
  stats = logprobs.response_logprobs(
      model, jnp.asarray(out.tokens), jnp.asarray(out.input_mask), prompt_len=out.prompt_len,
      temperature=temperature)
  return np.asarray(stats.logp)


def greedy_by_full_recomputation(model, prompts, width, new_tokens):
  """Tokens and mask [B, width + new_tokens]: prompts left-padded, then argmax
  decoding that re-runs the whole prefix each step (index width - 1 + t
  predicts token t; later slots are masked placeholders, unseen through
  causality)."""
  full = full_logits_fn(model)
  tokens = np.full((len(prompts), width + new_tokens), EOS, np.int32)
  mask = np.zeros((len(prompts), width + new_tokens), bool)
  for i, prompt in enumerate(prompts):
    ids = CharTokenizer().encode(prompt)
    tokens[i, width - len(ids):width] = ids
    mask[i, width - len(ids):width] = True
  for t in range(new_tokens):
    tokens[:, width + t] = np.argmax(full(tokens, mask)[:, width - 1 + t], axis=-1)
    mask[:, width + t] = True
  return tokens, mask


def test_greedy_with_cache_equals_argmax_by_full_recomputation(model, sampler_no_eos):
  out = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  tokens, mask = greedy_by_full_recomputation(model, PROMPTS, P, T)
  np.testing.assert_array_equal(out.input_mask[:, :P], mask[:, :P])
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.response_mask, np.ones((len(PROMPTS), T)))
  assert out.finish_reasons == ["length"] * len(PROMPTS)
  # Greedy log-probs are at temperature 1.
  np.testing.assert_allclose(out.logp, teacher_forced_logp(model, out, 1.0), atol=1e-5)


@pytest.mark.parametrize("family", [
    dict(qkv_bias=True),  # Qwen2
    dict(qk_norm=True, tie_word_embeddings=False),  # Qwen3, untied head
])
def test_greedy_equals_full_recomputation_for_each_family(family):
  m = decoder.create_model(tiny(vocab_size=V).replace(num_layers=2, **family), seed=0)
  # Random biases and norm scales (they start at 0 and 1).
  state = nnx.state(m, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(m, jax.tree.unflatten(treedef, [
      a + 0.1 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]))
  s = sampler_lib.Sampler(m, CharTokenizer(), max_prompt_len=24, max_new_tokens=T,
                          eos_token_ids=())
  out = s.generate(PREFIXED, key=jax.random.key(0), greedy=True)
  tokens, _ = greedy_by_full_recomputation(m, PREFIXED, 24, T)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_allclose(out.logp, teacher_forced_logp(m, out, 1.0), atol=1e-5)


def test_phased_decode_equals_argmax_by_full_recomputation(model):
  # 64 new tokens decode in 2 phases (a cache of P + 32, then of P + 63).
  s = sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=P, max_new_tokens=64,
                          eos_token_ids=())
  out = s.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  tokens, _ = greedy_by_full_recomputation(model, PROMPTS, P, 64)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_allclose(out.logp, teacher_forced_logp(model, out, 1.0), atol=1e-5)


def test_shared_prefix_and_repeated_prompts_equal_full_recomputation(model):
  assert sampler_lib._shared_prefix_len([CharTokenizer().encode(p) for p in PREFIXED]) == 16
  s = sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=24, max_new_tokens=T,
                          eos_token_ids=())
  out = s.generate(PREFIXED, key=jax.random.key(0), greedy=True, num_samples=2)
  tokens, mask = greedy_by_full_recomputation(model, PREFIXED, 24, T)
  np.testing.assert_array_equal(out.tokens, np.repeat(tokens, 2, axis=0))
  np.testing.assert_array_equal(out.input_mask, np.repeat(mask, 2, axis=0))
  np.testing.assert_allclose(out.logp, teacher_forced_logp(model, out, 1.0), atol=1e-5)
  sampled = s.generate(PREFIXED, key=jax.random.key(1), temperature=0.7, num_samples=3)
  np.testing.assert_array_less(np.abs(sampled.logp - teacher_forced_logp(model, sampled, 0.7)),
                               1e-5)
  assert len({tuple(r) for r in sampled.tokens[:3, 24:]}) > 1  # one prompt, distinct draws


def test_prompt_layout_shared_prefix_and_prefill_rows():
  rows = [[5, 6, 7, 8, 9], [5, 6, 7, 1]]
  tokens, mask = sampler_lib._prompt_layout(rows, 3, 6, 2, 0)
  np.testing.assert_array_equal(tokens, [[5, 6, 0, 7, 8, 9], [5, 6, 0, 0, 7, 1], [0] * 6])
  np.testing.assert_array_equal(mask, tokens > 0)
  tokens, _ = sampler_lib._prompt_layout(rows, 2, 6, 0, 0)
  np.testing.assert_array_equal(tokens, [[0, 5, 6, 7, 8, 9], [0, 0, 5, 6, 7, 1]])
  # 9 shared tokens round down to 8; a prefix always leaves each row a token.
  assert sampler_lib._shared_prefix_len([list(range(12)), list(range(9)) + [0]]) == 8
  assert sampler_lib._shared_prefix_len([list(range(8)), list(range(8))]) == 0
  assert sampler_lib._shared_prefix_len([list(range(9)), list(range(9))]) == 8
  # Prefill rows: 32 rows of 8 prompts -> 8; 9 prompts -> 16; 4 batch shards
  # keep a multiple of 4; an odd row count cannot halve.
  assert sampler_lib._prefill_rows(8, 32, 1) == 8
  assert sampler_lib._prefill_rows(9, 32, 1) == 16
  assert sampler_lib._prefill_rows(1, 8, 4) == 4
  assert sampler_lib._prefill_rows(3, 6, 1) == 3
  assert sampler_lib._prefill_rows(2, 7, 1) == 7


@pytest.mark.parametrize("top_k, top_p", [(20, 0.9), (0, 0.8)])
def test_logprobs_equal_teacher_forced_at_same_temperature(model, sampler, top_k, top_p):
  out = sampler.generate(PROMPTS, key=jax.random.key(3), temperature=0.7, top_k=top_k,
                         top_p=top_p, num_samples=2)
  m = out.response_mask
  assert m.sum() > 0
  ref = teacher_forced_logp(model, out, 0.7)
  np.testing.assert_array_less(np.abs(out.logp - ref) * m, 1e-5)
  np.testing.assert_array_equal(out.logp * (1 - m), 0.0)


def test_same_key_same_output_and_different_key_differs(sampler):
  kwargs = dict(temperature=0.7, top_k=20, top_p=0.9, num_samples=2)
  a = sampler.generate(PROMPTS, key=jax.random.key(3), **kwargs)
  b = sampler.generate(PROMPTS, key=jax.random.key(3), **kwargs)
  c = sampler.generate(PROMPTS, key=jax.random.key(4), **kwargs)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logp, b.logp)
  assert a.texts == b.texts
  assert not np.array_equal(a.tokens, c.tokens)


def test_num_samples_repeats_each_prompt_in_adjacent_rows(sampler):
  out = sampler.generate(PROMPTS, key=jax.random.key(3), temperature=0.7, top_k=20,
                         top_p=0.9, num_samples=2)
  assert out.tokens.shape == (2 * len(PROMPTS), P + T)
  for i, prompt in enumerate(PROMPTS):
    ids = CharTokenizer().encode(prompt)
    for row in (2 * i, 2 * i + 1):
      np.testing.assert_array_equal(out.tokens[row, P - len(ids):P], ids)
      assert out.input_mask[row, :P].sum() == len(ids)


def test_eos_stops_a_row_and_masks_after_it(model, sampler_no_eos):
  free = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  response = free.tokens[:, P:]
  eos = int(response[0, 2])  # row 0 then ends at its first use of this id
  stopped = sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=P, max_new_tokens=T,
                                eos_token_ids=(eos,)).generate(
                                    PROMPTS, key=jax.random.key(0), greedy=True)
  for i in range(len(PROMPTS)):
    hits = np.flatnonzero(response[i] == eos)
    n = hits[0] + 1 if hits.size else T  # tokens kept, EOS included
    np.testing.assert_array_equal(stopped.tokens[i, P:P + n], response[i, :n])
    np.testing.assert_array_equal(stopped.tokens[i, P + n:], EOS)  # the pad id
    np.testing.assert_array_equal(stopped.response_mask[i], np.arange(T) < n)
    np.testing.assert_array_equal(stopped.input_mask[i, P:], np.arange(T) < n)
    np.testing.assert_array_equal(stopped.logp[i, n:], 0.0)
    np.testing.assert_allclose(stopped.logp[i, :n], free.logp[i, :n], atol=1e-6)
    assert stopped.finish_reasons[i] == ("eos" if hits.size else "length")
    assert stopped.texts[i] == CharTokenizer().decode(response[i, :n - bool(hits.size)])
  assert stopped.finish_reasons[0] == "eos"


def test_stop_string_stops_and_truncates(sampler_no_eos):
  free = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  stop = free.texts[0][2:4]
  assert len(stop) == 2
  out = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True,
                                stop_strings=[stop])
  decode = CharTokenizer().decode
  for i in range(len(PROMPTS)):
    response = list(free.tokens[i, P:])
    # Reference: the shortest prefix whose text holds the stop string.
    n = next((n for n in range(1, T + 1) if stop in decode(response[:n])), None)
    assert out.finish_reasons[i] == ("stop" if n else "length")
    # The text stops before the stop string (vLLM's default); the tokens keep it.
    text = decode(response[:n or T])
    assert out.texts[i] == (text[:text.index(stop)] if n else text)
    n = n or T
    np.testing.assert_array_equal(out.tokens[i, P:P + n], response[:n])
    np.testing.assert_array_equal(out.tokens[i, P + n:], EOS)
    np.testing.assert_array_equal(out.response_mask[i], np.arange(T) < n)
    np.testing.assert_array_equal(out.logp[i, n:], 0.0)
  first = free.texts[0].index(stop)
  assert out.texts[0] == free.texts[0][:first] and out.finish_reasons[0] == "stop"


def test_first_stop_with_multi_character_tokens():
  pieces = {0: "ab", 1: "c</", 2: "s>x", 3: "yz", 4: "</s>"}
  decode = lambda ids: "".join(pieces[i] for i in ids)
  # "ab" "c</" "s>x": the prefix of 3 tokens is the first to hold "</s>".
  assert sampler_lib.first_stop([0, 1, 2, 3, 4], ["</s>"], decode) == 3
  # The earliest of two stop strings wins: "c<" ends inside token 1.
  assert sampler_lib.first_stop([0, 1, 2, 3], ["</s>", "c<"], decode) == 2
  assert sampler_lib.first_stop([0, 3], ["</s>"], decode) is None
  assert sampler_lib.first_stop([0, 1], [], decode) is None


def test_stop_sequences_and_their_window_by_hand():
  # 'a' = 3, 'b' = 4, 'c' = 5: "ab" fills the width 2, "c" is left-padded
  # with the wildcard -1.
  seqs = sampler_lib.encode_stop_sequences(CharTokenizer(), ["ab", "c"])
  np.testing.assert_array_equal(seqs, [[3, 4], [-1, 5]])
  window = sampler_lib.empty_stop_window(3, jnp.asarray(seqs))
  np.testing.assert_array_equal(window, [[-2, -2]] * 3)  # matches no token
  # Step 1, tokens a, c, b: only row 1 ends with "c" (the wildcard takes -2).
  window, hit = sampler_lib.advance_stop_window(window, jnp.array([3, 5, 4]), seqs)
  np.testing.assert_array_equal(window, [[-2, 3], [-2, 5], [-2, 4]])
  np.testing.assert_array_equal(hit, [False, True, False])
  # Step 2, tokens b, a, b: row 0 now ends with "ab"; "bb" and "ca" match nothing.
  window, hit = sampler_lib.advance_stop_window(window, jnp.array([4, 3, 4]), seqs)
  np.testing.assert_array_equal(window, [[3, 4], [5, 3], [4, 4]])
  np.testing.assert_array_equal(hit, [True, False, False])
  # No stop strings: [0, 0], the window stays and no row stops.
  none = sampler_lib.encode_stop_sequences(CharTokenizer(), [])
  assert none.shape == (0, 0)
  empty = sampler_lib.empty_stop_window(2, none)
  window, hit = sampler_lib.advance_stop_window(empty, jnp.array([3, 4]), none)
  assert window.shape == (2, 0) and not hit.any()
  with pytest.raises(ValueError, match="must be a sequence of strings"):
    sampler_lib.encode_stop_sequences(CharTokenizer(), "ab")
  with pytest.raises(ValueError, match="'' encodes to no tokens"):
    sampler_lib.encode_stop_sequences(CharTokenizer(), ["ab", ""])


def test_stop_tokens_end_a_row_inside_the_loop(model, sampler_no_eos):
  free = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  stop = free.texts[0][1:3]
  # A decode that puts spaces between tokens never shows `stop` to the host
  # pass, so only the loop's token match can end the rows.
  spaced = type("Spaced", (CharTokenizer,), {
      "decode": lambda self, ids, skip_special_tokens=True: " ".join(
          CharTokenizer.decode(self, [i]) for i in ids)})()
  s = sampler_lib.Sampler(model, spaced, max_prompt_len=P, max_new_tokens=T,
                          eos_token_ids=())
  out = s.generate(PROMPTS, key=jax.random.key(0), greedy=True, stop_strings=[stop])
  stop_ids = CharTokenizer().encode(stop)
  for i in range(len(PROMPTS)):
    response = list(free.tokens[i, P:])
    n = next((n for n in range(2, T + 1) if response[n - 2:n] == stop_ids), None)
    assert out.finish_reasons[i] == ("stop" if n else "length")
    np.testing.assert_array_equal(out.response_mask[i], np.arange(T) < (n or T))
  assert out.finish_reasons[0] == "stop"


def test_max_new_tokens_is_the_response_width_and_a_cap(sampler):
  out = sampler.generate(PROMPTS, key=jax.random.key(5), temperature=0.7, top_k=20,
                         top_p=0.9, num_samples=2)
  assert out.tokens.shape == (2 * len(PROMPTS), P + T)
  assert out.response_mask.shape == (2 * len(PROMPTS), T)
  for i, reason in enumerate(out.finish_reasons):
    n = int(out.response_mask[i].sum())
    last = out.tokens[i, P + n - 1]
    assert (reason, last == EOS) in (("eos", True), ("length", False))
    assert n == T or reason == "eos"


def test_top_k_one_equals_greedy(sampler_no_eos):
  greedy = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  top1 = sampler_no_eos.generate(PROMPTS, key=jax.random.key(9), temperature=0.7, top_k=1)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  zero_temperature = sampler_no_eos.generate(PROMPTS, key=jax.random.key(9), temperature=0.0)
  np.testing.assert_array_equal(zero_temperature.tokens, greedy.tokens)


# ---------------------------------------------------------------------------
# The draw itself, against NumPy distributions.


def nucleus_probs(logits: np.ndarray, *, temperature: float, top_k: int,
                  top_p: float) -> np.ndarray:
  """HF's temperature -> top-k -> top-p filtering, renormalized, in float64."""
  z = logits.astype(np.float64) / temperature
  if top_k:
    z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  before = np.cumsum(p[order]) - p[order]  # mass strictly before each (no ties here)
  keep = np.zeros_like(p, dtype=bool)
  keep[order] = before < top_p
  p = np.where(keep, p, 0.0)
  return p / p.sum()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 1.0),  # two-level draw over 300 tokens (two blocks, one partial)
    (0.5, 7, 1.0),  # top-k
    (0.8, 12, 0.6),  # top-k then top-p of the top-k mass
    (1.0, 0, 0.5),  # top-p: the 64 candidates hold < 0.5, rejection draws
    (0.2, 0, 0.9),  # top-p: the nucleus lies in the 64 candidates
])
def test_sample_frequencies_match_numpy_distribution(temperature, top_k, top_p):
  vocab, draws = 300, 4000
  rng = np.random.default_rng(0)
  logits = rng.normal(size=vocab).astype(np.float32) * 2.0
  cfg = sampler_lib._LoopConfig(max_new_tokens=1, greedy=False, top_k=top_k,
                                use_top_p=top_p < 1, eos_token_ids=(), pad_token_id=0)
  tokens, logp = jax.jit(lambda l, k: sampler_lib._sample(
      l, k, temperature=jnp.float32(temperature), top_p=jnp.float32(top_p), cfg=cfg))(
          jnp.tile(jnp.asarray(logits)[None], (draws, 1)), jax.random.key(0))
  tokens, logp = np.asarray(tokens), np.asarray(logp)
  expected = nucleus_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  assert np.all(expected[tokens] > 0), "a token outside the kept set was drawn"
  full = logits.astype(np.float64) / temperature
  full = full - full.max() - np.log(np.exp(full - full.max()).sum())
  np.testing.assert_allclose(logp, full[tokens], atol=1e-5)
  freq = np.bincount(tokens, minlength=vocab) / draws
  sigma = np.sqrt(expected * (1 - expected) / draws)
  np.testing.assert_array_less(np.abs(freq - expected), 5 * sigma + 1e-3)


def test_top_p_sampler_never_leaves_the_nucleus(model, sampler):
  # Temperature 0.3 sharpens the random model's flat logits (std ~0.35), so
  # the nucleus holds 1 to ~17 of the 64 tokens.
  temperature, top_p = 0.3, 0.7
  sizes = []
  for seed in range(3):
    out = sampler.generate(PROMPTS, key=jax.random.key(seed), temperature=temperature,
                           top_p=top_p, num_samples=2)
    logits = full_logits_fn(model)(out.tokens, out.input_mask)
    for b, t in zip(*np.nonzero(out.response_mask)):
      keep = nucleus_probs(logits[b, P - 1 + t], temperature=temperature, top_k=0,
                           top_p=top_p) > 0
      sizes.append(keep.sum())
      assert keep[out.tokens[b, P + t]], (b, t)
  assert len(sizes) > 60 and 2 < np.mean(sizes) < V / 4  # the check is not vacuous


def test_inverse_cdf_never_draws_zero_weight():
  weights = jnp.asarray([[0.0, 1.0, 0.0, 2.0, 0.0]] * 5)
  u = jnp.asarray([0.0, 0.33, 0.34, 0.9999999, 1.0])
  # cdf = [0, 1, 1, 3, 3], r = u * 3 clipped below 3: 0 -> 1, 0.99 -> 1,
  # 1.02 -> 3, 2.9999997 -> 3, 3 -> nextafter(3, 0) -> 3.
  np.testing.assert_array_equal(sampler_lib._inverse_cdf(weights, u), [1, 1, 3, 3, 3])


# ---------------------------------------------------------------------------
# Parameters, mesh and input checks.


def test_params_are_arguments_not_constants(sampler_no_eos):
  before = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  compiled = sampler_no_eos._generate._cache_size()  # pylint: disable=protected-access
  other = decoder.create_model(tiny(vocab_size=V).replace(num_layers=2), seed=1)
  changed = sampler_no_eos.generate(PROMPTS, key=jax.random.key(0), greedy=True,
                                    params=nnx.state(other, nnx.Param))
  reference = sampler_lib.Sampler(other, CharTokenizer(), max_prompt_len=P,
                                  max_new_tokens=T, eos_token_ids=()).generate(
                                      PROMPTS, key=jax.random.key(0), greedy=True)
  np.testing.assert_array_equal(changed.tokens, reference.tokens)
  assert not np.array_equal(changed.tokens, before.tokens)
  # New parameter values (and a new Sampler of the same architecture) reuse
  # the compiled function.
  assert sampler_no_eos._generate._cache_size() == compiled  # pylint: disable=protected-access


def test_mesh_sharded_batch_equals_single_device(sampler_no_eos):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded_model = decoder.create_model(tiny(vocab_size=V).replace(num_layers=2), seed=0)
  sharding.shard_model(sharded_model, mesh)
  s = sampler_lib.Sampler(sharded_model, CharTokenizer(), max_prompt_len=P,
                          max_new_tokens=T, mesh=mesh, eos_token_ids=())
  # 3 rows on 4 batch shards: padded to 4 inside, 3 returned.
  out = s.generate(PROMPTS[:3], key=jax.random.key(0), greedy=True)
  ref = sampler_no_eos.generate(PROMPTS[:3], key=jax.random.key(0), greedy=True)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logp, ref.logp, atol=1e-5)
  # A shared prefix (prefilled on one row) and a repeated prompt, sharded.
  wide = dict(max_prompt_len=24, max_new_tokens=T, eos_token_ids=())
  out = sampler_lib.Sampler(sharded_model, CharTokenizer(), mesh=mesh, **wide).generate(
      PREFIXED[:3], key=jax.random.key(0), greedy=True)
  ref = sampler_lib.Sampler(sampler_no_eos.model, CharTokenizer(), **wide).generate(
      PREFIXED[:3], key=jax.random.key(0), greedy=True)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logp, ref.logp, atol=1e-5)


def test_prompt_bucket_pads_to_a_multiple(model):
  s = sampler_lib.Sampler(model, CharTokenizer(), max_prompt_len=16, max_new_tokens=T,
                          prompt_bucket=6, eos_token_ids=())
  # The longest prompt has 8 tokens: P = 12, the next multiple of 6 (<= 16).
  out = s.generate(PROMPTS, key=jax.random.key(0), greedy=True)
  assert out.prompt_len == 12 and out.tokens.shape == (len(PROMPTS), 12 + T)
  assert s.prompt_len == 16


def test_bad_inputs_raise_naming_the_argument(sampler):
  with pytest.raises(ValueError, match="max_prompt_len"):
    sampler.generate(["a" * (P + 1)], key=jax.random.key(0))
  with pytest.raises(ValueError, match="top_p"):
    sampler.generate(PROMPTS, key=jax.random.key(0), top_p=0.0)
  with pytest.raises(ValueError, match="stop_strings"):
    sampler.generate(PROMPTS, key=jax.random.key(0), stop_strings="ab")
  with pytest.raises(ValueError, match="temperature"):
    sampler.generate(PROMPTS, key=jax.random.key(0), temperature=-1.0)


@pytest.mark.parametrize("bad_id", [V, -1])
def test_token_id_prompts_outside_vocabulary_raise_naming_row_and_id(sampler, bad_id):
  # Id V used to give NaN log-probs and token 0; -1 wrapped around to V - 1.
  with pytest.raises(ValueError, match=rf"prompts\[1\]\[2\] = {bad_id}: token id outside "
                                       rf"the model's vocabulary \[0, vocab_size={V}\)"):
    sampler.generate([[5, 6, 7], [5, 6, bad_id]], key=jax.random.key(0))
