"""The reproduction study: its table by hand, and the whole study on the tiny model."""

import json
import os

import numpy as np
import pytest

from experiments import study
from experiments.configs import tiny


def _row(method, seed, accuracy, pass1, pass2, p_value=0.5, before=0.25):
  return {"method": method, "seed": seed, "accuracy": accuracy, "accuracy_before": before,
          "p_value": p_value, "steps_trained": 10, "seconds": 60.0 * (seed + 1),
          "passk": {"eval/pass@1": pass1, "eval/pass@2": pass2}}


def test_summarize_by_hand():
  rows = [_row("grpo", 0, 0.50, 0.4, 0.6, p_value=0.01),
          _row("grpo", 1, 0.30, 0.2, 0.4),
          _row("grpo", 2, 0.40, 0.3, 0.5, p_value=0.01, before=0.5),
          _row("relex", 0, 0.25, 0.1, 0.2)]
  table = study.summarize(rows, ["grpo", "delta", "relex"])
  assert list(table) == ["grpo", "relex"]
  grpo = table["grpo"]
  assert grpo["mean"] == pytest.approx(0.4)
  assert grpo["std"] == pytest.approx(0.1)  # sample std of .5, .3, .4
  assert grpo["seeds"] == [0.5, 0.3, 0.4]
  assert grpo["eval/pass@2"] == pytest.approx(0.5)
  assert grpo["eval/pass@1_std"] == pytest.approx(0.1)
  assert grpo["minutes"] == pytest.approx(2.0)
  # Seed 0 improved significantly; seed 2 is significant but got worse.
  assert grpo["significant_seeds"] == 1
  assert table["relex"]["std"] == 0.0
  markdown = study.format_table(table, base=0.25, num_seeds=3)
  lines = markdown.splitlines()
  assert len(lines) == 5 and "pass@2 (T=1)" in lines[0]
  assert lines[3].startswith("| grpo | 10 | 40.0 ± 10.0 | 50.0 / 30.0 / 40.0 | 1/3 | "
                             "30.0 ± 10.0 | 50.0 ± 10.0 |")


def test_relex_window_is_twenty_percent():
  c = tiny.get_config()
  c.rl.steps, c.train.dense_window = 20, 4
  assert study.relex_window(c) == [1, 2, 3, 4]
  c.train.dense_window = 3
  with pytest.raises(ValueError, match="dense_window=3"):
    study.relex_window(c)


def test_method_config_sets_only_algo_and_seed():
  base = tiny.get_config()
  c = study.method_config(base, "delta_scrl", seed=7)
  assert (c.algo.advantage, c.algo.delta, c.rl.seed) == ("scrl", True, 7)
  assert (base.algo.advantage, base.algo.delta) == ("grpo", False)
  assert c.data.to_dict() == base.data.to_dict()


def test_unknown_method_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="unknown"):
    study.run_study(tiny.get_config(), workdir=str(tmp_path), seeds=[0], methods=["ppo"])
  with pytest.raises(ValueError, match="add grpo"):
    study.run_study(tiny.get_config(), workdir=str(tmp_path), seeds=[0], methods=["relex"])


def test_tiny_study_end_to_end(tmp_path):
  """Every method, 2 seeds, on the random tiny model: table, plot, resume."""
  c = tiny.get_config()
  c.data.eval_size = 8
  c.train.eval_batch_size = 8
  c.train.tensorboard = False
  c.rl.max_prompt_len = 176  # SCRL's curriculum prompt (chat template) is longer.
  workdir = str(tmp_path)
  result = study.run_study(c, workdir=workdir, seeds=[0, 1], methods=list(study.METHODS),
                           passk_samples=2, passk_problems=4)
  assert list(result["methods"]) == list(study.METHODS)
  assert len(result["runs"]) == 10
  for run in result["runs"]:
    assert 0.0 <= run["accuracy"] <= 1.0
    assert set(run["passk"]) == {"eval/pass@1", "eval/pass@2", "eval/avg@2", "eval/maj@2"}
  relex = [r for r in result["runs"] if r["method"] == "relex"]
  assert [r["steps_trained"] for r in relex] == [2, 2]
  assert all(np.isfinite(r["relative_error"]) for r in relex)
  # Every run was evaluated on the base model's shared held-out verdicts.
  befores = {json.load(open(os.path.join(workdir, f"{m}_s{s}", "eval_before.json")))["accuracy"]
             for m in ("grpo", "delta", "scrl", "delta_scrl") for s in (0, 1)}
  assert befores == {result["base"]}
  assert os.path.getsize(os.path.join(workdir, "study.png")) > 1000
  assert not os.path.exists(os.path.join(workdir, "grpo_s0", "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "grpo_s0", "relex", "checkpoints"))
  assert open(os.path.join(workdir, "study.md")).read().strip() == result["table"]
  again = study.run_study(c, workdir=workdir, seeds=[0, 1], methods=list(study.METHODS),
                          passk_samples=2, passk_problems=4)
  assert again["runs"] == result["runs"]
