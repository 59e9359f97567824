"""HTTP(S) with retries, and a seekable file over HTTP Range requests.

Standard library only (`http.client`), with kept-alive connections and
redirects followed. Retried, with exponential backoff: 5xx, 408, 429,
timeouts, connection resets and bodies cut short. Not retried: a 403 (a
signed link that expired or was revoked: `LinkExpiredError`), a 404 and other
4xx (`HttpError`).
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import logging
import random
import re
import socket
import ssl
import time
import urllib.parse
from typing import Callable, TypeVar

from segment_anything_tfds import errors
from segment_anything_tfds import links as links_lib

_T = TypeVar('_T')
USER_AGENT = 'segment_anything_tfds'
_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE_RE = re.compile(r'^bytes (\d+)-(\d+)/(\d+|\*)$')


class HttpError(IOError):
  """An HTTP failure that retrying will not fix, or retries ran out."""

  def __init__(self, message: str, *, status: int | None = None):
    super().__init__(message)
    self.status = status


class LinkExpiredError(HttpError, errors.LinksExpiredError):
  """A 403: the signed link expired or was revoked."""


class RetryableError(IOError):
  """A failure worth retrying: 5xx, timeout, reset, a body cut short."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """How hard to try: attempts without progress, backoff and timeouts.

  Attributes:
    max_attempts: consecutive failed attempts (without new bytes) before
      giving up.
    backoff: first wait in seconds; doubled per failure up to `max_backoff`,
      with ±25% jitter.
    max_backoff: longest wait in seconds.
    timeout: socket timeout in seconds for connecting and each read.
  """

  max_attempts: int = 8
  backoff: float = 1.0
  max_backoff: float = 60.0
  timeout: float = 60.0

  @classmethod
  def from_options(cls, options) -> 'RetryPolicy':
    """The policy of `options.DownloadOptions` (defaults if None)."""
    if options is None:
      return DEFAULT_RETRY
    return cls(max_attempts=options.retries, backoff=options.backoff,
               max_backoff=options.max_backoff, timeout=options.timeout)

  def wait(self, failures: int) -> float:
    delay = min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))
    return delay * random.uniform(0.75, 1.25)


DEFAULT_RETRY = RetryPolicy()
# Errors of the network while a body is read: retried. (Not every OSError:
# a full local disk must not be retried.)
NET_ERRORS = (socket.timeout, TimeoutError, ConnectionError,
              http.client.HTTPException, ssl.SSLError)
# Errors while connecting and sending a request (DNS, refused, reset): retried.
TRANSPORT_ERRORS = (*NET_ERRORS, OSError)


def expired_message(url: str, *, status: int | None = 403) -> str:
  what = f'HTTP {status}' if status else 'refused'
  exp = links_lib.expiry(url)
  since = (f'; its oe= says it expired {links_lib.format_time(exp)}'
           if exp is not None and exp < time.time() else '')
  return (
      f'{links_lib.redact(url)}: the server answered {what} (forbidden):'
      f' the signed link expired or was revoked{since}. Refresh the links'
      f' file: download a fresh {links_lib.LINKS_FILE_NAME} from'
      f' {links_lib.HOMEPAGE} and put it in manual_dir (finished tars are kept'
      ' and not downloaded again), or point its rows at a mirror, or put the'
      ' tars themselves in manual_dir.')


class Client:
  """One kept-alive connection per host; not thread-safe (one per thread)."""

  def __init__(self, retry: RetryPolicy = DEFAULT_RETRY):
    self.retry = retry
    self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
    self.requests = 0

  def close(self):
    for c in self._conns.values():
      c.close()
    self._conns.clear()

  def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
    key = (scheme, netloc)
    conn = self._conns.get(key)
    if conn is None:
      cls = (http.client.HTTPSConnection if scheme == 'https' else
             http.client.HTTPConnection)
      conn = cls(netloc, timeout=self.retry.timeout)
      self._conns[key] = conn
    return conn

  def _drop(self, scheme: str, netloc: str):
    conn = self._conns.pop((scheme, netloc), None)
    if conn is not None:
      conn.close()

  def request(self, method: str, url: str, headers: dict[str, str] | None = None
              ) -> http.client.HTTPResponse:
    """One request (redirects followed). The caller reads or closes the body.

    Raises:
      LinkExpiredError: on a 403.
      HttpError: on other 4xx, or too many redirects.
      RetryableError: on 5xx, 408, 429 or a transport error.
    """
    headers = {'User-Agent': USER_AGENT, **(headers or {})}
    for _ in range(10):
      parts = urllib.parse.urlsplit(url)
      target = parts.path or '/'
      if parts.query:
        target += '?' + parts.query
      conn = self._conn(parts.scheme, parts.netloc)
      try:
        self.requests += 1
        conn.request(method, target, headers=headers)
        resp = conn.getresponse()
      except TRANSPORT_ERRORS as e:
        self._drop(parts.scheme, parts.netloc)
        raise RetryableError(
            f'{links_lib.redact(url)}: {type(e).__name__}: {e}') from e
      if resp.status in _REDIRECTS and resp.getheader('Location'):
        resp.read()
        url = urllib.parse.urljoin(url, resp.getheader('Location'))
        continue
      if resp.status < 400:
        return resp
      try:
        resp.read()
      except TRANSPORT_ERRORS:
        self._drop(parts.scheme, parts.netloc)
      if resp.status == 403:
        raise LinkExpiredError(expired_message(url), status=403)
      if resp.status >= 500 or resp.status in (408, 429):
        raise RetryableError(
            f'{links_lib.redact(url)}: HTTP {resp.status} {resp.reason}')
      raise HttpError(
          f'{links_lib.redact(url)}: HTTP {resp.status} {resp.reason}',
          status=resp.status)
    raise HttpError(f'{links_lib.redact(url)}: too many redirects')

  def call(self, fn: Callable[[], _T], *, what: str,
           progress: Callable[[], int] | None = None) -> _T:
    """Runs `fn`, retrying `RetryableError`s and transport errors.

    `progress()`, if given, returns a count that grows when an attempt made
    headway; attempts that made some are not counted as failures.
    """
    failures = 0
    last = progress() if progress else 0
    while True:
      try:
        return fn()
      except (HttpError, LinkExpiredError):
        raise
      except (RetryableError, *NET_ERRORS) as e:
        now = progress() if progress else 0
        if now > last:
          failures, last = 0, now
        failures += 1
        if failures >= self.retry.max_attempts:
          raise HttpError(
              f'{what}: giving up after {failures} attempts without progress;'
              f' last error: {e}') from e
        delay = self.retry.wait(failures)
        msg = str(e) if str(e).startswith(what) else f'{what}: {e}'
        logging.warning('%s; retry %d/%d in %.1fs', msg, failures,
                        self.retry.max_attempts - 1, delay)
        time.sleep(delay)

  def size(self, url: str) -> int | None:
    """The Content-Length a HEAD reports, or None if it reports none."""
    def head():
      resp = self.request('HEAD', url)
      resp.read()
      length = resp.getheader('Content-Length')
      return int(length) if length and length.isdigit() else None
    return self.call(head, what=f'HEAD {links_lib.redact(url)}')


def content_range(resp: http.client.HTTPResponse) -> tuple[int, int, int | None]:
  """(first, last, total) of a 206's Content-Range; total None if `*`."""
  value = resp.getheader('Content-Range') or ''
  m = _CONTENT_RANGE_RE.match(value.strip())
  if not m:
    raise RetryableError(f'206 with a malformed Content-Range {value!r}')
  total = None if m.group(3) == '*' else int(m.group(3))
  return int(m.group(1)), int(m.group(2)), total


class RangeFile(io.RawIOBase):
  """A read-only, seekable file over HTTP Range requests, nothing on disk.

  Each read past the cached block fetches `block_size` bytes (or the read's
  size if larger) at the current position, so indexing a tar costs about
  one request per member skipped and reading a member one request.

  Attributes:
    size: the object's length, from a HEAD (or given).
  """

  def __init__(self, url: str, *, size: int | None = None,
               retry: RetryPolicy | None = None, options=None,
               block_size: int = 1 << 20, name: str | None = None):
    super().__init__()
    retry = retry or RetryPolicy.from_options(options)
    self.url = url
    self.name = name or links_lib.redact(url)
    self._client = Client(retry)
    self._block_size = block_size
    self._pos = 0
    self._buf = b''
    self._buf_start = 0
    self.size = size if size is not None else self._head_size()

  def _head_size(self) -> int:
    size = self._client.size(self.url)
    if size is None:
      resp = self._client.call(
          lambda: self._client.request('GET', self.url, {'Range': 'bytes=0-0'}),
          what=self.name)
      resp.read()
      if resp.status != 206:
        raise HttpError(f'{self.name}: the server reports no size and does'
                        ' not serve Range requests; it cannot be streamed')
      size = content_range(resp)[2]
      if size is None:
        raise HttpError(f'{self.name}: the server reports no size')
    return size

  @property
  def requests(self) -> int:
    return self._client.requests

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    if whence == io.SEEK_SET:
      pos = offset
    elif whence == io.SEEK_CUR:
      pos = self._pos + offset
    elif whence == io.SEEK_END:
      pos = self.size + offset
    else:
      raise ValueError(f'bad whence {whence}')
    if pos < 0:
      raise OSError(f'{self.name}: seek to negative position {pos}')
    self._pos = pos
    return pos

  def _fetch(self, start: int, length: int) -> bytes:
    end = min(self.size, start + length) - 1
    def get():
      resp = self._client.request(
          'GET', self.url, {'Range': f'bytes={start}-{end}'})
      try:
        if resp.status == 206:
          first, _, _ = content_range(resp)
          if first != start:
            raise RetryableError(f'asked for byte {start}, got {first}')
          data = resp.read()
        elif resp.status == 200:  # Range ignored: take our slice of it all.
          logging.warning('%s: the server ignores Range requests; reading the'
                          ' whole object to serve bytes %d-%d', self.name,
                          start, end)
          data = resp.read()[start:end + 1]
        else:
          raise HttpError(f'{self.name}: unexpected HTTP {resp.status}')
      except NET_ERRORS as e:
        self._client.close()
        raise RetryableError(f'{self.name}: body cut: {e}') from e
      if len(data) != end - start + 1:
        raise RetryableError(f'{self.name}: got {len(data)} of'
                             f' {end - start + 1} bytes at {start}')
      return data
    return self._client.call(get, what=f'{self.name} @{start}')

  def readinto(self, b) -> int:
    n = len(b)
    if n == 0 or self._pos >= self.size:
      return 0
    offset = self._pos - self._buf_start
    if not 0 <= offset < len(self._buf):
      self._buf = self._fetch(self._pos, max(n, self._block_size))
      self._buf_start, offset = self._pos, 0
    chunk = self._buf[offset:offset + n]
    b[:len(chunk)] = chunk
    self._pos += len(chunk)
    return len(chunk)

  def read(self, size: int = -1) -> bytes:
    if size is None or size < 0:
      size = max(0, self.size - self._pos)
    out = bytearray()
    while len(out) < size:
      got = bytearray(size - len(out))
      n = self.readinto(memoryview(got))
      if not n:
        break
      out += got[:n]
    return bytes(out)

  def close(self):
    self._client.close()
    super().close()
