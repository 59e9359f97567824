"""Seeded random choices, bit for bit the same in TensorFlow and numpy.

Every random choice made for training, in the tf.data path (`sam_inputs`) and
in the numpy path (`numpy_inputs`, for Grain and PyTorch), is a pure function
of ``(seed, image_id, stream, counter)``. The same seed gives the same masks,
points, prompt kinds and box jitter in both paths, whatever the order,
sharding, parallelism or framework. The validation holdout is the same kind
of function of the image id alone.

Each function is written once, over the array ops of `backend` (its ``xp``
argument: `backend.NUMPY` or `backend.tf_ops()`), and bound to both as
``*_np`` (numpy) and ``*_tf`` (TensorFlow ops only, usable in any graph and
under the tf.data service); the tests check that the two are equal. This
module imports TensorFlow only when a ``*_tf`` function is called, so the
numpy path runs without it.

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

import functools
import math
from typing import Any

from segment_anything_tfds.read import backend

__all__ = [
    'SAMPLE', 'POINTS', 'BOXES', 'PROMPTS', 'HOLDOUT', 'COPY_PASTE',
    'key', 'bits', 'uniform', 'below', 'bell', 'choose', 'in_holdout',
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

NUMPY = backend.NUMPY


def _mix(x, xp):
  """lowbias32 on uint32 values."""
  x = xp.xor(x, xp.shr(x, 16))
  x = xp.mul(x, xp.const(_M1, 'uint32'))
  x = xp.xor(x, xp.shr(x, 15))
  x = xp.mul(x, xp.const(_M2, 'uint32'))
  return xp.xor(x, xp.shr(x, 16))


def _words(value: Any, xp) -> tuple[Any, Any]:
  """(lo, hi) uint32 words of int / int64 / uint64 values, modulo 2**64."""
  if isinstance(value, int):
    value &= 0xFFFFFFFFFFFFFFFF
    return xp.const(value & _MASK32, 'uint32'), xp.const(value >> 32,
                                                         'uint32')
  value = xp.as_uint64(value)
  return (xp.cast(xp.and_(value, xp.const(_MASK32, 'uint64')), 'uint32'),
          xp.cast(xp.shr(value, 32), 'uint32'))


def key(seed: Any, image_id: Any, stream: int, xp=NUMPY):
  """The uint32 key of (seed, image_id, stream); image_id may be an array.

  seed is a Python int or an integer array (tensor); so is image_id.
  """
  h = xp.const(_GOLDEN, 'uint32')
  for word in (*_words(seed, xp), *_words(image_id, xp),
               xp.const(stream & _MASK32, 'uint32')):
    h = _mix(xp.xor(h, word), xp)
  return h


def bits(key_: Any, counter: Any, xp=NUMPY):
  """uint32 bits of each counter (any int array, taken modulo 2**32)."""
  counter = xp.cast(xp.and_(xp.cast(counter, 'int64'),
                            xp.const(_MASK32, 'int64')), 'uint32')
  key_ = xp.cast(key_, 'uint32')
  return _mix(xp.xor(_mix(xp.xor(counter, key_), xp), key_), xp)


def uniform(key_: Any, counter: Any, xp=NUMPY):
  """float64 in [0, 1) for each counter."""
  return xp.cast(bits(key_, counter, xp), 'float64') * 2.0**-32


def below(key_: Any, counter: Any, n: Any, xp=NUMPY):
  """int64 in [0, n) for each counter (0 where n == 0); n < 2**32."""
  b = xp.cast(bits(key_, counter, xp), 'uint64')
  n = xp.cast(xp.cast(n, 'int64'), 'uint64')
  return xp.cast(xp.shr(xp.mul(b, n), 32), 'int64')


def bell(key_: Any, counter: Any, xp=NUMPY):
  """float64 bell-shaped noise, mean 0 and variance 1, for each counter."""
  counter = xp.cast(counter, 'int64')
  total = uniform(key_, counter * 4, xp)
  for j in range(1, 4):
    total = total + uniform(key_, counter * 4 + j, xp)
  return (total - 2.0) * _SQRT3


def choose(keep: Any, num: int | None, key_: Any, xp=NUMPY):
  """int32 indices of up to `num` kept entries (all if None), increasing."""
  keep = xp.reshape(xp.cast(keep, 'bool'), [-1])
  if num is None:
    return xp.cast(xp.nonzero(keep), 'int32')
  score = xp.cast(keep, 'int64') * 2**32 + xp.cast(
      bits(key_, xp.arange(xp.size(keep)), xp), 'int64')
  k = xp.minimum(xp.cast(num, 'int32'), xp.sum(keep, dtype='int32'))
  # Scores are distinct, so every backend picks the same top k.
  return xp.cast(xp.top_k_sorted(score, k), 'int32')


def in_holdout(image_id: Any, fraction: float, xp=NUMPY):
  """Is the image in the holdout of this fraction? (bool, per image id)

  The holdout is ``uniform(key(0x5A1B, image_id, HOLDOUT), 0) < fraction``: it
  depends on the image id only, so it is the same in every config, build,
  file format and path, and a larger fraction holds out a superset.
  """
  k = key(_HOLDOUT_SEED, image_id, HOLDOUT, xp)
  return uniform(k, 0, xp) < float(fraction)


# The numpy and TensorFlow bindings (the TF ones import TF on first use).

key_np = key
bits_np = bits
uniform_np = uniform
below_np = below
bell_np = bell
choose_np = choose
in_holdout_np = in_holdout


def _on_tf(fn):
  @functools.wraps(fn)
  def bound(*args, **kwargs):
    return fn(*args, xp=backend.tf_ops(), **kwargs)
  bound.__doc__ = f'`{fn.__name__}` in TensorFlow ops.'
  return bound


key_tf = _on_tf(key)
bits_tf = _on_tf(bits)
uniform_tf = _on_tf(uniform)
below_tf = _on_tf(below)
bell_tf = _on_tf(bell)
choose_tf = _on_tf(choose)
in_holdout_tf = _on_tf(in_holdout)


def random_seed_tf():
  """A random int64 seed from TF's global generator (for seed=None)."""
  return backend.tf_ops().random_seed()
