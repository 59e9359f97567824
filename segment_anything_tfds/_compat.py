"""Old module paths, from before the package had wings: they keep working.

Until 2.1 the package was one flat folder (`segment_anything_tfds.tars`,
`.sam_inputs`, ...). Those paths still import, for one release, as the
modules' new homes, with a `DeprecationWarning` naming the new path:

  import segment_anything_tfds.sam_inputs          # warns; the same module as
  from segment_anything_tfds import sam_inputs     # segment_anything_tfds.read.sam_inputs

The public API at the package root (`segment_anything_tfds.rle`,
`load_sam_dataset`, ...) is not deprecated and does not warn.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

PACKAGE = 'segment_anything_tfds'

# Old module name -> its new home.
MOVED = {
    'audit': 'prepare.rules',
    'checksums': 'sources.checksums',
    'copy_paste': 'read.copy_paste',
    'download': 'sources.download',
    'evaluation': 'train.evaluation',
    'examples': 'prepare.records',
    'export': 'tools.export',
    'fake_data': 'tools.fake_data',
    'http': 'sources.http',
    'incomplete': 'prepare.incomplete',
    'keras_sam': 'train.keras_sam',
    'links': 'sources.links',
    'local_build': 'prepare.local',
    'masks': 'read.masks',
    'mirror': 'sources.mirror',
    'numpy_inputs': 'read.numpy_inputs',
    'pipeline': 'prepare.beam',
    'reading': 'read.prepared',
    'runners': 'prepare.runners',
    'sam_inputs': 'read.sam_inputs',
    'sam_layouts': 'read.sam_layouts',
    'sampling': 'read.sampling',
    'shards': 'sources.manual_dir',
    'stats': 'tools.stats',
    'tars': 'prepare.tars',
    'viz': 'tools.viz',
}


def _warn(old: str, new: str, stacklevel: int) -> None:
  warnings.warn(
      f'{PACKAGE}.{old} moved to {PACKAGE}.{new}; the old path works until'
      ' the next release', DeprecationWarning, stacklevel=stacklevel)


def moved_module(old: str, *, stacklevel: int = 3):
  """The module that `segment_anything_tfds.<old>` was, with a warning."""
  new = MOVED[old]
  _warn(old, new, stacklevel)
  return importlib.import_module(f'{PACKAGE}.{new}')


class _Loader(importlib.abc.Loader):
  """Loads an old path as the module at its new home (one module object)."""

  def __init__(self, old: str):
    self._old = old
    self._spec = None

  def create_module(self, spec):
    module = moved_module(self._old, stacklevel=8)
    self._spec = module.__spec__
    return module

  def exec_module(self, module):
    # Executed at its new home already; the import system set its __spec__
    # to the old path's: put the real one back.
    module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
  """Finds `segment_anything_tfds.<old>` for the modules that moved."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    prefix, _, old = fullname.rpartition('.')
    if prefix != PACKAGE or old not in MOVED:
      return None
    return importlib.util.spec_from_loader(fullname, _Loader(old))


def install() -> None:
  """Puts the finder on `sys.meta_path` once."""
  if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
