"""Every hyper-parameter with its default: the paper's RS-ResNet-18 protocol on ImageNet.

Config files in `configs/` start from `get_config()` and change what differs; the command line
changes single fields (`--config.batch_size=512`). Nothing is overridden by name in code.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Model.
  c.arch = 'resnet18'           # resnet18 | resnet34 | resnet50 | mobilenet_v2
  c.width = 1.0                 # channel multiplier; 1.0 is the paper's network
  c.num_classes = 1000
  c.resolutions = (224, 192, 160, 128, 96)  # largest first; the i-th BatchNorm is the i-th size
  c.shared_bn = False           # True: one BatchNorm for every resolution (ablation)
  c.bn_group_size = ml_collections.config_dict.placeholder(int)  # None: statistics over the global batch
  c.dtype = 'float32'           # compute dtype; parameters stay float32

  # Loss.
  c.distillation = 'ens_topdown'  # none | ens | ens_topdown (the published models)

  # Optimiser: SGD, coupled weight decay on every parameter, per-step cosine.
  c.batch_size = 256            # global, over every device of every host
  c.num_epochs = 120
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.warmup_epochs = 0.0

  # Input (on device): [0, 1] RGB like the reference; set both to normalise.
  c.flip = 'per_resolution'     # per_resolution | shared | none
  c.input_mean = ml_collections.config_dict.placeholder(tuple)
  c.input_std = ml_collections.config_dict.placeholder(tuple)

  c.seed = 0
  return c
