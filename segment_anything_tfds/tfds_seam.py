"""Every touchpoint with TensorFlow Datasets' internals, in one place.

The local build (`local_build.py`) writes a split's shard files itself, so
it needs four things TFDS does not export as public API: its example
serializer (the reference the direct serializer, `serializer.py`, is
checked against byte for byte), how it picks the number of shards, how it
names shard files, and its file adapters (for formats other than TFRecord).
They are wrapped here, and `tests/test_tfds_seam.py` checks each against
the installed TFDS, failing with a message that names the TFDS version when
one changes. Everything else in the package uses TFDS's public surface
(`tfds.core.GeneratorBasedBuilder` and its hooks, `tfds.core.SplitInfo`,
`tfds.features`).
"""

from __future__ import annotations

import os
import struct
from typing import Iterable, Sequence, Union

from etils import epath
import tensorflow_datasets as tfds

TESTED_TFDS_VERSIONS = ('4.9.',)


def tfds_version() -> str:
  return tfds.__version__


class Serializer:
  """Encodes and serializes examples as TFDS does, but deterministically.

  The reference: builds write with `serializer.serialize_pieces`, which
  `tests/test_serializer.py` checks gives exactly these bytes.

  TFDS's `features.serialize_example` writes the `tf.train.Example` feature
  map in an order that varies between processes; this writes it sorted, so
  a build's files are byte-identical whatever process wrote them. Readers
  see the same example either way.
  """

  def __init__(self, features):
    from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
    self._features = features
    self._serializer = example_serializer.ExampleSerializer(
        features.get_serialized_info())

  def __call__(self, example) -> bytes:
    proto = self._serializer.get_tf_example(
        self._features.encode_example(example))
    return proto.SerializeToString(deterministic=True)


def number_of_shards(*, total_size: int, num_examples: int,
                     min_shard_size: int, max_shard_size: int) -> int:
  """The number of shards TFDS's Beam writer would write for this split.

  The Beam writer's rule (no precise sharding), so that a local build and a
  Beam build of the same tars have as many shards.
  """
  from tensorflow_datasets.core.utils import shard_utils  # pylint: disable=g-import-not-at-top
  config = shard_utils.ShardConfig(min_shard_size=min_shard_size,
                                   max_shard_size=max_shard_size)
  return config.get_number_shards(total_size=total_size,
                                  num_examples=num_examples,
                                  uses_precise_sharding=False)


def filename_template(data_dir: epath.PathLike, *, dataset_name: str,
                      split: str, file_format: tfds.core.FileFormat):
  """TFDS's template of a split's shard file names."""
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  return naming.ShardedFileTemplate(
      data_dir=epath.Path(data_dir), dataset_name=dataset_name, split=split,
      filetype_suffix=file_format.file_suffix)


def shard_path(template, index: int, count: int) -> epath.Path:
  """The path of shard `index` of `count` (`...-00003-of-00016`)."""
  return template.sharded_filepath(shard_index=index, num_shards=count)


# TFRecord framing: length (8) + its masked CRC (4) + data + data CRC (4).
TFRECORD_OVERHEAD = 16


def _crc32c():
  """google_crc32c's C `extend(crc, data)`, or None if it is not installed."""
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if google_crc32c.implementation != 'c':
    return None  # The pure-Python fallback is far slower than TensorFlow's.
  return google_crc32c.extend


def _masked(crc: int) -> bytes:
  return struct.pack(
      '<I', (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


# A record: its bytes, or its pieces in order (`serializer.serialize_pieces`).
Record = Union[bytes, Sequence[bytes]]

# Pieces are gathered up to this many bytes or pieces (under IOV_MAX), then
# written with one system call.
_GATHER_BYTES = 1 << 20
_GATHER_PIECES = 512


def _write_all(fd: int, pieces: list[bytes]) -> None:
  """Writes the pieces in order, as few system calls as it takes."""
  if not hasattr(os, 'writev'):  # pragma: no cover - not POSIX.
    for piece in pieces:
      view = memoryview(piece)
      while view:
        view = view[os.write(fd, view):]
    return
  first = 0
  while first < len(pieces):
    written = os.writev(fd, pieces[first:first + _GATHER_PIECES])
    if not written and any(pieces[first:first + _GATHER_PIECES]):
      raise OSError(f'write to fd {fd} wrote nothing')
    while first < len(pieces) and written >= len(pieces[first]):
      written -= len(pieces[first])
      first += 1
    if written:  # Part of a piece was written.
      pieces[first] = memoryview(pieces[first])[written:]


def _write_tfrecord(path: str, records: Iterable[Record], extend) -> None:
  """TFRecord framing (`tf.io.TFRecordWriter`'s bytes), pieces uncopied."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
  try:
    gathered, size = [], 0
    for record in records:
      pieces = (record,) if isinstance(record, bytes) else record
      length, crc = 0, 0
      for piece in pieces:
        length += len(piece)
        crc = extend(crc, piece)
      head = struct.pack('<Q', length)
      gathered.append(head + _masked(extend(0, head)))
      gathered.extend(pieces)
      gathered.append(_masked(crc))
      size += length
      if size >= _GATHER_BYTES or len(gathered) >= _GATHER_PIECES:
        _write_all(fd, gathered)
        gathered, size = [], 0
    _write_all(fd, gathered)
  finally:
    os.close(fd)


def write_records(path: epath.PathLike, file_format: tfds.core.FileFormat,
                  records: Iterable[Record]) -> None:
  """Writes serialized examples to one file in a TFDS file format.

  `records` is consumed as the file is written, so memory holds one record
  at a time (and up to 1 MiB of records gathered for one write). A record
  given in pieces is written piece by piece, never joined, so an image's
  bytes are not copied between their read and the write. TFRecord files
  are framed here, byte-identical to `tf.io.TFRecordWriter` (tested), so a
  local build never imports TensorFlow; other formats go through TFDS's
  own file adapter.
  """
  extend = _crc32c()
  if file_format == tfds.core.FileFormat.TFRECORD and extend is not None:
    _write_tfrecord(os.fspath(path), records, extend)
    return
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  adapter = file_adapters.ADAPTER_FOR_FORMAT[file_format]
  adapter.write_examples(path, ((None, r if isinstance(r, bytes)
                                 else b''.join(r)) for r in records))
