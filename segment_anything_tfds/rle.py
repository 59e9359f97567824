"""COCO compressed RLE, decoded with TensorFlow ops only.

SA-1B stores every mask as a COCO run-length encoding (RLE): a `size`
``(height, width)`` and a `counts` string. This module decodes such strings in
pure TensorFlow (no ``tf.numpy_function`` / ``tf.py_function``), so the same
code runs eagerly, inside ``tf.function``, inside ``tf.data`` maps with
``num_parallel_calls`` and under the tf.data service. Results are bit-for-bit
equal to ``pycocotools.mask.decode`` (and ``area`` / ``toBbox``).

The counts format
-----------------
The mask is flattened in column-major (Fortran) order and split into runs that
alternate 0, 1, 0, 1, ... starting with a (possibly empty) run of zeros. The
run lengths ("counts") are written as a string:

* every character is in ``'0'..'o'`` (bytes 48..111); ``c = byte - 48``;
* each count is a little-endian sequence of 5-bit groups: a character carries
  the data bits ``c & 0x1f`` and a continuation bit ``c & 0x20`` (LEB128-like:
  the count continues while the bit is set);
* the value is sign-extended from bit ``0x10`` of its last character;
* count ``i`` for ``i >= 3`` is stored as a delta against count ``i - 2``
  (pycocotools ``rleFrString``: ``if (m > 2) x += cnts[m - 2]``).

How decoding works
------------------
The run boundaries ``B_k = counts[0] + ... + counts[k]`` are column-major
linear pixel indices where the value flips (+1 after a 0-run, -1 after a
1-run). An output pixel ``(i, j)`` samples source pixel ``(r_i, c_j)``
(identity at full resolution; TF's ``'nearest'`` rule with
``half_pixel_centers=True`` for ``output_size``). Each boundary lying in a
sampled column is scattered (as +1 / -1 in ``uint8``) to the first output row
that samples at or below it; the value of the first output row of each column
comes from ``tf.searchsorted`` over the boundaries. A ``uint8`` cumulative sum
down the rows then yields exactly 0 or 1. The cost grows with the number of
runs and the output size, never with ``height * width`` when the output is
smaller, and no full-resolution mask is materialized for ``output_size``.

Malformed counts (characters out of range, an unfinished continuation, a count
longer than 8 characters, negative runs, runs that do not sum to
``height * width``) raise ``tf.errors.InvalidArgumentError``.
"""

from __future__ import annotations

from typing import Sequence, Union

import tensorflow as tf

__all__ = ['decode', 'area', 'to_bbox', 'nearest_indices']

TensorLike = Union[tf.Tensor, Sequence, int, str, bytes]

# Longest count accepted, in characters: 8 * 5 = 40 bits, signed, so a run
# may hold up to 2**39 - 1 pixels (pycocotools itself stores 32-bit runs).
_MAX_CHARS_PER_COUNT = 8


class _Runs:
  """Parsed runs of N masks (flat over masks), see `_parse`."""

  def __init__(self, *, counts, mask_ids, index_in_mask, first_run,
               num_masks, height, width, check):
    self.counts = counts  # int64 [M] run lengths of all masks, concatenated.
    self.mask_ids = mask_ids  # int64 [M] mask of each run.
    self.index_in_mask = index_in_mask  # int64 [M] run index within its mask.
    self.first_run = first_run  # int64 [N + 1] first run of each mask.
    self.num_masks = num_masks  # int64 scalar N.
    self.height = height  # int64 scalar.
    self.width = width  # int64 scalar.
    self.check = check  # List of assertion ops validating the runs.

  def boundaries(self) -> tf.Tensor:
    """Inclusive per-mask cumulative sums of the runs, int64 [M]."""
    cum = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(self.counts)], 0)
    return cum[1:] - tf.gather(cum, tf.gather(self.first_run, self.mask_ids))


def _as_counts(counts: TensorLike) -> tuple[tf.Tensor, bool]:
  counts = tf.convert_to_tensor(counts, dtype=tf.string, name='counts')
  if counts.shape.rank not in (0, 1):
    raise ValueError(
        'rle: counts must be a scalar string or a vector [N] of strings, got'
        f' shape {counts.shape}.')
  scalar = counts.shape.rank == 0
  return tf.reshape(counts, [-1]), scalar


def _as_size(size: TensorLike) -> tuple[tf.Tensor, tf.Tensor, list]:
  """Returns (height, width, checks) as int64 scalars from [2] or [N, 2]."""
  size = tf.convert_to_tensor(size, name='size')
  if size.dtype == tf.uint64:
    size = tf.cast(tf.minimum(size, tf.constant(2**62, tf.uint64)), tf.int64)
  else:
    size = tf.cast(size, tf.int64)
  checks = []
  if size.shape.rank == 2:
    # Per-mask sizes [N, 2] (as stored in SA-1B): all masks of one image must
    # share one size.
    if size.shape[-1] is not None and size.shape[-1] != 2:
      raise ValueError(f'rle: size must be [2] or [N, 2], got {size.shape}.')
    first = tf.reduce_max(size, axis=0)
    first = tf.reshape(tf.pad(first, [[0, 2 - tf.minimum(tf.size(first), 2)]]),
                       [2])
    checks.append(tf.debugging.Assert(
        tf.reduce_all(tf.equal(size, first[None])),
        ['rle: all masks of one call must have the same size; got sizes',
         size], summarize=8))
    size = first
  elif size.shape.rank != 1 or (size.shape[0] is not None and
                                size.shape[0] != 2):
    raise ValueError(f'rle: size must be [2] = (height, width) or [N, 2], got'
                     f' shape {size.shape}.')
  checks.append(tf.debugging.Assert(
      tf.reduce_all(size >= 0), ['rle: size must be non-negative, got', size]))
  return size[0], size[1], checks


def _parse(counts: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> _Runs:
  """Parses the counts strings [N] of masks of size (height, width)."""
  num_masks = tf.size(counts, out_type=tf.int64)
  lengths = tf.strings.length(counts)
  ends_of_strings = tf.cumsum(tf.cast(lengths, tf.int64))
  data = tf.io.decode_raw(tf.strings.reduce_join(counts), tf.uint8)
  c = tf.cast(data, tf.int32) - 48
  positions = tf.range(tf.size(c, out_type=tf.int64))

  # Check 1: characters in range, and every string ends a count.
  bad_char = tf.logical_or(c < 0, c > 63)
  first_bad = tf.argmax(tf.cast(bad_char, tf.int32), output_type=tf.int64)
  bad_mask = tf.searchsorted(ends_of_strings, first_bad[None],
                             side='right')[0]
  safe_first = tf.minimum(first_bad,
                          tf.maximum(tf.size(data, out_type=tf.int64) - 1, 0))
  check_chars = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(bad_char)),
      ['rle: the counts of mask', bad_mask, "have a character outside"
       " '0'..'o' (bytes 48..111) at byte",
       first_bad - tf.gather(tf.concat([[0], ends_of_strings], 0), bad_mask),
       'with value', tf.cast(tf.gather(data, safe_first), tf.int32)])
  nonempty = lengths > 0
  last_chars = tf.gather(c, tf.boolean_mask(ends_of_strings - 1, nonempty))
  unfinished = tf.bitwise.bitwise_and(last_chars, 32) != 0
  check_ends = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(unfinished)),
      ['rle: unfinished count (last character has the continuation bit'
       ' 0x20 set) at the end of the counts of mask(s)',
       tf.boolean_mask(tf.boolean_mask(tf.range(num_masks), nonempty),
                       unfinished)], summarize=10)
  with tf.control_dependencies([check_chars, check_ends]):
    c = tf.identity(c)

  # Split the characters into counts.
  is_end = tf.bitwise.bitwise_and(c, 32) == 0
  count_ends = tf.where(is_end)[:, 0]  # int64 [M]
  num_counts = tf.size(count_ends, out_type=tf.int64)
  count_starts = tf.concat([[0], count_ends[:-1] + 1], 0)
  count_ids = tf.cumsum(tf.cast(is_end, tf.int64), exclusive=True)
  count_ids = tf.minimum(count_ids, tf.maximum(num_counts - 1, 0))
  k = positions - tf.gather(count_starts, count_ids)
  too_long = k >= _MAX_CHARS_PER_COUNT
  check_long = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(too_long)),
      ['rle: a count is longer than', _MAX_CHARS_PER_COUNT, 'characters, in'
       ' mask', tf.searchsorted(
           ends_of_strings,
           tf.argmax(tf.cast(too_long, tf.int32), output_type=tf.int64)[None],
           side='right')[0]])
  with tf.control_dependencies([check_long]):
    k = tf.identity(k)
  bits = tf.bitwise.left_shift(
      tf.cast(tf.bitwise.bitwise_and(c, 31), tf.int64), 5 * k)
  x = tf.math.unsorted_segment_sum(bits, count_ids,
                                   tf.maximum(num_counts, 1))[:num_counts]
  last = tf.gather(c, count_ends)
  last_k = tf.gather(k, count_ends)
  negative = tf.bitwise.bitwise_and(last, 16) != 0
  x = tf.where(negative,
               x - tf.bitwise.left_shift(tf.ones_like(x), 5 * (last_k + 1)), x)

  # Which mask each count belongs to, and its index there.
  mask_ids = tf.searchsorted(ends_of_strings, count_ends, side='right',
                             out_type=tf.int64)
  first_run = tf.searchsorted(mask_ids, tf.range(num_masks + 1),
                              side='left', out_type=tf.int64)
  j = tf.range(num_counts) - tf.gather(first_run, mask_ids)

  # Undo the deltas: count j >= 3 is stored relative to count j - 2, so the
  # odd counts and the even counts from index 2 on are running sums.
  odd = tf.equal(j % 2, 1)
  even = tf.logical_and(tf.logical_not(odd), j >= 2)
  zero = tf.zeros([1], tf.int64)

  def running(select):
    cum = tf.concat([zero, tf.cumsum(tf.where(select, x, 0))], 0)
    return cum[1:] - tf.gather(cum, tf.gather(first_run, mask_ids))

  runs = tf.where(odd, running(odd), tf.where(even, running(even), x))

  total = tf.math.unsorted_segment_sum(runs, mask_ids, num_masks)
  expected = height * width
  negative_run = runs < 0
  check_negative = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(negative_run)),
      ['rle: negative run length in the counts of mask(s)',
       tf.unique(tf.boolean_mask(mask_ids, negative_run))[0]], summarize=10)
  wrong_total = tf.not_equal(total, expected)
  check_total = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(wrong_total)),
      ['rle: runs do not sum to height * width =', expected, '(size',
       height, 'x', width, ') for mask(s)',
       tf.where(wrong_total)[:, 0], 'sums:',
       tf.boolean_mask(total, wrong_total)], summarize=10)
  return _Runs(counts=runs, mask_ids=mask_ids, index_in_mask=j,
               first_run=first_run, num_masks=num_masks, height=height,
               width=width, check=[check_negative, check_total])


def nearest_indices(in_size: TensorLike, out_size: TensorLike) -> tf.Tensor:
  """Source indices sampled by ``tf.image.resize(..., method='nearest')``.

  TF 2's nearest resize uses ``half_pixel_centers=True`` and
  ``align_corners=False``: ``min(floor((i + 0.5) * (in / out)), in - 1)``,
  computed in float32 exactly like the ``ResizeNearestNeighbor`` kernel.

  Args:
    in_size: source length (int scalar).
    out_size: output length (int scalar).

  Returns:
    int64 [out_size] non-decreasing source indices.
  """
  in_size = tf.cast(in_size, tf.int64)
  out_size = tf.cast(out_size, tf.int64)
  scale = tf.cast(in_size, tf.float32) / tf.cast(tf.maximum(out_size, 1),
                                                 tf.float32)
  x = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale
  idx = tf.cast(tf.floor(x), tf.int64)
  return tf.maximum(tf.minimum(idx, in_size - 1), 0)


def decode(counts: TensorLike,
           size: TensorLike,
           output_size: Sequence[int] | tf.Tensor | None = None,
           ) -> tf.Tensor:
  """Decodes COCO compressed RLE masks (see module docstring for the format).

  Args:
    counts: scalar string (one mask) or string vector [N] (masks of one image).
    size: int [2] = (height, width), shared by all masks; an [N, 2] tensor of
      per-mask sizes (as in SA-1B annotations) is accepted when all rows are
      equal.
    output_size: optional (h, w). The result is then exactly
      ``tf.image.resize(full[..., None], (h, w), method='nearest')[..., 0]``,
      computed without materializing the full-resolution mask.

  Returns:
    uint8 [H, W] (scalar counts) or [N, H, W], values 0/1; (h, w) instead of
    (H, W) with `output_size`.

  Raises:
    tf.errors.InvalidArgumentError: malformed counts (eagerly at call time; in
      graphs when the op runs).
  """
  counts, scalar = _as_counts(counts)
  height, width, size_checks = _as_size(size)
  with tf.control_dependencies(size_checks):
    height = tf.identity(height)
  runs = _parse(counts, height, width)
  if output_size is None:
    out_h, out_w = height, width
    rows = None
  else:
    output_size = tf.cast(tf.convert_to_tensor(output_size), tf.int64)
    out_h, out_w = output_size[0], output_size[1]
    check_out = tf.debugging.Assert(
        tf.logical_and(
            tf.reduce_all(output_size >= 0),
            tf.logical_or(height * width > 0, out_h * out_w == 0)),
        ['rle: output_size must be non-negative and the source non-empty;'
         ' output_size', output_size, 'size', height, width])
    runs.check.append(check_out)
    rows = nearest_indices(height, out_h)
    cols = nearest_indices(width, out_w)

  with tf.control_dependencies(runs.check):
    b = tf.identity(runs.boundaries())
  h_div = tf.maximum(height, 1)
  b_col = b // h_div
  b_row = b % h_div
  # +1 where a 0-run ends, -1 (255) where a 1-run ends.
  flips = tf.where(tf.equal(runs.index_in_mask % 2, 0),
                   tf.constant(1, tf.uint8), tf.constant(255, tf.uint8))

  if rows is None:
    # Full resolution: every row and column is sampled.
    num_cols = width
    first_row = tf.zeros([], tf.int64)
    col_of_unique = tf.range(width)
    b_out_row = b_row
    b_out_col = b_col
    in_cols = b_col < width
  else:
    # Distinct sampled columns (several output columns may share one when
    # upsampling; they are gathered at the end).
    new_col = tf.concat([[True], cols[1:] != cols[:-1]], 0)
    col_of_unique = tf.boolean_mask(cols, new_col)
    unique_of_output = tf.cumsum(tf.cast(new_col, tf.int64)) - 1
    num_cols = tf.size(col_of_unique, out_type=tf.int64)
    first_row = tf.concat([rows, [0]], 0)[0]
    b_out_row = tf.searchsorted(rows, b_row, side='left', out_type=tf.int64)
    b_out_col = tf.searchsorted(col_of_unique, b_col, side='left',
                                out_type=tf.int64)
    in_cols = tf.logical_and(
        b_out_col < num_cols,
        tf.equal(tf.gather(tf.concat([col_of_unique, [-1]], 0),
                           tf.minimum(b_out_col, num_cols)), b_col))

  # Value of the first output row of each sampled column: parity of the number
  # of boundaries at or before its pixel. The masks are laid end to end with
  # gaps so one searchsorted serves all of them.
  stride = height * width + 1
  keys = b + runs.mask_ids * stride
  queries = (col_of_unique * height + first_row)[None, :] + (
      tf.range(runs.num_masks) * stride)[:, None]
  before = tf.searchsorted(keys, tf.reshape(queries, [-1]), side='right',
                           out_type=tf.int64)
  before = tf.reshape(before, [runs.num_masks, num_cols]) - runs.first_run[
      :-1, None]
  top = tf.cast(before % 2, tf.uint8)

  # Boundaries strictly below the first sampled row and inside the output.
  keep = tf.logical_and(tf.logical_and(in_cols, b_out_row >= 1),
                        b_out_row < out_h)
  idx_b = tf.stack([tf.boolean_mask(runs.mask_ids, keep),
                    tf.boolean_mask(b_out_row, keep),
                    tf.boolean_mask(b_out_col, keep)], axis=1)
  grid_n, grid_c = tf.meshgrid(tf.range(runs.num_masks), tf.range(num_cols),
                               indexing='ij')
  idx_top = tf.stack([tf.reshape(grid_n, [-1]),
                      tf.zeros([runs.num_masks * num_cols], tf.int64),
                      tf.reshape(grid_c, [-1])], axis=1)
  top = tf.reshape(top, [-1])
  # No first row to write when the output has no rows.
  num_top = tf.where(out_h > 0, tf.size(top, out_type=tf.int64), 0)
  idx_top = idx_top[:num_top]
  top = top[:num_top]
  deltas = tf.scatter_nd(tf.concat([idx_b, idx_top], 0),
                         tf.concat([tf.boolean_mask(flips, keep), top], 0),
                         tf.stack([runs.num_masks, out_h, num_cols]))
  masks = tf.cumsum(deltas, axis=1)
  if rows is not None:
    masks = tf.gather(masks, unique_of_output, axis=2)
  if scalar:
    masks = masks[0]
  return masks


def area(counts: TensorLike, size: TensorLike) -> tf.Tensor:
  """Mask areas (number of 1 pixels), like ``pycocotools.mask.area``.

  Args:
    counts: scalar string or string vector [N].
    size: [2] = (height, width) or equal rows [N, 2].

  Returns:
    int64 scalar or [N] (pycocotools returns uint32).
  """
  counts, scalar = _as_counts(counts)
  height, width, size_checks = _as_size(size)
  with tf.control_dependencies(size_checks):
    height = tf.identity(height)
  runs = _parse(counts, height, width)
  with tf.control_dependencies(runs.check):
    ones = tf.where(tf.equal(runs.index_in_mask % 2, 1), runs.counts, 0)
  result = tf.math.unsorted_segment_sum(ones, runs.mask_ids, runs.num_masks)
  return result[0] if scalar else result


def to_bbox(counts: TensorLike, size: TensorLike) -> tf.Tensor:
  """Bounding boxes ``[x, y, w, h]`` in pixels, like ``pycocotools.mask.toBbox``.

  Same rule as pycocotools' ``rleToBbox``: a trailing unpaired 0-run is
  ignored, an all-zero mask gives ``[0, 0, 0, 0]``, and a 1-run spanning
  several columns covers the full height.

  Args:
    counts: scalar string or string vector [N].
    size: [2] = (height, width) or equal rows [N, 2].

  Returns:
    float64 [4] or [N, 4].
  """
  counts, scalar = _as_counts(counts)
  height, width, size_checks = _as_size(size)
  with tf.control_dependencies(size_checks):
    height = tf.identity(height)
  runs = _parse(counts, height, width)
  with tf.control_dependencies(runs.check):
    b = tf.identity(runs.boundaries())
  j = runs.index_in_mask
  n = runs.num_masks
  runs_per_mask = runs.first_run[1:] - runs.first_run[:-1]
  paired = tf.gather(runs_per_mask // 2 * 2, runs.mask_ids)
  used = j < paired
  t = b - j % 2
  h_div = tf.maximum(height, 1)
  y = t % h_div
  x = t // h_div
  x_prev = tf.concat([[0], x[:-1]], 0)
  crosses = tf.logical_and(tf.logical_and(used, tf.equal(j % 2, 1)),
                           x_prev < x)
  big = tf.constant(2**62, tf.int64)

  def seg(fn, values, fill):
    return fn(tf.where(used, values, fill), runs.mask_ids, n)

  xs = tf.minimum(seg(tf.math.unsorted_segment_min, x, big), width)
  ys = tf.minimum(seg(tf.math.unsorted_segment_min, y, big), height)
  xe = tf.maximum(seg(tf.math.unsorted_segment_max, x, -big), 0)
  ye = tf.maximum(seg(tf.math.unsorted_segment_max, y, -big), 0)
  full_height = tf.math.unsorted_segment_max(
      tf.cast(crosses, tf.int32), runs.mask_ids, n) > 0
  ys = tf.where(full_height, tf.zeros_like(ys), ys)
  ye = tf.where(full_height, height - 1, ye)
  box = tf.stack([xs, ys, xe - xs + 1, ye - ys + 1], axis=1)
  box = tf.where((runs_per_mask < 2)[:, None], tf.zeros_like(box), box)
  box = tf.cast(box, tf.float64)
  return box[0] if scalar else box
