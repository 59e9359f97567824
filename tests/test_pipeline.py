"""The Beam engine (`prepare/beam.py`) on Beam's offline runner."""

import json
import os

import pytest

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import beam as beam_engine
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import rules
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.sources import manual_dir as shards_lib

from conftest import DUMMY_DATA, make_bad_manual_dir, read_inputs


def _build(manual, out, *, lenient=False, num_shards=None):
  sources = list(shards_lib.find_shards(manual).shards.values())
  out.mkdir()
  return beam_engine.build(
      sources, plan.Output(os.fspath(out), 'segment_anything', 'train',
                           num_shards=num_shards),
      lenient=lenient, hold_bytes=1 << 20, runner=runners.local_runner())


def _records(out):
  """(image id, jpg bytes, RLE strings) of every record written."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds import features  # pylint: disable=g-import-not-at-top
  spec = features.features()
  got = []
  for path in sorted(out.glob('*.tfrecord*')):
    for raw in tf.data.TFRecordDataset(os.fspath(path)):
      ex = spec.deserialize_example_np(raw.numpy(), decoders={
          'image': {'content': tfds.decode.SkipDecoding()}})
      got.append((int(ex['image']['image_id']), ex['image']['content'],
                  tuple(c.decode() for c in
                        ex['annotations']['segmentation']['counts'])))
  return got


def test_every_input_image_once_and_the_counts(tmp_path):
  inputs = read_inputs(DUMMY_DATA)
  result = _build(DUMMY_DATA, tmp_path / 'out', num_shards=3)
  got = _records(tmp_path / 'out')
  assert sorted(i for i, _, _ in got) == sorted(inputs)
  for image_id, jpg, counts in got:
    assert jpg == inputs[image_id][0]
    assert counts == tuple(a['segmentation']['counts']
                           for a in inputs[image_id][1]['annotations'])
  assert result.engine == 'beam' and len(result.shard_lengths) == 3
  assert result.images == len(inputs)
  masks = sum(len(js['annotations']) for _, js in inputs.values())
  assert result.tallies.total('masks') == masks
  assert result.counters['images_written'] == len(inputs)
  assert result.counters['masks_written'] == masks
  records = rules.read_records(tmp_path / 'out')
  assert records == result.audit
  assert sorted(r['tar'] for r in records if r['kind'] == 'shard') == [
      f'sa_00000{i}.tar' for i in range(4)]
  assert sum(r['images'] for r in records) == len(inputs)
  assert not [r for r in records if r['kind'] != 'shard']
  assert not (tmp_path / 'out' / '.beam_build').exists()


def test_lenient_skips_and_audits_every_bad_image(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  result = _build(manual, tmp_path / 'out', lenient=True)
  assert sorted(i for i, _, _ in _records(tmp_path / 'out')) == [1, 2, 3, 10]
  skips = sorted((r['reason'], r['tar'], r['member'])
                 for r in result.audit if r['kind'] == 'skip')
  assert skips == [
      (errors.DUPLICATE_ID, 'sa_000001.tar', 'sa_2.jpg'),
      (errors.MALFORMED_JSON, 'sa_000001.tar', 'sa_11.json'),
      (errors.MISSING_JPG, 'sa_000001.tar', 'sa_13.json'),
      (errors.MISSING_JSON, 'sa_000001.tar', 'sa_12.jpg'),
      (errors.ZERO_SIZE, 'sa_000001.tar', 'sa_14.json'),
  ]
  assert result.counters['skipped_duplicate_id'] == 1
  summary = rules.summarize(result.audit)
  assert summary['images_indexed'] - summary['skipped_images'] == 4


def test_strict_fails_naming_tar_and_member(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  with pytest.raises(Exception) as e:
    _build(manual, tmp_path / 'out')
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.BadInputError), e.value
  assert error.tar == 'sa_000001.tar'
  assert error.member in ('sa_11.json', 'sa_12.jpg', 'sa_13.json',
                          'sa_14.json', 'sa_2.jpg')


def test_beam_build_counts_go_to_metadata(tmp_path):
  """A Beam build's summary comes from what it wrote, not a second read."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  builder = tfds.builder('segment_anything', config='all', data_dir=tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=DUMMY_DATA, beam_runner=runners.local_runner()))
  inputs = read_inputs(DUMMY_DATA)
  build = json.loads((builder.data_path / 'metadata.json').read_text())['build']
  assert build['engine'] == 'beam'
  assert build['images'] == len(inputs) == builder.info.splits[
      'train'].num_examples
  assert build['masks'] == sum(len(js['annotations'])
                               for _, js in inputs.values())
  assert build['counters']['images_indexed'] == len(inputs)
