"""`segment-anything-tfds index`: which tar holds which image.

  segment-anything-tfds index --manual_dir ~/sa1b --out index.parquet
  segment-anything-tfds index --manual_dir ~/sa1b --images list.json
  segment-anything-tfds index --from index.parquet --images list.json

Writes image id -> tar, member names, offsets and sizes for the tars at
hand (`prepare.image_index`), reading only their headers (a remote tar is
read front to back); with --images, prints which tars hold the listed
images, and which images none holds, from the tars or from an index file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from typing import Sequence

import numpy as np

from segment_anything_tfds import config as config_lib
from segment_anything_tfds.cli import common

EXAMPLE = (f'example: {common.PROG} index --manual_dir ~/sa1b --out'
           ' index.parquet --images sa1b_500k.json')
_LOG = logging.getLogger(__name__)
# Missing ids printed (all are in --json).
_SHOWN = 10
# Rows of an index file taken at a time.
_BATCH = 1 << 16


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds.prepare import image_index  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import image_list  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
  if not args.out and not args.images:
    raise common.UsageError('give --out FILE (write the index), --images'
                            ' FILE (which tars hold a list), or both')
  if args.from_file and (args.out or args.tars):
    raise common.UsageError('--from reads an index: --out and --tars go with'
                            ' --manual_dir')
  if args.json and not args.images:
    raise common.UsageError('--json writes the report of --images')
  # A bad name or path fails before any work.
  if args.out:
    image_index.index_format(args.out)
    local.check_writable(args.out, 'the index')
  if args.json:
    local.check_writable(args.json, 'the report')
  rows = image_index.read_pairs(args.from_file) if args.from_file else None
  try:
    images = image_list.make(args.images) if args.images else None
    holders = image_index.Holders(images) if images is not None else None
    if rows is not None:
      while batch := list(itertools.islice(rows, _BATCH)):
        ids, tars = zip(*batch)
        holders.add(ids, np.array(tars))
    else:
      _index(args, holders)
  finally:
    if rows is not None:
      rows.close()
  if holders is not None:
    _report(holders.report(), args)
  return 0


def _sources(args: argparse.Namespace):
  from segment_anything_tfds.sources import manual_dir as shards_lib  # pylint: disable=g-import-not-at-top
  found = shards_lib.find_shards(args.manual_dir)
  tars = config_lib.parse_tar_spec(args.tars) if args.tars else None
  return shards_lib.select(found.shards, num_tars=None, tars=tars,
                           refused=found.refused)


def _index(args: argparse.Namespace, holders) -> None:
  """Indexes the tars at hand: writes the rows, notes the listed images."""
  from segment_anything_tfds.prepare import image_index  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import tars as tars_lib  # pylint: disable=g-import-not-at-top
  sources = _sources(args)
  writer = image_index.Writer(args.out) if args.out else None
  problems = 0
  try:
    for source in common.progress(sources, enabled=args.progress,
                                  desc='Indexing tars', unit='tar'):
      index = tars_lib.index(source)
      problems += _warn(index)
      if writer is not None:
        writer.write(image_index.rows(source, index))
      if holders is not None:
        holders.add((p.image_id for p in index.pairs), source.tar_index)
    if writer is not None:
      writer.close()  # Leaves no part file if it fails.
  except BaseException:
    if writer is not None:
      writer.abort()
    raise
  if writer is not None:
    print(f'wrote {args.out}: {writer.rows:,} images in {len(sources)} tars'
          + (f' ({problems:,} left out: see the warnings)' if problems
             else ''), file=sys.stderr)


def _warn(index) -> int:
  """One warning per tar with images left out; returns how many."""
  if index.mismatch is not None:  # Only for sources given a checksum.
    _LOG.warning('%s; none of its images indexed', index.mismatch.message)
  if index.damage is not None:
    _LOG.warning('%s; indexed up to there', index.damage.message)
  if index.problems:
    reasons = sorted({e.reason for e in index.problems})
    _LOG.warning('%s: %d images left out (%s), e.g. %s', index.tar,
                 len(index.problems), ', '.join(reasons),
                 index.problems[0].message)
  return len(index.problems)


def _report(report: dict, args: argparse.Namespace) -> None:
  """Which tars hold the listed images, and which are in none."""
  for tar, count in report['tars'].items():
    print(f'{tar}\t{count}')
  found = report['listed'] - len(report['missing'])
  line = (f'{found:,} of the {report["listed"]:,} listed images are in'
          f' {len(report["tars"])} tars')
  if report['tars']:
    line += f' (--tars {report["tar_spec"]})'
  missing = report['missing']
  if missing:
    shown = ', '.join(map(str, missing[:_SHOWN]))
    line += (f'; {len(missing):,} {"is" if len(missing) == 1 else "are"} in'
             f' none: {shown}'
             + (', ...' if len(missing) > _SHOWN else ''))
  print(line)
  if args.json:
    from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
    local.write_whole(args.json, (json.dumps(report, indent=1) + '\n'
                                  ).encode('utf-8'), 'the report')


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `index` subcommand's parser."""
  p = sub.add_parser(
      'index', parents=parents, allow_abbrev=False,
      help='which tar holds which image: write an index, find a list\'s'
      ' tars', epilog=EXAMPLE,
      description='Index the tars at hand (their headers only): write image'
      ' id -> tar, member names, offsets and sizes (--out), and/or print'
      ' which tars hold the images of a list (--images), from the tars or'
      ' from an index file (--from).')
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument('--manual_dir', metavar='DIR',
                     help='the tars, sa_NNNNNN/ folders and links file to'
                     ' index (local or gs://), as for build')
  where.add_argument('--from', dest='from_file', metavar='FILE',
                     help='an index file (.jsonl or .parquet) written by'
                     ' index --out, instead of the tars')
  p.add_argument('--tars', type=common.tar_spec, metavar='SPEC',
                 help='only these tars of --manual_dir, e.g. "0-9,42"')
  p.add_argument('--out', metavar='FILE',
                 help='write the index: FILE.jsonl, or FILE.parquet (needs'
                 ' pyarrow)')
  p.add_argument('--images', metavar='FILE',
                 help='an image list (as build --images): print how many'
                 ' listed images each tar holds and which are in none')
  p.add_argument('--json', metavar='FILE',
                 help='with --images: also write that report as JSON, every'
                 ' missing id included')
  p.set_defaults(func=run, allow_leftover=False)
  return p
