"""Decoding SA-1B masks of dataset examples, in tf.data pipelines.

`decode_masks` adds ``example['annotations']['mask']`` (uint8 [K, h, w]) to an
example of the `segment_anything` dataset, decoding only a sampled subset of
the masks, optionally straight at a low resolution. Two backends:

* ``'tf'`` (default): `segment_anything_tfds.read.rle`, pure TensorFlow, fast, works
  under tf.data service and in any graph.
* ``'pycocotools'``: ``pycocotools.mask.decode`` through ``tf.numpy_function``
  (`decode_pycocotools`), the reference implementation; needs
  ``pip install segment_anything_tfds[pycocotools]`` and the Python runtime.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sampling

__all__ = ['decode_masks', 'decode_pycocotools', 'image_id']

_EXTRA = 'pip install segment_anything_tfds[pycocotools]'
BACKENDS = ('tf', 'pycocotools')


def _import_pycocotools():
  try:
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "segment_anything_tfds: backend='pycocotools' needs pycocotools:"
        f' {_EXTRA}') from e
  return mask_utils


def _pycocotools_decode_np(counts: np.ndarray, height: np.ndarray,
                           width: np.ndarray) -> np.ndarray:
  mask_utils = _import_pycocotools()
  height, width = int(height), int(width)
  if counts.size == 0:
    return np.zeros((0, height, width), np.uint8)
  rles = [{'size': [height, width], 'counts': c} for c in counts.tolist()]
  # pycocotools returns a Fortran-ordered [H, W, N] array.
  return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


@tf.autograph.experimental.do_not_convert
def decode_pycocotools(
    counts: tf.Tensor | Sequence[bytes] | bytes,
    size: tf.Tensor | Sequence[int],
    output_size: Sequence[int] | tf.Tensor | None = None,
) -> tf.Tensor:
  """Same contract as `rle.decode`, computed by pycocotools.

  The masks are decoded at full resolution by ``pycocotools.mask.decode`` in a
  ``tf.numpy_function``, then resized with ``tf.image.resize(...,
  method='nearest')`` if `output_size` is given. Reference and backstop: it
  needs the Python runtime (no tf.data service, no SavedModel).

  Args:
    counts: scalar string or string vector [N].
    size: [2] = (height, width) (or equal rows [N, 2]).
    output_size: optional (h, w).

  Returns:
    uint8 [H, W] or [N, H, W] (or (h, w)).
  """
  _import_pycocotools()  # Fail early, at graph construction.
  counts = tf.convert_to_tensor(counts, tf.string)
  scalar = counts.shape.rank == 0
  counts = tf.reshape(counts, [-1])
  size = tf.convert_to_tensor(size)
  size = tf.cast(size, tf.int64)
  if size.shape.rank == 2:
    size = tf.reduce_max(tf.concat([size, tf.zeros([1, 2], tf.int64)], 0), 0)
  masks = tf.numpy_function(_pycocotools_decode_np,
                            [counts, size[0], size[1]], tf.uint8,
                            stateful=False, name='pycocotools_decode')
  masks = tf.reshape(masks, tf.stack(
      [tf.size(counts), tf.cast(size[0], tf.int32),
       tf.cast(size[1], tf.int32)]))
  if output_size is not None:
    output_size = tf.cast(tf.convert_to_tensor(output_size), tf.int32)
    masks = tf.image.resize(masks[..., None], output_size,
                            method='nearest')[..., 0]
  return masks[0] if scalar else masks


def image_id(example: Mapping[str, Any]) -> tf.Tensor:
  """The example's image id (uint64 or int64 scalar tensor); 0 if absent.

  With a seed, every random choice of `decode_masks` and `sam_inputs` is a
  function of (seed, image id) (`sampling`): the same whatever the order,
  sharding or parallelism of the pipeline.
  """
  image = example.get('image') if isinstance(example, Mapping) else None
  if isinstance(image, Mapping) and 'image_id' in image:
    value = tf.convert_to_tensor(image['image_id'])
    return value if value.dtype == tf.uint64 else tf.cast(value, tf.int64)
  return tf.constant(0, tf.int64)


def _image_size(example: Mapping[str, Any]) -> tuple[tf.Tensor, tf.Tensor]:
  image = example.get('image')
  if isinstance(image, Mapping) and 'height' in image and 'width' in image:
    return (tf.cast(image['height'], tf.int64),
            tf.cast(image['width'], tf.int64))
  size = tf.cast(example['annotations']['segmentation']['size'], tf.int64)
  size = tf.reduce_max(tf.concat([size, tf.zeros([1, 2], tf.int64)], 0), 0)
  return size[0], size[1]


# Plain TF ops, no Python control flow on tensors: nothing to convert.
@tf.autograph.experimental.do_not_convert
def decode_masks(
    example: Mapping[str, Any],
    *,
    backend: str = 'tf',
    num_masks: int | None = None,
    output_size: Sequence[int] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
  """Adds the decoded masks of an example as ``annotations['mask']``.

  Use in a tf.data pipeline::

    ds = tfds.load('segment_anything', split='train')
    ds = ds.map(functools.partial(decode_masks, num_masks=32,
                                  output_size=(256, 256), seed=0),
                num_parallel_calls=tf.data.AUTOTUNE)

  Args:
    example: a `segment_anything` example (a dict with 'image' and
      'annotations'; 'annotations' needs 'segmentation' {'counts', 'size'}).
    backend: 'tf' (pure TensorFlow, `rle.decode`) or 'pycocotools'
      (`decode_pycocotools`, needs the pycocotools extra).
    num_masks: sample up to this many masks without replacement and decode
      only those; None keeps (and decodes) all.
    output_size: optional (h, w): decode straight at this size, exactly as a
      'nearest' `tf.image.resize` of the full mask would give.
    seed: makes the sample deterministic, from (seed, image_id), and the
      same as the masks `sam_inputs` samples with no filter (`sampling`).

  Returns:
    A new example dict; its 'annotations' hold the sampled rows of every
    annotation field (still aligned) and 'mask': uint8 [K, h, w].
  """
  if backend not in BACKENDS:
    raise ValueError(f'decode_masks: backend must be one of {BACKENDS}, got'
                     f' {backend!r}.')
  annotations = example['annotations']
  counts = annotations['segmentation']['counts']
  if num_masks is not None:
    if num_masks < 0:
      raise ValueError(f'decode_masks: num_masks must be >= 0, got {num_masks}.')
    keep = tf.ones_like(counts, dtype=tf.bool)
    seed = sampling.random_seed_tf() if seed is None else seed
    indices = sampling.choose_tf(
        keep, num_masks, sampling.key_tf(seed, image_id(example),
                                         sampling.SAMPLE))
    annotations = tf.nest.map_structure(lambda t: tf.gather(t, indices),
                                        annotations)
    counts = annotations['segmentation']['counts']
  height, width = _image_size(example)
  size = tf.stack([height, width])
  if backend == 'tf':
    masks = rle.decode(counts, size, output_size=output_size)
  else:
    masks = decode_pycocotools(counts, size, output_size=output_size)
  result = dict(example)
  result['annotations'] = dict(annotations)
  result['annotations']['mask'] = masks
  return result
