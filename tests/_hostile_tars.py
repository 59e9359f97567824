"""Tars with hostile headers before a member, written block by block.

Each case of `CASES` is a run of headers that `tars.check_header` refuses
before `tarfile` reads it: extended headers over the size cap (GNU long
names, pax records), pax records that CPython's tarfile before 3.12.6 parses
in quadratic time (CVE-2024-6232), malformed or sparse records, too many
extended headers before one member, sparse and negative-size members. The
tests read them with the tar walker, indexed and streamed (tests/test_tars.py,
tests/test_stream.py) and build them (tests/test_faults.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tarfile

from segment_anything_tfds.prepare import tars

BLOCK = tarfile.BLOCKSIZE
CAP = tars.MAX_EXTENDED_BYTES


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
  """One ustar header block."""
  info = tarfile.TarInfo(name)
  info.size = size
  info.type = kind
  info.mtime = 1680000000
  return info.tobuf(tarfile.USTAR_FORMAT)


def padded(data: bytes) -> bytes:
  return data + bytes(-len(data) % BLOCK)


def member(name: str, data: bytes) -> bytes:
  return header(name, len(data)) + padded(data)


def extended(kind: bytes, data: bytes) -> bytes:
  """An extended header (GNU 'L'/'K', pax 'x'/'g') holding `data`."""
  name = '././@LongLink' if kind in b'LK' else '././@PaxHeader'
  return header(name, len(data), kind) + padded(data)


def record(keyword: bytes, value: bytes) -> bytes:
  """One pax record: `<length> <keyword>=<value>\\n`."""
  body = b' ' + keyword + b'=' + value + b'\n'
  length = len(body) + 1
  while len(str(length)) + len(body) != length:
    length += 1
  return str(length).encode() + body


def negative_size(name: str, field: bytes) -> bytes:
  """A header whose size field is `field` (12 bytes), e.g. negative."""
  block = bytearray(header(name, 0))
  block[124:136] = field
  block[148:156] = b' ' * 8
  block[148:156] = b'%06o\0 ' % sum(block)
  return bytes(block)


def sparse(name: str) -> bytes:
  """An old GNU sparse header ('S') whose extension blocks never end."""
  block = bytearray(header(name, 0, tarfile.GNUTYPE_SPARSE))
  block[482] = 1  # isextended: more sparse blocks follow.
  block[148:156] = b' ' * 8
  block[148:156] = b'%06o\0 ' % sum(block)
  return bytes(block)


_DIGITS = b'7' * (CAP - 64)
# name -> (the hostile run, what the error says).
CASES = {
    'long name over the cap': (
        extended(tarfile.GNUTYPE_LONGNAME, b'n' * CAP + b'\0'),
        rf'GNU long name of {CAP + 1} bytes .*over the {CAP} byte limit'),
    'long link over the cap': (
        extended(tarfile.GNUTYPE_LONGLINK, b'n' * (4 * CAP)),
        rf'GNU long link name of {4 * CAP} bytes .*over the {CAP} byte'),
    'pax of 256 KiB of digits (CVE-2024-6232)': (
        extended(tarfile.XHDTYPE, b'1' * (256 << 10)),
        rf'pax header of {256 << 10} bytes .*over the {CAP} byte limit'),
    'pax global header over the cap': (
        extended(tarfile.XGLTYPE, record(b'comment', b'c' * CAP)),
        rf'pax global header of \d+ bytes .*over the {CAP} byte limit'),
    'pax of digits within the cap (CVE-2024-6232)': (
        extended(tarfile.XHDTYPE, record(b'comment', _DIGITS)),
        r'pax header of \d+ bytes .*a run of more than 32 digits'),
    'pax of no records': (
        extended(tarfile.XHDTYPE, b'hello world, not records'),
        r'pax header of 24 bytes .*a malformed pax record at byte 0'),
    'pax record cut short': (
        extended(tarfile.XHDTYPE, record(b'path', b'sa_2.jpg')[:-1]),
        r'a malformed pax record at byte 0'),
    'pax sparse records': (
        extended(tarfile.XHDTYPE, record(b'GNU.sparse.major', b'1')
                 + record(b'GNU.sparse.minor', b'0')
                 + record(b'GNU.sparse.realsize', b'x')),
        r'GNU sparse records: sparse members are not supported'),
    'pax negative size': (
        extended(tarfile.XHDTYPE, record(b'size', b'-1024')),
        r"a size that is not a number \(b'-1024'\)"),
    'too many extended headers': (
        extended(tarfile.XHDTYPE, record(b'comment', b'a')) * 9,
        r'more than 8 extended headers before one member'),
    'a chain deeper than the recursion limit': (
        extended(tarfile.XHDTYPE, record(b'comment', b'a')) * 3000,
        r'more than 8 extended headers before one member'),
    'old GNU sparse member': (
        sparse('sa_2.jpg'), r'a sparse member at byte \d+: not supported'),
    'negative size (GNU base-256)': (
        negative_size('sa_2.jpg', b'\xff' + ((1 << 88) - 1024).to_bytes(
            11, 'big')), r'a header with a negative size \(-1024\)'),
    'negative size (octal)': (
        negative_size('sa_2.jpg', b'-0000002000\0'),
        r'a header with a negative size \(-1024\)'),
}


def hostile_tar(run: bytes, before=(), after=()) -> bytes:
  """A tar: the members `before` ((name, data) pairs), the hostile `run`
  then `sa_2.jpg` (its member), then the members `after`."""
  parts = [member(n, d) for n, d in before]
  parts += [run, member('sa_2.jpg', b'x' * 10)]
  parts += [member(n, d) for n, d in after]
  return b''.join(parts) + bytes(2 * BLOCK)


def huge_header_tar(path: os.PathLike, kind: bytes, size: int,
                    before=()) -> int:
  """Writes a tar whose extended header claims `size` bytes of data, left
  as a hole in a sparse file; returns the header's offset."""
  with open(path, 'wb') as f:
    for n, d in before:
      f.write(member(n, d))
    at = f.tell()
    name = '././@LongLink' if kind in b'LK' else '././@PaxHeader'
    f.write(header(name, size, kind))
    f.seek(-(-size // BLOCK) * BLOCK, os.SEEK_CUR)
    f.write(member('sa_2.jpg', b'x' * 10) + bytes(2 * BLOCK))
  return at


class Expired(BaseException):
  """A `deadline` passed (not an Exception: nothing under test catches it)."""


@contextlib.contextmanager
def deadline(seconds: float):
  """Raises `Expired` in the block after `seconds` (main thread only; it
  also interrupts a long regular expression search)."""
  def expired(*_):
    raise Expired(f'still running after {seconds} s')
  previous = signal.signal(signal.SIGALRM, expired)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
