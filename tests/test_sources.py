"""Finding shards in manual_dir, and making them readable (materialize)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil

import pytest

from segment_anything_tfds import download
from segment_anything_tfds import fake_data
from segment_anything_tfds import httpfile
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import sources
from segment_anything_tfds import tars as tars_lib

from _loopback_server import LoopbackServer

DUMMY = pathlib.Path(__file__).resolve().parent.parent / 'dummy_data'
TAR0 = (DUMMY / 'sa_000000.tar').read_bytes()
FAST = sources.Options(retry=httpfile.RetryPolicy(2, 0.01, 0.02, 5),
                       progress=False)


def _manual(tmp_path, rows=(), tars=()):
  m = tmp_path / 'manual'
  m.mkdir()
  for n in tars:
    shutil.copy(DUMMY / n, m / n)
  if rows:
    fake_data.write_links(m / links_lib.LINKS_FILE_NAME, rows)
  return m


def test_find_shards_precedence(tmp_path):
  m = _manual(tmp_path, rows=[
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
  found = sources.find_shards(m)
  assert {i: (s.kind, s.location) for i, s in found.items()} == {
      0: ('tar', os.fspath(m / 'sa_000000.tar')),  # Local beats its link.
      1: ('tar', 'gs://bucket/sa_000001.tar'),  # Read in place, no copy.
      2: ('tar', os.fspath(m / 'rel/sa_000002.tar')),
      3: ('dir', os.fspath(m / 'sa_000003')),
      5: ('tar', os.fspath(m / 'sa_000005.tar')),
  }


def test_find_shards_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    sources.find_shards(tmp_path / 'nope')
  m = _manual(tmp_path, rows=[('sa_000000.tar', 'ftp://x/a')])
  with pytest.raises(links_lib.LinksFileError, match='ftp://'):
    sources.find_shards(m)


def test_select():
  shards = {i: sources.Shard(links_lib.shard_name(i), 'url', f'https://x/{i}')
            for i in (0, 1, 5)}
  assert [s.index for s in sources.select(shards, num_tars=2, tars=None)] == [
      0, 1]
  assert [s.index for s in sources.select(shards, num_tars=None, tars=(5,))
          ] == [5]
  with pytest.raises(FileNotFoundError, match='sa_000002.tar'):
    sources.select(shards, num_tars=None, tars=(2,))
  # "Up to N": fewer tars than asked for build what there is (logged).
  assert len(sources.select(shards, num_tars=4, tars=None)) == 3
  with pytest.raises(FileNotFoundError, match='no sa_NNNNNN.tar'):
    sources.select({}, num_tars=None, tars=None)


def test_options_from_config():
  class Cfg:
    disk_mode = 'stream'
    download_workers = 2
    download_backoff = 0.5
  opts = sources.Options.from_config(Cfg())
  assert (opts.disk_mode, opts.workers, opts.retry.backoff) == ('stream', 2,
                                                                0.5)
  assert sources.Options.from_config(None) == sources.Options()
  Cfg.disk_mode = 'tmpfs'
  with pytest.raises(ValueError, match="disk_mode 'tmpfs'.*keep, stream"):
    sources.Options.from_config(Cfg())


def test_materialize_uses_cache_by_name_with_no_request(tmp_path):
  with LoopbackServer({'sa_000000.tar': TAR0}) as srv:
    cache = download.cache_dir(tmp_path / 'dl')
    cache.mkdir(parents=True)
    (cache / 'sa_000000.tar').write_bytes(TAR0)
    shard = sources.Shard('sa_000000.tar', 'url', srv.url('sa_000000.tar'))
    out = sources.materialize([shard], download_dir=tmp_path / 'dl',
                              options=FAST)
    assert out == [sources.Shard('sa_000000.tar', 'tar',
                                 os.fspath(cache / 'sa_000000.tar'),
                                 downloaded=True)]
    assert srv.log == []


def test_materialize_missing_linked_path(tmp_path):
  shard = sources.Shard('sa_000000.tar', 'tar', os.fspath(tmp_path / 'x.tar'))
  with pytest.raises(FileNotFoundError, match='sa_000000.tar: .*x.tar does'
                     ' not exist'):
    sources.materialize([shard], download_dir=tmp_path, options=FAST)


def test_materialize_stream_mode_keeps_urls_with_sizes(tmp_path):
  with LoopbackServer({'sa_000000.tar': TAR0}) as srv:
    shard = sources.Shard('sa_000000.tar', 'url', srv.url('sa_000000.tar'))
    opts = sources.Options(disk_mode='stream', retry=FAST.retry,
                           progress=False)
    [out] = sources.materialize([shard], download_dir=tmp_path / 'dl',
                                options=opts)
    assert out.kind == 'url' and out.size == len(TAR0)
    assert [e[0] for e in srv.log] == ['HEAD']
    with out.open() as f:  # Seekable, over Range requests; nothing on disk.
      members = tars_lib.index_members(f, tar=out.name)
      tars_lib.check_end(f, members, tar=out.name)
      first = min(members, key=lambda m: m.offset)
      data = tars_lib.read_member(f, first, tar=out.name)
    assert data == TAR0[first.offset:first.offset + first.size]
    assert not (tmp_path / 'dl').exists()


def test_checksums_manual_tar_is_named_not_moved(tmp_path):
  m = _manual(tmp_path, tars=['sa_000000.tar', 'sa_000001.tar'])
  good = hashlib.md5(TAR0).hexdigest()
  (m / download.CHECKSUMS_FILE_NAME).write_text(
      f'{good}  sa_000000.tar\n{"0" * 64}  sa_000001.tar\n')
  shards = list(sources.find_shards(m).values())
  with pytest.raises(download.ChecksumError) as e:
    sources.materialize(shards, download_dir=tmp_path / 'dl', manual_dir=m,
                        options=FAST)
  msg = str(e.value)
  assert '1 tars do not match' in msg
  assert 'sa_000001.tar (' in msg and 'sha256 is' in msg
  assert 'left where it is' in msg
  assert (m / 'sa_000001.tar').exists()
  # Only the good one, with an explicit checksums file: passes.
  sums = tmp_path / 'sums.md5'
  sums.write_text(f'{good}  sa_000000.tar\n')
  out = sources.materialize(
      shards[:1], download_dir=tmp_path / 'dl',
      options=sources.Options(checksums_file=os.fspath(sums), progress=False))
  assert out == shards[:1]


def test_preflight_numbers(tmp_path):
  with pytest.raises(download.DiskSpaceError) as e:
    download.preflight(download_bytes=int(21e9), download_dir=tmp_path / 'dl',
                       output_bytes=int(21e9), data_dir=tmp_path / 'data',
                       what='This build (2 tars)', free=lambda p: int(30e9))
  msg = str(e.value)
  assert 'This build (2 tars) needs about 42.0 GB' in msg
  assert 'downloads 21.0 GB' in msg and 'output 21.0 GB' in msg
  assert '30.0 GB free' in msg
  download.preflight(download_bytes=int(21e9), download_dir=tmp_path / 'dl',
                     output_bytes=int(21e9), data_dir='gs://bucket/data',
                     what='x', free=lambda p: int(30e9))  # Output in a bucket.


def test_release_only_in_delete_mode(tmp_path):
  p = tmp_path / 'sa_000000.tar'
  p.write_bytes(b'x')
  mine = tmp_path / 'sa_000001.tar'
  mine.write_bytes(b'y')
  shards = [sources.Shard(p.name, 'tar', os.fspath(p), downloaded=True),
            sources.Shard(mine.name, 'tar', os.fspath(mine))]
  assert sources.release(shards, options=sources.Options()) == []
  assert sources.release(shards, options=sources.Options(
      disk_mode='delete')) == [os.fspath(p)]
  assert not p.exists() and mine.exists()


def test_remote_path_shard_opens_in_place(tmp_path):
  import _ram_epath  # pylint: disable=g-import-not-at-top
  _ram_epath.enable()
  root = f'ram://src-{os.getpid()}/m'
  _ram_epath.upload(os.fspath(DUMMY / 'sa_000000.tar'), f'{root}/sa_000000.tar')
  try:
    [shard] = sources.find_shards(root).values()
    assert shard.kind == 'tar' and shard.location.startswith('ram://')
    with shard.open() as f:
      f.seek(0, os.SEEK_END)
      assert f.tell() == len(TAR0)
      f.seek(0)
      members = tars_lib.index_members(f, tar=shard.name)
      m = members[-1]
      assert tars_lib.read_member(f, m, tar=shard.name) == TAR0[
          m.offset:m.offset + m.size]
  finally:
    _ram_epath.rmtree(root)
