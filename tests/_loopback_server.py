"""An HTTP server on 127.0.0.1 for the tests, with injectable faults.

Serves `files` (name -> bytes) at `/<prefix>/<name>?<any query>`, with HEAD,
Range (`bytes=a-` and `bytes=a-b`) and keep-alive. A signed link whose `oe=`
hex time is past gets a 403, as the SA-1B CDN does. Faults are queued per
file name and each GET consumes one:

  ('status', 500)         answer that status
  ('retry_after', (503, '1'))  answer that status with that Retry-After
  ('cut', n)              announce the full length, send n bytes, hang up
  ('ignore_range', None)  answer 200 with the whole body, whatever the Range
  ('ignore_range_cut', n) both: a 200 with the whole length, cut after n bytes
  ('overstate', k)        announce k bytes more than the body, send the body,
                          hang up (the body looks cut; a resume past the end
                          gets a 416)
  ('no_length_cut', n)    a 200 without Content-Length: n bytes, then hang up
                          (the end of the connection is the end of the body)
  ('pause', (n, event))   send n bytes, wait (at most 60 s) for the
                          `threading.Event`, then send the rest
  ('then_serve', data)    answer as usual; every later request of the name
                          gets `data` (a source that changes while read)

Lasting behaviours, per file name, for every request:

  server.redirects[name] = location   a 302 to `location`
  server.no_head.add(name)            a 405 to HEAD requests
  server.endless.add(name)            a 200 without Content-Length whose body
                                      never ends (it stops after
                                      `endless_cap` bytes, or when the client
                                      hangs up), whatever the Range
  server.answers[name] = (status, [(header, value), ...])
                                      that answer, without a body, to every
                                      request (HEAD and GET)
  server.content_ranges[name] = 'bytes {start}-5/{size}'
                                      a 206's Content-Range header, formatted
                                      with the Range asked for and the size
                                      (the body is still the bytes asked for)

Every request is logged as (method, name, Range header, status, target),
where target is the request line's URL: a proxy gets the absolute URL
(`http://host/path`), so the server also stands in for a forward proxy.
`server.headers` holds (method, target, headers) of every request, as
received (e.g. to check that no credential reached it).
`server.sent[name]` counts the body bytes handed to clients for a file.

`HostileServer` is a raw-socket server for what `http.server` cannot send:
answers that trickle, or never end.
"""

from __future__ import annotations

import collections
import http.server
import re
import socket
import threading
import time
import urllib.parse

import _kinds

_RANGE_RE = re.compile(r'^bytes=(\d+)-(\d*)$')
_CHUNK = 64 << 10


class LoopbackServer:
  """`with LoopbackServer(files) as srv:` ... `srv.url('sa_000000.tar')`."""

  def __init__(self, files: dict[str, bytes] | None = None, *,
               honour_expiry: bool = True, endless_cap: int = 256 << 20):
    _kinds.require_integration('an HTTP server (LoopbackServer)')
    self.files = dict(files or {})
    self.faults: dict[str, collections.deque] = collections.defaultdict(
        collections.deque)
    self.redirects: dict[str, str] = {}
    self.endless: set[str] = set()
    self.no_head: set[str] = set()
    self.answers: dict[str, tuple[int, list[tuple[str, str]]]] = {}
    self.content_ranges: dict[str, str] = {}
    self.endless_cap = endless_cap
    self.endless_sent = 0
    self.sent: collections.Counter = collections.Counter()
    self.log: list[tuple[str, str, str | None, int, str]] = []
    self.headers: list[tuple[str, str, dict[str, str]]] = []
    self.honour_expiry = honour_expiry
    self._lock = threading.Lock()
    self._stopping = threading.Event()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # Quiet.
        pass

      def _log(self, name, rng, status):
        server.log.append((self.command, name, rng, status, self.path))

      def _write(self, name, data):
        """Writes a body, counting the bytes handed to the socket.

        Counted before each write: a client that has read the bytes must
        find them counted (counting after the write raced with it). A write
        the client hangs up on is counted too, so `sent` bounds from above.
        """
        for i in range(0, len(data), _CHUNK):
          with server._lock:  # pylint: disable=protected-access
            server.sent[name] += len(data[i:i + _CHUNK])
          self.wfile.write(data[i:i + _CHUNK])

      def _status(self, status, head, extra=()):
        body = f'error {status}\n'.encode()
        self.send_response(status)
        for k, v in extra:
          self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if not head:
          self.wfile.write(body)

      def _answer(self, name, rng, status, headers):
        self._log(name, rng, status)
        self.send_response(status)
        for k, v in headers:
          self.send_header(k, v)
        self.send_header('Connection', 'close')
        self.end_headers()
        self.close_connection = True

      def _endless(self, name, rng, head):
        self._log(name, rng, 200)
        self.send_response(200)
        self.send_header('Connection', 'close')
        self.end_headers()
        self.close_connection = True
        if head:
          return
        chunk = b'\0' * _CHUNK
        sent = 0
        try:
          stopping = server._stopping  # pylint: disable=protected-access
          while sent < server.endless_cap and not stopping.is_set():
            self.wfile.write(chunk)
            sent += len(chunk)
        except OSError:  # The client hung up.
          pass
        finally:
          server.endless_sent += sent

      def _serve(self, head: bool):
        server.headers.append((self.command, self.path, dict(self.headers)))
        parts = urllib.parse.urlsplit(self.path)
        name = parts.path.rsplit('/', 1)[-1]
        query = urllib.parse.parse_qs(parts.query)
        rng = self.headers.get('Range')
        if name in server.redirects:
          self._log(name, rng, 302)
          self._status(302, head, [('Location', server.redirects[name])])
          return
        if name in server.endless:
          self._endless(name, rng, head)
          return
        if name in server.answers:
          self._answer(name, rng, *server.answers[name])
          return
        if head and name in server.no_head:
          self._log(name, rng, 405)
          self._status(405, head)
          return
        fault = None
        if not head:
          with server._lock:  # pylint: disable=protected-access
            if server.faults[name]:
              fault = server.faults[name].popleft()
        data = server.files.get(name)
        status = 200
        extra = []
        if server.honour_expiry and 'oe' in query and int(
            query['oe'][0], 16) < time.time():
          status = 403
        elif fault and fault[0] == 'status':
          status = fault[1]
        elif fault and fault[0] == 'retry_after':
          status = fault[1][0]
          extra.append(('Retry-After', fault[1][1]))
        elif data is None:
          status = 404
        self._log(name, rng, status)
        if status != 200:
          self._status(status, head, extra)
          return
        start, end = 0, len(data) - 1
        ignore = fault is not None and fault[0] in ('ignore_range',
                                                    'ignore_range_cut')
        m = _RANGE_RE.match(rng or '')
        if m and not ignore:
          start = int(m.group(1))
          end = min(end, int(m.group(2))) if m.group(2) else end
          if start >= len(data):
            server.log[-1] = server.log[-1][:3] + (416, self.path)
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(data)}')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
          self.send_response(206)
          self.send_header('Content-Range', server.content_ranges.get(
              name, 'bytes {start}-{end}/{size}').format(
                  start=start, end=end, size=len(data)))
          server.log[-1] = server.log[-1][:3] + (206, self.path)
        else:
          self.send_response(200)
        body = memoryview(data)[start:end + 1]  # No copy: tests bound memory.
        kind = fault[0] if fault else None
        if kind == 'then_serve':  # This answer has the bytes it had; the
          server.files[name] = fault[1]  # next ones get these.
        if kind == 'no_length_cut':
          self.send_header('Connection', 'close')
        elif kind == 'overstate':
          self.send_header('Content-Length', str(len(body) + fault[1]))
        else:
          self.send_header('Content-Length', str(len(body)))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        if head:
          return
        if kind in ('cut', 'ignore_range_cut', 'no_length_cut'):
          self._write(name, body[:fault[1]])
          self.wfile.flush()
          self.close_connection = True
          return
        if kind == 'overstate':
          self._write(name, body)
          self.wfile.flush()
          self.close_connection = True
          return
        if kind == 'pause':
          n, event = fault[1]
          self._write(name, body[:n])
          self.wfile.flush()
          event.wait(60)
          body = body[n:]
        try:
          self._write(name, body)
        except OSError:  # The client hung up.
          self.close_connection = True

      def do_GET(self):  # pylint: disable=invalid-name
        self._serve(head=False)

      def do_HEAD(self):  # pylint: disable=invalid-name
        self._serve(head=True)

    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = None

  @property
  def port(self) -> int:
    return self._httpd.server_address[1]

  @property
  def address(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  def url(self, name: str, *, oe: int | None = None, sig: str = 'sig1',
          prefix: str = 'm1/v/t6') -> str:
    """A CDN-like link; `oe` (unix time) defaults to a week from now."""
    oe = int(time.time()) + 7 * 86400 if oe is None else oe
    return (f'http://127.0.0.1:{self.port}/{prefix}/{name}'
            f'?ccb=10-5&oh=00_{sig}&oe={oe:X}&_nc_sid=0fdd5c')

  def mirror_url(self, name: str) -> str:
    return f'http://127.0.0.1:{self.port}/mirror/{name}'

  def gets(self, name: str | None = None) -> list[tuple]:
    return [e for e in self.log
            if e[0] == 'GET' and (name is None or e[1] == name)]

  def add_fault(self, name: str, kind: str, arg=None, times: int = 1):
    for _ in range(times):
      self.faults[name].append((kind, arg))

  def start(self) -> 'LoopbackServer':
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={'poll_interval': 0.05},
                                    daemon=True)
    self._thread.start()
    return self

  def stop(self):
    self._stopping.set()
    self._httpd.shutdown()
    self._httpd.server_close()
    if self._thread is not None:
      self._thread.join(5)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def closed_port() -> int:
  """A port on 127.0.0.1 where nothing listens (connections are refused)."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def within(seconds: float, fn, *args, **kwargs):
  """Runs `fn` in a daemon thread; its result, or raises what it raised.

  Fails the test (AssertionError) if `fn` is still running after `seconds`:
  a hang or an unbounded loop becomes a failure, not a stuck test run.
  """
  box = {}

  def run():
    try:
      box['value'] = fn(*args, **kwargs)
    except BaseException as e:  # pylint: disable=broad-except
      box['error'] = e

  thread = threading.Thread(target=run, daemon=True)
  started = time.monotonic()
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise AssertionError(f'{getattr(fn, "__name__", fn)} still running after'
                         f' {seconds} s')
  box['seconds'] = time.monotonic() - started
  if 'error' in box:
    raise box['error']
  return box['value']


class HostileServer:
  """A server on 127.0.0.1 whose answers never end in reasonable time.

  Every connection gets the same behaviour (`kind`):

    'slow_headers'  the answer (status line and headers) one byte per
                    `interval` seconds: each byte well within a per-read
                    timeout, the whole far beyond any deadline.
    'continue'      `HTTP/1.1 100 Continue` again and again, every
                    `interval` seconds, and never a final answer.
    'slow_body'     a prompt, correct answer head (HEAD too: 200 with the
                    size; a Range GET gets a 206 and its Content-Range),
                    then the body one byte per `interval` seconds.

  A connection's handler stops when the client hangs up, when the server
  stops, or after `max_seconds`: nothing outlives the test. `requests`
  counts the requests received.
  """

  def __init__(self, kind: str, *, size: int = 1 << 20,
               interval: float = 0.2, max_seconds: float = 60):
    _kinds.require_integration('an HTTP server (HostileServer)')
    assert kind in ('slow_headers', 'continue', 'slow_body'), kind
    self.kind = kind
    self.size = size
    self.interval = interval
    self.max_seconds = max_seconds
    self.requests = 0
    self._stopping = threading.Event()
    self._listener = socket.create_server(('127.0.0.1', 0))
    self._listener.settimeout(0.05)
    self.port = self._listener.getsockname()[1]
    self._threads: list[threading.Thread] = []
    self._lock = threading.Lock()

  def url(self, name: str) -> str:
    return f'http://127.0.0.1:{self.port}/m/{name}'

  def _accept(self) -> None:
    while not self._stopping.is_set():
      try:
        conn, _ = self._listener.accept()
      except (socket.timeout, OSError):
        continue
      thread = threading.Thread(target=self._serve, args=(conn,),
                                daemon=True)
      with self._lock:
        self._threads.append(thread)
      thread.start()

  def _head(self, conn: socket.socket) -> tuple[str, str | None] | None:
    """(method, Range header) of the request, or None if there is none."""
    conn.settimeout(5)
    data = b''
    while b'\r\n\r\n' not in data and len(data) < 65536:
      piece = conn.recv(4096)
      if not piece:
        return None
      data += piece
    lines = data.split(b'\r\n\r\n', 1)[0].decode('latin-1').split('\r\n')
    headers = dict(l.split(':', 1) for l in lines[1:] if ':' in l)
    rng = {k.strip().lower(): v.strip() for k, v in headers.items()}.get(
        'range')
    return lines[0].split(' ', 1)[0], rng

  def _answer_head(self, method: str, rng: str | None) -> bytes:
    m = _RANGE_RE.match(rng or '') if method == 'GET' else None
    if m:
      start = int(m.group(1))
      end = min(self.size - 1, int(m.group(2))) if m.group(2) else (
          self.size - 1)
      return (f'HTTP/1.1 206 Partial Content\r\nContent-Range: bytes'
              f' {start}-{end}/{self.size}\r\nContent-Length:'
              f' {end - start + 1}\r\n\r\n').encode()
    return (f'HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n'
            'Accept-Ranges: bytes\r\n\r\n').encode()

  def _trickle(self, conn: socket.socket, data: bytes, repeat: bool) -> None:
    """Sends `data` one byte per interval (again and again if `repeat`)."""
    deadline = time.monotonic() + self.max_seconds
    i = 0
    while not self._stopping.is_set() and time.monotonic() < deadline:
      if i == len(data):
        if not repeat:
          return
        i = 0
      conn.sendall(data[i:i + 1])
      i += 1
      self._stopping.wait(self.interval)

  def _serve(self, conn: socket.socket) -> None:
    try:
      with conn:
        head = self._head(conn)
        if head is None:
          return
        with self._lock:
          self.requests += 1
        method, rng = head
        if self.kind == 'continue':
          self._trickle(conn, b'HTTP/1.1 100 Continue\r\n\r\n', repeat=True)
        elif self.kind == 'slow_headers':
          self._trickle(conn, self._answer_head(method, rng) + b'\0' * (
              self.size if method == 'GET' else 0), repeat=False)
        else:
          conn.sendall(self._answer_head(method, rng))
          if method == 'GET':
            self._trickle(conn, b'\0' * self.size, repeat=False)
    except OSError:  # The client hung up.
      pass

  def start(self) -> 'HostileServer':
    thread = threading.Thread(target=self._accept, daemon=True)
    with self._lock:
      self._threads.append(thread)
    thread.start()
    return self

  def stop(self) -> None:
    self._stopping.set()
    with self._lock:
      threads = list(self._threads)
    for thread in threads:
      thread.join(5)
    self._listener.close()

  def __enter__(self) -> 'HostileServer':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
