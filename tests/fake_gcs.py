"""An in-memory gs:// for tests: etils.epath's gs:// paths without a network.

`use_fake_gcs()` points epath's gs:// backend (fsspec, as on a TPU VM with
gcsfs and without TensorFlow) at an fsspec memory file system, so every
`rlvr_jax.storage` call on gs://bucket/... goes through the same epath code
as in a real run and lands in a dict. Orbax's TensorStore would still dial
GCS, so checkpoints are not faked here.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations import memory


class FakeGCSFileSystem(memory.MemoryFileSystem):
  """fsspec's memory file system under the gs:// scheme, with its own store."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs: list = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return super()._strip_protocol(path)


class _FakeGCSBackend(epath_backend._FileSystemSpecBackend):  # pylint: disable=protected-access
  """epath's own fsspec backend, with the fake behind every gs:// path."""

  def __init__(self, fs: FakeGCSFileSystem):
    self._fs = fs

  def fs(self, path):
    del path
    return self._fs


@contextlib.contextmanager
def use_fake_gcs() -> Iterator[FakeGCSFileSystem]:
  """gs:// paths of etils.epath go to a fresh in-memory store while inside."""
  FakeGCSFileSystem.store = {}
  FakeGCSFileSystem.pseudo_dirs = [""]
  fs = FakeGCSFileSystem(skip_instance_cache=True)
  backends = dict(gpath._PREFIX_TO_BACKEND, gs=_FakeGCSBackend(fs))  # pylint: disable=protected-access
  with mock.patch.object(gpath, "_PREFIX_TO_BACKEND", backends), \
       mock.patch.object(gpath, "_is_tf_installed", lambda: False):
    yield fs
