#!/usr/bin/env python
"""Requests and bytes per remote tar, on both engines, against seeks.

  python benchmarks/remote_reads.py                   # 2 tars x 2000 images
  python benchmarks/remote_reads.py --tars 3 --images 500 --hold_mib 1

Serves fake SA-1B tars (≈11.5 kB per image, like SA-1B's members in
number per byte of a 23 MB tar of 2,000 images; the second tar's members
shuffled) from a loopback HTTP server, and in the same run:

  * seeks (the baseline): a tar indexed header by header and each member
    read at its offset through the source's `open_random`, one request per
    read: what reading a remote tar like a local one costs (on a smaller
    tar of the same images, `--seek_images`: its cost is per member);
  * local: the default (local) engine in `disk_mode='stream'`: each tar
    read once, front to back (`tars.stream`), records spilled;
  * beam: the Beam engine (Beam's local runner), the same way.

It counts the server's GET requests and body bytes per tar, checks that
both engines wrote the same shard files, and prints requests per tar,
bytes read per byte of tar, and projections to a real SA-1B tar (22 k
members, 10.5 GB) and to 1000 tars, with GCS class B operations at
$0.0004 per 1000 (what reading tars in a bucket costs; links cost no
operations). Bucket tars are read in 8 MiB requests by their source
(`sources/`), so their row is a model, not a measurement here.
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
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import manual_dir
from segment_anything_tfds.sources import materialize
from segment_anything_tfds.tools import fake_data
from _loopback_server import LoopbackServer
# pylint: enable=g-import-not-at-top,wrong-import-position

REAL_TAR_BYTES = 10.5e9
REAL_TAR_MEMBERS = 22_000
TARS = 1000
CLASS_B_PER_1000 = 0.0004  # GCS class B operations (reads), USD.
BUCKET_READ_BYTES = 8 << 20


def make_tars(out: pathlib.Path, sizes: dict[int, int]) -> dict[str, bytes]:
  """Tars of `sizes[t]` images each; odd tars' members shuffled."""
  rng = np.random.default_rng(0)
  jpg, js = fake_data.image_record(rng, 1, height=60, width=80, num_masks=3)
  record = json.loads(js)
  files = {}
  out.mkdir(exist_ok=True)
  for t, images in sizes.items():
    name = f'sa_{t:06d}.tar'
    rows = []
    for i in range(t * images + 1, (t + 1) * images + 1):
      data = json.dumps(dict(record, image=dict(
          record['image'], image_id=i, file_name=f'sa_{i}.jpg'))).encode()
      rows.append((i, jpg, data + b' ' * (10000 - len(jpg) - len(data))))
    fake_data.write_tar(out / name, rows, rng=rng if t % 2 else None)
    files[name] = (out / name).read_bytes()
  return files


def build(data_dir: pathlib.Path, manual: pathlib.Path, *, beam: bool,
          hold_bytes: int):
  config = config_lib.SegmentAnythingConfig(name='streamed',
                                            hold_bytes=hold_bytes)
  builder = tfds.builder('segment_anything', config=config,
                         data_dir=os.fspath(data_dir), progress=False,
                         download_options={'disk_mode': 'stream',
                                           'progress': False})
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual),
      beam_runner=runners.local_runner() if beam else None))
  return builder


def seeks(manual: pathlib.Path, work: pathlib.Path) -> None:
  """The baseline: index each tar, then read every member at its offset."""
  options = options_lib.DownloadOptions(disk_mode='stream', progress=False)
  offered = list(manual_dir.find_shards(manual).shards.values())
  for source in materialize.materialize(offered, download_dir=work / 'dl',
                                        manual_dir=manual, options=options):
    index = tars_lib.index(source)
    with tars_lib.ShardReader(source) as reader:
      for pair in index.pairs:
        reader.read(pair.jpg)
        reader.read(pair.json)


def shard_digest(builder) -> str:
  paths = sorted(pathlib.Path(builder.data_dir).glob('*.tfrecord*'))
  return hashlib.sha256(b''.join(p.read_bytes() for p in paths)).hexdigest()


def measure(srv: LoopbackServer, files: dict, run) -> dict:
  srv.log.clear()
  srv.sent.clear()
  started = time.perf_counter()
  out = run()
  return {'seconds': time.perf_counter() - started, 'result': out,
          'gets': sum(len(srv.gets(n)) for n in files),
          'sent': sum(srv.sent[n] for n in files)}


def report(name: str, m: dict, files: dict, members: int) -> dict:
  tar_bytes = sum(map(len, files.values()))
  per_tar = m['gets'] / len(files)
  per_byte = m['sent'] / tar_bytes
  print(f'{name:<6} {m["seconds"]:6.1f} s  GETs/tar {per_tar:8.1f}'
        f'  (per member {m["gets"] / members:.3f})  bytes read / tar bytes'
        f' {per_byte:.3f}')
  return {'gets_per_tar': per_tar, 'gets_per_member': m['gets'] / members,
          'bytes_per_tar_byte': per_byte}


def project(rows: dict) -> None:
  print(f'\nprojected to a real tar ({REAL_TAR_MEMBERS} members,'
        f' {REAL_TAR_BYTES / 1e9:.1f} GB) and to {TARS} tars:')
  seek = rows['seeks']
  model = {
      'seeks (links or buckets)': (
          seek['gets_per_member'] * REAL_TAR_MEMBERS,
          seek['bytes_per_tar_byte']),
      'front to back, links (HTTP)': (
          max(rows['local']['gets_per_tar'], rows['beam']['gets_per_tar']),
          max(rows['local']['bytes_per_tar_byte'],
              rows['beam']['bytes_per_tar_byte'])),
      'front to back, bucket (8 MiB reads; model)': (
          math.ceil(REAL_TAR_BYTES / BUCKET_READ_BYTES), 1.0),
  }
  for name, (requests, per_byte) in model.items():
    cost = requests * TARS * CLASS_B_PER_1000 / 1000
    print(f'  {name:<42} {requests:9,.0f} requests/tar  {per_byte:6.3f}'
          f' bytes read per tar byte  {requests * TARS / 1e6:8.3f} M'
          f' requests  ${cost:8.2f} if GCS class B')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tars', type=int, default=2)
  parser.add_argument('--images', type=int, default=2000,
                      help='images per tar (default 2000)')
  parser.add_argument('--seek_images', type=int, default=100,
                      help='images of the tar read by seeks (default 100)')
  parser.add_argument('--hold_mib', type=float, default=256,
                      help='hold_bytes, MiB (default 256, the default)')
  parser.add_argument('--json', default=None, help='write the figures here')
  args = parser.parse_args(argv)
  print(f'machine: {platform.platform()}, {os.cpu_count()} cores,'
        f' Python {platform.python_version()}, load'
        f' {os.getloadavg()[0]:.2f}')
  hold = int(args.hold_mib * (1 << 20))
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    files = make_tars(work / 'tars', dict.fromkeys(range(args.tars),
                                                   args.images))
    seek_files = make_tars(work / 'seek_tars', {999: args.seek_images})
    print(f'{args.tars} tars of {args.images} images'
          f' ({sum(map(len, files.values())) / len(files) / 1e6:.1f} MB'
          f' each), hold_bytes {args.hold_mib:g} MiB; seeks on a tar of'
          f' {args.seek_images} images')
    with LoopbackServer({**files, **seek_files}) as srv:
      manual, seek_manual = work / 'manual', work / 'seek_manual'
      for folder, names in ((manual, files), (seek_manual, seek_files)):
        folder.mkdir()
        fake_data.write_links(folder / links_lib.LINKS_FILE_NAME,
                              [(n, srv.url(n)) for n in names])
      runs = {
          'seeks': measure(srv, seek_files, lambda: seeks(seek_manual,
                                                          work)),
          'local': measure(srv, files, lambda: build(
              work / 'local', manual, beam=False, hold_bytes=hold)),
          'beam': measure(srv, files, lambda: build(
              work / 'beam', manual, beam=True, hold_bytes=hold)),
      }
    same = shard_digest(runs['local']['result']) == shard_digest(
        runs['beam']['result'])
    print(f'both engines wrote the same shard files: {same}')
    rows = {'seeks': report('seeks', runs['seeks'], seek_files,
                            2 * args.seek_images)}
    for name in ('local', 'beam'):
      rows[name] = report(name, runs[name], files,
                          2 * args.images * args.tars)
    ratio = rows['local']['gets_per_member'] / rows['seeks'][
        'gets_per_member']
    print(f'GETs per member, front to back / seeks: {ratio:.5f}')
  project(rows)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=2) + '\n')
  return 0 if same else 1


if __name__ == '__main__':
  sys.exit(main())
