"""sam_inputs / sam_dataset: SAM-style training inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.read import masks as masks_lib
from segment_anything_tfds.read import sam_inputs as sam
from segment_anything_tfds.read import sampling

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import examples_dataset, make_example  # pylint: disable=g-import-not-at-top,wrong-import-position

S, M = 64, 16  # Small image_size / mask_size for tests.


def _expected_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
  """pycocotools-decoded masks -> nearest resize (long side M) -> pad."""
  scale = M / max(height, width)
  mh, mw = int(height * scale + 0.5), int(width * scale + 0.5)
  full = mask_utils.decode(mask_utils.encode(
      np.asfortranarray(masks.transpose(1, 2, 0)))).transpose(2, 0, 1)
  small = tf.image.resize(full[..., None], (mh, mw),
                          method='nearest')[..., 0].numpy()
  return np.pad(small, [(0, 0), (0, M - mh), (0, M - mw)])


@pytest.mark.parametrize('backend', ['tf', 'pycocotools'])
@pytest.mark.parametrize('shape', [(30, 45), (45, 30), (16, 16)])
def test_all_masks_exact(backend, shape):
  height, width = shape
  example, masks = make_example(np.random.default_rng(0), height=height,
                                width=width, num_masks=5)
  inputs, targets, weights = sam.to_sam_inputs(
      example, image_size=S, mask_size=M, num_masks=8, box_jitter=0.0,
      seed=0, backend=backend)
  expected = _expected_masks(masks, height, width)
  assert targets.shape == (8, M, M) and targets.dtype == tf.float32
  np.testing.assert_array_equal(targets.numpy()[:5], expected)
  np.testing.assert_array_equal(targets.numpy()[5:], 0)
  np.testing.assert_array_equal(weights.numpy(),
                                [float(m.any()) for m in expected] + [0] * 3)
  # SAM's labels: 1 foreground, -1 padding.
  np.testing.assert_array_equal(inputs['point_labels'].numpy()[:, 0],
                                [1] * 5 + [-1] * 3)
  # Points fall inside their (decoded) mask.
  stride = S / M
  for k in range(5):
    if weights[k] > 0:
      x, y = inputs['points'].numpy()[k, 0]
      assert expected[k, int(y // stride), int(x // stride)] == 1
  # Boxes: pycocotools' box, scaled to the resized image.
  scale = S / max(height, width)
  x, y, w, h = mask_utils.toBbox(mask_utils.encode(
      np.asfortranarray(masks.transpose(1, 2, 0)))).T
  np.testing.assert_allclose(
      inputs['boxes'].numpy()[:5],
      np.stack([x, y, x + w, y + h], axis=1) * scale, rtol=1e-5, atol=1e-3)
  np.testing.assert_array_equal(inputs['boxes'].numpy()[5:], 0)


def test_image_resized_normalized_padded():
  example, _ = make_example(np.random.default_rng(1), height=20, width=50,
                            num_masks=2)
  color = np.array([10, 128, 250], np.uint8)
  example['image']['content'] = tf.constant(
      np.broadcast_to(color, (20, 50, 3)).copy())
  inputs, _, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                num_masks=2)
  image = inputs['image'].numpy()
  assert image.shape == (S, S, 3) and image.dtype == np.float32
  new_h = int(20 * S / 50 + 0.5)  # 26
  normalized = (color - np.array(sam.PIXEL_MEAN)) / np.array(sam.PIXEL_STD)
  np.testing.assert_allclose(image[:new_h], np.broadcast_to(
      normalized, (new_h, S, 3)), atol=1e-4)
  np.testing.assert_array_equal(image[new_h:], 0)


def test_jpeg_bytes_input_matches_decoded():
  example, _ = make_example(np.random.default_rng(2), height=24, width=31,
                            num_masks=3)
  jpeg = tf.io.encode_jpeg(example['image']['content'])
  decoded = dict(example)
  # The path decodes JPEGs with libjpeg's accurate IDCT (PIL's).
  decoded['image'] = dict(example['image'], content=tf.io.decode_jpeg(
      jpeg, channels=3, dct_method='INTEGER_ACCURATE'))
  raw = dict(example)
  raw['image'] = dict(example['image'], content=jpeg)
  a, ta, _ = sam.to_sam_inputs(decoded, image_size=S, mask_size=M, num_masks=4,
                            seed=5)
  b, tb, _ = sam.to_sam_inputs(raw, image_size=S, mask_size=M, num_masks=4,
                            seed=5)
  np.testing.assert_array_equal(a['image'].numpy(), b['image'].numpy())
  np.testing.assert_array_equal(ta.numpy(), tb.numpy())


def test_fast_jpeg_close_to_full_decode():
  """DCT-scaled decoding (here 1/4) gives nearly the same input image."""
  rng = np.random.default_rng(7)
  example, _ = make_example(rng, height=200, width=300, num_masks=2)
  yy, xx = np.mgrid[:200, :300]
  smooth = np.stack([xx * 255 / 300, yy * 255 / 200, (xx + yy) * 255 / 500],
                    axis=-1).astype(np.uint8)
  example['image']['content'] = tf.io.encode_jpeg(tf.constant(smooth),
                                                  quality=95)
  fast, t_fast, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                   num_masks=2, seed=0)
  full, t_full, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                   num_masks=2, seed=0, fast_jpeg=False)
  np.testing.assert_array_equal(t_fast.numpy(), t_full.numpy())
  a, b = fast['image'].numpy(), full['image'].numpy()
  new_h = int(200 * S / 300 + 0.5)
  np.testing.assert_array_equal(a[new_h:], 0)
  # Normalized units: 0.05 is about 3 grey levels.
  assert np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()


def test_filters():
  rng = np.random.default_rng(3)
  example, masks = make_example(rng, height=32, width=32, num_masks=8)
  ann = example['annotations']
  ann['predicted_iou'] = tf.constant([.9, .5, .9, .9, .9, .9, .9, .9],
                                     tf.float64)
  ann['stability_score'] = tf.constant([.95, .95, .5, .95, .95, .95, .95,
                                        .95], tf.float64)
  area = ann['area'].numpy() / (32 * 32)
  lo, hi = np.sort(area)[1], np.sort(area)[-2]  # Drops smallest and largest.
  _, targets, weights = sam.to_sam_inputs(
      example, image_size=S, mask_size=M, num_masks=8,
      min_predicted_iou=0.8, min_stability_score=0.9, min_area_fraction=lo,
      max_area_fraction=hi, seed=0)
  kept = [i for i in range(8) if i not in (1, 2) and lo <= area[i] <= hi]
  assert len(kept) >= 2
  expected = _expected_masks(masks, 32, 32)[kept]
  np.testing.assert_array_equal(targets.numpy()[:len(kept)], expected)
  np.testing.assert_array_equal(targets.numpy()[len(kept):], 0)
  assert weights.numpy()[len(kept):].sum() == 0


def test_sampling_and_jitter_are_seeded():
  example, masks = make_example(np.random.default_rng(4), height=40,
                                width=40, num_masks=20)
  expected = _expected_masks(masks, 40, 40)

  def run(seed):
    inputs, targets, weights = sam.to_sam_inputs(
        example, image_size=S, mask_size=M, num_masks=6, seed=seed,
        box_jitter=0.1, max_box_jitter=3.0)
    return inputs, targets.numpy(), weights.numpy()

  a_in, a_t, a_w = run(0)
  b_in, b_t, _ = run(0)
  np.testing.assert_array_equal(a_t, b_t)
  for key in a_in:
    np.testing.assert_array_equal(a_in[key].numpy(), b_in[key].numpy())
  # Six distinct masks of the image.
  chosen = [int(np.flatnonzero((expected == t).all(axis=(1, 2)))[0])
            for t in a_t]
  assert len(set(chosen)) == 6
  assert a_w.sum() == 6
  # Jitter is bounded and stays in the frame.
  exact_in, _, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                  num_masks=6, seed=0, box_jitter=0.0)
  diff = np.abs(a_in['boxes'].numpy() - exact_in['boxes'].numpy())
  assert diff.max() <= 3.0 + 1e-5 and diff.max() > 0
  assert a_in['boxes'].numpy().min() >= 0 and a_in['boxes'].numpy().max() <= S
  # Other seeds pick other masks or points.
  others = [run(seed) for seed in range(1, 5)]
  assert any(not np.array_equal(o[1], a_t) or not np.array_equal(
      o[0]['points'].numpy(), a_in['points'].numpy()) for o in others)


@pytest.mark.parametrize('backend', ['tf', 'pycocotools'])
def test_image_without_usable_masks(backend):
  rng = np.random.default_rng(8)
  for example in (make_example(rng, height=12, width=20, num_masks=0)[0],
                  make_example(rng, height=12, width=20, num_masks=3)[0]):
    inputs, targets, weights = sam.to_sam_inputs(
        example, image_size=S, mask_size=M, num_masks=4, seed=0,
        min_predicted_iou=2.0, backend=backend)  # Filters out everything.
    assert targets.shape == (4, M, M) and not targets.numpy().any()
    assert not weights.numpy().any()
    assert inputs['points'].shape == (4, 1, 2)
    assert (inputs['point_labels'].numpy() == -1).all()


def test_points_cover_the_mask():
  """Points are drawn among all mask pixels, not a fixed one."""
  example, masks = make_example(np.random.default_rng(5), height=16,
                                width=16, num_masks=1)
  example['annotations']['segmentation']['counts'] = tf.constant(
      [mask_utils.encode(np.ones((16, 16, 1), np.uint8, order='F'))[0][
          'counts']])
  seen = set()
  for seed in range(40):
    inputs, _, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                  num_masks=1, seed=seed)
    seen.add(tuple(inputs['points'].numpy()[0, 0].tolist()))
  assert len(seen) > 20


def test_sam_dataset_batches():
  rng = np.random.default_rng(6)
  examples = [make_example(rng, height=20 + i, width=30 - i, num_masks=3 + i,
                           image_id=i)[0] for i in range(5)]

  ds = examples_dataset(examples)
  batched = sam.sam_dataset(ds, batch_size=2, image_size=S, mask_size=M,
                            num_masks=4, seed=0)
  batches = list(batched)
  assert len(batches) == 2  # drop_remainder
  inputs, targets, weights = batches[0]
  assert inputs['image'].shape == (2, S, S, 3)
  assert inputs['points'].shape == (2, 4, 1, 2)
  assert inputs['boxes'].shape == (2, 4, 4)
  assert targets.shape == (2, 4, M, M) and weights.shape == (2, 4)
  assert batched.element_spec[1].shape == (2, 4, M, M)
  one, t_one, w_one = sam.to_sam_inputs(examples[0], image_size=S, mask_size=M,
                                     num_masks=4, seed=0)
  np.testing.assert_array_equal(targets[0].numpy(), t_one.numpy())
  np.testing.assert_array_equal(weights[0].numpy(), w_one.numpy())
  with pytest.raises(TypeError, match='unknown'):
    sam.sam_dataset(ds, batch_size=2, mask_sise=8)


# ------------------------------------------------------- layout 'keras_hub'


def _keras_hub(example, **kwargs):
  options = dict(image_size=S, num_masks=8, seed=0, layout='keras_hub')
  options.update(kwargs)
  return sam.to_sam_inputs(example, **options)


@pytest.mark.parametrize('prompt', ['point', 'box', 'mixed'])
def test_keras_hub_layout(prompt):
  height, width = 30, 45
  example, masks = make_example(np.random.default_rng(9), height=height,
                                width=width, num_masks=5)
  inputs, targets, weights = _keras_hub(example, prompt=prompt)
  same, sam_targets, sam_weights = sam.to_sam_inputs(
      example, image_size=S, mask_size=M, num_masks=8, seed=0)
  assert set(inputs) == {'images', 'points', 'labels', 'boxes'}
  assert inputs['images'].shape == (S, S, 3)
  assert inputs['points'].shape == (8, 1, 2)
  assert inputs['labels'].shape == (8, 1)
  assert inputs['boxes'].shape == (8, 1, 2, 2)
  for value in (*inputs.values(), targets, weights):
    assert value.dtype == tf.float32
  # Targets at S / 4, the same masks (and pycocotools') as layout 'sam'.
  assert targets.shape == (8, S // 4, S // 4) == (8, M, M)
  np.testing.assert_array_equal(targets.numpy(), sam_targets.numpy())
  np.testing.assert_array_equal(targets.numpy()[:5],
                                _expected_masks(masks, height, width))
  np.testing.assert_array_equal(weights.numpy(), sam_weights.numpy())
  labels = inputs['labels'].numpy()[:, 0]
  np.testing.assert_array_equal(labels[5:], -1)  # Padding.
  if prompt == 'point':
    np.testing.assert_array_equal(labels[:5], 1)
  elif prompt == 'box':
    np.testing.assert_array_equal(labels[:5], -1)
  by_point = labels[:5] == 1
  # Point rows: the 'sam' point in SAM's pixel-index convention (-0.5);
  # box rows and padding: no point.
  points = inputs['points'].numpy()[:, 0]
  np.testing.assert_array_equal(points[:5][by_point],
                                same['points'].numpy()[:5, 0][by_point] - 0.5)
  np.testing.assert_array_equal(points[:5][~by_point], 0)
  np.testing.assert_array_equal(points[5:], 0)
  # Every real mask carries its (jittered) box as two corners.
  np.testing.assert_array_equal(inputs['boxes'].numpy().reshape(8, 4),
                                same['boxes'].numpy())


def test_keras_hub_mixed_prompts_are_balanced_and_seeded():
  example, _ = make_example(np.random.default_rng(10), height=40, width=40,
                            num_masks=40)
  labels = [_keras_hub(example, num_masks=40, seed=seed)[0]['labels']
            .numpy()[:, 0] for seed in range(10)]
  fraction = np.mean([(l == -1).mean() for l in labels])
  assert 0.35 < fraction < 0.65, fraction
  again = _keras_hub(example, num_masks=40, seed=3)[0]['labels'].numpy()[:, 0]
  np.testing.assert_array_equal(again, labels[3])
  assert any(not np.array_equal(labels[0], l) for l in labels[1:])


def test_keras_hub_image_matches_keras_hub_preprocessing():
  example, _ = make_example(np.random.default_rng(11), height=20, width=50,
                            num_masks=2)
  inputs, _, _ = _keras_hub(example)
  same, _, _ = sam.to_sam_inputs(example, image_size=S, num_masks=8, seed=0)
  images = inputs['images'].numpy()
  new_h = int(20 * S / 50 + 0.5)
  # RGB / 255 where 'sam' has (RGB - mean) / std.
  rgb = same['image'].numpy()[:new_h] * np.array(sam.PIXEL_STD) + np.array(
      sam.PIXEL_MEAN)
  np.testing.assert_allclose(images[:new_h] * 255, rgb, atol=1e-3)
  assert 0 <= images.min() and images.max() <= 1
  # The padding is the mean colour: 0 after ViTDet's own normalization,
  # as SAM pads after normalizing.
  normalized = (images[new_h:] - np.array([0.485, 0.456, 0.406])) / np.array(
      [0.229, 0.224, 0.225])
  np.testing.assert_allclose(normalized, 0, atol=1e-6)


def test_keras_hub_dataset_map_equals_eager():
  rng = np.random.default_rng(12)
  examples = [make_example(rng, height=20 + i, width=30 - i, num_masks=3 + i,
                           image_id=i)[0] for i in range(4)]
  ds = sam.sam_dataset(examples_dataset(examples), batch_size=2,
                       image_size=S, num_masks=4, seed=1, layout='keras_hub',
                       num_parallel_calls=2, deterministic=True)
  assert ds.element_spec[0]['boxes'].shape == (2, 4, 1, 2, 2)
  assert ds.element_spec[1].shape == (2, 4, S // 4, S // 4)
  batches = list(ds)
  assert len(batches) == 2
  graph = tf.function(lambda ex: _keras_hub(ex, num_masks=4, seed=1))

  def assert_same(got, want):
    # Images to float rounding (traced with these fixed sizes, the graph
    # of this growing, antialiased resize rounds differently, by up to
    # ~5e-4 grey levels), everything else exactly.
    got, want = tf.nest.flatten(got), tf.nest.flatten(want)
    for name, a, b in zip(['boxes', 'images', 'labels', 'points', 'targets',
                           'weights'], got, want):
      if name == 'images':
        np.testing.assert_allclose(a, b, atol=1e-5)
      else:
        np.testing.assert_array_equal(a, b, err_msg=name)

  for i, ex in enumerate(examples):
    want = _keras_hub(ex, num_masks=4, seed=1)
    assert_same(tf.nest.map_structure(lambda t: t.numpy()[i % 2],
                                      batches[i // 2]), want)
    if i == 3:  # One trace is enough (each shape traces anew).
      assert_same(graph(ex), want)


def test_layout_options_are_checked():
  example, _ = make_example(np.random.default_rng(13), height=8, width=8,
                            num_masks=1)
  with pytest.raises(ValueError, match='layout'):
    sam.to_sam_inputs(example, layout='torch')
  with pytest.raises(ValueError, match="prompt applies to layout='keras_hub'"):
    sam.to_sam_inputs(example, prompt='box')
  with pytest.raises(ValueError, match='prompt must be one of'):
    sam.to_sam_inputs(example, layout='keras_hub', prompt='points')
  with pytest.raises(ValueError, match='box_jitter'):
    sam.to_sam_inputs(example, box_jitter=-1.0)
  with pytest.raises(ValueError, match='layout'):
    sam.sam_dataset(examples_dataset([example]), batch_size=1, layout='x')


def test_decode_masks_samples_the_same_masks():
  """With no filter, `decode_masks` and `to_sam_inputs` pick the same masks."""
  example, _ = make_example(np.random.default_rng(14), height=24, width=36,
                            num_masks=15)
  mask_h = int(24 * M / 36 + 0.5)
  decoded = masks_lib.decode_masks(example, num_masks=6, seed=4,
                                   output_size=(mask_h, M))
  _, targets, _ = sam.to_sam_inputs(example, image_size=S, mask_size=M,
                                    num_masks=6, seed=4)
  np.testing.assert_array_equal(targets.numpy()[:, :mask_h],
                                decoded['annotations']['mask'])
  assert not targets.numpy()[:, mask_h:].any()


# ------------------------------------------------------------------ holdout


def test_holdout_splits_by_image_id():
  rng = np.random.default_rng(15)
  examples = [make_example(rng, height=6, width=6, num_masks=1,
                           image_id=i)[0] for i in range(1, 41)]
  ds = examples_dataset(examples)

  def ids(validation):
    return [int(ex['image']['image_id']) for ex in ds.filter(
        sam.holdout_filter(0.3, validation))]

  held, kept = ids(True), ids(False)
  assert sorted(held + kept) == list(range(1, 41))
  expected = [i for i in range(1, 41) if sampling.in_holdout_np(i, 0.3)]
  assert held == expected and 4 <= len(held) <= 20
  # sam_dataset applies it before batching.
  batches = sam.sam_dataset(ds, batch_size=1, image_size=16, num_masks=1,
                            seed=0, validation_fraction=0.3, validation=True)
  assert len(list(batches)) == len(held)
  with pytest.raises(ValueError, match='validation_fraction'):
    sam.holdout_filter(1.5)


def test_reading_never_builds(tmp_path):
  """load_sam_dataset on an unprepared data_dir says what to build, and
  leaves nothing behind; download=True builds."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds import errors  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.read import sam_inputs  # pylint: disable=g-import-not-at-top
  from conftest import DUMMY_DATA  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.NotPreparedError) as e:
    sam_inputs.load_sam_dataset(name='segment_anything/first_1',
                                data_dir=str(tmp_path), batch_size=2)
  msg = str(e.value)
  assert 'segment_anything (config first_1, version 2.0.0) is not prepared' \
      in msg and str(tmp_path) in msg
  assert 'segment-anything-tfds build --config first_1 --manual_dir DIR' in msg
  assert list(tmp_path.iterdir()) == [] or not list(tmp_path.rglob('*.tfrecord*'))
  assert not (tmp_path / 'downloads').exists()
  ds = sam_inputs.load_sam_dataset(
      name='segment_anything/first_1', data_dir=str(tmp_path), batch_size=1,
      download=True, download_and_prepare_kwargs={
          'download_config': tfds.download.DownloadConfig(
              manual_dir=DUMMY_DATA)})
  assert next(iter(ds)) is not None
