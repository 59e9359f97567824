"""`segment-anything-tfds mirror`: tars fetched on Beam workers into a bucket.

The tars come from the loopback HTTP server (with injected faults), the
workers are separate processes (`_worker_pool`), and the bucket is the GCS
emulator (`_gcs_server`), written through epath as on Dataflow. Each run must
leave byte-identical tars under their names, and a rerun must download
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import stat
import tempfile

from apache_beam.options import pipeline_options
import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.sources import checksums
from segment_anything_tfds import cli
from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import mirror
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


@pytest.mark.integration
def test_workers_mirror_into_a_bucket_and_a_rerun_fetches_nothing(
    server, tars, gcs, pool, tmp_path):
  a, b, c = NAMES
  server.add_fault(a, 'status', 500)  # Then a success.
  server.add_fault(b, 'cut', 3000)  # Resumed with a Range request.
  links = _links_dir(tmp_path / 'links', [(n, server.url(n)) for n in NAMES],
                     tars)
  dest = f'gs://{BUCKET}/sa1b'
  plan = mirror.plan(links, checksums=os.fspath(
      links / checksums.CHECKSUMS_FILE_NAME))
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


# ------------------------------------------------------ the stage dir


NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason='making a file of another user needs root')
OTHER_UID = 65534  # nobody


@pytest.fixture
def temp_dir(tmp_path, monkeypatch) -> pathlib.Path:
  """The temp dir `tempfile` gives, shared by every local user."""
  shared = tmp_path / 'shared_tmp'
  shared.mkdir()
  os.chmod(shared, 0o1777)
  monkeypatch.setattr(tempfile, 'tempdir', os.fspath(shared))
  return shared


def _private(path: str) -> bool:
  st = os.lstat(path)
  return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
          and stat.S_IMODE(st.st_mode) == 0o700)


def test_the_default_stage_dir_is_private_to_the_user(temp_dir):
  path = mirror.default_stage_dir()
  assert path == os.fspath(temp_dir / f'segment_anything_tfds-mirror-'
                                      f'{os.geteuid()}')
  assert _private(path)
  assert mirror.default_stage_dir() == path  # Reused: resumes work.


@pytest.mark.parametrize('planted', ['other_user', 'symlink', 'open_dir'])
def test_a_planted_stage_dir_is_not_used(temp_dir, tmp_path, planted,
                                         caplog):
  if planted == 'other_user' and os.geteuid() != 0:
    pytest.skip('making a dir of another user needs root')
  path = temp_dir / f'segment_anything_tfds-mirror-{os.geteuid()}'
  if planted == 'symlink':
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir(mode=0o700)
    path.symlink_to(elsewhere)
  else:
    path.mkdir()
    os.chmod(path, 0o777)
    if planted == 'other_user':
      os.chown(path, OTHER_UID, OTHER_UID)
  with caplog.at_level(logging.WARNING):
    got = mirror.default_stage_dir()
  assert got != os.fspath(path)
  assert _private(got) and os.path.dirname(got) == os.fspath(temp_dir)
  assert f'{path} is not a private dir of this user' in caplog.text


@pytest.mark.integration
@NEEDS_ROOT
def test_a_tar_planted_in_a_shared_stage_dir_is_never_mirrored(
    server, tars, temp_dir, tmp_path):
  # Another user put a tar of their own (whole, but not the link's) where
  # this user stages downloads: it is refused, not used with 0 requests.
  a = NAMES[0]
  stage = temp_dir  # e.g. --stage_dir /tmp
  planted = stage / a
  planted.write_bytes(tars[NAMES[1]])
  os.chown(planted, OTHER_UID, OTHER_UID)
  dest = tmp_path / 'dest'
  tar = mirror.Tar(a, server.url(a))
  with pytest.raises(errors.DownloadError) as e:
    mirror.fetch_tar(tar, dest=os.fspath(dest), options=OPTIONS,
                     stage_dir=os.fspath(stage))
  assert f'{planted} belongs to uid {OTHER_UID}' in str(e.value)
  assert not (dest / a).exists()
  assert server.log == []


@pytest.mark.integration
def test_a_part_symlink_in_the_stage_dir_is_never_written_through(
    server, tars, temp_dir, tmp_path):
  a = NAMES[0]
  victim = tmp_path / 'victim'
  victim.write_bytes(b'precious')
  stage = mirror.default_stage_dir()
  os.makedirs(stage, exist_ok=True)
  os.symlink(victim, os.path.join(stage, a + '.part'))
  dest = tmp_path / 'dest'
  with pytest.raises(errors.DownloadError, match='is a symbolic link'):
    mirror.fetch_tar(mirror.Tar(a, server.url(a)), dest=os.fspath(dest),
                     options=OPTIONS)
  assert victim.read_bytes() == b'precious'
  assert not (dest / a).exists()
  assert server.log == []


@pytest.mark.integration
def test_a_part_symlink_in_a_local_dest_is_never_written_through(
    server, tars, tmp_path):
  a = NAMES[0]
  victim = tmp_path / 'victim'
  victim.write_bytes(b'precious')
  dest = tmp_path / 'dest'
  dest.mkdir()
  os.symlink(victim, dest / (a + '.part'))
  assert mirror.fetch_tar(mirror.Tar(a, server.url(a)), dest=os.fspath(dest),
                          options=OPTIONS,
                          stage_dir=os.fspath(tmp_path / 'stage')) == (
                              'fetched')
  assert victim.read_bytes() == b'precious'
  assert (dest / a).read_bytes() == tars[a]
  assert not (dest / (a + '.part')).exists()
