"""Builder configs: the first 1, 10 or 100 tars, all tars, or a chosen list."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import tensorflow_datasets as tfds

_SPEC_RE = re.compile(r'^\d+(-\d+)?$')


@dataclasses.dataclass
class SegmentAnythingConfig(tfds.core.BuilderConfig):
  """Which SA-1B tars to prepare, and how strictly.

  Attributes:
    num_tars: take the first `num_tars` shards that `manual_dir` offers (local
      tars and folders, and tars listed in the links file), by tar number;
      None means all of them.
    tars: explicit tar numbers (e.g. (0, 1, 7)); overrides `num_tars`.
    lenient: skip bad images, recording each skip in the dataset's metadata,
      instead of failing on the first one.
    chunk_size: images per unit of parallel work.
    disk_mode: what happens to tars fetched from http(s) links: 'keep' (the
      default: kept in `<download_dir>/segment_anything/`, so reruns and other
      configs reuse them), 'stream' (never stored: read by HTTP Range
      requests) or 'delete' (downloaded, then deleted after the build
      succeeds).
    checksums_file: a list of `<md5 or sha256>  sa_NNNNNN.tar` lines to
      verify tars against; by default `segment_anything_checksums.txt` in
      manual_dir, if there.
    download_workers: tars downloaded at once.
    check_disk: compare free disk with the build's needs before starting.
    download_retries: attempts without progress before a download fails.
    download_backoff: first wait between retries, in seconds (doubles).
    download_timeout: socket timeout for HTTP requests, in seconds.
  """

  num_tars: int | None = None
  tars: tuple[int, ...] | None = None
  lenient: bool = False
  chunk_size: int = 64
  # How tars are fetched does not change the output: these fields are the
  # builder's `download_options` (see `apply_download_options`).
  disk_mode: str = dataclasses.field(default='keep', compare=False)
  checksums_file: str | None = dataclasses.field(default=None, compare=False)
  download_workers: int = dataclasses.field(default=4, compare=False)
  check_disk: bool = dataclasses.field(default=True, compare=False)
  download_retries: int = dataclasses.field(default=8, compare=False)
  download_backoff: float = dataclasses.field(default=1.0, compare=False)
  download_timeout: float = dataclasses.field(default=60.0, compare=False)


def parse_tar_spec(spec: str) -> tuple[int, ...]:
  """'0-9,42' -> (0, 1, ..., 9, 42): sorted, each tar once."""
  out = set()
  for part in spec.replace(' ', '').split(','):
    if not _SPEC_RE.match(part):
      raise ValueError(
          f'bad tar list {spec!r}: expected numbers and ranges like "0-9,42",'
          f' got {part!r}')
    lo, _, hi = part.partition('-')
    lo, hi = int(lo), int(hi or lo)
    if hi < lo or hi > 999:
      raise ValueError(f'bad tar range {part!r} in {spec!r}: SA-1B has tars'
                       ' 0-999')
    out.update(range(lo, hi + 1))
  return tuple(sorted(out))


def tars_config(spec: str, *, lenient: bool = False, **kwargs
                ) -> SegmentAnythingConfig:
  """A config for an explicit list or range of tars, e.g. `'0-9,42'`.

  Its name (`tars_0-9_42`) names its data dir, so each subset is kept apart.
  Other keyword arguments set config fields (e.g. `disk_mode='stream'`).
  """
  tars = parse_tar_spec(spec)
  config = SegmentAnythingConfig(
      name='tars_' + spec.replace(' ', '').replace(',', '_'), tars=tars,
      description=f'SA-1B tars {spec}: {len(tars)} tars.', **kwargs)
  return lenient_config(config) if lenient else config


def _named(config: str | SegmentAnythingConfig) -> SegmentAnythingConfig:
  if not isinstance(config, str):
    return config
  by_name = {c.name: c for c in BUILDER_CONFIGS}
  if config not in by_name:
    raise ValueError(
        f'unknown config {config!r}; expected one of {sorted(by_name)}')
  return by_name[config]


DOWNLOAD_OPTIONS = frozenset(
    f.name for f in dataclasses.fields(SegmentAnythingConfig) if not f.compare)


def apply_download_options(
    config: SegmentAnythingConfig, options: Mapping[str, Any]
) -> SegmentAnythingConfig:
  """`config` with download options (e.g. `disk_mode='stream'`) set.

  These are the config fields that do not change the output. Builders take
  them as `tfds.builder('segment_anything', config='first_10',
  download_options={'disk_mode': 'stream'})`, so a named config keeps its
  name and data dir.
  """
  unknown = set(options) - DOWNLOAD_OPTIONS
  if unknown:
    raise ValueError(
        f'download_options takes only {sorted(DOWNLOAD_OPTIONS)}; got'
        f' {sorted(unknown)}')
  return dataclasses.replace(config, **options) if options else config


def lenient_config(config: str | SegmentAnythingConfig) -> SegmentAnythingConfig:
  """The lenient variant of a config, e.g. `first_10` -> `first_10_lenient`.

  It skips bad images instead of failing, and records every skip (tar,
  member, reason) in the dataset's metadata. Its own name keeps its data,
  which may hold fewer images, apart from the strict build's.
  """
  config = _named(config)
  return dataclasses.replace(
      config, name=f'{config.name}_lenient', lenient=True,
      description=f'{config.description} Lenient: bad images are skipped'
      ' and audited.')


BUILDER_CONFIGS = [
    SegmentAnythingConfig(
        name='all', description='All SA-1B tars manual_dir offers (1000 for'
        ' the full dataset: 11 M images, 1.1 B masks).'),
    SegmentAnythingConfig(
        name='first_1', num_tars=1,
        description='The first tar (≈11 k images, ≈10 GB).'),
    SegmentAnythingConfig(
        name='first_10', num_tars=10,
        description='The first 10 tars (≈110 k images, ≈100 GB).'),
    SegmentAnythingConfig(
        name='first_100', num_tars=100,
        description='The first 100 tars (≈1.1 M images, ≈1 TB).'),
]
