"""Remote tars read in byte ranges (`streaming.py`, the Beam path).

Reader-level tests run every range of a tar from bytes and compare what the
ranges found, together, with the index of the whole tar (`tars.py`). Build
tests serve tars from a loopback HTTP server (and TF's `ram://` file system
for buckets), build them with Beam in `disk_mode='stream'`, and compare the
dataset with the local build of the same tars, counting requests and bytes.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds  # pylint: disable=unused-import
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import http
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.prepare import streaming
from segment_anything_tfds.prepare import tars

import _hostile_tars
from _loopback_server import LoopbackServer
from _loopback_server import within
from conftest import make_bad_manual_dir

NAME = 'sa_000000.tar'


def _tar(entries, fmt=tarfile.GNU_FORMAT) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=fmt) as t:
    for name, data in entries:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = 1680000000.5  # A float: pax tars get a header each.
      t.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def _read_ranges(blob: bytes, range_bytes: int, *, hold_bytes=1 << 30,
                 read_bytes=4096):
  """Every range of `blob` read from bytes: (events of each range)."""
  shard = shards_lib.Shard(NAME, shards_lib.TAR, 'mem://', known_size=len(blob))
  spans = streaming.plan(len(blob), range_bytes)
  out = []
  for i, (start, end) in enumerate(spans):
    rng = streaming.ByteRange(shard, i, len(spans), start, end, len(blob))
    pos = streaming.read_start(rng)
    stream = streaming.Stream(streaming.FileSource(io.BytesIO(blob), pos),
                              pos, read_bytes=read_bytes)
    out.append(list(streaming.read_range(rng, stream, hold_bytes=hold_bytes)))
  return out


def _members_found(events) -> set[tuple[str, int, int]]:
  found = set()
  for e in events:
    if isinstance(e, streaming.LocalPair):
      found |= {(m.name, m.offset, m.size) for m in (e.pair.jpg, e.pair.json)}
    elif isinstance(e, streaming.Orphan):
      found.add((e.member.name, e.member.offset, e.member.size))
  return found


def _image_members(blob: bytes) -> set[tuple[str, int, int]]:
  members, damage = tars.index_members(io.BytesIO(blob), tar=NAME)
  assert damage is None
  return {(m.name, m.offset, m.size) for m in members
          if tars.canonical_stem(m.name)}


# ------------------------------------------------------------ the reader


@pytest.mark.parametrize('size,range_bytes', [
    (0, 512), (1, 512), (512, 512), (513, 512), (10 ** 6, 4096),
    (10 ** 6, 10 ** 6 - 1), (10 ** 6, 1 << 30)])
def test_plan_covers_the_tar_once_at_header_boundaries(size, range_bytes):
  spans = streaming.plan(size, range_bytes)
  assert spans[0][0] == 0 and spans[-1][1] == size
  for (_, end), (start, _) in zip(spans, spans[1:]):
    assert end == start and start % 512 == 0
  assert all(start < end for start, end in spans) or size == 0
  assert len(spans) == max(1, -(-size // max(range_bytes, 512)))


@pytest.mark.parametrize('fmt', [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize('folder', ['', 'x' * 120 + '/', 'é/'])
def test_ranges_find_every_member_once_whatever_the_boundaries(fmt, folder):
  # Long names and non-ASCII names put extended headers (GNU long names,
  # pax records) before members: ranges starting inside them must agree.
  rng = np.random.default_rng(1)
  blob = _tar([(f'{folder}sa_{i}{ext}', rng.bytes(int(rng.integers(1, 3000))))
               for i in range(1, 16) for ext in ('.jpg', '.json')], fmt)
  truth = _image_members(blob)
  assert len(truth) == 30
  for range_bytes in (512, 1024, 1536, 5000, 1 << 20):
    ranges = _read_ranges(blob, range_bytes)
    found = [_members_found(events) for events in ranges]
    assert set().union(*found) == truth, range_bytes
    assert sum(map(len, found)) == len(truth)  # Each member once.
    reports = [events[-1] for events in ranges]
    assert streaming.check_chain(reports, len(blob)) is None
    assert all(r.damage is None for r in reports)
    # One range pairs everything itself.
    if range_bytes == 1 << 20:
      assert reports[0].images == 15 and len(ranges[0]) == 16


def test_members_over_the_hold_cap_keep_only_their_offset():
  rng = np.random.default_rng(2)
  records = [(i, *fake_data.image_record(rng, i, height=16, width=12,
                                         num_masks=1)) for i in range(1, 30)]
  blob = _shuffled_tar(records, rng)
  cap = 3000
  [events] = _read_ranges(blob, 1 << 20, hold_bytes=cap)
  report = events[-1]
  assert 0 < report.held_peak <= cap
  orphans = [e for e in events if isinstance(e, streaming.Orphan)]
  pairs = [e for e in events if isinstance(e, streaming.LocalPair)]
  assert [e for e in orphans if e.data is None]  # Some were over the cap.
  assert len(pairs) * 2 + len(orphans) == 58 and report.images == len(pairs)
  held = {e.member.name: e.data for e in orphans if e.data is not None}
  with tarfile.open(fileobj=io.BytesIO(blob)) as t:
    for name, data in held.items():
      assert t.extractfile(name).read() == data


def _shuffled_tar(records, rng) -> bytes:
  entries = [(f'sa_{i}{ext}', data) for i, jpg, js in records
             for ext, data in (('.jpg', jpg), ('.json', js))]
  return _tar([entries[k] for k in rng.permutation(len(entries))])


def test_a_tar_inside_a_member_makes_the_ranges_disagree():
  rng = np.random.default_rng(3)
  inner = _tar([(f'sa_{i}{ext}', rng.bytes(700)) for i in range(100, 120)
                for ext in ('.jpg', '.json')])
  blob = _tar([('sa_1.jpg', rng.bytes(900)), ('sa_1.json', rng.bytes(300)),
               ('notes.bin', inner), ('sa_2.jpg', rng.bytes(900)),
               ('sa_2.json', rng.bytes(300))])
  assert len(inner) > 3 * streaming.LOOKBACK
  # One range: the tar is read as it is, the inner tar never parsed.
  [events] = _read_ranges(blob, 1 << 20)
  assert sorted(e.pair.stem for e in events[:-1]) == ['sa_1', 'sa_2']
  # Ranges that start inside the inner tar, far from notes.bin's header,
  # resync on its headers: the ranges before disagree, and say so.
  ranges = _read_ranges(blob, 4096)
  error = streaming.check_chain([e[-1] for e in ranges], len(blob))
  assert error.reason == errors.CORRUPT_TAR and error.tar == NAME
  assert 'byte ranges disagree' in str(error)
  assert "disk_mode='keep'" in str(error)


def test_damage_stops_a_range_and_drops_the_member_before_it(tmp_path):
  rng = np.random.default_rng(4)
  blob = _tar([(f'sa_{i}{ext}', rng.bytes(1000)) for i in range(1, 9)
               for ext in ('.jpg', '.json')])
  members, _ = tars.index_members(io.BytesIO(blob), tar=NAME)
  bad = bytearray(blob)
  bad[members[9].offset - 512 + 20] ^= 0xFF  # sa_5.json's header.
  path = tmp_path / NAME
  path.write_bytes(bytes(bad))
  index = tars.index_shard(shards_lib.Shard(NAME, shards_lib.TAR,
                                            os.fspath(path)))
  kept_by_index = {(m.name, m.offset) for p in index.pairs
                   for m in (p.jpg, p.json)} | {
                       (p.member, None) for p in index.problems}
  assert index.damage is not None
  for range_bytes in (2048, 4096, 1 << 20):
    ranges = _read_ranges(bytes(bad), range_bytes)
    reports = [e[-1] for e in ranges]
    damaged = [r for r in reports if r.damage is not None]
    assert damaged and all(
        r.damage.member == index.damage.member for r in damaged)
    assert streaming.check_chain(reports, len(bad)) is None
    before = [e for events, r in zip(ranges, reports)
              if r.index <= damaged[0].index for e in events]
    found = _members_found(before)
    # The images before the damage are those the index keeps (sa_5.jpg,
    # the last member before it, is dropped by both).
    assert {n for n, _, _ in found} == {n for n, _ in kept_by_index}
    assert {n for n, _ in kept_by_index} == {
        f'sa_{i}{ext}' for i in range(1, 5) for ext in ('.jpg', '.json')}


@pytest.mark.parametrize('case', list(_hostile_tars.CASES))
def test_hostile_headers_are_damage_as_in_the_index(case):
  """Byte-range reads refuse each hostile run of headers before tarfile
  reads it, with the same error as the index (one rule, `check_header`)."""
  run, detail = _hostile_tars.CASES[case]
  blob = _hostile_tars.hostile_tar(run, [('sa_1.jpg', b'j' * 100),
                                         ('sa_1.json', b'{}')])
  with _hostile_tars.deadline(20):
    _, expected = tars.index_members(io.BytesIO(blob), tar=NAME)
    [events] = _read_ranges(blob, 1 << 30)
  report = events[-1]
  assert re.search(detail, report.damage.detail), report.damage.detail
  assert (report.damage.where, report.damage.detail) == (expected.where,
                                                         expected.detail)


class _CountingFile(io.BytesIO):
  """A file that counts its reads: each is a request on a bucket."""

  def __init__(self, data: bytes):
    super().__init__(data)
    self.reads = 0
    self.bytes_read = 0

  def read(self, n=-1):
    data = super().read(n)
    self.reads += 1
    self.bytes_read += len(data)
    return data


def test_a_bucket_range_costs_one_read_per_block():
  rng = np.random.default_rng(5)
  records = [(i, *fake_data.image_record(rng, i, height=32, width=24,
                                         num_masks=1)) for i in range(1, 60)]
  blob = _shuffled_tar(records, rng)
  shard = shards_lib.Shard(NAME, shards_lib.TAR, 'mem://', known_size=len(blob))
  spans = streaming.plan(len(blob), 32 << 10)
  block = 8192
  reads = total = 0
  for i, (start, end) in enumerate(spans):
    rng_ = streaming.ByteRange(shard, i, len(spans), start, end, len(blob))
    f = _CountingFile(blob)
    pos = streaming.read_start(rng_)
    stream = streaming.Stream(streaming.FileSource(f, pos), pos,
                              read_bytes=block)
    events = list(streaming.read_range(rng_, stream, hold_bytes=1 << 20))
    assert events[-1].damage is None
    read = f.bytes_read
    # Reads of one block each, but for the last member's rest past the
    # end: the cost is in blocks of the bytes read, not in members.
    assert f.reads <= -(-read // block) + 3, (i, f.reads, read)
    assert read <= end - start + _slack(blob) + block
    reads, total = reads + f.reads, total + read
  members = len(records) * 2
  assert reads < members / 2
  assert total <= len(blob) + len(spans) * (_slack(blob) + block)


def test_settle_pairs_orphans_and_counts_copies():
  shard = shards_lib.Shard('sa_000003.tar', shards_lib.URL, 'http://x/3')
  other = shards_lib.Shard('sa_000001.tar', shards_lib.URL, 'http://x/1')
  jpg = tars.Member('sa_5.jpg', 512, 3)
  js = tars.Member('sa_5.json', 2048, 4)
  orphans = [streaming.Orphan(shard, 1, js, b'json'),
             streaming.Orphan(shard, 0, jpg, None)]
  settled = streaming.settle_image(5, orphans)
  built_shard, pair, data = settled.build
  assert built_shard == shard and (pair.jpg, pair.json) == (jpg, js)
  assert data == {'sa_5.json': b'json'}  # The jpg is read by seek.
  assert settled.skips == [] and settled.counts == {'sa_000003.tar': [1, 0]}
  # A copy written from a lower tar: the orphans are not even read.
  written = streaming.Paired(1, other.name, 'sa_5.jpg', 'sa_5.json', True)
  settled = streaming.settle_image(5, orphans + [written])
  assert settled.build is None
  assert [(e.reason, e.tar) for e in settled.skips] == [
      (errors.DUPLICATE_ID, 'sa_000003.tar')]
  assert settled.duplicate_tars == [(1, 'sa_000001.tar'),
                                    (3, 'sa_000003.tar')]
  # Two copies written (two tars): the writer keeps one, one is skipped.
  again = streaming.Paired(3, shard.name, 'sa_5.jpg', 'sa_5.json', True)
  settled = streaming.settle_image(5, [again, written])
  assert [(e.reason, e.tar, e.member) for e in settled.skips] == [
      (errors.DUPLICATE_ID, 'sa_000003.tar', 'sa_5.jpg')]
  # A stray member beside a pair of its own tar: one more copy, skipped.
  stray = streaming.Orphan(shard, 2, tars.Member('x/sa_5.jpg', 9000, 3), b'')
  settled = streaming.settle_image(5, [again, stray])
  assert [(e.reason, e.member) for e in settled.skips] == [
      (errors.DUPLICATE_MEMBER, 'x/sa_5.jpg')]
  assert settled.counts == {'sa_000003.tar': [1, 1]}
  # Unpaired in every range: one problem, as pair_members says.
  settled = streaming.settle_image(5, orphans[:1])
  assert [(e.reason, e.member) for e in settled.skips] == [
      (errors.MISSING_JPG, 'sa_5.json')]


# ------------------------------------------------------------ HTTP stream


def test_range_stream_reads_a_span_in_one_request_and_resumes_cuts():
  blob = bytes(range(256)) * 400
  with LoopbackServer({NAME: blob}) as srv:
    url = srv.url(NAME)
    options = http.options_lib.DownloadOptions(backoff=0.01, timeout=5)
    with http.RangeStream(url, start=1000, size=len(blob),
                          options=options) as s:
      s.want(60000)
      got = b''.join(s.read(n) for n in (1, 511, 4096, 30000, 24392))
      assert got == blob[1000:60000] and s.tell() == 60000
      assert [g[2] for g in srv.gets()] == ['bytes=1000-59999']
      srv.add_fault(NAME, 'cut', 5000)
      s.want(len(blob))
      assert s.read(len(blob)) == blob[60000:]
      assert s.read(10) == b''
    assert [(g[2], g[3]) for g in srv.gets()][1:] == [
        ('bytes=60000-102399', 206), ('bytes=65000-102399', 206)]
    assert srv.sent[NAME] == len(blob) - 1000
    srv.add_fault(NAME, 'ignore_range', None)
    with http.RangeStream(url, start=10, size=len(blob),
                          options=options) as s:
      with pytest.raises(errors.DownloadError, match='ignores Range'):
        s.read(10)


# ------------------------------------------------------------ builds


def _records(rng, ids, size=(48, 40)):
  return [(i, *fake_data.image_record(rng, i, height=size[0] + i % 7,
                                      width=size[1], num_masks=2))
          for i in ids]


@pytest.fixture(scope='module')
def served(tmp_path_factory) -> dict[str, bytes]:
  """Three tars, one per layout, the second with its members shuffled."""
  rng = np.random.default_rng(6)
  out_dir = tmp_path_factory.mktemp('served')
  out = {}
  for i, layout in enumerate(fake_data.LAYOUTS):
    path = out_dir / f'sa_00000{i}.tar'
    fake_data.write_tar(path, _records(rng, range(20 * i + 1, 20 * i + 16)),
                        layout=layout, rng=rng if i == 1 else None)
    out[path.name] = path.read_bytes()
  return out


def _config(**kw):
  return config_lib.SegmentAnythingConfig(
      name=kw.pop('name', 'ranges'), num_tars=kw.pop('num_tars', None), **kw)


def _build(data_dir, manual_dir, *, beam=True, stream=True, workers=0,
           **config):
  builder = tfds.builder(
      'segment_anything', config=_config(**config),
      data_dir=os.fspath(data_dir), workers=workers,
      download_options={'disk_mode': 'stream' if stream else 'keep',
                        'backoff': 0.01, 'retries': 3, 'timeout': 10})
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir),
      beam_runner=runners.local_runner() if beam else None))
  return builder


def _examples(builder) -> dict[int, tuple]:
  ds = builder.as_dataset(split='train', decoders={
      'image': {'content': tfds.decode.SkipDecoding()}})
  out = {}
  for e in tfds.as_numpy(ds):
    key = int(e['image']['image_id'])
    assert key not in out
    out[key] = (e['image']['content'], tuple(
        c.decode() for c in e['annotations']['segmentation']['counts']))
  return out


def _local_manual(tmp_path, files) -> pathlib.Path:
  manual = tmp_path / 'local_manual'
  manual.mkdir()
  for name, blob in files.items():
    (manual / name).write_bytes(blob)
  return manual


def _links(tmp_path, srv, names) -> pathlib.Path:
  manual = tmp_path / 'manual'
  manual.mkdir()
  fake_data.write_links(manual / links_lib.LINKS_FILE_NAME,
                        [(n, srv.url(n)) for n in names])
  return manual


def _complete(data_dir) -> list[pathlib.Path]:
  return list(pathlib.Path(data_dir).rglob('dataset_info.json'))


def _slack(blob: bytes) -> int:
  """Bytes a range may read beyond its own: the look-back, and its last
  member's rest plus the header after it."""
  members, _ = tars.index_members(io.BytesIO(blob), tar=NAME)
  largest = max(-(-m.size // 512) * 512 for m in members)
  return streaming.LOOKBACK + largest + 2 * 512


def test_streamed_build_equals_the_local_build_in_few_requests(
    served, tmp_path):
  baseline_builder = _build(tmp_path / 'local',
                            _local_manual(tmp_path, served), beam=False)
  baseline = _examples(baseline_builder)
  assert len(baseline) == 45
  range_bytes = 16 << 10
  with LoopbackServer(served) as srv:
    manual = _links(tmp_path, srv, served)
    builder = within(300, _build, tmp_path / 'data', manual,
                     range_bytes=range_bytes)
    assert _examples(builder) == baseline
    for name, blob in served.items():
      ranges = len(streaming.plan(len(blob), range_bytes))
      assert ranges >= 3
      gets = srv.gets(name)
      # One request per range, and one for the bytes past its end.
      assert len(gets) <= 2 * ranges, (name, [g[2] for g in gets])
      assert all(g[3] == 206 for g in gets)
      # Nothing read twice but the look-back and each range's last member.
      assert len(blob) <= srv.sent[name] <= len(blob) + ranges * _slack(blob)
  summary = builder.info.metadata['audit']
  assert summary == baseline_builder.info.metadata['audit']
  assert summary['images_indexed'] == 45 and summary['skipped_images'] == 0
  assert (builder.info.splits['train'].num_examples ==
          baseline_builder.info.splits['train'].num_examples)


def test_pairs_far_apart_beyond_a_tiny_cap_are_read_by_seek(served, tmp_path):
  name = 'sa_000001.tar'  # Shuffled: jpg and json far apart.
  files = {name: served[name]}
  baseline = _examples(_build(tmp_path / 'local',
                              _local_manual(tmp_path, files), beam=False))
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    srv.add_fault(name, 'cut', 3000)  # And a cut, resumed.
    builder = within(300, _build, tmp_path / 'data', manual,
                     range_bytes=1 << 20, hold_bytes=2000)
    assert _examples(builder) == baseline
    gets = srv.gets(name)
    # One read of the whole tar, cut at byte 3000 and resumed from there;
    # then one request per member over the cap, read again by seek.
    assert [g[2].split('-')[0] for g in gets[:2]] == ['bytes=0',
                                                      'bytes=3000']
    by_seek = len(gets) - 2
    assert by_seek > 0
    members, _ = tars.index_members(io.BytesIO(files[name]), tar=name)
    largest = max(m.size for m in members)
    assert srv.sent[name] <= len(files[name]) + by_seek * largest


def test_tars_in_a_bucket_are_read_in_ranges(served, tmp_path):
  import _ram_epath  # pylint: disable=g-import-not-at-top
  _ram_epath.enable()
  root = f'ram://ranges-{os.getpid()}/sa1b'
  for name, blob in served.items():
    local = tmp_path / name
    local.write_bytes(blob)
    _ram_epath.upload(os.fspath(local), f'{root}/{name}')
  try:
    # One process: the ram:// file system lives in this one.
    baseline = _examples(_build(tmp_path / 'local', root, beam=False,
                                workers=1))
    builder = _build(tmp_path / 'data', root, range_bytes=32 << 10,
                     hold_bytes=4000)
    assert _examples(builder) == baseline
    assert builder.info.metadata['audit']['images_indexed'] == 45
  finally:
    _ram_epath.rmtree(root)


def test_a_tar_inside_a_member_fails_the_build_even_lenient(tmp_path):
  rng = np.random.default_rng(8)
  inner_dir = tmp_path / 'inner'
  inner_dir.mkdir()
  fake_data.write_tar(inner_dir / NAME, _records(rng, range(100, 130)))
  inner = (inner_dir / NAME).read_bytes()
  outer = {NAME: _tar([(n, d) for i, jpg, js in _records(rng, [1, 2])
                       for n, d in ((f'sa_{i}.jpg', jpg),
                                    (f'sa_{i}.json', js))] +
                      [('extras/inner.tar', inner)])}
  assert len(inner) > 4 * streaming.LOOKBACK
  with LoopbackServer(outer) as srv:
    manual = _links(tmp_path, srv, outer)
    for lenient in (False, True):
      data = tmp_path / f'data{lenient}'
      with pytest.raises(Exception, match=r'sa_000000\.tar:@\d+: its byte'
                         r' ranges disagree.*\[corrupt_tar\]'):
        within(300, _build, data, manual, range_bytes=8 << 10,
               lenient=lenient)
      assert _complete(data) == []
  # Read whole (one range), the inner tar is one ignored member.
  (tmp_path / 'again').mkdir()
  with LoopbackServer(outer) as srv:
    manual = _links(tmp_path / 'again', srv, outer)
    builder = within(300, _build, tmp_path / 'whole', manual)
    assert sorted(_examples(builder)) == [1, 2]
    assert builder.info.metadata['audit']['ignored_members'] == [
        f'{NAME}:extras/inner.tar']


def _truncated(blob: bytes) -> bytes:
  members, _ = tars.index_members(io.BytesIO(blob), tar=NAME)
  middle = members[len(members) // 2]
  return blob[:middle.offset + middle.size // 2]


def test_lenient_audit_of_bad_input_adds_up_as_in_the_local_build(
    served, tmp_path):
  bad = make_bad_manual_dir(tmp_path / 'bad')
  files = {p.name: p.read_bytes() for p in sorted(bad.iterdir())}
  files['sa_000002.tar'] = _truncated(served['sa_000002.tar'])
  files['sa_000003.tar'] = _tar([('README', b'hello'), ('SA_1.JPG', b'x')])
  local = _build(tmp_path / 'local', _local_manual(tmp_path, files),
                 beam=False, lenient=True)
  expected = local.info.metadata['audit']
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    builder = within(300, _build, tmp_path / 'data', manual, lenient=True,
                     range_bytes=16 << 10)
  got = builder.info.metadata['audit']
  for key in ('tars', 'images_indexed', 'images_per_tar', 'ignored_members',
              'skipped_images', 'skipped_by_reason'):
    assert got[key] == expected[key], key
  assert [(t['tar'], t['reason']) for t in got['skipped_tars']] == [
      (t['tar'], t['reason']) for t in expected['skipped_tars']] == [
          ('sa_000002.tar', errors.CORRUPT_TAR),
          ('sa_000003.tar', errors.NO_IMAGES)]
  ours, theirs = _examples(builder), _examples(local)
  assert sorted(ours) == sorted(theirs)
  assert len(ours) == got['images_indexed'] - got['skipped_images']
  # Image 2 is in two tars: one copy is kept; which one is not determined.
  assert {k: v for k, v in ours.items() if k != 2} == {
      k: v for k, v in theirs.items() if k != 2}
  records = [json.loads(line) for p in (pathlib.Path(builder.data_dir) /
                                        'audit').glob('*.jsonl')
             for line in p.read_text().splitlines()]
  skips = sorted((r['reason'], r['tar'], r['member']) for r in records
                 if r['kind'] == 'skip')
  assert (errors.DUPLICATE_ID, 'sa_000001.tar', 'sa_2.jpg') in skips


def test_strict_streamed_build_names_the_tar(served, tmp_path):
  files = {'sa_000000.tar': served['sa_000000.tar'],
           'sa_000001.tar': _truncated(served['sa_000001.tar'])}
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    with pytest.raises(Exception, match=r'sa_000001\.tar:.*truncated.*'
                       r'\[corrupt_tar\]'):
      within(300, _build, tmp_path / 'data', manual, range_bytes=16 << 10)
    # An image id in two tars: strict names both.
    dup = {'sa_000000.tar': served['sa_000000.tar'],
           'sa_000001.tar': served['sa_000000.tar']}
    srv.files.update(dup)
    with pytest.raises(Exception, match=r'image id \d+ is also in'
                       r' sa_00000[01]\.tar \[duplicate_id\]'):
      within(300, _build, tmp_path / 'dup', manual, range_bytes=16 << 10)
  assert _complete(tmp_path) == []


def test_a_tar_damaged_in_the_middle_keeps_what_resyncs(served, tmp_path):
  blob = bytearray(served['sa_000000.tar'])
  members, _ = tars.index_members(io.BytesIO(bytes(blob)), tar=NAME)
  hit = members[len(members) // 3]
  blob[hit.offset - 512 + 20] ^= 0xFF  # A header's name: bad checksum.
  files = {NAME: bytes(blob)}
  local = _build(tmp_path / 'local', _local_manual(tmp_path, files),
                 beam=False, lenient=True)
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    builder = within(300, _build, tmp_path / 'data', manual, lenient=True,
                     range_bytes=16 << 10)
    with pytest.raises(Exception, match=rf'{NAME}:@{hit.offset - 512}: corrupt'
                       r' or truncated tar: unreadable header'):
      within(300, _build, tmp_path / 'strict', manual, range_bytes=16 << 10)
  audit = builder.info.metadata['audit']
  assert [(t['tar'], t['reason']) for t in audit['skipped_tars']] == [
      (NAME, errors.CORRUPT_TAR)]
  ours, theirs = _examples(builder), _examples(local)
  # The images before the damage, as the local build keeps them, and
  # those of the ranges after the damaged one (they resync).
  assert set(theirs) < set(ours)
  assert {k: ours[k] for k in theirs} == theirs
  assert len(ours) == audit['images_indexed'] - audit['skipped_images']


def test_copies_in_a_local_tar_and_a_streamed_one(served, tmp_path):
  # sa_000000.tar is local (indexed, read by seek); sa_000001.tar, streamed
  # in ranges, holds the same images; sa_000002.tar is streamed too.
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'sa_000000.tar').write_bytes(served['sa_000000.tar'])
  files = {'sa_000001.tar': served['sa_000000.tar'],
           'sa_000002.tar': served['sa_000002.tar']}
  expected = _examples(_build(
      tmp_path / 'local', _local_manual(tmp_path, {
          n: served[n] for n in ('sa_000000.tar', 'sa_000002.tar')}),
      beam=False))
  with LoopbackServer(files) as srv:
    fake_data.write_links(manual / links_lib.LINKS_FILE_NAME,
                          [(n, srv.url(n)) for n in files])
    builder = within(300, _build, tmp_path / 'data', manual, lenient=True,
                     range_bytes=16 << 10)
    with pytest.raises(Exception, match=r'image id \d+ is also in'
                       r' sa_00000[01]\.tar \[duplicate_id\]'):
      within(300, _build, tmp_path / 'strict', manual, range_bytes=16 << 10)
  assert _examples(builder) == expected
  audit = builder.info.metadata['audit']
  assert audit['skipped_by_reason'] == {errors.DUPLICATE_ID: 15}
  assert audit['images_indexed'] - audit['skipped_images'] == len(expected)
  records = [json.loads(line) for p in (pathlib.Path(builder.data_dir) /
                                        'audit').glob('*.jsonl')
             for line in p.read_text().splitlines()]
  assert {r['tar'] for r in records if r['kind'] == 'skip'} == {
      'sa_000001.tar'}
