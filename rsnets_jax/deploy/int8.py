"""int8 ONNX models of exported resolutions (onnxruntime static quantization, calibrated on real
images), with their accuracy against float32 on the same images. Why: at batch 1 float32 weights
outgrow a CPU's last-level cache, so latency stops falling with the MACs; int8 weights are a
quarter (experiments/BENCHMARKS.md, deployment).

QDQ format: int8 weights per output channel, uint8 activations with min/max ranges calibrated per
resolution (activations, like BatchNorm, differ by resolution); the classifier stays float32.
Images are `predict`'s eval views (per resolution, bilinear) of seeded subsets of the training
split (calibration) and the validation split (evaluation), so no validation image sets a range.
"""
import importlib.util
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import ml_collections
import numpy as np

from rsnets_jax import data, defaults
from rsnets_jax.deploy import formats
from rsnets_jax.errors import ConfigError

DEFAULT_CALIBRATION_IMAGES = 512
BATCH = 32  # images per onnxruntime call while calibrating and evaluating


def data_config(meta: Dict[str, Any], data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  """The run's data config (from `meta`) for calibration and evaluation, `data_dir` (class
  folders; required without a training config, e.g. converted) as its folder; no workers."""
  trained = meta.get('config', {}).get('data')
  if not trained and not data_dir:
    raise ConfigError('the int8 format needs images to calibrate on, and this model records no '
                      'training data: pass --data-dir=DIR (class folders in DIR/train and '
                      'DIR/val)')
  config = defaults.get_config()
  config.data = data.with_data_dir(trained, data_dir)
  config.data.num_workers = 0
  config.data.eval_batch_size = BATCH
  config.data.eval_view = 'per_resolution'
  config.data.interpolation = 'bilinear'
  return config


def views(config, res: int, source: Sequence) -> Iterable[Dict[str, np.ndarray]]:
  """Batches {'images': uint8 (B, res, res, 3), 'labels', 'mask'} of `source`'s eval views."""
  for batch in data.eval_batches(config, (res,), source=source):
    yield {'images': batch['images'][res], 'labels': batch['label'],
           'mask': np.asarray(batch['mask'], bool)}


def quantize(float_model: bytes, calibration: Iterable[Dict[str, np.ndarray]]) -> bytes:
  """int8 ONNX bytes of `float_model` (an export's, input 'images') calibrated on `calibration`."""
  try:
    from onnxruntime import quantization  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("the int8 format needs onnxruntime: pip install -e '.[deploy]'") from None

  class Reader(quantization.CalibrationDataReader):
    def __init__(self):
      self.batches = (b['images'][b['mask']] for b in calibration)

    def get_next(self):
      for images in self.batches:
        if len(images):
          return {'images': images}
      return None

  with tempfile.TemporaryDirectory() as folder:
    src, prepared, dst = (os.path.join(folder, f'{name}.onnx')
                          for name in ('float', 'prepared', 'int8'))
    with open(src, 'wb') as f:
      f.write(float_model)
    # Shape inference and graph fusions first, as onnxruntime recommends for static quantization.
    quantization.shape_inference.quant_pre_process(src, prepared, skip_symbolic_shape=True)
    classifier = _name_output_node(prepared)
    quantization.quantize_static(
        prepared, dst, Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        # The classifier stays float32: quantized logits would take 256 values, and tie.
        nodes_to_exclude=[classifier],
        weight_type=quantization.QuantType.QInt8, activation_type=quantization.QuantType.QUInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax,
        extra_options={
            # onnxruntime 1.32's int32-bias weight adjustment fails on per-channel scales ("truth
            # value of an array ... is ambiguous"); the biases are then quantized as they are.
            'QDQDisableWeightAdjustForInt32Bias': True})
    with open(dst, 'rb') as f:
      return f.read()


def _name_output_node(path: str) -> str:
  """The output node's (classifier's) name, first naming it in the file at `path` if unnamed."""
  import onnx  # pylint: disable=import-outside-toplevel
  model = onnx.load(path)
  producer = {out: node for node in model.graph.node for out in node.output}
  node = producer[model.graph.output[0].name]
  while node.op_type == 'Identity':
    node = producer[node.input[0]]
  if not node.name:
    node.name = 'classifier'
    onnx.save(model, path)
  return node.name


def compare(float_fn: Callable[[np.ndarray], np.ndarray],
            int8_fn: Callable[[np.ndarray], np.ndarray],
            batches: Iterable[Dict[str, np.ndarray]], labelled: bool) -> Dict[str, Any]:
  """Top-1/top-5 (%) of both models on `batches` when `labelled`; always the % of images whose
  int8 top-1 is float32's, and the logits' relative error (RMS of the difference over RMS of the
  float32 logits, over every image). Ties rank the lower class first."""
  counts = {'images': 0, 'agree': 0, 'top1': 0, 'top5': 0, 'float32_top1': 0, 'float32_top5': 0}
  squared_error = squared_logits = 0.0
  for b in batches:
    images, labels = b['images'][b['mask']], b['labels'][b['mask']]
    if not len(images):
      continue
    logits = {'': int8_fn(images), 'float32_': float_fn(images)}
    squared_error += float(np.sum(np.square(logits[''] - logits['float32_'], dtype=np.float64)))
    squared_logits += float(np.sum(np.square(logits['float32_'], dtype=np.float64)))
    top5 = {prefix: np.argsort(-z, axis=-1, kind='stable')[:, :5] for prefix, z in logits.items()}
    counts['agree'] += int(np.sum(top5[''][:, 0] == top5['float32_'][:, 0]))
    for prefix, best in top5.items():
      counts[prefix + 'top1'] += int(np.sum(best[:, 0] == labels))
      counts[prefix + 'top5'] += int(np.sum(np.any(best == labels[:, None], axis=1)))
    counts['images'] += len(images)
  if not counts['images']:
    raise ConfigError('no readable image to evaluate the int8 model on')
  pct = lambda k: 100.0 * counts[k] / counts['images']  # pylint: disable=unnecessary-lambda-assignment
  result = {'images': counts['images'], 'top1_agreement': pct('agree'),
            'logits_relative_rms_error': float(np.sqrt(squared_error / squared_logits))}
  if labelled:
    result.update({k: pct(k) for k in ('top1', 'top5', 'float32_top1', 'float32_top5')})
  return result


class Calibration:
  """One network's calibration and evaluation subsets (`data_config`, `subset`); `labelled` when
  the labels are the network's classes (else only agreement with float32 is measured)."""

  def __init__(self, meta, num_classes: int, data_dir: Optional[str], calibration_images: int,
               eval_images: int):
    if calibration_images < 1:
      raise ConfigError(f'--calibration-images must be at least 1, got {calibration_images}')
    if eval_images < 0:
      raise ConfigError(f'--eval-images must be 0 (all) or more, got {eval_images}')
    if importlib.util.find_spec('onnxruntime') is None:
      raise ConfigError("the onnx_int8 format needs onnxruntime: pip install -e '.[deploy]'")
    self.config = data_config(meta, data_dir)
    train = data.make_source(self.config.data, train=True)
    val = data.make_source(self.config.data, train=False)
    self.calibration = data.seeded_subset(train, calibration_images)
    self.evaluation = data.seeded_subset(val, eval_images)
    self.labelled = data.num_classes(self.config, train) == num_classes
    self.about = {
        'method': "onnxruntime static quantization, QDQ: int8 weights per output channel, uint8 "
                  "activations with min/max ranges from each resolution's calibration views, "
                  "the classifier float32",
        'data': data.report_name(self.config.data),
        'calibration_images': len(self.calibration),
        'calibration_split': 'training', 'eval_images': len(self.evaluation),
        'eval_split': 'validation', 'labelled': self.labelled,
        'view': 'rsnets_jax.data.eval_view (per resolution, bilinear), as predict makes it'}

  def quantize(self, float_model: bytes, res: int):
    """(int8 model, `compare` against `float_model`) at `res`. Images are re-read per resolution:
    every view of a validation set at every resolution would take gigabytes."""
    int8_model = quantize(float_model, views(self.config, res, self.calibration))
    accuracy = compare(formats.onnx_function(float_model), formats.onnx_function(int8_model),
                       views(self.config, res, self.evaluation), self.labelled)
    return int8_model, accuracy
