"""Checksum lists, verifying tars against them, and moving bad tars aside.

Which list a build checks (`DownloadOptions.checksums`, `--checksums`):

  'known'   the published md5s of the 1000 SA-1B tars, shipped with this
            package (`data/checklist.txt`, see `data/README.md`: a copy of
            XuyangShen/SA-1B-Fast-Downloader's checklist.txt at 7ddfd31)
  FILE      a list of your own
  'none'    no check
  None      (the default) `segment_anything_checksums.txt` in manual_dir
            if it is there, else no check

A checksum list is the output of `md5sum` or `sha256sum`: one
`<hex>  sa_000000.tar` line per tar (`*name` and paths are accepted; only
the file name counts). The hex length says the algorithm: 32 is md5, 64 is
sha256. Every problem with the list itself is a `ChecksumError` naming the
file and line.

Tars are hashed as their bytes go by, never in a pass of their own when
something reads them whole anyway:

* a download hashes its body as it writes it (`download.fetch`);
* a remote tar read front to back (`open_sequential(0)` of a source with a
  `checksum`) hashes what it reads; the engine asks for the verdict once
  its walk is done (`stream_verdict`), which reads what is left (the tar's
  end padding) and compares;
* a local tar, which the build reads by seeking, is hashed once
  (`verify_all`: the md5s of many tars side by side, one per SIMD lane,
  `md5x.py`) and the verdict kept in a `<tar>.verified` marker next to it
  (algorithm, digest, size, mtime): while the file is unchanged it is not
  hashed again.
  Markers are written without following a symlink (a new file, renamed
  into place) and only this user's (or root's) markers are believed.

  <download_dir>/segment_anything/quarantine/   downloaded tars that failed
                                                a check, moved aside
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib.resources
import os
import stat
import time
from typing import Any, Callable, Sequence

from etils import epath

from segment_anything_tfds import errors
from segment_anything_tfds.errors import ChecksumError
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import hub
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import md5x

CHECKSUMS_FILE_NAME = 'segment_anything_checksums.txt'
QUARANTINE_SUBDIR = 'quarantine'
VERIFIED_SUFFIX = '.verified'
KNOWN = 'known'
NONE = 'none'
# Where the known md5s come from, for messages and the docs.
KNOWN_ORIGIN = ('XuyangShen/SA-1B-Fast-Downloader checklist.txt at commit'
                ' 7ddfd31')
KNOWN_LIST = f'the published SA-1B md5s ({KNOWN_ORIGIN})'
# How a mismatch names it (the error's first words name `KNOWN_LIST`).
KNOWN_SHORT = 'the published SA-1B md5 list'
_KNOWN_FILE = 'data/checklist.txt'
# 1000 sha256 lines are about 85 kB; anything far larger is not a list.
MAX_CHECKSUMS_FILE_BYTES = 16 << 20
_MAX_MARKER_BYTES = 4096
_HASHES = {32: 'md5', 64: 'sha256'}
_CHUNK = 8 << 20
_SKIP_CHUNK = 1 << 20
# Local files are hashed through one reused buffer of this size (no new
# 8 MiB object per read: a quarter less CPU than reading into new bytes).
_HASH_BUFFER = 1 << 20


@dataclasses.dataclass(frozen=True)
class Expected:
  """The digest a tar must have, and the list that says so.

  Attributes:
    algo: 'md5' or 'sha256'.
    digest: lower-case hex.
    listed_in: the list, for messages (a path, or `KNOWN_LIST`).
  """

  algo: str
  digest: str
  listed_in: str = 'the checksum list'

  def problem(self, got: str) -> str | None:
    """None if `got` is the digest; else what is wrong, in words."""
    if got == self.digest:
      return None
    return f'{self.algo} is {got}, {self.listed_in} says {self.digest}'


@dataclasses.dataclass(frozen=True)
class Checklist:
  """A parsed checksum list: tar name -> (algorithm, hex digest)."""

  source: str
  sums: dict[str, tuple[str, str]]
  short: str | None = None  # How a mismatch names it (default: `source`).

  def expected(self, name: str) -> Expected | None:
    entry = self.sums.get(name)
    return None if entry is None else Expected(*entry,
                                               self.short or self.source)


def record(listed: Checklist | None, names: Sequence[str] = ()
           ) -> dict[str, Any]:
  """How a build's tars were checked, for its metadata: the list (named as
  a mismatch names it) and, of the tars `names`, the digest each was
  checked against (`{'sa_000000.tar': 'md5:<hex>'}`; tars it does not
  list are not checked); or `{'list': 'none'}`."""
  if listed is None:
    return {'list': NONE}
  return {'list': listed.short or listed.source,
          'tars': {n: f'{e.algo}:{e.digest}' for n in sorted(names)
                   if (e := listed.expected(n)) is not None}}


def unchecked(recorded: dict[str, Any] | None, listed: Checklist,
              names: Sequence[str]) -> list[str]:
  """Of the tars `names` (a prepared dataset's), those `listed` gives a
  digest that they were not checked against (`recorded`, its `record`)."""
  done = (recorded or {}).get('tars') or {}
  return [n for n in sorted(names)
          if (e := listed.expected(n)) is not None
          and done.get(n) != f'{e.algo}:{e.digest}']


# ------------------------------------------------------------- lists


def parse_checksums(text: str, *, source: str) -> dict[str, tuple[str, str]]:
  """`<hex>  sa_000000.tar` lines -> name -> (algorithm, hex).

  Raises:
    ChecksumError: naming `source` and the line: a line without two
      columns, a digest that is neither md5 nor sha256, a name with two
      different digests, or no line at all.
  """
  out: dict[str, tuple[str, str]] = {}
  for lineno, line in enumerate(text.split('\n'), start=1):
    line = line.strip(' \t\r')  # Lines end in \n alone, as md5sum writes.
    if not line or line.startswith('#'):
      continue
    name, entry = _parse_line(line, source=f'{source}:{lineno}')
    if name in out and out[name] != entry:
      raise ChecksumError(f'{source}:{lineno}: {name} has two different'
                          ' checksums')
    out[name] = entry
  if not out:
    raise ChecksumError(f'{source}: the checksum list is empty')
  return out


def _parse_line(line: str, *, source: str) -> tuple[str, tuple[str, str]]:
  parts = line.split(None, 1)
  if len(parts) != 2:
    raise ChecksumError(f'{source}: expected "<hex>  <file name>", got'
                        f' {line!r:.120}')
  digest, name = parts[0].lower(), parts[1].strip(' \t').lstrip('*')
  name = name.replace('\\', '/').rsplit('/', 1)[-1]
  if not name or not name.isprintable() or any(c.isspace() for c in name):
    raise ChecksumError(
        f"{source}: '{errors.printable(name)[:80]}' is not a file name (no"
        ' spaces or control characters; a comment goes on a line of its'
        ' own, after #)')
  algo = _HASHES.get(len(digest))
  if algo is None or any(c not in '0123456789abcdef' for c in digest):
    raise ChecksumError(
        f'{source}: {digest!r:.80} is neither an md5 (32 hex digits) nor a'
        ' sha256 (64 hex digits)')
  return name, (algo, digest)


def read_checksums(path: epath.PathLike) -> dict[str, tuple[str, str]]:
  """Reads and parses a checksum list (at most `MAX_CHECKSUMS_FILE_BYTES`;
  a local one must be a regular file, `local.open_input`)."""
  path = epath.Path(path)
  with local.open_input(path, 'checksum list', error=ChecksumError) as f:
    try:
      data = f.read(MAX_CHECKSUMS_FILE_BYTES + 1)
    except Exception as e:  # pylint: disable=broad-except
      raise ChecksumError(f'checksum list {path}: cannot be read'
                          f' ({errors.first_line(e)})') from None
  if len(data) > MAX_CHECKSUMS_FILE_BYTES:
    raise ChecksumError(f'{path}: over {MAX_CHECKSUMS_FILE_BYTES >> 20} MiB:'
                        ' not a checksum list')
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ChecksumError(f'{path}: not UTF-8 text at byte {e.start}: not a'
                        ' checksum list') from None
  return parse_checksums(text, source=os.fspath(path))


def known_text() -> bytes:
  """The shipped list of the published md5s, as it is in the package."""
  return importlib.resources.files(__package__).joinpath(
      _KNOWN_FILE).read_bytes()


@functools.lru_cache(maxsize=1)
def known() -> Checklist:
  """The published md5s of the 1000 SA-1B tars (`KNOWN_LIST`)."""
  return Checklist(KNOWN_LIST, parse_checksums(known_text().decode('ascii'),
                                               source=KNOWN_LIST),
                   KNOWN_SHORT)


def checklist(choice: str | None,
              manual_dir: epath.PathLike | None = None) -> Checklist | None:
  """The list a build checks: `choice` is 'known', 'none', a file, or None
  for `segment_anything_checksums.txt` in manual_dir if it is there.

  Raises:
    ChecksumError: the list cannot be used (naming the file and line).
  """
  if choice == NONE:
    return None
  if choice == KNOWN:
    return known()
  if choice is not None:
    return Checklist(os.fspath(choice), read_checksums(choice))
  if manual_dir is None or hub.is_hub_uri(manual_dir):
    return None  # A Hub folder is listed, not searched for files.
  auto = epath.Path(manual_dir) / CHECKSUMS_FILE_NAME
  # A symlink to a list that is gone (a disk not mounted) is an error, not
  # a build without checks.
  if not (os.path.islink(os.fspath(auto)) or auto.exists()):
    return None
  return Checklist(os.fspath(auto), read_checksums(auto))


# ------------------------------------------------------------ hashing


def hash_fd(h, fd: int, size: int | None = None) -> int:
  """Feeds the file `fd` from its position to `h` (`size` bytes at most,
  None: to its end); returns the bytes hashed."""
  buf = bytearray(_HASH_BUFFER)
  view = memoryview(buf)
  done = 0
  with open(fd, 'rb', buffering=0, closefd=False) as f:
    while size is None or done < size:
      n = f.readinto(view if size is None else view[:min(
          len(buf), size - done)])
      if not n:
        break
      h.update(view[:n])
      done += n
  return done


def file_digest(source: base.Source, algo: str,
                open_local: Callable[[], int] | None = None) -> str:
  """The `algo` digest of the tar `source`, read front to back; a local
  tar is read from the descriptor `open_local()` gives (default: the tar
  opened by `local.open_tar`)."""
  h = hashlib.new(algo)
  if isinstance(source, local.LocalTar):
    fd = (open_local or functools.partial(local.open_tar, source.location,
                                          source.name))()
    try:
      hash_fd(h, fd)
    except OSError as e:
      raise _unreadable(source, e) from None
    finally:
      os.close(fd)
    return h.hexdigest()
  reader = source.open_sequential(0)
  try:
    while chunk := reader.read(_CHUNK):
      h.update(chunk)
  finally:
    reader.close()
  return h.hexdigest()


class HashingReader:
  """A `SequentialReader` of a whole tar that hashes every byte read.

  Skipping reads too (what is skipped is hashed). `verdict()` reads the
  rest and compares.
  """

  def __init__(self, reader: base.SequentialReader, *, name: str,
               size: int, expected: Expected):
    self._reader = reader
    self._name = name
    self._size = size
    self._expected = expected
    self._hash = hashlib.new(expected.algo)

  def tell(self) -> int:
    return self._reader.tell()

  def read(self, n: int) -> bytes:
    data = self._reader.read(n)
    self._hash.update(data)
    return data

  def skip(self, n: int) -> int:
    done = 0
    while done < n:
      got = len(self.read(min(n - done, _SKIP_CHUNK)))
      if not got:
        break
      done += got
    return done

  def close(self) -> None:
    self._reader.close()

  def verdict(self) -> errors.BadInputError | None:
    """Reads the rest of the tar, hashing it; None if the digest is the
    one expected, else a `checksum_mismatch` error naming the tar, the
    digest expected and the one read."""
    self.skip(self._size - self.tell())
    if self.tell() != self._size:
      return errors.BadInputError(
          errors.CHECKSUM_MISMATCH, self._name, '-',
          f'ended at byte {self.tell()} of {self._size}: its'
          f' {self._expected.algo} cannot be checked')
    problem = self._expected.problem(self._hash.hexdigest())
    if problem is None:
      return None
    return errors.BadInputError(errors.CHECKSUM_MISMATCH, self._name, '-',
                                problem)


def hashing(reader: base.SequentialReader, source: base.Source, start: int
            ) -> base.SequentialReader:
  """`reader` of `source` from `start`, hashing if it reads the whole tar
  (`start` 0) and the source has an expected `checksum`."""
  expected = getattr(source, 'checksum', None)
  if expected is None or start != 0:
    return reader
  return HashingReader(reader, name=source.name, size=source.size(),
                       expected=expected)


def verifies(reader: base.SequentialReader) -> bool:
  """Whether `reader` checks the tar it reads (`hashing` made it so), and
  `stream_verdict` will judge it."""
  return isinstance(reader, HashingReader)


def stream_verdict(reader: base.SequentialReader
                   ) -> errors.BadInputError | None:
  """The checksum verdict of a tar read front to back, once the walk of it
  is done and before `reader` is closed.

  For a reader of `Source.open_sequential(0)` whose source carries an
  expected checksum, reads what is left of the tar (its end padding: the
  walk stops at the end-of-archive blocks) and compares; for any other
  reader, None.

  Returns:
    None if the tar matches (or nothing is to be checked); else a
    `BadInputError` with reason `checksum_mismatch`, naming the tar and
    the digests expected and read. The engine raises it (strict), or drops
    every record of that tar and audits it as a skipped tar (lenient).
  """
  return reader.verdict() if verifies(reader) else None


# ------------------------------------------------------------ markers


def _marker_text(st: os.stat_result, expected: Expected) -> str:
  """A marker's text: the digest, and the file it was taken of. The inode
  and its change time (which no one can set back) tell a file replaced by
  another of the same size and modification time (`cp -p`, `rsync -t`)."""
  return (f'{expected.algo}:{expected.digest} {st.st_size} {st.st_mtime_ns}'
          f' {st.st_dev}:{st.st_ino} {st.st_ctime_ns}\n')


def _read_marker(path: str) -> str | None:
  """The text of `path`'s marker: a regular file of this user (or root),
  not through a symlink; None otherwise."""
  try:
    fd = os.open(path + VERIFIED_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW
                 | os.O_NONBLOCK | os.O_CLOEXEC)
  except OSError:
    return None
  try:
    st = os.fstat(fd)
    if (not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0)
        or st.st_size > _MAX_MARKER_BYTES):
      return None
    return os.read(fd, _MAX_MARKER_BYTES).decode('ascii', 'replace')
  except OSError:
    return None
  finally:
    os.close(fd)


def write_marker(path: str, text: str) -> bool:
  """Writes `text` to `path`'s marker; whether it was written.

  Whole, into a new file renamed over the marker (`local.write_whole`): a
  symlink or a file planted there is replaced, never written through. A
  folder that cannot be written (read-only tars), or a full disk, leaves
  no marker: it is a cache, and the tar is hashed again next time.
  """
  try:
    local.write_whole(path + VERIFIED_SUFFIX, text.encode('ascii'),
                      'the marker')
  except (errors.ConfigError, errors.DiskSpaceError):
    return False
  return True


def mark_verified(path: str, expected: Expected) -> bool:
  """Records that the local tar `path`, as it is now, has `expected`."""
  return write_marker(path, _marker_text(os.stat(path), expected))


def verify(source: base.Source, expected: Expected) -> str | None:
  """None if the tar `source` has the `expected` digest; else what is wrong
  (`verify_all` of one tar)."""
  return verify_all([(source, expected)])[0]


def verify_all(items: Sequence[tuple[base.Source, Expected]],
               workers: int = 1,
               judged: dict[int, tuple[int, ...]] | None = None
               ) -> list[str | None]:
  """For each (tar, expected digest): None if it matches, else what is
  wrong; `workers` threads hash at once. `judged`, if given, gets i ->
  the `local.identity` of the file each local tar items[i] was judged by
  (hashed, or believed from its marker): a later read that opens another
  file, or this one written since, can tell (`LocalTar.checked`).

  A local tar is hashed once: its verdict is kept in a marker next to it
  (`mark_verified`), believed while the tar's path, size and mtime are
  unchanged. The marker describes the file that was opened and hashed,
  and is written only if the path still names that file, unchanged,
  after the hash. Local tars checked against md5s are hashed side by side,
  one per SIMD lane (`md5x`), when there are more of them than threads;
  the others one per thread with hashlib. A remote tar is read whole (a
  stream checks as it reads, `stream_verdict`).

  Raises:
    SourceError: a tar cannot be opened or read (naming it).
  """
  results: list[str | None] = [None] * len(items)
  judged = {} if judged is None else judged
  todo = []
  for i, (source, expected) in enumerate(items):
    if isinstance(source, local.LocalTar) and (
        marked := _marked(source, expected)) is not None:
      judged[i] = marked
    else:
      todo.append(i)
  # The file each local tar was hashed from, as opened (`fstat`): its
  # marker describes that file, whatever the path names before or after.
  opened: dict[int, os.stat_result] = {}

  def opener(i: int) -> int:
    source = items[i][0]
    fd = local.open_tar(source.location, source.name)
    opened[i] = os.fstat(fd)
    return fd

  is_local = {i for i in todo if isinstance(items[i][0], local.LocalTar)}
  lanes = [i for i in todo if i in is_local and items[i][1].algo == 'md5']
  got: dict[int, str] = {}
  if md5x.available() and len(lanes) > workers:
    got = dict(zip(lanes, _md5_lanes(items, lanes, opener, workers)))
  rest = [i for i in todo if i not in got]
  with concurrent.futures.ThreadPoolExecutor(
      max(1, min(workers, len(rest))), thread_name_prefix='sa1b-verify') as ex:
    got.update(zip(rest, ex.map(lambda i: file_digest(
        items[i][0], items[i][1].algo,
        functools.partial(opener, i) if i in is_local else None), rest)))
  for i in todo:
    source, expected = items[i]
    results[i] = expected.problem(got[i])
    if i in opened:
      judged[i] = local.identity(opened[i])
      if results[i] is None:
        _mark_if_unchanged(source.location, opened[i], expected)
  return results


def _marked(source: local.LocalTar,
            expected: Expected) -> tuple[int, ...] | None:
  """The local tar's `identity` if its marker says it has `expected` as it
  is now, else None."""
  now = local.stat_tar(source.location, source.name)
  if _read_marker(source.location) == _marker_text(now, expected):
    return local.identity(now)
  return None


def _mark_if_unchanged(path: str, hashed: os.stat_result,
                       expected: Expected) -> None:
  """Marks `path` as having `expected` if it is still the file `hashed`
  (same inode, size, mtime and ctime: not replaced, written or swapped
  since it was opened); else leaves no marker."""
  try:
    now = os.stat(path)
  except OSError:
    return
  if local.identity(hashed) == local.identity(now):
    write_marker(path, _marker_text(hashed, expected))


def _md5_lanes(items, lanes: Sequence[int], opener: Callable[[int], int],
               threads: int) -> list[str]:
  """The md5s of the local tars `items[i]` for i in `lanes`, hashed side by
  side (`md5x.digests`), each opened by `opener(i)`."""
  try:
    return md5x.digests([functools.partial(opener, i) for i in lanes],
                        threads=threads)
  except md5x.ReadError as e:
    raise _unreadable(items[lanes[e.job]][0], e.error) from None


def _unreadable(source: local.LocalTar, e: OSError) -> errors.SourceError:
  return errors.SourceError(f'{source.name}: cannot read {source.location}:'
                            f' {e.strerror or e}')


def quarantine(path: str, name: str | None = None, *, why: str) -> str:
  """Moves a bad tar aside into `quarantine/` next to it, as `name` (its
  own name by default); returns where.

  Raises:
    FileNotFoundError: `path` is gone (another process moved it first).
    ChecksumError: it cannot be moved: names the tar, `why` it was being
      moved and what stopped it.
  """
  qdir = os.path.join(os.path.dirname(path), QUARANTINE_SUBDIR)
  dest = os.path.join(qdir, name or os.path.basename(path))
  try:
    os.makedirs(qdir, exist_ok=True)
    if os.path.lexists(dest):
      dest += f'.{time.time_ns()}'
    os.replace(path, dest)
  except OSError as e:
    if isinstance(e, FileNotFoundError) and not os.path.lexists(path):
      raise
    stopped = e
  else:
    try:
      os.remove(path + VERIFIED_SUFFIX)
    except OSError:
      pass  # None there; or not a file, and never believed (`_read_marker`).
    return dest
  raise ChecksumError(
      f'{name or os.path.basename(path)}: {why}; it cannot be moved to'
      f' {qdir} ({stopped.strerror or stopped}): move or remove {path}'
      ' yourself') from None
