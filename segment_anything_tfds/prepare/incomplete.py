"""Builds of one dataset version take turns; killed builds' dirs are removed.

TFDS writes a dataset into `<config>/incomplete.<id>_<version>/` and renames
it to `<config>/<version>/` only on success, so a killed build leaves that
dir behind, and TFDS never reuses or removes it. Two builds of one version
into one data dir would each do the whole work, and the second to finish
would then fail to rename.

So a build holds an exclusive lock on `<config>/<version>.lock` from before
it looks at the data dir until it is done (`build_lock`). A build that finds
the lock held says so and waits; then it finds the dataset prepared and
reuses it, or, if the other build failed, builds it. The lock goes with its
process, so a killed build never blocks the next one; and while a build
holds the lock, every `incomplete.*_<version>` dir there is a dead build's,
which `remove_stale` removes.

Only local data dirs are locked: a bucket (`gs://...`) has no file locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from typing import Iterator

from segment_anything_tfds.sources import paths as paths_lib

_LOG = logging.getLogger(__name__)
PREFIX = 'incomplete.'
LOCK_SUFFIX = '.lock'


@contextlib.contextmanager
def build_lock(data_dir) -> Iterator[None]:
  """Holds the build lock of `data_dir` (`<config>/<version>`) while inside.

  Waits while another build holds it, saying so once. A bucket's data dir
  is not locked.
  """
  data_dir = os.fspath(data_dir).rstrip('/')
  if not paths_lib.is_local(data_dir):
    yield
    return
  os.makedirs(os.path.dirname(data_dir), exist_ok=True)
  path = data_dir + LOCK_SUFFIX
  fd = _lock(path, data_dir)
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)  # Before letting go: see `_lock`.
    os.close(fd)


def _lock(path: str, data_dir: str) -> int:
  """An open fd of `path` that holds its exclusive lock, once it is free.

  A holder removes the file before it lets go, so a waiter may be granted
  the lock of a file that is gone: it then locks the file now at `path`.
  """
  said = False
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        if not said:
          _say_waiting(fd, data_dir)
          said = True
        fcntl.flock(fd, fcntl.LOCK_EX)
      if _is_at(fd, path):
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        return fd
    except BaseException:
      os.close(fd)
      raise
    os.close(fd)


def _is_at(fd: int, path: str) -> bool:
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _say_waiting(fd: int, data_dir: str) -> None:
  holder = os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
  pid = f' (pid {holder})' if holder.isdigit() else ''
  _LOG.warning('another build%s is preparing %s; waiting for it to finish',
               pid, data_dir)


def remove_stale(data_dir) -> list[str]:
  """Removes the incomplete dirs of `data_dir`'s version; returns them.

  Call it holding `build_lock(data_dir)`: then no live build has one.
  """
  data_dir = os.fspath(data_dir).rstrip('/')
  parent, version = os.path.split(data_dir)
  if not paths_lib.is_local(parent) or not os.path.isdir(parent):
    return []
  removed = []
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if not name.startswith(PREFIX):
      continue
    if name.endswith(f'_{version}{LOCK_SUFFIX}'):  # Older releases' locks.
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    elif (name.endswith('_' + version) and os.path.isdir(path)
          and not os.path.islink(path)):
      shutil.rmtree(path, ignore_errors=True)
      if not os.path.exists(path):
        removed.append(path)
        _LOG.warning('Removed %s, left by a build that did not finish', path)
  return removed
