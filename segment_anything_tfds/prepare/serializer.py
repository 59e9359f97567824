"""An example's serialized `tf.train.Example`, framed here byte by byte.

TFDS serializes an example in pure Python, feature by feature and
annotation by annotation (`FeaturesDict.encode_example`, then its
`ExampleSerializer` and protobuf): about 5 ms for an SA-1B image with 100
masks, most of a build's time. This module writes the same bytes directly,
one numpy call per field, in well under a millisecond. The reference is
TFDS's path (`tfds_seam.Serializer`): `tests/test_serializer.py` checks the
two byte for byte, and fails naming the installed TFDS version if TFDS's
format changes.

What TFDS writes for the features of `features.py` (TFDS 4.9), and so this:

* A `tf.train.Example` whose feature map is keyed by the flattened feature
  names (`annotations/bbox`, `image/content`, ...), entries in sorted key
  order (protobuf's deterministic serialization, as `tfds_seam` asks for).
* Integer features (the `uint64` ids, areas and sizes): an `int64_list`
  whose values are the uint64 bits read as int64; on the wire a packed run
  of varints of the uint64 values.
* Float features: a packed `float_list`. The float64 ones (IoU, stability,
  point) are rounded to float32 as protobuf's C conversion does: round to
  nearest even, overflow to infinity, NaN kept quiet; numpy's cast is the
  same C cast.
* Boxes (`BBoxFeature`): float32 [ymin, xmin, ymax, xmax], as given.
* Strings: a `bytes_list`; text as UTF-8, the JPEG's bytes as they are.
* The annotations (a one-level `Sequence`) are not ragged: each field is
  one list of all annotations' values, row after row (no row lengths; a
  field's length is the number of annotations times its shape). With no
  annotations, each is an empty list (an empty `*_list` message).

Only `example` as `examples.make_example` returns it is supported: the
fields it checks (box ranges, ids that fit in uint64, sizes) are not
checked again. The functions are pure and need numpy only (no TensorFlow,
no TFDS), so a Beam DoFn or a worker process can call them, or pickle them.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

# Field tags (field number << 3 | wire type 2, length-delimited).
_EXAMPLE_FEATURES = b'\n'  # Example.features = 1; Features.feature = 1.
_MAP_KEY = b'\n'  # A map entry's key = 1 ...
_MAP_VALUE = b'\x12'  # ... and value = 2.
_BYTES_LIST = b'\n'  # Feature.bytes_list = 1.
_FLOAT_LIST = b'\x12'  # Feature.float_list = 2.
_INT64_LIST = b'\x1a'  # Feature.int64_list = 3.
_VALUE = b'\n'  # BytesList/FloatList/Int64List.value = 1 (packed numbers).

# Small varints, by value.
_SMALL = [bytes([n]) for n in range(0x80)]


def varint(n: int) -> bytes:
  """The protobuf varint of an integer in [0, 2**64)."""
  if n < 0x80:
    return _SMALL[n]
  if n < 0x4000:
    return bytes((n & 0x7F | 0x80, n >> 7))
  out = bytearray()
  while n >= 0x80:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # 7 bits per varint byte.


# Fewer values than this are written one by one: numpy's calls cost more.
_FEW = 32


def varints(values: np.ndarray) -> bytes:
  """The packed varints of a uint64 array's values, in C order."""
  v = values.reshape(-1)
  if v.size < _FEW:
    return b''.join([varint(x) for x in v.tolist()])
  top = int(v.max())
  if top < 0x80:
    return v.astype(np.uint8).tobytes()
  groups = (top.bit_length() + 6) // 7
  shifted = v[:, None] >> _SHIFTS[:groups]  # (n, groups): 7-bit groups.
  digits = (shifted & np.uint64(0x7F)).astype(np.uint8)
  more = shifted[:, 1:] != 0  # Group j + 1 is written.
  digits[:, :-1] |= more.view(np.uint8) << np.uint8(7)
  keep = np.ones(shifted.shape, bool)
  keep[:, 1:] = more
  return digits[keep].tobytes()


def _key(name: str) -> bytes:
  """The start of a map entry's body: its key and the value's tag."""
  data = name.encode('utf-8')
  return _MAP_KEY + varint(len(data)) + data + _MAP_VALUE


# The features in sorted key order (deterministic serialization), with the
# start of each one's map entry.
_ANNOTATIONS = [(f, _key(f'annotations/{f}')) for f in (
    'area', 'bbox', 'crop_box', 'id', 'point_coords', 'predicted_iou')]
_COUNTS_KEY = _key('annotations/segmentation/counts')
_SIZE_KEY = _key('annotations/segmentation/size')
_STABILITY_KEY = _key('annotations/stability_score')
_CONTENT_KEY = _key('image/content')  # Sorts first of the image's.
_IMAGE_KEYS = [(f, _key(f'image/{f}'))
               for f in ('file_name', 'height', 'image_id', 'width')]
_INTS = frozenset(('area', 'id', 'height', 'image_id', 'width'))


def _entry_start(key: bytes, list_tag: bytes, body_size: int) -> bytes:
  """A map entry's bytes up to its list's body, of `body_size` bytes."""
  body = varint(body_size)
  feature_size = 1 + len(body) + body_size
  feature = varint(feature_size)
  entry = varint(len(key) + len(feature) + feature_size)
  return b''.join((_EXAMPLE_FEATURES, entry, key, feature, list_tag, body))


def _packed(key: bytes, list_tag: bytes, data: bytes) -> bytes:
  """A whole map entry of packed numbers (no body when there are none)."""
  if not data:
    return _entry_start(key, list_tag, 0)
  body = _VALUE + varint(len(data))
  return _entry_start(key, list_tag, len(body) + len(data)) + body + data


def _ints(key: bytes, values: Any) -> bytes:
  if type(values) is int:  # One value (the image's): no numpy.  pylint: disable=unidiomatic-typecheck
    if not 0 <= values < 1 << 64:
      raise OverflowError(f'{values} does not fit in uint64')
    return _packed(key, _INT64_LIST, varint(values))
  return _packed(key, _INT64_LIST, varints(np.asarray(values, np.uint64)))


def _floats(key: bytes, values: Any) -> bytes:
  return _packed(key, _FLOAT_LIST,
                 np.asarray(values).astype('<f4', copy=False).tobytes())


def _as_bytes(value: Any) -> bytes:
  """A `bytes_list` value as TFDS takes it: text as UTF-8, bytes as is."""
  if isinstance(value, str):
    return value.encode('utf-8')
  if isinstance(value, bytes):
    return value
  raise TypeError(f'expected bytes or text, got {value!r:.80}')


@functools.lru_cache(maxsize=1 << 14)
def _value_start(size: int) -> bytes:
  """The tag and size of a `bytes_list` value of `size` bytes."""
  return _VALUE + varint(size)


def _bytes_entry(key: bytes, values) -> list[bytes]:
  """A whole `bytes_list` map entry, as pieces (the values not copied)."""
  pieces = []
  size = 0
  for value in values:
    # The common case (an RLE string) first, then any other.
    data = value.encode('utf-8') if type(value) is str else _as_bytes(value)  # pylint: disable=unidiomatic-typecheck
    n = len(data)
    start = _value_start(n)
    pieces.append(start)
    pieces.append(data)
    size += len(start) + n
  return [_entry_start(key, _BYTES_LIST, size), *pieces]


def _check_lengths(annotations: Mapping[str, Any]) -> None:
  """Every annotation field must have a row per annotation."""
  n = len(annotations['id'])
  fields = [(k, v) for k, v in annotations.items() if k != 'segmentation']
  fields += [(f'segmentation/{k}', v)
             for k, v in annotations['segmentation'].items()]
  for name, value in fields:
    if len(value) != n:
      raise ValueError(f'annotations/{name} has {len(value)} rows, not'
                       f' {n} as annotations/id')


def serialize_pieces(example: Mapping[str, Any]
                     ) -> tuple[bytes, bytes, bytes]:
  """The serialized example as (head, JPEG bytes, tail), the JPEG uncopied.

  `b''.join(pieces)` is `serialize(example)`. A writer can write (and
  checksum) the pieces one by one, so that the ~1 MB JPEG is never copied
  between its read and its write.
  """
  annotations = example['annotations']
  image = example['image']
  _check_lengths(annotations)
  with np.errstate(over='ignore', invalid='ignore'):  # Casts as protobuf's.
    head = [_ints(key, annotations[f]) if f in _INTS
            else _floats(key, annotations[f]) for f, key in _ANNOTATIONS]
    head += _bytes_entry(_COUNTS_KEY, annotations['segmentation']['counts'])
    head.append(_ints(_SIZE_KEY, annotations['segmentation']['size']))
    head.append(_floats(_STABILITY_KEY, annotations['stability_score']))
  # The head ends with the start of `image/content`'s entry, up to the JPEG.
  jpeg = _as_bytes(image['content'])
  size = len(jpeg)
  value_start = _value_start(size)
  head.append(_entry_start(_CONTENT_KEY, _BYTES_LIST, len(value_start) + size)
              + value_start)
  tail = []
  for f, key in _IMAGE_KEYS:
    if f in _INTS:
      tail.append(_ints(key, image[f]))
    else:
      tail += _bytes_entry(key, (image[f],))
  tail = b''.join(tail)
  total = sum(map(len, head)) + size + len(tail)
  return b''.join([_EXAMPLE_FEATURES, varint(total), *head]), jpeg, tail


def serialize(example: Mapping[str, Any]) -> bytes:
  """The serialized `tf.train.Example` of an example, as TFDS writes it.

  Byte-identical to `tfds_seam.Serializer(features.features())(example)`
  for any `example` that `examples.make_example` returns.
  """
  return b''.join(serialize_pieces(example))
