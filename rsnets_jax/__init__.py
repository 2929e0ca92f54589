"""rsnets_jax: Resolution Switchable Networks (RS-Nets, ECCV 2020) in JAX/Flax."""
from rsnets_jax.checkpoint import load, save_model
from rsnets_jax.network import RSNet, create_model
from rsnets_jax.recalibrate import add_resolution

__all__ = ['RSNet', 'add_resolution', 'create_model', 'load', 'save_model']
