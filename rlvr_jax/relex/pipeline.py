"""RELEX on a trainer run: check, fit, extrapolate, save, report (METHODS.md 4).

`run` reads the base checkpoint and the dense-window checkpoints of a trainer
run (orbax, docs/CONVENTIONS.md), fits a rank-r trajectory per tensor (per
layer slice of stacked parameters, `relex.fit`) on the true step numbers, and
writes theta_0 + sum_r c*_r v_r for each target step as
`<output_dir>/checkpoints/<target>/` in the trainer's layout, without
training. Diagnostics go to `<output_dir>/relex_diagnostics.{json,png}`.
`experiments.relex` is its command line.

A LoRA run's checkpoints hold its adapters (`rlvr_jax.models.lora`): RELEX
fits and extrapolates the adapter trajectory (each A and B per layer, like
any tensor), writes extrapolated adapters and copies the run's config.json
beside them (the base model's source and alpha / r); evaluation and --hf_dir
merge them into the base weights, W + (alpha / r) A B. A and B are fitted
separately, so the extrapolated weight change (alpha / r) A(t) B(t) is a
product of two fitted trajectories, not a fit of the product.

Every argument, the output folder included, is checked before any checkpoint
is read (`check_arguments`, `check_output_dir`): a bad flag fails in
milliseconds, not after the whole computation.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from absl import logging
from etils import epath
from flax import nnx
import jax
import ml_collections
import numpy as np

from rlvr_jax import storage
from rlvr_jax.evaluation import evaluate as evaluate_lib
from rlvr_jax.models import loader
from rlvr_jax.models import lora
from rlvr_jax.relex import checkpoint_io
from rlvr_jax.relex import diagnostics
from rlvr_jax.relex import fit as fit_lib
from rlvr_jax.relex import relex

DEFAULT_MAX_CHUNK_BYTES = 1 << 30


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


def check_arguments(window: Sequence[int], target_steps: Sequence[int],
                    base_step: int, rank: int, fit: str) -> None:
  """ValueError naming the flag for an unusable combination of steps and fit."""
  if base_step < 0:
    raise ValueError(f"--base_step={base_step} must be >= 0.")
  if len(window) < 2:
    raise ValueError(f"--window has {len(window)} checkpoint(s) "
                     f"{list(window)}; RELEX fits a line and needs at least 2.")
  if len(set(window)) != len(window):
    raise ValueError(f"--window repeats a step: {list(window)}.")
  if base_step in window:
    raise ValueError(f"--base_step={base_step} is inside --window; the base is "
                     "theta_0, not an observation.")
  if min(window) < base_step:
    raise ValueError(f"--window {list(window)} has steps before --base_step={base_step}.")
  if fit not in fit_lib.FITS:
    raise ValueError(f"--fit={fit!r}; choose one of {sorted(fit_lib.FITS)}.")
  if len(window) <= fit_lib.FITS[fit]:
    raise ValueError(f"--fit={fit} needs more than {fit_lib.FITS[fit]} window "
                     f"checkpoints, got {len(window)}.")
  if not 1 <= rank <= len(window):
    raise ValueError(f"--rank={rank} must be in [1, {len(window)}] (window "
                     "size).")
  if not target_steps:
    raise ValueError("--target_step is empty.")
  early = [s for s in target_steps if s <= base_step]
  if early:
    raise ValueError(f"--target_step {early}: every target must be after "
                     f"--base_step={base_step} (a step the run could reach).")


def _saved_steps(directory: epath.Path) -> list[int]:
  """Completed checkpoint steps under `directory` (orbax's temporary folders excluded)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def check_output_dir(output_dir: str | epath.Path, *, run_dir: str | epath.Path,
                     target_steps: Sequence[int]) -> None:
  """ValueError naming --output_dir when the targets cannot be written there.

  Refused: the run folder itself or a folder inside it (RELEX's checkpoints
  have no optimizer state and must not mix with the run's), a file, and a
  folder whose checkpoints/ already holds a target step or a later one (orbax
  writes only increasing steps and would silently skip the target).

  Args:
    output_dir: the --output_dir value.
    run_dir: the --run_dir value.
    target_steps: the steps to write.
  """
  # A URI (gs://) compared as written: realpath would make it a local path.
  canonical = lambda p: (os.fspath(p).rstrip("/") if storage.is_remote(p)
                         else os.path.realpath(os.fspath(p)))
  out, run = canonical(output_dir), canonical(run_dir)
  if out == run or out.startswith(run.rstrip("/") + "/"):
    raise ValueError(
        f"--output_dir={str(output_dir)!r} is {'--run_dir' if out == run else 'inside --run_dir'}"
        f"={str(run_dir)!r}: RELEX would add extrapolated checkpoints (without optimizer "
        "state) to the training run; choose a folder outside it.")
  if storage.isfile(out):
    raise ValueError(f"--output_dir={str(output_dir)!r} is a file, not a folder.")
  existing = _saved_steps(epath.Path(out) / "checkpoints")
  if existing:
    blocked = [s for s in target_steps if s <= existing[-1]]
    if blocked:
      raise ValueError(
          f"--output_dir={str(output_dir)!r} already holds checkpoints {existing}; "
          f"target steps {blocked} are not after the latest one, and orbax writes only "
          "increasing steps: choose an empty --output_dir.")


def _adapter_merger(run_dir: epath.Path, output_dir: epath.Path,
                    model_config: epath.Path) -> Any:
  """For a LoRA run: copies its config.json to `output_dir`; returns adapters -> full params.

  The base model (the run's model.source in its model_config's param_dtype)
  is loaded on the host at the first call, once.
  """
  config_file = run_dir / "config.json"
  if not config_file.exists():
    raise ValueError(f"--run_dir={str(run_dir)!r} holds LoRA adapters but no config.json "
                     "(the base model's source and alpha / r).")
  text = config_file.read_text()
  (output_dir / "config.json").write_text(text)
  run_config = json.loads(text)
  scale = lora.run_scale(run_config, str(config_file))
  base = []

  def to_full(adapters: Any) -> dict[str, Any]:
    if not base:
      param_dtype = json.loads(model_config.read_text())["param_dtype"]
      with jax.default_device(jax.devices("cpu")[0]):
        model, _, _ = loader.load_model(run_config["model"]["source"], param_dtype=param_dtype)
      base.append(nnx.state(model, nnx.Param))
    return lora.merge_checkpoint(base[0], adapters, scale=scale)

  return to_full


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
    eval_config: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
  """Extrapolates a run's checkpoints to each target step (METHODS.md 4).

  Args:
    run_dir: the trainer's workdir.
    window: observed steps (>= 2, base excluded).
    target_steps: steps to extrapolate to (each > base_step); where a real
      checkpoint exists its relative error is reported.
    output_dir: receives checkpoints/<target>/, model_config.json and the
      diagnostics; not run_dir nor inside it.
    base_step: step of theta_0.
    rank: components kept per tensor.
    fit: a key of fit.FITS.
    dtype: a value of checkpoint_io.OUTPUT_DTYPES.
    max_chunk_bytes: bound on one box's host buffer.
    sharding: a value of checkpoint_io.SHARDINGS.
    hf_dir: if set, HF safetensors of each target go to <hf_dir>/<target>/.
    plot_tensors: tensors whose trajectories are plotted.
    eval_config: the trainer config; if set, evaluates each output and the
      last observed checkpoint on its held-out set
      (`evaluation.evaluate.evaluate_trainer_checkpoint`, the trainer's own
      evaluation).

  Returns:
    The diagnostics dict (see diagnostics.summarize), plus 'eval' when
    evaluated.

  Raises:
    ValueError: naming the flag, for any bad argument, before a checkpoint
      is read.
  """
  start = time.perf_counter()
  window = sorted(window)
  target_steps = sorted(set(target_steps))
  check_arguments(window, target_steps, base_step, rank, fit)
  if dtype not in checkpoint_io.OUTPUT_DTYPES:
    raise ValueError(f"--dtype={dtype!r}; choose one of {checkpoint_io.OUTPUT_DTYPES}.")
  if sharding not in checkpoint_io.SHARDINGS:
    raise ValueError(f"--sharding={sharding!r}; choose one of {checkpoint_io.SHARDINGS}.")
  check_output_dir(output_dir, run_dir=run_dir, target_steps=target_steps)
  output_dir = epath.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
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
    fits[name] = [fit_lib.fit_tensor(g, window, rank=rank, fit=fit) for g in grams]
  read_gram = (run_checkpoints.stats.bytes, run_checkpoints.stats.seconds)

  model_config = epath.Path(run_dir) / "model_config.json"
  if model_config.exists():
    (output_dir / "model_config.json").write_text(model_config.read_text())
  to_full = None
  if any(lora.is_adapter_path(name) for name in run_checkpoints.params):
    to_full = _adapter_merger(epath.Path(run_dir), output_dir, model_config)
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
    outputs[target] = checkpoint_io.save_checkpoint(output_dir, target, params, meta)
    if hf_dir is not None:
      checkpoint_io.export_hf(params if to_full is None else to_full(params), model_config,
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
  diagnostics.plot(result, output_dir / "relex_diagnostics.png", tensors=plot_tensors)
  print(diagnostics.format_table(result))
  if eval_config is not None:
    last_params = run_checkpoints.directory / str(window[-1]) / "params"
    result["eval"] = {str(window[-1]): evaluate_lib.evaluate_trainer_checkpoint(
        str(last_params), eval_config)}
    for target, params_dir in outputs.items():
      result["eval"][str(target)] = evaluate_lib.evaluate_trainer_checkpoint(
          str(params_dir), eval_config)
    for step, metrics in result["eval"].items():
      print(f"eval step {step}: {json.dumps(metrics, default=str)}")
  diagnostics.write_json(result, output_dir / "relex_diagnostics.json")
  return result
