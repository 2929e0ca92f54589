"""RS-ResNet-34 on ImageNet with the ResNet protocol of the paper (not published by the authors).

    python -m rsnets_jax.main --config=configs/resnet34.py --workdir=runs/rs_resnet34 \
        --config.data.data_dir=$TFDS_DATA_DIR
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.arch = 'resnet34'
  c.model.bn_group_size = 32
  return c
