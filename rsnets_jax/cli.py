"""What every command line shares: the flag parser's one-line errors, logging, the rule that a
`UserError` is one line and exit status 1 while any other exception keeps its traceback, and the
process memory settings that XLA's CPU runtime runs fastest with."""
import difflib
import logging
import os
import platform
import re
import signal
import sys
from typing import List, Mapping, Optional, Tuple

from rsnets_jax.errors import UserError


# XLA's CPU runtime takes new memory for a step's buffers at every call, and glibc maps large
# allocations as fresh 4 KB pages: the page faults cost a small-resolution train step a large
# share of its time. glibc's hugetlb tunable (transparent 2 MB pages, madvised) removes most of
# them (experiments/BENCHMARKS.md has the counts and timings). glibc reads tunables only at
# process start.
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
HUGE_PAGES_GLIBC = (2, 35)  # the first glibc with that tunable
NO_RESTART = 'RSNETS_JAX_NO_RESTART'  # set to 1 to keep the process as started
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def wants_huge_pages(environ: Mapping[str, str], libc: Tuple[str, str],
                     thp_mode: Optional[str]) -> bool:
  """Whether a command should restart with HUGE_PAGES: glibc new enough, transparent huge pages
  given on request ('madvise'; with 'always' every large allocation has them already), and the
  tunable neither set nor refused."""
  name, version = libc
  try:
    new_enough = name == 'glibc' and tuple(map(int, version.split('.')[:2])) >= HUGE_PAGES_GLIBC
  except ValueError:
    return False
  return (new_enough and thp_mode is not None and '[madvise]' in thp_mode
          and 'glibc.malloc.hugetlb' not in environ.get('GLIBC_TUNABLES', '')
          and environ.get(NO_RESTART, '') in ('', '0'))


def restart_with_huge_pages():
  """Runs this command again from its start with glibc's huge-page tunable, where that helps and
  is missing (`wants_huge_pages`). Call it first in a command's `__main__` block: nothing has
  happened yet, so starting again loses nothing but the imports (under a second)."""
  try:
    with open(THP_MODE) as f:
      thp_mode = f.read()
  except OSError:
    return
  if not (sys.platform.startswith('linux') and
          wants_huge_pages(os.environ, platform.libc_ver(), thp_mode)):
    return
  environ = dict(os.environ)
  environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [environ.get('GLIBC_TUNABLES'), HUGE_PAGES]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def one_line(text: str) -> str:
  text = ' '.join(str(text).replace('\\n', ' ').replace("\\'", "'").split())
  quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"'  # str(KeyError('x'))
  return text[1:-1] if quoted else text


def fail(message: str, status: int = 1):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


INTERRUPTED = 130  # the shell's status of a process stopped by Ctrl-C


def run_command(body, *args, prog: str = '', **kwargs) -> int:
  """`body(*args, **kwargs)` of a command: 0 when it returns; on a UserError, one line
  '[prog: ]error: <message>' on stderr and 1; on Ctrl-C, one line '[prog: ]interrupted[: how
  it stopped]' and exit status 130 at once (a compilation left running on a worker thread must
  not hold the process). Any other exception is a bug and propagates."""
  try:
    body(*args, **kwargs)
  except UserError as e:
    print(f'{prog + ": " if prog else ""}error: {one_line(e)}', file=sys.stderr)
    return 1
  except KeyboardInterrupt as e:
    said = one_line(e) if str(e) else ''
    print(f'{prog + ": " if prog else ""}interrupted{": " + said if said else ""}',
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)  # pylint: disable=protected-access
  return 0


def stop_at_once_on_ctrl_c():
  """Until a command handles Ctrl-C itself (the training loop does), Ctrl-C ends the process at
  once with one line and status 130, not a traceback from whatever was being imported."""
  def stop(signum, frame):
    del signum, frame
    os.write(2, b'interrupted\n')
    os._exit(INTERRUPTED)  # pylint: disable=protected-access
  try:
    signal.signal(signal.SIGINT, stop)
  except ValueError:  # not the main thread
    pass


def parse_absl_flags(argv):
  """absl's parser, with a one-line error (exit 2) for a wrong flag or config field."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(unknown_config_field(argv, flags.FLAGS) or f'bad command line: {one_line(e)}', status=2)


def config_fields(config, prefix: str = '') -> List[str]:
  """Every field of a config, by its command-line name: 'seed', 'data.batch_size', ..."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  names = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      names += config_fields(value, f'{prefix}{key}.')
    else:
      names.append(prefix + key)
  return names


def unknown_config_field(argv, flag_values, name: str = 'config') -> Optional[str]:
  """"unknown config field 'x'" and its closest names, for the first `--config.x` of `argv` that
  the loaded config lacks; None when every field exists (or no config could be loaded)."""
  overrides = re.compile(rf'--(?:no)?{re.escape(name)}\.([^=]+)(=.*)?', re.S)
  files = [arg.split('=', 1)[1] for arg in argv[1:] if arg.startswith(f'--{name}=')]
  try:
    # The config file as the flag loads it, without the overrides (the parse failed on one).
    fields = config_fields(flag_values[name].parser.parse(files[-1]))
  except Exception:  # pylint: disable=broad-except  # then the parser's own message says it
    return None
  for arg in argv[1:]:
    match = overrides.fullmatch(arg)
    if not match or match[1] in fields or any(f.startswith(match[1] + '.') for f in fields):
      continue
    field = match[1]
    # The same name in another section first (a forgotten section), then near spellings.
    close = [f for f in fields if f.rsplit('.', 1)[-1] == field.rsplit('.', 1)[-1]]
    close = close or difflib.get_close_matches(field, fields, n=2, cutoff=0.7)
    hint = (f'; did you mean {" or ".join(close)}?' if close else
            '; rsnets_jax/defaults.py lists every field')
    return f"unknown config field '{field}'{hint}"
  return None


def config_flag(flag_values, name: str = 'config'):
  """The parsed `--config`, or a one-line error (exit 2) when its file cannot be loaded."""
  try:
    config = getattr(flag_values, name)
    config.seed  # config_flags defers a failed load of the file until the first access
  except OSError as e:
    fail(f'cannot load --{name}: {str(e).strip().splitlines()[-1].strip()}', status=2)
  return config


def setup_logging(process_index: int = 0, logger: str = 'rsnets_jax'):
  """Our progress lines at INFO on process 0; libraries (Orbax, absl) only when something is
  wrong."""
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  logging.getLogger(logger).setLevel(logging.INFO if process_index == 0 else logging.WARNING)
