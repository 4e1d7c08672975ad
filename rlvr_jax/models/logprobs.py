"""Per-token log-probs (and entropies, hidden states) of response tokens.

The LM head is applied in chunks of the response length under
`jax.checkpoint`, so neither the forward nor the backward pass holds the full
[B, T, V] float32 logits: peak extra memory is [B, chunk, V].

Token ids must lie in [0, V). A jitted function cannot raise, and out of range
an id is not an error there: id V reads past the embedding table (NaN
log-probs) and -1 wraps around to V - 1. `check_token_ids` validates host
data before such a call; `response_logprobs` runs it itself when called
outside jit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.algorithms import circa
from rlvr_jax.models import shared_prompt
from rlvr_jax.models.decoder import Decoder, positions_from_mask

Array = jax.Array


def check_token_ids(tokens: Any, *, vocab_size: int, name: str = "tokens") -> None:
  """Raises ValueError unless every token id is in [0, vocab_size) (a host-side check).

  Args:
    tokens: integer token ids of any shape, e.g. one prompt [S] or a batch
      [B, S]: host data (a NumPy array, a list, a concrete jax.Array), not a
      traced array.
    vocab_size: V, the model's vocabulary size.
    name: how the error message names `tokens` (e.g. 'prompts[3]').

  Raises:
    ValueError: naming the first out-of-range id, its index (row first) and
      the number of bad ids.
  """
  ids = np.asarray(tokens)
  if ids.size == 0:
    return
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}.")
  bad = (ids < 0) | (ids >= vocab_size)
  if np.any(bad):
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"[{', '.join(map(str, index))}]" if index else ""
    row = f" in row {index[0]}" if ids.ndim >= 2 else ""
    raise ValueError(
        f"{name}{where} = {int(ids[index])}: token id{row} outside the model's vocabulary "
        f"[0, vocab_size={vocab_size}) ({int(np.sum(bad))} such id(s)).")


class TokenStats(NamedTuple):
  """Outputs of `response_logprobs`.

  Attributes:
    logp: [B, T] float32 log pi(y_t | y_<t) at the given temperature.
    entropy: [B, T] float32 entropy of the same distribution (no gradient),
      or None when not requested.
    hidden: [B, T, D] final hidden states fed to the LM head (the input of
      DelTA's token-gradient proxy), or None when not requested.
    self_certainty: [B, T] float32 KL(U || pi) per token (CIRCA's
      self-certainty, `algorithms.circa.token_self_certainty`; no gradient),
      or None when not requested.
  """

  logp: Array
  entropy: Array | None
  hidden: Array | None
  self_certainty: Array | None = None


def logprobs_from_hidden(model: Decoder, hidden: Array, targets: Array, *,
                         temperature: float = 1.0, chunk_size: int | None = None,
                         with_entropy: bool = False, with_self_certainty: bool = False
                         ) -> tuple[Array, ...]:
  """log softmax(head(h) / temperature)[target] per token, chunked over T.

  Args:
    model: the decoder (only its LM head is used).
    hidden: [B, T, D] final hidden states.
    targets: [B, T] int32 token ids to score.
    temperature: divides the logits (the sampling temperature).
    chunk_size: tokens of T per LM-head chunk; None = all of T at once.
    with_entropy: also return the entropy per token (stop-gradient).
    with_self_certainty: also return KL(U || pi) per token (stop-gradient;
      CIRCA, METHODS.md 6.5): one more reduction over V of each chunk.

  Returns:
    logp [B, T] float32 and entropy [B, T] float32 (or None); with
    `with_self_certainty`, a third entry: self-certainty [B, T] float32.
  """
  b, t, d = hidden.shape
  chunk = t if chunk_size is None else min(chunk_size, t)
  n_chunks = -(-t // chunk)
  pad = n_chunks * chunk - t
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  y = jnp.pad(targets, ((0, 0), (0, pad)))
  h = h.reshape(b, n_chunks, chunk, d).swapaxes(0, 1)
  y = y.reshape(b, n_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(args):
    h_c, y_c = args
    logits = model.logits(h_c) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, y_c[..., None], axis=-1)[..., 0] - logz
    extra = ()
    if with_self_certainty:
      extra = (circa.token_self_certainty(logits),)
    if not with_entropy:
      return (logp, jnp.zeros_like(logp)) + extra
    logits = jax.lax.stop_gradient(logits)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = jax.lax.stop_gradient(logz) - jnp.sum(probs * logits, axis=-1)
    return (logp, entropy) + extra

  if n_chunks == 1:
    outs = tuple(x[None] for x in one_chunk((h[0], y[0])))
  else:
    outs = jax.lax.map(one_chunk, (h, y))
  outs = [x.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t] for x in outs]
  logp, entropy = outs[0], outs[1]
  if with_self_certainty:
    return logp, (entropy if with_entropy else None), outs[2]
  return logp, (entropy if with_entropy else None)


def response_logprobs(model: Decoder, tokens: Array, input_mask: Array, *,
                      prompt_len: int, temperature: float = 1.0,
                      chunk_size: int | None = None, with_entropy: bool = False,
                      with_hidden: bool = False,
                      with_self_certainty: bool = False,
                      sharing: shared_prompt.Sharing | None = None,
                      response_mask: Array | None = None) -> TokenStats:
  """Teacher-forced statistics of the response part of [prompt; response] rows.

  Sequence index P - 1 + t predicts response token t (docs/CONVENTIONS.md).

  Args:
    model: the decoder.
    tokens: [B, S] int32, prompt left-padded to P then response (S = P + T);
      ids in [0, V), checked here unless traced (`check_token_ids`).
    input_mask: [B, S] bool, real tokens.
    prompt_len: P (static).
    temperature: the sampling temperature the log-probs are taken at.
    chunk_size: LM-head chunk over T (see `logprobs_from_hidden`).
    with_entropy: also return per-token entropies.
    with_hidden: also return the final hidden states [B, T, D].
    with_self_certainty: also return per-token self-certainty [B, T].
    sharing: (share, prefix_len, packed) from `shared_prompt.prompt_sharing`
      (and `pack_capacity`) for this batch: each block of `share` rows
      computes its prompt once and the batch-wide prefix once
      (`shared_prompt.shared_hidden`); with packed > 0 only the needed
      response positions run; None = every row computes its whole sequence.
    response_mask: [B, T] loss mask, required when sharing.packed > 0: the
      statistics are computed up to each row's last masked token
      (`shared_prompt.response_lengths`) and are 0 after it.

  Returns:
    TokenStats with logp [B, T] (and entropy [B, T], hidden [B, T, D],
    self_certainty [B, T]).

  Raises:
    ValueError: mismatched shapes, prompt_len outside (0, S), packing without
      a response_mask, or (for concrete tokens) a token id outside [0, V).
  """
  if tokens.shape != input_mask.shape:
    raise ValueError(
        f"tokens {tokens.shape} and input_mask {input_mask.shape} differ in shape.")
  if not 0 < prompt_len < tokens.shape[1]:
    raise ValueError(f"prompt_len={prompt_len} outside (0, S={tokens.shape[1]}).")
  if not isinstance(tokens, jax.core.Tracer) and (
      not isinstance(tokens, jax.Array) or tokens.is_fully_addressable):
    check_token_ids(tokens, vocab_size=model.config.vocab_size)
  index = None
  if sharing is None:
    positions = positions_from_mask(input_mask)
    hidden = model(tokens[:, :-1], positions[:, :-1], input_mask[:, :-1])
    hidden = hidden[:, prompt_len - 1:]
  else:
    if sharing.packed:
      if response_mask is None:
        raise ValueError(f"{sharing} packs responses: response_mask [B, T] is required.")
      index = shared_prompt.pack_index(response_mask, capacity=sharing.packed,
                                       shards=shared_prompt.pack_shards(len(tokens)))
    hidden = shared_prompt.shared_hidden(
        model, tokens, input_mask, prompt_len=prompt_len, share=sharing.share,
        prefix_len=sharing.prefix_len, index=index)
  targets = tokens[:, prompt_len:]
  if index is not None:
    targets = shared_prompt.pack(targets, index)
  out = logprobs_from_hidden(
      model, hidden, targets, temperature=temperature,
      chunk_size=chunk_size, with_entropy=with_entropy,
      with_self_certainty=with_self_certainty)
  stats = TokenStats(out[0], out[1], hidden if with_hidden else None,
                     out[2] if with_self_certainty else None)
  if index is None:
    return stats
  b, t = response_mask.shape
  return jax.tree.map(lambda x: shared_prompt.unpack(x, index, b, t), stats)
