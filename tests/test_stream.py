"""Remote tars read once, front to back (`tars.stream`), on both engines.

Reader-level tests compare what streaming a tar finds with what indexing it
finds (`tars.index`): the same pairs, problems, ignored members and damage,
whatever the member order, the extended headers, the hold cap or the
damage. Build tests serve tars from a loopback HTTP server in
`disk_mode='stream'` and count its requests and bytes on the local engine
and on Beam: the request goals of issue 18.
"""

from __future__ import annotations

import io
import json
import math
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
from segment_anything_tfds.prepare import tars
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import manual_dir
from segment_anything_tfds.tools import fake_data

from conftest import build
from conftest import tar_bytes
import _hostile_tars
from _loopback_server import LoopbackServer
from _loopback_server import within

NAME = 'sa_000000.tar'


def _tar(entries, fmt=tarfile.GNU_FORMAT) -> bytes:
  """A tar of (name, data) members; data None makes a symlink."""
  return tar_bytes(entries, fmt, mtime=1680000000.5)  # A float: pax tars
  # get a header each.


def _source(tmp_path: pathlib.Path, blob: bytes):
  """The blob as a tar of manual_dir (a real source, read by the walker)."""
  folder = tmp_path / f'src{len(list(tmp_path.iterdir()))}'
  folder.mkdir()
  (folder / NAME).write_bytes(blob)
  return manual_dir.find_shards(folder).shards[0]


def _view(index: tars.Index):
  return ([(p.stem, p.jpg, p.json) for p in index.pairs],
          [(e.reason, e.member, e.detail) for e in index.problems],
          index.ignored,
          None if index.damage is None else (index.damage.where,
                                             index.damage.detail))


def _streamed(source, hold_bytes):
  """(pairs given out, by stem, with their bytes; the final index)."""
  given = {}
  for event in tars.stream(source, hold_bytes=hold_bytes):
    if isinstance(event, tars.Index):
      return given, event
    assert event.pair.stem not in given, event.pair.stem
    given[event.pair.stem] = event
  raise AssertionError('no index at the end')


def _members(blob: bytes) -> dict[str, bytes]:
  with tarfile.open(fileobj=io.BytesIO(blob)) as t:
    return {m.name: t.extractfile(m).read() for m in t.getmembers()
            if m.isfile()}


def _check_same_as_index(tmp_path, blob, hold_bytes):
  source = _source(tmp_path, blob)
  expected = tars.index(source)
  given, index = _streamed(source, hold_bytes)
  assert _view(index) == _view(expected)
  final = {p.stem for p in index.pairs}
  assert final <= set(given)  # Every pair given out, once.
  data = _members(blob) if index.damage is None else {}
  for stem in final:
    event = given[stem]
    assert (event.pair.jpg, event.pair.json) == (
        next((p.jpg, p.json) for p in index.pairs if p.stem == stem))
    if data:
      assert event.jpg == data[event.pair.jpg.name]
      assert event.json == data[event.pair.json.name]
  return given, index


def _records(rng, ids, size=(24, 20)):
  return [(i, *fake_data.image_record(rng, i, height=size[0] + i % 5,
                                      width=size[1], num_masks=2))
          for i in ids]


# ------------------------------------------------------------ the reader


@pytest.mark.parametrize('hold_bytes', [0, 3000, 1 << 30])
@pytest.mark.parametrize('layout', fake_data.LAYOUTS)
@pytest.mark.parametrize('shuffled', [False, True])
def test_stream_finds_what_the_index_finds(tmp_path, layout, shuffled,
                                           hold_bytes):
  rng = np.random.default_rng(1)
  path = tmp_path / NAME
  fake_data.write_tar(path, _records(rng, range(1, 25)), layout=layout,
                      rng=rng if shuffled else None)
  given, index = _check_same_as_index(tmp_path, path.read_bytes(),
                                      hold_bytes)
  assert len(index.pairs) == 24 and not index.problems
  assert set(given) == {p.stem for p in index.pairs}


@pytest.mark.parametrize('fmt', [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize('folder', ['', 'x' * 120 + '/', 'é/'])
def test_extended_headers_stream_as_they_index(tmp_path, fmt, folder):
  rng = np.random.default_rng(2)
  blob = _tar([(f'{folder}sa_{i}{ext}', rng.bytes(int(rng.integers(1, 3000))))
               for i in range(1, 9) for ext in ('.jpg', '.json')], fmt)
  _, index = _check_same_as_index(tmp_path, blob, 1 << 20)
  assert len(index.pairs) == 8


def test_problems_stream_as_they_index_and_copies_are_taken_back(tmp_path):
  """Unpaired, unsafe, special, ignored members, and a stem stored again
  after its pair was given out: then the image is a problem (as the index
  says), and the stream's index no longer lists its pair."""
  rng = np.random.default_rng(3)
  (j1, s1), (j2, s2), (j3, s3) = (
      fake_data.image_record(rng, i, height=8, width=6, num_masks=1)
      for i in (1, 2, 3))
  entries = [('sa_1.jpg', j1), ('sa_1.json', s1), ('README', b'hi'),
             ('sa_2.jpg', j2), ('../sa_4.jpg', j1), ('sa_3.jpg', j3),
             ('sa_3.json', s3), ('sa_01.jpg', j1), ('x/sa_1.json', s1),
             ('sa_5.json', s2), ('sa_6.jpg', None)]
  blob = _tar(entries)
  for hold in (0, 1 << 20):
    given, index = _check_same_as_index(tmp_path, blob, hold)
    assert [p.stem for p in index.pairs] == ['sa_3']
    assert {(e.reason, e.member) for e in index.problems} == {
        (errors.DUPLICATE_MEMBER, 'x/sa_1.json'),
        (errors.MISSING_JSON, 'sa_2.jpg'), (errors.UNSAFE_MEMBER,
                                            '../sa_4.jpg'),
        (errors.MISSING_JPG, 'sa_5.json'), (errors.SPECIAL_MEMBER,
                                            'sa_6.jpg')}
    assert index.ignored == ['README', 'sa_01.jpg']
    if hold:  # Image 1 was given out before its second json came.
      assert set(given) == {'sa_1', 'sa_3'}


@pytest.mark.parametrize('cut', ['header', 'data', 'end'])
def test_damage_stops_the_stream_where_it_stops_the_index(tmp_path, cut):
  rng = np.random.default_rng(4)
  blob = _tar([(f'sa_{i}{ext}', rng.bytes(1000)) for i in range(1, 9)
               for ext in ('.jpg', '.json')])
  members, _ = tars.index_members(io.BytesIO(blob), tar=NAME)
  if cut == 'header':
    bad = bytearray(blob)
    bad[members[9].offset - 512 + 20] ^= 0xFF  # sa_5.json's header.
    blob = bytes(bad)
  elif cut == 'data':
    blob = blob[:members[9].offset + 10]
  else:
    blob = blob[:members[-1].offset + 1024]  # No end-of-archive block.
  for hold in (0, 1 << 20):
    _, index = _check_same_as_index(tmp_path, blob, hold)
    assert index.damage.reason == errors.CORRUPT_TAR
    assert str(index.damage).startswith(f'{NAME}:')
  # sa_5.jpg, the last member before the damage, is dropped by both.
  if cut != 'end':
    assert [p.image_id for p in index.pairs] == [1, 2, 3, 4]


@pytest.mark.parametrize('case', list(_hostile_tars.CASES))
def test_hostile_headers_are_damage_as_in_the_index(tmp_path, case):
  """One walker: the stream refuses each hostile run of headers before
  tarfile reads it, with the index's error."""
  run, detail = _hostile_tars.CASES[case]
  blob = _hostile_tars.hostile_tar(run, [('sa_1.jpg', b'j' * 100),
                                         ('sa_1.json', b'{}')])
  with _hostile_tars.deadline(20):
    _, index = _check_same_as_index(tmp_path, blob, 1 << 20)
  assert re.search(detail, index.damage.detail), index.damage.detail


def test_members_past_the_cap_are_read_again_by_seek(tmp_path):
  rng = np.random.default_rng(5)
  path = tmp_path / NAME
  fake_data.write_tar(path, _records(rng, range(1, 30)), rng=rng)
  source = _source(tmp_path, path.read_bytes())
  reads = []

  class Counting:
    """The source, its random reads counted."""

    def __getattr__(self, name):
      return getattr(source, name)

    def open_random(self):
      reader = source.open_random()
      read_at = reader.read_at
      reader.read_at = lambda o, n: reads.append((o, n)) or read_at(o, n)
      return reader

  given, index = _streamed(Counting(), 3000)
  assert len(index.pairs) == 29 and set(given) == {p.stem
                                                   for p in index.pairs}
  again = {r for r in reads}
  assert 0 < len(reads) < 2 * 29
  assert len(again) == len(reads)  # Nothing read twice by seek.
  members = {m.offset: m for p in index.pairs for m in (p.jpg, p.json)}
  assert all(members[o].size == n for o, n in reads)


# ------------------------------------------------------------ requests


def _image(rng, height=60, width=80, masks=3) -> tuple[bytes, dict]:
  jpg, js = fake_data.image_record(rng, 1, height=height, width=width,
                                   num_masks=masks)
  return jpg, json.loads(js)


def _with_id(record: dict, image_id: int) -> bytes:
  record = dict(record, image=dict(record['image'], image_id=image_id,
                                   file_name=f'sa_{image_id}.jpg'))
  return json.dumps(record).encode()


@pytest.fixture(scope='module')
def big_tars(tmp_path_factory) -> dict[str, bytes]:
  """Two tars of 2,000 images, ≈23 MB each: members in order, shuffled."""
  rng = np.random.default_rng(6)
  jpg, record = _image(rng)
  pad = b' ' * (10000 - len(jpg) - len(_with_id(record, 1)))
  out = tmp_path_factory.mktemp('big')
  files = {}
  for t, shuffle in enumerate((None, rng)):
    name = f'sa_00000{t}.tar'
    ids = range(t * 2000 + 1, (t + 1) * 2000 + 1)
    fake_data.write_tar(out / name, [(i, jpg, _with_id(record, i) + pad)
                                     for i in ids], rng=shuffle)
    files[name] = (out / name).read_bytes()
  return files


def _links(tmp_path, srv, names) -> pathlib.Path:
  manual = tmp_path / 'manual'
  manual.mkdir(exist_ok=True)
  fake_data.write_links(manual / links_lib.LINKS_FILE_NAME,
                        [(n, srv.url(n)) for n in names])
  return manual


def _build(data_dir, manual, *, beam, lenient=False, hold_bytes=None,
           stream=True):
  config = config_lib.SegmentAnythingConfig(
      name='streamed', lenient=lenient,
      **({} if hold_bytes is None else {'hold_bytes': hold_bytes}))
  return build(data_dir, manual, config, beam=beam, download_options={
      'disk_mode': 'stream' if stream else 'keep'})


def _shard_files(builder) -> dict[str, bytes]:
  return {p.name: p.read_bytes()
          for p in pathlib.Path(builder.data_dir).glob('*.tfrecord*')}


def _audit_file(builder) -> bytes:
  path = pathlib.Path(builder.data_dir) / 'audit' / 'records.jsonl'
  return path.read_bytes()


@pytest.mark.integration
@pytest.mark.parametrize('beam', [False, True], ids=['local', 'beam'])
def test_a_23_mb_tar_of_2000_images_in_few_requests(big_tars, tmp_path,
                                                    beam):
  with LoopbackServer(big_tars) as srv:
    manual = _links(tmp_path, srv, big_tars)
    builder = within(600, _build, tmp_path / 'data', manual, beam=beam)
    for name, blob in big_tars.items():
      gets = srv.gets(name)
      assert 22e6 < len(blob) < 24e6
      # At most 10 GETs, at most 2 per 8 MiB: one here (no cut).
      assert len(gets) <= min(10, 2 * math.ceil(len(blob) / (8 << 20)))
      assert len(gets) == 1, [g[2] for g in gets]
      assert srv.sent[name] <= len(blob)  # Nothing read twice.
  assert builder.info.splits['train'].num_examples == 4000
  audit = builder.info.metadata['audit']
  assert audit['images_indexed'] == 4000 and audit['skipped_images'] == 0


@pytest.mark.integration
def test_pairs_past_the_cap_cost_a_request_per_member(big_tars, tmp_path):
  """hold_bytes=0 holds nothing: each pair is read again by seek, two
  requests, and only those bytes are read twice."""
  name = 'sa_000001.tar'  # Shuffled.
  files = {name: big_tars[name]}
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    srv.add_fault(name, 'cut', 5 << 20)  # And a cut, resumed.
    builder = within(600, _build, tmp_path / 'data', manual, beam=False,
                     hold_bytes=0)
    gets = srv.gets(name)
    ranges = [g[2] for g in gets]
    assert ranges[:2] == [f'bytes=0-{len(files[name]) - 1}',
                          f'bytes={5 << 20}-{len(files[name]) - 1}']
    assert len(gets) == 2 + 2 * 2000
    member_bytes = sum(int(m.group(2)) - int(m.group(1)) + 1
                       for m in (re.match(r'bytes=(\d+)-(\d+)', r)
                                 for r in ranges[2:]))
    index, _ = tars.index_members(io.BytesIO(files[name]), tar=name)
    assert member_bytes == sum(m.size for m in index)
    assert srv.sent[name] <= len(files[name]) + member_bytes
  assert builder.info.splits['train'].num_examples == 2000


# ------------------------------------------------ the engines agree


def _hostile_inputs(root: pathlib.Path) -> dict[str, bytes]:
  """Tars with one of each fault (`make_bad_manual_dir`'s and more)."""
  from conftest import make_bad_manual_dir  # pylint: disable=g-import-not-at-top
  bad = make_bad_manual_dir(root / 'bad')
  files = {p.name: p.read_bytes() for p in sorted(bad.iterdir())}
  rng = np.random.default_rng(7)
  good = [(f'sa_{i}{ext}', data) for i, jpg, js in _records(rng, (20, 21, 22))
          for ext, data in (('.jpg', jpg), ('.json', js))]
  whole = _tar(good)
  members, _ = tars.index_members(io.BytesIO(whole), tar='x')
  files['sa_000002.tar'] = whole[:members[3].offset + 7]  # Truncated.
  files['sa_000003.tar'] = _tar([('README', b'hello'), ('SA_1.JPG', b'x')])
  run, _ = _hostile_tars.CASES['long name over the cap']
  files['sa_000004.tar'] = _hostile_tars.hostile_tar(run, good[:4])
  files['sa_000005.tar'] = _tar(good[4:] + [('../sa_30.jpg', b'x'),
                                            ('again/sa_22.json', good[5][1]),
                                            ('sa_10.jpg', good[0][1])])
  files['sa_000006.tar'] = b'<html>please log in</html>'
  return files


@pytest.fixture(scope='module')
def hostile(tmp_path_factory) -> dict[str, bytes]:
  return _hostile_inputs(tmp_path_factory.mktemp('hostile'))


@pytest.mark.integration
def test_both_engines_write_the_same_audit_and_shards_from_hostile_input(
    hostile, tmp_path):
  """Lenient builds of the same hostile tars, from local files and
  streamed from links, by both engines: the same audit file byte for
  byte, the same metadata audit, the same shard files; and every image
  counted in and out."""
  local = tmp_path / 'local_manual'
  local.mkdir()
  for name, blob in hostile.items():
    (local / name).write_bytes(blob)
  builds = {}
  for engine in ('local', 'beam'):
    builds['files', engine] = _build(tmp_path / f'files_{engine}', local,
                                     beam=engine == 'beam', lenient=True)
  with LoopbackServer(hostile) as srv:
    manual = _links(tmp_path, srv, hostile)
    for engine in ('local', 'beam'):
      builds['links', engine] = within(
          600, _build, tmp_path / f'links_{engine}', manual,
          beam=engine == 'beam', lenient=True)
  first = builds['files', 'local']
  audit = first.info.metadata['audit']
  for key, builder in builds.items():
    assert _audit_file(builder) == _audit_file(first), key
    assert builder.info.metadata['audit'] == audit, key
    assert _shard_files(builder) == _shard_files(first), key
    assert builder.info.splits['train'].num_examples == (
        audit['images_indexed'] - audit['skipped_images']), key
  assert {t['tar']: t['reason'] for t in audit['skipped_tars']} == {
      'sa_000002.tar': errors.CORRUPT_TAR, 'sa_000003.tar': errors.NO_IMAGES,
      'sa_000004.tar': errors.CORRUPT_TAR, 'sa_000006.tar': errors.CORRUPT_TAR}
  # Tars 2 and 4 end inside (or just after) sa_21.json: its jpg has no
  # json, and image 20 is in both (kept from tar 2); tar 5 stores sa_22
  # twice and has a jpg of 10 without its json.
  assert audit['skipped_by_reason'] == {
      'duplicate_id': 2, 'duplicate_member': 1, 'malformed_json': 1,
      'missing_jpg': 1, 'missing_json': 4, 'unsafe_member': 1,
      'zero_size': 1}
  ids = sorted(int(e['image']['image_id']) for e in tfds.as_numpy(
      first.as_dataset(split='train')))
  assert ids == [1, 2, 3, 10, 20]


@pytest.mark.integration
@pytest.mark.parametrize('beam', [False, True], ids=['local', 'beam'])
def test_strict_streamed_builds_name_the_tar(hostile, tmp_path, beam):
  files = {'sa_000002.tar': hostile['sa_000002.tar']}
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    with pytest.raises(Exception) as e:
      within(600, _build, tmp_path / 'data', manual, beam=beam)
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.BadInputError), e.value
  assert (error.tar, error.reason) == ('sa_000002.tar', errors.CORRUPT_TAR)
  assert 'truncated tar' in error.detail
  assert not list(tmp_path.rglob('dataset_info.json'))


@pytest.mark.integration
def test_the_spill_is_deleted_bucket_by_bucket(big_tars, tmp_path,
                                               monkeypatch):
  """The local engine spills the records of a streamed tar and copies them
  into the shards, deleting each bucket of the spill once every shard
  spanning it is written: local disk peaks near the output plus a
  sixteenth of it (plus a shard), not twice the output."""
  from segment_anything_tfds.prepare import local  # pylint: disable=g-import-not-at-top
  name = 'sa_000001.tar'
  files = {name: big_tars[name]}
  seen = []
  remove = local.remove_bucket

  def used(root: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())

  def watched(spill_dir, bucket):
    data = pathlib.Path(spill_dir).parent.parent
    seen.append((bucket, used(data)))
    remove(spill_dir, bucket)

  monkeypatch.setattr(local, 'remove_bucket', watched)
  with LoopbackServer(files) as srv:
    manual = _links(tmp_path, srv, files)
    config = config_lib.SegmentAnythingConfig(name='spilled')
    builder = tfds.builder('segment_anything', config=config,
                           data_dir=os.fspath(tmp_path / 'data'),
                           progress=False, workers=1,
                           download_options={'disk_mode': 'stream'})
    within(600, builder.download_and_prepare,
           download_config=tfds.download.DownloadConfig(
               manual_dir=os.fspath(manual), num_shards=8))
  assert sorted(b for b, _ in seen) == list(range(16))  # Each bucket once.
  output = sum(p.stat().st_size for p in
               pathlib.Path(builder.data_dir).glob('*.tfrecord*'))
  peak = max(u for _, u in seen)
  assert output < peak <= output * (1 + 1 / 16 + 1 / 8) + (1 << 20), (
      peak, output)
  assert builder.info.splits['train'].num_examples == 2000
