"""Tokenizers and chat templates from local files (HF directory or GGUF).

Both kinds go through transformers' AutoTokenizer with no network: an HF
directory's tokenizer.json / tokenizer_config.json / chat_template.jinja, or a
GGUF file's `tokenizer.ggml.*` metadata, from which transformers builds a fast
(Rust `tokenizers`) tokenizer and takes the chat template
(`tokenizer.chat_template`). Every tokenizer we return pads on the left (the
prompt layout of docs/CONVENTIONS.md) and has a pad token.

Building a tokenizer from GGUF metadata takes 10-40 s on 2 CPU cores, so the
result is saved once as an HF tokenizer directory under
`$RLVR_JAX_CACHE/tokenizers/` (default `~/.cache/rlvr_jax`), keyed by the
file's path, size and modification time, and later loads take under a second.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable

import transformers

from rlvr_jax.models.config import ModelConfig

# Files of which at least one makes a directory an HF tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerFast:
  """Loads the tokenizer of an HF checkpoint directory or a .gguf file.

  Args:
    path: a directory with tokenizer files, or a .gguf file.

  Returns:
    A fast tokenizer with left padding, a pad token (its own, else the EOS
    token) and the checkpoint's chat template (None when it has none).

  Raises:
    FileNotFoundError: `path` does not exist or holds no tokenizer files.
    ValueError: the files cannot be loaded (the message names `path` and
      the cause), give no fast tokenizer, or one without pad and EOS tokens.
  """
  if path.endswith(".gguf"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    tokenizer = _load_or_explain(_gguf_tokenizer, path)
  elif os.path.isdir(path):
    if not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
      raise FileNotFoundError(f"No tokenizer file {list(_TOKENIZER_FILES)} in {path!r}.")
    tokenizer = _load_or_explain(
        lambda p: transformers.AutoTokenizer.from_pretrained(p, local_files_only=True), path)
  else:
    raise FileNotFoundError(
        f"Tokenizer path {path!r} is neither a directory nor a .gguf file.")
  if not isinstance(tokenizer, transformers.PreTrainedTokenizerFast):
    raise ValueError(
        f"{path}: got a {type(tokenizer).__name__}, not a fast tokenizer "
        "(tokenizer.json is needed).")
  if tokenizer.pad_token is None:
    if tokenizer.eos_token is None:
      raise ValueError(f"{path}: the tokenizer has neither a pad nor an EOS token.")
    tokenizer.pad_token = tokenizer.eos_token
  tokenizer.padding_side = "left"
  return tokenizer


def _load_or_explain(load: Callable[[str], transformers.PreTrainedTokenizerBase],
                     path: str) -> transformers.PreTrainedTokenizerBase:
  """`load(path)`, with any failure re-raised as a ValueError naming `path`.

  transformers and the Rust `tokenizers` library report a corrupt file with
  their own exception types (often a bare `Exception`) and without its name.
  """
  try:
    return load(path)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(f"{path}: the tokenizer files cannot be loaded: "
                     f"{type(e).__name__}: {e}") from e


def id_bound(tokenizer: transformers.PreTrainedTokenizerBase) -> int:
  """One more than the largest token id the tokenizer can produce.

  The largest id of its vocabulary, added tokens included (ids need not be
  contiguous, so this can exceed `len(tokenizer)`).
  """
  return max(max(tokenizer.get_vocab().values()) + 1, len(tokenizer))


def check_vocab_size(tokenizer: transformers.PreTrainedTokenizerBase, vocab_size: int, *,
                     origin: str) -> None:
  """Refuses a tokenizer whose ids reach past the model's embedding table.

  An id >= V would index outside the [V, D] embedding (JAX clamps or fills
  such gathers silently). A tokenizer smaller than V is fine: checkpoints pad
  V (e.g. Qwen's 151,936 rows for about 151,665 tokens).

  Args:
    tokenizer: the tokenizer.
    vocab_size: V, the model config's vocab_size.
    origin: the model source, for the message.

  Raises:
    ValueError: the tokenizer's ids reach V or beyond; names both numbers.
  """
  bound = id_bound(tokenizer)
  if bound > vocab_size:
    raise ValueError(
        f"{origin}: the tokenizer has ids up to {bound - 1} ({bound} ids) but the model's "
        f"vocab_size is {vocab_size}: token ids must be < vocab_size.")


def _gguf_cache_dir(path: str) -> str:
  stat = os.stat(path)
  key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
  root = os.environ.get("RLVR_JAX_CACHE", os.path.expanduser("~/.cache/rlvr_jax"))
  return os.path.join(root, "tokenizers", hashlib.sha256(key.encode()).hexdigest()[:16])


def _gguf_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """The GGUF file's tokenizer, through the on-disk cache (module docstring)."""
  cache = _gguf_cache_dir(path)
  if os.path.isfile(os.path.join(cache, "tokenizer.json")):
    # The class itself, not AutoTokenizer: the latter spends ~5 s resolving it.
    return transformers.PreTrainedTokenizerFast.from_pretrained(cache, local_files_only=True)
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(cache)) as tmp:
    tokenizer.save_pretrained(tmp)
    try:
      os.rename(tmp, cache)
    except OSError:  # another process saved it first
      pass
    else:
      os.makedirs(tmp)  # TemporaryDirectory removes it on exit
  return tokenizer


def eos_token_ids(tokenizer: transformers.PreTrainedTokenizerBase,
                  config: ModelConfig) -> tuple[int, ...]:
  """The token ids that end a generation.

  The model's EOS ids (config.json and generation_config.json, or the GGUF
  metadata: `config.eos_token_ids`) followed by the tokenizer's EOS token
  when it is not among them, without repeats. Chat checkpoints name their
  end-of-turn token (e.g. `<|im_end|>`) in one of the two.

  Args:
    tokenizer: the tokenizer.
    config: the model config.

  Returns:
    The ids, in that order.
  """
  ids = tuple(config.eos_token_ids)
  if tokenizer.eos_token_id is not None:
    ids += (int(tokenizer.eos_token_id),)
  return tuple(dict.fromkeys(ids))
