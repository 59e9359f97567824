"""`segment-anything-tfds stats`: statistics of a prepared dataset.

  segment-anything-tfds stats --config first_1 --out /tmp/sa1b_stats
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Sequence

from segment_anything_tfds.cli import common
from segment_anything_tfds.sources import local

EXAMPLE = (f'example: {common.PROG} stats --config first_1 --split'
           " 'train[:1000]' --out /tmp/sa1b_stats")


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  # Before any scanning: the figure needs matplotlib.
  common.require('matplotlib', command='stats', extra='viz')
  local.check_writable(args.out, 'statistics (--out)', folder=True,
                       bucket=False)
  from segment_anything_tfds.tools import export as export_lib  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.tools import stats as stats_lib  # pylint: disable=g-import-not-at-top
  builder = common.prepared_builder(args)
  acc = stats_lib.Accumulator()
  for ex in common.iterate_examples(builder, args.split,
                                    show_progress=args.progress,
                                    desc='Statistics'):
    acc.add(ex)
  out_dir = pathlib.Path(args.out)
  name = builder.builder_config.name if builder.builder_config else ''
  summary, data = acc.json_bytes(
      os.fspath(out_dir / 'stats.json'), dataset=builder.info.full_name, config=name,
      data_dir=str(builder.data_dir), split=args.split)
  export_lib.write_files(out_dir, {
      'stats.json': data,
      'stats.png': acc.png_bytes(
          title=f'{builder.info.full_name} {args.split}')},
                         what='the statistics (--out)')
  mpi = summary['masks_per_image']
  q = mpi['quantiles']
  lines = [
      f'split:            {args.split}',
      f'images:           {summary["images"]:,}',
      f'masks:            {summary["masks"]:,}',
  ]
  if summary['images']:
    lines += [
        f'masks per image:  mean {mpi["mean"]:.1f}, min {mpi["min"]}, p5'
        f' {q["0.05"]}, p25 {q["0.25"]}, median {q["0.5"]}, p75 {q["0.75"]},'
        f' p95 {q["0.95"]}, max {mpi["max"]}',
    ]
    for key, label in (('mask_area_fraction', 'mask area frac.'),
                       ('predicted_iou', 'predicted_iou'),
                       ('stability_score', 'stability_score')):
      s = summary[key]
      if s['count']:
        lines.append(
            f'{label + ":":<17} mean {s["mean"]:.4g}, min {s["min"]:.4g},'
            f' median {s["quantiles"]["0.5"]:.4g}, max {s["max"]:.4g}')
    sizes = summary['image_size']
    top = sizes['most_common'][0]
    lines.append(f'image sizes:      {sizes["distinct_sizes"]} distinct; most'
                 f' common {top["width"]}x{top["height"]} ({top["images"]}'
                 ' images)')
  lines += [f'wrote:            {out_dir / "stats.json"}',
            f'                  {out_dir / "stats.png"}']
  print('\n'.join(lines))
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `stats` subcommand's parser."""
  p = sub.add_parser(
      'stats', parents=parents, allow_abbrev=False,
      help='statistics of a prepared dataset', epilog=EXAMPLE,
      description='Masks per image (histogram, quantiles), mask area'
      ' fraction, predicted_iou and stability_score distributions (with'
      " SAM's 0.88 and 0.95 thresholds), image sizes (2-D histogram)."
      ' Writes OUT/stats.json and OUT/stats.png; needs matplotlib.')
  common.add_dataset_args(p, build=False)
  p.add_argument('--out', required=True, metavar='DIR',
                 help='output dir for stats.json and stats.png')
  p.set_defaults(func=run, allow_leftover=False)
  return p
