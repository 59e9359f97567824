"""evaluation: IoU functions, the Keras metric, evaluate_predictions."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.train import evaluation
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.read import rle

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import examples_dataset, make_example  # pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import PYTHON_OPS, dataset_ops  # pylint: disable=g-import-not-at-top,wrong-import-position

B, K, C = 2, 5, 3  # Batch, masks per image, candidates per mask.
H, W = 16, 20  # Ground truth size.
LOW = (8, 10)  # Prediction size (upsampled 2x to the ground truth).


def _bilinear(x: np.ndarray, size) -> np.ndarray:
  """TF's bilinear resize (half-pixel centers) of [..., h, w], in float64."""
  def weights(n_in, n_out):
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(int)
    upper = np.minimum(np.ceil(pos), n_in - 1).astype(int)
    return lower, upper, pos - floor

  y0, y1, fy = weights(x.shape[-2], size[0])
  x0, x1, fx = weights(x.shape[-1], size[1])
  x = x.astype(np.float64)
  top = x[..., y0, :][..., x0] + (x[..., y0, :][..., x1] -
                                  x[..., y0, :][..., x0]) * fx
  bottom = x[..., y1, :][..., x0] + (x[..., y1, :][..., x1] -
                                     x[..., y1, :][..., x0]) * fx
  return top + (bottom - top) * fy[:, None]


def _np_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """pycocotools' rule on numpy bool masks [..., H, W], as float32."""
  inter = (pred & gt).sum((-2, -1))
  union = (pred | gt).sum((-2, -1))
  return np.where(inter > 0, inter / np.maximum(union, 1), 0).astype(
      np.float32)


def _coco_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """pycocotools.mask.iou of aligned bool masks [N, H, W], float32 [N]."""
  enc = lambda m: mask_utils.encode(np.asfortranarray(
      m.transpose(1, 2, 0).astype(np.uint8)))
  matrix = np.asarray(mask_utils.iou(enc(pred), enc(gt), [0] * len(gt)))
  return np.diag(matrix).astype(np.float32)


def _stats(ious: np.ndarray, weights: np.ndarray) -> dict[str, float]:
  ious, weights = ious.ravel(), weights.ravel().astype(np.float64)
  total = weights.sum()
  return {'mean_iou': (weights * ious).sum() / total,
          'iou_ge_0.5': weights[ious >= 0.5].sum() / total,
          'iou_ge_0.75': weights[ious >= 0.75].sum() / total}


@pytest.fixture(scope='module')
def batch():
  """Ground truth [B, K, H, W], logits and probs [B, K, C, 8, 10], weights."""
  rng = np.random.default_rng(11)
  gt = np.stack([[fake_data.random_mask(rng, H, W) for _ in range(K)]
                 for _ in range(B)])
  gt[0, 1] = False  # An empty ground-truth mask.
  # Candidates near the truth: its 2x-downsampled sign, some pixels flipped.
  near = np.where(gt[..., ::2, ::2], 3, -3)[:, :, None].repeat(C, axis=2)
  noise = rng.integers(-4, 5, size=near.shape)
  logits = np.where(rng.random(near.shape) < 0.3, noise, near)
  # Dyadic probabilities (exact in float32 after the 2x resize), 0.5 too.
  probs = rng.choice([0.125, 0.375, 0.5, 0.625, 0.875], size=near.shape)
  weights = np.ones((B, K), np.float32)
  weights[0, 3] = weights[1, 2] = 0  # Padding masks.
  return gt, logits.astype(np.float32), probs.astype(np.float32), weights


def _reference(gt, scores, threshold) -> np.ndarray:
  """Best-candidate IoU [B, K]: numpy resize, strict threshold."""
  pred = _bilinear(scores, (H, W)) > threshold
  ious = _np_iou(pred, gt[:, :, None])
  flat_pred = pred.reshape(-1, H, W)
  flat_gt = np.repeat(gt[:, :, None], C, axis=2).reshape(-1, H, W)
  np.testing.assert_array_equal(ious.ravel(), _coco_iou(flat_pred, flat_gt))
  return ious.max(-1)


def test_best_candidate_iou_matches_references(batch):
  gt, logits, probs, _ = batch
  expected = _reference(gt, logits, 0.0)
  assert 0 < expected.min() < 1 or 0 < expected.max() < 1
  got = evaluation.best_candidate_iou(logits, gt).numpy()
  assert got.dtype == np.float32 and got.shape == (B, K)
  np.testing.assert_array_equal(got, expected)
  got = evaluation.best_candidate_iou(probs, gt, from_logits=False).numpy()
  np.testing.assert_array_equal(got, _reference(gt, probs, 0.5))
  got = evaluation.best_candidate_iou(logits, gt, threshold=1.5).numpy()
  np.testing.assert_array_equal(got, _reference(gt, logits, 1.5))
  # One prediction per mask (no candidate axis), at the gt size.
  single = _bilinear(logits[:, :, 0], (H, W)).astype(np.float32)
  np.testing.assert_array_equal(
      evaluation.best_candidate_iou(single, gt).numpy(),
      _np_iou(single > 0, gt))
  with pytest.raises(ValueError, match='C, h, w'):
    evaluation.best_candidate_iou(logits[0, 0, 0], gt)


def test_mask_iou_conventions():
  empty = np.zeros((4, 4), bool)
  one = empty.copy()
  one[1, 2] = True
  assert evaluation.mask_iou(empty, empty).numpy() == 0  # As pycocotools.
  assert evaluation.mask_iou(one, one).numpy() == 1
  assert evaluation.mask_iou(one, empty).numpy() == 0
  half = one.copy()
  half[3, 3] = True
  assert evaluation.mask_iou(one, half).numpy() == np.float32(0.5)


def test_metric_standalone_accumulates(batch):
  gt, logits, _, weights = batch
  metric = evaluation.MaskIoU()
  metric.update_state(gt[:1], logits[:1], weights[:1])
  metric.update_state(gt[1:], logits[1:], weights[1:])
  expected = _stats(_reference(gt, logits, 0.0), weights)
  result = {k: float(v) for k, v in metric.result().items()}
  assert set(result) == {'mask_iou', 'mask_iou_ge_0.5', 'mask_iou_ge_0.75'}
  np.testing.assert_allclose(result['mask_iou'], expected['mean_iou'],
                             rtol=1e-12)
  assert result['mask_iou_ge_0.5'] == expected['iou_ge_0.5']
  assert result['mask_iou_ge_0.75'] == expected['iou_ge_0.75']
  plain = evaluation.summarize(_reference(gt, logits, 0.0), weights)
  assert float(plain['count']) == weights.sum()
  for key, value in expected.items():
    np.testing.assert_allclose(float(plain[key]), value, rtol=1e-12)
  metric.reset_state()
  assert float(metric.result()['mask_iou']) == 0
  # update_ious takes IoUs from elsewhere (e.g. rle_best_iou).
  metric.update_ious([0.5, 1.0, 0.25, 0.8], [1, 1, 1, 0])
  result = {k: float(v) for k, v in metric.result().items()}
  assert result == {'mask_iou': 1.75 / 3, 'mask_iou_ge_0.5': 2 / 3,
                    'mask_iou_ge_0.75': 1 / 3}


def test_metric_in_keras_compile_and_evaluate(batch):
  """`metrics=` get no sample weights (Keras' rule); `weighted_metrics=` do."""
  gt, logits, _, weights = batch
  inputs = keras.Input(logits.shape[1:])
  model = keras.Model(inputs, keras.layers.Identity()(inputs))
  model.compile(loss=lambda y_true, y_pred: tf.reduce_mean(y_pred) * 0.0,
                metrics=[evaluation.MaskIoU(name='iou')],
                weighted_metrics=[evaluation.MaskIoU(name='weighted')])
  ds = tf.data.Dataset.from_tensor_slices(
      (logits, gt.astype(np.float32), weights)).batch(1)
  result = model.evaluate(ds, return_dict=True, verbose=0)
  ious = _reference(gt, logits, 0.0)
  for name, w in (('iou', np.ones_like(weights)), ('weighted', weights)):
    expected = _stats(ious, w)
    np.testing.assert_allclose(result[name], expected['mean_iou'], rtol=1e-6)
    for t in ('0.5', '0.75'):
      assert result[f'{name}_ge_{t}'] == pytest.approx(
          expected[f'iou_ge_{t}'])
  assert result['iou'] != result['weighted']


def test_functions_in_dataset_map(batch):
  """Ground truth from RLE at 2x, decoded at the chosen size (H, W)."""
  gt, logits, _, _ = batch
  big = gt.repeat(2, axis=-2).repeat(2, axis=-1)  # Nearest 2x down: gt.
  counts = np.array([_encode(masks) for masks in big])  # [B, K]

  def score(pred, gt_counts):
    truth = rle.decode(gt_counts, (2 * H, 2 * W), output_size=(H, W))
    return evaluation.best_candidate_iou(pred, truth)

  ds = tf.data.Dataset.from_tensor_slices((logits, counts)).map(
      score, num_parallel_calls=2, deterministic=True)
  got = np.stack(list(ds.as_numpy_iterator()))
  np.testing.assert_array_equal(got, _reference(gt, logits, 0.0))
  assert not dataset_ops(ds) & PYTHON_OPS


def _encode(masks: np.ndarray) -> list[bytes]:
  return [r['counts'] for r in mask_utils.encode(np.asfortranarray(
      masks.transpose(1, 2, 0).astype(np.uint8)))]


def test_rle_best_iou_matches_pycocotools(batch):
  gt, logits, _, _ = batch
  pred = _bilinear(logits, (H, W)) > 0  # [B, K, C, H, W]
  gt_counts = _encode(gt.reshape(-1, H, W))
  pred_counts = np.array(_encode(pred.reshape(-1, H, W)),
                         dtype=object).reshape(B * K, C)
  expected = _reference(gt, logits, 0.0).ravel()
  got = evaluation.rle_best_iou(pred_counts.tolist(), gt_counts, (H, W))
  np.testing.assert_array_equal(got.numpy(), expected)
  single = evaluation.rle_best_iou(pred_counts[:, 0].tolist(), gt_counts,
                                   (H, W))
  np.testing.assert_array_equal(single.numpy(), _coco_iou(
      pred[:, :, 0].reshape(-1, H, W), gt.reshape(-1, H, W)))
  ds = tf.data.Dataset.from_tensors(
      (tf.constant(pred_counts.tolist()), tf.constant(gt_counts))).map(
          lambda p, g: evaluation.rle_best_iou(p, g, (H, W)))
  np.testing.assert_array_equal(next(iter(ds)).numpy(), expected)
  assert not dataset_ops(ds) & PYTHON_OPS


# --------------------------------------------------- evaluate_predictions


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
  return np.roll(mask, (dy, dx), axis=(0, 1))


@pytest.fixture(scope='module')
def gt_and_predictions():
  """3 images (the last without masks) and predictions of their masks."""
  rng = np.random.default_rng(5)
  pairs = [make_example(rng, height=18, width=24, num_masks=n, image_id=i)
           for i, n in ((7, 4), (8, 3), (9, 0))]
  predictions, truth = [], {}  # truth: (image, id) -> [(iou, score)].

  def predict(image_id, ann_id, gt_mask, pred_mask, score):
    counts = _encode(pred_mask[None])[0]
    predictions.append({'segmentation': {'size': list(pred_mask.shape),
                                         'counts': counts.decode()},
                        'image_id': image_id, 'id': ann_id, 'score': score})
    iou = _coco_iou(pred_mask[None], gt_mask[None])[0]
    truth.setdefault((image_id, ann_id), []).append((iou, score))

  (_, masks7), (_, masks8) = pairs[0], pairs[1]
  for k in range(4):  # Image 7: every mask, shifted by k pixels.
    predict(7, 100 + k, masks7[k], _shifted(masks7[k], k, -k), 0.9)
  # Image 8: mask 0 twice (the better one scores lower), mask 1 once as an
  # empty mask, mask 2 not at all.
  predict(8, 100, masks8[0], _shifted(masks8[0], 3, 3), 0.8)
  predict(8, 100, masks8[0], masks8[0], 0.6)
  predict(8, 101, masks8[1], np.zeros_like(masks8[1]), 0.5)
  # No such annotation / image.
  predictions.append(dict(predictions[0], id=999))
  predictions.append(dict(predictions[0], image_id=77))
  return pairs, predictions, truth


@pytest.mark.parametrize('field,value,message', [
    ('image_id', 7.7, "image_id must be an integer, got 7.7"),
    ('image_id', 7.0, 'image_id must be an integer, got 7.0'),
    ('image_id', '7', "image_id must be an integer, got '7'"),
    ('image_id', True, 'image_id must be an integer, got True'),
    ('id', '100', "id must be an integer, got '100'"),
    ('id', 100.0, 'id must be an integer, got 100.0'),
    ('size', ['18', 24], "segmentation.size must be [h, w], two integers,"
     " got ['18', 24]"),
    ('size', [18, 24.9], 'segmentation.size must be [h, w], two integers,'
     ' got [18, 24.9]'),
    ('size', [18, 24, 1], 'segmentation.size must be [h, w], two integers,'
     ' got [18, 24, 1]'),
    ('score', 'nan', "score must be a finite number, got 'nan'"),
    ('score', math.nan, 'score must be a finite number, got nan'),
    ('score', -math.inf, 'score must be a finite number, got -inf'),
    ('score', '0.9', "score must be a finite number, got '0.9'"),
    ('score', False, 'score must be a finite number, got False'),
    ('score', None, 'score must be a finite number, got None'),
    ('counts', 7, 'segmentation.counts must be an ASCII string, got 7'),
])
def test_predictions_of_wrong_types_are_named_not_coerced(
    gt_and_predictions, field, value, message):
  """image_id 7.7 was truncated to 7 and matched; "100", ["18", 24.9] and
  "nan" were converted. Now each is an error naming the prediction and the
  field (the score is still optional)."""
  pairs, predictions, _ = gt_and_predictions
  ds = examples_dataset([p[0] for p in pairs])
  bad = json.loads(json.dumps(predictions[0]))
  if field in ('size', 'counts'):
    bad['segmentation'][field] = value
  else:
    bad[field] = value
  with pytest.raises(ValueError) as e:
    evaluation.evaluate_predictions([predictions[0], bad], ds)
  assert str(e.value) == f'evaluate_predictions: prediction 1: {message}'
  # numpy integers and floats (as read from a dataset) are integers and
  # numbers; a prediction without a score scores 0.
  typed = dict(predictions[0], image_id=np.int64(7), id=np.uint64(100),
               score=np.float32(0.5))
  typed['segmentation'] = dict(typed['segmentation'], size=np.asarray(
      typed['segmentation']['size'], np.int64))  # A size array, as read.
  no_score = {k: v for k, v in predictions[0].items() if k != 'score'}
  [(image_id, ann_id, _, size, score), (*_, default)] = (
      evaluation.parse_predictions([typed, no_score]))
  assert (image_id, ann_id, score, default) == (7, 100, 0.5, 0.0)
  assert size == tuple(predictions[0]['segmentation']['size'])


@pytest.mark.parametrize('select', ['best_iou', 'score'])
def test_evaluate_predictions_matches_pycocotools(gt_and_predictions, select,
                                                  tmp_path):
  pairs, predictions, truth = gt_and_predictions
  ds = examples_dataset([p[0] for p in pairs])
  pick = (lambda c: max(iou for iou, _ in c)) if select == 'best_iou' else (
      lambda c: max(c, key=lambda t: t[1])[0])
  ious = np.array([pick(c) for c in truth.values()], np.float32)
  result = evaluation.evaluate_predictions(predictions, ds, select=select)
  assert result == {
      'num_gt_masks': 7, 'num_predictions': 9, 'num_matched_gt_masks': 6,
      'gt_without_prediction': 1, 'predictions_without_gt': 2,
      'mean_iou': pytest.approx(float(ious.astype(np.float64).mean()),
                                rel=1e-12),
      'iou_ge_0.5': float((ious >= 0.5).mean()),
      'iou_ge_0.75': float((ious >= 0.75).mean())}
  assert 0 < result['mean_iou'] < 1
  # The same from a JSON file.
  path = tmp_path / 'predictions.json'
  path.write_text(json.dumps(predictions))
  assert evaluation.evaluate_predictions(str(path), ds,
                                         select=select) == result
  table = evaluation.format_table(result)
  assert 'gt masks without a prediction  ' in table
  assert table.splitlines()[0].split() == ['gt', 'masks', '7']
  assert table.splitlines()[-2].endswith(f'{result["iou_ge_0.5"]:.2%}')


def test_evaluate_predictions_without_matches_and_errors(gt_and_predictions):
  pairs, predictions, _ = gt_and_predictions
  ds = examples_dataset([p[0] for p in pairs])
  result = evaluation.evaluate_predictions([], ds)
  assert result['num_gt_masks'] == 7 and result['mean_iou'] is None
  assert 'n/a' in evaluation.format_table(result)
  wrong_size = dict(predictions[0], segmentation={'size': [18, 25],
                                                  'counts': 'R>'})
  with pytest.raises(ValueError, match=r'prediction 0 .*size \[18, 25\]'):
    evaluation.evaluate_predictions([wrong_size], ds)
  with pytest.raises(ValueError, match='prediction 1 is not'):
    evaluation.evaluate_predictions([predictions[0], {'image_id': 7}], ds)
  infinite = dict(predictions[0], segmentation={'size': [math.inf, 25],
                                                'counts': 'R>'})
  with pytest.raises(ValueError, match=r'prediction 0: segmentation.size'
                     r' must be \[h, w\], two integers, got \[inf, 25\]'):
    evaluation.evaluate_predictions([infinite], ds)
  # Strings the decoder refuses, refused before any scoring.
  for counts in ('zz~', '0P', '01', '0@', ''):
    bad = dict(predictions[0], segmentation={'size': [18, 25],
                                             'counts': counts})
    with pytest.raises(ValueError, match=r'prediction 1 \(image_id \d+, id'
                       r' \d+\): segmentation.counts (has|ends|decodes|is)'):
      evaluation.evaluate_predictions([predictions[0], bad], ds)
  with pytest.raises(ValueError, match='select'):
    evaluation.evaluate_predictions([], ds, select='first')
