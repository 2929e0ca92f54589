"""RS-MobileNetV2 on ImageNet, the paper's protocol (lr 0.05, wd 4e-5, 150 epochs, batch 256).

    python -m rsnets_jax.main --config=configs/mobilenet_v2.py --workdir=runs/rs_mobilenet_v2 \
        --config.data.data_dir=$TFDS_DATA_DIR
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.arch = 'mobilenet_v2'
  c.model.bn_group_size = 32
  c.optim.learning_rate = 0.05
  c.optim.weight_decay = 4e-5
  c.num_epochs = 150
  return c
