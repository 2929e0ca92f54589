"""rsnets_jax: Resolution Switchable Networks (RS-Nets, ECCV 2020) in JAX/Flax."""
from rsnets_jax.checkpoint import load, save_model
from rsnets_jax.errors import CheckpointError, UserError
from rsnets_jax.network import RSNet, create_model
from rsnets_jax.recalibrate import add_resolution, reuse_batchnorm

__all__ = ['CheckpointError', 'RSNet', 'UserError', 'add_resolution', 'create_model', 'load',
           'reuse_batchnorm', 'save_model']
