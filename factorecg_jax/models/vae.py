"""FactorECG variational auto-encoder (van de Leur et al. 2022), Flax Linen.

The faithful configuration (`FactorECGPaper`) reproduces ecgxai 0.1.1's
`CausalCNNVEncoder` / `CausalCNNVDecoder` as published with
`examples/vae/train_factorecg_vae.yaml`:

* encoder: causal CNN 12 -> 128 channels, 7 blocks with dilations 1..64 (each
  ending in a leaky ReLU), a last block to 64 channels (dilation 128), a max
  over time, and linear heads for the mean and the standard deviation
  (softplus + 1e-4) of 32 latents;
* decoder: linear 32 -> 64, linear 64 -> 64 x 600, causal CNN 64 -> 128
  channels with dilations 128..2, a last block to 12 channels (dilation 1),
  and Gaussian output heads, two dense 7200 -> 7200 layers for the mean and
  the standard deviation (softplus + 1e-4): 108.5 M parameters, as ecgxai.

In the package a positional-argument slip passes each CausalCNN's `forward`
flag into its blocks' `final` slot: the decoder's convolutions are ordinary
ones (not transposed), the encoder's inner blocks end with an extra leaky ReLU
and the decoder's do not; its dropout is accepted but never applied. All of
this is reproduced. `decoder_transpose=True` builds the transposed decoder
convolutions the package meant; at stride 1 a causal transposed convolution
is an ordinary one with its kernel reversed in time, so this changes the
parameterisation (and the PyTorch weight layout), not the function class. Arrays are channels-last, `[batch, 600, 12]`. Dense layers over a
flattened signal flatten it time-major (`t * channels + c`); PyTorch flattens
channel-major, so weights moved between the two are permuted, not changed.

Lean options: `padding='left'` (identical outputs, fewer FLOPs),
`head='conv'` (a 1x1 convolution per time step instead of the two
7200 x 7200 layers), fewer `channels`, and `decoder_transpose=True`.

`params_from_ecgxai` loads ecgxai (PyTorch) weights, e.g. a published
FactorECG checkpoint, into `FactorECGPaper`.
"""

from collections.abc import Callable
from collections.abc import Mapping
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factorecg_jax.models import blocks

Dtype = Any


def reparameterize(
    rng: jax.Array, mu: jax.Array, sd: jax.Array
) -> jax.Array:
  """Draws z = mu + sd * eps with eps ~ N(0, I).

  Args:
    rng: PRNG key.
    mu: [batch, latents] posterior means.
    sd: [batch, latents] posterior standard deviations (> 0).

  Returns:
    [batch, latents] sample, dtype of `mu`.
  """
  eps = jax.random.normal(rng, mu.shape, mu.dtype)
  return mu + eps * sd


def _positive(x: jax.Array, eps: float) -> jax.Array:
  # The softplus and its +eps floor run in float32 even under bf16 compute:
  # 1e-4 is below bf16 resolution near 1.
  return nn.softplus(x.astype(jnp.float32)) + eps


class Encoder(nn.Module):
  """Causal CNN encoder: ECG -> (mu, sd) of the latent posterior.

  Attributes:
    latents: number of latent factors.
    channels: channels of the inner causal blocks.
    depth: number of inner causal blocks.
    reduced_size: channels of the last block (pooled over time).
    kernel_size: taps of every causal convolution.
    softplus_eps: floor added to the softplus of the sd head.
    padding: 'chomp' (as ecgxai) or 'left' (same outputs, cheaper).
    act: activation.
    dtype: computation dtype.
  """

  latents: int = 32
  channels: int = 128
  depth: int = 7
  reduced_size: int = 64
  kernel_size: int = 5
  softplus_eps: float = 1e-4
  padding: str = 'chomp'
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch of ECGs.

    Args:
      x: [batch, time, leads] float32, mV.

    Returns:
      mu, sd: [batch, latents] float32.
    """
    h = blocks.CausalCNN(
        self.channels,
        self.reduced_size,
        self.depth,
        self.kernel_size,
        reverse=False,
        final_act=True,
        padding=self.padding,
        act=self.act,
        dtype=self.dtype,
        name='cnn',
    )(x)
    h = jnp.max(h, axis=1)
    dense = functools.partial(
        blocks.torch_dense, fan_in=self.reduced_size, dtype=self.dtype
    )
    mu = dense(self.latents, name='mean')(h).astype(jnp.float32)
    sd = _positive(dense(self.latents, name='sd')(h), self.softplus_eps)
    return mu, sd


class Decoder(nn.Module):
  """Gaussian decoder: latent z -> (mean, sd) of each ECG sample.

  Attributes:
    length: samples per lead of the output (600 for a median beat).
    leads: output channels.
    in_channels: channels of the signal unflattened from the second linear
      layer (its width is `in_channels * length`).
    channels: channels of the inner causal blocks.
    depth: number of inner causal blocks (dilations halve from 2**depth).
    kernel_size: taps of every causal convolution.
    softplus_eps: floor added to the softplus of the sd head.
    head: 'dense' (two dense layers over the flattened signal, as ecgxai) or
      'conv' (two 1x1 convolutions, per time step).
    transpose: causal transposed convolutions in the inner blocks.
    padding: 'chomp' or 'left'.
    act: activation.
    dtype: computation dtype.
  """

  length: int = 600
  leads: int = 12
  in_channels: int = 64
  channels: int = 128
  depth: int = 7
  kernel_size: int = 5
  softplus_eps: float = 1e-4
  head: str = 'dense'
  transpose: bool = False
  padding: str = 'chomp'
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Decodes latents.

    Args:
      z: [batch, latents] float32.

    Returns:
      mean, sd: [batch, length, leads] float32, mV.
    """
    batch = z.shape[0]
    dense = functools.partial(blocks.torch_dense, dtype=self.dtype)
    h = dense(self.in_channels, fan_in=z.shape[-1], name='linear1')(z)
    h = dense(
        self.in_channels * self.length, fan_in=self.in_channels, name='linear2'
    )(h)
    h = h.reshape(batch, self.length, self.in_channels)
    h = blocks.CausalCNN(
        self.channels,
        self.leads,
        self.depth,
        self.kernel_size,
        reverse=True,
        final_act=False,
        transpose=self.transpose,
        padding=self.padding,
        act=self.act,
        dtype=self.dtype,
        name='cnn',
    )(h)
    if self.head == 'dense':
      flat = h.reshape(batch, self.length * self.leads)
      size = self.length * self.leads
      mean = dense(size, fan_in=size, name='mean')(flat)
      sd = dense(size, fan_in=size, name='sd')(flat)
    elif self.head == 'conv':
      mean = dense(self.leads, fan_in=self.leads, name='mean')(h)
      sd = dense(self.leads, fan_in=self.leads, name='sd')(h)
    else:
      raise ValueError(f'head must be dense or conv, got {self.head!r}')
    shape = (batch, self.length, self.leads)
    mean = mean.reshape(shape).astype(jnp.float32)
    sd = _positive(sd.reshape(shape), self.softplus_eps)
    return mean, sd


class VAE(nn.Module):
  """FactorECG VAE; defaults are the published (ecgxai 0.1.1) configuration.

  Call as `model.apply({'params': p}, x, rngs={'sample': key})`, or with
  `sample=False` (z = mu, no key). `encode`/`decode` are usable alone via
  `model.apply(variables, x, method='encode')`.

  Attributes:
    latents: number of latent factors (32).
    leads: ECG leads, input and output channels (12).
    length: samples per lead (600).
    channels: channels of the encoder's and decoder's inner blocks (128).
    depth: inner blocks per causal CNN (7).
    kernel_size: taps of every causal convolution (5).
    reduced_size: encoder output channels before pooling (64).
    decoder_in_channels: channels the decoder unflattens z into (64).
    softplus_eps: floor added to every softplus sd (1e-4).
    head: decoder output head, 'dense' (paper) or 'conv' (1x1, lean).
    padding: causal padding, 'chomp' (as ecgxai) or 'left' (same outputs).
    decoder_transpose: transposed convolutions in the decoder's inner blocks
      (what ecgxai intended; its published code builds ordinary ones).
    act: activation of the causal blocks (leaky ReLU, slope 0.01).
    dtype: computation dtype (bfloat16 for mixed precision); parameters and
      returned means/sds are float32.
  """

  latents: int = 32
  leads: int = 12
  length: int = 600
  channels: int = 128
  depth: int = 7
  kernel_size: int = 5
  reduced_size: int = 64
  decoder_in_channels: int = 64
  softplus_eps: float = 1e-4
  head: str = 'dense'
  padding: str = 'chomp'
  decoder_transpose: bool = False
  act: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  dtype: Dtype = jnp.float32

  def setup(self):
    self.encoder = Encoder(
        latents=self.latents,
        channels=self.channels,
        depth=self.depth,
        reduced_size=self.reduced_size,
        kernel_size=self.kernel_size,
        softplus_eps=self.softplus_eps,
        padding=self.padding,
        act=self.act,
        dtype=self.dtype,
    )
    self.decoder = Decoder(
        length=self.length,
        leads=self.leads,
        in_channels=self.decoder_in_channels,
        channels=self.channels,
        depth=self.depth,
        kernel_size=self.kernel_size,
        softplus_eps=self.softplus_eps,
        head=self.head,
        transpose=self.decoder_transpose,
        padding=self.padding,
        act=self.act,
        dtype=self.dtype,
    )

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ECG [batch, length, leads] (mV) -> mu, sd [batch, latents]."""
    return self.encoder(x)

  def decode(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Latents [batch, latents] -> mean, sd [batch, length, leads] (mV)."""
    return self.decoder(z)

  def __call__(
      self, x: jax.Array, *, sample: bool = True
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encodes, samples z (or takes z = mu) and decodes.

    Args:
      x: [batch, length, leads] float32 ECGs, mV.
      sample: draw z from the posterior with the 'sample' RNG stream; if
        False, z = mu and no key is needed.

    Returns:
      recon_mean: [batch, length, leads] float32 reconstruction (mV).
      aux: dict with 'mu', 'sd', 'z' ([batch, latents]) and 'recon_mean',
        'recon_sd' ([batch, length, leads]).
    """
    mu, sd = self.encode(x)
    z = reparameterize(self.make_rng('sample'), mu, sd) if sample else mu
    recon_mean, recon_sd = self.decode(z)
    aux = dict(mu=mu, sd=sd, z=z, recon_mean=recon_mean, recon_sd=recon_sd)
    return recon_mean, aux


# The published model, ecgxai 0.1.1 + examples/vae/train_factorecg_vae.yaml.
FactorECGPaper = functools.partial(
    VAE,
    latents=32,
    channels=128,
    depth=7,
    kernel_size=5,
    reduced_size=64,
    decoder_in_channels=64,
    softplus_eps=1e-4,
    head='dense',
    padding='chomp',
    decoder_transpose=False,
)
# Same function and parameters, causal padding without the discarded tail.
FactorECGPaperLeftPad = functools.partial(FactorECGPaper, padding='left')
# ecgxai's decoder with the transposed convolutions it meant to build.
FactorECGTransposed = functools.partial(
    FactorECGPaper, padding='left', decoder_transpose=True
)
# Lean: 1x1 output heads instead of the two 7200 x 7200 layers (4.8 M params).
FactorECGConvHead = functools.partial(
    FactorECGPaper, padding='left', head='conv'
)
# Leaner: also half the channels (3.1 M parameters).
FactorECGLean = functools.partial(FactorECGConvHead, channels=64)

# Test-only: runs on [batch, 600, 12] in milliseconds.
_TinyVAE = functools.partial(
    VAE,
    latents=4,
    channels=8,
    depth=2,
    kernel_size=3,
    reduced_size=8,
    decoder_in_channels=4,
    head='conv',
    padding='left',
)


def _copy(value: Any) -> np.ndarray:
  # A copy: state_dict() tensors share memory with the live model, which a
  # later optimizer step would change under the converted parameters.
  return np.asarray(value, np.float32).copy()


def _ecgxai_conv(state: Mapping[str, Any], prefix: str) -> dict:
  # PyTorch Conv1d weight [out, in, k] -> [k, in, out].
  return {
      'kernel': _copy(state[prefix + '.weight']).transpose(2, 1, 0),
      'bias': _copy(state[prefix + '.bias']),
  }


def _ecgxai_linear(state: Mapping[str, Any], prefix: str) -> dict:
  # PyTorch Linear weight [out, in] -> [in, out].
  return {
      'kernel': _copy(state[prefix + '.weight']).T,
      'bias': _copy(state[prefix + '.bias']),
  }


def _ecgxai_cnn(state: Mapping[str, Any], prefix: str) -> dict:
  pattern = re.compile(
      re.escape(prefix) + r'\.network\.(\d+)\.causal\.0\.weight'
  )
  depth = max(int(m[1]) for k in state if (m := pattern.fullmatch(k)))
  params = {}
  for i in range(depth + 1):
    p = f'{prefix}.network.{i}'
    block = {
        'conv1': _ecgxai_conv(state, p + '.causal.0'),
        'conv2': _ecgxai_conv(state, p + '.causal.3'),
    }
    if p + '.upordownsample.weight' in state:
      block['residual'] = _ecgxai_conv(state, p + '.upordownsample')
    params[f'block{i}'] = block
  return params


def _time_major(channels: int, length: int) -> np.ndarray:
  """`perm` such that flat_time_major = flat_channel_major[perm]."""
  return np.arange(channels * length).reshape(channels, length).T.ravel()


def params_from_ecgxai(
    encoder_state: Mapping[str, Any],
    decoder_state: Mapping[str, Any],
    *,
    length: int = 600,
) -> dict:
  """Converts ecgxai CausalCNNVEncoder/VDecoder weights to `VAE` params.

  For `VAE(head='dense', decoder_transpose=False)` with the matching sizes
  (e.g. `FactorECGPaper`); the model then computes what ecgxai computes, on
  channels-last arrays. PyTorch views the decoder's second linear layer as
  [channels, time] and flattens its [leads, time] output channel-major; the
  rows and columns concerned are permuted to the time-major layout here.

  Args:
    encoder_state: the encoder's `state_dict()` (arrays or CPU tensors).
    decoder_state: the decoder's `state_dict()`.
    length: samples per lead (ecgxai's decoder `width`).

  Returns:
    The 'params' collection, a nested dict of float32 numpy arrays.
  """
  encoder = {
      'cnn': _ecgxai_cnn(encoder_state, 'network.0'),
      'mean': _ecgxai_linear(encoder_state, 'linear_mean'),
      'sd': _ecgxai_linear(encoder_state, 'linear_sd.0'),
  }
  linear2 = _ecgxai_linear(decoder_state, 'linear2')
  perm = _time_major(linear2['bias'].size // length, length)
  linear2 = {
      'kernel': linear2['kernel'][:, perm],
      'bias': linear2['bias'][perm],
  }
  decoder = {
      'linear1': _ecgxai_linear(decoder_state, 'linear1'),
      'linear2': linear2,
      'cnn': _ecgxai_cnn(decoder_state, 'causal_cnn'),
  }
  for name, prefix in (('mean', 'linear_mean'), ('sd', 'linear_sd.0')):
    head = _ecgxai_linear(decoder_state, prefix)
    perm = _time_major(head['bias'].size // length, length)
    decoder[name] = {
        'kernel': head['kernel'][perm][:, perm],
        'bias': head['bias'][perm],
    }
  return {'encoder': encoder, 'decoder': decoder}
