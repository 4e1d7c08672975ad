"""Shared-prompt teacher forcing: each group's prompt computed once (the Prefix Grouper idea).

The G responses of one prompt are contiguous rows that carry the same
left-padded prompt, so the unshared forward (`Decoder.__call__` on [B, S])
computes every prompt token G times. Here the sequence is cut into segments:

  prefix   [1, n]          the prefix shared by every row of the batch (the
                           few-shot preamble, the system turn), optional;
  prompt   [B / share, P - 1 - n]   the rest of each group's prompt but its
                           last token, one row per block of `share` rows;
  response [B, T]          the last prompt token and the response but its
                           last token: sequence indices P - 1 .. S - 2, whose
                           hidden states predict response tokens 0 .. T - 1.

Every layer runs each segment's own rows; a segment's queries attend to the
keys and values of the segments before it repeated to its rows (the repeat
copies K/V, not their compute) and causally to its own. The key set and its
order are those of the unshared forward, so the response hidden states are
the same up to float reassociation, and the gradient of a repeated K/V is the
sum over the rows it was repeated to, by construction of `jnp.repeat`.

`prompt_sharing` finds, on the host, the block size and the batch-wide prefix
for which this is exact; `align_prefix` first moves the batch-wide prefix of
plainly left-padded rows (the sampler's output) into the first slots.

Packed responses (`Sharing.packed` > 0). A row's statistics are needed only
up to its last loss-masked token, and the positions after it (the padding
after EOS, a third of rl_step's [32, 64] responses) are never attended by a
needed one (causal). So the response segment's per-token work (projections,
MLP, LM head) runs on the needed positions alone, packed into rows of T,
[S N / T, T] (S batch shards, N = `packed` positions per shard, from
`pack_capacity` on the host); only attention scatters its queries, keys and
values back into the padded [B, T] layout and gathers its output. Outputs at
unneeded positions are 0.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding
from rlvr_jax.models import decoder as decoder_lib

Array = jax.Array

PREFIX_MULTIPLE = 8  # batch-wide prefixes are rounded down to this many tokens
PACK_BUCKETS = 8  # packed sizes step by ceil(rows / 8) rows of T: at most 8 shapes


class Sharing(NamedTuple):
  """How a batch's prompts are shared and its responses packed (static arguments).

  Attributes:
    share: rows per block of contiguous rows with the same prompt (divides
      the group size G; 1 = nothing shared within groups).
    prefix_len: n, the leading prompt slots identical and real in every row
      of the batch (a multiple of PREFIX_MULTIPLE; 0 = none).
    packed: N, response positions computed per batch shard of each
      micro-batch (`pack_capacity`); 0 = every position of [B, T].
  """

  share: int
  prefix_len: int
  packed: int = 0


def prompt_sharing(tokens: np.ndarray, input_mask: np.ndarray, *, prompt_len: int,
                   group_size: int, batch_prefix: bool = True) -> Sharing:
  """The exact sharing of a host batch: which prompt parts `shared_hidden` may compute once.

  Only the first P - 1 prompt slots are shared (the last prompt token runs
  with the response). Two rows share their prompt when their masks agree
  there and their tokens agree wherever the mask is set.

  Args:
    tokens: [B, S] int token ids (prompt left-padded to P, then response).
    input_mask: [B, S] bool real tokens.
    prompt_len: P.
    group_size: G; rows are in contiguous groups of G, G divides B.
    batch_prefix: also look for a prefix shared by every row.

  Returns:
    Sharing(share, prefix_len): share the largest divisor of G whose blocks
    of contiguous rows share their prompt; prefix_len the largest multiple of
    PREFIX_MULTIPLE n <= P - 1 with slots [0, n) real and identical in every
    row (0 unless batch_prefix).

  Raises:
    ValueError: shapes disagree, P outside (0, S), or G does not divide B.
  """
  tokens, input_mask = np.asarray(tokens), np.asarray(input_mask, bool)
  if tokens.shape != input_mask.shape or tokens.ndim != 2:
    raise ValueError(f"tokens {tokens.shape} and input_mask {input_mask.shape} must be the "
                     "same [B, S] shape.")
  b, s = tokens.shape
  if not 0 < prompt_len < s:
    raise ValueError(f"prompt_len={prompt_len} outside (0, S={s}).")
  if group_size < 1 or b % group_size:
    raise ValueError(f"group_size={group_size} does not divide the batch of {b} rows.")
  head = prompt_len - 1
  key = np.where(input_mask[:, :head], tokens[:, :head], -1)  # -1: a pad slot
  share = 1
  for k in range(group_size, 1, -1):
    if group_size % k == 0:
      blocks = key.reshape(b // k, k, head)
      if np.array_equal(blocks, np.broadcast_to(blocks[:, :1], blocks.shape)):
        share = k
        break
  prefix_len = 0
  if batch_prefix and head:
    same = np.all(key == key[:1], axis=0) & np.all(input_mask[:, :head], axis=0)
    n = head if same.all() else int(np.argmin(same))
    prefix_len = n - n % PREFIX_MULTIPLE
  return Sharing(share, prefix_len)


def align_prefix(tokens: np.ndarray, input_mask: np.ndarray, *, prompt_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Moves the real prompt tokens that every row begins with into the first slots.

  The sampler returns plainly left-padded rows, so a preamble shared by all
  prompts (the few-shot example, the system turn) sits at a different column
  in prompts of different lengths. Here each row's first n real prompt
  tokens go to slots [0, n) and the rest stays right-aligned at P (the
  sampler's own prefill layout), n the longest common start of the real
  prompt tokens before slot P - 1, rounded down to PREFIX_MULTIPLE. Each real
  token keeps its position (cumsum of the mask) and sees the same real keys
  before it, so every statistic of the real tokens is unchanged; only pad
  slots move.

  Args:
    tokens: [B, S] token ids, prompt left-padded to P.
    input_mask: [B, S] bool real tokens.
    prompt_len: P.

  Returns:
    (tokens, input_mask) [B, S], new arrays; the response slots unchanged.
  """
  tokens, input_mask = np.array(tokens), np.array(input_mask, bool)
  p = prompt_len
  reals = [row[keep] for row, keep in zip(tokens[:, :p], input_mask[:, :p])]
  limit = min(len(r) for r in reals) - 1
  n = 0
  while n < limit and all(r[n] == reals[0][n] for r in reals):
    n += 1
  n -= n % PREFIX_MULTIPLE
  if n == 0:
    return tokens, input_mask
  for i, real in enumerate(reals):
    pad = tokens[i, :p][~input_mask[i, :p]]
    fill = pad[0] if len(pad) else 0
    tokens[i, :p], input_mask[i, :p] = fill, False
    tokens[i, :n], input_mask[i, :n] = real[:n], True
    tokens[i, p - len(real) + n:p], input_mask[i, p - len(real) + n:p] = real[n:], True
  return tokens, input_mask


def response_lengths(response_mask: Array) -> Array:
  """[B, T] loss mask -> [B] int32: 1 + the last masked position (0 for none).

  The positions a row's statistics are needed at: t < length (an earlier
  unmasked token, e.g. before SCRL's answer span, is still a needed key).
  Works on NumPy (host) and jax (traced) arrays alike.
  """
  xp = np if isinstance(response_mask, np.ndarray) else jnp
  t = response_mask.shape[1]
  return xp.max(xp.where(response_mask > 0, xp.arange(1, t + 1), 0), axis=1).astype(xp.int32)


def pack_capacity(response_mask: np.ndarray, *, num_micro: int, block: int, shards: int,
                  num_mini: int = 1, group_size: int = 1,
                  compiled: Collection[int] = ()) -> int:
  """`Sharing.packed` for a host batch: enough positions for every micro-batch shard.

  Follows the device split exactly: mini-batch k = groups k, k + num_mini, ...
  (`loop._split_minis`), micro-batch m of it = blocks m, m + M, ...
  (`step.split_micro_batches`), and shard d of a micro-batch = its d-th
  contiguous 1/S of rows. The most needed positions over all of them is
  rounded up to whole rows of T, ceil(rows / PACK_BUCKETS) rows at a time (at
  most PACK_BUCKETS shapes, so at most that many compilations); a size in
  `compiled` one such step above that is taken instead (a batch needing a
  little less than the last one reuses its program, not a new compilation).

  Args:
    response_mask: [B, T] loss mask.
    num_micro: M micro-batches per mini-batch.
    block: rows per block kept whole in a micro-batch (`Sharing.share`).
    shards: batch shards of the mesh (data x fsdp); S = `pack_shards` of it.
    num_mini: mini-batches the batch is cut into.
    group_size: rows per group kept whole in a mini-batch.
    compiled: the sizes this pass already ran with.

  Returns:
    N, a multiple of T in [T, rows per shard x T].
  """
  lengths = response_lengths(np.asarray(response_mask))
  b, t = np.shape(response_mask)
  minis = lengths.reshape(-1, num_mini, group_size).swapaxes(0, 1).reshape(num_mini, -1)
  shards = pack_shards(b // (num_mini * num_micro), shards)
  rows = b // (num_mini * num_micro * shards)
  micro = minis.reshape(num_mini, -1, num_micro, block).swapaxes(1, 2)
  need = int(micro.reshape(num_mini, num_micro, shards, rows).sum(-1).max())
  quantum = t * -(-rows // PACK_BUCKETS)
  size = min(rows * t, max(1, -(-need // quantum)) * quantum)
  return size if size in compiled or size + quantum not in compiled else size + quantum


def pack_index(response_mask: Array, *, capacity: int, shards: int) -> Array:
  """[B, T] loss mask -> [S, N / T, T] int32: each shard's needed positions, packed.

  Entry [d, r, l] is the (r T + l)-th needed position (row-major,
  `response_lengths`) of shard d's rows, as a flat index into its [B / S x T]
  positions; the unused tail holds B / S x T (out of range: scatters drop it,
  gathers fill 0). Packed arrays are rows of T positions, [S N / T, T, ...],
  so that the per-token work keeps B-like leading dimensions.
  """
  b, t = response_mask.shape
  keep = jnp.arange(t)[None] < response_lengths(response_mask)[:, None]
  keep = sharding.constrain(keep.reshape(shards, b // shards * t), ("batch", None))
  size = b // shards * t
  index = jax.vmap(lambda k: jnp.nonzero(k, size=capacity, fill_value=size)[0])(keep)
  return index.reshape(shards, capacity // t, t)


def pack(x: Array, index: Array) -> Array:
  """[B, T, ...] -> [S R, L, ...]: the positions `index` ([S, R, L]) names, 0 past the end."""
  s, r, length = index.shape
  flat = x.reshape((s, x.shape[0] // s * x.shape[1]) + x.shape[2:])
  out = jax.vmap(lambda f, i: f.at[i].get(mode="fill", fill_value=0))(
      flat, index.reshape(s, r * length))
  return out.reshape((s * r, length) + x.shape[2:])


def unpack(x: Array, index: Array, rows: int, length: int) -> Array:
  """[S R, L, ...] -> [B, T, ...] (B = rows, T = length): `pack`'s inverse, 0 elsewhere."""
  s = index.shape[0]
  flat = jnp.zeros((s, rows // s * length) + x.shape[2:], x.dtype)
  flat = jax.vmap(lambda f, i, v: f.at[i].set(v, mode="drop"))(
      flat, index.reshape(s, -1), x.reshape((s, -1) + x.shape[2:]))
  return flat.reshape((rows, length) + x.shape[2:])


def pack_shards(rows: int, shards: int | None = None) -> int:
  """S for a micro-batch of `rows`: the mesh's batch shards if they divide it, else 1.

  Args:
    rows: rows of the micro-batch.
    shards: batch shards (data x fsdp); None = those of the current mesh (1
      without one), as seen inside jit.
  """
  if shards is None:
    shards = sharding.batch_shards(jax.sharding.get_abstract_mesh())
  return shards if rows % shards == 0 else 1


class _Segment(NamedTuple):
  """One segment: input x [R, L, D], positions [R, L], key mask [R, L].

  A packed segment (`index` [S, N / T, T]) holds x [S N / T, T, D] and
  positions [S N / T, T]; its key mask stays [R, L], the padded layout its
  attention runs in.
  """

  x: Array
  positions: Array
  key_mask: Array
  index: Array | None = None


def _layer(block: decoder_lib.Block, xs: tuple[Array, ...], segments: tuple[_Segment, ...],
           masks: tuple[Array, ...]) -> tuple[Array, ...]:
  """One decoder block over all segments; segment j attends to segments 0..j.

  Args:
    block: the layer's Block.
    xs: per segment j, its input [R_j, L_j, D] (packed rows when packed).
    segments: positions, key masks and packing per segment.
    masks: per segment j, [R_j, L_j, L_0 + ... + L_j] bool attention mask.

  Returns:
    Per segment, the block's output, shaped as its input.
  """
  keys, values, outs = [], [], []
  for j, (x, seg) in enumerate(zip(xs, segments)):
    q, k, v = block.attn.qkv(block.attn_norm(x), seg.positions)
    if seg.index is not None:
      q, k, v = (unpack(a, seg.index, *seg.key_mask.shape) for a in (q, k, v))
    keys.append(k)
    values.append(v)
    rows = q.shape[0]
    k_all = jnp.concatenate([jnp.repeat(kk, rows // kk.shape[0], axis=0) for kk in keys], axis=1)
    v_all = jnp.concatenate([jnp.repeat(vv, rows // vv.shape[0], axis=0) for vv in values],
                            axis=1)
    out = decoder_lib.attend(q, k_all, v_all, masks[j])
    if seg.index is not None:
      out = pack(out, seg.index)
    x = x + block.attn.o(out)
    x = x + block.mlp(block.mlp_norm(x))
    outs.append(sharding.constrain(x, ("batch", None, None)))
  return tuple(outs)


def shared_hidden(model: decoder_lib.Decoder, tokens: Array, input_mask: Array, *,
                  prompt_len: int, share: int, prefix_len: int = 0,
                  index: Array | None = None, scan_unroll: int = 1) -> Array:
  """Final-norm hidden states [B, T, D] at sequence indices P - 1 .. S - 2, prompts shared.

  Equals `model(tokens[:, :-1], positions, input_mask[:, :-1])[:, P - 1:]`
  (positions from the mask) whenever `prompt_sharing` gave (share,
  prefix_len) for this batch: each block of `share` rows runs its prompt's
  first P - 1 - n slots once, and the first n slots run once for the batch.
  With `index` (`pack_index`), only the response positions it names run,
  packed, and the result is `pack` of the above.

  Args:
    model: the decoder.
    tokens: [B, S] int32, prompt left-padded to P, then the response.
    input_mask: [B, S] bool real tokens.
    prompt_len: P (static).
    share: rows per block sharing a prompt (static, divides B).
    prefix_len: n, slots [0, n) shared by every row (static, < P).
    index: [S, N / T, T] packed response positions (`pack_index`), or None.
    scan_unroll: unroll factor of the scan over layers.

  Returns:
    [B, T, D] hidden states in the compute dtype (T = S - P); the packed
    rows [S N / T, T, D] with `index`.

  Raises:
    ValueError: share does not divide B, or prefix_len outside [0, P).
  """
  b, s = tokens.shape
  p, n = prompt_len, prefix_len
  if share < 1 or b % share:
    raise ValueError(f"share={share} does not divide the batch of {b} rows.")
  if not 0 <= n < p:
    raise ValueError(f"prefix_len={n} outside [0, prompt_len={p}).")
  c = model.config
  dtype = jnp.dtype(c.dtype)
  positions = decoder_lib.positions_from_mask(input_mask)
  spans = [(slice(0, 1), slice(0, n)),
           (slice(None, None, share), slice(n, p - 1)),
           (slice(None), slice(p - 1, s - 1))]
  spans = [span for span in spans if span[1].stop > span[1].start]
  segments = []
  for j, (rows, cols) in enumerate(spans):
    ids, pos, seg_index = tokens[rows, cols], positions[rows, cols], None
    if index is not None and j == len(spans) - 1:
      ids, pos, seg_index = pack(ids, index), pack(pos, index), index
    x = model.embed(ids).astype(dtype)
    segments.append(_Segment(sharding.constrain(x, ("batch", None, None)), pos,
                             input_mask[rows, cols], seg_index))
  masks = []
  for j, seg in enumerate(segments):
    r, length = seg.key_mask.shape
    causal = jnp.arange(length)[None, :] <= jnp.arange(length)[:, None]
    parts = [jnp.broadcast_to(
        jnp.repeat(prev.key_mask, r // prev.key_mask.shape[0], axis=0)[:, None],
        (r, length, prev.key_mask.shape[1])) for prev in segments[:j]]
    parts.append(causal[None] & seg.key_mask[:, None, :])
    masks.append(jnp.concatenate(parts, axis=-1))
  masks = tuple(masks)
  segments = tuple(segments)

  graphdef, layer_state = nnx.split(model.layers)

  def body(xs, state):
    return _layer(nnx.merge(graphdef, state), xs, segments, masks), None

  if c.remat != "none":
    policy = decoder_lib._REMAT_POLICIES[c.remat]  # pylint: disable=protected-access
    body = jax.checkpoint(body, policy=policy, prevent_cse=False)
  xs, _ = jax.lax.scan(body, tuple(seg.x for seg in segments), layer_state, unroll=scan_unroll)
  return model.final_norm(xs[-1])


def shared_tokens(*, batch_rows: int, prompt_len: int, seq_len: int, share: int,
                  prefix_len: int, packed_rows: int = 0) -> int:
  """Token positions one shared forward runs: n + (B / share)(P - 1 - n) + B (S - P).

  With packed responses, `packed_rows` x T response positions replace B x T
  (T = S - P; per micro-batch and shard, `Sharing.packed` / T rows).
  """
  t = seq_len - prompt_len
  return (prefix_len + batch_rows // share * (prompt_len - 1 - prefix_len)
          + (packed_rows or batch_rows) * t)
