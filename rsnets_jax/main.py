"""Command line: `python -m rsnets_jax.main --config=configs/resnet18.py --workdir=runs/r18`.

Any config field can be changed on the command line (`--config.data.batch_size=512`); an unknown
field is an error that names the closest ones. `--config.mode=eval` evaluates a checkpoint of the
workdir (`--config.eval_checkpoint`: latest, best or a step number) instead of training, and writes
its reports to `<workdir>/eval/<step>/` (or `--config.eval_dir`), never over the training reports.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from rsnets_jax import cli, defaults

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and reports go (local or gs://).')
flags.mark_flags_as_required(['config', 'workdir'])


def run(config, workdir: str):
  import jax  # pylint: disable=import-outside-toplevel
  defaults.check(config)
  cli.setup_logging()  # before JAX starts its backends, which log at INFO
  if config.distributed:
    # On Cloud TPU and SLURM every argument is discovered; elsewhere the config gives them.
    kwargs = {k: config[k] for k in ('coordinator_address', 'num_processes', 'process_id')
              if config[k] is not None}
    jax.distributed.initialize(**kwargs)
  cli.setup_logging(jax.process_index())
  from rsnets_jax.train import loop  # pylint: disable=import-outside-toplevel
  if config.mode == 'train':
    loop.train_and_evaluate(config, workdir)
  else:
    loop.evaluate_checkpoint(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  sys.exit(cli.run_command(run, config, FLAGS.workdir))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  app.run(main, flags_parser=cli.parse_absl_flags)
