"""SCRL user messages: curriculum prompt and plain prompt (METHODS.md 3).

For each problem, half of the group answers the curriculum message and half
the plain one. Both functions return the user message text; the caller
renders it with the model's chat template (or the plain/few-shot templates of
`data.prompts`). The curriculum message for a chain of J = 2:

    {problem}

    Solve the problem above through the following 2 subproblems, in order.
    The last one is the problem itself.

    Problem1: {statement 1}

    Problem2: {statement 2}

    Answer in exactly 2 blocks, one per subproblem, in this order: <p1>...</p1>
    <p2>...</p2>. Inside each block, work out that subproblem and end the block
    with its final answer in \\boxed{}.

The plain message is exactly the message every other method trains and
evaluates on (`prompts.user_message`), so the plain half of the group sees
the evaluation prompt.
"""

from typing import Any

from rlvr_jax.data import prompts

Record = dict[str, Any]


def curriculum_message(record: Record) -> str:
  """The curriculum user message of a record with subproblems.

  Args:
    record: a record with `problem` and `subproblems` (J_i >= 1 items with a
      `statement`), as `data.subproblems.with_subproblems` returns it.

  Returns:
    The original problem, Problem1..ProblemJ_i, then the instruction to
    answer in exactly J_i blocks `<pj>...</pj>`, each ending in `\\boxed{}`.
  """
  statements = [s["statement"].strip() for s in record["subproblems"]]
  J = len(statements)
  if J < 1:
    raise ValueError(f"record {record.get('id')!r}: 'subproblems' is empty")
  listed = "\n\n".join(f"Problem{j}: {s}" for j, s in enumerate(statements, 1))
  blocks = " ".join(f"<p{j}>...</p{j}>" for j in range(1, J + 1))
  count = "1 subproblem" if J == 1 else f"{J} subproblems"
  block_count = "1 block" if J == 1 else f"{J} blocks"
  return (
      f"{record['problem'].strip()}\n\n"
      f"Solve the problem above through the following {count}, in order."
      " The last one is the problem itself.\n\n"
      f"{listed}\n\n"
      f"Answer in exactly {block_count}, one per subproblem, in this order:"
      f" {blocks}. Inside each block, work out that subproblem and end the"
      " block with its final answer in \\boxed{}."
  )


def plain_message(
    record: Record, *, instruction: str = prompts.BOXED_INSTRUCTION
) -> str:
  """The plain user message: `prompts.user_message` with the box instruction.

  Args:
    record: a record with `problem`.
    instruction: the answer-format instruction (the run's `instruction`).

  Returns:
    The problem, then the instruction on its own line.
  """
  return prompts.user_message(record, instruction=instruction)
