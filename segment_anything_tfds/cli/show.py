"""`segment-anything-tfds show`: draw examples with their masks.

  segment-anything-tfds show --config first_1 --index 0,3 --out /tmp/sa1b_show

Three pictures (`segment_anything_tfds.tools.viz` draws them):

* the image with its masks (optionally their boxes and points);
* `--paste_from I`: the copy-paste op's output, with the objects of the
  example at position I pasted into each chosen image;
* `--predictions FILE`: predictions against the ground truth, a tile per
  mask with its IoU.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.tools import export
from segment_anything_tfds.tools import viz
from segment_anything_tfds.cli import common
from segment_anything_tfds.sources import local
from segment_anything_tfds.cli import evaluate

EXAMPLE = (f'example: {common.PROG} show --config first_1 --index 0,3'
           ' --max_masks 50 --min_predicted_iou 0.88 --out /tmp/sa1b_show')
DEFAULT_MIN_SIZE = 512
DEFAULT_TILES = 12


def _by_index(builder, args, indices: Sequence[int]) -> dict[int, Any]:
  """{index in split: numpy example} of `indices`."""
  total = common.split_size(builder, args.split)
  if total is not None:
    bad = sorted({i for i in indices if i >= total})
    if bad:
      raise errors.ConfigError(
          f'index {",".join(map(str, bad))} out of range: split'
          f' {args.split!r} has {total} examples')
  if common.is_array_record(builder):
    source = builder.as_data_source(split=args.split,
                                    decoders=common.skip_image_decoding())
    return {i: source[i] for i in indices}
  wanted = set(indices)
  found = {}
  for i, ex in enumerate(common.iterate_examples(
      builder, args.split, show_progress=args.progress, desc='Finding')):
    if i in wanted:
      found[i] = ex
      if len(found) == len(wanted):
        break
  return found


def _by_image_id(builder, args) -> list[tuple[int, dict[str, Any]]]:
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
    raise errors.ConfigError(
        f'image id(s) {", ".join(map(str, missing))} not in split'
        f' {args.split!r}')
  return [found[i] for i in args.image_id]


def _select_examples(builder, args):
  """([(index in split, example)] to draw, the paste source or None)."""
  extra = [] if args.paste_from is None else [args.paste_from]
  if args.index is not None:
    found = _by_index(builder, args, [*args.index, *extra])
    chosen = [(i, found[i]) for i in args.index]
  else:
    if extra:
      _by_index(builder, args, extra)  # Checks the range first.
    chosen = _by_image_id(builder, args)
    found = _by_index(builder, args, extra) if extra else {}
  return chosen, (found[args.paste_from] if extra else None)


def output_name(image_id: int, args: argparse.Namespace,
                source_id: int | None = None) -> str:
  """`sa_<id>[_<option>...].png`: each non-default option in the name."""
  parts = [f'sa_{image_id}']
  if source_id is not None:
    parts.append(f'paste{source_id}x{args.paste_objects}_seed{args.seed}')
  if args.predictions:
    parts.append('eval' if args.select == 'best_iou' else 'eval_score')
  if args.max_masks is not None:
    parts.append(f'max{args.max_masks}')
  if args.min_predicted_iou is not None:
    parts.append(f'iou{args.min_predicted_iou:g}')
  parts += [flag for flag in ('boxes', 'points') if getattr(args, flag)]
  if args.alpha is not None:
    parts.append(f'alpha{args.alpha:g}')
  if args.min_size != DEFAULT_MIN_SIZE:
    parts.append(f'min{args.min_size}')
  return '_'.join(parts) + '.png'


def _check_combinations(args) -> None:
  special = ('--paste_from' if args.paste_from is not None else
             '--predictions' if args.predictions else None)
  if special is None:
    return
  given = [flag for flag, on in (
      ('--boxes', args.boxes), ('--points', args.points),
      ('--min_predicted_iou', args.min_predicted_iou is not None),
      ('--max_masks', args.max_masks is not None and special == '--paste_from'),
  ) if on]
  if given:
    raise common.UsageError(f'{", ".join(given)} cannot go with {special}')


def _load_predictions(args) -> dict[int, list[tuple[int, bytes, Any, float]]]:
  """{image_id: [(id, counts, size, score)]} of the --predictions file."""
  from segment_anything_tfds.train import evaluation  # pylint: disable=g-import-not-at-top
  data = evaluate.read_predictions(args.predictions)
  try:
    parsed = evaluation.parse_predictions(data)
  except ValueError as e:
    message = str(e).removeprefix('evaluate_predictions: ')
    raise errors.ConfigError(f'{args.predictions}: {message}') from None
  out: dict[int, list] = {}
  for image_id, ann_id, counts, size, score in parsed:
    out.setdefault(image_id, []).append((ann_id, counts, size, score))
  return out


def _draw(ex, args, *, source, predictions):
  """(PIL image, file name, what to report) of one chosen example."""
  image_id = int(ex['image']['image_id'])
  alpha = viz.DEFAULT_ALPHA if args.alpha is None else args.alpha
  if source is not None:
    image, result = viz.render_copy_paste(
        ex, source, num_objects=args.paste_objects, seed=args.seed,
        alpha=alpha, min_size=args.min_size)
    source_id = int(source['image']['image_id'])
    return (image, output_name(image_id, args, source_id),
            f'{len(result["pasted_indices"])} objects of image id'
            f' {source_id} pasted')
  if predictions is not None:
    try:
      image, scored = viz.render_evaluation(
          ex, predictions.get(image_id, []), select=args.select,
          max_masks=args.max_masks or DEFAULT_TILES, min_size=args.min_size,
          **({} if args.alpha is None else {'alpha': args.alpha}))
    except ValueError as e:
      if isinstance(e, errors.Error):
        raise
      raise errors.ConfigError(
          f'{args.predictions}: image id {image_id}: {e}') from None
    mean = (sum(s[1] for s in scored) / len(scored)) if scored else None
    return (image, output_name(image_id, args),
            f'{len(scored)} masks with a prediction' +
            (f', mean IoU {mean:.4f}' if scored else ''))
  image = viz.render(ex, alpha=alpha, boxes=args.boxes, points=args.points,
                     max_masks=args.max_masks,
                     min_predicted_iou=args.min_predicted_iou,
                     min_size=args.min_size)
  drawn = len(viz.select_masks(ex['annotations'], max_masks=args.max_masks,
                               min_predicted_iou=args.min_predicted_iou))
  total = len(ex['annotations']['id'])
  return (image, output_name(image_id, args),
          f'{total} masks' + ('' if drawn == total else f', {drawn} drawn'))


def _draw_bounded(index, ex, args, *, source, predictions):
  """`_draw` of the example at `index`, whose bad record is one line naming
  that index too, and running out of memory one line naming the image (the
  sizes are bounded by `viz.check_drawable` first)."""
  try:
    return _draw(ex, args, source=source, predictions=predictions)
  except errors.BadRecordError as e:  # Names the image; and its index.
    raise errors.BadRecordError(f'index {index}, {e.args[0]}') from None
  except MemoryError:
    raise errors.ConfigError(
        f'image id {int(ex["image"]["image_id"])}: out of memory drawing'
        ' it; draw fewer masks (--max_masks) or a smaller --min_size'
        ) from None


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  _check_combinations(args)
  common.require('PIL', command='show', extra='viz', package='Pillow')
  local.check_writable(args.out, 'drawings (--out)', folder=True,
                       bucket=False)
  predictions = _load_predictions(args) if args.predictions else None
  builder = common.prepared_builder(args)
  chosen, source = _select_examples(builder, args)
  for index, ex in common.progress(chosen,
                                   enabled=args.progress and len(chosen) > 1,
                                   desc='Drawing', unit='img'):
    image, name, what = _draw_bounded(index, ex, args, source=source,
                                      predictions=predictions)
    path, = export.write_files(args.out, {name: viz.png_bytes(image)},
                               what='the picture (--out)')
    width, height = image.size
    print(f'wrote {path} (index {index}, image id'
          f' {int(ex["image"]["image_id"])}, {width}x{height}, {what})')
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `show` subcommand's parser."""
  p = sub.add_parser(
      'show', parents=parents, allow_abbrev=False,
      help='draw examples with their masks, a copy-paste or predictions',
      epilog=EXAMPLE,
      description='Render examples with their masks overlaid, each in its'
      ' own colour (largest first, so small masks stay on top), to'
      ' OUT/sa_<image_id>[_<options>].png; the name holds every'
      ' non-default option, so pictures made with other options do not'
      ' overwrite each other.')
  common.add_dataset_args(p, build=False)
  pick = p.add_mutually_exclusive_group(required=True)
  pick.add_argument('--index', type=common.int_list, metavar='I,J',
                    help='positions in the split, e.g. 0,3')
  pick.add_argument('--image_id', type=common.int_list, metavar='ID,ID',
                    help='SA-1B image ids, e.g. 12 (scans the split)')
  look = p.add_argument_group('how')
  look.add_argument('--max_masks', type=common.positive_int, metavar='N',
                    help='draw the N masks of highest predicted_iou (with'
                    f' --predictions: N tiles, default {DEFAULT_TILES})')
  look.add_argument('--min_predicted_iou', type=common.unit_interval,
                    metavar='X', help='draw only masks with predicted_iou >='
                    ' X (SAM keeps >= 0.88)')
  look.add_argument('--boxes', action='store_true',
                    help="draw each mask's box")
  look.add_argument('--points', action='store_true',
                    help="draw each mask's prompt point")
  look.add_argument('--alpha', type=common.unit_interval, default=None,
                    help=f'mask opacity, 0-1 (default {viz.DEFAULT_ALPHA}; 0.6'
                    ' with --predictions); each pixel is blended once, so the'
                    ' photo stays readable under many masks')
  look.add_argument('--min_size', type=common.non_negative_int,
                    default=DEFAULT_MIN_SIZE,
                    metavar='PX',
                    help='scale smaller images up (integer factor, nearest)'
                    ' until the longer side is at least PX (default'
                    f' {DEFAULT_MIN_SIZE}; 0: the image\'s own size)')
  what = p.add_argument_group('what').add_mutually_exclusive_group()
  what.add_argument('--paste_from', type=common.non_negative_int, metavar='I',
                    help='copy-paste: paste objects of the example at'
                    ' position I into each chosen image'
                    ' (copy_paste.paste_from_example)')
  what.add_argument('--predictions', metavar='FILE',
                    help='draw these predictions (pycocotools RLE results'
                    ' JSON, as for `evaluate`) against the ground truth')
  p.add_argument('--paste_objects', type=common.positive_int, default=4,
                 metavar='K', help='with --paste_from: objects (default 4)')
  p.add_argument('--seed', type=int, default=0,
                 help='with --paste_from: the seed (default 0)')
  p.add_argument('--select', choices=evaluate.SELECT, default='best_iou',
                 help='with --predictions: as for `evaluate`')
  p.add_argument('--out', required=True, metavar='DIR', help='output dir')
  p.set_defaults(func=run, allow_leftover=False)
  return p
