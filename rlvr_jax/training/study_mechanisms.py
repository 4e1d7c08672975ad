r"""The study's mechanism measurements, one per paper, on host numpy arrays.

- DelTA (METHODS.md 2): the mean coefficient c~ by token class. Each response
  token is classed by its text (`token_classes`): the answer inside
  `\boxed{...}`, digits and arithmetic operators, formatting / template
  tokens (no letter or digit: whitespace, punctuation, LaTeX markup; the
  `\boxed{`, `}` markup itself; a few template words), and everything else.
  The paper's claim: high-frequency formatting tokens are down-weighted,
  discriminative ones up-weighted. `delta_class_metrics` gives the trainer's
  per-step `delta/coef_mean/<class>` keys.
- SCRL (METHODS.md 3): `prefix_rule_shares` (per step, the share of
  curriculum responses the prefix rule leaves whole or cuts) and
  `position_accuracy` (solve rate per subproblem position on held-out
  curriculum prompts).
- RELEX (METHODS.md 4): `relative_distance` of an extrapolated checkpoint to
  the real one, relative to the real change from the base model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from rlvr_jax.rewards import scrl_blocks

TOKEN_CLASSES = ("format", "digits_ops", "answer", "other")
_FORMAT, _DIGITS_OPS, _ANSWER, _OTHER = range(len(TOKEN_CLASSES))
# Characters of arithmetic; a token made only of these (and spaces, with at
# least one digit or operator) is a digits/operators token.
_ARITHMETIC = frozenset("0123456789+-*/=×÷^().")
_DIGIT_OR_OPERATOR = frozenset("0123456789+-*/=×÷^")
# Words of the prompt templates and answer format (lowercase, letters only).
TEMPLATE_WORDS = frozenset({"boxed", "answer", "final", "question"})
_BOX = "\\boxed{"

Decoder = Callable[[Sequence[int]], str]


def _box_spans(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
  r"""[start, end) of every `\boxed{...}` interior and of its markup characters."""
  interiors, markup = [], []
  start = text.find(_BOX)
  while start >= 0:
    open_end = start + len(_BOX)
    depth, close = 1, None
    for i in range(open_end, len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        close = i
        break
    if close is None:  # An unclosed box: its interior runs to the end.
      interiors.append((open_end, len(text)))
      markup.append((start, open_end))
      break
    interiors.append((open_end, close))
    markup += [(start, open_end), (close, close + 1)]
    start = text.find(_BOX, close + 1)
  return interiors, markup


def _overlaps(s: int, e: int, spans: Sequence[tuple[int, int]]) -> bool:
  return any(s < b and a < e for a, b in spans)


def classify_piece(piece: str, *, in_answer: bool, in_markup: bool) -> int:
  """The class index (into TOKEN_CLASSES) of one token's text.

  Order: answer (any character inside a box) > digits/operators (non-space
  characters all in digits, `+-*/=×÷^().`, at least one digit or operator) >
  format (box markup, no letter or digit at all, or a TEMPLATE_WORDS word) >
  other.

  Args:
    piece: the token's characters in the decoded response.
    in_answer: the token overlaps a box interior.
    in_markup: the token overlaps `\\boxed{` or the box's closing brace.

  Returns:
    0 format, 1 digits_ops, 2 answer, 3 other.
  """
  if in_answer:
    return _ANSWER
  chars = set(piece) - set(" \t\n")
  if chars and chars <= _ARITHMETIC and chars & _DIGIT_OR_OPERATOR:
    return _DIGITS_OPS
  if in_markup or not any(ch.isalnum() for ch in piece):
    return _FORMAT
  word = "".join(ch for ch in piece if ch.isalpha()).lower()
  if word in TEMPLATE_WORDS and not any(ch.isdigit() for ch in piece):
    return _FORMAT
  return _OTHER


def token_classes(token_ids: np.ndarray, response_mask: np.ndarray, *,
                  decode: Decoder) -> np.ndarray:
  """The class of every response token (TOKEN_CLASSES index; -1 on padding).

  Characters come from `scrl_blocks.token_char_offsets` (the same decoding
  SCRL uses for its spans), so a token split across characters or a box
  whose braces share a token with text is classed by the characters it
  covers.

  Args:
    token_ids: [B, T] response token ids, right-padded.
    response_mask: [B, T] m; a prefix of each row.
    decode: ids -> text, e.g. `functools.partial(tokenizer.decode,
      skip_special_tokens=True)`.

  Returns:
    [B, T] int32 class indices, -1 where m = 0.
  """
  token_ids = np.asarray(token_ids)
  mask = np.asarray(response_mask)
  if token_ids.ndim != 2 or mask.shape != token_ids.shape:
    raise ValueError(f"token_ids {token_ids.shape} and response_mask {mask.shape} must be "
                     "the same [B, T].")
  B, _ = token_ids.shape
  classes = np.full(token_ids.shape, -1, np.int32)
  lengths = (mask > 0).sum(axis=1)
  for b in range(B):
    text, starts, ends = scrl_blocks.token_char_offsets(token_ids[b, :lengths[b]].tolist(),
                                                        decode)
    interiors, markup = _box_spans(text)
    for t, (s, e) in enumerate(zip(starts, ends)):
      classes[b, t] = classify_piece(text[s:e], in_answer=_overlaps(s, e, interiors),
                                     in_markup=_overlaps(s, e, markup))
  return classes


def class_coefficient_metrics(coef: np.ndarray, response_mask: np.ndarray,
                              advantages: np.ndarray, classes: np.ndarray
                              ) -> dict[str, float]:
  """Mean DelTA coefficient c~ per token class (METHODS.md 2, step 8's c~).

  Over the tokens with m > 0 and A != 0 (A = 0 tokens all get lam_min, the
  same for every class): for class k,
    delta/coef_mean/<k>     = mean c~ over its tokens,
    delta/coef_mean_pos/<k> = mean c~ over its tokens with A > 0,
    delta/coef_mean_neg/<k> = mean c~ over its tokens with A < 0,
    delta/tokens/<k>        = its number of tokens (to pool steps).
  A mean over no tokens is left out.

  Args:
    coef: [B, T] c~.
    response_mask: [B, T] m.
    advantages: [B, T] or [B] advantages (only the sign is read).
    classes: [B, T] TOKEN_CLASSES indices (`token_classes`).

  Returns:
    Flat dict of floats.
  """
  coef = np.asarray(coef, np.float32)
  mask = np.asarray(response_mask) > 0
  adv = np.asarray(advantages, np.float32)
  if adv.shape == coef.shape[:1]:
    adv = np.broadcast_to(adv[:, None], coef.shape)
  classes = np.asarray(classes)
  if coef.ndim != 2 or mask.shape != coef.shape or adv.shape != coef.shape or (
      classes.shape != coef.shape):
    raise ValueError(f"coef {coef.shape}, response_mask {mask.shape}, advantages "
                     f"{np.shape(advantages)} and classes {classes.shape} must be [B, T] "
                     "(advantages may be [B]).")
  out = {}
  for k, name in enumerate(TOKEN_CLASSES):
    chosen = mask & (classes == k)
    for key, sel in (("coef_mean", chosen & (adv != 0)), ("coef_mean_pos", chosen & (adv > 0)),
                     ("coef_mean_neg", chosen & (adv < 0))):
      if sel.any():
        out[f"delta/{key}/{name}"] = float(coef[sel].mean())
    out[f"delta/tokens/{name}"] = float(np.sum(chosen & (adv != 0)))
  return out


def delta_class_metrics(coef: np.ndarray, response_mask: np.ndarray, advantages: np.ndarray,
                        token_ids: np.ndarray, *, decode: Decoder) -> dict[str, float]:
  """`class_coefficient_metrics` with the classes of `token_classes` ([B, T] inputs)."""
  return class_coefficient_metrics(coef, response_mask, advantages,
                                   token_classes(token_ids, response_mask, decode=decode))


def prefix_rule_shares(raw: np.ndarray, rewards: np.ndarray) -> dict[str, float]:
  """Shares of curriculum responses by what SCRL's prefix rule did to them.

  r is the per-block verdict, R = r on the solved prefix and 0 after it
  (METHODS.md 3). A response passes the rule when it solved at least one
  block and the rule removed nothing (R = r: every solved block is in the
  solved prefix); the rule cuts it when R != r (a block solved after an
  unsolved one). The rest solved nothing (malformed responses included).

  Args:
    raw: [N, J] r of N curriculum responses (0 past a chain's length).
    rewards: [N, J] R.

  Returns:
    {'scrl/prefix_pass_frac', 'scrl/prefix_cut_frac'} over the N responses.
  """
  raw = np.asarray(raw, np.float32)
  rewards = np.asarray(rewards, np.float32)
  if raw.ndim != 2 or raw.shape != rewards.shape:
    raise ValueError(f"raw {raw.shape} and rewards {rewards.shape} must be the same [N, J].")
  same = np.all(raw == rewards, axis=1)
  solved = np.any(raw > 0, axis=1)
  return {"scrl/prefix_pass_frac": float(np.mean(same & solved)) if len(raw) else 0.0,
          "scrl/prefix_cut_frac": float(np.mean(~same)) if len(raw) else 0.0}


def position_accuracy(scores: np.ndarray, chain_lengths: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
  """Solve rate per subproblem position, over the problems that have it.

  accuracy[j] = sum_q scores[q, j] [j < J_q] / #{q : j < J_q}, as a (sum,
  count) pair so that seeds pool.

  Args:
    scores: [Q, J] r or R per position of Q curriculum responses.
    chain_lengths: [Q] J_q in 1..J.

  Returns:
    (sums [J], counts [J]) float64.
  """
  scores = np.asarray(scores, np.float64)
  lengths = np.asarray(chain_lengths)
  if scores.ndim != 2 or lengths.shape != scores.shape[:1]:
    raise ValueError(f"scores {scores.shape} must be [Q, J] and chain_lengths "
                     f"{lengths.shape} [Q].")
  if np.any(lengths < 1) or np.any(lengths > scores.shape[1]):
    raise ValueError(f"chain_lengths must be in 1..{scores.shape[1]}, got {lengths}.")
  present = np.arange(scores.shape[1])[None, :] < lengths[:, None]
  return (scores * present).sum(axis=0), present.sum(axis=0).astype(np.float64)


def relative_distance(predicted: Any, real: Any, base: Any) -> float:
  """||theta* - theta_T|| / ||theta_T - theta_0|| over every parameter (METHODS.md 4).

  The same denominator for every fit window (the real change from the base
  model), so windows that start at different steps compare directly.

  Args:
    predicted: theta*, a pytree of arrays (the extrapolated checkpoint).
    real: theta_T, the same tree (the real final checkpoint).
    base: theta_0, the same tree (step 0).

  Returns:
    The ratio, accumulated in float64 on the host (NaN when theta_T = theta_0).
  """
  num, den = 0.0, 0.0
  for p, r, b in zip(jax.tree.leaves(predicted), jax.tree.leaves(real),
                     jax.tree.leaves(base), strict=True):
    p, r, b = (np.asarray(x, np.float64) for x in (p, r, b))
    if not p.shape == r.shape == b.shape:
      raise ValueError(f"parameter shapes differ: {p.shape}, {r.shape}, {b.shape}.")
    num += float(np.sum((p - r) ** 2))
    den += float(np.sum((r - b) ** 2))
  return float(np.sqrt(num / den)) if den > 0 else float("nan")
