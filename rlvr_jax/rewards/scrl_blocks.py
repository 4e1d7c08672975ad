"""SCRL rewards on the host: block parsing, per-block checks, token spans.

A curriculum response answers J_i subproblems in blocks `<p1>...</p1>` ...
`<pK>...</pK>` (METHODS.md 3). This module turns the decoded responses of a
rollout batch into the arrays `algorithms.scrl` consumes:

1. `parse_blocks`: the strict format check. Well-formed means the tags
   `<p1>`, `</p1>`, ..., `<pK>`, `</pK>` each occur exactly once, in that
   order, and no other `<pn>`/`</pn>` tag occurs (n with no leading zero:
   `<p01>` is an extra tag, not `<p1>`); each block holds a
   well-formed, non-empty `\\boxed{}` (`answers.extract_boxed` of the block).
   **(decision)** Text outside the blocks (before `<p1>`, between blocks,
   after `</pK>`) is allowed; its tokens get advantage 0.
2. `block_rewards`: r(j) = 1 if `check(last boxed answer of block j,
   ground_truth(j))` gives full credit (>= 1), else 0, so a scorer's partial
   credit is not a solve. A malformed response gets r = 0 everywhere.
3. `prefix_rule`: R(j) = r(j) for j <= k, 0 after, with k the length of the
   solved prefix ([1,1,0,1] -> [1,1,0,0]; [0,1,1,1] -> [0,0,0,0]).
4. `token_char_offsets` + `span_index`: the span of block j runs from the
   first character of `<pj>` to the last of `</pj>`; a token belongs to it
   when its characters overlap the span. Offsets come from decoding growing
   prefixes of the response (in a short sliding window, as streaming
   detokenizers do), so a tag split over several tokens, a token that joins a
   tag to neighbouring text, and byte-level tokens holding part of a
   multi-byte character are all handled.

`score_curriculum` runs all four over the curriculum rows of a batch.
"""

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from rlvr_jax.rewards import answers

_TAG = re.compile(r"<(/?)p(\d+)>")
# What a decoder gives for bytes that do not (yet) form a whole character.
_REPLACEMENT = "\ufffd"

Checker = Callable[[str, str], float]
Decoder = Callable[[Sequence[int]], str]


@dataclasses.dataclass(frozen=True)
class ParsedBlocks:
  """The blocks of one curriculum response.

  Attributes:
    answers: the last boxed answer of each block, J_i strings; empty when
      the response is malformed.
    spans: [start, end) character span of each block, `<pj>` through
      `</pj>`; empty when the response is malformed.
    error: why the response is malformed, `'<category>: <detail>'` with
      category one of `MALFORMED`; None when well-formed.
  """

  answers: tuple[str, ...]
  spans: tuple[tuple[int, int], ...]
  error: str | None


MALFORMED = (
    "extra block", "unclosed block", "missing block", "wrong order", "no box"
)


def _malformed(category: str, detail: str) -> ParsedBlocks:
  return ParsedBlocks(answers=(), spans=(), error=f"{category}: {detail}")


def parse_blocks(text: str, *, k: int) -> ParsedBlocks:
  """Splits a curriculum response into its J blocks (module docstring, 1).

  Errors are reported in the order of `MALFORMED`: a tag numbered outside
  1..k, with a leading zero (`<p01>`) or repeated ('extra block'); an opening tag with no closing tag
  after it, as in a truncated response ('unclosed block'); a block with no
  opening tag ('missing block'); all tags present once but not in the order
  `<p1></p1><p2></p2>...` ('wrong order', which includes nesting); a block
  without a boxed answer ('no box').

  Args:
    text: the decoded response.
    k: J_i, the number of blocks the prompt asked for.

  Returns:
    The parsed blocks.
  """
  if k < 1:
    raise ValueError(f"k={k}: must be >= 1")
  tags = [(m.group(1) == "/", int(m.group(2)), m) for m in _TAG.finditer(text)]
  seen: dict[tuple[bool, int], re.Match[str]] = {}
  for closing, j, match in tags:
    if match.group(2) != str(j):
      return _malformed(
          "extra block", f"{match.group(0)}: block numbers have no leading 0"
      )
    if not 1 <= j <= k:
      return _malformed(
          "extra block", f"{match.group(0)} but {k} blocks were asked for"
      )
    if (closing, j) in seen:
      return _malformed("extra block", f"{match.group(0)} occurs twice")
    seen[(closing, j)] = match
  for j in range(1, k + 1):
    opening, closing = seen.get((False, j)), seen.get((True, j))
    if opening is not None and (
        closing is None or closing.start() < opening.end()
    ):
      return _malformed("unclosed block", f"<p{j}> is not closed after it")
  for j in range(1, k + 1):
    if (False, j) not in seen:
      return _malformed("missing block", f"no <p{j}>")
  expected = [(c, j) for j in range(1, k + 1) for c in (False, True)]
  if [(closing, j) for closing, j, _ in tags] != expected:
    order = "".join(m.group(0) for _, _, m in tags)
    return _malformed("wrong order", f"tags in the order {order}")
  block_answers, spans = [], []
  for j in range(1, k + 1):
    opening, closing = seen[(False, j)], seen[(True, j)]
    answer = answers.extract_boxed(text[opening.end():closing.start()])
    if answer is None:
      return _malformed("no box", f"block {j} has no well-formed \\boxed{{}}")
    block_answers.append(answer)
    spans.append((opening.start(), closing.end()))
  return ParsedBlocks(
      answers=tuple(block_answers), spans=tuple(spans), error=None
  )


def block_rewards(
    parsed: ParsedBlocks, ground_truths: Sequence[str], check: Checker
) -> np.ndarray:
  """Raw per-block rewards r (module docstring, 2).

  Args:
    parsed: the response's blocks.
    ground_truths: J_i ground truths, one per subproblem.
    check: `check(pred, gold) -> float`, the trainer's answer checker.

  Returns:
    [J_i] float32 of 0/1; all zeros when `parsed` is malformed.
  """
  r = np.zeros(len(ground_truths), np.float32)
  if parsed.error is None:
    if len(parsed.answers) != len(ground_truths):
      raise ValueError(
          f"parsed has {len(parsed.answers)} blocks, ground_truths"
          f" {len(ground_truths)}"
      )
    for j, (pred, gold) in enumerate(zip(parsed.answers, ground_truths)):
      r[j] = float(check(pred, gold) >= 1.0)
  return r


def prefix_rule(r: np.ndarray) -> np.ndarray:
  """R(j) = r(j) up to the first unsolved block, 0 from there on.

  Args:
    r: [..., J] 0/1 per-block rewards.

  Returns:
    [..., J] float32: the cumulative product along the last axis.
  """
  solved = np.asarray(r, np.float32) >= 1.0
  return np.cumprod(solved, axis=-1).astype(np.float32)


def token_char_offsets(
    token_ids: Sequence[int], decode: Decoder
) -> tuple[str, np.ndarray, np.ndarray]:
  """The decoded text and the [start, end) characters of every token.

  With D_t the decoding of tokens 0..t and S_t its length without trailing
  U+FFFD (characters still incomplete after token t), token t covers
  characters [S_{t-1}, S_t), plus character S_t when D_t ends incomplete
  (the token holds leading bytes of it). A token that decodes to nothing
  (a skipped special token) covers no character.

  D_t is not recomputed from token 0: it is the committed text plus the
  decoding of a window starting one committed chunk back, minus the
  decoding of that chunk (how streaming detokenizers keep decoders that
  strip a leading space or merge bytes consistent). A window is committed
  when its decoding ends in a complete character.

  Args:
    token_ids: [T] the response tokens (no padding).
    decode: ids -> text, e.g. `functools.partial(tokenizer.decode,
      skip_special_tokens=True)`.

  Returns:
    (text, starts [T] int32, ends [T] int32); text is the decoding of all
    tokens.
  """
  ids = list(token_ids)
  T = len(ids)
  starts = np.zeros(T, np.int32)
  ends = np.zeros(T, np.int32)
  committed = ""  # D_{read - 1}
  window = 0  # first token of the decoding window
  read = 0  # tokens before `read` are in `committed`
  window_prefix = ""  # decode(ids[window:read])
  stable = 0  # S_{t-1}
  text = ""
  for t in range(T):
    decoded = decode(ids[window:t + 1])
    text = committed + decoded[len(window_prefix):]
    complete = text.rstrip(_REPLACEMENT)
    starts[t] = stable
    ends[t] = len(complete) + (len(complete) < len(text))
    stable = len(complete)
    if len(complete) == len(text):
      committed = text
      window, read = read, t + 1
      window_prefix = decode(ids[window:read])
  return text, starts, ends


def span_index(
    spans: Sequence[tuple[int, int]],
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    length: int,
) -> np.ndarray:
  """The block index of every token, from character spans.

  Token t belongs to block j when [starts[t], ends[t]) overlaps spans[j].
  **(decision)** A token overlapping two blocks (one token holding the end of
  `</pj>` and the start of `<pj+1>`) belongs to the earlier block.

  Args:
    spans: [start, end) character span of each block.
    starts: [T] first character of each token.
    ends: [T] one past the last character of each token.
    length: the padded response length (>= T).

  Returns:
    [length] int32: j in 0..J_i-1, or -1 outside every block and on padding.
  """
  T = starts.shape[0]
  if ends.shape != (T,) or length < T:
    raise ValueError(
        f"starts {starts.shape} and ends {ends.shape} must both be [T] with"
        f" T <= length={length}"
    )
  index = np.full(length, -1, np.int32)
  for j in reversed(range(len(spans))):
    first, last = spans[j]
    overlaps = (starts < last) & (ends > first)
    index[:T][overlaps] = j
  return index


@dataclasses.dataclass(frozen=True)
class CurriculumScores:
  """Host-side SCRL results for the curriculum rows of a batch.

  Attributes:
    raw: [B, J] float32 r before the prefix rule, 0 on positions j >= J_i.
    rewards: [B, J] float32 R after the prefix rule.
    malformed: [B] bool.
    errors: B entries, the reason a row is malformed or None.
    span_index: [B, T] int32 block index per token, -1 outside blocks, on
      padding and on every token of a malformed row.
    texts: B decoded responses.
  """

  raw: np.ndarray
  rewards: np.ndarray
  malformed: np.ndarray
  errors: list[str | None]
  span_index: np.ndarray
  texts: list[str]


def score_curriculum(
    token_ids: np.ndarray,
    response_mask: np.ndarray,
    ground_truths: Sequence[Sequence[str]],
    *,
    k: int,
    decode: Decoder,
    check: Checker,
) -> CurriculumScores:
  """Parses, checks and maps to tokens a batch of curriculum responses.

  Args:
    token_ids: [B, T] response tokens, right-padded.
    response_mask: [B, T] m, 1 on generated tokens (a prefix of each row).
    ground_truths: B lists, row b's K_b <= k subproblem ground truths.
    k: J, the padded number of positions.
    decode: ids -> text (see `token_char_offsets`).
    check: `check(pred, gold) -> float`, the trainer's answer checker.

  Returns:
    The scores; see `CurriculumScores`.
  """
  B, T = token_ids.shape
  if response_mask.shape != (B, T) or len(ground_truths) != B:
    raise ValueError(
        f"token_ids {token_ids.shape}, response_mask {response_mask.shape} and"
        f" ground_truths (len {len(ground_truths)}) must agree on [B, T]"
    )
  raw = np.zeros((B, k), np.float32)
  malformed = np.zeros(B, bool)
  index = np.full((B, T), -1, np.int32)
  errors, texts = [], []
  lengths = np.asarray(response_mask).sum(axis=1).astype(int)
  for b in range(B):
    k_b = len(ground_truths[b])
    if not 1 <= k_b <= k:
      raise ValueError(
          f"ground_truths[{b}] has {k_b} entries; must be in 1..k={k}"
      )
    ids = token_ids[b, :lengths[b]].tolist()
    text, starts, ends = token_char_offsets(ids, decode)
    parsed = parse_blocks(text, k=k_b)
    raw[b, :k_b] = block_rewards(parsed, ground_truths[b], check)
    malformed[b] = parsed.error is not None
    index[b] = span_index(parsed.spans, starts, ends, length=T)
    errors.append(parsed.error)
    texts.append(text)
  return CurriculumScores(
      raw=raw,
      rewards=prefix_rule(raw),
      malformed=malformed,
      errors=errors,
      span_index=index,
      texts=texts,
  )
