"""The package's errors: one hierarchy, each one line, mapped by type.

Every error the package raises on purpose is an `Error`. Its message is one
line that names what is wrong and where (tar, member, file and line, host),
and usually how to go on. The CLI prints it as `error: <message>` with exit
code 1; anything else is a bug and keeps its traceback.

  Error
  ├── BadInputError       an image, member or tar that cannot be used
  ├── ConfigError         a config, option or flag value that cannot work
  ├── SourceError         manual_dir, a tar or a path is missing or refused
  ├── LinksError          the links file cannot be used (file:line)
  ├── DownloadError       a tar could not be fetched
  │   ├── LinksExpiredError   signed links past their `oe=`, or a 403
  │   └── AccessError         a 401 or 403 that is no expired link (e.g. a
  │                           gated Hugging Face repo without a token)
  ├── ChecksumError       tars that do not match the checksum list
  ├── DiskSpaceError      too little free disk for the build
  ├── WorkerError         a local build's worker process died
  ├── NotPreparedError    reading data that was never built
  └── BadRecordError      a prepared example that breaks the dataset's rules

In process, Beam re-raises the package's errors as they are (they are
tagged, see `Error._tagged_with_step`). Across processes the original object
is gone: the runner raises a `RuntimeError` whose text holds the worker's
traceback, ending `<module>.<Class>: <message>`. `from_exception` turns either back into the
package's error: it walks the exception chain, then looks the class name up
in this module (a lookup, not a guess at the text).

Names from input (tar members, file names, URLs) can hold terminal escape
codes. `printable` shows them as visible escapes; every message goes
through it, so no error or log line sends a control character to a
terminal. Records (the audit, JSON files) keep the raw names.
"""

from __future__ import annotations

import re

HOMEPAGE = 'https://ai.meta.com/datasets/segment-anything-downloads'
LINKS_FILE_NAME = 'segment_anything_links.txt'


# Reason codes of `BadInputError`, as counted in the lenient audit.
MISSING_JSON = 'missing_json'
MISSING_JPG = 'missing_jpg'
DUPLICATE_MEMBER = 'duplicate_member'
MALFORMED_JSON = 'malformed_json'
MISSING_FIELD = 'missing_field'
BAD_VALUE = 'bad_value'
ID_MISMATCH = 'id_mismatch'
SIZE_MISMATCH = 'size_mismatch'
ZERO_SIZE = 'zero_size'
DUPLICATE_ID = 'duplicate_id'
CORRUPT_JPEG = 'corrupt_jpeg'
MEMBER_TOO_LARGE = 'member_too_large'
UNSAFE_MEMBER = 'unsafe_member'
SPECIAL_MEMBER = 'special_member'
BAD_RLE = 'bad_rle'
# Whole-tar reasons: the tar is skipped (lenient) with the images before the
# damage, if any, kept.
CORRUPT_TAR = 'corrupt_tar'
NO_IMAGES = 'no_images'
# A tar whose md5 (or sha256) is not the one its checksum list gives.
CHECKSUM_MISMATCH = 'checksum_mismatch'

REASONS = (
    MISSING_JSON, MISSING_JPG, DUPLICATE_MEMBER, MALFORMED_JSON,
    MISSING_FIELD, BAD_VALUE, BAD_RLE, ID_MISMATCH, SIZE_MISMATCH, ZERO_SIZE,
    DUPLICATE_ID, CORRUPT_JPEG, MEMBER_TOO_LARGE, UNSAFE_MEMBER,
    SPECIAL_MEMBER, CORRUPT_TAR, NO_IMAGES, CHECKSUM_MISMATCH,
)


def refresh_hint(links_source: str = LINKS_FILE_NAME) -> str:
  """How to go on when links expired: written once, used by every message."""
  return (
      f'To go on: download a fresh {LINKS_FILE_NAME} from {HOMEPAGE} and'
      f' replace {links_source} (tars already downloaded are kept and not'
      ' downloaded again); or rewrite its cdn_link column to point at a'
      ' mirror (any http(s) URL, or gs://bucket/...); or put the tars'
      ' themselves (sa_NNNNNN.tar) in manual_dir.')


def _escape(char: str) -> str:
  """A printable character as it is, any other as Python writes it."""
  if char.isprintable():
    return char
  code = ord(char)
  if code < 0x100:
    return f'\\x{code:02x}'
  return f'\\u{code:04x}' if code < 0x10000 else f'\\U{code:08x}'


def first_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message, or its type's name
  (backends raise their own types: tf.errors.*, gcsfs's, huggingface_hub's),
  for one-line errors."""
  text = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return lines[0] if lines else text


def backend_reason(e: BaseException) -> str:
  """A backend's error (TensorFlow's, fsspec's, huggingface_hub's) as the
  reason in a one-line error: its first line, escaped, at most 300
  characters."""
  return printable(first_line(e))[:300]


def printable(text: str) -> str:
  """`text` with each unprintable character as a visible escape.

  Unprintable is what `str.isprintable` says: C0 and C1 controls and DEL
  (``'\\x1b'`` becomes the four characters ``\\x1b``), format characters
  such as the bidi overrides (U+202E becomes ``\\u202e``), line and
  paragraph separators, spaces other than ' ', lone surrogates (the
  undecodable bytes of a name) and unassigned code points. Printable text,
  non-ASCII letters included, is returned as it is, so applying it twice
  changes nothing more.
  """
  text = str(text)
  if text.isprintable():
    return text
  return ''.join(map(_escape, text))


class Error(Exception):
  """Base of every error this package raises on purpose (one-line message)."""

  # Beam rebuilds a worker's exception with " [while running '<step>']"
  # appended to its first argument unless it is already tagged. Tagged, ours
  # reach the caller as they were raised (in process), fields intact.
  _tagged_with_step = True

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split('\n')))

  @property
  def message(self) -> str:
    """The one-line message, safe to print (see `printable`)."""
    return printable(self.args[0])

  def __str__(self) -> str:
    return self.message

  def __reduce__(self):  # Picklable, so Beam can ship it between workers.
    return (type(self), self.args)


class BadInputError(Error, ValueError):
  """An SA-1B image, member or tar that cannot become examples.

  Attributes:
    reason: a reason code (`REASONS`), counted in the lenient audit.
    tar: the shard's name, e.g. `sa_000001.tar`.
    member: the member (or folder file) at fault, or `@<offset>` in a tar.
    detail: what is wrong, without the location.
  """

  def __init__(self, reason: str, tar: str, member: str, detail: str):
    self.reason = reason
    self.tar = tar
    self.member = member
    self.detail = detail
    super().__init__(f'{tar}:{member}: {detail} [{reason}]')
    self.args = (reason, tar, member, detail)

  @property
  def where(self) -> str:
    return f'{self.tar}:{self.member}'

  @property
  def message(self) -> str:
    return printable(f'{self.where}: {self.detail} [{self.reason}]')

  @classmethod
  def from_message(cls, message: str) -> 'BadInputError':
    """Rebuilds the error from its message (`tar:member: detail [reason]`)."""
    m = re.match(r'^([^:]*):(.*?): (.*) \[(\w+)\]$', message)
    if m is None:
      return cls('unknown', '?', '?', message)
    tar, member, detail, reason = m.groups()
    return cls(reason, tar, member, detail)


class ConfigError(Error, ValueError):
  """A config, option or flag value that cannot work; says what would."""


class SourceError(Error, FileNotFoundError):
  """manual_dir, a tar, a folder or a linked path is missing or refused."""


class LinksError(Error, ValueError):
  """The links file cannot be used; names the file and line."""


class DownloadError(Error, OSError):
  """A tar could not be downloaded; names the tar, the host and why."""


class LinksExpiredError(DownloadError):
  """Signed links are past their `oe=` expiry, or a server answered 403."""


class AccessError(DownloadError):
  """A server refuses this user (HTTP 401, or a 403 that is no expired
  link): a token is missing or refused, or a repo's terms are not accepted.
  Says what to set, naming the repo or host, never the token."""


class ChecksumError(Error, ValueError):
  """Tars that do not match the checksum list; they were not used."""


class DiskSpaceError(Error, OSError):
  """Too little free disk for the chosen config and disk mode."""


class WorkerError(Error, RuntimeError):
  """A local build's worker process died (killed, out of memory, crashed).

  Not the input's fault: says how the worker ended, if known, and that a
  rerun builds again (tars already downloaded are kept).
  """


class NotPreparedError(Error, FileNotFoundError):
  """Reading a dataset that was never prepared; says how to build it."""


class BadRecordError(Error, ValueError):
  """A prepared example that breaks the dataset's own rules; names it.

  A prepared dataset is input like any other (datasets get shared): e.g.
  `export` refuses an example whose `image/file_name` is not
  `sa_<image_id>.jpg`.
  """


_BY_NAME = {cls.__name__: cls for cls in (
    Error, BadInputError, ConfigError, SourceError, LinksError, DownloadError,
    LinksExpiredError, AccessError, ChecksumError, DiskSpaceError, WorkerError,
    NotPreparedError, BadRecordError)}
# How a worker's error reads once Beam has turned it into text.
_WRAPPED_RE = re.compile(
    r'segment_anything_tfds\.[\w.]*?\.?(\w+): (.*?)(?: \[while running .*)?$',
    re.MULTILINE)


def from_exception(exc: BaseException) -> Error | None:
  """The package's error behind `exc`, or None if there is none.

  `exc` may be the error itself, an exception raised from or during it, or
  Beam's `RuntimeError` that carries a worker's error as text.
  """
  seen = set()
  cause = exc
  while cause is not None and id(cause) not in seen:
    if isinstance(cause, Error):
      return cause
    seen.add(id(cause))
    cause = cause.__cause__ or cause.__context__
  for m in _WRAPPED_RE.finditer(str(exc)):
    cls = _BY_NAME.get(m.group(1))
    if cls is None:
      continue
    message = m.group(2).strip()
    if cls is BadInputError:
      return BadInputError.from_message(message)
    return cls(message)
  return None
