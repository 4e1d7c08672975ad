"""LoRA (rlvr_jax/models/lora.py): the adapter forward, its gradients, the update,
the merge, and a LoRA trainer run through checkpoints, resume, export and RELEX."""

import json
import os
import shutil

from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import safetensors.numpy
import torch
import transformers

from experiments import export
from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax.evaluation import evaluate as evaluate_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import loader
from rlvr_jax.models import lora
from rlvr_jax.models import weights
from rlvr_jax.relex import pipeline as relex_pipeline
from rlvr_jax.training import config_checks
from rlvr_jax.training import loop
from rlvr_jax.training import step as step_lib
from test_model_parity import our_logits, torch_logits
from test_train_step import _CFG, _P, _T, _batch  # the train-step tests' tiny model and batch

_RANK, _ALPHA = 4, 8.0  # scale alpha / r = 2


def _lora_model(seed=3):
  """(base decoder, the same weights with rank-4 adapters on every target)."""
  base = decoder_lib.create_model(_CFG, seed=seed)
  adapted = nnx.merge(*nnx.split(base))
  lora.add_adapters(adapted, lora.LoraConfig(rank=_RANK, alpha=_ALPHA), seed=1)
  return base, adapted


def _loss(model, batch):
  """A scalar of the logits: advantage-weighted next-token log-likelihood of the responses."""
  tokens, mask = batch["tokens"], batch["input_mask"]
  logits = model.logits(model(tokens, decoder_lib.positions_from_mask(mask), mask))
  logp = jax.nn.log_softmax(logits[:, _P - 1:-1], axis=-1)
  taken = jnp.take_along_axis(logp, tokens[:, _P:, None], axis=-1)[..., 0]
  return jnp.sum(taken * batch["advantages"] * batch["response_mask"])


def test_linear_adapter_and_merge_by_hand():
  # W = [[1, 0, 2], [0, 1, 1]], x = [1, 2]: x W = [1, 2, 4].
  # A = [[1], [1]] (r = 1), B = [[1, -1, 0.5]], alpha = 2 -> scale 2:
  # x A = 3, (x A) B = [3, -3, 1.5], times 2 = [6, -6, 3]; y = [7, -4, 7].
  linear = decoder_lib.Linear((2, 3), ("embed", "mlp"), rngs=nnx.Rngs(0),
                              param_dtype=jnp.float32)
  w = np.array([[1, 0, 2], [0, 1, 1]], np.float32)
  a, b = np.array([[1], [1]], np.float32), np.array([[1, -1, 0.5]], np.float32)
  linear.kernel[...] = jnp.asarray(w)
  linear.lora_a = nnx.data(nnx.LoRAParam(jnp.asarray(a)))
  linear.lora_b = nnx.data(nnx.LoRAParam(jnp.asarray(b)))
  linear.lora_scale = 2.0
  np.testing.assert_array_equal(linear(jnp.array([[1.0, 2.0]])), [[7.0, -4.0, 7.0]])
  # Merged: W + 2 A B = W + [[2, -2, 1], [2, -2, 1]] = [[3, -2, 3], [2, -1, 2]],
  # and x (W + 2 A B) = [3 + 4, -2 - 2, 3 + 4] = [7, -4, 7], the adapter's output.
  merged = lora.merge_flat({"l/kernel": w[None]}, {"l/lora_a": a[None], "l/lora_b": b[None]},
                           scale=2.0)
  np.testing.assert_array_equal(merged["l/kernel"][0], [[3, -2, 3], [2, -1, 2]])
  with pytest.raises(ValueError, match="'l'.*missing|missing.*'l'"):
    lora.merge_flat({"l/kernel": w[None]}, {"l/lora_a": a[None]}, scale=2.0)


def test_two_input_axes_adapter_equals_numpy():
  # The o projection: kernel [N, Dh, D] with in_dims=2, A [N, Dh, r], B [r, D].
  rng = np.random.default_rng(0)
  linear = decoder_lib.Linear((2, 3, 4), ("heads", "head_dim", "embed"), rngs=nnx.Rngs(0),
                              param_dtype=jnp.float32, in_dims=2)
  a, b = rng.normal(size=(2, 3, 5)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
  linear.lora_a = nnx.data(nnx.LoRAParam(jnp.asarray(a)))
  linear.lora_b = nnx.data(nnx.LoRAParam(jnp.asarray(b)))
  linear.lora_scale = 0.5
  x = rng.normal(size=(7, 2, 3)).astype(np.float32)
  w = np.asarray(linear.kernel[...])
  want = np.einsum("bnh,nhd->bd", x, w) + 0.5 * np.einsum("bnh,nhr,rd->bd", x, a, b)
  np.testing.assert_allclose(linear(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def test_adapters_shapes_axes_and_init():
  _, model = _lora_model()
  adapters = lora.flat(nnx.state(model, nnx.LoRAParam))
  assert sorted(adapters) == sorted(
      f"layers/{owner}/{t}/{n}" for owner, targets in (("attn", "qkvo"), ("mlp", ("gate", "up",
                                                                                   "down")))
      for t in targets for n in ("lora_a", "lora_b"))
  assert adapters["layers/attn/q/lora_a"].shape == (2, 32, _RANK)  # [L, D, r]
  assert adapters["layers/attn/q/lora_b"].shape == (2, _RANK, 2, 16)  # [L, r, N, Dh]
  assert adapters["layers/attn/o/lora_a"].shape == (2, 2, 16, _RANK)  # [L, N, Dh, r]
  assert model.layers.attn.o.lora_b.get_metadata()["logical_axes"] == (None, "embed")
  # PEFT's init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (in = D = 32 for q, F = 64 for down), B = 0.
  for name, fan_in in (("layers/attn/q/lora_a", 32), ("layers/mlp/down/lora_a", 64)):
    a = np.asarray(adapters[name])
    assert np.abs(a).max() <= 1 / np.sqrt(fan_in) and a.std() > 0.4 / np.sqrt(fan_in)
  assert all(not np.any(np.asarray(v)) for k, v in adapters.items() if k.endswith("lora_b"))
  with pytest.raises(ValueError, match="already holds"):
    lora.add_adapters(model, lora.LoraConfig(rank=2))


def test_init_equals_base_and_gradients_are_the_chain_rule():
  batch = _batch()
  base, adapted = _lora_model()
  # Same logits and loss at init (B = 0: x A B is exactly 0).
  tokens, mask = batch["tokens"], batch["input_mask"]
  pos = decoder_lib.positions_from_mask(mask)
  np.testing.assert_array_equal(adapted.logits(adapted(tokens, pos, mask)),
                                base.logits(base(tokens, pos, mask)))
  graphdef, adapters, frozen = step_lib.split_model(adapted)
  loss = lambda p: _loss(nnx.merge(graphdef, p, frozen), batch)
  base_graphdef, params, rest = step_lib.split_model(base)
  base_loss = lambda p: _loss(nnx.merge(base_graphdef, p, rest), batch)
  np.testing.assert_array_equal(loss(adapters), base_loss(params))
  # Gradients: dL/dA = scale (dL/dW) B^T = 0 at B = 0; dL/dB = scale A^T (dL/dW),
  # with dL/dW the base model's kernel gradient, per layer (A [in, r], dL/dW [in, out]).
  grads = lora.flat(jax.grad(loss)(adapters))
  kernel_grads = lora.flat(jax.grad(base_loss)(params))
  a_values = lora.flat(adapters)
  scale = _ALPHA / _RANK
  for prefix in {k.rsplit("/", 1)[0] for k in grads}:
    np.testing.assert_array_equal(grads[f"{prefix}/lora_a"], 0.0)
    a = np.asarray(a_values[f"{prefix}/lora_a"], np.float64)
    gw = np.asarray(kernel_grads[f"{prefix}/kernel"], np.float64)
    layers, rank = a.shape[0], a.shape[-1]
    want = scale * np.einsum("lir,lio->lro", a.reshape(layers, -1, rank),
                             gw.reshape(layers, a.size // (layers * rank), -1))
    got = np.asarray(grads[f"{prefix}/lora_b"]).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6 * np.abs(want).max(),
                               err_msg=prefix)
    assert np.abs(want).max() > 0


def test_adapter_forward_and_gradient_equal_the_merged_weights():
  """At nonzero B, the adapter path equals the base model with W + scale A B (and its grad)."""
  batch = _batch(1)
  base, adapted = _lora_model()
  graphdef, adapters, frozen = step_lib.split_model(adapted)
  rng = np.random.default_rng(2)
  adapters = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32),
                          adapters)
  base_graphdef, _, rest = step_lib.split_model(base)
  adapter_loss = lambda p: _loss(nnx.merge(graphdef, p, frozen), batch)

  def merged_loss(p):
    merged = lora.merged_params(p, frozen, scale=_ALPHA / _RANK)
    return _loss(nnx.merge(base_graphdef, merged, rest), batch)

  np.testing.assert_allclose(adapter_loss(adapters), merged_loss(adapters), rtol=1e-5)
  got, want = jax.grad(adapter_loss)(adapters), jax.grad(merged_loss)(adapters)
  for path, value in lora.flat(want).items():
    np.testing.assert_allclose(lora.flat(got)[path], value, rtol=1e-3,
                               atol=1e-5 * np.abs(value).max(), err_msg=path)


def test_update_changes_only_the_adapters():
  _, adapted = _lora_model()
  graphdef, adapters, frozen = step_lib.split_model(adapted)
  assert all(lora.is_adapter_path(p) for p in lora.flat(adapters))
  assert not any(lora.is_adapter_path(p) for p in lora.flat(frozen))
  frozen_before = {k: np.array(v) for k, v in lora.flat(frozen).items()}
  adapters_before = {k: np.array(v) for k, v in lora.flat(adapters).items()}
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(adapters)
  # Adam's moments mirror the adapters only: no optimizer state for the base.
  adapter_size = sum(v.size for v in adapters_before.values())
  assert sum(x.size for x in jax.tree.leaves(opt_state)) == 2 * adapter_size + 1
  fn = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=_P, num_micro=2,
                                loss_config=step_lib.LossConfig(max_response_len=_T))
  new_adapters, _, metrics = fn(adapters, frozen, opt_state, _batch())  # donates the adapters
  assert metrics["train/skipped"] == 0.0 and metrics["train/grad_norm"] > 0
  for path, value in lora.flat(frozen).items():  # not donated, bit-identical
    np.testing.assert_array_equal(value, frozen_before[path], err_msg=path)
  new = lora.flat(new_adapters)
  for path, before in adapters_before.items():
    if path.endswith("lora_b"):  # B moves (its gradient is nonzero)
      assert np.abs(new[path] - before).max() > 1e-3, path
    else:  # A's first gradient is 0 (B = 0), so Adam leaves it
      np.testing.assert_array_equal(new[path], before, err_msg=path)


@pytest.mark.parametrize("path,value,message", [
    ("model.lora_rank", -1, "--config.model.lora_rank=-1"),
    ("model.lora_alpha", 0.0, "--config.model.lora_alpha=0.0"),
    ("model.lora_targets", ("q", "lm_head"), "--config.model.lora_targets="),
    ("model.lora_targets", ("q", "q"), "--config.model.lora_targets="),
])
def test_bad_lora_flags_name_the_flag(path, value, message):
  c = tiny.get_config()
  c.model.lora_rank = 4
  section, key = path.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    config_checks.validate(c)


# -- a LoRA trainer run -------------------------------------------------------


def _config(steps):
  c = tiny.get_config()
  c.rl.steps = steps
  c.train.eval_before = False
  c.train.eval_after = False
  c.train.tensorboard = False
  c.model.lora_rank = _RANK
  c.model.lora_alpha = _ALPHA
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 2-step tiny LoRA run (rank 4): checkpoints 0, 1, 2 of adapters."""
  workdir = str(tmp_path_factory.mktemp("lora_run"))
  loop.train_and_evaluate(_config(2), workdir)
  return workdir


def _base_params():
  """The base weights of random:tiny (the run's model.source), as the trainer loads them."""
  model, _, _ = loader.load_model("random:tiny")
  return model, nnx.state(model, nnx.Param)


def _adapter_model(run_dir, step):
  """random:tiny with the step's adapters: the model the trainer trained."""
  model, _ = _base_params()
  lora.add_adapters(model, lora.LoraConfig(rank=_RANK, alpha=_ALPHA))
  restored = checkpoints.restore_params(run_dir, step,
                                        target=nnx.state(model, nnx.LoRAParam))
  nnx.update(model, restored)
  return model


def test_lora_run_checkpoints_hold_adapters_and_resume(run_dir, tmp_path):
  saved = [lora.flat(checkpoints.restore_params(run_dir, s)) for s in (0, 1, 2)]
  assert saved[0] and all(lora.is_adapter_path(p) for p in saved[0])
  opt_state = checkpoints.restore_item(run_dir, "opt_state", 2)
  adapter_size = sum(v.size for v in saved[0].values())
  # Adam's mu and nu over the adapters, plus two int32 counts.
  assert sum(np.size(x) for x in jax.tree.leaves(opt_state)) == 2 * adapter_size + 2
  assert all(not np.any(v) for p, v in saved[0].items() if p.endswith("lora_b"))
  assert max(np.abs(saved[2][p] - saved[0][p]).max() for p in saved[0]) > 1e-4
  # Resume: drop step 2 (as if the run stopped after step 1); the rerun redoes it.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(run_dir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
  loop.train_and_evaluate(_config(2), resumed)
  again = lora.flat(checkpoints.restore_params(resumed, 2))
  for path, value in saved[2].items():
    np.testing.assert_allclose(again[path], value, atol=1e-6, err_msg=path)


def test_export_merges_the_adapters(run_dir, tmp_path):
  out = str(tmp_path / "hf")
  result = export.export_run(run_dir, out)
  assert result["step"] == 2 and result["tokenizer"]
  adapted = _adapter_model(run_dir, 2)
  tokenizer = loader.load_source_tokenizer("random:tiny")
  texts = ["What is 17 * 23?", "Compute 2 + 2 and explain the answer briefly."]
  batch = tokenizer(texts, padding=True, return_tensors="np")
  tokens, mask = batch["input_ids"], batch["attention_mask"].astype(bool)
  want = our_logits(adapted, tokens, mask)
  # Our decoder on the exported (merged) weights: the adapter model's logits.
  reloaded, _ = weights.load_hf_checkpoint(out)
  diff = np.abs(our_logits(reloaded, tokens, mask) - want)[mask].max()
  print(f"merged export vs adapter model: max abs logit diff {diff:.2e}")
  assert diff < 1e-5
  ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  torch_diff = np.abs(torch_logits(ref, tokens, mask) - want)[mask].max()
  print(f"transformers on the export vs adapter model: max abs logit diff {torch_diff:.2e}")
  assert torch_diff < 1e-5
  # The export is not the base model: the adapters moved the q kernel.
  _, base = _base_params()
  stored = safetensors.numpy.load_file(os.path.join(out, weights.SINGLE_FILE))
  base_q = np.asarray(base["layers"]["attn"]["q"]["kernel"][...])[0]  # [D, N, Dh]
  exported_q = stored["model.layers.0.self_attn.q_proj.weight"]  # [N Dh, D]
  assert np.abs(exported_q - base_q.reshape(base_q.shape[0], -1).T).max() > 1e-5


def test_relex_extrapolates_the_adapters_and_merges_them(run_dir, tmp_path):
  out, hf_dir = str(tmp_path / "relex"), str(tmp_path / "relex_hf")
  relex_pipeline.run(run_dir=run_dir, window=[1, 2], target_steps=[3], output_dir=out,
                     hf_dir=hf_dir)
  extrapolated = checkpoints.restore_params(out, 3)
  assert all(lora.is_adapter_path(p) for p in lora.flat(extrapolated))
  assert os.path.isfile(os.path.join(out, "config.json"))  # the base source and alpha / r
  # --hf_dir holds W + scale A B of the extrapolated adapters.
  _, base = _base_params()
  want = lora.merge_checkpoint(base, extrapolated, scale=_ALPHA / _RANK)
  stored = safetensors.numpy.load_file(os.path.join(hf_dir, "3", weights.SINGLE_FILE))
  down = want["layers"]["mlp"]["down"]["kernel"][1]  # [F, D]
  np.testing.assert_array_equal(stored["model.layers.1.mlp.down_proj.weight"], down.T)
  # The evaluation's loader merges them the same way (RELEX --eval, experiments.evaluate).
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  loaded, _, _ = evaluate_lib.load_run_model(config, out, 3)
  got = lora.flat(nnx.state(loaded, nnx.Param))
  for path, value in traverse_util.flatten_dict(want, sep="/").items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
