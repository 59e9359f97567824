"""`segment-anything-tfds mirror`: fetch tars into a bucket on Beam workers.

  segment-anything-tfds mirror --links ~/segment_anything_links.txt \\
      --dest gs://BUCKET/sa1b --runner DataflowRunner --project P ...

The tars of the links file are downloaded on the workers, in parallel, and
copied whole and checked into --dest (`segment_anything_tfds.sources.mirror`), which
then serves as a build's --manual_dir. Without --runner, Beam's in-process
runner fetches them on this machine. Other --flag=value arguments go to
Beam's PipelineOptions.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from segment_anything_tfds import options as options_lib
from segment_anything_tfds.cli import common

EXAMPLE = (f'example: {common.PROG} mirror --links segment_anything_links.txt'
           ' --dest gs://BUCKET/sa1b --runner DataflowRunner --project P'
           ' --region R --temp_location gs://BUCKET/tmp --setup_file'
           ' ./setup.py')


def beam_options(args: argparse.Namespace, leftover: Sequence[str]):
  """PipelineOptions from the flags only (never from sys.argv)."""
  flags = common.beam_flag_list(leftover, args.beam_pipeline_options)
  if any(f.startswith('--runner') for f in flags):
    raise common.UsageError('give the runner as --runner NAME')
  if args.runner != common.LOCAL_RUNNER:
    flags.append(f'--runner={args.runner}')
  if args.num_workers:
    flags.append(f'--num_workers={args.num_workers}')
  common.check_beam_flags(flags, command='mirror')
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  return pipeline_options.PipelineOptions(flags)


def download_options(args: argparse.Namespace) -> options_lib.DownloadOptions:
  return options_lib.DownloadOptions(**common.download_fields(args))


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  from segment_anything_tfds.sources import mirror  # pylint: disable=g-import-not-at-top
  options = beam_options(args, leftover)
  tars = mirror.plan(args.links, tars=args.tars,
                     checksums=common.checksums_choice(args))
  common.quiet_beam_errors(not args.verbose)
  try:
    summary = mirror.mirror(tars, args.dest, beam_options=options,
                            options=download_options(args),
                            stage_dir=args.stage_dir)
  finally:
    common.quiet_beam_errors(False)
  print(f'{len(tars)} tars in {summary.dest}: {len(summary.fetched)} fetched'
        f' now, {len(summary.present)} already there')
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `mirror` subcommand's parser."""
  p = sub.add_parser(
      'mirror', parents=parents, allow_abbrev=False,
      help='fetch the tars into a bucket, on Beam workers', epilog=EXAMPLE,
      description='Download the tars of a links file into --dest (a bucket'
      ' or any dir) on Beam workers, in parallel: resumed, verified, copied'
      ' under their names only when whole; tars already there are skipped.'
      ' Use --dest as the build\'s --manual_dir. Any other --flag=value goes'
      ' to Beam\'s PipelineOptions.')
  p.add_argument('--links', required=True, metavar='FILE',
                 help='the links file, or the dir (manual_dir) holding'
                 ' segment_anything_links.txt')
  p.add_argument('--dest', required=True, metavar='DIR',
                 help='where the tars go, e.g. gs://BUCKET/sa1b')
  p.add_argument('--tars', type=common.tar_spec, default=None,
                 metavar='SPEC', help='only these tars, e.g. "0-99" (default:'
                 ' every tar of the links file)')
  common.add_checksums_args(p, default='none')
  p.add_argument('--stage_dir', metavar='DIR', default=None,
                 help='worker-local dir downloads are staged (and resumed)'
                 ' in; only this user\'s files in it are used (default: a'
                 ' private dir, mode 0700, in the worker\'s temp dir)')
  common.add_download_args(p, workers=False)
  p.add_argument('--runner', default=common.LOCAL_RUNNER, metavar='NAME',
                 help='a Beam runner, e.g. DataflowRunner (default "local":'
                 ' Beam\'s in-process runner, on this machine)')
  p.add_argument('--num_workers', type=common.positive_int, default=None,
                 metavar='N', help='Beam runners: --num_workers=N')
  p.add_argument('--beam_pipeline_options', default=None, metavar='K=V,...',
                 help='Beam options as in `tfds build`: "runner=...,'
                 'project=...,region=..."')
  p.set_defaults(func=run, allow_leftover=True)
  return p
