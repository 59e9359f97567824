"""`segment-anything-tfds`: build, check links, statistics and pictures.

  segment-anything-tfds build --config first_1 --manual_dir DIR --data_dir D
  segment-anything-tfds check-links --manual_dir DIR [--probe]
  segment-anything-tfds stats --config first_1 --data_dir D --out OUT
  segment-anything-tfds show --config first_1 --data_dir D --index 0,3 --out OUT

Exit codes: 0 success; 2 bad usage; 1 an expected failure (missing files,
bad input, expired links with --strict, ...), reported on one line. Bugs
still show their traceback.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

from etils import epath
import tensorflow_datasets as tfds

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import examples as examples_lib
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import runners
from segment_anything_tfds import sources as sources_lib

PROG = 'segment-anything-tfds'
DATASET = 'segment_anything'
LOCAL = 'local'
FILE_FORMATS = ('tfrecord', 'array_record')
# `build` counts masks by reading the dataset back when it is at most this
# big (first_1 is ~11 GB); `--count_masks yes|no` overrides.
COUNT_MASKS_MAX_BYTES = 16 << 30


class CliError(Exception):
  """An expected failure: printed on one line, exit code 1."""


class UsageError(Exception):
  """Bad usage found after parsing: printed with the usage, exit code 2."""


EXPECTED_ERRORS = (
    CliError, ValueError, FileNotFoundError, NotADirectoryError,
    PermissionError, examples_lib.BadInputError, OSError,
)


# ---------------------------------------------------------------- helpers


def _progress(iterable=None, *, enabled: bool, **kwargs):
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
  return tqdm_auto.tqdm(iterable, disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, **kwargs)


def _tar_spec(value: str) -> str:
  try:
    config_lib.parse_tar_spec(value)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return value


def _int_list(value: str) -> list[int]:
  try:
    out = [int(v) for v in value.replace(' ', '').split(',') if v]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers like "0,3", got {value!r}'
    ) from None
  if not out or any(v < 0 for v in out):
    raise argparse.ArgumentTypeError(
        f'expected non-negative integers like "0,3", got {value!r}')
  return out


def _positive_int(value: str) -> int:
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise argparse.ArgumentTypeError(
        f'expected a positive integer, got {value!r}')
  return n


_BEAM_WRAPPED_RE = re.compile(r'^(?:[\w.]+\.)?(\w+): (.+)$')
_EXPECTED_NAMES = frozenset({
    'BadInputError', 'ValueError', 'FileNotFoundError', 'NotADirectoryError',
    'PermissionError', 'OSError', 'IOError', 'CliError'})


def _beam_wrapped(e: BaseException) -> str | None:
  """The message of an expected error that Beam re-raised as another type.

  Beam re-raises a worker's exception as `RuntimeError('<module>.<Type>:
  <message> [while running ...]')` when it cannot rebuild the original type.
  """
  m = _BEAM_WRAPPED_RE.match(_first_line(e))
  if m and m.group(1) in _EXPECTED_NAMES:
    return m.group(2)
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  line = lines[0] if lines else text
  if isinstance(e, (KeyError,)):
    line = f'missing key {line}'
  return line


def _human_bytes(n: float | None) -> str:
  if n is None:
    return '?'
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
    if abs(n) < 1024 or unit == 'PiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.2f} {unit}'
    n /= 1024
  return f'{n} B'


def builder_config(
    args: argparse.Namespace) -> config_lib.SegmentAnythingConfig:
  """The config that --config/--tars/--lenient name.

  A lenient build gets its own config name (`<name>_lenient`), so it never
  shares a data dir with the strict build of the same tars.
  """
  if getattr(args, 'tars', None):
    cfg = config_lib.tars_config(args.tars)
  else:
    cfg = {c.name: c for c in config_lib.BUILDER_CONFIGS}[args.config]
  if args.lenient:
    cfg = config_lib.lenient_config(cfg)
  return cfg


def _config_for_builder(cfg: config_lib.SegmentAnythingConfig):
  """Registered configs by name (TFDS rejects equal-named copies)."""
  registered = {c.name: c for c in config_lib.BUILDER_CONFIGS}
  return cfg.name if registered.get(cfg.name) is cfg else cfg


def make_builder(args: argparse.Namespace) -> tfds.core.DatasetBuilder:
  """The builder named by --dataset_dir, or --config/--tars and --data_dir."""
  # Registers the builder (a no-op once imported).
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  if getattr(args, 'dataset_dir', None):
    path = epath.Path(args.dataset_dir)
    if not (path / 'dataset_info.json').exists():
      raise CliError(f'{path} is not a prepared dataset dir (it has no'
                     ' dataset_info.json)')
    return tfds.builder_from_directory(path)
  cfg = builder_config(args)
  options = {k: getattr(args, k) for k in ('disk_mode', 'checksums_file',
                                           'download_workers')
             if getattr(args, k, None) is not None}
  return tfds.builder(DATASET, data_dir=args.data_dir,
                      config=_config_for_builder(cfg),
                      download_options=options)


def _prepared_builder(args: argparse.Namespace) -> tfds.core.DatasetBuilder:
  builder = make_builder(args)
  if not builder.is_prepared():
    raise CliError(
        f'no prepared dataset at {builder.data_dir}; run `{PROG} build` with'
        ' the same --config/--tars/--lenient and --data_dir first')
  return builder


def _split_size(builder, split: str) -> int | None:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError):
    return None


def _skip_image_decoding():
  return {'image': {'content': tfds.decode.SkipDecoding()}}


def iterate_examples(builder, split: str, *, progress: bool, desc: str):
  """Numpy examples of `split`, JPEG bytes undecoded, in the split's order."""
  try:
    if _is_array_record(builder):
      source = builder.as_data_source(split=split,
                                      decoders=_skip_image_decoding())
      examples = (source[i] for i in range(len(source)))
    else:
      examples = tfds.as_numpy(builder.as_dataset(
          split=split, decoders=_skip_image_decoding(), shuffle_files=False))
  except (KeyError, AssertionError) as e:
    raise CliError(f'bad split {split!r}: {_first_line(e)}') from None
  total = _split_size(builder, split)
  return _progress(examples, enabled=progress, total=total, desc=desc,
                   unit='img')


def _is_array_record(builder) -> bool:
  return builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def count_masks(builder, split: str, *, progress: bool) -> int:
  total = 0
  for ex in iterate_examples(builder, split, progress=progress,
                             desc='Counting masks'):
    total += len(ex['annotations']['id'])
  return total


# ---------------------------------------------------------------- build


def _beam_flags(args: argparse.Namespace, leftover: Sequence[str]) -> list[str]:
  """Beam flags: leftovers, --beam_pipeline_options, runner and workers."""
  flags = []
  items = list(leftover)
  i = 0
  while i < len(items):  # `--k=v`, `--k v` and boolean `--k`.
    item = items[i]
    if not item.startswith('--') or item == '--':
      raise UsageError(f'unexpected argument {item!r}')
    if ('=' not in item and i + 1 < len(items)
        and not items[i + 1].startswith('--')):
      flags.append(f'{item}={items[i + 1]}')
      i += 2
    else:
      flags.append(item)
      i += 1
  if args.beam_pipeline_options:
    for opt in args.beam_pipeline_options.split(','):
      if opt.strip():
        flags.append('--' + opt.strip().lstrip('-'))
  named = [f for f in flags if re.match(r'^--runner(=|$)', f)]
  if args.runner != LOCAL:
    if named:
      raise UsageError('give the runner once: --runner NAME')
    flags.append(f'--runner={args.runner}')
  if any(f.split('=', 1)[-1] in ('DirectRunner', 'PrismRunner')
         for f in flags if f.startswith('--runner')):
    print(f'{PROG}: note: Beam\'s DirectRunner/PrismRunner may try to'
          ' download Prism from GitHub; --runner local (the default) runs'
          ' offline', file=sys.stderr)
  if args.num_workers:
    if args.runner == LOCAL and not named:
      flags += [f'--direct_num_workers={args.num_workers}',
                '--direct_running_mode=multi_processing']
    else:
      flags.append(f'--num_workers={args.num_workers}')
  return flags


def _check_beam_flags(flags: Sequence[str]) -> None:
  """Rejects flags that are not Beam pipeline options (e.g. typos)."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  known = set(pipeline_options.PipelineOptions([]).get_all_options())
  unknown = []
  for flag in flags:
    name = flag[2:].split('=', 1)[0].replace('-', '_')
    if name not in known and not name.startswith('no_'):
      unknown.append(flag.split('=', 1)[0])
  if unknown:
    raise UsageError(
        f'unknown option(s) {", ".join(unknown)}: neither {PROG} build flags'
        ' nor Beam pipeline options')


def download_config(args: argparse.Namespace, leftover: Sequence[str]
                    ) -> tfds.download.DownloadConfig:
  """The DownloadConfig of a `build`: manual_dir, Beam options, runner.

  Without a named runner, the local in-process FnApiRunner is used (never
  Beam's DirectRunner, which tries to download Prism).
  """
  flags = _beam_flags(args, leftover)
  if flags:
    _check_beam_flags(flags)
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  # Always explicit: PipelineOptions() without flags would parse sys.argv.
  beam_options = pipeline_options.PipelineOptions(flags)
  cfg = tfds.download.DownloadConfig(
      manual_dir=args.manual_dir, beam_options=beam_options)
  return runners.with_local_runner(cfg)


# Beam loggers that print a worker's traceback when a build fails; the CLI
# reports the error itself, on one line.
_BEAM_ERROR_LOGGERS = ('apache_beam.runners.common',
                       'apache_beam.runners.worker.sdk_worker')


class _DropErrors:
  """A logging filter that drops ERROR records (and their tracebacks)."""

  def filter(self, record) -> bool:
    import logging  # pylint: disable=g-import-not-at-top
    return record.levelno < logging.ERROR


_DROP_ERRORS = _DropErrors()


def _quiet_beam_worker_log(quiet: bool) -> None:
  """Hides (or shows again) Beam's worker tracebacks of a failed build."""
  import logging  # pylint: disable=g-import-not-at-top
  for name in _BEAM_ERROR_LOGGERS:
    logger = logging.getLogger(name)
    if quiet:
      logger.addFilter(_DROP_ERRORS)
    else:
      logger.removeFilter(_DROP_ERRORS)


def cmd_build(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  dl_config = download_config(args, leftover)
  if args.manual_dir and '://' not in args.manual_dir:
    if not os.path.isdir(args.manual_dir):
      raise CliError(f'--manual_dir {args.manual_dir} is not a directory')
  builder = make_builder(args)
  was_prepared = builder.is_prepared()
  runner = dl_config.beam_runner
  if runner is not None:
    runner_name = type(runner).__name__
  else:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    runner_name = dl_config.beam_options.view_as(
        pipeline_options.StandardOptions).runner
  print(f'Preparing {builder.info.full_name} ({builder.builder_config.name})'
        f' into {builder.data_dir} with {runner_name}'
        + (f', {args.num_workers} workers' if args.num_workers else '')
        + f', {args.file_format}', file=sys.stderr)
  start = time.monotonic()
  _quiet_beam_worker_log(not args.verbose)
  try:
    builder.download_and_prepare(download_config=dl_config,
                                 file_format=args.file_format)
  except AssertionError as e:  # TFDS's missing/empty manual dir check.
    m = re.search(r'Manual directory (\S+) does not exist or is empty',
                  str(e))
    if m:
      raise CliError(f'the manual dir {m.group(1)} does not exist or is'
                     ' empty: give --manual_dir DIR with the tars and/or'
                     f' {links_lib.LINKS_FILE_NAME}') from None
    raise
  finally:
    _quiet_beam_worker_log(False)
  elapsed = time.monotonic() - start
  _print_build_summary(builder, args, elapsed, was_prepared)
  return 0


def _print_build_summary(builder, args, elapsed: float, was_prepared: bool):
  info = builder.info
  images = sum(s.num_examples for s in info.splits.values())
  size = int(info.dataset_size) if info.dataset_size is not None else None
  if args.count_masks == 'yes' or (
      args.count_masks == 'auto' and size is not None
      and size <= COUNT_MASKS_MAX_BYTES):
    masks = sum(count_masks(builder, s, progress=args.progress)
                for s in info.splits)
    masks_text = f'{masks:,}'
  else:
    masks = None
    masks_text = f'not counted (see `{PROG} stats`)'
  audit = (info.metadata or {}).get('audit', {}) if info.metadata else {}
  summary = {
      'dataset': info.full_name,
      'config': builder.builder_config.name if builder.builder_config else None,
      'data_dir': str(builder.data_dir),
      'file_format': str(info.file_format.value if info.file_format else ''),
      'images': images,
      'masks': masks,
      'size_bytes': size,
      'tars': audit.get('tars'),
      'skipped_images': audit.get('skipped_images', 0),
      'seconds': round(elapsed, 1),
      'reused': was_prepared,
  }
  lines = [
      '' if not was_prepared else 'Already prepared; reused.',
      f'dataset:   {summary["dataset"]}',
      f'images:    {images:,}',
      f'masks:     {masks_text}',
      f'size:      {_human_bytes(size)}',
      f'format:    {summary["file_format"]}',
      f'data dir:  {summary["data_dir"]}',
  ]
  if audit:
    lines.append(f'tars:      {len(audit.get("tars", []))}')
    if audit.get('skipped_images'):
      lines.append(f'skipped:   {audit["skipped_images"]} images'
                   f' {audit.get("skipped_by_reason")}')
  lines.append(f'time:      {elapsed:.1f} s')
  if was_prepared and summary['file_format'] != args.file_format:
    lines.append(f'note:      already prepared as {summary["file_format"]};'
                 f' --file_format {args.file_format} was not applied (use'
                 ' another --data_dir)')
  print('\n'.join(l for l in lines if l))
  if args.summary_json:
    pathlib.Path(args.summary_json).write_text(
        json.dumps(summary, indent=2) + '\n', encoding='utf-8')


# ---------------------------------------------------------------- links


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


def scan_links(text: str, *, source: str) -> tuple[list[LinkRow], list[str]]:
  """Tolerant scan of the links file: every row, and problems found.

  Unlike `links.parse_links` (what the builder uses, which stops at the
  first problem), this keeps going, so a report can list all of them.
  """
  rows: list[LinkRow] = []
  problems: list[str] = []
  lines = text.splitlines()
  body = [(i, l) for i, l in enumerate(lines, start=1) if l.strip()]
  if not body:
    raise CliError(f'{source}: the links file is empty')
  header = tuple(c.strip() for c in body[0][1].split('\t'))
  if header != links_lib.HEADER:
    raise CliError(f'{source}:{body[0][0]}: not a links file: expected the'
                   f' header "file_name<TAB>cdn_link", got {body[0][1]!r:.80}')
  for lineno, line in body[1:]:
    cols = [c.strip() for c in line.split('\t')]
    if len(cols) != 2 or not all(cols):
      problems.append(f'line {lineno}: expected 2 tab-separated columns,'
                      f' got {line!r:.80}')
      continue
    rows.append(LinkRow(lineno, cols[0], cols[1], link_expiry(cols[1])))
  return rows, problems


def head_size(url: str, *, timeout: float) -> tuple[int | None, str]:
  """(Content-Length or None, status text) of a HEAD request."""
  request = urllib.request.Request(url, method='HEAD',
                                   headers={'User-Agent': PROG})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      length = response.headers.get('Content-Length')
      return (int(length) if length is not None else None,
              f'HTTP {response.status}')
  except urllib.error.HTTPError as e:
    return None, f'HTTP {e.code}'
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, 'reason', e)
    return None, f'error: {reason}'


def _fmt_time(t: datetime.datetime | None) -> str:
  return t.strftime('%Y-%m-%d %H:%M UTC') if t else '-'


def _local_shards(manual_dir: str) -> dict[int, sources_lib.Shard]:
  """The tars and folders in `manual_dir` (not its links-file rows)."""
  if not epath.Path(manual_dir).is_dir():
    raise CliError(f'--manual_dir {manual_dir} is not a directory')
  return dict(sorted(sources_lib.local_shards(manual_dir).items()))


def cmd_check_links(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  if args.links:
    links_path = epath.Path(args.links)
  elif args.manual_dir:
    links_path = epath.Path(args.manual_dir) / links_lib.LINKS_FILE_NAME
  else:
    raise UsageError('give --links FILE or --manual_dir DIR')
  if not links_path.exists():
    raise CliError(f'links file {links_path} does not exist')
  text = links_path.read_text()
  rows, problems = scan_links(text, source=str(links_path))
  now = datetime.datetime.now(tz=datetime.timezone.utc)

  try:
    links_lib.parse_links(text, source=str(links_path))
    builder_verdict = 'ok'
  except ValueError as e:
    builder_verdict = _first_line(e)

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
  no_expiry = [r for r in rows if r.expires is None]

  sizes: dict[int, tuple[int | None, str]] = {}
  if args.probe:
    with concurrent.futures.ThreadPoolExecutor(args.probe_workers) as pool:
      futures = {pool.submit(head_size, r.url, timeout=args.timeout): r
                 for r in rows}
      for fut in _progress(concurrent.futures.as_completed(futures),
                           enabled=args.progress, total=len(futures),
                           desc='HEAD', unit='link'):
        sizes[futures[fut].lineno] = fut.result()
  probe_failed = [r for r in rows
                  if args.probe and sizes[r.lineno][0] is None]

  per_link = []
  for r in rows:
    entry = {
        'line': r.lineno, 'file_name': r.name,
        'kind': 'sa1b_tar' if r.shard is not None else 'other',
        'expires': r.expires.isoformat() if r.expires else None,
        'expired': bool(r.expires and r.expires <= now),
        'local': (local[r.shard].kind if r.shard in local else None),
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
    pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + '\n',
                                       encoding='utf-8')
  bad = []
  if problems:
    bad.append(f'{len(problems)} malformed lines')
  if duplicates:
    bad.append(f'{len(duplicates)} duplicated names')
  if expired:
    bad.append(f'{len(expired)} expired links')
  if probe_failed:
    bad.append(f'{len(probe_failed)} links failed the probe')
  if builder_verdict != 'ok':
    bad.append('the builder rejects the file')
  if args.strict and bad:
    raise CliError('check-links --strict: ' + ', '.join(bad))
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
  if report['expired']:
    out.append('              expired links cannot be downloaded: get a fresh'
               ' links file from the SA-1B download page')
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
               f' {_human_bytes(p["sa1b_total_bytes"])} in all,'
               f' {_human_bytes(p["to_download_bytes"])} to download')
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
        line += f'   {_human_bytes(entry["size_bytes"]):<11} {entry["probe"]}'
      if entry['duplicate']:
        line += '  DUPLICATE'
      out.append(line)
  print('\n'.join(out))


# ---------------------------------------------------------------- stats


def cmd_stats(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds import stats as stats_lib  # pylint: disable=g-import-not-at-top
  builder = _prepared_builder(args)
  acc = stats_lib.Accumulator()
  for ex in iterate_examples(builder, args.split, progress=args.progress,
                             desc='Statistics'):
    acc.add(ex)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  name = builder.builder_config.name if builder.builder_config else ''
  summary = acc.write_json(
      out_dir / 'stats.json', dataset=builder.info.full_name, config=name,
      data_dir=str(builder.data_dir), split=args.split)
  acc.write_figure(out_dir / 'stats.png',
                   title=f'{builder.info.full_name} {args.split}')
  mpi = summary['masks_per_image']
  q = mpi['quantiles']
  lines = [
      f'split:            {args.split}',
      f'images:           {summary["images"]:,}',
      f'masks:            {summary["masks"]:,}',
  ]
  if summary['images']:
    lines += [
        f'masks per image:  mean {mpi["mean"]:.1f}, min {mpi["min"]}, p5'
        f' {q["0.05"]}, p25 {q["0.25"]}, median {q["0.5"]}, p75 {q["0.75"]},'
        f' p95 {q["0.95"]}, max {mpi["max"]}',
    ]
    for key, label in (('mask_area_fraction', 'mask area frac.'),
                       ('predicted_iou', 'predicted_iou'),
                       ('stability_score', 'stability_score')):
      s = summary[key]
      if s['count']:
        lines.append(
            f'{label + ":":<17} mean {s["mean"]:.4g}, min {s["min"]:.4g},'
            f' median {s["quantiles"]["0.5"]:.4g}, max {s["max"]:.4g}')
    sizes = summary['image_size']
    top = sizes['most_common'][0]
    lines.append(f'image sizes:      {sizes["distinct_sizes"]} distinct; most'
                 f' common {top["width"]}x{top["height"]} ({top["images"]}'
                 ' images)')
  lines += [f'wrote:            {out_dir / "stats.json"}',
            f'                  {out_dir / "stats.png"}']
  print('\n'.join(lines))
  return 0


# ---------------------------------------------------------------- show


def _select_examples(builder, args) -> list[tuple[int, dict[str, Any]]]:
  """(index in split, numpy example) for --index or --image_id."""
  total = _split_size(builder, args.split)
  if args.index is not None:
    if total is not None:
      bad = [i for i in args.index if i >= total]
      if bad:
        raise CliError(f'--index {",".join(map(str, bad))} out of range: split'
                       f' {args.split!r} has {total} examples')
    if _is_array_record(builder):
      source = builder.as_data_source(split=args.split,
                                      decoders=_skip_image_decoding())
      return [(i, source[i]) for i in args.index]
    wanted = set(args.index)
    found = {}
    for i, ex in enumerate(iterate_examples(
        builder, args.split, progress=args.progress, desc='Finding')):
      if i in wanted:
        found[i] = ex
        if len(found) == len(wanted):
          break
    return [(i, found[i]) for i in args.index]
  wanted_ids = set(args.image_id)
  found = {}
  for i, ex in enumerate(iterate_examples(
      builder, args.split, progress=args.progress, desc='Finding')):
    image_id = int(ex['image']['image_id'])
    if image_id in wanted_ids:
      found[image_id] = (i, ex)
      if len(found) == len(wanted_ids):
        break
  missing = [i for i in args.image_id if i not in found]
  if missing:
    raise CliError(f'image id(s) {", ".join(map(str, missing))} not in split'
                   f' {args.split!r}')
  return [found[i] for i in args.image_id]


def cmd_show(args: argparse.Namespace, leftover: Sequence[str]) -> int:
  del leftover
  from segment_anything_tfds import viz  # pylint: disable=g-import-not-at-top
  builder = _prepared_builder(args)
  chosen = _select_examples(builder, args)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  for index, ex in _progress(chosen, enabled=args.progress and len(chosen) > 1,
                             desc='Drawing', unit='img'):
    image_id = int(ex['image']['image_id'])
    path = out_dir / f'sa_{image_id}.png'
    width, height = viz.save(ex, path, alpha=args.alpha, boxes=args.boxes,
                             points=args.points)
    print(f'wrote {path} (index {index}, image id {image_id}, {width}x{height},'
          f' {len(ex["annotations"]["id"])} masks)')
  return 0


# ---------------------------------------------------------------- parser


def _add_dataset_args(p: argparse.ArgumentParser, *, build: bool) -> None:
  which = p.add_argument_group('which dataset')
  group = which.add_mutually_exclusive_group(required=True)
  group.add_argument(
      '--config', choices=[c.name for c in config_lib.BUILDER_CONFIGS],
      help='a named config: all, first_1, first_10 or first_100 tars')
  group.add_argument(
      '--tars', type=_tar_spec, metavar='SPEC',
      help='explicit tar numbers and ranges, e.g. "0-9,42" (config'
      ' tars_0-9_42)')
  if not build:
    group.add_argument(
        '--dataset_dir', metavar='DIR',
        help='a prepared dataset dir (.../segment_anything/<config>/2.0.0)'
        ' instead of --config/--tars and --data_dir')
  which.add_argument(
      '--lenient', action='store_true',
      help='the lenient variant: skips bad images and audits them (its'
      ' config is named <config>_lenient)')
  which.add_argument(
      '--data_dir', metavar='DIR', default=None,
      help='TFDS data dir (default: TFDS default, ~/tensorflow_datasets)')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, allow_abbrev=False,
      description='SA-1B (Segment Anything) for TensorFlow Datasets: prepare'
      ' the dataset, check a links file, compute statistics, draw examples.',
      epilog='Exit codes: 0 ok, 1 failure (one-line error), 2 bad usage. Run'
      f' `{PROG} COMMAND --help` for each command.')
  parser.add_argument('--version', action='version',
                      version=f'%(prog)s {_version()}')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

  common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  common.add_argument('--no_progress', dest='progress', action='store_false',
                      help='no progress bars')

  p = sub.add_parser(
      allow_abbrev=False, name='build', parents=[common],
      help='prepare the dataset (Beam)',
      description='Prepare segment_anything with Beam. Without --runner the'
      ' build runs locally with Beam\'s offline in-process FnApiRunner (never'
      ' the DirectRunner/Prism). Any other --flag=value is passed to Beam\'s'
      ' PipelineOptions, e.g. --project, --region, --temp_location,'
      ' --machine_type, --setup_file for Dataflow.')
  _add_dataset_args(p, build=True)
  p.add_argument('--manual_dir', metavar='DIR', default=None,
                 help='where the tars, sa_NNNNNN/ folders and'
                 f' {links_lib.LINKS_FILE_NAME} are (local or gs://)')
  p.add_argument('--runner', default=LOCAL, metavar='NAME',
                 help='"local" (default: in-process FnApiRunner) or a Beam'
                 ' runner name, e.g. DataflowRunner')
  p.add_argument('--num_workers', type=_positive_int, default=None,
                 metavar='N', help='local: N worker processes'
                 ' (direct_num_workers=N, direct_running_mode='
                 'multi_processing); other runners: --num_workers=N')
  p.add_argument('--beam_pipeline_options', default=None, metavar='K=V,...',
                 help='Beam options as in `tfds build`: "runner=...,'
                 'project=...,region=..."')
  p.add_argument('--disk_mode', choices=('keep', 'stream', 'delete'),
                 default=None, help='tars fetched from links: keep them in'
                 ' the download cache (default), stream them with HTTP Range'
                 ' requests, or delete them after the build succeeds')
  p.add_argument('--checksums_file', metavar='FILE', default=None,
                 help='"<md5 or sha256>  sa_NNNNNN.tar" lines to verify tars'
                 ' against (default: segment_anything_checksums.txt in'
                 ' --manual_dir, if there)')
  p.add_argument('--download_workers', type=_positive_int, default=None,
                 metavar='N', help='tars downloaded at once (default 4)')
  p.add_argument('--file_format', choices=FILE_FORMATS, default='tfrecord',
                 help='tfrecord (default) or array_record (random access'
                 ' with tfds.data_source)')
  p.add_argument('--count_masks', choices=('auto', 'yes', 'no'),
                 default='auto', help='count masks for the summary by reading'
                 ' the dataset back (auto: when it is at most'
                 f' {COUNT_MASKS_MAX_BYTES >> 30} GiB)')
  p.add_argument('--verbose', action='store_true',
                 help="keep Beam's worker log, with tracebacks, on failure")
  p.add_argument('--summary_json', metavar='FILE', default=None,
                 help='also write the summary as JSON')
  p.set_defaults(func=cmd_build, allow_leftover=True)

  p = sub.add_parser(
      allow_abbrev=False, name='check-links', parents=[common],
      help='check the links file without downloading',
      description='Report on the SA-1B links file without downloading: SA-1B'
      ' tar rows vs other rows, duplicates, link expiry (from oe=<hex unix'
      ' time>), tars already in manual_dir, and with --probe the sizes from'
      ' HEAD requests.')
  p.add_argument('--manual_dir', metavar='DIR', default=None,
                 help=f'a dir with {links_lib.LINKS_FILE_NAME} (and maybe'
                 ' tars, which are reported as local)')
  p.add_argument('--links', metavar='FILE', default=None,
                 help='the links file (default: MANUAL_DIR/'
                 f'{links_lib.LINKS_FILE_NAME})')
  p.add_argument('--probe', action='store_true',
                 help='send a HEAD request per link for its size and status')
  p.add_argument('--probe_workers', type=_positive_int, default=8,
                 metavar='N', help='parallel HEAD requests (default 8)')
  p.add_argument('--timeout', type=float, default=30.0, metavar='SECONDS',
                 help='per-request timeout for --probe (default 30)')
  p.add_argument('--summary_only', action='store_true',
                 help='no per-link table')
  p.add_argument('--json', metavar='FILE', default=None,
                 help='also write the full report as JSON')
  p.add_argument('--strict', action='store_true',
                 help='exit 1 if anything is wrong: malformed lines,'
                 ' duplicates, expired links, failed probes')
  p.set_defaults(func=cmd_check_links, allow_leftover=False)

  p = sub.add_parser(
      allow_abbrev=False, name='stats', parents=[common],
      help='statistics of a prepared dataset',
      description='Masks per image (histogram, quantiles), mask area'
      ' fraction, predicted_iou and stability_score distributions, image'
      ' sizes. Writes OUT/stats.json and OUT/stats.png.')
  _add_dataset_args(p, build=False)
  p.add_argument('--split', default='train',
                 help="a split or slice, e.g. 'train[:10]' (default train)")
  p.add_argument('--out', required=True, metavar='DIR',
                 help='output dir for stats.json and stats.png')
  p.set_defaults(func=cmd_stats, allow_leftover=False)

  p = sub.add_parser(
      allow_abbrev=False, name='show', parents=[common],
      help='draw examples with their masks',
      description='Render examples with every mask overlaid in its own'
      ' colour, to OUT/sa_<image_id>.png at the image\'s own size.')
  _add_dataset_args(p, build=False)
  p.add_argument('--split', default='train', help='split (default train)')
  pick = p.add_mutually_exclusive_group(required=True)
  pick.add_argument('--index', type=_int_list, metavar='I,J',
                    help='positions in the split, e.g. 0,3')
  pick.add_argument('--image_id', type=_int_list, metavar='ID,ID',
                    help='SA-1B image ids, e.g. 12 (scans the split)')
  p.add_argument('--boxes', action='store_true', help="draw each mask's box")
  p.add_argument('--points', action='store_true',
                 help="draw each mask's prompt point")
  p.add_argument('--alpha', type=float, default=0.5,
                 help='mask opacity, 0-1 (default 0.5)')
  p.add_argument('--out', required=True, metavar='DIR', help='output dir')
  p.set_defaults(func=cmd_show, allow_leftover=False)
  return parser


def _version() -> str:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version('segment_anything_tfds')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit code (0 ok, 1 failure, 2 usage)."""
  parser = build_parser()
  try:
    args, leftover = parser.parse_known_args(argv)
    if leftover and not args.allow_leftover:
      parser.error(f'unrecognized arguments: {" ".join(leftover)}')
  except SystemExit as e:  # --help, --version and usage errors.
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  sub = parser._subparsers._group_actions[0].choices[args.command]  # pylint: disable=protected-access
  try:
    return args.func(args, leftover) or 0
  except BrokenPipeError:  # e.g. `| head`: the reader is gone; stay quiet.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
  except UsageError as e:
    sub.print_usage(sys.stderr)
    print(f'{PROG} {args.command}: error: {e}', file=sys.stderr)
    return 2
  except EXPECTED_ERRORS as e:
    if args.command == 'build':
      sys.stderr.write('\n')  # End TFDS's progress bar line.
    print(f'{PROG} {args.command}: error: {_first_line(e)}', file=sys.stderr)
    return 1
  except RuntimeError as e:
    message = _beam_wrapped(e)
    if message is None:
      raise
    print(f'{PROG} {args.command}: error: {message}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f'{PROG}: interrupted', file=sys.stderr)
    return 130


if __name__ == '__main__':
  sys.exit(main())
