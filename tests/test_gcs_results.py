"""Results and inputs in a bucket, through the CLI, against the GCS emulator.

Every command that writes a result (`--summary_json`, `--json`, `index
--out`) or reads an input (`--images`, `index --from`, `--predictions`)
may name a bucket: written through its filesystem, never into a local
folder named `gs:`, and every failure is one line. Commands whose results
are written with local file APIs (`show`, `stats`, `export`) refuse a
bucket in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import cli

import _gcs_server
import _offline
from conftest import DUMMY_DATA

pytestmark = pytest.mark.integration

BUCKET = 'sa1b'
PROG = 'segment-anything-tfds'


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  with _gcs_server.serving(tmp_path_factory.mktemp('gcs'), BUCKET) as server:
    for i in range(3):
      name = f'sa_00000{i}.tar'
      server.upload(BUCKET, f'in/{name}', (DUMMY_DATA / name).read_bytes())
    with _offline.loopback_only() as outside:
      yield server
  assert outside == [], f'reached off loopback: {outside[:5]}'


def _main(*argv) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main([str(a) for a in argv])
  return code, out.getvalue(), err.getvalue()


def _error(command: str, err: str) -> str:
  """The one error line of a failed command."""
  assert 'Traceback' not in err, err
  [line] = [l for l in err.splitlines() if l.startswith(f'{PROG} {command}:')]
  return line[len(f'{PROG} {command}: error: '):]


@pytest.fixture(scope='module')
def built(gcs):
  """tars_0 prepared into gs://sa1b/data, from the bucket's tars."""
  code, _, err = _main('build', '--tars', '0', '--manual_dir',
                       f'gs://{BUCKET}/in', '--data_dir',
                       f'gs://{BUCKET}/data', '--workers', '1',
                       '--no_progress')
  assert code == 0, err
  return f'gs://{BUCKET}/data'


@pytest.mark.parametrize('argv', [
    ['index', '--manual_dir', DUMMY_DATA, '--tars', '0', '--out',
     'gs://no-such-bucket/sub/idx.jsonl'],
    ['build', '--tars', '0', '--manual_dir', DUMMY_DATA, '--data_dir', 'LOCAL',
     '--summary_json', 'gs://no-such-bucket/sub/s.json'],
])
def test_a_result_in_a_missing_bucket_is_one_line_not_a_hang(
    gcs, tmp_path, argv):
  """TensorFlow's making of folders retried without end there; a bucket
  has no folders to make."""
  argv = [tmp_path / 'd' if a == 'LOCAL' else a for a in argv]
  res = subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', *map(str, argv),
       '--no_progress'], env=gcs.env(), cwd=tmp_path, capture_output=True,
      text=True, timeout=120)
  assert res.returncode == 1, res.stderr
  line = _error(argv[0], res.stderr)
  assert line.startswith('gs://no-such-bucket/sub/'), line
  assert 'cannot write' in line, line


@pytest.mark.parametrize('argv', [
    ['index', '--from', f'gs://{BUCKET}/nothere.jsonl', '--images', 'LIST'],
    ['index', '--manual_dir', f'gs://{BUCKET}/in', '--images',
     f'gs://{BUCKET}/nothere.txt'],
    ['build', '--tars', '0', '--manual_dir', f'gs://{BUCKET}/in', '--images',
     f'gs://{BUCKET}/nothere.txt'],
])
def test_a_missing_input_in_a_bucket_is_one_line(gcs, tmp_path, monkeypatch,
                                                 argv):
  """TensorFlow opens a bucket file lazily: its 404 came at the first
  read, as a traceback."""
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'l.txt').write_text('12\n')
  argv = [tmp_path / 'l.txt' if a == 'LIST' else a for a in argv]
  code, _, err = _main(*argv, '--data_dir', tmp_path / 'data',
                       '--no_progress') if argv[0] == 'build' else _main(
                           *argv, '--no_progress')
  assert code == 1
  assert _error(argv[0], err).endswith('nothere.jsonl: no such file') or (
      _error(argv[0], err).endswith('nothere.txt: no such file'))


def test_an_image_list_too_large_in_a_bucket_is_refused_unread(
    gcs, tmp_path, monkeypatch):
  """Its listed size is checked first: no byte of it is fetched (it read
  the cap and more, 320 MB for a 300 MB list, before refusing)."""
  from segment_anything_tfds.prepare import image_list
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(image_list, 'MAX_LIST_BYTES', 4096)
  gcs.upload(BUCKET, 'lists/big.txt', b'12\n' * 5000)
  gcs.clear_log()
  code, _, err = _main('index', '--manual_dir', f'gs://{BUCKET}/in',
                       '--images', f'gs://{BUCKET}/lists/big.txt',
                       '--no_progress')
  assert code == 1
  assert _error('index', err) == (
      f'gs://{BUCKET}/lists/big.txt: over 0 MiB: not an image list'
      " (SA-1B's 11 M names take 170 MB)")
  # Metadata requests only: TensorFlow reads an object's bytes by Range
  # (`/BUCKET/NAME`), gcsfs with alt=media.
  reads = [r for r in gcs.requests() if r['path'].endswith('lists/big.txt')
           and (r['range'] or 'alt=media' in r['query'])]
  assert reads == [], reads


def test_missing_predictions_in_a_bucket_are_one_line(built, tmp_path,
                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = _main('evaluate', '--tars', '0', '--data_dir', built,
                       '--predictions', f'gs://{BUCKET}/nothere.json',
                       '--no_progress')
  assert code == 1
  assert _error('evaluate', err) == (
      f'predictions file gs://{BUCKET}/nothere.json: no such file')


@pytest.mark.parametrize('command', [['build', '--manual_dir', DUMMY_DATA],
                                     ['stats', '--out', 'o']])
def test_a_data_dir_in_a_missing_bucket_is_one_line(gcs, tmp_path,
                                                    monkeypatch, command):
  monkeypatch.chdir(tmp_path)
  code, _, err = _main(command[0], '--tars', '0', '--data_dir',
                       'gs://no-such-bucket/d', *command[1:], '--no_progress')
  assert code == 1
  assert _error(command[0], err).startswith(
      '--data_dir gs://no-such-bucket/d: cannot be read:')


def test_show_refuses_a_bucket_out(built, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code, _, err = _main('show', '--tars', '0', '--data_dir', built, '--index',
                       '0', '--out', f'gs://{BUCKET}/show', '--no_progress')
  assert code == 1
  assert _error('show', err) == (
      f'gs://{BUCKET}/show: cannot write drawings (--out) there (a local path'
      ' is needed; copy the results to the bucket afterwards)')
  assert not list(tmp_path.iterdir())  # No local folder named `gs:`.


def test_reports_go_into_the_bucket(gcs, built, tmp_path, monkeypatch):
  """check-links --json and evaluate --json, written whole into the bucket;
  evaluate names its predictions as given."""
  monkeypatch.chdir(tmp_path)
  code, _, err = _main('check-links', '--manual_dir', DUMMY_DATA, '--json',
                       f'gs://{BUCKET}/res/links.json')
  assert code == 0, err
  assert json.loads(gcs.download(BUCKET, 'res/links.json'))['sa1b_tars'] == 4
  gcs.upload(BUCKET, 'preds/p.json', b'[]')
  code, _, err = _main('evaluate', '--tars', '0', '--data_dir', built,
                       '--predictions', f'gs://{BUCKET}/preds/p.json',
                       '--json', f'gs://{BUCKET}/res/e.json', '--no_progress')
  assert code == 0, err
  report = json.loads(gcs.download(BUCKET, 'res/e.json'))
  assert report['predictions'] == f'gs://{BUCKET}/preds/p.json'
  assert not list(tmp_path.iterdir())


def test_the_disk_check_uses_the_sizes_a_bucket_listing_gives(
    gcs, tmp_path, monkeypatch):
  """4 tars of ~20 kB in a bucket, built into a local data dir, need ~80 kB
  of it, not SA-1B's 10.5 GB per tar."""
  monkeypatch.chdir(tmp_path)
  for i in range(4):
    gcs.upload(BUCKET, f'four/sa_00000{i}.tar',
               (DUMMY_DATA / f'sa_00000{i % 3}.tar').read_bytes())
  from segment_anything_tfds.sources import materialize  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.sources import manual_dir  # pylint: disable=g-import-not-at-top
  found = manual_dir.find_shards(f'gs://{BUCKET}/four')
  sizes = [materialize._size(s) for _, s in sorted(found.shards.items())]  # pylint: disable=protected-access
  assert sizes == [(DUMMY_DATA / f'sa_00000{i % 3}.tar').stat().st_size
                   for i in range(4)]
