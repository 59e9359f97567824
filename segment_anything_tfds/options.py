"""How tars are fetched: the one home of download settings and their defaults.

None of this changes the prepared data, so it is not part of a config: a
builder takes it as `download_options`, and a named config keeps its name and
data dir whatever the options:

  tfds.builder('segment_anything', config='first_10',
               download_options={'disk_mode': 'stream', 'workers': 8})

The CLI's `--disk_mode`, `--download_workers`, `--download_retries`,
`--download_timeout` and `--checksums` set the same fields.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Any, Mapping
import warnings

from segment_anything_tfds import errors


class DiskMode(str, enum.Enum):
  """What happens to tars fetched from http(s) links."""

  KEEP = 'keep'  # Kept in the download cache; reruns and other configs reuse.
  STREAM = 'stream'  # Never stored: read with HTTP Range requests.
  DELETE = 'delete'  # Downloaded, deleted once the build has succeeded.

  def __str__(self) -> str:
    return self.value


# SA-1B tars are 10-11.5 GB; a download that grows past this is not one.
MAX_DOWNLOAD_BYTES = 64 << 30
# Bytes a second: a body slower than this fails the attempt (see timeout).
MIN_RATE = 10_000


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
  """How tars are fetched, verified and kept.

  Attributes:
    disk_mode: `DiskMode` (or its value): 'keep' (default), 'stream' or
      'delete'.
    checksums: which checksums tars are verified against: 'known' (the
      published md5s of the 1000 SA-1B tars, shipped with this package;
      recommended for mirrors), a file of `<md5 or sha256>  sa_NNNNNN.tar`
      lines, or 'none'. None (the default): `segment_anything_checksums.txt`
      in manual_dir if it is there, else none.
    checksums_file: deprecated (kept for one release): a file, as
      `checksums`.
    workers: tars downloaded at once (and HEAD requests in flight, x2).
    retries: failed attempts in a row without progress before a tar's
      download fails (progress: a byte further than any attempt reached).
      The work per tar is bounded too: at most `4 * retries` attempts in all.
    backoff: first wait between attempts, in seconds; doubles per failure
      up to `max_backoff`. A server's `Retry-After` (seconds or an HTTP
      date) is honoured up to `max_backoff`.
    max_backoff: longest wait between attempts, in seconds.
    timeout: seconds; bounds each attempt (a request, and its body):
      connecting and receiving the answer's status line and headers take
      at most `timeout` in all, however slowly a server trickles them; no
      read of the body waits longer than `timeout`; and the body must
      bring at least `min_rate` bytes a second, measured over every
      `timeout` seconds spent waiting for it. An attempt that breaks a rule
      fails as transient (retried within `retries`).
    min_rate: the slowest body accepted, in bytes a second (see
      `timeout`); 0 turns the check off. At the default, 10 kB/s, one
      SA-1B tar would take 12 days.
    max_bytes: the largest download accepted (an SA-1B tar is ≈11 GB): a
      larger Content-Length is refused at once, a body without one is
      stopped there.
    proxies: `{'http': URL, 'https': URL}`: every request of that scheme
      goes through that proxy (the environment's settings, `no_proxy`
      included, do not apply to it); None (the default) takes `http_proxy`,
      `https_proxy` and `no_proxy` from the environment.
    check_disk: compare free disk with the build's needs before starting.
    progress: show a progress bar while downloading.
  """

  disk_mode: DiskMode = DiskMode.KEEP
  checksums: str | None = None
  checksums_file: str | None = None
  workers: int = 4
  retries: int = 8
  backoff: float = 1.0
  max_backoff: float = 60.0
  timeout: float = 60.0
  min_rate: float = MIN_RATE
  max_bytes: int = MAX_DOWNLOAD_BYTES
  proxies: Mapping[str, str] | None = None
  check_disk: bool = True
  progress: bool = True

  def __post_init__(self):
    try:
      mode = DiskMode(self.disk_mode)
    except ValueError:
      raise errors.ConfigError(
          f'disk_mode {self.disk_mode!r}: expected one of'
          f' {", ".join(m.value for m in DiskMode)}') from None
    object.__setattr__(self, 'disk_mode', mode)
    self._map_checksums_file()
    if self.checksums is not None:
      if not isinstance(self.checksums, (str, os.PathLike)) or not (
          os.fspath(self.checksums)):
        raise errors.ConfigError(
            f'checksums={self.checksums!r:.80}: expected "known", "none" or'
            ' a checksum file')
      object.__setattr__(self, 'checksums', os.fspath(self.checksums))
    _check_range('workers', self.workers, 1, 256, integer=True)
    _check_range('retries', self.retries, 1, 1000, integer=True)
    _check_range('backoff', self.backoff, 0, 3600)
    _check_range('max_backoff', self.max_backoff, 0, 24 * 3600)
    _check_range('timeout', self.timeout, 0.001, 24 * 3600)
    _check_range('min_rate', self.min_rate, 0, 1e12)
    _check_range('max_bytes', self.max_bytes, 1, 1 << 50, integer=True)
    if self.proxies is not None and not isinstance(self.proxies, Mapping):
      raise errors.ConfigError(
          f'proxies must be a mapping like {{"https": "http://proxy:3128"}},'
          f' got {self.proxies!r:.80}')

  def _map_checksums_file(self) -> None:
    """`checksums_file` (deprecated) becomes `checksums`."""
    if self.checksums_file is None:
      return
    warnings.warn('download option checksums_file is deprecated: use'
                  ' checksums (a file, "known" or "none")',
                  DeprecationWarning, stacklevel=4)
    given = os.fspath(self.checksums_file)
    if self.checksums is not None and os.fspath(self.checksums) != given:
      raise errors.ConfigError(
          f'download options checksums={self.checksums!r} and checksums_file='
          f'{given!r} disagree; give checksums alone')
    object.__setattr__(self, 'checksums', given)
    object.__setattr__(self, 'checksums_file', None)

  @property
  def max_attempts(self) -> int:
    """All attempts for one tar, progress or not: bounds the work per tar."""
    return 4 * self.retries

  def wait(self, failures: int) -> float:
    """Seconds to wait after `failures` consecutive failed attempts."""
    return min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))

  @classmethod
  def make(cls, value: 'DownloadOptions | Mapping[str, Any] | None'
           ) -> 'DownloadOptions':
    """Options from None (defaults), a mapping of fields, or options."""
    if value is None:
      return cls()
    if isinstance(value, cls):
      return value
    if not isinstance(value, Mapping):
      raise errors.ConfigError(
          f'download_options must be a DownloadOptions or a dict, got'
          f' {type(value).__name__}')
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - fields)
    if unknown:
      raise errors.ConfigError(
          f'download_options takes {", ".join(sorted(fields))}; got'
          f' {", ".join(unknown)}')
    return cls(**value)

  def replace(self, **changes: Any) -> 'DownloadOptions':
    return dataclasses.replace(self, **changes)


def _check_range(name: str, value: Any, lo: float, hi: float, *,
                 integer: bool = False) -> None:
  ok_type = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, ok_type) or not (
      lo <= value <= hi):
    kind = 'an integer' if integer else 'a number'
    raise errors.ConfigError(
        f'download option {name}={value!r}: expected {kind} from {lo:g} to'
        f' {hi:g}')
