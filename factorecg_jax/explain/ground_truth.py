"""Ground-truth relevance regions of simulator regression targets.

For a model that regresses a measurement of the simulated median beat (heart
rate, PR, QRS, QT, QTc, V5 amplitudes, QRS axis), the region of the beat that
carries the measurement is known from the record's ground-truth factors. Two
definitions are offered (shared ECG_DOMAIN.md section 5):

* `mode='interval'` (default): the clinical interval of the table in section
  5, as a time mask shared by all leads, with wave boundaries from
  `simulator.measure` (fractional samples of the 600-sample window):

  | target        | region                                     |
  |---------------|--------------------------------------------|
  | pr_ms         | P onset <= t < QRS onset                   |
  | qrs_ms        | QRS onset <= t <= J + 20 ms                |
  | r_amp_v5_mv   | QRS onset <= t <= J                        |
  | qrs_axis_deg  | QRS onset <= t <= J                        |
  | qt_ms, qtc_ms | J <= t <= T end                            |
  | t_amp_v5_mv   | J <= t <= T end                            |
  | st_j_v5_mv    | J <= t <= J + 80 ms                        |
  | hr_bpm        | JVP mask of factor 'hr', any lead          |

  Heart rate has no interval of its own: the median beat shows it only through
  the neighbour beats' P/T waves and the rate-dependent QT, which is exactly
  what the JVP mask of factor 'hr' marks, so both modes use it.
  Boundaries are compared with a tolerance of 1e-3 samples so that a boundary
  that falls on a sample in exact arithmetic does not flip with rounding.

* `mode='jvp'`: the exact definition of section 5 for targets that map to one
  factor (`JVP_FACTORS`): |d beat / d factor| of the clean beat (with
  neighbour beats) above `threshold` x its maximum
  (`simulator.relevance_mask`), collapsed over leads with `any`. Targets
  without a single generating factor (qt_ms, which depends on hr and qtc;
  r_amp_v5_mv and qrs_axis_deg, which depend on amplitude and the rotations)
  fall back to their interval mask.

Masks are lead-collapsed ([B, K, T]): all 12 leads are linear images of one
dipole, so attribution across leads is not unique and heatmaps are scored on
the lead-collapsed time profile (ECG_DOMAIN.md section 5; Arras et al. 2022).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from factorecg_jax.data import simulator

TARGET_NAMES = ('hr_bpm', 'pr_ms', 'qrs_ms', 'qt_ms', 'qtc_ms',
                'r_amp_v5_mv', 't_amp_v5_mv', 'st_j_v5_mv', 'qrs_axis_deg')

# Targets whose value is one simulator factor (or a monotone image of it).
JVP_FACTORS = {
    'hr_bpm': 'hr',
    'pr_ms': 'pr',
    'qrs_ms': 'qrs_dur',
    'qtc_ms': 'qtc',
    't_amp_v5_mv': 't_amp',
    'st_j_v5_mv': 'st_dev',
}

MODES = ('interval', 'jvp')

# Tolerance (samples) on interval boundaries; far below one sample.
_BOUNDARY_TOL = 1e-3
_MS_PER_SAMPLE = simulator.DT_MS


def interval_bounds(factors: jax.Array) -> dict[str, jax.Array]:
  """Start and end sample of each target's interval for one record.

  Args:
    factors: [14] ground-truth factors.

  Returns:
    dict target name -> [2] float32 (start, end) in fractional samples of
    the 600-sample window, both inclusive (pr_ms: end exclusive). 'hr_bpm'
    has no interval and is absent.
  """
  m = simulator.measure(factors)
  onset = m['qrs_onset_sample']
  j = m['qrs_offset_sample']
  t_end = m['t_end_sample']
  b = lambda lo, hi: jnp.stack([lo, hi]).astype(jnp.float32)
  return {
      'pr_ms': b(m['p_onset_sample'], onset),
      'qrs_ms': b(onset, j + 20.0 / _MS_PER_SAMPLE),
      'r_amp_v5_mv': b(onset, j),
      'qrs_axis_deg': b(onset, j),
      'qt_ms': b(j, t_end),
      'qtc_ms': b(j, t_end),
      't_amp_v5_mv': b(j, t_end),
      'st_j_v5_mv': b(j, j + 80.0 / _MS_PER_SAMPLE),
  }


def _record_masks(factors: jax.Array, target_names: tuple[str, ...],
                  mode: str, threshold: float) -> jax.Array:
  """[K, T] bool masks of one record."""
  s = jnp.arange(simulator.BEAT_LEN, dtype=jnp.float32)
  bounds = interval_bounds(factors)
  jvp_cache = {}

  def jvp_mask(factor):
    if factor not in jvp_cache:
      jvp_cache[factor] = jnp.any(
          simulator.relevance_mask(factors, factor, threshold=threshold,
                                   neighbours=True), axis=-1)
    return jvp_cache[factor]

  out = []
  for name in target_names:
    if name == 'hr_bpm' or (mode == 'jvp' and name in JVP_FACTORS):
      out.append(jvp_mask(JVP_FACTORS[name]))
      continue
    lo, hi = bounds[name][0], bounds[name][1]
    inside = s >= lo - _BOUNDARY_TOL
    if name == 'pr_ms':  # QRS onset itself belongs to the QRS.
      inside &= s < hi - _BOUNDARY_TOL
    else:
      inside &= s <= hi + _BOUNDARY_TOL
    out.append(inside)
  return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=('target_names', 'mode',
                                             'threshold'))
def _target_masks(factors, target_names, mode, threshold):
  return jax.vmap(lambda f: _record_masks(f, target_names, mode, threshold))(
      factors)


def target_masks(factors: jax.Array, target_names: Sequence[str],
                 mode: str = 'interval', threshold: float = 0.05
                 ) -> jax.Array:
  """Lead-collapsed ground-truth masks of regression targets.

  Args:
    factors: [B, 14] (or [14]) ground-truth factors of the records.
    target_names: K names from TARGET_NAMES.
    mode: 'interval' (clinical intervals) or 'jvp' (exact JVP definition
      where the target maps to one factor, else the interval); see the module
      docstring.
    threshold: JVP mask threshold, a fraction of the maximum relevance.

  Returns:
    [B, K, 600] bool; True where the target's information lies.

  Raises:
    ValueError: for an unknown target name or mode.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  target_names = tuple(target_names)
  unknown = [n for n in target_names if n not in TARGET_NAMES]
  if unknown:
    raise ValueError(f'unknown target names {unknown}; known: {TARGET_NAMES}')
  factors = jnp.asarray(factors, jnp.float32)
  if factors.ndim == 1:
    factors = factors[None]
  return _target_masks(factors, target_names, mode, float(threshold))
