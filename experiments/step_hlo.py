"""The compiled five-resolution train step as text, without source locations: two checkouts whose
texts are equal run the same XLA program, so a refactor that keeps the text cannot change speed.

    PYTHONPATH=. python experiments/step_hlo.py --res 64 56 48 40 32 --batch 32 --out step.hlo

prints the text's SHA-256 and line count. Run it from each checkout (it also reads the layout of
commits before the subpackages, 37e76f4 and earlier) and compare the files with `diff`.
"""
import argparse
import hashlib
import re

import jax
import jax.numpy as jnp

from rsnets_jax import defaults


def train_step_and_state(config):
  try:  # the layout by stage
    from rsnets_jax.models import RSNet  # pylint: disable=import-outside-toplevel
    from rsnets_jax.train import optim, sharding, step  # pylint: disable=import-outside-toplevel
    net = RSNet(**config.model)
    mesh = sharding.make_mesh(jax.devices()[:1])
    state = step.create_train_state(net, optim.create_optimizer(config.optim, 1000, 1000),
                                    jax.random.key(0))
    return step.make_train_step(net, config, mesh), sharding.replicate(state, mesh)
  except ImportError:  # the flat layout of 37e76f4 and before
    from rsnets_jax import steps  # pylint: disable=import-outside-toplevel,no-name-in-module
    from rsnets_jax.network import RSNet  # pylint: disable=import-outside-toplevel
    net = RSNet(**config.model)
    mesh = steps.make_mesh(jax.devices()[:1])
    tx, _ = steps.create_optimizer(config.optim, 1000, 1000)
    state = steps.create_train_state(net, tx, jax.random.key(0))
    return steps.make_train_step(net, config, 1000, 1000, mesh), steps.replicate(state, mesh)


def without_locations(text: str) -> str:
  """The HLO text without its tables of source files and stack frames and the references to them."""
  lines = [line for line in text.splitlines() if not re.match(r'^\d+ ["{]', line)]
  return '\n'.join(re.sub(r'origin=\{[^}]*\}|stack_frame_id=\d+|metadata=\{[^}]*\}', '', line)
                   for line in lines) + '\n'


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--res', type=int, nargs='+', default=[224, 192, 160, 128, 96])
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--out', required=True, help='where the text goes')
  args = ap.parse_args()
  config = defaults.get_config()
  config.model.resolutions = tuple(args.res)
  train_step, state = train_step_and_state(config)
  batch = {'image': jax.ShapeDtypeStruct((args.batch, args.res[0], args.res[0], 3), jnp.uint8),
           'label': jax.ShapeDtypeStruct((args.batch,), jnp.int32)}
  text = without_locations(train_step.lower(state, batch, jax.random.key(1)).compile().as_text())
  with open(args.out, 'w') as f:
    f.write(text)
  print(hashlib.sha256(text.encode()).hexdigest(), len(text.splitlines()), 'lines')


if __name__ == '__main__':
  main()
