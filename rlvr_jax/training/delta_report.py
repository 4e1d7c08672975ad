"""Host-side views of DelTA coefficients (METHODS.md section 2).

Two ways to look at the c~ of one rollout batch, both on numpy arrays fetched
from the devices: a histogram per advantage side (`coefficient_histogram`) and
the decoded tokens with the lowest and highest coefficients
(`extreme_tokens`), which shows whether shared formatting tokens are the ones
pushed down (DelTA, 2026).
"""

from typing import Protocol

from matplotlib import figure
import numpy as np

from rlvr_jax import storage


class Decoder(Protocol):
  """Anything with a tokenizer's `decode` (transformers, tokenizers)."""

  def decode(self, ids: list[int]) -> str:
    ...


def _token_advantages(
    advantages: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
  """[B] or [B, T] advantages -> [B, T]; ValueError on any other shape."""
  advantages = np.asarray(advantages, dtype=np.float32)
  if advantages.shape == shape[:1]:
    return np.broadcast_to(advantages[:, None], shape)
  if advantages.shape != shape:
    raise ValueError(
        f"advantages {advantages.shape} must be {shape[:1]} or {shape} to "
        "match coef."
    )
  return advantages


def _check_same_shape(coef: np.ndarray, **arrays: np.ndarray) -> None:
  if coef.ndim != 2:
    raise ValueError(f"coef must be [B, T], got shape {coef.shape}.")
  for name, array in arrays.items():
    if array.shape != coef.shape:
      raise ValueError(f"{name} {array.shape} must equal coef {coef.shape}.")


def coefficient_histogram(
    coef: np.ndarray,
    mask: np.ndarray,
    advantages: np.ndarray,
    path: str,
    step: int,
    *,
    bins: int = 50,
) -> str:
  """Writes a PNG with the histograms of c~ on the positive and negative side.

  Args:
    coef: [B, T] normalized coefficients c~ (`delta_coefficients`).
    mask: [B, T] response mask; only tokens with mask > 0 are counted.
    advantages: [B] or [B, T] advantages A; side = sign(A), A = 0 tokens are
      left out.
    path: output PNG file, local or a URI (`rlvr_jax.storage`); its folder is
      created if needed.
    step: training step, shown in the title.
    bins: number of histogram bins.

  Returns:
    `path`.
  """
  coef = np.asarray(coef, dtype=np.float32)
  mask = np.asarray(mask)
  _check_same_shape(coef, mask=mask)
  adv = _token_advantages(advantages, coef.shape)
  valid = mask > 0
  sides = (
      ("positive advantage", valid & (adv > 0), "tab:green"),
      ("negative advantage", valid & (adv < 0), "tab:red"),
  )
  fig = figure.Figure(figsize=(10, 3.5), layout="constrained")
  axes = fig.subplots(1, 2, sharex=True)
  for ax, (title, selected, color) in zip(axes, sides):
    values = coef[selected]
    if values.size:
      ax.hist(values, bins=bins, color=color)
      ax.set_title(f"{title}: {values.size} tokens, mean {values.mean():.4f}")
    else:
      ax.set_title(f"{title}: no tokens")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("DelTA coefficient c~")
  axes[0].set_ylabel("tokens")
  fig.suptitle(f"DelTA coefficients, step {step}")
  storage.save_figure(fig, path, dpi=100)
  return path


def extreme_tokens(
    coef: np.ndarray,
    mask: np.ndarray,
    token_ids: np.ndarray,
    tokenizer: Decoder,
    *,
    n: int = 10,
) -> str:
  """Text table of the n lowest- and n highest-coefficient valid tokens.

  Each line gives rank, c~, row, position, token id and the decoded token as a
  Python literal (so whitespace and newlines are visible). Ties keep
  row-major order.

  Args:
    coef: [B, T] normalized coefficients c~.
    mask: [B, T] response mask; only tokens with mask > 0 are listed.
    token_ids: [B, T] response token ids (the tokens c~ belongs to).
    tokenizer: has `decode(list[int]) -> str`.
    n: tokens per table, >= 1.

  Returns:
    The two tables, lowest first, as one string.
  """
  coef = np.asarray(coef, dtype=np.float32)
  mask = np.asarray(mask)
  token_ids = np.asarray(token_ids)
  _check_same_shape(coef, mask=mask, token_ids=token_ids)
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n!r}.")
  rows, cols = np.nonzero(mask > 0)
  values = coef[rows, cols]
  tables = (
      ("lowest", np.argsort(values, kind="stable")[:n]),
      ("highest", np.argsort(-values, kind="stable")[:n]),
  )
  lines = []
  for title, picked in tables:
    lines.append(f"{title} DelTA coefficients ({len(values)} valid tokens)")
    lines.append(f"{'rank':>4}  {'coef':>8}  {'row':>5}  {'pos':>5}  "
                 f"{'id':>7}  token")
    for rank, index in enumerate(picked, start=1):
      row, col = rows[index], cols[index]
      token = int(token_ids[row, col])
      text = repr(tokenizer.decode([token]))
      lines.append(f"{rank:>4}  {values[index]:>8.4f}  {row:>5}  {col:>5}  "
                   f"{token:>7}  {text}")
  return "\n".join(lines)
