"""SA-1B shards: what manual_dir offers, and which of them a config takes.

A shard is one tar's worth of images: a tar file (local or in a bucket), an
extracted `sa_NNNNNN/` folder, or an http(s) link from the links file.
`find_shards` looks in manual_dir; `select` picks a config's tars. Paths are
handled by `etils.epath`, which knows local paths from bucket URIs
(`is_local`); local entries are checked with `os.lstat`, so no symlink out of
manual_dir and nothing but regular files and folders is ever used.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from typing import Any, BinaryIO, Sequence

from etils import epath

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources.base import Member

_LOG = logging.getLogger(__name__)

Path = epath.Path

TAR = 'tar'
DIR = 'dir'
URL = 'url'


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on this machine, not behind a URI (gs://, s3://...).

  The one place that decides it, with epath's rule: a local path has no
  `scheme://` prefix.
  """
  return links_lib.scheme(os.fspath(path)) is None


def size_of(path: epath.PathLike) -> int:
  """A file's size in bytes, local or in a bucket."""
  st = Path(path).stat()
  size = getattr(st, 'st_size', None)
  return size if size is not None else st.length


# Bytes per request of a remote tar read front to back.
SEQUENTIAL_READ_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class Shard(base.Source):
  """One SA-1B shard, of any kind: the `Source` implementation for now.

  The kind tests below are the only ones in the package: everything else
  uses the `Source` methods.

  Attributes:
    name: the tar's name, e.g. `sa_000000.tar`.
    kind: `TAR` (a tar file, local or in a bucket), `DIR` (an extracted
      folder) or `URL` (an http(s) link; `open` streams it).
    location: the path of the tar or folder, or the URL.
    known_size: the tar's size in bytes when known (saves a HEAD per open).
    downloaded: a tar in the download cache (`disk_mode='delete'` removes it
      after a successful build).
    options: the download options a `URL` shard is streamed with.
  """

  name: str
  kind: str
  location: str
  known_size: int | None = None
  downloaded: bool = False
  options: Any = None

  @property
  def index(self) -> int:
    return self.tar_index

  @property
  def local(self) -> bool:
    return self.kind != URL and is_local(self.location)

  # ------------------------------------------------------- the protocol

  @property
  def where(self) -> str:
    return (links_lib.redact(self.location) if self.kind == URL
            else self.location)

  @property
  def remote(self) -> bool:
    return not self.local

  @property
  def folder(self) -> bool:
    return self.kind == DIR

  def size(self) -> int | None:
    if self.kind == DIR:
      return None
    if self.kind == URL:
      if self.known_size is not None:
        return self.known_size
      from segment_anything_tfds.sources import http  # pylint: disable=g-import-not-at-top
      f = http.RangeFile(self.location, options=self.options, name=self.name)
      f.close()
      return f.size
    try:
      return size_of(self.location)
    except Exception as e:  # pylint: disable=broad-except
      # epath's backends raise their own types (tf.errors.*, gcsfs's).
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise errors.SourceError(
          f'{self.name}: cannot stat {self.location}: {first}') from None

  def open_random(self) -> base.RandomReader:
    return _SeekingReader(self.open(block_size=1), self.name)

  def open_sequential(self, start: int = 0) -> base.SequentialReader:
    if self.kind == URL:
      from segment_anything_tfds.sources import http  # pylint: disable=g-import-not-at-top
      size = self.size()
      stream = http.RangeStream(self.location, start=start, size=size,
                                options=self.options, name=self.name)
      stream.want(size)
      return _HttpSequential(stream)
    return _FileSequential(self.open(), start,
                           SEQUENTIAL_READ_BYTES if self.remote else 1 << 20)

  def list_members(self) -> list[Member]:
    if self.kind != DIR:
      raise errors.SourceError(f'{self.name}: {self.where} is a tar, not a'
                               ' folder')
    if self.remote:
      return _list_remote_folder(Path(self.location))
    return _list_folder(self.location, within=os.path.dirname(
        os.path.abspath(self.location)))

  def read_member(self, member: Member) -> bytes:
    if self.remote:
      path = Path(self.location) / member.name
      with path.open('rb') as f:
        data = f.read(member.size + 1)
      if len(data) != member.size:
        raise errors.BadInputError(
            errors.CORRUPT_TAR, self.name, member.name,
            f'read {len(data)} bytes, the folder listed {member.size}')
      return data
    return _read_file(os.path.join(self.location, member.name), member,
                      tar=self.name)

  # ------------------------------------------------------------ legacy

  def open(self, *, block_size: int = 1 << 20) -> BinaryIO:
    """Opens a tar for seekable binary reading, in place (never a copy).

    A link's reads fetch at least `block_size` bytes per request.
    """
    if self.kind == URL:
      from segment_anything_tfds.sources import http  # pylint: disable=g-import-not-at-top
      return http.RangeFile(self.location, size=self.known_size,
                            name=self.name, options=self.options,
                            block_size=block_size)
    if self.kind != TAR:
      raise errors.SourceError(
          f'{self.name}: {self.location} is a folder, not a tar')
    if is_local(self.location):
      try:
        # Unbuffered: indexing reads 512-byte headers between seeks, and the
        # local build reads whole members at random offsets; a read buffer
        # would fetch a full buffer per read and throw most of it away.
        return open(self.location, 'rb', buffering=0)
      except OSError as e:
        raise errors.SourceError(
            f'{self.name}: cannot open {self.location}: {e.strerror}'
        ) from None
    try:
      return _RemoteFile(Path(self.location))
    except Exception as e:  # pylint: disable=broad-except
      # epath's backends raise their own types (tf.errors.*, gcsfs's).
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise errors.SourceError(
          f'{self.name}: cannot open {self.location}: {first}') from None


class _SeekingReader:
  """`RandomReader` over a seekable file: exactly n bytes, fewer at EOF."""

  def __init__(self, fileobj: BinaryIO, name: str):
    self._file = fileobj
    self._name = name

  def read_at(self, offset: int, size: int) -> bytes:
    self._file.seek(offset)
    out = bytearray()
    while len(out) < size:
      data = self._file.read(size - len(out))
      if not data:
        break
      out += data
    return bytes(out)

  def close(self) -> None:
    self._file.close()


class _FileSequential:
  """`SequentialReader` over a seekable file, in reads of `chunk` bytes."""

  def __init__(self, fileobj: BinaryIO, start: int, chunk: int):
    self._file = fileobj
    self._file.seek(start)
    self._pos = start
    self._chunk = chunk

  def tell(self) -> int:
    return self._pos

  def read(self, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
      data = self._file.read(min(n - len(out), max(self._chunk, 1)))
      if not data:
        break
      out += data
    self._pos += len(out)
    return bytes(out)

  def skip(self, n: int) -> int:
    done = 0
    while done < n:
      got = len(self.read(min(n - done, self._chunk)))
      done += got
      if not got:
        break
    return done

  def close(self) -> None:
    self._file.close()


class _HttpSequential:
  """`SequentialReader` over `http.RangeStream`: one request to the end,
  resumed on a cut."""

  def __init__(self, stream):
    self._stream = stream

  def tell(self) -> int:
    return self._stream.tell()

  def read(self, n: int) -> bytes:
    return self._stream.read(n)

  def skip(self, n: int) -> int:
    done = 0
    while done < n:
      got = len(self._stream.read(min(n - done, 1 << 20)))
      done += got
      if not got:
        break
    return done

  def close(self) -> None:
    self._stream.close()


def _list_folder(root: str, *, within: str) -> list[Member]:
  """The entries of an extracted folder, without following a way out.

  Symlinks are followed only when they resolve inside `within` (manual_dir);
  directories are visited once each (no symlink loops). Other entries are
  listed with their kind (`OUTSIDE`, 'FIFO', ...) and never opened.
  """
  within = os.path.realpath(within)
  members: list[Member] = []
  seen = {os.path.realpath(root)}
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
      if entry.is_symlink() and os.path.commonpath([real, within]) != within:
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
        members.append(Member(rel, 0, 0, _file_kind(st.st_mode)))
  return members


def _file_kind(mode: int) -> str:
  if stat.S_ISFIFO(mode):
    return 'FIFO'
  if stat.S_ISSOCK(mode):
    return 'socket'
  if stat.S_ISCHR(mode):
    return 'character device'
  if stat.S_ISBLK(mode):
    return 'block device'
  return 'special file'


def _list_remote_folder(root: epath.Path) -> list[Member]:
  """The files of a folder in a bucket (no symlinks or devices there)."""
  members = []
  for dirpath, _, files in root.walk():
    for name in sorted(files):
      path = dirpath / name
      rel = os.fspath(path.relative_to(root))
      members.append(Member(rel, 0, size_of(path)))
  return members


def _read_file(path: str, member: Member, *, tar: str) -> bytes:
  """Reads a folder's regular file, at most `member.size` bytes.

  Opened without blocking (a FIFO swapped in cannot hang the build), checked
  to be a regular file of the indexed size, and read with a bound.
  """
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOFOLLOW',
                                                              0))
  except OSError as e:
    if e.errno == errno.ELOOP:  # A symlink: it was checked when indexing.
      fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    else:
      raise errors.BadInputError(errors.CORRUPT_TAR, tar, member.name,
                                 f'cannot open: {e.strerror}') from None
  with os.fdopen(fd, 'rb') as f:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise errors.BadInputError(
          errors.SPECIAL_MEMBER, tar, member.name,
          f'is now a {_file_kind(st.st_mode)}, not a regular file')
    data = f.read(member.size + 1)
  if len(data) != member.size:
    raise errors.BadInputError(
        errors.CORRUPT_TAR, tar, member.name,
        f'has {len(data)}{"+" if len(data) > member.size else ""} bytes; it'
        f' had {member.size} when indexed')
  return data


class _RemoteFile:
  """A file of an epath backend (gs://, s3://, ...) kept open until closed.

  epath's `Path.open` is a context manager on some backends; this holds it
  open and forwards reads and seeks to the backend's file.
  """

  def __init__(self, path: epath.Path):
    self._ctx = path.open('rb')
    if hasattr(self._ctx, '__enter__') and not hasattr(self._ctx, 'read'):
      self._file = self._ctx.__enter__()
    else:
      self._file, self._ctx = self._ctx, None
    self.name = os.fspath(path)
    size = getattr(self._file, 'size', None)
    if callable(size):  # tf.io.gfile opens lazily: a missing object fails
      size()  # here, at open, not at the first read (one stat, cached by TF).

  def __getattr__(self, attr: str) -> Any:
    return getattr(self._file, attr)

  def seekable(self) -> bool:
    return True

  def close(self):
    if self._ctx is not None:
      ctx, self._ctx = self._ctx, None
      ctx.__exit__(None, None, None)
    else:
      self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


@dataclasses.dataclass
class Found:
  """What manual_dir offers.

  Attributes:
    shards: tar index -> shard; a tar or folder in manual_dir beats a link.
    refused: entries named like shards that are not used, and why (a
      symlink out of manual_dir, a FIFO, ...).
    links_file: the links file read, if any.
  """

  shards: dict[int, Shard]
  refused: dict[str, str] = dataclasses.field(default_factory=dict)
  links_file: str | None = None


def _local_entry(path: epath.Path, root: str | None) -> tuple[str | None, str]:
  """(TAR or DIR or None, why not) for an entry of manual_dir."""
  if root is None:  # A bucket: no symlinks, devices or FIFOs there.
    if path.name.endswith('.tar'):
      return TAR, ''
    return (DIR, '') if path.is_dir() else (None, 'not a tar or folder')
  p = os.fspath(path)
  st = os.lstat(p)
  if stat.S_ISLNK(st.st_mode):
    real = os.path.realpath(p)
    if os.path.commonpath([real, root]) != root:
      return None, ('a symlink out of manual_dir (not followed; list the tar'
                    ' by its path in the links file to use it)')
    try:
      st = os.stat(p)
    except OSError as e:
      return None, f'a broken symlink ({e.strerror})'
  if stat.S_ISDIR(st.st_mode):
    return DIR, ''
  if stat.S_ISREG(st.st_mode) and p.endswith('.tar'):
    return TAR, ''
  return None, 'not a regular file or folder'


def local_shards(manual_dir: epath.PathLike) -> Found:
  """The tars and `sa_NNNNNN/` folders in manual_dir itself, by tar index.

  A tar beats a folder of the same shard. Rows of the links file are not
  included, even when they point at a path or a bucket.
  """
  manual_dir = Path(manual_dir)
  root = os.path.realpath(manual_dir) if is_local(manual_dir) else None
  found = Found({})
  for p in sorted(manual_dir.iterdir()):
    index = links_lib.shard_index(p.name if p.name.endswith('.tar')
                                  else p.name + '.tar')
    if index is None:
      continue
    kind, why = _local_entry(p, root)
    if kind is None:
      found.refused[p.name] = why
      continue
    previous = found.shards.get(index)
    if previous is not None and previous.kind == TAR:
      continue  # A tar beats a folder of the same shard.
    found.shards[index] = Shard(links_lib.shard_name(index), kind,
                                os.fspath(p))
  return found


def _link_shard(name: str, url: str, links_dir: epath.Path) -> Shard:
  """A links-file row: http(s) stays a URL; gs:// and paths are tars."""
  if links_lib.is_http(url):
    return Shard(name, URL, url)
  if is_local(url) and not os.path.isabs(url):
    url = os.fspath(links_dir / url)
  return Shard(name, TAR, url)


def find_shards(manual_dir: epath.PathLike) -> Found:
  """All shards manual_dir offers, by tar index; local copies win."""
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise errors.SourceError(
        f'manual_dir {manual_dir} does not exist or is not a directory: give'
        ' the dir holding the tars, sa_NNNNNN/ folders and/or'
        f' {links_lib.LINKS_FILE_NAME}')
  found = local_shards(manual_dir)
  for name, why in found.refused.items():
    _LOG.warning('%s: %s is %s; not used', manual_dir, name, why)
  links_path = manual_dir / links_lib.LINKS_FILE_NAME
  if links_path.exists():
    found.links_file = os.fspath(links_path)
    links = links_lib.read_links(links_path)
    if links.other:
      _LOG.info(
          '%s: ignoring %d rows that are not SA-1B image tars'
          ' (sa_NNNNNN.tar): %s', links_path, len(links.other),
          ', '.join(sorted(links.other)))
    for name, url in links.shards.items():
      index = links_lib.shard_index(name)
      if index not in found.shards:  # What manual_dir holds wins.
        found.shards[index] = _link_shard(name, url, manual_dir)
  found.shards = dict(sorted(found.shards.items()))
  return found


def select(
    shards: dict[int, Shard], *, num_tars: int | None,
    tars: Sequence[int] | None, allow_partial: bool = False,
    config_name: str = 'this config', refused: dict[str, str] | None = None,
) -> list[Shard]:
  """The shards a config asks for: the first `num_tars`, or explicit indices.

  A config holds exactly what it names. With fewer tars offered than it
  needs, this fails listing the missing ones and how to go on, unless
  `allow_partial` (then the partial set is built and recorded). Errors name
  the entries of manual_dir that were `refused` (e.g. symlinks out of it).
  """
  refused_note = ''
  if refused:
    refused_note = ' (not used from manual_dir: ' + '; '.join(
        f'{name}: {why}' for name, why in sorted(refused.items())[:3]) + (
            ' ...' if len(refused) > 3 else '') + ')'

  if tars is not None:
    missing = [i for i in tars if i not in shards]
    if missing:
      raise errors.SourceError(
          f'tars {_names(missing)} were asked for but are neither in'
          f' manual_dir nor in its links file{refused_note}')
    return [shards[i] for i in tars]
  chosen = list(shards.values())
  if num_tars is not None:
    if len(chosen) < num_tars:
      have = [s.index for s in chosen]
      missing = [i for i in range(num_tars) if i not in shards][
          :num_tars - len(chosen)]
      if not allow_partial:
        hint = (f' build what you have with tars_config('
                f'\'{_spec(have)}\') (--tars {_spec(have)}),' if have else '')
        raise errors.SourceError(
            f'{config_name} takes {num_tars} tars but manual_dir and its links'
            f' file offer {len(chosen)}; missing: {_names(missing)}. To go'
            ' on: put those tars (or a links file listing them) in'
            f' manual_dir;{hint} or pass allow_partial=True'
            ' (--allow_partial) to build a partial set, recorded in the'
            f' metadata and warned about on every load{refused_note}')
      _LOG.warning('%s takes %d tars; building the %d offered'
                   ' (allow_partial): missing %s', config_name, num_tars,
                   len(chosen), _names(missing))
    chosen = chosen[:num_tars]
  if not chosen:
    raise errors.SourceError(
        'manual_dir holds no sa_NNNNNN.tar, no sa_NNNNNN/ folder and no'
        f' {links_lib.LINKS_FILE_NAME}{refused_note}')
  return chosen


def _names(indices: Sequence[int], limit: int = 6) -> str:
  names = [links_lib.shard_name(i) for i in indices]
  if len(names) > limit:
    return f'{", ".join(names[:limit - 1])}, ... {names[-1]} ({len(names)})'
  return ', '.join(names)


def _spec(indices: Sequence[int]) -> str:
  return config_lib.format_tar_spec(indices)
