"""Sampled evaluation on benchmarks: pass@k, avg@n, maj@n (METHODS.md 5).

A benchmark is a list of records {'problem', 'answer', ...} with a name, an
answer checker and its few-shot examples:

  * a JSONL/parquet file (`data.files` column mapping; name = file stem),
    checked with math-verify in the worker pool (or 'exact');
  * a reasoning-gym task name: the first `size` distinct problems of the
    task's held-out split (`data.tasks.held_out_records`, the trainer's
    held-out set for the same seed and task kwargs), checked by the task's
    own scorer, full credit only.

Each problem is rendered with the trainer's templates
(`data.prompts.render_prompt`), sampled n times with the KV-cache sampler and
every response is scored with the trainer's `rewards.scorers.RewardFunction`
(format weight 0, no overlong penalty: only `correct` and the reasons are
read). The answer of a sample is the content of its last `\\boxed{}`
(`rewards.answers.extract_boxed`, the reward function's own extraction);
maj@n votes over those answers after `rewards.answers.normalize_answer`.

Outputs (`write_results`): `<output_dir>/metrics.json` (settings and the flat
metric dict `<benchmark>/pass@k`, `<benchmark>/avg@n`, `<benchmark>/maj@n`),
`<output_dir>/results.md` (the table `format_table` prints) and one
`<output_dir>/<benchmark>.samples.jsonl` per benchmark with one line per
problem: its prompt, gold answer and every sample with its extracted answer,
verdict and reason.

Reproducibility: batch b of benchmark `name` is sampled with the key
fold_in(fold_in(key(seed), crc32(name)), b), so a benchmark's samples do not
depend on the other benchmarks of the call; they do depend on `batch_size`.

One loop (`evaluate_benchmark`) serves every caller. A trainer config's
held-out set is one more benchmark (`heldout_benchmark`, named 'heldout'),
evaluated greedily with n = 1 by `evaluate_heldout`: the trainer's periodic
and before/after evaluations, `experiments.evaluate` on a run folder
(`load_run`, which reads the run's config.json, loads the run's model source
for its tokenizer and dtypes and restores a checkpoint) and RELEX's `--eval`
(`evaluate_trainer_checkpoint`) all call it, so they measure the same thing
by construction.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from typing import Any, Callable, Sequence

from absl import logging
from flax import nnx
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from reasoning_gym import factory as reasoning_gym_factory
import tqdm

from rlvr_jax import checkpoints
from rlvr_jax import sharding
from rlvr_jax import storage
from rlvr_jax.data import files
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.data import prompts as prompts_lib
from rlvr_jax.data import tasks
from rlvr_jax.evaluation import passk
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import loader
from rlvr_jax.models import lora
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers
from rlvr_jax.sampling import sampler as sampler_lib

Record = dict[str, Any]

FILE_EXTENSIONS = (".jsonl", ".json", ".parquet")
FILE_CHECKERS = ("math_verify", "exact")
# Training-split items the few-shot examples of a task benchmark are drawn
# from (generated on access, so only the drawn ones cost anything).
_TASK_SHOT_POOL = 1000


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """Problems to evaluate on, how to check them, and their few-shot examples.

  Attributes:
    name: the metric prefix and file name (a file's stem, or the task name).
    records: the problems, {'problem', 'answer', ...} records.
    checker: a `rewards.scorers.CHECKERS` name.
    shots: worked examples shown before each problem (none of them is one of
      `records`).
  """

  name: str
  records: list[Record]
  checker: str
  shots: list[Record] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How each problem is sampled.

  Attributes:
    num_samples: n responses per problem.
    temperature: softmax temperature (0 means greedy).
    top_p: nucleus mass in (0, 1].
    top_k: keep the k most probable tokens (0 = off).
    greedy: argmax decoding; then n must be 1 (n greedy samples are equal).
    seed: sampling seed (module docstring).
    stop_strings: a response ends with the first of these (`Sampler.generate`).
  """

  num_samples: int = 1
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  greedy: bool = False
  seed: int = 0
  stop_strings: tuple[str, ...] = ()

  def __post_init__(self):
    if self.num_samples < 1:
      raise ValueError(f"num_samples (--n) = {self.num_samples} must be >= 1.")
    if (self.greedy or self.temperature == 0) and self.num_samples != 1:
      raise ValueError(
          f"num_samples (--n) = {self.num_samples} with greedy decoding (--greedy or "
          "--temperature=0): the samples would all be equal; use --n=1.")


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
  """Every sample of one benchmark and its verdict; Q problems, n samples each.

  Attributes:
    benchmark: the benchmark.
    prompts: Q rendered prompts.
    texts: [Q][E] decoded responses.
    answers: [Q][E] extracted answers (None = no well-formed box).
    correct: [Q, E] float32 in {0, 1}.
    reasons: [Q][E] None where correct, else "<category>: <detail>".
    lengths: [Q, E] int32 response lengths in tokens (with EOS).
    finish_reasons: [Q][E] 'eos', 'stop' or 'length'.
    formatted: [Q, E] float32, 1 where the response ended in one clean box.
  """

  benchmark: Benchmark
  prompts: list[str]
  texts: list[list[str]]
  answers: list[list[str | None]]
  correct: np.ndarray
  reasons: list[list[str | None]]
  lengths: np.ndarray
  finish_reasons: list[list[str]]
  formatted: np.ndarray

  @property
  def num_samples(self) -> int:
    return int(self.correct.shape[1])

  def majority(self) -> np.ndarray:
    """[Q] maj@n per problem (`passk.maj_at_n` over normalized answers)."""
    return passk.maj_at_n(self.answers, self.correct, normalize=answers.normalize_answer)

  def metrics(self) -> dict[str, float]:
    """`<name>/pass@k` for k = 1, 2, 4, ... n, `<name>/avg@n`, `<name>/maj@n`."""
    return passk.summarize(self.correct.sum(axis=1), num_samples=self.num_samples,
                           maj=self.majority(), prefix=self.benchmark.name)

  def problem_rows(self) -> list[dict[str, Any]]:
    """One JSON-serializable dict per problem (the samples JSONL)."""
    rows = []
    for p, (record, majority) in enumerate(zip(self.benchmark.records, self.majority())):
      samples = [{
          "text": self.texts[p][i],
          "answer": self.answers[p][i],
          "correct": bool(self.correct[p, i]),
          "reason": self.reasons[p][i],
          "length": int(self.lengths[p, i]),
          "finish_reason": self.finish_reasons[p][i],
      } for i in range(self.num_samples)]
      rows.append({
          "benchmark": self.benchmark.name,
          "index": p,
          "id": record.get("id", str(p)),
          "problem": record["problem"],
          "gold_answer": record["answer"],
          "prompt": self.prompts[p],
          "num_correct": int(self.correct[p].sum()),
          "num_samples": self.num_samples,
          "majority_correct": bool(majority),
          "samples": samples,
      })
    return rows


# ---------------------------------------------------------------------------
# Benchmarks.


def _file_benchmark(path: str, *, columns: str, limit: int, checker: str) -> Benchmark:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--benchmarks: file {path!r} does not exist.")
  records = files.load_records(path, columns=columns).records
  if limit:
    records = records[:limit]
  name = os.path.splitext(os.path.basename(path))[0]
  return Benchmark(name=name, records=records, checker=checker)


def _task_shots(task: str, *, task_kwargs: dict[str, Any], seed: int, k: int,
                held_out: Sequence[Record]) -> list[Record]:
  """k worked examples from the task's training split, none of them held out."""
  source = tasks.TaskSource(task, task_kwargs=task_kwargs, seed=seed, split="train",
                            size=_TASK_SHOT_POOL)
  return prompts_lib.draw_examples(tasks.DropHeldOut(source, held_out=held_out), k=k,
                                   seed=seed)


def load_benchmarks(specs: Sequence[str], *, size: int, seed: int = 0,
                    task_kwargs: dict[str, Any] | None = None, columns: str = "",
                    limit: int = 0, file_checker: str = "math_verify", few_shot: int = 0,
                    few_shot_file: str = "") -> list[Benchmark]:
  """Benchmarks from file paths and reasoning-gym task names.

  Args:
    specs: each a .jsonl/.json/.parquet path or a reasoning-gym task name.
    size: problems per task benchmark (its held-out split, by `seed`).
    seed: data seed of the task benchmarks and of the few-shot draw.
    task_kwargs: config fields of every task benchmark (e.g. max_terms).
    columns: column mapping of the files (`data.files`; '' = our layout).
    limit: keep the first `limit` rows of each file (0 = all).
    file_checker: checker of file benchmarks, one of FILE_CHECKERS.
    few_shot: worked examples before each problem (0 = none).
    few_shot_file: file the examples of file benchmarks are drawn from (a
      benchmark's own problems are never shown as examples); a task
      benchmark draws them from the task's training split.

  Returns:
    The benchmarks, in `specs` order.

  Raises:
    ValueError / FileNotFoundError: naming the flag (--benchmarks, --size,
      --few_shot_file, ...) that is wrong.
  """
  if not specs:
    raise ValueError("--benchmarks is empty: give files and/or reasoning-gym task names.")
  if size < 1:
    raise ValueError(f"--size={size} must be >= 1.")
  if limit < 0:
    raise ValueError(f"--limit={limit} must be >= 0.")
  if few_shot < 0:
    raise ValueError(f"--few_shot={few_shot} must be >= 0.")
  if file_checker not in FILE_CHECKERS:
    raise ValueError(f"--file_checker={file_checker!r}: must be one of {FILE_CHECKERS}.")
  task_kwargs = dict(task_kwargs or {})
  shot_pool = None
  if few_shot and few_shot_file:
    shot_pool = files.load_records(few_shot_file, columns=columns).records
  benchmarks = []
  for spec in specs:
    if spec.lower().endswith(FILE_EXTENSIONS) or os.path.sep in spec:
      bench = _file_benchmark(spec, columns=columns, limit=limit, checker=file_checker)
      if few_shot:
        if shot_pool is None:
          raise ValueError(f"--few_shot={few_shot} with the file benchmark {spec!r} needs "
                           "--few_shot_file (the examples must not come from the benchmark).")
        bench = dataclasses.replace(bench, shots=prompts_lib.draw_examples(
            tasks.DropHeldOut(shot_pool, held_out=bench.records), k=few_shot, seed=seed))
    elif spec in reasoning_gym_factory.DATASETS:
      records = tasks.held_out_records(spec, task_kwargs=task_kwargs, seed=seed, size=size)
      shots = (_task_shots(spec, task_kwargs=task_kwargs, seed=seed, k=few_shot,
                           held_out=records) if few_shot else [])
      bench = Benchmark(name=spec, records=records, checker="reasoning_gym", shots=shots)
    else:
      raise ValueError(
          f"--benchmarks: {spec!r} is neither a {'/'.join(FILE_EXTENSIONS)} file nor a "
          "reasoning-gym task (reasoning_gym.factory.DATASETS).")
    benchmarks.append(bench)
  names = [b.name for b in benchmarks]
  for name in set(names):
    if names.count(name) > 1:
      raise ValueError(f"--benchmarks: two benchmarks are named {name!r}; rename a file.")
  return benchmarks


# ---------------------------------------------------------------------------
# Models.


def is_run_dir(path: str) -> bool:
  """Whether `path` (local or a URI) is a trainer workdir (model_config.json + checkpoints/)."""
  return (storage.isfile(storage.join(path, "model_config.json"))
          and storage.isdir(storage.join(path, "checkpoints")))


def saved_steps(run_dir: str) -> list[int]:
  """Completed checkpoint steps of a run, as orbax lists them.

  Orbax's own listing excludes unfinished saves on every file system: local
  temporary folders, and on gs:// the step folders without their commit file
  (an object store has no rename, so a step being written has its final name).
  """
  manager = ocp.CheckpointManager(
      checkpoints.orbax_dir(storage.join(run_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def restore_into(model: decoder_lib.Decoder, directory: str, step: int) -> None:
  """Replaces the model's parameters by the `params` of a checkpoint (in place).

  Args:
    model: a decoder of the checkpoint's architecture; its parameters give
      the shapes, dtypes and shardings to restore onto.
    directory: a run's workdir or its `checkpoints/` folder.
    step: the checkpoint step.
  """
  # The target is the model's own Param state, the tree the trainer saves
  # (each Variable as {'value': array}), so trainer and RELEX checkpoints match.
  restored = checkpoints.restore_params(directory, step, target=nnx.state(model, nnx.Param))
  nnx.update(model, restored)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A model to evaluate and where it came from.

  Attributes:
    model: the decoder with the parameters to evaluate.
    tokenizer: its tokenizer (a run's: the one of the run's `model.source`).
    description: '<workdir>@step<k>' or the model source.
    config: the trainer config of a run folder (its config.json); None for a
      plain model source.
  """

  model: decoder_lib.Decoder
  tokenizer: Any
  description: str
  config: ml_collections.ConfigDict | None = None


def read_run_config(run_dir: str) -> ml_collections.ConfigDict:
  """The trainer config a run folder was trained with (`<run_dir>/config.json`)."""
  path = storage.join(run_dir, "config.json")
  if not storage.isfile(path):
    raise FileNotFoundError(
        f"--checkpoint={run_dir!r}: {path} is missing; the trainer writes it and the "
        "evaluation of a run folder needs it (model source, template, few-shot, task).")
  try:
    return ml_collections.ConfigDict(storage.read_json(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from e


def load_run_model(config: ml_collections.ConfigDict, directory: str, step: int, *,
                   mesh: jax.sharding.Mesh | None = None
                   ) -> tuple[decoder_lib.Decoder, Any, ModelConfig]:
  """The trainer's model of `config` with the parameters of a checkpoint.

  The model is built the way the trainer builds it (`loader.load_model` of
  `model.source` with the run's dtypes), so the tokenizer is the run's and the
  compute dtype is the run's; then the checkpoint's parameters replace the
  source's (a LoRA run's adapters are merged into them, `lora.merge_into`).

  Args:
    config: the trainer config.
    directory: a run's workdir (or RELEX output dir) or its `checkpoints/`.
    step: the checkpoint step.
    mesh: optional mesh the parameters are placed on.

  Returns:
    (model, tokenizer, model config).
  """
  c = config
  model, tokenizer, model_config = loader.load_model(
      c.model.source, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
      remat=c.model.remat, mesh=mesh)
  adapters = lora.restore_adapters(directory, step)
  if adapters is None:
    restore_into(model, directory, step)
  else:  # A LoRA run's checkpoint holds its adapters: merged into the base.
    lora.merge_into(model, adapters, scale=lora.run_scale(c, "the run's config.json"))
  return model, tokenizer, model_config


def load_for_evaluation(source: str, *, step: int | None = None,
                        mesh: jax.sharding.Mesh | None = None) -> Loaded:
  """The model to evaluate, from a trainer workdir or a model source.

  Args:
    source: a trainer workdir (`config.json`, `model_config.json` and an
      orbax `checkpoints/`), an HF directory, a .gguf file, 'smollm2' or
      'random:<preset>' (`models.loader.load_model`).
    step: checkpoint step of a workdir; None = the latest.
    mesh: optional mesh the parameters are placed on.

  Returns:
    The Loaded model; for a workdir with its config, its tokenizer being the
    one of the run's `model.source`.

  Raises:
    ValueError / FileNotFoundError: naming the flag (--checkpoint, --step) or
      the file that is wrong; also when the run's model source no longer
      builds the architecture in its model_config.json.
  """
  if not is_run_dir(source):
    if step is not None:
      raise ValueError(f"--step={step} needs a trainer workdir; --checkpoint={source!r} "
                       "has no model_config.json and checkpoints/.")
    model, tok, _ = loader.load_model(source, mesh=mesh)
    return Loaded(model, tok, source)
  config = read_run_config(source)
  steps = saved_steps(source)
  if not steps:
    raise FileNotFoundError(f"--checkpoint={source!r}: no completed checkpoint in checkpoints/.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"--step={step}: not saved in {source!r}; available: {steps}.")
  model, tok, model_config = load_run_model(config, source, step, mesh=mesh)
  path = storage.join(source, "model_config.json")
  saved = storage.read_json(path)
  built = json.loads(json.dumps(model_config.to_dict()))
  differ = sorted(k for k in set(saved) | set(built) if saved.get(k) != built.get(k))
  if differ:
    raise ValueError(f"{path}: the run's model.source={config.model.source!r} now builds a "
                     f"different model (fields {differ}); evaluate from the original source.")
  return Loaded(model, tok, f"{source}@step{step}", config)


# ---------------------------------------------------------------------------
# Evaluation.


def evaluate_benchmark(benchmark: Benchmark, *, generate: Callable[[list[str], int], Any],
                       render: Callable[[Record], str], reward_fn: scorers.RewardFunction,
                       num_samples: int, batch_size: int,
                       progress: Callable[[int], None] | None = None) -> BenchmarkResult:
  """Samples n responses to every problem and scores each one.

  Args:
    benchmark: the problems.
    generate: `generate(prompts, batch_index)` -> an object with `.texts`,
      `.response_mask` [rows, T] and `.finish_reasons`, rows =
      len(prompts) * num_samples with the samples of a prompt adjacent
      (`Sampler.generate(..., num_samples=n)`).
    render: record -> prompt text.
    reward_fn: the checker; only `correct`, `format` and `reasons` are read.
    num_samples: n.
    batch_size: prompts per `generate` call; the last call is padded with
      copies of its first prompt so shapes (and compiled code) stay fixed.
    progress: optional callback with the number of problems done.

  Returns:
    The BenchmarkResult.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size (--batch_size) = {batch_size} must be >= 1.")
  records = benchmark.records
  prompts = [render(r) for r in records]
  texts, extracted, correct, reasons, lengths, finish, formatted = [], [], [], [], [], [], []
  for batch_index, start in enumerate(range(0, len(records), batch_size)):
    chunk = prompts[start:start + batch_size]
    real = len(chunk)
    out = generate(chunk + [chunk[0]] * (batch_size - real), batch_index)
    rows = real * num_samples
    if len(out.texts) != batch_size * num_samples:
      raise ValueError(f"generate returned {len(out.texts)} rows for {batch_size} prompts "
                       f"x {num_samples} samples.")
    batch_texts = list(out.texts[:rows])
    batch_lengths = np.asarray(out.response_mask)[:rows].sum(axis=1).astype(np.int32)
    examples = [r for r in records[start:start + real] for _ in range(num_samples)]
    scored = reward_fn(examples, batch_texts, batch_lengths)
    for i in range(real):
      rows_i = slice(i * num_samples, (i + 1) * num_samples)
      texts.append(batch_texts[rows_i])
      extracted.append([answers.extract_boxed(t) for t in batch_texts[rows_i]])
      correct.append(scored.correct[rows_i])
      formatted.append(scored.format[rows_i])
      reasons.append(scored.reasons[rows_i])
      lengths.append(batch_lengths[rows_i])
      finish.append(list(out.finish_reasons[:rows][rows_i]))
    if progress is not None:
      progress(real)
  stack = lambda xs, dtype: (np.stack(xs).astype(dtype) if xs
                             else np.zeros([0, num_samples], dtype))
  return BenchmarkResult(
      benchmark=benchmark, prompts=prompts, texts=texts, answers=extracted,
      correct=stack(correct, np.float32), reasons=reasons, lengths=stack(lengths, np.int32),
      finish_reasons=finish, formatted=stack(formatted, np.float32))


def _benchmark_key(seed: int, name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def evaluate_with_sampler(sampler: sampler_lib.Sampler, tokenizer: Any,
                          benchmarks: Sequence[Benchmark], *, sampling: Sampling,
                          reward_fns: dict[str, scorers.RewardFunction],
                          template: str = "chat",
                          instruction: str = prompts_lib.BOXED_INSTRUCTION,
                          system_prompt: str = "", batch_size: int = 16, params: Any = None,
                          desc: str = "eval", show_progress: bool = True
                          ) -> list[BenchmarkResult]:
  """Evaluates benchmarks with a given sampler (the trainer's, or a new one).

  Args:
    sampler: the KV-cache sampler of the model (its prompt and response
      lengths are the evaluation's).
    tokenizer: the model's tokenizer (chat template).
    benchmarks: from `load_benchmarks`, `heldout_benchmark` or built by hand.
    sampling: n and the decoding settings.
    reward_fns: checker name -> reward function, for every benchmark's checker.
    template: 'plain', 'chat' or 'few_shot' (`data.prompts`).
    instruction: answer-format instruction after each problem.
    system_prompt: system text ('' = the template's default).
    batch_size: prompts per sampler call.
    params: optional parameters to sample from instead of the model's.
    desc: progress bar label (followed by the benchmark name).
    show_progress: show a progress bar per benchmark.

  Returns:
    One BenchmarkResult per benchmark.
  """
  results = []
  for bench in benchmarks:
    base_key = _benchmark_key(sampling.seed, bench.name)
    generate = lambda prompts, b, base_key=base_key: sampler.generate(
        prompts, key=jax.random.fold_in(base_key, b), temperature=sampling.temperature,
        top_p=sampling.top_p, top_k=sampling.top_k, greedy=sampling.greedy,
        stop_strings=sampling.stop_strings, num_samples=sampling.num_samples, params=params)
    render = functools.partial(
        prompts_lib.render_prompt, template=template, instruction=instruction,
        system_prompt=system_prompt, tokenizer=tokenizer, few_shot_examples=bench.shots)
    with tqdm.tqdm(total=len(bench.records), desc=f"{desc} {bench.name}",
                   disable=not show_progress, leave=False) as bar:
      result = evaluate_benchmark(
          bench, generate=generate, render=render, reward_fn=reward_fns[bench.checker],
          num_samples=sampling.num_samples, batch_size=batch_size, progress=bar.update)
    logging.info("%s: %s", bench.name, json.dumps(result.metrics()))
    results.append(result)
  return results


def _start_pool(checkers: set[str], *, workers: int, timeout_s: float
                ) -> math_checker.MathChecker | None:
  """An answer-checking pool when a checker needs one (not for 'exact')."""
  if not checkers - {"exact"}:
    return None
  warmup = (scorers.REASONING_GYM_WARMUP,) if "reasoning_gym" in checkers else ()
  return math_checker.MathChecker(num_workers=workers, timeout_s=timeout_s,
                                  warmup=warmup).start()


def evaluate_model(model: decoder_lib.Decoder, tokenizer: Any,
                   benchmarks: Sequence[Benchmark], *, sampling: Sampling,
                   max_prompt_len: int, max_new_tokens: int, template: str = "chat",
                   instruction: str = prompts_lib.BOXED_INSTRUCTION,
                   system_prompt: str = "", batch_size: int = 16,
                   prompt_bucket: int | None = 64, mesh: jax.sharding.Mesh | None = None,
                   params: Any = None, pool: math_checker.MathChecker | None = None,
                   workers: int = 2, timeout_s: float = 5.0,
                   show_progress: bool = True) -> list[BenchmarkResult]:
  """Evaluates a model on benchmarks (the importable form of the binary).

  Args:
    model: the decoder (its current parameters, or `params`, are sampled).
    tokenizer: its tokenizer.
    benchmarks: from `load_benchmarks` (or built by hand).
    sampling: n and the decoding settings.
    max_prompt_len: longest prompt in tokens.
    max_new_tokens: longest response in tokens.
    template: 'plain', 'chat' or 'few_shot' (`data.prompts`).
    instruction: answer-format instruction after each problem.
    system_prompt: system text ('' = the template's default).
    batch_size: prompts per sampler call.
    prompt_bucket: prompts are padded to a multiple of this (None = always
      to max_prompt_len, as the trainer does).
    mesh: optional mesh the batch is split over.
    params: optional parameters to sample from instead of the model's.
    pool: an answer-checking pool to use; by default one is started (and
      closed) when a benchmark needs it.
    workers: worker processes of that pool.
    timeout_s: wall-clock limit of one answer check.
    show_progress: show a progress bar per benchmark.

  Returns:
    One BenchmarkResult per benchmark.
  """
  sampler = sampler_lib.Sampler(model, tokenizer, max_prompt_len=max_prompt_len,
                                max_new_tokens=max_new_tokens, mesh=mesh,
                                prompt_bucket=prompt_bucket)
  checkers = {b.checker for b in benchmarks}
  own_pool = None
  if pool is None:
    pool = own_pool = _start_pool(checkers, workers=workers, timeout_s=timeout_s)
  try:
    reward_fns = {checker: scorers.RewardFunction(
        checker=checker, max_response_len=max_new_tokens, pool=pool) for checker in checkers}
    return evaluate_with_sampler(
        sampler, tokenizer, benchmarks, sampling=sampling, reward_fns=reward_fns,
        template=template, instruction=instruction, system_prompt=system_prompt,
        batch_size=batch_size, params=params, show_progress=show_progress)
  finally:
    if own_pool is not None:
      own_pool.close()


# ---------------------------------------------------------------------------
# Reporting.


def all_metrics(results: Sequence[BenchmarkResult]) -> dict[str, float]:
  """The flat metric dict of every benchmark."""
  metrics = {}
  for result in results:
    metrics.update(result.metrics())
  return metrics


def format_table(results: Sequence[BenchmarkResult]) -> str:
  """Markdown table: one row per benchmark, pass@k / avg@n / maj@n in percent."""
  columns = []
  for result in results:
    for key in result.metrics():
      column = key.split("/", 1)[1]
      if column not in columns:
        columns.append(column)
  lines = ["| benchmark | problems | n | " + " | ".join(f"{c} (%)" for c in columns) + " |",
           "|---|---:|---:|" + "---:|" * len(columns)]
  for result in results:
    name = result.benchmark.name
    metrics = result.metrics()
    cells = [f"{100 * metrics[f'{name}/{c}']:.1f}" if f"{name}/{c}" in metrics else ""
             for c in columns]
    lines.append(f"| {name} | {len(result.benchmark.records)} | {result.num_samples} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(results: Sequence[BenchmarkResult], output_dir: str, *,
                  settings: dict[str, Any]) -> dict[str, str]:
  """Writes metrics.json, results.md and one samples JSONL per benchmark.

  Args:
    results: the evaluated benchmarks.
    output_dir: created if needed; a local folder or a URI such as
      gs://bucket/eval (`rlvr_jax.storage`).
    settings: JSON-serializable run settings stored in metrics.json.

  Returns:
    {'metrics': path, 'table': path, '<benchmark>': samples path}.
  """
  storage.makedirs(output_dir)
  paths = {"metrics": os.path.join(output_dir, "metrics.json"),
           "table": os.path.join(output_dir, "results.md")}
  storage.write_json(
      paths["metrics"],
      {"settings": settings, "metrics": all_metrics(results),
       "num_problems": {r.benchmark.name: len(r.benchmark.records) for r in results}},
      indent=1)
  storage.write_text(paths["table"], format_table(results) + "\n")
  for result in results:
    path = os.path.join(output_dir, f"{result.benchmark.name}.samples.jsonl")
    storage.write_text(path, "".join(json.dumps(row) + "\n" for row in result.problem_rows()))
    paths[result.benchmark.name] = path
  return paths


# ---------------------------------------------------------------------------
# A trainer config's held-out set: one benchmark, greedy, n = 1.

HELDOUT = "heldout"


def heldout_benchmark(config: ml_collections.ConfigDict,
                      sources: data_iterator.Sources) -> Benchmark:
  """The trainer's held-out problems, checker and few-shot examples as a Benchmark.

  Args:
    config: the trainer config (`data.few_shot`, `data.seed`, `reward.checker`).
    sources: `data_iterator.make_sources(config.data)` (the trainer's own).

  Returns:
    The benchmark named HELDOUT.
  """
  c = config
  shots = (prompts_lib.draw_examples(sources.train, k=c.data.few_shot, seed=c.data.seed)
           if c.data.few_shot else [])
  return Benchmark(name=HELDOUT, records=list(sources.eval), checker=c.reward.checker,
                   shots=shots)


def heldout_sampler(config: ml_collections.ConfigDict, model: decoder_lib.Decoder,
                    tokenizer: Any, mesh: jax.sharding.Mesh | None
                    ) -> sampler_lib.Sampler:
  """The trainer's evaluation sampler: P = rl.max_prompt_len, T = eval_max_new_tokens."""
  return sampler_lib.Sampler(model, tokenizer, max_prompt_len=config.rl.max_prompt_len,
                             max_new_tokens=config.train.eval_max_new_tokens, mesh=mesh)


def heldout_reward_fn(config: ml_collections.ConfigDict,
                      pool: math_checker.MathChecker | None) -> scorers.RewardFunction:
  """The trainer's evaluation reward: its checker, no format bonus."""
  c = config
  return scorers.RewardFunction(
      checker=c.reward.checker, max_response_len=c.rl.max_new_tokens, format_weight=0.0,
      overlong_buffer=c.reward.overlong_buffer, pool=pool)


def evaluate_heldout(config: ml_collections.ConfigDict, *, sampler: sampler_lib.Sampler,
                     tokenizer: Any, sources: data_iterator.Sources,
                     reward_fn: scorers.RewardFunction, desc: str = "eval",
                     show_progress: bool = True, params: Any = None) -> BenchmarkResult:
  """Greedy (n = 1) evaluation of the sampler's model on the config's held-out set.

  The one held-out evaluation: the trainer's `evaluate`, `experiments.evaluate`
  on a run folder and RELEX's `--eval` all run it.

  Args:
    config: the trainer config (template, instruction, system prompt, stop
      strings, eval batch size).
    sampler: `heldout_sampler(config, ...)` (or the trainer's, built alike).
    tokenizer: the model's tokenizer.
    sources: `data_iterator.make_sources(config.data)`.
    reward_fn: `heldout_reward_fn(config, pool)` (or the trainer's, alike).
    desc: progress bar label.
    show_progress: show a progress bar.
    params: parameters to sample from (the trainer's state), or None for the
      sampler's model's own.

  Returns:
    The BenchmarkResult of the HELDOUT benchmark, one greedy sample per problem.
  """
  c = config
  bench = heldout_benchmark(c, sources)
  [result] = evaluate_with_sampler(
      sampler, tokenizer, [bench],
      sampling=Sampling(greedy=True, stop_strings=tuple(c.rl.stop_strings)),
      reward_fns={bench.checker: reward_fn}, template=c.data.template,
      instruction=c.data.instruction, system_prompt=c.data.system_prompt,
      batch_size=c.train.eval_batch_size, params=params, desc=desc,
      show_progress=show_progress)
  return result


def evaluate_loaded_heldout(loaded: Loaded, *, mesh: jax.sharding.Mesh | None = None,
                            show_progress: bool = True) -> BenchmarkResult:
  """`evaluate_heldout` of a loaded run (its config, model and tokenizer)."""
  c = loaded.config
  if c is None:
    raise ValueError(f"--benchmarks={HELDOUT}: {loaded.description!r} is not a run folder "
                     "(config.json, model_config.json, checkpoints/).")
  sources = data_iterator.make_sources(c.data)
  pool = _start_pool({c.reward.checker}, workers=c.reward.workers,
                     timeout_s=c.reward.timeout_s)
  try:
    return evaluate_heldout(
        c, sampler=heldout_sampler(c, loaded.model, loaded.tokenizer, mesh),
        tokenizer=loaded.tokenizer, sources=sources, reward_fn=heldout_reward_fn(c, pool),
        show_progress=show_progress)
  finally:
    if pool is not None:
      pool.close()


def run_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `experiments.evaluate` flag values that measure what the run measured.

  Evaluating a run folder takes these as the defaults of its flags (a flag
  given on the command line still wins): the run's template, instruction,
  system prompt, few-shot count, task kwargs and data seed, its sampling
  temperature, top-p, top-k and stop strings, its evaluation lengths and
  batch size and its checker's pool settings; the benchmark is its held-out
  set.
  """
  c = config
  return {
      "benchmarks": [HELDOUT], "template": c.data.template,
      "instruction": c.data.instruction, "system_prompt": c.data.system_prompt,
      "few_shot": c.data.few_shot, "task_kwargs": dict(c.data.task_kwargs),
      "seed": c.data.seed, "temperature": c.rl.temperature, "top_p": c.rl.top_p,
      "top_k": c.rl.top_k, "stop_strings": list(c.rl.stop_strings),
      "max_new_tokens": c.train.eval_max_new_tokens, "max_prompt_len": c.rl.max_prompt_len,
      "batch_size": c.train.eval_batch_size, "workers": c.reward.workers,
      "timeout_s": c.reward.timeout_s,
  }


def _split_params_path(path: str) -> tuple[str, int]:
  """('<...>/checkpoints', step) of a `<...>/checkpoints/<step>[/params]` path."""
  # (normpath would turn gs://bucket into gs:/bucket.)
  path = path.rstrip("/") if storage.is_remote(path) else os.path.normpath(path)
  if os.path.basename(path) == "params":
    path = os.path.dirname(path)
  step = os.path.basename(path)
  if not step.isdigit():
    raise ValueError(f"params_dir_or_step={path!r}: expected <run>/checkpoints/<step> or "
                     "<run>/checkpoints/<step>/params.")
  return os.path.dirname(path), int(step)


def evaluate_trainer_checkpoint(params_dir_or_step: str,
                                config: ml_collections.ConfigDict) -> dict[str, float]:
  """Greedy accuracy of a checkpoint on the trainer config's held-out set (RELEX --eval).

  `evaluate_loaded_heldout` of the checkpoint's parameters in the model of
  `config`, so `heldout/pass@1` equals the trainer's `eval/accuracy` for the
  same parameters.

  Args:
    params_dir_or_step: `<run>/checkpoints/<step>` or its `params` item
      directory (a trainer's or RELEX's output).
    config: the trainer config of the run (`model.source` gives the
      architecture and tokenizer).

  Returns:
    {'heldout/pass@1', 'heldout/avg@1', 'heldout/maj@1'}.
  """
  c = config
  directory, step = _split_params_path(params_dir_or_step)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  model, tokenizer, _ = load_run_model(c, directory, step, mesh=mesh)
  loaded = Loaded(model, tokenizer, f"{directory}@step{step}", c)
  return evaluate_loaded_heldout(loaded, mesh=mesh).metrics()
