"""RS-ResNet-18 with 2-bit weights (LQ-Nets quantizers): the post-activation ResNet of the reference's `--mode resnet`.

    python -m rsnets_jax.main --config=configs/resnet18_w2a32.py --workdir=runs/rs_resnet18_w2a32 \
        --config.data.data_dir=$TFDS_DATA_DIR

The quantized reference's protocol: `rsnets_jax.defaults.get_quantized_config`. Paper top-1 at
224/192/160/128/96: 68.8 / 67.6 / 66.0 / 63.1 / 56.6.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_quantized_config()
  c.model.arch = 'lq_resnet18'
  c.model.weight_bits = 2
  c.model.activation_bits = 32
  return c
