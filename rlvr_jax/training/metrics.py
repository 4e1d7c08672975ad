"""Metrics of a run: the one rule that combines them, and their sinks.

`combine_metrics` combines the metrics of the parts of a step (micro-batches
inside the jitted update, mini-batches on the host) by one rule per key
suffix. The sinks: JSONL (always), TensorBoard events, PNG curves; only
process 0 writes. Keys are flat and slash-separated (`reward/mean`,
`policy/clipfrac_high`); logged values are plain floats.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import storage


def combine_rule(key: str) -> str:
  """How `combine_metrics` combines the values of `key`: 'max', 'sum' or 'mean'.

  - a key ending in `_max` (`policy/ratio_max`) is a maximum: 'max';
  - a key ending in `skipped` (`train/skipped`) counts events: 'sum';
  - every other key is an average over the tokens or rows of its part: 'mean'.
  """
  if key.endswith("_max"):
    return "max"
  if key.endswith("skipped"):
    return "sum"
  return "mean"


def combine_metrics(parts: Sequence[Mapping[str, Any]], *, shares: bool) -> dict[str, Any]:
  """One value per key from the metrics of the parts of a step (rule: `combine_rule`).

  The 'mean' keys depend on what a part holds. With `shares=True` each part
  holds its share of the whole's average, numerator_part / denominator_whole
  (METHODS.md 1.3: the micro-batches of one mini-batch), so the shares add.
  With `shares=False` each part holds its own average (the mini-batches of a
  step, one optimizer update each), and the parts count equally: the mean of
  the values. 'max' keys take the maximum and 'sum' keys add in both cases.

  Works on host numbers and numpy arrays and on jax arrays, inside `jax.jit`
  too (the trainer folds its micro-batches pairwise, starting from zeros,
  which is exact for these rules while every `_max` metric is >= 0).

  Args:
    parts: >= 1 flat metric dicts, all with the same keys.
    shares: whether each part's averages are shares of the whole's.

  Returns:
    The combined flat dict, keys in the order of `parts[0]`.
  """
  if not parts:
    raise ValueError("parts: no metrics to combine.")
  for part in parts[1:]:
    if part.keys() != parts[0].keys():
      raise ValueError(f"parts: metric keys differ: {sorted(parts[0])} vs {sorted(part)}.")
  xp = jnp if any(isinstance(v, jax.Array) for p in parts for v in p.values()) else np
  combined = {}
  for key in parts[0]:
    values = [part[key] for part in parts]
    rule = combine_rule(key)
    if rule == "max":
      combined[key] = functools.reduce(xp.maximum, values)
    elif rule == "sum" or shares:
      combined[key] = functools.reduce(operator.add, values)
    else:
      combined[key] = xp.mean(xp.stack(values), axis=0)
  return combined


def is_logged_step(step: int, *, log_every: int, last_step: int) -> bool:
  """Whether step (1-based) writes its metric row: every log_every-th step and the last.

  (The trainer also writes a step that evaluated or skipped its update.)
  """
  if log_every < 1:
    raise ValueError(f"log_every={log_every}: must be >= 1 (--config.train.log_every).")
  return step % log_every == 0 or step == last_step


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Converts scalar arrays to floats (non-finite values become None in JSON)."""
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}


class MetricWriter:
  """Appends one JSON line per step to metrics.jsonl and mirrors to TensorBoard.

  The run folder may be local or a URI (gs://...; `rlvr_jax.storage`). The
  TensorBoard writer (tensorboardX) writes local files only, so for a URI it
  writes to a local temporary folder that is copied to `<workdir>/tensorboard`
  at each write and at `close`. Only process 0 writes.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = storage.join(workdir, "metrics.jsonl")
    self._tb = None
    self._tb_local = None  # the local event folder copied to a remote run folder
    self._tb_target = storage.join(workdir, "tensorboard")
    if self.enabled:
      storage.makedirs(workdir)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        events = self._tb_target
        if storage.is_remote(workdir):
          self._tb_local = events = tempfile.mkdtemp(prefix="rlvr_tensorboard_")
        self._tb = SummaryWriter(events)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = to_floats(metrics)
    row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    storage.append_line(self.path, json.dumps(row))
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()
      self._sync_tensorboard()

  def _sync_tensorboard(self) -> None:
    if self._tb_local is not None:
      storage.sync_folder(self._tb_local, self._tb_target)

  def truncate_after(self, step: int) -> int:
    """Drops the JSONL rows of steps > `step` (a resume redoes them); returns how many.

    The TensorBoard events of those steps stay; TensorBoard shows the latest
    write of a step.
    """
    if not self.enabled or not storage.exists(self.path):
      return 0
    lines = [line + "\n" for line in storage.read_text(self.path).splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
      storage.write_text(self.path, "".join(kept))
    return len(lines) - len(kept)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._sync_tensorboard()
      if self._tb_local is not None:
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._tb = None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The rows of a JSONL file, local or a URI (`rlvr_jax.storage`)."""
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


def plot_curves(metrics_path: str, keys: tuple[str, ...], out_path: str,
                title: str = "") -> str:
  """Plots the given metric keys against step into a PNG; returns its path.

  Both paths may be local or URIs (`rlvr_jax.storage`).
  """
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  rows = read_jsonl(metrics_path)
  fig = figure.Figure(figsize=(4.5 * len(keys), 3.5))
  backend_agg.FigureCanvasAgg(fig)  # draws off-screen; the process's backend is untouched
  axes = fig.subplots(1, len(keys), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if pts:
      steps, values = zip(*pts)
      ax.plot(steps, values, marker="o", markersize=2)
    ax.set_xlabel("step")
    ax.set_title(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  storage.save_figure(fig, out_path, dpi=110)
  return out_path
