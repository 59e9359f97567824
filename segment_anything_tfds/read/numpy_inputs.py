"""SAM training inputs in numpy, for JAX (Grain) and PyTorch.

The numpy twin of `sam_inputs`: `to_sam_inputs_np` takes the same options and
returns the same layouts (`sam_layouts`). With the same seed it picks the same
masks, points, prompt kinds and box jitter (`sampling`), and its targets are
bit for bit those of the tf.data path. Only the image pixels may differ
slightly, from another JPEG decoder and resizer (PIL).

* Masks: ``pycocotools.mask.decode`` of the sampled masks only, in chunks,
  then straight to the target size by indexing the rows and columns that
  TF's 'nearest' resize samples (`nearest_indices_np`).
* Image: PIL, with JPEG draft mode (libjpeg's DCT scaling, as `fast_jpeg`
  does in the tf.data path), then a bilinear (antialiased) resize.

No TensorFlow, torch, grain or JAX import: the data come from a prepared
ArrayRecord build through ``tfds.data_source``, which reads without
TensorFlow.

* `SamDataset`: a map-style dataset (``__len__``, ``__getitem__``,
  ``__getitems__``; it pickles to worker processes). ``torch.utils.data.
  DataLoader`` takes it as is; Grain takes it as a data source.
* `grain_loader`: a ``grain.DataLoader`` of numpy batches, shuffled per
  epoch, with worker processes.
* Holdout: ``validation_fraction`` splits by image id with the same rule as
  the tf.data path (`sampling.in_holdout_np`).

Needs ``pip install segment_anything_tfds[grain]`` (grain, array_record,
pycocotools, pillow); PyTorch users need ``[pytorch]`` and their own torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sampling

__all__ = ['to_sam_inputs_np', 'SamTransform', 'SamDataset',
           'load_sam_data_source', 'grain_loader', 'nearest_indices_np',
           'decode_masks_np']

# Masks decoded at full resolution at once (memory: chunk x H x W bytes).
_CHUNK = 16
# The process that read ArrayRecord records through a SamDataset. A fork of
# it inherits array_record's C++ state and crashes (SIGSEGV) when it reads.
_READ_PID: int | None = None


def _pil():
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('segment_anything_tfds.read.numpy_inputs needs Pillow: pip'
                      ' install segment_anything_tfds[grain]') from e
  return Image


def _mask_utils():
  try:
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('segment_anything_tfds.read.numpy_inputs needs pycocotools:'
                      ' pip install segment_anything_tfds[grain]') from e
  return mask_utils


# ------------------------------------------------------------ geometry twins


def resized_size_np(height: int, width: int,
                    long_side: int) -> tuple[int, int, float]:
  """(new_h, new_w, scale), as `sam_inputs._resized_size` (float64)."""
  scale = long_side / max(float(height), float(width), 1.0)
  new_h = int(np.floor(float(height) * scale + 0.5))
  new_w = int(np.floor(float(width) * scale + 0.5))
  return max(new_h, 1), max(new_w, 1), scale


def nearest_indices_np(in_size: int, out_size: int) -> np.ndarray:
  """`rle.nearest_indices` in numpy: the rows/columns TF's nearest resize
  samples, ``min(floor((i + 0.5) * (in / out)), in - 1)`` in float32."""
  scale = np.float32(in_size) / np.float32(max(out_size, 1))
  x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
  return np.clip(np.floor(x).astype(np.int64), 0, max(in_size - 1, 0))


def decode_masks_np(counts: Sequence[bytes], height: int, width: int,
                    output_size: tuple[int, int]) -> np.ndarray:
  """uint8 [N, h, w]: pycocotools decode, then nearest to output_size.

  Exactly ``rle.decode(counts, (height, width), output_size)``. Decodes
  `_CHUNK` masks at a time at full resolution.
  """
  out_h, out_w = output_size
  out = np.zeros((len(counts), out_h, out_w), np.uint8)
  if not len(counts):
    return out
  mask_utils = _mask_utils()
  rows = nearest_indices_np(height, out_h)
  cols = nearest_indices_np(width, out_w)
  for start in range(0, len(counts), _CHUNK):
    chunk = [{'size': [int(height), int(width)], 'counts': bytes(c)}
             for c in counts[start:start + _CHUNK]]
    full = mask_utils.decode(chunk)  # [H, W, n], Fortran order.
    out[start:start + len(chunk)] = full[np.ix_(rows, cols)].transpose(2, 0, 1)
  return out


# ------------------------------------------------------------------ example


def _leaf(value: Any, dtype=None) -> np.ndarray:
  """tfds.data_source gives lists of scalars/arrays where tf.data gives
  arrays: one numpy array either way."""
  if isinstance(value, list):
    value = [np.asarray(v) for v in value]
    if not value:
      return np.zeros((0,), dtype or np.float64)
    value = np.stack(value)
  return np.asarray(value, dtype)


def _counts(value: Any) -> list[bytes]:
  return [c if isinstance(c, bytes) else bytes(c) for c in
          (value.tolist() if isinstance(value, np.ndarray) else list(value))]


def _keep_np(ann: Mapping[str, Any], height: int, width: int,
             opts: sam_layouts.SamOptions) -> np.ndarray:
  area_fraction = _leaf(ann['area'], np.float64) / np.float64(
      max(height * width, 1))
  keep = (_leaf(ann['predicted_iou'], np.float64) >= opts.min_predicted_iou)
  keep &= (_leaf(ann['stability_score'], np.float64)
           >= opts.min_stability_score)
  keep &= area_fraction >= opts.min_area_fraction
  keep &= area_fraction <= opts.max_area_fraction
  return keep.reshape(-1)


def _point_pixels_np(masks: np.ndarray, key: np.ndarray,
                     index: np.ndarray) -> np.ndarray:
  """The r-th mask pixel (row-major), r = below(count): `_point_pixels`."""
  k, _, w = masks.shape
  m = (masks > 0).astype(np.int64)
  row_counts = m.sum(axis=2)  # [k, h]
  row_cum = np.cumsum(row_counts, axis=1)
  r = sampling.below_np(key, index, row_cum[:, -1])
  row = np.argmax(row_cum > r[:, None], axis=1)
  rows = np.arange(k)
  before = (row_cum - row_counts)[rows, row]
  line = np.cumsum(m[rows, row], axis=1)  # [k, w]
  col = np.argmax(line > (r - before)[:, None], axis=1)
  return (row * w + col).astype(np.int32)


def _points_np(pixel: np.ndarray, mask_w: int, nonempty: np.ndarray,
               given: np.ndarray, stride: float, offset: float) -> np.ndarray:
  f32 = np.float32
  py = ((pixel // mask_w).astype(f32) + f32(0.5)) * f32(stride) - f32(offset)
  px = ((pixel % mask_w).astype(f32) + f32(0.5)) * f32(stride) - f32(offset)
  return np.where(nonempty[:, None], np.stack([px, py], axis=1),
                  given).astype(f32)


def _boxes_np(bbox: np.ndarray, frame_h: np.float32, frame_w: np.float32,
              key: np.ndarray, index: np.ndarray,
              opts: sam_layouts.SamOptions) -> np.ndarray:
  f32 = np.float32
  ymin, xmin, ymax, xmax = bbox.astype(f32).reshape(-1, 4).T
  boxes = np.stack([xmin * frame_w, ymin * frame_h, xmax * frame_w,
                    ymax * frame_h], axis=1)
  if opts.box_jitter > 0:
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]],
                     axis=1)
    sides = np.tile(sides, [1, 2])
    counter = index.astype(np.int64)[:, None] * 4 + np.arange(4)
    noise = sampling.bell_np(key, counter).astype(f32)
    noise = noise * f32(opts.box_jitter) * sides
    boxes = boxes + np.clip(noise, f32(-opts.max_box_jitter),
                            f32(opts.max_box_jitter))
  limit = np.array([frame_w, frame_h, frame_w, frame_h], f32)
  return np.clip(boxes, f32(0.0), limit).astype(f32)


def _use_box_np(key: np.ndarray, index: np.ndarray, prompt: str) -> np.ndarray:
  if prompt == 'point':
    return np.zeros(index.shape, bool)
  if prompt == 'box':
    return np.ones(index.shape, bool)
  return sampling.below_np(key, index, 2) == 1


def _pad_rows(a: np.ndarray, num: int, value: float = 0) -> np.ndarray:
  return np.pad(a, [(0, num - len(a))] + [(0, 0)] * (a.ndim - 1),
                constant_values=value)


def _resized_image_np(content: Any, height: int, width: int, image_size: int,
                      fast_jpeg: bool) -> np.ndarray:
  """float32 [new_h, new_w, 3], 0..255: PIL's twin of `_resized_image`."""
  image_lib = _pil()
  new_h, new_w, _ = resized_size_np(height, width, image_size)
  if isinstance(content, (bytes, np.bytes_)):
    image = image_lib.open(io.BytesIO(bytes(content)))
    if fast_jpeg and image.format == 'JPEG':
      # The DCT scale the tf.data path picks: the largest of 1/2, 1/4, 1/8
      # keeping the long side >= image_size.
      ratio = max([1] + [r for r in (2, 4, 8)
                         if max(height, width) >= r * image_size])
      image.draft('RGB', (max(width // ratio, 1), max(height // ratio, 1)))
    image = image.convert('RGB')
  else:
    image = image_lib.fromarray(np.asarray(content, np.uint8)).convert('RGB')
  if image.size != (new_w, new_h):
    image = image.resize((new_w, new_h), image_lib.BILINEAR)
  return np.asarray(image, np.float32)


def _layout_image_np(image: np.ndarray, image_size: int,
                     layout: str) -> np.ndarray:
  new_h, new_w = image.shape[:2]
  if layout == 'sam':
    out = np.zeros((image_size, image_size, 3), np.float32)
    out[:new_h, :new_w] = ((image - np.float32(sam_layouts.PIXEL_MEAN))
                           / np.float32(sam_layouts.PIXEL_STD))
  else:
    out = np.empty((image_size, image_size, 3), np.float32)
    out[:] = np.float32(sam_layouts.KERAS_HUB_PAD)
    out[:new_h, :new_w] = image / np.float32(255.0)
  return out


def to_sam_inputs_np(
    example: Mapping[str, Any],
    *,
    fast_jpeg: bool = True,
    **options: Any,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """One `segment_anything` example -> (inputs, targets, sample_weight).

  The numpy twin of `sam_inputs.to_sam_inputs` (same options and layouts,
  see `sam_layouts`; masks are always decoded by pycocotools).

  Args:
    example: a `segment_anything` example as ``tfds.data_source`` gives it
      (lists of per-mask values) or as ``tfds.as_numpy`` gives it (arrays);
      'image/content' is the JPEG bytes or the decoded uint8 image.
    fast_jpeg: decode JPEGs with DCT scaling, as in the tf.data path.
    **options: the fields of `sam_layouts.SamOptions` (image_size,
      mask_size, num_masks, filters, box_jitter, seed, layout, prompt).

  Returns:
    numpy (inputs, targets, sample_weight) of `sam_layouts`.
  """
  return SamTransform(fast_jpeg=fast_jpeg, **options)(example)


@dataclasses.dataclass(frozen=True, init=False)
class SamTransform:
  """A picklable example -> (inputs, targets, sample_weight) function.

  `to_sam_inputs_np` with its options bound; a Grain ``MapTransform``-like
  callable and what `SamDataset` applies.
  """

  options: sam_layouts.SamOptions
  fast_jpeg: bool

  def __init__(self, *, fast_jpeg: bool = True, **options: Any):
    unknown = set(options) - sam_layouts.SamOptions.names()
    if unknown:
      raise TypeError(f'SamTransform: unknown options {sorted(unknown)}')
    object.__setattr__(self, 'options', sam_layouts.SamOptions(**options))
    object.__setattr__(self, 'fast_jpeg', fast_jpeg)

  def __call__(self, example: Mapping[str, Any]):
    opts = self.options
    image, ann = example['image'], example['annotations']
    height, width = int(image['height']), int(image['width'])
    seed = opts.seed
    if seed is None:
      seed = int(np.random.default_rng().integers(0, 2**62))
    image_id = int(image.get('image_id', 0))

    def key(stream):
      return sampling.key_np(seed, image_id, stream)

    index = sampling.choose_np(_keep_np(ann, height, width, opts),
                               opts.num_masks, key(sampling.SAMPLE))
    counts = _counts(ann['segmentation']['counts'])
    mask_h, mask_w, _ = resized_size_np(height, width, opts.mask_size)
    masks = decode_masks_np([counts[i] for i in index], height, width,
                            (mask_h, mask_w))
    nonempty = masks.reshape(len(masks), mask_h * mask_w).any(axis=1)

    _, _, scale = resized_size_np(height, width, opts.image_size)
    scale = np.float32(scale)
    given = _leaf(ann['point_coords']).reshape(-1, 1, 2)[index]
    given = given.astype(np.float32)[:, 0, :] * scale
    keras_hub = opts.layout == 'keras_hub'
    points = _points_np(_point_pixels_np(masks, key(sampling.POINTS), index),
                        mask_w, nonempty, given,
                        stride=opts.image_size / opts.mask_size,
                        offset=0.5 if keras_hub else 0.0)
    frame_h = np.float32(height) * scale
    frame_w = np.float32(width) * scale
    bbox = _leaf(ann['bbox'], np.float32).reshape(-1, 4)[index]
    boxes = _boxes_np(bbox, frame_h, frame_w, key(sampling.BOXES), index,
                      opts)

    k, m = opts.num_masks, opts.mask_size
    padded = np.zeros((len(masks), m, m), np.float32)
    padded[:, :mask_h, :mask_w] = masks
    targets = _pad_rows(padded, k)
    weights = _pad_rows(nonempty.astype(np.float32), k)
    resized = _resized_image_np(image['content'], height, width,
                                opts.image_size, self.fast_jpeg)
    image_out = _layout_image_np(resized, opts.image_size, opts.layout)
    if not keras_hub:
      inputs = {
          'image': image_out,
          'points': _pad_rows(points, k)[:, None],
          'point_labels': _pad_rows(np.ones((len(index), 1), np.int32), k,
                                    -1),
          'boxes': _pad_rows(boxes, k),
      }
      return inputs, targets, weights
    use_box = _use_box_np(key(sampling.PROMPTS), index, opts.prompt_kind)
    labels = np.where(use_box, np.float32(-1), np.float32(1))[:, None]
    points = np.where(use_box[:, None], np.float32(0), points)
    inputs = {
        'images': image_out,
        'points': _pad_rows(points.astype(np.float32), k)[:, None],
        'labels': _pad_rows(labels.astype(np.float32), k, -1),
        'boxes': _pad_rows(boxes, k).reshape(k, 1, 2, 2),
    }
    return inputs, targets, weights


# ----------------------------------------------------------------- datasets


def _skip_decoding() -> dict[str, Any]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {'image': {'content': tfds.decode.SkipDecoding()}}


def _image_id(example: Mapping[str, Any]) -> int:
  return int(example['image']['image_id'])


class SamDataset:
  """Map-style SAM training inputs over a ``tfds.data_source``.

  ``dataset[i]`` is ``transform(source[indices[i]])``: numpy (inputs,
  targets, sample_weight) in a `sam_layouts` layout. PyTorch's DataLoader
  takes it as is (its default collate stacks the arrays into tensors); Grain
  takes it as a data source (`grain_loader`). It pickles without its open
  source, which each process reopens.

  Args:
    source: a sequence of `segment_anything` examples, e.g.
      ``tfds.data_source(..., decoders=SKIP)`` over an ArrayRecord build;
      or a zero-argument function returning one (called once per process).
    validation_fraction: hold out this fraction of the images by image id
      (`sampling.in_holdout_np`, the same rule as `sam_inputs`); None keeps
      every image. Finding the held-out indices reads every record once
      (no image or mask decoding): cheap for subsets, a full read of the
      data for all of SA-1B, so keep `image_ids()` and pass it back.
    validation: with `validation_fraction`, keep the held-out images
      instead of the others.
    image_ids: the image id of every record of `source`, in order (from an
      earlier `image_ids()`), to skip that read.
    fast_jpeg: JPEG draft mode (DCT scaling), as in the tf.data path.
    **options: `sam_layouts.SamOptions` fields.
  """

  def __init__(self, source: Any, *, validation_fraction: float | None = None,
               validation: bool = False,
               image_ids: Sequence[int] | None = None, fast_jpeg: bool = True,
               **options: Any):
    if validation_fraction is not None and not (
        0.0 <= validation_fraction <= 1.0):
      raise ValueError('validation_fraction must be in [0, 1], got'
                       f' {validation_fraction}.')
    self.transform = SamTransform(fast_jpeg=fast_jpeg, **options)
    self.validation_fraction = validation_fraction
    self.validation = validation
    self._open = source if callable(source) else None
    self._source = None if callable(source) else source
    self._pid = os.getpid()
    self._ids = None if image_ids is None else np.asarray(image_ids,
                                                          np.uint64)
    self._indices = None

  @property
  def source(self) -> Any:
    """The data source, opened on first use in each process.

    A forked process (PyTorch's DataLoader workers) reopens it too: file
    readers inherited across a fork are not safe to use.
    """
    if self._open is not None and (self._source is None
                                   or self._pid != os.getpid()):
      self._source = self._open()
      self._pid = os.getpid()
    return self._source

  def _read(self, rows: Sequence[int]) -> list[Any]:
    """The examples at these source indices."""
    global _READ_PID
    source = self.source
    if _is_array_record(source):
      if _READ_PID not in (None, os.getpid()):
        raise RuntimeError(
            'SamDataset: this process was forked from one that read'
            ' ArrayRecord records, and array_record cannot read after such a'
            ' fork (it would crash). Start workers with spawn or forkserver,'
            " e.g. torch DataLoader(..., multiprocessing_context='spawn');"
            " Grain's workers already do.")
      _READ_PID = os.getpid()
    getitems = getattr(source, '__getitems__', None)
    return list(getitems(rows)) if getitems else [source[i] for i in rows]

  def image_ids(self) -> np.ndarray:
    """uint64 [len(source)]: the image id of every record, in order."""
    if self._ids is None:
      n = len(self.source)
      ids = np.zeros(n, np.uint64)
      for start in range(0, n, 256):
        rows = list(range(start, min(n, start + 256)))
        ids[start:start + len(rows)] = [_image_id(ex) for ex in
                                        self._read(rows)]
      self._ids = ids
    return self._ids

  @property
  def indices(self) -> np.ndarray | None:
    """The source indices kept by the holdout (None: all)."""
    if self.validation_fraction is None:
      return None
    if self._indices is None:
      held = sampling.in_holdout_np(self.image_ids(), self.validation_fraction)
      self._indices = np.flatnonzero(held == self.validation)
    return self._indices

  def __getstate__(self):
    state = dict(self.__dict__)
    if self._open is not None:
      state['_source'] = None  # Reopened in the receiving process.
    return state

  def __len__(self) -> int:
    indices = self.indices
    return len(self.source) if indices is None else len(indices)

  def _source_index(self, index: int) -> int:
    n = len(self)
    index = int(index)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f'index {index} out of range for {n} examples')
    indices = self.indices
    return index if indices is None else int(indices[index])

  def __getitem__(self, index: int):
    return self.transform(self._read([self._source_index(index)])[0])

  def __getitems__(self, indices: Sequence[int]) -> list[Any]:
    """Batched read (PyTorch's DataLoader uses it when present)."""
    rows = [self._source_index(i) for i in indices]
    return [self.transform(ex) for ex in self._read(rows)]


def _is_array_record(source: Any) -> bool:
  kind = type(source)
  return 'array_record' in kind.__module__ or 'ArrayRecord' in kind.__name__


@dataclasses.dataclass(frozen=True)
class _OpenSource:
  """Opens a TFDS data source (picklable, for `SamDataset`)."""

  name: str
  split: str
  data_dir: str | None

  def __call__(self):
    from segment_anything_tfds.read import prepared as reading  # pylint: disable=g-import-not-at-top
    builder = reading.prepared_builder(self.name, data_dir=self.data_dir)
    return builder.as_data_source(split=self.split, decoders=_skip_decoding())


def load_sam_data_source(split: str = 'train', *, data_dir: str | None = None,
                         name: str = 'segment_anything',
                         **kwargs: Any) -> SamDataset:
  """`SamDataset` over ``tfds.data_source(name, split=split, ...)``.

  The numpy counterpart of `sam_inputs.load_sam_dataset`. The dataset must
  have been prepared with ``file_format='array_record'``; `name` may carry a
  config, e.g. ``'segment_anything/first_1'``. JPEGs are read undecoded and
  decoded in the transform. Nothing is downloaded or built: a dataset that
  is not prepared raises `errors.NotPreparedError` saying how to build it.
  """
  return SamDataset(_OpenSource(name, split, data_dir), **kwargs)


def grain_loader(dataset: SamDataset, *, batch_size: int,
                 shuffle: bool = True, seed: int = 0,
                 num_epochs: int | None = 1, worker_count: int = 0,
                 drop_remainder: bool = True, shard_index: int = 0,
                 shard_count: int = 1,
                 operations: Sequence[Callable[..., Any]] = ()):
  """A ``grain.DataLoader`` of numpy batches from a `SamDataset`.

  Args:
    dataset: the `SamDataset` (Grain's data source; the transform runs in
      its ``__getitem__``, inside the workers).
    batch_size: images per batch; arrays gain a leading batch axis.
    shuffle: shuffle the indices, differently each epoch, from `seed`.
    seed: the shuffle seed (the sampling seed is the dataset's `seed`).
    num_epochs: epochs to read; None repeats forever.
    worker_count: Grain worker processes (0: read in this process).
    drop_remainder: drop a last partial batch.
    shard_index: this process's shard (e.g. ``jax.process_index()``).
    shard_count: the number of shards (e.g. ``jax.process_count()``).
    operations: more Grain transforms, applied after batching.

  Returns:
    A ``grain.DataLoader``; iterate it for (inputs, targets, sample_weight)
    batches of numpy arrays.
  """
  import grain  # pylint: disable=g-import-not-at-top
  sampler = grain.samplers.IndexSampler(
      num_records=len(dataset), shuffle=shuffle, seed=seed,
      num_epochs=num_epochs,
      shard_options=grain.sharding.ShardOptions(
          shard_index=shard_index, shard_count=shard_count,
          drop_remainder=True))
  return grain.DataLoader(
      data_source=dataset, sampler=sampler,
      operations=[grain.transforms.Batch(batch_size,
                                         drop_remainder=drop_remainder),
                  *operations],
      worker_count=worker_count)
