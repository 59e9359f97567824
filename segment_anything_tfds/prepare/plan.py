"""Which record goes to which output shard: the same plan for both engines.

The images kept (after the duplicate rule) are ordered by `image_order`, a
64-bit hash of the image id (the deterministic global shuffle), and cut by
count into as many shards as TFDS's writer would choose for their size
(`tfds_seam.number_of_shards`, or the number asked for). Images whose build
fails keep their place in the plan, so the cuts do not depend on which
engine found the failure, or when; a shard holds the records of its images
that were built. So a local build and a Beam build of the same inputs
write the same shard files, byte for byte.

A shard left with no record is dropped and the others renumbered
(`drop_empty_shards`), as TFDS does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from segment_anything_tfds import tfds_seam


def image_order(image_ids: np.ndarray) -> np.ndarray:
  """A 64-bit hash of each image id (splitmix64, a bijection): the order."""
  with np.errstate(over='ignore'):  # Arithmetic modulo 2**64.
    z = np.asarray(image_ids).astype(np.uint64) + np.uint64(
        0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclasses.dataclass
class Output:
  """Where and how to write the split.

  Attributes:
    data_dir: the dataset dir (local, or a bucket).
    dataset_name: e.g. 'segment_anything'.
    split: e.g. 'train'.
    file_format: TFDS's file format, by value ('tfrecord', 'array_record').
    num_shards: the number of shards asked for, or None (TFDS's rule).
    min_shard_size, max_shard_size: TFDS's rule's bounds, in bytes.
  """

  data_dir: str
  dataset_name: str
  split: str
  file_format: str = 'tfrecord'
  num_shards: int | None = None
  min_shard_size: int = 64 << 20
  max_shard_size: int = 1 << 30

  def __post_init__(self):
    self.file_format = getattr(self.file_format, 'value', self.file_format)

  def shard_count(self, *, images: int, input_bytes: int) -> int:
    """Shards for `images` images of `input_bytes` bytes (jpg + json)."""
    count = self.num_shards or tfds_seam.number_of_shards(
        total_size=input_bytes, num_examples=images,
        min_shard_size=self.min_shard_size,
        max_shard_size=self.max_shard_size)
    return max(1, min(count, images))

  def template(self):
    """TFDS's template of the split's file names."""
    return tfds_seam.filename_template(
        self.data_dir, dataset_name=self.dataset_name, split=self.split,
        file_format=self.file_format)

  def shard_path(self, index: int, count: int):
    """The path (`epath.Path`) of shard `index` of `count`."""
    return tfds_seam.shard_path(self.template(), index, count)


@dataclasses.dataclass
class Result:
  """What an engine wrote, and what it counted on the way.

  Attributes:
    engine: 'local' or 'beam'.
    shard_lengths: records per shard file written.
    num_bytes: the records' bytes.
    tallies: per tar (`rules.Tallies`).
    audit: the audit records (written to `<data_dir>/audit/` too).
    workers: processes of a local build (None for Beam).
    seconds: the build's wall time.
    counters: a Beam build's counters.
    missing_images: with an image list, its ids found in no tar (sorted;
      empty if none); None without a list.
  """

  engine: str
  shard_lengths: list[int]
  num_bytes: int
  tallies: Any
  audit: list[dict[str, Any]]
  workers: int | None = None
  seconds: float = 0.0
  counters: dict[str, int] = dataclasses.field(default_factory=dict)
  missing_images: Any = None

  @property
  def images(self) -> int:
    return sum(self.shard_lengths)

  def metadata(self) -> dict[str, Any]:
    """The `build` block of `metadata.json`."""
    out = {'engine': self.engine, 'images': self.images,
           'masks': self.tallies.total('masks'), 'bytes': self.num_bytes,
           'seconds': round(self.seconds, 1),
           'per_tar': self.tallies.as_dict()}
    if self.workers is not None:
      out['workers'] = self.workers
    if self.counters:
      out['counters'] = dict(sorted(self.counters.items()))
    return out


def cuts(images: int, shards: int) -> list[int]:
  """Where each shard starts in the ordered images, and the end."""
  return [images * i // shards for i in range(shards + 1)]


def boundaries(orders: np.ndarray, shards: int) -> np.ndarray:
  """The first `image_order` of every shard but the first, from the sorted
  orders of all images planned (`shard_of` then places any image)."""
  return orders[cuts(len(orders), shards)[1:-1]]


def shard_of(order: int | np.ndarray, bounds: np.ndarray) -> Any:
  """The shard of an image of that `image_order`, given `boundaries`."""
  return np.searchsorted(bounds, np.asarray(order, np.uint64), side='right')


def drop_empty_shards(output: Output, lengths: Sequence[int]) -> list[int]:
  """Renames shard files so that only non-empty ones are numbered; the
  empty ones (every image skipped) are removed. Returns the lengths kept."""
  count = len(lengths)
  kept = [i for i, n in enumerate(lengths) if n]
  if len(kept) == count:
    return list(lengths)
  for new, old in enumerate(kept):
    output.shard_path(old, count).rename(output.shard_path(new, len(kept)))
  for i, n in enumerate(lengths):
    if not n:
      output.shard_path(i, count).unlink(missing_ok=True)
  return [lengths[i] for i in kept]
