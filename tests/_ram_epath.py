"""Routes `ram://` epath paths through epath's real TF backend (tf.io.gfile).

`gs://` paths go through exactly this backend on a machine with TensorFlow,
so a `ram://` manual_dir exercises the same code as a bucket, offline. TF's
`ram://` filesystem lives in the process, as does Beam's FnApiRunner.
"""

from __future__ import annotations

from etils import epath
from etils.epath import backend as backend_lib
from etils.epath import gpath
from etils.epath import register
import tensorflow as tf

PREFIX = 'ram://'


def enable() -> None:
  """Idempotent: teach epath the `ram://` scheme."""
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


__all__ = ['enable', 'upload', 'rmtree', 'epath']
