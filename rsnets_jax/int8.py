"""int8 ONNX models of exported resolutions: onnxruntime's static quantization, calibrated on real
images, with the accuracy measured against the float32 model on the same images.

Why a deployment needs them: at batch 1 a float32 ResNet-18 reads all 47 MB of its weights on every
call, more than a CPU's last-level cache holds, so its latency stops falling with the MACs at
small resolutions; int8 weights are a quarter of that (experiments/BENCHMARKS.md, deployment).

The model: onnxruntime's QDQ format, weights int8 per output channel, activations uint8 with
ranges from the minimum and maximum seen on the calibration images (each resolution calibrated on
its own views: an RS-Net's activations, like its BatchNorms, differ by resolution); the classifier
stays float32. Calibration
and evaluation images are the eval views `rsnets_jax.predict` gives a model
(`data.eval_view`: per resolution, bilinear), of a seeded random subset of the training split
(calibration) and of the validation split (evaluation), so no validation image sets a range.
"""
import importlib.util
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import ml_collections
import numpy as np

from rsnets_jax import data, defaults, deploy, evaluate
from rsnets_jax.errors import ConfigError

DEFAULT_CALIBRATION_IMAGES = 512
SUBSET_SEED = 0  # which training images calibrate, and which validation images evaluate a subset
BATCH = 32  # images per onnxruntime call while calibrating and evaluating


def data_config(meta: Dict[str, Any], data_dir: Optional[str] = None) -> ml_collections.ConfigDict:
  """The config whose data calibrate and evaluate the int8 models: the training run's data (from
  the checkpoint's meta), with `data_dir` (when given) in place of its folder; a model with no
  training config (a converted one) needs `data_dir`, read as class folders. Images are made in
  this process (no worker processes), as `predict` makes them."""
  config = defaults.get_config()
  trained = meta.get('config', {}).get('data')
  # The defaults first: a checkpoint written before a data field existed still reads.
  config.data = ml_collections.ConfigDict({**config.data.to_dict(), **(trained or {})})
  if not trained:
    if not data_dir:
      raise ConfigError('the int8 format needs images to calibrate on, and this model records no '
                        'training data: pass --data-dir=DIR (class folders in DIR/train and '
                        'DIR/val)')
    config.data.dataset = 'folder'
  if data_dir:
    if config.data.dataset == 'synthetic':
      raise ConfigError('--data-dir replaces a folder or tfds data set; this model was trained on '
                        'the synthetic one, which needs none')
    config.data.data_dir = data_dir
  config.data.num_workers = 0
  config.data.eval_batch_size = BATCH
  config.data.eval_view = 'per_resolution'
  config.data.interpolation = 'bilinear'
  return config


def subset(source: Sequence, num_images: int) -> Sequence:
  """`num_images` records of `source` drawn at random (seeded), or all of it when it has no more:
  the first ones of a class-folder source would all be of one class."""
  if num_images <= 0 or num_images >= len(source):
    return source
  order = np.random.default_rng(SUBSET_SEED).permutation(len(source))[:num_images]
  return [source[int(i)] for i in np.sort(order)]


def views(config, res: int, source: Sequence) -> Iterable[Dict[str, np.ndarray]]:
  """Batches {'images': uint8 (B, res, res, 3), 'labels', 'mask'} of `source`'s eval views."""
  for batch in data.eval_batches(config, (res,), source=source):
    yield {'images': batch['images'][res], 'labels': batch['label'],
           'mask': np.asarray(batch['mask'], bool)}


def quantize(float_model: bytes, calibration: Iterable[Dict[str, np.ndarray]]) -> bytes:
  """The int8 model (serialized ONNX) of the float32 model `float_model` (an export's ONNX model,
  input 'images'), its activation ranges from the images of `calibration`."""
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
  """The name of the node that computes the model's output (the classifier), after giving it one
  where it has none; the model at `path` is rewritten."""
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
  """Top-1/top-5 (%) of both models on `batches` when `labelled`; always, on how many images the
  int8 model's top-1 class is the float32 one's (%), and how far its logits are from float32's
  (the root mean square of the difference over that of the float32 logits, over every image).
  Ties in the ranking go to the lower class."""
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
  """What calibrates and evaluates the int8 models of one network: the data config
  (`data_config`), a random subset of its training split and of its validation split, and whether
  its labels are the network's classes (else only the agreement with float32 is measured)."""

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
    self.calibration = subset(train, calibration_images)
    self.evaluation = subset(val, eval_images)
    self.labelled = data.num_classes(self.config, train) == num_classes
    self.about = {
        'method': "onnxruntime static quantization, QDQ: int8 weights per output channel, uint8 "
                  "activations with min/max ranges from each resolution's calibration views, "
                  "the classifier float32",
        'data': evaluate.dataset_name(self.config.data),
        'calibration_images': len(self.calibration),
        'calibration_split': 'training', 'eval_images': len(self.evaluation),
        'eval_split': 'validation', 'labelled': self.labelled,
        'view': 'rsnets_jax.data.eval_view (per resolution, bilinear), as predict makes it'}

  def quantize(self, float_model: bytes, res: int):
    """(the int8 model, its accuracy and agreement against `float_model` at `res`). Each
    resolution reads its images again: every view of a validation set at every resolution would
    take gigabytes."""
    int8_model = quantize(float_model, views(self.config, res, self.calibration))
    accuracy = compare(deploy.onnx_function(float_model), deploy.onnx_function(int8_model),
                       views(self.config, res, self.evaluation), self.labelled)
    return int8_model, accuracy
