"""Command line: classify images with an exported RS-Net at the resolution that fits a budget.

    python -m rsnets_jax.predict --model=D [--latency-ms=5] [--macs=300e6] [--resolution=160]
        [--runtime=jax] [--top=5] photo1.jpg photo2.jpg ...

The resolution is `--resolution` when given, else `deploy.choose_resolution`: the most accurate
one whose batch-1 p90 latency measured by `python -m rsnets_jax.profile` on `--runtime` is at most
`--latency-ms` and whose MACs are at most `--macs` (with neither, the most accurate). Each image
goes through the eval view of training (`rsnets_jax.data.eval_view`) and the model at batch 1; one
line per image gives the resolution, the model's time, the time to read the image and make its
view, and the top classes with their probabilities. An image that cannot be read gets one
`error:` line on stderr and the others still run; the exit status is then 1.
"""
import argparse
import sys
from typing import Optional, Sequence

from rsnets_jax import cli
from rsnets_jax.deploy import formats, predict
from rsnets_jax.errors import DataError


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rsnets_jax.predict',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, help='a directory written by rsnets_jax.export')
  parser.add_argument('--latency-ms', type=float, default=None,
                      help='budget: batch-1 p90 latency measured by rsnets_jax.profile')
  parser.add_argument('--macs', type=float, default=None, help='budget: MACs per image')
  parser.add_argument('--resolution', type=int, default=None, help='this resolution, no budget')
  parser.add_argument('--runtime', choices=formats.RUNTIMES, default='jax')
  parser.add_argument('--top', type=int, default=5, help='classes printed per image')
  parser.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...)')
  args = parser.parse_args(argv)

  def body():
    failed = predict.predict(args.model, args.images, args.resolution, args.latency_ms, args.macs,
                     args.runtime, args.top)
    if failed:
      raise DataError(f'{failed} of {len(args.images)} images could not be read')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
