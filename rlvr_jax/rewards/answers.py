"""Answer extraction and normalization for rewards (METHODS.md section 5).

Pure string functions, linear in the length of their input, so they are safe to
run in the trainer process on arbitrary model output:

- `extract_boxed`: the content of the last top-level `\\boxed{...}` /
  `\\fbox{...}` (balanced, nested braces; escaped `\\{ \\}` are not braces), or
  of the MATH-style `\\boxed 5` form.
- `extract_last_number`: the last plain number in a text, a fallback used only
  when a flag asks for it.
- `gold_answer`: the reference answer of a dataset row (its last box when the
  row stores a full solution).
- `canonical_number` / `normalize_answer`: canonical forms of plain integer and
  decimal strings and of short answers, for exact comparison.
"""

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_LAST_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER = re.compile(r"([-+]?)(\d+(?:,\d{3})*|\d*)(?:\.(\d*))?")
# Characters allowed after the final box for the format reward: whitespace,
# sentence punctuation and the closers of math mode (`$`, `\]`, `\)`, `**`).
_CLOSING_TEXT = re.compile(r"[\s.,;!$*)\]\\]*")
_UNICODE_MINUS = "\u2212"


def _braced_end(text: str, open_index: int) -> int | None:
  """Index just past the brace that closes `text[open_index] == '{'`.

  A backslash escapes the next character, so `\\{` and `\\}` (set braces)
  are not counted.

  Args:
    text: the string to scan.
    open_index: index of an opening brace in `text`.

  Returns:
    The index after the matching closing brace, or None when it is unbalanced.
  """
  depth = 0
  i = open_index
  n = len(text)
  while i < n:
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return i + 1
    i += 1
  return None


def _boxes(text: str) -> tuple[list[tuple[str, int]], bool]:
  """Top-level boxes of `text`, left to right.

  Args:
    text: a model response.

  Returns:
    (boxes, balanced): each box as (stripped content, end index in `text`),
    the content empty for `\\boxed{}` or a bare `\\boxed` at the end;
    `balanced` is False when a box's braces never close (the rest of the text
    is then inside that box, so the scan stops there).
  """
  boxes = []
  pos = 0
  while True:
    match = _BOX_COMMAND.search(text, pos)
    if match is None:
      return boxes, True
    i = match.end()
    while i < len(text) and text[i].isspace():
      i += 1
    if i < len(text) and text[i] == "{":
      end = _braced_end(text, i)
      if end is None:
        return boxes, False
      content = text[i + 1:end - 1]
    else:
      end = i
      while end < len(text) and not text[end].isspace() and text[end] != "$":
        end += 1
      content = text[i:end]
    boxes.append((content.strip(), end))
    pos = end


def extract_boxed(text: str) -> str | None:
  """Content of the last top-level `\\boxed{...}` or `\\fbox{...}` in `text`.

  Nested braces are balanced (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`);
  escaped braces belong to the content (`\\boxed{\\{1,2\\}}` gives
  `\\{1,2\\}`); `\\boxed 5` (MATH's unbraced form) gives the token up to the
  next whitespace or `$`. A box inside a box is part of the outer content.

  **(decision)** When the last box command is malformed (unbalanced braces,
  as in a truncated response, or empty), the result is None rather than an
  earlier box: the final answer the model wrote is unreadable.

  Args:
    text: a model response or a reference solution.

  Returns:
    The stripped box content, or None when there is no well-formed last box.
  """
  boxes, balanced = _boxes(text)
  if not balanced or not boxes or not boxes[-1][0]:
    return None
  return boxes[-1][0]


def has_clean_box(text: str) -> bool:
  """Whether `text` ends in exactly one well-formed box (the format reward).

  **(decision)** True iff the response has exactly one top-level
  `\\boxed{}`/`\\fbox{}`, it is well-formed and non-empty, and only
  whitespace, sentence punctuation or math-mode closers (`$`, `\\]`, `\\)`,
  `**`) follow it. Several boxes (hedging) or text after the box (the model
  kept going after its answer) fail.

  Args:
    text: a model response.

  Returns:
    True when the response has the expected answer format.
  """
  boxes, balanced = _boxes(text)
  if not balanced or len(boxes) != 1 or not boxes[0][0]:
    return False
  return _CLOSING_TEXT.fullmatch(text, boxes[0][1]) is not None


def extract_last_number(text: str) -> str | None:
  """The last plain number in `text` (`-12`, `3.5`, `1,000`), or None.

  Only used when the reward function is told to fall back to it for responses
  without a box.

  Args:
    text: a model response.

  Returns:
    The matched number string as written.
  """
  last = None
  for last in _LAST_NUMBER.finditer(text):
    pass
  return None if last is None else last.group(0)


def gold_answer(answer: str) -> str:
  """The reference answer of a dataset row: its last box, else its text.

  Args:
    answer: the row's answer field (a short answer or a full solution).

  Returns:
    The answer to compare against.
  """
  boxed = extract_boxed(answer)
  return answer.strip() if boxed is None else boxed


def _strip_math(text: str) -> str:
  """Strips whitespace, a final period, surrounding `$`, LaTeX thin spaces."""
  text = text.strip()
  if text.endswith(".") and not text.endswith(".."):
    text = text[:-1]
  text = text.strip().strip("$").strip()
  return text.replace("\\!", "").replace("\\,", "").replace("{,}", ",")


def canonical_number(text: str) -> str | None:
  """Canonical decimal string of a plain integer or decimal, else None.

  Accepts an optional sign (`+`, `-`, U+2212), thousands separators in
  groups of three (`1,000`, LaTeX `1{,}000`), a decimal point, surrounding
  `$` and whitespace, and a final period. The canonical form has no `+`,
  no leading zeros, no trailing fractional zeros and no `-0`:
  `' +001,000.50 '` -> `'1000.5'`, `'-0.0'` -> `'0'`, `'7.'` -> `'7'`.
  Two plain numbers are equal iff their canonical strings are equal; no
  conversion to int or float happens, so a 100k-digit string costs only a
  linear scan.

  Args:
    text: a short answer string.

  Returns:
    The canonical string, or None when `text` is not a plain number.
  """
  text = _strip_math(text).replace(_UNICODE_MINUS, "-")
  match = _PLAIN_NUMBER.fullmatch(text)
  if match is None:
    return None
  sign, integer, fraction = match.group(1), match.group(2), match.group(3)
  fraction = fraction or ""
  if not integer and not fraction:
    return None
  integer = integer.replace(",", "").lstrip("0") or "0"
  fraction = fraction.rstrip("0")
  body = integer + ("." + fraction if fraction else "")
  return body if sign != "-" or body == "0" else "-" + body


def normalize_answer(text: str) -> str:
  """Normalized form of a short answer for exact comparison.

  Plain numbers go to `canonical_number`; anything else is stripped of
  surrounding whitespace, a final period and surrounding `$`, with internal
  whitespace collapsed to single spaces. Case is kept (answers such as `A`
  vs `a` or chemical symbols differ by case).

  Args:
    text: a short answer string.

  Returns:
    The normalized string.
  """
  number = canonical_number(text)
  if number is not None:
    return number
  return " ".join(_strip_math(text).split())
