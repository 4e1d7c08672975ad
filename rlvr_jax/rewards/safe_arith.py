"""Exact arithmetic on model text without running it (METHODS.md section 5).

Some reasoning-gym scorers (countdown, puzzle24) hand the model's answer to
`sympy.parse_expr`, which runs it through Python's `eval`: a boxed
`__import__('os').system(...)` would run on the training host. `evaluate`
gives those scorers the value of an arithmetic expression instead, parsed
with `ast` and walked over a whitelist of node types:

- numbers: int and float literals (a float literal is read exactly from its
  text, `0.1` is 1/10); leading zeros (`05`) are allowed as sympy allows them;
- binary `+ - * /`, unary `-` and `+`, parentheses.

Everything else (names, calls, attributes, subscripts, `**`, `^`, `%`, `//`,
lambdas, comprehensions, f-strings, strings, comparisons) is refused with
`UnsafeExpressionError`; so is text longer than `MAX_CHARS` or nested deeper
than `MAX_DEPTH`. Without `**` the value of an expression of at most
`MAX_CHARS` characters has at most about `MAX_CHARS` digits, so no answer can
make the evaluation slow or large. Nothing is ever evaluated by Python.
"""

import ast
import fractions
import re

MAX_CHARS = 1000
MAX_DEPTH = 500

_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class UnsafeExpressionError(ValueError):
  """The text is not a plain arithmetic expression (and was not run)."""


def evaluate(text: str) -> fractions.Fraction:
  """The exact value of an arithmetic expression (module docstring).

  Args:
    text: the expression, e.g. '(25 - 5) * 3 / 4'.

  Returns:
    Its value as a Fraction.

  Raises:
    UnsafeExpressionError: the text is too long, nested too deeply, not valid
      syntax, or holds anything outside the whitelist.
    ZeroDivisionError: a division by zero.
  """
  if not isinstance(text, str):
    raise UnsafeExpressionError(f"not a string: {type(text).__name__}")
  if len(text) > MAX_CHARS:
    raise UnsafeExpressionError(
        f"{len(text)} characters > MAX_CHARS={MAX_CHARS}")
  # Python's parser rejects `05`; sympy reads it as 5.
  source = _LEADING_ZEROS.sub("", text.strip())
  try:
    tree = ast.parse(source, mode="eval")
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    raise UnsafeExpressionError(f"not an expression: {type(e).__name__}") from e
  return _value(tree.body, depth=0)


def _value(node: ast.AST, *, depth: int) -> fractions.Fraction:
  """Walks the whitelisted nodes; raises on any other."""
  if depth > MAX_DEPTH:
    raise UnsafeExpressionError(f"nested deeper than MAX_DEPTH={MAX_DEPTH}")
  if isinstance(node, ast.Constant):
    if type(node.value) is int:  # not bool, a subclass of int
      return fractions.Fraction(node.value)
    if type(node.value) is float:
      # The shortest repr of the parsed float: 0.1 is 1/10, not 2^-55 * ...
      try:
        return fractions.Fraction(repr(node.value))
      except ValueError as e:  # inf from a literal such as 1e999
        raise UnsafeExpressionError(f"float literal {node.value}") from e
    raise UnsafeExpressionError(
        f"constant of type {type(node.value).__name__}")
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    return _BINARY[type(node.op)](_value(node.left, depth=depth + 1),
                                  _value(node.right, depth=depth + 1))
  if isinstance(node, ast.UnaryOp) and isinstance(node.op,
                                                  (ast.USub, ast.UAdd)):
    operand = _value(node.operand, depth=depth + 1)
    return -operand if isinstance(node.op, ast.USub) else operand
  raise UnsafeExpressionError(f"{type(node).__name__} is not arithmetic")
