"""SAM-style training inputs from `segment_anything` examples, in tf.data.

`to_sam_inputs` maps one example to ``(inputs, targets, sample_weight)`` in
one of the layouts of `sam_layouts` (read it for what every output holds):
'sam' (the default) or 'keras_hub' (what KerasHub's SAM takes). TensorFlow
ops only: it runs inside ``Dataset.map`` with any parallelism and under the
tf.data service. `numpy_inputs` is its numpy twin, for Grain and PyTorch,
with the same masks and prompts for the same seed.

`sam_dataset` builds the batched pipeline; `load_sam_dataset` starts from
`tfds.load`. Batches feed ``keras.Model.fit`` directly. Both can hold out a
validation set by image id (`validation_fraction`, see `sampling`).
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from segment_anything_tfds.read import masks as masks_lib
from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sampling

__all__ = ['to_sam_inputs', 'sam_dataset', 'load_sam_dataset',
           'holdout_filter', 'PIXEL_MEAN', 'PIXEL_STD']

PIXEL_MEAN = sam_layouts.PIXEL_MEAN
PIXEL_STD = sam_layouts.PIXEL_STD


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


def _resized_image(example: Mapping[str, Any], image_size: int,
                   fast_jpeg: bool = True) -> tf.Tensor:
  """float32 [new_h, new_w, 3] on the 0..255 scale, long side image_size."""
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
  return tf.image.resize(content, tf.stack([new_h, new_w]),
                         method='bilinear', antialias=True)


def _layout_image(image: tf.Tensor, image_size: int,
                  layout: str) -> tf.Tensor:
  """Normalizes and pads a resized image to [S, S, 3] for the layout."""
  new_h, new_w = tf.shape(image)[0], tf.shape(image)[1]
  paddings = [[0, image_size - new_h], [0, image_size - new_w], [0, 0]]
  if layout == 'sam':
    image = (image - tf.constant(PIXEL_MEAN)) / tf.constant(PIXEL_STD)
    image = tf.pad(image, paddings)
  else:
    inside = tf.pad(tf.ones([new_h, new_w, 1], tf.bool), paddings)
    image = tf.where(inside, tf.pad(image / 255.0, paddings),
                     tf.constant(sam_layouts.KERAS_HUB_PAD, tf.float32))
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _image(example: Mapping[str, Any], image_size: int,
           fast_jpeg: bool = True, layout: str = 'sam') -> tf.Tensor:
  return _layout_image(_resized_image(example, image_size, fast_jpeg),
                       image_size, layout)


def _keep(annotations: Mapping[str, Any], height: tf.Tensor, width: tf.Tensor,
          opts: sam_layouts.SamOptions) -> tf.Tensor:
  """bool [N]: the masks passing the quality and area filters."""
  area_fraction = tf.cast(annotations['area'], tf.float64) / tf.cast(
      tf.maximum(height * width, 1), tf.float64)
  keep = tf.logical_and(
      tf.cast(annotations['predicted_iou'], tf.float64)
      >= opts.min_predicted_iou,
      tf.cast(annotations['stability_score'], tf.float64)
      >= opts.min_stability_score)
  return tf.logical_and(keep, tf.logical_and(
      area_fraction >= opts.min_area_fraction,
      area_fraction <= opts.max_area_fraction))


def _point_pixels(masks: tf.Tensor, key: tf.Tensor,
                  index: tf.Tensor) -> tf.Tensor:
  """int32 [k]: a uniformly drawn pixel of each mask, flat row-major index.

  The r-th pixel of the mask in row-major order, r = below(count) (0 if the
  mask is empty). Found in two steps, the row from running row counts, then
  the column in that row: ~10x cheaper than a running count of all pixels.
  """
  m = tf.cast(masks > 0, tf.int32)
  row_counts = tf.reduce_sum(m, axis=2)  # [k, h]
  row_cum = tf.cumsum(row_counts, axis=1)
  r = tf.cast(sampling.below_tf(key, index, row_cum[:, -1]), tf.int32)
  row = tf.argmax(row_cum > r[:, None], axis=1, output_type=tf.int32)
  before = tf.gather(row_cum - row_counts, row, batch_dims=1)
  line = tf.cumsum(tf.gather(m, row, batch_dims=1), axis=1)  # [k, w]
  col = tf.argmax(line > (r - before)[:, None], axis=1, output_type=tf.int32)
  return row * tf.shape(masks)[2] + col


def _points(pixel: tf.Tensor, mask_w: tf.Tensor, nonempty: tf.Tensor,
            given: tf.Tensor, stride: float, offset: float) -> tf.Tensor:
  """float32 [k, 2] (x, y): the centre of each chosen mask pixel, in
  resized-image pixels, minus `offset`; masks vanishing at the decoded
  resolution keep the dataset's (scaled) point `given`."""
  py = (tf.cast(pixel // mask_w, tf.float32) + 0.5) * stride - offset
  px = (tf.cast(pixel % mask_w, tf.float32) + 0.5) * stride - offset
  return tf.where(nonempty[:, None], tf.stack([px, py], axis=1), given)


def _boxes(bbox: tf.Tensor, frame_h: tf.Tensor, frame_w: tf.Tensor,
           key: tf.Tensor, index: tf.Tensor,
           opts: sam_layouts.SamOptions) -> tf.Tensor:
  """float32 [k, 4] (x0, y0, x1, y1) in resized-image pixels, jittered."""
  ymin, xmin, ymax, xmax = tf.unstack(tf.cast(bbox, tf.float32), 4, axis=1)
  boxes = tf.stack([xmin * frame_w, ymin * frame_h, xmax * frame_w,
                    ymax * frame_h], axis=1)
  if opts.box_jitter > 0:
    sides = tf.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]],
                     axis=1)
    sides = tf.tile(sides, [1, 2])
    counter = (tf.cast(index, tf.int64)[:, None] * 4
               + tf.range(4, dtype=tf.int64))
    noise = tf.cast(sampling.bell_tf(key, counter), tf.float32)
    noise = noise * opts.box_jitter * sides
    boxes = boxes + tf.clip_by_value(noise, -opts.max_box_jitter,
                                     opts.max_box_jitter)
  limit = tf.stack([frame_w, frame_h, frame_w, frame_h])
  return tf.clip_by_value(boxes, 0.0, limit)


def _use_box(key: tf.Tensor, index: tf.Tensor, prompt: str) -> tf.Tensor:
  """bool [k]: which masks the 'keras_hub' layout prompts by their box."""
  if prompt == 'point':
    return tf.zeros(tf.shape(index), tf.bool)
  if prompt == 'box':
    return tf.ones(tf.shape(index), tf.bool)
  return tf.equal(sampling.below_tf(key, index, 2), 1)


def _pad_rows(t: tf.Tensor, num: int, value: float = 0) -> tf.Tensor:
  """Pads axis 0 of t to `num` rows with `value`, static shape."""
  pad = num - tf.shape(t)[0]
  paddings = [[0, pad]] + [[0, 0]] * (t.shape.rank - 1)
  out = tf.pad(t, paddings, constant_values=tf.cast(value, t.dtype))
  return tf.ensure_shape(out, [num] + t.shape[1:].as_list())


# Plain TF ops, no Python control flow on tensors: nothing to convert.
@tf.autograph.experimental.do_not_convert
def to_sam_inputs(
    example: Mapping[str, Any],
    *,
    image_size: int = 1024,
    mask_size: int | None = None,
    num_masks: int = 64,
    min_predicted_iou: float = 0.0,
    min_stability_score: float = 0.0,
    min_area_fraction: float = 0.0,
    max_area_fraction: float = 1.0,
    box_jitter: float = 0.1,
    max_box_jitter: float = 20.0,
    seed: int | None = None,
    layout: str = 'sam',
    prompt: str | None = None,
    backend: str = 'tf',
    fast_jpeg: bool = True,
) -> tuple[dict[str, tf.Tensor], tf.Tensor, tf.Tensor]:
  """One `segment_anything` example -> SAM-style (inputs, targets, weights).

  See `sam_layouts` for the outputs of each layout. Use inside
  ``Dataset.map`` (`sam_dataset` does it for you).

  Args:
    example: a `segment_anything` example; 'image/content' may be the decoded
      uint8 image or the JPEG bytes (``tfds.decode.SkipDecoding()``).
    image_size, mask_size, num_masks, min_predicted_iou, min_stability_score,
      min_area_fraction, max_area_fraction, box_jitter, max_box_jitter, seed,
      layout, prompt: the fields of `sam_layouts.SamOptions`, described
      there once (with a seed, the sample depends only on (seed, image_id)
      and equals `numpy_inputs`'; None draws a random seed per image).
    backend: mask decoder, 'tf' or 'pycocotools' (see `decode_masks`).
    fast_jpeg: when 'image/content' holds JPEG bytes, decode it with libjpeg's
      DCT scaling (1/2, 1/4 or 1/8) as long as the long side stays >=
      `image_size` (SA-1B: 1/2), then resize. About 3x faster than a full
      decode + resize; pixels differ slightly from that path.

  Returns:
    (inputs, targets, sample_weight) as described in `sam_layouts`.
  """
  opts = sam_layouts.SamOptions(
      image_size=image_size, mask_size=mask_size, num_masks=num_masks,
      min_predicted_iou=min_predicted_iou,
      min_stability_score=min_stability_score,
      min_area_fraction=min_area_fraction,
      max_area_fraction=max_area_fraction, box_jitter=box_jitter,
      max_box_jitter=max_box_jitter, seed=seed, layout=layout, prompt=prompt)
  if backend not in masks_lib.BACKENDS:
    raise ValueError(f'to_sam_inputs: backend must be one of'
                     f' {masks_lib.BACKENDS}, got {backend!r}.')
  annotations = example['annotations']
  height = tf.cast(example['image']['height'], tf.int64)
  width = tf.cast(example['image']['width'], tf.int64)
  image_id = masks_lib.image_id(example)
  seed = sampling.random_seed_tf() if seed is None else seed

  def key(stream):
    return sampling.key_tf(seed, image_id, stream)

  # Filter, then sample up to K of the usable masks.
  index = sampling.choose_tf(_keep(annotations, height, width, opts),
                             opts.num_masks, key(sampling.SAMPLE))
  counts = tf.gather(annotations['segmentation']['counts'], index)

  # Masks at the resolution where the long side is M.
  mask_h, mask_w, _ = _resized_size(height, width, opts.mask_size)
  size = tf.stack([height, width])
  output_size = tf.stack([mask_h, mask_w])
  if backend == 'tf':
    masks = rle.decode(counts, size, output_size=output_size)
  else:
    masks = masks_lib.decode_pycocotools(counts, size,
                                         output_size=output_size)
  nonempty = tf.reduce_any(masks > 0, axis=[1, 2])

  # Prompts, in resized-image pixels.
  _, _, scale = _resized_size(height, width, opts.image_size)
  scale = tf.cast(scale, tf.float32)
  given = tf.cast(tf.gather(annotations['point_coords'], index),
                  tf.float32)[:, 0, :] * scale
  keras_hub = opts.layout == 'keras_hub'
  points = _points(_point_pixels(masks, key(sampling.POINTS), index), mask_w,
                   nonempty, given, stride=opts.image_size / opts.mask_size,
                   offset=0.5 if keras_hub else 0.0)
  frame_h = tf.cast(height, tf.float32) * scale
  frame_w = tf.cast(width, tf.float32) * scale
  boxes = _boxes(tf.gather(annotations['bbox'], index), frame_h, frame_w,
                 key(sampling.BOXES), index, opts)

  k = opts.num_masks
  masks = tf.ensure_shape(
      tf.pad(masks, [[0, 0], [0, opts.mask_size - mask_h],
                     [0, opts.mask_size - mask_w]]),
      [None, opts.mask_size, opts.mask_size])
  targets = _pad_rows(tf.cast(masks, tf.float32), k)
  weights = _pad_rows(tf.cast(nonempty, tf.float32), k)
  image = _image(example, opts.image_size, fast_jpeg, opts.layout)
  if not keras_hub:
    inputs = {
        'image': image,
        'points': _pad_rows(points, k)[:, None],
        'point_labels': _pad_rows(tf.ones([tf.size(index), 1], tf.int32), k,
                                  -1),
        'boxes': _pad_rows(boxes, k),
    }
    return inputs, targets, weights
  use_box = _use_box(key(sampling.PROMPTS), index, opts.prompt_kind)
  labels = tf.where(use_box, -1.0, 1.0)[:, None]
  points = tf.where(use_box[:, None], 0.0, points)
  inputs = {
      'images': image,
      'points': _pad_rows(points, k)[:, None],
      'labels': _pad_rows(labels, k, -1),
      'boxes': tf.reshape(_pad_rows(boxes, k), [k, 1, 2, 2]),
  }
  return inputs, targets, weights


def holdout_filter(validation_fraction: float, validation: bool = False):
  """A ``Dataset.filter`` predicate: the training part or the holdout.

  An image is held out when ``sampling.in_holdout_tf(image_id, fraction)``:
  a hash of its id alone, so the split is the same in every config, build,
  file format and path (`numpy_inputs.SamDataset` uses the same rule), and a
  larger fraction holds out a superset.

  Args:
    validation_fraction: the fraction of images held out, in [0, 1].
    validation: True keeps the held-out images, False the others.
  """
  _check_fraction(validation_fraction)

  def predicate(example):
    held_out = sampling.in_holdout_tf(masks_lib.image_id(example),
                                      validation_fraction)
    return held_out if validation else tf.logical_not(held_out)

  return predicate


def _check_fraction(fraction: float) -> None:
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1], got {fraction}.')


_MAP_OPTIONS = sam_layouts.SamOptions.names() | {'backend', 'fast_jpeg'}


def sam_dataset(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    shuffle_buffer: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool | None = None,
    validation_fraction: float | None = None,
    validation: bool = False,
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
    validation_fraction: hold out this fraction of the images by image id
      (`holdout_filter`); None keeps every image.
    validation: with `validation_fraction`, True yields the held-out images
      instead of the others.
    **sam_kwargs: keyword options of `to_sam_inputs` (image_size, mask_size,
      num_masks, filters, box_jitter, seed, layout, prompt, backend,
      fast_jpeg).

  Returns:
    A dataset of ``(inputs, targets, sample_weight)`` batches for
    ``model.fit``, the `to_sam_inputs` outputs with a batch axis B in front:
    layout 'sam': inputs {'image' [B, S, S, 3], 'points' [B, K, 1, 2],
    'point_labels' [B, K, 1], 'boxes' [B, K, 4]}; layout 'keras_hub':
    inputs {'images' [B, S, S, 3], 'points' [B, K, 1, 2], 'labels'
    [B, K, 1], 'boxes' [B, K, 1, 2, 2]}; targets [B, K, M, M],
    sample_weight [B, K].
  """
  # Fail on bad options now, not inside the traced map.
  unknown = set(sam_kwargs) - _MAP_OPTIONS
  if unknown:
    raise TypeError(f'sam_dataset: unknown to_sam_inputs options {sorted(unknown)}')
  sam_layouts.SamOptions(**{k: v for k, v in sam_kwargs.items()
                            if k in sam_layouts.SamOptions.names()})
  if validation_fraction is not None:
    dataset = dataset.filter(holdout_filter(validation_fraction, validation))
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=sam_kwargs.get('seed'))
  if repeat:
    dataset = dataset.repeat()

  # `to_sam_inputs` is plain TF ops: nothing for autograph to convert (it
  # would only warn about this closure).
  @tf.autograph.experimental.do_not_convert
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
    download: bool = False,
    download_and_prepare_kwargs: Any = None,
    **kwargs: Any,
) -> tf.data.Dataset:
  """`sam_dataset` over the prepared split of `name` in `data_dir`.

  The JPEGs are read undecoded and decoded in the SAM map. `name` may carry a
  config, e.g. ``'segment_anything/first_1'``. Reading never builds: a
  dataset that is not prepared raises `errors.NotPreparedError` saying how
  to build it, unless `download=True` (then `download_and_prepare_kwargs`,
  e.g. a `download_config` with a manual_dir, are used).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.read import prepared as reading  # pylint: disable=g-import-not-at-top
  builder = reading.prepared_builder(
      name, data_dir=data_dir, download=download,
      download_and_prepare_kwargs=download_and_prepare_kwargs)
  dataset = builder.as_dataset(
      split=split, read_config=read_config,
      decoders={'image': {'content': tfds.decode.SkipDecoding()}})
  return sam_dataset(dataset, batch_size=batch_size, **kwargs)
