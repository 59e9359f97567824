"""What the command line shows: the package's own lines, quiet third parties.

The package logs to the `segment_anything_tfds` logger. `configure` (the CLI
calls it; the Python API never changes logging) prints that logger's
warnings as `segment-anything-tfds: warning: ...` (escaped with
`errors.printable`: names from input never reach the terminal raw) and
silences what users cannot act on: TensorFlow's start-up lines, absl's and
TFDS's notes, Beam's import-time warnings. With `verbose` everything is
shown, the package's INFO lines included.

TensorFlow's start-up lines come two ways. Those logged once TensorFlow
runs (`cpu_feature_guard`, `cuInit`) obey `TF_CPP_MIN_LOG_LEVEL`, set
before TensorFlow loads. Those its C++ libraries log while they load
(`oneDNN custom operations are on`, `Could not find cuda drivers`, after
absl's `WARNING: All log messages before absl::InitializeLog() ...`) are
written before that variable is read. So quiet, `import tensorflow` runs
with the process's stderr (fd 2) held in a temporary file, and the lines
that are such notes below `TF_CPP_MIN_LOG_LEVEL` are dropped; every other
line is passed on (all of them if the import fails).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

from segment_anything_tfds import _import_hook
from segment_anything_tfds import errors

PACKAGE = 'segment_anything_tfds'
PROG = 'segment-anything-tfds'
# Third-party loggers silenced below ERROR unless verbose.
_QUIET = ('absl', 'apache_beam', 'tensorflow', 'tensorflow_datasets',
          'etils', 'urllib3', 'grpc', 'fsspec', 'gcsfs', 'google')
# Modules whose warnings go to the root logger (e.g. Beam's "apitools not
# found"), found by the path of the file that logged them.
_QUIET_PATHS = tuple(f'{os.sep}{name}{os.sep}' for name in _QUIET)


class _Format(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    message = errors.printable(record.getMessage())
    return f'{PROG}: {record.levelname.lower()}: {message}'


class _DropThirdParty(logging.Filter):
  """Drops root-logger records below ERROR that third-party modules made."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not any(
        p in record.pathname for p in _QUIET_PATHS)


# A line of C++ logging (absl's format): severity, date, time (before
# absl::InitializeLog: `00:00:<seconds since 1970>`), thread, file:line.
_CPP_LOG_RE = re.compile(
    rb'([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ')
_CPP_SEVERITIES = b'IWEF'
_ABSL_BANNER = (b'WARNING: All log messages before absl::InitializeLog() is'
                b' called are written to STDERR')


def _min_log_level() -> int:
  value = os.environ.get('TF_CPP_MIN_LOG_LEVEL', '')
  return int(value) if value.isascii() and value.isdigit() else 0


def _is_load_note(line: bytes, level: int) -> bool:
  """Whether `line` is a C++ note below `level` (`TF_CPP_MIN_LOG_LEVEL`)."""
  if line.rstrip(b'\r\n') == _ABSL_BANNER:
    return level > 0
  m = _CPP_LOG_RE.match(line)
  return bool(m) and _CPP_SEVERITIES.index(m.group(1)) < level


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


@contextlib.contextmanager
def _load_notes_dropped():
  """Holds fd 2 in a file; then passes on all but TensorFlow's load notes."""
  try:
    saved = os.dup(2)
  except OSError:  # No stderr at all: nothing to keep quiet.
    yield
    return
  with contextlib.suppress(Exception):
    sys.stderr.flush()
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      with contextlib.suppress(Exception):
        sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      level = _min_log_level()
      _write_all(2, b''.join(line for line in held
                             if failed or not _is_load_note(line, level)))


def _quiet_load(load) -> None:
  """Loads TensorFlow (`_import_hook.OnImport`) with its notes dropped."""
  _quiet_tensorflow_import(False)
  with _load_notes_dropped():
    load()


def _is_quiet_import(finder) -> bool:
  return isinstance(finder, _import_hook.OnImport) and (
      finder.run is _quiet_load)


def _quiet_tensorflow_import(enabled: bool) -> None:
  """Installs (before TensorFlow is loaded) or removes the quiet import."""
  sys.meta_path[:] = [f for f in sys.meta_path if not _is_quiet_import(f)]
  if enabled and 'tensorflow' not in sys.modules:
    sys.meta_path.insert(0, _import_hook.OnImport('tensorflow', _quiet_load))


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
  _quiet_tensorflow_import(not verbose)
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
