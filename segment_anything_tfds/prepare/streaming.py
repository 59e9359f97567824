"""Remote tars read in byte ranges: one sequential read each, pairs on the fly.

Indexing a tar header by header and then seeking to each member costs one
request per member on a remote tar (≈44 k for an SA-1B tar). A remote tar
(an http(s) link in `disk_mode='stream'`, or a tar in a bucket) is instead
cut into byte ranges (`plan`, 1 GiB by default), the unit of parallel work,
and each range is read once, front to back:

* **Resync.** Range 0 starts at byte 0. A later range starts at the first
  valid header (a 512-byte block at a multiple of 512 with the `ustar`
  magic and a valid checksum) at or after `LOOKBACK` bytes before its start,
  and follows the chain of headers from there. The look-back lets a range
  that starts inside a member's extended headers (GNU long names, pax
  records) find the run's first header.
* **Ownership.** A range owns the members whose first header starts in
  `[start, end)`, and reads past `end` to finish its last one. Its `Report`
  says where its chain met `[start, end)` (`first`) and where it crossed
  `end` (`crossing`); `check_chain` verifies that consecutive ranges agree.
  A member whose data holds a header-like block at a range's start (a tar
  inside a tar, or a hostile one) makes them disagree: the tar is refused
  as `corrupt_tar`, in lenient builds too, never read wrongly.
* **Pairs.** A member waits in memory for its partner, up to `hold_bytes`
  per range; past that only its offset is kept. An image whose two members
  meet in the range becomes an example at once. Every other image member
  (partner in another range, over the cap, stored twice, unsafe, ...) is an
  `Orphan`, finished by `settle_image` after a group by image id, with the
  pairing rules of `tars.pair_members`. Bytes are read once, except those of
  members over the cap, which are read again by seek.
* **Requests.** One Range request covers a range (`http.RangeStream`), plus
  one for the bytes past its end; buckets are read in `READ_BYTES` reads.

A damaged tar (a bad header, cut short, no end-of-archive block) stops the
range where the damage is; its last member before the damage is dropped, as
in `tars.index_shard`. Strict builds fail naming the tar and offset. Ranges
after the damaged one are read as usual, and a lenient build keeps their
images too: at least the images an indexed build keeps, often more. The
first header of the range after the damage cannot be checked against a
chain that broke, so there (only there) a header-like block inside a
member's data would go unnoticed.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from typing import Any, BinaryIO, Iterable, Iterator, Sequence, Union

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.prepare import tars as tars_lib

BLOCK = tarfile.BLOCKSIZE
# Bytes per read of a bucket object (one request each).
READ_BYTES = 8 << 20
# How far before its start a range looks for a header run's first header.
LOOKBACK = 8 << 10


# ------------------------------------------------------------------ plans


@dataclasses.dataclass(frozen=True)
class ByteRange:
  """Bytes `[start, end)` of a remote tar of `size` bytes: a unit of work."""

  shard: shards_lib.Shard
  index: int
  count: int
  start: int
  end: int
  size: int


def plan(size: int, range_bytes: int) -> list[tuple[int, int]]:
  """`[start, end)` ranges of about `range_bytes` covering `[0, size)`.

  Boundaries are multiples of 512 (where tar headers can start).
  """
  count = max(1, -(-size // range_bytes))
  step = -(-size // count)
  step = max(BLOCK, -(-step // BLOCK) * BLOCK)
  count = max(1, -(-size // step))
  return [(i * step, min(size, (i + 1) * step)) for i in range(count)]


def tar_size(shard: shards_lib.Shard) -> int:
  """A remote tar's size: from the build's HEAD (links) or a stat (buckets)."""
  return shard.size()


def byte_ranges(shard: shards_lib.Shard, range_bytes: int
                ) -> list[ByteRange]:
  """The ranges of a remote tar (its size fixed in the shard for reads)."""
  size = tar_size(shard)
  shard = dataclasses.replace(shard, known_size=size)
  spans = plan(size, range_bytes)
  return [ByteRange(shard, i, len(spans), start, end, size)
          for i, (start, end) in enumerate(spans)]


def is_remote_tar(shard: shards_lib.Shard) -> bool:
  """Whether a shard is read in byte ranges: a link, or a tar in a bucket."""
  return shard.kind == shards_lib.URL or (
      shard.kind == shards_lib.TAR and not shards_lib.is_local(
          shard.location))


# ---------------------------------------------------------------- streams


class FileSource:
  """A file object (a bucket's or a local one) read from a position on."""

  def __init__(self, fileobj: BinaryIO, start: int):
    self._file = fileobj
    self._file.seek(start)

  def want(self, stop: int) -> None:
    del stop  # Each read is a request of its own size.

  def seek(self, pos: int) -> None:
    self._file.seek(pos)

  def read(self, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
      data = self._file.read(n - len(out))
      if not data:
        break
      out += data
    return bytes(out)

  def close(self) -> None:
    self._file.close()


class Stream:
  """Sequential reads over a source, in reads of up to `read_bytes`.

  Reads go as far as `want` said bytes are needed (at least the read's
  size), so a range costs `ceil(bytes / read_bytes)` source reads. At most
  one read's bytes are held, plus what the caller asked for.
  """

  def __init__(self, source: Any, start: int, *,
               read_bytes: int = READ_BYTES):
    self._source = source
    self.read_bytes = read_bytes
    self.pos = start
    self._fetched = start  # Bytes before this came from the source.
    self._stop = start
    self._buf = b''
    self._off = 0  # Bytes of _buf already consumed.

  def want(self, stop: int) -> None:
    self._stop = max(self._stop, stop)
    self._source.want(stop)

  def _fill(self, n: int) -> None:
    """Holds at least `n` unconsumed bytes (fewer only at the end)."""
    have = len(self._buf) - self._off
    if have >= n:
      return
    size = max(n - have, min(self.read_bytes, self._stop - self._fetched))
    data = self._source.read(size)
    self._fetched += len(data)
    self._buf = self._buf[self._off:] + data
    self._off = 0

  def peek(self, n: int) -> bytes:
    self._fill(n)
    return self._buf[self._off:self._off + n]

  def read(self, n: int) -> bytes:
    self._fill(n)
    data = self._buf[self._off:self._off + n]
    self._off += len(data)
    self.pos += len(data)
    return data

  def skip(self, n: int) -> int:
    """Consumes `n` bytes without holding them; returns how many there were."""
    done = 0
    while done < n:
      step = min(n - done, max(BLOCK, self.read_bytes))
      got = len(self.read(step))
      done += got
      if got < step:
        break
    return done

  def seek(self, pos: int) -> None:
    """Moves to `pos`: within the bytes held, or by a new source read."""
    if self.pos <= pos <= self._fetched:
      self.read(pos - self.pos)
      return
    self._source.seek(pos)
    self.pos = self._fetched = pos
    self._buf, self._off = b'', 0


def open_stream(rng: ByteRange, pos: int) -> tuple[Stream, Any]:
  """A stream of the range's tar from `pos`, and its source (to close)."""
  shard = rng.shard
  if shard.kind == shards_lib.URL:
    from segment_anything_tfds.sources import http  # pylint: disable=g-import-not-at-top
    source = http.RangeStream(shard.location, start=pos, size=rng.size,
                              options=shard.options, name=shard.name)
  else:
    source = FileSource(shard.open(), pos)
  return Stream(source, pos), source


# ---------------------------------------------------------------- headers


def is_header(block: bytes) -> bool:
  """A resync point: `ustar` magic and a valid checksum."""
  if len(block) != BLOCK or block[257:262] != b'ustar':
    return False
  try:
    tarfile.TarInfo.frombuf(block, tarfile.ENCODING, 'surrogateescape')
  except tarfile.HeaderError:
    return False
  return True


def find_header(stream: Stream, limit: int) -> int | None:
  """Consumes up to the first header at or after `stream.pos` (a multiple
  of 512) and before `limit`; returns its offset, or None (consumed to
  `limit` or the end)."""
  while stream.pos < limit:
    span = -(-(limit - stream.pos) // BLOCK) * BLOCK
    window = stream.peek(min(span, max(BLOCK, stream.read_bytes)))
    blocks = len(window) // BLOCK * BLOCK
    if not blocks:
      return None
    at = window.find(b'ustar', 257, blocks)
    while at >= 0:
      block_at = at - 257
      if block_at % BLOCK == 0:
        if stream.pos + block_at >= limit:
          break
        if is_header(window[block_at:block_at + BLOCK]):
          stream.read(block_at)
          return stream.pos
      at = window.find(b'ustar', at + 1, blocks)
    stream.read(min(blocks, limit - stream.pos))
  return None


@dataclasses.dataclass(frozen=True)
class Run:
  """One member's headers (extended ones, then its own) and where it goes.

  Attributes:
    start: offset of the run's first header (the member's place in a tar).
    info: the member, names and sizes from the extended headers applied.
    data: offset of its data.
    next: offset of the next header.
  """

  start: int
  info: tarfile.TarInfo
  data: int
  next: int


def _run_info(blocks: list[bytes], start: int, tar: str) -> tarfile.TarInfo:
  """The member of a run with extended headers, as tarfile reads it."""
  raw = b''.join(blocks) + bytes(2 * BLOCK)
  try:
    with tarfile.open(fileobj=io.BytesIO(raw), mode='r:') as tf:
      info = tf.next()
  except (tarfile.TarError, EOFError) as e:
    info, why = None, str(e)
  else:
    why = 'no member after them'
  if info is None:
    raise tars_lib.corrupt(tar, f'@{start}', 'corrupt or truncated tar:'
                           f' unreadable extended headers at byte {start}'
                           f' ({why})')
  return info


def read_run(stream: Stream, *, tar: str, first: bool = False) -> Run | None:
  """Reads the headers at `stream.pos`: a `Run`, or None at the end block.

  Raises:
    BadInputError: `corrupt_tar`, naming the byte offset.
  """
  start = stream.pos
  what = 'not a tar' if first else 'corrupt or truncated tar'
  blocks: list[bytes] = []

  def read(n: int) -> bytes:  # An extended header's data.
    stream.want(stream.pos + n + BLOCK)
    return stream.read(n)

  while True:
    at = stream.pos
    stream.want(at + BLOCK)
    block = stream.read(BLOCK)
    if len(block) < BLOCK:
      raise tars_lib.corrupt(tar, f'@{at}', f'{what}: no end-of-archive'
                             f' marker at byte {at} (the file ends at byte'
                             f' {at + len(block)})')
    if block.count(0) == BLOCK and not blocks:
      return None
    try:
      info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING,
                                     'surrogateescape')
    except tarfile.HeaderError as e:
      raise tars_lib.corrupt(tar, f'@{at}', f'{what}: unreadable header at'
                             f' byte {at} ({e})') from None
    blocks.append(block)
    data = tars_lib.check_header(info, read, tar=tar, at=at,
                                 before=len(blocks) // 2)
    if data is None:
      break
    blocks.append(data)
  if len(blocks) > 1:
    info = _run_info(blocks, start, tar)
  return Run(start, info, stream.pos, stream.pos + tars_lib.data_blocks(info))


# ------------------------------------------------------------ range reads


@dataclasses.dataclass(frozen=True)
class LocalPair:
  """An image whose two members a range read: ready to build."""

  pair: tars_lib.Pair
  jpg: bytes
  json: bytes


@dataclasses.dataclass(frozen=True)
class Orphan:
  """An image member a range could not pair itself.

  Attributes:
    shard: its tar (size known), to read `member` by seek if need be.
    range_index: the range that read it.
    member: the member.
    data: its bytes, or None when not held (over the cap, or a member that
      is never read: unsafe, special, too large).
  """

  shard: shards_lib.Shard
  range_index: int
  member: tars_lib.Member
  data: bytes | None


@dataclasses.dataclass(frozen=True)
class Paired:
  """An image a range (or the index path) paired: a copy of its image id.

  Attributes:
    tar_index: the tar's number, e.g. 12 for `sa_000012.tar`.
    tar: the tar's name.
    jpg: the jpg member's name.
    json: the json member's name.
    written: its example went to the writer (it was built without error).
  """

  tar_index: int
  tar: str
  jpg: str
  json: str
  written: bool


@dataclasses.dataclass(frozen=True)
class Report:
  """What a range's read found, for `check_chain` and the audit.

  Attributes:
    tar, index, start, end: the range.
    first: where the range's chain of headers first met `[start, end)`:
      the offset of a member's first header, or the tar's size for its
      end-of-archive block; None if no header starts in the range.
    first_at: the offset of that block (header or end-of-archive).
    crossing: where the chain crossed `end`, in the same terms; None if
      the range is damaged or no header starts in it.
    damage: the error that stopped the read, if any.
    images: images paired within the range (written or not).
    ignored: its members that are not image members.
    held_peak: most bytes held waiting for partners.
  """

  tar: str
  index: int
  start: int
  end: int
  first: int | None
  first_at: int | None
  crossing: int | None
  damage: errors.BadInputError | None
  images: int
  ignored: tuple[str, ...]
  held_peak: int


Event = Union[LocalPair, Orphan, Report]


class _Pairs:
  """The members of one range waiting for a partner, bytes held to a cap."""

  def __init__(self, rng: ByteRange, hold_bytes: int):
    self._rng = rng
    self._cap = hold_bytes
    # stem -> (ext, member, bytes or None) of a member awaiting its partner.
    self._waiting: dict[str, tuple[str, tars_lib.Member, bytes | None]] = {}
    self._spilled: set[str] = set()  # Stems whose members all go on.
    self.held = 0
    self.held_peak = 0
    self.images = 0

  def _orphan(self, member, data) -> Orphan:
    return Orphan(self._rng.shard, self._rng.index, member, data)

  def wants_data(self, stem: str, member: tars_lib.Member) -> bool:
    """Whether to read a valid member's bytes (else they are skipped)."""
    if stem in self._spilled or stem in self._waiting:
      return True
    return self.held + member.size <= self._cap

  def add_fault(self, stem: str, member: tars_lib.Member) -> Iterator[Orphan]:
    """A member that is never read: its image is settled after the group."""
    yield from self._spill(stem)
    yield self._orphan(member, None)

  def _spill(self, stem: str) -> Iterator[Orphan]:
    self._spilled.add(stem)
    waiting = self._waiting.pop(stem, None)
    if waiting is not None:
      _, member, data = waiting
      self._release(data)
      yield self._orphan(member, data)

  def _release(self, data: bytes | None) -> None:
    if data is not None:
      self.held -= len(data)

  def add(self, stem: str, ext: str, member: tars_lib.Member,
          data: bytes | None) -> Iterator[LocalPair | Orphan]:
    """A valid member: paired, held, or passed on as an orphan."""
    if stem in self._spilled:
      yield self._orphan(member, data)
      return
    waiting = self._waiting.get(stem)
    if waiting is None:
      self._waiting[stem] = (ext, member, data)
      if data is not None:
        self.held += len(data)
        self.held_peak = max(self.held_peak, self.held)
      return
    other_ext, other, other_data = waiting
    if other_ext == ext:  # Stored twice: settled after the group.
      yield from self._spill(stem)
      yield self._orphan(member, data)
      return
    del self._waiting[stem]
    self._release(other_data)
    if other_data is None or data is None:
      yield self._orphan(other, other_data)
      yield self._orphan(member, data)
      return
    jpg, js = (member, other) if ext == '.jpg' else (other, member)
    jpg_data, js_data = ((data, other_data) if ext == '.jpg'
                         else (other_data, data))
    self.images += 1
    yield LocalPair(tars_lib.Pair(stem, jpg, js), jpg_data, js_data)

  def finish(self) -> Iterator[Orphan]:
    """The members still waiting at the range's end."""
    for _, member, data in self._waiting.values():
      yield self._orphan(member, data)
    self._waiting.clear()
    self.held = 0


@dataclasses.dataclass(frozen=True)
class _Taken:
  """An owned member, read or skipped, until the next header is read.

  Attributes:
    member: the member, or None for a folder entry (structure).
    stem: its image stem, or None for a member that is not an image's.
    ext: '.jpg' or '.json'.
    fault: it is never read (unsafe, special, too large).
    data: its bytes, if read.
  """

  member: tars_lib.Member | None
  stem: str | None = None
  ext: str = ''
  fault: bool = False
  data: bytes | None = None


class _RangeRead:
  """One range's read: owned members in order, each acted on once the next
  header is known to be sound."""

  def __init__(self, rng: ByteRange, stream: Stream, hold_bytes: int):
    self.rng = rng
    self.tar = rng.shard.name
    self.stream = stream
    self.pairs = _Pairs(rng, hold_bytes)
    self.ignored: list[str] = []
    self.first: int | None = None
    self.first_at: int | None = None
    self.crossing: int | None = None
    self.damage: errors.BadInputError | None = None
    self.members = 0
    self._taken: _Taken | None = None  # The member read last.

  def report(self) -> Report:
    return Report(self.tar, self.rng.index, self.rng.start, self.rng.end,
                  self.first, self.first_at, self.crossing, self.damage,
                  self.pairs.images,
                  tuple(self.ignored), self.pairs.held_peak)

  def _met(self, at: int, value: int) -> None:
    """The chain reached a header at `at` (`value`: its offset, or the
    tar's size for the end-of-archive block)."""
    if self.first is None and self.rng.start <= at < self.rng.end:
      self.first, self.first_at = value, at

  def _take(self, run: Run) -> None:
    """Reads (or skips) an owned member's data; acted on later."""
    self.members += 1
    if self.members > tars_lib.MAX_MEMBERS:
      raise tars_lib.corrupt(self.tar, f'@{run.start}', f'more than'
                             f' {tars_lib.MAX_MEMBERS} members in a range:'
                             ' not an SA-1B tar')
    stream = self.stream
    stream.want(run.next + BLOCK)
    taken = _Taken(tars_lib.member_of(run.info, run.data))
    found = taken.member and tars_lib.canonical_stem(taken.member.name)
    if found:
      member, (stem, ext) = taken.member, found
      if tars_lib.member_fault(member, ext=ext, tar=self.tar) is not None:
        taken = _Taken(member, stem, ext, fault=True)
      elif self.pairs.wants_data(stem, member):
        data = stream.read(member.size)
        if len(data) < member.size:
          raise tars_lib.corrupt(
              self.tar, member.name, f'truncated tar: {member.name} needs'
              f' bytes up to {member.offset + member.size} but the file'
              f' has {member.offset + len(data)}')
        taken = _Taken(member, stem, ext, data=data)
      else:
        taken = _Taken(member, stem, ext)
    rest = run.next - stream.pos
    if stream.skip(rest) < rest:
      raise tars_lib.corrupt(
          self.tar, run.info.name, f'truncated tar: {run.info.name} needs'
          f' bytes up to {run.next} but the file has {stream.pos}')
    self._taken = taken

  def _commit(self) -> Iterator[Event]:
    """Acts on the member read last, now that the next header is sound."""
    taken, self._taken = self._taken, None
    if taken is None or taken.member is None:
      return
    if taken.stem is None:
      self.ignored.append(taken.member.name)
    elif taken.fault:
      yield from self.pairs.add_fault(taken.stem, taken.member)
    else:
      yield from self.pairs.add(taken.stem, taken.ext, taken.member,
                                taken.data)

  def chain(self, pos: int, *, from_lookback: bool) -> Iterator[Event]:
    """Follows the headers from `pos`, acting on the members owned.

    Returns (as a generator's value) whether to look again from the
    range's start: a chain from a look-back header that broke before
    reaching it (the header was in a member's data).
    """
    rng, stream = self.rng, self.stream
    stream.seek(pos)
    while True:
      at = stream.pos
      try:
        run = read_run(stream, tar=self.tar, first=(at == 0))
      except errors.BadInputError as e:
        if from_lookback and at < rng.start:
          return True
        self._taken = None  # Its data may be where the damage is.
        self.damage = e
        return False
      yield from self._commit()
      if run is None:  # The end-of-archive block.
        if from_lookback and at < rng.start:
          return True
        self._met(at, rng.size)
        self.crossing = rng.size
        return False
      if run.start >= rng.end:
        self.crossing = run.start
        return False
      if run.start < rng.start:  # The range before owns it.
        if run.next >= rng.end:
          return False  # No header starts in this range.
        rest = run.next - stream.pos
        if stream.skip(rest) < rest:
          return True
        continue
      self._met(run.start, run.start)
      try:
        self._take(run)
      except errors.BadInputError as e:
        self._taken = None
        self.damage = e
        return False


def read_start(rng: ByteRange) -> int:
  """Where a range's read begins: its start, less the look-back."""
  return 0 if rng.start == 0 else max(0, rng.start - LOOKBACK)


def read_range(rng: ByteRange, stream: Stream, *, hold_bytes: int
               ) -> Iterator[Event]:
  """The events of one range read from `read_start(rng)`: `LocalPair`s and
  `Orphan`s as the members stream by, then its `Report` (last)."""
  read = _RangeRead(rng, stream, hold_bytes)
  stream.want(rng.end)
  if rng.start == 0:
    yield from read.chain(0, from_lookback=False)
  else:
    pos = find_header(stream, rng.end)
    again = pos is not None and (
        yield from read.chain(pos, from_lookback=pos < rng.start))
    if again:
      stream.seek(rng.start)
      pos = find_header(stream, rng.end)
      if pos is not None:
        yield from read.chain(pos, from_lookback=False)
  yield from read.pairs.finish()
  yield read.report()


# ---------------------------------------------------------------- checks


def mismatch(r: Report, expected: int, size: int) -> errors.BadInputError:
  """The error of a range whose chain of headers disagrees with the one
  before it."""
  where = ('its end-of-archive block' if expected >= size
           else f'a header at byte {expected}')
  if r.first is None:
    found, at = 'no header', expected
  else:
    at = r.first_at
    found = ('an end-of-archive block' if r.first >= size
             else 'a header') + f' at byte {at}'
  return tars_lib.corrupt(
      r.tar, f'@{at}', f'its byte ranges disagree: the headers before byte'
      f' {r.start} lead to {where}, but the range from byte {r.start} finds'
      f' {found} (a member holds tar headers in its data: a tar in the tar,'
      ' or a hostile one). It cannot be read in byte ranges and is refused,'
      " lenient or not; download it (disk_mode='keep') to read it by its"
      ' index')


def check_chain(reports: Sequence[Report], size: int
                ) -> errors.BadInputError | None:
  """The error if consecutive ranges of a tar disagree, else None.

  Each range must begin where the chain of the one before crossed into it;
  a range that found no header must lie inside the member that crosses
  it. A damaged range breaks the chain: the range after it is not checked.
  """
  reports = sorted(reports, key=lambda r: r.index)
  expected = None
  for r in reports:
    if r.index > 0 and expected is not None:
      if r.first is not None and r.first != expected:
        return mismatch(r, expected, size)
      if r.first is None and r.damage is None and expected < r.end:
        return mismatch(r, expected, size)
    if r.damage is not None:
      expected = None
    elif r.crossing is not None:
      expected = r.crossing
  return None


# ------------------------------------------------------- settling an image


@dataclasses.dataclass
class Settlement:
  """What becomes of one image id's orphans and copies (`settle_image`).

  Attributes:
    build: (shard, pair, member bytes by name) of the one pair to build
      from orphans, or None.
    skips: one error per image copy not written (lenient: audited).
    counts: tar -> [images, pairing problems] settled here.
    duplicate_tars: (tar index, tar) of each tar holding a pair of the id,
      when more than one does (strict builds fail on it).
  """

  build: tuple[shards_lib.Shard, tars_lib.Pair, dict[str, bytes]] | None
  skips: list[errors.BadInputError]
  counts: dict[str, list[int]]
  duplicate_tars: list[tuple[int, str]]


def _by_tar(records: Iterable[Orphan | Paired]
            ) -> dict[tuple[int, str], tuple[list[Paired], list[Orphan]]]:
  out: dict[tuple[int, str], tuple[list[Paired], list[Orphan]]] = {}
  for r in records:
    if isinstance(r, Paired):
      out.setdefault((r.tar_index, r.tar), ([], []))[0].append(r)
    else:
      key = (r.shard.index, r.shard.name)
      out.setdefault(key, ([], []))[1].append(r)
  return dict(sorted(out.items()))


def _stray(tar: str, orphans: list[Orphan], kept: Paired
           ) -> errors.BadInputError:
  names = ', '.join(o.member.name for o in orphans)
  return errors.BadInputError(
      errors.DUPLICATE_MEMBER, tar, orphans[0].member.name,
      f'image {kept.jpg} + {kept.json} is stored again as {names}; the first'
      ' pair is kept, the other members are not read')


def _copies_error(image_id: int, tar: str, member: str, reason: str,
                  tars: Sequence[str]) -> errors.BadInputError:
  return errors.BadInputError(
      reason, tar, member,
      f'image id {image_id} is written from {len(tars)} copies (in'
      f' {", ".join(tars)}); one is kept, and in byte-range reads which one'
      ' is not determined')


def settle_image(image_id: int, records: Iterable[Orphan | Paired]
                 ) -> Settlement:
  """Pairs an image's orphans by `tars.pair_members`' rules; finds copies.

  Per tar: orphans beside a pair of the same tar are an extra copy
  (`duplicate_member`); otherwise they pair, or are one problem. Across
  tars: copies already written stay; an orphan pair is built only when no
  copy was written (the lowest tar's), others are `duplicate_id` skips;
  when more than one copy was written, the writer keeps one and the others
  are skipped.
  """
  settlement = Settlement(None, [], {}, [])
  written: list[Paired] = []
  candidates = []
  with_pairs = []
  for (tar_index, tar), (paired, orphans) in _by_tar(records).items():
    written += [p for p in paired if p.written]
    candidate = None
    if orphans:
      orphans.sort(key=lambda o: o.member.offset)
      candidate = _settle_orphans(tar, paired, orphans, settlement)
      if candidate is not None:
        candidates.append(candidate)
    if paired or candidate is not None:
      with_pairs.append((tar_index, tar))
  if len(with_pairs) > 1:
    settlement.duplicate_tars = with_pairs
  if written:
    skipped = candidates
    keep = written[0].tar
  else:
    settlement.build = candidates[0] if candidates else None
    skipped = candidates[1:]
    keep = candidates[0][0].name if candidates else None
  for shard, pair, _ in skipped:
    settlement.skips.append(errors.BadInputError(
        errors.DUPLICATE_ID, shard.name, pair.jpg.name,
        f'image id {image_id} is kept from {keep}'))
  names = [p.tar for p in written]
  for p in written[1:]:
    reason = (errors.DUPLICATE_MEMBER if p.tar == written[0].tar
              else errors.DUPLICATE_ID)
    settlement.skips.append(
        _copies_error(image_id, p.tar, p.jpg, reason, names))
  return settlement


def _settle_orphans(tar: str, paired: list[Paired], orphans: list[Orphan],
                    settlement: Settlement):
  """One tar's orphans of an image: a pair to build (shard, pair, bytes by
  member name), or None after recording their problem (one image)."""
  counts = settlement.counts.setdefault(tar, [0, 0])
  counts[0] += 1
  if paired:
    counts[1] += 1
    settlement.skips.append(_stray(tar, orphans, paired[0]))
    return None
  index = tars_lib.pair_members([o.member for o in orphans], tar=tar)
  if index.problems:
    counts[1] += 1
    settlement.skips.append(index.problems[0])
    return None
  data = {o.member.name: o.data for o in orphans if o.data is not None}
  return orphans[0].shard, index.pairs[0], data
