#!/usr/bin/env python
"""Makes the docs' pictures with `show` and `stats`.

  python examples/docs_pictures.py [--out docs]

Everything is made here, offline and deterministic: two synthetic SA-1B
images (shapes on a gradient, each shape a mask, its RLE and fields by
pycocotools as in SA-1B), written as an SA-1B tar and prepared by
`segment-anything-tfds build`. Then `segment-anything-tfds show` draws

* OUT/show.png: image 1 with its masks, their boxes and prompt points;
* OUT/copy_paste.png: `--paste_from`, objects of image 2 pasted into
  image 1 by `copy_paste.paste_from_example`;
* OUT/evaluation.png: `--predictions`, predictions (each mask moved,
  grown or shrunk by a few pixels) against the ground truth;

and `segment-anything-tfds stats` draws OUT/stats.png of the bundled
dummy data (`dummy_data/`, built as config `all`).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
# pylint: disable=g-import-not-at-top,wrong-import-position
from segment_anything_tfds import cli
from segment_anything_tfds.tools import fake_data

HEIGHT, WIDTH = 192, 256
DUMMY_DATA = os.path.join(os.path.dirname(__file__), '..', 'dummy_data')


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
  """A bool mask of one ellipse, box or triangle at a random place."""
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  cy, cx = rng.uniform(0.2, 0.8) * HEIGHT, rng.uniform(0.15, 0.85) * WIDTH
  ry, rx = rng.uniform(0.1, 0.22) * HEIGHT, rng.uniform(0.08, 0.18) * WIDTH
  if kind == 'ellipse':
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
  if kind == 'box':
    return (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
  return (yy - cy + ry >= 0) & (yy - cy <= ry) & (
      abs(xx - cx) <= (yy - cy + ry) * rx / (2 * ry))


def scene(rng: np.random.Generator, image_id: int, num_shapes: int):
  """(jpg, json) of an image of shapes; each shape's visible part a mask."""
  from PIL import Image
  yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float32)
  base = rng.uniform(90, 170, 3)
  pixels = (base + 50 * np.stack([xx / WIDTH, yy / HEIGHT,
                                  1 - xx / WIDTH], -1)).astype(np.float32)
  masks = []
  for i in range(num_shapes):
    shape = _shape(('ellipse', 'box', 'triangle')[i % 3], rng)
    color = rng.uniform(20, 235, 3)
    stripes = 18 * np.sin((xx + yy) / rng.uniform(3, 6))[..., None]
    pixels[shape] = (color + stripes)[shape]
    masks = [m & ~shape for m in masks] + [shape]
  anns = [fake_data.annotation(rng, m, image_id * 100 + i)
          for i, m in enumerate(masks) if m.any()]
  pixels += rng.normal(0, 3, pixels.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      buf, format='JPEG', quality=92)
  record = {'image': {'image_id': image_id, 'width': WIDTH,
                      'height': HEIGHT, 'file_name': f'sa_{image_id}.jpg'},
            'annotations': anns}
  return buf.getvalue(), json.dumps(record).encode()


def _moved(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A prediction of `mask`: moved, grown or shrunk by a few pixels."""
  dy, dx = rng.integers(-6, 7, 2)
  out = np.roll(mask, (dy, dx), (0, 1))
  for _ in range(int(rng.integers(0, 4))):
    grow = rng.random() < 0.5
    p = np.pad(out, 1, constant_values=not grow)
    near = [p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2],
            p[1:-1, 2:]]
    out = np.logical_or.reduce(near) if grow else np.logical_and.reduce(near)
  return out


def predictions(record: dict, rng: np.random.Generator) -> list[dict]:
  from pycocotools import mask as mask_utils
  out = []
  for ann in record['annotations']:
    seg = ann['segmentation']
    mask = mask_utils.decode({'size': seg['size'],
                              'counts': seg['counts']}).astype(bool)
    rle = mask_utils.encode(np.asfortranarray(_moved(mask, rng), np.uint8))
    out.append({'segmentation': {'size': seg['size'],
                                 'counts': rle['counts'].decode()},
                'image_id': record['image']['image_id'], 'id': ann['id'],
                'score': 1.0})
  return out


def _position(data_dir: str, *, image_id: int) -> int:
  """Where `image_id` is in the prepared split (`--paste_from` takes it)."""
  import tensorflow_datasets as tfds
  ds = tfds.load('segment_anything/tars_0', split='train', data_dir=data_dir,
                 shuffle_files=False)
  ids = [int(ex['image']['image_id']) for ex in tfds.as_numpy(ds)]
  return ids.index(image_id)


def _cli(*argv) -> None:
  code = cli.main([str(a) for a in argv])
  if code:
    raise SystemExit(f'segment-anything-tfds {argv[0]} failed ({code})')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), '..', 'docs'))
  args = parser.parse_args()
  rng = np.random.default_rng(14)
  with tempfile.TemporaryDirectory() as tmp:
    records = [(image_id, *scene(rng, image_id, n))
               for image_id, n in ((1, 6), (2, 5))]
    manual = os.path.join(tmp, 'manual')
    os.makedirs(manual)
    fake_data.write_tar(os.path.join(manual, 'sa_000000.tar'), records)
    preds = predictions(json.loads(records[0][2]), rng)
    with open(os.path.join(tmp, 'predictions.json'), 'w') as f:
      json.dump(preds, f)
    data = os.path.join(tmp, 'data')
    common = ['--tars', '0', '--data_dir', data, '--no_progress']
    _cli('build', '--manual_dir', manual, *common)
    source = _position(data, image_id=2)
    shown = os.path.join(tmp, 'shown')
    _cli('show', *common, '--image_id', 1, '--paste_from', source,
         '--paste_objects', 3, '--seed', 3, '--min_size', 0, '--out', shown)
    _cli('show', *common, '--image_id', 1, '--predictions',
         os.path.join(tmp, 'predictions.json'), '--max_masks', 4,
         '--min_size', 0, '--out', shown)
    _cli('show', *common, '--image_id', 1, '--boxes', '--points', '--out',
         shown)
    dummy = ['--config', 'all', '--data_dir', os.path.join(tmp, 'dummy'),
             '--no_progress']
    _cli('build', '--manual_dir', DUMMY_DATA, *dummy)
    _cli('stats', *dummy, '--out', shown)
    os.makedirs(args.out, exist_ok=True)
    for name, dest in (('sa_1_paste2x3_seed3_min0.png', 'copy_paste.png'),
                       ('sa_1_eval_max4_min0.png', 'evaluation.png'),
                       ('sa_1_boxes_points.png', 'show.png'),
                       ('stats.png', 'stats.png')):
      shutil.copy(os.path.join(shown, name), os.path.join(args.out, dest))
      print(f'wrote {os.path.join(args.out, dest)}')


if __name__ == '__main__':
  main()
