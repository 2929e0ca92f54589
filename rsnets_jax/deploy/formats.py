"""Export formats: each says how it is written, what file it makes, what runs it and which top-1
is its own, in one place; `export`, `profile`, `predict` and the budget chooser iterate over
`FORMATS`.

Every format's function takes uint8 RGB images (batch, res, res, 3) and returns float32 logits:
the evaluation view's scaling and any mean/std of training are inside. Adding a format is a
subclass here and one line in `FORMATS`.
"""
import importlib.util
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.data import preprocess
from rsnets_jax.deploy import fold
from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RSNet

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for
Function = Callable[[np.ndarray], np.ndarray]  # uint8 images -> float32 logits, as numpy arrays
# (the file's bytes, what the manifest row records of it beside the file, or None)
Written = Tuple[bytes, Optional[Dict[str, Any]]]


# -- the inference function -----------------------------------------------------------------------

def inference_fn(net: RSNet, folded, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, platforms: Optional[Sequence[str]] = None):
  """uint8 images (N, r, r, 3) -> float32 logits (N, classes) through the folded tree of
  resolution r (`fold.fold`), with the training input scaling; `platforms` as in
  `fold.folded_apply`."""
  def infer(images):
    return fold.folded_apply(net, folded, preprocess.to_float(images, mean, std), platforms)
  return infer


def input_spec(res: int, batch=None) -> jax.ShapeDtypeStruct:
  """The input of an exported resolution; `batch` None makes the batch dimension symbolic."""
  if batch is None:
    batch, = jax.export.symbolic_shape('batch')
  return jax.ShapeDtypeStruct((batch, res, res, 3), jnp.uint8)


def export_jax(net: RSNet, folded, res: int, mean=None, std=None,
               platforms: Optional[Sequence[str]] = None) -> bytes:
  """The serialized `jax.export` artifact of resolution `res`, for `platforms` (default: this
  process's), the convolutions lowered as conv.py does on each."""
  platforms = tuple(platforms or (jax.default_backend(),))
  fn = inference_fn(net, folded, mean, std, platforms)
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(input_spec(res))
  return bytes(exported.serialize())


def export_onnx(net: RSNet, folded, res: int, mean=None, std=None, doc: str = '') -> bytes:
  """The ONNX model of resolution `res`, read from the function with XLA's own convolutions."""
  from rsnets_jax.deploy import onnx_graph  # pylint: disable=import-outside-toplevel  # needs onnx
  fn = inference_fn(net, folded, mean, std, platforms=(onnx_graph.PLATFORM,))
  return onnx_graph.to_onnx(fn, input_spec(res, batch=2), doc=doc).SerializeToString()


def onnx_session(path, options=None):
  """An onnxruntime session of the ONNX model at `path` (or of the serialized model) as the
  product runs it: on CPU, with every graph optimisation (on top of `options`, e.g. profiling,
  when given)."""
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("onnxruntime is not installed: pip install -e '.[deploy]', or use the "
                      "jax runtime") from None
  options = options or onnxruntime.SessionOptions()
  options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
  return onnxruntime.InferenceSession(os.fspath(path), options,
                                      providers=['CPUExecutionProvider'])


def onnx_function(path) -> Function:
  """uint8 images -> logits of the ONNX model at `path` (or serialized), in onnxruntime."""
  session = onnx_session(path)
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: np.asarray(images, np.uint8)})[0]


def _has(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


# -- the formats ----------------------------------------------------------------------------------

class ExportFormat:
  """One kind of exported file. `name`: its --formats name and the key of a manifest row's
  `files`; `suffix`: the file is `<res>px.<suffix>`; `runtime`: what runs it (profile's
  --runtimes, predict's --runtime, the key of a row's measured `latency`); `accuracy_key`: the
  row's entry holding the file's own top-1 (None: the network's evaluation is its accuracy);
  `requires`: formats whose bytes its writer reads (made first, written only when asked);
  `switchable`: one file, `switchable.<suffix>`, runs every resolution (its writer's `write`
  takes the resolutions and returns the file's bytes)."""
  name: str = ''
  suffix: str = ''
  runtime: str = ''
  default: bool = True
  accuracy_key: Optional[str] = None
  requires: Tuple[str, ...] = ()
  switchable: bool = False

  def file_name(self, res: int) -> str:
    return f'switchable.{self.suffix}' if self.switchable else f'{res}px.{self.suffix}'

  def writer(self, export) -> Callable[..., Any]:
    """`write(res, folded, made) -> (bytes, row entry)` (a switchable format: `write(resolutions)
    -> bytes`) for `export` (deploy.export.Export), after checking, before anything is written,
    that it can be made here."""
    raise NotImplementedError

  def about(self, writer) -> Optional[Dict[str, Any]]:
    """What the manifest records of the whole export in this format, under its accuracy key."""
    del writer
    return None

  def describe(self, entry: Dict[str, Any]) -> str:
    """A log line's account of a row entry that the writer returned."""
    return str(entry)

  def runnable(self, manifest: Dict[str, Any]) -> bool:
    """Whether this machine can run the format's files of `manifest`."""
    raise NotImplementedError

  def load(self, path: str, manifest: Dict[str, Any]) -> Function:
    raise NotImplementedError

  def top1(self, row: Dict[str, Any]) -> Optional[float]:
    """The row's top-1 (%) as this format runs it (None when never measured)."""
    if self.accuracy_key is None:
      return row.get('top1')
    return row.get(self.accuracy_key, {}).get('top1')


class JaxArtifact(ExportFormat):
  """A serialized `jax.export` artifact: any JAX program runs it with
  `jax.export.deserialize(open(f, 'rb').read()).call(images)`, no rsnets_jax needed, on the
  platforms it was exported for."""
  name, suffix, runtime = 'jax', 'jaxexport', 'jax'

  def writer(self, export):
    def write(res, folded, made):
      del made
      return export_jax(export.net, folded, res, export.mean, export.std, export.platforms), None
    return write

  def runnable(self, manifest):
    return jax.default_backend() in manifest.get('jax_platforms', [])

  @staticmethod
  def check_platform(manifest):
    platforms = manifest.get('jax_platforms', [])
    if jax.default_backend() not in platforms:
      raise ConfigError(f'the JAX files were exported for {platforms}, this machine runs JAX on '
                        f'{jax.default_backend()}: export with --platforms={jax.default_backend()}')

  def load(self, path, manifest):
    self.check_platform(manifest)
    with open(path, 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return lambda images: np.asarray(call(images))


class SwitchableJaxArchive(JaxArtifact):
  """Every resolution in one zip (deploy/switchable.py): the shared weights once, each
  resolution's BatchNorm as scale and shift and its `jax.export` program; the input's size picks
  the resolution."""
  name, suffix, runtime = 'jax_switchable', 'jaxexport.zip', 'jax_switchable'
  default = False
  switchable = True

  def writer(self, export):
    from rsnets_jax.deploy import switchable  # pylint: disable=import-outside-toplevel

    def write(resolutions):
      return switchable.jax_archive(export.net, export.params, export.stats, resolutions,
                                    export.mean, export.std, export.platforms)
    return write

  def load(self, path, manifest):
    from rsnets_jax.deploy import switchable  # pylint: disable=import-outside-toplevel
    self.check_platform(manifest)
    return switchable.load_jax(path)


class OnnxModel(ExportFormat):
  """An ONNX model (input 'images', output 'logits') for onnxruntime, float32."""
  name, suffix, runtime = 'onnx', 'onnx', 'onnxruntime'

  def writer(self, export):
    if not _has('onnx'):
      raise ConfigError("the onnx formats need the onnx package: pip install -e '.[deploy]', or "
                        "pass --formats=jax")

    def write(res, folded, made):
      del made
      return export_onnx(export.net, folded, res, export.mean, export.std,
                         f'RS-{export.net.arch} at {res}x{res}'), None
    return write

  def runnable(self, manifest):
    return _has('onnxruntime')

  def load(self, path, manifest):
    return onnx_function(path)


class Int8OnnxModel(OnnxModel):
  """The ONNX model quantized to int8 by onnxruntime's static quantization (deploy/int8.py),
  calibrated on the training images of the run's data set (or --data-dir) and measured against
  float32 on its validation images; its own top-1 is the row's `int8` entry."""
  name, suffix, runtime = 'onnx_int8', 'int8.onnx', 'onnxruntime_int8'
  default = False  # it needs calibration images
  accuracy_key = 'int8'
  requires = ('onnx',)

  def writer(self, export):
    from rsnets_jax.deploy import int8  # pylint: disable=import-outside-toplevel
    super().writer(export)  # the onnx package
    calibration = int8.Calibration(export.meta, export.net.num_classes, export.data_dir,
                                   export.calibration_images, export.eval_images)

    def write(res, folded, made):
      del folded
      return calibration.quantize(made['onnx'], res)
    write.calibration = calibration
    return write

  def about(self, writer):
    return writer.calibration.about

  def describe(self, entry):
    measured = (f"top-1 {entry['top1']:.2f}% (float32 {entry['float32_top1']:.2f}%), "
                if 'top1' in entry else '')
    return (f"{measured}top-1 class that of float32 on {entry['top1_agreement']:.2f}% of "
            f"{entry['images']} validation images; logits' relative RMS error "
            f"{entry['logits_relative_rms_error']:.3f}")


class SwitchableOnnxModel(OnnxModel):
  """Every resolution in one ONNX model (deploy/switchable.py): the shared weights once, a branch
  per resolution with its BatchNorm as scale and shift, picked by the input's height."""
  name, suffix, runtime = 'onnx_switchable', 'onnx', 'onnxruntime_switchable'
  default = False
  switchable = True

  def writer(self, export):
    from rsnets_jax.deploy import switchable  # pylint: disable=import-outside-toplevel
    super().writer(export)  # the onnx package

    def write(resolutions):
      return switchable.onnx_model(export.net, export.params, export.stats, resolutions,
                                   export.mean, export.std,
                                   f'RS-{export.net.arch} at {list(resolutions)} px')
    return write


FORMATS: Dict[str, ExportFormat] = {f.name: f for f in (
    JaxArtifact(), OnnxModel(), Int8OnnxModel(), SwitchableJaxArchive(), SwitchableOnnxModel())}
SWITCHABLE_FORMATS = tuple(name for name, f in FORMATS.items() if f.switchable)
DEFAULT_FORMATS = tuple(name for name, f in FORMATS.items() if f.default)
RUNTIMES = tuple(f.runtime for f in FORMATS.values())


def by_runtime(runtime: str) -> ExportFormat:
  for f in FORMATS.values():
    if f.runtime == runtime:
      return f
  raise ConfigError(f'runtime must be one of {RUNTIMES}, got {runtime!r}')
