#!/usr/bin/env python
"""Trains a tiny promptable mask model on SA-1B with Keras, on CPU, in seconds.

  python examples/train_keras.py --data_dir ~/tensorflow_datasets --config all
  python examples/train_keras.py --data_dir /tmp/sa --manual_dir dummy_data

The data come from `segment_anything_tfds.read.sam_inputs.load_sam_dataset`:
images resized and padded to --image_size, --num_masks masks per image
decoded by the pure-TensorFlow RLE decoder straight at --mask_size, one point
and one box prompt per mask, and a validity weight per mask. The batches go
to `model.fit` as they are: (inputs dict, target masks, sample weights).

With --manual_dir, the dataset is first prepared from SA-1B tars there (e.g.
the repository's dummy_data/) into --data_dir.

The model is a toy stand-in for SAM: a small conv encoder down to the mask
resolution, a prompt embedding (point, label, box), and a per-mask dot
product between prompt and pixel features.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Sequence

import keras

from segment_anything_tfds.read import sam_inputs


def build_model(*, image_size: int, mask_size: int, num_masks: int,
                width: int = 16) -> keras.Model:
  """A tiny promptable segmenter: logits [B, K, M, M]."""
  image = keras.Input((image_size, image_size, 3), name='image')
  points = keras.Input((num_masks, 1, 2), name='points')
  labels = keras.Input((num_masks, 1), name='point_labels', dtype='int32')
  boxes = keras.Input((num_masks, 4), name='boxes')

  x = image
  size = image_size
  while size > mask_size:
    x = keras.layers.Conv2D(width, 3, strides=2, padding='same',
                            activation='relu')(x)
    size = math.ceil(size / 2)
  x = keras.layers.Conv2D(width, 3, padding='same', activation='relu')(x)
  # Pixel coordinates (in [0, 1]) as features, so prompts can localize.
  coords = keras.layers.Lambda(_coordinate_grid)(x)
  x = keras.layers.Concatenate()([x, coords])
  pixels = keras.layers.Conv2D(width, 1)(x)  # [B, M, M, C]

  prompt = keras.layers.Concatenate()([
      keras.layers.Reshape((num_masks, 2))(points),
      keras.layers.Lambda(lambda t: keras.ops.cast(t, 'float32'))(labels),
      boxes,
  ])
  prompt = keras.layers.Rescaling(1.0 / image_size)(prompt)
  prompt = keras.layers.Dense(32, activation='relu')(prompt)
  prompt = keras.layers.Dense(width)(prompt)  # [B, K, C]
  logits = keras.layers.Lambda(
      lambda t: keras.ops.einsum('bhwc,bkc->bkhw', t[0], t[1]),
      name='masks')([pixels, prompt])
  return keras.Model({'image': image, 'points': points,
                      'point_labels': labels, 'boxes': boxes}, logits)


def _coordinate_grid(features):
  shape = keras.ops.shape(features)
  h, w = shape[1], shape[2]
  ys = keras.ops.cast(keras.ops.arange(h), 'float32') / keras.ops.cast(
      h, 'float32')
  xs = keras.ops.cast(keras.ops.arange(w), 'float32') / keras.ops.cast(
      w, 'float32')
  grid = keras.ops.stack(keras.ops.meshgrid(ys, xs, indexing='ij'), axis=-1)
  return keras.ops.broadcast_to(grid[None], (shape[0], h, w, 2))


def mask_loss(y_true, y_pred):
  """Per-mask mean binary cross-entropy [B, K], to match weights [B, K]."""
  per_pixel = keras.ops.binary_crossentropy(y_true, y_pred, from_logits=True)
  return keras.ops.mean(per_pixel, axis=(2, 3))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--data_dir', required=True,
                 help='TFDS data_dir holding the prepared dataset.')
  p.add_argument('--config', default='all',
                 help='segment_anything config (all, first_1, ...).')
  p.add_argument('--split', default='train')
  p.add_argument('--manual_dir', default=None,
                 help='Prepare the dataset first from the SA-1B tars here.')
  p.add_argument('--steps', type=int, default=5, help='Training steps.')
  p.add_argument('--batch_size', type=int, default=2)
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--mask_size', type=int, default=16)
  p.add_argument('--num_masks', type=int, default=8)
  p.add_argument('--learning_rate', type=float, default=3e-3)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--overfit_batches', type=int, default=0,
                 help='Sanity check: train on the first N batches only.')
  return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the example; returns {'loss': per-step losses, 'model': model}."""
  args = _parser().parse_args(argv)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import

  name = f'segment_anything/{args.config}'
  # With --manual_dir the dataset is built first if it is not there yet;
  # without it, reading never builds (a missing dataset says how to).
  prepare = dict(download=bool(args.manual_dir), download_and_prepare_kwargs={
      'download_config': tfds.download.DownloadConfig(
          manual_dir=args.manual_dir)})

  keras.utils.set_random_seed(args.seed)
  options = dict(image_size=args.image_size, mask_size=args.mask_size,
                 num_masks=args.num_masks, seed=args.seed)
  dataset = sam_inputs.load_sam_dataset(
      args.split, name=name, data_dir=args.data_dir,
      batch_size=args.batch_size, shuffle_buffer=64, repeat=True, **prepare,
      **options)
  if args.overfit_batches:
    dataset = dataset.take(args.overfit_batches).cache().repeat()
  model = build_model(image_size=args.image_size, mask_size=args.mask_size,
                      num_masks=args.num_masks)
  model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                loss=mask_loss)
  # One step per "epoch" so the history holds the loss of every step.
  history = model.fit(dataset, steps_per_epoch=1, epochs=args.steps,
                      shuffle=False, verbose=0)
  losses = history.history['loss']
  print(f'trained {args.steps} steps on {name} ({args.split}): loss'
        f' {losses[0]:.4f} -> {losses[-1]:.4f}')
  return {'loss': [float(v) for v in history.history['loss']],
          'model': model}


if __name__ == '__main__':
  main(sys.argv[1:])
