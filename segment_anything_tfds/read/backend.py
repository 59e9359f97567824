"""The few array ops that SAM sampling and geometry need, in numpy and TF.

`sampling`, `geometry` and `sam_steps` are written once against an ``xp``
argument: `NUMPY` (the numpy path, for Grain and PyTorch) or `tf_ops()` (the
tf.data path: TensorFlow ops only, no ``py_function``, usable under the
tf.data service). Both run the same arithmetic in the same dtypes, so the
two paths draw the same masks, points, prompt kinds and box jitter, bit for
bit.

Why not ``tf.experimental.numpy``: it has no shifts (the hash needs them),
and numpy's dtype promotion for tensors is a process-wide switch
(``experimental_enable_numpy_behavior``) that would change users' own TF
code. The ops here are few, named after numpy's, and say their dtypes;
dtypes are given by name ('uint32', 'float32', ...). Arithmetic and
comparisons on floats, and ``&``, ``|``, ``^`` on booleans, use Python's
operators, which mean the same in both; integer hashing goes through `mul`,
`xor` and `shr`, which wrap around silently in both.

This module imports TensorFlow only when `tf_ops()` is first called, so the
numpy path runs without it.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

__all__ = ['NUMPY', 'tf_ops']


def inverse(std) -> tuple[float, ...]:
  """1 / std per channel: both backends normalize by multiplying with these
  (as float32), not by dividing: a product is ~20 % faster, and Grappler
  would turn a division by a constant into that product inside tf.function
  anyway, so only the product is the same bit for bit everywhere."""
  return tuple(1.0 / s for s in std)


class _Numpy:
  """The ops on numpy arrays."""

  name = 'numpy'

  @staticmethod
  def const(value: Any, dtype: str):
    return np.asarray(value, dtype)

  @staticmethod
  def cast(x: Any, dtype: str):
    return np.asarray(x).astype(dtype, copy=False)

  @staticmethod
  def as_uint64(x: Any):
    """int64 or uint64 values as uint64, modulo 2**64."""
    x = np.asarray(x)
    return x if x.dtype == np.uint64 else x.astype(np.int64).astype(np.uint64)

  # Integer hashing: ufuncs wrap around without the warnings of numpy's
  # scalar arithmetic.
  mul = staticmethod(np.multiply)
  xor = staticmethod(np.bitwise_xor)
  and_ = staticmethod(np.bitwise_and)

  @staticmethod
  def shr(x, bits: int):
    return np.right_shift(x, np.asarray(bits, x.dtype))

  floor = staticmethod(np.floor)
  maximum = staticmethod(np.maximum)
  minimum = staticmethod(np.minimum)
  where = staticmethod(np.where)

  @staticmethod
  def clip(x, low, high):
    return np.clip(x, low, high)

  @staticmethod
  def stack(values: Sequence[Any], axis: int = 0):
    return np.stack(values, axis=axis)

  @staticmethod
  def unstack(x, num: int, axis: int = 0):
    return tuple(np.moveaxis(x, axis, 0))

  @staticmethod
  def reshape(x, shape):
    return np.reshape(x, shape)

  @staticmethod
  def tile(x, reps):
    return np.tile(x, reps)

  @staticmethod
  def arange(n, dtype: str = 'int64'):
    return np.arange(n, dtype=dtype)

  @staticmethod
  def zeros(shape, dtype: str):
    return np.zeros(shape, dtype)

  @staticmethod
  def ones(shape, dtype: str):
    return np.ones(shape, dtype)

  @staticmethod
  def full_like(x, value, dtype: str):
    return np.full(np.shape(x), value, dtype)

  @staticmethod
  def size(x) -> int:
    return int(np.size(x))

  @staticmethod
  def shape(x, axis: int) -> int:
    return np.shape(x)[axis]

  @staticmethod
  def sum(x, axis=None, dtype: str | None = None):
    return np.sum(x, axis=axis, dtype=dtype)

  @staticmethod
  def cumsum(x, axis: int):
    return np.cumsum(x, axis=axis)

  @staticmethod
  def any(x, axis=None):
    return np.any(x, axis=axis)

  @staticmethod
  def argmax(x, axis: int):
    """int32 indices of the first maxima."""
    return np.argmax(x, axis=axis).astype(np.int32)

  @staticmethod
  def gather(x, index):
    """Rows of x (an array, or a list such as a data source's counts)."""
    if isinstance(x, list):
      return [x[i] for i in np.asarray(index).tolist()]
    return np.asarray(x)[index]

  @staticmethod
  def gather_rows(x, index):
    """x[k, index[k]] for each k: one entry (or row) of each row of x."""
    return x[np.arange(len(index)), index]

  @staticmethod
  def nonzero(x):
    """int64 indices of the true entries of a vector."""
    return np.flatnonzero(x)

  @staticmethod
  def top_k_sorted(score, k):
    """Indices of the k largest (distinct) scores, increasing."""
    return np.sort(np.argsort(-score, kind='stable')[:k])

  @staticmethod
  def pad_rows(x, num: int, value: float = 0):
    """x padded on axis 0 to `num` rows with `value`."""
    return np.pad(x, [(0, num - len(x))] + [(0, 0)] * (x.ndim - 1),
                  constant_values=value)

  @staticmethod
  def normalize_pad(image, mean, std, size: int, fill):
    """float32 [size, size, C]: (image - mean) * (1 / std) in the top left
    (`inverse`), the rest `fill`; mean, std and fill are C Python floats. No
    temporary image."""
    h, w, c = image.shape
    out = np.empty((size, size, c), np.float32)
    # As rows of size * C values: ufuncs then run along long rows, ~6x
    # faster than broadcasting along an axis of C = 3.
    rows = out.reshape(size, size * c)
    fill_row = np.tile(np.asarray(fill, np.float32), size)
    rows[h:] = fill_row
    rows[:h, w * c:] = fill_row[w * c:]
    inside = rows[:h, :w * c]
    image = np.reshape(image, (h, w * c))
    if any(mean):
      np.subtract(image, np.tile(np.asarray(mean, np.float32), w), out=inside)
      image = inside
    np.multiply(image, np.tile(np.asarray(inverse(std), np.float32), w),
                out=inside)
    return out

  @staticmethod
  def random_seed() -> int:
    return int(np.random.default_rng().integers(0, 2**62))


NUMPY = _Numpy()


class _TensorFlow:
  """The same ops in TensorFlow."""

  name = 'tf'

  def __init__(self, tf):
    self.tf = tf

  def const(self, value, dtype: str):
    return self.tf.constant(value, dtype)

  def cast(self, x, dtype: str):
    return self.tf.cast(x, dtype)

  def as_uint64(self, x):
    tf = self.tf
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.uint64 else tf.bitcast(tf.cast(x, tf.int64),
                                                     tf.uint64)

  def mul(self, a, b):
    return a * b

  def xor(self, a, b):
    return self.tf.bitwise.bitwise_xor(a, b)

  def and_(self, a, b):
    return self.tf.bitwise.bitwise_and(a, b)

  def shr(self, x, bits: int):
    return self.tf.bitwise.right_shift(x, self.tf.constant(bits, x.dtype))

  def floor(self, x):
    return self.tf.floor(x)

  def maximum(self, a, b):
    return self.tf.maximum(a, b)

  def minimum(self, a, b):
    return self.tf.minimum(a, b)

  def where(self, condition, a, b):
    return self.tf.where(condition, a, b)

  def clip(self, x, low, high):
    return self.tf.clip_by_value(x, low, high)

  def stack(self, values, axis: int = 0):
    return self.tf.stack(values, axis=axis)

  def unstack(self, x, num: int, axis: int = 0):
    return tuple(self.tf.unstack(x, num=num, axis=axis))

  def reshape(self, x, shape):
    return self.tf.reshape(x, shape)

  def tile(self, x, reps):
    return self.tf.tile(x, reps)

  def arange(self, n, dtype: str = 'int64'):
    return self.tf.range(self.tf.cast(n, dtype), dtype=dtype)

  def zeros(self, shape, dtype: str):
    return self.tf.zeros(shape, dtype)

  def ones(self, shape, dtype: str):
    return self.tf.ones(shape, dtype)

  def full_like(self, x, value, dtype: str):
    return self.tf.fill(self.tf.shape(x), self.tf.constant(value, dtype))

  def size(self, x):
    return self.tf.size(x)

  def shape(self, x, axis: int):
    return self.tf.shape(x)[axis]

  def sum(self, x, axis=None, dtype: str | None = None):
    if dtype is not None:
      x = self.tf.cast(x, dtype)
    return self.tf.reduce_sum(x, axis=axis)

  def cumsum(self, x, axis: int):
    return self.tf.cumsum(x, axis=axis)

  def any(self, x, axis=None):
    return self.tf.reduce_any(x, axis=axis)

  def argmax(self, x, axis: int):
    return self.tf.argmax(x, axis=axis, output_type=self.tf.int32)

  def gather(self, x, index):
    return self.tf.gather(x, index)

  def gather_rows(self, x, index):
    return self.tf.gather(x, index, batch_dims=1)

  def nonzero(self, x):
    return self.tf.where(x)[:, 0]

  def top_k_sorted(self, score, k):
    return self.tf.sort(self.tf.math.top_k(score, k=k, sorted=True).indices)

  def pad_rows(self, x, num: int, value: float = 0):
    tf = self.tf
    paddings = [[0, num - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
    out = tf.pad(x, paddings, constant_values=tf.cast(value, x.dtype))
    return tf.ensure_shape(out, [num] + x.shape[1:].as_list())

  def normalize_pad(self, image, mean, std, size: int, fill):
    tf = self.tf
    image = tf.cast(image, tf.float32)
    h, w, c = tf.shape(image)[0], tf.shape(image)[1], image.shape[-1]

    def per_channel(values):
      # Along rows of w * C values: elementwise ops broadcasting a vector
      # of C = 3 along the last axis run ~4x slower.
      return tf.tile(tf.constant(values, tf.float32), [w])

    rows = tf.reshape(image, [h, w * c])
    if any(mean):
      rows = rows - per_channel(mean)
    rows = rows * per_channel(inverse(std))
    image = tf.reshape(rows, [h, w, c])
    if not any(fill):
      out = tf.pad(image, [[0, size - h], [0, size - w], [0, 0]])
    else:  # Pixels copied once, no mask of the inside.
      # The fill as whole rows of size * C values: broadcasting those is a
      # row copy, ~5x faster than broadcasting a vector of C = 3.
      fill_row = tf.constant(np.tile(np.asarray(fill, np.float32), size))
      right = tf.broadcast_to(fill_row[w * c:], [h, (size - w) * c])
      out = tf.concat([rows, right], 1)
      out = tf.concat([out, tf.broadcast_to(fill_row, [size - h, size * c])],
                      0)
      out = tf.reshape(out, [size, size, c])
    return tf.ensure_shape(out, [size, size, image.shape[-1]])

  def random_seed(self):
    tf = self.tf
    return tf.random.uniform([], minval=0, maxval=2**62, dtype=tf.int64)


@functools.lru_cache(maxsize=None)
def tf_ops() -> _TensorFlow:
  """The TensorFlow ops (imports TensorFlow on the first call)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return _TensorFlow(tf)
