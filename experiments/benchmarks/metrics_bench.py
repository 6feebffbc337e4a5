"""Benchmark of the disentanglement metrics on standard-study-sized encodings.

Times `compute_all_metrics` (fast defaults) on 10,000 training + 5,000 test
encodings of 14 factors in 32 latents, and, on the same inputs, the slow
reference paths that disentanglement_lib uses: DCI with sklearn gradient-boosted
trees (timed on a subsample and extrapolated linearly in points and factors),
explicitness with sklearn one-vs-rest logistic regressions and the mutual
information pair by pair with sklearn. Also times the BetaVAE / FactorVAE
machinery at standard settings with a free generator (identity render, oracle
encoder), i.e. without rendering or encoding costs. Goal: all (codes, factors)
metrics in <= 10 s on 2 cores.

  .venv/bin/python experiments/benchmarks/metrics_bench.py

About 2-4 minutes on 2 shared cores, most of it in the reference paths.
"""

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import multiclass

from factorecg_jax.analysis import disentanglement as dis
from factorecg_jax.analysis import interventions

import bench_report  # pylint: disable=g-bad-import-order

_N_TRAIN = flags.DEFINE_integer('n_train', 10_000, 'training encodings')
_N_TEST = flags.DEFINE_integer('n_test', 5_000, 'test encodings')
_FACTORS = flags.DEFINE_integer('factors', 14, 'ground-truth factors')
_LATENTS = flags.DEFINE_integer('latents', 32, 'latent dimensions')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timed repeats (median)')
_GBT_TRAIN = flags.DEFINE_integer('gbt_train', 1000, 'GBT subsample points')
_GBT_FACTORS = flags.DEFINE_integer('gbt_factors', 2, 'GBT factors timed')
_REF_FACTORS = flags.DEFINE_integer(
    'ref_factors', 2, 'factors timed for the sklearn explicitness reference')
_INTERVENTIONS = flags.DEFINE_bool(
    'interventions', True, 'time BetaVAE/FactorVAE at standard settings')


def make_encodings(n, num_factors, num_latents, seed):
  """A VAE-like representation: some clean, some mixed, some collapsed codes.

  Returns:
    factors [n, K] uniform, mu [n, D], sd [n, D].
  """
  rng = np.random.default_rng(seed)
  factors = rng.uniform(size=(n, num_factors))
  mix_rng = np.random.default_rng(1234)  # same map for train and test
  informative = min(num_latents, num_factors + 4)
  mixing = np.eye(num_factors, informative)
  mixing += 0.4 * mix_rng.normal(size=mixing.shape) * (
      mix_rng.uniform(size=mixing.shape) < 0.15)
  mu = np.zeros((n, num_latents))
  mu[:, :informative] = np.tanh(2.0 * (factors - 0.5) @ mixing)
  mu[:, :informative] += 0.05 * rng.normal(size=(n, informative))
  mu[:, informative:] = 0.02 * rng.normal(size=(n, num_latents - informative))
  sd = np.full((n, num_latents), 0.1)
  sd[:, informative:] = 1.0  # collapsed to the prior
  return factors, mu, sd


def timed(fn, repeats=1):
  """(median wall seconds, output); CPU seconds of the last run in LAST_CPU.

  CPU time (all threads) is the steadier figure on a shared machine.
  """
  times, out = [], None
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    times.append(time.perf_counter() - t0)
    LAST_CPU[0] = time.process_time() - c0
  return statistics.median(times), out


LAST_CPU = [0.0]


def main(argv):
  del argv
  k, d = _FACTORS.value, _LATENTS.value
  f_train, mu_train, sd_train = make_encodings(_N_TRAIN.value, k, d, 0)
  f_test, mu_test, _ = make_encodings(_N_TEST.value, k, d, 1)
  print(f'cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} (shared '
        f'machine: timings are noisy) train={len(f_train)} '
        f'test={len(f_test)} factors={k} latents={d}')

  # Fast path: everything compute_all_metrics does, with per-metric times.
  total, (scores, _) = timed(
      lambda: dis.compute_all_metrics(mu_train, f_train, mu_test, f_test,
                                      sd_train=sd_train, timings=True),
      _REPEATS.value)
  print(f'\ncompute_all_metrics (fast defaults): {total:.2f} s wall '
        f'(median of {_REPEATS.value}), {LAST_CPU[0]:.2f} s CPU; goal <= 10 s')
  for name, value in scores.items():
    if name.startswith('time/'):
      print(f'  {name[5:]:<28s} {value:7.3f} s')
  for name, value in scores.items():
    if not name.startswith('time/'):
      print(f'  {name:<28s} {value:7.4f}')

  # Reference 1: DCI with GradientBoostingClassifier, as disentanglement_lib.
  n_sub, k_sub = _GBT_TRAIN.value, _GBT_FACTORS.value
  t_gbt, out_gbt = timed(lambda: dis.dci(
      mu_train[:n_sub], f_train[:n_sub, :k_sub], mu_test[:n_sub // 2],
      f_test[:n_sub // 2, :k_sub], importance='gbt'))
  t_reg, out_reg = timed(lambda: dis.dci(
      mu_train[:n_sub], f_train[:n_sub, :k_sub], mu_test[:n_sub // 2],
      f_test[:n_sub // 2, :k_sub], importance='gbt_regressor'))
  t_fast_sub, out_fast = timed(lambda: dis.dci(
      mu_train[:n_sub], f_train[:n_sub, :k_sub], mu_test[:n_sub // 2],
      f_test[:n_sub // 2, :k_sub]))
  scale = (len(f_train) / n_sub) * (k / k_sub)
  t_gbt_full = t_gbt * scale
  t_fast_dci = scores['time/dci']
  print(f'\nDCI gbt on {n_sub} points x {k_sub} factor(s): {t_gbt:.1f} s '
        f'-> ~{t_gbt_full:.0f} s extrapolated to {len(f_train)} x {k} '
        f'(linear in points and factors); lasso on the full data: '
        f'{t_fast_dci:.3f} s; ratio ~{t_gbt_full / t_fast_dci:.0f}x')
  print(f'DCI gbt_regressor on the same subsample: {t_reg:.1f} s -> '
        f'~{t_reg * scale:.0f} s extrapolated')
  for name, out, t in (('gbt', out_gbt, t_gbt),
                       ('gbt_regressor', out_reg, t_reg),
                       ('lasso', out_fast, t_fast_sub)):
    print(f'  subsample {name:<14s} D {out["disentanglement"]:.3f}  C '
          f'{out["completeness"]:.3f}  I(test) '
          f'{out["informativeness_test"]:.3f} '
          f'({out["informativeness_metric"]})  {t:.3f} s')

  # Reference 2: explicitness with sklearn one-vs-rest logistic regressions.
  k_ref = _REF_FACTORS.value
  x_train, x_test = dis.standardize(mu_train, mu_test)
  y_train, y_test = dis.discretize_factors(f_train, f_test)

  def sklearn_explicitness():
    aucs = []
    for j in range(k_ref):
      clf = multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
      clf.fit(x_train, y_train[:, j])
      prob = clf.predict_proba(x_test)
      aucs.append(sk_metrics.roc_auc_score(
          np.eye(prob.shape[1])[y_test[:, j]], prob, average='macro'))
    return np.mean(aucs)

  results = dict(
      num_train=len(f_train), num_test=len(f_test), factors=k, latents=d,
      compute_all_metrics_s=total, compute_all_metrics_cpu_s=LAST_CPU[0],
      scores={n: v for n, v in scores.items() if not n.startswith('time/')},
      metric_seconds={n[5:]: v for n, v in scores.items()
                      if n.startswith('time/')},
      dci_gbt_subsample_s=t_gbt, dci_gbt_extrapolated_s=t_gbt_full,
      dci_lasso_s=t_fast_dci, dci_gbt_regressor_subsample_s=t_reg)
  t_ref, auc_ref = timed(sklearn_explicitness)
  t_ours, ours = timed(lambda: dis.explicitness(
      mu_train, f_train[:, :k_ref], mu_test, f_test[:, :k_ref]))
  print(f'\nexplicitness, {k_ref} factors: sklearn one-vs-rest {t_ref:.2f} s, '
        f'batched Newton {t_ours:.2f} s, ratio {t_ref / t_ours:.1f}x; '
        f'AUC {auc_ref:.5f} vs {ours["explicitness_test"]:.5f}')
  results.update(explicitness_sklearn_s=t_ref, explicitness_ours_s=t_ours,
                 explicitness_ratio=t_ref / t_ours)

  # Reference 3: mutual information pair by pair with sklearn.
  z = dis.discretize_histogram(mu_train)

  def sklearn_mi():
    return np.array([[sk_metrics.mutual_info_score(y_train[:, j], z[:, i])
                      for j in range(k)] for i in range(d)])

  t_ref, m_ref = timed(sklearn_mi)
  t_ours, m_ours = timed(lambda: dis.mutual_info_matrix(z, y_train))
  print(f'mutual information {d}x{k}: sklearn pairwise {t_ref:.2f} s, '
        f'one-hot product {t_ours:.3f} s, ratio {t_ref / t_ours:.0f}x; '
        f'max |diff| {np.max(np.abs(m_ref - m_ours)):.1e}')
  results.update(mutual_info_sklearn_s=t_ref, mutual_info_ours_s=t_ours,
                 mutual_info_ratio=t_ref / t_ours,
                 mutual_info_max_abs_diff=float(np.max(np.abs(m_ref - m_ours))))

  if _INTERVENTIONS.value:
    def sample(key, n):
      return jax.random.uniform(key, (n, k))

    def render(factors, key):
      del key
      return factors

    enc = interventions.oracle_encoder()
    t_beta, beta = timed(lambda: interventions.beta_vae_score(
        jax.random.key(0), sample, render, enc))
    t_fvae, fvae = timed(lambda: interventions.factor_vae_score(
        jax.random.key(0), sample, render, enc))
    print(f'\nintervention machinery at standard settings (batch 64, '
          f'10,000 / 5,000 points; free render/encode):\n  BetaVAE '
          f'{t_beta:.1f} s (oracle eval accuracy {beta["eval_accuracy"]:.3f})'
          f', FactorVAE {t_fvae:.1f} s (oracle eval accuracy '
          f'{fvae["eval_accuracy"]:.3f}); with the simulator add rendering '
          f'and encoding of {15_000 * 128 + 15_000 * 64 + 10_000:,} beats')
    results.update(beta_vae_s=t_beta, factor_vae_s=t_fvae)
  bench_report.write('metrics_bench', results)


if __name__ == '__main__':
  app.run(main)
