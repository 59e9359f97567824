"""Lazy examples: flat memory for local Beam builds.

TFDS's Beam writer groups every serialized example by output shard
('GroupShards'). On Dataflow that is a disk-backed shuffle, but Beam's local
FnApiRunner holds grouped data in Python lists in RAM, so an eager local build
holds the whole dataset in memory, several times over (≈0.5 GB per 100
SA-1B images).

In lazy mode, 'ReadExamples' reads and checks every image exactly as in eager
mode (same errors, same lenient audit) but emits a stand-in: the same `image`
fields with `content` set to a reference to the image's two members in its
tar (`reference`), and empty annotations: ≈0.8 kB instead of ≈1.2 MB. The
dataset's `LazyExampleWriter` (TFDS's `ExampleWriter` hook) re-reads each
referenced pair from its tar as it writes the shard, so records on disk are
the same as in eager mode. Lazy mode is for local builds of local tars and
folders (`plan`): on Dataflow the shuffle already bounds memory, and a second
read of every image from a bucket would cost time and money.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
from typing import Any, Iterable, Sequence

from etils import epath
import tensorflow_datasets as tfds

from segment_anything_tfds import runners
from segment_anything_tfds import shards as shards_lib
from segment_anything_tfds import tars as tars_lib

LAZY_MAGIC = b'\x00\x00segment_anything_tfds.lazy.v1\x00'
_LEN_DIGITS = 8


def reference(shard: shards_lib.Shard, pair: tars_lib.Pair) -> bytes:
  """Self-delimiting bytes naming an image's members: magic, length, data."""
  data = pickle.dumps((shard, pair), protocol=pickle.HIGHEST_PROTOCOL)
  return LAZY_MAGIC + b'%0*x' % (_LEN_DIGITS, len(data)) + data


def _empty(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _empty(v) for k, v in value.items()}
  return value[:0]


def stand_in(
    example: dict[str, Any], shard: shards_lib.Shard, pair: tars_lib.Pair
) -> dict[str, Any]:
  """A stand-in for `example`: the reference as its image, no annotations."""
  return {
      'image': dict(example['image'], content=reference(shard, pair)),
      'annotations': _empty(example['annotations']),
  }


def find_reference(
    serialized: bytes,
) -> tuple[shards_lib.Shard, tars_lib.Pair] | None:
  """The (shard, pair) a serialized stand-in refers to; None if it is none."""
  i = serialized.find(LAZY_MAGIC)
  if i < 0:
    return None
  i += len(LAZY_MAGIC)
  n = int(serialized[i:i + _LEN_DIGITS], 16)
  i += _LEN_DIGITS
  return pickle.loads(serialized[i:i + n])


_OPEN_TARS = 8


class LazyExampleWriter:
  """A TFDS `ExampleWriter` that writes full examples for lazy stand-ins.

  Give it to TFDS from the builder's `_example_writer()` when the pipeline
  runs with `lazy=True` (see `plan`). Each stand-in is rebuilt from its tar with the same
  code as in eager mode, encoded and serialized, then written; records that
  are not stand-ins are written as they are. A shard's examples come in
  hashed (random) order, so the last few tars used stay open.
  """

  def __init__(self, file_format, features):
    from tensorflow_datasets.core import writer as writer_lib  # pylint: disable=g-import-not-at-top
    self.file_format = file_format
    self._features = features
    self._writer = writer_lib.ExampleWriter(file_format=file_format)

  def __getstate__(self):
    return {'file_format': self.file_format, 'features': self._features}

  def __setstate__(self, state):
    self.__init__(state['file_format'], state['features'])

  def write(self, path, examples: Iterable[tuple[Any, bytes]]):
    from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
    if (self.file_format == file_adapters.FileFormat.TFRECORD
        and _crc32c() is not None):
      return write_tfrecord(path, (s for _, s in self._resolve(examples)))
    return self._writer.write(path, self._resolve(examples))

  def _resolve(self, examples):
    from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top
    serializer = example_serializer.ExampleSerializer(
        self._features.get_serialized_info())
    # Examples come in hashed order, from any tar: keep a few tars open (each
    # open tar holds a 1 MB read buffer and a file descriptor).
    readers: collections.OrderedDict[str, tars_lib.ShardReader] = (
        collections.OrderedDict())
    try:
      for key, serialized in examples:
        ref = find_reference(serialized)
        if ref is None:
          yield key, serialized
          continue
        shard, pair = ref
        reader = readers.pop(shard.name, None)
        if reader is None:
          reader = tars_lib.ShardReader(shard).__enter__()
          if len(readers) >= _OPEN_TARS:
            readers.popitem(last=False)[1].__exit__(None, None, None)
        readers[shard.name] = reader
        _, example = tars_lib.read_example(reader, pair)
        yield key, serializer.serialize_example(
            self._features.encode_example(example))
    finally:
      for reader in readers.values():
        reader.__exit__(None, None, None)


# TFRecord framing: length (8) + its CRC (4) + data + data CRC (4).
_TFRECORD_OVERHEAD = 16


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


def write_tfrecord(path, records: Iterable[bytes]) -> None:
  """Writes a TFRecord file as `tf.io.TFRecordWriter` does, without TF.

  A lazy build then never imports TensorFlow (about 3 s and 0.3 GB RSS on a
  small machine). Needs google-crc32c's C extension (`_crc32c()`).
  """
  crc32c = _crc32c()
  with epath.Path(path).open('wb') as f:
    for record in records:
      length = struct.pack('<Q', len(record))
      f.write(length + _masked_crc(length, crc32c))
      f.write(record)
      f.write(_masked_crc(record, crc32c))


def num_shards(shards: Sequence[shards_lib.Shard]) -> int | None:
  """Output shards for a lazy build: as TFDS would pick for eager examples.

  TFDS picks the number of shards from the size of the serialized examples
  it sees, which in lazy mode are stand-ins. Records are ~0.98 of the raw
  jpg + json bytes, so the tars' sizes give the same choice. None when a
  shard is not local (a URL, or a tar in a bucket): lazy mode is for local
  tars and folders only.
  """
  from tensorflow_datasets.core.utils import shard_utils  # pylint: disable=g-import-not-at-top
  total = 0
  for shard in shards:
    if shard.kind == shards_lib.DIR:
      total += sum(p.jpg.size + p.json.size
                   for p in tars_lib.index_shard(shard).pairs)
    elif shard.kind == shards_lib.TAR and shards_lib.is_local(shard.location):
      total += shards_lib.size_of(shard.location)
    else:  # Remote: re-reading each image at write time would fetch it twice.
      return None
  return shard_utils.ShardConfig.calculate_number_shards(
      total_size=total, num_examples=max(1, total >> 20),
      uses_precise_sharding=False)


def split_info(info):
  """A split's `info` with `num_bytes` of the records written.

  TFDS sums the stand-ins' sizes; the TFRecord files hold the real records,
  each framed by 16 bytes.
  """
  size = sum(p.stat().length for p in info.filepaths)
  return info.replace(num_bytes=size - _TFRECORD_OVERHEAD * info.num_examples)


def plan(
    shards: Sequence[shards_lib.Shard],
    download_config: tfds.download.DownloadConfig,
    file_format: Any,
) -> tfds.download.DownloadConfig | None:
  """The download config of a lazy build, or None if it should be eager.

  Lazy when Beam runs locally (FnApiRunner), every shard is a local tar or
  folder, and the output is TFRecord. TFDS would size the output shards from
  the stand-ins, so the number of shards is set from the tars' sizes unless
  the user chose one.
  """
  formats = tfds.core.file_adapters.FileFormat
  if (not runners.is_local(download_config)
      or formats.from_value(file_format) != formats.TFRECORD):
    return None
  count = num_shards(shards)
  if count is None:
    return None
  if download_config.num_shards is None:
    download_config = dataclasses.replace(download_config, num_shards=count)
  return download_config
