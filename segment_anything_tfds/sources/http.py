"""HTTP(S): the package's one client, and its sequential and ranged reads.

Downloads, HEAD probes (the build's and `check-links --probe`) and streamed
tars all go through `Client`, a `requests.Session` with:

* **Redirects** followed here, http/https only (a redirect to `ftp://` or
  `file://` is refused, naming the scheme), at most `MAX_REDIRECTS`.
* **Credentials, per request, by host.** The Hugging Face Hub's token goes
  as `Authorization: Bearer ...` to a Hub origin only (`hub.token_for`):
  huggingface.co and `HF_ENDPOINT`'s, never to the CDN a download is
  redirected to, nor to any other host. A caller's own credential headers
  (`_CREDENTIAL_HEADERS`) go to the first URL's origin only, never past a
  redirect to another. No credential is ever in a message or a log.
* **Proxies** from `http_proxy`/`https_proxy`/`no_proxy` (requests reads the
  environment), or `DownloadOptions.proxies`, which win over it.
* **Retries**, with the budget of `DownloadOptions`: at most `retries`
  failed attempts in a row without progress, and `max_attempts` attempts in
  all, each after `options.wait(failures)` or the server's `Retry-After`
  (seconds or an HTTP date) up to `max_backoff`. A request that fails
  before its body (5xx, 408, 429, a timeout, a reset, no answer head in
  time) is retried by urllib3's `Retry`, mounted on the session
  (`_Retry`); a body cut short or too slow is resumed by the caller from
  the byte reached (`Client.retrying`: urllib3 retries requests, not
  half-read bodies). Both count against one budget per operation
  (`_Budget`). Not retried: a 403 (`LinksExpiredError` for a signed link,
  else `DownloadError`), other 4xx, a refused connection, a host that does
  not resolve, a bad certificate or URL (`DownloadError` naming the host):
  those fail at once.
* **Deadlines.** An attempt gets its answer head (status line and headers)
  within `timeout` seconds in all, however the server trickles it (one
  watchdog thread shuts the socket at the deadline); its body must then
  bring `min_rate` bytes a second over every `timeout` seconds spent
  waiting, and no read of it may wait longer than `timeout`.
* **Bounded reads.** Bodies are read as they arrive, in pieces of at most
  `CHUNK`, into buffers that grow with what arrived (never sized by what a
  request asked for); error pages are not read at all. A 206 is read only
  if its Content-Range answers the Range asked for (`content_range`).
* **Header numbers** (Content-Length, Content-Range, Retry-After) are ASCII
  digits only (`header_int`); a size over `max_bytes` is refused
  (`check_size`).

Only `errors.DownloadError` (and its `LinksExpiredError`, `AccessError`)
reach callers; `TransientError` lives inside `Client.retrying`. A 401 or
403 from the Hub is an `AccessError` that says to set `HF_TOKEN` or accept
the repo's terms (`hub.access_error`).

Ranged reads: `read_range` (bytes `[start, end]` in one request, a cut
resumed) and `RangeStream` (front to back from a position, in one request
resumed on cuts); `probe_size` asks a server for an object's size.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import io
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Iterator, TypeVar

import requests  # Imports requests.adapters.
import urllib3  # Imports urllib3.connection.

from segment_anything_tfds import errors
from segment_anything_tfds.sources import hub
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds import options as options_lib

_LOG = logging.getLogger(__name__)

_T = TypeVar('_T')
USER_AGENT = 'segment_anything_tfds'
MAX_REDIRECTS = 10
CHUNK = 1 << 20  # The most one read of a body returns.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Headers that carry credentials: a caller's go to its URL's origin only.
_CREDENTIAL_HEADERS = frozenset({'authorization', 'cookie'})
_NOT_LOOKED_UP = object()
# Answers another attempt may fix: 5xx, timeout (408), too many (429).
_RETRIED_STATUSES = frozenset(range(500, 1000)) | {408, 429}
# Header numbers: ASCII digits only ('²'.isdigit() is True). A size too
# large to accept is still read as one (and refused as such); past 1000
# digits a header is no number at all.
_INT_RE = re.compile(r'[0-9]{1,1000}')
_DIGITS = r'[0-9]{1,20}'  # Any byte position this package could accept.
_CONTENT_RANGE_RE = re.compile(
    rf'bytes ({_DIGITS})-({_DIGITS})/({_DIGITS}|\*)')
# Query parameters of signed links (Meta's CDN, S3, GCS, Azure): a 403 to a
# link with one may mean it expired; to any other it means forbidden.
_SIGNED_PARAMS = frozenset({
    'oe', 'oh', 'expires', 'signature', 'x-amz-signature', 'x-amz-expires',
    'x-goog-signature', 'x-goog-expires', 'sig', 'se'})


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


def _host(parts: urllib.parse.SplitResult) -> str:
  return parts.netloc.rsplit('@', 1)[-1]  # Never a user or password.


def host_of(url: str) -> str:
  """`https://user@host:443/x?sig` -> `host:443`."""
  return _host(urllib.parse.urlsplit(url)) or url


def _where(url: str) -> str:
  """A URL for messages: no query (signatures), any scheme."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme in links_lib.HTTP_SCHEMES:
    return links_lib.redact(url)
  return urllib.parse.urlunsplit(
      parts._replace(netloc=_host(parts), query='', fragment=''))


def _signed(url: str) -> bool:
  """Whether `url` carries a signature or an expiry (`oe=`, ...)."""
  query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query,
                                keep_blank_values=True)
  return any(k.lower() in _SIGNED_PARAMS for k in query)


def expired_message(url: str, via: str = '') -> str:
  """The one-line message of a 403 to a signed link: expired or revoked."""
  exp = links_lib.expiry(url)
  since = (f'; its oe= says it expired {links_lib.format_time(exp)}'
           if exp is not None and exp < time.time() else '')
  return (f'{links_lib.redact(url)}: the server answered HTTP 403'
          f' (forbidden){via}: the signed link expired or was revoked{since}.'
          ' ' + errors.refresh_hint())


def forbidden_error(url: str, proxy: str | None = None
                    ) -> errors.DownloadError:
  """The error of a 403: an expired link only if `url` is a signed one.

  Args:
    url: the link answered 403.
    proxy: the proxy the request went through (`host:port`), if any: it
      may be the one that refused.
  """
  via = f' (through the proxy {proxy})' if proxy else ''
  if _signed(url):
    return errors.LinksExpiredError(expired_message(url, via))
  return errors.DownloadError(
      f'{links_lib.redact(url)}: HTTP 403 forbidden from {host_of(url)}{via}:'
      ' the server refuses this link; check it (and the proxy settings, if'
      ' any)')


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
  proxied = any(isinstance(e, (requests.exceptions.ProxyError,
                               urllib3.exceptions.ProxyError))
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
                      urllib3.exceptions.LocationParseError, ValueError)):
    return errors.DownloadError(f'{where}: not a usable URL: {_root(exc)}')
  if isinstance(exc, (requests.exceptions.Timeout,
                      urllib3.exceptions.TimeoutError, TimeoutError)):
    return TransientError(f'{where}: no answer from {host} in time'
                          f' ({_root(exc)})')
  return TransientError(f'{where}: {type(exc).__name__} talking to {host}:'
                        f' {_root(exc)}')


def header_int(value: str | None) -> int | None:
  """A header's number: ASCII digits only (at most 1000), else None."""
  value = (value or '').strip()
  return int(value) if _INT_RE.fullmatch(value) else None


def retry_after(value: str | None, *, now: float | None = None
                ) -> float | None:
  """Seconds to wait from a `Retry-After` header (seconds or HTTP date)."""
  if not value:
    return None
  seconds = header_int(value)
  if seconds is not None:
    return float(seconds)
  try:
    when = email.utils.parsedate_to_datetime(value.strip())
  except (TypeError, ValueError, IndexError, OverflowError):
    return None
  if when is None:
    return None
  if when.tzinfo is None:  # HTTP dates are GMT.
    when = when.replace(tzinfo=datetime.timezone.utc)
  return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _transient_status(status: int) -> bool:
  return status in _RETRIED_STATUSES


def content_length(resp: requests.Response) -> int | None:
  return header_int(resp.headers.get('Content-Length'))


def too_large(what: str, detail: str, max_bytes: int) -> errors.DownloadError:
  """The error of a size over `max_bytes`: not an SA-1B tar."""
  return errors.DownloadError(
      f'{what}: {detail} max_bytes={max_bytes}: not an SA-1B tar (they are'
      ' about 11 GB); check the link, or raise download_options max_bytes')


def check_size(size: int | None, what: str, max_bytes: int) -> int | None:
  """`size` (from a server), refused if over `max_bytes` (implausible)."""
  if size is not None and size > max_bytes:
    raise too_large(what, f'the server announces {size} bytes, over',
                    max_bytes)
  return size


def content_range(resp: requests.Response, url: str, *, start: int,
                  end: int | None = None, size: int | None = None
                  ) -> tuple[int, int | None]:
  """(last byte, total) of a 206 answering `Range: bytes=start-[end]`.

  The one check of a 206 (`read_range`, `RangeStream`, resumed downloads):
  its Content-Range must start at `start`, end neither before its first
  byte nor past `end` (if given) or its total, and its total (unless `*`)
  must be `size` (if known). So the body read is never more than asked.

  Raises:
    errors.DownloadError: it does not answer (naming the header and why).
  """
  value = (resp.headers.get('Content-Range') or '').strip()
  m = _CONTENT_RANGE_RE.fullmatch(value)
  if m:
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == '*' else int(m.group(3))
    why = _range_problem(first, last, total, start=start, end=end, size=size)
  else:
    why = 'malformed'
  if why:
    asked = f'bytes={start}-{"" if end is None else end}'
    raise errors.DownloadError(
        f'{links_lib.redact(url)}: the answer to Range {asked} has'
        f' Content-Range {value[:80]!r}: {why}; this server cannot be read'
        ' by ranges')
  return last, total


def _range_problem(first: int, last: int, total: int | None, *, start: int,
                   end: int | None, size: int | None) -> str | None:
  """What makes `bytes first-last/total` no answer to the Range, or None."""
  if first != start:
    return f'it starts at byte {first}'
  if last < first:
    return f'its last byte {last} is before its first'
  if end is not None and last > end:
    return f'its last byte {last} is past the {end} asked for'
  if total is not None and size is not None and total != size:
    return f'its total {total} disagrees with the size {size} known'
  if total is not None and last >= total:
    return f'its last byte {last} is past its total {total}'
  return None


# ------------------------------------------------------------ deadlines


class _Guard:
  """A deadline, and how to stop what runs past it (`_Watchdog`)."""

  def __init__(self, deadline: float):
    self.deadline = deadline
    self.fired = False
    self._stops: list[Callable[[], None]] = []

  def add(self, stop: Callable[[], None]) -> None:
    """Adds a way to stop the work (e.g. a socket's shutdown)."""
    self._stops.append(stop)
    if self.fired:
      _call(stop)

  def stop(self) -> None:
    for stop in list(self._stops):
      _call(stop)


def _call(stop: Callable[[], None]) -> None:
  try:
    stop()
  except Exception:  # pylint: disable=broad-except
    pass  # Closed, or released: nothing left to stop. The watchdog lives on.


# Seconds an idle watchdog sleeps: less than the usual timeouts (60 s), so
# a new guard seldom needs to wake it.
_IDLE_WAKE = 10.0


class _Watchdog:
  """One daemon thread that stops the work of guards past their deadline.

  A blocked socket read returns once its socket is shut down: that is how
  a deadline interrupts a server that trickles its answer byte by byte.
  """

  def __init__(self):
    self._cond = threading.Condition()
    self._guards: set[_Guard] = set()
    self._thread: threading.Thread | None = None
    self._next: float | None = None  # When the thread wakes next.

  def guard(self, seconds: float) -> _Guard:
    """A guard `seconds` from now; `cancel` it when the work is done."""
    g = _Guard(time.monotonic() + seconds)
    with self._cond:
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='sa1b-http-deadlines')
        self._thread.start()
      self._guards.add(g)
      if self._next is None or g.deadline < self._next:
        self._cond.notify()  # Else the thread wakes in time anyway.
    return g

  def cancel(self, g: _Guard) -> bool:
    """Forgets `g`; returns whether its deadline had passed."""
    with self._cond:
      self._guards.discard(g)
      return g.fired

  def _run(self) -> None:
    while True:
      with self._cond:
        now = time.monotonic()
        due = [g for g in self._guards if g.deadline <= now]
        for g in due:
          g.fired = True
          self._guards.discard(g)
        if not due:  # Idle, it looks again now and then: most guards
          # are cancelled long before their deadline, and need no wake-up.
          self._next = min((g.deadline for g in self._guards),
                           default=now + _IDLE_WAKE)
          self._cond.wait(self._next - now)
          continue
      for g in due:
        g.stop()


_WATCHDOG = _Watchdog()
# Per thread: `seconds`, the deadline of each attempt of the request being
# sent (None when none is); `guard`, the deadline of the attempt under way,
# for the connection classes below to hand their sockets to.
_SENDING = threading.local()


def _reset_after_fork() -> None:
  global _WATCHDOG  # pylint: disable=global-statement
  _WATCHDOG = _Watchdog()  # The parent's thread is not in the child.


os.register_at_fork(after_in_child=_reset_after_fork)


def _guard_socket(sock) -> None:
  g = getattr(_SENDING, 'guard', None)
  if g is not None and sock is not None:
    g.add(lambda: sock.shutdown(socket.SHUT_RDWR))


class _NoAnswer(urllib3.exceptions.ReadTimeoutError):
  """An attempt's answer head did not come within its deadline."""


def _within_deadline(pool, url: str, call: Callable[[], _T]) -> _T:
  """`call()`, one attempt's connect, request and answer head, stopped at
  the deadline (`_SENDING.seconds` from its start): then `_NoAnswer`, a
  timeout urllib3's `Retry` counts as a failed attempt."""
  seconds = getattr(_SENDING, 'seconds', None)
  if seconds is None:
    return call()
  g = _SENDING.guard = _WATCHDOG.guard(seconds)
  result = error = None
  try:
    result = call()
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    _SENDING.guard = None
    fired = _WATCHDOG.cancel(g)
  if fired:  # Even an answer just in time: its socket may be shut.
    if result is not None:
      result.close()
    raise _NoAnswer(pool, url, f'no complete answer within {seconds:g} s')
  if error is not None:
    raise error
  return result


class _HTTPConnection(urllib3.connection.HTTPConnection):
  """Hands its socket to the deadline of the attempt under way."""

  def _new_conn(self):  # Connecting (and a proxy's CONNECT, TLS).
    sock = super()._new_conn()
    _guard_socket(sock)
    return sock

  def getresponse(self):  # A kept-alive connection: only this.
    _guard_socket(self.sock)
    return super().getresponse()


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
  """`_HTTPConnection` for https."""

  def _new_conn(self):
    sock = super()._new_conn()
    _guard_socket(sock)
    return sock

  def getresponse(self):
    _guard_socket(self.sock)
    return super().getresponse()


class _HTTPPool(urllib3.HTTPConnectionPool):
  """Each attempt (urllib3 retries within `urlopen`) has its deadline."""

  ConnectionCls = _HTTPConnection

  def _make_request(self, conn, method, url, *args, **kwargs):
    return _within_deadline(self, url, lambda: super(
        _HTTPPool, self)._make_request(conn, method, url, *args, **kwargs))


class _HTTPSPool(urllib3.HTTPSConnectionPool):
  """`_HTTPPool` for https; a proxy's CONNECT is in the deadline too."""

  ConnectionCls = _HTTPSConnection

  def _make_request(self, conn, method, url, *args, **kwargs):
    return _within_deadline(self, url, lambda: super(
        _HTTPSPool, self)._make_request(conn, method, url, *args, **kwargs))

  def _prepare_proxy(self, conn):
    return _within_deadline(self, self.proxy.url, lambda: super(
        _HTTPSPool, self)._prepare_proxy(conn))


_POOLS = {'http': _HTTPPool, 'https': _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
  """requests' adapter, with connections that honour the deadlines."""

  def init_poolmanager(self, *args, **kwargs):
    super().init_poolmanager(*args, **kwargs)
    self.poolmanager.pool_classes_by_scheme = _POOLS

  def proxy_manager_for(self, proxy, **proxy_kwargs):
    manager = super().proxy_manager_for(proxy, **proxy_kwargs)
    if type(manager) is urllib3.ProxyManager:  # Not SOCKS: its own pools.
      manager.pool_classes_by_scheme = _POOLS
    return manager


class _QuietRetries(logging.Filter):
  """Drops urllib3's own warning of each retry of this client's requests:
  `_Budget` logs them, with the attempt count and the URL without its
  query (a signature)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (hasattr(record, '__urllib3-retry-warning')
                and getattr(_SENDING, 'seconds', None) is not None)


logging.getLogger('urllib3.connectionpool').addFilter(_QuietRetries())


# ------------------------------------------------------------ retries


class _Budget:
  """The retry budget of one operation (a download, a read, a HEAD).

  urllib3's `Retry` (`_Retry`) retries a request that failed before its
  body; `Client.retrying` retries what it cannot, a body cut short or too
  slow (the caller resumes it). Both count each failed attempt here, so
  the operation makes at most `max_attempts` attempts, and at most
  `retries` failed ones in a row without progress: `progress()`, if
  given, is the furthest point reached (e.g. the furthest byte written);
  a failure after it moved on starts a new row.
  """

  def __init__(self, options: options_lib.DownloadOptions, what: str,
               progress: Callable[[], int] | None = None,
               cancel: threading.Event | None = None):
    self.options = options
    self.what = what
    self._progress = progress
    self._cancel = cancel
    self._best = progress() if progress else 0
    self.attempts = 0  # Failed attempts, in all.
    self.failures = 0  # Failed attempts in a row without progress.
    self._last = ''

  def failed(self, message: str) -> None:
    """Counts a failed attempt (`message` says why).

    Raises:
      errors.DownloadError: the budget is spent (naming `what`, the number
        of attempts and the last error).
    """
    self.attempts += 1
    now = self._progress() if self._progress else 0
    if now > self._best:
      self.failures, self._best = 0, now
    self.failures += 1
    self._last = _without_prefix(message, self.what)
    opts = self.options
    if self.failures >= opts.retries or self.attempts >= opts.max_attempts:
      raise errors.DownloadError(
          f'{self.what}: gave up after {self.attempts} attempts'
          f' ({self.failures} in a row without progress); last error:'
          f' {self._last}')

  def retries_left(self) -> int:
    """Failed attempts still allowed after the next one fails."""
    opts = self.options
    return max(0, min(opts.retries - self.failures,
                      opts.max_attempts - self.attempts) - 1)

  def backoff(self) -> float:
    """The wait after the last failure: `backoff`, doubling per failure."""
    return self.options.wait(self.failures)

  def delay(self, asked: float | None) -> float:
    """The backoff, or the server's `Retry-After` up to `max_backoff`."""
    if asked is None:
      return self.backoff()
    return min(self.options.max_backoff, max(self.backoff(), asked))

  def wait(self, delay: float) -> None:
    """Waits `delay` seconds before the next attempt, saying so.

    Raises:
      Cancelled: the operation's cancel event was set meanwhile.
    """
    _LOG.warning('%s: %s; attempt %d of at most %d in %.1f s', self.what,
                 self._last, self.attempts + 1, self.options.max_attempts,
                 delay)
    pause(delay, self._cancel)


class _Stop(Exception):
  """Ends urllib3's retries with `error`: the budget is spent, or the
  failure is not worth retrying. Not an `OSError`, so requests passes it
  through unwrapped."""

  def __init__(self, error: errors.DownloadError):
    super().__init__(error)
    self.error = error


class _Retry(urllib3.Retry):
  """urllib3's `Retry`, counting against a `_Budget`.

  Retried: a connection or read failure before the answer (a timeout, a
  reset, `_NoAnswer`) and a 5xx, 408 or 429 answer (whose body is never
  read), after `get_backoff_time()` or the answer's `Retry-After`
  (`get_retry_after`), capped by `backoff_max`. A failure not worth
  retrying, or one that spends the budget, stops the request (`_Stop`).
  """

  RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

  def __init__(self, *args, budget: _Budget | None = None, url: str = '',
               **kwargs):
    super().__init__(*args, **kwargs)
    self.budget = budget
    self.url = url  # Whole (urllib3 gives `increment` only the path).

  @classmethod
  def of(cls, budget: _Budget, url: str) -> '_Retry':
    """The retries of one request for `url` within `budget`."""
    opts = budget.options
    return cls(total=budget.retries_left(), redirect=False,
               status_forcelist=_RETRIED_STATUSES,
               allowed_methods=frozenset({'GET', 'HEAD'}),
               backoff_factor=opts.backoff, backoff_max=opts.max_backoff,
               respect_retry_after_header=True, raise_on_status=False,
               raise_on_redirect=False, budget=budget, url=url)

  def new(self, **kwargs) -> '_Retry':
    retry = super().new(**kwargs)
    retry.budget, retry.url = self.budget, self.url
    return retry

  def increment(self, method=None, url=None, response=None, error=None,
                _pool=None, _stacktrace=None) -> '_Retry':
    if self.budget is None:  # Not from `of`: urllib3's own rules.
      return super().increment(method, url, response, error, _pool,
                               _stacktrace)
    if error is not None:
      failure = self._failure(error)
      if not isinstance(failure, TransientError):
        raise _Stop(failure)
    else:
      response.close()  # Never read an error page (urllib3 drains it).
      failure = TransientError(f'{links_lib.redact(self.url)}: HTTP'
                               f' {response.status} {response.reason or ""}'
                               .rstrip())
    try:
      self.budget.failed(str(failure))
    except errors.DownloadError as e:
      raise _Stop(e) from None
    return super().increment(method, url, response, error, _pool,
                             _stacktrace)

  def _failure(self, error: BaseException) -> Exception:
    if any(isinstance(e, _NoAnswer) for e in _causes(error)):
      return TransientError(
          f'{links_lib.redact(self.url)}: no complete answer (status line'
          f' and headers) from {host_of(self.url)} within'
          f' {self.budget.options.timeout:g} s')
    return transport_error(error, self.url)

  def get_backoff_time(self) -> float:
    if self.budget is None:
      return super().get_backoff_time()
    return self.budget.backoff()

  def get_retry_after(self, response) -> float | None:
    return retry_after(response.headers.get('Retry-After'))

  def sleep(self, response=None) -> None:
    if self.budget is None:
      super().sleep(response)
      return
    asked = None
    if response is not None and self.respect_retry_after_header:
      asked = self.get_retry_after(response)
    self.budget.wait(self.budget.delay(asked))


# ------------------------------------------------------------ bodies


class Body:
  """A response's body, read as it arrives, within the attempt's rules.

  `read(n)` returns what has arrived (1 to min(n, `CHUNK`) bytes; b'' at
  the end) and never waits longer than `timeout`; over every `timeout`
  seconds spent waiting, the body must bring `min_rate` bytes a second.
  Either failure, a cut and a body shorter than its Content-Length are
  `TransientError`s.
  """

  def __init__(self, resp: requests.Response, url: str,
               options: options_lib.DownloadOptions):
    self._resp = resp
    self._url = url
    self._timeout = options.timeout
    self._min_rate = options.min_rate
    self._waited = 0.0  # Seconds spent waiting in this window...
    self._got = 0  # ... and the bytes they brought.

  def read(self, n: int) -> bytes:
    if n <= 0:  # Never an unbounded read.
      raise ValueError(f'read of {n} bytes')
    started = time.monotonic()
    g = _WATCHDOG.guard(self._timeout)
    g.add(self._resp.raw.shutdown)
    try:
      data = self._resp.raw.read1(min(n, CHUNK), decode_content=False)
    except (urllib3.exceptions.HTTPError, requests.RequestException,
            OSError) as e:
      if _WATCHDOG.cancel(g):
        raise self._stalled() from None
      raise TransientError(f'{links_lib.redact(self._url)}: transfer cut:'
                           f' {_root(e)}') from None
    if _WATCHDOG.cancel(g):
      raise self._stalled()
    self._meter(len(data), time.monotonic() - started)
    return data

  def __iter__(self) -> Iterator[bytes]:
    """The rest of the body, in pieces as they arrive."""
    while data := self.read(CHUNK):
      yield data

  def _stalled(self) -> TransientError:
    return TransientError(
        f'{links_lib.redact(self._url)}: {host_of(self._url)} sent nothing'
        f' for {self._timeout:g} s')

  def _meter(self, got: int, waited: float) -> None:
    self._got += got
    self._waited += waited
    if self._waited < self._timeout:
      return
    if self._got < self._min_rate * self._waited:
      raise TransientError(
          f'{links_lib.redact(self._url)}: {host_of(self._url)} sent'
          f' {self._got} bytes in {self._waited:.1f} s, under the minimum'
          f' rate of {self._min_rate:g} bytes/s (download option min_rate)')
    self._got, self._waited = 0, 0.0


# ------------------------------------------------------------ the client


def _no_auth(prepared: requests.PreparedRequest) -> requests.PreparedRequest:
  return prepared


def _auth_of(url: str):
  """The auth of a request for `url`: the user and password in it, if any
  (as requests would take them). Never none: then requests would look the
  host up in ~/.netrc, whose credentials this package does not send."""
  user, password = requests.utils.get_auth_from_url(url)
  return (user, password) if user or password else _no_auth


class _Session(requests.Session):
  """requests' Session; redirects are `Client.send`'s alone.

  (requests prepares the next request of a redirect even when not asked to
  follow it, and raises on a Location it cannot parse.)
  """

  def get_redirect_target(self, resp):
    return None


class Client:
  """One `requests.Session` and the retry budget of `DownloadOptions`.

  Its adapters retry each request with `_Retry`, within the budget of the
  operation under way (`retrying`), or of the request alone.

  Not thread-safe: one per thread (see `ClientPool`).
  """

  def __init__(self, options: options_lib.DownloadOptions | None = None):
    self.options = options or options_lib.DownloadOptions()
    self._session = _Session()  # trust_env: the *_proxy variables.
    self._budget: _Budget | None = None  # Of the operation under way.
    for prefix in ('http://', 'https://'):
      self._session.mount(prefix, _Adapter(max_retries=_Retry(0)))
    self._session.headers.update({'User-Agent': USER_AGENT,
                                  'Accept-Encoding': 'identity'})
    self._proxies = (dict(self.options.proxies)
                     if self.options.proxies else None)
    self._hub_token = _NOT_LOOKED_UP  # Looked up at the first Hub request.

  def close(self) -> None:
    self._session.close()

  def __enter__(self) -> 'Client':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def send(self, method: str, url: str,
           headers: dict[str, str] | None = None) -> requests.Response:
    """One request, redirects followed; the final answer, any status.

    The body is not read: the caller reads it (`body`) and closes it.

    Raises:
      errors.DownloadError: a refused connection, an unknown host, a bad
        URL, a redirect to another scheme or more than `MAX_REDIRECTS`.
      TransientError: a timeout, a reset, or no answer head in time.
    """
    _check_scheme(url, url)
    first = url
    try:
      # Where each hop goes, and what it carries, is decided on the URL as
      # requests sends it; the URL itself is handed to requests as it is
      # (preparing it twice would resolve `%2E%2E` once more).
      sent = first_sent = as_sent(url)
    except ValueError as e:
      raise transport_error(e, url) from None
    for _ in range(MAX_REDIRECTS + 1):
      resp = self._send_once(method, url,
                             self._hop_headers(first_sent, sent, headers),
                             auth=_auth_of(sent))
      location = _location(resp)
      if resp.status_code not in _REDIRECTS or not location or (
          method == 'HEAD' and _hub_linked_size(resp, sent) is not None):
        return resp
      resp.close()  # A redirect's body is never read.
      url, sent = _redirect(first, url, location)
      if resp.status_code == 303 and method != 'HEAD':
        method = 'GET'
    raise errors.DownloadError(
        f'{links_lib.redact(first)}: more than {MAX_REDIRECTS} redirects'
        f' (the last to {_where(url)})')

  def _token(self) -> str | None:
    """The Hub's token (`hub.token`), looked up once per client."""
    if self._hub_token is _NOT_LOOKED_UP:
      self._hub_token = hub.token()
    return self._hub_token

  def _hop_headers(self, first: str, url: str,
                   headers: dict[str, str] | None) -> dict[str, str]:
    """The headers of one hop of a request for `first`, now at `url`.

    The caller's headers, without its credentials once a redirect left the
    origin of `first`; and the Hub's token for a Hub origin alone
    (`hub.token_for`), whatever the caller gave.
    """
    moved = not links_lib.same_origin(first, url)
    out = {k: v for k, v in (headers or {}).items()
           if k.lower() not in _CREDENTIAL_HEADERS or not moved}
    token = hub.token_for(url, self._token)
    if token:
      out = {k: v for k, v in out.items() if k.lower() != 'authorization'}
      out['Authorization'] = f'Bearer {token}'
    return out

  def _send_once(self, method, url, headers, auth) -> requests.Response:
    """One request, retried by urllib3 (`_Retry`) within the budget; each
    attempt's answer head within `timeout` seconds in all."""
    timeout = self.options.timeout
    budget = self._budget or _Budget(self.options, links_lib.redact(url))
    self._session.get_adapter(url).max_retries = _Retry.of(budget, url)
    _SENDING.seconds = timeout
    try:
      return self._session.request(
          method, url, headers=headers, stream=True, allow_redirects=False,
          timeout=(timeout, timeout), proxies=self._proxies, auth=auth)
    except _Stop as e:
      raise e.error from None
    except (requests.RequestException, urllib3.exceptions.HTTPError,
            OSError, ValueError) as e:
      raise transport_error(e, url) from None
    finally:
      _SENDING.seconds = None

  def proxy_for(self, url: str) -> str | None:
    """`host:port` of the proxy a request for `url` goes through, or None."""
    proxies = self._session.merge_environment_settings(
        url, dict(self._proxies or {}), True, None, None)['proxies']
    proxy = requests.utils.select_proxy(url, proxies)
    if not proxy:
      return None
    return host_of(proxy if '://' in proxy else 'http://' + proxy)

  def status_error(self, resp: requests.Response, url: str) -> Exception:
    """The error a >= 400 answer means: transient, refused, or final."""
    status, reason = resp.status_code, resp.reason or ''
    if status in (401, 403):
      return self.refused(url, status, answered=resp.url)
    where = links_lib.redact(url)
    if _transient_status(status):
      return TransientError(
          f'{where}: HTTP {status} {reason}'.rstrip(),
          retry_after=retry_after(resp.headers.get('Retry-After')))
    return errors.DownloadError(f'{where}: HTTP {status} {reason}'.rstrip())

  def refused(self, url: str, status: int,
              answered: str | None = None) -> errors.DownloadError:
    """The error of a 401 or 403 to a request for `url` (e.g. a HEAD).

    Args:
      url: the URL asked for.
      status: 401 or 403.
      answered: the URL that answered (the last hop of its redirects), if
        known.
    Returns:
      From a Hub origin, an `AccessError` saying to set HF_TOKEN or accept
      the repo's terms (`hub.access_error`); else for a 403, the error of
      an expired link or a refusal (`forbidden_error`); for a 401, an
      `AccessError` naming the host.
    """
    if hub.is_hub(answered or url):
      return hub.access_error(url, status,
                              token_sent=self._token() is not None)
    if status == 403:
      return forbidden_error(url, self.proxy_for(url))
    return errors.AccessError(
        f'{links_lib.redact(url)}: HTTP 401 unauthorized from'
        f' {host_of(answered or url)}: the server wants credentials, and this'
        ' package sends one only to the Hugging Face Hub (its token); use a'
        ' link that needs none')

  def body(self, resp: requests.Response, url: str) -> Body:
    """The body of `resp`, read within this client's options."""
    return Body(resp, url, self.options)

  def request(self, method: str, url: str,
              headers: dict[str, str] | None = None) -> requests.Response:
    """`send`; a >= 400 answer is raised as its error (`status_error`)."""
    resp = self.send(method, url, headers)
    if resp.status_code >= 400:
      resp.close()
      raise self.status_error(resp, url)
    return resp

  def head(self, url: str) -> tuple[int, int | None]:
    """(status, Content-Length) of a HEAD, transient failures retried.

    Any final status is returned (a 404 is an answer); a 5xx that lasts
    through the retry budget raises. The Hub's redirect of a download
    says its size (`X-Linked-Size`): that answers the HEAD, as 200 (the
    storage's signed URL it leads to is for a GET alone).
    """
    def attempt():
      with contextlib.closing(self.send('HEAD', url)) as resp:
        if _transient_status(resp.status_code):
          raise self.status_error(resp, url)
        linked = _hub_linked_size(resp, resp.url or url)
        if linked is not None:
          return 200, linked
        return resp.status_code, content_length(resp)
    return self.retrying(attempt, what=f'HEAD {links_lib.redact(url)}')

  def retrying(self, attempt: Callable[[], _T], *, what: str,
               progress: Callable[[], int] | None = None,
               cancel: threading.Event | None = None) -> _T:
    """Runs `attempt()` until it returns, within one budget (`_Budget`).

    The requests `attempt` sends are retried by urllib3 within the same
    budget; a `TransientError` it raises (a body cut short or too slow) is
    retried here: `attempt` resumes from where the last one got to.
    `progress()`, if given, is the furthest point reached so far (e.g. the
    furthest byte ever written): a failed attempt that moved it on is not
    counted against `retries`. `max_attempts` bounds the attempts in all.

    Raises:
      errors.DownloadError: the budget is spent (naming `what`, the number
        of attempts and the last error), or a failure not worth retrying.
      Cancelled: `cancel` was set while waiting.
    """
    budget = _Budget(self.options, what, progress, cancel)
    outer, self._budget = self._budget, budget
    try:
      while True:
        try:
          return attempt()
        except TransientError as e:
          try:
            budget.failed(str(e))
          except errors.DownloadError as spent:
            raise spent from None
          budget.wait(budget.delay(e.retry_after))
    finally:
      self._budget = outer


def _without_prefix(message: str, what: str) -> str:
  return message[len(what) + 2:] if message.startswith(what + ': ') else (
      message)


def pause(seconds: float, cancel: threading.Event | None = None) -> None:
  """Sleeps; raises `Cancelled` as soon as `cancel` is set."""
  if cancel is None:
    time.sleep(seconds)
  elif cancel.wait(seconds):
    raise Cancelled()


def _hub_linked_size(resp: requests.Response, url: str) -> int | None:
  """The size a Hub origin's redirect of a download announces
  (`X-Linked-Size`), or None for any other answer."""
  if resp.status_code not in _REDIRECTS or not hub.is_hub(url):
    return None
  return header_int(resp.headers.get('X-Linked-Size'))


def _check_scheme(url: str, first: str) -> None:
  scheme = urllib.parse.urlsplit(url).scheme  # Lower case, `//` or not.
  if scheme in links_lib.HTTP_SCHEMES:
    return
  if url == first:
    raise errors.DownloadError(f'{_where(url)}: not an http(s) URL')
  raise errors.DownloadError(
      f'{links_lib.redact(first)}: redirected to a {scheme or "relative"}:'
      f' URL ({_where(url)}); only http:// and https:// redirects are'
      ' followed')


def as_sent(url: str) -> str:
  """`url` as requests sends it: read by urllib3's parser, its host
  IDNA-encoded, its path quoted. Where a request goes, which credentials
  it carries and what messages name are all decided on this form.

  Raises:
    ValueError: requests cannot send it.
  """
  prepared = requests.PreparedRequest()
  prepared.prepare_url(url, None)
  return prepared.url


def _location(resp: requests.Response) -> str | None:
  """The Location header, its UTF-8 bytes read as UTF-8 (HTTP headers come
  decoded as Latin-1), as requests reads it when it follows redirects."""
  location = resp.headers.get('Location')
  if location:
    try:
      return location.encode('latin-1').decode('utf-8')
    except UnicodeError:
      pass
  return location


def _redirect(first: str, url: str, location: str) -> tuple[str, str]:
  """Where a redirect from `url` leads, and that as sent (`as_sent`); a
  `DownloadError` if nowhere."""
  try:
    target = urllib.parse.urljoin(url, location)
    _check_scheme(target, first)
    _ = urllib.parse.urlsplit(target).port  # Raises if it is no port.
    return target, as_sent(target)
  except ValueError as e:
    raise errors.DownloadError(
        f'{links_lib.redact(first)}: redirected to an invalid URL'
        f' {location.split("?", 1)[0][:100]!r} ({e})') from None


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


# ------------------------------------------------------------ ranges


def ignores_range_message(name: str, url: str) -> str:
  return (f'{name}: the server {host_of(url)} ignores Range requests (it'
          ' answered 200 with the whole object), so this tar cannot be'
          " streamed; use disk_mode='keep' (or 'delete') to download it")


def get_range(client: Client, url: str, *, name: str, start: int, end: int,
              size: int | None) -> tuple[requests.Response, int, int | None]:
  """A 206 for bytes `start`..`end` (inclusive), its body not yet read.

  Returns:
    The response, the last byte it holds, and the object's total size.
  Raises:
    errors.DownloadError: the server ignores Range (its body is not read),
      or its Content-Range does not answer (`content_range`).
  """
  resp = client.request('GET', url, {'Range': f'bytes={start}-{end}'})
  try:
    if resp.status_code == 200:
      raise errors.DownloadError(ignores_range_message(name, url))
    if resp.status_code != 206:
      raise errors.DownloadError(f'{name}: unexpected HTTP'
                                 f' {resp.status_code} to a Range request')
    try:
      last, total = content_range(resp, url, start=start, end=end, size=size)
    except errors.DownloadError as e:
      raise errors.DownloadError(f'{name}: {e.message}') from None
  except BaseException:
    resp.close()
    raise
  return resp, last, total


def read_range(client: Client, url: str, *, name: str, start: int, end: int,
               size: int | None) -> tuple[bytes, int | None]:
  """Bytes `start`..`end` (inclusive) in one request; a cut is resumed from
  the byte reached, within the client's retry budget.

  The result grows with what arrives, never sized by what was asked for.

  Returns:
    The bytes, and the object's total size (None if the server says `*`).
  Raises:
    errors.DownloadError: as `get_range`, or the budget is spent.
  """
  out = io.BytesIO()

  def attempt() -> int | None:
    pos = start + out.tell()
    resp, _, total = get_range(client, url, name=name, start=pos, end=end,
                               size=size)
    with contextlib.closing(resp):
      body = client.body(resp, url)
      while pos <= end and (data := body.read(end - pos + 1)):
        out.write(data)
        pos += len(data)
    if pos <= end:
      raise TransientError(f'{name}: got {pos - start} of {end - start + 1}'
                           f' bytes at {start}')
    return total

  total = client.retrying(attempt, what=f'{name} @{start}',
                          progress=out.tell)
  return out.getvalue(), total


def probe_size(client: Client, url: str, *, name: str) -> int:
  """An object's size: a HEAD's Content-Length, else a 1-byte Range's total.

  Raises:
    errors.DownloadError: the server refuses (`LinksExpiredError` for a
      403 to a signed link), reports no size, or one over `max_bytes`.
  """
  status, size = client.head(url)
  if status in (401, 403):
    raise client.refused(url, status)
  if status == 405:  # No HEAD here: ask for a byte instead.
    size = None
  elif status >= 400:
    raise errors.DownloadError(
        f'{name}: HEAD {links_lib.redact(url)}: HTTP {status}')
  if size is None:  # The Content-Range of one byte has the total.
    _, size = read_range(client, url, name=name, start=0, end=0, size=None)
  if size is None:
    raise errors.DownloadError(f'{name}: the server reports no size; it'
                               " cannot be streamed (use disk_mode='keep')")
  return check_size(size, f'{name} from {host_of(url)}',
                    client.options.max_bytes)


class RangeStream:
  """Sequential reads of an HTTP object from a position, in few requests.

  A request asks for the bytes from the position up to `stop` (moved on by
  `want`, and at least the read's size), so reading `[a, b)` after
  `want(b)` costs one request however many `read` calls it takes. A
  transfer cut short, timed out or too slow is resumed with a new Range
  request from the byte reached, within the options' retry budget. A
  `read(n)` holds at most the bytes that arrived (at most `n`); a server
  that ignores Range fails at once, unread.

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
    self._body: Body | None = None
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
    out = io.BytesIO()  # Grows with what arrives; getvalue() copies nothing.
    while out.tell() < n:
      out.write(self._client.retrying(lambda: self._read_some(n - out.tell()),
                                      what=f'{self.name} @{self._pos}'))
    return out.getvalue()

  def _read_some(self, n: int) -> bytes:
    """1 to `n` bytes from the open request (opened if need be)."""
    if self._resp is None or self._pos >= self._resp_end:
      self._open(max(self._stop, self._pos + n))
    try:
      data = self._body.read(min(n, self._resp_end - self._pos))
    except TransientError:
      self._drop_response()
      raise
    if not data:
      self._drop_response()
      raise TransientError(f'{self.name}: transfer cut at byte {self._pos}')
    self._pos += len(data)
    return data

  def _open(self, stop: int) -> None:
    self._drop_response()
    end = min(self.size, stop)
    resp, last, _ = get_range(self._client, self.url, name=self.name,
                              start=self._pos, end=end - 1, size=self.size)
    self.requests += 1
    self._resp, self._resp_end = resp, last + 1
    self._body = self._client.body(resp, self.url)

  def _drop_response(self) -> None:
    if self._resp is not None:
      resp, self._resp, self._body = self._resp, None, None
      resp.close()

  def close(self) -> None:
    self._drop_response()
    self._client.close()

  def __enter__(self) -> 'RangeStream':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
