"""RS-ResNet-50 on ImageNet, the paper's protocol (lr 0.1, wd 1e-4, 120 epochs, batch 256).

    python -m rsnets_jax.main --config=configs/resnet50.py --workdir=runs/rs_resnet50 \
        --config.data.data_dir=$TFDS_DATA_DIR
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.arch = 'resnet50'
  c.model.bn_group_size = 32
  return c
