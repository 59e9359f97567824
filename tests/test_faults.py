"""Fault injection: whole builds from a loopback HTTP server, and hostile tars.

Each faulty run either ends with a dataset identical to the fault-free one
(image ids, JPEG bytes, RLE strings) or with a clear error and no dataset
dir that looks complete (no dataset_info.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import tarfile
import time
import tracemalloc

import numpy as np
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds.prepare import rules as audit
from segment_anything_tfds.sources import checksums
from segment_anything_tfds import config as config_lib
from segment_anything_tfds.sources import download
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.prepare import tars as tars_lib

from conftest import tar_bytes
import _hostile_tars
from _loopback_server import HostileServer
from _loopback_server import LoopbackServer
from _loopback_server import within

NAMES = [f'sa_00000{i}.tar' for i in range(3)]


def _records(rng, ids):
  return [(i, *fake_data.image_record(rng, i, height=12 + i % 5, width=9,
                                      num_masks=2)) for i in ids]


@pytest.fixture(scope='module')
def tars(tmp_path_factory) -> dict[str, bytes]:
  """Three tiny SA-1B tars, one per layout, as bytes."""
  rng = np.random.default_rng(4)
  out_dir = tmp_path_factory.mktemp('tars')
  out = {}
  for i, (name, layout) in enumerate(zip(NAMES, fake_data.LAYOUTS)):
    path = out_dir / name
    fake_data.write_tar(path, _records(rng, range(10 * i + 1, 10 * i + 4)),
                        layout=layout, rng=rng)
    out[name] = path.read_bytes()
  return out


_DOWNLOAD_FIELDS = {f.name for f in dataclasses.fields(
    options_lib.DownloadOptions)}


def _config(**kw):
  return config_lib.SegmentAnythingConfig(
      name=kw.pop('name', 'first_3'), num_tars=kw.pop('num_tars', 3), **kw)


def _build(data_dir, manual_dir, *, build_workers=0, **kw):
  """Builds; download option fields in `kw` go to `download_options`."""
  download = {'backoff': 0.01, 'retries': 3, 'timeout': 10}
  download.update({k: kw.pop(k) for k in list(kw) if k in _DOWNLOAD_FIELDS})
  builder = tfds.builder('segment_anything', config=_config(**kw),
                         data_dir=os.fspath(data_dir),
                         download_options=download, workers=build_workers)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir)))
  return builder


def _examples(builder) -> dict[int, tuple]:
  ds = builder.as_dataset(
      split='train', decoders={'image': {'content': tfds.decode.SkipDecoding()}})
  out = {}
  for e in tfds.as_numpy(ds):
    out[int(e['image']['image_id'])] = (
        e['image']['content'],
        tuple(c.decode() for c in e['annotations']['segmentation']['counts']))
  return out


def _complete_dirs(data_dir) -> list[str]:
  return [os.fspath(p) for p in pathlib.Path(data_dir).rglob(
      'dataset_info.json')]


@pytest.fixture(scope='module')
def baseline(tars, tmp_path_factory) -> dict[int, tuple]:
  """The fault-free dataset, built from the tars in a local manual_dir."""
  manual = tmp_path_factory.mktemp('local_manual')
  for name, data in tars.items():
    (manual / name).write_bytes(data)
  ex = _examples(_build(tmp_path_factory.mktemp('local_data'), manual))
  assert len(ex) == 9
  return ex


@pytest.fixture
def server(tars):
  with LoopbackServer(tars) as srv:
    yield srv


def _links(manual_dir, rows):
  manual_dir = pathlib.Path(manual_dir)
  manual_dir.mkdir(parents=True, exist_ok=True)
  fake_data.write_links(manual_dir / links_lib.LINKS_FILE_NAME, rows)
  return manual_dir


def _truncated(blob: bytes) -> bytes:
  """The tar cut in the middle of its last member's data."""
  with io.BytesIO(blob) as f:
    members, _ = tars_lib.index_members(f, tar='x')
  last = max(members, key=lambda m: m.offset)
  return blob[:last.offset + last.size // 2]


def _cache(data_dir):
  return pathlib.Path(data_dir) / 'downloads' / download.CACHE_SUBDIR


@pytest.mark.integration
def test_faulty_downloads_then_refreshed_links(server, tars, baseline,
                                               tmp_path):
  a, b, c = NAMES
  server.add_fault(a, 'status', 500)
  server.add_fault(a, 'status', 503)
  server.add_fault(b, 'cut', 3000)  # Resumed with Range.
  server.add_fault(c, 'cut', 2500)
  server.add_fault(c, 'ignore_range', None)  # Clean restart, no append.
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  assert _examples(_build(data, manual)) == baseline
  assert [g[3] for g in server.gets(a)] == [500, 503, 200]
  assert [(g[2], g[3]) for g in server.gets(b)] == [(None, 200),
                                                    ('bytes=3000-', 206)]
  assert [(g[2], g[3]) for g in server.gets(c)] == [(None, 200),
                                                    ('bytes=2500-', 200)]
  for n in NAMES:
    assert (_cache(data) / n).read_bytes() == tars[n]
  assert not list(_cache(data).glob('*.part'))

  # A refreshed links file: new signatures and expiry, same names. Another
  # config in the same data_dir downloads nothing again.
  server.log.clear()
  future = int(time.time()) + 30 * 86400
  _links(manual, [(n, server.url(n, sig='NEWSIG', oe=future)) for n in NAMES])
  again = _build(data, manual, name='tars_0-2', num_tars=None, tars=(0, 1, 2))
  assert _examples(again) == baseline
  assert server.log == []  # Not even a HEAD.


@pytest.mark.integration
def test_expired_links_fail_before_any_request(server, tmp_path):
  past = int(time.time()) - 3 * 86400
  manual = _links(tmp_path / 'manual',
                  [(n, server.url(n, oe=past)) for n in NAMES])
  data = tmp_path / 'data'
  with pytest.raises(errors.LinksExpiredError) as e:
    _build(data, manual)
  msg = str(e.value)
  assert '3 of the 3 links this build needs have expired' in msg
  assert links_lib.format_time(past) in msg
  assert 'download a fresh segment_anything_links.txt' in msg
  assert 'mirror' in msg and 'manual_dir' in msg
  assert server.log == []
  assert _complete_dirs(data) == []


@pytest.mark.integration
def test_expired_links_of_cached_tars_are_fine(server, tars, baseline,
                                               tmp_path):
  manual = _links(tmp_path / 'manual', [(n, server.url(n, oe=1000))
                                        for n in NAMES])
  data = tmp_path / 'data'
  _cache(data).mkdir(parents=True)
  for n in NAMES:
    (_cache(data) / n).write_bytes(tars[n])
  assert _examples(_build(data, manual)) == baseline
  assert server.log == []


@pytest.mark.integration
def test_403_from_a_mirror_is_forbidden_not_expired(server, tmp_path):
  # A mirror's links carry no signature: its 403 is no expiry, and a fresh
  # links file would not help.
  a, b, c = NAMES
  server.add_fault(b, 'status', 403)
  manual = _links(tmp_path / 'manual', [(n, server.mirror_url(n))
                                        for n in NAMES])
  data = tmp_path / 'data'
  with pytest.raises(errors.DownloadError) as e:
    _build(data, manual, workers=1, check_disk=False)
  assert not isinstance(e.value, errors.LinksExpiredError)
  msg = str(e.value)
  assert f'{b}: {server.mirror_url(b)}: HTTP 403 forbidden from 127.0.0.1:' in (
      msg), msg
  assert 'expire' not in msg and 'fresh' not in msg
  assert len(server.gets(b)) == 1  # No retries.
  assert _complete_dirs(data) == []


@pytest.mark.integration
def test_interrupted_download_resumes_on_rerun(server, tars, baseline,
                                               tmp_path):
  a, b, c = NAMES
  server.add_fault(b, 'cut', 4000)
  for _ in range(2):  # With the cut: 3 failures, download_retries=3.
    server.add_fault(b, 'status', 500)
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  with pytest.raises(errors.DownloadError) as e:
    _build(data, manual)
  assert b in str(e.value) and 'a rerun resumes' in str(e.value)
  assert _complete_dirs(data) == []
  assert (_cache(data) / (b + '.part')).stat().st_size == 4000
  server.log.clear()
  assert _examples(_build(data, manual)) == baseline
  assert [(g[1], g[2]) for g in server.gets()] == [(b, 'bytes=4000-')]


@pytest.mark.integration
def test_bad_downloads_are_never_cached_and_checksums_quarantine(
    server, tars, baseline, tmp_path):
  a, b, c = NAMES
  whole = tars[c]
  server.files[c] = _truncated(whole)  # Served whole, but cut short.
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  with pytest.raises(errors.DownloadError) as e:
    _build(data, manual)
  assert c in str(e.value) and 'truncated' in str(e.value)
  assert _complete_dirs(data) == []
  assert not (_cache(data) / c).exists()  # Checked before the rename.
  assert len(server.gets(c)) == 3  # retries=3: a cut may be transient.

  # A whole tar, but not the right one: with a checksum list it is moved
  # aside before use, and named.
  server.files[c] = tars[a]
  (manual / checksums.CHECKSUMS_FILE_NAME).write_text(''.join(
      f'{hashlib.sha256(tars[n]).hexdigest()}  {n}\n' for n in NAMES))
  with pytest.raises(errors.ChecksumError) as e:
    _build(data, manual)
  assert c in str(e.value) and 'quarantine' in str(e.value)
  assert (_cache(data) / checksums.QUARANTINE_SUBDIR / c).read_bytes() == (
      tars[a])
  assert not (_cache(data) / c).exists()
  assert _complete_dirs(data) == []

  # The server is fixed: the rerun fetches only that tar, verifies, builds.
  server.files[c] = whole
  server.log.clear()
  assert _examples(_build(data, manual)) == baseline
  assert [g[1] for g in server.gets()] == [c]


@pytest.mark.integration
def test_stream_mode_keeps_no_tars(server, baseline, tmp_path):
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  server.add_fault(NAMES[0], 'status', 500)
  server.add_fault(NAMES[1], 'cut', 100)
  data = tmp_path / 'data'
  assert _examples(_build(data, manual, disk_mode='stream')) == baseline
  assert not _cache(data).exists() or not list(_cache(data).iterdir())
  assert all(g[2] and g[2].startswith('bytes=') for g in server.gets()
             if g[3] in (200, 206))


@pytest.mark.integration
def test_delete_mode_removes_tars_after_the_build(server, baseline, tmp_path):
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  assert _examples(_build(data, manual, disk_mode='delete')) == baseline
  assert list(_cache(data).glob('*.tar')) == []


@pytest.mark.integration
def test_delete_mode_keeps_tars_when_the_build_fails(server, tmp_path):
  # A whole tar (it passes the download checks) with a malformed JSON.
  jpg, _ = _records_of(np.random.default_rng(3), 21)
  server.files[NAMES[2]] = _tar_bytes([('sa_21.jpg', jpg),
                                       ('sa_21.json', b'{"image": ')])
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  with pytest.raises(Exception, match=f'{NAMES[2]}:sa_21.json: .*malformed'):
    _build(data, manual, disk_mode='delete')
  assert len(list(_cache(data).glob('*.tar'))) == 3  # Not downloaded again.
  assert _complete_dirs(data) == []


@pytest.mark.integration
@pytest.mark.parametrize('disk_mode', ['keep', 'stream'])
@pytest.mark.parametrize('kind', ['slow_headers', 'continue', 'slow_body'])
def test_a_trickling_server_fails_the_attempt_in_time(kind, disk_mode, tars,
                                                      tmp_path):
  # Every byte comes well within the 1 s timeout, but the answer head never
  # completes (or the body crawls at 5 bytes/s): the attempt fails at its
  # deadline (or minimum rate) instead of hanging the build.
  name = NAMES[0]
  with HostileServer(kind, size=len(tars[name])) as srv:
    manual = _links(tmp_path / 'manual', [(name, srv.url(name))])
    started = time.monotonic()
    with pytest.raises(errors.DownloadError) as e:
      within(60, _build, tmp_path / 'data', manual, name='trickle',
             num_tars=1, disk_mode=disk_mode, timeout=1, retries=1,
             check_disk=False)
    took = time.monotonic() - started
  msg = str(e.value)
  assert took < 15, (took, msg)
  assert name in msg and f'127.0.0.1:{srv.port}' in msg, msg
  if kind == 'slow_body':
    assert 'under the minimum rate of 10000 bytes/s' in msg, msg
  else:
    assert 'no complete answer (status line and headers)' in msg, msg
    assert 'within 1 s' in msg, msg
  assert _complete_dirs(tmp_path / 'data') == []


@pytest.mark.integration
def test_preflight_refuses_when_the_disk_is_clearly_too_small(
    server, tmp_path, monkeypatch):
  manual = _links(tmp_path / 'manual', [(n, server.url(n)) for n in NAMES])
  data = tmp_path / 'data'
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(download.shutil, 'disk_usage',
                      lambda p: usage._replace(free=1000))
  with pytest.raises(errors.DiskSpaceError) as e:
    _build(data, manual)
  assert '1.0 kB free' in str(e.value) and 'disk_mode="stream"' in str(e.value)
  assert server.gets() == []  # Only HEADs, no download started.
  assert _complete_dirs(data) == []


def test_ram_manual_dir_is_read_in_place(tars, baseline, tmp_path):
  import _ram_epath  # pylint: disable=g-import-not-at-top
  _ram_epath.enable()
  root = f'ram://bucket-{os.getpid()}/sa1b'
  for n, blob in tars.items():
    local = tmp_path / n
    local.write_bytes(blob)
    _ram_epath.upload(os.fspath(local), f'{root}/{n}')
  data = tmp_path / 'data'
  try:
    # One process: the ram:// file system lives in this one. check_disk
    # off: a bucket tar's size is not asked for, so the disk check would
    # assume SA-1B's 10.5 GB per tar and fail on a small disk.
    assert _examples(_build(data, root, build_workers=1,
                            check_disk=False)) == baseline
  finally:
    _ram_epath.rmtree(root)
  assert not _cache(data).exists()  # Nothing was copied.


# ------------------------------------------------------------ hostile tars


_tar_bytes = tar_bytes


def _records_of(rng, i):
  return fake_data.image_record(rng, i, height=10, width=8, num_masks=1)


def test_unsafe_member_paths_are_never_written_and_are_audited(tmp_path):
  rng = np.random.default_rng(7)
  jpg, js = _records_of(rng, 5)
  jpg6, js6 = _records_of(rng, 6)
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'sa_000000.tar').write_bytes(_tar_bytes([
      ('sa_5.jpg', jpg), ('sa_5.json', js),
      ('../sa_6.jpg', jpg6), ('../sa_6.json', js6),
      ('/tmp/sa_7.jpg', jpg6)]))
  # Strict: the build stops, naming the tar and member.
  with pytest.raises(Exception, match=r'sa_000000.tar:(\.\./sa_6|/tmp/sa_7)'
                     r'.*never read or written \[unsafe_member\]'):
    _build(tmp_path / 'strict', manual, num_tars=1)
  assert _complete_dirs(tmp_path / 'strict') == []
  # Lenient: the safe image is kept; the unsafe members are audited.
  data = tmp_path / 'lenient'
  builder = _build(data, manual, num_tars=1, lenient=True)
  assert sorted(_examples(builder)) == [5]
  audit = builder.info.metadata['audit']
  # One skip per image: image 6 (both members unsafe) and image 7.
  assert audit['skipped_by_reason'] == {'unsafe_member': 2}
  assert audit['images_indexed'] - audit['skipped_images'] == 1
  recs = [json.loads(l) for p in (pathlib.Path(builder.data_dir) / 'audit'
                                  ).glob('*.jsonl')
          for l in p.read_text().splitlines()]
  assert sorted(r['member'] for r in recs if r['kind'] == 'skip') == [
      '../sa_6.jpg', '/tmp/sa_7.jpg']
  # Nothing was written outside (nor inside) the manual dir by reading.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'lenient', 'manual', 'strict']
  assert sorted(p.name for p in manual.iterdir()) == ['sa_000000.tar']
  assert not os.path.exists('/tmp/sa_7.jpg')


def test_oversized_json_member_is_rejected(tmp_path):
  rng = np.random.default_rng(8)
  jpg, _ = _records_of(rng, 9)
  path = tmp_path / 'sa_000000.tar'
  with tarfile.open(path, 'w') as t:
    info = tarfile.TarInfo('sa_9.jpg')
    info.size = len(jpg)
    t.addfile(info, io.BytesIO(jpg))
    info = tarfile.TarInfo('sa_9.json')
    info.size = tars_lib.MAX_JSON_BYTES + 1
    t.addfile(info, io.BytesIO(b' ' * info.size))
  with open(path, 'rb') as f:
    members, damage = tars_lib.index_members(f, tar='sa_000000.tar')
  assert damage is None
  index = tars_lib.pair_members(members, tar='sa_000000.tar')
  assert index.pairs == []
  [problem] = index.problems
  assert problem.reason == 'member_too_large'
  assert problem.member == 'sa_9.json'
  assert str(tars_lib.MAX_JSON_BYTES) in problem.detail
  assert re.fullmatch(r'sa_000000.tar:sa_9.json: .*over the 67108864 byte'
                      r' limit.*', str(problem))


def test_truncated_tars_name_the_tar_and_offset(tars, tmp_path):
  whole = tars[NAMES[0]]
  with io.BytesIO(whole) as f:
    members, _ = tars_lib.index_members(f, tar='x')
  last = max(members, key=lambda m: m.offset)
  # Cut inside a header: the index stops, naming the tar and a byte offset.
  cut = io.BytesIO(whole[:members[1].offset - 512 + 100])
  _, damage = tars_lib.index_members(cut, tar='sa_000000.tar')
  assert damage.reason == 'corrupt_tar'
  assert str(damage).startswith('sa_000000.tar:@')
  # Cut inside the last member's data: its header is whole, but the
  # end-of-archive check says where the tar ends short.
  cut = whole[:last.offset + last.size // 2]
  path = tmp_path / 'sa_000000.tar'
  path.write_bytes(cut)
  with open(path, 'rb') as f:
    _, damage = tars_lib.index_members(f, tar='sa_000000.tar')
    assert damage.reason == 'corrupt_tar'
    assert re.fullmatch(r'sa_000000.tar:(@\d+|' + re.escape(last.name) + ')',
                        damage.where)
    assert 'truncated' in damage.detail
    # Reading the cut member (offsets from an index of the whole tar).
    with pytest.raises(errors.BadInputError,
                       match=rf'sa_000000.tar:{last.name}: truncated tar: read'
                       rf' {len(cut) - last.offset} of {last.size} bytes at'
                       rf' offset {last.offset}'):
      tars_lib.read_member(f, last, tar='sa_000000.tar')


def test_corrupt_jpeg_strict_rejects_lenient_audits(tmp_path):
  rng = np.random.default_rng(9)
  good_jpg, good_js = _records_of(rng, 1)
  bad_jpg, bad_js = _records_of(rng, 2)
  cut_jpg, cut_js = _records_of(rng, 3)
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'sa_000000.tar').write_bytes(_tar_bytes([
      ('sa_1.jpg', good_jpg), ('sa_1.json', good_js),
      ('sa_2.jpg', b'GIF89a' + bad_jpg[6:]), ('sa_2.json', bad_js),
      ('sa_3.jpg', cut_jpg[:len(cut_jpg) // 2]), ('sa_3.json', cut_js)]))
  with pytest.raises(Exception, match=r'sa_000000.tar:sa_[23].json: .*'
                     r'\[corrupt_jpeg\]'):
    _build(tmp_path / 'strict', manual, num_tars=1)
  assert _complete_dirs(tmp_path / 'strict') == []
  builder = _build(tmp_path / 'lenient', manual, num_tars=1, lenient=True)
  assert sorted(_examples(builder)) == [1]
  meta = json.loads((pathlib.Path(builder.data_dir) / 'metadata.json'
                     ).read_text())
  assert meta['audit']['skipped_by_reason'] == {'corrupt_jpeg': 2}
  recs = [json.loads(l) for p in (pathlib.Path(builder.data_dir) /
                                  audit.AUDIT_DIR).glob('*.jsonl')
          for l in p.read_text().splitlines()]
  skipped = {r['member']: r['message'] for r in recs if r['kind'] == 'skip'}
  assert 'not a JPEG' in skipped['sa_2.json']
  assert 'no end-of-image marker' in skipped['sa_3.json']


def _audit_records(builder) -> list[dict]:
  return [json.loads(line) for p in (pathlib.Path(builder.data_dir) /
                                     audit.AUDIT_DIR).glob('*.jsonl')
          for line in p.read_text().splitlines()]


def test_a_huge_extended_header_is_damage_strict_and_lenient(tmp_path):
  """A 512 MiB pax header (a hole in a sparse file) is refused from its
  header block: strict builds fail naming the tar and offset, lenient ones
  keep the images before it; it is never read (before: 512 MiB read whole
  into memory, and the build went on)."""
  rng = np.random.default_rng(10)
  before = []
  for i in (1, 2):
    jpg, js = _records_of(rng, i)
    before += [(f'sa_{i}.jpg', jpg), (f'sa_{i}.json', js)]
  before.append(('README', b'not an image member'))
  manual = tmp_path / 'manual'
  manual.mkdir()
  at = _hostile_tars.huge_header_tar(manual / 'sa_000000.tar', b'x',
                                     512 << 20, before)
  error = (rf'sa_000000.tar:@{at}: a pax header of {512 << 20} bytes at byte'
           rf' {at}: over the 65536 byte limit .*\[corrupt_tar\]')
  tracemalloc.start()
  try:
    with pytest.raises(errors.BadInputError, match=error):
      _build(tmp_path / 'strict', manual, num_tars=1, build_workers=1)
    builder = _build(tmp_path / 'lenient', manual, num_tars=1,
                     build_workers=1, lenient=True)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 64 << 20
  assert _complete_dirs(tmp_path / 'strict') == []
  assert sorted(_examples(builder)) == [1, 2]
  [skipped] = builder.info.metadata['audit']['skipped_tars']
  assert skipped['tar'] == 'sa_000000.tar'
  assert skipped['reason'] == 'corrupt_tar'
  assert (f'a pax header of {512 << 20} bytes at byte {at}: over the 65536'
          ' byte limit') in skipped['message']


def test_lone_surrogate_counts_are_bad_rle_in_builds(tmp_path, monkeypatch):
  """Without orjson, `json` parses "\\ud800" into a lone surrogate: strict
  builds fail with `bad_rle`, lenient ones skip the image and audit it
  (before: a UnicodeEncodeError traceback in both)."""
  monkeypatch.setattr(examples, '_orjson', None)
  rng = np.random.default_rng(11)
  jpg1, js1 = _records_of(rng, 1)
  jpg2, js2 = _records_of(rng, 2)
  record = json.loads(js2)
  record['annotations'][0]['segmentation']['counts'] = 'SURROGATE'
  js2 = json.dumps(record).encode().replace(b'SURROGATE', rb'\ud800')
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'sa_000000.tar').write_bytes(_tar_bytes([
      ('sa_1.jpg', jpg1), ('sa_1.json', js1),
      ('sa_2.jpg', jpg2), ('sa_2.json', js2)]))
  message = ("annotations[0].segmentation.counts has the character"
             " 'U+D800 (non-ASCII)' outside \"0\"..\"o\"")
  with pytest.raises(errors.BadInputError) as e:
    _build(tmp_path / 'strict', manual, num_tars=1, build_workers=1)
  assert str(e.value) == f'sa_000000.tar:sa_2.json: {message} [bad_rle]'
  assert _complete_dirs(tmp_path / 'strict') == []
  builder = _build(tmp_path / 'lenient', manual, num_tars=1,
                   build_workers=1, lenient=True)
  assert sorted(_examples(builder)) == [1]
  assert builder.info.metadata['audit']['skipped_by_reason'] == {
      'bad_rle': 1}
  [skip] = [r for r in _audit_records(builder) if r['kind'] == 'skip']
  assert (skip['member'], skip['reason']) == ('sa_2.json', 'bad_rle')
  assert message in skip['message']
