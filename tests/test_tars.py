"""Tar indexing and pairing, on tars written in every SA-1B member layout."""

import io
import re
import tarfile
import tracemalloc

import numpy as np
import pytest

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.tools import fake_data
from segment_anything_tfds.sources import manual_dir as shards
from segment_anything_tfds.prepare import tars

import _hostile_tars


def M(name, offset=0, size=10):
  return tars.Member(name, offset, size)


def test_pairs_by_stem_in_any_folder_and_order():
  members = [M('b/sa_2.json'), M('./sa_1.jpg'), M('sa_10.json'),
             M('a/sa_2.jpg'), M('sa_1.json'), M('sa_10.jpg'), M('README')]
  index = tars.pair_members(members, tar='t.tar')
  pairs, problems, ignored = index.pairs, index.problems, index.ignored
  assert [(p.stem, p.jpg.name, p.json.name) for p in pairs] == [
      ('sa_1', './sa_1.jpg', 'sa_1.json'),
      ('sa_2', 'a/sa_2.jpg', 'b/sa_2.json'),
      ('sa_10', 'sa_10.jpg', 'sa_10.json')]
  assert problems == []
  assert ignored == ['README']
  assert index.images == 3


def test_unpaired_duplicated_unsafe_and_oversized_members_are_problems():
  members = [M('sa_1.jpg'), M('sa_2.json'), M('sa_3.jpg'), M('sa_3.json'),
             M('x/sa_3.jpg'), M('../sa_4.jpg'), M('/abs/sa_5.json'),
             M('sa_6.jpg'), M('sa_6.json', size=tars.MAX_JSON_BYTES + 1),
             M('sa_7.jpg'), M('sa_7.json')]
  index = tars.pair_members(members, tar='t.tar')
  assert [p.stem for p in index.pairs] == ['sa_7']
  got = {(p.reason, p.member) for p in index.problems}
  # One problem per image: sa_3 is stored twice, so neither copy is used.
  assert got == {
      (errors.MISSING_JSON, 'sa_1.jpg'),
      (errors.MISSING_JPG, 'sa_2.json'),
      (errors.DUPLICATE_MEMBER, 'x/sa_3.jpg'),
      (errors.UNSAFE_MEMBER, '../sa_4.jpg'),
      (errors.UNSAFE_MEMBER, '/abs/sa_5.json'),
      (errors.MEMBER_TOO_LARGE, 'sa_6.json'),
  }
  assert index.images == 7 == len(index.pairs) + len(index.problems)
  dup = [p for p in index.problems if p.reason == errors.DUPLICATE_MEMBER]
  assert 'as sa_3.jpg and as x/sa_3.jpg' in str(dup[0])
  for p in index.problems:
    assert str(p).startswith(f't.tar:{p.member}: ')


def test_non_canonical_stems_are_ignored_never_merged():
  """`sa_1` and `sa_01` (or `sa_١`) are not two names of image 1."""
  # Ids beyond int64 (the build's entries) name no image either, however
  # many digits (Python refuses int() of more than 4300).
  huge = [f'sa_{1 << 63}.jpg', f'sa_{1 << 63}.json', f'sa_{"9" * 5000}.jpg',
          f'sa_{"9" * 5000}.json']
  members = [M('sa_1.jpg'), M('sa_1.json'), M('sa_01.jpg'), M('sa_01.json'),
             M('sa_\u0661.jpg'), M('sa_\u0661.json'), M('SA_2.JPG'),
             M('sa_12a.jpg'), M('sa_3.jpeg'), M('sa_1\n.jpg'), M('sa_.json'),
             M('sa_0.jpg'), M('sa_0.json'), *map(M, huge),
             M(f'sa_{(1 << 63) - 1}.jpg'), M(f'sa_{(1 << 63) - 1}.json')]
  index = tars.pair_members(members, tar='t.tar')
  assert [p.image_id for p in index.pairs] == [0, 1, (1 << 63) - 1]
  assert index.problems == []
  assert sorted(index.ignored) == sorted([
      'sa_01.jpg', 'sa_01.json', 'sa_\u0661.jpg', 'sa_\u0661.json',
      'SA_2.JPG', 'sa_12a.jpg', 'sa_3.jpeg', 'sa_1\n.jpg', 'sa_.json',
      *huge])


def test_special_members_are_reported_as_what_they_are(tmp_path):
  rng = np.random.default_rng(4)
  jpg, js = fake_data.image_record(rng, 5, height=8, width=6, num_masks=1)
  path = tmp_path / 'sa_000000.tar'
  with tarfile.open(path, 'w') as t:
    for name, data in (('sa_5.jpg', jpg), ('sa_5.json', js), ('sa_6.json', js)):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
    for name, kind in (('sa_6.jpg', tarfile.SYMTYPE),
                       ('sa_7.jpg', tarfile.LNKTYPE),
                       ('sa_8.jpg', tarfile.FIFOTYPE),
                       ('sa_9.jpg', tarfile.CHRTYPE)):
      info = tarfile.TarInfo(name)
      info.type = kind
      info.linkname = 'sa_5.jpg' if kind in (tarfile.SYMTYPE,
                                             tarfile.LNKTYPE) else ''
      t.addfile(info)
  index = tars.index(shards.tar_source(path.name, str(path)))
  assert index.damage is None
  assert [p.stem for p in index.pairs] == ['sa_5']
  got = {p.member: (p.reason, p.detail) for p in index.problems}
  assert got == {
      'sa_6.jpg': (errors.SPECIAL_MEMBER, 'sa_6.jpg is a symlink, not a'
                   ' regular file; it is never followed or read'),
      'sa_7.jpg': (errors.SPECIAL_MEMBER, 'sa_7.jpg is a hardlink, not a'
                   ' regular file; it is never followed or read'),
      'sa_8.jpg': (errors.SPECIAL_MEMBER, 'sa_8.jpg is a FIFO, not a'
                   ' regular file; it is never followed or read'),
      'sa_9.jpg': (errors.SPECIAL_MEMBER, 'sa_9.jpg is a character device,'
                   ' not a regular file; it is never followed or read'),
  }


@pytest.mark.parametrize('layout', fake_data.LAYOUTS)
def test_index_and_read_every_layout(tmp_path, layout):
  rng = np.random.default_rng(1)
  records = [(i, *fake_data.image_record(rng, i, height=9, width=7, num_masks=2))
             for i in (5, 6, 7, 8)]
  path = tmp_path / 'sa_000009.tar'
  fake_data.write_tar(path, records, layout=layout, rng=rng)
  with open(path, 'rb') as f:
    members, damage = tars.index_members(f, tar='sa_000009.tar')
    assert damage is None
    index = tars.pair_members(members, tar='sa_000009.tar')
    assert index.problems == [] and index.ignored == []
    assert [p.stem for p in index.pairs] == ['sa_5', 'sa_6', 'sa_7', 'sa_8']
    by_id = {i: (jpg, js) for i, jpg, js in records}
    for p in index.pairs:
      jpg, js = by_id[examples.image_id_from_stem(p.stem)]
      assert tars.read_member(f, p.jpg, tar='t') == jpg
      assert tars.read_member(f, p.json, tar='t') == js
  # The stdlib agrees on the member names.
  with tarfile.open(path) as t:
    assert sorted(m.name for m in t.getmembers() if m.isfile()) == sorted(
        m.name for m in members)


def test_truncated_tar_names_tar_member_and_offset(tmp_path):
  rng = np.random.default_rng(2)
  records = [(i, *fake_data.image_record(rng, i, height=30, width=30, num_masks=3))
             for i in (1, 2, 3)]
  path = tmp_path / 'sa_000001.tar'
  fake_data.write_tar(path, records)
  data = path.read_bytes()
  with open(path, 'rb') as f:
    whole, damage = tars.index_members(f, tar='x')
  assert damage is None
  last = max(whole, key=lambda m: m.offset)
  cut = tmp_path / 'cut.tar'
  cut.write_bytes(data[:last.offset + last.size // 2])
  with open(cut, 'rb') as f:
    members, damage = tars.index_members(f, tar='sa_000001.tar')
  assert damage.reason == errors.CORRUPT_TAR
  assert str(damage).startswith('sa_000001.tar:')
  assert last.name in str(damage) or '@' in str(damage)
  # Cut in the padding after the last member's data: the message compares
  # the padded end it needs with the file's size (never a smaller need).
  padded = last.offset + -(-last.size // 512) * 512
  assert padded > last.offset + last.size
  cut.write_bytes(data[:last.offset + last.size + 1])
  with open(cut, 'rb') as f:
    _, damage = tars.index_members(f, tar='sa_000001.tar')
  assert (f'truncated tar: {last.name} needs bytes up to {padded} but the'
          f' file has {last.offset + last.size + 1}') in str(damage)
  garbage = tmp_path / 'garbage.tar'
  garbage.write_bytes(data[:1024] + b'\x07' * 3000)
  with open(garbage, 'rb') as f:
    _, damage = tars.index_members(f, tar='sa_000002.tar')
  assert str(damage).startswith('sa_000002.tar:@')
  # What is not a tar at all says so, and what it seems to be instead.
  for blob, hint in ((b'', ''), (b'<html>please log in</html>' * 40,
                                 ' (it looks like an HTML page'),
                     (b'\x1f\x8b\x08' + b'\x00' * 2000,
                      ' (it is gzip-compressed: gunzip it first)'),
                     (b'\xfd7zXZ\x00' + b'\x01' * 2000,
                      ' (it is xz-compressed: unxz it first)'),
                     (b'\x07' * 2000, '')):
    with io.BytesIO(blob) as f:
      members, damage = tars.index_members(f, tar='sa_000003.tar')
    assert members == [] and 'not a tar' in str(damage), blob[:10]
    assert (hint in str(damage)) and ('(it ' in str(damage)) == bool(hint), (
        str(damage))


def test_damaged_tar_keeps_the_images_before_the_damage(tmp_path):
  rng = np.random.default_rng(6)
  records = [(i, *fake_data.image_record(rng, i, height=20, width=20,
                                         num_masks=2)) for i in range(1, 7)]
  path = tmp_path / 'sa_000004.tar'
  fake_data.write_tar(path, records)  # Layout: sa_1.jpg, sa_1.json, ...
  data = path.read_bytes()
  with open(path, 'rb') as f:
    members, _ = tars.index_members(f, tar='t')
  # Cut inside the data of image 4's jpg: images 1-3 are whole.
  jpg4 = next(m for m in members if m.name.endswith('sa_4.jpg'))
  path.write_bytes(data[:jpg4.offset + 10])
  index = tars.index(shards.tar_source(path.name, str(path)))
  assert index.damage is not None
  assert index.damage.reason == errors.CORRUPT_TAR
  assert [p.image_id for p in index.pairs] == [1, 2, 3]
  with tars.ShardReader(shards.tar_source(path.name, str(path))) as r:
    for p in index.pairs:
      key, _ = tars.read_example(r, p)
      assert key == p.image_id


@pytest.mark.parametrize('case', list(_hostile_tars.CASES))
def test_hostile_headers_are_refused_before_tarfile_reads_them(case):
  """Each hostile run of headers is damage found before tarfile reads it,
  fast, and the images before it stay readable (lenient builds keep them).
  Before, tarfile read them whole, parsed a 256 KiB pax header of digits for
  about a minute (CVE-2024-6232), or raised RecursionError or ValueError."""
  run, detail = _hostile_tars.CASES[case]
  before = [('sa_1.jpg', b'j' * 100), ('sa_1.json', b'{}'),
            ('sa_3.jpg', b'k' * 100)]
  blob = _hostile_tars.hostile_tar(run, before)
  with _hostile_tars.deadline(20), io.BytesIO(blob) as f:
    members, damage = tars.index_members(f, tar='sa_000005.tar')
  assert damage.reason == errors.CORRUPT_TAR
  assert re.fullmatch(r'sa_000005.tar:@\d+', damage.where)
  assert re.search(detail, damage.detail), damage.detail
  # The whole members before it: the last one (sa_3.jpg) may be where the
  # damage is, so it is not listed.
  assert [m.name for m in members] == ['sa_1.jpg', 'sa_1.json']


@pytest.mark.parametrize('kind', [b'L', b'K', b'x', b'g'])
def test_a_huge_extended_header_is_never_read(tmp_path, kind):
  """A 64 MiB long name or pax header is refused from its header block:
  nothing near its size is allocated (before, tarfile read it whole)."""
  path = tmp_path / 'sa_000006.tar'
  at = _hostile_tars.huge_header_tar(path, kind, 64 << 20, before=[
      ('sa_1.jpg', b'j' * 100), ('sa_1.json', b'{}')])
  shard = shards.tar_source(path.name, str(path))
  tracemalloc.start()
  try:
    index = tars.index(shard)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 4 << 20
  assert index.damage.reason == errors.CORRUPT_TAR
  assert str(index.damage).startswith(
      f'sa_000006.tar:@{at}: a ')
  assert f'of {64 << 20} bytes at byte {at}: over the' in str(index.damage)
  # Lenient builds keep the images before the damage, as for any damage
  # (the last member before it is dropped).
  assert index.pairs == [] and [p.member for p in index.problems] == [
      'sa_1.jpg']


def test_extended_headers_that_real_tars_hold_still_index(tmp_path):
  """Long and non-ASCII names (GNU 'L', pax 'x'), a pax global header and
  sub-second times, as GNU tar and tarfile write them, index as before."""
  names = ['x' * 150 + '/sa_1.jpg', 'é' * 60 + '/sa_1.json']
  for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=fmt, pax_headers={
        'comment': 'SA-1B ' * 100}) as t:
      for name in names:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = 5, 1680000000.25
        t.addfile(info, io.BytesIO(b'12345'))
    buf.seek(0)
    members, damage = tars.index_members(buf, tar='t')
    assert damage is None
    assert [(m.name, m.size) for m in members] == [(n, 5) for n in names]


def test_index_reads_headers_not_data(tmp_path):
  """Indexing a tar reads far less than the tar: it seeks past member data."""
  rng = np.random.default_rng(3)
  records = [(i, *fake_data.image_record(rng, i, height=200, width=300, num_masks=2))
             for i in range(1, 9)]
  path = tmp_path / 'sa_000000.tar'
  fake_data.write_tar(path, records, rng=rng)

  class Counting(io.FileIO):
    read_bytes = 0

    def read(self, n=-1):
      out = super().read(n)
      Counting.read_bytes += len(out)
      return out

    def readinto(self, b):
      n = super().readinto(b)
      Counting.read_bytes += n
      return n

  with Counting(path, 'rb') as f:
    members, damage = tars.index_members(f, tar='t')
  assert damage is None
  assert len(members) == 16
  assert Counting.read_bytes < path.stat().st_size / 4


def _pair_files(folder, image_id, rng):
  jpg, js = fake_data.image_record(rng, image_id, height=8, width=6,
                                   num_masks=1)
  (folder / f'sa_{image_id}.jpg').write_bytes(jpg)
  (folder / f'sa_{image_id}.json').write_bytes(js)
  return jpg, js


def test_reads_are_bounded_by_the_indexed_size(tmp_path):
  """A file that grew after indexing is not read past its indexed size."""
  rng = np.random.default_rng(8)
  folder = tmp_path / 'sa_000006'
  folder.mkdir()
  _pair_files(folder, 3, rng)
  shard = shards.folder_source('sa_000006.tar', str(folder))
  [pair] = tars.index(shard).pairs
  with open(folder / 'sa_3.json', 'ab') as f:
    f.write(b' ' * (1 << 20))
  with tars.ShardReader(shard) as r, pytest.raises(
      errors.BadInputError, match=r'sa_3.json: has \d+\+ bytes'):
    r.read(pair.json)
