"""`segment-anything-tfds export`: each format read back by its own reader.

The ground truth is the dummy data itself (`conftest.read_inputs`, read with
the stdlib): every JPEG byte, every RLE string and every SA-1B field must
come back as it is there (the float fields as TFDS stores them, in float32).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap

import numpy as np
import pytest

from conftest import DUMMY_DATA, read_inputs, rewrite_examples
from segment_anything_tfds import cli
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as records_lib
from segment_anything_tfds.tools import export


def as_stored(record):
  """`record` with its float fields rounded to float32, as TFDS stores them.

  TFDS keeps float64 features in a tf.train.Example float list (float32);
  the dummy data's scores are float64 values, SA-1B's float32 ones.
  """
  f32 = lambda v: float(np.float32(v))
  anns = [{**a, 'predicted_iou': f32(a['predicted_iou']),
           'stability_score': f32(a['stability_score']),
           'point_coords': [[f32(v) for v in p] for p in a['point_coords']]}
          for a in record['annotations']]
  return {**record, 'annotations': anns}


INPUTS = {image_id: (jpg, as_stored(js))
          for image_id, (jpg, js) in read_inputs(DUMMY_DATA).items()}
NUM_MASKS = sum(len(js['annotations']) for _, js in INPUTS.values())


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """tars 0-3 of the dummy data built by the CLI (TFRecord)."""
  path = tmp_path_factory.mktemp('data')
  assert cli.main(['build', '--tars', '0-3', '--data_dir', str(path),
                   '--manual_dir', str(DUMMY_DATA), '--no_progress']) == 0
  return path


def export_cli(capsys, data_dir, fmt, out, *extra):
  code, stdout, err = run(capsys, 'export', '--tars', '0-3', '--data_dir',
                          data_dir, '--format', fmt, '--out', out,
                          '--no_progress', *extra)
  assert code == 0, err
  return stdout


def source_examples():
  """Dataset-shaped examples made from the inputs by the builder's code."""
  out = []
  for image_id, (jpg, js) in sorted(INPUTS.items()):
    _, ex = records_lib.make_example(
        jpg, js, stem=f'sa_{image_id}', where=('t', 'm'))
    out.append(ex)
  return out


def test_an_image_without_masks_is_exported_and_drawn(tmp_path):
  """The build accepts an image with no annotation: every format exports it
  and `show` draws it (the finiteness check once failed on its empty
  columns with numpy's reshape error)."""
  from segment_anything_tfds.tools import viz  # pylint: disable=g-import-not-at-top
  image_id, (jpg, js) = sorted(INPUTS.items())[0]
  _, ex = records_lib.make_example(jpg, {**js, 'annotations': []},
                                   stem=f'sa_{image_id}', where=('t', 'm'))
  for fmt in export.FORMATS:
    manifest = export.export([ex], fmt, tmp_path / fmt)
    assert (manifest['images'], manifest['masks']) == (1, 0), fmt
  picture = viz.render(ex, boxes=True, points=True)
  assert picture.size == (int(js['image']['width']),
                          int(js['image']['height']))


def assert_no_partial_files(out):
  partial = [p for p in pathlib.Path(out).rglob('*')
             if p.name.endswith(export.PARTIAL_SUFFIX)]
  assert not partial


# ------------------------------------------------------------- SA-1B fields


def test_sa1b_record_is_the_source_json(data_dir):
  import tensorflow_datasets as tfds
  from segment_anything_tfds.cli import common
  builder = tfds.builder_from_directory(
      data_dir / 'segment_anything' / 'tars_0-3' / '2.0.0')
  seen = set()
  for ex in tfds.as_numpy(common.as_dataset(builder, 'train')):
    record = export.sa1b_record(ex)
    image_id = record['image']['image_id']
    _, source = INPUTS[image_id]
    assert record == source
    # The same field order as SA-1B's file, too.
    assert list(record['image']) == list(source['image'])
    for got, want in zip(record['annotations'], source['annotations']):
      assert list(got) == list(want)
      assert type(got['bbox'][0]) is int  # Whole pixels, as in SA-1B.
    seen.add(image_id)
  assert seen == set(INPUTS)


def test_pixel_box_recovers_whole_pixels_through_float32():
  # Every coordinate v of a side of W pixels, normalized as the builder
  # does (float64, then float32 in the TFRecord), comes back exactly.
  for side in (*range(1, 200), 1499, 1500, 2250, 3000, 4096, 8191, 16384):
    v = np.arange(side + 1, dtype=np.float64)
    stored = (v / side).astype(np.float32)
    got = [export.pixel_box([0, f, 0, f], height=1, width=side)[0]
           for f in stored[::max(1, side // 500)]]
    assert got == [int(x) for x in v[::max(1, side // 500)]]
  box = records_lib.normalize_box([3, 1499, 2246, 0], height=1500,
                                   width=2250, where=None, what='bbox')
  assert export.pixel_box(np.float32(box), height=1500, width=2250) == [
      3, 1499, 2246, 0]
  # Not whole pixels: the nearest value, not rounded to an integer.
  x, y, w, h = export.pixel_box([0.0, 0.25, 0.5, 0.5], height=2, width=2)
  assert (x, y, w, h) == (0.5, 0, 0.5, 1)


# ---------------------------------------------------------- semantic_sam_tsv


def read_tsv_rows(out):
  """Rows by Semantic-SAM's index: seek to each .lineidx offset, readline."""
  rows = []
  for index in sorted(pathlib.Path(out).glob('*.lineidx')):
    tsv = index.with_suffix('.tsv')
    offsets = [int(line.split()[0]) for line in
               index.read_text().splitlines()]
    assert offsets == sorted(offsets) and offsets[0] == 0
    with open(tsv, 'rb') as f:
      for offset in offsets:
        f.seek(offset)
        rows.append([s.strip() for s in f.readline().split(b'\t')])
      assert f.tell() == os.path.getsize(tsv)  # The last row ends the file.
  return rows


def test_semantic_sam_tsv_round_trip(data_dir, tmp_path, capsys):
  out = tmp_path / 'tsv'
  stdout = export_cli(capsys, data_dir, 'semantic_sam_tsv', out)
  assert sorted(p.name for p in out.iterdir()) == [
      'export.json', 'sa1b-000000.lineidx', 'sa1b-000000.tsv']
  rows = read_tsv_rows(out)
  assert len(rows) == len(INPUTS)
  for row in rows:
    assert len(row) == 3
    record = json.loads(row[1])  # Semantic-SAM: json is row[1],
    jpg = base64.b64decode(row[-1])  # the image row[-1].
    source_jpg, source_json = INPUTS[record['image']['image_id']]
    assert jpg == source_jpg
    assert record == source_json
    assert row[0].decode() == source_json['image']['file_name']
  manifest = json.loads((out / 'export.json').read_text())
  assert (manifest['images'], manifest['masks']) == (len(INPUTS), NUM_MASKS)
  assert 'wrote:    1 shards sa1b-000000.tsv' in stdout
  assert_no_partial_files(out)


def test_semantic_sam_tsv_shards(data_dir, tmp_path, capsys):
  out = tmp_path / 'tsv'
  limit = 8000
  stdout = export_cli(capsys, data_dir, 'semantic_sam_tsv', out,
                      '--shard_size_mb', limit / 2**20)
  shards = sorted(out.glob('*.tsv'))
  assert len(shards) > 2
  for shard in shards:
    # Semantic-SAM's mapper parses the shard number from the name.
    assert int(shard.name.split('.')[0].split('-')[-1]) == shards.index(shard)
    if len(shard.with_suffix('.lineidx').read_text().split()) > 1:
      assert shard.stat().st_size <= limit
  rows = read_tsv_rows(out)
  assert sorted(json.loads(r[1])['image']['image_id'] for r in rows) == (
      sorted(INPUTS))
  assert f'{len(shards)} shards sa1b-{{000000..' in stdout


# -------------------------------------------------------------------- coco


def test_coco_round_trip(data_dir, tmp_path, capsys):
  from pycocotools import coco as coco_lib
  from pycocotools import mask as mask_utils
  out = tmp_path / 'coco'
  export_cli(capsys, data_dir, 'coco', out)
  api = coco_lib.COCO(str(out / 'annotations.json'))
  capsys.readouterr()
  assert api.getCatIds() == [1]
  assert api.loadCats([1]) == [export.COCO_CATEGORY]
  assert sorted(api.getImgIds()) == sorted(INPUTS)
  assert len(api.getAnnIds()) == NUM_MASKS
  for image_id, (jpg, source) in INPUTS.items():
    [image] = api.loadImgs([image_id])
    assert image == {'id': image_id,
                     'file_name': source['image']['file_name'],
                     'height': source['image']['height'],
                     'width': source['image']['width']}
    assert (out / 'images' / image['file_name']).read_bytes() == jpg
    anns = api.loadAnns(api.getAnnIds(imgIds=[image_id]))
    assert [a['id'] for a in anns] == [a['id'] for a in
                                       source['annotations']]
    for ann, want in zip(anns, source['annotations']):
      rle = api.annToRLE(ann)
      assert rle['counts'] == want['segmentation']['counts']
      assert list(rle['size']) == want['segmentation']['size']
      assert ann['bbox'] == want['bbox']  # SA-1B's own (inclusive) box.
      assert [int(v) for v in mask_utils.toBbox(rle)][2:] == [
          want['bbox'][2] + 1, want['bbox'][3] + 1]
      assert ann['area'] == want['area'] == int(api.annToMask(ann).sum())
      assert (ann['iscrowd'], ann['category_id']) == (0, 1)
      for key in ('predicted_iou', 'stability_score', 'point_coords',
                  'crop_box'):
        assert ann[key] == want[key], key
  assert sorted(p.name for p in (out / 'images').iterdir()) == sorted(
      f'sa_{i}.jpg' for i in INPUTS)
  assert_no_partial_files(out)


def test_coco_of_a_slice(data_dir, tmp_path, capsys):
  out = tmp_path / 'coco'
  stdout = export_cli(capsys, data_dir, 'coco', out, '--split', 'train[:4]')
  with open(out / 'annotations.json') as f:
    doc = json.load(f)
  ids = [im['id'] for im in doc['images']]
  assert len(ids) == 4
  assert len(doc['annotations']) == sum(len(INPUTS[i][1]['annotations'])
                                        for i in ids)
  assert doc['info']['split'] == 'train[:4]'
  assert 'images:   4' in stdout
  # The first 4 of the split, in its order.
  import tensorflow_datasets as tfds
  ds = tfds.load('segment_anything/tars_0-3', split='train[:4]',
                 data_dir=data_dir, shuffle_files=False)
  assert ids == [int(ex['image']['image_id']) for ex in tfds.as_numpy(ds)]


# -------------------------------------------------------------- webdataset


def read_webdataset(out):
  import webdataset as wds
  urls = [str(p) for p in sorted(pathlib.Path(out).glob('sa1b-*.tar'))]
  return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_webdataset_round_trip(data_dir, tmp_path, capsys):
  out = tmp_path / 'wds'
  limit = 24 * 1024
  export_cli(capsys, data_dir, 'webdataset', out, '--shard_size_mb',
             limit / 2**20)
  shards = sorted(out.glob('sa1b-*.tar'))
  assert len(shards) > 1
  samples = read_webdataset(out)
  assert len(samples) == len(INPUTS)
  for sample in samples:
    image_id = int(sample['__key__'][len('sa_'):])
    jpg, source = INPUTS[image_id]
    assert sample['jpg'] == jpg
    assert json.loads(sample['json']) == source
  for shard in shards:
    with tarfile.open(shard) as t:
      names = t.getnames()
    # sa_<id>.jpg then sa_<id>.json, adjacent.
    assert [n.rsplit('.', 1)[1] for n in names] == ['jpg', 'json'] * (
        len(names) // 2)
    assert all(a.split('.')[0] == b.split('.')[0]
               for a, b in zip(names[::2], names[1::2]))
    if len(names) > 2:
      assert shard.stat().st_size <= limit
  manifest = json.loads((out / 'export.json').read_text())
  assert manifest['files'] == [s.name for s in shards]
  assert manifest['bytes'] == sum(s.stat().st_size for s in shards)


def test_webdataset_from_array_record(tmp_path, capsys):
  data = tmp_path / 'data'
  assert cli.main(['build', '--tars', '1-2', '--data_dir', str(data),
                   '--manual_dir', str(DUMMY_DATA), '--file_format',
                   'array_record', '--no_progress']) == 0
  out = tmp_path / 'wds'
  code, _, err = run(capsys, 'export', '--tars', '1-2', '--data_dir', data,
                     '--format', 'webdataset', '--out', out, '--no_progress')
  assert code == 0, err
  samples = read_webdataset(out)
  assert sorted(int(s['__key__'][3:]) for s in samples) == [
      11, 12, 13, 21, 22, 23]
  for s in samples:
    assert s['jpg'] == INPUTS[int(s['__key__'][3:])][0]


# --------------------------------------------------------------- atomicity


def test_library_export_matches_and_writes_the_manifest_last(tmp_path):
  out = tmp_path / 'wds'
  manifest = export.export(source_examples(), 'webdataset', out,
                           shard_size=20000, info={'split': 'x'})
  assert manifest['images'] == len(INPUTS)
  assert manifest['masks'] == NUM_MASKS
  assert manifest['split'] == 'x'
  files = sorted(out.iterdir(), key=lambda p: p.stat().st_mtime_ns)
  assert files[-1].name == 'export.json'
  assert {json.loads(s['json'])['image']['image_id']
          for s in read_webdataset(out)} == set(INPUTS)


class _Stop(Exception):
  pass


def _failing_after(n):
  for i, ex in enumerate(source_examples()):
    if i == n:
      raise _Stop
    yield ex


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_a_failed_export_leaves_no_partial_or_final_looking_file(
    fmt, tmp_path):
  out = tmp_path / fmt
  with pytest.raises(_Stop):
    export.export(_failing_after(7), fmt, out, shard_size=9000)
  names = sorted(str(p.relative_to(out)) for p in out.rglob('*'))
  assert 'export.json' not in names
  assert 'annotations.json' not in names
  assert_no_partial_files(out)
  if fmt == 'webdataset':  # Shards under final names are whole shards.
    done = read_webdataset(out)
    assert 0 < len(done) < 7
  if fmt == 'semantic_sam_tsv':
    assert 0 < len(read_tsv_rows(out)) < 7


_KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    sys.path[:0] = [{tests!r}]
    import test_export
    from segment_anything_tfds.tools import export
    def examples():
      for i, ex in enumerate(test_export.source_examples()):
        if i == 7:
          os.kill(os.getpid(), signal.SIGKILL)
        yield ex
    export.export(examples(), sys.argv[1], sys.argv[2], shard_size=9000)
''')


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_a_killed_export_leaves_only_partial_files(fmt, tmp_path, capsys):
  out = tmp_path / fmt
  res = subprocess.run(
      [sys.executable, '-c',
       _KILL_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)),
       fmt, str(out)], capture_output=True, check=False,
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
  assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
  names = [str(p.relative_to(out)) for p in out.rglob('*') if p.is_file()]
  # Its lock file too, no longer locked: the next export takes it.
  names.remove(export.LOCK_FILE)
  partial = [n for n in names if n.endswith(export.PARTIAL_SUFFIX)]
  final = [n for n in names if n not in partial]
  assert partial  # The file being written when it was killed.
  assert 'export.json' not in final and 'annotations.json' not in final
  if fmt == 'coco':
    # Each JPEG under its final name is whole.
    for n in final:
      image_id = int(n.split('_')[1].split('.')[0])
      assert (out / n).read_bytes() == INPUTS[image_id][0]
  elif fmt == 'webdataset':
    assert len(read_webdataset(out)) < 7
  else:
    assert len(read_tsv_rows(out)) < 7
  # Exporting again needs --overwrite when whole files are there, and
  # removes what the killed run left.
  if final:
    with pytest.raises(errors.ConfigError, match='already holds an export'):
      export.export(source_examples(), fmt, out)
  export.export(source_examples(), fmt, out, overwrite=True)
  assert_no_partial_files(out)
  assert json.loads((out / 'export.json').read_text())['images'] == len(
      INPUTS)


def test_existing_export_is_refused_then_overwritten(data_dir, tmp_path,
                                                     capsys):
  out = tmp_path / 'coco'
  export_cli(capsys, data_dir, 'coco', out)
  (out / 'notes.txt').write_text('mine')
  code, _, err = run(capsys, 'export', '--tars', '0-3', '--data_dir',
                     data_dir, '--format', 'webdataset', '--out', out,
                     '--no_progress')
  assert code == 1
  [line] = err.strip().splitlines()
  assert line.startswith('segment-anything-tfds export: error: ')
  assert 'already holds an export' in line and '--overwrite' in line
  export_cli(capsys, data_dir, 'webdataset', out, '--overwrite')
  # The COCO files are gone, files no format writes stay.
  assert sorted(p.name for p in out.iterdir()) == [
      'export.json', 'images', 'notes.txt', 'sa1b-000000.tar']
  assert not list((out / 'images').iterdir())


# ------------------------------------------------------------ hostile input


def _tree(root) -> dict[str, bytes | str]:
  """Every file (bytes) and symlink (target) under `root`."""
  out = {}
  for p in sorted(pathlib.Path(root).rglob('*')):
    if p.is_symlink():
      out[str(p)] = os.readlink(p)
    elif p.is_file():
      out[str(p)] = p.read_bytes()
  return out


def _with_image(example, **fields):
  return {**example, 'image': {**example['image'], **fields}}


@pytest.fixture
def victim(tmp_path):
  """A file outside the output dir that an export must leave as it is."""
  path = tmp_path / 'victim' / 'x.jpg'
  path.parent.mkdir()
  path.write_bytes(b'precious')
  return path


_HOSTILE_NAMES = [
    b'../../victim/x.jpg', '../victim/x.jpg', b'images/sa_%d.jpg',
    b'sa_%d.jpg/', b'./sa_%d.jpg', b'sa_0%d.jpg', b'sa_%d.JPG', b'sa_%d.png',
    b'SA_%d.jpg', b'sa_%d.jpg\x00', b'sa_%d.jpg ', b'', b'sa_1234.jpg',
    b'\xff\xfe\x00.jpg', b'sa_\xd9\xa1.jpg', 'sa_\udcff.jpg', 'sä_%d.jpg',
    b'\x1b[2J\x1b]0;owned\x07.jpg', 'sa_%d\u202egpj.jpg', b'x' * 5000,
]


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
@pytest.mark.parametrize('name', _HOSTILE_NAMES + ['VICTIM'])
def test_file_names_not_made_from_the_image_id_are_refused(
    fmt, name, tmp_path, victim):
  first, second = source_examples()[:2]
  image_id = int(second['image']['image_id'])
  if name == 'VICTIM':  # An absolute path.
    name = str(victim).encode()
  elif b'%d' in (name if isinstance(name, bytes) else b''):
    name = name.replace(b'%d', str(image_id).encode())
  elif isinstance(name, str) and '%d' in name:
    name = name.replace('%d', str(image_id))
  before = _tree(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(errors.BadRecordError) as raised:
    export.export([first, _with_image(second, file_name=name)], fmt, out,
                  shard_size=100)
  message = raised.value.message
  assert message.startswith(
      f'example 1, image_id {image_id}: image/file_name ')
  assert message.endswith(f' is not sa_{image_id}.jpg; export names every'
                          ' image sa_<image_id>.jpg and refuses other names')
  assert message.isprintable() and len(message) < 300
  # Nothing outside the output dir changed; inside, no partial file.
  after = _tree(tmp_path)
  assert {k: v for k, v in after.items() if not k.startswith(f'{out}/')
          } == before
  assert victim.read_bytes() == b'precious'
  assert_no_partial_files(out)
  assert 'export.json' not in os.listdir(out)


def test_exported_names_come_from_the_image_id(tmp_path):
  # bytes (TFDS) or str file names, numpy or int ids.
  examples = source_examples()
  examples[1] = _with_image(
      examples[1], file_name=examples[1]['image']['file_name'].encode(),
      image_id=np.int64(examples[1]['image']['image_id']))
  names = sorted(f'sa_{i}' for i in INPUTS)
  out = tmp_path / 'coco'
  export.export(examples, 'coco', out)
  assert sorted(p.stem for p in (out / 'images').iterdir()) == names
  coco = json.loads((out / 'annotations.json').read_text())
  assert sorted(i['file_name'] for i in coco['images']) == [
      f'{n}.jpg' for n in names]
  export.export(examples, 'webdataset', tmp_path / 'wds')
  assert sorted(s['__key__'] for s in read_webdataset(tmp_path / 'wds')) == (
      names)
  export.export(examples, 'semantic_sam_tsv', tmp_path / 'tsv')
  assert sorted(r[0].decode()[:-4] for r in read_tsv_rows(tmp_path / 'tsv')
                ) == names


@pytest.mark.parametrize('image_id', [-1, 1.5, True, 'sa_1', np.array([1, 2])])
def test_bad_image_ids_are_refused(image_id, tmp_path):
  example = _with_image(source_examples()[0], image_id=image_id,
                        file_name=b'sa_1.jpg')
  with pytest.raises(errors.BadRecordError,
                     match=r'^example 0, image/image_id .* is not an integer'
                     ' >= 0$'):
    export.export([example], 'webdataset', tmp_path / 'o')


def test_non_ascii_counts_are_refused_not_a_traceback(tmp_path):
  example = source_examples()[0]
  ann = example['annotations']
  counts = list(ann['segmentation']['counts'])
  counts[1] = b'\xff\x1b['
  example = {**example, 'annotations': {
      **ann, 'segmentation': {**ann['segmentation'], 'counts': counts}}}
  image_id = int(example['image']['image_id'])
  with pytest.raises(errors.BadRecordError, match=re.escape(
      f'example 0, image_id {image_id}: annotations[1].segmentation.counts'
      " '\\xff\\x1b[' is not ASCII")):
    export.export([example], 'coco', tmp_path / 'o')


def test_json_never_holds_nan_or_infinity():
  """JSON has no NaN nor Infinity (Python writes them, strict readers
  refuse them): a record holding one is refused naming the image and
  where."""
  record = {'image': {'image_id': 5}, 'annotations': [
      {'predicted_iou': 0.5, 'point_coords': [[1.0, 2.0]]},
      {'predicted_iou': 0.5, 'point_coords': [[1.0, float('-inf')]]}]}
  with pytest.raises(errors.BadRecordError) as e:
    export._json_bytes(record, image_id=5)
  assert str(e.value) == (
      'image_id 5: annotations[1].point_coords[0][1] -inf is not finite'
      ' (NaN or infinity), which JSON cannot hold')
  with pytest.raises(errors.BadRecordError, match=r'^\[2\] nan is not'):
    export._json_bytes([0.0, 1.0, float('nan')])
  assert export._json_bytes([0.25, {'a': 1}]) == b'[0.25,{"a":1}]'


def test_a_symlinked_images_dir_is_not_written_through(tmp_path, victim):
  out = tmp_path / 'coco'
  out.mkdir()
  (out / 'images').symlink_to(victim.parent)
  before = _tree(victim.parent)
  with pytest.raises(errors.SourceError, match=(
      f'refusing to write {out}/images: it resolves to {victim.parent},'
      f' outside the output dir {out}')):
    export.export(source_examples(), 'coco', out)
  assert _tree(victim.parent) == before


def test_overwriting_a_large_export_holds_a_descriptor_per_dir(tmp_path):
  """An export of many images is replaced under a low open-file limit: one
  descriptor per directory walked, not one per file."""
  out = tmp_path / 'coco'
  (out / 'images').mkdir(parents=True)
  for i in range(400):
    (out / 'images' / f'sa_{i}.jpg').write_bytes(b'x')
  (out / 'annotations.json').write_text('{}')
  code = ('import resource, sys\n'
          'resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n'
          'from segment_anything_tfds.tools import export\n'
          'export.prepare_out_dir(sys.argv[1], overwrite=True)\n')
  done = subprocess.run([sys.executable, '-c', code, str(out)],
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert sorted(p.name for p in out.rglob('*')) == ['images']


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_dirs_swapped_for_symlinks_mid_export_redirect_nothing(
    fmt, tmp_path, victim):
  """The output dir (and COCO's images/) is moved away after the first
  image and a symlink to another dir put in its place: the export goes on
  in the dir it opened, and writes nothing through the symlinks."""
  out = tmp_path / fmt
  moved = tmp_path / f'{fmt}-moved'
  examples = source_examples()
  before = _tree(victim.parent)

  def swapped():
    yield examples[0]
    if fmt == 'coco':
      (out / 'images').rename(out / 'images-moved')
      (out / 'images').symlink_to(victim.parent)
    out.rename(moved)
    out.symlink_to(victim.parent)
    yield from examples[1:]

  manifest = export.export(swapped(), fmt, out, shard_size=1)
  assert _tree(victim.parent) == before
  assert manifest['images'] == len(examples)
  images_dir = moved / 'images-moved' if fmt == 'coco' else None
  written = {str(p.relative_to(moved)) for p in moved.rglob('*')
             if p.is_file() and not p.is_symlink()}
  assert 'export.json' in written
  for name in manifest['files']:
    assert name in written, name
  if images_dir is not None:
    assert len(list(images_dir.glob('sa_*.jpg'))) == len(examples)
  else:
    assert len(manifest['files']) > 1  # One shard per image (shard_size=1).


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_planted_partial_files_are_never_written_through(fmt, tmp_path,
                                                         victim):
  first = {'coco': 'images/.sa_{}.jpg.partial',
           'webdataset': '.sa1b-000000.tar.partial',
           'semantic_sam_tsv': '.sa1b-000000.tsv.partial'}[fmt].format(
               int(source_examples()[0]['image']['image_id']))
  out = tmp_path / fmt
  (out / 'images').mkdir(parents=True)
  link = out / first
  link.symlink_to(victim)
  # Before the export: refused, and left as it is.
  with pytest.raises(errors.SourceError, match=re.escape(
      f'{link} is a symlink, not a partial file left by an export of yours')):
    export.export(source_examples(), fmt, out)
  assert link.is_symlink() and victim.read_bytes() == b'precious'
  # Planted once the export started: not opened, the export stops.
  link.unlink()
  export.prepare_out_dir(out)
  writer = export.make_writer(fmt, out)
  link.symlink_to(victim)
  with pytest.raises(errors.SourceError, match=re.escape(
      f'{link} exists: another export is writing into this dir, or something'
      ' was put there; it is not written through')):
    with writer:
      writer.add(source_examples()[0])
  assert link.is_symlink() and victim.read_bytes() == b'precious'


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to chown')
def test_another_users_partial_file_is_left_alone(tmp_path):
  out = tmp_path / 'wds'
  out.mkdir()
  partial = out / '.sa1b-000000.tar.partial'
  partial.write_bytes(b'theirs')
  os.chown(partial, 65534, -1)
  with pytest.raises(errors.SourceError, match='owned by another user'):
    export.export(source_examples(), 'webdataset', out)
  assert partial.read_bytes() == b'theirs'


def _rewrite_file_names(dataset_dir, names: dict[int, bytes]) -> None:
  """Sets `image/file_name` of the images `names` lists, in the TFRecords."""
  def edit(image_id, feature):
    if image_id in names:
      feature['image/file_name'].bytes_list.value[:] = [names[image_id]]
  rewrite_examples(dataset_dir, edit)


@pytest.fixture(scope='module')
def hostile_data_dir(tmp_path_factory):
  """tar 1 of the dummy data, built, then images 12 and 13 renamed."""
  root = tmp_path_factory.mktemp('hostile')
  assert cli.main(['build', '--tars', '1', '--data_dir', str(root / 'data'),
                   '--manual_dir', str(DUMMY_DATA), '--no_progress']) == 0
  victim = root / 'victim' / 'x.jpg'
  victim.parent.mkdir()
  _rewrite_file_names(root / 'data' / 'segment_anything' / 'tars_1' / '2.0.0',
                      {12: str(victim).encode(), 13: b'../../victim/x.jpg'})
  return root


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_export_of_a_hostile_dataset_stops_in_one_line(fmt, hostile_data_dir,
                                                        capsys):
  root = hostile_data_dir
  victim = root / 'victim' / 'x.jpg'
  victim.write_bytes(b'precious')
  out = root / f'out-{fmt}'
  before = _tree(root)
  code, stdout, err = run(capsys, 'export', '--tars', '1', '--data_dir',
                          root / 'data', '--format', fmt, '--out', out,
                          '--no_progress')
  assert code == 1 and not stdout
  [line] = err.strip().splitlines()
  assert re.fullmatch(
      r"segment-anything-tfds export: error: example \d, image_id 1[23]:"
      r" image/file_name '(/|\.\./\.\./)\S*victim/x.jpg' is not"
      r' sa_1[23].jpg; export names every image sa_<image_id>.jpg and'
      r' refuses other names', line), line
  assert victim.read_bytes() == b'precious'
  after = _tree(root)
  assert {k: v for k, v in after.items() if not k.startswith(f'{out}/')
          } == before
  assert_no_partial_files(out)
  for member in (_tar_names(out) if fmt == 'webdataset' else []):
    assert re.fullmatch(r'sa_\d+\.(jpg|json)', member)


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_a_nan_box_in_a_prepared_dataset_stops_the_export_in_one_line(
    fmt, nonfinite_data_dir, tmp_path, capsys):
  """A box that is NaN (a dataset built by older code, or edited) has no
  pixels: one line naming the example, the image and the annotation (it
  was a ValueError traceback from `_pixel`)."""
  out = tmp_path / 'out'
  code, stdout, err = run(capsys, 'export', '--tars', '1', '--data_dir',
                          nonfinite_data_dir, '--format', fmt, '--out', out,
                          '--no_progress')
  assert (code, stdout) == (1, '')
  assert err == (
      'segment-anything-tfds export: error: example 1, image_id 12:'
      ' annotations[1].bbox [nan, nan, nan, nan] is not finite (NaN or'
      ' infinity)\n')
  assert_no_partial_files(out)


@pytest.mark.parametrize('field,values,shown', [
    ('bbox', [0.1, 0.1, np.inf, 0.5], '[0.1, 0.1, inf, 0.5]'),
    ('crop_box', [np.nan, 0, 1, 1], '[nan, 0.0, 1.0, 1.0]'),
    ('point_coords', [[1.5, -np.inf]], '[1.5, -inf]'),
    ('predicted_iou', np.inf, '[inf]'),
    ('stability_score', np.nan, '[nan]'),
])
def test_nan_or_infinity_in_any_float_field_is_refused(field, values, shown,
                                                        tmp_path):
  examples = source_examples()
  ann = examples[1]['annotations']
  ann[field] = np.array(ann[field], np.float64)
  ann[field][2] = values
  image_id = int(examples[1]['image']['image_id'])
  for fmt in sorted(export.FORMATS):
    with pytest.raises(errors.BadRecordError) as e:
      export.export(examples, fmt, tmp_path / fmt)
    assert str(e.value) == (f'example 1, image_id {image_id}: annotations[2].'
                            f'{field} {shown} is not finite (NaN or infinity)')
  with pytest.raises(errors.BadRecordError, match=re.escape(
      'box [nan, 0.0, 1.0, 1.0] is not finite (NaN or infinity): it has no'
      ' pixels')):
    export.pixel_box([np.nan, 0, 1, 1], height=20, width=30)


def _tar_names(out):
  names = []
  for path in sorted(pathlib.Path(out).glob('*.tar')):
    with tarfile.open(path) as t:
      names += t.getnames()
  return names


@pytest.mark.parametrize('argv', [
    ['--format', 'yaml'],
    ['--format', 'coco', '--shard_size_mb', '0'],
    ['--format', 'coco', '--shard_size_mb', 'nan'],
    ['--format', 'coco', '--shard_size_mb', 'big'],
    ['--shard_size_mb', '1'],  # No --format.
])
def test_export_usage_errors_exit_2(argv, tmp_path, capsys):
  code, _, err = run(capsys, 'export', '--tars', '0-3', '--out', tmp_path,
                     *argv)
  assert code == 2, err
  assert 'usage:' in err
  assert not list(tmp_path.iterdir())


def test_export_not_prepared_and_bad_split_exit_1(data_dir, tmp_path,
                                                  capsys):
  code, _, err = run(capsys, 'export', '--config', 'first_1', '--data_dir',
                     tmp_path / 'none', '--format', 'coco', '--out',
                     tmp_path / 'o')
  assert code == 1
  assert 'is not prepared in' in err and 'Traceback' not in err
  code, _, err = run(capsys, 'export', '--tars', '0-3', '--data_dir',
                     data_dir, '--format', 'coco', '--split', 'test',
                     '--out', tmp_path / 'o2', '--no_progress')
  assert code == 1
  assert "bad split 'test'" in err and 'Traceback' not in err


def _open_fds() -> int:
  return len(os.listdir('/proc/self/fd'))


def test_writers_that_fail_or_close_without_with_keep_no_descriptor(
    tmp_path, victim):
  out = tmp_path / 'o'
  out.mkdir()
  before = _open_fds()
  for _ in range(20):
    with pytest.raises(errors.ConfigError, match='at least 1 byte'):
      export.make_writer('webdataset', out, shard_size=0)
    writer = export.make_writer('semantic_sam_tsv', out)
    writer.add(source_examples()[0])
    writer.close()  # No `with`.
    export.prepare_out_dir(out, overwrite=True)
  (out / 'images').symlink_to(victim.parent)
  for _ in range(20):
    with pytest.raises(errors.SourceError, match='outside the output dir'):
      export.make_writer('coco', out)
  assert _open_fds() == before
  assert not list(out.glob('.*.partial'))


@pytest.mark.parametrize('fmt', ['webdataset', 'semantic_sam_tsv'])
def test_a_failed_commit_leaves_no_partial_file(fmt, tmp_path):
  """The final name is taken by a directory (planted after the checks):
  the commit fails and the shard's partial file goes with it."""
  out = tmp_path / fmt
  out.mkdir()
  writer = export.make_writer(fmt, out)
  writer.add(source_examples()[0])
  (out / f'sa1b-000000.{"tar" if fmt == "webdataset" else "tsv"}').mkdir()
  with pytest.raises(OSError):
    writer.close()
  assert not list(out.glob('.*.partial'))


def test_out_dir_checks_happen_before_the_export(tmp_path, capsys):
  out = tmp_path / 'o'
  (out / 'sa1b-000000.tar').mkdir(parents=True)
  with pytest.raises(errors.ConfigError, match=re.escape(
      f"{out}/sa1b-000000.tar is not a file but has the name of an export's"
      ' file')):
    export.export(source_examples(), 'webdataset', out, overwrite=True)
  assert not list(out.glob('.*'))
  # A FIFO named like an output: refused, never opened (it would block).
  fifo_out = tmp_path / 'f'
  fifo_out.mkdir()
  os.mkfifo(fifo_out / 'export.json')
  with pytest.raises(errors.ConfigError, match=re.escape(
      f"{fifo_out}/export.json is not a file but has the name of an export's"
      ' file')):
    export.export(source_examples(), 'semantic_sam_tsv', fifo_out)
  # Files in folders no format writes are never looked at nor touched.
  deep = tmp_path / 'p' / 'mine' / 'deep'
  deep.mkdir(parents=True)
  (deep / '.model.bin.partial').write_bytes(b'mine')
  (deep / '.cfg.partial').symlink_to('/nonexistent')
  (deep.parent / 'export.json').write_text('mine')
  export.export(source_examples(), 'coco', tmp_path / 'p')
  export.export(source_examples(), 'coco', tmp_path / 'p', overwrite=True)
  assert (deep / '.model.bin.partial').read_bytes() == b'mine'
  assert (deep / '.cfg.partial').is_symlink()
  assert (deep.parent / 'export.json').read_text() == 'mine'
  # `images` that is a file: said so, not "outside the output dir".
  (tmp_path / 'q').mkdir()
  (tmp_path / 'q' / 'images').write_text('x')
  with pytest.raises(errors.SourceError, match=re.escape(
      f'refusing to write {tmp_path}/q/images: it is not a directory')):
    export.export(source_examples(), 'coco', tmp_path / 'q')


def test_an_image_id_twice_stops_a_coco_export(tmp_path):
  examples = source_examples()
  with pytest.raises(errors.BadRecordError, match=re.escape(
      f'example {len(examples)}, image_id'
      f' {int(examples[0]["image"]["image_id"])}: exported already')):
    export.export(examples + examples[:1], 'coco', tmp_path / 'o')


def test_an_annotation_id_in_two_images_stops_a_coco_export(tmp_path):
  """pycocotools indexes annotations by id and keeps one of each: an id in
  two images stops the COCO export before annotations.json is written;
  the other formats, one record per image, are not concerned."""
  examples = source_examples()
  ids = [ex['annotations']['id'] for ex in examples]
  ids[3][1] = ids[1][0]
  image_ids = [int(ex['image']['image_id']) for ex in examples]
  out = tmp_path / 'coco'
  with pytest.raises(errors.BadRecordError) as e:
    export.export(examples, 'coco', out)
  assert str(e.value) == (
      f'annotation id {int(ids[1][0])} is in example 1 (image_id'
      f' {image_ids[1]}) and example 3 (image_id {image_ids[3]}): COCO needs'
      ' annotation ids unique in the file (pycocotools would keep one);'
      ' annotations.json is not written')
  assert not (out / 'annotations.json').exists()
  assert not (out / 'export.json').exists()
  assert_no_partial_files(out)
  for fmt in ('semantic_sam_tsv', 'webdataset'):
    assert export.export(examples, fmt, tmp_path / fmt)['images'] == len(
        examples)


@pytest.mark.parametrize('buffer', [64, 1 << 20])
def test_annotation_ids_log_finds_the_smallest_repeat(monkeypatch, buffer):
  # A buffer of 64 ids: spilled to the bucket files about 100 times, one
  # image's ids (200) across several spills; memory stays at the buffer.
  monkeypatch.setattr(export.AnnotationIds, 'BUFFER', buffer)
  opened = []

  def opener():
    opened.append(tempfile.TemporaryFile())
    return opened[-1]

  log = export.AnnotationIds(opener)
  log.check()  # Nothing logged: nothing repeated.
  for image_id in range(3000):
    log.add(image_id, [10 * image_id, 10 * image_id + 1])
  log.add(3000, range(10**6, 10**6 + 200))
  log.check()
  assert 1 < len(opened) <= export.AnnotationIds.BUCKETS
  log.add(7, [2**64 - 1, 20001, 5])
  log.add(8, [])
  log.add(9, [2**64 - 1, 5, 10**6 + 199])
  with pytest.raises(errors.BadRecordError, match=re.escape(
      'annotation id 5 is in example 3001 (image_id 7) and example 3003'
      ' (image_id 9)')):
    log.check()
  assert log._rows.shape == (buffer, 3)  # pylint: disable=protected-access
  log.close()
  assert all(f.closed for f in opened)


def test_export_out_under_a_file_is_one_line(data_dir, tmp_path, capsys):
  (tmp_path / 'file').write_text('x')
  code, _, err = run(capsys, 'export', '--tars', '0-3', '--data_dir',
                     data_dir, '--format', 'coco', '--out',
                     tmp_path / 'file' / 'o', '--no_progress')
  assert code == 1, err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err


def _export_under_size_limit(data_dir, fmt, out, limit):
  """The CLI's export in a process that cannot write past `limit` bytes in
  a file (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk)."""
  import resource  # pylint: disable=g-import-not-at-top
  def limited():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', 'export', '--tars',
       '0-3', '--data_dir', str(data_dir), '--format', fmt, '--out',
       str(out), '--no_progress'], capture_output=True, text=True,
      check=False, timeout=300, preexec_fn=limited,
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})


@pytest.mark.parametrize('fmt', sorted(export.FORMATS))
def test_a_write_that_fails_removes_every_partial_file(fmt, data_dir,
                                                       tmp_path):
  """A write fails (the file would pass 8 kB): closing the partial file
  flushes its buffer and fails again, and it is removed all the same, and
  so is every other partial file of the writer (a TSV's and its index)."""
  out = tmp_path / fmt
  res = _export_under_size_limit(data_dir, fmt, out, 8192)
  assert res.returncode == 1, res.stderr[-2000:]
  assert res.stderr.startswith('segment-anything-tfds export: error: ')
  assert len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
  assert_no_partial_files(out)
  assert not (out / 'export.json').exists()


def test_a_second_export_into_a_dir_being_written_is_refused(data_dir,
                                                            tmp_path, capsys):
  """Export A is writing (its partial files there); export B into the same
  dir is refused in one line, and takes nothing of A's: A's shard comes
  out as A wrote it. Once A is done, the dir can be exported into again."""
  examples = source_examples()
  out = tmp_path / 'o'
  export.prepare_out_dir(out)
  a = export.make_writer('semantic_sam_tsv', out)
  a.add(examples[0])
  refused = re.escape(
      f'another export is writing into {out} (it holds'
      f' {out}/.export.lock): wait for it to end, or choose another --out')
  with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
    export.prepare_out_dir(out)
  with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
    export.make_writer('semantic_sam_tsv', out)
  with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
    export.export(examples[5:6], 'semantic_sam_tsv', out, overwrite=True)
  code, _, err = run(capsys, 'export', '--tars', '0-3', '--data_dir',
                     data_dir, '--format', 'coco', '--out', out,
                     '--overwrite', '--no_progress')
  assert (code, err) == (1, f'segment-anything-tfds export: error: another'
                         f' export is writing into {out} (it holds'
                         f' {out}/.export.lock): wait for it to end, or'
                         ' choose another --out\n')
  a.close()
  assert (out / 'sa1b-000000.tsv').read_bytes() == export.TsvWriter.row(
      examples[0])
  assert not (out / '.export.lock').exists()  # Removed as it is let go.
  export.export(examples, 'webdataset', out, overwrite=True)
  assert not (out / '.export.lock').exists()


def test_a_lock_file_that_is_no_file_is_refused(tmp_path):
  (tmp_path / 'l').mkdir()
  (tmp_path / 'l' / '.export.lock').symlink_to(tmp_path / 'victim')
  with pytest.raises(errors.ConfigError, match=re.escape(
      f'{tmp_path}/l/.export.lock is a symlink, not the lock file of an'
      ' export: remove it')):
    export.export(source_examples(), 'coco', tmp_path / 'l')
  assert not (tmp_path / 'victim').exists()
  (tmp_path / 'f').mkdir()
  os.mkfifo(tmp_path / 'f' / '.export.lock')
  with pytest.raises(errors.ConfigError, match=re.escape(
      f'{tmp_path}/f/.export.lock is not a regular file, not the lock file'
      ' of an export: remove it')):
    export.export(source_examples(), 'coco', tmp_path / 'f')
  # A directory: it was "[Errno 21] Is a directory: '.export.lock'".
  (tmp_path / 'd' / '.export.lock').mkdir(parents=True)
  with pytest.raises(errors.ConfigError, match=re.escape(
      f'{tmp_path}/d/.export.lock is not a regular file, not the lock file'
      ' of an export: remove it')):
    export.export(source_examples(), 'coco', tmp_path / 'd')


def test_show_and_stats_writes_and_an_export_into_one_dir_exclude_each_other(
    tmp_path):
  """`write_files` (show's and stats' files) holds the export lock shared
  while it writes: an export starting then is refused in one line, and
  removes no partial file of it; many such writes go at once; one into a
  dir an export is writing into is refused in one line. Before, neither
  took the lock: the export removed the partial file being written."""
  out = tmp_path / 'o'
  refused = re.escape(
      f'another export is writing into {out} (it holds'
      f' {out}/.export.lock): wait for it to end, or choose another --out')
  with export.OutDir.made(out) as writing:  # A write of show, in flight.
    writing.lock(shared=True)
    partial = export.PendingFile(writing.fd, 'sa_1.png', shown_dir=str(out),
                                 unique=True)
    with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
      export.export(source_examples(), 'coco', out)
    assert (out / partial.partial).exists()  # Not taken for a killed run's.
    # Another write goes on meanwhile; the lock file stays for the first.
    assert export.write_file(out / 'stats.json', b'{}', what='stats') == (
        f'{out}/stats.json')
    assert (out / '.export.lock').exists()
    partial.commit()
  assert sorted(os.listdir(out)) == ['sa_1.png', 'stats.json']  # Lock gone.
  export.prepare_out_dir(out)
  writer = export.make_writer('coco', out)  # An export, writing.
  with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
    export.write_files(out, {'sa_2.png': b'png'}, what='the picture')
  writer.abort()
  assert not (out / 'sa_2.png').exists()
  export.write_files(out, {'sa_2.png': b'png'}, what='the picture')
  assert not (out / '.export.lock').exists()


def test_partial_files_a_killed_show_or_stats_left_go_with_the_next_write(
    tmp_path):
  """A killed show or stats left `.<name>.<pid>.<ns>.partial` in its --out
  for good. The next write of that name removes those of a dead process,
  and nothing else: not a live writer's, not another name's, not a symlink
  (never followed), not another user's."""
  out = tmp_path / 'o'
  out.mkdir()
  child = subprocess.Popen([sys.executable, '-c', ''])
  child.wait()  # Its pid now names no process.
  dead, live = child.pid, os.getpid()
  victim = tmp_path / 'victim'
  victim.write_bytes(b'precious')
  stale = out / f'.stats.json.{dead}.1.partial'
  kept = [out / f'.stats.json.{live}.2.partial',
          out / f'.stats.png.{dead}.3.partial',  # Not a name written.
          out / f'.stats.json.{dead}.4.partial.old',
          out / f'.stats.json.{dead}.partial',
          out / f'.stats.json.{dead}.5.partial']  # A symlink, below.
  for path in (stale, *kept[:-1]):
    path.write_bytes(b'cut short')
  kept[-1].symlink_to(victim)
  if os.geteuid() == 0:
    theirs = out / f'.stats.json.{dead}.6.partial'
    theirs.write_bytes(b'theirs')
    os.chown(theirs, 65534, -1)
    kept.append(theirs)
  assert export.write_file(out / 'stats.json', b'{}', what='stats') == (
      f'{out}/stats.json')
  assert not os.path.lexists(stale)
  assert all(os.path.lexists(path) for path in kept)
  assert victim.read_bytes() == b'precious'
  assert (out / 'stats.json').read_bytes() == b'{}'


@contextlib.contextmanager
def _as_another_user():
  """Inside, this process's file accesses are checked as another user's
  (root's effective uid is set to nobody's, then back; any other user is
  already another than root, who made the files)."""
  if os.geteuid() != 0:
    yield
    return
  os.setegid(65534)
  os.seteuid(65534)
  try:
    yield
  finally:
    os.seteuid(0)
    os.setegid(0)


def test_a_lock_file_that_cannot_be_opened_is_one_line_saying_what_to_do():
  """A `.export.lock` another user's export left (read-only to this one)
  was "export to OUT failed: [Errno 13] Permission denied"; now one line
  names it and says it may be removed if no export is running."""
  out = pathlib.Path(tempfile.mkdtemp())  # Not under root's 0700 tmp_path.
  try:
    out.chmod(0o777)
    lock = out / '.export.lock'
    lock.write_bytes(b'')
    lock.chmod(0o444)
    refused = re.escape(
        f'{lock} cannot be opened to lock the dir (Permission denied):'
        " another user's export left it, or it is read-only; if no export"
        f' is writing into {out}, remove it')
    with _as_another_user():
      with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
        export.export(source_examples(), 'coco', out)
      with pytest.raises(errors.ConfigError, match=f'^{refused}$'):
        export.write_file(out / 'sa_1.png', b'png', what='the picture')
    assert sorted(os.listdir(out)) == ['.export.lock']  # Nothing written.
  finally:
    shutil.rmtree(out)
