r"""RELEX time and peak memory against the number of checkpoints.

Writes one synthetic run with the parameter shapes of SmolLM2-135M (D=576,
F=1536, 9/3 heads of 64, V=49152, tied embedding, from
`rlvr_jax.models.config.smollm2_135m` and the decoder's own parameter tree) in
float32, base step 0 plus steps 1..100 saved like the trainer (orbax
CheckpointManager, `params` with `checkpoint_io.storage_save_args`), then runs
`experiments.relex.run` on the windows 1..25, 1..50 and 1..100 (target step
200), each in a fresh process so its peak RSS (VmHWM) is its own.

Scaled: 4 layers instead of 30 (--layers). At 30 layers one checkpoint is
538 MB and 101 of them 54 GB, more than this machine's free disk; at 4 layers
it is 170 MB (the real embedding is two thirds of it) and the run 17 GB. Every
tensor keeps its real shape, so boxes, chunks and reads per tensor are those
of the real model.

The Gram's float64 products run on one OpenBLAS thread (--blas_threads).

Expected: bytes read and read time grow linearly with the checkpoints; the
Gram is T^2 numel multiply-adds, so its share grows with T; peak RSS does not
grow with T (it is set by --max_chunk_bytes plus the output parameters).

  python benchmarks/relex_scaling.py --workdir=/tmp/relex_bench

Ends with one JSON line {"rows": [{"checkpoints", "seconds", "peak_rss_gb",
...}]}. The synthetic run is deleted unless --keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp

from rlvr_jax.models import config as config_lib
from rlvr_jax.models import decoder
from rlvr_jax.relex import checkpoint_io
from rlvr_jax.relex import pipeline as relex_pipeline

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/relex_bench",
                               "Scratch folder for the synthetic run.")
_LAYERS = flags.DEFINE_integer("layers", 4, "Layers of the synthetic model.")
_WINDOWS = flags.DEFINE_list("windows", ["25", "50", "100"],
                             "Window sizes (checkpoints) to time.")
_TARGET = flags.DEFINE_integer("target", 200, "Extrapolation target step.")
_BUDGET = flags.DEFINE_integer(
    "budget_bytes", 1 << 30, "RELEX max_chunk_bytes.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the synthetic run.")
_BLAS_THREADS = flags.DEFINE_integer(
    "blas_threads", 1,
    "OPENBLAS_NUM_THREADS of the RELEX processes. On the shared 2-core dev "
    "machine threaded OpenBLAS spins against the other jobs: a [100, 262144] "
    "float64 Gram ran at 9.5 GMAC/s on 1 thread and 1.0 on 2.")
_CHILD = flags.DEFINE_integer(
    "child", 0, "Internal: run RELEX on a window of this size and report.")


def _param_shapes(layers: int) -> dict[str, Any]:
  """The SmolLM2-135M parameter tree (with `layers` layers) as shapes."""
  model_config = config_lib.smollm2_135m().replace(num_layers=layers)
  model = nnx.eval_shape(lambda: decoder.create_model(model_config))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def write_run(run_dir: epath.Path, *, layers: int, num_steps: int) -> int:
  """Writes steps 0..num_steps of theta_0 + (a s + b) V + moving noise.

  Args:
    run_dir: the synthetic workdir.
    layers: L.
    num_steps: last step written.

  Returns:
    Bytes of one checkpoint's parameters.
  """
  shapes = _param_shapes(layers)
  rng = np.random.default_rng(0)
  draw = lambda s: rng.standard_normal(s.shape, np.float32) * np.float32(0.02)
  theta0 = jax.tree.map(draw, shapes)
  direction = jax.tree.map(draw, shapes)
  noise = jax.tree.map(draw, shapes)
  manager = ocp.CheckpointManager(run_dir / "checkpoints",
                                  item_names=("params", "meta"))
  for step in range(num_steps + 1):
    coefficient = np.float32(0.01 * step + 0.05) if step else np.float32(0)
    shift = np.float32(0.1) if step else np.float32(0)
    params = jax.tree.map(
        lambda t, v, n: t + coefficient * v + shift * np.roll(n, 7919 * step),
        theta0, direction, noise)
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(
            params, save_args=checkpoint_io.storage_save_args(params)),
        meta=ocp.args.JsonSave({"step": step})))
    manager.wait_until_finished()
  manager.close()
  return sum(x.nbytes for x in jax.tree.leaves(theta0))


def _peak_rss_bytes() -> int:
  """VmHWM of this process (Linux)."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def _child(window: int) -> None:
  """Runs RELEX on steps 1..window and prints one JSON line."""
  workdir = epath.Path(_WORKDIR.value)
  output_dir = workdir / f"out_{window}"
  shutil.rmtree(output_dir, ignore_errors=True)
  start = time.perf_counter()
  result = relex_pipeline.run(
      run_dir=workdir / "run", window=list(range(1, window + 1)),
      target_steps=[_TARGET.value], output_dir=output_dir,
      max_chunk_bytes=_BUDGET.value, sharding="single")
  seconds = time.perf_counter() - start
  summary = result["summary"]
  print(json.dumps({
      "checkpoints": window,
      "seconds": seconds,
      "peak_rss_gb": _peak_rss_bytes() / 1e9,
      "gb_read": summary["relex/read_bytes"] / 1e9,
      "gram_pass_read_seconds": summary["relex/gram_read_seconds"],
      "gram_pass_seconds": summary["relex/gram_seconds"],
      "energy_fraction": summary["relex/energy_fraction"],
  }))
  shutil.rmtree(output_dir, ignore_errors=True)


def main(argv: Sequence[str]) -> None:
  del argv
  if _CHILD.value:
    _child(_CHILD.value)
    return
  workdir = epath.Path(_WORKDIR.value)
  windows = sorted(int(w) for w in _WINDOWS.value)
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir(parents=True)
  try:
    start = time.perf_counter()
    checkpoint_bytes = write_run(workdir / "run", layers=_LAYERS.value,
                                 num_steps=max(windows))
    print(f"wrote {max(windows) + 1} checkpoints of "
          f"{checkpoint_bytes / 1e6:.0f} MB in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for window in windows:
      out = subprocess.run(
          [sys.executable, __file__, f"--child={window}",
           f"--workdir={workdir}", f"--target={_TARGET.value}",
           f"--budget_bytes={_BUDGET.value}"],
          check=False, capture_output=True, text=True,
          env={**os.environ, "OPENBLAS_NUM_THREADS": str(_BLAS_THREADS.value)})
      if out.returncode:
        raise RuntimeError(f"window {window} failed:\n{out.stderr[-3000:]}")
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  finally:
    if not _KEEP.value:
      shutil.rmtree(workdir, ignore_errors=True)
  print(f"\n{'ckpts':>5s} {'GB read':>8s} {'seconds':>8s} {'s/GB':>6s} "
        f"{'gram-pass read s':>16s} {'gram-pass s':>11s} {'peak RSS GB':>11s}")
  for row in rows:
    print(f"{row['checkpoints']:5d} {row['gb_read']:8.1f} "
          f"{row['seconds']:8.1f} {row['seconds'] / row['gb_read']:6.2f} "
          f"{row['gram_pass_read_seconds']:16.1f} "
          f"{row['gram_pass_seconds']:11.1f} {row['peak_rss_gb']:11.2f}")
  print(json.dumps({"rows": rows}))


if __name__ == "__main__":
  app.run(main)
