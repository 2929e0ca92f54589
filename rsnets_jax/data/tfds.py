"""A data set prepared by tensorflow-datasets in array_record format (ImageNet, Imagenette, ...),
read with random access and without TensorFlow."""
from typing import List, Optional

from rsnets_jax import storage
from rsnets_jax.data.sources import DataSet
from rsnets_jax.errors import DataError

DEFAULT_DIR = "tensorflow-datasets' default folder (~/tensorflow_datasets or $TFDS_DATA_DIR)"


def _builder(name: str, data_dir: Optional[str]):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # slow to import
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:  # not in the catalogue, nor in data_dir
    raise DataError(f'no data set {name!r} in {data_dir or DEFAULT_DIR}, and tensorflow-datasets '
                    f'has none of that name: check config.data.tfds_name and '
                    f'config.data.data_dir') from None


class TfdsSource:
  """A TFDS data set in array_record format, read without TensorFlow. Images stay encoded
  (SkipDecoding) so that the crop can decode a JPEG at reduced scale."""

  def __init__(self, name: str, data_dir: Optional[str], split: str):
    import tensorflow_datasets as tfds  # slow to import; only this source needs it
    builder = _builder(name, data_dir)
    where = data_dir or DEFAULT_DIR
    prepare = (f"pip install -e '.[prepare]' then tfds build {name} --file_format=array_record" +
               (f' --data_dir={data_dir}' if data_dir else '') +
               (' --manual_dir=DIR_WITH_THE_DOWNLOADS'
                if getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None) else ''))
    if data_dir and storage.is_remote(data_dir):
      prepare += (f', or prepare it on a local disk and copy its folder there (gcloud storage cp '
                  f'-r ~/tensorflow_datasets/{name.split("/")[0]} {data_dir}/)')
    if not builder.is_prepared():
      raise DataError(f'{name} is not prepared in {where}: run {prepare}')
    try:
      self.source = builder.as_data_source(split=split,
                                           decoders={'image': tfds.decode.SkipDecoding()})
    except NotImplementedError:  # prepared, but only in a format without random access
      raise DataError(f'{name} in {where} is not in array_record format: rebuild it with '
                      f'{prepare}') from None
    self.num_classes = builder.info.features['label'].num_classes

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    example = self.source[index]
    name = example.get('file_name', index)
    name = name.decode() if isinstance(name, bytes) else str(name)
    return {'image': example['image'], 'label': int(example['label']), 'name': name}


class TfdsData(DataSet):
  """`config.data.tfds_name` in `config.data.data_dir` (None: tensorflow-datasets' default)."""
  name = 'tfds'
  train_split = 'train'
  val_split = 'validation'

  def open(self, data, split: str) -> TfdsSource:
    return TfdsSource(data.tfds_name, data.data_dir, split)

  def num_classes(self, data, train_source=None) -> int:
    if train_source is None:
      train_source = self.open(data, data.train_split or self.train_split)
    return train_source.num_classes

  def class_names(self, data) -> Optional[List[str]]:
    """The builder's label names (ImageNet's: WordNet IDs), when tensorflow-datasets knows them."""
    try:
      names = _builder(data.tfds_name, data.data_dir).info.features['label'].names
    except Exception:  # pylint: disable=broad-except  # an unknown or unreadable builder: no names
      return None
    return list(names) if names else None

  def report_name(self, data) -> str:
    return data.tfds_name

  def describe(self, data) -> str:
    return f'{data.tfds_name} in {data.data_dir or DEFAULT_DIR}'

  def check(self, data):
    if not data.tfds_name:
      raise DataError('config.data.tfds_name is not set: name the tensorflow-datasets builder, '
                      'e.g. --config.data.tfds_name=imagenet2012')


TFDS = TfdsData()
