"""A Beam worker pool on this machine: Dataflow's execution model in miniature.

`python -m apache_beam.runners.worker.worker_pool_main --service_port=P`
starts one SDK worker process (`python -c ...`) per job it is asked for. A
pipeline run with `beam_flags(port)` (PortableRunner, embedded job service,
EXTERNAL environment) ships its pickled DoFns, side inputs and shuffles to
those processes, which share no memory with the launcher.

The pool starts workers with `python`, so this venv's `bin` goes first on
their PATH, and the repo root on their PYTHONPATH (so they import this
checkout of the package). Beam binds the pool's port (and its job service's)
on all interfaces; the tests connect through `localhost` only.

  with WorkerPool(tmp_dir) as pool:
    ... PipelineOptions(pool.beam_flags()) ...
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping

import _kinds

REPO = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def listening(port: int) -> bool:
  try:
    with socket.create_connection(('127.0.0.1', port), timeout=0.5):
      return True
  except OSError:
    return False


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
  """The environment of the pool and its workers: this venv's python."""
  env = dict(os.environ)
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get(
      'PATH', '')
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (str(REPO), env.get('PYTHONPATH', '')) if p)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.update(extra or {})
  return env


def group_members(pgid: int) -> list[tuple[int, str]]:
  """(pid, state) of the live (non-zombie) processes of a process group."""
  out = []
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:  # Gone meanwhile.
      continue
    state, group = fields[0], int(fields[2])
    if group == pgid and state not in ('Z', 'X'):
      out.append((int(entry), state))
  return out


class WorkerPool:
  """Starts a worker pool on a free port; stops it and every worker."""

  def __init__(self, log_dir: os.PathLike, *,
               env: Mapping[str, str] | None = None):
    self.port = free_port()
    self.log_path = pathlib.Path(log_dir) / f'worker_pool_{self.port}.log'
    self._env = worker_env(env)
    self._proc: subprocess.Popen | None = None

  def start(self) -> 'WorkerPool':
    _kinds.require_integration('a Beam worker pool (WorkerPool)')
    log = open(self.log_path, 'wb')  # pylint: disable=consider-using-with
    try:
      self._proc = subprocess.Popen(
          [sys.executable, '-m',
           'apache_beam.runners.worker.worker_pool_main',
           f'--service_port={self.port}'],
          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
          env=self._env, cwd=str(REPO), start_new_session=True)
    finally:
      log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while not listening(self.port):
      if self._proc.poll() is not None:
        raise RuntimeError(f'the worker pool exited with'
                           f' {self._proc.returncode}: {self.log_tail()}')
      if time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(f'the worker pool did not listen on port'
                           f' {self.port} within {START_TIMEOUT} s')
      time.sleep(0.1)
    return self

  def log_tail(self, n: int = 2000) -> str:
    try:
      return self.log_path.read_text(errors='replace')[-n:]
    except OSError:
      return ''

  def workers_started(self) -> int:
    """SDK worker processes the pool started so far."""
    return self.log_tail(1 << 30).count('Starting worker with command')

  def beam_flags(self) -> list[str]:
    """Beam flags that run a pipeline on this pool's workers."""
    return ['--runner=PortableRunner', '--job_endpoint=embed',
            '--environment_type=EXTERNAL',
            f'--environment_config=localhost:{self.port}']

  def cli_flags(self) -> list[str]:
    """The same, as `segment-anything-tfds build` flags."""
    return ['--runner', 'PortableRunner', '--job_endpoint', 'embed',
            '--environment_type', 'EXTERNAL', '--environment_config',
            f'localhost:{self.port}']

  def stop(self) -> list[tuple[int, str]]:
    """Kills the pool's process group; returns what is still alive (none)."""
    if self._proc is None:
      return []
    pgid = self._proc.pid
    try:
      os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    self._proc.wait(STOP_TIMEOUT)
    deadline = time.monotonic() + STOP_TIMEOUT
    left = group_members(pgid)
    while left and time.monotonic() < deadline:
      time.sleep(0.1)
      left = group_members(pgid)
    self._proc = None
    return left

  def __enter__(self) -> 'WorkerPool':
    return self.start()

  def __exit__(self, *exc) -> None:
    left = self.stop()
    if left and exc[0] is None:
      raise AssertionError(f'processes of the worker pool still alive: {left}')
