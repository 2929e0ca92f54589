"""Models: the layers, the architecture families and the functional `RSNet`.

Layers: `conv` (convolution, lowered to matmuls where XLA's CPU backend is slow), `pooling`,
`batchnorm` (the per-resolution BatchNorm), `quantizers` (LQ-Nets). Architecture families, each
registering its networks with what they support (`architecture.Architecture`): `resnet`,
`mobilenet`, `lq_resnet`. `rsnet.RSNet` is what the rest of the project uses: `init`, `apply`,
`macs`. This room imports nothing else of the project but `rsnets_jax.errors`.
"""
# The families register their architectures when imported.
from rsnets_jax.models import lq_resnet, mobilenet, resnet  # noqa: F401
from rsnets_jax.models.architecture import ARCHITECTURES, Architecture
from rsnets_jax.models.rsnet import (ADDED_PADDINGS, RESOLUTION_KEY, RSNet, create_model,
                                     trainable)

__all__ = ['ARCHITECTURES', 'Architecture', 'RESOLUTION_KEY', 'RSNet', 'create_model', 'trainable']
