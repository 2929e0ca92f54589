"""One process of a multi-process run on CPU: `python distributed_worker.py PORT NPROC PID OUT`.

Each process feeds its own rows of the same global batches to the sharded train step and process 0
saves the resulting parameters; with NPROC=1 the one process feeds every row.
"""
import sys

import jax

port, num_processes, process_id, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update('jax_num_cpu_devices', 8 // num_processes)
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
if num_processes > 1:
  jax.distributed.initialize(f'localhost:{port}', num_processes, process_id)

import numpy as np  # noqa: E402

from rsnets_jax import defaults
from rsnets_jax.train import optim, sharding
from rsnets_jax.train import step as steps  # noqa: E402
from rsnets_jax.models import RSNet  # noqa: E402

config = defaults.get_config()
config.model.update(arch='resnet18', width=0.125, num_classes=4, resolutions=(32, 16))
config.data.batch_size, config.optim.learning_rate = 16, 0.05
net = RSNet(**config.model)
optimizer = optim.create_optimizer(config.optim, 10, 10)
mesh = sharding.make_mesh()
assert mesh.devices.size == 8, mesh
init_key, step_key = steps.run_keys(0)
state = sharding.replicate(steps.create_train_state(net, optimizer, init_key), mesh)
step_key = sharding.replicate(step_key, mesh)
step = steps.make_train_step(net, config, mesh)
rows = config.data.batch_size // num_processes
for s in range(2):
  rng = np.random.default_rng(s)
  batch = {'image': rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8),
           'label': rng.integers(0, 4, 16).astype(np.int32)}
  local = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
  state, metrics = step(state, sharding.shard_batch(local, mesh), step_key)
params = jax.tree.map(np.asarray, jax.device_get(state.params))
if process_id == 0:
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(out, loss=np.asarray(jax.device_get(metrics['loss'])), **flat)
