"""Old module paths (before the package had wings) still import, warning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import segment_anything_tfds
from segment_anything_tfds import _compat


@pytest.mark.parametrize('old', sorted(_compat.MOVED))
def test_an_old_module_path_is_the_new_module_with_a_warning(old):
  new = importlib.import_module(
      f'segment_anything_tfds.{_compat.MOVED[old]}')
  sys.modules.pop(f'segment_anything_tfds.{old}', None)
  vars(segment_anything_tfds).pop(old, None)  # Set by an earlier import.
  with pytest.warns(DeprecationWarning):
    assert getattr(segment_anything_tfds, old) is new
  with pytest.warns(DeprecationWarning, match=(
      f'segment_anything_tfds.{old} moved to segment_anything_tfds.'
      f'{_compat.MOVED[old]}')):
    module = importlib.import_module(f'segment_anything_tfds.{old}')
  assert module is new
  assert module.__spec__.name == new.__name__  # Its own spec, not the alias.


def test_the_public_api_at_the_root_does_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    from segment_anything_tfds import rle  # pylint: disable=g-import-not-at-top
    assert rle.__name__ == 'segment_anything_tfds.read.rle'
    assert segment_anything_tfds.load_sam_dataset.__module__ == (
        'segment_anything_tfds.read.sam_inputs')


def test_old_import_statements_work_in_a_fresh_process():
  code = ('import warnings; warnings.simplefilter("error");'
          'import segment_anything_tfds.read.sam_inputs as new;'
          'warnings.simplefilter("ignore");'
          'import segment_anything_tfds.sam_inputs as old;'
          'from segment_anything_tfds import tars, examples;'
          'assert old is new and tars.__name__.endswith("prepare.tars");'
          'assert examples.__name__.endswith("prepare.records");'
          'print("ok")')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == 'ok'


def test_no_module_of_the_package_imports_an_old_path():
  import ast  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(segment_anything_tfds.__file__).parent
  repo = root.parent
  found = []
  for path in [*root.rglob('*.py'), *(repo / 'tests').glob('*.py'),
               *(repo / 'benchmarks').glob('*.py'),
               *(repo / 'examples').glob('*.py')]:
    if path.name in ('_compat.py', 'test_compat.py'):
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module == 'segment_anything_tfds':
          names = [a.name for a in node.names]
        elif node.module.startswith('segment_anything_tfds.'):
          names = [node.module.split('.')[1]]
      elif isinstance(node, ast.Import):
        names = [a.name.split('.')[1] for a in node.names
                 if a.name.startswith('segment_anything_tfds.')]
      found += [f'{path.relative_to(repo)}: {n}' for n in names
                if n in _compat.MOVED]
  assert not found
