"""Tests of evaluate_run (files and scores) and make_encode_fn."""

import json
import os
import tempfile

from absl.testing import absltest
import jax
import pytest
import numpy as np

from factorecg_jax.analysis import disentanglement_report as report
from factorecg_jax.models import vae

K = 3
NAMES = ('hr', 'qrs_dur', 't_amp')


def _beats(factors, seed):
  """[n, 20, 2] toy 'ECGs': lead 0 starts with the factors, lead 1 is noise."""
  f = np.asarray(factors, np.float32)
  x = np.zeros((len(f), 20, 2), np.float32)
  x[:, :K, 0] = f
  x[:, :, 1] = np.random.default_rng(seed).normal(size=(len(f), 20))
  return x


def _records(n, seed):
  f = np.random.default_rng(seed).uniform(size=(n, K))
  return dict(factors=f, beat=_beats(f, seed + 100),
              measurements={'qrs_ms': 80 + 40 * f[:, 1],
                            'hr_bpm': 50 + 50 * f[:, 0]})


def _encode(x):
  """Oracle-like encoder: the factors plus two near-constant codes."""
  x = np.asarray(x)
  mu = np.concatenate([x[:, :K, 0], 1e-3 * x[:, 5:7, 1]], axis=1)
  return mu, np.full_like(mu, 0.1)


def _sample(key, n):
  return jax.random.uniform(key, (n, K))


def _render(factors, key):
  return {'ecg': _beats(factors, int(jax.random.randint(key, (), 0, 1 << 30)))}


class EvaluateRunTest(absltest.TestCase):

  def test_writes_all_outputs(self):
    with tempfile.TemporaryDirectory() as run_dir:
      out = report.evaluate_run(
          run_dir, encode_fn=_encode, train_records=_records(1000, 0),
          test_records=_records(500, 1), factor_names=NAMES,
          generator=(_sample, _render),
          intervention_kwargs=dict(batch_size=8, num_train=300, num_eval=200,
                                   num_variance_estimate=256,
                                   chunk_rows=256))
      folder = os.path.join(run_dir, 'disentanglement')
      for name in ('metrics.json', 'metrics.md', 'matrices.npz',
                   'spearman.png', 'dci_importance.png', 'mutual_info.png'):
        self.assertTrue(os.path.getsize(os.path.join(folder, name)) > 0,
                        name)
      with open(os.path.join(folder, 'metrics.json')) as f:
        saved = json.load(f)
      with open(os.path.join(folder, 'metrics.md')) as f:
        markdown = f.read()
      mats = np.load(os.path.join(folder, 'matrices.npz'))
    scores = saved['scores']
    self.assertEqual(scores, out['scores'])
    for key in ('mig', 'dci_disentanglement', 'sap', 'modularity',
                'explicitness_test', 'active_units',
                'gaussian_total_correlation', 'beta_vae_eval_accuracy',
                'factor_vae_eval_accuracy'):
      self.assertTrue(np.isfinite(scores[key]), key)
    self.assertGreater(scores['mig'], 0.8)
    self.assertGreater(scores['dci_disentanglement'], 0.95)
    self.assertGreaterEqual(scores['beta_vae_eval_accuracy'], 0.95)
    self.assertGreaterEqual(scores['factor_vae_eval_accuracy'], 0.95)
    self.assertEqual(scores['active_units'], 3.0)
    self.assertEqual(saved['names'], [
        'factor 0 ~ heart rate, rho = 1.00',
        'factor 1 ~ QRS duration, rho = 1.00',
        'factor 2 ~ T amplitude, rho = 1.00'])
    self.assertIn('| MIG |', markdown)
    self.assertIn('| 1 | QRS duration | 1.00 |', markdown)
    self.assertEqual(mats['dci_importance'].shape, (5, K))
    self.assertEqual(mats['rho'].shape, (3, K + 2))
    self.assertAlmostEqual(saved['settings']['intervention_chance'], 1 / K)

  def test_interventions_can_be_skipped(self):
    with tempfile.TemporaryDirectory() as run_dir:
      out = report.evaluate_run(
          run_dir, encode_fn=lambda x: _encode(x)[0],
          train_records=_records(300, 0), test_records=_records(200, 1),
          interventions_enabled=False)
    self.assertNotIn('beta_vae_eval_accuracy', out['scores'])
    self.assertLen(out['names'], 3)
    self.assertTrue(out['names'][0].startswith('factor 0 ~ v0'))


# XLA optimisation passes off (tests/conftest.py).
@pytest.mark.usefixtures('fast_compile')
class MakeEncodeFnTest(absltest.TestCase):

  def test_batched_encoder_matches_direct_apply(self):
    model = vae._TinyVAE()
    x = np.asarray(jax.random.normal(jax.random.key(0), (5, 600, 12)))
    variables = model.init(jax.random.key(1), x[:1], sample=False)
    encode = report.make_encode_fn(model.apply, variables, batch_size=4)
    mu, sd = encode(x)
    want_mu, want_sd = model.apply(variables, x, method='encode')
    self.assertEqual(mu.shape, (5, 4))
    np.testing.assert_allclose(mu, want_mu, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(sd, want_sd, atol=1e-5, rtol=1e-5)
    self.assertTrue(np.all(sd > 0))


if __name__ == '__main__':
  absltest.main()
