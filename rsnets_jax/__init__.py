"""rsnets_jax: Resolution Switchable Networks (RS-Nets, ECCV 2020) in JAX/Flax.

The public API: `create_model` / `RSNet` (`net.init`, `net.apply(params, stats[res], x)`,
`net.macs`), `load` and `save_model` (checkpoints that carry their network), `add_resolution` and
`reuse_batchnorm` (resolutions that were not trained).

The rooms: `models/` (layers, architectures, `RSNet`), `data/` (data sets, input pipeline,
preprocessing), `train/` (loss, optimiser, steps, loop, evaluation, recalibration),
`checkpoints/` (Orbax, the PyTorch converter), `deploy/` (folding, export formats, runtimes,
profile, predict). The top level holds this API, `defaults` (every hyper-parameter), `errors`,
`storage` (local and gs:// paths), `cli` and one module per command:
`python -m rsnets_jax.{main,export,profile,predict,convert,add_resolutions}`.
"""
import sys

from rsnets_jax import cli

_RUN = getattr(sys, 'orig_argv', [])
if '-m' in _RUN[:-1] and _RUN[_RUN.index('-m') + 1].startswith('rsnets_jax.'):
  cli.stop_at_once_on_ctrl_c()  # python -m rsnets_jax.<command>: Ctrl-C is one line from here on

# pylint: disable=wrong-import-position
from rsnets_jax.checkpoints import load, save_model
from rsnets_jax.errors import CheckpointError, UserError
from rsnets_jax.models import RSNet, create_model
from rsnets_jax.train.recalibrate import add_resolution, reuse_batchnorm

__all__ = ['CheckpointError', 'RSNet', 'UserError', 'add_resolution', 'create_model', 'load',
           'reuse_batchnorm', 'save_model']
