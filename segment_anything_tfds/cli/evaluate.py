"""`segment-anything-tfds evaluate`: score RLE predictions against a split.

  segment-anything-tfds evaluate --config first_1 --predictions preds.json

The scoring is `evaluation.evaluate_predictions`; this module reads the
file, picks the split and prints `evaluation.format_table`.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from segment_anything_tfds import errors
from segment_anything_tfds.cli import common
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import paths as paths_lib
from segment_anything_tfds.train import SELECT

EXAMPLE = (f'example: {common.PROG} evaluate --config first_1 --split'
           " 'train[:100]' --predictions preds.json --json result.json")


def read_predictions(path: str) -> Any:
  """The parsed predictions file; a one-line error if it cannot be read.

  Like every input file, a local one must be a regular file
  (`local.open_input`: not a FIFO or a device such as /dev/zero).
  """
  import orjson  # pylint: disable=g-import-not-at-top
  with local.open_input(path, 'predictions file') as f:
    try:
      data = f.read()
    except OSError as e:
      raise errors.SourceError(
          f'predictions file {path}: cannot be read ({e.strerror or e})'
      ) from None
  try:
    return orjson.loads(data)
  except orjson.JSONDecodeError as e:
    raise errors.ConfigError(
        f'predictions file {path} is not JSON: {errors.first_line(e)}'
    ) from None


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds.train import evaluation  # pylint: disable=g-import-not-at-top
  if args.json:
    local.check_writable(args.json, 'the result (--json)')
  predictions = read_predictions(args.predictions)
  builder = common.prepared_builder(args)
  dataset = common.as_dataset(builder, args.split)
  total = common.split_size(builder, args.split)
  try:
    result = evaluation.evaluate_predictions(
        predictions, dataset, select=args.select,
        progress=lambda it: common.progress(
            it, enabled=args.progress, total=total, desc='Evaluating',
            unit='img'))
  except ValueError as e:
    message = str(e).removeprefix('evaluate_predictions: ')
    raise errors.ConfigError(f'{args.predictions}: {message}') from None
  print(f'split:        {args.split}\n'
        f'predictions:  {args.predictions} (select {args.select})\n')
  print(evaluation.format_table(result))
  if args.json:
    report = {'dataset': builder.info.full_name, 'split': args.split,
              'predictions': (os.path.abspath(args.predictions)
                              if paths_lib.is_local(args.predictions)
                              else args.predictions),
              'select': args.select, **result}
    local.write_whole(args.json,
                      (json.dumps(report, indent=2) + '\n').encode('utf-8'),
                      'the result (--json)')
    print(f'\nwrote {args.json}')
  return 0


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `evaluate` subcommand's parser."""
  p = sub.add_parser(
      'evaluate', parents=parents, allow_abbrev=False,
      help='score RLE predictions (pycocotools results JSON) against a split',
      epilog=EXAMPLE,
      description='Read predictions saved as a pycocotools RLE results list'
      ' ([{"segmentation": {"size": [h, w], "counts": str}, "image_id": int,'
      ' "id": int, "score"?: float}], "id" naming the ground-truth mask) and'
      ' print the mean IoU and the fractions of masks with IoU >= 0.5 and'
      ' >= 0.75, over the ground-truth masks that have a prediction.')
  common.add_dataset_args(p, build=False)
  p.add_argument('--predictions', required=True, metavar='FILE',
                 help='the predictions JSON file')
  p.add_argument('--select', choices=SELECT, default='best_iou',
                 help='several predictions of one mask: the best IoU counts'
                 ' (best_iou, SAM\'s multimask convention; default) or the'
                 ' highest score (score)')
  p.add_argument('--json', metavar='OUT',
                 help='also write the result as JSON to OUT (its dir is'
                 ' created)')
  p.set_defaults(func=run, allow_leftover=False)
  return p
