"""Index, pair and read the members of SA-1B shards, in place and safely.

One walker (`walk`) reads a tar's headers, for both ways of reading it:

  index    a local tar (`tars.index`): its 512-byte headers only, seeking
           past the data; images are then read by a seek per member
           (`ShardReader`). An extracted `sa_NNNNNN/` folder is listed.
  stream   a remote tar, where every read is a request (`tars.stream`):
           read once, front to back (`Source.open_sequential`), members
           paired as they go by, their bytes held up to a cap; pairs past
           it are read again by seek at the end.

Both find the same pairs, problems, ignored members and damage. Members
pair by stem (`sa_<id>.jpg` + `sa_<id>.json`) wherever they sit (root,
`./`, a folder) and in any order (`Pairing`). Sources are read only through
the `Source` protocol (`sources/base.py`).

Hostile input is refused, never followed:

* Only regular files are members. A tar's symlink, hardlink, FIFO or device
  entry named like an image is reported as what it is. In a folder, FIFOs
  and devices are never opened for reading, and no symlink that leads out of
  manual_dir is followed or listed.
* A member's size is checked against the limits before it is read, and the
  bytes actually read are bounded by it: a file that grows, or a symlink to
  `/dev/zero`, cannot make a read unbounded.
* Stems are canonical: `sa_` and ASCII digits without leading zeros. Other
  names (`sa_01.jpg`, `SA_1.JPG`, `sa_١.jpg`) are ignored members, listed in
  the audit, so two names never map to one image id.
* Every header is checked before `tarfile` reads what follows it
  (`check_header`): extended headers (GNU long names, pax records) are
  small and well formed, and sparse members are refused. So no tar makes
  tarfile read a huge header whole, or parse pax records in the quadratic
  time of CPython's tarfile before 3.8.20, 3.9.20, 3.10.15, 3.11.10,
  3.12.6 and 3.13.0 (CVE-2024-6232), whatever the Python version.

`pair_members` is pure. `index` and `stream` give an `Index`: the pairs,
one `BadInputError` per image that cannot be built (the lenient audit
counts these), the ignored members, and the damage that stopped reading a
corrupt tar, if any (a lenient build keeps the images before it).

With an image list (`images`, an `image_list.ImageList`), `Pairing` drops
every image not listed as its first member comes by: an unlisted image is
neither paired, held, read nor built, and none of its faults is reported;
the `Index` only counts such images (`unlisted`). Both engines and both
modes filter here, once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
import re
import tarfile
from typing import (Any, BinaryIO, Callable, Container, Generator, Iterable,
                    Iterator, Protocol)

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources.base import Member
from segment_anything_tfds.sources.base import OUTSIDE
from segment_anything_tfds.sources.base import REGULAR

# Members larger than this are rejected, not read (hostile or corrupt input).
MAX_JSON_BYTES = 64 << 20
MAX_JPEG_BYTES = 256 << 20
# An SA-1B tar holds ≈22 k members; a tar listing far more is not one.
MAX_MEMBERS = 1 << 20
# Extended headers (GNU long names and links, pax records) come before a
# member's own header; SA-1B tars have none, and a long name is a few
# hundred bytes. Larger ones, or more of them before one member, are
# damage (`check_header`).
MAX_EXTENDED_BYTES = 64 << 10
MAX_EXTENDED_HEADERS = 8
# A run of more digits than this in pax records is refused: it is what
# makes CPython's tarfile before the CVE-2024-6232 fix parse them in
# quadratic time.
MAX_PAX_DIGITS = 32

_TAR_KINDS = {
    tarfile.SYMTYPE: 'symlink', tarfile.LNKTYPE: 'hardlink',
    tarfile.FIFOTYPE: 'FIFO', tarfile.CHRTYPE: 'character device',
    tarfile.BLKTYPE: 'block device', tarfile.DIRTYPE: 'directory',
}


@dataclasses.dataclass(frozen=True)
class Pair:
  """The two members of one image."""

  stem: str  # e.g. `sa_223750`.
  jpg: Member
  json: Member

  @property
  def image_id(self) -> int:
    return records_lib.image_id_from_stem(self.stem)


@dataclasses.dataclass
class Index:
  """What indexing one shard found.

  Attributes:
    tar: the shard's name.
    pairs: the images that can be read, sorted by image id.
    problems: one error per image that cannot be (unpaired, duplicated,
      oversized, unsafe or non-regular members), sorted by image id.
    ignored: members that are not SA-1B image files (e.g. `README`,
      `SA_1.JPG`), reported, never read.
    damage: the error that stopped indexing a corrupt or truncated tar, or
      None. The pairs and problems are those of the members before it.
    unlisted: with an image list, the images (stems) seen that it does not
      list, dropped; None without a list.
    mismatch: for a tar read front to back with an expected checksum
      (`checksums.stream_verdict`), the `checksum_mismatch` error if it
      does not match, else None. Such an index holds no pairs and no
      problems: none of the tar's images is used (`without_images`).
  """

  tar: str
  pairs: list[Pair]
  problems: list[errors.BadInputError]
  ignored: list[str]
  damage: errors.BadInputError | None = None
  unlisted: int | None = None
  mismatch: errors.BadInputError | None = None

  @property
  def images(self) -> int:
    """Images indexed: those readable plus those skipped for a problem."""
    return len(self.pairs) + len(self.problems)

  def image_ids(self) -> np.ndarray:
    """The ids of the images indexed (pairs and problems), sorted."""
    ids = [p.image_id for p in self.pairs] + [
        problem_id(e) for e in self.problems]
    return np.unique(np.array(ids, np.int64))

  def without_images(self, mismatch: errors.BadInputError) -> 'Index':
    """This index for a tar that does not match its checksum: no image of
    it is read, built, written or counted; only `mismatch` is recorded."""
    return Index(self.tar, [], [], [], unlisted=self.unlisted,
                 mismatch=mismatch)


def problem_id(error: errors.BadInputError) -> int:
  """The image id of a per-image problem (its member is named like one)."""
  return records_lib.image_id_from_stem(canonical_stem(error.member)[0])


def canonical_stem(name: str) -> tuple[str, str] | None:
  """(`sa_<id>`, '.jpg' or '.json') for an SA-1B image member, else None."""
  stem, ext = posixpath.splitext(posixpath.basename(name))
  if ext not in ('.jpg', '.json') or records_lib.image_id_from_stem(
      stem) is None:
    return None
  return stem, ext


def _is_unsafe(name: str) -> bool:
  return name.startswith('/') or '..' in name.replace('\\', '/').split('/')


def member_fault(member: Member, *, ext: str, tar: str
                 ) -> errors.BadInputError | None:
  """Why an image member can never be read (unsafe, special, too large).

  The one rule for every member named like an image (`Pairing` calls it),
  however the tar is read.
  """
  if _is_unsafe(member.name):
    return errors.BadInputError(
        errors.UNSAFE_MEMBER, tar, member.name,
        'absolute or ".." member path; it is never read or written')
  if member.kind == OUTSIDE:
    return errors.BadInputError(
        errors.UNSAFE_MEMBER, tar, member.name,
        'a symlink out of its folder; it is never followed or read')
  if member.kind != REGULAR:
    return errors.BadInputError(
        errors.SPECIAL_MEMBER, tar, member.name,
        f'{member.name} is a {member.kind}, not a regular file; it is never'
        ' followed or read')
  limit = MAX_JPEG_BYTES if ext == '.jpg' else MAX_JSON_BYTES
  if member.size > limit:
    return errors.BadInputError(
        errors.MEMBER_TOO_LARGE, tar, member.name,
        f'{member.size} bytes is over the {limit} byte limit for {ext}'
        ' members')
  return None


class Pairing:
  """Pairs members by stem as they come (`pair_members`, one at a time).

  Every image (stem) seen ends as one pair or one problem, never both; a
  stem with several faults is reported once, for its first fault. A stem
  whose two members have come is complete (`add` says so) until a third
  member of it comes: then it is a `duplicate_member` problem. So a pair is
  final only at `finish`.

  With an image list (`images`: anything that answers `image_id in
  images`), a stem it does not list is only counted (`Index.unlisted`).
  """

  def __init__(self, tar: str, images: Container[int] | None = None):
    self.tar = tar
    self.images = images
    self._members: tuple[dict[str, Member], dict[str, Member]] = ({}, {})
    self._problems: dict[str, errors.BadInputError] = {}
    self._ignored: list[str] = []
    self._unlisted: set[str] = set()

  def listed(self, stem: str) -> bool:
    """Whether the image list (if any) takes the image of a stem."""
    if self.images is None:
      return True
    if stem in self._unlisted:
      return False
    if records_lib.image_id_from_stem(stem) in self.images:
      return True
    self._unlisted.add(stem)
    return False

  def failed(self, stem: str) -> bool:
    """Whether the stem is already a problem."""
    return stem in self._problems

  def member(self, stem: str, ext: str) -> Member | None:
    """The stem's member with that extension, if it came."""
    return self._members[ext == '.json'].get(stem)

  def add(self, member: Member) -> str | None:
    """Adds a member; returns its stem if that completes a pair."""
    found = canonical_stem(member.name)
    if found is None:
      self._ignored.append(member.name)
      return None
    stem, ext = found
    if not self.listed(stem):
      return None
    fault = member_fault(member, ext=ext, tar=self.tar)
    if fault is not None:
      self._problems.setdefault(stem, fault)
      return None
    table = self._members[ext == '.json']
    if stem in table:
      self._problems.setdefault(stem, errors.BadInputError(
          errors.DUPLICATE_MEMBER, self.tar, member.name,
          f'{stem}{ext} is stored twice: as {table[stem].name} and as'
          f' {member.name}'))
      return None
    table[stem] = member
    if stem not in self._problems and self.member(stem, other(ext)):
      return stem
    return None

  def finish(self) -> Index:
    """The pairs and problems: the same whatever the members' order."""
    jpgs, jsons = self._members
    problems = self._problems
    pairs = []
    for stem in jpgs.keys() | jsons.keys():
      jpg, js = jpgs.get(stem), jsons.get(stem)
      if stem in problems:
        continue
      if jpg is None:
        problems[stem] = errors.BadInputError(
            errors.MISSING_JPG, self.tar, js.name,
            f'{stem}.json has no {stem}.jpg')
      elif js is None:
        problems[stem] = errors.BadInputError(
            errors.MISSING_JSON, self.tar, jpg.name,
            f'{stem}.jpg has no {stem}.json')
      else:
        pairs.append(Pair(stem, jpg, js))
    pairs.sort(key=lambda p: p.image_id)
    return Index(
        self.tar, pairs,
        [problems[s] for s in sorted(problems,
                                     key=records_lib.image_id_from_stem)],
        list(self._ignored),
        unlisted=None if self.images is None else len(self._unlisted))


def other(ext: str) -> str:
  """The partner's extension: '.json' for '.jpg' and back."""
  return '.json' if ext == '.jpg' else '.jpg'


def pair_members(members: Iterable[Member], *, tar: str,
                 images: Container[int] | None = None) -> Index:
  """Pairs `sa_<id>.jpg` with `sa_<id>.json` by stem; pure (`Pairing`)."""
  pairing = Pairing(tar, images)
  for m in members:
    pairing.add(m)
  return pairing.finish()


def corrupt(tar: str, where: str, detail: str) -> errors.BadInputError:
  """A `corrupt_tar` error at `where` (a member, or `@<byte offset>`)."""
  return errors.BadInputError(errors.CORRUPT_TAR, tar, where, detail)




_PAX_TYPES = {
    tarfile.XHDTYPE: 'pax header', tarfile.XGLTYPE: 'pax global header',
    tarfile.SOLARIS_XHDTYPE: 'Solaris pax header',
}
_EXTENDED_TYPES = {
    **_PAX_TYPES, tarfile.GNUTYPE_LONGNAME: 'GNU long name',
    tarfile.GNUTYPE_LONGLINK: 'GNU long link name',
}
_CHECKED_TYPES = frozenset(_EXTENDED_TYPES) | {tarfile.GNUTYPE_SPARSE}
_PAX_LENGTH = re.compile(rb'([0-9]{1,20}) ')  # As CPython's fixed parser.
_DIGIT_RUN = re.compile(rb'[0-9]{%d}' % (MAX_PAX_DIGITS + 1))


def pax_fault(data: bytes) -> str | None:
  """What is wrong with the records of a pax header, or None.

  Records are `<length> <keyword>=<value>\\n` back to back, then NUL bytes,
  as CPython's fixed parser reads them; a `size` is ASCII digits, no
  record is for a sparse member (unsupported), and no run of digits is
  longer than `MAX_PAX_DIGITS`. Linear in the data's length.
  """
  if _DIGIT_RUN.search(data):
    return (f'a run of more than {MAX_PAX_DIGITS} digits (tarfile parses'
            ' such records in quadratic time where CPython lacks the'
            ' CVE-2024-6232 fix)')
  pos = 0
  while pos < len(data) and data[pos] != 0:
    found = _PAX_LENGTH.match(data, pos)
    end = pos + int(found.group(1)) if found else pos
    if end - pos < 5 or end > len(data) or data[end - 1] != ord('\n'):
      return f'a malformed pax record at byte {pos} of its data'
    keyword, equals, value = data[found.end():end - 1].partition(b'=')
    if not keyword or not equals:
      return f'a malformed pax record at byte {pos} of its data'
    if keyword.startswith(b'GNU.sparse.'):
      return 'GNU sparse records: sparse members are not supported'
    if keyword == b'size' and not value.isdigit():
      return f'a size that is not a number ({value[:40]!r})'
    pos = end
  if data.count(0, pos) != len(data) - pos:
    return f'bytes after its records, at byte {pos} of its data'
  return None


def check_header(info: tarfile.TarInfo, read: Callable[[int], bytes], *,
                 tar: str, at: int, before: int) -> bytes | None:
  """Checks a header block before tarfile reads anything after it.

  The walker (`walk`, for both ways of reading a tar) calls it on every
  header block: tarfile reads an extended header whole, in one read, and
  parses pax records in quadratic time where CPython lacks the
  CVE-2024-6232 fix (3.11.7, for one). An extended header is read here, at
  most `MAX_EXTENDED_BYTES`, and checked.

  Args:
    info: the block, as `tarfile.TarInfo.frombuf` reads it.
    read: reads n bytes from just after the block.
    tar: the tar's name, for errors.
    at: the block's offset in the tar.
    before: extended headers before this one, for the same member.

  Returns:
    The extended header's data (padded to 512 bytes), or None for a
    member's own header (nothing read).

  Raises:
    BadInputError: `corrupt_tar`: a negative size, a sparse member, too
      many extended headers, one too large, cut short or malformed.
  """
  where = f'@{at}'
  if info.size < 0:
    raise corrupt(tar, where, f'a header with a negative size ({info.size})'
                  f' at byte {at}')
  if info.type == tarfile.GNUTYPE_SPARSE:
    raise corrupt(tar, where, f'a sparse member at byte {at}: not supported')
  kind = _EXTENDED_TYPES.get(info.type)
  if kind is None:
    return None
  what = f'{kind} of {info.size} bytes at byte {at}'
  if before >= MAX_EXTENDED_HEADERS:
    raise corrupt(tar, where, f'a {what}: more than {MAX_EXTENDED_HEADERS}'
                  ' extended headers before one member')
  if info.size > MAX_EXTENDED_BYTES:
    raise corrupt(tar, where, f'a {what}: over the {MAX_EXTENDED_BYTES} byte'
                  ' limit for extended headers (names, pax records)')
  padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
  data = read(padded)
  if len(data) < padded:
    raise corrupt(tar, where, f'a {what}: the file ends inside it')
  fault = pax_fault(data[:info.size]) if info.type in _PAX_TYPES else None
  if fault is not None:
    raise corrupt(tar, where, f'a {what}: {fault}')
  return data


def member_of(info: tarfile.TarInfo, data_offset: int) -> Member | None:
  """The `Member` of a tar entry whose data starts at `data_offset`.

  None for a folder entry not named like an image (structure, not a
  member). Entries other than regular files keep their kind and size 0.
  """
  kind = REGULAR if info.isreg() else _TAR_KINDS.get(info.type, 'special')
  if info.isdir() and canonical_stem(info.name.rstrip('/')) is None:
    return None
  return Member(info.name, data_offset, info.size if kind == REGULAR else 0,
                kind)


def data_blocks(info: tarfile.TarInfo) -> int:
  """Bytes of data after an entry's header, padded to 512 (tarfile's rule:
  only regular files and unknown types have data)."""
  if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES:
    return -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
  return 0



# ------------------------------------------------------------- the walker


class Cursor(Protocol):
  """Where the walker reads a tar: `SequentialReader`'s methods."""

  def tell(self) -> int:
    ...

  def read(self, n: int) -> bytes:
    ...

  def skip(self, n: int) -> int:
    ...


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tar entry, its headers read and checked.

  Attributes:
    member: the member (`member_of`), or None for a folder entry.
    start: the offset of its first header (extended ones included).
    next: the offset of the header after its data.
  """

  member: Member | None
  start: int
  next: int


def _parse(block: bytes, *, tar: str, at: int, what: str
           ) -> tarfile.TarInfo:
  try:
    return tarfile.TarInfo.frombuf(block, tarfile.ENCODING,
                                   'surrogateescape')
  except tarfile.HeaderError as e:
    raise corrupt(tar, f'@{at}', f'{what}: unreadable header at byte {at}'
                  f' ({e}){base.not_a_tar_hint(block) if at == 0 else ""}'
                  ) from None


def _run_info(blocks: list[bytes], start: int, tar: str) -> tarfile.TarInfo:
  """The member of a run of headers with extended ones, as tarfile reads it
  (their sizes and records were checked by `check_header`)."""
  raw = b''.join(blocks) + bytes(2 * tarfile.BLOCKSIZE)
  try:
    with tarfile.open(fileobj=io.BytesIO(raw), mode='r:') as tf:
      info = tf.next()
  except (tarfile.TarError, EOFError) as e:
    info, why = None, str(e)
  else:
    why = 'no member after them'
  if info is None:
    raise corrupt(tar, f'@{start}', 'corrupt or truncated tar: unreadable'
                  f' extended headers at byte {start} ({why})')
  return info


def _read_run(cursor: Cursor, *, tar: str
              ) -> tuple[tarfile.TarInfo, int] | None:
  """Reads one entry's headers: (its info, where they start), or None at
  the end-of-archive block.

  Raises:
    BadInputError: `corrupt_tar`, naming the byte offset.
  """
  start = cursor.tell()
  what = 'not a tar' if start == 0 else 'corrupt or truncated tar'
  blocks: list[bytes] = []
  while True:
    at = cursor.tell()
    block = cursor.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
      raise corrupt(tar, f'@{at}', f'{what}: no end-of-archive marker at'
                    f' byte {at} (the file ends at byte {at + len(block)})')
    if not blocks and block.count(0) == tarfile.BLOCKSIZE:
      return None
    info = _parse(block, tar=tar, at=at, what=what)
    blocks.append(block)
    data = check_header(info, cursor.read, tar=tar, at=at,
                        before=len(blocks) // 2)
    if data is None:
      break
    blocks.append(data)
  if len(blocks) > 1:
    info = _run_info(blocks, start, tar)
  return info, start


def truncated(tar: str, member: str, end: int, size: int
              ) -> errors.BadInputError:
  """The error of a tar that ends at `size`, before `end`, the end of
  `member`'s data (or of its padding to 512 bytes)."""
  return corrupt(tar, member, f'truncated tar: {member} needs bytes up to'
                 f' {end} but the file has {size}')


def walk(cursor: Cursor, *, tar: str) -> Iterator[Entry]:
  """The entries of a tar, from its headers: the one walker of tars.

  Every header is checked (`check_header`) before tarfile reads what
  follows it. After an entry is yielded, the caller may read its member's
  data from `cursor` (`read_data`); the walker then moves on to the next
  header with `cursor.skip`. A cursor that seeks reads headers only; one
  that streams reads the tar front to back.

  Raises:
    BadInputError: `corrupt_tar` at the damage (a bad header, a member cut
      short, no end-of-archive block, too many members), after the entries
      before it. The last member before damage may be where the damage is
      (`_members` drops it).
  """
  entries = 0
  while True:
    run = _read_run(cursor, tar=tar)
    if run is None:
      return
    info, start = run
    entries += 1
    if entries > MAX_MEMBERS:
      raise corrupt(tar, f'@{start}', f'more than {MAX_MEMBERS} members:'
                    ' not an SA-1B tar')
    data = cursor.tell()
    end = data + data_blocks(info)
    yield Entry(member_of(info, data), start, end)
    rest = end - cursor.tell()
    if rest > 0 and cursor.skip(rest) < rest:
      # Cut in the data, or in the padding after it: the message compares
      # the file's size with the end of the one that is cut.
      at = cursor.tell()
      raise truncated(tar, info.name,
                      data + info.size if at < data + info.size else end, at)


def read_data(cursor: Cursor, member: Member, *, tar: str) -> bytes:
  """A member's data, read from the cursor just after its headers."""
  data = cursor.read(member.size)
  if len(data) < member.size:
    raise truncated(tar, member.name, member.offset + member.size,
                    member.offset + len(data))
  return data


Damage = errors.BadInputError | None


def _members(cursor: Cursor, *, tar: str,
             keep: Callable[[Member], bool],
             act: Callable[[Member, bytes | None], Any],
             ) -> Generator[Any, None, Damage]:
  """Walks a tar, acting on each whole member; returns the damage, if any.

  A member is whole once the header after it is read sound: so each is
  acted on one entry late, and at damage the last member seen is dropped
  (its data may be where the damage is), whatever the cursor. Members
  `keep` says yes to are read (else skipped) and given to `act` with their
  data; what `act` returns, if not None, is yielded.
  """
  pending: tuple[Member, bytes | None] | None = None
  try:
    for entry in walk(cursor, tar=tar):
      if entry.member is None:
        continue
      if pending is not None and (out := act(*pending)) is not None:
        yield out
      data = (read_data(cursor, entry.member, tar=tar)
              if keep(entry.member) else None)
      pending = entry.member, data
  except errors.BadInputError as e:
    return e
  except errors.Error:
    raise  # A link or a source that could not be read: no verdict.
  except OSError as e:
    at = cursor.tell()
    what = 'not a tar' if at == 0 else 'corrupt or truncated tar'
    return corrupt(tar, f'@{at}', f'{what}: unreadable at byte {at} ({e})')
  if pending is not None and (out := act(*pending)) is not None:
    yield out
  return None


def _listed(cursor: Cursor, *, tar: str
            ) -> tuple[list[Member], Damage]:
  members: list[Member] = []
  walk_ = _members(cursor, tar=tar, keep=lambda m: False,
                   act=lambda m, _: members.append(m))
  try:
    while True:
      next(walk_)
  except StopIteration as end:
    return members, end.value


class _Seeking:
  """A cursor over a `RandomReader` that seeks past data (index mode)."""

  def __init__(self, reader: base.RandomReader, size: int):
    self._reader = reader
    self._size = size
    self._pos = 0

  def close(self) -> None:
    self._reader.close()

  def tell(self) -> int:
    return self._pos

  def read(self, n: int) -> bytes:
    data = self._reader.read_at(self._pos, n)
    self._pos += len(data)
    return data

  def skip(self, n: int) -> int:
    done = max(0, min(n, self._size - self._pos))
    self._pos += done
    return done


# ------------------------------------------------------------ index mode


class _FileReader:
  """`RandomReader` over a seekable file object."""

  def __init__(self, fileobj: BinaryIO):
    self._file = fileobj

  def read_at(self, offset: int, size: int) -> bytes:
    self._file.seek(offset)
    data = self._file.read(size)  # Whole, but for a short read.
    if len(data) == size or not data:
      return data
    out = bytearray(data)
    while len(out) < size and (data := self._file.read(size - len(out))):
      out += data
    return bytes(out)

  def close(self) -> None:
    pass


def index_members(fileobj: BinaryIO, *, tar: str
                  ) -> tuple[list[Member], Damage]:
  """Lists a tar file's members from its headers, seeking past the data.

  Returns:
    (members, damage): the whole members (before any damage, less the last
    one: see `_members`), and the error that stopped the listing, or None
    for a whole tar.
  """
  fileobj.seek(0, os.SEEK_END)
  size = fileobj.tell()
  return _listed(_Seeking(_FileReader(fileobj), size), tar=tar)


def index(source: base.Source, *, images: Container[int] | None = None
          ) -> Index:
  """Indexes a source: a tar's headers, or a folder's files; with an image
  list, its images only.

  A local tar's headers are read by seek, past the data. A remote tar's
  headers are spread through it, one before each member: reading only them
  would take a request per member (about 22,000 for an SA-1B tar, one after
  the other), so a remote tar is read front to back instead, once, its data
  skipped as it goes by (`open_sequential`).

  A tar's damage is in `Index.damage`, not raised; the pairs and problems
  are those of the whole members before it. A remote tar with an expected
  checksum is hashed as it is read: if it does not match, the index has no
  images (`Index.without_images`).
  """
  if source.folder:
    return pair_members(source.list_members(), tar=source.name,
                        images=images)
  if source.remote:
    cursor = source.open_sequential(0)
  else:
    cursor = _Seeking(source.open_random(), source.size())
  try:
    members, damage = _listed(cursor, tar=source.name)
    mismatch = checksums.stream_verdict(cursor)
  finally:
    cursor.close()
  result = pair_members(members, tar=source.name, images=images)
  result.damage = damage
  return result if mismatch is None else result.without_images(mismatch)


def _read_at(reader: base.RandomReader, member: Member, *, tar: str
             ) -> bytes:
  data = reader.read_at(member.offset, member.size)
  if len(data) != member.size:
    raise corrupt(tar, member.name,
                  f'truncated tar: read {len(data)} of {member.size} bytes'
                  f' at offset {member.offset}')
  return data


def read_member(fileobj: BinaryIO, member: Member, *, tar: str) -> bytes:
  """Reads one tar member's bytes from a file (exactly `member.size`)."""
  return _read_at(_FileReader(fileobj), member, tar=tar)


class ShardReader:
  """Reads members of one source: at their offsets in a tar (one
  `open_random` reader, opened on first use), or a folder's files."""

  def __init__(self, source: base.Source):
    self.shard = source
    self._reader: base.RandomReader | None = None

  def __enter__(self) -> 'ShardReader':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._reader is not None:
      self._reader.close()
      self._reader = None

  def read(self, member: Member) -> bytes:
    if self.shard.folder:
      return self.shard.read_member(member)
    if self._reader is None:
      self._reader = self.shard.open_random()
    return _read_at(self._reader, member, tar=self.shard.name)


def read_example(reader: ShardReader, pair: Pair) -> tuple[int, dict]:
  """Reads one image's members and builds its example (key, example).

  Raises:
    BadInputError: naming the tar, the member and what is wrong.
  """
  return build_example(reader.shard.name, pair, reader.read(pair.jpg),
                       reader.read(pair.json))


def build_example(tar: str, pair: Pair, jpg: bytes, json_bytes: bytes
                  ) -> tuple[int, dict]:
  """An image's example from its two members' bytes (key, example).

  Raises:
    BadInputError: naming the tar, the json member and what is wrong.
  """
  where = (tar, pair.json.name)
  record = records_lib.parse_json(json_bytes, where=where)
  return records_lib.make_example(jpg, record, stem=pair.stem, where=where)


# ----------------------------------------------------------- stream mode


@dataclasses.dataclass(frozen=True)
class PairBytes:
  """An image whose two members were read: ready to build."""

  pair: Pair
  jpg: bytes
  json: bytes


class _Held:
  """Members waiting for their partner, their bytes held up to a cap."""

  def __init__(self, cap: int):
    self.cap = cap
    self.bytes = 0
    self.peak = 0
    self._data: dict[str, bytes] = {}  # Stem -> the waiting member's bytes.

  def has(self, stem: str) -> bool:
    return stem in self._data

  def room(self, size: int) -> bool:
    return self.bytes + size <= self.cap

  def put(self, stem: str, data: bytes) -> None:
    self._data[stem] = data
    self.bytes += len(data)
    self.peak = max(self.peak, self.bytes)

  def take(self, stem: str) -> bytes | None:
    data = self._data.pop(stem, None)
    if data is not None:
      self.bytes -= len(data)
    return data


def _digest(data: bytes) -> bytes:
  return hashlib.blake2b(data, digest_size=32).digest()


class _Stream:
  """One tar read front to back: members paired as they go by.

  With `verify` (the tar is checked against its checksum as it goes by),
  the bytes of each member not held are digested instead (`digests`), so
  that a member read again after the verdict is known to be the bytes
  verified (`changed`).
  """

  def __init__(self, tar: str, hold_bytes: int,
               images: Container[int] | None, *, verify: bool = False):
    self.pairing = Pairing(tar, images)
    self.held = _Held(hold_bytes)
    self.later: set[str] = set()  # Paired, a member not held: read again.
    self.digests: dict[str, bytes] | None = {} if verify else None
    self._digest_only: set[str] = set()  # Member names read to digest.

  def keep(self, member: Member) -> bool:
    """Whether to keep a member's bytes as they go by."""
    found = canonical_stem(member.name)
    if found is None or member_fault(member, ext=found[1],
                                     tar=self.pairing.tar):
      return False
    stem, ext = found
    if not self.pairing.listed(stem):
      return False  # Not in the image list: never built.
    if self.pairing.failed(stem) or self.pairing.member(stem, ext):
      return False  # A problem already, or stored twice: never built.
    if self.pairing.member(stem, other(ext)):
      wanted = self.held.has(stem)  # Built at once if its partner is held.
    else:
      wanted = self.held.room(member.size)
    if not wanted and self.digests is not None:
      self._digest_only.add(member.name)  # Read again later: digest it.
      return True
    return wanted

  def add(self, member: Member, data: bytes | None) -> PairBytes | None:
    """A whole member: held, paired (the pair, if both members' bytes are
    in hand; else it is read again at the end), or a problem."""
    if member.name in self._digest_only:
      self._digest_only.discard(member.name)
      self.digests[member.name] = _digest(data)
      data = None
    completed = self.pairing.add(member)
    found = canonical_stem(member.name)
    if found is None:
      return None
    stem, ext = found
    if completed is None:
      if self.pairing.failed(stem):
        self.held.take(stem)
      elif data is not None and not self.pairing.member(stem, other(ext)):
        self.held.put(stem, data)
      return None
    partner = self.held.take(stem)
    if partner is None or data is None:
      self.later.add(stem)
      return None
    jpg, js = (data, partner) if ext == '.jpg' else (partner, data)
    return PairBytes(Pair(stem, self.pairing.member(stem, '.jpg'),
                          self.pairing.member(stem, '.json')), jpg, js)

  def changed(self, member: Member, data: bytes
              ) -> errors.BadInputError | None:
    """With `verify`, the error if a member read again is not the bytes
    that went by (the source changed after it was verified)."""
    if self.digests is None or self.digests.get(member.name) == _digest(
        data):
      return None
    return errors.BadInputError(
        errors.CHECKSUM_MISMATCH, self.pairing.tar, member.name,
        'read again after the tar matched its checksum, the member is not'
        ' the bytes that were checked (the source changed while it was'
        ' read)')


def stream(source: base.Source, *, hold_bytes: int,
           images: Container[int] | None = None
           ) -> Iterator[PairBytes | Index]:
  """Reads a tar once, front to back (`open_sequential`), pairing members
  as they go by: for remote tars, where every read is a request.

  Yields each image whose members were both read, as soon as they were
  (`PairBytes`). A member waits for its partner with its bytes held, up to
  `hold_bytes` in all; past that only where it is is kept, and once the
  tar is read such pairs are read again (`open_random`, a request per
  member) and yielded. Last comes the tar's `Index`, exactly what `index`
  would find (pairs, problems, ignored members, damage): an image yielded
  whose stem comes again later (stored twice) is not among its pairs, but
  among its problems. With an image list (`images`), only its images.

  A source with an expected checksum is hashed as it is read; if the tar
  does not match, its `Index` has no pairs (`Index.without_images`): the
  engines drop every image of it already yielded, as they drop a stem
  stored twice. The members of such a tar that are read again are checked
  against digests taken as they went by: one that differs makes the tar a
  mismatch all the same.
  """
  tar = source.name
  cursor = source.open_sequential(0)
  state = _Stream(tar, hold_bytes, images, verify=checksums.verifies(cursor))
  try:
    damage = yield from _members(cursor, tar=tar, keep=state.keep,
                                 act=state.add)
    mismatch = checksums.stream_verdict(cursor)
  finally:
    cursor.close()
  result = state.pairing.finish()
  result.damage = damage
  if mismatch is not None:
    yield result.without_images(mismatch)
    return
  again = [p for p in result.pairs if p.stem in state.later]
  if again:
    reader = ShardReader(source)
    try:
      for pair in sorted(again, key=lambda p: p.jpg.offset):
        jpg, js = reader.read(pair.jpg), reader.read(pair.json)
        changed = (state.changed(pair.jpg, jpg)
                   or state.changed(pair.json, js))
        if changed is not None:  # Those yielded before are dropped too.
          yield result.without_images(changed)
          return
        yield PairBytes(pair, jpg, js)
    finally:
      reader.close()
  yield result
