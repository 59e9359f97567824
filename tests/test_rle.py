"""segment_anything_tfds.read.rle against pycocotools, eagerly and in graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.read import geometry
from segment_anything_tfds.read import numpy_inputs as npi
from segment_anything_tfds.read import rle

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import PYTHON_OPS, dataset_ops, op_types  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 3), (5, 7), (16, 16), (23, 31),
          (40, 17)]
OUTPUT_SIZES = [(1, 1), (3, 4), (8, 8), (5, 13), (20, 9), (37, 41)]


def _encode(masks: np.ndarray) -> list[dict]:
  """pycocotools RLEs of uint8 masks [N, H, W]."""
  return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))


def _reference(masks: np.ndarray, output_size=None) -> np.ndarray:
  """pycocotools decode (+ TF nearest resize) of the encoded masks."""
  full = mask_utils.decode(_encode(masks)).transpose(2, 0, 1)
  if output_size is None:
    return full
  return tf.image.resize(full[..., None], output_size,
                         method='nearest')[..., 0].numpy()


def _random_masks(rng: np.random.Generator, shape, n: int) -> np.ndarray:
  """A mix: empty, full, sparse noise, dense noise, blobs, stripes."""
  h, w = shape
  kinds = []
  for i in range(n):
    kind = i % 6
    if kind == 0:
      m = np.zeros(shape, np.uint8)
    elif kind == 1:
      m = np.ones(shape, np.uint8)
    elif kind == 2:
      m = rng.random(shape) < 0.05
    elif kind == 3:
      m = rng.random(shape) < 0.6  # Many short runs.
    elif kind == 4:
      yy, xx = np.mgrid[:h, :w]
      cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 10)
      m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    else:
      m = (np.arange(h)[:, None] + np.arange(w)[None] * rng.integers(1, 3)
           ) % rng.integers(2, 5) == 0
    kinds.append(m.astype(np.uint8))
  return np.stack(kinds)


def _counts(masks: np.ndarray) -> list[bytes]:
  return [r['counts'] for r in _encode(masks)]


@pytest.fixture(scope='module')
def cases():
  rng = np.random.default_rng(1234)
  return [(shape, _random_masks(rng, shape, 7)) for shape in SHAPES]


def test_decode_full_matches_pycocotools(cases):
  for shape, masks in cases:
    got = rle.decode(_counts(masks), shape).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _reference(masks), err_msg=str(shape))


def test_decode_scalar_counts(cases):
  for shape, masks in cases:
    counts = _counts(masks)
    for i in (0, 1, 3):
      got = rle.decode(counts[i], shape)
      assert got.shape == shape
      np.testing.assert_array_equal(got.numpy(), _reference(masks)[i])


def test_decode_resized_matches_full_then_nearest_resize(cases):
  for shape, masks in cases:
    counts = _counts(masks)
    for output_size in OUTPUT_SIZES:
      got = rle.decode(counts, shape, output_size=output_size).numpy()
      np.testing.assert_array_equal(
          got, _reference(masks, output_size),
          err_msg=f'{shape} -> {output_size}')


def test_nearest_indices_match_tf_resize():
  for in_size in (1, 2, 3, 7, 100, 1500, 2250):
    for out_size in (1, 2, 5, 64, 256, 1024, 3001):
      source = tf.range(in_size, dtype=tf.int32)[None, :, None]
      expected = tf.image.resize(source, (1, out_size),
                                 method='nearest')[0, :, 0]
      got = rle.nearest_indices(in_size, out_size)
      np.testing.assert_array_equal(got.numpy(), expected.numpy(),
                                    err_msg=f'{in_size} -> {out_size}')


def test_sa1b_sized_resize_is_exact():
  """Large, awkward ratios (float rounding in the nearest rule)."""
  rng = np.random.default_rng(7)
  shape = (1500, 2250)
  yy, xx = np.ogrid[:shape[0], :shape[1]]
  masks = []
  for _ in range(3):
    cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
    ry, rx = rng.uniform(20, 600, size=2)
    masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
  masks = np.stack(masks).astype(np.uint8)
  counts = _counts(masks)
  full = rle.decode(counts, shape).numpy()
  np.testing.assert_array_equal(full, masks)
  for output_size in ((256, 256), (171, 256), (1024, 683), (333, 777)):
    got = rle.decode(counts, shape, output_size=output_size).numpy()
    np.testing.assert_array_equal(got, _reference(masks, output_size),
                                  err_msg=str(output_size))


def test_strings_with_backslashes():
  rng = np.random.default_rng(0)
  found = []
  for _ in range(500):
    masks = (rng.random((8, 12, 10)) < rng.uniform(0.2, 0.8)).astype(
        np.uint8)
    for i, c in enumerate(_counts(masks)):
      if b'\\' in c:
        found.append((c, masks[i]))
    if len(found) >= 5:
      break
  assert len(found) >= 5, 'no RLE string with a backslash was drawn'
  counts = [c for c, _ in found]
  masks = np.stack([m for _, m in found])
  np.testing.assert_array_equal(rle.decode(counts, (12, 10)).numpy(), masks)
  # Round trip through tf.string as text, as SA-1B JSON stores it.
  as_text = tf.constant([c.decode('ascii') for c in counts])
  np.testing.assert_array_equal(rle.decode(as_text, (12, 10)).numpy(), masks)


def test_size_forms(cases):
  shape, masks = cases[4]
  counts = _counts(masks)
  expected = _reference(masks)
  per_mask = tf.constant([list(shape)] * len(counts), tf.uint64)
  np.testing.assert_array_equal(rle.decode(counts, per_mask).numpy(),
                                expected)
  np.testing.assert_array_equal(
      rle.decode(counts, tf.constant(shape, tf.int32)).numpy(), expected)
  with pytest.raises(tf.errors.InvalidArgumentError, match='same size'):
    rle.decode(counts[:2], [list(shape), [shape[0], shape[1] + 1]])


def test_no_masks():
  assert rle.decode(tf.constant([], tf.string), (4, 5)).shape == (0, 4, 5)
  assert rle.decode(tf.constant([], tf.string), (4, 5),
                    output_size=(2, 3)).shape == (0, 2, 3)
  assert rle.decode(tf.constant([], tf.string),
                    tf.zeros([0, 2], tf.uint64)).shape == (0, 0, 0)


def test_zero_sized_masks():
  for shape in ((0, 3), (3, 0), (0, 0)):
    counts = mask_utils.encode(np.zeros(shape + (1,), np.uint8, order='F'))
    got = rle.decode(counts[0]['counts'], shape)
    assert got.shape == shape


def test_area_and_bbox_match_pycocotools(cases):
  for shape, masks in cases:
    encoded = _encode(masks)
    counts = [r['counts'] for r in encoded]
    np.testing.assert_array_equal(rle.area(counts, shape).numpy(),
                                  mask_utils.area(encoded))
    np.testing.assert_array_equal(rle.to_bbox(counts, shape).numpy(),
                                  mask_utils.toBbox(encoded))
    assert rle.area(counts[3], shape).numpy() == mask_utils.area(encoded[3])


def _masks_for_graph_tests():
  rng = np.random.default_rng(99)
  items = []
  for shape in SHAPES:
    masks = _random_masks(rng, shape, 5)
    items.append((_counts(masks), np.array(shape), masks))
  return items


def test_decode_in_tf_function():
  fn = tf.function(lambda c, s: rle.decode(c, s))
  fn_resized = tf.function(
      lambda c, s: rle.decode(c, s, output_size=(6, 11)))
  for counts, shape, masks in _masks_for_graph_tests():
    np.testing.assert_array_equal(fn(tf.constant(counts), shape).numpy(),
                                  masks)
    np.testing.assert_array_equal(
        fn_resized(tf.constant(counts), shape).numpy(),
        _reference(masks, (6, 11)))


@pytest.mark.parametrize('output_size', [None, (7, 5)])
def test_decode_in_dataset_map_parallel(output_size):
  items = _masks_for_graph_tests() * 3
  ds = tf.data.Dataset.from_generator(
      lambda: ((tf.constant(c), s) for c, s, _ in items),
      output_signature=(tf.TensorSpec([None], tf.string),
                        tf.TensorSpec([2], tf.int64)))
  ds = ds.map(lambda c, s: rle.decode(c, s, output_size=output_size),
              num_parallel_calls=4, deterministic=True)
  results = list(ds.as_numpy_iterator())
  assert len(results) == len(items)
  for got, (_, _, masks) in zip(results, items):
    np.testing.assert_array_equal(got, _reference(masks, output_size))


def test_decode_in_dataset_map_with_static_shapes():
  counts, shape, masks = _masks_for_graph_tests()[5]
  ds = tf.data.Dataset.from_tensors((tf.constant(counts), tf.constant(shape)))
  ds = ds.map(lambda c, s: (rle.decode(c[0], s), rle.area(c, s),
                            rle.to_bbox(c, s)))
  full, areas, boxes = next(iter(ds))
  encoded = _encode(masks)
  np.testing.assert_array_equal(full.numpy(), masks[0])
  np.testing.assert_array_equal(areas.numpy(), mask_utils.area(encoded))
  np.testing.assert_array_equal(boxes.numpy(), mask_utils.toBbox(encoded))


MALFORMED = [
    # (counts, size, message regexp)
    (b'3 ', (2, 2), 'outside'),  # Space: below '0'.
    (b'1p', (2, 2), 'outside'),  # 'p' = 112: above 'o'.
    (b'1\x80', (2, 2), 'outside'),  # Not ASCII.
    (b'1P', (2, 2), 'unfinished'),  # 'P' = 0x20 + 48: continuation at end.
    (b'1', (2, 2), 'do not sum'),  # Too few pixels.
    (b'5', (2, 2), 'do not sum'),  # Too many pixels.
    (b'', (2, 2), 'do not sum'),  # No runs at all.
    (b'1O', (2, 2), 'negative'),  # 'O' = 31: -1 (sign bit 0x10).
    (b'12N1', (2, 2), 'negative'),  # Delta makes count 3 negative.
    (b'ooooooooo1', (2, 2), 'longer than'),  # Endless continuation.
    (b'0' * 3 + b'1', (100000, 100000), 'do not sum'),  # Huge size: no OOM.
]


@pytest.mark.parametrize('counts,size,message', MALFORMED)
def test_malformed_eager(counts, size, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    rle.decode(counts, size)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    rle.decode([b'2', counts], size, output_size=(4, 4)) if size == (
        2, 2) else rle.decode([counts], size, output_size=(4, 4))


def test_malformed_reports_the_mask():
  good = _counts(np.ones((2, 3, 3), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'counts of mask\] \[2\]'):
    rle.decode(good + [b'0q'], (3, 3))


@pytest.mark.parametrize('counts,size,message', MALFORMED)
def test_malformed_in_dataset_map(counts, size, message):
  ds = tf.data.Dataset.from_tensors((tf.constant([counts]),
                                     tf.constant(size, tf.int64)))
  ds = ds.map(lambda c, s: rle.decode(c, s, output_size=(3, 3)),
              num_parallel_calls=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    next(iter(ds))
  ds = tf.data.Dataset.from_tensors((tf.constant([counts]),
                                     tf.constant(size, tf.int64)))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    next(iter(ds.map(lambda c, s: rle.area(c, s))))


def test_bad_argument_shapes():
  with pytest.raises(ValueError, match='scalar string or a vector'):
    rle.decode([[b'4']], (2, 2))
  with pytest.raises(ValueError, match='size must be'):
    rle.decode(b'4', (2, 2, 1))


def test_encode_matches_pycocotools(cases):
  for shape, masks in cases:
    got = rle.encode(masks).numpy().tolist()
    assert got == _counts(masks), shape
    assert rle.encode(masks[3].astype(bool)).numpy() == _counts(masks)[3]
    np.testing.assert_array_equal(rle.decode(rle.encode(masks), shape),
                                  masks)
  for shape in ((0, 3), (3, 0)):
    expected = mask_utils.encode(np.zeros(shape + (1,), np.uint8,
                                          order='F'))[0]['counts']
    assert rle.encode(np.zeros(shape, np.uint8)).numpy() == expected
  # Large runs need several characters (and negative deltas).
  big = np.zeros((1, 300, 400), np.uint8)
  big[0, 5:290, 7:333] = 1
  big[0, 100:120, 50:60] = 0
  assert rle.encode(big).numpy().tolist() == _counts(big)


def test_encode_in_dataset_map():
  masks = _random_masks(np.random.default_rng(5), (11, 13), 6)
  ds = tf.data.Dataset.from_tensors(masks).map(rle.encode,
                                               num_parallel_calls=2)
  assert next(iter(ds)).numpy().tolist() == _counts(masks)


@pytest.mark.parametrize('threshold', [0.0, float('inf')])
def test_dense_and_run_fills(cases, monkeypatch, threshold):
  """Both fills, forced: dense (cumsum) and run-based (strings)."""
  monkeypatch.setattr(rle, '_DENSE_FILL_FLIPS_PER_PIXEL', threshold)
  for output_size in (None, (5, 13), (37, 41)):
    # A new tf.function traces again, reading the patched threshold.
    fn = tf.function(lambda c, s, o=output_size: rle.decode(c, s, o))
    for shape, masks in cases:
      got = fn(tf.constant(_counts(masks)), tf.constant(shape))
      np.testing.assert_array_equal(got.numpy(), _reference(masks,
                                                            output_size),
                                    err_msg=f'{shape} -> {output_size}')


# ------------------------------------------------------------ size overflow


def _count_string(runs) -> bytes:
  """COCO counts of arbitrary (Python int) runs, written as in the format."""
  out = bytearray()
  for i, run in enumerate(runs):
    x = run - runs[i - 2] if i > 2 else run
    more = True
    while more:
      c = x & 0x1f
      x >>= 5
      more = x != (-1 if c & 0x10 else 0)
      out.append(c + (0x20 if more else 0) + 48)
  return bytes(out)


def _runs_summing_to(total: int) -> list[int]:
  """Valid runs (each count fits 8 characters) summing to a huge `total`.

  Pairs of equal runs ramp up by 2**38 per pair and back down, then small
  pairs take the rest: about 2 * sqrt(total / 2**38) runs.
  """
  step = 2**38
  peak = 0
  while 2 * step * (peak + 1) ** 2 <= total:
    peak += 1
  values = list(range(peak + 1)) + list(range(peak - 1, 0, -1))
  runs = [v * step for v in values for _ in range(2)]
  rest = total - sum(runs)
  while rest >= 2 * step:
    runs += [step, step]
    rest -= 2 * step
  return runs + [rest // 2, rest - rest // 2]


def test_count_string_helper_matches_pycocotools(cases):
  for shape, masks in cases[:4]:
    for r in _encode(masks):
      runs = [int(v) for v in np.diff(np.flatnonzero(np.diff(np.concatenate(
          [[-1], mask_utils.decode(r).flatten(order='F'), [-1]]))))]
      if mask_utils.decode(r).flatten(order='F')[0]:
        runs = [0] + runs
      assert _count_string(runs) == r['counts']


HUGE = 2**62
OVERFLOWING = [
    # (counts, size): h * w wraps to 2**32 in int64, where the runs sum.
    ([_count_string([2**32])], [2**32 + 1, 2**32]),
    ([_count_string([2**32])], tf.constant([2**32 + 1, 2**32], tf.uint64)),
    # Sides beyond int64, as the uint64 SA-1B sizes can hold.
    ([b'0'], tf.constant([2**64 - 1, 0], tf.uint64)),
    ([b'0'], tf.constant([[2**63, 0]], tf.uint64)),
    # h * w fits, N masks laid end to end do not: N * (h*w + 1) >= 2**63.
    ([_count_string(_runs_summing_to(HUGE))] * 2, [2**31, 2**31]),
]


@pytest.mark.parametrize('counts,size', OVERFLOWING)
def test_size_overflow_raises_eagerly(counts, size):
  for fn in (lambda: rle.decode(counts, size),
             lambda: rle.decode(counts, size, output_size=(4, 4)),
             lambda: rle.area(counts, size),
             lambda: rle.to_bbox(counts, size)):
    with pytest.raises(tf.errors.InvalidArgumentError, match='too large'):
      fn()
  if len(counts) == 1 and np.ndim(size) == 1:
    with pytest.raises(tf.errors.InvalidArgumentError, match='too large'):
      rle.decode(counts[0], size)


def _overflowing_dataset() -> tf.data.Dataset:
  """The OVERFLOWING cases as (counts [None], uint64 size [2]) elements."""
  items = [(c, np.array(s, np.uint64).reshape(-1, 2)[0]) for c, s in
           OVERFLOWING]
  return tf.data.Dataset.from_generator(
      lambda: iter(items), output_signature=(
          tf.TensorSpec([None], tf.string), tf.TensorSpec([2], tf.uint64)))


def _assert_every_element_raises(ds: tf.data.Dataset) -> None:
  it = iter(ds)
  for _ in OVERFLOWING:
    with pytest.raises(tf.errors.InvalidArgumentError, match='too large'):
      next(it)
  with pytest.raises(StopIteration):
    next(it)


def test_size_overflow_raises_in_tf_function():
  fn = tf.function(lambda c, s: rle.decode(c, s), input_signature=[
      tf.TensorSpec([None], tf.string), tf.TensorSpec([2], tf.uint64)])
  for counts, size in _overflowing_dataset():
    with pytest.raises(tf.errors.InvalidArgumentError, match='too large'):
      fn(counts, size)
  # A constant size is refused while tracing, not by shape inference.
  with pytest.raises(tf.errors.InvalidArgumentError, match='too large'):
    tf.function(lambda c: rle.decode(c, [2**32 + 1, 2**32]))(
        tf.constant([_count_string([2**32])]))


@pytest.mark.parametrize('fn', [
    lambda c, s: rle.decode(c, s, output_size=(3, 3)), rle.area, rle.to_bbox])
def test_size_overflow_raises_in_dataset_map(fn):
  _assert_every_element_raises(
      _overflowing_dataset().map(fn, num_parallel_calls=2))


def test_huge_sizes_that_fit_still_work():
  """One 2**31 x 2**31 mask fits in int64: its area and samples are exact."""
  runs = _runs_summing_to(HUGE)
  counts = _count_string(runs)
  assert len(counts) < 100_000
  side = 2**31
  area = sum(runs[1::2])
  assert rle.area(counts, [side, side]).numpy() == area
  assert rle.area([counts], tf.constant([[side, side]], tf.uint64)
                  ).numpy().tolist() == [area]
  assert rle.to_bbox(counts, [side, side]).shape == (4,)
  # Pixel (r, c) is 1 when an odd number of run boundaries are <= c*h + r.
  boundaries = np.cumsum(runs)
  rows = rle.nearest_indices(side, 5).numpy()
  cols = rle.nearest_indices(side, 7).numpy()
  expected = np.searchsorted(boundaries, cols[None] * side + rows[:, None],
                             side='right') % 2
  got = rle.decode(counts, [side, side], output_size=(5, 7)).numpy()
  np.testing.assert_array_equal(got, expected)
  assert 0 < expected.sum() < expected.size


def test_output_size_overflow_raises():
  counts = _counts(np.ones((2, 3, 4), np.uint8))
  too_large = [(2**62, 2**62), (2**32, 2**31)]
  for output_size in too_large:
    with pytest.raises(tf.errors.InvalidArgumentError, match='2\\*\\*63'):
      rle.decode(counts, (3, 4), output_size=output_size)
  # Fits for one mask, not for two.
  with pytest.raises(tf.errors.InvalidArgumentError, match='2\\*\\*63'):
    rle.decode(counts, (3, 4), output_size=(2**31, 2**31))
  ds = tf.data.Dataset.from_tensor_slices(
      tf.constant(too_large + [(2**31, 2**31)], tf.int64)).map(
          lambda o: rle.decode(counts, (3, 4), output_size=o))
  it = iter(ds)
  for _ in range(3):
    with pytest.raises(tf.errors.InvalidArgumentError, match='2\\*\\*63'):
      next(it)
  with pytest.raises(tf.errors.InvalidArgumentError, match='2\\*\\*63'):
    tf.function(lambda c: rle.decode(c, (3, 4), output_size=(2**62, 2**62)))(
        tf.constant(counts))


# Results without pixels whose other side is as large as the size rule
# lets it be: (counts, size, output_size or None, expected shape).
EMPTY_RESULTS = [
    (b'0', [2**62, 0], None, (2**62, 0)),
    (b'0', [0, 2**62], None, (0, 2**62)),
    ([b'0', b''], [2**40, 0], None, (2, 2**40, 0)),
    ([], [2**31, 2**31], None, (0, 2**31, 2**31)),
    ([], [2**31, 2**31], (2**31, 2**31), (0, 2**31, 2**31)),
    (b'0', [0, 3], (0, 2**62), (0, 2**62)),
    (b'<', [3, 4], (2**62, 0), (2**62, 0)),  # '<': one run of 12.
]


def test_empty_results_allocate_nothing_per_row_or_column():
  """A mask of 2**62 x 0 pixels decodes to an empty array, eagerly, in a
  graph and in a dataset map, without a tensor over its 2**62 rows."""
  for counts, size, output_size, shape in EMPTY_RESULTS:
    got = rle.decode(counts, size, output_size=output_size)
    assert got.shape == shape and got.dtype == tf.uint8, (size, output_size)
  counts, size, _, shape = EMPTY_RESULTS[0]
  graph = tf.function(lambda c, s: rle.decode(c, s), input_signature=[
      tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)])
  assert graph(counts, size).shape == shape
  sizes = tf.data.Dataset.from_tensor_slices(
      tf.constant([s for _, s, o, _ in EMPTY_RESULTS[:2]], tf.int64))
  got = list(sizes.map(lambda s: rle.decode(b'0', s), num_parallel_calls=2,
                       deterministic=True))
  assert [tuple(t.shape) for t in got] == [(2**62, 0), (0, 2**62)]
  # Bad counts are still refused at such sizes.
  with pytest.raises(tf.errors.InvalidArgumentError, match='sum'):
    rle.decode(b'1', [2**62, 0])


# ------------------------------------------------- the build-time check
#
# Builds refuse what cannot decode (`examples.check_counts`) with one
# validator: the C pass `_rle.first_bad`, and its plain-Python
# reference `examples.first_bad_reference` (the fallback when the C pass is
# not built). Both must give the same verdict as each other and as the
# decoder, on every input.

# Sizes at the edges of the decoder's size rule (sides at most 2**62,
# (h + 1) * (w + 1) below 2**63), and ones whose product wraps int64.
EDGE_SIZES = [
    (0, 0), (0, 5), (5, 0), (1, 1), (-1, 5), (5, -1), (2**62, 0),
    (2**62 + 1, 0), (2**63 - 2, 0), (2**64, 0), (2**31 - 1, 2**32 - 2),
    (2**31, 2**32 - 1), (2**31, 2**31), (2**32, 2**32), (2**40, 2**40),
    (2**32 + 1, 2**32),
]
# One character of each class: counts' ends ('0'..'O'), continuations
# ('P'..'o'), just outside, control, Latin-1, BMP, astral, lone surrogates.
CHARACTER_CLASSES = [
    [chr(c) for c in range(48, 80)], [chr(c) for c in range(80, 112)],
    ['/', 'p', ' ', '\x7f', '\x00', '\n'], ['\u00e9', '\u00ff'],
    ['\u20ac', '\uffff'], ['\U0001f600'], ['\ud800', '\udfff', '\udc80'],
]


def _text(counts: bytes) -> str:
  return counts.decode('ascii')


def _mutants(rng, good: str, n: int) -> list[str]:
  """Strings near `good`: characters changed, cut, added, made to continue."""
  out = []
  for _ in range(n):
    s = list(good)
    kind = rng.integers(7)
    at = int(rng.integers(len(s)))
    if kind == 0:
      s[at] = chr(int(rng.integers(32, 127)))
    elif kind == 1:
      s = s[:at]
    elif kind == 2:
      s.insert(at, chr(int(rng.integers(48, 112))))
    elif kind == 3:
      s[at] = chr(int(rng.integers(80, 112)))  # A continuation character.
    elif kind == 4:
      s += list('P' * int(rng.integers(1, 10)))
    elif kind == 5:
      s[at] = str(rng.choice(sum(CHARACTER_CLASSES[3:], [])))
    else:
      s[at] = chr(int(rng.integers(48, 80)))  # An end character.
    out.append(''.join(s))
  return out


def _random_string(rng) -> str:
  """Characters drawn mostly from the alphabet, some from every class."""
  weights = np.array([40, 40, 2, 1, 1, 1, 1], float)
  classes = rng.choice(len(CHARACTER_CLASSES), size=int(rng.integers(0, 30)),
                       p=weights / weights.sum())
  return ''.join(str(rng.choice(CHARACTER_CLASSES[c])) for c in classes)


def _check_corpus() -> list[tuple[str, int, int]]:
  """(counts, height, width) cases, valid and hostile, for every checker."""
  rng = np.random.default_rng(2024)
  out = []
  # Real strings: pycocotools' encodings, and SA-1B records (backslashes).
  real = []
  for shape in SHAPES + [(300, 400)]:
    real += [(_text(c), *shape) for c in _counts(_random_masks(rng, shape, 6))]
  _, js = fake_data.image_record(rng, 7, height=40, width=30, num_masks=6,
                                 need_backslash=True)
  real += [(a['segmentation']['counts'], 40, 30)
           for a in json.loads(js)['annotations']]
  # Valid runs of random sizes, empty runs (non-canonical) included.
  for _ in range(300):
    h, w = (int(v) for v in rng.integers(1, 60, size=2))
    cuts = np.sort(rng.integers(0, h * w + 1, size=int(rng.integers(0, 12))))
    runs = np.diff(np.concatenate([[0], cuts, [h * w]])).tolist()
    real.append((_text(_count_string(runs)), h, w))
  out += real
  for text, h, w in real[::3]:
    out += [(m, h, w) for m in _mutants(rng, text, 8)]
  # Random strings, at small sizes and at the edges of the size rule.
  for _ in range(1000):
    h, w = (int(v) for v in rng.integers(0, 6, size=2))
    out.append((_random_string(rng), h, w))
  for h, w in EDGE_SIZES:
    out += [(_random_string(rng), h, w) for _ in range(3)]
    out += [('0', h, w), ('', h, w), (_text(_count_string([2**32])), h, w)]
  # Runs whose sum wraps int64 or uint64 to h*w, or lands past 2**63.
  for h, w in ((2, 3), (1500, 2250), (2**31 - 1, 2**32 - 2)):
    for total in (2**63 + h * w, 2**64 + h * w, 2**64 - 1, 2**65 + h * w,
                  h * w - 2**64, 2**62 + h * w):
      if total >= 0:
        out.append((_text(_count_string(_runs_summing_to(total))), h, w))
  huge = _runs_summing_to(2**62)
  out.append((_text(_count_string(huge)), 2**31, 2**31))  # Valid.
  out.append((_text(_count_string(huge)), 2**31, 2**31 - 1))
  # Counts at and past 8 characters (40 bits), negative runs and deltas.
  for runs in ([2**39 - 1], [2**39], [-2**39], [-2**39 - 1], [0, 2**39 - 1],
               [3, -1, 4], [5, -2, 9], [2, 3, 1, -5], [0, 6, 0, -6 + 12]):
    for h, w in ((3, 4), (1, 2**39 - 1), (2**20, 2**19)):
      out.append((_text(_count_string(runs)), h, w))
  for k in range(6, 11):
    for end in '0OP':
      out.append(('1' + 'o' * k + end, 2, 2**38))
      out.append(('1' + 'P' * k + end, 2, 2))
  return out


def _decodes(counts: str, h: int, w: int) -> bool:
  """Whether the TF codec reads `counts` at size (h, w).

  Larger sizes are checked with `rle.area`, which parses with the same
  checks as `decode` but allocates nothing from the size.
  """
  if max(h, w) >= 2**64:
    return False  # Not even a uint64 tensor holds the size.
  data = counts.encode('utf-8', 'surrogatepass')
  size = (tf.constant([h, w], tf.uint64) if max(h, w) >= 2**63 else [h, w])
  try:
    if 0 <= min(h, w) and max(h, w) <= 10**5:
      rle.decode(data, size)
    else:
      rle.area(data, size)
  except tf.errors.InvalidArgumentError:
    return False
  return True


def test_c_check_reference_and_decoders_agree_on_every_input():
  """The C pass and the Python reference give the same (index, code,
  detail) on real, mutated, random and adversarial strings; what they pass
  the TF codec decodes and what they refuse it refuses; and what they pass
  at a small size pycocotools decodes to the same mask."""
  if examples._rle is None:
    pytest.skip('the C extension is not built here')
  corpus = _check_corpus()
  assert len(corpus) > 1500
  accepted = 0
  for counts, h, w in corpus:
    c_verdict = examples._rle.first_bad([counts], h, w)
    reference = examples.first_bad_reference([counts], h, w)
    assert c_verdict == reference, (counts[:80], h, w)
    ok = reference is None
    assert _decodes(counts, h, w) == ok, (counts[:80], h, w, reference)
    accepted += ok
    if ok and 0 < h * w <= 10**5:
      np.testing.assert_array_equal(
          mask_utils.decode({'size': [h, w], 'counts': counts.encode()}),
          rle.decode(counts, [h, w]).numpy())
  assert 300 < accepted < len(corpus) - 1000
  # Lists of strings: the first bad one, by index, the same in both.
  rng = np.random.default_rng(7)
  for _ in range(300):
    picks = rng.integers(len(corpus), size=int(rng.integers(1, 6)))
    _, h, w = corpus[int(picks[-1])]
    counts = [corpus[int(i)][0] for i in picks]
    if rng.random() < 0.2:  # Not text: refused as such.
      not_text = [None, b'0', 0, ['0']]
      counts.insert(int(rng.integers(len(counts))),
                    not_text[int(rng.integers(len(not_text)))])
    assert (examples._rle.first_bad(counts, h, w)
            == examples.first_bad_reference(counts, h, w)), (counts, h, w)


def test_counts_whose_runs_wrap_int64_are_refused_by_every_checker(
    monkeypatch):
  """Runs summing to 2**64 + h*w (h*w in int64 arithmetic) are refused with
  the C pass and without it, as the decoder refuses them."""
  h, w = 1500, 2250
  counts = _text(_count_string(_runs_summing_to(2**64 + h * w)))
  assert len(counts) < 200_000
  assert not _decodes(counts, h, w)
  checks = [None] if examples._rle is None else [examples._rle,
                                                      None]
  for check in checks:
    monkeypatch.setattr(examples, '_rle', check)
    with pytest.raises(errors.BadInputError,
                       match=r'annotations\[1\].segmentation.counts has runs'
                       rf' summing to \d+\+, not h\*w = {h}\*{w}'):
      examples.check_counts(
          np.array([_text(_count_string([h * w])), counts], object),
          np.zeros(2, np.uint64), height=h, width=w, where=('t', 'm'))


@pytest.mark.parametrize('h, w', [(2**32, 2**32), (2**40, 2**40),
                                  (2**63, 2), (2**31, 2**32 - 1)])
def test_sizes_past_int64_are_refused_by_every_checker(monkeypatch, h, w):
  """h*w wraps int64 (once "0" passed): refused before any count is read."""
  assert not _decodes('0', h, w)
  checks = [None] if examples._rle is None else [examples._rle,
                                                      None]
  for check in checks:
    monkeypatch.setattr(examples, '_rle', check)
    with pytest.raises(errors.BadInputError,
                       match=rf'annotations\[0\].segmentation.counts cannot'
                       rf' decode at the size {h} x {w}: .* \[bad_rle\]$'):
      examples.check_counts(np.array(['0', '0'], object),
                            np.zeros(2, np.uint64), height=h, width=w,
                            where=('t', 'm'))


# ------------------------------------------------- the numpy path's decoder
#
# `numpy_inputs.decode_masks_np` decodes straight at a low resolution, in C
# (`_rle.decode`, the check's parser), or by `rle.decode` run eagerly where
# the extension is not built. The same masks as `rle.decode`, bit for bit,
# and the same strings refused as the check refuses.

_c_rle = npi._rle  # pylint: disable=protected-access
_DECODERS = ['c', 'tf'] if _c_rle is not None else ['tf']


@pytest.fixture(params=_DECODERS)
def np_decoder(request, monkeypatch):
  """decode_masks_np with the C decoder ('c') and without it ('tf')."""
  if request.param == 'tf':
    monkeypatch.setattr(npi, '_rle', None)
  return request.param


def _sa1b_counts(rng, shape, n: int) -> list[bytes]:
  """pycocotools' counts of SA-1B-like blobs (fake_data), as SA-1B has."""
  masks = np.stack([fake_data.random_mask(rng, *shape) for _ in range(n)])
  return _counts(masks.astype(np.uint8))


# (source size, output sizes): what SAM inputs use (long side 256 and 64 for
# SA-1B's 1500 x 2250), odd sizes, 1 x 1, and upsampling.
DECODE_SIZES = [
    ((1500, 2250), [(171, 256), (43, 64), (256, 256), (37, 41), (1, 1)]),
    ((2250, 1500), [(256, 171), (64, 43)]),
    ((23, 31), [(256, 256), (64, 43), (23, 31), (5, 13), (40, 17)]),
    ((1, 9), [(1, 1), (3, 4), (64, 64)]),
]


def test_numpy_decoder_equals_rle_decode(np_decoder):
  """On SA-1B-like strings and on random masks (noise, stripes, empty,
  full), at every output size used, into uint8, float32 and strided
  views of zero-padded targets."""
  rng = np.random.default_rng(22)
  for shape, sizes in DECODE_SIZES:
    counts = _sa1b_counts(rng, shape, 4 if shape[0] > 100 else 6)
    if shape[0] < 100:
      counts += _counts(_random_masks(rng, shape, 12))
    for out_h, out_w in sizes:
      expected = rle.decode(counts, shape, output_size=(out_h, out_w)).numpy()
      got = npi.decode_masks_np(counts, *shape, (out_h, out_w))
      assert got.dtype == np.uint8
      np.testing.assert_array_equal(got, expected, err_msg=(shape, out_h))
      padded = np.zeros((len(counts) + 2, out_h + 3, out_w + 5), np.float32)
      view = padded[1:-1, 2:2 + out_h, :out_w]
      assert npi.decode_masks_np([c.decode() for c in counts], *shape,
                                 (out_h, out_w), out=view) is view
      np.testing.assert_array_equal(view, expected)
      assert padded.sum() == expected.sum()  # Nothing outside the view.
  assert npi.decode_masks_np([], 5, 7, (2, 3)).shape == (0, 2, 3)


def _c_verdict(counts: list, h: int, w: int):
  """_rle.decode's verdict on strings of an h x w mask, at a small size."""
  fits = examples.first_problem('', h, w) != (examples._SIZE, 0)  # pylint: disable=protected-access
  out_h, out_w = (2, 3) if fits and h * w > 0 else (0, 0)
  rows = (geometry.nearest_indices(h, out_h) if fits
          else np.zeros(out_h, np.int64))
  cols = (geometry.nearest_indices(w, out_w) if fits
          else np.zeros(out_w, np.int64))
  out = np.zeros((len(counts), out_h, out_w), np.uint8)
  return _c_rle.decode(counts, h, w, rows, cols, out), out


def test_c_decoder_refuses_what_the_check_refuses():
  """The same (index, code, detail) as the build-time check on real,
  mutated, random and adversarial strings (as str, and as bytes where they
  are one byte per character); what it accepts it paints as rle.decode."""
  if _c_rle is None:
    pytest.skip('the C extension is not built here')
  painted = 0
  for counts, h, w in _check_corpus():
    reference = examples.first_bad_reference([counts], h, w)
    got, out = _c_verdict([counts], h, w)
    assert got == reference, (counts[:80], h, w)
    try:
      as_bytes = counts.encode('latin-1')
    except UnicodeEncodeError:
      continue
    got, out = _c_verdict([as_bytes, as_bytes], h, w)
    assert got == reference, (counts[:80], h, w)
    if reference is None and out.size and painted < 200:
      painted += 1
      expected = rle.decode(as_bytes, [h, w], output_size=(2, 3)).numpy()
      np.testing.assert_array_equal(out, [expected, expected])
  assert painted == 200


def test_c_decoder_survives_random_bytes():
  """Random bytes (every byte value) at random small sizes: never a crash,
  the check's verdict, and the TF decoder's pixels when they decode."""
  if _c_rle is None:
    pytest.skip('the C extension is not built here')
  rng = np.random.default_rng(5)
  alphabet = np.concatenate([np.arange(48, 112)] * 6 + [np.arange(256)])
  decoded = 0
  for _ in range(5000):
    h, w = (int(v) for v in rng.integers(0, 5, size=2))
    if rng.random() < 0.3:  # Any bytes.
      data = bytes(rng.choice(alphabet, size=int(rng.integers(0, 12))
                              ).astype(np.uint8))
    else:  # Valid runs, a few bytes changed to any value.
      cuts = np.sort(rng.integers(0, h * w + 1, size=int(rng.integers(0, 6))))
      data = bytearray(_count_string(
          np.diff(np.concatenate([[0], cuts, [h * w]])).tolist()))
      for _ in range(int(rng.integers(0, 3))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
      data = bytes(data)
    reference = examples.first_bad_reference([data.decode('latin-1')], h, w)
    got, out = _c_verdict([data], h, w)
    assert got == reference, (data, h, w)
    if reference is None and out.size and decoded < 100:
      decoded += 1
      np.testing.assert_array_equal(
          out[0], rle.decode(data, [h, w], output_size=(2, 3)).numpy())
  assert decoded == 100


def test_numpy_decoder_errors(np_decoder):
  """A bad string is a BadRecordError naming it, with and without C."""
  good = _counts(np.ones((1, 3, 4), np.uint8))[0]
  with pytest.raises(errors.BadRecordError, match=r'(counts\[1\]|mask).*'
                     r'(outside "0".."o"|outside)'):
    npi.decode_masks_np([good, b'a!'], 3, 4, (2, 2))
  with pytest.raises(errors.BadRecordError, match='sum'):
    npi.decode_masks_np([good], 3, 5, (2, 2))
  if np_decoder == 'c':
    with pytest.raises(errors.BadRecordError,
                       match=r'counts\[0\] cannot decode at the size'):
      npi.decode_masks_np([good], 2**62, 2**62, (2, 2))
  with pytest.raises(errors.BadRecordError, match='empty|non-empty'):
    npi.decode_masks_np([b'0'], 0, 4, (2, 2))
  # An empty result needs no pixels.
  assert npi.decode_masks_np([b'0'], 0, 4, (0, 2)).shape == (1, 0, 2)


def test_c_decoder_argument_checks():
  if _c_rle is None:
    pytest.skip('the C extension is not built here')
  counts = _counts(np.ones((2, 3, 4), np.uint8))
  rows, cols = np.array([0, 2]), np.array([0, 1, 3])
  bad_outs = [np.zeros((2, 2, 3), np.int32), np.zeros((2, 3, 3), np.uint8),
              np.zeros((1, 2, 3), np.float32),
              np.zeros((2, 2, 3), np.uint8)[:, :, ::1].copy().view('i1')]
  for out in bad_outs:
    with pytest.raises(ValueError, match='out must'):
      _c_rle.decode(counts, 3, 4, rows, cols, out)
  out = np.zeros((2, 2, 3), np.uint8)
  for rows_, cols_ in [(np.array([0, 3]), cols), (np.array([2, 0]), cols),
                       (rows, np.array([0, 1, 4])),
                       (rows, np.array([0, 1, -1]))]:
    with pytest.raises(ValueError, match='non-decreasing indices inside'):
      _c_rle.decode(counts, 3, 4, rows_, cols_, out)
  with pytest.raises(ValueError, match='int64'):
    _c_rle.decode(counts, 3, 4, rows.astype(np.int32), cols, out)
  read_only = out.copy()
  read_only.flags.writeable = False
  with pytest.raises((BufferError, ValueError), match='read-only'):
    _c_rle.decode(counts, 3, 4, rows, cols, read_only)
  assert _c_rle.decode(counts, 3, 4, rows, cols, out) is None
  assert out.all()


# ------------------------------------------------------------ iou and merge


def _sa1b_like(rng: np.random.Generator, shape, n: int) -> np.ndarray:
  """Blobs as in SA-1B, plus the edge cases, uint8 [n + 5, H, W]."""
  h, w = shape
  blobs = [fake_data.random_mask(rng, h, w) for _ in range(n)]
  empty = np.zeros(shape, bool)
  full = np.ones(shape, bool)
  one_pixel = empty.copy()
  one_pixel[rng.integers(h), rng.integers(w)] = True
  last_column = empty.copy()
  last_column[h // 3:, -1] = True
  corner = empty.copy()
  corner[-1, -1] = True
  return np.stack(blobs + [empty, full, one_pixel, last_column, corner]
                  ).astype(np.uint8)


def _iou_reference(dt: np.ndarray, gt: np.ndarray, crowd) -> np.ndarray:
  """pycocotools' IoU as float32, [] reshaped to [Nd, Ng]."""
  ref = mask_utils.iou(_encode(dt) if len(dt) else [],
                       _encode(gt) if len(gt) else [], list(crowd))
  return np.asarray(ref, np.float64).reshape(len(dt), len(gt)).astype(
      np.float32)


@pytest.fixture(scope='module')
def iou_cases():
  rng = np.random.default_rng(321)
  out = []
  for shape in ((1, 1), (7, 5), (30, 45), (64, 48)):
    dt = _sa1b_like(rng, shape, 8)
    gt = _sa1b_like(rng, shape, 6)[rng.permutation(11)]
    crowd = rng.random(len(gt)) < 0.4
    out.append((shape, dt, gt, crowd))
  shape = (23, 31)
  noise = _random_masks(rng, shape, 12)
  out.append((shape, noise[:7], noise[5:], rng.random(7) < 0.5))
  return out


def test_iou_matches_pycocotools(iou_cases):
  for shape, dt, gt, crowd in iou_cases:
    dt_counts, gt_counts = _counts(dt), _counts(gt)
    got = rle.iou(dt_counts, gt_counts, shape).numpy()
    assert got.dtype == np.float32 and got.shape == (len(dt), len(gt))
    np.testing.assert_array_equal(got, _iou_reference(dt, gt, [0] * len(gt)),
                                  err_msg=str(shape))
    got = rle.iou(dt_counts, gt_counts, shape, crowd).numpy()
    np.testing.assert_array_equal(got, _iou_reference(dt, gt, crowd),
                                  err_msg=str(shape))
    assert (got > 0).any() and (got < 1).any()


def test_iou_on_sa1b_strings_with_backslashes():
  """The annotations of the bundled SA-1B-like data, byte for byte."""
  from conftest import DUMMY_DATA, read_inputs  # pylint: disable=g-import-not-at-top
  seen_backslash = False
  for _, record in read_inputs(DUMMY_DATA).values():
    anns = record['annotations']
    if not anns:
      continue
    size = anns[0]['segmentation']['size']
    rles = [dict(a['segmentation'], counts=a['segmentation']['counts'].encode())
            for a in anns]
    counts = [r['counts'] for r in rles]
    seen_backslash |= any(b'\\' in c for c in counts)
    ref = np.asarray(mask_utils.iou(rles, rles[::-1], [0] * len(rles)))
    got = rle.iou(counts, counts[::-1], size).numpy()
    np.testing.assert_array_equal(got, ref.astype(np.float32))
    sizes = tf.constant([size] * len(counts), tf.uint64)
    np.testing.assert_array_equal(
        rle.iou(counts, counts[::-1], sizes).numpy(), got)
  assert seen_backslash


def test_iou_empty_sides_and_scalars():
  masks = _sa1b_like(np.random.default_rng(3), (9, 11), 2)
  counts = _counts(masks)
  none = tf.constant([], tf.string)
  assert rle.iou(none, counts, (9, 11)).shape == (0, len(counts))
  assert rle.iou(counts, none, (9, 11), []).shape == (len(counts), 0)
  assert rle.iou(none, none, (9, 11)).shape == (0, 0)
  # The per-mask sizes of an image without masks are [0, 2].
  assert rle.iou(none, counts, tf.zeros([0, 2], tf.uint64),
                 gt_size=(9, 11)).shape == (0, len(counts))
  got = rle.iou(counts[0], counts, (9, 11)).numpy()
  np.testing.assert_array_equal(got, _iou_reference(masks[:1], masks,
                                                    [0] * len(masks)))


def test_iou_size_and_crowd_errors():
  counts = _counts(np.ones((2, 3, 4), np.uint8))
  other = _counts(np.ones((1, 4, 4), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='same size'):
    rle.iou(counts, other, (3, 4), gt_size=(4, 4))
  with pytest.raises(tf.errors.InvalidArgumentError, match='same size'):
    rle.iou(counts, counts, [[3, 4], [4, 3]])
  with pytest.raises(tf.errors.InvalidArgumentError, match='do not sum'):
    rle.iou(counts, other, (3, 4))
  with pytest.raises(tf.errors.InvalidArgumentError, match='one entry per gt'):
    rle.iou(counts, counts, (3, 4), [0])


def _interval_masks_counts(intervals_per_mask, hw):
  """Counts of masks given as sorted disjoint 1-intervals [s, e) of pixels."""
  out = []
  for intervals in intervals_per_mask:
    runs, pos = [], 0
    for s, e in intervals:
      runs += [s - pos, e - s]
      pos = e
    out.append(_count_string(runs + [hw - pos]))
  return out


def _overlap(a, b) -> int:
  return sum(max(0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def test_iou_and_merge_never_decode_pixels():
  """10**6 x 10**6 masks (a dense decode would need 10**12 bytes each)."""
  h = w = 10**6
  hw = h * w
  rng = np.random.default_rng(8)
  masks = []
  for _ in range(6):
    cuts = np.sort(rng.choice(hw, size=8, replace=False)).tolist()
    masks.append(list(zip(cuts[::2], cuts[1::2])))
  counts = _interval_masks_counts(masks, hw)
  areas = [sum(e - s for s, e in m) for m in masks]
  expected = np.array([[_overlap(a, b) / (aa + ab - _overlap(a, b))
                        for b, ab in zip(masks, areas)]
                       for a, aa in zip(masks, areas)])
  got = rle.iou(counts, counts, (h, w)).numpy()
  np.testing.assert_array_equal(got, expected.astype(np.float32))
  # The union: the intervals of all masks, merged.
  points = sorted([(s, 1) for m in masks for s, _ in m] +
                  [(e, -1) for m in masks for _, e in m])
  union, cover, start = [], 0, 0
  for p, step in points:
    if cover == 0 and step == 1:
      start = p
    cover += step
    if cover == 0:
      union.append((start, p))
  union = [iv for iv in union if iv[0] < iv[1]]
  merged_pieces = []
  for s, e in union:  # Touching intervals make one run.
    if merged_pieces and merged_pieces[-1][1] == s:
      merged_pieces[-1] = (merged_pieces[-1][0], e)
    else:
      merged_pieces.append((s, e))
  assert rle.merge(counts, (h, w)).numpy() == _interval_masks_counts(
      [merged_pieces], hw)[0]


def test_merge_matches_pycocotools(iou_cases):
  rng = np.random.default_rng(4)
  for shape, dt, gt, _ in iou_cases:
    masks = np.concatenate([dt, gt])
    rles = _encode(masks)
    subsets = [[i] for i in range(len(rles))] + [
        list(rng.choice(len(rles), size=k, replace=False))
        for k in (2, 2, 3, 5, len(rles))]
    for intersect in (False, True):
      for subset in subsets:
        expected = mask_utils.merge([rles[i] for i in subset],
                                    intersect=intersect)['counts']
        got = rle.merge([rles[i]['counts'] for i in subset], shape,
                        intersect=intersect).numpy()
        assert got == expected, (shape, subset, intersect)
  # A scalar string is one mask.
  assert rle.merge(rles[0]['counts'], shape).numpy() == rles[0]['counts']


def test_merge_of_non_canonical_counts_is_canonical():
  # Runs 2, 0, 0, 3, 1 on 2x3: empty runs in the middle; canonical: 2, 3, 1.
  counts = [_count_string([2, 0, 0, 3, 1]), _count_string([1, 1, 4])]
  rles = [{'size': [2, 3], 'counts': c} for c in counts]
  for intersect in (False, True):
    got = rle.merge(counts, (2, 3), intersect=intersect)
    expected = mask_utils.merge(rles, intersect=intersect)
    np.testing.assert_array_equal(rle.decode(got, (2, 3)).numpy(),
                                  mask_utils.decode(expected))
    assert got.numpy() == rle.encode(mask_utils.decode(expected)).numpy()
  assert rle.merge(counts[:1], (2, 3)).numpy() == _count_string([2, 3, 1])


def test_merge_errors():
  counts = _counts(np.ones((2, 3, 4), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='at least one'):
    rle.merge(tf.constant([], tf.string), (3, 4))
  with pytest.raises(tf.errors.InvalidArgumentError, match='same size'):
    rle.merge(counts, [[3, 4], [4, 3]])
  with pytest.raises(tf.errors.InvalidArgumentError, match='do not sum'):
    rle.merge(counts, (4, 4))


def test_iou_and_merge_in_tf_function_and_dataset_map(iou_cases):
  shape, dt, gt, crowd = iou_cases[2]
  dt_counts, gt_counts = _counts(dt), _counts(gt)
  expected_iou = _iou_reference(dt, gt, crowd)
  expected_union = mask_utils.merge(_encode(gt))['counts']
  expected_inter = mask_utils.merge(_encode(gt[:2]), intersect=True)['counts']

  def fn(d, g, s, c):
    return (rle.iou(d, g, s, c), rle.merge(g, s),
            rle.merge(g[:2], s, intersect=True))

  def check(result):
    got_iou, union, inter = (t.numpy() for t in result)
    np.testing.assert_array_equal(got_iou, expected_iou)
    assert union == expected_union and inter == expected_inter

  args = (tf.constant(dt_counts), tf.constant(gt_counts),
          tf.constant(shape, tf.int64), tf.constant(crowd))
  traced = tf.function(fn)
  check(traced(*args))
  ops = op_types(traced.get_concrete_function(*args).graph.as_graph_def())
  assert 'UpperBound' in ops and not ops & PYTHON_OPS
  # The last element has a wrong size: the error surfaces in the dataset.
  bad_args = args[:2] + (tf.constant([1, 1], tf.int64), args[3])
  ds = tf.data.Dataset.from_tensors(args).repeat(3).concatenate(
      tf.data.Dataset.from_tensors(bad_args)).map(fn, num_parallel_calls=2)
  it = iter(ds)
  for _ in range(3):
    check(next(it))
  with pytest.raises(tf.errors.InvalidArgumentError, match='do not sum'):
    next(it)
  assert not dataset_ops(ds) & PYTHON_OPS
