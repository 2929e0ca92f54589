"""The input pipeline: records of a data set, decoded and cropped on the host with Grain.

Training yields {'image': uint8 (B, R, R, 3), 'label': int32 (B,)}, one random crop per image at
the largest resolution R (the step makes the other views and flips on device); evaluation yields
{'images': {res: uint8 (B, res, res, 3)}, 'label', 'mask'}. B is the process's share of the global
batch; each process reads only its part. `source`: any random-access sequence of records.
"""
import functools
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import grain
import jax
import numpy as np

from rsnets_jax.data import preprocess, sources, transforms
from rsnets_jax.errors import require

log = logging.getLogger('rsnets_jax.data')


def check_config(data):
  """Every rule of `config.data`: the pipeline's, transforms', preprocess' and the data set's."""
  require(data.batch_size >= 1, 'data.batch_size', data.batch_size, 'a positive number of images')
  require(data.eval_batch_size >= 1, 'data.eval_batch_size', data.eval_batch_size,
          'a positive number of images')
  require(0 < data.crop_min_area <= 1, 'data.crop_min_area', data.crop_min_area, 'in (0, 1]')
  require(data.num_workers >= 0, 'data.num_workers', data.num_workers,
          '0 (in the main process) or more')
  require(data.read_threads >= 1, 'data.read_threads', data.read_threads, 'at least 1')
  require(data.prefetch >= 1, 'data.prefetch', data.prefetch, 'at least 1')
  transforms.check_config(data)
  preprocess.check_config(data)
  sources.kind(data).check(data)


# -- per-example transforms (run in Grain's threads and worker processes) -------------------------

def train_example(record, rng: np.random.Generator, size: int, scale: Tuple[float, float],
                  crop: str = 'random_resized', interpolation: str = 'bilinear'):
  """{'image': uint8 (size, size, 3), 'label': int32}, or None for a corrupt image."""
  try:
    image = transforms.open_image(record['image'])
    top, left, h, w = transforms.CROP_PARAMS[crop](rng, image.size[1], image.size[0], scale)
    image, box = transforms.decode_crop(image, (left, top, left + w, top + h), size)
  except transforms.DECODE_ERRORS as error:
    transforms.skip_unreadable(record, error)
    return None
  return {'image': transforms.resize_crop(image, box, size, interpolation), 'label': np.int32(record['label'])}


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
    image = transforms.to_rgb(transforms.open_image(record['image']))
  except transforms.DECODE_ERRORS as error:
    transforms.skip_unreadable(record, error)
    return {**_padding_example(resolutions), 'skipped': True}
  return {'images': transforms.eval_views(image, resolutions, view, interpolation, largest),
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
  """With `data.num_workers` > 0: worker processes, each keeping up to `buffer` outputs ready."""
  if data.num_workers <= 0:
    return ds
  # Grain's workers read absl flags, which are unparsed outside an absl app (tests, notebooks).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                     per_worker_buffer_size=max(buffer, 1)))


def train_dataset(config, process_index: Optional[int] = None, process_count: Optional[int] = None,
                  *, source: Optional[Sequence] = None) -> grain.IterDataset:
  """This process's endless training stream from `source` (default: the config's training set).
  Each epoch is a new global shuffle dealt out to the processes, so no image repeats within it;
  crops are drawn from (config.seed, stream position), so same seed, same crops, resumed or not."""
  index, count = _process(process_index, process_count)
  data = config.data
  batch = local_batch_size(data.batch_size, count)
  size = max(config.model.resolutions)
  source = sources.make_source(data, train=True) if source is None else source
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
    source = sources.make_source(data, train=False) if source is None else source
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
    # Batched after the workers (each takes every n-th image), so batch counts match everywhere.
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
  """Eval batches at `resolutions` (default: the model's) from `source` (default: validation)."""
  resolutions = config.model.resolutions if resolutions is None else resolutions
  return EvalBatches(config, resolutions, process_index, process_count, source=source)


RECALIBRATION_VIEWS = ('eval', 'train')


def recalibration_batches(config, resolutions, num_images: int,
                          views: str = 'eval') -> Tuple[List[Any], int]:
  """(batches that re-estimate BatchNorm statistics at `resolutions`, their image count).

  'eval': the evaluation views of a seeded subset of `num_images` training images, each batch
  {'images': {res: uint8 (B, res, res, 3)}}: every resolution's statistics come from the inputs it
  is evaluated on. 'train': whole batches of training crops (at least `num_images` images),
  cropped at the largest of `resolutions` so a larger added one is not fed upsampled crops."""
  if views not in RECALIBRATION_VIEWS:
    raise ValueError(f'views must be one of {RECALIBRATION_VIEWS}, got {views!r}')
  config = config.copy_and_resolve_references()
  config.model.resolutions = tuple(sorted(set(resolutions), reverse=True))
  if views == 'train':
    num_batches = -(-num_images // config.data.batch_size)
    train_iter = train_iterator(config)
    batches = [next(train_iter)['image'] for _ in range(num_batches)]
    train_iter.close()  # stops the loader's worker processes
    return batches, num_batches * config.data.batch_size
  config.data.eval_batch_size = config.data.batch_size
  chosen = sources.seeded_subset(sources.make_source(config.data, train=True), num_images)
  batches = []
  for batch in eval_batches(config, config.model.resolutions, 0, 1, source=chosen):
    keep = np.asarray(batch['mask'])
    batches.append({'images': {r: np.asarray(v)[keep] for r, v in batch['images'].items()}})
  return batches, len(chosen)
