"""RS-ResNet-18 on Imagenette (10 ImageNet classes), resolutions 128/112/96/80/64.

    pip install -e '.[prepare]' && tfds build imagenette/160px-v2 --file_format=array_record
    python -m rsnets_jax.main --config=configs/imagenette.py --workdir=runs/imagenette

reads Imagenette from tensorflow-datasets (its 160 px release, downloaded by `tfds build`). Class
folders (`DIR/train/<class>/*.jpg`, `DIR/val/<class>/*.jpg`, e.g. https://github.com/fastai/imagenette
unpacked) instead:

    python -m rsnets_jax.main --config=configs/imagenette.py --workdir=runs/imagenette \
        --config.data.dataset=folder --config.data.data_dir=DIR

Minutes on one GPU. Evaluation resizes to int(s / 0.875) then centre-crops s (146 -> 128 for the
largest resolution), exactly as on ImageNet.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.resolutions = (128, 112, 96, 80, 64)
  c.model.num_classes = 10
  c.data.dataset = 'tfds'
  c.data.tfds_name = 'imagenette/160px-v2'
  c.data.batch_size = 128
  c.data.eval_batch_size = 256
  # Images of 128-160 px: the paper's 0.08 would leave crops of about 36 px.
  c.data.crop_min_area = 0.35
  c.data.num_workers = 4
  c.optim.learning_rate = 0.1
  # 9,469 training images overfit more easily than ImageNet's 1.28 M.
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  c.num_epochs = 30
  c.log_every_steps = 20
  c.eval_every_epochs = 5.0
  c.checkpoint_every_steps = 200
  return c
