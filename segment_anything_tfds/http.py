"""HTTP(S): the package's one client; seekable and sequential Range readers.

Downloads, HEAD probes (the build's and `check-links --probe`) and streamed
tars all go through `Client`, a `requests.Session` with:

* **Redirects** followed here, http/https only (a redirect to `ftp://` or
  `file://` is refused, naming the scheme), at most `MAX_REDIRECTS`.
* **Proxies** from `http_proxy`/`https_proxy`/`no_proxy` (requests reads the
  environment), or `DownloadOptions.proxies`, which win over it.
* **Retries** (`Client.retrying`), with the budget of `DownloadOptions`:
  5xx, 408, 429, timeouts, resets and bodies cut short are retried after
  `options.wait(failures)`, or the server's `Retry-After` (seconds or an HTTP
  date) up to `max_backoff`; at most `retries` failures in a row without
  progress, and `max_attempts` attempts in all. Not retried: a 403
  (`LinksExpiredError`), other 4xx, a refused connection and a host that does
  not resolve (`DownloadError` naming the host): those fail at once.
* **Bounded reads.** Bodies are streamed; nothing reads a body it does not
  know the end of into memory, and error pages are not read at all.

Only `errors.DownloadError` (and `LinksExpiredError`) reach callers;
`TransientError` lives inside `Client.retrying`.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import io
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Iterator, TypeVar

import requests
import urllib3

from segment_anything_tfds import errors
from segment_anything_tfds import links as links_lib
from segment_anything_tfds import options as options_lib

_T = TypeVar('_T')
USER_AGENT = 'segment_anything_tfds'
MAX_REDIRECTS = 10
CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r'^bytes (\d+)-(\d+)/(\d+|\*)$')


class TransientError(Exception):
  """A failure another attempt may fix: 5xx, 408, 429, timeout, reset, cut.

  Never escapes `Client.retrying`, which turns it into a `DownloadError`
  once the budget is spent.

  Attributes:
    retry_after: seconds the server asked to wait (`Retry-After`), or None.
  """

  def __init__(self, message: str, *, retry_after: float | None = None):
    super().__init__(message)
    self.retry_after = retry_after


class Cancelled(Exception):
  """The caller's cancel event was set (another download hit a 403)."""


# ------------------------------------------------------------ messages


def host_of(url: str) -> str:
  """`https://host:443/x?sig` -> `host:443`."""
  return urllib.parse.urlsplit(url).netloc or url


def _where(url: str) -> str:
  """A URL for messages: no query (signatures), any scheme."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme in links_lib.HTTP_SCHEMES:
    return links_lib.redact(url)
  return f'{parts.scheme}://{parts.netloc}{parts.path}'


def expired_message(url: str) -> str:
  """The one-line message of a 403: expired or revoked, and what to do."""
  exp = links_lib.expiry(url)
  since = (f'; its oe= says it expired {links_lib.format_time(exp)}'
           if exp is not None and exp < time.time() else '')
  return (f'{links_lib.redact(url)}: the server answered HTTP 403'
          f' (forbidden): the signed link expired or was revoked{since}. '
          + errors.refresh_hint())


def _causes(exc: BaseException) -> Iterator[BaseException]:
  """`exc` and what it wraps: causes, contexts, urllib3 reasons, args."""
  seen, todo = set(), [exc]
  while todo:
    e = todo.pop()
    if not isinstance(e, BaseException) or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, getattr(e, 'reason', None),
             *e.args]


def _root(exc: BaseException) -> str:
  """The innermost reason of `exc`, in a few words."""
  causes = list(_causes(exc))
  found = [e for e in causes if isinstance(e, OSError) and e.strerror]
  if found:
    e = found[-1]
    return f'{e.strerror} [errno {e.errno}]'
  for e in causes:
    if e.args and isinstance(e.args[0], str) and e.args[0].strip():
      return e.args[0].split('(Caused by', 1)[0].strip()
  return type(exc).__name__


def transport_error(exc: BaseException, url: str) -> Exception:
  """A failure to get an answer, as a `DownloadError` or a `TransientError`.

  Refused connections, hosts that do not resolve, bad certificates and bad
  URLs do not get better by retrying: `DownloadError`, naming the host.
  Timeouts, resets and cut bodies are transient.
  """
  where, host = links_lib.redact(url), host_of(url)
  causes = list(_causes(exc))
  proxied = any(isinstance(e, requests.exceptions.ProxyError)
                for e in causes)
  if proxied:
    host = f'the proxy for {host}'
  if any(isinstance(e, (socket.gaierror,
                        urllib3.exceptions.NameResolutionError))
         for e in causes):
    return errors.DownloadError(
        f'{where}: cannot resolve {host if proxied else "host " + host}:'
        f' {_root(exc)}; check the link (and the proxy settings, if any)')
  if any(isinstance(e, ConnectionRefusedError) for e in causes):
    return errors.DownloadError(
        f'{where}: connection refused by {host}: nothing serves that address'
        ' and port')
  if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes):
    return errors.DownloadError(
        f'{where}: the TLS certificate of {host} is not trusted:'
        f' {_root(exc)}')
  if isinstance(exc, (requests.exceptions.InvalidURL,
                      requests.exceptions.InvalidSchema,
                      requests.exceptions.MissingSchema,
                      urllib3.exceptions.LocationParseError)):
    return errors.DownloadError(f'{where}: not a usable URL: {_root(exc)}')
  if isinstance(exc, (requests.exceptions.Timeout,
                      urllib3.exceptions.TimeoutError, TimeoutError)):
    return TransientError(f'{where}: no answer from {host} in time'
                          f' ({_root(exc)})')
  return TransientError(f'{where}: {type(exc).__name__} talking to {host}:'
                        f' {_root(exc)}')


def retry_after(value: str | None, *, now: float | None = None
                ) -> float | None:
  """Seconds to wait from a `Retry-After` header (seconds or HTTP date)."""
  if not value:
    return None
  value = value.strip()
  if value.isdigit():
    return float(value)
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError, IndexError):
    return None
  if when is None:
    return None
  if when.tzinfo is None:  # HTTP dates are GMT.
    when = when.replace(tzinfo=datetime.timezone.utc)
  return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _transient_status(status: int) -> bool:
  return status >= 500 or status in (408, 429)


def status_error(resp: requests.Response, url: str) -> Exception:
  """The error a >= 400 answer means: transient, expired link, or final."""
  status, reason = resp.status_code, resp.reason or ''
  where = links_lib.redact(url)
  if status == 403:
    return errors.LinksExpiredError(expired_message(url))
  if _transient_status(status):
    return TransientError(
        f'{where}: HTTP {status} {reason}'.rstrip(),
        retry_after=retry_after(resp.headers.get('Retry-After')))
  return errors.DownloadError(f'{where}: HTTP {status} {reason}'.rstrip())


def content_length(resp: requests.Response) -> int | None:
  value = (resp.headers.get('Content-Length') or '').strip()
  return int(value) if value.isdigit() else None


def content_range(resp: requests.Response, url: str
                  ) -> tuple[int, int, int | None]:
  """(first, last, total) of a 206's Content-Range; total None if `*`."""
  value = (resp.headers.get('Content-Range') or '').strip()
  m = _CONTENT_RANGE_RE.match(value)
  if not m:
    raise TransientError(f'{links_lib.redact(url)}: a 206 with a malformed'
                         f' Content-Range {value!r:.80}')
  total = None if m.group(3) == '*' else int(m.group(3))
  return int(m.group(1)), int(m.group(2)), total


# ------------------------------------------------------------ bodies


def iter_body(resp: requests.Response, url: str,
              chunk: int = CHUNK) -> Iterator[bytes]:
  """The raw body (no content decoding) in chunks; a cut is transient.

  A body shorter than its Content-Length raises (urllib3 enforces it).
  """
  try:
    yield from resp.raw.stream(chunk, decode_content=False)
  except (urllib3.exceptions.HTTPError, requests.RequestException,
          OSError) as e:
    raise TransientError(f'{links_lib.redact(url)}: transfer cut:'
                         f' {_root(e)}') from None


def read_at_most(resp: requests.Response, url: str, limit: int) -> bytes:
  """Up to `limit` bytes of the body; the rest is never read."""
  out = bytearray()
  for piece in iter_body(resp, url, chunk=min(CHUNK, max(1, limit))):
    out += piece[:limit - len(out)]
    if len(out) >= limit:
      break
  return bytes(out)


# ------------------------------------------------------------ the client


class Client:
  """One `requests.Session` and the retry budget of `DownloadOptions`.

  Not thread-safe: one per thread (see `ClientPool`).
  """

  def __init__(self, options: options_lib.DownloadOptions | None = None):
    self.options = options or options_lib.DownloadOptions()
    self._session = requests.Session()  # trust_env: the *_proxy variables.
    self._session.headers.update({'User-Agent': USER_AGENT,
                                  'Accept-Encoding': 'identity'})
    self._proxies = (dict(self.options.proxies)
                     if self.options.proxies else None)

  def close(self) -> None:
    self._session.close()

  def __enter__(self) -> 'Client':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def send(self, method: str, url: str,
           headers: dict[str, str] | None = None) -> requests.Response:
    """One request, redirects followed; the final answer, any status.

    The body is not read: the caller reads (bounded) and closes it.

    Raises:
      errors.DownloadError: a refused connection, an unknown host, a
        redirect to another scheme or more than `MAX_REDIRECTS`.
      TransientError: a timeout or a reset.
    """
    first = url
    for _ in range(MAX_REDIRECTS + 1):
      _check_scheme(url, first)
      resp = self._send_once(method, url, headers)
      location = resp.headers.get('Location')
      if resp.status_code not in _REDIRECTS or not location:
        return resp
      resp.close()  # A redirect's body is never read.
      url = urllib.parse.urljoin(url, location)
      if resp.status_code == 303 and method != 'HEAD':
        method = 'GET'
    raise errors.DownloadError(
        f'{links_lib.redact(first)}: more than {MAX_REDIRECTS} redirects'
        f' (the last to {_where(url)})')

  def _send_once(self, method, url, headers) -> requests.Response:
    timeout = self.options.timeout
    try:
      return self._session.request(
          method, url, headers=headers, stream=True, allow_redirects=False,
          timeout=(timeout, timeout), proxies=self._proxies)
    except (requests.RequestException, urllib3.exceptions.HTTPError,
            OSError) as e:
      raise transport_error(e, url) from None

  def request(self, method: str, url: str,
              headers: dict[str, str] | None = None) -> requests.Response:
    """`send`; a >= 400 answer is raised as its error (`status_error`)."""
    resp = self.send(method, url, headers)
    if resp.status_code >= 400:
      resp.close()
      raise status_error(resp, url)
    return resp

  def head(self, url: str) -> tuple[int, int | None]:
    """(status, Content-Length) of a HEAD, transient failures retried.

    Any final status is returned (a 404 is an answer); a 5xx that lasts
    through the retry budget raises.
    """
    def attempt():
      with contextlib.closing(self.send('HEAD', url)) as resp:
        if _transient_status(resp.status_code):
          raise status_error(resp, url)
        return resp.status_code, content_length(resp)
    return self.retrying(attempt, what=f'HEAD {links_lib.redact(url)}')

  def retrying(self, attempt: Callable[[], _T], *, what: str,
               progress: Callable[[], int] | None = None,
               cancel: threading.Event | None = None) -> _T:
    """Runs `attempt()` until it returns, within the options' budget.

    `progress()`, if given, is the furthest point reached so far (e.g. the
    furthest byte ever written): a failed attempt that moved it on is not
    counted against `retries`. `max_attempts` bounds the attempts in all.

    Raises:
      errors.DownloadError: the budget is spent (naming `what`, the number
        of attempts and the last error), or a failure not worth retrying.
      Cancelled: `cancel` was set while waiting.
    """
    opts = self.options
    failures = 0
    best = progress() if progress else 0
    for n in range(1, opts.max_attempts + 1):
      try:
        return attempt()
      except TransientError as e:
        now = progress() if progress else 0
        if now > best:
          failures, best = 0, now
        failures += 1
        last = _without_prefix(str(e), what)
        if failures >= opts.retries or n >= opts.max_attempts:
          raise errors.DownloadError(
              f'{what}: gave up after {n} attempts ({failures} in a row'
              f' without progress); last error: {last}') from None
        delay = self._delay(failures, e.retry_after)
        logging.warning('%s: %s; attempt %d of at most %d in %.1f s', what,
                        last, n + 1, opts.max_attempts, delay)
        pause(delay, cancel)
    raise AssertionError('unreachable')  # The loop returns or raises.

  def _delay(self, failures: int, asked: float | None) -> float:
    delay = self.options.wait(failures)
    if asked is not None:
      delay = min(self.options.max_backoff, max(delay, asked))
    return delay


def _without_prefix(message: str, what: str) -> str:
  return message[len(what) + 2:] if message.startswith(what + ': ') else (
      message)


def pause(seconds: float, cancel: threading.Event | None = None) -> None:
  """Sleeps; raises `Cancelled` as soon as `cancel` is set."""
  if cancel is None:
    time.sleep(seconds)
  elif cancel.wait(seconds):
    raise Cancelled()


def _check_scheme(url: str, first: str) -> None:
  scheme = links_lib.scheme(url)
  if scheme in links_lib.HTTP_SCHEMES:
    return
  if url == first:
    raise errors.DownloadError(f'{_where(url)}: not an http(s) URL')
  raise errors.DownloadError(
      f'{links_lib.redact(first)}: redirected to a {scheme}:// URL'
      f' ({_where(url)}); only http:// and https:// redirects are followed')


class ClientPool:
  """One `Client` per thread, all closed together."""

  def __init__(self, options: options_lib.DownloadOptions | None = None):
    self.options = options
    self._local = threading.local()
    self._clients: list[Client] = []
    self._lock = threading.Lock()

  def get(self) -> Client:
    client = getattr(self._local, 'client', None)
    if client is None:
      client = self._local.client = Client(self.options)
      with self._lock:
        self._clients.append(client)
    return client

  def close(self) -> None:
    with self._lock:
      for c in self._clients:
        c.close()
      self._clients.clear()

  def __enter__(self) -> 'ClientPool':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ------------------------------------------------------------ Range files


def ignores_range_message(name: str, url: str) -> str:
  return (f'{name}: the server {host_of(url)} ignores Range requests (it'
          ' answered 200 with the whole object), so this tar cannot be'
          " streamed; use disk_mode='keep' (or 'delete') to download it")


class RangeFile(io.RawIOBase):
  """A read-only, seekable file over HTTP Range requests, nothing on disk.

  Each read past the cached block fetches `block_size` bytes (or the read's
  size if larger) at the current position, so indexing a tar costs about
  one request per member skipped and reading a member one request. A server
  that ignores Range fails at once (`DownloadError`), without reading its
  body.

  Attributes:
    size: the object's length, from a HEAD (or given).
  """

  def __init__(self, url: str, *, size: int | None = None,
               options: options_lib.DownloadOptions | None = None,
               block_size: int = 1 << 20, name: str | None = None):
    super().__init__()
    self.url = url
    self.name = name or links_lib.redact(url)
    self._client = Client(options)
    self._block_size = block_size
    self._pos = 0
    self._buf = b''
    self._buf_start = 0
    try:
      self.size = size if size is not None else self._probe_size()
    except BaseException:
      self._client.close()
      raise

  def _probe_size(self) -> int:
    status, size = self._client.head(self.url)
    if status == 403:
      raise errors.LinksExpiredError(expired_message(self.url))
    if status == 405:  # No HEAD here: ask for a byte instead.
      size = None
    elif status >= 400:
      raise errors.DownloadError(
          f'{self.name}: HEAD {links_lib.redact(self.url)}: HTTP {status}')
    if size is not None:
      return size
    # No size from HEAD: ask for one byte; the Content-Range has the total.
    _, total = self._client.retrying(
        lambda: self._get_range(0, 0), what=self.name)
    if total is None:
      raise errors.DownloadError(f'{self.name}: the server reports no size;'
                                 " it cannot be streamed (use disk_mode="
                                 "'keep')")
    return total

  def _get_range(self, start: int, end: int) -> tuple[bytes, int | None]:
    """Bytes start..end (inclusive) and the object's total, one request."""
    want = end - start + 1
    resp = self._client.request('GET', self.url,
                                {'Range': f'bytes={start}-{end}'})
    with contextlib.closing(resp):
      if resp.status_code == 200:
        raise errors.DownloadError(ignores_range_message(self.name, self.url))
      if resp.status_code != 206:
        raise errors.DownloadError(f'{self.name}: unexpected HTTP'
                                   f' {resp.status_code} to a Range request')
      first, _, total = content_range(resp, self.url)
      if first != start:
        raise TransientError(f'{self.name}: asked for byte {start}, got'
                             f' {first}')
      data = read_at_most(resp, self.url, want)
    if len(data) != want:
      raise TransientError(f'{self.name}: got {len(data)} of {want} bytes at'
                           f' {start}')
    return data, total

  def _fetch(self, start: int, length: int) -> bytes:
    end = min(self.size, start + length) - 1
    data, _ = self._client.retrying(lambda: self._get_range(start, end),
                                    what=f'{self.name} @{start}')
    return data

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


class RangeStream:
  """Sequential reads of an HTTP object from a position, in few requests.

  A request asks for the bytes from the position up to `stop` (moved on by
  `want`, and at least the read's size), so reading `[a, b)` after
  `want(b)` costs one request however many `read` calls it takes. A
  transfer cut short or timed out is resumed with a new Range request from
  the byte reached, within the options' retry budget. A `read(n)` holds at
  most `n` bytes; a server that ignores Range fails at once, unread.

  Attributes:
    size: the object's length (given: from the build's HEAD requests).
    requests: Range requests sent so far.
  """

  def __init__(self, url: str, *, start: int, size: int,
               options: options_lib.DownloadOptions | None = None,
               name: str | None = None):
    self.url = url
    self.name = name or links_lib.redact(url)
    self.size = size
    self.requests = 0
    self._client = Client(options)
    self._pos = start
    self._stop = start
    self._resp: requests.Response | None = None
    self._resp_end = start  # Where the open request's bytes end.

  def tell(self) -> int:
    return self._pos

  def want(self, stop: int) -> None:
    """Says the bytes up to `stop` will be read: one request can cover them."""
    self._stop = max(self._stop, min(stop, self.size))

  def seek(self, pos: int) -> None:
    """Moves to `pos`; the next read starts a new request there."""
    if pos != self._pos:
      self._drop_response()
      self._pos = pos

  def read(self, n: int) -> bytes:
    """The next `n` bytes (fewer only at the end of the object)."""
    n = max(0, min(n, self.size - self._pos))
    out = bytearray()
    while len(out) < n:
      out += self._client.retrying(lambda: self._read_some(n - len(out)),
                                   what=f'{self.name} @{self._pos}')
    return bytes(out)

  def _read_some(self, n: int) -> bytes:
    """Up to `n` bytes from the open request (opened if need be)."""
    if self._resp is None or self._pos >= self._resp_end:
      self._open(max(self._stop, self._pos + n))
    try:
      data = self._resp.raw.read(min(n, self._resp_end - self._pos),
                                 decode_content=False)
    except (urllib3.exceptions.HTTPError, requests.RequestException,
            OSError) as e:
      self._drop_response()
      raise TransientError(f'{self.name}: transfer cut at byte {self._pos}:'
                           f' {_root(e)}') from None
    if not data:
      self._drop_response()
      raise TransientError(f'{self.name}: transfer cut at byte {self._pos}')
    self._pos += len(data)
    return data

  def _open(self, stop: int) -> None:
    self._drop_response()
    end = min(self.size, stop)
    resp = self._client.request('GET', self.url,
                                {'Range': f'bytes={self._pos}-{end - 1}'})
    self.requests += 1
    try:
      if resp.status_code == 200:
        raise errors.DownloadError(ignores_range_message(self.name, self.url))
      if resp.status_code != 206:
        raise errors.DownloadError(f'{self.name}: unexpected HTTP'
                                   f' {resp.status_code} to a Range request')
      first, last, _ = content_range(resp, self.url)
      if first != self._pos:
        raise TransientError(f'{self.name}: asked for byte {self._pos}, got'
                             f' {first}')
    except BaseException:
      resp.close()
      raise
    self._resp, self._resp_end = resp, min(end, last + 1)

  def _drop_response(self) -> None:
    if self._resp is not None:
      resp, self._resp = self._resp, None
      resp.close()

  def close(self) -> None:
    self._drop_response()
    self._client.close()

  def __enter__(self) -> 'RangeStream':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
