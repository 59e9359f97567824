"""Tar indexing and pairing: read SA-1B tars in place, never extract them.

A tar is indexed once, reading only its 512-byte headers and seeking past the
data, so the index costs a few KB of reads per image. Members pair by stem
(`sa_<id>.jpg` + `sa_<id>.json`) wherever they sit in the tar (root, `./`, a
folder) and in any order. Readers then seek straight to each pair's bytes, so
memory is bounded by one image however far apart its two members are.

Extracted `sa_NNNNNN/` folders are indexed the same way, with one file per
member. `index_members` and `pair_members` are pure; the I/O lives in
`index_shard`, `ShardReader` and `read_example`.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
from typing import Any, BinaryIO, Iterable, Sequence

from etils import epath

from segment_anything_tfds import examples as examples_lib
from segment_anything_tfds import sources as sources_lib

# Members larger than this are rejected, not read (hostile or corrupt input).
MAX_JSON_BYTES = 64 << 20
MAX_JPEG_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True, order=True)
class Member:
  """One file of a shard: a tar member, or a file of an extracted folder."""

  name: str  # As stored, e.g. `./sa_1.jpg` or `images/sa_1.jpg`.
  offset: int  # Offset of the data in the tar; 0 for a folder's file.
  size: int


@dataclasses.dataclass(frozen=True)
class Pair:
  """The two members of one image."""

  stem: str  # e.g. `sa_223750`.
  jpg: Member
  json: Member


@dataclasses.dataclass(frozen=True)
class Problem:
  """A member that cannot make an example: audited, or raised when strict."""

  reason: str
  tar: str
  member: str
  message: str

  @property
  def where(self) -> str:
    return f'{self.tar}:{self.member}'

  def error(self) -> examples_lib.BadInputError:
    return examples_lib.BadInputError(self.reason, self.where, self.message)


def _is_unsafe(name: str) -> bool:
  return name.startswith('/') or '..' in name.replace('\\', '/').split('/')


def pair_members(
    members: Iterable[Member], *, tar: str
) -> tuple[list[Pair], list[Problem], list[Member]]:
  """Pairs `sa_<id>.jpg` with `sa_<id>.json` by stem.

  Args:
    members: the shard's regular files, in any order.
    tar: the shard's name, for messages.

  Returns:
    (pairs sorted by image id, problems, ignored): problems are unpaired,
    duplicated, oversized or unsafe image members; ignored are members that
    are not SA-1B image files at all (e.g. a README), reported by the caller.
  """
  jpgs: dict[str, Member] = {}
  jsons: dict[str, Member] = {}
  problems: list[Problem] = []
  ignored: list[Member] = []
  for m in members:
    if _is_unsafe(m.name):
      problems.append(Problem(
          examples_lib.UNSAFE_MEMBER, tar, m.name,
          'absolute or ".." member path; it is never written anywhere'))
      continue
    stem, ext = posixpath.splitext(posixpath.basename(m.name))
    if examples_lib.image_id_from_stem(stem) is None or ext not in (
        '.jpg', '.json'):
      ignored.append(m)
      continue
    table, limit = (jpgs, MAX_JPEG_BYTES) if ext == '.jpg' else (
        jsons, MAX_JSON_BYTES)
    if m.size > limit:
      problems.append(Problem(
          examples_lib.MEMBER_TOO_LARGE, tar, m.name,
          f'{m.size} bytes is over the {limit} byte limit for {ext} members'))
      continue
    if stem in table:
      problems.append(Problem(
          examples_lib.DUPLICATE_MEMBER, tar, m.name,
          f'{stem}{ext} is also stored as {table[stem].name}'))
      continue
    table[stem] = m
  pairs = []
  for stem in sorted(jpgs.keys() | jsons.keys(),
                     key=examples_lib.image_id_from_stem):
    jpg, js = jpgs.get(stem), jsons.get(stem)
    if jpg is None:
      problems.append(Problem(examples_lib.MISSING_JPG, tar, js.name,
                              f'{stem}.json has no {stem}.jpg'))
    elif js is None:
      problems.append(Problem(examples_lib.MISSING_JSON, tar, jpg.name,
                              f'{stem}.jpg has no {stem}.json'))
    else:
      pairs.append(Pair(stem, jpg, js))
  return pairs, problems, ignored


def _corrupt(tar: str, offset: Any, problem: Any) -> examples_lib.BadInputError:
  return examples_lib.BadInputError(
      examples_lib.CORRUPT_TAR, f'{tar}:@{offset}',
      f'corrupt or truncated tar near byte {offset}: {problem}')


def index_members(fileobj: BinaryIO, *, tar: str) -> list[Member]:
  """Lists the regular files of a tar from its headers, skipping the data."""
  members = []
  try:
    with tarfile.open(fileobj=fileobj, mode='r:') as tf:
      while True:
        info = tf.next()
        if info is None:
          break
        if info.isreg():
          members.append(Member(info.name, info.offset_data, info.size))
        tf.members = []  # Keep the index flat in memory for huge tars.
      end = tf.offset
    fileobj.seek(end)
    tail = fileobj.read(512)
  except (tarfile.TarError, EOFError, OSError) as e:
    try:
      offset = fileobj.tell()
    except (OSError, ValueError):
      offset = '?'
    raise _corrupt(tar, offset, e) from None
  # tarfile stops quietly at a bad header after the first member; only an
  # end-of-archive block (512 zero bytes) means the tar really ended there.
  if len(tail) < 512 or tail.count(0) != 512:
    after = f' {members[-1].name}' if members else ''
    raise _corrupt(
        tar, end, f'no end-of-archive marker after the last readable member'
        f'{after}')
  return members


def check_end(fileobj: BinaryIO, members: Sequence[Member], *, tar: str):
  """A tar cut inside its last member still lists it: check it is whole."""
  if not members:
    return
  last = max(members, key=lambda m: m.offset + m.size)
  end = last.offset + last.size
  fileobj.seek(0, os.SEEK_END)
  size = fileobj.tell()
  if size < end:
    raise examples_lib.BadInputError(
        examples_lib.CORRUPT_TAR, f'{tar}:{last.name}',
        f'truncated tar: {last.name} needs bytes up to {end} but the file'
        f' has {size}')


def _file_size(p: epath.Path) -> int:
  st = p.stat()
  return st.st_size if hasattr(st, 'st_size') else st.length


def index_dir(path: epath.Path) -> list[Member]:
  """Lists the files of an extracted `sa_NNNNNN/` folder, recursively."""
  members = []
  folders = [path]
  while folders:
    for p in sorted(folders.pop().iterdir()):
      if p.is_dir():
        folders.append(p)
      else:
        members.append(
            Member(os.fspath(p.relative_to(path)), 0, _file_size(p)))
  return members


def read_member(fileobj: BinaryIO, member: Member, *, tar: str) -> bytes:
  """Reads one member's bytes at its offset."""
  fileobj.seek(member.offset)
  data = fileobj.read(member.size)
  if len(data) != member.size:
    raise examples_lib.BadInputError(
        examples_lib.CORRUPT_TAR, f'{tar}:{member.name}',
        f'truncated tar: read {len(data)} of {member.size} bytes at offset'
        f' {member.offset}')
  return data


def index_shard(shard: sources_lib.Shard) -> list[Member]:
  """The members of a shard: a tar's headers, or a folder's files."""
  if shard.kind == sources_lib.DIR:
    return index_dir(epath.Path(shard.location))
  with shard.open() as f:
    members = index_members(f, tar=shard.name)
    check_end(f, members, tar=shard.name)
  return members


class ShardReader:
  """Reads members of one shard: seeks in a tar, or opens a folder's files."""

  def __init__(self, shard: sources_lib.Shard):
    self.shard = shard
    self._file = None

  def __enter__(self) -> 'ShardReader':
    if self.shard.kind != sources_lib.DIR:
      self._file = self.shard.open()
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def read(self, member: Member) -> bytes:
    if self._file is None:
      return (epath.Path(self.shard.location) / member.name).read_bytes()
    return read_member(self._file, member, tar=self.shard.name)


def read_example(reader: ShardReader, pair: Pair) -> tuple[int, dict]:
  """Reads one image's members and builds its example (key, example).

  Raises:
    BadInputError: naming the tar, the member and what is wrong.
  """
  where = f'{reader.shard.name}:{pair.json.name}'
  jpg = reader.read(pair.jpg)
  record = examples_lib.parse_json(reader.read(pair.json), where=where)
  return examples_lib.make_example(jpg, record, stem=pair.stem, where=where)
