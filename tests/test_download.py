"""The downloader and the Range file against a loopback HTTP server."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from segment_anything_tfds import download
from segment_anything_tfds import errors
from segment_anything_tfds import httpfile
from segment_anything_tfds import options
from _loopback_server import LoopbackServer

OPTS = options.DownloadOptions(retries=4, backoff=0.01, max_backoff=0.05,
                               timeout=5, progress=False)
FAST = httpfile.RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=0.05,
                            timeout=5)
DATA = {f'sa_00000{i}.tar': bytes(range(256)) * (40 + 7 * i) for i in range(4)}


@pytest.fixture
def server():
  with LoopbackServer(DATA) as srv:
    yield srv


def _fetch(server, name, tmp_path, **kw):
  dest = str(tmp_path / name)
  client = httpfile.Client(kw.pop('retry', FAST))
  try:
    size = download.fetch(server.url(name), dest, client=client, **kw)
  finally:
    client.close()
  return dest, size


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def test_fetch_plain(server, tmp_path):
  dest, size = _fetch(server, 'sa_000000.tar', tmp_path)
  assert size == len(DATA['sa_000000.tar'])
  assert _read(dest) == DATA['sa_000000.tar']
  assert not os.path.exists(dest + download.PART_SUFFIX)
  assert [g[3] for g in server.gets()] == [200]


def test_500_then_success(server, tmp_path):
  server.add_fault('sa_000001.tar', 'status', 500)
  server.add_fault('sa_000001.tar', 'status', 503)
  dest, _ = _fetch(server, 'sa_000001.tar', tmp_path)
  assert _read(dest) == DATA['sa_000001.tar']
  assert [g[3] for g in server.gets()] == [500, 503, 200]


def test_cut_then_range_resume(server, tmp_path):
  server.add_fault('sa_000002.tar', 'cut', 5000)
  seen = []
  dest, _ = _fetch(server, 'sa_000002.tar', tmp_path, on_bytes=seen.append)
  assert _read(dest) == DATA['sa_000002.tar']
  gets = server.gets()
  assert [(g[2], g[3]) for g in gets] == [(None, 200),
                                          ('bytes=5000-', 206)]
  assert sum(seen) == len(DATA['sa_000002.tar'])  # No byte counted twice.


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
  name = 'sa_000003.tar'
  server.add_fault(name, 'cut', 3000)
  server.add_fault(name, 'ignore_range', None)
  seen = []
  dest, size = _fetch(server, name, tmp_path, on_bytes=seen.append)
  # The 200 body replaced the partial file; appending would make it longer.
  assert size == len(DATA[name])
  assert _read(dest) == DATA[name]
  assert [(g[2], g[3]) for g in server.gets()] == [(None, 200),
                                                   ('bytes=3000-', 200)]
  assert sum(seen) == len(DATA[name])


def test_ignored_range_and_cut_again(server, tmp_path):
  name = 'sa_000003.tar'
  server.add_fault(name, 'cut', 3000)
  server.add_fault(name, 'ignore_range_cut', 1000)
  dest, _ = _fetch(server, name, tmp_path)
  assert _read(dest) == DATA[name]
  assert [(g[2], g[3]) for g in server.gets()] == [
      (None, 200), ('bytes=3000-', 200), ('bytes=1000-', 206)]


def test_resume_from_a_partial_file_left_by_an_earlier_run(server, tmp_path):
  name = 'sa_000001.tar'
  dest = str(tmp_path / name)
  with open(dest + download.PART_SUFFIX, 'wb') as f:
    f.write(DATA[name][:777])
  _fetch(server, name, tmp_path)
  assert _read(dest) == DATA[name]
  assert [g[2] for g in server.gets()] == ['bytes=777-']


def test_partial_longer_than_the_object_restarts(server, tmp_path):
  name = 'sa_000000.tar'
  dest = str(tmp_path / name)
  with open(dest + download.PART_SUFFIX, 'wb') as f:
    f.write(b'x' * (len(DATA[name]) + 10))
  _fetch(server, name, tmp_path)
  assert _read(dest) == DATA[name]
  assert [g[3] for g in server.gets()] == [416, 200]


def test_403_fails_at_once_with_the_refresh_message(server, tmp_path):
  url = server.url('sa_000000.tar', oe=int(time.time()) - 3600)
  client = httpfile.Client(FAST)
  with pytest.raises(httpfile.LinkExpiredError) as e:
    download.fetch(url, str(tmp_path / 'sa_000000.tar'), client=client)
  assert len(server.gets()) == 1  # No retries.
  msg = str(e.value)
  assert '403' in msg and 'expired' in msg
  assert download.links_lib.LINKS_FILE_NAME in msg and 'mirror' in msg
  assert 'oh=' not in msg  # Signatures are not printed.
  assert not os.path.exists(tmp_path / 'sa_000000.tar')


def test_404_is_not_retried(server, tmp_path):
  client = httpfile.Client(FAST)
  with pytest.raises(httpfile.HttpError, match='404'):
    download.fetch(server.url('sa_000009.tar'),
                   str(tmp_path / 'sa_000009.tar'), client=client)
  assert len(server.gets()) == 1


def test_persistent_5xx_gives_up_with_the_last_error(server, tmp_path):
  for _ in range(10):
    server.add_fault('sa_000000.tar', 'status', 502)
  with pytest.raises(httpfile.HttpError, match='4 attempts.*502'):
    _fetch(server, 'sa_000000.tar', tmp_path)
  assert len(server.gets()) == 4
  assert not os.path.exists(tmp_path / 'sa_000000.tar')


def test_progress_resets_the_failure_count(server, tmp_path):
  # Five cuts, each after new bytes: more than max_attempts=4 failures in
  # all, but none without progress.
  name = 'sa_000003.tar'
  for _ in range(5):
    server.add_fault(name, 'cut', 2000)
  dest, _ = _fetch(server, name, tmp_path)
  assert _read(dest) == DATA[name]
  assert len(server.gets()) == 6


def test_download_all_parallel_cache_by_name(server, tmp_path):
  links = {n: server.url(n) for n in DATA}
  res = download.download_all(links, tmp_path / 'cache',
                              options=OPTS.replace(workers=3, progress=True))
  assert not res.errors
  assert sorted(res.downloaded) == sorted(DATA)
  for n in DATA:
    assert _read(res.paths[n]) == DATA[n]
  assert len(server.gets()) == 4
  # A refreshed links file (new signatures, new expiry) downloads nothing.
  fresh = {n: server.url(n, sig='refreshed', oe=int(time.time()) + 7 * 86400)
           for n in DATA}
  res2 = download.download_all(fresh, tmp_path / 'cache', options=OPTS)
  assert res2.downloaded == () and res2.paths == res.paths
  assert len(server.gets()) == 4


def test_download_all_reports_each_failure(server, tmp_path):
  links = {n: server.url(n) for n in DATA}
  links['sa_000007.tar'] = server.url('sa_000007.tar')  # 404.
  for _ in range(4):
    server.add_fault('sa_000001.tar', 'status', 500)
  res = download.download_all(links, tmp_path,
                              options=OPTS.replace(workers=2))
  assert set(res.errors) == {'sa_000001.tar', 'sa_000007.tar'}
  assert '404' in res.errors['sa_000007.tar']
  assert '500' in res.errors['sa_000001.tar']
  assert set(res.paths) == {'sa_000000.tar', 'sa_000002.tar', 'sa_000003.tar'}


def test_download_all_403_raises_expired(server, tmp_path):
  links = {n: server.url(n) for n in DATA}
  links['sa_000002.tar'] = server.url('sa_000002.tar', oe=1)
  with pytest.raises(errors.LinksExpiredError, match='403'):
    download.download_all(links, tmp_path, options=OPTS.replace(workers=1))
  assert len(server.gets('sa_000002.tar')) == 1


def test_range_file_streams_without_disk(server):
  name = 'sa_000002.tar'
  data = DATA[name]
  f = httpfile.RangeFile(server.url(name), retry=FAST, block_size=1000)
  assert f.size == len(data) and f.seekable()
  f.seek(100)
  assert f.read(10) == data[100:110]
  assert f.read(50) == data[110:160]  # From the cached block.
  n = len(server.gets())
  f.seek(-20, os.SEEK_END)
  assert f.read() == data[-20:]
  assert f.read(5) == b''
  f.seek(5000)
  assert f.read(3000) == data[5000:8000]  # A read larger than a block.
  assert len(server.gets()) == n + 2
  f.close()


def test_range_file_retries_5xx_and_cuts(server):
  name = 'sa_000001.tar'
  server.add_fault(name, 'status', 500)
  server.add_fault(name, 'cut', 10)
  f = httpfile.RangeFile(server.url(name), retry=FAST, block_size=4096)
  assert f.read(4096) == DATA[name][:4096]
  f.close()


def test_range_file_403(server):
  with pytest.raises(httpfile.LinkExpiredError):
    httpfile.RangeFile(server.url('sa_000000.tar', oe=5), retry=FAST)


def test_checksums_parse_and_verify(tmp_path):
  data = b'hello tar'
  p = tmp_path / 'sa_000000.tar'
  p.write_bytes(data)
  md5 = hashlib.md5(data).hexdigest()
  sha = hashlib.sha256(data).hexdigest()
  sums = download.parse_checksums(
      f'{md5}  sa_000000.tar\n{sha} *some/dir/sa_000001.tar\n\n# note\n',
      source='sums.txt')
  assert sums == {'sa_000000.tar': ('md5', md5),
                  'sa_000001.tar': ('sha256', sha)}
  assert download.verify(p, sums['sa_000000.tar']) is None
  assert os.path.exists(str(p) + download.VERIFIED_SUFFIX)
  assert download.verify(p, ('sha256', sha)) is None
  assert 'md5 is' in download.verify(p, ('md5', '0' * 32))
  # Changing the file invalidates the marker.
  p.write_bytes(b'other bytes!')
  assert download.verify(p, sums['sa_000000.tar']) is not None
  with pytest.raises(ValueError, match='sums.txt:1: .*neither an md5'):
    download.parse_checksums('abc  sa_000000.tar', source='sums.txt')
  with pytest.raises(ValueError, match='two different'):
    download.parse_checksums(f'{md5}  a.tar\n{sha}  a.tar', source='s')
  with pytest.raises(ValueError, match='empty'):
    download.parse_checksums('\n', source='s')


def test_head_sizes(server):
  links = {n: server.url(n) for n in DATA}
  links['sa_000009.tar'] = server.url('sa_000009.tar')  # 404: unknown size.
  assert download.head_sizes(links, options=OPTS) == {
      **{n: len(b) for n, b in DATA.items()}, 'sa_000009.tar': None}
  with pytest.raises(errors.LinksExpiredError, match='403.*fresh'):
    download.head_sizes({'sa_000000.tar': server.url('sa_000000.tar', oe=9)},
                        options=OPTS)
