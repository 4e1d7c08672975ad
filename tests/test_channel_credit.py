"""Reward channels and the reward-side methods in the trainer (issue 16).

ChannelCredit against independent NumPy versions (GDPO on channels, POW3R on
rubric verdicts, LongTraceRL gating, CIRCA label-free), the self-certainty of
the statistics pass against full logits, KL-Cov in the update step (1 vs 4
micro-batches, and against a by-hand loss), flag checks, and each method
config's `:tiny` run end to end.
"""

import json
import math
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import circa as circa_config
from experiments.configs import default
from experiments.configs import longtrace as longtrace_config
from experiments.configs import pow3r as pow3r_config
from experiments.configs import tiny
from rlvr_jax.algorithms import circa
from rlvr_jax.algorithms import kl_cov
from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.models.decoder import positions_from_mask
from rlvr_jax.rewards import scorers
from rlvr_jax.training import channel_credit
from rlvr_jax.training import config_checks
from rlvr_jax.training import credit as credit_lib
from rlvr_jax.training import loop
from rlvr_jax.training import step as step_lib

# -- NumPy references written from METHODS.md 6.2 / 6.3 --------------------


def _np_group_z(r, G):
  r = np.asarray(r, np.float64).reshape(-1, G)
  std = r.std(axis=1, ddof=1, keepdims=True)
  z = (r - r.mean(axis=1, keepdims=True)) / (std + 1e-6)
  return np.where(std > 0, z, 0.0).reshape(-1)


def _np_gdpo(values, weights, G):
  """A_c = group z-score per channel; A = sum_c w_c A_c; whiten over the batch."""
  a = sum(w * _np_group_z(values[:, c], G) for c, w in enumerate(weights))
  std = a.std(ddof=1)
  return np.where(std > 0, (a - a.mean()) / (std + 1e-6), 0.0)


def _np_pow3r_one_group(v, w, cat, a=0.5, b=0.5, lo=0.1, hi=3.0):
  G = v.shape[0]
  p = (v.sum(axis=0) + a) / (G + a + b)
  s = np.sqrt(p * (1 - p))
  alpha = np.array([np.clip(s[j] / s[cat == cat[j]].mean(), lo, hi) for j in range(len(w))])
  tilde = np.array([w[j] * alpha[j] * w[cat == cat[j]].sum() / (w * alpha)[cat == cat[j]].sum()
                    for j in range(len(w))])
  return v @ tilde / tilde.sum()


def _config(**reward):
  c = default.get_config()
  c.reward.checker = "exact"
  for key, value in reward.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def _credit(c, format_weight=0.0):
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=32,
                                     format_weight=format_weight)
  return channel_credit.ChannelCredit(config=c, render=lambda r: r["problem"],
                                      reward_fn=reward_fn, pool=None)


def _call(credit, examples, texts, T=6, **kwargs):
  mask = np.ones((len(texts), T), np.float32)
  return credit.advantages(examples, texts, np.zeros((len(texts), T), np.int32), mask,
                           np.zeros(len(texts), bool), **kwargs)


# Two groups of G = 4 with gold answers 7 and 9.
_EXAMPLES = [{"problem": "3+4", "answer": "7"}] * 4 + [{"problem": "4+5", "answer": "9"}] * 4
_TEXTS = ["\\boxed{7}", "7 is \\boxed{7} then more", "\\boxed{8}", "\\boxed{7} \\boxed{8}",
          "\\boxed{9}", "\\boxed{6}", "so \\boxed{6}.", "nine"]
_CORRECT = [1, 1, 0, 0, 1, 0, 0, 0]  # the last box counts: row 3 answers 8
_FORMAT = [1, 0, 1, 0, 1, 1, 1, 0]  # one box at the end


def test_gdpo_normalizes_the_channels_not_their_sum():
  """format weight 0.5: the trainer's GDPO equals NumPy GDPO over (correct,
  format, overlong) with lambda = (1, 0.5, 1), not GDPO of the summed scalar."""
  c = _config(algo__advantage="gdpo", reward__format_weight=0.5)
  adv, _, metrics = _call(_credit(c, 0.5), _EXAMPLES, _TEXTS)
  values = np.stack([_CORRECT, _FORMAT, np.zeros(8)], axis=1)
  want = _np_gdpo(values, [1.0, 0.5, 1.0], 4)
  np.testing.assert_allclose(adv[:, 0], want, rtol=1e-5, atol=1e-6)
  summed = _np_gdpo(values @ np.array([1.0, 0.5, 1.0])[:, None], [1.0], 4)
  assert abs(adv[0, 0] - summed[0]) > 0.05  # the old behaviour differs
  assert metrics["reward/channel/correct"] == pytest.approx(3 / 8)
  assert metrics["reward/channel/format"] == pytest.approx(5 / 8)
  assert metrics["reward/accuracy"] == pytest.approx(3 / 8)
  assert metrics["reward/mean"] == pytest.approx((3 + 0.5 * 5) / 8)


def test_channel_weights_flag_sets_gdpo_lambda():
  c = _config(algo__advantage="gdpo", reward__format_weight=0.5,
              reward__channel_weights="format=2,overlong=0")
  adv, _, _ = _call(_credit(c, 0.5), _EXAMPLES, _TEXTS)
  values = np.stack([_CORRECT, _FORMAT, np.zeros(8)], axis=1)
  np.testing.assert_allclose(adv[:, 0], _np_gdpo(values, [1.0, 2.0, 0.0], 4),
                             rtol=1e-5, atol=1e-6)


def test_grpo_matches_outcome_credit():
  c = _config(reward__format_weight=0.5)
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=32, format_weight=0.5)
  outcome = credit_lib.OutcomeCredit(estimator="grpo", group_size=4, render=str,
                                     reward_fn=reward_fn, mask_truncated=False)
  mask = np.ones((8, 6), np.float32)
  want, _, want_metrics = outcome.advantages(_EXAMPLES, _TEXTS, None, mask, np.zeros(8, bool))
  adv, _, metrics = _call(_credit(c, 0.5), _EXAMPLES, _TEXTS)
  np.testing.assert_allclose(adv, want, atol=1e-6)
  assert {k: v for k, v in metrics.items() if not k.startswith("reward/channel/")} == (
      pytest.approx(want_metrics))


def test_parse_channel_weights():
  assert channel_credit.parse_channel_weights("") == {}
  assert channel_credit.parse_channel_weights("a=1, b=-0.5") == {"a": 1.0, "b": -0.5}
  for bad in ("a", "a=x", "=1", "a=1,a=2", "a=nan"):
    with pytest.raises(ValueError, match="--config.reward.channel_weights"):
      channel_credit.parse_channel_weights(bad)


def test_user_reward_fn_by_import_path(tmp_path, monkeypatch):
  (tmp_path / "my_user_rewards.py").write_text(
      "def score(examples, texts):\n"
      "  return {'correct': [float(t.endswith('!')) for t in texts],\n"
      "          'length': [len(t) / 10 for t in texts]}\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  c = _config(reward__fn="my_user_rewards:score", reward__channel_weights="length=0.5")
  texts = ["yes!", "no", "ok!!", "hmm", "a", "bb", "c!", "dd"]
  adv, _, metrics = _call(_credit(c), [{"problem": "p"}] * 8, texts)
  correct = np.array([1, 0, 1, 0, 0, 0, 1, 0], np.float32)
  length = np.array([len(t) / 10 for t in texts], np.float32)
  scalar = correct + 0.5 * length  # e.g. row 0: 1 + 0.5 * 0.4 = 1.2
  np.testing.assert_allclose(adv[:, 0], _np_group_z(scalar, 4), rtol=1e-5, atol=1e-6)
  assert metrics["reward/channel/length"] == pytest.approx(length.mean())
  assert metrics["reward/accuracy"] == pytest.approx(3 / 8)
  assert metrics["reward/mean"] == pytest.approx(scalar.mean())
  c.reward.channel_weights = "nope=1"
  with pytest.raises(ValueError, match="--config.reward.channel_weights names"):
    _call(_credit(c), [{"problem": "p"}] * 8, texts)


def _rubric_example():
  criteria = [
      {"kind": "include_keyword", "params": {"word": "river"}, "weight": 2.0,
       "category": "content"},
      {"kind": "exclude_keyword", "params": {"word": "stone"}, "weight": 1.0,
       "category": "content"},
  ]
  return {"problem": "Write.", "answer": "", "task": "rubric",
          "metadata": {"criteria": criteria}}


def test_pow3r_on_rubric_verdicts():
  """Verdicts [[1,1],[1,0],[0,1],[0,1]], w = (2, 1), one category:
  p = (2.5/5, 3.5/5) = (.5, .7), s = (.5, .458258), alpha = s / .479129 =
  (1.043561, .956439), w~ = w alpha * 3 / 3.043561 = (2.057250, .942750),
  R = v.w~ / 3 = (1, .685750, .314250, .314250)."""
  c = _config(data__task="rubric", reward__pow3r=True)
  examples = [_rubric_example()] * 4
  texts = ["a river", "river and stone", "nothing", "calm"]
  adv, _, metrics = _call(_credit(c), examples, texts)
  v = np.array([[1, 1], [1, 0], [0, 1], [0, 1]], np.float64)
  rewards = _np_pow3r_one_group(v, np.array([2.0, 1.0]), np.array([1, 1]))
  np.testing.assert_allclose(rewards, [1.0, 0.685750, 0.314250, 0.314250], atol=1e-5)
  np.testing.assert_allclose(adv[:, 0], _np_group_z(rewards, 4), rtol=1e-4, atol=1e-5)
  assert metrics["reward/channel/pow3r"] == pytest.approx(rewards.mean(), rel=1e-5)
  assert metrics["reward/channel/static"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
  assert metrics["reward/channel/include_keyword"] == 0.5
  assert metrics["reward/accuracy"] == 0.25  # strict completion: row 0 only
  # Static weights (POW3R off): R = (1, 2/3, 1/3, 1/3).
  c.reward.pow3r = False
  adv, _, _ = _call(_credit(c), examples, texts)
  np.testing.assert_allclose(adv[:, 0], _np_group_z([1, 2 / 3, 1 / 3, 1 / 3], 4), atol=1e-5)


def test_rubric_evaluation_keeps_static_weights():
  out = channel_credit.RubricReward()([_rubric_example()] * 2, ["river", "stone"], None)
  np.testing.assert_allclose(out.rewards, [1.0, 0.0])  # (2 + 1) / 3; 0 / 3
  np.testing.assert_array_equal(out.correct, [1.0, 0.0])


def test_longtrace_gates_the_entity_bonus_on_correctness():
  """Entity '12', answer 20, eta 0.3: R = (1, 0.7, 0, 0); a wrong answer that
  names the entity gets exactly 0."""
  c = _config(reward__longtrace_eta=0.3)
  chain = [{"statement": "5+7", "ground_truth": "12"},
           {"statement": "5+7+8", "ground_truth": "20"}]
  examples = [{"problem": "5+7+8", "answer": "20", "subproblems": chain}] * 4
  texts = ["5 + 7 = 12, 12 + 8 = \\boxed{20}", "\\boxed{20}", "12 so \\boxed{5}", "\\boxed{7}"]
  adv, _, metrics = _call(_credit(c), examples, texts)
  rewards = np.array([1.0, 0.7, 0.0, 0.0])
  np.testing.assert_allclose(adv[:, 0], _np_group_z(rewards, 4), rtol=1e-5, atol=1e-6)
  assert metrics["reward/channel/entities"] == 0.5
  assert metrics["reward/channel/longtrace"] == pytest.approx(rewards.mean())
  assert metrics["reward/accuracy"] == 0.5


def test_pow3r_on_subproblem_verdicts():
  """Criteria: entity '12' named, final answer correct (weights 1, one category)."""
  c = _config(reward__pow3r=True)
  chain = [{"statement": "5+7", "ground_truth": "12"},
           {"statement": "5+7+8", "ground_truth": "20"}]
  examples = [{"problem": "5+7+8", "answer": "20", "subproblems": chain}] * 4
  texts = ["12 then \\boxed{20}", "\\boxed{20}", "12 so \\boxed{5}", "\\boxed{7}"]
  adv, _, metrics = _call(_credit(c), examples, texts)
  v = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], np.float64)
  rewards = _np_pow3r_one_group(v, np.ones(2), np.zeros(2, int))
  np.testing.assert_allclose(adv[:, 0], _np_group_z(rewards, 4), rtol=1e-4, atol=1e-5)
  assert metrics["reward/channel/subproblem_1"] == 0.5


def test_circa_label_free_uses_no_gold_answer():
  """Votes of (3, 3, 4, none) = (.5, .5, .25, 0) and the given self-certainty,
  GDPO with lambda = (1, 1); changing the gold answers changes no advantage."""
  c = _config(reward__label_free=True, algo__advantage="gdpo")
  texts = ["\\boxed{3}", "so \\boxed{3}", "\\boxed{4}", "none"] * 2
  certainty = np.array([0.1, 0.4, 0.2, 0.3, 1.0, 1.0, 1.0, 1.0], np.float32)
  stats = {"self_certainty": certainty}
  gold = [{"problem": "p", "answer": "3"}] * 4 + [{"problem": "q", "answer": "4"}] * 4
  adv, _, metrics = _call(_credit(c), gold, texts, stats=stats)
  votes = np.array([0.5, 0.5, 0.25, 0.0] * 2)
  want = _np_gdpo(np.stack([votes, certainty], axis=1), [1.0, 1.0], 4)
  np.testing.assert_allclose(adv[:, 0], want, rtol=1e-5, atol=1e-6)
  assert metrics["reward/channel/cluster_vote"] == pytest.approx(votes.mean())
  assert metrics["reward/accuracy"] == pytest.approx(3 / 8)  # measured, not trained on
  other_gold = [{"problem": "p", "answer": "99"}] * 8
  adv2, _, metrics2 = _call(_credit(c), other_gold, texts, stats=stats)
  np.testing.assert_array_equal(adv2, adv)
  assert metrics2["reward/accuracy"] == 0.0
  with pytest.raises(ValueError, match="self_certainty"):
    _call(_credit(c), gold, texts)


# -- the statistics pass and the update step ---------------------------------

_CFG = config_lib.tiny(vocab_size=64).replace(
    num_layers=2, hidden_size=32, intermediate_size=64, num_heads=2,
    num_kv_heads=1, head_dim=16)
_P, _T, _B = 4, 6, 8


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, _CFG.vocab_size, (_B, _P + _T)).astype(np.int32)
  input_mask = np.ones((_B, _P + _T), bool)
  input_mask[::3, :2] = False
  response_mask = (np.arange(_T)[None] < rng.integers(2, _T + 1, (_B, 1))).astype(np.float32)
  input_mask[:, _P:] = response_mask > 0
  return {
      "tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(input_mask),
      "response_mask": jnp.asarray(response_mask),
      "old_logp": jnp.asarray(rng.normal(-3.0, 0.3, (_B, _T)).astype(np.float32)),
      "advantages": jnp.asarray(rng.normal(size=(_B, _T)).astype(np.float32)),
  }


def test_stats_pass_self_certainty_matches_full_logits():
  """Chunked (chunk 4 of T = 6, padded) per-token self-certainty from the
  statistics pass == KL(U || softmax(z / temperature)) from the full logits."""
  model = decoder_lib.create_model(_CFG, seed=3)
  graphdef, params, rest = step_lib.split_model(model)
  batch = _batch()
  cfg = step_lib.LossConfig(temperature=0.7, logprob_chunk=4)
  stats = step_lib.rollout_stats(graphdef, params, rest, batch, prompt_len=_P, num_micro=2,
                                 loss_config=cfg, with_hidden=False, with_self_certainty=True)
  positions = positions_from_mask(batch["input_mask"])
  hidden = model(batch["tokens"][:, :-1], positions[:, :-1], batch["input_mask"][:, :-1])
  z = np.asarray(model.logits(hidden[:, _P - 1:]), np.float64) / 0.7
  logz = np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) + z.max(-1)
  want = logz - z.mean(-1) - np.log(_CFG.vocab_size)
  np.testing.assert_allclose(stats["self_certainty"], want, rtol=1e-4, atol=1e-5)
  m = np.asarray(batch["response_mask"])
  np.testing.assert_allclose(
      circa.sequence_self_certainty(stats["self_certainty"], batch["response_mask"]),
      (want * m).sum(1) / m.sum(1), rtol=1e-4)


def _update(num_micro, ratio, beta=1.0):
  model = decoder_lib.create_model(_CFG, seed=3)
  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optax.sgd(1.0)
  cfg = step_lib.LossConfig(max_response_len=_T, eps_low=0.2, eps_high=0.28,
                            kl_cov_ratio=ratio, kl_cov_beta=beta)
  fn = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=_P,
                                num_micro=num_micro, loss_config=cfg, donate=False)
  new_params, _, metrics = fn(params, rest, optimizer.init(params), _batch())
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new_params, params)
  return delta, metrics, (graphdef, params, rest)


def test_kl_cov_micro_batches_give_the_same_loss_and_gradient():
  """ratio 0.25 of ~30 valid tokens: the batch-global top-k is taken once per
  mini-batch, so 1 and 4 micro-batches select the same tokens and give the
  same loss and update; the loss equals a by-hand token mean."""
  ref_delta, ref_metrics, (graphdef, params, rest) = _update(1, 0.25)
  delta, metrics, _ = _update(4, 0.25)
  np.testing.assert_allclose(metrics["policy/loss"], ref_metrics["policy/loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["policy/kl_cov_frac"], ref_metrics["policy/kl_cov_frac"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), delta, ref_delta)
  batch = _batch()
  m = np.asarray(batch["response_mask"])
  n_valid = m.sum()
  assert ref_metrics["policy/kl_cov_frac"] == pytest.approx(math.ceil(0.25 * n_valid) / n_valid)

  def loss(p):
    model = nnx.merge(graphdef, p, rest)
    logp = logprobs_lib.response_logprobs(model, batch["tokens"], batch["input_mask"],
                                          prompt_len=_P).logp
    sel = kl_cov.kl_cov_selection(batch["old_logp"], batch["advantages"],
                                  batch["response_mask"], ratio=0.25)
    a, old = batch["advantages"], batch["old_logp"]
    ratio = jnp.exp(logp - old)
    clipped = -jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.28) * a)
    per_token = jnp.where(sel, -a * ratio + jnp.abs(logp - old), clipped)
    return jnp.sum(per_token * m) / n_valid

  value, grads = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(ref_metrics["policy/loss"], value, rtol=1e-5)
  jax.tree.map(lambda d, g: np.testing.assert_allclose(d, -np.asarray(g), atol=1e-6),
               ref_delta, grads)
  _, off_metrics, _ = _update(1, 0.0)
  assert "policy/kl_cov_frac" not in off_metrics
  assert abs(float(off_metrics["policy/loss"]) - float(value)) > 1e-3


# -- flags -------------------------------------------------------------------


@pytest.mark.parametrize("changes, flag", [
    ({"reward.longtrace_eta": 1.5}, "--config.reward.longtrace_eta=1.5"),
    ({"reward.pow3r_alpha_min": 0.0}, "--config.reward.pow3r_alpha_min=0.0"),
    ({"reward.pow3r_a": -1.0}, "--config.reward.pow3r_a="),
    ({"algo.kl_cov_ratio": 2.0}, "--config.algo.kl_cov_ratio=2.0"),
    ({"algo.kl_cov_beta": -1.0}, "--config.algo.kl_cov_beta=-1.0"),
    ({"algo.kl_cov_ratio": 0.1, "algo.policy_loss": "gspo"}, "--config.algo.policy_loss='gspo'"),
    ({"reward.channel_weights": "a=b"}, "--config.reward.channel_weights='a=b'"),
    ({"reward.fn": "no_such_module_xyz:f"}, "--config.reward.fn='no_such_module_xyz:f'"),
    ({"reward.pow3r": True, "algo.advantage": "gdpo"}, "--config.algo.advantage='gdpo'"),
    ({"reward.label_free": True, "algo.advantage": "scrl"}, "--config.algo.advantage='scrl'"),
    ({"reward.label_free": True, "reward.pow3r": True}, "--config.reward.label_free=True"),
    ({"data.task": "rubric", "reward.checker": "reasoning_gym"},
     "--config.reward.checker='reasoning_gym'"),
])
def test_bad_method_flags_name_the_flag(changes, flag):
  c = tiny.get_config()
  for path, value in changes.items():
    section, key = path.split(".")
    c[section][key] = value
  if c.data.task == "rubric":
    c.data.task_kwargs = {"difficulty": 2}
  with pytest.raises(ValueError, match=flag.replace("[", r"\[").replace(".", r"\.")):
    config_checks.validate(c)


# -- each method config's :tiny run -------------------------------------------


@pytest.mark.parametrize("module, keys", [
    (circa_config, ("reward/channel/cluster_vote", "reward/channel/self_certainty",
                    "policy/kl_cov_frac")),
    (pow3r_config, ("reward/channel/pow3r", "reward/channel/static")),
    (longtrace_config, ("reward/channel/entities", "reward/channel/longtrace")),
])
def test_method_config_tiny_runs(module, keys, tmp_path):
  c = module.get_config("tiny")
  c.rl.steps = 1
  c.train.eval_before = False
  summary = loop.train_and_evaluate(c, str(tmp_path))
  assert 0.0 <= summary["accuracy_after"] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in rows if "policy/loss" in r]
  assert len(train) == 1
  for key in keys + ("reward/mean", "reward/accuracy", "policy/loss"):
    assert np.isfinite(train[0][key]), key
  assert train[0]["train/skipped"] == 0.0
  assert os.path.getsize(tmp_path / "reward_channels.png") > 1000
