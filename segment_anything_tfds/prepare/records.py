"""SA-1B JSON + JPEG -> TFDS example: pure functions, no I/O.

Everything here takes bytes or parsed values and returns new values; nothing
reads files, and inputs are never mutated. Problems raise `BadInputError`,
which names the tar, the member and what is wrong, and carries a short
`reason` code that lenient builds count in the dataset's metadata.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping, Sequence, Tuple

import numpy as np

from segment_anything_tfds import errors

try:  # A faster JSON parser, used when installed; same results as `json`.
  import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent.
  _orjson = None

# Canonical image stems: `sa_` and ASCII digits, no leading zeros, so that
# one image id has exactly one name.
_STEM_RE = re.compile(r'sa_(0|[1-9][0-9]*)')
# Image ids are int64 in a build (its entries, `plan.image_order`); a larger
# number names no SA-1B image (whose ids are below 12 M).
MAX_IMAGE_ID = (1 << 63) - 1


Where = Tuple[str, str]  # (tar, member) of the input at fault.


def bad_input(reason: str, where: Where, detail: str) -> errors.BadInputError:
  """The error for `detail` about the member `where` = (tar, member)."""
  return errors.BadInputError(reason, where[0], where[1], detail)


def image_id_from_stem(stem: str) -> int | None:
  """`sa_123` -> 123; None for any other stem (`sa_0123`, `sa_١`, `SA_1`,
  an id over `MAX_IMAGE_ID`)."""
  m = _STEM_RE.fullmatch(stem)
  if m is None or len(m.group(1)) > len(str(MAX_IMAGE_ID)):
    return None
  image_id = int(m.group(1))
  return image_id if image_id <= MAX_IMAGE_ID else None


def parse_json(data: bytes, *, where: Where) -> Any:
  """Parses JSON bytes, raising `BadInputError` on malformed input."""
  try:
    if _orjson is not None:
      return _orjson.loads(data)
    return json.loads(data)
  except (ValueError, UnicodeDecodeError) as e:
    raise bad_input(errors.MALFORMED_JSON, where, f'malformed JSON: {e}') from None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) from a JPEG's SOF header, or None if it has none.

  Reads only the marker segments before the first SOF, so it is cheap. It is
  the corrupt-JPEG check: a file that is not a JPEG, is cut short or whose
  header disagrees with the JSON's size is caught without decoding pixels.
  """
  n = len(data)
  if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
    return None
  i = 2
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # Fill byte.
      i += 1
      continue
    if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # No length field.
      i += 2
      continue
    length = (data[i + 2] << 8) | data[i + 3]
    if length < 2:
      return None
    # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      if i + 9 > n:
        return None
      height = (data[i + 5] << 8) | data[i + 6]
      width = (data[i + 7] << 8) | data[i + 8]
      return height, width
    i += 2 + length
  return None


def check_jpeg(data: bytes, *, height: int, width: int, where: Where) -> None:
  """Raises `BadInputError` unless `data` is a whole JPEG of that size."""
  size = jpeg_size(data)
  if size is None:
    raise bad_input(
        errors.CORRUPT_JPEG, where, 'not a JPEG: no SOI/SOF header could be read'
    )
  if size != (height, width):
    raise bad_input(
        errors.CORRUPT_JPEG, where,
        f'JPEG header says {size[0]}x{size[1]} (h x w) but the JSON says'
        f' {height}x{width}',
    )
  # A JPEG ends with EOI (FF D9); some writers pad after it.
  if data.rfind(b'\xff\xd9', max(0, len(data) - 1024)) < 0:
    raise bad_input(
        errors.CORRUPT_JPEG, where, 'JPEG is truncated: no end-of-image marker'
    )


def _field(obj: Any, key: str, *, where: Where, what: str) -> Any:
  if not isinstance(obj, Mapping):
    raise bad_input(
        errors.MISSING_FIELD, where, f'{what} must be an object, got {obj!r:.80}'
    )
  if key not in obj:
    raise bad_input(errors.MISSING_FIELD, where, f'{what} has no "{key}" field')
  return obj[key]


# The dataset stores IoUs, stability scores and points as float32 (as TFDS
# writes float64 features). A number of this size or more rounds to
# infinity there: float32's largest value plus half its last step (the
# tie rounds to even, 2**128). Exact in float64.
_FLOAT32_LIMIT = float(2**128 - 2**103)


def _number(v: Any, *, where: Where, what: str) -> float:
  """`v` if it is a number (not a bool) that float64 holds: not NaN, not
  infinite, not an integer too large to convert."""
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise bad_input(errors.BAD_VALUE, where, f'{what} must be a number, got {v!r:.80}')
  try:
    finite = math.isfinite(v)
  except OverflowError:  # An int past float64's range (parsed without orjson).
    finite = False
  if not finite:
    raise bad_input(errors.BAD_VALUE, where,
                    f'{what} must be a finite number, got {_shown_number(v)}')
  return v


def _shown_number(v: Any) -> str:
  """A number for a message: an integer's digits cut to 80."""
  text = repr(v)
  return text if len(text) <= 80 else f'{text[:40]}...({len(text)} digits)'


def _float32(v: Any, *, where: Where, what: str) -> float:
  """`_number`, and finite once stored as float32 (|v| below 3.4e38)."""
  v = _number(v, where=where, what=what)
  if not -_FLOAT32_LIMIT < float(v) < _FLOAT32_LIMIT:
    raise bad_input(
        errors.BAD_VALUE, where,
        f'{what} {_shown_number(v)} is infinite as float32, the type the'
        ' dataset stores it in (largest: 3.4028235e38)')
  return v


def _int(v: Any, *, where: Where, what: str) -> int:
  if isinstance(v, bool) or not isinstance(v, int) or v < 0:
    raise bad_input(
        errors.BAD_VALUE, where, f'{what} must be a non-negative integer, got {v!r:.80}'
    )
  return v


def _numbers(v: Any, n: int, *, where: Where, what: str,
             check=_number) -> list[float]:
  """`n` numbers, each passed through `check` (`_number`, `_float32`)."""
  if not isinstance(v, (list, tuple)) or len(v) != n:
    raise bad_input(
        errors.BAD_VALUE, where, f'{what} must have {n} numbers, got {v!r:.80}'
    )
  return [check(x, where=where, what=what) for x in v]


def normalize_box(
    box: list[float], *, height: int, width: int, where: Where, what: str
) -> list[float]:
  """SA-1B [x, y, w, h] pixels -> TFDS [ymin, xmin, ymax, xmax] in [0, 1].

  The arithmetic is the builtin builder's, so boxes are equal to its output.
  SA-1B boxes are inclusive extents and are kept as they are.
  """
  x, y, w, h = box
  out = [y / height, x / width, (y + h) / height, (x + w) / width]
  if not (0.0 <= out[0] <= out[2] <= 1.0 and 0.0 <= out[1] <= out[3] <= 1.0):
    raise bad_input(
        errors.BAD_VALUE, where,
        f'{what} {box!r} does not fit in the {height}x{width} image',
    )
  return out


def _checked_columns(
    annotations: list, *, height: int, width: int, where: Where
) -> tuple[np.ndarray, ...]:
  """The annotation columns, checking each field and naming the first bad one."""
  n = len(annotations)
  area = np.empty((n,), np.uint64)
  ids = np.empty((n,), np.uint64)
  iou = np.empty((n,), np.float64)
  stability = np.empty((n,), np.float64)
  points = np.empty((n, 1, 2), np.float64)
  bbox = np.empty((n, 4), np.float32)
  crop_box = np.empty((n, 4), np.float32)
  sizes = np.empty((n, 2), np.uint64)
  counts = []
  for i, ann in enumerate(annotations):
    what = f'annotations[{i}]'
    get = lambda k, ann=ann, what=what: _field(ann, k, where=where, what=what)
    ids[i] = _int(get('id'), where=where, what=f'{what}.id')
    area[i] = _int(get('area'), where=where, what=f'{what}.area')
    iou[i] = _float32(get('predicted_iou'), where=where,
                      what=f'{what}.predicted_iou')
    stability[i] = _float32(
        get('stability_score'), where=where, what=f'{what}.stability_score')
    point = get('point_coords')
    if not isinstance(point, list) or len(point) != 1:
      raise bad_input(
          errors.BAD_VALUE, where,
          f'{what}.point_coords must be [[x, y]], got {point!r:.80}',
      )
    points[i, 0] = _numbers(point[0], 2, where=where,
                            what=f'{what}.point_coords', check=_float32)
    bbox[i] = normalize_box(
        _numbers(get('bbox'), 4, where=where, what=f'{what}.bbox'),
        height=height, width=width, where=where, what=f'{what}.bbox')
    crop_box[i] = normalize_box(
        _numbers(get('crop_box'), 4, where=where, what=f'{what}.crop_box'),
        height=height, width=width, where=where, what=f'{what}.crop_box')
    seg = get('segmentation')
    size = _field(seg, 'size', where=where, what=f'{what}.segmentation')
    rle_counts = _field(seg, 'counts', where=where, what=f'{what}.segmentation')
    if size != [height, width]:
      raise bad_input(
          errors.SIZE_MISMATCH, where,
          f'{what}.segmentation.size {size!r:.40} differs from the image'
          f' size [{height}, {width}]',
      )
    if not isinstance(rle_counts, str) or not rle_counts:
      raise bad_input(
          errors.BAD_VALUE, where,
          f'{what}.segmentation.counts must be a non-empty string, got'
          f' {rle_counts!r:.80}',
      )
    sizes[i] = (height, width)
    counts.append(rle_counts)

  return (area, bbox, crop_box, ids, points, iou,
          np.array(counts, dtype=object).reshape((n,)), sizes, stability)


_NUMBER_TYPES = (int, float)
_MAX_FAST_INT = 1 << 63  # Larger ids and areas take the checked path.


def _fast_columns(
    annotations: list, *, height: int, width: int
) -> tuple[np.ndarray, ...] | None:
  """The annotation columns if every field is plainly well formed, else None.

  The common case, checked with few calls per annotation: exact types
  (`int`, `float`, `list`, `dict`, `str`), the same box arithmetic and range
  checks as `normalize_box`, and the float32 fields finite as `_float32`
  asks (one vector check per field). Anything unusual (a bool, a tuple, a
  missing key, a box out of range, a number too large) returns None, and
  `_checked_columns` then accepts or rejects the input with its exact
  error. Results are equal either way.
  """
  n = len(annotations)
  ids, area, iou, stability, points, bbox, crop_box, counts = (
      [], [], [], [], [], [], [], [])
  size = [height, width]
  num = _NUMBER_TYPES
  try:
    for ann in annotations:
      if type(ann) is not dict:  # pylint: disable=unidiomatic-typecheck
        return None
      i, a = ann['id'], ann['area']
      if (type(i) is not int or type(a) is not int  # pylint: disable=unidiomatic-typecheck
          or not 0 <= i < _MAX_FAST_INT or not 0 <= a < _MAX_FAST_INT):
        return None
      q, st = ann['predicted_iou'], ann['stability_score']
      if type(q) not in num or type(st) not in num:
        return None
      point = ann['point_coords']
      if type(point) is not list or len(point) != 1:  # pylint: disable=unidiomatic-typecheck
        return None
      point = point[0]
      if (type(point) is not list or len(point) != 2  # pylint: disable=unidiomatic-typecheck
          or type(point[0]) not in num or type(point[1]) not in num):
        return None
      boxes = []
      for box in (ann['bbox'], ann['crop_box']):
        if type(box) is not list or len(box) != 4:  # pylint: disable=unidiomatic-typecheck
          return None
        x, y, w, h = box
        if (type(x) not in num or type(y) not in num or type(w) not in num
            or type(h) not in num):
          return None
        out = [y / height, x / width, (y + h) / height, (x + w) / width]
        if not (0.0 <= out[0] <= out[2] <= 1.0
                and 0.0 <= out[1] <= out[3] <= 1.0):
          return None
        boxes.append(out)
      seg = ann['segmentation']
      if type(seg) is not dict:  # pylint: disable=unidiomatic-typecheck
        return None
      rle_counts = seg['counts']
      if seg['size'] != size or type(rle_counts) is not str or not rle_counts:  # pylint: disable=unidiomatic-typecheck
        return None
      ids.append(i)
      area.append(a)
      iou.append(q)
      stability.append(st)
      points += point  # Flat lists: numpy converts them faster than nested.
      bbox += boxes[0]
      crop_box += boxes[1]
      counts.append(rle_counts)
    floats = [np.array(v, np.float64) for v in (points, iou, stability)]
  except (KeyError, OverflowError):  # OverflowError: an int past float64.
    return None
  if not all(_all_float32(v) for v in floats):
    return None
  points, iou, stability = floats
  sizes = np.empty((n, 2), np.uint64)
  sizes[:] = size
  return (
      np.array(area, np.uint64).reshape((n,)),
      np.array(bbox, np.float32).reshape((n, 4)),
      np.array(crop_box, np.float32).reshape((n, 4)),
      np.array(ids, np.uint64).reshape((n,)),
      points.reshape((n, 1, 2)),
      iou.reshape((n,)),
      np.array(counts, dtype=object).reshape((n,)),
      sizes,
      stability.reshape((n,)),
  )


def _all_float32(values: np.ndarray) -> bool:
  """Whether every value is finite once stored as float32 (`_float32`)."""
  return bool((np.abs(values) < _FLOAT32_LIMIT).all())


# Longest count accepted, in characters: 8 * 5 = 40 bits, signed, so a run
# may hold up to 2**39 - 1 pixels (pycocotools itself stores 32-bit runs).
# The validator here, the TensorFlow decoder (`rle.py`) and the C extension
# (`MAX_CHARS_PER_COUNT` in `_rle.c`, tested against this reference) refuse
# longer ones.
MAX_CHARS_PER_COUNT = 8
# The decoder's size rule (`rle._static_size`): int64 pixel indices.
_MAX_SIDE = 1 << 62
_MAX_INDEX = (1 << 63) - 1
# Totals past h*w are reported up to this (the C pass's uint64).
_MAX_TOTAL = (1 << 64) - 1

# Why an RLE string cannot decode: the codes `_rle.first_bad` returns.
(_EMPTY, _CHARACTER, _UNFINISHED, _TOO_LONG, _NEGATIVE, _TOTAL, _NOT_TEXT,
 _SIZE) = range(1, 9)

try:  # The C pass (setup.py builds it); the Python reference if not built.
  from segment_anything_tfds import _rle  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - exercised where the build failed.
  _rle = None


def first_problem(counts: Any, height: int, width: int
                  ) -> tuple[int, int] | None:
  """(code, value) of what stops `counts` decoding to h x w, or None.

  Plain Python, one string: the reference that `_rle.first_bad` must
  agree with on every input (the tests' oracle), and the check itself when
  the C pass is not built. Parses code points as pycocotools' `rleFrString`
  parses bytes, and accepts exactly what `rle.decode` decodes.
  """
  if (not 0 <= height <= _MAX_SIDE or not 0 <= width <= _MAX_SIDE
      or (height + 1) * (width + 1) > _MAX_INDEX):
    return _SIZE, 0
  if not isinstance(counts, str):
    return _NOT_TEXT, 0
  pixels = height * width
  if not counts:  # No runs: right for an empty mask only.
    return None if pixels == 0 else (_EMPTY, 0)
  total, runs, p, n = 0, [], 0, len(counts)
  while p < n:
    x, k, more = 0, 0, True
    while more:
      if p >= n:
        return _UNFINISHED, 0
      c = ord(counts[p])
      if not 48 <= c <= 111:
        return _CHARACTER, c
      c -= 48
      if k == MAX_CHARS_PER_COUNT:
        chars = k
        while p < n and 80 <= ord(counts[p]) <= 111:
          p, chars = p + 1, chars + 1
        return _TOO_LONG, chars + 1
      x |= (c & 0x1f) << (5 * k)
      more = bool(c & 0x20)
      p, k = p + 1, k + 1
      if not more and c & 0x10:
        x -= 1 << (5 * k)
    if len(runs) > 2:
      x += runs[-2]
    if x < 0:
      return _NEGATIVE, 0
    total += x
    if total > pixels:  # Runs are not negative: it cannot come back down.
      return _TOTAL, min(total, _MAX_TOTAL)
    runs.append(x)
  return None if total == pixels else (_TOTAL, total)


def first_bad_reference(counts: Sequence[Any], height: int, width: int
                        ) -> tuple[int, int, int] | None:
  """`_rle.first_bad` in plain Python: (index, code, value) or None."""
  for i, text in enumerate(counts):
    found = first_problem(text, height, width)
    if found is not None:
      return (i, *found)
  return None


def check_counts(counts: np.ndarray, area: np.ndarray, *, height: int,
                 width: int, where: Where) -> None:
  """Checks that every RLE string decodes to an `height` x `width` mask.

  The format is COCO compressed RLE (stated in `rle.py`). One pass over all
  of an image's strings (in C: `_rle`; without it, the slower
  `first_bad_reference`, with the same verdicts) finds the first bad one:
  an empty string, characters outside '0'..'o' (48..111), a count left
  unfinished, a count over 8 characters, a negative run, or runs that do not
  sum to h*w; or a size too large to decode. An `area` over h*w is refused
  too.

  Raises:
    BadInputError: `bad_rle` (or `bad_value` for the area), naming the
      annotation index.
  """
  if not len(counts):
    return
  first_bad = (first_bad_reference if _rle is None
               else _rle.first_bad)
  found = first_bad(counts, height, width)
  if found is not None:
    i, code, value = found
    raise bad_input(errors.BAD_RLE, where, f'annotations[{i}].segmentation.counts'
                    f' {_rle_problem(code, value, height, width)}')
  pixels = height * width
  over = area > pixels
  if over.any():
    i = int(np.argmax(over))
    raise bad_input(errors.BAD_VALUE, where, f'annotations[{i}].area {area[i]} is'
                    f' over h*w = {pixels}')


def check_unique_ids(ids: np.ndarray, *, where: Where) -> None:
  """Refuses an annotation id that comes twice in one image.

  COCO readers index annotations by id (pycocotools keeps one of each), so
  a repeat would lose masks silently. One sort of the image's ids.

  Raises:
    BadInputError: `bad_value`, naming the first annotation whose id an
      earlier one has, and that one.
  """
  if len(ids) < 2:
    return
  order = np.argsort(ids, kind='stable')  # Equal ids keep their order.
  ordered = ids[order]
  again = ordered[1:] == ordered[:-1]
  if not again.any():
    return
  i = int(order[1:][again].min())
  first = int(order[np.searchsorted(ordered, ids[i])])
  raise bad_input(errors.BAD_VALUE, where,
                  f'annotations[{i}].id {ids[i]} is also annotations[{first}]'
                  '.id: annotation ids must be unique within an image')


def _rle_problem(code: int, value: int, height: int, width: int) -> str:
  if code == _EMPTY:
    return 'is empty'
  if code == _CHARACTER:
    what = chr(value) if value < 128 else f'U+{value:04X} (non-ASCII)'
    return f'has the character {what!r} outside "0".."o"'
  if code == _UNFINISHED:
    return 'ends inside a count (an unfinished continuation character)'
  if code == _TOO_LONG:
    return (f'has a count of {value} characters (at most'
            f' {MAX_CHARS_PER_COUNT})')
  if code == _NEGATIVE:
    return 'decodes to a negative run length'
  if code == _TOTAL:
    return (f'has runs summing to {value}{"+" if value > height * width else ""},'
            f' not h*w = {height}*{width} = {height * width}')
  if code == _SIZE:
    return (f'cannot decode at the size {height} x {width}: height and width'
            ' must be at most 2**62 and (height + 1) * (width + 1) below'
            ' 2**63 (int64 pixel indices)')
  return 'is not text'


def make_example(
    jpeg: bytes, record: Any, *, stem: str, where: Where
) -> tuple[int, dict[str, Any]]:
  """Builds one TFDS example from an image's JPEG bytes and parsed JSON.

  Args:
    jpeg: the `.jpg` member's bytes; stored as they are, never re-encoded.
    record: the parsed `.json` member.
    stem: the members' shared name without extension, e.g. `sa_223750`.
    where: `tar:member` used in error messages.

  Returns:
    (key, example): the key is the image id.

  Raises:
    BadInputError: on any missing field, bad value or inconsistency.
  """
  image = _field(record, 'image', where=where, what='the JSON')
  image_id = _int(_field(image, 'image_id', where=where, what='"image"'),
                  where=where, what='image.image_id')
  file_name = _field(image, 'file_name', where=where, what='"image"')
  height = _int(_field(image, 'height', where=where, what='"image"'),
                where=where, what='image.height')
  width = _int(_field(image, 'width', where=where, what='"image"'),
               where=where, what='image.width')
  expected_id = image_id_from_stem(stem)
  if expected_id != image_id:
    raise bad_input(
        errors.ID_MISMATCH, where,
        f'image_id {image_id} disagrees with the member name {stem!r}',
    )
  if file_name != f'{stem}.jpg':
    raise bad_input(
        errors.ID_MISMATCH, where,
        f'file_name {file_name!r} disagrees with the member name {stem}.jpg',
    )
  if height == 0 or width == 0:
    raise bad_input(
        errors.ZERO_SIZE, where, f'image size is {height}x{width} (h x w)'
    )
  check_jpeg(jpeg, height=height, width=width, where=where)

  annotations = _field(record, 'annotations', where=where, what='the JSON')
  if not isinstance(annotations, list):
    raise bad_input(
        errors.BAD_VALUE, where, f'"annotations" must be a list, got {annotations!r:.80}'
    )
  columns = _fast_columns(annotations, height=height, width=width)
  if columns is None:  # Something is off: find and report it exactly.
    columns = _checked_columns(annotations, height=height, width=width,
                               where=where)
  area, bbox, crop_box, ids, points, iou, counts, sizes, stability = columns
  check_unique_ids(ids, where=where)
  check_counts(counts, area, height=height, width=width, where=where)

  example = {
      'image': {
          'content': jpeg,
          'file_name': file_name,
          'height': height,
          'image_id': image_id,
          'width': width,
      },
      'annotations': {
          'area': area,
          'bbox': bbox,
          'crop_box': crop_box,
          'id': ids,
          'point_coords': points,
          'predicted_iou': iou,
          'segmentation': {
              'counts': counts,
              'size': sizes,
          },
          'stability_score': stability,
      },
  }
  return image_id, example
