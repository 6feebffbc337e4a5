"""Tests of the factor-level models: logistic, XGBoost + SHAP, Cox, reports.

Each fit is checked on data simulated from a known model (a logistic model,
an exponential proportional-hazards model with censoring, an easy threshold
problem): the intervals cover the generating coefficients and the test
metrics come out where the truth puts them. Also the awkward labels (one
class, perfect separation), SHAP additivity, determinism, the comparison
table and the figures; and the vectorised pieces against the library code
they replace: scaled Schoenfeld residuals (lifelines) and the time-dependent
AUROC bootstrap (a loop over scikit-survival).
"""

import json
import os
import tempfile

from absl.testing import absltest
import lifelines
from lifelines import statistics as lifelines_statistics
import numpy as np
import pandas as pd
from scipy import special
from scipy import stats

from factorecg_jax.analysis import downstream
from factorecg_jax.analysis import statistics

_RESAMPLES = 200


def _logistic_data(n, seed):
  """Features on different scales, one null, from a known logistic model."""
  rng = np.random.default_rng(seed)
  scale = np.array([1.0, 5.0, 0.2, 2.0])
  x = rng.normal(size=(n, 4)) * scale + np.array([0.0, 60.0, 1.0, 0.0])
  beta = np.array([0.8, -0.1, 3.0, 0.0])  # per unit
  eta = -0.5 + (x - np.array([0.0, 60.0, 1.0, 0.0])) @ beta
  y = rng.random(n) < special.expit(eta)
  return x, y, beta


def _survival_data(n, seed):
  """Exponential PH times, h = 0.1 exp(x beta), censored at min(Exp, 5 y)."""
  rng = np.random.default_rng(seed)
  x = np.column_stack([
      rng.normal(size=n),                  # an ECG factor
      rng.normal(62.0, 14.0, size=n),      # age, years
      rng.binomial(1, 0.5, size=n),        # sex, 1 = male
  ]).astype(np.float64)
  beta = np.array([0.5, 0.04, 0.3])
  eta = (x - np.array([0.0, 62.0, 0.0])) @ beta
  t = rng.exponential(1.0 / (0.1 * np.exp(eta)))
  c = np.minimum(rng.exponential(1.0 / 0.1, size=n), 5.0)
  return x, np.minimum(t, c), t <= c, beta, eta


def _is_png(path):
  with open(path, 'rb') as f:
    head = f.read(8)
  return head == b'\x89PNG\r\n\x1a\n' and os.path.getsize(path) > 2000


class LogisticTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.y, cls.beta = _logistic_data(6000, seed=0)
    cls.names = ['f0', 'f1', 'f2', 'null']
    cls.fit = downstream.fit_logistic(
        cls.x[:4000], cls.y[:4000], cls.x[4000:], cls.y[4000:],
        names=cls.names, num_resamples=_RESAMPLES)

  def test_odds_ratios_per_sd_cover_truth(self):
    fit = self.fit
    self.assertEqual((fit['status'], fit['method']), ('ok', 'mle'))
    self.assertEqual(fit['ratio_per'], 'SD')
    sd = np.std(self.x[:4000], axis=0, ddof=1)
    np.testing.assert_allclose(fit['train_sd'], sd, rtol=1e-12)
    for row, b, s in zip(fit['coefficients'], self.beta, sd):
      truth = b * s  # log OR per training SD
      self.assertLessEqual(row['coef_low'], truth, row)
      self.assertGreaterEqual(row['coef_high'], truth, row)
      self.assertAlmostEqual(row['odds_ratio'], np.exp(row['coef']))
      self.assertLess(row['low'], row['odds_ratio'])
      self.assertLess(row['odds_ratio'], row['high'])
      if b:
        self.assertEqual(np.sign(row['coef']), np.sign(b))
        self.assertEqual(row['odds_ratio'] > 1, b > 0)
        self.assertLess(row['p_value'], 1e-6)

  def test_per_unit_fit_covers_truth_and_matches_per_sd(self):
    fit = downstream.fit_logistic(
        self.x[:4000], self.y[:4000], self.x[4000:], self.y[4000:],
        names=self.names, standardize=False, num_resamples=_RESAMPLES)
    self.assertEqual(fit['ratio_per'], 'unit')
    for row, b in zip(fit['coefficients'], self.beta):
      self.assertLessEqual(row['coef_low'], b, row)
      self.assertGreaterEqual(row['coef_high'], b, row)
    # Maximum likelihood is equivariant: per SD = per unit x SD.
    np.testing.assert_allclose(
        [r['coef'] for r in self.fit['coefficients']],
        np.array([r['coef'] for r in fit['coefficients']])
        * np.array(fit['train_sd']), rtol=1e-6)
    # Same ranking of the test records, so the same AUROC.
    self.assertAlmostEqual(fit['auroc']['value'],
                           self.fit['auroc']['value'], delta=1e-9)

  def test_auroc_and_scores(self):
    fit = self.fit
    scores = np.array(fit['test_scores'])
    self.assertEqual(scores.shape, (2000,))
    self.assertAlmostEqual(fit['auroc']['value'],
                           statistics.auroc(self.y[4000:], scores),
                           delta=1e-12)
    truth = statistics.auroc(
        self.y[4000:],
        (self.x[4000:] - np.array([0.0, 60.0, 1.0, 0.0])) @ self.beta)
    self.assertAlmostEqual(fit['auroc']['value'], truth, delta=0.01)
    self.assertLess(fit['auroc']['low'], fit['auroc']['value'])
    self.assertLess(fit['auroc']['value'], fit['auroc']['high'])
    self.assertEqual(fit['auroc']['num_resamples_used'], _RESAMPLES)
    json.dumps(fit, allow_nan=False)

  def test_one_class_label_is_skipped_with_reason(self):
    for y_train, y_test, split in (
        (np.zeros(4000, bool), self.y[4000:], 'training'),
        (self.y[:4000], np.ones(2000, bool), 'test')):
      fit = downstream.fit_logistic(self.x[:4000], y_train, self.x[4000:],
                                    y_test, names=self.names)
      self.assertEqual(fit['status'], 'skipped')
      self.assertIn('one class', fit['reason'])
      self.assertIn(split, fit['reason'])
      self.assertEqual(downstream.top_factors(fit, 3), [])

  def test_perfect_separation_falls_back_to_ridge(self):
    y = self.x[:, 0] > 0.1
    fit = downstream.fit_logistic(self.x[:4000], y[:4000], self.x[4000:],
                                  y[4000:], names=self.names,
                                  num_resamples=_RESAMPLES)
    self.assertEqual((fit['status'], fit['method']), ('penalized', 'l2'))
    self.assertIn('L2 penalty', fit['reason'])
    coef = np.array([r['coef'] for r in fit['coefficients']])
    self.assertTrue(np.isfinite(coef).all())
    self.assertEqual(int(np.argmax(np.abs(coef))), 0)
    self.assertGreater(coef[0], 0)
    self.assertGreater(fit['auroc']['value'], 0.99)
    json.dumps(fit, allow_nan=False)

  def test_constant_feature_is_dropped(self):
    x = np.column_stack([self.x[:, :2], np.ones(6000)])
    fit = downstream.fit_logistic(x[:4000], self.y[:4000], x[4000:],
                                  self.y[4000:], names=['a', 'b', 'const'],
                                  num_resamples=_RESAMPLES)
    self.assertEqual(fit['status'], 'ok')
    self.assertEqual(fit['dropped_features'], ['const'])
    self.assertEqual([r['name'] for r in fit['coefficients']], ['a', 'b'])

  def test_top_factors_orders_by_abs_coefficient(self):
    top = downstream.top_factors(self.fit, 2)
    self.assertLen(top, 2)
    coef = {r['name']: r['coef'] for r in self.fit['coefficients']}
    want = sorted(coef, key=lambda k: -abs(coef[k]))[:2]
    self.assertEqual([t['name'] for t in top], want)
    for t in top:
      self.assertEqual(t['sign'], np.sign(coef[t['name']]))
      self.assertAlmostEqual(t['importance'], abs(coef[t['name']]))
      self.assertIn('risk', t['direction'])

  def test_multilabel_skips_and_macro_mean(self):
    n_train = 4000
    y_sep = self.x[:, 0] > 0.1
    labels = np.column_stack([self.y, np.zeros(6000, bool), y_sep])
    out = downstream.fit_logistic_multilabel(
        self.x[:n_train], labels[:n_train], self.x[n_train:],
        labels[n_train:],
        names=self.names, label_names=['model', 'empty', 'separated'],
        num_resamples=_RESAMPLES)
    self.assertEqual(out['labels_used'], ['model', 'separated'])
    self.assertEqual(list(out['labels_skipped']), ['empty'])
    self.assertEqual(out['labels_penalized'], ['separated'])
    per = out['per_label']
    self.assertEqual(per['model']['auroc'], self.fit['auroc'])
    self.assertAlmostEqual(
        out['macro_auroc']['value'],
        (per['model']['auroc']['value']
         + per['separated']['auroc']['value']) / 2, delta=1e-12)
    self.assertLess(out['macro_auroc']['low'], out['macro_auroc']['high'])
    json.dumps(out, allow_nan=False)


class XGBoostTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.default_rng(1)
    n = 3000
    cls.x = rng.normal(size=(n, 5))
    cls.y = 2.0 * cls.x[:, 0] + 0.5 * rng.normal(size=n) > 0.3
    cls.names = [f'factor {j}' for j in range(5)]
    cls.fit = downstream.fit_xgboost(
        cls.x[:2000], cls.y[:2000], cls.x[2000:], cls.y[2000:],
        names=cls.names, num_resamples=_RESAMPLES)

  def test_easy_problem_high_auroc(self):
    self.assertEqual(self.fit['status'], 'ok')
    self.assertGreater(self.fit['auroc']['value'], 0.9)
    self.assertEqual(self.fit['num_boost_round'], 200)
    self.assertEqual(self.fit['params']['max_depth'], 3)
    json.dumps(self.fit, allow_nan=False)

  def test_shap_plus_bias_is_margin(self):
    contribs = np.array(self.fit['test_contributions'])
    bias = np.array(self.fit['test_bias'])
    margin = np.array(self.fit['test_margin'])
    self.assertEqual(contribs.shape, (1000, 5))
    np.testing.assert_allclose(contribs.sum(axis=1) + bias, margin,
                               atol=1e-4)
    np.testing.assert_allclose(special.expit(margin),
                               self.fit['test_scores'], rtol=1e-12)
    mean_abs = [r['mean_abs_shap'] for r in self.fit['shap']]
    np.testing.assert_allclose(mean_abs, np.abs(contribs).mean(axis=0),
                               rtol=1e-12)

  def test_informative_feature_has_largest_shap(self):
    mean_abs = [r['mean_abs_shap'] for r in self.fit['shap']]
    self.assertEqual(int(np.argmax(mean_abs)), 0)
    self.assertGreater(mean_abs[0], 5 * max(mean_abs[1:]))
    top = downstream.top_factors(self.fit, 1)
    self.assertEqual(top[0]['name'], 'factor 0')
    self.assertEqual(top[0]['sign'], 1)

  def test_deterministic_for_a_seed(self):
    kwargs = dict(names=self.names, num_resamples=50, subsample=0.7,
                  n_estimators=30)
    args = (self.x[:2000], self.y[:2000], self.x[2000:], self.y[2000:])
    a = downstream.fit_xgboost(*args, seed=0, **kwargs)
    b = downstream.fit_xgboost(*args, seed=0, **kwargs)
    c = downstream.fit_xgboost(*args, seed=1, **kwargs)
    self.assertEqual(a, b)
    self.assertNotEqual(a['test_margin'], c['test_margin'])


class CoxTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    x, time, event, cls.beta, eta = _survival_data(7000, seed=2)
    cls.train = slice(0, 5000)
    cls.test = slice(5000, None)
    cls.x, cls.time, cls.event, cls.eta = x, time, event, eta
    cls.names = ['factor', 'age', 'male']
    cls.unit = downstream.fit_cox(
        x[cls.train], time[cls.train], event[cls.train], x[cls.test],
        time[cls.test], event[cls.test], names=cls.names, standardize=False,
        num_resamples=_RESAMPLES)
    cls.per_sd = downstream.fit_cox(
        x[cls.train], time[cls.train], event[cls.train], x[cls.test],
        time[cls.test], event[cls.test], names=cls.names,
        num_resamples=_RESAMPLES)

  def test_log_hazard_ratio_intervals_cover_truth(self):
    fit = self.unit
    self.assertEqual(fit['status'], 'ok')
    self.assertGreater(fit['num_events_train'], 1000)
    for row, b in zip(fit['coefficients'], self.beta):
      self.assertLessEqual(row['coef_low'], b, row)
      self.assertGreaterEqual(row['coef_high'], b, row)
      self.assertAlmostEqual(row['hazard_ratio'], np.exp(row['coef']))
      self.assertLess(row['p_value'], 1e-6)

  def test_per_sd_equals_per_unit_times_sd(self):
    sd = np.std(self.x[self.train], axis=0, ddof=1)
    np.testing.assert_allclose(
        [r['coef'] for r in self.per_sd['coefficients']],
        np.array([r['coef'] for r in self.unit['coefficients']]) * sd,
        rtol=1e-4)
    self.assertAlmostEqual(self.per_sd['concordance']['value'],
                           self.unit['concordance']['value'], delta=1e-9)

  def test_concordance_close_to_truth(self):
    fit = self.per_sd
    truth = statistics.concordance_index(
        self.time[self.test], self.eta[self.test], self.event[self.test])
    self.assertAlmostEqual(fit['concordance']['value'], truth, delta=0.01)
    self.assertLess(fit['concordance']['low'], truth)
    self.assertGreater(fit['concordance']['high'], truth)
    self.assertEqual(fit['concordance']['num_resamples_used'], _RESAMPLES)

  def test_risk_at_horizon_and_auroc(self):
    fit = self.per_sd
    risk = np.array(fit['test_risk_at_horizon'])
    lph = np.array(fit['test_log_partial_hazard'])
    self.assertEqual(risk.shape, (2000,))
    self.assertTrue(((risk > 0) & (risk < 1)).all())
    self.assertAlmostEqual(stats.spearmanr(risk, lph)[0], 1.0, delta=1e-12)
    # True 1-year risk of the exponential model: 1 - exp(-0.1 e^eta).
    true_risk = 1 - np.exp(-0.1 * np.exp(self.eta[self.test]))
    self.assertLess(np.abs(risk - true_risk).mean(), 0.01)
    auroc = fit['auroc_at_horizon']
    want = statistics.time_dependent_auroc(
        self.time[self.train], self.event[self.train], self.time[self.test],
        self.event[self.test], risk, 1.0)
    self.assertAlmostEqual(auroc['value'], want, delta=1e-12)
    self.assertLess(auroc['low'], auroc['value'])
    self.assertLess(auroc['value'], auroc['high'])

  def test_proportional_hazards_and_calibration(self):
    fit = self.per_sd
    ph = fit['proportional_hazards']
    self.assertEqual([r['name'] for r in ph['table']], self.names)
    self.assertGreater(ph['min_p_value'], 1e-3)  # PH holds by design
    for row, ph_row in zip(fit['coefficients'], ph['table']):
      self.assertEqual(row['ph_p_value'], ph_row['p_value'])
    cal = fit['calibration']
    self.assertLen(cal['bins'], 10)
    self.assertAlmostEqual(cal['observed_overall'], cal['predicted_overall'],
                           delta=0.02)
    self.assertAlmostEqual(cal['slope'], 1.0, delta=0.25)

  def test_km_by_quartile(self):
    km = self.per_sd['km_by_quartile']
    self.assertLen(km['survival'], 4)
    self.assertEqual(sum(km['n']), 2000)
    for surv in km['survival']:
      self.assertLen(surv, len(km['times']))
      self.assertEqual(surv[0], 1.0)
      self.assertTrue(np.all(np.diff(surv) <= 0))
    at_1y = km['survival_at_horizon']
    self.assertTrue(np.all(np.diff(at_1y) < 0), at_1y)  # Q1 best, Q4 worst
    self.assertTrue(np.all(np.diff(km['mean_predicted_risk']) > 0))

  def test_no_events_is_skipped(self):
    fit = downstream.fit_cox(
        self.x[:100], self.time[:100], np.zeros(100, bool), self.x[100:200],
        self.time[100:200], self.event[100:200], names=self.names)
    self.assertEqual(fit['status'], 'skipped')
    self.assertIn('no events', fit['reason'])

  def test_top_factors_and_json(self):
    top = downstream.top_factors(self.per_sd, 3)
    coef = {r['name']: r['coef'] for r in self.per_sd['coefficients']}
    self.assertEqual([t['name'] for t in top],
                     sorted(coef, key=lambda k: -abs(coef[k])))
    self.assertTrue(all(t['sign'] == 1 for t in top))
    self.assertAlmostEqual(top[0]['ratio'], np.exp(top[0]['coef']))
    json.dumps(self.per_sd, allow_nan=False)


class SchoenfeldTest(absltest.TestCase):

  def test_residuals_and_ph_test_equal_lifelines(self):
    # Rounded times: many tied deaths (Efron), censorings at death times.
    rng = np.random.default_rng(6)
    n = 1500
    x = rng.normal(size=(n, 3))
    t = np.round(rng.exponential(np.exp(-x @ [0.5, -0.2, 0.1])), 1) + 0.1
    c = np.round(rng.exponential(2.0, size=n), 1) + 0.1
    frame = pd.DataFrame(x, columns=['b', 'a', 'c'])
    frame['T'], frame['E'] = np.minimum(t, c), t <= c
    self.assertGreater(frame[frame['E']]['T'].value_counts().max(), 20)
    cph = lifelines.CoxPHFitter().fit(frame, 'T', 'E')
    want = cph.compute_residuals(frame, 'scaled_schoenfeld')
    got = downstream.scaled_schoenfeld_residuals(
        cph, x, frame['T'].to_numpy(), frame['E'].to_numpy())
    self.assertEqual(list(got.columns), ['b', 'a', 'c'])
    self.assertEqual(got.shape, want.shape)
    # Same rows up to the order of deaths at one time: compare sorted
    # columns and the per-time sums.
    np.testing.assert_allclose(np.sort(got.to_numpy(), axis=0),
                               np.sort(want.to_numpy(), axis=0), atol=1e-10)
    death_times = np.sort(frame['T'][frame['E']].to_numpy())
    by_time = lambda r: pd.DataFrame(r).groupby(death_times).sum().to_numpy()
    np.testing.assert_allclose(by_time(got.to_numpy()),
                               by_time(want.to_numpy()), atol=1e-10)
    a = lifelines_statistics.proportional_hazard_test(
        cph, frame, time_transform='rank').summary
    b = lifelines_statistics.proportional_hazard_test(
        cph, frame, time_transform='rank', precomputed_residuals=got).summary
    np.testing.assert_allclose(b['test_statistic'], a['test_statistic'],
                               rtol=1e-9)


class TimeDependentBootstrapTest(absltest.TestCase):

  def test_vectorised_bootstrap_equals_loop(self):
    # Rounded risks: tied scores; censoring before the horizon: IPCW != 1.
    rng = np.random.default_rng(3)

    def split(n):
      risk = rng.normal(size=n)
      t = rng.exponential(2 * np.exp(-risk))
      c = rng.uniform(0.3, 5.0, size=n)
      return np.minimum(t, c), t <= c, np.round(risk, 1)

    train_time, train_event, _ = split(500)
    time, event, risk = split(150)
    got = statistics.bootstrap_time_dependent_auroc(
        train_time, train_event, time, event, risk, num_resamples=300,
        seed=4)
    want = []
    for idx in statistics.bootstrap_indices(150, 300, 4):
      try:
        want.append(statistics.time_dependent_auroc(
            train_time, train_event, time[idx], event[idx], risk[idx]))
      except ValueError:
        want.append(np.nan)
    want = np.array(want)
    used = np.isfinite(want)
    self.assertEqual(got['num_resamples_used'], used.sum())
    low, high = np.percentile(want[used], [2.5, 97.5])
    self.assertAlmostEqual(got['low'], low, delta=1e-12)
    self.assertAlmostEqual(got['high'], high, delta=1e-12)


class ComparisonTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.rows = [
        dict(model='factors: logistic', task='LBBB', metric='AUROC',
             value=0.95, low=0.93, high=0.97, n=1000),
        dict(model='ResNet (strip)', task='LBBB', metric='AUROC',
             value=0.97, low=0.96, high=0.98, n=1000),
        dict(model='factors: Cox', task='1-year mortality',
             metric='C-index', value=0.74, low=0.72, high=0.76, n=2000),
        dict(model='oracle (true factors)', task='1-year mortality',
             metric='C-index', value=0.78, low=float('nan'), high=None,
             n=2000),
    ]

  def test_one_row_per_input_with_header(self):
    markdown, table = downstream.comparison_table(self.rows)
    lines = markdown.strip().splitlines()
    self.assertEqual(lines[0],
                     '| task | model | metric | value | 95 % CI | n |')
    self.assertTrue(lines[1].startswith('|---'))
    self.assertLen(lines, 2 + len(self.rows))
    self.assertLen(table, len(self.rows))
    self.assertIn('0.930–0.970', lines[2])
    self.assertIn('n/a', lines[5])
    self.assertEqual(table[0], self.rows[0])
    self.assertIsNone(table[3]['low'])
    json.dumps(table, allow_nan=False)

  def test_comparison_row_from_results(self):
    fit = dict(model='cox', n_test=10,
               concordance=dict(value=0.7, low=0.6, high=0.8),
               auroc_at_horizon=dict(value=0.75, low=0.7, high=0.8),
               horizon=1.0)
    row = downstream.comparison_row(fit, model='factors: Cox',
                                    task='mortality')
    self.assertEqual(row, dict(model='factors: Cox', task='mortality',
                               metric='C-index', value=0.7, low=0.6,
                               high=0.8, n=10))
    row = downstream.comparison_row(fit, model='m', task='t',
                                    metric='auroc_at_horizon')
    self.assertEqual(row['metric'], 'AUROC at 1 y')
    self.assertEqual(row['value'], 0.75)

  def test_plots_write_pngs(self):
    x, time, event, _, _ = _survival_data(1500, seed=5)
    fit = downstream.fit_cox(x[:1000], time[:1000], event[:1000], x[1000:],
                             time[1000:], event[1000:],
                             names=['a', 'b', 'c'], num_resamples=20,
                             ph_test=False)
    self.assertIsNone(fit['proportional_hazards'])
    with tempfile.TemporaryDirectory() as tmp:
      paths = [
          downstream.plot_comparison(self.rows, os.path.join(tmp, 'c.png')),
          downstream.plot_km_by_quartile(fit['km_by_quartile'],
                                         os.path.join(tmp, 'km.png')),
          downstream.plot_km_by_quartile(fit, os.path.join(tmp, 'km2.png')),
          downstream.plot_calibration(fit['calibration'],
                                      os.path.join(tmp, 'sub', 'cal.png')),
      ]
      for path in paths:
        self.assertTrue(_is_png(path), path)


if __name__ == '__main__':
  absltest.main()
