"""The default run: needs no download and finishes in about two minutes on 2 CPU cores.

    python -m rsnets_jax.main --config=configs/default.py --workdir=runs/default

A narrow RS-ResNet-18 learns a generated data set (rsnets_jax/synthetic.py) whose classes depend on
fine stripes that vanish at low resolution, so the final table shows real learning and a real
accuracy-versus-cost trade-off across five resolutions, plus a checkpoint and the figure.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.dataset = 'synthetic'
  c.num_classes = 16
  c.synthetic_image_size = 48
  c.synthetic_train_size = 4096
  c.synthetic_val_size = 1024
  c.resolutions = (48, 40, 32, 24, 16)
  c.width = 0.25
  c.batch_size = 64
  c.eval_batch_size = 256
  c.num_epochs = 4
  c.learning_rate = 0.1
  c.weight_decay = 5e-5
  c.crop_min_area = 0.5
  c.num_workers = 0
  c.log_every_steps = 16
  c.eval_every_epochs = 0.0
  c.checkpoint_every_steps = 64
  return c
