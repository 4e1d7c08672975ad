"""Prompt templates: plain text, the model's chat template, and few-shot.

The user message of a record is its problem, then the answer-format
instruction (a flag; `BOXED_INSTRUCTION` by default in the configs) on the
next line when one is given:

    {problem}\\n{instruction}

Templates (`TEMPLATES`):

- 'plain': `[{system}\\n\\n]Question: {message}\\nAnswer:`
- 'few_shot': the same, preceded by one block per worked example,
  `Question: {example message}\\nAnswer: {worked solution}\\n\\n`.
- 'chat': `tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True)` with messages = [system], then each worked
  example as a user/assistant turn pair, then the user message. Without a
  system prompt the template's own default applies (SmolLM2 inserts one).

A worked solution is the example's `metadata['solution']` when it has one
(GSM8K's and gsm_symbolic's worked solutions; their calculator annotations
`<<48/2=24>>` and final `#### x` line are removed), followed by the line
`The final answer is \\boxed{answer}.` Examples are drawn once, by seed, from
the training source (`draw_examples`), so every prompt of a run shows the
same shots.
"""

import re
from typing import Any, Protocol, Sequence

import numpy as np

from rlvr_jax.data import tasks

Record = dict[str, Any]

TEMPLATES = ("plain", "chat", "few_shot")
BOXED_INSTRUCTION = "Put your final answer within \\boxed{}."
FINAL_ANSWER = "The final answer is \\boxed{{{answer}}}."


class ChatTokenizer(Protocol):
  """What 'chat' needs of a tokenizer (any `transformers` tokenizer)."""

  def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs):
    ...


def user_message(record: Record, *, instruction: str) -> str:
  """The problem, then the instruction on its own line (if non-empty)."""
  problem = record["problem"].strip()
  return f"{problem}\n{instruction}" if instruction else problem


def worked_solution(record: Record) -> str:
  """The worked solution of a few-shot example, ending in the boxed answer."""
  final = FINAL_ANSWER.format(answer=record["answer"])
  solution = record["metadata"].get("solution", "")
  solution = re.sub(r"<<[^>]*>>", "", solution)
  solution = re.sub(r"\n?\s*####.*\Z", "", solution, flags=re.DOTALL).strip()
  return f"{solution}\n{final}" if solution else final


def draw_examples(
    source: tasks.RecordSource, *, k: int, seed: int
) -> list[Record]:
  """Draws k records with distinct problems from a source, by seed.

  Args:
    source: a random-access source, usually `Sources.train`.
    k: number of examples.
    seed: the draw's seed; the same seed gives the same examples.

  Returns:
    k records in draw order.

  Raises:
    ValueError: the source has fewer than k usable distinct problems.
  """
  if k < 0:
    raise ValueError(f"k={k}: must be >= 0")
  if k == 0:
    return []
  n = len(source)
  order = np.random.default_rng(seed).choice(
      n, size=min(n, 4 * k + 16), replace=False
  )
  examples, seen = [], set()
  for index in order:
    record = source[int(index)]
    if record is None or tasks.problem_key(record["problem"]) in seen:
      continue
    seen.add(tasks.problem_key(record["problem"]))
    examples.append(record)
    if len(examples) == k:
      return examples
  raise ValueError(
      f"k={k}: found only {len(examples)} usable distinct examples in"
      f" {len(order)} draws"
  )


def render_prompt(
    record: Record,
    *,
    template: str,
    instruction: str,
    system_prompt: str = "",
    tokenizer: ChatTokenizer | None = None,
    few_shot_examples: Sequence[Record] = (),
    message: str | None = None,
) -> str:
  """Renders the prompt text of one record (module docstring).

  Args:
    record: the record to ask.
    template: one of `TEMPLATES`.
    instruction: the answer-format instruction; '' for none.
    system_prompt: optional system text; '' for none.
    tokenizer: the model's tokenizer; required by 'chat'.
    few_shot_examples: worked examples; required (non-empty) by 'few_shot',
      optional for 'chat', not allowed for 'plain'.
    message: the user message to ask instead of the record's own
      (`user_message(record, instruction=...)`), e.g. SCRL's curriculum
      message; the template is applied to it all the same.

  Returns:
    The prompt text, to be tokenized without adding special tokens.

  Raises:
    ValueError: an unknown template or a missing/unexpected argument.
  """
  if template not in TEMPLATES:
    raise ValueError(f"template={template!r}: must be one of {TEMPLATES}")
  if message is None:
    message = user_message(record, instruction=instruction)
  if template == "chat":
    if tokenizer is None:
      raise ValueError("template='chat' needs the model's tokenizer")
    messages = []
    if system_prompt:
      messages.append({"role": "system", "content": system_prompt})
    for example in few_shot_examples:
      messages.append({
          "role": "user",
          "content": user_message(example, instruction=instruction),
      })
      messages.append(
          {"role": "assistant", "content": worked_solution(example)}
      )
    messages.append({"role": "user", "content": message})
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
  if template == "few_shot" and not few_shot_examples:
    raise ValueError("template='few_shot' needs few_shot_examples")
  if template == "plain" and few_shot_examples:
    raise ValueError("few_shot_examples given with template='plain'")
  parts = [f"{system_prompt}\n\n"] if system_prompt else []
  for example in few_shot_examples:
    parts.append(
        f"Question: {user_message(example, instruction=instruction)}\n"
        f"Answer: {worked_solution(example)}\n\n"
    )
  parts.append(f"Question: {message}\nAnswer:")
  return "".join(parts)
