"""The downloader and the HTTP tar source against a loopback HTTP server."""

from __future__ import annotations

import gzip
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download
from segment_anything_tfds import errors
from segment_anything_tfds.sources import http as http_lib
from segment_anything_tfds import options
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import materialize as sources
from segment_anything_tfds.sources.http_tar import HttpTar
from conftest import tar_bytes
from _loopback_server import LoopbackServer
from _loopback_server import within

# Every test but one runs an HTTP server on loopback.
pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTS = options.DownloadOptions(retries=4, backoff=0.01, max_backoff=0.05,
                               timeout=5, progress=False)


def _tar(i: int) -> bytes:
  """A small, whole tar (one member), different for each `i`."""
  return tar_bytes([(f'sa_{i + 1}.jpg', bytes(range(256)) * (40 + 7 * i))])


DATA = {f'sa_00000{i}.tar': _tar(i) for i in range(4)}
HTML = (b'<!DOCTYPE html><html><body>Please log in to download this file.'
        b'</body></html>\n')


@pytest.fixture
def server():
  with LoopbackServer(DATA) as srv:
    yield srv


def _fetch(server, name, tmp_path, opts=OPTS, **kw):
  dest = str(tmp_path / name)
  with http_lib.Client(opts) as client:
    size = download.fetch(server.url(name), dest, client=client, **kw)
  return dest, size


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def _cache_names(cache) -> list[str]:
  return sorted(n for n in os.listdir(cache) if not n.endswith('.lock'))


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
  with http_lib.Client(OPTS) as client:
    with pytest.raises(errors.LinksExpiredError) as e:
      download.fetch(url, str(tmp_path / 'sa_000000.tar'), client=client)
  assert len(server.gets()) == 1  # No retries.
  msg = str(e.value)
  assert '403' in msg and 'expired' in msg
  assert download.links_lib.LINKS_FILE_NAME in msg and 'mirror' in msg
  assert 'oh=' not in msg  # Signatures are not printed.
  assert not os.path.exists(tmp_path / 'sa_000000.tar')


def test_404_is_not_retried(server, tmp_path):
  with http_lib.Client(OPTS) as client:
    with pytest.raises(errors.DownloadError, match='404') as e:
      download.fetch(server.url('sa_000009.tar'),
                     str(tmp_path / 'sa_000009.tar'), client=client)
  assert not isinstance(e.value, errors.LinksExpiredError)
  assert len(server.gets()) == 1


def test_persistent_5xx_gives_up_with_the_last_error(server, tmp_path):
  server.add_fault('sa_000000.tar', 'status', 502, times=10)
  with pytest.raises(errors.DownloadError, match='4 attempts.*502'):
    _fetch(server, 'sa_000000.tar', tmp_path)
  assert len(server.gets()) == 4
  assert not os.path.exists(tmp_path / 'sa_000000.tar')


def test_progress_resets_the_failure_count(server, tmp_path):
  # Five cuts, each after new bytes: more than retries=4 failures in all,
  # but none without progress.
  name = 'sa_000003.tar'
  server.add_fault(name, 'cut', 2000, times=5)
  dest, _ = _fetch(server, name, tmp_path)
  assert _read(dest) == DATA[name]
  assert len(server.gets()) == 6


def test_total_attempts_are_bounded_even_with_progress(server, tmp_path):
  # Every attempt brings new bytes, but the work per tar is bounded:
  # max_attempts = 4 * retries attempts in all.
  name = 'sa_000003.tar'
  opts = OPTS.replace(retries=2)
  server.add_fault(name, 'cut', 1000, times=20)
  with pytest.raises(errors.DownloadError, match=f'{name}.*8 attempts'):
    _fetch(server, name, tmp_path, opts)
  assert len(server.gets()) == opts.max_attempts == 8


def test_lying_content_length_and_416_stop_after_bounded_gets(server,
                                                              tmp_path):
  # The server announces more bytes than it sends, and answers 416 to a
  # resume past its real end: every restart from 0 gets no further than the
  # last, so it is not progress. Before, this looped without end.
  name = 'sa_000001.tar'
  server.add_fault(name, 'overstate', 100, times=1000)
  opts = OPTS.replace(retries=3)
  links = {name: server.url(name)}
  res = within(20, download.download_all, links, tmp_path / 'cache',
               options=opts)
  assert set(res.errors) == {name}
  assert 'attempts' in res.errors[name] and name in res.errors[name]
  gets = server.gets(name)
  assert len(gets) <= opts.max_attempts
  assert [g[3] for g in gets] == [200, 416, 200]
  assert not (tmp_path / 'cache' / name).exists()


@pytest.mark.parametrize('value, max_backoff, low, high', [
    ('1', 5, 0.9, 3.0),  # Seconds: waited, though the backoff is 0.01 s.
    ('3600', 0.5, 0.4, 2.0),  # Capped at max_backoff.
])
def test_retry_after_is_honoured_up_to_max_backoff(server, tmp_path, value,
                                                   max_backoff, low, high):
  name = 'sa_000000.tar'
  server.add_fault(name, 'retry_after', (503, value))
  started = time.monotonic()
  res = within(20, download.download_all, {name: server.url(name)},
               tmp_path / 'cache',
               options=OPTS.replace(max_backoff=max_backoff))
  took = time.monotonic() - started
  assert not res.errors
  assert _read(res.paths[name]) == DATA[name]
  assert [g[3] for g in server.gets(name)] == [503, 200]
  assert low <= took <= high, took


def test_retry_after_http_date(server, tmp_path):
  name = 'sa_000000.tar'
  when = time.strftime('%a, %d %b %Y %H:%M:%S GMT',
                       time.gmtime(time.time() + 2))
  server.add_fault(name, 'retry_after', (429, when))
  started = time.monotonic()
  res = within(20, download.download_all, {name: server.url(name)},
               tmp_path / 'cache', options=OPTS.replace(max_backoff=10))
  took = time.monotonic() - started
  assert not res.errors
  assert [g[3] for g in server.gets(name)] == [429, 200]
  assert 0.9 <= took <= 5, took  # HTTP dates have 1 s resolution.


# ---------------------------------------------------- verified downloads


def test_html_page_is_never_cached(server, tmp_path):
  name = 'sa_000000.tar'
  server.files[name] = HTML
  cache = download.cache_dir(tmp_path / 'dl')
  shard = HttpTar(name, server.url(name))
  with pytest.raises(errors.DownloadError) as e:
    within(20, sources.materialize, [shard], download_dir=tmp_path / 'dl',
           options=OPTS)
  msg = str(e.value)
  assert name in msg and 'not a tar' in msg, msg
  assert not (cache / name).exists()
  assert not (cache / (name + download.PART_SUFFIX)).exists()
  assert len(server.gets(name)) == 1  # The same page again would not help.


def test_cut_body_without_length_is_never_cached(server, tmp_path):
  name = 'sa_000002.tar'
  server.add_fault(name, 'no_length_cut', 6000, times=100)
  cache = download.cache_dir(tmp_path / 'dl')
  shard = HttpTar(name, server.url(name))
  opts = OPTS.replace(retries=3)
  with pytest.raises(errors.DownloadError) as e:
    within(20, sources.materialize, [shard], download_dir=tmp_path / 'dl',
           options=opts)
  msg = str(e.value)
  assert name in msg and 'truncated' in msg, msg
  assert not (cache / name).exists()
  assert len(server.gets(name)) == 3


def test_cut_body_without_length_is_fetched_again(server, tmp_path):
  name = 'sa_000002.tar'
  server.add_fault(name, 'no_length_cut', 6000)
  res = download.download_all({name: server.url(name)}, tmp_path,
                              options=OPTS)
  assert not res.errors
  assert _read(res.paths[name]) == DATA[name]
  assert [(g[2], g[3]) for g in server.gets(name)] == [(None, 200),
                                                       (None, 200)]


def test_garbage_cached_tar_is_quarantined_and_fetched_again(server, tmp_path,
                                                            caplog):
  name = 'sa_000001.tar'
  cache = download.cache_dir(tmp_path / 'dl')
  cache.mkdir(parents=True)
  (cache / name).write_bytes(HTML)  # E.g. left by an older version.
  shard = HttpTar(name, server.url(name))
  with caplog.at_level(logging.WARNING):
    [out] = within(20, sources.materialize, [shard],
                   download_dir=tmp_path / 'dl', options=OPTS)
  assert isinstance(out, local.LocalTar) and out.downloaded
  assert _read(out.location) == DATA[name]
  assert (cache / checksums.QUARANTINE_SUBDIR / name).read_bytes() == HTML
  assert any(os.fspath(cache / name) in r.getMessage() and 'quarantine' in
             r.getMessage() for r in caplog.records), caplog.text
  assert len(server.gets(name)) == 1


def test_download_all_quarantines_a_bad_cached_tar(server, tmp_path):
  name = 'sa_000003.tar'
  (tmp_path / name).write_bytes(DATA[name][:5000])  # Cut short.
  res = download.download_all({name: server.url(name)}, tmp_path,
                              options=OPTS)
  assert res.downloaded == (name,) and not res.errors
  assert _read(tmp_path / name) == DATA[name]
  assert (tmp_path / checksums.QUARANTINE_SUBDIR / name).exists()


def test_tar_problem(tmp_path):
  def problem(data):
    path = tmp_path / 'x.tar'
    path.write_bytes(data)
    return download.tar_problem(local.LocalTar(path.name, str(path)))

  assert problem(DATA['sa_000000.tar']) is None
  assert 'not a tar' in problem(HTML)
  assert problem(HTML).endswith('(it looks like an HTML page: a login or'
                                ' error page?)')
  assert problem(gzip.compress(DATA['sa_000000.tar'])).endswith(
      '(it is gzip-compressed: gunzip it first)')
  assert 'not a tar' in problem(b'\0' * 2048)
  assert 'not a tar' in problem(b'')
  cut = DATA['sa_000000.tar'][:5000]
  assert 'truncated' in problem(cut)
  assert 'truncated' in problem(cut[:4608])  # A multiple of 512.
  bad_sum = bytearray(DATA['sa_000000.tar'])
  bad_sum[0] ^= 1  # The header's checksum no longer matches.
  assert 'not a tar' in problem(bytes(bad_sum))


# ------------------------------------------------------------ size caps


def test_endless_body_is_capped_at_max_bytes(server, tmp_path):
  name = 'sa_000000.tar'
  server.endless.add(name)
  opts = OPTS.replace(max_bytes=256 << 10)
  res = within(20, download.download_all, {name: server.url(name)}, tmp_path,
               options=opts)
  msg = res.errors[name]
  assert 'max_bytes' in msg and str(256 << 10) in msg, msg
  assert _cache_names(tmp_path) == []  # No tar, and no .part left growing.
  assert len(server.gets(name)) == 1  # Not retried.
  assert server.endless_sent < 64 << 20


def test_a_body_of_no_stated_length_stops_at_the_size_announced(
    server, tmp_path):
  """A HEAD (or a listing) said the size: an answer without Content-Length
  that goes on past it is cut there and refused, not written on up to
  max_bytes (64 GiB by default)."""
  name = 'sa_000000.tar'
  server.endless.add(name)
  announced = len(DATA[name])
  res = within(20, download.download_all, {name: server.url(name)}, tmp_path,
               options=OPTS, sizes={name: announced})
  msg = res.errors[name]
  assert f'went on past the {announced} bytes announced' in msg, msg
  assert name in msg and '\n' not in msg
  assert _cache_names(tmp_path) == []  # No tar, and no .part.
  assert len(server.gets(name)) == 1  # Not retried.
  assert server.endless_sent < 64 << 20


def test_content_length_over_max_bytes_is_refused_at_once(server, tmp_path):
  name = 'sa_000002.tar'
  opts = OPTS.replace(max_bytes=len(DATA[name]) - 1)
  res = download.download_all({name: server.url(name)}, tmp_path,
                              options=opts)
  assert 'max_bytes' in res.errors[name]
  assert str(len(DATA[name])) in res.errors[name]
  assert _cache_names(tmp_path) == []
  assert len(server.gets(name)) == 1


# ------------------------------------------------------------ two processes


_CHILD = '''
import logging, sys
from segment_anything_tfds.sources import download
from segment_anything_tfds import options
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format='%(message)s')
res = download.download_all(
    {sys.argv[1]: sys.argv[2]}, sys.argv[3],
    options=options.DownloadOptions(timeout=120, backoff=0.01,
                                    progress=False))
print('errors', res.errors, flush=True)
print('downloaded', list(res.downloaded), flush=True)
'''


def _child(name, url, cache):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  return subprocess.Popen([sys.executable, '-c', _CHILD, name, url, cache],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env)


def _wait_for(predicate, seconds, what):
  deadline = time.monotonic() + seconds
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f'no {what} within {seconds} s')
    time.sleep(0.02)


def _read_stderr_until(proc, text, seconds):
  """Lines of `proc`'s stderr up to one containing `text` (bounded)."""
  lines = []
  found = threading.Event()

  def pump():
    for line in proc.stderr:
      lines.append(line)
      if text in line:
        found.set()
        return

  threading.Thread(target=pump, daemon=True).start()
  found.wait(seconds)
  return found.is_set(), lines


def test_two_processes_download_one_tar_once(server, tmp_path):
  name = 'sa_000002.tar'
  release = threading.Event()
  server.add_fault(name, 'pause', (4096, release))  # Slow, until released.
  cache = os.fspath(tmp_path / 'cache')
  url = server.url(name)
  first = _child(name, url, cache)
  procs = [first]
  try:
    _wait_for(lambda: server.gets(name), 60, 'GET from the first process')
    second = _child(name, url, cache)
    procs.append(second)
    waiting, lines = _read_stderr_until(
        second, f'waiting for another process downloading {name}', 60)
    release.set()
    outs = [p.communicate(timeout=60) for p in procs]
  finally:
    release.set()
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert waiting, lines
  assert [p.returncode for p in procs] == [0, 0], outs
  assert f"downloaded ['{name}']" in outs[0][0]
  assert 'downloaded []' in outs[1][0]  # Reused the first one's tar.
  assert "errors {}" in outs[0][0] and 'errors {}' in outs[1][0]
  assert len(server.gets(name)) == 1
  assert _read(os.path.join(cache, name)) == DATA[name]
  assert _cache_names(cache) == [name]


# --------------------------------------------------------- download_all


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
  server.add_fault('sa_000001.tar', 'status', 500, times=4)
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


# ------------------------------------------------------------ HTTP tars


def test_http_tar_reads_at_random_one_request_each(server):
  name = 'sa_000002.tar'
  data = DATA[name]
  tar = HttpTar(name, server.url(name), options=OPTS)
  assert tar.size() == len(data)
  assert [e[0] for e in server.log] == ['HEAD']
  reader = tar.open_random()
  try:
    assert reader.read_at(100, 10) == data[100:110]
    assert reader.read_at(110, 50) == data[110:160]
    assert reader.read_at(len(data) - 20, 100) == data[-20:]  # At the end.
    assert reader.read_at(len(data), 5) == b''  # Past it: no request.
    assert reader.read_at(5000, 3000) == data[5000:8000]
  finally:
    reader.close()
  assert [g[2] for g in server.gets()] == [
      'bytes=100-109', 'bytes=110-159',
      f'bytes={len(data) - 20}-{len(data) - 1}', 'bytes=5000-7999']
  assert tar.size() == len(data) and len(server.log) == 5  # Asked once.


def test_http_tar_random_reads_retry_5xx_and_resume_cuts(server):
  name = 'sa_000001.tar'
  server.add_fault(name, 'status', 500)
  server.add_fault(name, 'cut', 10)
  reader = HttpTar(name, server.url(name), len(DATA[name]),
                   OPTS).open_random()
  try:
    assert reader.read_at(0, 4096) == DATA[name][:4096]
  finally:
    reader.close()
  assert [(g[2], g[3]) for g in server.gets(name)] == [
      ('bytes=0-4095', 500), ('bytes=0-4095', 206), ('bytes=10-4095', 206)]


def test_http_tar_without_head_asks_for_a_byte(server):
  name = 'sa_000003.tar'
  server.no_head.add(name)
  tar = HttpTar(name, server.url(name), options=OPTS)
  assert tar.size() == len(DATA[name])
  reader = tar.open_random()
  try:
    assert reader.read_at(700, 300) == DATA[name][700:1000]
  finally:
    reader.close()
  assert [(e[0], e[2], e[3]) for e in server.log] == [
      ('HEAD', None, 405), ('GET', 'bytes=0-0', 206),
      ('GET', 'bytes=700-999', 206)]


def test_http_tar_403(server):
  with pytest.raises(errors.LinksExpiredError):
    HttpTar('sa_000000.tar', server.url('sa_000000.tar', oe=5),
            options=OPTS).size()


def _bounded(seconds, fn):
  """(error raised by fn, seconds taken, peak traced bytes)."""
  tracemalloc.start()
  try:
    started = time.monotonic()
    with pytest.raises(errors.DownloadError) as e:
      within(seconds, fn)
    took = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  return e.value, took, peak


@pytest.mark.parametrize('read', ['random', 'sequential'])
@pytest.mark.parametrize('size', [None, 20480])
def test_stream_from_server_ignoring_range_fails_fast(server, size, read):
  # The server ignores Range and its body never ends. Reading a block (or
  # probing the size with `bytes=0-0`) must not read the whole object.
  name = 'sa_000000.tar'
  server.endless.add(name)
  tar = HttpTar(name, server.url(name), size, OPTS)

  def read_a_block():
    reader = tar.open_random() if read == 'random' else (
        tar.open_sequential(1000))
    try:
      return (reader.read_at(1000, 100) if read == 'random' else
              reader.read(100))
    finally:
      reader.close()

  error, took, peak = _bounded(20, read_a_block)
  msg = str(error)
  assert 'ignores Range requests' in msg and "disk_mode='keep'" in msg, msg
  assert name in msg
  assert took < 5, took
  assert peak < 16 << 20, peak
  assert server.endless_sent < 64 << 20


def _peak(fn):
  """(fn(), the peak of memory traced while it ran)."""
  tracemalloc.start()
  try:
    value = fn()
    return value, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_http_tar_random_reads_allocate_only_what_arrives():
  big = bytes(range(256)) * (32 << 12)  # 32 MiB.
  with LoopbackServer({'big.tar': big}) as srv:
    reader = HttpTar('big.tar', srv.url('big.tar'), len(big),
                     OPTS).open_random()
    try:
      # A huge read near the end holds only what is left (a header may
      # claim any size).
      data, peak = _peak(lambda: reader.read_at(len(big) - 1000, 1 << 30))
      assert data == big[-1000:]
      assert peak < 4 << 20, peak
      # A read of 32 MiB that all arrives: the result, and a constant.
      data, peak = _peak(lambda: reader.read_at(0, 1 << 30))
      assert len(data) == len(big) and data == big
      assert peak < len(data) * 1.2 + (4 << 20), peak
    finally:
      reader.close()
  assert len([g for g in srv.gets() if g[3] == 206]) == 2


def test_range_stream_reads_allocate_only_what_arrives():
  big = bytes(range(256)) * (32 << 12)  # 32 MiB.
  with LoopbackServer({'big.tar': big}) as srv:
    with http_lib.RangeStream(srv.url('big.tar'), start=0, size=len(big),
                              options=OPTS) as s:
      s.want(len(big))
      data, peak = _peak(lambda: s.read(1 << 30))
      assert len(data) == len(big) and data == big
      assert peak < len(data) * 1.2 + (4 << 20), peak
      assert s.requests == 1


# A 206 whose Content-Range does not answer the Range asked for: each is
# refused at once, before its body is read.
LIES = {
    'bytes {start}-5/{size}': 'is before its first',
    'bytes {start}-99999999/{size}': 'is past the',
    'bytes {start}-{end}/7': 'disagrees with the size',
    'bytes 0-{end}/{size}': 'starts at byte 0',
    'bytes {start}-{end}/\u00b2': 'malformed',
}


@pytest.mark.parametrize('lie', sorted(LIES))
@pytest.mark.parametrize('reader', ['random', 'stream'])
def test_a_content_range_that_does_not_answer_is_refused(lie, reader):
  big = b'\0' * (64 << 20)
  with LoopbackServer({'big.tar': big}) as srv:
    srv.content_ranges['big.tar'] = lie
    tar = HttpTar('big.tar', srv.url('big.tar'), len(big), OPTS)
    if reader == 'random':
      f = tar.open_random()
      read = lambda: f.read_at(100, 10)
    else:
      f = tar.open_sequential(100)  # One request for all the rest.
      read = lambda: f.read(10)
    try:
      error, took, peak = _bounded(20, read)
    finally:
      f.close()
  msg = str(error)
  assert 'Content-Range' in msg and LIES[lie] in msg, msg
  assert 'big.tar' in msg
  assert took < 5 and peak < 16 << 20, (took, peak)
  assert len(srv.gets('big.tar')) == 1  # Not retried.


def test_a_resume_whose_content_range_does_not_answer_restarts_from_0(
    server, tmp_path, caplog):
  """The partial file is dropped, not kept for a rerun that would meet the
  same answer again."""
  name = 'sa_000001.tar'
  dest = tmp_path / name
  (tmp_path / (name + '.part')).write_bytes(b'x' * 100)  # Not appended to.
  server.content_ranges[name] = 'bytes {start}-5/{size}'
  with caplog.at_level(logging.INFO):
    _fetch(server, name, tmp_path)
  assert dest.read_bytes() == DATA[name]
  assert [g[2:4] for g in server.gets(name)] == [('bytes=100-', 206),
                                                 (None, 200)]
  said = ' '.join(r.getMessage() for r in caplog.records)
  assert 'is before its first' in said and 'restarting from 0' in said, said


# -------------------------------------------- planted files in the cache


NEEDS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason='making a file of another user needs root')
OTHER_UID = 65534  # nobody


@pytest.mark.parametrize('planted', ['.part', '.lock', ''])
def test_a_planted_symlink_in_the_cache_is_never_followed(server, tmp_path,
                                                          planted):
  name = 'sa_000000.tar'
  victim = tmp_path / 'victim'
  victim.write_bytes(b'precious')
  cache = tmp_path / 'cache'
  cache.mkdir()
  os.symlink(victim, cache / (name + planted))
  with pytest.raises(errors.DownloadError) as e:
    within(20, _download_one, server, name, cache)
  msg = str(e.value)
  assert f'{cache / (name + planted)} is a symbolic link' in msg, msg
  assert name in msg
  assert victim.read_bytes() == b'precious'
  assert os.path.islink(cache / (name + planted))
  assert server.gets() == []  # Refused before any request.


def _download_one(server, name, cache):
  """download_all of one tar; its error raised."""
  res = download.download_all({name: server.url(name)}, cache, options=OPTS)
  if res.errors:
    raise errors.DownloadError(res.errors[name])
  return res


@NEEDS_ROOT
@pytest.mark.parametrize('planted', ['', '.part', '.lock'])
def test_a_file_of_another_user_in_the_cache_is_not_used(server, tmp_path,
                                                         planted):
  name = 'sa_000000.tar'
  cache = tmp_path / 'cache'
  cache.mkdir()
  path = cache / (name + planted)
  path.write_bytes(DATA['sa_000001.tar'] if planted != '.lock' else b'')
  os.chown(path, OTHER_UID, OTHER_UID)
  with pytest.raises(errors.DownloadError) as e:
    within(20, _download_one, server, name, cache)
  msg = str(e.value)
  assert (f'{path} belongs to uid {OTHER_UID}, not to this user (uid'
          f' {os.geteuid()})') in msg, msg
  assert name in msg
  assert path.read_bytes() == (DATA['sa_000001.tar'] if planted != '.lock'
                               else b'')
  assert server.gets() == []


@NEEDS_ROOT
def test_a_cache_dir_of_another_user_is_refused(server, tmp_path):
  name = 'sa_000000.tar'
  cache = tmp_path / 'cache'
  cache.mkdir()
  (cache / name).write_bytes(DATA['sa_000001.tar'])  # Ours, but in their dir.
  os.chown(cache, OTHER_UID, OTHER_UID)
  with pytest.raises(errors.DownloadError) as e:
    _download_one(server, name, cache)
  assert (f'the download cache {cache} belongs to uid {OTHER_UID}, not to'
          ' this user') in str(e.value)
  assert server.gets() == []


@pytest.mark.parametrize('mode, ok', [(0o777, False), (0o775, False),
                                      (0o1777, True), (0o755, True)])
def test_a_cache_dir_others_can_write_needs_the_sticky_bit(server, tmp_path,
                                                           mode, ok):
  name = 'sa_000000.tar'
  cache = tmp_path / 'cache'
  cache.mkdir()
  os.chmod(cache, mode)
  if ok:
    _download_one(server, name, cache)
    assert _read(cache / name) == DATA[name]
    # The finished tar is reused: it is this user's, a regular file.
    assert _download_one(server, name, cache).downloaded == ()
    assert len(server.gets()) == 1
    return
  with pytest.raises(errors.DownloadError) as e:
    _download_one(server, name, cache)
  assert (f'the download cache {cache} is writable by other users (mode'
          f' {stat.filemode(stat.S_IFDIR | mode)}) without the sticky'
          ' bit') in str(e.value), str(e.value)
  assert server.gets() == []


def test_head_sizes(server):
  links = {n: server.url(n) for n in DATA}
  links['sa_000009.tar'] = server.url('sa_000009.tar')  # 404: unknown size.
  assert download.head_sizes(links, options=OPTS) == {
      **{n: len(b) for n, b in DATA.items()}, 'sa_000009.tar': None}
  with pytest.raises(errors.LinksExpiredError, match='403.*fresh'):
    download.head_sizes({'sa_000000.tar': server.url('sa_000000.tar', oe=9)},
                        options=OPTS)
