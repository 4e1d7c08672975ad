"""The tool-call and final-answer formats the model writes; their parsers.

METHODS.md section 8. A tool call is one JSON object inside one tagged block,
anywhere in the model's turn (text before or after it is the model's own
reasoning and is ignored):

  <tool_call>{"name": "view_product", "arguments": {"id": "P07"}}</tool_call>

`parse_tool_call` checks the block against the environment's `ToolSpec`s and
returns either a `ToolCall` or a `ToolError` whose message is the observation
the environment sends back. It never raises on model output: no block, several
blocks, nested or unclosed tags, a block over `max_call_chars`, bad JSON
(including JSON nested deeper than Python's recursion limit), a value that is
not {"name": str, "arguments": object}, an unknown tool, a missing, unknown or
wrong-typed argument and a string argument over `max_arg_chars` are all
errors. Types are strict: an "integer" argument must be a JSON integer (not
2.0, "2" or true); a "number" accepts integers and floats but not booleans.

The final answer of a one-turn task is the project's boxed format,
`\\boxed{answer}` (`rlvr_jax.rewards.answers.extract_boxed`).
"""

import dataclasses
import json
from typing import Any, Mapping, Sequence

from rlvr_jax.rewards import answers

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# JSON type names of `Param.type` and the Python types a parsed value may have.
# bool is a subclass of int in Python, so it is excluded explicitly below.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
# Longest error excerpt of model text quoted back in an observation.
_QUOTE_CHARS = 40


@dataclasses.dataclass(frozen=True)
class Param:
  """One argument of a tool.

  Attributes:
    type: a JSON type name: 'string', 'integer', 'number' or 'boolean'.
    description: a few words for the tool list shown to the model.
    required: whether a call must give it.
  """
  type: str
  description: str
  required: bool = True

  def __post_init__(self):
    if self.type not in _JSON_TYPES:
      raise ValueError(f"type must be one of {sorted(_JSON_TYPES)}, "
                       f"got {self.type!r}")


@dataclasses.dataclass(frozen=True)
class ToolSpec:
  """A tool the environment offers.

  Attributes:
    name: the name the model writes in "name".
    description: one line for the tool list shown to the model.
    params: argument name -> `Param`, in the order shown to the model.
  """
  name: str
  description: str
  params: Mapping[str, Param] = dataclasses.field(default_factory=dict)

  def signature(self) -> str:
    """E.g. 'add_to_cart(id: string, qty: integer)'; optional: 'min_price?'."""
    args = ", ".join(f"{k}{'' if p.required else '?'}: {p.type}"
                     for k, p in self.params.items())
    return f"{self.name}({args})"


@dataclasses.dataclass(frozen=True)
class ToolCall:
  """A well-formed call of a known tool with checked arguments."""
  name: str
  arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ToolError:
  """A malformed call; `message` is the observation sent back to the model."""
  message: str


def _quote(text: str) -> str:
  """A short excerpt of model text for an error message."""
  text = " ".join(text.split())
  if len(text) <= _QUOTE_CHARS:
    return repr(text)
  return repr(text[:_QUOTE_CHARS]) + "..."


def describe_tools(specs: Sequence[ToolSpec]) -> str:
  """The tool list and call format shown to the model, one tool a line.

  Args:
    specs: the environment's tools.

  Returns:
    A deterministic multi-line text.
  """
  lines = ["Call exactly one tool per turn, written as "
           f'{TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}'
           f"{TOOL_CALL_CLOSE}. Tools:"]
  lines += [f"- {s.signature()}: {s.description}" for s in specs]
  return "\n".join(lines)


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
  """The text of a well-formed call (for prompts, few-shot turns and tests)."""
  body = json.dumps({"name": name, "arguments": dict(arguments)},
                    separators=(", ", ": "))
  return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _check_arguments(spec: ToolSpec, arguments: dict[str, Any], *,
                     max_arg_chars: int) -> str | None:
  """The error message for bad arguments of `spec`, or None if they are fine."""
  unknown = sorted(set(arguments) - set(spec.params))
  if unknown:
    return (f"error: {spec.name} has no argument {unknown[0]!r}; "
            f"usage: {spec.signature()}")
  for key, param in spec.params.items():
    if key not in arguments:
      if param.required:
        return (f"error: {spec.name} needs argument {key!r}; "
                f"usage: {spec.signature()}")
      continue
    value = arguments[key]
    ok = isinstance(value, _JSON_TYPES[param.type]) and (
        param.type == "boolean" or not isinstance(value, bool))
    if not ok:
      return (f"error: argument {key!r} of {spec.name} must be a "
              f"{param.type}, got {type(value).__name__} "
              f"{_quote(json.dumps(value))}")
    if isinstance(value, str) and len(value) > max_arg_chars:
      return (f"error: argument {key!r} of {spec.name} has {len(value)} "
              f"characters; at most {max_arg_chars}")
  return None


def parse_tool_call(text: str, specs: Sequence[ToolSpec], *,
                    max_call_chars: int = 1000,
                    max_arg_chars: int = 100) -> ToolCall | ToolError | None:
  """Parses the single tool call of a model turn; never raises on `text`.

  Args:
    text: the model's whole turn (decoded text).
    specs: the environment's tools.
    max_call_chars: a block longer than this (between the tags) is an error
      before any JSON parsing, so megabyte outputs cost nothing.
    max_arg_chars: longest string argument accepted.

  Returns:
    None when the turn has no tool-call tag at all (the environment decides
    what that means, e.g. a final answer); a `ToolCall` for one well-formed
    call; otherwise a `ToolError` with the observation to send back.

  Raises:
    ValueError: when `max_call_chars` or `max_arg_chars` is below 1 (a
      programming error, not model output).
  """
  if max_call_chars < 1 or max_arg_chars < 1:
    raise ValueError(f"max_call_chars ({max_call_chars}) and max_arg_chars "
                     f"({max_arg_chars}) must be >= 1")
  if not isinstance(text, str):
    return ToolError("error: the turn is not text")
  opens = text.count(TOOL_CALL_OPEN)
  closes = text.count(TOOL_CALL_CLOSE)
  if opens == 0 and closes == 0:
    return None
  start = text.find(TOOL_CALL_OPEN)
  end = text.find(TOOL_CALL_CLOSE)
  if opens > 1 or closes > 1:
    second_open = text.find(TOOL_CALL_OPEN, start + len(TOOL_CALL_OPEN))
    if 0 <= second_open < end:
      return ToolError(f"error: nested {TOOL_CALL_OPEN} tags; write one call")
    return ToolError(f"error: {max(opens, closes)} tool calls in one turn; "
                     "write exactly one")
  if opens == 0 or closes == 0 or end < start:
    return ToolError(f"error: a tool call must start with {TOOL_CALL_OPEN} "
                     f"and end with {TOOL_CALL_CLOSE}")
  body = text[start + len(TOOL_CALL_OPEN):end]
  if len(body) > max_call_chars:
    return ToolError(f"error: tool call of {len(body)} characters; at most "
                     f"{max_call_chars}")
  try:
    value = json.loads(body)
  except (ValueError, RecursionError) as e:
    detail = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
    return ToolError(f"error: the tool call is not valid JSON ({detail}): "
                     f"{_quote(body)}")
  if (not isinstance(value, dict) or set(value) != {"name", "arguments"}
      or not isinstance(value["name"], str)
      or not isinstance(value["arguments"], dict)):
    return ToolError('error: a tool call must be {"name": <string>, '
                     '"arguments": {...}}')
  by_name = {s.name: s for s in specs}
  spec = by_name.get(value["name"])
  if spec is None:
    return ToolError(f"error: unknown tool {_quote(value['name'])}; tools: "
                     f"{', '.join(by_name)}")
  message = _check_arguments(spec, value["arguments"],
                             max_arg_chars=max_arg_chars)
  if message is not None:
    return ToolError(message)
  return ToolCall(name=spec.name, arguments=dict(value["arguments"]))


def parse_final_answer(text: str, *, max_answer_chars: int = 1000
                       ) -> str | None:
  """The final answer of a turn: its last `\\boxed{...}`; never raises.

  Args:
    text: the model's whole turn.
    max_answer_chars: an answer longer than this counts as none.

  Returns:
    The boxed content, or None when there is no box, or it is too long.
  """
  if not isinstance(text, str):
    return None
  pred = answers.extract_boxed(text)
  if pred is None or len(pred) > max_answer_chars:
    return None
  return pred
