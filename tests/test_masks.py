"""decode_masks: both backends, sampling, alignment, tf.data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.read import masks as masks_lib

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import examples_dataset, make_example  # pylint: disable=g-import-not-at-top,wrong-import-position


def _resize(masks: np.ndarray, output_size) -> np.ndarray:
  if output_size is None:
    return masks
  return tf.image.resize(masks[..., None], output_size,
                         method='nearest')[..., 0].numpy()


@pytest.mark.parametrize('backend', ['tf', 'pycocotools'])
@pytest.mark.parametrize('output_size', [None, (8, 12)])
def test_all_masks(backend, output_size):
  example, masks = make_example(np.random.default_rng(0), height=21,
                                width=30, num_masks=6)
  out = masks_lib.decode_masks(example, backend=backend,
                               output_size=output_size)
  got = out['annotations']['mask'].numpy()
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, _resize(masks, output_size))
  # The input is untouched and other fields are kept.
  assert 'mask' not in example['annotations']
  np.testing.assert_array_equal(out['annotations']['id'],
                                example['annotations']['id'])
  assert out['image'] is example['image']


@pytest.mark.parametrize('backend', ['tf', 'pycocotools'])
def test_sampled_masks_stay_aligned(backend):
  example, masks = make_example(np.random.default_rng(1), height=19,
                                width=23, num_masks=12)
  out = masks_lib.decode_masks(example, backend=backend, num_masks=5, seed=3)
  ann = out['annotations']
  ids = ann['id'].numpy().astype(np.int64)
  assert len(ids) == 5 and len(set(ids)) == 5
  index = ids - 100
  np.testing.assert_array_equal(ann['mask'].numpy(), masks[index])
  for key in ('area', 'bbox', 'predicted_iou', 'stability_score',
              'point_coords', 'crop_box'):
    np.testing.assert_array_equal(ann[key].numpy(),
                                  tf.gather(example['annotations'][key],
                                            index).numpy(), err_msg=key)
  np.testing.assert_array_equal(ann['segmentation']['counts'].numpy(),
                                example['annotations']['segmentation'][
                                    'counts'].numpy()[index])
  # Areas, computed by pycocotools at encoding, match the decoded masks.
  np.testing.assert_array_equal(ann['mask'].numpy().sum(axis=(1, 2)),
                                ann['area'].numpy())


def test_sampling_is_seeded_and_uses_image_id():
  rng = np.random.default_rng(2)
  example, _ = make_example(rng, height=9, width=9, num_masks=30)

  def ids(ex, seed):
    out = masks_lib.decode_masks(ex, num_masks=6, seed=seed)
    return tuple(out['annotations']['id'].numpy().tolist())

  first = ids(example, 0)
  assert ids(example, 0) == first
  assert len({ids(example, s) for s in range(6)}) > 1
  other = dict(example)
  other['image'] = dict(example['image'])
  seen = set()
  for image_id in range(2, 8):
    other['image']['image_id'] = tf.constant(image_id, tf.uint64)
    seen.add(ids(other, 0))
  assert len(seen) > 1


def test_more_requested_than_present_and_no_masks():
  rng = np.random.default_rng(3)
  example, masks = make_example(rng, height=7, width=5, num_masks=3)
  out = masks_lib.decode_masks(example, num_masks=10, seed=0,
                               output_size=(4, 4))
  assert out['annotations']['mask'].shape == (3, 4, 4)
  np.testing.assert_array_equal(out['annotations']['mask'].numpy(),
                                _resize(masks, (4, 4)))
  empty, _ = make_example(rng, height=7, width=5, num_masks=0)
  for backend in ('tf', 'pycocotools'):
    out = masks_lib.decode_masks(empty, num_masks=4, seed=0,
                                 output_size=(4, 4), backend=backend)
    assert out['annotations']['mask'].shape == (0, 4, 4)
    out = masks_lib.decode_masks(empty, backend=backend)
    assert out['annotations']['mask'].shape == (0, 7, 5)


@pytest.mark.parametrize('backend', ['tf', 'pycocotools'])
def test_in_dataset_map(backend):
  rng = np.random.default_rng(4)
  pairs = [make_example(rng, height=int(rng.integers(5, 30)),
                        width=int(rng.integers(5, 30)), num_masks=7,
                        image_id=i) for i in range(6)]
  examples = [p[0] for p in pairs]

  ds = examples_dataset(examples)
  ds = ds.map(lambda ex: masks_lib.decode_masks(
      ex, backend=backend, num_masks=4, output_size=(6, 6), seed=7),
              num_parallel_calls=3, deterministic=True)
  for out, (_, masks) in zip(ds, pairs):
    index = out['annotations']['id'].numpy().astype(np.int64) - 100
    np.testing.assert_array_equal(out['annotations']['mask'].numpy(),
                                  _resize(masks[index], (6, 6)))
  # Same seed, same samples as eagerly.
  eager = masks_lib.decode_masks(examples[0], num_masks=4, seed=7)
  first = next(iter(ds))
  np.testing.assert_array_equal(eager['annotations']['id'],
                                first['annotations']['id'])


def test_backends_agree_in_graph():
  example, _ = make_example(np.random.default_rng(5), height=33, width=17,
                            num_masks=9)
  fn = tf.function(lambda ex, backend: masks_lib.decode_masks(
      ex, backend=backend, num_masks=6, seed=1, output_size=(10, 7)))
  a = fn(example, 'tf')['annotations']['mask']
  b = fn(example, 'pycocotools')['annotations']['mask']
  np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_options():
  example, _ = make_example(np.random.default_rng(6), height=5, width=5,
                            num_masks=2)
  with pytest.raises(ValueError, match='backend'):
    masks_lib.decode_masks(example, backend='numpy')
  with pytest.raises(ValueError, match='num_masks'):
    masks_lib.decode_masks(example, num_masks=-1)


def test_missing_pycocotools_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'pycocotools', None)
  monkeypatch.setitem(sys.modules, 'pycocotools.mask', None)
  example, _ = make_example(np.random.default_rng(7), height=5, width=5,
                            num_masks=2)
  with pytest.raises(ImportError,
                     match=r'pip install segment_anything_tfds\[pycocotools\]'):
    masks_lib.decode_masks(example, backend='pycocotools')
  # The TF backend does not need it.
  out = masks_lib.decode_masks(example)
  assert out['annotations']['mask'].shape == (2, 5, 5)
