#!/usr/bin/env python
"""Fine-tunes KerasHub's Segment Anything (SAM) on SA-1B prepared by TFDS.

  python examples/finetune_sam.py --tiny --manual_dir dummy_data --data_dir /tmp/sa --steps 30
  python examples/finetune_sam.py --preset sam_base_sa1b --data_dir ~/tensorflow_datasets \\
      --config first_10 --steps 1000 --batch_size 4 --num_masks 32 --out sam_ft.keras

The data come from `sam_inputs.load_sam_dataset(..., layout='keras_hub')`:
images as KerasHub's SAM takes them, --num_masks masks per image at S/4, each
prompted by a point inside it or its jittered box (--prompt), seeded per
image. `keras_sam.SAMTrainer` encodes each image once, decodes its prompts
against that embedding, and minimizes SAM's loss (focal + dice, the minimum
over the multimask outputs for single points, IoU MSE).

--preset loads KerasHub weights (needs Kaggle access); --tiny builds a small
random SAM from config, for CPU and tests. With --manual_dir, the dataset is
first prepared from the SA-1B tars there into --data_dir. --out saves the
fine-tuned model as a KerasHub `SAMImageSegmenter` (.keras), which
`keras.models.load_model` reloads (with keras_hub installed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import keras

from segment_anything_tfds.train import keras_sam
from segment_anything_tfds.read import sam_inputs


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument('--preset',
                     help='KerasHub SAM preset, e.g. sam_base_sa1b.')
  model.add_argument('--tiny', action='store_true',
                     help='A small random-init SAM built from config.')
  p.add_argument('--data_dir', required=True,
                 help='TFDS data_dir holding the prepared dataset.')
  p.add_argument('--config', default='all',
                 help='segment_anything config (all, first_1, ...).')
  p.add_argument('--split', default='train')
  p.add_argument('--manual_dir', default=None,
                 help='Prepare the dataset first from the SA-1B tars here.')
  p.add_argument('--steps', type=int, default=30, help='Training steps.')
  p.add_argument('--batch_size', type=int, default=2)
  p.add_argument('--image_size', type=int, default=64,
                 help='--tiny only (a preset fixes it, e.g. 1024).')
  p.add_argument('--num_masks', type=int, default=8)
  p.add_argument('--prompt', default='mixed', choices=['point', 'box', 'mixed'])
  p.add_argument('--learning_rate', type=float, default=1e-3)
  p.add_argument('--weight_decay', type=float, default=0.1)
  p.add_argument('--freeze_image_encoder', action='store_true',
                 help='Train only the prompt encoder and mask decoder.')
  p.add_argument('--validation_fraction', type=float, default=None,
                 help='Hold out this fraction of the images by id; report'
                      ' their loss at the end.')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default=None, help='Save the model here (.keras).')
  return p


def _backbone(args):
  if args.tiny:
    return keras_sam.tiny_backbone(args.image_size, seed=args.seed)
  import keras_hub  # pylint: disable=g-import-not-at-top
  return keras_hub.models.SAMBackbone.from_preset(args.preset)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the example; returns {'loss': per-step losses, 'trainer': ...}."""
  args = _parser().parse_args(argv)
  if args.out and not args.out.endswith('.keras'):
    raise SystemExit(f'finetune_sam: --out must end in .keras, got {args.out}')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import

  name = f'segment_anything/{args.config}'
  # With --manual_dir the dataset is built first if it is not there yet;
  # without it, reading never builds (a missing dataset says how to).
  prepare = dict(download=bool(args.manual_dir), download_and_prepare_kwargs={
      'download_config': tfds.download.DownloadConfig(
          manual_dir=args.manual_dir)})

  keras.utils.set_random_seed(args.seed)
  backbone = _backbone(args)
  image_size = backbone.prompt_encoder.input_image_size[0]
  if args.freeze_image_encoder:
    backbone.image_encoder.trainable = False
  trainer = keras_sam.SAMTrainer(backbone)
  trainer.compile(optimizer=keras.optimizers.AdamW(
      args.learning_rate, weight_decay=args.weight_decay))

  options = dict(layout='keras_hub', prompt=args.prompt,
                 image_size=image_size, num_masks=args.num_masks,
                 seed=args.seed, validation_fraction=args.validation_fraction)
  dataset = sam_inputs.load_sam_dataset(
      args.split, name=name, data_dir=args.data_dir,
      batch_size=args.batch_size, shuffle_buffer=64, repeat=True, **prepare,
      **options)
  trainer.build_on(next(iter(dataset))[0])
  # One step per "epoch" so the history holds the loss of every step. The
  # dataset shuffles itself (shuffle_buffer): Keras ignores `shuffle` for a
  # tf.data.Dataset, and warns if it is left at True.
  history = trainer.fit(dataset, steps_per_epoch=1, epochs=args.steps,
                        shuffle=False, verbose=0)
  losses = [float(v) for v in history.history['loss']]
  print(f'trained {args.steps} steps on {name} ({args.split}), image size'
        f' {image_size}, {args.num_masks} masks per image: loss'
        f' {losses[0]:.4f} -> {losses[-1]:.4f}')
  result = {'loss': losses, 'trainer': trainer}
  if args.validation_fraction:
    held_out = sam_inputs.load_sam_dataset(
        args.split, name=name, data_dir=args.data_dir,
        batch_size=args.batch_size, drop_remainder=False, validation=True,
        **options)
    result['validation_loss'] = float(trainer.evaluate(held_out, verbose=0))
    print(f'validation loss: {result["validation_loss"]:.4f}')
  if args.out:
    trainer.segmenter().save(args.out)
    print(f'saved {args.out}')
  return result


if __name__ == '__main__':
  main(sys.argv[1:])
