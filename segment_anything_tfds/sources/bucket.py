"""Sources in a bucket (gs://, or any fsspec protocol): a tar, a folder.

Read with fsspec (gcsfs for gs://), each read a request:

* a tar read front to back (`open_sequential`) costs one request per
  `SEQUENTIAL_READ_BYTES` (a read-ahead of 8 MiB past each read; skipping
  inside it is free, skipping past it fetches nothing);
* a random read (`open_random`) is one request for exactly its bytes (no
  read-ahead: a 512-byte header costs 512 bytes);
* a folder is listed in one walk, with the sizes, and each file is read in
  one request.

With an expected `checksum`, a tar read from byte 0 hashes what goes by
(skips are read, not sought; `checksums.hashing`); the engine asks
`checksums.stream_verdict` at the end.

Buckets have no symlinks, FIFOs or devices. Sources hold only their URI;
each reader opens its own file, on fsspec's filesystem of the process.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any

from segment_anything_tfds import errors
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources.base import Member

# Bytes per request of a bucket tar read front to back.
SEQUENTIAL_READ_BYTES = 8 << 20
# The most one sequential read asks fsspec for: results grow with what
# arrives, so a size read from a header costs no more than the bytes there.
_CHUNK = 8 << 20


def filesystem(uri: str) -> tuple[Any, str]:
  """(fsspec filesystem, path in it) of `uri`.

  Raises:
    errors.SourceError: no file system serves its scheme here (e.g. s3://
      without s3fs installed), saying so.
  """
  import fsspec  # pylint: disable=g-import-not-at-top
  try:
    return fsspec.core.url_to_fs(uri)
  except (ImportError, ValueError) as e:
    raise errors.SourceError(
        f'{uri}: cannot read it here: {errors.first_line(e)}') from None


def cannot_open(name: str, uri: str, e: BaseException) -> errors.SourceError:
  # gcsfs's FileNotFoundError says only the object's path.
  why = ('no such object' if isinstance(e, FileNotFoundError) else
         errors.first_line(e))
  return errors.SourceError(f'{name}: cannot open {uri}: {why}')


def stat(uri: str) -> dict[str, Any]:
  """fsspec's `info` of `uri`: 'size', 'type' ('file' or 'directory')."""
  fs, path = filesystem(uri)
  return fs.info(path)


def list_dir(uri: str) -> list[tuple[str, str, int | None]]:
  """(name, 'file' or 'directory', size) of each entry of a bucket dir."""
  fs, path = filesystem(uri)
  try:
    entries = fs.ls(path, detail=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.SourceError(f'cannot list {uri}: {errors.first_line(e)}') from None
  out = []
  for info in entries:
    name = posixpath.basename(info['name'].rstrip('/'))
    if name:
      out.append((name, info.get('type', 'file'), info.get('size')))
  return sorted(out)


def _open(uri: str, name: str, **kwargs) -> Any:
  fs, path = filesystem(uri)
  try:
    return fs.open(path, 'rb', **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise cannot_open(name, uri, e) from None


class _Random:
  """`RandomReader` of a bucket object: one request per read, no cache."""

  def __init__(self, fileobj: Any, size: int):
    self._file = fileobj
    self._size = size

  def read_at(self, offset: int, size: int) -> bytes:
    size = min(size, self._size - offset)
    if size <= 0:
      return b''
    self._file.seek(offset)
    return self._file.read(size)

  def close(self) -> None:
    self._file.close()


class _Sequential:
  """`SequentialReader` of a bucket object, with an 8 MiB read-ahead."""

  def __init__(self, fileobj: Any, start: int, size: int):
    self._file = fileobj
    self._size = size
    self._pos = start
    self._file.seek(start)

  def tell(self) -> int:
    return self._pos

  def read(self, n: int) -> bytes:
    out = b''
    while len(out) < n:
      data = self._file.read(min(n - len(out), _CHUNK))
      if not data:
        break
      out = data if not out else out + data
    self._pos += len(out)
    return out

  def skip(self, n: int) -> int:
    n = max(0, min(n, self._size - self._pos))
    self._pos += n
    self._file.seek(self._pos)
    return n

  def close(self) -> None:
    self._file.close()


class _Sized:
  """A tar's size, asked for once per source (a stat is a request)."""

  known_size: int | None

  def size(self) -> int:
    if self.known_size is None:
      try:
        size = stat(self.location)['size']
      except Exception as e:  # pylint: disable=broad-except
        raise cannot_open(self.name, self.location, e) from None
      object.__setattr__(self, 'known_size', size)
    return self.known_size


@dataclasses.dataclass(frozen=True)
class BucketTar(_Sized, base.TarSource):
  """A tar in a bucket, e.g. `gs://b/sa1b/sa_000012.tar`.

  Attributes:
    name: the tar's name, e.g. `sa_000012.tar`.
    location: its URI.
    known_size: its size in bytes when known (from a listing), else asked
      for once.
    checksum: the `checksums.Expected` digest of the tar, checked when it
      is read front to back (None: not checked).
  """

  name: str
  location: str
  known_size: int | None = dataclasses.field(default=None, compare=False)
  checksum: checksums.Expected | None = dataclasses.field(default=None,
                                                          compare=False)

  remote = True

  def open_random(self) -> base.RandomReader:
    return _Random(_open(self.location, self.name, cache_type='none'),
                   self.size())

  def open_sequential(self, start: int = 0) -> base.SequentialReader:
    return checksums.hashing(_Sequential(
        _open(self.location, self.name, block_size=SEQUENTIAL_READ_BYTES,
              cache_type='readahead'), start, self.size()), self, start)


@dataclasses.dataclass(frozen=True)
class BucketFolder(base.FolderSource):
  """An extracted `sa_NNNNNN/` folder in a bucket.

  Attributes:
    name: the tar's name, e.g. `sa_000012.tar`.
    location: the folder's URI.
  """

  name: str
  location: str

  remote = True

  def list_members(self) -> list[Member]:
    fs, root = filesystem(self.location)
    root = root.rstrip('/')
    try:
      found = fs.find(root, detail=True)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.SourceError(
          f'{self.name}: cannot list {self.location}: {errors.first_line(e)}'
      ) from None
    return [Member(path[len(root) + 1:], 0, info['size'])
            for path, info in sorted(found.items())
            if info.get('type', 'file') == 'file']

  def read_member(self, member: Member) -> bytes:
    uri = f'{self.location.rstrip("/")}/{member.name}'
    with _open(uri, self.name, cache_type='none') as f:
      data = f.read(member.size + 1)
    if len(data) != member.size:
      raise errors.BadInputError(
          errors.CORRUPT_TAR, self.name, member.name,
          f'read {len(data)} bytes, the folder listed {member.size}')
    return data
