"""RS-ResNet-18 on ImageNet, the paper's protocol (224/192/160/128/96, full distillation).

    python -m rsnets_jax.main --config=configs/resnet18.py --workdir=runs/rs_resnet18 \
        --config.data.data_dir=$TFDS_DATA_DIR

Batch 256 with lr 0.1, wd 1e-4, 120 epochs, per-step cosine, SGD momentum 0.9, float32, [0, 1]
RGB input. `bn_group_size=32` reproduces the reference's per-GPU BatchNorm (8 GPUs x 32 images);
remove it to use the global batch's statistics.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.arch = 'resnet18'
  c.model.bn_group_size = 32
  return c
