"""Checksums: the published list, hashing as tars are read, verdicts.

Downloads hash their bodies as they write them, remote tars read front to
back hash what goes by (the verdict comes at the end of the walk), local
tars are hashed once and their verdict kept in a marker that is never
written through a symlink. Against a loopback HTTP server and `ram://`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap
import warnings

import pytest

from segment_anything_tfds import cli
from segment_anything_tfds import errors
from segment_anything_tfds import options
from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import download
from segment_anything_tfds.sources import http as http_lib
from segment_anything_tfds.sources import local
from segment_anything_tfds.sources import materialize
from segment_anything_tfds.sources import mirror
from segment_anything_tfds.sources.http_tar import HttpTar

from conftest import DUMMY_DATA
from conftest import build
from conftest import make_manual_dir
import _ram_epath
from _loopback_server import LoopbackServer

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = [f'sa_00000{i}.tar' for i in range(3)]
TARS = {n: (DUMMY_DATA / n).read_bytes() for n in NAMES}
MD5 = {n: hashlib.md5(b).hexdigest() for n, b in TARS.items()}
FAST = options.DownloadOptions(retries=3, backoff=0.01, max_backoff=0.02,
                               timeout=5, progress=False)
# What the published list says of tars 0-2 (the real ones, not these).
KNOWN_0 = '78d0f487c735a3de86ae6e1b0ff24ea9'

# Files opened while `_OPENED['path']` is set: a tar hashed, or not.
_OPENED: dict = {'path': None, 'count': 0}


def _count_opens(event: str, args, seen=_OPENED) -> None:
  if event == 'open' and seen['path'] is not None and args and (
      os.fspath(args[0]) if isinstance(args[0], (str, os.PathLike))
      else None) == seen['path']:
    seen['count'] += 1


sys.addaudithook(_count_opens)


def _opens(path, fn, *args, **kwargs):
  """(fn's result, how many times `path` was opened while it ran)."""
  _OPENED.update(path=os.fspath(path), count=0)
  try:
    return fn(*args, **kwargs), _OPENED['count']
  finally:
    _OPENED['path'] = None


def _expected(name: str, digest: str | None = None) -> checksums.Expected:
  return checksums.Expected('md5', digest or MD5[name], 'sums.md5')


@pytest.fixture
def server():
  with LoopbackServer(TARS) as srv:
    yield srv


# ------------------------------------------------------- the known list


def test_the_known_list_is_the_published_file_as_it_is():
  text = checksums.known_text()
  # Byte for byte XuyangShen/SA-1B-Fast-Downloader's checklist.txt @7ddfd31.
  assert hashlib.md5(text).hexdigest() == '7fe3dff6c031642812a16abb873f5f60'
  lines = text.decode('ascii').split('\n')
  assert lines[-1] == '' and len(lines[:-1]) == 1000
  seen = []
  for line in lines[:-1]:
    m = re.fullmatch(r'([0-9a-f]{32})  sa_([0-9]{6})\.tar', line)
    assert m, line
    seen.append(int(m.group(2)))
  assert sorted(seen) == list(range(1000))
  known = checksums.known()
  assert len(known.sums) == 1000
  assert known.expected('sa_000000.tar') == checksums.Expected(
      'md5', KNOWN_0, 'the published SA-1B md5 list')
  assert 'XuyangShen/SA-1B-Fast-Downloader' in checksums.KNOWN_LIST
  readme = (REPO / 'segment_anything_tfds/sources/data/README.md').read_text()
  assert ('https://github.com/XuyangShen/SA-1B-Fast-Downloader' in readme
          and '7ddfd3193a72909a38337ac2f0749b15a30137a2' in readme)


def test_the_known_list_is_package_data(monkeypatch):
  import runpy  # pylint: disable=g-import-not-at-top
  import setuptools  # pylint: disable=g-import-not-at-top
  given = {}
  monkeypatch.setattr(setuptools, 'setup', given.update)
  runpy.run_path(os.fspath(REPO / 'setup.py'))
  data = given['package_data']['segment_anything_tfds.sources']
  assert {'data/checklist.txt', 'data/README.md'} <= set(data)
  assert all((REPO / 'segment_anything_tfds/sources' / f).is_file()
             for f in data)


# ------------------------------------------------------------ choosing


def test_which_list_a_build_checks(tmp_path):
  manual = make_manual_dir(tmp_path)
  assert checksums.checklist(None, manual) is None
  assert checksums.checklist('none', manual) is None
  assert checksums.checklist('known', manual) is checksums.known()
  auto = manual / checksums.CHECKSUMS_FILE_NAME
  auto.write_text(f'{MD5[NAMES[0]]}  {NAMES[0]}\n')
  assert checksums.checklist(None, manual).source == os.fspath(auto)
  assert checksums.checklist('none', manual) is None  # Even with the file.
  own = tmp_path / 'own.sha256'
  own.write_text(f'{"a" * 64}  sa_000001.tar\n')
  listed = checksums.checklist(os.fspath(own), manual)
  assert listed.expected('sa_000001.tar') == checksums.Expected(
      'sha256', 'a' * 64, os.fspath(own))
  assert listed.expected('sa_000000.tar') is None
  # A Hub manual_dir is listed, never searched for files.
  assert checksums.checklist(None, 'hf://datasets/o/r') is None
  # A list that is a symlink to nothing (a disk not mounted) is an error,
  # never a build without checks.
  auto.unlink()
  auto.symlink_to(tmp_path / 'unmounted' / 'md5s.txt')
  with pytest.raises(checksums.ChecksumError) as e:
    checksums.checklist(None, manual)
  assert str(e.value) == f'checksum list {auto}: no such file'


def test_a_checksum_list_is_lines_of_digest_and_name():
  md5 = MD5[NAMES[0]]
  parse = checksums.parse_checksums
  # CRLF, a BOM-less '*name', a path, blank lines and comments: one tar.
  assert parse(f'# made by md5sum\r\n\n{md5.upper()} *dir/{NAMES[0]}\r\n',
               source='l') == {NAMES[0]: ('md5', md5)}
  # Lines end at \n only: \v, \x1c or U+2028 in a line is not a new line,
  # and the line numbers are the file's.
  for bad in (f'{md5}  {NAMES[0]}\v{md5}  {NAMES[1]}',
              f'{md5}  {NAMES[0]}\u2028x'):
    with pytest.raises(errors.ChecksumError,
                       match=r"^l:2: '.*' is not a file name"):
      parse(f'# first\n{bad}\n', source='l')
  # Text after the name is not part of the name.
  with pytest.raises(errors.ChecksumError, match=(
      r"^l:1: 'sa_000000.tar  # ok' is not a file name \(no spaces or"
      r' control characters; a comment goes on a line of its own')):
    parse(f'{md5}  {NAMES[0]}  # ok\n', source='l')
  with pytest.raises(errors.ChecksumError, match=r"'sa_000000.tar\\x00'"):
    parse(f'{md5}  {NAMES[0]}\x00\n', source='l')


def test_a_checksum_list_that_is_no_regular_file_is_refused_unread(
    tmp_path):
  fifo = tmp_path / 'fifo.md5'
  os.mkfifo(fifo)  # No writer: reading it would block.
  for path, says in ((fifo, 'not a regular file (a FIFO, device or'
                      ' socket)'),
                     ('/dev/zero', 'not a regular file'),
                     (tmp_path, 'a directory, not a file'),
                     (tmp_path / 'none.md5', 'no such file')):
    with pytest.raises(errors.ChecksumError) as e:
      checksums.read_checksums(path)
    assert str(e.value).startswith(f'checksum list {path}: {says}')


def test_a_list_that_names_none_of_the_tars_is_an_error(tmp_path):
  manual = make_manual_dir(tmp_path, tars=NAMES)
  sums = tmp_path / 'other.md5'
  sums.write_text(f'{MD5[NAMES[0]]}  sa_000042.tar\n')
  with pytest.raises(errors.ChecksumError, match=(
      f'^{re.escape(os.fspath(sums))} lists none of the 3 tars of this build'
      r' \(sa_000000.tar, sa_000001.tar, sa_000002.tar\): nothing would be'
      ' verified')):
    materialize.materialize(_offered(manual), download_dir=tmp_path / 'dl',
                            manual_dir=manual,
                            options=FAST.replace(checksums=os.fspath(sums)))


@pytest.mark.parametrize('folder_name', ['sa_000001', 'sa_000001.tar'])
def test_a_folder_read_for_a_listed_tar_is_named_as_not_verified(
    tmp_path, caplog, folder_name):
  """The list has the tar's digest; its extracted folder (even a folder
  named like the tar) cannot be checked against it: a warning names it."""
  manual = make_manual_dir(tmp_path, tars=[NAMES[0]])
  with tarfile.open(DUMMY_DATA / NAMES[1]) as t:
    t.extractall(manual / folder_name, filter='data')
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{MD5[n]}  {n}\n' for n in NAMES[:2]))
  with caplog.at_level(logging.INFO):
    out = materialize.materialize(
        _offered(manual), download_dir=tmp_path / 'dl', manual_dir=manual,
        options=FAST.replace(checksums=os.fspath(sums)))
  assert sorted(s.name for s in out) == NAMES[:2]
  [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert warning.getMessage() == (
      f'1 extracted folders are read instead of tars {sums} lists, and are'
      ' not verified (a list has digests of tars): sa_000001.tar'
      f' ({manual / folder_name})')


def test_options_take_checksums_and_the_deprecated_checksums_file():
  assert options.DownloadOptions().checksums is None
  assert options.DownloadOptions(checksums='known').checksums == 'known'
  assert options.DownloadOptions(
      checksums=pathlib.Path('/x/sums.md5')).checksums == '/x/sums.md5'
  with pytest.warns(DeprecationWarning, match='checksums_file is deprecated'):
    opts = options.DownloadOptions.make({'checksums_file': '/x/s.md5'})
  assert (opts.checksums, opts.checksums_file) == ('/x/s.md5', None)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DeprecationWarning)
    with pytest.raises(errors.ConfigError, match='disagree'):
      options.DownloadOptions(checksums='known', checksums_file='/x/s.md5')
  with pytest.raises(errors.ConfigError, match='"known", "none" or a'):
    options.DownloadOptions(checksums=5)


def test_cli_checksums_flags(capsys):
  parse = lambda *argv: cli.build_parser().parse_args(
      ['build', '--tars', '0', *argv])
  assert cli.build._download_options(parse('--checksums', 'known')) == {
      'checksums': 'known'}
  assert cli.build._download_options(parse()) == {}
  mapped = cli.build._download_options(parse('--checksums_file', 's.md5'))
  assert mapped == {'checksums': 's.md5'}
  assert '--checksums_file is deprecated; use --checksums FILE' in (
      capsys.readouterr().err)
  args = cli.build_parser().parse_args(
      ['mirror', '--links', 'l.txt', '--dest', '/d', '--checksums', 'known'])
  assert cli.common.checksums_choice(args) == 'known'
  code = cli.main(['build', '--tars', '0', '--checksums', 'known',
                   '--checksums_file', 's.md5'])
  assert code == 2
  assert 'give --checksums alone' in capsys.readouterr().err


# ------------------------------------------------------------- markers


def test_a_local_tar_is_hashed_once_while_unchanged(tmp_path):
  path = tmp_path / NAMES[0]
  path.write_bytes(TARS[NAMES[0]])
  tar = local.LocalTar(NAMES[0], os.fspath(path))
  problem, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert problem is None and opened == 1
  marker = pathlib.Path(f'{path}{checksums.VERIFIED_SUFFIX}')
  st = path.stat()
  assert marker.read_text() == (
      f'md5:{MD5[NAMES[0]]} {st.st_size} {st.st_mtime_ns}'
      f' {st.st_dev}:{st.st_ino} {st.st_ctime_ns}\n')
  problem, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert problem is None and opened == 0  # The marker's verdict.
  # Another list (another digest) is a new question: hashed again.
  problem, opened = _opens(path, checksums.verify, tar,
                           _expected(NAMES[0], '0' * 32))
  assert opened == 1
  assert problem == f'md5 is {MD5[NAMES[0]]}, sums.md5 says {"0" * 32}'
  # A new mtime, or new bytes, too.
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  problem, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert problem is None and opened == 1
  path.write_bytes(TARS[NAMES[1]])
  assert checksums.verify(tar, _expected(NAMES[0])) == (
      f'md5 is {MD5[NAMES[1]]}, sums.md5 says {MD5[NAMES[0]]}')


def test_a_tar_replaced_with_its_size_and_mtime_is_hashed_again(tmp_path):
  """`cp -p` or `rsync -t` of another tar of the same size over a verified
  one keeps size and mtime: its inode or change time still tell."""
  path = tmp_path / NAMES[0]
  path.write_bytes(TARS[NAMES[0]])
  tar = local.LocalTar(NAMES[0], os.fspath(path))
  assert checksums.verify(tar, _expected(NAMES[0])) is None
  st = path.stat()
  other = bytearray(TARS[NAMES[0]])
  other[-1024] ^= 1  # Same size; inside the end padding.
  new = tmp_path / 'new'
  new.write_bytes(bytes(other))
  os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
  os.replace(new, path)
  assert (path.stat().st_size, path.stat().st_mtime_ns) == (
      st.st_size, st.st_mtime_ns)
  problem, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert opened == 1 and problem.startswith('md5 is ')


def test_a_marker_is_never_written_through_a_symlink(tmp_path):
  path = tmp_path / NAMES[0]
  path.write_bytes(TARS[NAMES[0]])
  victim = tmp_path / 'victim.txt'
  victim.write_text('keep me\n')
  marker = pathlib.Path(f'{path}{checksums.VERIFIED_SUFFIX}')
  marker.symlink_to(victim)
  tar = local.LocalTar(NAMES[0], os.fspath(path))
  assert checksums.verify(tar, _expected(NAMES[0])) is None
  assert victim.read_text() == 'keep me\n'
  assert not marker.is_symlink() and marker.read_text().startswith('md5:')
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      [path.name, marker.name, victim.name])  # No temp file left.


def test_a_marker_that_cannot_be_written_is_no_failure(tmp_path):
  """The marker is a cache: a full disk (here `ulimit -f` of 8 bytes) leaves
  none, and the tar that matches still matches (it was a DiskSpaceError,
  and a finished download was reported as failed)."""
  path = tmp_path / NAMES[0]
  path.write_bytes(TARS[NAMES[0]])
  code = textwrap.dedent(f"""
      import resource, signal
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill.
      resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))
      from segment_anything_tfds.sources import checksums, local
      tar = local.LocalTar({NAMES[0]!r}, {os.fspath(path)!r})
      expected = checksums.Expected('md5', {MD5[NAMES[0]]!r}, 'sums')
      print(checksums.verify(tar, expected))
      """)
  res = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert (res.returncode, res.stdout) == (0, 'None\n'), res.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == [NAMES[0]]


def test_a_marker_that_is_a_symlink_or_not_ours_is_not_believed(tmp_path):
  path = tmp_path / NAMES[0]
  path.write_bytes(TARS[NAMES[0]])
  tar = local.LocalTar(NAMES[0], os.fspath(path))
  assert checksums.verify(tar, _expected(NAMES[0])) is None
  marker = pathlib.Path(f'{path}{checksums.VERIFIED_SUFFIX}')
  planted = tmp_path / 'planted'
  os.replace(marker, planted)  # A verdict that would be believed...
  marker.symlink_to(planted)  # ... reached through a symlink.
  _, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert opened == 1
  if os.geteuid() != 0:
    return  # Only root can give a file to another user.
  os.chown(marker, 12345, 12345)
  _, opened = _opens(path, checksums.verify, tar, _expected(NAMES[0]))
  assert opened == 1


# ------------------------------------------------ hashing while reading


def _walk(reader) -> list[str]:
  """Reads a tar front to back as the engines do: each header, each
  member's data read (json) or skipped (the rest), stopping at the first
  end-of-archive block (what follows is left unread)."""
  names = []
  while True:
    block = reader.read(512)
    if len(block) < 512 or block == bytes(512):
      return names
    info = tarfile.TarInfo.frombuf(block, 'utf-8', 'surrogateescape')
    padded = -(-info.size // 512) * 512
    if info.name.endswith('.json'):
      assert len(reader.read(padded)) == padded
    else:
      assert reader.skip(padded) == padded
    names.append(info.name)


def _padded_tar() -> bytes:
  """A tar of 3 MiB (several 1 MiB skips) whose records end in padding."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as t:
    for name, size in (('a.bin', 3 << 20), ('sa_1.json', 700)):
      info = tarfile.TarInfo(name)
      info.size = size
      t.addfile(info, io.BytesIO(os.urandom(size)))
  return buf.getvalue()


PADDED = _padded_tar()


def _remote_sources(tmp_path, srv, expected):
  _ram_epath.enable()
  tmp_path.mkdir()
  local_copy = tmp_path / NAMES[0]
  local_copy.write_bytes(PADDED)
  uri = (f'ram://hash-{os.getpid()}-{tmp_path.parent.name}-{tmp_path.name}'
         f'/{NAMES[0]}')
  _ram_epath.upload(os.fspath(local_copy), uri)
  return {
      'http': HttpTar(NAMES[0], srv.mirror_url(NAMES[0]), len(PADDED),
                      options=FAST, checksum=expected),
      'bucket': bucket.BucketTar(NAMES[0], uri, checksum=expected),
  }


@pytest.mark.integration
@pytest.mark.parametrize('kind', ['http', 'bucket'])
def test_a_remote_tar_read_front_to_back_is_hashed_as_it_goes(tmp_path,
                                                              kind):
  assert len(PADDED) % 10240 == 0 and PADDED[-2048:] == bytes(2048)
  good = checksums.Expected('md5', hashlib.md5(PADDED).hexdigest(), 'l.md5')
  bad = checksums.Expected('md5', '0' * 32, 'l.md5')
  with LoopbackServer({NAMES[0]: PADDED}) as srv:
    for expected, verdict in ((good, None), (bad, 'mismatch')):
      source = _remote_sources(tmp_path / verdict if verdict else
                               tmp_path / 'match', srv, expected)[kind]
      srv.log.clear()
      reader = source.open_sequential(0)
      try:
        assert _walk(reader) == ['a.bin', 'sa_1.json']
        assert reader.tell() < len(PADDED)  # The end padding is unread...
        found = checksums.stream_verdict(reader)
        assert reader.tell() == len(PADDED)  # ... until the verdict.
      finally:
        reader.close()
      if verdict is None:
        assert found is None
      else:
        assert isinstance(found, errors.BadInputError)
        assert (found.reason, found.tar, found.member) == (
            errors.CHECKSUM_MISMATCH, NAMES[0], '-')
        assert found.detail == (f'md5 is {good.digest}, l.md5 says'
                                f' {"0" * 32}')
      if kind == 'http':  # One request for the whole tar, verdict included.
        assert [(e[0], e[2]) for e in srv.log] == [
            ('GET', f'bytes=0-{len(PADDED) - 1}')]


@pytest.mark.integration
def test_only_a_whole_read_is_hashed(tmp_path):
  expected = checksums.Expected('md5', '0' * 32, 'l.md5')
  with LoopbackServer({NAMES[0]: PADDED}) as srv:
    source = HttpTar(NAMES[0], srv.mirror_url(NAMES[0]), options=FAST,
                     checksum=expected)
    reader = source.open_sequential(512)  # Not from 0: nothing to check.
    try:
      assert checksums.stream_verdict(reader) is None
    finally:
      reader.close()
    reader = HttpTar(NAMES[0], srv.mirror_url(NAMES[0]),
                     options=FAST).open_sequential(0)  # No checksum.
    try:
      assert checksums.stream_verdict(reader) is None
    finally:
      reader.close()


@pytest.mark.integration
def test_a_stream_cut_short_has_no_verdict_but_a_cut(tmp_path):
  expected = checksums.Expected('md5', hashlib.md5(PADDED).hexdigest(), 'l')
  with LoopbackServer({NAMES[0]: PADDED}) as srv:
    srv.add_fault(NAMES[0], 'cut', 5000)  # Resumed from the byte reached.
    reader = HttpTar(NAMES[0], srv.mirror_url(NAMES[0]), options=FAST,
                     checksum=expected).open_sequential(0)
    try:
      _walk(reader)
      assert checksums.stream_verdict(reader) is None  # Resumed, whole.
    finally:
      reader.close()
    assert [e[2] for e in srv.gets()] == [
        f'bytes=0-{len(PADDED) - 1}', f'bytes=5000-{len(PADDED) - 1}']


# ------------------------------------------------ hashing downloads


def _fetch(srv, name, dest, expected):
  with http_lib.Client(FAST) as client:
    return download.fetch(srv.url(name), os.fspath(dest), client=client,
                          expected=expected)


@pytest.mark.integration
def test_a_download_is_hashed_as_it_is_written(server, tmp_path):
  name = NAMES[0]
  dest = tmp_path / name
  assert _fetch(server, name, dest, _expected(name)) == len(TARS[name])
  # Its marker says so: the check before the build reads nothing.
  problem, opened = _opens(dest, checksums.verify,
                           local.LocalTar(name, os.fspath(dest)),
                           _expected(name))
  assert problem is None and opened == 0


@pytest.mark.integration
@pytest.mark.parametrize('fault', ['cut', 'ignore_range_cut', 'partial'])
def test_a_resumed_download_hashes_every_byte_once(server, tmp_path, fault):
  name = NAMES[1]
  dest = tmp_path / name
  if fault == 'partial':  # Left by an earlier run: hashed from disk.
    (tmp_path / (name + download.PART_SUFFIX)).write_bytes(TARS[name][:3000])
  else:
    server.add_fault(name, fault, 3000)
  _fetch(server, name, dest, _expected(name))
  assert dest.read_bytes() == TARS[name]
  assert pathlib.Path(f'{dest}{checksums.VERIFIED_SUFFIX}').exists()


@pytest.mark.integration
def test_a_download_that_does_not_match_is_quarantined(server, tmp_path):
  name = NAMES[2]
  dest = tmp_path / name
  server.files[name] = TARS[NAMES[0]]  # A whole tar, not the right one.
  with pytest.raises(errors.ChecksumError) as e:
    _fetch(server, name, dest, _expected(name))
  where = tmp_path / checksums.QUARANTINE_SUBDIR / name
  assert str(e.value) == (
      f'{name} from {http_lib.host_of(server.url(name))}: the download\'s'
      f' md5 is {MD5[NAMES[0]]}, sums.md5 says {MD5[name]}; moved to'
      f' {where} (the next run downloads it again)')
  assert where.read_bytes() == TARS[NAMES[0]]
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      checksums.QUARANTINE_SUBDIR]
  assert len(server.gets(name)) == 1  # Not retried: the same bytes again.


# ------------------------------------------------------ materialize


def _links_dir(tmp_path, srv):
  return make_manual_dir(tmp_path, rows=[(n, srv.url(n)) for n in NAMES])


def _offered(manual):
  from segment_anything_tfds.sources import manual_dir  # pylint: disable=g-import-not-at-top
  return list(manual_dir.find_shards(manual).shards.values())


@pytest.mark.integration
def test_known_checks_every_tar_and_names_both_md5s(server, tmp_path):
  manual = _links_dir(tmp_path, server)
  with pytest.raises(errors.ChecksumError) as e:
    materialize.materialize(_offered(manual), download_dir=tmp_path / 'dl',
                            manual_dir=manual,
                            options=FAST.replace(checksums='known'))
  msg = str(e.value)
  assert msg.startswith(f'3 tars do not match {checksums.KNOWN_LIST}:')
  assert (f'sa_000000.tar from 127.0.0.1:{server.port}: the download\'s md5'
          f' is {MD5["sa_000000.tar"]}, the published SA-1B md5 list says'
          f' {KNOWN_0}; moved to') in msg
  cache = download.cache_dir(tmp_path / 'dl')
  assert sorted(os.listdir(cache / checksums.QUARANTINE_SUBDIR)) == NAMES
  assert not any((cache / n).exists() for n in NAMES)


def test_none_checks_nothing_even_with_a_list_in_manual_dir(tmp_path):
  manual = make_manual_dir(tmp_path, tars=NAMES[:1])
  (manual / checksums.CHECKSUMS_FILE_NAME).write_text(
      f'{"0" * 32}  {NAMES[0]}\n')
  offered = _offered(manual)
  with pytest.raises(errors.ChecksumError, match=re.escape(
      f'{NAMES[0]} ({manual / NAMES[0]}): md5 is {MD5[NAMES[0]]},'
      f' {manual / checksums.CHECKSUMS_FILE_NAME} says {"0" * 32}; not'
      ' used (your file is left where it is)')):
    materialize.materialize(offered, download_dir=tmp_path / 'dl',
                            manual_dir=manual, options=FAST)
  out = materialize.materialize(offered, download_dir=tmp_path / 'dl',
                                manual_dir=manual,
                                options=FAST.replace(checksums='none'))
  assert out == offered


def test_a_tar_that_cannot_be_quarantined_is_named_with_why(tmp_path):
  tar = tmp_path / 'sa_000001.tar'
  tar.write_bytes(b'x' * 1024)
  qdir = tmp_path / checksums.QUARANTINE_SUBDIR
  qdir.write_text('a file, not a folder\n')
  with pytest.raises(errors.ChecksumError) as e:
    checksums.quarantine(os.fspath(tar), why='md5 is 1, the list says 2')
  assert str(e.value) == (
      f'sa_000001.tar: md5 is 1, the list says 2; it cannot be moved to'
      f' {qdir} (File exists): move or remove {tar} yourself')
  assert tar.read_bytes() == b'x' * 1024
  # A marker that is not a file (never believed) does not stop the move.
  qdir.unlink()
  (tmp_path / ('sa_000001.tar' + checksums.VERIFIED_SUFFIX)).mkdir()
  assert checksums.quarantine(os.fspath(tar), 'sa_000009.tar', why='-') == (
      os.fspath(qdir / 'sa_000009.tar'))
  assert not tar.exists()
  # Gone already (another process moved it first): the caller is told.
  with pytest.raises(FileNotFoundError):
    checksums.quarantine(os.fspath(tar), why='-')


@pytest.mark.integration
def test_lenient_leaves_out_the_tars_that_do_not_match(server, tmp_path):
  manual = _links_dir(tmp_path, server)
  mine = manual / 'sa_000003.tar'
  mine.write_bytes(TARS[NAMES[0]])  # A tar of mine, not the right one.
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{MD5[n]}  {n}\n' for n in NAMES)
                  + f'{"1" * 32}  sa_000003.tar\n')
  server.files[NAMES[1]] = TARS[NAMES[2]]  # The mirror serves a wrong tar.
  ready = materialize.materialize_all(
      _offered(manual), download_dir=tmp_path / 'dl', manual_dir=manual,
      options=FAST.replace(checksums=os.fspath(sums)), lenient=True)
  assert [s.name for s in ready.sources] == [NAMES[0], NAMES[2]]
  assert [(e.reason, e.tar, e.member) for e in ready.skipped] == [
      (errors.CHECKSUM_MISMATCH, NAMES[1], '-'),
      (errors.CHECKSUM_MISMATCH, 'sa_000003.tar', '-')]
  assert f'md5 is {MD5[NAMES[2]]}, {sums} says {MD5[NAMES[1]]}' in (
      ready.skipped[0].detail)
  assert 'left where it is' in ready.skipped[1].detail
  assert mine.read_bytes() == TARS[NAMES[0]]
  cache = download.cache_dir(tmp_path / 'dl')
  assert os.listdir(cache / checksums.QUARANTINE_SUBDIR) == [NAMES[1]]


@pytest.mark.integration
def test_streamed_tars_carry_their_checksum(server, tmp_path):
  manual = _links_dir(tmp_path, server)
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{MD5[n]}  {n}\n' for n in NAMES[:2]))
  out = materialize.materialize(
      _offered(manual), download_dir=tmp_path / 'dl', manual_dir=manual,
      options=FAST.replace(disk_mode='stream', checksums=os.fspath(sums)))
  assert [s.checksum for s in out] == [
      checksums.Expected('md5', MD5[n], os.fspath(sums))
      for n in NAMES[:2]] + [None]
  server.log.clear()
  for source in out:
    reader = source.open_sequential(0)
    try:
      assert reader.read(len(TARS[source.name]) + 1) == TARS[source.name]
      assert checksums.stream_verdict(reader) is None
    finally:
      reader.close()
  assert len(server.gets()) == 3  # One request per tar: no second pass.


@pytest.mark.integration
def test_mirror_plans_with_the_known_list(server, tmp_path):
  manual = _links_dir(tmp_path, server)
  plan = mirror.plan(manual, checksums='known')
  assert [t.checksum for t in plan] == [
      checksums.known().expected(n) for n in NAMES]
  assert [t.checksum for t in mirror.plan(manual)] == [None] * 3


# ------------------------------------------- builds with a tar that is off


def _images_of(name: str) -> set[int]:
  with tarfile.open(DUMMY_DATA / name) as t:
    return {int(m.name.rsplit('/', 1)[-1][3:-4]) for m in t.getmembers()
            if m.name.endswith('.jpg')}


def _build(data_dir, manual, sums, *, beam=False, lenient=False,
           disk_mode='stream'):
  from segment_anything_tfds import config as config_lib  # pylint: disable=g-import-not-at-top
  return build(data_dir, manual, config_lib.tars_config('0-2',
                                                        lenient=lenient),
               beam=beam, download_options={'disk_mode': disk_mode,
                                            'checksums': os.fspath(sums)})


def _wrong_sums(tmp_path, wrong: str) -> pathlib.Path:
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(
      f'{"1" * 32 if n == wrong else MD5[n]}  {n}\n' for n in NAMES))
  return sums


@pytest.mark.integration
@pytest.mark.parametrize('beam', [False, True], ids=['local', 'beam'])
def test_a_streamed_tar_that_does_not_match_fails_a_strict_build(
    server, tmp_path, beam):
  manual = _links_dir(tmp_path, server)
  sums = _wrong_sums(tmp_path, NAMES[1])
  with pytest.raises(errors.BadInputError) as e:
    _build(tmp_path / 'data', manual, sums, beam=beam)
  assert (e.value.reason, e.value.tar, e.value.member) == (
      errors.CHECKSUM_MISMATCH, NAMES[1], '-')
  assert f'md5 is {MD5[NAMES[1]]}' in e.value.detail
  assert '1' * 32 in e.value.detail and '\n' not in str(e.value)
  assert len(server.gets(NAMES[1])) == 1  # Hashed as it was read, once.


@pytest.mark.integration
def test_a_streamed_tar_that_does_not_match_is_left_out_alike(server,
                                                              tmp_path):
  """Lenient: none of its images is written or counted, on either engine;
  the other tars are; both engines write the same shards and audit."""
  manual = _links_dir(tmp_path, server)
  sums = _wrong_sums(tmp_path, NAMES[1])
  out = {}
  for beam in (False, True):
    server.log.clear()
    builder = _build(tmp_path / f'data{beam}', manual, sums, beam=beam,
                     lenient=True)
    assert len(server.gets()) == 3  # One request per tar, whole.
    data = pathlib.Path(builder.data_dir)
    out[beam] = ({p.name: p.read_bytes() for p in data.glob('*.tfrecord*')},
                 (data / 'audit' / 'records.jsonl').read_bytes())
    kept = _images_of(NAMES[0]) | _images_of(NAMES[2])
    assert builder.info.splits['train'].num_examples == len(kept)
    ds = builder.as_dataset(split='train')
    assert {int(e['image']['image_id']) for e in ds.as_numpy_iterator()
            } == kept
    audit = builder.info.metadata['audit']
    assert audit['tars'] == [NAMES[0], NAMES[2]]
    assert audit['images_indexed'] == len(kept)
    assert audit['skipped_images'] == 0
    [skipped] = audit['skipped_tars']
    assert (skipped['tar'], skipped['reason']) == (NAMES[1],
                                                   errors.CHECKSUM_MISMATCH)
    assert f'md5 is {MD5[NAMES[1]]}' in skipped['message']
  assert out[False] == out[True]


def test_a_local_tar_that_does_not_match_is_audited_or_fails(tmp_path):
  manual = make_manual_dir(tmp_path, tars=NAMES)
  sums = _wrong_sums(tmp_path, NAMES[2])
  with pytest.raises(errors.ChecksumError, match=f'{NAMES[2]} .*md5 is'
                     f' {MD5[NAMES[2]]}'):
    _build(tmp_path / 'strict', manual, sums, disk_mode='keep')
  builder = _build(tmp_path / 'lenient', manual, sums, disk_mode='keep',
                   lenient=True)
  kept = _images_of(NAMES[0]) | _images_of(NAMES[1])
  assert builder.info.splits['train'].num_examples == len(kept)
  audit = builder.info.metadata['audit']
  assert audit['tars'] == NAMES[:2]
  assert [(t['tar'], t['reason']) for t in audit['skipped_tars']] == [
      (NAMES[2], errors.CHECKSUM_MISMATCH)]
  lines = (pathlib.Path(builder.data_dir) / 'audit' /
           'records.jsonl').read_text().splitlines()
  assert sum(f'"reason": "{errors.CHECKSUM_MISMATCH}"' in l
             for l in lines) == 1
  assert (manual / NAMES[2]).read_bytes() == TARS[NAMES[2]]  # Left as is.


def test_a_lenient_build_whose_every_tar_is_off_says_so(tmp_path):
  manual = make_manual_dir(tmp_path, tars=NAMES)
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{"2" * 32}  {n}\n' for n in NAMES))
  with pytest.raises(errors.SourceError, match='nothing to write: 3 tars'
                     ' offered 0 images .*whole tars skipped'):
    _build(tmp_path / 'data', manual, sums, disk_mode='keep', lenient=True)


@pytest.mark.integration
@pytest.mark.parametrize('beam', [False, True], ids=['local', 'beam'])
@pytest.mark.parametrize('lenient', [False, True], ids=['strict', 'lenient'])
def test_members_read_again_are_the_bytes_verified(server, tmp_path, beam,
                                                   lenient):
  """With nothing held (hold_bytes=0), every pair of a streamed tar is read
  again after its verdict; a source that then serves other bytes (same
  size) is a mismatch, not a build of unchecked bytes."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds import config as config_lib  # pylint: disable=g-import-not-at-top
  good = TARS[NAMES[0]]
  old = re.search(rb'"predicted_iou": 0\.\d{6}', good).group()
  evil = good.replace(old, old[:-6] + b'111111', 1)
  assert len(evil) == len(good) and evil != good
  server.add_fault(NAMES[0], 'then_serve', evil)
  manual = make_manual_dir(tmp_path, rows=[(n, server.url(n))
                                           for n in NAMES[:2]])
  sums = tmp_path / 'sums.md5'
  sums.write_text(''.join(f'{MD5[n]}  {n}\n' for n in NAMES[:2]))
  config = dataclasses.replace(
      config_lib.tars_config('0-1', lenient=lenient), hold_bytes=0)
  options = {'disk_mode': 'stream', 'checksums': os.fspath(sums)}
  if not lenient:
    with pytest.raises(errors.BadInputError) as e:
      build(tmp_path / 'd', manual, config, beam=beam,
            download_options=options)
    assert (e.value.reason, e.value.tar) == (errors.CHECKSUM_MISMATCH,
                                             NAMES[0])
    assert 'not the bytes that were checked' in str(e.value)
  else:
    builder = build(tmp_path / 'd', manual, config, beam=beam,
                    download_options=options)
    audit = builder.info.metadata['audit']
    assert audit['tars'] == [NAMES[1]]
    assert [(t['tar'], t['reason']) for t in audit['skipped_tars']] == [
        (NAMES[0], errors.CHECKSUM_MISMATCH)]
    assert builder.info.splits['train'].num_examples == len(
        _images_of(NAMES[1]))
  gets = [r for m, n, r, *_ in server.log if m == 'GET' and n == NAMES[0]]
  assert len(gets) > 2  # The stream, then the members read again.


@pytest.mark.integration
@pytest.mark.parametrize('beam', [False, True], ids=['local', 'beam'])
@pytest.mark.parametrize('disk_mode', ['stream', 'keep'])
def test_listed_images_of_a_tar_left_out_are_named_with_it(
    server, tmp_path, beam, disk_mode):
  """A lenient build of an image list whose images are in a tar that does
  not match: the missing-images error says which tar was left out (found
  as it was read, or before the build)."""
  from segment_anything_tfds import config as config_lib  # pylint: disable=g-import-not-at-top
  manual = _links_dir(tmp_path, server)
  sums = _wrong_sums(tmp_path, NAMES[1])
  listed = sorted(_images_of(NAMES[0]))[:1] + sorted(_images_of(NAMES[1]))
  config = config_lib.images_config(
      config_lib.tars_config('0-2', lenient=True), listed)
  options = {'disk_mode': disk_mode, 'checksums': os.fspath(sums)}
  with pytest.raises(errors.SourceError) as e:
    build(tmp_path / 'd', manual, config, beam=beam,
          download_options=options)
  assert str(e.value).startswith(
      f'{len(listed) - 1} of the {len(listed)} images listed in the list'
      ' given are in none of the'
      f' {3 if disk_mode == "stream" else 2} tars read: ')  # Or left out.
  assert (f'(tars skipped whole, whose images are not built: {NAMES[1]}'
          f' ({errors.CHECKSUM_MISMATCH})). Find their tars') in str(e.value)
  builder = build(tmp_path / 'p', manual, config, beam=beam,
                  download_options=options, allow_partial=True)
  assert builder.info.splits['train'].num_examples == 1
  assert builder.info.metadata['images']['missing_ids'] == listed[1:]
  assert [t['tar'] for t in builder.info.metadata['audit'][
      'skipped_tars']] == [NAMES[1]]
