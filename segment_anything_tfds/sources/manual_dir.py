"""SA-1B shards: what manual_dir offers, and which of them a config takes.

A shard is one tar's worth of images, read through a `Source` (base.py),
one class per kind:

  LocalTar, LocalFolder      a tar, or an extracted `sa_NNNNNN/` folder, on
                             this machine (local.py)
  BucketTar, BucketFolder    the same in a bucket: gs://, or any fsspec
                             protocol (bucket.py)
  HttpTar                    an http(s) link of the links file, or a tar
                             of a Hugging Face Hub folder (http_tar.py,
                             hub.py)

`find_shards` lists what manual_dir offers: its own `sa_NNNNNN.tar` files and
`sa_NNNNNN/` folders, then the links file's rows for the tars not there
(`tar_source` makes a row's source); for a manual_dir on the Hub
(`hf://datasets/OWNER/REPO[@REV][/PATH]`), the tars its folder lists
(`hub.list_tars`). `select` picks a config's tars.

The entries of manual_dir are the user's own choice, followed wherever they
lead: a symlink to a tar or a folder on another disk works, and so does a
manual_dir that is itself a symlink. Never used: a FIFO, socket or device,
even behind a symlink named `sa_000000.tar` (it is never opened), a broken
symlink, a file whose name does not end in `.tar`. These are `refused`, with
the reason. Inside an extracted folder the rule is stricter: a symlink out
of that folder's real path is refused (`local.list_folder`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from typing import Any, Sequence

from etils import epath

from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import http_tar
from segment_anything_tfds.sources import hub
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import paths
from segment_anything_tfds.sources.base import Source

_LOG = logging.getLogger(__name__)



def tar_source(name: str, location: str, *, known_size: int | None = None,
               options: Any = None, downloaded: bool = False) -> Source:
  """The source of the tar `name` at `location`: an http(s) URL
  (`HttpTar`, read with `options`), a bucket URI (`BucketTar`) or a local
  path (`LocalTar`; `downloaded`: in the download cache)."""
  if links_lib.is_http(location):
    return http_tar.HttpTar(name, location, known_size, options)
  if not paths.is_local(location):
    return bucket.BucketTar(name, location, known_size)
  return local.LocalTar(name, location, downloaded)


def folder_source(name: str, location: str) -> Source:
  """The source of the extracted folder of tar `name` at `location`."""
  if not paths.is_local(location):
    return bucket.BucketFolder(name, location)
  return local.LocalFolder(name, location)


@dataclasses.dataclass
class Found:
  """What manual_dir offers.

  Attributes:
    shards: tar index -> source; a tar or folder in manual_dir beats a link.
    refused: entries named like shards that are not used, and why (a FIFO,
      a broken symlink, ...).
    links_file: the links file read, if any.
  """

  shards: dict[int, Source]
  refused: dict[str, str] = dataclasses.field(default_factory=dict)
  links_file: str | None = None


def _local_entry(name: str, path: str) -> Source | str:
  """The source of an entry of a local manual_dir, or why it is refused.

  Symlinks are followed (the user put them there); only a regular file
  named `.tar` or a folder is used, and anything else is never opened.
  """
  index = _entry_index(name)
  try:
    st = os.stat(path)
  except OSError as e:
    broken = os.path.islink(path)
    return f'{"a broken symlink" if broken else "unreadable"} ({e.strerror})'
  if stat.S_ISDIR(st.st_mode):
    return local.LocalFolder(links_lib.shard_name(index), path)
  if not stat.S_ISREG(st.st_mode):
    return (f'a {local.file_kind(st.st_mode)}, not a regular file or folder;'
            ' it is never opened')
  if not name.endswith('.tar'):
    return 'a file, not a tar (sa_NNNNNN.tar) or folder (sa_NNNNNN/)'
  return local.LocalTar(links_lib.shard_name(index), path)


def _bucket_entry(name: str, uri: str, kind: str,
                  size: int | None) -> Source | str:
  """The source of an entry of a manual_dir in a bucket, or why not."""
  index = _entry_index(name)
  if kind == 'directory':
    return bucket.BucketFolder(links_lib.shard_name(index), uri)
  if not name.endswith('.tar'):
    return 'a file, not a tar (sa_NNNNNN.tar) or folder (sa_NNNNNN/)'
  return bucket.BucketTar(links_lib.shard_name(index), uri, size)


def _entry_index(name: str) -> int | None:
  """12 for `sa_000012.tar` or `sa_000012`; None for other names."""
  return links_lib.shard_index(name if name.endswith('.tar') else
                               name + '.tar')


def _entries(manual_dir: str) -> list[tuple[str, Source | str]]:
  """(name, source or why refused) of the entries named like shards."""
  if paths.is_local(manual_dir):
    try:
      names = sorted(os.listdir(manual_dir))
    except OSError as e:
      raise errors.SourceError(
          f'cannot list manual_dir {manual_dir}: {e.strerror}') from None
    return [(n, _local_entry(n, os.path.join(manual_dir, n)))
            for n in names if _entry_index(n) is not None]
  root = manual_dir.rstrip('/')
  return [(n, _bucket_entry(n, f'{root}/{n}', kind, size))
          for n, kind, size in bucket.list_dir(manual_dir)
          if _entry_index(n) is not None]


def local_shards(manual_dir: epath.PathLike) -> Found:
  """The tars and `sa_NNNNNN/` folders in manual_dir itself, by tar index.

  A tar beats a folder of the same shard. Rows of the links file are not
  included, even when they point at a path or a bucket.
  """
  found = Found({})
  for name, entry in _entries(os.fspath(manual_dir)):
    if isinstance(entry, str):
      found.refused[name] = entry
      continue
    previous = found.shards.get(entry.tar_index)
    if previous is not None and not previous.folder:
      continue  # A tar beats a folder of the same shard.
    found.shards[entry.tar_index] = entry
  return found


def _link_source(name: str, url: str, links_dir: str) -> Source:
  """A links-file row: a relative path is relative to manual_dir."""
  if paths.is_local(url) and not os.path.isabs(url):
    url = os.fspath(epath.Path(links_dir) / url)
  return tar_source(name, url)


def _is_dir(path: str) -> bool:
  if paths.is_local(path):
    return os.path.isdir(path)
  fs, inside = bucket.filesystem(path)  # Says if nothing reads the scheme.
  try:
    return fs.isdir(inside)
  except Exception:  # pylint: disable=broad-except
    return False  # fsspec's backends raise their own types.


def find_shards(manual_dir: epath.PathLike) -> Found:
  """All shards manual_dir offers, by tar index; local copies win."""
  manual_dir = os.fspath(manual_dir)
  if hub.is_hub_uri(manual_dir):
    listing = hub.list_tars(manual_dir)
    _LOG.info('%s: %d tars at commit %s', manual_dir, len(listing.shards),
              listing.commit)
    return Found(dict(sorted(listing.shards.items())), listing.refused)
  if not _is_dir(manual_dir):
    raise errors.SourceError(
        f'manual_dir {manual_dir} does not exist or is not a directory: give'
        ' the dir holding the tars, sa_NNNNNN/ folders and/or'
        f' {links_lib.LINKS_FILE_NAME}')
  found = local_shards(manual_dir)
  for name, why in found.refused.items():
    _LOG.warning('%s: %s is %s; not used', manual_dir, name, why)
  links_path = epath.Path(manual_dir) / links_lib.LINKS_FILE_NAME
  if links_path.exists():
    found.links_file = os.fspath(links_path)
    links = links_lib.read_links(links_path)
    if links.other:
      _LOG.info(
          '%s: ignoring %d rows that are not SA-1B image tars'
          ' (sa_NNNNNN.tar): %s', links_path, len(links.other),
          ', '.join(sorted(links.other)))
    for name, url in links.shards.items():
      index = links_lib.shard_index(name)
      if index not in found.shards:  # What manual_dir holds wins.
        found.shards[index] = _link_source(name, url, manual_dir)
  found.shards = dict(sorted(found.shards.items()))
  return found


def select(
    shards: dict[int, Source], *, num_tars: int | None,
    tars: Sequence[int] | None, allow_partial: bool = False,
    config_name: str = 'this config', refused: dict[str, str] | None = None,
) -> list[Source]:
  """The shards a config asks for: the first `num_tars`, or explicit indices.

  A config holds exactly what it names. With fewer tars offered than it
  needs, this fails listing the missing ones and how to go on, unless
  `allow_partial` (then the partial set is built and recorded). Errors name
  the entries of manual_dir that were `refused` (e.g. a FIFO).
  """
  refused_note = ''
  if refused:
    refused_note = ' (not used from manual_dir: ' + '; '.join(
        f'{name}: {why}' for name, why in sorted(refused.items())[:3]) + (
            ' ...' if len(refused) > 3 else '') + ')'

  if tars is not None:
    missing = [i for i in tars if i not in shards]
    if missing:
      raise errors.SourceError(
          f'tars {_names(missing)} were asked for but are neither in'
          f' manual_dir nor in its links file{refused_note}')
    return [shards[i] for i in tars]
  chosen = list(shards.values())
  if num_tars is not None:
    if len(chosen) < num_tars:
      have = [s.tar_index for s in chosen]
      missing = [i for i in range(num_tars) if i not in shards][
          :num_tars - len(chosen)]
      if not allow_partial:
        hint = (f' build what you have with tars_config('
                f'\'{_spec(have)}\') (--tars {_spec(have)}),' if have else '')
        raise errors.SourceError(
            f'{config_name} takes {num_tars} tars but manual_dir and its links'
            f' file offer {len(chosen)}; missing: {_names(missing)}. To go'
            ' on: put those tars (or a links file listing them) in'
            f' manual_dir;{hint} or pass allow_partial=True'
            ' (--allow_partial) to build a partial set, recorded in the'
            f' metadata and warned about on every load{refused_note}')
      _LOG.warning('%s takes %d tars; building the %d offered'
                   ' (allow_partial): missing %s', config_name, num_tars,
                   len(chosen), _names(missing))
    chosen = chosen[:num_tars]
  if not chosen:
    raise errors.SourceError(
        'manual_dir holds no sa_NNNNNN.tar, no sa_NNNNNN/ folder and no'
        f' {links_lib.LINKS_FILE_NAME}{refused_note}')
  return chosen


def _names(indices: Sequence[int], limit: int = 6) -> str:
  names = [links_lib.shard_name(i) for i in indices]
  if len(names) > limit:
    return f'{", ".join(names[:limit - 1])}, ... {names[-1]} ({len(names)})'
  return ', '.join(names)


def _spec(indices: Sequence[int]) -> str:
  return config_lib.format_tar_spec(indices)
