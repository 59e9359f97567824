"""Shared fixtures: the bundled dummy data, prepared once per test session."""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile

import numpy as np
import pytest

from segment_anything_tfds.tools import fake_data

import _kinds

try:  # Imported here, not on first use: a test may hide it from sys.modules.
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
except ImportError:  # The tests that need it skip (pytest.importorskip).
  mask_utils = None

REPO = pathlib.Path(__file__).resolve().parent.parent
DUMMY_DATA = REPO / 'dummy_data'
PROXY_VARS = ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY',
              'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY')


# Download options for tests: quick retries, short timeouts, no bars.
FAST_DOWNLOADS = {'retries': 3, 'backoff': 0.01, 'max_backoff': 0.02,
                  'timeout': 10, 'progress': False}


def build(data_dir: os.PathLike, manual_dir: os.PathLike, config, *,
          beam: bool = False, download_options: dict | None = None,
          **builder_kwargs):
  """Prepares `config` of this package's builder from `manual_dir` into
  `data_dir`, on the local engine or (`beam`) Beam's offline runner, with
  `FAST_DOWNLOADS` and `download_options`; returns the builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import
  from segment_anything_tfds.prepare import runners  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(
      'segment_anything', config=config, data_dir=os.fspath(data_dir),
      progress=False,
      download_options={**FAST_DOWNLOADS, **(download_options or {})},
      **builder_kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir),
      beam_runner=runners.local_runner() if beam else None))
  return builder


def tar_bytes(entries, fmt: int = tarfile.GNU_FORMAT, *,
              mtime: float = 0) -> bytes:
  """A tar of `entries` (name, data), in order; data None makes a symlink
  to sa_1.jpg. A float `mtime` gives each member a pax header (PAX)."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=fmt) as t:
    for name, data in entries:
      info = tarfile.TarInfo(name)
      info.mtime = mtime
      if data is None:
        info.type, info.linkname = tarfile.SYMTYPE, 'sa_1.jpg'
        t.addfile(info)
        continue
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def built_images(builder) -> dict[int, tuple[bytes, tuple[str, ...]]]:
  """image id -> (JPEG bytes, RLE counts) of a prepared dataset, each
  image once (asserted)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = builder.as_dataset(split='train', shuffle_files=False, decoders={
      'image': {'content': tfds.decode.SkipDecoding()}})
  out = {}
  for e in tfds.as_numpy(ds):
    image_id = int(e['image']['image_id'])
    assert image_id not in out, f'image {image_id} written twice'
    out[image_id] = (e['image']['content'], tuple(
        c.decode() for c in e['annotations']['segmentation']['counts']))
  return out


@pytest.fixture(scope='session', autouse=True)
def no_proxy_from_the_environment():
  """The tests' servers are on 127.0.0.1: never reach them through a proxy
  the environment names (CI may set one for PyPI). Proxy tests set theirs."""
  with pytest.MonkeyPatch.context() as mp:
    for var in PROXY_VARS:
      mp.delenv(var, raising=False)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # pylint: disable=unused-argument
  """Records the running test (its fixtures' setup and teardown included)
  for _kinds.require_integration: an unmarked test that starts a server, a
  Beam worker pool, tf.data service or Keras training fails."""
  _kinds.install_guards()
  _kinds.current_item = item
  try:
    yield
  finally:
    _kinds.current_item = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):  # pylint: disable=unused-argument
  _kinds.install_guards()  # TensorFlow or Keras imported by the setup.
  yield


def load_example(name: str):
  """The script `examples/<name>.py` as a module (registered by name, so its
  classes pickle)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      name, REPO / 'examples' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def read_inputs(manual_dir: os.PathLike) -> dict[int, tuple[bytes, dict]]:
  """{image_id: (jpg bytes, parsed json)} of every image in manual_dir.

  Reads tars with the stdlib `tarfile` and folders with plain file reads,
  independently of the package, as the ground truth for round-trip tests.
  """
  found: dict[int, dict[str, bytes]] = {}
  manual_dir = pathlib.Path(manual_dir)

  def add(name: str, data: bytes):
    stem, ext = os.path.splitext(os.path.basename(name))
    image_id = int(stem[len('sa_'):])
    if ext[1:] in found.setdefault(image_id, {}):
      raise AssertionError(f'{name} seen twice')
    found[image_id][ext[1:]] = data

  for path in sorted(manual_dir.iterdir()):
    if path.suffix == '.tar':
      with tarfile.open(path) as tar:
        for m in tar.getmembers():
          if m.isfile():
            add(m.name, tar.extractfile(m).read())
    elif path.is_dir() and path.name.startswith('sa_'):
      for f in sorted(path.iterdir()):
        add(f.name, f.read_bytes())
  return {k: (v['jpg'], json.loads(v['json'])) for k, v in found.items()}


def make_manual_dir(tmp_path: pathlib.Path, rows=(), tars=()) -> pathlib.Path:
  """tmp_path/manual holding copies of dummy tars and a links file of `rows`."""
  import shutil  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.sources import links as links_lib  # pylint: disable=g-import-not-at-top
  m = tmp_path / 'manual'
  m.mkdir()
  for n in tars:
    shutil.copy(DUMMY_DATA / n, m / n)
  if rows:
    fake_data.write_links(m / links_lib.LINKS_FILE_NAME, rows)
  return m


def rewrite_examples(dataset_dir: os.PathLike, edit) -> None:
  """Edits a prepared dataset's TFRecords in place, as a hand could:
  `edit(image_id, feature)` may change the `tf.train.Example` feature map
  of each example (e.g. `feature['annotations/bbox'].float_list.value`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(pathlib.Path(dataset_dir).glob('*.tfrecord*'))
  assert files
  for path in files:
    records = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      ex = tf.train.Example.FromString(raw)
      feature = ex.features.feature
      edit(feature['image/image_id'].int64_list.value[0], feature)
      records.append(ex.SerializeToString())
    with tf.io.TFRecordWriter(str(path)) as w:
      for r in records:
        w.write(r)


@pytest.fixture(scope='module')
def nonfinite_data_dir(tmp_path_factory):
  """tar 1 of the dummy data, built, then image 12 edited as a dataset
  built by older code could hold it: its annotations[1].bbox NaN and its
  annotations[0].predicted_iou infinite. Returns the data dir."""
  from segment_anything_tfds import cli  # pylint: disable=g-import-not-at-top
  data = tmp_path_factory.mktemp('nonfinite') / 'data'
  assert cli.main(['build', '--tars', '1', '--data_dir', str(data),
                   '--manual_dir', str(DUMMY_DATA), '--no_progress']) == 0

  def edit(image_id, feature):
    if image_id == 12:
      feature['annotations/bbox'].float_list.value[4:8] = [float('nan')] * 4
      feature['annotations/predicted_iou'].float_list.value[0] = float('inf')
  rewrite_examples(data / 'segment_anything' / 'tars_1' / '2.0.0', edit)
  return data


def make_bad_manual_dir(tmp_path: pathlib.Path) -> pathlib.Path:
  """Two tars: one clean, one holding one image for each kind of fault."""
  tmp_path.mkdir()
  rng = np.random.default_rng(5)
  rec = lambda i: (i, *fake_data.image_record(rng, i, height=8, width=6,
                                              num_masks=2))
  fake_data.write_tar(tmp_path / 'sa_000000.tar', [rec(1), rec(2), rec(3)])
  ok = rec(10)
  _, jpg, js = rec(11)
  _, jpg12, _ = rec(12)
  _, _, js13 = rec(13)
  _, jpg14, js14 = rec(14)
  bad_json = json.loads(js14)
  bad_json['image']['height'] = 0
  entries = [
      (f'sa_{ok[0]}.jpg', ok[1]), (f'sa_{ok[0]}.json', ok[2]),
      ('sa_11.jpg', jpg), ('sa_11.json', js[:-5]),  # Malformed JSON.
      ('sa_12.jpg', jpg12),  # No json.
      ('sa_13.json', js13),  # No jpg.
      ('sa_14.jpg', jpg14), ('sa_14.json', json.dumps(bad_json).encode()),
      ('sa_2.jpg', jpg), ('sa_2.json', js.replace(b'sa_11', b'sa_2').replace(
          b'"image_id": 11', b'"image_id": 2')),  # Id 2 is in tar 0 too.
  ]
  with tarfile.open(tmp_path / 'sa_000001.tar', 'w') as t:
    for name, data in entries:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      t.addfile(info, io.BytesIO(data))
  return tmp_path


def make_example(rng: np.random.Generator, *, height: int, width: int,
                 num_masks: int, image_id: int = 1):
  """A `segment_anything`-shaped example (tensors) and its true masks.

  `num_masks` random ellipses (each at least one pixel) on a random image,
  encoded with pycocotools as the builder's features hold them.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  yy, xx = np.ogrid[:height, :width]
  masks = []
  for _ in range(num_masks):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(1, height / 2), rng.uniform(1, width / 2)
    m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if not m.any():
      m[rng.integers(height), rng.integers(width)] = True
    masks.append(m)
  masks = np.stack(masks).astype(np.uint8) if masks else np.zeros(
      (0, height, width), np.uint8)
  encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
  n = len(encoded)
  x, y, w, h = (mask_utils.toBbox(encoded).reshape(n, 4).T if n else
                np.zeros((4, 0)))
  example = {
      'image': {
          'content': tf.constant(
              rng.integers(0, 256, (height, width, 3)), tf.uint8),
          'file_name': tf.constant(f'sa_{image_id}.jpg'),
          'height': tf.constant(height, tf.uint64),
          'width': tf.constant(width, tf.uint64),
          'image_id': tf.constant(image_id, tf.uint64),
      },
      'annotations': {
          'area': tf.constant(mask_utils.area(encoded).astype(np.uint64)
                              if n else np.zeros([0], np.uint64)),
          'bbox': tf.constant(np.stack(
              [y / height, x / width, (y + h) / height, (x + w) / width],
              axis=1).astype(np.float32).reshape(n, 4)),
          'crop_box': tf.zeros([n, 4], tf.float32),
          'id': tf.constant(np.arange(100, 100 + n, dtype=np.uint64)),
          'point_coords': tf.constant(rng.uniform(0, min(height, width),
                                                  (n, 1, 2))),
          'predicted_iou': tf.constant(rng.uniform(0.5, 1, n)),
          'stability_score': tf.constant(rng.uniform(0.5, 1, n)),
          'segmentation': {
              'counts': tf.constant([r['counts'] for r in encoded],
                                    tf.string),
              'size': tf.constant(np.tile([height, width], (n, 1)).astype(
                  np.uint64).reshape(n, 2)),
          },
      },
  }
  return example, masks


def examples_dataset(examples: list[dict]):
  """A tf.data.Dataset of `make_example` examples (shapes differ per image)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def gen():
    for ex in examples:
      yield tf.nest.map_structure(lambda t: t.numpy(), ex)

  spec = tf.nest.map_structure(
      lambda t: tf.TensorSpec([None] * t.shape.rank, t.dtype), examples[0])
  return tf.data.Dataset.from_generator(gen, output_signature=spec)


# The ops that call back into Python: a graph holding one cannot run under
# tf.data service, nor be serialized for it.
PYTHON_OPS = frozenset({'PyFunc', 'PyFuncStateless', 'EagerPyFunc',
                        'NumpyFunction'})


def op_types(graph_def) -> set[str]:
  """The op types of a tf.compat.v1.GraphDef, its functions' included."""
  ops = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    ops.update(node.op for node in function.node_def)
  return ops


def dataset_ops(ds) -> set[str]:
  """The op types of a tf.data.Dataset's serialized graph."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
  return op_types(graph_def)


@pytest.fixture(scope='session')
def prepared_dummy(tmp_path_factory) -> pathlib.Path:
  """A data_dir holding config `all` prepared from dummy_data/ (local build)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import

  data_dir = tmp_path_factory.mktemp('prepared_dummy')
  builder = tfds.builder('segment_anything', config='all', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY_DATA))
  return data_dir
