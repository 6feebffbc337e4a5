"""Tests of tolerance-aware argmax/argsort (decisions that ignore rounding)."""

from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.analysis import interpretation
from factorecg_jax.analysis import ranking


class ArgmaxTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 1e-9, -1e-9)
  def test_near_tie_goes_to_the_first_index(self, delta):
    self.assertEqual(ranking.argmax([0.3, 1.0, 1.0 + delta, 0.2]), 1)
    self.assertEqual(ranking.argmax([1.0 + delta, 1.0]), 0)

  def test_clear_winner_still_wins(self):
    self.assertEqual(ranking.argmax([1.0, 1.0 + 1e-4]), 1)
    self.assertEqual(ranking.argmax([-5.0, np.nan, -4.0]), 2)

  def test_relative_tolerance_scales_with_the_values(self):
    # 1e3 apart on a scale of 1e10 is a tie; on a scale of 1 it is not.
    self.assertEqual(ranking.argmax([1e10, 1e10 + 1e3]), 0)
    self.assertEqual(ranking.argmax([1.0, 1.0 + 1e-3]), 1)

  def test_empty_raises(self):
    with self.assertRaises(ValueError):
      ranking.argmax([])

  @parameterized.parameters(0.0, 1e-9, -1e-9)
  def test_argsort_keeps_index_order_within_ties(self, delta):
    values = [0.5, 2.0, 0.5 + delta, np.nan, 2.0 - delta, 1.0]
    np.testing.assert_array_equal(ranking.argsort_descending(values),
                                  [1, 4, 5, 0, 2, 3])

  def test_argsort_matches_numpy_without_ties(self):
    values = np.random.default_rng(0).normal(size=50)
    np.testing.assert_array_equal(ranking.argsort_descending(values),
                                  np.argsort(-values))

  @parameterized.parameters(0.0, 1e-12, -1e-12)
  def test_active_factor_order_ignores_rounding(self, delta):
    kl = np.array([0.5, 3.0, 0.001, 3.0 * (1 + delta), 0.2])
    np.testing.assert_array_equal(factors_lib.active_factors(kl, 0.01),
                                  [1, 3, 0, 4])


class FactorNamingTieTest(parameterized.TestCase):
  """A factor and its own measurement correlate equally with a code."""

  def _data(self, n=300):
    rng = np.random.default_rng(0)
    factors = rng.uniform(size=(n, 2))  # hr, qrs_dur
    codes = np.stack([factors[:, 1] ** 2, rng.normal(size=n)], axis=1)
    measurements = {'qrs_ms': 80.0 + 40.0 * factors[:, 1]}
    return codes, factors, measurements

  def test_exact_tie_names_the_factor(self):
    codes, factors, measurements = self._data()
    out = interpretation.interpret_codes(
        codes, factors, measurements, factor_names=['hr', 'qrs_dur'],
        active_mask=np.array([True, False]))
    # Both columns have rho = 1 (identical ranks).
    row = out['rho'][0]
    self.assertAlmostEqual(abs(row[1]), 1.0, places=12)
    self.assertAlmostEqual(abs(row[2]), 1.0, places=12)
    self.assertEqual(out['best'][0]['column'], 'qrs_dur')
    self.assertEqual(out['names'], ['factor 0 ~ QRS duration, rho = 1.00'])

  @parameterized.parameters(1e-9, -1e-9)
  def test_perturbed_tie_names_the_factor(self, delta):
    codes, factors, measurements = self._data()
    exact = interpretation.spearman_matrix

    def perturbed(x, y):
      rho = exact(x, y)
      rho[:, 2] = rho[:, 1] * (1.0 + delta)  # the measurement column
      return rho

    with mock.patch.object(interpretation, 'spearman_matrix', perturbed):
      out = interpretation.interpret_codes(
          codes, factors, measurements, factor_names=['hr', 'qrs_dur'],
          active_mask=np.array([True, False]))
    self.assertNotEqual(out['rho'][0, 1], out['rho'][0, 2])
    self.assertEqual(out['best'][0]['column'], 'qrs_dur')

  def test_a_clearly_stronger_measurement_still_wins(self):
    codes, factors, measurements = self._data()
    rng = np.random.default_rng(1)
    measurements = {'qrs_ms': codes[:, 0] * 3.0,  # exactly monotone in code
                    'qt_ms': rng.normal(size=len(codes))}
    factors = factors + 0.05 * rng.normal(size=factors.shape)  # blurred
    out = interpretation.interpret_codes(
        codes, factors, measurements, factor_names=['hr', 'qrs_dur'],
        active_mask=np.array([True, False]))
    self.assertEqual(out['best'][0]['column'], 'qrs_ms')


if __name__ == '__main__':
  absltest.main()
