"""segment_anything: SA-1B, streamed from its tars into TFDS records."""

from __future__ import annotations

import os
from typing import Any, Mapping

from etils import epath
import tensorflow_datasets as tfds

from segment_anything_tfds import audit
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds import features as features_lib
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import local_build
from segment_anything_tfds import options as options_lib
from segment_anything_tfds import runners
from segment_anything_tfds import shards as shards_lib
from segment_anything_tfds import sources

_HOMEPAGE = 'https://ai.meta.com/datasets/segment-anything-downloads'


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """SA-1B: 11 M images and 1.1 B masks, prepared with Beam from the tars.

  Registered under the name `segment_anything` by `import
  segment_anything_tfds`, ahead of TFDS's builtin builder of that name.
  """

  name = 'segment_anything'
  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '2.0.0': (
          'segment_anything_tfds: streams tars in place (no extraction),'
          ' reads local tars, folders and the links file, pairs members in'
          ' any folder and order, subsets, lenient audited mode, resumable'
          ' downloads keyed by tar name, flat memory in local builds.'
          ' Features as in the builtin 1.0.0.'
      ),
  }
  BUILDER_CONFIGS = config_lib.BUILDER_CONFIGS
  DEFAULT_CONFIG_NAME = 'all'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put any mix of these in `manual_dir`:
  * `{links_lib.LINKS_FILE_NAME}`, the links file from {_HOMEPAGE}
    (TSV with the header `file_name<TAB>cdn_link`);
  * SA-1B tars `sa_NNNNNN.tar`, read in place and never downloaded again;
  * extracted folders `sa_NNNNNN/` of `sa_<id>.jpg` + `sa_<id>.json`.
  `manual_dir` may be a local path or a bucket (`gs://...`).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=features_lib.features(),
        supervised_keys=None,
        homepage=_HOMEPAGE,
        license=f'SA-1B Dataset Research License (see {_HOMEPAGE})',
        metadata=audit.AuditMetadata(),
    )

  def __init__(
      self, *,
      download_options: (options_lib.DownloadOptions | Mapping[str, Any]
                         | None) = None,
      workers: int = 0,
      progress: bool = True,
      **kwargs):
    """As TFDS's, plus how tars are fetched and how many cores build.

    None of these change the prepared data, so a named config keeps its
    name and data dir whatever they are.

    Args:
      download_options: an `options.DownloadOptions`, or a dict of its
        fields, e.g. `{'disk_mode': 'stream', 'workers': 8}`.
      workers: worker processes of a local build; 0 (the default) is one
        per core. Beam's `direct_num_workers` option, if given, wins.
      progress: show progress bars while building.
      **kwargs: TFDS's builder arguments (`config`, `data_dir`, ...).
    """
    super().__init__(**kwargs)
    self._download_options = options_lib.DownloadOptions.make(
        download_options)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
      raise errors.ConfigError(
          f'workers={workers!r}: expected 0 (one per core) or a positive'
          ' integer')
    self._workers = workers
    self._progress = progress
    self._shards = None  # Set by _download_and_prepare.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """The Beam path: one split, built by `pipeline.BuildExamples`."""
    return {'train': self._generate_examples(self._shards)}

  def _generate_examples(self, shards):
    from segment_anything_tfds import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.BuildExamples(  # pylint: disable=no-value-for-parameter
        shards,
        audit_dir=self.data_path / audit.AUDIT_DIR,
        chunk_size=self.builder_config.chunk_size,
        lenient=self.builder_config.lenient,
    )

  def _find_shards(self, manual_dir, download_dir) -> list[shards_lib.Shard]:
    """The config's shards, downloaded if need be, readable in place."""
    cfg = self.builder_config
    found = shards_lib.find_shards(manual_dir)
    chosen = shards_lib.select(found.shards, num_tars=cfg.num_tars,
                               tars=cfg.tars)
    return sources.materialize(chosen, download_dir=download_dir,
                               data_dir=self.data_dir, manual_dir=manual_dir,
                               options=self._download_options)

  def fetch_shards(self, download_config: tfds.download.DownloadConfig, *,
                   download_dir: epath.PathLike | None = None
                   ) -> list[shards_lib.Shard]:
    """Fetches (and verifies) the config's tars without building.

    The tars land where a build would look for them (`download_dir`, by
    default `<data_dir>/downloads`); a later build reuses them.
    """
    if download_config.manual_dir is None:
      raise errors.SourceError('give a manual_dir: where the tars, folders'
                               f' and {links_lib.LINKS_FILE_NAME} are')
    download_dir = download_dir or (
        epath.Path(self.data_dir).parent.parent.parent / 'downloads')
    return self._find_shards(download_config.manual_dir, download_dir)

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           file_format=None):
    """As TFDS's; then, with `disk_mode='delete'`, deletes downloaded tars."""
    result = super().download_and_prepare(
        download_dir=download_dir, download_config=download_config,
        file_format=file_format)
    sources.release(self._shards or (), options=self._download_options)
    return result

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Finds the shards, then builds locally or with the Beam runner named.

    Without a Beam runner (in `download_config.beam_runner` or its
    `beam_options`), the split is written by `local_build` with one process
    per core (or `direct_num_workers`), memory flat in the number of images.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    self._shards = self._find_shards(dl_manager.manual_dir,
                                     dl_manager.download_dir)
    if runners.names_runner(download_config):
      if download_config.max_examples_per_split is not None:
        raise errors.ConfigError(
            'max_examples_per_split works in local builds only: a Beam build'
            ' cannot stop after N images. Build locally, or pick fewer tars'
            ' (tars_config / --tars).')
      super()._download_and_prepare(dl_manager, download_config)
      return
    output = local_build.Output(
        data_dir=os.fspath(self.data_path), dataset_name=self.name,
        split='train', file_format=self.info.file_format,
        num_shards=download_config.num_shards,
        min_shard_size=download_config.min_shard_size,
        max_shard_size=download_config.max_shard_size)
    records: list[dict[str, Any]] = []
    try:
      result = local_build.build(
          self._shards, output, lenient=self.builder_config.lenient,
          workers=runners.local_workers(download_config, self._workers),
          show_progress=self._progress,
          max_examples=download_config.max_examples_per_split,
          audit_records=records)
    finally:
      audit.write_records(self.data_path, records)
    self.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name='train', shard_lengths=result.shard_lengths,
        num_bytes=result.num_bytes,
        filename_template=self._get_filename_template('train'))]))
    self.info.metadata['build'] = {
        'engine': 'local', 'workers': result.workers,
        'images': result.images_written, 'masks': result.masks,
        'bytes': result.num_bytes, 'seconds': round(result.seconds, 1),
        'per_tar': result.per_tar,
    }
