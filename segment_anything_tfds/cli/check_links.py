"""`segment-anything-tfds check-links`: report on the links file, offline.

  segment-anything-tfds check-links --manual_dir ~/sa1b [--probe]

The file is read by the builder's own parser (`links.read_links`), in its
tolerant mode, so the report lists every problem the builder would stop at;
`--probe` sends HEAD requests with the package's one HTTP client
(`http.Client`: proxies, redirects, retries and fail-fast errors as in a
build).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
from typing import Any, Sequence

from etils import epath

from segment_anything_tfds import errors
from segment_anything_tfds.sources import http
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import local as local_files
from segment_anything_tfds.sources import manual_dir as manual_dir_lib
from segment_anything_tfds.cli import common

EXAMPLE = f'example: {common.PROG} check-links --manual_dir ~/sa1b --probe'
# A probe retries a transient failure once (after 1 s, or a Retry-After of at
# most 5 s): it reports, it does not need to succeed.
PROBE_RETRIES = 2
PROBE_MAX_BACKOFF = 5.0


@dataclasses.dataclass
class LinkRow:
  lineno: int
  name: str
  url: str
  expires: datetime.datetime | None

  @property
  def shard(self) -> int | None:
    return links_lib.shard_index(self.name)


def link_expiry(url: str) -> datetime.datetime | None:
  """The expiry time of a signed CDN URL: its `oe=` hex unix time (UTC)."""
  unix = links_lib.expiry(url)
  if unix is None:
    return None
  return datetime.datetime.fromtimestamp(unix, tz=datetime.timezone.utc)


def _read(links_path: epath.Path) -> links_lib.Links:
  """The links file, parsed tolerantly; refused only if it is not one."""
  if not links_path.exists():
    raise errors.SourceError(f'links file {links_path} does not exist')
  try:
    return links_lib.read_links(links_path, strict=False)
  except errors.LinksError as e:
    raise errors.LinksError(f'not a links file: {e.message}') from None


def probe(client: http.Client, url: str) -> tuple[int | None, str]:
  """(Content-Length or None, what the HEAD got) of one link."""
  if not links_lib.is_http(url):
    return None, 'not probed (not an http(s) link)'
  try:
    status, size = client.head(url)
    if 200 <= status < 300:
      http.check_size(size, links_lib.redact(url), client.options.max_bytes)
  except errors.DownloadError as e:
    message = e.message
    for prefix in (f'HEAD {links_lib.redact(url)}: ',
                   f'{links_lib.redact(url)}: '):
      if message.startswith(prefix):
        message = message[len(prefix):]
    return None, f'error: {message}'
  return (size if 200 <= status < 300 else None), f'HTTP {status}'


def _probe_all(rows: list[LinkRow], args: argparse.Namespace
               ) -> dict[int, tuple[int | None, str]]:
  """Line -> probe result of every row, `--probe_workers` at a time."""
  options = options_lib.DownloadOptions(
      timeout=args.timeout, retries=PROBE_RETRIES,
      max_backoff=PROBE_MAX_BACKOFF, progress=False)
  with http.ClientPool(options) as pool, (
      concurrent.futures.ThreadPoolExecutor(args.probe_workers)) as ex:
    futures = {ex.submit(lambda u=r.url: probe(pool.get(), u)): r
               for r in rows}
    results = {}
    for fut in common.progress(concurrent.futures.as_completed(futures),
                               enabled=args.progress, total=len(futures),
                               desc='HEAD', unit='link'):
      results[futures[fut].lineno] = fut.result()
  return results


def _fmt_time(t: datetime.datetime | None) -> str:
  return t.strftime('%Y-%m-%d %H:%M UTC') if t else '-'


def _local_shards(manual_dir: str) -> dict[int, base.Source]:
  """The tars and folders in `manual_dir` (not its links-file rows), as
  the builder finds them."""
  if not epath.Path(manual_dir).is_dir():
    raise errors.SourceError(f'--manual_dir {manual_dir} is not a directory')
  return dict(sorted(manual_dir_lib.local_shards(manual_dir).shards.items()))


def _form(source: base.Source) -> str:
  """How a shard is in manual_dir: 'tar' or 'dir' (an extracted folder)."""
  return 'dir' if source.folder else 'tar'


def run(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  if args.json:
    local_files.check_writable(args.json, 'the report (--json)')
  if args.links:
    links_path = epath.Path(args.links)
  elif args.manual_dir:
    links_path = epath.Path(args.manual_dir) / links_lib.LINKS_FILE_NAME
  else:
    raise common.UsageError('give --links FILE or --manual_dir DIR')
  parsed = _read(links_path)
  rows = [LinkRow(r.lineno, r.name, r.url, link_expiry(r.url))
          for r in parsed.rows]
  problems = [p.message for p in parsed.problems if p.kind != 'duplicate']
  builder_verdict = parsed.problems[0].message if parsed.problems else 'ok'
  now = datetime.datetime.now(tz=datetime.timezone.utc)

  by_name: dict[str, list[LinkRow]] = {}
  for row in rows:
    by_name.setdefault(row.name, []).append(row)
  duplicates = {n: rs for n, rs in by_name.items() if len(rs) > 1}
  shard_rows = [r for r in rows if r.shard is not None]
  other_rows = [r for r in rows if r.shard is None]
  shard_names = sorted({r.name for r in shard_rows})

  local = _local_shards(args.manual_dir) if args.manual_dir else {}
  listed_idx = {r.shard for r in shard_rows}

  expiries = [r.expires for r in rows if r.expires is not None]
  expired = [r for r in rows if r.expires is not None and r.expires <= now]
  # Only links of tars still to download can stop a build.
  expired_needed = [r for r in expired
                    if r.shard is not None and r.shard not in local]
  no_expiry = [r for r in rows if r.expires is None]

  sizes = _probe_all(rows, args) if args.probe else {}
  probe_failed = [r for r in rows if args.probe and links_lib.is_http(r.url)
                  and sizes[r.lineno][0] is None]

  per_link = []
  for r in rows:
    entry = {
        'line': r.lineno, 'file_name': r.name,
        'kind': 'sa1b_tar' if r.shard is not None else 'other',
        'expires': r.expires.isoformat() if r.expires else None,
        'expired': bool(r.expires and r.expires <= now),
        'local': _form(local[r.shard]) if r.shard in local else None,
        'duplicate': r.name in duplicates,
    }
    if args.probe:
      entry['size_bytes'], entry['probe'] = sizes[r.lineno]
    per_link.append(entry)

  report = {
      'links_file': str(links_path),
      'checked_at': now.isoformat(),
      'rows': len(rows),
      'sa1b_tar_rows': len(shard_rows),
      'sa1b_tars': len(shard_names),
      'other_rows': [r.name for r in other_rows],
      'malformed_lines': problems,
      'duplicates': {n: [r.lineno for r in rs] for n, rs in duplicates.items()},
      'builder_accepts_file': builder_verdict == 'ok',
      'builder_error': None if builder_verdict == 'ok' else builder_verdict,
      'earliest_expiry': min(expiries).isoformat() if expiries else None,
      'latest_expiry': max(expiries).isoformat() if expiries else None,
      'expired': len(expired),
      'expired_to_download': len(expired_needed),
      'without_expiry': len(no_expiry),
      'manual_dir': args.manual_dir,
      'local_listed': sorted(links_lib.shard_name(i) for i in local
                             if i in listed_idx),
      'local_not_listed': sorted(links_lib.shard_name(i) for i in local
                                 if i not in listed_idx),
      'to_download': len(listed_idx - set(local)),
      'links': per_link,
  }
  if args.probe:
    known = [sizes[r.lineno][0] for r in shard_rows
             if sizes[r.lineno][0] is not None]
    report['probe'] = {
        'ok': len(rows) - len(probe_failed),
        'failed': len(probe_failed),
        'sa1b_total_bytes': sum(known),
        'to_download_bytes': sum(
            sizes[r.lineno][0] or 0 for r in shard_rows
            if r.shard not in local),
    }

  _print_links_report(report, rows, args)
  if args.json:
    local_files.write_whole(
        args.json, (json.dumps(report, indent=2) + '\n').encode('utf-8'),
        'the report (--json)')
  bad = []
  if problems:
    bad.append(f'{len(problems)} malformed lines')
  if duplicates:
    bad.append(f'{len(duplicates)} duplicated names')
  if expired_needed:
    bad.append(f'{len(expired_needed)} expired links of tars to download')
  if probe_failed:
    bad.append(f'{len(probe_failed)} links failed the probe')
  if builder_verdict != 'ok':
    bad.append('the builder rejects the file')
  if args.strict and bad:
    raise errors.SourceError('check-links --strict: ' + ', '.join(bad))
  return 0


def _print_links_report(report: dict[str, Any], rows: list[LinkRow], args):
  out = []
  out.append(f'links file:   {report["links_file"]}')
  out.append(f'rows:         {report["rows"]} ({report["sa1b_tar_rows"]}'
             f' SA-1B tar rows for {report["sa1b_tars"]} tars,'
             f' {len(report["other_rows"])} other rows)')
  if report['other_rows']:
    out.append(f'other rows:   {", ".join(report["other_rows"])}'
               ' (ignored by the builder)')
  if report['malformed_lines']:
    out.append(f'malformed:    {len(report["malformed_lines"])}')
    out += [f'  {p}' for p in report['malformed_lines']]
  if report['duplicates']:
    out.append(f'duplicates:   {len(report["duplicates"])}')
    out += [f'  {n}: lines {", ".join(map(str, ls))}'
            for n, ls in report['duplicates'].items()]
  else:
    out.append('duplicates:   none')
  if report['builder_accepts_file']:
    out.append('builder:      accepts the file')
  else:
    out.append(f'builder:      REJECTS the file: {report["builder_error"]}')
  if report['earliest_expiry']:
    e = datetime.datetime.fromisoformat(report['earliest_expiry'])
    l = datetime.datetime.fromisoformat(report['latest_expiry'])
    out.append(f'expiry:       earliest {_fmt_time(e)}, latest {_fmt_time(l)}')
  checked = datetime.datetime.fromisoformat(report['checked_at'])
  line = (f'expired:      {report["expired"]} of {report["rows"]} as of'
          f' {_fmt_time(checked)}')
  if report['without_expiry']:
    line += f'; {report["without_expiry"]} without oe='
  out.append(line)
  if report['expired_to_download']:
    out.append(f'              {report["expired_to_download"]} of them for'
               ' tars to download: expired links cannot be downloaded; get a'
               ' fresh links file from the SA-1B download page')
  elif report['expired']:
    out.append('              none for tars still to download: no problem for'
               ' a build')
  if report['manual_dir']:
    out.append(f'local:        {len(report["local_listed"])} listed tars are in'
               f' {report["manual_dir"]}; {report["to_download"]} would be'
               ' downloaded')
    if report['local_not_listed']:
      out.append(f'              also local but not listed:'
                 f' {", ".join(report["local_not_listed"])}')
  if 'probe' in report:
    p = report['probe']
    out.append(f'probe:        {p["ok"]} ok, {p["failed"]} failed; SA-1B tars'
               f' {common.human_bytes(p["sa1b_total_bytes"])} in all,'
               f' {common.human_bytes(p["to_download_bytes"])} to download')
  if not args.summary_only:
    out.append('')
    header = (f'{"line":>5}  {"file_name":<20} {"expires":<21} {"state":<8}'
              ' local')
    if args.probe:
      header += '   size        probe'
    out.append(header)
    for entry in report['links']:
      if entry['expires']:
        exp = _fmt_time(datetime.datetime.fromisoformat(entry['expires']))
        state = 'EXPIRED' if entry['expired'] else 'valid'
      else:
        exp = state = '-'
      line = (f'{entry["line"]:>5}  {entry["file_name"]:<20} {exp:<21}'
              f' {state:<8} {entry["local"] or "-":<5}')
      if args.probe:
        line += f'   {common.human_bytes(entry["size_bytes"]):<11} {entry["probe"]}'
      if entry['duplicate']:
        line += '  DUPLICATE'
      out.append(line)
  # Names, URLs and servers' words come from input: shown escaped.
  print('\n'.join(map(errors.printable, out)))


def add_parser(sub, parents) -> argparse.ArgumentParser:
  """The `check-links` subcommand's parser."""
  p = sub.add_parser(
      'check-links', parents=parents, allow_abbrev=False,
      help='check the links file without downloading', epilog=EXAMPLE,
      description='Report on the SA-1B links file without downloading: SA-1B'
      ' tar rows vs other rows, duplicates, link expiry (from oe=<hex unix'
      ' time>), tars already in manual_dir, and with --probe the sizes from'
      ' HEAD requests (honouring http_proxy/https_proxy/no_proxy).')
  p.add_argument('--manual_dir', metavar='DIR', default=None,
                 help=f'a dir with {links_lib.LINKS_FILE_NAME} (and maybe'
                 ' tars, which are reported as local)')
  p.add_argument('--links', metavar='FILE', default=None,
                 help='the links file (default: MANUAL_DIR/'
                 f'{links_lib.LINKS_FILE_NAME})')
  p.add_argument('--probe', action='store_true',
                 help='send a HEAD request per link for its size and status')
  p.add_argument('--probe_workers',
                 type=common.download_option('workers', int), default=8,
                 metavar='N', help='parallel HEAD requests (default 8)')
  p.add_argument('--timeout', type=common.download_option('timeout', float),
                 default=30.0, metavar='SECONDS',
                 help='seconds a --probe request may take, in all, to connect'
                 ' and receive the answer\'s status line and headers (default'
                 ' 30)')
  p.add_argument('--summary_only', action='store_true',
                 help='no per-link table')
  p.add_argument('--json', metavar='FILE', default=None,
                 help='also write the full report as JSON')
  p.add_argument('--strict', action='store_true',
                 help='exit 1 if anything is wrong: malformed lines,'
                 ' duplicates, expired links of tars still to download,'
                 ' failed probes')
  p.set_defaults(func=run, allow_leftover=False)
  return p
