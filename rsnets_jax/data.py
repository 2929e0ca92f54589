"""Input pipeline: records from a data source, decoded and cropped on the host with Grain.

Training yields {'image': uint8 (B, R, R, 3), 'label': int32 (B,)}: one RandomResizedCrop per
image at the largest resolution R; the step makes every resolution's view and the flips on device.
Evaluation yields {'images': {res: uint8 (B, res, res, 3)}, 'label', 'mask'}: the reference's
resize-and-centre-crop view at each resolution, from the original image. B is the process's share
of the global batch; every process reads only its own part of the data.

Sources (registry `SOURCES`, chosen by `config.data.dataset`) are random-access sequences of
records {'image': encoded bytes | file path | uint8 array, 'label': int, 'name': str}. A caller may
hand any such sequence to `train_iterator` and `eval_batches` instead, e.g. a `DecodedSource` that
keeps a small data set decoded in memory.
"""
import concurrent.futures
import functools
import io
import logging
import math
import os
import struct
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import grain
import jax
import numpy as np
from PIL import Image

from rsnets_jax import paths, preprocess, synthetic
from rsnets_jax.errors import ConfigError, DataError

CROP_FRACTION = 0.875  # eval: shorter side to int(res / 0.875), then the centre res x res
CROP_RATIO = (3 / 4, 4 / 3)
# The training crop: torchvision's RandomResizedCrop (the full-precision reference), or
# tensorpack's GoogleNetResize (the quantized reference: aspect uniform in [0.75, 1.333], then
# width and height swapped with probability 0.5).
TRAIN_CROPS = ('random_resized', 'googlenet')
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
# The eval views: each resolution's own resize and centre crop (the full-precision reference), or
# the largest resolution's, then TF1's nearest-neighbour resize to the others (the quantized one).
EVAL_VIEWS = ('per_resolution', 'nearest_from_largest')
GOOGLENET_RATIO = (0.75, 1.333)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')
SYNTHETIC_SEED = 0  # the generated set stays the same whatever the training seed

# What PIL raises on a truncated or corrupt file varies with the format and where it breaks.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)

log = logging.getLogger(__name__)


# -- pure image helpers ---------------------------------------------------------------------------

def crop_params(rng: np.random.Generator, height: int, width: int,
                scale: Tuple[float, float] = (0.08, 1.0),
                ratio: Tuple[float, float] = CROP_RATIO) -> Tuple[int, int, int, int]:
  """(top, left, h, w) of a random crop, drawn as torchvision's RandomResizedCrop.get_params."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  # Fallback: the largest centred crop whose aspect ratio is inside the range.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def googlenet_crop_params(rng: np.random.Generator, height: int, width: int,
                          scale: Tuple[float, float] = (0.08, 1.0),
                          ratio: Tuple[float, float] = GOOGLENET_RATIO):
  """(top, left, h, w) of tensorpack's GoogleNetResize crop: up to 10 draws of an area fraction
  and an aspect ratio, both uniform, sides rounded half up, width and height swapped with
  probability 0.5. When no draw fits: the centred square of the shorter side (what the reference's
  fallback, shorter side to the output size then the centre crop, takes from the image)."""
  area = height * width
  for _ in range(10):
    target_area = rng.uniform(scale[0], scale[1]) * area
    aspect = rng.uniform(ratio[0], ratio[1])
    w = int(math.sqrt(target_area * aspect) + 0.5)
    h = int(math.sqrt(target_area / aspect) + 0.5)
    if rng.uniform() < 0.5:
      w, h = h, w
    if 0 < h <= height and 0 < w <= width:
      left = 0 if w == width else int(rng.integers(0, width - w))
      top = 0 if h == height else int(rng.integers(0, height - h))
      return top, left, h, w
  short = min(height, width)
  return (height - short) // 2, (width - short) // 2, short, short


CROP_PARAMS = {'random_resized': crop_params, 'googlenet': googlenet_crop_params}


def open_image(data) -> Image.Image:
  """A PIL image from encoded bytes, a path or a uint8 array; files open lazily (header only)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(data)
  if isinstance(data, (bytes, bytearray, memoryview)):
    return Image.open(io.BytesIO(data))
  return Image.open(data)


def _to_rgb(image: Image.Image) -> Image.Image:
  return image if image.mode == 'RGB' else image.convert('RGB')


def decode_crop(image: Image.Image, box: Tuple[int, int, int, int], size: int):
  """Decodes `image` for the crop `box` = (left, top, right, bottom) that will be resized to
  size x size: a JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper) when the crop
  stays at least `size` pixels on each side. Returns the RGB image and the box in its pixels."""
  width, height = image.size
  cw, ch = box[2] - box[0], box[3] - box[1]
  image.draft('RGB', (math.ceil(width * size / cw), math.ceil(height * size / ch)))
  image = _to_rgb(image)  # loads the pixels: this is where a corrupt file fails
  if image.size == (width, height):
    return image, box
  sx, sy = image.size[0] / width, image.size[1] / height
  return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def resize_crop(image: Image.Image, box, size: int, interpolation: str = 'bilinear') -> np.ndarray:
  if all(float(b).is_integer() for b in box):
    # Crop first: resize(box=...) would blend in pixels from outside the box, torchvision does not.
    image = image.crop(tuple(int(b) for b in box))
    box = None
  return np.asarray(image.resize((size, size), INTERPOLATIONS[interpolation], box=box), np.uint8)


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator,
                        scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = CROP_RATIO) -> np.ndarray:
  """torchvision's RandomResizedCrop: uint8 (size, size, 3), bilinear with antialiasing (PIL)."""
  top, left, h, w = crop_params(rng, image.size[1], image.size[0], scale, ratio)
  image, box = decode_crop(image, (left, top, left + w, top + h), size)
  return resize_crop(image, box, size)


def eval_resize_size(res: int) -> int:
  return int(res / CROP_FRACTION)


def eval_view(image: Image.Image, res: int, interpolation: str = 'bilinear') -> np.ndarray:
  """The reference's evaluation input: shorter side resized to int(res / 0.875) (bilinear,
  antialiased; or bicubic), then the centre res x res with torchvision's CenterCrop rounding;
  uint8."""
  image = _to_rgb(image)
  width, height = image.size
  short = eval_resize_size(res)
  # torchvision Resize(int): the longer side is int(short * long / short_side), truncated.
  if width <= height:
    new_w, new_h = short, int(short * height / width)
  else:
    new_w, new_h = int(short * width / height), short
  image = image.resize((new_w, new_h), INTERPOLATIONS[interpolation])
  top, left = int(round((new_h - res) / 2.0)), int(round((new_w - res) / 2.0))
  return np.asarray(image.crop((left, top, left + res, top + res)), np.uint8)


def eval_views(image: Image.Image, resolutions: Sequence[int], view: str = 'per_resolution',
               interpolation: str = 'bilinear', largest: Optional[int] = None
               ) -> Dict[int, np.ndarray]:
  """Every resolution's eval input (see EVAL_VIEWS): `eval_view` at each resolution, or at
  `largest` (the largest training resolution: 256 -> 224 on ImageNet) and TF1's nearest-neighbour
  resize of that to each resolution."""
  if view not in EVAL_VIEWS:
    raise ConfigError(f'data.eval_view must be one of {EVAL_VIEWS}, got {view!r}')
  if view == 'per_resolution':
    return {res: eval_view(image, res, interpolation) for res in resolutions}
  largest = largest or max(resolutions)
  big = eval_view(image, largest, interpolation)
  views = {}
  for res in resolutions:
    index = preprocess.nearest_tf1_indices(largest, res)
    views[res] = big[index][:, index]
  return views


# -- sources --------------------------------------------------------------------------------------

def _require_data_dir(data) -> str:
  if not data.data_dir:
    raise DataError(f'config.data.data_dir is not set for dataset {data.dataset!r}: '
                    f'pass --config.data.data_dir=DIR (or use --config.data.dataset=synthetic)')
  return str(data.data_dir)


@functools.lru_cache(maxsize=8)
def _list_class_folders(root: str) -> Tuple[str, ...]:
  if not os.path.isdir(root):
    return ()
  return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))


@functools.lru_cache(maxsize=8)
def _list_images(folder: str) -> Tuple[str, ...]:
  return tuple(sorted(e.name for e in os.scandir(folder)
                      if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)))


class FolderSource:
  """Images in `<root>/<split>/<class>/<file>`; classes are the sorted class folders of `train`."""

  def __init__(self, root: str, split: str, train_split: str = 'train'):
    classes = _list_class_folders(os.path.join(root, train_split))
    folder = os.path.join(root, split)
    hint = (f'expected <data_dir>/{split}/<class>/<image>; '
            f'set --config.data.data_dir or use --config.data.dataset=synthetic')
    if not classes:
      raise DataError(f'no class folders in {os.path.join(root, train_split)}: {hint}')
    unknown = sorted(set(_list_class_folders(folder)) - set(classes))
    if unknown:
      raise DataError(f'{folder} has class folders that {train_split} lacks: {unknown[:5]}')
    self.classes = classes
    self.files, self.labels = [], []
    for label, name in enumerate(classes):
      class_dir = os.path.join(folder, name)
      names = _list_images(class_dir) if os.path.isdir(class_dir) else ()
      self.files.extend(os.path.join(class_dir, f) for f in names)
      self.labels.extend([label] * len(names))
    if not self.files:
      raise DataError(f'no images in {folder}: {hint}')

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    return {'image': self.files[index], 'label': self.labels[index], 'name': self.files[index]}


TFDS_PREPARE = ('pip install .[prepare] then tfds build {name} --data_dir={data_dir} '
                '--manual_dir=DIR_WITH_TARS --file_format=array_record')


class TfdsSource:
  """A TFDS data set in array_record format, read without TensorFlow. Images stay encoded
  (SkipDecoding) so that the crop can decode a JPEG at reduced scale."""

  def __init__(self, name: str, data_dir: str, split: str):
    import tensorflow_datasets as tfds  # slow to import; only this source needs it
    prepare = TFDS_PREPARE.format(name=name, data_dir=data_dir)
    if paths.is_remote(data_dir):
      prepare += (f', or prepare it on a local disk and copy its folder there (gcloud storage cp '
                  f'-r ~/tensorflow_datasets/{name} {data_dir}/)')
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:  # not in the catalogue, nor in data_dir
      raise DataError(f'no data set {name!r} in {data_dir}, and tensorflow-datasets has none of '
                      f'that name: check config.data.tfds_name and config.data.data_dir') from None
    if not builder.is_prepared():
      raise DataError(f'{name} is not prepared in {data_dir}: run {prepare}')
    try:
      self.source = builder.as_data_source(split=split,
                                           decoders={'image': tfds.decode.SkipDecoding()})
    except NotImplementedError:  # prepared, but only in a format without random access
      raise DataError(f'{name} in {data_dir} is not in array_record format: rebuild it with '
                      f'{prepare}') from None
    self.num_classes = builder.info.features['label'].num_classes

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    example = self.source[index]
    name = example.get('file_name', index)
    name = name.decode() if isinstance(name, bytes) else str(name)
    return {'image': example['image'], 'label': int(example['label']), 'name': name}


def _synthetic_source(data, split: str):
  length = data.synthetic_train_size if split == 'train' else data.synthetic_val_size
  return synthetic.SyntheticSource(SYNTHETIC_SEED, split, length, data.synthetic_image_size)


def _folder_source(data, split: str):
  root = _require_data_dir(data)
  if paths.is_remote(root):
    raise DataError(f'config.data.dataset=folder reads a folder of this machine, not {root}: '
                    f'prepare the data set with tensorflow-datasets (dataset=tfds), or mount the '
                    f'bucket with Cloud Storage FUSE and pass the mount point')
  return FolderSource(root, split, data.train_split or 'train')


def _tfds_source(data, split: str):
  return TfdsSource(data.tfds_name, _require_data_dir(data), split)


# name -> (make source from (config, split), default train split, default val split)
SOURCES: Dict[str, Tuple[Callable[[Any, str], Sequence], str, str]] = {
    'synthetic': (_synthetic_source, 'train', 'val'),
    'folder': (_folder_source, 'train', 'val'),
    'tfds': (_tfds_source, 'train', 'validation'),
}


def make_source(data, train: bool):
  """The training or validation source of the data config `data` (`config.data`), at its
  train_split/val_split when set, else at the source's usual split names."""
  if data.dataset not in SOURCES:
    raise DataError(f'unknown dataset {data.dataset!r}; choose one of {sorted(SOURCES)}')
  make, train_split, val_split = SOURCES[data.dataset]
  split = (data.train_split or train_split) if train else (data.val_split or val_split)
  return make(data, split)


def num_train_examples(config) -> int:
  return len(make_source(config.data, train=True))


def num_eval_examples(config) -> int:
  return len(make_source(config.data, train=False))


def num_classes(config, source: Optional[Sequence] = None) -> int:
  """The number of classes the data set has (config.model.num_classes must match it); `source`,
  when given, is its training source already opened."""
  if config.data.dataset == 'synthetic':
    return synthetic.NUM_CLASSES
  source = make_source(config.data, train=True) if source is None else source
  return len(source.classes) if isinstance(source, FolderSource) else source.num_classes


def check_num_classes(config, classes: int, network: str = 'the network (model.num_classes)',
                      fix: Optional[str] = None):
  """A ConfigError when the data set of `config` does not have `classes` classes: labels past the
  classifier's last row make the loss NaN, and fewer classes than rows is another data set."""
  found = num_classes(config)
  if found == classes:
    return
  data = config.data
  where = {'synthetic': 'the synthetic data set',
           'folder': f'{os.path.join(str(data.data_dir), data.train_split or "train")} (its class '
                     f'folders)',
           'tfds': f'{data.tfds_name} in {data.data_dir}'}[data.dataset]
  fix = fix or f'pass --config.model.num_classes={found}'
  raise ConfigError(f'{where} has {found} classes but {network} has {classes}: {fix}')


class DecodedSource:
  """Every record of `source` decoded once into a uint8 array (in `threads` threads), for a data
  set that fits in memory and is read many times, e.g. by several trainings in one process.
  Unreadable images are left out and counted in `skipped`."""

  def __init__(self, source: Sequence[Dict[str, Any]], threads: Optional[int] = None):
    def decode(index):
      record = source[index]
      try:
        with open_image(record['image']) as image:
          return {**record, 'image': np.asarray(_to_rgb(image))}
      except DECODE_ERRORS as error:
        _skip(record, error)
        return None
    with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
      decoded = list(pool.map(decode, range(len(source))))  # PIL decodes without the GIL
    self.records = [r for r in decoded if r is not None]
    self.skipped = len(decoded) - len(self.records)
    self.classes = getattr(source, 'classes', None)
    if not self.records:
      raise DataError(f'none of the {len(decoded)} images could be read')

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    return self.records[index]


# -- per-example transforms (run in Grain's threads and worker processes) -------------------------

_skipped_names = set()


def _skip(record, error) -> None:
  # Once per file and process: in training a bad file comes back every epoch.
  if record['name'] not in _skipped_names:
    _skipped_names.add(record['name'])
    log.warning('skipping unreadable image %s (%s: %s); %d skipped so far in this process',
                record['name'], type(error).__name__, error, len(_skipped_names))


def train_example(record, rng: np.random.Generator, size: int, scale: Tuple[float, float],
                  crop: str = 'random_resized', interpolation: str = 'bilinear'):
  """{'image': uint8 (size, size, 3), 'label': int32}, or None for a corrupt image."""
  try:
    image = open_image(record['image'])
    top, left, h, w = CROP_PARAMS[crop](rng, image.size[1], image.size[0], scale)
    image, box = decode_crop(image, (left, top, left + w, top + h), size)
  except DECODE_ERRORS as error:
    _skip(record, error)
    return None
  return {'image': resize_crop(image, box, size, interpolation), 'label': np.int32(record['label'])}


def _padding_example(resolutions):
  return {'images': {res: np.zeros((res, res, 3), np.uint8) for res in resolutions},
          'label': np.int32(0), 'mask': False, 'skipped': False}


def eval_example(index: int, source, resolutions: Tuple[int, ...], view: str = 'per_resolution',
                 interpolation: str = 'bilinear', largest: Optional[int] = None):
  """Every resolution's eval view of record `index` (`eval_views`); index -1 (padding) or a
  corrupt image gives zeros with mask False, so that every process keeps the same batch shapes."""
  if index < 0:
    return _padding_example(resolutions)
  record = source[index]
  try:
    image = _to_rgb(open_image(record['image']))
  except DECODE_ERRORS as error:
    _skip(record, error)
    return {**_padding_example(resolutions), 'skipped': True}
  return {'images': eval_views(image, resolutions, view, interpolation, largest),
          'label': np.int32(record['label']), 'mask': True, 'skipped': False}


# -- pipelines ------------------------------------------------------------------------------------

def _process(process_index, process_count) -> Tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return index, count


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'batch size {global_batch} is not divisible by {process_count} processes')
  return global_batch // process_count


def _read_options(data, batch: int) -> grain.ReadOptions:
  # About `prefetch` batches read ahead per process, shared by its workers.
  ahead = data.prefetch * batch // max(data.num_workers, 1)
  return grain.ReadOptions(num_threads=data.read_threads,
                           prefetch_buffer_size=max(ahead, data.read_threads))


def _with_workers(ds: grain.IterDataset, data, buffer: int) -> grain.IterDataset:
  """`data.num_workers` > 0: worker processes, each running the pipeline on every n-th element
  and keeping up to `buffer` outputs ready."""
  if data.num_workers <= 0:
    return ds
  # Grain's workers read absl flags, which are unparsed outside an absl app (tests, notebooks).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                     per_worker_buffer_size=max(buffer, 1)))


def train_dataset(config, process_index: Optional[int] = None, process_count: Optional[int] = None,
                  *, source: Optional[Sequence] = None) -> grain.IterDataset:
  """The endless training stream of this process, from `source` (default: the config's training
  set). Every epoch is a new global shuffle of the whole set, dealt out to the processes in turn,
  so no image repeats within an epoch; crops are drawn from (config.seed, position in the stream),
  so a run replays the same data, and runs with the same seed see the same crops."""
  index, count = _process(process_index, process_count)
  data = config.data
  batch = local_batch_size(data.batch_size, count)
  size = max(config.model.resolutions)
  source = make_source(data, train=True) if source is None else source
  ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat()[index::count]
  transform = functools.partial(train_example, size=size, scale=(data.crop_min_area, 1.0),
                                crop=data.train_crop, interpolation=data.interpolation)
  # Batched after the corrupt images (None) are dropped, so every batch is full; in the workers,
  # so that whole batches cross between processes.
  ds = ds.random_map(transform).to_iter_dataset(_read_options(data, batch))
  return _with_workers(ds.batch(batch, drop_remainder=True), data, data.prefetch)


def train_iterator(config, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, *,
                   source: Optional[Sequence] = None) -> grain.DatasetIterator:
  """Training batches. `get_state()` / `set_state()` save and restore its position; a state is
  valid for the same data set, seed, batch size, process count and num_workers."""
  return iter(train_dataset(config, process_index, process_count, source=source))


def eval_indices(num_examples: int, batch: int, process_index: int,
                 process_count: int) -> np.ndarray:
  """The example indices of one process's eval batches, -1 for padding. Global batch b holds
  examples [b * batch * count, (b + 1) * batch * count), process p the p-th block of `batch`."""
  per_step = batch * process_count
  num_batches = -(-num_examples // per_step)
  rows = np.arange(num_batches * per_step).reshape(num_batches, process_count, batch)
  rows = rows[:, process_index]
  return np.where(rows < num_examples, rows, -1).reshape(-1)


class EvalBatches:
  """One pass over the validation set, as batches of the same shape in every process; iterable
  again for each evaluation. `skipped` counts the corrupt images of the last pass."""

  def __init__(self, config, resolutions: Sequence[int], process_index: Optional[int] = None,
               process_count: Optional[int] = None, *, source: Optional[Sequence] = None):
    index, count = _process(process_index, process_count)
    data = config.data
    self.batch_size = local_batch_size(data.eval_batch_size, count)
    source = make_source(data, train=False) if source is None else source
    self.num_examples = len(source)
    indices = eval_indices(self.num_examples, self.batch_size, index, count)
    self.num_batches = len(indices) // self.batch_size
    transform = functools.partial(eval_example, source=source,
                                  resolutions=tuple(sorted(set(resolutions), reverse=True)),
                                  view=data.eval_view, interpolation=data.interpolation,
                                  largest=max(config.model.resolutions))
    ds = grain.MapDataset.source(indices.tolist()).map(transform)
    ds = ds.to_iter_dataset(_read_options(data, self.batch_size))
    ds = _with_workers(ds, data, data.prefetch * self.batch_size // max(data.num_workers, 1))
    # Batched after the workers, which each take every n-th image: every process then yields the
    # same number of full batches whatever the number of workers.
    self._dataset = ds.batch(self.batch_size)
    self.skipped = 0

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[Dict[str, Any]]:
    self.skipped = 0
    it = iter(self._dataset)
    try:
      for batch in it:
        self.skipped += int(np.sum(batch.pop('skipped')))
        yield batch
    finally:
      it.close()
    if self.skipped:
      log.warning('evaluation skipped %d unreadable images', self.skipped)


def eval_batches(config, resolutions: Optional[Sequence[int]] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None, *,
                 source: Optional[Sequence] = None) -> EvalBatches:
  """Evaluation batches at `resolutions` (default: config.model.resolutions) from `source`
  (default: the config's validation set)."""
  resolutions = config.model.resolutions if resolutions is None else resolutions
  return EvalBatches(config, resolutions, process_index, process_count, source=source)


def recalibration_batches(config, resolutions, num_images: int) -> Tuple[List[Any], int]:
  """Whole batches of the config's training crops, at least `num_images` images, made at the
  largest of `resolutions` (one above the trained ones then gets crops at its own size, not
  upsampled ones); and how many images they hold."""
  config = config.copy_and_resolve_references()
  config.model.resolutions = tuple(sorted(set(resolutions), reverse=True))
  num_batches = -(-num_images // config.data.batch_size)
  train_iter = train_iterator(config)
  batches = [next(train_iter)['image'] for _ in range(num_batches)]
  train_iter.close()  # stops the loader's worker processes
  return batches, num_batches * config.data.batch_size
