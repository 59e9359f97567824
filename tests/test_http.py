"""The one HTTP client: fail-fast errors, redirects, proxies.

Every server is on 127.0.0.1, started and stopped by the test; hosts under
`.invalid` and `.example` never resolve, so no test needs a network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import pytest

from segment_anything_tfds import cli
from segment_anything_tfds.sources import download
from segment_anything_tfds.sources import http
from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options
from segment_anything_tfds.sources import materialize as sources
from segment_anything_tfds.sources.http_tar import HttpTar
from conftest import tar_bytes
from _loopback_server import HostileServer
from _loopback_server import LoopbackServer
from _loopback_server import closed_port
from _loopback_server import within

NAME = 'sa_000000.tar'
FAST = options.DownloadOptions(retries=3, backoff=0.01, max_backoff=0.05,
                               timeout=5, progress=False, check_disk=False)
# The defaults for retries, backoff and timeouts: failing fast must not
# depend on tuning them. (conftest.py clears proxy variables for every test.)
DEFAULTS = options.DownloadOptions(progress=False, check_disk=False)


TAR = tar_bytes([('sa_1.jpg', b'j' * 3000)])


def _materialize(url, tmp_path, opts):
  return sources.materialize([HttpTar(NAME, url)],
                             download_dir=tmp_path / 'dl',
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


@pytest.mark.parametrize('known_size', [None, 4096])
def test_an_http_tar_on_a_closed_port_fails_fast(known_size):
  port = closed_port()
  tar = HttpTar(NAME, f'http://127.0.0.1:{port}/{NAME}', known_size,
                options.DownloadOptions())

  def read():
    reader = tar.open_random()
    try:
      return reader.read_at(0, 512)
    finally:
      reader.close()

  started = time.monotonic()
  with pytest.raises(errors.DownloadError, match=f'127.0.0.1:{port}.*refused'):
    within(60, read)
  assert time.monotonic() - started < 5


@pytest.mark.integration
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


@pytest.mark.integration
def test_redirect_loop_stops_after_10(tmp_path):
  with LoopbackServer({NAME: TAR}) as srv:
    srv.redirects[NAME] = f'/loop/{NAME}'
    msg = _fails_fast(srv.url(NAME), tmp_path, FAST)
    assert 'more than 10 redirects' in msg, msg
    assert len(srv.gets(NAME)) == 11


@pytest.mark.integration
def test_redirect_to_a_mirror_is_followed(tmp_path):
  with LoopbackServer({}) as cdn, LoopbackServer({NAME: TAR}) as mirror:
    cdn.redirects[NAME] = mirror.mirror_url(NAME)
    [out] = within(20, _materialize, cdn.url(NAME), tmp_path, FAST)
    with open(out.location, 'rb') as f:
      assert f.read() == TAR
    assert [g[3] for g in cdn.gets()] == [302]
    assert [g[3] for g in mirror.gets()] == [200]


@pytest.mark.integration
def test_proxy_from_the_environment_sees_the_request(tmp_path, monkeypatch):
  # `sa1b.example` never resolves: only a proxy can serve it.
  with LoopbackServer({NAME: TAR}) as proxy:
    monkeypatch.setenv('http_proxy', proxy.address)
    url = f'http://sa1b.example/m1/{NAME}?oh=SIG'
    [out] = within(20, _materialize, url, tmp_path, FAST)
    with open(out.location, 'rb') as f:
      assert f.read() == TAR
    assert [(e[0], e[4]) for e in proxy.log] == [('GET', url)]


@pytest.mark.integration
def test_no_proxy_bypasses_the_proxy(tmp_path, monkeypatch):
  with LoopbackServer({NAME: TAR}) as proxy, LoopbackServer(
      {NAME: TAR}) as origin:
    monkeypatch.setenv('http_proxy', proxy.address)
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    within(20, _materialize, origin.url(NAME), tmp_path, FAST)
    assert proxy.log == []
    assert [e[3] for e in origin.gets()] == [200]


@pytest.mark.integration
def test_proxies_option(tmp_path):
  with LoopbackServer({NAME: TAR}) as proxy:
    url = f'http://sa1b.example/m1/{NAME}'
    opts = FAST.replace(proxies={'http': proxy.address})
    res = within(20, download.download_all, {NAME: url}, tmp_path,
                 options=opts)
    assert not res.errors and res.downloaded == (NAME,)
    assert [(e[0], e[4]) for e in proxy.log] == [('GET', url)]


@pytest.mark.integration
def test_stream_mode_goes_through_the_proxy(tmp_path, monkeypatch):
  with LoopbackServer({NAME: TAR}) as proxy:
    monkeypatch.setenv('http_proxy', proxy.address)
    url = f'http://sa1b.example/m1/{NAME}'
    [out] = within(20, _materialize, url, tmp_path,
                   FAST.replace(disk_mode='stream', check_disk=True))
    reader = out.open_random()
    try:
      assert reader.read_at(512, 100) == b'j' * 100
    finally:
      reader.close()
    assert {e[4] for e in proxy.log} == {url}
    assert [e[0] for e in proxy.log] == ['HEAD', 'GET']


@pytest.mark.integration
def test_urllib3_retries_a_5xx_the_error_page_unread():
  with LoopbackServer({NAME: TAR}) as srv:
    srv.add_fault(NAME, 'status', 503)
    with http.Client(FAST) as client:
      resp = within(20, client.request, 'GET', srv.url(NAME))
      with contextlib.closing(resp):
        assert resp.status_code == 200 and resp.raw.read() == TAR
        # The same request, retried by urllib3's Retry (mounted on the
        # session), not a new one from the caller.
        assert [h.status for h in resp.raw.retries.history] == [503]
    assert [g[3] for g in srv.gets(NAME)] == [503, 200]


@pytest.mark.integration
def test_retries_are_logged_once_without_the_query(caplog):
  with HostileServer('slow_headers') as srv:
    opts = FAST.replace(timeout=0.5, retries=2)
    with caplog.at_level(logging.WARNING), http.Client(opts) as client:
      with pytest.raises(errors.DownloadError, match='gave up after 2'):
        within(20, client.head, srv.url(NAME) + '?oh=SECRET')
  # urllib3 warns of each retry too, naming the path with its query (a
  # signature): only the package's warning is shown.
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and 'attempt 2 of at most' in warnings[0], (
      warnings)
  assert 'SECRET' not in warnings[0]


def test_one_http_client_in_the_package():
  # Every request goes through segment_anything_tfds/sources/http.py: no module
  # opens its own connection (urllib, http.client) or session.
  import ast
  import pathlib
  import re
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
  # links.py reads URLs with urllib3's parser (the one requests connects
  # by), and opens nothing.
  assert users == {'sources/http.py': {'requests', 'urllib3'},
                   'sources/links.py': {'urllib3'}}
  links_source = (root / 'sources' / 'links.py').read_text(encoding='utf-8')
  assert set(re.findall(r'urllib3\.[\w.]+', links_source)) == {
      'urllib3.util.parse_url'}


# ------------------------------------------------ hostile answers, by command


def _links_file(tmp_path, url) -> str:
  manual = tmp_path / 'manual'
  manual.mkdir(exist_ok=True)
  fake_data.write_links(manual / links_lib.LINKS_FILE_NAME, [(NAME, url)])
  return os.fspath(manual)


def _cli(capsys, *argv) -> tuple[int, str, str]:
  code = within(60, cli.main, [os.fspath(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _build_cli(capsys, tmp_path, url, *flags) -> tuple[int, str]:
  """`build --tars 0` from a links file holding `url`: (exit code, error)."""
  code, _, err = _cli(capsys, 'build', '--tars', '0', '--manual_dir',
                      _links_file(tmp_path, url), '--data_dir',
                      tmp_path / 'data', '--download_retries', '1',
                      '--download_timeout', '2', '--no_progress', *flags)
  lines = [l for l in err.splitlines() if l.strip()]
  return code, lines[-1] if lines else ''


def _probe_cli(capsys, tmp_path, url, *flags) -> dict:
  """`check-links --probe` of a links file holding `url`: its one entry."""
  report = tmp_path / 'report.json'
  code, _, err = _cli(capsys, 'check-links', '--links',
                      os.path.join(_links_file(tmp_path, url),
                                   links_lib.LINKS_FILE_NAME), '--probe',
                      '--json', report, '--no_progress', *flags)
  assert code == 0, err
  [entry] = json.loads(report.read_text())['links']
  return entry


# Each answer once gave a traceback: '²'.isdigit() is True but int('²')
# fails, and urljoin raises on a bracket left open.
HOSTILE_ANSWERS = {
    'content_length': (200, [('Content-Length', '\u00b2')]),
    'retry_after': (503, [('Retry-After', '\u00b9'),
                          ('Content-Length', '0')]),
    'location': (302, [('Location', 'http://[::1/x'),
                       ('Content-Length', '0')]),
}


@pytest.mark.integration
@pytest.mark.parametrize('answer', sorted(HOSTILE_ANSWERS))
def test_hostile_headers_are_one_line_from_build_and_probe(
    answer, tmp_path, capsys):
  with LoopbackServer({NAME: TAR}) as srv:
    srv.answers[NAME] = HOSTILE_ANSWERS[answer]
    entry = _probe_cli(capsys, tmp_path, srv.url(NAME))
    code, line = _build_cli(capsys, tmp_path, srv.url(NAME))
  assert code == 1
  assert line.startswith('segment-anything-tfds build: error:'), line
  assert NAME in line
  assert entry['size_bytes'] is None
  if answer == 'content_length':  # An unknown size: fine for a probe.
    assert entry['probe'] == 'HTTP 200'
    assert 'not a tar' in line
  elif answer == 'retry_after':  # No usable Retry-After: the usual wait.
    assert entry['probe'].startswith('error: gave up after 2 attempts')
    assert 'HTTP 503' in entry['probe'] and 'HTTP 503' in line
  else:
    assert entry['probe'].startswith('error: redirected to an invalid URL')
    assert 'redirected to an invalid URL' in line


def test_a_links_row_that_is_no_url_is_one_line(tmp_path, capsys):
  manual = _links_file(tmp_path, 'http://[::1/x?oh=SECRET')
  code, out, err = _cli(capsys, 'check-links', '--manual_dir', manual,
                        '--probe', '--no_progress', '--summary_only')
  assert code == 0, err
  assert ("2: sa_000000.tar: not a usable URL (Invalid IPv6 URL):"
          " 'http://[::1/x'") in out
  code, line = _build_cli(capsys, tmp_path, 'http://[::1/x?oh=SECRET')
  assert code == 1
  assert line.endswith("2: sa_000000.tar: not a usable URL (Invalid IPv6"
                       " URL): 'http://[::1/x'"), line
  assert 'SECRET' not in out + line


@pytest.mark.integration
@pytest.mark.parametrize('kind', ['slow_headers', 'continue', 'slow_body'])
def test_probe_of_a_trickling_server_ends_in_time(kind, tmp_path, capsys):
  # Each byte comes well within --timeout 1; the answer never completes.
  with HostileServer(kind, size=12345) as srv:
    started = time.monotonic()
    entry = _probe_cli(capsys, tmp_path, srv.url(NAME), '--timeout', '1')
    took = time.monotonic() - started
  assert took < 10, took
  if kind == 'slow_body':  # A HEAD has no body: the answer is complete.
    assert (entry['size_bytes'], entry['probe']) == (12345, 'HTTP 200')
  else:
    assert entry['size_bytes'] is None
    assert entry['probe'].startswith('error: gave up after 2 attempts'), entry
    assert ('no complete answer (status line and headers) from'
            f' 127.0.0.1:{srv.port} within 1 s') in entry['probe']


# --------------------------------------------------------------- wording


@pytest.mark.integration
def test_a_plain_403_names_the_host_and_proxy_not_an_expiry(tmp_path):
  # A proxy (or a mirror) that forbids a link without a signature: the
  # link did not expire, and the words must not say so.
  with LoopbackServer({NAME: TAR}) as proxy:
    proxy.add_fault(NAME, 'status', 403, times=2)
    opts = FAST.replace(proxies={'http': proxy.address})
    plain = f'http://sa1b.example/m1/{NAME}'
    with pytest.raises(errors.DownloadError) as e:
      within(20, _materialize, plain, tmp_path, opts)
    assert not isinstance(e.value, errors.LinksExpiredError)
    msg = str(e.value)
    assert 'HTTP 403 forbidden from sa1b.example' in msg, msg
    assert f'through the proxy 127.0.0.1:{proxy.port}' in msg, msg
    assert 'expire' not in msg and 'fresh' not in msg
    # A signed link: the 403 may well mean it expired; the proxy is named.
    signed = f'{plain}?oh=SIG&oe={int(time.time()) + 3600:X}'
    with pytest.raises(errors.LinksExpiredError) as e:
      within(20, _materialize, signed, tmp_path, opts)
    msg = str(e.value)
    assert 'expired or was revoked' in msg and 'fresh' in msg
    assert f'through the proxy 127.0.0.1:{proxy.port}' in msg, msg
    assert 'SIG' not in msg
    assert len(proxy.gets(NAME)) == 2  # Neither was retried.


@pytest.mark.integration
@pytest.mark.parametrize('location, scheme', [
    ('FILE:/etc/passwd', 'file'),
    ('Ftp://files.example/x?oh=SECRET', 'ftp'),
    ('javascript:alert(1)', 'javascript'),
])
def test_redirect_names_the_scheme_whatever_its_case(tmp_path, location,
                                                     scheme):
  with LoopbackServer({NAME: TAR}) as srv:
    srv.redirects[NAME] = location
    msg = _fails_fast(srv.url(NAME), tmp_path, FAST)
  assert f'redirected to a {scheme}: URL' in msg, msg
  assert 'None' not in msg and 'SECRET' not in msg


@pytest.mark.integration
def test_redirect_with_an_upper_case_http_scheme_is_followed(tmp_path):
  with LoopbackServer({}) as cdn, LoopbackServer({NAME: TAR}) as mirror:
    cdn.redirects[NAME] = mirror.mirror_url(NAME).replace('http:', 'HTTP:')
    [out] = within(20, _materialize, cdn.url(NAME), tmp_path, FAST)
    with open(out.location, 'rb') as f:
      assert f.read() == TAR


@pytest.mark.integration
@pytest.mark.parametrize('disk_mode', ['keep', 'stream'])
def test_an_implausible_size_is_refused_naming_tar_and_host(tmp_path,
                                                            disk_mode):
  # 10**30 bytes is no disk-space problem: it is not an SA-1B tar.
  with LoopbackServer({NAME: TAR}) as srv:
    srv.answers[NAME] = (200, [('Content-Length', str(10**30))])
    opts = FAST.replace(check_disk=True, disk_mode=disk_mode)
    with pytest.raises(errors.DownloadError) as e:
      within(20, _materialize, srv.url(NAME), tmp_path, opts)
  msg = str(e.value)
  assert not isinstance(e.value, errors.DiskSpaceError)
  assert msg.startswith(f'{NAME} from 127.0.0.1:{srv.port}: the server'
                        f' announces {10**30} bytes, over max_bytes='), msg
  assert 'PB' not in msg


# ------------------------------------------- URLs as requests sends them


@pytest.mark.integration
def test_a_url_is_sent_as_requests_alone_would_send_it():
  """Decided on requests' own reading of the URL, but prepared once: twice
  would resolve an escaped `..` (`%2E%2E`) a second time."""
  import requests  # pylint: disable=g-import-not-at-top
  with LoopbackServer({'sa_000000.tar': b'x' * 1024}) as srv:
    for path in ('/m1/%2E%2E/t6/sa_000000.tar', '/a%20b/%7Euser/sa_000000.tar',
                 '/q/sa_000000.tar?oe=65F0&_nc=a%2Fb+c'):
      url = srv.address + path
      with http.Client(FAST) as client:
        client.send('GET', url).close()
      assert srv.headers[-1][1] == requests.Request(
          'GET', url).prepare().path_url, path


@pytest.mark.integration
def test_a_redirect_to_utf8_bytes_is_followed_as_requests_follows_it():
  """HTTP headers arrive decoded as Latin-1: a Location of UTF-8 bytes is
  read back as UTF-8, as requests does."""
  with LoopbackServer({'\u00fc.tar': b'x' * 1024}) as srv:
    # http.server writes headers as Latin-1: these are the UTF-8 bytes.
    srv.redirects['a.tar'] = '/mirror/\u00fc.tar'.encode().decode('latin-1')
    with http.Client(FAST) as client:
      client.send('GET', srv.mirror_url('a.tar')).close()
  assert [target for _, target, _ in srv.headers] == ['/mirror/a.tar',
                                                      '/mirror/%C3%BC.tar']
