"""Decisions over near-equal floats that do not hang on rounding.

The same computation can round differently on another machine, BLAS build or
thread count (a matrix product sums in another order), so an `argmax` or
`argsort` over values that are equal in exact arithmetic picks a winner by
the last bits of a float. Every such decision in the project (which column
names a factor, the order of active factors, rankings of methods) goes
through these helpers instead: values within a tolerance of each other are
ties, and ties go to the lower index, i.e. to the order the caller put the
candidates in. Callers document that order (e.g. ground-truth factor columns
before measurement columns, then column order).

The tolerance is `atol + rtol * |best|`. Values that differ by more than
that are ordered as usual; values within it are ordered by index. NaN ranks
below every number.
"""

from __future__ import annotations

import numpy as np

# Far above float64 rounding (~1e-16 relative; sums of thousands of terms
# drift to ~1e-12), far below any difference worth reporting.
ATOL = 1e-6
RTOL = 1e-6


def _clean(values) -> np.ndarray:
  values = np.asarray(values, np.float64).reshape(-1)
  return np.where(np.isnan(values), -np.inf, values)


def ties_with_best(values, *, atol: float = ATOL,
                   rtol: float = RTOL) -> np.ndarray:
  """Indices whose value is within tolerance of the largest, ascending.

  Args:
    values: [n] numbers (NaN counts as -inf).
    atol: absolute tolerance.
    rtol: tolerance relative to |largest value|.

  Returns:
    [k] int64 indices, k >= 1 (empty only for n == 0).
  """
  v = _clean(values)
  if not v.size:
    return np.zeros(0, np.int64)
  best = v.max()
  if not np.isfinite(best):
    return np.flatnonzero(v == best).astype(np.int64)
  return np.flatnonzero(v >= best - (atol + rtol * abs(best))).astype(
      np.int64)


def argmax(values, *, atol: float = ATOL, rtol: float = RTOL) -> int:
  """Index of the largest value; near-ties go to the lowest index.

  Args:
    values: [n] numbers, n >= 1 (NaN counts as -inf).
    atol: absolute tolerance.
    rtol: tolerance relative to |largest value|.

  Returns:
    The first index among those within tolerance of the largest value.

  Raises:
    ValueError: for an empty input.
  """
  ties = ties_with_best(values, atol=atol, rtol=rtol)
  if not ties.size:
    raise ValueError('argmax of an empty sequence.')
  return int(ties[0])


def argsort_descending(values, *, atol: float = ATOL,
                       rtol: float = RTOL) -> np.ndarray:
  """Indices from largest to smallest value; near-ties keep index order.

  Built by repeatedly taking `argmax` of what is left, so a group of values
  within tolerance of the current best comes out in index order whatever
  their last bits are. O(n^2): meant for latent dimensions, columns and
  methods (tens to hundreds), not for data.

  Args:
    values: [n] numbers (NaN counts as -inf and comes last).
    atol: absolute tolerance.
    rtol: tolerance relative to |current best value|.

  Returns:
    [n] int64 permutation.
  """
  v = _clean(values)
  left = np.arange(v.size)
  order = []
  while left.size:
    pick = argmax(v[left], atol=atol, rtol=rtol)
    order.append(left[pick])
    left = np.delete(left, pick)
  return np.asarray(order, np.int64)
