"""`segment-anything-tfds build`: prepare the dataset with Beam.

  segment-anything-tfds build --config first_10 --manual_dir ~/sa1b
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time
from typing import Sequence

from segment_anything_tfds import errors
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import runners
from segment_anything_tfds.cli import common

LOCAL = 'local'
FILE_FORMATS = ('tfrecord', 'array_record')
# `build` counts masks by reading the dataset back when it is at most this
# big (first_1 is ~11 GB); `--count_masks yes|no` overrides.
COUNT_MASKS_MAX_BYTES = 16 << 30
EXAMPLE = f'example: {common.PROG} build --config first_10 --manual_dir ~/sa1b'


def count_masks(builder, split: str, *, show_progress: bool) -> int:
  total = 0
  for ex in common.iterate_examples(builder, split, show_progress=show_progress,
                                    desc='Counting masks'):
    total += len(ex['annotations']['id'])
  return total


def _beam_flags(args: argparse.Namespace, leftover: Sequence[str]) -> list[str]:
  """Beam flags: leftovers, --beam_pipeline_options, runner and workers."""
  flags = []
  items = list(leftover)
  i = 0
  while i < len(items):  # `--k=v`, `--k v` and boolean `--k`.
    item = items[i]
    if not item.startswith('--') or item == '--':
      raise common.UsageError(f'unexpected argument {item!r}')
    if ('=' not in item and i + 1 < len(items)
        and not items[i + 1].startswith('--')):
      flags.append(f'{item}={items[i + 1]}')
      i += 2
    else:
      flags.append(item)
      i += 1
  if args.beam_pipeline_options:
    for opt in args.beam_pipeline_options.split(','):
      if opt.strip():
        flags.append('--' + opt.strip().lstrip('-'))
  named = [f for f in flags if re.match(r'^--runner(=|$)', f)]
  if args.runner != LOCAL:
    if named:
      raise common.UsageError('give the runner once: --runner NAME')
    flags.append(f'--runner={args.runner}')
  if any(f.split('=', 1)[-1] in ('DirectRunner', 'PrismRunner')
         for f in flags if f.startswith('--runner')):
    print(f'{common.PROG}: note: Beam\'s DirectRunner/PrismRunner may try to'
          ' download Prism from GitHub; --runner local (the default) runs'
          ' offline', file=sys.stderr)
  if args.num_workers:
    if args.runner == LOCAL and not named:
      flags += [f'--direct_num_workers={args.num_workers}',
                '--direct_running_mode=multi_processing']
    else:
      flags.append(f'--num_workers={args.num_workers}')
  return flags


def _check_beam_flags(flags: Sequence[str]) -> None:
  """Rejects flags that are not Beam pipeline options (e.g. typos)."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  known = set(pipeline_options.PipelineOptions([]).get_all_options())
  unknown = []
  for flag in flags:
    name = flag[2:].split('=', 1)[0].replace('-', '_')
    if name not in known and not name.startswith('no_'):
      unknown.append(flag.split('=', 1)[0])
  if unknown:
    raise common.UsageError(
        f'unknown option(s) {", ".join(unknown)}: neither {common.PROG} build flags'
        ' nor Beam pipeline options')


def download_config(args: argparse.Namespace, leftover: Sequence[str]):
  """The DownloadConfig of a `build`: manual_dir, Beam options, runner.

  Without a named runner, the local in-process FnApiRunner is used (never
  Beam's DirectRunner, which tries to download Prism).
  """
  flags = _beam_flags(args, leftover)
  if flags:
    _check_beam_flags(flags)
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  # Always explicit: PipelineOptions() without flags would parse sys.argv.
  beam_options = pipeline_options.PipelineOptions(flags)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cfg = tfds.download.DownloadConfig(
      manual_dir=args.manual_dir, beam_options=beam_options)
  return runners.with_local_runner(cfg)


# Beam loggers that print a worker's traceback when a build fails; the CLI
# reports the error itself, on one line.
_BEAM_ERROR_LOGGERS = ('apache_beam.runners.common',
                       'apache_beam.runners.worker.sdk_worker')


class _DropErrors:
  """A logging filter that drops ERROR records (and their tracebacks)."""

  def filter(self, record) -> bool:
    import logging  # pylint: disable=g-import-not-at-top
    return record.levelno < logging.ERROR


_DROP_ERRORS = _DropErrors()


def _quiet_beam_worker_log(quiet: bool) -> None:
  """Hides (or shows again) Beam's worker tracebacks of a failed build."""
  import logging  # pylint: disable=g-import-not-at-top
  for name in _BEAM_ERROR_LOGGERS:
    logger = logging.getLogger(name)
    if quiet:
      logger.addFilter(_DROP_ERRORS)
    else:
      logger.removeFilter(_DROP_ERRORS)


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  dl_config = download_config(args, leftover)
  if args.manual_dir and '://' not in args.manual_dir:
    if not os.path.isdir(args.manual_dir):
      raise errors.SourceError(
          f'--manual_dir {args.manual_dir} is not a directory')
  builder = common.make_builder(args, download_options=_download_options(args))
  was_prepared = builder.is_prepared()
  runner = dl_config.beam_runner
  if runner is not None:
    runner_name = type(runner).__name__
  else:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    runner_name = dl_config.beam_options.view_as(
        pipeline_options.StandardOptions).runner
  print(f'Preparing {builder.info.full_name} ({builder.builder_config.name})'
        f' into {builder.data_dir} with {runner_name}'
        + (f', {args.num_workers} workers' if args.num_workers else '')
        + f', {args.file_format}', file=sys.stderr)
  start = time.monotonic()
  _quiet_beam_worker_log(not args.verbose)
  try:
    builder.download_and_prepare(download_config=dl_config,
                                 file_format=args.file_format)
  except AssertionError as e:  # TFDS's missing/empty manual dir check.
    m = re.search(r'Manual directory (\S+) does not exist or is empty',
                  str(e))
    if m:
      raise errors.SourceError(
          f'the manual dir {m.group(1)} does not exist or is empty: give'
          f' --manual_dir DIR with the tars and/or {links_lib.LINKS_FILE_NAME}'
      ) from None
    raise
  finally:
    _quiet_beam_worker_log(False)
  elapsed = time.monotonic() - start
  _print_build_summary(builder, args, elapsed, was_prepared)
  return 0


def _print_build_summary(builder, args, elapsed: float, was_prepared: bool):
  info = builder.info
  images = sum(s.num_examples for s in info.splits.values())
  size = int(info.dataset_size) if info.dataset_size is not None else None
  if args.count_masks == 'yes' or (
      args.count_masks == 'auto' and size is not None
      and size <= COUNT_MASKS_MAX_BYTES):
    masks = sum(count_masks(builder, s, show_progress=args.progress)
                for s in info.splits)
    masks_text = f'{masks:,}'
  else:
    masks = None
    masks_text = f'not counted (see `{common.PROG} stats`)'
  audit = (info.metadata or {}).get('audit', {}) if info.metadata else {}
  summary = {
      'dataset': info.full_name,
      'config': builder.builder_config.name if builder.builder_config else None,
      'data_dir': str(builder.data_dir),
      'file_format': str(info.file_format.value if info.file_format else ''),
      'images': images,
      'masks': masks,
      'size_bytes': size,
      'tars': audit.get('tars'),
      'skipped_images': audit.get('skipped_images', 0),
      'seconds': round(elapsed, 1),
      'reused': was_prepared,
  }
  lines = [
      '' if not was_prepared else 'Already prepared; reused.',
      f'dataset:   {summary["dataset"]}',
      f'images:    {images:,}',
      f'masks:     {masks_text}',
      f'size:      {common.human_bytes(size)}',
      f'format:    {summary["file_format"]}',
      f'data dir:  {summary["data_dir"]}',
  ]
  if audit:
    lines.append(f'tars:      {len(audit.get("tars", []))}')
    if audit.get('skipped_images'):
      lines.append(f'skipped:   {audit["skipped_images"]} images'
                   f' {audit.get("skipped_by_reason")}')
  lines.append(f'time:      {elapsed:.1f} s')
  if was_prepared and summary['file_format'] != args.file_format:
    lines.append(f'note:      already prepared as {summary["file_format"]};'
                 f' --file_format {args.file_format} was not applied (use'
                 ' another --data_dir)')
  print('\n'.join(l for l in lines if l))
  if args.summary_json:
    pathlib.Path(args.summary_json).write_text(
        json.dumps(summary, indent=2) + '\n', encoding='utf-8')




def _download_options(args: argparse.Namespace) -> dict:
  return {k: getattr(args, a) for k, a in (
      ('disk_mode', 'disk_mode'), ('checksums_file', 'checksums_file'),
      ('workers', 'download_workers')) if getattr(args, a, None) is not None}


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `build` subcommand's parser."""
  p = sub.add_parser(
      'build', parents=parents, allow_abbrev=False,
      help='prepare the dataset (Beam)', epilog=EXAMPLE,
      description='Prepare segment_anything with Beam. Without --runner the'
      ' build runs locally with Beam\'s offline in-process FnApiRunner (never'
      ' the DirectRunner/Prism). Any other --flag=value is passed to Beam\'s'
      ' PipelineOptions, e.g. --project, --region, --temp_location,'
      ' --machine_type, --setup_file for Dataflow.')
  common.add_dataset_args(p, build=True)
  p.add_argument('--manual_dir', metavar='DIR', default=None,
                 help='where the tars, sa_NNNNNN/ folders and'
                 f' {links_lib.LINKS_FILE_NAME} are (local or gs://)')
  p.add_argument('--runner', default=LOCAL, metavar='NAME',
                 help='"local" (default: in-process FnApiRunner) or a Beam'
                 ' runner name, e.g. DataflowRunner')
  p.add_argument('--num_workers', type=common.positive_int, default=None,
                 metavar='N', help='local: N worker processes'
                 ' (direct_num_workers=N, direct_running_mode='
                 'multi_processing); other runners: --num_workers=N')
  p.add_argument('--beam_pipeline_options', default=None, metavar='K=V,...',
                 help='Beam options as in `tfds build`: "runner=...,'
                 'project=...,region=..."')
  p.add_argument('--disk_mode', choices=('keep', 'stream', 'delete'),
                 default=None, help='tars fetched from links: keep them in'
                 ' the download cache (default), stream them with HTTP Range'
                 ' requests, or delete them after the build succeeds')
  p.add_argument('--checksums_file', metavar='FILE', default=None,
                 help='"<md5 or sha256>  sa_NNNNNN.tar" lines to verify tars'
                 ' against (default: segment_anything_checksums.txt in'
                 ' --manual_dir, if there)')
  p.add_argument('--download_workers', type=common.positive_int,
                 default=None, metavar='N',
                 help='tars downloaded at once (default 4)')
  p.add_argument('--file_format', choices=FILE_FORMATS, default='tfrecord',
                 help='tfrecord (default) or array_record (random access'
                 ' with tfds.data_source)')
  p.add_argument('--count_masks', choices=('auto', 'yes', 'no'),
                 default='auto', help='count masks for the summary by reading'
                 ' the dataset back (auto: when it is at most'
                 f' {COUNT_MASKS_MAX_BYTES >> 30} GiB)')
  p.add_argument('--verbose', action='store_true',
                 help="keep Beam's worker log, with tracebacks, on failure")
  p.add_argument('--summary_json', metavar='FILE', default=None,
                 help='also write the summary as JSON')
  p.set_defaults(func=run, allow_leftover=True)
  return p
