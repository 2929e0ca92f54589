"""Paths that are either on this machine or in a bucket (gs://...), told apart in one place."""
import os


def is_remote(path) -> bool:
  """Whether `path` is a URL such as gs://bucket/dir rather than a path on this machine."""
  return '://' in os.fspath(path)


def absolute(path) -> str:
  """`path` with a local one made absolute (Orbax requires it) and a URL as it is, without a
  trailing slash."""
  path = os.fspath(path)
  return path.rstrip('/') if is_remote(path) else os.path.abspath(path)
