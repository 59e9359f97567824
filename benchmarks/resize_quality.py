#!/usr/bin/env python
"""How far each image path's pixels are from a full-quality resize.

  python benchmarks/resize_quality.py          # ~10 s

The reference is a full JPEG decode followed by TF's antialiased bilinear
resize to 1024 on the long side (the path of ``fast_jpeg=False``, close to
SAM's own PIL preprocessing). Against it, per image: the mean and largest
absolute difference (0..255) and the PSNR of

  fast (area)       the default: DCT scaling to 1/2, then the area shrink;
  fast (antialias)  the previous default: DCT scaling, antialiased bilinear;
  fast (bilinear)   DCT scaling, plain bilinear (not offered);
  full (bilinear)   full decode, plain bilinear: what no antialiasing costs.

Two 1500x2250 JPEGs: the noise-heavy image of the training benchmarks
(`decode.make_manual_dir`: the worst case), and a smooth picture with sharp
stripes.
"""

from __future__ import annotations

import io
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, '..'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
from PIL import Image

from segment_anything_tfds.tools import fake_data
# pylint: enable=g-import-not-at-top,wrong-import-position

HEIGHT, WIDTH, SIZE = 1500, 2250, (683, 1024)


def stripes(rng: np.random.Generator) -> bytes:
  """A smooth random picture with sharp stripes (period ~40 px), q=90."""
  base = rng.normal(size=(HEIGHT // 10, WIDTH // 10, 3)).astype(np.float32)
  image = tf.image.resize(base, (HEIGHT, WIDTH), method='bicubic').numpy()
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  image += 2.0 * (np.sin(xx / 7.0 + yy / 11.0) > 0)[..., None]
  image += 0.3 * rng.normal(size=image.shape)
  image = (image - image.min()) / (image.max() - image.min()) * 255
  out = io.BytesIO()
  Image.fromarray(image.astype(np.uint8)).save(out, 'JPEG', quality=90)
  return out.getvalue()


def main() -> None:
  rng = np.random.default_rng(0)
  images = {'noise-heavy (benchmark)': fake_data.jpeg_bytes(rng, HEIGHT, WIDTH),
            'stripes': stripes(rng)}
  print(f'{"image":24s} {"path":18s} {"mean|d|":>8s} {"max|d|":>7s}'
        f' {"PSNR dB":>8s}')
  for name, jpeg in images.items():
    full = tf.io.decode_jpeg(jpeg, channels=3, dct_method='INTEGER_ACCURATE')
    half = tf.io.decode_jpeg(jpeg, channels=3, ratio=2,
                             dct_method='INTEGER_ACCURATE')
    reference = tf.image.resize(full, SIZE, antialias=True).numpy()
    paths = {
        'fast (area)': tf.image.resize(half, SIZE, method='area'),
        'fast (antialias)': tf.image.resize(half, SIZE, antialias=True),
        'fast (bilinear)': tf.image.resize(half, SIZE),
        'full (bilinear)': tf.image.resize(full, SIZE),
    }
    for path, image in paths.items():
      d = np.abs(image.numpy() - reference)
      psnr = 10 * np.log10(255.0**2 / np.mean(d**2))
      print(f'{name:24s} {path:18s} {d.mean():8.2f} {d.max():7.1f}'
            f' {psnr:8.1f}')


if __name__ == '__main__':
  main()
