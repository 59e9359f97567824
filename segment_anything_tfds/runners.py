"""The local Beam runner: offline, in-process, optionally multi-process.

Beam's default DirectRunner (2.77) first tries to download the Prism binary
from GitHub. Local builds use the FnApiRunner instead, which runs in process
and needs no network. `--direct_num_workers=N` and
`--direct_running_mode=multi_processing` in the Beam options spread work over
N local processes.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds


def local_runner():
  """Beam's in-process FnApiRunner."""
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
  return fn_api_runner.FnApiRunner()


def with_local_runner(
    config: tfds.download.DownloadConfig,
) -> tfds.download.DownloadConfig:
  """`config` with the local runner, unless it names a runner already."""
  if config.beam_runner is not None:
    return config
  options = config.beam_options
  if options is not None:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    if options.view_as(pipeline_options.StandardOptions).runner is not None:
      return config
  return dataclasses.replace(config, beam_runner=local_runner())


def is_local(config: tfds.download.DownloadConfig) -> bool:
  """Whether `config` runs Beam on the FnApiRunner, in this machine's RAM.

  Its GroupByKey buffers hold everything grouped in memory, so builds on it
  should use lazy examples (see `lazy.plan`).
  """
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
  return isinstance(config.beam_runner, fn_api_runner.FnApiRunner)
