"""RS-ResNet-50 with 2-bit weights and activations (LQ-Nets quantizers): the pre-activation ResNet of the reference's `--mode preact --qa 2`.

    python -m rsnets_jax.main --config=configs/resnet50_w2a2.py --workdir=runs/rs_resnet50_w2a2 \
        --config.data.data_dir=$TFDS_DATA_DIR

The quantized reference's protocol: `rsnets_jax.defaults.get_quantized_config`. Paper top-1 at
224/192/160/128/96: 74.0 / 73.1 / 71.4 / 68.9 / 63.4.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_quantized_config()
  c.model.arch = 'lq_preact_resnet50'
  c.model.weight_bits = 2
  c.model.activation_bits = 2
  return c
