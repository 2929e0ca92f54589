"""Writes tests/data/tfds/rsnets_tiny: a data set prepared by tensorflow-datasets itself.

    pip install -e '.[prepare]'          # TensorFlow: tfds' image encoder imports it
    python tests/data/make_tfds_fixture.py

A `GeneratorBasedBuilder` with 16 classes of small JPEGs (16 training and 10 validation images),
prepared with `download_and_prepare(file_format='array_record')` as `tfds build` prepares ImageNet.
The suite reads it through the product's tfds source with no TensorFlow installed
(tests/test_reliability.py). Each image is a pure function of (split, index): rerunning this script
writes the same images.
"""
import io
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, 'tfds')
# 16 classes, the tests' tiny network's (tests/test_reliability.py); 10 validation images are one
# full and one padded batch of 8.
NUM_CLASSES = 16
SIZES = {'train': 16, 'validation': 10}
# Class k: its own base colour, so that a few steps can learn something.
COLOURS = np.random.default_rng(0).integers(40, 216, (NUM_CLASSES, 3))


def make_jpeg(split: str, index: int) -> bytes:
  rng = np.random.default_rng([len(split), index])
  label = index % NUM_CLASSES
  height, width = 20 + 4 * (index % 2), 24 - 4 * (index % 2)  # not square: the eval crop matters
  pixels = np.clip(COLOURS[label] + rng.integers(-30, 30, (height, width, 3)), 0, 255)
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


class RsnetsTiny(tfds.core.GeneratorBasedBuilder):
  """Colour classes of small JPEGs, with ImageNet's features (image, label, file_name)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'The rsnets_jax test fixture.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SIZES}

  def _generate_examples(self, split):
    for index in range(SIZES[split]):
      name = f'{split}_{index:02d}.JPEG'
      yield name, {'image': io.BytesIO(make_jpeg(split, index)), 'label': index % NUM_CLASSES,
                   'file_name': name}


if __name__ == '__main__':
  builder = RsnetsTiny(data_dir=DATA_DIR)
  builder.download_and_prepare(file_format='array_record')
  print(f'wrote {builder.data_dir}')
