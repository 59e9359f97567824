"""segment_anything: SA-1B, streamed from its tars into TFDS records."""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow_datasets as tfds

from segment_anything_tfds import audit
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import features as features_lib
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import pipeline
from segment_anything_tfds import runners
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
          ' any folder and order, subsets, lenient audited mode. Features'
          ' as in the builtin 1.0.0.'
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

  def __init__(self, *, download_options: Mapping[str, Any] | None = None,
               **kwargs):
    """As TFDS's, plus `download_options`: how tars are fetched.

    Args:
      download_options: config fields that do not change the output, e.g.
        `{'disk_mode': 'stream', 'download_workers': 8}`; see
        `SegmentAnythingConfig`.
      **kwargs: TFDS's builder arguments (`config`, `data_dir`, ...).
    """
    super().__init__(**kwargs)
    self._sources_config = config_lib.apply_download_options(
        self.builder_config, download_options or {})
    self._materialized = ()

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    cfg = self._sources_config
    shards = sources.select(
        sources.find_shards(dl_manager.manual_dir),
        num_tars=cfg.num_tars, tars=cfg.tars)
    shards = sources.materialize(
        shards, download_dir=dl_manager.download_dir, data_dir=self.data_dir,
        manual_dir=dl_manager.manual_dir, config=cfg)
    self._materialized = shards  # For `sources.release` after the build.
    return {'train': self._generate_examples(shards)}

  def _generate_examples(self, shards):
    return pipeline.BuildExamples(  # pylint: disable=no-value-for-parameter
        shards,
        audit_dir=self.data_path / pipeline.AUDIT_DIR,
        chunk_size=self.builder_config.chunk_size,
        lenient=self.builder_config.lenient,
    )

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           file_format=None):
    """As TFDS's, but a local build defaults to an offline Beam runner."""
    download_config = runners.with_local_runner(
        download_config or tfds.download.DownloadConfig())
    self._materialized = ()
    result = super().download_and_prepare(
        download_dir=download_dir, download_config=download_config,
        file_format=file_format)
    sources.release(self._materialized, config=self._sources_config)
    return result
