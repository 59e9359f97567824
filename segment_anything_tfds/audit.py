"""The build audit: what went in, what came out, what was skipped and why.

The Beam job writes JSON-lines records under `<data_dir>/audit/`. When TFDS
saves the dataset's metadata, `AuditMetadata` folds them into
`metadata.json`: images indexed per tar, and skips counted per reason. The
records themselves stay in `audit/` for a line-by-line look.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from etils import epath
import tensorflow_datasets as tfds

from segment_anything_tfds import pipeline as pipeline_lib


def read_records(data_dir: epath.PathLike) -> list[dict[str, Any]]:
  """All audit records of a dataset dir (empty if it has none)."""
  audit_dir = epath.Path(data_dir) / pipeline_lib.AUDIT_DIR
  if not audit_dir.exists():
    return []
  records = []
  for path in sorted(audit_dir.glob(f'{pipeline_lib.AUDIT_PREFIX}*.jsonl')):
    for line in path.read_text().splitlines():
      if line.strip():
        records.append(json.loads(line))
  return records


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
  """Counts: images indexed, skipped per reason, tars, ignored members."""
  shards = sorted((r for r in records if r['kind'] == 'shard'),
                  key=lambda r: r['tar'])
  skips = [r for r in records if r['kind'] == 'skip']
  by_reason = collections.Counter(r['reason'] for r in skips)
  return {
      'tars': [r['tar'] for r in shards],
      'images_indexed': sum(r['images'] for r in shards),
      'images_per_tar': {r['tar']: r['images'] for r in shards},
      'ignored_members': sorted(
          f'{r["tar"]}:{m}' for r in shards for m in r['ignored_members']),
      'skipped_images': len(skips),
      'skipped_by_reason': dict(sorted(by_reason.items())),
  }


class AuditMetadata(tfds.core.MetadataDict):
  """`metadata.json` with the build audit folded in when it is saved."""

  def save_metadata(self, data_dir):
    records = read_records(data_dir)
    if records:
      summary = summarize(records)
      self['audit'] = summary
      if summary['skipped_images']:
        logging.warning(
            'Lenient build skipped %d images: %s (records in %s)',
            summary['skipped_images'], summary['skipped_by_reason'],
            epath.Path(data_dir) / pipeline_lib.AUDIT_DIR)
    super().save_metadata(data_dir)
