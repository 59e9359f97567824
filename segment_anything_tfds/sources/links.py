"""The SA-1B links file: `segment_anything_links.txt`, TSV `file_name\tcdn_link`.

Only `sa_NNNNNN.tar` rows are image shards; other rows (`sa_images_ids.txt`,
other files) are reported and ignored. A link may be a signed CDN URL (its
`oe=` parameter is its expiry, a hex unix time), any http(s) mirror, a
`gs://` object or a local path.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import urllib.parse

from etils import epath
import urllib3

from segment_anything_tfds import errors

LINKS_FILE_NAME = errors.LINKS_FILE_NAME
HEADER = ('file_name', 'cdn_link')
# Schemes a link may use; a link without a scheme is a local path.
URL_SCHEMES = ('http', 'https', 'gs')
HTTP_SCHEMES = ('http', 'https')
_SHARD_RE = re.compile(r'sa_([0-9]{6})\.tar')
_SCHEME_RE = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def shard_index(name: str) -> int | None:
  """`sa_000042.tar` -> 42; None for any other name."""
  m = _SHARD_RE.fullmatch(name)
  return int(m.group(1)) if m else None


def shard_name(index: int) -> str:
  return f'sa_{index:06d}.tar'


def scheme(url: str) -> str | None:
  """`https://x/y` -> 'https'; None for a local path."""
  m = _SCHEME_RE.match(url)
  return m.group(1).lower() if m else None


def is_http(url: str) -> bool:
  return scheme(url) in HTTP_SCHEMES


_DEFAULT_PORTS = {'http': 80, 'https': 443}


def origin(url: str) -> tuple[str, str, int | None] | None:
  """(scheme, host, port) of a URL, the default port filled in; None if it
  has no host. Credentials are sent by origin (`http.Client`).

  The URL is read by urllib3's parser, the one requests connects by: the
  stdlib's `urlsplit` reads some URLs otherwise (`http://a\\@b/` is host
  `a` to urllib3, `b` to `urlsplit`), and an origin must be where the
  request goes.
  """
  try:
    parts = urllib3.util.parse_url(url)
  except ValueError:
    return None
  scheme = (parts.scheme or '').lower()
  if not parts.host:
    return None
  return scheme, parts.host.lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def same_origin(a: str, b: str) -> bool:
  """Whether two URLs have one origin (False if either has none)."""
  here = origin(a)
  return here is not None and here == origin(b)


def expiry(url: str) -> int | None:
  """The unix time a signed CDN link expires (its `oe=` hex), or None."""
  if not is_http(url):
    return None
  query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
  values = query.get('oe')
  if not values:
    return None
  try:
    return int(values[0], 16)
  except ValueError:
    return None


def format_time(unix: float) -> str:
  return datetime.datetime.fromtimestamp(
      unix, tz=datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def redact(url: str) -> str:
  """A URL for messages and logs: without its query (signatures) and
  without a user or password before its host."""
  if not is_http(url):
    return url
  parts = urllib.parse.urlsplit(url)
  return urllib.parse.urlunsplit(
      (parts.scheme, parts.netloc.rsplit('@', 1)[-1], parts.path,
       '...' if parts.query else '', ''))


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of the links file with two columns, where it is."""

  lineno: int
  name: str
  url: str


@dataclasses.dataclass(frozen=True)
class Problem:
  """A row the builder refuses.

  Attributes:
    lineno: the line, counted from 1.
    kind: 'columns' (not two tab-separated columns), 'url' (a link that
      does not parse as a URL), 'scheme' (an unsupported URL scheme) or
      'duplicate' (a name listed again).
    message: the one-line error, `file:line: ...`, as `parse_links` raises it.
  """

  lineno: int
  kind: str
  message: str


@dataclasses.dataclass(frozen=True)
class Links:
  """A parsed links file.

  Attributes:
    shards: tar name -> URL, image shards only (the first row of a name).
    other: rows that are not image shards, reported.
    source: the file, for messages.
    rows: every row with two columns, in file order, duplicates included.
    problems: what the builder refuses, in file order (only a tolerant
      parse returns any; a strict one raises the first).
  """

  shards: dict[str, str]
  other: dict[str, str]
  source: str = LINKS_FILE_NAME
  rows: tuple[Row, ...] = ()
  problems: tuple[Problem, ...] = ()


def _numbered_lines(text: str) -> list[tuple[int, str]]:
  """(line number, line) of the non-blank lines; a UTF-8 BOM is dropped."""
  if text.startswith('\ufeff'):
    text = text[1:]
  return [(i, l.rstrip('\r\n')) for i, l in
          enumerate(text.splitlines(), start=1) if l.strip()]


def _check_header(numbered: list[tuple[int, str]], source: str) -> None:
  if not numbered:
    raise errors.LinksError(
        f'{source}: the links file is empty; download it again from'
        f' {errors.HOMEPAGE} (a TSV with the header file_name<TAB>cdn_link)')
  first_no, first = numbered[0]
  header = tuple(c.strip() for c in first.split('\t'))
  if header == HEADER:
    return
  hint = ''
  if scheme(first.split('\t')[-1].strip()) or shard_index(
      first.split('\t')[0].strip()) is not None:
    hint = ' (the header row is missing: add it as the first line)'
  elif len(header) != 2:
    hint = (f' (found {len(header)} column(s); columns must be separated by'
            ' a TAB)')
  raise errors.LinksError(
      f'{source}:{first_no}: expected the header'
      f' "{HEADER[0]}<TAB>{HEADER[1]}", got {first!r:.120}{hint}')


def _parse_row(lineno: int, line: str, source: str
               ) -> tuple[Row | None, Problem | None]:
  """A row, and what is wrong with it on its own (columns, scheme)."""
  cols = line.split('\t')
  if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
    return None, Problem(lineno, 'columns', (
        f'{source}:{lineno}: expected 2 tab-separated columns (file_name,'
        f' cdn_link), got {len(cols)}: {line!r:.120}'))
  row = Row(lineno, cols[0].strip(), cols[1].strip())
  s = scheme(row.url)
  if s is not None:
    try:
      _ = urllib.parse.urlsplit(row.url).port  # Raises if no URL.
    except ValueError as e:
      return None, Problem(lineno, 'url', (
          f'{source}:{lineno}: {row.name}: not a usable URL ({e}):'
          f' {row.url.split("?", 1)[0]!r:.120}'))
  if s is not None and s not in URL_SCHEMES:
    return row, Problem(lineno, 'scheme', (
        f'{source}:{lineno}: {row.name}: unsupported URL scheme {s}:// in'
        f' {redact(row.url)!r}; links must be http://, https://, gs:// or'
        ' local paths'))
  return row, None


def _duplicate(row: Row, table: dict[str, str], first_line: dict[str, int],
               source: str) -> Problem | None:
  if row.name not in table:
    return None
  what = ('listed twice' if table[row.name] == row.url else
          'listed twice with different URLs')
  return Problem(row.lineno, 'duplicate', (
      f'{source}:{row.lineno}: {row.name} is {what} (first on line'
      f' {first_line[row.name]}); keep one row per file'))


def parse_links(text: str, *, source: str = LINKS_FILE_NAME,
                strict: bool = True) -> Links:
  """Parses the links file's text.

  Args:
    text: the file's text.
    source: the file, for messages.
    strict: raise at the first problem (the builder); with False, every
      problem of a row is listed in `Links.problems` instead (`check-links`).
      A file without the header is refused either way.

  Raises:
    errors.LinksError: naming the file, the line and the problem:
      an empty file, a missing or wrong header; and when strict, a row
      without exactly two tab-separated columns, a name listed twice (same
      or different URLs), a link that is no URL (`http://[::1/x`), a URL
      with an unsupported scheme.
  """
  numbered = _numbered_lines(text)
  _check_header(numbered, source)
  shards: dict[str, str] = {}
  other: dict[str, str] = {}
  first_line: dict[str, int] = {}
  rows: list[Row] = []
  problems: list[Problem] = []
  for lineno, line in numbered[1:]:
    row, problem = _parse_row(lineno, line, source)
    if row is not None:
      rows.append(row)
      table = shards if shard_index(row.name) is not None else other
      problem = problem or _duplicate(row, table, first_line, source)
      if problem is None:
        table[row.name] = row.url
        first_line[row.name] = lineno
    if problem is not None:
      if strict:
        raise errors.LinksError(problem.message)
      problems.append(problem)
  return Links(shards=shards, other=other, source=source, rows=tuple(rows),
               problems=tuple(problems))


# The real links file is ≈130 kB; anything far larger is not one.
MAX_LINKS_FILE_BYTES = 16 << 20


def read_links(path: epath.PathLike, *, strict: bool = True) -> Links:
  """Reads and parses a links file (at most `MAX_LINKS_FILE_BYTES`).

  `strict` is `parse_links`'s: False lists the problems of rows instead of
  raising the first.
  """
  path = epath.Path(path)
  try:
    with path.open('rb') as f:
      data = f.read(MAX_LINKS_FILE_BYTES + 1)
  except (OSError, IsADirectoryError) as e:
    raise errors.LinksError(f'{path}: cannot read the links file: {e}'
                            ) from None
  if len(data) > MAX_LINKS_FILE_BYTES:
    raise errors.LinksError(
        f'{path}: over {MAX_LINKS_FILE_BYTES >> 20} MiB: not an SA-1B links'
        ' file (the real one is about 130 kB)')
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise errors.LinksError(
        f'{path}: not UTF-8 text at byte {e.start}: not a links file'
    ) from None
  return parse_links(text, source=str(path), strict=strict)
