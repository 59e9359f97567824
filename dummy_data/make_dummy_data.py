#!/usr/bin/env python
"""Regenerates dummy_data/: SA-1B-shaped input small enough for the repo.

  python dummy_data/make_dummy_data.py

Writes, next to this script:
  segment_anything_links.txt  links file: the 4 shards below plus a
                              non-shard row (sa_images_ids.txt)
  sa_000000.tar               members at the tar root, shuffled
  sa_000001.tar               members under ./, shuffled
  sa_000002.tar               members in a folder sa_000002/, shuffled
  sa_000003/                  an extracted folder of jpg + json
Every image has real COCO RLE counts made by pycocotools; at least one
string holds a backslash. The output is deterministic (fixed seed).
"""

import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from segment_anything_tfds.tools import fake_data  # pylint: disable=g-import-not-at-top

HERE = os.path.dirname(os.path.abspath(__file__))
# (shard, layout, [(image_id, height, width, num_masks)])
SHARDS = [
    (0, fake_data.ROOT, [(1, 24, 32, 5), (2, 32, 24, 3), (3, 17, 29, 7)]),
    (1, fake_data.DOT, [(11, 20, 20, 4), (12, 1, 9, 2), (13, 30, 40, 6)]),
    (2, fake_data.FOLDER, [(21, 36, 18, 5), (22, 25, 25, 3), (23, 9, 1, 1)]),
    (3, None, [(31, 28, 22, 4), (32, 16, 48, 8)]),
]
URL = ('https://scontent-dummy.example.invalid/m1/v/t6/{name}'
       '?ccb=10-5&oh=00_AfDummySignature&oe=67A1B2C3&_nc_sid=0fdd5c')


def main() -> None:
  rng = np.random.default_rng(20230405)
  for shard, layout, images in SHARDS:
    records = [
        (image_id, *fake_data.image_record(
            rng, image_id, height=h, width=w, num_masks=n,
            need_backslash=(image_id == 1)))
        for image_id, h, w, n in images
    ]
    if layout is None:
      folder = os.path.join(HERE, f'sa_{shard:06d}')
      shutil.rmtree(folder, ignore_errors=True)
      fake_data.write_folder(folder, records)
    else:
      fake_data.write_tar(os.path.join(HERE, f'sa_{shard:06d}.tar'), records,
                          layout=layout, rng=rng)
  rows = [(f'sa_{s:06d}.tar', URL.format(name=f'sa_{s:06d}.tar'))
          for s, _, _ in SHARDS]
  rows.insert(0, ('sa_images_ids.txt', URL.format(name='sa_images_ids.txt')))
  fake_data.write_links(os.path.join(HERE, 'segment_anything_links.txt'), rows)


if __name__ == '__main__':
  main()
