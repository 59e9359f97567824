"""segment_anything: SA-1B, streamed from its tars into TFDS records."""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow_datasets as tfds

from segment_anything_tfds import audit
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import features as features_lib
from segment_anything_tfds import lazy
from segment_anything_tfds import links as links_lib
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
      **kwargs):
    """As TFDS's, plus `download_options`: how tars are fetched.

    Args:
      download_options: an `options.DownloadOptions`, or a dict of its
        fields, e.g. `{'disk_mode': 'stream', 'workers': 8}`. They do not
        change the output, so a named config keeps its name and data dir.
      **kwargs: TFDS's builder arguments (`config`, `data_dir`, ...).
    """
    super().__init__(**kwargs)
    self._download_options = options_lib.DownloadOptions.make(
        download_options)
    self._shards = None  # Set by download_and_prepare.
    self._lazy = False

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self._shards is None:
      self._shards = self._find_shards(dl_manager.manual_dir,
                                       dl_manager.download_dir)
    return {'train': self._generate_examples(self._shards)}

  def _generate_examples(self, shards):
    from segment_anything_tfds import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.BuildExamples(  # pylint: disable=no-value-for-parameter
        shards,
        audit_dir=self.data_path / audit.AUDIT_DIR,
        chunk_size=self.builder_config.chunk_size,
        lenient=self.builder_config.lenient,
        lazy=self._lazy,
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

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           file_format=None):
    """As TFDS's, with a local default runner and flat memory.

    A local build defaults to Beam's offline FnApiRunner. Its shards are
    found (and downloaded) first, so that a local build of local tars can use
    lazy examples (`lazy.plan`), which keep its memory flat.
    """
    download_config = runners.with_local_runner(
        download_config or tfds.download.DownloadConfig())
    if not self.is_prepared():
      # The paths TFDS's own download manager will use.
      dl_manager = self._make_download_manager(download_dir, download_config)
      self._shards = self._find_shards(dl_manager.manual_dir,
                                       dl_manager.download_dir)
      lazy_config = lazy.plan(self._shards, download_config,
                              file_format or self.info.file_format)
      self._lazy = lazy_config is not None
      download_config = lazy_config or download_config
    result = super().download_and_prepare(
        download_dir=download_dir, download_config=download_config,
        file_format=file_format)
    sources.release(self._shards or (), options=self._download_options)
    return result

  def _example_writer(self):
    if self._lazy:
      return lazy.LazyExampleWriter(self.info.file_format, self.info.features)
    return super()._example_writer()

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    if self._lazy:  # TFDS counted the stand-ins' bytes: count the records'.
      self.info.set_splits(tfds.core.SplitDict(
          [lazy.split_info(s) for s in self.info.splits.values()]))
