"""The local build: every core, memory flat in the number of images.

A local build (no Beam runner named) writes the split itself, in three
steps, with one worker process per core:

  index   each tar's headers (or folder's files) are read and paired, in
          parallel. What comes back per image is a fixed-size entry of
          48 bytes: its tar, its id, and where its two members are.
  plan    the main process drops ids seen in more than one tar (the lowest
          tar keeps the image), orders all entries by a hash of the image
          id (the deterministic global shuffle) and cuts that order into
          output shards, as many as TFDS would choose.
  write   workers take one output shard (or a part of one) each, read its
          images from the tars in order, check and serialize them, and
          write the shard file; lenient skips come back as audit records.

Only the entries (48 bytes per image, ≈0.5 GB for SA-1B's 11 M images) are
held in memory, never examples or stand-ins, and each image is read and
parsed once. Reads in the write step are in shuffled order, one seek per
member: right for local disks; see the README for network file systems.

Records are those of the Beam build (`pipeline.py`), which Dataflow runs;
only the order differs (the hash here is `image_order`).

Workers end with the build's process, even when it is killed. A worker that
dies (killed, out of memory) fails the build with `errors.WorkerError`.
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
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from etils import epath
import numpy as np

from segment_anything_tfds.prepare import audit
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds import logs
from segment_anything_tfds.prepare import serializer
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds import tfds_seam

# One image: its tar (index into the build's shard list), id, members.
ENTRY = np.dtype([
    ('shard', '<i4'), ('jpg_dir', '<i2'), ('json_dir', '<i2'),
    ('image_id', '<i8'), ('jpg_offset', '<i8'), ('jpg_size', '<i8'),
    ('json_offset', '<i8'), ('json_size', '<i8'),
])
# Builds of less input than this run in one process: starting workers would
# cost more than it saves.
MIN_BYTES = 16 << 20
_PROGRESS_EVERY = 16


def default_workers() -> int:
  """One worker per core this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def image_order(image_ids: np.ndarray) -> np.ndarray:
  """A 64-bit hash of each image id (splitmix64): the shuffled order."""
  z = image_ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


# ------------------------------------------------------------------ index


@dataclasses.dataclass
class Indexed:
  """What indexing one shard returns to the main process."""

  shard: int
  entries: np.ndarray  # ENTRY, one per pair, by image id.
  dirs: list[str]  # Member folders; an entry's names are dir + sa_<id>.ext.
  index: tars_lib.Index  # Problems, ignored members, damage; pairs emptied.
  images: int  # Images indexed (pairs + problems).


def _split_name(name: str) -> str:
  """The folder part of a member name (`./`, `a/b/`, '')."""
  cut = name.rfind('/') + 1
  return name[:cut]


def index_one(shard_number: int, shard: shards_lib.Shard) -> Indexed:
  """Indexes a shard into compact entries (runs in a worker)."""
  index = tars_lib.index_shard(shard)
  dirs: dict[str, int] = {}
  entries = np.zeros(len(index.pairs), ENTRY)
  for i, pair in enumerate(index.pairs):
    jpg_dir = dirs.setdefault(_split_name(pair.jpg.name), len(dirs))
    json_dir = dirs.setdefault(_split_name(pair.json.name), len(dirs))
    entries[i] = (shard_number, jpg_dir, json_dir, pair.image_id,
                  pair.jpg.offset, pair.jpg.size, pair.json.offset,
                  pair.json.size)
  images = index.images
  index.pairs = []  # The entries carry them.
  return Indexed(shard_number, entries, list(dirs), index, images)


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


@dataclasses.dataclass
class PartResult:
  shard: int
  part: int
  path: str
  records: int
  bytes: int
  per_tar: dict[str, list[int]]  # tar -> [written, masks, bytes, skipped]
  skips: list[dict[str, Any]]


class _Worker:
  """A worker's state: the shards, open tars, the serializer."""

  def __init__(self, shards, file_format, lenient, tick):
    self.shards = shards
    self.file_format = file_format
    self.lenient = lenient
    self.tick = tick  # Reports images written, as they are.
    self.serialize = serializer.serialize_pieces  # (head, JPEG, tail)
    self.readers: collections.OrderedDict[int, tars_lib.ShardReader] = (
        collections.OrderedDict())

  def reader(self, shard_number: int) -> tars_lib.ShardReader:
    reader = self.readers.pop(shard_number, None)
    if reader is None:
      reader = tars_lib.ShardReader(self.shards[shard_number]).__enter__()
      if len(self.readers) >= 32:  # Each holds an open file.
        self.readers.popitem(last=False)[1].close()
    self.readers[shard_number] = reader
    return reader

  def close(self):
    for reader in self.readers.values():
      reader.close()
    self.readers.clear()

  def write(self, part: Part) -> PartResult:
    per_tar = collections.defaultdict(lambda: [0, 0, 0, 0])
    skips: list[dict[str, Any]] = []

    def records():
      done = 0
      for entry in part.entries:
        shard = self.shards[entry['shard']]
        tally = per_tar[shard.name]
        try:
          _, example = tars_lib.read_example(
              self.reader(int(entry['shard'])),
              _pair(entry, part.dirs[int(entry['shard'])]))
        except errors.BadInputError as e:
          skips.append(audit.problem(e, lenient=self.lenient, kind='skip'))
          tally[3] += 1
          continue
        record = self.serialize(example)
        tally[0] += 1
        tally[1] += len(example['annotations']['id'])
        tally[2] += sum(map(len, record))
        done += 1
        if done % _PROGRESS_EVERY == 0:
          self.tick(_PROGRESS_EVERY)
        yield record
      self.tick(done % _PROGRESS_EVERY)

    tfds_seam.write_records(part.path, self.file_format, records())
    return PartResult(part.shard, part.part, part.path,
                      sum(t[0] for t in per_tar.values()),
                      sum(t[2] for t in per_tar.values()), dict(per_tar), skips)


_WORKER: _Worker | None = None
_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.


def _init_worker(shards, file_format, lenient, counter, verbose, parent):
  """Sets up a worker process; `counter` is a shared count of images."""
  global _WORKER
  _die_with_parent(parent)
  if verbose is not None:  # The parent's CLI output settings.
    logs.configure(verbose)

  def tick(n):
    with counter.get_lock():
      counter.value += n

  _WORKER = _Worker(shards, file_format, lenient, tick)


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


def _index_shard(args) -> Indexed:
  return index_one(*args)


class _InProcess:
  """The pool's stand-in for small builds: tasks run here, one by one."""

  def __init__(self, shards, file_format, lenient, tick):
    global _WORKER
    _WORKER = _Worker(shards, file_format, lenient, tick)

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


@dataclasses.dataclass
class Result:
  """What a local build wrote, and what it counted on the way."""

  shard_lengths: list[int]
  num_bytes: int
  images_written: int
  masks: int
  per_tar: dict[str, dict[str, int]]
  workers: int
  seconds: float


@dataclasses.dataclass
class Output:
  """Where and how to write the split."""

  data_dir: str
  dataset_name: str
  split: str
  file_format: Any  # tfds.core.FileFormat
  num_shards: int | None = None
  min_shard_size: int = 64 << 20
  max_shard_size: int = 1 << 30


def _problem(error: errors.BadInputError, *, lenient: bool, kind: str,
             records: list[dict[str, Any]]) -> None:
  records.append(audit.problem(error, lenient=lenient, kind=kind))


def _drop_duplicates(entries: np.ndarray, shards: Sequence[shards_lib.Shard],
                     dirs: dict[int, list[str]], *, lenient: bool,
                     records: list[dict[str, Any]]) -> np.ndarray:
  """Keeps each image id once, from the lowest tar; the others are skipped.

  Strict: the first duplicate raises, naming both tars.
  """
  by_id = np.lexsort((entries['shard'], entries['image_id']))
  ids = entries['image_id'][by_id]
  starts = np.r_[True, ids[1:] != ids[:-1]]
  if starts.all():
    return entries
  group_first = np.maximum.accumulate(np.where(starts, np.arange(len(ids)), 0))
  again = np.flatnonzero(~starts)
  for k in again:
    entry = entries[by_id[k]]
    keep = shards[entries[by_id[group_first[k]]]['shard']].name
    error = errors.BadInputError(
        errors.DUPLICATE_ID, shards[entry['shard']].name,
        _pair(entry, dirs[int(entry['shard'])]).jpg.name,
        f'image id {int(entry["image_id"])} is also in {keep}'
        + ('; it is kept from there' if lenient else ''))
    _problem(error, lenient=lenient, kind='skip', records=records)
  keep_mask = np.ones(len(entries), bool)
  keep_mask[by_id[again]] = False
  return entries[keep_mask]


def _parts_per_shard(num_shards: int, workers: int, file_format) -> int:
  """Parts per output shard, so that small builds keep every worker busy.

  Parts are TFRecord files concatenated afterwards; other formats cannot
  be concatenated, so they are written one shard per worker.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if file_format != tfds.core.FileFormat.TFRECORD or num_shards >= workers:
    return 1
  return -(-workers // num_shards)


def _join_parts(paths: Sequence[str], dest: epath.Path, tmp: str) -> None:
  """Joins a shard's parts into `dest`; a bucket's shard is staged in `tmp`.

  A shard for a bucket (`gs://...`) is joined on local disk, then copied
  into the bucket and deleted: local disk holds the shards in flight only.
  """
  remote = not shards_lib.is_local(dest)
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
    epath.Path(joined).copy(dest, overwrite=True)
    os.remove(joined)


def build(
    shards: Sequence[shards_lib.Shard], output: Output, *, lenient: bool,
    workers: int = 0, show_progress: bool = True,
    max_examples: int | None = None,
    audit_records: list[dict[str, Any]] | None = None,
) -> Result:
  """Writes the split of `shards` into `output.data_dir`.

  Args:
    shards: the shards, each readable in place.
    output: where and how to write.
    lenient: skip and audit bad images instead of failing.
    workers: worker processes; 0 means one per core. Small builds run in
      this process.
    show_progress: show progress bars (tars indexed; images written, with
      the rate and an ETA).
    max_examples: write at most this many images (the first, by tar).
    audit_records: where to append the audit records (shard, skip, tar).

  Raises:
    errors.BadInputError: in strict mode, for the first bad input.
  """
  started = time.monotonic()
  records = audit_records if audit_records is not None else []
  workers = workers or default_workers()
  ctx = multiprocessing.get_context('spawn')
  counter = ctx.Value('q', 0)
  pool = None
  # Parts are written to local disk: next to the output, or for a bucket
  # (which cannot be appended to or renamed cheaply) in a local temp dir.
  if shards_lib.is_local(output.data_dir):
    tmp = os.path.join(output.data_dir, '.local_build')
    os.makedirs(tmp, exist_ok=True)
  else:
    tmp = tempfile.mkdtemp(prefix='segment_anything_tfds-')
  try:
    # ---- index
    with _bar(show_progress, total=len(shards), desc='Indexing tars',
              unit='tar') as bar:
      use_pool = workers > 1 and not _small(shards)
      pool = _pool(ctx, workers if use_pool else 1, shards, output, lenient,
                   counter)
      futures = [pool.submit(_index_shard, (i, s))
                 for i, s in enumerate(shards)]
      indexed: list[Indexed] = []
      for fut in _as_completed(futures):
        indexed.append(fut.result())
        bar.update(1)
    indexed.sort(key=lambda x: x.shard)
    dirs = {x.shard: x.dirs for x in indexed}
    for x in indexed:
      _audit_index(x, lenient=lenient, records=records)
    entries = np.concatenate([x.entries for x in indexed]) if indexed else (
        np.zeros(0, ENTRY))
    for x in indexed:
      x.entries = None  # Held once, in `entries`.
    entries = _drop_duplicates(entries, shards, dirs, lenient=lenient,
                               records=records)
    if max_examples is not None:
      entries = entries[:max_examples]
    if not len(entries):
      raise errors.SourceError(_nothing_to_write(records, len(shards)))
    # ---- plan
    order = np.argsort(image_order(entries['image_id']), kind='stable')
    entries = entries[order]
    del order
    total = int(entries['jpg_size'].sum() + entries['json_size'].sum())
    num_shards = output.num_shards or tfds_seam.number_of_shards(
        total_size=total, num_examples=len(entries),
        min_shard_size=output.min_shard_size,
        max_shard_size=output.max_shard_size)
    num_shards = max(1, min(num_shards, len(entries)))
    bounds = [len(entries) * i // num_shards for i in range(num_shards + 1)]
    if use_pool and total < MIN_BYTES:
      pool.shutdown()
      pool = _pool(ctx, 1, shards, output, lenient, counter)
      use_pool = False
    parts_each = _parts_per_shard(num_shards, workers if use_pool else 1,
                                  output.file_format)
    template = tfds_seam.filename_template(
        output.data_dir, dataset_name=output.dataset_name, split=output.split,
        file_format=output.file_format)
    # ---- write
    lengths = [0] * num_shards
    num_bytes = 0
    per_tar: dict[str, list[int]] = collections.defaultdict(
        lambda: [0, 0, 0, 0])
    done_parts = collections.defaultdict(list)
    with _bar(show_progress, total=len(entries), desc='Writing images',
              unit='img') as bar:
      futures = []
      for s in range(num_shards):
        chunk = entries[bounds[s]:bounds[s + 1]]
        cuts = [len(chunk) * p // parts_each for p in range(parts_each + 1)]
        for p in range(parts_each):
          part = chunk[cuts[p]:cuts[p + 1]]
          used = {int(k) for k in np.unique(part['shard'])}
          futures.append(pool.submit(_write_part, Part(
              s, p, os.path.join(tmp, f'shard-{s:05d}.part-{p:03d}'), part,
              {k: dirs[k] for k in used})))
      for fut in _as_completed(futures, on_wait=lambda: _sync(bar, counter)):
        result = fut.result()
        lengths[result.shard] += result.records
        num_bytes += result.bytes
        for tar, tally in result.per_tar.items():
          per_tar[tar] = [a + b for a, b in zip(per_tar[tar], tally)]
        records.extend(result.skips)
        done_parts[result.shard].append(result)
        if len(done_parts[result.shard]) == parts_each:
          ordered = sorted(done_parts.pop(result.shard), key=lambda r: r.part)
          _join_parts([r.path for r in ordered],
                      tfds_seam.shard_path(template, result.shard, num_shards),
                      tmp)
        _sync(bar, counter)
    if not sum(lengths):
      raise errors.SourceError(_nothing_to_write(records, len(shards)))
    if 0 in lengths:  # Every image of a shard was skipped: renumber.
      lengths = _drop_empty_shards(template, lengths)
  except concurrent.futures.process.BrokenProcessPool as e:
    raise _worker_died(pool) from e
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
    shutil.rmtree(tmp, ignore_errors=True)
  return Result(
      shard_lengths=lengths, num_bytes=num_bytes,
      images_written=sum(lengths), masks=sum(t[1] for t in per_tar.values()),
      per_tar={k: dict(zip(('written', 'masks', 'bytes', 'skipped'), v))
               for k, v in sorted(per_tar.items())},
      workers=workers if use_pool else 1,
      seconds=time.monotonic() - started)


def _audit_index(x: Indexed, *, lenient: bool, records: list) -> None:
  index = x.index
  if index.damage is not None:
    _problem(index.damage, lenient=lenient, kind='tar', records=records)
  elif not x.images:
    _problem(tars_lib.no_images_error(index), lenient=lenient, kind='tar',
             records=records)
  for problem in index.problems:
    _problem(problem, lenient=lenient, kind='skip', records=records)
  records.append(audit.shard_record(index.tar, images=x.images,
                                    problems=len(index.problems),
                                    ignored=index.ignored))


def _nothing_to_write(records: list[dict[str, Any]], num_shards: int) -> str:
  summary = audit.summarize(records)
  return (f'nothing to write: {num_shards} tars offered'
          f' {summary["images_indexed"]} images and all were skipped'
          f' ({summary["skipped_by_reason"]}; whole tars skipped:'
          f' {[t["tar"] for t in summary["skipped_tars"]]})')


def _drop_empty_shards(template, lengths: list[int]) -> list[int]:
  """Renames shard files so that only non-empty ones are numbered."""
  kept = [i for i, n in enumerate(lengths) if n]
  for new, old in enumerate(kept):
    src = tfds_seam.shard_path(template, old, len(lengths))
    src.replace(tfds_seam.shard_path(template, new, len(kept)))
  for i, n in enumerate(lengths):
    if not n:
      tfds_seam.shard_path(template, i, len(lengths)).unlink()
  return [lengths[i] for i in kept]


def _small(shards: Sequence[shards_lib.Shard]) -> bool:
  """Whether local shards hold less than `MIN_BYTES` in all."""
  total = 0
  for shard in shards:
    if not shard.local:
      return False
    if shard.kind == shards_lib.TAR:
      total += shards_lib.size_of(shard.location)
    else:
      for root, _, files in os.walk(shard.location):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if os.path.isfile(os.path.join(root, f)))
    if total >= MIN_BYTES:
      return False
  return True


def _pool(ctx, workers: int, shards, output: Output, lenient: bool, counter):
  if workers <= 1:
    def tick(n):
      counter.value += n
    return _InProcess(list(shards), output.file_format, lenient, tick)
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_init_worker,
      initargs=(list(shards), output.file_format, lenient, counter,
                logs.configured(), os.getpid()))


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
