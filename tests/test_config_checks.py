"""Start-up checks (rlvr_jax.training.config_checks): preflight runs once per config.

The binary (experiments/train.py) preflights a config and the trainer
preflights the same config again; the second call must reuse the first's
result instead of rebuilding the data sources and re-reading the model file.
"""

import pytest

from experiments.configs import tiny
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.models import gguf_import
from rlvr_jax.training import config_checks


@pytest.fixture
def counted(monkeypatch):
  """Counts the calls of the two costly steps of preflight (sources, model file)."""
  calls = {"sources": 0, "gguf": 0}

  def count(name, fn):
    def wrapper(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setattr(data_iterator, "make_sources",
                      count("sources", data_iterator.make_sources))
  monkeypatch.setattr(gguf_import, "read_metadata", count("gguf", gguf_import.read_metadata))
  monkeypatch.setattr(config_checks, "_last_preflight", None)
  return calls


def _config():
  c = tiny.get_config()
  c.model.source = "smollm2"  # the GGUF file: its header is read
  c.data.eval_size = 8
  return c


def test_second_preflight_of_the_same_config_reuses_the_first(counted):
  first = config_checks.preflight(_config())
  assert counted == {"sources": 1, "gguf": 1}
  second = config_checks.preflight(_config())  # an equal config, another object
  assert counted == {"sources": 1, "gguf": 1}
  assert second.sources is first.sources
  assert (second.longest_prompt, second.context_length) == (
      first.longest_prompt, first.context_length)
  assert second.config.to_dict() == first.config.to_dict()
  # The config is a copy: a caller that edits its result leaves the next one intact.
  second.config.rl.steps = 99
  assert config_checks.preflight(_config()).config.rl.steps == first.config.rl.steps
  # SmolLM2's 8192 positions, from the GGUF header.
  assert first.context_length == 8192


def test_another_config_and_a_failed_one_are_checked_again(counted):
  config_checks.preflight(_config())
  other = _config()
  other.data.eval_size = 4
  config_checks.preflight(other)
  assert counted == {"sources": 2, "gguf": 2}
  bad = _config()
  bad.rl.max_prompt_len = 8
  for expected in (3, 4):  # a failure is never remembered
    with pytest.raises(ValueError, match=r"--config\.rl\.max_prompt_len=8: a rendered prompt"):
      config_checks.preflight(bad)
    assert counted["sources"] == expected
