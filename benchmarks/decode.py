#!/usr/bin/env python
"""Benchmarks SA-1B mask decoding: pure-TF `rle` vs pycocotools.

  python benchmarks/decode.py                   # all of them, ~2.5 min
  python benchmarks/decode.py --only full,low --repeats 10
  python benchmarks/decode.py --only iou,merge

Inputs look like SA-1B: 1500x2250 images, ~100 blobby masks of varied sizes
(log-uniform radius, some with holes), encoded by pycocotools. Every ratio
compares against a baseline measured in the same run, on the same inputs.

  full: one image's masks at full resolution.
        rle.decode(counts, size) vs pycocotools.mask.decode (its own [H,W,N]
        Fortran output; and, like for like, made a contiguous [N,H,W] array).
  low:  straight to 256x256.
        rle.decode(..., output_size=(256, 256)) (TF) and the numpy path's C
        decoder (numpy_inputs.decode_masks_np) vs pycocotools full decode +
        nearest resize (the same pixels, by numpy indexing; and by
        tf.image.resize).
  check: the build-time RLE check (_rle.first_bad, in C) on one image's
        strings: ms per image and ns per character; and its plain-Python
        reference (records.first_bad_reference), its fallback.
  iou:  rle.iou of 100 "predictions" (the masks shifted by a few pixels) vs
        the 100 masks, vs pycocotools.mask.iou (same [100, 100] matrix).
  merge: rle.merge vs pycocotools.mask.merge: the union of the 100 masks, and
        the intersection of each prediction with its mask (100 calls).
  e2e:  images/s of the SAM-style pipeline (`sam_inputs.sam_dataset`: 1024
        image, 64 masks at 256x256) on a dataset prepared by this package's
        builder, vs the naive path: tfds.load, pycocotools full decode of every
        mask (tf.numpy_function in a parallel map), sample 64, resize, and the
        same image preprocessing. Both use num_parallel_calls=AUTOTUNE.

The fake SA-1B tar and the prepared dataset are cached under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
from pycocotools import mask as mask_utils

from segment_anything_tfds.read import backend
from segment_anything_tfds.read import numpy_inputs
from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sam_inputs
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sam_steps
# pylint: enable=g-import-not-at-top,wrong-import-position

HEIGHT, WIDTH, NUM_MASKS = 1500, 2250, 100


def blob_masks(rng: np.random.Generator, *, height: int, width: int,
               num_masks: int) -> np.ndarray:
  """uint8 [N, H, W] wobbly blobs; areas from a few pixels to ~40%."""
  masks = np.zeros((num_masks, height, width), np.uint8)
  yy = np.arange(height)[:, None]
  xx = np.arange(width)[None, :]
  for n in range(num_masks):
    # Log-uniform radius: many small masks, a few large ones (as in SA-1B).
    radius = np.exp(rng.uniform(np.log(6), np.log(0.35 * min(height, width))))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = radius * rng.uniform(0.5, 1.5, size=2)
    y0, y1 = int(max(cy - 2 * ry, 0)), int(min(cy + 2 * ry + 1, height))
    x0, x1 = int(max(cx - 2 * rx, 0)), int(min(cx + 2 * rx + 1, width))
    dy = (yy[y0:y1] - cy) / ry
    dx = (xx[:, x0:x1] - cx) / rx
    theta = np.arctan2(dy, dx)
    wobble = 1.0
    for k in range(2, 6):
      wobble = wobble + rng.uniform(0, 0.5 / k) * np.cos(
          k * theta + rng.uniform(0, 2 * np.pi))
    inside = (dy * dy + dx * dx) < wobble ** 2
    if rng.random() < 0.3:  # Holes / several parts.
      hy, hx = rng.uniform(-0.5, 0.5, size=2)
      inside &= ((dy - hy) ** 2 + (dx - hx) ** 2) > 0.05
    if not inside.any():
      inside[inside.shape[0] // 2, inside.shape[1] // 2] = True
    masks[n, y0:y1, x0:x1] = inside
  return masks


def encode(masks: np.ndarray) -> list[dict]:
  return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))


def timeit(fn: Callable[[], object], *, repeats: int) -> float:
  """Median seconds of `repeats` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench_full(rles, counts, repeats: int) -> dict:
  size = (HEIGHT, WIDTH)
  expected = mask_utils.decode(rles).transpose(2, 0, 1)
  got = rle.decode(counts, size).numpy()
  assert np.array_equal(got, expected), 'rle.decode differs from pycocotools'
  t_coco = timeit(lambda: mask_utils.decode(rles), repeats=repeats)
  t_coco_nhw = timeit(lambda: np.ascontiguousarray(
      mask_utils.decode(rles).transpose(2, 0, 1)), repeats=repeats)
  t_rle = timeit(lambda: rle.decode(counts, size), repeats=repeats)
  return {'pycocotools_s': t_coco, 'pycocotools_nhw_s': t_coco_nhw,
          'rle_s': t_rle, 'speedup': t_coco / t_rle,
          'speedup_vs_nhw': t_coco_nhw / t_rle,
          'masks_per_s': NUM_MASKS / t_rle}


def bench_low(rles, counts, repeats: int, out: int = 256) -> dict:
  size = (HEIGHT, WIDTH)
  rows = rle.nearest_indices(HEIGHT, out).numpy()
  cols = rle.nearest_indices(WIDTH, out).numpy()

  def coco_index():
    full = mask_utils.decode(rles)  # [H, W, N]
    return np.ascontiguousarray(full[rows][:, cols].transpose(2, 0, 1))

  def coco_tf_resize():
    full = mask_utils.decode(rles)
    return tf.image.resize(full.transpose(2, 0, 1)[..., None], (out, out),
                           method='nearest')[..., 0].numpy()

  as_bytes = [r['counts'] for r in rles]

  def numpy_c():
    return numpy_inputs.decode_masks_np(as_bytes, HEIGHT, WIDTH, (out, out))

  got = rle.decode(counts, size, output_size=(out, out)).numpy()
  assert np.array_equal(got, coco_tf_resize()), 'low-res decode differs'
  assert np.array_equal(got, coco_index())
  assert np.array_equal(got, numpy_c()), 'the numpy decoder differs'
  t_index = timeit(coco_index, repeats=repeats)
  t_resize = timeit(coco_tf_resize, repeats=repeats)
  t_rle = timeit(lambda: rle.decode(counts, size, output_size=(out, out)),
                 repeats=repeats)
  t_numpy = timeit(numpy_c, repeats=repeats)
  return {'pycocotools_index_s': t_index, 'pycocotools_tf_resize_s': t_resize,
          'rle_s': t_rle, 'speedup': t_index / t_rle,
          'speedup_vs_tf_resize': t_resize / t_rle,
          'masks_per_s': NUM_MASKS / t_rle,
          'numpy_decoder': 'C' if numpy_inputs._rle else 'rle.decode',  # pylint: disable=protected-access
          'numpy_s': t_numpy, 'numpy_speedup': t_index / t_numpy}


def bench_check(rles, repeats: int) -> dict:
  """The build-time check of one image's strings: C and plain Python."""
  from segment_anything_tfds.prepare import records  # pylint: disable=g-import-not-at-top
  strings = [r['counts'].decode('ascii') for r in rles]
  chars = sum(map(len, strings))
  result = {'chars': chars}
  c_check = getattr(records._rle, 'first_bad', None)  # pylint: disable=protected-access
  if c_check is not None:
    assert c_check(strings, HEIGHT, WIDTH) is None
    # Best of `repeats` runs of 20 calls: the check takes well under 1 ms.
    t_c = min(timeit(lambda: [c_check(strings, HEIGHT, WIDTH)
                              for _ in range(20)], repeats=1) / 20
              for _ in range(repeats))
    result.update(c_s=t_c, c_ns_per_char=t_c / chars * 1e9)
  t_py = timeit(lambda: records.first_bad_reference(strings, HEIGHT, WIDTH),
                repeats=1)
  result.update(python_s=t_py, python_ns_per_char=t_py / chars * 1e9)
  return result


def shifted(masks: np.ndarray, dy: int = 3, dx: int = -2) -> np.ndarray:
  """"Predictions": the masks moved by (dy, dx) pixels (high, not full IoU)."""
  return np.roll(masks, (dy, dx), axis=(1, 2))


def bench_iou(gt_rles, dt_rles, repeats: int) -> dict:
  size = (HEIGHT, WIDTH)
  gt_counts = tf.constant([r['counts'] for r in gt_rles])
  dt_counts = tf.constant([r['counts'] for r in dt_rles])
  crowd = [0] * len(gt_rles)
  expected = mask_utils.iou(dt_rles, gt_rles, crowd)
  got = rle.iou(dt_counts, gt_counts, size).numpy()
  assert np.array_equal(got, expected.astype(np.float32)), 'iou differs'
  t_coco = timeit(lambda: mask_utils.iou(dt_rles, gt_rles, crowd),
                  repeats=repeats)
  t_rle = timeit(lambda: rle.iou(dt_counts, gt_counts, size), repeats=repeats)
  return {'pycocotools_s': t_coco, 'rle_s': t_rle,
          'ratio_vs_pycocotools': t_coco / t_rle,
          'pairs_with_overlap': float((expected > 0).mean())}


def bench_merge(gt_rles, dt_rles, repeats: int) -> dict:
  size = (HEIGHT, WIDTH)
  gt_counts = tf.constant([r['counts'] for r in gt_rles])
  pairs = [tf.constant([d['counts'], g['counts']])
           for d, g in zip(dt_rles, gt_rles)]
  union = rle.merge(gt_counts, size).numpy()
  assert union == mask_utils.merge(gt_rles)['counts'], 'merge differs'
  for i in (0, len(pairs) - 1):
    assert rle.merge(pairs[i], size, intersect=True).numpy() == (
        mask_utils.merge([dt_rles[i], gt_rles[i]], intersect=True)['counts'])
  t_coco_union = timeit(lambda: mask_utils.merge(gt_rles), repeats=repeats)
  t_rle_union = timeit(lambda: rle.merge(gt_counts, size), repeats=repeats)
  t_coco_pairs = timeit(lambda: [
      mask_utils.merge([d, g], intersect=True)
      for d, g in zip(dt_rles, gt_rles)], repeats=repeats)
  t_rle_pairs = timeit(lambda: [rle.merge(p, size, intersect=True)
                                for p in pairs], repeats=repeats)
  return {'union_pycocotools_s': t_coco_union, 'union_rle_s': t_rle_union,
          'union_ratio_vs_pycocotools': t_coco_union / t_rle_union,
          'pairs_pycocotools_s': t_coco_pairs, 'pairs_rle_s': t_rle_pairs,
          'pairs_ratio_vs_pycocotools': t_coco_pairs / t_rle_pairs}


# ---------------------------------------------------------------- end to end


def make_manual_dir(work: str, num_images: int, seed: int = 0) -> str:
  """One SA-1B-like tar of full-size images (cached)."""
  from segment_anything_tfds.tools import fake_data  # pylint: disable=g-import-not-at-top
  manual_dir = os.path.join(work, f'manual_{num_images}')
  tar = os.path.join(manual_dir, 'sa_000000.tar')
  if os.path.exists(tar):
    return manual_dir
  os.makedirs(manual_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  print(f'generating {num_images} SA-1B-sized images into {manual_dir} ...',
        flush=True)
  pool = blob_masks(rng, height=HEIGHT, width=WIDTH, num_masks=3 * NUM_MASKS)
  pool_anns = [fake_data.annotation(rng, m.astype(bool), i)
               for i, m in enumerate(pool)]
  jpegs = [fake_data.jpeg_bytes(rng, HEIGHT, WIDTH) for _ in range(4)]
  records = []
  for k in range(num_images):
    image_id = k + 1
    n = int(rng.integers(90, 111))
    anns = []
    for j, i in enumerate(rng.choice(len(pool_anns), n, replace=False)):
      ann = dict(pool_anns[i], id=image_id * 1000 + j)
      anns.append(ann)
    record = {'image': {'image_id': image_id, 'width': WIDTH,
                        'height': HEIGHT, 'file_name': f'sa_{image_id}.jpg'},
              'annotations': anns}
    records.append((image_id, jpegs[k % len(jpegs)],
                    json.dumps(record).encode()))
  fake_data.write_tar(tar, records)
  return manual_dir


def prepare(work: str, num_images: int) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  manual_dir = make_manual_dir(work, num_images)
  data_dir = os.path.join(work, f'data_{num_images}')
  builder = tfds.builder('segment_anything', config='all', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return data_dir


def _naive_masks(counts: np.ndarray, height, width, index: np.ndarray,
                 out: int) -> np.ndarray:
  """Today's loaders: decode every mask at full size, then pick and resize."""
  rles = [{'size': [int(height), int(width)], 'counts': c} for c in counts]
  full = mask_utils.decode(rles).transpose(2, 0, 1)[index]  # [K, H, W]
  scale = out / max(int(height), int(width))
  mh, mw = int(int(height) * scale + 0.5), int(int(width) * scale + 0.5)
  small = tf.image.resize(full[..., None], (mh, mw), method='nearest')
  small = small[..., 0].numpy()
  return np.pad(small, [(0, 0), (0, out - mh), (0, out - mw)])


def naive_dataset(ds, *, batch_size: int, image_size: int, mask_size: int,
                  num_masks: int, seed: int) -> tf.data.Dataset:
  from segment_anything_tfds.read import masks as masks_lib  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.read import sampling  # pylint: disable=g-import-not-at-top

  def fn(example):
    ann = example['annotations']
    n = tf.size(ann['segmentation']['counts'])
    index = sampling.choose_tf(tf.ones([n], tf.bool), num_masks,
                               sampling.key_tf(seed,
                                               masks_lib.image_id(example),
                                               sampling.SAMPLE))
    masks = tf.numpy_function(
        lambda c, h, w, i: _naive_masks(c, h, w, i, mask_size),
        [ann['segmentation']['counts'], example['image']['height'],
         example['image']['width'], index], tf.uint8)
    masks = tf.reshape(masks, [-1, mask_size, mask_size])
    pad = num_masks - tf.shape(masks)[0]
    masks = tf.pad(tf.cast(masks, tf.float32), [[0, pad], [0, 0], [0, 0]])
    image = sam_inputs._resized_image(  # pylint: disable=protected-access
        example['image']['content'],
        tf.cast(example['image']['height'], tf.int64),
        tf.cast(example['image']['width'], tf.int64), image_size)
    image = sam_steps._layout_image(  # pylint: disable=protected-access
        image, sam_layouts.SamOptions(image_size=image_size),
        backend.tf_ops())
    return {'image': image}, masks

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(
      batch_size).prefetch(tf.data.AUTOTUNE)


def images_per_s(ds: tf.data.Dataset, *, batch_size: int, warmup: int,
                 batches: int) -> float:
  it = iter(ds)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - start)


def bench_e2e(work: str, num_images: int, batches: int) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = prepare(work, num_images)
  batch_size = 4
  options = dict(image_size=1024, mask_size=256, num_masks=64, seed=0)

  def load(decoders):
    return tfds.load('segment_anything/all', split='train',
                     data_dir=data_dir, decoders=decoders).repeat()

  fast = sam_inputs.sam_dataset(
      load({'image': {'content': tfds.decode.SkipDecoding()}}),
      batch_size=batch_size, **options)
  full_jpeg = sam_inputs.sam_dataset(
      load({'image': {'content': tfds.decode.SkipDecoding()}}),
      batch_size=batch_size, fast_jpeg=False, **options)
  naive = naive_dataset(load(None), batch_size=batch_size, **options)
  fast_ips = images_per_s(fast, batch_size=batch_size, warmup=2,
                          batches=batches)
  full_jpeg_ips = images_per_s(full_jpeg, batch_size=batch_size, warmup=2,
                               batches=batches)
  naive_ips = images_per_s(naive, batch_size=batch_size, warmup=1,
                           batches=max(2, batches // 4))
  # Masks only: the decode part of the SAM pipeline, without the image.
  from segment_anything_tfds.read import masks as masks_lib  # pylint: disable=g-import-not-at-top
  masks_only = load({'image': {'content': tfds.decode.SkipDecoding()}}).map(
      lambda ex: masks_lib.decode_masks(ex, num_masks=64,
                                        output_size=(256, 256), seed=0)[
                                            'annotations']['mask'],
      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  masks_ips = images_per_s(masks_only, batch_size=1, warmup=4,
                           batches=batches * batch_size)
  return {'sam_pipeline_images_per_s': fast_ips,
          'naive_images_per_s': naive_ips, 'speedup': fast_ips / naive_ips,
          'sam_pipeline_full_jpeg_decode_images_per_s': full_jpeg_ips,
          'speedup_full_jpeg_decode': full_jpeg_ips / naive_ips,
          'decode_masks_only_images_per_s': masks_ips,
          'images_in_dataset': num_images}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--only', default='full,low,check,iou,merge,e2e',
                 help='Comma-separated subset of full,low,check,iou,merge,'
                 'e2e.')
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--images', type=int, default=8,
                 help='Images in the prepared end-to-end dataset.')
  p.add_argument('--batches', type=int, default=12,
                 help='Timed batches (of 4 images) of the SAM pipeline.')
  p.add_argument('--work', default='/tmp/segment_anything_tfds_bench')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--speckle', type=float, default=0.01,
                 help='Also run full/low on "complex" masks: the blobs with'
                      ' this fraction of their pixels flipped (0: skip).')
  args = p.parse_args(argv)
  # Beam (used to prepare the dataset) parses sys.argv: hide our flags.
  sys.argv = sys.argv[:1]
  only = set(args.only.split(','))

  print(f'machine: {platform.machine()}, {os.cpu_count()} cores,'
        f' TF {tf.__version__}, GPUs: {len(tf.config.list_physical_devices("GPU"))}')
  results = {}
  if only & {'full', 'low', 'check', 'iou', 'merge'}:
    rng = np.random.default_rng(args.seed)
    masks = blob_masks(rng, height=HEIGHT, width=WIDTH, num_masks=NUM_MASKS)
    rles = encode(masks)
    if only & {'iou', 'merge'}:
      dt_rles = encode(shifted(masks))
    counts = tf.constant([r['counts'] for r in rles])
    lengths = [len(r['counts']) for r in rles]
    print(f'input: {NUM_MASKS} masks of {HEIGHT}x{WIDTH}, mean area'
          f' {masks.mean() * 100:.2f}% of the image, counts'
          f' {np.mean(lengths):.0f} chars on average (max {max(lengths)})')
    del masks
    if 'full' in only:
      r = results['full'] = bench_full(rles, counts, args.repeats)
      print(f'full resolution: rle {r["rle_s"] * 1e3:.1f} ms,'
            f' pycocotools {r["pycocotools_s"] * 1e3:.1f} ms'
            f' ({r["pycocotools_nhw_s"] * 1e3:.1f} ms as [N,H,W]) ->'
            f' {r["speedup"]:.2f}x ({r["speedup_vs_nhw"]:.2f}x),'
            f' {r["masks_per_s"]:.0f} masks/s')
    if 'low' in only:
      r = results['low'] = bench_low(rles, counts, args.repeats)
      print(f'256x256: rle {r["rle_s"] * 1e3:.1f} ms, pycocotools+index'
            f' {r["pycocotools_index_s"] * 1e3:.1f} ms'
            f' (+tf.image.resize {r["pycocotools_tf_resize_s"] * 1e3:.1f} ms)'
            f' -> {r["speedup"]:.1f}x ({r["speedup_vs_tf_resize"]:.1f}x),'
            f' {r["masks_per_s"]:.0f} masks/s; numpy path'
            f' ({r["numpy_decoder"]}) {r["numpy_s"] * 1e3:.2f} ms ->'
            f' {r["numpy_speedup"]:.0f}x')
    if 'check' in only:
      r = results['check'] = bench_check(rles, args.repeats)
      c = (f'C {r["c_s"] * 1e3:.3f} ms ({r["c_ns_per_char"]:.2f} ns/char)'
           if 'c_s' in r else 'C not built')
      print(f'build-time check of {r["chars"]} characters: {c}; Python'
            f' reference {r["python_s"] * 1e3:.1f} ms'
            f' ({r["python_ns_per_char"]:.0f} ns/char)')
    if 'iou' in only:
      r = results['iou'] = bench_iou(rles, dt_rles, args.repeats)
      print(f'iou, 100 x 100 masks ({r["pairs_with_overlap"] * 100:.1f}% of'
            f' pairs overlap): rle {r["rle_s"] * 1e3:.1f} ms, pycocotools'
            f' {r["pycocotools_s"] * 1e3:.1f} ms ->'
            f' {r["ratio_vs_pycocotools"]:.2f}x')
    if 'merge' in only:
      r = results['merge'] = bench_merge(rles, dt_rles, args.repeats)
      print(f'merge, union of 100 masks: rle {r["union_rle_s"] * 1e3:.1f} ms,'
            f' pycocotools {r["union_pycocotools_s"] * 1e3:.1f} ms ->'
            f' {r["union_ratio_vs_pycocotools"]:.2f}x; 100 intersections of 2'
            f' masks: rle {r["pairs_rle_s"] * 1e3:.1f} ms, pycocotools'
            f' {r["pairs_pycocotools_s"] * 1e3:.1f} ms ->'
            f' {r["pairs_ratio_vs_pycocotools"]:.3f}x')
    if args.speckle > 0 and only & {'full', 'low'}:
      rng = np.random.default_rng(args.seed + 1)
      masks = blob_masks(rng, height=HEIGHT, width=WIDTH, num_masks=NUM_MASKS)
      masks ^= ((rng.random(masks.shape) < args.speckle) & (masks > 0)
                ).astype(np.uint8)
      rles = encode(masks)
      counts = tf.constant([r['counts'] for r in rles])
      del masks
      chars = np.mean([len(r['counts']) for r in rles])
      if 'full' in only:
        r = results['full_complex'] = bench_full(rles, counts, args.repeats)
        print(f'complex masks ({chars:.0f} chars on average), full:'
              f' rle {r["rle_s"] * 1e3:.1f} ms, pycocotools'
              f' {r["pycocotools_s"] * 1e3:.1f} ms -> {r["speedup"]:.2f}x')
      if 'low' in only:
        r = results['low_complex'] = bench_low(rles, counts, args.repeats)
        print(f'complex masks ({chars:.0f} chars on average), 256x256:'
              f' rle {r["rle_s"] * 1e3:.1f} ms, pycocotools+index'
              f' {r["pycocotools_index_s"] * 1e3:.1f} ms ->'
              f' {r["speedup"]:.1f}x; numpy path {r["numpy_s"] * 1e3:.2f} ms'
              f' -> {r["numpy_speedup"]:.0f}x')
  if 'e2e' in only:
    r = results['e2e'] = bench_e2e(args.work, args.images, args.batches)
    print(f'end to end (1024 image, 64 masks at 256x256):'
          f' SAM pipeline {r["sam_pipeline_images_per_s"]:.2f} images/s,'
          f' naive {r["naive_images_per_s"]:.2f} images/s ->'
          f' {r["speedup"]:.1f}x; with fast_jpeg=False'
          f' {r["sam_pipeline_full_jpeg_decode_images_per_s"]:.2f} images/s'
          f' -> {r["speedup_full_jpeg_decode"]:.1f}x; decode_masks only'
          f' {r["decode_masks_only_images_per_s"]:.1f} images/s')
  print(json.dumps(results, indent=1))
  return results


if __name__ == '__main__':
  main()
