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

An index file read (`read_pairs`, e.g. one shared by others) is input: a
local one must be a regular file (checked before a read: no FIFO that
blocks, no /dev/zero), a `.jsonl` line is at most `MAX_LINE_BYTES`, a
`.parquet` row group's two columns read at most `MAX_GROUP_BYTES` and a
`.parquet` file holds at most `MAX_ROWS` rows (by its footer, checked
before the read), and anything that cannot be read or is
no row is one line naming the file and the line, row or row group, values
cut (`image_list.shown`).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterable, Iterator

from etils import epath
import numpy as np

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import image_list
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import local

COLUMNS = ('image_id', 'tar', 'jpg', 'jpg_offset', 'jpg_size', 'json',
           'json_offset', 'json_size')
FORMATS = ('.jsonl', '.parquet')
# A .jsonl index line longer than this is refused (a row is under 1 kB).
MAX_LINE_BYTES = 1 << 20
# A .parquet row group whose image_id and tar columns would take more than
# this once read is refused before it is read (parquet reads a row group's
# column whole). This package writes one row group per tar: about 0.2 MB.
MAX_GROUP_BYTES = 256 << 20
# A .parquet index of more rows than this is refused by its footer: SA-1B
# has 11.2 M images, and a few bytes of parquet can say many millions of
# rows (each one read and checked).
MAX_ROWS = 12_000_000


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
  new `.part` file of this run (see `local.new_part`) renamed over the
  destination by `close`, replacing a file already there; on any failure
  (of `close` too) the part file is removed."""

  def __init__(self, path: epath.PathLike):
    self.path = epath.Path(path)
    self.format = index_format(os.fspath(path))
    try:
      self._part, self._file = local.new_part(self.path)
    except local.write_failures(path) as e:
      raise local.cannot_write(path, 'the index', e) from None
    self._parquet = None
    self.rows = 0

  def write(self, batch: list[dict[str, Any]]) -> None:
    """Appends the rows of `batch` (a one-line error naming the file if the
    write fails: the disk is full); the caller `abort`s."""
    try:
      self._write(batch)
    except local.write_failures(self.path) as e:
      if isinstance(e, errors.Error):
        raise
      raise local.cannot_write(self.path, 'the index', e) from None

  def _write(self, batch: list[dict[str, Any]]) -> None:
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
    """Finishes the file under its name; if that fails, leaves none (a
    one-line error for an OSError)."""
    try:
      if self.format == '.parquet':
        if self._parquet is None:  # No rows: an empty table, its schema.
          pa = _pyarrow()
          self._parquet = pa.parquet.ParquetWriter(self._file, _schema(pa))
        self._parquet.close()
      self._file.close()
      self._part.replace(self.path)
    except BaseException as e:
      self.abort()
      if isinstance(e, local.write_failures(self.path)) and not isinstance(
          e, errors.Error):
        raise local.cannot_write(self.path, 'the index', e) from None
      raise

  def abort(self) -> None:
    """Leaves no file behind (its parquet writer closed first: left open, it
    would write into the closed file when it goes)."""
    if self._parquet is not None:
      with contextlib.suppress(Exception):
        self._parquet.close()
      self._parquet = None
    local.discard_part(self._part, self._file)


def _schema(pa):
  types = {'image_id': pa.int64(), 'tar': pa.string(), 'jpg': pa.string(),
           'json': pa.string()}
  return pa.schema([(c, types.get(c, pa.int64())) for c in COLUMNS])


# ------------------------------------------------------------- reading


def _bad(path: str, where: Any, detail: str) -> errors.ConfigError:
  return errors.ConfigError(f'{path}{"" if where is None else f":{where}"}:'
                            f' {detail}')


def _why(e: BaseException) -> str:
  """An error from a library, in one line of at most 200 characters."""
  text = str(e) or e.__class__.__name__
  return errors.printable(text if len(text) <= 200 else text[:197] + '...')


def _check_row(path: str, where: Any, image_id: Any, tar: Any
               ) -> tuple[int, int]:
  """(image id, tar index) of a row, or a one-line error naming it."""
  if isinstance(image_id, bool) or not isinstance(image_id, int) or not (
      0 <= image_id < 1 << 63):
    raise _bad(path, where, f'image_id {image_list.shown(image_id)} is not an'
               ' image id')
  tar_index = links_lib.shard_index(tar) if isinstance(tar, str) else None
  if tar_index is None:
    raise _bad(path, where, f'tar {image_list.shown(tar)} is not an SA-1B'
               ' tar name (sa_NNNNNN.tar)')
  return image_id, tar_index


def read_pairs(path: epath.PathLike) -> Iterator[tuple[int, int]]:
  """(image id, tar index) of every row of an index file, checked.

  The file is opened, and a local one checked to be a regular file (not a
  FIFO, a device or a directory), at once: a bad path fails here, before
  any work; rows are read as iterated.
  """
  path_text = os.fspath(path)
  fmt = index_format(path_text)
  f = local.open_input(path_text, 'index')
  return _Rows(f, (_jsonl_pairs if fmt == '.jsonl' else _parquet_pairs)(
      f, path_text))


class _Rows:
  """The checked rows of an open index file, as iterated; `close` closes
  the file, read or not (a generator not started would leave it open)."""

  def __init__(self, file, rows: Iterator[tuple[int, int]]):
    self._file = file
    self._rows = rows

  def __iter__(self):
    return self

  def __next__(self) -> tuple[int, int]:
    return next(self._rows)

  def close(self) -> None:
    self._rows.close()
    self._file.close()


def _jsonl_pairs(f, path: str) -> Iterator[tuple[int, int]]:
  """The rows of a .jsonl index: a line at a time, of at most
  `MAX_LINE_BYTES`."""
  with f:
    number = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
      number += 1
      if len(line) > MAX_LINE_BYTES and not line.endswith(b'\n'):
        raise _bad(path, number, f'a line over {MAX_LINE_BYTES >> 20} MiB:'
                   ' not an index row (one is under 1 kB)')
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except RecursionError:
        raise _bad(path, number, 'not a JSON object (nested too deeply)'
                   ) from None
      except ValueError:
        raise _bad(path, number, 'not a JSON object') from None
      if not isinstance(row, dict):
        raise _bad(path, number, 'not a JSON object')
      yield _check_row(path, number, row.get('image_id'), row.get('tar'))


def _parquet_pairs(f, path: str) -> Iterator[tuple[int, int]]:
  """The rows of a .parquet index, a batch at a time; a file that cannot
  be read (a bad footer, a corrupt page) is a one-line error naming the
  row group."""
  pa = _pyarrow()
  failures = (pa.ArrowException, OSError, ValueError)
  with f:
    try:
      table = pa.parquet.ParquetFile(f)
      columns = set(table.schema_arrow.names)
      groups = table.num_row_groups
    except failures as e:
      raise _bad(path, None, f'not a parquet file ({_why(e)})') from None
    if not {'image_id', 'tar'} <= columns:
      raise _bad(path, None, 'not an image index: no image_id and tar'
                 f' columns (it has {", ".join(sorted(columns)[:8])})')
    if table.metadata.num_rows > MAX_ROWS:
      raise _bad(path, None, f'{table.metadata.num_rows} rows, over'
                 f' {MAX_ROWS}: not an SA-1B index (11.2 M images); not'
                 ' read')
    first = 0
    for group in range(groups):
      _check_group_size(table.metadata, group, path)
      batches = None
      while True:
        try:
          if batches is None:
            batches = table.iter_batches(columns=['image_id', 'tar'],
                                         row_groups=[group])
          batch = next(batches, None)
          if batch is None:
            break
          image_ids = batch.column('image_id').to_pylist()
          tars = batch.column('tar').to_pylist()
        except failures as e:
          raise _bad(path, f'row group {group + 1} of {groups}', 'cannot be'
                     f' read ({_why(e)})') from None
        for i, (image_id, tar) in enumerate(zip(image_ids, tars)):
          yield _check_row(path, f'row {first + i + 1}', image_id, tar)
        first += len(image_ids)


def _check_group_size(metadata, group: int, path: str) -> None:
  """Refuses a row group whose image_id and tar columns would read more
  than `MAX_GROUP_BYTES` (their uncompressed sizes in the footer)."""
  row_group = metadata.row_group(group)
  size = sum(row_group.column(i).total_uncompressed_size
             for i in range(row_group.num_columns)
             if row_group.column(i).path_in_schema in ('image_id', 'tar'))
  if size > MAX_GROUP_BYTES:
    raise _bad(path, f'row group {group + 1} of {metadata.num_row_groups}',
               f'its image_id and tar columns take {size} bytes, over'
               f' {MAX_GROUP_BYTES >> 20} MiB: not read (this package writes'
               ' a row group per tar, about 0.2 MB)')


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
