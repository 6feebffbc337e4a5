"""What each latent factor means: rank correlations with factors and ECGs.

For every active code (a latent dimension whose posterior mean varies, Burda et
al. 2016) the Spearman correlation with every ground-truth factor and every
ECG measurement (HR, PR, QRS, QT, QTc, axes, amplitudes, ...) is computed; the
strongest association names the code ('factor 7 ~ QRS duration, rho = 0.91')
and the whole matrix is drawn as a heatmap. Codes are numbered from 0, as the
latent dimensions they are.

Ties: associations whose |rho| agree within `ranking.ATOL` (1e-6) are equal,
and the first column wins: ground-truth factor columns come before
measurement columns, then columns keep their order. A factor and the
measurement that equals it (QRS duration and QRS, rho = 1.00 both) thus name
the code by the factor on every machine, whatever the last bits of rho.
"""

from collections.abc import Mapping, Sequence
import os
from typing import Any

import numpy as np
import scipy.stats

from factorecg_jax.analysis import ranking

Array = np.ndarray

# Lead order of the contract (CONTRACTS.md): per-lead measurements are [n, 12].
LEADS = ('I', 'II', 'III', 'aVR', 'aVL', 'aVF',
         'V1', 'V2', 'V3', 'V4', 'V5', 'V6')

FACTOR_LABELS = {
    'hr': 'heart rate', 'pr': 'PR interval', 'p_dur': 'P duration',
    'qrs_dur': 'QRS duration', 'qtc': 'QTc', 'p_amp': 'P amplitude',
    'qrs_amp': 'QRS amplitude', 't_amp': 'T amplitude',
    'st_dev': 'ST deviation', 'frontal_rot': 'frontal axis',
    'qrs_t_angle': 'QRS-T angle', 'horiz_rot': 'horizontal rotation',
    'conduction': 'conduction pattern', 'noise_level': 'noise level',
}
MEASUREMENT_LABELS = {
    'hr_bpm': 'HR', 'rr_ms': 'RR', 'pr_ms': 'PR', 'p_dur_ms': 'P dur',
    'qrs_ms': 'QRS', 'qt_ms': 'QT', 'qtc_bazett_ms': 'QTc (Bazett)',
    'qtc_fridericia_ms': 'QTc (Fridericia)', 'qrs_axis_deg': 'QRS axis',
    'p_axis_deg': 'P axis', 't_axis_deg': 'T axis',
    'sokolow_lyon_mv': 'Sokolow-Lyon', 'cornell_mv': 'Cornell',
    'r_amp': 'R', 's_amp': 'S', 'qrs_pp': 'QRS p-p', 'st_j': 'ST(J)',
    't_amp': 'T',
}
# Per-lead measurements shown by default (12 leads each would swamp a table).
LEAD_MEASUREMENTS = {
    'r_amp': ('II', 'V1', 'V5'), 's_amp': ('V1', 'V3'), 'st_j': ('II', 'V2'),
    't_amp': ('II', 'V2', 'V5'),
}


def spearman_matrix(x: Array, y: Array) -> Array:
  """Spearman rank correlation of every column of x with every column of y.

  Average ranks for ties, then Pearson correlation of the ranks; a constant
  column gives NaN.

  Args:
    x: [n, d] values.
    y: [n, m] values.

  Returns:
    [d, m] float64 correlations in [-1, 1].
  """
  def standardized_ranks(a):
    r = scipy.stats.rankdata(np.asarray(a, np.float64), axis=0)
    r = r - r.mean(axis=0)
    norm = np.sqrt(np.sum(r**2, axis=0))
    with np.errstate(divide='ignore', invalid='ignore'):
      return r / norm
  return standardized_ranks(x).T @ standardized_ranks(y)


def measurement_columns(
    measurements: Mapping[str, Any],
    lead_measurements: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[str], list[str], Array]:
  """Flattens a measurement dict into columns.

  Scalar measurements ([n]) are all kept except wave-boundary sample indices
  ('*_sample'); per-lead ones ([n, 12]) only for the leads listed in
  `lead_measurements` (default LEAD_MEASUREMENTS). Known measurements come
  in the clinical order of MEASUREMENT_LABELS (HR, RR, PR, ...), others
  after them in their given order.

  Args:
    measurements: name -> [n] or [n, 12] arrays (simulator.measure layout).
    lead_measurements: name -> leads to keep.

  Returns:
    (keys, labels, values [n, m]): keys like 'qrs_ms' or 'r_amp/V1', display
    labels like 'QRS' or 'R V1'.
  """
  if lead_measurements is None:
    lead_measurements = LEAD_MEASUREMENTS
  order = list(MEASUREMENT_LABELS)
  names = sorted(measurements, key=lambda k: (
      order.index(k) if k in order else len(order)))
  keys, labels, cols = [], [], []
  for name in names:
    value = measurements[name]
    value = np.asarray(value)
    label = MEASUREMENT_LABELS.get(name, name)
    if value.ndim == 1 and not name.endswith('_sample'):
      keys.append(name)
      labels.append(label)
      cols.append(value)
    elif value.ndim == 2 and name in lead_measurements:
      for lead in lead_measurements[name]:
        keys.append(f'{name}/{lead}')
        labels.append(f'{label} {lead}')
        cols.append(value[:, LEADS.index(lead)])
  values = (np.stack(cols, axis=1) if cols
            else np.zeros((0, 0)))
  return keys, labels, values


def name_code(code: int, label: str, rho: float) -> str:
  """'factor 7 ~ QRS duration, rho = 0.91'."""
  return f'factor {code} ~ {label}, rho = {rho:.2f}'


def interpret_codes(
    codes: Array,
    factors: Array,
    measurements: Mapping[str, Any] | None = None,
    *,
    factor_names: Sequence[str] | None = None,
    active_mask: Array | None = None,
    active_threshold: float = 0.01,
    lead_measurements: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
  """Associates every active code with factors and measurements.

  Args:
    codes: [n, D] posterior means.
    factors: [n, K] ground-truth factors.
    measurements: optional dict of ECG measurements (see
      `measurement_columns`).
    factor_names: K factor keys (FACTOR_LABELS gives their display names);
      default 'v0', 'v1', ...
    active_mask: [D] bool; default Var(codes) > active_threshold.
    active_threshold: see above.
    lead_measurements: per-lead measurements to include.

  Returns:
    dict: 'codes' (active code indices), 'column_keys', 'column_labels',
    'num_factor_columns' (the first columns are the factors), 'rho'
    [A, K + M] Spearman correlations, 'names' (one string per active code),
    'best' (list of dicts code / column / label / rho).
  """
  codes = np.asarray(codes, np.float64)
  factors = np.asarray(factors, np.float64)
  if factor_names is None:
    factor_names = [f'v{j}' for j in range(factors.shape[1])]
  if active_mask is None:
    active_mask = np.var(codes, axis=0) > active_threshold
  active = np.flatnonzero(active_mask)
  keys = list(factor_names)
  labels = [FACTOR_LABELS.get(k, k) for k in factor_names]
  targets = factors
  if measurements:
    m_keys, m_labels, m_values = measurement_columns(measurements,
                                                     lead_measurements)
    if m_keys:
      keys += m_keys
      labels += m_labels
      targets = np.concatenate([factors, m_values], axis=1)
  rho = spearman_matrix(codes[:, active], targets)
  best, names = [], []
  for row, code in enumerate(active):
    # |rho| equal within ranking.ATOL are ties, whatever rounding did; they
    # go to the first column: factor columns before measurement columns,
    # then column order (e.g. qrs_dur names a code before qrs_ms does).
    col = ranking.argmax(np.abs(rho[row]))
    best.append(dict(code=int(code), column=keys[col], label=labels[col],
                     rho=float(rho[row, col])))
    names.append(name_code(int(code), labels[col], float(rho[row, col])))
  return dict(codes=active, column_keys=keys, column_labels=labels,
              num_factor_columns=len(factor_names), rho=rho, names=names,
              best=best)


def encoded_r2(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array,
    factors_test: Array,
    *,
    factor_names: Sequence[str] | None = None,
    boosted_iterations: int = 100,
    seed: int = 0,
) -> list[dict[str, Any]]:
  """How much of each ground-truth factor the codes carry, on held-out data.

  Per factor, regressions from all codes fitted on the training records and
  scored by R^2 on the test records: ordinary least squares (what a linear
  downstream model can use) and gradient-boosted trees (scikit-learn's
  `HistGradientBoostingRegressor`, deterministic for a seed: what any
  model could use). A factor the codes do not carry scores ~0 (or below:
  worse than the test mean) in both; one carried non-linearly scores higher
  boosted than linear. Complements MIG/DCI, which ask *how* a factor is
  encoded (one code or several), not *whether*.

  Args:
    codes_train: [n, D] posterior means (the codes to judge, e.g. active).
    factors_train: [n, K] ground-truth factors.
    codes_test: [m, D].
    factors_test: [m, K].
    factor_names: K keys (FACTOR_LABELS gives display names).
    boosted_iterations: boosting rounds of the tree model.
    seed: its random_state.

  Returns:
    One dict per factor: 'factor', 'label', 'r2_linear', 'r2_boosted'.
  """
  # pylint: disable-next=g-import-not-at-top
  from sklearn import ensemble, linear_model, metrics
  x_tr = np.asarray(codes_train, np.float64)
  x_te = np.asarray(codes_test, np.float64)
  y_tr = np.asarray(factors_train, np.float64)
  y_te = np.asarray(factors_test, np.float64)
  if factor_names is None:
    factor_names = [f'v{j}' for j in range(y_tr.shape[1])]
  rows = []
  for k, name in enumerate(factor_names):
    if np.ptp(y_te[:, k]) == 0:  # R^2 is undefined for a constant factor
      linear = boosted = float('nan')
    else:
      ols = linear_model.LinearRegression().fit(x_tr, y_tr[:, k])
      linear = metrics.r2_score(y_te[:, k], ols.predict(x_te))
      trees = ensemble.HistGradientBoostingRegressor(
          max_iter=boosted_iterations, early_stopping=False,
          random_state=seed).fit(x_tr, y_tr[:, k])
      boosted = metrics.r2_score(y_te[:, k], trees.predict(x_te))
    rows.append(dict(factor=name, label=FACTOR_LABELS.get(name, name),
                     r2_linear=float(linear), r2_boosted=float(boosted)))
  return rows


def plot_encoded_r2(rows: Sequence[Mapping[str, Any]], path: str,
                    title: str | None = None) -> str:
  """Horizontal bars of `encoded_r2`: linear and boosted R^2 per factor."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  n = len(rows)
  y = np.arange(n)
  fig, ax = plt.subplots(figsize=(6.0, 1.0 + 0.32 * max(n, 1)))
  for offset, key, colour, label in (
      (-0.2, 'r2_linear', '#4477aa', 'linear (OLS)'),
      (0.2, 'r2_boosted', '#ee6677', 'gradient-boosted trees')):
    values = np.array([r[key] for r in rows], np.float64)
    ax.barh(y + offset, np.clip(np.nan_to_num(values), -0.1, 1.0),
            height=0.4, color=colour, label=label)
  ax.set_yticks(y, labels=[r['label'] for r in rows], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(-0.1, 1.0)
  ax.axvline(0.0, color='black', lw=0.8)
  ax.set_xlabel('held-out R\u00b2 of the true factor from the codes')
  ax.legend(fontsize=7, loc='lower right')
  ax.set_title(title or 'What the factors carry of each true factor',
               fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_association_heatmap(
    rho: Array,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str,
    *,
    num_factor_columns: int | None = None,
    title: str | None = None,
) -> str:
  """Saves a heatmap of a [rows, cols] correlation matrix (PNG/PDF by suffix).

  Args:
    rho: [r, c] correlations in [-1, 1].
    row_labels: r labels (codes).
    col_labels: c labels (factors, then measurements).
    path: output file.
    num_factor_columns: draws a separator after the factor columns.
    title: optional title.

  Returns:
    path.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rho = np.asarray(rho, np.float64)
  r, c = rho.shape
  fig, ax = plt.subplots(figsize=(2.0 + 0.45 * c, 1.5 + 0.4 * max(r, 1)))
  im = ax.imshow(rho, cmap='RdBu_r', vmin=-1.0, vmax=1.0, aspect='auto')
  ax.set_xticks(range(c), labels=list(col_labels), rotation=60, ha='right',
                fontsize=8)
  ax.set_yticks(range(r), labels=list(row_labels), fontsize=8)
  if r * c <= 900:
    for i in range(r):
      for j in range(c):
        if np.isfinite(rho[i, j]):
          ax.text(j, i, f'{rho[i, j]:.2f}', ha='center', va='center',
                  fontsize=6,
                  color='white' if abs(rho[i, j]) > 0.6 else 'black')
  if num_factor_columns and num_factor_columns < c:
    ax.axvline(num_factor_columns - 0.5, color='black', lw=1.5)
  fig.colorbar(im, ax=ax, label='Spearman rho', shrink=0.8)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
