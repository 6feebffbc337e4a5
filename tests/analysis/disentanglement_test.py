"""Tests of the (codes, factors) disentanglement metrics."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import multiclass
from sklearn import preprocessing

from factorecg_jax.analysis import disentanglement as dis

LOG2 = np.log(2.0)


def _known_codes(n, num_factors=5, num_noise=5, seed=0):
  """Uniform factors; oracle codes, a rotation of them, and pure noise."""
  rng = np.random.default_rng(seed)
  factors = rng.uniform(size=(n, num_factors))
  oracle = np.concatenate(
      [factors, 0.05 * rng.normal(size=(n, num_noise))], axis=1)
  rot = np.linalg.qr(np.random.default_rng(99).normal(
      size=(oracle.shape[1],) * 2))[0]
  noise = rng.normal(size=oracle.shape)
  return factors, dict(oracle=oracle, rotated=oracle @ rot, noise=noise)


class DiscretisationTest(absltest.TestCase):

  def test_histogram_matches_numpy_digitize(self):
    x = np.random.default_rng(0).normal(size=(500, 3))
    got = dis.discretize_histogram(x, 20)
    for j in range(3):
      want = np.digitize(x[:, j], np.histogram(x[:, j], 20)[1][:-1]) - 1
      np.testing.assert_array_equal(got[:, j], want)

  def test_quantile_bins_have_equal_counts(self):
    f = np.random.default_rng(1).exponential(size=(2000, 2))
    y, _ = dis.discretize_factors(f, None, 20)
    for j in range(2):
      counts = np.bincount(y[:, j], minlength=20)
      self.assertLen(counts, 20)
      self.assertLessEqual(counts.max() - counts.min(), 2)

  def test_test_split_uses_training_edges(self):
    train = np.linspace(0.0, 1.0, 101)[:, None]
    test = np.array([[-5.0], [0.5], [5.0]])
    _, y_test = dis.discretize_factors(train, test, 4)
    np.testing.assert_array_equal(y_test[:, 0], [0, 2, 3])


class InformationTest(absltest.TestCase):

  def test_mutual_info_matches_sklearn(self):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(300, 3))
    b = (a[:, :2] + rng.integers(0, 3, size=(300, 2))) % 7
    m = dis.mutual_info_matrix(a, b)
    for i in range(3):
      for j in range(2):
        want = sk_metrics.mutual_info_score(a[:, i], b[:, j])
        self.assertAlmostEqual(m[i, j], want, places=10)
    h = dis.discrete_entropy(b)
    for j in range(2):
      self.assertAlmostEqual(
          h[j], sk_metrics.mutual_info_score(b[:, j], b[:, j]), places=10)

  def test_mig_hand_computed(self):
    # v0 = z0 exactly; z1 = 1 only in the last sample. By hand:
    # I(z1; v0) = 1/2 log(4/3) + 1/4 log(2/3) + 1/4 log 2 (nats), and v1 is
    # independent of z0 but shares I(z1; v1) = I(z1; v0) by symmetry.
    codes = np.array([[0, 0], [0, 0], [1, 0], [1, 1]])
    factors = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    m = 0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3) + 0.25 * LOG2
    out = dis.mig(codes, factors, code_bins=None, factor_bins=None)
    np.testing.assert_allclose(out['mutual_info'],
                               [[LOG2, 0.0], [m, m]], atol=1e-12)
    np.testing.assert_allclose(out['mig_per_factor'],
                               [(LOG2 - m) / LOG2, m / LOG2], atol=1e-12)
    self.assertAlmostEqual(out['mig'], 0.5, places=12)

  def test_mig_histogram_codes_equal_discrete_codes(self):
    codes = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 7.0]])
    factors = np.array([[0], [0], [1], [1]])
    a = dis.mig(codes, factors, factor_bins=None)['mig']
    b = dis.mig(codes, factors, code_bins=None, factor_bins=None)['mig']
    self.assertAlmostEqual(a, b, places=12)


class SapTest(absltest.TestCase):

  def test_continuous_sap_hand_computed(self):
    # corr([1,2,3,4], [1,3,2,4]) = 4 / 5 by hand, so R^2 = 0.64.
    y = np.array([1.0, 2.0, 3.0, 4.0])
    y2 = np.array([1.0, 3.0, 2.0, 4.0])
    codes = np.stack([y, y2, np.full(4, 2.0)], axis=1)
    out = dis.sap(codes, np.stack([y, y2], axis=1))
    np.testing.assert_allclose(
        out['sap_matrix'], [[1.0, 0.64], [0.64, 1.0], [0.0, 0.0]],
        atol=1e-12)
    self.assertAlmostEqual(out['sap'], 0.36, places=12)

  def test_discrete_sap_separates_oracle_from_noise(self):
    factors, codes = _known_codes(600, num_factors=2, num_noise=1)
    f_test, c_test = _known_codes(300, num_factors=2, num_noise=1, seed=1)
    kw = dict(continuous=False, factor_bins=3)
    good = dis.sap(codes['oracle'], factors, c_test['oracle'], f_test, **kw)
    bad = dis.sap(codes['noise'], factors, c_test['noise'], f_test, **kw)
    self.assertGreater(good['sap'], 0.3)
    self.assertLess(bad['sap'], 0.1)


class DciTest(parameterized.TestCase):

  def test_scores_hand_computed(self):
    eye = dis.dci_scores(np.eye(3))
    self.assertAlmostEqual(eye['disentanglement'], 1.0, places=6)
    self.assertAlmostEqual(eye['completeness'], 1.0, places=6)
    flat = dis.dci_scores(np.ones((3, 4)))
    self.assertAlmostEqual(flat['disentanglement'], 0.0, places=6)
    self.assertAlmostEqual(flat['completeness'], 0.0, places=6)
    # R = [[1, 1], [0, 2]]: D = (2/4) (1 - 1) + (2/4) 1; C = (1/4) 1 +
    # (3/4) (1 - H_2(1/3, 2/3)).
    h = -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3) / LOG2
    out = dis.dci_scores(np.array([[1.0, 1.0], [0.0, 2.0]]))
    self.assertAlmostEqual(out['disentanglement'], 0.5, places=6)
    self.assertAlmostEqual(out['completeness'], 0.25 + 0.75 * (1 - h),
                           places=6)
    zero = dis.dci_scores(np.zeros((3, 2)))
    self.assertAlmostEqual(zero['disentanglement'], 0.0, places=6)

  @parameterized.parameters('lasso', 'ridge')
  def test_known_cases(self, importance):
    factors, codes = _known_codes(3000)
    f_test, c_test = _known_codes(1500, seed=1)
    d = {name: dis.dci(codes[name], factors, c_test[name], f_test,
                       importance=importance)
         for name in codes}
    self.assertGreater(d['oracle']['disentanglement'], 0.95)
    self.assertGreater(d['oracle']['completeness'], 0.95)
    self.assertGreater(d['oracle']['informativeness_test'], 0.95)
    self.assertLess(d['rotated']['disentanglement'],
                    0.6 * d['oracle']['disentanglement'])
    self.assertLess(d['noise']['informativeness_test'], 0.02)
    self.assertLess(d['noise']['disentanglement'],
                    0.01 if importance == 'lasso' else 0.3)

  @parameterized.parameters(('gbt', 'accuracy'), ('gbt_regressor', 'r2'))
  def test_tree_reference(self, importance, metric):
    factors, codes = _known_codes(250, num_factors=2, num_noise=1)
    f_test, c_test = _known_codes(100, num_factors=2, num_noise=1, seed=1)
    out = dis.dci(codes['oracle'], factors, c_test['oracle'], f_test,
                  importance=importance, factor_bins=3)
    self.assertEqual(out['informativeness_metric'], metric)
    self.assertEqual(out['importance'].shape, (3, 2))
    self.assertGreater(out['disentanglement'], 0.8)
    self.assertGreater(out['informativeness_test'], 0.8)

  def test_unknown_mode_raises(self):
    with self.assertRaises(ValueError):
      dis.dci(np.zeros((4, 2)), np.zeros((4, 1)), np.zeros((4, 2)),
              np.zeros((4, 1)), importance='forest')


class ModularityExplicitnessTest(absltest.TestCase):

  def test_modularity_hand_computed(self):
    self.assertAlmostEqual(
        dis.modularity_from_mutual_info(np.eye(2))[0], 1.0, places=12)
    # Code 0: theta^2 = 1, delta = 1 / (1 * 1); code 1: delta = 0; code 2 has
    # no information and scores 0.
    mean, per_code = dis.modularity_from_mutual_info(
        np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(per_code, [0.0, 1.0, 0.0], atol=1e-12)
    self.assertAlmostEqual(mean, 1 / 3, places=12)

  def test_logistic_matches_sklearn(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x @ np.array([1.5, -2.0, 0.3]) + 0.5
         + rng.logistic(size=400) > 0).astype(float)
    w = dis.fit_logistic_batch(x, y[:, None], c=1.0, tol=1e-14)
    ref = linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
    ref.fit(x, y)
    np.testing.assert_allclose(w[:3, 0], ref.coef_[0], rtol=1e-4, atol=1e-5)
    self.assertAlmostEqual(w[3, 0], ref.intercept_[0], places=4)

  def test_explicitness_matches_sklearn_one_vs_rest(self):
    factors, codes = _known_codes(400, num_factors=2, num_noise=2)
    f_test, c_test = _known_codes(200, num_factors=2, num_noise=2, seed=1)
    mix = codes['oracle'] @ np.random.default_rng(5).normal(size=(4, 4))
    mix_test = c_test['oracle'] @ np.random.default_rng(5).normal(size=(4, 4))
    out = dis.explicitness(mix, factors, mix_test, f_test, factor_bins=4)
    y_train, y_test = dis.discretize_factors(factors, f_test, 4)
    scaler = preprocessing.StandardScaler().fit(mix)
    aucs = []
    for j in range(2):
      clf = multiclass.OneVsRestClassifier(linear_model.LogisticRegression(
          C=1.0, tol=1e-10, max_iter=10_000))
      clf.fit(scaler.transform(mix), y_train[:, j])
      prob = clf.predict_proba(scaler.transform(mix_test))
      aucs.append(sk_metrics.roc_auc_score(
          preprocessing.label_binarize(y_test[:, j], classes=range(4)), prob,
          average='macro'))
    np.testing.assert_allclose(out['explicitness_per_factor'], aucs,
                               atol=1e-4)
    self.assertAlmostEqual(out['explicitness_test'], np.mean(aucs), places=4)

  def test_explicitness_known_cases(self):
    factors, codes = _known_codes(2000)
    f_test, c_test = _known_codes(1000, seed=1)
    good = dis.explicitness(codes['oracle'], factors, c_test['oracle'],
                            f_test)
    bad = dis.explicitness(codes['noise'], factors, c_test['noise'], f_test)
    self.assertGreater(good['explicitness_test'], 0.8)
    self.assertBetween(bad['explicitness_test'], 0.45, 0.55)


class UnsupervisedTest(absltest.TestCase):

  def test_gaussian_total_correlation_exact(self):
    rho, n = 0.6, 1000
    x = np.random.default_rng(0).normal(size=(n, 2))
    x -= x.mean(axis=0)
    # Give the sample exactly the covariance [[1, rho], [rho, 1]].
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    x = x @ np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]])).T
    self.assertAlmostEqual(dis.gaussian_total_correlation(x),
                           -0.5 * np.log(1 - rho**2), places=8)
    # Aggregate posterior: diagonal grows by E[sd^2] = 0.25 and 1.0.
    sd = np.tile([0.5, 1.0], (n, 1))
    a, b = 1.25, 2.0
    self.assertAlmostEqual(dis.gaussian_total_correlation(x, sd),
                           0.5 * np.log(a * b / (a * b - rho**2)), places=8)

  def test_active_units(self):
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(5000, 3)) * np.array([1.0, 0.03, 0.5])
    count, mask = dis.active_units(codes)
    self.assertEqual(count, 2)
    np.testing.assert_array_equal(mask, [True, False, True])


class AllMetricsTest(absltest.TestCase):

  def test_known_cases(self):
    factors, codes = _known_codes(3000)
    f_test, c_test = _known_codes(1500, seed=1)
    scores = {name: dis.compute_all_metrics(codes[name], factors,
                                            c_test[name], f_test)[0]
              for name in codes}
    want = {'mig', 'dci_disentanglement', 'dci_completeness',
            'dci_informativeness_train', 'dci_informativeness_test', 'sap',
            'modularity', 'explicitness_train', 'explicitness_test',
            'active_units', 'gaussian_total_correlation'}
    for s in scores.values():
      self.assertEqual(set(s), want)
      self.assertTrue(all(np.isfinite(v) for v in s.values()))
    self.assertGreater(scores['oracle']['mig'], 0.8)
    self.assertGreater(scores['oracle']['dci_disentanglement'], 0.95)
    self.assertLess(scores['rotated']['mig'], 0.5 * scores['oracle']['mig'])
    self.assertLess(scores['rotated']['dci_disentanglement'],
                    0.6 * scores['oracle']['dci_disentanglement'])
    self.assertLess(scores['noise']['mig'], 0.05)
    self.assertLess(scores['noise']['dci_disentanglement'], 0.01)
    self.assertLess(scores['noise']['sap'], 0.02)
    self.assertEqual(scores['noise']['active_units'], 10.0)
    self.assertLess(scores['oracle']['gaussian_total_correlation'], 0.05)


if __name__ == '__main__':
  absltest.main()
