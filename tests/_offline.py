"""Catches a test reaching off loopback: every Python connect and lookup.

An audit hook (added once per process, as audit hooks stay) records each
`socket.connect` to, and each `socket.getaddrinfo` of, a host that is not
loopback while a `loopback_only()` block runs:

  with _offline.loopback_only() as outside:
    ...
  assert outside == []

Connections made outside Python (a native library's own sockets) are not
seen.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from typing import Iterator

_OUTSIDE: list[str] = []
_WATCH = {'on': False}


def _loopback(host) -> bool:
  if host in (None, '', 'localhost'):
    return True
  try:
    return ipaddress.ip_address(str(host).split('%')[0]).is_loopback
  except ValueError:
    return False


def _audit(event: str, args, watch=_WATCH, outside=_OUTSIDE,
           loopback=_loopback) -> None:
  """Records every Python connect or name lookup off loopback.

  Audit hooks stay for the whole process (its shutdown included), so what
  it uses is bound here, not looked up in this module's globals.
  """
  if not watch['on']:
    return
  if event == 'socket.connect':
    address = args[1]
    if isinstance(address, tuple) and not loopback(address[0]):
      outside.append(f'connect {address}')
  elif event == 'socket.getaddrinfo' and not loopback(args[0]):
    outside.append(f'getaddrinfo {args[0]}')


sys.addaudithook(_audit)


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
  """Watches connections while the block runs; yields what went off
  loopback (the caller asserts it is empty)."""
  _OUTSIDE.clear()
  _WATCH['on'] = True
  try:
    yield _OUTSIDE
  finally:
    _WATCH['on'] = False
