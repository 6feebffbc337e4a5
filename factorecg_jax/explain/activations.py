"""Activations with modified backward passes for attribution methods.

Each function here computes the ordinary ReLU (or the wrapped activation) in
the forward pass and replaces only its vector-Jacobian product, so that
`model.clone(act=f)` turns the model's ordinary gradient into the backward
rule of an attribution method while the parameters stay untouched:

* `guided_relu`: Guided Backpropagation (Springenberg et al. 2015, eq. 6),
  g_in = relu'(h) * (g > 0) * g.
* `deconv_relu`: Deconvolution (Zeiler & Fergus 2014), g_in = relu(g); the
  sign of the forward input is ignored.
* `deeplift_rescale(base)`: DeepLIFT's Rescale rule (Shrikumar et al. 2017,
  sec. 3.5.1). The network is run on the concatenation [x; x0] of inputs
  and baselines along the batch axis, so the activation sees both halves;
  its backward pass multiplies the incoming gradient by
  (base(h) - base(h0)) / (h - h0) (the ordinary derivative where
  |h - h0| < eps).

Only what `act` computes is modified: a max-pool elsewhere in the network
(the skip path of `resnet.ResNet` with `skip_pool=True`) keeps its ordinary
gradient under all three rules.
"""

from collections.abc import Callable
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]


@jax.custom_vjp
def guided_relu(h: jax.Array) -> jax.Array:
  """ReLU whose backward pass is Guided Backpropagation's.

  Args:
    h: pre-activations, any shape.

  Returns:
    relu(h); the VJP of a cotangent g is relu'(h) * (g > 0) * g.
  """
  return nn.relu(h)


def _guided_fwd(h):
  return nn.relu(h), h


def _guided_bwd(h, g):
  return (jnp.where((h > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(h: jax.Array) -> jax.Array:
  """ReLU whose backward pass is the deconvolution (DeconvNet) rule.

  Args:
    h: pre-activations, any shape.

  Returns:
    relu(h); the VJP of a cotangent g is relu(g), whatever the sign of h.
  """
  return nn.relu(h)


def _deconv_fwd(h):
  return nn.relu(h), None


def _deconv_bwd(_, g):
  return (nn.relu(g),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rescale(base: Activation, eps: float, h: jax.Array) -> jax.Array:
  return base(h)


def _rescale_fwd(base, eps, h):
  return base(h), h


def _rescale_bwd(base, eps, h, g):
  n = h.shape[0] // 2
  hx, h0 = h[:n], h[n:]
  # Elementwise derivative of `base` at the input half (the fallback where
  # input and baseline agree, as Captum's `nonlinear` rule does).
  _, slope = jax.jvp(base, (hx,), (jnp.ones_like(hx),))
  delta_in = hx - h0
  close = jnp.abs(delta_in) < eps
  ratio = (base(hx) - base(h0)) / jnp.where(close, 1.0, delta_in)
  multiplier = jnp.where(close, slope, ratio)
  # Both halves get the input half's multiplier; attributions only read the
  # input half (the baseline half receives no cotangent from the outputs).
  return (g * jnp.concatenate([multiplier, multiplier], axis=0),)


_rescale.defvjp(_rescale_fwd, _rescale_bwd)


def deeplift_rescale(
    base: Activation = nn.relu, eps: float = 1e-10
) -> Activation:
  """An elementwise activation with DeepLIFT's Rescale rule as its VJP.

  The returned function must be applied to a batch [x; x0] (inputs, then
  their baselines, in equal numbers along axis 0), as the network does when
  it is run on `jnp.concatenate([x, x0])`; batch-independent layers
  (convolutions, inference-mode batch norm, dense) keep the halves apart.

  Args:
    base: the elementwise activation being explained (the model's `act`).
    eps: |h - h0| below which the ordinary derivative is used (Captum's
      default 1e-10).

  Returns:
    act(h) = base(h); its VJP multiplies a cotangent by
    (base(h) - base(h0)) / (h - h0), h and h0 the two halves of the batch.
  """
  return functools.partial(_rescale, base, eps)
