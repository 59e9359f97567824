"""Lazy examples: identical records, and when a build uses them."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from segment_anything_tfds import fake_data
from segment_anything_tfds import lazy
from segment_anything_tfds import runners
from segment_anything_tfds import shards
from segment_anything_tfds import tars

from conftest import DUMMY_DATA


@pytest.mark.skipif(lazy._crc32c() is None, reason='needs google-crc32c (C)')
def test_write_tfrecord_is_byte_identical_to_tensorflow(tmp_path):
  rng = np.random.default_rng(0)
  records = [rng.bytes(int(n)) for n in rng.integers(0, 5000, size=50)]
  records.append(b'')
  ours, theirs = tmp_path / 'ours.tfrecord', tmp_path / 'theirs.tfrecord'
  lazy.write_tfrecord(ours, records)
  with tf.io.TFRecordWriter(str(theirs)) as w:
    for r in records:
      w.write(r)
  assert ours.read_bytes() == theirs.read_bytes()
  assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records


def test_stand_in_refers_back_to_its_pair():
  shard = shards.find_shards(DUMMY_DATA).shards[0]
  pair = tars.index_shard(shard).pairs[0]
  with tars.ShardReader(shard) as reader:
    key, example = tars.read_example(reader, pair)
  small = lazy.stand_in(example, shard, pair)
  assert example['annotations']['bbox'].shape[0] > 0  # The input is not mutated.
  assert small['annotations']['bbox'].shape == (0, 4)
  assert len(small['image']['content']) < 1000
  blob = b'prefix' + small['image']['content'] + b'suffix'
  assert lazy.find_reference(blob) == (shard, pair)
  assert lazy.find_reference(example['image']['content']) is None


def _local_config(**kwargs):
  return runners.with_local_runner(tfds.download.DownloadConfig(**kwargs))


def test_plan_lazy_only_for_local_runs_of_local_tars_to_tfrecord():
  found = list(shards.find_shards(DUMMY_DATA).shards.values())
  tfrecord = tfds.core.file_adapters.FileFormat.TFRECORD
  planned = lazy.plan(found, _local_config(), tfrecord)
  assert planned is not None and planned.num_shards >= 1
  # The user's own shard count is kept.
  assert lazy.plan(found, _local_config(num_shards=3), tfrecord).num_shards == 3
  # ArrayRecord output, a remote runner or a streamed tar: eager.
  assert lazy.plan(found, _local_config(), 'array_record') is None
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  dataflow = tfds.download.DownloadConfig(
      beam_options=pipeline_options.PipelineOptions(['--runner=DataflowRunner']))
  assert lazy.plan(found, runners.with_local_runner(dataflow), tfrecord) is None
  streamed = found + [shards.Shard('sa_000009.tar', shards.URL,
                                     'http://127.0.0.1:9/sa_000009.tar')]
  assert lazy.plan(streamed, _local_config(), tfrecord) is None


def test_lazy_build_num_bytes_counts_the_records(prepared_dummy):
  builder = tfds.builder('segment_anything', config='all',
                         data_dir=prepared_dummy)
  split = builder.info.splits['train']
  records = sum(len(r.numpy()) for r in tf.data.TFRecordDataset(
      [str(p) for p in split.filepaths]))
  assert split.num_bytes == records
