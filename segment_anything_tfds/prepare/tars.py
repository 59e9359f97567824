"""Index, pair and read the members of SA-1B shards, in place and safely.

A tar is indexed once, reading only its 512-byte headers and seeking past the
data. Members pair by stem (`sa_<id>.jpg` + `sa_<id>.json`) wherever they sit
(root, `./`, a folder) and in any order. Readers then seek straight to each
pair's bytes. Extracted `sa_NNNNNN/` folders are indexed the same way, one
file per member.

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

`pair_members` is pure. `index_shard` returns an `Index`: the pairs, one
`BadInputError` per image that cannot be built (the lenient audit counts
these), the ignored members, and the damage that stopped indexing a corrupt
tar, if any (a lenient build keeps the images before it).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import tarfile
from typing import BinaryIO, Callable, Iterable, Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds.sources import base
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
  """

  tar: str
  pairs: list[Pair]
  problems: list[errors.BadInputError]
  ignored: list[str]
  damage: errors.BadInputError | None = None

  @property
  def images(self) -> int:
    """Images indexed: those readable plus those skipped for a problem."""
    return len(self.pairs) + len(self.problems)


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

  The one rule for both ways of reading a tar: `pair_members` and the byte
  range reader (`streaming.py`) call it on each `sa_<id>.jpg|json` member.
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


def pair_members(members: Iterable[Member], *, tar: str) -> Index:
  """Pairs `sa_<id>.jpg` with `sa_<id>.json` by stem; pure.

  Every image (stem) seen ends as one pair or one problem, never both; a
  stem with several faults is reported once, for its first fault.
  """
  jpgs: dict[str, Member] = {}
  jsons: dict[str, Member] = {}
  problems: dict[str, errors.BadInputError] = {}
  ignored: list[str] = []

  def problem(stem, reason, member, detail):
    problems.setdefault(stem, errors.BadInputError(reason, tar, member, detail))

  for m in members:
    found = canonical_stem(m.name)
    if found is None:
      ignored.append(m.name)
      continue
    stem, ext = found
    fault = member_fault(m, ext=ext, tar=tar)
    if fault is not None:
      problems.setdefault(stem, fault)
      continue
    table = jpgs if ext == '.jpg' else jsons
    if stem in table:
      problem(stem, errors.DUPLICATE_MEMBER, m.name,
              f'{stem}{ext} is stored twice: as {table[stem].name} and as'
              f' {m.name}')
      continue
    table[stem] = m
  pairs = []
  for stem in jpgs.keys() | jsons.keys():
    jpg, js = jpgs.get(stem), jsons.get(stem)
    if stem in problems:
      continue
    if jpg is None:
      problem(stem, errors.MISSING_JPG, js.name,
              f'{stem}.json has no {stem}.jpg')
    elif js is None:
      problem(stem, errors.MISSING_JSON, jpg.name,
              f'{stem}.jpg has no {stem}.json')
    else:
      pairs.append(Pair(stem, jpg, js))
  pairs.sort(key=lambda p: p.image_id)
  return Index(
      tar, pairs,
      [problems[s] for s in sorted(problems,
                                   key=records_lib.image_id_from_stem)],
      ignored)


def no_images_error(index: Index) -> errors.BadInputError:
  """Why a shard offered no image at all: the members seen and ignored."""
  seen = ', '.join(index.ignored[:8]) + (' ...' if len(index.ignored) > 8
                                          else '')
  return errors.BadInputError(
      errors.NO_IMAGES, index.tar, '-',
      'no SA-1B image members (sa_<id>.jpg + sa_<id>.json, <id> in ASCII'
      f' digits without leading zeros) among its {len(index.ignored)}'
      f' members{": " + seen if seen else ""}')


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

  Both ways of walking a tar (`index_members` and `streaming.read_run`)
  call it on every header block: tarfile reads an extended header whole,
  in one read, and parses pax records in quadratic time where CPython
  lacks the CVE-2024-6232 fix (3.11.7, for one). An extended header is
  read here, at most `MAX_EXTENDED_BYTES`, and checked.

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


def _plain(block: bytes) -> bool:
  """Whether `check_header` passes a header block without a look at more
  than its raw bytes: not a type it checks, and a size field that cannot
  be negative (base-256 starts with 0xff, octal has a '-'). Parsing every
  header twice would double the cost of indexing."""
  return (block[156:157] not in _CHECKED_TYPES and block[124:125] != b'\xff'
          and b'-' not in block[124:136])


def _check_headers(fileobj: BinaryIO, at: int, *, tar: str) -> None:
  """`check_header` on the headers of the member at `at`, before tarfile
  reads them (up to its own header; damage is left to tarfile)."""
  fileobj.seek(at)
  for before in range(MAX_EXTENDED_HEADERS + 1):
    block = fileobj.read(tarfile.BLOCKSIZE)
    if _plain(block):
      return
    try:
      info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING,
                                     'surrogateescape')
    except tarfile.HeaderError:
      return
    if check_header(info, fileobj.read, tar=tar, at=at,
                    before=before) is None:
      return
    at = fileobj.tell()


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


def index_members(fileobj: BinaryIO, *, tar: str
                  ) -> tuple[list[Member], errors.BadInputError | None]:
  """Lists a tar's entries from its headers, skipping the data.

  Returns:
    (members, damage): the entries before any damage, and the error that
    stopped the listing (a bad header, no end-of-archive marker, a member
    cut short), or None for a whole tar.
  """
  members: list[Member] = []
  header = 0  # Where the next header starts.
  try:
    _check_headers(fileobj, header, tar=tar)
    fileobj.seek(header)
    with tarfile.open(fileobj=fileobj, mode='r:') as tf:  # Reads member 0.
      while (info := tf.next()) is not None:
        header = tf.offset
        tf.members = []  # Keep the index flat in memory for huge tars.
        member = member_of(info, info.offset_data)
        if member is not None:
          members.append(member)
        if len(members) > MAX_MEMBERS:
          return members, corrupt(
              tar, f'@{info.offset}', f'more than {MAX_MEMBERS} members: not'
              ' an SA-1B tar')
        _check_headers(fileobj, header, tar=tar)  # Before tf.next() does.
      end = tf.offset
    fileobj.seek(end)
    tail = fileobj.read(512)
  except errors.DownloadError:
    raise  # A link that could not be read: no verdict on the tar.
  except errors.BadInputError as e:
    return members, e
  except (tarfile.TarError, EOFError, OSError) as e:
    what = 'not a tar' if not members else 'corrupt or truncated tar'
    return members, corrupt(tar, f'@{header}',
                             f'{what}: unreadable header at byte {header}'
                             f' ({e})')
  # tarfile stops quietly at a bad header after the first member; only an
  # end-of-archive block (512 zero bytes) means the tar really ended there.
  if len(tail) < 512 or tail.count(0) != 512:
    after = f' after {members[-1].name}' if members else ''
    what = 'not a tar' if not members else 'corrupt or truncated tar'
    return members, corrupt(
        tar, f'@{end}', f'{what}: no end-of-archive marker at byte {end}'
        f'{after}')
  return members, _check_end(fileobj, members, tar=tar)


def _check_end(fileobj: BinaryIO, members: Sequence[Member], *, tar: str
               ) -> errors.BadInputError | None:
  """A tar cut inside its last member still lists it: check it is whole."""
  if not members:
    return None
  last = max(members, key=lambda m: m.offset + m.size)
  end = last.offset + last.size
  fileobj.seek(0, os.SEEK_END)
  size = fileobj.tell()
  if size < end:
    return corrupt(tar, last.name, f'truncated tar: {last.name} needs bytes'
                    f' up to {end} but the file has {size}')
  return None


def _before_damage(members: list[Member], fileobj: BinaryIO) -> list[Member]:
  """The members of a damaged tar that are safe to read.

  The last member listed is dropped (its data may be where the damage is),
  and so is any whose data runs past the end of the file.
  """
  fileobj.seek(0, os.SEEK_END)
  size = fileobj.tell()
  return [m for m in members[:-1] if m.offset + m.size <= size]


def index_shard(shard: base.Source) -> Index:
  """Indexes a shard: a tar's headers, or a folder's files.

  A tar's damage is in `Index.damage`, not raised.
  """
  if shard.folder:
    return pair_members(shard.list_members(), tar=shard.name)
  with shard.open() as f:
    members, damage = index_members(f, tar=shard.name)
    readable = members if damage is None else _before_damage(members, f)
  index = pair_members(readable, tar=shard.name)
  index.damage = damage
  return index


def read_member(fileobj: BinaryIO, member: Member, *, tar: str) -> bytes:
  """Reads one tar member's bytes at its offset (exactly `member.size`)."""
  fileobj.seek(member.offset)
  data = fileobj.read(member.size)
  if len(data) != member.size:
    raise corrupt(tar, member.name,
                   f'truncated tar: read {len(data)} of {member.size} bytes'
                   f' at offset {member.offset}')
  return data


class ShardReader:
  """Reads members of one shard: seeks in a tar, or opens a folder's files."""

  def __init__(self, shard: base.Source):
    self.shard = shard
    self._file = None

  def __enter__(self) -> 'ShardReader':
    if not self.shard.folder:
      self._file = self.shard.open()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def read(self, member: Member) -> bytes:
    if self._file is not None:
      return read_member(self._file, member, tar=self.shard.name)
    return self.shard.read_member(member)


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
