"""A quiet HTTP server on 127.0.0.1 for the benchmarks' tars."""

import contextlib
import functools
import http.server
import threading
import time

_CHUNK = 1 << 20


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  rate: float | None = None  # bytes/s per connection; None: as fast as it can

  def log_message(self, *args):
    pass

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
