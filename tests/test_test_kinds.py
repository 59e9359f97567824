"""Tests by kind: only a test marked `integration` may start a server.

`pytest -m "not integration"` is the fast loop. What starts a server (HTTP
on loopback, the GCS emulator, the Hub stand-in), a Beam worker pool,
tf.data service or Keras training fails a test that is not marked
(_kinds.py, conftest.py), before it starts. These tests are not marked: each
start below must fail them, and nothing must be left listening.
"""

from __future__ import annotations

import http.server
import socket
import urllib.request

import numpy as np
import pytest

import _kinds
from _gcs_server import GcsServer
from _hub_server import HubServer
from _loopback_server import HostileServer
from _loopback_server import LoopbackServer
from _worker_pool import WorkerPool

# Imported before the tests run: conftest.py guards them once imported.
tf = pytest.importorskip('tensorflow')
keras = pytest.importorskip('keras')

NOT_MARKED = (r'test_test_kinds\.py::.* starts .*: mark it'
              r' @pytest\.mark\.integration')


def _listening_socket():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    s.listen()


def _http_server():
  # socketserver closes its socket when activating it fails.
  http.server.HTTPServer(('127.0.0.1', 0),
                         http.server.BaseHTTPRequestHandler)


def _tf_data_service():
  tf.data.experimental.service.DispatchServer()


def _tf_data_service_worker():
  tf.data.experimental.service.WorkerServer(
      tf.data.experimental.service.WorkerConfig(
          dispatcher_address='localhost:1'))


def _keras_model():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer='sgd', loss='mse')
  return model


def _keras_fit():
  _keras_model().fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0)


def _keras_train_on_batch():
  _keras_model().train_on_batch(np.zeros((4, 2)), np.zeros((4, 1)))


STARTS = {
    'LoopbackServer': lambda tmp_path: LoopbackServer({}),
    'HostileServer': lambda tmp_path: HostileServer('slow_body'),
    'HubServer': lambda tmp_path: HubServer({}),
    'GcsServer': lambda tmp_path: GcsServer(tmp_path).start(),
    'WorkerPool': lambda tmp_path: WorkerPool(tmp_path).start(),
    'http.server': lambda tmp_path: _http_server(),
    'socket.listen': lambda tmp_path: _listening_socket(),
    'tf.data service dispatcher': lambda tmp_path: _tf_data_service(),
    'tf.data service worker': lambda tmp_path: _tf_data_service_worker(),
    'Keras fit': lambda tmp_path: _keras_fit(),
    'Keras train_on_batch': lambda tmp_path: _keras_train_on_batch(),
}


@pytest.mark.parametrize('start', sorted(STARTS))
def test_an_unmarked_test_cannot_start_a_server(start, tmp_path):
  with pytest.raises(pytest.fail.Exception, match=NOT_MARKED):
    STARTS[start](tmp_path)
  # Nothing was started: the check comes first.
  assert not list(tmp_path.glob('*.log'))


@pytest.mark.integration
def test_a_marked_test_can():
  with LoopbackServer({'sa_000000.tar': b'tar bytes'}) as srv:
    with urllib.request.urlopen(srv.url('sa_000000.tar'), timeout=10) as r:
      assert r.read() == b'tar bytes'


def test_outside_a_test_nothing_is_checked(monkeypatch):
  # As in benchmarks/, which start these helpers' servers outside pytest.
  monkeypatch.setattr(_kinds, 'current_item', None)
  _kinds.require_integration('anything')


def test_the_running_test_is_known(request):
  assert _kinds.current_item is request.node
  assert getattr(socket.socket.listen, '_requires_integration', False)
