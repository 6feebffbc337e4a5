"""Tests of the BetaVAE and FactorVAE intervention scores."""

from absl.testing import absltest
import jax
import pytest
import numpy as np

from factorecg_jax.analysis import interventions as iv
from factorecg_jax.data import simulator

K = 4
SMALL = dict(batch_size=16, num_train=300, num_eval=400, chunk_rows=512)


def _sample(key, n):
  return jax.random.uniform(key, (n, K))


def _render(factors, key):
  del key
  f = np.asarray(factors)
  # An invertible, nonlinear view of the factors plus the factors themselves.
  return {'ecg': np.tanh(3.0 * f - 1.0), 'factors': f}


class _Recorder:
  """A render function that remembers the factors it was asked for."""

  def __init__(self):
    self.calls = []

  def __call__(self, factors, key):
    self.calls.append(np.array(factors))
    return _render(factors, key)


class InterventionTest(absltest.TestCase):

  def test_oracle_scores_one(self):
    enc = iv.oracle_encoder()
    beta = iv.beta_vae_score(jax.random.key(0), _sample, _render, enc,
                             **SMALL)
    factor = iv.factor_vae_score(jax.random.key(0), _sample, _render, enc,
                                 num_variance_estimate=500, **SMALL)
    self.assertGreaterEqual(beta['eval_accuracy'], 0.98)
    self.assertGreaterEqual(factor['eval_accuracy'], 0.98)
    self.assertEqual(factor['num_active_dims'], K)

  def test_noise_scores_chance(self):
    rng = np.random.default_rng(0)

    def noise(obs):
      return rng.normal(size=(len(obs['factors']), 6))

    beta = iv.beta_vae_score(jax.random.key(1), _sample, _render, noise,
                             **SMALL)
    factor = iv.factor_vae_score(jax.random.key(1), _sample, _render, noise,
                                 num_variance_estimate=500, **SMALL)
    # 400 evaluation points: the sd of a chance accuracy is ~0.022.
    self.assertAlmostEqual(beta['eval_accuracy'], 1 / K, delta=0.1)
    self.assertAlmostEqual(factor['eval_accuracy'], 1 / K, delta=0.1)

  def test_partial_encoder_between(self):
    # Codes see factors 0 and 1 only: fixing 2 or 3 leaves no trace.
    enc = iv.oracle_encoder(indices=[0, 1])
    beta = iv.beta_vae_score(jax.random.key(2), _sample, _render, enc,
                             **SMALL)
    self.assertBetween(beta['eval_accuracy'], 0.4, 0.8)

  def test_factor_vae_groups_share_the_fixed_factor(self):
    rec = _Recorder()
    iv.factor_vae_score(jax.random.key(3), _sample, rec, iv.oracle_encoder(),
                        batch_size=8, num_train=40, num_eval=40,
                        num_variance_estimate=64, chunk_rows=64, snap_bins=3)
    medians = iv._bin_medians(_sample, jax.random.fold_in(
        jax.random.key(3), 3), 3)
    groups = np.concatenate(rec.calls[1:]).reshape(-1, 8, K)
    self.assertLen(groups, 40 + 40)  # training and evaluation groups
    for g in groups:
      fixed = np.flatnonzero(np.ptp(g, axis=0) == 0)
      self.assertLen(fixed, 1)
      self.assertIn(g[0, fixed[0]], medians[fixed[0]][1].astype(np.float32))

  def test_beta_vae_pairs_share_the_fixed_factor(self):
    rec = _Recorder()
    iv.beta_vae_score(jax.random.key(4), _sample, rec, iv.oracle_encoder(),
                      batch_size=8, num_train=20, num_eval=20, chunk_rows=64)
    for call in rec.calls:
      for g in call.reshape(-1, 16, K):
        same = np.all(g[:8] == g[8:], axis=0)
        self.assertEqual(same.sum(), 1)
        self.assertGreater(np.ptp(g[:8, same][:, 0]), 0.0)

  def test_factor_indices_restrict_labels(self):
    out = iv.beta_vae_score(jax.random.key(5), _sample, _render,
                            iv.oracle_encoder(), factor_indices=[1, 3],
                            **SMALL)
    self.assertEqual(out['num_factors'], 2.0)
    self.assertGreaterEqual(out['eval_accuracy'], 0.98)


# XLA optimisation passes off (tests/conftest.py).
@pytest.mark.usefixtures('fast_compile')
class SimulatorTest(absltest.TestCase):

  def test_oracle_on_simulator_scores_one(self):
    sample, render = iv.simulator_generator('uniform')
    enc = iv.oracle_encoder(low=simulator.FACTOR_LOW,
                            high=simulator.FACTOR_HIGH)
    kw = dict(batch_size=8, num_eval=100, chunk_rows=256)
    # The 14-class logistic regression needs ~500 points to reach ~1.
    beta = iv.beta_vae_score(jax.random.key(0), sample, render, enc,
                             num_train=600, **kw)
    factor = iv.factor_vae_score(jax.random.key(0), sample, render, enc,
                                 num_train=200, num_variance_estimate=256,
                                 **kw)
    self.assertEqual(beta['num_factors'], simulator.NUM_FACTORS)
    self.assertGreaterEqual(beta['eval_accuracy'], 0.95)
    self.assertGreaterEqual(factor['eval_accuracy'], 0.95)
    obs = render(sample(jax.random.key(1), 4), jax.random.key(2))
    self.assertEqual(obs['ecg'].shape, (4, simulator.BEAT_LEN, 12))
    self.assertTrue(np.all(np.isfinite(np.asarray(obs['ecg']))))


if __name__ == '__main__':
  absltest.main()
