r"""Trains a policy with RLVR: `python -m experiments.train`.

  python -m experiments.train                                   # the default
  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/t
  python -m experiments.train --config.rl.group_size=16 --config.algo.delta=True

The run resumes from `--workdir` when it holds checkpoints of the same config
(a folder of another config is refused, naming the differing flags;
`--overwrite` clears it). When it evaluates before and after training, the
last line printed is one JSON object with `accuracy_before`, `accuracy_after`
(fractions) and `p_value` (McNemar). `--validate_only` runs every start-up
check (flags, data, tokenizer, prompt and context lengths; seconds, no model
weights) and exits. `--plan_only` compiles this exact run's programs for the
TPU slice `--plan_topology` with the planner (rlvr_jax/training/plan.py,
docs/planner.md; abstract params, no weights), prints its table and JSON line
and exits; it needs libtpu, and re-runs itself with `.venv-tpu/bin/python`
(`make setup-tpu`) when this interpreter lacks it:

  python -m experiments.train --config=experiments/configs/plan.py \
      --config.model.source=random:qwen3_8b --plan_only --plan_topology=v5e:8x8

`--workdir` may be a local folder or a bucket URI (gs://bucket/runs/x): the
checkpoints go through orbax, every other file through rlvr_jax/storage.py.

The console shows the progress bar, this project's log lines and every
warning; all log lines (libraries' INFO included) go to `<workdir>/train.log`
(for a gs:// workdir: to a local file, copied there when the run ends), the
run's config to `<workdir>/config.json`.
"""

import importlib.util
import json
import logging as std_logging
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

import rlvr_jax
from rlvr_jax import storage
from rlvr_jax.models import config as model_config_lib
from rlvr_jax.training import config_checks
from rlvr_jax.training import loop
from rlvr_jax.training import run_state

# This project's code: the `rlvr_jax` package and this folder.
OWN_DIRS = (os.path.dirname(rlvr_jax.__file__), os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's venv plus libtpu (`make setup-tpu`), for --plan_only.
TPU_PYTHON = os.path.join(ROOT, ".venv-tpu", "bin", "python")
# Set in the re-run through TPU_PYTHON, so that it never re-runs again.
_REEXEC_ENV = "RLVR_PLAN_REEXEC"

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Experiment config file; override fields with --config.<path>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics, plots.")
_VALIDATE_ONLY = flags.DEFINE_bool(
    "validate_only", False, "Run the start-up checks (no model weights load) and exit.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete --workdir's contents first (else a run of another "
    "config there is refused).")
_PLAN_ONLY = flags.DEFINE_bool(
    "plan_only", False, "Compile this run's programs for --plan_topology with the TPU "
    "planner (abstract params, no weights), print its table and JSON line, and exit.")
_PLAN_TOPOLOGY = flags.DEFINE_string(
    "plan_topology", "v5e:4x4", "TPU slice for --plan_only: v4:AxBxC, v5e:AxB, v5p:AxBxC, "
    "v6e:AxB.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.expanduser("~/.cache/rlvr_jax/jax"),
    "Persistent XLA compilation cache ('' = off); cuts recompiles across runs.")


class ConsoleFilter(std_logging.Filter):
  """Passes warnings and errors, and INFO lines of this project's own code.

  Own code is a file under the `rlvr_jax` package or the `experiments`
  folder, compared by absolute path: a checkout that is itself named
  `rlvr_jax` (the TPU workers') holds `.venv/.../site-packages`, whose
  libraries are not own code.

  Args:
    own_dirs: folders of this project's code (default: `OWN_DIRS`).
  """

  def __init__(self, own_dirs: tuple[str, ...] = OWN_DIRS):
    super().__init__()
    self._own = tuple(os.path.join(os.path.realpath(d), "") for d in own_dirs)
    self._is_own: dict[str, bool] = {}  # pathname -> under an own folder

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    if record.pathname not in self._is_own:
      self._is_own[record.pathname] = os.path.realpath(record.pathname).startswith(self._own)
    return self._is_own[record.pathname]


def quiet_console() -> None:
  """Console (absl's handler): only what `ConsoleFilter` passes."""
  logging.get_absl_handler().addFilter(ConsoleFilter())


def log_to_file(workdir: str) -> str:
  """Every log line (libraries' INFO included) to `<workdir>/train.log`; its path.

  For a URI workdir (gs://...), a local file (`copy_log` uploads it).
  """
  if storage.is_remote(workdir):
    folder = tempfile.mkdtemp(prefix="rlvr_train_log_")
  else:
    folder = workdir
    os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "train.log")
  handler = std_logging.FileHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  std_logging.getLogger().addHandler(handler)
  return path


def copy_log(log: str, workdir: str) -> None:
  """Copies the local log file of a URI workdir to `<workdir>/train.log` (process 0)."""
  if storage.is_remote(workdir) and jax.process_index() == 0:
    with open(log) as f:
      storage.write_text(storage.join(workdir, "train.log"), f.read())


def source_model_config(source: str) -> tuple[str, model_config_lib.ModelConfig]:
  """(name, ModelConfig) of `--config.model.source` from its config alone, no weights.

  'random:<preset>' gives the preset; an HF directory its config.json; an
  'org/name' hub model the config.json of its snapshot (only the JSON files
  are fetched); 'smollm2' or a .gguf file the GGUF header.
  """
  if source.startswith("random:"):
    preset = source[len("random:"):]
    return preset, model_config_lib.get_preset(preset)
  # pylint: disable=g-import-not-at-top  # model I/O only for the plan
  from rlvr_jax.models import gguf_import
  from rlvr_jax.models import hub
  from rlvr_jax.models import loader
  from rlvr_jax.models import weights
  # pylint: enable=g-import-not-at-top
  path = loader.default_gguf_path() if source == "smollm2" else source
  if hub.is_hub_name(source):
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    path = huggingface_hub.snapshot_download(
        source, cache_dir=hub.cache_dir(), local_files_only=hub.offline(),
        allow_patterns=["config.json", "generation_config.json"])
  if path.endswith(".gguf"):
    return source, gguf_import.config_from_gguf(gguf_import.read_metadata(path), path)
  return source, weights.config_from_hf(path)


def tpu_reexec_argv() -> list[str] | None:
  """The command that re-runs this one with libtpu, or None when this interpreter has it.

  Raises:
    app.UsageError: libtpu is missing here and in `TPU_PYTHON`.
  """
  if importlib.util.find_spec("libtpu") is not None:
    return None
  if os.environ.get(_REEXEC_ENV) or not os.path.exists(TPU_PYTHON):
    raise app.UsageError(
        f"--plan_only needs libtpu, which {sys.executable} lacks; `make setup-tpu` creates "
        f"{TPU_PYTHON} with it (or pip install 'jax[tpu]=={jax.__version__}').")
  return [TPU_PYTHON, "-m", "experiments.train", *sys.argv[1:]]


def plan_only(config: ml_collections.ConfigDict, topology: str) -> None:
  """Prints the planner's table and JSON line for the run of `config` on `topology`."""
  from rlvr_jax.training import plan as plan_lib  # pylint: disable=g-import-not-at-top
  name, model = source_model_config(config.model.source)
  text, out = plan_lib.plan(config, preset=name, topology=topology, model=model)
  print(text)
  print(plan_lib.to_json(out), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_console()
  if _PLAN_ONLY.value and not _VALIDATE_ONLY.value:
    command = tpu_reexec_argv()
    if command is not None:  # JAX on this CPU never starts libtpu; the planner's venv does.
      sys.stdout.flush()
      pythonpath = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=pythonpath, **{_REEXEC_ENV: "1"})
      os.execve(command[0], command, env)
  # Every check that can fail runs before JAX computes or the model loads.
  checked = config_checks.preflight(_CONFIG.value)
  if _VALIDATE_ONLY.value:
    print(f"config OK: longest prompt {checked.longest_prompt} tokens <= "
          f"max_prompt_len={checked.config.rl.max_prompt_len}; checker "
          f"{checked.config.reward.checker!r}", flush=True)
    return
  if _PLAN_ONLY.value:
    plan_only(checked.config, _PLAN_TOPOLOGY.value)
    return
  # Refuses another config's run folder (or clears it) before any other work.
  run_state.prepare_workdir(_WORKDIR.value, checked.config, overwrite=_OVERWRITE.value)
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  log = log_to_file(_WORKDIR.value)
  logging.info("config: %s; full log: %s", storage.join(_WORKDIR.value, "config.json"), log)
  try:
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  finally:
    copy_log(log, _WORKDIR.value)
  if jax.process_index() == 0 and summary:
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
