"""On-policy distillation in the trainer (METHODS.md 7, issue 17).

The teacher's log-probs and OPD advantages against transformers' PyTorch
models on the same weights (2-way fsdp mesh == 1 device), DistIL's self-teacher
pass and CE loss term against NumPy, the flags and the config grammar, and each
config's `:tiny` run end to end (with the TOPD/POPD horizon of every step).
"""

import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from experiments.configs import distil as distil_config
from experiments.configs import opd as opd_config
from experiments.configs import tiny
from rlvr_jax import sharding
from rlvr_jax.algorithms import distill
from rlvr_jax.data import feedback
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import loader
from rlvr_jax.models import weights
from rlvr_jax.training import config_checks
from rlvr_jax.training import distill_credit
from rlvr_jax.training import loop
from rlvr_jax.training import step as step_lib
from rlvr_jax.training import teacher as teacher_lib

_CFG = config_lib.tiny(vocab_size=64).replace(
    num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2,
    num_kv_heads=1, head_dim=16, pad_token_id=0)
_P, _T, _B = 5, 6, 4


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
  z = z.astype(np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _rollout(seed: int = 0):
  """[B, P + T] rows: prompts left-padded by 0..3, responses of 2..T tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, _CFG.vocab_size, (_B, _P + _T)).astype(np.int32)
  input_mask = np.ones((_B, _P + _T), bool)
  for i in range(_B):
    input_mask[i, :i] = False
  response_mask = (np.arange(_T)[None] < np.array([[6], [2], [4], [5]])).astype(np.float32)
  input_mask[:, _P:] = response_mask > 0
  tokens[~input_mask] = 0
  return tokens, input_mask, response_mask


def _torch_response_logp(model_dir: str, tokens, input_mask, temperature: float):
  """NumPy log pi(y_t) of the response tokens from transformers' model."""
  ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  positions = np.maximum(np.cumsum(input_mask, axis=1) - 1, 0)
  with torch.no_grad():
    logits = ref(input_ids=torch.tensor(tokens.astype(np.int64)),
                 attention_mask=torch.tensor(input_mask.astype(np.int64)),
                 position_ids=torch.tensor(positions)).logits.double().numpy()
  logp = _np_log_softmax(logits[:, _P - 1:-1] / temperature)
  return np.take_along_axis(logp, tokens[:, _P:, None].astype(np.int64), axis=-1)[..., 0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """Student (seed 1) and teacher (seed 2) tiny models exported as HF folders."""
  dirs = {}
  for name, seed in (("student", 1), ("teacher", 2)):
    model = decoder_lib.create_model(_CFG, seed=seed)
    out = str(tmp_path_factory.mktemp(name))
    weights.export_hf_safetensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), _CFG, out)
    dirs[name] = out
  return dirs


def _opd_on_mesh(dirs, mesh, tokens, input_mask, response_mask, temperature):
  """The trainer's path: stats pass (student), teacher pass, opd_advantages."""
  student, _ = weights.load_hf_checkpoint(dirs["student"], mesh=mesh)
  teacher_model, _ = weights.load_hf_checkpoint(dirs["teacher"], mesh=mesh)
  graphdef, params, rest = step_lib.split_model(student)
  t_graphdef, t_params, t_rest = step_lib.split_model(teacher_model)
  teacher = teacher_lib.Teacher(t_graphdef, t_params, t_rest, None, "teacher", _CFG.vocab_size)
  loss_config = step_lib.LossConfig(temperature=temperature, logprob_chunk=4)
  stats_fn = step_lib.jit_rollout_stats(graphdef, prompt_len=_P, num_micro=2,
                                        loss_config=loss_config, with_hidden=False)
  teacher_fn = teacher_lib.jit_teacher_logprobs(teacher, prompt_len=_P, num_micro=2,
                                                loss_config=loss_config)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  batch = {"tokens": put(tokens), "input_mask": put(input_mask)}
  with sharding.use_mesh(mesh):
    old_logp = stats_fn(params, rest, batch, None)["old_logp"]
    teacher_logp = teacher_fn(batch)
    adv = distill.opd_advantages(teacher_logp, old_logp, put(response_mask))
  spec = nnx.to_pure_dict(t_params)["layers"]["mlp"]["gate"]["kernel"].sharding.spec
  return np.asarray(adv), np.asarray(teacher_logp), np.asarray(old_logp), spec


def test_opd_advantages_equal_transformers_log_ratio_fsdp2_and_one_device(exported):
  """A[i,t] = m (log pi_T(y_t) - log pi_S^0.7(y_t)): the teacher at temperature
  1 and the student at the sampling temperature 0.7, both from transformers'
  PyTorch models on the exported weights, in NumPy; the same on a 2-way fsdp
  mesh (teacher and student parameters sharded) and on one device."""
  tokens, input_mask, response_mask = _rollout()
  want_teacher = _torch_response_logp(exported["teacher"], tokens, input_mask, 1.0)
  want_student = _torch_response_logp(exported["student"], tokens, input_mask, 0.7)
  want = response_mask * (want_teacher - want_student)
  assert np.abs(want).max() > 0.1  # different models: a real signal
  devices = jax.devices()
  results = {}
  for name, (fsdp, n) in {"fsdp2": (2, 2), "one": (1, 1)}.items():
    mesh = sharding.make_mesh(data=1, fsdp=fsdp, tensor=1, devices=devices[:n])
    results[name] = _opd_on_mesh(exported, mesh, tokens, input_mask, response_mask, 0.7)
  adv, teacher_logp, _, spec = results["fsdp2"]
  assert "fsdp" in tuple(spec)  # the teacher is sharded like the policy
  m = response_mask > 0
  np.testing.assert_allclose(teacher_logp[m], want_teacher[m], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(results["one"][0], adv, rtol=1e-5, atol=1e-5)


# -- DistIL: the self-teacher pass and the CE loss term ----------------------


def _distil_inputs(seed=0, k=5):
  tokens, input_mask, response_mask = _rollout(seed)
  # Teacher prompts of 3..7 tokens (P' = 8), then the same response tokens.
  rng = np.random.default_rng(seed + 1)
  prompts = [list(rng.integers(1, _CFG.vocab_size, n)) for n in (3, 7, 5, 4)]
  tb = feedback.build_teacher_batch(prompts, tokens, input_mask, prompt_len=_P, pad_id=0,
                                    max_prompt_len=8, bucket=8)
  return tokens, input_mask, response_mask, tb, k


def _np_logits(model, tokens, input_mask, start):
  positions = decoder_lib.positions_from_mask(jnp.asarray(input_mask))
  hidden = model(jnp.asarray(tokens)[:, :-1], positions[:, :-1], jnp.asarray(input_mask)[:, :-1])
  return np.asarray(model.logits(hidden[:, start - 1:]), np.float64), hidden[:, start - 1:]


def test_distil_teacher_stats_match_numpy():
  """The policy on (feedback prompt + response) at P' - 1 + t gives the top-k
  target of response token t; the student's CE against it from its own rows
  at P - 1 + t; micro-batches 2, LM-head chunk 4 of T = 6 (padded)."""
  model = decoder_lib.create_model(_CFG, seed=3)
  graphdef, params, rest = step_lib.split_model(model)
  tokens, input_mask, response_mask, tb, k = _distil_inputs()
  assert tb.response_start == 8
  np.testing.assert_array_equal(tb.tokens[:, 8:], tokens[:, _P:])
  z_teacher, _ = _np_logits(model, tb.tokens, tb.input_mask, 8)
  z_student, hidden = _np_logits(model, tokens, input_mask, _P)
  out = distill_credit.distil_teacher_stats(
      graphdef, params, rest, {"tokens": jnp.asarray(tb.tokens),
                               "input_mask": jnp.asarray(tb.input_mask)},
      hidden, teacher_prompt_len=8, num_micro=2, k=k, chunk_size=4)
  order = np.argsort(-z_teacher, axis=-1, kind="stable")[..., :k]
  np.testing.assert_array_equal(np.sort(out["topk_ids"], -1), np.sort(order, -1))
  top = np.take_along_axis(z_teacher, order, -1)
  q = np.exp(top - top.max(-1, keepdims=True))
  q /= q.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.sort(out["topk_probs"], -1), np.sort(q, -1), rtol=1e-5,
                             atol=1e-6)
  ce = -np.sum(q * np.take_along_axis(_np_log_softmax(z_student), order, -1), -1)
  np.testing.assert_allclose(out["ce"], ce, rtol=1e-5, atol=1e-5)


def _distil_update(num_micro, coef):
  model = decoder_lib.create_model(_CFG, seed=3)
  graphdef, params, rest = step_lib.split_model(model)
  tokens, input_mask, response_mask, tb, k = _distil_inputs()
  _, hidden = _np_logits(model, tokens, input_mask, _P)
  out = distill_credit.distil_teacher_stats(
      graphdef, params, rest, {"tokens": jnp.asarray(tb.tokens),
                               "input_mask": jnp.asarray(tb.input_mask)},
      hidden, teacher_prompt_len=8, num_micro=1, k=k, chunk_size=None)
  stats = step_lib.rollout_stats(graphdef, params, rest, {
      "tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(input_mask)}, prompt_len=_P,
      num_micro=1, loss_config=step_lib.LossConfig(), with_hidden=False)
  adv = distill.future_credit_advantages(out["ce"], jnp.asarray(response_mask), group_size=2)
  batch = {"tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(input_mask),
           "response_mask": jnp.asarray(response_mask), "old_logp": stats["old_logp"],
           "advantages": adv, "topk_ids": out["topk_ids"], "topk_probs": out["topk_probs"]}
  optimizer = optax.sgd(1.0)
  cfg = step_lib.LossConfig(max_response_len=_T, distil_coef=coef, logprob_chunk=4)
  fn = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=_P,
                                num_micro=num_micro, loss_config=cfg, donate=False)
  new_params, _, metrics = fn(params, rest, optimizer.init(params), batch)
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new_params, params)
  return delta, metrics, out, (graphdef, params, rest, batch)


def test_distil_loss_term_value_gradient_and_micro_batches():
  """The update's loss = PPO-clip(A_future) + 0.5 * sum m CE / sum m, with the
  CE term equal to the stats pass's CE at the same params (token mean, by
  NumPy), the same for 1 and 2 micro-batches, and its gradient that of the
  hand-written loss (SGD lr 1: delta = -grad)."""
  delta, metrics, out, (graphdef, params, rest, batch) = _distil_update(1, 0.5)
  delta2, metrics2, _, _ = _distil_update(2, 0.5)
  m = np.asarray(batch["response_mask"])
  want_ce = float((np.asarray(out["ce"]) * m).sum() / m.sum())
  np.testing.assert_allclose(metrics["distill/ce_loss"], want_ce, rtol=1e-5)
  np.testing.assert_allclose(metrics2["distill/ce_loss"], want_ce, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), delta2, delta)

  def loss(p):
    model = nnx.merge(graphdef, p, rest)
    positions = decoder_lib.positions_from_mask(batch["input_mask"])
    h = model(batch["tokens"][:, :-1], positions[:, :-1], batch["input_mask"][:, :-1])[:, _P - 1:]
    logp_all = jax.nn.log_softmax(model.logits(h), -1)
    logp = jnp.take_along_axis(logp_all, batch["tokens"][:, _P:, None], -1)[..., 0]
    ratio = jnp.exp(logp - batch["old_logp"])
    a = batch["advantages"]
    pg = -jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.2) * a)
    ce = -jnp.sum(batch["topk_probs"] * jnp.take_along_axis(logp_all, batch["topk_ids"], -1), -1)
    return jnp.sum((pg + 0.5 * ce) * m) / m.sum()

  grads = jax.grad(loss)(params)
  jax.tree.map(lambda d, g: np.testing.assert_allclose(d, -np.asarray(g), atol=2e-6),
               delta, grads)
  delta0, _, _, _ = _distil_update(1, 0.0)
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(delta),
                                                  jax.tree.leaves(delta0))) > 1e-4


# -- flags, teacher sources and the config grammar ----------------------------


@pytest.mark.parametrize("changes, flag", [
    ({"algo.advantage": "opd"}, "--config.distill.teacher=''"),
    ({"algo.advantage": "opd", "distill.teacher": "random:tiny", "train.old_logp": "sampler"},
     "--config.train.old_logp='sampler'"),
    ({"distill.horizon": "topd"}, "--config.distill.horizon='topd'"),
    ({"algo.advantage": "distil", "distill.horizon": "fast"}, "--config.distill.horizon='fast'"),
    ({"algo.advantage": "distil", "distill.horizon": "topd", "distill.rho": 0.0},
     "--config.distill.rho=0.0"),
    ({"algo.advantage": "distil", "distill.horizon": "popd", "distill.popd_dk": 0},
     "--config.distill.popd_dk=0"),
    ({"algo.advantage": "distil", "distill.feedback_template": "x"},
     "--config.distill.feedback_template='x'"),
    ({"algo.advantage": "distil", "distill.outcome_estimator": "gdpo"},
     "--config.distill.outcome_estimator='gdpo'"),
    ({"algo.advantage": "distil", "distill.topk": 0}, "--config.distill.topk=0"),
    ({"algo.advantage": "distil", "reward.label_free": True}, "--config.algo.advantage='distil'"),
])
def test_bad_distill_flags_name_the_flag(changes, flag):
  c = tiny.get_config()
  c.reward.fn = ""  # Distillation takes the built-in outcome reward, not tiny's smoke channels.
  c.reward.channel_weights = ""
  c.train.old_logp = "recompute"
  for path, value in changes.items():
    section, key = path.split(".")
    c[section][key] = value
  with pytest.raises(ValueError, match=flag.replace(".", r"\.")):
    config_checks.validate(c)


def test_teacher_sources_and_tokenizer_check(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m experiments.train --workdir=runs/default"):
    teacher_lib.check_source(str(tmp_path / "runs" / "default"))
  teacher_lib.check_source("random:tiny")
  smollm2 = loader.load_source_tokenizer("smollm2")
  from test_weights import tiny_tokenizer  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"teacher='t/x'.*model\.source='smollm2'.*vocabularies"):
    teacher_lib.check_same_tokenizer(tiny_tokenizer(), smollm2, teacher_source="t/x",
                                     student_source="smollm2")
  teacher_lib.check_same_tokenizer(smollm2, smollm2, teacher_source="a", student_source="b")


def test_opd_config_grammar():
  assert opd_config.parse_arg(None, "opd.py") == ("full", False)
  assert opd_config.parse_arg("topd", "opd.py") == ("topd", False)
  assert opd_config.parse_arg("popd,tiny", "opd.py") == ("popd", True)
  assert opd_config.parse_arg("tiny,topd", "opd.py") == ("topd", True)
  c = opd_config.get_config()
  assert (c.algo.advantage, c.distill.teacher, c.model.source) == ("opd", "runs/default",
                                                                   "smollm2")
  with pytest.raises(ValueError, match="one horizon only"):
    opd_config.get_config("topd,popd")
  with pytest.raises(ValueError, match="unknown word 'fast'"):
    opd_config.get_config("fast")
  with pytest.raises(ValueError, match="'tiny' or absent"):
    distil_config.get_config("topd")


# -- each config's :tiny run, with the horizon of every step ------------------


@pytest.mark.parametrize("module, arg, steps, horizons", [
    # T = 8: full 8; TOPD ceil(0.1 * 8) = 1; POPD min(8, 2 + 2 * floor(k / 1)) = 2, 4.
    (opd_config, "tiny", 1, [8]),
    (opd_config, "topd,tiny", 1, [1]),
    (opd_config, "popd,tiny", 2, [2, 4]),
    (distil_config, "tiny", 1, [8]),
])
def test_distill_config_tiny_runs(module, arg, steps, horizons, tmp_path):
  c = module.get_config(arg)
  c.rl.steps = steps
  c.train.eval_before = False
  if module is distil_config:
    # The CE term alone, through the update's group filter: every advantage is 0,
    # and the groups must still be updated (the filter once dropped them all).
    c.distill.future_coef = 0.0
    c.rl.update_groups = c.rl.prompts_per_batch
  summary = loop.train_and_evaluate(c, str(tmp_path))
  assert 0.0 <= summary["accuracy_after"] <= 1.0
  rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
  train = [r for r in rows if "policy/loss" in r]
  assert [r["distill/horizon"] for r in train] == horizons
  for r in train:
    assert r["train/skipped"] == 0.0
    for key in ("policy/loss", "reward/mean", "policy/entropy"):
      assert np.isfinite(r[key]), key
  if module is distil_config:
    # The stats pass's CE and the update's CE term: same params, same mask.
    assert train[0]["distill/ce_loss"] == pytest.approx(train[0]["distill/ce"], rel=1e-4)
    assert train[0]["distill/ce"] > 0.1 and train[0]["rollout/groups_updated"] == 2.0
  else:
    # First update, ratio 1: loss = -mean_{m} A = -(mean log-ratio) over the loss mask.
    assert train[0]["policy/loss"] == pytest.approx(-train[0]["distill/log_ratio"], abs=1e-5)
    assert abs(train[0]["distill/log_ratio"]) > 1e-4
  if horizons[0] < 8:  # Every row cut at the horizon, and all of them in the loss.
    assert train[0]["response/truncated_frac"] == 1.0
  if arg == "tiny" and module is opd_config:
    # The finished run as a teacher: its latest step, with the run's model config.
    tokenizer = loader.load_source_tokenizer("smollm2")
    teacher = teacher_lib.load_teacher(str(tmp_path), student_tokenizer=tokenizer,
                                       student_source="random:tiny", dtype="float32",
                                       param_dtype="float32", mesh=None)
    assert teacher.description == f"{tmp_path}@step1"
    base, _, _ = loader.load_model("random:tiny")
    trained = jax.tree.leaves(nnx.to_pure_dict(teacher.params))
    fresh = jax.tree.leaves(nnx.to_pure_dict(nnx.state(base, nnx.Param)))
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(trained, fresh)) > 1e-4  # the trained step, not the source
