"""Makes a build's shards readable: download, stream or use in place.

`manual_dir.find_shards` lists what manual_dir offers, as sources. A tar or
folder in manual_dir is read in place and never downloaded; so is a link to
a `gs://` object or a local path. `materialize` makes the links readable:
by default it downloads them into the cache (`download.cache_dir`), keyed
by tar name, where they become local tars (`LocalTar(downloaded=True)`);
with `disk_mode='stream'` they stay `HttpTar`s, read straight from their
URLs by HTTP Range requests. `release` deletes downloads after a build when
asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Sequence

from etils import epath

from segment_anything_tfds import errors
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download as download_lib
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources.base import Source
from segment_anything_tfds.sources.http_tar import HttpTar


def _downloaded(name: str, path: str) -> local.LocalTar:
  return local.LocalTar(name, path, downloaded=True)


def _size(source: Source) -> int | None:
  """A local tar's size; None for anything that costs a request to ask."""
  if source.remote or source.folder:
    return None
  try:
    return source.size()
  except errors.SourceError:
    return None


def _checksums(options: options_lib.DownloadOptions,
               manual_dir: epath.PathLike | None):
  if options.checksums_file:
    return options.checksums_file, checksums.read_checksums(
        options.checksums_file)
  if manual_dir is not None:
    auto = epath.Path(manual_dir) / checksums.CHECKSUMS_FILE_NAME
    if auto.exists():
      return os.fspath(auto), checksums.read_checksums(auto)
  return None, None


def _verify(sources: Sequence[Source], source: str, sums: dict) -> None:
  """Checks tars against the list; bad cached tars are quarantined."""
  bad, unlisted = [], []
  for s in sources:
    if s.folder:
      continue
    if isinstance(s, HttpTar):
      logging.warning('%s is streamed; its checksum cannot be verified'
                      ' without reading it whole', s.name)
      continue
    expected = sums.get(s.name)
    if expected is None:
      unlisted.append(s.name)
      continue
    problem = checksums.verify(s, expected)
    if problem is None:
      continue
    if s.downloaded:
      where = checksums.quarantine(s.location)
      bad.append(f'{s.name}: {problem}; moved to {where} (the next run'
                 ' downloads it again)')
    else:
      bad.append(f'{s.name} ({s.where}): {problem}; not used (your file'
                 ' is left where it is)')
  if unlisted:
    logging.warning('%s lists no checksum for %d tars, not verified: %s',
                    source, len(unlisted), ', '.join(unlisted[:5]))
  if bad:
    raise errors.ChecksumError(
        f'{len(bad)} tars do not match {source}:\n  ' + '\n  '.join(bad))


def materialize(
    sources: Sequence[Source], *, download_dir: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    manual_dir: epath.PathLike | None = None,
    options: options_lib.DownloadOptions | None = None,
    now: float | None = None,
) -> list[Source]:
  """Makes every source readable in place.

  Links (`HttpTar`) already in the download cache are used from there
  (whatever their signatures), as `LocalTar(downloaded=True)`; a cached
  file that is not a whole tar is moved to quarantine and fetched again.
  The others, with the default `disk_mode='keep'` or `'delete'`, are
  downloaded into the cache (checked, under a lock per tar) and become
  local tars the same way; with `'stream'` they stay `HttpTar`s, with the
  size of their HEAD, read by HTTP Range requests.

  Before any request, the checksum list is read (`checksums_file`, or
  `segment_anything_checksums.txt` in manual_dir) and links with a past
  `oe=` fail fast; then (unless `check_disk` is off) free disk is compared
  with what is needed. With a checksum list, tars are verified before use.

  Raises:
    errors.LinksExpiredError, errors.DiskSpaceError, errors.DownloadError,
    errors.ChecksumError, errors.SourceError.
  """
  options = options or options_lib.DownloadOptions()
  listed, sums = _checksums(options, manual_dir)  # A bad list fails first.
  cache = download_lib.cache_dir(download_dir)
  out: list[Source] = []
  needed: dict[str, str] = {}
  for s in sources:
    if isinstance(s, HttpTar):
      cached = os.fspath(cache / s.name)
      if download_lib.cached_tar(cached):
        out.append(_downloaded(s.name, cached))
      else:
        out.append(s)
        needed[s.name] = s.location
    elif isinstance(s, local.LocalTar) and not os.path.exists(s.location):
      # Remote paths are not stat'ed one by one; opening them names them.
      raise errors.SourceError(
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
  stream = options.disk_mode == options_lib.DiskMode.STREAM
  if needed and (stream or options.check_disk):
    sizes = download_lib.head_sizes(needed, options=options)
  if options.check_disk:
    _preflight(out, needed, sizes, cache=cache, data_dir=data_dir,
               options=options)
  if needed and stream:
    out = [dataclasses.replace(s, known_size=sizes.get(s.name),
                               options=options)
           if s.name in needed else s for s in out]
  elif needed:
    started = time.time()
    result = download_lib.download_all(
        needed, cache, options=options, sizes=sizes)
    if result.errors:
      raise errors.DownloadError(
          f'{len(result.errors)} of {len(needed)} tars could not be'
          f' downloaded into {cache} (partial files are kept; a rerun'
          ' resumes them):\n  ' + '\n  '.join(
              f'{n}: {e}' for n, e in sorted(result.errors.items())))
    logging.info('Downloaded %d tars into %s in %.0fs', len(needed), cache,
                 time.time() - started)
    out = [_downloaded(s.name, result.paths[s.name]) if s.name in needed
           else s for s in out]
  if sums:
    _verify(out, listed, sums)
  return out


def _preflight(sources: Sequence[Source], needed: dict[str, str],
               sizes: dict[str, int | None], *, cache: epath.Path,
               data_dir: epath.PathLike | None,
               options: options_lib.DownloadOptions) -> None:
  """Compares free disk with what the build needs (`download.preflight`)."""
  stream = options.disk_mode == options_lib.DiskMode.STREAM
  total = 0
  for s in sources:
    if s.name in needed:
      total += sizes.get(s.name) or download_lib.EST_TAR_BYTES
    elif not s.folder:
      total += _size(s) or download_lib.EST_TAR_BYTES
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
      what=(f'This build ({len(sources)} tars, {len(needed)} to'
            f' {"stream" if stream else "download"}, disk_mode='
            f'{options.disk_mode})'))


def release(sources: Sequence[Source], *,
            options: options_lib.DownloadOptions) -> list[str]:
  """After a successful build with `disk_mode='delete'`, deletes the tars
  that came from the download cache. Returns the deleted paths."""
  if options.disk_mode != options_lib.DiskMode.DELETE:
    return []
  removed = download_lib.remove_downloaded(
      s.location for s in sources if s.downloaded)
  if removed:
    logging.info('disk_mode=delete: removed %d downloaded tars: %s',
                 len(removed), ', '.join(removed[:5]))
  return removed
