"""Sizes for people: one formatting rule for every message and summary."""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
  """1536 -> '1.5 kB', 42e9 -> '42.0 GB' (decimal units, as disks are sold)."""
  if n is None:
    return '?'
  for unit in ('B', 'kB', 'MB', 'GB', 'TB', 'PB'):
    if abs(n) < 1000 or unit == 'PB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1000
  return f'{n} B'
