"""Tests by kind: what only an `integration` test may start.

A test that starts a server (HTTP on loopback, the GCS emulator, the Hub
stand-in), a Beam worker pool, tf.data service or Keras training is marked
`@pytest.mark.integration`, so that `pytest -m "not integration"` is a fast
loop. The marking cannot be forgotten: conftest.py records here the test
pytest is running (its fixtures' setup and teardown included, whatever their
scope), and whatever starts one of those calls `require_integration` first,
which fails a test that is not marked, before anything starts.

The helpers (_loopback_server, _gcs_server, _hub_server, _worker_pool) call
it themselves; conftest.py adds the calls to `socket.listen` (any other
server), to tf.data service's servers and to Keras' training loops.

Outside pytest (benchmarks/ use the helpers too) nothing is checked.
"""

from __future__ import annotations

import functools
import socket
import sys

MARKER = 'integration'

# The pytest item running now, or None outside a test.
current_item = None


def require_integration(what: str) -> None:
  """Fails the running test if it starts `what` without the marker.

  With pytest.fail: its exception is no Exception, so no `except Exception`
  on the way (a server thread, the package's retries) can swallow it.
  """
  item = current_item
  if item is None or item.get_closest_marker(MARKER) is not None:
    return
  import pytest  # pylint: disable=g-import-not-at-top
  pytest.fail(
      f'{item.nodeid} starts {what}: mark it @pytest.mark.{MARKER} (or its'
      f' module `pytestmark = pytest.mark.{MARKER}`), so that'
      f' `pytest -m "not {MARKER}"` stays a fast loop')


def _guarded(fn, what: str):
  """`fn`, first calling require_integration(what)."""
  if getattr(fn, '_requires_integration', False):
    return fn

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    require_integration(what)
    return fn(*args, **kwargs)

  wrapper._requires_integration = True  # pylint: disable=protected-access
  return wrapper


def _guard_socket() -> None:
  socket.socket.listen = _guarded(socket.socket.listen,
                                  'a server (a listening socket)')


def _guard_tensorflow() -> None:
  tf = sys.modules['tensorflow']
  service = tf.data.experimental.service
  for cls in (service.DispatchServer, service.WorkerServer):
    # Before the object exists: one whose __init__ failed would complain
    # from __del__ (it stops a server it never made).
    assert cls.__new__ is object.__new__, cls
    cls.__new__ = staticmethod(
        _guarded_new(f'tf.data service ({cls.__name__})'))


def _guarded_new(what: str):
  """A __new__ for a class whose own is object's: checks, then allocates."""

  def new(cls, *args, **kwargs):  # pylint: disable=unused-argument
    require_integration(what)
    return object.__new__(cls)

  return new


def _guard_keras() -> None:
  keras = sys.modules['keras']
  # The backend's trainer holds the loops; overrides (KerasHub's) call them.
  for cls in keras.Model.__mro__:
    for name in ('fit', 'train_on_batch'):
      if name in vars(cls):
        setattr(cls, name, _guarded(vars(cls)[name],
                                    f'Keras training ({name})'))


_installed: set[str] = set()


def install_guards() -> None:
  """Guards socket.listen, and TF's and Keras' once they are imported.

  Called before each test: a module imported since is guarded from then on.
  """
  for module, install in (('socket', _guard_socket),
                          ('tensorflow', _guard_tensorflow),
                          ('keras', _guard_keras)):
    if module not in _installed and module in sys.modules:
      install()
      _installed.add(module)
