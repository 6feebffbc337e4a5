"""Parity of the Flax FactorECG VAE with the published PyTorch one (ecgxai).

Builds ecgxai 0.1.1's `CausalCNNVEncoder` and `CausalCNNVDecoder` at the
configuration of its `examples/vae/train_factorecg_vae.yaml`, copies their
weights into Flax parameters (`vae.params_from_ecgxai`) and compares outputs
on random inputs.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import pytest
import jax.numpy as jnp
import numpy as np

from factorecg_jax.models import blocks
from factorecg_jax.models import vae

# torch and ecgxai are the `bench` extra; without them the tests skip.
# pylint: disable=g-import-not-at-top
torch = ecgxai_encoder = ecgxai_decoder = None
try:
  import torch
  from ecgxai.network.causalcnn import decoder as ecgxai_decoder
  from ecgxai.network.causalcnn import encoder as ecgxai_encoder
except ImportError:
  pass
# pylint: enable=g-import-not-at-top

# examples/vae/train_factorecg_vae.yaml of ecgxai 0.1.1.
ENCODER_KWARGS = dict(
    in_channels=12, channels=128, depth=7, reduced_size=64, out_channels=32,
    kernel_size=5, dropout=0.3, softplus_eps=1e-4, sd_output=True,
)
DECODER_KWARGS = dict(
    k=32, width=600, in_channels=64, channels=128, depth=7, out_channels=12,
    kernel_size=5, gaussian_out=True, softplus_eps=1e-4, dropout=0.0,
)
LENGTH, LEADS = 600, 12


def _np(t) -> np.ndarray:
  return t.detach().cpu().numpy().astype(np.float32)


def _to_torch(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x))


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


@absltest.skipIf(ecgxai_encoder is None, 'needs torch and ecgxai (bench extra)')
class EcgxaiParityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    torch.manual_seed(0)
    cls.t_encoder = ecgxai_encoder.CausalCNNVEncoder(**ENCODER_KWARGS).eval()
    cls.t_decoder = ecgxai_decoder.CausalCNNVDecoder(**DECODER_KWARGS).eval()
    cls.params = vae.params_from_ecgxai(
        cls.t_encoder.state_dict(), cls.t_decoder.state_dict(), length=LENGTH
    )

  def test_param_count_equals_ecgxai(self):
    torch_count = sum(
        p.numel()
        for m in (self.t_encoder, self.t_decoder)
        for p in m.parameters()
    )
    model = vae.FactorECGPaper()
    shapes = jax.eval_shape(
        functools.partial(model.init, sample=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, LENGTH, LEADS), jnp.float32),
    )['params']
    flax_count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    self.assertEqual(flax_count, torch_count)
    # The converted tree has exactly the model's structure and shapes.
    model_shapes = jax.tree.map(lambda s: s.shape, shapes)
    converted_shapes = jax.tree.map(np.shape, self.params)
    self.assertEqual(model_shapes, converted_shapes)

  def test_conversion_copies_weights(self):
    lin = torch.nn.Linear(3, 2)
    conv = torch.nn.Conv1d(2, 4, 5)
    state = {'linear_mean.weight': lin.weight, 'linear_mean.bias': lin.bias,
             'c.weight': conv.weight, 'c.bias': conv.bias}
    state = {k: v.detach() for k, v in state.items()}
    before = (vae._ecgxai_linear(state, 'linear_mean'),
              vae._ecgxai_conv(state, 'c'))
    saved = jax.tree.map(np.copy, before)
    with torch.no_grad():
      lin.weight.add_(1.0)
      conv.weight.add_(1.0)
    jax.tree.map(np.testing.assert_array_equal, before, saved)

  @parameterized.parameters('chomp', 'left')
  def test_encoder_matches_ecgxai(self, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, LEADS, LENGTH)).astype(np.float32)
    with torch.no_grad():
      t_mu, t_sd = self.t_encoder(_to_torch(x))
    model = vae.FactorECGPaper(padding=padding)
    mu, sd = jax.jit(
        functools.partial(model.apply, method='encode')
    )({'params': self.params}, jnp.asarray(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(mu, _np(t_mu), atol=1e-4, rtol=0)
    np.testing.assert_allclose(sd, _np(t_sd), atol=1e-4, rtol=0)
    # The sd head really differs from the mean head (no mix-up of heads).
    self.assertGreater(float(jnp.max(jnp.abs(mu - sd))), 1e-2)

  @parameterized.parameters('chomp', 'left')
  def test_decoder_matches_ecgxai(self, padding):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2, 32)).astype(np.float32)
    with torch.no_grad():
      t_mean, t_sd = self.t_decoder(_to_torch(z))
    model = vae.FactorECGPaper(padding=padding)
    mean, sd = jax.jit(
        functools.partial(model.apply, method='decode')
    )({'params': self.params}, jnp.asarray(z))
    # ecgxai returns [batch, leads, time]; ours is channels-last.
    np.testing.assert_allclose(
        mean, _np(t_mean).transpose(0, 2, 1), atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        sd, _np(t_sd).transpose(0, 2, 1), atol=1e-4, rtol=0
    )
    self.assertGreater(float(jnp.std(mean)), 1e-3)


@absltest.skipIf(torch is None, 'needs torch (bench extra)')
class TransposedConvParityTest(absltest.TestCase):

  def test_causal_transposed_conv_matches_torch(self):
    """transpose=True == ConvTranspose1d(padding=0) + chomp of the tail."""
    k, d, cin, cout, length = 5, 4, 3, 6, 40
    torch.manual_seed(0)
    t_conv = torch.nn.ConvTranspose1d(cin, cout, k, dilation=d)
    x = np.random.default_rng(0).normal(size=(2, cin, length))
    x = x.astype(np.float32)
    with torch.no_grad():
      y_t = _np(t_conv(_to_torch(x))[:, :, :length])
    # ConvTranspose1d weight [in, out, k] -> [k, in, out].
    params = {'kernel': _np(t_conv.weight).transpose(2, 0, 1),
              'bias': _np(t_conv.bias)}
    conv = blocks.CausalConv(cout, k, d, padding='left', transpose=True)
    y = conv.apply({'params': params}, jnp.asarray(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(y, y_t.transpose(0, 2, 1), atol=1e-5, rtol=0)


if __name__ == '__main__':
  absltest.main()
