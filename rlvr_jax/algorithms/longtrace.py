"""LongTraceRL: a rubric bonus only correct answers collect (METHODS.md 6.4).

LongTraceRL (arXiv 2605.31584; THU-KEG/LongTraceRL) rewards naming the gold
intermediate entities of a reasoning trace, but only in a correct response:

  r_rub[i] = fraction of the gold entities found in response i
  r~_rub[i] = r_rub[i] / max_{k in group(i)} r_rub[k]   (r_rub[i] when max = 0)
  R[i] = 0 if response i is wrong, else (1 - eta) + eta r~_rub[i]

`entity_fraction` / `rubric_fractions` compute r_rub on the host from text;
`gated_rewards` is the jitted gate. With SCRL data the subproblem answers are
the gold entities.

Decisions where METHODS.md 6.4 is silent:
- Normalization (both sides): lower case, every Unicode punctuation character
  removed (so "3,000" matches "3000" and "U.S." matches "us"), runs of
  whitespace collapsed to one space. Matching is a plain substring test, as
  METHODS.md says, so the entity "12" is found in "120".
- An entity that normalizes to "" is dropped (it would match any text); with
  no entity left, r_rub = 0.
- The group maximum runs over all G rollouts, correct or not.
"""

import functools
import re
import unicodedata
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
  """Lower case, Unicode punctuation removed, whitespace collapsed.

  Args:
    text: any string.

  Returns:
    The normalized string, stripped.
  """
  kept = "".join(c for c in text.lower()
                 if not unicodedata.category(c).startswith("P"))
  return _SPACES.sub(" ", kept).strip()


def entity_fraction(text: str, entities: Sequence[str]) -> float:
  """Fraction of `entities` found in `text` after `normalize_text`.

  Args:
    text: a model response.
    entities: gold intermediate entities (SCRL: the subproblem answers).

  Returns:
    r_rub in [0, 1]; 0 when no entity survives normalization.
  """
  wanted = [e for e in (normalize_text(str(x)) for x in entities) if e]
  if not wanted:
    return 0.0
  haystack = normalize_text(text)
  return sum(e in haystack for e in wanted) / len(wanted)


def rubric_fractions(texts: Sequence[str],
                     entities: Sequence[Sequence[str]]) -> np.ndarray:
  """r_rub of B responses, row i against `entities[i]`.

  Args:
    texts: B model responses (a non-str counts as "").
    entities: B lists of gold entities.

  Returns:
    [B] float32 fractions.
  """
  if len(texts) != len(entities):
    raise ValueError(f"texts has {len(texts)} rows but entities has "
                     f"{len(entities)}.")
  return np.array(
      [entity_fraction(t if isinstance(t, str) else "", e)
       for t, e in zip(texts, entities)], np.float32).reshape(len(texts))


def _gate_group(correct: jax.Array, rubric: jax.Array,
                eta: float) -> jax.Array:
  """[G] correct, [G] r_rub -> [G] gated rewards of one group."""
  top = jnp.max(rubric)
  normalized = jnp.where(top > 0, rubric / jnp.where(top > 0, top, 1.0),
                         rubric)
  return jnp.where(correct > 0.5, (1.0 - eta) + eta * normalized, 0.0)


@functools.partial(jax.jit, static_argnames=("group_size", "eta"))
def gated_rewards(correct: jax.Array, rubric: jax.Array, *, group_size: int,
                  eta: float = 0.3) -> jax.Array:
  """R = 0 if wrong, else (1 - eta) + eta * r_rub / max_group r_rub.

  METHODS.md 6.4. The division only happens when the group maximum is > 0;
  otherwise r~_rub = r_rub (= 0 for every rollout with no entity found).
  A wrong response gets exactly 0 whatever its rubric fraction.

  Args:
    correct: [B] float correctness in {0, 1} (a value > 0.5 counts as
      correct); groups of `group_size` contiguous rows.
    rubric: [B] float32 r_rub in [0, 1] (`rubric_fractions`).
    group_size: G, rollouts per prompt.
    eta: weight of the rubric bonus, in [0, 1] (paper: 0.3).

  Returns:
    [B] float32 rewards.
  """
  if correct.ndim != 1 or correct.shape != rubric.shape:
    raise ValueError(f"correct {correct.shape} and rubric {rubric.shape} must "
                     "both be [B].")
  if not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_size must be a positive int, got {group_size!r}.")
  if correct.shape[0] % group_size:
    raise ValueError(f"correct has {correct.shape[0]} rows, not a multiple of "
                     f"group_size={group_size}.")
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must be in [0, 1], got {eta}.")
  N = correct.shape[0] // group_size
  gated = jax.vmap(_gate_group, in_axes=(0, 0, None))(
      correct.astype(jnp.float32).reshape(N, group_size),
      rubric.astype(jnp.float32).reshape(N, group_size), eta)
  return gated.reshape(N * group_size)
