"""The Hugging Face Hub: tars in a dataset repo, and where its token goes.

Copies of SA-1B live in Hub dataset repos, often gated (the repo's terms
must be accepted, and requests carry a token). Two ways to read them:

* a links file whose rows are resolve URLs,
  `https://huggingface.co/datasets/OWNER/REPO/resolve/REV/sa_NNNNNN.tar`
  (or the same on the host of `HF_ENDPOINT`);
* `manual_dir='hf://datasets/OWNER/REPO[@REV][/PATH]'`: the
  `sa_NNNNNN.tar` files in that folder of the repo are listed through
  `huggingface_hub` (`list_tars`), with their sizes, at the commit REV
  (default `main`) points to when listed; each becomes an `HttpTar` of its
  resolve URL at that commit.

Either way the tars are read by the package's one HTTP client
(`http.Client`): downloads into the cache by tar name, or Range requests
when streamed, with its retries, deadlines and resumption.

The token rule (`token_for`): the Hub's token (`huggingface_hub.get_token()`:
`HF_TOKEN`, else the stored login of `hf auth login`; `HF_TOKEN` alone when
`huggingface_hub` is not installed) is sent as `Authorization: Bearer ...`
only to a Hub origin: `https://huggingface.co` and the origin (scheme, host
and port) of `HF_ENDPOINT`. Never to the host a download is redirected to
(the Hub answers a resolve URL with a 302 to a CDN, e.g.
`cas-bridge.xethub.hf.co`, whose URL carries its own signature), nor to any
other host. The client applies it per request, on every hop of a redirect.
No token is kept in a `Source` (sources are pickled to Beam workers), in a
message or in a log.

The listing of an `hf://` folder is huggingface_hub's own requests, with
its own client: the token goes to the endpoint, and to the next page of the
listing wherever the endpoint's `Link` header puts it (huggingface_hub
follows it as given). That client has no deadline, so the whole listing is
given `LISTING_SECONDS`.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import threading
from typing import Any, Callable, TypeVar
import urllib.parse

from segment_anything_tfds import errors
from segment_anything_tfds import options as options_lib
from segment_anything_tfds.sources import links as links_lib

PREFIX = 'hf://'
DEFAULT_ENDPOINT = 'https://huggingface.co'
DEFAULT_REVISION = 'main'
# A listing longer than this is not an SA-1B folder (it has ~1000 tars).
MAX_ENTRIES = 100_000
# A whole listing (the revision, then every page of the folder) takes at
# most this long; on the Hub it takes about a second.
LISTING_SECONDS = 300.0
_T = TypeVar('_T')
_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,95}')
# Repo kinds in the path of a Hub URL (`/datasets/OWNER/REPO/...`); a path
# without one is a model repo's.
_KINDS = ('datasets', 'spaces')


# ------------------------------------------------------------- the token


def endpoint() -> str:
  """The Hub's address: `HF_ENDPOINT`, else `https://huggingface.co`."""
  return (os.environ.get('HF_ENDPOINT') or DEFAULT_ENDPOINT).rstrip('/')


def is_hub(url: str) -> bool:
  """Whether `url` is on a Hub origin: huggingface.co or `HF_ENDPOINT`'s."""
  return (links_lib.same_origin(url, DEFAULT_ENDPOINT)
          or links_lib.same_origin(url, endpoint()))


def token() -> str | None:
  """The user's Hub token, or None: `huggingface_hub`'s own lookup
  (`HF_TOKEN`, then the stored login); without it, `HF_TOKEN`.

  Raises:
    errors.AccessError: the lookup failed (e.g. an OIDC exchange asked for
      with `HF_OIDC_RESOURCE`).
  """
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    return (os.environ.get('HF_TOKEN')
            or os.environ.get('HUGGING_FACE_HUB_TOKEN') or None)
  try:
    return huggingface_hub.get_token()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.AccessError(
        'cannot get the Hugging Face token (huggingface_hub.get_token):'
        f' {type(e).__name__}') from None


def token_for(url: str, lookup=token) -> str | None:
  """The token to send with a request for `url`: the Hub's, and only to a
  Hub origin (`is_hub`); None for any other URL."""
  return lookup() if is_hub(url) else None


# ------------------------------------------------------------- messages


def repo_of(url: str) -> str | None:
  """`datasets/OWNER/REPO` (or `OWNER/REPO` of a model) of a Hub URL."""
  parts = [p for p in urllib.parse.urlsplit(url).path.split('/') if p]
  if parts[:1] == ['api']:
    parts = parts[1:]
  if parts[:1] and parts[0] in _KINDS:
    return '/'.join(parts[:3]) if len(parts) >= 3 else None
  return '/'.join(parts[:2]) if len(parts) >= 2 else None


def _host(url: str) -> str:
  """`host:port` of a URL, never a user or password."""
  return urllib.parse.urlsplit(url).netloc.rsplit('@', 1)[-1]


def repo_page(url: str) -> str:
  """The page of the repo of a Hub URL, where its terms are accepted."""
  repo = repo_of(url)
  site = f'{urllib.parse.urlsplit(url).scheme}://{_host(url)}'
  return f'{site}/{repo}' if repo else site


def access_error(url: str, status: int, *, token_sent: bool,
                 what: str | None = None) -> errors.AccessError:
  """The one-line error of a 401 or 403 from the Hub for `url`."""
  repo = repo_of(url)
  page = repo_page(url)
  if token_sent:
    why = ('the Hugging Face token sent (HF_TOKEN, or the stored login) was'
           f' refused: accept the repo\'s terms on {page} with that token\'s'
           ' account, and check that the token may read the repo')
  else:
    why = ('no Hugging Face token is set: set HF_TOKEN to a token of an'
           ' account that accepted the repo\'s terms on'
           f' {page} (or log in with `hf auth login`)')
  return errors.AccessError(
      f'{what or links_lib.redact(url)}: HTTP {status} from the Hugging Face'
      f' Hub ({_host(url)}) for'
      f' {repo or "this URL"}: {why}')


# ------------------------------------------------------------- hf:// dirs


@dataclasses.dataclass(frozen=True)
class HubDir:
  """A folder of a Hub dataset repo: `hf://datasets/REPO[@REVISION][/PATH]`.

  Attributes:
    repo: `OWNER/REPO`.
    revision: a branch, tag or commit (default `main`).
    path: the folder in the repo ('' for its root).
  """

  repo: str
  revision: str = DEFAULT_REVISION
  path: str = ''

  def uri(self, revision: str | None = None) -> str:
    rev = urllib.parse.quote(revision or self.revision, safe='')
    return (f'{PREFIX}datasets/{self.repo}@{rev}'
            + (f'/{self.path}' if self.path else ''))


def resolve_url(repo: str, path: str, revision: str) -> str:
  """The download URL of a file of a dataset repo, as `huggingface_hub`'s
  `hf_hub_url` writes it, on `endpoint()`."""
  return (f'{endpoint()}/datasets/{repo}/resolve/'
          f'{urllib.parse.quote(revision, safe="")}/{urllib.parse.quote(path)}')


def is_hub_uri(path) -> bool:
  """Whether a manual_dir is on the Hub (`hf://...`)."""
  return os.fspath(path).startswith(PREFIX)


def parse(uri: str) -> HubDir:
  """`hf://datasets/OWNER/REPO[@REV][/PATH]` -> `HubDir`.

  A revision with a `/` (e.g. `refs/pr/1`) is written percent-encoded
  (`@refs%2Fpr%2F1`), as `huggingface_hub`'s file system writes it.

  Raises:
    errors.SourceError: not a dataset repo's folder, saying what is.
  """
  rest = uri[len(PREFIX):] if uri.startswith(PREFIX) else uri
  kind, _, rest = rest.partition('/')
  parts = rest.split('/')
  if kind != 'datasets' or len(parts) < 2:
    raise errors.SourceError(
        f'{uri}: not a Hugging Face dataset repo; give'
        ' hf://datasets/OWNER/REPO[@REVISION][/PATH]')
  owner, name, *path = parts
  name, _, revision = name.partition('@')
  revision = urllib.parse.unquote(revision) or DEFAULT_REVISION
  path = [p for p in path if p]
  bad = [p for p in (owner, name) if not _NAME_RE.fullmatch(p)] + [
      p for p in path if p in ('.', '..')]
  if bad:
    raise errors.SourceError(f'{uri}: {bad[0]!r} is not a repo name or'
                             ' folder this reads')
  return HubDir(f'{owner}/{name}', revision, '/'.join(path))


def _listing_error(e: Exception, where: HubDir) -> errors.Error:
  """The package's error for a failure of `huggingface_hub`'s listing."""
  from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  uri, host = where.uri(), _host(endpoint())
  status = getattr(getattr(e, 'response', None), 'status_code', None)
  page = f'{endpoint()}/datasets/{where.repo}'
  if isinstance(e, hf_errors.GatedRepoError) or (
      status in (401, 403)
      and not isinstance(e, hf_errors.RepositoryNotFoundError)):
    return access_error(page, status or 401, token_sent=token() is not None,
                        what=uri)
  if isinstance(e, hf_errors.RepositoryNotFoundError):
    return errors.SourceError(
        f'{uri}: {host} has no dataset repo {where.repo} (a private repo'
        ' answers so without a token that may read it: set HF_TOKEN)')
  if isinstance(e, hf_errors.RevisionNotFoundError):
    return errors.SourceError(f'{uri}: {where.repo} has no revision'
                              f' {where.revision!r} on {host}')
  if isinstance(e, hf_errors.EntryNotFoundError):
    return errors.SourceError(f'{uri}: {where.repo} has no folder'
                              f' {where.path!r} at {where.revision}')
  if isinstance(e, hf_errors.OfflineModeIsEnabled):
    return errors.SourceError(f'{uri}: HF_HUB_OFFLINE is set, so the repo'
                              ' cannot be listed; unset it')
  return errors.SourceError(f'{uri}: cannot list it on {host}:'
                            f' {errors.backend_reason(e)}')


def _api():
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.SourceError(
        'a manual_dir on the Hub (hf://...) is listed with huggingface_hub:'
        " pip install 'segment_anything_tfds[hub]'") from None
  return huggingface_hub.HfApi(endpoint=endpoint(), token=token())


@dataclasses.dataclass
class Listing:
  """The tars of a Hub folder.

  Attributes:
    shards: tar index -> `HttpTar` of its resolve URL at `commit`.
    refused: entries named like shards that are not read, and why.
    commit: the commit listed (what `revision` pointed to then).
    where: the folder, at that commit (`hf://...@<commit>/...`).
  """

  shards: dict[int, Any]  # `http_tar.HttpTar`s.
  refused: dict[str, str]
  commit: str
  where: str


def list_tars(uri: str) -> Listing:
  """The `sa_NNNNNN.tar` files of a Hub folder, as `HttpTar`s.

  The revision is resolved to its commit first, so the listing and every
  later read see the same files. Sizes come from the listing: no request
  per tar. `sa_NNNNNN/` folders are refused (only tars are read from the
  Hub); other entries are ignored.

  Raises:
    errors.AccessError: the Hub refuses (a gated or private repo), saying
      to set HF_TOKEN or accept the repo's terms.
    errors.SourceError: no such repo, revision or folder, no tar in it, an
      implausible size, or a listing longer than `MAX_ENTRIES`.
  """
  where = parse(uri)
  api = _api()

  def listed() -> Listing:
    info = api.dataset_info(where.repo, revision=where.revision,
                            timeout=LISTING_SECONDS)
    commit = info.sha or where.revision
    entries = api.list_repo_tree(where.repo, where.path or None,
                                 revision=commit, repo_type='dataset')
    listing = Listing({}, {}, commit, where.uri(commit))
    for count, entry in enumerate(entries, start=1):
      if count > MAX_ENTRIES:
        raise errors.SourceError(
            f'{listing.where}: over {MAX_ENTRIES} entries: not an SA-1B'
            ' folder; give the folder that holds the tars')
      _add(listing, entry, lambda path: resolve_url(where.repo, path,
                                                    commit))
    return listing

  try:
    listing = _within(LISTING_SECONDS, listed, uri)
  except errors.Error:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # huggingface_hub's errors, and its HTTP library's (httpx).
    raise _listing_error(e, where) from None
  if not listing.shards:
    raise errors.SourceError(
        f'{listing.where} holds no sa_NNNNNN.tar'
        + (f' ({len(listing.refused)} folders, not read from the Hub)'
           if listing.refused else ''))
  return listing


def _within(seconds: float, fn: Callable[[], _T], uri: str) -> _T:
  """`fn()`, or a `SourceError` once it has run `seconds`.

  huggingface_hub's HTTP client waits without a deadline (its timeout is
  None) and follows the listing's pages as long as the Hub links a next
  one: run in a thread of its own, a listing that stalls or never ends is
  given up (the thread is left to end with the process).
  """
  done: dict[str, Any] = {}

  def run() -> None:
    try:
      done['value'] = fn()
    except BaseException as e:  # pylint: disable=broad-except
      done['error'] = e

  thread = threading.Thread(target=run, name='hub-listing', daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise errors.SourceError(
        f'{uri}: the Hub did not finish listing it in {seconds:g} s (a'
        f' stalled connection, or pages without end at {_host(endpoint())});'
        ' try again later')
  if 'error' in done:
    raise done['error']
  return done['value']


def _add(listing: Listing, entry, url_of) -> None:
  """Adds a listed entry to `listing` if it is a tar (or refuses it)."""
  name = posixpath.basename(entry.path)
  if not hasattr(entry, 'size'):  # A folder (`RepoFolder`).
    if links_lib.shard_index(name + '.tar') is not None:
      listing.refused[name] = ('an extracted folder; only tars are read'
                               ' from the Hub')
    return
  index = links_lib.shard_index(name)
  if index is None:
    return
  size = entry.size
  if (isinstance(size, bool) or not isinstance(size, int) or size < 0
      or size > options_lib.MAX_DOWNLOAD_BYTES):
    raise errors.SourceError(
        f'{listing.where}: lists {name} with {size!r:.40} bytes: not an'
        ' SA-1B tar (they are about 11 GB)')
  # Imported here: http_tar imports checksums, which imports this module.
  from segment_anything_tfds.sources import http_tar  # pylint: disable=g-import-not-at-top
  listing.shards[index] = http_tar.HttpTar(name, url_of(entry.path), size)
