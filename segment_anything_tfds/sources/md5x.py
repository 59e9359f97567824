"""MD5 of many files at once: one file per SIMD lane (`_md5x`).

One file's MD5 cannot be spread over cores or lanes; many files can. The
first check of local tars against an md5 list (`checksums.verify_all`)
hashes every tar of the build, so it runs them side by side: each thread
keeps up to 16 files open (8 where it has no more, or no AVX-512), reads
the next 1 MiB of each into its part of one buffer, and runs all of them
through the kernel at once (`_md5x.drive`: the reads and the hashing in
C, without the GIL). On this project's 2-core machine (AVX-512) the
kernel hashes 5.3 GB/s with 8 lanes and 7.9 GB/s with 16 on one core,
8-12x hashlib; from files, about half of that (docs/benchmarks.md,
"Checksums").

`digests` is the whole API; `available()` says whether the extension is
built and the CPU has a SIMD kernel. Without them the caller uses hashlib
(the same digests, one file per thread).
"""

from __future__ import annotations

import array
import concurrent.futures
import errno
import os
import struct
import threading
from typing import Callable, Sequence

try:
  from segment_anything_tfds import _md5x
except ImportError:  # Built without a C compiler: hashlib instead.
  _md5x = None

# Each lane's share of the thread's buffer: one read per refill. As large
# as hashlib's reads were (`checksums._HASH_BUFFER`): 16 files read in turns
# must not cost a disk more seeks; the rate in memory is the same from
# 64 KiB to 1 MiB.
CHUNK = 1 << 20
# Bytes a thread hashes between looks at whether to stop (~20 ms).
_TURN = 64 << 20
# A lane of `_md5x.drive`'s table with no file.
_FREE = array.array('q', [-1, 0, 0, 0, 0])
_IV = (0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476)


def kernels() -> dict[str, int]:
  """The kernels this machine runs: name -> lanes, fastest first ('c',
  the portable one, last); {} without the extension."""
  return {} if _md5x is None else dict(_md5x.kernels())


def _pick(per_thread: int) -> str:
  """The kernel for `per_thread` files in each thread: the fastest that
  has more than half of its lanes busy, else the one with fewest lanes.
  A kernel takes as long with one lane used as with all: 16 lanes for 8
  files would run at half rate, and 8 lanes for 9 files would run twice
  (SIMD kernels only; 'c' is never picked)."""
  simd = {k: n for k, n in kernels().items() if k != 'c'}
  busy = [k for k, n in simd.items() if 2 * per_thread > n]
  return busy[0] if busy else min(simd, key=simd.__getitem__)


def available() -> bool:
  """Whether `digests` beats hashlib here: a SIMD kernel is there."""
  return any(k != 'c' for k in kernels())


class ReadError(Exception):
  """Reading file number `job` (its index in `digests`' list) failed."""

  def __init__(self, job: int, error: OSError):
    super().__init__(job, error)
    self.job = job
    self.error = error


def _finish(states: memoryview, lane: int, tail: bytes, total: int) -> str:
  """MD5's padding after the last `tail` (< 64) bytes of `total`."""
  pad = tail + b'\x80' + bytes((55 - len(tail)) % 64)
  pad += ((total * 8) & (2**64 - 1)).to_bytes(8, 'little')
  state = states[16 * lane:16 * lane + 16]
  _md5x.compress(state, pad, (0,), len(pad) // 64, 'c')
  return struct.pack('<4I', *state.cast('I')).hex()


class _Jobs:
  """The files still to hash, shared by the threads; `stop` ends them all
  (one failed)."""

  def __init__(self, openers: Sequence[Callable[[], int]]):
    self._left = list(enumerate(openers))[::-1]  # pop() takes them in order.
    self._lock = threading.Lock()
    self.stop = threading.Event()

  def take(self) -> tuple[int, Callable[[], int]] | None:
    with self._lock:
      return self._left.pop() if self._left and not self.stop.is_set() else None


def _sequential(fd: int) -> None:
  """Tells the kernel the file is read front to back (larger read-ahead),
  where it can be told."""
  if hasattr(os, 'posix_fadvise'):
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
      pass


def _run(jobs: _Jobs, lanes: int, kernel: str, out: list[str | None]) -> None:
  """Hashes files from `jobs`, `lanes` at a time, until none is left.

  `_md5x.drive` reads and hashes them without the GIL, and comes back when
  a file ends (to finish its md5 and open the next), when a read fails,
  and after `_TURN` bytes (to see whether another thread stopped them all).
  """
  buf = bytearray(lanes * CHUNK)
  words = array.array('I', bytes(16 * lanes))
  assert words.itemsize == 4
  states = memoryview(words).cast('B')
  # Per lane: fd (-1: none), next byte to hash and end of what was read in
  # its part of `buf`, bytes read so far, at the end of the file.
  table = _FREE * lanes
  assert table.itemsize == 8
  job_of: list[int | None] = [None] * lanes
  # The table owns each fd from the moment the opener returns it: an
  # interrupt (a signal handler raising) between two lines then leaves no
  # fd that `finally` does not close, and none closed twice (a number
  # another thread may have been given since).
  try:
    while not jobs.stop.is_set():
      for i in range(lanes):
        if job_of[i] is None and (job := jobs.take()) is not None:
          job_of[i] = job[0]
          table[5 * i] = _fd(job[1](), job[0])
          _sequential(table[5 * i])
          words[4 * i:4 * i + 4] = array.array('I', _IV)
      if all(job is None for job in job_of):
        return
      lane, error = _md5x.drive(states, buf, CHUNK, table, kernel, _TURN)
      if lane < 0 or error == errno.EINTR:  # A turn's end; a signal.
        continue
      if error:
        raise ReadError(job_of[lane], OSError(error, os.strerror(error)))
      fd, pos, end, total, _ = table[5 * lane:5 * lane + 5]
      base = lane * CHUNK
      out[job_of[lane]] = _finish(states, lane, bytes(buf[base + pos:
                                                          base + end]), total)
      table[5 * lane:5 * lane + 5] = _FREE
      job_of[lane] = None
      os.close(fd)
  except BaseException:
    jobs.stop.set()
    raise
  finally:
    for i in range(lanes):
      fd, table[5 * i] = table[5 * i], -1
      if fd != -1:
        os.close(fd)


def _fd(fd, job: int) -> int:
  """What opener number `job` returned, if it is an open file's number."""
  if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
    raise ValueError(f'opener {job} returned {fd!r}, not a file descriptor')
  return fd


def digests(openers: Sequence[Callable[[], int]], *, threads: int = 1,
            kernel: str | None = None) -> list[str]:
  """The md5 (hex) of each file, `threads` threads at once, each with as
  many files side by side as its kernel has lanes (16 or 8; 1 for 'c').

  Args:
    openers: one per file: called when a lane is free for it, returns an
      open file descriptor, read from where it is to its end and then
      closed (so at most `threads` x 16 are open at once).
    threads: how many threads hash at once (one per core is what a build
      uses); fewer if there are few files.
    kernel: a name from `kernels()` (None: the fastest for the files each
      thread has; 16 lanes only for more than 8).

  Raises:
    ReadError: reading a file failed (which one, and the OSError); the
      other threads stop at their next read.
    Whatever an opener raises, likewise.
    RuntimeError: the extension is not built (see `available`).
  """
  if _md5x is None:
    raise RuntimeError('segment_anything_tfds._md5x is not built')
  if not openers:
    return []
  threads = max(1, min(threads, len(openers)))
  if kernel is None and available():
    kernel = _pick(-(-len(openers) // threads))
  kernel = kernel or 'c'
  if kernel not in kernels():
    raise ValueError(f'no md5 kernel {kernel!r} here: {", ".join(kernels())}')
  lanes = min(-(-len(openers) // threads), kernels()[kernel])
  jobs = _Jobs(openers)
  out: list[str | None] = [None] * len(openers)
  if threads == 1:
    _run(jobs, lanes, kernel, out)
  else:
    ex = concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix='sa1b-md5')
    try:
      for f in [ex.submit(_run, jobs, lanes, kernel, out)
                for _ in range(threads)]:
        f.result()
    except BaseException:  # Ctrl-C too, in a submit or a wait: the threads
      jobs.stop.set()       # stop at their next turn, not after every file.
      raise
    finally:
      ex.shutdown(wait=True)
  return out  # type: ignore[return-value]
