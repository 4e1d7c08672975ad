"""Models by name: 'org/name' loads from a Hugging Face cache the test builds."""

import numpy as np
import pytest

from rlvr_jax.models import hub
from rlvr_jax.models import loader
from test_model_parity import our_logits, padded_batch, tiny_torch_model, torch_logits
from test_weights import tiny_tokenizer

_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_with_tiny_llama(hf_home) -> object:
  """HF_HOME/hub/models--org--tiny-llama/{refs/main, snapshots/<commit>/...}."""
  repo = hf_home / "hub" / "models--org--tiny-llama"
  snapshot = repo / "snapshots" / _COMMIT
  torch_model = tiny_torch_model("llama")
  torch_model.save_pretrained(snapshot)
  tiny_tokenizer().save_pretrained(snapshot)
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(_COMMIT)
  return torch_model


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  return tmp_path


def test_is_hub_name(tmp_path, monkeypatch):
  assert hub.is_hub_name("Qwen/Qwen3-1.7B")
  assert hub.is_hub_name("meta-llama/Llama-3.1-8B")
  assert not hub.is_hub_name("random:tiny")
  assert not hub.is_hub_name("smollm2")
  assert not hub.is_hub_name("model.gguf")
  assert not hub.is_hub_name("/abs/dir/name")
  local = tmp_path / "org"
  (local / "name").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  assert not hub.is_hub_name("org/name")  # an existing local directory wins


def test_model_by_name_loads_from_the_offline_cache(offline_cache):
  torch_model = _cache_with_tiny_llama(offline_cache)
  assert hub.snapshot_dir("org/tiny-llama") == str(
      offline_cache / "hub" / "models--org--tiny-llama" / "snapshots" / _COMMIT)
  model, tokenizer, config = loader.load_model("org/tiny-llama")
  assert config.num_layers == torch_model.config.num_hidden_layers
  assert tokenizer.eos_token == "</s>"
  tokens, mask = padded_batch(config.vocab_size)
  np.testing.assert_allclose(our_logits(model, tokens, mask),
                             torch_logits(torch_model, tokens, mask), atol=1e-4, rtol=1e-4)


def test_missing_model_names_the_flag_and_the_cache(offline_cache):
  with pytest.raises(FileNotFoundError, match=r"--config.model.source='org/absent'.*"
                     + str(offline_cache / "hub")):
    loader.load_model("org/absent")
