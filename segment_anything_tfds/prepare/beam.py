"""Beam transforms: shards -> (image id, example), streaming from the tars.

Local tars and folders (and folders in buckets) are indexed, then read by
seeking to each member:

  'CreateShards'      one element per tar or folder
  'ReshuffleShards'   spread shards over workers
  'IndexShards'       read headers only; pair members; cut into chunks
  'KeyImageIds'/'GroupImageIds'/'FindDuplicateIds'
                      image ids seen in more than one shard (small data)
  'ReshuffleChunks'   fan out: the unit of work is a chunk, not a tar
  'ReadExamples'      seek to each pair, read, parse, build the example

Remote tars (links in `disk_mode='stream'`, tars in buckets), where every
seek is a request, are read in byte ranges instead (`streaming.py`):

  'CreateRemoteTars'/'ReshuffleRemoteTars'
  'PlanRanges'        each tar cut into ranges of `range_bytes` (1 GiB)
  'ReshuffleRanges'   fan out: the unit of work is a range
  'ReadRanges'        one sequential read per range; images whose members
                      meet in the range are built at once; the others'
                      members (orphans) and a record per image go on
  'GroupOrphans'/'PairOrphans'
                      by image id: orphans paired (a member over the hold
                      cap is read again by seek), copies of an id found
  'GroupRanges'/'CheckRanges'
                      per tar: consecutive ranges must agree on where
                      members start (else `corrupt_tar`, lenient or not);
                      the tar's audit record

Then, for all shards:

  'WriteAudit'        every skipped image (lenient mode) and per-shard counts

Only shard names, member offsets, image ids and orphans are grouped or
reshuffled; image bytes flow straight from the read to TFDS's writer (whose
shuffle groups them: on Dataflow a disk-backed service). Local builds do not
use this pipeline but `local_build.py`, which shuffles only 48-byte entries.

Copies of an image id in byte-range reads: an image is built as soon as its
members meet, before the other tars are read, so two tars (or two ranges of
one tar) may both write it. The builder then sets TFDS's
`DownloadConfig.ignore_duplicates`: the writer keeps one copy, and each
other copy is audited as a `duplicate_id` (or `duplicate_member`) skip, so
the audit adds up. Which copy is kept is not determined. Strict builds fail
on any copy, naming the tars, as with indexed tars.
"""

import dataclasses
import json
import logging
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
from etils import epath

from segment_anything_tfds.prepare import audit
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.prepare import streaming
from segment_anything_tfds.prepare import tars as tars_lib

_LOG = logging.getLogger(__name__)

_AUDIT = 'audit'
_IDS = 'ids'
_REPORTS = 'reports'
_COUNTS = 'counts'
NAMESPACE = 'segment_anything'


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A slice of one shard's pairs: the unit of parallel work."""

  shard: shards_lib.Shard
  pairs: tuple[tars_lib.Pair, ...]


def _counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


def _count_written(example: dict[str, Any]) -> None:
  """Counters of what goes to the writer: the build's summary, and progress
  on Dataflow's job page."""
  _counter('images_written').inc()
  _counter('masks_written').inc(len(example['annotations']['id']))


def _skip_record(error: errors.BadInputError, *, lenient: bool,
                 kind: str = 'skip') -> dict:
  """Raises in strict mode; returns the audit record in lenient mode."""
  record = audit.problem(error, lenient=lenient, kind=kind)
  _counter(f'skipped_{error.reason}').inc()
  return record


def _problem(error: errors.BadInputError, *, lenient: bool,
             kind: str = 'skip'):
  """Raises in strict mode; returns an audit output in lenient mode."""
  return beam.pvalue.TaggedOutput(
      _AUDIT, _skip_record(error, lenient=lenient, kind=kind))


def index_shard(
    shard: shards_lib.Shard, *, chunk_size: int, lenient: bool
) -> Iterator[Any]:
  """Indexes one shard; yields `Chunk`s and audit records.

  Strict: the first problem raises. Lenient: a damaged tar is audited as a
  skipped tar and the images indexed before the damage are kept; each image
  that cannot be built is audited as a skipped image.
  """
  index = tars_lib.index_shard(shard)
  if index.damage is not None:
    yield _problem(index.damage, lenient=lenient, kind='tar')
  elif not index.images:
    yield _problem(tars_lib.no_images_error(index), lenient=lenient,
                   kind='tar')
  for problem in index.problems:
    yield _problem(problem, lenient=lenient)
  for name in index.ignored:
    _LOG.info('%s:%s: not an SA-1B image member; ignored', shard.name,
              errors.printable(name))
  _counter('images_indexed').inc(index.images)
  yield beam.pvalue.TaggedOutput(_AUDIT, audit.shard_record(
      index.tar, images=index.images, problems=len(index.problems),
      ignored=index.ignored))
  pairs = index.pairs
  for start in range(0, len(pairs), chunk_size):
    yield Chunk(shard, tuple(pairs[start:start + chunk_size]))


def image_ids(chunk: Chunk) -> Iterator[tuple[int, tuple[int, str]]]:
  for pair in chunk.pairs:
    yield pair.image_id, (chunk.shard.index, chunk.shard.name)


def find_duplicates(
    image_id_shards: tuple[int, Iterable[tuple[int, str]]], *, lenient: bool
) -> Iterator[tuple[int, str]]:
  """Yields (image id, the one tar to keep it from) for ids in many tars."""
  image_id, shards = image_id_shards
  shards = sorted(set(shards))
  if len(shards) < 2:
    return
  names = [name for _, name in shards]
  if not lenient:
    raise errors.BadInputError(
        errors.DUPLICATE_ID, names[1], f'sa_{image_id}.jpg',
        f'image id {image_id} is also in'
        f' {", ".join(n for n in names if n != names[1])}')
  yield image_id, names[0]


def read_chunk(
    chunk: Chunk, duplicates: dict[int, str], *, lenient: bool,
    emit_ids: bool = False,
) -> Iterator[Any]:
  """Reads a chunk's pairs; yields (image id, example) and audit records.

  With `emit_ids` (a build that also reads remote tars in byte ranges),
  each image written is also told to 'PairOrphans' (a `streaming.Paired`
  on the 'ids' output), which finds its copies in those tars.
  """
  shard = chunk.shard
  with tars_lib.ShardReader(shard) as reader:
    for pair in chunk.pairs:
      keep = duplicates.get(pair.image_id)
      if keep is not None and keep != shard.name:
        yield _problem(errors.BadInputError(
            errors.DUPLICATE_ID, shard.name, pair.jpg.name,
            f'image id {pair.image_id} is kept from {keep}'), lenient=lenient)
        continue
      try:
        key, example = tars_lib.read_example(reader, pair)
      except errors.BadInputError as e:
        yield _problem(e, lenient=lenient)
        continue
      _count_written(example)
      yield key, example
      if emit_ids:
        yield beam.pvalue.TaggedOutput(_IDS, (pair.image_id, streaming.Paired(
            shard.index, shard.name, pair.jpg.name, pair.json.name, True)))


# ------------------------------------------------------------ byte ranges


def plan_ranges(shard: shards_lib.Shard, *, range_bytes: int
                ) -> Iterator[streaming.ByteRange]:
  """The byte ranges of a remote tar (its size from HEAD or a stat)."""
  yield from streaming.byte_ranges(shard, range_bytes)


def _image_id(member: tars_lib.Member) -> int:
  stem, _ = tars_lib.canonical_stem(member.name)
  return records_lib.image_id_from_stem(stem)


def _build_local(shard: shards_lib.Shard, local: streaming.LocalPair, *,
                 lenient: bool) -> Iterator[Any]:
  """A pair met within a range: its example (or skip), and its id record."""
  pair = local.pair
  written = False
  try:
    key, example = tars_lib.build_example(shard.name, pair, local.jpg,
                                          local.json)
  except errors.BadInputError as e:
    yield _problem(e, lenient=lenient)
  else:
    _count_written(example)
    written = True
    yield key, example
  yield beam.pvalue.TaggedOutput(_IDS, (pair.image_id, streaming.Paired(
      shard.index, shard.name, pair.jpg.name, pair.json.name, written)))


def read_range(rng: streaming.ByteRange, *, hold_bytes: int,
               lenient: bool) -> Iterator[Any]:
  """Reads one byte range front to back.

  Yields (image id, example) for the images whose members meet in the
  range; on the 'ids' output, (image id, `streaming.Paired`) for each of
  them and (image id, `streaming.Orphan`) for every other image member; on
  'reports', (tar, `streaming.Report`). Strict: damage raises here.
  """
  pos = streaming.read_start(rng)
  stream, source = streaming.open_stream(rng, pos)
  try:
    for event in streaming.read_range(rng, stream, hold_bytes=hold_bytes):
      if isinstance(event, streaming.LocalPair):
        yield from _build_local(rng.shard, event, lenient=lenient)
      elif isinstance(event, streaming.Orphan):
        _counter('orphan_members').inc()
        yield beam.pvalue.TaggedOutput(_IDS, (_image_id(event.member), event))
      else:
        if event.damage is not None and not lenient:
          raise event.damage
        beam.metrics.Metrics.distribution(
            NAMESPACE, 'range_held_bytes').update(event.held_peak)
        yield beam.pvalue.TaggedOutput(_REPORTS, (event.tar, event))
  finally:
    source.close()


def _read_by_seek(shard: shards_lib.Shard, members: Sequence[tars_lib.Member]
                  ) -> dict[str, bytes]:
  """Members not held (over the cap), read by seek, one request each."""
  out = {}
  with shard.open(block_size=1) as f:
    for m in members:
      _counter('orphan_reads').inc()
      out[m.name] = tars_lib.read_member(f, m, tar=shard.name)
  return out


def pair_orphans(item: tuple[int, Iterable[Any]], *, lenient: bool
                 ) -> Iterator[Any]:
  """One image id's orphans and copies, settled (`streaming.settle_image`).

  Yields the example built from orphans, if any; audit records of the
  copies and problems skipped; on 'counts', (tar, (images, problems))
  settled here for the tar's audit record.
  """
  image_id, records = item
  settled = streaming.settle_image(image_id, records)
  if settled.duplicate_tars and not lenient:
    list(find_duplicates((image_id, settled.duplicate_tars), lenient=False))
  for tar, counts in settled.counts.items():
    yield beam.pvalue.TaggedOutput(_COUNTS, (tar, tuple(counts)))
  for error in settled.skips:
    yield _problem(error, lenient=lenient)
  if settled.build is None:
    return
  shard, pair, data = settled.build
  try:
    missing = [m for m in (pair.jpg, pair.json) if m.name not in data]
    if missing:
      data = {**data, **_read_by_seek(shard, missing)}
    key, example = tars_lib.build_example(shard.name, pair, data[pair.jpg.name],
                                          data[pair.json.name])
  except errors.BadInputError as e:
    yield _problem(e, lenient=lenient)
    return
  _count_written(example)
  yield key, example


def check_ranges(item: tuple[str, dict[str, Iterable[Any]]], *,
                 lenient: bool) -> Iterator[dict]:
  """One remote tar's ranges, checked; yields its audit records.

  Ranges that disagree on where members start fail the build, lenient or
  not (`streaming.check_chain`). A damaged tar, or one without images, is
  a skipped tar (strict: an error), as with indexed tars.
  """
  tar, grouped = item
  reports = sorted(grouped[_REPORTS], key=lambda r: r.index)
  counts = list(grouped[_COUNTS])
  error = streaming.check_chain(reports, reports[-1].end)
  if error is not None:
    raise error
  images = sum(r.images for r in reports) + sum(c[0] for c in counts)
  problems = sum(c[1] for c in counts)
  ignored = [name for r in reports for name in r.ignored]
  damage = next((r.damage for r in reports if r.damage is not None), None)
  if damage is not None:
    yield _skip_record(damage, lenient=lenient, kind='tar')
  elif not images:
    yield _skip_record(tars_lib.no_images_error(
        tars_lib.Index(tar, [], [], ignored)), lenient=lenient, kind='tar')
  for name in ignored:
    _LOG.info('%s:%s: not an SA-1B image member; ignored', tar,
              errors.printable(name))
  _counter('images_indexed').inc(images)
  yield audit.shard_record(tar, images=images, problems=problems,
                           ignored=ignored)


def _index_and_seek(pipeline, shards, *, chunk_size, lenient, emit_ids):
  """Local shards: index, then seek to each pair. (examples, audit, ids)"""
  indexed = (
      pipeline
      | 'CreateShards' >> beam.Create(list(shards))
      | 'ReshuffleShards' >> beam.Reshuffle()
      | 'IndexShards' >> beam.FlatMap(
          index_shard, chunk_size=chunk_size, lenient=lenient
      ).with_outputs(_AUDIT, main='chunks')
  )
  chunks = indexed.chunks
  duplicates = (
      chunks
      | 'KeyImageIds' >> beam.FlatMap(image_ids)
      | 'GroupImageIds' >> beam.GroupByKey()
      | 'FindDuplicateIds' >> beam.FlatMap(find_duplicates, lenient=lenient)
  )
  read = (
      chunks
      | 'ReshuffleChunks' >> beam.Reshuffle()
      | 'ReadExamples' >> beam.FlatMap(
          read_chunk, beam.pvalue.AsDict(duplicates), lenient=lenient,
          emit_ids=emit_ids,
      ).with_outputs(_AUDIT, _IDS, main='examples')
  )
  return read.examples, [indexed[_AUDIT], read[_AUDIT]], [read[_IDS]]


def _read_in_ranges(pipeline, shards, index_ids, *, range_bytes, hold_bytes,
                    lenient):
  """Remote tars: byte ranges read once each. (examples, audit)"""
  read = (
      pipeline
      | 'CreateRemoteTars' >> beam.Create(list(shards))
      | 'ReshuffleRemoteTars' >> beam.Reshuffle()
      | 'PlanRanges' >> beam.FlatMap(plan_ranges, range_bytes=range_bytes)
      | 'ReshuffleRanges' >> beam.Reshuffle()
      | 'ReadRanges' >> beam.FlatMap(
          read_range, hold_bytes=hold_bytes, lenient=lenient
      ).with_outputs(_AUDIT, _IDS, _REPORTS, main='examples')
  )
  settled = (
      [read[_IDS], *index_ids]
      | 'MergeImageIds' >> beam.Flatten()
      | 'GroupOrphans' >> beam.GroupByKey()
      | 'PairOrphans' >> beam.FlatMap(pair_orphans, lenient=lenient
                                      ).with_outputs(_AUDIT, _COUNTS,
                                                     main='examples')
  )
  checked = (
      {_REPORTS: read[_REPORTS], _COUNTS: settled[_COUNTS]}
      | 'GroupRanges' >> beam.CoGroupByKey()
      | 'CheckRanges' >> beam.FlatMap(check_ranges, lenient=lenient)
  )
  return ([read.examples, settled.examples],
          [read[_AUDIT], settled[_AUDIT], checked])


@beam.ptransform_fn
def BuildExamples(  # pylint: disable=invalid-name
    pipeline: beam.pvalue.PBegin,
    shards: Sequence[shards_lib.Shard],
    *,
    audit_dir: epath.PathLike,
    chunk_size: int = 64,
    lenient: bool = False,
    range_bytes: Optional[int] = config_lib.RANGE_BYTES,
    hold_bytes: int = config_lib.HOLD_BYTES,
) -> beam.PCollection:
  """All examples of `shards`, as (image id, example) pairs.

  Args:
    pipeline: the pipeline root.
    shards: the shards to read, each readable in place.
    audit_dir: where JSON-lines audit records are written.
    chunk_size: images per unit of work (indexed shards).
    lenient: skip (and audit) bad images instead of failing.
    range_bytes: bytes per unit of work of a remote tar (a link streamed,
      a tar in a bucket), read in one sequential pass; None indexes remote
      tars and seeks to each member, as local ones (a request per member).
    hold_bytes: bytes a range holds waiting for partners; members past it
      are read again by seek.
  """
  remote = [s for s in shards if range_bytes and streaming.is_remote_tar(s)]
  local = [s for s in shards if s not in remote]
  examples, audits, ids = [], [], []
  if local:
    read, audit_parts, ids = _index_and_seek(
        pipeline, local, chunk_size=chunk_size, lenient=lenient,
        emit_ids=bool(remote))
    examples.append(read)
    audits += audit_parts
  if remote:
    read, audit_parts = _read_in_ranges(
        pipeline, remote, ids, range_bytes=range_bytes,
        hold_bytes=hold_bytes, lenient=lenient)
    examples += read
    audits += audit_parts
  _ = (
      audits
      | 'MergeAudit' >> beam.Flatten()
      | 'AuditToJson' >> beam.Map(json.dumps, sort_keys=True)
      | 'WriteAudit' >> beam.io.WriteToText(
          str(epath.Path(audit_dir) / audit.AUDIT_PREFIX), file_name_suffix='.jsonl')
  )
  return examples | 'MergeExamples' >> beam.Flatten()
