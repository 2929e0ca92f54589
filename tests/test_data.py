"""The input pipeline: crops, eval views, sharding, corrupt files, resume, the synthetic set."""
import collections
import io
import logging
import os
import zlib

import numpy as np
import pytest
from PIL import Image

from rsnets_jax import data, defaults, errors
from rsnets_jax.data import folder, pipeline, synthetic, transforms

from helpers import override


def make_config(**overrides):
  c = defaults.get_config()
  override(c, dataset='synthetic', num_classes=synthetic.NUM_CLASSES, resolutions=(32, 24, 16),
           batch_size=8, eval_batch_size=8, synthetic_train_size=32, synthetic_val_size=13,
           synthetic_image_size=48, crop_min_area=0.25, num_workers=0, read_threads=2, prefetch=2,
           train_split=None, val_split=None)  # the source's own split names
  return override(c, **overrides)


def write_image(path, size=(40, 30), colour=(200, 30, 30), fmt='JPEG'):
  rng = np.random.default_rng(zlib.crc32(str(path).encode()))
  pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
  Image.fromarray(pixels.astype(np.uint8)).save(path, fmt)


def make_folder(root, classes=('a', 'b'), per_class=3, splits=('train', 'val')):
  for split in splits:
    for k, name in enumerate(classes):
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(per_class):
        write_image(root / split / name / f'{i}.jpg', colour=(60 + 150 * k, 90, 200 - 150 * k))
  return root


def first_line_only(error):
  message = str(error.value)
  assert '\n' not in message and message
  return message


# -- crops ----------------------------------------------------------------------------------------

def test_crop_params_obey_the_area_and_aspect_ranges():
  rng = np.random.default_rng(0)
  height, width = 300, 400
  areas, ratios = [], []
  for _ in range(2000):
    top, left, h, w = transforms.crop_params(rng, height, width, (0.08, 1.0))
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    areas.append(h * w / (height * width))
    ratios.append(w / h)
  areas, ratios = np.array(areas), np.array(ratios)
  assert areas.min() >= 0.07 and areas.max() <= 1.0
  # Rounding to whole pixels can push the ratio slightly outside [3/4, 4/3].
  assert ratios.min() > 0.74 and ratios.max() < 1.35
  # Area uniform in [0.08, 1] and log-ratio uniform, kept where the crop fits: w = sqrt(a r) * 346
  # <= 400 and h = sqrt(a / r) * 346 <= 300, i.e. a r <= 4/3 and a / r <= 3/4.
  a, log_r = np.meshgrid(np.linspace(0.08, 1, 400), np.linspace(np.log(3 / 4), np.log(4 / 3), 400))
  fits = (a * np.exp(log_r) <= 4 / 3) & (a / np.exp(log_r) <= 3 / 4)
  assert abs(areas.mean() - a[fits].mean()) < 0.015
  # Wide crops fit a landscape image more often, which skews the kept ratios the same way.
  assert abs(np.log(ratios).mean() - log_r[fits].mean()) < 0.015


def test_crop_params_fall_back_to_the_centre_like_torchvision():
  rng = np.random.default_rng(0)
  # A 10 x 1000 strip: no crop of 90-100% of the area fits 3/4..4/3, so the centre crop at 4/3.
  top, left, h, w = transforms.crop_params(rng, 10, 1000, (0.9, 1.0))
  assert (top, h, w) == (0, 10, 13) and left == (1000 - 13) // 2
  # Too tall: the full width, height = round(width / (3/4)).
  assert transforms.crop_params(rng, 1000, 10, (0.9, 1.0)) == ((1000 - 13) // 2, 0, 13, 10)


def test_random_resized_crop_is_deterministic_and_sized():
  image = Image.fromarray(synthetic.make_image(0, 'train', 3))
  a = transforms.random_resized_crop(image, 32, np.random.default_rng(7))
  b = transforms.random_resized_crop(image, 32, np.random.default_rng(7))
  c = transforms.random_resized_crop(image, 32, np.random.default_rng(8))
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_random_resized_crop_equals_crop_then_resize():
  image = Image.fromarray(synthetic.make_image(0, 'train', 5))
  top, left, h, w = transforms.crop_params(np.random.default_rng(3), 48, 48)
  want = np.asarray(image.crop((left, top, left + w, top + h)).resize((24, 24), Image.BILINEAR))
  np.testing.assert_array_equal(transforms.random_resized_crop(image, 24, np.random.default_rng(3)), want)


def test_large_jpeg_decodes_at_reduced_scale_for_a_small_crop():
  y, x = np.mgrid[0:600, 0:800]
  pixels = np.stack([x * 255 // 800, y * 255 // 600, (x + y) % 256 // 4 + 100], -1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'JPEG', quality=95)
  encoded = buffer.getvalue()
  box = (100, 50, 700, 550)  # 600 x 500 down to 64: a 1/4-scale decode still has >= 64 pixels
  reduced, reduced_box = transforms.decode_crop(Image.open(io.BytesIO(encoded)), box, 64)
  assert reduced.size == (200, 150)
  np.testing.assert_allclose(reduced_box, (25, 12.5, 175, 137.5))
  fast = transforms.resize_crop(reduced, reduced_box, 64)
  full = np.asarray(Image.open(io.BytesIO(encoded)).convert('RGB').crop(box).resize((64, 64),
                                                                                   Image.BILINEAR))
  assert fast.shape == (64, 64, 3)
  assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


# -- eval view ------------------------------------------------------------------------------------

def test_eval_view_resizes_the_short_side_and_crops_the_centre():
  # A 100 x 100 image with a red centre square [25, 75): res 35 resizes to int(35 / 0.875) = 40,
  # so the square spans [10, 30) and the centre crop starts at round(2.5) = 2: [8, 28) in the view.
  pixels = np.zeros((100, 100, 3), np.uint8)
  pixels[25:75, 25:75] = (255, 0, 0)
  view = transforms.eval_view(Image.fromarray(pixels), 35)
  assert view.shape == (35, 35, 3) and view.dtype == np.uint8
  red = view[..., 0] > 128
  rows, cols = np.nonzero(red.any(1))[0], np.nonzero(red.any(0))[0]
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 27, 8, 27)


def test_eval_view_matches_torchvision_rounding_on_a_non_square_image():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (81, 50, 3)).astype(np.uint8)  # height 81, width 50
  image = Image.fromarray(pixels)
  # Resize(18): width 50 -> 18, height int(18 * 81 / 50) = 29; CenterCrop(16): top round(6.5) = 6.
  resized = image.resize((18, 29), Image.BILINEAR)
  want = np.asarray(resized.crop((1, 6, 17, 22)))
  np.testing.assert_array_equal(transforms.eval_view(image, 16), want)
  assert transforms.eval_resize_size(224) == 256 and transforms.eval_resize_size(96) == 109


# -- evaluation batches ---------------------------------------------------------------------------

def test_eval_indices_cover_every_example_once_over_processes():
  for n, batch, count in [(13, 2, 2), (16, 4, 2), (5, 3, 4), (1, 1, 1)]:
    per_process = [pipeline.eval_indices(n, batch, p, count) for p in range(count)]
    assert len({len(ix) for ix in per_process}) == 1 and len(per_process[0]) % batch == 0
    real = np.concatenate(per_process)
    real = real[real >= 0]
    assert sorted(real.tolist()) == list(range(n))


def test_eval_batches_pad_and_mask_with_two_processes():
  config = make_config(synthetic_val_size=13, eval_batch_size=4)
  seen = collections.Counter()
  shapes = []
  for p in range(2):
    batches = data.eval_batches(config, (24, 16), process_index=p, process_count=2)
    assert len(batches) == 4  # ceil(13 / 4) steps of 2 images per process
    for batch in batches:
      assert set(batch) == {'images', 'label', 'mask'}
      assert batch['images'][24].shape == (2, 24, 24, 3)
      assert batch['images'][16].shape == (2, 16, 16, 3)
      assert batch['images'][24].dtype == np.uint8 and batch['mask'].dtype == bool
      assert batch['label'].dtype == np.int32
      shapes.append(batch['label'].shape)
      for label, ok in zip(batch['label'], batch['mask']):
        if ok:
          seen[int(label)] += 1
  assert set(shapes) == {(2,)}
  assert sum(seen.values()) == 13
  assert seen == collections.Counter(synthetic.label_of(i) for i in range(13))


def test_eval_batches_with_worker_processes_match_in_process_ones():
  def passes(workers):
    config = make_config(synthetic_val_size=13, eval_batch_size=8, num_workers=workers,
                         read_threads=1)
    return [list(data.eval_batches(config, (16,), p, 2)) for p in range(2)]
  for inline, workers in zip(passes(0), passes(2)):
    assert len(inline) == len(workers) == 2
    assert [b['label'].shape for b in workers] == [(4,), (4,)]
    key = lambda bs: sorted((int(l), m.tobytes()) for b in bs
                            for l, m, ok in zip(b['label'], b['images'][16], b['mask']) if ok)
    assert key(inline) == key(workers)


def test_eval_batches_show_the_reference_views():
  config = make_config(synthetic_val_size=3, eval_batch_size=4)
  batch = next(iter(data.eval_batches(config, (32,), 0, 1)))
  for i in range(3):
    image = Image.fromarray(synthetic.make_image(synthetic.SyntheticData.SEED, 'val', i, 48))
    np.testing.assert_array_equal(batch['images'][32][i], transforms.eval_view(image, 32))
  assert batch['mask'].tolist() == [True, True, True, False]


# -- training batches -----------------------------------------------------------------------------

def test_train_batches_have_the_engine_layout():
  config = make_config()
  batch = next(data.train_iterator(config, 0, 1))
  assert batch['image'].shape == (8, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert data.num_train_examples(config) == 32 and data.num_eval_examples(config) == 13


def test_each_epoch_sees_every_example_once_across_processes():
  # 32 examples, labels index mod 16: an epoch over both processes has every label exactly twice.
  config = make_config(batch_size=8)
  for epoch in range(2):
    labels = collections.Counter()
    for p in range(2):
      it = data.train_iterator(config, p, 2)
      batches = [next(it) for _ in range(4 * (epoch + 1))][4 * epoch:]
      for b in batches:
        assert b['image'].shape == (4, 32, 32, 3)
        labels.update(b['label'].tolist())
    assert labels == collections.Counter({k: 2 for k in range(16)})


def test_train_stream_is_reproducible_and_differs_by_seed():
  config = make_config()
  a, b = data.train_iterator(config, 0, 1), data.train_iterator(config, 0, 1)
  c = data.train_iterator(make_config(seed=1), 0, 1)
  first_a, first_b, first_c = next(a), next(b), next(c)
  np.testing.assert_array_equal(first_a['image'], first_b['image'])
  assert not np.array_equal(first_a['image'], first_c['image'])


def _resume_matches(config, k=3, n=5):
  it = data.train_iterator(config, 0, 1)
  for _ in range(k):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(n)]
  resumed = data.train_iterator(config, 0, 1)
  resumed.set_state(state)
  got = [next(resumed) for _ in range(n)]
  for e, g in zip(expected, got):
    np.testing.assert_array_equal(e['image'], g['image'])
    np.testing.assert_array_equal(e['label'], g['label'])
  for i in (it, resumed):
    i.close()


def test_resumed_iterator_continues_where_it_stopped():
  # 5 batches of 8 from 32 examples: the continuation crosses an epoch boundary.
  _resume_matches(make_config())


def test_resumed_iterator_with_worker_processes():
  _resume_matches(make_config(num_workers=2, read_threads=1), k=2, n=3)


# -- bad data -------------------------------------------------------------------------------------

def test_corrupt_images_are_skipped_and_reported(tmp_path, caplog):
  root = make_folder(tmp_path)
  good = (root / 'train' / 'a' / '0.jpg').read_bytes()
  for split in ('train', 'val'):
    (root / split / 'a' / 'truncated.jpg').write_bytes(good[:len(good) // 3])
    (root / split / 'a' / 'garbage.jpg').write_bytes(b'not an image at all' * 10)
  config = make_config(dataset='folder', data_dir=str(root), batch_size=2, eval_batch_size=4,
                       resolutions=(24, 16))
  assert data.num_train_examples(config) == 8
  with caplog.at_level(logging.WARNING):
    it = data.train_iterator(config, 0, 1)
    labels = [l for _ in range(6) for l in next(it)['label'].tolist()]  # two epochs of good ones
  assert collections.Counter(labels) == {0: 6, 1: 6}
  assert 'truncated.jpg' in caplog.text and 'garbage.jpg' in caplog.text

  batches = data.eval_batches(config, (24, 16), 0, 1)
  masks = [b['mask'] for b in batches]
  assert sum(int(m.sum()) for m in masks) == 6
  assert batches.skipped == 2
  assert len({m.shape for m in masks}) == 1


def test_folder_source_reads_classes_and_images(tmp_path):
  root = make_folder(tmp_path, classes=('cat', 'ant', 'bee'), per_class=2)
  write_image(root / 'train' / 'bee' / 'x.PNG', fmt='PNG')
  (root / 'train' / 'bee' / 'notes.txt').write_text('not an image')
  source = folder.FolderSource(str(root), 'train')
  assert source.classes == ('ant', 'bee', 'cat')
  assert len(source) == 7 and sorted(collections.Counter(source.labels).values()) == [2, 2, 3]
  config = make_config(dataset='folder', data_dir=str(root))
  assert data.num_classes(config) == 3 and data.num_eval_examples(config) == 6


def test_missing_folder_data_raises_one_helpful_line(tmp_path):
  config = make_config(dataset='folder', data_dir=str(tmp_path / 'nowhere'))
  with pytest.raises(errors.DataError) as error:
    data.train_iterator(config, 0, 1)
  message = first_line_only(error)
  assert str(tmp_path / 'nowhere') in message and 'data_dir' in message

  with pytest.raises(errors.DataError) as error:
    data.num_train_examples(make_config(dataset='folder', data_dir=None))
  assert '--config.data.data_dir' in first_line_only(error)

  with pytest.raises(errors.DataError) as error:
    data.num_train_examples(make_config(dataset='imagenet'))
  assert 'synthetic' in first_line_only(error)


def test_folder_without_val_images_raises(tmp_path):
  root = make_folder(tmp_path, splits=('train',))
  with pytest.raises(errors.DataError) as error:
    data.eval_batches(make_config(dataset='folder', data_dir=str(root)), (16,), 0, 1)
  assert os.path.join(str(root), 'val') in first_line_only(error)


class FakeTfdsBuilder:
  """Stands in for a prepared TFDS builder: writing array_record files needs TensorFlow."""

  def __init__(self, prepared=True, random_access=True):
    self.prepared, self.random_access = prepared, random_access
    self.info = type('Info', (), {'features': {'label': type('L', (), {'num_classes': 3})()}})()

  def is_prepared(self):
    return self.prepared

  def as_data_source(self, split, decoders):
    import tensorflow_datasets as tfds
    assert isinstance(decoders['image'], tfds.decode.SkipDecoding)  # JPEG bytes, not pixels
    if not self.random_access:
      raise NotImplementedError('Random access data source for file format tfrecord')
    examples = []
    for i in range(5 if split == 'train' else 4):
      buffer = io.BytesIO()
      Image.fromarray(np.full((30, 40, 3), 50 * i, np.uint8)).save(buffer, 'JPEG')
      examples.append({'image': buffer.getvalue(), 'label': np.int64(i % 3),
                       'file_name': f'n0{i}.JPEG'.encode()})
    return examples


def test_tfds_source_reads_encoded_records(monkeypatch, tmp_path):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir: FakeTfdsBuilder())
  config = make_config(dataset='tfds', data_dir=str(tmp_path), tfds_name='imagenet2012',
                       batch_size=5, eval_batch_size=4, resolutions=(16,))
  assert data.num_train_examples(config) == 5 and data.num_classes(config) == 3
  source = data.make_source(config.data, train=False)
  assert source[2]['name'] == 'n02.JPEG' and source[2]['label'] == 2
  batch = next(data.train_iterator(config, 0, 1))
  assert sorted(batch['label'].tolist()) == [0, 0, 1, 1, 2]
  eval_batch = next(iter(data.eval_batches(config, (16,), 0, 1)))
  assert eval_batch['mask'].all() and abs(eval_batch['images'][16][3].mean() - 150) < 3


def test_unprepared_tfds_data_raises_with_the_build_command(tmp_path):
  config = make_config(dataset='tfds', data_dir=str(tmp_path), tfds_name='imagenet2012')
  with pytest.raises(errors.DataError) as error:
    data.num_train_examples(config)
  message = first_line_only(error)
  assert 'tfds build imagenet2012' in message and '--file_format=array_record' in message
  assert str(tmp_path) in message


def test_tfds_data_without_random_access_raises(monkeypatch, tmp_path):
  import tensorflow_datasets as tfds
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir: FakeTfdsBuilder(random_access=False))
  with pytest.raises(errors.DataError) as error:
    data.num_train_examples(make_config(dataset='tfds', data_dir=str(tmp_path)))
  assert 'array_record' in first_line_only(error)


# -- the synthetic set ----------------------------------------------------------------------------

def test_synthetic_images_are_deterministic_and_distinct():
  a = synthetic.make_image(0, 'train', 5)
  np.testing.assert_array_equal(a, synthetic.make_image(0, 'train', 5))
  assert a.shape == (48, 48, 3) and a.dtype == np.uint8
  assert not np.array_equal(a, synthetic.make_image(0, 'val', 5))
  assert not np.array_equal(a, synthetic.make_image(0, 'train', 21))  # same class, new image
  assert synthetic.make_image(0, 'train', 5, size=64).shape == (64, 64, 3)


def test_synthetic_labels_are_balanced():
  source = synthetic.SyntheticSource(0, 'train', 160)
  counts = collections.Counter(source[i]['label'] for i in range(len(source)))
  assert counts == {k: 10 for k in range(synthetic.NUM_CLASSES)}


def test_synthetic_stripes_vanish_at_low_resolution():
  # Stripe energy (pixel spread inside the ellipse) of the striped classes over the plain ones:
  # strong in the 32 px eval view, gone in the 8 px one, where only the colour family is left.
  def spread(index, res):
    view = transforms.eval_view(Image.fromarray(synthetic.make_image(0, 'val', index)), res)
    centre = view[3 * res // 8: 5 * res // 8, 3 * res // 8: 5 * res // 8].astype(float)
    return (centre - centre.mean((0, 1))).std()

  def ratio(res):
    striped = [spread(i, res) for i in range(64) if synthetic.cues_of(synthetic.label_of(i))[1]]
    plain = [spread(i, res) for i in range(64) if not synthetic.cues_of(synthetic.label_of(i))[1]]
    return np.mean(striped) / np.mean(plain)

  assert ratio(32) > 8
  assert ratio(8) < 2


def test_decoded_source_feeds_the_pipeline_like_the_files(tmp_path):
  root = make_folder(tmp_path / 'photos', per_class=4)
  (root / 'train' / 'a' / 'broken.jpg').write_bytes(b'not a jpeg')
  config = make_config(dataset='folder', data_dir=str(root), batch_size=4, eval_batch_size=4,
                       resolutions=(24, 16))
  files = folder.FolderSource(str(root), 'train')
  decoded = data.DecodedSource(files, threads=2)
  assert len(decoded) == len(files) - 1 and decoded.skipped == 1
  assert decoded[0]['image'].dtype == np.uint8 and decoded[0]['image'].shape == (30, 40, 3)
  # The broken file aside, the same records in the same order: the same crops as from the files.
  good = [r for r in (files[i] for i in range(len(files))) if 'broken' not in r['name']]
  from_files = next(data.train_iterator(config, 0, 1, source=good))
  from_memory = next(data.train_iterator(config, 0, 1, source=decoded))
  np.testing.assert_array_equal(from_files['image'], from_memory['image'])
  np.testing.assert_array_equal(from_files['label'], from_memory['label'])
  val = data.DecodedSource(folder.FolderSource(str(root), 'val'))
  batches = list(data.eval_batches(config, (16,), 0, 1, source=val))
  assert sum(int(b['mask'].sum()) for b in batches) == 8
