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

from segment_anything_tfds import errors

LINKS_FILE_NAME = errors.LINKS_FILE_NAME
HEADER = ('file_name', 'cdn_link')
HOMEPAGE = errors.HOMEPAGE
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
  """A URL without its query (signatures) for messages and logs."""
  if not is_http(url):
    return url
  parts = urllib.parse.urlsplit(url)
  return urllib.parse.urlunsplit(
      (parts.scheme, parts.netloc, parts.path, '...' if parts.query else '',
       ''))


@dataclasses.dataclass(frozen=True)
class Links:
  """A parsed links file."""

  shards: dict[str, str]  # Tar name -> URL, image shards only.
  other: dict[str, str]  # Rows that are not image shards, reported.
  source: str = LINKS_FILE_NAME


def parse_links(text: str, *, source: str = LINKS_FILE_NAME) -> Links:
  """Parses the links file's text.

  Raises:
    errors.LinksError: naming the file, the line and the problem:
      an empty file, a missing or wrong header, a row without exactly two
      tab-separated columns, a name listed twice (same or different URLs), a
      URL with an unsupported scheme.
  """
  if text.startswith('\ufeff'):
    text = text[1:]
  numbered = [(i, l.rstrip('\r\n')) for i, l in
              enumerate(text.splitlines(), start=1) if l.strip()]
  if not numbered:
    raise errors.LinksError(
        f'{source}: the links file is empty; download it again from'
        f' {HOMEPAGE} (a TSV with the header file_name<TAB>cdn_link)')
  first_no, first = numbered[0]
  header = tuple(c.strip() for c in first.split('\t'))
  if header != HEADER:
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
  shards: dict[str, str] = {}
  other: dict[str, str] = {}
  lines_of: dict[str, int] = {}
  for lineno, line in numbered[1:]:
    cols = line.split('\t')
    if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
      raise errors.LinksError(
          f'{source}:{lineno}: expected 2 tab-separated columns (file_name,'
          f' cdn_link), got {len(cols)}: {line!r:.120}')
    name, url = cols[0].strip(), cols[1].strip()
    s = scheme(url)
    if s is not None and s not in URL_SCHEMES:
      raise errors.LinksError(
          f'{source}:{lineno}: {name}: unsupported URL scheme {s}:// in'
          f' {redact(url)!r}; links must be http://, https://, gs:// or local'
          ' paths')
    table = shards if shard_index(name) is not None else other
    if name in table:
      what = ('listed twice' if table[name] == url else
              'listed twice with different URLs')
      raise errors.LinksError(
          f'{source}:{lineno}: {name} is {what} (first on line'
          f' {lines_of[name]}); keep one row per file')
    table[name] = url
    lines_of[name] = lineno
  return Links(shards=shards, other=other, source=source)


# The real links file is ≈130 kB; anything far larger is not one.
MAX_LINKS_FILE_BYTES = 16 << 20


def read_links(path: epath.PathLike) -> Links:
  """Reads and parses a links file (at most `MAX_LINKS_FILE_BYTES`)."""
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
  return parse_links(text, source=str(path))
