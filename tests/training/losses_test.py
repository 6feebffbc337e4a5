"""Tests for the VAE task: loss, evaluation and summaries."""

import functools
import importlib
import importlib.util
import math
import sys
import types
from unittest import mock

from absl.testing import absltest
import jax
import pytest
import jax.numpy as jnp
import numpy as np

from factorecg_jax.models import vae
from factorecg_jax.training import losses


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


def _has_module(name):
  return importlib.util.find_spec(name) is not None


def _ecgxai_loss_module():
  """ecgxai.utils.loss, or None without torch/ecgxai.

  The module subclasses `pytorch_lightning.LightningModule` only for its
  bookkeeping; pytorch_lightning is not installed (ecgxai comes with
  --no-deps), so a stand-in exposing `LightningModule = torch.nn.Module` is
  visible while the module is imported, and removed afterwards.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, None
  stub = types.ModuleType('pytorch_lightning')
  stub.LightningModule = torch.nn.Module
  modules = {} if _has_module('pytorch_lightning') else {
      'pytorch_lightning': stub}
  try:
    with mock.patch.dict(sys.modules, modules):
      return torch, importlib.import_module('ecgxai.utils.loss')
  except ImportError:
    return None, None


def _tiny_params(model, x, seed=0):
  """Random parameters without compiling initialisers."""
  shapes = jax.eval_shape(
      functools.partial(model.init, sample=False), jax.random.key(0), x
  )['params']
  rng = np.random.default_rng(seed)

  def draw(s):
    bound = 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

  return jax.tree.map(draw, shapes)


class GaussianTermsTest(absltest.TestCase):

  def test_nll_by_hand(self):
    # Sample 1: x=1, mean=0, sd=1 -> 0.5 log 2pi + 0 + 0.5.
    # Sample 2: x=2, mean=2, sd=2 -> 0.5 log 2pi + log 2 + 0.
    # Sample 3: x=0, mean=3, sd=3 -> 0.5 log 2pi + log 3 + 0.5.
    x = jnp.array([[[1.0], [2.0], [0.0]]])
    mean = jnp.array([[[0.0], [2.0], [3.0]]])
    sd = jnp.array([[[1.0], [2.0], [3.0]]])
    expected = 1.5 * math.log(2 * math.pi) + 1.0 + math.log(2) + math.log(3)
    np.testing.assert_allclose(
        losses.gaussian_nll(x, mean, sd), [expected], rtol=1e-6
    )

  def test_nll_replaces_nans_like_ecgxai(self):
    x = jnp.array([[1.0, 1.0]])
    got = losses.gaussian_nll(
        x, jnp.array([[jnp.nan, 1.0]]), jnp.array([[1.0, jnp.nan]])
    )
    # mean NaN -> 50: 0.5 log 2pi + 0.5 * 49^2; sd NaN -> 50: 0.5 log 2pi +
    # log 50.
    expected = math.log(2 * math.pi) + 0.5 * 49**2 + math.log(50)
    np.testing.assert_allclose(got, [expected], rtol=1e-6)

  def test_kl_by_hand_with_clipping(self):
    mu = jnp.array([[0.0, 1.0, 200.0, 0.0]])
    sd = jnp.array([[1.0, 2.0, 1.0, 1e-9]])
    got = losses.gaussian_kl(mu, sd)
    expected = [
        0.0,  # the prior itself
        -0.5 * (1 + math.log(4) - 1 - 4),
        0.5 * 100.0**2,  # mu clipped to 100
        -0.5 * (1 + math.log(1e-12) - 1e-12),  # sd clipped to 1e-6
    ]
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


class VAELossTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = vae._TinyVAE()
    rng = np.random.default_rng(0)
    cls.ecg = jnp.asarray(rng.normal(size=(3, 600, 12)), jnp.float32)
    cls.params = _tiny_params(cls.model, cls.ecg)
    cls.rng = jax.random.key(42)
    cls.loss = staticmethod(jax.jit(functools.partial(
        losses.vae_loss, model=cls.model), static_argnames=('sample',)))
    cls.apply = staticmethod(
        jax.jit(cls.model.apply, static_argnames=('sample',))
    )

  def _outputs(self, ecg, sample=True):
    _, aux = self.apply(
        {'params': self.params}, ecg, sample=sample,
        rngs={'sample': self.rng},
    )
    return jax.tree.map(lambda v: np.asarray(v, np.float64), aux)

  def test_loss_equals_numpy(self):
    loss, (metrics, model_state) = self.loss(
        self.params, {'ecg': self.ecg, 'mask': jnp.ones(3)}, self.rng
    )
    self.assertEqual(model_state, {})  # the VAE is stateless
    aux = self._outputs(self.ecg)
    x = np.asarray(self.ecg, np.float64)
    var = aux['recon_sd'] ** 2
    nll = (0.5 * np.log(2 * np.pi) + 0.5 * np.log(var)
           + 0.5 * (x - aux['recon_mean']) ** 2 / var).sum(axis=(1, 2))
    kl = (-0.5 * (1 + np.log(aux['sd'] ** 2) - aux['mu'] ** 2
                  - aux['sd'] ** 2)).sum(axis=1)
    np.testing.assert_allclose(loss, nll.mean() + 32 * kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics['nll'], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics['kl'], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        metrics['mse'], ((x - aux['recon_mean']) ** 2).mean(), rtol=1e-5
    )

  def test_loss_equals_ecgxai(self):
    torch, ecgxai_loss = _ecgxai_loss_module()
    if ecgxai_loss is None:
      self.skipTest('needs torch and ecgxai (bench extra)')
    loss, _ = self.loss(self.params, {'ecg': self.ecg}, self.rng)
    aux = self._outputs(self.ecg)
    # As train_factorecg_vae.py: Gaussian NLL + 32 KL, 'mean' reductions,
    # on [batch, leads, time] tensors.
    combined = ecgxai_loss.CombinedLoss(
        [
            ecgxai_loss.GaussianVAEReconLoss(reduction='mean'),
            ecgxai_loss.KLDivergence(reduction='mean', std_is_log=False),
        ],
        ['+'],
        [1, 32],
    )
    leads_first = lambda a: torch.from_numpy(  # noqa: E731
        np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 1)))
    expected, _ = combined({
        'x': leads_first(self.ecg),
        'reconstruction_mean': leads_first(aux['recon_mean']),
        'reconstruction_std': leads_first(aux['recon_sd']),
        'mu': torch.from_numpy(aux['mu'].astype(np.float32)),
        'std': torch.from_numpy(aux['sd'].astype(np.float32)),
    })
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)

  def test_mask_drops_padded_rows(self):
    two = {'ecg': self.ecg[:2], 'mask': jnp.ones(2)}
    # The padded row holds junk; it must not count.
    junk = self.ecg.at[2].set(1e3)
    three = {'ecg': junk, 'mask': jnp.array([1.0, 1.0, 0.0])}
    l2, (m2, _) = self.loss(self.params, two, self.rng, sample=False)
    l3, (m3, _) = self.loss(self.params, three, self.rng, sample=False)
    np.testing.assert_allclose(l3, l2, rtol=1e-5)
    for name in m2:
      np.testing.assert_allclose(m3[name], m2[name], rtol=1e-5, err_msg=name)
    # Without the mask the junk row dominates.
    l_all, _ = self.loss(
        self.params, dict(three, mask=jnp.ones(3)), self.rng, sample=False
    )
    self.assertGreater(float(l_all), 2 * float(l2))
    # An all-ones mask is the plain batch mean.
    l_nomask, _ = self.loss(self.params, {'ecg': junk}, self.rng,
                            sample=False)
    np.testing.assert_allclose(l_all, l_nomask, rtol=1e-6)

  def test_sampling_uses_rng(self):
    batch = {'ecg': self.ecg}
    a, _ = self.loss(self.params, batch, self.rng)
    b, _ = self.loss(self.params, batch, self.rng)
    c, _ = self.loss(self.params, batch, jax.random.key(7))
    self.assertEqual(float(a), float(b))
    self.assertNotEqual(float(a), float(c))

  def test_gradients_finite_and_nonzero(self):
    grads = jax.jit(jax.grad(
        lambda p: losses.vae_loss(
            p, {'ecg': self.ecg}, self.rng, model=self.model)[0]))(
                self.params)
    norms = np.array([float(jnp.linalg.norm(g))
                      for g in jax.tree.leaves(grads)])
    self.assertTrue(np.all(np.isfinite(norms)))
    self.assertTrue(np.all(norms > 0))

  def test_eval_and_summary(self):
    out = jax.jit(functools.partial(losses.vae_eval, model=self.model))(
        self.params, {'ecg': self.ecg, 'mask': jnp.ones(3)}
    )
    for name in ('loss', 'nll', 'kl', 'mse'):
      self.assertEqual(out[name].shape, (3,), name)
    for name in ('kl_per_dim', 'mu', 'mu_sq'):
      self.assertEqual(out[name].shape, (3, 4), name)
    # The eval loss is the deterministic (z = mu) training loss per row.
    loss, _ = self.loss(self.params, {'ecg': self.ecg}, self.rng,
                        sample=False)
    np.testing.assert_allclose(out['loss'].mean(), loss, rtol=1e-5)
    np.testing.assert_allclose(out['kl'], out['kl_per_dim'].sum(1),
                               rtol=1e-6)
    np.testing.assert_allclose(out['mu_sq'], out['mu'] ** 2, rtol=1e-6)
    means = jax.tree.map(lambda v: np.asarray(v).mean(0), out)
    summary = losses.vae_summarize(means)
    self.assertEqual(summary['kl_dim_03'], float(means['kl_per_dim'][3]))
    self.assertEqual(summary['mse'], float(means['mse']))

  def test_summarize_counts_active_units(self):
    # Var(mu) = E[mu^2] - E[mu]^2 = [1, 0.005, 0.5, 0]; two above 0.01.
    means = {
        'mse': np.float64(0.1), 'nll': np.float64(5.0), 'kl': np.float64(2.0),
        'mu': np.array([0.0, 1.0, 2.0, -1.0]),
        'mu_sq': np.array([1.0, 1.005, 4.5, 1.0]),
        'kl_per_dim': np.array([1.5, 0.001, 0.5, 0.02]),
    }
    summary = losses.vae_summarize(means)
    self.assertEqual(summary['active_units'], 2.0)
    self.assertEqual(summary['active_units_kl'], 3.0)
    self.assertEqual(summary['kl_dim_00'], 1.5)
    self.assertEqual(
        losses.vae_summarize(means, var_threshold=0.001)['active_units'], 3.0
    )
    for value in summary.values():
      self.assertIsInstance(value, float)

  def test_sharded_batch_matches_single_device(self):
    if jax.device_count() < 8:
      self.skipTest('needs 8 devices (tests/conftest.py forces 8 on CPU)')
    mesh = jax.make_mesh(
        (8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
    )
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    ecg = jnp.concatenate([self.ecg] * 3)[:8]
    batch = {'ecg': ecg, 'mask': jnp.array([1.0] * 6 + [0.0] * 2)}
    loss_fn = functools.partial(losses.vae_loss, model=self.model)
    single = jax.jit(loss_fn)(self.params, batch, self.rng)
    with jax.set_mesh(mesh):
      sharded = jax.jit(loss_fn)(
          self.params, jax.device_put(batch, rows), self.rng
      )
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for name in single[1][0]:
      np.testing.assert_allclose(
          sharded[1][0][name], single[1][0][name], rtol=1e-5, err_msg=name
      )

  def test_task_registry(self):
    task = losses.TASKS['vae']
    self.assertIs(task.loss_fn, losses.vae_loss)
    self.assertIs(task.eval_fn, losses.vae_eval)
    self.assertIs(task.summarize_fn, losses.vae_summarize)


class KLScheduleAndTCTest(absltest.TestCase):

  def test_kl_weight_schedules(self):
    w = lambda step, **kw: float(losses.kl_weight(step, 4.0, **kw))  # noqa: E731
    self.assertEqual(w(0), 4.0)
    self.assertEqual(w(None, schedule='linear', warmup_steps=100), 4.0)
    self.assertEqual(w(0, schedule='linear', warmup_steps=100), 0.0)
    self.assertAlmostEqual(w(25, schedule='linear', warmup_steps=100), 1.0)
    self.assertEqual(w(500, schedule='linear', warmup_steps=100), 4.0)
    # Cyclical: ramps over the first half of each 100-step cycle.
    self.assertAlmostEqual(w(125, schedule='cyclical', warmup_steps=100),
                           2.0)
    self.assertEqual(w(175, schedule='cyclical', warmup_steps=100), 4.0)
    self.assertEqual(w(200, schedule='cyclical', warmup_steps=100), 0.0)
    with self.assertRaisesRegex(ValueError, 'kl_schedule'):
      losses.kl_weight(0, 1.0, schedule='warm')

  def test_tc_decomposition_adds_up_and_sees_correlation(self):
    rng = np.random.default_rng(0)
    n, d = 128, 4
    sd = jnp.full((n, d), 0.2)
    independent = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    shared = rng.normal(size=(n, 1))
    correlated = jnp.asarray(shared + 0.05 * rng.normal(size=(n, d)),
                             jnp.float32)
    noise = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    mask = jnp.ones(n)
    tc = {}
    for size in (1, 10_000):
      for name, mu in (('independent', independent),
                       ('correlated', correlated)):
        z = mu + sd * noise
        parts = losses.tc_decomposition(z, mu, sd, mask, size)
        # MI + TC + dimension-wise KL = E[log q(z|x) - log p(z)] exactly.
        log_q = np.sum(-0.5 * np.log(2 * np.pi) - np.log(0.2)
                       - 0.5 * np.square(noise), axis=1)
        log_p = np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * np.square(z),
                       axis=1)
        np.testing.assert_allclose(
            float(parts['mi'] + parts['tc'] + parts['dw_kl']),
            np.mean(log_q - log_p), rtol=1e-4)
        tc[name, size] = float(parts['tc'])
    # Latents that move together have a larger total correlation; the data
    # set size N only shifts the estimate by a constant ((D - 1) log N).
    gap = tc['correlated', 1] - tc['independent', 1]
    self.assertGreater(gap, 1.5)
    self.assertAlmostEqual(
        tc['correlated', 10_000] - tc['independent', 10_000], gap, delta=1e-3)
    self.assertAlmostEqual(tc['independent', 10_000] - tc['independent', 1],
                           (d - 1) * np.log(10_000), delta=1e-2)
    # Padding rows are left out of the estimate.
    z = independent + sd * noise
    half = losses.tc_decomposition(z[:64], independent[:64], sd[:64],
                                   jnp.ones(64), 10_000)
    padded = losses.tc_decomposition(
        z, independent, sd, jnp.concatenate([jnp.ones(64), jnp.zeros(64)]),
        10_000)
    for key in half:
      np.testing.assert_allclose(padded[key], half[key], rtol=1e-5)

  def test_beta_tcvae_loss_and_schedule_in_the_vae_loss(self):
    model = vae._TinyVAE()
    rng = np.random.default_rng(1)
    ecg = jnp.asarray(rng.normal(size=(8, 600, 12)), jnp.float32)
    params = _tiny_params(model, ecg)
    key = jax.random.key(3)
    loss = jax.jit(functools.partial(
        losses.vae_loss, model=model, beta=6.0, objective='beta_tcvae',
        dataset_size=1000))
    value, (metrics, _) = loss(params, {'ecg': ecg}, key, step=0)
    self.assertAlmostEqual(
        float(value), float(metrics['nll'] + metrics['mi']
                            + 6.0 * metrics['tc'] + metrics['dw_kl']),
        delta=1e-3 * abs(float(value)))
    grads = jax.grad(lambda p: loss(p, {'ecg': ecg}, key, step=0)[0])(params)
    self.assertTrue(all(np.all(np.isfinite(g))
                        for g in jax.tree.leaves(grads)))
    warm = functools.partial(losses.vae_loss, model=model, beta=6.0,
                             kl_schedule='linear', kl_warmup_steps=10)
    early, (m0, _) = warm(params, {'ecg': ecg}, key, step=0)
    late, (m1, _) = warm(params, {'ecg': ecg}, key, step=10)
    self.assertEqual(float(m0['kl_weight']), 0.0)
    self.assertEqual(float(m1['kl_weight']), 6.0)
    np.testing.assert_allclose(early, m0['nll'], rtol=1e-6)
    np.testing.assert_allclose(late, m1['nll'] + 6.0 * m1['kl'], rtol=1e-5)
    with self.assertRaisesRegex(ValueError, 'dataset_size'):
      losses.vae_loss(params, {'ecg': ecg}, key, model=model,
                      objective='beta_tcvae')
    with self.assertRaisesRegex(ValueError, 'objective'):
      losses.vae_loss(params, {'ecg': ecg}, key, model=model,
                      objective='factor_vae')


if __name__ == '__main__':
  absltest.main()
