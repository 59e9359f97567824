"""Copy-paste augmentation: SA-1B objects pasted into another image.

`paste_objects` is a tf.data op (pure TF, stateless random ops): it picks K
objects of a source image (its RLE masks), cuts each out along its mask,
scales it by a random factor and pastes it at a random place of the target
image. It returns the new image, the pasted masks (dense, or RLE counts via
`rle.encode`) and, optionally, the target's own masks with the pasted pixels
removed. `paste_from_example` takes the source as a `segment_anything`
example. The same seed gives the same result, eagerly or in any pipeline.

The steps are small functions, each usable alone: `sample_objects`,
`object_boxes`, `sample_placements`, `place_objects`, `composite`,
`occlude`.

Scaling samples pixels with TF's nearest rule (`rle.nearest_source`), so the
pasted image and its mask stay aligned pixel for pixel: every pasted pixel is
a pixel of the object. Objects pasted later lie on top of earlier ones, and
each pasted mask is the part of its object left visible.

    pairs = tf.data.Dataset.zip((targets, sources))  # e.g. shifted copies
    ds = pairs.map(lambda t, s: paste_from_example(
        t['image']['content'], s, num_objects=4, seed=0,
        scale_range=(0.5, 1.5)), num_parallel_calls=tf.data.AUTOTUNE)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sampling

__all__ = ['paste_objects', 'paste_from_example', 'sample_objects',
           'object_boxes', 'sample_placements', 'place_objects', 'composite',
           'occlude']


def _seed_pair(seed: Any) -> tf.Tensor:
  """A stateless seed [2] from an int or an int [2]."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  if seed.shape.rank == 0:
    return tf.stack([seed, tf.constant(0, tf.int64)])
  return tf.reshape(seed, [2])


def sample_objects(counts: tf.Tensor, size: tf.Tensor, num_objects: int,
                   seed: tf.Tensor) -> tf.Tensor:
  """Indices of up to `num_objects` distinct non-empty masks, in order.

  Args:
    counts: string [N], the source's RLE masks.
    size: their (height, width) ([2] or [N, 2]).
    num_objects: K.
    seed: stateless seed [2].

  Returns:
    int32 [min(K, non-empty masks)], increasing.
  """
  seed = tf.cast(seed, tf.int64)
  key = sampling.key_tf(seed[0] * 2**32 + seed[1], tf.constant(0, tf.int64),
                        sampling.COPY_PASTE)
  return sampling.choose_tf(rle.area(counts, size) > 0, num_objects, key)


def object_boxes(masks: tf.Tensor) -> tf.Tensor:
  """Tight boxes [K, 4] = (top, left, height, width) of masks [K, H, W].

  An empty mask gives (0, 0, 0, 0).
  """
  masks = tf.cast(masks, tf.bool)

  def extent(any_along):  # [K, L] -> (first, length), int32 [K] each.
    length = tf.shape(any_along)[1]
    hits = tf.cast(any_along, tf.int32)
    first = tf.argmax(hits, axis=1, output_type=tf.int32)
    last = length - 1 - tf.argmax(tf.reverse(hits, [1]), axis=1,
                                  output_type=tf.int32)
    found = tf.reduce_any(any_along, axis=1)
    return (tf.where(found, first, 0),
            tf.where(found, last - first + 1, 0))

  top, height = extent(tf.reduce_any(masks, axis=2))
  left, width = extent(tf.reduce_any(masks, axis=1))
  return tf.stack([top, left, height, width], axis=1)


def sample_placements(sizes: tf.Tensor, target_size: Any,
                      scale_range: Sequence[float], seed: tf.Tensor
                      ) -> tf.Tensor:
  """Random scale and position of K objects in the target.

  Each object's size (h, w) becomes ``max(1, round(s * (h, w)))`` with s
  uniform in `scale_range`, and its top-left corner is uniform among the
  places where it fits (at 0 when it does not: it is then cut at the
  bottom / right border).

  Args:
    sizes: int [K, 2] object (height, width).
    target_size: (height, width) of the target.
    scale_range: (low, high).
    seed: stateless seed [2].

  Returns:
    int32 [K, 4] placements (top, left, height, width) in the target.
  """
  sizes = tf.cast(sizes, tf.float32)
  num = tf.shape(sizes)[0]
  scale_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  low, high = scale_range
  scale = tf.random.stateless_uniform(tf.reshape(num, [1]), scale_seed,
                                      minval=low, maxval=high)
  scaled = tf.maximum(tf.cast(tf.round(sizes * scale[:, None]), tf.int32), 1)
  room = tf.maximum(tf.cast(target_size, tf.int32)[None] - scaled, 0) + 1
  u = tf.random.stateless_uniform(tf.stack([num, 2]), place_seed)
  corner = tf.minimum(tf.cast(u * tf.cast(room, tf.float32), tf.int32),
                      room - 1)
  return tf.concat([corner, scaled], axis=1)


def place_objects(source_image: tf.Tensor, source_masks: tf.Tensor,
                  boxes: tf.Tensor, placements: tf.Tensor,
                  target_size: Any) -> tuple[tf.Tensor, tf.Tensor]:
  """Scales each object's box to its placement, on a target-sized canvas.

  Args:
    source_image: [Hs, Ws, C].
    source_masks: [K, Hs, Ws] (nonzero is the object).
    boxes: int [K, 4] (top, left, height, width) in the source.
    placements: int [K, 4] (top, left, height, width) in the target.
    target_size: (height, width).

  Returns:
    (images [K, Ht, Wt, C] of the source's dtype, masks bool [K, Ht, Wt]):
    object k's pixels where it lands, its mask false elsewhere.
  """
  boxes = tf.cast(boxes, tf.int64)
  placements = tf.cast(placements, tf.int64)
  target_size = tf.cast(target_size, tf.int64)

  def source_index(axis):  # [K, T] source indices and validity, one axis.
    out = tf.range(target_size[axis])[None] - placements[:, axis, None]
    inside = tf.logical_and(out >= 0, out < placements[:, axis + 2, None])
    index = boxes[:, axis, None] + rle.nearest_source(
        out, boxes[:, axis + 2, None], placements[:, axis + 2, None])
    return index, inside

  rows, row_in = source_index(0)
  cols, col_in = source_index(1)
  images = tf.gather(tf.gather(source_image, rows), cols, axis=2,
                     batch_dims=1)
  masks = tf.gather(tf.gather(tf.cast(source_masks, tf.bool), rows, axis=1,
                              batch_dims=1), cols, axis=2, batch_dims=1)
  masks = tf.logical_and(masks, tf.logical_and(row_in[:, :, None],
                                               col_in[:, None, :]))
  return images, masks


def composite(target_image: tf.Tensor, images: tf.Tensor,
              masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Pastes objects in order, each over the previous ones.

  Args:
    target_image: [Ht, Wt, C].
    images: [K, Ht, Wt, C] placed objects (`place_objects`).
    masks: bool [K, Ht, Wt] where each object lands.

  Returns:
    (image [Ht, Wt, C] of the target's dtype, visible bool [K, Ht, Wt]: the
    part of each object not covered by a later one).
  """
  masks = tf.cast(masks, tf.bool)
  later = tf.cumsum(tf.cast(masks, tf.int32), axis=0, exclusive=True,
                    reverse=True) > 0
  visible = tf.logical_and(masks, tf.logical_not(later))

  def paste():
    # Visible parts are disjoint: each pixel takes at most one object.
    top = tf.argmax(tf.cast(visible, tf.int32), axis=0, output_type=tf.int32)
    shape = tf.shape(top)
    rows, cols = tf.meshgrid(tf.range(shape[0]), tf.range(shape[1]),
                             indexing='ij')
    pasted = tf.gather_nd(images, tf.stack([top, rows, cols], axis=-1))
    return tf.where(tf.reduce_any(masks, axis=0)[..., None],
                    tf.cast(pasted, target_image.dtype), target_image)

  image = tf.cond(tf.shape(masks)[0] > 0, paste,
                  lambda: tf.identity(target_image))
  return image, visible


def occlude(masks: tf.Tensor, covered: tf.Tensor, *,
            drop_empty: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
  """Removes covered pixels from masks [M, H, W].

  Returns:
    (masks of the same dtype, int32 indices of the masks kept): all M, or
    with `drop_empty` the ones left non-empty.
  """
  masks = tf.convert_to_tensor(masks)
  left = tf.logical_and(tf.cast(masks, tf.bool),
                        tf.logical_not(tf.cast(covered, tf.bool))[None])
  kept = tf.range(tf.shape(masks)[0])
  if drop_empty:
    kept = tf.boolean_mask(kept, tf.reduce_any(left, axis=[1, 2]))
    left = tf.gather(left, kept)
  return tf.cast(left, masks.dtype), kept


def _output_masks(masks: tf.Tensor, output_size: Any, as_rle: bool):
  """uint8 masks [N, H, W] at output_size (nearest), or RLE counts [N]."""
  if as_rle:
    return rle.encode(masks)
  masks = tf.cast(masks, tf.uint8)
  if output_size is None:
    return masks
  return tf.image.resize(masks[..., None], output_size,
                         method='nearest')[..., 0]


def paste_objects(target_image: tf.Tensor,
                  source_image: tf.Tensor,
                  source_counts: tf.Tensor,
                  source_size: Any,
                  *,
                  num_objects: int,
                  seed: Any,
                  scale_range: Sequence[float] = (0.5, 1.5),
                  target_masks: tf.Tensor | None = None,
                  drop_empty: bool = False,
                  output_size: Sequence[int] | None = None,
                  as_rle: bool = False) -> dict[str, tf.Tensor]:
  """Pastes up to `num_objects` random objects of the source into the target.

  Args:
    target_image: [Ht, Wt, C].
    source_image: [Hs, Ws, C], decoded.
    source_counts: string [N], the source's RLE masks.
    source_size: their (Hs, Ws) ([2] or SA-1B's [N, 2]).
    num_objects: K, the most objects pasted (fewer if the source has fewer
      non-empty masks).
    seed: int or int [2]: the same seed, the same result.
    scale_range: (low, high) of the uniform random scale.
    target_masks: optional [M, Ht, Wt] masks of the target: returned with
      the pasted pixels removed (occluded).
    drop_empty: drop the masks (target and pasted) left empty.
    output_size: (h, w) of the returned masks (nearest resize); default the
      target's size.
    as_rle: return the pasted masks as RLE counts [K'] at the target's size
      (`rle.encode`) instead of dense masks.

  Returns:
    {'image': [Ht, Wt, C] of the target's dtype,
     'pasted_masks': uint8 [K', h, w] (or 'pasted_counts': string [K']),
     'pasted_indices': int32 [K'], the source annotations pasted,
     and with target_masks: 'target_masks' [M', h, w] uint8 (or
     'target_counts'), 'target_indices' int32 [M'] the target masks kept}.
  """
  seed = _seed_pair(seed)
  pick_seed, place_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  source_image = tf.convert_to_tensor(source_image)
  counts = tf.reshape(tf.convert_to_tensor(source_counts, tf.string), [-1])
  source_hw = tf.shape(source_image, out_type=tf.int64)[:2]
  sizes = tf.reshape(tf.cast(source_size, tf.int64), [-1, 2])
  check = tf.debugging.Assert(
      tf.reduce_all(tf.equal(sizes, source_hw[None])),
      ['copy_paste: the source masks have size', sizes, 'and the image',
       source_hw], summarize=4)
  with tf.control_dependencies([check]):
    picked = sample_objects(counts, source_hw, num_objects, pick_seed)
  source_masks = rle.decode(tf.gather(counts, picked), source_hw)
  boxes = object_boxes(source_masks)
  target_size = tf.shape(target_image)[:2]
  placements = sample_placements(boxes[:, 2:], target_size, scale_range,
                                 place_seed)
  images, landed = place_objects(source_image, source_masks, boxes,
                                 placements, target_size)
  image, visible = composite(target_image, images, landed)
  pasted_indices = picked
  if drop_empty:
    keep = tf.reduce_any(visible, axis=[1, 2])
    visible = tf.boolean_mask(visible, keep)
    pasted_indices = tf.boolean_mask(picked, keep)
  name = 'pasted_counts' if as_rle else 'pasted_masks'
  result = {'image': image,
            name: _output_masks(visible, output_size, as_rle),
            'pasted_indices': pasted_indices}
  if target_masks is not None:
    left, kept = occlude(target_masks, tf.reduce_any(landed, axis=0),
                         drop_empty=drop_empty)
    name = 'target_counts' if as_rle else 'target_masks'
    result[name] = _output_masks(left, output_size, as_rle)
    result['target_indices'] = kept
  return result


def paste_from_example(target_image: tf.Tensor,
                       source: Mapping[str, Any], *, seed: Any,
                       **kwargs) -> dict[str, tf.Tensor]:
  """`paste_objects` with the source as a `segment_anything` example.

  The source example needs a decoded ``image.content`` and
  ``annotations.segmentation`` {counts, size}. An int `seed` is paired with
  the source's ``image_id`` (the stateless seed ``[seed, image_id]``), so
  each source image draws its own objects; an int [2] seed is used as it is.
  """
  if tf.convert_to_tensor(seed).shape.rank == 0:
    seed = tf.stack([tf.cast(seed, tf.int64),
                     tf.cast(source['image']['image_id'], tf.int64)])
  segmentation = source['annotations']['segmentation']
  return paste_objects(target_image, source['image']['content'],
                       segmentation['counts'], segmentation['size'],
                       seed=seed, **kwargs)
