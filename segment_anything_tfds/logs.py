"""What the command line shows: the package's own lines, quiet third parties.

The package logs to the `segment_anything_tfds` logger. `configure` (the CLI
calls it; the Python API never changes logging) prints that logger's
warnings as `segment-anything-tfds: warning: ...` and silences what users
cannot act on: TensorFlow's start-up lines (set before TensorFlow loads),
absl's and TFDS's notes, Beam's import-time warnings. With `verbose`
everything is shown, the package's INFO lines included.
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGE = 'segment_anything_tfds'
PROG = 'segment-anything-tfds'
# Third-party loggers silenced below ERROR unless verbose.
_QUIET = ('absl', 'apache_beam', 'tensorflow', 'tensorflow_datasets',
          'etils', 'urllib3', 'grpc')
# Modules whose warnings go to the root logger (e.g. Beam's "apitools not
# found"), found by the path of the file that logged them.
_QUIET_PATHS = tuple(f'{os.sep}{name}{os.sep}' for name in _QUIET)


class _Format(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    return f'{PROG}: {record.levelname.lower()}: {record.getMessage()}'


class _DropThirdParty(logging.Filter):
  """Drops root-logger records below ERROR that third-party modules made."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not any(
        p in record.pathname for p in _QUIET_PATHS)


_CONFIGURED = {'verbose': None}


def configure(verbose: bool) -> None:
  """Sets up the CLI's output; call before TensorFlow is imported."""
  if _CONFIGURED['verbose'] == verbose:
    return
  _CONFIGURED['verbose'] = verbose
  package = logging.getLogger(PACKAGE)
  for handler in list(package.handlers):
    package.removeHandler(handler)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(_Format())
  package.addHandler(handler)
  package.propagate = False
  package.setLevel(logging.INFO if verbose else logging.WARNING)
  root = logging.getLogger()
  for f in [f for f in root.filters if isinstance(f, _DropThirdParty)]:
    root.removeFilter(f)
  if verbose:
    for name in _QUIET:
      logging.getLogger(name).setLevel(logging.NOTSET)
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  for name in _QUIET:
    logging.getLogger(name).setLevel(logging.ERROR)
  root.addFilter(_DropThirdParty())
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def configured() -> bool | None:
  """None if `configure` was not called, else its `verbose`."""
  return _CONFIGURED['verbose']
