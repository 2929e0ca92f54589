"""RS-ResNet-18 on Imagenette (10 ImageNet classes, 128 px), resolutions 128/112/96/80/64.

    python -m rsnets_jax.main --config=configs/imagenette.py --workdir=runs/imagenette \
        --config.data_dir=../shared/datasets/imagenette-128

Minutes on one GPU. Images are 128x128, so evaluation resizes to int(s / 0.875) then centre-crops
s (146 -> 128 for the largest resolution), exactly as on ImageNet.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset = 'folder'
  c.data_dir = '../shared/datasets/imagenette-128'
  c.num_classes = 10
  c.resolutions = (128, 112, 96, 80, 64)
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_epochs = 30
  c.learning_rate = 0.1
  c.weight_decay = 5e-4
  c.warmup_epochs = 1.0
  c.crop_min_area = 0.35
  c.num_workers = 4
  c.log_every_steps = 20
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 200
  return c
