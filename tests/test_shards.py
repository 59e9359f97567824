"""Finding shards in manual_dir, choosing a config's, and opening them."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.prepare import tars as tars_lib

from conftest import make_manual_dir

DUMMY = pathlib.Path(__file__).resolve().parent.parent / 'dummy_data'
TAR0 = (DUMMY / 'sa_000000.tar').read_bytes()


def test_find_shards_precedence(tmp_path):
  m = make_manual_dir(tmp_path, rows=[
      ('sa_000000.tar', 'https://x/sa_000000.tar'),
      ('sa_000001.tar', 'gs://bucket/sa_000001.tar'),
      ('sa_000002.tar', 'rel/sa_000002.tar'),
      ('sa_000005.tar', 'https://x/sa_000005.tar'),
      ('sa_images_ids.txt', 'https://x/ids'),
  ], tars=['sa_000000.tar'])
  shutil.copytree(DUMMY / 'sa_000003', m / 'sa_000003')
  (m / 'sa_000005').mkdir()  # A folder and its tar: the tar wins.
  shutil.copy(DUMMY / 'sa_000001.tar', m / 'sa_000005.tar')
  (m / 'notes.tar').write_bytes(b'')
  found = shards.find_shards(m).shards
  assert {i: (s.kind, s.location) for i, s in found.items()} == {
      0: ('tar', os.fspath(m / 'sa_000000.tar')),  # Local beats its link.
      1: ('tar', 'gs://bucket/sa_000001.tar'),  # Read in place, no copy.
      2: ('tar', os.fspath(m / 'rel/sa_000002.tar')),
      3: ('dir', os.fspath(m / 'sa_000003')),
      5: ('tar', os.fspath(m / 'sa_000005.tar')),
  }


def test_find_shards_errors(tmp_path):
  with pytest.raises(errors.SourceError, match='does not exist'):
    shards.find_shards(tmp_path / 'nope')
  m = make_manual_dir(tmp_path, rows=[('sa_000000.tar', 'ftp://x/a')])
  with pytest.raises(errors.LinksError, match='ftp://'):
    shards.find_shards(m)


def test_select():
  offered = {i: shards.Shard(links_lib.shard_name(i), 'url', f'https://x/{i}')
             for i in (0, 1, 5)}
  assert [s.index for s in shards.select(offered, num_tars=2, tars=None)] == [
      0, 1]
  assert [s.index for s in shards.select(offered, num_tars=None, tars=(5,))
          ] == [5]
  with pytest.raises(errors.SourceError, match='sa_000002.tar'):
    shards.select(offered, num_tars=None, tars=(2,))
  # A named config holds what it names: fewer tars fail, listing the
  # missing ones, unless a partial set is allowed.
  with pytest.raises(errors.SourceError, match=r'config first_4 takes 4 tars'
                     r' .* offer 3; missing: sa_000002.tar\. .*'
                     r"tars_config\('0-1,5'\).*allow_partial"):
    shards.select(offered, num_tars=4, tars=None, config_name='config first_4')
  assert len(shards.select(offered, num_tars=4, tars=None,
                           allow_partial=True)) == 3
  with pytest.raises(errors.SourceError, match='no sa_NNNNNN.tar'):
    shards.select({}, num_tars=None, tars=None)


def test_remote_path_shard_opens_in_place(tmp_path):
  import _ram_epath  # pylint: disable=g-import-not-at-top
  _ram_epath.enable()
  root = f'ram://src-{os.getpid()}/m'
  _ram_epath.upload(os.fspath(DUMMY / 'sa_000000.tar'), f'{root}/sa_000000.tar')
  try:
    [shard] = shards.find_shards(root).shards.values()
    assert shard.kind == 'tar' and shard.location.startswith('ram://')
    with shard.open() as f:
      f.seek(0, os.SEEK_END)
      assert f.tell() == len(TAR0)
      f.seek(0)
      members, damage = tars_lib.index_members(f, tar=shard.name)
      assert damage is None
      m = members[-1]
      assert tars_lib.read_member(f, m, tar=shard.name) == TAR0[
          m.offset:m.offset + m.size]
  finally:
    _ram_epath.rmtree(root)


def test_refused_entries_are_named_when_nothing_is_left(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  shutil.copy(DUMMY / 'sa_000000.tar', elsewhere / 'sa_000000.tar')
  (manual / 'sa_000000.tar').symlink_to(elsewhere / 'sa_000000.tar')
  found = shards.find_shards(manual)
  with pytest.raises(errors.SourceError, match=r'no sa_NNNNNN.tar.*not used'
                     r' from manual_dir: sa_000000.tar: a symlink out of'
                     r' manual_dir'):
    shards.select(found.shards, num_tars=None, tars=None,
                  refused=found.refused)
