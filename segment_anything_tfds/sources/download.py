"""Downloads SA-1B tars into a cache keyed by tar name, never by URL.

  <download_dir>/segment_anything/sa_000000.tar        a finished, checked tar
  <download_dir>/segment_anything/sa_000000.tar.part   a partial one, resumed
  <download_dir>/segment_anything/sa_000000.tar.lock   locked (flock) by the
                                                       process fetching it
  <download_dir>/segment_anything/quarantine/          tars that failed a
                                                       check, moved aside

A refreshed links file (new signatures, same names) reuses every finished
tar. A partial file resumes with an HTTP Range request; a server that ignores
Range and answers 200 gets a clean restart (the 200 body replaces the partial
file, never appended). Retries follow `http.Client.retrying`: progress is the
furthest byte ever written, so restarts from 0 are not progress, and
`max_attempts` bounds the attempts per tar.

A download is renamed into place only once checked: its size matches the
Content-Length (when there is one), its first 512-byte header is a valid tar
header, and it ends with the two zero blocks that end a tar (so its size is
a multiple of 512). With an expected digest (a checksum list), the body is
hashed as it is written (a resumed `.part` has its first bytes hashed once,
from disk): a tar that does not match is moved to `quarantine/` (a
`ChecksumError` naming the tar and both digests), one that matches gets its
`.verified` marker, so it is not hashed again before the build. A body
larger than `max_bytes` is stopped. Two processes sharing a download dir
never write one tar at once: each tar is fetched under an exclusive lock,
and whoever comes second reuses the finished tar.

Only this user's files are trusted (`open_owned`, `check_cache_dir`): the
cache dir must belong to this user (or root) and be writable by no one else
unless it has the sticky bit (as /tmp does); a tar, `.part` or `.lock` in it
must be a regular file of this user (or root). Anything else (a symlink, a
file another user made) is never read, appended to or written through: the
download fails with a one-line `DownloadError` naming the path, its owner
and what to do, before any request.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import threading
import time
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from etils import epath

from segment_anything_tfds.sources import checksums
from segment_anything_tfds import errors as errors_lib
from segment_anything_tfds.sources import http
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import paths
from segment_anything_tfds import units
from segment_anything_tfds.errors import AccessError
from segment_anything_tfds.errors import ChecksumError
from segment_anything_tfds.errors import DiskSpaceError
from segment_anything_tfds.errors import DownloadError
from segment_anything_tfds.errors import LinksExpiredError

_LOG = logging.getLogger(__name__)

CACHE_SUBDIR = 'segment_anything'
PART_SUFFIX = '.part'
LOCK_SUFFIX = '.lock'
# An SA-1B tar is 10-11.5 GB; used when a server reports no size.
EST_TAR_BYTES = int(10.5e9)
# The prepared records hold the JPEGs and RLE strings: about the tars' size.
OUTPUT_RATIO = 1.0
_BLOCK = tarfile.BLOCKSIZE  # 512
_END = 2 * _BLOCK  # A tar ends with two zero blocks.
_LOCK_POLL = 0.2


def cache_dir(download_dir: epath.PathLike) -> epath.Path:
  return epath.Path(download_dir) / CACHE_SUBDIR


def _size(path: str) -> int:
  try:
    return os.path.getsize(path)
  except FileNotFoundError:
    return 0


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


# ------------------------------------------------------- trusted files


def _trusted_uid(uid: int) -> bool:
  return uid in (os.geteuid(), 0)


def _owner(uid: int) -> str:
  return f'belongs to uid {uid}, not to this user (uid {os.geteuid()})'


def check_cache_dir(path: str) -> None:
  """Raises unless only this user (or root) can put files in `path`.

  The dir must belong to this user (or root), and be writable by no one
  else unless it has the sticky bit (then others cannot replace this
  user's files; theirs are refused one by one, see `open_owned`).
  """
  st = os.stat(path)
  problem = None
  if not _trusted_uid(st.st_uid):
    problem = _owner(st.st_uid)
  elif st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
    problem = (f'is writable by other users (mode {stat.filemode(st.st_mode)})'
               ' without the sticky bit')
  if problem:
    raise DownloadError(
        f'the download cache {path} {problem}: a tar or partial download'
        ' there could be someone else\'s, so it is not used; use a'
        ' download dir of your own')


def _file_problem(path: str, st: os.stat_result) -> str | None:
  if stat.S_ISLNK(st.st_mode):
    return f'{path} is a symbolic link: it is never followed'
  if not stat.S_ISREG(st.st_mode):
    return f'{path} is not a regular file'
  if not _trusted_uid(st.st_uid):
    return f'{path} {_owner(st.st_uid)}: it is not used'
  return None


def _refuse(what: str, problem: str) -> DownloadError:
  return DownloadError(f'{what}: {problem} (someone else may have put it'
                       ' there); remove it and rerun')


def trusted_file(path: str, what: str) -> bool:
  """Whether `path` exists; raises if it is not to be trusted.

  Trusted: a regular file (not a symlink) of this user (or root), in a
  dir that passes `check_cache_dir`.

  Raises:
    DownloadError: naming `what` (e.g. the tar), the path and why.
  """
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return False
  check_cache_dir(os.path.dirname(path) or '.')
  problem = _file_problem(path, st)
  if problem:
    raise _refuse(what, problem)
  return True


def _open_fd(path: str, flags: int, what: str) -> int:
  """`os.open`, never through a symlink, of a trusted file (or a new one)."""
  flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
  try:
    fd = os.open(path, flags, 0o644)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise _refuse(what, f'{path} is a symbolic link: it is never written'
                    ' through') from None
    raise DownloadError(f'{what}: cannot open {path}: {e.strerror}') from None
  problem = _file_problem(path, os.fstat(fd))
  if problem:
    os.close(fd)
    raise _refuse(what, problem)
  return fd


def open_owned(path: str, mode: str, what: str) -> BinaryIO:
  """Opens `path` to write, never through a symlink, only if this user's.

  Args:
    path: a file to create, or one of this user's (or root's) to reuse.
    mode: 'wb' (emptied) or 'ab' (appended to).
    what: named in errors (e.g. the tar).
  Raises:
    DownloadError: `path` is a symlink, not a regular file, or belongs to
      another user (it is left as it is), or cannot be opened.
  """
  fd = _open_fd(path, os.O_WRONLY | (os.O_APPEND if mode == 'ab' else 0),
                what)
  if mode == 'wb':
    os.ftruncate(fd, 0)  # Only now: the file is known to be this user's.
  return os.fdopen(fd, mode)


# ---------------------------------------------------------------- expiry


def check_expiry(links: Mapping[str, str], *, now: float | None = None,
                 source: str = links_lib.LINKS_FILE_NAME,
                 warn_within: float = 24 * 3600) -> None:
  """Fails fast if any of `links` (name -> URL) carries a past `oe=`.

  Links without `oe=` (mirrors, buckets, paths) are never checked.
  """
  now = time.time() if now is None else now
  expired = {n: e for n, u in links.items()
             if (e := links_lib.expiry(u)) is not None and e <= now}
  if expired:
    names = sorted(expired)
    first, last = min(expired.values()), max(expired.values())
    since = (f'since {links_lib.format_time(first)}' if first == last else
             f'between {links_lib.format_time(first)} and'
             f' {links_lib.format_time(last)}')
    raise LinksExpiredError(
        f'{len(expired)} of the {len(links)} links this build needs have'
        f' expired ({since}; their oe= parameter is the expiry time):'
        f' {", ".join(names[:5])}{" ..." if len(names) > 5 else ""}, in'
        f' {source}. ' + errors_lib.refresh_hint(source))
  soon = [n for n, u in links.items()
          if (e := links_lib.expiry(u)) is not None and e - now < warn_within]
  if soon:
    _LOG.warning(
        '%d links in %s expire within %d hours; a download still running then'
        ' will fail with HTTP 403: %s', len(soon), source, warn_within // 3600,
        ', '.join(sorted(soon)[:5]))


# ------------------------------------------------------- checking tars


def _header_problem(block: bytes) -> str | None:
  """What is wrong with a tar's first 512 bytes, or None."""
  if len(block) < _BLOCK:
    return (f'not a tar: {len(block)} bytes, less than one 512-byte tar'
            f' header{base.not_a_tar_hint(block)}')
  try:
    tarfile.TarInfo.frombuf(block, tarfile.ENCODING, 'surrogateescape')
  except tarfile.EOFHeaderError:
    return 'not a tar: its first 512-byte header is all zeros'
  except tarfile.HeaderError as e:
    return (f'not a tar: its first 512 bytes are not a tar header ({e})'
            f'{base.not_a_tar_hint(block)}')
  return None


def _end_problem(reader: base.RandomReader, size: int) -> str | None:
  """What is wrong with a tar's end (its two zero blocks), or None."""
  if size % _BLOCK:
    return (f'truncated: {size} bytes is not a whole number of 512-byte tar'
            ' blocks')
  if size < _BLOCK + _END:
    return f'truncated: {size} bytes, no room for the end-of-archive blocks'
  if reader.read_at(size - _END, _END).count(0) != _END:
    return (f'truncated: its last 1024 bytes are not the two zero blocks'
            f' that end a tar (size {size})')
  return None


def tar_problem(source: base.Source) -> str | None:
  """None if the tar `source` looks whole; else what is wrong.

  Reads 1.5 kB: a valid first header (its checksum), a size that is a
  multiple of 512, and the end-of-archive blocks. What is wrong starts with
  `not a tar` or `truncated`.
  """
  size = source.size()
  reader = source.open_random()
  try:
    return (_header_problem(reader.read_at(0, _BLOCK))
            or _end_problem(reader, size))
  finally:
    reader.close()


def _local_tar(path: str) -> local.LocalTar:
  return local.LocalTar(os.path.basename(path), path)


def cached_tar(path: str) -> bool:
  """Whether a finished tar is at `path`, ready to use.

  A file there that fails `tar_problem` (from an older version, or a disk
  fault) is moved to `quarantine/` and logged, so it is fetched again.

  Raises:
    DownloadError: the file is not to be trusted (`trusted_file`).
  """
  if not trusted_file(path, os.path.basename(path)):
    return False
  problem = tar_problem(_local_tar(path))
  if problem is None:
    return True
  try:
    where = checksums.quarantine(path, why=f'the cached tar is {problem}')
  except FileNotFoundError:  # Another process moved it first.
    return False
  _LOG.warning('%s: the cached tar is %s; moved it to quarantine (%s)'
               ' and fetching it again', path, problem, where)
  return False


# ------------------------------------------------------------- locking


def _try_lock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False


@contextlib.contextmanager
def tar_lock(dest: str, *, cancel: threading.Event | None = None
             ) -> Iterator[None]:
  """Holds `<dest>.lock` exclusively while the body runs.

  Another process (or thread) downloading the same tar holds it: this waits,
  saying so once, until it is released (or `cancel` is set).
  """
  lock = dest + LOCK_SUFFIX
  fd = _open_fd(lock, os.O_RDWR, os.path.basename(dest))
  try:
    if not _try_lock(fd):
      _LOG.warning('waiting for another process downloading %s (it holds'
                   ' %s)', os.path.basename(dest), lock)
      while not _try_lock(fd):
        http.pause(_LOCK_POLL, cancel)
    yield
  finally:
    os.close(fd)  # Releases the lock.


# ------------------------------------------------------------ fetching


@dataclasses.dataclass
class _Progress:
  """A tqdm byte bar shared by the download threads (or nothing)."""

  total: int
  enabled: bool = True

  def __post_init__(self):
    self._lock = threading.Lock()
    self._bar = None
    if self.enabled:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=self.total or None, unit='B',
                            unit_scale=True, unit_divisor=1024,
                            desc='Downloading SA-1B tars', smoothing=0.05)

  def grow(self, n: int):
    """Adds `n` to the total: a size learnt from a response."""
    if self._bar is not None:
      with self._lock:
        self._bar.total = (self._bar.total or 0) + n
        self._bar.refresh()

  def add(self, n: int):
    if self._bar is not None:
      with self._lock:
        self._bar.update(n)

  def close(self):
    if self._bar is not None:
      self._bar.close()


@dataclasses.dataclass
class _Transfer:
  """One tar's download, across attempts.

  Attributes:
    furthest: the furthest byte ever written: the measure of progress (a
      restart from 0 that gets no further is not progress).
    total: the object's size, once an answer said it; a resume's
      Content-Range must agree.
    announced: the size a HEAD or a listing said before the download (or
      None): a body that states no length may not go past it.
  """

  url: str
  part: str
  what: str
  max_bytes: int
  on_bytes: Callable[[int], None]
  on_total: Callable[[int], None]
  cancel: threading.Event | None
  furthest: int = 0
  total: int | None = None
  told_total: bool = False
  expected: checksums.Expected | None = None
  hasher: Any = None  # Of the partial file's first `hashed` bytes.
  hashed: int = 0
  announced: int | None = None

  def check_cancel(self) -> None:
    if self.cancel is not None and self.cancel.is_set():
      raise http.Cancelled()

  def discard(self, why: str) -> None:
    """Deletes the partial file and takes its bytes off the progress bar."""
    size = _size(self.part)
    _remove(self.part)
    self.hasher, self.hashed = None, 0
    if size:
      self.on_bytes(-size)
      _LOG.info('%s: %s; discarded %d bytes', self.what, why, size)


  def hash_from(self, start: int) -> None:
    """Makes the hash cover the partial file's first `start` bytes (read
    from disk once, when a download resumes a `.part` of an earlier run)."""
    if self.expected is None or (self.hasher is not None
                                 and self.hashed == start):
      return
    self.hasher, self.hashed = hashlib.new(self.expected.algo), 0
    if not start:
      return
    fd = os.open(self.part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
      self.hashed = checksums.hash_fd(self.hasher, fd, start)
    finally:
      os.close(fd)
    if self.hashed < start:
      raise http.TransientError(f'{self.what}: {self.part} shrank while it'
                                ' was hashed')

  def hash(self, data: bytes) -> None:
    if self.hasher is not None:
      self.hasher.update(data)
      self.hashed += len(data)


def fetch(url: str, dest: str, *, client: http.Client,
          on_bytes: Callable[[int], None] = lambda n: None,
          on_total: Callable[[int], None] = lambda n: None,
          cancel: threading.Event | None = None,
          expected: checksums.Expected | None = None,
          announced: int | None = None) -> int:
  """Downloads `url` to `dest` via `dest.part`, resuming; returns the size.

  `announced` is the size a HEAD or a listing said: an answer that states
  no length of its own is cut there (and the download refused) rather
  than written on up to `max_bytes`.

  The download is checked (`tar_problem`, and with `expected` its digest,
  hashed as it is written) before the rename. The caller holds the tar's
  lock (`download_all` does).

  Raises:
    errors.DownloadError: the retry budget is spent, or a failure not worth
      retrying (404, not a tar, over `max_bytes`, a `.part` that is not to
      be trusted, ...).
    errors.LinksExpiredError: a 403 to a signed link.
    errors.AccessError: a 401, or a 403 from the Hugging Face Hub.
    errors.ChecksumError: the tar is whole but not the one `expected`; it
      was moved to `quarantine/`.
  """
  name = os.path.basename(dest)
  t = _Transfer(url=url, part=dest + PART_SUFFIX,
                what=f'{name} from {http.host_of(url)}',
                max_bytes=client.options.max_bytes, on_bytes=on_bytes,
                on_total=on_total, cancel=cancel, expected=expected,
                announced=announced)
  if trusted_file(t.part, name):  # Refused before any request.
    t.furthest = _size(t.part)

  def attempt() -> int:
    t.check_cancel()
    size = _attempt(t, client)
    _check_part(t)
    _check_digest(t, name)
    os.replace(t.part, dest)  # Atomic: a tar in place is a whole tar.
    if expected is not None:
      checksums.mark_verified(dest, expected)
    return size

  return client.retrying(attempt, what=t.what, progress=lambda: t.furthest,
                         cancel=cancel)


def _attempt(t: _Transfer, client: http.Client) -> int:
  """One GET: resumes `t.part` (or restarts it); returns its size."""
  offset = _size(t.part)
  resp = client.send('GET', t.url,
                     {'Range': f'bytes={offset}-'} if offset else None)
  with contextlib.closing(resp):
    if resp.status_code == 416 and offset:
      t.discard('the server refused to resume (HTTP 416)')
      raise http.TransientError(
          f'{t.what}: the server refuses to resume at byte {offset} (HTTP'
          ' 416); restarting from 0')
    if resp.status_code >= 400:
      raise client.status_error(resp, t.url)
    start, stop, total = _body_start(t, resp, offset)
    _check_total(t, total)
    _write_body(t, client.body(resp, t.url), start, stop)
  size = _size(t.part)
  if total is not None and size < total:
    raise http.TransientError(f'{t.what}: transfer cut at byte {size} of'
                              f' {total}')
  if total is not None and size > total:
    t.discard('longer than its Content-Length')
    raise http.TransientError(f'{t.what}: got {size} bytes but the server'
                              f' says {total}; restarting')
  return size


def _body_start(t: _Transfer, resp, offset: int
                ) -> tuple[int, int | None, int | None]:
  """Where the body goes in the partial file, where it must end (or None),
  and the object's total size (or None)."""
  if resp.status_code == 206:
    try:
      last, total = http.content_range(resp, t.url, start=offset,
                                       size=t.total)
    except DownloadError as e:
      if not offset:
        raise DownloadError(f'{t.what}: {e.message}') from None
      # Not the bytes asked for: the partial file cannot be trusted to go
      # on (a rerun would only meet the same answer).
      t.discard('a resume answered with other bytes')
      raise http.TransientError(f'{t.what}: {e.message}; restarting from'
                                ' 0') from None
    return offset, last + 1, total
  if resp.status_code == 200:
    if offset:
      _LOG.warning('%s: the server ignored the Range request (HTTP 200):'
                   ' restarting from 0', t.what)
      t.on_bytes(-offset)
    total = http.content_length(resp)
    return 0, total, total
  raise DownloadError(f'{t.what}: unexpected HTTP {resp.status_code}')


def _check_total(t: _Transfer, total: int | None) -> None:
  if total is None:
    return
  try:
    http.check_size(total, t.what, t.max_bytes)
  except DownloadError:
    t.discard('over max_bytes')
    raise
  t.total = total
  if not t.told_total:
    t.told_total = True
    t.on_total(total)


def _write_body(t: _Transfer, body: http.Body, start: int,
                stop: int | None) -> None:
  """Appends (or, from 0, writes) the body to `t.part`, up to `stop` (if
  known) and within max_bytes."""
  pos = start
  with open_owned(t.part, 'ab' if start else 'wb', t.what) as f:
    t.hash_from(start)
    while stop is None or pos < stop:
      chunk = body.read(http.CHUNK if stop is None else stop - pos)
      if not chunk:
        break
      t.check_cancel()
      if pos + len(chunk) > t.max_bytes:
        t.discard('over max_bytes')
        raise http.too_large(t.what, 'the body went on past', t.max_bytes)
      if stop is None and t.announced and pos + len(chunk) > t.announced:
        t.discard('longer than announced')
        raise DownloadError(
            f'{t.what}: the answer, of no stated length, went on past the'
            f' {t.announced} bytes announced for it before (by its HEAD or'
            ' the listing); it was not kept')
      try:
        f.write(chunk)
      except OSError as e:
        raise DownloadError(f'{t.what}: cannot write {t.part}: {e}') from e
      t.hash(chunk)
      pos += len(chunk)
      t.furthest = max(t.furthest, pos)
      t.on_bytes(len(chunk))


def _check_part(t: _Transfer) -> None:
  """Raises unless the finished `t.part` looks like a whole tar."""
  problem = tar_problem(_local_tar(t.part))
  if problem is None:
    return
  t.discard(problem)
  message = f'{t.what}: the download is {problem}; it was not kept'
  if problem.startswith('not a tar'):
    raise DownloadError(message)  # The same answer again would not help.
  raise http.TransientError(message)


def _check_digest(t: _Transfer, name: str) -> None:
  """Raises unless the finished `t.part` has the digest expected (if any);
  a tar that does not is moved to quarantine, named as the tar."""
  if t.expected is None:
    return
  t.hash_from(_size(t.part))  # Covers the whole file, whatever happened.
  problem = t.expected.problem(t.hasher.hexdigest())
  if problem is None:
    return
  t.hasher, t.hashed = None, 0
  where = checksums.quarantine(t.part, name,
                               why=f"the download's {problem}")
  raise ChecksumError(f'{t.what}: the download\'s {problem}; moved to'
                      f' {where} (the next run downloads it again)')


@dataclasses.dataclass(frozen=True)
class Result:
  """Where each tar is, and which failed why.

  Attributes:
    paths: name -> path of each tar in the cache.
    errors: name -> why it could not be downloaded.
    downloaded: names fetched in this call (not found in the cache).
    mismatched: name -> the `ChecksumError` of a download that is not the
      tar expected (moved to quarantine; also in `errors`).
  """

  paths: dict[str, str]
  errors: dict[str, str]
  downloaded: tuple[str, ...]
  mismatched: dict[str, ChecksumError] = dataclasses.field(
      default_factory=dict)


def _threads(n: int) -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(
      n, thread_name_prefix='sa1b-download')


def _local_cache(cache: epath.PathLike) -> str:
  cache = os.fspath(cache)
  if not paths.is_local(cache):
    raise DownloadError(
        f'the download dir {cache} is not local; downloads need a local disk'
        ' to resume into. Use a local --download_dir, or copy the tars into'
        ' the bucket (gsutil -m cp) and use it as manual_dir.')
  os.makedirs(cache, mode=0o755, exist_ok=True)  # Even under umask 0.
  check_cache_dir(cache)
  return cache


def download_all(
    links: Mapping[str, str], cache: epath.PathLike, *,
    options: options_lib.DownloadOptions | None = None,
    sizes: Mapping[str, int | None] | None = None,
    expected: Mapping[str, checksums.Expected] | None = None,
) -> Result:
  """Downloads each (name -> http URL) not yet in `cache`, `workers` at once.

  Each tar is fetched under its lock (`tar_lock`); a tar another process
  finished meanwhile is reused, not fetched again. A tar with an
  `expected` digest is hashed as it downloads (`fetch`).

  Raises:
    LinksExpiredError: a server answered 403 to a signed link; the other
      downloads stop (their partial files stay, for resuming).
    AccessError: a server refused this user (a 401, a 403 from the Hub):
      the other downloads stop the same way.
    DownloadError: the cache, or a tar in it, is not to be trusted
      (`check_cache_dir`, `trusted_file`).
  Returns:
    The tars' paths, and the error of each tar that failed.
  """
  options = options or options_lib.DownloadOptions()
  cache = _local_cache(cache)
  paths, todo = {}, {}
  for name, url in sorted(links.items()):
    dest = os.path.join(cache, name)
    if cached_tar(dest):
      paths[name] = dest
    else:
      todo[name] = url
  if not todo:
    return Result(paths, {}, ())
  sizes = sizes or {}
  unknown = {n for n in todo if not sizes.get(n)}
  bar = _Progress(sum(sizes.get(n) or 0 for n in todo),
                  enabled=options.progress)
  bar.add(sum(_size(os.path.join(cache, n + PART_SUFFIX)) for n in todo))
  cancel = threading.Event()
  failed: dict[str, str] = {}
  refused: list[tuple[str, DownloadError]] = []
  mismatched: dict[str, ChecksumError] = {}
  fetched: list[str] = []
  expected = expected or {}

  def one(name: str, url: str, client: http.Client) -> str:
    dest = os.path.join(cache, name)
    with tar_lock(dest, cancel=cancel):
      if cached_tar(dest):  # Another process fetched it meanwhile.
        return dest
      size = fetch(url, dest, client=client, on_bytes=bar.add, cancel=cancel,
                   on_total=bar.grow if name in unknown else lambda n: None,
                   expected=expected.get(name),
                   announced=sizes.get(name) or None)
    fetched.append(name)
    _LOG.info('Downloaded %s (%d bytes)', dest, size)
    return dest

  workers = max(1, min(options.workers, len(todo)))
  try:
    with http.ClientPool(options) as pool, _threads(workers) as ex:
      futures = {ex.submit(lambda n=n, u=u: one(n, u, pool.get())): n
                 for n, u in todo.items()}
      try:
        for fut in concurrent.futures.as_completed(futures):
          name = futures[fut]
          try:
            paths[name] = fut.result()
          except http.Cancelled:
            failed[name] = ('cancelled after another download was refused'
                            ' (HTTP 401 or 403)')
          except (LinksExpiredError, AccessError) as e:
            refused.append((name, e))
            failed[name] = str(e)
            cancel.set()
          except ChecksumError as e:
            mismatched[name] = e
            failed[name] = str(e)
          except (DownloadError, OSError) as e:
            failed[name] = str(e)
      except BaseException:  # Ctrl-C: stop the threads; .part files stay.
        cancel.set()
        raise
  finally:
    bar.close()
  if refused:
    names = sorted(n for n, _ in refused)
    first = min(refused, key=lambda r: r[0])[1]
    raise type(first)(
        f'{len(refused)} of {len(todo)} downloads were refused'
        f' ({", ".join(names[:5])}{" ..." if len(names) > 5 else ""}).'
        f' {first}')
  return Result(paths, failed, tuple(n for n in todo if n in fetched),
                mismatched)


# --------------------------------------------------------------- sizes


def _head_size(client: http.Client, name: str, url: str) -> int | None:
  try:
    status, size = client.head(url)
  except DownloadError as e:
    _LOG.info('%s; assuming %d bytes', e, EST_TAR_BYTES)
    return None
  if status in (401, 403):
    raise client.refused(url, status)
  if not 200 <= status < 300:
    _LOG.info('HEAD %s: HTTP %d; assuming %d bytes',
              links_lib.redact(url), status, EST_TAR_BYTES)
    return None
  return http.check_size(size, f'{name} from {http.host_of(url)}',
                         client.options.max_bytes)


def head_sizes(links: Mapping[str, str], *,
               options: options_lib.DownloadOptions | None = None
               ) -> dict[str, int | None]:
  """Content-Length of each http link by HEAD; None where unknown.

  A 401 or 403 raises (`LinksExpiredError` for a signed link,
  `AccessError` from the Hugging Face Hub, saying to set HF_TOKEN) before
  anything is downloaded, and so does a size over `max_bytes`
  (`DownloadError`: not an SA-1B tar); any other failure leaves the size
  unknown (the estimate is used).
  """
  if not links:
    return {}
  options = options or options_lib.DownloadOptions()
  workers = max(1, min(options.workers * 2, len(links)))
  with http.ClientPool(options) as pool, _threads(workers) as ex:
    sizes = ex.map(lambda item: _head_size(pool.get(), *item), links.items())
    return dict(zip(links, sizes))


# ---------------------------------------------------------- disk preflight


def _existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def preflight(*, download_bytes: int, download_dir: epath.PathLike | None,
              output_bytes: int, data_dir: epath.PathLike | None,
              what: str, free: Callable[[str], int] | None = None) -> None:
  """Compares free space with what the build needs; raises if too little.

  Only local dirs are checked (a bucket has no free-space limit to check).
  When both dirs are on one filesystem their needs add up.
  """
  free = free or (lambda p: shutil.disk_usage(p).free)
  needs: dict[tuple, list] = {}
  for label, path, n in (('downloads', download_dir, download_bytes),
                         ('output', data_dir, output_bytes)):
    if path is None or n <= 0 or not paths.is_local(path):
      continue
    root = _existing(os.fspath(path))
    key = (os.stat(root).st_dev,)
    entry = needs.setdefault(key, [root, 0, []])
    entry[1] += n
    entry[2].append(f'{label} {units.human_bytes(n)} in {os.fspath(path)}')
  for root, need, parts in needs.values():
    have = free(root)
    msg = (f'{what} needs about {units.human_bytes(need)}'
           f' ({"; ".join(parts)}) and the filesystem of {root} has'
           f' {units.human_bytes(have)} free')
    if have < need:
      raise DiskSpaceError(
          msg + '. Free some space, choose a --download_dir or --data_dir on a'
          ' larger disk, build fewer tars (e.g. config first_10 or'
          ' tars_config("0-9")), or set disk_mode="stream" (no tars kept on'
          ' disk) or "delete" (tars removed after a successful build).')
    _LOG.info('Disk preflight: %s: OK', msg)


def remove_downloaded(paths: Iterable[str]) -> list[str]:
  """Deletes downloaded tars (and their markers); returns what was removed."""
  removed = []
  for p in paths:
    for q in (p, p + checksums.VERIFIED_SUFFIX):
      try:
        os.remove(q)
        if q == p:
          removed.append(p)
      except FileNotFoundError:
        pass
  return removed


__all__ = [
    'CACHE_SUBDIR', 'DiskSpaceError', 'DownloadError', 'LinksExpiredError',
    'Result', 'cache_dir', 'cached_tar', 'check_cache_dir', 'check_expiry',
    'download_all', 'fetch', 'head_sizes', 'open_owned', 'preflight',
    'remove_downloaded', 'tar_lock', 'tar_problem', 'trusted_file',
]
