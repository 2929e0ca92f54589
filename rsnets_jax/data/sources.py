"""Data sets by kind: what each says about itself, and the registry that `config.data.dataset`
names.

A kind of data set (`DataSet`) opens a split as a random-access sequence of records
{'image': encoded bytes | file path | uint8 array, 'label': int, 'name': str}, and says the rest
of what the project needs to know of it: its classes, its name in reports, how a log line
describes it, whether it lives in a bucket, and its up-front checks. Adding a kind is one module
(a subclass) and one `register` line in `data/__init__.py`; nothing outside `rsnets_jax.data`
branches on a data set's name.
"""
import concurrent.futures
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rsnets_jax import storage
from rsnets_jax.data import transforms
from rsnets_jax.errors import DataError


class DataSet:
  """One kind of data set. Methods take the data config (`config.data`)."""
  name: str = ''
  # The split names a config's train_split/val_split default to.
  train_split: str = 'train'
  val_split: str = 'validation'
  # Whether it reads `data.data_dir` (a generated set does not).
  reads_data_dir: bool = True

  def open(self, data, split: str) -> Sequence[Dict[str, Any]]:
    """The records of `split`."""
    raise NotImplementedError

  def num_classes(self, data, train_source: Optional[Sequence] = None) -> int:
    """The number of classes (`train_source`, when given, is the training split already open)."""
    source = self.open(data, split_name(data, train=True)) if train_source is None else train_source
    return len(source.classes)

  def class_names(self, data) -> Optional[List[str]]:
    """The class names in label order, or None when they cannot be known here."""
    del data
    return None

  def report_name(self, data) -> str:
    """What reports and figures call the data."""
    del data
    return self.name

  def describe(self, data) -> str:
    """What a log line calls the data: where it is read from."""
    return f'{self.name} in {data.data_dir}'

  def classes_from(self, data) -> str:
    """Where the classes come from, for a one-line error about their number."""
    return self.describe(data)

  def in_bucket(self, data) -> bool:
    return self.reads_data_dir and bool(data.data_dir) and storage.is_remote(data.data_dir)

  def check(self, data):
    """Up-front checks of the config that need no file: a ConfigError or DataError."""
    if self.reads_data_dir:
      require_data_dir(data)

  def check_storage(self, data):
    """Before any work: a bucket's data set can be reached (a one-line DataError if not)."""
    if self.in_bucket(data):
      storage.check_storage(data.data_dir, 'config.data.data_dir', DataError)


DATA_SETS: Dict[str, DataSet] = {}


def register(data_set: DataSet) -> DataSet:
  """Makes `data_set` available as `config.data.dataset = data_set.name`."""
  DATA_SETS[data_set.name] = data_set
  return data_set


def kind(data) -> DataSet:
  """The kind of data set the data config names."""
  if data.dataset not in DATA_SETS:
    raise DataError(f'unknown dataset {data.dataset!r}; choose one of {sorted(DATA_SETS)}')
  return DATA_SETS[data.dataset]


def split_name(data, train: bool) -> str:
  """The config's train_split/val_split when set, else the kind's usual name."""
  data_set = kind(data)
  if train:
    return data.train_split or data_set.train_split
  return data.val_split or data_set.val_split


def require_data_dir(data) -> str:
  if not data.data_dir:
    raise DataError(f'config.data.data_dir is not set for dataset {data.dataset!r}: '
                    f'pass --config.data.data_dir=DIR (or use --config.data.dataset=synthetic)')
  return str(data.data_dir)


def make_source(data, train: bool) -> Sequence[Dict[str, Any]]:
  """The training or validation records of the data config `data` (`config.data`)."""
  return kind(data).open(data, split_name(data, train))


def num_train_examples(config) -> int:
  return len(make_source(config.data, train=True))


def num_eval_examples(config) -> int:
  return len(make_source(config.data, train=False))


def num_classes(config, source: Optional[Sequence] = None) -> int:
  """The number of classes the data set has (config.model.num_classes must match it); `source`,
  when given, is its training source already opened."""
  return kind(config.data).num_classes(config.data, source)


def report_name(data) -> str:
  return kind(data).report_name(data)


def describe(data) -> str:
  return kind(data).describe(data)


# What the published RS-Nets checkpoints were trained on (a converted model records no data set).
PUBLISHED_CHECKPOINTS_DATA = {'dataset': 'tfds', 'tfds_name': 'imagenet2012'}


def _data_config(data):
  """`data` (a data config, or a dict of its fields, e.g. from a checkpoint's meta) on top of the
  defaults, so that fields a run did not record read as their defaults."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from rsnets_jax import defaults  # pylint: disable=import-outside-toplevel
  fields = data.to_dict() if hasattr(data, 'to_dict') else dict(data)
  return ml_collections.ConfigDict({**defaults.get_config().data.to_dict(), **fields})


def class_names(data):
  """(names in label order, where they came from), or (None, why not), of a data config or of
  the dict of its fields."""
  data = _data_config(data)
  data_set = kind(data)
  names = data_set.class_names(data)
  if names is None:
    return None, f'{data_set.describe(data)} does not say its class names here'
  return names, data_set.describe(data)


def with_data_dir(data, data_dir: Optional[str]):
  """The data config of the data set a run recorded (`data`, possibly empty, e.g. a converted
  model's), read from `data_dir` when given: a run's own kind of data set there, or class folders
  when it recorded none."""
  recorded = bool(data)
  data = _data_config(data or {})
  if not recorded:
    if not data_dir:
      raise DataError('this model records no training data: pass --data-dir=DIR (class folders '
                      'in DIR/train and DIR/val)')
    data.dataset = 'folder'
  if data_dir:
    if not kind(data).reads_data_dir:
      raise DataError(f'--data-dir replaces the folder of a data set; this model was trained on '
                      f'{kind(data).describe(data)}, which have none')
    data.data_dir = data_dir
  return data


def check_num_classes(config, classes: int, network: str = 'the network (model.num_classes)',
                      fix: Optional[str] = None):
  """A ConfigError when the data set of `config` does not have `classes` classes: labels past the
  classifier's last row make the loss NaN, and fewer classes than rows is another data set."""
  from rsnets_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  found = num_classes(config)
  if found == classes:
    return
  fix = fix or f'pass --config.model.num_classes={found}'
  raise ConfigError(f'{kind(config.data).classes_from(config.data)} has {found} classes but '
                    f'{network} has {classes}: {fix}')


class DecodedSource:
  """Every record of `source` decoded once into a uint8 array (in `threads` threads), for a data
  set that fits in memory and is read many times, e.g. by several trainings in one process.
  Unreadable images are left out and counted in `skipped`."""

  def __init__(self, source: Sequence[Dict[str, Any]], threads: Optional[int] = None):
    def decode(index):
      record = source[index]
      try:
        with transforms.open_image(record['image']) as image:
          return {**record, 'image': np.asarray(transforms.to_rgb(image))}
      except transforms.DECODE_ERRORS as error:
        transforms.skip_unreadable(record, error)
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


SUBSET_SEED = 0  # which images a seeded subset holds (calibrations, evaluations of a subset)


def seeded_subset(source: Sequence, num_images: int) -> Sequence:
  """`num_images` records of `source` drawn at random (seeded), in the order drawn (0: `source`
  itself). Not the first ones, nor in the source's order: those of a class-folder source
  come class by class, and a batch of one class gives BatchNorm statistics without the spread
  between classes."""
  if num_images <= 0:
    return source  # all of it, as it is
  order = np.random.default_rng(SUBSET_SEED).permutation(len(source))[:num_images]
  return [source[int(i)] for i in order]
