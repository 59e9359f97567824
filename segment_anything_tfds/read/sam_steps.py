"""SAM training inputs as small steps, dict -> dict, once over numpy and TF.

The tf.data path (`sam_inputs.to_sam_inputs`) and the numpy path
(`numpy_inputs.SamTransform`, for Grain and PyTorch) run the same steps, in
the style of big_vision's ``pp/`` ops::

  read -> filter_masks -> sample_masks -> decode_masks -> prompts
       -> resize_image -> layout

`steps` builds them from `SamOptions` and a backend ``xp`` (`backend.NUMPY`
or `backend.tf_ops()`); `compose` chains them. Each step takes a flat dict
of features and returns a new dict with what it adds. Only three things
differ between the paths and are passed in: reading an example into
features, the mask decoder and the image decoder. Everything else (the
filters, every random choice, the geometry of points and boxes, the
layouts) is written once, here and in `sampling` and `geometry`, so both
paths give the same masks, points, prompt kinds, box jitter and weights,
bit for bit. What each output holds is stated in `sam_layouts`.

Features
--------
From ``read``:
  height, width: int scalars, the image size;
  image_id, seed: the sample's (seed, image_id) (`sampling`);
  content: the image (JPEG bytes or decoded pixels);
  area, predicted_iou, stability_score: [N];
  counts: [N] RLE strings;
  bbox: [N, 4] (ymin, xmin, ymax, xmax), normalized;
  point_coords: [N, 1, 2] or [N, 2], (x, y) in image pixels.
Added by the steps:
  keep: bool [N] (`filter_masks`);
  index: int32 [k], the sampled masks; counts, bbox, point_coords: their
    rows (`sample_masks`);
  masks: [k, h, w] at the mask resolution (long side M); targets: float32
    [K, M, M], zero-padded; row_counts: int32 [k, h], the pixels in each
    row of each mask; nonempty: bool [k] (`decode_masks`);
  points: float32 [k, 2]; boxes: float32 [k, 4]; use_box: bool [k],
    layout 'keras_hub' only (`prompts`);
  image: [h, w, 3] on the 0..255 scale, long side S (`resize_image`):
    float32 (in numpy uint8 without fast_jpeg).
`layout` returns ``(inputs, targets, sample_weight)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from segment_anything_tfds.read import geometry
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sampling

__all__ = ['Step', 'compose', 'steps', 'filter_masks', 'sample_masks',
           'decode_masks', 'prompts', 'resize_image', 'layout',
           'point_pixels', 'jittered_boxes']

Features = Mapping[str, Any]
Step = Callable[[Features], Any]
# decoder(features, (h, w), (K, M)) -> (masks [k, h, w], targets float32
#   [K, M, M]): the sampled masks (features['counts'], of the size
#   features['height'] x features['width']) at (h, w), exactly a 'nearest'
#   resize of the full masks, and the same zero-padded.
MaskDecoder = Callable[..., tuple[Any, Any]]
# image_decoder(content, height, width, image_size) -> [h, w, 3] on the
#   0..255 scale, the long side image_size (`geometry.resized_size`).
ImageDecoder = Callable[..., Any]


def compose(*fns: Step) -> Step:
  """The steps run one after the other."""

  def run(features):
    for fn in fns:
      features = fn(features)
    return features

  return run


def steps(opts: sam_layouts.SamOptions, xp, *, read: Step,
          mask_decoder: MaskDecoder, image_decoder: ImageDecoder
          ) -> list[Step]:
  """The steps from an example to ``(inputs, targets, sample_weight)``."""
  return [read, filter_masks(opts, xp), sample_masks(opts, xp),
          decode_masks(opts, xp, mask_decoder), prompts(opts, xp),
          resize_image(opts, image_decoder), layout(opts, xp)]


def _key(features: Features, stream: int, xp):
  return sampling.key(features['seed'], features['image_id'], stream, xp)


def filter_masks(opts: sam_layouts.SamOptions, xp) -> Step:
  """keep: the masks passing the quality and area filters."""

  def step(f):
    pixels = xp.cast(xp.maximum(f['height'] * f['width'], 1), 'float64')
    area_fraction = xp.cast(f['area'], 'float64') / pixels
    keep = ((xp.cast(f['predicted_iou'], 'float64')
             >= opts.min_predicted_iou)
            & (xp.cast(f['stability_score'], 'float64')
               >= opts.min_stability_score)
            & (area_fraction >= opts.min_area_fraction)
            & (area_fraction <= opts.max_area_fraction))
    return {**f, 'keep': xp.reshape(keep, [-1])}

  return step


def sample_masks(opts: sam_layouts.SamOptions, xp) -> Step:
  """index: up to K kept masks, uniformly (stream SAMPLE); and their rows
  of counts, bbox and point_coords."""

  def step(f):
    index = sampling.choose(f['keep'], opts.num_masks,
                            _key(f, sampling.SAMPLE, xp), xp)
    out = {**f, 'index': index}
    for name in ('counts', 'bbox', 'point_coords'):
      out[name] = xp.gather(f[name], index)
    return out

  return step


def decode_masks(opts: sam_layouts.SamOptions, xp,
                 decoder: MaskDecoder) -> Step:
  """masks, targets, nonempty: the sampled masks where the long side is M
  (a mask may vanish there: nonempty is False)."""

  def step(f):
    mask_h, mask_w, _ = geometry.resized_size(f['height'], f['width'],
                                              opts.mask_size, xp)
    masks, targets = decoder(f, (mask_h, mask_w),
                             (opts.num_masks, opts.mask_size))
    row_counts = xp.sum(masks > 0, axis=2, dtype='int32')
    return {**f, 'masks': masks, 'targets': targets,
            'row_counts': row_counts,
            'nonempty': xp.sum(row_counts, axis=1) > 0}

  return step


def point_pixels(masks: Any, row_counts: Any, key: Any, index: Any,
                 xp) -> tuple[Any, Any]:
  """(row, col), int32 [k]: a uniformly drawn pixel of each mask.

  The r-th pixel of the mask in row-major order, r = below(count) (pixel
  (0, 0) if the mask is empty). Found in two steps, the row from running
  row counts (`row_counts`: int32 [k, h], the pixels of each row), then the
  column in that row: ~10x cheaper than a running count of all pixels.
  """
  row_cum = xp.cumsum(row_counts, axis=1)
  r = xp.cast(sampling.below(key, index, row_cum[:, -1], xp), 'int32')
  row = xp.argmax(row_cum > r[:, None], axis=1)
  before = xp.gather_rows(row_cum - row_counts, row)
  line = xp.cumsum(xp.cast(xp.gather_rows(masks, row) > 0, 'int32'),
                   axis=1)  # [k, w]
  col = xp.argmax(line > (r - before)[:, None], axis=1)
  return row, col


def jittered_boxes(bbox: Any, frame_h: Any, frame_w: Any, key: Any,
                   index: Any, opts: sam_layouts.SamOptions, xp) -> Any:
  """float32 [k, 4] (x0, y0, x1, y1) in resized-image pixels, jittered.

  Noise of std `box_jitter` x the box side (bell-shaped, stream BOXES,
  counter 4 * index + corner), clipped to `max_box_jitter` pixels; then
  the box is clipped to the frame.
  """
  ymin, xmin, ymax, xmax = xp.unstack(xp.cast(bbox, 'float32'), 4, axis=1)
  boxes = xp.stack([xmin * frame_w, ymin * frame_h, xmax * frame_w,
                    ymax * frame_h], axis=1)
  if opts.box_jitter > 0:
    sides = xp.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]],
                     axis=1)
    sides = xp.tile(sides, [1, 2])
    counter = xp.cast(index, 'int64')[:, None] * 4 + xp.arange(4)
    noise = xp.cast(sampling.bell(key, counter, xp), 'float32')
    noise = noise * opts.box_jitter * sides
    boxes = boxes + xp.clip(noise, -opts.max_box_jitter,
                            opts.max_box_jitter)
  limit = xp.stack([frame_w, frame_h, frame_w, frame_h])
  return xp.clip(boxes, 0.0, limit)


def _use_box(key: Any, index: Any, prompt: str, xp) -> Any:
  """bool [k]: which masks the 'keras_hub' layout prompts by their box."""
  if prompt in ('point', 'box'):
    return xp.full_like(index, prompt == 'box', 'bool')
  return sampling.below(key, index, 2, xp) == 1


def prompts(opts: sam_layouts.SamOptions, xp) -> Step:
  """points, boxes, use_box: each mask's point (a pixel of its decoded mask,
  stream POINTS; the dataset's own point for a vanished mask), its jittered
  box (stream BOXES) and, for 'keras_hub', which of the two prompts it
  (stream PROMPTS)."""
  keras_hub = opts.layout == 'keras_hub'
  stride = opts.image_size / opts.mask_size
  # 'keras_hub': SAM's pixel-index convention (its prompt encoder adds 0.5).
  offset = 0.5 if keras_hub else 0.0

  def step(f):
    index = f['index']
    _, _, scale = geometry.resized_size(f['height'], f['width'],
                                        opts.image_size, xp)
    scale = xp.cast(scale, 'float32')
    given = xp.cast(xp.reshape(f['point_coords'], [-1, 2]), 'float32') * scale
    row, col = point_pixels(f['masks'], f['row_counts'],
                            _key(f, sampling.POINTS, xp), index, xp)
    py = (xp.cast(row, 'float32') + 0.5) * stride - offset
    px = (xp.cast(col, 'float32') + 0.5) * stride - offset
    points = xp.where(f['nonempty'][:, None], xp.stack([px, py], axis=1),
                      given)
    frame_h = xp.cast(f['height'], 'float32') * scale
    frame_w = xp.cast(f['width'], 'float32') * scale
    boxes = jittered_boxes(f['bbox'], frame_h, frame_w,
                           _key(f, sampling.BOXES, xp), index, opts, xp)
    out = {**f, 'points': points, 'boxes': boxes}
    if keras_hub:
      out['use_box'] = _use_box(_key(f, sampling.PROMPTS, xp), index,
                                opts.prompt_kind, xp)
    return out

  return step


def resize_image(opts: sam_layouts.SamOptions,
                 decoder: ImageDecoder) -> Step:
  """image: the decoded image, its long side S."""

  def step(f):
    return {**f, 'image': decoder(f['content'], f['height'], f['width'],
                                  opts.image_size)}

  return step


def _layout_image(image: Any, opts: sam_layouts.SamOptions, xp) -> Any:
  """float32 [S, S, 3]: normalized and padded for the layout."""
  if opts.layout == 'sam':
    return xp.normalize_pad(image, sam_layouts.PIXEL_MEAN,
                            sam_layouts.PIXEL_STD, opts.image_size,
                            (0.0, 0.0, 0.0))
  return xp.normalize_pad(image, (0.0, 0.0, 0.0), (255.0, 255.0, 255.0),
                          opts.image_size, sam_layouts.KERAS_HUB_PAD)


def layout(opts: sam_layouts.SamOptions, xp) -> Step:
  """(inputs, targets, sample_weight) in the layout of `opts`
  (`sam_layouts`), padded to K rows."""
  k = opts.num_masks

  def step(f):
    weights = xp.pad_rows(xp.cast(f['nonempty'], 'float32'), k)
    image = _layout_image(f['image'], opts, xp)
    points, boxes = f['points'], f['boxes']
    if opts.layout == 'sam':
      labels = xp.ones([xp.size(f['index']), 1], 'int32')
      inputs = {
          'image': image,
          'points': xp.pad_rows(points, k)[:, None],
          'point_labels': xp.pad_rows(labels, k, -1),
          'boxes': xp.pad_rows(boxes, k),
      }
      return inputs, f['targets'], weights
    use_box = f['use_box']
    labels = xp.where(use_box, xp.const(-1.0, 'float32'),
                      xp.const(1.0, 'float32'))[:, None]
    points = xp.where(use_box[:, None], xp.const(0.0, 'float32'), points)
    inputs = {
        'images': image,
        'points': xp.pad_rows(points, k)[:, None],
        'labels': xp.pad_rows(labels, k, -1),
        'boxes': xp.reshape(xp.pad_rows(boxes, k), [k, 1, 2, 2]),
    }
    return inputs, f['targets'], weights

  return step

