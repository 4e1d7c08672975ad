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

Host memory: --max_chunk_bytes for the box buffers plus one decoded storage
chunk of the checkpoints plus the output parameters (on an accelerator the
output lives in device memory), independent of the number of checkpoints.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags
import numpy as np

from rlvr_jax.relex import checkpoint_io
from rlvr_jax.relex import diagnostics
from rlvr_jax.relex import relex

DEFAULT_MAX_CHUNK_BYTES = 1 << 30

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
    "fit", "linear", sorted(relex.FITS),
    "Trajectory fit of each coefficient on the true step numbers.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "same", checkpoint_io.OUTPUT_DTYPES,
    "Dtype of the output parameters; 'same' keeps each stored dtype.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where checkpoints/<target>/ and diagnostics go.")
_MAX_CHUNK_BYTES = flags.DEFINE_integer(
    "max_chunk_bytes", DEFAULT_MAX_CHUNK_BYTES,
    "Bound on the host buffers of one box: 8 (T + 2) bytes per element in the "
    "Gram pass over T checkpoints, 64 in the second pass.")
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
# Not `config`: experiments.train, imported by --eval, may define that flag.
_EVAL_CONFIG = config_flags.DEFINE_config_file(
    "eval_config", None, "Trainer config file for --eval.", lock_config=True)


def parse_steps(text: str, flag: str) -> list[int]:
  """Steps from 'first:last', 'first:last:every' or 'a,b,c'.

  Args:
    text: the flag value.
    flag: the flag name, for error messages.

  Returns:
    The steps in increasing order.
  """
  try:
    if ":" in text:
      parts = [int(p) for p in text.split(":")]
      if len(parts) not in (2, 3) or parts[1] < parts[0] or (
          len(parts) == 3 and parts[2] < 1):
        raise ValueError(text)
      steps = list(range(parts[0], parts[1] + 1,
                         parts[2] if len(parts) == 3 else 1))
    else:
      steps = [int(p) for p in text.split(",") if p.strip()]
  except ValueError as e:
    raise ValueError(
        f"--{flag}={text!r}: expected 'first:last', 'first:last:every' or a "
        "comma list of integers.") from e
  if len(set(steps)) != len(steps):
    raise ValueError(f"--{flag}={text!r} repeats a step.")
  return sorted(steps)


def _evaluate_checkpoint():
  """experiments.train.evaluate_checkpoint, or a clear ImportError."""
  message = ("--eval needs experiments.train.evaluate_checkpoint("
             "params_dir_or_step, config), which does not exist yet")
  try:
    from experiments import train  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"{message}: {e}") from e
  if not hasattr(train, "evaluate_checkpoint"):
    raise ImportError(message + ".")
  return train.evaluate_checkpoint


def _check_arguments(window: Sequence[int], target_steps: Sequence[int],
                     base_step: int, rank: int, fit: str) -> None:
  """ValueError naming the flag for an unusable combination."""
  if len(window) < 2:
    raise ValueError(f"--window has {len(window)} checkpoint(s) "
                     f"{list(window)}; RELEX fits a line and needs at least 2.")
  if len(set(window)) != len(window):
    raise ValueError(f"--window repeats a step: {list(window)}.")
  if base_step in window:
    raise ValueError(f"--base_step={base_step} is inside --window; the base is "
                     "theta_0, not an observation.")
  if fit not in relex.FITS:
    raise ValueError(f"--fit={fit!r}; choose one of {sorted(relex.FITS)}.")
  if len(window) <= relex.FITS[fit]:
    raise ValueError(f"--fit={fit} needs more than {relex.FITS[fit]} window "
                     f"checkpoints, got {len(window)}.")
  if not 1 <= rank <= len(window):
    raise ValueError(f"--rank={rank} must be in [1, {len(window)}] (window "
                     "size).")
  if not target_steps:
    raise ValueError("--target_step is empty.")


def run(
    *,
    run_dir: str | epath.Path,
    window: Sequence[int],
    target_steps: Sequence[int],
    output_dir: str | epath.Path,
    base_step: int = 0,
    rank: int = 1,
    fit: str = "linear",
    dtype: str = "same",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    sharding: str = "base",
    hf_dir: str | epath.Path | None = None,
    plot_tensors: Sequence[str] = (),
    eval_config: Any = None,
) -> dict[str, Any]:
  """Extrapolates a run's checkpoints to each target step (METHODS.md 4).

  Args:
    run_dir: the trainer's workdir.
    window: observed steps (>= 2, base excluded).
    target_steps: steps to extrapolate to; where a real checkpoint exists its
      relative error is reported.
    output_dir: receives checkpoints/<target>/, model_config.json and the
      diagnostics.
    base_step: step of theta_0.
    rank: components kept per tensor.
    fit: a key of relex.FITS.
    dtype: a value of checkpoint_io.OUTPUT_DTYPES.
    max_chunk_bytes: bound on one box's host buffer.
    sharding: a value of checkpoint_io.SHARDINGS.
    hf_dir: if set, HF safetensors of each target go to <hf_dir>/<target>/.
    plot_tensors: tensors whose trajectories are plotted.
    eval_config: the trainer config; if set, evaluates each output and the
      last observed checkpoint with experiments.train.evaluate_checkpoint.

  Returns:
    The diagnostics dict (see diagnostics.summarize), plus 'eval' when
    evaluated.
  """
  start = time.perf_counter()
  window = sorted(window)
  target_steps = sorted(set(target_steps))
  _check_arguments(window, target_steps, base_step, rank, fit)
  evaluate = _evaluate_checkpoint() if eval_config is not None else None
  run_checkpoints = checkpoint_io.RunCheckpoints(
      run_dir, steps=[base_step, *window], optional_steps=target_steps)
  references = [s for s in target_steps if s in run_checkpoints.steps]

  fits = {}
  gram_seconds = 0.0
  for name, info in run_checkpoints.params.items():
    logging.info("RELEX Gram of %s %s", name, info.shape)
    gram_start = time.perf_counter()
    grams = relex.accumulate_gram(
        run_checkpoints.tensor(name), base_step=base_step, steps=window,
        stacked=info.stacked, max_chunk_bytes=max_chunk_bytes)
    gram_seconds += time.perf_counter() - gram_start
    fits[name] = [relex.fit_tensor(g, window, rank=rank, fit=fit)
                  for g in grams]
  read_gram = (run_checkpoints.stats.bytes, run_checkpoints.stats.seconds)

  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  model_config = epath.Path(run_dir) / "model_config.json"
  if model_config.exists():
    (output_dir / "model_config.json").write_text(model_config.read_text())
  last_meta = run_checkpoints.meta(window[-1]) or {}
  shardings = checkpoint_io.output_shardings(run_checkpoints, sharding)
  errors = {}
  outputs = {}
  for target in target_steps:
    weights = {name: np.stack([f.weights(target) for f in layer_fits])
               for name, layer_fits in fits.items()}
    params, target_errors = checkpoint_io.extrapolate_params(
        run_checkpoints, weights, base_step=base_step, steps=window,
        dtype=dtype, shardings=shardings, max_chunk_bytes=max_chunk_bytes,
        reference_step=target if target in references else None)
    if target in references:
      errors[target] = target_errors
    meta = {"step": target,
            "relex": {"run_dir": str(run_dir), "base_step": base_step,
                      "window": window, "rank": rank, "fit": fit}}
    if "model_config" in last_meta:
      meta["model_config"] = last_meta["model_config"]
    outputs[target] = checkpoint_io.save_checkpoint(
        output_dir, target, params, meta)
    if hf_dir is not None:
      checkpoint_io.export_hf(params, model_config,
                              epath.Path(hf_dir) / str(target))
    del params

  result = diagnostics.summarize(
      fits, stacked={n: i.stacked for n, i in run_checkpoints.params.items()},
      base_step=base_step, target_steps=target_steps, errors=errors)
  result["summary"].update({
      "relex/gram_read_bytes": read_gram[0],
      "relex/gram_read_seconds": read_gram[1],
      "relex/gram_seconds": gram_seconds,
      "relex/read_bytes": run_checkpoints.stats.bytes,
      "relex/read_seconds": run_checkpoints.stats.seconds,
      "relex/seconds": time.perf_counter() - start,
  })
  result["outputs"] = {str(s): str(p) for s, p in outputs.items()}
  diagnostics.plot(result, output_dir / "relex_diagnostics.png",
                   tensors=plot_tensors)
  print(diagnostics.format_table(result))
  if evaluate is not None:
    last_params = run_checkpoints.directory / str(window[-1]) / "params"
    result["eval"] = {str(window[-1]): evaluate(str(last_params), eval_config)}
    for target, params_dir in outputs.items():
      result["eval"][str(target)] = evaluate(str(params_dir), eval_config)
    for step, metrics in result["eval"].items():
      print(f"eval step {step}: {json.dumps(metrics, default=str)}")
  diagnostics.write_json(result, output_dir / "relex_diagnostics.json")
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for flag in (_RUN_DIR, _WINDOW, _TARGET_STEP, _OUTPUT_DIR):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required.")
  if _EVAL.value and _EVAL_CONFIG.value is None:
    raise app.UsageError("--eval needs --eval_config (the trainer config).")
  run(run_dir=_RUN_DIR.value,
      window=parse_steps(_WINDOW.value, "window"),
      target_steps=parse_steps(_TARGET_STEP.value, "target_step"),
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
