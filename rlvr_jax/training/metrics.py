"""Metric sinks of a run: JSONL (always), TensorBoard events, PNG curves.

Only process 0 writes. Keys are flat and slash-separated
(`reward/mean`, `policy/clipfrac_high`); values are plain floats.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Converts scalar arrays to floats (non-finite values become None in JSON)."""
  return {k: float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}


class MetricWriter:
  """Appends one JSON line per step to metrics.jsonl and mirrors to TensorBoard."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = to_floats(metrics)
    row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def truncate_after(self, step: int) -> int:
    """Drops the JSONL rows of steps > `step` (a resume redoes them); returns how many.

    The TensorBoard events of those steps stay; TensorBoard shows the latest
    write of a step.
    """
    if not self.enabled or not os.path.exists(self.path):
      return 0
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
      with open(self.path, "w") as f:
        f.writelines(kept)
    return len(lines) - len(kept)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, keys: tuple[str, ...], out_path: str,
                title: str = "") -> str:
  """Plots the given metric keys against step into a PNG; returns its path."""
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
  fig.savefig(out_path, dpi=110)
  return out_path
