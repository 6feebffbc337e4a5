"""Simple models on ECG factors: the statistical core of FactorECG's comparison.

FactorECG (van de Leur et al. 2022, Eur Heart J Digit Health) argues that a
few ECG factors, used by simple models, match black-box networks: logistic
regression per diagnostic statement (odds ratios per SD of each factor),
gradient-boosted trees with SHAP values (the paper's published choice, Lundberg
et al. 2020) and Cox regression on the factors plus age and sex for 1-year
mortality (hazard ratios per SD, Harrell's C, the proportional-hazards check,
Kaplan-Meier curves by predicted-risk quartile, calibration at 1 year). Every
discrimination figure carries a 95 % interval from 2,000 bootstrap resamples of
the test records (`statistics`).

Pure functions of numpy arrays: features `[n, p]` float (factors, optionally
age and sex), binary labels `[n]` or `[n, L]`, follow-up in years with an event
flag. Covariates are standardised with the training mean and SD (ddof 1) unless
`standardize=False`, so ratios are per SD of the training split. Fits never
raise on an awkward label: one class in a split skips it, and separation or
non-convergence falls back to a small ridge penalty; the result says which
(`status`, `method`, `reason`).

Every result is a JSON-able dict (str, bool, int, float, lists, dicts;
undefined values are None, so `json.dumps(result, allow_nan=False)` works) and
is deterministic for a fixed seed.
"""

from collections.abc import Mapping, Sequence
import contextlib
import io
import math
import os
from typing import Any
import warnings

import lifelines
from lifelines import exceptions as lifelines_exceptions
from lifelines import statistics as lifelines_statistics
from matplotlib import figure as mfigure
import numpy as np
import pandas as pd
from scipy import special
from scipy import stats
from sklearn import linear_model
from statsmodels.discrete import discrete_model
from statsmodels.tools import sm_exceptions
import xgboost as xgb

from factorecg_jax.analysis import ranking
from factorecg_jax.analysis import statistics

Array = Any

# Per-SD log odds ratios beyond this mean (quasi-)separation: e^10 ~ 22,000.
_MAX_ABS_LOG_RATIO = 10.0

# XGBoost defaults: small, shallow, deterministic (one thread, fixed seed).
XGBOOST_DEFAULTS = dict(
    n_estimators=200, max_depth=3, learning_rate=0.1, subsample=1.0,
    colsample_bytree=1.0, min_child_weight=1.0, reg_lambda=1.0, nthread=1,
    tree_method='hist')

# Column names of the survival frame; cannot clash with a covariate name.
_TIME, _EVENT = '\x00time', '\x00event'


# ------------------------------------------------------------- helpers ---


def _jsonable(value: Any) -> Any:
  """Python scalars and lists; NaN and infinities become None."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  return value


def _float(value: Any) -> float:
  """None (an undefined value in a result) as NaN, for arithmetic."""
  return float('nan') if value is None else float(value)


def _matrix(x: Array, names: Sequence[str], what: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim == 1 and len(names) == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[1] != len(names):
    raise ValueError(f'{what} must be [n, {len(names)}] (one column per '
                     f'name); got shape {x.shape}.')
  if not np.isfinite(x).all():
    raise ValueError(f'{what} holds non-finite values.')
  return x


def _vector(v: Array, n: int, what: str, dtype: Any) -> np.ndarray:
  v = np.asarray(v)
  if v.shape != (n,):
    raise ValueError(f'{what} must be [{n}]; got shape {v.shape}.')
  return v.astype(dtype)


def _check_names(names: Sequence[str]) -> list[str]:
  names = [str(n) for n in names]
  if len(set(names)) != len(names):
    raise ValueError(f'names must be unique; got {names}.')
  return names


def _standardize(
    x_train: np.ndarray, x_test: np.ndarray, standardize: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train, test, mean, sd, constant) with the training mean and SD."""
  mean = x_train.mean(axis=0)
  sd = x_train.std(axis=0, ddof=1) if len(x_train) > 1 else np.zeros_like(mean)
  constant = ~(sd > 0)
  if not standardize:
    return x_train, x_test, mean, sd, constant
  scale = np.where(constant, 1.0, sd)
  return (x_train - mean) / scale, (x_test - mean) / scale, mean, sd, constant


def _one_class(y: np.ndarray, split: str) -> str | None:
  if y.size == 0:
    return f'no records in the {split} split'
  if y.all() or not y.any():
    return (f'one class only in the {split} split ({int(y.sum())} of '
            f'{y.size} positive)')
  return None


def _skipped(model: str, reason: str, **counts: Any) -> dict[str, Any]:
  return _jsonable(dict(model=model, status='skipped', reason=reason,
                        **counts))


def _binary_counts(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, int]:
  return dict(n_train=len(y_train), n_test=len(y_test),
              num_positive_train=int(y_train.sum()),
              num_positive_test=int(y_test.sum()))


def _binary_inputs(names, x_train, y_train, x_test, y_test):
  """Checked arrays of a binary fit, its counts, and why it cannot run."""
  names = _check_names(names)
  x_train = _matrix(x_train, names, 'x_train')
  x_test = _matrix(x_test, names, 'x_test')
  y_train = _vector(y_train, len(x_train), 'y_train', bool)
  y_test = _vector(y_test, len(x_test), 'y_test', bool)
  counts = _binary_counts(y_train, y_test)
  reason = _one_class(y_train, 'training') or _one_class(y_test, 'test')
  return names, x_train, x_test, y_train, y_test, counts, reason


def _wald_table(
    names: Sequence[str], coef: np.ndarray, se: np.ndarray,
    p_value: np.ndarray, alpha: float, ratio: str
) -> list[dict[str, Any]]:
  """Rows of log ratio, SE, ratio with its Wald interval and p-value."""
  z = stats.norm.ppf(1 - alpha / 2)
  rows = []
  for name, b, s, p in zip(names, coef, se, p_value):
    rows.append({'name': name, 'coef': b, 'se': s, ratio: np.exp(b),
                 'low': np.exp(b - z * s), 'high': np.exp(b + z * s),
                 'coef_low': b - z * s, 'coef_high': b + z * s,
                 'p_value': p})
  return rows


# ------------------------------------------------- logistic regression ---


def _logit_mle(
    z_train: np.ndarray, y_train: np.ndarray, maxiter: int
) -> tuple[Any, str | None]:
  """statsmodels Logit by Newton; (result, why it is unusable or None)."""
  design = np.column_stack([np.ones(len(z_train)), z_train])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    try:
      result = discrete_model.Logit(y_train.astype(np.float64), design).fit(
          method='newton', maxiter=maxiter, disp=0)
    except (sm_exceptions.PerfectSeparationError,
            np.linalg.LinAlgError) as e:
      return None, f'maximum likelihood failed ({type(e).__name__}: {e})'
  problems = {
      sm_exceptions.PerfectSeparationWarning: 'perfect separation',
      sm_exceptions.ConvergenceWarning: 'no convergence',
      sm_exceptions.HessianInversionWarning: 'singular Hessian',
  }
  for w in caught:
    for category, what in problems.items():
      if issubclass(w.category, category):
        return result, f'maximum likelihood unusable: {what}'
  if not result.mle_retvals.get('converged', False):
    return result, 'maximum likelihood unusable: no convergence'
  with np.errstate(invalid='ignore'):
    bse = np.asarray(result.bse)
  if not (np.isfinite(result.params).all() and np.isfinite(bse).all()):
    return result, 'maximum likelihood unusable: non-finite estimates'
  return result, None


def _logit_ridge(
    z_train: np.ndarray, y_train: np.ndarray, l2_penalty: float
) -> tuple[np.ndarray, np.ndarray]:
  """Ridge logistic fit (intercept unpenalised) and approximate SEs.

  Minimises sum_i loss_i + l2_penalty / 2 * |beta|^2 (scikit-learn, lbfgs,
  C = 1 / l2_penalty); the covariance is the inverse penalised information
  (X' W X + l2_penalty * I_beta)^-1 (Le Cessie & van Houwelingen 1992), an
  approximation to report beside the estimates, not an exact Wald interval.

  Returns:
    params [p + 1] (intercept first), se [p + 1].
  """
  model = linear_model.LogisticRegression(
      C=1.0 / l2_penalty, solver='lbfgs', max_iter=10_000, tol=1e-10)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    model.fit(z_train, y_train)
  params = np.r_[model.intercept_, model.coef_.ravel()]
  design = np.column_stack([np.ones(len(z_train)), z_train])
  prob = special.expit(design @ params)
  info = design.T @ (design * (prob * (1 - prob))[:, None])
  info[1:, 1:] += l2_penalty * np.eye(z_train.shape[1])
  cov = np.linalg.pinv(info)
  return params, np.sqrt(np.clip(np.diag(cov), 0.0, None))


def fit_logistic(
    x_train: Array,
    y_train: Array,
    x_test: Array,
    y_test: Array,
    *,
    names: Sequence[str],
    standardize: bool = True,
    l2_penalty: float = 1.0,
    maxiter: int = 100,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
  """Logistic regression of one binary label on the features.

  Maximum likelihood by statsmodels (Wald intervals and p-values). If that
  fails (perfect or quasi-separation, non-convergence, a singular Hessian,
  any |log OR| per SD above 10), the label is refitted with the ridge
  penalty `l2_penalty` (`method: 'l2'`; its SEs are approximate, see
  `_logit_ridge`) and `reason` says why. Features constant in the training
  split are left out (`dropped_features`).

  Args:
    x_train: [n, p] float features (ECG factors, age, sex, ...).
    y_train: [n] bool label.
    x_test: [m, p] float.
    y_test: [m] bool.
    names: p feature names.
    standardize: standardise with the training mean/SD (odds ratios per
      SD); if False, odds ratios are per unit of each feature.
    l2_penalty: ridge strength of the fallback fit (on the standardised
      scale when `standardize`).
    maxiter: Newton iterations of the maximum-likelihood fit.
    num_resamples: bootstrap resamples of the test AUROC.
    seed: seed of the bootstrap.
    alpha: 1 - coverage of all intervals.

  Returns:
    {'model': 'logistic', 'status': 'ok' | 'penalized' | 'skipped',
    'method': 'mle' | 'l2', 'reason' (why penalised or skipped, else ''),
    'n_train', 'n_test', 'num_positive_train', 'num_positive_test',
    'names', 'ratio_per': 'SD' | 'unit', 'train_mean', 'train_sd' [p],
    'dropped_features', 'intercept', 'coefficients': [{'name', 'coef'
    (log OR), 'se', 'odds_ratio', 'low', 'high' (OR interval), 'coef_low',
    'coef_high', 'p_value'}, ...], 'test_scores' [m] (probabilities),
    'auroc' {'value', 'low', 'high', 'num_resamples_used'}}; a skipped
    label has only model, status, reason and the counts.
  """
  names, x_train, x_test, y_train, y_test, counts, reason = _binary_inputs(
      names, x_train, y_train, x_test, y_test)
  if reason:
    return _skipped('logistic', reason, **counts)

  z_train, z_test, mean, sd, constant = _standardize(x_train, x_test,
                                                     standardize)
  keep = np.flatnonzero(~constant)
  kept_names = [names[j] for j in keep]
  z_train, z_test = z_train[:, keep], z_test[:, keep]
  result, reason = _logit_mle(z_train, y_train, maxiter)
  if reason is None:
    params = np.asarray(result.params)
    # Separation judged per SD whatever the reported scale.
    per_sd = params[1:] * (1.0 if standardize else sd[keep])
    if np.abs(per_sd).max(initial=0.0) > _MAX_ABS_LOG_RATIO:
      reason = (f'maximum likelihood unusable: |log OR| per SD > '
                f'{_MAX_ABS_LOG_RATIO:g} (quasi-separation)')
  if reason is None:
    method, status = 'mle', 'ok'
    se, p_value = np.asarray(result.bse), np.asarray(result.pvalues)
  else:
    method, status = 'l2', 'penalized'
    reason += f'; refitted with an L2 penalty of {l2_penalty:g}'
    params, se = _logit_ridge(z_train, y_train, l2_penalty)
    with np.errstate(divide='ignore', invalid='ignore'):
      p_value = 2 * stats.norm.sf(np.abs(params / se))

  scores = special.expit(params[0] + z_test @ params[1:])
  auroc = statistics.bootstrap_auroc(y_test, scores,
                                     num_resamples=num_resamples, seed=seed,
                                     alpha=alpha)
  return _jsonable(dict(
      model='logistic', status=status, method=method, reason=reason or '',
      **counts, names=names, ratio_per='SD' if standardize else 'unit',
      train_mean=mean, train_sd=sd,
      dropped_features=[names[j] for j in np.flatnonzero(constant)],
      l2_penalty=l2_penalty if method == 'l2' else 0.0,
      intercept=params[0],
      coefficients=_wald_table(kept_names, params[1:], se[1:], p_value[1:],
                               alpha, 'odds_ratio'),
      test_scores=scores, auroc=auroc))


def fit_logistic_multilabel(
    x_train: Array,
    Y_train: Array,  # pylint: disable=invalid-name
    x_test: Array,
    Y_test: Array,  # pylint: disable=invalid-name
    *,
    names: Sequence[str],
    label_names: Sequence[str],
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    **kwargs: Any,
) -> dict[str, Any]:
  """`fit_logistic` per diagnostic statement, plus the macro AUROC.

  The macro AUROC is the unweighted mean over the labels that were fitted
  (skipped ones left out), with one bootstrap serving all labels
  (`statistics.bootstrap_macro_auroc`); each label's own interval uses the
  same resample indices (same seed).

  Args:
    x_train: [n, p] float features.
    Y_train: [n, L] bool labels.
    x_test: [m, p] float.
    Y_test: [m, L] bool.
    names: p feature names.
    label_names: L label names.
    num_resamples, seed, alpha: of the bootstraps.
    **kwargs: passed to `fit_logistic` (`standardize`, `l2_penalty`, ...).

  Returns:
    {'model': 'logistic', 'label_names', 'per_label': {label: result of
    `fit_logistic`}, 'labels_used': [...], 'labels_skipped': {label:
    reason}, 'labels_penalized': [...], 'n_train', 'n_test', 'macro_auroc'
    {'value', 'low', 'high', 'num_resamples_used'} (None values without a
    usable label)}.
  """
  label_names = _check_names(label_names)
  num_labels = len(label_names)
  Y_train = np.asarray(Y_train)  # pylint: disable=invalid-name
  Y_test = np.asarray(Y_test)  # pylint: disable=invalid-name
  for what, y in (('Y_train', Y_train), ('Y_test', Y_test)):
    if y.ndim != 2 or y.shape[1] != num_labels:
      raise ValueError(f'{what} must be [n, {num_labels}]; got {y.shape}.')
  per_label, used, skipped, penalized = {}, [], {}, []
  scores = np.zeros(Y_test.shape, np.float64)
  for k, label in enumerate(label_names):
    res = fit_logistic(x_train, Y_train[:, k], x_test, Y_test[:, k],
                       names=names, num_resamples=num_resamples, seed=seed,
                       alpha=alpha, **kwargs)
    per_label[label] = res
    if res['status'] == 'skipped':
      skipped[label] = res['reason']
      continue
    if res['status'] == 'penalized':
      penalized.append(label)
    used.append(k)
    scores[:, k] = res['test_scores']
  if used:
    macro = statistics.bootstrap_macro_auroc(
        Y_test[:, used].astype(bool), scores[:, used],
        num_resamples=num_resamples, seed=seed, alpha=alpha)
  else:
    macro = dict(value=np.nan, low=np.nan, high=np.nan, num_resamples_used=0)
  return _jsonable(dict(
      model='logistic', label_names=label_names, per_label=per_label,
      labels_used=[label_names[k] for k in used], labels_skipped=skipped,
      labels_penalized=penalized, n_train=len(Y_train), n_test=len(Y_test),
      macro_auroc=macro))


# ------------------------------------------------------------- XGBoost ---


def fit_xgboost(
    x_train: Array,
    y_train: Array,
    x_test: Array,
    y_test: Array,
    *,
    names: Sequence[str],
    seed: int = 0,
    num_resamples: int = 2000,
    alpha: float = 0.05,
    **params: Any,
) -> dict[str, Any]:
  """Gradient-boosted trees (XGBoost `binary:logistic`) with SHAP values.

  SHAP values are XGBoost's own exact TreeSHAP (`predict(...,
  pred_contribs=True)`, Lundberg et al. 2020), in log-odds: per record
  the p contributions plus the bias column sum to the margin. A feature's
  direction is the sign of the correlation between its test values and
  its SHAP values (positive: higher value, higher predicted risk).

  Args:
    x_train: [n, p] float features (not standardised: trees are
      invariant).
    y_train: [n] bool label.
    x_test: [m, p] float.
    y_test: [m] bool.
    names: p feature names.
    seed: XGBoost seed and bootstrap seed.
    num_resamples: bootstrap resamples of the test AUROC.
    alpha: 1 - coverage of the interval.
    **params: XGBoost parameters overriding `XGBOOST_DEFAULTS`
      (`n_estimators` is the number of boosting rounds; others are native
      or scikit-learn-style aliases, e.g. `max_depth`, `learning_rate`).
      With `nthread` fixed the fit is deterministic.

  Returns:
    {'model': 'xgboost', 'status': 'ok' | 'skipped', 'reason', counts as
    `fit_logistic`, 'names', 'params' (the booster's), 'num_boost_round',
    'test_scores' [m] (probabilities), 'test_margin' [m] (log-odds),
    'auroc' {...}, 'shap': [{'name', 'mean_abs_shap', 'mean_shap',
    'direction_corr', 'gain'}, ...], 'test_contributions' [m, p] and
    'test_bias' [m] (SHAP values and bias, log-odds)}.
  """
  names, x_train, x_test, y_train, y_test, counts, reason = _binary_inputs(
      names, x_train, y_train, x_test, y_test)
  if reason:
    return _skipped('xgboost', reason, **counts)

  config = dict(XGBOOST_DEFAULTS, **params)
  num_rounds = int(config.pop('n_estimators'))
  config.update(objective='binary:logistic', eval_metric='logloss',
                seed=seed, verbosity=0)
  # Feature names stay positional (f0, f1, ...): XGBoost forbids some
  # characters in names.
  dtrain = xgb.DMatrix(x_train, label=y_train.astype(np.float32))
  dtest = xgb.DMatrix(x_test)
  booster = xgb.train(config, dtrain, num_boost_round=num_rounds,
                      verbose_eval=False)
  margin = booster.predict(dtest, output_margin=True).astype(np.float64)
  contribs = booster.predict(dtest, pred_contribs=True).astype(np.float64)
  shap_values, bias = contribs[:, :-1], contribs[:, -1]
  gain = booster.get_score(importance_type='total_gain')
  rows = []
  for j, name in enumerate(names):
    with np.errstate(invalid='ignore', divide='ignore'):
      if np.ptp(x_test[:, j]) > 0 and np.ptp(shap_values[:, j]) > 0:
        corr = np.corrcoef(x_test[:, j], shap_values[:, j])[0, 1]
      else:
        corr = 0.0
    rows.append(dict(name=name,
                     mean_abs_shap=np.abs(shap_values[:, j]).mean(),
                     mean_shap=shap_values[:, j].mean(),
                     direction_corr=corr, gain=gain.get(f'f{j}', 0.0)))
  scores = special.expit(margin)
  auroc = statistics.bootstrap_auroc(y_test, scores,
                                     num_resamples=num_resamples, seed=seed,
                                     alpha=alpha)
  return _jsonable(dict(
      model='xgboost', status='ok', reason='', **counts, names=names,
      params=config, num_boost_round=num_rounds, test_scores=scores,
      test_margin=margin, auroc=auroc, shap=rows,
      test_contributions=shap_values, test_bias=bias))


# ---------------------------------------------------------------- Cox ---


def _fit_cph(
    frame: pd.DataFrame, penalizer: float, alpha: float
) -> tuple[lifelines.CoxPHFitter, list[str]]:
  """Fits lifelines' CoxPHFitter quietly; (fitter, warning messages)."""
  cph = lifelines.CoxPHFitter(penalizer=penalizer, alpha=alpha)
  with warnings.catch_warnings(record=True) as caught, \
      contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter('always')
    cph.fit(frame, duration_col=_TIME, event_col=_EVENT)
  notes = [str(w.message).strip().splitlines()[0] for w in caught
           if issubclass(w.category, (lifelines_exceptions.ConvergenceWarning,
                                      lifelines_exceptions.StatisticalWarning))]
  return cph, notes


def scaled_schoenfeld_residuals(
    cph: lifelines.CoxPHFitter, x: Array, time: Array, event: Array
) -> pd.DataFrame:
  """Scaled Schoenfeld residuals of a fitted Cox model, vectorised.

  The values of lifelines' `compute_residuals(df, 'scaled_schoenfeld')`
  (Efron ties; Grambsch & Therneau 1994: d * r_k @ Var(beta)), in O(n log n)
  array work instead of its per-record loop, which grows an array at every
  record (O(n^2): about a minute at 100k records).

  Args:
    cph: CoxPHFitter fitted without weights, strata or entry times on `x`.
    x: [n, p] covariates as given to the fit (columns in `cph.params_`
      order).
    time: [n] follow-up.
    event: [n] bool.

  Returns:
    [num_events, p] residuals of the deaths in increasing time, as lifelines
    orders them (deaths with the same time in any order; the test
    statistics do not depend on it).
  """
  x = np.asarray(x, np.float64)
  time = np.asarray(time, np.float64)
  event = np.asarray(event).astype(bool)
  order = np.lexsort((event, time))
  xs, ts, es = x[order], time[order], event[order]
  phi = np.exp(xs @ cph.params_.to_numpy())
  phi_x = phi[:, None] * xs
  starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
  # Risk set of a time: every record with that time or later.
  risk_phi = np.cumsum(phi[::-1])[::-1][starts]
  risk_phi_x = np.cumsum(phi_x[::-1], axis=0)[::-1][starts]
  tie_phi = np.add.reduceat(phi * es, starts)
  tie_phi_x = np.add.reduceat(phi_x * es[:, None], starts, axis=0)
  deaths = np.add.reduceat(es.astype(np.int64), starts)
  # Efron: the l-th of d tied deaths sees the risk set less l/d of them.
  mean = np.zeros_like(risk_phi_x)
  with np.errstate(invalid='ignore', divide='ignore'):
    for l in range(int(deaths.max(initial=0))):
      rows = deaths > l
      frac = l / deaths[rows]
      mean[rows] += ((risk_phi_x[rows] - frac[:, None] * tie_phi_x[rows])
                     / (deaths[rows] * (risk_phi[rows] - frac * tie_phi[rows]))
                     [:, None])
  group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ts)]))
  resid = (xs - mean[group])[es]
  scaled = es.sum() * resid @ cph.variance_matrix_.to_numpy()
  return pd.DataFrame(scaled, columns=cph.params_.index)


def _ph_test(
    cph: lifelines.CoxPHFitter, frame: pd.DataFrame
) -> dict[str, Any]:
  """Schoenfeld-residual test of proportional hazards per covariate.

  lifelines' `proportional_hazard_test` with the rank time transform
  (Grambsch & Therneau 1994; what `check_assumptions` runs, without its
  printed advice), fed with `scaled_schoenfeld_residuals`.
  """
  covariates = list(cph.params_.index)
  resid = scaled_schoenfeld_residuals(cph, frame[covariates].to_numpy(),
                                      frame[_TIME].to_numpy(),
                                      frame[_EVENT].to_numpy())
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter('ignore')
    test = lifelines_statistics.proportional_hazard_test(
        cph, frame, time_transform='rank', precomputed_residuals=resid)
  # lifelines sorts the covariates by name: back to the model's order.
  summary = test.summary.loc[covariates]
  table = [dict(name=str(name), test_statistic=row['test_statistic'],
                p_value=row['p'])
           for name, row in summary.iterrows()]
  return dict(method='Schoenfeld residuals, rank(time)', table=table,
              min_p_value=float(summary['p'].min()))


def _km_by_quartile(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray, grid: np.ndarray,
    horizon: float
) -> dict[str, Any]:
  """Kaplan-Meier survival of the test records by predicted-risk quartile."""
  groups = np.array_split(np.argsort(risk, kind='stable'), 4)
  survival, n, events, mean_risk, at_horizon, upper = [], [], [], [], [], []
  for rows in groups:
    kmf = lifelines.KaplanMeierFitter().fit(time[rows], event[rows])
    survival.append(kmf.survival_function_at_times(grid).to_numpy())
    at_horizon.append(kmf.survival_function_at_times(horizon).iloc[0])
    n.append(len(rows))
    events.append(int(event[rows].sum()))
    mean_risk.append(risk[rows].mean())
    upper.append(risk[rows].max())
  return dict(times=grid, survival=survival,
              labels=['Q1 (lowest risk)', 'Q2', 'Q3', 'Q4 (highest risk)'],
              n=n, num_events=events, mean_predicted_risk=mean_risk,
              risk_upper_edge=upper, survival_at_horizon=at_horizon,
              horizon=horizon)


def fit_cox(
    x_train: Array,
    time_train: Array,
    event_train: Array,
    x_test: Array,
    time_test: Array,
    event_test: Array,
    *,
    names: Sequence[str],
    horizon: float = 1.0,
    standardize: bool = True,
    penalizer: float = 0.0,
    fallback_penalizer: float = 0.01,
    ph_test: bool = True,
    num_km_points: int = 101,
    km_max_time: float | None = None,
    num_calibration_bins: int = 10,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
  """Cox proportional-hazards regression (Cox 1972) with its evaluation.

  lifelines' CoxPHFitter (Efron ties) on the training split; hazard ratios
  with Wald intervals; on the test split: Harrell's C of the linear
  predictor, the cumulative/dynamic AUROC at `horizon` with IPCW (censoring
  model from the training split), each with a bootstrap interval; the
  predicted risk of death by `horizon`, 1 - S0(horizon)^exp(eta) (Breslow
  baseline); Kaplan-Meier curves by predicted-risk quartile; grouped
  calibration at `horizon` (`statistics.calibration_at`). If the fit does
  not converge it is refitted with `fallback_penalizer` (ridge) and
  `reason` says so; if that fails too, `status` is 'failed'.

  Args:
    x_train: [n, p] float covariates (factors, age in years, sex 0/1, ...).
    time_train: [n] float follow-up, years.
    event_train: [n] bool, 1 = death observed.
    x_test: [m, p] float.
    time_test: [m] float, years.
    event_test: [m] bool.
    names: p covariate names.
    horizon: years of the risk, AUROC and calibration (1 = 1-year
      mortality).
    standardize: standardise with the training mean/SD (hazard ratios per
      SD); if False, per unit.
    penalizer: lifelines ridge penalizer of the first fit (0 = plain
      partial likelihood).
    fallback_penalizer: penalizer of the refit after a convergence failure.
    ph_test: run the proportional-hazards test (training split).
    num_km_points: points of the Kaplan-Meier time grid.
    km_max_time: end of that grid (default: the longest test follow-up).
    num_calibration_bins: equal-count bins of the calibration.
    num_resamples: bootstrap resamples of C and AUROC.
    seed: bootstrap seed.
    alpha: 1 - coverage of all intervals.

  Returns:
    {'model': 'cox', 'status': 'ok' | 'penalized' | 'skipped' | 'failed',
    'reason', 'notes' (lifelines warnings), 'penalizer', 'n_train',
    'n_test', 'num_events_train', 'num_events_test', 'names', 'ratio_per',
    'train_mean', 'train_sd', 'dropped_features', 'horizon',
    'coefficients': [{'name', 'coef' (log HR), 'se', 'hazard_ratio',
    'low', 'high' (HR interval), 'coef_low', 'coef_high', 'p_value',
    'ph_p_value'}, ...], 'log_likelihood', 'train_concordance',
    'proportional_hazards': {'method', 'table': [{'name',
    'test_statistic', 'p_value'}], 'min_p_value'} or None,
    'concordance' and 'auroc_at_horizon' {'value', 'low', 'high',
    'num_resamples_used'}, 'test_log_partial_hazard' [m],
    'test_risk_at_horizon' [m], 'km_by_quartile' {'times' [T], 'survival'
    [4][T], 'labels', 'n', 'num_events', 'mean_predicted_risk',
    'risk_upper_edge', 'survival_at_horizon', 'horizon'}, 'calibration'
    (`statistics.calibration_at`, bins as [predicted, observed, n])}.
  """
  names = _check_names(names)
  x_train = _matrix(x_train, names, 'x_train')
  x_test = _matrix(x_test, names, 'x_test')
  n, m = len(x_train), len(x_test)
  time_train = _vector(time_train, n, 'time_train', np.float64)
  time_test = _vector(time_test, m, 'time_test', np.float64)
  event_train = _vector(event_train, n, 'event_train', bool)
  event_test = _vector(event_test, m, 'event_test', bool)
  counts = dict(n_train=n, n_test=m, num_events_train=int(event_train.sum()),
                num_events_test=int(event_test.sum()))
  for split, event in (('training', event_train), ('test', event_test)):
    if not event.any():
      return _skipped('cox', f'no events in the {split} split', **counts)

  z_train, z_test, mean, sd, constant = _standardize(x_train, x_test,
                                                     standardize)
  kept = [name for name, c in zip(names, constant) if not c]
  keep = np.flatnonzero(~constant)
  frame = pd.DataFrame(z_train[:, keep], columns=kept)
  frame[_TIME], frame[_EVENT] = time_train, event_train
  test_frame = pd.DataFrame(z_test[:, keep], columns=kept)

  status, reason, used_penalizer = 'ok', '', penalizer
  try:
    cph, notes = _fit_cph(frame, penalizer, alpha)
  except (lifelines_exceptions.ConvergenceError, np.linalg.LinAlgError) as e:
    reason = (f'partial likelihood fit failed ({type(e).__name__}: '
              f'{str(e).splitlines()[0]}); refitted with penalizer '
              f'{fallback_penalizer:g}')
    status, used_penalizer = 'penalized', fallback_penalizer
    try:
      cph, notes = _fit_cph(frame, fallback_penalizer, alpha)
    except (lifelines_exceptions.ConvergenceError,
            np.linalg.LinAlgError) as e2:
      return _skipped('cox', f'{reason}; that failed too ({e2})',
                      **counts) | {'status': 'failed'}

  summary = cph.summary.loc[kept]
  ph = None
  if ph_test:
    try:
      ph = _ph_test(cph, frame)
    except (ValueError, np.linalg.LinAlgError, ZeroDivisionError) as e:
      notes.append(f'proportional-hazards test failed: {e}')
  coefficients = _wald_table(
      kept, summary['coef'].to_numpy(), summary['se(coef)'].to_numpy(),
      summary['p'].to_numpy(), alpha, 'hazard_ratio')
  if ph is not None:
    ph_p = {row['name']: row['p_value'] for row in ph['table']}
    for row in coefficients:
      row['ph_p_value'] = ph_p.get(row['name'])

  log_hazard = cph.predict_log_partial_hazard(test_frame).to_numpy()
  survival = cph.predict_survival_function(test_frame, times=[horizon])
  risk = 1.0 - survival.to_numpy()[0]
  concordance = statistics.bootstrap_concordance(
      time_test, log_hazard, event_test, num_resamples=num_resamples,
      seed=seed, alpha=alpha)
  try:
    auroc = statistics.bootstrap_time_dependent_auroc(
        time_train, event_train, time_test, event_test, risk, horizon,
        num_resamples=num_resamples, seed=seed, alpha=alpha)
  except ValueError as e:  # e.g. test follow-up beyond the training one.
    notes.append(f'AUROC at the horizon undefined: {e}')
    auroc = dict(value=np.nan, low=np.nan, high=np.nan, num_resamples_used=0)
  grid = np.linspace(0.0, km_max_time or float(time_test.max()),
                     num_km_points)
  km = _km_by_quartile(time_test, event_test, risk, grid, horizon)
  calibration = statistics.calibration_at(
      time_test, event_test, risk, horizon,
      num_bins=min(num_calibration_bins, m))
  return _jsonable(dict(
      model='cox', status=status, reason=reason, notes=notes,
      penalizer=used_penalizer, **counts, names=names,
      ratio_per='SD' if standardize else 'unit', train_mean=mean,
      train_sd=sd,
      dropped_features=[names[j] for j in np.flatnonzero(constant)],
      horizon=horizon, coefficients=coefficients,
      log_likelihood=cph.log_likelihood_,
      train_concordance=cph.concordance_index_, proportional_hazards=ph,
      concordance=concordance, auroc_at_horizon=auroc,
      test_log_partial_hazard=log_hazard, test_risk_at_horizon=risk,
      km_by_quartile=km, calibration=calibration))


# ------------------------------------------------ importance, reports ---


def top_factors(result: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
  """The k most important features of a fit, with the direction of risk.

  Importance is |log OR| or |log HR| (per SD when standardised) for
  logistic and Cox fits, mean |SHAP| for XGBoost; near-ties (within
  `ranking.ATOL`) keep the feature order.

  Args:
    result: a result of `fit_logistic`, `fit_cox` or `fit_xgboost`.
    k: how many.

  Returns:
    Up to k dicts in decreasing importance: {'name', 'importance', 'sign'
    (+1: higher value, higher risk; -1: lower; 0: none), 'direction'
    (words)} plus, for logistic/Cox, 'coef', 'ratio', 'low', 'high',
    'p_value'. Empty for a skipped or failed fit.
  """
  if result.get('status') in ('skipped', 'failed'):
    return []
  words = {1: 'higher value, higher risk', -1: 'higher value, lower risk',
           0: 'no direction'}
  rows = []
  if 'shap' in result:
    for row in result['shap']:
      corr = _float(row['direction_corr'])
      sign = int(np.sign(corr)) if np.isfinite(corr) else 0
      rows.append(dict(name=row['name'], importance=row['mean_abs_shap'],
                       sign=sign, direction=words[sign]))
  else:
    ratio = 'hazard_ratio' if result.get('model') == 'cox' else 'odds_ratio'
    for row in result['coefficients']:
      sign = int(np.sign(row['coef']))
      rows.append(dict(name=row['name'], importance=abs(row['coef']),
                       sign=sign, direction=words[sign], coef=row['coef'],
                       ratio=row[ratio], low=row['low'], high=row['high'],
                       p_value=row['p_value']))
  # Near-equal importances tie (ranking.ATOL) and keep the feature order,
  # whatever rounding did.
  order = ranking.argsort_descending([r['importance'] for r in rows])
  return [rows[i] for i in order[:k]]


def comparison_row(
    result: Mapping[str, Any],
    *,
    model: str,
    task: str,
    metric: str | None = None,
) -> dict[str, Any]:
  """A `comparison_table` row from a fit result.

  Args:
    result: a result of any fit here.
    model: its name in the table (e.g. 'factors: Cox').
    task: e.g. '1-year mortality', 'LBBB'.
    metric: the result's metric key; default 'concordance' for Cox,
      'macro_auroc' for a multilabel fit, else 'auroc'.

  Returns:
    {'model', 'task', 'metric', 'value', 'low', 'high', 'n'}.
  """
  if metric is None:
    metric = ('concordance' if result.get('model') == 'cox' else
              'macro_auroc' if 'macro_auroc' in result else 'auroc')
  label = {'concordance': 'C-index', 'macro_auroc': 'macro AUROC',
           'auroc': 'AUROC',
           'auroc_at_horizon': f'AUROC at {result.get("horizon", 1):g} y'}
  ci = result.get(metric) or {}
  return dict(model=model, task=task, metric=label.get(metric, metric),
              value=ci.get('value'), low=ci.get('low'), high=ci.get('high'),
              n=result.get('n_test'))


def _fmt(value: Any, digits: int = 3) -> str:
  value = _float(value)
  return f'{value:.{digits}f}' if np.isfinite(value) else 'n/a'


def comparison_table(
    rows: Sequence[Mapping[str, Any]], digits: int = 3
) -> tuple[str, list[dict[str, Any]]]:
  """Markdown and JSON forms of a model comparison, one row per input.

  Args:
    rows: dicts with 'model', 'task', 'metric', 'value', 'low', 'high'
      (interval bounds) and 'n' (test records); missing values are None.
    digits: decimals shown.

  Returns:
    (Markdown table with a header row, in input order; the rows as a
    JSON-able list with exactly those keys).
  """
  keys = ('model', 'task', 'metric', 'value', 'low', 'high', 'n')
  table = [_jsonable({key: row.get(key) for key in keys}) for row in rows]
  lines = ['| task | model | metric | value | 95 % CI | n |',
           '|---|---|---|---:|---|---:|']
  for row in table:
    ci = (f'{_fmt(row["low"], digits)}–{_fmt(row["high"], digits)}'
          if row['low'] is not None and row['high'] is not None else 'n/a')
    n = '' if row['n'] is None else str(row['n'])
    lines.append(f'| {row["task"]} | {row["model"]} | {row["metric"]} | '
                 f'{_fmt(row["value"], digits)} | {ci} | {n} |')
  return '\n'.join(lines) + '\n', table


# --------------------------------------------------------------- plots ---


def _save(fig: mfigure.Figure, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, facecolor='white')
  return path


def plot_comparison(
    rows: Sequence[Mapping[str, Any]], path: str, *, title: str | None = None
) -> str:
  """One figure: tasks along x, models side by side, CIs as error bars.

  Args:
    rows: as `comparison_table`.
    path: output file (PNG/PDF by suffix).
    title: optional title.

  Returns:
    path.
  """
  _, table = comparison_table(rows)
  tasks = list(dict.fromkeys(row['task'] for row in table))
  models = list(dict.fromkeys(row['model'] for row in table))
  metrics = {task: list(dict.fromkeys(r['metric'] for r in table
                                      if r['task'] == task))
             for task in tasks}
  all_metrics = list(dict.fromkeys(row['metric'] for row in table))
  markers = 'osD^vP*X'
  width = 0.8 / max(len(models), 1)
  fig = mfigure.Figure(figsize=(max(5.0, 1.2 + 0.35 * len(table)), 4.0),
                       layout='constrained')
  ax = fig.add_subplot()
  colors = [f'C{i % 10}' for i in range(len(models))]
  for i, model in enumerate(models):
    labelled = False
    for row in table:
      if row['model'] != model or row['value'] is None:
        continue
      t = tasks.index(row['task'])
      same = [r for r in table if r['task'] == row['task']
              and r['model'] == model]
      # Several metrics of one model on one task share its slot, nudged.
      offset = same.index(row) * 0.15 * width
      low, high = _float(row['low']), _float(row['high'])
      err = [[row['value'] - low if np.isfinite(low) else 0.0],
             [high - row['value'] if np.isfinite(high) else 0.0]]
      marker = markers[all_metrics.index(row['metric']) % len(markers)]
      ax.errorbar([t - 0.4 + (i + 0.5) * width + offset], [row['value']],
                  yerr=err, fmt=marker, color=colors[i], capsize=3,
                  label=None if labelled else model)
      labelled = True
  ax.set_xticks(range(len(tasks)),
                labels=[f'{t}\n({", ".join(metrics[t])})' for t in tasks],
                fontsize=8)
  ax.set_xlim(-0.6, len(tasks) - 0.4)
  ax.axhline(0.5, color='grey', lw=0.8, ls=':')
  ax.set_ylabel('value (95 % CI)')
  ax.grid(axis='y', alpha=0.3)
  legend = ax.legend(fontsize=7, loc='lower right')
  if len(all_metrics) > 1:
    # Marker shapes tell the metrics apart; colours tell the models.
    handles = [ax.plot([], [], markers[k % len(markers)], color='grey')[0]
               for k in range(len(all_metrics))]
    ax.add_artist(legend)
    ax.legend(handles, all_metrics, fontsize=7, loc='lower left')
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_km_by_quartile(
    km: Mapping[str, Any], path: str, *, title: str | None = None
) -> str:
  """Kaplan-Meier curves of the predicted-risk quartiles.

  Args:
    km: `fit_cox(...)['km_by_quartile']`, or the whole `fit_cox` result.
    path: output file.
    title: optional title.

  Returns:
    path.
  """
  km = km.get('km_by_quartile', km)
  fig = mfigure.Figure(figsize=(5.0, 4.0), layout='constrained')
  ax = fig.add_subplot()
  times = np.asarray(km['times'], np.float64)
  for q, (surv, label) in enumerate(zip(km['survival'], km['labels'])):
    ax.step(times, np.asarray(surv, np.float64), where='post',
            color=f'C{q}', label=f'{label}, n = {km["n"][q]}')
  if km.get('horizon') is not None:
    ax.axvline(km['horizon'], color='grey', lw=0.8, ls=':')
  ax.set_xlabel('years')
  ax.set_ylabel('survival (Kaplan-Meier)')
  ax.set_ylim(None, 1.01)
  ax.legend(fontsize=7, loc='lower left')
  ax.set_title(title or 'Survival by quartile of predicted risk')
  return _save(fig, path)


def plot_calibration(
    calibration: Mapping[str, Any], path: str, *, title: str | None = None
) -> str:
  """Observed (Kaplan-Meier) against predicted risk per bin, with y = x.

  Args:
    calibration: `fit_cox(...)['calibration']` (or `statistics.
      calibration_at`'s dict), or the whole `fit_cox` result.
    path: output file.
    title: optional title.

  Returns:
    path.
  """
  calibration = calibration.get('calibration', calibration)
  predicted, observed, _ = (np.asarray(v, np.float64)
                            for v in zip(*calibration['bins']))
  top = max(float(np.nanmax(predicted)), float(np.nanmax(observed)), 1e-3)
  fig = mfigure.Figure(figsize=(4.5, 4.5), layout='constrained')
  ax = fig.add_subplot()
  ax.plot([0, 1.05 * top], [0, 1.05 * top], color='grey', lw=0.8, ls=':',
          label='ideal')
  ax.plot(predicted, observed, 'o-', label='risk bins')
  slope, intercept = (_float(calibration.get('slope')),
                      _float(calibration.get('intercept')))
  if np.isfinite(slope):
    ax.text(0.04, 0.92, f'slope {slope:.2f}, intercept {intercept:.3f}',
            transform=ax.transAxes, fontsize=8)
  ax.set_xlim(0, 1.05 * top)
  ax.set_ylim(0, 1.05 * top)
  ax.set_xlabel('predicted risk')
  ax.set_ylabel('observed risk (Kaplan-Meier)')
  ax.legend(fontsize=7, loc='lower right')
  ax.set_title(title or 'Calibration')
  return _save(fig, path)
