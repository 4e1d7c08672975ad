"""rlvr_jax.storage and its users on local paths and on a fake gs:// (no network)."""

import json
import os

import fake_gcs
import matplotlib
import ml_collections
import pytest

from rlvr_jax import checkpoints
from rlvr_jax import storage
from rlvr_jax.evaluation import evaluate
from rlvr_jax.training import metrics as metrics_lib
from rlvr_jax.training import run_state

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(params=["local", "remote_code_path"])
def run_dir(request, tmp_path, monkeypatch):
  """A run folder; 'remote_code_path' makes every path take the object-store branch."""
  if request.param == "remote_code_path":
    monkeypatch.setattr(storage, "is_remote", lambda p: True)
  return tmp_path / "run"


def test_json_text_and_append(run_dir):
  storage.write_json(run_dir / "config.json", {"lr": 2e-5})
  assert json.loads(storage.read_text(run_dir / "config.json")) == {"lr": 2e-5}
  for step in (1, 2, 3):
    storage.append_line(run_dir / "metrics.jsonl", json.dumps({"step": step}))
  lines = storage.read_text(run_dir / "metrics.jsonl").splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_figure_and_folder_sync(run_dir, tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  storage.save_figure(fig, run_dir / "plots" / "curve.png")
  plt.close(fig)
  assert (run_dir / "plots" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  events = tmp_path / "events"
  (events / "sub").mkdir(parents=True)
  (events / "a.tfevents").write_bytes(b"\x00\x01")
  (events / "sub" / "b.tfevents").write_bytes(b"\x02")
  storage.sync_folder(events, run_dir / "tensorboard")
  assert (run_dir / "tensorboard" / "a.tfevents").read_bytes() == b"\x00\x01"
  assert (run_dir / "tensorboard" / "sub" / "b.tfevents").read_bytes() == b"\x02"


def test_paths():
  assert storage.is_remote("gs://bucket/run")
  assert not storage.is_remote("/tmp/run")
  assert str(storage.path("gs://bucket/run") / "metrics.jsonl") == "gs://bucket/run/metrics.jsonl"


# -- gs:// through an in-memory fake (tests/fake_gcs.py): the same epath calls
# a run makes on a bucket, no network.

_RUN = "gs://bucket/runs/a"


@pytest.fixture
def gcs():
  with fake_gcs.use_fake_gcs() as fs:
    yield fs


def test_gs_files_move_and_list(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # anything mistaken for a local path would land here
  storage.write_json(f"{_RUN}/config.json", {"lr": 2e-5})
  assert storage.read_json(f"{_RUN}/config.json") == {"lr": 2e-5}
  storage.write_text(f"{_RUN}/checkpoints/2/params/d/0", "abc")
  storage.write_text(f"{_RUN}/checkpoints/2/meta", "{}")
  assert storage.listdir(_RUN) == ["checkpoints", "config.json"]
  assert storage.listdir(f"{_RUN}/missing") == []
  storage.move(f"{_RUN}/checkpoints/2", f"{_RUN}/checkpoints_corrupt/2")
  assert not storage.exists(f"{_RUN}/checkpoints/2/meta")
  assert storage.read_text(f"{_RUN}/checkpoints_corrupt/2/params/d/0") == "abc"
  assert sorted(gcs.store) == ["/bucket/runs/a/checkpoints_corrupt/2/meta",
                               "/bucket/runs/a/checkpoints_corrupt/2/params/d/0",
                               "/bucket/runs/a/config.json"]
  storage.rmtree(_RUN)
  assert not gcs.store and os.listdir(tmp_path) == []
  assert storage.join(_RUN, "eval_after.json") == f"{_RUN}/eval_after.json"


def test_local_move_is_a_rename(tmp_path):
  storage.write_text(tmp_path / "a" / "1" / "x", "1")
  storage.move(tmp_path / "a" / "1", tmp_path / "b" / "1")
  assert (tmp_path / "b" / "1" / "x").read_text() == "1"
  assert not (tmp_path / "a" / "1").exists()


def test_metric_writer_on_gs(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  writer = metrics_lib.MetricWriter(_RUN, tensorboard=True)
  for step in (1, 2, 3):
    writer.write(step, {"reward/mean": 0.5 * step, "policy/loss": float("nan")})
  assert [r["step"] for r in metrics_lib.read_jsonl(writer.path)] == [1, 2, 3]
  # A resume from step 1 drops rows 2 and 3; NaN was written as null.
  assert writer.truncate_after(1) == 2
  assert metrics_lib.read_jsonl(f"{_RUN}/metrics.jsonl") == [
      {"step": 1, "reward/mean": 0.5, "policy/loss": None}]
  writer.close()
  (events,) = storage.listdir(f"{_RUN}/tensorboard")
  assert events.startswith("events.out.tfevents.")
  data = storage.path(f"{_RUN}/tensorboard/{events}").read_bytes()
  assert b"reward/mean" in data  # the scalars of all three writes, synced from local disk
  metrics_lib.plot_curves(writer.path, ("reward/mean",), f"{_RUN}/curve.png")
  assert storage.path(f"{_RUN}/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == []


def test_prepare_workdir_on_gs(gcs):
  config = ml_collections.ConfigDict({"optim": {"lr": 1e-3}, "rl": {"steps": 2}})
  run_state.prepare_workdir(_RUN, config)  # an empty bucket prefix: a new run
  storage.write_text(f"{_RUN}/config.json", config.to_json())
  longer = ml_collections.ConfigDict({"optim": {"lr": 1e-3}, "rl": {"steps": 5}})
  run_state.prepare_workdir(_RUN, longer)  # rl.steps may change on resume
  other = ml_collections.ConfigDict({"optim": {"lr": 5e-4}, "rl": {"steps": 2}})
  with pytest.raises(ValueError, match=r"--config\.optim\.lr: 0\.001 in the folder, 0\.0005 now"):
    run_state.prepare_workdir(_RUN, other)
  run_state.prepare_workdir(_RUN, other, overwrite=True)
  assert not gcs.store


def test_orbax_dir_keeps_uris(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # os.path.abspath would give <cwd>/gs:/bucket/runs/a/checkpoints.
  assert checkpoints.orbax_dir(f"{_RUN}/checkpoints") == f"{_RUN}/checkpoints"
  assert checkpoints.orbax_dir("run/checkpoints") == str(tmp_path / "run" / "checkpoints")


class _Result:
  """What `evaluate.write_results` reads of a BenchmarkResult."""

  class benchmark:  # pylint: disable=invalid-name
    name, records = "mini", [{"answer": "3"}, {"answer": "4"}]

  num_samples = 2

  def metrics(self):
    return {"mini/pass@1": 0.25}

  def problem_rows(self):
    return [{"gold_answer": "3", "correct": [1, 0]}, {"gold_answer": "4", "correct": [0, 0]}]


def test_evaluation_results_to_gs(gcs):
  paths = evaluate.write_results([_Result()], f"{_RUN}/eval", settings={"n": 2})
  assert paths == {"metrics": f"{_RUN}/eval/metrics.json", "table": f"{_RUN}/eval/results.md",
                   "mini": f"{_RUN}/eval/mini.samples.jsonl"}
  assert storage.read_json(paths["metrics"]) == {
      "settings": {"n": 2}, "metrics": {"mini/pass@1": 0.25}, "num_problems": {"mini": 2}}
  assert "| mini | 2 | 2 | 25.0 |" in storage.read_text(paths["table"])
  assert [r["gold_answer"] for r in metrics_lib.read_jsonl(paths["mini"])] == ["3", "4"]
