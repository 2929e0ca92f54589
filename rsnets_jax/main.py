"""Command line: `python -m rsnets_jax.main --config=configs/resnet18.py --workdir=runs/r18`.

Any config field can be changed on the command line (`--config.batch_size=512`); an unknown field
is an error. `--config.mode=eval` evaluates the workdir's latest checkpoint instead of training.
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and reports go (local or gs://).')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parser, with a one-line error for a wrong flag or config field instead of a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = ' '.join(str(e).replace('\\n', ' ').replace("\\'", "'").split()).strip('\'"')
    print(f'error: bad command line: {message}', file=sys.stderr)
    sys.exit(2)


def config_from_flags():
  """FLAGS.config, or a one-line error and exit status 2 when the file cannot be loaded."""
  try:
    config = FLAGS.config
    config.mode  # config_flags defers a failed load of the file until the first access
  except OSError as e:
    print(f'error: cannot load --config: {str(e).strip().splitlines()[-1].strip()}', file=sys.stderr)
    sys.exit(2)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = config_from_flags()
  import jax
  if config.distributed:
    # On Cloud TPU and SLURM every argument is discovered; elsewhere the config gives them.
    kwargs = {k: config[k] for k in ('coordinator_address', 'num_processes', 'process_id')
              if config[k] is not None}
    jax.distributed.initialize(**kwargs)
  # Our progress lines at INFO on process 0; libraries (Orbax, absl) only when something is wrong.
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  logging.getLogger('rsnets_jax').setLevel(
      logging.INFO if jax.process_index() == 0 else logging.WARNING)
  from rsnets_jax import checkpoint, data, trainer
  try:
    if config.mode == 'train':
      trainer.train_and_evaluate(config, FLAGS.workdir)
    elif config.mode == 'eval':
      trainer.evaluate_checkpoint(config, FLAGS.workdir)
    else:
      raise ValueError(f"config.mode must be 'train' or 'eval', got {config.mode!r}")
  except (data.DataError, checkpoint.CheckpointError, trainer.TrainingError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
