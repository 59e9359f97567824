"""One module's import, run through a function of ours (`OnImport`).

Used twice: `logs` drops TensorFlow's load-time notes while `tensorflow` is
imported, and `tfds_seam` registers the builder once `tensorflow_datasets`
is. Asking where a module is (`importlib.util.find_spec`) loads nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Callable


class _Loader(importlib.abc.Loader):
  """Has `run` call the module's own loader."""

  def __init__(self, loader, run: Callable[[Callable[[], None]], None]):
    self.loader = loader
    self.run = run

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module):
    # The module sees its own loader, as if imported without this one.
    module.__loader__ = module.__spec__.loader = self.loader
    self.run(lambda: self.loader.exec_module(module))


class OnImport(importlib.abc.MetaPathFinder):
  """Finds module `name` as the next finders on `sys.meta_path` do; when it
  is loaded, `run(load)` is called, and must call `load()` once."""

  def __init__(self, name: str, run: Callable[[Callable[[], None]], None]):
    self.name = name
    self.run = run

  def find_spec(self, name, path=None, target=None):
    if name != self.name:
      return None
    for finder in sys.meta_path:
      find = getattr(finder, 'find_spec', None)
      spec = None if finder is self or find is None else find(name, path,
                                                              target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _Loader(spec.loader, self.run)
        return spec
    return None
