"""Beam transforms: shards -> (image id, example), streaming from the tars.

  'CreateShards'      one element per tar or folder
  'ReshuffleShards'   spread shards over workers
  'IndexShards'       read headers only; pair members; cut into chunks
  'KeyImageIds'/'GroupImageIds'/'FindDuplicateIds'
                      image ids seen in more than one shard (small data)
  'ReshuffleChunks'   fan out: the unit of work is a chunk, not a tar
  'ReadExamples'      seek to each pair, read, parse, build the example
  'WriteAudit'        every skipped image (lenient mode) and per-shard counts

Only shard names, member offsets and image ids are grouped or reshuffled;
image bytes flow straight from the read to TFDS's writer (whose shuffle
groups them: on Dataflow a disk-backed service). Local builds do not use this
pipeline but `local_build.py`, which shuffles only 48-byte entries.
"""

import dataclasses
import json
import logging
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from etils import epath

from segment_anything_tfds import audit
from segment_anything_tfds import errors
from segment_anything_tfds import examples as examples_lib
from segment_anything_tfds import shards as shards_lib
from segment_anything_tfds import tars as tars_lib

_LOG = logging.getLogger(__name__)

_AUDIT = 'audit'
_NAMESPACE = 'segment_anything'


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A slice of one shard's pairs: the unit of parallel work."""

  shard: shards_lib.Shard
  pairs: tuple[tars_lib.Pair, ...]


def _counter(name: str):
  return beam.metrics.Metrics.counter(_NAMESPACE, name)


def _problem(error: errors.BadInputError, *, lenient: bool,
             kind: str = 'skip'):
  """Raises in strict mode; returns an audit output in lenient mode."""
  record = audit.problem(error, lenient=lenient, kind=kind)
  _counter(f'skipped_{error.reason}').inc()
  return beam.pvalue.TaggedOutput(_AUDIT, record)


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
                 name)
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
        examples_lib.DUPLICATE_ID, names[1], f'sa_{image_id}.jpg',
        f'image id {image_id} is also in'
        f' {", ".join(n for n in names if n != names[1])}')
  yield image_id, names[0]


def read_chunk(
    chunk: Chunk, duplicates: dict[int, str], *, lenient: bool,
) -> Iterator[Any]:
  """Reads a chunk's pairs; yields (image id, example) and audit records."""
  shard = chunk.shard
  with tars_lib.ShardReader(shard) as reader:
    for pair in chunk.pairs:
      keep = duplicates.get(pair.image_id)
      if keep is not None and keep != shard.name:
        yield _problem(errors.BadInputError(
            examples_lib.DUPLICATE_ID, shard.name, pair.jpg.name,
            f'image id {pair.image_id} is kept from {keep}'), lenient=lenient)
        continue
      try:
        key, example = tars_lib.read_example(reader, pair)
      except errors.BadInputError as e:
        yield _problem(e, lenient=lenient)
        continue
      _counter('images_written').inc()
      yield key, example


@beam.ptransform_fn
def BuildExamples(  # pylint: disable=invalid-name
    pipeline: beam.pvalue.PBegin,
    shards: Sequence[shards_lib.Shard],
    *,
    audit_dir: epath.PathLike,
    chunk_size: int = 64,
    lenient: bool = False,
) -> beam.PCollection:
  """All examples of `shards`, as (image id, example) pairs.

  Args:
    pipeline: the pipeline root.
    shards: the shards to read, each readable in place.
    audit_dir: where JSON-lines audit records are written.
    chunk_size: images per unit of work.
    lenient: skip (and audit) bad images instead of failing.
  """
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
      ).with_outputs(_AUDIT, main='examples')
  )
  _ = (
      (indexed[_AUDIT], read[_AUDIT])
      | 'MergeAudit' >> beam.Flatten()
      | 'AuditToJson' >> beam.Map(json.dumps, sort_keys=True)
      | 'WriteAudit' >> beam.io.WriteToText(
          str(epath.Path(audit_dir) / audit.AUDIT_PREFIX), file_name_suffix='.jsonl')
  )
  return read.examples
