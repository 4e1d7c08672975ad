"""A tiny run folder on gs://, on the in-memory gs:// of tests/fake_gcs.py.

The trainer (`--workdir=gs://...`) writes every run-folder file (config,
metrics, TensorBoard events, evaluations, plots) through rlvr_jax.storage to
the fake bucket; experiments.evaluate and experiments.export then read that
run folder the same way. Orbax's TensorStore speaks to GCS itself, which a
test cannot fake offline, so every folder orbax is given (always through
`checkpoints.orbax_dir`, which keeps the gs:// URI in a real run;
tests/test_storage.py checks that) is redirected to a local mirror. One
training run (2 steps, then a resume to 3) serves every test here; RELEX's
output-folder check and the distillation teacher's source check see the same
gs:// run folder.
"""

import json
import os
import types

from absl import flags
import fake_gcs
import numpy as np
import pytest
import safetensors.numpy

from experiments import export
from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax import storage
from rlvr_jax.relex import pipeline
from rlvr_jax.training import loop
from rlvr_jax.training import metrics as metrics_lib
from rlvr_jax.training import teacher

_RUN = "gs://bucket/runs/tiny"


def _config(steps):
  c = tiny.get_config()
  c.rl.steps = steps
  c.data.eval_size = 8
  c.train.eval_batch_size = 8
  c.train.tensorboard = True
  return c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The tiny run trained on gs://: 2 steps, then resumed for 1 more.

  Yields the two results of train_and_evaluate, what the bucket held after
  the first run, the local cwd (nothing may land there) and the local mirror
  that holds orbax's files.
  """
  root = tmp_path_factory.mktemp("remote")
  cwd, mirror = root / "cwd", root / "orbax"
  cwd.mkdir()
  real_orbax_dir = checkpoints.orbax_dir

  def local_orbax_dir(directory):
    if directory.startswith(_RUN):
      return str(mirror) + directory[len(_RUN):]
    return real_orbax_dir(directory)

  with pytest.MonkeyPatch.context() as patch, fake_gcs.use_fake_gcs() as gcs:
    patch.chdir(cwd)  # a URI mistaken for a local path would land here
    patch.setattr(checkpoints, "orbax_dir", local_orbax_dir)
    first = loop.train_and_evaluate(_config(2), _RUN)
    listing = storage.listdir(_RUN)
    before = storage.read_json(f"{_RUN}/eval_before.json")
    # Resume: 1 more step; the saved before-evaluation is read back, not redone.
    second = loop.train_and_evaluate(_config(3), _RUN)
    yield types.SimpleNamespace(first=first, second=second, listing=listing, before=before,
                                gcs=gcs, cwd=cwd, mirror=mirror)


def test_tiny_run_and_resume_on_gs(tiny_run):
  run = tiny_run
  assert run.listing == [
      "config.json", "eval_after.json", "eval_before.json", "metrics.jsonl",
      "model_config.json", "reward_channels.png", "reward_curve.png", "tensorboard"]
  rows = metrics_lib.read_jsonl(f"{_RUN}/metrics.jsonl")
  assert [r["step"] for r in rows if "policy/loss" in r] == [1, 2, 3]
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 3]
  assert (run.second["accuracy_before"] == run.first["accuracy_before"]
          == np.mean(run.before["correct"]))
  after = storage.read_json(f"{_RUN}/eval_after.json")
  assert run.second["accuracy_after"] == np.mean(after["correct"])
  assert json.loads(storage.read_text(f"{_RUN}/config.json"))["rl"]["steps"] == 3
  assert storage.read_json(f"{_RUN}/model_config.json")["num_layers"] > 0
  assert storage.path(f"{_RUN}/reward_curve.png").read_bytes()[:4] == b"\x89PNG"
  # Two runs, two event files, each copied from its local writer.
  assert len(storage.listdir(f"{_RUN}/tensorboard")) == 2
  assert all(key.startswith("/bucket/runs/tiny/") for key in run.gcs.store)
  assert os.listdir(run.cwd) == []  # nothing written locally
  assert sorted(os.listdir(run.mirror)) == ["checkpoints"]
  assert sorted(os.listdir(run.mirror / "checkpoints")) == ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def local_copy(tiny_run):
  """The run folder as a real bucket holds it, and a local copy of it.

  The bucket gets the step folders of checkpoints/ (each with its small
  _CHECKPOINT_METADATA file: what listings of the run folder see; orbax
  reads the arrays from the mirror). The mirror gets the bucket's top-level
  files, and so becomes a complete local run folder: the same checkpoints
  and config as the gs:// one.
  """
  mirror = tiny_run.mirror
  for step in os.listdir(mirror / "checkpoints"):
    marker = f"checkpoints/{step}/_CHECKPOINT_METADATA"
    storage.write_text(f"{_RUN}/{marker}", (mirror / marker).read_text())
  for name in storage.listdir(_RUN):
    if storage.isfile(f"{_RUN}/{name}"):
      (mirror / name).write_bytes(storage.path(f"{_RUN}/{name}").read_bytes())
  assert storage.listdir(f"{_RUN}/checkpoints") == ["0", "1", "2", "3"]
  return str(mirror)


def test_evaluate_reads_the_gs_run_folder_like_its_local_copy(tiny_run, local_copy,
                                                                tmp_path, run_evaluate):
  remote = run_evaluate(f"--checkpoint={_RUN}", "--results_dir=gs://bucket/eval")
  local = run_evaluate(f"--checkpoint={local_copy}", f"--results_dir={tmp_path / 'eval'}")
  # The held-out set of the run, greedy, at its latest step 3: the run's own
  # after-training accuracy, on gs:// as on the local copy.
  assert remote == local
  assert remote["heldout/pass@1"] == tiny_run.second["accuracy_after"]
  assert (storage.read_text("gs://bucket/eval/heldout.samples.jsonl")
          == (tmp_path / "eval" / "heldout.samples.jsonl").read_text())
  settings = storage.read_json("gs://bucket/eval/metrics.json")["settings"]
  assert settings["checkpoint"] == f"{_RUN}@step3"
  assert os.listdir(tiny_run.cwd) == []


def test_export_of_the_gs_run_folder_equals_the_local_export(tiny_run, local_copy, tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  remote = export.export_run(_RUN, "gs://bucket/hf", step=2)
  local = export.export_run(local_copy, str(tmp_path / "hf"), step=2)
  assert remote["files"] == ["gs://bucket/hf/model.safetensors"]
  assert remote["tokenizer"] == local["tokenizer"]
  assert (sorted(storage.listdir("gs://bucket/hf")) == sorted(os.listdir(tmp_path / "hf")))
  assert (storage.read_json("gs://bucket/hf/config.json")
          == json.loads((tmp_path / "hf" / "config.json").read_text()))
  ours = safetensors.numpy.load(storage.path(remote["files"][0]).read_bytes())
  theirs = safetensors.numpy.load_file(local["files"][0])
  assert sorted(ours) == sorted(theirs) and len(ours) > 0
  for name, tensor in theirs.items():
    np.testing.assert_array_equal(ours[name], tensor, err_msg=name)
  # An existing export is refused without --overwrite, as for a local --out.
  with pytest.raises(export.FlagError, match="--overwrite"):
    export.check_arguments(_RUN, "gs://bucket/hf", None, False)
  with pytest.raises(export.FlagError, match="is --run_dir"):
    export.check_arguments(_RUN, _RUN + "/", None, True)
  assert os.listdir(tiny_run.cwd) == []


def test_relex_output_and_teacher_checks_see_the_gs_run_folder(local_copy):
  del local_copy  # the bucket's run folder with its checkpoints/ steps
  teacher.check_source(_RUN)  # a gs:// run folder exists as a teacher
  with pytest.raises(FileNotFoundError, match="does not exist"):
    teacher.check_source("gs://bucket/runs/missing")
  pipeline.check_output_dir("gs://bucket/relex", run_dir=_RUN, target_steps=[5])
  with pytest.raises(ValueError, match="inside --run_dir"):
    pipeline.check_output_dir(f"{_RUN}/relex", run_dir=_RUN, target_steps=[5])
  with pytest.raises(ValueError, match="is --run_dir"):
    pipeline.check_output_dir(f"{_RUN}/", run_dir=_RUN, target_steps=[5])
  # An output folder on gs:// that holds step 3 already: orbax would skip target 3.
  storage.write_text("gs://bucket/relex_old/checkpoints/3/_CHECKPOINT_METADATA", "{}")
  with pytest.raises(ValueError, match=r"already holds checkpoints \[3\]"):
    pipeline.check_output_dir("gs://bucket/relex_old", run_dir=_RUN, target_steps=[3, 5])
