"""PyTorch twin of `resnet.ResNet`, for parity tests and benchmarks only.

`torch_resnet(model, length)` builds a `torch.nn.Module` with the same
architecture as a Flax `resnet.ResNet` (both skip variants, BatchNorm, ReLU,
dropout, the flattening head) taking [batch, leads, time] tensors;
`copy_flax_to_torch(net, variables)` copies trained Flax variables into it,
after which both give the same outputs (float32 rounding). Every ReLU is its
own module, as Captum's DeepLift needs (it hooks modules, and a module used
twice breaks its rule).

PyTorch is an optional extra (`pip install -e '.[bench]'`); nothing in the
core imports this module. Layout differences handled here: Flax kernels are
[k, in, out] (torch [out, in, k]); Flax pads 'SAME' by hand then runs
'VALID' (reproduced with F.pad); the flattening is time-major in Flax
(column t * channels + c), so the torch model flattens [batch, time,
channels].
"""

import math
from typing import Any

import numpy as np

from factorecg_jax.models import resnet


def _same_padding(length: int, window: int, stride: int) -> tuple[int, int]:
  """(left, right) padding of `resnet._pad_same`."""
  out = -(-length // stride)
  pad = max((out - 1) * stride + window - length, 0)
  return pad // 2, pad - pad // 2


def torch_resnet(model: resnet.ResNet, length: int, leads: int = 12):
  """The Flax `model` as a torch.nn.Module taking [batch, leads, time].

  Args:
    model: a `resnet.ResNet` with ReLU, `pool='flatten'`, no extras.
    length: samples per ECG (fixes the head's input size).
    leads: input channels.

  Returns:
    An uninitialised torch module in train mode; copy weights with
    `copy_flax_to_torch` and call `.eval()` for inference.

  Raises:
    ValueError: for options the twin does not have.
  """
  # pylint: disable=g-import-not-at-top
  import torch
  from torch.nn import functional as F
  # pylint: enable=g-import-not-at-top

  if (model.num_extra or model.pool != 'flatten'
      or model.act is not resnet.nn.relu):
    raise ValueError('torch_resnet supports ReLU, pool="flatten" and no '
                     'extra inputs')
  use_bn = model.use_batchnorm

  def pad_same(x, window, stride, value=0.0):
    return F.pad(x, _same_padding(x.shape[-1], window, stride), value=value)

  def norm(features):
    if not use_bn:
      return torch.nn.Identity()
    # PyTorch's momentum weighs the new batch: 1 - Flax's 0.9.
    return torch.nn.BatchNorm1d(features, eps=1e-5, momentum=0.1)

  class Block(torch.nn.Module):
    """resnet.ResidualBlock."""

    def __init__(self, cin, cout, k, d):
      super().__init__()
      self.k, self.d, self.skip_pool = k, d, model.skip_pool
      self.conv1 = torch.nn.Conv1d(cin, cout, k, bias=not use_bn)
      self.norm1 = norm(cout)
      self.relu1 = torch.nn.ReLU()
      self.conv2 = torch.nn.Conv1d(cout, cout, k, stride=d, bias=not use_bn)
      self.norm2 = norm(cout)
      self.relu2 = torch.nn.ReLU()
      self.dropout1 = torch.nn.Dropout(model.dropout_rate)
      self.dropout2 = torch.nn.Dropout(model.dropout_rate)
      self.pool = (torch.nn.MaxPool1d(d) if self.skip_pool and d > 1
                   else None)
      needs = cin != cout if self.skip_pool else (d > 1 or cin != cout)
      stride = 1 if self.skip_pool else d
      self.skip = (torch.nn.Conv1d(cin, cout, 1, stride=stride, bias=False)
                   if needs else None)

    def forward(self, x, skip):
      if self.skip_pool:
        if self.pool is not None:
          skip = self.pool(pad_same(skip, self.d, self.d, -math.inf))
        if self.skip is not None:
          skip = self.skip(skip)
      elif self.skip is not None:
        skip = self.skip(pad_same(skip, 1, self.d))
      h = self.dropout1(self.relu1(self.norm1(self.conv1(
          pad_same(x, self.k, 1)))))
      skip = self.conv2(pad_same(h, self.k, self.d)) + skip
      return self.dropout2(self.relu2(self.norm2(skip))), skip

  class Net(torch.nn.Module):
    """resnet.ResNet."""

    def __init__(self):
      super().__init__()
      self.k = model.kernel_size
      self.stem_conv = torch.nn.Conv1d(leads, model.stem_filters, self.k,
                                       bias=not use_bn)
      self.stem_norm = norm(model.stem_filters)
      self.stem_relu = torch.nn.ReLU()
      blocks, cin, t = [], model.stem_filters, length
      for cout, d in zip(model.filters, model.downsample):
        blocks.append(Block(cin, cout, self.k, d))
        cin, t = cout, -(-t // d)
      self.blocks = torch.nn.ModuleList(blocks)
      self.classifier = torch.nn.Linear(t * cin, model.num_outputs)

    def forward(self, x):
      h = self.stem_relu(self.stem_norm(self.stem_conv(
          pad_same(x, self.k, 1))))
      skip = h
      for block in self.blocks:
        h, skip = block(h, skip)
      # Time-major flattening, as Flax's reshape of [batch, time, channels].
      return self.classifier(h.permute(0, 2, 1).reshape(h.shape[0], -1))

  return Net()


def copy_flax_to_torch(net: Any, variables: dict[str, Any]) -> Any:
  """Copies Flax ResNet variables ({'params', 'batch_stats'}) into `net`.

  Returns:
    `net` (modes unchanged).
  """
  # pylint: disable-next=g-import-not-at-top
  import torch
  params = variables['params']
  stats = variables.get('batch_stats', {})

  def put(tensor, value):
    value = np.array(value, np.float32)  # a copy: JAX buffers get donated
    if tuple(tensor.shape) != value.shape:
      raise ValueError(f'shape {tuple(tensor.shape)} != {value.shape}')
    with torch.no_grad():
      tensor.copy_(torch.from_numpy(value))

  def conv(module, p):  # Flax [k, in, out] -> torch [out, in, k].
    put(module.weight, np.transpose(p['kernel'], (2, 1, 0)))
    if 'bias' in p:
      put(module.bias, p['bias'])

  def bn(module, p, s):
    if isinstance(module, torch.nn.Identity):
      return
    put(module.weight, p['scale'])
    put(module.bias, p['bias'])
    put(module.running_mean, s['mean'])
    put(module.running_var, s['var'])

  conv(net.stem_conv, params['stem']['conv'])
  bn(net.stem_norm, params['stem'].get('norm'), stats.get('stem', {}).get(
      'norm'))
  for i, block in enumerate(net.blocks):
    p, s = params[f'blocks_{i}'], stats.get(f'blocks_{i}', {})
    conv(block.conv1, p['conv1'])
    conv(block.conv2, p['conv2'])
    bn(block.norm1, p.get('norm1'), s.get('norm1'))
    bn(block.norm2, p.get('norm2'), s.get('norm2'))
    if block.skip is not None:
      conv(block.skip, p['skip'])
    elif 'skip' in p:
      raise ValueError(f'blocks_{i} has a skip convolution the twin lacks')
  put(net.classifier.weight, np.asarray(params['classifier']['kernel']).T)
  put(net.classifier.bias, params['classifier']['bias'])
  return net
