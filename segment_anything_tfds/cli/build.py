"""`segment-anything-tfds build`: prepare the dataset.

  segment-anything-tfds build --config first_10 --manual_dir ~/sa1b

Without --runner the build is local: the package's own writer, one process
per core (`--workers`), no Beam. A Beam runner name (e.g. DataflowRunner,
PortableRunner) builds with Beam; other --flag=value arguments then go to
Beam's PipelineOptions.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.sources import checksums as checksums_lib
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import paths as paths_lib
from segment_anything_tfds.cli import common
from segment_anything_tfds.sources import local

FILE_FORMATS = ('tfrecord', 'array_record')
EXAMPLE = f'example: {common.PROG} build --config first_10 --manual_dir ~/sa1b'


def _beam_flags(args: argparse.Namespace, leftover: Sequence[str]) -> list[str]:
  """Beam flags: leftovers, --beam_pipeline_options, runner and workers."""
  flags = common.beam_flag_list(leftover, args.beam_pipeline_options)
  named = [f for f in flags if re.match(r'^--runner(=|$)', f)]
  if args.runner != common.LOCAL_RUNNER:
    if named:
      raise common.UsageError('give the runner once: --runner NAME')
    flags.append(f'--runner={args.runner}')
    named.append(flags[-1])
  if any(f.split('=', 1)[-1] in ('DirectRunner', 'PrismRunner')
         for f in named):
    print(f'{common.PROG}: note: Beam\'s DirectRunner/PrismRunner may try to'
          ' download Prism from GitHub; --runner local (the default) runs'
          ' offline', file=sys.stderr)
  local_only = [f for f in flags
                if not re.match(r'^--direct_(num_workers|running_mode)(=|$)',
                                f)]
  if local_only and not named:
    raise common.UsageError(
        f'Beam options ({" ".join(local_only)}) need a Beam runner: add --runner'
        ' NAME (e.g. DataflowRunner); local builds take --workers N')
  if args.num_workers:
    if not named:
      raise common.UsageError(
          '--num_workers is for Beam runners (Dataflow workers); a local'
          ' build takes --workers N')
    flags.append(f'--num_workers={args.num_workers}')
  return flags


def download_config(args: argparse.Namespace, leftover: Sequence[str]):
  """The DownloadConfig of a `build`: manual_dir, modes, Beam options.

  Beam options are made only when a runner is named (never from sys.argv);
  otherwise the build is local and Beam is not imported.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  flags = _beam_flags(args, leftover)
  beam_options = None
  if flags:
    common.check_beam_flags(flags, command='build')
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    beam_options = pipeline_options.PipelineOptions(flags)
  kwargs = {}
  if args.max_shard_size_mb is not None:
    kwargs['max_shard_size'] = args.max_shard_size_mb << 20
    kwargs['min_shard_size'] = min(64 << 20, kwargs['max_shard_size'])
  return tfds.download.DownloadConfig(
      manual_dir=args.manual_dir, beam_options=beam_options,
      download_mode=(tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
                     if args.overwrite else
                     tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS),
      max_examples_per_split=args.max_examples_per_split,
      num_shards=args.num_shards, **kwargs)


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  # Where the results go, before any work (a summary that cannot be written
  # must not be found at the end of a long build).
  for path, what in ((args.data_dir, 'the dataset (--data_dir)'),
                     (args.download_dir, 'downloads (--download_dir)')):
    if path:
      local.check_writable(path, what, folder=True)
  if args.summary_json:
    local.check_writable(args.summary_json, 'the summary (--summary_json)')
  dl_config = download_config(args, leftover)
  if args.manual_dir and paths_lib.is_local(args.manual_dir):
    if not pathlib.Path(args.manual_dir).is_dir():
      raise errors.SourceError(
          f'--manual_dir {args.manual_dir} is not a directory')
  make = lambda: common.make_builder(
      args, download_options=_download_options(args), workers=args.workers,
      progress=args.progress, allow_partial=args.allow_partial)
  builder = make()
  if args.download_only:
    return _download_only(builder, dl_config, args.download_dir)
  if args.overwrite and builder.is_prepared():
    # TFDS would delete it too, but its builder, having read the old info,
    # could not then change the file format.
    builder.data_path.rmtree()
    builder = make()
  was_prepared = builder.is_prepared()
  engine = ('local' if dl_config.beam_options is None else
            f'Beam {args.runner if args.runner != common.LOCAL_RUNNER else ""}'.strip())
  print(f'Preparing {builder.info.full_name} ({builder.builder_config.name})'
        f' into {builder.data_dir}: {engine}, {args.file_format}',
        file=sys.stderr)
  common.quiet_beam_errors(not args.verbose)
  try:
    builder.download_and_prepare(
        download_dir=args.download_dir, download_config=dl_config,
        file_format=None if was_prepared else args.file_format)
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
    common.quiet_beam_errors(False)
  # Prepared before, or meanwhile by a build this one waited for.
  _print_build_summary(builder, args, common.seconds_since_start(),
                       builder.reused)
  return 0


def _download_only(builder, dl_config, download_dir) -> int:
  """`--download_only`: fetch (and verify) the config's tars, no build."""
  found = builder.fetch_shards(dl_config, download_dir=download_dir)
  print(f'{len(found)} tars ready for {builder.builder_config.name}:')
  for shard in found:
    print(errors.printable(f'  {shard.name}  {shard.where}'))
  return 0


def _print_build_summary(builder, args, elapsed: float, was_prepared: bool):
  """The summary, from the dataset's metadata: nothing is read back."""
  info = builder.info
  images = sum(s.num_examples for s in info.splits.values())
  size = int(info.dataset_size) if info.dataset_size is not None else None
  metadata = dict(info.metadata or {})
  audit = metadata.get('audit', {})
  built = metadata.get('build', {})
  listed = metadata.get('images', {})
  summary = {
      'dataset': info.full_name,
      'config': builder.builder_config.name if builder.builder_config else None,
      'data_dir': str(builder.data_dir),
      'file_format': str(info.file_format.value if info.file_format else ''),
      'images': images,
      'masks': built.get('masks'),
      'size_bytes': size,
      'tars': audit.get('tars'),
      'skipped_images': audit.get('skipped_images', 0),
      'skipped_tars': [t['tar'] for t in audit.get('skipped_tars', [])],
      'seconds': round(elapsed, 1),
      'reused': was_prepared,
  }
  if listed:
    summary['images_listed'] = listed['listed']
    summary['images_missing'] = listed['missing']
  masks = summary['masks']
  lines = [
      '' if not was_prepared else 'Already prepared; reused.',
      f'dataset:   {summary["dataset"]}',
      f'images:    {images:,}',
      f'masks:     {masks:,}' if masks is not None else '',
      f'size:      {common.human_bytes(size)}',
      f'format:    {summary["file_format"]}',
      f'data dir:  {summary["data_dir"]}',
  ]
  if listed:
    lines.append(f'list:      {listed["listed"]:,} images listed'
                 + (f', {listed["missing"]:,} in no tar (first:'
                    f' {", ".join(map(str, listed["missing_ids"][:5]))})'
                    if listed['missing'] else ''))
  if audit:
    lines.append(f'tars:      {len(audit.get("tars", []))}')
    if audit.get('skipped_images') or summary['skipped_tars']:
      lines.append(f'skipped:   {audit["skipped_images"]} images'
                   f' {audit.get("skipped_by_reason")}'
                   + (f'; whole tars: {", ".join(summary["skipped_tars"])}'
                      if summary['skipped_tars'] else ''))
  lines.append(f'time:      {elapsed:.1f} s')
  if was_prepared and summary['file_format'] != args.file_format:
    lines.append(f'note:      already prepared as {summary["file_format"]};'
                 f' --file_format {args.file_format} was not applied (use'
                 ' another --data_dir, or --overwrite)')
  print('\n'.join(l for l in lines if l))
  if args.summary_json:
    local.write_whole(args.summary_json,
                      (json.dumps(summary, indent=2) + '\n').encode('utf-8'),
                      'the summary (--summary_json)')


def _download_options(args: argparse.Namespace) -> dict:
  """The `download_options` the flags ask for (a dict of fields); flags not
  given keep the defaults."""
  out = common.download_fields(args)
  if args.disk_mode is not None:
    out['disk_mode'] = args.disk_mode
  if (checksums := common.checksums_choice(args)) is not None:
    out['checksums'] = checksums
  if getattr(args, 'progress', True) is False:
    out['progress'] = False
  return out


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `build` subcommand's parser."""
  p = sub.add_parser(
      'build', parents=parents, allow_abbrev=False,
      help='prepare the dataset', epilog=EXAMPLE,
      description='Prepare segment_anything. Without --runner the build is'
      ' local: this package\'s writer, one process per core (--workers), no'
      ' Beam. With --runner NAME (e.g. DataflowRunner) it builds with Beam,'
      ' and any other --flag=value goes to Beam\'s PipelineOptions, e.g.'
      ' --project, --region, --temp_location, --machine_type, --setup_file.')
  common.add_dataset_args(p, build=True)
  p.add_argument('--manual_dir', metavar='DIR', default=None,
                 help='where the tars, sa_NNNNNN/ folders and'
                 f' {links_lib.LINKS_FILE_NAME} are (local or gs://), or a'
                 ' Hugging Face dataset folder,'
                 ' hf://datasets/OWNER/REPO[@REV][/PATH]')
  p.add_argument('--download_dir', metavar='DIR', default=None,
                 help='where tars fetched from links are kept (default'
                 ' DATA_DIR/downloads)')
  p.add_argument('--overwrite', action='store_true',
                 help='rebuild even if the dataset is already prepared'
                 ' (downloaded tars are reused)')
  p.add_argument('--allow_partial', action='store_true',
                 help='build a first_N config from fewer than N tars, or'
                 ' the images of an --images list found in the tars when'
                 ' some are in none (what is missing is recorded, and every'
                 ' load warns)')
  p.add_argument('--download_only', action='store_true',
                 help='fetch and verify the config\'s tars, then stop')
  p.add_argument('--workers', type=common.non_negative_int, default=0, metavar='N',
                 help='local build: worker processes (default 0: one per'
                 ' core)')
  p.add_argument('--runner', default=common.LOCAL_RUNNER, metavar='NAME',
                 help='"local" (default: no Beam) or a Beam runner name,'
                 ' e.g. DataflowRunner')
  p.add_argument('--num_workers', type=common.positive_int, default=None,
                 metavar='N', help='Beam runners: --num_workers=N (e.g.'
                 ' Dataflow workers)')
  p.add_argument('--beam_pipeline_options', default=None, metavar='K=V,...',
                 help='Beam options as in `tfds build`: "runner=...,'
                 'project=...,region=..."')
  p.add_argument('--file_format', choices=FILE_FORMATS, default='tfrecord',
                 help='tfrecord (default) or array_record (random access'
                 ' with tfds.data_source)')
  p.add_argument('--num_shards', type=common.positive_int, default=None,
                 metavar='N', help='output shards (default: as TFDS chooses'
                 ' from the size)')
  p.add_argument('--max_shard_size_mb', type=common.positive_int,
                 default=None, metavar='MB',
                 help='largest output shard (default 1024)')
  p.add_argument('--max_examples_per_split', type=common.non_negative_int,
                 default=None, metavar='N',
                 help='write at most N images (the first, by tar): for quick'
                 ' trials. Local builds only; Beam builds refuse it')
  p.add_argument('--disk_mode', choices=('keep', 'stream', 'delete'),
                 default=None, help='tars fetched from links: keep them in'
                 ' the download cache (default), stream them with HTTP Range'
                 ' requests, or delete them after the build succeeds')
  common.add_checksums_args(
      p, default=f'{checksums_lib.CHECKSUMS_FILE_NAME} in --manual_dir if'
      ' there, else none')
  common.add_download_args(p)
  p.add_argument('--summary_json', metavar='FILE', default=None,
                 help='also write the summary as JSON')
  p.set_defaults(func=run, allow_leftover=True)
  return p
