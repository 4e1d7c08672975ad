r"""Exports a trainer run as an HF model folder: `python -m experiments.export`.

  # The latest checkpoint of a run:
  python -m experiments.export --run_dir=runs/default --out=runs/default/hf
  # Step 2 of the tiny smoke run, replacing an earlier export:
  python -m experiments.export --run_dir=/tmp/tiny --out=/tmp/tiny_hf --step=2 --overwrite

--out receives config.json, generation_config.json, model.safetensors (or
shards with model.safetensors.index.json) and, when the run's tokenizer can be
loaded, its tokenizer files: a folder that transformers'
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
read, and so does `rlvr_jax.models.loader.load_model`. The weights keep the
run's param_dtype. A RELEX output folder (model_config.json and
checkpoints/<step>/) exports the same way, without a tokenizer.

--run_dir is a trainer workdir (docs/CONVENTIONS.md, "Checkpoints"): the
architecture comes from its model_config.json, the tokenizer from the
model.source of its config.json. The checkpoint is read onto the host CPU
whatever the accelerator and whatever device layout wrote it. --run_dir and
--out may be local folders or URIs such as gs://bucket/run
(`rlvr_jax.storage`; orbax reads the checkpoint itself); a gs:// --out is
written to a local temporary folder first, then copied, by process 0 only.

A LoRA run (`--config.model.lora_rank`) saves its adapters only: the export
loads the base weights from the model.source of its config.json and writes
the merged W + (lora_alpha / lora_rank) A B (`rlvr_jax.models.lora`), a full
model transformers reads without PEFT.
"""

import json
import os
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
from flax import nnx
import jax
import orbax.checkpoint as ocp

from rlvr_jax import checkpoints
from rlvr_jax import storage
from rlvr_jax.models import loader
from rlvr_jax.models import lora
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models import weights
from rlvr_jax.models.config import ModelConfig

# Other binaries define flags of these names with the same type and default
# (experiments.relex --run_dir, experiments.evaluate --step); allow_override
# lets the test suite import them all into one process.
_RUN_DIR = flags.DEFINE_string(
    "run_dir", None, "Trainer workdir to export (required).", allow_override=True)
_OUT = flags.DEFINE_string("out", None, "HF model folder to write (required).",
                           allow_override=True)
_STEP = flags.DEFINE_integer(
    "step", None, "Checkpoint step to export (default: the latest).", allow_override=True)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Write into a non-empty --out: its *.safetensors files and "
    "index are removed first, the other files the export writes are replaced.",
    allow_override=True)


class FlagError(ValueError):
  """A flag value that cannot work; the message names the flag."""


def _steps(checkpoint_dir: str) -> list[int]:
  manager = ocp.CheckpointManager(
      checkpoint_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def check_arguments(run_dir: str, out: str, step: int | None, overwrite: bool) -> int:
  """Checks every flag before anything is read; returns the step to export.

  Args:
    run_dir: --run_dir.
    out: --out.
    step: --step (None = the latest).
    overwrite: --overwrite.

  Returns:
    The checkpoint step.

  Raises:
    FlagError: a missing run folder, model config or checkpoint, an unknown
      step (the available ones are listed), --out equal to --run_dir or not a
      folder, or a non-empty --out without --overwrite.
  """
  if not run_dir:
    raise FlagError("--run_dir is required.")
  if not out:
    raise FlagError("--out is required.")
  if not storage.isdir(run_dir):
    raise FlagError(f"--run_dir={run_dir!r} does not exist or is not a folder.")
  if not storage.isdir(storage.join(run_dir, "checkpoints")):
    raise FlagError(f"--run_dir={run_dir!r} has no checkpoints/ folder (not a trainer workdir).")
  if not storage.isfile(storage.join(run_dir, "model_config.json")):
    raise FlagError(f"--run_dir={run_dir!r} has no model_config.json (the architecture).")
  checkpoint_dir = checkpoints.orbax_dir(storage.join(run_dir, "checkpoints"))
  available = _steps(checkpoint_dir)
  if not available:
    raise FlagError(f"--run_dir={run_dir!r}: no complete checkpoint in {checkpoint_dir}.")
  if step is None:
    step = available[-1]
  elif step not in available:
    raise FlagError(f"--step={step}: no such checkpoint in {checkpoint_dir}; "
                    f"available steps: {available}.")
  if _canonical(out) == _canonical(run_dir):
    raise FlagError(f"--out={out!r} is --run_dir; choose another folder.")
  if storage.isfile(out):
    raise FlagError(f"--out={out!r} is a file, not a folder.")
  if storage.listdir(out) and not overwrite:
    raise FlagError(f"--out={out!r} is not empty; pass --overwrite to replace its export.")
  return step


def _canonical(p: str) -> str:
  """A folder's name for comparisons: a URI without its trailing '/', a local path absolute."""
  return p.rstrip("/") if storage.is_remote(p) else os.path.abspath(p)


def _run_tokenizer(run_dir: str, vocab_size: int) -> Any:
  """The tokenizer of the run's model.source, or None (with a warning) when unavailable."""
  config_file = storage.join(run_dir, "config.json")
  try:
    source = storage.read_json(config_file)["model"]["source"]
    tokenizer = loader.load_source_tokenizer(source)
    tokenizer_lib.check_vocab_size(tokenizer, vocab_size, origin=f"{config_file} model.source")
  except (OSError, KeyError, ValueError) as e:
    logging.warning("No tokenizer files written: the run's tokenizer is unavailable (%s).", e)
    return None
  return tokenizer


def restore_on_host(run_dir: str, step: int) -> Any:
  """The `params` item of one checkpoint, as saved, on the host CPU.

  The restore target is the checkpoint's own metadata (names, shapes, dtypes)
  placed on one CPU device, so any writer's device layout and either
  parameter layout (pure dict, or the trainer's {'value': array} per
  Variable) restores.

  Args:
    run_dir: the trainer workdir.
    step: the checkpoint step.

  Returns:
    The nested parameter dict.
  """
  params_dir = epath.Path(checkpoints.orbax_dir(run_dir)) / "checkpoints" / str(step) / "params"
  tree = ocp.PyTreeCheckpointHandler().metadata(params_dir).tree
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree)
  return checkpoints.restore_params(run_dir, step, target=target)


def merge_adapters(run_dir: str, adapters: Any, config: ModelConfig) -> dict[str, Any]:
  """A LoRA checkpoint's full weights: its base model with the adapters merged in.

  Args:
    run_dir: the trainer workdir (or a RELEX output folder of a LoRA run):
      its config.json gives model.source and the adapters' alpha / r.
    adapters: the checkpoint's params item (adapters only).
    config: the run's model config (the base is loaded in its param_dtype).

  Returns:
    The nested pure dict of the merged parameters (host numpy).

  Raises:
    FlagError: config.json is missing or has no LoRA settings (naming it).
  """
  config_file = storage.join(run_dir, "config.json")
  try:
    run_config = storage.read_json(config_file)
    scale = lora.run_scale(run_config, config_file)
  except (OSError, KeyError, ValueError) as e:
    raise FlagError(f"--run_dir={run_dir!r} holds LoRA adapters, and merging them needs "
                    f"the run's config.json (model.source, lora_alpha, lora_rank): {e}") from e
  with jax.default_device(jax.devices("cpu")[0]):
    base, _, _ = loader.load_model(run_config["model"]["source"],
                                   param_dtype=config.param_dtype)
  return lora.merge_checkpoint(nnx.state(base, nnx.Param), adapters, scale=scale)


def export_run(run_dir: str, out: str, *, step: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
  """Writes one checkpoint of a run as an HF folder (module docstring).

  Args:
    run_dir: the trainer workdir.
    out: the HF folder to write.
    step: the checkpoint step; None = the latest.
    overwrite: allow a non-empty `out` (stale weight files are removed).

  Returns:
    {'step': the exported step, 'files': weight files written,
     'tokenizer': whether tokenizer files were written}.

  Raises:
    FlagError: see `check_arguments`.
  """
  step = check_arguments(run_dir, out, step, overwrite)
  config = ModelConfig.from_dict(storage.read_json(storage.join(run_dir, "model_config.json")))
  tokenizer = _run_tokenizer(run_dir, config.vocab_size)
  params = restore_on_host(run_dir, step)
  if lora.is_adapter_tree(params):
    params = merge_adapters(run_dir, params, config)
  if jax.process_index() == 0:
    for name in storage.listdir(out):
      if name.endswith(".safetensors") or name == weights.INDEX_FILE:
        storage.remove(storage.join(out, name))
  if storage.is_remote(out):  # the writers take local paths: stage, then copy
    with tempfile.TemporaryDirectory() as staging:
      written = weights.export_hf_safetensors(params, config, staging, tokenizer=tokenizer)
      if jax.process_index() == 0:
        storage.sync_folder(staging, out)
    files = [storage.join(out, os.path.basename(f)) for f in written]
  else:
    files = weights.export_hf_safetensors(params, config, out, tokenizer=tokenizer)
  logging.info("exported step %d of %s to %s", step, run_dir, out)
  return {"step": step, "files": files, "tokenizer": tokenizer is not None}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    result = export_run(_RUN_DIR.value, _OUT.value, step=_STEP.value,
                        overwrite=_OVERWRITE.value)
  except FlagError as e:
    raise app.UsageError(str(e)) from e
  print(json.dumps({"out": _OUT.value, **result}), flush=True)


if __name__ == "__main__":
  app.run(main)
