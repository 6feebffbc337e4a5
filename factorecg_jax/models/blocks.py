"""Causal dilated convolution blocks, channels-last (FactorECG encoder/decoder).

The layers mirror ecgxai 0.1.1 (`ecgxai.network.causalcnn.modules`), the
package that defines the published FactorECG architecture (van de Leur et al.
2022), on `[batch, time, channels]` arrays:

* `CausalConv`: a dilated 1-D convolution whose output at time t only sees
  inputs at times <= t. ecgxai pads both ends by `(kernel - 1) * dilation` and
  chomps the tail (`padding='chomp'`); padding the left end only
  (`padding='left'`) gives the same outputs without the discarded tail.
* `CausalBlock`: two causal convolutions with activations, plus a residual
  (a 1x1 convolution when the channel count changes).
* `CausalCNN`: `depth` blocks with doubling (or halving) dilations and a last
  block to `out_features` channels.

Initialisation follows PyTorch's defaults for `Conv1d`/`Linear` (weights and
biases uniform in +-1/sqrt(fan_in)), so a freshly built model is distributed as
the PyTorch one the paper trained.
"""

from collections.abc import Callable
import math
from typing import Any

import flax.linen as nn
from flax.linen import dtypes
import jax
from jax import lax
import jax.numpy as jnp

Dtype = Any

# PyTorch's kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)): variance
# 1 / (3 fan_in). Flax counts fan_in over every axis but the last two for
# conv kernels [kernel, in, out], i.e. kernel * in, as PyTorch does.
torch_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform'
)


def torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default bias initialiser, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in: number of inputs feeding one output unit (kernel * in channels).

  Returns:
    An initialiser `(key, shape, dtype) -> array`.
  """
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(
    features: int,
    fan_in: int,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
  """`nn.Dense` with PyTorch's `Linear` initialisation.

  Args:
    features: output size.
    fan_in: input size (the bias bound is 1/sqrt(fan_in)).
    dtype: computation dtype (parameters stay float32).
    name: module name.

  Returns:
    An unbound `nn.Dense` (call it inside a compact method or setup).
  """
  return nn.Dense(
      features,
      dtype=dtype,
      kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in),
      name=name,
  )


class CausalConv(nn.Module):
  """Causal dilated 1-D convolution on `[batch, time, in]`.

  The kernel has shape `[kernel_size, in, features]`; output at time t is
  `bias + sum_j x[t - (kernel_size - 1 - j) * dilation] @ kernel[j]` (zero
  before the start), exactly `torch.nn.Conv1d(padding=p)` followed by
  `Chomp1d(p)` with `p = (kernel_size - 1) * dilation`.

  Attributes:
    features: number of output channels.
    kernel_size: taps of the kernel.
    dilation: spacing between taps, in samples.
    padding: 'chomp' pads both ends by p and drops the last p outputs, as
      ecgxai does; 'left' pads the left end only and computes only the kept
      outputs (same result, fewer FLOPs).
    transpose: if True, computes a stride-1 transposed convolution chomped
      to be causal, `bias + sum_j x[t - j * dilation] @ kernel[j]`, as
      `torch.nn.ConvTranspose1d(padding=0)` + `Chomp1d(p)` with the PyTorch
      weight `[in, out, k]` moved to `[k, in, out]`. At stride 1 this is the
      plain causal convolution with its kernel reversed in time.
    dtype: computation dtype; parameters are float32.
  """

  features: int
  kernel_size: int
  dilation: int = 1
  padding: str = 'chomp'
  transpose: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution.

    Args:
      x: [batch, time, in] array.

    Returns:
      [batch, time, features] array in `dtype`.
    """
    if self.padding not in ('chomp', 'left'):
      raise ValueError(f'padding must be chomp or left, got {self.padding!r}')
    in_features = x.shape[-1]
    fan_in = in_features * self.kernel_size
    kernel = self.param(
        'kernel',
        torch_kernel_init,
        (self.kernel_size, in_features, self.features),
    )
    bias = self.param('bias', torch_bias_init(fan_in), (self.features,))
    if self.transpose:
      kernel = kernel[::-1]
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pad = (self.kernel_size - 1) * self.dilation
    if self.padding == 'left':
      x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
    else:
      x = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    # Explicit padding + VALID: XLA:CPU runs the weight gradient of a conv
    # with built-in two-sided padding ~30x slower than this form.
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,),
        padding='VALID',
        rhs_dilation=(self.dilation,),
        dimension_numbers=('NWC', 'WIO', 'NWC'),
    )
    if self.padding == 'chomp' and pad:
      y = y[:, :-pad]
    return y + bias


class CausalBlock(nn.Module):
  """Residual block of two causal convolutions (ecgxai CausalConvolutionBlock).

  `out = act(conv2(act(conv1(x)))) + residual(x)`, then `act(out)` if
  `final_act`. The residual is `x` itself, or a 1x1 convolution when the
  channel count changes.

  Attributes:
    features: output channels.
    kernel_size: taps of both causal convolutions.
    dilation: dilation of both causal convolutions.
    final_act: apply `act` after the residual sum.
    transpose: use causal transposed convolutions (see `CausalConv`).
    padding: 'chomp' or 'left' (see `CausalConv`).
    act: activation; leaky ReLU with slope 0.01 as in PyTorch.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int
  dilation: int
  final_act: bool = False
  transpose: bool = False
  padding: str = 'chomp'
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the block; [batch, time, in] -> [batch, time, features]."""
    conv = lambda k, d, name: CausalConv(  # noqa: E731
        self.features,
        k,
        d,
        padding=self.padding,
        transpose=self.transpose,
        dtype=self.dtype,
        name=name,
    )
    h = self.act(conv(self.kernel_size, self.dilation, 'conv1')(x))
    h = self.act(conv(self.kernel_size, self.dilation, 'conv2')(h))
    if x.shape[-1] != self.features:
      res = conv(1, 1, 'residual')(x)
    else:
      res = x.astype(h.dtype)
    out = h + res
    return self.act(out) if self.final_act else out


class CausalCNN(nn.Module):
  """Stack of causal blocks with geometric dilations (ecgxai CausalCNN).

  Blocks `block0..block{depth-1}` have `features` channels and dilations
  1, 2, 4, ... (or 2**depth, 2**(depth-1), ..., 2 when `reverse`); the last
  block `block{depth}` maps to `out_features` channels with the next dilation
  (2**depth, or 1 when `reverse`), no final activation, and ordinary
  convolutions.

  ecgxai 0.1.1 passes its `forward` flag into the blocks' `final` slot: the
  encoder's blocks end with an activation (`final_act=True`), the decoder's
  do not, and every convolution is an ordinary one. `transpose=True` gives the
  decoder the transposed convolutions the package meant to build (for the
  `depth` blocks; its last block is ordinary in the package too).

  Attributes:
    features: channels of the `depth` inner blocks.
    out_features: channels of the output.
    depth: number of inner blocks.
    kernel_size: taps of every causal convolution.
    reverse: halve the dilations from 2**depth instead of doubling from 1.
    final_act: activation after the residual sum of the inner blocks.
    transpose: transposed convolutions in the inner blocks.
    padding: 'chomp' or 'left' (see `CausalConv`).
    act: activation.
    dtype: computation dtype.
  """

  features: int
  out_features: int
  depth: int
  kernel_size: int
  reverse: bool = False
  final_act: bool = True
  transpose: bool = False
  padding: str = 'chomp'
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the stack; [batch, time, in] -> [batch, time, out_features]."""
    dilation = 2**self.depth if self.reverse else 1
    for i in range(self.depth):
      x = CausalBlock(
          self.features,
          self.kernel_size,
          dilation,
          final_act=self.final_act,
          transpose=self.transpose,
          padding=self.padding,
          act=self.act,
          dtype=self.dtype,
          name=f'block{i}',
      )(x)
      dilation = dilation // 2 if self.reverse else dilation * 2
    return CausalBlock(
        self.out_features,
        self.kernel_size,
        dilation,
        final_act=False,
        transpose=False,
        padding=self.padding,
        act=self.act,
        dtype=self.dtype,
        name=f'block{self.depth}',
    )(x)
