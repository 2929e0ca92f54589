"""What every command line shares: the flag parser's one-line errors, logging, and the rule that a
`UserError` is one line and exit status 1 while any other exception keeps its traceback."""
import logging
import sys

from rsnets_jax.errors import UserError


def one_line(text: str) -> str:
  return ' '.join(str(text).replace('\\n', ' ').replace("\\'", "'").split()).strip('\'"')


def fail(message: str, status: int = 1):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def run_command(body, *args, prog: str = '', **kwargs) -> int:
  """`body(*args, **kwargs)` of a command: 0 when it returns; on a UserError, one line
  '[prog: ]error: <message>' on stderr and 1. Any other exception is a bug and propagates."""
  try:
    body(*args, **kwargs)
  except UserError as e:
    print(f'{prog + ": " if prog else ""}error: {one_line(e)}', file=sys.stderr)
    return 1
  return 0


def parse_absl_flags(argv):
  """absl's parser, with a one-line error (exit 2) for a wrong flag or config field."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(f'bad command line: {one_line(e)}', status=2)


def config_flag(flag_values, name: str = 'config'):
  """The parsed `--config`, or a one-line error (exit 2) when its file cannot be loaded."""
  try:
    config = getattr(flag_values, name)
    config.seed  # config_flags defers a failed load of the file until the first access
  except OSError as e:
    fail(f'cannot load --{name}: {str(e).strip().splitlines()[-1].strip()}', status=2)
  return config


def setup_logging(process_index: int = 0, logger: str = 'rsnets_jax'):
  """Our progress lines at INFO on process 0; libraries (Orbax, absl) only when something is wrong."""
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  logging.getLogger(logger).setLevel(logging.INFO if process_index == 0 else logging.WARNING)
