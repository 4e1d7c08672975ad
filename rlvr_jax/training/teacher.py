"""The OPD teacher beside the policy (METHODS.md 7.1): load, check, score.

`--config.distill.teacher` names the teacher like any model the project
reads (`evaluation.evaluate.load_for_evaluation`):

- a trainer run folder (config.json, model_config.json, checkpoints/): its
  latest checkpoint, built with the run's own model config and dtypes;
- an HF checkpoint folder, a .gguf file, 'smollm2' or 'random:<preset>'
  (`models.loader.load_model`, with the policy's dtypes).

The teacher is forward only: its parameters are placed on the trainer's
mesh with the policy's shardings (`sharding.state_shardings`) and never
updated. Its log-probs of the sampled tokens come from the same jitted
statistics pass as the policy's old log-probs (`step.rollout_stats` on the
teacher's graph: micro-batched, LM head chunked over T by
`--config.train.logprob_chunk`), at temperature 1 (the teacher's own
distribution), so the teacher costs one more forward pass per rollout batch.
The teacher must speak the policy's tokenizer (same vocabulary and special
tokens): the log-ratio compares the probabilities of the same token ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax

from rlvr_jax import storage
from rlvr_jax.training import step as step_lib


DEFAULT_RUN_HINT = (
    "the OPD configs' teacher is a checkpoint of the default GRPO run: train it first "
    "with `python -m experiments.train --workdir=runs/default`")


def _is_named_model(source: str) -> bool:
  return source == "smollm2" or source.startswith("random:")


def check_source(source: str) -> None:
  """Raises a clear error for a teacher source that does not exist.

  Args:
    source: `--config.distill.teacher`.

  Raises:
    ValueError: an empty source.
    FileNotFoundError: a path that does not exist (the message says how the
      default teacher, `runs/default`, is made).
  """
  if not source:
    raise ValueError("--config.distill.teacher='' : OPD needs a teacher (a run folder, "
                     "HF folder, .gguf, 'smollm2' or 'random:<preset>').")
  if _is_named_model(source) or storage.exists(source):
    return
  raise FileNotFoundError(
      f"--config.distill.teacher={source!r} does not exist; {DEFAULT_RUN_HINT}, or pass "
      "another teacher (a run folder, HF folder, .gguf, 'smollm2' or 'random:<preset>').")


def check_same_tokenizer(teacher_tokenizer: Any, student_tokenizer: Any, *,
                         teacher_source: str, student_source: str) -> None:
  """Refuses a teacher whose tokenizer is not the policy's.

  Compared: the vocabulary (token -> id) and the BOS, EOS and pad ids.

  Raises:
    ValueError: naming both sources and the first difference.
  """
  differences = []
  if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
    differences.append(f"vocabularies differ ({len(teacher_tokenizer.get_vocab())} vs "
                       f"{len(student_tokenizer.get_vocab())} tokens)")
  for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
    a, b = getattr(teacher_tokenizer, name, None), getattr(student_tokenizer, name, None)
    if a != b:
      differences.append(f"{name} {a} vs {b}")
  if differences:
    raise ValueError(
        f"--config.distill.teacher={teacher_source!r} and --config.model.source="
        f"{student_source!r} have different tokenizers ({'; '.join(differences)}); OPD "
        "compares log-probs of the same token ids, so the teacher must use the policy's "
        "tokenizer.")


@dataclasses.dataclass
class Teacher:
  """A forward-only teacher.

  Attributes:
    graphdef: the teacher's graph (`step.split_model`).
    params: its parameters (nnx.State), placed on the mesh.
    rest: its non-parameter state.
    tokenizer: its tokenizer.
    description: where it came from ('<run>@step<k>' or the source).
    vocab_size: its V.
  """

  graphdef: nnx.GraphDef
  params: nnx.State
  rest: nnx.State
  tokenizer: Any
  description: str
  vocab_size: int


def load_teacher(source: str, *, student_tokenizer: Any, student_source: str,
                 dtype: str, param_dtype: str,
                 mesh: jax.sharding.Mesh | None) -> Teacher:
  """Loads the teacher (module docstring) and checks its tokenizer.

  Args:
    source: `--config.distill.teacher`.
    student_tokenizer: the policy's tokenizer.
    student_source: `--config.model.source` (for messages).
    dtype: compute dtype of a non-run teacher (the policy's).
    param_dtype: storage dtype of a non-run teacher (the policy's).
    mesh: the trainer's mesh.

  Returns:
    The Teacher.
  """
  from rlvr_jax.evaluation import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top
  check_source(source)
  if evaluate_lib.is_run_dir(source):
    loaded = evaluate_lib.load_for_evaluation(source, mesh=mesh)
    model, tokenizer, description = loaded.model, loaded.tokenizer, loaded.description
  elif storage.isdir(storage.join(source, "checkpoints")):
    raise FileNotFoundError(
        f"--config.distill.teacher={source!r} has checkpoints/ but no model_config.json: "
        "not a complete trainer run folder.")
  else:
    model, tokenizer, _ = loader.load_model(source, dtype=dtype, param_dtype=param_dtype,
                                            mesh=mesh)
    description = source
  check_same_tokenizer(tokenizer, student_tokenizer, teacher_source=source,
                       student_source=student_source)
  graphdef, params, rest = step_lib.split_model(model)
  return Teacher(graphdef, params, rest, tokenizer, description, model.config.vocab_size)


def jit_teacher_logprobs(teacher: Teacher, *, prompt_len: int, num_micro: int,
                         loss_config: step_lib.LossConfig) -> Any:
  """The teacher's log-probs of the rollout tokens, from the statistics pass.

  `step.rollout_stats` on the teacher's graph and parameters at temperature 1
  (no hidden states, no reference): the same micro-batching and LM-head
  chunks as the policy's old log-probs.

  Args:
    teacher: the Teacher.
    prompt_len: P of the rollout batch.
    num_micro: micro-batches M.
    loss_config: the run's loss settings (its `logprob_chunk`).

  Returns:
    fn(batch with 'tokens' [B, S], 'input_mask' [B, S]) -> teacher_logp
    [B, T] float32 (batch-sharded like its input); call under the mesh.
  """
  stats = step_lib.jit_rollout_stats(
      teacher.graphdef, prompt_len=prompt_len, num_micro=num_micro,
      loss_config=dataclasses.replace(loss_config, temperature=1.0), with_hidden=False)
  return lambda batch: stats(teacher.params, teacher.rest, batch, None)["old_logp"]
