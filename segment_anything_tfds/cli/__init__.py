"""`segment-anything-tfds`: build, index, check-links, mirror, stats, show,
evaluate, export.

  segment-anything-tfds build --config first_1 --manual_dir DIR --data_dir D
  segment-anything-tfds index --manual_dir DIR --out index.parquet [--images L]
  segment-anything-tfds check-links --manual_dir DIR [--probe]
  segment-anything-tfds mirror --links FILE --dest gs://BUCKET/sa1b [--runner R]
  segment-anything-tfds stats --config first_1 --data_dir D --out OUT
  segment-anything-tfds show --config first_1 --data_dir D --index 0,3 --out OUT
  segment-anything-tfds evaluate --config first_1 --data_dir D --predictions P
  segment-anything-tfds export --tars 0 --data_dir D --format coco --out OUT

One module per command (`build.py`, `check_links.py`, ...), each with
`add_parser` and `run`; `common.py` holds what they share.

Exit codes: 0 success; 2 bad usage; 1 an expected failure: one of the
package's errors (`segment_anything_tfds.errors`), reported on one line,
also when Beam re-raised it from a worker. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from segment_anything_tfds import errors
from segment_anything_tfds import logs
from segment_anything_tfds.cli import build
from segment_anything_tfds.cli import check_links
from segment_anything_tfds.cli import common
from segment_anything_tfds.cli import evaluate
from segment_anything_tfds.cli import export
from segment_anything_tfds.cli import index
from segment_anything_tfds.cli import mirror
from segment_anything_tfds.cli import show
from segment_anything_tfds.cli import stats

PROG = common.PROG
COMMANDS = (build, index, check_links, mirror, stats, show, evaluate, export)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, allow_abbrev=False,
      description='SA-1B (Segment Anything) for TensorFlow Datasets: prepare'
      ' the dataset, index the tars, check a links file, mirror the tars'
      ' into a bucket,'
      ' compute statistics, draw examples, score predictions, export to'
      ' other formats.',
      epilog='Exit codes: 0 ok, 1 failure (one-line error), 2 bad usage. Run'
      f' `{PROG} COMMAND --help` for each command.')
  parser.add_argument('--version', action='version',
                      version=f'%(prog)s {_version()}')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
  shared = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  shared.add_argument('--no_progress', dest='progress', action='store_false',
                      help='no progress bars (TFDS\'s included)')
  shared.add_argument('-v', '--verbose', action='store_true',
                      help='show everything: INFO lines, third-party logs,'
                      ' tracebacks of worker errors')
  for command in COMMANDS:
    command.add_parser(sub, [shared])
  return parser


def _version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('segment_anything_tfds')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit code (0 ok, 1 failure, 2 usage)."""
  common.mark_start()
  parser = build_parser()
  try:
    args, leftover = parser.parse_known_args(argv)
    if leftover and not args.allow_leftover:
      parser.error(f'unrecognized arguments: {" ".join(leftover)}')
    sub = parser._subparsers._group_actions[0].choices[args.command]  # pylint: disable=protected-access
    if (empty := common.empty_path(sub, args)) is not None:
      sub.error(f'{empty}: an empty path (an unset shell variable?)')
  except SystemExit as e:  # --help, --version and usage errors.
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  logs.configure(verbose=args.verbose)
  if not args.progress:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  try:
    return args.func(args, leftover) or 0
  except BrokenPipeError:  # e.g. `| head`: the reader is gone; stay quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
  except common.UsageError as e:
    sub.print_usage(sys.stderr)
    print(f'{PROG} {args.command}: error: {errors.printable(e)}',
          file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f'{PROG}: interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    error = errors.from_exception(e)
    if error is None and isinstance(e, OSError) and e.filename and (
        not args.verbose):
      # A path (given, or under one given) that no check foresaw failing:
      # the OS's reason is the message; --verbose shows the traceback.
      paths = f'{e.filename}' + (f' -> {e.filename2}' if e.filename2 else '')
      error = errors.SourceError(
          f'{paths}: {e.strerror or errors.first_line(e)}')
    if error is None:
      raise  # A bug: keep its traceback.
    if args.command in ('build', 'index', 'mirror'):
      sys.stderr.write('\n')  # End a progress bar's line.
    # `message` is escaped already; once more, as the last line of defence.
    print(f'{PROG} {args.command}: error: {errors.printable(error.message)}',
          file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
