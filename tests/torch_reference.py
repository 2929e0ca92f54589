"""PyTorch RS-Nets laid out like the reference code, so that their state dicts are the published ones.

Shared layers are wrapped in a module whose child is called `module` (the reference's
ModuleParallel, hence `conv1.module.weight`); each private BatchNorm is a container of `bn_{i}`
children, i the index of the resolution in training order; `alpha` is a parameter of the network;
`save_reference_checkpoint` saves through DataParallel, which prefixes every key with `module.`.
ResNets are torchvision v1.5; MobileNetV2 has ReLU6 and a last conv of 1280 channels, in
`features`, `conv` and `classifier` as the reference names them.

Where the reference maps a list of inputs (one per resolution) to a list of logits, these modules
take one input and its resolution index: `model.run(x_nchw, i)` gives eval-mode logits.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Shared(nn.Module):
  """A layer used by every resolution; the extra `.module` level matches the reference's keys."""

  def __init__(self, module: nn.Module):
    super().__init__()
    self.module = module

  def forward(self, x, i):
    del i
    return self.module(x)


class PrivateBatchNorm(nn.Module):
  """One BatchNorm2d per resolution, named bn_0, bn_1, ... in training order."""

  def __init__(self, features: int, num_resolutions: int):
    super().__init__()
    for i in range(num_resolutions):
      self.add_module(f'bn_{i}', nn.BatchNorm2d(features))

  def forward(self, x, i):
    return getattr(self, f'bn_{i}')(x)


class Sequential(nn.Sequential):
  """nn.Sequential that passes the resolution index to every layer (indices are key names)."""

  def forward(self, x, i):
    for layer in self:
      x = layer(x, i)
    return x


def conv(cin, cout, kernel, stride=1, groups=1):
  return Shared(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False))


class RSNet(nn.Module):
  """What every network adds: alpha, and eval-mode logits at one resolution index."""

  def __init__(self, num_resolutions: int):
    super().__init__()
    self.num_resolutions = num_resolutions
    self.alpha = nn.Parameter(torch.ones(num_resolutions))

  @torch.no_grad()
  def run(self, x, i: int):
    """Eval-mode logits of `x` (N, 3, r, r) with the BatchNorm of resolution index `i`."""
    self.eval()
    return self(x, i)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, downsample, n):
    super().__init__()
    self.conv1 = conv(cin, planes, 3, stride)
    self.bn1 = PrivateBatchNorm(planes, n)
    self.conv2 = conv(planes, planes, 3)
    self.bn2 = PrivateBatchNorm(planes, n)
    self.downsample = downsample

  def forward(self, x, i):
    y = F.relu(self.bn1(self.conv1(x, i), i))
    y = self.bn2(self.conv2(y, i), i)
    return F.relu(y + (x if self.downsample is None else self.downsample(x, i)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, downsample, n):
    super().__init__()
    self.conv1 = conv(cin, planes, 1)
    self.bn1 = PrivateBatchNorm(planes, n)
    self.conv2 = conv(planes, planes, 3, stride)  # v1.5: the stride is on the 3x3
    self.bn2 = PrivateBatchNorm(planes, n)
    self.conv3 = conv(planes, planes * 4, 1)
    self.bn3 = PrivateBatchNorm(planes * 4, n)
    self.downsample = downsample

  def forward(self, x, i):
    y = F.relu(self.bn1(self.conv1(x, i), i))
    y = F.relu(self.bn2(self.conv2(y, i), i))
    y = self.bn3(self.conv3(y, i), i)
    return F.relu(y + (x if self.downsample is None else self.downsample(x, i)))


class ResNet(RSNet):

  def __init__(self, block, stage_sizes, num_classes=1000, num_resolutions=5):
    super().__init__(num_resolutions)
    n = num_resolutions
    self.conv1 = conv(3, 64, 7, 2)
    self.bn1 = PrivateBatchNorm(64, n)
    cin = 64
    for stage, blocks in enumerate(stage_sizes):
      planes, layers = 64 * 2**stage, []
      for b in range(blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        downsample = None
        if stride != 1 or cin != planes * block.expansion:
          downsample = Sequential(conv(cin, planes * block.expansion, 1, stride),
                                  PrivateBatchNorm(planes * block.expansion, n))
        layers.append(block(cin, planes, stride, downsample, n))
        cin = planes * block.expansion
      self.add_module(f'layer{stage + 1}', Sequential(*layers))
    self.fc = Shared(nn.Linear(cin, num_classes))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x, i):
    x = F.relu(self.bn1(self.conv1(x, i), i))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(4):
      x = getattr(self, f'layer{stage + 1}')(x, i)
    return self.fc(x.mean(dim=(2, 3)), i)


class InvertedResidual(nn.Module):

  def __init__(self, cin, cout, stride, expansion, n):
    super().__init__()
    hidden = round(cin * expansion)
    self.identity = stride == 1 and cin == cout
    layers = []
    if expansion != 1:
      layers += [conv(cin, hidden, 1), PrivateBatchNorm(hidden, n), Shared(nn.ReLU6())]
    layers += [conv(hidden, hidden, 3, stride, groups=hidden), PrivateBatchNorm(hidden, n),
               Shared(nn.ReLU6()), conv(hidden, cout, 1), PrivateBatchNorm(cout, n)]
    self.conv = Sequential(*layers)

  def forward(self, x, i):
    y = self.conv(x, i)
    return x + y if self.identity else y


class MobileNetV2(RSNet):
  settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, num_classes=1000, num_resolutions=5):
    super().__init__(num_resolutions)
    n = num_resolutions
    layers = [Sequential(conv(3, 32, 3, 2), PrivateBatchNorm(32, n), Shared(nn.ReLU6()))]
    cin = 32
    for t, c, repeats, s in self.settings:
      for r in range(repeats):
        layers.append(InvertedResidual(cin, c, s if r == 0 else 1, t, n))
        cin = c
    self.features = Sequential(*layers)
    self.conv = Sequential(conv(cin, 1280, 1), PrivateBatchNorm(1280, n), Shared(nn.ReLU6()))
    self.classifier = Shared(nn.Linear(1280, num_classes))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
      elif isinstance(m, nn.Linear):
        m.weight.data.normal_(0, 0.01)
        m.bias.data.zero_()

  def forward(self, x, i):
    x = self.conv(self.features(x, i), i)
    return self.classifier(x.mean(dim=(2, 3)), i)


def create(arch: str, num_classes: int = 1000, num_resolutions: int = 5) -> RSNet:
  if arch == 'mobilenet_v2':
    return MobileNetV2(num_classes, num_resolutions)
  block, stages = {'resnet18': (BasicBlock, (2, 2, 2, 2)), 'resnet34': (BasicBlock, (3, 4, 6, 3)),
                   'resnet50': (Bottleneck, (3, 4, 6, 3))}[arch]
  return ResNet(block, stages, num_classes, num_resolutions)


@torch.no_grad()
def randomize(model: RSNet, resolutions, seed: int = 0, batch: int = 4):
  """Every resolution's BatchNorm gets its own random scale, bias and running statistics, and
  alpha and the classifier bias random values, so that a swapped or transposed tensor shows.

  The running statistics are those of a random batch at that resolution (so activations stay in
  a sane range through 50 layers, and no ReLU is dead everywhere), then perturbed.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  for bn in bns:
    bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
    bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
  model.alpha.copy_(torch.randn(model.alpha.shape, generator=g))
  classifier = model.fc if isinstance(model, ResNet) else model.classifier
  classifier.module.bias.copy_(0.1 * torch.randn(classifier.module.bias.shape, generator=g))

  model.train()
  for bn in bns:
    bn.momentum = 1.0  # the running statistics become those of the one batch
  for i, res in enumerate(resolutions):
    model(torch.rand(batch, 3, res, res, generator=g), i)
  for bn in bns:
    bn.momentum = 0.1
    std = bn.running_var.sqrt()
    bn.running_mean.add_(0.1 * std * torch.randn(std.shape, generator=g))
    bn.running_var.mul_(torch.exp(0.2 * torch.randn(std.shape, generator=g)))
  model.eval()
  return model


def save_reference_checkpoint(model: RSNet, path, arch: str, epoch: int = 120):
  """Saves as the reference's training script does: a DataParallel model's state dict (keys
  prefixed with `module.`) with the epoch, accuracies and optimizer state."""
  wrapped = nn.DataParallel(model)  # without GPUs it only wraps, which is all the keys need
  optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  torch.save({'epoch': epoch, 'arch': arch, 'state_dict': wrapped.state_dict(),
              'best_acc0': 73.1, 'best_acc': 162.0, 'optimizer': optimizer.state_dict()}, path)
