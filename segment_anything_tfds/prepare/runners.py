"""Beam runners: whether a build names one, and Beam's offline runner.

A build that names no Beam runner is local (`prepare/local.py`): no Beam
at all (`engines.for_config` chooses).
Beam's default DirectRunner (2.77) would first try to download the Prism
binary from GitHub; to run the Beam pipeline in this process, offline, pass
`DownloadConfig(beam_runner=runners.local_runner())` (Beam's FnApiRunner).
"""

from __future__ import annotations

from typing import Any

from segment_anything_tfds import errors


def require_beam() -> None:
  """Raises a one-line error if Apache Beam, needed by Beam runners, is absent."""
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.ConfigError(
        'building with a Beam runner needs Apache Beam: pip install'
        ' "segment_anything_tfds[beam]" (Dataflow: "[gcp]"); local builds'
        ' (no runner) need no Beam') from None


def local_runner():
  """Beam's in-process FnApiRunner."""
  from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
  return fn_api_runner.FnApiRunner()


def _options(config: Any):
  if config.beam_options is None:
    return None
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  return config.beam_options.view_as(pipeline_options.PipelineOptions)


def names_runner(config: Any) -> bool:
  """Whether `config` asks for Beam: a runner object, or one in its options.

  Builds that name no runner are local builds (`prepare/local.py`), which need
  no Beam at all.
  """
  if config.beam_runner is not None:
    return True
  options = _options(config)
  if options is None:
    return False
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  return options.view_as(pipeline_options.StandardOptions).runner is not None


def local_workers(config: Any, workers: int) -> int:
  """Workers of a local build: Beam's `direct_num_workers` if set, else
  `workers` (0: one per core)."""
  options = _options(config)
  if options is not None:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    n = options.view_as(pipeline_options.DirectOptions).direct_num_workers
    if n:
      return n
  return workers
