"""Downloads SA-1B tars into a cache keyed by tar name, never by URL.

  <download_dir>/segment_anything/sa_000000.tar        a finished tar
  <download_dir>/segment_anything/sa_000000.tar.part   a partial one, resumed
  <download_dir>/segment_anything/quarantine/          tars that failed their
                                                       checksum, moved aside

A refreshed links file (new signatures, same names) reuses every finished
tar. A partial file resumes with an HTTP Range request; a server that ignores
Range and answers 200 gets a clean restart (the 200 body replaces the partial
file, never appended). 5xx, timeouts, resets and bodies cut short are retried
with backoff; a 403 stops at once with the expired-link message. A tar is
renamed into place only when its size matches the Content-Length.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import shutil
import threading
import time
from typing import Callable, Iterable, Mapping

from etils import epath

from segment_anything_tfds import errors as errors_lib
from segment_anything_tfds import httpfile
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds import shards as shards_lib
from segment_anything_tfds.errors import ChecksumError
from segment_anything_tfds.errors import DiskSpaceError
from segment_anything_tfds.errors import DownloadError
from segment_anything_tfds.errors import LinksExpiredError

CACHE_SUBDIR = 'segment_anything'
QUARANTINE_SUBDIR = 'quarantine'
PART_SUFFIX = '.part'
VERIFIED_SUFFIX = '.verified'
CHECKSUMS_FILE_NAME = 'segment_anything_checksums.txt'
# An SA-1B tar is 10-11.5 GB; used when a server reports no size.
EST_TAR_BYTES = int(10.5e9)
# The prepared records hold the JPEGs and RLE strings: about the tars' size.
OUTPUT_RATIO = 1.0
_CHUNK = 1 << 20
_HASHES = {32: 'md5', 64: 'sha256'}


class _Cancelled(Exception):
  pass


def cache_dir(download_dir: epath.PathLike) -> epath.Path:
  return epath.Path(download_dir) / CACHE_SUBDIR


def _is_local(path: epath.PathLike) -> bool:
  return shards_lib.is_local(path)


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
    logging.warning(
        '%d links in %s expire within %d hours; a download still running then'
        ' will fail with HTTP 403: %s', len(soon), source, warn_within // 3600,
        ', '.join(sorted(soon)[:5]))


# ------------------------------------------------------------- checksums


def parse_checksums(text: str, *, source: str) -> dict[str, tuple[str, str]]:
  """`<hex>  sa_000000.tar` lines (md5sum/sha256sum output) -> name -> (algo, hex).

  The algorithm follows from the hex length: 32 is md5, 64 is sha256. A path
  in the name column is reduced to its file name.
  """
  out: dict[str, tuple[str, str]] = {}
  for lineno, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    parts = line.split(None, 1)
    if len(parts) != 2:
      raise ChecksumError(f'{source}:{lineno}: expected "<hex>  <file name>",'
                       f' got {line!r:.120}')
    digest, name = parts[0].lower(), parts[1].strip().lstrip('*')
    name = name.replace('\\', '/').rsplit('/', 1)[-1]
    algo = _HASHES.get(len(digest))
    if algo is None or any(c not in '0123456789abcdef' for c in digest):
      raise ChecksumError(
          f'{source}:{lineno}: {digest!r:.80} is neither an md5 (32 hex'
          ' digits) nor a sha256 (64 hex digits)')
    if name in out and out[name] != (algo, digest):
      raise ChecksumError(f'{source}:{lineno}: {name} has two different'
                       ' checksums')
    out[name] = (algo, digest)
  if not out:
    raise ChecksumError(f'{source}: the checksum list is empty')
  return out


def read_checksums(path: epath.PathLike) -> dict[str, tuple[str, str]]:
  path = epath.Path(path)
  return parse_checksums(path.read_text(), source=os.fspath(path))


def file_digest(path: epath.PathLike, algo: str) -> str:
  h = hashlib.new(algo)
  with epath.Path(path).open('rb') as f:
    while chunk := f.read(_CHUNK * 8):
      h.update(chunk)
  return h.hexdigest()


def _marker(path: str, algo: str, digest: str) -> str:
  st = os.stat(path)
  return f'{algo}:{digest} {st.st_size} {st.st_mtime_ns}\n'


def verify(path: epath.PathLike, expected: tuple[str, str]) -> str | None:
  """None if `path` has the `expected` (algo, hex); else what is wrong.

  A local file that passed leaves a `.verified` marker next to it (digest,
  size, mtime), so an unchanged file is not hashed again on a rerun.
  """
  algo, digest = expected
  path_str = os.fspath(path)
  marker = path_str + VERIFIED_SUFFIX
  local = _is_local(path_str)
  if local and os.path.exists(marker):
    try:
      with open(marker) as f:
        if f.read() == _marker(path_str, algo, digest):
          return None
    except OSError:
      pass
  got = file_digest(path, algo)
  if got != digest:
    return f'{algo} is {got}, the checksum list says {digest}'
  if local:
    try:
      with open(marker, 'w') as f:
        f.write(_marker(path_str, algo, digest))
    except OSError:  # A read-only folder: hash again next time.
      pass
  return None


def quarantine(path: str) -> str:
  """Moves a bad tar aside into `quarantine/`; returns where it went."""
  qdir = os.path.join(os.path.dirname(path), QUARANTINE_SUBDIR)
  os.makedirs(qdir, exist_ok=True)
  dest = os.path.join(qdir, os.path.basename(path))
  if os.path.exists(dest):
    dest += f'.{int(time.time())}'
  os.replace(path, dest)
  try:
    os.remove(path + VERIFIED_SUFFIX)
  except FileNotFoundError:
    pass
  return dest


# ------------------------------------------------------------ downloading


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


def fetch(url: str, dest: str, *, client: httpfile.Client,
          on_bytes: Callable[[int], None] = lambda n: None,
          on_total: Callable[[int], None] = lambda n: None,
          cancel: threading.Event | None = None) -> int:
  """Downloads `url` to `dest` via `dest.part`, resuming; returns the size."""
  part = dest + PART_SUFFIX
  what = f'{os.path.basename(dest)} from {links_lib.redact(url)}'
  written = [0]
  told = [False]

  def attempt() -> int:
    if cancel is not None and cancel.is_set():
      raise _Cancelled()
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {'Range': f'bytes={offset}-'} if offset else {}
    try:
      resp = client.request('GET', url, headers)
    except httpfile.HttpError as e:
      if e.status == 416 and offset:
        logging.warning('%s: the server refuses to resume at byte %d (416);'
                        ' restarting from 0', what, offset)
        os.remove(part)
        on_bytes(-offset)
        raise httpfile.RetryableError(f'{what}: HTTP 416') from e
      raise
    try:
      if resp.status == 206:
        first, _, total = httpfile.content_range(resp)
        if first != offset:
          raise httpfile.RetryableError(
              f'{what}: asked to resume at byte {offset}, the server sent'
              f' bytes from {first}')
        mode = 'ab'
      elif resp.status == 200:
        if offset:
          logging.warning(
              '%s: the server ignored the Range request (HTTP 200): discarding'
              ' the %d bytes downloaded so far and restarting from 0', what,
              offset)
          on_bytes(-offset)
          offset = 0
        length = resp.getheader('Content-Length')
        total = int(length) if length and length.isdigit() else None
        mode = 'wb'  # Truncates: a 200 body is never appended.
      else:
        raise httpfile.HttpError(f'{what}: unexpected HTTP {resp.status}',
                                 status=resp.status)
      if total is not None and not told[0]:
        told[0] = True
        on_total(total)
      with open(part, mode) as f:
        while True:
          if cancel is not None and cancel.is_set():
            raise _Cancelled()
          try:
            chunk = resp.read(_CHUNK)
          except httpfile.NET_ERRORS as e:
            raise httpfile.RetryableError(
                f'{what}: transfer cut at byte {offset + written[0]}: {e}'
            ) from e
          if not chunk:
            break
          try:
            f.write(chunk)
          except OSError as e:
            raise DownloadError(f'{what}: cannot write {part}: {e}') from e
          written[0] += len(chunk)
          on_bytes(len(chunk))
      resp.close()
    except BaseException:
      client.close()  # A half-read body: never reuse that connection.
      raise
    size = os.path.getsize(part)
    if total is not None and size < total:
      client.close()
      raise httpfile.RetryableError(
          f'{what}: transfer cut at byte {size} of {total}')
    if total is not None and size > total:
      os.remove(part)
      on_bytes(-size)
      raise httpfile.RetryableError(
          f'{what}: got {size} bytes but Content-Length says {total};'
          ' restarting')
    os.replace(part, dest)  # Atomic: a tar in place is a whole tar.
    return size

  return client.call(attempt, what=what, progress=lambda: written[0])


@dataclasses.dataclass(frozen=True)
class Result:
  """Where each tar is, and which failed why."""

  paths: dict[str, str]
  errors: dict[str, str]
  downloaded: tuple[str, ...]  # Names fetched in this call (not cached).


def download_all(
    links: Mapping[str, str], cache: epath.PathLike, *,
    options: options_lib.DownloadOptions | None = None,
    sizes: Mapping[str, int | None] | None = None,
) -> Result:
  """Downloads each (name -> http URL) not yet in `cache`, `workers` at once.

  Raises:
    LinksExpiredError: a server answered 403; the other downloads stop
      (their partial files stay, for resuming).
    DownloadError: some tars failed after retries; names each and why.
  """
  options = options or options_lib.DownloadOptions()
  workers, progress = options.workers, options.progress
  retry = httpfile.RetryPolicy.from_options(options)
  cache = os.fspath(cache)
  if not _is_local(cache):
    raise DownloadError(
        f'the download dir {cache} is not local; downloads need a local disk'
        ' to resume into. Use a local --download_dir, or copy the tars into'
        ' the bucket (gsutil -m cp) and use it as manual_dir.')
  os.makedirs(cache, exist_ok=True)
  paths, todo = {}, {}
  for name, url in sorted(links.items()):
    dest = os.path.join(cache, name)
    if os.path.exists(dest):
      paths[name] = dest
    else:
      todo[name] = url
  if not todo:
    return Result(paths, {}, ())
  sizes = sizes or {}
  partial = sum(os.path.getsize(os.path.join(cache, n + PART_SUFFIX))
                for n in todo
                if os.path.exists(os.path.join(cache, n + PART_SUFFIX)))
  unknown = {n for n in todo if not sizes.get(n)}
  bar = _Progress(sum(sizes.get(n) or 0 for n in todo), enabled=progress)
  bar.add(partial)
  cancel = threading.Event()
  errors: dict[str, str] = {}
  expired: list[str] = []
  local = threading.local()
  clients: list[httpfile.Client] = []

  def one(name: str, url: str) -> str:
    client = getattr(local, 'client', None)
    if client is None:
      client = local.client = httpfile.Client(retry)
      clients.append(client)
    dest = os.path.join(cache, name)
    size = fetch(url, dest, client=client, on_bytes=bar.add, cancel=cancel,
                 on_total=bar.grow if name in unknown else lambda n: None)
    logging.info('Downloaded %s (%d bytes)', dest, size)
    return dest

  try:
    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(workers, len(todo))),
        thread_name_prefix='sa1b-download') as pool:
      futures = {pool.submit(one, n, u): n for n, u in todo.items()}
      try:
        for fut in concurrent.futures.as_completed(futures):
          name = futures[fut]
          try:
            paths[name] = fut.result()
          except _Cancelled:
            errors[name] = 'cancelled after another download failed with 403'
          except httpfile.LinkExpiredError as e:
            expired.append(name)
            errors[name] = str(e)
            cancel.set()
          except (httpfile.HttpError, DownloadError, OSError) as e:
            errors[name] = str(e)
      except BaseException:  # Ctrl-C: stop the threads; .part files stay.
        cancel.set()
        raise
  finally:
    bar.close()
    for c in clients:
      c.close()
  if expired:
    raise LinksExpiredError(
        f'{len(expired)} of {len(todo)} downloads were refused with HTTP 403'
        f' ({", ".join(sorted(expired)[:5])}). {errors[expired[0]]}')
  return Result(paths, errors, tuple(n for n in todo if n in paths))


def head_sizes(links: Mapping[str, str], *,
               options: options_lib.DownloadOptions | None = None
               ) -> dict[str, int | None]:
  """Content-Length of each http link by HEAD; None where unknown.

  A 403 raises `LinkExpiredError` (before anything is downloaded); any other
  failure leaves the size unknown (the estimate is used).
  """
  options = options or options_lib.DownloadOptions()
  workers = options.workers
  retry = httpfile.RetryPolicy.from_options(options)
  local = threading.local()
  clients = []

  def one(url):
    client = getattr(local, 'client', None)
    if client is None:
      client = local.client = httpfile.Client(retry)
      clients.append(client)
    try:
      return client.size(url)
    except httpfile.LinkExpiredError as e:
      raise LinksExpiredError(str(e)) from None
    except (httpfile.HttpError, OSError) as e:
      logging.info('HEAD %s failed (%s); assuming %d bytes',
                   links_lib.redact(url), e, EST_TAR_BYTES)
      return None

  if not links:
    return {}
  try:
    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(workers * 2, len(links)))) as pool:
      results = dict(zip(links, pool.map(one, links.values())))
  finally:
    for c in clients:
      c.close()
  return results


# ---------------------------------------------------------- disk preflight


def _existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _gb(n: float) -> str:
  return f'{n / 1e9:.1f} GB'


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
    if path is None or n <= 0 or not _is_local(path):
      continue
    root = _existing(os.fspath(path))
    key = (os.stat(root).st_dev,)
    entry = needs.setdefault(key, [root, 0, []])
    entry[1] += n
    entry[2].append(f'{label} {_gb(n)} in {os.fspath(path)}')
  for root, need, parts in needs.values():
    have = free(root)
    msg = (f'{what} needs about {_gb(need)} ({"; ".join(parts)}) and the'
           f' filesystem of {root} has {_gb(have)} free')
    if have < need:
      raise DiskSpaceError(
          msg + '. Free some space, choose a --download_dir or --data_dir on a'
          ' larger disk, build fewer tars (e.g. config first_10 or'
          ' tars_config("0-9")), or set disk_mode="stream" (no tars kept on'
          ' disk) or "delete" (tars removed after a successful build).')
    logging.info('Disk preflight: %s: OK', msg)


def remove_downloaded(paths: Iterable[str]) -> list[str]:
  """Deletes downloaded tars (and their markers); returns what was removed."""
  removed = []
  for p in paths:
    for q in (p, p + VERIFIED_SUFFIX):
      try:
        os.remove(q)
        if q == p:
          removed.append(p)
      except FileNotFoundError:
        pass
  return removed


__all__ = [
    'CACHE_SUBDIR', 'CHECKSUMS_FILE_NAME', 'ChecksumError', 'DiskSpaceError',
    'DownloadError', 'LinksExpiredError', 'Result', 'cache_dir',
    'check_expiry', 'download_all', 'fetch', 'head_sizes', 'parse_checksums',
    'preflight', 'quarantine', 'read_checksums', 'remove_downloaded',
    'verify',
]
