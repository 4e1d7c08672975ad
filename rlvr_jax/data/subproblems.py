"""SCRL subproblem chains derived by rule, exact ground truths (METHODS.md 3).

A chain is a list of subproblems `[{'statement': str, 'ground_truth': str}]`,
easy to hard; the last one is always the record's own problem and answer,
unchanged. `with_subproblems` returns the record with two keys added:

    {..., 'problem', 'answer', 'subproblems': [...], 'reference_solution'}

(`reference_solution` is the worked solution when the source has one, else
None). Rules (`RULES`), each computing every intermediate ground truth exactly
(Fractions, never floats):

- `chain_sum`: partial sums. `a + b - c + d` has the prefixes `a + b` and
  `a + b - c`; each is asked with the item's own question sentence.
- `basic_arithmetic`: sub-expressions. The expression is parsed with Python's
  `ast` (standard precedence: unary minus, then `* /` left to right, then
  `+ -`), every binary operation that is not the whole expression is a
  candidate, evaluated exactly. A chain_sum expression is a left-leaning tree,
  so its candidates are exactly its partial sums and both rules share the code.
- `countdown`: partial expressions of the reference solution, each asked as a
  smaller countdown ("using all the numbers {its numbers}, make {its value}"),
  its ground truth the partial expression. Candidates whose value is not a
  positive integer or equals one of their own numbers (`x * 1`) are dropped.
  Checking needs an expression checker (same multiset of numbers, same value),
  not a numeric one.
- `gsm_symbolic`: reasoning-gym's `gsm_symbolic` exposes intermediate
  quantities in `metadata['variables']` (named values such as `peel_time`)
  and its worked solution in `metadata['answer_cot']` (`metadata['solution']`
  in our records), but no question text for a quantity. A step is a solution
  line `... = <number> ...` whose number equals an exposed numeric variable;
  its statement is the problem (without reasoning-gym's "Give the result as
  your final answer" suffix) followed by that line with the number blanked.
  Quantities the generator does not expose (about a third of the solution
  lines; some generators expose none) are not used, nor are lines whose
  arithmetic before the `=` evaluates to another number (`17*0.5=8`), so
  those items get a shorter chain.
- `gsm8k`: calculator annotations `<<48/2=24>>` of a worked solution
  (`metadata['solution']`). A step is an annotation whose left side evaluates
  exactly to its right side (`<<10/3=3.33>>` is not used); its statement is
  the question followed by the annotation's line with the annotation removed,
  the written computation before it removed (`48/2 = `), and the result
  blanked: "Natalia sold ___ clips in May."

Which intermediate results are used (J = the requested chain length):
- arithmetic and countdown: the J - 1 candidates with the most operators
  (closest to the whole problem, so consecutive subproblems differ by few
  operations), ordered by operator count and then by evaluation order, so a
  sub-expression always precedes every expression that contains it;
- gsm_symbolic and gsm8k: the last J - 1 useful steps in solution order. A
  step is useful when its value is not the final answer (that is subproblem
  J) and not a number stated in the question; of several useful steps with
  the same value only the last is kept.

**(decision)** An item with fewer than J - 1 usable intermediate results gets
a shorter chain of J_i = 1 + (usable count) subproblems, nothing padded in the
data (J_i = 1 is the problem alone). The curriculum prompt then asks for J_i
blocks, and the trainer pads the reward arrays to J, passing each problem's
J_i as `chain_lengths` to `algorithms.scrl` (positions j >= J_i get A = 0).

An item whose own answer is inconsistent raises `UnusableItemError` (for
example the ~1% of basic_arithmetic items whose generator answer is computed
with floor division of an inexact quotient, so that the stated answer is not
the value of the expression; `data.tasks` already drops those, this check
covers records read back from files); `add_subproblems` skips and counts
them.
"""

import ast
import collections
import dataclasses
import fractions
import operator
import re
from typing import Any, Callable, Iterable

from absl import logging
from reasoning_gym.games import countdown as rg_countdown

Record = dict[str, Any]
Fraction = fractions.Fraction

# The blank of a fill-in-the-blank statement.
BLANK = "___"
# Appended to every gsm_symbolic question by reasoning-gym; it refers to the
# whole problem, so statements of intermediate steps drop it.
_GSM_SYMBOLIC_SUFFIX = (
    " Give the result as your final answer. Do not include units."
)
_UNSIGNED = r"(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(_UNSIGNED)
_SIGNED_NUMBER = "-?" + _UNSIGNED
# The arithmetic that ends a text: digits, operators, brackets, `$`, spaces.
_TRAILING_ARITHMETIC = re.compile(r"[\d.,\s+\-*/×x÷()$]*$")
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# The result written right after an annotation: `<<48/2=24>>24`.
_WRITTEN_RESULT = re.compile(r"\s*(" + _SIGNED_NUMBER + ")")
# After the last '=' of a gsm_symbolic solution line: optional currency sign,
# then the result.
_RESULT = re.compile(r"\s*[^\w\s.-]?\s*(" + _SIGNED_NUMBER + ")")
_COUNTDOWN_QUESTION = (
    "Using all the numbers {numbers}, create an expression that equals"
    " {target}.\nYou can only use each number once."
)
_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class UnusableItemError(ValueError):
  """The item cannot carry a correct chain; `reason` is a short count key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason


def format_value(value: Fraction) -> str:
  """Canonical text of an exact value: `12`, `-0.25`, or `-1/3`.

  Args:
    value: an exact rational.

  Returns:
    An integer, a terminating decimal without trailing zeros, or `p/q` when
    the decimal does not terminate.
  """
  if value.denominator == 1:
    return str(value.numerator)
  q, twos, fives = value.denominator, 0, 0
  while q % 2 == 0:
    q, twos = q // 2, twos + 1
  while q % 5 == 0:
    q, fives = q // 5, fives + 1
  if q != 1:
    return f"{value.numerator}/{value.denominator}"
  places = max(twos, fives)
  digits = str(abs(value.numerator) * 10**places // value.denominator)
  digits = digits.rjust(places + 1, "0")
  text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0")
  return f"-{text}" if value < 0 else text


def _parse_number(text: str) -> Fraction:
  """Exact value of a written number such as `1,585`, `-3` or `0.25`."""
  return Fraction(text.replace(",", ""))


def _final_value(answer: str) -> Fraction | None:
  """The final answer as a number, or None when it is not one."""
  match = re.fullmatch(_SIGNED_NUMBER, answer.strip())
  return None if match is None else _parse_number(match.group(0))


def _numbers_in(text: str) -> set[Fraction]:
  """Values of all unsigned numbers written in `text`."""
  return {_parse_number(m.group(0)) for m in _NUMBER.finditer(text)}


@dataclasses.dataclass(frozen=True)
class _Node:
  """One binary operation of an arithmetic expression.

  Attributes:
    text: the source text of the sub-expression (without enclosing brackets).
    value: its exact value.
    size: number of binary operators it contains.
    order: its position in evaluation (post-) order.
    numbers: the unsigned integer literals it contains, left to right.
  """

  text: str
  value: Fraction
  size: int
  order: int
  numbers: tuple[int, ...]


def _expression_nodes(
    expression: str,
) -> tuple[Fraction, tuple[int, ...], list[_Node]]:
  """Exact value, integers and binary operations of an arithmetic expression.

  Args:
    expression: integers and decimals with `+ - * /`, unary minus/plus and
      brackets.

  Returns:
    (value of the whole expression, its unsigned integer literals, every
    binary operation in evaluation order; the last one is the outermost).

  Raises:
    UnusableItemError: the text is not such an expression, or divides by 0.
  """
  expression = expression.strip()
  try:
    tree = ast.parse(expression, mode="eval")
  except SyntaxError as e:
    raise UnusableItemError("unparsable_expression", repr(expression)) from e
  nodes: list[_Node] = []

  def visit(node: ast.AST) -> tuple[Fraction, int, tuple[int, ...]]:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
      # The literal's text, not the float, so that 0.1 stays exact.
      value = Fraction(ast.get_source_segment(expression, node))
      return value, 0, (int(value),) if value.denominator == 1 else ()
    if isinstance(node, ast.UnaryOp) and type(node.op) in (ast.USub, ast.UAdd):
      value, size, numbers = visit(node.operand)
      sign = -1 if isinstance(node.op, ast.USub) else 1
      return sign * value, size, numbers
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
      left, left_size, left_numbers = visit(node.left)
      right, right_size, right_numbers = visit(node.right)
      if isinstance(node.op, ast.Div) and right == 0:
        raise UnusableItemError("division_by_zero", repr(expression))
      value = _BINARY_OPS[type(node.op)](left, right)
      size, numbers = left_size + right_size + 1, left_numbers + right_numbers
      nodes.append(_Node(
          text=ast.get_source_segment(expression, node),
          value=value,
          size=size,
          order=len(nodes),
          numbers=numbers,
      ))
      return value, size, numbers
    raise UnusableItemError(
        "unparsable_expression", f"{ast.dump(node)} in {expression!r}"
    )

  value, _, numbers = visit(tree.body)
  return value, numbers, nodes


def _proper(nodes: list[_Node]) -> list[_Node]:
  """The nodes without the outermost operation (which is the whole problem).

  Under a leading unary minus (`-(a + b)`) the outermost binary operation
  differs from the whole only by its sign, so it is dropped as well.
  """
  return nodes[:-1] if nodes and nodes[-1].size == len(nodes) else nodes


def _largest(nodes: list[_Node], count: int) -> list[_Node]:
  """The `count` nodes with most operators, easy to hard (module docstring)."""
  chosen = sorted(nodes, key=lambda n: (-n.size, n.order))[:max(count, 0)]
  return sorted(chosen, key=lambda n: (n.size, n.order))


def _expression_chain(record: Record, *, k: int) -> list[dict[str, str]]:
  """`chain_sum` and `basic_arithmetic`: sub-expressions in the question."""
  expression = record["metadata"]["expression"]
  question = record["problem"]
  if question.count(expression) != 1:
    raise UnusableItemError(
        "expression_not_in_question", f"{expression!r} in {question!r}"
    )
  value, _, nodes = _expression_nodes(expression)
  if value != _final_value(record["answer"]):
    raise UnusableItemError(
        "answer_is_not_the_value",
        f"{expression!r} = {format_value(value)}, answer {record['answer']!r}",
    )
  unique: dict[str, _Node] = {}
  for node in _proper(nodes):
    unique.setdefault(node.text, node)
  return [
      {
          "statement": question.replace(expression, node.text),
          "ground_truth": format_value(node.value),
      }
      for node in _largest(list(unique.values()), k - 1)
  ]


def _countdown_chain(record: Record, *, k: int) -> list[dict[str, str]]:
  """`countdown`: smaller countdowns made from partial solution expressions."""
  metadata = record["metadata"]
  value, numbers, nodes = _expression_nodes(record["answer"])
  if value != metadata["target"] or sorted(numbers) != sorted(
      metadata["numbers"]
  ):
    raise UnusableItemError(
        "answer_is_not_a_solution",
        f"{record['answer']!r} for target {metadata['target']} with numbers"
        f" {metadata['numbers']}",
    )
  useful: dict[tuple[tuple[int, ...], Fraction], _Node] = {}
  for node in _proper(nodes):
    positive_integer = node.value.denominator == 1 and node.value > 0
    if positive_integer and node.value not in node.numbers:
      useful.setdefault((tuple(sorted(node.numbers)), node.value), node)
  chain = []
  for node in _largest(list(useful.values()), k - 1):
    question = _COUNTDOWN_QUESTION.format(
        numbers=", ".join(map(str, sorted(node.numbers))), target=node.value
    )
    statement = rg_countdown.QUESTION_FORMAT_TEMPLATE.format(question=question)
    chain.append({"statement": statement, "ground_truth": node.text})
  return chain


@dataclasses.dataclass(frozen=True)
class _Step:
  """An intermediate result of a worked solution and its statement."""

  value: Fraction
  statement: str


def _last_useful(
    steps: list[_Step], *, question: str, final: Fraction | None, count: int
) -> list[dict[str, str]]:
  """The last `count` useful steps, in solution order (module docstring)."""
  given = _numbers_in(question)
  useful = [s for s in steps if s.value != final and s.value not in given]
  last_of_value = {s.value: i for i, s in enumerate(useful)}
  useful = [s for i, s in enumerate(useful) if last_of_value[s.value] == i]
  return [
      {"statement": s.statement, "ground_truth": format_value(s.value)}
      for s in useful[max(len(useful) - count, 0):]
  ]


def _blank_statement(context: str, line: str) -> str:
  """The statement of a fill-in-the-blank step."""
  return f'{context}\nFind the number that fills the blank {BLANK} in: "{line}"'


def _computation_value(text: str) -> tuple[Fraction, int] | None:
  """(exact value, operator count) of a written computation, else None.

  Accepts `x` and `×` for multiplication, `÷` for division, `$` signs and
  thousands separators.
  """
  text = _normalized(text).replace("÷", "/")
  try:
    value, _, nodes = _expression_nodes(text)
  except UnusableItemError:
    return None
  return value, len(nodes)


def _normalized(text: str) -> str:
  """A written computation without spaces, `$` or `,`, and `*` for x/×."""
  text = re.sub(r"[\s$]|(?<=\d),(?=\d{3})", "", text)
  return re.sub(r"(?<=[\d)])[x×X](?=[\d(.])", "*", text)


def _gsm_symbolic_chain(record: Record, *, k: int) -> list[dict[str, str]]:
  """`gsm_symbolic`: solution lines whose result is an exposed variable.

  A line is also skipped when the arithmetic written just before its last
  `=` evaluates to another value (`17*0.5=8`: the generator truncated).
  """
  metadata = record["metadata"]
  exposed = {
      Fraction(str(v)) for v in metadata.get("variables", {}).values()
      if isinstance(v, (int, float)) and not isinstance(v, bool)
  }
  context = record["problem"].removesuffix(_GSM_SYMBOLIC_SUFFIX)
  steps = []
  for line in metadata.get("answer_cot", "").splitlines():
    line = line.strip()
    if "=" not in line or line.startswith("####"):
      continue
    equals = line.rindex("=")
    match = _RESULT.match(line, equals + 1)
    if match is None:
      continue
    value = _parse_number(match.group(1))
    if value not in exposed or value in _numbers_in(line[:equals]):
      continue
    arithmetic = _TRAILING_ARITHMETIC.search(line[:equals]).group(0)
    written = _computation_value(arithmetic)
    if written is not None and written[1] > 0 and written[0] != value:
      continue
    blanked = line[:match.start(1)] + BLANK + line[match.end(1):]
    steps.append(_Step(value, _blank_statement(context, blanked)))
  return _last_useful(
      steps, question=context, final=_final_value(record["answer"]), count=k - 1
  )


def _without_computation(before: str, lhs: str) -> str:
  """Removes a written `lhs =` that ends `before`, keeping a `$` after it."""
  equals = before.rfind("=")
  if equals < 0 or before[equals + 1:].strip() not in ("", "$"):
    return before
  target = _normalized(lhs)
  for start in range(equals):
    if start and not before[start - 1].isspace():
      continue
    if _normalized(before[start:equals]) == target:
      head, tail = before[:start].rstrip(), before[equals + 1:].strip()
      return f"{head} {tail}" if head else tail
  return before


def _gsm8k_chain(record: Record, *, k: int) -> list[dict[str, str]]:
  """`gsm8k`: calculator annotations of the worked solution."""
  solution = record["metadata"].get("solution", "")
  if "####" not in solution:
    raise UnusableItemError("no_final_answer", "solution has no '####' line")
  steps = []
  for line in solution.split("####")[0].splitlines():
    for annotation in _ANNOTATION.finditer(line):
      lhs, rhs = annotation.group(1), annotation.group(2).strip()
      computed = _computation_value(lhs)
      if computed is None or computed[1] == 0:
        continue
      value = computed[0]
      if not re.fullmatch(_SIGNED_NUMBER, rhs) or _parse_number(rhs) != value:
        continue
      written = _WRITTEN_RESULT.match(line, annotation.end())
      if written is None or _parse_number(written.group(1)) != value:
        continue
      before = _ANNOTATION.sub("", line[:annotation.start()])
      after = _ANNOTATION.sub("", line[written.end():])
      blanked = f"{_without_computation(before, lhs)}{BLANK}{after}".strip()
      steps.append(_Step(value, _blank_statement(record["problem"], blanked)))
  return _last_useful(
      steps,
      question=record["problem"],
      final=_final_value(record["answer"]),
      count=k - 1,
  )


RULES: dict[str, Callable[..., list[dict[str, str]]]] = {
    "chain_sum": _expression_chain,
    "basic_arithmetic": _expression_chain,
    "countdown": _countdown_chain,
    "gsm_symbolic": _gsm_symbolic_chain,
    "gsm8k": _gsm8k_chain,
}


def with_subproblems(
    record: Record, *, k: int, rule: str | None = None
) -> Record:
  """The record with its subproblem chain (module docstring).

  Args:
    record: `{'problem', 'answer', 'metadata', ...}` (a `data.tasks` or
      `data.files` record).
    k: J, the requested chain length (the last subproblem is the problem).
    rule: a key of `RULES`; None uses `record['task']`.

  Returns:
    A new record with `subproblems` (J_i <= J items, the last one the
    problem and answer) and `reference_solution` added.

  Raises:
    ValueError: unknown rule or k < 1.
    UnusableItemError: the record's own answer is inconsistent.
  """
  rule = record.get("task") if rule is None else rule
  if rule not in RULES:
    raise ValueError(f"rule={rule!r}: valid rules are {sorted(RULES)}")
  if k < 1:
    raise ValueError(f"k={k}: must be >= 1")
  chain = RULES[rule](record, k=k)
  chain.append(
      {"statement": record["problem"], "ground_truth": record["answer"]}
  )
  metadata = record.get("metadata", {})
  reference = metadata.get("solution", metadata.get("answer_cot"))
  return {**record, "subproblems": chain, "reference_solution": reference}


def add_subproblems(
    records: Iterable[Record], *, k: int, rule: str | None = None
) -> tuple[list[Record], collections.Counter]:
  """`with_subproblems` over many records, skipping and counting unusable ones.

  Args:
    records: records as `with_subproblems` takes them.
    k: J, the requested chain length.
    rule: a key of `RULES`; None uses each record's `task`.

  Returns:
    (records with chains, Counter of skipped records by reason).
  """
  kept, skipped = [], collections.Counter()
  for record in records:
    try:
      kept.append(with_subproblems(record, k=k, rule=rule))
    except UnusableItemError as e:
      skipped[e.reason] += 1
      logging.log_first_n(
          logging.WARNING, "%s: no subproblem chain, %s", 20,
          record.get("id"), e,
      )
  return kept, skipped
