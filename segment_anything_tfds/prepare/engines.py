"""Which engine builds, chosen from TFDS's `DownloadConfig`.

  Local   no Beam runner named: this package's writer (`local.py`), one
          process per core when the work is worth it, offline, no Beam.
  Beam    a runner named (`DownloadConfig(beam_runner=...)`, or `runner=`
          in its `beam_options`): the Beam pipeline (`beam.py`), what
          Dataflow runs, with the options given (never `sys.argv`).

Both take the same sources and `plan.Output`, apply the same rules and
plan, and write the same shard files and audit (`Engine.build`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.sources import base


class Engine(Protocol):
  """Writes a split from sources."""

  def build(self, sources: Sequence[base.Source], output: plan.Output, *,
            lenient: bool, hold_bytes: int, images: Any = None,
            allow_partial: bool = False,
            skipped: Sequence[dict[str, Any]] = ()) -> plan.Result:
    """Writes the split; with `images` (an `image_list.ImageList`), the
    listed images only: found in no tar, they are an error unless
    `allow_partial` (`rules.missing_images`). `skipped`: the audit records
    of tars left out before the build (`rules.skip_record`), written with
    the others."""
    ...


@dataclasses.dataclass(frozen=True)
class Local:
  """The local engine: `workers` processes at most (0: one per core)."""

  workers: int = 0
  show_progress: bool = True
  max_examples: int | None = None

  def build(self, sources, output, *, lenient, hold_bytes, images=None,
            allow_partial=False, skipped=()):
    from segment_anything_tfds.prepare import local  # pylint: disable=g-import-not-at-top
    return local.build(sources, output, lenient=lenient,
                       workers=self.workers, hold_bytes=hold_bytes,
                       show_progress=self.show_progress,
                       max_examples=self.max_examples, images=images,
                       allow_partial=allow_partial, skipped=skipped)


@dataclasses.dataclass(frozen=True)
class Beam:
  """The Beam engine, on `runner` (or the one `options` names)."""

  runner: Any = None
  options: Any = None

  def build(self, sources, output, *, lenient, hold_bytes, images=None,
            allow_partial=False, skipped=()):
    from segment_anything_tfds.prepare import beam  # pylint: disable=g-import-not-at-top
    return beam.build(sources, output, lenient=lenient,
                      hold_bytes=hold_bytes, runner=self.runner,
                      options=self.options, images=images,
                      allow_partial=allow_partial, skipped=skipped)


def for_config(download_config: Any, *, workers: int = 0,
               show_progress: bool = True) -> Engine:
  """The engine a TFDS `DownloadConfig` asks for.

  Raises:
    errors.ConfigError: Beam is not installed, or a Beam build is asked to
      stop after N images.
  """
  if not runners.names_runner(download_config):
    return Local(workers=runners.local_workers(download_config, workers),
                 show_progress=show_progress,
                 max_examples=download_config.max_examples_per_split)
  runners.require_beam()
  if download_config.max_examples_per_split is not None:
    raise errors.ConfigError(
        'max_examples_per_split works in local builds only: a Beam build'
        ' cannot stop after N images. Build locally, or pick fewer tars'
        ' (tars_config / --tars).')
  return Beam(runner=download_config.beam_runner,
              options=download_config.beam_options)
