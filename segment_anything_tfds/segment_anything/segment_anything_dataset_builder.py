"""segment_anything: SA-1B, read in place from its tars into TFDS records.

The builder is thin: its configs and features, and `_download_and_prepare`,
which finds the config's sources, has the engine chosen by the download
config (`prepare.engines`) write the split, then sets the split and folds
the build's counts and audit into the metadata, once. TFDS internals are
reached through `tfds_seam` only.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from etils import epath
import tensorflow_datasets as tfds

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds import features as features_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds import tfds_seam
from segment_anything_tfds.prepare import engines
from segment_anything_tfds.prepare import incomplete
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import rules
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import hub
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.sources import materialize as sources

_LOG = logging.getLogger(__name__)


class Builder(tfds_seam.LogHooks, tfds.core.GeneratorBasedBuilder,
              skip_registration=True):
  """SA-1B: 11 M images and 1.1 B masks, prepared from the tars in place.

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
  BUILDER_CONFIGS = config_lib.BUILDER_CONFIGS  # pylint: disable=no-member
  DEFAULT_CONFIG_NAME = 'all'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put any mix of these in `manual_dir`:
  * `{links_lib.LINKS_FILE_NAME}`, the links file from {errors.HOMEPAGE}
    (TSV with the header `file_name<TAB>cdn_link`);
  * SA-1B tars `sa_NNNNNN.tar`, read in place and never downloaded again;
  * extracted folders `sa_NNNNNN/` of `sa_<id>.jpg` + `sa_<id>.json`.
  `manual_dir` may be a local path, a bucket (`gs://...`) or a folder of
  tars in a Hugging Face dataset repo (`hf://datasets/OWNER/REPO[/PATH]`).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=features_lib.features(),
        supervised_keys=None,
        homepage=errors.HOMEPAGE,
        license=f'SA-1B Dataset Research License (see {errors.HOMEPAGE})',
        metadata=tfds.core.MetadataDict(),
    )

  def __new__(cls, *args, **kwargs):
    """This builder, or TFDS's builtin one for data and versions of its own.

    `tfds.builder('segment_anything:1.0.0')` (any 1.x version), and a
    `data_dir` that holds only the builtin's 1.0.0 data, resolve to TFDS's
    builtin builder, so datasets prepared by it stay loadable by name.
    """
    if cls is Builder and kwargs.get('images') is None and _wants_builtin(
        kwargs.get('version'), kwargs.get('data_dir'), kwargs.get('config')):
      return tfds_seam.builtin_builder()(*args, **{
          k: v for k, v in kwargs.items()
          if k in ('data_dir', 'version', 'file_format')})
    return super().__new__(cls)

  def __init__(
      self, *,
      download_options: (options_lib.DownloadOptions | Mapping[str, Any]
                         | None) = None,
      workers: int = 0,
      progress: bool = True,
      allow_partial: bool = False,
      images: Any = None,
      **kwargs):
    """As TFDS's, plus how tars are fetched and how many cores build.

    None of these but `images` change the prepared data, so a named config
    keeps its name and data dir whatever they are. `images` makes the
    config its `images_config` variant, with a name (and data dir) of its
    own.

    Args:
      download_options: an `options.DownloadOptions`, or a dict of its
        fields, e.g. `{'disk_mode': 'stream', 'workers': 8}`.
      workers: worker processes of a local build; 0 (the default) is one
        per core. Beam's `direct_num_workers` option, if given, wins.
      progress: show progress bars while building.
      allow_partial: build a `first_N` config from fewer than N tars, or an
        image list some of whose images are in no tar (instead of
        failing); what is missing is recorded in the metadata and every
        load warns about it.
      images: build only these images (`config.images_config`): a list
        file (ids or `sa_<id>.jpg` names, one per line; or JSON), or a list
        of ids or names. The config (default `all`) says which tars are
        read.
      **kwargs: TFDS's builder arguments (`config`, `data_dir`, ...).
    """
    if images is not None:
      kwargs['config'] = config_lib.images_config(
          kwargs.get('config') or self.DEFAULT_CONFIG_NAME, images)
    super().__init__(**kwargs)
    self._download_options = options_lib.DownloadOptions.make(
        download_options)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
      raise errors.ConfigError(
          f'workers={workers!r}: expected 0 (one per core) or a positive'
          ' integer')
    self._workers = workers
    self._progress = progress
    self._allow_partial = allow_partial
    self._shards = None  # Set by _download_and_prepare, with:
    self._checked = None  # `checksums.record` of the tars' list, and
    self._max_examples = None  # the cap on the images written.
    self._reused = False
    self._partial_said = False

  def _split_generators(self, dl_manager):
    """Unused: `_download_and_prepare` has an engine write the split."""
    raise NotImplementedError('segment_anything is written by its engines'
                              ' (prepare/engines.py)')

  def _generate_examples(self):
    """Unused, as `_split_generators`."""
    raise NotImplementedError('segment_anything is written by its engines'
                              ' (prepare/engines.py)')

  def _offered(self, manual_dir) -> list[base.Source]:
    """The shards of this config that manual_dir offers (nothing fetched)."""
    cfg = self.builder_config
    found = shards_lib.find_shards(manual_dir)
    return shards_lib.select(found.shards, num_tars=cfg.num_tars,
                             tars=cfg.tars, allow_partial=self._allow_partial,
                             config_name=f'config {cfg.name}',
                             refused=found.refused)

  def _find_shards(self, manual_dir, download_dir, *, lenient: bool = False
                   ) -> sources.Materialized:
    """The config's shards, downloaded if need be, readable in place, and
    (lenient) those left out for not matching their checksums."""
    chosen = self._offered(manual_dir)
    return sources.materialize_all(
        chosen, download_dir=download_dir, data_dir=self.data_dir,
        manual_dir=manual_dir, options=self._download_options,
        lenient=lenient)

  def fetch_shards(self, download_config: tfds.download.DownloadConfig, *,
                   download_dir: epath.PathLike | None = None
                   ) -> list[base.Source]:
    """Fetches (and verifies) the config's tars without building.

    The tars land where a build would look for them (`download_dir`, by
    default `<data_dir>/downloads`); a later build reuses them.
    """
    if download_config.manual_dir is None:
      raise errors.SourceError('give a manual_dir: where the tars, folders'
                               f' and {links_lib.LINKS_FILE_NAME} are')
    download_dir = download_dir or (
        epath.Path(self.data_dir).parent.parent.parent / 'downloads')
    return self._find_shards(download_config.manual_dir,
                             download_dir).sources

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           file_format=None):
    """As TFDS's, one build of this version in this data dir at a time.

    While another build of it runs (in any process), this one waits, then
    reuses its dataset (`reused`), or builds if that build failed. A dataset
    already prepared is compared with what manual_dir offers now (a warning
    says when they differ). Stale `incomplete.*` dirs left by killed builds
    are removed first. With `disk_mode='delete'`, downloaded tars are
    deleted after a successful build.
    """
    config = download_config or tfds.download.DownloadConfig()
    reuse = config.download_mode == (
        tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    with incomplete.build_lock(self.data_dir):
      self._reused = reuse and self.is_prepared()
      if self._reused:
        # It may have been prepared since this builder read the data dir.
        self.info.read_from_directory(self.data_path)
        self._check_list()
        self._check_reuse(config.manual_dir)
        self._check_checksums(config.manual_dir)
        self._warn_partial()
      else:
        incomplete.remove_stale(self.data_dir)
      result = super().download_and_prepare(
          download_dir=download_dir, download_config=download_config,
          file_format=file_format)
    sources.release(self._shards or (), options=self._download_options)
    rules.log_skips(self.info.metadata, self.data_dir)
    return result

  @property
  def reused(self) -> bool:
    """Whether the last `download_and_prepare` found the dataset prepared
    (before it started, or by a build it waited for) and used it as it is."""
    return self._reused

  def _check_reuse(self, manual_dir) -> None:
    """Warns when manual_dir now offers other tars than were built."""
    built = (self.info.metadata or {}).get('audit', {}).get('tars')
    if manual_dir is None or built is None:
      return
    try:
      offered = [s.name for s in self._offered(manual_dir)]
    except errors.Error as e:
      _LOG.warning('%s is prepared; manual_dir cannot be checked against it'
                   ' (%s)', self.info.full_name, e)
      return
    if sorted(offered) != sorted(built):
      added = sorted(set(offered) - set(built))
      gone = sorted(set(built) - set(offered))
      _LOG.warning(
          'Already prepared %s from %d tars, but manual_dir now offers %d for'
          ' this config (%s%s); the prepared data is used as it is. Rebuild'
          ' with --overwrite (download_mode=REUSE_CACHE_IF_EXISTS) to take'
          ' them.', self.info.full_name, len(built), len(offered),
          f'new: {", ".join(added[:5])}' if added else '',
          f'{"; " if added else ""}not offered now: {", ".join(gone[:5])}'
          if gone else '')

  def _check_checksums(self, manual_dir) -> None:
    """Warns when a checksum list is asked for that the prepared data was
    not built against (its tars were not checked with it)."""
    try:
      listed = checksums.checklist(self._download_options.checksums,
                                   manual_dir)
    except errors.Error as e:
      _LOG.warning('%s is prepared; its tars cannot be compared with the'
                   ' checksum list asked for (%s)', self.info.full_name, e)
      return
    metadata = self.info.metadata or {}
    built = metadata.get('build', {}).get('checksums')
    tars = metadata.get('audit', {}).get('tars') or []
    missed = [] if listed is None else checksums.unchecked(built, listed,
                                                           tars)
    if missed:
      was = (f'against {built["list"]}' if built and 'tars' in built else
             'without a checksum list' if built else
             'without a record of its checksums')
      _LOG.warning(
          'Already prepared %s (built %s); %d of its tars (%s) were not'
          ' checked against %s. The prepared data is used as it is; rebuild'
          ' it with --overwrite (download_mode=REUSE_CACHE_IF_EXISTS) to'
          ' check them.', self.info.full_name, was, len(missed),
          ', '.join(missed[:5]) + (', ...' if len(missed) > 5 else ''),
          listed.short or listed.source)

  def _check_list(self) -> None:
    """Refuses prepared data whose image list is not this config's.

    The config's name carries its list's hash, so another list cannot
    share its data dir; the full hash in the metadata is compared all the
    same (a copied or edited dir).
    """
    images = self.builder_config.images
    if images is None or not self.is_prepared():
      return
    stored = (self.info.metadata or {}).get('images', {}).get('list_sha256')
    if stored != images.sha256:
      raise errors.ConfigError(
          f'{self.data_path} was not prepared from this image list: its'
          f' metadata says list sha256 {stored}, the list given'
          f' ({images.origin}) has {images.sha256}. Rebuild it with'
          ' --overwrite, or use another --data_dir')

  def _warn_partial(self) -> None:
    """Warns, once per builder, when the data is not the whole config: a
    capped build (`max_examples_per_split`), a partial one
    (`allow_partial`), or images of its list in no tar."""
    if self._partial_said:  # `tfds.load` reuses, then reads.
      return
    self._partial_said = True
    metadata = self.info.metadata or {}
    cap = metadata.get('build', {}).get('max_examples')
    if cap is not None:
      _LOG.warning(
          '%s was built with max_examples_per_split=%d: it holds at most %d'
          ' images, not every image of config %s', self.info.full_name, cap,
          cap, self.builder_config.name)
    partial = metadata.get('build', {}).get('partial')
    if partial:
      _LOG.warning(
          '%s is a partial build: config %s takes %d tars, it holds %d'
          ' (missing %s)', self.info.full_name, self.builder_config.name,
          partial['config_tars'], len(partial['built']),
          ', '.join(partial['missing'][:5]))
    listed = metadata.get('images', {})
    if listed.get('missing'):
      _LOG.warning(
          '%s is a partial build: %d of the %d images of its image list'
          ' were in no tar (first: %s)', self.info.full_name,
          listed['missing'], listed['listed'],
          ', '.join(str(i) for i in listed['missing_ids'][:5]))

  def as_dataset(self, *args, **kwargs):
    """As TFDS's; warns if the data is a partial build (`allow_partial`)."""
    self._check_list()
    self._warn_partial()
    return super().as_dataset(*args, **kwargs)

  def as_data_source(self, *args, **kwargs):
    """As TFDS's; warns if the data is a partial build (`allow_partial`)."""
    self._check_list()
    self._warn_partial()
    return super().as_data_source(*args, **kwargs)

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Finds the sources, has the engine write the split, sets it, and folds
    the build into the metadata.

    Without a Beam runner (in `download_config.beam_runner` or its
    `beam_options`) the local engine writes the split, one process per
    core (or `direct_num_workers`), memory flat in the number of images.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    engine = engines.for_config(download_config, workers=self._workers,
                                show_progress=self._progress)
    config = self.builder_config
    manual_dir = download_config.manual_dir
    if manual_dir is None or not hub.is_hub_uri(manual_dir):
      manual_dir = _checked_manual_dir(dl_manager, manual_dir)
    ready = self._find_shards(manual_dir, dl_manager.download_dir,
                              lenient=config.lenient)
    self._shards = ready.sources
    self._checked = ready.checked
    self._max_examples = download_config.max_examples_per_split
    left_out = [rules.skip_record(e, kind='tar') for e in ready.skipped]
    if not self._shards:
      raise errors.SourceError(rules.nothing_to_write(left_out,
                                                      len(left_out)))
    output = plan.Output(
        data_dir=os.fspath(self.data_path), dataset_name=self.name,
        split='train', file_format=self.info.file_format,
        num_shards=download_config.num_shards,
        min_shard_size=download_config.min_shard_size,
        max_shard_size=download_config.max_shard_size)
    result = engine.build(self._shards, output, lenient=config.lenient,
                          hold_bytes=config.hold_bytes, images=config.images,
                          allow_partial=self._allow_partial, skipped=left_out)
    self.info.set_splits(tfds.core.SplitDict([tfds_seam.split_info(
        name='train', shard_lengths=result.shard_lengths,
        num_bytes=result.num_bytes, template=output.template())]))
    self._fold_metadata(result)

  def _fold_metadata(self, result: plan.Result) -> None:
    """The build's counts and audit summary, an image list's hash and
    missing images, and a partial set's tars, into the metadata (replacing
    those of a dataset loaded before)."""
    metadata = self.info.metadata
    for key in ('audit', 'build', 'images'):
      if key in metadata:
        del metadata[key]
    metadata['build'] = result.metadata()
    metadata['build']['checksums'] = self._checked
    if self._max_examples is not None:
      metadata['build']['max_examples'] = self._max_examples
    if result.audit:
      metadata['audit'] = rules.summarize(result.audit)
    if self.builder_config.images is not None:
      metadata['images'] = rules.images_metadata(self.builder_config.images,
                                                 result.missing_images)
    num_tars = self.builder_config.num_tars
    if num_tars is None or len(self._shards) >= num_tars:
      return
    built = [s.name for s in self._shards]
    metadata['build']['partial'] = {
        'config_tars': num_tars, 'built': built,
        'missing': [links_lib.shard_name(i) for i in range(num_tars)
                    if links_lib.shard_name(i) not in built][
                        :num_tars - len(built)],
    }


def _wants_builtin(version: Any, data_dir: Any, config: Any) -> bool:
  """Whether a request is for TFDS's builtin 1.x data (see `Builder.__new__`).

  Yes for a 1.x version; and, when neither a version nor a config (the
  builtin has none) is asked for, for a data_dir with the builtin's data and
  none of this builder's.
  """
  if version is not None:
    return str(version).startswith('1.')
  if data_dir is None or config is not None:
    return False
  root = epath.Path(data_dir) / Builder.name
  try:
    if not (root / '1.0.0' / 'dataset_info.json').exists():
      return False
    return not list(root.glob(f'*/{Builder.VERSION}/dataset_info.json'))
  except (OSError, NotImplementedError):
    return False


def _checked_manual_dir(dl_manager, given) -> epath.Path:
  """TFDS's manual dir (it checks that the dir exists and is not empty,
  with an `AssertionError`); a path its filesystem cannot read at all
  (`gs://` with no bucket, ...) is a one-line `SourceError`."""
  try:
    return dl_manager.manual_dir
  except (AssertionError, ValueError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    # The filesystem's own errors: TensorFlow's, fsspec's, the OS's.
    where = given or f'{dl_manager.download_dir}/manual (the default)'
    raise errors.SourceError(
        f'manual_dir {where}: cannot be read:'
        f' {errors.backend_reason(e)}') from None
