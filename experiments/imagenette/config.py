"""Imagenette: RS-ResNet-18 against individually trained networks, one recipe for every row.

    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:gpu
    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:cpu
    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:smoke

The argument after ':' picks the variant; any field can still be changed on the command line
(`--config.num_epochs=16`). Within a variant every row (the individually trained networks and the
four RS-Nets) has the same data, schedule, augmentation and evaluation; the variants differ only in
size:

  gpu    full-width ResNet-18, resolutions 128/112/96/80/64, bfloat16, sized for about 8 minutes on
         one H100 including compilation.
  cpu    width 0.125 and every resolution halved (64/56/48/40/32, the same ratios), float32: the 15
         trainings fit in about half an hour on 2 CPU cores. Full-size resolutions are about 4x
         slower per image there and do not fit (see experiments/imagenette/README.md).
  smoke  the cpu network on a class-balanced subset for one epoch: a few minutes, to check that the
         whole runner works end to end. Its numbers mean nothing.
"""
import ml_collections

from rsnets_jax import defaults

VARIANTS = ('gpu', 'cpu', 'smoke')


def get_config(variant: str = 'cpu') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose one of {VARIANTS}')
  c = defaults.get_config()
  c.variant = variant

  # Data: the folder tree beside the checkout, decoded once into memory.
  c.dataset = 'folder'
  c.data_dir = '../shared/datasets/imagenette-128'
  c.num_classes = 10
  c.train_subset = 0            # 0: every image; else a class-balanced subset of this many
  c.val_subset = 0
  c.decode_threads = 0          # 0: one per CPU core

  # The recipe, the same for every row (README.md gives the reasons).
  c.arch = 'resnet18'
  c.batch_size = 128
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.crop_min_area = 0.35
  c.flip = 'per_resolution'
  c.eval_batch_size = 256
  c.seed = 0                    # the key of the step's flips (baked into the compiled step)

  # Rows and their seeds; a row with no seeds is skipped. 'inets' trains one network per
  # resolution; the largest of them is also tested at every other resolution.
  c.seeds = ml_collections.ConfigDict({'inets': (0, 1), 'shared_bn': (0,), 'private_bn': (0,),
                                       'ens': (0,), 'ens_topdown': (0, 1)})

  c.compilation_cache_dir = 'runs/jax_cache'  # '' turns the persistent cache off

  if variant == 'gpu':
    c.width = 1.0
    c.resolutions = (128, 112, 96, 80, 64)
    c.dtype = 'bfloat16'
    c.num_epochs = 12
    c.warmup_epochs = 1.0
    c.eval_batch_size = 512
  else:
    c.width = 0.125
    c.resolutions = (64, 56, 48, 40, 32)
    c.dtype = 'float32'
    c.num_epochs = 3
    c.warmup_epochs = 0.5
  if variant == 'smoke':
    c.num_epochs = 1
    c.warmup_epochs = 0.0
    c.train_subset = 512
    c.val_subset = 500
  return c
