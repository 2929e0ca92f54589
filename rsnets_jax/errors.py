"""The errors a user can cause. Command lines print these as one line and exit 1; every other
exception is a bug and keeps its traceback.

Each also derives from ValueError, so library callers that catch ValueError keep working.
"""
from typing import Any


class UserError(ValueError):
  """Something the user can fix: the message is one line that says what and how."""


class ConfigError(UserError):
  """A config (or a command-line value) that cannot describe a run."""


class DataError(UserError):
  """A data set that is missing, unreadable or not prepared."""


class CheckpointError(UserError):
  """A checkpoint that is missing, unreadable or does not fit the run."""


class TrainingError(UserError):
  """A run that cannot go on, e.g. a non-finite loss."""


class StorageError(UserError):
  """A disk or bucket that refused a write (no space, no quota, no permission)."""


class ConversionError(UserError):
  """A PyTorch checkpoint that cannot be converted."""


def require(ok: bool, field: str, value: Any, expected: str):
  """The one message of a config rule: a ConfigError 'config.<field> must be <expected>, got
  <value>' unless `ok`. Each rule lives with the code that owns the value."""
  if not ok:
    raise ConfigError(f'config.{field} must be {expected}, got {value!r}')
