"""The segment_anything builder, end to end on the bundled dummy data."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds
from segment_anything_tfds.segment_anything import segment_anything_dataset_builder as ours
from segment_anything_tfds import tfds_seam

from conftest import DUMMY_DATA, REPO, make_bad_manual_dir, read_inputs

_IMAGES_ALL = len(read_inputs(DUMMY_DATA))


def _count_tar0():
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(DUMMY_DATA / 'sa_000000.tar') as t:
    return sum(m.name.endswith('.jpg') for m in t.getmembers())


class FirstTarTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = ours.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['first_1']
  EXAMPLE_DIR = str(DUMMY_DATA)
  SPLITS = {'train': _count_tar0()}


class AllTarsTest(tfds.testing.DatasetBuilderTestCase):
  # The dummy data holds 4 shards: first_10 and first_100 build them as
  # partial sets (allow_partial); all takes all of them.
  DATASET_CLASS = ours.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['first_10', 'first_100', 'all']
  EXAMPLE_DIR = str(DUMMY_DATA)
  SPLITS = {'train': _IMAGES_ALL}

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config,
                              version=self.VERSION, allow_partial=True)


def test_named_config_with_fewer_tars_fails_listing_them(tmp_path):
  builder = tfds.builder('segment_anything', config='first_10',
                         data_dir=tmp_path)
  with pytest.raises(segment_anything_tfds.errors.SourceError) as e:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  msg = str(e.value)
  assert 'config first_10 takes 10 tars but manual_dir and its links file' \
      ' offer 4; missing: sa_000004.tar' in msg
  assert "tars_config('0-3') (--tars 0-3)" in msg and 'allow_partial' in msg
  assert not builder.is_prepared()


def test_partial_build_is_recorded_and_warned_on_load(tmp_path, caplog):
  builder = tfds.builder('segment_anything', config='first_10',
                         data_dir=tmp_path, allow_partial=True)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  meta = json.loads((builder.data_path / 'metadata.json').read_text())
  assert meta['build']['partial'] == {
      'config_tars': 10, 'built': [f'sa_00000{i}.tar' for i in range(4)],
      'missing': [f'sa_00000{i}.tar' for i in range(4, 10)]}
  caplog.clear()
  again = tfds.builder('segment_anything', config='first_10',
                       data_dir=tmp_path)
  again.as_dataset(split='train')
  assert any('partial build' in r.getMessage() and 'takes 10 tars, it holds'
             ' 4' in r.getMessage() for r in caplog.records)


def test_reuse_warns_when_manual_dir_offers_other_tars(tmp_path, caplog):
  import shutil  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  manual.mkdir()
  for n in ('sa_000000.tar', 'sa_000001.tar'):
    shutil.copy(DUMMY_DATA / n, manual / n)
  config = tfds.download.DownloadConfig(manual_dir=manual)
  tfds.builder('segment_anything', config='all',
               data_dir=tmp_path / 'd').download_and_prepare(
                   download_config=config)
  shutil.copy(DUMMY_DATA / 'sa_000002.tar', manual / 'sa_000002.tar')
  caplog.clear()
  builder = tfds.builder('segment_anything', config='all',
                         data_dir=tmp_path / 'd')
  builder.download_and_prepare(download_config=config)
  msgs = [r.getMessage() for r in caplog.records]
  assert any('Already prepared' in m and 'new: sa_000002.tar' in m and
             '--overwrite' in m for m in msgs), msgs
  assert builder.info.splits['train'].num_examples < _IMAGES_ALL
  # --overwrite (REUSE_CACHE_IF_EXISTS) rebuilds with the new tar.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual,
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  assert json.loads((builder.data_path / 'metadata.json').read_text())[
      'audit']['tars'] == ['sa_000000.tar', 'sa_000001.tar', 'sa_000002.tar']


def test_reuse_warns_of_a_checksum_list_the_data_was_not_built_against(
    tmp_path, caplog):
  import hashlib  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  manual.mkdir()
  shutil.copy(DUMMY_DATA / 'sa_000001.tar', manual / 'sa_000001.tar')
  md5 = hashlib.md5((manual / 'sa_000001.tar').read_bytes()).hexdigest()
  sums = tmp_path / 'sums.md5'
  sums.write_text(f'{md5}  sa_000001.tar\n')

  def build(checksums):
    caplog.clear()
    builder = tfds.builder('segment_anything', config='first_1',
                           data_dir=tmp_path / 'd',
                           download_options={'checksums': checksums},
                           allow_partial=True)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual))
    return builder, [r.getMessage() for r in caplog.records
                     if 'not checked against' in r.getMessage()]

  builder, said = build('none')
  assert json.loads((builder.data_path / 'metadata.json').read_text())[
      'build']['checksums'] == {'list': 'none'}
  builder, said = build(os.fspath(sums))
  assert builder.reused and said == [
      'Already prepared segment_anything/first_1/2.0.0 (built without a'
      ' checksum list); 1 of its tars (sa_000001.tar) were not checked'
      f' against {sums}. The prepared data is used as it is; rebuild it with'
      ' --overwrite (download_mode=REUSE_CACHE_IF_EXISTS) to check them.']
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual,
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  assert json.loads((builder.data_path / 'metadata.json').read_text())[
      'build']['checksums'] == {'list': os.fspath(sums),
                                'tars': {'sa_000001.tar': f'md5:{md5}'}}
  # Another list with the same digest for its tar (and others for tars it
  # does not hold): checked already.
  (tmp_path / 'more.md5').write_text(f'{"0" * 32}  sa_000000.tar\n'
                                     f'{md5}  sa_000001.tar\n')
  builder, said = build(os.fspath(tmp_path / 'more.md5'))
  assert builder.reused and said == []
  # One with another digest for it: said.
  (tmp_path / 'other.md5').write_text(f'{"0" * 32}  sa_000001.tar\n')
  builder, said = build(os.fspath(tmp_path / 'other.md5'))
  assert said == [
      'Already prepared segment_anything/first_1/2.0.0 (built against'
      f' {sums}); 1 of its tars (sa_000001.tar) were not checked against'
      f' {tmp_path / "other.md5"}. The prepared data is used as it is;'
      ' rebuild it with --overwrite (download_mode=REUSE_CACHE_IF_EXISTS) to'
      ' check them.']


def test_a_capped_build_is_recorded_and_warned_on_reuse_and_load(tmp_path,
                                                                  caplog):
  def build():
    builder = tfds.builder('segment_anything', config='all',
                           data_dir=tmp_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=DUMMY_DATA, max_examples_per_split=2))
    return builder

  builder = build()
  meta = json.loads((builder.data_path / 'metadata.json').read_text())
  assert meta['build']['max_examples'] == 2
  assert builder.info.splits['train'].num_examples == 2
  for again in (lambda: build(),  # Reused, as TFDS does, but said,
                lambda: build().as_dataset(split='train'),  # once (tfds.load).
                lambda: tfds.builder('segment_anything', config='all',
                                     data_dir=tmp_path).as_dataset(
                                         split='train')):
    caplog.clear()
    again()
    assert [r.getMessage() for r in caplog.records
            if 'max_examples' in r.getMessage()] == [
                'segment_anything/all/2.0.0 was built with'
                ' max_examples_per_split=2: it holds at most 2 images, not'
                ' every image of config all']


def test_stale_incomplete_dirs_are_removed(tmp_path):
  """Builds take turns, so the next one removes every incomplete dir of its
  version, whatever its age, with older releases' lock files."""
  config_dir = tmp_path / 'segment_anything' / 'all'
  stale = [config_dir / f'incomplete.{x}_2.0.0' for x in ('dead', 'young')]
  other_version = config_dir / 'incomplete.other_1.0.0'
  for d in (*stale, other_version):
    d.mkdir(parents=True)
    (d / 'x').write_text('x')
  (config_dir / 'incomplete.dead_2.0.0.lock').write_text('1\n')
  builder = tfds.builder('segment_anything', config='all', data_dir=tmp_path)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  left = sorted(p.name for p in config_dir.iterdir())
  assert left == ['2.0.0', 'incomplete.other_1.0.0'], left


def test_build_lock_waits_for_the_holder_then_holds_the_file_in_place(
    tmp_path):
  """A holder removes the lock file as it lets go; the waiter it let in must
  then hold the lock of the file at that path, not of the removed one."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import incomplete  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / 'segment_anything' / 'all' / '2.0.0'
  lock_path = tmp_path / 'segment_anything' / 'all' / '2.0.0.lock'
  waiting, inside, leave = (threading.Event(), threading.Event(),
                            threading.Event())

  class Seen(logging.Handler):

    def emit(self, record):
      if 'waiting for it' in record.getMessage():
        waiting.set()

  def second():
    with incomplete.build_lock(data_dir):
      inside.set()
      leave.wait(30)

  seen = Seen()
  logger = logging.getLogger(incomplete.__name__)
  logger.addHandler(seen)
  try:
    with incomplete.build_lock(data_dir):
      assert lock_path.read_text() == f'{os.getpid()}\n'
      thread = threading.Thread(target=second, daemon=True)
      thread.start()
      assert waiting.wait(30)
      assert not inside.is_set()
    assert inside.wait(30)
    with open(lock_path, 'rb') as f:  # The file now at the path is held.
      with pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  finally:
    leave.set()
    logger.removeHandler(seen)
  thread.join(30)
  assert not lock_path.exists()


def _load(data_dir, config='all'):
  builder = tfds.builder('segment_anything', config=config, data_dir=data_dir)
  ds = builder.as_dataset(
      split='train',
      decoders={'image': {'content': tfds.decode.SkipDecoding()}})
  return builder, list(tfds.as_numpy(ds))


def test_every_image_once_byte_exact(prepared_dummy):
  inputs = read_inputs(DUMMY_DATA)
  builder, exs = _load(prepared_dummy)
  ids = [int(e['image']['image_id']) for e in exs]
  assert sorted(ids) == sorted(inputs)  # Each input image exactly once.
  assert builder.info.splits['train'].num_examples == len(inputs)
  from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin
  backslashes = 0
  for e in exs:
    jpg, record = inputs[int(e['image']['image_id'])]
    assert e['image']['content'] == jpg  # JPEG bytes never re-encoded.
    img = record['image']
    assert e['image']['file_name'].decode() == img['file_name']
    assert (e['image']['height'], e['image']['width']) == (img['height'], img['width'])
    anns = e['annotations']
    want = record['annotations']
    assert [c.decode() for c in anns['segmentation']['counts']] == [
        a['segmentation']['counts'] for a in want]
    backslashes += sum('\\' in a['segmentation']['counts'] for a in want)
    np.testing.assert_array_equal(anns['id'], [a['id'] for a in want])
    np.testing.assert_array_equal(anns['area'], [a['area'] for a in want])
    # TFDS stores float64 features in a tf.train.Example FloatList, i.e. as
    # float32 (the builtin does the same): values round-trip through float32.
    f32 = lambda k: np.array([a[k] for a in want], np.float32).astype(np.float64)
    np.testing.assert_array_equal(anns['predicted_iou'], f32('predicted_iou'))
    np.testing.assert_array_equal(anns['stability_score'], f32('stability_score'))
    np.testing.assert_array_equal(anns['point_coords'], f32('point_coords'))
    np.testing.assert_array_equal(anns['segmentation']['size'],
                                  [a['segmentation']['size'] for a in want])
    for key in ('bbox', 'crop_box'):
      expected = [builtin._normalize_bbox(a[key], img['height'], img['width'])
                  for a in want]
      np.testing.assert_array_equal(
          anns[key], np.array(expected, np.float32).reshape(-1, 4))
  assert backslashes >= 1  # The dummy data holds a counts string with '\'.


def test_audit_in_metadata(prepared_dummy):
  builder, _ = _load(prepared_dummy)
  meta = json.loads((builder.data_path / 'metadata.json').read_text())
  audit = meta['audit']
  assert audit['images_indexed'] == _IMAGES_ALL
  assert audit['skipped_images'] == 0 and audit['skipped_by_reason'] == {}
  assert audit['tars'] == [f'sa_00000{i}.tar' for i in range(4)]
  # The read-back builder sees it too.
  assert builder.info.metadata['audit'] == audit


def test_feature_spec_has_every_builtin_feature_with_same_dtype_and_shape(tmp_path):
  from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin
  theirs = builtin.Builder(data_dir=tmp_path).info.features
  mine = ours.Builder(data_dir=tmp_path).info.features

  def flat(spec, prefix=''):
    out = {}
    for k, v in spec.items():
      if isinstance(v, dict):
        out.update(flat(v, f'{prefix}{k}/'))
      else:
        out[prefix + k] = (v.shape, v.dtype)
    return out

  theirs_flat = flat(theirs.get_tensor_info())
  mine_flat = flat(mine.get_tensor_info())
  assert theirs_flat and theirs_flat == mine_flat
  # Every feature is documented.
  def docs(feature, path=''):
    for k, v in feature.items() if hasattr(feature, 'items') else []:
      yield f'{path}{k}', v
      inner = getattr(v, 'feature', v)
      if hasattr(inner, 'items'):
        yield from docs(inner, f'{path}{k}/')
  for name, f in docs(mine):
    assert f.doc and f.doc.desc, f'{name} has no doc'


def test_version_differs_from_builtin():
  assert str(ours.Builder.VERSION) != '1.0.0'


def test_tars_config_builds_only_those_tars(tmp_path):
  config = segment_anything_tfds.tars_config('1-2')
  assert config.name == 'tars_1-2' and config.tars == (1, 2)
  builder = tfds.builder('segment_anything', config=config, data_dir=tmp_path)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  assert builder.data_path.parent.name == 'tars_1-2'
  ids = sorted(int(e['image']['image_id']) for e in tfds.as_numpy(
      builder.as_dataset(split='train')))
  inputs = read_inputs(DUMMY_DATA)
  assert ids == sorted(i for i in inputs if 10 < i < 30)


@pytest.mark.parametrize('spec,error', [
    ('1-', 'bad tar list'), ('5-2', 'bad tar range'), ('1000', 'bad tar range'),
    ('a', 'bad tar list')])
def test_tars_config_rejects_bad_specs(spec, error):
  with pytest.raises(ValueError, match=error):
    segment_anything_tfds.tars_config(spec)


def test_missing_tar_is_a_clear_error(tmp_path):
  builder = tfds.builder('segment_anything',
                         config=segment_anything_tfds.tars_config('7'),
                         data_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match='sa_000007.tar'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))


_ORDERS = {
    'ours_first': """
        import segment_anything_tfds
        import tensorflow_datasets as tfds
    """,
    'builtin_imported_first': """
        import tensorflow_datasets as tfds
        from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as builtin
        assert builtin.Builder.VERSION == '1.0.0'
        import segment_anything_tfds
    """,
    'builtin_resolved_first': """
        import tensorflow_datasets as tfds
        assert str(tfds.builder_cls('segment_anything').VERSION) == '1.0.0'
        import segment_anything_tfds
    """,
}


@pytest.mark.parametrize('order', sorted(_ORDERS))
def test_name_resolves_to_this_builder_in_every_import_order(order, tmp_path):
  script = textwrap.dedent(_ORDERS[order]) + textwrap.dedent(f"""
      from segment_anything_tfds import Builder
      assert tfds.builder_cls('segment_anything') is Builder
      b = tfds.builder('segment_anything', config='first_1', data_dir={str(tmp_path)!r})
      assert type(b) is Builder, type(b)
      old = tfds.builder('segment_anything:1.0.0', data_dir={str(tmp_path)!r})
      assert str(old.version) == '1.0.0' and type(old) is not Builder, type(old)
      ds = tfds.load('segment_anything/first_1', split='train', data_dir={str(tmp_path)!r},
                     download_and_prepare_kwargs=dict(download_config=tfds.download.DownloadConfig(
                         manual_dir={str(DUMMY_DATA)!r})))
      print('IMAGES', sum(1 for _ in ds))
  """)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'IMAGES {_count_tar0()}' in out.stdout
  assert (tmp_path / 'segment_anything/first_1/2.0.0/dataset_info.json').exists()


def test_tfds_cli_build_uses_this_builder(tmp_path):
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  out = subprocess.run(
      [tfds_cli, 'build', 'segment_anything', '--imports', 'segment_anything_tfds',
       '--manual_dir', str(DUMMY_DATA), '--data_dir', str(tmp_path),
       '--config', 'first_1'],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  info = json.loads(
      (tmp_path / 'segment_anything/first_1/2.0.0/dataset_info.json').read_text())
  assert int(info['splits'][0]['shardLengths'][0]) == _count_tar0()


def test_lenient_build_records_every_skip_in_metadata(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  config = segment_anything_tfds.lenient_config('all')
  assert config.name == 'all_lenient' and config.lenient
  builder = tfds.builder('segment_anything', config=config,
                         data_dir=tmp_path / 'data')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  ids = sorted(int(e['image']['image_id']) for e in tfds.as_numpy(
      builder.as_dataset(split='train')))
  assert ids == [1, 2, 3, 10]
  audit = json.loads((builder.data_path / 'metadata.json').read_text())['audit']
  # 3 + 6 images: an unpaired member is an image indexed, then skipped.
  assert audit['images_indexed'] == 9
  assert audit['skipped_images'] == 5
  assert audit['images_indexed'] - audit['skipped_images'] == len(ids)
  assert audit['skipped_by_reason'] == {
      'duplicate_id': 1, 'malformed_json': 1, 'missing_jpg': 1,
      'missing_json': 1, 'zero_size': 1}


def test_strict_build_error_names_tar_member_and_problem(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')
  builder = tfds.builder('segment_anything', config='all',
                         data_dir=tmp_path / 'data')
  with pytest.raises(Exception) as e:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  assert 'sa_000001.tar:sa_1' in str(e.value) or 'sa_000001.tar:sa_2' in str(e.value)
  assert not (builder.data_path / 'dataset_info.json').exists()


@pytest.fixture(scope='module')
def builtin_data(tmp_path_factory):
  """A data_dir holding only TFDS's builtin segment_anything 1.0.0, prepared
  by the builtin builder from the dummy tars served on 127.0.0.1."""
  from _loopback_server import LoopbackServer  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.tools import fake_data  # pylint: disable=g-import-not-at-top
  builtin = tfds_seam.builtin_builder()
  tars = {p.name: p.read_bytes() for p in sorted(DUMMY_DATA.glob('*.tar'))}
  manual = tmp_path_factory.mktemp('builtin_manual')
  data = tmp_path_factory.mktemp('builtin_data')
  with LoopbackServer(tars) as srv:
    fake_data.write_links(manual / 'segment_anything_links.txt',
                          [(n, srv.url(n)) for n in tars])
    builtin(data_dir=data).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return data


@pytest.mark.integration
def test_builtin_data_stays_loadable_by_name(builtin_data):
  # The builtin finds the jpgs at the root of each extracted tar only.
  count = sum(sum(1 for n in tarfile_names(p) if '/' not in n.lstrip('./'))
              for p in DUMMY_DATA.glob('*.tar'))
  for name, kwargs in (('segment_anything:1.0.0', {}),
                       ('segment_anything', {})):  # A dir with only 1.0.0.
    builder = tfds.builder(name, data_dir=builtin_data, **kwargs)
    assert str(builder.version) == '1.0.0', name
    assert type(builder) is not ours.Builder
    assert builder.info.splits['train'].num_examples == count
    ds = tfds.load(name, split='train', data_dir=builtin_data)
    assert sum(1 for _ in ds) == count
  # Our version in the same data_dir is ours.
  assert type(tfds.builder('segment_anything', config='first_1',
                           data_dir=builtin_data)) is ours.Builder


def tarfile_names(path):
  import tarfile  # pylint: disable=g-import-not-at-top
  with tarfile.open(path) as t:
    return [m.name for m in t.getmembers() if m.name.endswith('.jpg')]


def test_import_is_light_and_says_what_is_missing():
  script = textwrap.dedent("""
      import sys, time
      t = time.time()
      import segment_anything_tfds
      heavy = [m for m in ('apache_beam', 'mlcroissant', 'tensorflow', 'keras')
               if m in sys.modules]
      print('HEAVY', heavy)
  """)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'HEAVY []' in out.stdout, out.stdout
  # Without TensorFlow, the import says which package to install.
  script = textwrap.dedent("""
      import importlib.util as u
      real = u.find_spec
      u.find_spec = lambda n, *a: None if n == 'tensorflow' else real(n, *a)
      import segment_anything_tfds
  """)
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
  assert out.returncode == 1
  assert 'segment_anything_tfds[tensorflow]' in out.stderr.splitlines()[-1]


def test_slice_builds_merge_with_builder_from_directories(tmp_path):
  """Building in slices, then reading them as one dataset (README)."""
  dirs = []
  for spec in ('0-1', '2-3'):
    builder = tfds.builder(
        'segment_anything', config=segment_anything_tfds.tars_config(spec),
        data_dir=tmp_path, progress=False)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
    dirs.append(builder.data_dir)
  merged = tfds.builder_from_directories(dirs)
  ds = merged.as_dataset(split='train')
  ids = sorted(int(e['image']['image_id']) for e in tfds.as_numpy(ds))
  assert ids == sorted(read_inputs(DUMMY_DATA))
  assert merged.info.splits['train'].num_examples == _IMAGES_ALL
