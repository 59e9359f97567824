"""Draws SA-1B examples: masks, boxes, points, copy-paste and evaluation.

`render(example)` returns a PIL image: the JPEG with its masks in distinct
colours, optionally each mask's box and prompt point. Examples are numpy
dicts as from `tfds.as_numpy` or `tfds.data_source`; `image/content` may be
decoded pixels or the JPEG bytes (read with `SkipDecoding`).

How masks are drawn, stated once:

* Largest first, so that small masks lie on top and stay visible.
* Each pixel is blended once, with the colour of the top mask there:
  ``(1 - alpha) * photo + alpha * colour``. However many masks overlap (an
  SA-1B image has ~100, nested), the photo keeps ``1 - alpha`` of its
  weight everywhere, so it stays readable. Outlines are drawn at full
  opacity.
* `select_masks` picks what to draw: ``predicted_iou >= min_predicted_iou``
  (SAM keeps masks >= 0.88), then the `max_masks` of highest
  ``predicted_iou``.
* Images smaller than `min_size` (longer side) are scaled up by an integer
  factor, pixels and masks alike (nearest), so mask edges stay on pixel
  edges.
* A box or point to draw that is NaN or infinite (a dataset built by older
  code may hold one) is refused, as `export` refuses it
  (`export.check_finite`): nothing is drawn.

`render_copy_paste` draws `copy_paste.paste_from_example` (the source's
picked objects, the target, the target with them pasted);
`render_evaluation` draws predictions against their ground-truth masks, one
tile per mask.
"""

from __future__ import annotations

import colorsys
import io
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.tools import export

DEFAULT_ALPHA = 0.45
# The most pixels a picture is drawn with (after `min_size` upscaling), and
# the most mask pixels decoded for it at once (a byte each). Drawing takes
# ~30 bytes a pixel: 1 GB at MAX_PIXELS. SA-1B's images are ~1500x2250 px
# (3.4 MP): up to ~3800 masks each fit MAX_MASK_PIXELS, far more than its
# densest images hold (a real image is never refused for its masks).
MAX_PIXELS = 1 << 25  # 33.5 MP, e.g. 5792x5792.
MAX_MASK_PIXELS = 3 << 32  # 12 GiB.
# Tile colours of `render_evaluation`.
HIT = (40, 200, 60)  # In the prediction and the ground truth.
MISSED = (40, 110, 255)  # In the ground truth only.
EXTRA = (255, 50, 40)  # In the prediction only.


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


def full_masks(annotations: Mapping[str, Any], height: int, width: int, *,
               image_id: Any = '?', index: Sequence[int] | None = None
               ) -> np.ndarray:
  """All masks of an example as bool [num_masks, height, width], at full
  resolution, for drawing (not `segment_anything_tfds.decode_masks`, the
  tf.data map that samples and decodes an example's masks).

  Uses pycocotools when installed, else `segment_anything_tfds.read.rle.decode`.

  Args:
    annotations: the masks' annotations (`segmentation` counts and size).
    height: the image's height; every mask's size must be the image's.
    width: the image's width.
    image_id: the image's id, for messages.
    index: the masks' indices in the example's annotations (`take`), for
      messages; by default their positions in `annotations`.

  Raises:
    BadRecordError: a mask's stored size is not ``[height, width]`` (a
      prepared dataset is input: one edited could declare a huge mask on a
      small image), naming the image, the mask and both sizes; checked
      before any mask is decoded.
  """
  seg = annotations['segmentation']
  # bytes() also turns numpy.bytes_, which pycocotools refuses, into bytes.
  counts = [bytes(c) if isinstance(c, bytes) else str(c).encode('utf-8')
            for c in seg['counts']]
  _check_mask_sizes(seg['size'], len(counts), height, width,
                    image_id=image_id, index=index)
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
    from segment_anything_tfds.read import rle  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        'drawing masks needs pycocotools (pip install'
        ' "segment_anything_tfds[pycocotools]")') from None
  return np.stack([
      np.asarray(rle.decode(c, [int(s[0]), int(s[1])])).astype(bool)
      for c, s in zip(counts, seg['size'])])


def _check_mask_sizes(sizes: Any, num: int, height: int, width: int, *,
                      image_id: Any, index: Sequence[int] | None) -> None:
  """Refuses masks whose sizes are not the image's (see `full_masks`)."""
  sizes = [np.asarray(size).ravel().tolist() for size in sizes]
  if len(sizes) != num:
    raise errors.BadRecordError(
        f'image_id {image_id}: {num} masks but {len(sizes)} mask sizes')
  for i, size in enumerate(sizes):
    if size != [height, width]:
      shown = i if index is None else int(index[i])
      raise errors.BadRecordError(
          f'image_id {image_id}: annotations[{shown}].segmentation.size'
          f' {size} is not the image\'s [{height}, {width}] (height,'
          ' width)')


def check_drawable(image_id: Any, height: int, width: int, *,
                   masks: int = 0, factor: int = 1) -> None:
  """Refuses a picture too large to draw, before it is decoded.

  Args:
    image_id: the image's id, for the message.
    height: the image's height, in pixels.
    width: its width.
    masks: how many masks are decoded for it at once.
    factor: the upscaling factor it is drawn at (`upscale_factor`).

  Raises:
    ConfigError: naming the image: over `MAX_PIXELS` pixels, or over
      `MAX_MASK_PIXELS` mask pixels.
  """
  pixels = height * width * factor * factor
  size = f'{width}x{height} px' + (f' scaled up {factor}x' if factor > 1
                                   else '')
  if pixels > MAX_PIXELS:
    raise errors.ConfigError(
        f'image id {image_id}: {size} is {pixels / 1e6:.1f} MP, over the'
        f' {MAX_PIXELS / 1e6:.1f} MP a picture is drawn with'
        ' (viz.MAX_PIXELS)')
  if pixels * masks > MAX_MASK_PIXELS:
    raise errors.ConfigError(
        f'image id {image_id}: {masks} masks of {size} are'
        f' {pixels * masks / 2**30:.1f} GiB decoded, over the'
        f' {MAX_MASK_PIXELS / 2**30:.0f} GiB drawn at once'
        ' (viz.MAX_MASK_PIXELS); draw fewer (--max_masks)')


def image_array(content: Any, *, image_id: Any = '?') -> np.ndarray:
  """`image/content` as uint8 RGB [h, w, 3], from pixels or JPEG bytes.

  Raises:
    ConfigError: naming `image_id`: the JPEG's header gives a size over
      `MAX_PIXELS` (checked before decoding), or it cannot be decoded.
  """
  if isinstance(content, (bytes, np.bytes_)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with warnings.catch_warnings():
        # Its size is checked here, below PIL's own limit.
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(bytes(content)))
      with im:
        check_drawable(image_id, im.height, im.width)
        return np.asarray(im.convert('RGB'))
    except errors.Error:
      raise
    except Image.DecompressionBombError as e:
      raise errors.ConfigError(
          f'image id {image_id}: its JPEG is over the'
          f' {MAX_PIXELS / 1e6:.1f} MP a picture is drawn with'
          f' (viz.MAX_PIXELS): {errors.first_line(e)}') from None
    except (OSError, SyntaxError, ValueError) as e:
      raise errors.ConfigError(f'image id {image_id}: its JPEG cannot be'
                               f' decoded ({errors.first_line(e)})') from None
  arr = np.asarray(content)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return arr.astype(np.uint8)


def select_masks(annotations: Mapping[str, Any], *,
                 max_masks: int | None = None,
                 min_predicted_iou: float | None = None) -> np.ndarray:
  """Indices of the masks to draw, in their order (see the module doc)."""
  num = len(annotations['segmentation']['counts'])
  index = np.arange(num)
  if min_predicted_iou is None and max_masks is None:
    return index
  quality = np.asarray(annotations['predicted_iou'], np.float64).reshape(-1)
  if min_predicted_iou is not None:
    index = index[quality[index] >= min_predicted_iou]
  if max_masks is not None and len(index) > max_masks:
    best = np.argsort(-quality[index], kind='stable')[:max_masks]
    index = np.sort(index[best])
  return index


def take(annotations: Mapping[str, Any], index: Sequence[int]
         ) -> dict[str, Any]:
  """The annotations (nested numpy columns) of the masks at `index`."""
  index = np.asarray(index, np.int64)
  return {k: take(v, index) if isinstance(v, Mapping) else
          np.asarray(v)[index] for k, v in annotations.items()}


def upscale_factor(height: int, width: int, min_size: int) -> int:
  """The integer factor that brings the longer side to >= `min_size`."""
  return max(1, math.ceil(min_size / max(height, width, 1)))


def upscale(array: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)
            ) -> np.ndarray:
  """Nearest-neighbour upscaling of `array` along `axes` by `factor`."""
  if factor == 1:
    return array
  return np.repeat(np.repeat(array, factor, axes[0]), factor, axes[1])


def blend(pixels: np.ndarray, masks: np.ndarray, palette: np.ndarray, *,
          alpha: float, outline: bool = True) -> np.ndarray:
  """`masks` [n, h, w] drawn over `pixels` [h, w, 3] (see the module doc)."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}')
  order = np.argsort([-int(m.sum()) for m in masks], kind='stable')
  layer = np.zeros(pixels.shape, np.float32)
  covered = np.zeros(pixels.shape[:2], bool)
  for i in order:  # Largest first: smaller masks overwrite.
    layer[masks[i]] = palette[i]
    covered |= masks[i]
  out = pixels.astype(np.float32)
  out[covered] = (1 - alpha) * out[covered] + alpha * layer[covered]
  if outline:
    for i in order:
      out[masks[i] & ~_eroded(masks[i])] = palette[i]
  return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render(
    example: Mapping[str, Any],
    *,
    alpha: float = DEFAULT_ALPHA,
    boxes: bool = False,
    points: bool = False,
    outline: bool = True,
    max_masks: int | None = None,
    min_predicted_iou: float | None = None,
    min_size: int = 0,
):
  """The example's image with its masks overlaid, as a PIL RGB image.

  Args:
    example: a numpy example (`image` and `annotations` dicts).
    alpha: mask opacity in [0, 1], applied once per pixel.
    boxes: draw each mask's `bbox` in the mask's colour.
    points: draw each mask's prompt point (`point_coords`).
    outline: draw each mask's boundary at full opacity.
    max_masks: draw at most this many masks (highest `predicted_iou`).
    min_predicted_iou: draw only masks with `predicted_iou` at least this.
    min_size: scale the image up (integer factor, nearest) until its longer
      side is at least this many pixels.

  Returns:
    A PIL.Image: the image's size times the upscaling factor.

  Raises:
    BadRecordError: a box (with `boxes`) or point (with `points`) to draw
      is NaN or infinite, or a mask's size is not the image's
      (`full_masks`), naming the image id and the annotation.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  export.check_finite(example, ('bbox',) * boxes + ('point_coords',) * points)
  image_id = _image_id(example)
  pixels = image_array(example['image']['content'], image_id=image_id)
  height, width = pixels.shape[:2]
  index = select_masks(example['annotations'], max_masks=max_masks,
                       min_predicted_iou=min_predicted_iou)
  factor = upscale_factor(height, width, min_size)
  check_drawable(image_id, height, width, masks=len(index), factor=factor)
  ann = take(example['annotations'], index)
  masks = full_masks(ann, height, width, image_id=image_id, index=index)
  palette = colors(len(masks))
  image = Image.fromarray(blend(upscale(pixels, factor),
                                upscale(masks, factor, (1, 2)), palette,
                                alpha=alpha, outline=outline), 'RGB')
  if boxes or points:
    _draw_boxes_and_points(image, ann, palette, factor=factor, boxes=boxes,
                           points=points)
  return image


def _image_id(example: Mapping[str, Any]) -> Any:
  """The example's image id, for messages ('?' if it has none)."""
  value = example['image'].get('image_id')
  return '?' if value is None else int(value)


def _draw_boxes_and_points(image, ann, palette, *, factor: int, boxes: bool,
                           points: bool) -> None:
  """Boxes (SA-1B's inclusive extents) and prompt points, in place."""
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  draw = ImageDraw.Draw(image)
  width, height = image.size[0] // factor, image.size[1] // factor
  r = max(2, round(min(image.size) / 150))
  for i, color in enumerate(tuple(int(c) for c in p) for p in palette):
    if boxes:
      ymin, xmin, ymax, xmax = (float(v) for v in ann['bbox'][i])
      # The last pixel of an inclusive box is x + w: its block ends at
      # (x + w + 1) * factor - 1.
      draw.rectangle(
          [round(xmin * width) * factor, round(ymin * height) * factor,
           (round(xmax * width) + 1) * factor - 1,
           (round(ymax * height) + 1) * factor - 1],
          outline=color, width=max(1, r // 2))
    if points:
      x, y = (float(v) * factor for v in
              np.asarray(ann['point_coords'][i]).ravel()[:2])
      draw.ellipse([x - r, y - r, x + r, y + r], fill=color,
                   outline=(255, 255, 255))


# ------------------------------------------------------------ panels


def _font(size: int):
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size.
    return ImageFont.load_default()


def caption(image, text: str, *, size: int = 16):
  """`image` with a line of `text` in a dark strip above it."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  strip = round(size * 1.6)
  out = Image.new('RGB', (image.size[0], image.size[1] + strip), (24, 24, 24))
  out.paste(image, (0, strip))
  ImageDraw.Draw(out).text((6, (strip - size) // 2), text,
                           fill=(240, 240, 240), font=_font(size))
  return out


def grid(images: Sequence[Any], *, columns: int, gap: int = 6):
  """Images in rows of `columns`, top-left aligned, on a dark background."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  columns = max(1, min(columns, len(images)))
  rows = [images[i:i + columns] for i in range(0, len(images), columns)]
  col_w = [max(row[c].size[0] for row in rows if c < len(row))
           for c in range(columns)]
  row_h = [max(im.size[1] for im in row) for row in rows]
  out = Image.new('RGB', (sum(col_w) + gap * (columns + 1),
                          sum(row_h) + gap * (len(rows) + 1)), (24, 24, 24))
  y = gap
  for row, h in zip(rows, row_h):
    x = gap
    for im, w in zip(row, col_w):
      out.paste(im, (x, y))
      x += w + gap
    y += h + gap
  return out


# ------------------------------------------------------- copy-paste


def render_copy_paste(target: Mapping[str, Any], source: Mapping[str, Any],
                      *, num_objects: int, seed: int,
                      scale_range: Sequence[float] = (0.5, 1.5),
                      alpha: float = DEFAULT_ALPHA, min_size: int = 0):
  """Three panels: the source's picked objects, the target, the result.

  Runs `copy_paste.paste_from_example(target image, source, ...)`, so the
  picture is the op's own output: the image, and its `pasted_counts` drawn
  as masks.

  Returns:
    (PIL image, the op's result as numpy).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.read import copy_paste  # pylint: disable=g-import-not-at-top

  target_pixels = image_array(target['image']['content'],
                              image_id=_image_id(target))
  source_pixels = image_array(source['image']['content'],
                              image_id=_image_id(source))
  seg = source['annotations']['segmentation']
  tf_source = {'image': {'content': tf.constant(source_pixels),
                         'image_id': tf.constant(
                             int(source['image']['image_id']), tf.int64)},
               'annotations': {'segmentation': {
                   'counts': tf.constant(list(seg['counts']), tf.string),
                   'size': tf.constant(np.asarray(seg['size'], np.int64))}}}
  result = copy_paste.paste_from_example(
      tf.constant(target_pixels), tf_source, num_objects=num_objects,
      seed=seed, scale_range=tuple(scale_range), drop_empty=True,
      as_rle=True)
  result = {k: v.numpy() for k, v in result.items()}
  height, width = target_pixels.shape[:2]
  pasted = {'image': {'content': result['image'],
                      'image_id': target['image']['image_id']},
            'annotations': {'segmentation': {
                'counts': result['pasted_counts'],
                'size': np.tile([[height, width]],
                                (len(result['pasted_counts']), 1))}}}
  picked = {'image': source['image'],
            'annotations': take(source['annotations'],
                                result['pasted_indices'])}
  from PIL import Image  # pylint: disable=g-import-not-at-top
  factor = upscale_factor(height, width, min_size)
  check_drawable(_image_id(target), height, width, factor=factor)
  n = len(result['pasted_indices'])
  target_id = int(target['image']['image_id'])
  panels = [
      caption(render(picked, alpha=alpha, min_size=min_size),
              f'source sa_{int(source["image"]["image_id"])}: {n} objects'),
      caption(Image.fromarray(upscale(target_pixels, factor), 'RGB'),
              f'target sa_{target_id}'),
      caption(render(pasted, alpha=alpha, min_size=min_size),
              f'pasted (seed {seed})')]
  return grid(panels, columns=3), result


# ------------------------------------------------------- evaluation


def evaluation_ious(example: Mapping[str, Any],
                    predictions: Sequence[tuple[int, bytes, Any, float]], *,
                    select: str = 'best_iou'):
  """Per ground-truth mask with a prediction: (index, IoU, chosen mask).

  Args:
    example: a numpy example (its ground truth).
    predictions: (id, counts, size, score) of this image's predictions, as
      from `evaluation.parse_predictions` without the image id.
    select: 'best_iou' or 'score', as `evaluation.evaluate_predictions`.

  Returns:
    A list of (gt index, IoU, predicted mask [h, w] bool, gt mask), in the
    ground truth's order; the IoU is `evaluation.mask_iou` (float32, 0
    without overlap), equal to what `evaluate_predictions` computes.

  Raises:
    ValueError: a prediction whose size is not the ground truth's.
  """
  from segment_anything_tfds.train import evaluation  # pylint: disable=g-import-not-at-top
  ann = example['annotations']
  height = int(example['image']['height'])
  width = int(example['image']['width'])
  by_id: dict[int, list[int]] = {}
  for row, (ann_id, *_) in enumerate(predictions):
    by_id.setdefault(int(ann_id), []).append(row)
  out = []
  for g, ann_id in enumerate(int(v) for v in ann['id']):
    rows = by_id.get(ann_id)
    if not rows:
      continue
    for r in rows:
      if tuple(int(v) for v in predictions[r][2]) != (height, width):
        raise ValueError(
            f'the prediction of mask {ann_id} has size'
            f' {list(predictions[r][2])}, its ground truth'
            f' {[height, width]}')
    gt = full_masks(take(ann, [g]), height, width,
                    image_id=_image_id(example), index=[g])[0]
    preds = full_masks({'segmentation': {
        'counts': [predictions[r][1] for r in rows],
        'size': [predictions[r][2] for r in rows]}}, height, width)
    ious = evaluation.mask_iou(preds, gt[None]).numpy()
    iou = evaluation.choose([(i, predictions[r][3]) for i, r in
                             enumerate(rows)], ious, select)
    chosen = preds[int(np.flatnonzero(ious == iou)[0])]
    out.append((g, iou, chosen, gt))
  return out


def render_evaluation(example: Mapping[str, Any],
                      predictions: Sequence[tuple[int, bytes, Any, float]],
                      *, select: str = 'best_iou', max_masks: int = 12,
                      columns: int = 4, min_size: int = 0,
                      alpha: float = 0.6):
  """One tile per ground-truth mask that has a prediction.

  Each tile is the image, in dimmed grey, with the prediction and the mask
  blended in: green where both are, blue where only the ground truth is
  (missed), red where only the prediction is (extra), and the ground
  truth's outline in white; its caption gives the IoU. Masks are taken in
  the ground truth's order, at most `max_masks`.

  Returns:
    (PIL image, the list of `evaluation_ious`).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image_id = _image_id(example)
  pixels = image_array(example['image']['content'], image_id=image_id)
  height, width = pixels.shape[:2]
  factor = upscale_factor(height, width, min_size)
  # Each tile blends 3 masks: both, missed, extra.
  check_drawable(image_id, height, width, masks=3, factor=factor)
  scored = evaluation_ious(example, predictions, select=select)
  background = upscale(_dimmed_gray(pixels), factor)
  palette = np.array([HIT, MISSED, EXTRA], np.uint8)
  tiles = []
  for g, iou, pred, gt in scored[:max_masks]:
    parts = upscale(np.stack([pred & gt, gt & ~pred, pred & ~gt]), factor,
                    (1, 2))
    tile = blend(background, parts, palette, alpha=alpha, outline=False)
    gt = upscale(gt[None], factor, (1, 2))[0]
    tile[gt & ~_eroded(gt)] = 255  # The ground truth's outline, in white.
    ann_id = int(example['annotations']['id'][g])
    tiles.append(caption(Image.fromarray(tile, 'RGB'),
                         f'mask {ann_id}: IoU {iou:.3f}', size=14))
  image_id = int(example['image']['image_id'])
  mean = (f'mean IoU {np.mean([s[1] for s in scored]):.3f}' if scored
          else 'no predictions')
  shown = (f', first {max_masks} shown' if len(scored) > max_masks else '')
  title = (f'sa_{image_id}: {len(scored)} masks with a prediction, {mean}'
           f'{shown}. green: both, blue: missed, red: extra, white: the'
           ' mask\'s outline')
  if not tiles:
    tiles = [Image.fromarray(upscale(pixels, factor), 'RGB')]
  return caption(grid(tiles, columns=columns), title), scored


def _dimmed_gray(pixels: np.ndarray) -> np.ndarray:
  """The image in grey at 60 % brightness: colours drawn on it stand out."""
  gray = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                               np.float32)
  return np.repeat((gray * 0.6 + 0.5).astype(np.uint8)[..., None], 3, -1)


def _eroded(mask: np.ndarray) -> np.ndarray:
  """`mask` minus its boundary pixels (4-neighbourhood)."""
  m = np.pad(mask, 1, constant_values=False)
  return (m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2]
          & m[1:-1, 2:])


def png_bytes(image) -> bytes:
  """A PIL image as PNG bytes, made in memory."""
  buf = io.BytesIO()
  image.save(buf, format='PNG')
  return buf.getvalue()


def save(example: Mapping[str, Any], path, **kwargs) -> tuple[int, int]:
  """Renders `example` to a PNG at `path`, written whole
  (`export.write_file`: never through a link or FIFO there); returns its
  (width, height)."""
  image = render(example, **kwargs)
  export.write_file(path, png_bytes(image), what='the picture')
  return image.size
