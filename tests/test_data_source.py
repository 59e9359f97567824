"""Random access: ArrayRecord builds, `tfds.data_source` and the example loader.

The dummy data is built twice per module (config `all`: tars 0-3, 11
images), as TFRecord and as ArrayRecord, into separate data dirs; the
ArrayRecord examples, read by index, must equal the tf.data ones by image id.
"""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds
from segment_anything_tfds import cli

from conftest import load_example

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / 'dummy_data'
IMAGE_IDS = {1, 2, 3, 11, 12, 13, 21, 22, 23, 31, 32}
SKIP = {'image': {'content': tfds.decode.SkipDecoding()}}


random_access = load_example('random_access')


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """(tfrecord data dir, array_record data dir), both of config `all`."""
  out = []
  for fmt in ('tfrecord', 'array_record'):
    data_dir = tmp_path_factory.mktemp(fmt)
    b = tfds.builder('segment_anything', data_dir=data_dir, config='all')
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY)),
        file_format=fmt)
    out.append(data_dir)
  return tuple(out)


def _tfdata_by_id(data_dir):
  b = tfds.builder('segment_anything', data_dir=data_dir, config='all')
  return {int(ex['image']['image_id']): ex for ex in tfds.as_numpy(
      b.as_dataset(split='train', decoders=SKIP))}


def _assert_same(a, b, path=''):
  if isinstance(a, dict):
    assert set(a) == set(b), path
    for k in a:
      _assert_same(a[k], b[k], f'{path}/{k}')
  else:
    # data_source gives Python ints and lists where tf.data gives numpy
    # scalars and arrays, and bytes arrays of kind S, not O: compare values,
    # at tf.data's dtype, exactly.
    b = np.asarray(b)
    if b.dtype.kind in 'OS':
      a = np.asarray(a)
      assert a.shape == b.shape, path
      assert [bytes(x) for x in a.ravel()] == [bytes(x) for x in b.ravel()], path
      return
    a_raw = np.asarray(a)
    assert a_raw.shape == b.shape, path
    assert np.can_cast(a_raw.dtype, b.dtype, 'same_kind') or (
        a_raw.dtype.kind in 'iu' and b.dtype.kind in 'iu'), (path, a_raw.dtype)
    assert np.array_equal(np.asarray(a, dtype=b.dtype), b), path


def test_array_record_files_and_info(dirs):
  _, ar_dir = dirs
  b = tfds.builder('segment_anything', data_dir=ar_dir, config='all')
  assert b.is_prepared()
  assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert b.info.splits['train'].num_examples == len(IMAGE_IDS)
  assert list(pathlib.Path(b.data_dir).glob('*.array_record-*'))


def test_data_source_matches_tf_data_by_image_id(dirs):
  tfr_dir, ar_dir = dirs
  expected = _tfdata_by_id(tfr_dir)
  assert set(expected) == IMAGE_IDS
  source = tfds.data_source('segment_anything', data_dir=ar_dir,
                            builder_kwargs={'config': 'all'}, decoders=SKIP)
  assert set(source) == {'train'}
  train = source['train']
  assert len(train) == len(IMAGE_IDS)
  seen = set()
  for i in range(len(train)):
    ex = train[i]
    image_id = int(ex['image']['image_id'])
    seen.add(image_id)
    _assert_same(ex, expected[image_id], f'image {image_id}')
  assert seen == IMAGE_IDS


def test_data_source_decoded_images_and_random_order(dirs):
  _, ar_dir = dirs
  train = tfds.data_source('segment_anything', split='train', data_dir=ar_dir,
                           builder_kwargs={'config': 'all'})
  order = list(range(len(train)))[::-1] + [3, 3, 0]
  got = [train[i] for i in order]
  for i, ex in zip(order, got):
    again = train[i]
    assert ex['image']['image_id'] == again['image']['image_id']
    img = ex['image']['content']
    assert img.dtype == np.uint8
    assert img.shape == (ex['image']['height'], ex['image']['width'], 3)


def test_data_source_split_slice(dirs):
  _, ar_dir = dirs
  full = tfds.data_source('segment_anything', split='train', data_dir=ar_dir,
                          builder_kwargs={'config': 'all'}, decoders=SKIP)
  part = tfds.data_source('segment_anything', split='train[2:5]',
                          data_dir=ar_dir, builder_kwargs={'config': 'all'},
                          decoders=SKIP)
  assert len(part) == 3
  assert [int(part[i]['image']['image_id']) for i in range(3)] == [
      int(full[i]['image']['image_id']) for i in range(2, 5)]


def test_cli_reads_array_record(dirs, tmp_path, capsys):
  _, ar_dir = dirs
  code = cli.main(['stats', '--config', 'all', '--data_dir', str(ar_dir),
                   '--out', str(tmp_path), '--no_progress'])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert f'images:           {len(IMAGE_IDS)}' in out
  code = cli.main(['show', '--config', 'all', '--data_dir', str(ar_dir),
                   '--image_id', '12', '--out', str(tmp_path),
                   '--no_progress'])
  assert code == 0
  code = cli.main(['show', '--config', 'all', '--data_dir', str(ar_dir),
                   '--index', '5', '--out', str(tmp_path), '--no_progress'])
  assert code == 0
  out, err = capsys.readouterr()
  assert 'image id 12, 513x57, 2 masks' in out, err  # 9x1, scaled up.
  assert len(list(tmp_path.glob('sa_*.png'))) == 2  # Index 5 is not id 12.


# -------------------------------------------------- examples/random_access.py


def test_random_access_dataset(dirs):
  tfr_dir, ar_dir = dirs
  expected = _tfdata_by_id(tfr_dir)
  ds = random_access.SegmentAnythingDataset(str(ar_dir), 'all', masks=True)
  assert len(ds) == len(IMAGE_IDS)
  from pycocotools import mask as mask_utils
  for i in range(len(ds)):
    ex = ds[i]
    ref = expected[ex['image_id']]
    ann = ref['annotations']
    h, w = ex['height'], ex['width']
    assert ex['image'].shape == (h, w, 3)
    assert ex['file_name'] == f'sa_{ex["image_id"]}.jpg'
    n = len(ann['id'])
    assert ex['masks'].shape == (n, h, w) and ex['masks'].dtype == bool
    assert ex['boxes_xyxy'].shape == (n, 4) and ex['points'].shape == (n, 2)
    np.testing.assert_array_equal(ex['area'], ann['area'])
    np.testing.assert_array_equal(ex['masks'].sum(axis=(1, 2)), ann['area'])
    for k, rle in enumerate(ex['rle']):
      assert rle['counts'] == ann['segmentation']['counts'][k]
      np.testing.assert_array_equal(mask_utils.decode(rle), ex['masks'][k])
    # Boxes back in pixels: x0 = xmin * width, y1 = ymax * height.
    np.testing.assert_allclose(
        ex['boxes_xyxy'][:, 0], ann['bbox'][:, 1] * w, rtol=1e-6)
    np.testing.assert_allclose(
        ex['boxes_xyxy'][:, 3], ann['bbox'][:, 2] * h, rtol=1e-6)
  assert ds[-1]['image_id'] == ds[len(ds) - 1]['image_id']
  with pytest.raises(IndexError):
    ds[len(ds)]


def test_random_access_dataset_pickles_and_transforms(dirs):
  _, ar_dir = dirs
  ds = random_access.SegmentAnythingDataset(
      str(ar_dir), segment_anything_tfds.tars_config('1-2'), 'train',
      decode_image=False)
  with pytest.raises(Exception):
    len(ds)  # Config tars_1-2 was never built into this data dir.
  ds = random_access.SegmentAnythingDataset(str(ar_dir), 'all',
                                            decode_image=False)
  first = ds[0]
  assert isinstance(first['image'], bytes) and first['image'][:2] == b'\xff\xd8'
  clone = pickle.loads(pickle.dumps(ds))
  assert clone._source is None  # pylint: disable=protected-access
  assert clone[0]['image_id'] == first['image_id']
  ids = random_access.SegmentAnythingDataset(
      str(ar_dir), 'all', transform=lambda ex: ex['image_id'])
  assert sorted(ids.__getitems__(range(len(ids)))) == sorted(IMAGE_IDS)


@pytest.mark.parametrize('length, replicas, drop_last', [
    (11, 1, False), (11, 2, False), (11, 3, True), (10, 4, False)])
def test_sharded_sampler(length, replicas, drop_last):
  samplers = [random_access.ShardedSampler(
      length, num_replicas=replicas, rank=r, seed=7, drop_last=drop_last)
              for r in range(replicas)]
  epoch0 = [list(s) for s in samplers]
  assert len({len(e) for e in epoch0}) == 1
  assert all(len(e) == len(s) for e, s in zip(epoch0, samplers))
  union = set().union(*map(set, epoch0))
  if drop_last:
    assert len(union) == len(samplers[0]) * replicas
  else:
    assert union == set(range(length))
  assert [list(s) for s in samplers] == epoch0  # Same epoch, same order.
  for s in samplers:
    s.set_epoch(1)
  assert [list(s) for s in samplers] != epoch0
  with pytest.raises(ValueError):
    random_access.ShardedSampler(length, num_replicas=2, rank=2)


def test_batches_cover_the_dataset(dirs):
  _, ar_dir = dirs
  ds = random_access.SegmentAnythingDataset(str(ar_dir), 'all')
  sampler = random_access.ShardedSampler(len(ds), seed=1)
  got = list(random_access.batches(ds, sampler, batch_size=4))
  assert [len(b['image_id']) for b in got] == [4, 4, 3]
  assert sorted(i for b in got for i in b['image_id']) == sorted(IMAGE_IDS)
  assert random_access.main(['--data_dir', str(ar_dir), '--config', 'all',
                             '--index', '0,10', '--masks']) == 0
