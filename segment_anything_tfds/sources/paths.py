"""Paths: whether one is on this machine, and its size.

For the dirs a build writes or caches into (data_dir, download_dir, a
mirror's destination): a shard's own reads go through its `Source`, which
knows where its bytes are.
"""

from __future__ import annotations

import os

from etils import epath

from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import links as links_lib


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on this machine, not behind a URI (gs://, s3://...).

  The one place that decides it, with epath's rule: a local path has no
  `scheme://` prefix.
  """
  return links_lib.scheme(os.fspath(path)) is None


def size_of(path: epath.PathLike) -> int:
  """A file's size in bytes, local or in a bucket."""
  if is_local(path):
    return os.path.getsize(os.fspath(path))
  return bucket.stat(os.fspath(path))['size']
