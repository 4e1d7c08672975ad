"""The RLVR trainer: `train_and_evaluate(config, workdir)`.

One iteration, as in the papers' pseudocode:

  records   = next(prompt iterator)
  rollout   : sample G responses per prompt with the KV-cache sampler
  reward    : verify each response (process-pool checker, never raises)
  advantage : group-relative estimator (or SCRL span advantages) -> [B, T]
  old stats : one jitted forward pass -> old log-probs, ref log-probs and
              (DelTA) the token coefficients from its hidden states, A <- A * c~
  update    : mini-batches x micro-batches of the clipped policy loss
  metrics   : JSONL + TensorBoard + progress bar
  checkpoint: orbax, dense window for RELEX, resume-exact

All numerics live in pure jitted functions (`step.py`, `rlvr_jax.algorithms`);
this module only moves data between them and keeps the run's state: one
(params, opt_state) pair. The sampler and the evaluation take the params
explicitly; the model object holds no weights once the state is built (the
update donates the params' buffers). With `train.shared_prompt`, each batch's
prompt sharing is found on the host (`shared_prompt.prompt_sharing`, after
`align_prefix` moves the prefix every prompt begins with to the first slots)
and both jitted passes compute each group's prompt once. With
`train.pack_responses` they compute each row's response only up to its last
loss-masked token, packed (`shared_prompt.pack_capacity` sizes it per batch).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from rlvr_jax import checkpoints
from rlvr_jax import sharding
from rlvr_jax import storage
from rlvr_jax.algorithms import circa
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.data import prompts as prompts_lib
from rlvr_jax.evaluation import evaluate as evaluate_lib
from rlvr_jax.evaluation import heldout
from rlvr_jax.models import loader
from rlvr_jax.models import lora as lora_lib
from rlvr_jax.models import shared_prompt
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers
from rlvr_jax.sampling import sampler as sampler_lib
from rlvr_jax.training import channel_credit
from rlvr_jax.training import config_checks
from rlvr_jax.training import credit as credit_lib
from rlvr_jax.training import metrics as metrics_lib
from rlvr_jax.training import optimizer as optimizer_lib
from rlvr_jax.training import run_state
from rlvr_jax.training import step as step_lib
from rlvr_jax.training import study_mechanisms


def _global(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """The whole batch (the same on every process) -> arrays sharded over (data, fsdp)."""
  return {k: jax.make_array_from_process_local_data(
      sharding.batch_sharding(mesh, v.ndim), v, v.shape) for k, v in batch.items()}


def _host(x: jax.Array) -> np.ndarray:
  """The whole of a batch-sharded global array, on every process (a collective)."""
  return multihost_utils.process_allgather(x, tiled=True)


def _split_minis(batch: dict[str, jax.Array], num_mini: int, group_size: int
                 ) -> list[dict[str, jax.Array]]:
  """N mini-batches of whole groups, strided: mini-batch k = groups k, k + N, ...

  Under jit, on device: every mini-batch stays batch-sharded, each device
  keeping its own rows when its rows hold a multiple of N groups.
  """
  stacked = step_lib.split_micro_batches(batch, num_mini, group_size)
  return [{k: sharding.constrain(v[i], ("batch",) + (None,) * (v.ndim - 2))
           for k, v in stacked.items()} for i in range(num_mini)]


def _shapes(tree: Any) -> Any:
  """`tree` with every array replaced by its jax.ShapeDtypeStruct (no buffers)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      tree)


class Trainer:
  """The state of one run; `run()` trains, evaluates and returns the summary."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
               overwrite: bool = False):
    checked = config_checks.preflight(config)
    self.config = c = config = checked.config
    self.workdir = workdir
    run_state.prepare_workdir(workdir, config, overwrite=overwrite)
    storage.makedirs(workdir)
    sharding.initialize_distributed()
    self.mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    sharding.log_mesh(self.mesh)
    self.is_main = jax.process_index() == 0

    self.model, self.tokenizer, self.model_config = loader.load_model(
        c.model.source, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
        remat=c.model.remat, mesh=self.mesh)
    if self.is_main:
      storage.write_json(storage.join(workdir, "model_config.json"),
                         self.model_config.to_dict(), indent=1)
      storage.write_text(storage.join(workdir, "config.json"), config.to_json(indent=1))

    # Data. Every process reads (and later scores) the whole rollout batch:
    # the sampler takes the global prompt list and splits its rows over all
    # processes' devices, the same rows in the same order with any number of
    # processes, and the iterator state saved by process 0 is every
    # process's state, so a run resumes with any number of processes.
    self.sources = checked.sources
    self.iterator = data_iterator.PromptIterator(
        self.sources.train, batch_size=c.rl.prompts_per_batch, seed=c.data.seed)
    shots = []
    if c.data.few_shot:
      shots = prompts_lib.draw_examples(self.sources.train, k=c.data.few_shot, seed=c.data.seed)
    self.render = lambda record: prompts_lib.render_prompt(
        record, template=c.data.template, instruction=c.data.instruction,
        system_prompt=c.data.system_prompt, tokenizer=self.tokenizer,
        few_shot_examples=shots)

    # Rewards and credit assignment.
    self.pool = None
    if c.reward.checker != "exact":
      warmup = (scorers.REASONING_GYM_WARMUP,) if c.reward.checker == "reasoning_gym" else ()
      self.pool = math_checker.MathChecker(
          num_workers=c.reward.workers, timeout_s=c.reward.timeout_s, warmup=warmup)
      self.pool.start()
    make_reward = lambda fmt: scorers.RewardFunction(
        checker=c.reward.checker, max_response_len=c.rl.max_new_tokens,
        format_weight=fmt, overlong_buffer=c.reward.overlong_buffer, pool=self.pool)
    self.reward_fn = make_reward(c.reward.format_weight)
    self.eval_reward_fn = make_reward(0.0)
    if c.data.task == "rubric":  # Static criterion weights at evaluation (METHODS 6.3).
      self.eval_reward_fn = channel_credit.RubricReward()
    self.credit = self._make_credit()

    # One train state: (params, opt_state). The model object keeps only the
    # parameters' shapes (the update donates their buffers); the sampler and
    # the evaluation are given `policy_params()`. With LoRA (model.lora_rank)
    # the params are the adapters and `rest` the frozen base weights.
    self.graphdef, self.params, self.rest = step_lib.split_model(self.model)
    self.model = nnx.merge(self.graphdef, _shapes(self.params), self.rest)
    self.lora = None
    if c.model.lora_rank:
      self._add_lora()

    # Sampler and the jitted steps.
    self.sampler = sampler_lib.Sampler(
        self.model, self.tokenizer, max_prompt_len=c.rl.max_prompt_len,
        max_new_tokens=c.rl.max_new_tokens, mesh=self.mesh)
    self.eval_sampler = self.sampler
    if c.train.eval_max_new_tokens != c.rl.max_new_tokens:
      self.eval_sampler = sampler_lib.Sampler(
          self.model, self.tokenizer, max_prompt_len=c.rl.max_prompt_len,
          max_new_tokens=c.train.eval_max_new_tokens, mesh=self.mesh)
    # --- begin: environment episodes (issue 18; rlvr_jax.training.env_rollout) ---
    self.env_rollout = None
    if config.get("env") is not None and config.env.name:
      from rlvr_jax.training import env_rollout  # pylint: disable=g-import-not-at-top
      self.env_rollout = env_rollout.EnvRollout(c, model=self.model, tokenizer=self.tokenizer)
      self.sampler = self.credit = self.env_rollout
    # --- end: environment episodes ---
    self.ref_params = (jax.tree.map(jnp.copy, self.params) if c.algo.kl_coef > 0 else None)
    total_updates = c.rl.steps * c.rl.mini_batches
    self.optimizer = optimizer_lib.make_optimizer(
        lr=c.optim.lr, warmup_steps=c.optim.warmup_steps, total_steps=total_updates,
        decay=c.optim.decay, weight_decay=c.optim.weight_decay,
        grad_clip=c.optim.grad_clip, b1=c.optim.b1, b2=c.optim.b2, eps=c.optim.eps)
    # Adam's moments are laid out like the parameters they mirror (counts
    # replicated): the layout the update step returns, so it compiles once.
    opt_shardings = optax.tree_map_params(
        self.optimizer, lambda _, s: s, jax.eval_shape(self.optimizer.init, self.params),
        jax.tree.map(lambda p: p.sharding, self.params),
        transform_non_params=lambda _: sharding.replicated(self.mesh))
    with sharding.use_mesh(self.mesh):
      self.opt_state = jax.jit(self.optimizer.init, out_shardings=opt_shardings)(self.params)
    self.loss_config = step_lib.LossConfig.from_config(c)
    self.prompt_len = self.sampler.prompt_len
    self.update_fn = step_lib.jit_update_step(
        self.graphdef, optimizer=self.optimizer, prompt_len=self.prompt_len,
        num_micro=c.rl.micro_batches, loss_config=self.loss_config)
    self.needs_stats = (c.train.old_logp == "recompute" or c.algo.delta or c.algo.kl_coef > 0)
    self.delta_config = step_lib.DeltaConfig(
        k=c.algo.delta_k, lam_min=c.algo.delta_lam_min, lam_max=c.algo.delta_lam_max,
        scope=c.algo.delta_scope, group_size=c.rl.group_size) if c.algo.delta else None
    self.stats_fn = step_lib.jit_rollout_stats(
        self.graphdef, prompt_len=self.prompt_len, num_micro=c.rl.micro_batches,
        loss_config=self.loss_config, with_hidden=False, delta=self.delta_config)
    # The pass that runs before the credit step when a method reads its
    # output (CIRCA's self-certainty, distillation's old log-probs and
    # DistIL's hidden states), on the rollout rows, without DelTA.
    self.early_stats_fn = step_lib.jit_rollout_stats(
        self.graphdef, prompt_len=self.prompt_len, num_micro=c.rl.micro_batches,
        loss_config=self.loss_config, with_hidden=c.algo.advantage == "distil",
        with_self_certainty=c.reward.label_free)
    # The packed response sizes each pass has compiled (`_sharing`).
    self._packed_sizes = {"stats": set(), "update": set()}
    num_mini, group = c.rl.mini_batches, c.rl.group_size
    # Mini-batch k: groups k, k + N, ... (N mini-batches), cut on device.
    self.split_minis = jax.jit(lambda batch: _split_minis(batch, num_mini, group))

    self._all_finite = jax.jit(step_lib.all_finite)
    self.checkpointer = checkpoints.Checkpointer(
        workdir, save_every=c.train.save_every, keep=c.train.keep,
        dense_window=c.train.dense_window)
    self.writer = metrics_lib.MetricWriter(workdir, tensorboard=c.train.tensorboard)
    self.key = jax.random.key(c.rl.seed)

  def _add_lora(self) -> None:
    """LoRA (models/lora.py): the train state becomes the adapters alone.

    The base weights, cast to the compute dtype (every use casts them to it,
    so the forward is unchanged), become the frozen `rest` of the adapter
    model that the jitted steps take; `self.model` stays the base decoder the
    samplers run, given the merged weights (`policy_params`).
    """
    c = self.config
    self.lora = lora_lib.LoraConfig(rank=c.model.lora_rank, alpha=float(c.model.lora_alpha),
                                    targets=tuple(c.model.lora_targets))
    dtype = jnp.dtype(c.model.dtype)
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    with sharding.use_mesh(self.mesh):
      base = jax.jit(lambda tree: jax.tree.map(cast, tree))(self.params)
    lora_model = nnx.merge(self.graphdef, base, self.rest)
    lora_lib.add_adapters(lora_model, self.lora, seed=c.rl.seed, mesh=self.mesh)
    self.graphdef, self.params, self.rest = step_lib.split_model(lora_model)
    self._merge = jax.jit(
        functools.partial(lora_lib.merged_params, scale=self.lora.scale),
        out_shardings=jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(base)))

  def policy_params(self) -> Any:
    """The decoder params the samplers and the evaluation take.

    The train state's params, or with LoRA the base weights with the adapters
    merged in, W + (alpha / r) A B (one jitted program, run before each use).
    """
    if self.lora is None:
      return self.params
    with sharding.use_mesh(self.mesh):
      return self._merge(self.params, self.rest)

  def _make_credit(self) -> credit_lib.Credit:
    c = self.config
    if c.algo.advantage == "scrl":
      from rlvr_jax.training import scrl_credit  # pylint: disable=g-import-not-at-top
      return scrl_credit.ScrlCredit(config=c, tokenizer=self.tokenizer, pool=self.pool,
                                    render_plain=self.render)
    if c.algo.advantage in ("opd", "distil"):  # On-policy distillation (METHODS.md 7).
      from rlvr_jax.training import distill_credit  # pylint: disable=g-import-not-at-top
      shots = []
      if c.data.few_shot:
        shots = prompts_lib.draw_examples(self.sources.train, k=c.data.few_shot,
                                          seed=c.data.seed)
      return distill_credit.DistillCredit(config=c, trainer=self, render=self.render,
                                          reward_fn=self.reward_fn, few_shot_examples=shots)
    return channel_credit.ChannelCredit(config=c, render=self.render,
                                        reward_fn=self.reward_fn, pool=self.pool)

  # -- evaluation ------------------------------------------------------------

  def evaluate(self, name: str) -> heldout.HeldOutResult:
    """Greedy accuracy on the held-out records with the current params."""
    if self.env_rollout is not None:  # issue 18: greedy success on fixed episodes
      result = self.env_rollout.evaluate(batch_size=self.config.train.eval_batch_size,
                                         params=self.policy_params())
      logging.info("%s held-out success %.4f on %d episodes", name, result.accuracy,
                   result.correct.size)
      return result
    # The one held-out evaluation (also experiments.evaluate's and RELEX's).
    result = heldout.HeldOutResult.from_benchmark(evaluate_lib.evaluate_heldout(
        self.config, sampler=self.eval_sampler, tokenizer=self.tokenizer,
        sources=self.sources, reward_fn=self.eval_reward_fn, desc=f"eval {name}",
        show_progress=self.is_main, params=self.policy_params()))
    logging.info("%s held-out accuracy %.4f on %d problems", name, result.accuracy,
                 len(self.sources.eval))
    return result

  # -- one iteration -----------------------------------------------------------

  def train_step(self, step: int) -> dict[str, float]:
    """Rollout, reward, advantage, (DelTA), update; returns metrics."""
    c = self.config
    timings = {}
    t0 = time.perf_counter()
    records = next(self.iterator)
    texts, examples = self.credit.prompts(records)
    sampler = self.sampler
    if hasattr(self.credit, "rollout_sampler"):  # Distillation horizons (METHODS.md 7.2).
      sampler = self.credit.rollout_sampler(step, self.sampler)
    out = sampler.generate(
        texts, key=jax.random.fold_in(self.key, step), temperature=c.rl.temperature,
        top_p=c.rl.top_p, top_k=c.rl.top_k, stop_strings=tuple(c.rl.stop_strings),
        params=self.policy_params())
    timings["time/rollout_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    response_mask = np.asarray(out.response_mask, np.float32)
    truncated = np.asarray([r == "length" for r in out.finish_reasons])
    # -- reward channels from the statistics pass (CIRCA's self-certainty):
    # the pass runs here, before the credit step, on the whole rollout batch.
    early_stats, credit_kwargs = None, {}
    # Distillation (METHODS.md 7) takes the old log-probs (and DistIL the
    # hidden states) from the same pass, with the rollout rows.
    needs_old_stats = getattr(self.credit, "needs_old_stats", False)
    if getattr(self.credit, "needs_self_certainty", False) or needs_old_stats:
      with sharding.use_mesh(self.mesh):
        early_stats = self.early_stats_fn(self.params, self.rest, _global(self.mesh, {
            "tokens": np.asarray(out.tokens, np.int32),
            "input_mask": np.asarray(out.input_mask, bool)}), self.ref_params)
    if getattr(self.credit, "needs_self_certainty", False):
      with sharding.use_mesh(self.mesh):
        certainty = circa.sequence_self_certainty(
            early_stats["self_certainty"], jnp.asarray(response_mask))
      credit_kwargs["stats"] = {"self_certainty": _host(certainty)}
    if needs_old_stats:
      credit_kwargs["stats"] = {**early_stats, "tokens": out.tokens,
                                "input_mask": out.input_mask}
    # -- end of the reward-channel statistics.
    adv, loss_mask, metrics = self.credit.advantages(
        examples, list(out.texts), np.asarray(out.tokens)[:, self.prompt_len:],
        response_mask, truncated, **credit_kwargs)
    timings["time/reward_s"] = time.perf_counter() - t0

    batch = {
        "tokens": np.asarray(out.tokens, np.int32),
        "input_mask": np.asarray(out.input_mask, bool),
        "response_mask": loss_mask,
        "old_logp": np.asarray(out.logp, np.float32),
        "advantages": adv,
    }
    if hasattr(self.credit, "update_inputs"):  # DistIL's teacher top k (METHODS.md 7.3).
      batch.update(self.credit.update_inputs())
    if c.rl.update_groups:
      rows, valid, with_signal = credit_lib.select_groups(
          adv, loss_mask, group_size=c.rl.group_size, num_groups=c.rl.update_groups,
          token_loss=getattr(self.credit, "token_loss", False))
      batch = {k: v[rows] for k, v in batch.items()}
      if early_stats is not None:  # The statistics of the selected rows.
        with sharding.use_mesh(self.mesh):
          early_stats = _global(self.mesh, {k: _host(v)[rows] for k, v in early_stats.items()})
      batch["response_mask"] = batch["response_mask"] * valid[:, None]
      metrics["rollout/groups_with_signal"] = float(with_signal)
      metrics["rollout/groups_updated"] = float(valid.sum() // c.rl.group_size)
    t0 = time.perf_counter()
    stats_sharing, update_sharing = self._sharing(batch)
    if update_sharing is not None and update_sharing.packed:
      metrics["train/packed_positions"] = float(update_sharing.packed)
    with sharding.use_mesh(self.mesh):
      gbatch = _global(self.mesh, batch)
      if self.needs_stats:
        # The early pass's statistics serve unless DelTA needs this pass.
        stats = (early_stats if early_stats is not None and not c.algo.delta else
                 self.stats_fn(self.params, self.rest, gbatch, self.ref_params,
                               sharing=stats_sharing))
        if c.train.old_logp == "recompute" or c.algo.delta:
          gbatch["old_logp"] = stats["old_logp"]
        if c.algo.kl_coef > 0:
          gbatch["ref_logp"] = stats["ref_logp"]
        mask = gbatch["response_mask"]
        metrics["rollout/entropy"] = float(
            jnp.sum(stats["entropy"] * mask) / jnp.maximum(jnp.sum(mask), 1.0))
        if c.algo.delta:
          gbatch["advantages"] = stats["advantages"]
          metrics.update(metrics_lib.to_floats(stats["delta_metrics"]))
          metrics.update(self._delta_class_metrics(stats["delta_coef"], gbatch))
          if step in tuple(c.train.delta_report_steps):
            self._delta_report(step, stats["delta_coef"], gbatch)
      timings["time/old_stats_s"] = time.perf_counter() - t0

      t0 = time.perf_counter()
      update_metrics = []
      minis = [gbatch] if c.rl.mini_batches == 1 else self.split_minis(gbatch)
      for mini in minis:
        self.params, self.opt_state, m = self.update_fn(
            self.params, self.rest, self.opt_state, mini, sharing=update_sharing)
        update_metrics.append(m)
    update_metrics = jax.device_get(update_metrics)
    timings["time/update_s"] = time.perf_counter() - t0
    combined = metrics_lib.combine_metrics(
        [{k: float(v) for k, v in m.items()} for m in update_metrics], shares=False)
    metrics.update({k: float(v) for k, v in combined.items()})
    tokens = float(response_mask.sum())
    metrics.update(timings)
    metrics["time/step_s"] = sum(timings.values())
    metrics["time/tokens_per_s"] = tokens / max(metrics["time/step_s"], 1e-9)
    return metrics

  def _sharing(self, batch: dict[str, np.ndarray]
               ) -> tuple[shared_prompt.Sharing | None, shared_prompt.Sharing | None]:
    """The sharing and packing of the statistics pass and of the update (None = neither).

    With `train.shared_prompt`, aligns the batch-wide prefix in `batch` (in
    place: tokens, input_mask), then takes the largest block of rows sharing
    a prompt that keeps whole blocks in every micro-batch (of the whole batch
    for the statistics pass, of a mini-batch for the update). With
    `train.pack_responses`, the packed capacity covers every micro-batch's
    shard of that split (`shared_prompt.pack_capacity`).
    """
    c = self.config
    found = shared_prompt.Sharing(1, 0)
    if c.train.shared_prompt:
      batch["tokens"], batch["input_mask"] = shared_prompt.align_prefix(
          batch["tokens"], batch["input_mask"], prompt_len=self.prompt_len)
      found = shared_prompt.prompt_sharing(
          batch["tokens"], batch["input_mask"], prompt_len=self.prompt_len,
          group_size=c.rl.group_size)
    shards = sharding.batch_shards(self.mesh)

    def fit(rows: int, num_mini: int, used: set[int]) -> shared_prompt.Sharing | None:
      share = found.share
      while rows % (share * c.rl.micro_batches):
        share -= 1
        while found.share % share:
          share -= 1
      packed = 0
      if c.train.pack_responses:
        packed = shared_prompt.pack_capacity(
            batch["response_mask"], num_micro=c.rl.micro_batches, block=share, shards=shards,
            num_mini=num_mini, group_size=c.rl.group_size, compiled=used)
        used.add(packed)
      if share == 1 and found.prefix_len == 0 and not packed:
        return None
      return shared_prompt.Sharing(share, found.prefix_len, packed)

    rows = len(batch["tokens"])
    return (fit(rows, 1, self._packed_sizes["stats"]),
            fit(rows // c.rl.mini_batches, c.rl.mini_batches, self._packed_sizes["update"]))

  def _delta_class_metrics(self, coef: jax.Array, gbatch: dict[str, jax.Array]
                           ) -> dict[str, float]:
    """`delta/coef_mean/<class>` keys: mean c~ per token class (the study's DelTA measure)."""
    coef, mask, adv, tokens = (_host(x) for x in (
        coef, gbatch["response_mask"], gbatch["advantages"], gbatch["tokens"]))
    return study_mechanisms.delta_class_metrics(
        coef, mask, adv, tokens[:, self.prompt_len:],
        decode=functools.partial(self.tokenizer.decode, skip_special_tokens=True))

  def _delta_report(self, step: int, coef: jax.Array, gbatch: dict[str, jax.Array]) -> None:
    from rlvr_jax.training import delta_report  # pylint: disable=g-import-not-at-top
    coef, mask, adv, tokens = (_host(x) for x in (
        coef, gbatch["response_mask"], gbatch["advantages"], gbatch["tokens"]))
    if not self.is_main:
      return
    tokens = tokens[:, self.prompt_len:]
    path = storage.join(self.workdir, f"delta_coefficients_step{step}.png")
    delta_report.coefficient_histogram(coef, mask, adv, path, step)
    table = delta_report.extreme_tokens(coef, mask, tokens, self.tokenizer)
    storage.write_text(storage.join(self.workdir, f"delta_tokens_step{step}.txt"), table)

  # -- the run -------------------------------------------------------------------

  def _meta(self, step: int) -> dict[str, Any]:
    meta = {"step": step, "data": self.iterator.get_state(), "seed": self.config.rl.seed,
            "model_config": self.model_config.to_dict()}
    if self.env_rollout is not None:  # issue 18: the curriculum resumes exactly
      meta["env"] = self.env_rollout.state_dict()
    return meta

  def _check_finite_state(self, step: int) -> None:
    """Refuses to go on (and to save) with non-finite params or optimizer state."""
    # One jitted program: eager reductions of sharded arrays dispatch one
    # collective program per leaf, which can deadlock XLA:CPU's in-process
    # communicator on a multi-device mesh.
    with sharding.use_mesh(self.mesh):
      finite = bool(self._all_finite((self.params, self.opt_state)))
    if not finite:
      raise FloatingPointError(f"step {step}: the parameters or optimizer state hold a "
                               "non-finite value; not saved.")

  def _restore_or_save_base(self) -> int:
    restored = self.checkpointer.restore_latest_intact(self.params, self.opt_state)
    if restored is None:
      self.checkpointer.save(0, self.params, self.opt_state, self._meta(0), force=True)
      self.writer.truncate_after(0)
      return 0
    latest, self.params, self.opt_state, meta = restored
    self.iterator.set_state(meta["data"])
    if self.env_rollout is not None:  # issue 18
      self.env_rollout.load_state_dict(meta["env"])
    logging.info("resumed from step %d", latest)
    start = int(meta["step"])
    # Rows past the restored step are redone by this run; a finished run's
    # final evaluation row stays (it is not redone, see `run`).
    self.writer.truncate_after(start)
    return start

  def _save_evaluation(self, path: str, result: heldout.HeldOutResult) -> None:
    """Writes a held-out evaluation: accuracy, then per problem its outcome and text."""
    if not self.is_main:
      return
    records = (list(self.sources.eval) if self.env_rollout is None  # issue 18: episodes
               else self.env_rollout.eval_records())
    storage.write_json(path, result.to_json(records), indent=1)

  def run(self) -> dict[str, Any]:
    """Trains for rl.steps iterations; evaluates before/after; returns a summary."""
    c = self.config
    start = self._restore_or_save_base()
    summary: dict[str, Any] = {}
    before_path = storage.join(self.workdir, "eval_before.json")
    before = None
    if c.train.eval_before:
      if storage.exists(before_path):
        before = np.asarray(storage.read_json(before_path)["correct"], np.float32)
      else:
        result = self.evaluate("before")
        before = result.correct
        self.writer.write(0, result.metrics("eval"))
        self._save_evaluation(before_path, result)
      summary["accuracy_before"] = float(before.mean())

    bar = tqdm.trange(start, c.rl.steps, initial=start, total=c.rl.steps, desc="train",
                      disable=not self.is_main)
    last_good = start
    skipped_in_row = 0
    for step in bar:
      metrics = self.train_step(step)
      done = step + 1
      if metrics["train/skipped"] > 0:
        skipped_in_row += 1
        logging.warning("step %d: non-finite loss, gradient or updated state; update "
                        "skipped, params kept (last good checkpoint: step %d)",
                        done, last_good)
      else:
        skipped_in_row = 0
      evaluated = bool(c.train.eval_every) and done % c.train.eval_every == 0 and (
          done != c.rl.steps)
      if evaluated:
        metrics.update(self.evaluate(f"step {done}").metrics("eval"))
      if evaluated or metrics["train/skipped"] > 0 or metrics_lib.is_logged_step(
          done, log_every=c.train.log_every, last_step=c.rl.steps):
        self.writer.write(done, metrics)
      if skipped_in_row >= c.train.max_skipped_steps:
        self.checkpointer.wait()
        raise FloatingPointError(
            f"{skipped_in_row} consecutive steps (up to step {done}) skipped their update "
            f"for non-finite values; the last good checkpoint is step {last_good}. Lower "
            f"--config.optim.lr (now {c.optim.lr}) or check the data; "
            f"--config.train.max_skipped_steps={c.train.max_skipped_steps} sets the limit.")
      self._check_finite_state(done)
      if self.checkpointer.save(done, self.params, self.opt_state, self._meta(done)):
        last_good = done
      bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}",
                      acc=f"{metrics['reward/accuracy']:.3f}",
                      s=f"{metrics['time/step_s']:.1f}")
    self.checkpointer.save(c.rl.steps, self.params, self.opt_state, self._meta(c.rl.steps),
                           force=c.rl.steps not in self.checkpointer.all_steps())
    self.checkpointer.wait()

    after_path = storage.join(self.workdir, "eval_after.json")
    if c.train.eval_after and start == c.rl.steps and storage.exists(after_path):
      # A finished run, resumed: nothing changed.
      after = np.asarray(storage.read_json(after_path)["correct"], np.float32)
      summary["accuracy_after"] = float(after.mean())
      if before is not None:
        summary["p_value"] = heldout.mcnemar_exact(before, after)
    elif c.train.eval_after:
      result = self.evaluate("after")
      self.writer.write(c.rl.steps, result.metrics("eval"))
      self._save_evaluation(after_path, result)
      summary["accuracy_after"] = result.accuracy
      if before is not None:
        summary["p_value"] = heldout.mcnemar_exact(before, result.correct)
    if self.is_main and storage.exists(self.writer.path):
      metrics_lib.plot_curves(
          self.writer.path, ("reward/mean", "reward/accuracy", "reward/format_rate"),
          storage.join(self.workdir, "reward_curve.png"), title=c.model.source)
      channels = sorted({key for row in metrics_lib.read_jsonl(self.writer.path) for key in row
                         if key.startswith("reward/channel/")})
      if channels:  # METHODS.md 6.1: each reward channel's curve
        metrics_lib.plot_curves(self.writer.path, tuple(channels),
                                storage.join(self.workdir, "reward_channels.png"),
                                title=c.model.source)
      if self.env_rollout is not None:  # issue 18: each environment's level over steps
        self.env_rollout.plot_levels(self.writer.path,
                                     storage.join(self.workdir, "curriculum_levels.png"))
    return summary

  def close(self) -> None:
    self.checkpointer.close()
    self.writer.close()
    if self.pool is not None:
      self.pool.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
  """Runs the whole experiment of `config` in `workdir` (resuming if possible).

  A `workdir` holding a run of another config is refused
  (`run_state.prepare_workdir`) unless `overwrite`, which clears it first.

  Returns:
    {'accuracy_before', 'accuracy_after', 'p_value'} for the parts that ran.
  """
  trainer = Trainer(config, workdir, overwrite=overwrite)
  try:
    return trainer.run()
  finally:
    trainer.close()
