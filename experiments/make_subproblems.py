r"""SCRL chains from an LLM: `python -m experiments.make_subproblems`.

For data with no procedural rule and no calculator annotations (METHODS.md 3):
each record gets K progressive subproblems as JSON from a model, validated,
with subproblem K forced to the record's own problem and answer
(`rlvr_jax.data.llm_subproblems`). The output is a JSONL of records that the
trainer reads with `--config.data.source=jsonl --config.data.path=<output>`
(the `default` column preset keeps `subproblems`).

  # any model our loader reads (SmolLM2 here; an HF dir or .gguf works too)
  python -m experiments.make_subproblems --input=train.jsonl \
      --output=train_scrl.jsonl --backend=local --model=smollm2
  # an OpenAI-compatible endpoint (vLLM, OpenAI, ...)
  OPENAI_API_KEY=... python -m experiments.make_subproblems \
      --input=math.parquet --columns=math --output=math_scrl.jsonl \
      --backend=openai --url=https://api.openai.com/v1 --model_name=gpt-4o

Input: `{problem, answer}` rows with an optional `id`, `reference_solution`
or `solution` (the default mapping), or any file `rlvr_jax.data.files` reads
with `--columns`. Outputs: `<output>` (kept records), `<stem>.dropped.jsonl`
(dropped items with their reason and reply) and `<stem>.summary.json` (the
counts, also printed as the last line). Rerunning the same command resumes:
records already in either JSONL are skipped.
"""

import os

from absl import app
from absl import flags
from absl import logging

from rlvr_jax.tools import llm_subproblems
from rlvr_jax.rewards import math_checker

_INPUT = flags.DEFINE_string("input", None, "JSONL or parquet input file.")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL of kept records.")
_COLUMNS = flags.DEFINE_string(
    "columns", "", "Column mapping preset or 'src:dst,...' (data/files.py); ''"
    " reads {id, problem, answer, reference_solution, solution}.")
_K = flags.DEFINE_integer("k", 4, "K, subproblems per problem (>= 2).")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "openai"],
                             "local: a model our sampler runs; openai: an "
                             "OpenAI-compatible HTTP endpoint.")
_MODEL = flags.DEFINE_string(
    "model", "smollm2", "local: 'smollm2', 'random:<preset>', HF dir or .gguf.")
_MAX_PROMPT_LEN = flags.DEFINE_integer(
    "max_prompt_len", 2048, "local: longer prompts are dropped.")
_SEED = flags.DEFINE_integer("seed", 0, "local: sampling seed.")
_URL = flags.DEFINE_string(
    "url", "", "openai: API base (http://host:8000/v1) or the full "
    ".../chat/completions URL.")
_MODEL_NAME = flags.DEFINE_string("model_name", "",
                                  "openai: the request's `model`.")
_API_KEY_ENV = flags.DEFINE_string(
    "api_key_env", "OPENAI_API_KEY",
    "openai: environment variable holding the API key; '' sends none.")
_REQUEST_TIMEOUT_S = flags.DEFINE_float("request_timeout_s", 120.0,
                                        "openai: per-request timeout.")
_RETRIES = flags.DEFINE_integer(
    "retries", 3, "openai: further attempts after a transient error.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 8,
    "Messages per generate call (local) or requests in flight (openai).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 1024,
                                       "Longest reply in tokens.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0,
                                  "Sampling temperature; 0 is greedy.")
_CHECKER = flags.DEFINE_enum(
    "checker", "math_verify", ["math_verify", "number"],
    "How a ground truth must parse: math-verify (in a process pool, as the "
    "trainer checks answers) or a plain integer/decimal.")
_WORKERS = flags.DEFINE_integer("workers", 2, "math_verify worker processes.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 5.0,
                                "math_verify wall-clock limit per check.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use the first N input records "
                              "(0: all).")


def _backend() -> llm_subproblems.Backend:
  """The backend the flags describe."""
  if _BACKEND.value == "local":
    return llm_subproblems.LocalBackend(
        _MODEL.value, max_new_tokens=_MAX_NEW_TOKENS.value,
        temperature=_TEMPERATURE.value, max_prompt_len=_MAX_PROMPT_LEN.value,
        seed=_SEED.value)
  api_key = None
  if _API_KEY_ENV.value:
    api_key = os.environ.get(_API_KEY_ENV.value)
    if api_key is None:
      raise ValueError(f"--api_key_env={_API_KEY_ENV.value!r}: that environment"
                       " variable is not set ('' sends no key)")
  return llm_subproblems.OpenAIBackend(
      url=_URL.value, model_name=_MODEL_NAME.value, api_key=api_key,
      max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
      concurrency=_BATCH_SIZE.value, timeout_s=_REQUEST_TIMEOUT_S.value,
      retries=_RETRIES.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  backend = _backend()
  kwargs = dict(input_path=_INPUT.value, output=_OUTPUT.value,
                columns=_COLUMNS.value, k=_K.value, backend=backend,
                batch_size=_BATCH_SIZE.value, limit=_LIMIT.value)
  if _CHECKER.value == "number":
    llm_subproblems.run_file(parses=llm_subproblems.number_parses, **kwargs)
    return
  with math_checker.MathChecker(
      num_workers=_WORKERS.value, timeout_s=_TIMEOUT_S.value,
      warmup=llm_subproblems.math_verify_warmup()) as pool:
    logging.info("math-verify pool of %d workers started", _WORKERS.value)
    llm_subproblems.run_file(parses=llm_subproblems.math_verify_parses(pool),
                             **kwargs)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
