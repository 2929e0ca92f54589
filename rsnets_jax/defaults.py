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

  # Data (host): see rsnets_jax/data.py. 'tfds' reads ImageNet prepared once as array_record.
  c.dataset = 'tfds'            # synthetic | folder | tfds
  c.data_dir = ml_collections.config_dict.placeholder(str)  # local or gs:// path
  c.tfds_name = 'imagenet2012'
  c.train_split = ml_collections.config_dict.placeholder(str)  # None: the source's usual name
  c.val_split = ml_collections.config_dict.placeholder(str)
  c.crop_min_area = 0.08        # RandomResizedCrop area range (crop_min_area, 1)
  c.eval_batch_size = 256       # global
  c.num_workers = 8             # Grain worker processes per host (0: in the main process)
  c.read_threads = 16
  c.prefetch = 2                # batches prefetched per worker
  c.synthetic_train_size = 8192
  c.synthetic_val_size = 2048
  c.synthetic_image_size = 64

  # Input (on device): [0, 1] RGB like the reference; set both to normalise.
  c.flip = 'per_resolution'     # per_resolution | shared | none
  c.input_mean = ml_collections.config_dict.placeholder(tuple)
  c.input_std = ml_collections.config_dict.placeholder(tuple)

  c.seed = 0

  # Job.
  c.mode = 'train'              # train | eval (evaluate the workdir's checkpoint)
  c.max_steps = 0               # 0: num_epochs decides; else stop after this many steps
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0     # 0: only at the end
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 3         # the last N, plus the best by the largest resolution's top-1
  c.eval_checkpoint = 'latest'  # latest | best, for mode=eval

  # Multi-host: jax.distributed.initialize(); on Cloud TPU and SLURM the rest is discovered.
  c.distributed = False
  c.coordinator_address = ml_collections.config_dict.placeholder(str)
  c.num_processes = ml_collections.config_dict.placeholder(int)
  c.process_id = ml_collections.config_dict.placeholder(int)
  return c
