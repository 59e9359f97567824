"""The local build: worker processes, shard parts, errors and the audit."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.prepare import local as local_build
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.sources import manual_dir as shards_lib

from conftest import DUMMY_DATA
from conftest import make_bad_manual_dir
from conftest import read_inputs
from conftest import REPO
from _worker_pool import worker_env


def _build(tmp_path, manual, *, workers, num_shards=None, lenient=False,
           monkeypatch=None, name='out'):
  """Runs `local_build.build` into tmp_path/name; returns (result, shard
  files, audit records)."""
  if monkeypatch is not None and workers > 1:  # Force the pool on tiny data.
    monkeypatch.setattr(local_build, 'POOL_SECONDS', 0)
  out = tmp_path / name
  out.mkdir()
  shards = list(shards_lib.find_shards(manual).shards.values())
  result = local_build.build(
      shards, plan.Output(
          data_dir=os.fspath(out), dataset_name='segment_anything',
          split='train', file_format='tfrecord', num_shards=num_shards),
      lenient=lenient, workers=workers, show_progress=False)
  files = sorted(p for p in out.iterdir() if '.tfrecord' in p.name)
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [f.name for f in files] + (['audit'] if result.audit else []))
  return result, files, result.audit


def _read(files):
  """(image id, jpg bytes, counts) of every record, in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  features = segment_anything_tfds.Builder(data_dir='/tmp/unused').info.features
  out = []
  for f in files:
    for raw in tf.data.TFRecordDataset(os.fspath(f)):
      ex = features.deserialize_example_np(raw.numpy(), decoders={
          'image': {'content': tfds.decode.SkipDecoding()}})
      out.append((int(ex['image']['image_id']), ex['image']['content'],
                  tuple(ex['annotations']['segmentation']['counts'])))
  return out


def test_workers_write_the_same_bytes_as_one_process(tmp_path, monkeypatch):
  inputs = read_inputs(DUMMY_DATA)
  one, files1, _ = _build(tmp_path, DUMMY_DATA, workers=1, num_shards=3,
                          name='one')
  two, files2, _ = _build(tmp_path, DUMMY_DATA, workers=2, num_shards=3,
                          monkeypatch=monkeypatch, name='two')
  assert one.workers == 1 and two.workers == 2
  assert [f.name for f in files1] == [f.name for f in files2] == [
      f'segment_anything-train.tfrecord-0000{i}-of-00003' for i in range(3)]
  for a, b in zip(files1, files2):
    assert a.read_bytes() == b.read_bytes()
  assert one.shard_lengths == two.shard_lengths
  assert sum(one.shard_lengths) == len(inputs)
  # Every input image exactly once, bytes and RLE strings as in the tars.
  got = _read(files2)
  assert sorted(i for i, _, _ in got) == sorted(inputs)
  for image_id, jpg, counts in got:
    assert jpg == inputs[image_id][0]
    assert counts == tuple(a['segmentation']['counts'].encode()
                           for a in inputs[image_id][1]['annotations'])
  # The order is the hash order, whatever the workers.
  ids = np.array([i for i, _, _ in got])
  assert (np.diff(plan.image_order(ids).astype(np.float64)) > 0).all()
  # Counts collected on the way: nothing is read back.
  assert two.tallies.total('masks') == sum(
      len(js['annotations']) for _, js in inputs.values())
  assert two.num_bytes == sum(f.stat().st_size for f in files2) - 16 * len(
      inputs)


def test_parts_of_one_shard_are_joined_in_order(tmp_path, monkeypatch):
  one, files1, _ = _build(tmp_path, DUMMY_DATA, workers=1, num_shards=1,
                          name='one')
  two, files2, _ = _build(tmp_path, DUMMY_DATA, workers=2, num_shards=1,
                          monkeypatch=monkeypatch, name='two')
  assert [f.name for f in files2] == [
      'segment_anything-train.tfrecord-00000-of-00001']
  assert files1[0].read_bytes() == files2[0].read_bytes()
  assert not (tmp_path / 'two' / '.local_build').exists()


def test_strict_error_from_a_worker_names_tar_and_member(tmp_path,
                                                         monkeypatch):
  manual = make_bad_manual_dir(tmp_path / 'in')
  with pytest.raises(errors.BadInputError) as e:
    _build(tmp_path, manual, workers=2, monkeypatch=monkeypatch)
  assert e.value.tar == 'sa_000001.tar'
  assert str(e.value).startswith('sa_000001.tar:sa_')
  assert not list((tmp_path / 'out').glob('*.tfrecord*'))


def test_lenient_audit_adds_up(tmp_path, monkeypatch):
  manual = make_bad_manual_dir(tmp_path / 'in')
  result, files, records = _build(tmp_path, manual, workers=2, lenient=True,
                                  monkeypatch=monkeypatch)
  from segment_anything_tfds.prepare import rules  # pylint: disable=g-import-not-at-top
  summary = rules.summarize(records)
  assert sorted(i for i, _, _ in _read(files)) == [1, 2, 3, 10]
  assert summary['images_indexed'] - summary['skipped_images'] == (
      result.images) == 4
  assert summary['skipped_by_reason'] == {
      'duplicate_id': 1, 'malformed_json': 1, 'missing_jpg': 1,
      'missing_json': 1, 'zero_size': 1}
  # Skipped when built (not in the index, nor duplicates).
  assert result.tallies.as_dict()['sa_000001.tar']['skipped'] == 2


def test_corrupt_and_empty_tars_are_skipped_whole_in_lenient_mode(tmp_path):
  rng = np.random.default_rng(3)
  manual = tmp_path / 'in'
  manual.mkdir()
  records = [(i, *fake_data.image_record(rng, i, height=10, width=8,
                                         num_masks=2)) for i in (1, 2, 3)]
  fake_data.write_tar(manual / 'sa_000000.tar', records)
  (manual / 'sa_000001.tar').write_bytes(b'<html>please log in</html>')
  (manual / 'sa_000002.tar').write_bytes(b'')
  import io, tarfile  # pylint: disable=g-import-not-at-top,multiple-import
  with tarfile.open(manual / 'sa_000003.tar', 'w') as t:
    for name in ('SA_1.JPG', 'sa_12a.jpg', 'README'):
      info = tarfile.TarInfo(name)
      info.size = 3
      t.addfile(info, io.BytesIO(b'abc'))
  with pytest.raises(errors.BadInputError, match=r'sa_000001.tar:@0: not a'
                     r' tar'):
    _build(tmp_path, manual, workers=1, name='strict')
  result, _, audit_records = _build(tmp_path, manual, workers=1,
                                    lenient=True)
  assert result.images == 3
  tar_skips = {r['tar']: r['reason'] for r in audit_records
               if r['kind'] == 'tar'}
  assert tar_skips == {'sa_000001.tar': errors.CORRUPT_TAR,
                       'sa_000002.tar': errors.CORRUPT_TAR,
                       'sa_000003.tar': errors.NO_IMAGES}
  no_images = next(r for r in audit_records if r['tar'] == 'sa_000003.tar'
                   and r['kind'] == 'tar')
  assert 'SA_1.JPG' in no_images['message'] and 'README' in no_images['message']


def test_nothing_to_write_says_why(tmp_path):
  manual = tmp_path / 'in'
  manual.mkdir()
  (manual / 'sa_000001.tar').write_bytes(b'')
  with pytest.raises(errors.SourceError, match='nothing to write: 1 tars'
                     ' offered 0 images'):
    _build(tmp_path, manual, workers=1, lenient=True)


def test_builder_records_the_build_in_metadata(tmp_path):
  builder = tfds.builder('segment_anything', config='all',
                         data_dir=tmp_path / 'data', progress=False)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  meta = json.loads((pathlib.Path(builder.data_dir) / 'metadata.json'
                     ).read_text())
  inputs = read_inputs(DUMMY_DATA)
  assert meta['build']['images'] == len(inputs) == builder.info.splits[
      'train'].num_examples
  assert meta['build']['masks'] == sum(
      len(js['annotations']) for _, js in inputs.values())
  assert sorted(meta['build']['per_tar']) == [f'sa_00000{i}.tar'
                                              for i in range(4)]
  assert not list(pathlib.Path(builder.data_dir).glob('.local_build*'))


# ------------------------------------------- killed and concurrent builds
#
# Real `build` commands in their own process groups, on scale tars (benchmarks/
# fake_tars.py) big enough for the pool and a write step of a few seconds.

_WAIT = 180.0  # Bound on each wait for a build's progress or end.
_GONE_WITHIN = 10.0  # Seconds for a dead build's processes to go.


@pytest.fixture(scope='module')
def scale_manual(tmp_path_factory) -> pathlib.Path:
  """Two tars of 4000 small images: ≈35 MB, worth worker processes."""
  manual = tmp_path_factory.mktemp('scale')
  with pytest.MonkeyPatch.context() as mp:
    mp.syspath_prepend(str(REPO / 'benchmarks'))
    import fake_tars  # pylint: disable=g-import-not-at-top
    fake_tars.make_scale_tars(os.fspath(manual), 2, 4000)
  # Worth worker processes for the write step.
  assert 8000 * local_build._SECONDS_PER_IMAGE >= local_build.POOL_SECONDS  # pylint: disable=protected-access
  return manual


class _Builds:
  """Starts `build` commands; kills whatever of them is left at the end."""

  def __init__(self, tmp_path, manual):
    self.data_dir = tmp_path / 'data'
    self.config_dir = self.data_dir / 'segment_anything' / 'tars_0-1'
    self._tmp = tmp_path
    self._manual = manual
    self._groups = []

  def start(self, name: str):
    """A `build` with 2 workers; stdout and stderr go to files `name.*`."""
    with open(self._tmp / f'{name}.out', 'wb') as out, open(
        self._tmp / f'{name}.err', 'wb') as err:
      proc = subprocess.Popen(
          [sys.executable, '-m', 'segment_anything_tfds', 'build', '--tars',
           '0-1', '--manual_dir', os.fspath(self._manual), '--data_dir',
           os.fspath(self.data_dir), '--workers', '2', '--no_progress'],
          stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=worker_env(),
          start_new_session=True)
    self._groups.append(proc.pid)
    return proc

  def output(self, name: str) -> tuple[str, str]:
    return ((self._tmp / f'{name}.out').read_text(errors='replace'),
            (self._tmp / f'{name}.err').read_text(errors='replace'))

  def wait_for(self, ready, proc, what: str):
    """Polls `ready()` while `proc` runs; fails after `_WAIT` seconds."""
    deadline = time.monotonic() + _WAIT
    while not ready():
      assert proc.poll() is None, f'the build ended before {what}'
      assert time.monotonic() < deadline, f'no {what} in {_WAIT} s'
      time.sleep(0.02)

  def writing(self) -> bool:
    """Whether a build writes shard parts now."""
    return bool(list(self.config_dir.glob('incomplete.*/.local_build/*')))

  def close(self):
    for pgid in self._groups:
      try:
        os.killpg(pgid, signal.SIGKILL)
      except ProcessLookupError:
        pass


@pytest.fixture
def builds(tmp_path, scale_manual):
  b = _Builds(tmp_path, scale_manual)
  try:
    yield b
  finally:
    b.close()


def _alive(procs) -> list:
  """The processes of `procs` still running (zombies are dead)."""
  out = []
  for p in procs:
    try:
      if p.status() != psutil.STATUS_ZOMBIE:
        out.append(p)
    except psutil.NoSuchProcess:
      pass
  return out


def _gone_within(procs, seconds: float) -> list:
  """Waits up to `seconds` for `procs` to end; returns those still alive."""
  deadline = time.monotonic() + seconds
  while _alive(procs) and time.monotonic() < deadline:
    time.sleep(0.1)
  return _alive(procs)


def _workers(proc) -> list:
  return [p for p in psutil.Process(proc.pid).children(recursive=True)
          if 'spawn_main' in ' '.join(p.cmdline())]


def test_workers_end_when_the_build_process_is_killed(builds):
  proc = builds.start('build')
  builds.wait_for(builds.writing, proc, 'write step')
  family = psutil.Process(proc.pid).children(recursive=True)
  assert len(_workers(proc)) == 2, family
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(_WAIT)
  left = _gone_within(family, _GONE_WITHIN)
  assert not left, [(p.pid, p.cmdline()) for p in left]


def test_a_killed_worker_fails_the_build_in_one_line(builds):
  proc = builds.start('build')
  builds.wait_for(builds.writing, proc, 'write step')
  family = psutil.Process(proc.pid).children(recursive=True)
  os.kill(_workers(proc)[0].pid, signal.SIGKILL)
  assert proc.wait(_WAIT) == 1
  _, err = builds.output('build')
  assert 'Traceback' not in err, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines[-1].startswith(
      'segment-anything-tfds build: error: a worker process of the build was'
      ' killed by SIGKILL (the out-of-memory killer sends it'), err
  assert 'run the build again' in lines[-1]
  assert sum('error' in l for l in lines) == 1, err
  assert not _gone_within(family, _GONE_WITHIN)
  assert not list(builds.config_dir.iterdir())  # No dataset, lock or parts.


def test_concurrent_builds_into_one_data_dir_build_once(builds):
  """The second build waits for the first, then reuses its dataset."""
  first = builds.start('first')
  builds.wait_for(builds.writing, first, 'write step')
  # Hold the first build mid-write until the second has reached the data dir.
  os.killpg(first.pid, signal.SIGSTOP)
  try:
    second = builds.start('second')
    builds.wait_for(lambda: 'waiting for it' in builds.output('second')[1],
                    second, 'waiting message')
  finally:
    os.killpg(first.pid, signal.SIGCONT)
  assert first.wait(_WAIT) == 0, builds.output('first')[1]
  assert second.wait(_WAIT) == 0, builds.output('second')[1]
  out1, err1 = builds.output('first')
  out2, err2 = builds.output('second')
  assert 'Already prepared' not in out1
  assert out2.startswith('Already prepared; reused.'), out2
  assert 'images:    8,000' in out1 and 'images:    8,000' in out2
  waiting = [l for l in err2.splitlines() if 'warning' in l]
  assert waiting == [
      f'segment-anything-tfds: warning: another build (pid {first.pid}) is'
      f' preparing {builds.config_dir / "2.0.0"}; waiting for it to'
      ' finish'], err2
  assert 'Traceback' not in err1 + err2
  assert sorted(p.name for p in builds.config_dir.iterdir()) == ['2.0.0']


def test_a_worker_imports_neither_tensorflow_nor_tfds(tmp_path):
  """What a worker process runs (its module, the state it unpickles, an
  index and a write of a part) in a fresh process: no TensorFlow, no TFDS,
  no Beam (issue 20: workers that import TFDS cost more than the work);
  an image list too."""
  script = textwrap.dedent(f"""
      import pickle, sys
      from segment_anything_tfds.prepare import image_list
      from segment_anything_tfds.prepare import local
      from segment_anything_tfds.sources import manual_dir
      found = manual_dir.find_shards({str(DUMMY_DATA)!r})
      sources = list(found.shards.values())
      state = pickle.loads(pickle.dumps(
          (sources, 'tfrecord', False, 1 << 20, {str(tmp_path / 'spill')!r},
           image_list.make([1, 3]))))
      worker = local._Worker(*state, lambda n: None)
      indexed = worker.index(0)
      part = local.Part(0, 0, {str(tmp_path / 'part')!r}, indexed.entries,
                        {{0: indexed.dirs}}, [], range(0))
      result = pickle.loads(pickle.dumps(worker.write(part)))
      assert result.records == len(indexed.entries) == 2, result
      heavy = {{'tensorflow', 'tensorflow_datasets', 'apache_beam'}}
      print('HEAVY', sorted(heavy & set(sys.modules)))
  """)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path,
                       env=worker_env())
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'HEAVY []' in out.stdout, out.stdout


def _beam_build(tmp_path, manual, *, lenient):
  """The Beam engine on the same input: its audit records."""
  from segment_anything_tfds.prepare import beam as beam_engine  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import runners  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'beam'
  out.mkdir()
  shards = list(shards_lib.find_shards(manual).shards.values())
  return beam_engine.build(
      shards, plan.Output(os.fspath(out), 'segment_anything', 'train'),
      lenient=lenient, hold_bytes=1 << 20,
      runner=runners.local_runner()).audit


def _edited_manual_dir(tmp_path, edits):
  """One tar of images 5, 6 and 7, edited: `edits` gives (image id, field,
  value) set in the image's annotations[1]."""
  rng = np.random.default_rng(4)
  entries = []
  for image_id in (5, 6, 7):
    jpg, js = fake_data.image_record(rng, image_id, height=20, width=30,
                                     num_masks=2)
    record = json.loads(js)
    for edited, field, value in edits:
      if edited == image_id:
        record['annotations'][1][field] = value
    entries.append((image_id, jpg, json.dumps(record).encode()))
  manual = tmp_path / 'in'
  manual.mkdir()
  fake_data.write_tar(manual / 'sa_000000.tar', entries)
  return manual


def _bad_numbers_manual_dir(tmp_path):
  """One tar: images 5 and 6 with numbers infinite in float32, 7 clean."""
  return _edited_manual_dir(tmp_path, [(5, 'predicted_iou', 1e300),
                                       (6, 'point_coords', [[1e39, 1e39]])])


_INFINITE_SKIPS = [
    {'kind': 'skip', 'reason': 'bad_value', 'tar': 'sa_000000.tar',
     'member': 'sa_5.json', 'message': 'annotations[1].predicted_iou 1e+300'
     ' is infinite as float32, the type the dataset stores it in (largest:'
     ' 3.4028235e38)'},
    {'kind': 'skip', 'reason': 'bad_value', 'tar': 'sa_000000.tar',
     'member': 'sa_6.json', 'message': 'annotations[1].point_coords 1e+39 is'
     ' infinite as float32, the type the dataset stores it in (largest:'
     ' 3.4028235e38)'},
]


def test_numbers_infinite_in_float32_are_refused_by_both_engines(tmp_path):
  """A tar's number that float32 stores as infinity (it became `Infinity`
  in exports and NaN in stats) is `bad_value`: strict, one line naming the
  tar, the member and the field; lenient, an audited skip, the same from
  the local and the Beam engine."""
  manual = _bad_numbers_manual_dir(tmp_path)
  with pytest.raises(errors.BadInputError) as e:
    _build(tmp_path, manual, workers=1, name='strict')
  assert str(e.value) == (
      'sa_000000.tar:sa_5.json: ' + _INFINITE_SKIPS[0]['message']
      + ' [bad_value]')
  result, files, records = _build(tmp_path, manual, workers=1, lenient=True)
  assert [i for i, _, _ in _read(files)] == [7]
  assert [r for r in records if r['kind'] == 'skip'] == _INFINITE_SKIPS
  beam_records = _beam_build(tmp_path, manual, lenient=True)
  from segment_anything_tfds.prepare import rules  # pylint: disable=g-import-not-at-top
  assert rules.audit_lines(beam_records) == rules.audit_lines(records)
  assert result.images == 1


def test_annotation_ids_repeated_in_an_image_are_refused_by_both_engines(
    tmp_path):
  """Image 6's two annotations share an id (COCO readers would keep one):
  `bad_value`, one line strict, an audited skip lenient, in both engines."""
  manual = _edited_manual_dir(tmp_path, [(6, 'id', 6000)])
  message = ('annotations[1].id 6000 is also annotations[0].id: annotation'
             ' ids must be unique within an image')
  with pytest.raises(errors.BadInputError) as e:
    _build(tmp_path, manual, workers=1, name='strict')
  assert str(e.value) == f'sa_000000.tar:sa_6.json: {message} [bad_value]'
  _, files, records = _build(tmp_path, manual, workers=1, lenient=True)
  assert [i for i, _, _ in _read(files)] == [5, 7]
  assert [r for r in records if r['kind'] == 'skip'] == [
      {'kind': 'skip', 'reason': 'bad_value', 'tar': 'sa_000000.tar',
       'member': 'sa_6.json', 'message': message}]
  from segment_anything_tfds.prepare import rules  # pylint: disable=g-import-not-at-top
  assert rules.audit_lines(_beam_build(tmp_path, manual, lenient=True)) == (
      rules.audit_lines(records))
