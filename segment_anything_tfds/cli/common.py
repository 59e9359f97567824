"""What the commands share: argument types, dataset flags, builders, output."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from typing import Any, Sequence

from etils import epath

import segment_anything_tfds
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds import logs
from segment_anything_tfds.units import human_bytes  # pylint: disable=unused-import
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import paths as paths_lib

PROG = logs.PROG
# `--runner` value of builds and mirrors run by Beam's in-process runner.
LOCAL_RUNNER = 'local'
DATASET = 'segment_anything'


_STARTED: list[float] = []


def mark_start() -> None:
  """Starts the clock of a command's `time:`: what the user has waited.

  The first command of a process counts from the package's import (a
  console script: almost all of it); a later one, run in the same Python
  process, from now.
  """
  _STARTED[:] = [time.perf_counter() if _STARTED else
                 segment_anything_tfds._IMPORTED_AT]  # pylint: disable=protected-access


def seconds_since_start() -> float:
  """Wall time since `mark_start`."""
  return time.perf_counter() - (
      _STARTED[0] if _STARTED else segment_anything_tfds._IMPORTED_AT)  # pylint: disable=protected-access


class UsageError(Exception):
  """Bad usage found after parsing: printed with the usage, exit code 2."""


# ---------------------------------------------------------------- output


def progress(iterable=None, *, enabled: bool, **kwargs):
  """A tqdm bar on stderr, or a plain pass-through when disabled."""
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
  return tqdm_auto.tqdm(iterable, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, **kwargs)


def require(module: str, *, command: str, extra: str,
            package: str | None = None) -> None:
  """A one-line error, before any work, if an optional module is missing."""
  try:
    importlib.import_module(module)
  except ImportError:
    raise errors.ConfigError(
        f'{command} needs {package or module}, which is not installed: pip'
        f' install "segment_anything_tfds[{extra}]"') from None


# ---------------------------------------------------------- argument types


def tar_spec(value: str) -> str:
  try:
    config_lib.parse_tar_spec(value)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return value


def int_list(value: str) -> list[int]:
  try:
    out = [int(v) for v in value.replace(' ', '').split(',') if v]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers like "0,3", got {value!r}'
    ) from None
  if not out or any(v < 0 for v in out):
    raise argparse.ArgumentTypeError(
        f'expected non-negative integers like "0,3", got {value!r}')
  return out


def _int_from(value: str, lowest: int, what: str) -> int:
  try:
    n = int(value)
  except ValueError:
    n = lowest - 1
  if n < lowest:
    raise argparse.ArgumentTypeError(f'expected {what}, got {value!r}')
  return n


def empty_path(parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> str | None:
  """The first option of `parser` that names a path (its metavar says
  DIR, FILE or OUT) given as '', or None. An empty path would mean no
  option (`--images ''`: every image) or the current dir (`--data_dir
  ''`)."""
  for action in parser._actions:  # pylint: disable=protected-access
    metavar = action.metavar if isinstance(action.metavar, str) else ''
    if (action.option_strings and any(w in metavar.split('|')
                                      for w in ('DIR', 'FILE', 'OUT'))
        and getattr(args, action.dest, None) == ''):
      return action.option_strings[0]
  return None


def positive_int(value: str) -> int:
  return _int_from(value, 1, 'a positive integer')


def non_negative_int(value: str) -> int:
  return _int_from(value, 0, 'a non-negative integer')


def unit_interval(value: str) -> float:
  """A number in [0, 1]."""
  try:
    x = float(value)
  except ValueError:
    x = float('nan')
  if not 0.0 <= x <= 1.0:  # Also refuses nan.
    raise argparse.ArgumentTypeError(
        f'expected a number from 0 to 1, got {value!r}')
  return x


def download_option(field: str, parse: type):
  """An argparse type for a `DownloadOptions` field, checked by it.

  The ranges live in `options.DownloadOptions` alone; a value it refuses is
  a usage error (exit 2) with its one-line message.
  """
  kind = 'an integer' if parse is int else 'a number'

  def convert(text: str):
    try:
      value = parse(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f'expected {kind}, got {text!r}') from None
    try:
      options_lib.DownloadOptions(**{field: value})
    except errors.ConfigError as e:
      raise argparse.ArgumentTypeError(e.message) from None
    return value

  convert.__name__ = field  # argparse names the type in some messages.
  return convert


# `--download_*` flag -> `DownloadOptions` field.
_DOWNLOAD_FLAGS = (('download_workers', 'workers'),
                   ('download_retries', 'retries'),
                   ('download_timeout', 'timeout'),
                   ('download_min_rate', 'min_rate'))


def add_download_args(p: argparse.ArgumentParser, *,
                      workers: bool = True) -> None:
  """The flags of how tars are fetched, for every command that fetches."""
  if workers:
    p.add_argument('--download_workers',
                   type=download_option('workers', int), default=None,
                   metavar='N', help='tars downloaded at once (default 4)')
  p.add_argument('--download_retries',
                 type=download_option('retries', int), default=None,
                 metavar='N', help='failed attempts in a row, without new'
                 ' bytes, before a tar\'s download fails (default 8; at most'
                 ' 4*N attempts per tar in all)')
  p.add_argument('--download_timeout',
                 type=download_option('timeout', float), default=None,
                 metavar='SECONDS', help='bounds each download attempt: the'
                 ' answer\'s status line and headers must arrive within this'
                 ' time in all (however slowly a server sends them), no read'
                 ' may wait longer, and the body must bring at least'
                 ' --download_min_rate over every window this long; else the'
                 ' attempt fails and is retried (default 60)')
  p.add_argument('--download_min_rate',
                 type=download_option('min_rate', float), default=None,
                 metavar='BYTES_PER_S', help='the slowest body accepted,'
                 ' measured over every --download_timeout window of waiting'
                 ' (default 10000; 0 turns the check off)')


def add_checksums_args(p: argparse.ArgumentParser, *, default: str) -> None:
  """`--checksums` (and its deprecated `--checksums_file`), for every
  command that fetches or checks tars; `default` says what none does."""
  p.add_argument('--checksums', metavar='known|FILE|none', default=None,
                 help='verify every tar: "known" (the published md5s of the'
                 ' 1000 SA-1B tars, shipped with this package; recommended'
                 ' for mirrors), a FILE of "<md5 or sha256>  sa_NNNNNN.tar"'
                 f' lines, or "none" (default: {default})')
  p.add_argument('--checksums_file', metavar='FILE', default=None,
                 help='deprecated: use --checksums FILE')


def checksums_choice(args: argparse.Namespace) -> str | None:
  """The `checksums` download option of `--checksums` (or the deprecated
  `--checksums_file`, noted on stderr); None if neither is given."""
  chosen, old = args.checksums, args.checksums_file
  if old is None:
    return chosen
  print(f'{PROG}: note: --checksums_file is deprecated; use --checksums'
        ' FILE', file=sys.stderr)
  if chosen is not None and chosen != old:
    raise UsageError('give --checksums alone (--checksums_file is its'
                     ' deprecated name)')
  return old


def download_fields(args: argparse.Namespace) -> dict:
  """The `DownloadOptions` fields the `--download_*` flags set."""
  return {field: getattr(args, flag) for flag, field in _DOWNLOAD_FLAGS
          if getattr(args, flag, None) is not None}


# ------------------------------------------------------------------ Beam


def beam_flag_list(leftover: Sequence[str],
                   beam_pipeline_options: str | None) -> list[str]:
  """Beam flags from leftover arguments and `--beam_pipeline_options`.

  Leftovers may be `--k=v`, `--k v` or a boolean `--k`; the option string is
  `k=v,k2=v2` as in `tfds build`.
  """
  flags = []
  items = list(leftover)
  i = 0
  while i < len(items):
    item = items[i]
    if not item.startswith('--') or item == '--':
      raise UsageError(f'unexpected argument {item!r}')
    if ('=' not in item and i + 1 < len(items)
        and not items[i + 1].startswith('--')):
      flags.append(f'{item}={items[i + 1]}')
      i += 2
    else:
      flags.append(item)
      i += 1
  if beam_pipeline_options:
    for opt in beam_pipeline_options.split(','):
      if opt.strip():
        flags.append('--' + opt.strip().lstrip('-'))
  return flags


def check_beam_flags(flags: Sequence[str], *, command: str) -> None:
  """Rejects flags that are not Beam pipeline options (e.g. typos)."""
  from segment_anything_tfds.prepare import runners  # pylint: disable=g-import-not-at-top
  runners.require_beam()
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  known = set(pipeline_options.PipelineOptions([]).get_all_options())
  unknown = []
  for flag in flags:
    name = flag[2:].split('=', 1)[0].replace('-', '_')
    if name not in known and not name.startswith('no_'):
      unknown.append(flag.split('=', 1)[0])
  if unknown:
    raise UsageError(
        f'unknown option(s) {", ".join(unknown)}: neither {PROG} {command}'
        ' flags nor Beam pipeline options')
  from apache_beam.runners import runner as runner_lib  # pylint: disable=g-import-not-at-top
  for flag in flags:
    if flag.startswith('--runner='):
      name = flag.split('=', 1)[1]
      try:  # As the pipeline will, before any work.
        runner_lib.create_runner(name)
      except Exception as e:  # pylint: disable=broad-except
        # ValueError (no such name), ImportError, AttributeError (a dotted
        # path to nothing), and the errors of a runner that cannot start.
        raise UsageError(f'--runner {name}: {type(e).__name__}:'
                         f' {errors.first_line(e)}') from None


# Where Beam logs a failed pipeline's worker traceback; the CLI reports the
# error itself, on one line. The PortableRunner's job service logs it, and
# forwards it to the root logger as a job message: the root logger is listed.
_BEAM_ERROR_LOGGERS = ('apache_beam.runners.common',
                       'apache_beam.runners.worker.sdk_worker',
                       'apache_beam.runners.portability.local_job_service',
                       '')
_BEAM_RUNNERS_DIR = f'{os.sep}apache_beam{os.sep}runners{os.sep}'


class _DropErrors:
  """A logging filter that drops Beam's runners' ERROR records."""

  def filter(self, record) -> bool:
    return (record.levelno < logging.ERROR
            or _BEAM_RUNNERS_DIR not in record.pathname)


_DROP_ERRORS = _DropErrors()


def quiet_beam_errors(quiet: bool) -> None:
  """Hides (or shows again) Beam's worker tracebacks of a failed pipeline."""
  for name in _BEAM_ERROR_LOGGERS:
    logger = logging.getLogger(name or None)
    if quiet:
      logger.addFilter(_DROP_ERRORS)
    else:
      logger.removeFilter(_DROP_ERRORS)


# ------------------------------------------------------------ the dataset


def add_dataset_args(p: argparse.ArgumentParser, *, build: bool) -> None:
  """--config | --tars (| --dataset_dir), --images, --lenient, --data_dir;
  readers (`build=False`) also take --split."""
  which = p.add_argument_group('which dataset')
  group = which.add_mutually_exclusive_group(required=True)
  group.add_argument(
      '--config', choices=[c.name for c in config_lib.BUILDER_CONFIGS],
      help='a named config: all, first_1, first_10 or first_100 tars')
  group.add_argument(
      '--tars', type=tar_spec, metavar='SPEC',
      help='explicit tar numbers and ranges, e.g. "0-9,42" (config'
      ' tars_0-9_42)')
  if not build:
    group.add_argument(
        '--dataset_dir', metavar='DIR',
        help='a prepared dataset dir (.../segment_anything/<config>/2.0.0)'
        ' instead of --config/--tars and --data_dir')
  which.add_argument(
      '--images', metavar='FILE', default=None,
      help='only the images of this list, from the tars the config takes:'
      ' image ids or sa_<id>.jpg names, one per line, or a JSON list of'
      ' them (or {"images": [{"file_name": ...}]}, as MASA\'s). Its config'
      ' is named <config>_images_<hash of the list>')
  which.add_argument(
      '--lenient', action='store_true',
      help='the lenient variant: skips bad images and audits them (its'
      ' config is named <config>_lenient)')
  which.add_argument(
      '--data_dir', metavar='DIR', default=None,
      help='TFDS data dir (default: TFDS default, ~/tensorflow_datasets)')
  if not build:
    which.add_argument(
        '--split', default='train',
        help="a split or slice, e.g. 'train[:100]' (default train)")


def builder_config(
    args: argparse.Namespace) -> config_lib.SegmentAnythingConfig:
  """The config that --config/--tars/--lenient name.

  A lenient build gets its own config name (`<name>_lenient`), so it never
  shares a data dir with the strict build of the same tars; so does a build
  of an image list (`<name>_images_<hash>`).
  """
  if getattr(args, 'tars', None):
    cfg = config_lib.tars_config(args.tars)
  else:
    cfg = {c.name: c for c in config_lib.BUILDER_CONFIGS}[args.config]
  if args.lenient:
    cfg = config_lib.lenient_config(cfg)
  if getattr(args, 'images', None):
    cfg = config_lib.images_config(cfg, args.images)
  return cfg


def config_for_builder(cfg: config_lib.SegmentAnythingConfig):
  """Registered configs by name (TFDS rejects equal-named copies)."""
  registered = {c.name: c for c in config_lib.BUILDER_CONFIGS}
  return cfg.name if registered.get(cfg.name) is cfg else cfg


def make_builder(args: argparse.Namespace, **builder_kwargs: Any):
  """The builder named by --dataset_dir, or --config/--tars and --data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if getattr(args, 'dataset_dir', None):
    path = epath.Path(args.dataset_dir)
    if not (path / 'dataset_info.json').exists():
      raise errors.NotPreparedError(
          f'{path} is not a prepared dataset dir (it has no'
          ' dataset_info.json)')
    return tfds.builder_from_directory(path)
  cfg = builder_config(args)
  remote = args.data_dir is not None and not paths_lib.is_local(
      args.data_dir)
  try:
    builder = tfds.builder(DATASET, data_dir=args.data_dir,
                           config=config_for_builder(cfg), **builder_kwargs)
    if remote:
      builder.is_prepared()  # A bucket TFDS cannot list fails here.
    return builder
  except Exception as e:  # pylint: disable=broad-except
    if not remote:
      raise
    # A bucket TFDS cannot read (no network, no credentials): TFDS wraps
    # the filesystem's error in a RuntimeError naming every builder kwarg.
    root = e
    while root.__cause__ is not None:
      root = root.__cause__
    raise errors.SourceError(
        f'--data_dir {args.data_dir}: cannot be read:'
        f' {errors.backend_reason(root)}') from None


def prepared_builder(args: argparse.Namespace):
  """The builder the flags name, prepared (reading commands never build)."""
  from segment_anything_tfds.read import prepared as reading  # pylint: disable=g-import-not-at-top
  builder = make_builder(args)
  if not builder.is_prepared():
    raise reading.not_prepared(builder)
  return builder


def split_size(builder, split: str) -> int | None:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError):
    return None


def skip_image_decoding():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {'image': {'content': tfds.decode.SkipDecoding()}}


def is_array_record(builder) -> bool:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def as_dataset(builder, split: str):
  """`split` as a tf.data dataset, JPEG bytes undecoded, in order."""
  try:
    return builder.as_dataset(split=split, decoders=skip_image_decoding(),
                              shuffle_files=False)
  except (KeyError, AssertionError, ValueError) as e:
    raise errors.ConfigError(f'bad split {split!r}: {errors.first_line(e)}') from None


def iterate_examples(builder, split: str, *, show_progress: bool, desc: str):
  """Numpy examples of `split`, JPEG bytes undecoded, in the split's order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if is_array_record(builder):
    try:
      source = builder.as_data_source(split=split,
                                      decoders=skip_image_decoding())
    except (KeyError, AssertionError, ValueError) as e:
      raise errors.ConfigError(
          f'bad split {split!r}: {errors.first_line(e)}') from None
    examples = (source[i] for i in range(len(source)))
  else:
    examples = tfds.as_numpy(as_dataset(builder, split))
  total = split_size(builder, split)
  return progress(examples, enabled=show_progress, total=total, desc=desc,
                  unit='img')
