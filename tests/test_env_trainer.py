"""The trainer on environment episodes: the ecom and adaptive `:tiny` configs.

End to end on the random tiny model (plumbing, not learning): the env and
curriculum metrics appear and are finite, the levels move as the controller
says for all-wrong episodes, and a resumed run restores the curriculum.
"""

import json
import math
import os

import numpy as np
import pytest

from experiments.configs import adaptive
from experiments.configs import ecom
from rlvr_jax import checkpoints
from rlvr_jax.envs import base
from rlvr_jax.envs import ecom as ecom_env
from rlvr_jax.envs import reasoning_gym_env
from rlvr_jax.training import env_rollout
from rlvr_jax.training import loop


def _rows(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r for r in rows if "policy/loss" in r]


def test_ecom_tiny_runs_with_env_and_curriculum_metrics(tmp_path):
  c = ecom.get_config("tiny")
  c.train.eval_before = False
  summary = loop.train_and_evaluate(c, str(tmp_path))
  rows = _rows(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    for key in ("env/ecom/success", "env/ecom/budget", "env/ecom/quantity",
                "env/ecom/category", "env/ecom/checked_out", "curriculum/ecom/level",
                "curriculum/ecom/weight", "episode/turns_mean", "reward/mean",
                "policy/loss"):
      assert key in r and math.isfinite(r[key]), key
    assert r["curriculum/ecom/level"] == 0.0 and 1.0 <= r["episode/turns_mean"] <= 2.0
    assert r["train/skipped"] == 0.0
  assert os.path.getsize(tmp_path / "curriculum_levels.png") > 1000
  evaluation = json.load(open(tmp_path / "eval_after.json"))
  assert len(evaluation["correct"]) == 2 == c.env.eval_episodes
  assert evaluation["problems"][0]["problem"] == "ecom seed 1000000000 level 0"
  assert summary["accuracy_after"] == np.mean(evaluation["correct"])
  # The held-out per-constraint pass rates: in the JSON and in the final eval metrics row.
  channels = evaluation["channels"]
  assert channels["env/ecom/success"] == summary["accuracy_after"]
  assert {"env/ecom/budget", "env/ecom/category", "env/ecom/quantity"} <= set(channels)
  final = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")][-1]
  for name, value in channels.items():
    assert final[f"eval/{name}"] == value and 0.0 <= value <= 1.0, name


def _adaptive(steps):
  c = adaptive.get_config("tiny")
  c.rl.steps = steps
  c.env.level = 3
  c.train.eval_before = c.train.eval_after = False
  return c


def test_adaptive_tiny_levels_move_and_resume_restores_the_curriculum(tmp_path):
  """All episodes fail (random model), window 4, 2 groups of 4 per step:
  step 1's first group (level 3) fills the window at accuracy 0 < 0.2 -> level
  2, its second group (sampled at level 3) is ignored; step 2 likewise -> 1."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(_adaptive(2), straight)
  rows = _rows(straight)
  assert [r["curriculum/chain_sum/level"] for r in rows] == [2.0, 1.0]
  assert [r["env/chain_sum/success"] for r in rows] == [0.0, 0.0]
  assert all(math.isfinite(r["env/chain_sum/format"]) for r in rows)
  meta = checkpoints.restore_item(straight, "meta", 2)
  assert meta["env"]["curriculum"]["controllers"]["chain_sum"] == {
      "level": 1, "outcomes": []}
  assert meta["env"]["groups_drawn"] == 4

  loop.train_and_evaluate(_adaptive(1), resumed)
  loop.train_and_evaluate(_adaptive(2), resumed)
  assert checkpoints.restore_item(resumed, "meta", 2)["env"] == meta["env"]
  assert [r["curriculum/chain_sum/level"] for r in _rows(resumed)] == [2.0, 1.0]


def test_fixed_difficulty_keeps_the_level(tmp_path):
  c = _adaptive(1)
  c.curriculum.adaptive = False
  loop.train_and_evaluate(c, str(tmp_path))
  assert _rows(str(tmp_path))[0]["curriculum/chain_sum/level"] == 3.0


@pytest.mark.parametrize("path,value,message", [
    ("env.name", "chess", "--config.env.name='chess'"),
    ("env.name", "reasoning_gym:leg_counting", "no level table"),
    ("env.name", "ecom,ecom", "twice"),
])
def test_bad_env_flags_name_the_flag(path, value, message):
  c = ecom.get_config("tiny")
  section, key = path.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=message):
    env_rollout.env_factories(c)


def test_channel_means_count_only_episodes_with_the_channel():
  specs = [{"env": "ecom"}, {"env": "ecom"}, {"env": "ecom"}, {"env": "chain_sum"}]
  rewards = [{"success": 1.0, "color": 1.0}, {"success": 0.0, "color": 0.0},
             {"success": 0.0}, {"success": 1.0, "format": 1.0}]
  assert env_rollout.channel_means(specs, rewards) == {
      "env/ecom/success": 1 / 3, "env/ecom/color": 0.5,  # (1 + 0) / 2, not / 3
      "env/chain_sum/success": 1.0, "env/chain_sum/format": 1.0}


def test_worked_examples_flag_errors_name_the_flag():
  c = ecom.get_config("tiny")
  c.env.few_shot = 1
  none = type("NoExamples", (), {"name": "none",
                                 "worked_example": base.Environment.worked_example})()
  with pytest.raises(ValueError, match=r"--config\.env\.few_shot=1: environment 'none' has no"):
    env_rollout._worked_examples(c, {"none": none})
  with pytest.raises(ValueError, match=r"--config\.env\.few_shot=1: worked examples need a "):
    env_rollout._worked_examples(c, {"ecom": None, "chain_sum": None})
  # A multi-turn example is its exchanges, in order.
  examples = env_rollout._worked_examples(c, {"ecom": ecom_env.EcomEnv()})
  assert len(examples) == 3 and examples[-1][1].startswith('<tool_call>{"name": "checkout"')
  c = adaptive.get_config("tiny")
  examples = env_rollout._worked_examples(c, {"chain_sum": reasoning_gym_env.ReasoningGymEnv(
      "chain_sum", split="train")})
  assert len(examples) == 1 and examples[0][1].endswith("}.")
