"""An ONNX model of a JAX inference function, translated from its jaxpr (needs `onnx`).

Known primitives are those of a folded RS-Net (elementwise arithmetic, convolution, max pooling,
sums, matmul, casts, slices and concatenation, wrapping calls); others are refused by name.
Constant-only computations are done here, once; weights become initializers. JAX is NHWC, ONNX's
Conv and MaxPool NCHW: each tensor carries `perm` (the JAX axis each stored axis holds), constants
are transposed to the tensor they meet, and a Transpose is emitted only where an op needs another
order (once, on the input image).
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
from jax.extend import core as jax_core
import numpy as np

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; newer IR versions are refused by older onnxruntimes
NCHW = (0, 3, 1, 2)  # the JAX (NHWC) axis held by each ONNX axis
# The platform to lower a function for before translating it (`fold.folded_apply(platforms=...)`):
# anything but 'cpu' gets XLA's own convolution, which becomes one ONNX Conv.
PLATFORM = 'onnx'

_ELEMENTWISE = {'add': 'Add', 'sub': 'Sub', 'mul': 'Mul', 'div': 'Div', 'max': 'Max', 'min': 'Min'}
_INLINED = ('jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call', 'custom_vjp_call',
            'remat')


@dataclasses.dataclass(frozen=True)
class Tensor:
  """A value computed by the graph: its ONNX name and `perm` (stored axis i is JAX axis perm[i])."""
  name: str
  perm: Tuple[int, ...]


def _identity(rank: int) -> Tuple[int, ...]:
  return tuple(range(rank))


class _Builder:
  """The ONNX nodes and initializers of one graph, emitted while walking a jaxpr. Builders that
  share `constants` ({bytes: name}) store an equal constant once: the branches of a switchable
  model read the same weights; `scope` keeps their node names apart."""

  def __init__(self, constants: Optional[Dict[Tuple[Any, ...], str]] = None, scope: str = ''):
    import onnx  # pylint: disable=import-outside-toplevel  # optional: pip install .[deploy]
    self.onnx = onnx
    self.nodes: List[Any] = []
    self.initializers: List[Any] = []
    self.constants = {} if constants is None else constants
    self.scope = scope
    self._count = 0

  def name(self, prefix: str) -> str:
    self._count += 1
    return f'{self.scope}{prefix}{self._count}'

  def node(self, op: str, inputs: Sequence[str], **attributes) -> str:
    out = self.name(op.lower())
    self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], **attributes))
    return out

  def constant(self, value: np.ndarray) -> str:
    value = np.ascontiguousarray(value)
    key = (value.dtype.str, value.shape, value.tobytes())
    if key not in self.constants:
      self.constants[key] = f'w{len(self.constants) + 1}'
      self.initializers.append(self.onnx.numpy_helper.from_array(value, self.constants[key]))
    return self.constants[key]

  def arrange(self, t: Tensor, perm: Tuple[int, ...]) -> Tensor:
    """`t` stored in the order `perm`, through a Transpose when it is stored otherwise."""
    if t.perm == perm:
      return t
    order = [t.perm.index(axis) for axis in perm]
    return Tensor(self.node('Transpose', [t.name], perm=order), perm)

  def operand(self, value, like: Tensor, dtype) -> str:
    """An elementwise operand's ONNX name: a tensor in `like`'s order, or a constant (scalar, or
    of the result's rank) transposed to it."""
    if isinstance(value, Tensor):
      return self.arrange(value, like.perm).name
    value = np.asarray(value, dtype)
    if value.ndim:
      value = np.transpose(value, like.perm)
    return self.constant(value)


def _closed_jaxpr_param(eqn):
  for value in eqn.params.values():
    if isinstance(value, jax_core.ClosedJaxpr):
      return value
  raise NotImplementedError(f'{eqn.primitive.name}: no inner jaxpr to inline')


def _evaluate(eqn, values: Sequence[np.ndarray]) -> List[np.ndarray]:
  """`eqn` on constant inputs, as jax.core.eval_jaxpr runs an equation."""
  full = [np.broadcast_to(v, var.aval.shape) for v, var in zip(values, eqn.invars)]
  out = eqn.primitive.bind(*full, **eqn.primitive.get_bind_params(eqn.params))
  return [np.asarray(o) for o in (out if eqn.primitive.multiple_results else [out])]


def _is_zero(value) -> bool:
  return not isinstance(value, Tensor) and not np.any(np.asarray(value))


class _Translator:

  def __init__(self, builder: _Builder):
    self.b = builder

  def run(self, jaxpr, consts, args) -> List[Any]:
    env: Dict[Any, Any] = {}

    def read(var):
      return var.val if isinstance(var, jax_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts):
      env[var] = np.asarray(value)
    for var, value in zip(jaxpr.invars, args):
      env[var] = value
    for eqn in jaxpr.eqns:
      inputs = [read(v) for v in eqn.invars]
      name = eqn.primitive.name
      if name in _INLINED:
        inner = _closed_jaxpr_param(eqn)
        outputs = self.run(inner.jaxpr, inner.consts, inputs)
      elif not any(isinstance(v, Tensor) for v in inputs):
        outputs = _evaluate(eqn, inputs)
      else:
        rule = getattr(self, f'_{name}', None)
        if rule is None:
          raise NotImplementedError(f'no ONNX translation for the JAX primitive {name!r}')
        outputs = [rule(eqn, *inputs)]
      for var, value in zip(eqn.outvars, outputs):
        env[var] = value
    return [read(v) for v in jaxpr.outvars]

  # -- one rule per primitive that meets a tensor -------------------------------------------------

  def _elementwise(self, eqn, x, y):
    t = x if isinstance(x, Tensor) else y
    dtype = eqn.outvars[0].aval.dtype
    if eqn.primitive.name == 'max' and (_is_zero(x) or _is_zero(y)):
      return Tensor(self.b.node('Relu', [t.name]), t.perm)  # a form runtimes fuse into Conv
    op = _ELEMENTWISE[eqn.primitive.name]
    names = [self.b.operand(v, t, dtype) for v in (x, y)]
    return Tensor(self.b.node(op, names), t.perm)

  _add = _sub = _mul = _div = _max = _min = _elementwise

  def _convert_element_type(self, eqn, x):
    to = self.b.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(eqn.params['new_dtype']))
    return Tensor(self.b.node('Cast', [x.name], to=to), x.perm)

  def _copy(self, eqn, x):
    del eqn
    return x

  def _conv_general_dilated(self, eqn, x, kernel):
    p = eqn.params
    numbers = p['dimension_numbers']
    if isinstance(kernel, Tensor) or tuple(numbers.lhs_spec) != tuple(numbers.out_spec):
      raise NotImplementedError('convolution: the kernel must be a constant and the input and '
                                'output laid out alike')
    if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
      raise NotImplementedError('convolution: input dilation and batch groups')
    spec = tuple(numbers.lhs_spec)  # (batch, feature, spatial...) axes: ONNX's NCHW
    x = self.b.arrange(x, spec)
    weight = self.b.constant(np.transpose(kernel, tuple(numbers.rhs_spec)))  # to OIHW
    pads = [lo for lo, _ in p['padding']] + [hi for _, hi in p['padding']]
    out = self.b.node('Conv', [x.name, weight], strides=list(p['window_strides']), pads=pads,
                      dilations=list(p['rhs_dilation']), group=p['feature_group_count'])
    return Tensor(out, spec)

  def _reduce_window_max(self, eqn, x):
    p = eqn.params
    window, strides, padding = p['window_dimensions'], p['window_strides'], p['padding']
    spatial = [a for a in range(len(window)) if not (window[a] == strides[a] == 1 and
                                                     tuple(padding[a]) == (0, 0))]
    other = [a for a in range(len(window)) if a not in spatial]
    if len(other) != 2 or any(d != 1 for d in p['base_dilation'] + p['window_dilation']):
      raise NotImplementedError('max pooling: only over spatial axes, without dilation')
    # Max pooling ignores ONNX's padding, as the -inf padding of the JAX reduction does.
    x = self.b.arrange(x, tuple(other) + tuple(spatial))
    out = self.b.node('MaxPool', [x.name], kernel_shape=[window[a] for a in spatial],
                      strides=[strides[a] for a in spatial],
                      pads=[padding[a][0] for a in spatial] + [padding[a][1] for a in spatial])
    return Tensor(out, x.perm)

  def _slice(self, eqn, x):
    p = eqn.params
    starts, limits = p['start_indices'], p['limit_indices']
    strides = p['strides'] or (1,) * len(starts)
    axes = [a for a in range(len(starts)) if (starts[a], limits[a], strides[a]) !=
            (0, eqn.invars[0].aval.shape[a], 1)]

    def ints(values):
      return self.b.constant(np.asarray(values, np.int64))
    out = self.b.node('Slice', [x.name, ints([starts[a] for a in axes]),
                                ints([limits[a] for a in axes]),
                                ints([x.perm.index(a) for a in axes]),
                                ints([strides[a] for a in axes])])
    return Tensor(out, x.perm)

  def _concatenate(self, eqn, *operands):
    like = next(o for o in operands if isinstance(o, Tensor))
    dtype = eqn.outvars[0].aval.dtype
    names = [self.b.operand(o, like, dtype) for o in operands]
    out = self.b.node('Concat', names, axis=like.perm.index(eqn.params['dimension']))
    return Tensor(out, like.perm)

  def _reduce_sum(self, eqn, x):
    axes = tuple(eqn.params['axes'])
    stored = [x.perm.index(a) for a in axes]
    kept = [a for a in x.perm if a not in axes]
    out = self.b.node('ReduceSum', [x.name, self.b.constant(np.asarray(stored, np.int64))],
                      keepdims=0)
    # The kept JAX axes, renumbered, in their stored order.
    return Tensor(out, tuple(sorted(kept).index(a) for a in kept))

  def _dot_general(self, eqn, x, w):
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params['dimension_numbers']
    if (isinstance(w, Tensor) or len(x.perm) != 2 or np.ndim(w) != 2 or lhs_batch or rhs_batch
        or tuple(lhs_contract) != (1,)):
      raise NotImplementedError('dot_general: only (N, C) times a constant matrix')
    x = self.b.arrange(x, (0, 1))
    w = np.asarray(w) if tuple(rhs_contract) == (0,) else np.asarray(w).T
    return Tensor(self.b.node('MatMul', [x.name, self.b.constant(w)]), (0, 1))


def _translate(builder: _Builder, fn, example: jax.ShapeDtypeStruct, input_name: str,
               output_name: str):
  """Emits `fn` on the input `input_name` into `builder`, ending in `output_name`; returns the
  output's abstract value."""
  closed = jax.make_jaxpr(fn)(example)
  image = Tensor(input_name, _identity(len(example.shape)))
  out, = _Translator(builder).run(closed.jaxpr, closed.consts, [image])
  if not isinstance(out, Tensor):
    raise ValueError('the function does not depend on its input')
  out = builder.arrange(out, _identity(len(out.perm)))
  builder.nodes.append(builder.onnx.helper.make_node('Identity', [out.name], [output_name]))
  return closed.jaxpr.outvars[0].aval


def _model(graph, doc: str):
  import onnx  # pylint: disable=import-outside-toplevel
  model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid('', OPSET)],
                                 producer_name='rsnets_jax', doc_string=doc)
  model.ir_version = IR_VERSION
  onnx.checker.check_model(model)
  return model


def to_onnx(fn, example: jax.ShapeDtypeStruct, input_name: str = 'images',
            output_name: str = 'logits', batch_name: str = 'batch', doc: str = ''):
  """The ONNX model (an `onnx.ModelProto`) of `fn` on one input shaped like `example`, whose
  first axis becomes the symbolic `batch_name` (so `fn` must treat every example alike)."""
  import onnx  # pylint: disable=import-outside-toplevel
  builder = _Builder()
  out_aval = _translate(builder, fn, example, input_name, output_name)
  graph = onnx.helper.make_graph(
      builder.nodes, 'rsnet', [_value_info(input_name, example.dtype, example.shape, batch_name)],
      [_value_info(output_name, out_aval.dtype, out_aval.shape, batch_name)],
      initializer=builder.initializers)
  return _model(graph, doc)


def to_switchable_onnx(functions: Dict[int, Callable], input_name: str = 'images',
                       output_name: str = 'logits', batch_name: str = 'batch', doc: str = ''):
  """One ONNX model running `functions[res]` on uint8 inputs (batch, res, res, 3) of each `res`:
  a chain of `If` nodes on the input's height, one branch per function, every branch reading one
  set of initializers (equal constants stored once). The last branch reshapes the input to its
  own size first, so an input of no listed size is an error, not a wrong BatchNorm."""
  import onnx  # pylint: disable=import-outside-toplevel
  helper = onnx.helper
  constants: Dict[Tuple[Any, ...], str] = {}
  initializers, branches, out_aval = [], {}, None
  resolutions = sorted(functions, reverse=True)
  for i, res in enumerate(resolutions):
    builder = _Builder(constants, scope=f'r{res}_')
    image = input_name
    if i == len(resolutions) - 1:
      shape = builder.constant(np.asarray([0, res, res, 3], np.int64))  # 0: keep the batch
      image = builder.node('Reshape', [input_name, shape])
    example = jax.ShapeDtypeStruct((2, res, res, 3), np.uint8)
    out_aval = _translate(builder, functions[res], example, image, f'{output_name}_{res}')
    initializers += builder.initializers
    branches[res] = helper.make_graph(
        builder.nodes, f'resolution_{res}', [],
        [_value_info(f'{output_name}_{res}', out_aval.dtype, out_aval.shape, batch_name)])
  top = _Builder(constants, scope='select_')
  height = top.node('Gather', [top.node('Shape', [input_name]),
                               top.constant(np.asarray(1, np.int64))], axis=0)
  initializers += top.initializers
  # Built from the last resolution up: each `else` is the graph holding the next test.
  chain = branches[resolutions[-1]]
  for level, res in reversed(list(enumerate(resolutions[:-1]))):
    builder = _Builder(constants, scope=f'if{res}_')
    test = builder.node('Equal', [height, builder.constant(np.asarray(res, np.int64))])
    out = output_name if level == 0 else f'{output_name}_from_{res}'
    builder.nodes.append(helper.make_node('If', [test], [out], then_branch=branches[res],
                                          else_branch=chain))
    initializers += builder.initializers
    if level == 0:
      nodes = top.nodes + builder.nodes
    else:
      chain = helper.make_graph(builder.nodes, f'unless_{res}', [], [
          _value_info(out, out_aval.dtype, out_aval.shape, batch_name)])
  if len(resolutions) == 1:
    nodes = top.nodes + [helper.make_node('Identity', [f'{output_name}_{resolutions[0]}'],
                                          [output_name])]
    nodes[len(top.nodes):len(top.nodes)] = list(branches[resolutions[0]].node)
  graph = helper.make_graph(
      nodes, 'switchable_rsnet',
      [helper.make_tensor_value_info(input_name, helper.np_dtype_to_tensor_dtype(np.dtype(
          np.uint8)), [batch_name, 'height', 'width', 3])],
      [_value_info(output_name, out_aval.dtype, out_aval.shape, batch_name)],
      initializer=initializers)
  return _model(graph, doc)


def _value_info(name: str, dtype, shape, batch_name: str):
  import onnx  # pylint: disable=import-outside-toplevel
  return onnx.helper.make_tensor_value_info(
      name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [batch_name, *shape[1:]])
