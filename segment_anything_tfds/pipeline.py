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
image bytes flow straight from the read to TFDS's writer. In lazy mode (local
builds, see `lazy.py`) not even they do: 'ReadExamples' emits small stand-ins
that the dataset's example writer resolves from the tars.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterator, Sequence

import apache_beam as beam
from etils import epath

from segment_anything_tfds import examples as examples_lib
from segment_anything_tfds import lazy as lazy_lib
from segment_anything_tfds import sources as sources_lib
from segment_anything_tfds import tars as tars_lib

AUDIT_DIR = 'audit'
AUDIT_PREFIX = 'records'
_AUDIT = 'audit'
_NAMESPACE = 'segment_anything'


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A slice of one shard's pairs: the unit of parallel work."""

  shard: sources_lib.Shard
  pairs: tuple[tars_lib.Pair, ...]


def skip_record(reason: str, tar: str, member: str, message: str) -> dict:
  return {'kind': 'skip', 'reason': reason, 'tar': tar, 'member': member,
          'message': message}


def _counter(name: str):
  return beam.metrics.Metrics.counter(_NAMESPACE, name)


def _problem(problem: tars_lib.Problem, *, lenient: bool):
  """Raises in strict mode; returns an audit output in lenient mode."""
  if not lenient:
    raise problem.error()
  logging.warning('Skipping %s: %s [%s]', problem.where, problem.message,
                  problem.reason)
  _counter(f'skipped_{problem.reason}').inc()
  return beam.pvalue.TaggedOutput(_AUDIT, skip_record(
      problem.reason, problem.tar, problem.member, problem.message))


def index_shard(
    shard: sources_lib.Shard, *, chunk_size: int, lenient: bool
) -> Iterator[Any]:
  """Indexes one shard; yields `Chunk`s and audit records."""
  members = tars_lib.index_shard(shard)
  pairs, problems, ignored = tars_lib.pair_members(members, tar=shard.name)
  for problem in problems:
    yield _problem(problem, lenient=lenient)
  for m in ignored:
    logging.info('%s:%s: not an SA-1B image member; ignored', shard.name,
                 m.name)
  _counter('images_indexed').inc(len(pairs))
  yield beam.pvalue.TaggedOutput(_AUDIT, {
      'kind': 'shard', 'tar': shard.name, 'images': len(pairs),
      'problems': len(problems), 'ignored_members': [m.name for m in ignored],
  })
  for start in range(0, len(pairs), chunk_size):
    yield Chunk(shard, tuple(pairs[start:start + chunk_size]))


def image_ids(chunk: Chunk) -> Iterator[tuple[int, tuple[int, str]]]:
  for pair in chunk.pairs:
    yield (examples_lib.image_id_from_stem(pair.stem),
           (chunk.shard.index, chunk.shard.name))


def find_duplicates(
    image_id_shards: tuple[int, Sequence[tuple[int, str]]], *, lenient: bool
) -> Iterator[tuple[int, str]]:
  """Yields (image id, the one tar to keep it from) for ids in many tars."""
  image_id, shards = image_id_shards
  shards = sorted(set(shards))
  if len(shards) < 2:
    return
  names = [name for _, name in shards]
  if not lenient:
    raise examples_lib.BadInputError(
        examples_lib.DUPLICATE_ID, f'{names[1]}:sa_{image_id}.jpg',
        f'image id {image_id} is also in {", ".join(n for n in names if n != names[1])}')
  yield image_id, names[0]


def read_chunk(
    chunk: Chunk, duplicates: dict[int, str], *, lenient: bool,
    lazy: bool = False,
) -> Iterator[Any]:
  """Reads a chunk's pairs; yields (image id, example) and audit records.

  With `lazy`, each image is read and checked just the same, but the example
  yielded is `lazy.stand_in(...)`: a few hundred bytes that
  `lazy.LazyExampleWriter` turns back into the full example as it writes.
  """
  shard = chunk.shard
  with tars_lib.ShardReader(shard) as reader:
    for pair in chunk.pairs:
      image_id = examples_lib.image_id_from_stem(pair.stem)
      keep = duplicates.get(image_id)
      if keep is not None and keep != shard.name:
        yield _problem(tars_lib.Problem(
            examples_lib.DUPLICATE_ID, shard.name, pair.jpg.name,
            f'image id {image_id} is kept from {keep}'), lenient=lenient)
        continue
      try:
        key, example = tars_lib.read_example(reader, pair)
      except examples_lib.BadInputError as e:
        member = e.where.split(':', 1)[-1]
        yield _problem(tars_lib.Problem(e.reason, shard.name, member,
                                        e.message), lenient=lenient)
        continue
      _counter('images_written').inc()
      yield key, (lazy_lib.stand_in(example, shard, pair) if lazy else example)


@beam.ptransform_fn
def BuildExamples(  # pylint: disable=invalid-name
    pipeline: beam.pvalue.PBegin,
    shards: Sequence[sources_lib.Shard],
    *,
    audit_dir: epath.PathLike,
    chunk_size: int = 64,
    lenient: bool = False,
    lazy: bool = False,
) -> beam.PCollection:
  """All examples of `shards`, as (image id, example) pairs.

  Args:
    pipeline: the pipeline root.
    shards: the shards to read, each readable in place.
    audit_dir: where JSON-lines audit records are written.
    chunk_size: images per unit of work.
    lenient: skip (and audit) bad images instead of failing.
    lazy: yield `lazy.stand_in` examples, for a build whose TFDS writer is a
      `lazy.LazyExampleWriter`: memory then stays flat under Beam's local runner,
      which holds grouped data in RAM.
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
          lazy=lazy,
      ).with_outputs(_AUDIT, main='examples')
  )
  _ = (
      (indexed[_AUDIT], read[_AUDIT])
      | 'MergeAudit' >> beam.Flatten()
      | 'AuditToJson' >> beam.Map(json.dumps, sort_keys=True)
      | 'WriteAudit' >> beam.io.WriteToText(
          str(epath.Path(audit_dir) / AUDIT_PREFIX), file_name_suffix='.jsonl')
  )
  return read.examples
