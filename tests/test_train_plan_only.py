"""`experiments.train --plan_only`: the planner on the exact config about to run.

The test starts the binary with the project venv's interpreter (no libtpu),
so it also checks that the binary re-runs itself through `.venv-tpu` (the
CPU tests' JAX never loads libtpu). Skipped, as tests/test_plan.py, when
that venv does not exist.
"""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TPU_PYTHON = os.path.join(_ROOT, ".venv-tpu", "bin", "python")

pytestmark = pytest.mark.skipif(
    not os.path.exists(_TPU_PYTHON),
    reason=f"{_TPU_PYTHON} missing (make setup-tpu installs libtpu there)")


def test_plan_only_compiles_the_tiny_run(tmp_path):
  workdir = tmp_path / "run"
  # libtpu takes a host-wide lock unless told that several processes may load
  # it (the planner's tests, or a planner run beside this one, compile only).
  env = dict(os.environ, PYTHONPATH=_ROOT, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/tiny.py",
       "--plan_only", "--plan_topology=v5e:2x2", "--config.rl.max_new_tokens=16",
       f"--workdir={workdir}"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "tiny on v5e:2x2 (4 chips" in proc.stdout  # the table's title
  assert out["model"] == "tiny" and out["fits"] is True and out["chips"] == 4
  # The tiny config's mesh: data=-1 (all 4 chips), fsdp=1: parameters whole on each chip.
  assert out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  # tiny preset, float32 (V=49152, D=256, F=512, L=4, N=4, K=2, Dh=64, tied):
  # embed 49152*256 = 12,582,912; per layer q 256*4*64 + k, v 2*256*2*64 + o 4*64*256
  # + gate, up 2*256*512 + down 512*256 + 2 norms 2*256 = 590,336; final norm 256.
  params = 4 * (12_582_912 + 4 * 590_336 + 256)
  assert params == 59_778_048
  # stats: 4 prompts x 4 = 16 rows over 4 chips = 4 rows; S = P + T = 128 + 16
  # (--config.rl.max_new_tokens=16 reaches the plan): tokens int32 + input_mask bool.
  stats = out["programs"]["stats"]
  assert stats["sharded_argument_bytes"] == params + 4 * 144 * 4 + 4 * 144
  assert not os.path.exists(workdir)  # plan only: no run folder, no weights
