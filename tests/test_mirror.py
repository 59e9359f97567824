"""`segment-anything-tfds mirror`: tars fetched on Beam workers into a bucket.

The tars come from the loopback HTTP server (with injected faults), the
workers are separate processes (`_worker_pool`), and the bucket is the GCS
emulator (`_gcs_server`), written through epath as on Dataflow. Each run must
leave byte-identical tars under their names, and a rerun must download
nothing.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

from apache_beam.options import pipeline_options
import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds import checksums
from segment_anything_tfds import cli
from segment_anything_tfds import errors
from segment_anything_tfds import fake_data
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import mirror
from segment_anything_tfds import options as options_lib

import _gcs_server
from _loopback_server import LoopbackServer
from _worker_pool import WorkerPool

NAMES = [f'sa_00000{i}.tar' for i in range(3)]
BUCKET = 'mirror'
OPTIONS = options_lib.DownloadOptions(backoff=0.01, retries=3, timeout=10)


@pytest.fixture(scope='module')
def tars(tmp_path_factory) -> dict[str, bytes]:
  rng = np.random.default_rng(11)
  out_dir = tmp_path_factory.mktemp('tars')
  out = {}
  for i, name in enumerate(NAMES):
    records = [(j, *fake_data.image_record(rng, j, height=10, width=8,
                                           num_masks=2))
               for j in range(10 * i + 1, 10 * i + 4)]
    fake_data.write_tar(out_dir / name, records)
    out[name] = (out_dir / name).read_bytes()
  return out


@pytest.fixture
def server(tars):
  with LoopbackServer(tars) as srv:
    yield srv


def _links_dir(path: pathlib.Path, rows, tars=None) -> pathlib.Path:
  path.mkdir(parents=True, exist_ok=True)
  fake_data.write_links(path / links_lib.LINKS_FILE_NAME, rows)
  if tars is not None:
    (path / checksums.CHECKSUMS_FILE_NAME).write_text(''.join(
        f'{hashlib.sha256(tars[n]).hexdigest()}  {n}\n' for n, _ in rows))
  return path


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  with _gcs_server.serving(tmp_path_factory.mktemp('gcs'), BUCKET) as server:
    yield server


@pytest.fixture(scope='module')
def pool(gcs, tmp_path_factory):
  wp = WorkerPool(tmp_path_factory.mktemp('mirror_pool'), env=gcs.env())
  wp.start()
  yield wp
  assert wp.stop() == []


def test_workers_mirror_into_a_bucket_and_a_rerun_fetches_nothing(
    server, tars, gcs, pool, tmp_path):
  a, b, c = NAMES
  server.add_fault(a, 'status', 500)  # Then a success.
  server.add_fault(b, 'cut', 3000)  # Resumed with a Range request.
  links = _links_dir(tmp_path / 'links', [(n, server.url(n)) for n in NAMES],
                     tars)
  dest = f'gs://{BUCKET}/sa1b'
  plan = mirror.plan(links, checksums_file=links /
                     checksums.CHECKSUMS_FILE_NAME)
  beam_options = pipeline_options.PipelineOptions(pool.beam_flags())
  started = pool.workers_started()
  summary = mirror.mirror(plan, dest, beam_options=beam_options,
                          options=OPTIONS, stage_dir=str(tmp_path / 'stage'))
  assert pool.workers_started() > started  # Fetched in a worker process.
  assert sorted(summary.fetched) == NAMES and summary.present == ()
  for n in NAMES:
    assert gcs.download(BUCKET, f'sa1b/{n}') == tars[n]
  assert [g[3] for g in server.gets(a)] == [500, 200]
  assert [(g[2], g[3]) for g in server.gets(b)] == [(None, 200),
                                                    ('bytes=3000-', 206)]
  assert len(server.gets(c)) == 1
  listed = sorted(p.rsplit('/', 1)[-1] for p in tf.io.gfile.glob(f'{dest}/*'))
  assert listed == sorted(NAMES + [n + '.verified' for n in NAMES])  # No .part.
  assert not list((tmp_path / 'stage').glob('*.tar'))  # Worker disk freed.

  # A rerun: everything is there and verified; nothing is requested and no
  # pipeline starts.
  server.log.clear()
  started = pool.workers_started()
  again = mirror.mirror(plan, dest, beam_options=beam_options,
                        options=OPTIONS, stage_dir=str(tmp_path / 'stage'))
  assert again.fetched == () and sorted(again.present) == NAMES
  assert server.log == []
  assert pool.workers_started() == started


def test_a_tar_that_keeps_failing_is_one_error_from_the_workers(
    server, tars, pool, tmp_path):
  a = NAMES[0]
  server.add_fault(a, 'cut', 2000)
  server.add_fault(a, 'status', 500, times=2)  # retries=3: spent, with the cut.
  links = _links_dir(tmp_path / 'links', [(a, server.url(a))])
  dest = tmp_path / 'dest'
  with pytest.raises(Exception) as e:
    mirror.mirror(mirror.plan(links), dest,
                  beam_options=pipeline_options.PipelineOptions(
                      pool.beam_flags()),
                  options=OPTIONS, stage_dir=str(tmp_path / 'stage'))
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.DownloadError), repr(e.value)[:1000]
  assert error.message.startswith(f'{a} from 127.0.0.1:{server.port}: gave'
                                  ' up after 3 attempts')
  assert 'HTTP 500' in error.message and 'a rerun resumes it' in error.message
  assert not (dest / a).exists()  # Only a whole tar bears its name.
  # The worker kept the partial download: a rerun resumes it.
  assert (tmp_path / 'stage' / (a + '.part')).stat().st_size == 2000


def _cli(capsys, *args) -> tuple[int, str, str]:
  code = cli.main(['mirror', '--no_progress', *args])
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_mirrors_into_a_dir_and_refetches_only_a_damaged_tar(
    server, tars, tmp_path, capsys):
  links = _links_dir(tmp_path / 'links', [(n, server.url(n)) for n in NAMES])
  dest = tmp_path / 'dest'
  common = ['--links', os.fspath(links / links_lib.LINKS_FILE_NAME),
            '--dest', os.fspath(dest), '--stage_dir',
            os.fspath(tmp_path / 'stage'), '--download_retries', '3']
  code, out, err = _cli(capsys, *common)
  assert code == 0, err
  assert out.strip() == f'3 tars in {dest}: 3 fetched now, 0 already there'
  for n in NAMES:
    assert (dest / n).read_bytes() == tars[n]
  # A truncated copy in the destination is fetched again; the rest is not.
  (dest / NAMES[1]).write_bytes(tars[NAMES[1]][:1500])
  server.log.clear()
  code, out, err = _cli(capsys, *common)
  assert code == 0, err
  assert out.strip() == f'3 tars in {dest}: 1 fetched now, 2 already there'
  assert [g[1] for g in server.gets()] == [NAMES[1]]
  assert (dest / NAMES[1]).read_bytes() == tars[NAMES[1]]


def test_cli_expired_links_fail_before_any_request(server, tmp_path, capsys):
  links = _links_dir(tmp_path / 'links',
                     [(n, server.url(n, oe=1_000_000)) for n in NAMES])
  code, out, err = _cli(capsys, '--links', os.fspath(links), '--dest',
                        os.fspath(tmp_path / 'dest'), '--tars', '0,2')
  assert code == 1 and out == ''
  [line] = [l for l in err.splitlines() if l.strip()]
  assert line.startswith('segment-anything-tfds mirror: error: 2 of the 2'
                         ' links this build needs have expired')
  assert f'{NAMES[0]}, {NAMES[2]}, in' in line
  assert server.log == []
  assert not (tmp_path / 'dest').exists()
