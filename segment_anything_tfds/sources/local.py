"""Sources on this machine: a tar file, and an extracted `sa_NNNNNN/` folder.

A tar is read by `os.pread` on one file descriptor (random reads) or with
large buffered reads (sequential). A folder's files are listed without
leaving the folder and read one by one, each bounded by its listed size.

What is never opened: FIFOs, sockets and devices (a FIFO would block a
read forever, a device may never end or act when opened), and inside a
folder, anything a symlink reaches outside that folder's real path. Such
entries are listed with a kind saying what they are (`base.OUTSIDE`,
'FIFO', ...), so the build reports them instead of reading them.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import stat
import time
from typing import BinaryIO

from segment_anything_tfds import errors
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources.base import Member

# The most one read asks the OS for: results grow with what arrives, so a
# size read from a header costs no more memory than the bytes that exist.
_CHUNK = 8 << 20
# The read buffer of a local tar read front to back.
SEQUENTIAL_BUFFER = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def file_kind(mode: int) -> str:
  """What a file that is not regular is, in words ('FIFO', ...)."""
  if stat.S_ISDIR(mode):
    return 'directory'
  if stat.S_ISFIFO(mode):
    return 'FIFO'
  if stat.S_ISSOCK(mode):
    return 'socket'
  if stat.S_ISCHR(mode):
    return 'character device'
  if stat.S_ISBLK(mode):
    return 'block device'
  return 'special file'


def _within(path: str, root: str) -> bool:
  """Whether the real path `path` is `root` or under it (both real)."""
  return os.path.commonpath([path, root]) == root


def pread(fd: int, offset: int, size: int) -> bytes:
  """Exactly `size` bytes at `offset`, fewer only at the end of the file.

  Read in pieces of at most `_CHUNK`, so a large `size` costs memory only
  for the bytes that are there.
  """
  if size <= 0:
    return b''
  first = os.pread(fd, min(size, _CHUNK), offset)
  if len(first) == size or not first:
    return first
  out = bytearray(first)
  while len(out) < size:
    data = os.pread(fd, min(size - len(out), _CHUNK), offset + len(out))
    if not data:
      break
    out += data
  return bytes(out)


def stat_tar(path: str, name: str) -> os.stat_result:
  """`os.stat` of the tar `name` at `path`; one that is not there is a
  `SourceError` naming it."""
  try:
    return os.stat(path)
  except OSError as e:
    raise _cannot_open(name, path, e) from None


def _cannot_open(name: str, path: str, e: OSError) -> errors.SourceError:
  return errors.SourceError(f'{name}: cannot open {path}: {e.strerror}')


def identity(st: os.stat_result) -> tuple[int, ...]:
  """What tells one file, as it was, from another or from itself written
  since: inode, size, mtime and ctime. Not the device number, which a
  network file system's file has a different one of on each machine (Beam
  workers reading one shared mount)."""
  return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_tar(path: str, name: str,
             checked: tuple[int, ...] | None = None) -> int:
  """A read-only fd of the regular file `path` (symlinks followed).

  A FIFO or device is refused before it is opened (and once opened,
  without blocking, checked again). With `checked` (the `identity` of the
  file that matched its checksum), a file that is not that one any more
  is refused: replaced, or written, since it was checked.
  """
  st = stat_tar(path, name)
  try:
    fd = os.open(path, _OPEN_FLAGS) if stat.S_ISREG(st.st_mode) else None
  except OSError as e:
    raise _cannot_open(name, path, e) from None
  if fd is not None:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and checked in (None, identity(st)):
      return fd
    os.close(fd)
    if stat.S_ISREG(st.st_mode):
      raise errors.SourceError(
          f'{name}: {path} changed after it was checked against its'
          ' checksum (replaced or written since); run again to check it'
          ' again')
  raise errors.SourceError(
      f'{name}: {path} is a {file_kind(st.st_mode)}, not a regular file; it'
      ' is never read')


class _PreadReader:
  """`RandomReader` of a local file: `os.pread` on one descriptor."""

  def __init__(self, fd: int):
    self._fd = fd

  def read_at(self, offset: int, size: int) -> bytes:
    return pread(self._fd, offset, size)

  def close(self) -> None:
    fd, self._fd = self._fd, -1
    if fd >= 0:
      os.close(fd)


class _BufferedSequential:
  """`SequentialReader` of a local file: buffered reads, skips by seeking."""

  def __init__(self, fd: int, start: int):
    self._file = io.open(fd, 'rb', buffering=SEQUENTIAL_BUFFER)
    self._file.seek(start)
    self._pos = start

  def tell(self) -> int:
    return self._pos

  def read(self, n: int) -> bytes:
    if n <= 0:
      return b''
    first = self._file.read(min(n, _CHUNK))
    out = first if len(first) == n or not first else bytearray(first)
    while len(out) < n:
      data = self._file.read(min(n - len(out), _CHUNK))
      if not data:
        break
      out += data
    self._pos += len(out)
    return bytes(out)

  def skip(self, n: int) -> int:
    left = os.fstat(self._file.fileno()).st_size - self._pos
    n = max(0, min(n, left))
    self._pos = self._file.seek(self._pos + n)
    return n

  def close(self) -> None:
    self._file.close()


@dataclasses.dataclass(frozen=True)
class LocalTar(base.TarSource):
  """A tar file on this machine.

  Attributes:
    name: the tar's name, e.g. `sa_000012.tar`.
    location: its path (a symlink is followed: the user put it there).
    downloaded: a tar in the download cache (`disk_mode='delete'` removes
      it after a successful build).
    checked: the `identity` of the file that matched its checksum, or
      None (not checked): every read opens that file or fails.
  """

  name: str
  location: str
  downloaded: bool = False
  checked: tuple[int, ...] | None = None

  remote = False

  def size(self) -> int:
    try:
      return os.stat(self.location).st_size
    except OSError as e:
      raise errors.SourceError(
          f'{self.name}: cannot open {self.location}: {e.strerror}') from None

  def open_random(self) -> base.RandomReader:
    return _PreadReader(open_tar(self.location, self.name, self.checked))

  def open_sequential(self, start: int = 0) -> base.SequentialReader:
    return _BufferedSequential(
        open_tar(self.location, self.name, self.checked), start)


@dataclasses.dataclass(frozen=True)
class LocalFolder(base.FolderSource):
  """An extracted `sa_NNNNNN/` folder on this machine.

  Its files are listed (`list_folder`) and read (`read_file`) without
  leaving the folder's real path.

  Attributes:
    name: the tar's name, e.g. `sa_000012.tar`.
    location: the folder's path (a symlink is followed: the user put it
      there).
  """

  name: str
  location: str

  remote = False

  def list_members(self) -> list[Member]:
    return list_folder(self.location)

  def read_member(self, member: Member) -> bytes:
    return read_file(self.location, member, tar=self.name)


def list_folder(root: str) -> list[Member]:
  """The entries of an extracted folder, without leaving it.

  Symlinks are followed only when they resolve inside the folder's real
  path; directories are visited once each (no symlink loops). Other
  entries are listed with their kind (`base.OUTSIDE`, 'FIFO', ...) and
  never opened.

  Raises:
    errors.SourceError: the folder cannot be listed.
  """
  within = os.path.realpath(root)
  members: list[Member] = []
  seen = {within}
  todo = [root]
  while todo:
    folder = todo.pop()
    try:
      entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
      raise errors.SourceError(f'cannot list {folder}: {e.strerror}') from None
    for entry in entries:
      rel = os.path.relpath(entry.path, root).replace(os.sep, '/')
      real = os.path.realpath(entry.path)
      if entry.is_symlink() and not _within(real, within):
        members.append(Member(rel, 0, 0, base.OUTSIDE))
        continue
      try:
        st = os.stat(entry.path)
      except OSError:  # A dangling symlink, a permission problem.
        members.append(Member(rel, 0, 0, 'unreadable entry'))
        continue
      if stat.S_ISDIR(st.st_mode):
        if real not in seen:
          seen.add(real)
          todo.append(entry.path)
      elif stat.S_ISREG(st.st_mode):
        members.append(Member(rel, 0, st.st_size))
      else:
        members.append(Member(rel, 0, 0, file_kind(st.st_mode)))
  return members


def read_file(root: str, member: Member, *, tar: str) -> bytes:
  """Reads a folder's regular file, exactly `member.size` bytes.

  The file's real path is checked to be inside the folder's (a symlink
  swapped in after listing leads nowhere else), it is opened without
  following a symlink and without blocking (a FIFO swapped in cannot hang
  the build), checked to be a regular file, and read with a bound.

  Raises:
    errors.BadInputError: naming the tar and member: a way out of the
      folder, not a regular file, or not the size listed.
  """
  real = os.path.realpath(os.path.join(root, member.name))
  if not _within(real, os.path.realpath(root)):
    raise errors.BadInputError(
        errors.UNSAFE_MEMBER, tar, member.name,
        'a symlink out of its folder; it is never followed or read')
  try:
    _check_regular(os.stat(real), member, tar)  # Never open a device.
    fd = os.open(real, _OPEN_FLAGS | getattr(os, 'O_NOFOLLOW', 0))
  except OSError as e:
    why = ('was swapped for a symlink' if e.errno == errno.ELOOP else
           e.strerror)
    raise errors.BadInputError(errors.CORRUPT_TAR, tar, member.name,
                               f'cannot open: {why}') from None
  try:
    _check_regular(os.fstat(fd), member, tar)
    data = pread(fd, 0, member.size + 1)
  finally:
    os.close(fd)
  if len(data) != member.size:
    raise errors.BadInputError(
        errors.CORRUPT_TAR, tar, member.name,
        f'has {len(data)}{"+" if len(data) > member.size else ""} bytes; it'
        f' had {member.size} when indexed')
  return data


def _check_regular(st: os.stat_result, member: Member, tar: str) -> None:
  if not stat.S_ISREG(st.st_mode):
    raise errors.BadInputError(
        errors.SPECIAL_MEMBER, tar, member.name,
        f'is now a {file_kind(st.st_mode)}, not a regular file')


def open_input(path, what: str, *,
               error: type[errors.Error] = errors.SourceError) -> BinaryIO:
  """A file a user names as input (an image list, an index, a checksum
  list), opened for reading; every failure is one line naming `what` and
  the path (`error`).

  A local path must be a regular file, checked before anything is read:
  it is opened without blocking (a FIFO with no writer would block), then
  refused if it is a directory, a FIFO, a device (/dev/zero never ends) or
  a socket. A remote path (gs://...) is opened with epath.
  """
  text = os.fspath(path)
  try:
    if links_lib.scheme(text) is not None:
      from etils import epath  # pylint: disable=g-import-not-at-top
      remote = epath.Path(text)
      # TensorFlow's files open lazily: a missing object would fail at the
      # first read, after this.
      if remote.is_dir():
        raise IsADirectoryError(text)
      if not remote.exists():
        raise FileNotFoundError(text)
      return _remote_file(remote, 'rb')
    fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  except (FileNotFoundError, NotADirectoryError):
    raise error(f'{what} {text}: no such file') from None
  except IsADirectoryError:
    raise error(f'{what} {text}: a directory, not a file') from None
  except OSError as e:
    raise error(f'{what} {text}: cannot be read ({e.strerror or e})'
                ) from None
  except Exception as e:  # pylint: disable=broad-except
    raise error(f'{what} {text}: cannot be read ({errors.first_line(e)})'
                ) from None
  try:
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
      raise error(f'{what} {text}: a directory, not a file')
    if not stat.S_ISREG(mode):
      raise error(f'{what} {text}: not a regular file (a FIFO, device or'
                  ' socket)')
    os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb')
  except BaseException:
    os.close(fd)
    raise


# ------------------------------------------------ files written whole


def unwritable(path: str, *, folder: bool = False) -> str | None:
  """Why no file (with `folder`, no folder) can be made at a local `path`,
  as far as can be told before writing it (a file's path is a directory,
  a folder's a file, or something on the way is a file), or None. A path in
  a bucket is not checked."""
  if links_lib.scheme(path) is not None:
    return None
  full = os.path.abspath(path)
  if not folder and os.path.isdir(full) and not os.path.islink(full):
    return 'it is a directory'  # A symlink to one is replaced.
  nearest = full if folder else os.path.dirname(full)
  while not os.path.lexists(nearest):  # The nearest one there is.
    nearest = os.path.dirname(nearest)
  if not os.path.isdir(nearest):
    return ('it is not a directory' if nearest == full else
            f'{nearest} is not a directory')
  return None


# Writes that failed for want of room, in words.
_NO_ROOM = {
    errno.ENOSPC: 'the disk is full',
    errno.EDQUOT: 'the disk quota is used up',
    errno.EFBIG: 'file too large: over the file system\'s or this'
                 ' process\'s limit on a file\'s size (ulimit -f)',
}


def no_room(error: BaseException) -> bool:
  """Whether `error` says there is no room left: a full disk, a used-up
  quota, or a file over the size limit (`cannot_write` words them)."""
  return getattr(error, 'errno', None) in _NO_ROOM


def cannot_write(path, what: str, error: Exception | None, *,
                 folder: bool = False) -> errors.Error:
  """The one-line error for a file (`what`: the index, the report) or
  folder that cannot be written at `path`: a `DiskSpaceError` if the disk
  is full or the file too large, else a `ConfigError`."""
  why = unwritable(os.fspath(path), folder=folder)
  no_room = _NO_ROOM.get(getattr(error, 'errno', None))
  if why is None:
    why = no_room or (getattr(error, 'strerror', None)
                      or errors.first_line(error)
                      if error is not None else 'unknown')
  cls = errors.DiskSpaceError if why == no_room else errors.ConfigError
  return cls(f'{os.fspath(path)}: cannot write {what} there'
             f' ({errors.printable(why)})')


def check_writable(path, what: str, *, folder: bool = False,
                   bucket: bool = True) -> None:
  """Raises `cannot_write`'s error, before any work, if `what` cannot be
  written at `path` (`unwritable`). With `bucket=False`, a path in a bucket
  too: what is written with local file APIs would land in a local folder
  named `gs:`."""
  path = os.fspath(path)
  if not bucket and links_lib.scheme(path) is not None:
    raise errors.ConfigError(
        f'{path}: cannot write {what} there (a local path is needed; copy'
        ' the results to the bucket afterwards)')
  if unwritable(path, folder=folder):
    raise cannot_write(path, what, None, folder=folder)


class _Remote(io.RawIOBase):
  """A bucket file opened by epath, as a raw file under an `io.Buffered*`:
  its own files lack some of a file's methods (TensorFlow's `readline`
  takes no size, so a line could not be bounded; pyarrow takes them for
  no file at all)."""

  def __init__(self, file, mode: str):
    super().__init__()
    self._file = file
    self._mode = mode

  def readable(self) -> bool:
    return self._mode == 'rb'

  def writable(self) -> bool:
    return self._mode == 'wb'

  def seekable(self) -> bool:
    return self._mode == 'rb'

  def write(self, data) -> int:
    self._file.write(bytes(data))
    return len(data)

  def readinto(self, buffer) -> int:
    try:
      data = self._file.read(len(buffer))
    except OSError:
      raise
    except Exception as e:  # tf.errors.*: as an OSError, like a file's.
      raise OSError(errors.first_line(e)) from e
    buffer[:len(data)] = data
    return len(data)

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    self._file.seek(offset, whence)
    return self._file.tell()

  def tell(self) -> int:
    return self._file.tell()

  def close(self) -> None:
    if not self.closed:
      self._file.close()
    super().close()


def _remote_file(path, mode: str):
  """A bucket file opened by epath, as a buffered Python file.

  epath's TensorFlow backend gives a context manager, not a file: its file
  is entered here and closed with the buffered one (closing it twice, as
  the manager does when it goes, does nothing).
  """
  opened = path.open(mode)
  if not hasattr(opened, 'read'):
    opened = opened.__enter__()
  cls = io.BufferedReader if mode == 'rb' else io.BufferedWriter
  return cls(_Remote(opened, mode), buffer_size=1 << 20)


def new_part(path):
  """(name, file) of a new part file next to `path` (an epath), for this
  writer only: on local disk created with O_EXCL and O_NOFOLLOW, so never
  one that was there and never through a planted symlink, its folder made;
  in a bucket, an object written when the file is closed."""
  part = path.parent / f'.{path.name}.{os.getpid()}.{time.time_ns()}.part'
  if links_lib.scheme(os.fspath(part)) is None:
    path.parent.mkdir(parents=True, exist_ok=True)
    return part, os.fdopen(os.open(
        part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        | os.O_CLOEXEC, 0o644), 'wb')
  # A bucket has no folders to make (and TensorFlow's making of them
  # retries without end under a bucket that does not exist).
  return part, _remote_file(part, 'wb')


def write_failures(path) -> type[Exception]:
  """What writing at `path` raises when it fails: OSError on local disk;
  a bucket's filesystem raises its own errors too (tf.errors.*, gcsfs's)."""
  return OSError if links_lib.scheme(os.fspath(path)) is None else Exception


def discard_part(part, file) -> None:
  """Closes and removes a part file of `new_part` that is not kept; a
  failure to do so never hides the error that led here (a bucket's
  filesystem raises its own errors, tf.errors.* or gcsfs's)."""
  try:
    file.close()
  except Exception:  # pylint: disable=broad-except
    pass  # Nothing of it is kept.
  try:
    part.unlink(missing_ok=True)
  except FileNotFoundError:
    pass
  except Exception:  # pylint: disable=broad-except
    if links_lib.scheme(os.fspath(part)) is None:
      raise


def write_whole(path, data: bytes, what: str) -> None:
  """Writes `data` at `path` whole or not at all (a `new_part` renamed over
  it: a file or symlink there is replaced, never written through); the
  folder is made. A one-line error names `what` if it cannot be.

  Raises:
    errors.ConfigError, errors.DiskSpaceError: from `cannot_write`.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  failed = write_failures(path)
  path = epath.Path(path)
  try:
    part, file = new_part(path)
  except failed as e:
    raise cannot_write(path, what, e) from None
  try:
    with file:
      file.write(data)
    part.replace(path)
  except BaseException as e:
    discard_part(part, file)
    if isinstance(e, failed):
      raise cannot_write(path, what, e) from None
    raise
