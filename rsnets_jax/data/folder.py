"""Class folders on this machine: `<data_dir>/<split>/<class>/<image>`, e.g. Imagenette or
ImageNet unpacked; the classes are the sorted folder names of the training split."""
import functools
import os
from typing import List, Optional, Tuple

from rsnets_jax import storage
from rsnets_jax.data import transforms
from rsnets_jax.data.sources import DataSet, require_data_dir
from rsnets_jax.errors import DataError


@functools.lru_cache(maxsize=8)
def _list_class_folders(root: str) -> Tuple[str, ...]:
  if not os.path.isdir(root):
    return ()
  return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir()))


@functools.lru_cache(maxsize=8)
def _list_images(folder: str) -> Tuple[str, ...]:
  return tuple(sorted(e.name for e in os.scandir(folder)
                      if e.is_file() and e.name.lower().endswith(transforms.IMAGE_EXTENSIONS)))


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
      if os.path.isdir(class_dir) and not names:
        raise DataError(f'class folder {class_dir} has no images '
                        f'({", ".join(transforms.IMAGE_EXTENSIONS)}): add its images or remove it')
      self.files.extend(os.path.join(class_dir, f) for f in names)
      self.labels.extend([label] * len(names))
    if not self.files:
      raise DataError(f'no images in {folder}: {hint}')

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int):
    return {'image': self.files[index], 'label': self.labels[index], 'name': self.files[index]}


class ClassFolders(DataSet):
  name = 'folder'
  train_split = 'train'
  val_split = 'val'

  def open(self, data, split: str) -> FolderSource:
    return FolderSource(require_data_dir(data), split, data.train_split or self.train_split)

  def class_names(self, data) -> Optional[List[str]]:
    split = data.train_split or self.train_split
    try:
      return list(FolderSource(require_data_dir(data), split, split).classes)
    except DataError:
      return None

  def report_name(self, data) -> str:
    # A class-folder set by its folder's name: 'imagenette-128', not 'folder'.
    return os.path.basename(os.path.normpath(data.data_dir)) if data.data_dir else self.name

  def describe(self, data) -> str:
    return f'the class folders in {data.data_dir}'

  def classes_from(self, data) -> str:
    return (f'{os.path.join(str(data.data_dir), data.train_split or self.train_split)} (its class '
            f'folders)')

  def check(self, data):
    root = require_data_dir(data)
    if storage.is_remote(root):
      raise DataError(f'config.data.dataset=folder reads a folder of this machine, not {root}: '
                      f'prepare the data set with tensorflow-datasets (dataset=tfds), or mount the '
                      f'bucket with Cloud Storage FUSE and pass the mount point')


CLASS_FOLDERS = ClassFolders()
