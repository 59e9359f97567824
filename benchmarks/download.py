#!/usr/bin/env python
"""Benchmarks downloading a tar: this package's checked, locked download vs
a plain copy of the same HTTP body.

  python benchmarks/download.py                 # a 1 GiB tar, 3 runs each
  python benchmarks/download.py --mib 256 --runs 5

One run serves a generated tar (one member of zeros) from a loopback HTTP
server and downloads it:

  * plain: `urllib.request.urlopen` + `shutil.copyfileobj` into a file, the
    least a download can do (the baseline, measured in the same run);
  * ours: `download.download_all` with default options: the `requests`
    client, the `.part` file, the lock, the checks of the finished tar
    (Content-Length, first header, end blocks) and the rename.

It prints the best wall time of each, MB/s, the ratio ours/plain, and the
growth of the peak RSS (psutil, sampled every 10 ms) during each download:
memory stays flat whatever the tar's size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loopback  # pylint: disable=g-import-not-at-top,wrong-import-position
from segment_anything_tfds.sources import download  # pylint: disable=g-import-not-at-top,wrong-import-position
from segment_anything_tfds import options  # pylint: disable=g-import-not-at-top,wrong-import-position

NAME = 'sa_000000.tar'


class _Zeros(io.RawIOBase):
  """`size` zero bytes, without holding them."""

  def __init__(self, size: int):
    super().__init__()
    self._left = size

  def readable(self) -> bool:
    return True

  def readinto(self, b) -> int:
    n = min(len(b), self._left)
    b[:n] = bytes(n)
    self._left -= n
    return n


def make_tar(path: str, size: int) -> None:
  with tarfile.open(path, 'w') as t:
    info = tarfile.TarInfo('sa_1.jpg')
    info.size = size
    t.addfile(info, io.BufferedReader(_Zeros(size), 1 << 20))


def serve(directory: str):
  return loopback.serve(directory, threaded=True)


@contextlib.contextmanager
def peak_rss():
  """Yields a dict that gets 'growth': peak RSS during the block - before."""
  proc = psutil.Process()
  before = proc.memory_info().rss
  out = {'peak': before}
  done = threading.Event()

  def sample():
    while not done.wait(0.01):
      out['peak'] = max(out['peak'], proc.memory_info().rss)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  try:
    yield out
  finally:
    done.set()
    thread.join()
    out['growth'] = out['peak'] - before


def plain(url: str, dest: str) -> None:
  with urllib.request.urlopen(url) as resp, open(dest, 'wb') as f:
    shutil.copyfileobj(resp, f, 1 << 20)


def ours(url: str, cache: str) -> None:
  res = download.download_all(
      {NAME: url}, cache, options=options.DownloadOptions(progress=False))
  if res.errors:
    raise RuntimeError(res.errors)


def timed(fn, *args) -> tuple[float, int]:
  with peak_rss() as rss:
    start = time.perf_counter()
    fn(*args)
    wall = time.perf_counter() - start
  return wall, rss['growth']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--mib', type=int, default=1024,
                      help='size of the tar in MiB (default 1024)')
  parser.add_argument('--runs', type=int, default=3,
                      help='runs of each; the best is reported (default 3)')
  args = parser.parse_args(argv)
  print(f'machine: {platform.platform()}, {os.cpu_count()} cores,'
        f' Python {platform.python_version()}')
  with tempfile.TemporaryDirectory() as work:
    src = os.path.join(work, 'www')
    os.makedirs(src)
    make_tar(os.path.join(src, NAME), args.mib << 20)
    size = os.path.getsize(os.path.join(src, NAME))
    print(f'tar: {size / 1e6:.0f} MB, {args.runs} runs each, best shown')
    results = {'plain': [], 'ours': []}
    with serve(src) as base:
      url = f'{base}/{NAME}?sig=x'
      for i in range(args.runs):
        dest = os.path.join(work, f'plain{i}.tar')
        results['plain'].append(timed(plain, url, dest))
        os.remove(dest)
        cache = os.path.join(work, f'cache{i}')
        results['ours'].append(timed(ours, url, cache))
        shutil.rmtree(cache)
  best = {k: min(w for w, _ in v) for k, v in results.items()}
  for k in ('plain', 'ours'):
    growth = max(g for _, g in results[k])
    print(f'{k:<6} {best[k]:6.2f} s  {size / best[k] / 1e6:7.0f} MB/s'
          f'  peak RSS growth {growth / 2**20:6.1f} MiB')
  print(f'ratio ours/plain (wall): {best["ours"] / best["plain"]:.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
