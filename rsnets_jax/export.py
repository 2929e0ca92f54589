"""Command line: an RS-Net as deployable files, a file per resolution and export format.

    python -m rsnets_jax.export --workdir=W --dst=D [--resolutions=224,160] [--which=latest]
        [--platforms=cpu,cuda] [--formats=jax,onnx,onnx_int8] [--class-names=FILE]
        [--data-dir=DIR] [--calibration-images=512] [--eval-images=0] [--switchable] [--overwrite]

`--workdir` is anything `rsnets_jax.load` reads: a work directory, one checkpoint, a converted
model or an `add_resolutions` output. For each resolution (default: every trained and added one)
D receives, with that resolution's BatchNorm folded into the convolutions:
    <res>px.jaxexport  a serialized `jax.export` artifact, for the platforms of `--platforms`
                       (default: this machine's); any JAX program runs it without rsnets_jax
    <res>px.onnx       the same function for onnxruntime (input 'images', output 'logits')
    <res>px.int8.onnx  with --formats=...,onnx_int8: that model quantized to int8, calibrated on
                       `--calibration-images` training images of the run's data set (or of
                       --data-dir) and evaluated against float32 on `--eval-images` validation
                       images (0: all)
    manifest.json      what each file is, with MACs, accuracy and checksums
With --switchable (the formats jax_switchable and onnx_switchable), also one file for every
resolution, the shared weights stored once and each resolution's BatchNorm as a scale and shift:
    switchable.onnx           the input's height picks the resolution
    switchable.jaxexport.zip  a jax.export program per resolution over the shared weights
A D that already holds an export is refused unless --overwrite, which replaces it whole: the new
export is written beside it and swapped in, so no file of the old one stays.
(rsnets_jax/deploy/export.py; the formats are rsnets_jax/deploy/formats.py's).
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence

from rsnets_jax import cli
from rsnets_jax.deploy import export, formats, int8


def _resolution_list(text: str) -> List[int]:
  try:
    values = [int(r) for r in text.split(',') if r.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected resolutions such as 224,160, got {text!r}'
                                     ) from None
  if not values or any(r <= 0 for r in values):
    raise argparse.ArgumentTypeError(f'expected positive resolutions, got {text!r}')
  return values


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rsnets_jax.export',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a work directory, checkpoint or converted model (rsnets_jax.load)')
  parser.add_argument('--dst', required=True, help='the directory to write')
  parser.add_argument('--resolutions', type=_resolution_list, default=None,
                      help='comma-separated; default: every resolution the network runs at')
  parser.add_argument('--which', choices=('latest', 'best'), default='latest',
                      help="a work directory's checkpoint to export")
  parser.add_argument('--platforms', type=lambda t: [p for p in t.split(',') if p], default=None,
                      help='JAX platforms of the artifacts, e.g. cpu,cuda,tpu (default: this one)')
  parser.add_argument('--formats', type=lambda t: [p for p in t.split(',') if p],
                      default=list(formats.DEFAULT_FORMATS),
                      help=f'some of {",".join(formats.FORMATS)} (default: '
                           f'{",".join(formats.DEFAULT_FORMATS)})')
  parser.add_argument('--class-names', default=None,
                      help='a text file with one class name per line, in label order')
  parser.add_argument('--data-dir', default=None,
                      help="onnx_int8: the data set's folder in place of the run's (a converted "
                           "model: class folders in DIR/train and DIR/val)")
  parser.add_argument('--calibration-images', type=int, default=int8.DEFAULT_CALIBRATION_IMAGES,
                      help='onnx_int8: training images that set the activation ranges')
  parser.add_argument('--eval-images', type=int, default=0,
                      help='onnx_int8: validation images to measure it on (0: all)')
  parser.add_argument('--switchable', action='store_true',
                      help=f'also the one-file formats {",".join(formats.SWITCHABLE_FORMATS)}')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace an export already in --dst (the whole folder)')
  args = parser.parse_args(argv)

  def body():
    asked = args.formats + [name for name in formats.SWITCHABLE_FORMATS
                            if args.switchable and name not in args.formats]
    manifest = export.export_model(args.workdir, args.dst, args.resolutions, args.which,
                                   args.platforms, asked, args.class_names, args.data_dir,
                                   args.calibration_images, args.eval_images,
                                   overwrite=args.overwrite)
    print(f'wrote {len(manifest["resolutions"])} resolutions of RS-{manifest["arch"]} to '
          f'{os.path.abspath(args.dst)}')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
