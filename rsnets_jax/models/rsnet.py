"""An RS-Net, functionally: `params, stats = net.init(key)`; `net.apply(params, stats[r], x)`.

`params` is shared by every resolution (convolutions, classifier, each resolution's BatchNorm
affine, ensemble weights `alpha`). `stats[r]`, resolution r's BatchNorm running statistics, holds
r as the leaf `stats[r]['resolution']`: a wrong-size input is caught, not given wrong logits.

`extra_resolutions` (BatchNorm added after training, `rsnets_jax.add_resolution`) run but have no
`alpha` and no part in training or the ensemble; `all_resolutions` lists both kinds.

`added_padding` says what an added size's strided convolutions see past an odd input. 'zeros' (as
a trained size would): zero padding enters their last window. 'edge': a strided convolution whose
input is even at every training resolution gets an odd input made even by repeating its last row
and column first, so its last window sees image content there, as in training (measured in
experiments/imagenette/RESULTS.md, "Resolutions between the trained ones").
"""
import contextlib
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.errors import ConfigError
from rsnets_jax.models import architecture, quantizers
from rsnets_jax.models.batchnorm import BATCH_MOMENTS
from rsnets_jax.models.conv import Conv
from rsnets_jax.models.quantizers import QUANTIZER_TARGETS, QUANTIZERS

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
RESOLUTION_KEY = 'resolution'
ADDED_PADDINGS = ('zeros', 'edge')


@dataclasses.dataclass(frozen=True)
class RSNet:
  """An RS-Net: an architecture, its training resolutions (largest first) and its options."""
  arch: str
  resolutions: Tuple[int, ...]
  num_classes: int = 1000
  width: float = 1.0
  shared_bn: bool = False
  bn_group_size: Optional[int] = None
  dtype: str = 'float32'
  weight_bits: int = quantizers.FULL_PRECISION
  activation_bits: int = quantizers.FULL_PRECISION
  extra_resolutions: Tuple[int, ...] = ()
  added_padding: str = 'zeros'

  def __post_init__(self):
    spec = architecture.get(self.arch)
    res = tuple(int(r) for r in self.resolutions)
    if not res or list(res) != sorted(set(res), reverse=True):
      raise ConfigError(f'resolutions must be distinct and largest first, got {self.resolutions}')
    if res[-1] <= 0:
      raise ConfigError(f'resolutions must be positive, got {self.resolutions}')
    if self.num_classes < 1:
      raise ConfigError(f'num_classes must be at least 1, got {self.num_classes}')
    if self.width <= 0:
      raise ConfigError(f'width must be positive, got {self.width}')
    if self.bn_group_size is not None and self.bn_group_size < 1:
      raise ConfigError(f'bn_group_size must be None (the global batch) or at least 1, got '
                        f'{self.bn_group_size}')
    object.__setattr__(self, 'resolutions', res)
    extra = tuple(int(r) for r in self.extra_resolutions)
    if len(set(extra)) != len(extra) or set(extra) & set(res) or any(r <= 0 for r in extra):
      raise ConfigError(f'extra_resolutions must be distinct, positive and not training '
                       f'resolutions, got {self.extra_resolutions} with resolutions {res}')
    object.__setattr__(self, 'extra_resolutions', tuple(sorted(extra, reverse=True)))
    if self.added_padding not in ADDED_PADDINGS:
      raise ConfigError(f'added_padding must be one of {ADDED_PADDINGS}, got '
                        f'{self.added_padding!r}')
    if self.dtype not in DTYPES:
      raise ConfigError(f'dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}')
    if quantizers.quantized(self.weight_bits) and not spec.quantizes_weights:
      raise ConfigError(f'weight_bits={self.weight_bits} needs a network with weight quantizers '
                        f'{_supporting("quantizes_weights")}, not {self.arch!r}')
    if quantizers.quantized(self.activation_bits) and not spec.quantizes_activations:
      raise ConfigError(f'activation_bits={self.activation_bits} needs a network with activation '
                        f'quantizers {_supporting("quantizes_activations")}, not {self.arch!r}')

  @property
  def all_resolutions(self) -> Tuple[int, ...]:
    """Every resolution the network runs at, trained or added, largest first."""
    return tuple(sorted(self.resolutions + self.extra_resolutions, reverse=True))

  @property
  def quantized(self) -> bool:
    """Whether the network has learned quantizers (their state is `params['quantizers']`)."""
    return (quantizers.quantized(self.weight_bits) or
            quantizers.quantized(self.activation_bits))

  @property
  def module(self) -> nn.Module:
    return architecture.get(self.arch).build(
        width=self.width, weight_bits=self.weight_bits, activation_bits=self.activation_bits,
        resolutions=self.resolutions, num_classes=self.num_classes, shared_bn=self.shared_bn,
        bn_group_size=self.bn_group_size, dtype=DTYPES[self.dtype],
        extra_resolutions=self.extra_resolutions)

  def padding_at(self, res: int):
    """The context in which the module runs at `res`: at an added size with
    `added_padding='edge'`, the strided convolutions of `_evened_convolutions` get an odd input
    made even by repeating its last row and column (`even_by_edge`); elsewhere nothing changes."""
    if self.added_padding != 'edge' or res in self.resolutions:
      return contextlib.nullcontext()
    paths = _evened_convolutions(self)

    def pad(next_fun, args, kwargs, context):
      if (context.method_name == '__call__' and isinstance(context.module, Conv) and
          tuple(context.module.path) in paths):
        args = (even_by_edge(args[0]), *args[1:])
      return next_fun(*args, **kwargs)
    return nn.intercept_methods(pad)

  def config(self) -> Dict[str, Any]:
    """Everything needed to rebuild this network (stored beside checkpoints)."""
    return dataclasses.asdict(self)

  # -- functional API ---------------------------------------------------------------------------

  def init(self, rng) -> Tuple[Any, Dict[int, Any]]:
    init = jax.jit(self._init_variables).lower(rng)
    # Init runs once: on CPU, optimising its random-number code costs more than running it.
    options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
    variables = init.compile(compiler_options=options)(rng)
    # A copy per resolution: the trees must not share buffers (they are donated to the train step).
    return _params(variables), {r: self._tag(jax.tree.map(jnp.copy, variables['batch_stats']), r)
                                for r in self.all_resolutions}

  def init_shapes(self) -> Tuple[Any, Dict[int, Any]]:
    """`init`'s output as shapes and dtypes, computing nothing."""
    variables = jax.eval_shape(self._init_variables, jax.random.key(0))
    tag = jax.ShapeDtypeStruct((), jnp.int32)
    return _params(variables), {r: {RESOLUTION_KEY: tag, **variables['batch_stats']}
                                for r in self.all_resolutions}

  def _init_variables(self, rng):
    res = min(self.resolutions)  # parameter shapes do not depend on the resolution
    return self.module.init(rng, jnp.zeros((1, res, res, 3), jnp.float32))

  @staticmethod
  def _tag(batch_stats, res: int):
    return {RESOLUTION_KEY: jnp.int32(res), **batch_stats}

  def apply(self, params, stats, x, train: bool = False):
    """Logits of `x` (N, r, r, 3) with `stats` = stats[r]. `train=True`: batch statistics, returns
    (logits, updated stats); quantizers are not updated (see `forward`, `update_quantizers`)."""
    res = self.resolution_of(x)
    out = self.forward(params, self.check_stats(stats, res), x, train)
    logits = out[0] if train else out
    # Under jit the tag is traced and cannot raise; a mismatch then yields NaN, never plausible logits.
    tag = stats[RESOLUTION_KEY]
    if isinstance(tag, jax.core.Tracer):
      logits = jnp.where(tag == res, logits, jnp.nan)
    if train:
      return logits, {RESOLUTION_KEY: tag, **out[1]}
    return logits

  def forward(self, params, batch_stats, x, train: bool = False):
    """`apply` on untagged statistics. `train=True`: (logits, updated statistics, quantizer refit
    targets; {} for a full-precision network)."""
    variables = {**_variables(params), 'batch_stats': batch_stats}
    with self.padding_at(x.shape[1]):
      if train:
        logits, updated = self.module.apply(variables, x, train=True,
                                            mutable=['batch_stats', QUANTIZER_TARGETS])
        return logits, updated['batch_stats'], updated.get(QUANTIZER_TARGETS, {})
      return self.module.apply(variables, x)

  def update_quantizers(self, params, targets_by_resolution, activations_from_largest_only=False):
    """`params` with the quantizers moved by `forward(train=True)`'s targets, one update per
    resolution (quantizers.fold_targets); unchanged for a full-precision network."""
    if QUANTIZERS not in params:
      return params
    states = quantizers.fold_targets(params[QUANTIZERS], targets_by_resolution,
                                     activations_from_largest_only)
    return {**params, QUANTIZERS: states}

  def batch_moments(self, params, x):
    """Every BatchNorm's train-mode batch mean and unbiased variance of `x` (N, r, r, 3), shaped
    like the untagged `stats[r]` (what recalibration averages)."""
    self.resolution_of(x)
    # The running statistics are created (and discarded): train mode never reads them.
    with self.padding_at(x.shape[1]):
      _, variables = self.module.apply(_variables(params), x, train=True,
                                       mutable=['batch_stats', BATCH_MOMENTS])
    return variables[BATCH_MOMENTS]

  def resolution_of(self, x) -> int:
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[3] != 3:
      raise ValueError(f'expected images (N, r, r, 3) in NHWC, got shape {tuple(x.shape)}')
    # uint8 pixels would run as values up to 255, 255 times the [0, 1] the network learned on.
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'expected float images in [0, 1], got {x.dtype}: pass x / 255 as float32')
    res = int(x.shape[1])
    if res not in self.all_resolutions:
      raise ValueError(f'this network has BatchNorm for resolutions {self.all_resolutions}, not '
                       f'{res}; rsnets_jax.add_resolution (python -m rsnets_jax.add_resolutions) '
                       f'adds one')
    return res

  @staticmethod
  def check_stats(stats, res: int):
    """The untagged BatchNorm statistics of `stats`, after checking they belong to `res`."""
    if not isinstance(stats, dict) or RESOLUTION_KEY not in stats:
      raise ValueError('stats must be one resolution\'s tree, stats[r] from net.init or rsnets_jax.load')
    tag = stats[RESOLUTION_KEY]
    if not isinstance(tag, jax.core.Tracer) and int(np.asarray(tag)) != res:
      raise ValueError(f'stats are for resolution {int(np.asarray(tag))} but the input is {res}x{res}; '
                       f'pass stats[{res}]')
    return {k: v for k, v in stats.items() if k != RESOLUTION_KEY}

  def macs(self, res: int) -> int:
    """Multiply-accumulates of one image at `res` (convolutions and classifier, as the paper)."""
    return _macs(self, int(res))


def _supporting(capability: str):
  return tuple(name for name, spec in architecture.ARCHITECTURES.items()
               if getattr(spec, capability))


def _params(variables):
  """Flax variables as `params`: the parameters, with the quantizers' state as 'quantizers'."""
  if QUANTIZERS in variables:
    return {**variables['params'], QUANTIZERS: variables[QUANTIZERS]}
  return variables['params']


def trainable(params):
  """What the optimiser updates: all but the quantizer state (moved by its own least-squares
  refit, never by gradients or weight decay)."""
  return {k: v for k, v in params.items() if k != QUANTIZERS}


def _variables(params):
  """`_params` undone: the Flax variables of a `params` tree (without BatchNorm statistics)."""
  if QUANTIZERS in params:
    return {'params': trainable(params), QUANTIZERS: params[QUANTIZERS]}
  return {'params': params}


@functools.lru_cache(maxsize=256)
def _macs(net: RSNet, res: int) -> int:
  # Counting traces the network; every report asks again for the same numbers.
  with net.padding_at(res):
    return count_macs(net.module, res)


def even_by_edge(x):
  """NHWC `x` with an odd height or width made even by repeating its last row or column."""
  for axis in (1, 2):
    if x.shape[axis] % 2:
      last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
      x = jnp.concatenate([x, last], axis=axis)
  return x


def strided_inputs(net: RSNet, res: int) -> Dict[Tuple[str, ...], int]:
  """{path of each strided convolution: the height of its input} at `res`, by tracing."""
  sizes = {}

  def record(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == '__call__' and isinstance(mod, Conv) and mod.strides > 1:
      sizes[tuple(mod.path)] = args[0].shape[1]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: net.module.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32))
  return sizes


@functools.lru_cache(maxsize=64)
def _evened_convolutions(net: RSNet) -> Tuple[Tuple[str, ...], ...]:
  """The strided convolutions whose input is even at every training resolution."""
  per_res = [strided_inputs(net, r) for r in net.resolutions]
  return tuple(sorted(p for p in per_res[0] if all(s[p] % 2 == 0 for s in per_res)))


def count_macs(module: nn.Module, res: int) -> int:
  total = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name == '__call__' and isinstance(mod, (Conv, nn.Dense)):
      x = args[0]
      if isinstance(mod, Conv):
        k = mod.kernel_size**2
        total.append(int(np.prod(out.shape[1:])) * k * x.shape[-1] // mod.feature_group_count)
      else:
        total.append(int(x.shape[-1]) * mod.features)
    return out

  x = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  bn_res = module.resolutions[0]  # any BatchNorm: the cost is the same, so any `res` can be costed
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda x: module.init(jax.random.key(0), x, resolution=bn_res), x)
  return sum(total)


def create_model(arch: str, resolutions: Sequence[int] = (224, 192, 160, 128, 96),
                 num_classes: int = 1000, **kwargs) -> RSNet:
  """An RS-Net by name: 'resnet18', 'resnet34', 'resnet50', 'mobilenet_v2' (full precision) or
  'lq_resnet18', 'lq_resnet50', 'lq_preact_resnet18', 'lq_preact_resnet50' (quantized).
  Options: `width` (channel multiplier), `shared_bn` (the ablation), `bn_group_size` (training
  statistics over groups of that many examples), `dtype` ('float32' or 'bfloat16' compute;
  parameters stay float32), `weight_bits` / `activation_bits` (1 to 4, or 32; lq_ networks only,
  activations on the preact ones only), `extra_resolutions` (see `add_resolution`).
  """
  return RSNet(arch, tuple(resolutions), num_classes, **kwargs)
