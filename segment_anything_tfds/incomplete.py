"""Stale `incomplete.*` dirs: TFDS's temporary build dirs left by killed builds.

TFDS writes a dataset into `<config>/incomplete.<id>_<version>/` and renames
it only on success, so a killed build leaves that dir behind; reruns never
reuse or remove it. A running build here holds an exclusive lock on
`<that dir>.lock` (`claim`). `remove_stale` deletes the incomplete dirs of
the same version whose lock nobody holds: their build is gone. A dir with no
lock file at all is removed only once it is an hour old (a build that has
just started has not claimed it yet).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time

from segment_anything_tfds import shards as shards_lib

_LOG = logging.getLogger(__name__)
PREFIX = 'incomplete.'
LOCK_SUFFIX = '.lock'
UNCLAIMED_AGE = 3600.0
_HELD: dict[str, int] = {}


def claim(tmp_data_dir) -> None:
  """Marks `tmp_data_dir` as this live process's build (until `release`).

  Only local dirs are claimed: a bucket (`gs://...`) has no file locks, and
  `remove_stale` leaves buckets alone.
  """
  path = os.fspath(tmp_data_dir)
  if (not os.path.basename(path).startswith(PREFIX) or path in _HELD
      or not shards_lib.is_local(path)):
    return
  fd = os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o644)
  fcntl.flock(fd, fcntl.LOCK_EX)
  os.write(fd, f'{os.getpid()}\n'.encode())
  _HELD[path] = fd


def release() -> None:
  """Drops this process's claims and their lock files."""
  for path, fd in list(_HELD.items()):
    try:
      os.remove(path + LOCK_SUFFIX)
    except FileNotFoundError:
      pass
    os.close(fd)
    del _HELD[path]


def _is_held(lock_path: str) -> bool:
  try:
    fd = os.open(lock_path, os.O_RDWR)
  except FileNotFoundError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  finally:
    os.close(fd)
  return False


def remove_stale(data_dir, *, now: float | None = None) -> list[str]:
  """Removes the stale incomplete dirs next to `data_dir`; returns them."""
  data_dir = os.fspath(data_dir)
  parent, version = os.path.split(data_dir.rstrip('/'))
  if not shards_lib.is_local(parent) or not os.path.isdir(parent):
    return []
  now = time.time() if now is None else now
  removed = []
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if (not name.startswith(PREFIX) or not name.endswith('_' + version)
        or not os.path.isdir(path) or path in _HELD):
      continue
    lock = path + LOCK_SUFFIX
    if os.path.exists(lock):
      if _is_held(lock):
        continue
    elif now - os.path.getmtime(path) < UNCLAIMED_AGE:
      continue
    shutil.rmtree(path, ignore_errors=True)
    try:
      os.remove(lock)
    except FileNotFoundError:
      pass
    removed.append(path)
    _LOG.warning('Removed %s, left by a build that did not finish', path)
  return removed
