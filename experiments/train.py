r"""Trains a policy with RLVR: `python -m experiments.train`.

  python -m experiments.train                                   # the default
  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/t
  python -m experiments.train --config.rl.group_size=16 --config.algo.delta=True

The run resumes from `--workdir` when it holds checkpoints. When it evaluates
before and after training, the last line printed is one JSON object with
`accuracy_before`, `accuracy_after` (fractions) and `p_value` (McNemar).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from rlvr_jax.evaluation import evaluate
from rlvr_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Experiment config file; override fields with --config.<path>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Checkpoints, metrics, plots.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.expanduser("~/.cache/rlvr_jax/jax"),
    "Persistent XLA compilation cache ('' = off); cuts recompiles across runs.")


def evaluate_checkpoint(params_dir_or_step: str,
                        config: ml_collections.ConfigDict) -> dict[str, float]:
  """Greedy held-out accuracy of `<run>/checkpoints/<step>[/params]` (RELEX --eval).

  The trainer's held-out evaluation for `config` on those parameters; see
  `rlvr_jax.evaluation.evaluate.evaluate_trainer_checkpoint`.
  """
  return evaluate.evaluate_trainer_checkpoint(params_dir_or_step, config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  logging.info("config:\n%s", _CONFIG.value)
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0 and summary:
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
