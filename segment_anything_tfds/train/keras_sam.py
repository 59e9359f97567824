"""Fine-tuning KerasHub's Segment Anything (SAM) on `segment_anything` data.

KerasHub's ``SAMImageSegmenter`` predicts but does not train (its ``fit``
raises ``NotImplementedError``). `SAMTrainer` is a thin training model
around the same layers of a ``keras_hub.models.SAMBackbone`` (image encoder,
prompt encoder, mask decoder), fed by the 'keras_hub' layout of
`sam_layouts` (`sam_inputs.sam_dataset(..., layout='keras_hub')`, or
`numpy_inputs` for other frameworks):

* It encodes each image **once** and decodes its K prompts against that
  embedding, as SAM's training does: K masks cost one image-encoder pass.
* Each prompt row is a point (label 1; sparse tokens [point, padding point],
  as SAM pads a point prompt without a box) or a box (label -1; tokens [top
  left, bottom right]).

The losses SAM was trained with (`sam_loss`), in one place:

* masks: 20 x focal + 1 x dice, on the logits at S/4;
* ambiguity: a single-point prompt uses the three multimask outputs and only
  the one with the lowest mask loss is trained (its minimum); a box prompt
  uses the single-mask output (index 0);
* IoU: mean squared error between ``iou_pred`` and the actual IoU of each
  used output's mask (logits > 0) with the target, weight 1.

`SAMTrainer.segmenter()` wraps the trained backbone in a
``SAMImageSegmenter`` for inference and saving. `tiny_backbone` builds a
small random SAM from config (CPU, tests); real weights come from
``keras_hub.models.SAMBackbone.from_preset('sam_base_sa1b')``.

Written with ``keras.ops`` only. This module imports keras; it imports
keras_hub only in `tiny_backbone` and `SAMTrainer.segmenter`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ['sigmoid_focal_loss', 'dice_loss', 'mask_iou', 'sam_loss',
           'SAMTrainer', 'tiny_backbone']

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0


def _import_keras_hub():
  try:
    import keras_hub  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('segment_anything_tfds.train.keras_sam needs KerasHub: pip'
                      ' install segment_anything_tfds[keras_hub]') from e
  return keras_hub


def sigmoid_focal_loss(targets, logits, alpha: float = 0.25,
                       gamma: float = 2.0):
  """Focal loss (Lin et al. 2017) of each mask, mean over its pixels.

  Args:
    targets: [..., H, W] in {0, 1}.
    logits: [..., H, W].
    alpha: weight of the positive class (1 - alpha for the negative).
    gamma: focusing exponent.

  Returns:
    [...] per-mask losses.
  """
  targets = ops.cast(targets, logits.dtype)
  p = ops.sigmoid(logits)
  ce = ops.binary_crossentropy(targets, logits, from_logits=True)
  p_t = p * targets + (1 - p) * (1 - targets)
  alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
  return ops.mean(alpha_t * ce * (1 - p_t) ** gamma, axis=(-2, -1))


def dice_loss(targets, logits, smooth: float = 1.0):
  """1 - soft Dice of each mask: 1 - (2 |p.t| + s) / (|p| + |t| + s)."""
  targets = ops.cast(targets, logits.dtype)
  p = ops.sigmoid(logits)
  inter = ops.sum(p * targets, axis=(-2, -1))
  total = ops.sum(p, axis=(-2, -1)) + ops.sum(targets, axis=(-2, -1))
  return 1 - (2 * inter + smooth) / (total + smooth)


def mask_iou(targets, logits):
  """IoU of each predicted mask (logits > 0) with its target, [...]."""
  pred = ops.cast(logits > 0, logits.dtype)
  targets = ops.cast(targets > 0, logits.dtype)
  inter = ops.sum(pred * targets, axis=(-2, -1))
  union = ops.sum(ops.maximum(pred, targets), axis=(-2, -1))
  return inter / ops.maximum(union, 1)


def sam_loss(targets, mask_logits, iou_pred, multimask, sample_weight=None, *,
             focal_weight: float = FOCAL_WEIGHT,
             dice_weight: float = DICE_WEIGHT,
             iou_weight: float = IOU_WEIGHT):
  """SAM's training loss, averaged over the weighted masks.

  Args:
    targets: [B, K, H, W] target masks.
    mask_logits: [B, K, 4, H, W]: output 0 is the single-mask output, 1-3 the
      multimask outputs (SAM's mask tokens).
    iou_pred: [B, K, 4] predicted IoUs.
    multimask: bool [B, K]: True for single-point prompts (the minimum over
      outputs 1-3 is trained), False for boxes (output 0).
    sample_weight: [B, K] mask weights (0 for padding); None: all 1.

  Returns:
    A scalar: sum(w * loss) / max(sum(w), 1).
  """
  targets = ops.broadcast_to(ops.cast(targets, mask_logits.dtype)[:, :, None],
                            ops.shape(mask_logits))
  per_output = (focal_weight * sigmoid_focal_loss(targets, mask_logits)
                + dice_weight * dice_loss(targets, mask_logits))  # [B, K, 4]
  actual_iou = ops.stop_gradient(mask_iou(targets, mask_logits))
  iou_error = ops.square(iou_pred - actual_iou)  # [B, K, 4]
  multimask = ops.cast(multimask, 'bool')
  mask_term = ops.where(multimask, ops.min(per_output[..., 1:], axis=-1),
                        per_output[..., 0])
  iou_term = ops.where(multimask, ops.mean(iou_error[..., 1:], axis=-1),
                       iou_error[..., 0])
  per_mask = mask_term + iou_weight * iou_term
  if sample_weight is None:
    sample_weight = ops.ones_like(per_mask)
  sample_weight = ops.cast(sample_weight, per_mask.dtype)
  return ops.sum(sample_weight * per_mask) / ops.maximum(
      ops.sum(sample_weight), 1)


@keras.saving.register_keras_serializable(package='segment_anything_tfds')
class SAMTrainer(keras.Model):
  """Trains a KerasHub ``SAMBackbone`` on the 'keras_hub' layout.

  ``trainer(inputs)`` maps a batch {'images' [B, S, S, 3], 'points'
  [B, K, 1, 2], 'labels' [B, K, 1], 'boxes' [B, K, 1, 2, 2]} to {'masks'
  [B, K, 4, S/4, S/4], 'iou_pred' [B, K, 4]}: mask logits and IoUs of every
  prompt, from one image-encoder pass per image. ``fit`` on
  ``(inputs, targets [B, K, S/4, S/4], sample_weight [B, K])`` batches
  minimizes `sam_loss`; compile with an optimizer only.

  Args:
    backbone: a ``keras_hub.models.SAMBackbone``; its layers are trained in
      place (set ``backbone.image_encoder.trainable = False`` to train only
      the prompt encoder and mask decoder). Its mask-prompt downscaler is
      frozen: these inputs have no mask prompts.
    focal_weight, dice_weight, iou_weight: the `sam_loss` weights.
  """

  def __init__(self, backbone, *, focal_weight: float = FOCAL_WEIGHT,
               dice_weight: float = DICE_WEIGHT,
               iou_weight: float = IOU_WEIGHT, **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    # No mask prompts here: the mask-prompt encoder gets no gradient.
    backbone.prompt_encoder.mask_downscaler.trainable = False
    self.focal_weight = focal_weight
    self.dice_weight = dice_weight
    self.iou_weight = iou_weight

  def build_on(self, inputs) -> None:
    """Builds every layer and the optimizer's slots from one input batch.

    Call it after ``compile`` and before ``fit``: the mask decoder builds on
    its first call, and an optimizer that creates its variables inside the
    first traced train step makes TensorFlow trace that step twice.
    """
    self(inputs)
    if self.optimizer is not None:
      self.optimizer.build(self.trainable_variables)

  def encode_images(self, images, training=False):
    """Image embeddings [B, h, w, C]: the one encoder pass per image."""
    return self.backbone.image_encoder(images, training=training)

  def encode_prompts(self, points, labels, boxes):
    """SAM's prompt embeddings of N rows of one prompt each.

    Args:
      points: [N, 1, 2]; labels: [N, 1] (-1: the row uses its box);
      boxes: [N, 1, 2, 2].

    Returns:
      The prompt encoder's dict: sparse [N, 2, C] (point rows: the point and
      a padding point; box rows: the two corners), dense and positional.
    """
    encoder = self.backbone.prompt_encoder
    n = ops.shape(points)[0]
    padded_points = ops.concatenate(
        [points, ops.zeros((n, 1, 2), points.dtype)], axis=1)
    padded_labels = ops.concatenate(
        [ops.cast(labels, points.dtype),
         -ops.ones((n, 1), points.dtype)], axis=1)
    by_point = encoder(points=padded_points, labels=padded_labels)
    # All boxes as the boxes of one row: each corner is embedded on its own,
    # so the tokens are the same, and TF 2.21's oneDNN batch matmul crashes
    # (heap corruption) on the [N, 1, 2, 2] layout for N >= 9.
    by_box = encoder(boxes=ops.reshape(boxes, (1, n, 2, 2)))
    box_tokens = ops.reshape(by_box['prompt_sparse_embeddings'],
                             (n, 2, -1))
    use_box = ops.reshape(labels[:, 0] < 0, (n, 1, 1))
    prompts = dict(by_point)
    prompts['prompt_sparse_embeddings'] = ops.where(
        use_box, box_tokens, by_point['prompt_sparse_embeddings'])
    return prompts

  def call(self, inputs, training=False):
    images = inputs['images']
    points = ops.convert_to_tensor(inputs['points'])
    batch, k = ops.shape(points)[0], ops.shape(points)[1]
    embeddings = self.encode_images(images, training=training)
    prompts = self.encode_prompts(
        ops.reshape(points, (batch * k, 1, 2)),
        ops.reshape(inputs['labels'], (batch * k, 1)),
        ops.reshape(ops.cast(inputs['boxes'], points.dtype),
                    (batch * k, 1, 2, 2)))
    decoded = self.backbone.mask_decoder(
        image_embeddings=ops.repeat(embeddings, k, axis=0),
        prompt_dense_positional_embeddings=prompts[
            'prompt_dense_positional_embeddings'],
        prompt_sparse_embeddings=prompts['prompt_sparse_embeddings'],
        prompt_dense_embeddings=prompts['prompt_dense_embeddings'])
    masks = decoded['masks']
    shape = ops.shape(masks)
    return {
        'masks': ops.reshape(masks, (batch, k, shape[1], shape[2], shape[3])),
        'iou_pred': ops.reshape(decoded['iou_pred'], (batch, k, shape[1])),
    }

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    del training
    loss = sam_loss(y, y_pred['masks'], y_pred['iou_pred'],
                    multimask=x['labels'][..., 0] > 0,
                    sample_weight=sample_weight,
                    focal_weight=self.focal_weight,
                    dice_weight=self.dice_weight, iou_weight=self.iou_weight)
    for extra in self.losses:
      loss = loss + ops.sum(extra)
    return loss

  def segmenter(self):
    """A ``keras_hub.models.SAMImageSegmenter`` sharing the trained layers."""
    return _import_keras_hub().models.SAMImageSegmenter(backbone=self.backbone)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        'backbone': keras.saving.serialize_keras_object(self.backbone),
        'focal_weight': self.focal_weight,
        'dice_weight': self.dice_weight,
        'iou_weight': self.iou_weight,
    })
    return config

  @classmethod
  def from_config(cls, config):
    _import_keras_hub()  # Registers the KerasHub classes.
    config = dict(config)
    config['backbone'] = keras.saving.deserialize_keras_object(
        config['backbone'])
    return cls(**config)


def tiny_backbone(image_size: int = 64, *, hidden_size: int = 32,
                  num_layers: int = 2, seed: int | None = None):
  """A small random-init ``SAMBackbone`` (ViTDet patch 16: masks at S/4).

  Same architecture as SAM, far fewer weights: for CPU runs and tests.
  image_size must be a multiple of 16.
  """
  if image_size % 16:
    raise ValueError(f'tiny_backbone: image_size must be a multiple of 16,'
                     f' got {image_size}.')
  keras_hub = _import_keras_hub()
  if seed is not None:
    keras.utils.set_random_seed(seed)
  grid = image_size // 16
  image_encoder = keras_hub.models.ViTDetBackbone(
      hidden_size=hidden_size, num_layers=num_layers,
      intermediate_dim=2 * hidden_size, num_heads=2,
      global_attention_layer_indices=[num_layers - 1], patch_size=16,
      num_output_channels=hidden_size, window_size=min(grid, 2),
      image_shape=(image_size, image_size, 3))
  prompt_encoder = keras_hub.layers.SAMPromptEncoder(
      hidden_size=hidden_size, image_embedding_size=(grid, grid),
      input_image_size=(image_size, image_size), mask_in_channels=4)
  mask_decoder = keras_hub.layers.SAMMaskDecoder(
      num_layers=2, hidden_size=hidden_size, intermediate_dim=2 * hidden_size,
      num_heads=2, embedding_dim=hidden_size, num_multimask_outputs=3,
      iou_head_depth=2, iou_head_hidden_dim=hidden_size)
  return keras_hub.models.SAMBackbone(
      image_encoder=image_encoder, prompt_encoder=prompt_encoder,
      mask_decoder=mask_decoder)
