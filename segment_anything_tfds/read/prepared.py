"""Reading a prepared dataset: reading functions read, they never build.

`tfds.load` builds a missing dataset by default; this package's readers
(`load_sam_dataset`, `load_sam_data_source`, the CLI's `stats`, `show`,
`evaluate`, `export`) do not: a missing dataset is a one-line error that says
which builder, config, version and data dir were looked for and how to build
them. Building is asked for explicitly (`download=True`, as with `tfds.load`).
"""

from __future__ import annotations

from typing import Any, Mapping

from segment_anything_tfds import errors
from segment_anything_tfds.logs import PROG


def not_prepared(builder) -> errors.NotPreparedError:
  """The error for a builder whose data is not there."""
  config = builder.builder_config.name if builder.builder_config else None
  flag = (f'--tars {config[len("tars_"):].replace("_", ",")}'
          if config and config.startswith('tars_') else f'--config {config}')
  if config and config.endswith('_lenient'):
    flag = flag.replace('_lenient', '') + ' --lenient'
  return errors.NotPreparedError(
      f'{builder.name} (config {config}, version {builder.version}) is not'
      f' prepared in {builder.data_dir}: build it with `{PROG} build {flag}'
      f' --manual_dir DIR --data_dir {builder.data_dir_root}`, or read with'
      ' download=True and a manual_dir (download_and_prepare_kwargs)')


def prepared_builder(name: str = 'segment_anything', *,
                     data_dir: str | None = None, download: bool = False,
                     download_and_prepare_kwargs: Mapping[str, Any] | None
                     = None, **builder_kwargs: Any):
  """The builder of `name` (e.g. `'segment_anything/first_1'`), prepared.

  Builds it only with `download=True`; otherwise a missing dataset raises
  `errors.NotPreparedError`, and nothing is written anywhere.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import  # Registers the builder.
  builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
  if not builder.is_prepared():
    if not download:
      raise not_prepared(builder)
    builder.download_and_prepare(**(download_and_prepare_kwargs or {}))
  return builder
