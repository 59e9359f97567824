"""The SA-1B links file: `segment_anything_links.txt`, TSV `file_name\tcdn_link`.

Only `sa_NNNNNN.tar` rows are image shards; other rows (`sa_images_ids.txt`,
other tars) are reported and ignored.
"""

from __future__ import annotations

import dataclasses
import re

from etils import epath

LINKS_FILE_NAME = 'segment_anything_links.txt'
HEADER = ('file_name', 'cdn_link')
_SHARD_RE = re.compile(r'^sa_(\d{6})\.tar$')


def shard_index(name: str) -> int | None:
  """`sa_000042.tar` -> 42; None for any other name."""
  m = _SHARD_RE.match(name)
  return int(m.group(1)) if m else None


def shard_name(index: int) -> str:
  return f'sa_{index:06d}.tar'


@dataclasses.dataclass(frozen=True)
class Links:
  """A parsed links file."""

  shards: dict[str, str]  # Tar name -> URL, image shards only.
  other: dict[str, str]  # Rows that are not image shards.


def parse_links(text: str, *, source: str = LINKS_FILE_NAME) -> Links:
  """Parses the links file's text. Raises ValueError naming line and problem."""
  lines = [l for l in text.splitlines() if l.strip()]
  if not lines:
    raise ValueError(f'{source}: the links file is empty')
  header = tuple(c.strip() for c in lines[0].split('\t'))
  if header != HEADER:
    raise ValueError(
        f'{source}:1: expected the header {"<TAB>".join(HEADER)!r}, got'
        f' {lines[0]!r:.120}')
  shards: dict[str, str] = {}
  other: dict[str, str] = {}
  for lineno, line in enumerate(lines[1:], start=2):
    cols = line.rstrip('\r\n').split('\t')
    if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
      raise ValueError(
          f'{source}:{lineno}: expected 2 tab-separated columns (file_name,'
          f' cdn_link), got {line!r:.120}')
    name, url = cols[0].strip(), cols[1].strip()
    table = shards if shard_index(name) is not None else other
    if name in table:
      if table[name] == url:
        raise ValueError(f'{source}:{lineno}: {name} is listed twice')
      raise ValueError(
          f'{source}:{lineno}: {name} is listed twice with different URLs')
    table[name] = url
  return Links(shards=shards, other=other)


def read_links(path: epath.PathLike) -> Links:
  path = epath.Path(path)
  return parse_links(path.read_text(), source=str(path))
