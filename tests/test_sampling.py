"""sampling: the counter-based random choices, equal in numpy and TF."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.read import sampling

# (seed, image_id) pairs, with the edges of the 64-bit words.
CASES = [(0, 0), (7, 12), (-1, 2**64 - 1), (2**40 + 3, 11_000_000),
         (2**64 + 5, 2**32), (123, 2**63)]


def _mix_reference(x: int) -> int:
  """lowbias32 as written in the module docstring, on Python ints."""
  x ^= x >> 16
  x = (x * 0x7FEB352D) & 0xFFFFFFFF
  x ^= x >> 15
  x = (x * 0x846CA68B) & 0xFFFFFFFF
  x ^= x >> 16
  return x


def _key_reference(seed: int, image_id: int, stream: int) -> int:
  seed %= 2**64
  image_id %= 2**64
  h = 0x9E3779B9
  for word in (seed & 0xFFFFFFFF, seed >> 32, image_id & 0xFFFFFFFF,
               image_id >> 32, stream):
    h = _mix_reference(h ^ word)
  return h


@pytest.mark.parametrize('seed, image_id', CASES)
def test_numpy_follows_the_documented_hash(seed, image_id):
  key = sampling.key_np(seed, image_id, sampling.POINTS)
  assert int(key) == _key_reference(seed, image_id, sampling.POINTS)
  counters = [0, 1, 2, 1000, 2**31, 2**32 - 1]
  expected = [_mix_reference(_mix_reference(c ^ int(key)) ^ int(key))
              for c in counters]
  assert sampling.bits_np(key, counters).tolist() == expected


def _tf_id(image_id: int) -> tf.Tensor:
  return tf.constant(image_id % 2**64, tf.uint64)


@pytest.mark.parametrize('seed, image_id', CASES)
def test_tf_twins_equal_numpy(seed, image_id):
  counters = np.arange(2000)
  n = np.arange(2000) * 977  # Includes n = 0.
  for stream in (sampling.SAMPLE, sampling.BOXES):
    key_np = sampling.key_np(seed, image_id, stream)
    key_tf = sampling.key_tf(seed, _tf_id(image_id), stream)
    assert int(key_np) == int(key_tf.numpy())
    np.testing.assert_array_equal(sampling.bits_np(key_np, counters),
                                  sampling.bits_tf(key_tf, counters).numpy())
    np.testing.assert_array_equal(
        sampling.uniform_np(key_np, counters),
        sampling.uniform_tf(key_tf, counters).numpy())
    np.testing.assert_array_equal(
        sampling.below_np(key_np, counters, n),
        sampling.below_tf(key_tf, counters, n).numpy())
    # Bit for bit, not merely close.
    np.testing.assert_array_equal(sampling.bell_np(key_np, counters),
                                  sampling.bell_tf(key_tf, counters).numpy())
    keep = sampling.uniform_np(key_np, counters + 5000) < 0.3
    for num in (0, 1, 17, 5000, None):
      np.testing.assert_array_equal(
          sampling.choose_np(keep, num, key_np),
          sampling.choose_tf(keep, num, key_tf).numpy())


def test_tf_twins_in_graph_and_dataset_map():
  ids = [0, 5, 2**63 + 9]

  def draw(image_id):
    key = sampling.key_tf(3, image_id, sampling.SAMPLE)
    keep = tf.range(40) % 3 > 0
    return {'choose': sampling.choose_tf(keep, 6, key),
            'below': sampling.below_tf(key, tf.range(10), 17),
            'bell': sampling.bell_tf(key, tf.range(10)),
            'holdout': sampling.in_holdout_tf(image_id, 0.5)}

  in_graph = tf.function(draw)
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(ids, tf.uint64)).map(
      draw, num_parallel_calls=2, deterministic=True)
  for image_id, mapped in zip(ids, ds):
    key = sampling.key_np(3, image_id, sampling.SAMPLE)
    keep = np.arange(40) % 3 > 0
    expected = {'choose': sampling.choose_np(keep, 6, key),
                'below': sampling.below_np(key, np.arange(10), 17),
                'bell': sampling.bell_np(key, np.arange(10)),
                'holdout': sampling.in_holdout_np(image_id, 0.5)}
    graph = in_graph(tf.constant(image_id, tf.uint64))
    for name, value in expected.items():
      np.testing.assert_array_equal(mapped[name].numpy(), value, err_msg=name)
      np.testing.assert_array_equal(graph[name].numpy(), value, err_msg=name)


def test_int64_and_uint64_ids_agree():
  for image_id in (0, 17, 2**40):
    a = sampling.key_tf(1, tf.constant(image_id, tf.int64), 2)
    b = sampling.key_tf(1, tf.constant(image_id, tf.uint64), 2)
    assert int(a.numpy()) == int(b.numpy())
  # An int64 -1 is the uint64 2**64 - 1 (bitcast), as in numpy.
  a = sampling.key_tf(1, tf.constant(-1, tf.int64), 2)
  assert int(a.numpy()) == int(sampling.key_np(1, 2**64 - 1, 2))


def test_distributions():
  key = sampling.key_np(0, 1, sampling.SAMPLE)
  counters = np.arange(200_000)
  bits = sampling.bits_np(key, counters)
  assert len(np.unique(bits)) == len(bits)  # A bijection: no ties.
  u = sampling.uniform_np(key, counters)
  assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
  below = sampling.below_np(key, counters, 10)
  assert below.min() == 0 and below.max() == 9
  assert np.abs(np.bincount(below) / len(below) - 0.1).max() < 0.005
  assert not sampling.below_np(key, counters[:10], 0).any()
  bell = sampling.bell_np(key, counters)
  assert abs(bell.mean()) < 0.01 and abs(bell.std() - 1) < 0.01
  assert np.abs(bell).max() <= 2 * np.sqrt(3)
  # Streams and seeds are independent sequences.
  other = sampling.bits_np(sampling.key_np(0, 1, sampling.POINTS), counters)
  assert np.mean(other == bits) < 1e-4
  assert abs(np.corrcoef(bits.astype(float), other.astype(float))[0, 1]) < 0.01


def test_choose_is_uniform_without_replacement():
  keep = np.array([True, False, True, True, False, True, True, True])
  counts = np.zeros(len(keep))
  for image_id in range(3000):
    got = sampling.choose_np(keep, 3, sampling.key_np(9, image_id, 1))
    assert len(got) == 3 and len(set(got)) == 3
    assert keep[got].all() and list(got) == sorted(got)
    counts[got] += 1
  # Each of the 6 kept entries: probability 3/6.
  np.testing.assert_allclose(counts[keep] / 3000, 0.5, atol=0.04)
  assert not counts[~keep].any()
  assert sampling.choose_np(keep, 10, 0).tolist() == [0, 2, 3, 5, 6, 7]
  assert sampling.choose_np(keep, None, 0).tolist() == [0, 2, 3, 5, 6, 7]
  assert sampling.choose_np(np.zeros(0, bool), 4, 0).tolist() == []


def test_holdout():
  ids = np.arange(1, 20_001, dtype=np.uint64)
  small = sampling.in_holdout_np(ids, 0.05)
  large = sampling.in_holdout_np(ids, 0.2)
  assert abs(small.mean() - 0.05) < 0.01 and abs(large.mean() - 0.2) < 0.01
  assert not (small & ~large).any()  # A larger fraction: a superset.
  assert not sampling.in_holdout_np(ids, 0.0).any()
  assert sampling.in_holdout_np(ids, 1.0).all()
  np.testing.assert_array_equal(
      sampling.in_holdout_tf(tf.constant(ids[:3000]), 0.2).numpy(),
      large[:3000])
  # One id at a time gives the same as the vector.
  assert [bool(sampling.in_holdout_np(int(i), 0.2)) for i in ids[:50]] == list(
      large[:50])
