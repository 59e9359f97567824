"""Draws an SA-1B example: its masks in distinct colours, boxes and points.

`render(example)` returns a PIL image of the example's own size: the JPEG
with every mask blended in its own colour (largest first, so small masks stay
visible on top), optionally each mask's box and prompt point. Examples are
numpy dicts as from `tfds.as_numpy` or `tfds.data_source`; `image/content`
may be decoded pixels or the JPEG bytes (read with `SkipDecoding`).
"""

from __future__ import annotations

import colorsys
import io
from typing import Any, Mapping

import numpy as np


def colors(n: int) -> np.ndarray:
  """`n` distinct, saturated RGB colours (uint8, shape [n, 3]).

  Hues step by the golden ratio, so neighbours in the list differ strongly
  and the colours stay distinct for any n.
  """
  out = np.zeros((n, 3), dtype=np.uint8)
  for i in range(n):
    hue = (i * 0.618033988749895) % 1.0
    value = 1.0 if i % 2 == 0 else 0.8
    out[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)]
  return out


def decode_masks(annotations: Mapping[str, Any], height: int, width: int
                 ) -> np.ndarray:
  """All masks of an example as bool [num_masks, height, width].

  Uses pycocotools when installed, else `segment_anything_tfds.rle.decode`.
  """
  seg = annotations['segmentation']
  counts = [c if isinstance(c, bytes) else str(c).encode('utf-8')
            for c in seg['counts']]
  if not counts:
    return np.zeros((0, height, width), dtype=bool)
  try:
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    mask_utils = None
  if mask_utils is not None:
    rles = [{'size': [int(s[0]), int(s[1])], 'counts': c}
            for c, s in zip(counts, seg['size'])]
    masks = mask_utils.decode(rles)  # [h, w, n], Fortran order.
    return np.moveaxis(masks, -1, 0).astype(bool)
  try:
    from segment_anything_tfds import rle  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        'drawing masks needs pycocotools (pip install'
        ' "segment_anything_tfds[pycocotools]")') from None
  return np.stack([
      np.asarray(rle.decode(c, [int(s[0]), int(s[1])])).astype(bool)
      for c, s in zip(counts, seg['size'])])


def image_array(content: Any) -> np.ndarray:
  """`image/content` as uint8 RGB [h, w, 3], from pixels or JPEG bytes."""
  if isinstance(content, (bytes, np.bytes_)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(bytes(content))) as im:
      return np.asarray(im.convert('RGB'))
  arr = np.asarray(content)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return arr.astype(np.uint8)


def render(
    example: Mapping[str, Any],
    *,
    alpha: float = 0.5,
    boxes: bool = False,
    points: bool = False,
    outline: bool = True,
):
  """The example's image with its masks overlaid, as a PIL RGB image.

  Args:
    example: a numpy example (`image` and `annotations` dicts).
    alpha: mask opacity in [0, 1].
    boxes: draw each mask's `bbox` in the mask's colour.
    points: draw each mask's prompt point (`point_coords`).
    outline: draw each mask's boundary at full opacity.

  Returns:
    A PIL.Image of the image's size (width x height).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top

  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}')
  pixels = image_array(example['image']['content'])
  height, width = pixels.shape[:2]
  ann = example['annotations']
  masks = decode_masks(ann, height, width)
  palette = colors(len(masks))
  order = np.argsort([-int(m.sum()) for m in masks], kind='stable')
  out = pixels.astype(np.float32)
  for i in order:
    m = masks[i]
    out[m] = (1 - alpha) * out[m] + alpha * palette[i]
    if outline:
      edge = m & ~_eroded(m)
      out[edge] = palette[i]
  image = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), 'RGB')

  if boxes or points:
    draw = ImageDraw.Draw(image)
    r = max(2, round(min(height, width) / 150))
    for i in range(len(masks)):
      color = tuple(int(c) for c in palette[i])
      if boxes:
        ymin, xmin, ymax, xmax = (float(v) for v in ann['bbox'][i])
        draw.rectangle([xmin * width, ymin * height, xmax * width,
                        ymax * height], outline=color, width=max(1, r // 2))
      if points:
        x, y = (float(v) for v in np.asarray(ann['point_coords'][i]).ravel()[:2])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color,
                     outline=(255, 255, 255))
  return image


def _eroded(mask: np.ndarray) -> np.ndarray:
  """`mask` minus its boundary pixels (4-neighbourhood)."""
  m = np.pad(mask, 1, constant_values=False)
  return (m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2]
          & m[1:-1, 2:])


def save(example: Mapping[str, Any], path, **kwargs) -> tuple[int, int]:
  """Renders `example` to a PNG at `path`; returns its (width, height)."""
  image = render(example, **kwargs)
  image.save(path, format='PNG')
  return image.size
