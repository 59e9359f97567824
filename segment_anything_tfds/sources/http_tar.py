"""A tar behind an http(s) link (a links-file row, a mirror), streamed.

Read with the package's one HTTP client (`http.py`), never to disk:

* front to back (`open_sequential`): one Range request from the position
  to the end of the tar (`http.RangeStream`), resumed from the byte
  reached if cut, within the retry budget;
* at random (`open_random`): one Range request per `read_at`, for exactly
  its bytes (`http.read_range`).

With an expected `checksum`, a read from byte 0 hashes what goes by
(`checksums.hashing`); the engine asks `checksums.stream_verdict` at the
end.

A server that ignores Range (answers 200) fails at once, its body unread.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import checksums
from segment_anything_tfds.sources import links as links_lib

# What one `skip` reads (and drops) at a time of the tar's front-to-back
# request.
_SKIP_CHUNK = 1 << 20


def _http():
  # Imported when a tar is read: finding shards needs no HTTP client.
  from segment_anything_tfds.sources import http  # pylint: disable=g-import-not-at-top
  return http


class _Random:
  """`RandomReader` of a link: one Range request per read."""

  def __init__(self, source: 'HttpTar'):
    self._size = source.size()
    self._url = source.location
    self._name = source.name
    self._client = _http().Client(source.options)

  def read_at(self, offset: int, size: int) -> bytes:
    size = min(size, self._size - offset)
    if size <= 0:
      return b''
    data, _ = _http().read_range(self._client, self._url, name=self._name,
                                 start=offset, end=offset + size - 1,
                                 size=self._size)
    return data

  def close(self) -> None:
    self._client.close()


class _Sequential:
  """`SequentialReader` of a link: one request to the end, resumed on a
  cut (`http.RangeStream`)."""

  def __init__(self, stream):
    self._stream = stream

  def tell(self) -> int:
    return self._stream.tell()

  def read(self, n: int) -> bytes:
    return self._stream.read(n)

  def skip(self, n: int) -> int:
    done = 0
    while done < n:
      got = len(self._stream.read(min(n - done, _SKIP_CHUNK)))
      done += got
      if not got:
        break
    return done

  def close(self) -> None:
    self._stream.close()


@dataclasses.dataclass(frozen=True)
class HttpTar(base.TarSource):
  """A tar behind an http(s) URL, read by Range requests.

  Attributes:
    name: the tar's name, e.g. `sa_000012.tar`.
    location: its URL (it may carry a signature: messages use `where`).
    known_size: its size in bytes when known (the build's HEAD), else
      asked for once (a HEAD, or a 1-byte Range if HEAD is refused).
    options: the `DownloadOptions` its requests follow (None: defaults).
    checksum: the `checksums.Expected` digest of the tar, checked when it
      is read front to back (None: not checked).
  """

  name: str
  location: str
  known_size: int | None = dataclasses.field(default=None, compare=False)
  options: Any = None
  checksum: checksums.Expected | None = dataclasses.field(default=None,
                                                          compare=False)

  remote = True

  @property
  def where(self) -> str:
    return links_lib.redact(self.location)

  def size(self) -> int:
    if self.known_size is None:
      http = _http()
      with http.Client(self.options) as client:
        size = http.probe_size(client, self.location, name=self.name)
      object.__setattr__(self, 'known_size', size)
    return self.known_size

  def open_random(self) -> base.RandomReader:
    return _Random(self)

  def open_sequential(self, start: int = 0) -> base.SequentialReader:
    size = self.size()
    stream = _http().RangeStream(self.location, start=start, size=size,
                                 options=self.options, name=self.name)
    stream.want(size)
    return checksums.hashing(_Sequential(stream), self, start)

