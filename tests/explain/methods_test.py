"""Tests of the attribution methods: analytic cases, completeness, shapes.

Analytic checks on a linear model and a hand-written two-layer ReLU net, the
summation-to-delta property of Integrated Gradients and DeepLIFT on a tiny
ResNet with non-trivial batch norm, GradCAM shapes, the all-targets call,
chunking and `explain_all`.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.explain import methods
from factorecg_jax.explain import presets
from factorecg_jax.models import resnet

# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')

BATCH, LENGTH, LEADS, OUTPUTS = 2, 128, 12, 3


def _randomize_norms(variables, key):
  """Random BN scale/bias and running statistics: a non-homogeneous net.

  With init values (bias 0, mean 0) a bias-free ReLU net is positively
  homogeneous, IG then equals Input x Gradient and the tests would be weak.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for i, (path, leaf) in enumerate(sorted(flat.items())):
    k = jax.random.fold_in(key, i)
    name = path[-1]
    if name in ('scale',):
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
    elif name == 'bias' or name == 'mean':
      leaf = 0.3 * jax.random.normal(k, leaf.shape)
    elif name == 'var':
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
    out[path] = leaf
  return flax.traverse_util.unflatten_dict(out)


def _tiny(skip_pool=True, act=nn.relu):
  model = resnet._TinyResNet(  # pylint: disable=protected-access
      num_outputs=OUTPUTS, skip_pool=skip_pool, act=act
  )
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, LEADS))
  variables = model.init(jax.random.key(0), x)
  variables = _randomize_norms(variables, jax.random.key(2))
  return methods.from_flax(model), variables


@pytest.fixture(scope='module')
def x():
  return jax.random.normal(jax.random.key(1), (BATCH, LENGTH, LEADS))


@pytest.fixture(scope='module')
def tiny():
  return _tiny(skip_pool=True)


@pytest.fixture(scope='module')
def tiny_no_pool():
  return _tiny(skip_pool=False)


@pytest.fixture(scope='module')
def smooth():
  # No max-pool and a smooth activation: the path integrand is smooth.
  return _tiny(skip_pool=False, act=nn.gelu)


# Analytic cases.


def _linear():
  def forward(params, x, act=None):
    del act
    return jnp.einsum('btl,tlk->bk', x, params)

  return methods.Explainable(forward)


def test_linear_model_analytic():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(16, 3, 2)).astype(np.float32)
  x = rng.normal(size=(2, 16, 3)).astype(np.float32)
  fn, k = _linear(), 1
  expected = x * w[..., k]
  captum, storas = presets.CAPTUM, presets.STORAS2025
  sal = methods.saliency(fn, w, x, k, captum['saliency'])
  np.testing.assert_allclose(sal, np.broadcast_to(np.abs(w[..., k]), x.shape))
  sal = methods.saliency(fn, w, x, k, storas['saliency'])
  np.testing.assert_allclose(sal, np.broadcast_to(w[..., k], x.shape))
  for name in ('input_x_gradient', 'integrated_gradients', 'deeplift',
               'gradient_shap'):
    got = methods.attribute(
        name, fn, w, x, k, captum[name], key=jax.random.key(0)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  # Signed SmoothGrad of a linear model is its gradient, whatever the noise.
  got = methods.smoothgrad(fn, w, x, k, storas['smoothgrad'],
                           key=jax.random.key(0))
  np.testing.assert_allclose(got, np.broadcast_to(w[..., k], x.shape),
                             rtol=1e-5, atol=1e-6)


def _two_layer():
  def forward(params, x, act=None):
    w1, w2 = params
    act = jax.nn.relu if act is None else act
    return act(x.reshape(x.shape[0], -1) @ w1) @ w2

  return methods.Explainable(forward)


def test_two_layer_relu_rules_by_hand():
  rng = np.random.default_rng(1)
  t, l, h, k = 5, 2, 7, 3
  w1 = rng.normal(size=(t * l, h)).astype(np.float32)
  w2 = rng.normal(size=(h, k)).astype(np.float32)
  x = rng.normal(size=(4, t, l)).astype(np.float32)
  x0 = rng.normal(size=(4, t, l)).astype(np.float32)
  fn, params, target = _two_layer(), (w1, w2), np.array([0, 1, 2, 1])
  pre = x.reshape(4, -1) @ w1
  pre0 = x0.reshape(4, -1) @ w1
  g_h = w2[:, target].T  # [4, h], d out / d relu output.

  def back(g_pre):
    return (g_pre @ w1.T).reshape(x.shape)

  expected = {
      'saliency': back((pre > 0) * g_h),
      'guided_backprop': back((pre > 0) * (g_h > 0) * g_h),
      'deconvolution': back(np.maximum(g_h, 0)),
  }
  signed = methods.SaliencySettings(absolute=False)
  for name, want in expected.items():
    got = methods.attribute(name, fn, params, x, target,
                            signed if name == 'saliency' else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                               err_msg=name)
  # The rules really differ on this net (else the test would be vacuous).
  assert not np.allclose(expected['saliency'], expected['guided_backprop'])
  assert not np.allclose(expected['saliency'], expected['deconvolution'])

  # DeepLIFT Rescale: multipliers (relu(h) - relu(h0)) / (h - h0).
  m = (np.maximum(pre, 0) - np.maximum(pre0, 0)) / (pre - pre0)
  want = (x - x0) * back(m * g_h)
  got = methods.deeplift(fn, params, x, target, baselines=x0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  err = methods.completeness_error(fn, params, x, got, target, x0)
  np.testing.assert_array_less(err, 1e-4)


# Completeness on the ResNet.


def test_integrated_gradients_completeness(smooth, tiny, x):
  fn, variables = smooth
  settings = presets.CAPTUM['integrated_gradients']  # 50 Gauss-Legendre.
  ig = methods.integrated_gradients(fn, variables, x, None, settings)
  err = methods.completeness_error(fn, variables, x, ig, None)
  assert err.shape == (BATCH, OUTPUTS)
  np.testing.assert_array_less(err, 0.01)
  # The net is not homogeneous: IG differs from Input x Gradient.
  ixg = methods.input_x_gradient(fn, variables, x, None)
  assert np.max(np.abs(ig - ixg)) > 0.05 * np.max(np.abs(ig))
  # ReLU and max-pool make the integrand piecewise constant: quadrature
  # converges slowly (max error 2 % at 50 nodes, below 1 % at 200 here).
  fn, variables = tiny
  ig = methods.integrated_gradients(fn, variables, x, None, settings)
  err_50 = methods.completeness_error(fn, variables, x, ig, None)
  ig = methods.integrated_gradients(
      fn, variables, x, None, methods.IntegratedGradientsSettings(200),
      chunk_size=50,
  )
  err_200 = methods.completeness_error(fn, variables, x, ig, None)
  np.testing.assert_array_less(err_50, 0.05)
  np.testing.assert_array_less(err_200, 0.01)
  print('IG completeness error: smooth', np.max(err), 'ReLU 50 steps',
        np.max(err_50), '200 steps', np.max(err_200))


def test_deeplift_completeness(tiny_no_pool, smooth, tiny, x):
  x0 = 0.5 * jax.random.normal(jax.random.key(7), x.shape)
  # Summation-to-delta is exact when `act` is the only nonlinearity, for
  # ReLU and for any other elementwise activation (Rescale telescopes).
  errors = []
  for fn, variables in (tiny_no_pool, smooth):
    dl = methods.deeplift(fn, variables, x, None, baselines=x0)
    err = methods.completeness_error(fn, variables, x, dl, None, x0)
    np.testing.assert_array_less(err, 0.01)
    errors.append(np.max(err))
  # With max-pooling the rule is only approximate; the error is finite.
  fn, variables = tiny
  dl = methods.deeplift(fn, variables, x, None, baselines=x0)
  err_pool = methods.completeness_error(fn, variables, x, dl, None, x0)
  assert np.all(np.isfinite(err_pool))
  print('DeepLIFT completeness error: ReLU, GELU (no pool):', errors,
        'max-pool:', np.max(err_pool))


def test_deeplift_without_inputs_gives_multipliers(tiny_no_pool, x):
  fn, variables = tiny_no_pool
  with_inputs = methods.deeplift(fn, variables, x, 1)
  multipliers = methods.deeplift(
      fn, variables, x, 1, presets.STORAS2025['deeplift']
  )
  np.testing.assert_allclose(with_inputs, x * multipliers, rtol=1e-5,
                             atol=1e-6)


# GradCAM.


def test_gradcam_shape_and_relu(tiny, x):
  fn, variables = tiny
  cam = methods.gradcam(fn, variables, x, 2, methods.GradCamSettings(True))
  assert cam.shape == (BATCH, LENGTH, LEADS) and cam.dtype == jnp.float32
  assert np.all(np.asarray(cam) >= 0)
  np.testing.assert_array_equal(cam[..., 0], cam[..., 5])
  raw = methods.gradcam(fn, variables, x, 2)
  assert np.min(raw) < 0  # The ReLU did something.
  np.testing.assert_allclose(cam, np.maximum(raw, 0), atol=1e-6)


def test_upsample_half_pixel():
  upsample = methods._upsample_linear  # pylint: disable=protected-access
  got = upsample(jnp.array([0.0, 1.0]), 4)
  np.testing.assert_allclose(got, [0.0, 0.25, 0.75, 1.0])


# Targets, chunking, determinism.


@pytest.mark.parametrize(
    'name', ['saliency', 'guided_backprop', 'deeplift', 'gradcam',
             'smoothgrad'],
)
def test_all_targets_equal_stacked_single_targets(tiny, x, name):
  fn, variables = tiny
  settings = presets.CAPTUM[name]
  key = jax.random.key(3)
  everything = methods.attribute(name, fn, variables, x, None, settings,
                                 key=key)
  stacked = np.stack(
      [methods.attribute(name, fn, variables, x, k, settings, key=key)
       for k in range(OUTPUTS)],
      axis=1,
  )
  assert everything.shape == (BATCH, OUTPUTS, LENGTH, LEADS)
  np.testing.assert_allclose(everything, stacked, rtol=1e-5, atol=1e-6)


def test_per_record_targets(tiny, x):
  fn, variables = tiny
  both = methods.saliency(fn, variables, x, np.array([0, 2]))
  np.testing.assert_allclose(both[0], methods.saliency(fn, variables, x, 0)[0])
  np.testing.assert_allclose(both[1], methods.saliency(fn, variables, x, 2)[1])


def test_chunking_does_not_change_results(tiny, x):
  fn, variables = tiny
  settings = methods.IntegratedGradientsSettings(n_steps=12)
  whole = methods.integrated_gradients(fn, variables, x, 1, settings,
                                       chunk_size=12)
  chunked = methods.integrated_gradients(fn, variables, x, 1, settings,
                                         chunk_size=5)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  settings = methods.SmoothGradSettings(n_samples=6, stdev=0.1)
  key = jax.random.key(4)
  whole = methods.smoothgrad(fn, variables, x, 1, settings, key=key)
  chunked = methods.smoothgrad(fn, variables, x, 1, settings, key=key,
                               chunk_size=4)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  other = methods.smoothgrad(fn, variables, x, 1, settings,
                             key=jax.random.key(5))
  assert not np.allclose(other, whole)


def test_int_and_array_targets_share_one_compilation(tiny, x):
  fn, variables = tiny
  jitted = methods._saliency  # pylint: disable=protected-access
  methods.saliency(fn, variables, x, 0)
  before = jitted._cache_size()  # pylint: disable=protected-access
  methods.saliency(fn, variables, x, 1)
  methods.saliency(fn, variables, x, np.array([2, 0]))
  assert jitted._cache_size() == before  # pylint: disable=protected-access


def test_explain_all_matches_single_methods(tiny, x):
  fn, variables = tiny
  preset = dict(presets.STORAS2025)
  # Fewer samples than the paper's, to keep the test short.
  preset['integrated_gradients'] = methods.IntegratedGradientsSettings(
      n_steps=6, multiply_by_inputs=False)
  preset['gradient_shap'] = methods.GradientShapSettings(
      n_samples=4, multiply_by_inputs=False)
  preset['smoothgrad'] = methods.SmoothGradSettings(
      n_samples=3, stdev=0.02, relative=True, absolute=False)
  key = jax.random.key(9)
  # All targets: also covers the shared backward pass for K cotangents.
  out = methods.explain_all(fn, variables, x, target=None, preset=preset,
                            key=key, chunk_size=4)
  assert tuple(out) == methods.METHOD_NAMES + (methods.RANDOM,)
  for name, settings in preset.items():
    assert out[name].shape == (BATCH, OUTPUTS, LENGTH, LEADS), name
    if name in ('guided_backprop', 'deconvolution', 'deeplift',
                'integrated_gradients'):
      continue  # The same jitted cores as the single calls (saves compiles).
    want = methods.attribute(name, fn, variables, x, None, settings,
                             key=methods.method_key(key, name), chunk_size=4)
    np.testing.assert_allclose(out[name], want, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert np.all((out['random'] >= 0) & (out['random'] < 1))


def test_gradient_shap_draws_reproduce_the_keyed_call():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(16, 3, 2)).astype(np.float32)
  x = rng.normal(size=(2, 16, 3)).astype(np.float32)
  baselines = rng.normal(size=(4, 16, 3)).astype(np.float32)
  settings = methods.GradientShapSettings(n_samples=6, stdev=0.5)
  key = jax.random.key(11)
  keyed = methods.gradient_shap(_linear(), w, x, 0, settings, key=key,
                                baselines=baselines, chunk_size=4)
  draws = methods.gradient_shap_draws(key, x, 4, settings)
  assert draws.noise.shape == (6,) + x.shape
  explicit = methods.gradient_shap(_linear(), w, x, 0, settings, draws=draws,
                                   baselines=baselines)
  np.testing.assert_allclose(keyed, explicit, rtol=1e-5, atol=1e-6)
  # Linear model: the mean of (x + e - b) * w.
  b = baselines[np.asarray(draws.baseline_index)]
  want = np.mean(x[None] + np.asarray(draws.noise) - b, axis=0) * w[..., 0]
  np.testing.assert_allclose(keyed, want, rtol=1e-5, atol=1e-5)


def test_preset_contents():
  assert set(presets.CAPTUM) == set(methods.METHOD_NAMES)
  assert set(presets.STORAS2025) == set(methods.METHOD_NAMES) | {'random'}
  assert presets.CAPTUM['saliency'].absolute
  assert not presets.STORAS2025['saliency'].absolute
  assert presets.STORAS2025['smoothgrad'].n_samples == 25
  assert presets.STORAS2025['gradient_shap'].n_samples == 50
  assert presets.STORAS2025['gradcam'].relu
  assert not presets.CAPTUM['gradcam'].relu


def test_errors(tiny, x):
  fn, variables = tiny
  with pytest.raises(ValueError, match='unknown method'):
    methods.attribute('lime', fn, variables, x, 0)
  with pytest.raises(ValueError, match='key'):
    methods.smoothgrad(fn, variables, x, 0)
  with pytest.raises(ValueError, match='features'):
    methods.gradcam(_linear(), np.zeros((LENGTH, LEADS, 2)), x, 0)
