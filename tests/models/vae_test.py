"""Tests for the FactorECG VAE (shapes, presets, sampling, options, bf16)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import pytest
import jax.numpy as jnp
import numpy as np

from factorecg_jax import models
from factorecg_jax.models import vae

LENGTH, LEADS = 600, 12
# A tiny model on short signals that keeps the dense (paper) output head.
_TinyDenseVAE = functools.partial(
    vae.VAE, latents=3, length=24, channels=6, depth=2, kernel_size=3,
    reduced_size=5, decoder_in_channels=4, head='dense', padding='chomp',
)


def _ecg(batch=2, length=LENGTH, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=(batch, length, LEADS)),
      jnp.float32,
  )


def _init(model, x, seed=0):
  """Random variables for `model` without compiling its initialisers (slow
  on CPU): U(+-1/sqrt(fan_in)) kernels, U(+-0.1) biases."""
  shapes = jax.eval_shape(
      functools.partial(model.init, sample=False), jax.random.key(0), x
  )
  rng = np.random.default_rng(seed)

  def draw(s):
    bound = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

  return jax.tree.map(draw, shapes)


def _count(model, length=LENGTH):
  shapes = jax.eval_shape(
      functools.partial(model.init, sample=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((1, length, LEADS), jnp.float32),
  )
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


def _cnn_count(cin, c, cout, depth, k):
  """Parameters of a CausalCNN, counted from the architecture."""
  conv = lambda i, o, kk: i * o * kk + o  # noqa: E731
  res = lambda i, o: conv(i, o, 1) if i != o else 0  # noqa: E731
  n = conv(cin, c, k) + conv(c, c, k) + res(cin, c)
  n += (depth - 1) * 2 * conv(c, c, k)
  return n + conv(c, cout, k) + conv(cout, cout, k) + res(c, cout)


def _vae_count(latents, c, depth, k, reduced, dec_in, head, length=LENGTH):
  dense = lambda i, o: i * o + o  # noqa: E731
  enc = _cnn_count(LEADS, c, reduced, depth, k) + 2 * dense(reduced, latents)
  dec = dense(latents, dec_in) + dense(dec_in, dec_in * length)
  dec += _cnn_count(dec_in, c, LEADS, depth, k)
  size = LEADS * length if head == 'dense' else LEADS
  return enc + dec + 2 * dense(size, size)


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


class VAETest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = vae._TinyVAE()
    cls.x = _ecg()
    cls.variables = _init(cls.model, cls.x)
    cls.apply = staticmethod(
        jax.jit(cls.model.apply, static_argnames=('sample', 'method'))
    )

  def test_registry(self):
    self.assertIs(models.MODELS['vae'], vae.VAE)

  def test_shapes(self):
    out, aux = self.apply(
        self.variables, self.x, rngs={'sample': jax.random.key(3)}
    )
    self.assertEqual(out.shape, (2, LENGTH, LEADS))
    for name in ('mu', 'sd', 'z'):
      self.assertEqual(aux[name].shape, (2, 4), name)
    for name in ('recon_mean', 'recon_sd'):
      self.assertEqual(aux[name].shape, (2, LENGTH, LEADS), name)
      self.assertEqual(aux[name].dtype, jnp.float32)
    np.testing.assert_array_equal(out, aux['recon_mean'])
    # softplus + 1e-4 floors every sd.
    self.assertGreaterEqual(float(jnp.min(aux['sd'])), 1e-4)
    self.assertGreaterEqual(float(jnp.min(aux['recon_sd'])), 1e-4)

  def test_encode_decode_methods(self):
    mu, sd = self.apply(self.variables, self.x, method='encode')
    mean, rsd = self.apply(self.variables, mu, method='decode')
    _, aux = self.apply(self.variables, self.x, sample=False)
    np.testing.assert_allclose(mu, aux['mu'], atol=1e-6)
    np.testing.assert_allclose(sd, aux['sd'], atol=1e-6)
    np.testing.assert_allclose(mean, aux['recon_mean'], atol=1e-6)
    np.testing.assert_allclose(rsd, aux['recon_sd'], atol=1e-6)
    np.testing.assert_array_equal(aux['z'], aux['mu'])

  def test_sampling_is_deterministic_per_key(self):
    run = lambda seed: self.apply(  # noqa: E731
        self.variables, self.x, rngs={'sample': jax.random.key(seed)}
    )[1]
    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a['z'], b['z'])
    np.testing.assert_array_equal(a['recon_mean'], b['recon_mean'])
    self.assertGreater(float(jnp.max(jnp.abs(a['z'] - c['z']))), 1e-3)
    # z = mu + sd * eps, eps from the key alone (not from the input).
    other_x = self.apply(
        self.variables, _ecg(seed=4), rngs={'sample': jax.random.key(7)}
    )[1]
    eps = lambda aux: (aux['z'] - aux['mu']) / aux['sd']  # noqa: E731
    np.testing.assert_allclose(eps(a), eps(other_x), atol=1e-4)
    self.assertGreater(float(jnp.max(jnp.abs(a['mu'] - other_x['mu']))), 1e-4)

  def test_init(self):
    init = jax.jit(
        lambda seed: self.model.init(
            {'params': jax.random.key(seed), 'sample': jax.random.key(9)},
            self.x,
        )
    )
    first, again, other = init(0), init(0), init(5)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    diff = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), first, other
    )
    self.assertGreater(min(jax.tree.leaves(diff)), 1e-4)
    # Same tree as the one the other tests use; float32 parameters.
    self.assertEqual(
        jax.tree.structure(first), jax.tree.structure(self.variables)
    )
    for leaf in jax.tree.leaves(first):
      self.assertEqual(leaf.dtype, jnp.float32)
    # PyTorch's default init: |w| <= 1/sqrt(fan_in) for Linear and Conv1d.
    head = first['params']['decoder']['linear2']
    bound = 1 / np.sqrt(head['kernel'].shape[0])
    self.assertLessEqual(float(jnp.max(jnp.abs(head['kernel']))), bound)
    self.assertLessEqual(float(jnp.max(jnp.abs(head['bias']))), bound)
    self.assertGreater(float(jnp.std(head['kernel'])), bound / 2)

  def test_param_counts(self):
    self.assertEqual(
        _count(vae.FactorECGPaper()),
        _vae_count(32, 128, 7, 5, 64, 64, 'dense'),
    )
    self.assertEqual(
        _count(vae.FactorECGConvHead()),
        _vae_count(32, 128, 7, 5, 64, 64, 'conv'),
    )
    self.assertEqual(
        _count(vae.FactorECGLean()), _vae_count(32, 64, 7, 5, 64, 64, 'conv')
    )
    self.assertEqual(_count(vae.FactorECGPaperLeftPad()),
                     _count(vae.FactorECGPaper()))
    self.assertEqual(_count(vae._TinyVAE()), _vae_count(4, 8, 2, 3, 8, 4,
                                                        'conv'))
    # The paper's model is dominated by its two 7200 x 7200 output layers.
    self.assertBetween(_count(vae.FactorECGPaper()), 105e6, 110e6)

  def test_left_padding_gives_same_outputs(self):
    model = _TinyDenseVAE()
    x = _ecg(length=24)
    variables = _init(model, x)
    _, ref = model.apply(variables, x, sample=False)
    _, left = model.clone(padding='left').apply(variables, x, sample=False)
    for name in ref:
      np.testing.assert_allclose(left[name], ref[name], atol=1e-5, rtol=0)

  def test_transposed_decoder_reverses_inner_kernels(self):
    model = _TinyDenseVAE(decoder_transpose=True)
    x = _ecg(length=24)
    variables = _init(model, x)
    _, aux = model.apply(variables, x, sample=False)
    # Reversing the inner decoder blocks' kernels gives the plain model.
    flipped = jax.tree_util.tree_map_with_path(
        lambda path, v: v[::-1]
        if ('decoder' in str(path) and 'block2' not in str(path)
            and 'kernel' in str(path) and v.ndim == 3)
        else v,
        variables,
    )
    _, plain = model.clone(decoder_transpose=False).apply(
        flipped, x, sample=False
    )
    np.testing.assert_allclose(
        aux['recon_mean'], plain['recon_mean'], atol=1e-5
    )
    _, unflipped = model.clone(decoder_transpose=False).apply(
        variables, x, sample=False
    )
    self.assertGreater(
        float(jnp.max(jnp.abs(aux['recon_mean'] - unflipped['recon_mean']))),
        1e-4,
    )

  def test_dense_head_is_time_major(self):
    """Column t * leads + c of the dense head writes lead c at time t."""
    model = _TinyDenseVAE()
    x = _ecg(length=24)
    variables = _init(model, x)
    params = jax.tree.map(jnp.asarray, variables['params'])
    t, c = 5, 7
    bias = params['decoder']['mean']['bias'].at[t * LEADS + c].add(10.0)
    params['decoder']['mean']['bias'] = bias
    _, a = model.apply(variables, x, sample=False)
    _, b = model.apply({'params': params}, x, sample=False)
    diff = np.array(b['recon_mean'] - a['recon_mean'])
    np.testing.assert_allclose(diff[:, t, c], 10.0, atol=1e-4)
    diff[:, t, c] = 0.0
    np.testing.assert_allclose(diff, 0.0, atol=1e-5)

  def test_activation_field_swaps_without_new_params(self):
    relu_model = self.model.clone(act=nn.relu)
    _, aux = relu_model.apply(self.variables, self.x, sample=False)
    _, ref = self.apply(self.variables, self.x, sample=False)
    self.assertEqual(aux['mu'].shape, ref['mu'].shape)
    self.assertGreater(float(jnp.max(jnp.abs(aux['mu'] - ref['mu']))), 1e-6)

  def test_bf16_compute_is_close(self):
    model = self.model.clone(dtype=jnp.bfloat16)
    _, aux16 = model.apply(self.variables, self.x, sample=False)
    _, aux32 = self.apply(self.variables, self.x, sample=False)
    for name in ('mu', 'sd', 'recon_mean', 'recon_sd'):
      self.assertEqual(aux16[name].dtype, jnp.float32, name)
      scale = float(jnp.max(jnp.abs(aux32[name])))
      np.testing.assert_allclose(
          aux16[name], aux32[name], atol=0.03 * scale, rtol=0, err_msg=name
      )

  def test_gradients_finite(self):
    def loss(params):
      out, aux = self.model.apply(
          {'params': params}, self.x, rngs={'sample': jax.random.key(0)}
      )
      return (jnp.mean((out - self.x) ** 2) + jnp.mean(aux['sd'])
              + jnp.mean(aux['recon_sd']))

    grads = jax.jit(jax.grad(loss))(self.variables['params'])
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    self.assertTrue(np.all(np.isfinite(norms)))
    self.assertGreater(min(norms), 0.0)

  def test_bad_head_raises(self):
    with self.assertRaisesRegex(ValueError, 'head'):
      _init(vae._TinyVAE(head='mlp'), self.x)


if __name__ == '__main__':
  absltest.main()
