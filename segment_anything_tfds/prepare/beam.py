"""The Beam engine: one element per source, and its own shard writer.

What Dataflow runs. Beam is imported here only. The steps, by label:

  'CreateSources' / 'ReshuffleSources'
                      one element per tar or folder, spread over workers
  'ReadSources'       a source read by one worker: a remote tar front to
                      back, once (`tars.stream`), a local one indexed then
                      read by seeks in tar order (`tars.index`). Each image
                      is built and serialized there; out come its copy
                      (image id -> `Built`: tar, member, record or error),
                      a small note of where it is (for 'GroupIds'), and the
                      tar's audit records (`rules.audit_index`). With an
                      image list, the listed images only, and the ids
                      found (for 'FindMissing')
  'GroupIds' / 'FindDuplicates'
                      image ids in more than one tar, and images a tar
                      took back (stored twice, found after they were
                      built): `rules.duplicates` keeps the lowest tar's
                      copy. Small data, a side input for the next step
  'DropDuplicates'    the other copies go
  'FindMissing' / 'TarSkips' / 'CheckMissing' / 'WriteMissing'
                      with an image list: its images found in no tar
                      (`rules.missing_images`: strict, the build fails,
                      naming the tars skipped whole)
  'KeyOrders' / 'PlanShards'
                      the plan (`plan.py`): every kept image's
                      `image_order` (8 bytes) and size, in one combine, cut
                      into as many shards as TFDS would choose
  'AssignShards' / 'GroupShards' / 'WriteShards'
                      each record to its shard; each shard sorted and
                      written (`tfds_seam.write_records`)
  'ResultsToJson' / 'WriteResults', 'AuditToJson' / 'WriteAudit'
                      what each shard holds, and the audit records, read
                      back by the launcher, which writes the audit file
                      (`rules.write_audit`)

The plan, the rules and the record format are the local engine's, so both
engines write the same shard files and the same audit for the same inputs.
A shard is sorted in one worker's memory: it holds at most
`max_shard_size` (1 GiB by default) of records.

Beam counters (namespace `segment_anything`: images indexed and written,
masks, skips per reason) show progress on Dataflow's job page and go to
`metadata.json`.
"""

from __future__ import annotations

import array
import dataclasses
import json
import logging
import os
import tempfile
import time
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import metric
from etils import epath
import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds import tfds_seam
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import rules
from segment_anything_tfds.prepare import serializer
from segment_anything_tfds.prepare import tars as tars_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import paths as paths_lib

_LOG = logging.getLogger(__name__)

NAMESPACE = 'segment_anything'
_AUDIT = 'audit'
_IDS = 'ids'
_FOUND = 'found'
_WORK_DIR = '.beam_build'


def _counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


@dataclasses.dataclass(frozen=True)
class Built:
  """One copy of an image, built: its record, or why it has none.

  Attributes:
    copy: where it is (its tar and jpg member).
    input_bytes: its members' bytes (the plan's shard count uses them).
    masks: its number of masks.
    record: the serialized example, or None if the build failed.
    error: why it failed (lenient builds; a strict one raised it).
  """

  copy: rules.Copy
  input_bytes: int
  masks: int = 0
  record: bytes | None = None
  error: errors.BadInputError | None = None


def _build(source: base.Source, pair: tars_lib.Pair, jpg: bytes,
           json_bytes: bytes, *, lenient: bool) -> Built:
  copy = rules.Copy(source.tar_index, source.name, pair.jpg.name)
  size = pair.jpg.size + pair.json.size
  try:
    _, example = tars_lib.build_example(source.name, pair, jpg, json_bytes)
  except errors.BadInputError as e:
    if not lenient:
      raise
    return Built(copy, size, error=e)
  return Built(copy, size, len(example['annotations']['id']),
               b''.join(serializer.serialize_pieces(example)))


def _audit(index: tars_lib.Index, *, lenient: bool) -> Iterator[Any]:
  _counter('images_indexed').inc(index.images)
  for record in rules.audit_index(index, lenient=lenient):
    if record['kind'] != 'shard':
      _counter(f'skipped_{record["reason"]}').inc()
    yield beam.pvalue.TaggedOutput(_AUDIT, record)
  if index.unlisted is not None:  # An image list: the ids it found.
    yield beam.pvalue.TaggedOutput(_FOUND, index.image_ids().tolist())


def _note(image_id: int, built: Built, *, took_back: bool = False):
  return beam.pvalue.TaggedOutput(_IDS, (image_id, (built.copy, took_back)))


def read_source(source: base.Source, *, hold_bytes: int, lenient: bool,
                images=None) -> Iterator[Any]:
  """Reads one source, building every image (with an image list,
  `image_list.ImageList`, every listed image).

  Yields (image id, `Built`); on 'ids', (image id, (`rules.Copy`, took
  back)); on 'audit', the source's audit records; with a list, on 'found',
  the ids of its images indexed. Strict: the first problem raises.
  """
  if source.remote and not source.folder:
    yield from _read_stream(source, hold_bytes=hold_bytes, lenient=lenient,
                            images=images)
    return
  index = tars_lib.index(source, images=images)
  yield from _audit(index, lenient=lenient)
  with tars_lib.ShardReader(source) as reader:
    for pair in sorted(index.pairs, key=lambda p: p.jpg.offset):
      try:
        jpg, js = reader.read(pair.jpg), reader.read(pair.json)
      except errors.BadInputError as e:
        if not lenient:
          raise
        built = Built(rules.Copy(source.tar_index, source.name,
                                 pair.jpg.name),
                      pair.jpg.size + pair.json.size, error=e)
      else:
        built = _build(source, pair, jpg, js, lenient=lenient)
      yield _note(pair.image_id, built)
      yield pair.image_id, built


def _read_stream(source: base.Source, *, hold_bytes: int, lenient: bool,
                 images) -> Iterator[Any]:
  """A remote tar, read front to back once (`tars.stream`)."""
  given: dict[str, tuple[int, Built]] = {}
  for event in tars_lib.stream(source, hold_bytes=hold_bytes, images=images):
    if isinstance(event, tars_lib.Index):
      final = {p.stem for p in event.pairs}
      for stem, (image_id, built) in given.items():
        if stem not in final:  # Stored twice: a problem of its index.
          yield _note(image_id, built, took_back=True)
      yield from _audit(event, lenient=lenient)
      return
    pair = event.pair
    built = _build(source, pair, event.jpg, event.json, lenient=lenient)
    given[pair.stem] = pair.image_id, dataclasses.replace(built, record=None)
    yield _note(pair.image_id, built)
    yield pair.image_id, built


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What becomes of an image id's copies: the tar kept (None if none),
  and the tars whose copy was taken back."""

  kept: int | None
  took_back: frozenset[int]


def find_duplicates(item: tuple[int, Iterable[tuple[rules.Copy, bool]]], *,
                    lenient: bool) -> Iterator[Any]:
  """An image id's copies (`rules.duplicates`); yields its `Verdict` if
  more than one tar has it or one took it back, and the skips."""
  image_id, notes = item
  notes = list(notes)
  took_back = frozenset(c.tar_index for c, back in notes if back)
  copies = [c for c, back in notes if not back and c.tar_index not in
            took_back]
  if len(copies) < 2 and not took_back:
    return
  kept = None
  if copies:
    first, skips = rules.duplicates(image_id, copies, lenient=lenient)
    kept = first.tar_index
    for record in skips:
      _counter(f'skipped_{record["reason"]}').inc()
      yield beam.pvalue.TaggedOutput(_AUDIT, record)
  yield image_id, Verdict(kept, took_back)


def drop_duplicates(item: tuple[int, Built], verdicts: dict[int, Verdict]
                    ) -> Iterator[tuple[int, Built]]:
  """Keeps a copy unless its tar took it back or another tar keeps it."""
  image_id, built = item
  verdict = verdicts.get(image_id)
  if verdict is not None and (built.copy.tar_index in verdict.took_back or
                              built.copy.tar_index != verdict.kept):
    return
  yield item


class PlanShards(beam.CombineFn):
  """The plan: every kept image's `image_order` (8 bytes each) and their
  members' bytes, then the shard count and the cuts (`plan.py`)."""

  def __init__(self, output: plan.Output):
    super().__init__()
    self._output = output

  def create_accumulator(self):
    return array.array('Q'), 0

  def add_input(self, acc, item):
    orders, total = acc
    image_id, size = item
    orders.append(_order(image_id))
    return orders, total + size

  def merge_accumulators(self, accumulators):
    orders, total = array.array('Q'), 0
    for more, size in accumulators:
      orders.extend(more)
      total += size
    return orders, total

  def extract_output(self, acc):
    orders, total = acc
    ordered = np.sort(np.frombuffer(orders, np.uint64))
    if not len(ordered):
      return 0, []
    count = self._output.shard_count(images=len(ordered), input_bytes=total)
    return count, plan.boundaries(ordered, count).tolist()


def _order(image_id: int) -> int:
  return int(plan.image_order(np.uint64(image_id)))


class FindMissing(beam.CombineFn):
  """The listed images found in no tar, from each source's found ids
  (`rules.missing_images`; 'CheckMissing' then fails a strict build,
  `check_missing`)."""

  def __init__(self, images, *, tars: int):
    super().__init__()
    self._images = images
    self._tars = tars

  def create_accumulator(self):
    return []

  def add_input(self, acc, ids):
    acc.append(np.asarray(ids, np.int64))
    return acc

  def merge_accumulators(self, accumulators):
    return [np.unique(np.concatenate([a for acc in accumulators for a in acc]
                                     or [np.zeros(0, np.int64)]))]

  def extract_output(self, acc):
    found = np.concatenate(acc) if acc else np.zeros(0, np.int64)
    return rules.missing_images(self._images, found, allow_partial=True,
                                tars=self._tars).tolist()


def check_missing(missing: list[int], tar_skips: list[dict], *, images,
                  allow_partial: bool, tars: int,
                  skipped: Sequence[dict]) -> list[int]:
  """`rules.check_missing` of the ids 'FindMissing' found missing, with the
  tars skipped whole (those left out before the build, `skipped`, and the
  sources' own); returns them."""
  rules.check_missing(images, np.array(missing, np.int64),
                      allow_partial=allow_partial, tars=tars,
                      records=[*skipped, *tar_skips])
  return missing


def assign_shard(item: tuple[int, Built], shards: tuple[int, list[int]]
                 ) -> tuple[int, tuple[int, Built]]:
  """(shard, (image id, copy)): the shard of the copy's image."""
  shard = plan.shard_of(_order(item[0]), np.array(shards[1], np.uint64))
  return int(shard), item


def _write_file(path, file_format: str, records: Iterable[bytes]) -> None:
  """Writes a shard file; one for a bucket is written locally first."""
  if paths_lib.is_local(path):
    tfds_seam.write_records(path, file_format, records)
    return
  fd, local = tempfile.mkstemp(prefix='segment_anything_tfds-shard-')
  os.close(fd)
  try:
    tfds_seam.write_records(local, file_format, records)
    epath.Path(local).copy(path, overwrite=True)
  finally:
    os.remove(local)


def write_shard(item: tuple[int, Iterable[tuple[int, Built]]],
                shards: tuple[int, list[int]], *, output: plan.Output,
                lenient: bool) -> Iterator[Any]:
  """Writes one shard, its records in `image_order`; yields what it holds
  (JSON) and, on 'audit', the images skipped for a failed build."""
  shard, copies = item
  count = shards[0]
  tallies = rules.Tallies()
  records = []
  for _, built in sorted(copies, key=lambda c: _order(c[0])):
    if built.error is not None:
      record = rules.problem(built.error, lenient=lenient)
      _counter(f'skipped_{built.error.reason}').inc()
      tallies.skipped(built.copy.tar)
      yield beam.pvalue.TaggedOutput(_AUDIT, record)
      continue
    records.append(built.record)
    tallies.written(built.copy.tar, masks=built.masks,
                    nbytes=len(built.record))
    _counter('images_written').inc()
    _counter('masks_written').inc(built.masks)
  _write_file(output.shard_path(shard, count), output.file_format, records)
  yield json.dumps({'shard': shard, 'count': count, 'records': len(records),
                    'tallies': tallies.per_tar})


def _pipeline(root, sources: Sequence[base.Source], output: plan.Output,
              work_dir: str, *, lenient: bool, hold_bytes: int, images,
              allow_partial: bool, skipped: Sequence[dict]) -> None:
  read = (
      root
      | 'CreateSources' >> beam.Create(list(sources))
      | 'ReshuffleSources' >> beam.Reshuffle()
      | 'ReadSources' >> beam.FlatMap(
          read_source, hold_bytes=hold_bytes, lenient=lenient, images=images
      ).with_outputs(_AUDIT, _IDS, _FOUND, main='copies')
  )
  if images is not None:
    tar_skips = read[_AUDIT] | 'TarSkips' >> beam.Filter(
        lambda r: r['kind'] == 'tar')
    _ = (
        read[_FOUND]
        | 'FindMissing' >> beam.CombineGlobally(FindMissing(
            images, tars=len(sources)))
        | 'CheckMissing' >> beam.Map(
            check_missing, beam.pvalue.AsList(tar_skips), images=images,
            allow_partial=allow_partial, tars=len(sources),
            skipped=list(skipped))
        | 'MissingToJson' >> beam.Map(json.dumps)
        | 'WriteMissing' >> beam.io.WriteToText(f'{work_dir}/missing')
    )
  verdicts = (
      read[_IDS]
      | 'GroupIds' >> beam.GroupByKey()
      | 'FindDuplicates' >> beam.FlatMap(find_duplicates, lenient=lenient
                                         ).with_outputs(_AUDIT,
                                                        main='verdicts')
  )
  kept = read.copies | 'DropDuplicates' >> beam.FlatMap(
      drop_duplicates, beam.pvalue.AsDict(verdicts.verdicts))
  shards = (
      kept
      | 'KeyOrders' >> beam.Map(lambda kv: (kv[0], kv[1].input_bytes))
      | 'PlanShards' >> beam.CombineGlobally(PlanShards(output))
  )
  written = (
      kept
      | 'AssignShards' >> beam.Map(assign_shard, beam.pvalue.AsSingleton(
          shards))
      | 'GroupShards' >> beam.GroupByKey()
      | 'WriteShards' >> beam.FlatMap(
          write_shard, beam.pvalue.AsSingleton(shards), output=output,
          lenient=lenient).with_outputs(_AUDIT, main='results')
  )
  _ = (written.results
       | 'WriteResults' >> beam.io.WriteToText(f'{work_dir}/results'))
  _ = (
      [read[_AUDIT], verdicts[_AUDIT], written[_AUDIT]]
      | 'MergeAudit' >> beam.Flatten()
      | 'AuditToJson' >> beam.Map(json.dumps, sort_keys=True)
      | 'WriteAudit' >> beam.io.WriteToText(f'{work_dir}/audit')
  )


def _read_lines(work_dir: epath.Path, prefix: str) -> list[Any]:
  return [json.loads(line) for path in sorted(work_dir.glob(f'{prefix}*'))
          for line in path.read_text().splitlines() if line.strip()]


def _counters(pipeline_result) -> dict[str, int]:
  counts: dict[str, int] = {}
  query = pipeline_result.metrics().query(
      metric.MetricsFilter().with_namespace(NAMESPACE))
  for counter in query['counters']:
    value = counter.committed
    if value is None:  # Some runners report attempted values only.
      value = counter.attempted
    if isinstance(value, int):
      name = counter.key.metric.name
      counts[name] = counts.get(name, 0) + value
  return counts


def build(sources: Sequence[base.Source], output: plan.Output, *,
          lenient: bool, hold_bytes: int, runner: Any = None,
          options: Any = None, images=None,
          allow_partial: bool = False,
          skipped: Sequence[dict[str, Any]] = ()) -> plan.Result:
  """Writes the split of `sources` with Beam, on `runner` with `options`
  (both given explicitly: Beam never parses the caller's `sys.argv`).

  With `images` (an `image_list.ImageList`), the listed images only; those
  found in no tar fail the build unless `allow_partial`. `skipped`: the
  audit records of tars left out before the build (a lenient build's tars
  that do not match their checksums).

  Returns:
    What was written, its counts and counters, and the audit records (also
    written to `<data_dir>/audit/`).

  Raises:
    errors.BadInputError: in strict mode, for the first bad input (on
      other runners, an error that `errors.from_exception` maps back).
  """
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  started = time.monotonic()
  work_dir = epath.Path(output.data_dir) / _WORK_DIR
  if options is None:
    options = pipeline_options.PipelineOptions([])
  root = beam.Pipeline(runner=runner, options=options)
  _pipeline(root, sources, output, os.fspath(work_dir), lenient=lenient,
            hold_bytes=hold_bytes, images=images,
            allow_partial=allow_partial, skipped=skipped)
  pipeline_result = root.run()
  pipeline_result.wait_until_finish()
  counters = _counters(pipeline_result)
  results = _read_lines(work_dir, 'results')
  audit = list(skipped) + _read_lines(work_dir, 'audit')
  missing = None
  if images is not None:
    missing = np.array(_read_lines(work_dir, 'missing')[0], np.int64)
  work_dir.rmtree(missing_ok=True)
  if not results:
    raise errors.SourceError(rules.nothing_to_write(audit, len(sources)))
  lengths = [0] * results[0]['count']
  tallies = rules.Tallies()
  for r in results:
    lengths[r['shard']] = r['records']
    tallies.add(rules.Tallies(r['tallies']))
  if not sum(lengths):
    raise errors.SourceError(rules.nothing_to_write(audit, len(sources)))
  lengths = plan.drop_empty_shards(output, lengths)
  rules.write_audit(output.data_dir, audit)
  return plan.Result(engine='beam', shard_lengths=lengths,
                     num_bytes=tallies.total('bytes'), tallies=tallies,
                     audit=audit, seconds=time.monotonic() - started,
                     counters=counters, missing_images=missing)
