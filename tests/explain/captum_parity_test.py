"""Parity of the JAX attribution methods with Captum 0.9 on one small ResNet.

Builds the PyTorch twin (`models/resnet_torch.py`) of a small
`resnet.ResNet` (both skip variants; batch norm in eval mode with
non-trivial running statistics), copies the Flax weights into it, checks that the outputs agree, then compares every method
of the `captum` preset with Captum's on the same inputs and targets. The
stochastic methods get Captum's own draws: a recording forward function
captures the noisy (SmoothGrad) or interpolated (GradientSHAP) inputs
Captum evaluates, from which the noise and the alphas are read back and
passed to our functions. DeepLIFT is compared on the `skip_pool=False`
variant only (Captum's max-pool rule differs from ours, see methods.py;
with max-pooling the correlation is only reported and checked > 0.9).

torch and captum are optional; without them the tests skip.
"""

import flax
import jax
import numpy as np
import pytest

from factorecg_jax.explain import methods
from factorecg_jax.explain import presets
from factorecg_jax.models import resnet
from factorecg_jax.models import resnet_torch

torch = pytest.importorskip('torch')
captum_attr = pytest.importorskip('captum.attr')

# XLA optimisation passes off for this module (tests/conftest.py); Captum
# warns on every call that it sets requires_grad and hooks.
pytestmark = [
    pytest.mark.usefixtures('fast_compile'),
    pytest.mark.filterwarnings('ignore::UserWarning:captum'),
]

# 100 samples: 100 -> 25 -> 7, so the 'SAME' padding is asymmetric.
BATCH, LENGTH, LEADS, OUTPUTS = 2, 100, 12, 3
TARGET = np.array([0, 2])
MIN_CORRELATION = 0.99


def _randomize_norms(variables, key):
  """Random BN scale/bias and running statistics (as in methods_test)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  out = {}
  for i, (path, leaf) in enumerate(sorted(flat.items())):
    k = jax.random.fold_in(key, i)
    if path[-1] == 'scale':
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
    elif path[-1] in ('bias', 'mean'):
      leaf = 0.3 * jax.random.normal(k, leaf.shape)
    elif path[-1] == 'var':
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
    out[path] = leaf
  return flax.traverse_util.unflatten_dict(out)


class _Setup:
  """One model variant in both frameworks, inputs and targets."""

  def __init__(self, skip_pool):
    self.model = resnet._TinyResNet(  # pylint: disable=protected-access
        num_outputs=OUTPUTS, skip_pool=skip_pool
    )
    self.x = np.asarray(
        jax.random.normal(jax.random.key(1), (BATCH, LENGTH, LEADS))
    )
    variables = self.model.init(jax.random.key(0), self.x)
    self.variables = _randomize_norms(variables, jax.random.key(2))
    self.fn = methods.from_flax(self.model)
    self.torch_model = resnet_torch.copy_flax_to_torch(
        resnet_torch.torch_resnet(self.model, LENGTH, LEADS),
        self.variables).eval()
    self.x_t = torch.from_numpy(np.ascontiguousarray(self.x.transpose(0, 2, 1)))
    self.target_t = torch.from_numpy(TARGET)
    self.recorded = []

  def recording_forward(self, inputs):
    self.recorded.append(inputs.detach().clone())
    return self.torch_model(inputs)


@pytest.fixture(scope='module', params=[True, False], ids=['pool', 'no_pool'])
def setup(request):
  torch.manual_seed(0)
  np.random.seed(0)  # Captum draws GradientSHAP's alphas with numpy.
  return _Setup(request.param)


def _channels_last(a):
  return a.detach().numpy().transpose(0, 2, 1)


def _correlation(a, b):
  return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def _check(name, setup, ours, theirs):
  """Pearson r >= 0.99, and elementwise agreement to float32 rounding."""
  corr = _correlation(ours, theirs)
  scale = np.max(np.abs(theirs))
  diff = np.max(np.abs(ours - theirs)) / scale
  print(f'{name} (skip_pool={setup.model.skip_pool}): r = {corr:.8f}, '
        f'max |diff| / max |captum| = {diff:.1e}')
  assert corr >= MIN_CORRELATION
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * scale)


def test_outputs_match(setup):
  ours = np.asarray(setup.fn.forward(setup.variables, setup.x))
  with torch.no_grad():
    theirs = setup.torch_model(setup.x_t).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def _captum_deterministic(setup, name):
  m, x, t = setup.torch_model, setup.x_t, setup.target_t
  if name == 'saliency':
    return captum_attr.Saliency(m).attribute(x, target=t, abs=True)
  if name == 'input_x_gradient':
    return captum_attr.InputXGradient(m).attribute(x, target=t)
  if name == 'guided_backprop':
    return captum_attr.GuidedBackprop(m).attribute(x, target=t)
  if name == 'deconvolution':
    return captum_attr.Deconvolution(m).attribute(x, target=t)
  if name == 'deeplift':
    return captum_attr.DeepLift(m).attribute(
        x, baselines=torch.zeros_like(x), target=t
    )
  if name == 'integrated_gradients':
    return captum_attr.IntegratedGradients(m).attribute(
        x, baselines=torch.zeros_like(x), target=t, n_steps=50,
        method='gausslegendre',
    )
  raise ValueError(name)


@pytest.mark.parametrize(
    'name',
    ['saliency', 'input_x_gradient', 'guided_backprop', 'deconvolution',
     'deeplift', 'integrated_gradients'],
)
def test_deterministic_methods(setup, name):
  theirs = _channels_last(_captum_deterministic(setup, name))
  ours = methods.attribute(name, setup.fn, setup.variables, setup.x, TARGET,
                           presets.CAPTUM[name])
  if name == 'deeplift' and setup.model.skip_pool:
    # Captum's max-pool rule (multipliers through the pooled differences)
    # is not ours (the gradient at the input): similar, not equal.
    corr = _correlation(ours, theirs)
    print(f'deeplift with max-pool: r = {corr:.4f} (not compared)')
    assert corr > 0.9
    return
  _check(name, setup, np.asarray(ours), theirs)


def test_smoothgrad_with_captums_noise(setup):
  settings = presets.CAPTUM['smoothgrad']
  setup.recorded.clear()
  nt = captum_attr.NoiseTunnel(captum_attr.Saliency(setup.recording_forward))
  theirs = _channels_last(nt.attribute(
      setup.x_t, nt_type='smoothgrad', nt_samples=settings.n_samples,
      stdevs=settings.stdev, target=setup.target_t,
  ))
  # NoiseTunnel repeats each record n times (row b * n + s).
  noisy = setup.recorded[0].numpy().reshape(
      BATCH, settings.n_samples, LEADS, LENGTH
  )
  noise = noisy.transpose(1, 0, 3, 2) - setup.x[None]
  ours = methods.smoothgrad(setup.fn, setup.variables, setup.x, TARGET,
                            settings, noise=noise)
  _check('smoothgrad', setup, np.asarray(ours), theirs)


def test_gradient_shap_with_captums_alphas(setup):
  settings = presets.CAPTUM['gradient_shap']
  assert settings.stdev == 0.0  # So Captum's inputs are alpha * x.
  setup.recorded.clear()
  gs = captum_attr.GradientShap(setup.recording_forward)
  theirs = _channels_last(gs.attribute(
      setup.x_t, baselines=torch.zeros((1, LEADS, LENGTH)),
      n_samples=settings.n_samples, stdevs=settings.stdev,
      target=setup.target_t,
  ))
  scaled = setup.recorded[0].numpy().reshape(
      BATCH, settings.n_samples, LEADS, LENGTH
  )
  x_t = setup.x.transpose(0, 2, 1)[:, None]
  alpha = np.sum(scaled * x_t, axis=(2, 3)) / np.sum(x_t * x_t, axis=(2, 3))
  draws = methods.GradientShapDraws(
      baseline_index=np.zeros((settings.n_samples, BATCH), np.int32),
      noise=np.zeros((settings.n_samples,) + setup.x.shape, np.float32),
      alpha=alpha.T.astype(np.float32),
  )
  ours = methods.gradient_shap(setup.fn, setup.variables, setup.x, TARGET,
                               settings, draws=draws)
  _check('gradient_shap', setup, np.asarray(ours), theirs)


def test_gradcam(setup):
  layer = setup.torch_model.blocks[-1].relu2  # The last block's output.
  cam = captum_attr.LayerGradCam(setup.torch_model, layer).attribute(
      setup.x_t, target=setup.target_t, relu_attributions=False
  )
  cam = captum_attr.LayerAttribution.interpolate(cam, (LENGTH,), 'linear')
  theirs = cam.detach().numpy()[:, 0]  # [B, T]
  ours = methods.gradcam(setup.fn, setup.variables, setup.x, TARGET,
                         presets.CAPTUM['gradcam'])
  assert ours.shape == (BATCH, LENGTH, LEADS)
  np.testing.assert_array_equal(ours[..., 0], ours[..., -1])
  _check('gradcam', setup, np.asarray(ours[..., 0]), theirs)
