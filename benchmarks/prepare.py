#!/usr/bin/env python
"""Benchmarks preparing SA-1B-sized tars: this package vs TFDS's builtin.

  pip install -e .[test]                        # psutil, google-crc32c, Beam...
  python benchmarks/prepare.py                  # the default run (~4 min)
  python benchmarks/prepare.py --tars 1,4 --scaling '' --skip-builtin
  python benchmarks/prepare.py --profile 4      # cProfile of one 4-tar build

What it does, in one run:
  * generates fake SA-1B tars at full size (1500x2250 JPEGs of ~1 MB, 90-110
    masks per image with real pycocotools RLE, members shuffled), cached
    under --work so reruns skip it;
  * prepares 1, 4 and 8 tars (--tars; --images-per-tar each) with this
    package's default local settings (`download_and_prepare` with only a
    manual_dir: lazy examples, see `segment_anything_tfds.lazy.plan`), and
    with TFDS's builtin `segment_anything` builder on the same tars, served
    by a loopback HTTP server that handles one request at a time (TFDS's
    extractor deadlocks if 4 x cores downloads end at once);
  * prepares the same tars with the same builder in eager mode (`ours-eager`:
    lazy mode switched off in that build's subprocess only) and checks that
    its records equal the default build's;
  * prepares the same tars with this package from a links file pointing at
    that server (downloaded first, then lazy; `links-eager` for eager), and
    checks its records too;
  * measures the plain I/O cost: read the tars and write the same bytes;
  * measures cost per image from 100 to 800 images (--scaling), lazy and
    eager, and prints an estimate of the full build on Dataflow (eager mode,
    as there) from it.

Every build runs in its own subprocess. For each it reports wall time of
`download_and_prepare`, images/s, peak RSS of the largest process of the
build's process tree and of the whole tree (psutil, sampled every 50 ms, and
the kernel's max RSS of the build process), peak disk used under the build's
data_dir (which holds the download and extraction dirs; sampled) and the
output's size.

To keep generation fast, the JPEGs and masks of each image are drawn from
pools (16 JPEGs, 600 masks); every image still has its own id, member names,
annotation ids and JSON, so the work per image is that of real SA-1B.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))

HEIGHT, WIDTH = 1500, 2250
JPEG_QUALITY = 80  # ~1 MB at 1500x2250 for the fake pictures.
NUM_JPEGS = 16
NUM_MASKS = 600
MASKS_PER_IMAGE = (90, 110)
GEN_VERSION = 1  # Bump when the generated data changes.

OURS = 'ours'  # The default builder: lazy examples for local tars.
OURS_EAGER = 'ours-eager'  # The same with lazy mode switched off.
BUILTIN = 'builtin'
OURS_LINKS = 'ours-links'  # From the links file: downloads, then lazy.
LINKS_EAGER = 'links-eager'
EAGER_KINDS = (OURS_EAGER, LINKS_EAGER)


# ---------------------------------------------------------------- data


def _pools(seed: int):
  from segment_anything_tfds import fake_data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  jpegs = [fake_data.jpeg_bytes(rng, HEIGHT, WIDTH, quality=JPEG_QUALITY)
           for _ in range(NUM_JPEGS)]
  anns = [fake_data.annotation(rng, fake_data.random_mask(rng, HEIGHT, WIDTH), 0)
          for _ in range(NUM_MASKS)]
  return jpegs, anns


def _image(rng, image_id: int, jpegs, anns) -> tuple[bytes, bytes]:
  n = int(rng.integers(MASKS_PER_IMAGE[0], MASKS_PER_IMAGE[1] + 1))
  chosen = rng.choice(len(anns), size=n, replace=False)
  annotations = [dict(anns[k], id=image_id * 1000 + i)
                 for i, k in enumerate(chosen)]
  record = {
      'image': {'image_id': image_id, 'width': WIDTH, 'height': HEIGHT,
                'file_name': f'sa_{image_id}.jpg'},
      'annotations': annotations,
  }
  return jpegs[image_id % len(jpegs)], json.dumps(record).encode()


def make_tars(tar_dir: str, num_tars: int, images_per_tar: int) -> list[str]:
  """The first `num_tars` tars under `tar_dir`, generated when missing."""
  from segment_anything_tfds import fake_data  # pylint: disable=g-import-not-at-top
  os.makedirs(tar_dir, exist_ok=True)
  paths = [os.path.join(tar_dir, f'sa_{t:06d}.tar') for t in range(num_tars)]
  missing = [t for t, p in enumerate(paths) if not os.path.exists(p)]
  if not missing:
    return paths
  t0 = time.time()
  print(f'Generating {len(missing)} tars of {images_per_tar} images in'
        f' {tar_dir} ...', flush=True)
  jpegs, anns = _pools(seed=0)
  for t in missing:
    rng = np.random.default_rng(1000 + t)
    records = []
    for k in range(images_per_tar):
      image_id = 1 + t * images_per_tar + k
      records.append((image_id, *_image(rng, image_id, jpegs, anns)))
    fake_data.write_tar(paths[t], records, rng=rng)
  print(f'  done in {time.time() - t0:.0f} s', flush=True)
  return paths


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


# ---------------------------------------------------------------- server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serve(directory: str):
  """Serves `directory` on 127.0.0.1, one request at a time."""
  handler = functools.partial(_QuietHandler, directory=directory)
  server = http.server.HTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()


def write_links(path: str, base_url: str, tar_paths) -> None:
  with open(path, 'w') as f:
    f.write('file_name\tcdn_link\n')
    for p in tar_paths:
      name = os.path.basename(p)
      f.write(f'{name}\t{base_url}/{name}?sig=fake\n')


# ---------------------------------------------------------------- measuring


def du(path: str) -> int:
  total = 0
  stack = [path]
  while stack:
    try:
      with os.scandir(stack.pop()) as it:
        for e in it:
          try:
            if e.is_dir(follow_symlinks=False):
              stack.append(e.path)
            elif e.is_file(follow_symlinks=False):
              total += e.stat(follow_symlinks=False).st_blocks * 512
          except FileNotFoundError:
            pass
    except (FileNotFoundError, NotADirectoryError):
      pass
  return total


class Sampler(threading.Thread):
  """Samples RSS of a process tree and disk use of some dirs."""

  def __init__(self, pid: int, dirs, period: float = 0.05):
    super().__init__(daemon=True)
    import psutil  # pylint: disable=g-import-not-at-top
    self._proc = psutil.Process(pid)
    self._psutil = psutil
    self._dirs = dirs
    self._period = period
    self._done = threading.Event()
    self.max_rss = 0  # Largest single process.
    self.max_tree_rss = 0  # Sum over the tree, at one instant.
    self.max_disk = 0
    self.max_procs = 1

  def run(self):
    n = 0
    while not self._done.is_set():
      try:
        procs = [self._proc] + self._proc.children(recursive=True)
      except self._psutil.NoSuchProcess:
        break
      rss = []
      for p in procs:
        try:
          rss.append(p.memory_info().rss)
        except self._psutil.Error:
          pass
      if rss:
        self.max_rss = max(self.max_rss, max(rss))
        self.max_tree_rss = max(self.max_tree_rss, sum(rss))
        self.max_procs = max(self.max_procs, len(rss))
      if n % 4 == 0:
        self.max_disk = max(self.max_disk, sum(du(d) for d in self._dirs))
      n += 1
      self._done.wait(self._period)

  def stop(self):
    self._done.set()
    self.join()
    self.max_disk = max(self.max_disk, sum(du(d) for d in self._dirs))


def run_build(spec: dict, work: str) -> dict:
  """Runs one build in a subprocess; returns its measurements."""
  data_dir = spec['data_dir']
  shutil.rmtree(data_dir, ignore_errors=True)
  os.makedirs(data_dir)
  fd, result_path = tempfile.mkstemp(suffix='.json', dir=work)
  os.close(fd)
  spec = dict(spec, result=result_path)
  cmd = [sys.executable, os.path.abspath(__file__), '--_child',
         json.dumps(spec)]
  log_path = os.path.join(work, 'logs', f'{spec["label"]}.log')
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid, [data_dir])
    sampler.start()
    rc = proc.wait()
    sampler.stop()
  with open(result_path) as f:
    text = f.read()
  os.unlink(result_path)
  result = json.loads(text) if text else {}
  if rc != 0 or 'error' in result:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    result.setdefault('error', f'exit code {rc}')
    result['log_tail'] = tail
    return result
  if spec.get('digest'):  # In its own process: it imports TensorFlow.
    result['records_sha'] = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--_digest',
         result['output_dir']], check=True, capture_output=True,
        text=True).stdout.strip().splitlines()[-1]
  result.update(
      peak_rss=sampler.max_rss, peak_tree_rss=sampler.max_tree_rss,
      peak_disk=sampler.max_disk, procs=sampler.max_procs,
      output_bytes=du(result['output_dir']),
      record_bytes=sum(
          os.path.getsize(os.path.join(result['output_dir'], n))
          for n in os.listdir(result['output_dir']) if '.tfrecord' in n),
  )
  return result


def records_digest(output_dir: str) -> str:
  """SHA-256 of the records, each re-serialized deterministically.

  TFDS serializes an example's feature map in an order that varies between
  processes, so equal datasets can differ byte for byte.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  sha = hashlib.sha256()
  for name in sorted(os.listdir(output_dir)):
    if '.tfrecord' not in name:
      continue
    with open(os.path.join(output_dir, name), 'rb') as f:
      while header := f.read(12):
        n = int.from_bytes(header[:8], 'little')
        record = f.read(n)
        f.read(4)
        sha.update(tf.train.Example.FromString(record).SerializeToString(
            deterministic=True))
  return sha.hexdigest()


def child(spec: dict) -> None:
  """Runs one build (in the benchmark's subprocess) and writes its result."""
  import resource  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from apache_beam.runners.portability import fn_api_runner  # pylint: disable=g-import-not-at-top
    kind = spec['kind']
    config_kwargs = {}
    if spec.get('workers'):
      from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
      config_kwargs['beam_options'] = pipeline_options.PipelineOptions(
          direct_num_workers=spec['workers'],
          direct_running_mode='multi_processing')
      config_kwargs['beam_runner'] = fn_api_runner.FnApiRunner()
    if kind == BUILTIN:
      from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin  # pylint: disable=g-import-not-at-top
      config_kwargs.setdefault('beam_runner', fn_api_runner.FnApiRunner())
      # TFDS's extractor runs each tar's extraction in a pool of 4 x cores
      # threads and queues that tar's file copies in the same pool: once
      # 4 x cores tars wait on their copies, nothing runs (a deadlock, seen
      # here at 8 tars on 2 cores even with one download at a time). A pool
      # wider than the number of tars cannot fill up; it changes no work.
      from tensorflow_datasets.core.download import extractor  # pylint: disable=g-import-not-at-top
      wide = extractor._Extractor(  # pylint: disable=protected-access
          max_workers=max(os.cpu_count() or 1, spec['tars']))
      extractor.get_extractor = lambda *a, **k: wide
      make = lambda: builtin.Builder(data_dir=spec['data_dir'])
    else:
      import segment_anything_tfds  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      if kind in EAGER_KINDS:
        # Eager mode, for comparison only: the builder asks `lazy.plan`
        # whether to build lazily; a plan of None means eager. Replacing it
        # is a benchmark-only patch, confined to this build's subprocess.
        from segment_anything_tfds import lazy  # pylint: disable=g-import-not-at-top
        lazy.plan = lambda *args, **kwargs: None
      make = lambda: tfds.builder('segment_anything', data_dir=spec['data_dir'],
                                  config='all')
    config = tfds.download.DownloadConfig(manual_dir=spec['manual_dir'],
                                          **config_kwargs)
    profiler = None
    if spec.get('profile'):
      import cProfile  # pylint: disable=g-import-not-at-top
      profiler = cProfile.Profile()
      profiler.enable()
    t0 = time.perf_counter()
    builder = make()
    builder.download_and_prepare(download_config=config)
    wall = time.perf_counter() - t0
    if profiler is not None:
      profiler.disable()
      profiler.dump_stats(spec['profile'])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        'wall': wall,
        'examples': builder.info.splits['train'].num_examples,
        'output_dir': os.fspath(builder.data_dir),
        # Which mode the build ran in (None for the builtin builder).
        'lazy': getattr(builder, '_lazy', None),
        # A lazy build with google-crc32c should never import TensorFlow.
        'imported_tf': 'tensorflow' in sys.modules,
        'ru_maxrss_self': maxrss,
        'ru_maxrss_children':
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }
  except Exception as e:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    out = {'error': f'{type(e).__name__}: {e}'[:2000]}
  with open(spec['result'], 'w') as f:
    json.dump(out, f)


def io_baseline(tar_paths, work: str) -> float:
  """Seconds to read the tars and write the same bytes to new files."""
  out_dir = os.path.join(work, 'io_copy')
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(out_dir)
  t0 = time.perf_counter()
  for p in tar_paths:
    with open(p, 'rb') as src, open(
        os.path.join(out_dir, os.path.basename(p)), 'wb') as dst:
      while True:
        buf = src.read(1 << 20)
        if not buf:
          break
        dst.write(buf)
  wall = time.perf_counter() - t0
  shutil.rmtree(out_dir)
  return wall


# ---------------------------------------------------------------- report

MB = 1 << 20
GB = 1 << 30


def _row(label, tars, r, images):
  if 'error' in r:
    return f'{label:<11} {tars:>4} {images:>6}  FAILED: {r["error"][:150]}'
  return (f'{label:<11} {tars:>4} {images:>6} {r["wall"]:>8.1f} '
          f'{images / r["wall"]:>7.1f} {r["peak_rss"] / GB:>9.2f} '
          f'{r["peak_tree_rss"] / GB:>9.2f} {r["procs"]:>5} '
          f'{r["peak_disk"] / MB:>9.0f} {r["output_bytes"] / MB:>8.0f} '
          f'{r["peak_disk"] / r["output_bytes"]:>6.2f}')


HEADER = (f'{"build":<11} {"tars":>4} {"images":>6} {"wall s":>8} '
          f'{"img/s":>7} {"RSS max GB":>9} {"RSS sum GB":>9} {"procs":>5} '
          f'{"peak disk MB":>9} {"out MB":>8} {"disk/out":>6}')


SA1B_IMAGES = 11_000_000  # ~11 M images in the 1000 tars (SA-1B paper).
SA1B_BYTES = 10.5e12  # ~10.5 GB per tar.
N2_STANDARD_4 = (4, 0.19)  # vCPUs, list price in USD per hour (us-central1).
SHUFFLE_USD_PER_GB = 0.011  # Dataflow Shuffle, batch, per GB shuffled.


def dataflow_estimate(per_image: dict) -> None:
  """Prints an estimate of the full build on Dataflow from measured figures.

  Dataflow runs the builder in eager mode (`lazy.plan` is None for any
  runner but the local one): its shuffle bounds memory, and a lazy build
  would read every image from GCS twice. So the estimate uses the measured
  eager cost per image.
  """
  if OURS_EAGER not in per_image:
    print('\n(No Dataflow estimate: it needs the eager scaling builds,'
          ' skipped by --skip-eager.)')
    return
  vcpus, usd_per_hour = N2_STANDARD_4
  t = per_image[OURS_EAGER]
  worker_hours = SA1B_IMAGES * t / vcpus / 3600
  shuffle_gb = SA1B_BYTES / 1e9
  print('\n== ESTIMATE (not a measurement): the full build (1000 tars) on'
        ' Dataflow ==')
  print(f'Assumes: {t * 1e3:.1f} ms of one core per image (the marginal cost'
        ' measured above in eager mode, the mode Dataflow runs, which'
        ' includes the local runner\'s copying); one SDK process per vCPU on'
        f' n2-standard-4 workers ({vcpus} vCPU, ${usd_per_hour}/h list price),'
        ' each vCPU as fast as one core here; tars read from GCS at the rate'
        ' the CPU needs; examples shuffled once by TFDS\'s writer.')
  print(f'  {SA1B_IMAGES * t / 3600:.0f} core-hours ='
        f' {worker_hours:.0f} worker-hours -> ${worker_hours * usd_per_hour:.0f}'
        f' of workers; e.g. {worker_hours / 50:.1f} h wall on 50 workers.')
  print(f'  + Dataflow Shuffle of ~{shuffle_gb / 1e3:.1f} TB at'
        f' ${SHUFFLE_USD_PER_GB}/GB: ~${shuffle_gb * SHUFFLE_USD_PER_GB:.0f}'
        ' (or the same bytes through worker disks without Dataflow Shuffle).')
  print('  Network bound instead if a worker cannot move'
        f' {vcpus / t * 1.23 * 3:.0f} MB/s (read + shuffle + write of'
        ' ~1.23 MB per image).')
  if OURS in per_image:
    print(f'  The lazy default\'s {per_image[OURS] * 1e3:.1f} ms/image is a'
          ' local figure only: lazy mode re-reads each image from its tar at'
          ' write time, which on Dataflow would be a second (random) GCS read'
          ' per image, so Dataflow builds stay eager.')


def _ok(r):
  return r is not None and 'error' not in r


def check_requirements() -> None:
  """Exits with a hint if a package the benchmark needs is missing."""
  missing = []
  for module, package in (('psutil', 'psutil'),
                          ('apache_beam', 'apache-beam'),
                          ('pycocotools', 'pycocotools'),
                          ('PIL', 'pillow'),
                          ('segment_anything_tfds', '-e .')):
    try:
      __import__(module)
    except ImportError:
      missing.append(package)
  if missing:
    sys.exit(f'benchmarks/prepare.py needs: {" ".join(missing)}'
             " (pip install -e '.[test]' installs them all)")
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
    fast_crc = google_crc32c.implementation == 'c'
  except ImportError:
    fast_crc = False
  if not fast_crc:
    print('WARNING: google-crc32c (C extension) is missing: lazy builds fall'
          ' back to TensorFlow\'s TFRecord writer, so they import TensorFlow'
          ' and are slower than the figures in the README.', flush=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--work', default=os.path.join(
      tempfile.gettempdir(), 'segment_anything_tfds_bench'),
                      help='work dir; generated tars are cached here')
  parser.add_argument('--images-per-tar', type=int, default=25)
  parser.add_argument('--tars', default='1,4,8',
                      help='tar counts to compare with the builtin')
  parser.add_argument('--scaling', default='100,200,400,800',
                      help='image counts for the cost-per-image curve'
                      " ('' to skip)")
  parser.add_argument('--skip-builtin', action='store_true')
  parser.add_argument('--skip-links', action='store_true')
  parser.add_argument('--skip-eager', action='store_true',
                      help='skip the eager-mode builds (ours-eager,'
                      ' links-eager, eager scaling, Dataflow estimate)')
  parser.add_argument('--workers', type=int, default=0,
                      help='pass direct_num_workers=N,'
                      ' multi_processing to this package\'s builds')
  parser.add_argument('--profile', type=int, default=0,
                      help='only profile one build of N tars (cProfile)')
  parser.add_argument('--profile-kind', default=OURS,
                      choices=[OURS, OURS_EAGER])
  parser.add_argument('--json', help='also write all results here')
  parser.add_argument('--keep-data', action='store_true',
                      help='keep the prepared datasets under WORK/data')
  parser.add_argument('--_child', help=argparse.SUPPRESS)
  parser.add_argument('--_digest', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._child:  # pylint: disable=protected-access
    child(json.loads(args._child))  # pylint: disable=protected-access
    return
  if args._digest:  # pylint: disable=protected-access
    print(records_digest(args._digest))  # pylint: disable=protected-access
    return

  check_requirements()
  t_start = time.time()
  work = os.path.abspath(args.work)
  os.makedirs(work, exist_ok=True)
  ipt = args.images_per_tar
  tar_counts = [int(x) for x in args.tars.split(',') if x.strip()]
  scaling = [int(x) for x in args.scaling.split(',') if x.strip()]
  scaling_tars = [max(1, -(-n // ipt)) for n in scaling]
  max_tars = max(tar_counts + scaling_tars + [args.profile])
  tar_dir = os.path.join(work, f'tars_v{GEN_VERSION}_{ipt}')
  all_tars = make_tars(tar_dir, max_tars, ipt)

  def manual_dir(name, n, links_url=None):
    d = os.path.join(work, 'manual', name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if links_url:
      write_links(os.path.join(d, 'segment_anything_links.txt'), links_url,
                  all_tars[:n])
    else:
      for p in all_tars[:n]:
        os.symlink(p, os.path.join(d, os.path.basename(p)))
    return d

  def spec(kind, n, label, links_url=None, **kw):
    return dict(kind=kind, label=label, tars=n,
                manual_dir=manual_dir(label, n, links_url),
                data_dir=os.path.join(work, 'data', label), **kw)

  print(f'Machine: {platform.platform()}, Python {platform.python_version()},'
        f' {os.cpu_count()} CPUs, '
        f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB:.0f}'
        ' GB RAM', flush=True)

  if args.profile:
    import pstats  # pylint: disable=g-import-not-at-top
    prof = os.path.join(work, 'prepare.prof')
    r = run_build(spec(args.profile_kind, args.profile,
                       f'profile{args.profile}',
                       profile=prof, workers=args.workers), work)
    if 'error' in r:
      print(r)
      return
    print(f'{args.profile} tars: {r["wall"]:.1f} s; profile in {prof}')
    stats = pstats.Stats(prof)
    stats.sort_stats('tottime').print_stats(30)
    stats.sort_stats('cumulative').print_stats(40)
    return

  results = {'machine': {'cpus': os.cpu_count(),
                         'platform': platform.platform()},
             'images_per_tar': ipt, 'builds': []}
  stats = {n: tar_stats(all_tars[:n]) for n in set(tar_counts)}

  expected_mode = {OURS: True, OURS_LINKS: True, OURS_EAGER: False,
                   LINKS_EAGER: False}

  def record(kind, n, r):
    images = n * ipt
    results['builds'].append(dict(r, kind=kind, tars=n, images=images))
    print(_row(kind, n, r, images), flush=True)
    if 'error' in r and r.get('log_tail'):
      print('   ', r['log_tail'][-1500:].replace('\n', '\n    '))
    if _ok(r) and r['examples'] != images:
      print(f'    WARNING: {r["examples"]} examples, expected {images}')
    if _ok(r) and kind in expected_mode and r['lazy'] != expected_mode[kind]:
      print(f'    WARNING: ran {"lazy" if r["lazy"] else "eager"}, expected'
            f' {"lazy" if expected_mode[kind] else "eager"}')
    if _ok(r) and r.get('lazy') and r['imported_tf']:
      print('    NOTE: this lazy build imported TensorFlow')

  print(f'\n== Preparing {tar_counts} tars x {ipt} images ==\n{HEADER}',
        flush=True)
  table = {}
  links_note = None
  # (kind, label prefix, served from links); the digest of each of these
  # builds' records is compared with the default build's.
  kinds = [(OURS, 'ours', False)]
  if not args.skip_eager:
    kinds.append((OURS_EAGER, 'eager', False))
  if not args.skip_builtin:
    kinds.append((BUILTIN, 'builtin', True))
  if not args.skip_links:
    kinds.append((OURS_LINKS, 'links', True))
    if not args.skip_eager:
      kinds.append((LINKS_EAGER, 'linkseager', True))
  with serve(tar_dir) as url:
    for n in tar_counts:
      for kind, prefix, from_links in kinds:
        if kind in (OURS_LINKS, LINKS_EAGER) and links_note is not None:
          continue
        r = run_build(spec(kind, n, f'{prefix}{n}',
                           links_url=url if from_links else None,
                           workers=0 if kind == BUILTIN else args.workers,
                           digest=kind != BUILTIN), work)
        if (kind == OURS_LINKS and 'error' in r
            and 'downloading is not available' in r['error']):
          links_note = ('skipped: sources.materialize cannot download'
                        f' ({r["error"][:120]}...)')
          print(f'{OURS_LINKS:<11} {links_note}', flush=True)
          continue
        record(kind, n, r)
        table[kind, n] = r
        ref = table.get((OURS, n))
        if kind not in (OURS, BUILTIN) and _ok(r) and _ok(ref):
          same = r['records_sha'] == ref['records_sha']
          print(f'    records of {kind} and {OURS}:'
                f' {"identical" if same else "DIFFERENT"}', flush=True)
          r['same_records'] = same
  results['links_note'] = links_note

  # I/O baseline on the largest set.
  n = max(tar_counts)
  io_wall = min(io_baseline(all_tars[:n], work) for _ in range(3))
  io_rate = stats[n]['images'] / io_wall
  results['io'] = {'tars': n, 'wall': io_wall, 'images_per_s': io_rate}

  print('\n== Ratios (builtin / ours; ours / plain I/O) ==')
  for n in tar_counts:
    theirs = table.get((BUILTIN, n))
    parts = []
    for kind in (OURS, OURS_EAGER, OURS_LINKS, LINKS_EAGER):
      r = table.get((kind, n))
      if _ok(r) and _ok(theirs):
        parts.append(f'wall builtin/{kind} {theirs["wall"] / r["wall"]:.2f}x'
                     f' (RSS {theirs["peak_rss"] / r["peak_rss"]:.2f}x,'
                     f' disk {theirs["peak_disk"] / r["peak_disk"]:.2f}x)')
    for kind in (OURS, OURS_EAGER):
      r = table.get((kind, n))
      if _ok(r):
        rate = stats[n]['images'] / r['wall']
        parts.append(f'{kind} {rate:.1f} img/s = {rate / io_rate:.3f} of'
                     ' plain I/O')
    print(f'{n} tars: ' + '; '.join(parts))
  print(f'Plain I/O (read {n} tars, write the same bytes):'
        f' {io_wall:.2f} s = {io_rate:.0f} img/s')

  print('\n== Goals (this package\'s default builds) ==')
  goals = {}
  n = max(tar_counts)
  theirs = table.get((BUILTIN, n))
  for kind, goal, where in ((OURS, 3.0, 'local tars'),
                            (OURS_LINKS, 2.0, 'from links')):
    r = table.get((kind, n))
    if _ok(r) and _ok(theirs):
      ratio = theirs['wall'] / r['wall']
      goals[f'wall_{kind}'] = ratio
      print(f'wall builtin/{kind}, {where}, {n} tars: {ratio:.2f}x'
            f' (goal >= {goal:.0f}x): {"met" if ratio >= goal else "MISSED"}')
  for kind in (OURS, OURS_LINKS):
    rss = [table[kind, m]['peak_rss'] for m in tar_counts
           if _ok(table.get((kind, m)))]
    if rss:
      growth = max(rss) - rss[0]
      met = max(rss) <= 1.2 * GB and growth <= 0.1 * GB
      goals[f'rss_{kind}'] = rss
      print(f'peak RSS {kind}, {"/".join(str(m) for m in tar_counts)} tars:'
            f' {" / ".join(f"{x / GB:.2f}" for x in rss)} GB (goal <= 1.2 GB,'
            f' flat): {"met" if met else "MISSED"}')
  r = table.get((OURS, n))
  if _ok(r):
    ratio = r['peak_disk'] / r['output_bytes']
    goals['disk_per_output'] = ratio
    print(f'peak disk / output, {OURS}, local tars, {n} tars: {ratio:.2f}'
          f' (goal <= 1.2): {"met" if ratio <= 1.2 else "MISSED"}')
  results['goals'] = goals

  print('\n== Bytes on disk per example (records / raw jpg + json) ==')
  for n in tar_counts:
    st = stats[n]
    raw = (st['jpg_bytes'] + st['json_bytes']) / st['images']
    parts = [f'{kind} {r["record_bytes"] / r["examples"] / raw:.3f}'
             for (kind, m), r in sorted(table.items()) if m == n and _ok(r)]
    print(f'{n} tars: raw {raw / 1e6:.3f} MB/image (jpg'
          f' {st["jpg_bytes"] / st["images"] / 1e6:.3f} + json'
          f' {st["json_bytes"] / st["images"] / 1e6:.3f});'
          f' records/raw: {", ".join(parts)}')

  lo, hi = min(tar_counts), max(tar_counts)
  if lo != hi:
    print(f'\n== Marginal cost per image, {lo} -> {hi} tars'
          ' (fixed costs cancel out) ==')
    marginal = {}
    for kind in (BUILTIN, OURS, OURS_EAGER, OURS_LINKS, LINKS_EAGER):
      a, b = table.get((kind, lo)), table.get((kind, hi))
      if _ok(a) and _ok(b):
        marginal[kind] = (b['wall'] - a['wall']) / ((hi - lo) * ipt)
        print(f'{kind:<11} {marginal[kind] * 1e3:6.1f} ms/image'
              + (f' = builtin / {marginal[BUILTIN] / marginal[kind]:.2f}'
                 if kind != BUILTIN and BUILTIN in marginal else ''))
    results['marginal'] = marginal

  if scaling:
    print(f'\n== Scaling: this package, {ipt} images per tar ==\n{HEADER}'
          '   s/img  marginal s/img')
    per_image = {}
    for kind in [OURS] + ([] if args.skip_eager else [OURS_EAGER]):
      prev = None
      for images, n in zip(scaling, scaling_tars):
        label = f'scale-{kind}{n}'
        r = run_build(spec(kind, n, label, workers=args.workers), work)
        results['builds'].append(
            dict(r, kind=f'scaling-{kind}', tars=n, images=n * ipt))
        line = _row(kind, n, r, n * ipt)
        if _ok(r):
          line += f' {r["wall"] / (n * ipt):>7.4f}'
          if prev is not None:
            line += (f' {(r["wall"] - prev[1]) / (n * ipt - prev[0]):>9.4f}')
          prev = (n * ipt, r['wall'])
          if r['lazy'] != expected_mode[kind]:
            line += '  WARNING: not in the expected mode'
        print(line, flush=True)
        shutil.rmtree(os.path.join(work, 'data', label), ignore_errors=True)
      if prev is not None and len(scaling) > 1:
        first = next(b for b in results['builds']
                     if b['kind'] == f'scaling-{kind}' and _ok(b))
        per_image[kind] = ((prev[1] - first['wall'])
                           / (prev[0] - first['images']))
    dataflow_estimate(per_image)

  print(f'\nTotal benchmark time: {time.time() - t_start:.0f} s')
  if not args.keep_data:
    for label in os.listdir(os.path.join(work, 'data')):
      shutil.rmtree(os.path.join(work, 'data', label), ignore_errors=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
