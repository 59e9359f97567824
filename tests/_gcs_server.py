"""A bucket that answers like GCS, on 127.0.0.1, for the tests.

`GcsServer` starts this file as a separate process (Beam workers and the
test process reach it alike). It runs:

* the `gcp-storage-emulator` (PyPI), in memory: the GCS JSON API, uploads
  and downloads. Clients that honour `STORAGE_EMULATOR_HOST` (gcsfs, and the
  google-cloud-storage client Beam's own gs:// file system uses) talk to it
  directly.
* a front for TensorFlow's gs:// file system (tf.io.gfile, and epath on a
  machine with TensorFlow), whose endpoints are fixed in TF's C++ code
  (`https://www.googleapis.com/storage/v1/`, `https://storage.googleapis.com`).
  TF's libcurl honours `https_proxy` and `CURL_CA_BUNDLE`, so the front is
  an HTTP proxy on loopback: it answers `CONNECT www.googleapis.com:443` (and
  `storage.googleapis.com`) with TLS, under a certificate of a CA made for
  this run, and passes the requests to the emulator. It forwards to the
  emulator only, whatever host is asked for: nothing leaves the machine.

Every request the emulator serves is logged (method, path, query, Range)
as a JSON line, so tests count requests per object.

  with GcsServer(tmp_dir) as gcs:
    gcs.create_bucket('sa1b')
    monkeypatch.setenv(...) for k, v in gcs.env().items()
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import select
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import _kinds

# The hosts TensorFlow's GCS file system calls (tsl gcs_file_system.cc).
GCS_HOSTS = ('www.googleapis.com', 'storage.googleapis.com')
START_TIMEOUT = 60.0
_IDLE = 30.0  # Seconds a piped connection may sit idle before it is closed.
_MAX_HEAD = 64 << 10


# ------------------------------------------------------------- certificates


def make_certificates(out_dir: pathlib.Path) -> tuple[str, str, str]:
  """A CA, and a certificate for GCS_HOSTS signed by it: (ca, cert, key)."""
  from cryptography import x509  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives import hashes  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives import serialization  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
  from cryptography.x509.oid import NameOID  # pylint: disable=g-import-not-at-top

  now = datetime.datetime.now(datetime.timezone.utc)
  name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

  def cert(subject, issuer, public_key, signing_key, *, ca, sans=()):
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer)
               .public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                              critical=True))
    if ca:
      builder = builder.add_extension(x509.KeyUsage(
          digital_signature=True, key_cert_sign=True, crl_sign=True,
          content_commitment=False, key_encipherment=False,
          data_encipherment=False, key_agreement=False, encipher_only=False,
          decipher_only=False), critical=True)
    if sans:
      builder = builder.add_extension(x509.SubjectAlternativeName(
          [x509.DNSName(s) for s in sans]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_cert = cert(name('segment_anything_tfds test CA'),
                 name('segment_anything_tfds test CA'), ca_key.public_key(),
                 ca_key, ca=True)
  key = ec.generate_private_key(ec.SECP256R1())
  leaf = cert(name(GCS_HOSTS[0]), ca_cert.subject, key.public_key(), ca_key,
              ca=False, sans=GCS_HOSTS)
  pem = serialization.Encoding.PEM
  paths = [out_dir / 'ca.pem', out_dir / 'gcs.pem', out_dir / 'gcs.key']
  paths[0].write_bytes(ca_cert.public_bytes(pem))
  paths[1].write_bytes(leaf.public_bytes(pem))
  paths[2].write_bytes(key.private_bytes(
      pem, serialization.PrivateFormat.PKCS8,
      serialization.NoEncryption()))
  return tuple(str(p) for p in paths)


# -------------------------------------------------------- the proxy front


def _read_head(sock) -> bytes:
  """The request line and headers (up to the blank line), bounded."""
  data = b''
  while b'\r\n\r\n' not in data:
    chunk = sock.recv(4096)
    if not chunk:
      break
    data += chunk
    if len(data) > _MAX_HEAD:
      raise ValueError('request head too large')
  return data


def _pipe(a, b) -> None:
  """Copies bytes both ways until either side closes or both sit idle."""
  socks = [a, b]
  while True:
    ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
    if not ready:
      ready, _, _ = select.select(socks, [], [], _IDLE)
      if not ready:
        return
    for s in ready:
      try:
        data = s.recv(1 << 16)
      except (ssl.SSLError, OSError):
        return
      if not data:
        return
      (b if s is a else a).sendall(data)


class _Front(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, port: int, emulator_port: int, tls: ssl.SSLContext):
    self.emulator_port = emulator_port
    self.tls = tls
    super().__init__(('127.0.0.1', port), _FrontHandler)


class _FrontHandler(socketserver.BaseRequestHandler):
  """A CONNECT (TLS) or absolute-URL proxy request, passed to the emulator."""

  def handle(self):
    server: _Front = self.server  # type: ignore[assignment]
    client = self.request
    client.settimeout(_IDLE)
    try:
      head = _read_head(client)
      line, _, rest = head.partition(b'\r\n')
      method, target, version = line.decode('latin-1').split(' ', 2)
      if method == 'CONNECT':
        host = target.rsplit(':', 1)[0]
        if host not in GCS_HOSTS:
          client.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
          return
        client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
        client = server.tls.wrap_socket(client, server_side=True)
        first = b''
      else:
        parts = urllib.parse.urlsplit(target)
        if parts.hostname not in GCS_HOSTS:
          client.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
          return
        origin = parts.path + (f'?{parts.query}' if parts.query else '')
        first = f'{method} {origin} {version}\r\n'.encode('latin-1') + rest
      with socket.create_connection(('127.0.0.1', server.emulator_port),
                                    timeout=_IDLE) as upstream:
        if first:
          upstream.sendall(first)
        _pipe(client, upstream)
    except (OSError, ValueError, ssl.SSLError):
      pass
    finally:
      try:
        client.close()
      except OSError:
        pass


# ------------------------------------------------------- the server process


def _log_requests(log_path: str) -> None:
  """Appends one JSON line per request the emulator answers."""
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  lock = threading.Lock()
  close = emulator.Response.close

  def logged_close(self):
    rh = self._handler  # pylint: disable=protected-access
    parts = urllib.parse.urlsplit(rh.path)
    record = {'method': rh.headers.get('x-http-method-override') or rh.command,
              'path': urllib.parse.unquote(parts.path),
              'query': parts.query, 'range': rh.headers.get('Range'),
              'status': int(self.status), 'time': round(time.time(), 3),
              'agent': rh.headers.get('User-Agent', '')}
    with lock, open(log_path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record) + '\n')
    self['Connection'] = 'close'  # One request per connection, as before.
    close(self)
    rh.close_connection = True

  emulator.Response.close = logged_close


def _read_chunked(rfile) -> bytes:
  data = b''
  while True:
    size = int(rfile.readline().split(b';')[0].strip() or b'0', 16)
    if not size:
      rfile.readline()  # The blank line after the last chunk.
      return data
    data += rfile.read(size)
    rfile.readline()


def _patch_emulator() -> None:
  """Two gaps of the emulator that TF's GCS client runs into, mended here.

  * TF's libcurl sends resumable upload bodies chunked, with a
    Content-Length too; the emulator reads Content-Length bytes of the
    chunked stream. HTTP says Transfer-Encoding wins (RFC 9112 6.3), as GCS
    does.
  * A media upload with an empty body (TF's directory markers, `name=dir/`)
    reads as None and crashes the handler; GCS stores an empty object.
  * TF's libcurl sends `Expect: 100-continue` with uploads and waits 1 s for
    the interim answer, which an HTTP/1.0 server never sends: the handler
    speaks HTTP/1.1 (so Python answers 100 Continue), one request per
    connection as before.
  * TF renames a folder only after `GET .../b/<bucket>/storageLayout`, which
    GCS answers for every bucket; the emulator answers 404. Here it answers
    as GCS does for a bucket without hierarchical namespace.
  """
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  read_raw = emulator._read_raw_data  # pylint: disable=protected-access

  def read_raw_data(handler):
    if handler.headers.get('Transfer-Encoding', '').lower() == 'chunked':
      return _read_chunked(handler.rfile)
    return read_raw(handler)

  emulator._read_raw_data = read_raw_data  # pylint: disable=protected-access
  emulator.RequestHandler.protocol_version = 'HTTP/1.1'
  read = emulator.Request.data.fget

  def data(self):
    value = read(self)
    if value is None and self.query.get('uploadType') == ['media']:
      return b''
    return value

  emulator.Request.data = property(data)

  def storage_layout(request, response, storage, *args, **kwargs):
    del args, kwargs
    name = request.params['bucket_name']
    if storage.get_bucket(name) is None:
      response.status = 404
      return
    response.json({'kind': 'storage#storageLayout', 'bucket': name,
                   'location': 'US', 'locationType': 'multi-region',
                   'hierarchicalNamespace': {'enabled': False}})

  emulator.HANDLERS = ((
      r'^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$',
      {emulator.GET: storage_layout}),) + tuple(emulator.HANDLERS)


def serve(args) -> None:
  """Runs the emulator and the front until killed."""
  logging_quiet()
  from gcp_storage_emulator import server as emulator  # pylint: disable=g-import-not-at-top
  _log_requests(args.log)
  _patch_emulator()
  gcs = emulator.create_server('127.0.0.1', args.emulator_port,
                               in_memory=True)
  gcs.start()
  tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  tls.load_cert_chain(args.cert, args.key)
  front = _Front(args.front_port, args.emulator_port, tls)
  threading.Thread(target=front.serve_forever, daemon=True).start()
  pathlib.Path(args.ready).write_text('ready\n')
  while True:  # Until the test kills this process group.
    time.sleep(3600)


def logging_quiet() -> None:
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger('gcp_storage_emulator').setLevel(logging.ERROR)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# ------------------------------------------------------- the tests' handle


class GcsServer:
  """The emulator and its TLS front in a child process (see the module)."""

  def __init__(self, work_dir: os.PathLike):
    self.dir = pathlib.Path(work_dir)
    self.dir.mkdir(parents=True, exist_ok=True)
    self.emulator_port = _free_port()
    self.front_port = _free_port()
    self.log_path = self.dir / 'requests.jsonl'
    self.ca, self._cert, self._key = make_certificates(self.dir)
    self._proc: subprocess.Popen | None = None

  @property
  def emulator_url(self) -> str:
    return f'http://127.0.0.1:{self.emulator_port}'

  def env(self) -> dict[str, str]:
    """Variables that point gcsfs, google-cloud-storage and TF at the server.

    TF: its libcurl takes the proxy and the CA from the environment; its
    auth provider takes a token from GOOGLE_AUTH_TOKEN_FOR_TESTING. Nothing
    may look for a GCE metadata server: NO_GCE_CHECK, and a closed loopback
    port as its address. `no_proxy` keeps every other loopback request (the
    tests' HTTP servers, Beam's gRPC) off the proxy.
    """
    front = f'http://127.0.0.1:{self.front_port}'
    closed = f'127.0.0.1:{_free_port()}'
    return {
        'STORAGE_EMULATOR_HOST': self.emulator_url,
        'https_proxy': front, 'http_proxy': front,
        'HTTPS_PROXY': front, 'HTTP_PROXY': front,
        'no_proxy': '127.0.0.1,localhost', 'NO_PROXY': '127.0.0.1,localhost',
        'CURL_CA_BUNDLE': self.ca,
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
        'NO_GCE_CHECK': 'true',
        'GCE_METADATA_HOST': closed, 'GCE_METADATA_IP': closed,
        'GOOGLE_CLOUD_PROJECT': 'test',
        # Fail fast instead of TF's ten retries over minutes.
        'GCS_RETRY_CONFIG_MAX_RETRIES': '2',
        'GCS_RETRY_CONFIG_INIT_DELAY_TIME_US': '50000',
        'GCS_RETRY_CONFIG_MAX_DELAY_TIME_US': '200000',
    }

  def start(self) -> 'GcsServer':
    _kinds.require_integration('the GCS emulator (GcsServer)')
    ready = self.dir / 'ready'
    log = open(self.dir / 'server.log', 'wb')  # pylint: disable=consider-using-with
    try:
      self._proc = subprocess.Popen(
          [sys.executable, __file__, '--emulator_port',
           str(self.emulator_port), '--front_port', str(self.front_port),
           '--cert', self._cert, '--key', self._key, '--log',
           str(self.log_path), '--ready', str(ready)],
          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
          start_new_session=True)
    finally:
      log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.exists():
      if self._proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise RuntimeError('the GCS emulator did not start: ' + (
            self.dir / 'server.log').read_text(errors='replace')[-2000:])
      time.sleep(0.05)
    return self

  def stop(self) -> None:
    if self._proc is None:
      return
    try:
      os.killpg(self._proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self._proc.wait(10)
    self._proc = None

  def __enter__(self) -> 'GcsServer':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  def _call(self, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> bytes:
    req = urllib.request.Request(self.emulator_url + path, data=body,
                                 method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
      return resp.read()

  def create_bucket(self, name: str) -> None:
    self._call('POST', '/storage/v1/b', json.dumps({'name': name}).encode(),
               {'Content-Type': 'application/json'})

  def upload(self, bucket: str, name: str, data: bytes) -> None:
    """Puts an object (the test's set-up; logged like any request)."""
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    self._call('POST', f'/upload/storage/v1/b/{bucket}/o?{query}', data,
               {'Content-Type': 'application/octet-stream'})

  def download(self, bucket: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe='')
    return self._call('GET', f'/download/storage/v1/b/{bucket}/o/{quoted}'
                      '?alt=media')

  def requests(self) -> list[dict]:
    """Every request served so far, in order."""
    if not self.log_path.exists():
      return []
    return [json.loads(l) for l in self.log_path.read_text().splitlines()
            if l.strip()]

  def clear_log(self) -> None:
    self.log_path.write_text('')


def main(argv=None) -> None:
  p = argparse.ArgumentParser()
  for flag in ('--emulator_port', '--front_port'):
    p.add_argument(flag, type=int, required=True)
  for flag in ('--cert', '--key', '--log', '--ready'):
    p.add_argument(flag, required=True)
  serve(p.parse_args(argv))


if __name__ == '__main__':
  main()


@contextlib.contextmanager
def serving(root: pathlib.Path, bucket: str):
  """A started `GcsServer` with `bucket` made and its environment set."""
  import pytest  # pylint: disable=g-import-not-at-top
  server = GcsServer(root)
  with server, pytest.MonkeyPatch.context() as mp:
    for key, value in server.env().items():
      mp.setenv(key, value)
    server.create_bucket(bucket)
    yield server
