"""Run-folder files on local disk or cloud storage (gs://, s3://) via etils.epath.

One small API for the run's own files (metrics JSONL, config JSON, plots,
TensorBoard event folders): every function takes a local path or a URI.
Checkpoints go through orbax/TensorStore, which speak gs:// themselves.
gs:// needs a backend: TensorFlow's gfile, or `gcsfs` through fsspec (what
etils.epath picks when TensorFlow is absent; the `tpu` extra installs gcsfs).
Local paths keep their plain os/open behaviour (appends in place, absolute
checkpoint folders).

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
  """Whether `p` is a URI (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(p)


def join(p: PathLike, *names: str) -> str:
  """`p`/`names...` as a string; a URI keeps its scheme (gs://bucket/run/x)."""
  return os.fspath(path(p).joinpath(*names))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  """Whether `p` is a folder (on an object store: a prefix that holds objects)."""
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  """Whether `p` is a file (an object)."""
  return path(p).is_file()


def remove(p: PathLike) -> None:
  """Deletes the file `p`."""
  path(p).unlink()


def listdir(p: PathLike) -> list[str]:
  """The names in folder `p` (sorted); [] when it does not exist."""
  folder = path(p)
  if not folder.is_dir():
    return []
  return sorted(child.name for child in folder.iterdir())


def rmtree(p: PathLike) -> None:
  """Deletes the folder `p` and everything in it."""
  path(p).rmtree()


def move(src: PathLike, dst: PathLike) -> None:
  """Moves the file or folder `src` to the new name `dst`.

  A local move is one rename. An object store has no folders to rename (and
  a new "folder" exists only once it holds an object), so a remote folder is
  copied file by file, streamed, then deleted.
  """
  if not (is_remote(src) or is_remote(dst)):
    makedirs(path(dst).parent)
    os.rename(src, dst)
    return
  source, target = path(src), path(dst)
  if not source.is_dir():
    _copy_file(source, target)
    source.unlink()
    return
  for rel in _files(source):
    _copy_file(source / rel, target / rel)
  source.rmtree()


def _files(folder: epath.Path, prefix: str = "") -> list[str]:
  """Relative paths of the files under `folder`, listed folder by folder.

  (Not `walk`: etils' fsspec backend drops the gs:// scheme of what it yields.)
  """
  out = []
  for child in sorted(folder.iterdir(), key=lambda c: c.name):
    rel = f"{prefix}{child.name}"
    out.extend(_files(child, rel + "/") if child.is_dir() else [rel])
  return out


def _copy_file(src: epath.Path, dst: epath.Path) -> None:
  makedirs(dst.parent)
  with src.open("rb") as fin, dst.open("wb") as fout:
    shutil.copyfileobj(fin, fout, 16 << 20)


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


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


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
      if is_remote(target):  # streamed: an exported model's weights are GBs
        _copy_file(path(os.path.join(root, name)), out / name)
      else:
        shutil.copyfile(os.path.join(root, name), os.fspath(out / name))
