"""Batched generation with a KV cache: one jitted prefill + decode loop.

`Sampler.generate` runs one jitted function (a prefill of the prompts, then
`jax.lax.while_loop`s of single-token decode steps that exit as soon as
every row is done) and returns the rollout layout of docs/CONVENTIONS.md:
tokens [B, S] with the prompt left-padded to P and the response
right-padded to T = max_new_tokens (S = P + T), input_mask [B, S],
response_mask [B, T] (1 up to and including EOS), the log-probs [B, T] of
the sampled tokens, the decoded texts and the finish reasons ('eos',
'stop', 'length').

Speed on XLA:CPU. The forward is `rlvr_jax.models.decode` (the decoder's
arithmetic on per-layer weights and per-layer KV caches, its
module docstring says why); this module lays the work out around it:
  * the prefill runs each distinct prompt once (a trainer's group of
    responses to one prompt shares its cache rows), and the prompts' shared
    leading tokens (a chat template's system turn, a few-shot preamble)
    once for the whole batch: in the cache those sit in the first slots of
    every row and the rest of each prompt is left-padded after them, which
    attention (masked, positions from the mask) cannot tell from plain left
    padding;
  * a decode step reads the whole KV cache, so the steps run in up to 4
    while loops over a cache that grows between them (as long as the
    tokens so far, not as the longest response);
  * a decode step's weights are laid out [out, in] and its keys with the
    slots last (`rlvr_jax.models.decode`).
Measured on the 2-core EPYC (benchmarks/generation.py, 32 x 128, f32), the
first two, the multiply-and-sum decode attention and Eigen matmuls (the
fastest there for the [in, out] layout used then) together: 20.27 s ->
17.94 s per call (best of 4, interleaved in one process); the shared prefix
alone cut the prefill from 2.9 s to 1.9 s. On the 2-core Xeon (Sapphire
Rapids; benchmarks/rl_step.py's 32 x 64), the two layouts with XLA's default
YNNPACK matmuls: 8.15 s -> 7.15 s per call (Eigen on [out, in]: 15.5 s).
Greedy decoding equals argmax decoding by full recomputation token for
token, and the sampled log-probs equal
`rlvr_jax.models.logprobs.response_logprobs` at the same temperature
(tests/test_sampler.py, with shared prefixes, repeated prompts and phases).

Sampling. Let z = logits / temperature. The returned log-prob of a sampled
token y is log softmax(z)[y] over the full vocabulary: the number the
trainer's teacher-forced `response_logprobs(..., temperature=...)` gives for
the same token, whatever top-k / top-p were used to draw it (the truncated
distribution's log-prob would be that minus the log of the kept mass; TRL
and verl also score with the untruncated distribution). Greedy decoding
(greedy=True or temperature=0) takes the argmax and reports
log softmax(logits)[y] at temperature 1. Draws use the inverse CDF with one
uniform per row, so no [B, V] random numbers are made per step (threefry
over [32, 49152] costs ~300 ms on this CPU):
  * plain sampling: a block of 256 tokens ~ its mass, then a token of the
    block ~ its mass (two independent uniforms; exact);
  * top-k: `jax.lax.top_k`, then a draw among the k candidates;
  * top-p (nucleus, as HF: token i is kept iff the mass of the tokens
    strictly more probable than i is < top_p, of the top-k mass when top-k
    is also set since HF applies top-k first). Without top-k the 64 most
    probable tokens are taken first; a row whose 64 hold >= top_p of the mass
    has its nucleus among them and draws there, the other rows draw from the
    full distribution and redraw while the token is outside the nucleus
    (exact; each round accepts with probability >= top_p). Tokens tied in
    probability at the edge are kept together. No [B, V] sort (XLA's takes
    ~2 s per step here).

Stop strings. A stop string whose standalone tokenization is a token
sequence stops its row inside the loop when those tokens are generated. The
same text can come from other tokenizations, so after generation a host
pass decodes each response, finds the first stop string in the text, keeps
the tokens up to and including the one that completes it (the policy is
trained on exactly the tokens it sampled; a later EOS is dropped) and
zeroes the masks, log-probs and tokens after it. The text is the decode of
the kept tokens cut before the stop string (vLLM's default,
`include_stop_str_in_output=False`): rewards then grade the answer the model
gave, not the start of the next question it began to invent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Sequence

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.models import decode as decode_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.models import tokenizer as tokenizer_lib

Array = jax.Array

FINISH_REASONS = ("length", "eos", "stop")  # index = finish code in the loop
_LENGTH, _EOS, _STOP = 0, 1, 2
_BLOCK = 256  # tokens per block of the two-level inverse-CDF draw
_TOP_P_CANDIDATES = 64  # tokens tried first for top-p without top-k
_NO_TOKEN = -2  # fills the stop-sequence window before the first token
_WILDCARD = -1  # left padding of a stop sequence shorter than the window
_PREFIX_MULTIPLE = 8  # shared prefixes are rounded down to this many tokens
_DECODE_PHASES = 4  # at most this many decode while loops, each over a longer cache
_PHASE_MIN_STEPS = 32  # and at least this many steps in each


@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """A generated batch (host numpy) in the rollout layout of docs/CONVENTIONS.md.

  Rows are grouped: the `num_samples` responses of one prompt are adjacent.

  Attributes:
    tokens: [B, S] int32, prompt left-padded to P, response right-padded to T
      with the pad id.
    input_mask: [B, S] bool, real prompt tokens and response tokens up to
      and including EOS (or the token that completes the first stop string).
    response_mask: [B, T] float32, the response part of `input_mask`.
    logp: [B, T] float32 log softmax(logits / temperature)[y_t] over the full
      vocabulary (module docstring); 0 where `response_mask` is 0.
    texts: B decoded responses (special tokens skipped), each cut before its
      first stop string.
    finish_reasons: B of 'eos', 'stop' or 'length'.
    prompt_len: P.
  """

  tokens: np.ndarray
  input_mask: np.ndarray
  response_mask: np.ndarray
  logp: np.ndarray
  texts: list[str]
  finish_reasons: list[str]
  prompt_len: int


@dataclasses.dataclass(frozen=True)
class _LoopConfig:
  """Static (hashable) settings of one compiled generation function."""

  max_new_tokens: int
  greedy: bool
  top_k: int
  use_top_p: bool
  eos_token_ids: tuple[int, ...]
  pad_token_id: int
  prefix_len: int = 0


# ---------------------------------------------------------------------------
# Drawing a token.


def _inverse_cdf(weights: Array, u: Array) -> Array:
  """Index i ~ weights[:, i] / sum(weights), per row, from uniforms u.

  Returns the first index whose running sum exceeds u * total; that entry
  has a positive weight, so a zero-weight entry is never drawn.

  Args:
    weights: [B, n] non-negative, each row with a positive sum.
    u: [B] uniforms in [0, 1).

  Returns:
    [B] int32 indices.
  """
  cdf = jnp.cumsum(weights, axis=-1)
  total = cdf[:, -1]
  r = jnp.minimum(u * total, jnp.nextafter(total, jnp.zeros_like(total)))
  return jnp.sum(cdf <= r[:, None], axis=-1).astype(jnp.int32)


def _draw_full(weights: Array, key: Array) -> Array:
  """Token [B] ~ weights [B, V] (unnormalized) by a two-level inverse CDF."""
  b, v = weights.shape
  n_blocks = -(-v // _BLOCK)
  blocks = jnp.pad(weights, ((0, 0), (0, n_blocks * _BLOCK - v))).reshape(b, n_blocks, _BLOCK)
  u = jax.random.uniform(key, (2, b))
  block = _inverse_cdf(jnp.sum(blocks, axis=-1), u[0])
  in_block = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
  return block * _BLOCK + _inverse_cdf(in_block, u[1])


def _mass_above(w: Array, of: Array) -> Array:
  """sum_j w[b, j] [w[b, j] > of[b, i]]: w [B, n], of [B, m] -> [B, m]."""
  return jnp.sum(jnp.where(w[:, None, :] > of[:, :, None], w[:, None, :], 0.0), axis=-1)


def _reject_outside_nucleus(w: Array, total: Array, tokens: Array, accepted: Array,
                            key: Array, *, top_p: Array) -> Array:
  """Redraws the rows not `accepted` from w [B, V] until the token is in the nucleus."""

  def body(state):
    tokens, accepted, i = state
    proposal = _draw_full(w, jax.random.fold_in(key, i))
    w_proposal = jnp.take_along_axis(w, proposal[:, None], axis=-1)
    inside = _mass_above(w, w_proposal)[:, 0] < top_p * total
    return jnp.where(~accepted & inside, proposal, tokens), accepted | inside, i + 1

  state = (tokens, accepted, jnp.int32(0))
  return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), body, state)[0]


def _sample(logits: Array, key: Array, *, temperature: Array, top_p: Array,
            cfg: _LoopConfig) -> tuple[Array, Array]:
  """Draws one token per row; returns it and its log-prob (module docstring).

  Args:
    logits: [B, V] float32.
    key: PRNG key of this step.
    temperature: scalar > 0 (unused when greedy).
    top_p: scalar in (0, 1] (used when cfg.use_top_p).
    cfg: greedy / top_k / use_top_p.

  Returns:
    tokens [B] int32 and logp [B] float32 = log softmax(logits / temperature)
    at the token (temperature 1 when greedy).
  """
  if cfg.greedy:
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    return tokens, jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - logz
  z = logits / temperature
  z_max = jnp.max(z, axis=-1, keepdims=True)
  w = jnp.exp(z - z_max)  # unnormalized probabilities, the largest is 1
  total = jnp.sum(w, axis=-1)
  draw_key, reject_key = jax.random.split(key)
  if cfg.top_k or cfg.use_top_p:
    cand_z, cand_idx = jax.lax.top_k(z, cfg.top_k or min(_TOP_P_CANDIDATES, z.shape[-1]))
    cand_w = jnp.exp(cand_z - z_max)
    cand_mass = jnp.sum(cand_w, axis=-1)
    kept = jnp.ones_like(cand_w, dtype=bool)
    if cfg.use_top_p:
      mass = cand_mass if cfg.top_k else total
      kept = _mass_above(cand_w, cand_w) < top_p * mass[:, None]
    u = jax.random.uniform(draw_key, total.shape)
    choice = _inverse_cdf(jnp.where(kept, cand_w, 0.0), u)
    tokens = jnp.take_along_axis(cand_idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if cfg.use_top_p and not cfg.top_k:
      tokens = _reject_outside_nucleus(w, total, tokens, cand_mass >= top_p * total,
                                       reject_key, top_p=top_p)
  else:
    tokens = _draw_full(w, draw_key)
  z_token = jnp.take_along_axis(z, tokens[:, None], axis=-1)[:, 0]
  return tokens, z_token - z_max[:, 0] - jnp.log(total)


# --- begin: token draws for other samplers (rlvr_jax.envs.multiturn) ---
def draw(logits: Array, key: Array, *, temperature: Array, top_p: Array, greedy: bool,
         top_k: int, use_top_p: bool) -> tuple[Array, Array]:
  """`_sample` with its settings as arguments: tokens [B] and their log-probs [B].

  Args:
    logits: [B, V] float32.
    key: PRNG key of this step.
    temperature: scalar > 0 (unused when greedy).
    top_p: scalar in (0, 1] (used when use_top_p).
    greedy: argmax decoding (log-probs at temperature 1).
    top_k: keep the k most probable tokens; 0 disables it.
    use_top_p: whether top_p applies (static).
  """
  cfg = _LoopConfig(max_new_tokens=1, greedy=greedy, top_k=top_k, use_top_p=use_top_p,
                    eos_token_ids=(), pad_token_id=0)
  return _sample(logits, key, temperature=temperature, top_p=top_p, cfg=cfg)
# --- end: token draws for other samplers ---


# ---------------------------------------------------------------------------
# The jitted generation function.


# --- begin: the stop-sequence window, for other samplers too (rlvr_jax.envs.multiturn) ---
def empty_stop_window(rows: int, stop_seqs: Array) -> Array:
  """[B, Ls] int32 window before the first token: an id that matches no stop token."""
  return jnp.full((rows, stop_seqs.shape[1]), _NO_TOKEN, jnp.int32)


def advance_stop_window(window: Array, token: Array, stop_seqs: Array) -> tuple[Array, Array]:
  """Appends one token to each row's window; which rows now end with a stop sequence.

  Args:
    window: [B, Ls] int32, each row's last Ls tokens (`empty_stop_window`
      before the first).
    token: [B] int32, the tokens just sampled.
    stop_seqs: [Ns, Ls] int32 (`encode_stop_sequences`); with Ns = 0 the
      window stays as it is and no row stops.

  Returns:
    ([B, Ls] int32 window ending with `token`, [B] bool: the window equals a
    stop sequence, wildcards matching any token).
  """
  if not stop_seqs.shape[0]:
    return window, jnp.zeros(token.shape, bool)
  window = jnp.concatenate([window[:, 1:], token[:, None]], axis=1)
  hits = (stop_seqs[None] == window[:, None]) | (stop_seqs[None] == _WILDCARD)
  return window, jnp.any(jnp.all(hits, axis=-1), axis=-1)
# --- end: the stop-sequence window ---


def _generate(graphdef: nnx.GraphDef, params: Any, rest: Any, prompt_tokens: Array,
              prompt_mask: Array, source: Array, row_valid: Array, key: Array,
              temperature: Array, top_p: Array, stop_seqs: Array, *,
              cfg: _LoopConfig) -> dict[str, Array]:
  """Prefill of the distinct prompts + decode loop of every row (jitted by `Sampler`).

  Args:
    graphdef: the decoder's graph (bound by `Sampler`).
    params: pure dict of the decoder's nnx.Param values.
    rest: pure dict of the decoder's non-parameter state (may be empty).
    prompt_tokens: [U, P] int32, the distinct prompts: their shared prefix
      in the first cfg.prefix_len slots, the rest of each left-padded to the
      end (`_prompt_layout`).
    prompt_mask: [U, P] bool.
    source: [B] int32, the prompt row of each output row.
    row_valid: [B] bool; False rows (batch padding) are done from the start.
    key: PRNG key; response token t is drawn with fold_in(key, t).
    temperature: scalar float32.
    top_p: scalar float32.
    stop_seqs: [Ns, Ls] int32 stop token sequences, right-aligned, left-padded
      with -1 (M may be 0).
    cfg: static settings.

  Returns:
    tokens [B, T] int32, logp [B, T] float32, mask [B, T] bool and
    finish [B] int32 (an index into FINISH_REASONS).
  """
  model = nnx.merge(graphdef, params, rest)
  c = model.config
  u, p = prompt_tokens.shape
  b = source.shape[0]
  t_max = cfg.max_new_tokens
  layers, head = decode_lib.decode_weights(model)

  # Prefill. The first cfg.prefix_len slots hold the prompts' shared prefix
  # (the same tokens at the same positions in every row): it runs once, on
  # one row, and every prompt's cache starts from a copy of its keys and
  # values. Then the U distinct prompts' remaining slots run, attending over
  # the prefix and causally over themselves.
  n = cfg.prefix_len
  positions = decoder_lib.positions_from_mask(prompt_mask)
  caches = [decode_lib.empty_cache(c, u, p)] * c.num_layers
  if n:
    causal = jnp.tril(jnp.ones((1, n, n), bool))
    _, prefix = decode_lib.forward(model, layers, prompt_tokens[:1, :n], positions[:1, :n],
                                   causal, [decode_lib.empty_cache(c, 1, n)] * c.num_layers, 0)
    rows = lambda a: jnp.broadcast_to(a, (u, *a.shape[1:]))
    caches = [decode_lib.pad_cache((rows(k), rows(v)), p) for k, v in prefix]
  query_slots = n + jnp.arange(p - n)
  mask = (jnp.arange(p)[None, :] <= query_slots[:, None])[None] & prompt_mask[:, None, :]
  hidden, prompt_caches = decode_lib.forward(model, layers, prompt_tokens[:, n:],
                                             positions[:, n:], mask, caches, n)

  # Each row copies its prompt's cache and the logits of its last slot.
  logits = jnp.take(decode_lib.logits(hidden[:, -1], head), source, axis=0)
  caches = [(jnp.take(k, source, axis=0), jnp.take(v, source, axis=0))
            for k, v in prompt_caches]
  prompt_mask = jnp.take(prompt_mask, source, axis=0)

  eos_ids = jnp.asarray(cfg.eos_token_ids or (_NO_TOKEN,), jnp.int32)

  def record(state, i, token, logp):
    """Writes response token i of the rows not done; updates done / finish."""
    active = ~state["done"]
    token = jnp.where(active, token, cfg.pad_token_id)
    is_eos = active & jnp.any(token[:, None] == eos_ids[None], axis=-1)
    window, is_stop = advance_stop_window(state["window"], token, stop_seqs)
    is_stop = active & ~is_eos & is_stop
    set_column = lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, i, axis=1)
    return dict(
        state,
        tokens=set_column(state["tokens"], token),
        logp=set_column(state["logp"], jnp.where(active, logp, 0.0)),
        mask=set_column(state["mask"], active),
        finish=jnp.where(is_eos, _EOS, jnp.where(is_stop, _STOP, state["finish"])),
        done=state["done"] | is_eos | is_stop,
        window=window,
        last=token)

  state = dict(
      tokens=jnp.full((b, t_max), cfg.pad_token_id, jnp.int32),
      logp=jnp.zeros((b, t_max), jnp.float32),
      mask=jnp.zeros((b, t_max), bool),
      finish=jnp.full((b,), _LENGTH, jnp.int32),
      done=~row_valid,
      window=empty_stop_window(b, stop_seqs),
      last=jnp.zeros((b,), jnp.int32),
      caches=caches,
      t=jnp.int32(1))
  sample = functools.partial(_sample, temperature=temperature, top_p=top_p, cfg=cfg)
  token, logp = sample(logits, jax.random.fold_in(key, 0))
  state = record(state, 0, token, logp)

  n_prompt = jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32)

  def body(state):
    t = state["t"]
    slot = p + t - 1  # cache slot of response token t - 1, fed now
    size = decode_lib.cache_slots(state["caches"][0])
    slots = jnp.arange(size)
    valid = jnp.pad(prompt_mask, ((0, 0), (0, size - p))) | ((slots >= p) & (slots <= slot))[None]
    hidden, caches = decode_lib.forward(
        model, layers, state["last"][:, None], (n_prompt + t - 1)[:, None],
        valid[:, None, :], state["caches"], slot)
    token, logp = sample(decode_lib.logits(hidden[:, 0], head), jax.random.fold_in(key, t))
    state = record(dict(state, caches=caches), t, token, logp)
    return dict(state, t=t + 1)

  # The decode steps t = 1 .. T - 1 run in phases of >= 32 steps, at most 4,
  # each a while loop over a cache just long enough for its steps (the cache
  # grows between phases): a step reads its whole cache, so at T = 128 this
  # cuts the cache read per step by a quarter (module docstring).
  phases = max(1, min(_DECODE_PHASES, t_max // _PHASE_MIN_STEPS))
  for j in range(phases):
    t_end = 1 + -(-(t_max - 1) * (j + 1) // phases)
    state["caches"] = [decode_lib.pad_cache(cache, p + t_end - 1) for cache in state["caches"]]
    state = jax.lax.while_loop(
        lambda state, t_end=t_end: (state["t"] < t_end) & ~jnp.all(state["done"]), body, state)
  return {name: state[name] for name in ("tokens", "logp", "mask", "finish")}


def _shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
  """Leading tokens common to every row, rounded down to a multiple of 8.

  Each row keeps at least one token after the prefix (its last prompt slot
  gives the first response token's logits). The rounding bounds the
  compilations: a chat template's or a few-shot prompt's fixed preamble
  gives the same length for every batch.
  """
  limit = min(len(r) for r in rows) - 1
  n = 0
  while n < limit and all(r[n] == rows[0][n] for r in rows):
    n += 1
  return n // _PREFIX_MULTIPLE * _PREFIX_MULTIPLE


def _prompt_layout(rows: Sequence[Sequence[int]], num_rows: int, width: int, prefix_len: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Prompt tokens and mask [num_rows, width]: each row's first prefix_len
  tokens in the first slots, the rest left-padded to the end (prefix_len = 0:
  plain left padding); rows after len(rows) are padding."""
  tokens = np.full((num_rows, width), pad_id, np.int32)
  mask = np.zeros((num_rows, width), bool)
  for i, row in enumerate(rows):
    tokens[i, :prefix_len] = row[:prefix_len]
    tokens[i, width - len(row) + prefix_len:] = row[prefix_len:]
    mask[i, :prefix_len] = True
    mask[i, width - len(row) + prefix_len:] = True
  return tokens, mask


def _prefill_rows(distinct: int, rows: int, shards: int) -> int:
  """U, the prefill rows for `distinct` prompts among `rows` (a multiple of `shards`).

  rows / 2^k for the largest k that still holds them and stays a multiple of
  `shards`: a trainer's batches (prompts x group, every prompt repeated) all
  compile to the same U, and padding wastes less than half of U.
  """
  u = rows
  while u % 2 == 0 and (u // 2) % shards == 0 and u // 2 >= distinct:
    u //= 2
  return u


@functools.lru_cache(maxsize=None)
def _jitted_generate(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh | None) -> Any:
  """`_generate` jitted for one model graph and mesh, shared by all Samplers.

  The outputs are split over the batch axes of `mesh`; the compiled code is
  cached per (input shapes, _LoopConfig), so two Samplers of models with the
  same architecture reuse each other's compilations.
  """
  out_shardings = None
  if mesh is not None:
    out_shardings = {name: sharding.batch_sharding(mesh, ndim) for name, ndim in
                     (("tokens", 2), ("logp", 2), ("mask", 2), ("finish", 1))}
  return jax.jit(functools.partial(_generate, graphdef), static_argnames=("cfg",),
                 out_shardings=out_shardings)


# ---------------------------------------------------------------------------
# Host side.


def encode_stop_sequences(tokenizer: Any, stop_strings: Sequence[str]) -> np.ndarray:
  """The stop strings as token sequences the decode loop matches (module docstring).

  Args:
    tokenizer: `encode(text, add_special_tokens=False)`.
    stop_strings: Ns texts, each encoded on its own.

  Returns:
    [Ns, Ls] int32: each sequence right-aligned in Ls = the longest one's
    length, left-padded with a wildcard that matches any token.

  Raises:
    ValueError: `stop_strings` is one string, or a stop string encodes to no
      tokens.
  """
  if isinstance(stop_strings, str):
    raise ValueError(f"stop_strings={stop_strings!r} must be a sequence of strings.")
  seqs = [list(tokenizer.encode(s, add_special_tokens=False)) for s in stop_strings]
  for s, seq in zip(stop_strings, seqs):
    if not seq:
      raise ValueError(f"stop_strings: {s!r} encodes to no tokens.")
  width = max((len(q) for q in seqs), default=0)
  out = np.full((len(seqs), width), _WILDCARD, np.int32)
  for i, seq in enumerate(seqs):
    out[i, width - len(seq):] = seq
  return out


def first_stop(tokens: Sequence[int], stop_strings: Sequence[str], decode: Any) -> int | None:
  """Tokens to keep so that the response ends with its first stop string.

  Args:
    tokens: one response's token ids (without EOS or padding).
    stop_strings: the stop strings.
    decode: token ids -> text.

  Returns:
    The smallest n such that decode(tokens[:n]) contains a stop string, or
    None when decode(tokens) contains none.
  """
  contains = lambda n: any(stop in decode(tokens[:n]) for stop in stop_strings)
  if not stop_strings or not contains(len(tokens)):
    return None
  lo, hi = 1, len(tokens)  # contains(hi) holds; binary search for the smallest
  while lo < hi:
    mid = (lo + hi) // 2
    if contains(mid):
      hi = mid
    else:
      lo = mid + 1
  return lo


class Sampler:
  """KV-cache sampler bound to a model, a tokenizer and the response width.

  The jitted function is built once per model architecture and mesh and
  compiled once per (B, P, distinct-prompt rows U, shared-prefix length,
  sampling mode, stop-sequence shape). The parameters are arguments of the
  jitted function, not constants: each call reads the model's current
  parameters (or takes `params`), so a trainer calls `generate` after every
  update without recompiling.

  Example:
    sampler = Sampler(model, tokenizer, max_prompt_len=256, max_new_tokens=512)
    out = sampler.generate(prompts, key=jax.random.key(0), num_samples=8)
  """

  def __init__(self, model: decoder_lib.Decoder, tokenizer: Any, *, max_prompt_len: int,
               max_new_tokens: int, mesh: jax.sharding.Mesh | None = None,
               prompt_bucket: int | None = None,
               eos_token_ids: Sequence[int] | None = None):
    """Builds the sampler.

    Args:
      model: the decoder; its current parameters are used at each call.
      tokenizer: an HF tokenizer (`encode`, `decode`, `eos_token_id`).
      max_prompt_len: the longest prompt in tokens; P when `prompt_bucket` is
        None.
      max_new_tokens: T, the response width and the most tokens generated.
      mesh: optional mesh; the batch is split over (data, fsdp) and the
        parameters keep their shardings.
      prompt_bucket: None for a fixed P = max_prompt_len (what a trainer
        compiled for one P needs); else P is the call's longest prompt
        rounded up to a multiple of `prompt_bucket`, capped at max_prompt_len
        (less padding; one compiled function per bucket).
      eos_token_ids: ids that end a row; default the model's and the
        tokenizer's (`models.tokenizer.eos_token_ids`). Empty: never stop
        before max_new_tokens.
    """
    if max_prompt_len < 1:
      raise ValueError(f"max_prompt_len={max_prompt_len} must be >= 1.")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    if prompt_bucket is not None and prompt_bucket < 1:
      raise ValueError(f"prompt_bucket={prompt_bucket} must be None or >= 1.")
    self.model = model
    self.tokenizer = tokenizer
    self.max_prompt_len = max_prompt_len
    self.max_new_tokens = max_new_tokens
    self.mesh = mesh
    self.prompt_bucket = prompt_bucket
    if eos_token_ids is None:
      eos_token_ids = tokenizer_lib.eos_token_ids(tokenizer, model.config)
    self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
    self.pad_token_id = int(model.config.pad_token_id)
    self._generate = _jitted_generate(nnx.split(model, nnx.Param, ...)[0], mesh)

  @property
  def prompt_len(self) -> int:
    """P when `prompt_bucket` is None (else the largest P)."""
    return self.max_prompt_len

  def _encode(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
    ids = [list(self.tokenizer.encode(p, add_special_tokens=False)) if isinstance(p, str)
           else [int(i) for i in p] for p in prompts]
    if not ids:
      raise ValueError("prompts is empty.")
    for i, row in enumerate(ids):
      if not row:
        raise ValueError(f"prompts[{i}] has no tokens.")
      if len(row) > self.max_prompt_len:
        raise ValueError(
            f"prompts[{i}] has {len(row)} tokens > max_prompt_len={self.max_prompt_len}.")
      logprobs_lib.check_token_ids(row, vocab_size=self.model.config.vocab_size,
                                   name=f"prompts[{i}]")
    return ids

  def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]], *, key: Array,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               greedy: bool = False, stop_strings: Sequence[str] = (),
               num_samples: int = 1, params: Any = None) -> SampleOutput:
    """Generates up to max_new_tokens tokens for each prompt.

    Args:
      prompts: prompt texts (encoded as they are, without adding special
        tokens: render chat templates first) or token id lists.
      key: PRNG key; the same key gives the same output.
      temperature: > 0 divides the logits; 0 means greedy.
      top_p: nucleus mass in (0, 1]; 1 disables it.
      top_k: keep the k most probable tokens; 0 disables it.
      greedy: argmax decoding (temperature, top_p and top_k are ignored).
      stop_strings: a row ends with the first of these in its text.
      num_samples: responses per prompt; the rows of one prompt are adjacent.
      params: optional decoder parameters (an nnx.State or pure dict of the
        nnx.Param values) to sample from instead of the model's current ones.

    Returns:
      A SampleOutput with B = len(prompts) * num_samples rows (host numpy,
      the whole batch on every process).
    """
    if temperature < 0:
      raise ValueError(f"temperature={temperature} must be >= 0.")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p={top_p} must be in (0, 1].")
    if not 0 <= top_k <= self.model.config.vocab_size:
      raise ValueError(f"top_k={top_k} must be in [0, vocab_size].")
    if num_samples < 1:
      raise ValueError(f"num_samples={num_samples} must be >= 1.")
    stop_seqs = encode_stop_sequences(self.tokenizer, stop_strings)
    greedy = greedy or temperature == 0
    rows = [ids for ids in self._encode(prompts) for _ in range(num_samples)]
    b = len(rows)
    p = self.max_prompt_len
    if self.prompt_bucket is not None:
      longest = max(len(r) for r in rows)
      p = min(p, -(-longest // self.prompt_bucket) * self.prompt_bucket)
    shards = sharding.batch_shards(self.mesh)
    b_padded = -(-b // shards) * shards
    index = {}  # distinct prompt -> its prefill row
    source = np.zeros((b_padded,), np.int32)
    source[:b] = [index.setdefault(tuple(r), len(index)) for r in rows]
    distinct = list(index)
    prefix_len = _shared_prefix_len(distinct)
    prompt_tokens, prompt_mask = _prompt_layout(
        distinct, _prefill_rows(len(distinct), b_padded, shards), p, prefix_len,
        self.pad_token_id)
    batch = (prompt_tokens, prompt_mask, source, np.arange(b_padded) < b)
    if self.mesh is not None:
      batch = tuple(jax.device_put(a, sharding.batch_sharding(self.mesh, a.ndim))
                    for a in batch)
    cfg = _LoopConfig(
        max_new_tokens=self.max_new_tokens, greedy=greedy,
        top_k=0 if greedy else int(top_k), use_top_p=not greedy and top_p < 1.0,
        eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id,
        prefix_len=prefix_len)
    _, model_params, rest = nnx.split(self.model, nnx.Param, ...)
    params = model_params if params is None else params
    if isinstance(params, nnx.State):
      params = nnx.to_pure_dict(params)
    mesh_context = (contextlib.nullcontext() if self.mesh is None
                    else sharding.use_mesh(self.mesh))
    with mesh_context:
      out = self._generate(
          params, nnx.to_pure_dict(rest), *batch, key,
          jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p),
          jnp.asarray(stop_seqs), cfg=cfg)
    if jax.process_count() > 1:  # every process gets the whole batch
      out = multihost_utils.process_allgather(out, tiled=True)
    out = {name: np.asarray(value)[:b] for name, value in jax.device_get(out).items()}
    return self._finish(*_prompt_layout(rows, b, p, 0, self.pad_token_id), out, stop_strings)

  def _finish(self, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
              out: dict[str, np.ndarray], stop_strings: Sequence[str]) -> SampleOutput:
    """Host post-pass: stop-string truncation, texts and the full rows."""
    tokens, logp, mask, finish = (out[k].copy() for k in ("tokens", "logp", "mask", "finish"))
    decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
    texts = []
    for i in range(tokens.shape[0]):
      ids = [int(x) for x in tokens[i, :int(mask[i].sum())]]
      if finish[i] == _EOS:
        ids = ids[:-1]
      keep = first_stop(ids, stop_strings, decode)
      if keep is not None:
        tokens[i, keep:] = self.pad_token_id
        logp[i, keep:] = 0.0
        mask[i, keep:] = False
        finish[i] = _STOP
        ids = ids[:keep]
      text = decode(ids)
      if keep is not None:  # decode(ids) contains a stop string: cut before the first
        text = text[:min(i for i in map(text.find, stop_strings) if i >= 0)]
      texts.append(text)
    return SampleOutput(
        tokens=np.concatenate([prompt_tokens, tokens], axis=1),
        input_mask=np.concatenate([prompt_mask, mask], axis=1),
        response_mask=mask.astype(np.float32),
        logp=logp,
        texts=texts,
        finish_reasons=[FINISH_REASONS[f] for f in finish],
        prompt_len=prompt_tokens.shape[1])
