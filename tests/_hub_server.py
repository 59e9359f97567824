"""A Hugging Face Hub stand-in on 127.0.0.1, and its CDN on another port.

It answers what huggingface_hub (2.4.0) and this package send:

  GET  /api/datasets/OWNER/REPO/revision/REV    the repo's info: its commit
  GET  /api/datasets/OWNER/REPO/tree/REV[/PATH]?recursive=..&expand=..
                                                one folder, `page_size`
                                                entries per page, the next
                                                page in a `Link` header
  HEAD, GET /datasets/OWNER/REPO/resolve/REV/PATH
                                                a 302 to the CDN (another
                                                loopback server: a
                                                `LoopbackServer`, with a
                                                signature-like query), as
                                                the Hub redirects to
                                                cas-bridge.xethub.hf.co

A gated repo (`token` given) answers resolve requests 401 without an
`Authorization: Bearer` header and 403 with another token, each with
`X-Error-Code: GatedRepo`, as the Hub does; with `gated_listing` its
listing too. Errors carry the Hub's `X-Error-Code` (RepoNotFound,
RevisionNotFound, EntryNotFound). Every request is kept in `requests` as
(method, path, headers).

`listing_fault` makes every tree request answer badly: 'stall' (no answer
until the server stops, at most 60 s) or 'endless' (empty pages, each
linking to the next).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import posixpath
import threading
import urllib.parse

import _kinds
from _loopback_server import LoopbackServer

SHA = 'c0ffee' + '0' * 34  # The commit `main` points to.


class HubServer:
  """`with HubServer({'o/r': {'data/sa_000000.tar': b'...'}}) as hub:`.

  Attributes:
    cdn: the `LoopbackServer` downloads are redirected to.
    requests: (method, path, headers) of every request to the Hub.
  """

  def __init__(self, repos: dict[str, dict[str, bytes]], *,
               token: str | None = None, gated_listing: bool = False,
               page_size: int = 2, listing_fault: str | None = None):
    _kinds.require_integration('the Hub stand-in (HubServer)')
    self.repos = repos
    self.listing_fault = listing_fault
    self._stopping = threading.Event()
    self.token = token
    self.gated_listing = gated_listing
    self.page_size = page_size
    self.requests: list[tuple[str, str, dict[str, str]]] = []
    self.cdn = LoopbackServer({
        posixpath.basename(path): data
        for files in repos.values() for path, data in files.items()})
    # Its URLs are signed for a GET (as S3's): a HEAD is refused.
    self.cdn.no_head.update(self.cdn.files)
    hub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):  # Quiet.
        pass

      def _send(self, status, body=b'', headers=()):
        self.send_response(status)
        for k, v in headers:
          self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
          self.wfile.write(body)

      def _error(self, status, code):
        self._send(status, json.dumps({'error': code}).encode(),
                   [('X-Error-Code', code), ('X-Error-Message', code),
                    ('Content-Type', 'application/json')])

      def _refusal(self):
        """401 or 403 for a gated repo, or None if the request may pass."""
        if hub.token is None:
          return None
        given = self.headers.get('Authorization')
        if given is None:
          return 401
        return None if given == f'Bearer {hub.token}' else 403

      def _json(self, value, headers=()):
        self._send(200, json.dumps(value).encode(),
                   [('Content-Type', 'application/json'), *headers])

      def _serve(self):
        hub.requests.append((self.command, self.path, dict(self.headers)))
        parts = urllib.parse.urlsplit(self.path)
        path = [urllib.parse.unquote(p) for p in parts.path.split('/')[1:]]
        if path[:2] == ['api', 'datasets'] and len(path) >= 6:
          self._api(path[2] + '/' + path[3], path[4], path[5], path[6:],
                    urllib.parse.parse_qs(parts.query))
        elif path[:1] == ['datasets'] and len(path) >= 6 and (
            path[3] == 'resolve'):
          self._resolve(path[1] + '/' + path[2], path[4], '/'.join(path[5:]))
        else:
          self._error(404, 'RepoNotFound')

      def _api(self, repo, what, rev, rest, query):
        files = hub.repos.get(repo)
        if files is None:
          return self._error(404, 'RepoNotFound')
        if hub.gated_listing and (status := self._refusal()):
          return self._error(status, 'GatedRepo')
        if rev not in ('main', SHA):
          return self._error(404, 'RevisionNotFound')
        if what == 'revision':
          return self._json({'id': repo, 'sha': SHA, 'private': False,
                             'gated': 'auto' if hub.token else False})
        if what != 'tree':
          return self._error(404, 'RepoNotFound')
        entries = _children(files, '/'.join(rest))
        if entries is None:
          return self._error(404, 'EntryNotFound')
        cursor = int(query.get('cursor', ['0'])[0])
        if hub.listing_fault == 'stall':
          hub._stopping.wait(60)  # pylint: disable=protected-access
          return None
        if hub.listing_fault == 'endless':
          nxt = urllib.parse.urlsplit(self.path)._replace(
              query=f'cursor={cursor + 1}').geturl()
          return self._json([], [('Link', f'<{hub.address}{nxt}>; rel="next"')])
        page = entries[cursor:cursor + hub.page_size]
        headers = []
        if cursor + hub.page_size < len(entries):
          nxt = urllib.parse.urlsplit(self.path)._replace(
              query=f'recursive=False&expand=False&cursor='
                    f'{cursor + hub.page_size}').geturl()
          headers.append(('Link', f'<{hub.address}{nxt}>; rel="next"'))
        self._json(page, headers)

      def _resolve(self, repo, rev, path):
        files = hub.repos.get(repo)
        if files is None or rev not in ('main', SHA):
          return self._error(404, 'RepoNotFound')
        if (status := self._refusal()) is not None:
          return self._error(status, 'GatedRepo')
        data = files.get(path)
        if data is None:
          return self._error(404, 'EntryNotFound')
        digest = hashlib.sha256(data).hexdigest()
        location = (f'{hub.cdn.address}/xet-bridge-us/{digest}/'
                    f'{posixpath.basename(path)}?X-Amz-Expires=3600'
                    '&X-Amz-Signature=5ig')
        self._send(302, b'', [('Location', location),
                              ('X-Linked-Size', str(len(data))),
                              ('X-Linked-Etag', f'"{digest}"'),
                              ('X-Repo-Commit', SHA)])

      def do_GET(self):  # pylint: disable=invalid-name
        self._serve()

      def do_HEAD(self):  # pylint: disable=invalid-name
        self._serve()

    self._httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self._httpd.daemon_threads = True
    self._thread = None

  @property
  def address(self) -> str:
    return f'http://127.0.0.1:{self._httpd.server_address[1]}'

  def resolve_url(self, repo: str, path: str, rev: str = 'main') -> str:
    return f'{self.address}/datasets/{repo}/resolve/{rev}/{path}'

  def start(self) -> 'HubServer':
    self.cdn.start()
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={'poll_interval': 0.05},
                                    daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stopping.set()
    self._httpd.shutdown()
    self._httpd.server_close()
    if self._thread is not None:
      self._thread.join(5)
    self.cdn.stop()

  def __enter__(self) -> 'HubServer':
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def _children(files: dict[str, bytes], folder: str) -> list[dict] | None:
  """The tree API's entries of `folder` (files and subfolders), or None."""
  prefix = f'{folder}/' if folder else ''
  out: dict[str, dict] = {}
  for path, data in sorted(files.items()):
    if not path.startswith(prefix):
      continue
    head, _, rest = path[len(prefix):].partition('/')
    if rest:
      out.setdefault(head, {'type': 'directory', 'oid': '0' * 40,
                            'size': 0, 'path': prefix + head})
    else:
      digest = hashlib.sha256(data).hexdigest()
      out[head] = {'type': 'file', 'oid': hashlib.sha1(data).hexdigest(),
                   'size': len(data), 'path': path,
                   'lfs': {'oid': digest, 'size': len(data),
                           'pointerSize': 134}}
  if not out and folder:
    return None
  return list(out.values())
