"""Models by name: 'org/name' -> a local Hugging Face snapshot directory.

`--config.model.source=Qwen/Qwen3-1.7B` resolves through `huggingface_hub`:
with the hub reachable (and HF_HUB_OFFLINE unset) `snapshot_download` fetches
what is missing (config, safetensors, tokenizer files) into the cache; when
HF_HUB_OFFLINE is set, or the download fails, the cached snapshot is used
(`local_files_only=True`). The cache is HF_HUB_CACHE, else HF_HOME/hub, else
huggingface_hub's default, read at call time (not at import).
"""

from __future__ import annotations

import os
import re

from absl import logging
import huggingface_hub
from huggingface_hub import errors as hub_errors

# Files the checkpoint importer and tokenizer read; nothing else is fetched.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken")
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FALSE = ("", "0", "false", "no", "off")


def is_hub_name(source: str) -> bool:
  """True for 'org/name' that is not an existing local path."""
  return bool(_NAME.match(source)) and not os.path.exists(source)


def cache_dir() -> str | None:
  """HF_HUB_CACHE, else HF_HOME/hub, else None (huggingface_hub's default)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _FALSE


def snapshot_dir(repo_id: str, *, revision: str | None = None) -> str:
  """The local directory of `repo_id`'s snapshot, downloading it when online.

  Args:
    repo_id: 'org/name' on the Hugging Face hub.
    revision: branch, tag or commit; None = 'main'.

  Returns:
    The snapshot directory (config.json, *.safetensors, tokenizer files).

  Raises:
    FileNotFoundError: offline (or the hub unreachable) and not in the cache;
      the message names `--config.model.source` and the cache directory.
  """
  kwargs = dict(revision=revision, cache_dir=cache_dir(), allow_patterns=list(ALLOW_PATTERNS))
  if not offline():
    try:
      return huggingface_hub.snapshot_download(repo_id, **kwargs)
    except (hub_errors.HfHubHTTPError, hub_errors.LocalEntryNotFoundError, OSError) as e:
      logging.warning("download of %s failed (%s); trying the local cache", repo_id, e)
  try:
    return huggingface_hub.snapshot_download(repo_id, local_files_only=True, **kwargs)
  except (hub_errors.LocalEntryNotFoundError, hub_errors.HFValidationError) as e:
    where = cache_dir() or "the default Hugging Face cache"
    raise FileNotFoundError(
        f"--config.model.source={repo_id!r}: not in {where} and the hub is "
        f"{'off (HF_HUB_OFFLINE)' if offline() else 'unreachable'}; download it with "
        f"`huggingface-cli download {repo_id}` on a machine with network.") from e
