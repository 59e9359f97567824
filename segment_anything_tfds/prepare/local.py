"""The local engine: every core, memory flat in the number of images.

A build that names no Beam runner writes the split itself, in three steps,
in worker processes (one per core, when the work is worth starting them):

  index   each source is indexed (`tars.index`: a tar's headers, seeking
          past the data; or a folder's files), in parallel. What comes back
          per image is a fixed-size entry of 48 bytes: its tar, its id, and
          where its two members are. A remote tar (every read a request) is
          instead read once, front to back (`tars.stream`): each image is
          built and serialized there, its record appended to a local spill
          (`_Spill`), and its entry points into the spill. With an image
          list, both take the listed images only.
  plan    the main process applies the rules (`rules.py`: audit, duplicate
          ids, listed images found in no tar), orders the entries by
          `plan.image_order` and cuts them into output shards, as many as
          TFDS would choose (`plan.py`).
  write   workers take one output shard (or a part of one) each: they read
          its images from the tars in order (a seek per member) and check
          and serialize them, or copy their records from the spill, and
          write the shard file; lenient skips come back as audit records.

Only the entries (48 bytes per image, ≈0.5 GB for SA-1B's 11 M images) are
held in memory, never examples, and each image is read and parsed once.
The spill is cut into buckets by the high bits of `image_order`; shards are
written in that order, so a bucket is deleted as soon as every shard that
spans it is written: at its peak, the spill holds about a sixteenth of the
output.

Workers import neither TensorFlow nor TFDS (tars, records, the serializer
and a TFRecord writer need neither), and end with the build's process, even
when it is killed. A worker that dies (killed, out of memory) fails the
build with `errors.WorkerError`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import ctypes
import dataclasses
import multiprocessing
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds import logs
from segment_anything_tfds import machine
from segment_anything_tfds import tfds_seam
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import rules
from segment_anything_tfds.prepare import serializer
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import paths as paths_lib

# One image: its tar (index into the build's sources), id, members. The
# members' offsets and sizes, for an image of a seekable source. For one
# built in the index step, `json_offset` says how it went (`_FAILED`, or
# `_SPILLED - n` for spill file n), `json_size` holds its members' bytes and
# `jpg_offset`, `jpg_size` where its record is in the spill file.
ENTRY = np.dtype([
    ('shard', '<i4'), ('jpg_dir', '<i2'), ('json_dir', '<i2'),
    ('image_id', '<i8'), ('jpg_offset', '<i8'), ('jpg_size', '<i8'),
    ('json_offset', '<i8'), ('json_size', '<i8'),
])
_FAILED = -1
_SPILLED = -2
# A spilled record: its number of masks, then the serialized example.
_SPILL_HEAD = struct.Struct('<Q')
# The spill's buckets: the top bits of `image_order`.
SPILL_BITS = 4
# Worker processes are started only for work estimated at more than this
# many seconds in one process (they take a fraction of a second to start).
POOL_SECONDS = 1.0
# The estimate of the write step: per image, plus per byte of members.
_SECONDS_PER_IMAGE = 0.5e-3
_BYTES_PER_SECOND = 1e9
_PROGRESS_EVERY = 16


def default_workers() -> int:
  """One worker per core this process may use."""
  return machine.cores()


def input_bytes(entries: np.ndarray) -> np.ndarray:
  """Each entry's member bytes (jpg + json)."""
  built = entries['json_offset'] <= _SPILLED
  return np.where(built, entries['json_size'],
                  entries['jpg_size'] + entries['json_size'])


def spill_bucket(image_ids: np.ndarray) -> np.ndarray:
  """The spill bucket of each image: the top bits of its `image_order`."""
  return (plan.image_order(image_ids) >> np.uint64(64 - SPILL_BITS)
          ).astype(np.int64)


# ------------------------------------------------------------------ index


class _Spill:
  """Records of images built in the index step, one file per bucket, here
  (one process), appended to; opened on first use."""

  def __init__(self, root: str):
    self.root = root
    self._files: dict[int, int] = {}

  def path(self, bucket: int) -> str:
    return os.path.join(self.root,
                        f'bucket-{bucket:02d}.{os.getpid()}.spill')

  def add(self, image_id: int, masks: int, pieces: Sequence[bytes]
          ) -> tuple[str, int, int]:
    """Appends a record; returns (its file, offset, length)."""
    bucket = int(spill_bucket(np.array([image_id]))[0])
    fd = self._files.get(bucket)
    if fd is None:
      os.makedirs(self.root, exist_ok=True)
      fd = os.open(self.path(bucket), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                   0o600)
      self._files[bucket] = fd
    data = [_SPILL_HEAD.pack(masks), *pieces]
    offset = os.lseek(fd, 0, os.SEEK_END)
    tfds_seam.write_all(fd, list(data))
    return self.path(bucket), offset, sum(map(len, data))

  def close(self) -> None:
    for fd in self._files.values():
      os.close(fd)
    self._files.clear()


def remove_bucket(root: str, bucket: int) -> None:
  """Deletes every process's spill file of a bucket."""
  prefix = f'bucket-{bucket:02d}.'
  if os.path.isdir(root):
    for name in os.listdir(root):
      if name.startswith(prefix):
        os.remove(os.path.join(root, name))


@dataclasses.dataclass
class Indexed:
  """What indexing one source returns to the main process.

  Attributes:
    shard: the source's position in the build.
    entries: ENTRY, one per image kept by its index, by image id.
    dirs: member folders; an entry's names are dir + sa_<id>.ext.
    index: problems, ignored members, damage; pairs emptied.
    images: images indexed (pairs + problems).
    failures: image id -> the error of an image built here that failed.
    spills: the spill files entries point into (`_SPILLED - i`: spills[i]).
    found: with an image list, the ids of the images indexed; else None.
  """

  shard: int
  entries: np.ndarray
  dirs: list[str]
  index: tars_lib.Index
  images: int
  failures: dict[int, errors.BadInputError]
  spills: list[str]
  found: np.ndarray | None = None


def _indexed(shard: int, index: tars_lib.Index, built: dict[str, tuple],
             failures, spills: list[str]) -> Indexed:
  """An index in compact form: its pairs become entries, then are dropped."""
  dirs = _Dirs()
  entries = _entries(shard, index.pairs, dirs, built)
  images = index.images
  found = None if index.unlisted is None else index.image_ids()
  index.pairs = []
  return Indexed(shard, entries, list(dirs.numbers), index, images, failures,
                 spills, found)


def _split_name(name: str) -> str:
  """The folder part of a member name (`./`, `a/b/`, '')."""
  return name[:name.rfind('/') + 1]


class _Dirs:
  """Member folders, numbered as they come."""

  def __init__(self):
    self.numbers: dict[str, int] = {}

  def of(self, member: base.Member) -> int:
    return self.numbers.setdefault(_split_name(member.name), len(self.numbers))


def _entries(shard: int, pairs, dirs: _Dirs, built: dict[str, tuple]
             ) -> np.ndarray:
  """The entries of an index's pairs; `built`: stem -> (offset, size,
  code, member bytes) of those built in the index step."""
  entries = np.zeros(len(pairs), ENTRY)
  for i, pair in enumerate(pairs):
    where = built.get(pair.stem) or (pair.jpg.offset, pair.jpg.size,
                                     pair.json.offset, pair.json.size)
    entries[i] = (shard, dirs.of(pair.jpg), dirs.of(pair.json), pair.image_id,
                  *where)
  return entries


def _stream_one(shard: int, source: base.Source, hold_bytes: int,
                spill: _Spill, images) -> Indexed:
  """A remote tar read front to back, each image built and spilled."""
  built: dict[str, tuple] = {}
  failures: dict[int, errors.BadInputError] = {}
  spills: dict[str, int] = {}
  index = None
  for event in tars_lib.stream(source, hold_bytes=hold_bytes, images=images):
    if isinstance(event, tars_lib.Index):
      index = event
      continue
    pair = event.pair
    member_bytes = pair.jpg.size + pair.json.size
    try:
      _, example = tars_lib.build_example(source.name, pair, event.jpg,
                                          event.json)
    except errors.BadInputError as e:
      failures[pair.image_id] = e
      built[pair.stem] = (pair.jpg.offset, pair.jpg.size, _FAILED,
                          pair.json.size)
      continue
    path, offset, size = spill.add(pair.image_id,
                                   len(example['annotations']['id']),
                                   serializer.serialize_pieces(example))
    code = _SPILLED - spills.setdefault(path, len(spills))
    built[pair.stem] = (offset, size, code, member_bytes)
  final = {p.stem for p in index.pairs}  # A stem stored twice is not.
  built = {stem: v for stem, v in built.items() if stem in final}
  failures = {i: e for i, e in failures.items() if f'sa_{i}' in final}
  return _indexed(shard, index, built, failures, list(spills))


def index_one(shard: int, source: base.Source, hold_bytes: int,
              spill: _Spill, images=None) -> Indexed:
  """Indexes a source into compact entries (runs in a worker); with an
  image list (`image_list.ImageList`), its images only."""
  if source.remote and not source.folder:
    return _stream_one(shard, source, hold_bytes, spill, images)
  return _indexed(shard, tars_lib.index(source, images=images), {}, {}, [])


def _pair(entry, dirs: Sequence[str]) -> tars_lib.Pair:
  stem = f'sa_{int(entry["image_id"])}'
  return tars_lib.Pair(
      stem,
      tars_lib.Member(dirs[entry['jpg_dir']] + stem + '.jpg',
                      int(entry['jpg_offset']), int(entry['jpg_size'])),
      tars_lib.Member(dirs[entry['json_dir']] + stem + '.json',
                      int(entry['json_offset']), int(entry['json_size'])))


# ------------------------------------------------------------------ write


@dataclasses.dataclass
class Part:
  """One unit of write work: (part of) an output shard."""

  shard: int  # Output shard number.
  part: int
  path: str
  entries: np.ndarray  # ENTRY, in write order.
  dirs: dict[int, list[str]]  # Member folders of the tars it reads.
  spills: list[str]  # The build's spill files.
  buckets: range  # The spill buckets its entries are in.


@dataclasses.dataclass
class PartResult:
  shard: int
  part: int
  path: str
  records: int
  tallies: rules.Tallies
  skips: list[dict[str, Any]]
  buckets: range


class _Worker:
  """A worker's state: the sources, open readers, the spill."""

  def __init__(self, sources, file_format, lenient, hold_bytes, spill_dir,
               images, tick):
    self.sources = sources
    self.file_format = file_format
    self.lenient = lenient
    self.hold_bytes = hold_bytes
    self.images = images
    self.spill = _Spill(spill_dir)
    self.tick = tick  # Reports images written, as they are.
    self.readers: collections.OrderedDict[int, tars_lib.ShardReader] = (
        collections.OrderedDict())
    self.spilled: dict[str, int] = {}  # Spill file -> fd.

  def reader(self, shard: int) -> tars_lib.ShardReader:
    reader = self.readers.pop(shard, None)
    if reader is None:
      reader = tars_lib.ShardReader(self.sources[shard])
      if len(self.readers) >= 32:  # Each holds an open file.
        self.readers.popitem(last=False)[1].close()
    self.readers[shard] = reader
    return reader

  def close(self):
    for reader in self.readers.values():
      reader.close()
    self.readers.clear()
    for fd in self.spilled.values():
      os.close(fd)
    self.spilled.clear()
    self.spill.close()

  def index(self, shard: int) -> Indexed:
    return index_one(shard, self.sources[shard], self.hold_bytes, self.spill,
                     self.images)

  def _spilled(self, path: str, entry) -> tuple[int, bytes]:
    """(masks, record) of an image built in the index step."""
    fd = self.spilled.get(path)
    if fd is None:
      fd = self.spilled[path] = os.open(path, os.O_RDONLY)
    size = int(entry['jpg_size'])
    data = os.pread(fd, size, int(entry['jpg_offset']))
    if len(data) != size:
      raise OSError(f'{path}: read {len(data)} of {size} bytes')
    (masks,) = _SPILL_HEAD.unpack_from(data)
    return masks, data[_SPILL_HEAD.size:]

  def _record(self, entry, part: Part):
    """(masks, record or its pieces) of an entry; BadInputError if bad."""
    code = int(entry['json_offset'])
    if code <= _SPILLED:
      return self._spilled(part.spills[_SPILLED - code], entry)
    shard = int(entry['shard'])
    _, example = tars_lib.read_example(
        self.reader(shard), _pair(entry, part.dirs[shard]))
    return (len(example['annotations']['id']),
            serializer.serialize_pieces(example))

  def write(self, part: Part) -> PartResult:
    tallies = rules.Tallies()
    skips: list[dict[str, Any]] = []

    def records():
      done = 0
      for entry in part.entries:
        tar = self.sources[entry['shard']].name
        try:
          masks, record = self._record(entry, part)
        except errors.BadInputError as e:
          skips.append(rules.problem(e, lenient=self.lenient))
          tallies.skipped(tar)
          continue
        size = len(record) if isinstance(record, bytes) else sum(
            map(len, record))
        tallies.written(tar, masks=masks, nbytes=size)
        done += 1
        if done % _PROGRESS_EVERY == 0:
          self.tick(_PROGRESS_EVERY)
        yield record
      self.tick(done % _PROGRESS_EVERY)

    tfds_seam.write_records(part.path, self.file_format, records())
    return PartResult(part.shard, part.part, part.path,
                      tallies.total('written'), tallies, skips, part.buckets)


_WORKER: _Worker | None = None
_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.


def _init_worker(state, counter, verbose, parent):
  """Sets up a worker process; `counter` is a shared count of images."""
  global _WORKER
  _die_with_parent(parent)
  if verbose is not None:  # The parent's CLI output settings.
    logs.configure(verbose)

  def tick(n):
    with counter.get_lock():
      counter.value += n

  _WORKER = _Worker(*state, tick)


def _die_with_parent(parent: int) -> None:
  """Ends this worker as soon as `parent`, the build's process, is gone.

  A worker holds both ends of the pool's pipes itself, so once the build is
  killed it would wait on them forever. On Linux the kernel kills it
  (PR_SET_PDEATHSIG). That signal comes when the parent *thread* that
  started the worker ends: the pool starts workers from the thread that
  submits work, the one running `build`, and `build` shuts the pool down
  before it returns. Elsewhere a thread checks the parent every second. A
  parent gone before either was set up is caught by the check after it.
  """
  if not _signal_on_parent_death(signal.SIGKILL):
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name='watch-build-process').start()
  if os.getppid() != parent:
    os._exit(1)  # pylint: disable=protected-access


def _signal_on_parent_death(sig: int) -> bool:
  """Asks Linux for `sig` when the parent dies; False where it cannot."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return False
  return prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(int(sig)),
               ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0


def _watch_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(1.0)
  os._exit(1)  # pylint: disable=protected-access


def _write_part(part: Part) -> PartResult:
  return _WORKER.write(part)


def _index_source(shard: int) -> Indexed:
  return _WORKER.index(shard)


class _InProcess:
  """The pool's stand-in: tasks run here, one by one, when waited for."""

  def __init__(self, state, counter):
    global _WORKER

    def tick(n):
      counter.value += n

    _WORKER = _Worker(*state, tick)

  def submit(self, fn, *args):
    return _Deferred(fn, args)

  def shutdown(self, **kwargs):
    del kwargs
    if _WORKER is not None:
      _WORKER.close()


class _Deferred:
  """A task of `_InProcess`, run when its result is waited for."""

  def __init__(self, fn, args):
    self._fn, self._args = fn, args

  def cancel(self):
    self._fn = None

  def result(self):
    return self._fn(*self._args)


# ----------------------------------------------------------------- build


class _Pools:
  """This process, and worker processes once the work is worth them."""

  def __init__(self, state, workers: int):
    self.state = state
    self.workers = workers
    self.ctx = multiprocessing.get_context('spawn')
    self.counter = self.ctx.Value('q', 0)
    self.here = _InProcess(state, self.counter)
    self.pool = None

  def choose(self, seconds: float):
    """The pool for work estimated at `seconds` in one process."""
    if self.pool is None and self.workers > 1 and seconds >= POOL_SECONDS:
      self.pool = concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=self.ctx, initializer=_init_worker,
          initargs=(self.state, self.counter, logs.configured(),
                    os.getpid()))
    return self.pool or self.here

  @property
  def used(self) -> int:
    return self.workers if self.pool is not None else 1

  def shutdown(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)
    self.here.shutdown()


class Build:
  """One local build's state: what the steps pass on."""

  def __init__(self, sources, output: plan.Output, *, lenient: bool,
               workers: int, hold_bytes: int, show_progress: bool, tmp: str,
               images=None, allow_partial: bool = False,
               skipped: Sequence[dict[str, Any]] = ()):
    self.sources = list(sources)
    self.output = output
    self.lenient = lenient
    self.show_progress = show_progress
    self.tmp = tmp
    self.spill_dir = os.path.join(tmp, 'spill')
    self.records: list[dict[str, Any]] = list(skipped)
    self.tallies = rules.Tallies()
    self.images = images
    self.allow_partial = allow_partial
    self.missing: np.ndarray | None = None
    self.pools = _Pools((self.sources, output.file_format, lenient,
                         hold_bytes, self.spill_dir, images), workers)

  # ---- index

  def index(self) -> list[Indexed]:
    """Indexes every source: the first here, the others in workers if the
    first says they are worth it."""
    with _bar(self.show_progress, total=len(self.sources),
              desc='Indexing tars', unit='tar') as bar:
      started = time.monotonic()
      indexed = [self.pools.here.submit(_index_source, 0).result()]
      bar.update(1)
      rest = len(self.sources) - 1
      pool = self.pools.choose((time.monotonic() - started) * rest)
      futures = [pool.submit(_index_source, i) for i in range(1, rest + 1)]
      for fut in _as_completed(futures):
        indexed.append(fut.result())
        bar.update(1)
    return sorted(indexed, key=lambda x: x.shard)

  # ---- plan

  def plan(self, indexed: list[Indexed], max_examples: int | None
           ) -> tuple[np.ndarray, list[str], dict[int, list[str]]]:
    """The entries to write, in write order; the spill files; the dirs."""
    for x in indexed:
      self.records += rules.audit_index(x.index, lenient=self.lenient,
                                        images=x.images)
    if self.images is not None:
      self.missing = rules.missing_images(
          self.images, np.concatenate([x.found for x in indexed]),
          allow_partial=self.allow_partial, tars=len(self.sources),
          records=self.records)
    spills: list[str] = []
    for x in indexed:
      built = x.entries['json_offset'] <= _SPILLED
      codes = [_SPILLED - len(spills) - i for i in range(len(x.spills))]
      x.entries['json_offset'][built] = np.array(codes, np.int64)[
          _SPILLED - x.entries['json_offset'][built]]
      spills += x.spills
    dirs = {x.shard: x.dirs for x in indexed}
    entries = np.concatenate([x.entries for x in indexed])
    for x in indexed:
      x.entries = None  # Held once, in `entries`.
    entries = self._drop_duplicates(entries, dirs)
    if max_examples is not None:
      entries = entries[:max_examples]
    if not len(entries):
      raise errors.SourceError(rules.nothing_to_write(self.records,
                                                      len(self.sources)))
    order = np.argsort(plan.image_order(entries['image_id']), kind='stable')
    entries = entries[order]
    self._failed(entries, {(x.shard, i): e for x in indexed
                           for i, e in x.failures.items()})
    return entries, spills, dirs

  def _drop_duplicates(self, entries: np.ndarray,
                       dirs: dict[int, list[str]]) -> np.ndarray:
    """Keeps each image id once, from the lowest tar (`rules.duplicates`)."""
    tar_index = np.array([s.tar_index for s in self.sources])
    dropped, kept = rules.duplicate_rows(entries['image_id'],
                                         tar_index[entries['shard']])
    for drop, keep in zip(dropped, kept):
      copy, first = (self._copy(entries[i], dirs) for i in (drop, keep))
      error = rules.duplicate_error(int(entries[drop]['image_id']), copy,
                                    first, lenient=self.lenient)
      self.records.append(rules.problem(error, lenient=self.lenient))
    if not len(dropped):
      return entries
    return np.delete(entries, dropped)

  def _copy(self, entry, dirs) -> rules.Copy:
    source = self.sources[int(entry['shard'])]
    return rules.Copy(source.tar_index, source.name,
                      _pair(entry, dirs[int(entry['shard'])]).jpg.name)

  def _failed(self, entries: np.ndarray, failures) -> None:
    """Images whose build failed in the index step: skipped now (they keep
    their place in the plan, as those that fail in the write step)."""
    for entry in entries[entries['json_offset'] == _FAILED]:
      error = failures[int(entry['shard']), int(entry['image_id'])]
      self.records.append(rules.problem(error, lenient=self.lenient))
      self.tallies.skipped(error.tar)

  # ---- write

  def write(self, entries: np.ndarray, spills: list[str],
            dirs: dict[int, list[str]]) -> list[int]:
    """Writes the shards; returns their lengths."""
    output = self.output
    total = int(input_bytes(entries).sum())
    num_shards = output.shard_count(images=len(entries), input_bytes=total)
    bounds = plan.cuts(len(entries), num_shards)
    pool = self.pools.choose(len(entries) * _SECONDS_PER_IMAGE
                             + total / _BYTES_PER_SECOND)
    parts_each = _parts_per_shard(num_shards, self.pools.used,
                                  output.file_format)
    buckets = spill_bucket(entries['image_id'])
    parts = []
    for s in range(num_shards):
      cuts = plan.cuts(bounds[s + 1] - bounds[s], parts_each)
      for p in range(parts_each):
        lo, hi = bounds[s] + cuts[p], bounds[s] + cuts[p + 1]
        chunk = entries[lo:hi]
        chunk = chunk[chunk['json_offset'] != _FAILED]
        used = {int(k) for k in np.unique(chunk['shard'])}
        span = (range(int(buckets[lo]), int(buckets[hi - 1]) + 1) if hi > lo
                else range(0))
        parts.append(Part(s, p, os.path.join(self.tmp,
                                              f'shard-{s:05d}.part-{p:03d}'),
                          chunk, {k: dirs[k] for k in used}, spills, span))
    return self._write_parts(pool, parts, num_shards, parts_each)

  def _write_parts(self, pool, parts: list[Part], num_shards: int,
                   parts_each: int) -> list[int]:
    lengths = [0] * num_shards
    done = collections.defaultdict(list)
    waiting = collections.Counter(b for part in parts for b in part.buckets)
    counter = self.pools.counter
    with _bar(self.show_progress, total=sum(len(p.entries) for p in parts),
              desc='Writing images', unit='img') as bar:
      futures = [pool.submit(_write_part, part) for part in parts]
      for fut in _as_completed(futures, on_wait=lambda: _sync(bar, counter)):
        result = fut.result()
        lengths[result.shard] += result.records
        self.tallies.add(result.tallies)
        self.records.extend(result.skips)
        for b in result.buckets:
          waiting[b] -= 1
          if not waiting[b]:
            remove_bucket(self.spill_dir, b)
        done[result.shard].append(result)
        if len(done[result.shard]) == parts_each:
          ordered = sorted(done.pop(result.shard), key=lambda r: r.part)
          _join_parts([r.path for r in ordered],
                      self.output.shard_path(result.shard, num_shards),
                      self.tmp)
        _sync(bar, counter)
    return lengths


def _parts_per_shard(num_shards: int, workers: int, file_format: str) -> int:
  """Parts per output shard, so that small builds keep every worker busy.

  Parts are TFRecord files concatenated afterwards; other formats cannot
  be concatenated, so they are written one shard per worker.
  """
  if file_format != 'tfrecord' or num_shards >= workers:
    return 1
  return -(-workers // num_shards)


def _join_parts(paths: Sequence[str], dest, tmp: str) -> None:
  """Joins a shard's parts into `dest`; a bucket's shard is staged in `tmp`.

  A shard for a bucket (`gs://...`) is joined on local disk, then copied
  into the bucket and deleted: local disk holds the shards in flight only.
  """
  remote = not paths_lib.is_local(dest)
  joined = os.path.join(tmp, dest.name) if remote else os.fspath(dest)
  if len(paths) == 1:
    os.replace(paths[0], joined)
  else:
    with open(joined, 'wb') as out:
      for p in paths:
        with open(p, 'rb') as f:
          shutil.copyfileobj(f, out, 1 << 22)
        os.remove(p)
  if remote:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(joined).copy(dest, overwrite=True)
    os.remove(joined)


def build(sources: Sequence[base.Source], output: plan.Output, *,
          lenient: bool, workers: int = 0,
          hold_bytes: int = 256 << 20, show_progress: bool = True,
          max_examples: int | None = None, images=None,
          allow_partial: bool = False,
          skipped: Sequence[dict[str, Any]] = ()) -> plan.Result:
  """Writes the split of `sources` into `output.data_dir`.

  Args:
    sources: the sources, in tar order.
    output: where and how to write.
    lenient: skip and audit bad images instead of failing.
    workers: worker processes at most; 0 means one per core. Small builds
      run in this process.
    hold_bytes: bytes a remote tar holds for members waiting for their
      partner (`tars.stream`).
    show_progress: show progress bars (tars indexed; images written, with
      the rate and an ETA).
    max_examples: write at most this many images (the first, by tar).
    images: an `image_list.ImageList`: build the images it lists only.
    allow_partial: with `images`, build those found if some are in no tar
      (else `rules.missing_images` raises).
    skipped: the audit records of tars left out before the build (a
      lenient build's tars that do not match their checksums).

  Returns:
    What was written, its counts, and the audit records (also written to
    `<data_dir>/audit/`).

  Raises:
    errors.BadInputError: in strict mode, for the first bad input.
  """
  started = time.monotonic()
  if not sources:
    raise errors.SourceError('nothing to build: no tars were given')
  # Parts and the spill are on local disk: next to the output, or for a
  # bucket (which cannot be appended to or renamed cheaply) in a temp dir.
  if paths_lib.is_local(output.data_dir):
    tmp = os.path.join(output.data_dir, '.local_build')
    os.makedirs(tmp, exist_ok=True)
  else:
    tmp = tempfile.mkdtemp(prefix='segment_anything_tfds-')
  run = Build(sources, output, lenient=lenient,
              workers=workers or default_workers(), hold_bytes=hold_bytes,
              show_progress=show_progress, tmp=tmp, images=images,
              allow_partial=allow_partial, skipped=skipped)
  try:
    entries, spills, dirs = run.plan(run.index(), max_examples)
    lengths = run.write(entries, spills, dirs)
    if not sum(lengths):
      raise errors.SourceError(rules.nothing_to_write(run.records,
                                                      len(run.sources)))
    lengths = plan.drop_empty_shards(output, lengths)
  except concurrent.futures.process.BrokenProcessPool as e:
    raise _worker_died(run.pools.pool) from e
  finally:
    run.pools.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
  rules.write_audit(output.data_dir, run.records)
  return plan.Result(
      engine='local', shard_lengths=lengths,
      num_bytes=run.tallies.total('bytes'), tallies=run.tallies,
      audit=run.records, workers=run.pools.used,
      seconds=time.monotonic() - started, missing_images=run.missing)


def _worker_died(pool) -> errors.WorkerError:
  """The error for a pool one of whose workers died: how, if known."""
  # The pool's processes (a private attribute, hence getattr), taken before
  # shutdown drops them; shutdown reaps them all, so each has its exit code.
  processes = list((getattr(pool, '_processes', None) or {}).values())
  pool.shutdown(wait=True, cancel_futures=True)
  codes = [p.exitcode for p in processes if p.exitcode]
  # Once one has died, the pool ends the others with SIGTERM.
  codes = [c for c in codes if c != -signal.SIGTERM] or codes
  how = 'died'
  if codes and codes[0] < 0:
    try:
      how = f'was killed by {signal.Signals(-codes[0]).name}'
    except ValueError:
      how = f'was killed by signal {-codes[0]}'
    if codes[0] == -signal.SIGKILL:
      how += (' (the out-of-memory killer sends it: check free memory, or'
              ' build with fewer workers)')
  elif codes:
    how = f'exited with code {codes[0]}'
  return errors.WorkerError(
      f'a worker process of the build {how}; the dataset was not prepared:'
      ' run the build again (tars already downloaded are reused)')


def _as_completed(futures, on_wait: Callable[[], None] | None = None):
  """Futures as they finish; stops at the first failure (raising it)."""
  if futures and isinstance(futures[0], _Deferred):
    for fut in futures:  # In process: in order, the bar moving as it goes.
      done = _Done(fut.result())
      if on_wait is not None:
        on_wait()
      yield done
    return
  pending = set(futures)
  while pending:
    done, pending = concurrent.futures.wait(
        pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
    if on_wait is not None:
      on_wait()
    for fut in done:
      if fut.exception() is not None:
        for other in pending:
          other.cancel()
        raise fut.exception()
      yield fut


class _Done:
  def __init__(self, value):
    self._value = value

  def result(self):
    return self._value


def _sync(bar, counter) -> None:
  with counter.get_lock():
    value = counter.value
  if value > bar.n:
    bar.update(value - bar.n)


def _bar(enabled: bool, **kwargs):
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
  return tqdm_auto.tqdm(disable=not enabled, dynamic_ncols=True,
                        smoothing=0.05, **kwargs)
