"""Makes the name `segment_anything` resolve to this package's builder.

TFDS refuses a second class registered under a name, and its builtin
`segment_anything` may already be imported. So the builder class skips
registration and a dataset-builder provider placed first in TFDS's provider
list answers for the name, in every import order.
"""

from __future__ import annotations

from typing import Type

import tensorflow_datasets as tfds


class _Provider:
  """A TFDS dataset-builder provider for one builder class."""

  def __init__(self, builder_cls: Type[tfds.core.DatasetBuilder]):
    self.builder_cls = builder_cls

  def has_dataset(self, name: str) -> bool:
    return name == self.builder_cls.name

  def get_builder_cls(self, name: str) -> Type[tfds.core.DatasetBuilder]:
    del name
    return self.builder_cls


def register(builder_cls: Type[tfds.core.DatasetBuilder]) -> None:
  """Puts `builder_cls` first for its name; calling it again is a no-op."""
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top
  for provider in registered._DATASET_PROVIDER_REGISTRY:  # pylint: disable=protected-access
    if isinstance(provider, _Provider) and provider.builder_cls is builder_cls:
      return
  tfds.core.add_dataset_builder_provider(_Provider(builder_cls), index=0)
