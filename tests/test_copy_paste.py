"""copy_paste: exact placement, seeds, occlusion, eagerly and in tf.data."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.read import copy_paste as cp
from segment_anything_tfds.read import rle

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import examples_dataset, make_example  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import PYTHON_OPS, dataset_ops  # pylint: disable=g-import-not-at-top,wrong-import-position

HS, WS = 12, 14  # Source image.
HT, WT = 10, 11  # Target image.


def _encode(masks: np.ndarray) -> list[bytes]:
  return [r['counts'] for r in mask_utils.encode(np.asfortranarray(
      masks.transpose(1, 2, 0).astype(np.uint8)))]


@pytest.fixture(scope='module')
def scene():
  """A random source image with two known objects, and a target image."""
  rng = np.random.default_rng(3)
  source = rng.integers(1, 256, (HS, WS, 3), dtype=np.uint8)
  square = np.zeros((HS, WS), bool)
  square[3:7, 4:9] = True  # 4 x 5 at (3, 4).
  blob = np.zeros((HS, WS), bool)
  blob[8:11, 1:4] = True
  blob[9, 4] = True  # 3 x 4 box at (8, 1), not full.
  target = rng.integers(0, 256, (HT, WT, 3), dtype=np.uint8)
  return source, np.stack([square, blob]), target


def _expected_paste(source, mask, box, place, target):
  """numpy: object `box` of `source` scaled (nearest) onto `target`."""
  out = target.copy()
  top, left, height, width = place
  y0, x0, bh, bw = box
  pasted = np.zeros(target.shape[:2], bool)
  for i in range(height):
    for j in range(width):
      y, x = top + i, left + j
      if y >= target.shape[0] or x >= target.shape[1]:
        continue
      # TF's nearest rule: floor((i + 0.5) * in / out), here exact.
      sy = y0 + min(int((i + 0.5) * bh / height), bh - 1)
      sx = x0 + min(int((j + 0.5) * bw / width), bw - 1)
      if mask[sy, sx]:
        out[y, x] = source[sy, sx]
        pasted[y, x] = True
  return out, pasted


def test_object_boxes(scene):
  _, masks, _ = scene
  empty = np.zeros((1, HS, WS), bool)
  boxes = cp.object_boxes(np.concatenate([masks, empty])).numpy()
  np.testing.assert_array_equal(boxes, [[3, 4, 4, 5], [8, 1, 3, 4],
                                        [0, 0, 0, 0]])


@pytest.mark.parametrize('place', [
    (2, 5, 4, 5),  # Scale 1, inside the target.
    (0, 0, 8, 10),  # Scale 2.
    (7, 8, 4, 5),  # Cut at the bottom-right border.
    (1, 1, 2, 3),  # Shrunk.
])
def test_place_and_composite_exact_pixels(scene, place):
  source, masks, target = scene
  box = (3, 4, 4, 5)
  expected, expected_mask = _expected_paste(source, masks[0], box, place,
                                            target)

  def fn(src, msk, tgt):
    images, landed = cp.place_objects(src, msk[:1], [box], [place],
                                      tf.shape(tgt)[:2])
    return cp.composite(tgt, images, landed)

  image, visible = fn(source, masks, target)
  np.testing.assert_array_equal(image.numpy(), expected)
  np.testing.assert_array_equal(visible.numpy()[0], expected_mask)
  ds = tf.data.Dataset.from_tensors((source, masks, target)).map(fn)
  image, visible = next(iter(ds))
  np.testing.assert_array_equal(image.numpy(), expected)
  np.testing.assert_array_equal(visible.numpy()[0], expected_mask)


def test_later_objects_cover_earlier_ones(scene):
  source, masks, target = scene
  boxes = [(3, 4, 4, 5), (8, 1, 3, 4)]
  places = [(2, 2, 4, 5), (3, 3, 3, 4)]  # Overlapping.
  images, landed = cp.place_objects(source, masks, boxes, places, (HT, WT))
  image, visible = cp.composite(target, images, landed)
  first, first_mask = _expected_paste(source, masks[0], boxes[0], places[0],
                                      target)
  both, second_mask = _expected_paste(source, masks[1], boxes[1], places[1],
                                      first)
  np.testing.assert_array_equal(image.numpy(), both)
  np.testing.assert_array_equal(visible.numpy()[1], second_mask)
  np.testing.assert_array_equal(visible.numpy()[0],
                                first_mask & ~second_mask)
  # No objects: the target as it is.
  image, visible = cp.composite(target, images[:0], landed[:0])
  np.testing.assert_array_equal(image.numpy(), target)
  assert visible.shape == (0, HT, WT)


def test_occlude():
  masks = np.zeros((3, 4, 5), np.uint8)
  masks[0] = 1
  masks[1, 1:3, 1:3] = 1
  masks[2, 0, 4] = 1
  covered = np.zeros((4, 5), bool)
  covered[1:3, 0:4] = True
  left, kept = cp.occlude(masks, covered)
  np.testing.assert_array_equal(left.numpy(), masks * ~covered)
  assert kept.numpy().tolist() == [0, 1, 2]
  left, kept = cp.occlude(masks, covered, drop_empty=True)
  assert kept.numpy().tolist() == [0, 2]
  np.testing.assert_array_equal(left.numpy(), (masks * ~covered)[[0, 2]])


def test_sample_placements_fit_and_scale():
  sizes = tf.constant([[4, 5], [20, 3], [1, 1]])
  for seed in range(20):
    p = cp.sample_placements(sizes, (HT, WT), (0.5, 1.5), [seed, 1]).numpy()
    scaled = p[:, 2:]
    ratio = scaled / sizes.numpy()
    assert (scaled >= 1).all() and (ratio <= 1.5 + 0.5 / sizes.numpy()).all()
    assert (ratio >= 0.5 - 0.5 / sizes.numpy()).all()
    room = np.maximum(np.array([HT, WT]) - scaled, 0)
    assert (p[:, :2] >= 0).all() and (p[:, :2] <= room).all()
  p = cp.sample_placements(sizes, (HT, WT), (1.0, 1.0), [0, 0]).numpy()
  np.testing.assert_array_equal(p[:, 2:], sizes.numpy())


def _paste(source, masks, target, seed, **kwargs):
  return cp.paste_objects(target, source, _encode(masks), (HS, WS),
                          num_objects=2, seed=seed, **kwargs)


def test_paste_objects_places_the_objects_it_reports(scene):
  """Scale 1: each pasted object is its source object, moved as a whole."""
  source, masks, target = scene
  out = _paste(source, masks, target, 5, scale_range=(1.0, 1.0))
  image, pasted = out['image'].numpy(), out['pasted_masks'].numpy()
  assert out['pasted_indices'].numpy().tolist() == [0, 1]
  union = pasted.any(0).astype(bool)
  np.testing.assert_array_equal(image[~union], target[~union])
  assert not (pasted[0] & pasted[1]).any()
  for k in range(2):
    # The one shift that puts the object where it shows (the parts not
    # shown lie under the later object), with the source's pixels.
    found = []
    for dy in range(-HS, HT):
      for dx in range(-WS, WT):
        moved = np.zeros((HT, WT), bool)
        ys, xs = np.nonzero(masks[k])
        ys, xs = ys + dy, xs + dx
        if ys.min() < 0 or xs.min() < 0 or ys.max() >= HT or xs.max() >= WT:
          continue
        moved[ys, xs] = True
        hidden = moved & ~pasted[k].astype(bool)
        if ((pasted[k].astype(bool) <= moved).all() and
            (hidden <= pasted[k + 1:].any(0).astype(bool)).all() and
            (image[pasted[k] > 0] == source[np.nonzero(pasted[k])[0] - dy,
                                            np.nonzero(pasted[k])[1] - dx]
             ).all()):
          found.append((dy, dx))
    assert len(found) == 1, (k, found)


def test_paste_objects_seeded(scene):
  source, masks, target = scene
  runs = [_paste(source, masks, target, seed) for seed in (1, 1, 2)]
  for key in ('image', 'pasted_masks', 'pasted_indices'):
    np.testing.assert_array_equal(runs[0][key], runs[1][key])
  assert not np.array_equal(runs[0]['image'], runs[2]['image'])
  # The same in a parallel tf.data map.
  ds = tf.data.Dataset.from_tensors((source, masks, target)).repeat(3).map(
      lambda s, m, t: _paste_graph(s, m, t, 1), num_parallel_calls=3)
  for out in ds:
    for key in ('image', 'pasted_masks', 'pasted_indices'):
      np.testing.assert_array_equal(out[key], runs[0][key])
  assert not dataset_ops(ds) & PYTHON_OPS


def _paste_graph(source, masks, target, seed, **kwargs):
  return cp.paste_objects(target, source, rle.encode(masks), (HS, WS),
                          num_objects=2, seed=seed, **kwargs)


def test_paste_objects_occludes_target_masks(scene):
  source, masks, target = scene
  target_masks = np.zeros((3, HT, WT), np.uint8)
  target_masks[0] = 1  # Everything: keeps what is not covered.
  target_masks[2, 4, 5] = 1
  out = _paste(source, masks, target, 7, target_masks=target_masks,
               scale_range=(2.0, 2.0))
  covered = out['pasted_masks'].numpy().any(0)
  np.testing.assert_array_equal(out['target_masks'].numpy(),
                                target_masks * ~covered)
  assert out['target_indices'].numpy().tolist() == [0, 1, 2]
  # Mask 1 is empty from the start, mask 2 is covered, with this seed.
  assert covered[4, 5]
  dropped = _paste(source, masks, target, 7, target_masks=target_masks,
                   scale_range=(2.0, 2.0), drop_empty=True)
  assert dropped['target_indices'].numpy().tolist() == [0]
  np.testing.assert_array_equal(dropped['target_masks'].numpy(),
                                (target_masks * ~covered)[:1])
  np.testing.assert_array_equal(dropped['image'], out['image'])


def test_paste_objects_output_forms(scene):
  source, masks, target = scene
  dense = _paste(source, masks, target, 3, target_masks=masks[:, :HT, :WT])
  small = _paste(source, masks, target, 3, target_masks=masks[:, :HT, :WT],
                 output_size=(5, 4))
  as_rle = _paste(source, masks, target, 3, target_masks=masks[:, :HT, :WT],
                  as_rle=True)
  full = dense['pasted_masks'].numpy()
  np.testing.assert_array_equal(
      small['pasted_masks'].numpy(),
      tf.image.resize(full[..., None], (5, 4), method='nearest')[..., 0])
  np.testing.assert_array_equal(
      mask_utils.decode([{'size': [HT, WT], 'counts': c} for c in
                         as_rle['pasted_counts'].numpy()]).transpose(2, 0, 1),
      full)
  np.testing.assert_array_equal(
      rle.decode(as_rle['target_counts'], (HT, WT)),
      dense['target_masks'])


def test_paste_from_example_in_dataset_map():
  """Sources as dataset examples; seeded by (seed, source image_id)."""
  rng = np.random.default_rng(9)
  pairs = [make_example(rng, height=HS, width=WS, num_masks=n, image_id=i)
           for i, n in ((1, 4), (2, 0), (3, 2))]
  targets = tf.data.Dataset.from_tensor_slices(
      rng.integers(0, 256, (3, HT, WT, 3), dtype=np.uint8))
  ds = tf.data.Dataset.zip((targets, examples_dataset([p[0] for p in pairs])))
  ds = ds.map(lambda t, s: cp.paste_from_example(t, s, seed=4, num_objects=3),
              num_parallel_calls=2, deterministic=True)
  outs = list(ds)
  for out, (example, _), target in zip(outs, pairs, targets):
    eager = cp.paste_from_example(target, example, seed=4, num_objects=3)
    for key in ('image', 'pasted_masks', 'pasted_indices'):
      np.testing.assert_array_equal(out[key], eager[key])
  assert [len(o['pasted_indices']) for o in outs] == [3, 0, 2]
  np.testing.assert_array_equal(outs[1]['image'], list(targets)[1])


def test_mismatched_source_size_raises(scene):
  source, masks, target = scene
  with pytest.raises(tf.errors.InvalidArgumentError, match='source masks'):
    cp.paste_objects(target, source[:, :-1], _encode(masks), (HS, WS),
                     num_objects=1, seed=0)


def test_public_names_are_exported_lazily():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds as pkg  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.train import evaluation  # pylint: disable=g-import-not-at-top
  assert pkg.paste_objects is cp.paste_objects
  assert pkg.paste_from_example is cp.paste_from_example
  assert pkg.MaskIoU is evaluation.MaskIoU
  assert pkg.evaluate_predictions is evaluation.evaluate_predictions
  assert pkg.format_table is evaluation.format_table
  assert pkg.rle.merge is rle.merge and pkg.rle.iou is rle.iou
  for name in pkg.__all__:
    getattr(pkg, name)
  out = subprocess.run(
      [sys.executable, '-c', 'import sys, segment_anything_tfds;'
       ' print("tensorflow" in sys.modules)'],
      capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip() == 'False'
