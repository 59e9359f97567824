"""SA-1B-shaped tars for benchmarks/prepare.py, cached on disk.

Two kinds, both with members shuffled (an image's jpg and json can be far
apart in the tar) and real pycocotools RLE:

  full size   1500x2250 JPEGs of ~1 MB, 90-110 masks per image: the work per
              image of real SA-1B (`make_tars`).
  scale       small JPEGs (32x24 to 64x48) with 2-6 masks each, tens of
              thousands per tar: the number of images of real SA-1B tars
              (~11 k) and more, cheap to build (`make_scale_tars`).

To keep generation fast, JPEGs and masks are drawn from pools; every image
still has its own id, member names, annotation ids and JSON, so the work per
image is that of an image of its size.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import tarfile
import time

import numpy as np

# Full size.
HEIGHT, WIDTH = 1500, 2250
JPEG_QUALITY = 80  # ~1 MB at 1500x2250 for the fake pictures.
NUM_JPEGS = 16
NUM_MASKS = 600
MASKS_PER_IMAGE = (90, 110)
GEN_VERSION = 1  # Bump when the full-size data changes.

# Scale: (height, width) of the small images, drawn per image.
SCALE_SIZES = ((24, 32), (30, 40), (36, 48), (48, 64))
SCALE_JPEGS_PER_SIZE = 8
SCALE_MASKS_PER_SIZE = 48
SCALE_MASKS_PER_IMAGE = (2, 6)
SCALE_GEN_VERSION = 1  # Bump when the scale data changes.


def _fake_data():
  from segment_anything_tfds.tools import fake_data  # pylint: disable=g-import-not-at-top
  return fake_data


def tar_paths(tar_dir: str, num_tars: int) -> list[str]:
  return [os.path.join(tar_dir, f'sa_{t:06d}.tar') for t in range(num_tars)]


def _annotated(rng, image_id: int, height: int, width: int, jpeg: bytes,
               pool: list[dict], masks: tuple[int, int]) -> tuple[bytes, bytes]:
  """(jpg, json) of one image: `masks` annotations drawn from `pool`."""
  n = int(rng.integers(masks[0], masks[1] + 1))
  chosen = rng.choice(len(pool), size=n, replace=False)
  record = {
      'image': {'image_id': image_id, 'width': width, 'height': height,
                'file_name': f'sa_{image_id}.jpg'},
      'annotations': [dict(pool[k], id=image_id * 1000 + i)
                      for i, k in enumerate(chosen)],
  }
  return jpeg, json.dumps(record).encode()


# ------------------------------------------------------------ full size


def _full_pools(seed: int):
  fake_data = _fake_data()
  rng = np.random.default_rng(seed)
  jpegs = [fake_data.jpeg_bytes(rng, HEIGHT, WIDTH, quality=JPEG_QUALITY)
           for _ in range(NUM_JPEGS)]
  anns = [fake_data.annotation(rng, fake_data.random_mask(rng, HEIGHT, WIDTH),
                               0)
          for _ in range(NUM_MASKS)]
  return jpegs, anns


def _to_make(tar_dir: str, num_tars: int) -> tuple[list[str], list[int]]:
  """The tars' paths, and the numbers of those not made yet."""
  os.makedirs(tar_dir, exist_ok=True)
  paths = tar_paths(tar_dir, num_tars)
  return paths, [t for t, p in enumerate(paths) if not os.path.exists(p)]


def make_tars(tar_dir: str, num_tars: int, images_per_tar: int) -> list[str]:
  """The first `num_tars` full-size tars under `tar_dir`, made if missing."""
  paths, missing = _to_make(tar_dir, num_tars)
  if not missing:
    return paths
  t0 = time.time()
  print(f'Generating {len(missing)} full-size tars of {images_per_tar}'
        f' images in {tar_dir} ...', flush=True)
  jpegs, anns = _full_pools(seed=0)
  for t in missing:
    rng = np.random.default_rng(1000 + t)
    records = []
    for k in range(images_per_tar):
      image_id = 1 + t * images_per_tar + k
      records.append((image_id, *_annotated(
          rng, image_id, HEIGHT, WIDTH, jpegs[image_id % len(jpegs)], anns,
          MASKS_PER_IMAGE)))
    _fake_data().write_tar(paths[t], records, rng=rng)
  print(f'  done in {time.time() - t0:.0f} s', flush=True)
  return paths


# ---------------------------------------------------------------- scale


def _scale_pools(seed: int):
  """Per size: JPEGs and annotations of that size."""
  fake_data = _fake_data()
  rng = np.random.default_rng(seed)
  pools = []
  for height, width in SCALE_SIZES:
    jpegs = [fake_data.jpeg_bytes(rng, height, width)
             for _ in range(SCALE_JPEGS_PER_SIZE)]
    anns = [fake_data.annotation(
        rng, fake_data.random_mask(rng, height, width), 0)
            for _ in range(SCALE_MASKS_PER_SIZE)]
    pools.append((height, width, jpegs, anns))
  return pools


def _make_scale_tar(args) -> str:
  """Writes one scale tar (runs in a worker process)."""
  path, t, images_per_tar = args
  pools = _scale_pools(seed=0)
  rng = np.random.default_rng(2000 + t)
  sizes = rng.integers(len(pools), size=images_per_tar)
  records = []
  for k in range(images_per_tar):
    image_id = 1 + t * images_per_tar + k
    height, width, jpegs, anns = pools[sizes[k]]
    records.append((image_id, *_annotated(
        rng, image_id, height, width, jpegs[image_id % len(jpegs)], anns,
        SCALE_MASKS_PER_IMAGE)))
  _fake_data().write_tar(path, records, rng=rng)
  return path


def make_scale_tars(tar_dir: str, num_tars: int,
                    images_per_tar: int) -> list[str]:
  """The first `num_tars` scale tars under `tar_dir`, made if missing.

  Tars are made in parallel, one process per core.
  """
  paths, missing = _to_make(tar_dir, num_tars)
  if not missing:
    return paths
  t0 = time.time()
  print(f'Generating {len(missing)} scale tars of {images_per_tar} small'
        f' images in {tar_dir} ...', flush=True)
  jobs = [(paths[t], t, images_per_tar) for t in missing]
  workers = min(len(missing), os.cpu_count() or 1)
  if workers == 1:
    for job in jobs:
      _make_scale_tar(job)
  else:
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      list(pool.map(_make_scale_tar, jobs))
  print(f'  done in {time.time() - t0:.0f} s', flush=True)
  return paths


# ---------------------------------------------------------------- stats


def tar_stats(paths) -> dict:
  """Images and raw jpg + json bytes of some tars."""
  images = jpg = js = 0
  for p in paths:
    with tarfile.open(p) as tf:
      for m in tf.getmembers():
        if m.name.endswith('.jpg'):
          images += 1
          jpg += m.size
        elif m.name.endswith('.json'):
          js += m.size
  return {'images': images, 'jpg_bytes': jpg, 'json_bytes': js,
          'tar_bytes': sum(os.path.getsize(p) for p in paths)}
