"""Gradient-based attribution methods for ECG classifiers, in pure JAX.

Nine methods and a random control, each a function of a model wrapped as an
`Explainable`, its variables, a batch of ECGs and the outputs to explain:

  saliency, deconvolution, guided_backprop, gradient_shap, smoothgrad,
  input_x_gradient, deeplift, integrated_gradients, gradcam; random.

Common signature::

  method(fn, params, x, target=None, settings=None, *, key=None,
         baselines=None, chunk_size=None) -> attributions

* `fn`: an `Explainable` (`from_flax(model)` for a `resnet.ResNet`).
* `params`: what `fn` takes; for `from_flax` the full variables dict
  {'params': ..., 'batch_stats': ...}, so that sub-trees can be replaced
  (cascading parameter randomisation).
* `x`: [B, T, L] float32 ECGs (channels-last, mV).
* `target`: an int (the same output for every record), an int array [B]
  (one output per record), or None for ALL K outputs in one call (a batched
  VJP with K one-hot cotangents, which Captum cannot do).
* Returns float32 [B, T, L] for int targets, [B, K, T, L] for target=None.

Every function is jitted with its settings (frozen dataclasses below, their
defaults Captum 0.9's) and `chunk_size` static, and deterministic for a
given key. Integrated Gradients, SmoothGrad and GradientSHAP evaluate their
n interpolation / noise samples `chunk_size` at a time (a `lax.scan` over
chunks accumulating a sum), so memory grows with chunk_size * B, not n * B;
the result does not depend on chunk_size (sample i always uses
`jax.random.split(key, n)[i]`).

Rules and conventions:
* Guided Backprop and Deconvolution swap in the custom-VJP ReLUs of
  `activations` through the model's `act`; the skip-path max-pool (if any)
  keeps its ordinary gradient, as in Captum (which hooks nn.ReLU only).
* DeepLIFT (Rescale) runs the network once on [x; x0] (inference batch norm
  is per-example, so this is exact) with `activations.deeplift_rescale`.
  Max-pooling uses its ordinary gradient at the input (the rule is not
  DeepLIFT's); where the pooled positions or values differ between input
  and baseline, summation-to-delta (completeness) no longer holds. With
  `ResNet(skip_pool=False)` every nonlinearity is `act` and completeness is
  exact up to rounding; `completeness_error` measures it.
* GradCAM uses `fn.features` (the last convolutional map, [B, T', C]) and
  `fn.head`: weights = mean over time of d out / d features, map =
  sum_c w_c A_c, optional ReLU, then linear upsampling to T with half-pixel
  alignment (PyTorch `F.interpolate(mode='linear', align_corners=False)`,
  as Captum's `LayerAttribution.interpolate(..., 'linear')`; source
  position (t + 0.5) T' / T - 0.5 clamped to [0, T' - 1]). The map is the
  same for every lead: [B, T, L] holds L copies.
* GradientSHAP is SmoothGrad over expected gradients, as Captum's: sample
  s draws a baseline row, Gaussian noise e and alpha ~ U(0, 1) per record,
  takes the gradient at b + alpha (x + e - b) and, with multiply_by_inputs,
  multiplies it by (x + e - b) (Captum's convention; identical to
  (x - b) when stdev = 0, its default).
* `random` is U[0, 1) noise of the attribution's shape (a control).

Also: `attribute(name, ...)` dispatches by name; `explain_all(...)` runs a
preset (`presets.PRESETS`) in one jitted call sharing backward passes;
`completeness_error` gives |sum attr - (f(x) - f(x0))| / |f(x) - f(x0)|;
`quadrature` the IG nodes; `smoothgrad(noise=...)` and
`gradient_shap(draws=...)` accept explicit random draws (to reproduce
another library's). With target=None a chunk holds K * chunk_size * B
backward passes (vmapped), so lower chunk_size as K grows. `fn` is a static
jit argument: build it once (`from_flax`) and reuse it, or every call
compiles again.
"""

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from factorecg_jax.explain import activations

Params = Any
Target = int | jax.Array | np.ndarray | None
Activation = Callable[[jax.Array], jax.Array]

METHOD_NAMES = (
    'saliency',
    'deconvolution',
    'guided_backprop',
    'gradient_shap',
    'smoothgrad',
    'input_x_gradient',
    'deeplift',
    'integrated_gradients',
    'gradcam',
)
RANDOM = 'random'
RIEMANN_METHODS = (
    'riemann_left',
    'riemann_right',
    'riemann_middle',
    'riemann_trapezoid',
)
NT_TYPES = ('smoothgrad', 'smoothgrad_sq', 'vargrad')


class Explainable(NamedTuple):
  """A model as the attribution methods see it.

  Attributes:
    forward: (params, x [B, T, L], act=None) -> [B, K] float32 outputs;
      `act`, if given, replaces every activation of the model (same params).
      Records must not interact (inference mode).
    features: (params, x) -> [B, T', C], the GradCAM layer, or None.
    head: (params, features) -> [B, K], with head(features(x)) equal to
      forward(x), or None.
    act: the model's own activation (the `base` of DeepLIFT's Rescale rule).
  """

  forward: Callable[..., jax.Array]
  features: Callable[..., jax.Array] | None = None
  head: Callable[..., jax.Array] | None = None
  act: Activation = nn.relu


def from_flax(model: nn.Module) -> Explainable:
  """Wraps a Linen classifier such as `resnet.ResNet` for the methods.

  The functions run the model in inference mode (`train=False`, running
  batch statistics) and take the full variables dict
  ({'params': ..., 'batch_stats': ...}) as `params`.

  Args:
    model: a Linen module whose `__call__(x, train=False)` returns logits
      [B, K] (or a tuple whose first element they are), with an `act` field
      and, for GradCAM, `features` and `head` methods (as `resnet.ResNet`).

  Returns:
    The `Explainable`.

  Raises:
    ValueError: the model needs extra per-record inputs (`num_extra > 0`).
  """
  if getattr(model, 'num_extra', 0):
    raise ValueError('models with num_extra > 0 are not supported')

  def forward(params, x, act=None):
    m = model if act is None else model.clone(act=act)
    out = m.apply(params, x, train=False)
    return (out[0] if isinstance(out, tuple) else out).astype(jnp.float32)

  features = head = None
  if hasattr(model, 'features') and hasattr(model, 'head'):

    def features(params, x):
      return model.apply(params, x, method='features').astype(jnp.float32)

    def head(params, a):
      return model.apply(params, a, method='head').astype(jnp.float32)

  return Explainable(forward, features, head, getattr(model, 'act', nn.relu))


# Settings: frozen (hashable, static under jit); defaults are Captum 0.9's.


@dataclasses.dataclass(frozen=True)
class SaliencySettings:
  """Saliency: the input gradient.

  Attributes:
    absolute: return |gradient| (Captum's `abs=True` default).
  """

  absolute: bool = True


@dataclasses.dataclass(frozen=True)
class SmoothGradSettings:
  """SmoothGrad: saliency averaged over noisy copies of the input.

  Attributes:
    n_samples: noisy copies (Captum NoiseTunnel `nt_samples=5`).
    stdev: noise standard deviation (Captum `stdevs=1.0`), absolute or, if
      `relative`, a fraction of each record's range max(x) - min(x).
    relative: scale `stdev` by the per-record input range.
    absolute: |gradient| per sample (Captum's Saliency under NoiseTunnel).
    nt_type: 'smoothgrad' (mean), 'smoothgrad_sq' (mean of squares) or
      'vargrad' (variance), as Captum's NoiseTunnel.
  """

  n_samples: int = 5
  stdev: float = 1.0
  relative: bool = False
  absolute: bool = True
  nt_type: str = 'smoothgrad'


@dataclasses.dataclass(frozen=True)
class GradientShapSettings:
  """GradientSHAP (expected gradients with input noise).

  Attributes:
    n_samples: samples per record (Captum `n_samples=5`).
    stdev: Gaussian input-noise standard deviation (Captum `stdevs=0.0`).
    multiply_by_inputs: multiply by (input - baseline) (Captum default).
  """

  n_samples: int = 5
  stdev: float = 0.0
  multiply_by_inputs: bool = True


@dataclasses.dataclass(frozen=True)
class IntegratedGradientsSettings:
  """Integrated Gradients (Sundararajan et al. 2017, eq. 1 and 3).

  Attributes:
    n_steps: quadrature nodes (Captum `n_steps=50`).
    method: 'gausslegendre' (Captum default) or one of RIEMANN_METHODS
      (Captum's nodes and step sizes; trapezoid: steps 1/n, halved at both
      ends).
    multiply_by_inputs: multiply the path integral by (x - x0).
  """

  n_steps: int = 50
  method: str = 'gausslegendre'
  multiply_by_inputs: bool = True


@dataclasses.dataclass(frozen=True)
class DeepLiftSettings:
  """DeepLIFT with the Rescale rule.

  Attributes:
    multiply_by_inputs: (x - x0) * multipliers (Captum default), else the
      multipliers.
    eps: |h - h0| below which the ordinary derivative is used.
  """

  multiply_by_inputs: bool = True
  eps: float = 1e-10


@dataclasses.dataclass(frozen=True)
class GradCamSettings:
  """GradCAM on `fn.features`.

  Attributes:
    relu: ReLU of the map (Captum LayerGradCam `relu_attributions=False`).
  """

  relu: bool = False


@dataclasses.dataclass(frozen=True)
class RandomSettings:
  """The random control: U[low, high) noise."""

  low: float = 0.0
  high: float = 1.0


DEFAULT_SETTINGS = {
    'saliency': SaliencySettings(),
    'deconvolution': None,
    'guided_backprop': None,
    'gradient_shap': GradientShapSettings(),
    'smoothgrad': SmoothGradSettings(),
    'input_x_gradient': None,
    'deeplift': DeepLiftSettings(),
    'integrated_gradients': IntegratedGradientsSettings(),
    'gradcam': GradCamSettings(),
    RANDOM: RandomSettings(),
}


# Shared pieces.


def _targets(target: Target, batch: int) -> jax.Array | None:
  if target is None:
    return None
  return jnp.broadcast_to(jnp.asarray(target, jnp.int32), (batch,))


def _baselines(baselines, x: jax.Array) -> jax.Array:
  """None -> zeros; [T, L] or [B, T, L] -> [B, T, L]."""
  if baselines is None:
    return jnp.zeros_like(x)
  return jnp.broadcast_to(jnp.asarray(baselines, jnp.float32), x.shape)


def _vjp_targets(
    f: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    target: jax.Array | None,
) -> jax.Array:
  """d f(x)[n, target[n]] / d x[n]: [N, ...], or [N, K, ...] for all K.

  Rows of f must be independent (row n of the output depends on row n of
  x only), so one VJP of a one-hot cotangent gives every row's gradient.
  """
  y, vjp = jax.vjp(f, x)
  k = y.shape[-1]
  if target is not None:
    return vjp(jax.nn.one_hot(target, k, dtype=y.dtype))[0]
  cotangents = jnp.broadcast_to(
      jnp.eye(k, dtype=y.dtype)[:, None, :], (k,) + y.shape
  )
  grads = jax.vmap(lambda ct: vjp(ct)[0])(cotangents)
  return jnp.moveaxis(grads, 0, 1)


def _per_target(a: jax.Array, target: jax.Array | None) -> jax.Array:
  """[N, T, L] -> [N, 1, T, L] when all targets are explained."""
  return a if target is not None else a[:, None]


def _tile_targets(target: jax.Array | None, copies: int):
  return None if target is None else jnp.tile(target, copies)


def _chunked_sum(
    chunk_fn: Callable[[Any, jax.Array], Any],
    xs: Any,
    num: int,
    chunk_size: int | None,
) -> Any:
  """sum_i over num samples of chunk_fn, chunk_size samples at a time.

  Args:
    chunk_fn: (xs_chunk, valid [c] bool) -> pytree, the sum over the chunk
      of the samples' contributions, ignoring invalid (padding) samples.
    xs: pytree of per-sample inputs, leading axis num.
    num: number of samples.
    chunk_size: samples per chunk; None for all at once.

  Returns:
    The sum over all chunks.
  """
  c = num if chunk_size is None else max(1, min(int(chunk_size), num))
  n_chunks = -(-num // c)
  pad = n_chunks * c - num
  valid = jnp.arange(n_chunks * c) < num
  if n_chunks == 1:
    return chunk_fn(xs, valid)

  def split(a):
    a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    return a.reshape((n_chunks, c) + a.shape[1:])

  xs = jax.tree.map(split, xs)
  valid = valid.reshape(n_chunks, c)
  init = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(chunk_fn, jax.tree.map(lambda a: a[0], xs), valid[0]),
  )

  def body(carry, chunk):
    out = chunk_fn(*chunk)
    return jax.tree.map(jnp.add, carry, out), None

  total, _ = jax.lax.scan(body, init, (xs, valid))
  return total


def _weighted_sum(w: jax.Array, g: jax.Array) -> jax.Array:
  """sum_c w[c] g[c] over the leading axis."""
  return jnp.tensordot(w.astype(g.dtype), g, axes=1)


def quadrature(n_steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Integrated-gradients nodes and weights on [0, 1], as Captum's.

  Args:
    n_steps: number of nodes.
    method: 'gausslegendre' or one of RIEMANN_METHODS.

  Returns:
    alphas, weights: [n_steps] float64 each.

  Raises:
    ValueError: unknown method.
  """
  n = int(n_steps)
  if method == 'gausslegendre':
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return 0.5 * (1.0 + nodes), 0.5 * weights
  if method not in RIEMANN_METHODS:
    raise ValueError(f'unknown integration method {method!r}')
  if n < 2:
    raise ValueError('Riemann sums need n_steps > 1')
  weights = np.full(n, 1.0 / n)
  if method == 'riemann_trapezoid':
    weights[[0, -1]] /= 2
    alphas = np.linspace(0.0, 1.0, n)
  elif method == 'riemann_left':
    alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
  elif method == 'riemann_middle':
    alphas = np.linspace(0.5 / n, 1.0 - 0.5 / n, n)
  else:
    alphas = np.linspace(1.0 / n, 1.0, n)
  return alphas, weights


def _upsample_linear(cam: jax.Array, length: int) -> jax.Array:
  """[..., T'] -> [..., length]; half-pixel linear (align_corners=False)."""
  t_in = cam.shape[-1]
  src = (np.arange(length) + 0.5) * (t_in / length) - 0.5
  src = np.clip(src, 0.0, t_in - 1)
  i0 = np.floor(src).astype(np.int32)
  i1 = np.minimum(i0 + 1, t_in - 1)
  lam = jnp.asarray(src - i0, cam.dtype)
  return cam[..., i0] * (1.0 - lam) + cam[..., i1] * lam


# Cores (jitted; fn, settings and chunk_size static).

_STATIC = ('fn', 'settings', 'chunk_size')


def _gradient(fn, params, x, target, act=None):
  return _vjp_targets(lambda z: fn.forward(params, z, act), x, target)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _saliency(fn, params, x, target, *, settings, chunk_size=None):
  del chunk_size
  g = _gradient(fn, params, x, target)
  return jnp.abs(g) if settings.absolute else g


@functools.partial(jax.jit, static_argnames=_STATIC)
def _input_x_gradient(fn, params, x, target, *, settings, chunk_size=None):
  del settings, chunk_size
  return _per_target(x, target) * _gradient(fn, params, x, target)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _guided_backprop(fn, params, x, target, *, settings, chunk_size=None):
  del settings, chunk_size
  return _gradient(fn, params, x, target, activations.guided_relu)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _deconvolution(fn, params, x, target, *, settings, chunk_size=None):
  del settings, chunk_size
  return _gradient(fn, params, x, target, activations.deconv_relu)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _deeplift(fn, params, x, target, x0, *, settings, chunk_size=None):
  del chunk_size
  act = activations.deeplift_rescale(fn.act, settings.eps)
  n = x.shape[0]

  def f(z):
    return fn.forward(params, jnp.concatenate([z, x0]), act)[:n]

  multipliers = _vjp_targets(f, x, target)
  if settings.multiply_by_inputs:
    return _per_target(x - x0, target) * multipliers
  return multipliers


@functools.partial(jax.jit, static_argnames=_STATIC)
def _integrated_gradients(fn, params, x, target, x0, *, settings, chunk_size):
  alphas, weights = quadrature(settings.n_steps, settings.method)
  n = x.shape[0]

  def chunk_fn(xs, valid):
    a, w = xs
    c = a.shape[0]
    points = x0[None] + a[:, None, None, None] * (x - x0)[None]
    g = _gradient(
        fn,
        params,
        points.reshape((c * n,) + x.shape[1:]),
        _tile_targets(target, c),
    )
    g = g.reshape((c, n) + g.shape[1:])
    return _weighted_sum(jnp.where(valid, w, 0.0), g)

  xs = (jnp.asarray(alphas, jnp.float32), jnp.asarray(weights, jnp.float32))
  total = _chunked_sum(chunk_fn, xs, settings.n_steps, chunk_size)
  if settings.multiply_by_inputs:
    return _per_target(x - x0, target) * total
  return total


def _noise_scale(x: jax.Array, settings: SmoothGradSettings) -> jax.Array:
  """[B, 1, 1] noise standard deviation per record."""
  if settings.relative:
    spread = jnp.max(x, axis=(1, 2)) - jnp.min(x, axis=(1, 2))
    return (settings.stdev * spread)[:, None, None]
  return jnp.full((x.shape[0], 1, 1), settings.stdev, x.dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _smoothgrad(fn, params, x, target, key, noise, *, settings, chunk_size):
  n = x.shape[0]
  scale = _noise_scale(x, settings)
  if noise is None:
    xs = jax.random.split(key, settings.n_samples)
  else:
    xs = noise
  num = xs.shape[0]

  def chunk_fn(items, valid):
    c = items.shape[0]
    if noise is None:
      eps = jax.vmap(lambda k: scale * jax.random.normal(k, x.shape))(items)
    else:
      eps = items
    points = (x[None] + eps).reshape((c * n,) + x.shape[1:])
    g = _gradient(fn, params, points, _tile_targets(target, c))
    g = g.reshape((c, n) + g.shape[1:])
    if settings.absolute:
      g = jnp.abs(g)
    w = valid.astype(g.dtype)
    return _weighted_sum(w, g), _weighted_sum(w, g * g)

  total, total_sq = _chunked_sum(chunk_fn, xs, num, chunk_size)
  mean, mean_sq = total / num, total_sq / num
  if settings.nt_type == 'smoothgrad':
    return mean
  if settings.nt_type == 'smoothgrad_sq':
    return mean_sq
  return mean_sq - mean * mean


class GradientShapDraws(NamedTuple):
  """Explicit random draws of GradientSHAP (to reproduce another library's).

  Attributes:
    baseline_index: [S, B] int32 rows of the baseline set.
    noise: [S, B, T, L] float32 input noise (already scaled).
    alpha: [S, B] float32 interpolation coefficients in [0, 1].
  """

  baseline_index: jax.Array
  noise: jax.Array
  alpha: jax.Array


def gradient_shap_draws(
    key: jax.Array,
    x: jax.Array,
    num_baselines: int,
    settings: GradientShapSettings | None = None,
) -> GradientShapDraws:
  """The draws `gradient_shap` makes from `key` (sample s uses split s).

  Args:
    key: PRNG key.
    x: [B, T, L] inputs.
    num_baselines: M, rows of the baseline set.
    settings: n_samples and stdev; defaults if None.

  Returns:
    GradientShapDraws with S = settings.n_samples.
  """
  settings = settings or GradientShapSettings()
  keys = jax.random.split(key, settings.n_samples)
  return jax.vmap(lambda k: _shap_draw(k, x.shape, num_baselines, settings))(
      keys
  )


def _shap_draw(key, shape, num_baselines, settings) -> GradientShapDraws:
  k_index, k_noise, k_alpha = jax.random.split(key, 3)
  return GradientShapDraws(
      jax.random.randint(k_index, shape[:1], 0, num_baselines),
      settings.stdev * jax.random.normal(k_noise, shape),
      jax.random.uniform(k_alpha, shape[:1]),
  )


@functools.partial(jax.jit, static_argnames=_STATIC)
def _gradient_shap(
    fn, params, x, target, baseline_set, key, draws, *, settings, chunk_size
):
  n = x.shape[0]
  m = baseline_set.shape[0]
  xs = jax.random.split(key, settings.n_samples) if draws is None else draws
  num = jax.tree.leaves(xs)[0].shape[0]

  def chunk_fn(items, valid):
    if draws is None:
      d = jax.vmap(lambda k: _shap_draw(k, x.shape, m, settings))(items)
    else:
      d = items
    c = d.alpha.shape[0]
    b = baseline_set[d.baseline_index]  # [c, B, T, L]
    delta = x[None] + d.noise - b
    points = b + d.alpha[:, :, None, None] * delta
    g = _gradient(
        fn,
        params,
        points.reshape((c * n,) + x.shape[1:]),
        _tile_targets(target, c),
    )
    g = g.reshape((c, n) + g.shape[1:])
    if settings.multiply_by_inputs:
      g = (delta if target is not None else delta[:, :, None]) * g
    return _weighted_sum(valid.astype(g.dtype), g)

  return _chunked_sum(chunk_fn, xs, num, chunk_size) / num


@functools.partial(jax.jit, static_argnames=_STATIC)
def _gradcam(fn, params, x, target, *, settings, chunk_size=None):
  del chunk_size
  a = fn.features(params, x)
  g = _vjp_targets(lambda z: fn.head(params, z), a, target)
  return _cam_from(a, g, target, x.shape, settings)


def _cam_from(a, g, target, shape, settings):
  """GradCAM map [B, (K,) T, L] from features a and their gradients g."""
  a = _per_target(a, target)  # [B, (1,) T', C]
  weights = jnp.mean(g, axis=-2, keepdims=True)
  cam = jnp.sum(weights * a, axis=-1)  # [B, (K,) T']
  if settings.relu:
    cam = nn.relu(cam)
  cam = _upsample_linear(cam, shape[1])
  return jnp.broadcast_to(cam[..., None], cam.shape + (shape[2],))


@functools.partial(jax.jit, static_argnames=('num_outputs', 'settings'))
def _random(x, key, *, num_outputs, settings):
  shape = x.shape if num_outputs is None else (
      (x.shape[0], num_outputs) + x.shape[1:]
  )
  return jax.random.uniform(
      key, shape, jnp.float32, settings.low, settings.high
  )


# Public entry points.


def _prepare(x):
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 3:
    raise ValueError(f'x must be [batch, time, leads], got {x.shape}')
  return x


def _need_key(key, name):
  if key is None:
    raise ValueError(f'{name} needs a PRNG key')
  return key


def saliency(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: SaliencySettings | None = None,
    **unused,
) -> jax.Array:
  """Saliency (Simonyan et al. 2014): d out[target] / d x, or its |.|.

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: SaliencySettings (absolute=True by default).
    **unused: key, baselines, chunk_size (ignored).

  Returns:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  return _saliency(
      fn, params, x, _targets(target, x.shape[0]),
      settings=settings or SaliencySettings(),
  )


def input_x_gradient(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: None = None,
    **unused,
) -> jax.Array:
  """Input x Gradient (Shrikumar et al. 2016): x * d out[target] / d x.

  Args and Returns as `saliency` (no settings).
  """
  del unused
  x = _prepare(x)
  return _input_x_gradient(
      fn, params, x, _targets(target, x.shape[0]), settings=settings
  )


def guided_backprop(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: None = None,
    **unused,
) -> jax.Array:
  """Guided Backpropagation: the gradient with `activations.guided_relu`.

  Args and Returns as `saliency` (no settings). The model's activation must
  be a ReLU; max-pools keep their ordinary gradient.
  """
  del unused
  x = _prepare(x)
  return _guided_backprop(
      fn, params, x, _targets(target, x.shape[0]), settings=settings
  )


def deconvolution(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: None = None,
    **unused,
) -> jax.Array:
  """Deconvolution: the gradient with `activations.deconv_relu`.

  Args and Returns as `saliency` (no settings). The model's activation must
  be a ReLU; max-pools keep their ordinary gradient.
  """
  del unused
  x = _prepare(x)
  return _deconvolution(
      fn, params, x, _targets(target, x.shape[0]), settings=settings
  )


def deeplift(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: DeepLiftSettings | None = None,
    *,
    baselines: jax.Array | None = None,
    **unused,
) -> jax.Array:
  """DeepLIFT, Rescale rule (Shrikumar et al. 2017), one backward pass.

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: DeepLiftSettings.
    baselines: [T, L] or [B, T, L] reference inputs; zeros if None.
    **unused: key, chunk_size (ignored).

  Returns:
    (x - x0) * multipliers (multiply_by_inputs) or the multipliers:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  return _deeplift(
      fn, params, x, _targets(target, x.shape[0]), _baselines(baselines, x),
      settings=settings or DeepLiftSettings(),
  )


def integrated_gradients(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: IntegratedGradientsSettings | None = None,
    *,
    baselines: jax.Array | None = None,
    chunk_size: int | None = None,
    **unused,
) -> jax.Array:
  """Integrated Gradients along the straight path from x0 to x.

  attr = (x - x0) * sum_i w_i grad f(x0 + alpha_i (x - x0)) with the nodes
  and weights of `quadrature`.

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: IntegratedGradientsSettings.
    baselines: [T, L] or [B, T, L]; zeros if None.
    chunk_size: path points evaluated at once (None: all n_steps).
    **unused: key (ignored).

  Returns:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  return _integrated_gradients(
      fn, params, x, _targets(target, x.shape[0]), _baselines(baselines, x),
      settings=settings or IntegratedGradientsSettings(),
      chunk_size=chunk_size,
  )


def smoothgrad(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: SmoothGradSettings | None = None,
    *,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    chunk_size: int | None = None,
    **unused,
) -> jax.Array:
  """SmoothGrad (Smilkov et al. 2017) over x + N(0, stdev^2).

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: SmoothGradSettings.
    key: PRNG key (sample i draws from `jax.random.split(key, n)[i]`).
    noise: [S, B, T, L] explicit perturbations added to x instead of the
      key's draws (S replaces n_samples); for reproducing other libraries.
    chunk_size: noisy copies evaluated at once (None: all).
    **unused: baselines (ignored).

  Returns:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  if noise is None:
    key = _need_key(key, 'smoothgrad')
  else:
    noise = jnp.asarray(noise, jnp.float32)
  return _smoothgrad(
      fn, params, x, _targets(target, x.shape[0]), key, noise,
      settings=settings or SmoothGradSettings(), chunk_size=chunk_size,
  )


def gradient_shap(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: GradientShapSettings | None = None,
    *,
    key: jax.Array | None = None,
    baselines: jax.Array | None = None,
    draws: GradientShapDraws | None = None,
    chunk_size: int | None = None,
    **unused,
) -> jax.Array:
  """GradientSHAP (Lundberg & Lee 2017) as Captum computes it.

  mean over samples s of (x + e_s - b_s) * grad f(b_s + alpha_s (x + e_s -
  b_s)), b_s a random row of the baseline set, e_s ~ N(0, stdev^2),
  alpha_s ~ U(0, 1), drawn per record (see `gradient_shap_draws`).

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: GradientShapSettings.
    key: PRNG key.
    baselines: [M, T, L] baseline set ([T, L] for one); zeros if None.
    draws: explicit draws instead of the key's (S replaces n_samples).
    chunk_size: samples evaluated at once (None: all).
    **unused: ignored.

  Returns:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  settings = settings or GradientShapSettings()
  if baselines is None:
    baseline_set = jnp.zeros((1,) + x.shape[1:], jnp.float32)
  else:
    baseline_set = jnp.asarray(baselines, jnp.float32)
    if baseline_set.ndim == 2:
      baseline_set = baseline_set[None]
  if draws is None:
    key = _need_key(key, 'gradient_shap')
  return _gradient_shap(
      fn, params, x, _targets(target, x.shape[0]), baseline_set, key, draws,
      settings=settings, chunk_size=chunk_size,
  )


def gradcam(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: GradCamSettings | None = None,
    **unused,
) -> jax.Array:
  """GradCAM (Selvaraju et al. 2017) on the last convolutional features.

  Args:
    fn: the model; needs `features` and `head`.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: GradCamSettings.
    **unused: key, baselines, chunk_size (ignored).

  Returns:
    [B, T, L] float32 (the same map for every lead), or [B, K, T, L].

  Raises:
    ValueError: fn has no features/head.
  """
  del unused
  if fn.features is None or fn.head is None:
    raise ValueError('gradcam needs an Explainable with features and head')
  x = _prepare(x)
  return _gradcam(
      fn, params, x, _targets(target, x.shape[0]),
      settings=settings or GradCamSettings(),
  )


def random_attribution(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: RandomSettings | None = None,
    *,
    key: jax.Array | None = None,
    num_outputs: int | None = None,
    **unused,
) -> jax.Array:
  """The random control: U[low, high) noise of an attribution's shape.

  Args:
    fn: the model (called once, abstractly, for K when target=None).
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    settings: RandomSettings.
    key: PRNG key.
    num_outputs: K, if known (else inferred by `jax.eval_shape`).
    **unused: ignored.

  Returns:
    [B, T, L] float32, or [B, K, T, L] for target=None.
  """
  del unused
  x = _prepare(x)
  key = _need_key(key, 'random')
  k = None
  if target is None:
    k = num_outputs or jax.eval_shape(fn.forward, params, x).shape[-1]
  return _random(x, key, num_outputs=k, settings=settings or RandomSettings())


METHODS = {
    'saliency': saliency,
    'deconvolution': deconvolution,
    'guided_backprop': guided_backprop,
    'gradient_shap': gradient_shap,
    'smoothgrad': smoothgrad,
    'input_x_gradient': input_x_gradient,
    'deeplift': deeplift,
    'integrated_gradients': integrated_gradients,
    'gradcam': gradcam,
    RANDOM: random_attribution,
}


def attribute(
    name: str,
    fn: Explainable,
    params: Params,
    x: jax.Array,
    target: Target = None,
    settings: Any = None,
    *,
    key: jax.Array | None = None,
    baselines: jax.Array | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
  """Runs the method `name` (METHOD_NAMES or 'random').

  Args:
    name: method name.
    fn, params, x, target, settings: as the method takes them.
    key: PRNG key (smoothgrad, gradient_shap, random).
    baselines: for deeplift / integrated_gradients ([T, L] or [B, T, L])
      and gradient_shap (a set [M, T, L]).
    chunk_size: for integrated_gradients, smoothgrad, gradient_shap.

  Returns:
    The method's attributions.

  Raises:
    ValueError: unknown name.
  """
  if name not in METHODS:
    raise ValueError(f'unknown method {name!r}; choose from {tuple(METHODS)}')
  return METHODS[name](
      fn, params, x, target, settings,
      key=key, baselines=baselines, chunk_size=chunk_size,
  )


def method_key(key: jax.Array, name: str) -> jax.Array:
  """The key `explain_all` gives method `name`: fold_in(key, its index)."""
  return jax.random.fold_in(key, (METHOD_NAMES + (RANDOM,)).index(name))


def completeness_error(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    attributions: jax.Array,
    target: Target = None,
    baselines: jax.Array | None = None,
) -> jax.Array:
  """Relative summation-to-delta error of attributions.

  |sum attr - (f(x) - f(x0))| / |f(x) - f(x0)|, for methods with
  multiply_by_inputs (Integrated Gradients, DeepLIFT; GradientSHAP in
  expectation).

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] inputs.
    attributions: [B, T, L] (target given) or [B, K, T, L] (target=None).
    target: as given to the method.
    baselines: [T, L] or [B, T, L]; zeros if None.

  Returns:
    [B] float32, or [B, K] for target=None.
  """
  x = _prepare(x)
  x0 = _baselines(baselines, x)
  delta = fn.forward(params, x) - fn.forward(params, x0)  # [B, K]
  t = _targets(target, x.shape[0])
  if t is not None:
    delta = jnp.take_along_axis(delta, t[:, None], axis=1)[:, 0]
  total = jnp.sum(attributions, axis=(-2, -1))
  return jnp.abs(total - delta) / jnp.abs(delta)


def _resolve_preset(preset) -> dict[str, Any]:
  if isinstance(preset, str):
    # Imported here: presets imports this module for the settings classes.
    from factorecg_jax.explain import presets  # pylint: disable=g-import-not-at-top

    if preset not in presets.PRESETS:
      raise ValueError(
          f'unknown preset {preset!r}; choose from {tuple(presets.PRESETS)}'
      )
    return dict(presets.PRESETS[preset])
  return dict(preset)


@functools.partial(
    jax.jit, static_argnames=('fn', 'items', 'chunk_size', 'num_outputs')
)
def _explain_all(
    fn, params, x, target, key, x0, baseline_set, *, items, chunk_size,
    num_outputs,
):
  settings = dict(items)
  out = {}
  keys = {name: method_key(key, name) for name in settings}
  need_grad = {'saliency', 'input_x_gradient', 'gradcam'} & set(settings)
  if need_grad:
    if fn.features is not None and fn.head is not None:
      # One backward pass through head and features gives both the GradCAM
      # feature gradients and the input gradient.
      a, vjp_features = jax.vjp(lambda z: fn.features(params, z), x)
      g_a = _vjp_targets(lambda z: fn.head(params, z), a, target)
      if target is None:
        g_x = jnp.moveaxis(
            jax.vmap(lambda ct: vjp_features(ct)[0])(jnp.moveaxis(g_a, 1, 0)),
            0, 1,
        )
      else:
        g_x = vjp_features(g_a)[0]
    else:
      g_x = _gradient(fn, params, x, target)
    if 'saliency' in settings:
      s = settings['saliency'] or SaliencySettings()
      out['saliency'] = jnp.abs(g_x) if s.absolute else g_x
    if 'input_x_gradient' in settings:
      out['input_x_gradient'] = _per_target(x, target) * g_x
    if 'gradcam' in settings:
      out['gradcam'] = _cam_from(
          a, g_a, target, x.shape, settings['gradcam'] or GradCamSettings()
      )
  if 'guided_backprop' in settings:
    out['guided_backprop'] = _guided_backprop(
        fn, params, x, target, settings=None
    )
  if 'deconvolution' in settings:
    out['deconvolution'] = _deconvolution(fn, params, x, target, settings=None)
  if 'deeplift' in settings:
    out['deeplift'] = _deeplift(
        fn, params, x, target, x0,
        settings=settings['deeplift'] or DeepLiftSettings(),
    )
  if 'integrated_gradients' in settings:
    out['integrated_gradients'] = _integrated_gradients(
        fn, params, x, target, x0,
        settings=(
            settings['integrated_gradients'] or IntegratedGradientsSettings()
        ),
        chunk_size=chunk_size,
    )
  if 'smoothgrad' in settings:
    out['smoothgrad'] = _smoothgrad(
        fn, params, x, target, keys['smoothgrad'], None,
        settings=settings['smoothgrad'] or SmoothGradSettings(),
        chunk_size=chunk_size,
    )
  if 'gradient_shap' in settings:
    out['gradient_shap'] = _gradient_shap(
        fn, params, x, target, baseline_set, keys['gradient_shap'], None,
        settings=settings['gradient_shap'] or GradientShapSettings(),
        chunk_size=chunk_size,
    )
  if RANDOM in settings:
    out[RANDOM] = _random(
        x, keys[RANDOM], num_outputs=num_outputs,
        settings=settings[RANDOM] or RandomSettings(),
    )
  return out


def explain_all(
    fn: Explainable,
    params: Params,
    x: jax.Array,
    *,
    target: Target = None,
    preset: str | Mapping[str, Any] = 'storas2025',
    key: jax.Array | None = None,
    baselines: jax.Array | None = None,
    shap_baselines: jax.Array | None = None,
    chunk_size: int | None = None,
    methods: tuple[str, ...] | None = None,
) -> dict[str, jax.Array]:
  """Runs every method of a preset in one jitted call, sharing work.

  One backward pass gives Saliency, Input x Gradient and GradCAM's feature
  gradients; Guided Backprop, Deconvolution and DeepLIFT take one backward
  pass each. Method `name` uses `method_key(key, name)`, so each result
  equals the single-method call with that key.

  Args:
    fn: the model.
    params: its variables.
    x: [B, T, L] float32 inputs.
    target: int, int [B], or None for all K outputs.
    preset: a name in `presets.PRESETS` ('storas2025', 'captum') or a dict
      {method name: settings or None}.
    key: PRNG key (required if the preset has a stochastic method).
    baselines: DeepLIFT / IG reference, [T, L] or [B, T, L]; zeros if None.
    shap_baselines: GradientSHAP baseline set [M, T, L]; zeros if None.
    chunk_size: samples per chunk for IG, SmoothGrad, GradientSHAP.
    methods: run only these (a subset of the preset's names).

  Returns:
    {name: [B, T, L] or [B, K, T, L] float32}, in the preset's order.

  Raises:
    ValueError: unknown preset or method, or a missing key.
  """
  settings = _resolve_preset(preset)
  if methods is not None:
    unknown = set(methods) - set(settings)
    if unknown:
      raise ValueError(f'methods {sorted(unknown)} not in the preset')
    settings = {n: s for n, s in settings.items() if n in methods}
  for name in settings:
    if name not in METHODS:
      raise ValueError(f'unknown method {name!r}')
  if 'gradcam' in settings and (fn.features is None or fn.head is None):
    raise ValueError('gradcam needs an Explainable with features and head')
  x = _prepare(x)
  if {'smoothgrad', 'gradient_shap', RANDOM} & set(settings):
    key = _need_key(key, 'explain_all')
  elif key is None:
    key = jax.random.key(0)  # Unused.
  if shap_baselines is None:
    baseline_set = jnp.zeros((1,) + x.shape[1:], jnp.float32)
  else:
    baseline_set = jnp.asarray(shap_baselines, jnp.float32)
    if baseline_set.ndim == 2:
      baseline_set = baseline_set[None]
  num_outputs = None
  if target is None:
    num_outputs = jax.eval_shape(fn.forward, params, x).shape[-1]
  out = _explain_all(
      fn, params, x, _targets(target, x.shape[0]), key,
      _baselines(baselines, x), baseline_set,
      items=tuple(settings.items()), chunk_size=chunk_size,
      num_outputs=num_outputs,
  )
  # jit returns dicts in sorted key order; give the preset's.
  return {name: out[name] for name in settings}
