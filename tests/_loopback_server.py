"""An HTTP server on 127.0.0.1 for the tests, with injectable faults.

Serves `files` (name -> bytes) at `/<prefix>/<name>?<any query>`, with HEAD,
Range (`bytes=a-` and `bytes=a-b`) and keep-alive. A signed link whose `oe=`
hex time is past gets a 403, as the SA-1B CDN does. Faults are queued per
file name and each GET consumes one:

  ('status', 500)         answer that status
  ('cut', n)              announce the full length, send n bytes, hang up
  ('ignore_range', None)  answer 200 with the whole body, whatever the Range
  ('ignore_range_cut', n) both: a 200 with the whole length, cut after n bytes

Every request is logged as (method, name, Range header, status).
"""

from __future__ import annotations

import collections
import http.server
import re
import threading
import time
import urllib.parse

_RANGE_RE = re.compile(r'^bytes=(\d+)-(\d*)$')


class LoopbackServer:
  """`with LoopbackServer(files) as srv:` ... `srv.url('sa_000000.tar')`."""

  def __init__(self, files: dict[str, bytes] | None = None, *,
               honour_expiry: bool = True):
    self.files = dict(files or {})
    self.faults: dict[str, collections.deque] = collections.defaultdict(
        collections.deque)
    self.log: list[tuple[str, str, str | None, int]] = []
    self.honour_expiry = honour_expiry
    self._lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # Quiet.
        pass

      def _serve(self, head: bool):
        parts = urllib.parse.urlsplit(self.path)
        name = parts.path.rsplit('/', 1)[-1]
        query = urllib.parse.parse_qs(parts.query)
        rng = self.headers.get('Range')
        fault = None
        if not head:
          with server._lock:  # pylint: disable=protected-access
            if server.faults[name]:
              fault = server.faults[name].popleft()
        data = server.files.get(name)
        status = 200
        if server.honour_expiry and 'oe' in query and int(
            query['oe'][0], 16) < time.time():
          status = 403
        elif fault and fault[0] == 'status':
          status = fault[1]
        elif data is None:
          status = 404
        server.log.append((self.command, name, rng, status))
        if status != 200:
          body = f'error {status}\n'.encode()
          self.send_response(status)
          self.send_header('Content-Length', str(len(body)))
          self.end_headers()
          if not head:
            self.wfile.write(body)
          return
        start, end = 0, len(data) - 1
        ignore = fault is not None and fault[0] in ('ignore_range',
                                                    'ignore_range_cut')
        m = _RANGE_RE.match(rng or '')
        if m and not ignore:
          start = int(m.group(1))
          end = min(end, int(m.group(2))) if m.group(2) else end
          if start >= len(data):
            server.log[-1] = (self.command, name, rng, 416)
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(data)}')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
          self.send_response(206)
          self.send_header('Content-Range',
                           f'bytes {start}-{end}/{len(data)}')
          server.log[-1] = (self.command, name, rng, 206)
        else:
          self.send_response(200)
        body = data[start:end + 1]
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        if head:
          return
        if fault and fault[0] in ('cut', 'ignore_range_cut'):
          self.wfile.write(body[:fault[1]])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(body)

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

  def add_fault(self, name: str, kind: str, arg=None):
    self.faults[name].append((kind, arg))

  def start(self) -> 'LoopbackServer':
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={'poll_interval': 0.05},
                                    daemon=True)
    self._thread.start()
    return self

  def stop(self):
    self._httpd.shutdown()
    self._httpd.server_close()
    if self._thread is not None:
      self._thread.join(5)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
