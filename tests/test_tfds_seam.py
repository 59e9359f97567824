"""The TFDS internals the package relies on (`tfds_seam.py`), checked
against the installed TFDS: if one changes, these fail naming the TFDS
version."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import segment_anything_tfds
from segment_anything_tfds import features as features_lib
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.prepare import tars
from segment_anything_tfds import tfds_seam

from conftest import DUMMY_DATA

VERSION = f'TFDS {tfds.__version__}'


def test_tested_tfds_version():
  assert tfds.__version__.startswith(tfds_seam.TESTED_TFDS_VERSIONS), (
      f'{VERSION} is not a version the local build was tested with'
      f' ({tfds_seam.TESTED_TFDS_VERSIONS}); run tests/test_tfds_seam.py'
      ' and widen the pin in setup.py if it passes')


@pytest.mark.skipif(tfds_seam._crc32c() is None, reason='needs google-crc32c')
def test_tfrecord_framing_is_byte_identical_to_tensorflow(tmp_path):
  rng = np.random.default_rng(0)
  records = [rng.bytes(int(n)) for n in rng.integers(0, 5000, size=50)]
  records.append(b'')
  ours, theirs = tmp_path / 'ours.tfrecord', tmp_path / 'theirs.tfrecord'
  tfds_seam.write_records(ours, tfds.core.FileFormat.TFRECORD, records)
  with tf.io.TFRecordWriter(str(theirs)) as w:
    for r in records:
      w.write(r)
  assert ours.read_bytes() == theirs.read_bytes()
  # The same records given in pieces (as the local build writes them).
  pieces = tmp_path / 'pieces.tfrecord'
  tfds_seam.write_records(pieces, tfds.core.FileFormat.TFRECORD,
                          ((r[:7], r[7:100], r[100:]) for r in records))
  assert pieces.read_bytes() == theirs.read_bytes()


@pytest.mark.skipif(tfds_seam._crc32c() is None, reason='needs google-crc32c')
def test_tfrecord_writer_finishes_partial_writes(tmp_path, monkeypatch):
  """A write may take only part of what it was given (a signal, a quota)."""
  writev = os.writev
  calls = []

  def short_writev(fd, buffers):
    calls.append(len(buffers))
    total = sum(len(b) for b in buffers)
    keep, cut = [], max(1, total // 3)  # A third, or one byte.
    for b in buffers:
      keep.append(memoryview(b)[:cut])
      cut -= len(keep[-1])
    return writev(fd, [b for b in keep if len(b)])

  monkeypatch.setattr(os, 'writev', short_writev)
  rng = np.random.default_rng(1)
  records = [rng.bytes(int(n)) for n in rng.integers(0, 3000, size=30)]
  ours, theirs = tmp_path / 'ours.tfrecord', tmp_path / 'theirs.tfrecord'
  tfds_seam.write_records(ours, tfds.core.FileFormat.TFRECORD,
                          ((r[:5], b'', r[5:]) for r in records))
  with tf.io.TFRecordWriter(str(theirs)) as w:
    for r in records:
      w.write(r)
  assert len(calls) > 10, calls  # It did take many writes ...
  assert ours.read_bytes() == theirs.read_bytes()  # ... and wrote all.


def test_serializer_matches_tfds_features(tmp_path):
  shard = shards.find_shards(DUMMY_DATA).shards[0]
  pair = tars.index(shard).pairs[0]
  with tars.ShardReader(shard) as r:
    _, example = tars.read_example(r, pair)
  features = features_lib.features()
  ours = tfds_seam.Serializer(features)(example)
  theirs = features.serialize_example(example)
  # The same proto (TFDS's own map order varies by process), decoded alike.
  assert tf.train.Example.FromString(ours) == tf.train.Example.FromString(
      theirs), f'{VERSION}: ExampleSerializer changed'
  assert tf.train.Example.FromString(theirs).SerializeToString(
      deterministic=True) == ours, VERSION


def test_number_of_shards_follows_tfds():
  # TFDS 4.9's rule: the most shards (a power of two, at most 512, or 1024
  # and its multiples for huge splits) that keep shards over 64 MiB.
  for size, n, want in ((10 << 20, 100, 1), (300 << 20, 1000, 4),
                        (5 << 30, 10000, 64), (20 << 30, 100, 64)):
    got = tfds_seam.number_of_shards(
        total_size=size, num_examples=n, min_shard_size=64 << 20,
        max_shard_size=1 << 30)
    assert got == want, f'{VERSION}: shard count rule changed ({got})'


def test_shard_names_are_the_builders(tmp_path):
  builder = segment_anything_tfds.Builder(data_dir=tmp_path, config='all')
  ours = tfds_seam.filename_template(
      builder.data_dir, dataset_name='segment_anything', split='train',
      file_format=tfds.core.FileFormat.TFRECORD)
  theirs = builder._get_filename_template('train')  # pylint: disable=protected-access
  for i, n in ((0, 1), (3, 16)):
    assert os.fspath(tfds_seam.shard_path(ours, i, n)) == os.fspath(
        theirs.sharded_filepath(shard_index=i, num_shards=n)), VERSION
  assert os.fspath(tfds_seam.shard_path(ours, 3, 16)).endswith(
      'segment_anything-train.tfrecord-00003-of-00016'), VERSION


def test_array_record_adapter_writes_readable_files(tmp_path):
  pytest.importorskip('array_record')
  records = [b'a', b'', b'xyz' * 100]
  path = tmp_path / 'x.array_record-00000-of-00001'
  tfds_seam.write_records(path, tfds.core.FileFormat.ARRAY_RECORD, records)
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource([os.fspath(path)])
  assert [source[i] for i in range(len(source))] == records, VERSION


def test_split_info_lists_the_files_written(tmp_path):
  template = tfds_seam.filename_template(
      tmp_path, dataset_name='segment_anything', split='train',
      file_format='tfrecord')
  info = tfds_seam.split_info(name='train', shard_lengths=[3, 4],
                              num_bytes=100, template=template)
  assert info.num_examples == 7 and info.num_shards == 2, VERSION
  assert [os.fspath(p) for p in info.filepaths] == [
      os.fspath(tfds_seam.shard_path(template, i, 2)) for i in range(2)], (
          VERSION)


def test_builtin_builder_is_tfds_own():
  builtin = tfds_seam.builtin_builder()
  assert builtin.name == 'segment_anything', VERSION
  assert str(builtin.VERSION).startswith('1.'), VERSION
  assert builtin is not segment_anything_tfds.Builder


def test_log_hooks_are_the_ones_tfds_calls():
  """The builder's own start and end lines replace TFDS's, by name."""
  for hook in ('_log_download_bytes', '_log_download_done'):
    assert callable(getattr(tfds.core.DatasetBuilder, hook, None)), (
        f'{VERSION}: no DatasetBuilder.{hook}')
    assert getattr(segment_anything_tfds.Builder, hook) is getattr(
        tfds_seam.LogHooks, hook)


@pytest.mark.parametrize('first', ['ours', 'tfds'])
def test_the_provider_answers_for_the_name_without_importing_the_builder(
    first):
  """Registered in either import order; the builder's module (and with it
  the engines) is imported only when TFDS asks for the name."""
  imports = ['import segment_anything_tfds',
             'import tensorflow_datasets as tfds']
  script = textwrap.dedent(f"""
      import sys
      {imports[0] if first == 'ours' else imports[1]}
      {imports[1] if first == 'ours' else imports[0]}
      builder = ('segment_anything_tfds.segment_anything'
                 '.segment_anything_dataset_builder')
      assert builder not in sys.modules
      assert 'segment_anything_tfds.prepare.local' not in sys.modules
      cls = tfds.builder_cls('segment_anything')
      assert cls is sys.modules[builder].Builder, cls
      assert 'apache_beam' not in sys.modules
      print('OK')
  """)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, f'{VERSION}: {out.stderr[-2000:]}'
  assert out.stdout.strip() == 'OK'
