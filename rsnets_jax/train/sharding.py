"""Where arrays live: a 1-D mesh over every device of every host, the batch split over its 'data'
axis, the state replicated. The same code runs on one CPU, one GPU and a TPU pod."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device of every host (or the given ones); the batch is split over it."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch, mesh: Mesh):
  """Builds global arrays from each process's local part of the batch (its rows, in order)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  """`tree`, the same on every process, as arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
      # device_put cannot place a key array on devices of other processes; its raw data it can.
      return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)
