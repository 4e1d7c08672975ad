"""Shared-prompt forward/backward (issue 14): equal to the unshared path, by construction.

Every comparison runs the same batch through today's path (each row computes
its whole sequence) and the shared one (each group's prompt once, the
batch-wide prefix once) on tiny random Llama / Qwen2 / Qwen3 configs with
left-padded prompts of mixed lengths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import special

from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax import sharding
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.models import shared_prompt
from rlvr_jax.training import loop
from rlvr_jax.training import step as step_lib
from test_delta import _reference as delta_reference

_BASE = config_lib.tiny(vocab_size=64).replace(
    num_layers=2, hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
    head_dim=8)
_ARCHS = {
    "llama": _BASE,
    "qwen2": _BASE.replace(qkv_bias=True, tie_word_embeddings=False, rope_theta=1e6),
    "qwen3": _BASE.replace(qk_norm=True, tie_word_embeddings=False, rope_theta=1e6),
}
_P, _T, _N = 20, 6, 8  # prompt slots, response slots, batch-wide prefix


def _batch(*, groups, group_size, prefix, seed=0, aligned=True):
  """A rollout batch laid out as the sampler lays it out.

  Each group's prompt: the batch-wide prefix of _N tokens (when `prefix`)
  then 3 to 12 tokens of its own (so the groups' prompt lengths differ),
  left-padded to _P; `aligned` puts the prefix in the first _N slots (the
  layout of `shared_prompt.align_prefix`), else the whole prompt is
  right-aligned (the sampler's output). Each response has 1 to _T real tokens.
  """
  rng = np.random.default_rng(seed)
  b = groups * group_size
  tokens = rng.integers(0, _BASE.vocab_size, (b, _P + _T)).astype(np.int32)
  mask = np.ones((b, _P + _T), bool)
  tokens[:, :_P], mask[:, :_P] = 2, False  # the pad id
  head = rng.integers(0, _BASE.vocab_size, _N if prefix else 0)
  for u in range(groups):
    own = rng.integers(0, _BASE.vocab_size, rng.integers(3, 13))
    rows = slice(u * group_size, (u + 1) * group_size)
    if aligned:
      tokens[rows, :len(head)], mask[rows, :len(head)] = head, True
      tokens[rows, _P - len(own):_P], mask[rows, _P - len(own):_P] = own, True
    else:
      real = np.concatenate([head, own])
      tokens[rows, _P - len(real):_P], mask[rows, _P - len(real):_P] = real, True
  length = rng.integers(1, _T + 1, b)
  response_mask = (np.arange(_T)[None] < length[:, None]).astype(np.float32)
  mask[:, _P:] = response_mask > 0
  adv = np.repeat(rng.normal(size=(b, 1)), _T, axis=1) * response_mask
  return {
      "tokens": tokens, "input_mask": mask, "response_mask": response_mask,
      "old_logp": rng.normal(-3.0, 0.3, (b, _T)).astype(np.float32),
      "advantages": adv.astype(np.float32),
  }


def _assert_close(got, want, rtol=1e-5, scale=None):
  """Relative closeness; near-zero entries within rtol of `scale` (default: the largest)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.abs(want).max() if scale is None else scale
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30))


def test_prompt_sharing_by_hand():
  # P = 10: slots 0..8 may be shared (slot 9 runs with the response).
  # Rows 0, 1 share a prompt, rows 2, 3 share another; slots 0..7 are the
  # same real tokens in all rows; row 1's pad slot holds another id (ignored).
  p = 10
  prompt_a = [5, 5, 5, 5, 5, 5, 5, 5, 0, 7]  # slot 8 is padding
  prompt_b = [5, 5, 5, 5, 5, 5, 5, 5, 9, 7]
  mask_a = [1] * 8 + [0, 1]
  tokens = np.array([prompt_a + [1], [5] * 8 + [3, 7, 1], prompt_b + [1], prompt_b + [1]])
  mask = np.array([mask_a + [1], mask_a + [1], [1] * 11, [1] * 11], bool)
  sharing = shared_prompt.prompt_sharing(tokens, mask, prompt_len=p, group_size=2)
  assert sharing == shared_prompt.Sharing(share=2, prefix_len=8)
  # Groups of 4 hold two prompts: blocks of 2 still share (SCRL's halves).
  assert shared_prompt.prompt_sharing(tokens, mask, prompt_len=p, group_size=4).share == 2
  # Row 3's slot 8 differs from row 2's: nothing shared within groups; slot 3
  # differs across rows: the batch prefix (3 slots) rounds down to 0.
  tokens[3, 8], tokens[0, 3] = 4, 6
  assert shared_prompt.prompt_sharing(tokens, mask, prompt_len=p,
                                      group_size=2) == shared_prompt.Sharing(1, 0)
  assert shared_prompt.prompt_sharing(tokens, mask, prompt_len=p, group_size=2,
                                      batch_prefix=False).prefix_len == 0
  with pytest.raises(ValueError, match="group_size=3"):
    shared_prompt.prompt_sharing(tokens, mask, prompt_len=p, group_size=3)


def test_align_prefix_by_hand_and_on_a_batch():
  # P = 12; both rows begin with the 8 real tokens 1..8; row 0 has 2 pad
  # slots, row 1 none. Row 0's prefix moves to slots 0..7, its pads to 8..9.
  tokens = np.array([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 4],
                     [1, 2, 3, 4, 5, 6, 7, 8, 5, 5, 5, 5, 4]])
  mask = np.array([[0, 0] + [1] * 11, [1] * 13], bool)
  new_tokens, new_mask = shared_prompt.align_prefix(tokens, mask, prompt_len=12)
  np.testing.assert_array_equal(new_tokens[0], [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 9, 9, 4])
  np.testing.assert_array_equal(new_mask[0], [1] * 8 + [0, 0] + [1] * 3)
  np.testing.assert_array_equal(new_tokens[1], tokens[1])
  np.testing.assert_array_equal(new_mask[1], mask[1])
  plain = _batch(groups=3, group_size=2, prefix=True, aligned=False)
  aligned = _batch(groups=3, group_size=2, prefix=True, aligned=True)
  got = shared_prompt.align_prefix(plain["tokens"], plain["input_mask"], prompt_len=_P)
  np.testing.assert_array_equal(got[1], aligned["input_mask"])
  np.testing.assert_array_equal(np.where(got[1], got[0], -1),
                                np.where(aligned["input_mask"], aligned["tokens"], -1))


def test_split_micro_batches_keeps_blocks_whole():
  # B = 8 rows in blocks of 2, M = 2: micro 0 = blocks 0, 2 = rows 0 1 4 5.
  x = jnp.arange(8)
  micro = step_lib.split_micro_batches({"x": x}, 2, block=2)["x"]
  np.testing.assert_array_equal(micro, [[0, 1, 4, 5], [2, 3, 6, 7]])
  np.testing.assert_array_equal(step_lib.merge_micro_batches(micro, block=2), x)
  np.testing.assert_array_equal(step_lib.split_micro_batches({"x": x}, 2)["x"],
                                [[0, 2, 4, 6], [1, 3, 5, 7]])
  with pytest.raises(ValueError, match="whole 4-row blocks"):
    step_lib.split_micro_batches({"x": x}, 4, block=4)


def test_pack_capacity_index_and_round_trip_by_hand():
  # B = 8, T = 4, loss masks with a hole (row 1: tokens 0, 2 masked, 1 not):
  # needed lengths 1 + last masked = [2, 3, 0, 4, 1, 4, 2, 0].
  mask = np.zeros((8, 4), np.float32)
  for row, masked in enumerate([[0, 1], [0, 2], [], [0, 1, 2, 3], [0], [3], [1], []]):
    mask[row, masked] = 1.0
  lengths = [2, 3, 0, 4, 1, 4, 2, 0]
  np.testing.assert_array_equal(shared_prompt.response_lengths(mask), lengths)
  np.testing.assert_array_equal(shared_prompt.response_lengths(jnp.asarray(mask)), lengths)
  # One micro-batch, one shard: 16 needed of 32; quantum ceil(8 / 8) = 1 row of T.
  assert shared_prompt.pack_capacity(mask, num_micro=1, block=1, shards=1) == 16
  # M = 2 in blocks of 2: micro 0 = rows 0 1 4 5 (10 needed), micro 1 = rows
  # 2 3 6 7 (6) -> 10 -> 12 (3 rows of T). With 2 shards, micro 0's shards
  # are rows 0 1 (5) and 4 5 (5), micro 1's rows 2 3 (4) and 6 7 (2) -> 8.
  assert shared_prompt.pack_capacity(mask, num_micro=2, block=2, shards=1) == 12
  # A compiled size one step (1 row) above is reused; two steps above is not.
  for compiled, want in (({16}, 16), ({12, 16}, 12), ({20}, 12), ({8}, 12)):
    assert shared_prompt.pack_capacity(mask, num_micro=2, block=2, shards=1,
                                       compiled=compiled) == want
  assert shared_prompt.pack_capacity(mask, num_micro=2, block=2, shards=2) == 8
  # Two mini-batches of groups of 2 (groups 0, 2 = rows 0 1 4 5), one micro: 10 -> 12.
  assert shared_prompt.pack_capacity(mask, num_micro=1, block=2, shards=1, num_mini=2,
                                     group_size=2) == 12
  assert shared_prompt.pack_capacity(np.zeros((8, 4)), num_micro=1, block=1, shards=1) == 4
  # Shard 0 = rows 0..3 (flat positions 0..15): needed 0 1 | 4 5 6 | - | 12 13 14 15.
  index = shared_prompt.pack_index(jnp.asarray(mask), capacity=12, shards=2)
  np.testing.assert_array_equal(index[0].ravel(), [0, 1, 4, 5, 6, 12, 13, 14, 15, 16, 16, 16])
  np.testing.assert_array_equal(index[1].ravel(), [0, 4, 5, 6, 7, 8, 9, 16, 16, 16, 16, 16])
  x = jnp.arange(8 * 4 * 2, dtype=jnp.float32).reshape(8, 4, 2) + 1
  packed = shared_prompt.pack(x, index)
  assert packed.shape == (6, 4, 2)
  np.testing.assert_array_equal(packed[0, :, 0], [1, 3, 9, 11])  # x[0, 0], x[0, 1], x[1, 0..1]
  np.testing.assert_array_equal(packed[2, 1:, :], 0)  # past the end: filled with 0
  keep = (np.arange(4)[None] < np.array(lengths)[:, None])[..., None]
  np.testing.assert_array_equal(shared_prompt.unpack(packed, index, 8, 4), np.where(keep, x, 0))
  # Batch shards: data x fsdp of the mesh, 1 without one; packing uses them
  # only where they divide the micro-batch's rows.
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert sharding.batch_shards(mesh) == 4 and sharding.batch_shards(None) == 1
  assert shared_prompt.pack_shards(8) == 1  # no mesh in context
  with sharding.use_mesh(mesh):
    assert shared_prompt.pack_shards(8) == 4 and shared_prompt.pack_shards(6) == 1
  assert shared_prompt.pack_shards(6, 2) == 2
  # Positions run: prefix 4 + 4 blocks x (10 - 1 - 4) + 3 packed rows x T = 4.
  count = dict(batch_rows=8, prompt_len=10, seq_len=14, share=2, prefix_len=4)
  assert shared_prompt.shared_tokens(**count) == 4 + 20 + 32
  assert shared_prompt.shared_tokens(**count, packed_rows=3) == 4 + 20 + 12


def _needed(batch):
  """[B, T] bool: positions up to each row's last loss-masked token."""
  lengths = shared_prompt.response_lengths(batch["response_mask"])
  return np.arange(_T)[None] < lengths[:, None]


def _with_holes(batch, rows=(0, 3, 5)):
  """The batch with the first response token of `rows` out of the loss (SCRL-like spans)."""
  batch = dict(batch)
  batch["response_mask"] = batch["response_mask"].copy()
  for row in rows:
    if row < len(batch["tokens"]) and batch["response_mask"][row].sum() > 1:
      batch["response_mask"][row, 0] = 0.0
  batch["advantages"] = batch["advantages"] * batch["response_mask"]
  return batch


@pytest.mark.parametrize("arch,group_size,prefix,packed", [
    ("llama", 4, True, False), ("llama", 1, True, False), ("qwen2", 2, False, False),
    ("qwen3", 4, False, False), ("qwen3", 2, True, False), ("llama", 4, True, True),
    ("qwen2", 1, False, True), ("qwen3", 2, True, True)])
def test_shared_forward_and_gradient_equal_unshared(arch, group_size, prefix, packed):
  """Log-probs, entropies, hidden states and d(loss)/d(params) of both paths.

  Packed: the loss mask has holes, and the statistics match up to each row's
  last masked token and are 0 after it.
  """
  batch = _batch(groups=3, group_size=group_size, prefix=prefix, seed=group_size)
  sharing = shared_prompt.prompt_sharing(batch["tokens"], batch["input_mask"], prompt_len=_P,
                                         group_size=group_size)
  assert sharing == shared_prompt.Sharing(group_size, _N if prefix else 0)
  needed = np.ones((len(batch["tokens"]), _T), bool)
  if packed:
    batch = _with_holes(batch)
    sharing = sharing._replace(packed=shared_prompt.pack_capacity(
        batch["response_mask"], num_micro=1, block=group_size, shards=1))
    needed = _needed(batch)
    assert sharing.packed < needed.size
  model = decoder_lib.create_model(_ARCHS[arch], seed=1)
  graphdef, params, rest = step_lib.split_model(model)
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["input_mask"])
  weights = jnp.asarray(batch["advantages"])
  response_mask = jnp.asarray(batch["response_mask"])

  def stats(p, share):
    return logprobs_lib.response_logprobs(
        nnx.merge(graphdef, p, rest), tokens, mask, prompt_len=_P, with_entropy=True,
        with_hidden=True, sharing=share, response_mask=response_mask)

  def loss(p, share):
    return jnp.sum(stats(p, share).logp * weights)

  stats = jax.jit(stats, static_argnums=1)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  want, got = stats(params, None), stats(params, sharing)
  for name in ("logp", "entropy", "hidden"):
    keep = needed if name != "hidden" else needed[..., None]
    got_x, want_x = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
    _assert_close(np.where(keep, got_x, 0), np.where(keep, want_x, 0))
    np.testing.assert_array_equal(np.where(keep, 0, got_x), 0)
  grads_want, grads_got = grad(params, None), grad(params, sharing)
  jax.tree.map(_assert_close, grads_got, grads_want)


def test_packing_needs_the_response_mask():
  batch = _batch(groups=2, group_size=2, prefix=False)
  model = decoder_lib.create_model(_ARCHS["llama"], seed=1)
  with pytest.raises(ValueError, match="response_mask"):
    logprobs_lib.response_logprobs(model, jnp.asarray(batch["tokens"]),
                                   jnp.asarray(batch["input_mask"]), prompt_len=_P,
                                   sharing=shared_prompt.Sharing(2, 0, _T))


def _update(arch, batch, *, sharing, optimizer, num_micro=2, remat="none", mesh=None):
  model = decoder_lib.create_model(_ARCHS[arch].replace(remat=remat), seed=3)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  graphdef, params, rest = step_lib.split_model(model)
  opt_state = optimizer.init(params)
  cfg = step_lib.LossConfig(max_response_len=_T, eps_low=0.2, eps_high=0.28)
  fn = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=_P,
                                num_micro=num_micro, loss_config=cfg, donate=False)
  if mesh is None:
    new_params, _, metrics = fn(params, rest, opt_state, batch, sharing=sharing)
  else:
    with sharding.use_mesh(mesh):
      batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
               for k, v in batch.items()}
      new_params, _, metrics = fn(params, rest, opt_state, batch, sharing=sharing)
  return params, new_params, metrics


@pytest.mark.parametrize("arch,group_size,prefix,remat,num_micro,packed", [
    ("llama", 4, True, "none", 2, False), ("qwen2", 2, True, "full", 2, False),
    ("qwen3", 1, False, "dots", 1, False), ("llama", 2, False, "dots", 2, False),
    ("llama", 4, True, "none", 2, True), ("qwen2", 2, True, "full", 2, True),
    ("qwen3", 1, False, "dots", 1, True)])
def test_update_step_equals_unshared(arch, group_size, prefix, remat, num_micro, packed):
  """Loss and gradient (SGD: the update is -lr grad) and one AdamW step.

  The SGD learning rate of 1e3 makes the update as large as the parameters
  (gradients ~1e-5), so float32 resolves `new - old` to 1e-7 of itself.
  Packed: the loss mask has holes; each micro-batch computes its own rows'
  needed positions.
  """
  batch = _batch(groups=4, group_size=group_size, prefix=prefix, seed=7)
  sharing = shared_prompt.prompt_sharing(batch["tokens"], batch["input_mask"], prompt_len=_P,
                                         group_size=group_size)
  if packed:
    batch = _with_holes(batch)
    sharing = sharing._replace(packed=shared_prompt.pack_capacity(
        batch["response_mask"], num_micro=num_micro, block=sharing.share, shards=1))
    assert sharing.packed < len(batch["tokens"]) // num_micro * _T
  sgd = optax.sgd(1e3)
  for optimizer in (sgd, optax.adamw(1e-3, eps=1e-6, weight_decay=0.1)):
    results = [_update(arch, batch, sharing=s, optimizer=optimizer, remat=remat,
                       num_micro=num_micro) for s in (None, sharing)]
    (old, want, want_metrics), (_, got, got_metrics) = results
    for key in ("policy/loss", "policy/entropy", "train/grad_norm"):
      _assert_close(got_metrics[key], want_metrics[key])
    assert float(got_metrics["train/skipped"]) == 0.0
    moved = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), want, old)
    assert max(np.abs(x).max() for x in jax.tree.leaves(moved)) > 1e-4
    if optimizer is sgd:
      jax.tree.map(_assert_close, jax.tree.map(np.subtract, got, old), moved)
    # AdamW's first step is lr g / (|g| + eps): a zero-initialized bias is
    # that step alone, compared at the scale of all parameters.
    scale = max(np.abs(x).max() for x in jax.tree.leaves(want))
    jax.tree.map(lambda g, w: _assert_close(g, w, scale=scale), got, want)


@pytest.mark.parametrize("packed", [False, True])
def test_eight_devices_equal_one_device_unshared(packed):
  """fsdp = 4, tensor = 2, shared prompts (and packed), 2 micro-batches vs 1 device unshared."""
  batch = _batch(groups=4, group_size=4, prefix=True, seed=11)
  sharing = shared_prompt.prompt_sharing(batch["tokens"], batch["input_mask"], prompt_len=_P,
                                         group_size=4)
  if packed:  # each of the 4 batch shards packs its own 2 rows of each micro-batch
    batch = _with_holes(batch)
    sharing = sharing._replace(packed=shared_prompt.pack_capacity(
        batch["response_mask"], num_micro=2, block=4, shards=4))
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  optimizer = optax.sgd(1e3)  # see test_update_step_equals_unshared
  old, want, want_metrics = _update("qwen3", batch, sharing=None, optimizer=optimizer)
  _, got, got_metrics = _update("qwen3", batch, sharing=sharing, optimizer=optimizer,
                                mesh=mesh)
  _assert_close(got_metrics["policy/loss"], want_metrics["policy/loss"])
  jax.tree.map(lambda g, w, o: _assert_close(np.asarray(g) - np.asarray(o),
                                             np.asarray(w) - np.asarray(o)), got, want, old)


def _oracle_logp_entropy(model, batch):
  """NumPy log-softmax and entropy of the unshared full forward's logits."""
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["input_mask"])
  positions = decoder_lib.positions_from_mask(mask)
  hidden = model(tokens[:, :-1], positions[:, :-1], mask[:, :-1])[:, _P - 1:]
  logits = np.asarray(model.logits(hidden), np.float64)
  logq = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  targets = batch["tokens"][:, _P:]
  logp = np.take_along_axis(logq, targets[..., None], axis=-1)[..., 0]
  entropy = -np.sum(np.exp(logq) * logq, axis=-1)
  return logp, entropy, np.asarray(hidden, np.float64)


@pytest.mark.parametrize("mesh_shape,packed", [(None, False), ((1, 4, 2), False),
                                                (None, True), ((1, 4, 2), True)])
def test_rollout_stats_with_delta_equal_unshared_and_oracle(mesh_shape, packed):
  """Old log-probs, entropies and DelTA's c~ and A c~ from one jitted stats pass.

  Today's path runs the sampler's plainly left-padded rows; the shared one
  the same rows after `align_prefix`, groups and batch prefix shared, and
  (packed) only each row's needed positions computed.
  """
  batch = _batch(groups=4, group_size=4, prefix=True, seed=5, aligned=False)
  aligned = dict(batch)
  aligned["tokens"], aligned["input_mask"] = shared_prompt.align_prefix(
      batch["tokens"], batch["input_mask"], prompt_len=_P)
  sharing = shared_prompt.prompt_sharing(aligned["tokens"], aligned["input_mask"],
                                         prompt_len=_P, group_size=4)
  assert sharing == shared_prompt.Sharing(4, _N)
  if packed:
    sharing = sharing._replace(packed=shared_prompt.pack_capacity(
        batch["response_mask"], num_micro=2, block=4, shards=1 if mesh_shape is None else 4))
  model = decoder_lib.create_model(_ARCHS["qwen2"], seed=2)
  oracle_logp, oracle_entropy, oracle_hidden = _oracle_logp_entropy(model, batch)
  mesh = None if mesh_shape is None else sharding.make_mesh(*mesh_shape)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  graphdef, params, rest = step_lib.split_model(model)
  delta = step_lib.DeltaConfig(k=1, lam_min=0.8, lam_max=1.2)
  fn = step_lib.jit_rollout_stats(graphdef, prompt_len=_P, num_micro=2,
                                  loss_config=step_lib.LossConfig(), with_hidden=False,
                                  delta=delta)
  if mesh is None:
    want = fn(params, rest, batch, None)
    got = fn(params, rest, aligned, None, sharing=sharing)
  else:
    with sharding.use_mesh(mesh):
      put = lambda d: {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
                       for k, v in d.items()}
      want = fn(params, rest, put(batch), None)
      got = fn(params, rest, put(aligned), None, sharing=sharing)
  assert "hidden" not in got
  m = batch["response_mask"] > 0
  for out in (want, got):
    _assert_close(np.where(m, out["old_logp"], 0), np.where(m, oracle_logp, 0), rtol=1e-4)
    _assert_close(np.where(m, out["entropy"], 0), np.where(m, oracle_entropy, 0), rtol=1e-4)
  for key in ("old_logp", "entropy", "delta_coef", "advantages"):
    _assert_close(np.where(m, got[key], 0), np.where(m, want[key], 0))
  coef, metrics = delta_reference(oracle_hidden, np.exp(oracle_logp), batch["advantages"],
                                  batch["response_mask"], k=1)
  _assert_close(np.where(m, got["delta_coef"], 0), np.where(m, coef, 0), rtol=1e-4)
  _assert_close(got["advantages"], batch["advantages"] * coef, rtol=1e-4)
  for key, value in metrics.items():
    np.testing.assert_allclose(got["delta_metrics"][key], value, rtol=1e-4, atol=1e-6)


def _train_tiny(workdir, shared):
  c = tiny.get_config()  # chat template: every prompt begins with the system turn
  c.rl.steps = 1
  c.data.eval_size = 8
  c.train.eval_before = c.train.eval_after = c.train.tensorboard = False
  c.train.shared_prompt = c.train.pack_responses = shared
  # Adam's epsilon well above the gradients' float noise: with the default
  # 1e-8 an element whose gradient is ~0 moves by about lr * sign(noise), and
  # the two paths' summation orders may flip that sign; with 1e-4 such an
  # element moves by lr * g / 1e-4, so the noise stays noise in the update.
  c.optim.eps = 1e-4
  trainer = loop.Trainer(c, workdir)
  try:
    trainer.run()
  finally:
    trainer.close()
  return trainer


def test_trainer_shared_prompt_equals_unshared(tmp_path):
  """One tiny-config step (2 mini-batches x 2 micro-batches) gives the same params.

  Shared = prompts shared and responses packed; unshared = neither.

  The trainer keeps one state: its model object holds only shapes (the
  sampler and the optimizer ran from the trainer's params).
  """
  trainers = [_train_tiny(str(tmp_path / str(shared)), shared) for shared in (False, True)]
  base = checkpoints.restore_params(str(tmp_path / "False"), 0)
  want = checkpoints.restore_params(str(tmp_path / "False"), 1)
  got = checkpoints.restore_params(str(tmp_path / "True"), 1)
  moved = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(want),
                                                         jax.tree.leaves(base)))
  assert moved > 1e-5  # the run really trained (two AdamW steps in the warm-up)
  jax.tree.map(lambda x, y, b: np.testing.assert_allclose(x - b, y - b, atol=1e-3 * moved),
               got, want, base)
  for trainer in trainers:
    leaves = jax.tree.leaves(nnx.state(trainer.model, nnx.Param))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
