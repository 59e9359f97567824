"""`segment-anything-tfds show`: draw examples with their masks.

  segment-anything-tfds show --config first_1 --index 0,3 --out /tmp/sa1b_show
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.cli import common

EXAMPLE = (f'example: {common.PROG} show --config first_1 --index 0,3 --boxes'
           ' --out /tmp/sa1b_show')


def _select_examples(builder, args) -> list[tuple[int, dict[str, Any]]]:
  """(index in split, numpy example) for --index or --image_id."""
  total = common.split_size(builder, args.split)
  if args.index is not None:
    if total is not None:
      bad = [i for i in args.index if i >= total]
      if bad:
        raise errors.ConfigError(f'--index {",".join(map(str, bad))} out of range: split'
                       f' {args.split!r} has {total} examples')
    if common.is_array_record(builder):
      source = builder.as_data_source(split=args.split,
                                      decoders=common.skip_image_decoding())
      return [(i, source[i]) for i in args.index]
    wanted = set(args.index)
    found = {}
    for i, ex in enumerate(common.iterate_examples(
        builder, args.split, show_progress=args.progress, desc='Finding')):
      if i in wanted:
        found[i] = ex
        if len(found) == len(wanted):
          break
    return [(i, found[i]) for i in args.index]
  wanted_ids = set(args.image_id)
  found = {}
  for i, ex in enumerate(common.iterate_examples(
      builder, args.split, show_progress=args.progress, desc='Finding')):
    image_id = int(ex['image']['image_id'])
    if image_id in wanted_ids:
      found[image_id] = (i, ex)
      if len(found) == len(wanted_ids):
        break
  missing = [i for i in args.image_id if i not in found]
  if missing:
    raise errors.ConfigError(f'image id(s) {", ".join(map(str, missing))} not in split'
                   f' {args.split!r}')
  return [found[i] for i in args.image_id]


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds import viz  # pylint: disable=g-import-not-at-top
  builder = common.prepared_builder(args)
  chosen = _select_examples(builder, args)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  for index, ex in common.progress(chosen, enabled=args.progress and len(chosen) > 1,
                             desc='Drawing', unit='img'):
    image_id = int(ex['image']['image_id'])
    path = out_dir / f'sa_{image_id}.png'
    width, height = viz.save(ex, path, alpha=args.alpha, boxes=args.boxes,
                             points=args.points)
    print(f'wrote {path} (index {index}, image id {image_id}, {width}x{height},'
          f' {len(ex["annotations"]["id"])} masks)')
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `show` subcommand's parser."""
  p = sub.add_parser(
      'show', parents=parents, allow_abbrev=False,
      help='draw examples with their masks', epilog=EXAMPLE,
      description='Render examples with every mask overlaid in its own'
      ' colour, to OUT/sa_<image_id>.png at the image\'s own size.')
  common.add_dataset_args(p, build=False)
  p.add_argument('--split', default='train', help='split (default train)')
  pick = p.add_mutually_exclusive_group(required=True)
  pick.add_argument('--index', type=common.int_list, metavar='I,J',
                    help='positions in the split, e.g. 0,3')
  pick.add_argument('--image_id', type=common.int_list, metavar='ID,ID',
                    help='SA-1B image ids, e.g. 12 (scans the split)')
  p.add_argument('--boxes', action='store_true', help="draw each mask's box")
  p.add_argument('--points', action='store_true',
                 help="draw each mask's prompt point")
  p.add_argument('--alpha', type=float, default=0.5,
                 help='mask opacity, 0-1 (default 0.5)')
  p.add_argument('--out', required=True, metavar='DIR', help='output dir')
  p.set_defaults(func=run, allow_leftover=False)
  return p
