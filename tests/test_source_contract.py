"""The `Source` contract (`sources/base.py`), for every kind of source.

Every source a build can read (a local tar, a local folder, a tar and a
folder in a bucket, an HTTP link) gives the same bytes through the same
methods, and remote tars read front to back cost few requests: one per
8 MiB from a bucket, one in all over HTTP; a random read of a remote tar is
one request for exactly its bytes.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile

import numpy as np
import pytest

from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import bucket
from segment_anything_tfds.sources import local as local_lib
from segment_anything_tfds.sources import manual_dir
from segment_anything_tfds.sources.http_tar import HttpTar
from segment_anything_tfds.tools import fake_data

from conftest import tar_bytes
import _ram_epath
from _loopback_server import LoopbackServer

NAME = 'sa_000007.tar'


def _tar_bytes() -> bytes:
  rng = np.random.default_rng(3)
  records = [(i, *fake_data.image_record(rng, i, height=24, width=20,
                                         num_masks=2)) for i in (1, 2, 3)]
  return tar_bytes(
      [(f'sa_{image_id}{ext}', data) for image_id, jpg, js in records
       for ext, data in (('.jpg', jpg), ('.json', js))]
      # Make sequential reads span several blocks.
      + [('padding.bin', bytes(3 << 20))])


BLOB = _tar_bytes()


@pytest.fixture(scope='module')
def server():
  with LoopbackServer({NAME: BLOB}) as srv:
    yield srv


def _folder(tmp_path: pathlib.Path) -> pathlib.Path:
  folder = tmp_path / 'sa_000007'
  folder.mkdir()
  with tarfile.open(fileobj=io.BytesIO(BLOB)) as t:
    for m in t.getmembers():
      if m.name.startswith('sa_'):
        (folder / m.name).write_bytes(t.extractfile(m).read())
  return folder


def _tar_sources(tmp_path, server):
  local = tmp_path / NAME
  local.write_bytes(BLOB)
  _ram_epath.enable()
  remote = f'ram://contract-{os.getpid()}-{tmp_path.name}/{NAME}'
  _ram_epath.upload(os.fspath(local), remote)
  return {
      'local tar': local_lib.LocalTar(NAME, os.fspath(local)),
      'bucket tar': bucket.BucketTar(NAME, remote),
      'http tar': HttpTar(NAME, server.mirror_url(NAME)),
  }


@pytest.mark.integration
@pytest.mark.parametrize('kind', ['local tar', 'bucket tar', 'http tar'])
def test_a_tar_source_gives_its_bytes_sequentially_and_at_random(
    kind, tmp_path, server):
  source = _tar_sources(tmp_path, server)[kind]
  assert isinstance(source, base.Source)
  assert (source.name, source.tar_index, source.folder) == (NAME, 7, False)
  assert source.remote == (kind != 'local tar')
  assert source.size() == len(BLOB)
  reader = source.open_sequential(0)
  try:
    got = reader.read(1000)
    assert reader.skip(5000) == 5000
    assert reader.tell() == 6000
    rest = reader.read(len(BLOB))  # More than is left: what there is.
  finally:
    reader.close()
  assert got == BLOB[:1000] and rest == BLOB[6000:]
  reader = source.open_sequential(4096)
  try:
    assert reader.read(10) == BLOB[4096:4106]
  finally:
    reader.close()
  reader = source.open_random()
  try:
    for offset, size in ((0, 512), (len(BLOB) - 100, 100), (12345, 7),
                         (len(BLOB) - 10, 100)):
      assert reader.read_at(offset, size) == BLOB[offset:offset + size]
  finally:
    reader.close()


@pytest.mark.integration
def test_the_factory_gives_each_location_its_kind(tmp_path, server):
  kinds = {kind: type(s) for kind, s in _tar_sources(tmp_path, server).items()}
  for kind, source in _tar_sources(tmp_path, server).items():
    again = manual_dir.tar_source(NAME, source.location)
    assert type(again) is kinds[kind] and again == source
  assert type(manual_dir.folder_source(NAME, os.fspath(tmp_path))) is (
      local_lib.LocalFolder)
  assert type(manual_dir.folder_source(NAME, 'ram://b/sa_000007')) is (
      bucket.BucketFolder)


def test_a_bucket_tar_costs_a_request_per_8_mib_or_per_random_read(
    tmp_path):
  big = np.random.default_rng(4).bytes(20 << 20)
  (tmp_path / NAME).write_bytes(big)
  _ram_epath.enable()
  remote = f'ram://contract-{os.getpid()}-{tmp_path.name}/{NAME}'
  _ram_epath.upload(os.fspath(tmp_path / NAME), remote)
  source = bucket.BucketTar(NAME, remote)
  reads = _ram_epath.RamFileSystem.reads
  reader = source.open_sequential(0)
  del reads[:]
  try:
    pos = 0
    while chunk := reader.read(100_000):  # Headers and members...
      assert chunk == big[pos:pos + len(chunk)]
      pos += len(chunk)
      pos += reader.skip(300_000)  # ... and members skipped.
  finally:
    reader.close()
  assert pos == len(big)
  sizes = [end - start for _, start, end in reads]
  assert len(sizes) == -(-len(big) // bucket.SEQUENTIAL_READ_BYTES), sizes
  assert all(n >= bucket.SEQUENTIAL_READ_BYTES for n in sizes[:-1]), sizes
  reader = source.open_random()
  del reads[:]
  try:
    for offset in (0, 512, 70_000, len(big) - 512):
      assert reader.read_at(offset, 512) == big[offset:offset + 512]
  finally:
    reader.close()
  assert [(start, end) for _, start, end in reads] == [
      (0, 512), (512, 1024), (70_000, 70_512), (len(big) - 512, len(big))]


@pytest.mark.integration
def test_an_http_tar_read_front_to_back_is_one_request(server, tmp_path):
  source = _tar_sources(tmp_path, server)['http tar']
  before = len(server.gets(NAME))
  reader = source.open_sequential(0)
  try:
    data = bytearray()
    while True:
      chunk = reader.read(100_000)
      if not chunk:
        break
      data += chunk
  finally:
    reader.close()
  assert bytes(data) == BLOB
  assert len(server.gets(NAME)) - before == 1


@pytest.mark.parametrize('where', ['local', 'bucket'])
def test_a_folder_source_lists_and_reads_its_files(where, tmp_path):
  folder = _folder(tmp_path)
  location = os.fspath(folder)
  if where == 'bucket':
    _ram_epath.enable()
    location = f'ram://contract-{os.getpid()}-{tmp_path.name}/sa_000007'
    for f in folder.iterdir():
      _ram_epath.upload(os.fspath(f), f'{location}/{f.name}')
  source = (bucket.BucketFolder if where == 'bucket' else
            local_lib.LocalFolder)('sa_000007.tar', location)
  assert isinstance(source, base.Source)
  assert source.folder and source.size() is None
  assert source.remote == (where == 'bucket')
  members = sorted(source.list_members())
  assert [m.name for m in members] == sorted(
      p.name for p in folder.iterdir())
  for m in members:
    assert m.kind == base.REGULAR
    assert source.read_member(m) == (folder / m.name).read_bytes()


@pytest.mark.integration
def test_sources_pickle_without_open_handles(tmp_path, server):
  import pickle  # pylint: disable=g-import-not-at-top
  for source in _tar_sources(tmp_path, server).values():
    again = pickle.loads(pickle.dumps(source))
    assert again == source and again.size() == len(BLOB)
