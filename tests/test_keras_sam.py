"""keras_sam: SAM's losses and the trainer around KerasHub's SAM layers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

keras = pytest.importorskip('keras')
keras_hub = pytest.importorskip('keras_hub')
from segment_anything_tfds.train import keras_sam  # pylint: disable=g-import-not-at-top,wrong-import-position

S, B, K = 64, 2, 5


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _focal_np(y, x, alpha=0.25, gamma=2.0):
  p = _sigmoid(x.astype(np.float64))
  ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  p_t = p * y + (1 - p) * (1 - y)
  alpha_t = alpha * y + (1 - alpha) * (1 - y)
  return (alpha_t * (1 - p_t) ** gamma * ce).mean(axis=(-2, -1))


def _dice_np(y, x):
  p = _sigmoid(x.astype(np.float64))
  return 1 - (2 * (p * y).sum(axis=(-2, -1)) + 1) / (
      p.sum(axis=(-2, -1)) + y.sum(axis=(-2, -1)) + 1)


def _iou_np(y, x):
  pred, y = x > 0, y > 0
  return (pred & y).sum(axis=(-2, -1)) / np.maximum(
      (pred | y).sum(axis=(-2, -1)), 1)


def _case(seed=0):
  rng = np.random.default_rng(seed)
  targets = (rng.random((B, K, 16, 16)) > 0.6).astype(np.float32)
  logits = rng.normal(0, 3, (B, K, 4, 16, 16)).astype(np.float32)
  iou_pred = rng.random((B, K, 4)).astype(np.float32)
  multimask = rng.random((B, K)) > 0.5
  weights = (rng.random((B, K)) > 0.2).astype(np.float32)
  return targets, logits, iou_pred, multimask, weights


def test_mask_losses_match_their_formulas():
  targets, logits, *_ = _case()
  y = np.broadcast_to(targets[:, :, None], logits.shape)
  np.testing.assert_allclose(keras_sam.sigmoid_focal_loss(y, logits),
                             _focal_np(y, logits), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(keras_sam.dice_loss(y, logits),
                             _dice_np(y, logits), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(keras_sam.mask_iou(y, logits), _iou_np(y, logits),
                             rtol=1e-6)
  # Perfect logits: zero dice loss (up to smoothing), IoU 1.
  perfect = np.where(y > 0, 20.0, -20.0).astype(np.float32)
  assert np.asarray(keras_sam.dice_loss(y, perfect)).max() < 1e-6
  np.testing.assert_array_equal(keras_sam.mask_iou(y, perfect), 1)


def test_sam_loss_min_over_multimask_outputs():
  targets, logits, iou_pred, multimask, weights = _case(1)
  y = np.broadcast_to(targets[:, :, None], logits.shape)
  per_output = 20 * _focal_np(y, logits) + _dice_np(y, logits)
  iou_err = (iou_pred - _iou_np(y, logits)) ** 2
  per_mask = np.where(multimask, per_output[..., 1:].min(-1) +
                      iou_err[..., 1:].mean(-1),
                      per_output[..., 0] + iou_err[..., 0])
  expected = (weights * per_mask).sum() / weights.sum()
  got = keras_sam.sam_loss(targets, logits, iou_pred, multimask, weights)
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)
  # Gradients: a single-point row trains only its best multimask output; a
  # box row only output 0; a weight-0 row nothing.
  logits_t = tf.Variable(logits)
  with tf.GradientTape() as tape:
    loss = keras_sam.sam_loss(targets, logits_t, iou_pred, multimask,
                              weights)
  grad = np.abs(tape.gradient(loss, logits_t).numpy()).sum(axis=(-2, -1))
  for b in range(B):
    for k in range(K):
      used = np.zeros(4, bool)
      if weights[b, k]:
        if multimask[b, k]:
          used[1 + per_output[b, k, 1:].argmin()] = True
        else:
          used[0] = True
      assert (grad[b, k] > 0).tolist() == used.tolist(), (b, k)


@pytest.fixture(scope='module')
def trainer():
  return keras_sam.SAMTrainer(keras_sam.tiny_backbone(S, seed=0))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  labels = np.where(rng.random((B, K, 1)) > 0.5, 1.0, -1.0)
  labels[0, :2, 0] = [1, -1]  # Both kinds, whatever the draw.
  points = rng.uniform(0, S, (B, K, 1, 2))
  corners = np.sort(rng.uniform(0, S, (B, K, 1, 2, 2)), axis=3)
  return {'images': rng.random((B, S, S, 3)).astype(np.float32),
          'points': np.where(labels[..., None] > 0, points, 0).astype(
              np.float32),
          'labels': labels.astype(np.float32),
          'boxes': corners.astype(np.float32)}


def test_trainer_equals_keras_hub_segmenter_per_prompt(trainer):
  """Row (b, k) is what SAMImageSegmenter predicts for image b and that one
  prompt: a point padded with a -1 point, or a box alone."""
  x = _inputs()
  out = trainer(x)
  assert out['masks'].shape == (B, K, 4, S // 4, S // 4)
  assert out['iou_pred'].shape == (B, K, 4)
  segmenter = trainer.segmenter()
  assert isinstance(segmenter, keras_hub.models.SAMImageSegmenter)
  no_masks = np.zeros((1, 0, 256, 256, 1), np.float32)
  for b in range(B):
    for k in range(K):
      image = x['images'][b:b + 1]
      if x['labels'][b, k, 0] > 0:
        prompt = {'points': np.concatenate(
            [x['points'][b:b + 1, k], np.zeros((1, 1, 2), np.float32)], 1),
                  'labels': np.array([[1.0, -1.0]], np.float32),
                  'boxes': np.zeros((1, 0, 2, 2), np.float32)}
      else:
        prompt = {'points': np.zeros((1, 0, 2), np.float32),
                  'labels': np.zeros((1, 0), np.float32),
                  'boxes': x['boxes'][b:b + 1, k]}
      ref = segmenter({'images': image, 'masks': no_masks, **prompt})
      np.testing.assert_allclose(out['masks'][b, k], ref['masks'][0],
                                 atol=2e-5)
      np.testing.assert_allclose(out['iou_pred'][b, k], ref['iou_pred'][0],
                                 atol=2e-5)


@pytest.mark.integration
def test_trainer_encodes_each_image_once(monkeypatch):
  trainer = keras_sam.SAMTrainer(keras_sam.tiny_backbone(S, seed=1))
  encoder, decoder = (trainer.backbone.image_encoder,
                      trainer.backbone.mask_decoder)
  calls = {'encoder': [], 'decoder': []}
  encoder_call, decoder_call = encoder.call, decoder.call

  def count_encoder(*args, **kwargs):
    calls['encoder'].append(tuple(args[0].shape))
    return encoder_call(*args, **kwargs)

  def count_decoder(*args, **kwargs):
    calls['decoder'].append(tuple(kwargs['image_embeddings'].shape))
    return decoder_call(*args, **kwargs)

  monkeypatch.setattr(encoder, 'call', count_encoder)
  monkeypatch.setattr(decoder, 'call', count_decoder)
  x = _inputs(1)
  y = (np.random.default_rng(1).random((B, K, S // 4, S // 4)) > 0.5).astype(
      np.float32)
  trainer.compile(optimizer=keras.optimizers.Adam(3e-3), run_eagerly=True)
  calls['encoder'].clear()
  calls['decoder'].clear()
  losses = [float(trainer.train_on_batch(x, y, sample_weight=np.ones((B, K))))
            for _ in range(6)]
  # One image-encoder pass per step, on B images; the decoder on B x K.
  assert calls['encoder'] == [(B, S, S, 3)] * 6
  assert calls['decoder'] == [(B * K, S // 16, S // 16, 32)] * 6
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_trainer_saves_and_reloads(trainer, tmp_path):
  x = _inputs(2)
  path = tmp_path / 'trainer.keras'
  trainer.save(path)
  loaded = keras.models.load_model(path)
  assert isinstance(loaded, keras_sam.SAMTrainer)
  np.testing.assert_array_equal(loaded(x)['masks'], trainer(x)['masks'])


def test_tiny_backbone_checks_its_size():
  with pytest.raises(ValueError, match='multiple of 16'):
    keras_sam.tiny_backbone(40)
