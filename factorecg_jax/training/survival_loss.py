"""Cox partial likelihood for a survival head trained on whole global batches.

The head predicts a log relative hazard (`risk`, the linear predictor eta of
a proportional-hazards model) per record. The partial likelihood of Cox
(1972) is computed over the whole batch, with Breslow's (1974) handling of
tied event times: every record whose time equals an event time is in that
event's risk set. Sorting once by time and a cumulative logsumexp make it
O(n log n) and stable; padded rows (`mask` 0) are in no risk set and add no
event. Under `jax.jit` on a mesh the batch is the global one, so the risk
sets span all devices (no per-device approximation).

References:
  D. R. Cox. Regression models and life-tables. J. R. Stat. Soc. B 34(2),
  187-220 (1972).
  N. E. Breslow. Covariance analysis of censored survival data. Biometrics
  30(1), 89-99 (1974).
"""

import jax
import jax.numpy as jnp

# Stands in for log(0) of a padded row's weight: exp(_LOG_ZERO - lse) is 0,
# and unlike -inf it keeps logaddexp and its gradient finite when a prefix
# of the sorted batch is all padding.
_LOG_ZERO = -1e30


def _as_float(x: jax.Array) -> jax.Array:
  """Casts to float32, or keeps float64 when x64 is on and x is float64."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cox_partial_log_likelihood(
    risk: jax.Array,
    time: jax.Array,
    event: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Breslow log partial likelihood of a Cox model (Cox 1972; Breslow 1974).

  `sum_i m_i d_i [risk_i - log sum_{j: t_j >= t_i} m_j exp(risk_j)]`, with
  d_i the event indicator and m_i the mask. Tied times share one risk set:
  for an event at t, every record with time t is at risk (Breslow). With a
  0/1 mask this is the partial likelihood of the real rows alone; other
  non-negative mask values act as case weights (an integer weight k equals
  k copies of the row).

  The batch is sorted by time, descending; a cumulative logsumexp then gives
  at each position the log of the risk-set sum over all earlier (later-time)
  rows, read at the last row of each tie group so that tied rows are all
  included.

  Args:
    risk: [n] float, predicted log relative hazard (linear predictor).
    time: [n] float, follow-up time in years (event or censoring).
    event: [n] bool or float, 1 = event (death) observed, 0 = censored.
    mask: [n] float or None; 1 = real row, 0 = padding (no contribution).
      None means all rows are real.

  Returns:
    Scalar float32 (float64 under x64 with float64 risk): the log partial
    likelihood in nats; 0 when there are no (unmasked) events.
  """
  risk = _as_float(risk)
  dtype = risk.dtype
  time = jnp.asarray(time).astype(dtype)
  event = jnp.asarray(event).astype(dtype)
  weight = (jnp.ones_like(risk) if mask is None
            else jnp.asarray(mask).astype(dtype))
  real = weight > 0
  # Padded rows get time -inf: sorted after every real row, they enter no
  # real row's risk set, and NaN padding cannot disturb the sort.
  time = jnp.where(real, time, -jnp.inf)
  log_weight = jnp.where(real, jnp.log(jnp.where(real, weight, 1.0)),
                         _LOG_ZERO)
  # Masked rows: the `where` also stops gradients and NaNs in padded risks.
  log_term = jnp.where(real, risk, 0.0) + log_weight

  order = jnp.argsort(-time, stable=True)
  neg_time = -time[order]
  cum = jax.lax.cumlogsumexp(log_term[order])
  # Last position of each row's tie group (ascending in -time).
  group_end = jnp.searchsorted(neg_time, neg_time, side='right') - 1
  log_risk_set = cum[group_end]

  contribution = (weight * event)[order] * (
      jnp.where(real, risk, 0.0)[order] - log_risk_set)
  return jnp.sum(jnp.where(real[order], contribution, 0.0))


def cox_loss(
    risk: jax.Array,
    time: jax.Array,
    event: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Negative Breslow partial log-likelihood per (unmasked) event.

  `-cox_partial_log_likelihood(...) / sum_i m_i d_i` (Cox 1972; Breslow
  1974), so its scale does not grow with the batch or the event rate; 0
  (with zero gradients) for a batch without events.

  Args:
    risk: [n] float, predicted log relative hazard.
    time: [n] float, follow-up time in years.
    event: [n] bool or float, 1 = event observed, 0 = censored.
    mask: [n] float or None; 1 = real row, 0 = padding.

  Returns:
    Scalar float loss in nats per event.
  """
  risk = _as_float(risk)
  event = jnp.asarray(event).astype(risk.dtype)
  weight = (jnp.ones_like(risk) if mask is None
            else jnp.asarray(mask).astype(risk.dtype))
  num_events = jnp.sum(jnp.where(weight > 0, weight, 0.0) * event)
  pll = cox_partial_log_likelihood(risk, time, event, mask)
  return jnp.where(num_events > 0,
                   -pll / jnp.where(num_events > 0, num_events, 1.0), 0.0)
