"""Sources: where one SA-1B shard's bytes come from, one protocol for all.

A build reads every shard (a tar, or an extracted `sa_NNNNNN/` folder)
through a `Source`. The engines and the tar walker (`prepare/tars.py`) use
only the methods below; how the bytes are fetched (a local file, a bucket
object, HTTP Range requests) is each implementation's business.

  Source
    name, tar_index, where      'sa_000012.tar', 12, a path or redacted URL
    remote                      every read is a request: read it front to back
    folder                      an extracted folder: its members are files
    downloaded                  a tar in the download cache
    size()                      a tar's bytes (None when unknown)
    open_random()               RandomReader: read_at(offset, n), close()
    open_sequential(start)      SequentialReader: read(n), skip(n), tell(),
                                close(); few large requests
    list_members()              a folder's files, as `Member`s
    read_member(member)         one of them, bounded by its size

Readers never allocate more than the bytes that actually arrived, and never
read past what they were asked for: a hostile size or a file that grows
cannot make a read unbounded.

Implementations derive from `TarSource` or `FolderSource`, which refuse the
other kind's methods in one wording.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Protocol

from segment_anything_tfds import errors
from segment_anything_tfds.sources import links as links_lib

REGULAR = 'regular file'
# What a file offered as a tar often is instead, by its first bytes.
_NOT_TARS = ((b'\x1f\x8b', 'gzip-compressed: gunzip it first'),
             (b'BZh', 'bzip2-compressed: bunzip2 it first'),
             (b'\xfd7zXZ\x00', 'xz-compressed: unxz it first'),
             (b'(\xb5/\xfd', 'zstd-compressed: unzstd it first'),
             (b'PK\x03\x04', 'a zip archive, not a tar'))
OUTSIDE = 'symlink out of its folder'


def not_a_tar_hint(head: bytes) -> str:
  """What the first bytes of a file that is no tar say it is, as
  `' (it is ...)'` for a message; '' if they say nothing."""
  for magic, what in _NOT_TARS:
    if head.startswith(magic):
      return f' (it is {what})'
  if b'<html' in head[:1024].lower() or head.lstrip().startswith(b'<'):
    return ' (it looks like an HTML page: a login or error page?)'
  return ''


@dataclasses.dataclass(frozen=True, order=True)
class Member:
  """One file of a shard: a tar member, or a file of an extracted folder.

  Attributes:
    name: as stored, e.g. `./sa_1.jpg` or `images/sa_1.jpg`.
    offset: where the data starts in the tar; 0 for a folder's file.
    size: the data's size in bytes.
    kind: `REGULAR`, or what else the entry is (e.g. 'symlink', 'FIFO').
  """

  name: str
  offset: int
  size: int
  kind: str = REGULAR


class RandomReader(Protocol):
  """Reads of a tar at any offset (a local file: `pread`; remote: a request
  per read)."""

  def read_at(self, offset: int, size: int) -> bytes:
    """Exactly `size` bytes at `offset`, fewer only at the end of the tar."""

  def close(self) -> None:
    ...


class SequentialReader(Protocol):
  """A tar read front to back from a position, in few large requests."""

  def tell(self) -> int:
    """The offset of the next byte `read` returns."""

  def read(self, n: int) -> bytes:
    """The next `n` bytes, fewer only at the end of the tar."""

  def skip(self, n: int) -> int:
    """Consumes `n` bytes without keeping them; returns how many there were."""

  def close(self) -> None:
    ...


class Source(abc.ABC):
  """One SA-1B shard to read: a tar or an extracted folder, anywhere.

  Sources are small, picklable values (Beam ships them to workers): they
  hold no open file or connection; readers are opened per use and closed.
  """

  name: str
  where: str
  remote: bool
  folder: bool
  downloaded: bool

  @property
  def tar_index(self) -> int:
    """The tar's number: 12 for `sa_000012.tar`."""
    return links_lib.shard_index(self.name)

  @abc.abstractmethod
  def size(self) -> int | None:
    """A tar's size in bytes (None for a folder, or when unknown)."""

  @abc.abstractmethod
  def open_random(self) -> RandomReader:
    """A reader of the tar at any offset."""

  @abc.abstractmethod
  def open_sequential(self, start: int = 0) -> SequentialReader:
    """A reader of the tar from `start` on, in few large requests."""

  @abc.abstractmethod
  def list_members(self) -> list[Member]:
    """A folder's files (refused entries keep a kind that says why)."""

  @abc.abstractmethod
  def read_member(self, member: Member) -> bytes:
    """A folder's file, exactly `member.size` bytes (else BadInputError)."""


class _Located(Source):
  """A source at `location` (a path, URI or URL), named by it in messages."""

  location: str

  @property
  def where(self) -> str:
    return self.location

  def _not_a(self, what: str) -> errors.SourceError:
    return errors.SourceError(f'{self.name}: {self.where} is a'
                              f' {"folder" if self.folder else "tar"}, not a'
                              f' {what}')


class TarSource(_Located):
  """A tar: its folder methods refuse."""

  folder = False
  downloaded = False

  def list_members(self) -> list[Member]:
    raise self._not_a('folder')

  def read_member(self, member: Member) -> bytes:
    raise self._not_a('folder')


class FolderSource(_Located):
  """An extracted folder: its tar methods refuse."""

  folder = True
  downloaded = False

  def size(self) -> None:
    return None

  def open_random(self) -> RandomReader:
    raise self._not_a('tar')

  def open_sequential(self, start: int = 0) -> SequentialReader:
    raise self._not_a('tar')
