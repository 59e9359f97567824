"""Where each SA-1B shard comes from: a local or remote tar, a folder, a URL.

`find_shards` looks in `manual_dir` for tars (`sa_NNNNNN.tar`), extracted
folders (`sa_NNNNNN/`) and the links file, and returns one `Shard` per tar
index. A tar present locally is read in place and never downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import BinaryIO, Sequence

from etils import epath

from segment_anything_tfds import links as links_lib

TAR = 'tar'
DIR = 'dir'
URL = 'url'


@dataclasses.dataclass(frozen=True)
class Shard:
  """One SA-1B shard.

  Attributes:
    name: the tar's name, e.g. `sa_000000.tar`.
    kind: `tar` (a tar file, local or `gs://`), `dir` (an extracted folder) or
      `url` (only listed in the links file).
    location: the path of the tar or folder, or the URL.
  """

  name: str
  kind: str
  location: str

  @property
  def index(self) -> int:
    return links_lib.shard_index(self.name)

  def open(self) -> BinaryIO:
    """Opens a tar for seekable binary reading, in place."""
    if self.kind != TAR:
      raise ValueError(f'{self.name}: cannot open a {self.kind} shard as a tar')
    if '://' not in self.location:
      return open(self.location, 'rb', buffering=1 << 20)
    return epath.Path(self.location).open('rb')


def find_shards(manual_dir: epath.PathLike) -> dict[int, Shard]:
  """All shards `manual_dir` offers, by tar index; local copies win."""
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.exists():
    raise FileNotFoundError(f'manual_dir {manual_dir} does not exist')
  found: dict[int, Shard] = {}
  links_path = manual_dir / links_lib.LINKS_FILE_NAME
  if links_path.exists():
    links = links_lib.read_links(links_path)
    if links.other:
      logging.info(
          '%s: ignoring %d rows that are not image shards: %s', links_path,
          len(links.other), ', '.join(sorted(links.other)))
    for name, url in links.shards.items():
      found[links_lib.shard_index(name)] = Shard(name, URL, url)
  for p in manual_dir.iterdir():
    if p.name.endswith('.tar') and p.is_file():
      index = links_lib.shard_index(p.name)
      kind = TAR
    elif p.is_dir():
      index = links_lib.shard_index(p.name + '.tar')
      kind = DIR
    else:
      continue
    if index is None:
      continue
    previous = found.get(index)
    if previous is not None and previous.kind == TAR:
      continue  # A tar beats a folder of the same shard.
    found[index] = Shard(links_lib.shard_name(index), kind, str(p))
  return dict(sorted(found.items()))


def select(
    shards: dict[int, Shard], *, num_tars: int | None, tars: Sequence[int] | None
) -> list[Shard]:
  """The shards a config asks for: the first `num_tars`, or explicit indices."""
  if tars is not None:
    missing = [i for i in tars if i not in shards]
    if missing:
      raise FileNotFoundError(
          f'tars {", ".join(links_lib.shard_name(i) for i in missing)} were'
          ' asked for but are neither in manual_dir nor in its links file')
    return [shards[i] for i in tars]
  chosen = list(shards.values())
  if num_tars is not None:
    if len(chosen) < num_tars:
      # A subset is "up to N": a partial download still builds. What was
      # built is listed in metadata.json (audit.tars).
      logging.warning(
          'This config takes the first %d tars, but manual_dir and its links'
          ' file offer only %d: building those.', num_tars, len(chosen))
    chosen = chosen[:num_tars]
  if not chosen:
    raise FileNotFoundError(
        'manual_dir holds no sa_NNNNNN.tar, no sa_NNNNNN/ folder and no'
        f' {links_lib.LINKS_FILE_NAME}')
  return chosen


def materialize(shards: Sequence[Shard], *, download_dir: epath.PathLike
                ) -> list[Shard]:
  """Makes every shard readable in place; URL-only shards are downloaded.

  Downloading lands with the sources work; until then a listed tar that is
  not local is an error that says which.
  """
  del download_dir
  remote = [s.name for s in shards if s.kind == URL]
  if remote:
    raise FileNotFoundError(
        f'{len(remote)} listed tars are not in manual_dir and downloading is'
        f' not available: {", ".join(remote[:5])}'
        + (' ...' if len(remote) > 5 else ''))
  return list(shards)
