"""numpy_inputs: the numpy (Grain / PyTorch) path equals the tf.data path.

Same examples, same seed: the same masks (bit for bit), prompts, labels and
weights as `sam_inputs.to_sam_inputs`; images within a grey level or a few
(another JPEG decoder and resizer). On the dummy data, the ArrayRecord build
read by `SamDataset` is checked against the TFRecord build read by tf.data,
image by image.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from segment_anything_tfds import errors
from segment_anything_tfds.read import backend
from segment_anything_tfds.read import geometry
from segment_anything_tfds.read import numpy_inputs as npi
from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sam_inputs
from segment_anything_tfds.read import sam_steps
from segment_anything_tfds.read import sampling
from segment_anything_tfds.tools import fake_data

mask_utils = pytest.importorskip('pycocotools.mask')
pytest.importorskip('PIL')
from conftest import DUMMY_DATA  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import make_example  # pylint: disable=g-import-not-at-top,wrong-import-position

SKIP = {'image': {'content': tfds.decode.SkipDecoding()}}
NAMES = ['boxes', 'image', 'labels', 'points', 'targets', 'weights']


def _as_numpy(example):
  return tf.nest.map_structure(lambda t: t.numpy(), example)


def _flat(outputs) -> dict[str, np.ndarray]:
  """(inputs, targets, weights) of either layout -> {name: array}."""
  inputs, targets, weights = outputs
  out = {'targets': targets, 'weights': weights}
  for key, value in inputs.items():
    out[{'images': 'image', 'point_labels': 'labels'}.get(key, key)] = value
  return {k: np.asarray(v) for k, v in out.items()}


def assert_same_inputs(tf_out, np_out, *, image_atol: float):
  """Everything bit for bit but the image (within image_atol, 0..255)."""
  a, b = _flat(tf_out), _flat(np_out)
  assert sorted(a) == sorted(b) == NAMES
  scale = 255.0 if 'images' in tf_out[0] else np.array(
      sam_inputs.PIXEL_STD)  # Back to grey levels.
  for name in NAMES:
    assert a[name].dtype == b[name].dtype, name
    assert a[name].shape == b[name].shape, name
    if name == 'image':
      diff = np.abs(a[name] - b[name]) * scale
      assert diff.max() <= image_atol, (diff.max(), image_atol)
    else:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ----------------------------------------------------------- geometry twins


def test_nearest_indices_and_resized_size_twins():
  """The geometry, written once, gives the same numbers over numpy and TF."""
  tf_ops = backend.tf_ops()
  for in_size in (1, 2, 3, 7, 16, 100, 1500, 2250):
    for out_size in (1, 2, 5, 16, 64, 256, 1024):
      np.testing.assert_array_equal(
          npi.nearest_indices_np(in_size, out_size),
          rle.nearest_indices(in_size, out_size).numpy())
  for h, w in [(1, 9), (30, 40), (1500, 2250), (2250, 1500), (7, 7)]:
    for long_side in (16, 64, 256, 1024):
      got = npi.resized_size_np(h, w, long_side)
      new_h, new_w, scale = geometry.resized_size(h, w, long_side, tf_ops)
      assert got == (int(new_h), int(new_w), float(scale))
      assert new_h.dtype == new_w.dtype == tf.int32


def test_geometry_in_dataset_map_equals_numpy():
  """The TF geometry in a tf.data map (graph) gives the numpy numbers."""
  tf_ops = backend.tf_ops()
  sizes = [(1, 9), (30, 40), (1500, 2250), (2250, 1500), (7, 7)]

  def geometry_tf(size):
    new_h, new_w, scale = geometry.resized_size(size[0], size[1], 256, tf_ops)
    return (new_h, new_w, scale,
            geometry.nearest_indices(size[0], new_h, tf_ops),
            geometry.nearest_indices(size[1], new_w, tf_ops))

  ds = tf.data.Dataset.from_tensor_slices(tf.constant(sizes, tf.int64))
  for (h, w), got in zip(sizes, ds.map(geometry_tf, num_parallel_calls=2,
                                       deterministic=True)):
    new_h, new_w, scale = npi.resized_size_np(h, w, 256)
    assert (int(got[0]), int(got[1]), float(got[2])) == (new_h, new_w, scale)
    np.testing.assert_array_equal(got[3], npi.nearest_indices_np(h, new_h))
    np.testing.assert_array_equal(got[4], npi.nearest_indices_np(w, new_w))


def test_decode_masks_np_equals_rle_decode():
  rng = np.random.default_rng(0)
  example, masks = make_example(rng, height=37, width=53, num_masks=20)
  counts = example['annotations']['segmentation']['counts'].numpy().tolist()
  for out in [(37, 53), (10, 14), (256, 300), (1, 1)]:
    np.testing.assert_array_equal(
        npi.decode_masks_np(counts, 37, 53, out),
        rle.decode(counts, (37, 53), output_size=out).numpy())
  np.testing.assert_array_equal(
      npi.decode_masks_np(counts, 37, 53, (37, 53)), masks)
  assert npi.decode_masks_np([], 37, 53, (4, 5)).shape == (0, 4, 5)


def test_point_pixel_is_the_rth_mask_pixel():
  """Over both backends, pixel r = below(count) of each mask, row-major."""
  rng = np.random.default_rng(6)
  masks = (rng.random((40, 13, 17)) < rng.random((40, 1, 1))).astype(np.uint8)
  masks[:3] = 0  # Empty masks give pixel 0.
  masks[3] = 1
  index = rng.permutation(100)[:40]
  key = sampling.key_np(7, 123, sampling.POINTS)
  r = sampling.below_np(key, index, masks.reshape(40, -1).sum(axis=1))
  expected = [np.flatnonzero(m)[i] if m.any() else 0 for m, i in zip(masks, r)]
  row_counts = masks.sum(axis=2, dtype=np.int32)
  row, col = sam_steps.point_pixels(masks, row_counts, key, index,
                                    backend.NUMPY)
  assert (row * 17 + col).tolist() == expected
  assert row.dtype == col.dtype == np.int32
  row, col = sam_steps.point_pixels(
      tf.constant(masks), tf.constant(row_counts),
      sampling.key_tf(7, tf.constant(123, tf.int64), sampling.POINTS),
      tf.constant(index), backend.tf_ops())
  assert (row * 17 + col).numpy().tolist() == expected
  assert len(set(expected[3:])) > 30  # Spread out, not a fixed pixel.


# ------------------------------------------------ synthetic examples, exact

OPTIONS = [
    dict(layout='sam'),
    dict(layout='sam', box_jitter=0.0, min_predicted_iou=0.7),
    dict(layout='keras_hub'),
    dict(layout='keras_hub', prompt='box', min_area_fraction=0.05,
         max_area_fraction=0.5),
    dict(layout='keras_hub', prompt='point', min_stability_score=0.8,
         box_jitter=0.3, max_box_jitter=4.0, mask_size=8),
]


@pytest.mark.parametrize('options', OPTIONS)
def test_same_masks_and_prompts_as_tf(options):
  rng = np.random.default_rng(1)
  for trial in range(6):
    example, _ = make_example(
        rng, height=int(rng.integers(5, 90)), width=int(rng.integers(5, 90)),
        num_masks=int(rng.integers(0, 25)),
        image_id=int(rng.integers(0, 2**63)))
    kwargs = dict(image_size=64, num_masks=8, seed=trial, **options)
    tf_out = sam_inputs.to_sam_inputs(example, **kwargs)
    np_out = npi.to_sam_inputs_np(_as_numpy(example), **kwargs)
    # Decoded pixels in: a shrink is TF's area resize bit for bit; PIL
    # rounds a growing resize to whole grey levels (and float noise on top).
    assert_same_inputs(tf_out, np_out, image_atol=1.01)


def test_lists_as_tfds_data_source_gives_them():
  """data_source returns per-mask lists and Python ints, not arrays."""
  example, _ = make_example(np.random.default_rng(2), height=20, width=30,
                            num_masks=6, image_id=77)
  as_lists = _as_numpy(example)
  ann = as_lists['annotations']
  for key in ('area', 'bbox', 'point_coords', 'predicted_iou',
              'stability_score', 'id', 'crop_box'):
    ann[key] = list(ann[key])
  ann['segmentation'] = {k: list(v) for k, v in ann['segmentation'].items()}
  as_lists['image'] = {
      k: (v.item() if isinstance(v, np.generic) else v)
      for k, v in as_lists['image'].items()}
  assert isinstance(as_lists['image']['image_id'], int)
  kwargs = dict(image_size=32, num_masks=4, seed=5, layout='keras_hub')
  assert_same_inputs(sam_inputs.to_sam_inputs(example, **kwargs),
                     npi.to_sam_inputs_np(as_lists, **kwargs),
                     image_atol=1.01)


def test_jpeg_bytes_and_fast_decode_close_to_tf():
  rng = np.random.default_rng(3)
  example, _ = make_example(rng, height=200, width=300, num_masks=5)
  yy, xx = np.mgrid[:200, :300]
  smooth = np.stack([xx * 255 / 300, yy * 255 / 200, (xx + yy) * 255 / 500],
                    axis=-1).astype(np.uint8)
  example['image']['content'] = tf.io.encode_jpeg(tf.constant(smooth),
                                                  quality=95)
  for fast_jpeg in (True, False):  # 300 >= 2 x 64: DCT scaling by 1/4.
    kwargs = dict(image_size=64, num_masks=4, seed=0, layout='keras_hub')
    tf_out = sam_inputs.to_sam_inputs(example, fast_jpeg=fast_jpeg, **kwargs)
    np_out = npi.to_sam_inputs_np(_as_numpy(example), fast_jpeg=fast_jpeg,
                                  **kwargs)
    # The same decoded pixels; PIL's resize rounds to whole grey levels.
    assert_same_inputs(tf_out, np_out, image_atol=1.01)
    diff = np.abs(_flat(tf_out)['image'] - _flat(np_out)['image']) * 255
    assert diff.mean() < 0.5, diff.mean()


@pytest.mark.parametrize('layout', ['sam', 'keras_hub'])
def test_fast_path_inputs_are_bit_identical_everywhere(layout):
  """JPEG content shrunk on the fast path: the tf.data path, run eagerly,
  inside Dataset.map and inside a tf.function of unknown shapes, gives
  exactly the numpy path's inputs, the image included."""
  rng = np.random.default_rng(12)
  example, _ = make_example(rng, height=200, width=300, num_masks=6)
  example['image']['content'] = tf.constant(
      fake_data.jpeg_bytes(rng, 200, 300))
  kwargs = dict(image_size=64, num_masks=4, seed=3, layout=layout)
  expected = npi.to_sam_inputs_np(_as_numpy(example), **kwargs)
  content = example['image']['content']

  @tf.autograph.experimental.do_not_convert
  def with_content(jpeg):
    return sam_inputs.to_sam_inputs(
        {**example, 'image': {**example['image'], 'content': jpeg}},
        **kwargs)

  graph = tf.function(with_content,
                      input_signature=[tf.TensorSpec([], tf.string)])
  mapped = next(iter(tf.data.Dataset.from_tensors(content).map(
      with_content)))
  for got in (with_content(content), mapped, graph(content)):
    assert_same_inputs(got, expected, image_atol=0.0)


# (height, width, image_size): DCT scaling by 1/2, 1/4, 1/8, none, and none
# for a small image.
JPEG_SIZES = [(1500, 2250, 1024), (200, 300, 64), (400, 300, 48),
              (375, 500, 1024), (33, 47, 64), (1, 600, 64)]


def test_both_paths_decode_jpegs_to_the_same_pixels():
  """The same libjpeg rule (DCT scaling, accurate IDCT) in TF and PIL: the
  decoded images are equal. The fast path's area shrink is TF's bit for bit;
  PIL's antialiased resize (no fast_jpeg, or an image grown) within a grey
  level."""
  rng = np.random.default_rng(8)
  for height, width, image_size in JPEG_SIZES:
    jpeg = fake_data.jpeg_bytes(rng, height, width)
    for fast_jpeg in (True, False):
      args = (height, width, image_size, fast_jpeg)
      tf_args = (tf.constant(jpeg), tf.constant(height, tf.int64),
                 tf.constant(width, tf.int64), image_size, fast_jpeg)
      decoded = sam_inputs._decoded_image(*tf_args).numpy()  # pylint: disable=protected-access
      np.testing.assert_array_equal(
          np.asarray(npi._decoded_image_np(jpeg, *args)), decoded)  # pylint: disable=protected-access
      ratio = 1
      for r in (2, 4, 8) if fast_jpeg else ():
        if max(height, width) >= r * image_size and min(height, width) >= r:
          ratio = r
      assert decoded.shape == (-(-height // ratio), -(-width // ratio), 3)
      resized = sam_inputs._resized_image(*tf_args).numpy()  # pylint: disable=protected-access
      resized_np = npi._resized_image_np(jpeg, *args)  # pylint: disable=protected-access
      if fast_jpeg and all(np.greater_equal(decoded.shape[:2],
                                            resized.shape[:2])):
        assert resized_np.dtype == np.float32
        np.testing.assert_array_equal(resized_np, resized)
        continue
      assert resized_np.dtype == np.uint8
      diff = np.abs(resized - resized_np)
      assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.4, (args, diff.max())


@pytest.mark.parametrize('with_c', [True, False])
def test_resize_area_np_is_tfs_area_resize(monkeypatch, with_c):
  """`resize_area_np` equals tf.image.resize(method='area') bit for bit, in
  C and in its fallback (TF's kernel, where the extension is not built):
  shrinking by any factor, SA-1B's 750x1125 -> 683x1024 after DCT scaling,
  growing, one pixel, and 1 or 4 channels."""
  if not with_c:
    monkeypatch.setattr(npi, '_rle', None)
  elif npi._rle is None:  # pylint: disable=protected-access
    pytest.skip('the C extension is not built')
  rng = np.random.default_rng(11)
  cases = [(750, 1125, 683, 1024, 3), (1500, 2250, 683, 1024, 3),
           (100, 37, 91, 20, 3), (5, 5, 9, 13, 3), (64, 48, 17, 3, 1),
           (64, 48, 17, 3, 4), (3, 1000, 1, 1, 3), (1, 1, 1, 1, 3)]
  cases += [(int(rng.integers(1, 300)), int(rng.integers(1, 300)),
             int(rng.integers(1, 300)), int(rng.integers(1, 300)), 3)
            for _ in range(6)]
  for h, w, out_h, out_w, c in cases:
    image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    got = npi.resize_area_np(image, out_h, out_w)
    assert got.dtype == np.float32 and got.shape == (out_h, out_w, c)
    np.testing.assert_array_equal(
        got, tf.image.resize(image, (out_h, out_w), method='area').numpy())
  # A strided view is copied first, not misread.
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  np.testing.assert_array_equal(
      npi.resize_area_np(image[::2, ::3], 7, 9),
      tf.image.resize(image[::2, ::3], (7, 9), method='area').numpy())


def test_c_resize_area_refuses_bad_buffers():
  """The C kernel checks what it is given, rather than reading or writing
  out of bounds."""
  c_ext = npi._rle  # pylint: disable=protected-access
  if c_ext is None:
    pytest.skip('the C extension is not built')
  image = np.zeros((8, 8, 3), np.uint8)
  bad = [
      (image.astype(np.float32), np.zeros((4, 4, 3), np.float32)),
      (image, np.zeros((4, 4, 3), np.float64)),
      (image, np.zeros((4, 4, 1), np.float32)),
      (image, np.zeros((4, 8, 3), np.float32)[:, ::2]),
      (image[:, ::2], np.zeros((4, 4, 3), np.float32)),
      (image, np.zeros((0, 4, 3), np.float32)),
      (image[:0], np.zeros((4, 4, 3), np.float32)),
      (image[:, :, 0], np.zeros((4, 4), np.float32)),
  ]
  for src, out in bad:  # numpy refuses some views itself.
    with pytest.raises(ValueError, match='_rle.resize_area|not C-contiguous'):
      c_ext.resize_area(src, out)
  frozen = np.zeros((4, 4, 3), np.float32)
  frozen.flags.writeable = False
  with pytest.raises((ValueError, BufferError)):
    c_ext.resize_area(image, frozen)
  # The output over the image's own bytes would read what it wrote.
  shared = np.zeros(8 * 8 * 3, np.uint8)
  with pytest.raises(ValueError, match='must not share memory'):
    c_ext.resize_area(shared.reshape(8, 8, 3),
                      shared[:48].view(np.float32).reshape(2, 2, 3))


def test_c_resize_area_of_a_very_tall_image():
  """Past 2**24 rows the float32 scale is rounded: a footprint then reaches
  past the last row, which TF counts again; so does the C kernel."""
  if npi._rle is None:  # pylint: disable=protected-access
    pytest.skip('the C extension is not built')
  image = np.zeros((2**26 + 5, 1, 1), np.uint8)
  image[-1] = 255
  np.testing.assert_array_equal(
      npi.resize_area_np(image, 1, 1),
      tf.image.resize(image, (1, 1), method='area').numpy())


def test_no_usable_masks_and_unseeded():
  rng = np.random.default_rng(4)
  empty, _ = make_example(rng, height=12, width=20, num_masks=0)
  for example in (empty, make_example(rng, height=12, width=20,
                                      num_masks=3)[0]):
    kwargs = dict(image_size=32, num_masks=4, seed=0, min_predicted_iou=2.0)
    assert_same_inputs(sam_inputs.to_sam_inputs(example, **kwargs),
                       npi.to_sam_inputs_np(_as_numpy(example), **kwargs),
                       image_atol=1.01)
  # seed=None: random samples, still valid and different between calls.
  example, _ = make_example(rng, height=30, width=30, num_masks=30)
  runs = [npi.to_sam_inputs_np(_as_numpy(example), image_size=32,
                               num_masks=5) for _ in range(4)]
  assert all(r[2].sum() > 0 for r in runs)
  assert any(not np.array_equal(runs[0][1], r[1]) for r in runs[1:])


@pytest.mark.parametrize('with_c', [True, False])
def test_bad_counts_name_the_image_and_the_annotation(monkeypatch, with_c):
  """A record whose RLE does not decode: BadRecordError naming the image
  and the annotation, with the C decoder and without it."""
  if with_c and npi._rle is None:  # pylint: disable=protected-access
    pytest.skip('the C extension is not built here')
  if not with_c:
    monkeypatch.setattr(npi, '_rle', None)
  example, _ = make_example(np.random.default_rng(9), height=10, width=12,
                            num_masks=5, image_id=4321)
  example = _as_numpy(example)
  counts = example['annotations']['segmentation']['counts'].copy()
  counts[3] = counts[3] + b'1'  # One run too many: past h*w.
  example['annotations']['segmentation']['counts'] = counts
  where = (r'annotations\[3\]\.segmentation\.counts has runs summing to'
           r' \d+\+, not h\*w = 10\*12'
           if with_c else 'its sampled masks: rle: runs do not sum')
  with pytest.raises(errors.BadRecordError, match=rf'^image 4321: {where}'):
    npi.to_sam_inputs_np(example, image_size=32, num_masks=8, seed=0)


def test_bad_options():
  example, _ = make_example(np.random.default_rng(5), height=8, width=8,
                            num_masks=1)
  with pytest.raises(TypeError, match='unknown'):
    npi.SamTransform(mask_sise=4)
  with pytest.raises(ValueError, match='layout'):
    npi.to_sam_inputs_np(_as_numpy(example), layout='torch')
  with pytest.raises(ValueError, match='validation_fraction'):
    npi.SamDataset([], validation_fraction=-0.1)


# ---------------------------------------------- prepared dummy data, by id


@pytest.fixture(scope='module')
def array_record_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('array_record')
  builder = tfds.builder('segment_anything', config='all', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA),
      file_format='array_record')
  return data_dir


KWARGS = dict(image_size=64, num_masks=6, seed=3, layout='keras_hub')


def _tf_data_by_id(data_dir, **kwargs):
  ds = tfds.load('segment_anything/all', split='train', data_dir=data_dir,
                 decoders=SKIP)
  return {int(ex['image']['image_id']): tf.nest.map_structure(
      lambda t: t.numpy(), sam_inputs.to_sam_inputs(ex, **kwargs))
          for ex in ds}


def _dataset(array_record_dir, **kwargs):
  return npi.load_sam_data_source('train', data_dir=str(array_record_dir),
                                  name='segment_anything/all', **kwargs)


def test_array_record_path_equals_tf_data_path(prepared_dummy,
                                               array_record_dir):
  expected = _tf_data_by_id(prepared_dummy, **KWARGS)
  dataset = _dataset(array_record_dir, **KWARGS)
  ids = dataset.image_ids()
  assert len(dataset) == len(ids) == len(expected) == 11
  assert sorted(ids.tolist()) == sorted(expected)
  for i, image_id in enumerate(ids):
    # Real JPEGs: the same decoded pixels, resized within a grey level.
    assert_same_inputs(expected[int(image_id)], dataset[i], image_atol=1.01)
  assert sum(float(dataset[i][2].sum()) for i in range(11)) > 11


def test_holdout_is_the_same_in_both_paths(prepared_dummy, array_record_dir):
  for validation in (False, True):
    tf_ids = sorted(int(ex['image']['image_id']) for ex in tfds.load(
        'segment_anything/all', split='train', data_dir=prepared_dummy,
        decoders=SKIP).filter(sam_inputs.holdout_filter(0.4, validation)))
    dataset = _dataset(array_record_dir, validation_fraction=0.4,
                       validation=validation, **KWARGS)
    np_ids = sorted(dataset.image_ids()[dataset.indices].tolist())
    assert np_ids == tf_ids
    assert len(dataset) == len(tf_ids)
    assert all(bool(sampling.in_holdout_np(i, 0.4)) == validation
               for i in np_ids)
  train = _dataset(array_record_dir, validation_fraction=0.4, **KWARGS)
  held = _dataset(array_record_dir, validation_fraction=0.4, validation=True,
                  image_ids=train.image_ids(), **KWARGS)
  assert 0 < len(held) < 11 and len(train) + len(held) == 11
  # The transform of a held-out index is that of its source record.
  expected = _tf_data_by_id(prepared_dummy, **KWARGS)
  first = int(train.image_ids()[held.indices[0]])
  assert_same_inputs(expected[first], held[0], image_atol=1.01)


def test_map_style_protocol(array_record_dir):
  """What torch's DataLoader and Grain use, without either."""
  dataset = _dataset(array_record_dir, **KWARGS)
  n = len(dataset)
  first = dataset[0]
  for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(dataset[-n])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(IndexError):
    dataset[n]
  with pytest.raises(IndexError):
    dataset[-n - 1]
  many = dataset.__getitems__([3, 0, 3])
  for a, b in zip(tf.nest.flatten(many[1]), tf.nest.flatten(first)):
    np.testing.assert_array_equal(a, b)
  clone = pickle.loads(pickle.dumps(dataset))
  assert clone._source is None  # pylint: disable=protected-access
  for a, b in zip(tf.nest.flatten(clone[0]), tf.nest.flatten(first)):
    np.testing.assert_array_equal(a, b)
  # A plain list of examples is a source too.
  examples = [_as_numpy(make_example(np.random.default_rng(i), height=9,
                                     width=11, num_masks=2,
                                     image_id=i)[0]) for i in range(3)]
  listed = npi.SamDataset(examples, **KWARGS)
  assert len(listed) == 3
  assert_same_inputs(npi.to_sam_inputs_np(examples[2], **KWARGS), listed[2],
                     image_atol=0.0)


def test_batches_are_transformed_by_threads_in_order(array_record_dir,
                                                     monkeypatch):
  """`__getitems__` (what torch's DataLoader calls) transforms a batch in
  threads, one per core where the dataset was made and one in other
  processes; the batch is the same, in order, whatever the threads."""
  order = [5, 0, 3, 3, 1, 7, 2]
  one = _dataset(array_record_dir, threads=1, **KWARGS)
  want = one.__getitems__(order)
  assert one._transform_pool() is None  # pylint: disable=protected-access
  threaded = _dataset(array_record_dir, threads=3, **KWARGS)
  got = threaded.__getitems__(order)
  for g, w in zip(got, want):
    for a, b in zip(tf.nest.flatten(g), tf.nest.flatten(w)):
      np.testing.assert_array_equal(a, b)
  names = set()
  real = threaded.transform.__class__.__call__

  def spy(transform, example):
    names.add(threading.current_thread().name)
    return real(transform, example)

  monkeypatch.setattr(npi.SamTransform, '__call__', spy)
  threaded.__getitems__(order)
  assert names and all(n.startswith('sam-transform') for n in names)
  # By default: the cores here; one thread in another process (a worker),
  # and a pickled dataset carries no threads.
  default = _dataset(array_record_dir, **KWARGS)
  monkeypatch.setattr(npi.machine, 'cores', lambda: 2)
  pool = default._transform_pool()  # pylint: disable=protected-access
  assert pool._max_workers == 2  # pylint: disable=protected-access
  # One pool per process and size, shared by the datasets.
  other = _dataset(array_record_dir, threads=2, **KWARGS)
  assert other._transform_pool() is pool  # pylint: disable=protected-access
  clone = pickle.loads(pickle.dumps(default))
  monkeypatch.setattr(npi.os, 'getpid', lambda: -1)
  assert default._transform_pool() is None  # pylint: disable=protected-access
  assert clone._transform_pool() is None  # pylint: disable=protected-access
  with pytest.raises(ValueError, match='threads must be at least 1'):
    _dataset(array_record_dir, threads=0, **KWARGS)


def _sampled(outputs) -> dict[str, np.ndarray]:
  """Everything an (inputs, targets, weights) holds but the image."""
  flat = _flat(outputs)
  del flat['image']
  return flat


def test_tf_data_grain_and_pytorch_sample_the_same(prepared_dummy,
                                                   array_record_dir):
  """The three paths, each run as users run it, on the same images: the same
  masks, points, prompt kinds, box jitter and weights, bit for bit."""
  pytest.importorskip('grain')
  torch = pytest.importorskip('torch')
  kwargs = dict(image_size=64, num_masks=6, seed=11, layout='keras_hub',
                box_jitter=0.2)
  ds = tfds.load('segment_anything/all', split='train',
                 data_dir=prepared_dummy, decoders=SKIP)
  ds = ds.map(lambda ex: (ex['image']['image_id'],
                          sam_inputs.to_sam_inputs(ex, **kwargs)),
              num_parallel_calls=2, deterministic=True)
  by_tf = {int(i): _as_numpy(out) for i, out in ds}
  dataset = _dataset(array_record_dir, **kwargs)
  ids = [int(i) for i in dataset.image_ids()]
  loader = npi.grain_loader(dataset, batch_size=3, shuffle=False,
                            drop_remainder=False)
  by_grain = dict(zip(ids, _unbatch(list(loader))))
  loader = torch.utils.data.DataLoader(dataset, batch_size=3)
  by_torch = dict(zip(ids, _unbatch(
      [tf.nest.map_structure(lambda t: t.numpy(), b) for b in loader])))
  assert sorted(by_tf) == sorted(by_grain) == sorted(by_torch)
  structure = dataset[0]
  boxes_used = 0
  for image_id, tf_out in by_tf.items():
    grain_out = tf.nest.pack_sequence_as(structure, by_grain[image_id])
    torch_out = tf.nest.pack_sequence_as(structure, by_torch[image_id])
    expected = _sampled(tf_out)
    for got in (grain_out, torch_out):
      got = _sampled(got)
      for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert_same_inputs(tf_out, grain_out, image_atol=1.01)
    boxes_used += int((expected['labels'] == -1).sum())
  assert boxes_used > 0  # 'mixed' prompts: some rows prompted by boxes.


def _read_in_child(dataset, queue):
  try:
    dataset[0]
    queue.put('read')
  except RuntimeError as e:
    queue.put(str(e))


def test_fork_after_read_is_a_clear_error(array_record_dir):
  """array_record crashes (SIGSEGV) if a fork of a reader reads: refuse."""
  dataset = _dataset(array_record_dir, **KWARGS)
  dataset[0]  # Reads in this process.
  context = multiprocessing.get_context('fork')
  queue = context.Queue()
  child = context.Process(target=_read_in_child, args=(dataset, queue))
  child.start()
  message = queue.get(timeout=60)
  child.join(timeout=60)
  assert child.exitcode == 0
  assert 'spawn or forkserver' in message


def test_package_import_stays_light():
  code = ('import sys, segment_anything_tfds;'
          ' from segment_anything_tfds.read import numpy_inputs, sampling;'
          ' print(sorted(m for m in ("tensorflow", "torch", "grain",'
          ' "keras_hub", "keras", "jax") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'
  # The Keras trainer needs keras, not keras_hub (until a model is built).
  code = ('import sys, segment_anything_tfds as s; s.SAMTrainer;'
          ' print(sorted(m for m in ("torch", "grain", "keras_hub", "jax")'
          ' if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'


# -------------------------------------------------------------------- Grain


def _items(dataset):
  return [tf.nest.flatten(dataset[i]) for i in range(len(dataset))]


def _unbatch(batches):
  out = []
  for batch in batches:
    leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(batch)]
    out.extend([leaf[i] for leaf in leaves] for i in range(len(leaves[0])))
  return out


def _key(leaves):
  return b''.join(np.ascontiguousarray(leaf).tobytes() for leaf in leaves)


@pytest.mark.parametrize('worker_count', [0, 2])
def test_grain_loader(array_record_dir, worker_count):
  grain = pytest.importorskip('grain')
  dataset = _dataset(array_record_dir, validation_fraction=0.2, **KWARGS)
  expected = sorted(_key(leaves) for leaves in _items(dataset))
  loader = npi.grain_loader(dataset, batch_size=2, seed=1, num_epochs=2,
                            worker_count=worker_count, drop_remainder=False)
  assert isinstance(loader, grain.DataLoader)
  batches = list(loader)
  first = batches[0]
  assert first[0]['images'].shape == (2, 64, 64, 3)
  assert first[0]['boxes'].shape == (2, 6, 1, 2, 2)
  assert first[1].shape == (2, 6, 16, 16) and first[2].shape == (2, 6)
  got = sorted(_key(leaves) for leaves in _unbatch(batches))
  # Two epochs: every kept image twice, transformed as dataset[i].
  assert got == sorted(expected * 2)
  del batches, first  # Release Grain's shared memory before shutdown.


class _CountingDataset(npi.SamDataset):
  """Counts the records transformed."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.transformed = 0

  def __getitem__(self, index):
    self.transformed += 1
    return super().__getitem__(index)


def test_grain_loader_reads_a_bounded_number_ahead():
  """Grain's default read-ahead (500 records, 16 threads) would hold about
  15 GB of 1024^2 SAM inputs: the loader reads about two batches ahead."""
  pytest.importorskip('grain')
  examples = [_as_numpy(make_example(np.random.default_rng(i), height=9,
                                     width=11, num_masks=2,
                                     image_id=i)[0]) for i in range(64)]
  dataset = _CountingDataset(examples, **KWARGS)
  loader = npi.grain_loader(dataset, batch_size=2, num_epochs=1)
  it = iter(loader)
  next(it)
  deadline = time.monotonic() + 1.0
  while time.monotonic() < deadline:  # Let read-ahead run.
    time.sleep(0.05)
  assert 2 <= dataset.transformed <= 2 + max(4, os.cpu_count()) + 2, (
      dataset.transformed)
  assert len(list(it)) == 31  # And the epoch still ends.


def test_grain_map_dataset(array_record_dir):
  grain = pytest.importorskip('grain')
  dataset = _dataset(array_record_dir, **KWARGS)
  pipeline = grain.MapDataset.source(dataset).shuffle(seed=0).batch(
      4, drop_remainder=False)
  got = sorted(_key(leaves) for leaves in _unbatch(list(pipeline)))
  assert got == sorted(_key(leaves) for leaves in _items(dataset))


# ------------------------------------------------------------------ PyTorch


def test_torch_data_loader(array_record_dir):
  torch = pytest.importorskip('torch')
  dataset = _dataset(array_record_dir, **KWARGS)
  expected = sorted(_key(leaves) for leaves in _items(dataset))
  for workers, context in ((0, None), (2, 'spawn')):
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, shuffle=True, num_workers=workers,
        multiprocessing_context=context,
        generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    inputs, targets, weights = batches[0]
    assert isinstance(targets, torch.Tensor) and targets.dtype == torch.float32
    assert inputs['images'].shape == (3, 64, 64, 3)
    assert weights.shape == (3, 6)
    numpy_batches = [tf.nest.map_structure(lambda t: t.numpy(), b)
                     for b in batches]
    got = sorted(_key(leaves) for leaves in _unbatch(numpy_batches))
    assert got == expected
