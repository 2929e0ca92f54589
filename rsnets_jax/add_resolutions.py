"""Command line: add resolutions a trained RS-Net never saw, evaluated beside the trained ones.

    python -m rsnets_jax.add_resolutions --config=configs/imagenette.py --workdir=runs/imagenette \
        --resolutions=120,104,88,72 [--num_images=2048] [--dst=DIR]

Reads the work directory's checkpoint (the latest; `--config.eval_checkpoint=best` for the best;
`--workdir` may also be a directory written by the converter) and never writes there. Each
resolution gets the BatchNorm affine parameters of the nearest training resolution (ties to the
larger) and running statistics re-estimated at that resolution from `--num_images` training crops
(`rsnets_jax.add_resolution`). The extended network is saved to `--dst` (default
<workdir>/with_resolutions), where `rsnets_jax.load` reads it, together with results.json,
results.md and accuracy_vs_macs.png: every resolution on the validation set, the added ones marked
as not trained. The config gives the data (dataset, data_dir, batch sizes, input scaling) and
takes the same `--config.field=value` overrides as `rsnets_jax.main`; the network (architecture,
training resolutions) comes from the checkpoint.
"""
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

from absl import app, flags
from etils import epath

from rsnets_jax import (checkpoint, cli, data, defaults, evaluate, loop, paths, recalibrate,
                        steps)
from rsnets_jax.errors import ConfigError
from rsnets_jax.main import FLAGS  # --config and --workdir, as the training command

DEFAULT_SUBDIR = 'with_resolutions'

flags.DEFINE_list('resolutions', None, 'Resolutions to add, comma-separated: 120,104,88,72.')
flags.register_validator(
    'resolutions', lambda v: v is None or all(r.strip().isdigit() and int(r) > 0 for r in v),
    message='--resolutions must be positive integers separated by commas')
flags.DEFINE_integer('num_images', recalibrate.DEFAULT_NUM_IMAGES,
                     'Training images (whole batches of config.data.batch_size) that re-estimate the '
                     'BatchNorm statistics of each added resolution.', lower_bound=1)
flags.DEFINE_string('dst', None, f'Where the extended checkpoint and reports go '
                    f'(default: <workdir>/{DEFAULT_SUBDIR}).')
flags.mark_flags_as_required(['resolutions'])

log = logging.getLogger('rsnets_jax')


def check_destination(dst, workdir):
  """Refuses a `dst` whose replacement would touch the checkpoint being read or anything this
  command did not write (save_model replaces the whole directory)."""
  d, w = paths.absolute(dst), paths.absolute(workdir)
  if w == d or w.startswith(d + '/'):
    raise ConfigError(f'--dst {dst} holds the checkpoint being read; choose another directory')
  checkpoints = os.path.join(w, checkpoint.CHECKPOINT_SUBDIR)
  if d == checkpoints or d.startswith(checkpoints + '/'):
    raise ConfigError(f'--dst {dst} is in the training checkpoints; choose another directory')
  path = epath.Path(os.fspath(dst))
  if path.exists() and any(path.iterdir()):
    try:
      ours = 'added_resolutions' in checkpoint.read_meta(path)
    except Exception:  # pylint: disable=broad-except  # anything unreadable is not ours
      ours = False
    if not ours:
      raise ConfigError(f'--dst {dst} exists and was not written by this command; choose another '
                        f'directory')


def add_resolutions(config, workdir, resolutions: Sequence[int],
                    num_images: int = recalibrate.DEFAULT_NUM_IMAGES,
                    dst: Optional[str] = None) -> Dict[str, Any]:
  """Adds `resolutions` to the checkpoint in `workdir`, saves the result in `dst`, evaluates every
  resolution and writes the reports there. Returns the results table."""
  # -- the trained network --
  defaults.check(config)
  net, params, stats = checkpoint.load(workdir, which=config.eval_checkpoint)
  resolutions = sorted({int(r) for r in resolutions}, reverse=True)
  present = [r for r in resolutions if r in net.all_resolutions]
  if present:
    raise ConfigError(f'the network already runs at {present} (its resolutions: '
                     f'{list(net.all_resolutions)}); add other ones')
  dst = dst or os.path.join(os.fspath(workdir), DEFAULT_SUBDIR)
  check_destination(dst, workdir)
  given_config = config.to_dict()
  mean, std = steps.input_normalisation(config.data)

  batches, used = data.recalibration_batches(config, set(net.resolutions) | set(resolutions),
                                             num_images)

  # -- add each resolution --
  added = {}
  for res in resolutions:
    source = None if net.shared_bn else recalibrate.nearest_resolution(net.resolutions, res)
    net, params, stats = recalibrate.add_resolution(net, params, stats, res, batches, used,
                                                    mean, std)
    added[str(res)] = {'affine_from': source}
    log.info('added resolution %d: BatchNorm affine parameters from %s, statistics from %d '
             'training images', res, source or 'the shared BatchNorm', used)

  # -- save: a checkpoint that rsnets_jax.load reads --
  provenance = {'added_resolutions': added, 'recalibration_images': used,
                'source_checkpoint': os.fspath(workdir)}
  checkpoint.save_model(dst, net, params, stats, {**provenance, 'config': given_config})
  log.info('wrote %s with resolutions %s (trained %s)', dst, list(net.all_resolutions),
           list(net.resolutions))

  # -- evaluate every resolution, trained and added --
  mesh = steps.make_mesh()
  params, stats = steps.replicate((params, stats), mesh)
  accuracies = loop.run_eval(config, net, params, stats, mesh)

  # -- reports --
  table = evaluate.results_table(net, accuracies, net.all_resolutions)  # trained: net.resolutions
  added_list = ', '.join(map(str, resolutions))
  evaluate.write_reports(
      dst, table, f'RS-{net.arch} on {evaluate.dataset_name(config.data)}, added {added_list}',
      provenance)
  log.info('evaluation:\n%s', evaluate.markdown(table))
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  cli.setup_logging()

  def body():
    if config.distributed:
      raise ConfigError('adding resolutions runs in one process; drop --config.distributed')
    add_resolutions(config, FLAGS.workdir, [int(r) for r in FLAGS.resolutions], FLAGS.num_images,
                    FLAGS.dst)
  sys.exit(cli.run_command(body))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  app.run(main, flags_parser=cli.parse_absl_flags)
