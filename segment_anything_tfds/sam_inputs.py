"""SAM-style training inputs from `segment_anything` examples.

`to_sam_inputs` maps one example to ``(inputs, targets, sample_weight)``:

* ``inputs['image']``: float32 [S, S, 3]. The image resized so its long side
  is S = `image_size` (bilinear, antialiased), normalized with the ImageNet
  mean/std (on the 0..255 scale, as SAM does) and zero-padded at the bottom
  and right to a square.
* ``targets``: float32 [K, M, M], K = `num_masks`, M = `mask_size`. Masks are
  decoded straight at the resolution where the long side is M (exactly a
  nearest resize of the full mask), then zero-padded like the image, so
  target pixel (y, x) covers image pixels [y * S/M, (y + 1) * S/M).
* ``inputs['points']``: float32 [K, 1, 2], one (x, y) point prompt per mask,
  in resized-image pixels: the centre of a mask pixel drawn uniformly among
  the mask's pixels at the decoded resolution.
* ``inputs['point_labels']``: int32 [K, 1], 1 (foreground) for real masks.
* ``inputs['boxes']``: float32 [K, 4], (x0, y0, x1, y1) in resized-image
  pixels, from the annotation's box, optionally jittered as in SAM (Gaussian
  noise, std `box_jitter` x side length, clipped to `max_box_jitter` pixels).
* ``sample_weight``: float32 [K], 1 for real masks, 0 for padding (an image
  with fewer than K usable masks) and for masks too small to cover a pixel
  at the decoded resolution.

Masks are first filtered (predicted_iou, stability_score, area fraction), then
up to K are sampled without replacement; only those are decoded.

`sam_dataset` builds the batched pipeline; `load_sam_dataset` starts from
`tfds.load`. Batches feed ``keras.Model.fit`` directly.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from segment_anything_tfds import masks as masks_lib
from segment_anything_tfds import rle

__all__ = ['to_sam_inputs', 'sam_dataset', 'load_sam_dataset', 'PIXEL_MEAN',
           'PIXEL_STD']

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# Salts separating the random streams drawn from one (seed, image_id).
_SAMPLE, _POINTS, _BOXES = 1, 2, 3


def _resized_size(height: tf.Tensor, width: tf.Tensor,
                  long_side: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(new_h, new_w, scale) with the long side = long_side (SAM's rounding)."""
  h = tf.cast(height, tf.float64)
  w = tf.cast(width, tf.float64)
  scale = long_side / tf.maximum(tf.maximum(h, w), 1.0)
  new_h = tf.cast(tf.floor(h * scale + 0.5), tf.int32)
  new_w = tf.cast(tf.floor(w * scale + 0.5), tf.int32)
  return tf.maximum(new_h, 1), tf.maximum(new_w, 1), scale


def _decode_jpeg_scaled(content: tf.Tensor, long_side: tf.Tensor,
                        image_size: int) -> tf.Tensor:
  """Decodes a JPEG with DCT scaling (1/2, 1/4, 1/8) when that still leaves
  at least `image_size` pixels on the long side: much faster than a full
  decode followed by a big downscale, and itself a good low-pass filter."""
  ratios = (1, 2, 4, 8)
  index = tf.reduce_sum(tf.cast(
      tf.stack([long_side >= r * image_size for r in ratios[1:]]), tf.int32))
  return tf.switch_case(index, [
      (lambda r=r: tf.io.decode_jpeg(content, channels=3, ratio=r))
      for r in ratios])


def _image(example: Mapping[str, Any], image_size: int,
           fast_jpeg: bool = True) -> tf.Tensor:
  height = tf.cast(example['image']['height'], tf.int64)
  width = tf.cast(example['image']['width'], tf.int64)
  content = example['image']['content']
  if content.dtype == tf.string:
    if fast_jpeg:
      is_jpeg = tf.equal(tf.strings.substr(content, 0, 3), b'\xff\xd8\xff')
      content = tf.cond(
          is_jpeg,
          lambda: _decode_jpeg_scaled(content, tf.maximum(height, width),
                                      image_size),
          lambda: tf.io.decode_image(content, channels=3,
                                     expand_animations=False))
    else:
      content = tf.io.decode_image(content, channels=3,
                                   expand_animations=False)
  content = tf.ensure_shape(content, [None, None, 3])
  # The target size comes from the true image size (the decoded one may be
  # scaled), so that image and masks line up.
  new_h, new_w, _ = _resized_size(height, width, image_size)
  image = tf.image.resize(content, tf.stack([new_h, new_w]),
                          method='bilinear', antialias=True)
  image = (image - tf.constant(PIXEL_MEAN)) / tf.constant(PIXEL_STD)
  image = tf.pad(image, [[0, image_size - new_h], [0, image_size - new_w],
                         [0, 0]])
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _uniform(shape, seed_pair):
  if seed_pair is None:
    return tf.random.uniform(shape)
  return tf.random.stateless_uniform(shape, seed=seed_pair)


def _normal(shape, seed_pair):
  if seed_pair is None:
    return tf.random.normal(shape)
  return tf.random.stateless_normal(shape, seed=seed_pair)


# Plain TF ops, no Python control flow on tensors: nothing to convert.
@tf.autograph.experimental.do_not_convert
def to_sam_inputs(
    example: Mapping[str, Any],
    *,
    image_size: int = 1024,
    mask_size: int = 256,
    num_masks: int = 64,
    min_predicted_iou: float = 0.0,
    min_stability_score: float = 0.0,
    min_area_fraction: float = 0.0,
    max_area_fraction: float = 1.0,
    box_jitter: float = 0.1,
    max_box_jitter: float = 20.0,
    seed: int | None = None,
    backend: str = 'tf',
    fast_jpeg: bool = True,
) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
  """One `segment_anything` example -> SAM-style (inputs, targets, weights).

  See the module docstring for the outputs. Use inside ``Dataset.map``
  (`sam_dataset` does it for you).

  Args:
    example: a `segment_anything` example; 'image/content' may be the decoded
      uint8 image or the JPEG bytes (``tfds.decode.SkipDecoding()``).
    image_size: S, the side of the square model input.
    mask_size: M, the side of the square mask targets.
    num_masks: K, masks per image (padded with zero weight when fewer).
    min_predicted_iou: keep masks with predicted_iou >= this.
    min_stability_score: keep masks with stability_score >= this.
    min_area_fraction: keep masks with area / (height * width) >= this.
    max_area_fraction: keep masks with area / (height * width) <= this.
    box_jitter: std of the box noise, as a fraction of the box side; 0 for
      exact boxes. SAM uses 0.1.
    max_box_jitter: clip the box noise to this many pixels. SAM uses 20.
    seed: with a seed, the sampled masks, points and box noise depend only on
      (seed, image_id): reproducible under any parallelism or sharding. None
      draws from the global generator.
    backend: mask decoder, 'tf' or 'pycocotools' (see `decode_masks`).
    fast_jpeg: when 'image/content' holds JPEG bytes, decode it with libjpeg's
      DCT scaling (1/2, 1/4 or 1/8) as long as the long side stays >=
      `image_size` (SA-1B: 1/2), then resize. About 3x faster than a full
      decode + resize; pixels differ slightly from that path.

  Returns:
    (inputs, targets, sample_weight) as described in the module docstring.
  """
  if mask_size <= 0 or image_size <= 0 or num_masks < 0:
    raise ValueError('to_sam_inputs: image_size and mask_size must be positive'
                     f' and num_masks >= 0, got {image_size}, {mask_size},'
                     f' {num_masks}.')
  if backend not in masks_lib.BACKENDS:
    raise ValueError(f'to_sam_inputs: backend must be one of'
                     f' {masks_lib.BACKENDS}, got {backend!r}.')
  annotations = example['annotations']
  height = tf.cast(example['image']['height'], tf.int64)
  width = tf.cast(example['image']['width'], tf.int64)

  def seed_pair(salt):
    if seed is None:
      return None
    return masks_lib.seed_for_example(seed, example, salt=salt)

  # Filter, then sample up to K of the usable masks.
  area_fraction = tf.cast(annotations['area'], tf.float64) / tf.cast(
      tf.maximum(height * width, 1), tf.float64)
  keep = tf.logical_and(
      tf.cast(annotations['predicted_iou'], tf.float64) >= min_predicted_iou,
      tf.cast(annotations['stability_score'], tf.float64)
      >= min_stability_score)
  keep = tf.logical_and(keep, tf.logical_and(
      area_fraction >= min_area_fraction, area_fraction <= max_area_fraction))
  index = masks_lib.sample_indices(keep, num_masks, seed=seed_pair(_SAMPLE))
  count = tf.size(index)
  pad = num_masks - count
  counts = tf.gather(annotations['segmentation']['counts'], index)

  # Masks at the resolution where the long side is M, padded to M x M.
  mask_h, mask_w, _ = _resized_size(height, width, mask_size)
  size = tf.stack([height, width])
  output_size = tf.stack([mask_h, mask_w])
  if backend == 'tf':
    masks = rle.decode(counts, size, output_size=output_size)
  else:
    masks = masks_lib.decode_pycocotools(counts, size,
                                         output_size=output_size)
  nonempty = tf.reduce_any(masks > 0, axis=[1, 2])

  # Point prompts: a uniformly drawn pixel of each mask (argmax of noise over
  # the mask's pixels); its centre, in resized-image pixels.
  noise = _uniform(tf.shape(masks), seed_pair(_POINTS))
  score = tf.where(masks > 0, noise, -1.0)
  flat = tf.argmax(tf.reshape(score, tf.stack([count, mask_h * mask_w])),
                   axis=1,
                   output_type=tf.int32)
  stride = image_size / mask_size
  py = (tf.cast(flat // mask_w, tf.float32) + 0.5) * stride
  px = (tf.cast(flat % mask_w, tf.float32) + 0.5) * stride
  _, _, scale = _resized_size(height, width, image_size)
  scale = tf.cast(scale, tf.float32)
  # Masks vanishing at this resolution keep the dataset's point.
  given = tf.cast(tf.gather(annotations['point_coords'], index),
                  tf.float32)[:, 0, :] * scale
  points = tf.where(nonempty[:, None], tf.stack([px, py], axis=1), given)

  # Boxes: the annotation box (normalized ymin, xmin, ymax, xmax) in
  # resized-image pixels, jittered.
  frame_h = tf.cast(height, tf.float32) * scale
  frame_w = tf.cast(width, tf.float32) * scale
  ymin, xmin, ymax, xmax = tf.unstack(
      tf.cast(tf.gather(annotations['bbox'], index), tf.float32), 4, axis=1)
  boxes = tf.stack([xmin * frame_w, ymin * frame_h, xmax * frame_w,
                    ymax * frame_h], axis=1)
  if box_jitter > 0:
    sides = tf.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]],
                     axis=1)
    sides = tf.tile(sides, [1, 2])
    noise = _normal(tf.shape(boxes), seed_pair(_BOXES)) * box_jitter * sides
    boxes = boxes + tf.clip_by_value(noise, -max_box_jitter, max_box_jitter)
  limit = tf.stack([frame_w, frame_h, frame_w, frame_h])
  boxes = tf.clip_by_value(boxes, 0.0, limit)

  masks = tf.pad(masks, [[0, pad], [0, mask_size - mask_h],
                         [0, mask_size - mask_w]])
  masks = tf.ensure_shape(tf.cast(masks, tf.float32),
                          [num_masks, mask_size, mask_size])
  weights = tf.pad(tf.cast(nonempty, tf.float32), [[0, pad]])
  inputs = {
      'image': _image(example, image_size, fast_jpeg),
      'points': tf.ensure_shape(tf.pad(points, [[0, pad], [0, 0]])[:, None],
                                [num_masks, 1, 2]),
      'point_labels': tf.ensure_shape(
          tf.pad(tf.ones([count, 1], tf.int32), [[0, pad], [0, 0]]),
          [num_masks, 1]),
      'boxes': tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]),
                               [num_masks, 4]),
  }
  return inputs, masks, tf.ensure_shape(weights, [num_masks])


def sam_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    shuffle_buffer: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool | None = None,
    **sam_kwargs: Any,
) -> tf.data.Dataset:
  """Batched SAM-style training data from a `segment_anything` dataset.

  Args:
    dataset: examples, e.g. ``tfds.load('segment_anything', split=...)``;
      faster with ``decoders={'image': {'content': tfds.decode.SkipDecoding()}}``
      (`load_sam_dataset` does that): the JPEG is then decoded in the same map.
    batch_size: images per batch.
    shuffle_buffer: shuffle examples with this buffer first (None: no).
    repeat: repeat forever (after shuffling).
    drop_remainder: drop a last partial batch (static batch shape).
    num_parallel_calls: parallelism of the map.
    deterministic: passed to ``Dataset.map``.
    **sam_kwargs: keyword options of `to_sam_inputs` (image_size, mask_size,
      num_masks, filters, box_jitter, seed, backend).

  Returns:
    A dataset of ``(inputs, targets, sample_weight)`` batches for
    ``model.fit``: inputs {'image' [B, S, S, 3], 'points' [B, K, 1, 2],
    'point_labels' [B, K, 1], 'boxes' [B, K, 4]}, targets [B, K, M, M],
    sample_weight [B, K].
  """
  # Fail on bad options now, not inside the traced map.
  unknown = set(sam_kwargs) - {
      'image_size', 'mask_size', 'num_masks', 'min_predicted_iou',
      'min_stability_score', 'min_area_fraction', 'max_area_fraction',
      'box_jitter', 'max_box_jitter', 'seed', 'backend', 'fast_jpeg'}
  if unknown:
    raise TypeError(f'sam_dataset: unknown to_sam_inputs options {sorted(unknown)}')
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=sam_kwargs.get('seed'))
  if repeat:
    dataset = dataset.repeat()

  def to_inputs(example):
    return to_sam_inputs(example, **sam_kwargs)

  dataset = dataset.map(to_inputs, num_parallel_calls=num_parallel_calls,
                        deterministic=deterministic)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE)


def load_sam_dataset(
    split: str = 'train',
    *,
    batch_size: int,
    data_dir: str | None = None,
    name: str = 'segment_anything',
    read_config: Any = None,
    **kwargs: Any,
) -> tf.data.Dataset:
  """`sam_dataset` over ``tfds.load(name, split=split, data_dir=data_dir)``.

  The JPEGs are read undecoded and decoded in the SAM map. `name` may carry a
  config, e.g. ``'segment_anything/first_1'``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  dataset = tfds.load(
      name, split=split, data_dir=data_dir, read_config=read_config,
      decoders={'image': {'content': tfds.decode.SkipDecoding()}})
  return sam_dataset(dataset, batch_size=batch_size, **kwargs)
