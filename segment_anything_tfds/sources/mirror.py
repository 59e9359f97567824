"""Mirrors SA-1B tars into a bucket (or any dir), on Beam workers, in parallel.

Downloading on the launcher (`disk_mode='keep'`) pulls ≈10 TB through one
machine before a build starts. `MirrorTars` fetches on the workers instead,
one tar per element, with the guarantees of `download.py`:

  'CreateTars'     one element per tar still to mirror
  'ReshuffleTars'  spread them over the workers
  'FetchTars'      per tar, on a worker: nothing to do if `dest` holds it
                   whole (and verified); else `download.download_all` into a
                   worker-local cache keyed by name (resumed, locked,
                   retried within the download options' budget, checked as
                   a whole tar, hashed as it downloads if a checksum list
                   is given), then copied to `dest/<name>.part` and
                   renamed to `dest/<name>`.

So a `sa_NNNNNN.tar` in `dest` is always a whole, checked tar, and a rerun
downloads only what is missing. Signed links past their `oe=` fail in
`plan`, before any pipeline starts. With a checksum list, a verified tar
gets a `<name>.verified` marker (digest and size) next to it, so reruns do
not hash it again. `dest` then serves as a build's `manual_dir`.

The stage is private: by default `<temp dir>/segment_anything_tfds-mirror-
<uid>`, mode 0700 (`default_stage_dir`), and in any stage only this user's
files are used (`download.trusted_file`), so another local user can plant
neither a tar to be mirrored nor a `.part` symlink to be written through.
A local `dest` is written the same way (`download.open_owned`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import tempfile
from typing import Sequence

import apache_beam as beam
from etils import epath

from segment_anything_tfds.sources import checksums as checksums_lib
from segment_anything_tfds import config as config_lib
from segment_anything_tfds.sources import download
from segment_anything_tfds import errors
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.sources import local as local_lib
from segment_anything_tfds.sources import manual_dir
from segment_anything_tfds.sources import paths

_LOG = logging.getLogger(__name__)
_NAMESPACE = 'segment_anything_mirror'
STAGE_SUBDIR = 'segment_anything_tfds-mirror'


@dataclasses.dataclass(frozen=True)
class Tar:
  """One tar to mirror: its name, link, and `checksums.Expected` or None."""

  name: str
  url: str
  checksum: checksums_lib.Expected | None = None


@dataclasses.dataclass(frozen=True)
class Summary:
  """What `mirror` did: tars fetched now, and tars `dest` already held."""

  dest: str
  fetched: tuple[str, ...]
  present: tuple[str, ...]


def _counter(name: str):
  return beam.metrics.Metrics.counter(_NAMESPACE, name)


# ---------------------------------------------------------------- planning


def _links_file(links: epath.PathLike) -> epath.Path:
  """The links file itself, or the one in a dir (a manual_dir)."""
  path = epath.Path(links)
  if path.is_dir():
    path = path / links_lib.LINKS_FILE_NAME
  if not path.exists():
    raise errors.SourceError(
        f'{path} does not exist: give the links file'
        f' ({links_lib.LINKS_FILE_NAME}) or the dir holding it')
  return path


def plan(links: epath.PathLike, *, tars: str | None = None,
         checksums: str | None = None,
         checksums_file: epath.PathLike | None = None,
         now: float | None = None) -> list[Tar]:
  """The tars to mirror from a links file (or the dir holding it).

  Args:
    links: the links file, or a dir holding `segment_anything_links.txt`.
    tars: a tar spec (`"0-9,42"`); None for every tar of the file.
    checksums: what to verify the tars against: 'known' (the published
      md5s, recommended), a `<md5 or sha256>  sa_NNNNNN.tar` file, or None
      / 'none' (no check).
    checksums_file: deprecated: a file, as `checksums`.
    now: the time expiry is checked against (tests).

  Raises:
    errors.LinksError, errors.SourceError, errors.ChecksumError;
    errors.LinksExpiredError if a chosen link is past its `oe=`: before any
    request.
  """
  path = _links_file(links)
  rows = links_lib.read_links(path).shards
  if tars is not None:
    names = [links_lib.shard_name(i) for i in config_lib.parse_tar_spec(tars)]
    missing = [n for n in names if n not in rows]
    if missing:
      raise errors.SourceError(
          f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}'
          f' ({len(missing)} tars) asked for but not in {path}')
    rows = {n: rows[n] for n in names}
  other = sorted(n for n, u in rows.items() if not links_lib.is_http(u))
  if other:
    _LOG.warning('%d rows of %s are not http(s) links, not mirrored: %s',
                 len(other), path, ', '.join(other[:5]))
  rows = {n: u for n, u in sorted(rows.items()) if links_lib.is_http(u)}
  if not rows:
    raise errors.SourceError(f'{path} lists no http(s) tar link to mirror')
  download.check_expiry(rows, now=now, source=os.fspath(path))
  choice = options_lib.DownloadOptions(
      checksums=checksums, checksums_file=checksums_file).checksums
  listed = checksums_lib.checklist(choice or checksums_lib.NONE)
  return [Tar(n, u, listed and listed.expected(n)) for n, u in rows.items()]


# ------------------------------------------------------- the destination


def _marker_text(checksum: checksums_lib.Expected, size: int) -> str:
  return f'{checksum.algo}:{checksum.digest} {size}\n'


def _marker(target: epath.Path) -> epath.Path:
  return target.parent / (target.name + checksums_lib.VERIFIED_SUFFIX)


def _source(target: epath.Path):
  """The tar at `target` in the destination, as a build would read it."""
  return manual_dir.tar_source(target.name, os.fspath(target))


def _marked(target: epath.Path, checksum: checksums_lib.Expected) -> bool:
  marker = _marker(target)
  try:
    return marker.exists() and marker.read_text() == _marker_text(
        checksum, _source(target).size())
  except (OSError, NotImplementedError):
    return False


def _whole(target: epath.Path) -> bool:
  """Whether `target` exists and looks like a whole tar (1.5 kB read)."""
  if not target.exists():
    return False
  problem = download.tar_problem(_source(target))
  if problem is not None:
    _LOG.warning('%s is %s; it is fetched again', target, problem)
  return problem is None


def is_present(dest: epath.PathLike, tar: Tar) -> bool:
  """Whether `dest` holds `tar` whole, and verified if it has a checksum."""
  target = epath.Path(dest) / tar.name
  return _whole(target) and (tar.checksum is None or _marked(target,
                                                             tar.checksum))


def _verify_in_place(target: epath.Path, tar: Tar) -> None:
  """Hashes a whole tar found in `dest` without a marker; marks it."""
  source = _source(target)
  problem = checksums_lib.verify(source, tar.checksum)
  if problem is not None:
    raise errors.ChecksumError(
        f'{tar.name}: {target} is in the destination but its {problem}; it'
        ' is left as it is: remove it and rerun to fetch it again')
  _write(_marker(target), tar.name,
         text=_marker_text(tar.checksum, source.size()))


def _write(target: epath.Path, what: str, copy_from: str | None = None,
           text: str = '') -> None:
  """Writes `text` (or a copy of the file `copy_from`) to `target`.

  A local file is written as `download.open_owned` does: never through a
  symlink, nor over another user's file.
  """
  if not paths.is_local(target):
    if copy_from is not None:
      epath.Path(copy_from).copy(target, overwrite=True)
    else:
      target.write_text(text)
    return
  with download.open_owned(os.fspath(target), 'wb', what) as f:
    if copy_from is None:
      f.write(text.encode())
      return
    with open(copy_from, 'rb') as src:
      shutil.copyfileobj(src, f, 1 << 20)


def _publish(local: str, target: epath.Path, name: str) -> None:
  """Copies a checked local tar to `target` via `<target>.part`."""
  if paths.is_local(target):  # A bucket has no folders to make.
    target.parent.mkdir(parents=True, exist_ok=True)
  part = target.parent / (target.name + download.PART_SUFFIX)
  if paths.is_local(part) and os.path.islink(part):
    os.remove(part)  # Replaced, not written through.
  _write(part, name, copy_from=local)
  part.replace(target)  # Only a whole copy ever bears the tar's name.


# ------------------------------------------------------------ fetching


def _private_dir(path: str) -> bool:
  """Makes the dir `path` (mode 0700) unless something is there already;
  whether it is now a dir (not a symlink) that only this user can use."""
  try:
    os.mkdir(path, 0o700)
  except FileExistsError:
    pass
  st = os.lstat(path)
  if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
    return False
  if stat.S_IMODE(st.st_mode) & 0o077:
    return False  # Others could have put files in it already.
  return True


def default_stage_dir() -> str:
  """Where a worker stages its downloads: a private dir in its temp dir.

  `<temp dir>/segment_anything_tfds-mirror-<uid>`, made mode 0700, so a
  rerun resumes its partial downloads. If that path is anything else (a
  dir of another user, a symlink, a dir others may write to), it is not
  touched: a fresh private dir (`mkdtemp`) is used, with a warning.
  """
  path = os.path.join(tempfile.gettempdir(),
                      f'{STAGE_SUBDIR}-{os.geteuid()}')
  if _private_dir(path):
    return path
  fresh = tempfile.mkdtemp(prefix=f'{STAGE_SUBDIR}-{os.geteuid()}-')
  _LOG.warning('%s is not a private dir of this user (another user may have'
               ' made it); staging downloads in %s instead', path, fresh)
  return fresh


def _download(tar: Tar, stage_dir: str,
              options: options_lib.DownloadOptions) -> str:
  """Downloads `tar` into the worker's stage (resumed, checked, hashed as
  it downloads); its path."""
  result = download.download_all(
      {tar.name: tar.url}, stage_dir, options=options,
      expected={tar.name: tar.checksum} if tar.checksum else None)
  if tar.name in result.mismatched:  # Moved to quarantine on the worker.
    raise errors.ChecksumError(
        f'{result.mismatched[tar.name]}; not mirrored')
  if tar.name in result.errors:
    raise errors.DownloadError(  # The error names the tar and the host.
        f'{result.errors[tar.name]} (a rerun resumes it)')
  local = result.paths[tar.name]
  if tar.checksum is not None:  # A tar staged by an earlier run.
    problem = checksums_lib.verify(local_lib.LocalTar(tar.name, local),
                                   tar.checksum)
    if problem is not None:
      where = checksums_lib.quarantine(local)
      raise errors.ChecksumError(
          f'{tar.name}: the download\'s {problem}; moved to {where} on the'
          ' worker, not mirrored')
  return local


def fetch_tar(tar: Tar, *, dest: str, options: options_lib.DownloadOptions,
              stage_dir: str | None = None) -> str:
  """Makes `dest/<name>` a whole, checked copy of `tar`; runs on a worker.

  Returns:
    'present' if `dest` held it already, else 'fetched'.
  """
  target = epath.Path(dest) / tar.name
  if _whole(target):
    if tar.checksum is not None and not _marked(target, tar.checksum):
      _verify_in_place(target, tar)
    _counter('tars_present').inc()
    return 'present'
  local = _download(tar, stage_dir or default_stage_dir(), options)
  size = os.path.getsize(local)
  _publish(local, target, tar.name)
  if tar.checksum is not None:
    _write(_marker(target), tar.name, text=_marker_text(tar.checksum, size))
  download.remove_downloaded([local])  # Worker disk: the tars in flight.
  _counter('tars_fetched').inc()
  _counter('bytes_fetched').inc(size)
  _LOG.info('Mirrored %s (%d bytes) to %s', tar.name, size, target)
  return 'fetched'


@beam.ptransform_fn
def MirrorTars(  # pylint: disable=invalid-name
    pipeline: beam.pvalue.PBegin,
    tars: Sequence[Tar],
    *,
    dest: str,
    options: options_lib.DownloadOptions,
    stage_dir: str | None = None,
) -> beam.PCollection:
  """Fetches `tars` into `dest` on the workers; (name, outcome) pairs."""
  return (
      pipeline
      | 'CreateTars' >> beam.Create(list(tars))
      | 'ReshuffleTars' >> beam.Reshuffle()
      | 'FetchTars' >> beam.Map(_fetch_named, dest=dest, options=options,
                                 stage_dir=stage_dir)
  )


def _fetch_named(tar: Tar, **kwargs) -> tuple[str, str]:
  return tar.name, fetch_tar(tar, **kwargs)


def mirror(tars: Sequence[Tar], dest: epath.PathLike, *, beam_options=None,
           options: options_lib.DownloadOptions | None = None,
           stage_dir: str | None = None) -> Summary:
  """Mirrors `tars` into `dest` with a Beam pipeline; checks the result.

  Tars `dest` already holds (whole, and verified when they have a checksum)
  are skipped before the pipeline starts; with none left, no pipeline runs.

  Args:
    tars: from `plan`.
    dest: a bucket (`gs://...`) or any dir epath writes to.
    beam_options: Beam `PipelineOptions`, given explicitly (never parsed
      from sys.argv); with no runner in them, Beam's in-process FnApiRunner.
    options: download options of the workers (retries, timeout, ...).
    stage_dir: where workers stage downloads (default: a private dir in
      their temp dir, `default_stage_dir`).

  Raises:
    errors.DownloadError: a tar is not in `dest` after the pipeline.
  """
  options = (options or options_lib.DownloadOptions()).replace(
      progress=False, workers=1, check_disk=False)
  dest = os.fspath(dest)
  present = [t.name for t in tars if is_present(dest, t)]
  todo = [t for t in tars if t.name not in present]
  if todo:
    _run(todo, dest, beam_options=beam_options, options=options,
         stage_dir=stage_dir)
  missing = [t.name for t in todo if not is_present(dest, t)]
  if missing:
    raise errors.DownloadError(
        f'{len(missing)} tars are not in {dest} after the mirror pipeline:'
        f' {", ".join(missing[:5])}')
  return Summary(dest, tuple(t.name for t in todo), tuple(present))


def _run(tars: Sequence[Tar], dest: str, *, beam_options, options,
         stage_dir) -> None:
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  beam_options = beam_options or pipeline_options.PipelineOptions([])
  standard = beam_options.view_as(pipeline_options.StandardOptions)
  runner = None if standard.runner else runners.local_runner()
  with beam.Pipeline(runner=runner, options=beam_options) as p:
    _ = p | 'Mirror' >> MirrorTars(  # pylint: disable=no-value-for-parameter
        tars, dest=dest, options=options, stage_dir=stage_dir)
