"""SA-1B on the Hugging Face Hub: gated links, hf:// folders, the token rule.

Against a Hub stand-in and its CDN on 127.0.0.1 (`_hub_server`), reached
through `HF_ENDPOINT`; huggingface_hub's own listing requests go there too.
Every Python connection is watched: nothing but loopback is reached. The
token goes to the Hub's host alone: the CDN and other hosts record the
headers they get, and none carries it; no log line or error holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import cli
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds import options
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download
from segment_anything_tfds.sources import http as http_lib
from segment_anything_tfds.sources import hub as hub_lib
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.sources import materialize
from segment_anything_tfds.sources.http_tar import HttpTar

from conftest import DUMMY_DATA
from conftest import make_manual_dir
from conftest import read_inputs
import _offline
from _hub_server import HubServer
from _hub_server import SHA
from _loopback_server import LoopbackServer

# Every test but one runs the Hub stand-in or an HTTP server.
pytestmark = pytest.mark.integration

TOKEN = 'hf_StandInT0kenThatMustNeverLeaveTheHub'
REPO = 'sa1b-fans/SA-1B_backup'
NAMES = [f'sa_00000{i}.tar' for i in range(3)]
TARS = {n: (DUMMY_DATA / n).read_bytes() for n in NAMES}
FILES = {**{f'data/{n}': b for n, b in TARS.items()},
         'data/sa_000009/sa_1.jpg': b'not read',  # A folder: refused.
         'data/notes.txt': b'ignored', 'README.md': b'# mirror'}
FAST = options.DownloadOptions(retries=3, backoff=0.01, max_backoff=0.02,
                               timeout=5, progress=False)


def _env(monkeypatch, tmp_path, server, token):
  """The Hub is `server`; its token is `token` (None: none at all)."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('HF_ENDPOINT', server.address)
  monkeypatch.setenv('HF_HUB_DISABLE_TELEMETRY', '1')
  monkeypatch.setenv('HF_HUB_OFFLINE', '0')
  # huggingface_hub read these when it was imported (maybe before this
  # test): without telemetry it fetches nothing of its own (2.4.0 asks its
  # ENDPOINT for an agent registry when building its first headers).
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
  monkeypatch.setattr(constants, 'HF_HUB_DISABLE_TELEMETRY', True)
  monkeypatch.setattr(constants, 'ENDPOINT', server.address)
  # No stored login of this machine's user: a file of the test's own.
  monkeypatch.setattr(constants, 'HF_TOKEN_PATH',
                      os.fspath(tmp_path / 'hf_home' / 'token'))
  monkeypatch.setattr(constants, 'HF_STORED_TOKENS_PATH',
                      os.fspath(tmp_path / 'hf_home' / 'stored_tokens'))
  for name in ('HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE', 'HF_TOKEN'):
    monkeypatch.delenv(name, raising=False)
  if token is not None:
    monkeypatch.setenv('HF_TOKEN', token)


@pytest.fixture
def gated(monkeypatch, tmp_path):
  """A gated repo on the stand-in; HF_TOKEN is its token."""
  with _offline.loopback_only() as outside:
    with HubServer({REPO: FILES}, token=TOKEN) as server:
      _env(monkeypatch, tmp_path, server, TOKEN)
      yield server
  assert outside == [], f'reached off loopback: {outside[:5]}'


def _authorizations(requests) -> list[str | None]:
  return [{k.lower(): v for k, v in h.items()}.get('authorization')
          for _, _, h in requests]


def _assert_token_only_to_the_hub(server, *others):
  """Every Hub request carried the token; no other server got any
  credential."""
  assert server.requests
  assert set(_authorizations(server.requests)) == {f'Bearer {TOKEN}'}
  # The Hub's redirect answers a HEAD (its size): the CDN gets GETs alone.
  assert {m for m, _, _ in server.cdn.headers} <= {'GET'}
  for other in (server.cdn, *others):
    assert other.headers, 'the other server got no request'
    for _, target, headers in other.headers:
      lower = {k.lower(): v for k, v in headers.items()}
      assert 'authorization' not in lower and 'cookie' not in lower, target
      assert TOKEN not in repr(headers) + target


def _links(tmp_path, server, rev='main'):
  return make_manual_dir(tmp_path, rows=[
      (n, server.resolve_url(REPO, f'data/{n}', rev)) for n in NAMES])


def _builder(data_dir, **download_options):
  return tfds.builder(
      'segment_anything', config=config_lib.tars_config('0-2'),
      data_dir=os.fspath(data_dir),
      download_options={'backoff': 0.01, 'retries': 3, 'timeout': 10,
                        'progress': False, **download_options})


def _built(builder) -> dict[int, bytes]:
  """image id -> JPEG bytes of a prepared dataset."""
  ds = builder.as_dataset(split='train', decoders={
      'image': {'content': tfds.decode.SkipDecoding()}})
  return {int(e['image']['image_id']): e['image']['content']
          for e in tfds.as_numpy(ds)}


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> dict[int, bytes]:
  """image id -> JPEG bytes of the three tars, read with the stdlib."""
  local = make_manual_dir(tmp_path_factory.mktemp('local'), tars=NAMES)
  return {i: jpg for i, (jpg, _) in read_inputs(local).items()}


# ------------------------------------------------ links into a gated repo


@pytest.mark.parametrize('disk_mode', ['keep', 'stream'])
def test_a_links_file_into_a_gated_repo_builds(gated, tmp_path, caplog,
                                               inputs, disk_mode):
  with LoopbackServer({'sa_000002.tar': TARS['sa_000002.tar']}) as other:
    manual = make_manual_dir(tmp_path, rows=[
        (n, gated.resolve_url(REPO, f'data/{n}')) for n in NAMES[:2]] + [
            ('sa_000002.tar', other.mirror_url('sa_000002.tar'))])
    caplog.set_level(logging.DEBUG)
    builder = _builder(tmp_path / 'data', disk_mode=disk_mode)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual)))
  assert _built(builder) == inputs
  _assert_token_only_to_the_hub(gated, other)
  assert TOKEN not in caplog.text
  # Each Hub request answered with a redirect: the bytes came from the CDN.
  assert {path.split('?')[0].rsplit('/', 1)[-1]
          for _, path, _ in gated.cdn.headers} == set(NAMES[:2])


def test_the_stored_login_is_used_when_hf_token_is_unset(
    gated, tmp_path, monkeypatch):
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('HF_TOKEN')
  os.makedirs(os.path.dirname(constants.HF_TOKEN_PATH))
  with open(constants.HF_TOKEN_PATH, 'w') as f:
    f.write(TOKEN)
  manual = _links(tmp_path, gated)
  out = materialize.materialize(
      shards.select(shards.find_shards(manual).shards, num_tars=None,
                    tars=[0]), download_dir=tmp_path / 'dl',
      manual_dir=manual, options=FAST)
  assert [s.name for s in out] == [NAMES[0]]
  _assert_token_only_to_the_hub(gated)


@pytest.mark.parametrize('token, status, says, then', [
    (None, 401, 'no Hugging Face token is set: set HF_TOKEN to a token of an'
     ' account that accepted the repo\'s terms on',
     ' (or log in with `hf auth login`)'),
    ('hf_NotTheRightOne', 403, 'the Hugging Face token sent (HF_TOKEN, or the'
     ' stored login) was refused: accept the repo\'s terms on',
     ' with that token\'s account, and check that the token may read the'
     ' repo'),
])
def test_a_refusal_says_to_set_hf_token_before_any_disk_check(
    gated, tmp_path, monkeypatch, token, status, says, then):
  _env(monkeypatch, tmp_path, gated, token)
  manual = _links(tmp_path, gated)
  offered = list(shards.find_shards(manual).shards.values())
  for stream in (False, True):
    gated.requests.clear()
    with pytest.raises(errors.AccessError) as e:
      materialize.materialize(
          offered, download_dir=tmp_path / 'dl', data_dir=tmp_path / 'data',
          manual_dir=manual,
          options=FAST.replace(disk_mode='stream' if stream else 'keep'))
    page = f'{gated.address}/datasets/{REPO}'
    assert str(e.value) == (
        f'{gated.resolve_url(REPO, "data/sa_000000.tar")}: HTTP {status}'
        f' from the Hugging Face Hub ({gated.address[7:]}) for datasets/'
        f'{REPO}: {says} {page}{then}')
    assert '\n' not in str(e.value)
    if token:
      assert token not in str(e.value)
    # HEAD requests only, answered before the disk preflight: no download.
    assert {m for m, _, _ in gated.requests} == {'HEAD'}
  assert not gated.cdn.headers


def test_a_refused_download_stops_the_others(gated, tmp_path, monkeypatch):
  _env(monkeypatch, tmp_path, gated, None)
  manual = _links(tmp_path, gated)
  offered = list(shards.find_shards(manual).shards.values())
  with pytest.raises(errors.AccessError, match='[1-3] of 3 downloads were'
                     ' refused .*HTTP 401 from the Hugging Face Hub'):
    materialize.materialize(offered, download_dir=tmp_path / 'dl',
                            manual_dir=manual,
                            options=FAST.replace(check_disk=False))
  assert {m for m, _, _ in gated.requests} == {'GET'}
  assert not gated.cdn.headers


def test_cli_says_it_in_one_line(gated, tmp_path, monkeypatch, capsys):
  _env(monkeypatch, tmp_path, gated, None)
  manual = _links(tmp_path, gated)
  code = cli.main(['build', '--tars', '0-2', '--manual_dir', str(manual),
                   '--data_dir', str(tmp_path / 'data'), '--download_only',
                   '--no_progress'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1, err
  assert 'HTTP 401 from the Hugging Face Hub' in err[0]
  assert 'set HF_TOKEN' in err[0] and 'disk' not in err[0].lower()


# ------------------------------------------------------------ the rule


def test_credentials_never_follow_a_redirect_to_another_host(
    monkeypatch, tmp_path):
  with LoopbackServer({'sa_000000.tar': TARS['sa_000000.tar']}) as cdn, \
       LoopbackServer() as first:
    first.redirects['a.tar'] = cdn.mirror_url('sa_000000.tar')
    # Not the Hub (HF_ENDPOINT unset: huggingface.co): no token anywhere.
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.delenv('HF_ENDPOINT', raising=False)
    with http_lib.Client(FAST) as client:
      resp = client.send('GET', first.mirror_url('a.tar'),
                         {'Authorization': 'Basic bXk6cGFzcw==',
                          'Cookie': 'session=1', 'Range': 'bytes=0-9'})
      assert resp.status_code == 206
      resp.close()
    (_, _, at_first), = first.headers
    (_, _, at_cdn), = cdn.headers
    assert at_first['Authorization'] == 'Basic bXk6cGFzcw=='
    assert at_first['Cookie'] == 'session=1'
    assert 'Authorization' not in at_cdn and 'Cookie' not in at_cdn
    assert at_cdn['Range'] == 'bytes=0-9'  # What is not a credential goes.


@pytest.mark.parametrize('how', ['link', 'redirect'])
def test_the_token_goes_by_where_a_request_goes_not_how_a_parser_reads_it(
    monkeypatch, how):
  """`http://OTHER\\@HUB/x` is HUB to the stdlib's `urlsplit`, but requests
  connects to OTHER: as a link, or as the Location of the Hub's redirect,
  it gets no token."""
  with LoopbackServer() as other, LoopbackServer() as hub:
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setenv('HF_ENDPOINT', hub.address)
    sneaky = (f'http://127.0.0.1:{other.port}\\@127.0.0.1:{hub.port}'
              '/datasets/o/r/resolve/main/sa_000000.tar')
    hub.redirects['sa_000000.tar'] = sneaky
    url = sneaky if how == 'link' else hub.mirror_url('sa_000000.tar')
    with http_lib.Client(FAST) as client:
      client.send('GET', url).close()
    assert len(other.headers) == 1
    (_, target, at_other), = other.headers
    assert target.startswith('/%5C@127.0.0.1:'), target
    assert 'Authorization' not in at_other
    # The Hub itself got its token, with the redirect's request alone.
    assert _authorizations(hub.headers) == (
        [] if how == 'link' else [f'Bearer {TOKEN}'])


def test_no_netrc_credentials_are_sent(monkeypatch, tmp_path):
  """requests would send ~/.netrc's login (its `default` one to any host);
  this package sends no credential it was not given for that URL."""
  netrc = tmp_path / 'netrc'
  netrc.write_text('default login me password secret\n')
  netrc.chmod(0o600)
  monkeypatch.setenv('NETRC', os.fspath(netrc))
  monkeypatch.delenv('HF_TOKEN', raising=False)
  with LoopbackServer({'sa_000000.tar': TARS['sa_000000.tar']}) as server:
    with http_lib.Client(FAST) as client:
      client.send('HEAD', server.mirror_url('sa_000000.tar')).close()
      user_url = server.mirror_url('sa_000000.tar').replace(
          '://', '://u:p@')
      client.send('HEAD', user_url).close()
  (_, _, plain), (_, _, with_user) = server.headers
  assert 'Authorization' not in plain
  assert with_user['Authorization'] == 'Basic dTpw'  # u:p, as given.


def test_the_hub_token_goes_to_hub_origins_only(monkeypatch):
  monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:8123/')
  lookups = []
  lookup = lambda: lookups.append(1) or TOKEN
  for url, sent in [
      ('https://huggingface.co/datasets/o/r/resolve/main/sa_000000.tar', True),
      ('https://huggingface.co:443/api/datasets/o/r', True),
      ('http://127.0.0.1:8123/datasets/o/r/resolve/main/x', True),
      ('http://huggingface.co/datasets/o/r/resolve/main/x', False),
      ('https://cas-bridge.xethub.hf.co/xet-bridge-us/abc?X-Amz-Sig=1', False),
      ('https://cdn-lfs.hf.co/repos/ab/cd/x', False),
      ('https://huggingface.co.evil.example/datasets/o/r', False),
      ('https://evil.example/huggingface.co/x', False),
      ('http://127.0.0.1:8124/datasets/o/r/resolve/main/x', False),
      ('https://user@huggingface.co@evil.example/x', False),
      # The stdlib's urlsplit reads the host after the backslash; requests,
      # like browsers, connects to the one before it.
      ('https://evil.example\\@huggingface.co/datasets/o/r', False),
      ('http://127.0.0.1:8124\\@127.0.0.1:8123/datasets/o/r', False),
  ]:
    assert (hub_lib.token_for(url, lookup) == TOKEN) is sent, url
  assert len(lookups) == 3  # The token is looked up for the Hub alone.


# ---------------------------------------------------- hf:// manual_dir


def test_an_hf_folder_lists_its_tars_at_one_commit(gated, tmp_path):
  found = shards.find_shards(f'hf://datasets/{REPO}/data')
  assert sorted(found.shards) == [0, 1, 2]
  assert found.refused == {
      'sa_000009': 'an extracted folder; only tars are read from the Hub'}
  for i, name in enumerate(NAMES):
    source = found.shards[i]
    assert isinstance(source, HttpTar)
    assert source.location == gated.resolve_url(REPO, f'data/{name}', SHA)
    assert source.size() == len(TARS[name])  # From the listing.
  # The commit, then 5 entries 2 a page (the pages of the `Link` header).
  # No request per tar.
  assert [(m, p.split('?')[0]) for m, p, _ in gated.requests] == [
      ('GET', f'/api/datasets/{REPO}/revision/main')] + [
          ('GET', f'/api/datasets/{REPO}/tree/{SHA}/data')] * 3
  assert set(_authorizations(gated.requests)) == {f'Bearer {TOKEN}'}


@pytest.mark.parametrize('disk_mode', ['keep', 'stream'])
def test_a_build_from_an_hf_folder(gated, tmp_path, inputs, disk_mode):
  """`manual_dir='hf://...'` builds (TFDS's own manual_dir check would take
  it for a local path): every image, the token only to the Hub, and with
  the tars' md5s, each checked as it is read or downloaded."""
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{hashlib.md5(b).hexdigest()}  {n}\n'
                          for n, b in TARS.items()))
  builder = _builder(tmp_path / 'data', disk_mode=disk_mode,
                     checksums=os.fspath(sums))
  builder.download_and_prepare(
      download_dir=os.fspath(tmp_path / 'dl'),
      download_config=tfds.download.DownloadConfig(
          manual_dir=f'hf://datasets/{REPO}/data'))
  assert _built(builder) == inputs
  assert builder.info.metadata['audit']['tars'] == NAMES
  _assert_token_only_to_the_hub(gated)


@pytest.mark.parametrize('disk_mode', ['keep', 'delete', 'stream'])
def test_an_hf_folder_is_read_like_any_link(gated, tmp_path, disk_mode):
  builder = _builder(tmp_path / 'data', disk_mode=disk_mode)
  config = tfds.download.DownloadConfig(
      manual_dir=f'hf://datasets/{REPO}@main/data')
  gated.requests.clear()
  out = builder.fetch_shards(config, download_dir=tmp_path / 'dl')
  heads = [p for m, p, _ in gated.requests if m == 'HEAD']
  assert len(heads) == 1  # One access check for the repo; sizes listed.
  for source in out:
    if disk_mode == 'stream':
      assert isinstance(source, HttpTar) and source.remote
      reader = source.open_sequential(0)
      try:
        assert reader.read(len(TARS[source.name]) + 1) == TARS[source.name]
      finally:
        reader.close()
    else:
      assert source.downloaded
      assert source.location == os.fspath(
          download.cache_dir(tmp_path / 'dl') / source.name)
      with open(source.location, 'rb') as f:
        assert f.read() == TARS[source.name]
  _assert_token_only_to_the_hub(gated)
  if disk_mode == 'stream':  # One Range request per tar, via a redirect.
    assert sorted(h.get('Range') for m, _, h in gated.cdn.headers
                  if m == 'GET') == [f'bytes=0-{len(TARS[n]) - 1}'
                                     for n in NAMES]
    return
  # The cache is by tar name: a rerun sends no download request.
  gated.requests.clear()
  gated.cdn.headers.clear()
  again = builder.fetch_shards(config, download_dir=tmp_path / 'dl')
  assert again == out and not gated.cdn.headers
  assert not [m for m, p, _ in gated.requests if '/resolve/' in p]
  if disk_mode == 'delete':
    materialize.release(out, options=options.DownloadOptions(
        disk_mode='delete'))
    assert not any(os.path.exists(s.location) for s in out)


def test_an_hf_folder_resumes_and_retries_through_the_hub(gated, tmp_path):
  gated.cdn.add_fault('sa_000001.tar', 'cut', 700)
  gated.cdn.add_fault('sa_000002.tar', 'status', 503)
  listing = hub_lib.list_tars(f'hf://datasets/{REPO}/data')
  out = materialize.materialize(
      list(listing.shards.values()), download_dir=tmp_path / 'dl',
      options=FAST.replace(checksums=os.fspath(_sums(tmp_path))))
  for source in out:
    with open(source.location, 'rb') as f:
      assert f.read() == TARS[source.name]
  ranges = [h.get('Range') for _, p, h in gated.cdn.headers
            if 'sa_000001' in p]
  assert ranges == [None, 'bytes=700-']  # Resumed where the cut left it.
  resolves = [p for m, p, _ in gated.requests
              if m == 'GET' and p.endswith('sa_000001.tar')]
  assert len(resolves) == 2  # Each attempt asks the Hub again.
  _assert_token_only_to_the_hub(gated)


def _sums(tmp_path):
  path = tmp_path / 'sums.md5'
  import hashlib  # pylint: disable=g-import-not-at-top
  path.write_text(''.join(f'{hashlib.md5(b).hexdigest()}  {n}\n'
                          for n, b in TARS.items()))
  return path


@pytest.mark.parametrize('uri, message', [
    ('hf://models/o/r', 'not a Hugging Face dataset repo; give'
     ' hf://datasets/OWNER/REPO[@REVISION][/PATH]'),
    ('hf://datasets/justone', 'not a Hugging Face dataset repo'),
    ('hf://datasets/o/r/../x', "'..' is not a repo name or folder"),
    ('hf://datasets/nobody/nothing', 'has no dataset repo nobody/nothing'),
    (f'hf://datasets/{REPO}@v9', f"{REPO} has no revision 'v9'"),
    (f'hf://datasets/{REPO}/nope', f"{REPO} has no folder 'nope'"),
    (f'hf://datasets/{REPO}', 'holds no sa_NNNNNN.tar'),
])
def test_an_hf_folder_that_cannot_be_read_says_why(gated, uri, message):
  with pytest.raises(errors.SourceError) as e:
    shards.find_shards(uri)
  assert message in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('fault', ['stall', 'endless'])
def test_a_listing_that_stalls_or_never_ends_is_given_up(monkeypatch,
                                                         tmp_path, fault):
  """huggingface_hub's client has no deadline and follows pages as long as
  they come: the listing as a whole has one."""
  monkeypatch.setattr(hub_lib, 'LISTING_SECONDS', 2)
  with _offline.loopback_only(), HubServer({REPO: FILES},
                                           listing_fault=fault) as server:
    _env(monkeypatch, tmp_path, server, None)
    start = time.monotonic()
    with pytest.raises(errors.SourceError) as e:
      hub_lib.list_tars(f'hf://datasets/{REPO}/data')
    took = time.monotonic() - start
    trees = [p for _, p, _ in server.requests if '/tree/' in p]
  assert 'did not finish listing it in 2 s' in str(e.value)
  assert f'hf://datasets/{REPO}/data' in str(e.value)
  assert '\n' not in str(e.value)
  assert 2 <= took < 10, took
  assert len(trees) == 1 if fault == 'stall' else len(trees) > 5


def test_a_gated_listing_says_to_set_hf_token(monkeypatch, tmp_path):
  with _offline.loopback_only() as outside:
    with HubServer({REPO: FILES}, token=TOKEN, gated_listing=True) as server:
      _env(monkeypatch, tmp_path, server, None)
      with pytest.raises(errors.AccessError) as e:
        shards.find_shards(f'hf://datasets/{REPO}/data')
  assert outside == []
  assert str(e.value).startswith(
      f'hf://datasets/{REPO}@main/data: HTTP 401 from the Hugging Face Hub')
  assert 'set HF_TOKEN' in str(e.value)


def test_a_streamed_hf_tar_is_checked_as_it_is_read(gated, tmp_path):
  builder = _builder(tmp_path / 'data', disk_mode='stream',
                     checksums='known')
  out = builder.fetch_shards(tfds.download.DownloadConfig(
      manual_dir=f'hf://datasets/{REPO}/data'), download_dir=tmp_path / 'dl')
  reader = out[0].open_sequential(0)
  try:
    reader.read(len(TARS[NAMES[0]]))
    verdict = checksums.stream_verdict(reader)
  finally:
    reader.close()
  # The dummy tars are not the real ones: the published md5 says so.
  assert verdict.reason == errors.CHECKSUM_MISMATCH
  assert verdict.detail.endswith(
      'the published SA-1B md5 list says 78d0f487c735a3de86ae6e1b0ff24ea9')
