"""Tokenizers from the SmolLM2 GGUF metadata and from an HF directory.

The GGUF tokenizer is checked against the file's own metadata read with the
gguf package (vocabulary, special ids, chat template), against GPT-2 byte-level
decoding written here, and against hand-written expectations (digits split
one by one, the ChatML render). The HF-directory tokenizer written from it
must give the same ids and renders as transformers' AutoTokenizer on the same
files, and as the GGUF tokenizer.
"""

import jax
import numpy as np
import pytest
import transformers

from rlvr_jax import sharding
from rlvr_jax.models import gguf_import
from rlvr_jax.models import loader
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models.config import get_preset
from rlvr_jax.models.decoder import create_model

TEXTS = [
    "Hello, world! 12345 + 678 = 13023.",
    "Unicode: café, naïve, Straße, 日本語, Ελληνικά, emoji 🙂 and 👍🏽.",
    r"LaTeX: $\frac{a}{b} + \sqrt{x^2+1} = \int_0^1 f(t)\,dt$ and \boxed{42}",
    "  leading spaces,\ttabs\nand\n\nnewlines   trailing  ",
    "Price: $3.50 x 1,000 = $3,500.00 (0.35%)",
]
CHAT = [{"role": "user", "content": "What is 2+2?"}]
# SmolLM2's template adds its default system turn when there is none.
CHAT_RENDER = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
               "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def gguf_path():
  return loader.default_gguf_path()


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
  return tokenizer_lib.load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def metadata(gguf_path):
  """The GGUF file's tokenizer metadata, read with the gguf package."""
  reader = gguf_import.GGUFReader(gguf_path)
  return {k: reader.fields[k].contents() for k in (
      "tokenizer.ggml.tokens", "tokenizer.chat_template", "tokenizer.ggml.bos_token_id",
      "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id")}


def gpt2_byte_decoder() -> dict[str, int]:
  """GPT-2's byte-level alphabet: printable bytes map to themselves, the other
  bytes to chr(256 + k) in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in chars]
  chars.update({b: chr(256 + k) for k, b in enumerate(others)})
  return {c: b for b, c in chars.items()}


def test_special_tokens_and_left_padding(tokenizer, metadata):
  assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
  assert tokenizer.bos_token_id == metadata["tokenizer.ggml.bos_token_id"] == 1
  assert tokenizer.eos_token_id == metadata["tokenizer.ggml.eos_token_id"] == 2
  assert tokenizer.pad_token_id == metadata["tokenizer.ggml.padding_token_id"] == 2
  assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
  batch = tokenizer(["1", "1 2 3"], padding=True)
  # "1 2 3" is 1, Ġ, 2, Ġ, 3 (5 tokens); "1" gets 4 pads on the left.
  assert batch["attention_mask"] == [[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
  assert batch["input_ids"][0][:4] == [2, 2, 2, 2]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_vocabulary_from_metadata(tokenizer, metadata, text):
  ids = tokenizer(text, add_special_tokens=True)["input_ids"]
  assert tokenizer.decode(ids) == text
  pieces = tokenizer.convert_ids_to_tokens(ids)
  vocab = metadata["tokenizer.ggml.tokens"]
  assert pieces == [vocab[i] for i in ids]
  decoder = gpt2_byte_decoder()
  assert bytes(decoder[c] for piece in pieces for c in piece) == text.encode("utf-8")


def test_digits_are_split_one_by_one(tokenizer):
  assert tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]
  assert tokenizer.tokenize("x=2024") == ["x", "=", "2", "0", "2", "4"]


def test_chat_template_from_metadata(tokenizer, metadata):
  assert tokenizer.chat_template == metadata["tokenizer.chat_template"]
  rendered = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  assert rendered == CHAT_RENDER
  ids = tokenizer.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=True,
                                      return_dict=False)
  assert ids == tokenizer(CHAT_RENDER)["input_ids"]
  assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> first, two <|im_end|>.


def test_hf_directory_matches_transformers_and_gguf(tokenizer, tmp_path):
  tokenizer.save_pretrained(tmp_path)
  ours = tokenizer_lib.load_tokenizer(str(tmp_path))
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  for text in TEXTS:
    ids = tokenizer(text)["input_ids"]
    assert ours(text)["input_ids"] == ref(text)["input_ids"] == ids, text
    assert ours.decode(ids) == ref.decode(ids) == text
  renders = [t.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
             for t in (ours, ref)]
  assert renders == [CHAT_RENDER, CHAT_RENDER]
  assert ours.padding_side == "left" and ours.pad_token_id == 2


def test_eos_token_ids(tokenizer):
  smollm2 = get_preset("smollm2_135m")  # eos_token_ids=(2,): the tokenizer's too.
  assert tokenizer_lib.eos_token_ids(tokenizer, smollm2) == (2,)
  qwen = get_preset("qwen3_0_6b")  # (151643,), then the tokenizer's 2.
  assert tokenizer_lib.eos_token_ids(tokenizer, qwen) == (151643, 2)


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.gguf"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "missing.gguf"))
  with pytest.raises(FileNotFoundError, match="No tokenizer file"):
    tokenizer_lib.load_tokenizer(str(tmp_path))


def test_random_preset_uses_smollm2_tokenizer_ids(tokenizer, gguf_path, monkeypatch):
  def cached(path):
    assert path == gguf_path
    return tokenizer

  monkeypatch.setattr(tokenizer_lib, "load_tokenizer", cached)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  model, tok, config = loader.load_model("random:tiny", mesh=mesh, remat="full")
  assert tok is tokenizer
  assert (config.bos_token_id, config.eos_token_ids, config.pad_token_id) == (1, (2,), 2)
  assert config.remat == "full" and config.num_layers == get_preset("tiny").num_layers
  # Created in its sharding, with the eager init's values (to an ulp: XLA
  # fuses the jitted normal sampling differently).
  eager = create_model(config)
  placed = model.layers.mlp.up.kernel[...]
  np.testing.assert_allclose(np.asarray(placed), np.asarray(eager.layers.mlp.up.kernel[...]),
                             rtol=1e-6, atol=1e-9)
  # up [L, D, F] = [4, 256, 512]: D over fsdp, F over tensor.
  assert placed.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  with pytest.raises(ValueError, match="Unknown model preset 'nope'"):
    loader.load_model("random:nope")



def test_tokenizer_must_fit_the_model_vocabulary(tmp_path):
  from test_model_parity import _COMMON  # pylint: disable=g-import-not-at-top
  from test_weights import tiny_tokenizer  # pylint: disable=g-import-not-at-top
  words = tiny_tokenizer()  # 11 words, ids 0..10.
  # A Llama checkpoint with V rows and the 11-word tokenizer: V = 96 (a
  # padded vocabulary) and V = 11 (ids 0..10 all < 11) load; V = 10 would
  # leave id 10 outside the embedding.
  for vocab_size in (96, 11, 10):
    folder = tmp_path / str(vocab_size)
    config = transformers.LlamaConfig(**dict(_COMMON, vocab_size=vocab_size))
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    words.save_pretrained(folder)
    if vocab_size == 10:
      with pytest.raises(ValueError, match=r"ids up to 10 \(11 ids\) but the model's "
                                           r"vocab_size is 10"):
        loader.load_model(str(folder))
    else:
      model, tok, loaded = loader.load_model(str(folder))
      assert loaded.vocab_size == vocab_size and len(tok) == 11
      assert model.embed.embedding[...].shape == (vocab_size, 64)
  assert tokenizer_lib.id_bound(words) == 11
  words.add_tokens(["<extra>"])  # Added tokens count: id 11.
  assert tokenizer_lib.id_bound(words) == 12
