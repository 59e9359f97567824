"""Every touchpoint with TensorFlow Datasets' internals, in one place.

The local build (`local_build.py`) writes a split's shard files itself, so
it needs four things TFDS does not export as public API: its example
serializer, how it picks the number of shards, how it names shard files, and
its file adapters (for formats other than TFRecord). They
are wrapped here, and `tests/test_tfds_seam.py` checks each against the
installed TFDS, failing with a message that names the TFDS version when one
changes. Everything else in the package uses TFDS's public surface
(`tfds.core.GeneratorBasedBuilder` and its hooks, `tfds.core.SplitInfo`,
`tfds.features`).
"""

from __future__ import annotations

import os
import struct
from typing import Iterable

from etils import epath
import tensorflow_datasets as tfds

TESTED_TFDS_VERSIONS = ('4.9.',)


def tfds_version() -> str:
  return tfds.__version__


class Serializer:
  """Encodes and serializes examples as TFDS does, but deterministically.

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
  """google_crc32c's C CRC-32C, or None if it is not installed."""
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if google_crc32c.implementation != 'c':
    return None  # The pure-Python fallback is far slower than TensorFlow's.
  return google_crc32c.value


def _masked_crc(data: bytes, crc32c) -> bytes:
  crc = crc32c(data)
  return struct.pack(
      '<I', (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def write_records(path: epath.PathLike, file_format: tfds.core.FileFormat,
                  records: Iterable[bytes]) -> None:
  """Writes serialized examples to one file in a TFDS file format.

  `records` is consumed as the file is written, so memory holds one record
  at a time. TFRecord files are framed here, byte-identical to
  `tf.io.TFRecordWriter` (tested), so a local build never imports
  TensorFlow; other formats go through TFDS's own file adapter.
  """
  crc32c = _crc32c()
  if file_format == tfds.core.FileFormat.TFRECORD and crc32c is not None:
    with open(os.fspath(path), 'wb', buffering=1 << 22) as f:
      for record in records:
        length = struct.pack('<Q', len(record))
        f.write(length + _masked_crc(length, crc32c))
        f.write(record)
        f.write(_masked_crc(record, crc32c))
    return
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  adapter = file_adapters.ADAPTER_FOR_FORMAT[file_format]
  adapter.write_examples(path, ((None, r) for r in records))
