"""Image lists: which SA-1B images a build takes (`images_config`).

A list names images by id (`223750`) or by jpg name (`sa_223750.jpg`), in
a file or in Python:

  text     one id or name per line (blank lines are skipped)
  JSON     a list of ids or names (`[1, "sa_2.jpg", "3"]`), or a COCO-style
           object whose "images" entries have a "file_name" and/or an "id",
           like MASA's SA-1B-500K list (`{"images": [{"id": 1, "file_name":
           "sa_1.jpg", ...}, ...]}`)

Ids are written as the tars write them: ASCII digits without leading zeros
(the one rule, `records.image_id_from_stem`). Anything else is refused in
one line naming the file and the line (or the JSON entry).

A list's canonical form is its ids, sorted, each once. Its `sha256` is the
SHA-256 of that form written as text, one decimal id per line, each line
ending in a newline (`sort -n -u ids.txt | sha256sum` gives it for a file of
ids); the first `SHORT` hex digits name its config, so different lists never
share a data dir.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib

# Hex digits of the list's SHA-256 in its config's name (48 bits).
SHORT = 12
# A list file larger than this is refused (SA-1B's 11 M names take 170 MB).
MAX_LIST_BYTES = 1 << 30
_EXAMPLE = 'expected an image id or an sa_<id>.jpg name, e.g. 223750 or' \
    ' sa_223750.jpg'


@dataclasses.dataclass(frozen=True, eq=False)
class ImageList:
  """A canonical image list: sorted unique ids, and where they came from.

  Small and picklable (the engines ship it to their workers): 8 bytes per
  id. `image_id in images` is a binary search.

  Attributes:
    ids: the ids, sorted, each once (int64).
    origin: where the list came from, for messages (a path, or
      'the list given').
    sha256: the SHA-256 of the canonical text (see the module doc).
  """

  ids: np.ndarray
  origin: str
  sha256: str = dataclasses.field(init=False)

  def __post_init__(self):
    text = ''.join(f'{i}\n' for i in self.ids.tolist())
    object.__setattr__(self, 'sha256',
                       hashlib.sha256(text.encode('ascii')).hexdigest())

  @property
  def short(self) -> str:
    """The first `SHORT` hex digits of `sha256`: the config name's part."""
    return self.sha256[:SHORT]

  def __len__(self) -> int:
    return len(self.ids)

  def __contains__(self, image_id: int) -> bool:
    at = int(np.searchsorted(self.ids, image_id))
    return at < len(self.ids) and int(self.ids[at]) == image_id

  def isin(self, image_ids: np.ndarray) -> np.ndarray:
    """For each id, whether it is listed."""
    image_ids = np.asarray(image_ids, np.int64)
    at = np.minimum(np.searchsorted(self.ids, image_ids), len(self.ids) - 1)
    return self.ids[at] == image_ids

  def __repr__(self) -> str:
    return f'ImageList({len(self)} ids from {self.origin}, {self.short})'


def _refuse(where: str, detail: str) -> errors.ConfigError:
  return errors.ConfigError(f'{where}: {detail}')


def _shown(item: Any) -> str:
  text = repr(item)
  return errors.printable(text if len(text) <= 60 else text[:57] + '...')


def parse_item(item: Any, where: str) -> int:
  """An image id from one entry: an int, id digits, or an sa_<id>.jpg name.

  Raises:
    errors.ConfigError: naming `where` (file:line, or an entry).
  """
  image_id = None
  if isinstance(item, int) and not isinstance(item, bool):
    image_id = item if 0 <= item <= records_lib.MAX_IMAGE_ID else None
  elif isinstance(item, str):
    stem = item[:-len('.jpg')] if item.endswith('.jpg') else 'sa_' + item
    image_id = records_lib.image_id_from_stem(stem)
  if image_id is None:
    raise _refuse(where, f'{_shown(item)}: {_EXAMPLE} (ids in ASCII digits'
                  ' without leading zeros, below 2**63, as in the tars)')
  return image_id


def _coco_entry(entry: Any, where: str) -> int:
  """The id of a COCO-style "images" entry (its file_name and/or id)."""
  if not isinstance(entry, dict) or not ({'file_name', 'id'} & set(entry)):
    raise _refuse(where, f'{_shown(entry)}: expected an object with a'
                  ' "file_name" (sa_<id>.jpg) and/or an "id"')
  ids = [parse_item(entry[k], f'{where} "{k}"')
         for k in ('file_name', 'id') if k in entry]
  if len(set(ids)) > 1:
    raise _refuse(where, f'"file_name" {_shown(entry["file_name"])} and'
                  f' "id" {entry["id"]} name different images')
  return ids[0]


def _from_json(text: str, origin: str) -> list[int]:
  try:
    value = json.loads(text)
  except ValueError as e:
    line = getattr(e, 'lineno', '?')
    raise _refuse(f'{origin}:{line}', f'not valid JSON ({e.__class__.__name__}:'
                  f' {getattr(e, "msg", e)})') from None
  if isinstance(value, list):
    return [parse_item(v, f'{origin}: entry {i + 1}')
            for i, v in enumerate(value)]
  if isinstance(value, dict) and isinstance(value.get('images'), list):
    return [_coco_entry(v, f'{origin}: "images" entry {i + 1}')
            for i, v in enumerate(value['images'])]
  raise _refuse(origin, 'expected a JSON list of image ids or sa_<id>.jpg'
                ' names, or an object with an "images" list (COCO style,'
                ' as MASA\'s)')


def _from_lines(text: str, origin: str) -> list[int]:
  ids = []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if line:
      ids.append(parse_item(line, f'{origin}:{number}'))
  return ids


def parse_text(data: bytes, origin: str) -> list[int]:
  """The ids of a list file's bytes, in file order (see the module doc)."""
  if data.startswith(b'\xef\xbb\xbf'):
    data = data[3:]
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise _refuse(f'{origin}:{line}', 'not UTF-8 text') from None
  if text.lstrip()[:1] in ('[', '{'):
    return _from_json(text, origin)
  return _from_lines(text, origin)


def read_file(path: os.PathLike | str) -> list[int]:
  """The ids of a list file (local or a bucket), in file order."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  origin = os.fspath(path)
  try:
    with epath.Path(path).open('rb') as f:
      data = f.read(MAX_LIST_BYTES + 1)
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
    raise errors.SourceError(f'image list {origin}: no such file') from None
  except OSError as e:
    raise errors.SourceError(f'image list {origin}: cannot be read ({e})'
                             ) from None
  if len(data) > MAX_LIST_BYTES:
    raise _refuse(origin, f'over {MAX_LIST_BYTES >> 20} MiB: not an image'
                  ' list')
  return parse_text(data, origin)


def canonical(ids: Iterable[int], origin: str) -> ImageList:
  """The `ImageList` of ids: sorted, each once; an empty list is refused."""
  array = np.unique(np.fromiter(ids, np.int64))
  if not len(array):
    raise _refuse(origin, 'no image ids: an image list names at least one'
                  ' image')
  return ImageList(array, origin)


def make(images: Any) -> ImageList:
  """An `ImageList` from a path (str or path-like) to a list file, an
  iterable of ids or names, or an `ImageList` (returned as it is)."""
  if isinstance(images, ImageList):
    return images
  if isinstance(images, (str, os.PathLike)):
    return canonical(read_file(images), os.fspath(images))
  if isinstance(images, (bytes, dict)) or not hasattr(images, '__iter__'):
    raise errors.ConfigError(
        f'images={_shown(images)}: expected a path to a list file, or a list'
        ' of image ids or sa_<id>.jpg names')
  origin = 'the list given'
  items = images.tolist() if isinstance(images, np.ndarray) else images
  return canonical((parse_item(v, f'{origin}: entry {i + 1}')
                    for i, v in enumerate(items)), origin)
