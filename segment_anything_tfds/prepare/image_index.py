"""The image index: image id -> tar, member names, offsets and sizes.

Made from the tars at hand by the walker's index mode (`tars.index`: a
local tar's headers only, seeking past the data; a remote tar read front to
back), so a user can tell which tars an image list needs before downloading
them (`Holders`), and share the index. One row per image whose two members
can be read; images with a problem are left out and counted, per tar.

  column        type    meaning
  image_id      int64   the SA-1B image id
  tar           string  the shard, e.g. sa_000012.tar
  jpg, json     string  the member names, e.g. sa_223750.jpg
  jpg_offset,   int64   where each member's data starts in the tar (null
  json_offset           for an extracted sa_NNNNNN/ folder's files)
  jpg_size,     int64   each member's bytes
  json_size

Rows come tar by tar, by image id within a tar. Formats by extension:
`.jsonl` (always; names exactly as stored), `.parquet` (with pyarrow;
a name that is not UTF-8 is written with U+FFFD in place of its bad bytes).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable, Iterator

from etils import epath
import numpy as np

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import paths as paths_lib

COLUMNS = ('image_id', 'tar', 'jpg', 'jpg_offset', 'jpg_size', 'json',
           'json_offset', 'json_size')
FORMATS = ('.jsonl', '.parquet')


def index_format(path: str) -> str:
  """'.jsonl' or '.parquet', from the file name; else a one-line error."""
  for ext in FORMATS:
    if os.fspath(path).endswith(ext):
      if ext == '.parquet':
        _pyarrow()
      return ext
  raise errors.ConfigError(f'{path}: an index file name ends in .jsonl or'
                           ' .parquet')


def _pyarrow():
  try:
    import pyarrow  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise errors.ConfigError(
        'parquet needs pyarrow, which is not installed: pip install pyarrow,'
        ' or use a .jsonl index (always available)') from None
  return pyarrow


def rows(source: base.Source, index: tars_lib.Index) -> list[dict[str, Any]]:
  """The rows of a source's index: its pairs, by image id."""
  folder = source.folder
  return [{'image_id': p.image_id, 'tar': source.name,
           'jpg': p.jpg.name, 'jpg_offset': None if folder else p.jpg.offset,
           'jpg_size': p.jpg.size,
           'json': p.json.name,
           'json_offset': None if folder else p.json.offset,
           'json_size': p.json.size} for p in index.pairs]


def _utf8(name: str) -> str:
  return name.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')


class Writer:
  """Writes an index file, tar by tar; it appears whole or not at all: a
  new `.part` file of this run (on local disk created with O_EXCL and
  O_NOFOLLOW, never written through a planted symlink) renamed over the
  destination by `close`, replacing a file already there."""

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)
    self.format = index_format(os.fspath(path))
    self._part = self.path.parent / (
        f'.{self.path.name}.{os.getpid()}.{time.time_ns()}.part')
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if paths_lib.is_local(self._part):
        self._file = os.fdopen(os.open(
            self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            | os.O_CLOEXEC, 0o644), 'wb')
      else:
        self._file = self._part.open('wb')
    except OSError as e:
      raise errors.ConfigError(f'{path}: cannot write the index there'
                               f' ({e.strerror or e})') from None
    self._parquet = None
    self.rows = 0

  def write(self, batch: list[dict[str, Any]]) -> None:
    self.rows += len(batch)
    if self.format == '.jsonl':
      self._file.write(''.join(json.dumps(r) + '\n' for r in batch).encode())
      return
    if not batch:
      return
    pa = _pyarrow()
    if self._parquet is None:
      self._parquet = pa.parquet.ParquetWriter(self._file, _schema(pa))
    columns = {c: [r[c] for r in batch] for c in COLUMNS}
    for c in ('tar', 'jpg', 'json'):
      columns[c] = [_utf8(v) for v in columns[c]]
    self._parquet.write_table(pa.table(columns, schema=_schema(pa)))

  def close(self) -> None:
    """Finishes the file under its name."""
    if self.format == '.parquet':
      if self._parquet is None:  # No rows: an empty table, with its schema.
        pa = _pyarrow()
        self._parquet = pa.parquet.ParquetWriter(self._file, _schema(pa))
      self._parquet.close()
    self._file.close()
    self._part.replace(self.path)

  def abort(self) -> None:
    """Leaves no file behind."""
    self._file.close()
    self._part.unlink(missing_ok=True)


def _schema(pa):
  types = {'image_id': pa.int64(), 'tar': pa.string(), 'jpg': pa.string(),
           'json': pa.string()}
  return pa.schema([(c, types.get(c, pa.int64())) for c in COLUMNS])


# ------------------------------------------------------------- reading


def _bad(path: str, where: Any, detail: str) -> errors.ConfigError:
  return errors.ConfigError(f'{path}{"" if where is None else f":{where}"}:'
                            f' {detail}')


def _check_row(path: str, where: Any, image_id: Any, tar: Any
               ) -> tuple[int, int]:
  """(image id, tar index) of a row, or a one-line error naming it."""
  if isinstance(image_id, bool) or not isinstance(image_id, int) or not (
      0 <= image_id < 1 << 63):
    raise _bad(path, where, f'image_id {image_id!r} is not an image id')
  tar_index = links_lib.shard_index(tar) if isinstance(tar, str) else None
  if tar_index is None:
    raise _bad(path, where, f'tar {errors.printable(repr(tar))[:60]} is not'
               ' an SA-1B tar name (sa_NNNNNN.tar)')
  return image_id, tar_index


def read_pairs(path: epath.PathLike) -> Iterator[tuple[int, int]]:
  """(image id, tar index) of every row of an index file, checked."""
  path_text = os.fspath(path)
  fmt = index_format(path_text)
  try:
    f = epath.Path(path).open('rb')
  except FileNotFoundError:
    raise errors.SourceError(f'index {path_text}: no such file') from None
  with f:
    if fmt == '.jsonl':
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except ValueError:
          raise _bad(path_text, number, 'not a JSON object') from None
        if not isinstance(row, dict):
          raise _bad(path_text, number, 'not a JSON object')
        yield _check_row(path_text, number, row.get('image_id'),
                         row.get('tar'))
      return
    yield from _parquet_pairs(f, path_text)


def _parquet_pairs(f, path: str) -> Iterator[tuple[int, int]]:
  pa = _pyarrow()
  try:
    table = pa.parquet.ParquetFile(f)
    columns = set(table.schema_arrow.names)
    batches = table.iter_batches(columns=['image_id', 'tar'])
  except (pa.ArrowException, ValueError) as e:
    raise _bad(path, None, f'not a parquet file ({e})') from None
  if not {'image_id', 'tar'} <= columns:
    raise _bad(path, None, 'not an image index: no image_id and tar'
               f' columns (it has {", ".join(sorted(columns)[:8])})')
  first = 0
  for batch in batches:
    for i, (image_id, tar) in enumerate(zip(
        batch.column('image_id').to_pylist(), batch.column('tar').to_pylist())):
      yield _check_row(path, f'row {first + i + 1}', image_id, tar)
    first += batch.num_rows


# --------------------------------------------------------- which tars


_NONE = np.iinfo(np.int64).max


class Holders:
  """Which tar holds each listed image: the lowest, as the build keeps it
  (`rules.duplicates`).

  Attributes:
    images: the `image_list.ImageList`.
    tar_of: per listed id (in `images.ids` order), the lowest tar index
      holding it, or `_NONE`.
  """

  def __init__(self, images):
    self.images = images
    self.tar_of = np.full(len(images), _NONE)

  def add(self, image_ids: Iterable[int], tar_index: int | np.ndarray
          ) -> None:
    """Notes that `tar_index` (one, or one per id) holds `image_ids`."""
    ids = np.fromiter(image_ids, np.int64)
    tar_index = np.broadcast_to(np.asarray(tar_index, np.int64), ids.shape)
    listed = self.images.isin(ids)
    at = np.searchsorted(self.images.ids, ids[listed])
    np.minimum.at(self.tar_of, at, tar_index[listed])

  def tars(self) -> dict[int, int]:
    """Tar index -> listed images it holds (those another, lower tar holds
    too are counted there)."""
    found = self.tar_of[self.tar_of != _NONE]
    values, counts = np.unique(found, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))

  def missing(self) -> np.ndarray:
    """The listed ids no tar holds, sorted."""
    return self.images.ids[self.tar_of == _NONE]

  def report(self) -> dict[str, Any]:
    """What the `index --images` command prints, as data."""
    tars = self.tars()
    return {
        'list': self.images.origin, 'list_sha256': self.images.sha256,
        'listed': len(self.images),
        'tars': {links_lib.shard_name(t): n for t, n in sorted(tars.items())},
        'tar_spec': config_lib.format_tar_spec(tars),
        'missing': self.missing().tolist(),
    }
