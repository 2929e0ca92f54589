"""A generated data set that needs no download and still shows the accuracy-resolution trade-off.

An image is an ellipse on a noisy background. Its class (16 of them) is two cues of two sizes:
- the ellipse's mean colour (4 families), which survives any downscaling;
- fine stripes on it, 2.6 to 5.2 pixels per period at the native 48 pixels: none, light-dark,
  red-green or yellow-blue. Both colours of a stripe pair average to the mean colour, so once
  antialiased resizing blurs the stripes away the four patterns look alike.
The period is drawn per image, so the share of images whose stripes survive falls smoothly as the
resolution drops: a network can tell all 16 classes apart at 32 pixels and ever fewer below
(chance is 1/16; the colour alone gives 1/4). Every image is a pure function of
(seed, split, index), so processes and loader workers make the same set without storing it, and
labels are exactly balanced (index mod 16).
"""
import numpy as np

from rsnets_jax.data.sources import DataSet
from rsnets_jax.errors import require

NUM_CLASSES = 16
SPLITS = ('train', 'val')

# Mean colours of the families: far apart for jitter and noise, and at least STRIPE_AMPLITUDE from 0
# and 255 so that stripes never clip (clipping would shift the mean and leak the pattern).
FAMILIES = np.array([[170, 100, 95], [95, 165, 100], [100, 105, 170], [165, 160, 95]], np.float32)
# Stripe colour axes: none, light-dark, red-green, yellow-blue. Orthogonal axes make the patterns
# separable by stripe energy along each axis, which a narrow network learns in a few hundred steps
# (non-orthogonal ones, e.g. red-cyan and green-magenta, took several times longer).
AXES = np.array([[0, 0, 0], [1, 1, 1], [1, -1, 0], [0.5, 0.5, -1]], np.float32)
STRIPE_AMPLITUDE = 70.0
# Stripe period as a fraction of the image side (native 48 px: 2.6 to 5.2 px). Evaluation at 32
# sees 2 to 3.9 px periods, at 16 only 1 to 1.9 px, near where bilinear antialiasing erases them.
STRIPE_PERIOD = (0.054, 0.108)
NOISE_STD = 4.0


def label_of(index: int) -> int:
  return index % NUM_CLASSES


def cues_of(label: int):
  """(colour family, stripe colour axis) of a class."""
  return label // 4, label % 4


def make_image(seed: int, split: str, index: int, size: int = 48) -> np.ndarray:
  """The uint8 (size, size, 3) image number `index` of `split`; its label is `label_of(index)`."""
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  family, axis = cues_of(label_of(index))
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

  background = rng.uniform(60, 195, 3).astype(np.float32)
  mean = FAMILIES[family] + rng.uniform(-12, 12, 3).astype(np.float32)
  cy, cx = size * (0.5 + rng.uniform(-0.1, 0.1, 2))
  ry, rx = size * rng.uniform(0.28, 0.42, 2)
  tilt = rng.uniform(-np.pi, np.pi)
  dy, dx = y - cy, x - cx
  r = np.hypot((dy * np.cos(tilt) + dx * np.sin(tilt)) / ry,
               (dx * np.cos(tilt) - dy * np.sin(tilt)) / rx)
  # A soft edge: a hard one would alias into a fine cue that every class shares.
  inside = np.clip((1.0 - r) * min(ry, rx) + 0.5, 0.0, 1.0)[..., None]

  theta = rng.uniform(0, np.pi)
  period = size * rng.uniform(*STRIPE_PERIOD)
  phase = rng.uniform(0, 2 * np.pi)
  stripes = np.sin(2 * np.pi * (y * np.cos(theta) + x * np.sin(theta)) / period + phase)
  ellipse = mean + STRIPE_AMPLITUDE * stripes[..., None] * AXES[axis]
  image = inside * ellipse + (1.0 - inside) * background
  image += rng.normal(0.0, NOISE_STD, image.shape).astype(np.float32)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


class SyntheticSource:
  """A random-access source of `make_image` records, the same shape as the file-based ones."""

  def __init__(self, seed: int, split: str, length: int, size: int = 48):
    if split not in SPLITS:
      raise ValueError(f'synthetic split must be one of {SPLITS}, got {split!r}')
    self.seed, self.split, self.length, self.size = seed, split, length, size

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int):
    index = int(index)
    if not 0 <= index < self.length:
      raise IndexError(index)
    return {'image': make_image(self.seed, self.split, index, self.size),
            'label': label_of(index), 'name': f'synthetic/{self.split}/{index}'}


class SyntheticData(DataSet):
  """The generated set, sized by config.data.synthetic_{train,val}_size and _image_size."""
  name = 'synthetic'
  train_split = 'train'
  val_split = 'val'
  reads_data_dir = False
  SEED = 0  # the generated set stays the same whatever the training seed

  def open(self, data, split: str) -> SyntheticSource:
    length = data.synthetic_train_size if split == 'train' else data.synthetic_val_size
    return SyntheticSource(self.SEED, split, length, data.synthetic_image_size)

  def num_classes(self, data, train_source=None) -> int:
    return NUM_CLASSES

  def describe(self, data) -> str:
    return 'generated images'

  def classes_from(self, data) -> str:
    return 'the synthetic data set'

  def check(self, data):
    for name in ('synthetic_train_size', 'synthetic_val_size', 'synthetic_image_size'):
      require(data[name] >= 1, f'data.{name}', data[name], 'at least 1')


SYNTHETIC = SyntheticData()
