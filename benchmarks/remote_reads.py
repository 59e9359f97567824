#!/usr/bin/env python
"""Requests and bytes per remote tar in Beam builds: byte ranges vs seeks.

  python benchmarks/remote_reads.py                  # 2 tars x 24 images
  python benchmarks/remote_reads.py --tars 3 --images 40 --range_mib 4

Serves fake SA-1B tars (members of SA-1B's size: a ≈0.7 MB JPEG and a JSON
of 100 masks per image) from a loopback HTTP server, and builds them twice
with Beam's local runner in `disk_mode='stream'`, in the same run:

  * seeks (the baseline: `range_bytes=None`): each tar indexed header by
    header, then a seek to each member, through `http.RangeFile`;
  * ranges (the default): each tar cut into byte ranges, each read in one
    sequential pass (`streaming.py`).

It counts the server's GET requests and body bytes per tar, checks that
both builds wrote the same files, and prints requests per tar, bytes read
per byte of tar and of output, and projections to a real SA-1B tar (22 k
members, 10.5 GB) and to 1000 tars, with GCS class B operations at $0.0004
per 1000 (what reading tars in a bucket costs; links cost no operations).
The bucket rows are a model (8 MiB reads per range, see `streaming.py`),
not measured here; seeks on a bucket are assumed to cost what they cost on
a link (both read through a buffer of about 1 MiB). `--range_mib` scales
the 1 GiB ranges of a real build to the small tars here (≈10 ranges per
tar either way); a range's overhead (the look-back and the rest of its last
member) does not scale, so projections use the measured overhead per
range, not the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_REPO))
sys.path.insert(0, str(_REPO / 'tests'))  # The loopback server of the tests.
# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import config as config_lib
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.prepare import streaming
from _loopback_server import LoopbackServer
# pylint: enable=g-import-not-at-top,wrong-import-position

REAL_TAR_BYTES = 10.5e9
REAL_TAR_MEMBERS = 22_000
TARS = 1000
CLASS_B_PER_1000 = 0.0004  # GCS class B operations (reads), USD.


def one_image(rng: np.random.Generator, height: int, width: int,
              masks: int) -> tuple[bytes, dict]:
  jpg, js = fake_data.image_record(rng, 1, height=height, width=width,
                                   num_masks=masks)
  return jpg, json.loads(js)


def with_id(record: dict, image_id: int) -> bytes:
  record = dict(record, image=dict(record['image'], image_id=image_id,
                                   file_name=f'sa_{image_id}.jpg'))
  return json.dumps(record).encode()


def make_tars(out: pathlib.Path, tars: int, images: int, image) -> dict:
  jpg, record = image
  files = {}
  for t in range(tars):
    name = f'sa_{t:06d}.tar'
    ids = range(t * images + 1, (t + 1) * images + 1)
    fake_data.write_tar(out / name, [(i, jpg, with_id(record, i))
                                     for i in ids])
    files[name] = (out / name).read_bytes()
  return files


def build(data_dir: pathlib.Path, manual: pathlib.Path,
          range_bytes: int | None) -> tfds.core.DatasetBuilder:
  config = config_lib.SegmentAnythingConfig(
      name='ranges' if range_bytes else 'seeks', range_bytes=range_bytes)
  builder = tfds.builder('segment_anything', config=config,
                         data_dir=os.fspath(data_dir), progress=False,
                         download_options={'disk_mode': 'stream',
                                           'progress': False})
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual), beam_runner=runners.local_runner()))
  return builder


def record_digests(builder) -> list[str]:
  return sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                for p in pathlib.Path(builder.data_dir).glob('*.tfrecord*'))


def measure(srv: LoopbackServer, files: dict, work: pathlib.Path,
            range_bytes: int | None) -> dict:
  srv.log.clear()
  srv.sent.clear()
  started = time.perf_counter()
  builder = build(work / f'data_{range_bytes}', work / 'manual', range_bytes)
  seconds = time.perf_counter() - started
  gets = {n: len(srv.gets(n)) for n in files}
  return {'builder': builder, 'seconds': seconds, 'gets': gets,
          'sent': dict(srv.sent),
          'output': builder.info.splits['train'].num_bytes}


def report(name: str, m: dict, files: dict, members: int,
           ranges: int | None) -> dict:
  tar_bytes = sum(map(len, files.values()))
  gets = sum(m['gets'].values())
  sent = sum(m['sent'].values())
  per_tar = gets / len(files)
  print(f'{name:<7} {m["seconds"]:6.1f} s  GETs/tar {per_tar:8.1f}'
        f'  (per member {gets / members:.2f})  bytes read / tar bytes'
        f' {sent / tar_bytes:.3f}, / output bytes {sent / m["output"]:.3f}')
  out = {'gets': gets, 'sent': sent, 'tar_bytes': tar_bytes}
  if ranges:
    out['gets_per_range'] = gets / ranges
    out['extra_per_range'] = (sent - tar_bytes) / ranges
  else:
    out['gets_per_member'] = gets / members
    out['sent_per_member'] = sent / members
  return out


def project(seeks: dict, ranges: dict, read_mib: int) -> None:
  """Per real tar and per 1000 tars, from the measured constants."""
  real_ranges = math.ceil(REAL_TAR_BYTES / config_lib.RANGE_BYTES)
  rows = {
      'seeks (links; buckets alike?)': (
          seeks['gets_per_member'] * REAL_TAR_MEMBERS,
          seeks['sent_per_member'] * REAL_TAR_MEMBERS),
      'ranges, links (HTTP)': (
          ranges['gets_per_range'] * real_ranges,
          REAL_TAR_BYTES + ranges['extra_per_range'] * real_ranges),
  }
  range_bytes = REAL_TAR_BYTES / real_ranges + ranges['extra_per_range']
  rows[f'ranges, bucket ({read_mib} MiB reads; model)'] = (
      real_ranges * (math.ceil(range_bytes / (read_mib << 20)) + 1),
      REAL_TAR_BYTES + ranges['extra_per_range'] * real_ranges)
  print(f'\nprojected to a real tar ({REAL_TAR_MEMBERS} members,'
        f' {REAL_TAR_BYTES / 1e9:.1f} GB; {real_ranges} ranges of'
        f' {config_lib.RANGE_BYTES >> 20} MiB) and to {TARS} tars:')
  for name, (requests, sent) in rows.items():
    cost = requests * TARS * CLASS_B_PER_1000 / 1000
    print(f'  {name:<34} {requests:9,.0f} requests/tar'
          f'  {sent / REAL_TAR_BYTES:6.3f} bytes read per tar byte'
          f'  {requests * TARS / 1e6:8.3f} M requests'
          f'  ${cost:8.2f} if GCS class B')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tars', type=int, default=2)
  parser.add_argument('--images', type=int, default=24,
                      help='images per tar (default 24)')
  parser.add_argument('--range_mib', type=float, default=2,
                      help='range size here, MiB (default 2: ≈10 per tar)')
  parser.add_argument('--height', type=int, default=1000)
  parser.add_argument('--width', type=int, default=1500)
  parser.add_argument('--masks', type=int, default=100)
  args = parser.parse_args(argv)
  print(f'machine: {platform.platform()}, {os.cpu_count()} cores,'
        f' Python {platform.python_version()}')
  image = one_image(np.random.default_rng(0), args.height, args.width,
                    args.masks)
  range_bytes = int(args.range_mib * (1 << 20))
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    (work / 'tars').mkdir()
    files = make_tars(work / 'tars', args.tars, args.images, image)
    members = 2 * args.images * args.tars
    tar_mb = sum(map(len, files.values())) / len(files) / 1e6
    ranges = sum(len(streaming.plan(len(b), range_bytes))
                 for b in files.values())
    print(f'{args.tars} tars of {args.images} images ({tar_mb:.1f} MB each;'
          f' jpg {len(image[0]) / 1e3:.0f} kB, json'
          f' {len(with_id(image[1], 1)) / 1e3:.0f} kB); ranges of'
          f' {args.range_mib:g} MiB: {ranges / len(files):.0f} per tar')
    with LoopbackServer(files) as srv:
      (work / 'manual').mkdir()
      fake_data.write_links(work / 'manual' / links_lib.LINKS_FILE_NAME,
                            [(n, srv.url(n)) for n in files])
      seeks = measure(srv, files, work, None)
      ranged = measure(srv, files, work, range_bytes)
    same = record_digests(seeks['builder']) == record_digests(
        ranged['builder'])
    print(f'same records written by both: {same}')
    a = report('seeks', seeks, files, members, None)
    b = report('ranges', ranged, files, members, ranges)
    print(f'GETs, ranges / seeks: {b["gets"] / a["gets"]:.3f}')
  project(a, b, streaming.READ_BYTES >> 20)
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main())
