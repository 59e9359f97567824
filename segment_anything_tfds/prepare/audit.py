"""The build audit: what went in, what came out, what was skipped and why.

Each build writes JSON-lines records under `<data_dir>/audit/` (the local
build with `write_records`, the Beam pipeline with its 'WriteAudit' step).
The builder folds them into `metadata.json` with `summarize`: images
indexed per tar, and skips counted per reason. The records themselves stay
in `audit/` for a line-by-line look.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from etils import epath

from segment_anything_tfds import errors

_LOG = logging.getLogger(__name__)

# Audit records are JSON lines in `<data_dir>/audit/records*.jsonl`.
AUDIT_DIR = 'audit'
AUDIT_PREFIX = 'records'


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
                 ignored: list[str]) -> dict:
  """The record of one indexed shard: images in, problems, ignored members."""
  return {'kind': 'shard', 'tar': tar, 'images': images,
          'problems': problems, 'ignored_members': ignored}


def write_records(data_dir: epath.PathLike, records: list[dict[str, Any]]
                  ) -> None:
  """Writes audit records as JSON lines (what the Beam build writes too)."""
  if not records:
    return
  audit_dir = epath.Path(data_dir) / AUDIT_DIR
  audit_dir.mkdir(parents=True, exist_ok=True)
  with (audit_dir / f'{AUDIT_PREFIX}-local.jsonl').open('w') as f:
    for record in records:
      f.write(json.dumps(record, sort_keys=True) + '\n')


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
  it was not written. Tars skipped whole (`corrupt_tar`, `no_images`) are in
  `skipped_tars`; the images indexed before a tar's damage count as usual.
  """
  shards = sorted((r for r in records if r['kind'] == 'shard'),
                  key=lambda r: r['tar'])
  skips = [r for r in records if r['kind'] == 'skip']
  tar_skips = sorted((r for r in records if r['kind'] == 'tar'),
                     key=lambda r: r['tar'])
  by_reason = collections.Counter(r['reason'] for r in skips)
  return {
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
