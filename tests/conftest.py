"""Test set-up: 8 simulated CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, so this file sets it
at import time; every test then sees `jax.devices()` of length 8 and may build
a mesh over any subset of them.
"""

import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture
def strict_rank():
  """Makes implicit rank promotion an error, so [B] never broadcasts to [B, T]."""
  with jax.numpy_rank_promotion("raise"):
    yield


@pytest.fixture
def run_evaluate(capsys):
  """Runs `experiments.evaluate`'s main with the given flags; returns its printed metrics."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import evaluate as evaluate_binary  # pylint: disable=g-import-not-at-top

  def run(*flag_args: str) -> dict:
    argv = ["evaluate", *flag_args]
    flags.FLAGS(argv)
    try:
      evaluate_binary.main(argv[:1])
    finally:
      flags.FLAGS.unparse_flags()
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

  return run
