#!/usr/bin/env python
"""Random access to SA-1B for any framework: a map-style dataset and sampler.

Prepare the dataset in the ArrayRecord format once:

  segment-anything-tfds build --config first_1 --manual_dir DIR \\
      --data_dir ~/tensorflow_datasets --file_format array_record

Then read any example by index, with no tf.data pipeline:

  python examples/random_access.py --data_dir ~/tensorflow_datasets \\
      --config first_1 --index 0,5 --masks

`SegmentAnythingDataset` follows the map-style protocol (`__len__`,
`__getitem__`) that PyTorch's `DataLoader`, JAX/Grain and plain Python loops
all accept; `ShardedSampler` yields shuffled indices per epoch and per
replica, like PyTorch's `DistributedSampler`. Neither needs torch:

  ds = SegmentAnythingDataset(data_dir, config='first_1', masks=True)
  sampler = ShardedSampler(len(ds), num_replicas=world, rank=rank, seed=0)
  sampler.set_epoch(epoch)
  for batch in batches(ds, sampler, batch_size=8):
    ...

With PyTorch: `DataLoader(ds, sampler=sampler, batch_size=8,
collate_fn=collate)`. The dataset opens its data source lazily in each
process, so it pickles to DataLoader worker processes.

Examples are flat dicts of numpy arrays (N = number of masks):

  image            uint8 [H, W, 3] (or the JPEG bytes, `decode_image=False`)
  image_id         int
  height, width    int
  boxes_xyxy       float32 [N, 4]   pixel x0, y0, x1, y1 (from TFDS's
                                    normalized [ymin, xmin, ymax, xmax])
  points           float32 [N, 2]   prompt point x, y in pixels
  area             int64   [N]
  predicted_iou    float32 [N]
  stability_score  float32 [N]
  rle              list of N COCO RLE dicts {'size': [H, W], 'counts': bytes}
  masks            bool    [N, H, W] (only with `masks=True`; needs
                                    pycocotools)
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np


class SegmentAnythingDataset:
  """Map-style random access to a prepared ArrayRecord `segment_anything`.

  Args:
    data_dir: the TFDS data dir the dataset was built into.
    config: the builder config name (e.g. 'first_1') or a config object
      (e.g. `segment_anything_tfds.tars_config('0-9')`).
    split: a split or slice, e.g. 'train' or 'train[:1000]'.
    decode_image: decode the JPEG to pixels; False keeps the bytes.
    masks: also decode every mask to a bool array (pycocotools).
    transform: optional function applied to each example dict.
  """

  def __init__(
      self,
      data_dir: str,
      config: Any = 'first_1',
      split: str = 'train',
      *,
      decode_image: bool = True,
      masks: bool = False,
      transform: Callable[[dict[str, Any]], Any] | None = None,
  ):
    self.data_dir = data_dir
    self.config = config
    self.split = split
    self.decode_image = decode_image
    self.masks = masks
    self.transform = transform
    self._source = None

  @property
  def source(self):
    """The TFDS data source, opened on first use in each process."""
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      import segment_anything_tfds  # pylint: disable=g-import-not-at-top,unused-import  # Registers the builder.
      # JPEG bytes are always read as stored and decoded here (with PIL),
      # which is cheaper than TF's decoding of a single image.
      decoders = {'image': {'content': tfds.decode.SkipDecoding()}}
      self._source = tfds.data_source(
          'segment_anything', split=self.split, data_dir=self.data_dir,
          builder_kwargs={'config': self.config}, decoders=decoders,
          download=False)  # Read only; never starts a build.
    return self._source

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_source'] = None  # Reopened in the receiving process.
    return state

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Any:
    n = len(self)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f'index {index} out of range for {n} examples')
    example = to_flat_example(self.source[index],
                              decode_image=self.decode_image,
                              masks=self.masks)
    return self.transform(example) if self.transform else example

  def __getitems__(self, indices: Sequence[int]) -> list[Any]:
    """Batched read (PyTorch's DataLoader uses it when present)."""
    return [self[i] for i in indices]


def to_flat_example(ex: dict[str, Any], *, decode_image: bool = True,
                    masks: bool = False) -> dict[str, Any]:
  """A TFDS `segment_anything` numpy example -> a flat dict (see module doc)."""
  image, ann = ex['image'], ex['annotations']
  height, width = int(image['height']), int(image['width'])
  content = image['content']
  if decode_image and isinstance(content, (bytes, np.bytes_)):
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(bytes(content))) as im:
      content = np.asarray(im.convert('RGB'))
  bbox = np.asarray(ann['bbox'], np.float32).reshape(-1, 4)
  scale = np.array([width, height, width, height], np.float32)
  boxes_xyxy = bbox[:, [1, 0, 3, 2]] * scale
  counts = [c if isinstance(c, bytes) else str(c).encode()
            for c in ann['segmentation']['counts']]
  sizes = np.asarray(ann['segmentation']['size']).reshape(-1, 2)
  out = {
      'image': content,
      'image_id': int(image['image_id']),
      'file_name': _text(image['file_name']),
      'height': height,
      'width': width,
      'boxes_xyxy': boxes_xyxy,
      'points': np.asarray(ann['point_coords'], np.float32).reshape(-1, 2),
      'area': np.asarray(ann['area'], np.int64),
      'predicted_iou': np.asarray(ann['predicted_iou'], np.float32),
      'stability_score': np.asarray(ann['stability_score'], np.float32),
      'rle': [{'size': [int(h), int(w)], 'counts': c}
              for c, (h, w) in zip(counts, sizes)],
  }
  if masks:
    out['masks'] = decode_rles(out['rle'], height, width)
  return out


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def decode_rles(rles: list[dict[str, Any]], height: int, width: int
                ) -> np.ndarray:
  """COCO RLEs -> bool [N, height, width] (pycocotools)."""
  if not rles:
    return np.zeros((0, height, width), dtype=bool)
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  return np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)


class ShardedSampler:
  """Indices for one replica, reshuffled each epoch; plain Python.

  Like PyTorch's `DistributedSampler`: the epoch's permutation (seeded by
  `seed + epoch`) is padded by wrapping around to a multiple of
  `num_replicas` (or cut, with `drop_last`), and replica `rank` takes every
  `num_replicas`-th index from position `rank`. Every replica yields the same
  number of indices, and together they cover every example each epoch.
  """

  def __init__(self, length: int, *, num_replicas: int = 1, rank: int = 0,
               shuffle: bool = True, seed: int = 0, drop_last: bool = False):
    if num_replicas < 1 or not 0 <= rank < num_replicas:
      raise ValueError(f'need 0 <= rank < num_replicas, got rank={rank},'
                       f' num_replicas={num_replicas}')
    self.length = length
    self.num_replicas = num_replicas
    self.rank = rank
    self.shuffle = shuffle
    self.seed = seed
    self.drop_last = drop_last
    self.epoch = 0

  def set_epoch(self, epoch: int) -> None:
    self.epoch = epoch

  def __len__(self) -> int:
    if self.drop_last:
      return self.length // self.num_replicas
    return -(-self.length // self.num_replicas)

  def __iter__(self) -> Iterator[int]:
    order = list(range(self.length))
    if self.shuffle:
      random.Random(self.seed + self.epoch).shuffle(order)
    total = len(self) * self.num_replicas
    if total > len(order) and order:
      order += (order * (total // len(order) + 1))[:total - len(order)]
    order = order[:total]
    return iter(order[self.rank::self.num_replicas])


def collate(examples: list[dict[str, Any]]) -> dict[str, list[Any]]:
  """Batches examples key by key, as lists (SA-1B masks are ragged)."""
  if not examples:
    return {}
  return {k: [ex[k] for ex in examples] for k in examples[0]}


def batches(dataset, sampler, batch_size: int, *,
            collate_fn: Callable[[list[Any]], Any] = collate,
            drop_last: bool = False) -> Iterator[Any]:
  """Batches of `dataset[i]` for the sampler's indices, in order."""
  batch = []
  for index in sampler:
    batch.append(dataset[index])
    if len(batch) == batch_size:
      yield collate_fn(batch)
      batch = []
  if batch and not drop_last:
    yield collate_fn(batch)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--config', default='first_1')
  parser.add_argument('--split', default='train')
  parser.add_argument('--index', default='0',
                      help='comma-separated indices, e.g. 0,5')
  parser.add_argument('--masks', action='store_true',
                      help='decode the masks too')
  args = parser.parse_args(argv)
  ds = SegmentAnythingDataset(args.data_dir, args.config, args.split,
                              masks=args.masks)
  print(f'{len(ds)} examples in {args.split}')
  for index in (int(i) for i in args.index.split(',')):
    ex = ds[index]
    line = (f'[{index}] image id {ex["image_id"]}: {ex["file_name"]}'
            f' {ex["width"]}x{ex["height"]}, image {ex["image"].shape},'
            f' {len(ex["rle"])} masks')
    if args.masks:
      line += f', masks {ex["masks"].shape}'
    print(line)
  sampler = ShardedSampler(len(ds), seed=0)
  first = next(batches(ds, sampler, batch_size=min(4, len(ds))), None)
  if first:
    print(f'first shuffled batch: image ids {first["image_id"]}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
