"""`segment-anything-tfds export`: a prepared split in other trainers' formats.

  segment-anything-tfds export --config all --split 'train[:100]' \\
      --format coco --out DIR

The writers are `segment_anything_tfds.tools.export`; this module picks the
examples and reports.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.cli import common
from segment_anything_tfds.sources import local

EXAMPLE = (f"example: {common.PROG} export --config all --split 'train[:100]'"
           ' --format coco --out /tmp/sa1b_coco')
FORMATS = ('semantic_sam_tsv', 'coco', 'webdataset')
_MIB = 1 << 20


def shard_size_mb(value: str) -> float:
  try:
    size = float(value)
  except ValueError:
    size = float('nan')
  if not size * _MIB >= 1:  # Also refuses nan.
    raise argparse.ArgumentTypeError(
        f'expected a positive number of MiB, got {value!r}')
  return size


def _report(manifest, out_dir: str) -> str:
  """The summary printed at the end."""
  lines = [
      f'format:   {manifest["format"]}',
      f'split:    {manifest["split"]}',
      f'images:   {manifest["images"]:,}',
      f'masks:    {manifest["masks"]:,}',
      f'size:     {common.human_bytes(manifest["bytes"])}',
      f'out:      {out_dir}',
  ]
  files = manifest['files']
  if manifest['format'] == 'coco':
    lines.append(f'wrote:    {files[0]} and {manifest["images"]:,} JPEGs in'
                 f' {manifest["images_dir"]}/')
  else:
    ext = 'tsv' if manifest['format'] == 'semantic_sam_tsv' else 'tar'
    shards = [f for f in files if f.endswith(f'.{ext}')]
    if len(shards) == 1:
      what = shards[0]
    else:  # Brace notation, as webdataset and most shells expand it.
      first, last = (s.rsplit('.', 1)[0].rsplit('-', 1) for s in
                     (shards[0], shards[-1]))
      what = f'{first[0]}-{{{first[1]}..{last[1]}}}.{ext}'
    index = ' (+ a .lineidx each)' if ext == 'tsv' else ''
    lines.append(f'wrote:    {len(shards)} shards {what}{index}')
  lines.append(f'manifest: {os.path.join(out_dir, "export.json")}')
  return '\n'.join(lines)


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds.tools import export as export_lib  # pylint: disable=g-import-not-at-top
  local.check_writable(args.out, 'the export (--out)', folder=True,
                       bucket=False)
  builder = common.prepared_builder(args)
  out_dir = os.path.abspath(args.out)
  info = {'dataset': builder.info.full_name, 'split': args.split,
          'description': 'SA-1B (Segment Anything), exported by'
                         ' segment_anything_tfds'}
  try:
    # Refuses an existing export before reading anything.
    export_lib.prepare_out_dir(out_dir, overwrite=args.overwrite)
    examples = common.iterate_examples(builder, args.split,
                                       show_progress=args.progress,
                                       desc=f'Exporting ({args.format})')
    manifest = export_lib.export(
        examples, args.format, out_dir,
        shard_size=int(args.shard_size_mb * _MIB), info=info)
  except OSError as e:
    if isinstance(e, errors.Error):
      raise
    if local.no_room(e):  # Full disk, quota, ulimit -f: said as for results.
      raise local.cannot_write(out_dir, 'the export (--out)', e,
                               folder=True) from None
    raise errors.SourceError(f'export to {out_dir} failed:'
                             f' {errors.first_line(e)}') from None
  print(_report(manifest, out_dir))
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `export` subcommand's parser."""
  p = sub.add_parser(
      'export', parents=parents, allow_abbrev=False,
      help='write a split as Semantic-SAM TSV, COCO JSON or webdataset tars',
      epilog=EXAMPLE,
      description='Write a prepared split (or a slice) in the format another'
      ' trainer reads. JPEG bytes and RLE strings are the dataset\'s, byte'
      ' for byte. Files appear under their final names only once complete;'
      ' OUT/export.json, written last, lists them.')
  common.add_dataset_args(p, build=False)
  p.add_argument(
      '--format', required=True, choices=FORMATS,
      help='semantic_sam_tsv: sa1b-NNNNNN.tsv + .lineidx; coco:'
      ' annotations.json + images/; webdataset: sa1b-NNNNNN.tar')
  p.add_argument('--out', required=True, metavar='DIR', help='output dir')
  p.add_argument('--shard_size_mb', type=shard_size_mb, default=1024,
                 metavar='MIB',
                 help='largest TSV or tar shard, in MiB (default 1024)')
  p.add_argument('--overwrite', action='store_true',
                 help='replace an export already in OUT')
  p.set_defaults(func=run, allow_leftover=False)
  return p
