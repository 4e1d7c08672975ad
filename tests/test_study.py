"""The study: its arithmetic and mechanism measures by hand, and the whole study on the tiny model."""

import json
import os

import numpy as np
import pytest

from experiments import study
from experiments.configs import study as study_config
from rlvr_jax.evaluation import study_stats
from rlvr_jax.training import study_mechanisms as mech


# -- outcome arithmetic --------------------------------------------------------------


def test_seed_spread_and_weighted_mean_by_hand():
  spread = study_stats.seed_spread([0.5, 0.3, 0.4])
  assert spread["mean"] == pytest.approx(0.4)
  assert spread["std"] == pytest.approx(0.1)  # sqrt((.01 + .01 + 0) / 2)
  assert study_stats.seed_spread([0.7])["std"] == 0.0
  assert study_stats.weighted_mean([1.0, 0.5], [1, 3]) == pytest.approx(0.625)  # 2.5 / 4
  with pytest.raises(ValueError, match="values"):
    study_stats.seed_spread([])


def test_paired_comparison_by_hand():
  # Seed 0: method 4/4, GRPO 2/4 -> +0.5; seed 1: 4/4 vs 2/4 -> +0.5. Discordant
  # pairs: 4 wins, 0 losses -> p = 2 * P[X <= 0 | n = 4] = 2 / 16 = 0.125.
  method = np.ones((2, 4))
  grpo = np.asarray([[1, 0, 0, 1], [0, 1, 0, 1]])
  out = study_stats.paired_comparison(method, grpo)
  assert out["diff_mean"] == pytest.approx(0.5)
  assert out["diff_seeds"] == pytest.approx([0.5, 0.5])
  assert (out["wins"], out["losses"]) == (4, 0)
  assert out["p_value"] == pytest.approx(0.125)
  # Seed 0: .5 - .25 = .25, seed 1: .5 - .5 = 0 -> mean .125; wins 2 (s0 q1, s1 q0),
  # losses 1 (s1 q3) -> p = 2 * (C(3,0) + C(3,1)) / 8 = 1.0.
  out = study_stats.paired_comparison([[1, 1, 0, 0], [1, 0, 1, 0]],
                                      [[1, 0, 0, 0], [0, 0, 1, 1]])
  assert out["diff_mean"] == pytest.approx(0.125)
  assert (out["wins"], out["losses"], out["p_value"]) == (2, 1, 1.0)
  with pytest.raises(ValueError, match="reference_correct"):
    study_stats.paired_comparison(np.ones((2, 4)), np.ones((2, 3)))


def _row(method, seed, correct, pass1, p_value=0.5, before=0.25):
  return {"method": method, "seed": seed, "accuracy": float(np.mean(correct)),
          "accuracy_before": before, "p_value": p_value, "correct": correct,
          "steps_trained": 16, "seconds": 60.0 * (seed + 1),
          "passk": {"eval/pass@1": pass1}}


def test_summarize_and_table_by_hand():
  rows = [_row("grpo", 0, [1, 0, 0, 1], 0.4, p_value=0.01),  # .5
          _row("grpo", 1, [0, 1, 0, 0], 0.2),  # .25
          _row("delta", 0, [1, 1, 1, 1], 0.6, p_value=0.01, before=1.0),  # 1.0
          _row("delta", 1, [1, 1, 0, 0], 0.4)]  # .5
  table = study.summarize(rows, ["grpo", "delta", "relex"], base_correct=[1, 0, 0, 0])
  assert list(table) == ["grpo", "delta"]
  grpo, delta = table["grpo"], table["delta"]
  assert grpo["mean"] == pytest.approx(0.375)
  assert grpo["std"] == pytest.approx(0.1767767)  # |.5 - .25| / sqrt(2)
  assert grpo["minutes"] == pytest.approx(1.5)  # (60 + 120) / 2 s
  assert grpo["significant_seeds"] == 1 and "vs_grpo" not in grpo
  assert delta["eval/pass@1"] == pytest.approx(0.5)
  # delta seed 0 is significant but did not rise above its before (1.0): not counted.
  assert delta["significant_seeds"] == 0
  # d = (1 - .5, .5 - .25) -> mean .375; wins: s0 q1, q2; s1 q0 -> 3; losses: none
  # -> p = 2 * P[X <= 0 | n = 3] = 2 / 8 = 0.25.
  vs = delta["vs_grpo"]
  assert vs["diff_mean"] == pytest.approx(0.375)
  assert (vs["wins"], vs["losses"]) == (3, 0)
  assert vs["p_value"] == pytest.approx(0.25)
  # Against the base [1, 0, 0, 0] (.25) repeated per seed. grpo: d = (.25, 0) -> .125;
  # wins s0 q3, s1 q1; loss s1 q0 -> p = 2 * (C(3,0) + C(3,1)) / 8 = 1.0. delta:
  # d = (.75, .25) -> .5; wins 3 + 1, no loss -> p = 2 / 16 = 0.125.
  assert table["grpo"]["vs_base"]["diff_mean"] == pytest.approx(0.125)
  assert (table["grpo"]["vs_base"]["wins"], table["grpo"]["vs_base"]["losses"],
          table["grpo"]["vs_base"]["p_value"]) == (2, 1, 1.0)
  assert delta["vs_base"]["diff_mean"] == pytest.approx(0.5)
  assert (delta["vs_base"]["wins"], delta["vs_base"]["losses"]) == (4, 0)
  assert delta["vs_base"]["p_value"] == pytest.approx(0.125)
  lines = study.format_table(table, base=0.25, num_seeds=2).splitlines()
  assert len(lines) == 5 and "pass@1 (T=1)" in lines[0]
  assert lines[2].count("|") == lines[0].count("|")
  assert lines[4].startswith("| delta | 16 | 75.0 ± 35.4 | 100.0 / 50.0 | +37.5 | "
                             "3/0, p = 0.25 | 0/2 | 4/0, p = 0.125 | 50.0 ± 14.1 | 1.5 |")


# -- mechanism measures --------------------------------------------------------------

_VOCAB = ["The", " sum", " is", " ", "1", "2", "+", "3", " =", " 15", ".", " \\boxed{", "15",
          "}", "\n", " Answer:", "\\boxed", "{1", "5}"]


def _decode(ids):
  return "".join(_VOCAB[i] for i in ids)


def test_token_classes_by_hand():
  F, D, A, O = range(4)  # format, digits_ops, answer, other
  row0 = list(range(16))  # "The sum is 12+3 = 15. \boxed{15}\n Answer:"
  expected0 = [O, O, O, F, D, D, D, D, D, D, F, F, A, F, F, F]
  row1 = [4, 16, 17, 18, 14] + [0] * 11  # "1\boxed{15}\n": braces share tokens with the answer
  expected1 = [D, F, A, A, F] + [-1] * 11
  mask = np.asarray([[1] * 16, [1] * 5 + [0] * 11])
  classes = mech.token_classes(np.asarray([row0, row1]), mask, decode=_decode)
  np.testing.assert_array_equal(classes, [expected0, expected1])


def test_class_coefficient_metrics_by_hand():
  coef = np.asarray([[0.8, 1.2, 1.0, 0.5], [1.1, 0.9, 1.3, 0.7], [5.0, 5.0, 5.0, 5.0]])
  mask = np.asarray([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
  adv = np.asarray([1.0, -1.0, 0.0])  # row 2 (A = 0) counts in no class
  classes = np.asarray([[0, 1, 2, 0], [0, 1, 3, 3], [0, 1, 2, 3]])
  out = mech.class_coefficient_metrics(coef, mask, adv, classes)
  expected = {
      "delta/coef_mean/format": 0.95, "delta/coef_mean_pos/format": 0.8,  # (.8 + 1.1) / 2
      "delta/coef_mean_neg/format": 1.1, "delta/tokens/format": 2.0,
      "delta/coef_mean/digits_ops": 1.05, "delta/coef_mean_pos/digits_ops": 1.2,
      "delta/coef_mean_neg/digits_ops": 0.9, "delta/tokens/digits_ops": 2.0,
      "delta/coef_mean/answer": 1.0, "delta/coef_mean_pos/answer": 1.0,
      "delta/tokens/answer": 1.0,
      "delta/coef_mean/other": 1.0, "delta/coef_mean_neg/other": 1.0,  # (1.3 + .7) / 2
      "delta/tokens/other": 2.0,
  }
  assert out.keys() == expected.keys()
  for key, value in expected.items():
    assert out[key] == pytest.approx(value), key
  with pytest.raises(ValueError, match="classes"):
    mech.class_coefficient_metrics(coef, mask, adv, classes[:, :3])


def test_prefix_rule_shares_and_position_accuracy_by_hand():
  raw = np.asarray([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0]])
  kept = np.asarray([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
  # Row 0 passes (R = r, a solve); rows 1 and 2 are cut; row 3 solved nothing.
  assert mech.prefix_rule_shares(raw, kept) == {"scrl/prefix_pass_frac": 0.25,
                                                "scrl/prefix_cut_frac": 0.5}
  # Position 2 exists only for the first two problems: sums (2, 1), counts (3, 2).
  sums, counts = mech.position_accuracy(np.asarray([[1, 0], [1, 1], [0, 0]]), [2, 2, 1])
  np.testing.assert_array_equal(sums, [2, 1])
  np.testing.assert_array_equal(counts, [3, 2])
  with pytest.raises(ValueError, match="chain_lengths"):
    mech.position_accuracy(np.zeros((2, 2)), [1, 3])


def test_relative_distance_by_hand():
  predicted = {"a": np.asarray([3.0, 4.0]), "b": np.asarray([[2.0]])}
  real = {"a": np.zeros(2), "b": np.asarray([[2.0]])}
  base = {"a": np.zeros(2), "b": np.asarray([[0.0]])}
  # ||(3, 4, 0)|| / ||(0, 0, 2)|| = 5 / 2
  assert mech.relative_distance(predicted, real, base) == pytest.approx(2.5)


# -- configuration -------------------------------------------------------------------


def test_relex_window_and_method_config():
  c = study_config.get_config()
  assert (c.rl.steps, c.rl.prompts_per_batch, c.rl.group_size, c.data.eval_size) == (
      16, 16, 4, 256)
  assert study.relex_last_step(c) == 4  # 25% of 16
  g = study.method_config(c, "grpo", 2, with_relex=True)
  assert (g.train.dense_window, g.rl.seed, g.rl.max_prompt_len) == (4, 2, 80)
  assert (c.study.scrl_max_new_tokens, c.train.eval_max_new_tokens) == (32, 32)
  c.study.scrl_max_new_tokens = 24
  s = study.method_config(c, "delta_scrl", 1)
  assert (s.algo.advantage, s.algo.delta, s.train.dense_window) == ("scrl", True, 0)
  assert (s.rl.max_prompt_len, s.rl.max_new_tokens) == (192, 24)
  assert (c.algo.advantage, c.algo.delta) == ("grpo", False)
  c.study.steps = 3
  study_config.apply_regime(c)
  with pytest.raises(ValueError, match="relex_fraction"):
    study.relex_last_step(c)


def test_bad_arguments_name_the_flag():
  def config(**study_fields):
    c = study_config.get_config("tiny")
    c.study.update(study_fields)
    return c
  with pytest.raises(ValueError, match="unknown"):
    study.check_arguments(config(methods=("ppo",)))
  with pytest.raises(ValueError, match="add grpo"):
    study.check_arguments(config(methods=("delta,relex",)))
  with pytest.raises(ValueError, match="--config.study.steps"):
    study.check_arguments(config(steps=8))  # rl.steps still 4: the regime not applied
  with pytest.raises(ValueError, match="--config.study.steps"):
    study.regime_from_flags(config(), ["rl.steps"])
  with pytest.raises(ValueError, match="--config.train.eval_max_new_tokens=8 is shorter "
                     "than scrl's training responses"):
    study.check_arguments(config(scrl_max_new_tokens=9))
  study.check_arguments(config(scrl_max_new_tokens=9, methods=("grpo", "delta")))
  assert study.study_methods(config(methods=("relex,grpo", "delta"))) == [
      "grpo", "delta", "relex"]


# -- the tiny study end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("study"))
  c = study_config.get_config("tiny")
  return workdir, c, study.run_study(c, workdir=workdir)


def test_tiny_study_outcome(tiny_study):
  workdir, c, result = tiny_study
  assert list(result["methods"]) == ["grpo", "delta", "scrl", "relex"]
  assert len(result["runs"]) == 8  # 3 trained methods + RELEX, 2 seeds
  for run in result["runs"]:
    assert 0.0 <= run["accuracy"] <= 1.0 and len(run["correct"]) == 8
    assert run["accuracy"] == pytest.approx(np.mean(run["correct"]))
    assert set(run["passk"]) == {"eval/pass@1", "eval/pass@2", "eval/avg@2", "eval/maj@2"}
  for method in ("delta", "scrl", "relex"):
    assert set(result["methods"][method]["vs_grpo"]) == {
        "diff_mean", "diff_seeds", "wins", "losses", "p_value"}
  befores = {json.load(open(os.path.join(workdir, f"{m}_s{s}", "eval_before.json")))["accuracy"]
             for m in ("grpo", "delta", "scrl") for s in (0, 1)}
  assert befores == {result["base"]}
  for name in ("study.png", "mechanisms.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000
  assert not os.path.exists(os.path.join(workdir, "grpo_s0", "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "grpo_s0_relex_b1", "checkpoints"))
  assert open(os.path.join(workdir, "study.md")).read().strip() == result["table"]
  again = study.run_study(c, workdir=workdir)
  assert again["runs"] == result["runs"]


def test_tiny_study_mechanisms(tiny_study):
  _, _, result = tiny_study
  m = result["mechanisms"]
  delta = m["delta"]["delta"]
  assert sum(delta[name]["tokens"] for name in mech.TOKEN_CLASSES) > 0
  for entry in delta.values():
    assert all(0.5 < v < 2.0 for v in entry["per_step"])
  scrl = m["scrl"]["scrl"]
  assert scrl["before"]["counts"][0] == 8  # 4 problems x 2 seeds all have position 1
  assert len(scrl["scrl/prefix_pass_frac"]["per_step"]) == 4  # one per step
  assert [r["seed"] for r in m["relex"]] == [0, 1]
  for r in m["relex"]:
    assert [f["window"] for f in r["fits"].values()] == [[1, 3], [2, 3]]
    for f in r["fits"].values():
      assert 0.0 <= f["energy_fraction"] <= 1.0 and np.isfinite(f["relative_distance"])
    # From step 0 the denominators agree: RELEX's own relative error (its diagnostics,
    # against the saved final checkpoint) equals the study's distance.
    fit = r["fits"]["0"]
    assert fit["relative_distance"] == pytest.approx(fit["relex_relative_error"], rel=1e-4)
  relex_rows = [r for r in result["runs"] if r["method"] == "relex"]
  assert [r["accuracy"] for r in relex_rows] == [r["fits"]["1"]["accuracy"] for r in relex_rows]
  for heading in ("DelTA coefficient", "SCRL solve rate", "RELEX per GRPO run"):
    assert heading in result["table"]


def test_tiny_study_on_jsonl_data(tmp_path):
  """A second task, JSONL files, flows through unchanged."""
  def write(name, pairs):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"problem": f"What is {a} + {b}?", "answer": str(a + b)})
                            + "\n" for a, b in pairs))
    return str(path)
  c = study_config.get_config("tiny")
  c.data.source = "jsonl"
  c.data.path = write("train.jsonl", [(a, b) for a in range(10, 20) for b in range(3)])
  c.data.eval_path = write("heldout.jsonl", [(a, 7) for a in range(30, 38)])
  c.study.seeds, c.study.methods = (0,), ("grpo",)
  result = study.run_study(c, workdir=str(tmp_path / "study"))
  [run] = result["runs"]
  assert run["method"] == "grpo" and len(run["correct"]) == 8
  after = json.load(open(tmp_path / "study" / "grpo_s0" / "eval_after.json"))
  assert [p["problem"] for p in after["problems"]] == [f"What is {a} + 7?"
                                                       for a in range(30, 38)]
