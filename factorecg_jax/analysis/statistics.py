"""Whole-split statistics with bootstrap intervals, as FactorECG reports them.

Discrimination (AUROC, macro AUROC, Harrell's C, time-dependent AUROC) and
calibration of predictions over a whole evaluation split, each with a 95 %
percentile interval from 2,000 bootstrap resamples of the records (van de
Leur et al. 2022; Efron & Tibshirani 1993, ch. 13).

The resamples are one index matrix [R, n] per call, drawn from
`np.random.default_rng(seed)` in row chunks (`bootstrap_indices`). AUROC,
time-dependent AUROC and C-index are evaluated on all resamples at once: a
resample equals the original records weighted by how often each was drawn,
so a single sort of the split serves every resample and each resample costs
O(n) (AUROCs) or O(n log n) (C-index) array work, the same value as
re-running the metric on the resampled records. Resamples on which a metric
is undefined (one class; no comparable pair) are dropped and counted out in
`num_resamples_used`.

Two models scored on the same records are compared by a paired bootstrap
(`reference=`): each resample scores both, and the interval is of the
difference, so the records' shared difficulty cancels out.

Host-side numpy only (scipy, scikit-learn, lifelines, scikit-survival); no
JAX or training code.
"""

from collections.abc import Callable, Iterator
from typing import Any

import lifelines
from lifelines import utils as lifelines_utils
import numpy as np
from sklearn import metrics as sk_metrics

Array = Any

# Elements of a [rows, n] index chunk; bounds the memory of a bootstrap to a
# few arrays of this size (128 MiB each as int64) whatever R and n are.
_CHUNK_ELEMENTS = 1 << 24


def _chunk_rows(n: int) -> int:
  return max(1, _CHUNK_ELEMENTS // max(n, 1))


def _index_chunks(
    n: int, num_resamples: int, seed: int
) -> Iterator[np.ndarray]:
  """Yields the rows of the bootstrap index matrix, a chunk at a time."""
  rng = np.random.default_rng(seed)
  rows = _chunk_rows(n)
  for start in range(0, num_resamples, rows):
    yield rng.integers(0, n, size=(min(rows, num_resamples - start), n))


def bootstrap_indices(n: int, num_resamples: int, seed: int) -> np.ndarray:
  """The [num_resamples, n] index matrix every bootstrap here uses.

  Row r holds the records of resample r (drawn with replacement). The
  matrix is drawn in row chunks whose size depends on n only, so it is the
  same whether materialised here or streamed by the bootstrap functions.

  Args:
    n: number of records.
    num_resamples: number of resamples R.
    seed: seed of `np.random.default_rng`.

  Returns:
    [R, n] int64 indices into the records.
  """
  chunks = list(_index_chunks(n, num_resamples, seed))
  if not chunks:
    return np.zeros((0, n), np.int64)
  return np.concatenate(chunks, axis=0)


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
  """[rows, n] multiplicity of each record in each resample."""
  rows = idx.shape[0]
  flat = idx + n * np.arange(rows)[:, None]
  return np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n)


def _interval(
    value: float, resampled: np.ndarray, alpha: float
) -> dict[str, float]:
  """Percentile interval over the finite resampled values."""
  finite = resampled[np.isfinite(resampled)]
  if finite.size:
    low, high = np.percentile(finite, [50 * alpha, 100 - 50 * alpha])
  else:
    low = high = np.nan
  return dict(value=float(value), low=float(low), high=float(high),
              num_resamples_used=int(finite.size))


def _bootstrap(
    value: float,
    n: int,
    per_chunk: Callable[[np.ndarray], np.ndarray],
    *,
    num_resamples: int,
    seed: int,
    alpha: float,
) -> dict[str, float]:
  values = [per_chunk(idx) for idx in _index_chunks(n, num_resamples, seed)]
  resampled = np.concatenate(values) if values else np.zeros(0)
  return _interval(value, resampled, alpha)


Resampler = tuple[float, Callable[[np.ndarray], np.ndarray]]


def _reference_scores(reference: Array, scores: np.ndarray) -> np.ndarray:
  reference = np.asarray(reference, np.float64)
  if reference.shape != scores.shape:
    raise ValueError(
        f'reference scores have shape {reference.shape}, the scores '
        f'{scores.shape}: a paired difference needs both models\' scores '
        'on the same records, in the same order')
  return reference


def _bootstrap_of(
    make: Callable[[np.ndarray], Resampler],
    scores: np.ndarray,
    reference: Array | None,
    n: int,
    *,
    num_resamples: int,
    seed: int,
    alpha: float,
) -> dict[str, float]:
  """Interval of a metric of `scores`, or of its difference from `reference`.

  `make(scores)` returns (metric on all records, per-chunk resampled
  values). With a reference the two models' values are taken on the same
  resamples and subtracted: a paired bootstrap of the difference, whose
  interval is narrower than two separate intervals suggest when the
  models' errors are correlated (they share the records).
  """
  value, per_chunk = make(scores)
  if reference is not None:
    ref_value, ref_chunk = make(_reference_scores(reference, scores))
    value = value - ref_value
    first = per_chunk
    per_chunk = lambda idx: first(idx) - ref_chunk(idx)  # noqa: E731
  return _bootstrap(value, n, per_chunk, num_resamples=num_resamples,
                    seed=seed, alpha=alpha)


# ---------------------------------------------------------------- AUROC ---


def auroc(labels: Array, scores: Array) -> float:
  """Area under the ROC curve (Hanley & McNeil 1982).

  Args:
    labels: [n] bool, 1 = positive.
    scores: [n] float, higher = more likely positive.

  Returns:
    AUROC in [0, 1]; NaN when `labels` holds one class only.
  """
  labels = np.asarray(labels).astype(bool)
  if labels.all() or not labels.any():
    return float('nan')
  return float(sk_metrics.roc_auc_score(labels, np.asarray(scores)))


def _score_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sort order of `scores` and the start of each run of equal scores."""
  order = np.argsort(scores, kind='stable')
  sorted_scores = scores[order]
  starts = np.flatnonzero(
      np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  return order, starts


def _weighted_auroc(
    labels: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
  """AUROC of each row of `weights` [rows, n] (record multiplicities).

  The Mann-Whitney statistic U = sum over (positive, negative) pairs of
  [s_pos > s_neg] + 1/2 [s_pos = s_neg], each pair counted w_pos * w_neg
  times: the average-rank U of the resampled records. Exact in int64.
  """
  y = labels[order]
  w = weights[:, order].astype(np.int64)
  pos = np.add.reduceat(w * y, starts, axis=1)
  neg = np.add.reduceat(w * ~y, starts, axis=1)
  neg_below = np.cumsum(neg, axis=1) - neg
  # 2 U as an integer: ties count one half.
  twice_u = np.sum(pos * (2 * neg_below + neg), axis=1)
  num_pos, num_neg = pos.sum(axis=1), neg.sum(axis=1)
  denom = 2 * num_pos * num_neg
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, twice_u / np.where(denom > 0, denom, 1),
                    np.nan)


def bootstrap_auroc(
    labels: Array,
    scores: Array,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    reference: Array | None = None,
) -> dict[str, float]:
  """AUROC with a bootstrap percentile interval (FactorECG: 2,000, 95 %).

  All resamples are evaluated at once from one sort of the scores (the
  Mann-Whitney U with average ranks for tied scores, DeLong et al. 1988
  eq. 2); resamples holding one class are skipped.

  Args:
    labels: [n] bool, 1 = positive.
    scores: [n] float, higher = more likely positive.
    num_resamples: bootstrap resamples R.
    seed: seed of the resample indices (`bootstrap_indices`).
    alpha: 1 - coverage of the interval.
    reference: optional [n] scores of a second model on the same records
      in the same order: the result is then the paired difference
      metric(scores) - metric(reference), both taken on each resample (a
      resample where either is undefined is dropped).

  Returns:
    {'value': AUROC on all records (or the difference), 'low', 'high': the
    alpha/2 and 1 - alpha/2 percentiles over resamples,
    'num_resamples_used'}.
  """
  labels = np.asarray(labels).astype(bool)
  n = len(labels)

  def make(s):
    order, starts = _score_groups(s)
    return auroc(labels, s), lambda idx: _weighted_auroc(
        labels, order, starts, _counts(idx, n))

  return _bootstrap_of(make, np.asarray(scores, np.float64), reference, n,
                       num_resamples=num_resamples, seed=seed, alpha=alpha)


def macro_auroc(labels: Array, scores: Array) -> float:
  """Unweighted mean AUROC over labels that have both classes.

  Args:
    labels: [n, L] bool.
    scores: [n, L] float.

  Returns:
    Mean AUROC over the labels with both classes; NaN if there are none.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores)
  values = [auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def bootstrap_macro_auroc(
    labels: Array,
    scores: Array,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    reference: Array | None = None,
) -> dict[str, float]:
  """Macro AUROC with a bootstrap interval; one resample serves all labels.

  In each resample, labels with one class are left out of the mean; a
  resample with no usable label is skipped.

  Args:
    labels: [n, L] bool.
    scores: [n, L] float.
    num_resamples: bootstrap resamples R.
    seed: seed of the resample indices (`bootstrap_indices`).
    alpha: 1 - coverage of the interval.
    reference: optional [n, L] scores of a second model (see
      `bootstrap_auroc`); in each resample both means run over the same
      labels.

  Returns:
    Same keys as `bootstrap_auroc`.
  """
  labels = np.asarray(labels).astype(bool)
  n, num_labels = labels.shape

  def make(s):
    groups = [_score_groups(s[:, k]) for k in range(num_labels)]

    def per_chunk(idx):
      counts = _counts(idx, n)
      values = np.stack([
          _weighted_auroc(labels[:, k], *groups[k], counts)
          for k in range(num_labels)
      ], axis=1)
      usable = np.isfinite(values)
      total = np.where(usable, values, 0.0).sum(axis=1)
      with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(usable.any(axis=1), total / usable.sum(axis=1),
                        np.nan)

    return macro_auroc(labels, s), per_chunk

  return _bootstrap_of(make, np.asarray(scores, np.float64), reference, n,
                       num_resamples=num_resamples, seed=seed, alpha=alpha)


# ------------------------------------------------------------- C-index ---


def concordance_index(time: Array, risk: Array, event: Array) -> float:
  """Harrell's C-index of a risk score (Harrell et al. 1996), via lifelines.

  A pair is comparable when the shorter time is an event (a censoring at
  the same time as a death counts as the longer one; two deaths at the same
  time are not comparable); it is concordant when the shorter time has the
  higher risk, and a tie in risk counts one half.

  Args:
    time: [n] float, follow-up in years.
    risk: [n] float, higher = shorter expected survival.
    event: [n] bool, 1 = death observed, 0 = censored.

  Returns:
    C in [0, 1]; NaN without a comparable pair.
  """
  try:
    # lifelines scores predicted survival times (higher = longer): -risk.
    return float(lifelines_utils.concordance_index(
        np.asarray(time, np.float64), -np.asarray(risk, np.float64),
        np.asarray(event).astype(bool)))
  except ZeroDivisionError:
    return float('nan')


class _ConcordancePlan:
  """Weight-independent sort work of the weighted Harrell's C.

  For multiplicities w and a = w * event, with time key k (censored rows
  just after deaths at the same time) and risk r:
    pairs   = sum_i a_i sum_j w_j [k_j > k_i],
    tied    = sum_i a_i sum_j w_j [k_j > k_i][r_j = r_i],
    correct = sum_i a_i sum_j w_j [k_j > k_i][r_j < r_i],
  the counts lifelines makes on the resampled records (copies of one record
  are never comparable). `correct` counts the weighted inversions of r in
  (k, r) order by merge-sort levels (CDQ divide and conquer): at each level
  a left-half record meets the right-half records of its block with lower
  risk, a prefix of the block's right half in risk order.
  """

  def __init__(self, time, risk, event):
    n = len(time)
    _, time_rank = np.unique(time, return_inverse=True)
    _, self.risk_rank = np.unique(risk, return_inverse=True)
    self.event = event
    key = 2 * time_rank + (~event).astype(np.int64)
    # pairs: suffix sums over groups of equal key.
    self.key_order = np.argsort(key, kind='stable')
    sorted_key = key[self.key_order]
    self.key_starts = np.flatnonzero(
        np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    # tied: groups of equal (risk, key), suffix sums within a risk.
    self.rk_order = np.lexsort((key, self.risk_rank))
    rr, kk = self.risk_rank[self.rk_order], key[self.rk_order]
    new_rk = np.r_[True, (rr[1:] != rr[:-1]) | (kk[1:] != kk[:-1])]
    self.rk_starts = np.flatnonzero(new_rk)
    group_risk = rr[self.rk_starts]
    last_of_risk = np.r_[group_risk[1:] != group_risk[:-1], True]
    # Index (into the groups) of the last group of each group's risk.
    last_idx = np.flatnonzero(last_of_risk)
    self.rk_risk_end = last_idx[np.searchsorted(last_idx,
                                                np.arange(len(group_risk)))]
    # correct: merge-sort levels over positions in (key, risk) order.
    self.pos_order = np.lexsort((self.risk_rank, key))
    ranks = self.risk_rank[self.pos_order]
    num_ranks = int(ranks.max()) + 1 if n else 1
    pos = np.arange(n)
    self.levels = []
    half = 1
    while half < n:
      block = pos // (2 * half)
      is_left = (pos % (2 * half)) < half
      right = np.flatnonzero(~is_left)
      right = right[np.lexsort((ranks[right], block[right]))]
      right_key = block[right] * num_ranks + ranks[right]
      left = np.flatnonzero(is_left)
      hi = np.searchsorted(right_key, block[left] * num_ranks + ranks[left])
      lo = np.searchsorted(right_key, block[left] * num_ranks)
      self.levels.append((left, right, lo, hi))
      half *= 2

  def __call__(self, weights: np.ndarray) -> np.ndarray:
    """C-index of each row of `weights` [rows, n]; NaN without pairs."""
    w = weights.astype(np.int64)
    a = w * self.event
    # pairs
    wk = np.add.reduceat(w[:, self.key_order], self.key_starts, axis=1)
    ak = np.add.reduceat(a[:, self.key_order], self.key_starts, axis=1)
    w_after = wk.sum(axis=1, keepdims=True) - np.cumsum(wk, axis=1)
    pairs = np.sum(ak * w_after, axis=1)
    # tied
    wg = np.add.reduceat(w[:, self.rk_order], self.rk_starts, axis=1)
    ag = np.add.reduceat(a[:, self.rk_order], self.rk_starts, axis=1)
    cum = np.cumsum(wg, axis=1)
    tied = np.sum(ag * (cum[:, self.rk_risk_end] - cum), axis=1)
    # correct
    wp, ap = w[:, self.pos_order], a[:, self.pos_order]
    correct = np.zeros(w.shape[0], np.int64)
    zeros = np.zeros((w.shape[0], 1), np.int64)
    for left, right, lo, hi in self.levels:
      cs = np.concatenate([zeros, np.cumsum(wp[:, right], axis=1)], axis=1)
      correct += np.sum(ap[:, left] * (cs[:, hi] - cs[:, lo]), axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
      return np.where(pairs > 0,
                      (correct + tied / 2) / np.where(pairs > 0, pairs, 1),
                      np.nan)


def bootstrap_concordance(
    time: Array,
    risk: Array,
    event: Array,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    reference: Array | None = None,
) -> dict[str, float]:
  """Harrell's C-index with a bootstrap percentile interval.

  Resamples are evaluated together as multiplicity weights on the original
  records (`_ConcordancePlan`): O(n log n) per resample, equal to
  `concordance_index` on the resampled records.

  Args:
    time: [n] float, follow-up in years.
    risk: [n] float, higher = shorter expected survival.
    event: [n] bool, 1 = death observed.
    num_resamples: bootstrap resamples R.
    seed: seed of the resample indices (`bootstrap_indices`).
    alpha: 1 - coverage of the interval.
    reference: optional [n] risks of a second model (see `bootstrap_auroc`).

  Returns:
    Same keys as `bootstrap_auroc`.
  """
  time = np.asarray(time, np.float64)
  event = np.asarray(event).astype(bool)
  n = len(time)

  def make(r):
    plan = _ConcordancePlan(time, r, event)
    return concordance_index(time, r, event), lambda idx: plan(
        _counts(idx, n))

  return _bootstrap_of(make, np.asarray(risk, np.float64), reference, n,
                       num_resamples=num_resamples, seed=seed, alpha=alpha)


# ------------------------------------------------ time-dependent AUROC ---


def _surv(time: np.ndarray, event: np.ndarray) -> np.ndarray:
  # scikit-survival is imported on use: only these two functions need it.
  # pylint: disable-next=g-import-not-at-top
  from sksurv import util as sksurv_util
  return sksurv_util.Surv.from_arrays(event=event, time=time)


def time_dependent_auroc(
    train_time: Array,
    train_event: Array,
    test_time: Array,
    test_event: Array,
    test_risk: Array,
    horizon: float = 1.0,
) -> float:
  """Cumulative/dynamic AUROC at a horizon with IPCW (Uno et al. 2007).

  Cases died by `horizon`, controls are alive after it; cases are weighted
  by the inverse probability of remaining uncensored, the censoring
  distribution being the Kaplan-Meier estimate on the training split
  (scikit-survival `cumulative_dynamic_auc`; Hung & Chiang 2010).

  Args:
    train_time: [m] float, training follow-up in years (censoring model).
    train_event: [m] bool, training events.
    test_time: [n] float, evaluation follow-up in years.
    test_event: [n] bool, evaluation events.
    test_risk: [n] float, higher = higher risk of death by `horizon`.
    horizon: time t of AUC(t), years.

  Returns:
    AUROC(horizon); NaN without a case or without a control.

  Raises:
    ValueError: from scikit-survival, e.g. a horizon outside the test
      follow-up or test times beyond the training censoring model.
  """
  # pylint: disable-next=g-import-not-at-top
  from sksurv import metrics as sksurv_metrics
  test_time = np.asarray(test_time, np.float64)
  test_event = np.asarray(test_event).astype(bool)
  cases = (test_time <= horizon) & test_event
  if not cases.any() or not (test_time > horizon).any():
    return float('nan')
  auc, _ = sksurv_metrics.cumulative_dynamic_auc(
      _surv(np.asarray(train_time, np.float64),
            np.asarray(train_event).astype(bool)),
      _surv(test_time, test_event),
      np.asarray(test_risk, np.float64), [horizon])
  return float(auc[0])


def bootstrap_time_dependent_auroc(
    train_time: Array,
    train_event: Array,
    test_time: Array,
    test_event: Array,
    test_risk: Array,
    horizon: float = 1.0,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    reference: Array | None = None,
) -> dict[str, float]:
  """`time_dependent_auroc` with a bootstrap interval over the test split.

  The test records are resampled; the censoring model stays the one of the
  (fixed) training split, so each case keeps its IPCW weight 1 / G(T_i)
  and the AUC of a resample is the Mann-Whitney statistic of the cases
  (weight multiplicity * IPCW) against the controls (weight multiplicity),
  scikit-survival's trapezoid with its tied-score tolerance
  (`_TIED_TOL`). All resamples are evaluated at once from one sort, as in
  `bootstrap_auroc`; resamples without a case or a control are unusable.
  Where scikit-survival refuses the whole test split's weights (an event
  beyond the training censoring model), it falls back to a loop calling
  `time_dependent_auroc` per resample, where resamples it refuses count as
  unusable.

  Args:
    train_time, train_event, test_time, test_event, test_risk, horizon: as
      `time_dependent_auroc`.
    num_resamples: bootstrap resamples R.
    seed: seed of the resample indices (`bootstrap_indices`).
    alpha: 1 - coverage of the interval.
    reference: optional [n] risks of a second model (see `bootstrap_auroc`).

  Returns:
    Same keys as `bootstrap_auroc`.
  """
  test_time = np.asarray(test_time, np.float64)
  test_event = np.asarray(test_event).astype(bool)
  n = len(test_time)
  try:
    case_weight = _ipcw_case_weights(train_time, train_event, test_time,
                                     test_event, horizon)
  except ValueError:  # Some resamples may still be usable: loop.
    case_weight = None
  is_control = test_time > horizon

  def make(risk):
    value = time_dependent_auroc(train_time, train_event, test_time,
                                 test_event, risk, horizon)
    if case_weight is None:

      def one(i):
        try:
          return time_dependent_auroc(train_time, train_event, test_time[i],
                                      test_event[i], risk[i], horizon)
        except ValueError:  # e.g. no resampled time beyond the horizon.
          return np.nan

      return value, lambda idx: np.array([one(i) for i in idx], np.float64)
    order, starts = _tolerant_score_groups(risk, _TIED_TOL)

    def per_chunk(idx):
      counts = _counts(idx, n)
      return _weighted_auroc_float(counts * case_weight, counts * is_control,
                                   order, starts)

    return value, per_chunk

  return _bootstrap_of(make, np.asarray(test_risk, np.float64), reference, n,
                       num_resamples=num_resamples, seed=seed, alpha=alpha)


# scikit-survival's `cumulative_dynamic_auc` default: risk scores closer
# than this are tied.
_TIED_TOL = 1e-8


def _ipcw_case_weights(
    train_time: Array,
    train_event: Array,
    test_time: np.ndarray,
    test_event: np.ndarray,
    horizon: float,
) -> np.ndarray:
  """[n] IPCW 1 / G(T_i) of the deaths by `horizon`, zero for the others.

  G is scikit-survival's Kaplan-Meier estimate of the censoring
  distribution on the training split, the weights `cumulative_dynamic_auc`
  uses. Raises its ValueError when an event lies beyond that model.
  """
  # pylint: disable-next=g-import-not-at-top
  from sksurv import nonparametric as sksurv_nonparametric
  cens = sksurv_nonparametric.CensoringDistributionEstimator().fit(
      _surv(np.asarray(train_time, np.float64),
            np.asarray(train_event).astype(bool)))
  ipcw = cens.predict_ipcw(_surv(test_time, test_event))
  return np.where((test_time <= horizon) & test_event, ipcw, 0.0)


def _tolerant_score_groups(
    scores: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
  """As `_score_groups`, but neighbours (in sort order) within `tol` tie."""
  order = np.argsort(scores, kind='stable')
  sorted_scores = scores[order]
  starts = np.flatnonzero(
      np.r_[True, np.diff(sorted_scores) > tol])
  return order, starts


def _weighted_auroc_float(
    pos_weight: np.ndarray,
    neg_weight: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
) -> np.ndarray:
  """AUROC per row of float positive/negative weights [rows, n].

  sum over (positive i, negative j) of w_i v_j ([s_i > s_j] + 1/2 [tied])
  over (sum w)(sum v); NaN where either sum is zero.
  """
  pos = np.add.reduceat(pos_weight[:, order], starts, axis=1)
  neg = np.add.reduceat(neg_weight[:, order].astype(np.float64), starts,
                        axis=1)
  neg_below = np.cumsum(neg, axis=1) - neg
  num = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
  denom = pos.sum(axis=1) * neg.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)


# ---------------------------------------------------------- calibration ---


def calibration_at(
    time: Array,
    event: Array,
    predicted_risk_at_horizon: Array,
    horizon: float = 1.0,
    num_bins: int = 10,
) -> dict[str, Any]:
  """Calibration of predicted risks of death by `horizon`, by risk bins.

  Records are split into `num_bins` equal-count bins of predicted risk; in
  each, the observed risk is the Kaplan-Meier estimate 1 - S(horizon)
  (Kaplan & Meier 1958), which accounts for censoring before the horizon
  (the grouped calibration of Royston & Altman 2013, Fig. 1). The line
  observed = intercept + slope * predicted is fitted to the bins by least
  squares weighted by bin size (ideal: slope 1, intercept 0).

  Args:
    time: [n] float, follow-up in years.
    event: [n] bool, 1 = death observed.
    predicted_risk_at_horizon: [n] float in [0, 1], predicted probability of
      death by `horizon`.
    horizon: years.
    num_bins: number of bins (at most n).

  Returns:
    {'bins': [(mean predicted, observed KM risk, n), ...] in increasing
    predicted risk, 'slope', 'intercept' (NaN with fewer than two distinct
    bin predictions), 'predicted_overall' (mean prediction),
    'observed_overall' (KM risk of all records)}.

  Raises:
    ValueError: if `num_bins` is not in [1, n].
  """
  time = np.asarray(time, np.float64)
  event = np.asarray(event).astype(bool)
  pred = np.asarray(predicted_risk_at_horizon, np.float64)
  n = len(time)
  if not 1 <= num_bins <= n:
    raise ValueError(f'num_bins={num_bins} must be in [1, {n}].')

  def km_risk(rows):
    kmf = lifelines.KaplanMeierFitter().fit(time[rows], event[rows])
    return float(1.0 - kmf.survival_function_at_times(horizon).iloc[0])

  bins = []
  for rows in np.array_split(np.argsort(pred, kind='stable'), num_bins):
    bins.append((float(pred[rows].mean()), km_risk(rows), int(len(rows))))
  x, y, w = (np.array(v, np.float64) for v in zip(*bins))
  if np.ptp(x) > 0:
    slope, intercept = np.polyfit(x, y, 1, w=np.sqrt(w))
  else:
    slope = intercept = np.nan
  return dict(bins=bins, slope=float(slope), intercept=float(intercept),
              predicted_overall=float(pred.mean()),
              observed_overall=km_risk(np.arange(n)))


def binary_calibration(labels: Array, probabilities: Array, *,
                       num_bins: int = 10) -> dict[str, Any]:
  """Calibration of predicted probabilities of a binary outcome.

  Brier score; expected calibration error over `num_bins` equal-count bins
  (sum over bins of n_b / n * |mean predicted - observed rate|); and the
  calibration intercept and slope of a logistic recalibration of the
  outcome on logit(p) (Cox 1958; perfect calibration: 0 and 1).

  Args:
    labels: [n] bool outcomes.
    probabilities: [n] predicted probabilities in [0, 1].
    num_bins: equal-count bins of the ECE and the bin table.

  Returns:
    dict: 'brier', 'ece', 'intercept', 'slope' (NaN when only one class),
    'bins' [(mean predicted, observed rate, n)].
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  y = np.asarray(labels, bool).reshape(-1)
  p = np.clip(np.asarray(probabilities, np.float64).reshape(-1), 0.0, 1.0)
  order = np.argsort(p, kind='stable')
  bins = []
  ece = 0.0
  for part in np.array_split(order, min(num_bins, max(len(p), 1))):
    if len(part):
      pred, obs = float(p[part].mean()), float(y[part].mean())
      bins.append((pred, obs, int(len(part))))
      ece += len(part) / len(p) * abs(pred - obs)
  out = dict(brier=float(sk_metrics.brier_score_loss(y, p)), ece=float(ece),
             intercept=float('nan'), slope=float('nan'), bins=bins)
  if y.any() and not y.all():
    eps = 1e-12
    logit = np.log((p + eps) / (1 - p + eps))[:, None]
    fit = linear_model.LogisticRegression(C=1e12, max_iter=1000).fit(logit, y)
    out.update(intercept=float(fit.intercept_[0]), slope=float(fit.coef_[0, 0]))
  return out


def cox_calibration_slope(time: Array, risk: Array, event: Array) -> float:
  """Calibration slope of a Cox linear predictor on new data.

  The coefficient of the predicted log relative hazard in a Cox model
  refitted on it alone (lifelines); 1 means well calibrated, < 1 predictions
  too extreme (overfitting), > 1 too timid (van Houwelingen 2000). NaN
  without events or when the fit fails.

  Args:
    time: [n] follow-up.
    risk: [n] predicted log relative hazard.
    event: [n] bool.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  time = np.asarray(time, np.float64).reshape(-1)
  risk = np.asarray(risk, np.float64).reshape(-1)
  event = np.asarray(event, bool).reshape(-1)
  if not event.any() or np.std(risk) == 0:
    return float('nan')
  frame = pd.DataFrame(dict(risk=risk - risk.mean(), time=time, event=event))
  try:
    fit = lifelines.CoxPHFitter().fit(frame, 'time', 'event')
  except Exception:  # pylint: disable=broad-except
    return float('nan')
  return float(fit.params_['risk'])
