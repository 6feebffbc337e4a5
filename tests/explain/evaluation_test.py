"""Tests of the attribution evaluation protocols on toy models."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.explain import evaluation

T, L, B, K = 40, 3, 6, 2

# Tiny arrays: compiling dominates, so XLA optimisations are off.
pytestmark = pytest.mark.usefixtures('fast_compile')


def _toy(seed=0):
  """Positive inputs and weights: every contribution w * x is > 0."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.5, 1.5, (B, T, L)).astype(np.float32)
  w = rng.gamma(0.5, 1.0, (K, T, L)).astype(np.float32)
  return x, w


def _linear_fn(w):
  w = jnp.asarray(w)

  def predict_fn(x):
    return jnp.einsum('ntl,ktl->nk', x, w)

  return predict_fn


class PerturbationTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.w = _toy()
    cls.fn = staticmethod(_linear_fn(cls.w))  # Not a bound method.
    cls.exact = (cls.x[None] * cls.w[None, None, 1])  # [1, B, T, L], target 1

  @parameterized.parameters('time', 'point')
  def test_morf_beats_random_beats_lerf(self, unit):
    aopc = {}
    for order in ('morf', 'random', 'lerf'):
      res = evaluation.perturbation_curves(
          self.fn, self.x, self.exact, 1, order=order, unit=unit,
          num_steps=10, key=jax.random.PRNGKey(3))
      aopc[order] = res['aopc'][0]
    self.assertTrue(np.all(aopc['morf'] > aopc['random']))
    self.assertTrue(np.all(aopc['random'] > aopc['lerf']))

  def test_exact_zero_fill_curve_is_remaining_contribution(self):
    res = evaluation.perturbation_curves(self.fn, self.x, self.exact, 1,
                                         num_steps=4)
    contrib = self.exact[0].sum(-1)  # [B, T]
    for k, n in enumerate(res['counts']):
      top = np.sort(contrib, axis=-1)[:, ::-1][:, :n].sum(-1)
      np.testing.assert_allclose(res['curve'][0, :, k],
                                 contrib.sum(-1) - top, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res['base'], contrib.sum(-1), rtol=1e-5)

  @parameterized.parameters('zero', 'mean', 'linear', 'noise', 'road')
  def test_endpoints(self, fill):
    key = jax.random.PRNGKey(1)
    ins = evaluation.perturbation_curves(self.fn, self.x, self.exact, 1,
                                         mode='insertion', fill=fill,
                                         num_steps=5, key=key)
    dele = evaluation.perturbation_curves(self.fn, self.x, self.exact, 1,
                                          mode='deletion', fill=fill,
                                          num_steps=5, key=key)
    f_x = np.asarray(self.fn(self.x))[:, 1]
    np.testing.assert_allclose(ins['curve'][0, :, -1], f_x, rtol=1e-5)
    np.testing.assert_allclose(dele['curve'][0, :, 0], f_x, rtol=1e-5)
    # Fully removed = fully perturbed: deletion's end is insertion's start.
    np.testing.assert_allclose(dele['curve'][0, :, -1],
                               ins['curve'][0, :, 0], rtol=1e-5, atol=1e-5)
    if fill == 'zero':
      np.testing.assert_allclose(dele['curve'][0, :, -1], 0.0, atol=1e-6)
    if fill == 'mean':
      full = np.broadcast_to(self.x.mean(1, keepdims=True), self.x.shape)
      np.testing.assert_allclose(dele['curve'][0, :, -1],
                                 np.asarray(self.fn(full))[:, 1], rtol=1e-5)

  def test_batching_over_methods_equals_one_at_a_time(self):
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(3, B, K, T, L)).astype(np.float32)
    target = np.array([0, 1, 1, 0, 1, 0])
    for kwargs in (dict(order='morf', fill='linear'),
                   dict(order='lerf', fill='road', unit='point'),
                   dict(order='random', fill='noise', mode='insertion')):
      key = jax.random.PRNGKey(7)
      res = evaluation.perturbation_curves(
          self.fn, self.x, maps, target, num_steps=6, key=key, chunk_size=5,
          **kwargs)
      for m in range(3):
        one = evaluation.perturbation_curves(
            self.fn, self.x, maps[m:m + 1], target, num_steps=6, key=key,
            chunk_size=64, **kwargs)
        np.testing.assert_allclose(res['curve'][m], one['curve'][0],
                                   rtol=1e-5, atol=1e-5)

  def test_compiles_once_per_shape(self):
    kwargs = dict(order='lerf', fill='mean', num_steps=3)
    evaluation.perturbation_curves(self.fn, self.x, self.exact, 1, **kwargs)
    size = evaluation._perturbation_curves._cache_size()
    evaluation.perturbation_curves(self.fn, self.x + 1.0, 2.0 * self.exact,
                                   0, key=jax.random.PRNGKey(9), **kwargs)
    self.assertEqual(evaluation._perturbation_curves._cache_size(), size)

  def test_near_ties_break_by_index(self):
    r = np.array([[1.0, 2.0, np.nextafter(np.float32(2.0), np.float32(3.0)),
                   0.5]], np.float32)
    np.testing.assert_array_equal(evaluation.order_ranks(jnp.asarray(r)),
                                  [[2, 0, 1, 3]])
    np.testing.assert_array_equal(
        evaluation.order_ranks(jnp.asarray(r), descending=False),
        [[1, 2, 3, 0]])


class FillTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    t = np.arange(T, dtype=np.float32)[:, None]
    self.x = jnp.asarray(0.1 * t * np.array([1.0, -2.0, 0.5]) + np.array(
        [0.3, 1.0, -1.0]), jnp.float32)
    removed = np.zeros((T, L), bool)
    removed[5:12, :] = True
    removed[20:22, 1] = True
    self.removed = jnp.asarray(removed)

  def test_zero(self):
    out = np.asarray(evaluation.fill_removed(self.x, self.removed, 'zero'))
    np.testing.assert_array_equal(out[np.asarray(self.removed)], 0.0)
    np.testing.assert_array_equal(out[~np.asarray(self.removed)],
                                  np.asarray(self.x)[~np.asarray(self.removed)])

  def test_linear_is_exact_on_a_linear_signal(self):
    out = evaluation.fill_removed(self.x, self.removed, 'linear')
    np.testing.assert_allclose(out, self.x, rtol=1e-5, atol=1e-5)
    # At the ends the nearest kept value is continued.
    edge = np.zeros((T, L), bool)
    edge[:3] = True
    out = np.asarray(evaluation.fill_removed(self.x, jnp.asarray(edge),
                                             'linear'))
    np.testing.assert_allclose(out[:3], np.broadcast_to(self.x[3], (3, L)))

  def test_mean(self):
    out = np.asarray(evaluation.fill_removed(self.x, self.removed, 'mean'))
    mean = np.asarray(self.x).mean(0)
    rem = np.asarray(self.removed)
    for l in range(L):
      np.testing.assert_allclose(out[rem[:, l], l], mean[l], rtol=1e-6)

  def test_noise_fills_differ_from_linear_by_scaled_noise(self):
    noise = jax.random.normal(jax.random.PRNGKey(0), (T, L))
    road = evaluation.fill_removed(self.x, self.removed, 'road', noise, 0.5)
    lin = evaluation.fill_removed(self.x, self.removed, 'linear')
    sd = np.asarray(self.x).std(0)
    rem = np.asarray(self.removed)
    np.testing.assert_allclose(
        np.asarray(road - lin), np.where(rem, 0.5 * sd * noise, 0.0),
        rtol=1e-4, atol=1e-5)


class StorasTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # One record, T = 3, L = 2; lead-major flat index i = 3 * l + t.
    self.x = np.array([[[1.0, 0.2], [0.4, 0.9], [0.7, 0.1]]], np.float32)
    x0 = jnp.asarray(self.x[0])
    code = jnp.asarray(2.0 ** (3 * np.arange(2)[None, :]
                               + np.arange(3)[:, None]), jnp.float32)

    def predict_fn(x):  # Which points differ from the clean record.
      return jnp.sum(jnp.where(x != x0, code, 0.0), axis=(1, 2))[:, None]

    self.fn = predict_fn
    two_up = np.nextafter(np.float32(2.0), np.float32(3.0))
    # Flat relevance [0.5, 2, 2+ulp, 3, 0, 1]: order 3, 1, 2, 5, 0; 4 never
    # (0 relevance and flat index 0 was used: their loop stalls).
    a = np.array([[0.5, -3.0], [2.0, 0.0], [two_up, 1.0]], np.float32)
    self.a = a[None, None]

  def test_hand_computed_case(self):
    res = evaluation.storas_curves(
        self.fn, self.x, self.a, 0, jax.random.PRNGKey(0),
        y_true=np.array([100.0]), num_iterations=8, endpoints=(5, 7))
    expected_pred = [0, 8, 10, 14, 46, 47, 47, 47]
    np.testing.assert_array_equal(res['pred'][0, 0], expected_pred)
    ape = np.abs(100.0 - np.array(expected_pred)) / 100.0
    np.testing.assert_allclose(res['ape'][0, 0], ape, rtol=1e-12)
    area5 = 0.5 * 1.0 + 0.92 + 0.90 + 0.86 + 0.54 + 0.5 * 0.53
    np.testing.assert_allclose(res['area'][0, 0, 0], area5, rtol=1e-12)
    np.testing.assert_allclose(res['area_of_mape'][0, 0], area5, rtol=1e-12)
    self.assertEqual(int(res['limit'][0, 0]), 5)

  def test_without_stall_and_prediction_reference(self):
    res = evaluation.storas_curves(
        self.fn, self.x, self.a, 0, jax.random.PRNGKey(0), num_iterations=7,
        endpoints=(6,), reproduce_stall=False)
    np.testing.assert_array_equal(res['pred'][0, 0],
                                  [0, 8, 10, 14, 46, 47, 63])
    self.assertEqual(res['reference'][0], 0.0)  # f(x): nothing perturbed.
    shifted = lambda x: self.fn(x) + 1.0
    res = evaluation.storas_curves(
        shifted, self.x, self.a, 0, jax.random.PRNGKey(0), num_iterations=3,
        endpoints=(2,))
    np.testing.assert_allclose(res['ape'][0, 0], [0.0, 8.0, 10.0])
    np.testing.assert_allclose(res['area'][0, 0, 0], 8.0 + 10.0 / 2)

  def test_noise_scale_is_a_fifth_of_the_range(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 300, 4)).astype(np.float32)
    x0 = jnp.asarray(x)
    a = rng.uniform(size=(1, 2, 300, 4)).astype(np.float32)

    def predict_fn(xp):  # Mean squared added noise over 200 points.
      return (jnp.sum(jnp.square(xp - x0[:1]), axis=(1, 2)) / 200.0)[:, None]

    res = evaluation.storas_curves(predict_fn, x[:1], a[:, :1], 0,
                                   jax.random.PRNGKey(1), num_iterations=201,
                                   endpoints=(5,))
    sd = 0.2 * (x[0].max() - x[0].min())
    self.assertAlmostEqual(res['pred'][0, 0, 200] / sd**2, 1.0, delta=0.35)


class RandomizationTest(absltest.TestCase):

  def test_cascade(self):
    rng = np.random.default_rng(0)
    variables = {
        'params': {'head': {'scale': jnp.float32(2.0)},
                   'body': {'w': jnp.asarray(rng.gamma(0.5, 1.0, (T, L)),
                                             jnp.float32)}},
        'batch_stats': {'body': {'mean': jnp.ones((L,))}},
    }

    def attribute_fn(v, x):  # Input x gradient of scale * sum(w * x).
      return x * v['params']['body']['w'][None] * v['params']['head']['scale']

    x = jnp.asarray(rng.uniform(0.5, 1.5, (4, T, L)), jnp.float32)
    res = evaluation.cascading_randomization(
        attribute_fn, variables, x, ['head', 'body'], jax.random.PRNGKey(0))
    self.assertEqual(res['steps'], ['original', 'head', 'body'])
    np.testing.assert_allclose(res['spearman'][:2], 1.0, atol=1e-6)
    np.testing.assert_allclose(res['pearson'][:2], 1.0, atol=1e-5)
    self.assertLess(res['spearman'][2], 0.5)
    new = evaluation.randomize_layers(variables, ['body'],
                                      jax.random.PRNGKey(0))
    np.testing.assert_array_equal(new['batch_stats']['body']['mean'], 1.0)
    np.testing.assert_array_equal(new['params']['head']['scale'], 2.0)
    self.assertFalse(np.allclose(new['params']['body']['w'],
                                 variables['params']['body']['w']))
    reset = evaluation.randomize_layers(variables, ['body'],
                                        jax.random.PRNGKey(0),
                                        randomize_batch_stats=True)
    np.testing.assert_array_equal(reset['batch_stats']['body']['mean'], 0.0)
    independent = evaluation.cascading_randomization(
        attribute_fn, variables, x, ['body', 'head'], jax.random.PRNGKey(0),
        cascade=False)
    self.assertLess(independent['spearman'][1], 0.5)
    np.testing.assert_allclose(independent['spearman'][2], 1.0, atol=1e-6)


class RankingTest(absltest.TestCase):

  def test_better_method_ranks_first(self):
    rng = np.random.default_rng(0)
    scores = np.stack([rng.normal(0.3, 0.1, 50), rng.normal(0.8, 0.1, 50),
                       rng.normal(0.5, 0.1, 50)])
    rows = evaluation.ranking_table(
        {'rma': scores, 'loss': -scores}, ['a', 'b', 'c'],
        {'rma': True, 'loss': False}, n_boot=500, seed=1)
    for measure in ('rma', 'loss'):
      r = {row['method']: row for row in rows if row['measure'] == measure}
      self.assertTrue(r['b']['best'])
      self.assertEqual([r[m]['rank'] for m in 'abc'], [3, 1, 2])
      worst = r['a']['mean']
      self.assertTrue(r['b']['low'] > worst or r['b']['high'] < worst)
      self.assertLess(r['b']['low'], r['b']['mean'])
      self.assertGreater(r['b']['high'], r['b']['mean'])
    md = evaluation.to_markdown(rows)
    self.assertIn('| rma | **b** |', md)
    self.assertEqual(md.count('\n'), 2 + len(rows))
    md = evaluation.to_markdown([dict(target='qt_ms', **r) for r in rows])
    self.assertTrue(md.startswith('| target | measure |'))
    self.assertIn('| qt_ms | loss | **b** |', md)

  def test_near_ties_go_to_the_lower_index(self):
    s = np.ones((2, 5))
    rows = evaluation.ranking_table({'m': s + np.array([[1e-9], [0.0]])},
                                    ['x', 'y'], {'m': False}, n_boot=10)
    self.assertEqual([r['rank'] for r in rows], [1, 2])
    self.assertTrue(rows[0]['best'])

  def test_kendall(self):
    self.assertAlmostEqual(evaluation.agreement([1, 2, 3, 4], [10, 20, 30,
                                                               40]), 1.0)
    self.assertAlmostEqual(evaluation.agreement([1, 2, 3], [1, 2, 3],
                                                higher_is_better_b=False),
                           -1.0)


if __name__ == '__main__':
  absltest.main()
