"""Tar indexing and pairing, on tars written in every SA-1B member layout."""

import io
import json
import tarfile

import numpy as np
import pytest

from segment_anything_tfds import examples
from segment_anything_tfds import fake_data
from segment_anything_tfds import tars


def M(name, offset=0, size=10):
  return tars.Member(name, offset, size)


def test_pairs_by_stem_in_any_folder_and_order():
  members = [M('b/sa_2.json'), M('./sa_1.jpg'), M('sa_10.json'),
             M('a/sa_2.jpg'), M('sa_1.json'), M('sa_10.jpg'), M('README')]
  pairs, problems, ignored = tars.pair_members(members, tar='t.tar')
  assert [(p.stem, p.jpg.name, p.json.name) for p in pairs] == [
      ('sa_1', './sa_1.jpg', 'sa_1.json'),
      ('sa_2', 'a/sa_2.jpg', 'b/sa_2.json'),
      ('sa_10', 'sa_10.jpg', 'sa_10.json')]
  assert problems == []
  assert [m.name for m in ignored] == ['README']


def test_unpaired_duplicated_unsafe_and_oversized_members_are_problems():
  members = [M('sa_1.jpg'), M('sa_2.json'), M('sa_3.jpg'), M('sa_3.json'),
             M('x/sa_3.jpg'), M('../sa_4.jpg'), M('/abs/sa_5.json'),
             M('sa_6.jpg'), M('sa_6.json', size=tars.MAX_JSON_BYTES + 1)]
  pairs, problems, _ = tars.pair_members(members, tar='t.tar')
  assert [p.stem for p in pairs] == ['sa_3']
  got = {(p.reason, p.member) for p in problems}
  assert got == {
      (examples.MISSING_JSON, 'sa_1.jpg'),
      (examples.MISSING_JPG, 'sa_2.json'),
      (examples.DUPLICATE_MEMBER, 'x/sa_3.jpg'),
      (examples.UNSAFE_MEMBER, '../sa_4.jpg'),
      (examples.UNSAFE_MEMBER, '/abs/sa_5.json'),
      (examples.MEMBER_TOO_LARGE, 'sa_6.json'),
      (examples.MISSING_JSON, 'sa_6.jpg'),
  }
  for p in problems:
    err = p.error()
    assert str(err).startswith(f't.tar:{p.member}: ')


@pytest.mark.parametrize('layout', fake_data.LAYOUTS)
def test_index_and_read_every_layout(tmp_path, layout):
  rng = np.random.default_rng(1)
  records = [(i, *fake_data.image_record(rng, i, height=9, width=7, num_masks=2))
             for i in (5, 6, 7, 8)]
  path = tmp_path / 'sa_000009.tar'
  fake_data.write_tar(path, records, layout=layout, rng=rng)
  with open(path, 'rb') as f:
    members = tars.index_members(f, tar='sa_000009.tar')
    tars.check_end(f, members, tar='sa_000009.tar')
    pairs, problems, ignored = tars.pair_members(members, tar='sa_000009.tar')
    assert problems == [] and ignored == []
    assert [p.stem for p in pairs] == ['sa_5', 'sa_6', 'sa_7', 'sa_8']
    by_id = {i: (jpg, js) for i, jpg, js in records}
    for p in pairs:
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
    whole = tars.index_members(f, tar='x')
  last = max(whole, key=lambda m: m.offset)
  cut = tmp_path / 'cut.tar'
  cut.write_bytes(data[:last.offset + last.size // 2])
  with open(cut, 'rb') as f, pytest.raises(examples.BadInputError) as e:
    members = tars.index_members(f, tar='sa_000001.tar')
    tars.check_end(f, members, tar='sa_000001.tar')
  assert e.value.reason == examples.CORRUPT_TAR
  assert 'sa_000001.tar' in str(e.value)
  assert last.name in str(e.value) or '@' in str(e.value)
  garbage = tmp_path / 'garbage.tar'
  garbage.write_bytes(data[:1024] + b'\x07' * 3000)
  with open(garbage, 'rb') as f, pytest.raises(examples.BadInputError) as e:
    tars.check_end(f, tars.index_members(f, tar='sa_000002.tar'), tar='sa_000002.tar')
  assert 'sa_000002.tar' in str(e.value)


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
    members = tars.index_members(f, tar='t')
  assert len(members) == 16
  assert Counting.read_bytes < path.stat().st_size / 4
