"""Every hyper-parameter with its default: the paper's RS-ResNet-18 protocol on ImageNet.

Config files in `configs/` start from `get_config()` and change what differs; the command line
changes single fields (`--config.data.batch_size=512`). Nothing is overridden by name in code.

Sections:
  model  the network: `RSNet(**config.model)`; a checkpoint stores it to rebuild the network
  data   where the images come from, the host pipeline, and the on-device augmentation
  optim  the optimiser and its learning-rate schedule
The top level holds the loss and the job: seed, length, logging, checkpoints, mode, processes.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'resnet18'            # resnet18 | resnet34 | resnet50 | mobilenet_v2
  c.model.resolutions = (224, 192, 160, 128, 96)  # largest first; the i-th BatchNorm is the i-th
  c.model.num_classes = 1000
  c.model.width = 1.0                  # channel multiplier; 1.0 is the paper's network
  c.model.shared_bn = False            # True: one BatchNorm for every resolution (ablation)
  c.model.bn_group_size = placeholder(int)  # None: statistics over the global batch
  c.model.dtype = 'float32'            # compute dtype; parameters stay float32

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'tfds'              # synthetic | folder | tfds; see rsnets_jax/data.py
  c.data.data_dir = placeholder(str)   # local or gs:// path
  c.data.tfds_name = 'imagenet2012'
  c.data.train_split = placeholder(str)  # None: the source's usual name
  c.data.val_split = placeholder(str)
  c.data.batch_size = 256              # global, over every device of every host
  c.data.eval_batch_size = 256         # global
  c.data.crop_min_area = 0.08          # RandomResizedCrop area range (crop_min_area, 1)
  c.data.num_workers = 8               # Grain worker processes per host (0: in the main process)
  c.data.read_threads = 16
  c.data.prefetch = 2                  # batches prefetched per worker
  c.data.synthetic_train_size = 8192
  c.data.synthetic_val_size = 2048
  c.data.synthetic_image_size = 64
  # On device: [0, 1] RGB like the reference; set both mean and std to normalise.
  c.data.flip = 'per_resolution'       # per_resolution | shared | none
  c.data.input_mean = placeholder(tuple)
  c.data.input_std = placeholder(tuple)

  # SGD as the reference: coupled weight decay on every parameter, per-step cosine to zero.
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 0.0

  c.distillation = 'ens_topdown'       # none | ens | ens_topdown (the published models)
  c.num_epochs = 120
  c.seed = 0                           # initial weights, data order, crops and flips

  # Job.
  c.mode = 'train'                     # train | eval (evaluate the workdir's checkpoint)
  c.max_steps = 0                      # 0: num_epochs decides; else stop after this many steps
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0            # 0: only at the end
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 3                # the last N, plus the best by the largest resolution's top-1
  c.eval_checkpoint = 'latest'         # latest | best, for mode=eval

  # Multi-host: jax.distributed.initialize(); on Cloud TPU and SLURM the rest is discovered.
  c.distributed = False
  c.coordinator_address = placeholder(str)
  c.num_processes = placeholder(int)
  c.process_id = placeholder(int)
  return c
