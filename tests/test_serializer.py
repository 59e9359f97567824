"""The direct serializer against TFDS's own, byte for byte.

`serializer.serialize` must write exactly the bytes of TFDS's path
(`tfds_seam.Serializer`: `FeaturesDict.encode_example`, its
`ExampleSerializer`, deterministic protobuf serialization), so that data
prepared before keeps its bytes. If TFDS changes its format, these fail
naming the installed TFDS version.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
from pycocotools import mask as mask_utils
import pytest
import tensorflow_datasets as tfds

from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds import features as features_lib
from segment_anything_tfds.prepare import local as local_build
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import serializer
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.prepare import tars
from segment_anything_tfds import tfds_seam

from conftest import DUMMY_DATA

VERSION = f'TFDS {tfds.__version__}'
REFERENCE = tfds_seam.Serializer(features_lib.features())
U64_MAX = (1 << 64) - 1


def _assert_same(example, what: str) -> bytes:
  theirs = REFERENCE(example)
  ours = serializer.serialize(example)
  assert ours == theirs, (
      f'{VERSION}: the direct serializer differs from TFDS\'s for {what}'
      f' ({len(ours)} vs {len(theirs)} bytes, first difference at byte'
      f' {_first_difference(ours, theirs)}); TFDS\'s format changed?')
  pieces = serializer.serialize_pieces(example)
  assert pieces[1] is example['image']['content'], 'the JPEG was copied'
  assert b''.join(pieces) == ours
  return ours


def _first_difference(a: bytes, b: bytes) -> int:
  return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y),
              min(len(a), len(b)))


def _example(jpg: bytes, record, image_id: int):
  return examples.make_example(jpg, record, stem=f'sa_{image_id}',
                               where=('t.tar', f'sa_{image_id}.json'))[1]


def test_every_dummy_data_image():
  found = shards.find_shards(DUMMY_DATA).shards
  assert any(s.folder for s in found.values())  # sa_000003/
  count = 0
  for shard in found.values():
    with tars.ShardReader(shard) as reader:
      for pair in tars.index(shard).pairs:
        _, example = tars.read_example(reader, pair)
        _assert_same(example, f'{shard.name}:{pair.stem}')
        count += 1
  assert count == 11, count  # Every image of dummy_data/.


def test_pycocotools_annotations_with_backslashes():
  rng = np.random.default_rng(0)
  jpg, js = fake_data.image_record(rng, 223750, height=150, width=225,
                                   num_masks=100, need_backslash=True)
  record = examples.parse_json(js, where=('t.tar', 'sa_223750.json'))
  assert any('\\' in a['segmentation']['counts']
             for a in record['annotations'])
  _assert_same(_example(jpg, record, 223750), 'pycocotools RLE')


def _counts(rng, height: int, width: int) -> str:
  """COCO compressed RLE of random runs summing to height * width."""
  pixels = height * width
  cuts = np.sort(rng.integers(0, pixels + 1, size=rng.integers(0, 12)))
  runs = np.diff(np.concatenate([[0], cuts, [pixels]])).tolist()
  rle = mask_utils.frPyObjects({'counts': runs, 'size': [height, width]},
                               height, width)
  return rle['counts'].decode('ascii')


# Floats as JSON can hold them: those that round to float32, do not, hit its
# limits (overflow to infinity, denormals, underflow to zero) or are ints.
# Numbers a build accepts: finite once in float32 (the largest rounds to
# float32's largest), subnormals and values that round to zero.
_JSON_FLOATS = (0.0, -0.0, 1.0, 0.1, 1 / 3, 2 / 3, 0.7853981633974483,
                3.4028234663852886e38, 3.4028235677973362e38,
                1.401298464324817e-45, 7e-46, 1e-40, -1e-40, 5e-324, 1e-310,
                1, 0, 7, 2**53 + 1, 2**62, -(2**40))
_IDS = (0, 1, 127, 128, 16383, 16384, 2**35, 2**63 - 1, 2**63, U64_MAX)


def _random_annotation(rng, height: int, width: int, ann_id: int) -> dict:
  def number(scale):
    if rng.random() < 0.4:
      return _JSON_FLOATS[rng.integers(len(_JSON_FLOATS))]
    if rng.random() < 0.5:
      return int(rng.integers(-scale, scale + 1))
    return float(rng.normal(0, scale))

  def box():
    x = rng.uniform(0, width) if rng.random() < 0.5 else int(
        rng.integers(0, width + 1))
    y = rng.uniform(0, height) if rng.random() < 0.5 else int(
        rng.integers(0, height + 1))
    w = rng.uniform(0, width - x)
    h = int(rng.integers(0, height - int(np.ceil(y)) + 1))
    return [x, y, w, h]

  return {
      'id': ann_id,
      'area': int(rng.integers(0, height * width + 1)),
      'predicted_iou': number(2),
      'stability_score': number(2),
      'point_coords': [[number(10 * width), number(10 * height)]],
      'bbox': box(),
      'crop_box': box(),
      'segmentation': {'size': [height, width],
                       'counts': _counts(rng, height, width)},
  }


def _random_record(rng, image_id: int, num_masks: int, *, height: int,
                   width: int) -> dict:
  ids = [_IDS[rng.integers(len(_IDS))] if rng.random() < 0.3
         else int(rng.integers(0, 2**40)) for _ in range(num_masks)]
  # Unique within the image, as a build requires: a repeat gets a new id.
  ids = [2**41 + k if i in ids[:k] else i for k, i in enumerate(ids)]
  return {
      'image': {'image_id': image_id, 'file_name': f'sa_{image_id}.jpg',
                'height': height, 'width': width},
      'annotations': [_random_annotation(rng, height, width, i)
                      for i in ids],
  }


@pytest.fixture(scope='module')
def jpegs():
  """A JPEG per (height, width), shared by the random examples."""
  rng = np.random.default_rng(1)
  return {(h, w): fake_data.jpeg_bytes(rng, h, w)
          for h, w in ((1, 1), (7, 3), (20, 30), (300, 2))}


def test_random_examples(jpegs):
  rng = np.random.default_rng(2)
  sizes = sorted(jpegs)
  for k in range(300):
    height, width = sizes[k % len(sizes)]
    image_id = (min(_IDS[k % len(_IDS)], examples.MAX_IMAGE_ID) if k % 3 == 0
                else int(rng.integers(2**31)))
    record = _random_record(rng, image_id, int(rng.integers(0, 25)),
                            height=height, width=width)
    # Through JSON text, as a build reads it (orjson where installed).
    record = examples.parse_json(json.dumps(record).encode(),
                                 where=('t.tar', 'x.json'))
    _assert_same(_example(jpegs[height, width], record, image_id),
                 f'random example {k}')


def test_zero_annotations(jpegs):
  record = _random_record(np.random.default_rng(3), 5, 0, height=20,
                          width=30)
  ours = _assert_same(_example(jpegs[20, 30], record, 5), 'no annotations')
  assert b'annotations/segmentation/counts\x12\x02\n\x00' in ours


def test_thousands_of_annotations(jpegs):
  rng = np.random.default_rng(4)
  record = _random_record(rng, 9, 1500, height=300, width=2)
  _assert_same(_example(jpegs[300, 2], record, 9), '1,500 annotations')


def test_values_a_build_refuses(jpegs):
  # NaN, infinities and numbers float32 rounds to infinity: a build refuses
  # them (`bad_value`), but an example given directly may hold them, and
  # they are serialized as protobuf's C conversion writes them.
  record = _random_record(np.random.default_rng(5), 6, 8, height=7, width=3)
  example = _example(jpegs[7, 3], record, 6)
  odd = (float('nan'), float('inf'), -float('inf'), 1e300, -1e300,
         3.4028235677973366e38, float.fromhex('0x1.0000000000001p-1'), -0.0,
         np.frombuffer(np.uint64(0x7FF0000000000001).tobytes(), '<f8')[0])
  ann = example['annotations']
  for i in range(len(ann['id'])):
    ann['predicted_iou'][i] = odd[i % len(odd)]
    ann['stability_score'][i] = odd[(i + 1) % len(odd)]
    ann['point_coords'][i] = [[odd[(i + 2) % len(odd)], 1e39]]
  _assert_same(example, 'NaN and infinities')


def test_uint64_extremes(jpegs):
  # Image ids stop at 2**63 - 1 (larger names are no image's); annotation
  # ids and areas take every uint64.
  top = examples.MAX_IMAGE_ID
  record = _random_record(np.random.default_rng(6), top, len(_IDS),
                          height=1, width=1)
  for a, ann_id in zip(record['annotations'], _IDS):
    a['id'] = ann_id
  ours = _assert_same(_example(jpegs[1, 1], record, top), 'uint64 ids')
  assert b'\xff' * 9 + b'\x01' in ours  # 2**64 - 1: a 10-byte varint.


def test_varints_agree_with_the_scalar_writer():
  rng = np.random.default_rng(7)
  values = np.concatenate([
      np.array(_IDS, np.uint64),
      rng.integers(0, U64_MAX, size=500, dtype=np.uint64, endpoint=True),
      (np.uint64(1) << rng.integers(0, 64, size=200).astype(np.uint64))
      - np.uint64(1)])
  for chunk in (values[:1], values[:3], values[:31], values[:32], values,
                values.reshape(-1, 2), values[:100] & np.uint64(0x7F)):
    assert serializer.varints(chunk) == b''.join(
        serializer.varint(int(v)) for v in chunk.reshape(-1))
  assert serializer.varints(np.zeros(0, np.uint64)) == b''


def test_rows_must_agree(jpegs):
  record = _random_record(np.random.default_rng(8), 5, 3, height=20,
                          width=30)
  example = _example(jpegs[20, 30], record, 5)
  example['annotations']['area'] = example['annotations']['area'][:2]
  with pytest.raises(ValueError, match='annotations/area has 2 rows, not 3'):
    serializer.serialize(example)


def test_picklable_and_no_tensorflow():
  assert pickle.loads(pickle.dumps(serializer.serialize)) is (
      serializer.serialize)
  code = (
      'import sys\n'
      'from segment_anything_tfds.prepare import serializer, tars\n'
      'from segment_anything_tfds.sources import manual_dir\n'
      f'shard = manual_dir.find_shards({str(DUMMY_DATA)!r}).shards[0]\n'
      'with tars.ShardReader(shard) as r:\n'
      '  pair = tars.index(shard).pairs[0]\n'
      '  serializer.serialize(tars.read_example(r, pair)[1])\n'
      'heavy = {"tensorflow", "tensorflow_datasets"} & set(sys.modules)\n'
      'assert not heavy, f"imported {heavy}"\n')
  subprocess.run([sys.executable, '-c', code], check=True)


def test_fast_and_checked_columns_agree(jpegs):
  """make_example's fast path builds the arrays its checked path does."""
  rng = np.random.default_rng(9)
  sizes = sorted(jpegs)
  for k in range(100):
    height, width = sizes[k % len(sizes)]
    record = _random_record(rng, 3, int(rng.integers(0, 12)), height=height,
                            width=width)
    for a in record['annotations']:  # Ids over 2**63 take the checked path.
      a['id'] = int(rng.integers(0, 2**63))
    record = examples.parse_json(json.dumps(record).encode(),
                                 where=('t.tar', 'x.json'))
    anns = record['annotations']
    fast = examples._fast_columns(anns, height=height, width=width)  # pylint: disable=protected-access
    checked = examples._checked_columns(anns, height=height, width=width,  # pylint: disable=protected-access
                                        where=('t.tar', 'x.json'))
    assert fast is not None, f'record {k} took the checked path'
    for a, b in zip(fast, checked, strict=True):
      assert (a.dtype, a.shape) == (b.dtype, b.shape), k
      if a.dtype == object:
        assert a.tolist() == b.tolist(), k
      else:
        assert a.tobytes() == b.tobytes(), k


def test_builds_write_the_files_tfds_serializer_wrote(tmp_path, monkeypatch):
  """Data prepared with TFDS's serializer (earlier versions) keeps its bytes:
  whole shard files of a build, against the same build written with it."""

  def build(name):
    out = tmp_path / name
    out.mkdir()
    local_build.build(
        list(shards.find_shards(DUMMY_DATA).shards.values()),
        plan.Output(os.fspath(out), 'segment_anything', 'train',
                    'tfrecord', num_shards=2),
        lenient=False, workers=1, show_progress=False)
    return {p.name: p.read_bytes() for p in out.iterdir()
            if '.tfrecord' in p.name}

  ours = build('ours')
  monkeypatch.setattr(serializer, 'serialize_pieces',
                      lambda example: (REFERENCE(example),))
  theirs = build('theirs')
  assert len(ours) == 2 and ours == theirs, VERSION
