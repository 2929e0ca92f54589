"""Paths on this machine or in a bucket (gs://...): told apart in one place, and checked before a
run reads or writes them, each failure one line that says what to do."""
import errno
import importlib
import os
import re
import sys
from typing import NamedTuple, Optional

from etils import epath
import jax

from rsnets_jax.errors import ConfigError


def is_remote(path) -> bool:
  """Whether `path` is a URL such as gs://bucket/dir rather than a path on this machine."""
  return '://' in os.fspath(path)


def absolute(path) -> str:
  """`path` with a local one made absolute (Orbax requires it) and a URL as it is, without a
  trailing slash."""
  path = os.fspath(path)
  return path.rstrip('/') if is_remote(path) else os.path.abspath(path)


def errors() -> tuple:
  """What reading or writing a path can raise for a reason outside the program: OSError (a
  missing or forbidden local or gs:// path, a refused connection), and for gs:// gcsfs' other HTTP
  errors (e.g. 401), google-cloud-storage's, Google's credential errors and TensorFlow's, when
  those are loaded."""
  errors = [OSError]
  for module, name in (('gcsfs.retry', 'HttpError'), ('google.auth.exceptions', 'GoogleAuthError'),
                       ('google.api_core.exceptions', 'GoogleAPICallError'),
                       ('tensorflow.errors', 'OpError')):
    error = getattr(sys.modules.get(module), name, None)
    if error is not None:
      errors.append(error)
  return tuple(errors)


def reason(error: BaseException) -> str:
  """The gist of a storage error: its strerror or message (the server's words, without the
  request), else the last line of what it says."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = (getattr(error, 'strerror', None) or getattr(error, 'message', None) or
          (lines[-1] if lines else type(error).__name__))
  text = re.sub(r'^(\d{3} )?[A-Z]+ https?://\S+: ', '', ' '.join(str(text).split()))
  return text if len(text) <= 240 else text[:237] + '...'


def check_storage(path, what: str, error=ConfigError, checkpoints: bool = False):
  """For a gs:// `path`, before anything reads or writes it: the clients of the cloud extra are
  installed, and the bucket exists and this machine may list it (and, for `checkpoints`, read its
  metadata, as Orbax does to list a run's steps: storage.buckets.get, which
  roles/storage.objectAdmin does not grant); otherwise `error`, one line that names `what`, the
  bucket and what to do. Local paths pass (the other checks name them)."""
  path = os.fspath(path)
  if not path.startswith('gs://'):
    return
  for module in ('gcsfs', 'google.cloud.storage'):  # etils.epath's gs:// backend; TensorBoard's
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise error(f"{what} {path} is on Cloud Storage, which needs the cloud extra: pip install "
                  f"-e '.[cloud]' ({e.name or module} is missing)") from e
  bucket = 'gs://' + path[len('gs://'):].split('/', 1)[0]
  try:
    next(iter(epath.Path(bucket).iterdir()), None)
  except FileNotFoundError as e:
    raise error(f'{what} {path}: bucket {bucket} does not exist: create it (gcloud storage '
                f'buckets create {bucket} --location=REGION) or fix the path') from e
  except errors() as e:
    raise error(f"{what} {path}: cannot list bucket {bucket} ({reason(e)}): grant this "
                f"machine's service account access to it, or fix the path") from e
  if checkpoints:
    from google.cloud import storage  # pylint: disable=import-outside-toplevel
    try:
      storage.Client().get_bucket(bucket[len('gs://'):])
    except errors() as e:
      raise error(f"{what} {path}: cannot read bucket {bucket} ({reason(e)}), as Orbax does to "
                  f"list checkpoints: grant this machine's service account "
                  f"roles/storage.legacyBucketReader on it too") from e


def check_writable(directory, fix: str):
  """Creates `directory` and a file in it (then removes the file), or raises a ConfigError that
  names the directory and `fix`. Every process checks: each writes its own checkpoint shards."""
  path = epath.Path(os.fspath(directory))
  probe = path / f'.rsnets_jax_write_test.{jax.process_index()}.{os.getpid()}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except errors() as e:
    if os.fspath(directory).startswith('gs://'):
      fix = f"grant this machine's service account write access to it, or {fix}"
    raise ConfigError(f'cannot write to {directory} ({reason(e)}): {fix}') from e


class Failure(NamedTuple):
  reason: str  # e.g. 'No space left on device'
  path: Optional[str]  # the file or directory, when the error says it


# errno values that mean the storage refused a write, not a bug: no space, no quota, no
# permission (lost mid-run), a read-only or failing disk.
_REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO)
_STATUS = {'RESOURCE_EXHAUSTED': 'no space or quota left', 'PERMISSION_DENIED': 'permission denied'}


def _chain(error: BaseException):
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def failure(error: BaseException) -> Optional[Failure]:
  """The storage failure behind `error` (the first one raised, following what it was raised
  from), or None when it is not one: a write refused for space, quota or permission, as Python
  (OSError), TensorStore (Orbax's arrays: 'RESOURCE_EXHAUSTED ... os_error_code=28') or a bucket's
  client (HTTP 403, 429, 507) says it."""
  from rsnets_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  found = None
  for e in _chain(error):
    if isinstance(e, UserError):
      return None  # already one line
    text = str(e)
    code = getattr(e, 'errno', None) if isinstance(e, OSError) else None
    match = re.search(r"os_error_code='?(\d+)", text)
    if match:
      code = int(match[1])
    path = getattr(e, 'filename', None) if isinstance(e, OSError) else None
    quoted = re.findall(r'"((?:/|gs://)[^"]+)"', text)
    path = path or (quoted[-1] if quoted else None)
    if code in _REFUSALS:
      found = Failure(os.strerror(code), path and os.fspath(path))
    elif any(status in text for status in _STATUS):
      found = Failure(next(v for k, v in _STATUS.items() if k in text), path)
    elif getattr(e, 'code', None) in (403, 429, 507) and not isinstance(e, OSError):
      found = Failure(reason(e), path)
  return found
