r"""RELEX: extrapolate a short RLVR run's checkpoints to a later step.

METHODS.md section 4. Reads the base checkpoint and the dense-window
checkpoints of a trainer run (orbax, docs/CONVENTIONS.md), fits a rank-r
trajectory per tensor (per layer slice of stacked parameters) on the true
step numbers, and writes theta_0 + sum_r c*_r v_r for each target step as
`<output_dir>/checkpoints/<target>/` in the trainer's layout, without
training. Diagnostics go to `<output_dir>/relex_diagnostics.{json,png}`.

  python -m experiments.relex --run_dir=runs/grpo_smollm2 --window=1:75 \
      --target_step=500 --output_dir=runs/relex_500

Expected: on the paper's models a 75-step window extrapolated to 500 steps
matches full RLVR on MATH to about one point (METHODS.md 4); the whole-model
energy fraction of the top component is printed.

The pipeline is `rlvr_jax.relex.pipeline.run`; this file only parses flags.
Every flag is checked before a checkpoint is read.

Host memory: --max_chunk_bytes for the box buffers plus one decoded storage
chunk of the checkpoints plus the output parameters (on an accelerator the
output lives in device memory), independent of the number of checkpoints.
"""

from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from rlvr_jax.relex import checkpoint_io
from rlvr_jax.relex import fit
from rlvr_jax.relex import pipeline

_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Trainer workdir holding checkpoints/<step>/.")
_BASE_STEP = flags.DEFINE_integer(
    "base_step", 0, "Step of the base checkpoint theta_0.")
_WINDOW = flags.DEFINE_string(
    "window", None,
    "Observed steps: 'first:last' (every step), 'first:last:every' (the save "
    "interval), or a comma list. Every step must exist.")
_TARGET_STEP = flags.DEFINE_string(
    "target_step", None, "Step(s) to extrapolate to, comma separated.")
_RANK = flags.DEFINE_integer(
    "rank", 1, "Top eigenpairs kept per tensor (METHODS.md 4 step 7).")
_FIT = flags.DEFINE_enum(
    "fit", "linear", sorted(fit.FITS),
    "Trajectory fit of each coefficient on the true step numbers.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "same", checkpoint_io.OUTPUT_DTYPES,
    "Dtype of the output parameters; 'same' keeps each stored dtype.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where checkpoints/<target>/ and diagnostics go.")
_MAX_CHUNK_BYTES = flags.DEFINE_integer(
    "max_chunk_bytes", pipeline.DEFAULT_MAX_CHUNK_BYTES,
    "Bound on the host buffers of one box: 8 (R + 2) bytes per element in the "
    "Gram pass over R checkpoints, 64 in the second pass.")
_SHARDING = flags.DEFINE_enum(
    "sharding", "base", checkpoint_io.SHARDINGS,
    "Output sharding: the base checkpoint's, or one device.")
_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "Also export HF safetensors to <hf_dir>/<target>/.")
_PLOT_TENSORS = flags.DEFINE_list(
    "plot_tensors", [],
    "Tensors whose coefficient trajectories are plotted, e.g. "
    "'layers/mlp/down/kernel[0],embed/embedding'; default the largest movers.")
_EVAL = flags.DEFINE_bool(
    "eval", False,
    "Run the trainer's held-out evaluation on each extrapolated checkpoint and "
    "on the last observed one (needs --eval_config).")
# Not `config`: experiments.train defines that flag, and flag names are global.
_EVAL_CONFIG = config_flags.DEFINE_config_file(
    "eval_config", None, "Trainer config file for --eval.", lock_config=True)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for flag in (_RUN_DIR, _WINDOW, _TARGET_STEP, _OUTPUT_DIR):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required.")
  if _EVAL.value and _EVAL_CONFIG.value is None:
    raise app.UsageError("--eval needs --eval_config (the trainer config).")
  pipeline.run(
      run_dir=_RUN_DIR.value,
      window=pipeline.parse_steps(_WINDOW.value, "window"),
      target_steps=pipeline.parse_steps(_TARGET_STEP.value, "target_step"),
      output_dir=_OUTPUT_DIR.value,
      base_step=_BASE_STEP.value,
      rank=_RANK.value,
      fit=_FIT.value,
      dtype=_DTYPE.value,
      max_chunk_bytes=_MAX_CHUNK_BYTES.value,
      sharding=_SHARDING.value,
      hf_dir=_HF_DIR.value,
      plot_tensors=_PLOT_TENSORS.value,
      eval_config=_EVAL_CONFIG.value if _EVAL.value else None)


if __name__ == "__main__":
  app.run(main)
