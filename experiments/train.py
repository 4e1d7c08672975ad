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
weights) and exits.

The console shows the progress bar, this project's log lines and every
warning; all log lines (libraries' INFO included) go to `<workdir>/train.log`,
the run's config to `<workdir>/config.json`.
"""

import json
import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import rlvr_jax
from rlvr_jax.training import config_checks
from rlvr_jax.training import loop
from rlvr_jax.training import run_state

# This project's code: the `rlvr_jax` package and this folder.
OWN_DIRS = (os.path.dirname(rlvr_jax.__file__), os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Experiment config file; override fields with --config.<path>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics, plots.")
_VALIDATE_ONLY = flags.DEFINE_bool(
    "validate_only", False, "Run the start-up checks (no model weights load) and exit.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Delete --workdir's contents first (else a run of another "
    "config there is refused).")
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
  """Every log line (libraries' INFO included) to `<workdir>/train.log`; its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "train.log")
  handler = std_logging.FileHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  std_logging.getLogger().addHandler(handler)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_console()
  # Every check that can fail runs before JAX computes or the model loads.
  checked = config_checks.preflight(_CONFIG.value)
  if _VALIDATE_ONLY.value:
    print(f"config OK: longest prompt {checked.longest_prompt} tokens <= "
          f"max_prompt_len={checked.config.rl.max_prompt_len}; checker "
          f"{checked.config.reward.checker!r}", flush=True)
    return
  # Refuses another config's run folder (or clears it) before any other work.
  run_state.prepare_workdir(_WORKDIR.value, checked.config, overwrite=_OVERWRITE.value)
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  log = log_to_file(_WORKDIR.value)
  logging.info("config: %s; full log: %s", os.path.join(_WORKDIR.value, "config.json"), log)
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0 and summary:
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
