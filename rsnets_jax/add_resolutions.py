"""Command line: add resolutions a trained RS-Net never saw, evaluated beside the trained ones.

    python -m rsnets_jax.add_resolutions --config=configs/imagenette.py --workdir=runs/imagenette \
        --resolutions=120,104,88,72 [--num_images=2048] [--dst=DIR] [--padding=edge]
        [--views=eval] [--affine=interpolated]

Reads the work directory's checkpoint (the latest; `--config.eval_checkpoint=best` for the best;
`--workdir` may also be a directory written by the converter) and never writes there. Each
resolution gets the BatchNorm affine parameters interpolated between its training neighbours
(`--affine=nearest`: the nearest one's, as before), its strided convolutions' odd inputs padded
from the edge where every training resolution gives them even ones (`--padding=zeros`: zero
padding, as before), and running statistics re-estimated at that resolution from the evaluation
views of `--num_images` training images (`--views=train`: from training crops, as before)
(`rsnets_jax.add_resolution`). The
extended network is saved to `--dst` (default <workdir>/with_resolutions), where
`rsnets_jax.load` reads it, together with results.json, results.md and accuracy_vs_macs.png:
every resolution on the validation set, the added ones marked as not trained. The config gives
the data (dataset, data_dir, batch sizes, input scaling) and takes the same `--config.field=value`
overrides as `rsnets_jax.main`; the network (architecture, training resolutions) comes from the
checkpoint.
"""
import sys

from absl import app, flags

from rsnets_jax import cli, data
from rsnets_jax.errors import ConfigError
from rsnets_jax.main import FLAGS  # --config and --workdir, as the training command
from rsnets_jax.models import ADDED_PADDINGS
from rsnets_jax.train import add_resolutions as job
from rsnets_jax.train.recalibrate import AFFINES

flags.DEFINE_list('resolutions', None, 'Resolutions to add, comma-separated: 120,104,88,72.')
flags.register_validator(
    'resolutions', lambda v: v is None or all(r.strip().isdigit() and int(r) > 0 for r in v),
    message='--resolutions must be positive integers separated by commas')
flags.DEFINE_integer('num_images', job.DEFAULT_NUM_IMAGES,
                     'Training images (whole batches of config.data.batch_size) that re-estimate '
                     'the BatchNorm statistics of each added resolution.', lower_bound=1)
flags.DEFINE_enum('padding', job.DEFAULT_PADDING, list(ADDED_PADDINGS),
                  "What an added size's strided convolutions see past an odd input: its edge "
                  "repeated, where every training size gives them even ones, or zeros.")
flags.DEFINE_enum('views', job.DEFAULT_VIEWS, list(data.RECALIBRATION_VIEWS),
                  'The images that re-estimate the statistics: evaluation views of training '
                  'images, or training crops.')
flags.DEFINE_enum('affine', job.DEFAULT_AFFINE, list(AFFINES),
                  "An added size's BatchNorm scale and shift: interpolated between its training "
                  "neighbours, or the nearest one's.")
flags.DEFINE_string('dst', None, f'Where the extended checkpoint and reports go '
                    f'(default: <workdir>/{job.DEFAULT_SUBDIR}).')
flags.mark_flags_as_required(['resolutions'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  cli.setup_logging()

  def body():
    if config.distributed:
      raise ConfigError('adding resolutions runs in one process; drop --config.distributed')
    job.add_resolutions(config, FLAGS.workdir, [int(r) for r in FLAGS.resolutions],
                        FLAGS.num_images, FLAGS.dst, FLAGS.padding, FLAGS.views, FLAGS.affine)
  sys.exit(cli.run_command(body))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  app.run(main, flags_parser=cli.parse_absl_flags)
