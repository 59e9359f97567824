"""COCO compressed RLE, decoded with TensorFlow ops only.

SA-1B stores every mask as a COCO run-length encoding (RLE): a `size`
``(height, width)`` and a `counts` string. This module decodes such strings in
pure TensorFlow (no ``tf.numpy_function`` / ``tf.py_function``), so the same
code runs eagerly, inside ``tf.function``, inside ``tf.data`` maps with
``num_parallel_calls`` and under the tf.data service. Results are bit-for-bit
equal to ``pycocotools.mask.decode`` (and ``area``, ``toBbox``, ``encode``,
``iou``, ``merge``).

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

The canonical counts of a mask are those of its maximal runs: only the first
run (of zeros) may be empty. pycocotools, `encode` and `merge` write canonical
counts; the decoder also accepts empty runs elsewhere.

How decoding works
------------------
The run boundaries ``B_k = counts[0] + ... + counts[k]`` are column-major
linear pixel indices where the value flips. An output pixel ``(i, j)`` samples
source pixel ``(r_i, c_j)``: identity at full resolution, and TF's
``'nearest'`` rule (``half_pixel_centers=True``) with ``output_size``. Each
boundary lying in a sampled column becomes a vertical edge of that output
column, at the first output row sampling at or below it. ``tf.searchsorted``
over the boundaries gives the value of each column's first row. The
row-major flips of the output, where ``o(i, j) != o(i, j - 1)``, are the
parity intervals of the merged edges of columns ``j - 1`` and ``j``. Those
intervals are expanded, and the non-empty rows are written as runs with
``tf.strings.substr`` / ``unsorted_segment_join`` / ``decode_raw``, which
run at memcpy speed. A gather then places them among the all-zero rows. The
cost grows with the number of runs and the output size, and no
full-resolution mask is built when ``output_size`` is smaller.

IoU and merge on runs
---------------------
The 1-runs of a mask are the intervals ``[B_{k-1}, B_k)``, k odd, of
column-major pixel indices. `iou` takes the pairs of masks whose boxes
overlap (as pycocotools does). For each, with ``F(x)`` the number of 1 pixels
of one mask before pixel x, their intersection is the sum over the other
mask's 1-runs ``[s, e)`` of ``F(e) - F(s)``, with F found by one
``tf.searchsorted`` among the boundaries. `merge` sorts the starts (+1) and
ends (-1) of all 1-runs: their running sum is the number of masks covering the
pixels that follow, and the merged mask flips where ``cover > 0`` (union) or
``cover == N`` (intersection) changes; its runs are written back as canonical
counts. Neither depends on the image size, only on the number of runs.

Malformed counts (characters out of range, an unfinished continuation, a count
longer than 8 characters, negative runs, runs that do not sum to
``height * width``) raise ``tf.errors.InvalidArgumentError``. So do sizes
whose pixel indices would overflow int64, the codec's index type: for N masks
of (height, width), and for an ``output_size`` (h, w),
``N * (height + 1) * (width + 1)`` must be below 2**63 (pycocotools raises
OverflowError or wraps around). These checks run before anything is
allocated from a size.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import tensorflow as tf

from segment_anything_tfds.prepare import records
from segment_anything_tfds.read import backend
from segment_anything_tfds.read import geometry

__all__ = ['decode', 'encode', 'area', 'to_bbox', 'iou', 'merge',
           'nearest_indices', 'nearest_source']

TensorLike = Union[tf.Tensor, Sequence, int, str, bytes]


class _Runs:
  """Parsed runs of N masks (flat over masks), see `_parse`."""

  def __init__(self, *, counts, boundaries, mask_ids, index_in_mask,
               first_run, num_masks, height, width, check):
    self.counts = counts  # int64 [M] run lengths of all masks, concatenated.
    # int64 [M] inclusive per-mask cumulative sums of the runs: run k of a
    # mask covers the column-major pixels [boundaries[k-1], boundaries[k]).
    self.boundaries = boundaries
    self.mask_ids = mask_ids  # int64 [M] mask of each run.
    self.index_in_mask = index_in_mask  # int64 [M] run index within its mask.
    self.first_run = first_run  # int64 [N + 1] first run of each mask.
    self.num_masks = num_masks  # int64 scalar N.
    self.height = height  # int64 scalar.
    self.width = width  # int64 scalar.
    self.check = check  # List of assertion ops validating the runs.


def _as_counts(counts: TensorLike) -> tuple[tf.Tensor, bool]:
  counts = tf.convert_to_tensor(counts, dtype=tf.string, name='counts')
  if counts.shape.rank not in (0, 1):
    raise ValueError(
        'rle: counts must be a scalar string or a vector [N] of strings, got'
        f' shape {counts.shape}.')
  scalar = counts.shape.rank == 0
  return tf.reshape(counts, [-1]), scalar


# Sides above this cannot pass `_fits_int64`; larger uint64 sizes are clamped
# to it before the cast to int64.
_MAX_SIDE = 2**62


def _fits_int64(num_masks: tf.Tensor, height: tf.Tensor,
                width: tf.Tensor) -> tf.Tensor:
  """Whether N * (height + 1) * (width + 1) <= 2**63 - 1 and all are >= 0.

  This bounds every int64 the codec computes from a size: linear pixel
  indices and their sums (< h * w), the keys that lay N masks end to end
  (N * (h * w + 1)), and the row-major and column-major item keys of the
  fills (N * h * (w + 1), N * w * (h + 1)). Computed without overflowing.
  """
  limit = tf.constant(2**63 - 1, tf.int64)
  sides = tf.stack([height, width])
  small = tf.reduce_all(tf.logical_and(sides >= 0, sides <= _MAX_SIDE))
  h1, w1 = tf.unstack(tf.clip_by_value(sides, 0, _MAX_SIDE) + 1)
  small = tf.logical_and(small, h1 <= limit // w1)
  per_mask = tf.where(small, h1 * w1, limit)
  return tf.logical_and(tf.logical_and(small, num_masks >= 0),
                        num_masks <= limit // per_mask)


def _invalid(message: str) -> tf.errors.InvalidArgumentError:
  return tf.errors.InvalidArgumentError(None, None, message)


def _static_size(size: tf.Tensor, what: str = 'size'
                 ) -> tuple[int, int] | None:
  """(height, width) of a size known now (eagerly, or a constant), checked.

  The same checks as at run time, in Python: eagerly they cost no TF ops, and
  in graphs a huge constant size fails here, not in shape inference. Rows
  [N, 2] must be equal; [0, 2] gives (0, 0). None if the size is not known.
  """
  value = tf.get_static_value(size)
  if value is None:
    return None
  rows = np.asarray(value).reshape(-1, 2).tolist()
  if not rows:
    return 0, 0
  if any(row != rows[0] for row in rows):
    raise _invalid('rle: all masks of one call must have the same size; got'
                   f' sizes {rows[:8]}')
  h, w = (int(v) for v in rows[0])
  if h < 0 or w < 0:
    raise _invalid(f'rle: {what} must be non-negative, got {[h, w]}')
  if h > _MAX_SIDE or w > _MAX_SIDE or (h + 1) * (w + 1) > 2**63 - 1:
    raise _invalid(
        f'rle: {what} {h} x {w} too large: N * (height + 1) * (width + 1)'
        ' must be below 2**63 (int64 pixel indices)')
  return h, w


def _as_size(size: TensorLike) -> tuple[tf.Tensor, tf.Tensor, list]:
  """Returns (height, width, checks) as int64 scalars from [2] or [N, 2]."""
  size = tf.convert_to_tensor(size, name='size')
  if size.shape.rank not in (1, 2) or size.shape[-1] not in (None, 2):
    raise ValueError(f'rle: size must be [2] = (height, width) or [N, 2], got'
                     f' shape {size.shape}.')
  static = _static_size(size)
  if static is not None:
    return (tf.constant(static[0], tf.int64), tf.constant(static[1], tf.int64),
            [])
  checks = []
  if size.dtype == tf.uint64:
    checks.append(tf.debugging.Assert(
        tf.reduce_all(size <= tf.constant(_MAX_SIDE, tf.uint64)),
        ['rle: size too large (height and width must be at most 2**62), got',
         size], summarize=8))
    size = tf.cast(tf.minimum(size, tf.constant(_MAX_SIDE + 1, tf.uint64)),
                   tf.int64)
  else:
    size = tf.cast(size, tf.int64)
  if size.shape.rank == 2:
    # Per-mask sizes [N, 2] (as stored in SA-1B): all masks of one image must
    # share one size. [0, 2] (no masks) gives (0, 0).
    first = tf.reduce_max(tf.concat([size, tf.zeros([1, 2], tf.int64)], 0),
                          axis=0)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(tf.equal(size, first[None])),
        ['rle: all masks of one call must have the same size; got sizes',
         size], summarize=8))
    size = first
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
  first_bad = tf.argmax(tf.cast(tf.concat([bad_char, [False]], 0), tf.int32),
                        output_type=tf.int64)
  bad_mask = tf.searchsorted(ends_of_strings, first_bad[None],
                             side='right')[0]
  check_chars = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(bad_char)),
      ['rle: the counts of mask', bad_mask, "have a character outside"
       " '0'..'o' (bytes 48..111) at byte",
       first_bad - tf.gather(tf.concat([[0], ends_of_strings], 0), bad_mask),
       'with value',
       tf.cast(tf.gather(tf.concat([data, [0]], 0), first_bad), tf.int32)])
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
  too_long = k >= records.MAX_CHARS_PER_COUNT
  check_long = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(too_long)),
      ['rle: a count is longer than', records.MAX_CHARS_PER_COUNT,
       'characters, in mask', tf.searchsorted(
           ends_of_strings,
           tf.argmax(tf.cast(tf.concat([too_long, [False]], 0), tf.int32),
                     output_type=tf.int64)[None],
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

  check_size = tf.debugging.Assert(
      _fits_int64(num_masks, height, width),
      ['rle: size', height, 'x', width, 'too large for', num_masks,
       'mask(s): N * (height + 1) * (width + 1) must be below 2**63 (int64'
       ' pixel indices)'])
  with tf.control_dependencies([check_size]):
    expected = height * width
  cum = tf.concat([zero, tf.cumsum(runs)], 0)
  boundaries = cum[1:] - tf.gather(cum, tf.gather(first_run, mask_ids))
  total = tf.math.unsorted_segment_sum(runs, mask_ids, num_masks)
  negative_run = runs < 0
  check_negative = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(negative_run)),
      ['rle: negative run length in the counts of mask(s)',
       tf.unique(tf.boolean_mask(mask_ids, negative_run))[0]], summarize=10)
  # Each count moves a run by less than 2**39, and each run moves a boundary
  # by at most the run: a run or a boundary past 2**63 would show as negative
  # (wrap-around) before any could wrap back. So runs >= 0 and boundaries in
  # [0, h * w] leave no silent int64 overflow, however long the string.
  out_of_range = tf.cast(
      tf.logical_or(boundaries < 0, boundaries > expected), tf.int32)
  wrong_total = tf.logical_or(
      tf.not_equal(total, expected),
      tf.math.unsorted_segment_max(out_of_range, mask_ids, num_masks) > 0)
  check_total = tf.debugging.Assert(
      tf.logical_not(tf.reduce_any(wrong_total)),
      ['rle: runs do not sum to height * width =', expected, '(size',
       height, 'x', width, ') for mask(s)',
       tf.where(wrong_total)[:, 0], 'sums:',
       tf.boolean_mask(total, wrong_total)], summarize=10)
  return _Runs(counts=runs, boundaries=boundaries, mask_ids=mask_ids,
               index_in_mask=j, first_run=first_run, num_masks=num_masks,
               height=height, width=width,
               check=[check_size, check_negative, check_total])


def nearest_indices(in_size: TensorLike, out_size: TensorLike) -> tf.Tensor:
  """Source indices sampled by ``tf.image.resize(..., method='nearest')``.

  TF 2's nearest resize uses ``half_pixel_centers=True`` and
  ``align_corners=False``: ``min(floor((i + 0.5) * (in / out)), in - 1)``,
  computed in float32 exactly like the ``ResizeNearestNeighbor`` kernel
  (`geometry.nearest_source`, the rule's one home).

  Args:
    in_size: source length (int scalar).
    out_size: output length (int scalar).

  Returns:
    int64 [out_size] non-decreasing source indices.
  """
  return geometry.nearest_indices(in_size, out_size, backend.tf_ops())


def nearest_source(index: TensorLike, in_size: TensorLike,
                   out_size: TensorLike) -> tf.Tensor:
  """`nearest_indices` at given output indices; all arguments broadcast.

  Args:
    index: int output indices (any shape).
    in_size: source lengths (int, broadcast against `index`).
    out_size: output lengths (int, broadcast against `index`).

  Returns:
    int64 source indices, clipped to [0, in_size - 1].
  """
  return geometry.nearest_source(index, in_size, out_size, backend.tf_ops())


# Plain TF ops, no Python control flow on tensors: nothing to convert.
@tf.autograph.experimental.do_not_convert
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
    tf.errors.InvalidArgumentError: malformed counts, or a size or
      output_size too large for int64 pixel indices (eagerly at call time; in
      graphs when the op runs, or while tracing for constant sizes).
  """
  counts, scalar = _as_counts(counts)
  height, width, size_checks = _as_size(size)
  if output_size is not None:
    output_size = tf.convert_to_tensor(output_size, name='output_size')
    if output_size.shape.num_elements() not in (None, 2):
      raise ValueError('rle: output_size must be (height, width), got shape'
                       f' {output_size.shape}.')
    if output_size.shape.rank == 1:
      _static_size(output_size, 'output_size')
  if tf.executing_eagerly():
    # One traced graph runs the ~100 small ops in parallel, much faster than
    # op-by-op eager dispatch. (Eagerly, the size checks ran already.)
    if output_size is None:
      masks = _decode_full_fn(counts, height, width)
    else:
      masks = _decode_resized_fn(
          counts, height, width,
          tf.reshape(tf.cast(output_size, tf.int64), [2]))
  else:
    with tf.control_dependencies(size_checks):
      height = tf.identity(height)
    masks = _decode(counts, height, width, output_size)
  return masks[0] if scalar else masks


def _decode(counts: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
            output_size: tf.Tensor | None) -> tf.Tensor:
  """Decodes counts [N] into uint8 [N, h, w] (see `decode`)."""
  runs = _parse(counts, height, width)
  full = output_size is None
  if full:
    out_h, out_w = height, width
  else:
    output_size = tf.cast(tf.convert_to_tensor(output_size), tf.int64)
    out_h, out_w = output_size[0], output_size[1]
    check_out = tf.debugging.Assert(
        tf.logical_and(
            tf.logical_and(tf.reduce_all(output_size >= 0),
                           _fits_int64(runs.num_masks, out_h, out_w)),
            tf.logical_or(height * width > 0,
                          tf.logical_or(out_h * out_w == 0,
                                        tf.equal(runs.num_masks, 0)))),
        ['rle: output_size must be non-negative, N * (h + 1) * (w + 1) below'
         ' 2**63, and the source non-empty; output_size', output_size, 'size',
         height, width, 'N', runs.num_masks])
    runs.check.append(check_out)

  # Nothing is computed from a size (ranges, shapes) before the checks pass.
  with tf.control_dependencies(runs.check):
    b = tf.identity(runs.boundaries)
    height, width, out_h, out_w = (
        tf.identity(t) for t in (height, width, out_h, out_w))
  # An empty result (no masks, or a side 0) is made without a range or a
  # table over the other side, which may be up to 2**62 long.
  empty = tf.equal(runs.num_masks * out_h * out_w, 0)
  return tf.cond(
      empty,
      lambda: tf.zeros(tf.stack([runs.num_masks, out_h, out_w]), tf.uint8),
      lambda: _decode_nonempty(runs, b, height, width, out_h, out_w, full))


def _decode_nonempty(runs: _Runs, b: tf.Tensor, height: tf.Tensor,
                     width: tf.Tensor, out_h: tf.Tensor, out_w: tf.Tensor,
                     full: bool) -> tf.Tensor:
  """`_decode` of checked runs whose result has pixels."""
  if not full:
    rows = nearest_indices(height, out_h)
    cols = nearest_indices(width, out_w)
  num_masks = runs.num_masks
  h_div = tf.maximum(height, 1)
  b_col = b // h_div
  b_row = b % h_div

  if full:
    # Full resolution: every row and column is sampled.
    out_h, out_w = height, width
    num_cols = width
    first_row = tf.zeros([], tf.int64)
    col_of_unique = tf.range(width)
    first_out_col = col_of_unique
    unique_of_output = None
    b_out_row = b_row
    b_out_col = b_col
    in_cols = b_col < width
  else:
    # Distinct sampled columns: several output columns share one source
    # column when upsampling; they are equal, so only the first of them can
    # differ from its left neighbour.
    new_col = tf.concat([[True], cols[1:] != cols[:-1]], 0)[:out_w]
    col_of_unique = tf.boolean_mask(cols, new_col)
    first_out_col = tf.where(new_col)[:, 0]
    unique_of_output = tf.cumsum(tf.cast(new_col, tf.int64)) - 1
    num_cols = tf.size(col_of_unique, out_type=tf.int64)
    first_row = tf.concat([rows, [0]], 0)[0]
    # A boundary (value flip) at source row r shows first in the first output
    # row sampling a source row >= r.
    b_out_row = tf.searchsorted(rows, b_row, side='left', out_type=tf.int64)
    b_out_col = tf.searchsorted(col_of_unique, b_col, side='left',
                                out_type=tf.int64)
    in_cols = tf.logical_and(
        b_out_col < num_cols,
        tf.equal(tf.gather(tf.concat([col_of_unique, [-1]], 0),
                           tf.minimum(b_out_col, num_cols)), b_col))
  return _fill(
      _transpose_edges(b=b, runs=runs, height=height, width=width,
                       out_h=out_h, num_cols=num_cols, first_row=first_row,
                       col_of_unique=col_of_unique, b_out_row=b_out_row,
                       b_out_col=b_out_col, in_cols=in_cols),
      first_out_col=first_out_col, unique_of_output=unique_of_output,
      num_masks=num_masks, out_h=out_h,
      out_w=out_w, num_cols=num_cols)


def _transpose_edges(*, b, runs, height, width, out_h, num_cols, first_row,
                     col_of_unique, b_out_row, b_out_col, in_cols):
  """Vertical edges of every sampled column, as (mask, column, row) items.

  Column u of the output (as a function of the output row i) is 1 exactly
  where an odd number of its edges are <= i. Its edges are the output rows
  where it flips, plus row 0 when it starts with a 1.

  Returns:
    (mask ids, unique column ids, output rows), int64 [E] each.
  """
  num_masks = runs.num_masks
  # Value at the first sampled row of each sampled column: parity of the
  # boundaries at or before that pixel. The masks are laid end to end with
  # gaps so one searchsorted serves all of them.
  stride = height * width + 1
  keys = b + runs.mask_ids * stride
  queries = (col_of_unique * height + first_row)[None, :] + (
      tf.range(num_masks) * stride)[:, None]
  before = tf.searchsorted(keys, tf.reshape(queries, [-1]), side='right',
                           out_type=tf.int64)
  before = tf.reshape(before, [num_masks, num_cols]) - runs.first_run[:-1,
                                                                      None]
  top_n, top_u = tf.unstack(tf.where(tf.equal(before % 2, 1)), 2, axis=1)
  top_n = top_n[:tf.where(out_h > 0, tf.size(top_n), 0)]
  top_u = top_u[:tf.size(top_n)]
  # Boundaries strictly below the first sampled row and inside the output.
  keep = tf.logical_and(tf.logical_and(in_cols, b_out_row >= 1),
                        b_out_row < out_h)
  edge_n = tf.concat([tf.boolean_mask(runs.mask_ids, keep), top_n], 0)
  edge_u = tf.concat([tf.boolean_mask(b_out_col, keep), top_u], 0)
  edge_i = tf.concat([tf.boolean_mask(b_out_row, keep),
                      tf.zeros_like(top_n)], 0)
  return edge_n, edge_u, edge_i


_STRINGS = tf.TensorSpec([None], tf.string)
_SCALAR = tf.TensorSpec([], tf.int64)
_decode_full_fn = tf.function(
    lambda counts, height, width: _decode(counts, height, width, None),
    input_signature=[_STRINGS, _SCALAR, _SCALAR], autograph=False)
_decode_resized_fn = tf.function(
    _decode, input_signature=[_STRINGS, _SCALAR, _SCALAR,
                              tf.TensorSpec([2], tf.int64)], autograph=False)


def _sorted_unique(x: tf.Tensor) -> tf.Tensor:
  """Unique values of a sorted int64 vector."""
  new = tf.concat([tf.ones([tf.minimum(tf.size(x), 1)], tf.bool),
                   x[1:] != x[:-1]], 0)
  return tf.boolean_mask(x, new)


# Per output pixel, the dense fill costs about 1/32 of what the run-based
# fill costs per row-major flip (measured on 2 CPU cores).
_DENSE_FILL_FLIPS_PER_PIXEL = 1 / 32


def _fill(edges, *, first_out_col, unique_of_output, num_masks, out_h, out_w,
          num_cols):
  """Builds the uint8 [N, h, w] masks from the column edges.

  Masks with few row-major flips (SA-1B's blobs) are written run by run
  (`_fill_runs`); masks with many (noise, stripes) by a dense uint8 cumsum
  (`_fill_dense`), linear in the output size.
  """
  pixels = tf.cast(num_masks * out_h * num_cols, tf.float64)
  limit = pixels * _DENSE_FILL_FLIPS_PER_PIXEL

  def dense():
    return _fill_dense(edges, num_masks=num_masks, out_h=out_h,
                       num_cols=num_cols, unique_of_output=unique_of_output)

  def by_rows():
    lo, hi, group = _flip_intervals(edges, out_h=out_h, num_cols=num_cols)
    num_flips = tf.reduce_sum(tf.maximum(hi - lo, 0))
    return tf.cond(
        tf.cast(num_flips, tf.float64) > limit, dense,
        lambda: _fill_runs(lo, hi, group, first_out_col=first_out_col,
                           num_masks=num_masks, out_h=out_h, out_w=out_w,
                           num_cols=num_cols))

  # There are at least as many flips as edges: with many edges, do not even
  # sort them.
  num_edges = tf.cast(tf.size(edges[0]), tf.float64)
  return tf.cond(num_edges > limit, dense, by_rows)


def _fill_dense(edges, *, num_masks, out_h, num_cols, unique_of_output):
  """Parity of a uint8 cumsum of the column edges down the rows."""
  edge_n, edge_u, edge_i = edges
  deltas = tf.scatter_nd(tf.stack([edge_n, edge_i, edge_u], axis=1),
                         tf.ones_like(edge_n, tf.uint8),
                         tf.stack([num_masks, out_h, num_cols]))
  masks = tf.bitwise.bitwise_and(tf.cumsum(deltas, axis=1),
                                 tf.constant(1, tf.uint8))
  if unique_of_output is not None:
    masks = tf.gather(masks, unique_of_output, axis=2)
  return masks


def _flip_intervals(edges, *, out_h, num_cols):
  """Row intervals [lo, hi) where the output flips, per sampled column.

  In row i, the mask flips at output column j >= 1 when o(i, j) != o(i, j-1).
  As a function of i, those flips form an interval set whose edges are the
  edges of columns j and j - 1 (for the first output column of each sampled
  column; duplicated columns never flip). For column 0 the intervals are
  those of the column's own value.

  Returns:
    (lo, hi, group) int64 [I]; group = mask * num_cols + sampled column.
  """
  edge_n, edge_u, edge_i = edges
  to_right = edge_u + 1 < num_cols
  item_n = tf.concat([edge_n, tf.boolean_mask(edge_n, to_right)], 0)
  item_u = tf.concat([edge_u, tf.boolean_mask(edge_u + 1, to_right)], 0)
  item_i = tf.concat([edge_i, tf.boolean_mask(edge_i, to_right)], 0)
  group = item_n * num_cols + item_u
  order = tf.argsort(group * (out_h + 1) + item_i)
  group = tf.gather(group, order)
  item_i = tf.gather(item_i, order)
  num_items = tf.size(group, out_type=tf.int64)
  index = tf.range(num_items)
  group_start = tf.searchsorted(group, group, side='left', out_type=tf.int64)
  nxt = tf.minimum(index + 1, tf.maximum(num_items - 1, 0))
  has_next = tf.logical_and(index + 1 < num_items,
                            tf.equal(tf.gather(group, nxt), group))
  # Edges pair up in order; an odd one out runs to the bottom.
  starts = tf.equal((index - group_start) % 2, 0)
  lo = tf.boolean_mask(item_i, starts)
  hi = tf.boolean_mask(tf.where(has_next, tf.gather(item_i, nxt), out_h),
                       starts)
  return lo, hi, tf.boolean_mask(group, starts)


def _fill_runs(lo, hi, interval_group, *, first_out_col, num_masks, out_h,
               out_w, num_cols):
  """Expands the flip intervals into row-major runs, written as strings.

  The rows that are not all zero are assembled from substrings of a
  zeros-then-ones pattern (memcpy speed) and gathered, with the all-zero row,
  into the result.
  """
  # Expand the intervals [lo, hi) into their rows.
  splits = tf.concat([[0], tf.cumsum(tf.maximum(hi - lo, 0))], 0)
  total = splits[-1]
  which = tf.searchsorted(splits[1:], tf.range(total), side='right',
                          out_type=tf.int64)
  exp_i = tf.gather(lo, which) + tf.range(total) - tf.gather(splits, which)
  exp_group = tf.gather(interval_group, which)
  cols = tf.maximum(num_cols, 1)
  exp_u = exp_group % cols
  exp_row = (exp_group // cols) * out_h + exp_i  # Output row id, n * h + i.
  # Column 0: rows starting with a 1. Other columns: flips inside rows.
  is_start = tf.equal(exp_u, 0)
  one_rows = tf.sort(tf.boolean_mask(exp_row, is_start))
  flip_row = tf.boolean_mask(exp_row, tf.logical_not(is_start))
  flip_j = tf.gather(first_out_col, tf.boolean_mask(exp_u,
                                                    tf.logical_not(is_start)))
  active = _sorted_unique(tf.sort(tf.concat([one_rows, flip_row], 0)))
  num_active = tf.size(active, out_type=tf.int64)
  found = tf.searchsorted(one_rows, active, side='left', out_type=tf.int64)
  starts_one = tf.equal(
      tf.gather(tf.concat([one_rows, [-1]], 0),
                tf.minimum(found, tf.size(one_rows, out_type=tf.int64))),
      active)

  # Pieces: one from each row start and one from each flip, row-major.
  slot = tf.concat([tf.searchsorted(active, flip_row, out_type=tf.int64),
                    tf.range(num_active)], 0)
  col = tf.concat([flip_j, tf.zeros([num_active], tf.int64)], 0)
  is_flip = tf.concat([tf.ones_like(flip_row), tf.zeros([num_active],
                                                        tf.int64)], 0)
  order = tf.argsort(slot * (out_w + 1) + col)
  slot = tf.gather(slot, order)
  col = tf.gather(col, order)
  is_flip = tf.gather(is_flip, order)
  num_pieces = tf.size(slot, out_type=tf.int64)
  nxt = tf.minimum(tf.range(num_pieces) + 1, tf.maximum(num_pieces - 1, 0))
  same_row = tf.logical_and(tf.range(num_pieces) + 1 < num_pieces,
                            tf.equal(tf.gather(slot, nxt), slot))
  lengths = tf.where(same_row, tf.gather(col, nxt), out_w) - col
  flips_so_far = tf.cumsum(is_flip)
  row_base = tf.gather(tf.boolean_mask(flips_so_far, tf.equal(is_flip, 0)),
                       slot)
  value = (flips_so_far - row_base +
           tf.gather(tf.cast(starts_one, tf.int64), slot)) % 2

  # A string of w zero bytes followed by w one bytes.
  block = 1024
  num_blocks = (out_w + block - 1) // block
  zeros = tf.strings.reduce_join(tf.fill([num_blocks], b'\x00' * block))
  ones = tf.strings.reduce_join(tf.fill([num_blocks], b'\x01' * block))
  pattern = tf.strings.join([zeros, ones])
  pieces = tf.strings.substr(pattern, value * num_blocks * block, lengths)
  rows = tf.strings.unsorted_segment_join(pieces, slot, num_active)
  rows = tf.io.decode_raw(rows, tf.uint8)
  rows = tf.reshape(rows, tf.stack([num_active, out_w]))
  rows = tf.concat([tf.zeros(tf.stack([1, out_w]), tf.uint8), rows], 0)
  source = tf.scatter_nd(active[:, None], tf.range(1, num_active + 1),
                         tf.reshape(num_masks * out_h, [1]))
  masks = tf.gather(rows, source)
  return tf.reshape(masks, tf.stack([num_masks, out_h, out_w]))


def _parse_checked(counts: TensorLike, size: TensorLike):
  """(runs, height, width, counts is a scalar), after the size checks."""
  counts, scalar = _as_counts(counts)
  height, width, size_checks = _as_size(size)
  with tf.control_dependencies(size_checks):
    height = tf.identity(height)
  return _parse(counts, height, width), height, width, scalar


@tf.autograph.experimental.do_not_convert
def area(counts: TensorLike, size: TensorLike) -> tf.Tensor:
  """Mask areas (number of 1 pixels), like ``pycocotools.mask.area``.

  Args:
    counts: scalar string or string vector [N].
    size: [2] = (height, width) or equal rows [N, 2].

  Returns:
    int64 scalar or [N] (pycocotools returns uint32).
  """
  runs, _, _, scalar = _parse_checked(counts, size)
  with tf.control_dependencies(runs.check):
    result = tf.identity(_areas(runs))
  return result[0] if scalar else result


def _areas(runs: _Runs) -> tf.Tensor:
  """int64 [N] number of 1 pixels of each mask."""
  ones = tf.where(tf.equal(runs.index_in_mask % 2, 1), runs.counts, 0)
  return tf.math.unsorted_segment_sum(ones, runs.mask_ids, runs.num_masks)


@tf.autograph.experimental.do_not_convert
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
  runs, _, _, scalar = _parse_checked(counts, size)
  with tf.control_dependencies(runs.check):
    box = tf.cast(_boxes(runs, tf.identity(runs.boundaries)), tf.float64)
  return box[0] if scalar else box


def _boxes(runs: _Runs, b: tf.Tensor) -> tf.Tensor:
  """int64 [N, 4] boxes ``[x, y, w, h]`` by pycocotools' rule (`to_bbox`).

  Every 1 pixel of a mask lies in its box.
  """
  height, width = runs.height, runs.width
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
  return tf.where((runs_per_mask < 2)[:, None], tf.zeros_like(box), box)


@tf.autograph.experimental.do_not_convert
def encode(masks: TensorLike) -> tf.Tensor:
  """Encodes binary masks as COCO compressed RLE counts strings.

  Equal to ``pycocotools.mask.encode(...)['counts']`` (nonzero means 1). The
  cost is linear in the number of pixels.

  Args:
    masks: [H, W] or [N, H, W], any numeric or bool dtype.

  Returns:
    A scalar string for [H, W], a string vector [N] for [N, H, W]; the size
    is the masks' (H, W).
  """
  masks = tf.convert_to_tensor(masks)
  if masks.shape.rank not in (2, 3):
    raise ValueError(f'rle.encode: masks must be [H, W] or [N, H, W], got'
                     f' shape {masks.shape}.')
  scalar = masks.shape.rank == 2
  if scalar:
    masks = masks[None]
  shape = tf.shape(masks, out_type=tf.int64)
  num_masks, hw = shape[0], shape[1] * shape[2]
  # Column-major pixels of each mask.
  if masks.dtype != tf.bool:
    masks = tf.not_equal(masks, tf.zeros([], masks.dtype))
  pixels = tf.reshape(tf.transpose(masks, [0, 2, 1]),
                      tf.stack([num_masks, hw]))
  # Runs end where the value changes (the first run, of zeros, may be empty)
  # and at the end of each mask.
  previous = tf.concat([tf.zeros(tf.stack([num_masks, 1]), tf.bool),
                        pixels[:, :-1]], 1)
  changes = tf.where(tf.not_equal(pixels, previous))  # [n, p], row-major
  ends = tf.concat([changes, tf.stack([tf.range(num_masks),
                                       tf.fill([num_masks], hw)], 1)], 0)
  ends = tf.gather(ends, tf.argsort(ends[:, 0] * (hw + 1) + ends[:, 1]))
  mask_ids, position = ends[:, 0], ends[:, 1]
  num_runs = tf.size(mask_ids, out_type=tf.int64)
  first = tf.searchsorted(mask_ids, tf.range(num_masks + 1),
                          out_type=tf.int64)
  j = tf.range(num_runs) - tf.gather(first, mask_ids)
  previous_end = tf.where(j > 0, tf.gather(position, tf.maximum(
      tf.range(num_runs) - 1, 0)), 0)
  strings = _encode_runs(position - previous_end, mask_ids, j, num_masks)
  return strings[0] if scalar else strings


def _encode_runs(runs: tf.Tensor, mask_ids: tf.Tensor,
                 index_in_mask: tf.Tensor, num_masks: tf.Tensor) -> tf.Tensor:
  """Writes runs (int64 [M], mask by mask, sorted by mask) as counts [N]."""
  num_runs = tf.size(runs, out_type=tf.int64)
  j = index_in_mask
  # Count j >= 3 is written as a delta against count j - 2.
  x = tf.where(j > 2, runs - tf.gather(runs, tf.maximum(
      tf.range(num_runs) - 2, 0)), runs)
  # 5-bit groups, low first; continue while the rest is not the sign
  # extension of the group's bit 0x10.
  shifts = 5 * tf.range(13, dtype=tf.int64)
  shifted = tf.bitwise.right_shift(x[:, None], shifts[None])
  group = tf.bitwise.bitwise_and(shifted, 31)
  rest = tf.bitwise.right_shift(shifted, 5)
  more = tf.where(tf.bitwise.bitwise_and(group, 16) != 0,
                  tf.not_equal(rest, -1), tf.not_equal(rest, 0))
  num_chars = tf.argmin(tf.cast(more, tf.int32), axis=1,
                        output_type=tf.int64) + 1
  index = tf.range(13, dtype=tf.int64)[None]
  chars = group + tf.where(index < num_chars[:, None] - 1,
                           tf.constant(32, tf.int64), 0) + 48
  chars = tf.boolean_mask(chars, index < num_chars[:, None])
  chars_per_mask = tf.math.unsorted_segment_sum(num_chars, mask_ids,
                                                num_masks)
  return tf.strings.unicode_encode(
      tf.RaggedTensor.from_row_lengths(tf.cast(chars, tf.int32),
                                       chars_per_mask), 'UTF-8')


# ------------------------------------------------------------ iou and merge


def _shared_size(dt_size: TensorLike, gt_size: TensorLike, num_dt: tf.Tensor,
                 num_gt: tf.Tensor):
  """(height, width, checks) shared by the dt and the gt masks.

  A side without masks takes the other side's size (an SA-1B image without
  masks has sizes [0, 2]).
  """
  dt_h, dt_w, dt_checks = _as_size(dt_size)
  gt_h, gt_w, gt_checks = _as_size(gt_size)
  known = [tf.get_static_value(t) for t in (dt_h, dt_w, gt_h, gt_w, num_dt,
                                            num_gt)]
  if None not in known:
    dt_hw, gt_hw, n_dt, n_gt = known[:2], known[2:4], known[4], known[5]
    if dt_hw != gt_hw and n_dt and n_gt:
      raise _invalid(f'rle.iou: all masks must have the same size; dt {dt_hw}'
                     f' gt {gt_hw}')
    return (dt_h, dt_w, []) if n_dt else (gt_h, gt_w, [])
  same = tf.logical_and(tf.equal(dt_h, gt_h), tf.equal(dt_w, gt_w))
  checks = dt_checks + gt_checks + [tf.debugging.Assert(
      tf.logical_or(same, tf.logical_or(tf.equal(num_dt, 0),
                                        tf.equal(num_gt, 0))),
      ['rle.iou: all masks must have the same size; dt', dt_h, dt_w, 'gt',
       gt_h, gt_w])]
  use_dt = num_dt > 0
  return (tf.where(use_dt, dt_h, gt_h), tf.where(use_dt, dt_w, gt_w),
          checks)


@tf.autograph.experimental.do_not_convert
def iou(dt_counts: TensorLike,
        gt_counts: TensorLike,
        size: TensorLike,
        iscrowd: TensorLike | None = None,
        *,
        gt_size: TensorLike | None = None) -> tf.Tensor:
  """IoU of every dt mask with every gt mask, like ``pycocotools.mask.iou``.

  Computed on the runs, without decoding pixels (see the module docstring).
  Equal to ``pycocotools.mask.iou(dt, gt, iscrowd)`` (float64) rounded to
  float32; the matrix is ``[Nd, Ng]`` also when Nd or Ng is 0 (pycocotools
  then returns ``[]``).

  Args:
    dt_counts: scalar string or string vector [Nd].
    gt_counts: scalar string or string vector [Ng].
    size: (height, width) of the dt masks ([2] or equal rows [Nd, 2]); also
      of the gt masks unless `gt_size` is given.
    iscrowd: optional bool or 0/1 [Ng]. For a crowd gt, the denominator is
      the dt area instead of the union. Default: no crowd.
    gt_size: (height, width) of the gt masks ([2] or [Ng, 2]).

  Returns:
    float32 [Nd, Ng]; 0 where the masks do not intersect (also for empty
    masks).

  Raises:
    tf.errors.InvalidArgumentError: malformed counts, masks of different
      sizes, or `iscrowd` not of length Ng.
  """
  dt, _ = _as_counts(dt_counts)
  gt, _ = _as_counts(gt_counts)
  num_dt = tf.size(dt, out_type=tf.int64)
  num_gt = tf.size(gt, out_type=tf.int64)
  height, width, checks = _shared_size(
      size, size if gt_size is None else gt_size, num_dt, num_gt)
  if iscrowd is None:
    crowd = tf.zeros(tf.reshape(num_gt, [1]), tf.bool)
  else:
    crowd = tf.reshape(tf.convert_to_tensor(iscrowd), [-1])
    if crowd.dtype != tf.bool:
      crowd = tf.not_equal(crowd, tf.zeros([], crowd.dtype))
    known = (crowd.shape[0], tf.get_static_value(num_gt))
    if None not in known:
      if known[0] != known[1]:
        raise _invalid('rle.iou: iscrowd must have one entry per gt mask:'
                       f' {known[0]} vs {known[1]}')
    else:
      checks.append(tf.debugging.Assert(
          tf.equal(tf.size(crowd, out_type=tf.int64), num_gt),
          ['rle.iou: iscrowd must have one entry per gt mask:',
           tf.size(crowd), 'vs', num_gt]))
  counts = tf.concat([dt, gt], 0)
  if tf.executing_eagerly():
    return _iou_fn(counts, num_dt, height, width, crowd)
  with tf.control_dependencies(checks):
    height = tf.identity(height)
  return _iou(counts, num_dt, height, width, crowd)


def _iou(counts: tf.Tensor, num_dt: tf.Tensor, height: tf.Tensor,
         width: tf.Tensor, crowd: tf.Tensor) -> tf.Tensor:
  """float32 [Nd, Ng] IoUs of counts[:Nd] (dt) with counts[Nd:] (gt)."""
  runs = _parse(counts, height, width)
  with tf.control_dependencies(runs.check):
    b = tf.identity(runs.boundaries)
  num_gt = runs.num_masks - num_dt
  areas = _areas(runs)
  # Only pairs whose boxes overlap can intersect (pycocotools skips the
  # others the same way).
  x, y, w, h = tf.unstack(_boxes(runs, b), axis=1)
  x_end, y_end = x + w, y + h
  nonempty = areas > 0

  def overlap(start, end):
    return tf.logical_and(start[:num_dt, None] < end[None, num_dt:],
                          start[None, num_dt:] < end[:num_dt, None])

  candidates = tf.logical_and(
      tf.logical_and(overlap(x, x_end), overlap(y, y_end)),
      tf.logical_and(nonempty[:num_dt, None], nonempty[None, num_dt:]))
  pairs = tf.where(candidates)  # [P, 2] = (dt, gt index)
  inter = _intersections(runs, b, areas, pairs[:, 0], pairs[:, 1] + num_dt)
  a_dt = tf.gather(areas, pairs[:, 0])
  a_gt = tf.gather(areas, pairs[:, 1] + num_dt)
  union = tf.where(tf.gather(crowd, pairs[:, 1]), a_dt, a_dt + a_gt - inter)
  ratio = tf.where(inter > 0, tf.cast(inter, tf.float64) /
                   tf.cast(tf.maximum(union, 1), tf.float64), 0.0)
  return tf.scatter_nd(pairs, tf.cast(ratio, tf.float32),
                       tf.stack([num_dt, num_gt]))


_iou_fn = tf.function(
    _iou, input_signature=[_STRINGS, _SCALAR, _SCALAR, _SCALAR,
                           tf.TensorSpec([None], tf.bool)], autograph=False)


def _intersections(runs: _Runs, b: tf.Tensor, areas: tf.Tensor,
                   first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
  """int64 [P]: 1 pixels shared by the masks first[p] and second[p].

  With F(x) the number of 1 pixels of the "table" mask before pixel x, the
  intersection is the sum of F(end) - F(start) over the 1-runs [start, end)
  of the "query" mask: F at each query boundary, + at the ends of its 1-runs
  and - at their starts. F is 0 up to the table's first 1 pixel and its area
  from its last one on, so only the query boundaries strictly inside that
  span are items; the ones after it add the area once if the query is in a
  1-run there. Of the two masks, the query is the one with fewer items. F
  comes from one searchsorted among the table's boundaries: the cost is
  about sum over pairs of min(runs in the span) * log(runs).
  """
  index = runs.index_in_mask
  stride = runs.height * runs.width + 1
  # The masks end to end: one sorted vector serves every per-mask search.
  keys = b + runs.mask_ids * stride
  odd = tf.equal(index % 2, 1)
  starts = b - runs.counts
  is_one = tf.logical_and(odd, runs.counts > 0)
  big = tf.constant(2**62, tf.int64)
  span_start = tf.math.unsorted_segment_min(
      tf.where(is_one, starts, big), runs.mask_ids, runs.num_masks)
  span_end = tf.math.unsorted_segment_max(
      tf.where(is_one, b, -big), runs.mask_ids, runs.num_masks)

  def window(query, table):
    """Query boundaries in (span_start, span_end) of the table: [lo, hi)."""
    lo = tf.searchsorted(keys, tf.gather(span_start, table) + query * stride,
                         side='right', out_type=tf.int64)
    hi = tf.searchsorted(keys, tf.gather(span_end, table) + query * stride,
                         side='left', out_type=tf.int64)
    return lo, hi

  lo_1, hi_1 = window(first, second)
  lo_2, hi_2 = window(second, first)
  first_is_query = hi_1 - lo_1 <= hi_2 - lo_2
  query = tf.where(first_is_query, first, second)
  table = tf.where(first_is_query, second, first)
  lo = tf.where(first_is_query, lo_1, lo_2)
  hi = tf.where(first_is_query, hi_1, hi_2)

  # Items, pair after pair, numbered table * M + query run: one ragged range
  # gives both (cheaper than gathers per item).
  num_runs = tf.size(b, out_type=tf.int64)
  item = tf.ragged.range(table * num_runs + lo, table * num_runs + hi)
  splits = item.row_splits
  item = item.flat_values
  item_table = item // tf.maximum(num_runs, 1)
  item_run = item - item_table * num_runs
  x, sign = tf.unstack(tf.gather(
      tf.stack([b, tf.where(odd, tf.constant(1, tf.int64), -1)], axis=1),
      item_run), axis=1)

  # F(x) + G[first run of the table], with G the 1 pixels before each run
  # (over all masks): x lies in table run k, starting at starts[k]:
  # G[k] + (x - starts[k] if run k is a 1-run).
  g = tf.concat([[0], tf.cumsum(tf.where(odd, runs.counts, 0))], 0)
  table_runs = tf.stack([g[:-1] - tf.where(odd, starts, 0),
                         tf.cast(odd, tf.int64)], axis=1)
  k = tf.searchsorted(keys, x + item_table * stride, side='right',
                      out_type=tf.int64)
  base, slope = tf.unstack(tf.gather(table_runs, k), axis=1)
  summed = tf.concat([[0], tf.cumsum(sign * (base + slope * x))], 0)
  inside = tf.gather(summed, splits[1:]) - tf.gather(summed, splits[:-1])

  # Remove G[first run of the table] once per signed item, in closed form:
  # relative query indices [l, h), + for odd, - for even.
  query_first = tf.gather(runs.first_run, query)
  l, h = lo - query_first, hi - query_first
  signs = (h // 2 - l // 2) - ((h + 1) // 2 - (l + 1) // 2)
  inside -= signs * tf.gather(g, tf.gather(runs.first_run, table))
  after = tf.where(tf.equal(h % 2, 1), tf.gather(areas, table), 0)
  return inside + after


@tf.autograph.experimental.do_not_convert
def merge(counts: TensorLike, size: TensorLike,
          intersect: bool | tf.Tensor = False) -> tf.Tensor:
  """Union (or intersection) of N masks, like ``pycocotools.mask.merge``.

  Computed on the runs, without decoding pixels. The result is the
  canonical counts string of the merged mask (see the module docstring),
  byte for byte ``pycocotools.mask.merge(rles, intersect)['counts']`` for
  canonical inputs, and for N = 1 the input's canonical form.

  Args:
    counts: string vector [N], N >= 1 (or a scalar string: one mask).
    size: [2] = (height, width) or equal rows [N, 2].
    intersect: False for the union, True for the intersection.

  Returns:
    A scalar string: the counts of the merged mask, of the same size.

  Raises:
    tf.errors.InvalidArgumentError: malformed counts, masks of different
      sizes, or no masks at all (pycocotools returns size [0, 0] and counts
      b'' for an empty list, which is not a mask of `size`).
  """
  counts, _ = _as_counts(counts)
  height, width, checks = _as_size(size)
  intersect = tf.convert_to_tensor(intersect, tf.bool)
  if tf.executing_eagerly():
    return _merge_fn(counts, height, width, intersect)
  with tf.control_dependencies(checks):
    height = tf.identity(height)
  return _merge(counts, height, width, intersect)


def _merge(counts: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
           intersect: tf.Tensor) -> tf.Tensor:
  """Counts of the union / intersection of masks counts [N] (see `merge`).

  Each non-empty 1-run adds +1 at its start and -1 at its end; the running
  sum over the sorted positions is the number of masks covering the pixels
  that follow. The merged mask flips where (cover > 0), or (cover == N) for
  the intersection, changes.
  """
  runs = _parse(counts, height, width)
  check_some = tf.debugging.Assert(
      runs.num_masks > 0,
      ['rle.merge: needs at least one mask (pycocotools.mask.merge([])'
       " returns size [0, 0] and counts b'', not a mask of the given size)"])
  with tf.control_dependencies(runs.check + [check_some]):
    b = tf.identity(runs.boundaries)
  is_one = tf.logical_and(tf.equal(runs.index_in_mask % 2, 1),
                          runs.counts > 0)
  positions = tf.concat([tf.boolean_mask(b - runs.counts, is_one),
                         tf.boolean_mask(b, is_one)], 0)
  num_ones = tf.size(positions, out_type=tf.int64) // 2
  steps = tf.concat([tf.ones([num_ones], tf.int64),
                     -tf.ones([num_ones], tf.int64)], 0)
  order = tf.argsort(positions, stable=True)
  positions = tf.gather(positions, order)
  steps = tf.gather(steps, order)
  # One entry per distinct position: the cover after it.
  is_new = tf.concat([tf.ones([tf.minimum(tf.size(positions), 1)], tf.bool),
                      positions[1:] != positions[:-1]], 0)
  group = tf.cumsum(tf.cast(is_new, tf.int64)) - 1
  num_groups = tf.reduce_sum(tf.cast(is_new, tf.int64))
  cover = tf.cumsum(tf.math.unsorted_segment_sum(steps, group, num_groups))
  where_at = tf.boolean_mask(positions, is_new)
  value = tf.where(intersect, cover >= runs.num_masks, cover > 0)
  before = tf.concat([[False], value[:-1]], 0)
  # The merged mask's boundaries: its flips inside the mask, then h * w.
  flips = tf.boolean_mask(where_at, tf.logical_and(
      tf.not_equal(value, before), where_at < height * width))
  ends = tf.concat([flips, tf.reshape(height * width, [1])], 0)
  merged = ends - tf.concat([[0], ends[:-1]], 0)
  num_runs = tf.size(merged, out_type=tf.int64)
  return _encode_runs(merged, tf.zeros([num_runs], tf.int64),
                      tf.range(num_runs), tf.constant(1, tf.int64))[0]


_merge_fn = tf.function(
    _merge, input_signature=[_STRINGS, _SCALAR, _SCALAR,
                             tf.TensorSpec([], tf.bool)], autograph=False)
