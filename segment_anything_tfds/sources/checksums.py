"""Checksum lists, verifying tars against them, and moving bad tars aside.

A checksum list is the output of `md5sum` or `sha256sum`: one
`<hex>  sa_000000.tar` line per tar (`*name` and paths are accepted; only
the file name counts). The hex length says the algorithm: 32 is md5, 64 is
sha256. Every problem with the list itself is a `ChecksumError` naming the
file and line.

  <download_dir>/segment_anything/quarantine/   downloaded tars that failed
                                                a check, moved aside
"""

from __future__ import annotations

import hashlib
import os
import time

from etils import epath

from segment_anything_tfds.errors import ChecksumError
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import local

CHECKSUMS_FILE_NAME = 'segment_anything_checksums.txt'
QUARANTINE_SUBDIR = 'quarantine'
VERIFIED_SUFFIX = '.verified'
# 1000 sha256 lines are about 85 kB; anything far larger is not a list.
MAX_CHECKSUMS_FILE_BYTES = 16 << 20
_HASHES = {32: 'md5', 64: 'sha256'}
_CHUNK = 8 << 20


def parse_checksums(text: str, *, source: str) -> dict[str, tuple[str, str]]:
  """`<hex>  sa_000000.tar` lines -> name -> (algorithm, hex).

  Raises:
    ChecksumError: naming `source` and the line: a line without two
      columns, a digest that is neither md5 nor sha256, a name with two
      different digests, or no line at all.
  """
  out: dict[str, tuple[str, str]] = {}
  for lineno, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    name, entry = _parse_line(line, source=f'{source}:{lineno}')
    if name in out and out[name] != entry:
      raise ChecksumError(f'{source}:{lineno}: {name} has two different'
                          ' checksums')
    out[name] = entry
  if not out:
    raise ChecksumError(f'{source}: the checksum list is empty')
  return out


def _parse_line(line: str, *, source: str) -> tuple[str, tuple[str, str]]:
  parts = line.split(None, 1)
  if len(parts) != 2:
    raise ChecksumError(f'{source}: expected "<hex>  <file name>", got'
                        f' {line!r:.120}')
  digest, name = parts[0].lower(), parts[1].strip().lstrip('*')
  name = name.replace('\\', '/').rsplit('/', 1)[-1]
  algo = _HASHES.get(len(digest))
  if algo is None or any(c not in '0123456789abcdef' for c in digest):
    raise ChecksumError(
        f'{source}: {digest!r:.80} is neither an md5 (32 hex digits) nor a'
        ' sha256 (64 hex digits)')
  return name, (algo, digest)


def read_checksums(path: epath.PathLike) -> dict[str, tuple[str, str]]:
  """Reads and parses a checksum list (at most `MAX_CHECKSUMS_FILE_BYTES`)."""
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      data = f.read(MAX_CHECKSUMS_FILE_BYTES + 1)
  except Exception as e:  # pylint: disable=broad-except
    # epath's backends raise their own types (tf.errors.*, gcsfs's).
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ChecksumError(f'{path}: cannot read the checksum list: {first}'
                        ) from None
  if len(data) > MAX_CHECKSUMS_FILE_BYTES:
    raise ChecksumError(f'{path}: over {MAX_CHECKSUMS_FILE_BYTES >> 20} MiB:'
                        ' not a checksum list')
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ChecksumError(f'{path}: not UTF-8 text at byte {e.start}: not a'
                        ' checksum list') from None
  return parse_checksums(text, source=os.fspath(path))


def file_digest(source: base.Source, algo: str) -> str:
  """The `algo` digest of the tar `source`, read front to back."""
  h = hashlib.new(algo)
  reader = source.open_sequential(0)
  try:
    while chunk := reader.read(_CHUNK):
      h.update(chunk)
  finally:
    reader.close()
  return h.hexdigest()


def _marker(path: str, algo: str, digest: str) -> str:
  st = os.stat(path)
  return f'{algo}:{digest} {st.st_size} {st.st_mtime_ns}\n'


def verify(source: base.Source, expected: tuple[str, str]) -> str | None:
  """None if the tar `source` has the `expected` (algo, hex); else what is
  wrong.

  A local tar that passed leaves a `.verified` marker next to it (digest,
  size, mtime), so an unchanged file is not hashed again on a rerun.
  """
  algo, digest = expected
  path = source.location if isinstance(source, local.LocalTar) else None
  marker = f'{path}{VERIFIED_SUFFIX}'
  if path is not None and os.path.exists(marker):
    try:
      with open(marker) as f:
        if f.read() == _marker(path, algo, digest):
          return None
    except OSError:
      pass
  got = file_digest(source, algo)
  if got != digest:
    return f'{algo} is {got}, the checksum list says {digest}'
  if path is not None:
    try:
      with open(marker, 'w') as f:
        f.write(_marker(path, algo, digest))
    except OSError:  # A read-only folder: hash again next time.
      pass
  return None


def quarantine(path: str) -> str:
  """Moves a bad tar aside into `quarantine/` next to it; returns where."""
  qdir = os.path.join(os.path.dirname(path), QUARANTINE_SUBDIR)
  os.makedirs(qdir, exist_ok=True)
  dest = os.path.join(qdir, os.path.basename(path))
  if os.path.exists(dest):
    dest += f'.{time.time_ns()}'
  os.replace(path, dest)
  try:
    os.remove(path + VERIFIED_SUFFIX)
  except FileNotFoundError:
    pass
  return dest
