"""Tests of the whole-split statistics and their bootstrap intervals.

The vectorised bootstraps are checked against loops that re-run the library
metric (scikit-learn, lifelines) on each resample of the same index matrix;
Harrell's C against a plain pairwise count; the interval's coverage on
scores with a known AUROC.
"""

import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from scipy import stats
from sklearn import metrics as sk_metrics

from factorecg_jax.analysis import statistics


def _survival_data(n, seed, *, round_to=0.1, risk_levels=None):
  """Times with ties (rounded), censoring, risks (optionally few levels)."""
  rng = np.random.default_rng(seed)
  risk = rng.normal(size=n)
  t = rng.exponential(np.exp(-risk))
  c = rng.exponential(1.5, size=n)
  time = np.round(np.minimum(t, c) / round_to) * round_to + round_to
  event = t <= c
  noisy = risk + rng.normal(scale=0.7, size=n)
  if risk_levels:
    noisy = np.round(noisy * risk_levels) / risk_levels
  return time, noisy, event


def _pairwise_c(time, risk, event):
  """Harrell's C by a plain loop over ordered pairs."""
  correct = tied = pairs = 0.0
  n = len(time)
  for i in range(n):
    if not event[i]:
      continue
    for j in range(n):
      # i's time is the shorter one and an event; a censoring at the same
      # time as a death outlived it, two deaths at one time are no pair.
      if time[j] > time[i] or (time[j] == time[i] and not event[j]):
        pairs += 1
        if risk[i] > risk[j]:
          correct += 1
        elif risk[i] == risk[j]:
          tied += 1
  return (correct + 0.5 * tied) / pairs


def _loop(metric, n, num_resamples, seed):
  values = []
  for idx in statistics.bootstrap_indices(n, num_resamples, seed):
    values.append(metric(idx))
  return np.asarray(values, np.float64)


class AurocTest(parameterized.TestCase):

  def test_one_class_is_nan(self):
    self.assertTrue(math.isnan(statistics.auroc(np.ones(5), np.arange(5))))
    self.assertTrue(math.isnan(statistics.auroc(np.zeros(5), np.arange(5))))
    self.assertEqual(statistics.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]),
                     1.0)

  # Chunk sizes: default (one chunk), and a few rows per chunk.
  @parameterized.parameters(None, 7 * 40)
  def test_vectorised_bootstrap_equals_loop(self, chunk_elements):
    rng = np.random.default_rng(0)
    n = 40
    # Rare positives: some resamples hold one class and must be skipped.
    labels = np.zeros(n, bool)
    labels[[3, 17]] = True  # P(no positive in a resample) = 0.95^40 = 13 %
    scores = np.round(rng.normal(size=n) + labels, 1)  # tied scores
    with mock.patch.object(statistics, '_CHUNK_ELEMENTS',
                           chunk_elements or statistics._CHUNK_ELEMENTS):
      got = statistics.bootstrap_auroc(labels, scores, num_resamples=300,
                                       seed=3)
      indices = statistics.bootstrap_indices(n, 300, 3)

    def metric(idx):
      y = labels[idx]
      if y.all() or not y.any():
        return np.nan
      return sk_metrics.roc_auc_score(y, scores[idx])

    want = np.array([metric(idx) for idx in indices])
    used = np.isfinite(want)
    self.assertBetween(used.sum(), 200, 299)
    self.assertEqual(got['num_resamples_used'], used.sum())
    low, high = np.percentile(want[used], [2.5, 97.5])
    self.assertAlmostEqual(got['low'], low, delta=1e-12)
    self.assertAlmostEqual(got['high'], high, delta=1e-12)
    self.assertAlmostEqual(
        got['value'], sk_metrics.roc_auc_score(labels, scores), delta=1e-12)

  def test_resampled_values_equal_loop_one_by_one(self):
    rng = np.random.default_rng(1)
    n = 60
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(size=n) + labels, 1)
    order, starts = statistics._score_groups(scores)
    idx = statistics.bootstrap_indices(n, 100, 0)
    got = statistics._weighted_auroc(labels, order, starts,
                                     statistics._counts(idx, n))
    want = [sk_metrics.roc_auc_score(labels[i], scores[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

  def test_interval_covers_known_auroc(self):
    # Positives ~ N(d, 1), negatives ~ N(0, 1): AUROC = Phi(d / sqrt 2).
    d, n_pos, n_neg, repeats = 1.0, 100, 100, 200
    truth = stats.norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(2024)
    covered, widths = 0, []
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    for r in range(repeats):
      scores = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
      ci = statistics.bootstrap_auroc(labels, scores, num_resamples=500,
                                      seed=r)
      covered += ci['low'] <= truth <= ci['high']
      widths.append(ci['high'] - ci['low'])
    self.assertBetween(covered / repeats, 0.90, 0.98)
    # Normal-theory width (Hanley & McNeil 1982) ~ 2 * 1.96 * 0.029.
    self.assertBetween(np.mean(widths), 0.09, 0.14)

  def test_deterministic_for_a_seed(self):
    rng = np.random.default_rng(5)
    labels, scores = rng.random(80) < 0.5, rng.normal(size=80)
    a = statistics.bootstrap_auroc(labels, scores, num_resamples=200, seed=1)
    b = statistics.bootstrap_auroc(labels, scores, num_resamples=200, seed=1)
    c = statistics.bootstrap_auroc(labels, scores, num_resamples=200, seed=2)
    self.assertEqual(a, b)
    self.assertNotEqual((a['low'], a['high']), (c['low'], c['high']))


class MacroAurocTest(absltest.TestCase):

  def test_skips_labels_with_one_class(self):
    rng = np.random.default_rng(0)
    labels = rng.random((50, 3)) < 0.4
    labels[:, 2] = False
    scores = rng.normal(size=(50, 3))
    want = np.mean([sk_metrics.roc_auc_score(labels[:, k], scores[:, k])
                    for k in (0, 1)])
    self.assertAlmostEqual(statistics.macro_auroc(labels, scores), want,
                           delta=1e-12)

  def test_bootstrap_equals_loop(self):
    rng = np.random.default_rng(1)
    n = 50
    labels = rng.random((n, 3)) < np.array([0.5, 0.3, 0.04])
    labels[0, 2] = True
    scores = np.round(rng.normal(size=(n, 3)) + labels, 1)
    got = statistics.bootstrap_macro_auroc(labels, scores, num_resamples=300,
                                           seed=4)

    def metric(idx):
      values = [sk_metrics.roc_auc_score(labels[idx, k], scores[idx, k])
                for k in range(3) if 0 < labels[idx, k].sum() < n]
      return np.mean(values) if values else np.nan

    want = _loop(metric, n, 300, 4)
    # The rare label is missing from some resamples, changing their mean.
    self.assertLess(np.sum(labels[statistics.bootstrap_indices(n, 300, 4), 2]
                           .any(axis=1)), 300)
    self.assertEqual(got['num_resamples_used'], np.isfinite(want).sum())
    low, high = np.percentile(want, [2.5, 97.5])
    self.assertAlmostEqual(got['low'], low, delta=1e-12)
    self.assertAlmostEqual(got['high'], high, delta=1e-12)


class ConcordanceTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2)
  def test_lifelines_equals_pairwise_count(self, seed):
    time, risk, event = _survival_data(120, seed, risk_levels=2)
    # Ties of every kind are present, so their handling is tested.
    self.assertLess(len(np.unique(risk)), 120)
    self.assertLess(len(np.unique(time[event])), event.sum())
    self.assertNotEmpty(np.intersect1d(time[event], time[~event]))
    self.assertAlmostEqual(statistics.concordance_index(time, risk, event),
                           _pairwise_c(time, risk, event), delta=1e-12)

  def test_sign_higher_risk_is_shorter_survival(self):
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.ones(4, bool)
    self.assertEqual(statistics.concordance_index(time, -time, event), 1.0)
    self.assertEqual(statistics.concordance_index(time, time, event), 0.0)

  def test_no_comparable_pair_is_nan(self):
    self.assertTrue(math.isnan(statistics.concordance_index(
        [1.0, 2.0], [0.1, 0.2], [False, False])))

  @parameterized.parameters(
      dict(n=70, chunk_elements=None, risk_levels=2),
      dict(n=70, chunk_elements=70 * 9, risk_levels=None),
      dict(n=33, chunk_elements=None, risk_levels=1),  # not a power of two
  )
  def test_vectorised_bootstrap_equals_loop(self, n, chunk_elements,
                                            risk_levels):
    time, risk, event = _survival_data(n, 7, risk_levels=risk_levels)
    with mock.patch.object(statistics, '_CHUNK_ELEMENTS',
                           chunk_elements or statistics._CHUNK_ELEMENTS):
      got = statistics.bootstrap_concordance(time, risk, event,
                                             num_resamples=200, seed=9)
      indices = statistics.bootstrap_indices(n, 200, 9)
    want = np.array([statistics.concordance_index(time[i], risk[i], event[i])
                     for i in indices])
    plan = statistics._ConcordancePlan(time, risk, event)
    np.testing.assert_allclose(plan(statistics._counts(indices, n)), want,
                               rtol=0, atol=1e-12)
    self.assertEqual(got['num_resamples_used'], np.isfinite(want).sum())
    low, high = np.nanpercentile(want, [2.5, 97.5])
    self.assertAlmostEqual(got['low'], low, delta=1e-12)
    self.assertAlmostEqual(got['high'], high, delta=1e-12)
    self.assertAlmostEqual(
        got['value'], _pairwise_c(time, risk, event), delta=1e-12)

  def test_deterministic_for_a_seed(self):
    time, risk, event = _survival_data(90, 3)
    a = statistics.bootstrap_concordance(time, risk, event,
                                         num_resamples=100, seed=0)
    b = statistics.bootstrap_concordance(time, risk, event,
                                         num_resamples=100, seed=0)
    self.assertEqual(a, b)
    self.assertLess(a['low'], a['value'])
    self.assertLess(a['value'], a['high'])


class TimeDependentAurocTest(absltest.TestCase):

  def _split(self, seed):
    rng = np.random.default_rng(seed)
    n = 300
    risk = rng.normal(size=n)
    t = rng.exponential(2 * np.exp(-risk))
    c = rng.uniform(0.5, 5.0, size=n)
    return np.minimum(t, c), t <= c, risk

  def test_perfect_ordering_of_deaths_by_horizon_is_one(self):
    train_time, train_event, _ = self._split(0)
    time, event, _ = self._split(1)
    # Deaths by 1 yr get risks above everyone alive after 1 yr.
    case = (time <= 1.0) & event
    risk = np.where(case, 10.0 - time, -time)
    self.assertGreater(case.sum(), 10)
    self.assertEqual(statistics.time_dependent_auroc(
        train_time, train_event, time, event, risk, horizon=1.0), 1.0)
    self.assertEqual(statistics.time_dependent_auroc(
        train_time, train_event, time, event, -risk, horizon=1.0), 0.0)

  def test_without_censoring_before_horizon_is_plain_auroc(self):
    # No censoring before the horizon: every IPCW weight is equal, so the
    # AUC is the AUROC of deaths by 1 yr vs those alive after it.
    rng = np.random.default_rng(2)
    n = 200
    risk = rng.normal(size=n)
    t = rng.exponential(2 * np.exp(-risk))
    c = rng.uniform(1.5, 5.0, size=n)
    time, event = np.minimum(t, c), t <= c
    case = (time <= 1.0) & event
    noisy = risk + rng.normal(size=n)
    got = statistics.time_dependent_auroc(time, event, time, event, noisy)
    want = sk_metrics.roc_auc_score(case, noisy)
    self.assertAlmostEqual(got, want, delta=1e-12)

  def test_bootstrap_is_deterministic_and_brackets_value(self):
    train_time, train_event, _ = self._split(3)
    time, event, risk = self._split(4)
    a = statistics.bootstrap_time_dependent_auroc(
        train_time, train_event, time, event, risk, num_resamples=60, seed=0)
    b = statistics.bootstrap_time_dependent_auroc(
        train_time, train_event, time, event, risk, num_resamples=60, seed=0)
    self.assertEqual(a, b)
    self.assertEqual(a['num_resamples_used'], 60)
    self.assertLess(a['low'], a['value'])
    self.assertLess(a['value'], a['high'])
    self.assertGreater(a['value'], 0.6)


class PairedDifferenceTest(parameterized.TestCase):
  """`reference=`: metric(a) - metric(b) on the same resamples."""

  def _data(self, seed, n=80):
    """Two correlated risk scores of one survival split with a binary label."""
    rng = np.random.default_rng(seed)
    time, risk, event = _survival_data(n, seed)
    other = 0.6 * risk + 0.8 * rng.normal(size=n)
    labels = (time <= np.median(time)) & event
    return dict(time=time, event=event, labels=labels, a=risk, b=other,
                train_time=time, train_event=event)

  def _metric_call(self, metric, d, scores, reference=None, **kw):
    """(vectorised bootstrap, the plain metric on chosen records)."""
    if metric == 'auroc':
      return (statistics.bootstrap_auroc(d['labels'], scores,
                                         reference=reference, **kw),
              lambda i, s: statistics.auroc(d['labels'][i], s[i]))
    if metric == 'macro':
      two = lambda s: np.stack([s, -s ** 2], 1)  # noqa: E731
      labels2 = np.stack([d['labels'], d['event']], 1)
      return (statistics.bootstrap_macro_auroc(
          labels2, two(scores), reference=None if reference is None
          else two(reference), **kw),
              lambda i, s: statistics.macro_auroc(labels2[i], two(s)[i]))
    if metric == 'concordance':
      return (statistics.bootstrap_concordance(
          d['time'], scores, d['event'], reference=reference, **kw),
              lambda i, s: statistics.concordance_index(
                  d['time'][i], s[i], d['event'][i]))
    horizon = float(np.quantile(d['time'], 0.4))

    def td(i, s):
      try:
        return statistics.time_dependent_auroc(
            d['train_time'], d['train_event'], d['time'][i], d['event'][i],
            s[i], horizon)
      except ValueError:
        return np.nan

    return (statistics.bootstrap_time_dependent_auroc(
        d['train_time'], d['train_event'], d['time'], d['event'], scores,
        horizon, reference=reference, **kw), td)

  @parameterized.parameters('auroc', 'macro', 'concordance', 'td_auroc')
  def test_difference_equals_loop_over_the_same_resamples(self, metric):
    d = self._data(11)
    n, resamples, seed = len(d['time']), 150, 4
    got, plain = self._metric_call(metric, d, d['a'], d['b'],
                                   num_resamples=resamples, seed=seed)
    everyone = np.arange(n)
    self.assertAlmostEqual(
        got['value'], plain(everyone, d['a']) - plain(everyone, d['b']),
        delta=1e-12)
    want = np.array([plain(i, d['a']) - plain(i, d['b'])
                     for i in statistics.bootstrap_indices(n, resamples,
                                                           seed)])
    used = np.isfinite(want)
    self.assertEqual(got['num_resamples_used'], used.sum())
    low, high = np.percentile(want[used], [2.5, 97.5])
    self.assertAlmostEqual(got['low'], low, delta=1e-9)
    self.assertAlmostEqual(got['high'], high, delta=1e-9)
    self.assertLess(got['low'], got['high'])
    # Against itself: exactly zero on every resample.
    zero, _ = self._metric_call(metric, d, d['a'], d['a'],
                                num_resamples=50, seed=seed)
    self.assertEqual((zero['value'], zero['low'], zero['high']),
                     (0.0, 0.0, 0.0))

  def test_reference_of_another_shape_is_refused(self):
    d = self._data(12)
    with self.assertRaisesRegex(ValueError, 'same records'):
      statistics.bootstrap_auroc(d['labels'], d['a'], reference=d['b'][:-1])

  def test_interval_covers_known_difference_and_pairing_narrows_it(self):
    # Two scores sharing a per-record component (correlation 0.8 within a
    # class), each N(d_k, 1) in positives and N(0, 1) in negatives:
    # AUROC_k = Phi(d_k / sqrt 2), so the difference is known.
    d_a, d_b, rho, n_pos, n_neg, repeats = 1.0, 0.8, 0.8, 100, 100, 200
    truth = (stats.norm.cdf(d_a / math.sqrt(2))
             - stats.norm.cdf(d_b / math.sqrt(2)))
    rng = np.random.default_rng(77)
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    covered, paired, separate = 0, [], []
    for r in range(repeats):
      shared = rng.normal(size=n_pos + n_neg)
      own = rng.normal(size=(2, n_pos + n_neg))
      a = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[0] + d_a * labels
      b = math.sqrt(rho) * shared + math.sqrt(1 - rho) * own[1] + d_b * labels
      ci = statistics.bootstrap_auroc(labels, a, reference=b,
                                      num_resamples=500, seed=r)
      covered += ci['low'] <= truth <= ci['high']
      paired.append(ci['high'] - ci['low'])
      one = statistics.bootstrap_auroc(labels, a, num_resamples=500, seed=r)
      other = statistics.bootstrap_auroc(labels, b, num_resamples=500,
                                         seed=r + 10_000)
      separate.append(math.hypot(one['high'] - one['low'],
                                 other['high'] - other['low']))
    self.assertBetween(covered / repeats, 0.90, 0.98)
    # Independent intervals would be ~2x wider for scores this correlated.
    self.assertLess(np.mean(paired), 0.6 * np.mean(separate))


class CalibrationTest(absltest.TestCase):

  def test_calibrated_risks_give_unit_slope(self):
    rng = np.random.default_rng(0)
    n = 20000
    p = rng.uniform(0.02, 0.5, size=n)
    # Exponential times with P(T <= 1) = p; censoring only after 1 yr.
    t = rng.exponential(1.0 / -np.log1p(-p))
    c = rng.uniform(1.0, 4.0, size=n)
    time, event = np.minimum(t, c), t <= c
    out = statistics.calibration_at(time, event, p, horizon=1.0, num_bins=10)
    self.assertLen(out['bins'], 10)
    self.assertEqual(sum(b[2] for b in out['bins']), n)
    predicted = [b[0] for b in out['bins']]
    self.assertEqual(predicted, sorted(predicted))
    # No censoring before 1 yr: KM risk = share of deaths by 1 yr.
    order = np.argsort(p, kind='stable')
    first = order[:n // 10]
    self.assertAlmostEqual(out['bins'][0][1],
                           np.mean(time[first] <= 1.0), delta=1e-12)
    self.assertAlmostEqual(out['slope'], 1.0, delta=0.05)
    self.assertAlmostEqual(out['intercept'], 0.0, delta=0.015)
    self.assertAlmostEqual(out['observed_overall'], out['predicted_overall'],
                           delta=0.01)

  def test_overestimated_risks_give_known_line(self):
    rng = np.random.default_rng(1)
    n = 20000
    p = rng.uniform(0.02, 0.5, size=n)
    t = rng.exponential(1.0 / -np.log1p(-p))
    c = rng.exponential(4.0, size=n)  # censoring before the horizon too
    time, event = np.minimum(t, c), t <= c
    self.assertGreater(np.sum((time < 1.0) & ~event), 1000)
    # Predictions 0.05 + 1.5 p: observed = (pred - 0.05) / 1.5.
    out = statistics.calibration_at(time, event, 0.05 + 1.5 * p)
    self.assertAlmostEqual(out['slope'], 1 / 1.5, delta=0.04)
    self.assertAlmostEqual(out['intercept'], -0.05 / 1.5, delta=0.015)
    self.assertLess(out['observed_overall'], out['predicted_overall'] - 0.1)

  def test_bad_bin_count_raises(self):
    with self.assertRaises(ValueError):
      statistics.calibration_at([1.0, 2.0], [True, False], [0.1, 0.2],
                                num_bins=3)


if __name__ == '__main__':
  absltest.main()


class BinaryCalibrationTest(absltest.TestCase):

  def test_calibrated_and_miscalibrated_predictions(self):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, size=20_000)
    y = rng.uniform(size=p.size) < p  # p is the true probability
    good = statistics.binary_calibration(y, p)
    self.assertLess(good['ece'], 0.02)
    self.assertAlmostEqual(good['slope'], 1.0, delta=0.08)
    self.assertAlmostEqual(good['intercept'], 0.0, delta=0.08)
    np.testing.assert_allclose(good['brier'], np.mean((p - y) ** 2))
    self.assertLen(good['bins'], 10)
    self.assertEqual(sum(b[2] for b in good['bins']), p.size)
    # Overconfident predictions: logit doubled, slope ~0.5, larger ECE.
    logit = np.log(p / (1 - p))
    over = statistics.binary_calibration(y, 1 / (1 + np.exp(-2 * logit)))
    self.assertAlmostEqual(over['slope'], 0.5, delta=0.05)
    self.assertGreater(over['ece'], good['ece'] + 0.03)

  def test_one_class_gives_nan_slope(self):
    out = statistics.binary_calibration(np.zeros(50, bool),
                                        np.full(50, 0.1))
    self.assertTrue(np.isnan(out['slope']))
    self.assertAlmostEqual(out['ece'], 0.1)


class CoxCalibrationSlopeTest(absltest.TestCase):

  def test_slope_of_true_and_exaggerated_risks(self):
    rng = np.random.default_rng(1)
    n = 4000
    eta = rng.normal(size=n)
    t = rng.exponential(1.0 / np.exp(eta))
    c = rng.exponential(2.0, size=n)
    time, event = np.minimum(t, c), t <= c
    self.assertAlmostEqual(
        statistics.cox_calibration_slope(time, eta, event), 1.0, delta=0.07)
    # Predictions twice too extreme have slope ~0.5.
    self.assertAlmostEqual(
        statistics.cox_calibration_slope(time, 2 * eta, event), 0.5,
        delta=0.04)
    self.assertTrue(np.isnan(statistics.cox_calibration_slope(
        time, eta, np.zeros(n, bool))))
