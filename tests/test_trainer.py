"""The trainer end to end on the tiny config: outputs, resume, errors, RELEX."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax.algorithms import delta as delta_lib
from rlvr_jax.models import config as model_config_lib
from rlvr_jax.relex import pipeline as relex_pipeline
from rlvr_jax.rewards import scorers
from rlvr_jax.training import config_checks
from rlvr_jax.training import loop
from rlvr_jax.training import optimizer as optimizer_lib


def _config(steps, **train):
  c = tiny.get_config()
  c.rl.steps = steps
  c.data.eval_size = 8
  c.train.eval_batch_size = 8
  c.train.tensorboard = False
  for key, value in train.items():
    c.train[key] = value
  return c


def test_smoke_reward_by_hand():
  examples = [{"answer": "12"}] * 3
  texts = ["so \\boxed{12}", "a1 b2", "   "]
  # Row 0: box matches; non-space chars "so\boxed{12}" = 12, letters s,o,b,o,x,e,d = 7.
  # Row 1: "a1b2" -> 2 letters of 4. Row 2: no non-space character -> 0.
  assert tiny.smoke_reward(examples, texts) == {
      "correct": [1.0, 0.0, 0.0], "letters": [7 / 12, 0.5, 0.0]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """One 10-step tiny run with a dense window of 8 (shared by the tests)."""
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  summary = loop.train_and_evaluate(_config(10, dense_window=8, save_every=5, keep=1),
                                    workdir)
  return workdir, summary


def test_tiny_run_writes_every_output(run_dir):
  workdir, summary = run_dir
  assert set(summary) == {"accuracy_before", "accuracy_after", "p_value"}
  assert 0.0 <= summary["accuracy_after"] <= 1.0 and 0.0 <= summary["p_value"] <= 1.0
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "policy/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 11))
  for r in train_rows:
    assert np.isfinite(r["policy/loss"]) and r["train/skipped"] == 0.0
    assert 0.0 <= r["reward/accuracy"] <= 1.0
    # The smoke reward's letters channel differs between random responses,
    # so every step takes a real update (the verifier alone gives 0 here).
    assert 0.0 < r["reward/channel/letters"] < 1.0
    assert r["train/grad_norm"] > 0.0
  assert os.path.getsize(os.path.join(workdir, "reward_curve.png")) > 1000
  for name, key in (("eval_before.json", "accuracy_before"), ("eval_after.json", "accuracy_after")):
    evaluation = json.load(open(os.path.join(workdir, name)))
    correct = [p["correct"] for p in evaluation["problems"]]
    assert len(correct) == 8 and evaluation["correct"] == correct
    assert evaluation["accuracy"] == summary[key] == np.mean(correct)
    assert all(isinstance(p["response"], str) and p["answer"] for p in evaluation["problems"])
  # Dense window 0..8 kept, then save_every=5 with keep=1 -> 10.
  steps = checkpoints.Checkpointer(workdir, save_every=5, keep=1, dense_window=8).all_steps()
  assert steps == list(range(9)) + [10]


def test_relex_extrapolates_the_tiny_run(run_dir, tmp_path):
  """RELEX from the window 1..8 to step 10, against the real step-10 params."""
  workdir, _ = run_dir
  out = str(tmp_path / "relex")
  result = relex_pipeline.run(run_dir=workdir, window=range(1, 9), target_steps=[10],
                              output_dir=out)
  summary = result["summary"]
  error = summary["relex/step_10/relative_error"]
  assert np.isfinite(error)
  extrapolated = checkpoints.restore_params(out, 10)
  real = checkpoints.restore_params(workdir, 10)
  base = checkpoints.restore_params(workdir, 0)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  recomputed = (np.linalg.norm(flat(extrapolated) - flat(real)) /
                np.linalg.norm(flat(real) - flat(base)))
  np.testing.assert_allclose(recomputed, error, rtol=1e-3)
  assert error < 1.0  # closer to the real step 10 than the base model is


def test_resume_gives_the_same_parameters(tmp_path):
  """4 steps straight == 2 steps, stop, resume, 2 more steps."""
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(_config(4, eval_before=False, eval_after=False), straight)
  resumed = str(tmp_path / "resumed")
  loop.train_and_evaluate(_config(2, eval_before=False, eval_after=False), resumed)
  loop.train_and_evaluate(_config(4, eval_before=False, eval_after=False), resumed)
  a = checkpoints.restore_params(straight, 4)
  b = checkpoints.restore_params(resumed, 4)
  base = checkpoints.restore_params(straight, 0)
  moved = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                         jax.tree.leaves(base)))
  assert moved > 1e-4  # the runs really trained
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)


@pytest.mark.parametrize("path,value,message", [
    ("algo.advantage", "ppo", "--config.algo.advantage='ppo'"),
    ("algo.loss_agg", "mean", "--config.algo.loss_agg='mean'"),
    ("rl.micro_batches", 3, "--config.rl.micro_batches=3"),
    ("rl.temperature", 0.0, "--config.rl.temperature=0.0"),
    ("rl.update_groups", 5, "--config.rl.update_groups=5"),
    ("rl.update_groups", -1, "--config.rl.update_groups=-1"),
    ("data.template", "fancy", "--config.data.template='fancy'"),
])
def test_bad_flags_name_the_flag(path, value, message):
  c = tiny.get_config()
  section, key = path.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
    config_checks.validate(c)


def test_flag_choices_are_their_owners_lists():
  # model.dtype float16 is a dtype the model accepts; the restated list
  # ('float32', 'bfloat16') used to refuse it.
  c = tiny.get_config()
  c.model.dtype = "float16"
  config_checks.validate(c)
  choices = config_checks._CHOICES  # pylint: disable=protected-access
  assert choices["model.dtype"] is model_config_lib.DTYPES
  assert choices["model.remat"] is model_config_lib.REMATS
  assert choices["algo.delta_scope"] is delta_lib.SCOPES
  assert choices["optim.decay"] is optimizer_lib.DECAYS
  assert choices["reward.checker"] == ("auto",) + scorers.CHECKERS
  c.train.log_every = 0
  with pytest.raises(ValueError, match=r"--config\.train\.log_every=0"):
    config_checks.validate(c)


def test_update_groups_must_split_into_micro_batches():
  c = tiny.get_config()  # 4 prompts x 4 = 2 mini-batches of 8 rows
  c.rl.micro_batches = 4
  config_checks.validate(c)
  c.rl.update_groups = 1  # mini-batches hold whole groups: 1 group, not 2 mini-batches
  with pytest.raises(ValueError, match=r"--config\.rl\.mini_batches=2"):
    config_checks.validate(c)
  c.rl.update_groups, c.rl.mini_batches = 2, 2  # 2 mini-batches of 4 rows
  c.rl.micro_batches = 8
  with pytest.raises(ValueError, match=r"--config\.rl\.micro_batches=8"):
    config_checks.validate(c)


def test_update_groups_run_skips_groups_without_signal(tmp_path):
  """The random tiny model never answers right: with the verifier's reward
  alone no group has a signal, so the update sees only masked filler rows
  and leaves the policy loss at 0."""
  c = _config(2, eval_before=False, eval_after=False)
  c.reward.fn = ""  # The verifier alone (tiny.py's smoke channel has a signal).
  c.reward.channel_weights = ""
  c.rl.update_groups = 2
  c.rl.mini_batches = 1  # 8 rows over the 8 test devices
  loop.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_rows = [r for r in rows if "policy/loss" in r]
  assert len(train_rows) == 2
  for r in train_rows:
    assert r["rollout/groups_with_signal"] == 0 and r["rollout/groups_updated"] == 0
    assert r["policy/loss"] == 0.0 and r["train/skipped"] == 0.0


def test_scrl_needs_an_even_group():
  c = tiny.get_config()
  c.algo.advantage = "scrl"
  c.rl.group_size = 3
  c.rl.micro_batches = 1
  c.rl.mini_batches = 1
  with pytest.raises(ValueError, match="group_size=3: SCRL"):
    config_checks.validate(c)


@pytest.mark.parametrize("path,value,message", [
    ("optim.lr", float("nan"), "--config.optim.lr=nan: must be a finite"),
    ("optim.lr", float("inf"), "--config.optim.lr=inf: must be a finite"),
    ("rl.temperature", float("nan"), "--config.rl.temperature=nan"),
    ("optim.b2", 1.5, r"--config.optim.b2=1.5: must be in \[0.0, 1.0\)"),
    ("optim.b1", -0.1, "--config.optim.b1=-0.1"),
    ("optim.weight_decay", -1.0, "--config.optim.weight_decay=-1.0"),
    ("algo.kl_coef", -0.5, "--config.algo.kl_coef=-0.5"),
    ("rl.top_p", 1.5, "--config.rl.top_p=1.5"),
    ("train.max_skipped_steps", 0, "--config.train.max_skipped_steps=0"),
])
def test_bad_float_flags_name_the_flag(path, value, message):
  c = tiny.get_config()
  section, key = path.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=message):
    config_checks.validate(c)


def test_preflight_catches_start_up_errors_before_the_model_loads():
  c = tiny.get_config()
  c.data.eval_size = 8
  checked = config_checks.preflight(c)
  assert checked.config.reward.checker == "reasoning_gym"  # 'auto' on reasoning-gym data
  assert checked.config.data.task_kwargs["max_terms"] == 2  # basic_arithmetic's table
  assert 0 < checked.longest_prompt <= c.rl.max_prompt_len
  # SCRL's curriculum prompts are longer than the plain ones.
  c = tiny.get_config("scrl")
  c.data.eval_size = 8
  c.rl.max_prompt_len = checked.longest_prompt
  with pytest.raises(ValueError, match=r"--config\.rl\.max_prompt_len=\d+: a rendered prompt"):
    config_checks.preflight(c)
  # Another task does not inherit basic_arithmetic's kwargs.
  c = tiny.get_config()
  c.data.eval_size = 8
  c.data.task = "chain_sum"
  c.rl.max_prompt_len = 512
  assert "allow_parentheses" not in config_checks.preflight(c).config.data.task_kwargs
  # P + T beyond the tiny preset's 2048 positions, unless allowed.
  c.rl.max_new_tokens = 2048
  with pytest.raises(ValueError, match=r"model\.allow_long_context"):
    config_checks.preflight(c)
  c.model.allow_long_context = True
  config_checks.preflight(c)
  c = tiny.get_config()
  c.data.source = "jsonl"
  c.reward.checker = "reasoning_gym"
  with pytest.raises(ValueError, match=r"--config\.reward\.checker='reasoning_gym'"):
    config_checks.validate(c)


def test_non_finite_updates_stop_the_run_without_saving_them(tmp_path):
  """lr = 1e30 (finite, accepted): the first update blows the params up and is
  skipped, so are the next; the run raises after max_skipped_steps = 2 and
  every saved checkpoint holds finite params."""
  c = _config(4, eval_before=False, eval_after=False, max_skipped_steps=2)
  c.optim.lr = 1e30
  with pytest.raises(FloatingPointError, match="2 consecutive steps"):
    loop.train_and_evaluate(c, str(tmp_path))
  manager = checkpoints.Checkpointer(str(tmp_path), save_every=1, keep=10, dense_window=2)
  steps = manager.all_steps()
  manager.close()
  assert steps and max(steps) <= 2
  for step in steps:
    params = checkpoints.restore_params(str(tmp_path), step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_resume_skips_a_corrupt_checkpoint_and_refuses_another_config(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(_config(2, eval_before=False, eval_after=False), workdir)
  # Corrupt every file of step 2's params.
  for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "2", "params")):
    for name in names:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\0garbage")
  loop.train_and_evaluate(_config(3, eval_before=False, eval_after=False), workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "policy/loss" in r] == [1, 2, 3]  # step 2 once
  assert os.path.isdir(os.path.join(workdir, "checkpoints_corrupt", "2"))
  other = _config(3, eval_before=False, eval_after=False)
  other.optim.lr = 5e-4
  with pytest.raises(ValueError, match=r"--config\.optim\.lr: 0\.001 in the folder, 0\.0005 now"):
    loop.train_and_evaluate(other, workdir)
