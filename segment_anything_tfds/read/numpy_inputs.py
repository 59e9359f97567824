"""SAM training inputs in numpy, for JAX (Grain) and PyTorch.

The numpy twin of `sam_inputs`: `to_sam_inputs_np` takes the same options and
returns the same layouts (`sam_layouts`). With the same seed it picks the same
masks, points, prompt kinds and box jitter (`sampling`), and its targets are
bit for bit those of the tf.data path. With `fast_jpeg` (the default) so is
the image wherever PIL's libjpeg decodes the JPEG to the same pixels as
TensorFlow's; without it, the pixels differ slightly (PIL's resizer).

* Masks: only the sampled ones, decoded by C straight at the target size
  with the tf.data path's sampling rule (`decode_masks_np`), written
  straight into the float32 targets.
* Image: PIL, with JPEG draft mode (libjpeg's DCT scaling, as `fast_jpeg`
  does in the tf.data path), then TF's area shrink in C (`resize_area_np`);
  without `fast_jpeg`, PIL's bilinear (antialiased) resize.

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
pillow); PyTorch users need ``[pytorch]`` and their own torch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds import machine
from segment_anything_tfds.prepare import records
from segment_anything_tfds.read import backend
from segment_anything_tfds.read import geometry
from segment_anything_tfds.read import sam_layouts
from segment_anything_tfds.read import sam_steps
from segment_anything_tfds.read import sampling

__all__ = ['to_sam_inputs_np', 'SamTransform', 'SamDataset',
           'load_sam_data_source', 'grain_loader', 'nearest_indices_np',
           'decode_masks_np', 'resize_area_np']

try:  # The C decoder (setup.py builds it); rle.decode if not built.
  from segment_anything_tfds import _rle  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - exercised where the build failed.
  _rle = None

NUMPY = backend.NUMPY
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


# ----------------------------------------------------------------- geometry


def resized_size_np(height: int, width: int,
                    long_side: int) -> tuple[int, int, float]:
  """(new_h, new_w, scale) of `geometry.resized_size`, as Python numbers."""
  new_h, new_w, scale = geometry.resized_size(height, width, long_side)
  return int(new_h), int(new_w), float(scale)


def nearest_indices_np(in_size: int, out_size: int) -> np.ndarray:
  """`rle.nearest_indices` in numpy: the rows/columns TF's nearest resize
  samples (`geometry.nearest_indices`)."""
  return geometry.nearest_indices(in_size, out_size)


def decode_masks_np(counts: Sequence[bytes | str], height: int, width: int,
                    output_size: tuple[int, int], *,
                    out: np.ndarray | None = None) -> np.ndarray:
  """Masks decoded straight at `output_size`, without the full masks.

  Exactly ``rle.decode(counts, (height, width), output_size)``: the same
  sampling rule (`geometry.nearest_indices`), bit for bit, and the same
  strings refused. In C (`_rle.decode`: the cost is the runs plus the ones
  written); where the extension is not built, by `rle.decode` run eagerly.

  Args:
    counts: N COCO RLE strings (bytes or str) of height x width masks.
    height: the masks' height.
    width: the masks' width.
    output_size: (h, w).
    out: where to write: zeros, uint8 or float32, of shape [N, h, w] (a
      view, e.g. of zero-padded targets, is fine). None: a new uint8 array.

  Returns:
    `out`, or a new uint8 [N, h, w] array; values 0/1.

  Raises:
    errors.BadRecordError: a string that does not decode at this size
      ('counts[i] ...', saying what is wrong as the build-time check says
      it), or a non-empty output_size for masks without pixels.
  """
  out_h, out_w = (int(v) for v in output_size)
  if out is None:
    out = np.zeros((len(counts), out_h, out_w), np.uint8)
  found = _decode_into(counts, height, width, out)
  if found is not None:
    i, problem = found
    raise errors.BadRecordError(problem if i is None else
                                f'counts[{i}] {problem}')
  return out


def _decode_into(counts, height: int, width: int, out: np.ndarray
                 ) -> tuple[int | None, str] | None:
  """Decodes into `out` [N, h, w]; the first bad string's (index, what is
  wrong), (None, what is wrong) for the call, or None."""
  if not len(counts):
    return None
  if _rle is None:
    return _decode_into_tf(counts, height, width, out)
  rows = geometry.nearest_indices(height, out.shape[1])
  cols = geometry.nearest_indices(width, out.shape[2])
  try:
    verdict = _rle.decode(counts, height, width, rows, cols, out)
  except ValueError as e:  # An empty mask asked at a non-empty size.
    return None, str(e)
  if verdict is None:
    return None
  i, code, value = verdict
  return i, records._rle_problem(code, value, height, width)  # pylint: disable=protected-access


def _decode_into_tf(counts, height: int, width: int, out: np.ndarray):
  """`_decode_into` by `rle.decode`, eagerly (without the C extension)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.read import rle  # pylint: disable=g-import-not-at-top
  counts = [c.encode('utf-8', 'surrogatepass') if isinstance(c, str)
            else bytes(c) for c in counts]
  try:
    masks = rle.decode(counts, (height, width), output_size=out.shape[1:])
  except tf.errors.InvalidArgumentError as e:
    # A failed tf.debugging.Assert prints its data as [a] [b] ...
    found = re.search(r'assertion failed: (.*)', e.message)
    if found is None:
      return None, e.message.split('\n')[0]
    return None, ' '.join(re.findall(r'\[(.*?)\](?= \[|$)', found.group(1)))
  out[...] = masks.numpy()
  return None


def _decode_targets(features, mask_hw, padded):
  """`sam_steps.MaskDecoder`: the masks written straight into zero-padded
  float32 targets (no other copy of them)."""
  mask_h, mask_w = (int(v) for v in mask_hw)
  num_masks, mask_size = padded
  counts = features['counts']
  targets = np.zeros((num_masks, mask_size, mask_size), np.float32)
  masks = targets[:len(counts), :mask_h, :mask_w]
  found = _decode_into(counts, features['height'], features['width'], masks)
  if found is not None:
    i, problem = found
    where = ('its sampled masks:' if i is None else
             f'annotations[{features["index"][i]}].segmentation.counts')
    raise errors.BadRecordError(
        f'image {features["image_id"]}: {where} {problem}')
  return masks, targets


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


def _read(seed: int | None):
  """The `sam_steps` read step of a numpy `segment_anything` example."""

  def read(example):
    image, ann = example['image'], example['annotations']
    return {
        'height': int(image['height']),
        'width': int(image['width']),
        'image_id': int(image.get('image_id', 0)),
        'seed': NUMPY.random_seed() if seed is None else seed,
        'content': image['content'],
        'area': _leaf(ann['area'], np.float64),
        'predicted_iou': _leaf(ann['predicted_iou'], np.float64),
        'stability_score': _leaf(ann['stability_score'], np.float64),
        'counts': _counts(ann['segmentation']['counts']),
        'bbox': _leaf(ann['bbox'], np.float32).reshape(-1, 4),
        'point_coords': _leaf(ann['point_coords']).reshape(-1, 2),
    }

  return read


def _decoded_image_np(content: Any, height: int, width: int, image_size: int,
                      fast_jpeg: bool):
  """A PIL RGB image: `sam_inputs._decoded_image` in PIL (libjpeg with the
  same DCT scaling, `geometry.jpeg_scale`, and the same IDCT: the same
  pixels)."""
  image_lib = _pil()
  if not isinstance(content, (bytes, np.bytes_)):
    return image_lib.fromarray(np.asarray(content, np.uint8)).convert('RGB')
  image = image_lib.open(io.BytesIO(bytes(content)))
  if fast_jpeg and image.format == 'JPEG':
    ratio = geometry.JPEG_RATIOS[int(geometry.jpeg_scale(height, width,
                                                          image_size))]
    image.draft('RGB', (max(width // ratio, 1), max(height // ratio, 1)))
  return image if image.mode == 'RGB' else image.convert('RGB')


def _resized_image_np(content: Any, height: int, width: int, image_size: int,
                      fast_jpeg: bool) -> np.ndarray:
  """[new_h, new_w, 3]: `sam_inputs._resized_image` over PIL's decode.

  The fast path's area shrink is TF's own (`resize_area_np`: float32, the
  same values); otherwise PIL's antialiased bilinear resize (uint8: it
  rounds to whole grey levels).
  """
  image = _decoded_image_np(content, height, width, image_size, fast_jpeg)
  new_h, new_w, _ = resized_size_np(height, width, image_size)
  if fast_jpeg and geometry.shrinks(image.size[1], image.size[0], new_h,
                                    new_w):
    return resize_area_np(np.asarray(image), new_h, new_w)
  if image.size != (new_w, new_h):
    image = image.resize((new_w, new_h), _pil().BILINEAR)
  return np.asarray(image)


def resize_area_np(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 [height, width, C]: ``tf.image.resize(image, (height, width),
  method='area')`` of a uint8 [h, w, C] image, bit for bit.

  In C (`_rle.resize_area`, the kernel's arithmetic in its order); where the
  extension is not built, by TensorFlow's kernel run eagerly.
  """
  image = np.ascontiguousarray(image, np.uint8)
  if _rle is None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.image.resize(image, (height, width), method='area').numpy()
  out = np.empty((height, width, image.shape[2]), np.float32)
  _rle.resize_area(image, out)
  return out


def to_sam_inputs_np(
    example: Mapping[str, Any],
    *,
    fast_jpeg: bool = True,
    **options: Any,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
  """One `segment_anything` example -> (inputs, targets, sample_weight).

  The numpy twin of `sam_inputs.to_sam_inputs`: the same `sam_steps` (same
  options and layouts, see `sam_layouts`), over numpy.

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

  def steps(self) -> list[sam_steps.Step]:
    """The `sam_steps` this transform runs, over numpy."""
    fast_jpeg = self.fast_jpeg

    def image_decoder(content, height, width, image_size):
      return _resized_image_np(content, height, width, image_size, fast_jpeg)

    return sam_steps.steps(self.options, NUMPY, read=_read(self.options.seed),
                           mask_decoder=_decode_targets,
                           image_decoder=image_decoder)

  def __call__(self, example: Mapping[str, Any]):
    return sam_steps.compose(*self.steps())(example)


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
    threads: threads that transform the examples of a batch
      (`__getitems__`, which PyTorch's DataLoader calls; JPEG decoding and
      resizing release the GIL). None: one per core in the process that
      made the dataset, one in any other (DataLoader worker processes
      already run side by side; a dataset pickled into another main
      process, e.g. by ``torch.multiprocessing.spawn``, should set it).
    **options: `sam_layouts.SamOptions` fields.
  """

  def __init__(self, source: Any, *, validation_fraction: float | None = None,
               validation: bool = False,
               image_ids: Sequence[int] | None = None, fast_jpeg: bool = True,
               threads: int | None = None, **options: Any):
    if threads is not None and threads < 1:
      raise ValueError(f'threads must be at least 1, got {threads}.')
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
    self._threads = threads
    self._made_in = os.getpid()

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
    """Batched read (PyTorch's DataLoader uses it when present); the
    examples are transformed by `threads` threads, in order."""
    rows = [self._source_index(i) for i in indices]
    examples = self._read(rows)
    pool = self._transform_pool() if len(examples) > 1 else None
    if pool is None:
      return [self.transform(ex) for ex in examples]
    return list(pool.map(self.transform, examples))

  def _transform_pool(self) -> concurrent.futures.ThreadPoolExecutor | None:
    """The threads for `__getitems__` (None: one thread): this process's
    pool of that many, shared by every `SamDataset` in it."""
    threads = self._threads
    if threads is None:
      threads = machine.cores() if os.getpid() == self._made_in else 1
    if threads <= 1:
      return None
    with _POOLS_LOCK:  # A forked child starts with none (below).
      if threads not in _POOLS:
        _POOLS[threads] = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix='sam-transform')
      return _POOLS[threads]


# threads -> this process's transform threads of `SamDataset.__getitems__`.
_POOLS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
  """A forked child has none of its parent's threads, and a lock a thread
  held at the fork would stay held: it starts afresh."""
  global _POOLS_LOCK
  _POOLS_LOCK = threading.Lock()
  _POOLS.clear()


if hasattr(os, 'register_at_fork'):
  os.register_at_fork(after_in_child=_after_fork_in_child)


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
                 operations: Sequence[Callable[..., Any]] = (),
                 read_threads: int | None = None):
  """A ``grain.DataLoader`` of numpy batches from a `SamDataset`.

  Grain takes the dataset for a data source, whose reads are cheap: by
  default it reads with 16 threads and 500 records ahead, which for SAM
  inputs (about 30 MB each at 1024^2 with 64 masks) means 15 GB and 16
  threads fighting over the GIL. Here the transform reads `read_threads`
  records at a time and holds about two batches ahead, per process.

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
    read_threads: threads transforming records in each process; None: one
      per core in this process (worker_count=0; JPEG decoding and resizing
      release the GIL), one per worker process otherwise.

  Returns:
    A ``grain.DataLoader``; iterate it for (inputs, targets, sample_weight)
    batches of numpy arrays.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if read_threads is None:
    read_threads = 1 if worker_count else machine.cores()
  read_options = grain.ReadOptions(
      num_threads=read_threads,
      prefetch_buffer_size=max(2 * batch_size, read_threads))
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
      worker_count=worker_count, read_options=read_options)
