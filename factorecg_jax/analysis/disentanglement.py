"""Disentanglement metrics of a representation against ground-truth factors.

Pure numpy/scipy/scikit-learn functions of `(codes, factors)` arrays, following
the definitions of the original papers as implemented by disentanglement_lib
(Locatello et al. 2019), so that numbers compare with published tables:

* MIG, mutual information gap (Chen et al. 2018, eq. 6);
* DCI disentanglement, completeness and informativeness (Eastwood & Williams
  2018), importances from gradient-boosted trees (`importance='gbt'`, the
  disentanglement_lib reference) or from a lasso (`'lasso'`, fast default);
* SAP, separated attribute predictability (Kumar et al. 2018, section 3);
* modularity and explicitness (Ridgeway & Mozer 2018, section 3);
* active units (Burda et al. 2016) and the Gaussian total correlation of the
  aggregate posterior (as disentanglement_lib's unsupervised metrics).

Codes are `[n, D]` (posterior means), factors `[n, K]`. Continuous factors are
discretised where a metric needs classes: by default into 20 equal-frequency
bins whose edges come from the training set (`factor_bins=None` says that the
factors are already discrete, e.g. integer labels). Codes are discretised as
disentanglement_lib does: 20 equal-width histogram bins per code.
"""

import time
from typing import Any

import joblib
import numpy as np
import scipy.stats
from sklearn import ensemble
from sklearn import linear_model
from sklearn import svm

Array = np.ndarray

# Settings of disentanglement_lib's standard study (unsupervised_study_v1).
NUM_BINS = 20
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x E[z|x] > 0.01.
RIDGE_ALPHA = 1.0
IMPORTANCE_MODES = ('lasso', 'ridge', 'gbt', 'gbt_regressor')


# ----------------------------------------------------------------------------
# Discretisation and information.


def discretize_histogram(x: Array, num_bins: int = NUM_BINS) -> Array:
  """Equal-width bins per column, as disentanglement_lib's discretizer.

  Bin j of a column holds values in [lo + j w, lo + (j + 1) w) with w =
  (max - min) / num_bins, the maximum going to the last bin (numpy histogram
  edges). A constant column is all bin 0.

  Args:
    x: [n, d] values.
    num_bins: bins per column.

  Returns:
    [n, d] int32 bin indices in [0, num_bins).
  """
  x = np.asarray(x, np.float64)
  out = np.zeros(x.shape, np.int32)
  for j in range(x.shape[1]):
    lo, hi = x[:, j].min(), x[:, j].max()
    if hi > lo:
      edges = np.linspace(lo, hi, num_bins + 1)
      out[:, j] = np.searchsorted(edges[1:-1], x[:, j], side='right')
  return out


def quantile_edges(x: Array, num_bins: int = NUM_BINS) -> list[Array]:
  """Inner edges of equal-frequency bins per column.

  Args:
    x: [n, k] continuous values (the training set).
    num_bins: bins per column.

  Returns:
    k arrays of at most num_bins - 1 increasing inner edges (ties merged).
  """
  x = np.asarray(x, np.float64)
  qs = np.linspace(0.0, 1.0, num_bins + 1)[1:-1]
  return [np.unique(np.quantile(x[:, j], qs)) for j in range(x.shape[1])]


def discretize_factors(
    factors_train: Array,
    factors_test: Array | None = None,
    num_bins: int | None = NUM_BINS,
) -> tuple[Array, Array | None]:
  """Class labels of ground-truth factors.

  Args:
    factors_train: [n, k] factors; edges are estimated here.
    factors_test: optional [m, k] factors binned with the training edges.
    num_bins: equal-frequency bins per factor; None if the factors are
      already discrete (each distinct value becomes a class).

  Returns:
    (train [n, k], test [m, k] or None) int32 labels in [0, classes).
  """
  f_train = np.asarray(factors_train)
  f_test = None if factors_test is None else np.asarray(factors_test)
  y_train = np.zeros(f_train.shape, np.int32)
  y_test = None if f_test is None else np.zeros(f_test.shape, np.int32)
  if num_bins is None:
    for j in range(f_train.shape[1]):
      both = f_train[:, j] if f_test is None else np.concatenate(
          [f_train[:, j], f_test[:, j]])
      _, inv = np.unique(both, return_inverse=True)
      y_train[:, j] = inv[: len(f_train)]
      if y_test is not None:
        y_test[:, j] = inv[len(f_train):]
    return y_train, y_test
  for j, edges in enumerate(quantile_edges(f_train, num_bins)):
    y_train[:, j] = np.searchsorted(edges, f_train[:, j], side='right')
    if y_test is not None:
      y_test[:, j] = np.searchsorted(edges, f_test[:, j], side='right')
  return y_train, y_test


def _one_hot_columns(labels: Array, num_classes: int) -> Array:
  """[n, d] labels -> [n, d * num_classes] float one-hot blocks."""
  n, d = labels.shape
  out = np.zeros((n, d * num_classes), np.float32)
  cols = labels + num_classes * np.arange(d)[None, :]
  out[np.arange(n)[:, None], cols] = 1.0
  return out


def _plogp_ratio(p_xy: Array, p_x: Array, p_y: Array) -> Array:
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = p_xy * np.log(p_xy / (p_x * p_y))
  return np.where(p_xy > 0, terms, 0.0)


def mutual_info_matrix(a: Array, b: Array) -> Array:
  """Plug-in mutual information between every column of a and of b (nats).

  Equals sklearn.metrics.mutual_info_score per column pair; all pairs come
  from one product of one-hot matrices.

  Args:
    a: [n, da] non-negative integer labels.
    b: [n, db] non-negative integer labels.

  Returns:
    [da, db] float64 mutual information in nats.
  """
  a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
  n = a.shape[0]
  ca, cb = int(a.max()) + 1, int(b.max()) + 1
  counts = _one_hot_columns(a, ca).T @ _one_hot_columns(b, cb)
  p_xy = counts.astype(np.float64).reshape(a.shape[1], ca, b.shape[1], cb) / n
  p_x = p_xy.sum(axis=3, keepdims=True)
  p_y = p_xy.sum(axis=1, keepdims=True)
  return _plogp_ratio(p_xy, p_x, p_y).sum(axis=(1, 3))


def discrete_entropy(y: Array) -> Array:
  """[n, k] integer labels -> [k] plug-in entropies (nats)."""
  y = np.asarray(y, np.int64)
  out = np.zeros(y.shape[1])
  for j in range(y.shape[1]):
    p = np.bincount(y[:, j]) / y.shape[0]
    p = p[p > 0]
    out[j] = -np.sum(p * np.log(p))
  return out


def _code_labels(codes: Array, code_bins: int | None) -> Array:
  if code_bins is None:
    return discretize_factors(codes, None, None)[0]
  return discretize_histogram(codes, code_bins)


# ----------------------------------------------------------------------------
# MIG.


def mig(
    codes: Array,
    factors: Array,
    *,
    code_bins: int | None = NUM_BINS,
    factor_bins: int | None = NUM_BINS,
) -> dict[str, Any]:
  """Mutual information gap (Chen et al. 2018, eq. 6).

  MIG = 1/K sum_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k), with a and b the codes
  of largest and second-largest mutual information with factor k. As in
  disentanglement_lib, codes are histogram-discretised (20 bins) and the
  information is the plug-in estimate on the discretised pairs. Factors of zero
  entropy are left out of the mean.

  Args:
    codes: [n, D] representation (D >= 2).
    factors: [n, K] ground-truth factors.
    code_bins: equal-width bins per code; None if codes are discrete.
    factor_bins: equal-frequency bins per factor; None if discrete.

  Returns:
    dict: 'mig' (float), 'mig_per_factor' [K], 'mutual_info' [D, K] (nats),
    'factor_entropy' [K] (nats).
  """
  z = _code_labels(codes, code_bins)
  y, _ = discretize_factors(factors, None, factor_bins)
  m = mutual_info_matrix(z, y)
  h = discrete_entropy(y)
  top = np.sort(m, axis=0)[::-1]
  with np.errstate(divide='ignore', invalid='ignore'):
    gap = np.where(h > 0, (top[0] - top[1]) / h, np.nan)
  return dict(
      mig=float(np.nanmean(gap)), mig_per_factor=gap, mutual_info=m,
      factor_entropy=h)


# ----------------------------------------------------------------------------
# DCI.


def _normalized_entropy(p: Array, axis: int) -> Array:
  """Entropy along `axis` in base p.shape[axis] of p + 1e-11, renormalised.

  A single outcome (size 1) has entropy 0.
  """
  p = p + 1e-11
  p = p / p.sum(axis=axis, keepdims=True)
  h = -np.sum(p * np.log(p), axis=axis)
  return h / np.log(p.shape[axis]) if p.shape[axis] > 1 else h * 0.0


def dci_scores(importance: Array) -> dict[str, float]:
  """Disentanglement and completeness of an importance matrix.

  Eastwood & Williams 2018, section 2: with P_ij = R_ij / sum_k R_ik,
  D_i = 1 - H_K(P_i.) weighted by rho_i = sum_j R_ij / sum R; completeness
  C_j = 1 - H_D(R_.j / sum_i R_ij) weighted by the factor's share of R. As in
  disentanglement_lib, 1e-11 is added before normalising, so all-zero rows
  have entropy 1, and an all-zero matrix gives equal weights.

  Args:
    importance: [D, K] non-negative importance of code i for factor j.

  Returns:
    dict with 'disentanglement' and 'completeness' (floats in [0, 1]).
  """
  r = np.abs(np.asarray(importance, np.float64))
  d_per_code = 1.0 - _normalized_entropy(r, axis=1)
  c_per_factor = 1.0 - _normalized_entropy(r, axis=0)
  w = np.ones_like(r) if r.sum() == 0 else r
  code_w = w.sum(axis=1) / w.sum()
  factor_w = w.sum(axis=0) / w.sum()
  return dict(
      disentanglement=float(np.sum(d_per_code * code_w)),
      completeness=float(np.sum(c_per_factor * factor_w)))


def standardize(train: Array, test: Array) -> tuple[Array, Array]:
  """z-scores with training statistics (constant columns become 0)."""
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return (train - mean) / std, (test - mean) / std


def _r2(y: Array, pred: Array) -> Array:
  """[n, k] targets and predictions -> [k] coefficients of determination."""
  ss_res = np.sum((y - pred) ** 2, axis=0)
  ss_tot = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
  return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0)


def _gbt_one_factor(x_train, y_train, x_test, y_test, seed, regression):
  """(importances [D], train score, test score) of one factor's trees."""
  if regression:
    model = ensemble.GradientBoostingRegressor(random_state=seed)
    model.fit(x_train, y_train)
    score = lambda x, y: _r2(y[:, None], model.predict(x)[:, None])[0]
  else:
    model = ensemble.GradientBoostingClassifier(random_state=seed)
    model.fit(x_train, y_train)
    score = lambda x, y: np.mean(model.predict(x) == y)
  return (np.abs(model.feature_importances_), score(x_train, y_train),
          score(x_test, y_test))


def dci(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array,
    factors_test: Array,
    *,
    importance: str = 'lasso',
    factor_bins: int | None = NUM_BINS,
    lasso_alpha: float | None = None,
    ridge_alpha: float = RIDGE_ALPHA,
    seed: int = 0,
    n_jobs: int | None = None,
) -> dict[str, Any]:
  """DCI disentanglement, completeness and informativeness.

  Eastwood & Williams 2018. One predictor per factor from all codes gives the
  importance of each code for each factor:

  * 'gbt' (the disentanglement_lib reference, slow): sklearn's default
    GradientBoostingClassifier on the discretised factor (`factor_bins`
    classes), importance = impurity-based feature_importances_,
    informativeness = classification accuracy (train/test). A 20-class
    factor grows 20 trees per stage: minutes per factor on 10,000 points.
  * 'gbt_regressor': sklearn's default GradientBoostingRegressor on the
    standardised continuous factor (one tree per stage, ~20x cheaper than
    'gbt' with 20 bins); importance = feature_importances_,
    informativeness = R^2.
  * 'lasso' (default, fast; the linear importance of the original paper):
    lasso regression of each standardised continuous factor on the
    standardised codes, min 1/(2n)|y - Xw|^2 + alpha |w|_1; importance =
    |w|; informativeness = R^2 (train/test). By default alpha is a
    Bonferroni threshold on chance correlations, isf(1e-4 / (2 D K)) /
    sqrt(n) with isf the standard normal's inverse survival function (0.052
    for n = 10,000, D = 32, K = 14): the lasso solution is all-zero exactly
    when no code-factor correlation exceeds alpha, so codes independent of
    the factors get zero importance with probability 1 - 1e-4 and pure noise
    scores 0 disentanglement. (With a small fixed alpha a few chance
    survivors remain, each "specific" to one factor, and noise scores ~1.)
  * 'ridge': as 'lasso' with the L2 penalty alpha |w|^2 (closed form); dense
    weights, so noise codes keep small importances.

  Linear importances see only monotone (linear) relations; a code that
  encodes a factor non-monotonically is credited by the tree modes only.
  The modes give different numbers for the same codes (the lasso drops weak
  contributions that trees spread importance over): compare D and C within
  one mode, and use 'gbt' for tables next to disentanglement_lib's.

  Args:
    codes_train: [n, D] codes.
    factors_train: [n, K] factors.
    codes_test: [m, D] codes.
    factors_test: [m, K] factors.
    importance: 'lasso', 'ridge', 'gbt' or 'gbt_regressor'.
    factor_bins: bins for 'gbt' targets (None: factors are discrete labels).
    lasso_alpha: lasso penalty (standardised units); None: see above.
    ridge_alpha: ridge penalty (sklearn Ridge convention, added to X^T X).
    seed: random_state of the trees.
    n_jobs: parallel factors for the tree modes (joblib; None = 1).

  Returns:
    dict: 'disentanglement', 'completeness', 'informativeness_train',
    'informativeness_test' (floats), 'informativeness_metric' ('accuracy' or
    'r2'), 'importance' [D, K].

  Raises:
    ValueError: unknown importance mode.
  """
  x_train = np.asarray(codes_train, np.float64)
  x_test = np.asarray(codes_test, np.float64)
  if importance in ('gbt', 'gbt_regressor'):
    regression = importance == 'gbt_regressor'
    if regression:
      y_train, y_test = standardize(np.asarray(factors_train, np.float64),
                                    np.asarray(factors_test, np.float64))
    else:
      y_train, y_test = discretize_factors(factors_train, factors_test,
                                           factor_bins)
    results = joblib.Parallel(n_jobs=n_jobs)(
        joblib.delayed(_gbt_one_factor)(
            x_train, y_train[:, j], x_test, y_test[:, j], seed, regression)
        for j in range(y_train.shape[1]))
    imp = np.stack([r[0] for r in results], axis=1)
    info_train = float(np.mean([r[1] for r in results]))
    info_test = float(np.mean([r[2] for r in results]))
    metric = 'r2' if regression else 'accuracy'
  elif importance in ('lasso', 'ridge'):
    xs_train, xs_test = standardize(x_train, x_test)
    ys_train, ys_test = standardize(
        np.asarray(factors_train, np.float64),
        np.asarray(factors_test, np.float64))
    if importance == 'lasso':
      n, d = xs_train.shape
      if lasso_alpha is None:
        tests = 2.0 * d * ys_train.shape[1]
        lasso_alpha = scipy.stats.norm.isf(1e-4 / tests) / np.sqrt(n)
      model = linear_model.Lasso(alpha=lasso_alpha, fit_intercept=False)
      model.fit(xs_train, ys_train)
      w = np.atleast_2d(model.coef_).T  # [D, K]
    else:
      d = xs_train.shape[1]
      w = np.linalg.solve(xs_train.T @ xs_train + ridge_alpha * np.eye(d),
                          xs_train.T @ ys_train)
    imp = np.abs(w)
    info_train = float(np.mean(_r2(ys_train, xs_train @ w)))
    info_test = float(np.mean(_r2(ys_test, xs_test @ w)))
    metric = 'r2'
  else:
    raise ValueError(
        f'importance must be one of {IMPORTANCE_MODES}, got {importance!r}')
  out = dict(dci_scores(imp))
  out.update(
      informativeness_train=info_train, informativeness_test=info_test,
      informativeness_metric=metric, importance=imp)
  return out


# ----------------------------------------------------------------------------
# SAP.


def _squared_correlation(x: Array, y: Array) -> Array:
  """[n, D], [n, K] -> [D, K] squared Pearson correlations (0 if var(x)=0)."""
  xc = x - x.mean(axis=0)
  yc = y - y.mean(axis=0)
  cov = xc.T @ yc
  var_x = np.sum(xc**2, axis=0)
  var_y = np.sum(yc**2, axis=0)
  n = x.shape[0]
  ok = (var_x / max(n - 1, 1) > 1e-12)[:, None] & (var_y > 0)[None, :]
  with np.errstate(divide='ignore', invalid='ignore'):
    r2 = cov**2 / (var_x[:, None] * var_y[None, :])
  return np.where(ok, r2, 0.0)


def sap(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array | None = None,
    factors_test: Array | None = None,
    *,
    continuous: bool = True,
    factor_bins: int | None = NUM_BINS,
) -> dict[str, Any]:
  """Separated attribute predictability (Kumar et al. 2018, section 3).

  S_ij scores predicting factor j from code i alone; SAP is the mean over
  factors of the gap between the two largest S_ij.

  * continuous=True (default; the paper's choice for continuous attributes,
    disentanglement_lib's `continuous_factors=True`): S_ij is the R^2 of a
    1-D linear regression, the squared Pearson correlation (0 where
    var(z_i) <= 1e-12). Uses the training arrays only.
  * continuous=False (disentanglement_lib's standard study, made for discrete
    factors): factors are discretised (`factor_bins`), S_ij is the test
    accuracy of sklearn LinearSVC(C=0.01, class_weight='balanced') on code i
    alone. D x K separate fits: seconds to minutes.

  Args:
    codes_train: [n, D] codes.
    factors_train: [n, K] factors.
    codes_test: [m, D] codes (needed when continuous=False).
    factors_test: [m, K] factors (needed when continuous=False).
    continuous: see above.
    factor_bins: equal-frequency bins for the discrete variant.

  Returns:
    dict: 'sap' (float), 'sap_matrix' [D, K].
  """
  x = np.asarray(codes_train, np.float64)
  if continuous:
    s = _squared_correlation(x, np.asarray(factors_train, np.float64))
  else:
    if codes_test is None or factors_test is None:
      raise ValueError('the discrete SAP needs test codes and factors')
    x_test = np.asarray(codes_test, np.float64)
    y_train, y_test = discretize_factors(factors_train, factors_test,
                                         factor_bins)
    s = np.zeros((x.shape[1], y_train.shape[1]))
    for i in range(x.shape[1]):
      for j in range(y_train.shape[1]):
        clf = svm.LinearSVC(C=0.01, class_weight='balanced')
        clf.fit(x[:, i:i + 1], y_train[:, j])
        s[i, j] = np.mean(clf.predict(x_test[:, i:i + 1]) == y_test[:, j])
  top = np.sort(s, axis=0)
  return dict(sap=float(np.mean(top[-1] - top[-2])), sap_matrix=s)


# ----------------------------------------------------------------------------
# Modularity and explicitness.


def modularity_from_mutual_info(mutual_info: Array) -> tuple[float, Array]:
  """Modularity of Ridgeway & Mozer 2018, eq. 3, from a [D, K] MI matrix.

  Per code i with theta_i = max_j m_ij: delta_i = sum_{j != argmax}
  m_ij^2 / (theta_i^2 (K - 1)), modularity_i = 1 - delta_i (0 if theta_i = 0).

  Returns:
    (mean modularity, [D] per-code modularity).
  """
  sq = np.square(np.asarray(mutual_info, np.float64))
  top = sq.max(axis=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    delta = (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1.0))
  per_code = np.where(top > 0, 1.0 - delta, 0.0)
  return float(per_code.mean()), per_code


def _logistic_objective(z, y, w, reg, c):
  """Per-problem 0.5 |reg * w|^2 + C sum logloss; z, y [n, P], w [d + 1, P].

  The log-losses are evaluated in float32 (the objective only guards the line
  search) and summed in float64.
  """
  z = z.astype(np.float32)
  loss = np.logaddexp(np.float32(0.0), z) - y.astype(np.float32) * z
  return 0.5 * np.sum((w * reg) ** 2, axis=0) + c * np.sum(
      loss, axis=0, dtype=np.float64)


def fit_logistic_batch(
    x: Array,
    y: Array,
    *,
    c: float = 1.0,
    max_iter: int = 50,
    tol: float = 1e-8,
) -> Array:
  """Many binary L2 logistic regressions sharing the inputs, by Newton steps.

  Minimises 0.5 |w|^2 + C sum_n log(1 + exp(-s_n (x_n . w + b))) per problem
  with an unpenalised intercept b, the objective of sklearn's
  LogisticRegression(C=C). Newton's method with backtracking; only problems
  not yet converged are updated, and their Hessians X^T diag(s) X come from
  one matrix product with the pairwise column products of X.

  Args:
    x: [n, d] inputs (standardise them first).
    y: [n, P] binary targets in {0, 1}, one column per problem.
    c: inverse regularisation strength.
    max_iter: Newton iterations at most.
    tol: a problem has converged when its Newton decrement^2 / 2 (the
      predicted objective decrease) is below tol * n.

  Returns:
    [d + 1, P] float64 weights; the last row is the intercept.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n, d = x.shape
  xb = np.concatenate([x, np.ones((n, 1))], axis=1)
  iu = np.triu_indices(d + 1)
  # Shapes of the products below are chosen for speed: multithreaded
  # OpenBLAS is up to 50x slower on the transposed forms on a busy machine.
  xb_t = np.ascontiguousarray(xb.T, np.float32)
  pairs_t = xb_t[iu[0]] * xb_t[iu[1]]  # [T, n]
  reg = np.ones((d + 1, 1))
  reg[-1] = 0.0
  w = np.zeros((d + 1, y.shape[1]))
  z = np.zeros(y.shape)
  obj = _logistic_objective(z, y, w, reg, c)
  active = np.arange(y.shape[1])
  for _ in range(max_iter):
    za, ya, wa = z[:, active], y[:, active], w[:, active]
    p = 0.5 * (1.0 + np.tanh(0.5 * za))  # stable sigmoid
    grad = c * ((p - ya).T @ xb).T + reg * wa
    s = (c * p * (1.0 - p)).astype(np.float32)
    h_flat = (pairs_t @ s).T.astype(np.float64)  # [A, T]
    h = np.zeros((len(active), d + 1, d + 1))
    h[:, iu[0], iu[1]] = h_flat
    h[:, iu[1], iu[0]] = h_flat
    h += np.diag(reg[:, 0] + 1e-10)[None]
    step = -np.linalg.solve(h, grad.T[..., None])[..., 0].T  # [d + 1, A]
    decrement = -np.sum(grad * step, axis=0)  # lambda^2 >= 0
    keep = decrement / 2.0 >= tol * n
    active, step, decrement = active[keep], step[:, keep], decrement[keep]
    if not len(active):
      break
    # Backtracking (Armijo); full steps are accepted almost always.
    t = np.ones(len(active))
    todo = np.arange(len(active))
    for _ in range(30):
      cols = active[todo]
      w_try = w[:, cols] + t[todo] * step[:, todo]
      z_try = xb @ w_try
      obj_try = _logistic_objective(z_try, y[:, cols], w_try, reg, c)
      ok = obj_try <= obj[cols] - 1e-4 * t[todo] * decrement[todo]
      ok_cols = cols[ok]
      w[:, ok_cols] = w_try[:, ok]
      z[:, ok_cols] = z_try[:, ok]
      obj[ok_cols] = obj_try[ok]
      todo = todo[~ok]
      if not len(todo):
        break
      t[todo] *= 0.5
  return w


def _auc_columns(scores: Array, labels: Array) -> Array:
  """ROC-AUC per column (ties get average ranks); NaN if one class only."""
  ranks = scipy.stats.rankdata(scores, axis=0)
  pos = labels.sum(axis=0)
  neg = labels.shape[0] - pos
  with np.errstate(divide='ignore', invalid='ignore'):
    auc = (np.sum(ranks * labels, axis=0) - pos * (pos + 1) / 2.0) / (
        pos * neg)
  return np.where((pos > 0) & (neg > 0), auc, np.nan)


def explicitness(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array,
    factors_test: Array,
    *,
    factor_bins: int | None = NUM_BINS,
    c: float = 1.0,
) -> dict[str, Any]:
  """Explicitness (Ridgeway & Mozer 2018, section 3).

  Per discretised factor, a one-vs-rest L2 logistic regression (C = 1) on
  all standardised codes; its class probabilities (each class's sigmoid,
  normalised over classes as sklearn's one-vs-rest predict_proba does) give
  one ROC-AUC per class, averaged over classes (macro), then over factors.
  Solved exactly by `fit_logistic_batch` (all classes of all factors at
  once) rather than by sklearn.

  Args:
    codes_train: [n, D] codes; standardised with their own statistics.
    factors_train: [n, K] factors.
    codes_test: [m, D] codes.
    factors_test: [m, K] factors.
    factor_bins: equal-frequency bins per factor (None: discrete labels).
    c: inverse regularisation strength.

  Returns:
    dict: 'explicitness_train', 'explicitness_test' (floats),
    'explicitness_per_factor' [K] (test).
  """
  x_train, x_test = standardize(np.asarray(codes_train, np.float64),
                                 np.asarray(codes_test, np.float64))
  y_train, y_test = discretize_factors(factors_train, factors_test,
                                       factor_bins)
  num_classes = [int(y_train[:, j].max()) + 1 for j in range(y_train.shape[1])]
  targets = np.concatenate(
      [np.eye(k)[y_train[:, j]] for j, k in enumerate(num_classes)], axis=1)
  w = fit_logistic_batch(x_train, targets, c=c)
  per_factor = {'train': [], 'test': []}
  start = 0
  for j, k in enumerate(num_classes):
    wj = w[:, start:start + k]
    start += k
    for split, x, y in (('train', x_train, y_train), ('test', x_test, y_test)):
      z = x @ wj[:-1] + wj[-1]
      prob = 0.5 * (1.0 + np.tanh(0.5 * z))
      prob = prob / prob.sum(axis=1, keepdims=True)
      labels = (y[:, j][:, None] == np.arange(k)[None, :]).astype(np.float64)
      per_factor[split].append(np.nanmean(_auc_columns(prob, labels)))
  return dict(
      explicitness_train=float(np.mean(per_factor['train'])),
      explicitness_test=float(np.mean(per_factor['test'])),
      explicitness_per_factor=np.asarray(per_factor['test']))


# ----------------------------------------------------------------------------
# Unsupervised scores.


def active_units(
    codes: Array, threshold: float = ACTIVE_THRESHOLD
) -> tuple[int, Array]:
  """Active units of Burda et al. 2016: Var_x(E[z_i | x]) > threshold.

  Args:
    codes: [n, D] posterior means.
    threshold: variance threshold (0.01).

  Returns:
    (number of active units, [D] bool mask).
  """
  mask = np.var(np.asarray(codes, np.float64), axis=0) > threshold
  return int(mask.sum()), mask


def gaussian_total_correlation(
    codes: Array, sd: Array | None = None
) -> float:
  """Total correlation of a Gaussian fitted to the aggregate posterior (nats).

  TC = KL(N(0, S) || N(0, diag S)) = (sum_i log S_ii - log det S) / 2. S is
  the covariance of the posterior means (disentanglement_lib's
  gaussian_total_correlation) or, given posterior standard deviations, the
  covariance of the aggregate posterior q(z) = E_x N(mu(x), diag sd(x)^2),
  cov(mu) + diag(E[sd^2]). Dimensions of zero variance are left out.

  Args:
    codes: [n, D] posterior means.
    sd: optional [n, D] posterior standard deviations.

  Returns:
    float, nats.
  """
  mu = np.asarray(codes, np.float64)
  cov = np.atleast_2d(np.cov(mu, rowvar=False))
  if sd is not None:
    cov = cov + np.diag(np.mean(np.asarray(sd, np.float64) ** 2, axis=0))
  keep = np.diag(cov) > 1e-12
  cov = cov[np.ix_(keep, keep)]
  if cov.size == 0:
    return 0.0
  _, logdet = np.linalg.slogdet(cov)
  return float(0.5 * (np.sum(np.log(np.diag(cov))) - logdet))


# ----------------------------------------------------------------------------
# Everything at once.


def compute_all_metrics(
    codes_train: Array,
    factors_train: Array,
    codes_test: Array,
    factors_test: Array,
    *,
    sd_train: Array | None = None,
    importance: str = 'lasso',
    code_bins: int | None = NUM_BINS,
    factor_bins: int | None = NUM_BINS,
    sap_continuous: bool = True,
    active_threshold: float = ACTIVE_THRESHOLD,
    seed: int = 0,
    timings: bool = False,
) -> tuple[dict[str, float], dict[str, Array]]:
  """All (codes, factors) metrics, with the fast options by default.

  MIG, modularity and the Gaussian total correlation use the training split
  (as disentanglement_lib, 10,000 points); DCI, SAP (discrete variant) and
  explicitness train on it and test on the test split (5,000 points).

  Args:
    codes_train: [n, D] posterior means.
    factors_train: [n, K] ground-truth factors.
    codes_test: [m, D] posterior means.
    factors_test: [m, K] factors.
    sd_train: optional [n, D] posterior sds for the aggregate-posterior TC.
    importance: DCI importance mode (see `dci`).
    code_bins: histogram bins per code (MIG, modularity).
    factor_bins: equal-frequency bins per factor (None: discrete factors).
    sap_continuous: R^2 SAP (True) or disentanglement_lib's LinearSVC SAP.
    active_threshold: variance threshold of an active unit.
    seed: random_state of the trees ('gbt').
    timings: also report seconds per metric as 'time/<name>' scores.

  Returns:
    (scores, matrices): scores is a flat dict of floats ('mig',
    'dci_disentanglement', 'dci_completeness', 'dci_informativeness_train',
    'dci_informativeness_test', 'sap', 'modularity', 'explicitness_train',
    'explicitness_test', 'active_units', 'gaussian_total_correlation');
    matrices holds 'mutual_info' [D, K], 'factor_entropy' [K],
    'mig_per_factor' [K], 'dci_importance' [D, K], 'sap_matrix' [D, K],
    'modularity_per_code' [D], 'explicitness_per_factor' [K],
    'active_mask' [D].
  """
  scores, mats, secs = {}, {}, {}

  def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    secs[name] = time.perf_counter() - t0
    return out

  m = timed('mig', lambda: mig(codes_train, factors_train,
                               code_bins=code_bins, factor_bins=factor_bins))
  scores['mig'] = m['mig']
  mats.update(mutual_info=m['mutual_info'], factor_entropy=m['factor_entropy'],
              mig_per_factor=m['mig_per_factor'])
  d = timed('dci', lambda: dci(
      codes_train, factors_train, codes_test, factors_test,
      importance=importance, factor_bins=factor_bins, seed=seed))
  scores.update(
      dci_disentanglement=d['disentanglement'],
      dci_completeness=d['completeness'],
      dci_informativeness_train=d['informativeness_train'],
      dci_informativeness_test=d['informativeness_test'])
  mats['dci_importance'] = d['importance']
  s = timed('sap', lambda: sap(
      codes_train, factors_train, codes_test, factors_test,
      continuous=sap_continuous, factor_bins=factor_bins))
  scores['sap'] = s['sap']
  mats['sap_matrix'] = s['sap_matrix']
  mod, per_code = timed(
      'modularity', lambda: modularity_from_mutual_info(m['mutual_info']))
  scores['modularity'] = mod
  mats['modularity_per_code'] = per_code
  e = timed('explicitness', lambda: explicitness(
      codes_train, factors_train, codes_test, factors_test,
      factor_bins=factor_bins))
  scores.update(explicitness_train=e['explicitness_train'],
                explicitness_test=e['explicitness_test'])
  mats['explicitness_per_factor'] = e['explicitness_per_factor']
  au, mask = active_units(codes_train, active_threshold)
  scores['active_units'] = float(au)
  mats['active_mask'] = mask
  scores['gaussian_total_correlation'] = timed(
      'gaussian_total_correlation',
      lambda: gaussian_total_correlation(codes_train, sd_train))
  if timings:
    scores.update({f'time/{k}': v for k, v in secs.items()})
  return scores, mats

