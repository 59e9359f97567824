"""Seeded random choices, bit for bit the same in TensorFlow and numpy.

Every random choice made for training, in the tf.data path (`sam_inputs`) and
in the numpy path (`numpy_inputs`, for Grain and PyTorch), is a pure function
of ``(seed, image_id, stream, counter)``. The same seed gives the same masks,
points, prompt kinds and box jitter in both paths, whatever the order,
sharding, parallelism or framework. The validation holdout is the same kind
of function of the image id alone.

Each function comes in two twins, ``*_np`` (numpy) and ``*_tf`` (TensorFlow
ops only, usable in any graph and under the tf.data service), and the tests
check that they are equal. This module imports TensorFlow only when a ``*_tf``
function is called, so the numpy path runs without it.

The generator
-------------
``mix`` is the 32-bit integer hash "lowbias32" (a bijection on uint32)::

  x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16

A *key* folds the words ``seed_lo, seed_hi, id_lo, id_hi, stream`` (seed and
image id taken modulo 2**64, split into 32-bit halves): ``h = 0x9e3779b9``,
then ``h = mix(h ^ word)`` for each word. The *bits* of a counter ``c`` under
that key are ``mix(mix(key ^ c) ^ key)``: distinct counters give distinct
bits, so choices never tie. From the bits:

* ``uniform``: ``bits / 2**32`` in [0, 1), float64;
* ``below(n)``: ``(bits * n) >> 32`` in [0, n) (0 for n = 0), integer;
* ``bell``: ``(u0 + u1 + u2 + u3 - 2) * sqrt(3)`` with ``uj = uniform(4c + j)``,
  a bell-shaped, zero-mean, unit-variance noise bounded by ±2 sqrt(3)
  (Irwin-Hall). Its arithmetic is exact or correctly rounded in float64, so
  both twins agree to the bit, which a Gaussian's log and cos would not;
* ``choose(keep, k)``: up to ``k`` of the kept entries, uniformly without
  replacement: the top-k of ``keep * 2**32 + bits(i)``, in increasing order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    'SAMPLE', 'POINTS', 'BOXES', 'PROMPTS', 'HOLDOUT', 'COPY_PASTE',
    'key_np', 'bits_np', 'uniform_np', 'below_np', 'bell_np', 'choose_np',
    'in_holdout_np',
    'key_tf', 'bits_tf', 'uniform_tf', 'below_tf', 'bell_tf', 'choose_tf',
    'in_holdout_tf', 'random_seed_tf',
]

# Streams: independent random sequences drawn from one (seed, image_id).
SAMPLE, POINTS, BOXES, PROMPTS, HOLDOUT, COPY_PASTE = 1, 2, 3, 4, 5, 6
# The holdout is a function of the image id only: a fixed seed.
_HOLDOUT_SEED = 0x5A1B

_GOLDEN = 0x9E3779B9
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_MASK32 = 0xFFFFFFFF
_SQRT3 = math.sqrt(3.0)


def _words(value: int) -> tuple[int, int]:
  value = int(value) & 0xFFFFFFFFFFFFFFFF
  return value & _MASK32, value >> 32


# ------------------------------------------------------------------- numpy


def _mix_np(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.uint32)
  with np.errstate(over='ignore'):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(_M1)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(_M2)
    x = x ^ (x >> np.uint32(16))
  return np.asarray(x, np.uint32)


def _id_words_np(image_id: Any) -> tuple[np.ndarray, np.ndarray]:
  ids = np.asarray(image_id)
  if ids.dtype != np.uint64:
    ids = ids.astype(np.int64).astype(np.uint64)  # Modulo 2**64.
  return ((ids & np.uint64(_MASK32)).astype(np.uint32),
          (ids >> np.uint64(32)).astype(np.uint32))


def key_np(seed: int, image_id: Any, stream: int) -> np.ndarray:
  """The uint32 key of (seed, image_id, stream); image_id may be an array."""
  h = np.array(_GOLDEN, np.uint32)
  for word in (*_words(seed), *_id_words_np(image_id), stream & _MASK32):
    h = _mix_np(h ^ np.asarray(word, np.uint32))
  return h


def bits_np(key: Any, counter: Any) -> np.ndarray:
  """uint32 bits of each counter (any int array, taken modulo 2**32)."""
  counter = (np.asarray(counter, np.int64) & _MASK32).astype(np.uint32)
  key = np.asarray(key, np.uint32)
  return _mix_np(_mix_np(counter ^ key) ^ key)


def uniform_np(key: Any, counter: Any) -> np.ndarray:
  """float64 in [0, 1) for each counter."""
  return bits_np(key, counter).astype(np.float64) * 2.0**-32


def below_np(key: Any, counter: Any, n: Any) -> np.ndarray:
  """int64 in [0, n) for each counter (0 where n == 0); n < 2**32."""
  bits = bits_np(key, counter).astype(np.uint64)
  n = np.asarray(n, np.int64).astype(np.uint64)
  return ((bits * n) >> np.uint64(32)).astype(np.int64)


def bell_np(key: Any, counter: Any) -> np.ndarray:
  """float64 bell-shaped noise, mean 0 and variance 1, for each counter."""
  counter = np.asarray(counter, np.int64)
  total = np.zeros(counter.shape, np.float64)
  for j in range(4):
    total = total + uniform_np(key, counter * 4 + j)
  return (total - 2.0) * _SQRT3


def choose_np(keep: Any, num: int | None, key: Any) -> np.ndarray:
  """int64 indices of up to `num` kept entries (all if None), increasing."""
  keep = np.asarray(keep, bool).reshape(-1)
  if num is None:
    return np.flatnonzero(keep).astype(np.int64)
  k = min(int(num), int(keep.sum()))
  score = keep.astype(np.int64) * 2**32 + bits_np(
      key, np.arange(keep.size)).astype(np.int64)
  # Scores are distinct, so the order is that of tf.math.top_k.
  return np.sort(np.argsort(-score, kind='stable')[:k]).astype(np.int64)


def in_holdout_np(image_id: Any, fraction: float) -> np.ndarray:
  """bool: is the image in the holdout of this fraction? (`in_holdout_tf`)"""
  key = key_np(_HOLDOUT_SEED, image_id, HOLDOUT)
  return uniform_np(key, np.zeros(np.shape(key), np.int64)) < float(fraction)


# -------------------------------------------------------------- TensorFlow


def _tf():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def _mix_tf(x):
  tf = _tf()
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(
      x, tf.constant(16, tf.uint32)))
  x = x * tf.constant(_M1, tf.uint32)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(
      x, tf.constant(15, tf.uint32)))
  x = x * tf.constant(_M2, tf.uint32)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(
      x, tf.constant(16, tf.uint32)))


def _words_tf(value):
  """(lo, hi) uint32 words of an int64/uint64 tensor, modulo 2**64."""
  tf = _tf()
  value = tf.convert_to_tensor(value)
  if value.dtype != tf.uint64:
    value = tf.bitcast(tf.cast(value, tf.int64), tf.uint64)
  lo = tf.cast(tf.bitwise.bitwise_and(value, tf.constant(_MASK32, tf.uint64)),
               tf.uint32)
  hi = tf.cast(tf.bitwise.right_shift(value, tf.constant(32, tf.uint64)),
               tf.uint32)
  return lo, hi


def random_seed_tf():
  """A random int64 seed from TF's global generator (for seed=None)."""
  tf = _tf()
  return tf.random.uniform([], minval=0, maxval=2**62, dtype=tf.int64)


def key_tf(seed, image_id, stream: int):
  """`key_np` in TF ops; seed is a Python int or an int64 tensor."""
  tf = _tf()
  if isinstance(seed, int):
    seed_words = [tf.constant(w, tf.uint32) for w in _words(seed)]
  else:
    seed_words = list(_words_tf(seed))
  h = tf.constant(_GOLDEN, tf.uint32)
  for word in (*seed_words, *_words_tf(image_id),
               tf.constant(stream & _MASK32, tf.uint32)):
    h = _mix_tf(tf.bitwise.bitwise_xor(h, word))
  return h


def _counter_tf(counter):
  tf = _tf()
  counter = tf.cast(counter, tf.int64)
  return tf.cast(tf.bitwise.bitwise_and(counter, _MASK32), tf.uint32)


def bits_tf(key, counter):
  tf = _tf()
  c = _counter_tf(counter)
  return _mix_tf(tf.bitwise.bitwise_xor(
      _mix_tf(tf.bitwise.bitwise_xor(c, key)), key))


def uniform_tf(key, counter):
  tf = _tf()
  return tf.cast(bits_tf(key, counter), tf.float64) * 2.0**-32


def below_tf(key, counter, n):
  tf = _tf()
  bits = tf.cast(bits_tf(key, counter), tf.uint64)
  n = tf.cast(tf.cast(n, tf.int64), tf.uint64)
  return tf.cast(tf.bitwise.right_shift(bits * n, tf.constant(32, tf.uint64)),
                 tf.int64)


def bell_tf(key, counter):
  tf = _tf()
  counter = tf.cast(counter, tf.int64)
  total = tf.zeros(tf.shape(counter), tf.float64)
  for j in range(4):
    total = total + uniform_tf(key, counter * 4 + j)
  return (total - 2.0) * _SQRT3


def choose_tf(keep, num: int | None, key):
  """`choose_np` in TF ops: int32 indices, increasing."""
  tf = _tf()
  keep = tf.reshape(tf.convert_to_tensor(keep, tf.bool), [-1])
  if num is None:
    return tf.cast(tf.where(keep)[:, 0], tf.int32)
  n = tf.size(keep)
  score = tf.cast(keep, tf.int64) * 2**32 + tf.cast(
      bits_tf(key, tf.range(n)), tf.int64)
  k = tf.minimum(tf.cast(num, tf.int32),
                 tf.reduce_sum(tf.cast(keep, tf.int32)))
  return tf.sort(tf.math.top_k(score, k=k, sorted=True).indices)


def in_holdout_tf(image_id, fraction: float):
  """Is the image in the holdout of this fraction (bool tensor)?

  The holdout is ``uniform(key(0x5A1B, image_id, HOLDOUT), 0) < fraction``: it
  depends on the image id only, so it is the same in every config, build,
  file format and path, and a larger fraction holds out a superset.
  """
  tf = _tf()
  key = key_tf(_HOLDOUT_SEED, image_id, HOLDOUT)
  return uniform_tf(key, tf.constant(0, tf.int64)) < float(fraction)
