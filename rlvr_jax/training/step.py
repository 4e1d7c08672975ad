"""The two jitted computations of an RL iteration.

`rollout_stats`: one teacher-forced forward pass at the sampling policy that
gives the old log-probs, the entropies, the final hidden states DelTA needs and
(with a reference policy) the reference log-probs, micro-batch by micro-batch.

`update_step`: one optimizer step on a mini-batch. The loss denominator of the
whole mini-batch is computed first (METHODS.md 1.3), each micro-batch adds
`numerator_micro / denominator` and its gradient, so 1, 2 or 4 micro-batches
and 1 or 8 devices give the same update. A non-finite loss, gradient norm,
updated parameter or optimizer state skips the update (params and optimizer
state unchanged) and reports it.

Micro-batch m holds rows m, m + M, m + 2M, ... of the mini-batch: with the
batch sharded over devices in contiguous blocks, every device then holds its
share of every micro-batch, and no data moves between devices.

Shared prompts (`sharing`, from `shared_prompt.prompt_sharing` on the host):
each block of `share` contiguous rows with the same prompt computes it once
(`shared_prompt.shared_hidden`). Micro-batches then hold whole blocks,
strided over blocks: micro-batch m holds blocks m, m + M, ...; every device
keeps its share of every micro-batch when its rows hold a multiple of M
blocks (B / (devices x share) divisible by M), else XLA moves rows. With
`sharing.packed`, each micro-batch's response positions after the last
loss-masked token are not computed (`shared_prompt`, packed responses): the
returned statistics are 0 there.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import optax

from rlvr_jax import sharding
from rlvr_jax.algorithms import delta as delta_lib
from rlvr_jax.algorithms import kl_cov
from rlvr_jax.algorithms import losses
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.models import lora
from rlvr_jax.models import shared_prompt
from rlvr_jax.training import metrics as metrics_lib

Array = jax.Array
Batch = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static settings of the policy loss (flags under config.algo / config.rl).

  Each field has its flag's name and meaning, except that a value that is off
  is None here (the argument convention of the loss functions) where the flag
  says 0 (`from_config` maps them).

  Attributes:
    policy_loss: `algo.policy_loss` (ppo_clip | gspo | gspo_token).
    eps_low: lower clip width epsilon_low.
    eps_high: upper clip width epsilon_high.
    dual_clip: dual-clip constant c for A < 0, or None.
    loss_agg: `algo.loss_agg` (token_mean | seq_mean_token_mean |
      seq_mean_token_sum_norm).
    max_response_len: T_max of seq_mean_token_sum_norm.
    kl_coef: weight of the KL term (0 = no reference pass).
    kl_estimator: k1 | k2 | k3 (k3 = straight-through, see losses.py).
    temperature: sampling temperature; log-probs are taken at it.
    logprob_chunk: LM-head chunk over T (None = whole T).
    kl_cov_ratio: KL-Cov's fraction of penalized tokens (METHODS.md 6.6;
      0 = off). The selection is made once per mini-batch in `update_step`,
      before the micro-batches, so it is batch-global.
    kl_cov_beta: KL-Cov's penalty coefficient beta.
    distil_coef: weight of DistIL's top-k cross-entropy term (METHODS.md
      7.3), added when the batch holds `topk_ids` and `topk_probs`
      (`training/distill_credit.py`).
  """

  policy_loss: str = "ppo_clip"
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float | None = None
  loss_agg: str = "token_mean"
  max_response_len: int | None = None
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  temperature: float = 1.0
  logprob_chunk: int | None = None
  kl_cov_ratio: float = 0.0
  kl_cov_beta: float = 1.0
  distil_coef: float = 0.0

  @classmethod
  def from_config(cls, config: Any) -> LossConfig:
    """The loss settings of a run config: the one place a 0 (off) flag becomes None."""
    c = config
    return cls(
        policy_loss=c.algo.policy_loss, eps_low=c.algo.eps_low, eps_high=c.algo.eps_high,
        dual_clip=c.algo.dual_clip or None, loss_agg=c.algo.loss_agg,
        max_response_len=c.rl.max_new_tokens, kl_coef=c.algo.kl_coef,
        kl_estimator=c.algo.kl_estimator, temperature=c.rl.temperature,
        logprob_chunk=c.train.logprob_chunk or None,
        kl_cov_ratio=c.algo.kl_cov_ratio, kl_cov_beta=c.algo.kl_cov_beta,
        distil_coef=c.distill.ce_coef if c.algo.advantage == "distil" else 0.0)


@dataclasses.dataclass(frozen=True)
class DeltaConfig:
  """DelTA settings (flags under config.algo), computed inside `rollout_stats`.

  The coefficients use the old log-probs and hidden states of the
  recomputation pass (`rollout_stats`), not the sampler's log-probs.

  Attributes:
    k: refinement iterations K.
    lam_min: lambda_min.
    lam_max: lambda_max.
    scope: batch | group statistics.
    group_size: G (scope 'group').
  """

  k: int = 1
  lam_min: float = 0.8
  lam_max: float = 1.2
  scope: str = "batch"
  group_size: int | None = None


def split_micro_batches(batch: Batch, num_micro: int, block: int = 1) -> Batch:
  """[B, ...] -> [M, B / M, ...]: micro-batch m = row blocks m, m + M, ....

  Args:
    batch: dict of [B, ...] arrays.
    num_micro: M.
    block: rows per block kept whole (a group sharing a prompt); 1 = rows
      m, m + M, ....

  Raises:
    ValueError: B is not a multiple of M x block.
  """
  def split(x):
    b = x.shape[0]
    if b % (num_micro * block):
      raise ValueError(f"batch of {b} rows does not split into {num_micro} micro-batches "
                       f"of whole {block}-row blocks.")
    x = x.reshape(b // (num_micro * block), num_micro, block, *x.shape[1:])
    x = sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape(num_micro, b // num_micro, *x.shape[3:])
  return jax.tree.map(split, batch)


def merge_micro_batches(x: Array, block: int = 1) -> Array:
  """Inverse of `split_micro_batches` for one array [M, B / M, ...]."""
  m, rows = x.shape[:2]
  x = x.reshape(m, rows // block, block, *x.shape[2:])
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(m * rows, *x.shape[3:])


def _block(sharing: shared_prompt.Sharing | None) -> int:
  return 1 if sharing is None else sharing.share


def rollout_stats(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                  batch: Batch, *, prompt_len: int, num_micro: int,
                  loss_config: LossConfig, with_hidden: bool,
                  ref_params: nnx.State | None = None,
                  with_self_certainty: bool = False,
                  delta: DeltaConfig | None = None,
                  sharing: shared_prompt.Sharing | None = None) -> dict[str, Array]:
  """Old log-probs (+ entropy, hidden states, reference log-probs, DelTA), no grad.

  With `delta`, DelTA's coefficients (METHODS.md 2) are computed in the same
  program from this pass's hidden states (compute dtype, batch-sharded) and
  old log-probs, and the returned advantages are already scaled by them.

  Args:
    graphdef, params, rest: the split policy model (nnx.split(model,
      nnx.Param, ...)).
    batch: `tokens` [B, S] and `input_mask` [B, S]; with `delta` or packed
      responses (`sharing.packed`) also `response_mask` [B, T], with `delta`
      `advantages` [B, T].
    prompt_len: P.
    num_micro: micro-batches M to bound memory.
    loss_config: for the temperature and LM-head chunk.
    with_hidden: also return hidden [B, T, D] (compute dtype).
    ref_params: reference policy params (same graphdef), or None.
    with_self_certainty: also return CIRCA's per-token self-certainty (one
      more reduction over V in each LM-head chunk; METHODS.md 6.5).
    delta: DelTA settings, or None.
    sharing: shared prompts of this batch (module docstring), or None.

  Returns:
    {'old_logp' [B, T], 'entropy' [B, T], 'hidden' [B, T, D] if asked,
     'ref_logp' [B, T] if ref_params, 'self_certainty' [B, T] if asked;
     with delta 'delta_coef' [B, T] c~, 'advantages' [B, T] = A c~ and
     'delta_metrics' (flat dict of scalars)}.
  """
  block = _block(sharing)
  keys = ("tokens", "input_mask") + (("response_mask",) if sharing and sharing.packed else ())
  micro = split_micro_batches({k: batch[k] for k in keys}, num_micro, block)
  keep_hidden = with_hidden or delta is not None

  def stats(p, mb, hidden, entropy, certainty=False):
    model = nnx.merge(graphdef, p, rest)
    return logprobs_lib.response_logprobs(
        model, mb["tokens"], mb["input_mask"], prompt_len=prompt_len,
        temperature=loss_config.temperature, chunk_size=loss_config.logprob_chunk,
        with_entropy=entropy, with_hidden=hidden, with_self_certainty=certainty,
        sharing=sharing, response_mask=mb.get("response_mask"))

  def one(mb):
    out = stats(params, mb, keep_hidden, True, with_self_certainty)
    result = {"old_logp": out.logp, "entropy": out.entropy}
    if with_self_certainty:
      result["self_certainty"] = out.self_certainty
    if keep_hidden:
      result["hidden"] = out.hidden
    if ref_params is not None:
      result["ref_logp"] = stats(ref_params, mb, False, False).logp
    return result

  out = jax.lax.map(one, micro)
  out = jax.tree.map(lambda x: jax.lax.stop_gradient(merge_micro_batches(x, block)), out)
  if delta is not None:
    hidden = sharding.constrain(out["hidden"], ("batch", None, None))
    coef, metrics = delta_lib.delta_coefficients(
        hidden, jnp.exp(out["old_logp"]), batch["advantages"], batch["response_mask"],
        k=delta.k, lam_min=delta.lam_min, lam_max=delta.lam_max, scope=delta.scope,
        group_size=delta.group_size)
    out["delta_coef"] = coef
    out["advantages"] = batch["advantages"] * coef
    out["delta_metrics"] = metrics
    if not with_hidden:
      del out["hidden"]
  return out


def update_step(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                opt_state: optax.OptState, batch: Batch, *,
                optimizer: optax.GradientTransformation, prompt_len: int,
                num_micro: int, loss_config: LossConfig,
                sharing: shared_prompt.Sharing | None = None
                ) -> tuple[nnx.State, optax.OptState, dict[str, Array]]:
  """One optimizer step on a mini-batch with gradient accumulation.

  Args:
    graphdef, params, rest: the split policy model.
    opt_state: optimizer state of `params`.
    batch: mini-batch dict: tokens [B, S], input_mask [B, S], response_mask
      [B, T], old_logp [B, T], advantages [B, T], and ref_logp [B, T] when
      loss_config.kl_coef > 0; DistIL adds topk_ids [B, T, k] and topk_probs
      [B, T, k].
    optimizer: the optax transformation.
    prompt_len: P.
    num_micro: micro-batches M (B % M == 0; B % (M x share) == 0 with sharing).
    loss_config: static loss settings.
    sharing: shared prompts of this batch (module docstring), or None.

  Returns:
    New params, new optimizer state, metrics (flat dict of scalars), with
    `train/skipped` = 1 when the update was skipped for a non-finite loss,
    gradient norm, new parameter or new optimizer state.
  """
  c = loss_config
  mask = batch["response_mask"].astype(jnp.float32)
  denominator = losses.aggregation_denominator(
      mask, loss_agg=c.loss_agg, max_response_len=c.max_response_len)
  token_count = jnp.sum(mask)
  # KL-Cov (METHODS.md 6.6): the batch-global top-k, once per mini-batch.
  if c.kl_cov_ratio > 0:
    batch = {**batch, "kl_cov_selection": kl_cov.kl_cov_selection(
        batch["old_logp"], batch["advantages"], mask, ratio=c.kl_cov_ratio)}
  micro = split_micro_batches(batch, num_micro, _block(sharing))

  def loss_fn(p, mb):
    model = nnx.merge(graphdef, p, rest)
    out = logprobs_lib.response_logprobs(
        model, mb["tokens"], mb["input_mask"], prompt_len=prompt_len,
        temperature=c.temperature, chunk_size=c.logprob_chunk, with_entropy=True,
        with_hidden="topk_ids" in mb, sharing=sharing, response_mask=mb["response_mask"])
    m = mb["response_mask"].astype(jnp.float32)
    pg_loss_fn = None
    if "kl_cov_selection" in mb:
      pg_loss_fn = functools.partial(kl_cov_policy_loss, selection=mb["kl_cov_selection"],
                                     beta=c.kl_cov_beta)
    loss, metrics = losses.policy_loss(
        out.logp, mb["old_logp"], mb["advantages"], m,
        loss_denominator=denominator, token_count=token_count,
        policy_loss=c.policy_loss, eps_low=c.eps_low, eps_high=c.eps_high,
        dual_clip=c.dual_clip, loss_agg=c.loss_agg, max_response_len=c.max_response_len,
        ref_logp=mb.get("ref_logp"), kl_coef=c.kl_coef, kl_estimator=c.kl_estimator,
        pg_loss_fn=pg_loss_fn)
    if "kl_cov_selection" in mb:
      metrics["policy/kl_cov_frac"] = jnp.sum(mb["kl_cov_selection"] * m) / jnp.maximum(
          token_count, 1.0)
    metrics["policy/entropy"] = jnp.sum(out.entropy * m) / jnp.maximum(token_count, 1.0)
    # -- DistIL (METHODS.md 7.3): the top-k forward cross-entropy term.
    if "topk_ids" in mb:
      from rlvr_jax.training import distill_credit  # pylint: disable=g-import-not-at-top
      ce = distill_credit.distil_loss_term(
          model, out.hidden, mb["topk_ids"], mb["topk_probs"], m, denominator=denominator,
          loss_agg=c.loss_agg, max_response_len=c.max_response_len, chunk_size=c.logprob_chunk)
      metrics["distill/ce_loss"] = ce
      loss = loss + c.distil_coef * ce
    # -- end of DistIL.
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulate(carry, mb):
    grads, metrics = carry
    (_, new_metrics), new_grads = grad_fn(params, mb)
    return (jax.tree.map(jnp.add, grads, new_grads),
            metrics_lib.combine_metrics([metrics, new_metrics], shares=True)), None

  first = jax.tree.map(lambda x: x[0], micro)
  zero_metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(loss_fn, params, first)[1])
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  (grads, metrics), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), micro)

  grad_norm = optax.tree.norm(grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  # The update itself can overflow (a huge or non-finite learning rate) with
  # a finite loss and gradient: the new state is checked too.
  finite = (jnp.isfinite(metrics["policy/loss"]) & jnp.isfinite(grad_norm)
            & all_finite((new_params, new_opt_state)))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  metrics["train/grad_norm"] = grad_norm
  metrics["train/skipped"] = 1.0 - finite.astype(jnp.float32)
  return keep(new_params, params), keep(new_opt_state, opt_state), metrics


def kl_cov_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *,
                       selection: Array, beta: float, eps_low: float, eps_high: float,
                       dual_clip: float | None) -> tuple[Array, dict[str, Array]]:
  """`kl_cov.kl_cov_loss` as a `losses.POLICY_LOSSES` function (selection bound).

  Its `kl_cov_selected` diagnostic is dropped (`update_step` logs the
  penalized fraction as `policy/kl_cov_frac`), so the other diagnostics keep
  their `policy/clipfrac_*` names.
  """
  loss, diagnostics = kl_cov.kl_cov_loss(
      logp, old_logp, advantages, mask, selection, beta=beta, eps_low=eps_low,
      eps_high=eps_high, dual_clip=dual_clip)
  diagnostics.pop("kl_cov_selected")
  return loss, diagnostics


def all_finite(tree: Any) -> Array:
  """Whether every floating-point element of `tree` is finite: one bool scalar.

  Each leaf contributes the sum of `x * 0`, which is 0 for finite values and
  NaN for any inf or NaN, so the whole check is one fused reduction per leaf
  and a scalar sum, not a boolean tree.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  total = sum(jnp.sum(x.astype(jnp.float32) * 0.0) for x in leaves)
  return jnp.isfinite(total)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, params, rest): the trainable params and everything else.

  With LoRA adapters (`rlvr_jax.models.lora.add_adapters`) the trainable
  params are the adapters (nnx.LoRAParam) and `rest` holds the frozen base
  weights: every jitted step takes `rest` as its own argument, so the base
  gets no gradient and no optimizer state, and is never donated.
  """
  return nnx.split(model, nnx.LoRAParam if lora.has_adapters(model) else nnx.Param, ...)


def jit_update_step(graphdef: nnx.GraphDef, *, optimizer: optax.GradientTransformation,
                    prompt_len: int, num_micro: int, loss_config: LossConfig,
                    donate: bool = True) -> Any:
  """`update_step` jitted with the static arguments bound.

  Call as fn(params, rest, opt_state, batch, sharing=None); `sharing` (a
  `shared_prompt.Sharing` or None) is static: one compilation per value.
  """
  def fn(params, rest, opt_state, batch, sharing=None):
    return update_step(graphdef, params, rest, opt_state, batch, optimizer=optimizer,
                       prompt_len=prompt_len, num_micro=num_micro,
                       loss_config=loss_config, sharing=sharing)
  return jax.jit(fn, donate_argnums=(0, 2) if donate else (), static_argnames=("sharing",))


def jit_rollout_stats(graphdef: nnx.GraphDef, *, prompt_len: int, num_micro: int,
                      loss_config: LossConfig, with_hidden: bool,
                      with_self_certainty: bool = False,
                      delta: DeltaConfig | None = None) -> Any:
  """`rollout_stats` jitted; call as fn(params, rest, batch, ref_params, sharing=None).

  `sharing` is static, as in `jit_update_step`.
  """
  def fn(params, rest, batch, ref_params, sharing=None):
    return rollout_stats(graphdef, params, rest, batch, prompt_len=prompt_len,
                         num_micro=num_micro, loss_config=loss_config,
                         with_hidden=with_hidden, ref_params=ref_params,
                         with_self_certainty=with_self_certainty, delta=delta,
                         sharing=sharing)
  return jax.jit(fn, static_argnames=("sharing",))
