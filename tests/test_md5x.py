"""MD5 of many files at once (`sources/md5x.py`, `_md5x.c`).

Every kernel this CPU runs is compared with hashlib, on lengths around
MD5's padding and the buffer's edges, with more files than lanes, in one
and several threads; then the kernel's argument checks, a file that fails
mid-read, and `checksums.verify_all`, which uses it for local tars.
"""

from __future__ import annotations

import array
import functools
import hashlib
import os
import platform
import random
import signal
import threading

import pytest

from segment_anything_tfds import errors
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import md5x

needs_ext = pytest.mark.skipif(md5x._md5x is None,
                               reason='segment_anything_tfds._md5x not built')
CHUNK = md5x.CHUNK
# MD5 pads to 56 mod 64 bytes, then 8 of length: around 55/56/64 the tail
# takes one block or two. Around CHUNK, a lane's part of the buffer ends.
EDGES = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129,
         CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + 63, 2 * CHUNK + 5, 3 * CHUNK]


def _open(path: str) -> int:
  return os.open(path, os.O_RDONLY)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Files of the edge lengths and some random ones, with their md5s."""
  d = tmp_path_factory.mktemp('md5x')
  rng = random.Random(7)
  sizes = EDGES + [rng.randrange(0, 5 * CHUNK) for _ in range(6)]
  out = []
  for i, size in enumerate(sizes):
    data = rng.randbytes(size)
    path = os.fspath(d / f'f{i}')
    with open(path, 'wb') as f:
      f.write(data)
    out.append((path, hashlib.md5(data).hexdigest()))
  return out


@needs_ext
def test_the_extension_is_built_on_x86_64():
  # CI builds it: a silent fallback to hashlib would hide a broken build.
  if platform.machine() in ('x86_64', 'AMD64'):
    assert 'c' in md5x.kernels()
    assert md5x.kernels()['c'] == 1
    assert all(n in (8, 16) for k, n in md5x.kernels().items() if k != 'c')


@needs_ext
@pytest.mark.parametrize('kernel', list(md5x.kernels()))
@pytest.mark.parametrize('threads', [1, 3])
def test_every_kernel_equals_hashlib(files, kernel, threads):
  paths = [p for p, _ in files]
  got = md5x.digests([functools.partial(_open, p) for p in paths],
                     threads=threads, kernel=kernel)
  assert got == [md5 for _, md5 in files]


@needs_ext
@pytest.mark.parametrize('n', [1, 2, 8, 9, 16, 17])
def test_few_files_and_one_more_than_a_register(files, n):
  """One file, a few, exactly 8 or 16 lanes, and 9 or 17 (a lane
  reused)."""
  picked = files[-n:]
  got = md5x.digests([functools.partial(_open, p) for p, _ in picked],
                     threads=1)
  assert got == [md5 for _, md5 in picked]


@needs_ext
def test_the_kernel_is_one_whose_lanes_the_files_fill():
  simd = {k: n for k, n in md5x.kernels().items() if k != 'c'}
  if not simd:
    pytest.skip('no SIMD md5 kernel here')
  narrow = min(simd, key=simd.__getitem__)
  for per_thread in range(1, simd[narrow] + 1):
    assert md5x._pick(per_thread) == narrow, per_thread
  if 'avx512' in simd:  # 16 lanes: for 9 files a thread and more.
    assert [md5x._pick(n) for n in (9, 16, 17, 100)] == ['avx512'] * 4


@needs_ext
def test_no_files():
  assert md5x.digests([], threads=4) == []


@needs_ext
def test_files_are_opened_when_a_lane_is_free_and_all_closed(files):
  """At most threads x lanes files are open at once; none is left open."""
  opened, now, most = [], [0], [0]

  def opener(path):
    fd = _opening(opened, path)
    now[0] = sum(_is_open(f) for f in opened)
    most[0] = max(most[0], now[0])
    return fd

  paths = [p for p, _ in files]
  got = md5x.digests([functools.partial(opener, p) for p in paths],
                     threads=1)
  assert got == [md5 for _, md5 in files]
  assert len(opened) == len(paths)
  lanes = md5x.kernels()[md5x._pick(len(paths))]
  assert 1 < most[0] <= lanes
  assert not any(_is_open(f) for f in opened)


def _is_open(opened: tuple[int, int]) -> bool:
  """Whether (fd, inode) is still open on that file (a closed fd number
  may be reused for another)."""
  fd, ino = opened
  try:
    return os.fstat(fd).st_ino == ino
  except OSError:
    return False


def _opening(opened: list[tuple[int, int]], path: str) -> int:
  fd = os.open(path, os.O_RDONLY)
  opened.append((fd, os.fstat(fd).st_ino))
  return fd


@needs_ext
@pytest.mark.parametrize('threads', [1, 2])
def test_a_file_that_fails_mid_read_names_itself_and_stops_all(
    files, tmp_path, threads):
  """A directory opens but cannot be read (EISDIR): `ReadError` says
  which file, and every file opened is closed."""
  opened = []
  opener = functools.partial(_opening, opened)
  paths = [p for p, _ in files[:6]]
  paths.insert(3, os.fspath(tmp_path))
  with pytest.raises(md5x.ReadError) as e:
    md5x.digests([functools.partial(opener, p) for p in paths],
                 threads=threads)
  assert e.value.job == 3
  assert isinstance(e.value.error, IsADirectoryError)
  assert not any(_is_open(f) for f in opened)


@needs_ext
@pytest.mark.parametrize('bad', [-1, None, 2.0, True])
def test_an_opener_that_returns_no_fd_is_a_value_error(files, bad):
  opened = []
  openers = [functools.partial(_opening, opened, p) for p, _ in files[:3]]
  openers.insert(1, lambda: bad)
  with pytest.raises(ValueError, match=f'opener 1 returned {bad!r}, not a'
                     ' file descriptor'):
    md5x.digests(openers, threads=1)
  assert not any(_is_open(f) for f in opened)


@needs_ext
# An interrupt that lands in a weakref callback is printed, not raised.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_an_interrupt_at_any_point_closes_every_file_once(tmp_path):
  """A signal handler that raises lands between any two lines of the
  hashing loop: every fd opened is closed, none twice (an EBADF would
  replace the interrupt), in 200 runs at random moments. In one thread:
  with more, a random moment also falls inside CPython's own locks
  (`threading`, `concurrent.futures`), which an exception raised there
  can leave held, and the next run waits for ever;
  `test_an_interrupt_stops_every_thread_at_its_next_turn` interrupts
  threads where Ctrl-C lands, in the wait for them."""
  threads = 1
  paths = []
  for i in range(60):
    path = tmp_path / f'f{i}'
    path.write_bytes(random.Random(i).randbytes(random.Random(i).randrange(
        1, 3 * 4096)))
    paths.append(os.fspath(path))

  class Interrupt(BaseException):
    pass

  def interrupt(*_):
    raise Interrupt()

  rng = random.Random(11)
  previous = signal.signal(signal.SIGALRM, interrupt)
  outcomes = set()
  try:
    for _ in range(200):
      opened = []
      opener = functools.partial(_opening, opened)
      # The timer may also ring after the hashing, as it is disarmed: the
      # outer try catches that one too.
      try:
        try:
          signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0001, 0.004))
          md5x.digests([functools.partial(opener, p) for p in paths],
                       threads=threads)
          outcomes.add('finished')
        finally:
          signal.setitimer(signal.ITIMER_REAL, 0)
      except Interrupt:
        outcomes.add('interrupted')
      # The opener's own fd, returned just as the signal came, is the one
      # window Python cannot close: at most that one is left.
      assert sum(_is_open(f) for f in opened) <= 1
      for f in opened:
        if _is_open(f):
          os.close(f[0])
  finally:
    signal.signal(signal.SIGALRM, previous)
  assert 'interrupted' in outcomes


@needs_ext
def test_an_opener_that_raises_stops_all(files):
  opened = []

  def opener(path):
    if path is None:
      raise errors.SourceError('sa_000009.tar: cannot open it')
    return _opening(opened, path)

  paths = [p for p, _ in files[:4]] + [None] + [p for p, _ in files[4:8]]
  with pytest.raises(errors.SourceError, match='sa_000009.tar'):
    md5x.digests([functools.partial(opener, p) for p in paths], threads=1)
  assert not any(_is_open(f) for f in opened)


# ------------------------------------------------------------- kernel


def _iv(lanes: int) -> bytearray:
  return bytearray(
      (0x67452301).to_bytes(4, 'little') + (0xefcdab89).to_bytes(4, 'little')
      + (0x98badcfe).to_bytes(4, 'little')
      + (0x10325476).to_bytes(4, 'little')) * lanes


@needs_ext
@pytest.mark.parametrize('kernel', list(md5x.kernels()))
def test_a_lane_marked_unused_is_neither_read_nor_written(kernel):
  # 'c' takes as many lanes as the widest kernel, one after the other.
  lanes = max(md5x.kernels()[kernel], 16 if kernel == 'c' else 0)
  rng = random.Random(3)
  buf = rng.randbytes(64 * 4 * lanes)
  states = _iv(lanes)
  sentinel = bytes(range(16))
  states[16:32] = sentinel  # Lane 1 is unused.
  offsets = [64 * 4 * i for i in range(lanes)]
  offsets[1] = -1
  md5x._md5x.compress(states, buf, offsets, 4, kernel)
  for i in range(lanes):
    if i == 1:
      assert bytes(states[16:32]) == sentinel
      continue
    # The state after 4 whole blocks, against a single-lane C run.
    want = _iv(1)
    md5x._md5x.compress(want, buf[offsets[i]:offsets[i] + 256], [0], 4, 'c')
    assert bytes(states[16 * i:16 * i + 16]) == bytes(want), i


@needs_ext
def test_the_kernel_refuses_what_would_read_outside_or_overflow():
  compress = md5x._md5x.compress
  buf = bytes(256)
  with pytest.raises(ValueError, match='outside'):
    compress(_iv(1), buf, [193], 1, 'c')
  with pytest.raises(ValueError, match='outside'):
    compress(_iv(1), buf, [-2], 1, 'c')
  with pytest.raises(ValueError, match='nblocks'):
    compress(_iv(1), buf, [0], 5, 'c')
  with pytest.raises(ValueError, match='nblocks'):
    compress(_iv(1), buf, [0], -1, 'c')
  with pytest.raises(ValueError, match='16 contiguous bytes per lane'):
    compress(_iv(1), buf, [0, 64], 1, 'c')
  with pytest.raises(ValueError, match='lanes'):
    compress(_iv(17), bytes(64 * 17), [64 * i for i in range(17)], 1, 'c')
  for kernel, lanes in md5x.kernels().items():
    if kernel != 'c':
      with pytest.raises(ValueError, match=f'{lanes + 1} lanes for the'):
        compress(_iv(lanes + 1), bytes(64 * (lanes + 1)),
                 [64 * i for i in range(lanes + 1)], 1, kernel)
  with pytest.raises(ValueError, match='no md5 kernel'):
    compress(_iv(1), buf, [0], 1, 'sse9')
  with pytest.raises(TypeError):
    compress(bytes(16), buf, [0], 1, 'c')  # States must be writable.
  with pytest.raises(TypeError):
    compress(_iv(1), buf, [None], 1, 'c')
  # Nothing to do is fine, and changes nothing.
  state = _iv(1)
  compress(state, buf, [-1], 1, 'c')
  compress(state, buf, [0], 0, 'c')
  assert state == _iv(1)


@needs_ext
def test_drive_refuses_a_table_or_chunk_that_would_reach_outside():
  drive = md5x._md5x.drive
  table = array.array('q', [-1, 0, 0, 0, 0])
  buf = bytearray(256)
  with pytest.raises(ValueError, match='5 int64s per lane'):
    drive(_iv(1), buf, 128, array.array('q', [-1, 0, 0, 0]), 'c', 1)
  with pytest.raises(ValueError, match='5 int64s per lane'):
    drive(_iv(2), buf, 128, table, 'c', 1)  # States of 2 lanes for 1.
  with pytest.raises(ValueError, match='5 int64s per lane'):
    drive(_iv(17), bytearray(128 * 17), 128,
          array.array('q', [-1, 0, 0, 0, 0] * 17), 'c', 1)
  for chunk in (64, 130, 512):  # Too small, not whole blocks, past buf.
    with pytest.raises(ValueError, match='chunk'):
      drive(_iv(1), buf, chunk, table, 'c', 1)
  with pytest.raises(ValueError, match='budget'):
    drive(_iv(1), buf, 128, table, 'c', 0)
  for lane in ([5, 10, 3, 0, 0], [5, 0, 129, 0, 0], [-7, 0, 0, 0, 0],
               [5, 0, 0, -1, 0], [5, 0, 0, 2**63 - 1, 0], [5, 0, 0, 0, 7]):
    with pytest.raises(ValueError,
                       match='lane 0: a bad fd, position, byte count'):
      drive(_iv(1), buf, 128, array.array('q', lane), 'c', 1)
  with pytest.raises(TypeError):
    drive(_iv(1), bytes(256), 128, table, 'c', 1)  # buf is written.


@needs_ext
def test_drive_comes_back_after_its_budget_and_at_a_files_end(tmp_path):
  """With a budget of 1 byte drive stops after one round (each lane's
  whole blocks read so far); then lane 1's file ends first, and drive
  stops there with its tail left to finish."""
  data = [random.Random(i).randbytes(n) for i, n in enumerate((640, 200))]
  fds = []
  for i, d in enumerate(data):
    (tmp_path / f'f{i}').write_bytes(d)
    fds.append(os.open(tmp_path / f'f{i}', os.O_RDONLY))
  try:
    states = _iv(2)
    buf = bytearray(2 * 128)
    table = array.array('q', [fds[0], 0, 0, 0, 0, fds[1], 0, 0, 0, 0])
    assert md5x._md5x.drive(states, buf, 128, table, 'c', 1) == (-1, 0)
    assert list(table) == [fds[0], 128, 128, 128, 0,
                           fds[1], 128, 128, 128, 0]
    assert md5x._md5x.drive(states, buf, 128, table, 'c', 1 << 20) == (1, 0)
    fd, pos, end, total, eof = table[5:]
    assert (total, eof) == (200, 1)
    tail = bytes(buf[128 + pos:128 + end])
    assert tail == data[1][192:]
    assert md5x._finish(memoryview(states), 1, tail, total) == (
        hashlib.md5(data[1]).hexdigest())
  finally:
    for fd in fds:
      os.close(fd)


# --------------------------------------------------------- verify_all


def _tars(tmp_path, n: int) -> list[tuple[local.LocalTar, bytes]]:
  rng = random.Random(5)
  out = []
  for i in range(n):
    name = f'sa_{i:06d}.tar'
    data = rng.randbytes(rng.randrange(1, 3 * CHUNK))
    (tmp_path / name).write_bytes(data)
    out.append((local.LocalTar(name, os.fspath(tmp_path / name)), data))
  return out


@pytest.mark.parametrize('lanes', [True, False])
def test_verify_all_judges_each_tar_and_marks_those_that_match(
    tmp_path, monkeypatch, lanes):
  """Ten local tars, two cores' worth of threads: side by side in lanes
  (when built) or one per thread with hashlib; the verdicts are the same,
  and only matching tars get a marker."""
  if not lanes:
    monkeypatch.setattr(md5x, 'available', lambda: False)
  elif not md5x.available():
    pytest.skip('no SIMD md5 kernel here')
  tars = _tars(tmp_path, 10)
  items = [(s, checksums.Expected('md5', hashlib.md5(d).hexdigest(), 'L'))
           for s, d in tars]
  bad = hashlib.md5(b'other').hexdigest()
  items[4] = (items[4][0], checksums.Expected('md5', bad, 'L'))
  got = checksums.verify_all(items, 2)
  want_4 = f'md5 is {hashlib.md5(tars[4][1]).hexdigest()}, L says {bad}'
  assert got == [None] * 4 + [want_4] + [None] * 5
  marked = sorted(p.name for p in tmp_path.glob('*' + checksums.VERIFIED_SUFFIX))
  assert marked == [f'sa_{i:06d}.tar.verified' for i in range(10) if i != 4]
  # Marked tars are not read again: an unreadable file behind a valid
  # marker would raise if it were.
  assert checksums.verify_all(items[:4], 2) == [None] * 4


def test_verify_all_names_a_tar_that_cannot_be_read(tmp_path):
  tars = _tars(tmp_path, 5)
  items = [(s, checksums.Expected('md5', hashlib.md5(d).hexdigest()))
           for s, d in tars]
  (tmp_path / 'sa_000002.tar').unlink()
  (tmp_path / 'sa_000002.tar').mkdir()
  with pytest.raises(errors.SourceError) as e:
    checksums.verify_all(items, 2)
  assert str(e.value).startswith('sa_000002.tar: ')
  assert '\n' not in str(e.value)


def test_a_marker_describes_the_file_hashed_not_what_the_path_named(
    tmp_path, monkeypatch):
  """A symlink pointed at a good copy while the tar is opened, and back at
  a bad one after: the verdict is of the copy hashed, and no marker lets
  the bad file pass later unhashed."""
  good, bad = tmp_path / 'good.tar', tmp_path / 'bad.tar'
  good.write_bytes(b'A' * 1000)
  bad.write_bytes(b'B' * 1000)
  link = tmp_path / 'sa_000000.tar'
  link.symlink_to(bad)
  real_open = local.open_tar

  def swapping_open(path, name):
    link.unlink()
    link.symlink_to(good)
    try:
      return real_open(path, name)
    finally:
      link.unlink()
      link.symlink_to(bad)

  monkeypatch.setattr(local, 'open_tar', swapping_open)
  expected = checksums.Expected('md5', hashlib.md5(b'A' * 1000).hexdigest())
  source = local.LocalTar('sa_000000.tar', os.fspath(link))
  assert checksums.verify_all([(source, expected)]) == [None]
  monkeypatch.setattr(local, 'open_tar', real_open)
  assert checksums.verify_all([(source, expected)]) == [
      f'md5 is {hashlib.md5(b"B" * 1000).hexdigest()}, the checksum list'
      f' says {expected.digest}']


def test_a_tar_changed_while_hashed_gets_no_marker(tmp_path, monkeypatch):
  """Changed after it was opened, as it is read: its verdict is of what
  was read, and no marker vouches for what it is now."""
  tar = tmp_path / 'sa_000000.tar'
  tar.write_bytes(b'A' * 1000)
  real_hash_fd = checksums.hash_fd

  def touch_then_hash(h, fd, size=None):
    os.utime(tar, ns=(1, 1))  # As a writer would change it.
    return real_hash_fd(h, fd, size)

  monkeypatch.setattr(checksums, 'hash_fd', touch_then_hash)
  expected = checksums.Expected('md5', hashlib.md5(b'A' * 1000).hexdigest())
  source = local.LocalTar('sa_000000.tar', os.fspath(tar))
  assert checksums.verify_all([(source, expected)]) == [None]
  assert not (tmp_path / 'sa_000000.tar.verified').exists()


@pytest.mark.parametrize('how', ['missing', 'dangling symlink'])
def test_verify_all_names_a_tar_that_is_not_there(tmp_path, how):
  path = tmp_path / 'sa_000099.tar'
  if how == 'dangling symlink':
    path.symlink_to(tmp_path / 'gone.tar')
  source = local.LocalTar('sa_000099.tar', os.fspath(path))
  with pytest.raises(errors.SourceError) as e:
    checksums.verify_all([(source, checksums.Expected('md5', '0' * 32))])
  assert str(e.value) == (f'sa_000099.tar: cannot open {path}: No such file'
                          ' or directory')


@needs_ext
def test_states_need_no_alignment():
  buf = random.Random(1).randbytes(64 * 3)
  aligned = _iv(1)
  md5x._md5x.compress(aligned, buf, [0], 3, 'c')
  holder = bytearray(1) + _iv(1)
  md5x._md5x.compress(memoryview(holder)[1:], buf, [0], 3, 'c')
  assert holder[1:] == aligned


@needs_ext
def test_an_unknown_kernel_is_a_value_error(files):
  with pytest.raises(ValueError, match="no md5 kernel 'sse9' here"):
    md5x.digests([functools.partial(_open, files[0][0])], kernel='sse9')


@needs_ext
def test_an_interrupt_stops_every_thread_at_its_next_turn(tmp_path):
  """Ctrl-C (here an exception from a signal handler, in the thread that
  waits) ends the hashing of 40 files of 64 MiB without hashing them all."""
  paths = []
  for i in range(40):
    path = tmp_path / f'f{i}'
    with path.open('wb') as f:
      f.truncate(64 << 20)  # Sparse: read as zeros, no disk.
    paths.append(os.fspath(path))
  opened = []

  def opener(path):
    opened.append(path)
    return os.open(path, os.O_RDONLY)

  class Interrupt(Exception):
    pass

  def interrupt(*_):
    raise Interrupt()

  previous = signal.signal(signal.SIGALRM, interrupt)
  try:
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    with pytest.raises(Interrupt):
      md5x.digests([functools.partial(opener, p) for p in paths], threads=2)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
  assert len(opened) < len(paths)
  assert not [t for t in threading.enumerate() if t.name.startswith('sa1b-md5')]
