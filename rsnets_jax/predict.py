"""Command line: classify images with an exported RS-Net at the resolution that fits a budget, or
each image at the resolutions it needs (the anytime cascade).

    python -m rsnets_jax.predict --model=D [--latency-ms=5] [--macs=300e6] [--resolution=160]
        [--runtime=jax] [--top=5] photo1.jpg photo2.jpg ...

The resolution is `--resolution` when given, else `deploy.choose_resolution`: the most accurate
one whose batch-1 p90 latency measured by `python -m rsnets_jax.profile` on `--runtime` is at most
`--latency-ms` and whose MACs are at most `--macs` (with neither, the most accurate). Each image
goes through the eval view of training (`rsnets_jax.data.eval_view`) and the model at batch 1; one
line per image gives the resolution, the model's time, the time to read the image and make its
view, and the top classes with their probabilities. An image that cannot be read gets one
`error:` line on stderr and the others still run; the exit status is then 1.

The cascade (rsnets_jax/deploy/cascade.py):

    python -m rsnets_jax.predict --model=D --cascade-calibrate [--max-drop=0.5 | --mean-ms=0.2 |
        --mean-macs=2e6] [--cost=time] [--rule=margin] [--cascade-resolutions=32,48,64]
        [--data-dir=DIR] [--calibration-images=4000] [--calibration-split=train] [--runtime=jax]
        [--batch-size=64]
    python -m rsnets_jax.predict --model=D --cascade [--cascade-file=D/cascade.json]
        [--runtime=jax] [--batch-size=64] photo1.jpg photo2.jpg ...
    python -m rsnets_jax.predict --model=D --cascade --cascade-resolutions=32,64 --thresholds=0.8
        [--rule=margin] photo1.jpg ...

`--cascade-calibrate` picks the resolutions (a subset of `--cascade-resolutions`, default all,
keeping the largest) and thresholds on a seeded subset of `--calibration-images` training images
(the int8 calibration's; the run's recorded data set, or the class folders of `--data-dir`; or of
its validation images, `--calibration-split=val`, held out from training, then score on others) for
one target: top-1 within `--max-drop` points of the largest resolution's at the least mean
`--cost` per image (the default, 0.5 points; cost `time`: measured at `--batch-size` on
`--runtime`, or `macs`), or the best top-1 at a mean time (`--mean-ms`) or MACs (`--mean-macs`) per
image. It writes D/cascade.json, and classifies the images given, if any. `--cascade` reads that
file (or `--cascade-file`), or takes the cascade from `--cascade-resolutions` (smallest first) and
`--thresholds` (one in [0, 1] per resolution but the largest). Images are read, then go through
the cascade in batches of `--batch-size`: one line per image gives the resolutions it went through
and its top classes; a last line on stderr the time and how many images left at each resolution.
"""
import argparse
import sys
from typing import Optional, Sequence

from rsnets_jax import cli
from rsnets_jax.deploy import cascade as cascades, formats, manifest as manifests, predict
from rsnets_jax.errors import ConfigError, DataError

CASCADE_ONLY = ('cascade_file', 'cascade_resolutions', 'thresholds', 'rule', 'max_drop',
                'mean_ms', 'mean_macs', 'cost', 'data_dir', 'calibration_images',
                'calibration_split', 'batch_size')
CALIBRATION_ONLY = ('max_drop', 'mean_ms', 'mean_macs', 'cost', 'data_dir', 'calibration_images',
                    'calibration_split')


def _flag(name: str) -> str:
  return '--' + name.replace('_', '-')


def _target(args):
  """The calibration target of the flags: at most one of --max-drop, --mean-ms, --mean-macs."""
  given = [name for name in ('max_drop', 'mean_ms', 'mean_macs') if getattr(args, name) is not None]
  if len(given) > 1:
    raise ConfigError(f'give one calibration target, not {" and ".join(map(_flag, given))}')
  if args.cost is not None and given and given[0] != 'max_drop':
    raise ConfigError(f'--cost goes with --max-drop; {_flag(given[0])} says its own cost')
  if args.mean_ms is not None:
    return cascades.WithinBudget(args.mean_ms, 'time')
  if args.mean_macs is not None:
    return cascades.WithinBudget(args.mean_macs, 'macs')
  cost = args.cost or 'time'
  cascades.cost_named(cost)
  return cascades.WithinAccuracy(
      cascades.DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop, cost)


def _check_flags(args):
  cascade = args.cascade or args.cascade_calibrate
  single = [n for n in ('resolution', 'latency_ms', 'macs') if getattr(args, n) is not None]
  if cascade and single:
    raise ConfigError(f'{_flag(single[0])} chooses one resolution for every image; the cascade '
                      f'chooses per image: give one or the other')
  if not cascade:
    stray = [n for n in CASCADE_ONLY if getattr(args, n) is not None]
    if stray:
      raise ConfigError(f'{_flag(stray[0])} goes with --cascade or --cascade-calibrate')
  elif not args.cascade_calibrate:
    stray = [n for n in CALIBRATION_ONLY if getattr(args, n) is not None]
    if stray:
      raise ConfigError(f'{_flag(stray[0])} goes with --cascade-calibrate')
  if args.cascade_calibrate and args.thresholds is not None:
    raise ConfigError('--thresholds gives a cascade; --cascade-calibrate finds them: give one')
  if args.cascade_calibrate and args.cascade_file is not None:
    raise ConfigError(f'--cascade-calibrate writes --model/{cascades.CASCADE_FILE}; '
                      f'--cascade-file reads another: give one')
  if not args.images and not args.cascade_calibrate:
    raise ConfigError('no images given: name image files after the flags')


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
  cascade = parser.add_argument_group('the cascade (see the module docstring)')
  cascade.add_argument('--cascade', action='store_true',
                       help='each image at the resolutions its confidence needs')
  cascade.add_argument('--cascade-calibrate', action='store_true',
                       help=f'calibrate the cascade on training images, write '
                            f'{cascades.CASCADE_FILE} into --model')
  cascade.add_argument('--cascade-file', default=None,
                       help=f'the calibration to use (default: --model/{cascades.CASCADE_FILE})')
  cascade.add_argument('--cascade-resolutions', default=None,
                       help='comma-separated, smallest first: with --thresholds, the cascade; '
                            'with --cascade-calibrate, those it may use (default: all)')
  cascade.add_argument('--thresholds', default=None,
                       help='comma-separated, in [0, 1], one per resolution but the largest')
  cascade.add_argument('--rule', default=None,
                       help=f'confidence rule, one of {",".join(cascades.RULES)} (default '
                            f'{cascades.DEFAULT_RULE})')
  cascade.add_argument('--max-drop', type=float, default=None,
                       help=f'target: top-1 within this many points of the largest resolution\'s '
                            f'(default {cascades.DEFAULT_MAX_DROP})')
  cascade.add_argument('--mean-ms', type=float, default=None,
                       help='target: the best top-1 at this mean time per image (ms)')
  cascade.add_argument('--mean-macs', type=float, default=None,
                       help='target: the best top-1 at this mean number of MACs per image')
  cascade.add_argument('--cost', default=None,
                       help=f'what --max-drop minimises, one of {",".join(cascades.COSTS)} '
                            f'(default time)')
  cascade.add_argument('--data-dir', default=None,
                       help='class folders (DIR/train/<class>/) to calibrate on, when the run '
                            'that was exported is not on this machine')
  cascade.add_argument('--calibration-images', type=int, default=None,
                       help=f'training images to calibrate on (default '
                            f'{cascades.DEFAULT_CALIBRATION_IMAGES})')
  cascade.add_argument('--calibration-split', default=None,
                       help='the images to calibrate on: train (default) or val (held out from '
                            'training; thresholds transfer better, experiments/BENCHMARKS.md)')
  cascade.add_argument('--batch-size', type=int, default=None,
                       help=f'images per call (default {cascades.DEFAULT_BATCH})')
  parser.add_argument('images', nargs='*', help='image files (JPEG, PNG, ...)')
  args = parser.parse_args(argv)

  def body():
    _check_flags(args)
    if not (args.cascade or args.cascade_calibrate):
      failed = predict.predict(args.model, args.images, args.resolution, args.latency_ms,
                               args.macs, args.runtime, args.top)
    else:
      batch = cascades.DEFAULT_BATCH if args.batch_size is None else args.batch_size
      cascades.bucket_sizes(batch)  # checks it before any work
      if args.cascade_calibrate:
        resolutions = predict.numbers(args.cascade_resolutions, int, '--cascade-resolutions')
        cascades.calibrate_model(
            args.model, args.runtime, args.rule or cascades.DEFAULT_RULE, _target(args),
            resolutions, args.data_dir,
            cascades.DEFAULT_CALIBRATION_IMAGES if args.calibration_images is None
            else args.calibration_images, batch,
            log=lambda line: print(line, file=sys.stderr), split=args.calibration_split or 'train')
        if not args.images:
          return
        args.cascade_resolutions = args.rule = None  # now in the file just written
      manifest = manifests.read_manifest(args.model)
      chosen, where = predict.cascade_from_flags(args.model, manifest, args.cascade_file,
                                                 args.cascade_resolutions, args.thresholds,
                                                 args.rule)
      print(f'cascade {chosen.describe()} ({where}) on {args.runtime}', file=sys.stderr)
      failed = predict.predict_cascade(args.model, args.images, chosen, args.runtime, batch,
                                       args.top)
    if failed:
      raise DataError(f'{failed} of {len(args.images)} images could not be read')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
