"""Two processes on localhost train exactly like one process (issue 7).

`python -m experiments.train` runs the same tiny config three times at once:
one process with 8 simulated CPU devices, and two processes with 4 devices each
that find each other through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (`sharding.initialize_distributed`) and share one workdir, as
the workers of a pod share a bucket. Both layouts use the mesh
(data=1, fsdp=4, tensor=2), which splits the batch and every parameter across
the two processes, so the forward, the gradient reductions, the sampler's
gather, the cross-process collectives (gloo) and the orbax writes of both
processes are all on the path.

The two runs must agree: the same rollouts (identical rewards and lengths in
metrics.jsonl, written once, by process 0), the same data-iterator position
in the checkpoints, and the same parameters and optimizer state after every
step to float tolerance. The gradient is not zero: a random model never
answers right, so the reward is made to depend on the response length (a
response stops at its first space, and a DAPO overlong penalty over all 8
response tokens gives r = -length / 8), which differs within groups.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import pytest

from rlvr_jax import sharding
from rlvr_jax import checkpoints
from rlvr_jax.training import metrics as metrics_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STEPS = 2
_TIMEOUT_S = 300  # a hung coordinator fails the test instead of the CI job

_FLAGS = (
    "--config=experiments/configs/tiny.py",
    f"--config.rl.steps={_STEPS}",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=4",
    "--config.mesh.tensor=2",
    # Plain prompts of ~30 tokens: a 64-slot prompt compiles faster than 128.
    "--config.data.template=plain",
    "--config.data.few_shot=0",
    "--config.rl.max_prompt_len=64",
    # A reward that varies within a group (module docstring).
    "--config.rl.stop_strings=(' ',)",
    "--config.reward.overlong_buffer=8",
    "--config.reward.checker=exact",  # no checker worker processes
    "--config.data.eval_size=2",
    "--config.train.eval_before=False",
    "--config.train.eval_after=False",
    "--config.train.tensorboard=False",
    # Checkpoints of the base model and the last step only (150 MB each).
    "--config.train.dense_window=0",
    f"--config.train.save_every={_STEPS}",
    f"--compilation_cache={os.path.join(_ROOT, '.cache', 'jax')}",
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir: str, log: str, *, devices: int, env: dict[str, str]) -> subprocess.Popen:
  """Starts the training binary on `workdir`; stdout and stderr go to `log`."""
  full_env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  full_env.update(JAX_PLATFORMS="cpu",
                  XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **env)
  with open(log, "w") as out:
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *_FLAGS,
                             f"--workdir={workdir}"],
                            cwd=_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: str, chars: int = 4000) -> str:
  """The end of a log without absl's INFO lines (warnings, errors, tracebacks)."""
  with open(log) as f:
    lines = [line for line in f if not re.match(r"I\d{4} ", line)]
  return "".join(lines)[-chars:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(single-process workdir, two-process workdir), both trained _STEPS steps."""
  root = tmp_path_factory.mktemp("multihost")
  single, multi = str(root / "single"), str(root / "multi")
  port = _free_port()
  logs = {name: str(root / f"{name.replace(' ', '')}.log")
          for name in ("single", "process 0", "process 1")}
  procs = {"single": _start(single, logs["single"], devices=8, env={})}
  for i in range(2):
    procs[f"process {i}"] = _start(multi, logs[f"process {i}"], devices=4, env={
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": str(i),
    })
  deadline = time.monotonic() + _TIMEOUT_S
  codes = {}
  for name, proc in procs.items():
    try:
      codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
      codes[name] = f"timed out after {_TIMEOUT_S} s"
  for proc in procs.values():
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  if any(code != 0 for code in codes.values()):
    report = "\n".join(f"===== {name}: exit {codes[name]}\n{_tail(logs[name])}"
                       for name in procs)
    pytest.fail(f"a training run failed:\n{report}")
  yield single, multi
  shutil.rmtree(root)


def _assert_trees_close(actual: Any, expected: Any, *, atol: float) -> None:
  """Same tree structure, every leaf within `atol`."""
  leaves_a, tree_a = jax.tree.flatten(actual)
  leaves_e, tree_e = jax.tree.flatten(expected)
  assert tree_a == tree_e
  for a, e in zip(leaves_a, leaves_e):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=atol)


def test_two_processes_train_the_same_parameters(runs):
  single, multi = runs
  with open(os.path.join(multi, "config.json")) as f, \
      open(os.path.join(single, "config.json")) as g:
    assert json.load(f) == json.load(g)
  base = checkpoints.restore_params(single, 0)
  for step in (0, _STEPS):
    expected = checkpoints.restore_params(single, step)
    # The two-process checkpoint holds the 2-process device layout, so it is
    # read onto the single run's shardings.
    actual = checkpoints.restore_params(multi, step, target=expected)
    # Collectives sum in another order across two processes. Adam divides by
    # sqrt(v), so a weight whose gradient is near zero turns that float noise
    # into a visible fraction of a step: 1.5e-5 was seen in 3 of 524288
    # weights, against steps of lr 1e-3 (the bound is 10% of one step).
    _assert_trees_close(actual, expected, atol=1e-4)
  moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
              for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(base)))
  # AdamW steps of lr 1e-3 on a non-zero gradient. Weight decay alone would
  # move a weight by at most 4 updates * lr 1e-3 * decay 0.1 * |w| 0.11 < 1e-4.
  assert moved > 1e-3


def test_two_processes_write_a_complete_checkpoint(runs):
  single, multi = runs
  for step in (0, _STEPS):
    meta = checkpoints.restore_item(multi, "meta", step)
    assert meta == checkpoints.restore_item(single, "meta", step)  # data position too
  expected = checkpoints.restore_item(single, "opt_state", _STEPS)
  actual = checkpoints.restore_item(multi, "opt_state", _STEPS, target=expected)
  _assert_trees_close(actual, expected, atol=1e-5)


def test_only_process_zero_writes_metrics(runs):
  single, multi = runs
  rows = metrics_lib.read_jsonl(os.path.join(multi, "metrics.jsonl"))
  reference = metrics_lib.read_jsonl(os.path.join(single, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, _STEPS + 1))  # one row per step
  for row, ref in zip(rows, reference):
    # Host-side numbers of the same sampled tokens: exactly equal.
    for key in ("reward/mean", "response/length_mean", "response/truncated_frac"):
      assert row[key] == ref[key], key
    np.testing.assert_allclose(row["policy/loss"], ref["policy/loss"], rtol=1e-5)


def test_initialize_distributed_names_a_bad_variable(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    sharding.initialize_distributed()


def test_restore_item_names_a_bad_item(tmp_path):
  with pytest.raises(ValueError, match="item='weights'"):
    checkpoints.restore_item(str(tmp_path), "weights")
