"""The tiny trainer with `--workdir=gs://...`, on the in-memory gs:// of tests/fake_gcs.py.

Every run-folder file (config, metrics, TensorBoard events, evaluations,
plots) goes through rlvr_jax.storage to the fake bucket. Orbax's TensorStore
speaks to GCS itself, which a test cannot fake offline, so the checkpoints of
this run go to a local folder (`checkpoints.orbax_dir` keeps the gs:// URI
for orbax in a real run; tests/test_storage.py checks that).
"""

import json
import os

import fake_gcs
import numpy as np

from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax import storage
from rlvr_jax.training import loop
from rlvr_jax.training import metrics as metrics_lib

_RUN = "gs://bucket/runs/tiny"


def _config(steps):
  c = tiny.get_config()
  c.rl.steps = steps
  c.data.eval_size = 8
  c.train.eval_batch_size = 8
  c.train.tensorboard = True
  return c


def test_tiny_run_and_resume_on_gs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a URI mistaken for a local path would land here
  local = tmp_path / "orbax"

  class LocalCheckpointer(checkpoints.Checkpointer):

    def __init__(self, workdir, **kwargs):
      assert workdir == _RUN
      super().__init__(str(local), **kwargs)

  monkeypatch.setattr(checkpoints, "Checkpointer", LocalCheckpointer)
  with fake_gcs.use_fake_gcs() as gcs:
    first = loop.train_and_evaluate(_config(2), _RUN)
    assert sorted(storage.listdir(_RUN)) == [
        "config.json", "eval_after.json", "eval_before.json", "metrics.jsonl",
        "model_config.json", "reward_curve.png", "tensorboard"]
    before = storage.read_json(f"{_RUN}/eval_before.json")
    # Resume: 1 more step; the saved before-evaluation is read back, not redone.
    second = loop.train_and_evaluate(_config(3), _RUN)
    rows = metrics_lib.read_jsonl(f"{_RUN}/metrics.jsonl")
    assert [r["step"] for r in rows if "policy/loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 3]
    assert second["accuracy_before"] == first["accuracy_before"] == np.mean(before["correct"])
    after = storage.read_json(f"{_RUN}/eval_after.json")
    assert second["accuracy_after"] == np.mean(after["correct"])
    assert json.loads(storage.read_text(f"{_RUN}/config.json"))["rl"]["steps"] == 3
    assert storage.read_json(f"{_RUN}/model_config.json")["num_layers"] > 0
    assert storage.path(f"{_RUN}/reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    # Two runs, two event files, each copied from its local writer.
    assert len(storage.listdir(f"{_RUN}/tensorboard")) == 2
    assert all(key.startswith("/bucket/runs/tiny/") for key in gcs.store)
  assert sorted(os.listdir(tmp_path)) == ["orbax"]  # nothing else written locally
  assert sorted(os.listdir(local / "checkpoints")) == ["0", "1", "2", "3"]
