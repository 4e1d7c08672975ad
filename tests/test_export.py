"""`experiments.export` and RELEX's --hf_dir on a real trainer run.

A 2-step run of the tiny config (evaluations off) writes the trainer's own
checkpoint layout (each weight as {'value': array}); the exported folder must
load in transformers and give the logits of our decoder on the restored
parameters, and every bad flag must be named.
"""

import json
import os

from absl import app
from absl import flags
from absl.testing import flagsaver
from flax import nnx
from flax import traverse_util
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from experiments import export
from experiments import relex as relex_binary
from experiments.configs import tiny
from rlvr_jax import checkpoints
from rlvr_jax.models import decoder
from rlvr_jax.models import loader
from rlvr_jax.models import weights
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.training import loop
from test_model_parity import our_logits, torch_logits


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A 2-step tiny run: checkpoints 0, 1, 2 in the trainer's layout."""
  workdir = str(tmp_path_factory.mktemp("export_run"))
  c = tiny.get_config()
  c.rl.steps = 2
  c.train.eval_before = False
  c.train.eval_after = False
  c.train.tensorboard = False
  loop.train_and_evaluate(c, workdir)
  return workdir


@pytest.fixture(autouse=True)
def _parsed_flags():
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def model_config(run_dir: str) -> ModelConfig:
  with open(os.path.join(run_dir, "model_config.json")) as f:
    return ModelConfig.from_dict(json.load(f))


def restored_model(directory: str, config: ModelConfig, step: int) -> decoder.Decoder:
  """Our decoder with the params of a checkpoint, restored onto its own Param state."""
  model = decoder.create_model(config)
  nnx.update(model, checkpoints.restore_params(directory, step,
                                               target=nnx.state(model, nnx.Param)))
  return model


def flat_params(model: decoder.Decoder) -> dict[str, np.ndarray]:
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(pure, sep="/").items()}


def text_batch(tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Two chat prompts, the shorter one left-padded: tokens, mask [2, S]."""
  texts = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                         add_generation_prompt=True)
           for c in ("What is 17 * 23?", "Compute 2 + 2 and explain the answer briefly.")]
  batch = tokenizer(texts, padding=True, return_tensors="np")
  return batch["input_ids"], batch["attention_mask"].astype(bool)


def test_export_latest_step_loads_in_transformers_with_our_logits(run_dir, tmp_path):
  out = str(tmp_path / "hf")
  result = export.export_run(run_dir, out)
  assert result["step"] == 2 and result["tokenizer"]
  config = model_config(run_dir)
  ours = restored_model(run_dir, config, 2)
  ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(ref).__name__ == "LlamaForCausalLM"
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  run_tokenizer = loader.load_source_tokenizer("random:tiny")
  tokens, mask = text_batch(run_tokenizer)
  assert hf_tokenizer(["What is 17 * 23?"])["input_ids"] == run_tokenizer(
      ["What is 17 * 23?"])["input_ids"]
  assert not mask[:, 0].all()  # One row is left-padded.
  diff = np.abs(our_logits(ours, tokens, mask) - torch_logits(ref, tokens, mask))[mask].max()
  print(f"export of a trained run: max abs logit diff {diff:.2e}")
  assert diff < 1e-4
  # The exported tensors are step 2's exactly (and step 2 is not the base model).
  stored = safetensors.numpy.load_file(os.path.join(out, weights.SINGLE_FILE))
  trained = np.asarray(ours.embed.embedding[...])
  np.testing.assert_array_equal(stored["model.embed_tokens.weight"], trained)
  base = np.asarray(restored_model(run_dir, config, 0).embed.embedding[...])
  assert not np.array_equal(trained, base)


def test_export_binary_step_flag_and_errors(run_dir, tmp_path):
  out = str(tmp_path / "hf")
  with flagsaver.flagsaver(run_dir=run_dir, out=out, step=1):
    export.main(["export"])
  config = model_config(run_dir)
  reloaded, _ = weights.load_hf_checkpoint(out)
  step1 = restored_model(run_dir, config, 1)
  expected, actual = flat_params(step1), flat_params(reloaded)
  assert sorted(actual) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(actual[path], value, path)

  cases = [
      (dict(run_dir=str(tmp_path / "nowhere"), out=out),
       r"--run_dir=.*nowhere.* does not exist"),
      (dict(run_dir=str(tmp_path), out=out), r"--run_dir=.* has no checkpoints/"),
      (dict(run_dir=run_dir, out=str(tmp_path / "new"), step=7),
       r"--step=7: no such checkpoint .*available steps: \[0, 1, 2\]"),
      (dict(run_dir=run_dir, out=out), r"--out=.* is not empty; pass --overwrite"),
      (dict(run_dir=run_dir, out=run_dir, overwrite=True), r"--out=.* is --run_dir"),
      (dict(run_dir=None, out=out), r"--run_dir is required"),
  ]
  for values, message in cases:
    with flagsaver.flagsaver(**values), pytest.raises(app.UsageError, match=message):
      export.main(["export"])
  assert not os.path.exists(tmp_path / "new")

  # --overwrite replaces the step-1 export by step 2, stale shards removed.
  open(os.path.join(out, "model-00001-of-00002.safetensors"), "wb").close()
  with flagsaver.flagsaver(run_dir=run_dir, out=out, overwrite=True):
    export.main(["export"])
  assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == [
      weights.SINGLE_FILE]
  stored = safetensors.numpy.load_file(os.path.join(out, weights.SINGLE_FILE))
  step2 = flat_params(restored_model(run_dir, config, 2))["embed/embedding"]
  np.testing.assert_array_equal(stored["model.embed_tokens.weight"], step2)
  assert not np.array_equal(step2, expected["embed/embedding"])  # Not step 1's.


def test_relex_hf_dir_on_the_trainer_layout(run_dir, tmp_path):
  """experiments.relex --hf_dir on real trainer checkpoints (window 1..2, target 3)."""
  out, hf_dir = str(tmp_path / "relex"), str(tmp_path / "relex_hf")
  with flagsaver.flagsaver(run_dir=run_dir, window="1:2", target_step="3", output_dir=out,
                           hf_dir=hf_dir):
    relex_binary.main(["relex"])
  config = model_config(run_dir)
  extrapolated = restored_model(out, config, 3)
  exported, exported_config = weights.load_hf_checkpoint(os.path.join(hf_dir, "3"))
  assert exported_config.replace(pad_token_id=config.pad_token_id) == config
  expected, actual = flat_params(extrapolated), flat_params(exported)
  assert sorted(actual) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(actual[path], value, path)
