"""JSON -> example: the pure core, against SA-1B conventions and pycocotools."""

import copy
import io
import json
import re

import numpy as np
from PIL import Image
import pytest
from pycocotools import mask as mask_utils

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data


def _record(seed=0, image_id=7, height=20, width=30, num_masks=3):
  rng = np.random.default_rng(seed)
  jpg, js = fake_data.image_record(rng, image_id, height=height, width=width,
                                   num_masks=num_masks)
  return jpg, json.loads(js)


def test_make_example_matches_json_and_pycocotools():
  jpg, record = _record()
  key, ex = examples.make_example(jpg, record, stem='sa_7', where=('t.tar', 'sa_7.json'))
  assert key == 7
  assert ex['image']['content'] is jpg
  assert ex['image']['file_name'] == 'sa_7.jpg'
  assert (ex['image']['height'], ex['image']['width']) == (20, 30)
  anns = ex['annotations']
  for i, a in enumerate(record['annotations']):
    assert anns['segmentation']['counts'][i] == a['segmentation']['counts']
    rle = {'size': a['segmentation']['size'],
           'counts': a['segmentation']['counts'].encode()}
    assert anns['area'][i] == mask_utils.area(rle) == a['area']
    # SA-1B boxes are inclusive extents: one less than pycocotools' toBbox.
    x, y, w, h = mask_utils.toBbox(rle)
    np.testing.assert_array_equal(a['bbox'], [x, y, w - 1, h - 1])
    assert anns['id'][i] == a['id']
    assert anns['predicted_iou'][i] == a['predicted_iou']
    assert anns['stability_score'][i] == a['stability_score']
    np.testing.assert_array_equal(anns['point_coords'][i], a['point_coords'])
    np.testing.assert_array_equal(anns['segmentation']['size'][i], [20, 30])


def test_boxes_equal_builtin_normalization():
  from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin
  jpg, record = _record(seed=3)
  _, ex = examples.make_example(jpg, record, stem='sa_7', where=('w.tar', 'w'))
  for i, a in enumerate(record['annotations']):
    expected = builtin._normalize_bbox(list(a['bbox']), 20, 30).astype(np.float32)
    np.testing.assert_array_equal(ex['annotations']['bbox'][i], expected)
    expected = builtin._normalize_bbox(list(a['crop_box']), 20, 30).astype(np.float32)
    np.testing.assert_array_equal(ex['annotations']['crop_box'][i], expected)


def test_inputs_are_not_mutated():
  jpg, record = _record()
  before = copy.deepcopy(record)
  examples.make_example(jpg, record, stem='sa_7', where=('w.tar', 'w'))
  assert record == before


def test_zero_annotations():
  jpg, record = _record(num_masks=1)
  record['annotations'] = []
  _, ex = examples.make_example(jpg, record, stem='sa_7', where=('w.tar', 'w'))
  assert ex['annotations']['bbox'].shape == (0, 4)
  assert ex['annotations']['segmentation']['counts'].shape == (0,)


def _mutated(path, value):
  jpg, record = _record()
  obj = record
  for k in path[:-1]:
    obj = obj[k]
  if value is KeyError:
    del obj[path[-1]]
  else:
    obj[path[-1]] = value
  return jpg, record


@pytest.mark.parametrize('path,value,reason,needle', [
    (('image', 'image_id'), 8, errors.ID_MISMATCH, 'image_id 8'),
    (('image', 'file_name'), 'sa_8.jpg', errors.ID_MISMATCH, "'sa_8.jpg'"),
    (('image', 'height'), 0, errors.ZERO_SIZE, '0x30'),
    (('image', 'width'), KeyError, errors.MISSING_FIELD, '"width"'),
    (('annotations',), KeyError, errors.MISSING_FIELD, '"annotations"'),
    (('annotations', 1, 'bbox'), [1, 2, 3], errors.BAD_VALUE,
     'annotations[1].bbox must have 4 numbers'),
    (('annotations', 0, 'segmentation', 'size'), [21, 30],
     errors.SIZE_MISMATCH, 'annotations[0].segmentation.size'),
    (('annotations', 2, 'segmentation', 'counts'), 7, errors.BAD_VALUE,
     'counts must be a non-empty string'),
    (('annotations', 0, 'point_coords'), [1, 2], errors.BAD_VALUE,
     'point_coords must be [[x, y]]'),
    (('annotations', 0, 'predicted_iou'), 'high', errors.BAD_VALUE,
     'predicted_iou must be a number'),
    (('annotations', 0, 'crop_box'), [0, 0, 31, 20], errors.BAD_VALUE,
     'does not fit'),
])
def test_bad_records_name_the_member_and_the_problem(path, value, reason, needle):
  jpg, record = _mutated(path, value)
  with pytest.raises(errors.BadInputError) as e:
    examples.make_example(jpg, record, stem='sa_7', where=('sa_000004.tar', 'x/sa_7.json'))
  assert e.value.reason == reason
  assert str(e.value).startswith('sa_000004.tar:x/sa_7.json: ')
  assert needle in str(e.value)


def test_malformed_json():
  with pytest.raises(errors.BadInputError) as e:
    examples.parse_json(b'{"image": ', where=('a.tar', 'sa_1.json'))
  assert e.value.reason == errors.MALFORMED_JSON
  assert 'a.tar:sa_1.json' in str(e.value)


def test_jpeg_checks():
  jpg, record = _record()
  assert examples.jpeg_size(jpg) == (20, 30)
  buf = io.BytesIO()
  Image.new('RGB', (5, 9)).save(buf, format='JPEG')
  assert examples.jpeg_size(buf.getvalue()) == (9, 5)
  for bad, needle in [(jpg[:len(jpg) // 2], 'truncated'), (b'GIF89a' + jpg, 'not a JPEG'),
                      (buf.getvalue(), 'JPEG header says 9x5')]:
    with pytest.raises(errors.BadInputError) as e:
      examples.make_example(bad, record, stem='sa_7', where=('t.tar', 'sa_7.jpg'))
    assert e.value.reason == errors.CORRUPT_JPEG
    assert needle in str(e.value)


def _rle_string(runs):
  """COCO compressed RLE of a list of run lengths (pycocotools rleToString),
  written independently of the package, to craft hostile strings."""
  out = []
  for i, x in enumerate(runs):
    if i > 2:
      x -= runs[i - 2]
    more = True
    while more:
      c = x & 0x1f
      x >>= 5
      more = x != -1 if c & 0x10 else x != 0
      out.append(chr((c | (0x20 if more else 0)) + 48))
  return ''.join(out)


def _runs_of(mask):
  """Run lengths of a mask, column-major, starting with 0s: plain and slow."""
  flat = np.asarray(mask, np.uint8).flatten(order='F')
  runs, value, n = [], 0, 0
  for v in flat:
    if v == value:
      n += 1
    else:
      runs.append(n)
      value, n = v, 1
  runs.append(n)
  return runs


def test_rle_string_writer_matches_pycocotools():
  rng = np.random.default_rng(11)
  for _ in range(20):
    h, w = rng.integers(1, 30, size=2)
    m = rng.random((h, w)) < rng.random()
    got = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert _rle_string(_runs_of(m)) == got['counts'].decode()


@pytest.fixture(params=['c', 'reference'])
def rle_checker(request, monkeypatch):
  """Runs a test with each RLE validator: the C pass, and the Python
  reference that stands in when the C pass is not built."""
  if request.param == 'c' and examples._rle is None:
    pytest.skip('the C extension is not built here')
  if request.param == 'reference':
    monkeypatch.setattr(examples, '_rle', None)
  return request.param


def test_check_counts_accepts_what_pycocotools_encodes(rle_checker):
  rng = np.random.default_rng(12)
  for trial in range(60):
    h, w = (int(v) for v in rng.integers(1, 50, size=2))
    masks = [fake_data.random_mask(rng, h, w) for _ in range(rng.integers(1, 5))]
    masks += [np.zeros((h, w), bool), np.ones((h, w), bool)]
    one = np.zeros((h, w), bool)
    one[-1, -1] = True  # One pixel, in the last column.
    masks.append(one)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            for m in masks]
    counts = np.array([r['counts'].decode() for r in rles], object)
    area = np.array([int(mask_utils.area(r)) for r in rles], np.uint64)
    examples.check_counts(counts, area, height=h, width=w, where=('t', 'm'))
    with pytest.raises(errors.BadInputError, match=r'annotations\[0\]'
                       r'.*runs summing to'):
      examples.check_counts(counts, area, height=h + 1, width=w,
                            where=('t', 'm'))


@pytest.mark.parametrize('bad, detail', [
    ('0p0', 'character .p. outside'),
    ('0 1', 'character . . outside'),
    ('0\x7f', 'outside'),
    ('0\u00e91', "character 'U\\+00E9 \\(non-ASCII\\)' outside"),
    # A lone surrogate, as `json` (not orjson) parses the escape "\\ud800".
    ('\ud800', "character 'U\\+D800 \\(non-ASCII\\)' outside"),
    ('0\udfff1', "character 'U\\+DFFF \\(non-ASCII\\)' outside"),
    ('5P', 'unfinished continuation'),
    ('PPPPPPPP0', 'count of 9 characters'),
    (None, 'negative run'),
    ('', 'is empty'),
    ('9', 'summing to 9, not h\\*w = 3\\*4 = 12'),
])
def test_check_counts_refuses_what_cannot_decode(rle_checker, bad, detail):
  h, w = 3, 4
  good = _rle_string([2, 5, 5])
  if bad is None:
    bad = _rle_string([5, -2, 9])  # Sums to 12, with a negative run.
  counts = np.array([good, good, bad], object)
  area = np.array([5, 5, 5], np.uint64)
  with pytest.raises(errors.BadInputError) as e:
    examples.check_counts(counts, area, height=h, width=w,
                          where=('sa_000001.tar', 'sa_7.json'))
  assert e.value.reason == errors.BAD_RLE
  assert re.search(r'^sa_000001.tar:sa_7.json: annotations\[2\]'
                   r'.segmentation.counts .*' + detail, str(e.value)), str(
                       e.value)


def test_check_counts_refuses_area_over_the_image(rle_checker):
  counts = np.array([_rle_string([2, 10])], object)
  with pytest.raises(errors.BadInputError, match=r'annotations\[0\].area 13'
                     r' is over h\*w = 12'):
    examples.check_counts(counts, np.array([13], np.uint64), height=3,
                          width=4, where=('t', 'm'))


def test_make_example_checks_rle_with_the_real_backslash_strings(rle_checker):
  rng = np.random.default_rng(13)
  jpg, js = fake_data.image_record(rng, 7, height=40, width=30, num_masks=6)
  record = json.loads(js)
  examples.make_example(jpg, record, stem='sa_7', where=('t.tar', 'sa_7.json'))
  record['annotations'][3]['segmentation']['counts'] += '0'
  with pytest.raises(errors.BadInputError, match=r'^t.tar:sa_7.json: '
                     r'annotations\[3\].segmentation.counts has runs summing'
                     r' to .* \[bad_rle\]$'):
    examples.make_example(jpg, record, stem='sa_7',
                          where=('t.tar', 'sa_7.json'))


def _json_with_lone_surrogate_counts() -> tuple[bytes, bytes]:
  """(jpg, json) of an image whose annotations[1] counts are "\\ud800"."""
  rng = np.random.default_rng(15)
  jpg, js = fake_data.image_record(rng, 7, height=20, width=30, num_masks=3)
  record = json.loads(js)
  record['annotations'][1]['segmentation']['counts'] = 'SURROGATE'
  return jpg, json.dumps(record).encode().replace(b'SURROGATE', rb'\ud800')


def test_lone_surrogate_counts_are_bad_rle_without_orjson(rle_checker,
                                                          monkeypatch):
  """`json` (the parser when orjson is absent) turns a "\\ud800" escape into a
  lone surrogate: the RLE check refuses it like any other character."""
  jpg, js = _json_with_lone_surrogate_counts()
  where = ('sa_000000.tar', 'sa_7.json')
  monkeypatch.setattr(examples, '_orjson', None)
  record = examples.parse_json(js, where=where)
  assert record['annotations'][1]['segmentation']['counts'] == '\ud800'
  with pytest.raises(errors.BadInputError) as e:
    examples.make_example(jpg, record, stem='sa_7', where=where)
  assert str(e.value) == (
      'sa_000000.tar:sa_7.json: annotations[1].segmentation.counts has the'
      """ character 'U+D800 (non-ASCII)' outside "0".."o" [bad_rle]""")


# Float32's largest value plus half its last step: rounds to infinity.
_F32_INF_FROM = 2.0**128 - 2.0**103
_F32_LARGEST_FINITE_FROM = float(np.nextafter(_F32_INF_FROM, 0))


@pytest.mark.parametrize('field,value,detail', [
    ('predicted_iou', 1e300, 'annotations[1].predicted_iou 1e+300 is infinite'
     ' as float32, the type the dataset stores it in (largest:'
     ' 3.4028235e38)'),
    ('stability_score', -1e39, 'annotations[1].stability_score -1e+39 is'
     ' infinite as float32, the type the dataset stores it in (largest:'
     ' 3.4028235e38)'),
    ('point_coords', [[1e39, 1e39]], 'annotations[1].point_coords 1e+39 is'
     ' infinite as float32, the type the dataset stores it in (largest:'
     ' 3.4028235e38)'),
    ('predicted_iou', _F32_INF_FROM, 'annotations[1].predicted_iou'
     ' 3.4028235677973366e+38 is infinite as float32, the type the dataset'
     ' stores it in (largest: 3.4028235e38)'),
    # What `json` (no orjson) parses: NaN, Infinity, integers past float64.
    ('point_coords', [[1, float('nan')]], 'annotations[1].point_coords must'
     ' be a finite number, got nan'),
    ('stability_score', float('inf'), 'annotations[1].stability_score must'
     ' be a finite number, got inf'),
    ('predicted_iou', 10**400, 'annotations[1].predicted_iou must be a'
     ' finite number, got 1000000000000000000000000000000000000000...(401'
     ' digits)'),
    ('bbox', [10**400, 0, 1, 1], 'annotations[1].bbox must be a finite'
     ' number, got 1000000000000000000000000000000000000000...(401 digits)'),
], ids=['iou', 'stability', 'point', 'iou_at_limit', 'nan', 'inf',
        'iou_past_float64', 'bbox_past_float64'])
def test_numbers_infinite_in_float32_are_bad_values(field, value, detail):
  """The dataset stores IoU, stability and points as float32: a number
  that is infinite there (or NaN, or past float64) is refused, naming the
  tar, the member and the field, by both column paths alike."""
  jpg, record = _record()
  record['annotations'][1][field] = value
  with pytest.raises(errors.BadInputError) as e:
    examples.make_example(jpg, record, stem='sa_7',
                          where=('sa_000004.tar', 'sa_7.json'))
  assert str(e.value) == f'sa_000004.tar:sa_7.json: {detail} [bad_value]'
  assert e.value.reason == errors.BAD_VALUE
  assert examples._fast_columns(record['annotations'], height=20,
                                width=30) is None


def test_the_largest_number_finite_in_float32_is_kept_by_both_paths():
  jpg, record = _record()
  ann = record['annotations'][2]
  ann['predicted_iou'] = _F32_LARGEST_FINITE_FROM
  ann['stability_score'] = -_F32_LARGEST_FINITE_FROM
  ann['point_coords'] = [[_F32_LARGEST_FINITE_FROM, 2**127]]
  fast = examples._fast_columns(record['annotations'], height=20, width=30)
  checked = examples._checked_columns(record['annotations'], height=20,
                                      width=30, where=('t.tar', 'sa_7.json'))
  for a, b in zip(fast, checked):
    np.testing.assert_array_equal(a, b)
  _, ex = examples.make_example(jpg, record, stem='sa_7', where=('t.tar', 'w'))
  stored = np.float32(ex['annotations']['predicted_iou'][2])
  assert stored == np.finfo(np.float32).max
  assert np.float32(ex['annotations']['stability_score'][2]) == -stored


@pytest.mark.parametrize('ids,detail', [
    ([4, 4, 5], 'annotations[1].id 4 is also annotations[0].id'),
    ([9, 3, 3], 'annotations[2].id 3 is also annotations[1].id'),
    ([2**64 - 1, 0, 2**64 - 1], 'annotations[2].id 18446744073709551615 is'
     ' also annotations[0].id'),
])
def test_annotation_ids_repeated_in_an_image_are_bad_values(ids, detail):
  """COCO readers index annotations by id (pycocotools keeps one): a
  repeat within an image is refused, on either column path."""
  jpg, record = _record()
  for ann, ann_id in zip(record['annotations'], ids):
    ann['id'] = ann_id
  with pytest.raises(errors.BadInputError) as e:
    examples.make_example(jpg, record, stem='sa_7',
                          where=('sa_000002.tar', 'sa_7.json'))
  assert str(e.value) == (f'sa_000002.tar:sa_7.json: {detail}: annotation'
                          ' ids must be unique within an image [bad_value]')
