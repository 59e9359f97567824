"""Finding shards in manual_dir, and making them readable (materialize)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

import pytest

from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download
from segment_anything_tfds import errors
from segment_anything_tfds import options
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.sources import materialize as sources
from segment_anything_tfds.sources.http_tar import HttpTar

from conftest import make_manual_dir

from _loopback_server import LoopbackServer

DUMMY = pathlib.Path(__file__).resolve().parent.parent / 'dummy_data'
TAR0 = (DUMMY / 'sa_000000.tar').read_bytes()
FAST = options.DownloadOptions(retries=2, backoff=0.01, max_backoff=0.02,
                               timeout=5, progress=False)


@pytest.mark.integration
def test_materialize_uses_cache_by_name_with_no_request(tmp_path):
  with LoopbackServer({'sa_000000.tar': TAR0}) as srv:
    cache = download.cache_dir(tmp_path / 'dl')
    cache.mkdir(parents=True)
    (cache / 'sa_000000.tar').write_bytes(TAR0)
    shard = HttpTar('sa_000000.tar', srv.url('sa_000000.tar'))
    out = sources.materialize([shard], download_dir=tmp_path / 'dl',
                              options=FAST)
    assert out == [local.LocalTar('sa_000000.tar',
                                  os.fspath(cache / 'sa_000000.tar'),
                                  downloaded=True)]
    assert srv.log == []


def test_materialize_missing_linked_path(tmp_path):
  shard = local.LocalTar('sa_000000.tar', os.fspath(tmp_path / 'x.tar'))
  with pytest.raises(errors.SourceError, match='sa_000000.tar: .*x.tar does'
                     ' not exist'):
    sources.materialize([shard], download_dir=tmp_path, options=FAST)


@pytest.mark.integration
def test_materialize_stream_mode_keeps_urls_with_sizes(tmp_path):
  with LoopbackServer({'sa_000000.tar': TAR0}) as srv:
    shard = HttpTar('sa_000000.tar', srv.url('sa_000000.tar'))
    opts = FAST.replace(disk_mode='stream')
    [out] = sources.materialize([shard], download_dir=tmp_path / 'dl',
                                options=opts)
    assert out == dataclasses.replace(shard, options=opts)
    assert out.size() == len(TAR0)
    assert [e[0] for e in srv.log] == ['HEAD']  # The size is the HEAD's.
    reader = out.open_sequential(0)  # Over one Range request; no disk.
    try:
      assert reader.read(len(TAR0) + 1) == TAR0
    finally:
      reader.close()
    assert [(e[0], e[2]) for e in srv.log] == [
        ('HEAD', None), ('GET', f'bytes=0-{len(TAR0) - 1}')]
    assert not (tmp_path / 'dl').exists()


def test_checksums_manual_tar_is_named_not_moved(tmp_path):
  m = make_manual_dir(tmp_path, tars=['sa_000000.tar', 'sa_000001.tar'])
  good = hashlib.md5(TAR0).hexdigest()
  (m / checksums.CHECKSUMS_FILE_NAME).write_text(
      f'{good}  sa_000000.tar\n{"0" * 64}  sa_000001.tar\n')
  found = list(shards.find_shards(m).shards.values())
  with pytest.raises(errors.ChecksumError) as e:
    sources.materialize(found, download_dir=tmp_path / 'dl', manual_dir=m,
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
      found[:1], download_dir=tmp_path / 'dl',
      options=FAST.replace(checksums=os.fspath(sums)))
  assert [dataclasses.replace(s, checked=None) for s in out] == found[:1]
  # It is read only as the file that matched: another one renamed into its
  # place (rsync, cp, a download tool finishing), or the same one written
  # since, is refused at every open.
  path = m / 'sa_000000.tar'
  assert out[0].checked == local.identity(path.stat())
  r = out[0].open_random()
  assert r.read_at(0, 512) == TAR0[:512]
  r.close()
  (m / 'new').write_bytes(TAR0[:-1] + b'x')
  os.replace(m / 'new', path)
  for open_ in (out[0].open_random, out[0].open_sequential):
    with pytest.raises(errors.SourceError) as e:
      open_()
    assert str(e.value) == (
        f'sa_000000.tar: {path} changed after it was checked against its'
        ' checksum (replaced or written since); run again to check it again')
  # Run again: checked again, and refused for what it now is.
  with pytest.raises(errors.ChecksumError, match='sa_000000.tar'):
    sources.materialize(found[:1], download_dir=tmp_path / 'dl',
                        options=FAST.replace(checksums=os.fspath(sums)))


def test_preflight_numbers(tmp_path):
  with pytest.raises(errors.DiskSpaceError) as e:
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
  both = [local.LocalTar(p.name, os.fspath(p), downloaded=True),
          local.LocalTar(mine.name, os.fspath(mine))]
  assert sources.release(both, options=FAST) == []
  assert sources.release(both, options=FAST.replace(
      disk_mode='delete')) == [os.fspath(p)]
  assert not p.exists() and mine.exists()




def test_preflight_uses_human_units(tmp_path):
  with pytest.raises(errors.DiskSpaceError) as e:
    download.preflight(download_bytes=20_000, download_dir=tmp_path / 'dl',
                       output_bytes=30_000, data_dir=tmp_path / 'data',
                       what='This build (1 tars)', free=lambda p: 1_500)
  assert 'needs about 50.0 kB' in str(e.value)
  assert 'has 1.5 kB free' in str(e.value)
