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

The trainer's periodic greedy held-out accuracy is `evaluation.heldout`; this
module is the n-sample evaluation of a finished (or any) checkpoint.
`evaluate_trainer_checkpoint` runs it greedily on a trainer config's held-out
set, which is what RELEX's `--eval` reports.
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
from reasoning_gym import factory as reasoning_gym_factory
import tqdm

from rlvr_jax import sharding
from rlvr_jax.data import files
from rlvr_jax.data import iterator as data_iterator
from rlvr_jax.data import prompts as prompts_lib
from rlvr_jax.data import tasks
from rlvr_jax.evaluation import passk
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import loader
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers
from rlvr_jax.sampling import sampler as sampler_lib
from rlvr_jax.training import checkpoints

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
  """Every sample of one benchmark and its verdict; P problems, n samples each.

  Attributes:
    benchmark: the benchmark.
    prompts: P rendered prompts.
    texts: [P][n] decoded responses.
    answers: [P][n] extracted answers (None = no well-formed box).
    correct: [P, n] float32 in {0, 1}.
    reasons: [P][n] None where correct, else "<category>: <detail>".
    lengths: [P, n] int32 response lengths in tokens (with EOS).
    finish_reasons: [P][n] 'eos', 'stop' or 'length'.
  """

  benchmark: Benchmark
  prompts: list[str]
  texts: list[list[str]]
  answers: list[list[str | None]]
  correct: np.ndarray
  reasons: list[list[str | None]]
  lengths: np.ndarray
  finish_reasons: list[list[str]]

  @property
  def num_samples(self) -> int:
    return int(self.correct.shape[1])

  def majority(self) -> np.ndarray:
    """[P] maj@n per problem (`passk.maj_at_n` over normalized answers)."""
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
  """Whether `path` is a trainer workdir (model_config.json + checkpoints/)."""
  return (os.path.isfile(os.path.join(path, "model_config.json"))
          and os.path.isdir(os.path.join(path, "checkpoints")))


def _tokenizer(source: str) -> Any:
  """The tokenizer of a model source ('smollm2' and 'random:*': SmolLM2's)."""
  if source == "smollm2" or source.startswith("random:"):
    source = loader.default_gguf_path()
  return tokenizer_lib.load_tokenizer(source)


def saved_steps(run_dir: str) -> list[int]:
  """Completed checkpoint steps of a run (orbax's temporary folders excluded)."""
  directory = os.path.join(run_dir, "checkpoints")
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


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


def load_for_evaluation(source: str, *, step: int | None = None, tokenizer: str = "",
                        mesh: jax.sharding.Mesh | None = None
                        ) -> tuple[decoder_lib.Decoder, Any, str]:
  """(model, tokenizer, description) from a trainer workdir or a model source.

  Args:
    source: a trainer workdir (`<source>/model_config.json` and an orbax
      `checkpoints/`), an HF directory, a .gguf file, 'smollm2' or
      'random:<preset>' (`models.loader.load_model`).
    step: checkpoint step of a workdir; None = the latest.
    tokenizer: tokenizer source (HF dir, .gguf, 'smollm2', 'random:*') of a
      workdir, i.e. the run's `model.source`; '' = 'smollm2' (SmolLM2 runs and
      every 'random:<preset>' run). Ignored for other sources, which carry
      their own.
    mesh: optional mesh the parameters are placed on.

  Returns:
    The model with the checkpoint's parameters, its tokenizer and a short
    description ('<workdir>@step<k>' or the source).
  """
  if not is_run_dir(source):
    if step is not None:
      raise ValueError(f"--step={step} needs a trainer workdir; --checkpoint={source!r} "
                       "has no model_config.json and checkpoints/.")
    model, tok, _ = loader.load_model(source, mesh=mesh)
    return model, tok, source
  with open(os.path.join(source, "model_config.json")) as f:
    config = ModelConfig.from_dict(json.load(f))
  steps = saved_steps(source)
  if not steps:
    raise FileNotFoundError(f"--checkpoint={source!r}: no completed checkpoint in checkpoints/.")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"--step={step}: not saved in {source!r}; available: {steps}.")
  tok = _tokenizer(tokenizer or "smollm2")
  if len(tok) > config.vocab_size:
    raise ValueError(f"--tokenizer={tokenizer or 'smollm2'!r} has {len(tok)} tokens, more "
                     f"than the run's vocab_size={config.vocab_size}.")
  model = decoder_lib.create_model(config)
  if mesh is not None:
    sharding.shard_model(model, mesh)
  restore_into(model, source, step)
  return model, tok, f"{source}@step{step}"


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
    reward_fn: the checker; only `correct` and `reasons` are read.
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
  texts, extracted, correct, reasons, lengths, finish = [], [], [], [], [], []
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
      finish_reasons=finish)


def _benchmark_key(seed: int, name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)


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
  if pool is None and checkers - {"exact"}:
    warmup = (scorers.REASONING_GYM_WARMUP,) if "reasoning_gym" in checkers else ()
    pool = own_pool = math_checker.MathChecker(num_workers=workers, timeout_s=timeout_s,
                                               warmup=warmup).start()
  try:
    reward_fns = {checker: scorers.RewardFunction(
        checker=checker, max_response_len=max_new_tokens, pool=pool) for checker in checkers}
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
      with tqdm.tqdm(total=len(bench.records), desc=f"eval {bench.name}",
                     disable=not show_progress, leave=False) as bar:
        result = evaluate_benchmark(
            bench, generate=generate, render=render, reward_fn=reward_fns[bench.checker],
            num_samples=sampling.num_samples, batch_size=batch_size, progress=bar.update)
      logging.info("%s: %s", bench.name, json.dumps(result.metrics()))
      results.append(result)
    return results
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
    output_dir: created if needed.
    settings: JSON-serializable run settings stored in metrics.json.

  Returns:
    {'metrics': path, 'table': path, '<benchmark>': samples path}.
  """
  os.makedirs(output_dir, exist_ok=True)
  paths = {"metrics": os.path.join(output_dir, "metrics.json"),
           "table": os.path.join(output_dir, "results.md")}
  with open(paths["metrics"], "w") as f:
    json.dump({"settings": settings, "metrics": all_metrics(results),
               "num_problems": {r.benchmark.name: len(r.benchmark.records) for r in results}},
              f, indent=1)
  with open(paths["table"], "w") as f:
    f.write(format_table(results) + "\n")
  for result in results:
    path = os.path.join(output_dir, f"{result.benchmark.name}.samples.jsonl")
    with open(path, "w") as f:
      for row in result.problem_rows():
        f.write(json.dumps(row) + "\n")
    paths[result.benchmark.name] = path
  return paths


# ---------------------------------------------------------------------------
# A trainer checkpoint on the trainer's own held-out set.


def _split_params_path(path: str) -> tuple[str, int]:
  """('<...>/checkpoints', step) of a `<...>/checkpoints/<step>[/params]` path."""
  path = os.path.normpath(path)
  if os.path.basename(path) == "params":
    path = os.path.dirname(path)
  step = os.path.basename(path)
  if not step.isdigit():
    raise ValueError(f"params_dir_or_step={path!r}: expected <run>/checkpoints/<step> or "
                     "<run>/checkpoints/<step>/params.")
  return os.path.dirname(path), int(step)


def evaluate_trainer_checkpoint(params_dir_or_step: str,
                                config: ml_collections.ConfigDict) -> dict[str, float]:
  """Greedy accuracy of a checkpoint on the trainer config's held-out set.

  The same problems, prompts (template, few-shot examples), checker, response
  length, stop strings and batch size as the trainer's `evaluate`, so
  `eval/pass@1` equals the trainer's `eval/accuracy` for the same parameters.

  Args:
    params_dir_or_step: `<run>/checkpoints/<step>` or its `params` item
      directory (a trainer's or RELEX's output).
    config: the trainer config of the run (`model.source` gives the
      architecture and tokenizer).

  Returns:
    {'eval/pass@1', 'eval/avg@1', 'eval/maj@1'}.
  """
  c = config
  directory, step = _split_params_path(params_dir_or_step)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  model, tokenizer, _ = loader.load_model(c.model.source, dtype=c.model.dtype,
                                          param_dtype=c.model.param_dtype, mesh=mesh)
  restore_into(model, directory, step)
  sources = data_iterator.make_sources(c.data)
  shots = (prompts_lib.draw_examples(sources.train, k=c.data.few_shot, seed=c.data.seed)
           if c.data.few_shot else [])
  bench = Benchmark(name="eval", records=sources.eval, checker=c.reward.checker, shots=shots)
  [result] = evaluate_model(
      model, tokenizer, [bench],
      sampling=Sampling(greedy=True, stop_strings=tuple(c.rl.stop_strings)),
      max_prompt_len=c.rl.max_prompt_len, max_new_tokens=c.train.eval_max_new_tokens,
      template=c.data.template, instruction=c.data.instruction,
      system_prompt=c.data.system_prompt, batch_size=c.train.eval_batch_size,
      prompt_bucket=None, mesh=mesh, workers=c.reward.workers, timeout_s=c.reward.timeout_s)
  return result.metrics()
