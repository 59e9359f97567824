"""A quiet HTTP server on 127.0.0.1 for the benchmarks' tars."""

import contextlib
import functools
import http.server
import threading


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serve(directory: str, *, threaded: bool = False):
  """Serves `directory`; one request at a time unless `threaded`.

  One at a time is what TFDS's builtin builder needs: its extractor deadlocks
  when 4 x cores downloads finish at once.
  """
  handler = functools.partial(_QuietHandler, directory=directory)
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
