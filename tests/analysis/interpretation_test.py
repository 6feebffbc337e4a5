"""Tests of factor interpretation: Spearman associations, names, heatmap."""

import os
import tempfile

from absl.testing import absltest
import numpy as np
import scipy.stats

from factorecg_jax.analysis import interpretation


def _records(n=500, seed=0):
  rng = np.random.default_rng(seed)
  factors = rng.uniform(size=(n, 3))  # hr, pr, qrs_dur
  r_amp = rng.uniform(size=(n, 12))
  measurements = {
      'qt_ms': 300.0 + 100.0 * rng.uniform(size=n),
      'qrs_ms': 80.0 + 40.0 * factors[:, 2],
      'r_amp': r_amp,
      'qrs_offset_sample': 240.0 + 20.0 * factors[:, 2],
  }
  codes = np.stack([
      np.exp(3.0 * factors[:, 2]),           # monotone in qrs_dur
      -(factors[:, 0] ** 3),                 # decreasing in hr
      1e-3 * rng.normal(size=n),             # inactive
      np.log(measurements['qt_ms']) * 10.0,  # a measurement only
      10.0 * r_amp[:, 1] ** 2,               # R amplitude in lead II
  ], axis=1)
  return codes, factors, measurements


class SpearmanTest(absltest.TestCase):

  def test_matches_scipy_with_ties(self):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(60, 3)).astype(float)
    y = rng.integers(0, 4, size=(60, 2)).astype(float) + 0.1 * x[:, :2]
    got = interpretation.spearman_matrix(x, y)
    for i in range(3):
      for j in range(2):
        self.assertAlmostEqual(got[i, j],
                               scipy.stats.spearmanr(x[:, i], y[:, j])[0],
                               places=12)


class InterpretTest(absltest.TestCase):

  def test_names_follow_the_strongest_association(self):
    codes, factors, measurements = _records()
    out = interpretation.interpret_codes(
        codes, factors, measurements, factor_names=('hr', 'pr', 'qrs_dur'))
    np.testing.assert_array_equal(out['codes'], [0, 1, 3, 4])
    self.assertEqual(out['rho'].shape, (4, len(out['column_keys'])))
    self.assertEqual(out['num_factor_columns'], 3)
    # qrs_dur and the measured QRS tie at rho = 1: the factor wins.
    self.assertEqual(out['names'][0], 'factor 0 ~ QRS duration, rho = 1.00')
    self.assertEqual(out['names'][1], 'factor 1 ~ heart rate, rho = -1.00')
    self.assertEqual(out['names'][2], 'factor 3 ~ QT, rho = 1.00')
    self.assertEqual(out['names'][3], 'factor 4 ~ R II, rho = 1.00')
    self.assertEqual(out['best'][2]['column'], 'qt_ms')
    self.assertNotIn('qrs_offset_sample', out['column_keys'])

  def test_measurement_columns_expand_selected_leads(self):
    _, _, measurements = _records(n=10)
    keys, labels, values = interpretation.measurement_columns(
        measurements, {'r_amp': ('V1', 'aVL')})
    # Clinical order (QRS before QT), not the dict's order.
    self.assertEqual(keys, ['qrs_ms', 'qt_ms', 'r_amp/V1', 'r_amp/aVL'])
    self.assertEqual(labels, ['QRS', 'QT', 'R V1', 'R aVL'])
    np.testing.assert_array_equal(values[:, 2], measurements['r_amp'][:, 6])
    np.testing.assert_array_equal(values[:, 3], measurements['r_amp'][:, 4])

  def test_heatmap_is_written(self):
    codes, factors, measurements = _records(n=100)
    out = interpretation.interpret_codes(codes, factors, measurements)
    with tempfile.TemporaryDirectory() as tmp:
      path = interpretation.plot_association_heatmap(
          out['rho'], [f'factor {c}' for c in out['codes']],
          out['column_labels'], os.path.join(tmp, 'sub', 'rho.png'),
          num_factor_columns=out['num_factor_columns'], title='t')
      with open(path, 'rb') as f:
        data = f.read()
    self.assertTrue(data.startswith(b'\x89PNG'))
    self.assertGreater(len(data), 5000)


class EncodedR2Test(absltest.TestCase):

  def test_linear_nonlinear_and_missing_factors(self):
    rng = np.random.default_rng(3)
    n = 1500
    # Factors: linear in code 0; carried as a square by code 1 (symmetric
    # around 0, so no linear trace); in no code; a constant.
    factors = np.stack([rng.normal(size=n), rng.uniform(-1, 1, n),
                        rng.normal(size=n), np.full(n, 2.0)], axis=1)
    codes = np.stack([
        factors[:, 0] + 0.5 * rng.normal(size=n),  # R^2 = 1 / 1.25 = 0.8
        factors[:, 1] ** 2,
        rng.normal(size=n),
    ], axis=1)
    rows = interpretation.encoded_r2(
        codes[:1000], factors[:1000], codes[1000:], factors[1000:],
        factor_names=['hr', 'qtc', 'p_amp', 'const'])
    got = {r['factor']: r for r in rows}
    self.assertEqual(got['hr']['label'], interpretation.FACTOR_LABELS['hr'])
    self.assertAlmostEqual(got['hr']['r2_linear'], 0.8, delta=0.05)
    # The square is invertible only up to the sign: half the variance
    # stays, for any model; the linear fit sees none of it.
    self.assertLess(got['qtc']['r2_linear'], 0.05)
    self.assertBetween(got['qtc']['r2_boosted'], -0.1, 0.1)
    for key in ('r2_linear', 'r2_boosted'):
      self.assertLess(got['p_amp'][key], 0.05)
    self.assertTrue(np.isnan(got['const']['r2_linear']))
    # Deterministic for a seed.
    again = interpretation.encoded_r2(
        codes[:1000], factors[:1000], codes[1000:], factors[1000:],
        factor_names=['hr', 'qtc', 'p_amp', 'const'])
    self.assertEqual(str(rows), str(again))

  def test_boosted_sees_a_monotone_nonlinear_code(self):
    rng = np.random.default_rng(4)
    n = 1500
    factor = rng.uniform(0, 1, (n, 1))
    codes = np.exp(6.0 * factor) + 0.01 * rng.normal(size=(n, 1))
    (row,) = interpretation.encoded_r2(codes[:1000], factor[:1000],
                                       codes[1000:], factor[1000:])
    self.assertGreater(row['r2_boosted'], 0.95)
    self.assertLess(row['r2_linear'], row['r2_boosted'] - 0.1)
    with tempfile.TemporaryDirectory() as tmp:
      path = interpretation.plot_encoded_r2(
          [row, dict(row, label='nan', r2_linear=float('nan'))],
          os.path.join(tmp, 'a', 'r2.png'))
      with open(path, 'rb') as f:
        self.assertTrue(f.read().startswith(b'\x89PNG'))


if __name__ == '__main__':
  absltest.main()
