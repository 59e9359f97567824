"""The Beam transforms, run with TestPipeline on Beam's offline runner."""

import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing import util as beam_util
import numpy as np
import pytest

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.prepare import beam as pipeline
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.sources import manual_dir as shards_lib

from conftest import DUMMY_DATA, make_bad_manual_dir, read_inputs


def _run(shards, audit_dir, *, lenient=False, chunk_size=2):
  p = test_pipeline.TestPipeline(runner=runners.local_runner())
  out = p | pipeline.BuildExamples(  # pylint: disable=no-value-for-parameter
      shards, audit_dir=audit_dir, chunk_size=chunk_size, lenient=lenient)
  return p, out


def test_build_examples_emits_every_input_image_once(tmp_path):
  inputs = read_inputs(DUMMY_DATA)
  shards = list(shards_lib.find_shards(DUMMY_DATA).shards.values())
  p, out = _run(shards, tmp_path / 'audit')
  summary = (
      out
      | 'Summarize' >> beam.MapTuple(lambda k, ex: (
          k, ex['image']['content'],
          tuple(ex['annotations']['segmentation']['counts'])))
  )
  expected = [
      (k, jpg, tuple(a['segmentation']['counts'] for a in js['annotations']))
      for k, (jpg, js) in inputs.items()
  ]
  beam_util.assert_that(summary, beam_util.equal_to(expected))
  p.run().wait_until_finish()
  records = [json.loads(l) for f in (tmp_path / 'audit').glob('*.jsonl')
             for l in f.read_text().splitlines()]
  assert sorted(r['tar'] for r in records if r['kind'] == 'shard') == [
      s.name for s in shards]
  assert sum(r['images'] for r in records) == len(inputs)
  assert not [r for r in records if r['kind'] == 'skip']


def test_lenient_skips_and_audits_every_bad_image(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  shards = list(shards_lib.find_shards(manual).shards.values())
  p, out = _run(shards, tmp_path / 'audit', lenient=True)
  beam_util.assert_that(out | beam.Keys(), beam_util.equal_to([1, 2, 3, 10]))
  p.run().wait_until_finish()
  skips = sorted(
      (r['reason'], r['tar'], r['member'])
      for f in (tmp_path / 'audit').glob('*.jsonl')
      for r in map(json.loads, f.read_text().splitlines()) if r['kind'] == 'skip')
  assert skips == [
      (errors.DUPLICATE_ID, 'sa_000001.tar', 'sa_2.jpg'),
      (errors.MALFORMED_JSON, 'sa_000001.tar', 'sa_11.json'),
      (errors.MISSING_JPG, 'sa_000001.tar', 'sa_13.json'),
      (errors.MISSING_JSON, 'sa_000001.tar', 'sa_12.jpg'),
      (errors.ZERO_SIZE, 'sa_000001.tar', 'sa_14.json'),
  ]


def test_strict_fails_naming_tar_and_member(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  shards = list(shards_lib.find_shards(manual).shards.values())
  p, _ = _run(shards, tmp_path / 'audit')
  with pytest.raises(Exception, match=r'sa_000001\.tar:sa_1[1-4]\.js(on|pg)|'
                     r'sa_000001\.tar:sa_1[1-4]\.jpg|sa_000001\.tar:sa_2\.jpg'):
    p.run().wait_until_finish()


def test_beam_build_counts_go_to_metadata(tmp_path):
  """A Beam build's summary comes from its counters, not a second read."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  from segment_anything_tfds.prepare import runners  # pylint: disable=g-import-not-at-top
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
