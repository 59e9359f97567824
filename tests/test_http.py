"""The one HTTP client: fail-fast errors, redirects, proxies.

Every server is on 127.0.0.1, started and stopped by the test; hosts under
`.invalid` and `.example` never resolve, so no test needs a network.
"""

from __future__ import annotations

import io
import os
import tarfile
import time

import pytest

from segment_anything_tfds import download
from segment_anything_tfds import errors
from segment_anything_tfds import options
from segment_anything_tfds import shards
from segment_anything_tfds import sources
from _loopback_server import LoopbackServer
from _loopback_server import closed_port
from _loopback_server import within

NAME = 'sa_000000.tar'
FAST = options.DownloadOptions(retries=3, backoff=0.01, max_backoff=0.05,
                               timeout=5, progress=False, check_disk=False)
# The defaults for retries, backoff and timeouts: failing fast must not
# depend on tuning them. (conftest.py clears proxy variables for every test.)
DEFAULTS = options.DownloadOptions(progress=False, check_disk=False)


def _tar() -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w') as t:
    info = tarfile.TarInfo('sa_1.jpg')
    info.size = 3000
    t.addfile(info, io.BytesIO(b'j' * 3000))
  return buf.getvalue()


TAR = _tar()


def _materialize(url, tmp_path, opts):
  shard = shards.Shard(NAME, shards.URL, url)
  return sources.materialize([shard], download_dir=tmp_path / 'dl',
                             options=opts)


def _fails_fast(url, tmp_path, opts=DEFAULTS, seconds=5):
  started = time.monotonic()
  with pytest.raises(errors.DownloadError) as e:
    within(60, _materialize, url, tmp_path, opts)
  took = time.monotonic() - started
  assert took < seconds, f'took {took:.1f} s: {e.value}'
  return str(e.value)


def test_closed_port_fails_fast_naming_the_host(tmp_path):
  port = closed_port()
  msg = _fails_fast(f'http://127.0.0.1:{port}/m/{NAME}?oh=SECRET', tmp_path)
  assert f'127.0.0.1:{port}' in msg and 'refused' in msg, msg
  assert NAME in msg and 'SECRET' not in msg


def test_unresolvable_host_fails_fast_naming_the_host(tmp_path):
  msg = _fails_fast(f'http://nonexistent.invalid/{NAME}', tmp_path)
  assert 'nonexistent.invalid' in msg and 'resolve' in msg, msg
  assert NAME in msg


def test_range_file_on_a_closed_port_fails_fast():
  port = closed_port()
  shard = shards.Shard(NAME, shards.URL, f'http://127.0.0.1:{port}/{NAME}',
                       options=options.DownloadOptions())
  started = time.monotonic()
  with pytest.raises(errors.DownloadError, match=f'127.0.0.1:{port}.*refused'):
    within(60, shard.open)
  assert time.monotonic() - started < 5


@pytest.mark.parametrize('location', [
    'ftp://files.example/sa_000000.tar?oh=SECRET',
    'file:///etc/passwd',
])
def test_redirect_to_another_scheme_is_refused(tmp_path, location):
  scheme = location.split(':', 1)[0]
  with LoopbackServer({NAME: TAR}) as srv:
    srv.redirects[NAME] = location
    msg = _fails_fast(srv.url(NAME), tmp_path, FAST)
    assert f'{scheme}://' in msg and 'redirect' in msg, msg
    assert 'SECRET' not in msg
    assert len(srv.gets(NAME)) == 1  # Not retried.


def test_redirect_loop_stops_after_10(tmp_path):
  with LoopbackServer({NAME: TAR}) as srv:
    srv.redirects[NAME] = f'/loop/{NAME}'
    msg = _fails_fast(srv.url(NAME), tmp_path, FAST)
    assert 'more than 10 redirects' in msg, msg
    assert len(srv.gets(NAME)) == 11


def test_redirect_to_a_mirror_is_followed(tmp_path):
  with LoopbackServer({}) as cdn, LoopbackServer({NAME: TAR}) as mirror:
    cdn.redirects[NAME] = mirror.mirror_url(NAME)
    [out] = within(20, _materialize, cdn.url(NAME), tmp_path, FAST)
    with open(out.location, 'rb') as f:
      assert f.read() == TAR
    assert [g[3] for g in cdn.gets()] == [302]
    assert [g[3] for g in mirror.gets()] == [200]


def test_proxy_from_the_environment_sees_the_request(tmp_path, monkeypatch):
  # `sa1b.example` never resolves: only a proxy can serve it.
  with LoopbackServer({NAME: TAR}) as proxy:
    monkeypatch.setenv('http_proxy', proxy.address)
    url = f'http://sa1b.example/m1/{NAME}?oh=SIG'
    [out] = within(20, _materialize, url, tmp_path, FAST)
    with open(out.location, 'rb') as f:
      assert f.read() == TAR
    assert [(e[0], e[4]) for e in proxy.log] == [('GET', url)]


def test_no_proxy_bypasses_the_proxy(tmp_path, monkeypatch):
  with LoopbackServer({NAME: TAR}) as proxy, LoopbackServer(
      {NAME: TAR}) as origin:
    monkeypatch.setenv('http_proxy', proxy.address)
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    within(20, _materialize, origin.url(NAME), tmp_path, FAST)
    assert proxy.log == []
    assert [e[3] for e in origin.gets()] == [200]


def test_proxies_option(tmp_path):
  with LoopbackServer({NAME: TAR}) as proxy:
    url = f'http://sa1b.example/m1/{NAME}'
    opts = FAST.replace(proxies={'http': proxy.address})
    res = within(20, download.download_all, {NAME: url}, tmp_path,
                 options=opts)
    assert not res.errors and res.downloaded == (NAME,)
    assert [(e[0], e[4]) for e in proxy.log] == [('GET', url)]


def test_stream_mode_goes_through_the_proxy(tmp_path, monkeypatch):
  with LoopbackServer({NAME: TAR}) as proxy:
    monkeypatch.setenv('http_proxy', proxy.address)
    url = f'http://sa1b.example/m1/{NAME}'
    [out] = within(20, _materialize, url, tmp_path,
                   FAST.replace(disk_mode='stream', check_disk=True))
    with out.open() as f:
      f.seek(512)
      assert f.read(100) == b'j' * 100
    assert {e[4] for e in proxy.log} == {url}
    assert [e[0] for e in proxy.log] == ['HEAD', 'GET']


def test_one_http_client_in_the_package():
  # Every request goes through segment_anything_tfds/http.py: no module
  # opens its own connection (urllib, http.client) or session.
  import ast
  import pathlib
  import segment_anything_tfds
  root = pathlib.Path(segment_anything_tfds.__file__).parent
  assert not (root / 'httpfile.py').exists()
  users = {}
  for path in sorted(root.rglob('*.py')):
    tree = ast.parse(path.read_text(encoding='utf-8'))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or '']
      else:
        continue
      for name in names:
        if name.split('.')[0] in ('requests', 'urllib3') or name in (
            'urllib.request', 'http.client', 'httplib2', 'aiohttp'):
          users.setdefault(str(path.relative_to(root)), set()).add(name)
  assert users == {'http.py': {'requests', 'urllib3'}}
