"""Feedback-conditioned teacher inputs for DistIL (METHODS.md 7.3).

DistIL's teacher is the policy itself shown feedback f on the student's
response: p_T(. | s_t) = pi_theta(. | x, f, y_<t). For maths f is the
verifier's verdict on that response and the reference answer, rendered by the
template that `--config.distill.feedback_template` names (`FEEDBACK_TEMPLATES`).

Where f goes (our choice): at the end of the user message, after the problem
and the answer-format instruction and a blank line,

    {problem}\\n{instruction}\\n\\n{feedback}

and the prompt template is then applied to that message as to any other
(`prompts.render_prompt(..., message=...)`). With the 'chat' template f is
therefore inside the user turn, before `<|im_end|>` and the assistant turn;
with 'plain' and 'few_shot' it is inside the last `Question:` block, before
`\\nAnswer:`. The response then follows the same generation header as in the
student's prompt.

Layout (`build_teacher_batch`): each teacher prompt is tokenized on its own
and left-padded to P' (one width for the batch), and the student's response
token ids are copied after it unchanged (never re-tokenized), so

    teacher_tokens[i, P' + t] == student_tokens[i, P + t]   for every t < T,

the teacher's logits at index P' - 1 + t predict response token t exactly as
the student's at P - 1 + t do (docs/CONVENTIONS.md), and
`models.logprobs.response_logprobs(..., prompt_len=P')` on the teacher batch
gives [B, T] arrays aligned with the student's.
"""

import dataclasses
from typing import Any, Sequence

import numpy as np

from rlvr_jax.data import prompts
from rlvr_jax.rewards import answers

Record = dict[str, Any]

# Feedback templates: fields {verdict} ('correct' / 'incorrect', the
# verifier's verdict on this response) and {answer} (the reference answer).
FEEDBACK_TEMPLATES = {
    "verdict_answer": (
        "Feedback on a previous attempt: its final answer was {verdict}. "
        "The reference answer is {answer}."
    ),
    "answer": "The reference answer is {answer}.",
}
VERDICTS = {True: "correct", False: "incorrect"}


def render_feedback(record: Record, *, correct: bool, template: str) -> str:
  """The feedback text f for one response.

  Args:
    record: the problem's record; its 'answer' gives the reference answer
      (its last box when it holds a full solution, `answers.gold_answer`).
    correct: the verifier's verdict on the response.
    template: a key of `FEEDBACK_TEMPLATES`.

  Returns:
    The feedback text.
  """
  if template not in FEEDBACK_TEMPLATES:
    raise ValueError(
        f"--config.distill.feedback_template={template!r} is unknown; valid: "
        f"{sorted(FEEDBACK_TEMPLATES)}."
    )
  return FEEDBACK_TEMPLATES[template].format(
      verdict=VERDICTS[bool(correct)],
      answer=answers.gold_answer(str(record["answer"])),
  )


def render_teacher_prompt(
    record: Record,
    *,
    correct: bool,
    feedback_template: str,
    template: str,
    instruction: str,
    system_prompt: str = "",
    tokenizer: prompts.ChatTokenizer | None = None,
    few_shot_examples: Sequence[Record] = (),
) -> str:
  """The student's prompt with the feedback appended to the user message.

  The same arguments as the student's `prompts.render_prompt` (so the two
  prompts differ only by the feedback; module docstring) plus the verdict.

  Args:
    record: the problem's record.
    correct: the verifier's verdict on the response this prompt will score.
    feedback_template: a key of `FEEDBACK_TEMPLATES`.
    template: the prompt template (`--config.data.template`).
    instruction: the answer-format instruction.
    system_prompt: the system prompt ('' for the template's default).
    tokenizer: the model's tokenizer, for 'chat'.
    few_shot_examples: the run's worked examples.

  Returns:
    The teacher prompt text, to be tokenized without special tokens.
  """
  message = prompts.user_message(record, instruction=instruction)
  feedback = render_feedback(record, correct=correct,
                             template=feedback_template)
  return prompts.render_prompt(
      record, template=template, instruction=instruction,
      system_prompt=system_prompt, tokenizer=tokenizer,
      few_shot_examples=few_shot_examples,
      message=f"{message}\n\n{feedback}",
  )


@dataclasses.dataclass(frozen=True)
class TeacherBatch:
  """Teacher inputs aligned with a student rollout batch.

  Attributes:
    tokens: [B, S'] int32, teacher prompt left-padded to P', then the
      student's response tokens (S' = P' + T).
    input_mask: [B, S'] bool, real tokens (the response part is the
      student's input mask over its response).
    response_start: P'; response token t of every row sits at index P' + t
      (the student's at P + t), and the logits at P' - 1 + t predict it.
  """
  tokens: np.ndarray
  input_mask: np.ndarray
  response_start: int


def build_teacher_batch(
    teacher_prompt_ids: Sequence[Sequence[int]],
    tokens: np.ndarray,
    input_mask: np.ndarray,
    *,
    prompt_len: int,
    pad_id: int,
    max_prompt_len: int,
    bucket: int = 1,
) -> TeacherBatch:
  """Builds the teacher batch: feedback prompt + the same response tokens.

  P' is the longest teacher prompt rounded up to a multiple of `bucket`
  (fewer distinct shapes to compile), capped at `max_prompt_len`.

  Args:
    teacher_prompt_ids: B token-id lists, row i's teacher prompt
      (`render_teacher_prompt` encoded without special tokens).
    tokens: [B, S] int32 student rows, prompt left-padded to P then the
      response (S = P + T).
    input_mask: [B, S] bool student real-token mask.
    prompt_len: P, the student's prompt width.
    pad_id: the padding token id.
    max_prompt_len: the largest P' allowed
      (`--config.distill.max_teacher_prompt_len`).
    bucket: P' is a multiple of it, >= 1.

  Returns:
    A TeacherBatch with tokens and input_mask [B, P' + T] and
    response_start = P'.
  """
  tokens = np.asarray(tokens)
  input_mask = np.asarray(input_mask, bool)
  if tokens.ndim != 2 or tokens.shape != input_mask.shape:
    raise ValueError(
        f"tokens {tokens.shape} and input_mask {input_mask.shape} must both "
        "be [B, S]."
    )
  B, S = tokens.shape
  if not 0 < prompt_len < S:
    raise ValueError(f"prompt_len={prompt_len} outside (0, S={S}).")
  if len(teacher_prompt_ids) != B:
    raise ValueError(
        f"teacher_prompt_ids has {len(teacher_prompt_ids)} rows but tokens "
        f"has {B}."
    )
  if bucket < 1:
    raise ValueError(f"bucket={bucket} must be >= 1.")
  for i, row in enumerate(teacher_prompt_ids):
    if not row:
      raise ValueError(f"teacher_prompt_ids[{i}] has no tokens.")
    if len(row) > max_prompt_len:
      raise ValueError(
          f"teacher_prompt_ids[{i}] has {len(row)} tokens > "
          f"--config.distill.max_teacher_prompt_len={max_prompt_len}."
      )
  longest = max(len(row) for row in teacher_prompt_ids)
  width = min(max_prompt_len, -(-longest // bucket) * bucket)
  T = S - prompt_len
  out_tokens = np.full((B, width + T), pad_id, np.int32)
  out_mask = np.zeros((B, width + T), bool)
  for i, row in enumerate(teacher_prompt_ids):
    out_tokens[i, width - len(row):width] = row
    out_mask[i, width - len(row):width] = True
  out_tokens[:, width:] = tokens[:, prompt_len:]
  out_mask[:, width:] = input_mask[:, prompt_len:]
  return TeacherBatch(out_tokens, out_mask, width)
