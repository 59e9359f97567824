"""A quiet HTTP server on 127.0.0.1 for the benchmarks' tars."""

import contextlib
import functools
import http.server
import os
import re
import threading
import time

_CHUNK = 1 << 20


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  rate: float | None = None  # bytes/s per connection; None: as fast as it can

  def log_message(self, *args):
    pass

  def send_head(self):
    """A `Range: bytes=A-[B]` request gets a 206 with those bytes (streamed
    builds read tars so); anything else, the whole file."""
    found = re.fullmatch(r'bytes=(\d+)-(\d*)',
                         (self.headers.get('Range') or '').strip())
    path = self.translate_path(self.path)
    if found is None or not os.path.isfile(path):
      return super().send_head()
    size = os.path.getsize(path)
    start = int(found[1])
    end = min(int(found[2]) if found[2] else size - 1, size - 1)
    if start > end:
      self.send_error(416)
      return None
    f = open(path, 'rb')  # pylint: disable=consider-using-with
    f.seek(start)
    self.send_response(206)
    self.send_header('Content-Type', 'application/x-tar')
    self.send_header('Content-Range', f'bytes {start}-{end}/{size}')
    self.send_header('Content-Length', str(end - start + 1))
    self.send_header('Accept-Ranges', 'bytes')
    self.end_headers()
    return _Part(f, end - start + 1)

  def copyfile(self, source, outputfile):
    if not self.rate:
      return super().copyfile(source, outputfile)
    start, sent = time.monotonic(), 0
    while chunk := source.read(_CHUNK):
      outputfile.write(chunk)
      sent += len(chunk)
      ahead = sent / self.rate - (time.monotonic() - start)
      if ahead > 0:
        time.sleep(ahead)


class _Part:
  """The first `left` bytes of an open file."""

  def __init__(self, f, left: int):
    self._f, self._left = f, left

  def read(self, n: int = -1) -> bytes:
    n = self._left if n is None or n < 0 else min(n, self._left)
    data = self._f.read(n)
    self._left -= len(data)
    return data

  def close(self) -> None:
    self._f.close()


@contextlib.contextmanager
def serve(directory: str, *, threaded: bool = False,
          rate: float | None = None):
  """Serves `directory`; one request at a time unless `threaded`; each
  answer at most `rate` bytes/s (None: no limit), like a real link.

  One at a time is what TFDS's builtin builder needs: its extractor deadlocks
  when 4 x cores downloads finish at once.
  """
  handler = functools.partial(
      type('_Handler', (_QuietHandler,), {'rate': rate}), directory=directory)
  cls = (http.server.ThreadingHTTPServer if threaded else
         http.server.HTTPServer)
  server = cls(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()
