"""Exports of prepared SA-1B examples to the formats other trainers read.

Each writer takes numpy examples (from `tfds.as_numpy` or a data source,
read with `SkipDecoding` so that `image/content` holds the JPEG bytes) one
at a time and writes one format into an output dir:

* `semantic_sam_tsv` (`TsvWriter`): shards `sa1b-000000.tsv`, ... of rows
  ``file_name \\t json \\t base64(jpeg) \\n``, each with its line index
  `sa1b-000000.lineidx` (the byte offset of each row, one per line). This is
  what Semantic-SAM's `TSVFile` reads (the JSON is column 1, the image the
  last column) and the `<name>-<number>.tsv` naming its SA-1B mapper lists.
* `coco` (`CocoWriter`): one COCO instance file `annotations.json` and the
  JPEGs in `images/sa_<id>.jpg`. One category, ``{"id": 1, "name":
  "object"}``; each annotation has its RLE `segmentation`, `area`, `bbox`,
  ``iscrowd: 0``, ``category_id: 1`` and SA-1B's `predicted_iou`,
  `stability_score`, `point_coords` and `crop_box`.
* `webdataset` (`WebDatasetWriter`): tar shards `sa1b-000000.tar`, ... with
  `sa_<id>.jpg` and `sa_<id>.json` next to each other, as the `webdataset`
  package reads them.

Round trip: the JPEG bytes are the dataset's, byte for byte, and every RLE
`counts` string is the dataset's (SA-1B's) string. The JSON of the TSV and
webdataset formats is the image's SA-1B record (`sa1b_record`): the same
fields, in the same order, with the same values as the SA-1B file.

Boxes: the dataset stores TFDS boxes, ``[y/H, x/W, (y+h)/H, (x+w)/W]`` as
float32. `pixel_box` recovers SA-1B's ``[x, y, w, h]`` in pixels: SA-1B's
boxes are whole pixels, and float32 keeps ``v/W`` within ``W * 2**-25`` px
of the truth, so rounding gives back the exact integers for any image under
2**24 px a side. Boxes are exported as SA-1B has them: inclusive extents,
so ``w`` and ``h`` are one less than pycocotools' `toBbox` of the mask (the
COCO `bbox` too). They are never "fixed".

Names: a prepared dataset is input like any other (datasets get shared),
so no output name comes from its text. Every image is `sa_<image_id>.jpg`
(COCO's `images/`, webdataset's members, the TSV's first column), and an
example whose `image/file_name` is not exactly that is refused
(`BadRecordError`, naming the example and the image id). The output dir is
opened once (`OutDir`), and every file is made, renamed, measured and
removed relative to that handle, or to one on `images/` opened without
following a symlink: a symlink planted in the dir, or the dir or `images/`
swapped for one while the export runs, sends no write outside it.

Atomic writes: every file is written under a hidden temporary name
(``.<name>.partial``, created with ``O_EXCL | O_NOFOLLOW``: never through a
file or link that was there) and renamed into place once complete; a killed
export leaves only `.partial` files, never a truncated file under a final
name; a write or commit that fails removes its partial file. An export
holds an exclusive lock (flock) on `.export.lock` in the dir while it
writes, and a second export into the dir is refused while it does
(`write_files`, which writes show's and stats' files, holds it shared while
it writes, and is refused too, or refuses an export); so the
partial files found by an export that took the lock are a killed run's: it
removes them if they are regular files of this user, and refuses to start
if one is anything else (a symlink, another user's file). A shard's line
index is renamed before its TSV, and the COCO `annotations.json`, which
needs every image, is written last. An image id
that comes twice stops a COCO export (its JPEG would be written over), and
so does an annotation id that comes twice (pycocotools would keep one),
checked before `annotations.json` is written (`AnnotationIds`).
`export` ends by writing `export.json`, the manifest of what was written.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import plan

__all__ = ['FORMATS', 'MANIFEST', 'check_finite', 'pixel_box',
           'image_file_name', 'sa1b_record', 'coco_image', 'coco_annotation',
           'TsvWriter', 'CocoWriter', 'AnnotationIds', 'WebDatasetWriter',
           'make_writer', 'export']

MANIFEST = 'export.json'
# Held (flock) by an export for as long as it writes into its dir.
LOCK_FILE = '.export.lock'
PARTIAL_SUFFIX = '.partial'
SHARD_PREFIX = 'sa1b'
COCO_CATEGORY = {'id': 1, 'name': 'object', 'supercategory': 'object'}
DEFAULT_SHARD_SIZE = 1 << 30  # 1 GiB.
# How far a recovered pixel coordinate may be from an integer and still be
# taken as that integer: float32 boxes are within W * 2**-25 px of the
# truth, i.e. 2**-10 px up to 2**15 px a side.
_INTEGER_TOLERANCE = 2.0 ** -10


# ------------------------------------------------------------ SA-1B records


def _pixel(value: float) -> int | float:
  nearest = round(value)
  return int(nearest) if abs(value - nearest) <= _INTEGER_TOLERANCE else value


def pixel_box(box: Any, *, height: int, width: int) -> list[int | float]:
  """A TFDS box ``[ymin, xmin, ymax, xmax]`` (normalized) as SA-1B's pixels.

  Args:
    box: 4 numbers, as the dataset's `bbox` or `crop_box`.
    height: the image height, in pixels.
    width: the image width.

  Returns:
    ``[x, y, w, h]``: integers when the pixel values are whole (always for
    SA-1B), else the nearest float64 values.

  Raises:
    BadRecordError: a value is NaN or infinite (no pixel is); exports
      name the example first (`check_finite`).
  """
  values = [float(v) for v in np.asarray(box).ravel()]
  if not np.isfinite(values).all():
    raise errors.BadRecordError(
        f'box {values} is not finite (NaN or infinity): it has no pixels')
  ymin, xmin, ymax, xmax = values
  x, y = _pixel(xmin * width), _pixel(ymin * height)
  x2, y2 = _pixel(xmax * width), _pixel(ymax * height)
  return [x, y, x2 - x, y2 - y]


# How much of a refused name an error shows.
_SHOWN_CHARS = 80


def _shown(value: Any) -> str:
  """A value from a record, quoted and cut for an error message."""
  if isinstance(value, (bytes, np.bytes_)):
    value = bytes(value).decode('utf-8', 'backslashreplace')
  text = str(value)
  if len(text) > _SHOWN_CHARS:
    text = text[:_SHOWN_CHARS] + '...'
  return f"'{errors.printable(text)}'"


def _image_id(example: Mapping[str, Any]) -> int:
  """The example's image id, a non-negative integer, or BadRecordError."""
  value = example['image']['image_id']
  number = np.asarray(value)
  if number.ndim or number.dtype.kind not in 'iu' or number < 0:
    raise errors.BadRecordError(
        f'image/image_id {_shown(value)} is not an integer >= 0')
  return int(number)


def image_file_name(example: Mapping[str, Any]) -> str:
  """`sa_<image_id>.jpg`: the one name an exported image gets.

  Raises:
    BadRecordError: the example's `image/file_name` is not exactly that
      (e.g. a path, `../x.jpg`, or bytes that are not even text), or its
      `image/image_id` is not an integer >= 0.
  """
  image_id = _image_id(example)
  name = f'sa_{image_id}.jpg'
  given = example['image']['file_name']
  if isinstance(given, (bytes, np.bytes_)):
    matches = bytes(given) == name.encode('ascii')
  else:
    matches = isinstance(given, str) and given == name
  if not matches:
    raise errors.BadRecordError(
        f'image_id {image_id}: image/file_name {_shown(given)} is not {name};'
        ' export names every image sa_<image_id>.jpg and refuses other names')
  return name


def _text(value: Any, *, what: str, example: Mapping[str, Any]) -> str:
  if not isinstance(value, (bytes, np.bytes_)):
    return str(value)
  try:
    return bytes(value).decode('ascii')
  except UnicodeDecodeError:
    raise errors.BadRecordError(
        f'image_id {_image_id(example)}: {what} {_shown(value)} is not ASCII'
    ) from None


def _image_fields(example: Mapping[str, Any]) -> dict[str, Any]:
  image = example['image']
  return {'image_id': _image_id(example), 'width': int(image['width']),
          'height': int(image['height']),
          'file_name': image_file_name(example)}


# An annotation's float fields: NaN or infinity in any is refused.
FLOAT_FIELDS = ('bbox', 'crop_box', 'point_coords', 'predicted_iou',
                'stability_score')


def check_finite(example: Mapping[str, Any],
                 fields: Iterable[str] = FLOAT_FIELDS) -> None:
  """Refuses an example whose annotations' `fields` hold NaN or infinity.

  A build refuses such numbers (`bad_value`), but a prepared dataset is
  input too: one built by older code, or edited, may hold them, and JSON
  cannot (nor can a box become pixels). One vector check per field.

  Raises:
    BadRecordError: naming the image id, the first annotation and field
      found (fields in the order given) and its values.
  """
  ann = example['annotations']
  for key in fields:
    values = np.asarray(ann[key], np.float64)
    if not values.size:  # No annotation (or no value in any).
      continue
    rows = values.reshape(len(values), -1)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
      i = int(np.argmin(finite))
      raise errors.BadRecordError(
          f'image_id {_image_id(example)}: annotations[{i}].{key}'
          f' {rows[i].tolist()} is not finite (NaN or infinity)')


def _annotations(example: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The SA-1B annotations of an example, in SA-1B's field order."""
  check_finite(example)
  height = int(example['image']['height'])
  width = int(example['image']['width'])
  ann = example['annotations']
  seg = ann['segmentation']
  out = []
  for i in range(len(ann['id'])):
    counts = _text(seg['counts'][i], example=example,
                   what=f'annotations[{i}].segmentation.counts')
    out.append({
        'bbox': pixel_box(ann['bbox'][i], height=height, width=width),
        'area': int(ann['area'][i]),
        'segmentation': {'size': [int(v) for v in seg['size'][i]],
                         'counts': counts},
        'predicted_iou': float(ann['predicted_iou'][i]),
        'point_coords': np.asarray(ann['point_coords'][i],
                                   np.float64).reshape(-1, 2).tolist(),
        'crop_box': pixel_box(ann['crop_box'][i], height=height, width=width),
        'id': int(ann['id'][i]),
        'stability_score': float(ann['stability_score'][i]),
    })
  return out


def sa1b_record(example: Mapping[str, Any]) -> dict[str, Any]:
  """The image's SA-1B JSON record, rebuilt from a dataset example.

  Returns:
    ``{"image": {image_id, width, height, file_name}, "annotations": [...]}``
    with SA-1B's fields, order and values (boxes in pixels, see
    `pixel_box`).
  """
  return {'image': _image_fields(example), 'annotations': _annotations(example)}


def coco_image(example: Mapping[str, Any]) -> dict[str, Any]:
  """The COCO `images` entry of an example (its id is SA-1B's image id)."""
  fields = _image_fields(example)
  return {'id': fields['image_id'], 'file_name': fields['file_name'],
          'height': fields['height'], 'width': fields['width']}


def coco_annotation(annotation: Mapping[str, Any],
                    image_id: int) -> dict[str, Any]:
  """A COCO annotation from one SA-1B annotation (`sa1b_record` entry)."""
  return {
      'id': annotation['id'],
      'image_id': image_id,
      'category_id': COCO_CATEGORY['id'],
      'segmentation': annotation['segmentation'],
      'area': annotation['area'],
      'bbox': annotation['bbox'],
      'iscrowd': 0,
      'predicted_iou': annotation['predicted_iou'],
      'stability_score': annotation['stability_score'],
      'point_coords': annotation['point_coords'],
      'crop_box': annotation['crop_box'],
  }


def _json_bytes(obj: Any, *, image_id: int | None = None) -> bytes:
  """Compact ASCII JSON: no tab or newline, RLE backslashes escaped.

  Raises:
    BadRecordError: `obj` (of the image `image_id`) holds NaN or an
      infinity, which JSON has no way to write; names where.
  """
  try:
    return json.dumps(obj, separators=(',', ':'), allow_nan=False
                      ).encode('ascii')
  except ValueError:
    of = '' if image_id is None else f'image_id {image_id}: '
    raise errors.BadRecordError(
        f'{of}{non_finite_path(obj) or "a number"} is not finite (NaN or'
        ' infinity), which JSON cannot hold') from None


def non_finite_path(obj: Any, path: str = '') -> str | None:
  """Where in `obj` (e.g. `annotations[0].predicted_iou`) the first NaN or
  infinite float is, with its value; None if there is none."""
  if isinstance(obj, float):
    return None if np.isfinite(obj) else f'{path or "the value"} {obj}'
  items = (obj.items() if isinstance(obj, Mapping) else
           enumerate(obj) if isinstance(obj, (list, tuple)) else ())
  for key, value in items:
    where = (f'{path}[{key}]' if isinstance(key, int) else
             f'{path}.{key}' if path else str(key))
    found = non_finite_path(value, where)
    if found:
      return found
  return None


def _jpeg(example: Mapping[str, Any]) -> bytes:
  content = example['image']['content']
  if not isinstance(content, (bytes, np.bytes_)):
    raise errors.ConfigError(
        'export needs image/content as JPEG bytes; read the dataset'
        " with decoders={'image': {'content': tfds.decode.SkipDecoding()}}")
  return bytes(content)


# ------------------------------------------------------------ atomic files


# A partial file is always a new file: never one that was there, never
# through a symlink.
_PARTIAL_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL
                  | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0))
_LOCK_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_NONBLOCK
               | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0))
_DIR_FLAGS = (os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0)
              | getattr(os, 'O_CLOEXEC', 0))


def _check_name(name: str) -> str:
  """A file name of one path component (the writers make them all)."""
  if not name or name in ('.', '..') or '/' in name or os.sep in name:
    raise errors.SourceError(f'refusing to write {name!r}: not a plain file'
                             ' name')
  return name


def _same_file(fd: int, dir_fd: int, name: str) -> bool:
  """Whether `name` in `dir_fd` is the file open as `fd`."""
  try:
    return os.path.samestat(
        os.fstat(fd), os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
  except FileNotFoundError:
    return False


def _exists(dir_fd: int, name: str) -> bool:
  try:
    os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
  except FileNotFoundError:
    return False
  return True


class OutDir:
  """The output dir, opened once.

  Every file is created, renamed, measured and removed relative to the
  descriptor of its directory: the output dir as the user named it (a
  symlink they give is followed once, here), and a subdir (`images/`)
  opened from it without following a symlink. Swapping the dir or a subdir
  for a symlink while the export runs then redirects nothing, and no name
  leads outside it.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self.fd = os.open(self.path, _DIR_FLAGS)
    self._subdirs: dict[str, int] = {}
    self._lock_fd: int | None = None
    self._lock_shared = False

  @classmethod
  def made(cls, path: str | os.PathLike) -> 'OutDir':
    """The output dir at `path`, made first if need be.

    Raises:
      ConfigError: `path` is something else than a directory.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
      raise errors.ConfigError(f'{path} is not a directory')
    os.makedirs(path, exist_ok=True)
    return cls(path)

  def dir_fd(self, subdir: str | None = None, *, create: bool = False
             ) -> int:
    """The descriptor of the output dir, or of its `subdir` (made if
    `create`), which must be a directory, not a symlink.

    Raises:
      SourceError: `subdir` is a symlink, or not a directory.
    """
    if subdir is None:
      return self.fd
    if subdir not in self._subdirs:
      name = _check_name(subdir)
      if create:
        try:
          os.mkdir(name, dir_fd=self.fd)
        except FileExistsError:
          pass
      try:
        fd = os.open(name, _DIR_FLAGS | getattr(os, 'O_NOFOLLOW', 0),
                     dir_fd=self.fd)
      except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
          raise
        shown = os.path.join(self.path, name)
        if os.path.islink(shown):
          raise errors.SourceError(
              f'refusing to write {shown}: it resolves to'
              f' {os.path.realpath(shown)}, outside the output dir'
              f' {self.path}') from None
        raise errors.SourceError(f'refusing to write {shown}: it is not a'
                                 ' directory') from None
      self._subdirs[subdir] = fd
    return self._subdirs[subdir]

  def lock(self, *, shared: bool = False) -> None:
    """Holds the export lock of the dir (an flock on `LOCK_FILE` in it)
    until `close`; does nothing if this `OutDir` holds it already.

    An export holds it alone. `shared`: as `write_files` holds it (show's
    and stats' files, each under a partial name of its own): many hold it
    at once, and an export is refused while any does, so it removes no
    partial file of theirs.

    The lock file is removed before it is let go (by a shared holder only
    if it is the last), so a lock taken on a file no longer at its name is
    taken again on the one there now.

    Raises:
      ConfigError: another export holds it (another process, or another
        `OutDir` of this one), or the lock file is not a regular file or
        cannot be opened (`_open_lock`).
    """
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while self._lock_fd is None:
      fd = self._open_lock()
      try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
      except BlockingIOError:
        held = _same_file(fd, self.fd, LOCK_FILE)
        os.close(fd)
        if not held:
          continue  # Its holder removed it as it let go: lock anew.
        raise errors.ConfigError(
            f'another export is writing into {self.path} (it holds'
            f' {os.path.join(self.path, LOCK_FILE)}): wait for it to end, or'
            ' choose another --out') from None
      if _same_file(fd, self.fd, LOCK_FILE):
        self._lock_fd = fd
        self._lock_shared = shared
      else:
        os.close(fd)  # Its holder removed it as it let go: lock anew.

  def _open_lock(self) -> int:
    """The lock file, opened (made if need be), never through a symlink nor
    a FIFO; a regular file.

    Raises:
      ConfigError: the lock file is a symlink, not a regular file (a
        directory, a FIFO), or cannot be opened for writing (another user's
        export left it, or it is read-only).
    """
    shown = os.path.join(self.path, LOCK_FILE)
    not_regular = errors.ConfigError(
        f'{shown} is not a regular file, not the lock file of an export:'
        ' remove it')
    try:
      fd = os.open(LOCK_FILE, _LOCK_FLAGS, 0o644, dir_fd=self.fd)
    except OSError as e:
      if e.errno == errno.ELOOP:
        raise errors.ConfigError(f'{shown} is a symlink, not the lock file'
                                 ' of an export: remove it') from None
      if e.errno == errno.EISDIR:
        raise not_regular from None
      if e.errno in (errno.EACCES, errno.EPERM):
        raise errors.ConfigError(
            f'{shown} cannot be opened to lock the dir ({e.strerror}): another'
            " user's export left it, or it is read-only; if no export is"
            f' writing into {self.path}, remove it') from None
      raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      os.close(fd)
      raise not_regular
    return fd

  def _unlock(self) -> None:
    if self._lock_fd is None:
      return
    try:
      if self._lock_shared:  # Removed by the last holder only.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      with contextlib.suppress(FileNotFoundError):
        os.remove(LOCK_FILE, dir_fd=self.fd)  # Before letting go.
    except BlockingIOError:
      pass  # Others hold it still: the last to go removes it.
    finally:
      os.close(self._lock_fd)
      self._lock_fd = None

  def size(self, rel: str) -> int:
    """The size of the file `rel` (`name` or `subdir/name`) written."""
    subdir, _, name = rel.rpartition('/')
    return os.stat(name, dir_fd=self.dir_fd(subdir or None),
                   follow_symlinks=False).st_size

  def close(self) -> None:
    self._unlock()
    for fd in (*self._subdirs.values(), self.fd):
      os.close(fd)
    self._subdirs.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class PendingFile:
  """A file written as `.<name>.partial` and renamed to `name` by `commit`,
  both in the directory `dir_fd` (`OutDir.dir_fd`).

  Until `commit`, the final name does not exist (or keeps what it held);
  `discard` removes the partial file. The partial file is created new
  (`O_EXCL | O_NOFOLLOW`), opened for reading back too (`file`, 'w+b').
  `path` (the final name under `shown_dir`) is for messages and the list of
  files written.

  Raises:
    SourceError: the partial file exists already (another export writing
      into the same dir, or something put there).
  """

  def __init__(self, dir_fd: int, name: str, *, shown_dir: str,
               sync: bool = True, unique: bool = False):
    self.name = _check_name(name)
    self.dir_fd = dir_fd
    self.path = os.path.join(shown_dir, name)
    self.partial = _partial_name(name, unique=unique)
    self.sync = sync
    try:
      fd = os.open(self.partial, _PARTIAL_FLAGS, 0o666, dir_fd=dir_fd)
    except FileExistsError:
      raise errors.SourceError(
          f'{os.path.join(shown_dir, self.partial)} exists: another export'
          ' is writing into this dir, or something was put there; it is not'
          ' written through') from None
    self.file = os.fdopen(fd, 'w+b')

  def write(self, data: bytes) -> int:
    return self.file.write(data)

  def tell(self) -> int:
    return self.file.tell()

  def commit(self) -> str:
    self.file.flush()
    if self.sync:
      os.fsync(self.file.fileno())
    self.file.close()
    os.replace(self.partial, self.name, src_dir_fd=self.dir_fd,
               dst_dir_fd=self.dir_fd)
    return self.path

  def discard(self) -> None:
    """Removes the partial file. Closing it flushes what is buffered, which
    fails again after a failed write (the disk is full): that is ignored,
    as nothing of the file is kept."""
    try:
      with contextlib.suppress(OSError):
        self.file.close()  # Closes the descriptor even if the flush fails.
    finally:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.partial, dir_fd=self.dir_fd)


def _partial_name(name: str, *, unique: bool) -> str:
  """The partial file of `name`: `.<name>.partial`; with `unique`,
  `.<name>.<pid>.<ns>.partial`, of this writer only, for writers that share
  the dir (`write_files`), whose dead writers' files
  `remove_dead_writers_partials` finds by this pid."""
  tag = f'.{os.getpid()}.{time.time_ns()}' if unique else ''
  return f'.{name}{tag}{PARTIAL_SUFFIX}'


def _dead(pid: int) -> bool:
  """Whether no process has the id `pid` (one of another user is alive)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except (OSError, OverflowError):  # Another user's; or no pid at all.
    return False
  return False


def remove_dead_writers_partials(dir_fd: int, names: Iterable[str]) -> None:
  """Removes the unique partial files (`_partial_name`) of `names` in the
  dir `dir_fd` whose writer's process is gone: a show or stats killed while
  it wrote left them, and nothing else would.

  Only regular files of this user named exactly so, in that dir, are
  removed, relative to `dir_fd` (a symlink is neither followed nor
  removed); a live writer's file (pid 0, or one that exists) stays. The
  pid is looked up on this machine (in its pid namespace).
  """
  names = [re.escape(name) for name in names]
  if not names:
    return
  pattern = re.compile(rf'\.(?:{"|".join(names)})\.(\d+)\.\d+'
                       + re.escape(PARTIAL_SUFFIX))
  with os.scandir(dir_fd) as entries:
    for entry in entries:
      found = pattern.fullmatch(entry.name)
      if not found or not int(found[1]) or not _dead(int(found[1])):
        continue
      with contextlib.suppress(FileNotFoundError):  # Gone meanwhile.
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
          os.remove(entry.name, dir_fd=dir_fd)


def discard_all(pending: Iterable[PendingFile | None]) -> None:
  """`discard`s each pending file (None: none), every one even if one
  fails; then raises the first failure."""
  failure = None
  for each in pending:
    if each is None:
      continue
    try:
      each.discard()
    except BaseException as e:  # pylint: disable=broad-except
      failure = failure or e
  if failure is not None:
    raise failure


def write_atomically(pending: PendingFile, data: bytes) -> str:
  """Writes `data` through `pending` and commits it (discards it if the
  write fails)."""
  try:
    pending.write(data)
    return pending.commit()
  except BaseException:
    pending.discard()
    raise


def write_files(out_dir: str | os.PathLike, files: Mapping[str, bytes], *,
                what: str) -> list[str]:
  """Writes each of `files` ({name: bytes}) into `out_dir` (made if need
  be) whole or not at all, in order; returns their paths.

  Each goes through a `PendingFile` of its own (a new file, never one that
  was there) renamed over its name: a file, symlink or hard link there is
  replaced, never written through, and nothing is written outside
  `out_dir`. The export lock of `out_dir` is held (shared) meanwhile, so
  that no export starts there and removes the partial files; partial files
  of these names that a killed writer left are removed first
  (`remove_dead_writers_partials`).

  Raises:
    ConfigError: a name is taken by a directory, FIFO, device or socket (it
      is never opened), or a write fails (one line naming the file), or an
      export is writing into `out_dir` (`OutDir.lock`).
    DiskSpaceError: the disk is full, or the file over the size limit.
  """
  from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
  with OutDir.made(out_dir) as out:
    try:
      out.lock(shared=True)
      remove_dead_writers_partials(out.fd, files)
    except OSError as e:
      if isinstance(e, errors.Error):
        raise
      raise local.cannot_write(out.path, what, e, folder=True) from None
    written = []
    for name, data in files.items():
      path = os.path.join(out.path, name)
      _check_replaceable(out.fd, name, path, what)
      try:
        written.append(write_atomically(
            PendingFile(out.fd, name, shown_dir=out.path, unique=True), data))
      except OSError as e:
        if isinstance(e, errors.Error):
          raise
        raise local.cannot_write(path, what, e) from None
    return written


def write_file(path: str | os.PathLike, data: bytes, *, what: str) -> str:
  """`write_files` of one file, named by its `path`; returns it."""
  folder, name = os.path.split(os.path.abspath(os.fspath(path)))
  return write_files(folder, {name: data}, what=what)[0]


def _check_replaceable(dir_fd: int, name: str, path: str, what: str) -> None:
  """Refuses a `name` that is no file nor symlink: renaming over it would
  fail (a directory) or put away what someone is reading (a FIFO)."""
  try:
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
  except FileNotFoundError:
    return
  if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
    return
  kind = ('a directory' if stat.S_ISDIR(mode) else
          'a FIFO' if stat.S_ISFIFO(mode) else 'a device or socket')
  raise errors.ConfigError(f'{path}: cannot write {what} there (it is'
                           f' {kind}; remove it or choose another --out)')


# ------------------------------------------------------------------ writers


class _Writer:
  """Base of the writers: `add` examples, then `close` (or `abort`).

  Attributes:
    out_dir: the output dir.
    images: examples written.
    masks: annotations written.
    files: final paths written so far (relative to `out_dir`).
  """

  # Regular expressions of the names a writer writes (relative paths).
  OUTPUTS: tuple[str, ...] = ()

  def __init__(self, out_dir: str | os.PathLike | OutDir):
    self._own_dir = not isinstance(out_dir, OutDir)
    self.dir = OutDir(out_dir) if self._own_dir else out_dir
    self.out_dir = self.dir.path
    try:
      self.dir.lock()
    except BaseException:
      self._release()
      raise
    self.images = 0
    self.masks = 0
    self.files: list[str] = []

  def add(self, example: Mapping[str, Any]) -> None:
    """Writes one example.

    Raises:
      BadRecordError: naming the example (its index among those added) and
        its image id, before anything of it is written.
    """
    try:
      self._add(example)
    except errors.BadRecordError as e:
      raise errors.BadRecordError(f'example {self.images}, {e.args[0]}'
                                  ) from None

  def _add(self, example: Mapping[str, Any]) -> None:
    raise NotImplementedError

  def close(self) -> None:
    """Commits what is pending (a failure discards it, then raises) and
    lets go of the output dir."""
    try:
      self._finish()
    except BaseException:
      self._discard()
      raise
    finally:
      self._release()

  def abort(self) -> None:
    """Removes the partial files (final files written so far stay) and
    lets go of the output dir."""
    try:
      self._discard()
    finally:
      self._release()

  def _finish(self) -> None:
    raise NotImplementedError

  def _discard(self) -> None:
    """Removes the partial files."""

  def _release(self) -> None:
    if self._own_dir:
      self._own_dir = False
      self.dir.close()

  def _pending(self, name: str, *, subdir: str | None = None,
               sync: bool = True) -> PendingFile:
    """A `PendingFile` of `name` in the output dir or its `subdir`."""
    shown = self.out_dir if subdir is None else os.path.join(self.out_dir,
                                                             subdir)
    return PendingFile(self.dir.dir_fd(subdir), name, shown_dir=shown,
                       sync=sync)

  def _done(self, path: str) -> None:
    self.files.append(os.path.relpath(path, self.out_dir))

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
    else:
      self.abort()


class _ShardedWriter(_Writer):
  """Writes shards `sa1b-000000.<ext>`, ... of at most `shard_size` bytes.

  A new shard starts when the next image would take the current one past
  `shard_size`; an image larger than that gets a shard of its own.
  """

  def __init__(self, out_dir, *, shard_size: int = DEFAULT_SHARD_SIZE):
    if shard_size < 1:
      raise errors.ConfigError(
          f'the shard size must be at least 1 byte, got {shard_size}')
    super().__init__(out_dir)
    self.shard_size = int(shard_size)
    self.shard_index = -1
    self.shard_images = 0

  def _shard(self, index: int, ext: str) -> PendingFile:
    return self._pending(f'{SHARD_PREFIX}-{index:06d}.{ext}')

  def _next_shard(self, size: int) -> None:
    """Opens the first shard, or the next one if `size` bytes do not fit."""
    if self.shard_index >= 0:
      if not self.shard_images or self._size_with(size) <= self.shard_size:
        return
      self._close_shard()
    self.shard_index += 1
    self.shard_images = 0
    self._open_shard()

  def _size_with(self, size: int) -> int:
    """The current shard's size once closed, with `size` more bytes."""
    raise NotImplementedError

  def _open_shard(self) -> None:
    raise NotImplementedError

  def _close_shard(self) -> None:
    raise NotImplementedError

  def _finish(self) -> None:
    if self.shard_index >= 0:
      self._close_shard()


class TsvWriter(_ShardedWriter):
  """Semantic-SAM's TSV: `sa1b-NNNNNN.tsv` and `sa1b-NNNNNN.lineidx`."""

  OUTPUTS = (rf'{SHARD_PREFIX}-\d{{6}}\.tsv',
             rf'{SHARD_PREFIX}-\d{{6}}\.lineidx')

  def __init__(self, out_dir, *, shard_size: int = DEFAULT_SHARD_SIZE):
    super().__init__(out_dir, shard_size=shard_size)
    self._tsv: PendingFile | None = None
    self._index: PendingFile | None = None

  @staticmethod
  def row(example: Mapping[str, Any]) -> bytes:
    """One TSV row: ``file_name \\t SA-1B json \\t base64(jpeg) \\n``."""
    record = sa1b_record(example)
    return b'\t'.join((image_file_name(example).encode('ascii'),
                       _json_bytes(record,
                                   image_id=record['image']['image_id']),
                       base64.b64encode(_jpeg(example)))) + b'\n'

  def _add(self, example):
    row = self.row(example)
    self._next_shard(len(row))
    self._index.write(b'%d\n' % self._tsv.tell())
    self._tsv.write(row)
    self.shard_images += 1
    self.images += 1
    self.masks += len(example['annotations']['id'])

  def _size_with(self, size):
    return self._tsv.tell() + size

  def _open_shard(self):
    self._tsv = self._shard(self.shard_index, 'tsv')
    self._index = self._shard(self.shard_index, 'lineidx')

  def _close_shard(self):
    # The index first: a TSV under its final name always has its index.
    self._done(self._index.commit())
    self._done(self._tsv.commit())
    self._tsv = self._index = None

  def _discard(self):
    discard_all((self._tsv, self._index))


class WebDatasetWriter(_ShardedWriter):
  """Tar shards `sa1b-NNNNNN.tar` of `sa_<id>.jpg` + `sa_<id>.json`."""

  OUTPUTS = (rf'{SHARD_PREFIX}-\d{{6}}\.tar',)
  _BLOCK = tarfile.BLOCKSIZE
  _MTIME = 1680000000  # Fixed, so the same data gives the same bytes.

  def __init__(self, out_dir, *, shard_size: int = DEFAULT_SHARD_SIZE):
    super().__init__(out_dir, shard_size=shard_size)
    self._file: PendingFile | None = None
    self._tar: tarfile.TarFile | None = None

  @classmethod
  def _member_bytes(cls, size: int) -> int:
    return cls._BLOCK + -(-size // cls._BLOCK) * cls._BLOCK

  def _add(self, example):
    record = sa1b_record(example)
    stem = os.path.splitext(image_file_name(example))[0]
    members = ((f'{stem}.jpg', _jpeg(example)),
               (f'{stem}.json', _json_bytes(
                   record, image_id=record['image']['image_id'])))
    self._next_shard(sum(self._member_bytes(len(d)) for _, d in members))
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = self._MTIME
      info.mode = 0o644
      self._tar.addfile(info, io.BytesIO(data))
    self.shard_images += 1
    self.images += 1
    self.masks += len(record['annotations'])

  def _size_with(self, size):
    # Closed, a shard ends with two zero blocks and is padded to tarfile's
    # record size.
    end = self._tar.offset + size + 2 * self._BLOCK
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

  def _open_shard(self):
    self._file = self._shard(self.shard_index, 'tar')
    self._tar = tarfile.open(fileobj=self._file.file, mode='w',
                             format=tarfile.USTAR_FORMAT)

  def _close_shard(self):
    self._tar.close()  # Writes the end blocks; leaves the file open.
    self._done(self._file.commit())
    self._tar = self._file = None

  def _discard(self):
    if self._file is not None:
      self._file.discard()


class AnnotationIds:
  """The annotation ids of the examples added, to find one in two places.

  COCO readers index annotations by id: pycocotools keeps one annotation
  per id, so a repeat loses masks without a word. A build refuses repeats
  within an image; this finds those across images (and within one, in a
  dataset built by older code).

  Each id is kept on disk with its example's index and image id (24
  bytes), in one of `BUCKETS` files chosen by a hash of the id, so a
  repeat lands twice in one bucket; `check` sorts one bucket at a time.
  The files come from `opener` (by default unnamed temporary files, which
  go when closed, or with the process). Memory: `BUFFER` ids (24 MB) while
  adding; one bucket (a 256th of the ids, 32 bytes each) while checking:
  for all of SA-1B (1.1 B masks, 26 GB on disk) about 140 MB. Before, the
  ids were held in memory: 8 to 16 bytes per annotation, 30 GB at the
  check for all of SA-1B.
  """

  BUCKETS = 256
  BUFFER = 1 << 20

  def __init__(self, opener: Callable[[], Any] = tempfile.TemporaryFile):
    self._opener = opener
    self._files: dict[int, Any] = {}
    self._rows = np.empty((self.BUFFER, 3), np.uint64)
    self._size = 0
    self._examples = 0

  def add(self, image_id: int, ids: Iterable[int]) -> None:
    """Logs the ids of one example's annotations."""
    ids = np.asarray(ids, np.uint64).reshape(-1)
    for start in range(0, len(ids), self.BUFFER):
      chunk = ids[start:start + self.BUFFER]
      if self._size + len(chunk) > self.BUFFER:
        self._flush()
      rows = self._rows[self._size:self._size + len(chunk)]
      rows[:, 0] = chunk
      rows[:, 1] = self._examples
      rows[:, 2] = image_id
      self._size += len(chunk)
    self._examples += 1

  def _flush(self) -> None:
    """Appends the buffered rows to their buckets' files."""
    rows = self._rows[:self._size]
    buckets = (plan.image_order(rows[:, 0]) >> np.uint64(56)).astype(
        np.int64) * self.BUCKETS >> 8
    order = np.argsort(buckets, kind='stable')
    ends = np.cumsum(np.bincount(buckets, minlength=self.BUCKETS))
    for k in np.flatnonzero(np.bincount(buckets, minlength=self.BUCKETS)):
      if k not in self._files:
        self._files[k] = self._opener()
      picked = order[(ends[k - 1] if k else 0):ends[k]]
      self._files[k].write(rows[picked].tobytes())
    self._size = 0

  def check(self) -> None:
    """Raises BadRecordError naming the smallest id logged twice and the
    two examples (index and image id) that first hold it."""
    self._flush()
    first = None
    for k in sorted(self._files):
      f = self._files[k]
      f.seek(0)
      rows = np.frombuffer(f.read(), np.uint64).reshape(-1, 3)
      f.seek(0, os.SEEK_END)
      order = np.argsort(rows[:, 0], kind='stable')  # Added order kept.
      ids = rows[order, 0]
      again = np.flatnonzero(ids[1:] == ids[:-1])
      if len(again) and (first is None or ids[again[0]] < first[0][0]):
        first = rows[order[again[0]]], rows[order[again[0] + 1]]
    if first is None:
      return
    (repeated, a, image_a), (_, b, image_b) = (r.tolist() for r in first)
    raise errors.BadRecordError(
        f'annotation id {repeated} is in example {a} (image_id {image_a})'
        f' and example {b} (image_id {image_b}): COCO needs annotation ids'
        ' unique in the file (pycocotools would keep one); annotations.json'
        ' is not written')

  def close(self) -> None:
    """Closes (and so removes) the files."""
    for f in self._files.values():
      f.close()
    self._files.clear()


def unnamed_file(out: OutDir) -> Any:
  """A new file in `out` that has no name (Linux's O_TMPFILE, opened
  relative to its handle): it goes when closed, or with the process.
  Elsewhere, a temporary file in its path, removed as soon as made."""
  flag = getattr(os, 'O_TMPFILE', None)
  if flag is not None:
    try:
      fd = os.open('.', flag | os.O_RDWR | os.O_CLOEXEC, 0o600,
                   dir_fd=out.fd)
    except OSError:
      pass  # A filesystem without it.
    else:
      return os.fdopen(fd, 'w+b')
  return tempfile.TemporaryFile(dir=out.path)


class CocoWriter(_Writer):
  """`annotations.json` (COCO instances) and `images/sa_<id>.jpg`.

  The `images` and `annotations` lists are streamed to two partial files
  while the JPEGs are written, and joined into `annotations.json` at
  `close`, so memory stays flat however many images are exported. The
  annotation ids are checked unique across the file before it is written
  (`AnnotationIds`, 24 bytes per annotation in unnamed files in the out
  dir).
  """

  IMAGES_DIR = 'images'
  ANNOTATIONS = 'annotations.json'
  OUTPUTS = (rf'{IMAGES_DIR}/sa_\d+\.jpg', re.escape(ANNOTATIONS))

  def __init__(self, out_dir, *, info: Mapping[str, Any] | None = None):
    super().__init__(out_dir)
    self.info = dict(info or {})
    self._lists: dict[str, PendingFile] = {}
    self._annotations_written = 0
    self._ids = AnnotationIds(lambda: unnamed_file(self.dir))
    try:
      self.dir.dir_fd(self.IMAGES_DIR, create=True)
      for key in ('images', 'annotations'):
        self._lists[key] = self._pending(f'{key}.list', sync=False)
    except BaseException:
      self.abort()
      raise

  def _add(self, example):
    record = sa1b_record(example)
    image = coco_image(example)
    # Every entry's JSON first: a bad one stops the image before any write.
    entries = [_json_bytes(coco_annotation(ann, image['id']),
                           image_id=image['id'])
               for ann in record['annotations']]
    if _exists(self.dir.dir_fd(self.IMAGES_DIR), image['file_name']):
      # The output dir was emptied first: this image came before.
      raise errors.BadRecordError(
          f'image_id {image["id"]}: exported already (an image id appears'
          ' twice in the data)')
    jpeg = self._pending(image['file_name'], subdir=self.IMAGES_DIR,
                         sync=False)
    self._done(write_atomically(jpeg, _jpeg(example)))
    self._append('images', _json_bytes(image, image_id=image['id']),
                 self.images)
    for entry in entries:
      self._append('annotations', entry, self._annotations_written)
      self._annotations_written += 1
    self._ids.add(image['id'], [ann['id'] for ann in record['annotations']])
    self.images += 1
    self.masks += len(record['annotations'])

  def _append(self, key: str, entry: bytes, index: int) -> None:
    self._lists[key].write((b',' if index else b'') + entry)

  def _finish(self):
    try:
      self._ids.check()
    finally:
      self._ids.close()
    head = _json_bytes({'info': self.info, 'licenses': [],
                        'categories': [COCO_CATEGORY]})[:-1]
    out = self._pending(self.ANNOTATIONS)
    try:
      out.write(head)
      for key in ('images', 'annotations'):
        pending = self._lists[key]
        pending.file.seek(0)  # Read back through the file written.
        out.write(b',"%s":[' % key.encode())
        shutil.copyfileobj(pending.file, out.file, 1 << 20)
        out.write(b']')
      out.write(b'}')
    except BaseException:
      out.discard()
      raise
    finally:
      discard_all(self._lists.values())
    self._done(out.commit())

  def _discard(self):
    self._ids.close()
    discard_all(self._lists.values())


FORMATS = {'semantic_sam_tsv': TsvWriter, 'coco': CocoWriter,
           'webdataset': WebDatasetWriter}


def make_writer(fmt: str, out_dir: str | os.PathLike | OutDir, *,
                shard_size: int = DEFAULT_SHARD_SIZE,
                info: Mapping[str, Any] | None = None) -> _Writer:
  """The writer of format `fmt` (a `FORMATS` key) into `out_dir` (a path,
  opened now, or an `OutDir`)."""
  if fmt not in FORMATS:
    raise errors.ConfigError(
        f'unknown export format {fmt!r}; expected one of {sorted(FORMATS)}')
  if fmt == 'coco':
    return CocoWriter(out_dir, info=info)
  return FORMATS[fmt](out_dir, shard_size=shard_size)


# ----------------------------------------------------------------- export


def _is_partial(name: str) -> bool:
  return name.startswith('.') and name.endswith(PARTIAL_SUFFIX)


def _previous_outputs(out: OutDir) -> list[tuple[str, int, str]]:
  """What any format or a stale run left in `out`: (relative path, the
  descriptor of its directory, name) of each, looked for where the formats
  write, the output dir and its `images/` (not followed if a symlink), and
  nowhere else.

  Raises:
    ConfigError: something that is not a file (a directory, a FIFO) has the
      name of an export's file: it would fail the export at its end.
  """
  patterns = [re.compile(p) for cls in FORMATS.values() for p in cls.OUTPUTS]
  patterns.append(re.compile(re.escape(MANIFEST)))
  dirs = {'.': out.fd}
  try:
    dirs[CocoWriter.IMAGES_DIR] = out.dir_fd(CocoWriter.IMAGES_DIR)
  except (FileNotFoundError, errors.SourceError):
    pass  # None, or a symlink or a file: not walked, never followed.
  found = []
  for where, fd in dirs.items():
    for entry in os.scandir(fd):
      rel = entry.name if where == '.' else f'{where}/{entry.name}'
      output = any(p.fullmatch(rel) for p in patterns)
      if not (output or _is_partial(entry.name)):
        continue
      if output and not (entry.is_file(follow_symlinks=False)
                         or entry.is_symlink()):
        raise errors.ConfigError(
            f'{os.path.join(out.path, rel)} is not a file but has the name'
            ' of an export\'s file: remove it or choose another --out')
      found.append((rel, fd, entry.name))
  return sorted(found)


def _check_stale_partial(path: str, dir_fd: int, name: str) -> None:
  """Refuses a partial file that no export of this user left."""
  st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
  if stat.S_ISLNK(st.st_mode):
    what = 'a symlink'
  elif not stat.S_ISREG(st.st_mode):
    what = 'not a regular file'
  elif st.st_uid != os.getuid():
    what = f'owned by another user (uid {st.st_uid})'
  else:
    return
  raise errors.SourceError(
      f'{path} is {what}, not a partial file left by an export of yours;'
      ' it is not removed nor written through: remove it yourself, or'
      ' choose another --out')


def prepare_out_dir(out_dir: str | os.PathLike | OutDir, *,
                    overwrite: bool = False) -> None:
  """Creates `out_dir`; refuses (or with `overwrite`, removes) an export.

  Takes the export lock of `out_dir` first (held until an `OutDir` given
  is closed). Only where the formats write is looked at: `out_dir` and its
  `images/` (not followed if a symlink). Partial files of a killed export
  there (regular files of this user) are always removed; any other file
  with a partial file's name stops the export, and so does a directory or
  FIFO with the name of an output. Files that no format writes are never
  touched; symlinks are removed, never followed.

  Raises:
    ConfigError: `out_dir` holds an export and `overwrite` is False, or is
      not a directory, or something not a file has an output's name, or
      another export is writing into it (`OutDir.lock`).
    SourceError: a partial file that is a symlink, or not this user's.
  """
  if not isinstance(out_dir, OutDir):
    with OutDir.made(out_dir) as out:
      prepare_out_dir(out, overwrite=overwrite)
    return
  out = out_dir
  out.lock()  # Held: partial files here are no running export's.
  previous = _previous_outputs(out)
  finished = [rel for rel, _, name in previous if not _is_partial(name)]
  if finished and not overwrite:
    raise errors.ConfigError(
        f'{out.path} already holds an export ({finished[0]} and'
        f' {len(finished) - 1} more files); pass --overwrite to replace it'
        ' or choose another --out')
  for rel, dir_fd, name in previous:
    if _is_partial(name):
      _check_stale_partial(os.path.join(out.path, rel), dir_fd, name)
  for _, dir_fd, name in previous:
    os.remove(name, dir_fd=dir_fd)


def export(examples: Iterable[Mapping[str, Any]], fmt: str,
           out_dir: str | os.PathLike, *,
           shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
           info: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes `examples` in format `fmt` to `out_dir`, then its manifest.

  Args:
    examples: numpy examples with the JPEG bytes (see the module doc).
    fmt: 'semantic_sam_tsv', 'coco' or 'webdataset'.
    out_dir: the output dir (created).
    shard_size: the largest shard, in bytes (TSV and webdataset).
    overwrite: replace an export already in `out_dir`.
    info: extra manifest fields (e.g. the dataset and split); the COCO
      `info` too.

  Returns:
    The manifest written to `out_dir/export.json`: ``{format, images,
    masks, files, bytes, **info}``.
  """
  with OutDir.made(out_dir) as out:  # Everything below goes through it.
    prepare_out_dir(out, overwrite=overwrite)
    with make_writer(fmt, out, shard_size=shard_size, info=info) as writer:
      for example in examples:
        writer.add(example)
    manifest = {
        **dict(info or {}), 'format': fmt, 'images': writer.images,
        'masks': writer.masks,
        'bytes': sum(out.size(f) for f in writer.files),
        'files': sorted(f for f in writer.files
                        if not f.startswith(CocoWriter.IMAGES_DIR + '/')),
    }
    if fmt == 'coco':
      manifest['images_dir'] = CocoWriter.IMAGES_DIR
    write_atomically(PendingFile(out.fd, MANIFEST, shown_dir=out.path),
                     json.dumps(manifest, indent=2).encode() + b'\n')
  return manifest
