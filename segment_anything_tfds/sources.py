"""Where each SA-1B shard comes from: a local or remote tar, a folder, a URL.

`find_shards` looks in `manual_dir` for tars (`sa_NNNNNN.tar`), extracted
folders (`sa_NNNNNN/`) and the links file, and returns one `Shard` per tar
index. A tar present in manual_dir is read in place and never downloaded; so
is a link to a `gs://` object or a local path. `materialize` makes the rest
readable: by default it downloads them into the cache
(`download.cache_dir(download_dir)`), keyed by tar name; with
`disk_mode='stream'` they are read straight from their URLs by HTTP Range.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, BinaryIO, Sequence

from etils import epath

from segment_anything_tfds import download as download_lib
from segment_anything_tfds import httpfile
from segment_anything_tfds import links as links_lib

TAR = 'tar'
DIR = 'dir'
URL = 'url'


@dataclasses.dataclass(frozen=True)
class Shard:
  """One SA-1B shard.

  Attributes:
    name: the tar's name, e.g. `sa_000000.tar`.
    kind: `tar` (a tar file, local or `gs://`), `dir` (an extracted folder) or
      `url` (an http(s) link; `open` streams it by Range requests).
    location: the path of the tar or folder, or the URL.
    size: the tar's size in bytes when known (saves a HEAD per open).
    retry: the retry policy of a streamed `url` shard.
    downloaded: a tar in the download cache (`disk_mode='delete'` removes it
      after a successful build).
  """

  name: str
  kind: str
  location: str
  size: int | None = None
  retry: httpfile.RetryPolicy | None = None
  downloaded: bool = False

  @property
  def index(self) -> int:
    return links_lib.shard_index(self.name)

  def open(self) -> BinaryIO:
    """Opens a tar for seekable binary reading, in place (never a copy)."""
    if self.kind == URL:
      return httpfile.RangeFile(
          self.location, size=self.size, name=self.name,
          retry=self.retry or httpfile.DEFAULT_RETRY)
    if self.kind != TAR:
      raise ValueError(f'{self.name}: cannot open a {self.kind} shard as a tar')
    if '://' not in self.location:
      return open(self.location, 'rb', buffering=1 << 20)
    return _RemoteFile(epath.Path(self.location))


class _RemoteFile:
  """A file of an epath backend (gs://, s3://, ...) kept open until closed.

  epath's `Path.open` is a context manager on some backends; this holds it
  open and forwards reads and seeks to the backend's file.
  """

  def __init__(self, path: epath.Path):
    self._ctx = path.open('rb')
    if hasattr(self._ctx, '__enter__') and not hasattr(self._ctx, 'read'):
      self._file = self._ctx.__enter__()
    else:
      self._file, self._ctx = self._ctx, None
    self.name = os.fspath(path)

  def __getattr__(self, attr: str) -> Any:
    return getattr(self._file, attr)

  def seekable(self) -> bool:
    return True

  def close(self):
    if self._ctx is not None:
      ctx, self._ctx = self._ctx, None
      ctx.__exit__(None, None, None)
    else:
      self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _link_shard(name: str, url: str, links_dir: epath.Path) -> Shard:
  """A links-file row: http(s) stays a URL; gs:// and paths are tars."""
  if links_lib.is_http(url):
    return Shard(name, URL, url)
  if links_lib.scheme(url) is None and not os.path.isabs(url):
    url = os.fspath(links_dir / url)
  return Shard(name, TAR, url)


def local_shards(manual_dir: epath.PathLike) -> dict[int, Shard]:
  """The tars and `sa_NNNNNN/` folders in `manual_dir` itself, by tar index.

  A tar beats a folder of the same shard. Rows of the links file are not
  included, even when they point at a path or a bucket.
  """
  manual_dir = epath.Path(manual_dir)
  found: dict[int, Shard] = {}
  for p in manual_dir.iterdir():
    if p.name.endswith('.tar') and p.is_file():
      index = links_lib.shard_index(p.name)
      kind = TAR
    elif p.is_dir():
      index = links_lib.shard_index(p.name + '.tar')
      kind = DIR
    else:
      continue
    if index is None:
      continue
    previous = found.get(index)
    if previous is not None and previous.kind == TAR:
      continue  # A tar beats a folder of the same shard.
    found[index] = Shard(links_lib.shard_name(index), kind, os.fspath(p))
  return found


def find_shards(manual_dir: epath.PathLike) -> dict[int, Shard]:
  """All shards `manual_dir` offers, by tar index; local copies win."""
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.exists():
    raise FileNotFoundError(f'manual_dir {manual_dir} does not exist')
  found = local_shards(manual_dir)
  links_path = manual_dir / links_lib.LINKS_FILE_NAME
  if links_path.exists():
    links = links_lib.read_links(links_path)
    if links.other:
      logging.warning(
          '%s: ignoring %d rows that are not SA-1B image tars'
          ' (sa_NNNNNN.tar): %s', links_path, len(links.other),
          ', '.join(sorted(links.other)))
    for name, url in links.shards.items():
      index = links_lib.shard_index(name)
      if index not in found:  # What manual_dir holds wins over a link.
        found[index] = _link_shard(name, url, manual_dir)
  return dict(sorted(found.items()))


def select(
    shards: dict[int, Shard], *, num_tars: int | None, tars: Sequence[int] | None
) -> list[Shard]:
  """The shards a config asks for: the first `num_tars`, or explicit indices."""
  if tars is not None:
    missing = [i for i in tars if i not in shards]
    if missing:
      raise FileNotFoundError(
          f'tars {", ".join(links_lib.shard_name(i) for i in missing)} were'
          ' asked for but are neither in manual_dir nor in its links file')
    return [shards[i] for i in tars]
  chosen = list(shards.values())
  if num_tars is not None:
    if len(chosen) < num_tars:
      # A subset is "up to N": a partial download still builds. What was
      # built is listed in metadata.json (audit.tars).
      logging.warning(
          'This config takes the first %d tars, but manual_dir and its links'
          ' file offer only %d: building those.', num_tars, len(chosen))
    chosen = chosen[:num_tars]
  if not chosen:
    raise FileNotFoundError(
        'manual_dir holds no sa_NNNNNN.tar, no sa_NNNNNN/ folder and no'
        f' {links_lib.LINKS_FILE_NAME}')
  return chosen


@dataclasses.dataclass(frozen=True)
class Options:
  """How `materialize` gets tars; built from the config by `from_config`."""

  disk_mode: str = download_lib.KEEP
  checksums_file: str | None = None
  workers: int = download_lib.DEFAULT_WORKERS
  check_disk: bool = True
  retry: httpfile.RetryPolicy = httpfile.DEFAULT_RETRY
  progress: bool = True

  @classmethod
  def from_config(cls, config: Any) -> 'Options':
    default = cls()
    opts = cls(
        disk_mode=getattr(config, 'disk_mode', default.disk_mode),
        checksums_file=getattr(config, 'checksums_file', None),
        workers=getattr(config, 'download_workers', default.workers),
        check_disk=getattr(config, 'check_disk', default.check_disk),
        retry=httpfile.RetryPolicy(
            max_attempts=getattr(config, 'download_retries',
                                 default.retry.max_attempts),
            backoff=getattr(config, 'download_backoff', default.retry.backoff),
            timeout=getattr(config, 'download_timeout', default.retry.timeout)),
    )
    if opts.disk_mode not in download_lib.DISK_MODES:
      raise ValueError(f'disk_mode {opts.disk_mode!r}: expected one of'
                       f' {", ".join(download_lib.DISK_MODES)}')
    return opts


def _size(path: str) -> int | None:
  try:
    st = epath.Path(path).stat()
  except (OSError, NotImplementedError):
    return None
  return getattr(st, 'st_size', None) or getattr(st, 'length', None)


def _checksums(options: Options, manual_dir: epath.PathLike | None):
  if options.checksums_file:
    return options.checksums_file, download_lib.read_checksums(
        options.checksums_file)
  if manual_dir is not None:
    auto = epath.Path(manual_dir) / download_lib.CHECKSUMS_FILE_NAME
    if auto.exists():
      return os.fspath(auto), download_lib.read_checksums(auto)
  return None, None


def _verify(shards: Sequence[Shard], source: str, sums: dict) -> None:
  """Checks tars against the list; bad cached tars are quarantined."""
  bad, unlisted = [], []
  for s in shards:
    if s.kind != TAR:
      if s.kind == URL:
        logging.warning('%s is streamed; its checksum cannot be verified'
                        ' without reading it whole', s.name)
      continue
    expected = sums.get(s.name)
    if expected is None:
      unlisted.append(s.name)
      continue
    problem = download_lib.verify(s.location, expected)
    if problem is None:
      continue
    if s.downloaded:
      where = download_lib.quarantine(s.location)
      bad.append(f'{s.name}: {problem}; moved to {where} (the next run'
                 ' downloads it again)')
    else:
      bad.append(f'{s.name} ({s.location}): {problem}; not used (your file'
                 ' is left where it is)')
  if unlisted:
    logging.warning('%s lists no checksum for %d tars, not verified: %s',
                    source, len(unlisted), ', '.join(unlisted[:5]))
  if bad:
    raise download_lib.ChecksumError(
        f'{len(bad)} tars do not match {source}:\n  ' + '\n  '.join(bad))


def materialize(
    shards: Sequence[Shard], *, download_dir: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    manual_dir: epath.PathLike | None = None,
    options: Options | None = None, config: Any = None,
    now: float | None = None,
) -> list[Shard]:
  """Makes every shard readable in place.

  URL shards already in the download cache are used from there (whatever
  their links' signatures). The others, with the default `disk_mode='keep'`
  or `'delete'`, are downloaded into the cache; with `'stream'` they stay
  URL shards and are read by HTTP Range requests.

  Before any request, links with a past `oe=` fail fast; then (unless
  `check_disk` is off) free disk is compared with what is needed. With a
  checksum list (`checksums_file`, or `segment_anything_checksums.txt` in
  manual_dir), tars are verified before use.

  Raises:
    download.LinksExpiredError, download.DiskSpaceError,
    download.DownloadError, download.ChecksumError, FileNotFoundError.
  """
  options = options or Options.from_config(config)
  cache = download_lib.cache_dir(download_dir)
  out: list[Shard] = []
  needed: dict[str, str] = {}
  for s in shards:
    if s.kind == URL:
      cached = cache / s.name
      if cached.exists():
        out.append(Shard(s.name, TAR, os.fspath(cached), downloaded=True))
      else:
        out.append(s)
        needed[s.name] = s.location
    elif s.kind == TAR and _is_local(s.location) and not os.path.exists(
        s.location):  # Remote paths: not stat'ed one by one; open names them.
      raise FileNotFoundError(
          f'{s.name}: {s.location} does not exist (listed in the links file'
          ' or manual_dir)')
    else:
      out.append(s)
  if needed:
    download_lib.check_expiry(
        needed, now=now,
        source=os.fspath(epath.Path(manual_dir) / links_lib.LINKS_FILE_NAME)
        if manual_dir is not None else links_lib.LINKS_FILE_NAME)
  sizes: dict[str, int | None] = {}
  stream = options.disk_mode == download_lib.STREAM
  if needed and (stream or options.check_disk):
    sizes = download_lib.head_sizes(needed, workers=options.workers,
                                    retry=options.retry)
  if options.check_disk:
    total = 0
    for s in out:
      if s.kind == URL:
        total += sizes.get(s.name) or download_lib.EST_TAR_BYTES
      elif s.kind == TAR:
        total += (_size(s.location) if _is_local(s.location) else None
                  ) or download_lib.EST_TAR_BYTES
    download_bytes = 0
    if not stream:
      for name in needed:
        part = os.fspath(cache / (name + download_lib.PART_SUFFIX))
        have = os.path.getsize(part) if os.path.isfile(part) else 0
        download_bytes += (sizes.get(name) or
                           download_lib.EST_TAR_BYTES) - have
    download_lib.preflight(
        download_bytes=download_bytes, download_dir=cache,
        output_bytes=int(total * download_lib.OUTPUT_RATIO),
        data_dir=data_dir,
        what=(f'This build ({len(out)} tars, {len(needed)} to'
              f' {"stream" if stream else "download"}, disk_mode='
              f'{options.disk_mode})'))
  if needed and stream:
    out = [dataclasses.replace(s, size=sizes.get(s.name), retry=options.retry)
           if s.kind == URL else s for s in out]
  elif needed:
    started = time.time()
    result = download_lib.download_all(
        needed, cache, workers=options.workers, retry=options.retry,
        sizes=sizes, progress=options.progress)
    if result.errors:
      raise download_lib.DownloadError(
          f'{len(result.errors)} of {len(needed)} tars could not be'
          f' downloaded into {cache} (partial files are kept; a rerun'
          ' resumes them):\n  ' + '\n  '.join(
              f'{n}: {e}' for n, e in sorted(result.errors.items())))
    logging.info('Downloaded %d tars into %s in %.0fs', len(needed), cache,
                 time.time() - started)
    out = [Shard(s.name, TAR, result.paths[s.name], downloaded=True)
           if s.kind == URL else s for s in out]
  source, sums = _checksums(options, manual_dir)
  if sums:
    _verify(out, source, sums)
  return out


def _is_local(path: epath.PathLike) -> bool:
  return '://' not in os.fspath(path)


def release(shards: Sequence[Shard], *, config: Any = None,
            options: Options | None = None) -> list[str]:
  """After a successful build with `disk_mode='delete'`, deletes the tars
  that came from the download cache. Returns the deleted paths."""
  options = options or Options.from_config(config)
  if options.disk_mode != download_lib.DELETE:
    return []
  removed = download_lib.remove_downloaded(
      s.location for s in shards if s.downloaded and s.kind == TAR)
  if removed:
    logging.info('disk_mode=delete: removed %d downloaded tars: %s',
                 len(removed), ', '.join(removed[:5]))
  return removed
