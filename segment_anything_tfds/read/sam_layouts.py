"""SAM training inputs: the options and the two layouts, stated once.

Two paths make these inputs from a `segment_anything` example: the tf.data
path (`sam_inputs.to_sam_inputs`, TensorFlow ops only) and the numpy path
(`numpy_inputs.to_sam_inputs_np`, for Grain and PyTorch). Both take the
options of `SamOptions` and run the same steps (`sam_steps`, written once
over numpy and TF) to ``(inputs, targets, sample_weight)`` for one image.
With the same seed they give the same masks, prompts and weights, bit for
bit; only the image pixels may differ slightly (another resizer).

What both paths do
------------------
1. Filter the masks: keep those with predicted_iou >= `min_predicted_iou`,
   stability_score >= `min_stability_score` and area / (height * width) in
   [`min_area_fraction`, `max_area_fraction`].
2. Sample up to K = `num_masks` of them without replacement (`sampling`,
   stream SAMPLE) and decode only those, straight at the resolution where
   the long side is M = `mask_size` (exactly a 'nearest' resize of the full
   mask), zero-padded at the bottom and right to M x M. Target pixel (y, x)
   covers image pixels [y * S/M, (y + 1) * S/M), S = `image_size`.
3. Resize the image so its long side is S and pad it at the bottom and
   right to S x S. With `fast_jpeg` (the default), a JPEG is decoded with
   DCT scaling and shrunk by the area rule; otherwise (or to grow a small
   image) the resize is bilinear, antialiased.
4. One point per mask: a pixel of the decoded mask, uniformly (stream
   POINTS: the r-th mask pixel in row-major order, r = below(count)). A mask
   that vanishes at M keeps the dataset's own point, scaled.
5. One box per mask: the annotation's box scaled to the resized image,
   jittered as in SAM when `box_jitter` > 0: noise of std `box_jitter` x the
   box side (bell-shaped, see `sampling`), clipped to `max_box_jitter`
   pixels, then the box is clipped to the resized image.
6. sample_weight: 1 for a real mask, 0 for padding (fewer than K usable
   masks) and for masks that vanish at M.

Layout 'sam' (the default)
--------------------------
* ``inputs['image']``: float32 [S, S, 3], normalized with the ImageNet
  mean/std on the 0..255 scale (`PIXEL_MEAN`, `PIXEL_STD`), zero-padded.
* ``inputs['points']``: float32 [K, 1, 2], (x, y): the centre of the chosen
  mask pixel in resized-image coordinates, ((j + 0.5) * S/M, (i + 0.5) * S/M).
* ``inputs['point_labels']``: int32 [K, 1]: 1 for real masks, -1 for padding.
* ``inputs['boxes']``: float32 [K, 4], (x0, y0, x1, y1).
* ``targets``: float32 [K, M, M]; ``sample_weight``: float32 [K].

Layout 'keras_hub': what KerasHub's SAM takes
---------------------------------------------
For ``keras_hub.models.SAMImageSegmenter`` / `keras_sam.SAMTrainer`, one
prompt per row. M defaults to S / 4, the size of SAM's mask outputs.

* ``inputs['images']``: float32 [S, S, 3], RGB / 255, as KerasHub's
  ``SAMImageConverter`` makes them (scale 1/255; the ``ViTDetBackbone``
  normalizes with the ImageNet mean/std itself). Padded with the mean colour
  (`PIXEL_MEAN` / 255), which that normalization maps to 0: SAM pads after
  normalizing.
* ``inputs['points']``: float32 [K, 1, 2], (x, y) in input pixels, in SAM's
  pixel-index convention (its prompt encoder adds 0.5): the chosen mask
  pixel's centre is ((j + 0.5) * S/M - 0.5, (i + 0.5) * S/M - 0.5).
* ``inputs['labels']``: float32 [K, 1], SAM's convention: 1 (foreground)
  when the mask is prompted by its point; -1 (no point) when it is prompted
  by its box only, and for padding rows. `prompt` chooses: 'point' (every
  mask by its point), 'box' (by its box) or 'mixed' (SAM's training: point
  or box with probability 1/2, stream PROMPTS). This sampler makes no
  background (0) points.
* ``inputs['boxes']``: float32 [K, 1, 2, 2], ((x0, y0), (x1, y1)), the
  jittered box of every real mask (zeros for padding). A row uses it when its
  label is -1.
* ``targets``: float32 [K, M, M]; ``sample_weight``: float32 [K].

All randomness (which masks, points, prompt kinds, jitter) is a function of
``(seed, image_id)`` (`sampling`): reproducible under any order, sharding
or parallelism, and the same in both paths. ``seed=None`` draws a fresh
random seed for every image.
"""

from __future__ import annotations

import dataclasses

__all__ = ['SamOptions', 'LAYOUTS', 'PROMPTS', 'PIXEL_MEAN', 'PIXEL_STD',
           'KERAS_HUB_PAD']

LAYOUTS = ('sam', 'keras_hub')
PROMPTS = ('point', 'box', 'mixed')
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# The 'keras_hub' padding: the mean colour on the 0..1 scale.
KERAS_HUB_PAD = tuple(m / 255.0 for m in PIXEL_MEAN)


@dataclasses.dataclass(frozen=True)
class SamOptions:
  """Options of the SAM training inputs (see the module docstring).

  Attributes:
    image_size: S, the side of the square model input.
    mask_size: M, the side of the square mask targets; None: S // 4.
    num_masks: K, masks per image (padded with zero weight when fewer).
    min_predicted_iou: keep masks with predicted_iou >= this.
    min_stability_score: keep masks with stability_score >= this.
    min_area_fraction: keep masks with area / (height * width) >= this.
    max_area_fraction: keep masks with area / (height * width) <= this.
    box_jitter: std of the box noise, as a fraction of the box side; 0 for
      exact boxes. SAM uses 0.1.
    max_box_jitter: clip the box noise to this many pixels. SAM uses 20.
    seed: the sample depends only on (seed, image_id); None: random.
    layout: 'sam' or 'keras_hub'.
    prompt: 'keras_hub' layout only: 'point', 'box' or 'mixed' (None:
      'mixed').
  """

  image_size: int = 1024
  mask_size: int | None = None
  num_masks: int = 64
  min_predicted_iou: float = 0.0
  min_stability_score: float = 0.0
  min_area_fraction: float = 0.0
  max_area_fraction: float = 1.0
  box_jitter: float = 0.1
  max_box_jitter: float = 20.0
  seed: int | None = None
  layout: str = 'sam'
  prompt: str | None = None

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f'SAM inputs: layout must be one of {LAYOUTS}, got'
                       f' {self.layout!r}.')
    if self.prompt is not None and self.layout != 'keras_hub':
      raise ValueError("SAM inputs: prompt applies to layout='keras_hub' only"
                       " (layout 'sam' always gives both a point and a box).")
    if self.prompt is not None and self.prompt not in PROMPTS:
      raise ValueError(f'SAM inputs: prompt must be one of {PROMPTS}, got'
                       f' {self.prompt!r}.')
    if self.mask_size is None:
      object.__setattr__(self, 'mask_size', self.image_size // 4)
    if self.image_size <= 0 or self.mask_size <= 0 or self.num_masks < 0:
      raise ValueError('SAM inputs: image_size and mask_size must be positive'
                       f' and num_masks >= 0, got {self.image_size},'
                       f' {self.mask_size}, {self.num_masks}.')
    if self.box_jitter < 0 or self.max_box_jitter < 0:
      raise ValueError('SAM inputs: box_jitter and max_box_jitter must be >='
                       f' 0, got {self.box_jitter}, {self.max_box_jitter}.')

  @property
  def prompt_kind(self) -> str:
    """The effective prompt choice of the 'keras_hub' layout."""
    return self.prompt or 'mixed'

  @classmethod
  def names(cls) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))
