"""Tests of the ground-truth target masks and the localisation metrics."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.data import simulator
from factorecg_jax.explain import evaluation
from factorecg_jax.explain import ground_truth

# Tiny arrays: compiling dominates, so XLA optimisations are off.
pytestmark = pytest.mark.usefixtures('fast_compile')


class MasksTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    f0 = np.asarray(simulator.default_factors())
    f1 = f0.copy()
    f1[simulator.FACTOR_INDEX['qrs_dur']] = 140.0
    f1[simulator.FACTOR_INDEX['pr']] = 200.0
    cls.factors = np.stack([f0, f1])
    cls.names = ground_truth.TARGET_NAMES
    cls.interval = np.asarray(ground_truth.target_masks(cls.factors,
                                                        cls.names))
    cls.jvp = np.asarray(ground_truth.target_masks(cls.factors, cls.names,
                                                   mode='jvp'))

  def _idx(self, masks, record, name):
    return np.flatnonzero(masks[record, self.names.index(name)])

  def test_shape(self):
    self.assertEqual(self.interval.shape, (2, len(self.names), 600))
    self.assertEqual(self.interval.dtype, bool)

  def test_qrs_is_onset_to_j_plus_20_ms(self):
    # Default beat: QRS 100 ms -> J at sample 250, J + 20 ms at 260.
    np.testing.assert_array_equal(self._idx(self.interval, 0, 'qrs_ms'),
                                  np.arange(200, 261))
    np.testing.assert_array_equal(self._idx(self.interval, 1, 'qrs_ms'),
                                  np.arange(200, 281))

  def test_pr_lies_before_qrs_onset(self):
    for record, pr in ((0, 160.0), (1, 200.0)):
      idx = self._idx(self.interval, record, 'pr_ms')
      self.assertEqual(idx.max(), simulator.QRS_ONSET - 1)
      self.assertEqual(idx.min(), simulator.QRS_ONSET - int(pr / 2))
      # The JVP mask: this P wave, and the next beat's P at the window end.
      jvp = self._idx(self.jvp, record, 'pr_ms')
      self.assertFalse(np.any((jvp >= simulator.QRS_ONSET) & (jvp < 550)))
      self.assertLess(jvp.min(), simulator.QRS_ONSET)

  def test_other_intervals(self):
    np.testing.assert_array_equal(self._idx(self.interval, 0, 'st_j_v5_mv'),
                                  np.arange(250, 291))
    np.testing.assert_array_equal(self._idx(self.interval, 0, 'r_amp_v5_mv'),
                                  np.arange(200, 251))
    t_end = simulator.QRS_ONSET + float(
        simulator.derived_times(self.factors[0])['t_end']) / simulator.DT_MS
    idx = self._idx(self.interval, 0, 'qt_ms')
    self.assertEqual(idx.min(), 250)
    self.assertEqual(idx.max(), int(np.floor(t_end + 1e-3)))

  def test_hr_and_jvp_masks(self):
    hr = np.any(jax.jit(simulator.relevance_mask, static_argnums=1)(
        self.factors[0], 'hr'), axis=-1)
    for masks in (self.interval, self.jvp):
      np.testing.assert_array_equal(
          masks[0, self.names.index('hr_bpm')], np.asarray(hr))
    # JVP QRS mask sits inside the QRS interval; qt_ms falls back.
    idx = self._idx(self.jvp, 0, 'qrs_ms')
    self.assertGreaterEqual(idx.min(), 200)
    self.assertLessEqual(idx.max(), 260)
    np.testing.assert_array_equal(self.jvp[:, self.names.index('qt_ms')],
                                  self.interval[:, self.names.index('qt_ms')])

  def test_bad_arguments(self):
    with self.assertRaises(ValueError):
      ground_truth.target_masks(self.factors, ['nope'])
    with self.assertRaises(ValueError):
      ground_truth.target_masks(self.factors, ['qrs_ms'], mode='exact')


class LocalisationMetricsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # The default beat's QRS mask (MasksTest checks it is this).
    self.mask = np.zeros((1, 600), bool)
    self.mask[0, 200:261] = True
    inside = np.broadcast_to(self.mask[..., None], (1, 600, 12))
    self.maps = np.stack([inside.astype(np.float32),
                          (~inside).astype(np.float32),
                          np.zeros((1, 600, 12), np.float32)])

  def test_mass_accuracy(self):
    rma = evaluation.relevance_mass_accuracy(self.maps, self.mask)
    np.testing.assert_allclose(rma[:, 0], [1.0, 0.0, 0.0])
    # Negative relevance is ignored by 'positive' but counted by 'abs'.
    signed = self.maps[:1] - 0.5 * self.maps[1:2]
    self.assertEqual(
        evaluation.relevance_mass_accuracy(signed, self.mask)[0, 0], 1.0)
    n_in, n_out = self.mask.sum(), (~self.mask).sum()
    np.testing.assert_allclose(
        evaluation.relevance_mass_accuracy(signed, self.mask, 'abs')[0, 0],
        n_in / (n_in + 0.5 * n_out), rtol=1e-6)

  def test_rank_accuracy(self):
    rra = evaluation.relevance_rank_accuracy(self.maps, self.mask)
    np.testing.assert_allclose(rra[:2, 0], [1.0, 0.0])
    half = self.maps[:1].copy()
    half[0, 0, 200:230] = 0.0  # Top |mask| samples: 31 inside, 30 outside.
    self.assertAlmostEqual(
        float(evaluation.relevance_rank_accuracy(half, self.mask)[0, 0]),
        31 / 61, places=6)

  def test_pointing_game(self):
    pg = evaluation.pointing_game(self.maps, self.mask)
    np.testing.assert_array_equal(pg[:, 0], [1.0, 0.0, 0.0])
    # A peak outside within float tolerance of a masked peak is a tie: hit.
    m = np.zeros((1, 1, 600, 12), np.float32)
    m[0, 0, 230, 0] = 1.0
    m[0, 0, 100, 0] = np.nextafter(np.float32(1.0), np.float32(2.0))
    self.assertEqual(evaluation.pointing_game(m, self.mask)[0, 0], 1.0)
    m[0, 0, 100, 0] = 1.01
    self.assertEqual(evaluation.pointing_game(m, self.mask)[0, 0], 0.0)

  def test_select_target(self):
    a = jnp.arange(2 * 3 * 4 * 5 * 6, dtype=jnp.float32).reshape(2, 3, 4, 5, 6)
    out = evaluation.select_target(a, jnp.array([0, 3, 1]))
    np.testing.assert_array_equal(out[:, 1], a[:, 1, 3])
    np.testing.assert_array_equal(out[:, 2], a[:, 2, 1])


if __name__ == '__main__':
  absltest.main()
