"""One writer per work directory: the training loop holds `<workdir>/run.lock` while it runs.

The lock is a small JSON file (host, process, start, heartbeat, a token) created only if absent:
with O_EXCL on local disk, with an `ifGenerationMatch=0` upload on gs://, so two runs cannot both
create it. The holder rewrites its heartbeat every HEARTBEAT_S seconds from a thread and removes
the file on every exit path. A lock left by a killed run is taken over: on this host when its
process is gone, on any host when its heartbeat is older than STALE_S. On several processes,
process 0 holds the lock for the whole job and tells the others whether it got it.
"""
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Optional

import jax

from rsnets_jax import storage
from rsnets_jax.errors import ConfigError

LOCK = 'run.lock'
HEARTBEAT_S = 60.0
STALE_S = 300.0  # five missed heartbeats: the holder is gone

log = logging.getLogger('rsnets_jax')


class _Held(Exception):
  """The lock file exists (raised by a store's `create`)."""


class _LocalStore:
  def __init__(self, path: str):
    self.path = path

  def create(self, text: str):
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      raise _Held() from None
    with os.fdopen(fd, 'w') as f:
      f.write(text)

  def read(self) -> Optional[str]:
    try:
      with open(self.path) as f:
        return f.read()
    except FileNotFoundError:
      return None

  def replace(self, text: str, expected: str) -> bool:
    """Writes `text` if the file still holds `expected`; whether it did."""
    if self.read() != expected:
      return False
    temporary = f'{self.path}.{os.getpid()}.tmp'
    with open(temporary, 'w') as f:
      f.write(text)
    os.replace(temporary, self.path)
    return self.read() == text

  def delete(self, expected: str):
    if self.read() == expected:
      os.remove(self.path)


class _BucketStore:
  """The lock as an object of a bucket; generations make create and replace atomic."""

  def __init__(self, path: str):
    from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
    bucket, name = path[len('gs://'):].split('/', 1)
    self.blob = gcs.Client().bucket(bucket).blob(name)
    self.generation = None

  def _precondition_failed(self, error) -> bool:
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    return isinstance(error, (exceptions.PreconditionFailed, exceptions.NotFound))

  def create(self, text: str):
    try:
      self.blob.upload_from_string(text, if_generation_match=0)
    except Exception as e:  # pylint: disable=broad-except
      if self._precondition_failed(e):
        raise _Held() from None
      raise
    self.generation = self.blob.generation

  def read(self) -> Optional[str]:
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    try:
      text = self.blob.download_as_text()
    except exceptions.NotFound:
      return None
    self.generation = self.blob.generation
    return text

  def replace(self, text: str, expected: str) -> bool:
    if self.read() != expected:
      return False
    try:
      self.blob.upload_from_string(text, if_generation_match=self.generation)
    except Exception as e:  # pylint: disable=broad-except
      if self._precondition_failed(e):
        return False
      raise
    self.generation = self.blob.generation
    return True

  def delete(self, expected: str):
    if self.read() == expected:
      self.blob.delete()


def _now() -> float:
  return time.time()


def _when(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M:%S UTC')


def _gone(holder: Dict[str, Any]) -> Optional[str]:
  """Why the holder of a lock is gone (None when it may still run)."""
  if holder.get('host') == socket.gethostname():
    try:
      os.kill(int(holder['pid']), 0)
    except ProcessLookupError:
      return f"its process {holder['pid']} on this host has ended"
    except (PermissionError, KeyError, ValueError, TypeError):
      pass
  age = _now() - float(holder.get('heartbeat', 0))
  if age > STALE_S:
    return f'its last heartbeat was {age / 60:.0f} minutes ago'
  return None


class RunLock:
  """`with RunLock(workdir):` holds the work directory's lock for the block (see the module)."""

  def __init__(self, workdir):
    self.workdir = os.fspath(workdir)
    path = f'{self.workdir.rstrip("/")}/{LOCK}'
    self.path = path if storage.is_remote(path) else os.path.abspath(path)
    self.mine: Optional[str] = None
    self._store = None
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _record(self, started: float) -> str:
    return json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'started': started,
                       'heartbeat': _now(), 'token': self.token})

  def _take(self):
    """Creates the lock, or takes over one whose holder is gone; a ConfigError names a live one."""
    store = _BucketStore(self.path) if storage.is_remote(self.path) else _LocalStore(self.path)
    self.token, started = uuid.uuid4().hex, _now()
    for _ in range(3):
      text = self._record(started)
      try:
        store.create(text)
        self._store, self.mine = store, text
        return
      except _Held:
        pass
      held = store.read()
      if held is None:
        continue  # released meanwhile: create it again
      try:
        holder = json.loads(held)
      except ValueError:
        holder = {}
      why = _gone(holder) if holder else 'it is not a lock this program wrote'
      if why is None:
        raise ConfigError(
            f"{self.workdir} is being written by another run (host {holder.get('host')}, "
            f"process {holder.get('pid')}, since {_when(float(holder.get('started', 0)))}); "
            f"wait for it to end or stop it, or use another --workdir")
      if store.replace(text, held):
        log.warning('took over %s from a run that is gone (%s)', self.path, why)
        self._store, self.mine = store, text
        return
    raise ConfigError(f'could not take {self.path}: other runs are starting in {self.workdir}; '
                      f'start one at a time')

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      text = self._record(json.loads(self.mine)['started'])
      try:
        if self._store.replace(text, self.mine):
          self.mine = text
      except Exception:  # pylint: disable=broad-except  # a missed heartbeat is not an error
        pass

  def __enter__(self):
    error = None
    if jax.process_index() == 0:
      try:
        self._take()
      except ConfigError as e:
        error = e
    if jax.process_count() > 1:  # every process stops, or none
      import numpy as np  # pylint: disable=import-outside-toplevel
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      taken = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
      if not taken and error is None:
        error = ConfigError(f'{self.workdir} is being written by another run (process 0 of this '
                            f'job names it); wait for it to end, or use another --workdir')
    if error is not None:
      raise error
    if self.mine is not None:
      self._thread = threading.Thread(target=self._beat, daemon=True, name='run-lock')
      self._thread.start()
    return self

  def __exit__(self, *exc):
    self.release()
    return False

  def release(self):
    self._stop.set()
    if self.mine is not None:
      try:
        self._store.delete(self.mine)
      except Exception:  # pylint: disable=broad-except  # e.g. the disk or bucket is gone
        log.warning('could not remove %s; the next run takes it over once this one has ended',
                    self.path)
      self.mine = None
