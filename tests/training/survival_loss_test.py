"""Tests of the Breslow Cox partial likelihood against independent references.

lifelines' CoxPHFitter handles ties only by Efron's method, so the tied cases
are checked against a plain O(n^2) double loop and scikit-survival's
Breslow likelihood; lifelines is matched on data without ties, where Efron
and Breslow coincide.
"""

import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from factorecg_jax.training import survival_loss

# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')

# Jitted once per shape: op-by-op execution compiles every primitive
# separately and made this module ~40 s.
_LL = jax.jit(survival_loss.cox_partial_log_likelihood)
_LOSS = jax.jit(survival_loss.cox_loss)


def _tied_data(n=60, seed=0):
  """Covariates [n, 3], times rounded to 0.1 yr (many ties), events, beta."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3))
  beta = np.array([0.7, -0.4, 0.25])
  t = rng.exponential(1.0 / np.exp(x @ beta))
  c = rng.exponential(2.0, size=n)
  time = np.round(np.minimum(t, c), 1) + 0.1
  event = (t <= c).astype(np.float64)
  return x, time, event, beta


def _breslow_loop(risk, time, event, weight=None):
  """Breslow log partial likelihood by a plain double loop over records."""
  n = len(risk)
  weight = np.ones(n) if weight is None else weight
  total = 0.0
  for i in range(n):
    if not event[i] or weight[i] == 0:
      continue
    risk_set = 0.0
    for j in range(n):
      if time[j] >= time[i]:
        risk_set += weight[j] * math.exp(risk[j])
    total += weight[i] * (risk[i] - math.log(risk_set))
  return total


class CoxPartialLikelihoodTest(parameterized.TestCase):

  def test_data_has_ties_of_both_kinds(self):
    # The reference comparisons below only test tie handling if the data has
    # tied events and events tied with censored rows.
    _, time, event, _ = _tied_data()
    ev = time[event == 1]
    self.assertLess(len(np.unique(ev)), len(ev))
    self.assertNotEmpty(np.intersect1d(ev, time[event == 0]))

  def test_small_cases_by_hand(self):
    a, b, c = 0.3, -1.2, 0.8
    risk = jnp.array([a, b, c])
    # Two events tied at t = 1 share one risk set holding all three rows.
    got = _LL(
        risk, jnp.array([1.0, 1.0, 2.0]), jnp.array([1, 1, 0]))
    want = a + b - 2 * math.log(math.exp(a) + math.exp(b) + math.exp(c))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # A row censored at the event time is at risk (Breslow, t_j >= t_i).
    got = _LL(
        risk, jnp.array([1.0, 1.0, 0.5]), jnp.array([1, 0, 0]))
    np.testing.assert_allclose(
        got, a - math.log(math.exp(a) + math.exp(b)), rtol=1e-6)

  @parameterized.parameters(0, 1, 2)
  def test_equals_double_loop_with_ties(self, seed):
    x, time, event, beta = _tied_data(seed=seed)
    risk = x @ beta
    with jax.enable_x64(True):
      got = _LL(risk, time, event)
      self.assertEqual(got.dtype, jnp.float64)
    np.testing.assert_allclose(
        got, _breslow_loop(risk, time, event), rtol=1e-12)

  def test_equals_scikit_survival_breslow_with_ties(self):
    coxph = pytest.importorskip('sksurv.linear_model.coxph')
    x, time, event, beta = _tied_data(n=80, seed=3)
    # CoxPHOptimizer.nlog_likelihood is -(log partial likelihood) / n.
    opt = coxph.CoxPHOptimizer(x, event.astype(bool), time,
                               alpha=np.zeros(3), ties='breslow')
    want = -opt.nlog_likelihood(beta) * len(time)
    with jax.enable_x64(True):
      got = _LL(x @ beta, time, event)
    np.testing.assert_allclose(got, want, rtol=1e-12)

  def test_equals_lifelines_without_ties(self):
    lifelines = pytest.importorskip('lifelines')
    rng = np.random.default_rng(4)
    n = 200
    x = rng.normal(size=(n, 3))
    t = rng.exponential(1.0 / np.exp(x @ np.array([0.5, -0.3, 0.2])))
    c = rng.exponential(2.0, size=n)
    time, event = np.minimum(t, c), (t <= c).astype(float)
    self.assertLen(np.unique(time), n)
    df = pd.DataFrame(x, columns=['a', 'b', 'c']).assign(T=time, E=event)
    cph = lifelines.CoxPHFitter(penalizer=0.0).fit(df, 'T', 'E')
    params = cph.params_[['a', 'b', 'c']].to_numpy()
    with jax.enable_x64(True):
      got = _LL(x @ params, time, event)
    np.testing.assert_allclose(got, cph.log_likelihood_, rtol=1e-6)

  def test_float32_close_to_float64_reference(self):
    x, time, event, beta = _tied_data(n=500, seed=5)
    risk = x @ beta
    got = _LL(
        jnp.asarray(risk, jnp.float32), time, event)
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(
        got, _breslow_loop(risk, time, event), rtol=2e-6)

  def test_gradient_matches_finite_differences(self):
    x, time, event, beta = _tied_data(n=30, seed=6)
    with jax.enable_x64(True):
      fn = lambda r: _LL(  # noqa: E731
          r, time, event)
      risk = jnp.asarray(x @ beta)
      jtu.check_grads(fn, (risk,), order=1, modes=['rev'], eps=1e-6)
      grad = np.asarray(jax.grad(fn)(risk))
    # Central differences of the independent reference.
    eps = 1e-6
    fd = np.array([
        (_breslow_loop(x @ beta + eps * e, time, event)
         - _breslow_loop(x @ beta - eps * e, time, event)) / (2 * eps)
        for e in np.eye(len(time))
    ])
    np.testing.assert_allclose(grad, fd, atol=1e-7)
    # Gradients of a log partial likelihood sum to zero (shift invariance).
    self.assertAlmostEqual(float(np.sum(grad)), 0.0, places=10)

  def test_padded_rows_change_nothing(self):
    x, time, event, beta = _tied_data(n=40, seed=7)
    risk = x @ beta
    pad = 8
    risk_p = np.concatenate([risk, np.full(pad, np.nan)])
    risk_p[-3:] = 50.0  # large finite risks too, besides NaNs.
    time_p = np.concatenate([time, np.full(pad, np.nan)])
    time_p[-3:] = 100.0
    event_p = np.concatenate([event, np.ones(pad)])
    mask = np.concatenate([np.ones(len(risk)), np.zeros(pad)])
    fn = _LL
    want = fn(jnp.asarray(risk, jnp.float32), time, event)
    got = fn(jnp.asarray(risk_p, jnp.float32), time_p, event_p, mask)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(fn)(jnp.asarray(risk_p, jnp.float32), time_p, event_p,
                        mask)
    want_grad = jax.grad(fn)(jnp.asarray(risk, jnp.float32), time, event)
    np.testing.assert_allclose(grad[:-pad], want_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(grad[-pad:], 0.0)
    np.testing.assert_allclose(
        _LOSS(risk_p, time_p, event_p, mask),
        _LOSS(risk, time, event), rtol=1e-6)

  def test_integer_weights_equal_duplicated_rows(self):
    x, time, event, beta = _tied_data(n=25, seed=8)
    risk = x @ beta
    counts = np.random.default_rng(8).integers(0, 4, size=len(risk))
    rep = np.repeat(np.arange(len(risk)), counts)
    with jax.enable_x64(True):
      got = _LL(
          risk, time, event, counts.astype(float))
      want = _LL(
          risk[rep], time[rep], event[rep])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(
        got, _breslow_loop(risk, time, event, counts), rtol=1e-12)

  def test_no_events_gives_zero_loss_and_finite_gradients(self):
    risk = jnp.array([0.5, -0.2, 3.0, 1.0])
    time = jnp.array([1.0, 2.0, 2.0, 0.5])
    for event, mask in [(jnp.zeros(4), None),
                        (jnp.array([1.0, 0, 0, 1.0]),
                         jnp.array([0.0, 1, 1, 0])),
                        (jnp.ones(4), jnp.zeros(4))]:
      loss, grad = jax.value_and_grad(survival_loss.cox_loss)(
          risk, time, event, mask)
      self.assertEqual(float(loss), 0.0)
      np.testing.assert_array_equal(grad, 0.0)

  def test_loss_is_mean_negative_log_likelihood_per_event(self):
    x, time, event, beta = _tied_data(n=50, seed=9)
    risk = jnp.asarray(x @ beta, jnp.float32)
    mask = np.ones(50)
    mask[:10] = 0.0
    pll = _LL(risk, time, event, mask)
    loss = _LOSS(risk, time, event, mask)
    np.testing.assert_allclose(
        loss, -pll / np.sum(event[10:]), rtol=1e-6)
    self.assertGreater(float(loss), 0.0)

  def test_permutation_invariance(self):
    x, time, event, beta = _tied_data(n=64, seed=10)
    risk = x @ beta
    mask = (np.arange(64) % 7 != 0).astype(float)
    perm = np.random.default_rng(10).permutation(64)
    fn = _LL
    with jax.enable_x64(True):
      a = fn(risk, time, event, mask)
      b = fn(risk[perm], time[perm], event[perm], mask[perm])
      ga = jax.grad(fn)(jnp.asarray(risk), time, event, mask)
      gb = jax.grad(fn)(jnp.asarray(risk[perm]), time[perm], event[perm],
                        mask[perm])
    np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(ga)[perm], gb, rtol=1e-12,
                               atol=1e-14)

  def test_jit_matches_eager_and_is_deterministic(self):
    x, time, event, beta = _tied_data(n=48, seed=11)
    args = (jnp.asarray(x @ beta, jnp.float32), jnp.asarray(time, jnp.float32),
            jnp.asarray(event, jnp.float32), jnp.ones(48))
    jit_loss = jax.jit(jax.value_and_grad(survival_loss.cox_loss))
    loss1, grad1 = jit_loss(*args)
    loss2, grad2 = jit_loss(*args)
    np.testing.assert_array_equal(loss1, loss2)
    np.testing.assert_array_equal(grad1, grad2)
    np.testing.assert_allclose(loss1, _LOSS(*args),
                               rtol=1e-6)
    self.assertTrue(np.all(np.isfinite(grad1)))


if __name__ == '__main__':
  absltest.main()
