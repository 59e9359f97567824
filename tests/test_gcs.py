"""gs:// manual_dir and data_dir against a bucket that answers like GCS.

`_gcs_server.GcsServer` runs the gcp-storage-emulator on loopback, with a
TLS front for TensorFlow's GCS client (whose endpoints are fixed). Every
code path the package and TFDS use for gs:// reaches it:

  TF's gs:// file system   tf.io.gfile, epath on a machine with TensorFlow,
                           TFDS's TFRecord writer and reader (via the front)
  gcsfs                    the package's bucket sources (fsspec), which read
                           the tars; epath's fsspec backend
                           (EPATH_USE_TF=false)
  google-cloud-storage     Beam's own gs:// file system ('WriteAudit')

Builds from a gs:// manual_dir into a gs:// data_dir, locally and on a
worker pool, must hold exactly what a build from a local dir holds. Python
connections and name lookups are watched: nothing but loopback is reached.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil

from apache_beam.options import pipeline_options
from etils.epath import gpath
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import links as links_lib

import _gcs_server
import _offline
from _worker_pool import WorkerPool
from conftest import DUMMY_DATA, built_images, read_inputs

# Every test runs the GCS emulator.
pytestmark = pytest.mark.integration

BUCKET = 'sa1b'
TARS = [f'sa_00000{i}.tar' for i in range(3)]
CONFIG = config_lib.tars_config('0-2')
TF_AGENT = 'TSL'  # TF's GCS client (tsl/platform/cloud).


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """The server, with the tars in gs://sa1b/in, and the environment set."""
  with _gcs_server.serving(tmp_path_factory.mktemp('gcs'), BUCKET) as server:
    for name in TARS:
      server.upload(BUCKET, f'in/{name}', (DUMMY_DATA / name).read_bytes())
    with _offline.loopback_only() as outside:
      yield server
  assert outside == [], f'reached off loopback: {outside[:5]}'


@pytest.fixture(scope='module')
def baseline(tmp_path_factory) -> dict:
  """What the three tars hold, read with the stdlib from a local copy."""
  local = tmp_path_factory.mktemp('local_tars')
  for name in TARS:
    shutil.copy(DUMMY_DATA / name, local / name)
  return {i: (jpg, tuple(a['segmentation']['counts']
                         for a in js['annotations']))
          for i, (jpg, js) in read_inputs(local).items()}


def _build(data_dir: str, manual_dir: str, *, config=CONFIG,
           **download_config):
  # workers=1: a local build of bucket tars would start a process per core.
  # check_disk off: a bucket tar's size is not asked for, so the disk check
  # assumes SA-1B's 10.5 GB per tar and would fail on a small disk.
  builder = tfds.builder('segment_anything', config=config,
                         data_dir=data_dir, progress=False, workers=1,
                         download_options={'check_disk': False})
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, **download_config))
  return builder


def _examples(data_dir: str) -> dict:
  """The prepared split, read back by a new builder (from data_dir)."""
  builder = tfds.builder('segment_anything', config=CONFIG,
                         data_dir=data_dir)
  assert builder.is_prepared()
  return built_images(builder)


def _tar_reads(requests) -> dict[str, list[dict]]:
  """The requests that read a tar's bytes (not its metadata), by tar name."""
  out = collections.defaultdict(list)
  for r in requests:
    name = r['path'].rsplit('/', 1)[-1]
    if r['path'].startswith('/storage/v1/'):  # Metadata: stat, list.
      continue
    if name in TARS and r['method'] == 'GET' and r['status'] in (200, 206):
      out[name].append(r)
  return out


def test_tf_gfile_reaches_the_emulator(gcs):
  """TF's own GCS client: write, stat, list, read a range, rename."""
  data = bytes(range(256)) * 9
  root = f'gs://{BUCKET}/gfile'
  with tf.io.gfile.GFile(f'{root}/a.bin', 'wb') as f:
    f.write(data)
  assert gcs.download(BUCKET, 'gfile/a.bin') == data
  assert tf.io.gfile.stat(f'{root}/a.bin').length == len(data)
  tf.io.gfile.rename(f'{root}/a.bin', f'{root}/b.bin')
  assert tf.io.gfile.listdir(root) == ['b.bin']
  with tf.io.gfile.GFile(f'{root}/b.bin', 'rb') as f:
    f.seek(1000)
    assert f.read(300) == data[1000:1300]
  assert any(r['agent'] == TF_AGENT and r['range'] for r in gcs.requests())


def test_local_build_from_and_into_a_bucket(gcs, baseline, tmp_path,
                                            monkeypatch):
  monkeypatch.chdir(tmp_path)  # A path mistaken for local would land here.
  gcs.clear_log()
  data_dir = f'gs://{BUCKET}/local_build'
  builder = _build(data_dir, f'gs://{BUCKET}/in')
  assert builder.info.metadata['build']['engine'] == 'local'
  requests = gcs.requests()
  assert _examples(data_dir) == baseline
  # Every tar was read in place, by the bucket sources (fsspec: gcsfs),
  # with Range requests.
  reads = _tar_reads(requests)
  assert sorted(reads) == TARS
  assert all(r['range'] and r['agent'].startswith('python-gcsfs')
             for rs in reads.values() for r in rs), reads
  # The records went into the bucket, nowhere else.
  names = [p.rsplit('/', 1)[-1] for p in tf.io.gfile.glob(
      f'{data_dir}/segment_anything/{CONFIG.name}/2.0.0/*.tfrecord*')]
  assert names and list(tmp_path.iterdir()) == []
  assert not pathlib.Path('gs:').exists()


def test_a_result_file_goes_into_the_bucket_whole(gcs, tmp_path,
                                                 monkeypatch, capsys):
  """`--summary_json`, `--json`, `index --out` in a bucket: written through
  its filesystem, never into a local dir named `gs:`; a bucket that
  refuses is one line naming the file."""
  from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  path = f'gs://{BUCKET}/results/summary.json'
  local.check_writable(path, 'the summary')
  local.write_whole(path, b'{"images": 11}\n', 'the summary')
  assert gcs.download(BUCKET, 'results/summary.json') == b'{"images": 11}\n'
  with pytest.raises(errors.ConfigError, match=(
      r'^gs://no-such-bucket/s.json: cannot write the summary there \(')):
    local.write_whole('gs://no-such-bucket/s.json', b'{}', 'the summary')
  # An index, tar by tar (the same part file, renamed when whole).
  from segment_anything_tfds import cli  # pylint: disable=g-import-not-at-top
  assert cli.main(['index', '--manual_dir', os.fspath(DUMMY_DATA), '--tars',
                   '0-2', '--out', f'gs://{BUCKET}/results/index.jsonl',
                   '--no_progress']) == 0
  rows = gcs.download(BUCKET, 'results/index.jsonl').decode().splitlines()
  assert sorted(json.loads(r)['image_id'] for r in rows) == [
      1, 2, 3, 11, 12, 13, 21, 22, 23]  # Every image of tars 0-2.
  assert sorted(tf.io.gfile.listdir(f'gs://{BUCKET}/results')) == [
      'index.jsonl', 'summary.json']  # No part file left.
  # And read back from there, as input (a parquet one seeks to its footer).
  listed = tmp_path.parent / f'{tmp_path.name}_list.txt'
  listed.write_text('12\n22\n99\n')
  assert cli.main(['index', '--manual_dir', os.fspath(DUMMY_DATA), '--tars',
                   '0-2', '--out', f'gs://{BUCKET}/results/index.parquet',
                   '--no_progress']) == 0
  for name in ('index.jsonl', 'index.parquet'):
    capsys.readouterr()
    assert cli.main(['index', '--from', f'gs://{BUCKET}/results/{name}',
                     '--images', os.fspath(listed), '--no_progress']) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        '2 of the 3 listed images are in 2 tars (--tars 1-2); 1 is in none:'
        ' 99'), name
  assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def pool(gcs, tmp_path_factory):
  """A worker pool whose workers reach the emulator as the tests do."""
  wp = WorkerPool(tmp_path_factory.mktemp('gcs_pool'), env=gcs.env())
  wp.start()
  yield wp
  assert wp.stop() == []


def test_worker_pool_build_from_and_into_a_bucket(gcs, pool, baseline):
  gcs.clear_log()
  data_dir = f'gs://{BUCKET}/beam_build'
  options = pipeline_options.PipelineOptions(pool.beam_flags())
  _build(data_dir, f'gs://{BUCKET}/in', beam_options=options)
  requests = gcs.requests()
  assert _examples(data_dir) == baseline
  agents = collections.Counter(r['agent'].split('/')[0] for r in requests)
  # Tars and records through TF's client; the audit ('WriteAudit') through
  # Beam's gs:// file system (google-cloud-storage).
  assert agents[TF_AGENT] and agents['gcloud-python'], agents
  assert sorted(_tar_reads(requests)) == TARS
  audit = tf.io.gfile.glob(
      f'{data_dir}/segment_anything/{CONFIG.name}/2.0.0/audit/*.jsonl')
  assert audit


def test_fsspec_backend_reads_a_bucket_manual_dir(gcs, baseline, tmp_path,
                                                  monkeypatch):
  """epath's other gs:// backend: gcsfs, chosen by EPATH_USE_TF=false."""
  monkeypatch.setenv('EPATH_USE_TF', 'false')
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  try:
    gcs.clear_log()
    _build(os.fspath(tmp_path / 'data'), f'gs://{BUCKET}/in')
    requests = gcs.requests()
  finally:
    monkeypatch.undo()
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert _examples(os.fspath(tmp_path / 'data')) == baseline
  reads = _tar_reads(requests)
  assert sorted(reads) == TARS
  assert all(r['agent'].startswith('python-gcsfs') and r['range']
             for rs in reads.values() for r in rs)


def test_a_bucket_tar_source_reads_by_few_or_exact_requests(gcs, tmp_path):
  """gcsfs as the bucket sources use it: one GET per 8 MiB front to back,
  one GET of exactly its bytes per random read."""
  blob = np.random.default_rng(6).bytes(20 << 20)
  gcs.upload(BUCKET, 'big/sa_000009.tar', blob)
  source = bucket.BucketTar('sa_000009.tar', f'gs://{BUCKET}/big/sa_000009.tar')
  gcs.clear_log()
  reader = source.open_sequential(0)
  try:
    pos = 0
    while chunk := reader.read(1 << 20):
      assert chunk == blob[pos:pos + len(chunk)]
      pos += len(chunk) + reader.skip(1 << 20)
  finally:
    reader.close()
  assert pos == len(blob)
  spans = [[int(x) for x in r['range'][len('bytes='):].split('-')]
           for r in gcs.requests() if r['method'] == 'GET' and r['range']]
  sizes = [last + 1 - first for first, last in spans]
  assert 1 < len(sizes) <= -(-len(blob) // bucket.SEQUENTIAL_READ_BYTES)
  assert all(n >= bucket.SEQUENTIAL_READ_BYTES for n in sizes[:-1]), sizes
  gcs.clear_log()
  reader = source.open_random()
  try:
    for offset in (512, 9 << 20, len(blob) - 100):
      assert reader.read_at(offset, 512) == blob[offset:offset + 512]
  finally:
    reader.close()
  assert [r['range'] for r in gcs.requests()
          if r['method'] == 'GET' and r['range']] == [
              'bytes=512-1023', f'bytes={9 << 20}-{(9 << 20) + 511}',
              f'bytes={len(blob) - 100}-{len(blob) - 1}']


def test_a_missing_bucket_tar_is_one_clear_error(gcs, tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  fake_data.write_links(manual / links_lib.LINKS_FILE_NAME, [
      (TARS[0], f'gs://{BUCKET}/in/{TARS[0]}'),
      ('sa_000001.tar', f'gs://{BUCKET}/nowhere/sa_000001.tar')])
  with pytest.raises(Exception) as e:
    _build(os.fspath(tmp_path / 'data'), os.fspath(manual),
           config=config_lib.tars_config('0-1'))
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.SourceError), repr(e.value)[:500]
  assert error.message == (
      f'sa_000001.tar: cannot open gs://{BUCKET}/nowhere/sa_000001.tar: no'
      ' such object')
  assert '\n' not in error.message
