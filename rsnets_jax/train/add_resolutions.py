"""The job behind `python -m rsnets_jax.add_resolutions`: resolutions a trained RS-Net never saw
added to its checkpoint (recalibrate.py), saved beside it, and evaluated with the trained ones.

Reads the checkpoint and never writes there. Each resolution gets the BatchNorm affine parameters
interpolated between its training neighbours, its strided convolutions' odd inputs padded from
the edge (`RSNet.added_padding`), and running statistics re-estimated at that resolution from the
evaluation views of training images (`padding='zeros'`, `views='train'`, `affine='nearest'`: the
earlier procedure). The extended network is saved where `rsnets_jax.load` reads it, with
results.json, results.md and accuracy_vs_macs.png: every resolution on the validation set, the
added ones marked as not trained.
"""
import logging
import os
from typing import Any, Dict, Optional, Sequence

from etils import epath

from rsnets_jax import checkpoints, data, defaults, storage
from rsnets_jax.data import preprocess
from rsnets_jax.errors import ConfigError
from rsnets_jax.train import reports, sharding
from rsnets_jax.train.evaluate import run_eval
from rsnets_jax.train.recalibrate import (DEFAULT_AFFINE, DEFAULT_NUM_IMAGES, DEFAULT_PADDING,
                                         DEFAULT_VIEWS, add_resolution, affine_sources,
                                         check_padding)

log = logging.getLogger('rsnets_jax')

DEFAULT_SUBDIR = 'with_resolutions'


def check_destination(dst, workdir):
  """Refuses a `dst` whose replacement would touch the checkpoint being read or anything this
  command did not write (save_model replaces the whole directory)."""
  d, w = storage.absolute(dst), storage.absolute(workdir)
  if w == d or w.startswith(d + '/'):
    raise ConfigError(f'--dst {dst} holds the checkpoint being read; choose another directory')
  training = os.path.join(w, checkpoints.CHECKPOINT_SUBDIR)
  if d == training or d.startswith(training + '/'):
    raise ConfigError(f'--dst {dst} is in the training checkpoints; choose another directory')
  path = epath.Path(os.fspath(dst))
  if path.exists() and any(path.iterdir()):
    try:
      ours = 'added_resolutions' in checkpoints.read_meta(path)
    except Exception:  # pylint: disable=broad-except  # anything unreadable is not ours
      ours = False
    if not ours:
      raise ConfigError(f'--dst {dst} exists and was not written by this command; choose another '
                        f'directory')


def add_resolutions(config, workdir, resolutions: Sequence[int],
                    num_images: int = DEFAULT_NUM_IMAGES, dst: Optional[str] = None,
                    padding: str = DEFAULT_PADDING, views: str = DEFAULT_VIEWS,
                    affine: str = DEFAULT_AFFINE) -> Dict[str, Any]:
  """Adds `resolutions` to the checkpoint in `workdir`, saves the result in `dst`, evaluates every
  resolution and writes the reports there. Returns the results table."""
  # -- the trained network --
  defaults.check(config)
  net, params, stats = checkpoints.load(workdir, which=config.eval_checkpoint)
  resolutions = sorted({int(r) for r in resolutions}, reverse=True)
  present = [r for r in resolutions if r in net.all_resolutions]
  if present:
    raise ConfigError(f'the network already runs at {present} (its resolutions: '
                     f'{list(net.all_resolutions)}); add other ones')
  dst = dst or os.path.join(os.fspath(workdir), DEFAULT_SUBDIR)
  check_destination(dst, workdir)
  given_config = config.to_dict()
  mean, std = preprocess.input_normalisation(config.data)

  # A wrong padding or affine fails here, before the images are read.
  check_padding(net, padding, resolutions)
  affine_sources(net.resolutions, resolutions[0], affine)
  batches, used = data.recalibration_batches(config, set(net.resolutions) | set(resolutions),
                                             num_images, views)

  # -- add each resolution --
  added = {}
  for res in resolutions:
    sources = affine_sources(net.resolutions, res, affine)
    net, params, stats = add_resolution(net, params, stats, res, batches, used, mean, std,
                                        padding, affine)
    affine_from = ('the shared BatchNorm' if net.shared_bn else
                   ' + '.join(f'{w:.3g} x {src}' for src, w in sources.items()))
    added[str(res)] = {'affine_from': None if net.shared_bn else
                       {str(src): w for src, w in sources.items()},
                       'padding': padding, 'statistics_from': views}
    log.info('added resolution %d: BatchNorm affine parameters %s, statistics from the %s views '
             'of %d training images, %s padding', res, affine_from, views, used, padding)

  # -- save: a checkpoint that rsnets_jax.load reads --
  provenance = {'added_resolutions': added, 'recalibration_images': used,
                'source_checkpoint': os.fspath(workdir)}
  checkpoints.save_model(dst, net, params, stats, {**provenance, 'config': given_config})
  log.info('wrote %s with resolutions %s (trained %s)', dst, list(net.all_resolutions),
           list(net.resolutions))

  # -- evaluate every resolution, trained and added --
  mesh = sharding.make_mesh()
  params, stats = sharding.replicate((params, stats), mesh)
  accuracies = run_eval(config, net, params, stats, mesh)

  # -- reports --
  table = reports.results_table(net, accuracies, net.all_resolutions)  # trained: net.resolutions
  added_list = ', '.join(map(str, resolutions))
  reports.write_reports(
      dst, table, f'RS-{net.arch} on {data.report_name(config.data)}, added {added_list}',
      provenance)
  log.info('evaluation:\n%s', reports.markdown(table))
  return table
