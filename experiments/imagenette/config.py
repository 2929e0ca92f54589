"""Imagenette: RS-ResNet-18 against individually trained networks, one recipe for every row.

    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:cpu \
        --config.data.data_dir=DIR

DIR holds the photos as class folders (DIR/train/<class>/*, DIR/val/<class>/*): Imagenette from
https://github.com/fastai/imagenette (the results here used a 128 px copy).

The argument after ':' picks the variant; any field can still be changed on the command line
(`--config.num_epochs=16`). Within a variant every row (the individually trained networks and the
four RS-Nets) has the same data, schedule, augmentation and evaluation; the variants differ only in
size:

  gpu    full-width ResNet-18, resolutions 128/112/96/80/64, bfloat16, sized for about 8 minutes on
         one H100 including compilation.
  cpu    width 0.125 and every resolution halved (64/56/48/40/32, the same ratios), float32: the 15
         trainings fit in about half an hour on 2 CPU cores. Full-size resolutions are about 4x
         slower per image there and do not fit (see experiments/imagenette/README.md).
  cpu_long  the cpu network and resolutions for 16 epochs (1 of warm-up), every row and the two
         loss-averaging controls, 3 seeds (2 for shared BN and the private-BN control): a regime
         where accuracy depends on resolution (the 3-epoch cpu variant is too short for that),
         about 2 hours on 2 CPU cores.
  cpu_tuned  cpu_long's recipe for the headline claim against a tuned baseline: the individual
         networks at 1x, 2x and 5x the learning rate (3 seeds; 5 at 1x) and the RS-Net (5 seeds),
         3.4 hours of trainings on 2 CPU cores shared with other work (2026-12-04).
  cpu_between  cpu_long's recipe: the RS-Net that also trains the sizes between its resolutions
         (one drawn per step), against the RS-Net, 3 seeds (issue 21).
  smoke  the cpu network on a class-balanced subset for one epoch: a few minutes, to check that the
         whole runner works end to end. Its numbers mean nothing.
"""
import importlib.util
import os

import ml_collections

VARIANTS = ('gpu', 'cpu', 'cpu_long', 'cpu_tuned', 'cpu_between', 'smoke')
PRODUCT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'configs',
                              'imagenette.py')


def imagenette_recipe() -> ml_collections.ConfigDict:
  """configs/imagenette.py: the product's Imagenette recipe (data, classes, optimiser, crops),
  which every row of the comparison shares."""
  spec = importlib.util.spec_from_file_location('imagenette_recipe', PRODUCT_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(variant: str = 'cpu') -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; choose one of {VARIANTS}')
  c = imagenette_recipe()
  c.variant = variant
  # The photos as class folders, given on the command line: --config.data.data_dir=DIR with
  # DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG (https://github.com/fastai/imagenette;
  # the results here used a 128 px copy, e.g. DIR=../shared/datasets/imagenette-128 on this
  # project's machines).
  c.data.dataset = 'folder'
  c.data.data_dir = None
  c.data.num_workers = 0        # the decoded images stay in this process

  # Each row is a run of the product's loop; these are its job settings.
  c.log_every_steps = 50
  c.eval_every_epochs = 0.0     # only at the end
  c.checkpoint_every_steps = 200
  c.checkpoint_keep = 1

  # What the driver reads.
  c.train_subset = 0            # 0: every image; else a class-balanced subset of this many
  c.val_subset = 0
  # Rows and their seeds; a row with no seeds is skipped. 'inets' trains one network per
  # resolution; the largest of them is also tested at every other resolution.
  c.seeds = ml_collections.ConfigDict({'inets': (0, 1), 'inets_lr2': (), 'inets_lr5': (),
                                       'shared_bn': (0,), 'private_bn': (0,),
                                       'ens': (0,), 'ens_topdown': (0, 1), 'mean_loss': (),
                                       'between': (), 'private_bn_mean_loss': (), 'lq_fp': (),
                                       'w2a32': (), 'w2a2': ()})
  c.compilation_cache_dir = 'runs/jax_cache'  # '' turns the persistent cache off

  if variant == 'gpu':  # the recipe's network and resolutions
    c.model.dtype = 'bfloat16'
    c.num_epochs = 12
    c.data.eval_batch_size = 512
  else:
    c.model.width = 0.125
    c.model.resolutions = (64, 56, 48, 40, 32)
    c.data.read_threads = 2       # decoding, crops and eval views on this machine's cores
    c.num_epochs = 3
    c.optim.warmup_epochs = 0.5
  if variant == 'cpu_long':
    c.num_epochs = 16
    c.optim.warmup_epochs = 1.0
    c.seeds.update({'inets': (0, 1, 2), 'shared_bn': (0, 1), 'private_bn': (0, 1, 2),
                    'ens': (0, 1, 2), 'ens_topdown': (0, 1, 2), 'mean_loss': (0, 1, 2),
                    'private_bn_mean_loss': (0, 1)})
  if variant == 'cpu_tuned':  # cpu_long's recipe: the tuned baseline and five seeds
    c.num_epochs = 16
    c.optim.warmup_epochs = 1.0
    c.seeds.update({'inets': (0, 1, 2, 3, 4), 'inets_lr2': (0, 1, 2), 'inets_lr5': (0, 1, 2),
                    'shared_bn': (), 'private_bn': (), 'ens': (), 'ens_topdown': (0, 1, 2, 3, 4)})
  if variant == 'cpu_between':  # cpu_long's recipe: the between-size RS-Net against the RS-Net
    c.num_epochs = 16
    c.optim.warmup_epochs = 1.0
    c.seeds.update({'inets': (), 'shared_bn': (), 'private_bn': (), 'ens': (),
                    'ens_topdown': (0, 1, 2), 'between': (0, 1, 2)})
  if variant == 'smoke':
    c.num_epochs = 1
    c.optim.warmup_epochs = 0.0
    c.train_subset = 512
    c.val_subset = 500
  return c
