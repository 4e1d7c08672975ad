"""Tests for rlvr_jax.data.rubric (issue 16 item 7)."""

import json
import re

import numpy as np
import pytest

from rlvr_jax.algorithms import pow3r
from rlvr_jax.data import rubric

_TEXT = """Today we walk by the river.
- a quiet bridge
* green stone
  - the river's light
That is all."""


@pytest.mark.parametrize("kind,params,want", [
    # Words: Today we walk by the river (6) a quiet bridge (3) green stone (2)
    # the river's light (3) That is all (3) = 17.
    ("word_count", {"min_words": 17, "max_words": 17}, True),
    ("word_count", {"min_words": 18, "max_words": 40}, False),
    ("include_keyword", {"word": "RIVER"}, True),
    ("include_keyword", {"word": "rive"}, False),  # Whole words only.
    ("exclude_keyword", {"word": "bridge"}, False),
    ("exclude_keyword", {"word": "market"}, True),
    ("final_line", {"line": "that is all."}, True),
    ("final_line", {"line": "That is all"}, False),
    ("bullet_count", {"n": 3}, True),
    ("bullet_count", {"n": 2}, False),
    ("case", {"case": "lower"}, False),
    ("first_word", {"word": "today"}, True),
    ("first_word", {"word": "We"}, False),
])
def test_checkers_hand_values(kind, params, want):
  assert rubric.Criterion(kind, params).check(_TEXT) == float(want)


def test_case_checker():
  lower = rubric.Criterion("case", {"case": "lower"})
  upper = rubric.Criterion("case", {"case": "upper"})
  assert lower.check("all lower, 3 words.") == 1.0
  assert upper.check("ALL UPPER!") == 1.0
  assert upper.check("Mixed") == 0.0
  assert lower.check("123 !") == 0.0  # No letters.


def _satisfying_text(criteria):
  """A response built to meet every criterion of a generated prompt."""
  by_kind = {c.kind: c.params for c in criteria}
  lines = [by_kind.get("first_word", {"word": "Note"})["word"]]
  lines[0] += " " + by_kind.get("include_keyword", {"word": ""})["word"]
  lines += ["- item"] * by_kind.get("bullet_count", {"n": 0})["n"]
  final = by_kind.get("final_line", {"line": "Bye now."})["line"]
  count = len(re.findall(r"[A-Za-z0-9']+", "\n".join(lines + [final])))
  target = by_kind.get("word_count", {"min_words": count})["min_words"]
  lines.insert(1, " ".join(["filler"] * max(0, target - count)))
  text = "\n".join(lines + [final])
  case = by_kind.get("case", {"case": None})["case"]
  return {"lower": text.lower(), "upper": text.upper()}.get(case, text)


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_generated_prompts_are_reproducible_and_satisfiable(difficulty):
  prompts = rubric.generate(20, seed=7, difficulty=difficulty)
  again = rubric.generate(20, seed=7, difficulty=difficulty)
  assert prompts == again
  assert prompts != rubric.generate(20, seed=8, difficulty=difficulty)
  for p in prompts:
    assert len(p.criteria) == difficulty + 1
    assert len({c.kind for c in p.criteria}) == difficulty + 1
    for c in p.criteria:
      assert c.instruction() in p.prompt
    text = _satisfying_text(p.criteria)
    assert all(c.check(text) == 1.0 for c in p.criteria), (p, text)
    assert rubric.criteria_of(p.record()) == p.criteria


def test_jsonl_round_trip_and_defaults(tmp_path):
  prompts = rubric.generate(5, seed=1, difficulty=2)
  path = str(tmp_path / "rubric.jsonl")
  rubric.write_jsonl(prompts, path)
  assert rubric.read_jsonl(path) == prompts
  (tmp_path / "own.jsonl").write_text(json.dumps(
      {"prompt": "Say hi.", "criteria": [
          {"kind": "first_word", "params": {"word": "Hi"}}]}) + "\n")
  (own,) = rubric.read_jsonl(str(tmp_path / "own.jsonl"))
  assert own.id.endswith("own.jsonl:1")
  assert own.criteria[0].weight == 1.0
  assert own.criteria[0].category == "style"


@pytest.mark.parametrize("row,message", [
    ("not json", "Expecting value"),
    (json.dumps({"prompt": "x"}), "'criteria' must be a non-empty list"),
    (json.dumps({"prompt": "x", "criteria": [
        {"kind": "rhyme", "params": {}}]}), "kind 'rhyme' is unknown"),
    (json.dumps({"prompt": "x", "criteria": [
        {"kind": "bullet_count", "params": {"n": "3"}}]}),
     "param 'n' must be int"),
    (json.dumps({"prompt": "x", "criteria": [
        {"kind": "case", "params": {"case": "title"}}]}), "'lower' or"),
    (json.dumps({"prompt": "x", "criteria": [
        {"kind": "final_line", "params": {"line": "a"}, "weight": -1}]}),
     "weight must be >= 0"),
])
def test_bad_jsonl_rows_name_file_and_line(tmp_path, row, message):
  path = tmp_path / "bad.jsonl"
  good = json.dumps({"prompt": "ok", "criteria": [
      {"kind": "first_word", "params": {"word": "Ok"}}]})
  path.write_text(good + "\n\n" + row + "\n")
  with pytest.raises(ValueError, match=f"bad.jsonl:3: .*{message}"):
    rubric.read_jsonl(str(path))


def test_verdicts_and_arrays_feed_pow3r():
  c_a = (rubric.Criterion("first_word", {"word": "Hi"}, weight=2.0),
         rubric.Criterion("include_keyword", {"word": "cat"}))
  c_b = (rubric.Criterion("bullet_count", {"n": 1}),)
  criteria = [c_a, c_a, c_b, c_b]  # Two prompts, G = 2 rollouts each.
  texts = ["Hi cat", "Hi dog", "- one", None]
  v = rubric.verdict_matrix(criteria, texts, max_criteria=3)
  np.testing.assert_array_equal(
      v, [[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
  arrays = rubric.criteria_arrays([c_a, c_b], max_criteria=3)
  np.testing.assert_array_equal(arrays.weights, [[2, 1, 0], [1, 0, 0]])
  # style = 3, content = 1, format = 2 (indices into CATEGORIES).
  np.testing.assert_array_equal(arrays.categories, [[3, 1, 0], [2, 0, 0]])
  np.testing.assert_array_equal(arrays.mask, [[1, 1, 0], [1, 0, 0]])
  # Every criterion is alone in its category, so POW3R keeps its weight.
  got = pow3r.pow3r_weights(v, arrays.weights, group_size=2,
                            categories=arrays.categories,
                            criterion_mask=arrays.mask)
  np.testing.assert_allclose(got, arrays.weights, rtol=1e-6)
  # Static rewards: prompt A (2 * 1 + 1 * 1) / 3 = 1, 2 / 3; prompt B 1, 0.
  np.testing.assert_allclose(
      pow3r.weighted_rewards(v, arrays.weights, group_size=2,
                             criterion_mask=arrays.mask),
      [1.0, 2 / 3, 1.0, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="max_criteria"):
    rubric.verdict_matrix(criteria, texts, max_criteria=1)
