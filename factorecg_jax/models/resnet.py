"""1-D ResNet for 12-lead ECGs (Ribeiro et al. 2020), Flax Linen.

The architecture of "Automatic diagnosis of the 12-lead ECG using a deep
neural network" (Ribeiro et al., Nat Commun 11:1760, 2020): a convolution
with 64 filters, batch norm and an activation, then four residual blocks with
128, 196, 256 and 320 filters that each shorten the signal four-fold, a
flattening and one dense layer. The blocks are pre-activation blocks with two
streams: the *skip* stream carries the raw sum of the previous block (before
its normalisation), the *main* stream that sum after batch norm, activation
and dropout. A block convolves the main stream (conv - BN - act - dropout -
strided conv), max-pools the skip stream by the same factor (and projects it
with a 1x1 convolution when the width changes), adds the two, and passes the
sum on as the next skip stream and its BN - act - dropout as the next main
stream. Convolutions have no bias (batch norm follows each of them).

What differs from the authors' Keras model (antonior92/automatic-ecg-diagnosis,
`model.py`):

* Kernel 17 (odd, so 'same' padding is symmetric), the default of their
  `ResidualUnit` and of their PyTorch ports; their `get_model` passes 16.
* Any input length: each block downsamples by `downsample[i]` instead of to
  a fixed sample count (their input is 4096 samples at 400 Hz, 2**12); a
  length that does not divide gives ceil(t / d) samples with TensorFlow's
  'SAME' padding (extra sample on the right), as Keras does.
* BatchNorm momentum 0.9 and epsilon 1e-5 (PyTorch's defaults) instead of
  Keras' 0.99 and 1e-3.
* The head returns logits; the sigmoid of their last layer belongs to the loss.
* Options they do not have: `pool='avg'` (global average pooling, a head that
  does not depend on the length), `skip_pool=False` (strided 1x1 skip
  convolutions instead of max-pooling, so that `act` is the only
  nonlinearity, for DeepLIFT's completeness), `num_extra` (age, sex, ...
  joined to the pooled features) and `use_batchnorm=False` (main-path
  convolutions then carry biases).

Initialisation is Keras' `he_normal` for every kernel, zeros for biases.

How it is computed (the same function, arranged for XLA:CPU, where the
train step and the attributions are bound by convolution FLOPs): padding
is written out and the convolutions run 'VALID'; strided convolutions are
folded into unit-stride ones on a space-to-depth view (`conv1d`); the skip
max-pool is a reshape and a max with `nn.max_pool`'s derivative
(`max_pool`); signals shorter than the kernel (the last block on a median
beat) keep their padding out of the convolution (`_pad_time`,
`_conv_valid`), which XLA:CPU otherwise runs ~100x more slowly. Together
they made the nine attributions on median beats 8x faster and the train
step on strips ~1.5x faster than `nn.Conv` / `nn.max_pool`.
"""

from collections.abc import Callable
from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Keras 'he_normal', the initialiser of every kernel in Ribeiro et al.'s code.
_kernel_init = nn.initializers.he_normal()


def _pad_same(
    x: jax.Array, window: int, stride: int, value: float = 0.0
) -> jax.Array:
  """Pads time so a 'VALID' window op gives TensorFlow's 'SAME' output.

  Args:
    x: [batch, time, channels] array.
    window: taps of the convolution or pooling window.
    stride: its stride in samples.
    value: padding value (0 for convolutions, -inf for max-pooling).

  Returns:
    [batch, time + pad, channels], with pad // 2 samples on the left and the
    rest on the right, so that the op yields ceil(time / stride) samples.
    A signal shorter than the window is padded behind an optimisation
    barrier (see `_pad_time`).
  """
  length = x.shape[1]
  out = -(-length // stride)
  pad = max((out - 1) * stride + window - length, 0)
  return _pad_time(x, pad // 2, pad - pad // 2, window, value)


def _pad_time(
    x: jax.Array, left: int, right: int, window: int, value: float = 0.0
) -> jax.Array:
  """Pads axis 1; kept out of the window op when the signal is short.

  XLA folds an explicit pad into the padding of the convolution that reads
  it. XLA:CPU (jaxlib 0.10) runs a convolution with window padding about
  100 times more slowly when the unpadded input is shorter than the kernel
  (a median beat reaches 10 samples in the last block, under 17 taps): the
  pad then stays a separate op behind `lax.optimization_barrier`.
  """
  padded = jnp.pad(
      x, ((0, 0), (left, right), (0, 0)), constant_values=value
  )
  if x.shape[1] < window and left + right:
    padded = jax.lax.optimization_barrier(padded)
  return padded


def conv1d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """A 'VALID' 1-D convolution, strided ones folded into unit-stride ones.

  The same sums as `lax.conv_general_dilated(x, kernel, (stride,), 'VALID')`
  in another order (equal to float rounding). XLA:CPU computes the input
  gradient of a strided convolution slowly, so a stride-s convolution with
  k taps runs as a unit-stride one on the signal reshaped to [batch,
  time / s, s * channels] (space to depth) with ceil(k / s) taps of s *
  channels (the kernel zero-padded to a multiple of s taps): tap j = q s + p
  reads sample s (t + q) + p, i.e. phase p of folded sample t + q. A 1-tap
  strided convolution reads every s-th sample.

  Args:
    x: [batch, time, in] signal.
    kernel: [taps, in, out].
    stride: step between outputs in samples.

  Returns:
    [batch, (time - taps) // stride + 1, out].
  """
  taps, cin, cout = kernel.shape
  batch, length, _ = x.shape
  out = (length - taps) // stride + 1
  if stride > 1 and taps == 1:
    x, stride = x[:, : (out - 1) * stride + 1 : stride], 1
  elif stride > 1:
    folded = -(-taps // stride)
    used = (out - 1 + folded) * stride  # samples the folded taps read
    if used > length:  # zero taps past the kernel read past the signal
      x = jnp.pad(x, ((0, 0), (0, used - length), (0, 0)))
    x = x[:, :used].reshape(batch, used // stride, stride * cin)
    kernel = jnp.pad(
        kernel, ((0, folded * stride - taps), (0, 0), (0, 0))
    ).reshape(folded, stride * cin, cout)
    stride = 1
  return _conv_valid(x, kernel)


_DIMS = ('NWC', 'WIO', 'NWC')


def _xla_conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (1,), 'VALID',
                                      dimension_numbers=_DIMS)


@jax.custom_vjp
def _conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Unit-stride 'VALID' convolution with a guarded input gradient.

  The input gradient of a 'VALID' convolution is a convolution of the
  cotangent, padded by taps - 1 on both sides, with the flipped kernel.
  When the output is shorter than the kernel (the last block on a median
  beat), XLA:CPU's own derivative hits the slow window padding of
  `_pad_time`; this one pads behind the barrier. The kernel gradient and
  every longer signal use XLA's derivative unchanged. Reverse mode only
  (`jax.jvp` through the ResNet is not supported).
  """
  return _xla_conv_valid(x, kernel)


def _conv_valid_fwd(x, kernel):
  return _xla_conv_valid(x, kernel), (x, kernel)


def _conv_valid_bwd(residuals, g):
  x, kernel = residuals
  taps = kernel.shape[0]
  d_kernel = jax.vjp(lambda k: _xla_conv_valid(x, k), kernel)[1](g)[0]
  if g.shape[1] >= taps:
    d_x = jax.vjp(lambda z: _xla_conv_valid(z, kernel), x)[1](g)[0]
  else:
    flipped = jnp.swapaxes(kernel[::-1], 1, 2)  # [taps, out, in]
    d_x = _xla_conv_valid(
        _pad_time(g, taps - 1, taps - 1, taps), flipped.astype(g.dtype)
    )
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


class _Conv(nn.Module):
  """`nn.Conv` with 'VALID' padding and the same parameters, via `conv1d`.

  Attributes:
    features: output channels.
    kernel_size: taps.
    stride: step between outputs in samples.
    use_bias: add a bias (zeros at initialisation).
    dtype: computation dtype (parameters stay float32).
  """

  features: int
  kernel_size: int
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel',
        _kernel_init,
        (self.kernel_size, x.shape[-1], self.features),
        jnp.float32,
    )
    y = conv1d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,))
      y = y + bias.astype(self.dtype)
    return y


def _conv(
    features: int,
    kernel_size: int,
    stride: int,
    use_bias: bool,
    dtype: Dtype,
    name: str,
) -> _Conv:
  """A 'VALID' 1-D convolution; callers pad with `_pad_same` first."""
  return _Conv(features, kernel_size, stride, use_bias, dtype, name=name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Max over non-overlapping windows of time, `nn.max_pool`'s derivative.

  The forward pass is a reshape and a max; the derivative takes the first
  maximum of each window (as `nn.max_pool`, `torch.nn.MaxPool1d` and
  `jnp.argmax` do), so ties (zeros after a ReLU) route the whole gradient to
  one sample. Much faster on XLA:CPU than `nn.max_pool`'s select-and-scatter.

  Args:
    x: [batch, time, channels], time a multiple of `window`.
    window: window and stride in samples.

  Returns:
    [batch, time / window, channels].
  """
  batch, length, channels = x.shape
  return jnp.max(x.reshape(batch, length // window, window, channels), axis=2)


@max_pool.defjvp
def _max_pool_jvp(window, primals, tangents):
  (x,), (dx,) = primals, tangents
  batch, length, channels = x.shape
  shape = (batch, length // window, window, channels)
  windows = x.reshape(shape)
  first = jnp.argmax(windows, axis=2)[:, :, None, :]
  chosen = jnp.arange(window)[None, None, :, None] == first
  tangent = jnp.sum(jnp.where(chosen, dx.reshape(shape), 0), axis=2)
  return jnp.max(windows, axis=2), tangent


def _norm(
    use_batchnorm: bool, train: bool, dtype: Dtype, name: str
) -> Callable[[jax.Array], jax.Array]:
  """BatchNorm with running statistics unless training, or the identity."""
  if not use_batchnorm:
    return lambda h: h
  # No axis_name: under jit on a mesh the batch axis is already global.
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      name=name,
  )


class PackedDropout(nn.Module):
  """Inverted dropout from `bits`-bit uniforms packed into 32-bit draws.

  `nn.Dropout` draws one 32-bit word per unit; generating those words
  (threefry on CPU, ~13 ns per word on two cores) is most of what dropout
  costs in a ResNet train step on 10-s strips (~15 % of the step, more than
  batch norm). This module splits each 32-bit word into 32 / bits
  independent `bits`-bit uniforms: 8 bits need a quarter of the words.
  Unit i keeps its value when its uniform is below
  `round((1 - rate) * 2**bits)`, so the keep probability is that threshold
  over 2**bits (the rate rounded to a multiple of 2**-bits: 0.2 becomes
  0.19922 at 8 bits, 0.199997 at 16; see `realised_rate`), and kept values
  are divided by that probability, so the expectation is unchanged.
  Different masks from `nn.Dropout` for the same key: choose it per run,
  not mid-training.

  Attributes:
    rate: probability of dropping a unit.
    bits: bits per uniform, 8 or 16.
    deterministic: no dropout (evaluation); may instead be given per call.
    rng_collection: the RNG stream the mask is drawn from.
  """

  rate: float
  bits: int = 8
  deterministic: bool | None = None
  rng_collection: str = 'dropout'

  @nn.compact
  def __call__(
      self, x: jax.Array, deterministic: bool | None = None
  ) -> jax.Array:
    deterministic = nn.merge_param(
        'deterministic', self.deterministic, deterministic
    )
    if deterministic or self.rate == 0.0:
      return x
    keep = _keep_threshold(self.rate, self.bits)
    if keep == 0:
      return jnp.zeros_like(x)
    # Words along the last axis only, so that a batch sharded over devices
    # keeps its sharding in the mask.
    per_word, channels = 32 // self.bits, x.shape[-1]
    words = jax.random.bits(
        self.make_rng(self.rng_collection),
        x.shape[:-1] + (-(-channels // per_word),), jnp.uint32,
    )
    uniforms = jax.lax.bitcast_convert_type(
        words, jnp.dtype(f'uint{self.bits}')
    )  # [..., words, per_word]
    uniforms = uniforms.reshape(x.shape[:-1] + (-1,))[..., :channels]
    scale = 2.0**self.bits / keep  # in x.dtype: bf16 rounds 256/205 to 1.25
    return jnp.where(uniforms < keep, x * jnp.asarray(scale, x.dtype), 0)


def _keep_threshold(rate: float, bits: int) -> int:
  """Uniforms below this integer keep their unit (see `PackedDropout`)."""
  if bits not in (8, 16):
    raise ValueError(f'dropout bits must be 32, 16 or 8, got {bits}')
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'dropout rate must be in [0, 1], got {rate}')
  keep = round((1.0 - rate) * 2**bits)
  if (0.0 < rate and keep == 2**bits) or (rate < 1.0 and keep == 0):
    raise ValueError(
        f'dropout rate {rate} rounds to {round(rate)} at {bits} bits; use'
        ' more bits'
    )
  return keep


def realised_rate(rate: float, bits: int) -> float:
  """The dropout rate `PackedDropout(rate, bits)` draws with (32: exact)."""
  if bits == 32:
    return rate
  return 1.0 - _keep_threshold(rate, bits) / 2**bits


def _dropout(rate: float, bits: int, train: bool) -> nn.Module:
  """`nn.Dropout` for 32 bits per unit, else `PackedDropout`."""
  if bits == 32:
    return nn.Dropout(rate, deterministic=not train)
  _keep_threshold(rate, bits)  # clear errors at trace time
  return PackedDropout(rate, bits, deterministic=not train)


class Stem(nn.Module):
  """First layer: convolution, batch norm, activation.

  Attributes:
    features: output channels (64 in Ribeiro et al.).
    kernel_size: taps of the convolution.
    use_batchnorm: batch norm after the convolution (else it has a bias).
    act: activation.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int
  use_batchnorm: bool = True
  act: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """[batch, time, leads] -> [batch, time, features]."""
    h = _conv(
        self.features,
        self.kernel_size,
        1,
        not self.use_batchnorm,
        self.dtype,
        'conv',
    )(_pad_same(x, self.kernel_size, 1))
    h = _norm(self.use_batchnorm, train, self.dtype, 'norm')(h)
    return self.act(h)


class ResidualBlock(nn.Module):
  """Pre-activation residual block on two streams (Ribeiro et al.'s unit).

  main: conv(k) - BN - act - dropout - conv(k, stride=downsample);
  skip: max-pool(downsample) of the skip stream, then a 1x1 convolution if
  the channel count changes (`skip_pool=True`), or a strided 1x1 convolution
  whenever the shape changes (`skip_pool=False`). Their sum is the new skip
  stream; BN - act - dropout of it is the new main stream.

  Attributes:
    features: output channels.
    kernel_size: taps of both main-path convolutions.
    downsample: stride of the second convolution and of the skip path.
    dropout_rate: probability of dropping a unit (training only).
    dropout_bits: random bits per dropped-or-kept unit: 32 (`nn.Dropout`)
      or 8 / 16 (`PackedDropout`, faster on CPU, rate rounded).
    skip_pool: max-pool the skip stream; if False, downsample it with a
      strided 1x1 convolution instead.
    use_batchnorm: batch norm in the block (else main-path convolutions have
      biases; the skip convolution never has one).
    act: activation.
    dtype: computation dtype.
  """

  features: int
  kernel_size: int
  downsample: int
  dropout_rate: float = 0.2
  dropout_bits: int = 32
  skip_pool: bool = True
  use_batchnorm: bool = True
  act: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, skip: jax.Array, *, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Applies the block.

    Args:
      x: [batch, time, in] main stream (normalised, activated).
      skip: [batch, time, in] skip stream (the previous raw sum).
      train: batch statistics and dropout (needs the 'dropout' stream).

    Returns:
      x, skip: [batch, ceil(time / downsample), features] each.
    """
    d, k = self.downsample, self.kernel_size
    bias = not self.use_batchnorm
    dropout = _dropout(self.dropout_rate, self.dropout_bits, train)

    if self.skip_pool:
      if d > 1:
        skip = max_pool(_pad_same(skip, d, d, -jnp.inf), d)
      if skip.shape[-1] != self.features:
        skip = _conv(self.features, 1, 1, False, self.dtype, 'skip')(skip)
    elif d > 1 or skip.shape[-1] != self.features:
      skip = _conv(self.features, 1, d, False, self.dtype, 'skip')(
          _pad_same(skip, 1, d)
      )

    h = _conv(self.features, k, 1, bias, self.dtype, 'conv1')(
        _pad_same(x, k, 1)
    )
    h = _norm(self.use_batchnorm, train, self.dtype, 'norm1')(h)
    h = dropout(self.act(h))
    h = _conv(self.features, k, d, bias, self.dtype, 'conv2')(
        _pad_same(h, k, d)
    )
    skip = h + skip.astype(h.dtype)
    h = _norm(self.use_batchnorm, train, self.dtype, 'norm2')(skip)
    return dropout(self.act(h)), skip


class ResNet(nn.Module):
  """1-D ResNet classifier (Ribeiro et al. 2020); see the module docstring.

  Call as `model.apply(variables, x)` (inference) or, training,
  `model.apply(variables, x, train=True, mutable=['batch_stats'],
  rngs={'dropout': key})`. `features` and `head` split the network at the
  last convolutional feature map (the GradCAM layer):
  `apply(v, apply(v, x, method='features'), method='head')` equals the
  first output of `apply(v, x)`.

  Parameters: 'stem' (conv, norm), 'blocks_0'.. (conv1, norm1, conv2, norm2,
  skip), 'classifier' (the dense head); `batch_stats` mirrors the norms.
  Every nonlinearity but the skip max-pool is `act`, so `model.clone(act=f)`
  swaps them all (guided backprop) with the same parameters.

  Attributes:
    num_outputs: logits per record (classes or labels).
    filters: channels of the residual blocks.
    stem_filters: channels of the first convolution.
    kernel_size: taps of every non-skip convolution.
    downsample: time-downsampling factor of each block (len(filters) of them).
    dropout_rate: dropout in the blocks (training only), 0.2 as published.
    dropout_bits: 32 draws each unit's mask as `nn.Dropout` does; 8 or 16
      packs several masks into one 32-bit draw (`PackedDropout`: 8 bits
      made the train step on strips 9 % faster on a 2-core Xeon; the rate
      rounded to a multiple of 2**-bits, other masks than 32 bits for the
      same key).
    act: activation, every nonlinearity of the network except the max-pool.
    pool: 'flatten' (as published; the head depends on the input length) or
      'avg' (mean over time).
    skip_pool: max-pool the skip paths; False uses strided 1x1 convolutions.
    num_extra: size of the extra per-record input (age, sex, ...) joined to
      the pooled features; 0 for none.
    use_batchnorm: batch norm after each convolution (else convolutions of
      the main path have biases and there are no `batch_stats`).
    dtype: computation dtype (bfloat16 for mixed precision); parameters and
      the returned logits are float32.
  """

  num_outputs: int
  filters: Sequence[int] = (128, 196, 256, 320)
  stem_filters: int = 64
  kernel_size: int = 17
  downsample: Sequence[int] = (4, 4, 4, 4)
  dropout_rate: float = 0.2
  dropout_bits: int = 32
  act: Callable[[jax.Array], jax.Array] = nn.relu
  pool: str = 'flatten'
  skip_pool: bool = True
  num_extra: int = 0
  use_batchnorm: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    if len(self.filters) != len(self.downsample):
      raise ValueError(
          f'filters {tuple(self.filters)} and downsample '
          f'{tuple(self.downsample)} must have the same length'
      )
    if self.pool not in ('flatten', 'avg'):
      raise ValueError(f'pool must be flatten or avg, got {self.pool!r}')
    self.stem = Stem(
        self.stem_filters,
        self.kernel_size,
        use_batchnorm=self.use_batchnorm,
        act=self.act,
        dtype=self.dtype,
    )
    self.blocks = [
        ResidualBlock(
            features,
            self.kernel_size,
            d,
            dropout_rate=self.dropout_rate,
            dropout_bits=self.dropout_bits,
            skip_pool=self.skip_pool,
            use_batchnorm=self.use_batchnorm,
            act=self.act,
            dtype=self.dtype,
        )
        for features, d in zip(self.filters, self.downsample)
    ]
    self.classifier = nn.Dense(
        self.num_outputs, kernel_init=_kernel_init, dtype=self.dtype
    )

  def _backbone(
      self, x: jax.Array, train: bool
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if x.ndim != 3:
      raise ValueError(f'x must be [batch, time, leads], got {x.shape}')
    h = self.stem(x, train=train)
    aux = {'stem': h}
    skip = h
    for i, block in enumerate(self.blocks):
      h, skip = block(h, skip, train=train)
      aux[f'block{i + 1}'] = h
    aux['features'] = h
    return h, aux

  def _pool(self, features: jax.Array, extra: jax.Array | None) -> jax.Array:
    if self.pool == 'flatten':
      # Time-major: column t * channels + c.
      h = features.reshape(features.shape[0], -1)
    else:
      h = jnp.mean(features, axis=1)
    if self.num_extra:
      if extra is None or extra.shape != (h.shape[0], self.num_extra):
        shape = None if extra is None else extra.shape
        raise ValueError(
            f'extra must be [{h.shape[0]}, {self.num_extra}], got {shape}'
        )
      h = jnp.concatenate([h, extra.astype(h.dtype)], axis=-1)
    elif extra is not None:
      raise ValueError('extra given but num_extra is 0')
    return h

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The last convolutional feature map (the GradCAM target layer).

    Args:
      x: [batch, time, leads] float32 ECGs, mV.
      train: batch statistics and dropout, as in `__call__`.

    Returns:
      [batch, ceil(time / prod(downsample)), filters[-1]] in `dtype`: the
      main stream after the last block (normalised, activated, and with
      dropout when training), what the head pools.
    """
    return self._backbone(x, train)[0]

  def head(
      self,
      features: jax.Array,
      extra: jax.Array | None = None,
      *,
      train: bool = False,
  ) -> jax.Array:
    """Pools the feature map, joins the extras and applies the dense layer.

    Args:
      features: [batch, t', filters[-1]], the output of `features`.
      extra: [batch, num_extra] float32 per-record inputs; required if and
        only if `num_extra > 0`.
      train: accepted for symmetry with `features`; the head has no dropout
        or normalisation, so it changes nothing.

    Returns:
      [batch, num_outputs] float32 logits.
    """
    del train  # The head is the same in training and inference.
    return self.classifier(self._pool(features, extra)).astype(jnp.float32)

  def __call__(
      self,
      x: jax.Array,
      extra: jax.Array | None = None,
      *,
      train: bool = False,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Classifies a batch of ECGs.

    Args:
      x: [batch, time, leads] float32 ECGs, mV (time 600 for a median beat,
        5000 for a 10-s strip at 500 Hz; any length works).
      extra: [batch, num_extra] float32 per-record inputs, or None when
        `num_extra` is 0.
      train: use batch statistics (call with `mutable=['batch_stats']`) and
        dropout (needs the 'dropout' RNG stream); False uses running
        statistics and no dropout.

    Returns:
      logits: [batch, num_outputs] float32.
      aux: dict of intermediates in `dtype`: 'stem' [batch, time,
        stem_filters]; 'block1'.. [batch, time / prod(downsample[:i]),
        filters[i - 1]] (each block's main-stream output, ceil); 'features',
        the last of these; 'pre_logits' [batch, F], the pooled features
        with the extras appended (F = t' * filters[-1] + num_extra when
        flattening, filters[-1] + num_extra when averaging).
    """
    features, aux = self._backbone(x, train)
    pre_logits = self._pool(features, extra)
    aux['pre_logits'] = pre_logits
    return self.classifier(pre_logits).astype(jnp.float32), aux


# The published sizes (6.78 M parameters before the head; the flattened
# 10-s strip gives 20 x 320 = 6400 head inputs per output).
ResNetRibeiro = functools.partial(
    ResNet,
    filters=(128, 196, 256, 320),
    stem_filters=64,
    kernel_size=17,
    downsample=(4, 4, 4, 4),
    dropout_rate=0.2,
    pool='flatten',
)
# Small enough to train on two CPU cores for demonstrations.
ResNetCPU = functools.partial(
    ResNet, stem_filters=16, filters=(32, 48, 64, 80), kernel_size=9
)

# Test-only: runs on [batch, 5000, 12] in milliseconds.
_TinyResNet = functools.partial(
    ResNet, stem_filters=4, filters=(8, 8), downsample=(4, 4), kernel_size=5
)
