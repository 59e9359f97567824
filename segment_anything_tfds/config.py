"""Builder configs: the first 1, 10 or 100 tars, all tars, or a chosen list;
of tars (`tars_config`) and of images (`images_config`).

The config class derives from TFDS's `BuilderConfig`, so it is defined when
first used (`SegmentAnythingConfig`, `BUILDER_CONFIGS`, `tars_config`,
`lenient_config`, `images_config`): importing this module, as the build's
worker processes do (through the sources they unpickle), does not import
TFDS.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from segment_anything_tfds import errors

_SPEC_RE = re.compile(r'[0-9]+(-[0-9]+)?')
# Remote tars: bytes held while members wait for their partner.
HOLD_BYTES = 256 << 20


def _define() -> None:
  """Defines the config class and the named configs (imports TFDS)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class SegmentAnythingConfig(tfds.core.BuilderConfig):
    """Which SA-1B tars to prepare, and how strictly.

    Only what changes the prepared data is here, and `hold_bytes`. How tars
    are fetched is the builder's `download_options`
    (`options.DownloadOptions`), and how many processes build is its
    `workers`.

    Attributes:
      num_tars: take the first `num_tars` shards that `manual_dir` offers
        (local tars and folders, and tars listed in the links file), by tar
        number; None means all of them.
      tars: explicit tar numbers (e.g. (0, 1, 7)); overrides `num_tars`.
      lenient: skip bad images, recording each skip in the dataset's
        metadata, instead of failing on the first one.
      hold_bytes: bytes a remote tar (a link streamed, a tar in a bucket),
        read front to back, holds while members wait for their partner;
        pairs past it are read again by seek at the end of the tar.
      images: an image list (`image_list.ImageList`): build only the images
        it names, from the tars the rest of the config takes. Made by
        `images_config`, whose name carries the list's hash.
    """

    num_tars: int | None = None
    tars: tuple[int, ...] | None = None
    lenient: bool = False
    hold_bytes: int = HOLD_BYTES
    images: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
      if isinstance(self.hold_bytes, bool) or not isinstance(
          self.hold_bytes, int) or self.hold_bytes < 0:
        raise errors.ConfigError(
            f'hold_bytes={self.hold_bytes!r}: expected an integer >= 0')
      if self.images is not None and _IMAGES_TAG + self.images.short not in (
          self.name):
        raise errors.ConfigError(
            f'config {self.name!r} has an image list but not its hash in its'
            ' name: make it with images_config(config, images), so that'
            ' different lists never share a data dir')

  SegmentAnythingConfig.__module__ = __name__
  SegmentAnythingConfig.__qualname__ = 'SegmentAnythingConfig'
  globals()['SegmentAnythingConfig'] = SegmentAnythingConfig
  globals()['BUILDER_CONFIGS'] = [
      SegmentAnythingConfig(
          name='all', description='All SA-1B tars manual_dir offers (1000'
          ' for the full dataset: 11 M images, 1.1 B masks).'),
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


def __getattr__(name: str) -> Any:
  if name in ('SegmentAnythingConfig', 'BUILDER_CONFIGS'):
    _define()
    return globals()[name]
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def parse_tar_spec(spec: str) -> tuple[int, ...]:
  """'0-9,42' -> (0, 1, ..., 9, 42): sorted, each tar once."""
  out = set()
  for part in spec.replace(' ', '').split(','):
    if not _SPEC_RE.fullmatch(part):
      raise errors.ConfigError(
          f'bad tar list {spec!r}: expected numbers and ranges like "0-9,42",'
          f' got {part!r}')
    lo, _, hi = part.partition('-')
    lo, hi = int(lo), int(hi or lo)
    if hi < lo or hi > 999:
      raise errors.ConfigError(f'bad tar range {part!r} in {spec!r}: SA-1B'
                               ' has tars 0-999')
    out.update(range(lo, hi + 1))
  return tuple(sorted(out))


def format_tar_spec(tars: Sequence[int]) -> str:
  """(0, 1, 2, 5) -> '0-2,5': the canonical spec of a set of tars."""
  parts = []
  for tar in sorted(set(tars)):
    if parts and parts[-1][1] == tar - 1:
      parts[-1][1] = tar
    else:
      parts.append([tar, tar])
  return ','.join(str(lo) if lo == hi else f'{lo}-{hi}' for lo, hi in parts)


def tars_config(spec: str, *, lenient: bool = False):
  """A config for an explicit list or range of tars, e.g. `'0-9,42'`.

  Its name comes from the parsed set (`tars_0-9_42`), so `'0-2'` and
  `'0,1,2'` are one config, with one data dir.
  """
  tars = parse_tar_spec(spec)
  canonical = format_tar_spec(tars)
  config = __getattr__('SegmentAnythingConfig')(
      name='tars_' + canonical.replace(',', '_'), tars=tars,
      description=f'SA-1B tars {canonical}: {len(tars)} tars.')
  return lenient_config(config) if lenient else config


def _named(config):
  if not isinstance(config, str):
    return config
  by_name = {c.name: c for c in __getattr__('BUILDER_CONFIGS')}
  if config not in by_name:
    raise errors.ConfigError(
        f'unknown config {config!r}; expected one of {sorted(by_name)}')
  return by_name[config]


def lenient_config(config):
  """The lenient variant of a config, e.g. `first_10` -> `first_10_lenient`.

  It skips bad images instead of failing, and records every skip (tar,
  member, reason) in the dataset's metadata. Its own name keeps its data,
  which may hold fewer images, apart from the strict build's.

  Args:
    config: a config, or a config's name.
  """
  config = _named(config)
  return dataclasses.replace(
      config, name=f'{config.name}_lenient', lenient=True,
      description=f'{config.description} Lenient: bad images are skipped'
      ' and audited.')


_IMAGES_TAG = '_images_'
_LENIENT = '_lenient'


def images_config(config, images):
  """The variant of a config that builds only the images of a list.

  Its name is the config's with `_images_<hash>` (the first 12 hex digits
  of the list's SHA-256, `image_list`), before any `_lenient`: e.g.
  `all_images_1a2b3c4d5e6f`, `tars_0-9_images_1a2b3c4d5e6f_lenient`. So
  different lists never share a data dir, and the same images listed in
  any form or order share one.

  Args:
    config: a config, or a config's name (`'all'`: every tar offered).
    images: a list file (text, one id or `sa_<id>.jpg` name per line; or
      JSON: a list of those, or a COCO-style `{"images": [...]}` like
      MASA's), a list of ids or names, or an `image_list.ImageList`.

  Raises:
    errors.ConfigError: a list that cannot be read (naming the file and
      line), or a config with a list already.
  """
  from segment_anything_tfds.prepare import image_list  # pylint: disable=g-import-not-at-top
  config = _named(config)
  if config.images is not None:
    raise errors.ConfigError(
        f'config {config.name} has an image list already; start from the'
        ' config without one')
  listed = image_list.make(images)
  base = config.name
  suffix = _LENIENT if config.lenient and base.endswith(_LENIENT) else ''
  base = base[:len(base) - len(suffix)]
  return dataclasses.replace(
      config, name=f'{base}{_IMAGES_TAG}{listed.short}{suffix}',
      images=listed,
      description=f'{config.description} Only the {len(listed)} images of'
      f' an image list (sha256 {listed.sha256}).')
