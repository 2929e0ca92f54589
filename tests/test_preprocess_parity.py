"""Our inputs against the reference's torchvision transforms, transcribed with PIL (torchvision
itself is not a dependency): the evaluation view is the same to the pixel, and the on-device
training resize is PIL's bilinear filter up to float rounding.

torchvision, as the reference uses it on PIL images:
- Resize(size) with an int: the shorter side becomes `size`, the longer int(size * long / short)
  (truncated), PIL.Image.BILINEAR (PIL always antialiases when it shrinks).
- CenterCrop(res): top = int(round((h - res) / 2.0)), left likewise (Python's round, half to even).
- ToTensor: uint8 to float32, divided by 255.
"""
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from rsnets_jax.data import preprocess, transforms

# (training resolutions, their largest first): the paper's and configs/imagenette.py's.
RESOLUTION_SETS = ((224, 192, 160, 128, 96), (128, 112, 96, 80, 64))
# (height, width): ImageNet's common landscape and portrait sizes, square, odd and small ones (small
# ones stand for the small RandomResizedCrop boxes that training enlarges).
SIZES = ((375, 500), (500, 375), (128, 128), (333, 500), (199, 257), (146, 146), (160, 150),
         (100, 100))


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
  """Smooth colour regions (a bicubic upsampling of a few random pixels) plus sensor-like noise."""
  rng = np.random.default_rng(seed)
  coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), np.uint8))
  x = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.float32)
  x = x + rng.normal(0, 8, x.shape)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def images():
  return [photo_like(h, w, seed) for seed, (h, w) in enumerate(SIZES)]


def torchvision_eval(image: Image.Image, res: int) -> np.ndarray:
  """transforms.Compose([Resize(int(res / 0.875)), CenterCrop(res)]) on a PIL image."""
  size = int(res / 0.875)
  w, h = image.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_w, new_h = int(size * w / h), size
  image = image.resize((new_w, new_h), Image.BILINEAR)
  top, left = int(round((new_h - res) / 2.0)), int(round((new_w - res) / 2.0))
  return np.asarray(image.crop((left, top, left + res, top + res)))


def to_tensor(image: np.ndarray) -> np.ndarray:
  """ToTensor's values (HWC here): float32 division by 255."""
  return image.astype(np.float32) / np.float32(255)


@pytest.mark.parametrize('resolutions', RESOLUTION_SETS)
def test_eval_view_is_torchvision_resize_and_center_crop(images, resolutions):
  largest_pixel, largest_float = 0, 0.0
  for array in images:
    image = Image.fromarray(array)
    for res in resolutions:
      ours = transforms.eval_view(image, res)
      want = torchvision_eval(image, res)
      assert ours.shape == (res, res, 3) and ours.dtype == np.uint8
      largest_pixel = max(largest_pixel, int(np.abs(ours.astype(int) - want.astype(int)).max()))
      scaled = np.asarray(preprocess.to_float(jnp.asarray(ours)))
      largest_float = max(largest_float, float(np.abs(scaled - to_tensor(want)).max()))
  print(f'eval view vs torchvision at {resolutions}: largest pixel difference {largest_pixel}, '
        f'largest [0, 1] difference {largest_float:.2g}')
  assert largest_pixel == 0  # the same PIL calls, so the same pixels
  # XLA multiplies by 1/255 where ToTensor divides: at most one float32 ulp apart (measured 6e-8).
  assert largest_float <= 1.2e-7


@pytest.mark.parametrize('resolutions', RESOLUTION_SETS)
def test_training_resize_is_pil_bilinear(images, resolutions):
  """The host sends a uint8 crop at the largest resolution; the device resizes it to the others
  (jax.image.resize, linear, antialiased). PIL's bilinear filter on the same crop, computed in
  float ('F' mode), agrees to float rounding; PIL's uint8 result differs by its fixed-point
  rounding (under one gray level on average)."""
  largest = resolutions[0]
  crops = np.stack([np.asarray(Image.fromarray(a).resize((largest, largest), Image.BILINEAR))
                    for a in images])
  worst_float, worst_uint8, mean_uint8 = 0.0, 0.0, []
  for res in resolutions[1:]:
    ours = np.asarray(preprocess.resize(jnp.asarray(crops, jnp.float32), res))
    for crop, view in zip(crops, ours):
      pil_float = np.stack([np.asarray(Image.fromarray(crop[..., c].astype(np.float32), 'F')
                                       .resize((res, res), Image.BILINEAR)) for c in range(3)], -1)
      pil_uint8 = np.asarray(Image.fromarray(crop).resize((res, res), Image.BILINEAR), np.float32)
      worst_float = max(worst_float, float(np.abs(view - pil_float).max()))
      worst_uint8 = max(worst_uint8, float(np.abs(view - pil_uint8).max()))
      mean_uint8.append(float(np.abs(view - pil_uint8).mean()))
  print(f'training resize from {largest} (0-255 scale): vs PIL float max {worst_float:.2g}; '
        f'vs PIL uint8 max {worst_uint8:.3f}, mean {np.mean(mean_uint8):.3f}')
  # Measured: float max 4e-4; uint8 max 1.0, mean 0.29 (from 224) and 0.31 (from 128).
  assert worst_float < 2e-3
  assert worst_uint8 < 1.5
  assert np.mean(mean_uint8) < 0.4


@pytest.mark.parametrize('resolutions', RESOLUTION_SETS)
def test_two_step_training_views_stay_close_to_direct_resizing(images, resolutions):
  """The reference resizes the original crop to every resolution; we resize it once to the largest
  (host) and from there to the others (device). Bound what that costs on photo-like images."""
  largest = resolutions[0]
  worst, means = 0.0, []
  for array in images:
    image = Image.fromarray(array)
    crop = np.asarray(image.resize((largest, largest), Image.BILINEAR), np.float32)
    for res in resolutions[1:]:
      ours = np.asarray(preprocess.resize(jnp.asarray(crop[None]), res)[0])
      direct = np.asarray(image.resize((res, res), Image.BILINEAR), np.float32)
      worst = max(worst, float(np.abs(ours - direct).max()))
      means.append(float(np.abs(ours - direct).mean()))
  print(f'two-step vs direct resize from {largest} (0-255 scale): max {worst:.1f}, '
        f'mean {np.mean(means):.2f}')
  # Measured: max 20.9, mean 0.94 (from 224); max 15.2, mean 0.64 (from 128). Under one gray
  # level on average; the largest differences are pixel noise on crops that the host enlarges or
  # barely shrinks, which the second filter smooths and a direct resize keeps (a 128-pixel image's
  # view at 128 is the image itself for the reference, a blurred copy for us).
  assert np.mean(means) < 1.5
  assert worst < 32
