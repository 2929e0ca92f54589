"""Checkpoints: Orbax checkpoints of training runs and of single networks (`store`), and published
PyTorch checkpoints converted into them (`pytorch`).

Every checkpoint carries its network (`RSNet(**meta['model'])`), so `load(path)` needs no config.
This room imports `models` and `rsnets_jax.storage`.
"""
from rsnets_jax.checkpoints.store import (CHECKPOINT_SUBDIR, NAMES, TrainCheckpoints, find, load,
                                          model_meta, network_from_meta, parse_which, read_meta,
                                          save_model, stored_network)

__all__ = ['CHECKPOINT_SUBDIR', 'NAMES', 'TrainCheckpoints', 'find', 'load', 'model_meta',
           'network_from_meta', 'parse_which', 'read_meta', 'save_model', 'stored_network']
