"""Host image transforms (reading, training crops, eval views): pure functions of PIL images and
numpy arrays, for the input pipeline's workers and `predict`."""
import logging
import math
import io
import struct
import zlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from rsnets_jax.data import preprocess
from rsnets_jax.errors import require

CROP_FRACTION = 0.875  # eval: shorter side to int(res / 0.875), then the centre res x res
CROP_RATIO = (3 / 4, 4 / 3)
GOOGLENET_RATIO = (0.75, 1.333)
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
# The eval views: each resolution's own resize and centre crop (the full-precision reference), or
# the largest resolution's, then TF1's nearest-neighbour resize to the others (the quantized one).
EVAL_VIEWS = ('per_resolution', 'nearest_from_largest')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm')

# What PIL raises on a truncated or corrupt file varies with the format and where it breaks.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                 Image.DecompressionBombError)

log = logging.getLogger('rsnets_jax.data')


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
  """(top, left, h, w) of tensorpack's GoogleNetResize crop: up to 10 uniform draws of area and
  aspect, sides rounded half up, swapped with probability 0.5. Fallback: the centred square of the
  shorter side (what the reference's resize-then-centre-crop fallback takes)."""
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


def to_rgb(image: Image.Image) -> Image.Image:
  return image if image.mode == 'RGB' else image.convert('RGB')


def decode_crop(image: Image.Image, box: Tuple[int, int, int, int], size: int):
  """Decodes `image` for the crop `box` = (left, top, right, bottom) that will be resized to
  size x size: a JPEG decodes at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper) when the crop
  stays at least `size` pixels on each side. Returns the RGB image and the box in its pixels."""
  width, height = image.size
  cw, ch = box[2] - box[0], box[3] - box[1]
  image.draft('RGB', (math.ceil(width * size / cw), math.ceil(height * size / ch)))
  image = to_rgb(image)  # loads the pixels: this is where a corrupt file fails
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
  """The reference's eval input, uint8: shorter side to int(res / 0.875) (antialiased bilinear,
  or bicubic), then the centre res x res with torchvision's CenterCrop rounding."""
  image = to_rgb(image)
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
  """Every resolution's eval input by `view` (EVAL_VIEWS); `largest`: the largest trained one."""
  require(view in EVAL_VIEWS, 'data.eval_view', view, f'one of {EVAL_VIEWS}')
  if view == 'per_resolution':
    return {res: eval_view(image, res, interpolation) for res in resolutions}
  largest = largest or max(resolutions)
  big = eval_view(image, largest, interpolation)
  views = {}
  for res in resolutions:
    index = preprocess.nearest_tf1_indices(largest, res)
    views[res] = big[index][:, index]
  return views


# The training crop: torchvision's RandomResizedCrop (the full-precision reference), or
# tensorpack's GoogleNetResize (the quantized reference).
TRAIN_CROPS = tuple(CROP_PARAMS)


def check_config(data):
  """The config rules of the host image operations (`config.data`)."""
  require(data.train_crop in TRAIN_CROPS, 'data.train_crop', data.train_crop,
          f'one of {TRAIN_CROPS}')
  require(data.interpolation in INTERPOLATIONS, 'data.interpolation', data.interpolation,
          f'one of {tuple(INTERPOLATIONS)}')
  require(data.eval_view in EVAL_VIEWS, 'data.eval_view', data.eval_view, f'one of {EVAL_VIEWS}')


_skipped_names = set()


def skip_unreadable(record, error) -> None:
  """Logs an unreadable image once per file and process: in training it comes back every epoch."""
  if record['name'] not in _skipped_names:
    _skipped_names.add(record['name'])
    log.warning('skipping unreadable image %s (%s: %s); %d skipped so far in this process',
                record['name'], type(error).__name__, error, len(_skipped_names))
