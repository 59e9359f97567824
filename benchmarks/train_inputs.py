#!/usr/bin/env python
"""Benchmarks the training-input paths: images/s for each framework.

  python benchmarks/train_inputs.py                 # the main paths, ~4 min
  python benchmarks/train_inputs.py --only decode,tf,grain0 --repeats 1

Every path but `decode` makes the same thing: KerasHub's SAM inputs (layout
'keras_hub') of 1024x1024 images with K = 64 masks at 256x256, batches of 4,
from the same SA-1B-sized images (1500x2250, 90-110 masks each, as in
`benchmarks/decode.py`), prepared by this package's builder twice: TFRecord
for tf.data, ArrayRecord for the numpy paths.

  decode    baseline: a tf.data pipeline that only decodes the same JPEGs at
            full size (TFRecord, tf.io.decode_jpeg, AUTOTUNE: every core),
            batched.
  tf        sam_inputs.load_sam_dataset(layout='keras_hub'), tf.data with
            AUTOTUNE parallelism (every core).
  grain0    numpy_inputs.grain_loader, worker_count=0 (this process).
  grain2    the same with 2 worker processes.
  torch0    torch.utils.data.DataLoader(SamDataset), num_workers=0 (if torch
  torch2    is installed); and 2 workers (spawn).
  naive     (not run by default) decode.py's naive path: tfds.load,
            pycocotools decode of every mask in a parallel
            tf.numpy_function map, sample 64, resize.
  naive_np  (not run by default) the naive numpy loader, in this process:
            pycocotools decode of every mask, sample 64, nearest resize, PIL
            image.

Each path's rate is the best of --repeats runs (the machine may be shared);
its ratios to `decode` and to `tf` are computed from the same run. Worker
start-up is in the warm-up batches, not in the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, '..'))
sys.path.insert(0, _HERE)

# pylint: disable=g-import-not-at-top,wrong-import-position
from segment_anything_tfds.read import numpy_inputs
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sampling
# pylint: enable=g-import-not-at-top,wrong-import-position

BATCH = 4
OPTIONS = dict(image_size=1024, num_masks=64, seed=0, layout='keras_hub')
PATHS = ('decode', 'tf', 'grain0', 'grain2', 'torch0', 'torch2', 'naive',
         'naive_np')
DEFAULT_PATHS = PATHS[:6]


def _decode_bench():
  """benchmarks/decode.py (its data and naive path). Imported on use: it
  imports TensorFlow, which spawned Grain/PyTorch workers re-importing this
  script need not load."""
  import decode  # pylint: disable=g-import-not-at-top
  return decode


def prepare_array_record(work: str, num_images: int) -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  manual_dir = _decode_bench().make_manual_dir(work, num_images)
  data_dir = os.path.join(work, f'data_{num_images}_array_record')
  builder = tfds.builder('segment_anything', config='all', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format='array_record')
  return data_dir


def images_per_s(batches, *, warmup: int, timed: int) -> float:
  """Images/s over `timed` batches after `warmup` (start-up excluded)."""
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(timed):
    next(it)
  seconds = time.perf_counter() - start
  next(it, None)  # A finite loader ends its epoch here.
  return timed * BATCH / seconds


def _dataset(data_dir: str) -> numpy_inputs.SamDataset:
  return numpy_inputs.load_sam_data_source(
      'train', data_dir=data_dir, name='segment_anything/all', **OPTIONS)


def bench_decode(data_dir: str, timed: int) -> float:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load('segment_anything/all', split='train', data_dir=data_dir,
                 decoders={'image': {'content': tfds.decode.SkipDecoding()}})
  ds = ds.repeat().map(
      lambda ex: tf.io.decode_jpeg(ex['image']['content'], channels=3),
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)
  return images_per_s(ds, warmup=2, timed=timed)


def bench_tf(data_dir: str, timed: int) -> float:
  from segment_anything_tfds.read import sam_inputs  # pylint: disable=g-import-not-at-top
  ds = sam_inputs.load_sam_dataset('train', name='segment_anything/all',
                                   data_dir=data_dir, batch_size=BATCH,
                                   repeat=True, **OPTIONS)
  return images_per_s(ds, warmup=2, timed=timed)


def bench_grain(data_dir: str, timed: int, workers: int) -> float:
  loader = numpy_inputs.grain_loader(_dataset(data_dir), batch_size=BATCH,
                                     num_epochs=None, worker_count=workers)
  return images_per_s(loader, warmup=2 + workers, timed=timed)


def bench_torch(data_dir: str, timed: int, workers: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  dataset = _dataset(data_dir)
  warmup = 2 + workers
  # Exactly the batches read: workers then end their epoch and exit cleanly.
  sampler = torch.utils.data.RandomSampler(
      dataset, replacement=True, num_samples=(warmup + timed) * BATCH,
      generator=torch.Generator().manual_seed(0))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=BATCH, sampler=sampler, num_workers=workers,
      multiprocessing_context='spawn' if workers else None)
  return images_per_s(loader, warmup=warmup, timed=timed)


def bench_naive(data_dir: str, timed: int) -> float:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load('segment_anything/all', split='train', data_dir=data_dir)
  naive = _decode_bench().naive_dataset(
      ds.repeat(), batch_size=BATCH, image_size=1024, mask_size=256,
      num_masks=64, seed=0)
  return images_per_s(naive, warmup=1, timed=max(2, timed // 3))


def naive_np(example, opts: sam_layouts.SamOptions) -> np.ndarray:
  """The naive numpy loader: every mask at full size, then sample, resize."""
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  image, ann = example['image'], example['annotations']
  height, width = int(image['height']), int(image['width'])
  rles = [{'size': [height, width], 'counts': c}
          for c in ann['segmentation']['counts']]
  full = mask_utils.decode(rles)  # [H, W, N]: every mask.
  key = sampling.key_np(opts.seed, int(image['image_id']), sampling.SAMPLE)
  index = sampling.choose_np(np.ones(len(rles), bool), opts.num_masks, key)
  mask_h, mask_w, _ = numpy_inputs.resized_size_np(height, width,
                                                   opts.mask_size)
  rows = numpy_inputs.nearest_indices_np(height, mask_h)
  cols = numpy_inputs.nearest_indices_np(width, mask_w)
  masks = full[:, :, index][np.ix_(rows, cols)].transpose(2, 0, 1)
  pixels = numpy_inputs._resized_image_np(  # pylint: disable=protected-access
      image['content'], height, width, opts.image_size, fast_jpeg=False)
  return masks, pixels


def bench_naive_np(data_dir: str, timed: int) -> float:
  dataset = _dataset(data_dir)
  source = dataset.source
  opts = dataset.transform.options

  def batches():
    i = 0
    while True:
      yield [naive_np(source[(i + j) % len(source)], opts)
             for j in range(BATCH)]
      i += BATCH

  return images_per_s(batches(), warmup=1, timed=max(2, timed // 3))


def _load() -> str:
  return f'{os.getloadavg()[0]:.1f}'


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--only', default=','.join(DEFAULT_PATHS),
                 help=f'Comma-separated subset of {",".join(PATHS)}.')
  p.add_argument('--images', type=int, default=8,
                 help='Images in the prepared datasets.')
  p.add_argument('--batches', type=int, default=12,
                 help='Timed batches (of 4 images) per path.')
  p.add_argument('--repeats', type=int, default=3,
                 help='Runs per path; the best counts.')
  p.add_argument('--work', default='/tmp/segment_anything_tfds_bench')
  args = p.parse_args(argv)
  sys.argv = sys.argv[:1]  # Beam (preparing) parses sys.argv.
  only = args.only.split(',')
  unknown = set(only) - set(PATHS)
  if unknown:
    p.error(f'unknown paths {sorted(unknown)}')
  decode_bench = _decode_bench()
  tfrecord_dir = decode_bench.prepare(args.work, args.images)
  array_record_dir = prepare_array_record(args.work, args.images)
  print(f'machine: {platform.machine()}, {os.cpu_count()} cores, load'
        f' {_load()}; {args.images} images of'
        f' {decode_bench.HEIGHT}x{decode_bench.WIDTH}, 1024 input, 64 masks'
        ' at 256x256, batches of 4', flush=True)
  runs = {
      'decode': lambda: bench_decode(tfrecord_dir, args.batches),
      'tf': lambda: bench_tf(tfrecord_dir, args.batches),
      'grain0': lambda: bench_grain(array_record_dir, args.batches, 0),
      'grain2': lambda: bench_grain(array_record_dir, args.batches, 2),
      'torch0': lambda: bench_torch(array_record_dir, args.batches, 0),
      'torch2': lambda: bench_torch(array_record_dir, args.batches, 2),
      'naive': lambda: bench_naive(tfrecord_dir, args.batches),
      'naive_np': lambda: bench_naive_np(array_record_dir, args.batches),
  }
  results = {}
  for name in only:
    if name.startswith('torch'):
      try:
        import torch  # pylint: disable=g-import-not-at-top,unused-import
      except ImportError:
        print(f'{name}: skipped (torch is not installed)')
        continue
    rates = []
    for _ in range(args.repeats):
      rates.append(runs[name]())
      print(f'  {name}: {rates[-1]:.2f} images/s (load {_load()})',
            flush=True)
    results[name] = max(rates)
  print(f'best of {args.repeats}, load average at the end: {_load()}')
  print(f'{"path":10} {"images/s":>9} {"x decode":>9} {"x tf":>6}')
  for name, rate in results.items():
    ratios = [f'{rate / results[base]:.2f}' if base in results else '-'
              for base in ('decode', 'tf')]
    print(f'{name:10} {rate:9.2f} {ratios[0]:>9} {ratios[1]:>6}')
  print(json.dumps(results, indent=1))
  return results


if __name__ == '__main__':
  main()
