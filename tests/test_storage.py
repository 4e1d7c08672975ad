"""rlvr_jax.storage: the run folder's file API, on local paths (no network)."""

import json

import matplotlib
import pytest

from rlvr_jax import storage

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
