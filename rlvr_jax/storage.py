"""Run-folder files on local disk or cloud storage (gs://, s3://) via etils.epath.

One small API for the run's own files (metrics JSONL, config JSON, plots,
TensorBoard event folders): every function takes a local path or a URI.
Checkpoints go through orbax/TensorStore, which speak gs:// themselves.
gs:// needs a backend: TensorFlow's gfile, or `gcsfs` through fsspec (what
etils.epath picks when TensorFlow is absent).

Only process 0 writes a run's files (`is_main`); the others call nothing here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
  """An epath.Path for a local path or a URI such as gs://bucket/run."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def makedirs(p: PathLike) -> epath.Path:
  """Creates the folder `p` (and its parents) if missing; returns it."""
  out = path(p)
  out.mkdir(parents=True, exist_ok=True)
  return out


def write_text(p: PathLike, text: str) -> None:
  """Writes `text` to `p` (replacing it), creating the parent folder."""
  makedirs(path(p).parent)
  path(p).write_text(text)


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def write_json(p: PathLike, obj: Any, indent: int = 1) -> None:
  write_text(p, json.dumps(obj, indent=indent))


def append_line(p: PathLike, line: str) -> None:
  """Appends one line to a text file (JSONL metrics).

  Object stores have no append: a remote file is read and rewritten whole
  (a metrics file of a few MB per run; local files append in place).
  """
  line = line.rstrip("\n") + "\n"
  target = path(p)
  if not is_remote(p):
    makedirs(target.parent)
    with target.open("a") as f:
      f.write(line)
    return
  old = target.read_text() if target.exists() else ""
  target.write_text(old + line)


def save_figure(fig: Any, p: PathLike, **kwargs: Any) -> None:
  """Saves a matplotlib figure to `p` (the format from its suffix)."""
  buf = io.BytesIO()
  fig.savefig(buf, format=path(p).suffix.lstrip(".") or "png", **kwargs)
  makedirs(path(p).parent)
  path(p).write_bytes(buf.getvalue())


def sync_folder(local_dir: PathLike, target: PathLike) -> None:
  """Copies the files of `local_dir` into `target` (overwriting them).

  For writers that only take local paths (tensorboardX event files): they
  write to a local folder, which is copied to the run folder at each flush.
  """
  local_dir = os.fspath(local_dir)
  for root, _, files in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    out = makedirs(path(target) / rel if rel != "." else path(target))
    for name in files:
      if is_remote(target):
        with open(os.path.join(root, name), "rb") as f:
          (out / name).write_bytes(f.read())
      else:
        shutil.copyfile(os.path.join(root, name), os.fspath(out / name))
