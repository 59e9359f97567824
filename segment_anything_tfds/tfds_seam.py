"""Every touchpoint with TensorFlow Datasets' internals, in one place.

The builder and the engines need some things TFDS does not export as
public API. They are wrapped here, and `tests/test_tfds_seam.py` checks
each against the installed TFDS, failing with a message that names the TFDS
version when one changes:

  register           the dataset-builder provider registry: the name
                     `segment_anything` resolves to this package's builder,
                     whatever was imported before, the builder's module
                     imported only when TFDS asks for the name
  builtin_builder    TFDS's own builder of that name (for its 1.x data)
  Serializer         TFDS's example serializer: the reference that the
                     direct serializer (`prepare/serializer.py`) is checked
                     against byte for byte
  number_of_shards   how many shards TFDS's writer would choose
  filename_template, shard_path, split_info
                     how TFDS names shard files and describes a split
  write_records      a shard file in a TFDS file format (TFRecord framed
                     here; other formats through TFDS's file adapters)
  LogHooks           the builder's start/end lines, instead of TFDS's

TFDS itself is imported by each function when it is called: the engines'
worker processes, which only write TFRecord files, never import it.
Everything else in the package uses TFDS's public surface
(`tfds.core.GeneratorBasedBuilder`, `tfds.core.SplitInfo`, `tfds.features`).
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from typing import Any, Callable, Iterable, Sequence, Union

from segment_anything_tfds import _import_hook

_LOG = logging.getLogger(__name__)
_TFDS = 'tensorflow_datasets'

TESTED_TFDS_VERSIONS = ('4.9.',)


# ------------------------------------------------------------ registration


class _Provider:
  """A TFDS dataset-builder provider for one name, its class loaded late."""

  def __init__(self, name: str, load: Callable[[], type]):
    self.name = name
    self.load = load

  def has_dataset(self, name: str) -> bool:
    return name == self.name

  def get_builder_cls(self, name: str) -> type:
    del name
    return self.load()


def _add_provider(name: str, load: Callable[[], type]) -> None:
  """Puts a provider of `name` first in TFDS's registry, once."""
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top
  for provider in registered._DATASET_PROVIDER_REGISTRY:  # pylint: disable=protected-access
    if isinstance(provider, _Provider) and provider.name == name:
      return
  registered.add_dataset_builder_provider(_Provider(name, load), index=0)


class _WhenTfdsLoads:
  """Once `tensorflow_datasets` is loaded, registers the providers waiting
  for it (`hook`, an `_import_hook.OnImport` on `sys.meta_path`; removed
  then)."""

  def __init__(self):
    self.waiting: list[tuple[str, Callable[[], type]]] = []
    self.hook = _import_hook.OnImport(_TFDS, self.load)

  def load(self, load_module: Callable[[], None]) -> None:
    load_module()
    if self.hook in sys.meta_path:
      sys.meta_path.remove(self.hook)
    waiting, self.waiting = self.waiting, []
    for name, load in waiting:
      _add_provider(name, load)


def register(name: str, load: Callable[[], type]) -> None:
  """Makes TFDS resolve `name` with `load()` (a builder class), first.

  TFDS refuses a second class registered under a name, and its builtin
  `segment_anything` may already be imported; so the builder class skips
  registration, and a provider placed first in TFDS's provider list
  answers for the name, in every import order. If TFDS is not imported
  yet, the provider is added as soon as it is: registering imports
  neither TFDS nor the builder.
  """
  if _TFDS in sys.modules:
    _add_provider(name, load)
    return
  waiting = next((f.run.__self__ for f in sys.meta_path
                  if isinstance(f, _import_hook.OnImport)
                  and f.name == _TFDS), None)
  if waiting is None:
    waiting = _WhenTfdsLoads()
    sys.meta_path.insert(0, waiting.hook)
  waiting.waiting.append((name, load))


def builtin_builder() -> type:
  """TFDS's own `segment_anything` builder class (its 1.x versions)."""
  from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin  # pylint: disable=g-import-not-at-top
  return builtin.Builder


class LogHooks:
  """The builder's own lines where TFDS logs its download and prepare
  (TFDS's line says 'Downloading ... Unknown size')."""

  def _log_download_bytes(self) -> None:
    _LOG.info('Preparing %s into %s', self.info.full_name, self.data_dir)

  def _log_download_done(self) -> None:
    _LOG.info('Prepared %s in %s', self.info.full_name, self.data_dir)


# -------------------------------------------------------------- writing


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


def format_of(value: Any):
  """TFDS's `FileFormat` of a format or its value ('tfrecord', ...)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.FileFormat(getattr(value, 'value', value))


def filename_template(data_dir: Any, *, dataset_name: str, split: str,
                      file_format: Any):
  """TFDS's template of a split's shard file names."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  return naming.ShardedFileTemplate(
      data_dir=epath.Path(data_dir), dataset_name=dataset_name, split=split,
      filetype_suffix=format_of(file_format).file_suffix)


def shard_path(template, index: int, count: int):
  """The path of shard `index` of `count` (`...-00003-of-00016`)."""
  return template.sharded_filepath(shard_index=index, num_shards=count)


def split_info(*, name: str, shard_lengths: Sequence[int], num_bytes: int,
               template):
  """TFDS's description of a split written with `template`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.SplitInfo(name=name, shard_lengths=list(shard_lengths),
                             num_bytes=num_bytes, filename_template=template)


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


def write_all(fd: int, pieces: list[bytes]) -> None:
  """Writes the pieces in order, as few system calls as it takes (the list
  is used up)."""
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
        write_all(fd, gathered)
        gathered, size = [], 0
    write_all(fd, gathered)
  finally:
    os.close(fd)


def write_records(path: Any, file_format: Any,
                  records: Iterable[Record]) -> None:
  """Writes serialized examples to one file in a TFDS file format.

  `records` is consumed as the file is written, so memory holds one record
  at a time (and up to 1 MiB of records gathered for one write). A record
  given in pieces is written piece by piece, never joined, so an image's
  bytes are not copied between their read and the write. TFRecord files
  are framed here, byte-identical to `tf.io.TFRecordWriter` (tested), so a
  build never imports TensorFlow (nor TFDS); other formats go through
  TFDS's own file adapter.
  """
  extend = _crc32c()
  if getattr(file_format, 'value', file_format) == 'tfrecord' and extend:
    _write_tfrecord(os.fspath(path), records, extend)
    return
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  adapter = file_adapters.ADAPTER_FOR_FORMAT[format_of(file_format)]
  adapter.write_examples(path, ((None, r if isinstance(r, bytes)
                                 else b''.join(r)) for r in records))
