"""Builds through separate Beam worker processes, as Dataflow runs them.

A worker pool (`_worker_pool.WorkerPool`) runs the Beam pipeline eagerly in
SDK worker processes: pickled DoFns, side inputs and shuffles cross process
boundaries, and nothing is shared with the launcher. Each build is compared
with the default local build of the same tars: both engines follow one plan
(`prepare/plan.py`), so they write the same shard files, byte for byte, and
the same audit.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

from apache_beam.options import pipeline_options
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors

from _worker_pool import WorkerPool, listening, worker_env
from conftest import DUMMY_DATA, make_bad_manual_dir, read_inputs

# Every test builds through a Beam worker pool.
pytestmark = pytest.mark.integration

# Several output shards (TFDS's size rule gives the tiny dummy data one), so
# that both engines' sharding is compared.
SHARDS = {'num_shards': 3}
BAD_TARS = config_lib.SegmentAnythingConfig(name='first_2', num_tars=2)


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
  """A worker pool for this module; nothing of it is left running after."""
  wp = WorkerPool(tmp_path_factory.mktemp('pool'))
  wp.start()
  yield wp
  left = wp.stop()
  assert left == [], f'worker pool processes still alive: {left}'
  assert not listening(wp.port)


def _build(data_dir, manual_dir, *, config='all', beam_flags=None, **dl):
  builder = tfds.builder('segment_anything', config=config,
                         data_dir=os.fspath(data_dir), progress=False)
  options = (pipeline_options.PipelineOptions(beam_flags)
             if beam_flags else None)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir), beam_options=options, **dl))
  return builder


def _records(builder) -> list[tuple[int, bytes, tuple[str, ...]]]:
  """(image id, JPEG bytes, RLE strings) of every record, in split order."""
  ds = builder.as_dataset(split='train', shuffle_files=False, decoders={
      'image': {'content': tfds.decode.SkipDecoding()}})
  return [(int(e['image']['image_id']), e['image']['content'],
           tuple(c.decode()
                 for c in e['annotations']['segmentation']['counts']))
          for e in tfds.as_numpy(ds)]


def _split_numbers(builder) -> dict:
  info = json.loads((pathlib.Path(builder.data_dir) / 'dataset_info.json'
                     ).read_text())
  [split] = info['splits']
  lengths = [int(n) for n in split['shardLengths']]
  return {'name': split['name'], 'num_examples': sum(lengths),
          'num_bytes': int(split['numBytes']), 'num_shards': len(lengths)}


def _shard_files(builder) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in
          pathlib.Path(builder.data_dir).glob('*.tfrecord*')}


def _audit_file(builder) -> bytes:
  return (pathlib.Path(builder.data_dir) / 'audit' / 'records.jsonl'
          ).read_bytes()


def _metadata(builder) -> dict:
  return json.loads((pathlib.Path(builder.data_dir) / 'metadata.json'
                     ).read_text())


def _complete_dirs(data_dir) -> list[str]:
  return [os.fspath(p) for p in pathlib.Path(data_dir).rglob(
      'dataset_info.json')]


def test_worker_pool_build_equals_the_local_build(pool, tmp_path):
  inputs = read_inputs(DUMMY_DATA)
  started = pool.workers_started()
  beam = _build(tmp_path / 'beam', DUMMY_DATA, beam_flags=pool.beam_flags(),
                **SHARDS)
  assert pool.workers_started() > started  # It ran in a worker process.
  local = _build(tmp_path / 'local', DUMMY_DATA, **SHARDS)

  by_engine = {}
  for name, builder in (('beam', beam), ('local', local)):
    records = _records(builder)
    ids = [i for i, _, _ in records]
    assert len(ids) == len(set(ids)), f'{name}: an image written twice'
    assert sorted(ids) == sorted(inputs), name
    for image_id, jpg, counts in records:
      js = inputs[image_id][1]
      assert jpg == inputs[image_id][0], (name, image_id)
      assert counts == tuple(a['segmentation']['counts']
                             for a in js['annotations']), (name, image_id)
    by_engine[name] = {i: (jpg, c) for i, jpg, c in records}
  assert by_engine['beam'] == by_engine['local']

  numbers = _split_numbers(beam)
  assert numbers == _split_numbers(local)
  assert _shard_files(beam) == _shard_files(local)
  assert numbers['num_examples'] == len(inputs)
  assert numbers['num_shards'] == 3
  # The audit, written by the workers ('WriteAudit'), adds up as the local one.
  audit_beam, audit_local = _metadata(beam)['audit'], _metadata(local)['audit']
  assert audit_beam == audit_local
  assert audit_beam['images_indexed'] == len(inputs)
  assert _audit_file(beam) == _audit_file(local)


def test_strict_error_crosses_the_process_boundary(pool, tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  with pytest.raises(Exception) as e:
    _build(tmp_path / 'data', manual, config=BAD_TARS,
           beam_flags=pool.beam_flags())
  # The worker's error arrives as text in the runner's exception ...
  assert not isinstance(e.value, errors.Error)
  error = errors.from_exception(e.value)
  # ... and comes back as the package's error, fields intact.
  assert isinstance(error, errors.BadInputError), repr(e.value)[:2000]
  assert error.tar == 'sa_000001.tar'
  assert error.member in ('sa_11.json', 'sa_12.jpg', 'sa_13.json',
                          'sa_14.json', 'sa_2.jpg')
  assert error.reason in ('malformed_json', 'missing_json', 'missing_jpg',
                          'zero_size', 'duplicate_id')
  assert _complete_dirs(tmp_path / 'data') == []


def _cli() -> list[str]:
  """The console script of this venv (or the module, if not installed)."""
  script = pathlib.Path(sys.executable).parent / 'segment-anything-tfds'
  if script.exists():
    return [str(script)]
  return [sys.executable, '-m', 'segment_anything_tfds']


def test_cli_prints_a_worker_error_on_one_line(pool, tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  proc = subprocess.run(
      [*_cli(), 'build', '--tars', '0-1', '--manual_dir', os.fspath(manual),
       '--data_dir', os.fspath(tmp_path / 'data'), '--no_progress',
       *pool.cli_flags()],
      capture_output=True, text=True, timeout=300, env=worker_env(),
      check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert re.fullmatch(
      r'segment-anything-tfds build: error: sa_000001\.tar:sa_\d+\.(json|jpg):'
      r' .* \[\w+\]', lines[-1]), proc.stderr[-3000:]
  # Quiet by default: the one line, not the worker's traceback.
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert len(lines) <= 3, proc.stderr[-3000:]
  assert _complete_dirs(tmp_path / 'data') == []


def test_lenient_audit_written_by_workers_is_complete(pool, tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  lenient = config_lib.lenient_config(BAD_TARS)
  beam = _build(tmp_path / 'beam', manual, config=lenient,
                beam_flags=pool.beam_flags())
  local = _build(tmp_path / 'local', manual, config=lenient)
  assert sorted(i for i, _, _ in _records(beam)) == [1, 2, 3, 10]
  audit = _metadata(beam)['audit']
  num_examples = _split_numbers(beam)['num_examples']
  assert audit['images_indexed'] - audit['skipped_images'] == num_examples == 4
  assert audit['skipped_by_reason'] == {
      'duplicate_id': 1, 'malformed_json': 1, 'missing_jpg': 1,
      'missing_json': 1, 'zero_size': 1}
  assert audit == _metadata(local)['audit']
  # One record per skip, each naming its tar and member, as the local build.
  skips = lambda b: sorted(
      (r['reason'], r['tar'], r['member'])
      for p in (pathlib.Path(b.data_dir) / 'audit').glob('*.jsonl')
      for r in map(json.loads, p.read_text().splitlines())
      if r['kind'] == 'skip')
  assert skips(beam) == skips(local) and len(skips(beam)) == 5
  assert _audit_file(beam) == _audit_file(local)
  assert _shard_files(beam) == _shard_files(local)
