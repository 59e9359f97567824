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

from segment_anything_tfds.read import backend as backend_lib
from segment_anything_tfds.read import geometry
from segment_anything_tfds.read import masks as masks_lib
from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sam_steps
from segment_anything_tfds.read import sampling

__all__ = ['to_sam_inputs', 'sam_dataset', 'load_sam_dataset',
           'holdout_filter', 'PIXEL_MEAN', 'PIXEL_STD']

PIXEL_MEAN = sam_layouts.PIXEL_MEAN
PIXEL_STD = sam_layouts.PIXEL_STD
_TF = backend_lib.tf_ops()


# libjpeg's accurate integer IDCT: PIL's, so both paths decode JPEGs to the
# same pixels (TF's default, 'INTEGER_FAST', differs by a few grey levels).
_DCT_METHOD = 'INTEGER_ACCURATE'


def _decoded_image(content: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                   image_size: int, fast_jpeg: bool = True) -> tf.Tensor:
  """uint8 [h, w, 3]: `content` decoded, or as it is if already pixels.

  With `fast_jpeg`, a JPEG is decoded with DCT scaling
  (`geometry.jpeg_scale`): much faster than a full decode followed by a big
  downscale, and itself a good low-pass filter.
  """
  if content.dtype != tf.string:
    return content

  def jpeg(ratio):
    return tf.io.decode_jpeg(content, channels=3, ratio=ratio,
                             dct_method=_DCT_METHOD)

  def decode_jpeg():
    if not fast_jpeg:
      return jpeg(1)
    index = geometry.jpeg_scale(height, width, image_size, _TF)
    return tf.switch_case(index, [(lambda r=r: jpeg(r))
                                  for r in geometry.JPEG_RATIOS])

  is_jpeg = tf.equal(tf.strings.substr(content, 0, 3), b'\xff\xd8\xff')
  return tf.cond(is_jpeg, decode_jpeg,
                 lambda: tf.io.decode_image(content, channels=3,
                                            expand_animations=False))


def _resized_image(content: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                   image_size: int, fast_jpeg: bool = True) -> tf.Tensor:
  """float32 [new_h, new_w, 3] on the 0..255 scale, long side image_size.

  `content` is the decoded uint8 image or its encoded bytes.
  """
  image = tf.ensure_shape(
      _decoded_image(content, height, width, image_size, fast_jpeg),
      [None, None, 3])
  # The target size comes from the true image size (the decoded one may be
  # scaled), so that image and masks line up.
  new_h, new_w, _ = geometry.resized_size(height, width, image_size, _TF)
  size = tf.stack([new_h, new_w])

  def antialiased():
    return tf.image.resize(image, size, method='bilinear', antialias=True)

  if not fast_jpeg:
    return antialiased()
  # The fast path shrinks by the area rule: each pixel the mean of what it
  # covers (3-4x cheaper than the antialiased bilinear kernel). An image
  # smaller than the target, which is rare, is grown by the antialiased
  # kernel.
  shape = tf.shape(image)
  return tf.cond(geometry.shrinks(shape[0], shape[1], new_h, new_w),
                 lambda: tf.image.resize(image, size, method='area'),
                 antialiased)


def _mask_decoder(backend: str):
  """`sam_steps.MaskDecoder` over `rle.decode` or pycocotools."""
  decode = rle.decode if backend == 'tf' else masks_lib.decode_pycocotools

  def decoder(features, mask_hw, padded):
    mask_h, mask_w = mask_hw
    num_masks, mask_size = padded
    masks = decode(features['counts'],
                   tf.stack([features['height'], features['width']]),
                   output_size=tf.stack([mask_h, mask_w]))
    # Padded as uint8, then made float32 once.
    targets = tf.pad(masks, [[0, num_masks - tf.shape(masks)[0]],
                             [0, mask_size - mask_h],
                             [0, mask_size - mask_w]])
    targets = tf.ensure_shape(tf.cast(targets, tf.float32),
                              [num_masks, mask_size, mask_size])
    return masks, targets

  return decoder


def _read(seed: int | None):
  """The `sam_steps` read step of a `segment_anything` example."""

  def read(example):
    annotations = example['annotations']
    return {
        'height': tf.cast(example['image']['height'], tf.int64),
        'width': tf.cast(example['image']['width'], tf.int64),
        'image_id': masks_lib.image_id(example),
        'seed': sampling.random_seed_tf() if seed is None else seed,
        'content': example['image']['content'],
        'area': annotations['area'],
        'predicted_iou': annotations['predicted_iou'],
        'stability_score': annotations['stability_score'],
        'counts': annotations['segmentation']['counts'],
        'bbox': annotations['bbox'],
        'point_coords': annotations['point_coords'],
    }

  return read


def sam_steps_tf(opts: sam_layouts.SamOptions, backend: str = 'tf',
                 fast_jpeg: bool = True) -> list[sam_steps.Step]:
  """The `sam_steps` of `to_sam_inputs`, in TensorFlow ops."""
  if backend not in masks_lib.BACKENDS:
    raise ValueError(f'to_sam_inputs: backend must be one of'
                     f' {masks_lib.BACKENDS}, got {backend!r}.')

  def image_decoder(content, height, width, image_size):
    return _resized_image(content, height, width, image_size, fast_jpeg)

  return sam_steps.steps(opts, _TF, read=_read(opts.seed),
                         mask_decoder=_mask_decoder(backend),
                         image_decoder=image_decoder)


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

  See `sam_layouts` for the outputs of each layout, and `sam_steps` for the
  steps (filter, sample, decode, prompts, layout) this composes. Use inside
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
    fast_jpeg: the fast image path. When 'image/content' holds JPEG bytes,
      decode it with libjpeg's DCT scaling (1/2, 1/4 or 1/8) as long as the
      long side stays >= `image_size` (SA-1B: 1/2); then shrink by the area
      rule (``tf.image.resize(method='area')``). False: a full decode and
      the antialiased bilinear resize, about 1.6x the time per image; the
      pixels differ slightly (docs/training.md measures how much).

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
  return sam_steps.compose(*sam_steps_tf(opts, backend, fast_jpeg))(example)


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
