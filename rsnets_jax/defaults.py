"""Every hyper-parameter with its default: the paper's RS-ResNet-18 protocol on ImageNet.

Config files in `configs/` start from `get_config()` and change what differs; the command line
changes single fields (`--config.data.batch_size=512`). Nothing is overridden by name in code.

Sections:
  model  the network: `RSNet(**config.model)`; a checkpoint stores it to rebuild the network
  data   where the images come from, the host pipeline, and the on-device augmentation
  optim  the optimiser and its learning-rate schedule
The top level holds the loss and the job: seed, length, logging, checkpoints, mode, processes.

`check(config)` says in one line what is wrong with a value, before any work starts, by asking the
code that owns each value; the network's fields are checked by `RSNet` itself.
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
  # LQ-Nets quantizers (1-4 bits, 32: off) on the lq_ networks; activations on lq_preact_ only.
  c.model.weight_bits = 32
  c.model.activation_bits = 32

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'tfds'              # synthetic | folder | tfds: a module each in rsnets_jax/data/
  c.data.data_dir = placeholder(str)   # local or gs:// path
  c.data.tfds_name = 'imagenet2012'
  c.data.train_split = placeholder(str)  # None: the source's usual name
  c.data.val_split = placeholder(str)
  c.data.batch_size = 256              # global, over every device of every host
  c.data.eval_batch_size = 256         # global
  c.data.crop_min_area = 0.08          # RandomResizedCrop area range (crop_min_area, 1)
  c.data.train_crop = 'random_resized'  # random_resized (torchvision) | googlenet (tensorpack)
  c.data.interpolation = 'bilinear'    # host resizes of the crops and eval views: | bicubic
  c.data.eval_view = 'per_resolution'  # | nearest_from_largest (the quantized reference's)
  c.data.num_workers = 8               # Grain worker processes per host (0: in the main process)
  c.data.read_threads = 16
  c.data.prefetch = 2                  # batches prefetched per worker
  c.data.synthetic_train_size = 8192
  c.data.synthetic_val_size = 2048
  c.data.synthetic_image_size = 64
  # On device: [0, 1] RGB like the reference; set both mean and std to normalise.
  c.data.flip = 'per_resolution'       # per_resolution | shared | none
  c.data.view_resize = 'antialiased_bilinear'  # smaller views from the crop: | nearest_tf1
  c.data.lighting = 0.0                # PCA lighting standard deviation (0: off)
  c.data.input_mean = placeholder(tuple)
  c.data.input_std = placeholder(tuple)

  # SGD as the reference: coupled weight decay on every parameter, per-step cosine to zero.
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 0.1
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_on = 'all'      # all | kernels (conv and classifier kernels only)
  c.optim.warmup_epochs = 0.0
  c.optim.schedule = 'cosine'          # cosine | steps (x decay_factor at each of decay_epochs)
  c.optim.decay_epochs = (30, 60, 85, 95, 105)
  c.optim.decay_factor = 0.1
  # Quantized networks: update the activation bases from the largest resolution only (the
  # reference's --fixed_qa) instead of once per resolution.
  c.optim.refit_activations_from_largest_only = False

  c.distillation = 'ens_topdown'       # none | ens | ens_topdown (the published models)
  # Sizes strictly between the smallest and largest resolution, one drawn per step and trained as
  # an added size (train/step.py; not the paper's recipe). (): off.
  c.between_resolutions = ()
  c.num_epochs = 120
  c.seed = 0                           # initial weights, data order, crops and flips

  # Job.
  c.mode = 'train'                     # train | eval (evaluate the workdir's checkpoint)
  c.max_steps = 0                      # 0: num_epochs decides; else stop after this many steps
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0            # 0: only at the end
  c.checkpoint_every_steps = 1000
  c.checkpoint_keep = 3                # the last N, plus the best by the largest resolution's top-1
  c.eval_checkpoint = 'latest'         # latest | best | a step number, for mode=eval
  c.eval_dir = placeholder(str)        # mode=eval: reports in <eval_dir>/<step>/ (None: <workdir>/eval)

  # Multi-host: jax.distributed.initialize(); on Cloud TPU and SLURM the rest is discovered.
  c.distributed = False
  c.coordinator_address = placeholder(str)
  c.num_processes = placeholder(int)
  c.process_id = placeholder(int)
  return c


def get_quantized_config() -> ml_collections.ConfigDict:
  """The quantized reference's protocol (docs/quantization.md, section 3), which the
  configs/*_w2a*.py files start from and give their network and bit widths: Nesterov SGD, lr 0.1
  x0.1 at epochs 30/60/85/95/105 of 120, weight decay 5e-5 on kernels only, tensorpack's crop
  (bicubic) with PCA lighting and one flip, ImageNet mean/std, the smaller views by TF1's
  nearest-neighbour resize of the 224 crop, evaluation 256 -> centre 224 -> nearest to each size.
  BatchNorm and the quantizers' refits use the global batch (the reference, each GPU's share)."""
  c = get_config()
  c.model.arch = 'lq_resnet18'
  c.model.weight_bits = 2
  c.optim.nesterov = True
  c.optim.schedule = 'steps'           # lr 0.1, x0.1 at epochs 30, 60, 85, 95, 105 of 120
  c.optim.weight_decay = 5e-5
  c.optim.weight_decay_on = 'kernels'  # conv and classifier kernels: not BN, alpha, quantizers
  c.data.train_crop = 'googlenet'
  c.data.interpolation = 'bicubic'
  c.data.lighting = 0.1
  c.data.flip = 'shared'               # one flip of the 224 crop, which every view is taken from
  c.data.view_resize = 'nearest_tf1'
  c.data.eval_view = 'nearest_from_largest'
  c.data.input_mean = (0.485, 0.456, 0.406)
  c.data.input_std = (0.229, 0.224, 0.225)
  return c


def check(config: ml_collections.ConfigDict):
  """Raises a one-line ConfigError (or DataError) naming the first field whose value cannot
  describe a run, before any work. Each rule lives with the code that owns the value."""
  # pylint: disable-next=import-outside-toplevel
  from rsnets_jax import data
  from rsnets_jax.train import loop, losses, optim, step  # pylint: disable=import-outside-toplevel
  data.check_config(config.data)
  optim.check_config(config.optim)
  losses.check_config(config.distillation)
  step.check_config(config)
  loop.check_config(config)
