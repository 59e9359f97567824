"""What this machine offers a process: one home for the count of its cores."""

from __future__ import annotations

import os


def cores() -> int:
  """The cores this process may run on (its CPU affinity where the system
  says, else every core)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1
