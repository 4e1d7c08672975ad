"""Tests for rlvr_jax.evaluation.evaluate and experiments.evaluate (METHODS.md 5)."""

import collections
import itertools
import json
import os
import types

from flax import nnx
import jax
import numpy as np
import pytest

from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax import sharding
from rlvr_jax.evaluation import evaluate
from rlvr_jax.models import decoder
from rlvr_jax.models import loader
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers
from rlvr_jax.training import loop

_FILE_ROWS = [
    {"problem": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}"},
    {"problem": "What is 2 + 2?", "answer": "4"},
    {"problem": "What is 3 + 4?", "answer": "7"},
]
_TASK_KWARGS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                "operators": ["+"], "allow_parentheses": False, "allow_negation": False}


@pytest.fixture(scope="module")
def bench_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("bench") / "mini.jsonl"
  path.write_text("".join(json.dumps(row) + "\n" for row in _FILE_ROWS))
  return str(path)


@pytest.fixture(scope="module")
def tiny_model():
  """random:tiny (seed 0) with the SmolLM2 tokenizer."""
  model, tokenizer, config = loader.load_model("random:tiny")
  return model, tokenizer, config


def _brute_pass_at_k(verdicts, k):
  """Fraction of the k-subsets of one problem's samples holding a correct one."""
  subsets = list(itertools.combinations(verdicts, k))
  return sum(any(s) for s in subsets) / len(subsets)


def _recompute(rows):
  """pass@k, avg@n, maj@n from the per-problem JSONL rows, independently."""
  n = rows[0]["num_samples"]
  verdicts = [[s["correct"] for s in row["samples"]] for row in rows]
  metrics = {}
  k = 1
  while k <= n:
    metrics[f"pass@{k}"] = float(np.mean([_brute_pass_at_k(v, k) for v in verdicts]))
    k *= 2
  metrics[f"pass@{n}"] = float(np.mean([_brute_pass_at_k(v, n) for v in verdicts]))
  metrics[f"avg@{n}"] = float(np.mean([np.mean(v) for v in verdicts]))
  maj = []
  for row in rows:
    keys = [answers.normalize_answer(s["answer"]) if s["answer"] is not None else None
            for s in row["samples"]]
    counts = collections.Counter(k for k in keys if k)
    if not counts:
      maj.append(0.0)
      continue
    top = max(counts.values())
    winner = next(k for k in keys if k and counts[k] == top)  # first of the largest group
    maj.append(float(row["samples"][keys.index(winner)]["correct"]))
  metrics[f"maj@{n}"] = float(np.mean(maj))
  return metrics


def _read_rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _check_consistent(metrics, name, rows):
  """Saved metrics == recomputation from the rows; pass@k non-decreasing in k."""
  recomputed = _recompute(rows)
  assert {k.split("/", 1)[1] for k in metrics if k.startswith(name + "/")} == set(recomputed)
  for key, value in recomputed.items():
    assert metrics[f"{name}/{key}"] == pytest.approx(value, abs=1e-12), key
  n = rows[0]["num_samples"]
  ks = sorted(int(k[len("pass@"):]) for k in recomputed if k.startswith("pass@"))
  passes = [metrics[f"{name}/pass@{k}"] for k in ks]
  assert ks == [1, 2, 4] and n == 4
  assert all(a <= b + 1e-12 for a, b in zip(passes, passes[1:]))


# ---------------------------------------------------------------------------
# Scoring with scripted responses (real checkers, no model).


def _scripted_generate(records, scripts, num_samples):
  """A `generate` that answers problem p with the texts scripts[p]."""
  def generate(prompts, batch_index):
    del batch_index
    texts = []
    for prompt in prompts:
      [p] = [i for i, r in enumerate(records) if r["problem"] in prompt]
      texts.extend(scripts[p])
    rows = len(prompts) * num_samples
    return types.SimpleNamespace(texts=texts, response_mask=np.ones([rows, 5], np.float32),
                                 finish_reasons=["eos"] * rows)
  return generate


def test_scripted_verdicts_and_metrics_match_a_hand_recomputation(bench_file, tmp_path):
  [file_bench, task_bench] = evaluate.load_benchmarks(
      [bench_file, "basic_arithmetic"], size=2, seed=0, task_kwargs=_TASK_KWARGS)
  assert file_bench.name == "mini" and file_bench.checker == "math_verify"
  assert task_bench.checker == "reasoning_gym" and len(task_bench.records) == 2
  gold = [r["answer"] for r in task_bench.records]
  wrong = [str(int(g) + 1) for g in gold]
  box = lambda x: f"So the answer is \\boxed{{{x}}}."
  file_scripts = [
      [box("0.75"), box("3/4"), "I do not know.", box("1")],  # c=2, maj 0.75 (first of ties)
      [box("5")] * 4,  # c=0
      [box("7")] * 3 + [box("8")],  # c=3
  ]
  task_scripts = [
      [box(gold[0])] + [box(wrong[0])] * 3,  # c=1, majority wrong
      [box(gold[1])] * 4,  # c=4
  ]
  with math_checker.MathChecker(num_workers=1, timeout_s=20.0,
                                warmup=(scorers.REASONING_GYM_WARMUP,)) as pool:
    results = []
    for bench, scripts in ((file_bench, file_scripts), (task_bench, task_scripts)):
      reward_fn = scorers.RewardFunction(checker=bench.checker, max_response_len=5, pool=pool)
      results.append(evaluate.evaluate_benchmark(
          bench, generate=_scripted_generate(bench.records, scripts, 4),
          render=lambda r: f"Question: {r['problem']}\nAnswer:", reward_fn=reward_fn,
          num_samples=4, batch_size=2))
  np.testing.assert_array_equal(results[0].correct,
                                [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]])
  np.testing.assert_array_equal(results[1].correct, [[1, 0, 0, 0], [1, 1, 1, 1]])
  assert results[0].answers[0] == ["0.75", "3/4", None, "1"]
  assert results[0].reasons[0][2].startswith("no_answer")
  assert results[0].reasons[0][3].startswith("wrong")

  paths = evaluate.write_results(results, str(tmp_path), settings={"n": 4})
  with open(paths["metrics"]) as f:
    metrics = json.load(f)["metrics"]
  # mini: c = (2, 0, 3), n = 4.
  # pass@1 = (2 + 0 + 3) / 12 = 5/12.
  # pass@2 = mean(1 - C(2,2)/C(4,2), 0, 1 - C(1,2)/C(4,2)) = (5/6 + 0 + 1) / 3 = 11/18.
  # pass@4 = (1 + 0 + 1) / 3 = 2/3;  maj@4 = (1 + 0 + 1) / 3 = 2/3.
  assert metrics["mini/pass@1"] == pytest.approx(5 / 12, abs=1e-12)
  assert metrics["mini/pass@2"] == pytest.approx(11 / 18, abs=1e-12)
  assert metrics["mini/pass@4"] == pytest.approx(2 / 3, abs=1e-12)
  assert metrics["mini/maj@4"] == pytest.approx(2 / 3, abs=1e-12)
  # basic_arithmetic: c = (1, 4); pass@2 = (1 - C(3,2)/C(4,2) + 1) / 2 = (1/2 + 1) / 2 = 3/4;
  # maj@4 = (0 + 1) / 2.
  assert metrics["basic_arithmetic/pass@2"] == pytest.approx(0.75, abs=1e-12)
  assert metrics["basic_arithmetic/maj@4"] == pytest.approx(0.5, abs=1e-12)
  for result in results:
    name = result.benchmark.name
    rows = _read_rows(paths[name])
    assert [r["gold_answer"] for r in rows] == [r["answer"] for r in result.benchmark.records]
    _check_consistent(metrics, name, rows)
  table = open(paths["table"]).read()
  assert "| mini | 3 | 4 | 41.7 | 61.1 | 66.7 |" in table


# ---------------------------------------------------------------------------
# The binary end to end on random:tiny.


def test_binary_end_to_end_on_random_tiny(bench_file, tmp_path, run_evaluate):
  out = str(tmp_path / "eval")
  printed = run_evaluate(
      "--checkpoint=random:tiny", f"--benchmarks={bench_file},basic_arithmetic",
      "--size=2", f"--task_kwargs={json.dumps(_TASK_KWARGS)}", "--n=4",
      "--max_new_tokens=8", "--max_prompt_len=128", "--template=plain",
      "--batch_size=2", "--workers=1", "--timeout_s=20", f"--results_dir={out}")
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)
  assert saved["metrics"] == printed
  assert saved["num_problems"] == {"mini": 3, "basic_arithmetic": 2}
  assert saved["settings"]["n"] == 4 and saved["settings"]["checkpoint"] == "random:tiny"
  assert os.path.isfile(os.path.join(out, "results.md"))
  for name, count in (("mini", 3), ("basic_arithmetic", 2)):
    rows = _read_rows(os.path.join(out, f"{name}.samples.jsonl"))
    assert len(rows) == count
    for row in rows:
      assert len(row["samples"]) == 4
      assert all(1 <= s["length"] <= 8 for s in row["samples"])
      assert row["problem"] in row["prompt"]
      # Sampled at T = 1 from a near-uniform random model: the 4 differ.
      assert len({s["text"] for s in row["samples"]}) > 1
    _check_consistent(printed, name, rows)


# ---------------------------------------------------------------------------
# Checkpoint round trip.


def _pure_params(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model):
  """A trainer-layout run: step 0 = random:tiny seed 0, step 2 = seed 1."""
  _, _, config = tiny_model
  workdir = str(tmp_path_factory.mktemp("run"))
  with open(os.path.join(workdir, "model_config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(tiny.get_config().to_json())
  ckpt = checkpoints.Checkpointer(workdir, save_every=1, keep=2, dense_window=0,
                                  async_save=False)
  trained = decoder.create_model(config, seed=1)
  for step, model in ((0, decoder.create_model(config, seed=0)), (2, trained)):
    # What the trainer saves: the model's Param state.
    ckpt.save(step, nnx.state(model, nnx.Param), {"count": np.zeros([], np.int32)},
              {"step": step, "model_config": config.to_dict()}, force=True)
  ckpt.close()
  return workdir, trained


# The greedy evaluations below share one compiled sampler (P = 64, T = 6, 8
# rows on the 8-device mesh, the tiny config's stop string), so the
# persistent compilation cache of conftest.py compiles it once.
_P, _T, _ROWS = 64, 6, 8
_STOP = tuple(tiny.get_config().rl.stop_strings)


def test_checkpoint_round_trip_evaluates_like_the_in_memory_model(run_dir, tiny_model,
                                                                  bench_file):
  workdir, trained = run_dir
  _, tokenizer, _ = tiny_model
  mesh = sharding.make_mesh()
  [bench] = evaluate.load_benchmarks([bench_file], size=1, file_checker="exact")
  loaded = evaluate.load_for_evaluation(workdir, mesh=mesh)
  restored = loaded.model
  assert loaded.description == f"{workdir}@step2"  # the latest step
  assert loaded.config.model.source == "random:tiny"
  assert len(loaded.tokenizer) == len(tokenizer)
  for got, want in zip(jax.tree.leaves(_pure_params(restored)),
                       jax.tree.leaves(_pure_params(trained))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  base = evaluate.load_for_evaluation(workdir, step=0).model
  seed0 = decoder.create_model(trained.config, seed=0)
  for got, want in zip(jax.tree.leaves(_pure_params(base)), jax.tree.leaves(_pure_params(seed0))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

  run = lambda model: evaluate.evaluate_model(
      model, tokenizer, [bench], sampling=evaluate.Sampling(greedy=True, stop_strings=_STOP),
      max_prompt_len=_P, max_new_tokens=_T, template="plain", batch_size=_ROWS,
      prompt_bucket=None, mesh=mesh, show_progress=False)[0]
  in_memory, from_disk = run(sharding.shard_model(trained, mesh)), run(restored)
  assert from_disk.texts == in_memory.texts
  np.testing.assert_array_equal(from_disk.lengths, in_memory.lengths)
  assert from_disk.metrics() == in_memory.metrics()

  with pytest.raises(ValueError, match="--step=1: not saved"):
    evaluate.load_for_evaluation(workdir, step=1)


def test_evaluate_trainer_checkpoint_for_relex(run_dir):
  """RELEX --eval's entry point on a params item directory."""
  workdir, _ = run_dir
  c = tiny.get_config()
  c.reward.checker = "exact"
  c.data.eval_size = 4
  c.data.template = "plain"
  c.data.few_shot = 0
  c.train.eval_batch_size = _ROWS
  c.train.eval_max_new_tokens = _T
  c.rl.max_prompt_len = _P
  params_dir = os.path.join(workdir, "checkpoints", "2", "params")
  metrics = evaluate.evaluate_trainer_checkpoint(params_dir, c)
  assert set(metrics) == {"heldout/pass@1", "heldout/avg@1", "heldout/maj@1"}
  assert 0.0 <= metrics["heldout/pass@1"] <= 1.0
  assert metrics["heldout/avg@1"] == metrics["heldout/pass@1"]
  with pytest.raises(ValueError, match="params_dir_or_step"):
    evaluate.evaluate_trainer_checkpoint(os.path.join(workdir, "checkpoints"), c)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A tiny run trained 1 step with its own eval_after.json.

  Its template, few-shot count, task difficulty, lengths and batch size all
  differ from experiments.evaluate's flag defaults, so an evaluation that did
  not read the run's config would render other prompts.
  """
  c = tiny.get_config()
  c.rl.steps = 1
  c.data.eval_size = 8
  c.data.few_shot = 2
  c.data.task_kwargs = dict(_TASK_KWARGS)
  c.train.eval_before = False
  c.train.eval_batch_size = 8
  c.train.eval_max_new_tokens = 6
  c.train.dense_window = 1
  c.train.tensorboard = False
  workdir = str(tmp_path_factory.mktemp("trained"))
  loop.train_and_evaluate(c, workdir)
  return workdir


def test_run_folder_evaluation_equals_the_trainers_own(trained_run, tmp_path, run_evaluate):
  """experiments.evaluate on a run folder: pass@1 == the run's eval_after accuracy."""
  with open(os.path.join(trained_run, "eval_after.json")) as f:
    after = json.load(f)
  out = str(tmp_path / "eval")
  printed = run_evaluate(f"--checkpoint={trained_run}", f"--results_dir={out}")
  assert printed["heldout/pass@1"] == after["accuracy"]
  rows = _read_rows(os.path.join(out, "heldout.samples.jsonl"))
  # The same problems, the same greedy responses, the same verdicts.
  assert [r["problem"] for r in rows] == [p["problem"] for p in after["problems"]]
  assert [r["samples"][0]["text"] for r in rows] == [p["response"] for p in after["problems"]]
  assert [float(r["num_correct"]) for r in rows] == after["correct"]
  # Rendered with the run's template and its two few-shot examples.
  assert all(r["prompt"].count("Question:") == 3 for r in rows)
  with open(os.path.join(out, "metrics.json")) as f:
    settings = json.load(f)["settings"]
  assert settings["template"] == "few_shot" and settings["few_shot"] == 2
  assert settings["task_kwargs"] == _TASK_KWARGS
  assert settings["checkpoint"] == f"{trained_run}@step1"


def test_run_folder_without_config_is_refused(run_dir, tmp_path):
  workdir, _ = run_dir
  bare = tmp_path / "bare"
  os.makedirs(bare / "checkpoints" / "0")
  (bare / "model_config.json").write_text(open(os.path.join(workdir, "model_config.json")).read())
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    evaluate.load_for_evaluation(str(bare))


def test_argument_errors_name_the_flag(bench_file):
  with pytest.raises(ValueError, match="--n"):
    evaluate.Sampling(num_samples=4, greedy=True)
  with pytest.raises(ValueError, match="neither"):
    evaluate.load_benchmarks(["no_such_task"], size=2)
  with pytest.raises(FileNotFoundError, match="--benchmarks"):
    evaluate.load_benchmarks(["missing.jsonl"], size=2)
  with pytest.raises(ValueError, match="--few_shot_file"):
    evaluate.load_benchmarks([bench_file], size=2, few_shot=1)
  with pytest.raises(ValueError, match="two benchmarks are named 'mini'"):
    evaluate.load_benchmarks([bench_file, bench_file], size=2)
  with pytest.raises(ValueError, match="--step=3 needs a trainer workdir"):
    evaluate.load_for_evaluation("random:tiny", step=3)


def test_few_shot_examples_never_come_from_the_benchmark(bench_file, tmp_path):
  shots_file = tmp_path / "shots.jsonl"
  # Two of the three rows are benchmark problems; only the third may be drawn.
  rows = _FILE_ROWS[:2] + [{"problem": "What is 5 + 5?", "answer": "10"}]
  shots_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
  file_bench, task_bench = evaluate.load_benchmarks(
      [bench_file, "basic_arithmetic"], size=3, task_kwargs=_TASK_KWARGS, few_shot=1,
      few_shot_file=str(shots_file))
  assert [s["problem"] for s in file_bench.shots] == ["What is 5 + 5?"]
  [shot] = task_bench.shots
  assert shot["id"].startswith("basic_arithmetic/train/")
  assert shot["problem"] not in {r["problem"] for r in task_bench.records}
  with pytest.raises(ValueError, match="found only 1 usable distinct examples"):
    evaluate.load_benchmarks([bench_file], size=1, few_shot=2, few_shot_file=str(shots_file))
