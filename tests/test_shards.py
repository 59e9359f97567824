"""Finding shards in manual_dir, choosing a config's, and what is refused.

manual_dir's own entries (a tar, an `sa_NNNNNN/` folder, manual_dir itself)
are the user's choice and are followed wherever they lead, so the layouts
people make by hand (symlinked tars, a symlinked manual_dir, a symlinked
extracted folder) build. FIFOs, sockets and devices are never opened, and
inside an extracted folder no symlink leads out of that folder.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.sources.http_tar import HttpTar
from segment_anything_tfds.tools import fake_data

from conftest import DUMMY_DATA
from conftest import built_images
from conftest import make_manual_dir
from conftest import read_inputs
from _loopback_server import within

DUMMY = pathlib.Path(DUMMY_DATA)
SHARDS = ['sa_000000.tar', 'sa_000001.tar', 'sa_000002.tar', 'sa_000003']


def test_find_shards_precedence(tmp_path):
  m = make_manual_dir(tmp_path, rows=[
      ('sa_000000.tar', 'https://x/sa_000000.tar'),
      ('sa_000001.tar', 'gs://bucket/sa_000001.tar'),
      ('sa_000002.tar', 'rel/sa_000002.tar'),
      ('sa_000005.tar', 'https://x/sa_000005.tar'),
      ('sa_000006.tar', 'https://x/sa_000006.tar?oh=SIG'),
      ('sa_images_ids.txt', 'https://x/ids'),
  ], tars=['sa_000000.tar'])
  shutil.copytree(DUMMY / 'sa_000003', m / 'sa_000003')
  (m / 'sa_000005').mkdir()  # A folder and its tar: the tar wins.
  shutil.copy(DUMMY / 'sa_000001.tar', m / 'sa_000005.tar')
  (m / 'notes.tar').write_bytes(b'')
  found = shards.find_shards(m).shards
  assert found == {
      0: local.LocalTar('sa_000000.tar', os.fspath(m / 'sa_000000.tar')),
      1: bucket.BucketTar('sa_000001.tar', 'gs://bucket/sa_000001.tar'),
      2: local.LocalTar('sa_000002.tar', os.fspath(m / 'rel/sa_000002.tar')),
      3: local.LocalFolder('sa_000003.tar', os.fspath(m / 'sa_000003')),
      5: local.LocalTar('sa_000005.tar', os.fspath(m / 'sa_000005.tar')),
      6: HttpTar('sa_000006.tar', 'https://x/sa_000006.tar?oh=SIG'),
  }
  assert [(s.remote, s.folder, s.downloaded) for s in found.values()] == [
      (False, False, False), (True, False, False), (False, False, False),
      (False, True, False), (False, False, False), (True, False, False)]
  assert found[6].where == 'https://x/sa_000006.tar?...'  # No signature.


def test_find_shards_errors(tmp_path):
  with pytest.raises(errors.SourceError, match='does not exist'):
    shards.find_shards(tmp_path / 'nope')
  m = make_manual_dir(tmp_path, rows=[('sa_000000.tar', 'ftp://x/a')])
  with pytest.raises(errors.LinksError, match='ftp://'):
    shards.find_shards(m)


def test_select():
  offered = {i: HttpTar(links_lib.shard_name(i), f'https://x/{i}')
             for i in (0, 1, 5)}
  assert [s.tar_index for s in shards.select(offered, num_tars=2, tars=None)
          ] == [0, 1]
  assert [s.tar_index for s in shards.select(offered, num_tars=None,
                                             tars=(5,))] == [5]
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


def test_a_bucket_manual_dir_is_listed_with_its_sizes(tmp_path):
  import _ram_epath  # pylint: disable=g-import-not-at-top
  _ram_epath.enable()
  root = f'ram://src-{os.getpid()}/m'
  _ram_epath.upload(os.fspath(DUMMY / 'sa_000000.tar'), f'{root}/sa_000000.tar')
  for f in (DUMMY / 'sa_000003').iterdir():
    _ram_epath.upload(os.fspath(f), f'{root}/sa_000003/{f.name}')
  _ram_epath.upload(os.fspath(DUMMY / 'sa_000001.tar'), f'{root}/sa_000004')
  try:
    found = shards.find_shards(root)
    del _ram_epath.RamFileSystem.reads[:]
    assert found.shards == {
        0: bucket.BucketTar('sa_000000.tar', f'{root}/sa_000000.tar'),
        3: bucket.BucketFolder('sa_000003.tar', f'{root}/sa_000003')}
    assert found.refused == {'sa_000004': 'a file, not a tar (sa_NNNNNN.tar)'
                                          ' or folder (sa_NNNNNN/)'}
    tar, folder = found.shards.values()
    assert tar.size() == (DUMMY / 'sa_000000.tar').stat().st_size
    assert _ram_epath.RamFileSystem.reads == []  # The listing said it.
    members = folder.list_members()
    assert {m.name: m.size for m in members} == {
        f.name: f.stat().st_size for f in (DUMMY / 'sa_000003').iterdir()}
    assert [folder.read_member(m) for m in members] == [
        (DUMMY / 'sa_000003' / m.name).read_bytes() for m in members]
  finally:
    _ram_epath.rmtree(root)


# ------------------------------------------------- layouts made by hand


def _elsewhere(tmp_path: pathlib.Path) -> pathlib.Path:
  """The dummy shards on 'another disk': a dir outside manual_dir."""
  other = tmp_path / 'bigdisk'
  other.mkdir()
  for name in SHARDS:
    if name.endswith('.tar'):
      shutil.copy(DUMMY / name, other / name)
    else:
      shutil.copytree(DUMMY / name, other / name)
  return other


def _symlinked_tars(tmp_path: pathlib.Path) -> pathlib.Path:
  """`ln -s /bigdisk/sa_*.tar manual/`, and a folder copied there."""
  other = _elsewhere(tmp_path)
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in SHARDS:
    if name.endswith('.tar'):
      (manual / name).symlink_to(other / name)
    else:
      shutil.copytree(other / name, manual / name)
  return manual


def _symlinked_manual_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  """`ln -s /bigdisk manual`."""
  manual = tmp_path / 'manual'
  manual.symlink_to(_elsewhere(tmp_path), target_is_directory=True)
  return manual


def _symlinked_folder(tmp_path: pathlib.Path) -> pathlib.Path:
  """`ln -s /bigdisk/sa_000003 manual/`, tars copied there; the folder's
  files are symlinks too, within it (relative to its real path)."""
  other = _elsewhere(tmp_path)
  folder = other / 'sa_000003'
  (folder / 'originals').mkdir()
  for f in sorted(folder.glob('sa_*')):
    f.rename(folder / 'originals' / f'image{f.name}')  # Not sa_*: ignored.
    f.symlink_to(pathlib.Path('originals') / f'image{f.name}')
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in SHARDS:
    if name.endswith('.tar'):
      shutil.copy(other / name, manual / name)
  (manual / 'sa_000003').symlink_to(folder, target_is_directory=True)
  return manual


def _build(manual: pathlib.Path, data_dir: pathlib.Path, **kw):
  builder = tfds.builder('segment_anything',
                         config=config_lib.tars_config('0-3'),
                         data_dir=os.fspath(data_dir), workers=1, **kw)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual)))
  return builder


@pytest.mark.parametrize('layout', [_symlinked_tars, _symlinked_manual_dir,
                                    _symlinked_folder])
def test_layouts_made_by_hand_build_every_image(layout, tmp_path):
  manual = layout(tmp_path)
  found = shards.find_shards(manual)
  assert found.refused == {}
  assert sorted(found.shards) == [0, 1, 2, 3]
  builder = _build(manual, tmp_path / 'data')
  expected = {i: (jpg, tuple(a['segmentation']['counts']
                             for a in js['annotations']))
              for i, (jpg, js) in read_inputs(DUMMY).items()}
  assert built_images(builder) == expected


def test_special_entries_of_manual_dir_are_refused_never_opened(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  other = _elsewhere(tmp_path)
  (manual / 'sa_000001.tar').symlink_to(other / 'sa_000001.tar')  # Used.
  (manual / 'sa_000002').symlink_to(other / 'sa_000003')  # Used.
  (manual / 'sa_000003.tar').symlink_to('/etc/hostname')  # Used: yours.
  os.mkfifo(manual / 'sa_000004.tar')  # Opening it would block.
  os.mkfifo(other / 'fifo')
  (manual / 'sa_000005.tar').symlink_to(other / 'fifo')
  (manual / 'sa_000006.tar').symlink_to('/dev/zero')  # Endless.
  (manual / 'sa_000007.tar').symlink_to(other / 'gone.tar')
  shutil.copy(DUMMY / 'sa_000000.tar', manual / 'sa_000008')  # No .tar.
  found = within(30, shards.find_shards, manual)
  assert found.shards == {
      1: local.LocalTar('sa_000001.tar', os.fspath(manual / 'sa_000001.tar')),
      2: local.LocalFolder('sa_000002.tar', os.fspath(manual / 'sa_000002')),
      3: local.LocalTar('sa_000003.tar', os.fspath(manual / 'sa_000003.tar')),
  }
  never = 'not a regular file or folder; it is never opened'
  assert found.refused == {
      'sa_000004.tar': f'a FIFO, {never}',
      'sa_000005.tar': f'a FIFO, {never}',
      'sa_000006.tar': f'a character device, {never}',
      'sa_000007.tar': 'a broken symlink (No such file or directory)',
      'sa_000008': 'a file, not a tar (sa_NNNNNN.tar) or folder (sa_NNNNNN/)',
  }
  # A FIFO given by path (a links-file row) is refused when read, unopened.
  fifo = local.LocalTar('sa_000004.tar', os.fspath(manual / 'sa_000004.tar'))
  for read in (fifo.open_random, fifo.open_sequential):
    with pytest.raises(errors.SourceError, match=r'sa_000004.tar: .* is a'
                       ' FIFO, not a regular file; it is never read'):
      within(30, read)


def test_refused_entries_are_named_when_nothing_is_left(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  os.mkfifo(manual / 'sa_000000.tar')
  found = shards.find_shards(manual)
  with pytest.raises(errors.SourceError, match=r'no sa_NNNNNN.tar.*not used'
                     r' from manual_dir: sa_000000.tar: a FIFO, not a regular'
                     ' file'):
    shards.select(found.shards, num_tars=None, tars=None,
                  refused=found.refused)


# ------------------------------------------ inside an extracted folder


def _pair_files(folder: pathlib.Path, image_id: int, rng) -> tuple[bytes,
                                                                    bytes]:
  jpg, js = fake_data.image_record(rng, image_id, height=8, width=6,
                                   num_masks=1)
  (folder / f'sa_{image_id}.jpg').write_bytes(jpg)
  (folder / f'sa_{image_id}.json').write_bytes(js)
  return jpg, js


def _hostile_folder(tmp_path: pathlib.Path) -> pathlib.Path:
  """An extracted folder with every way out, next to manual_dir's files."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  folder = tmp_path / 'disk' / 'sa_000005'
  (folder / 'sub').mkdir(parents=True)
  sibling = tmp_path / 'disk' / 'other'  # Outside the folder, nearby.
  sibling.mkdir()
  _pair_files(folder, 1, rng)
  _pair_files(folder, 5, rng)
  (folder / 'sa_5.jpg').unlink()
  os.mkfifo(folder / 'sa_5.jpg')  # Opening it for reading would block.
  _pair_files(folder, 6, rng)
  (folder / 'sa_6.jpg').unlink()
  (folder / 'sa_6.jpg').symlink_to('/dev/zero')  # Endless.
  _pair_files(folder, 7, rng)
  (folder / 'sa_7.json').unlink()
  (folder / 'sa_7.json').symlink_to('/etc/passwd')
  _pair_files(sibling, 8, rng)
  (folder / 'sa_8.jpg').symlink_to(sibling / 'sa_8.jpg')
  (folder / 'sa_8.json').symlink_to('../other/sa_8.json')
  _pair_files(folder / 'sub', 9, rng)
  (folder / 'sa_9.jpg').symlink_to('sub/sa_9.jpg')  # Inside: followed.
  (folder / 'share').symlink_to('/usr/share')  # A dir outside: not listed.
  (folder / 'up').symlink_to('..')  # Its parent: outside.
  (folder / 'loop').symlink_to(folder)  # A loop inside: visited once.
  return folder


@pytest.mark.parametrize('reached_by', ['path', 'symlink'])
def test_a_folder_lists_nothing_out_of_itself(tmp_path, reached_by):
  folder = _hostile_folder(tmp_path)
  if reached_by == 'symlink':  # manual/sa_000005 -> /disk/sa_000005
    (tmp_path / 'manual').mkdir()
    (tmp_path / 'manual' / 'sa_000005').symlink_to(folder)
    [source] = shards.find_shards(tmp_path / 'manual').shards.values()
  else:
    source = local.LocalFolder('sa_000005.tar', os.fspath(folder))
  members = within(30, source.list_members)
  kinds = {m.name: m.kind for m in members}
  assert kinds == {
      'sa_1.jpg': base.REGULAR, 'sa_1.json': base.REGULAR,
      'sa_5.jpg': 'FIFO', 'sa_5.json': base.REGULAR,
      'sa_6.jpg': base.OUTSIDE, 'sa_6.json': base.REGULAR,
      'sa_7.jpg': base.REGULAR, 'sa_7.json': base.OUTSIDE,
      'sa_8.jpg': base.OUTSIDE, 'sa_8.json': base.OUTSIDE,
      'sa_9.jpg': base.REGULAR,
      'sub/sa_9.jpg': base.REGULAR, 'sub/sa_9.json': base.REGULAR,
      'share': base.OUTSIDE, 'up': base.OUTSIDE,
  }
  by_name = {m.name: m for m in members}
  assert source.read_member(by_name['sa_9.jpg']) == (
      folder / 'sub' / 'sa_9.jpg').read_bytes()


def test_a_folder_member_swapped_after_listing_is_refused(tmp_path):
  folder = _hostile_folder(tmp_path)
  source = local.LocalFolder('sa_000005.tar', os.fspath(folder))
  by_name = {m.name: m for m in source.list_members()}
  jpg = by_name['sa_1.jpg']
  assert source.read_member(jpg) == (folder / 'sa_1.jpg').read_bytes()
  (folder / 'sa_1.jpg').unlink()
  os.mkfifo(folder / 'sa_1.jpg')  # Opening it for reading would block.
  with pytest.raises(errors.BadInputError, match=r'sa_1.jpg: is now a FIFO'):
    within(30, source.read_member, jpg)
  (folder / 'sa_1.jpg').unlink()
  (folder / 'sa_1.jpg').symlink_to(tmp_path / 'disk' / 'other' / 'sa_8.jpg')
  with pytest.raises(errors.BadInputError) as e:
    source.read_member(jpg)
  assert e.value.reason == errors.UNSAFE_MEMBER
  assert 'a symlink out of its folder' in str(e.value)


def test_a_build_reports_a_symlink_out_of_its_folder(tmp_path):
  manual = make_manual_dir(tmp_path, tars=['sa_000000.tar'])
  shutil.copytree(DUMMY / 'sa_000003', manual / 'sa_000003')
  # The json of image 31 lives next to the folder, in manual_dir: a way
  # out of the folder all the same.
  (manual / 'sa_31.json').write_bytes(
      (manual / 'sa_000003' / 'sa_31.json').read_bytes())
  (manual / 'sa_000003' / 'sa_31.json').unlink()
  (manual / 'sa_000003' / 'sa_31.json').symlink_to('../sa_31.json')
  builder = tfds.builder('segment_anything',
                         config=config_lib.tars_config('0,3'),
                         data_dir=os.fspath(tmp_path / 'data'), workers=1)
  with pytest.raises(Exception) as e:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual)))
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.BadInputError), repr(e.value)[:500]
  assert (error.reason, error.tar, error.member) == (
      errors.UNSAFE_MEMBER, 'sa_000003.tar', 'sa_31.json')
