"""Every hyper-parameter with its default: the paper's RS-ResNet-18 protocol on ImageNet.

Config files in `configs/` start from `get_config()` and change what differs; the command line
changes single fields (`--config.data.batch_size=512`). Nothing is overridden by name in code.

Sections:
  model  the network: `RSNet(**config.model)`; a checkpoint stores it to rebuild the network
  data   where the images come from, the host pipeline, and the on-device augmentation
  optim  the optimiser and its learning-rate schedule
The top level holds the loss and the job: seed, length, logging, checkpoints, mode, processes.

`check(config)` says in one line what is wrong with a value, before any work starts; the network's
fields are checked by `RSNet` itself, the optimiser's by `steps.create_optimizer`.
"""
import ml_collections
from ml_collections.config_dict import placeholder

from rsnets_jax.errors import CheckpointError, ConfigError


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
  c.data.dataset = 'tfds'              # synthetic | folder | tfds; see rsnets_jax/data.py
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
  c.eval_dir = placeholder(str)        # mode=eval: reports go to <eval_dir>/<step>/ (None: <workdir>/eval)

  # Multi-host: jax.distributed.initialize(); on Cloud TPU and SLURM the rest is discovered.
  c.distributed = False
  c.coordinator_address = placeholder(str)
  c.num_processes = placeholder(int)
  c.process_id = placeholder(int)
  return c


def get_quantized_config() -> ml_collections.ConfigDict:
  """The quantized reference's protocol (../shared/docs/quantization.md, section 3), which the
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


MODES = ('train', 'eval')


def check(config: ml_collections.ConfigDict):
  """Raises a ConfigError naming the first field whose value cannot describe a run."""
  # pylint: disable-next=import-outside-toplevel
  from rsnets_jax import checkpoint, data, losses, preprocess, steps
  d = config.data
  rules = [
      ('data.batch_size', d.batch_size, d.batch_size >= 1, 'a positive number of images'),
      ('data.eval_batch_size', d.eval_batch_size, d.eval_batch_size >= 1,
       'a positive number of images'),
      ('data.crop_min_area', d.crop_min_area, 0 < d.crop_min_area <= 1, 'in (0, 1]'),
      ('data.num_workers', d.num_workers, d.num_workers >= 0, '0 (in the main process) or more'),
      ('data.read_threads', d.read_threads, d.read_threads >= 1, 'at least 1'),
      ('data.prefetch', d.prefetch, d.prefetch >= 1, 'at least 1'),
      ('data.flip', d.flip, d.flip in preprocess.FLIPS, f'one of {preprocess.FLIPS}'),
      ('data.view_resize', d.view_resize, d.view_resize in preprocess.VIEW_RESIZES,
       f'one of {preprocess.VIEW_RESIZES}'),
      ('data.lighting', d.lighting, d.lighting >= 0, '0 (off) or more'),
      ('data.train_crop', d.train_crop, d.train_crop in data.TRAIN_CROPS,
       f'one of {data.TRAIN_CROPS}'),
      ('data.interpolation', d.interpolation, d.interpolation in data.INTERPOLATIONS,
       f'one of {tuple(data.INTERPOLATIONS)}'),
      ('data.eval_view', d.eval_view, d.eval_view in data.EVAL_VIEWS, f'one of {data.EVAL_VIEWS}'),
      ('optim.schedule', config.optim.schedule, config.optim.schedule in steps.SCHEDULES,
       f'one of {steps.SCHEDULES}'),
      ('optim.weight_decay_on', config.optim.weight_decay_on,
       config.optim.weight_decay_on in steps.WEIGHT_DECAY_ON, f'one of {steps.WEIGHT_DECAY_ON}'),
      ('distillation', config.distillation, config.distillation in losses.DISTILLATION,
       f'one of {losses.DISTILLATION}'),
      ('num_epochs', config.num_epochs, config.num_epochs > 0, 'positive'),
      ('max_steps', config.max_steps, config.max_steps >= 0, '0 (num_epochs decides) or more'),
      ('log_every_steps', config.log_every_steps, config.log_every_steps >= 1, 'at least 1'),
      ('eval_every_epochs', config.eval_every_epochs, config.eval_every_epochs >= 0,
       '0 (only at the end) or more'),
      ('checkpoint_every_steps', config.checkpoint_every_steps,
       config.checkpoint_every_steps >= 1, 'at least 1'),
      ('checkpoint_keep', config.checkpoint_keep, config.checkpoint_keep >= 1, 'at least 1'),
      ('mode', config.mode, config.mode in MODES, f'one of {MODES}'),
  ]
  if d.dataset == 'synthetic':
    rules += [(f'data.{name}', d[name], d[name] >= 1, 'at least 1') for name in
              ('synthetic_train_size', 'synthetic_val_size', 'synthetic_image_size')]
  for name, value, ok, expected in rules:
    if not ok:
      raise ConfigError(f'config.{name} must be {expected}, got {value!r}')
  if (d.input_mean is None) != (d.input_std is None):
    raise ConfigError('give both data.input_mean and data.input_std, or neither')
  if d.input_std is not None and (len(d.input_mean) != 3 or len(d.input_std) != 3 or
                                  min(d.input_std) <= 0):
    raise ConfigError(f'data.input_mean and data.input_std must be 3 values (RGB), the std '
                      f'positive; got {tuple(d.input_mean)} and {tuple(d.input_std)}')
  try:
    checkpoint.parse_which(config.eval_checkpoint)
  except CheckpointError as e:
    raise ConfigError(f'config.eval_checkpoint: {e}') from e
