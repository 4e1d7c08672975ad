r"""Evaluates a checkpoint on benchmarks: `python -m experiments.evaluate`.

pass@k (unbiased, k = 1, 2, 4, ... n), avg@n and maj@n per benchmark
(METHODS.md 5), printed as a table and saved to --results_dir with a
per-problem JSONL of every sample and its verdict
(`rlvr_jax.evaluation.evaluate`).

  # A trainer run's latest checkpoint, 8 samples per problem, on a JSONL
  # benchmark and 64 held-out basic_arithmetic problems:
  python -m experiments.evaluate --checkpoint=runs/default \
      --benchmarks=data/math500.jsonl,basic_arithmetic --size=64 --n=8 \
      --template=few_shot --few_shot=2 --few_shot_file=data/train.jsonl
  # The base model, greedy (MATH convention in RELEX):
  python -m experiments.evaluate --checkpoint=smollm2 --benchmarks=basic_arithmetic \
      --greedy --n=1
  # AIME-style avg@32 at T=1.0, top-p 0.7 (DAPO convention):
  python -m experiments.evaluate --checkpoint=hf_dir --benchmarks=aime24.jsonl \
      --n=32 --temperature=1.0 --top_p=0.7 --max_new_tokens=4096

--checkpoint is a trainer workdir (orbax, with --step; the architecture comes
from <workdir>/model_config.json and the tokenizer from --tokenizer, the run's
model source), an HF directory, a .gguf file, 'smollm2' or 'random:<preset>'.
The last line printed is the flat metric dict as one JSON object. Set
JAX_COMPILATION_CACHE_DIR to reuse compiled code across runs.
"""

import json
from typing import Sequence

from absl import app
from absl import flags

from rlvr_jax import sharding
from rlvr_jax.data import prompts
from rlvr_jax.evaluation import evaluate

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Trainer workdir, HF directory, .gguf, 'smollm2' or 'random:<preset>'.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: latest).")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", "", "Tokenizer of a workdir: the run's model.source ('' = 'smollm2').")
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks", None, "JSONL/parquet files {problem, answer} (name = file stem) and/or "
    "reasoning-gym task names (held-out split).")
_SIZE = flags.DEFINE_integer("size", 64, "Problems per reasoning-gym benchmark.")
_TASK_KWARGS = flags.DEFINE_string(
    "task_kwargs", "{}", "JSON dict of reasoning-gym config fields for the task benchmarks.")
_COLUMNS = flags.DEFINE_string("columns", "", "Column mapping of the files (data/files.py).")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N rows of each file (0 = all).")
_FILE_CHECKER = flags.DEFINE_enum(
    "file_checker", "math_verify", evaluate.FILE_CHECKERS, "Answer checker of file benchmarks.")
_N = flags.DEFINE_integer("n", 1, "Samples per problem; pass@k for k = 1, 2, 4, ... n.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k sampling (0 = off).")
_GREEDY = flags.DEFINE_bool("greedy", False, "Argmax decoding (needs --n=1).")
_STOP_STRINGS = flags.DEFINE_list(
    "stop_strings", ["\nQuestion:"],
    "A response ends with the first of these (default: the plain/few-shot templates' next "
    "question, as in the trainer's configs); --stop_strings= for none.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed; also the data seed of the tasks.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 512, "Longest response in tokens.")
_MAX_PROMPT_LEN = flags.DEFINE_integer("max_prompt_len", 1024, "Longest prompt in tokens.")
_TEMPLATE = flags.DEFINE_enum("template", "chat", prompts.TEMPLATES, "Prompt template.")
_INSTRUCTION = flags.DEFINE_string(
    "instruction", prompts.BOXED_INSTRUCTION, "Answer-format instruction after the problem.")
_SYSTEM_PROMPT = flags.DEFINE_string("system_prompt", "", "System prompt ('' = default).")
_FEW_SHOT = flags.DEFINE_integer("few_shot", 0, "Worked examples before each problem.")
_FEW_SHOT_FILE = flags.DEFINE_string(
    "few_shot_file", "", "File the examples of file benchmarks are drawn from.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Prompts per sampler call.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Answer-checking worker processes.")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 5.0, "Wall-clock limit of one answer check.")
# Not `output_dir`: experiments.relex defines it, and flag names are global.
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", "runs/eval", "Where metrics.json, results.md and the samples go.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for flag in (_CHECKPOINT, _BENCHMARKS):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required.")
  try:
    task_kwargs = json.loads(_TASK_KWARGS.value)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--task_kwargs={_TASK_KWARGS.value!r} is not JSON: {e}") from e
  if not isinstance(task_kwargs, dict):
    raise app.UsageError(f"--task_kwargs={_TASK_KWARGS.value!r} must be a JSON object.")
  sampling = evaluate.Sampling(
      num_samples=_N.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
      top_k=_TOP_K.value, greedy=_GREEDY.value, seed=_SEED.value,
      stop_strings=tuple(_STOP_STRINGS.value))
  benchmarks = evaluate.load_benchmarks(
      _BENCHMARKS.value, size=_SIZE.value, seed=_SEED.value, task_kwargs=task_kwargs,
      columns=_COLUMNS.value, limit=_LIMIT.value, file_checker=_FILE_CHECKER.value,
      few_shot=_FEW_SHOT.value, few_shot_file=_FEW_SHOT_FILE.value)
  mesh = sharding.make_mesh()
  model, tokenizer, description = evaluate.load_for_evaluation(
      _CHECKPOINT.value, step=_STEP.value, tokenizer=_TOKENIZER.value, mesh=mesh)
  results = evaluate.evaluate_model(
      model, tokenizer, benchmarks, sampling=sampling, max_prompt_len=_MAX_PROMPT_LEN.value,
      max_new_tokens=_MAX_NEW_TOKENS.value, template=_TEMPLATE.value,
      instruction=_INSTRUCTION.value, system_prompt=_SYSTEM_PROMPT.value,
      batch_size=_BATCH_SIZE.value, mesh=mesh, workers=_WORKERS.value,
      timeout_s=_TIMEOUT_S.value)
  settings = {flag.name: flag.value for flag in (
      _BENCHMARKS, _SIZE, _COLUMNS, _LIMIT, _FILE_CHECKER, _N, _TEMPERATURE, _TOP_P, _TOP_K,
      _GREEDY, _STOP_STRINGS, _SEED, _MAX_NEW_TOKENS, _MAX_PROMPT_LEN, _TEMPLATE,
      _INSTRUCTION, _SYSTEM_PROMPT, _FEW_SHOT, _FEW_SHOT_FILE, _BATCH_SIZE)}
  settings.update(checkpoint=description, task_kwargs=task_kwargs)
  paths = evaluate.write_results(results, _RESULTS_DIR.value, settings=settings)
  print(evaluate.format_table(results))
  print(f"wrote {', '.join(paths.values())}")
  print(json.dumps(evaluate.all_metrics(results)), flush=True)


if __name__ == "__main__":
  app.run(main)
