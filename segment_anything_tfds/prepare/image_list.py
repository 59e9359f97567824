"""Image lists: which SA-1B images a build takes (`images_config`).

A list names images by id (`223750`) or by jpg name (`sa_223750.jpg`), in
a file or in Python:

  text     one id or name per line: a line ends at a newline (\\n) and
           nothing else; spaces, tabs and carriage returns around it are
           dropped, blank lines skipped
  JSON     a list of ids or names (`[1, "sa_2.jpg", "3"]`), or a COCO-style
           object whose "images" entries have a "file_name" and/or an "id",
           like MASA's SA-1B-500K list (`{"images": [{"id": 1, "file_name":
           "sa_1.jpg", ...}, ...]}`)

A file whose first character other than a space, tab, CR or LF is `[` or
`{` is JSON (a BOM is skipped). Ids are written as the tars write them:
ASCII digits without leading zeros (the one rule,
`records.image_id_from_stem`). Anything else is refused in one line naming
the file and the line (or the JSON entry): a \\v, \\f, U+2028 ... is
part of its line, not a line break, and so refused.

A list file is at most `MAX_LIST_BYTES` (256 MiB; a local one must be a
regular file, checked before it is read). A text list is read from its
bytes: it costs its size plus 8 bytes per id; a JSON list, its size twice
(its bytes and its text; 4 bytes per character if one is beyond Latin-1)
plus 8 bytes per id: its entries are decoded about `_Json.BATCH`
characters at a time.

A list's canonical form is its ids, sorted, each once. Its `sha256` is the
SHA-256 of that form written as text, one decimal id per line, each line
ending in a newline (`sort -n -u ids.txt | sha256sum` gives it for a file of
ids); the first `SHORT` hex digits name its config, so different lists never
share a data dir.
"""

from __future__ import annotations

import array
import codecs
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Iterable

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib

# Hex digits of the list's SHA-256 in its config's name (48 bits).
SHORT = 12
# A list file larger than this is refused (SA-1B's 11 M names take 170 MB;
# a text list is held once, plus 8 bytes per id).
MAX_LIST_BYTES = 256 << 20
# Bytes of a text list parsed at a time (and of a list checked as UTF-8).
_CHUNK = 1 << 20
# Dropped around a text list's line (which ends at a newline, only).
_BLANK = b' \t\r'
# Ids written out at a time to hash a list.
_HASHED = 1 << 16
# Before a JSON list's first [ or {.
_JSON_SPACE = re.compile(rb'[ \t\r\n]*')
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
    digest = hashlib.sha256()
    for at in range(0, len(self.ids), _HASHED):  # A bounded text at a time.
      digest.update(''.join(f'{i}\n' for i in self.ids[at:at + _HASHED]
                            .tolist()).encode('ascii'))
    object.__setattr__(self, 'sha256', digest.hexdigest())

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


def shown(item: Any, width: int = 60) -> str:
  """A value from input as a message shows it: its repr, at most `width`
  characters (cut with '...'), control characters escaped. A string is cut
  before its repr is made, so a huge value costs no more than `width`."""
  if isinstance(item, str) and len(item) > width:
    item = item[:width]
  try:
    text = repr(item)
  except RecursionError:
    text = f'a {type(item).__name__} nested too deeply'
  except ValueError:  # An int of over 4300 digits.
    text = f'an {type(item).__name__} too long to show'
  return errors.printable(text if len(text) <= width else
                          text[:width - 3] + '...')


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
    raise _refuse(where, f'{shown(item)}: {_EXAMPLE} (ids in ASCII digits'
                  ' without leading zeros, below 2**63, as in the tars)')
  return image_id


def _coco_entry(entry: Any, where: str) -> int:
  """The id of a COCO-style "images" entry (its file_name and/or id)."""
  if not isinstance(entry, dict) or not ({'file_name', 'id'} & set(entry)):
    raise _refuse(where, f'{shown(entry)}: expected an object with a'
                  ' "file_name" (sa_<id>.jpg) and/or an "id"')
  ids = [parse_item(entry[k], f'{where} "{k}"')
         for k in ('file_name', 'id') if k in entry]
  if len(set(ids)) > 1:
    raise _refuse(where, f'"file_name" {shown(entry["file_name"])} and'
                  f' "id" {entry["id"]} name different images')
  return ids[0]


class _JsonSyntax(errors.ConfigError):
  """The text is not JSON (as opposed to JSON that is not an image list)."""


class _Json:
  """A JSON text read a piece at a time (`json`'s `raw_decode`), so that a
  list's entries are Python objects a few at a time, never all at once: a
  list costs its text and 8 bytes per id, not its objects.

  It accepts what `json.loads` accepts, and refuses the rest (`_JsonSyntax`)
  with the line. A value the list does not need (COCO's "annotations",
  say) is walked the same way and dropped: a list an entry at a time, an
  object a key at a time.
  """

  _SPACE = re.compile(r'[ \t\r\n]*')
  _AFTER = re.compile(r'[ \t\r\n]*([,\]]?)')
  _decode = json.JSONDecoder().raw_decode
  # A list's entries are decoded about this many characters at a time.
  BATCH = 1 << 20

  def __init__(self, text: str, origin: str):
    self.text = text
    self.origin = origin
    self.at = 0

  def refuse(self, detail: str, at: int | None = None) -> _JsonSyntax:
    line = self.text.count('\n', 0, self.at if at is None else at) + 1
    return _JsonSyntax(f'{self.origin}:{line}: not valid JSON ({detail})')

  def bad_value(self, e: ValueError, at: int) -> _JsonSyntax:
    """A value `raw_decode` refused at `at` (a JSONDecodeError says where;
    an integer of over 4300 digits is a plain ValueError)."""
    if isinstance(e, json.JSONDecodeError):
      return self.refuse(f'JSONDecodeError: {e.msg}', e.pos)
    return self.refuse(f'ValueError: {errors.first_line(e)}', at)

  def peek(self) -> str:
    """The next character after blanks ('' at the end)."""
    self.at = self._SPACE.match(self.text, self.at).end()
    return self.text[self.at:self.at + 1]

  def take(self, char: str) -> bool:
    if self.peek() != char:
      return False
    self.at += 1
    return True

  def value(self) -> Any:
    self.peek()
    try:
      value, self.at = self._decode(self.text, self.at)
    except ValueError as e:
      raise self.bad_value(e, self.at) from None
    return value

  def elements(self) -> Iterable[Any]:
    """The value of each element of the list whose [ was just taken.

    About `BATCH` characters of entries at a time: up to a comma, decoded
    as a list of their own. A comma inside a string or a nested value
    leaves that text unbalanced, so it never decodes; then (or if the
    text is not JSON) the entries up to that comma are read one at a time.
    """
    if self.take(']'):
      return
    text, space, decode = self.text, self._SPACE.match, self._decode
    after = self._AFTER.match
    at, one_by_one_until = self.at, -1
    while True:
      if at > one_by_one_until:
        cut = text.find(',', at + self.BATCH)
        if cut > 0:
          try:
            batch = json.loads('[' + text[at:cut] + ']')
          except (ValueError, RecursionError):
            batch = None
          if batch:  # Not [] either: '[ ,' is no list.
            self.at = at = cut + 1
            yield from batch
            continue
          one_by_one_until = cut
      start = space(text, at).end()
      try:
        value, at = decode(text, start)
      except ValueError as e:
        raise self.bad_value(e, start) from None
      yield value
      sep = after(text, at)
      self.at = at = sep.end()
      if sep[1] == ']':
        return
      if not sep[1]:
        raise self.refuse("expected ',' or ']' after a list's entry")

  def keys(self) -> Iterable[str]:
    """Each key of the object whose { was just taken; the caller reads its
    value before the next."""
    if self.take('}'):
      return
    while True:
      if self.peek() != '"':
        raise self.refuse('expected a key in double quotes')
      try:
        key, self.at = json.decoder.scanstring(self.text, self.at + 1)
      except ValueError as e:
        raise self.bad_value(e, self.at) from None
      if not self.take(':'):
        raise self.refuse("expected ':' after a key")
      yield key
      if self.take('}'):
        return
      if not self.take(','):
        raise self.refuse("expected ',' or '}' after an object's value")

  def skip(self) -> None:
    """Reads a value and drops it: a list an entry at a time (each decoded
    whole: COCO's annotations are small), an object a key at a time."""
    if self.take('['):
      for _ in self.elements():
        pass
    elif self.take('{'):
      for _ in self.keys():
        self.skip()
    else:
      self.value()

  def end(self) -> None:
    if self.peek():
      raise self.refuse('JSONDecodeError: Extra data')

  def ids(self, parse, where: str) -> 'array.array | errors.ConfigError':
    """The ids of the list whose [ was just taken, `parse(entry, where)`
    each; or the error of its first entry that is no image (the rest of
    the list is still read: the text after it may not be JSON, and
    `json.loads` would say so first)."""
    entries = self.elements()
    out = array.array('q')  # Grows by an eighth: numpy's fromiter doubles.
    try:
      for i, entry in enumerate(entries):
        out.append(parse(entry, f'{where} {i + 1}'))
    except _JsonSyntax:
      raise
    except errors.ConfigError as e:
      for _ in entries:
        pass
      return e
    return out


def _from_json(text: str, origin: str) -> np.ndarray:
  """The ids of a JSON list: a list of entries, or an object whose
  "images" list holds COCO-style entries. As `json.loads`, the last of
  several "images" keys counts: only its entries are judged."""
  doc = _Json(text, origin)
  ids = None
  try:
    if doc.take('['):
      ids = doc.ids(parse_item, f'{origin}: entry')
    elif doc.take('{'):
      for key in doc.keys():
        if key != 'images':
          doc.skip()
        elif doc.take('['):
          ids = doc.ids(_coco_entry, f'{origin}: "images" entry')
        else:
          doc.skip()
          ids = None
    doc.end()
  except RecursionError:
    raise _refuse(origin, 'not an image list: JSON nested too deeply') from None
  if isinstance(ids, errors.ConfigError):
    raise ids
  if ids is None:
    raise _refuse(origin, 'expected a JSON list of image ids or sa_<id>.jpg'
                  ' names, or an object with an "images" list (COCO style,'
                  ' as MASA\'s)')
  return np.frombuffer(ids, np.int64)


def _from_lines(data: bytes, start: int, origin: str) -> np.ndarray:
  """The ids of a text list from `data[start:]`, `_CHUNK` bytes (whole
  lines) at a time.

  A line ends at a newline, nothing else; spaces, tabs and carriage returns
  around it are dropped (`_BLANK`). Ids and names in their one form are read
  here from the bytes; any other line goes to `parse_item`, which refuses
  it naming the line. Each chunk's ids go, sorted and each once, into one
  array of a slot per line, allocated once and touched only as filled.
  """
  ids = np.empty(data.count(b'\n', start) + 1, np.int64)
  filled = 0
  max_digits = len(str(records_lib.MAX_IMAGE_ID))
  number = 0
  while start <= len(data):
    end = data.find(b'\n', start + _CHUNK)
    end = len(data) if end < 0 else end
    chunk = array.array('q')
    for line in data[start:end].split(b'\n'):
      number += 1
      line = line.strip(_BLANK)
      if not line:
        continue
      digits = line[3:-4] if line.startswith(b'sa_') and line.endswith(
          b'.jpg') else line
      if (digits.isdigit() and len(digits) <= max_digits
          and (digits[0] != 0x30 or len(digits) == 1)):
        image_id = int(digits)
        if image_id <= records_lib.MAX_IMAGE_ID:
          chunk.append(image_id)
          continue
      chunk.append(parse_item(line.decode('utf-8'), f'{origin}:{number}'))
    if chunk:
      chunk = np.unique(np.frombuffer(chunk, np.int64))
      ids[filled:filled + len(chunk)] = chunk
      filled += len(chunk)
    start = end + 1
  return ids[:filled]


def _check_utf8(data: bytes, start: int, origin: str) -> None:
  """Refuses `data[start:]` if it is not UTF-8, naming the line, without
  holding its text (a chunk at a time)."""
  decoder = codecs.getincrementaldecoder('utf-8')()
  for at in range(start, len(data), _CHUNK):
    pending = len(decoder.getstate()[0])
    try:
      decoder.decode(data[at:at + _CHUNK], final=at + _CHUNK >= len(data))
    except UnicodeDecodeError as e:
      line = data.count(b'\n', start, at - pending + e.start) + 1
      raise _refuse(f'{origin}:{line}', 'not UTF-8 text') from None


def parse_text(data: bytes, origin: str) -> np.ndarray:
  """The ids of a list file's bytes (see the module doc), each at least
  once, in no set order: `canonical` sorts them."""
  start = 3 if data.startswith(b'\xef\xbb\xbf') else 0  # A BOM.
  if not data.isascii():
    _check_utf8(data, start, origin)
  first = _JSON_SPACE.match(data, start).end()
  if data[first:first + 1] in (b'[', b'{'):
    return _from_json(str(memoryview(data)[start:], 'utf-8'), origin)
  return _from_lines(data, start, origin)


def read_file(path: os.PathLike | str) -> np.ndarray:
  """The ids of a list file (local or a bucket), as `parse_text`.

  A local path must name a regular file (not a FIFO or a device, which
  could block or never end) of at most `MAX_LIST_BYTES`, checked before
  any read; from a bucket, its listed size is checked before a read, and
  at most that many bytes are read.
  """
  from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
  origin = os.fspath(path)
  with local.open_input(origin, 'image list') as f:
    try:
      size = os.fstat(f.fileno()).st_size  # A local file: before a read.
    except (AttributeError, OSError, ValueError):
      size = _listed_size(origin)  # None: at most the cap is read.
    if size is not None and size > MAX_LIST_BYTES:
      raise _too_large(origin)
    try:
      data = f.read(MAX_LIST_BYTES + 1)
    except OSError as e:
      raise errors.SourceError(f'image list {origin}: cannot be read'
                               f' ({e.strerror or e})') from None
  if len(data) > MAX_LIST_BYTES:
    raise _too_large(origin)
  return parse_text(data, origin)


def _listed_size(uri: str) -> int | None:
  """The size a bucket lists for the object `uri`, or None if it says none
  (its read then says what is wrong)."""
  from segment_anything_tfds.sources import paths  # pylint: disable=g-import-not-at-top
  try:
    size = paths.size_of(uri)
  except Exception:  # pylint: disable=broad-except
    return None  # Its filesystem's own errors too.
  return size if isinstance(size, int) and size >= 0 else None


def _too_large(origin: str) -> errors.ConfigError:
  return _refuse(origin, f'over {MAX_LIST_BYTES >> 20} MiB: not an image list'
                 ' (SA-1B\'s 11 M names take 170 MB)')


def canonical(ids: Iterable[int] | np.ndarray, origin: str) -> ImageList:
  """The `ImageList` of ids: sorted, each once; an empty list is refused."""
  if isinstance(ids, np.ndarray):
    return _canonical(np.array(ids, np.int64), origin)
  return _canonical(np.fromiter(ids, np.int64), origin)


def _canonical(ids: np.ndarray, origin: str) -> ImageList:
  """`canonical` of an int64 array of its own, sorted in place (no copy of
  a list where each id is once)."""
  if not len(ids):
    raise _refuse(origin, 'no image ids: an image list names at least one'
                  ' image')
  ids.sort()
  repeated = ids[1:] == ids[:-1]
  if repeated.any():
    ids = ids[np.concatenate([[True], ~repeated])]
  return ImageList(ids, origin)


def make(images: Any) -> ImageList:
  """An `ImageList` from a path (str or path-like) to a list file, an
  iterable of ids or names, or an `ImageList` (returned as it is)."""
  if isinstance(images, ImageList):
    return images
  if isinstance(images, (str, os.PathLike)):
    return _canonical(read_file(images), os.fspath(images))
  if isinstance(images, (bytes, dict)) or not hasattr(images, '__iter__'):
    raise errors.ConfigError(
        f'images={shown(images)}: expected a path to a list file, or a list'
        ' of image ids or sa_<id>.jpg names')
  origin = 'the list given'
  items = images.tolist() if isinstance(images, np.ndarray) else images
  return canonical((parse_item(v, f'{origin}: entry {i + 1}')
                    for i, v in enumerate(items)), origin)
