"""`ram://`: a bucket offline, for epath and for fsspec alike.

The package reads bucket tars and folders with fsspec (gcsfs for gs://), and
reads the links file with epath (TF's GCS client for gs:// on a machine with
TensorFlow). Here both reach TF's in-process `ram://` file system: epath
through its real TF backend, fsspec through `RamFileSystem`, whose reads
are ranged reads of `tf.io.gfile` and are counted (`RamFileSystem.reads`),
as a bucket counts requests. It lives in the process, as does Beam's
FnApiRunner.
"""

from __future__ import annotations

from etils import epath
from etils.epath import backend as backend_lib
from etils.epath import gpath
from etils.epath import register
import fsspec
from fsspec import spec
import tensorflow as tf

PREFIX = 'ram://'


class _RamFile(spec.AbstractBufferedFile):
  """A `ram://` file: each fetch is one ranged read, counted."""

  def _fetch_range(self, start: int, end: int) -> bytes:
    RamFileSystem.reads.append((self.path, start, end))
    with tf.io.gfile.GFile(PREFIX + self.path, 'rb') as f:
      f.seek(start)
      return f.read(max(0, end - start))


class RamFileSystem(spec.AbstractFileSystem):
  """fsspec over TF's `ram://` (read-only: tests write with tf.io.gfile)."""

  protocol = 'ram'
  root_marker = ''
  reads: list[tuple[str, int, int]] = []  # (path, start, end) per request.

  def info(self, path, **kwargs):
    path = self._strip_protocol(path)
    if not tf.io.gfile.exists(PREFIX + path):
      raise FileNotFoundError(f'{PREFIX}{path}: no such object')
    st = tf.io.gfile.stat(PREFIX + path)
    return {'name': path, 'size': 0 if st.is_directory else st.length,
            'type': 'directory' if st.is_directory else 'file'}

  def ls(self, path, detail=True, **kwargs):
    path = self._strip_protocol(path)
    info = self.info(path)
    if info['type'] != 'directory':
      return [info] if detail else [path]
    infos = [self.info(f'{path}/{name.rstrip("/")}')
             for name in tf.io.gfile.listdir(PREFIX + path)]
    return infos if detail else [i['name'] for i in infos]

  def _open(self, path, mode='rb', block_size=None, autocommit=True,
            cache_options=None, **kwargs):
    if mode != 'rb':
      raise NotImplementedError('ram:// is read-only here')
    return _RamFile(self, path, mode, block_size or 'default',
                    autocommit=autocommit, cache_options=cache_options,
                    **kwargs)


def enable() -> None:
  """Idempotent: teach epath and fsspec the `ram://` scheme."""
  fsspec.register_implementation('ram', RamFileSystem, clobber=True)
  if 'ram' in gpath._URI_SCHEMES:  # pylint: disable=protected-access
    return
  gpath._URI_PREFIXES = gpath._URI_PREFIXES + (PREFIX,)  # pylint: disable=protected-access
  gpath._URI_SCHEMES = gpath._URI_SCHEMES | {'ram'}  # pylint: disable=protected-access
  gpath._URI_MAP_ROOT[PREFIX] = '/ram/'  # pylint: disable=protected-access
  gpath._PREFIX_TO_BACKEND['ram'] = backend_lib.tf_backend  # pylint: disable=protected-access
  register._URI_PREFIXES_TO_CLS[PREFIX] = gpath.PosixGPath  # pylint: disable=protected-access


def upload(local: str, remote: str) -> None:
  """Copies a local file to a `ram://` path with tf.io.gfile."""
  tf.io.gfile.makedirs(remote.rsplit('/', 1)[0])
  tf.io.gfile.copy(local, remote, overwrite=True)


def rmtree(remote: str) -> None:
  if tf.io.gfile.exists(remote):
    tf.io.gfile.rmtree(remote)


__all__ = ['enable', 'upload', 'rmtree', 'epath', 'RamFileSystem']
