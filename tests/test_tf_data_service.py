"""The TF decode path is graph-only: tf.data service, no Python ops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from segment_anything_tfds.read import masks as masks_lib
from segment_anything_tfds.read import rle
from segment_anything_tfds.read import sam_inputs as sam

mask_utils = pytest.importorskip('pycocotools.mask')
from conftest import PYTHON_OPS, dataset_ops, make_example, op_types  # pylint: disable=g-import-not-at-top,wrong-import-position

def _examples(n: int):
  rng = np.random.default_rng(0)
  return [make_example(rng, height=int(rng.integers(8, 40)),
                       width=int(rng.integers(8, 40)), num_masks=6,
                       image_id=i) for i in range(n)]


def _as_dataset(examples) -> tf.data.Dataset:
  """In-graph dataset (no generator): padded tensors, sliced back per image."""
  rows = []
  for ex in examples:
    ann = ex['annotations']
    rows.append({
        'image': ex['image']['content'].numpy(),
        'height': ex['image']['height'].numpy(),
        'width': ex['image']['width'].numpy(),
        'image_id': ex['image']['image_id'].numpy(),
        'counts': ann['segmentation']['counts'].numpy(),
    })
  max_h = max(r['image'].shape[0] for r in rows)
  max_w = max(r['image'].shape[1] for r in rows)
  n = max(len(r['counts']) for r in rows)
  images = np.stack([np.pad(r['image'], [(0, max_h - r['image'].shape[0]),
                                         (0, max_w - r['image'].shape[1]),
                                         (0, 0)]) for r in rows])
  counts = np.array([list(r['counts']) + [b''] * (n - len(r['counts']))
                     for r in rows], dtype=object)
  ds = tf.data.Dataset.from_tensor_slices({
      'image': images,
      'height': np.array([r['height'] for r in rows], np.uint64),
      'width': np.array([r['width'] for r in rows], np.uint64),
      'image_id': np.array([r['image_id'] for r in rows], np.uint64),
      'counts': counts,
      'num': np.array([len(r['counts']) for r in rows], np.int32),
  })

  def to_example(d):
    h = tf.cast(d['height'], tf.int32)
    w = tf.cast(d['width'], tf.int32)
    num = d['num']
    zeros = tf.zeros([num], tf.float64)
    return {
        'image': {'content': d['image'][:h, :w], 'height': d['height'],
                  'width': d['width'], 'image_id': d['image_id']},
        'annotations': {
            'segmentation': {'counts': d['counts'][:num]},
            'area': tf.zeros([num], tf.uint64),
            'predicted_iou': zeros + 1, 'stability_score': zeros + 1,
            'bbox': tf.zeros([num, 4]), 'point_coords': tf.zeros([num, 1, 2],
                                                                  tf.float64),
            'id': tf.cast(tf.range(num), tf.uint64),
        },
    }

  return ds.map(to_example)


def _decode_pipeline(ds: tf.data.Dataset, backend: str = 'tf'):
  return ds.map(
      lambda ex: (ex['image']['image_id'], masks_lib.decode_masks(
          ex, backend=backend, output_size=(9, 7))['annotations']['mask']),
      num_parallel_calls=2)


@pytest.fixture(scope='module')
def service():
  dispatcher = tf.data.experimental.service.DispatchServer(
      tf.data.experimental.service.DispatcherConfig(port=0))
  address = dispatcher.target.split('://')[1]
  assert address.rsplit(':', 1)[1] != '0'
  workers = [tf.data.experimental.service.WorkerServer(
      tf.data.experimental.service.WorkerConfig(
          dispatcher_address=address, worker_address='127.0.0.1:%port%',
          port=0)) for _ in range(2)]
  yield dispatcher
  for worker in workers:
    worker.stop()
  dispatcher.stop()


@pytest.mark.integration
def test_decode_pipeline_under_tf_data_service(service):
  examples = _examples(8)
  expected = {}
  for ex, masks in examples:
    expected[int(ex['image']['image_id'])] = tf.image.resize(
        masks[..., None], (9, 7), method='nearest')[..., 0].numpy()
  ds = _decode_pipeline(_as_dataset([ex for ex, _ in examples]))
  distributed = ds.apply(tf.data.experimental.service.distribute(
      processing_mode='parallel_epochs', service=service.target))
  seen = {}
  for image_id, masks in distributed:
    image_id = int(image_id)
    np.testing.assert_array_equal(masks.numpy(), expected[image_id])
    seen[image_id] = seen.get(image_id, 0) + 1
  # parallel_epochs: each of the 2 workers produces every element.
  assert seen == {i: 2 for i in expected}


@pytest.mark.integration
def test_sam_pipeline_under_tf_data_service(service):
  examples = [ex for ex, _ in _examples(4)]
  ds = sam.sam_dataset(_as_dataset(examples), batch_size=1, image_size=32,
                       mask_size=8, num_masks=4, seed=0)
  local = [t.numpy() for _, t, _ in ds]
  distributed = ds.apply(tf.data.experimental.service.distribute(
      processing_mode='distributed_epoch', service=service.target))
  remote = [t.numpy() for _, t, _ in distributed]
  # distributed_epoch: every image once, split over the workers. Seeded by
  # image id: the same targets whatever worker made them.
  assert len(remote) == len(local) == 4
  assert sorted(r.tobytes() for r in remote) == sorted(
      r.tobytes() for r in local)
  assert any(r.any() for r in remote)


def test_no_python_ops_in_decode_graphs():
  counts = tf.TensorSpec([None], tf.string)
  size = tf.TensorSpec([2], tf.int64)
  for output_size in (None, (16, 16)):
    fn = tf.function(lambda c, s, o=output_size: rle.decode(c, s, o))
    ops = op_types(fn.get_concrete_function(counts, size).graph.as_graph_def())
    assert 'Cumsum' in ops or 'Cumsum' in str(ops)  # Sanity: real graph.
    assert not ops & PYTHON_OPS, ops & PYTHON_OPS
  for fn in (rle.area, rle.to_bbox):
    graph = tf.function(fn).get_concrete_function(counts, size).graph
    assert not op_types(graph.as_graph_def()) & PYTHON_OPS
  examples = [ex for ex, _ in _examples(2)]
  assert not dataset_ops(_decode_pipeline(_as_dataset(examples))) & PYTHON_OPS
  assert not dataset_ops(sam.sam_dataset(
      _as_dataset(examples), batch_size=1, image_size=32, mask_size=8,
      num_masks=2, seed=0)) & PYTHON_OPS
  # The 'keras_hub' layout, mixed prompts and the holdout filter too.
  keras_hub = sam.sam_dataset(
      _as_dataset(examples), batch_size=1, image_size=32, num_masks=2,
      seed=0, layout='keras_hub', validation_fraction=0.5)
  assert 'FilterDataset' in dataset_ops(keras_hub)  # Sanity: the filter.
  assert not dataset_ops(keras_hub) & PYTHON_OPS


def test_python_op_detector_catches_pycocotools_backend():
  """The check above can fail: the pycocotools map is a Python op."""
  examples = [ex for ex, _ in _examples(2)]
  ops = dataset_ops(_decode_pipeline(_as_dataset(examples),
                                      backend='pycocotools'))
  assert ops & PYTHON_OPS
