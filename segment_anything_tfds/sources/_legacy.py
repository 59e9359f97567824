"""What prepare/ calls on shards today; it goes once prepare/ uses `Source`.

Until the engines and the tar walker (`prepare/`) read shards only through
the `Source` methods (issue 18), they test a shard's `kind`, use its
`index`, `local` and `location`, and `open()` a tar as a seekable file.
This module is that surface for the source classes, and nothing in
`sources/` relies on it: delete it with its last caller.
"""

from __future__ import annotations

import io
from typing import BinaryIO, ClassVar

from segment_anything_tfds import errors

TAR = 'tar'
DIR = 'dir'
URL = 'url'


class LegacyShard:
  """`kind`, `index`, `local` and `open()` of a source, for prepare/."""

  kind: ClassVar[str]

  @property
  def index(self) -> int:
    return self.tar_index

  @property
  def local(self) -> bool:
    return not self.remote

  def open(self, *, block_size: int = 1 << 20) -> BinaryIO:
    """A tar as a seekable binary file (reads fetch `block_size` or more)."""
    del block_size
    raise errors.SourceError(f'{self.name}: {self.where} is a folder, not a'
                             ' tar')


class RandomFile(io.RawIOBase):
  """A seekable, read-only file over a source's `RandomReader`."""

  def __init__(self, reader, size: int):
    super().__init__()
    self._reader = reader
    self._size = size
    self._pos = 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos,
            io.SEEK_END: self._size}[whence]
    if base + offset < 0:
      raise OSError(f'seek to a negative position ({base + offset})')
    self._pos = base + offset
    return self._pos

  def read(self, size: int = -1) -> bytes:
    if size is None or size < 0:
      size = self._size - self._pos
    data = self._reader.read_at(self._pos, size)
    self._pos += len(data)
    return data

  def readinto(self, b) -> int:
    data = self.read(len(b))
    b[:len(data)] = data
    return len(data)

  def close(self) -> None:
    if not self.closed:
      self._reader.close()
    super().close()


def open_random_file(source, block_size: int) -> BinaryIO:
  """`source` as a seekable file; reads fetch at least `block_size` bytes."""
  raw = RandomFile(source.open_random(), source.size())
  if block_size <= 1:
    return raw
  return io.BufferedReader(raw, buffer_size=block_size)
