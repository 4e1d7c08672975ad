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

  # A run folder measured as the run measured itself: its held-out set,
  # greedy, n = 1 (`heldout/pass@1` equals the run's eval_after.json accuracy):
  python -m experiments.evaluate --checkpoint=runs/default

--checkpoint is a trainer workdir (orbax, with --step; a local folder or a
URI such as gs://bucket/run, read through `rlvr_jax.storage`), an HF
directory, a .gguf file, 'smollm2' or 'random:<preset>'. A workdir is evaluated with the
run's own settings (`evaluation.evaluate.load_for_evaluation` and
`run_settings`): the model and tokenizer of its config.json's model.source
with its dtypes, and as the defaults of the flags below its template,
instruction, system prompt, few-shot count, task kwargs, data seed, sampling
temperature / top-p / top-k, stop strings, evaluation lengths and batch size;
--benchmarks defaults to 'heldout', the run's held-out set evaluated exactly
as the trainer does (greedy, n = 1). A flag given on the command line
overrides the run's value. --results_dir may be a gs:// URI too; only
process 0 writes it. The last line printed is the flat metric dict as
one JSON object. Set JAX_COMPILATION_CACHE_DIR to reuse compiled code across
runs.
"""

import json
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import ml_collections

from rlvr_jax import sharding
from rlvr_jax.data import prompts
from rlvr_jax.evaluation import evaluate

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Trainer workdir, HF directory, .gguf, 'smollm2' or 'random:<preset>'.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: latest).")
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks", None, "JSONL/parquet files {problem, answer} (name = file stem), "
    "reasoning-gym task names (held-out split) and/or 'heldout' (a run folder's held-out "
    "set, greedy, n = 1; the default for a run folder).")
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


def _values(run_config: ml_collections.ConfigDict | None) -> dict[str, Any]:
  """Flag name -> value: the flags given, else the run's settings, else the defaults."""
  defaults = evaluate.run_settings(run_config) if run_config is not None else {}
  values = {}
  for name in ("benchmarks", "size", "task_kwargs", "columns", "limit", "file_checker", "n",
               "temperature", "top_p", "top_k", "greedy", "stop_strings", "seed",
               "max_new_tokens", "max_prompt_len", "template", "instruction",
               "system_prompt", "few_shot", "few_shot_file", "batch_size", "workers",
               "timeout_s"):
    flag = flags.FLAGS[name]
    values[name] = flag.value if flag.present or name not in defaults else defaults[name]
  if flags.FLAGS["task_kwargs"].present or "task_kwargs" not in defaults:
    try:
      values["task_kwargs"] = json.loads(_TASK_KWARGS.value)
    except json.JSONDecodeError as e:
      raise app.UsageError(f"--task_kwargs={_TASK_KWARGS.value!r} is not JSON: {e}") from e
  if not isinstance(values["task_kwargs"], dict):
    raise app.UsageError(f"--task_kwargs={_TASK_KWARGS.value!r} must be a JSON object.")
  if not values["benchmarks"]:
    raise app.UsageError("--benchmarks is required (it defaults to 'heldout' only for a "
                         "run folder).")
  return values


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required.")
  run_config = None
  if evaluate.is_run_dir(_CHECKPOINT.value):
    run_config = evaluate.read_run_config(_CHECKPOINT.value)
  v = _values(run_config)
  if evaluate.HELDOUT in v["benchmarks"] and run_config is None:
    raise app.UsageError(f"--benchmarks={evaluate.HELDOUT} needs a run folder as "
                         f"--checkpoint; {_CHECKPOINT.value!r} is not one.")
  sampling = evaluate.Sampling(
      num_samples=v["n"], temperature=v["temperature"], top_p=v["top_p"], top_k=v["top_k"],
      greedy=v["greedy"], seed=v["seed"], stop_strings=tuple(v["stop_strings"]))
  others = [b for b in v["benchmarks"] if b != evaluate.HELDOUT]
  benchmarks = evaluate.load_benchmarks(
      others, size=v["size"], seed=v["seed"], task_kwargs=v["task_kwargs"],
      columns=v["columns"], limit=v["limit"], file_checker=v["file_checker"],
      few_shot=v["few_shot"], few_shot_file=v["few_shot_file"]) if others else []
  mesh = sharding.make_mesh()
  loaded = evaluate.load_for_evaluation(_CHECKPOINT.value, step=_STEP.value, mesh=mesh)
  sampled = iter(evaluate.evaluate_model(
      loaded.model, loaded.tokenizer, benchmarks, sampling=sampling,
      max_prompt_len=v["max_prompt_len"], max_new_tokens=v["max_new_tokens"],
      template=v["template"], instruction=v["instruction"],
      system_prompt=v["system_prompt"], batch_size=v["batch_size"], mesh=mesh,
      workers=v["workers"], timeout_s=v["timeout_s"]) if benchmarks else [])
  results = [evaluate.evaluate_loaded_heldout(loaded, mesh=mesh)
             if name == evaluate.HELDOUT else next(sampled) for name in v["benchmarks"]]
  settings = dict(v, checkpoint=loaded.description)
  print(evaluate.format_table(results))
  if jax.process_index() == 0:
    paths = evaluate.write_results(results, _RESULTS_DIR.value, settings=settings)
    print(f"wrote {', '.join(paths.values())}")
  print(json.dumps(evaluate.all_metrics(results)), flush=True)


if __name__ == "__main__":
  app.run(main)
