"""The rules of a build, one home for each, used by both engines.

An engine (`local.py`, `beam.py`) moves entries and bytes; every decision
about what goes in, what is skipped and how it is recorded is made here:

  audit_index      a tar's index (or stream report): damage, no images,
                   per-image problems, and its shard record
  missing_images   with an image list: listed images found in no tar, an
                   error unless the build allows a partial list
  duplicates       an image id in more than one tar: the lowest tar keeps
                   it, the others are `duplicate_id` skips (one wording);
                   a strict build raises on the first
  problem          strict: raise; lenient: log and record a skip
  Tallies          what was written and skipped, per tar
  write_audit      the canonical audit file: every record, sorted, so that
                   both engines write the same bytes for the same input

The audit is JSON lines under `<data_dir>/audit/`. The builder folds it
into `metadata.json` with `summarize`: images indexed per tar, and skips
counted per reason; the records stay in `audit/` for a line-by-line look.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from typing import Any, Iterable, Sequence

from etils import epath
import numpy as np

from segment_anything_tfds import errors

_LOG = logging.getLogger(__name__)

# Audit records are JSON lines in `<data_dir>/audit/records*.jsonl`.
AUDIT_DIR = 'audit'
AUDIT_PREFIX = 'records'
AUDIT_FILE = f'{AUDIT_PREFIX}.jsonl'


# ---------------------------------------------------------------- records


def skip_record(error: errors.BadInputError, *, kind: str = 'skip') -> dict:
  """The record of an image (`kind='skip'`) or a whole tar (`'tar'`) skipped."""
  return {'kind': kind, 'reason': error.reason, 'tar': error.tar,
          'member': error.member, 'message': error.detail}


def problem(error: errors.BadInputError, *, lenient: bool,
            kind: str = 'skip') -> dict:
  """Raises `error` in strict mode; in lenient mode logs it, returns its record.

  `kind` is 'skip' for one image, 'tar' for a whole tar.
  """
  if not lenient:
    raise error
  _LOG.warning('Skipping %s %s', 'image' if kind == 'skip' else 'tar',
               error.message)
  return skip_record(error, kind=kind)


def shard_record(tar: str, *, images: int, problems: int,
                 ignored: list[str], unlisted: int | None = None) -> dict:
  """The record of one indexed shard: images in, problems, ignored members;
  with an image list, the images it holds that the list does not name."""
  record = {'kind': 'shard', 'tar': tar, 'images': images,
            'problems': problems, 'ignored_members': ignored}
  if unlisted is not None:
    record['unlisted'] = unlisted
  return record


# ----------------------------------------------------------------- index


def no_images_error(tar: str, ignored: Sequence[str]
                    ) -> errors.BadInputError:
  """Why a shard offered no image at all: the members seen and ignored."""
  seen = ', '.join(ignored[:8]) + (' ...' if len(ignored) > 8 else '')
  return errors.BadInputError(
      errors.NO_IMAGES, tar, '-',
      'no SA-1B image members (sa_<id>.jpg + sa_<id>.json, <id> in ASCII'
      f' digits without leading zeros) among its {len(ignored)}'
      f' members{": " + seen if seen else ""}')


def audit_index(index, *, lenient: bool, images: int | None = None
                ) -> list[dict]:
  """The audit records of a tar's index (`tars.Index`, from `tars.index` or
  `tars.stream`); `images`: its images, if its pairs were dropped.

  A damaged tar, or one without images, is a skipped tar (its images
  before the damage are kept); each image that cannot be built from its
  members is a skipped image; then comes the shard's record. Strict: the
  first of these raises. A tar read front to back that does not match its
  checksum (`Index.mismatch`) is a skipped tar and nothing more: no shard
  record, no image counted, as a local tar left out before the build
  (`materialize_all`). With an image list, the index holds the listed
  images only: a tar whose images are all unlisted is not skipped, merely
  not needed.
  """
  if index.mismatch is not None:  # None of its images is used or counted.
    return [problem(index.mismatch, lenient=lenient, kind='tar')]
  records = []
  images = index.images if images is None else images
  if index.damage is not None:
    records.append(problem(index.damage, lenient=lenient, kind='tar'))
  elif not images and not index.unlisted:
    records.append(problem(no_images_error(index.tar, index.ignored),
                           lenient=lenient, kind='tar'))
  for error in index.problems:
    records.append(problem(error, lenient=lenient))
  for name in index.ignored:
    _LOG.info('%s:%s: not an SA-1B image member; ignored', index.tar,
              errors.printable(name))
  records.append(shard_record(index.tar, images=images,
                              problems=len(index.problems),
                              ignored=list(index.ignored),
                              unlisted=index.unlisted))
  return records


# ------------------------------------------------------------ image list

# Ids named in a missing-images error, and kept in `metadata.json`.
MISSING_IN_ERROR = 10
MISSING_IN_METADATA = 10_000


def _first(ids: np.ndarray, limit: int) -> str:
  shown = ', '.join(str(i) for i in ids[:limit].tolist())
  return shown + (', ...' if len(ids) > limit else '')


def missing_images(images, found: np.ndarray, *, allow_partial: bool,
                   tars: int, records: Iterable[dict] = ()) -> np.ndarray:
  """The listed images found in no tar (sorted); an error unless
  `allow_partial`.

  Args:
    images: the build's `image_list.ImageList`.
    found: the ids of the images its tars hold (readable or not).
    allow_partial: return them instead of raising.
    tars: the tars (and folders) read, for the message.
    records: the build's audit records so far: the message names the
      tars skipped whole (a corrupt tar, one that does not match its
      checksum), whose images may be among those missing.

  Raises:
    errors.SourceError: naming the first `MISSING_IN_ERROR` and the count.
  """
  missing = images.ids[~np.isin(images.ids, found)]
  check_missing(images, missing, allow_partial=allow_partial, tars=tars,
                records=records)
  return missing


def check_missing(images, missing: np.ndarray, *, allow_partial: bool,
                  tars: int, records: Iterable[dict] = ()) -> None:
  """Raises for listed images found in no tar, unless `allow_partial`
  (`missing_images`, for an engine that found them elsewhere)."""
  if len(missing) and not allow_partial:
    skipped = sorted({(r['tar'], r['reason']) for r in records
                      if r['kind'] == 'tar'})
    raise errors.SourceError(
        f'{len(missing)} of the {len(images)} images listed in'
        f' {images.origin} {"is" if len(missing) == 1 else "are"} in none of'
        f' the {tars} tars read:'
        f' {_first(missing, MISSING_IN_ERROR)}'
        + (f' (tars skipped whole, whose images are not built:'
           f' {", ".join(f"{t} ({r})" for t, r in skipped[:5])}'
           f'{", ..." if len(skipped) > 5 else ""})' if skipped else '')
        + '. Find their tars with `segment-anything-tfds index --images`,'
        ' or build the others with allow_partial=True (--allow_partial)')


def images_metadata(images, missing: np.ndarray) -> dict[str, Any]:
  """The `images` block of `metadata.json`: the list's hash and size, and
  the ids found in no tar (all of them, or the first `MISSING_IN_METADATA`:
  `missing_ids_complete` says which)."""
  out = {'list_sha256': images.sha256, 'listed': len(images),
         'missing': len(missing)}
  if len(missing):
    out['missing_ids'] = missing[:MISSING_IN_METADATA].tolist()
    out['missing_ids_complete'] = len(missing) <= MISSING_IN_METADATA
  return out


# ------------------------------------------------------------ duplicates


@dataclasses.dataclass(frozen=True, order=True)
class Copy:
  """Where one copy of an image id is: its tar and its jpg member."""

  tar_index: int
  tar: str
  member: str


def duplicate_error(image_id: int, copy: Copy, kept: Copy, *,
                    lenient: bool) -> errors.BadInputError:
  """The error of a copy of an image id that another tar keeps."""
  return errors.BadInputError(
      errors.DUPLICATE_ID, copy.tar, copy.member,
      f'image id {image_id} is also in {kept.tar}'
      + ('; it is kept from there' if lenient else ''))


def duplicates(image_id: int, copies: Iterable[Copy], *, lenient: bool
               ) -> tuple[Copy, list[dict]]:
  """The copy kept (the lowest tar's) and the skips of the others.

  Strict: the first other copy raises.
  """
  first, *others = sorted(copies)
  return first, [problem(duplicate_error(image_id, c, first,
                                         lenient=lenient), lenient=lenient)
                 for c in others]


def duplicate_rows(image_ids: np.ndarray, tar_indexes: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """`duplicates` for arrays: (rows dropped, the row kept for each).

  Rows are in order of (image id, tar); each id keeps its lowest tar.
  """
  by_id = np.lexsort((tar_indexes, image_ids))
  ids = image_ids[by_id]
  starts = np.r_[True, ids[1:] != ids[:-1]]
  if starts.all():
    empty = np.zeros(0, np.int64)
    return empty, empty
  group_first = np.maximum.accumulate(np.where(starts, np.arange(len(ids)),
                                               0))
  again = np.flatnonzero(~starts)
  return by_id[again], by_id[group_first[again]]


# --------------------------------------------------------------- tallies


class Tallies:
  """Per tar: images written, their masks and record bytes, images skipped
  when building or writing."""

  FIELDS = ('written', 'masks', 'bytes', 'skipped')

  def __init__(self, per_tar: dict[str, list[int]] | None = None):
    self.per_tar: dict[str, list[int]] = collections.defaultdict(
        lambda: [0, 0, 0, 0], per_tar or {})

  def written(self, tar: str, *, masks: int, nbytes: int) -> None:
    tally = self.per_tar[tar]
    tally[0] += 1
    tally[1] += masks
    tally[2] += nbytes

  def skipped(self, tar: str) -> None:
    self.per_tar[tar][3] += 1

  def add(self, other: 'Tallies') -> 'Tallies':
    for tar, tally in other.per_tar.items():
      self.per_tar[tar] = [a + b for a, b in zip(self.per_tar[tar], tally)]
    return self

  def total(self, field: str) -> int:
    i = self.FIELDS.index(field)
    return sum(t[i] for t in self.per_tar.values())

  def as_dict(self) -> dict[str, dict[str, int]]:
    return {tar: dict(zip(self.FIELDS, tally))
            for tar, tally in sorted(self.per_tar.items())}

  def __reduce__(self):  # Picklable (workers return them).
    return (Tallies, (dict(self.per_tar),))


# ------------------------------------------------------------ audit file


def _order(record: dict[str, Any]) -> tuple:
  return (record['tar'], record['kind'], record.get('member', ''),
          json.dumps(record, sort_keys=True))


def audit_lines(records: Iterable[dict[str, Any]]) -> str:
  """The canonical text of the audit: one JSON line per record, sorted."""
  return ''.join(json.dumps(r, sort_keys=True) + '\n'
                 for r in sorted(records, key=_order))


def write_audit(data_dir: epath.PathLike,
                records: Iterable[dict[str, Any]]) -> None:
  """Writes `<data_dir>/audit/records.jsonl`: every record, sorted."""
  text = audit_lines(records)
  if not text:
    return
  audit_dir = epath.Path(data_dir) / AUDIT_DIR
  audit_dir.mkdir(parents=True, exist_ok=True)
  (audit_dir / AUDIT_FILE).write_text(text)


def read_records(data_dir: epath.PathLike) -> list[dict[str, Any]]:
  """All audit records of a dataset dir (empty if it has none)."""
  audit_dir = epath.Path(data_dir) / AUDIT_DIR
  if not audit_dir.exists():
    return []
  records = []
  for path in sorted(audit_dir.glob(f'{AUDIT_PREFIX}*.jsonl')):
    for line in path.read_text().splitlines():
      if line.strip():
        records.append(json.loads(line))
  return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The audit's counts, which add up exactly.

  `images_indexed - skipped_images` is the number of examples written. An
  image counts once in `images_indexed` when its tar or folder was indexed
  (readable, or with a problem of its own), and once in `skipped_images` if
  it was not written. Tars skipped whole (`corrupt_tar`, `no_images`,
  `checksum_mismatch`) are in `skipped_tars`; the images indexed before a
  tar's damage count as usual, those of a tar that does not match its
  checksum not at all (it is not in `tars`).
  With an image list only listed images are indexed; `images_unlisted`
  counts the others the tars hold.
  """
  shards = sorted((r for r in records if r['kind'] == 'shard'),
                  key=lambda r: r['tar'])
  skips = [r for r in records if r['kind'] == 'skip']
  tar_skips = sorted((r for r in records if r['kind'] == 'tar'),
                     key=lambda r: r['tar'])
  by_reason = collections.Counter(r['reason'] for r in skips)
  summary = {
      'tars': [r['tar'] for r in shards],
      'images_indexed': sum(r['images'] for r in shards),
      'images_per_tar': {r['tar']: r['images'] for r in shards},
      'ignored_members': sorted(
          f'{r["tar"]}:{m}' for r in shards for m in r['ignored_members']),
      'skipped_images': len(skips),
      'skipped_by_reason': dict(sorted(by_reason.items())),
      'skipped_tars': [{k: r[k] for k in ('tar', 'reason', 'message')}
                       for r in tar_skips],
  }
  if any('unlisted' in r for r in shards):
    summary['images_unlisted'] = sum(r.get('unlisted', 0) for r in shards)
  return summary


def nothing_to_write(records: list[dict[str, Any]], tars: int) -> str:
  """Why a build wrote nothing: what was indexed, and why it was skipped."""
  summary = summarize(records)
  return (f'nothing to write: {tars} tars offered'
          f' {summary["images_indexed"]} images and all were skipped'
          f' ({summary["skipped_by_reason"]}; whole tars skipped:'
          f' {[t["tar"] for t in summary["skipped_tars"]]})')


def log_skips(metadata, data_dir) -> None:
  """After a lenient build: what was skipped, and where the records are."""
  summary = (metadata or {}).get('audit') or {}
  if summary.get('skipped_images') or summary.get('skipped_tars'):
    _LOG.warning(
        'Lenient build skipped %d images (%s) and %d whole tars (%s);'
        ' one record per skip in %s', summary['skipped_images'],
        summary['skipped_by_reason'], len(summary['skipped_tars']),
        ', '.join(t['tar'] for t in summary['skipped_tars']) or '-',
        epath.Path(data_dir) / AUDIT_DIR)
