"""Makes a build's shards readable: download, stream or use in place.

`manual_dir.find_shards` lists what manual_dir offers, as sources. A tar or
folder in manual_dir is read in place and never downloaded; so is a link to
a `gs://` object or a local path. `materialize` makes the links readable:
by default it downloads them into the cache (`download.cache_dir`), keyed
by tar name, where they become local tars (`LocalTar(downloaded=True)`);
with `disk_mode='stream'` they stay `HttpTar`s, read straight from their
URLs by HTTP Range requests. Links into a Hugging Face Hub repo (rows of
the links file, or a manual_dir `hf://datasets/...` listed by `hub.py`)
are links like any other. `release` deletes downloads after a build when
asked.

Checksums (`checksums.py`): `materialize_all` checks every tar against the
list the options name, each at no extra pass where something reads it whole
anyway: a download as it is written, a streamed or bucket tar as the engine
reads it (the source carries its `checksum`; the engine asks
`checksums.stream_verdict` at its end), a local tar once (its verdict kept
in a marker). A strict build raises for the tars that do not match; a
lenient one leaves them out (`Materialized.skipped`, for the audit).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Sequence

from etils import epath

from segment_anything_tfds import errors
from segment_anything_tfds import machine
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download as download_lib
from segment_anything_tfds.sources import hub
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources.base import Source
from segment_anything_tfds.sources.http_tar import HttpTar

_LOG = logging.getLogger(__name__)


def _downloaded(name: str, path: str) -> local.LocalTar:
  return local.LocalTar(name, path, downloaded=True)


def _size(source: Source) -> int | None:
  """A tar's size: a local one's, or a listed one's (a bucket listing says
  it); None for anything that costs a request to ask."""
  if source.folder:
    return None
  if source.remote:
    return getattr(source, 'known_size', None)
  try:
    return source.size()
  except errors.SourceError:
    return None


@dataclasses.dataclass
class Materialized:
  """A build's sources, readable, and the tars left out (lenient builds).

  Attributes:
    sources: what the engines read, in the order given.
    skipped: one `BadInputError` (reason `checksum_mismatch`, member '-')
      per tar left out because it does not match its checksum; the builder
      audits each as a skipped tar. Always empty in a strict build, which
      raises instead.
    checked: `checksums.record` of the list the tars were checked against
      (and of each tar's digest).
  """

  sources: list[Source]
  skipped: list[errors.BadInputError] = dataclasses.field(
      default_factory=list)
  checked: dict[str, str] = dataclasses.field(
      default_factory=lambda: checksums.record(None))


def _verify_local(sources: Sequence[Source], listed: checksums.Checklist
                  ) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
  """Hashes the local tars (markers skip unchanged ones), one thread per
  core. Returns name -> what is wrong, for those that do not match, and
  name -> the `local.identity` of the file each was judged by."""
  todo = [(s, e) for s in sources
          if isinstance(s, local.LocalTar)
          and (e := listed.expected(s.name)) is not None]
  judged: dict[int, tuple[int, ...]] = {}
  problems = checksums.verify_all(todo, machine.cores(), judged)
  return ({s.name: p for (s, _), p in zip(todo, problems) if p is not None},
          {todo[i][0].name: f for i, f in judged.items()})


def _mismatch(s: Source, problem: str) -> str:
  """A tar that does not match, where it is now (quarantine or left)."""
  if s.downloaded:
    where = checksums.quarantine(s.location, why=problem)
    return (f'{s.name}: {problem}; moved to {where} (the next run downloads'
            ' it again)')
  return (f'{s.name} ({s.where}): {problem}; not used (your file is left'
          ' where it is)')


def _check_list(sources: Sequence[Source], listed: checksums.Checklist
                ) -> tuple[list[Source], dict[str, str]]:
  """Sources with their checks: local tars hashed now, remote tars given
  their expected digest (checked as they are read, `stream_verdict`).

  Returns:
    The sources to read, and name -> why, for the tars that do not match.
  """
  by_name = {s.name: s for s in sources}
  wrong, judged = _verify_local(sources, listed)
  problems = {n: _mismatch(by_name[n], p) for n, p in wrong.items()}
  out, unlisted, folders, streamed = [], [], [], 0
  for s in sources:
    expected = listed.expected(s.name)
    if s.folder:
      folders.append((s, expected is not None))
    elif expected is None:
      unlisted.append(s.name)
    elif s.remote:
      s = dataclasses.replace(s, checksum=expected)
      streamed += 1
    elif s.name in judged:  # Every read is of the file that matched.
      s = dataclasses.replace(s, checked=judged[s.name])
    out.append(s)
  if streamed:
    _LOG.info('%d remote tars are checked against %s as the build reads'
              ' them', streamed, listed.source)
  if unlisted and len(unlisted) == len(sources) - len(folders):
    raise errors.ChecksumError(
        f'{listed.source} lists none of the {len(unlisted)} tars of this'
        f' build ({", ".join(unlisted[:5])}{", ..." if len(unlisted) > 5 else ""}):'
        ' nothing would be verified. Give the list of these tars, or'
        ' checksums=none (--checksums none) to check nothing')
  if unlisted:
    _LOG.warning('%s lists no checksum for %d tars, not verified: %s',
                 listed.source, len(unlisted), ', '.join(unlisted[:5]))
  # A folder cannot be checked against the digest of a tar: said aloud
  # when the list has one for it (its tar was asked to be verified).
  named = [s for s, has_digest in folders if has_digest]
  if named:
    _LOG.warning(
        '%d extracted folders are read instead of tars %s lists, and are'
        ' not verified (a list has digests of tars): %s', len(named),
        listed.source, ', '.join(f'{s.name} ({s.location})'
                                 for s in named[:5]))
  if len(folders) > len(named):
    _LOG.info('%d extracted folders are not checked against %s (it'
              ' lists tars)', len(folders) - len(named), listed.source)
  return out, problems


def _access_probes(needed: dict[str, HttpTar]) -> dict[str, str]:
  """One link per Hub repo (or origin) among those whose size is known (a
  Hub listing's): a HEAD of it finds a refusal (401, 403) up front."""
  probes: dict[tuple, tuple[str, str]] = {}
  for name, s in sorted(needed.items()):
    if s.known_size is not None:
      repo = hub.repo_of(s.location) if hub.is_hub(s.location) else None
      probes.setdefault((repo, links_lib.origin(s.location)),
                        (name, s.location))
  return dict(probes.values())


def materialize_all(
    sources: Sequence[Source], *, download_dir: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    manual_dir: epath.PathLike | None = None,
    options: options_lib.DownloadOptions | None = None,
    now: float | None = None,
    lenient: bool = False,
) -> Materialized:
  """Makes every source readable in place, and checks the tars.

  Links (`HttpTar`) already in the download cache are used from there
  (whatever their signatures), as `LocalTar(downloaded=True)`; a cached
  file that is not a whole tar is moved to quarantine and fetched again.
  The others, with the default `disk_mode='keep'` or `'delete'`, are
  downloaded into the cache (checked, under a lock per tar) and become
  local tars the same way; with `'stream'` they stay `HttpTar`s, with the
  size of their HEAD (or of the Hub's listing), read by HTTP Range
  requests.

  Before any request, the checksum list is read (`options.checksums`:
  'known', a file, 'none'; by default `segment_anything_checksums.txt` in
  manual_dir) and links with a past `oe=` fail fast. Then the links are
  asked for their sizes (HEAD; for sizes already known, one HEAD per Hub
  repo): a 401 or 403 fails here, before the disk preflight (unless
  `check_disk` is off) compares free disk with what is needed.

  With a checksum list, every tar is checked: downloads as they are
  written, local tars now (once; a marker keeps the verdict), remote tars
  (streamed links, bucket objects) as the engine reads them: they carry
  their expected digest (`checksum`) and the engine asks
  `checksums.stream_verdict` at the end of each.

  Args:
    lenient: a tar that does not match is left out and returned in
      `skipped`, instead of failing the build.

  Raises:
    errors.LinksExpiredError, errors.AccessError, errors.DiskSpaceError,
    errors.DownloadError, errors.ChecksumError (strict: every tar that
    does not match, each with both digests), errors.SourceError.
  """
  options = options or options_lib.DownloadOptions()
  listed = checksums.checklist(options.checksums, manual_dir)  # Fails first.
  cache = download_lib.cache_dir(download_dir)
  out: list[Source] = []
  needed: dict[str, HttpTar] = {}
  for s in sources:
    if isinstance(s, HttpTar):
      cached = os.fspath(cache / s.name)
      if download_lib.cached_tar(cached):
        out.append(_downloaded(s.name, cached))
      else:
        out.append(s)
        needed[s.name] = s
    elif isinstance(s, local.LocalTar) and not os.path.exists(s.location):
      # Remote paths are not stat'ed one by one; opening them names them.
      raise errors.SourceError(
          f'{s.name}: {s.location} does not exist (listed in the links file'
          ' or manual_dir)')
    else:
      out.append(s)
  urls = {n: s.location for n, s in needed.items()}
  if needed:
    download_lib.check_expiry(
        urls, now=now,
        source=os.fspath(epath.Path(manual_dir) / links_lib.LINKS_FILE_NAME)
        if manual_dir is not None and not hub.is_hub_uri(manual_dir)
        else links_lib.LINKS_FILE_NAME)
  stream = options.disk_mode == options_lib.DiskMode.STREAM
  sizes = {n: s.known_size for n, s in needed.items()
           if s.known_size is not None}
  unknown = {n: u for n, u in urls.items() if n not in sizes}
  if unknown and (stream or options.check_disk):
    sizes.update(download_lib.head_sizes(unknown, options=options))
  download_lib.head_sizes(_access_probes(needed), options=options)
  if options.check_disk:
    _preflight(out, urls, sizes, cache=cache, data_dir=data_dir,
               options=options)
  problems: dict[str, str] = {}
  if needed and stream:
    out = [dataclasses.replace(s, known_size=sizes.get(s.name),
                               options=options)
           if s.name in needed else s for s in out]
  elif needed:
    started = time.time()
    expected = {} if listed is None else {
        n: e for n in needed if (e := listed.expected(n)) is not None}
    result = download_lib.download_all(
        urls, cache, options=options, sizes=sizes, expected=expected)
    problems = {n: str(e) for n, e in result.mismatched.items()}
    failed = {n: e for n, e in result.errors.items() if n not in problems}
    if failed:
      raise errors.DownloadError(
          f'{len(failed)} of {len(needed)} tars could not be'
          f' downloaded into {cache} (partial files are kept; a rerun'
          ' resumes them):\n  ' + '\n  '.join(
              f'{n}: {e}' for n, e in sorted(failed.items())))
    _LOG.info('Downloaded %d tars into %s in %.0fs', len(needed), cache,
              time.time() - started)
    out = [_downloaded(s.name, result.paths[s.name])
           if s.name in result.paths and s.name in needed else s
           for s in out if s.name not in problems]
  if listed is not None:
    out, local_problems = _check_list(out, listed)
    problems.update(local_problems)
  return _left_out(out, problems, listed, lenient=lenient)


def _left_out(out: list[Source], problems: dict[str, str],
              listed: checksums.Checklist | None, *,
              lenient: bool) -> Materialized:
  """The sources without the tars that do not match: raised (strict) or
  left out and returned as skipped (lenient)."""
  checked = [s.name for s in out if not s.folder and s.name not in problems]
  if not problems:
    return Materialized(out, checked=checksums.record(listed, checked))
  if not lenient:
    raise errors.ChecksumError(
        f'{len(problems)} tars do not match {listed.source}:\n  '
        + '\n  '.join(problems[n] for n in sorted(problems)))
  for name in sorted(problems):
    _LOG.warning('Skipping tar %s', problems[name])
  return Materialized(
      [s for s in out if s.name not in problems],
      [errors.BadInputError(errors.CHECKSUM_MISMATCH, n, '-', problems[n])
       for n in sorted(problems)], checksums.record(listed, checked))


def materialize(
    sources: Sequence[Source], *, download_dir: epath.PathLike,
    data_dir: epath.PathLike | None = None,
    manual_dir: epath.PathLike | None = None,
    options: options_lib.DownloadOptions | None = None,
    now: float | None = None,
) -> list[Source]:
  """`materialize_all` of a strict build: its sources (a tar that does not
  match its checksum raises `ChecksumError`)."""
  return materialize_all(sources, download_dir=download_dir,
                         data_dir=data_dir, manual_dir=manual_dir,
                         options=options, now=now).sources


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
    _LOG.info('disk_mode=delete: removed %d downloaded tars: %s',
              len(removed), ', '.join(removed[:5]))
  return removed
