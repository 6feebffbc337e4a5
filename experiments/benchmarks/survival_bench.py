"""Survival statistics at study size: Cox fit and 2,000-resample bootstraps.

  .venv/bin/python experiments/benchmarks/survival_bench.py \
      [--sizes=10000,100000 --resamples=2000]

For each size n, simulates n training and n test records from an exponential
proportional-hazards model on 21 standard-normal "factors" plus age and sex
(23 covariates, ~10 % 1-year mortality, censoring) and times (a) lifelines'
CoxPHFitter on the training records (the fit of `downstream.fit_cox`), (b)
the proportional-hazards test on `downstream.scaled_schoenfeld_residuals`
(and, up to --ph_loop_max records, on lifelines' own O(n^2) residuals), (c)
2,000-resample bootstraps on the test records of Harrell's C
(`statistics.bootstrap_concordance`), the AUROC of death by 1 year
(`statistics.bootstrap_auroc`) and the IPCW 1-year AUROC
(`statistics.bootstrap_time_dependent_auroc`, vectorised), plus the
per-resample loop over scikit-survival that it replaced (timed on a few
resamples, scaled to 2,000). About 30 s at 10k and 4 minutes at 100k on 2
shared cores, most of it the C-index bootstrap.
"""

import argparse
import contextlib
import io
import os
import time
import warnings

import lifelines
from lifelines import statistics as lifelines_statistics
import numpy as np
import pandas as pd

from factorecg_jax.analysis import downstream
from factorecg_jax.analysis import statistics

import bench_report  # pylint: disable=g-bad-import-order


def simulate(n, num_factors, seed):
  """Covariates [n, k + 2], follow-up (years) and events, PH by design."""
  rng = np.random.default_rng(seed)
  factors = rng.normal(size=(n, num_factors))
  age = np.clip(rng.normal(62.0, 14.0, size=n), 18, 95)
  male = rng.binomial(1, 0.5, size=n)
  beta = np.linspace(-0.3, 0.3, num_factors)
  eta = factors @ beta + 0.055 * (age - 62) + 0.30 * male
  t = rng.exponential(1.0 / (0.06 * np.exp(eta)))
  c = np.minimum(rng.exponential(1 / 0.05, size=n), 5.0)
  x = np.column_stack([factors, age, male])
  return x, np.minimum(t, c), t <= c


def timed(fn):
  """(wall s, process CPU s, output) of one call."""
  t, c = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - t, time.process_time() - c, out


def bench_size(n, args):
  num_factors = args.factors
  names = [f'factor_{j}' for j in range(num_factors)] + ['age', 'male']
  x, time_, event = simulate(2 * n, num_factors, args.seed)
  train, test = slice(0, n), slice(n, None)
  mean, sd = x[train].mean(0), x[train].std(0, ddof=1)
  frame = pd.DataFrame((x[train] - mean) / sd, columns=names)
  frame['T'], frame['E'] = time_[train], event[train]
  cph = lifelines.CoxPHFitter()
  rows = []

  wall, cpu, _ = timed(lambda: cph.fit(frame, 'T', 'E'))
  rows.append(('Cox fit (lifelines, Efron)', wall, cpu))

  def ph(own_residuals):
    resid = None
    if not own_residuals:
      resid = downstream.scaled_schoenfeld_residuals(
          cph, frame[names].to_numpy(), time_[train], event[train])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
      warnings.simplefilter('ignore')
      return lifelines_statistics.proportional_hazard_test(
          cph, frame, time_transform='rank', precomputed_residuals=resid)
  wall, cpu, _ = timed(lambda: ph(False))
  rows.append(('PH test (vectorised Schoenfeld residuals)', wall, cpu))
  if n <= args.ph_loop_max:
    wall, cpu, _ = timed(lambda: ph(True))
    rows.append(("  PH test, lifelines' own residuals", wall, cpu))

  test_frame = pd.DataFrame((x[test] - mean) / sd, columns=names)
  lph = cph.predict_log_partial_hazard(test_frame).to_numpy()
  risk = 1 - cph.predict_survival_function(test_frame, times=[1.0]
                                           ).to_numpy()[0]
  t_test, e_test = time_[test], event[test]
  dead_1y = (t_test <= 1.0) & e_test
  r = args.resamples
  wall, cpu, c_index = timed(lambda: statistics.bootstrap_concordance(
      t_test, lph, e_test, num_resamples=r))
  rows.append((f'bootstrap C-index ({r})', wall, cpu))
  wall, cpu, auc = timed(lambda: statistics.bootstrap_auroc(
      dead_1y, risk, num_resamples=r))
  rows.append((f'bootstrap AUROC, death by 1 y ({r})', wall, cpu))
  wall, cpu, td = timed(lambda: statistics.bootstrap_time_dependent_auroc(
      time_[train], event[train], t_test, e_test, risk, 1.0,
      num_resamples=r))
  rows.append((f'bootstrap IPCW 1-y AUROC ({r})', wall, cpu))

  def loop():
    for idx in statistics.bootstrap_indices(n, args.loop_resamples, 0):
      statistics.time_dependent_auroc(time_[train], event[train],
                                      t_test[idx], e_test[idx], risk[idx])
  wall, cpu, _ = timed(loop)
  scale = r / args.loop_resamples
  rows.append((f'  loop over sksurv, scaled from {args.loop_resamples}',
               wall * scale, cpu * scale))
  figures = dict(c_index=c_index, auroc_1y_binary=auc, auroc_1y_ipcw=td,
                 events_train=int(event[train].sum()),
                 mortality_1y_test=float(dead_1y.mean()))
  return rows, figures


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--sizes', default='10000',
                      help='comma-separated record counts (train = test)')
  parser.add_argument('--resamples', type=int, default=2000)
  parser.add_argument('--loop_resamples', type=int, default=20,
                      help='resamples of the timed sksurv loop reference')
  parser.add_argument('--ph_loop_max', type=int, default=30000,
                      help="largest n to time lifelines' O(n^2) residuals")
  parser.add_argument('--factors', type=int, default=21)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  cores = len(os.sched_getaffinity(0))
  results = {'resamples': args.resamples, 'covariates': args.factors + 2,
             'sizes': {}}
  print(f'{"n":>7s}  {"what":45s} {"wall s":>8s} {"CPU s":>8s}')
  for n in (int(s) for s in args.sizes.split(',')):
    rows, figures = bench_size(n, args)
    for what, wall, cpu in rows:
      print(f'{n:7d}  {what:45s} {wall:8.2f} {cpu:8.2f}')
    print(f'{"":7s}  C = {figures["c_index"]["value"]:.3f}, IPCW 1-y AUROC '
          f'= {figures["auroc_1y_ipcw"]["value"]:.3f}, 1-y mortality '
          f'{figures["mortality_1y_test"]:.3f}')
    results['sizes'][str(n)] = dict(
        rows=[dict(what=w.strip(), wall_s=wall, cpu_s=cpu)
              for w, wall, cpu in rows], **figures)
  print(f'{cores} usable cores, load average now {os.getloadavg()[0]:.1f}.')
  bench_report.write('survival_bench', results)


if __name__ == '__main__':
  main()
