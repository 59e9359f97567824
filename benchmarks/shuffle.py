#!/usr/bin/env python
"""Measures what the Beam build shuffles per image, and projects it to SA-1B.

  pip install -e .[test]
  python benchmarks/shuffle.py                  # 32 full-size images (~2 min)
  python benchmarks/shuffle.py --images 64

What it does:
  * makes one fake SA-1B tar at full size (`prepare.make_tars`: 1500x2250
    JPEGs of ~1 MB, 90-110 masks per image), cached under --work;
  * builds it with the Beam engine on separate SDK worker processes (a
    worker pool, PortableRunner, as Dataflow runs it);
  * reads the records back and encodes, with Beam's coder, each element
    the engine's writer groups in its one big shuffle ('GroupShards':
    shard, (image id, `beam.Built`: the copy's tar and member, sizes and
    serialized example)), and the same element if it carried the local
    engine's 48-byte reference to the image's members instead;
  * projects both to SA-1B by the ratio of shuffled bytes to tar bytes, and
    prices them at Dataflow Shuffle's batch rate (--price_per_gb).

Only the writer's shuffle is counted: the pipeline's other shuffles
('ReshuffleSources', 'GroupIds') carry sources and ids, a few hundred
bytes per image at most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
sys.path.insert(0, os.path.join(HERE, '..', 'tests'))
sys.path.insert(0, HERE)

SA1B_IMAGES = 11_000_000  # ≈11 M images ...
SA1B_TAR_BYTES = 10.5e12  # ... in ≈10.5 TB of tars (the README's figures).
PRICE_PER_GB = 0.011  # Dataflow Shuffle, batch, $ per GB processed (list).


def tar_bytes(path: str) -> tuple[int, int]:
  """(images, jpg + json member bytes) of a tar."""
  images = size = 0
  with tarfile.open(path) as tar:
    for m in tar.getmembers():
      if m.isfile():
        size += m.size
        images += m.name.endswith('.jpg')
  return images, size


def build_on_workers(tar_dir: str, data_dir: str):
  """Builds the tar with the Beam pipeline on a worker pool; the builder."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  from _worker_pool import WorkerPool  # pylint: disable=g-import-not-at-top
  with WorkerPool(data_dir) as pool:
    builder = tfds.builder('segment_anything', config='first_1',
                           data_dir=data_dir, progress=False)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=tar_dir, beam_options=pipeline_options.PipelineOptions(
            pool.beam_flags())))
  return builder


def shuffled_sizes(builder) -> dict:
  """Encoded bytes per element of the engine's 'GroupShards', and with
  references instead of examples."""
  from apache_beam import coders  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import beam as beam_engine  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import local as local_build  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import rules  # pylint: disable=g-import-not-at-top
  info = builder.info.splits['train']
  coder = coders.registry.get_coder(object)  # What an untyped Map emits.
  files = [os.fspath(f) for f in info.filepaths]
  payload = element = reference = count = 0
  ref = b'\0' * local_build.ENTRY.itemsize
  copy = rules.Copy(0, 'sa_000000.tar', 'sa_1234567.jpg')
  for raw in tf.data.TFRecordDataset(files):
    example = raw.numpy()
    image_id = 1_000_000 + count
    shard = count % max(1, info.num_shards)
    payload += len(example)
    built = beam_engine.Built(copy, len(example), 100, example)
    element += len(coder.encode((shard, (image_id, built))))
    reference += len(coder.encode((shard, (image_id, ref))))
    count += 1
  return {'records': count, 'num_bytes': info.num_bytes,
          'payload': payload, 'element': element, 'reference': reference}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--work', default=os.path.join(tempfile.gettempdir(),
                                                'sa1b_shuffle_bench'))
  p.add_argument('--images', type=int, default=32)
  p.add_argument('--price_per_gb', type=float, default=PRICE_PER_GB)
  p.add_argument('--json', help='also write the figures here')
  args = p.parse_args(argv)
  import prepare  # pylint: disable=g-import-not-at-top
  tar_dir = os.path.join(args.work, f'tars_{args.images}')
  [tar] = prepare.make_tars(tar_dir, 1, args.images)
  images, raw = tar_bytes(tar)
  data_dir = tempfile.mkdtemp(prefix='data_', dir=args.work)
  t0 = time.time()
  builder = build_on_workers(tar_dir, data_dir)
  seconds = time.time() - t0
  s = shuffled_sizes(builder)
  assert s['records'] == images, (s['records'], images)
  assert s['payload'] == s['num_bytes'], s  # The split's bytes: the payloads.
  per_image = s['element'] / images
  ratio = s['element'] / raw
  projected = ratio * SA1B_TAR_BYTES
  ref_projected = s['reference'] / images * SA1B_IMAGES
  figures = {
      'images': images, 'tar_bytes_per_image': raw / images,
      'serialized_example_bytes_per_image': s['payload'] / images,
      'shuffled_bytes_per_image': per_image,
      'shuffled_over_tar_bytes': ratio,
      'reference_bytes_per_image': s['reference'] / images,
      'sa1b_shuffled_tb': projected / 1e12,
      'sa1b_shuffle_usd': projected / 1e9 * args.price_per_gb,
      'sa1b_reference_shuffled_gb': ref_projected / 1e9,
      'sa1b_reference_shuffle_usd': ref_projected / 1e9 * args.price_per_gb,
      'build_seconds': seconds,
  }
  print(f'machine: {platform.machine()}, {os.cpu_count()} cores, Python'
        f' {platform.python_version()}')
  print(f'{images} full-size images built on a worker pool in {seconds:.0f} s')
  print(f'  tar (jpg + json) bytes / image:        {raw / images:12,.0f}')
  payload, reference = s['payload'] / images, s['reference'] / images
  print(f'  serialized example bytes / image:      {payload:12,.0f}')
  print(f'  shuffled by the writer / image:        {per_image:12,.0f}'
        f'  ({ratio:.3f} x the tar bytes)')
  print(f'  the same with a 48-byte reference:     {reference:12,.0f}')
  print(f'SA-1B ({SA1B_TAR_BYTES / 1e12:.1f} TB of tars,'
        f' ≈{SA1B_IMAGES / 1e6:.0f} M images) at ${args.price_per_gb}/GB:')
  print(f'  examples shuffled:   {projected / 1e12:6.2f} TB  ->'
        f' ${figures["sa1b_shuffle_usd"]:,.0f}')
  print(f'  references shuffled: {ref_projected / 1e9:6.2f} GB  ->'
        f' ${figures["sa1b_reference_shuffle_usd"]:,.2f}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(figures, f, indent=2)


if __name__ == '__main__':
  main()
