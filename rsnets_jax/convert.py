"""Command line: a published PyTorch RS-Net checkpoint as one that `rsnets_jax.load` reads.

    python -m rsnets_jax.convert --arch resnet18 --src model_best.pth.tar --dst DIR \
        [--resolutions 224 192 160 128 96] [--num-classes 1000] [--overwrite]

The mapping is rsnets_jax/checkpoints/pytorch.py's; PyTorch is needed only to read the file
(`pip install torch==2.13.0`, the CPU build).
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from rsnets_jax import cli
from rsnets_jax.checkpoints import pytorch


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m rsnets_jax.convert',
      description='Convert a published PyTorch RS-Net checkpoint (model_best.pth.tar) to an Orbax '
                  'checkpoint that rsnets_jax.load reads.')
  parser.add_argument('--arch', required=True, choices=pytorch.convertible())
  parser.add_argument('--src', required=True, help='the PyTorch checkpoint or bare state dict')
  parser.add_argument('--dst', required=True, help='the directory to write')
  parser.add_argument('--resolutions', type=int, nargs='+',
                      default=list(pytorch.PAPER_RESOLUTIONS),
                      help='the training resolutions in training order (bn_0 first); '
                           'default: %(default)s')
  parser.add_argument('--num-classes', type=int, default=None,
                      help='default: the rows of the checkpoint\'s classifier')
  parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --dst')
  args = parser.parse_args(argv)

  def body():
    net = pytorch.convert(args.arch, args.src, args.dst, args.resolutions, args.num_classes,
                          args.overwrite)
    print(f'wrote {net.arch} (resolutions {" ".join(map(str, net.resolutions))}, '
          f'{net.num_classes} classes) to {os.path.abspath(args.dst)}')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
