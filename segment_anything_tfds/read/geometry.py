"""Image geometry of the training inputs, once over numpy and TF.

Written against the array ops of `backend` (``xp``: `backend.NUMPY` or
`backend.tf_ops()`), so the numpy and tf.data paths resize to the same
sizes and sample the same mask pixels, bit for bit.

* `resized_size`: the size of an image scaled so its long side is L, with
  SAM's rounding.
* `nearest_source`: the source pixel each output pixel samples in TF's
  'nearest' resize (``half_pixel_centers=True``, ``align_corners=False``):
  ``min(floor((i + 0.5) * (in / out)), in - 1)``, in float32 exactly like
  the ``ResizeNearestNeighbor`` kernel. `rle.decode` (TF) and the C decoder
  of the numpy path (`numpy_inputs.decode_masks_np`) both sample with it.
* `shrinks`: whether the fast image path resizes by the area rule.
* `jpeg_scale`: which DCT scaling (libjpeg's 1/2, 1/4, 1/8) decodes a
  JPEG at the size needed: the smallest keeping the long side at least the
  target's. Both paths decode with it (TF's ``decode_jpeg(ratio=...)``,
  PIL's ``draft``), with the same libjpeg rule (the accurate integer IDCT),
  so they decode the same pixels.
"""

from __future__ import annotations

from typing import Any

from segment_anything_tfds.read import backend

__all__ = ['resized_size', 'nearest_source', 'nearest_indices',
           'JPEG_RATIOS', 'shrinks', 'jpeg_scale']

# libjpeg's DCT scalings: decode at 1/r of the size.
JPEG_RATIOS = (1, 2, 4, 8)


def resized_size(height: Any, width: Any, long_side: int,
                 xp=backend.NUMPY) -> tuple[Any, Any, Any]:
  """(new_h, new_w, scale): int32, int32, float64; the long side = long_side.

  ``scale = long_side / max(height, width, 1)`` and each side is
  ``max(floor(side * scale + 0.5), 1)``, in float64.
  """
  h = xp.cast(height, 'float64')
  w = xp.cast(width, 'float64')
  scale = long_side / xp.maximum(xp.maximum(h, w), 1.0)
  new_h = xp.maximum(xp.cast(xp.floor(h * scale + 0.5), 'int32'), 1)
  new_w = xp.maximum(xp.cast(xp.floor(w * scale + 0.5), 'int32'), 1)
  return new_h, new_w, scale


def nearest_source(index: Any, in_size: Any, out_size: Any,
                   xp=backend.NUMPY) -> Any:
  """int64 source indices sampled at output `index` (all arguments
  broadcast), clipped to [0, in_size - 1]."""
  index = xp.cast(index, 'int64')
  in_size = xp.cast(in_size, 'int64')
  out_size = xp.cast(out_size, 'int64')
  scale = (xp.cast(in_size, 'float32')
           / xp.cast(xp.maximum(out_size, 1), 'float32'))
  x = (xp.cast(index, 'float32') + 0.5) * scale
  source = xp.cast(xp.floor(x), 'int64')
  return xp.maximum(xp.minimum(source, in_size - 1), 0)


def nearest_indices(in_size: Any, out_size: Any, xp=backend.NUMPY) -> Any:
  """int64 [out_size]: the non-decreasing source indices sampled by
  ``tf.image.resize(..., method='nearest')`` along one axis."""
  return nearest_source(xp.arange(out_size), in_size, out_size, xp)


def shrinks(height: Any, width: Any, new_h: Any, new_w: Any) -> Any:
  """Whether a decoded height x width image is resized to new_h x new_w
  without growing a side: then the fast image path (`fast_jpeg`) uses the
  area rule, else the antialiased bilinear kernel. Python, numpy or TF
  values (a bool or a bool tensor)."""
  return (height >= new_h) & (width >= new_w)


def jpeg_scale(height: Any, width: Any, image_size: int,
               xp=backend.NUMPY) -> Any:
  """int32 index in `JPEG_RATIOS` of the DCT scaling that decodes a height x
  width JPEG at the size needed for `image_size`: the largest r with
  ``max(height, width) >= r * image_size`` and ``min(height, width) >= r``
  (PIL does not scale a side below one pixel)."""
  long_side = xp.maximum(height, width)
  short_side = xp.minimum(height, width)
  index = None
  for ratio in JPEG_RATIOS[1:]:
    fits = xp.cast((long_side >= ratio * image_size) & (short_side >= ratio),
                   'int32')
    index = fits if index is None else index + fits
  return index
