"""Parametric 12-lead ECG simulator with known ground-truth factors.

The embedded default data set of factorecg_jax (see shared ECG_DOMAIN.md). A
3-D cardiac dipole is a closed-form sum of Gaussian waves (P, septal Q, R, S,
a terminal R'/late-LV wave, a two-sided T wave) plus a logistic ST plateau,
projected onto I, II, V1-V6 with the Dower matrix; III, aVR, aVL and aVF are
derived with the Einthoven/Goldberger identities, so they hold exactly, also
after noise.

Everything here is a pure JAX function of `(factors, key)`: jit-, vmap- and
jvp-compatible, and the clean beat is differentiable in the factors (the
ground-truth relevance masks of ECG_DOMAIN.md section 5 are its JVPs).

Each record also carries outcomes (ECG_DOMAIN.md section 4): a synthetic
ejection fraction and a censored Weibull proportional-hazards survival time,
and two covariates that are not in the ECG (section 4a): age (years, N(62,
14^2) clipped to [18, 95]) and sex (Bernoulli(0.5), 1 = male), drawn from
their own key, independent of the 14 factors. By default (`survival_model=
'age_sex'`) they enter the hazard, eta += 0.55 (age - 62) / 10 + 0.30 male;
`survival_model='ecg_only'` gives the earlier hazard of the ECG factors and
EF alone, record for record as before. Each model has its own baseline
hazard, calibrated to 10 % 1-year mortality (`calibrate_lambda`). Factors,
noise, EF noise, survival and covariates use separate per-record streams
(`record_keys`), so adding the covariates changed no other stream.

Conventions: times in ms relative to QRS onset unless said otherwise; the
median beat has 600 samples at 500 Hz with QRS onset at sample 200; leads are
ordered I, II, III, aVR, aVL, aVF, V1..V6; amplitudes in mV.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FS = 500  # Hz
DT_MS = 1000.0 / FS
BEAT_LEN = 600
QRS_ONSET = 200  # sample index of QRS onset in the median beat
STRIP_LEN = 5000  # 10 s at 500 Hz
MAX_BEATS = 32  # beat slots of a strip (>= 29 needed at 120 bpm - 25 % RR)
# A strip is built from one beat template on [-150, 350) samples around each
# QRS onset: long enough for the earliest P (PR 240 ms) and latest T end.
_TEMPLATE_PRE = 150
_TEMPLATE_LEN = 500

LEADS = ('I', 'II', 'III', 'aVR', 'aVL', 'aVF',
         'V1', 'V2', 'V3', 'V4', 'V5', 'V6')
LEAD_INDEX = {name: i for i, name in enumerate(LEADS)}

FACTOR_NAMES = ('hr', 'pr', 'p_dur', 'qrs_dur', 'qtc', 'p_amp', 'qrs_amp',
                't_amp', 'st_dev', 'frontal_rot', 'qrs_t_angle', 'horiz_rot',
                'conduction', 'noise_level')
FACTOR_UNITS = ('bpm', 'ms', 'ms', 'ms', 'ms', 'mV', 'mV', 'mV', 'mV', 'deg',
                'deg', 'deg', '', '')
NUM_FACTORS = len(FACTOR_NAMES)
FACTOR_INDEX = {name: i for i, name in enumerate(FACTOR_NAMES)}
FACTOR_LOW = np.array([45., 120., 70., 70., 360., 0.05, 0.6, 0.1, -0.15,
                       -45., -60., -30., -1., 0.], np.float32)
FACTOR_HIGH = np.array([120., 240., 110., 150., 500., 0.25, 3.0, 0.7, 0.25,
                        75., 150., 30., 1., 1.], np.float32)
# Normal sub-ranges for the 'realistic' sampler (most records look normal).
NORMAL_LOW = np.array([60., 120., 70., 70., 370., 0.05, 0.8, 0.2, -0.03,
                       0., -30., -15., -0.3, 0.], np.float32)
NORMAL_HIGH = np.array([100., 200., 110., 110., 440., 0.25, 2.2, 0.6, 0.08,
                        60., 60., 15., 0.3, 0.6], np.float32)
DEFAULT_FACTORS = np.array([60., 160., 100., 100., 420., 0.15, 1.5, 0.4, 0.,
                            30., 0., 0., 0., 0.], np.float32)

# Dower et al. (1980) forward matrix, rows I, II, V1..V6; columns Frank X (left),
# Y (feet), Z (back).
DOWER = np.array([
    [0.632, -0.235, 0.059],
    [0.235, 1.066, -0.132],
    [-0.515, 0.157, -0.917],
    [0.044, 0.164, -1.387],
    [0.882, 0.098, -1.277],
    [1.213, 0.127, -0.601],
    [1.125, 0.127, -0.086],
    [0.831, 0.076, 0.230],
], np.float32)
# Inverse Dower (Edenbrandt & Pahlm 1988): X/Y/Z from V1..V6, I, II.
INVERSE_DOWER = np.array([
    [-0.172, -0.074, 0.122, 0.231, 0.239, 0.194, 0.156, -0.010],
    [0.057, -0.019, -0.106, -0.022, 0.041, 0.048, -0.227, 0.887],
    [-0.229, -0.310, -0.246, -0.063, 0.055, 0.108, 0.022, 0.102],
], np.float32)

# Wave directions (frontal angle phi, elevation e toward the back), degrees.
# Tuned so that the default beat meets the ECG_DOMAIN.md section 1 targets.
WAVE_DIRECTIONS = {
    'p': (35., -10.),
    'q': (120., -50.),
    'r': (0., 25.),
    's': (150., 40.),
    'r_prime': (130., -45.),
    'late_lv': (-50., 45.),
    't': (-15., -30.),
    'st': (60., -50.),
}
# Wave boundaries sit at mu -/+ 2.5 sigma (envelope 4.4 % of peak).
_EDGE = 2.5

LABEL_NAMES = ('sinus_bradycardia', 'sinus_tachycardia', 'av_block_1',
               'lbbb', 'rbbb', 'incomplete_rbbb', 'ivcd', 'long_qt',
               'short_qt', 'left_axis_deviation', 'right_axis_deviation',
               'lvh', 'low_qrs_voltage', 'st_elevation', 'st_depression',
               't_wave_inversion')
NUM_LABELS = len(LABEL_NAMES)
# Contiguous lead groups (simplified) for ST and T criteria.
_GROUPS = (('II', 'III', 'aVF'), ('I', 'aVL', 'V5', 'V6'),
           ('V1', 'V2', 'V3', 'V4'))
_GROUP_MATRIX = np.array(
    [[name in group for name in LEADS] for group in _GROUPS], np.float32)
_LIMB = np.array([i < 6 for i in range(12)])


def _unit(phi_deg, e_deg):
  phi, e = jnp.deg2rad(phi_deg), jnp.deg2rad(e_deg)
  return jnp.stack([jnp.cos(e) * jnp.cos(phi), jnp.cos(e) * jnp.sin(phi),
                    jnp.sin(e)])


def _rotation(rho_deg, h_deg):
  """Rz(rho) @ Ry(h): +X toward +Y by rho, then +X toward -Z (anterior) by h."""
  rho, h = jnp.deg2rad(rho_deg), jnp.deg2rad(h_deg)
  c, s = jnp.cos(rho), jnp.sin(rho)
  rz = jnp.array([[c, -s, 0.], [s, c, 0.], [0., 0., 1.]])
  c, s = jnp.cos(h), jnp.sin(h)
  ry = jnp.array([[c, 0., s], [0., 1., 0.], [-s, 0., c]])
  return rz @ ry


def derive_limb_leads(leads8: jax.Array) -> jax.Array:
  """Completes I, II, V1..V6 to the 12 standard leads.

  Args:
    leads8: [..., T, 8] leads I, II, V1..V6 in mV.

  Returns:
    [..., T, 12] leads I, II, III, aVR, aVL, aVF, V1..V6 (Einthoven and
    Goldberger identities hold exactly).
  """
  i, ii = leads8[..., 0], leads8[..., 1]
  limb = jnp.stack([i, ii, ii - i, -0.5 * (i + ii), i - 0.5 * ii,
                    ii - 0.5 * i], axis=-1)
  return jnp.concatenate([limb, leads8[..., 2:]], axis=-1)


# Leads I, II, V1..V6 -> the 12 standard leads (Einthoven, Goldberger):
# leads12 = leads8 @ DERIVE.
DERIVE = np.zeros((8, 12), np.float32)
DERIVE[0, [0, 2, 3, 4, 5]] = (1.0, -1.0, -0.5, 1.0, -0.5)
DERIVE[1, [1, 2, 3, 4, 5]] = (1.0, 1.0, -0.5, -0.5, 1.0)
DERIVE[np.arange(2, 8), np.arange(6, 12)] = 1.0


def unpack(factors: jax.Array) -> dict[str, jax.Array]:
  """Splits `[..., 14]` factors into a dict keyed by FACTOR_NAMES."""
  return {name: factors[..., i] for i, name in enumerate(FACTOR_NAMES)}


def derived_times(factors: jax.Array) -> dict[str, jax.Array]:
  """Closed-form timing of one record, ms relative to QRS onset.

  Args:
    factors: [..., 14] ground-truth factors.

  Returns:
    dict of [...] arrays: rr_ms, qt_ms, p_onset, p_offset, qrs_offset (= J),
    t_peak, t_end (ms), and qtc_bazett_ms, qtc_fridericia_ms.
  """
  f = unpack(factors)
  rr = 60000.0 / f['hr']
  qt = f['qtc'] * (rr / 1000.0) ** (1.0 / 3.0)  # Fridericia
  sigma_tr = 0.075 * qt
  return dict(
      rr_ms=rr, qt_ms=qt, p_onset=-f['pr'], p_offset=f['p_dur'] - f['pr'],
      qrs_offset=f['qrs_dur'], t_peak=qt - _EDGE * sigma_tr, t_end=qt,
      qtc_bazett_ms=qt / jnp.sqrt(rr / 1000.0),
      qtc_fridericia_ms=qt / (rr / 1000.0) ** (1.0 / 3.0))


def _wave_params(factors: jax.Array):
  """Centres, widths and 8-lead amplitude vectors of the Gaussian waves.

  Returns:
    (mu [W], sigma_left [W], sigma_right [W], gain [W, 8], st) with st a dict
    of the ST plateau's start/end (ms) and gain [8]; everything in ms and mV.
  """
  f = unpack(factors)
  d = derived_times(factors)
  qrsd, amp, tau = f['qrs_dur'], f['qrs_amp'], f['conduction']
  rv = _rotation(f['frontal_rot'], f['horiz_rot'])
  rt = _rotation(f['frontal_rot'] + f['qrs_t_angle'], f['horiz_rot'])
  u = {k: _unit(*v) for k, v in WAVE_DIRECTIONS.items()}
  right = tau < 0
  # One terminal wave: R' for right (tau < 0), late LV for left (tau > 0).
  term_sigma = jnp.where(right, 0.10, 0.12) * qrsd
  term_dir = jnp.where(right, u['r_prime'], u['late_lv'])
  sig = {
      'p': f['p_dur'] / 5.0,
      'q': 0.07 * qrsd,
      'r': 0.11 * qrsd,
      's': 0.08 * qrsd,
  }
  mu = jnp.stack([
      -f['pr'] + f['p_dur'] / 2.0,
      _EDGE * sig['q'],
      0.45 * qrsd,
      qrsd - _EDGE * sig['s'],
      qrsd - _EDGE * term_sigma,
      d['t_peak'],
  ])
  sigma_l = jnp.stack([sig['p'], sig['q'], sig['r'], sig['s'], term_sigma,
                       0.125 * d['qt_ms']])
  sigma_r = sigma_l.at[5].set(0.075 * d['qt_ms'])
  vectors = jnp.stack([
      f['p_amp'] * u['p'],
      0.15 * amp * (1.0 - jnp.maximum(tau, 0.0)) * (rv @ u['q']),
      amp * (rv @ u['r']),
      0.35 * amp * (rv @ u['s']),
      0.6 * amp * jnp.abs(tau) * (rv @ term_dir),
      f['t_amp'] * (rt @ u['t']),
  ])
  dower = jnp.asarray(DOWER)
  gain = vectors @ dower.T  # [W, 8]
  st = dict(start=qrsd - 10.0, end=d['t_peak'],
            gain=f['st_dev'] * (dower @ u['st']))
  return mu, sigma_l, sigma_r, gain, st


def _render(t_ms: jax.Array, factors: jax.Array,
            offsets_ms: jax.Array) -> jax.Array:
  """The 12 leads at times `t_ms` for beats whose QRS onsets are `offsets_ms`.

  Every wave is a time profile times a per-lead gain; the gains of III, aVR,
  aVL and aVF are derived from those of I and II (DERIVE), so the limb-lead
  identities hold to float rounding without deriving signals afterwards.

  Args:
    t_ms: [T] times in ms relative to the QRS onset of the centre beat.
    factors: [14] factors.
    offsets_ms: [J] QRS onsets of the rendered beats (0 = centre beat).

  Returns:
    [T, 12] float32 mV.
  """
  mu, sigma_l, sigma_r, gain, st = _wave_params(factors)
  rel = t_ms[None, :] - offsets_ms[:, None]  # [J, T]
  # Symmetric waves (all but T); a per-element select over every wave costs
  # 3x, so only the T wave takes its left/right width by select.
  x = rel[:, None, :] - mu[None, :-1, None]  # [J, W-1, T]
  sym = jnp.exp(-0.5 * jnp.square(x * (1.0 / sigma_l[None, :-1, None])))
  xt = rel - mu[-1]
  inv_t = jnp.where(xt < 0, 1.0 / sigma_l[-1], 1.0 / sigma_r[-1])
  t_wave = jnp.exp(-0.5 * jnp.square(xt * inv_t))  # [J, T]
  waves = jnp.concatenate([sym.sum(0), t_wave.sum(0)[None]], axis=0)
  plateau = (jax.nn.sigmoid((rel - st['start']) * (1.0 / 3.0))
             * jax.nn.sigmoid((st['end'] - rel) * (1.0 / 20.0))).sum(0)
  # Without the barrier XLA fuses the exponentials into every lead's
  # multiply-add and so computes them 12 times.
  waves, plateau = jax.lax.optimization_barrier((waves, plateau))
  derive = jnp.asarray(DERIVE)
  gain12, st12 = gain @ derive, st['gain'] @ derive
  out = plateau[:, None] * st12[None, :]
  for w in range(gain.shape[0]):
    out = out + waves[w][:, None] * gain12[w][None, :]
  return out


def beat_times_ms(length: int = BEAT_LEN, onset: int = QRS_ONSET) -> jax.Array:
  """[length] sample times in ms relative to the QRS onset sample."""
  return (jnp.arange(length, dtype=jnp.float32) - onset) * DT_MS


def clean_beat(factors: jax.Array, neighbours: bool = True) -> jax.Array:
  """The noise-free 600-sample median beat of one record.

  Args:
    factors: [14] ground-truth factors (FACTOR_NAMES order and units).
    neighbours: also render the previous and next beat (shifted by -RR and
      +RR), whose P/T waves enter the window at higher heart rates as in real
      median beats; this is the only way HR is visible besides QT.

  Returns:
    [600, 12] float32 mV, QRS onset at sample 200.
  """
  factors = jnp.asarray(factors, jnp.float32)
  rr = 60000.0 / factors[FACTOR_INDEX['hr']]
  offsets = (jnp.stack([-rr, 0.0 * rr, rr]) if neighbours
             else jnp.zeros((1,), jnp.float32))
  return _render(beat_times_ms(), factors, offsets)


@functools.lru_cache(maxsize=1)
def _emg_bank() -> np.ndarray:
  """[65536, 12] EMG bank: standard normals on I, II, V1..V6 (fixed seed),
  completed to 12 leads with DERIVE.

  A numpy constant: generated inside the computation, XLA fuses the RNG into
  the window gather and recomputes it for every sample.
  """
  rng = np.random.default_rng(20221114)
  white8 = rng.standard_normal((1 << 16, 8), dtype=np.float32)
  return white8 @ DERIVE


def beat_noise(factors: jax.Array, key: jax.Array, length: int = BEAT_LEN,
               exact: bool = False) -> jax.Array:
  """Nuisance noise for one record, scaled by its noise_level factor.

  Baseline wander (0.05-0.5 Hz, <= 0.10 mV per lead), powerline (50 or 60 Hz,
  <= 0.02 mV) and EMG (white, RMS ~ U(0, 0.03) mV) live on the 8 independent
  leads; the other four are derived (DERIVE), so the limb-lead identities
  hold after noise too.

  By default the EMG samples are a random window (offset and sign from `key`)
  of one fixed bank of 65536 x 8 standard normals shared by all records:
  many times cheaper than fresh normals on CPU while every sample is exactly
  N(0, 1); two records share a window with probability ~2e-5. `exact=True`
  draws fresh normals instead.

  Args:
    factors: [14] factors (only noise_level is used).
    key: PRNG key of this record's noise stream.
    length: number of samples at 500 Hz (<= 16384 unless `exact`).
    exact: draw independent EMG normals rather than a bank window.

  Returns:
    [length, 12] float32 mV.
  """
  level = factors[FACTOR_INDEX['noise_level']]
  keys = jax.random.split(key, 8)
  t = jnp.arange(length, dtype=jnp.float32) / FS
  f_bw = jax.random.uniform(keys[0], (), minval=0.05, maxval=0.5)
  f_pl = jnp.where(jax.random.bernoulli(keys[1]), 50.0, 60.0)
  phase = jax.random.uniform(keys[2], (2,), maxval=2 * jnp.pi)
  # Per-lead amplitude and phase as a sin/cos mixture of one carrier each.
  ab = jax.random.uniform(keys[3], (4, 8), minval=-1.0, maxval=1.0)
  ab = ab * jnp.array([0.10, 0.10, 0.02, 0.02])[:, None] / jnp.sqrt(2.0)
  ab12 = level * (ab @ jnp.asarray(DERIVE))
  w_bw = 2 * jnp.pi * f_bw * t + phase[0]
  w_pl = 2 * jnp.pi * f_pl * t + phase[1]
  # The barrier keeps XLA from recomputing the carriers for every lead.
  carriers = jax.lax.optimization_barrier(
      (jnp.sin(w_bw), jnp.cos(w_bw), jnp.sin(w_pl), jnp.cos(w_pl)))
  rms = level * jax.random.uniform(keys[4], (), maxval=0.03)
  if exact:
    white = (jax.random.normal(keys[5], (length, 8))
             @ jnp.asarray(DERIVE))
  else:
    bank = _emg_bank()
    if length > bank.shape[0] // 4:
      raise ValueError(f'length {length} is too long for the EMG bank; use '
                       'exact=True')
    start = jax.random.randint(keys[5], (), 0, bank.shape[0] - length)
    sign = jnp.where(jax.random.bernoulli(keys[6]), 1.0, -1.0)
    white = sign * jax.lax.dynamic_slice(jnp.asarray(bank), (start, 0),
                                         (length, 12))
  out = rms * white
  for c, carrier in enumerate(carriers):
    out = out + carrier[:, None] * ab12[c][None, :]
  return out


def _strip_onsets(factors: jax.Array, key: jax.Array, rr_std: float):
  """Integer QRS-onset samples of the MAX_BEATS beat slots of a strip."""
  rr = 30000.0 / factors[FACTOR_INDEX['hr']]  # samples
  k_phase, k_rr = jax.random.split(key)
  jitter = jnp.clip(1.0 + rr_std * jax.random.normal(k_rr, (MAX_BEATS,)),
                    0.75, 1.25)
  first = (jax.random.uniform(k_phase, ()) - 1.0) * rr  # in [-RR, 0)
  onsets = first + jnp.cumsum(rr * jitter) - rr * jitter[0]
  return jnp.round(onsets).astype(jnp.int32)


def _strip_from_template(template: jax.Array, onsets: jax.Array,
                         length: int) -> jax.Array:
  """Sums the beat template placed at each onset (at most 3 overlap)."""
  n = jnp.arange(length, dtype=jnp.int32)
  k = jnp.searchsorted(onsets, n, side='right', method='compare_all') - 1
  out = jnp.zeros((length, template.shape[-1]), template.dtype)
  for shift in (-1, 0, 1):
    j = k + shift
    ok = (j >= 0) & (j < onsets.shape[0])
    idx = n - onsets[jnp.clip(j, 0, onsets.shape[0] - 1)] + _TEMPLATE_PRE
    ok = ok & (idx >= 0) & (idx < _TEMPLATE_LEN)
    rows = template.at[jnp.clip(idx, 0, _TEMPLATE_LEN - 1)].get(
        mode='promise_in_bounds')
    out = out + jnp.where(ok[:, None], rows, 0.0)
  return out


def simulate_strip(factors: jax.Array, key: jax.Array, rr_std: float = 0.05,
                   noise: bool = True, exact_noise: bool = False
                   ) -> dict[str, jax.Array]:
  """A 10-second 12-lead strip: the record's beat tiled at its RR interval.

  Beat-to-beat RR intervals are RR * (1 + rr_std * N(0, 1)), clipped to
  +-25 %; onsets are rounded to whole samples so fiducials are exact.

  Args:
    factors: [14] factors.
    key: PRNG key (split into onset and noise streams).
    rr_std: relative beat-to-beat RR variability.
    noise: add `beat_noise` of the record's noise_level.
    exact_noise: see `beat_noise`.

  Returns:
    dict: ecg [5000, 12] (noisy if `noise`), clean [5000, 12], qrs_onsets
    [MAX_BEATS] int32 (beats whose QRS onset lies in the strip, first, then -1),
    r_peaks [MAX_BEATS] float32 (R-wave centre sample, -1 padded), num_beats.
  """
  factors = jnp.asarray(factors, jnp.float32)
  k_onset, k_noise = jax.random.split(key)
  onsets = _strip_onsets(factors, k_onset, rr_std)
  t = beat_times_ms(_TEMPLATE_LEN, _TEMPLATE_PRE)
  template = _render(t, factors, jnp.zeros((1,), jnp.float32))
  clean = _strip_from_template(template, onsets, STRIP_LEN)
  ecg = clean
  if noise:
    ecg = clean + beat_noise(factors, k_noise, STRIP_LEN, exact_noise)
  valid = (onsets >= 0) & (onsets < STRIP_LEN)
  order = jnp.argsort(jnp.where(valid, onsets, jnp.iinfo(jnp.int32).max))
  onsets, valid = onsets[order], valid[order]
  r_offset = 0.45 * factors[FACTOR_INDEX['qrs_dur']] / DT_MS
  return dict(
      ecg=ecg, clean=clean,
      qrs_onsets=jnp.where(valid, onsets, -1),
      r_peaks=jnp.where(valid, onsets + r_offset, -1.0),
      num_beats=valid.sum().astype(jnp.int32))


def relevance_map(factors: jax.Array, factor: int | str,
                  neighbours: bool = True) -> jax.Array:
  """Ground-truth relevance |d beat / d factor| by forward-mode autodiff.

  ECG_DOMAIN.md section 5: S_f(lead, t) = |dx(lead, t)/df| of the clean beat.

  Args:
    factors: [14] factors.
    factor: index or name of the factor.
    neighbours: as in `clean_beat`.

  Returns:
    [600, 12] float32, in mV per factor unit.
  """
  idx = FACTOR_INDEX[factor] if isinstance(factor, str) else factor
  factors = jnp.asarray(factors, jnp.float32)
  tangent = jnp.zeros_like(factors).at[idx].set(1.0)
  _, dx = jax.jvp(lambda f: clean_beat(f, neighbours), (factors,), (tangent,))
  return jnp.abs(dx)


def relevance_mask(factors: jax.Array, factor: int | str,
                   threshold: float = 0.05,
                   neighbours: bool = True) -> jax.Array:
  """Boolean [600, 12] mask: relevance above `threshold` x its maximum."""
  s = relevance_map(factors, factor, neighbours)
  return s > threshold * jnp.max(s)


# --------------------------------------------------------------------------
# Factor sampling.


def sample_factors(key: jax.Array, n: int, mode: str = 'uniform',
                   normal_prob: float = 0.85) -> jax.Array:
  """Draws `n` factor vectors, each factor independently.

  Args:
    key: PRNG key of the factor stream.
    n: number of records.
    mode: 'uniform' draws every factor uniformly from its full range (for
      disentanglement metrics); 'realistic' draws each factor from its normal
      sub-range with probability `normal_prob`, else from the full range.
    normal_prob: see `mode`.

  Returns:
    [n, 14] float32.
  """
  lo, hi = jnp.asarray(FACTOR_LOW), jnp.asarray(FACTOR_HIGH)
  k_u, k_mix, k_n = jax.random.split(key, 3)
  u = jax.random.uniform(k_u, (n, NUM_FACTORS))
  full = lo + u * (hi - lo)
  if mode == 'uniform':
    return full
  if mode != 'realistic':
    raise ValueError(f"mode must be 'uniform' or 'realistic', got {mode!r}")
  nlo, nhi = jnp.asarray(NORMAL_LOW), jnp.asarray(NORMAL_HIGH)
  normal = nlo + jax.random.uniform(k_n, (n, NUM_FACTORS)) * (nhi - nlo)
  pick = jax.random.bernoulli(k_mix, normal_prob, (n, NUM_FACTORS))
  return jnp.where(pick, normal, full)


def default_factors() -> jax.Array:
  """[14] factors of the default normal beat (60 bpm, axis ~ +64 deg)."""
  return jnp.asarray(DEFAULT_FACTORS)


# --------------------------------------------------------------------------
# Measurements and clinical labels (on the clean, isolated beat).


def _hexaxial_axis(area_i, area_avf):
  return jnp.rad2deg(jnp.arctan2(2.0 * area_avf / jnp.sqrt(3.0), area_i))


def measure(factors: jax.Array) -> dict[str, jax.Array]:
  """ECG measurements of one record from its clean, isolated beat.

  Neighbour beats are left out so their P/T waves do not enter the windows.

  Args:
    factors: [14] factors.

  Returns:
    dict of scalars (ms, deg, mV) and per-lead [12] arrays: r_amp, s_amp
    (>= 0), qrs_pp (peak-to-peak), st_j (level at J), t_amp (signed extremum
    in (J, T end]); wave boundaries as fractional samples of the 600-sample
    window (p_onset_sample, ..., t_end_sample).
  """
  factors = jnp.asarray(factors, jnp.float32)
  f = unpack(factors)
  d = derived_times(factors)
  t = beat_times_ms()
  beat = clean_beat(factors, neighbours=False)
  in_qrs = (t >= 0) & (t <= f['qrs_dur'])
  in_p = (t >= d['p_onset']) & (t <= d['p_offset'])
  in_t = (t > f['qrs_dur']) & (t <= d['t_end'])
  big = 1e3
  qrs_max = jnp.max(jnp.where(in_qrs[:, None], beat, -big), axis=0)
  qrs_min = jnp.min(jnp.where(in_qrs[:, None], beat, big), axis=0)
  r_amp, s_amp = jnp.maximum(qrs_max, 0.0), jnp.maximum(-qrs_min, 0.0)
  t_abs = jnp.where(in_t[:, None], jnp.abs(beat), -1.0)
  t_amp = jnp.take_along_axis(beat, jnp.argmax(t_abs, axis=0)[None], 0)[0]
  st_j = _render(f['qrs_dur'][None], factors,
                 jnp.zeros((1,), jnp.float32))[0]
  area = lambda m: jnp.sum(jnp.where(m[:, None], beat, 0.0), axis=0) * DT_MS
  qrs_area, p_area, t_area = area(in_qrs), area(in_p), area(in_t)
  i, avf, = LEAD_INDEX['I'], LEAD_INDEX['aVF']
  li = LEAD_INDEX
  to_sample = lambda ms: QRS_ONSET + ms / DT_MS
  out = dict(
      hr_bpm=f['hr'], rr_ms=d['rr_ms'], pr_ms=f['pr'], p_dur_ms=f['p_dur'],
      qrs_ms=f['qrs_dur'], qt_ms=d['qt_ms'],
      qtc_bazett_ms=d['qtc_bazett_ms'],
      qtc_fridericia_ms=d['qtc_fridericia_ms'],
      qrs_axis_deg=_hexaxial_axis(qrs_area[i], qrs_area[avf]),
      p_axis_deg=_hexaxial_axis(p_area[i], p_area[avf]),
      t_axis_deg=_hexaxial_axis(t_area[i], t_area[avf]),
      sokolow_lyon_mv=s_amp[li['V1']] + jnp.maximum(r_amp[li['V5']],
                                                    r_amp[li['V6']]),
      cornell_mv=r_amp[li['aVL']] + s_amp[li['V3']],
      r_amp=r_amp, s_amp=s_amp, qrs_pp=qrs_max - qrs_min, st_j=st_j,
      t_amp=t_amp,
      p_onset_sample=to_sample(d['p_onset']),
      p_offset_sample=to_sample(d['p_offset']),
      qrs_onset_sample=to_sample(jnp.zeros_like(f['pr'])),
      qrs_offset_sample=to_sample(f['qrs_dur']),
      t_peak_sample=to_sample(d['t_peak']),
      t_end_sample=to_sample(d['t_end']))
  return out


# Regression targets (Storas et al. 2025 predict HR, PR, QRS, QT and the R, T
# and ST-J amplitudes in V5; QTc and the QRS axis complete the set), each one
# entry of `measure`: (key, lead or None). QTc is Bazett's QT / sqrt(RR), as
# the 12SL/MUSE measurements of real data sets report it; the simulator's
# own qtc factor is Fridericia's (measure()['qtc_fridericia_ms']).
MEASURE_NAMES = ('hr_bpm', 'pr_ms', 'qrs_ms', 'qt_ms', 'qtc_ms',
                 'r_amp_v5_mv', 't_amp_v5_mv', 'st_j_v5_mv', 'qrs_axis_deg')
MEASURE_UNITS = ('bpm', 'ms', 'ms', 'ms', 'ms', 'mV', 'mV', 'mV', 'deg')
NUM_MEASURES = len(MEASURE_NAMES)
_MEASURE_SOURCES = (
    ('hr_bpm', None), ('pr_ms', None), ('qrs_ms', None), ('qt_ms', None),
    ('qtc_bazett_ms', None), ('r_amp', 'V5'), ('t_amp', 'V5'),
    ('st_j', 'V5'), ('qrs_axis_deg', None))


def measures_from_measurements(m: dict[str, Any]) -> Any:
  """The MEASURE_NAMES vector from `measure()` output (selection only).

  Pure indexing, no arithmetic, so it gives the same bits from numpy or JAX
  inputs and from stored or freshly simulated measurements.

  Args:
    m: `measure(factors)` or a batch of them (numpy or JAX): scalars [...]
      and per-lead arrays [..., 12].

  Returns:
    [..., NUM_MEASURES] float32 in MEASURE_UNITS (a numpy array for numpy
    inputs, else a JAX array).
  """
  columns = [m[key] if lead is None else m[key][..., LEAD_INDEX[lead]]
             for key, lead in _MEASURE_SOURCES]
  if all(isinstance(c, np.ndarray) or np.isscalar(c) for c in columns):
    return np.stack([np.asarray(c, np.float32) for c in columns], axis=-1)
  return jnp.stack([jnp.asarray(c, jnp.float32) for c in columns], axis=-1)


def _contiguous(flags: jax.Array) -> jax.Array:
  """True if >= 2 leads of one contiguous group are flagged ([12] -> [])."""
  return jnp.any(jnp.asarray(_GROUP_MATRIX) @ flags.astype(jnp.float32) >= 2)


def labels_from_measurements(factors: jax.Array,
                             m: dict[str, jax.Array]) -> jax.Array:
  """Clinical labels of ECG_DOMAIN.md section 3 (sex-neutral thresholds).

  Interval and conduction labels come from the factors; voltage, axis, ST and
  T labels from the measured clean signal.

  Args:
    factors: [14] factors.
    m: `measure(factors)`.

  Returns:
    [NUM_LABELS] bool in LABEL_NAMES order.
  """
  f = unpack(factors)
  li = LEAD_INDEX
  qrsd, tau = f['qrs_dur'], f['conduction']
  lbbb = (qrsd >= 120) & (tau >= 0.5)
  rbbb = (qrsd >= 120) & (tau <= -0.5)
  irbbb = (qrsd >= 110) & (qrsd < 120) & (tau <= -0.5)
  r, s = m['r_amp'], m['s_amp']
  lvh = ((s[li['V1']] + jnp.maximum(r[li['V5']], r[li['V6']]) >= 3.5)
         | (r[li['aVL']] + s[li['V3']] > 2.8))
  low = jnp.all(jnp.where(jnp.asarray(_LIMB), m['qrs_pp'] < 0.5, True))
  # ST elevation: >= 0.2 mV in V2-V3 (men >= 40 y), >= 0.1 mV elsewhere.
  st_thr = jnp.full((12,), 0.1).at[li['V2']].set(0.2).at[li['V3']].set(0.2)
  return jnp.stack([
      f['hr'] < 60, f['hr'] > 100, f['pr'] > 200, lbbb, rbbb, irbbb,
      (qrsd > 110) & ~(lbbb | rbbb | irbbb),
      f['qtc'] >= 460, f['qtc'] <= 390,
      m['qrs_axis_deg'] < -30, m['qrs_axis_deg'] > 90,
      lvh, low,
      _contiguous(m['st_j'] >= st_thr),
      _contiguous(m['st_j'] <= -0.05),
      _contiguous((m['t_amp'] < -0.1) & (r > s)),
  ])


# --------------------------------------------------------------------------
# Synthetic ejection fraction and survival (ECG_DOMAIN.md section 4).

# Age and sex (ECG_DOMAIN.md section 4a): age ~ N(62, 14^2) clipped to
# [18, 95] years; log hazard ratios per 10 years of age and for men.
AGE_MEAN, AGE_SD, AGE_LOW, AGE_HIGH = 62.0, 14.0, 18.0, 95.0
AGE_LOG_HR_PER_DECADE = 0.55
MALE_LOG_HR = 0.30
# Hazard of the survival draw: 'age_sex' (default) adds the covariates to the
# ECG/EF risk score; 'ecg_only' is the earlier draw, kept to reproduce
# results made before the covariates existed.
SURVIVAL_MODELS = ('age_sex', 'ecg_only')


def _check_survival_model(survival_model: str) -> None:
  if survival_model not in SURVIVAL_MODELS:
    raise ValueError(f'survival_model must be one of {SURVIVAL_MODELS}, got '
                     f'{survival_model!r}')


def ejection_fraction(factors: jax.Array, key: jax.Array) -> jax.Array:
  """Synthetic EF (%) of one record; noise eps ~ N(0, 6^2) from `key`."""
  f = unpack(factors)
  pos = lambda x: jnp.maximum(x, 0.0)
  ef = (58.0 - 0.25 * pos(f['qrs_dur'] - 100.0)
        - 10.0 * pos(f['conduction']) - 0.15 * pos(f['hr'] - 70.0)
        - 0.08 * pos(jnp.abs(f['qrs_t_angle']) - 40.0)
        + 6.0 * jax.random.normal(key, f['hr'].shape))
  return jnp.clip(ef, 10.0, 80.0)


def sample_covariates(key: jax.Array, n: int
                      ) -> tuple[jax.Array, jax.Array]:
  """Draws age and sex of `n` records (ECG_DOMAIN.md section 4a).

  Independent of the factors: they come from their own key and nothing in the
  ECG or EF depends on them.

  Args:
    key: PRNG key of the covariate stream.
    n: number of records.

  Returns:
    (age [n] float32 years, N(AGE_MEAN, AGE_SD^2) clipped to [AGE_LOW,
    AGE_HIGH]; sex [n] int32, 1 = male, Bernoulli(0.5)).
  """
  k_age, k_sex = jax.random.split(key)
  age = AGE_MEAN + AGE_SD * jax.random.normal(k_age, (n,), jnp.float32)
  sex = jax.random.bernoulli(k_sex, 0.5, (n,)).astype(jnp.int32)
  return jnp.clip(age, AGE_LOW, AGE_HIGH), sex


def risk_score(factors: jax.Array, ef: jax.Array,
               age: jax.Array | None = None,
               sex: jax.Array | None = None) -> jax.Array:
  """Linear predictor eta of the proportional-hazards survival model.

  eta = 0.15 (QRSd - 100)/10 + 0.10 (QTc - 440)/10 + 0.15 (HR - 70)/10
        + 0.25 (50 - EF)/10 [+ 0.55 (age - 62)/10 + 0.30 male]
  (ECG_DOMAIN.md sections 4 and 4a; ms, bpm, %, years).

  Args:
    factors: [..., 14] factors.
    ef: [...] ejection fraction (%), the noisy one.
    age: [...] years; with `sex`, gives the 'age_sex' hazard. Leave both out
      for the 'ecg_only' hazard (the earlier `risk_score(factors, ef)`).
    sex: [...] 1 = male, 0 = female.

  Returns:
    [...] float32 log relative hazard.

  Raises:
    ValueError: if only one of `age` and `sex` is given.
  """
  f = unpack(factors)
  eta = (0.15 * (f['qrs_dur'] - 100.0) / 10.0
         + 0.10 * (f['qtc'] - 440.0) / 10.0
         + 0.15 * (f['hr'] - 70.0) / 10.0 + 0.25 * (50.0 - ef) / 10.0)
  if (age is None) != (sex is None):
    raise ValueError('give both age and sex, or neither (ECG-only hazard)')
  if age is not None:
    eta = (eta + AGE_LOG_HR_PER_DECADE * (age - AGE_MEAN) / 10.0
           + MALE_LOG_HR * jnp.asarray(sex, jnp.float32))
  return eta


def survival(eta: jax.Array, key: jax.Array, lam: float, shape_k: float = 1.0,
             censor_rate: float = 0.05, max_follow_up: float = 5.0):
  """Weibull proportional-hazards times (Bender et al. 2005), censored.

  Returns:
    (time [..] years, event [..] bool): observed min(T, C), event = T <= C.
  """
  k_t, k_c = jax.random.split(key)
  u = jax.random.uniform(k_t, eta.shape, minval=1e-12, maxval=1.0)
  t_event = (-jnp.log(u) / (lam * jnp.exp(eta))) ** (1.0 / shape_k)
  c = jnp.minimum(jax.random.exponential(k_c, eta.shape) / censor_rate,
                  max_follow_up)
  return jnp.minimum(t_event, c), t_event <= c


REFERENCE_SAMPLE_SIZE = 100_000
_REFERENCE_SEED = 2022


def calibrate_lambda(mode: str = 'uniform', shape_k: float = 1.0,
                     target: float = 0.10, *,
                     survival_model: str = 'age_sex') -> float:
  """Baseline hazard lambda giving `target` mean 1-year mortality.

  Bisection on the mean over a fixed reference sample (1e5 records, fixed
  seed, this sampler mode) of 1 - exp(-lambda * exp(eta)); the Weibull
  cumulative hazard at t = 1 year is lambda * exp(eta) for every shape k.
  Each (mode, survival model) pair is calibrated once per process (cached).
  The 'ecg_only' reference sample and lambda are those used before the
  covariates existed; 'age_sex' adds covariates from a separate seed.

  Args:
    mode: factor sampler, 'uniform' or 'realistic'.
    shape_k: Weibull shape (unused: H(1) does not depend on it).
    target: mean 1-year mortality.
    survival_model: 'age_sex' or 'ecg_only' (see SURVIVAL_MODELS).

  Returns:
    lambda, per year.
  """
  del shape_k  # H(1) = lambda * exp(eta) whatever the Weibull shape.
  _check_survival_model(survival_model)
  return _calibrate_lambda(mode, float(target), survival_model)


@functools.lru_cache(maxsize=None)
def _calibrate_lambda(mode: str, target: float, survival_model: str) -> float:
  key = jax.random.key(_REFERENCE_SEED)
  k_f, k_ef = jax.random.split(key)
  factors = sample_factors(k_f, REFERENCE_SAMPLE_SIZE, mode)
  ef = jax.vmap(ejection_fraction)(
      factors, jax.random.split(k_ef, REFERENCE_SAMPLE_SIZE))
  covariates = {}
  if survival_model == 'age_sex':
    # Its own seed, so the 'ecg_only' reference sample is left as it was.
    age, sex = sample_covariates(jax.random.key(_REFERENCE_SEED + 1),
                                 REFERENCE_SAMPLE_SIZE)
    covariates = dict(age=age, sex=sex)
  hazard = np.exp(np.asarray(risk_score(factors, ef, **covariates),
                             np.float64))
  lo, hi = 1e-8, 10.0
  for _ in range(100):
    mid = np.sqrt(lo * hi)
    if np.mean(1.0 - np.exp(-mid * hazard)) < target:
      lo = mid
    else:
      hi = mid
  return float(np.sqrt(lo * hi))


# --------------------------------------------------------------------------
# Whole records.

# Append new streams at the end: an index names a stream's key forever.
STREAMS = ('factors', 'noise', 'ef', 'survival', 'strip', 'covariates')


def record_keys(key: jax.Array) -> dict[str, jax.Array]:
  """Independent per-stream keys of one record (fold_in by stream index)."""
  return {name: jax.random.fold_in(key, i) for i, name in enumerate(STREAMS)}


def simulate_record(key: jax.Array, *, mode: str = 'uniform',
                    lam: float | None = None, shape_k: float = 1.0,
                    strip: bool = False, rr_std: float = 0.05,
                    exact_noise: bool = False,
                    survival_model: str = 'age_sex') -> dict[str, Any]:
  """One complete record, a deterministic function of `key`.

  Args:
    key: the record's PRNG key (e.g. fold_in(split_key, index)).
    mode: factor sampler ('uniform' | 'realistic').
    lam: baseline hazard; default `calibrate_lambda(mode, shape_k,
      survival_model=survival_model)`.
    shape_k: Weibull shape of the baseline hazard.
    strip: also render the 10-second strip.
    rr_std: strip RR variability.
    exact_noise: see `beat_noise`.
    survival_model: hazard of the survival draw: 'age_sex' (ECG, EF, age and
      sex) or 'ecg_only' (the earlier draw: ECG and EF). Only `time` and
      `event` depend on it; the same uniform draws are used by both.

  Returns:
    dict: factors [14], beat [600, 12] (noisy), beat_clean [600, 12],
    measurements (dict), labels [NUM_LABELS] bool, ef, reduced_ef, age
    (years, float32), sex (int32, 1 = male), time (years), event, measures
    [NUM_MEASURES] float32 (MEASURE_NAMES, MEASURE_UNITS); with
    `strip`: strip [5000, 12], strip_clean, qrs_onsets, r_peaks, num_beats.
  """
  _check_survival_model(survival_model)
  if lam is None:
    lam = calibrate_lambda(mode, shape_k, survival_model=survival_model)
  keys = record_keys(key)
  factors = sample_factors(keys['factors'], 1, mode)[0]
  clean = clean_beat(factors)
  m = measure(factors)
  ef = ejection_fraction(factors, keys['ef'])
  age, sex = (x[0] for x in sample_covariates(keys['covariates'], 1))
  covariates = (dict(age=age, sex=sex) if survival_model == 'age_sex'
                else {})
  time, event = survival(risk_score(factors, ef, **covariates),
                         keys['survival'], lam, shape_k)
  out = dict(
      factors=factors, beat_clean=clean,
      beat=clean + beat_noise(factors, keys['noise'], exact=exact_noise),
      measurements=m, labels=labels_from_measurements(factors, m), ef=ef,
      reduced_ef=ef <= 35.0, age=age, sex=sex, time=time, event=event,
      measures=measures_from_measurements(m))
  if strip:
    s = simulate_strip(factors, keys['strip'], rr_std,
                       exact_noise=exact_noise)
    out.update(strip=s['ecg'], strip_clean=s['clean'],
               qrs_onsets=s['qrs_onsets'], r_peaks=s['r_peaks'],
               num_beats=s['num_beats'])
  return out


RECORD_FIELDS = ('factors', 'beat', 'beat_clean', 'measurements', 'labels',
                 'ef', 'reduced_ef', 'age', 'sex', 'time', 'event', 'strip',
                 'strip_clean', 'qrs_onsets', 'r_peaks', 'num_beats',
                 'measures')
_STRIP_FIELDS = ('strip', 'strip_clean', 'qrs_onsets', 'r_peaks', 'num_beats')
# Records per compiled call, whatever the request: XLA rounds a vmapped
# program's floats differently at different batch sizes, so one fixed size
# keeps a record's bits independent of how many records were asked for.
BLOCK = 64
# The compiled programs, each computing all of its fields: a field comes from
# the same program whatever else is requested (a program computing other
# outputs fuses, and rounds, differently), so each record is bit-identical
# across requests, and at most five programs compile per sampler setting.
# Only the survival draw depends on the survival model; the other programs
# run with the default one, so they are the same program under either.
_SURVIVAL_FIELDS = ('time', 'event')
_PROGRAMS = (
    ('factors', 'measurements', 'labels', 'ef', 'reduced_ef', 'age', 'sex'),
    _SURVIVAL_FIELDS,
    ('beat',),
    ('beat_clean',),
    _STRIP_FIELDS,
)


@functools.partial(jax.jit, static_argnames=('mode', 'shape_k', 'fields',
                                             'exact_noise', 'survival_model'))
def _simulate_indices(key, indices, lam, rr_std, *, mode, shape_k, fields,
                      exact_noise, survival_model='age_sex'):
  strip = any(f in _STRIP_FIELDS for f in fields)

  def one(i):
    rec = simulate_record(jax.random.fold_in(key, i), mode=mode, lam=lam,
                          shape_k=shape_k, strip=strip, rr_std=rr_std,
                          exact_noise=exact_noise,
                          survival_model=survival_model)
    # Only requested fields leave the jitted function; XLA drops the rest.
    return {f: rec[f] for f in fields}

  return jax.vmap(one)(indices)


def simulate_records(key: jax.Array, n: int | None = None, *,
                     indices: np.ndarray | None = None,
                     mode: str = 'uniform', strips: bool = False,
                     fields: Sequence[str] | None = None,
                     rr_std: float = 0.05, shape_k: float = 1.0,
                     exact_noise: bool = False,
                     survival_model: str = 'age_sex') -> dict[str, Any]:
  """Records `indices` (default 0..n-1); record i = simulate_record(fold_in(key, i)).

  Records are generated in jitted calls of `BLOCK` records (the last one
  padded) by at most five compiled programs (`_PROGRAMS`: the scalar fields,
  the survival draw, the beat, the clean beat, the strip fields), each
  always computing all of its fields, and returned as numpy arrays. So a
  record's values do not depend on the request: the same bits whether it is
  asked for alone or among thousands, with or without other fields, on the
  fly or through the synthetic_ecg builder, and every field but time and
  event the same bits under either survival model.

  Args:
    key: PRNG key of the data set split.
    n: number of records (records 0..n-1) if `indices` is not given.
    indices: explicit record indices (int array, each < 2**31).
    mode, rr_std, shape_k, exact_noise, survival_model: see
      `simulate_record` ('ecg_only' reproduces records made before age and
      sex entered the hazard).
    strips: include the strip fields (ignored when `fields` is given).
    fields: subset of RECORD_FIELDS to return (default: all but the strip
      fields, or all with `strips`); only the programs holding them run.
      'measures' [n, NUM_MEASURES] is selected from the measurements
      (`measures_from_measurements`).

  Returns:
    dict of numpy arrays with a leading record axis (see `simulate_record`).
  """
  if indices is None:
    if n is None:
      raise ValueError('give n or indices')
    indices = np.arange(n)
  indices = np.asarray(indices, np.int64).reshape(-1)
  if indices.size and (indices.min() < 0 or indices.max() >= 2**31):
    raise ValueError('record indices must lie in [0, 2**31)')
  if fields is None:
    fields = tuple(f for f in RECORD_FIELDS
                   if strips or f not in _STRIP_FIELDS)
  unknown = set(fields) - set(RECORD_FIELDS)
  if unknown:
    raise ValueError(f'unknown record fields {sorted(unknown)}; known: '
                     f'{RECORD_FIELDS}')
  fields = tuple(f for f in RECORD_FIELDS if f in fields)
  # 'measures' is selected from 'measurements' on the host, so it holds the
  # very bits of the measurements of the same call (and of a stored record).
  want_measures = 'measures' in fields
  keep_measurements = 'measurements' in fields
  if want_measures:
    fields = tuple(f for f in RECORD_FIELDS
                   if (f in fields and f != 'measures') or f == 'measurements')
  _check_survival_model(survival_model)
  lam = np.float32(calibrate_lambda(mode, shape_k,
                                    survival_model=survival_model))
  if not len(indices):
    raise ValueError('no records requested')
  # The index blocks, the last one padded: shared by every program.
  blocks = np.zeros(-(-len(indices) // BLOCK) * BLOCK, np.uint32)
  blocks[:len(indices)] = indices
  blocks = blocks.reshape(-1, BLOCK)
  out = {}
  for program in _PROGRAMS:
    wanted = [f for f in program if f in fields]
    if not wanted:
      continue
    model = (survival_model if program == _SURVIVAL_FIELDS
             else SURVIVAL_MODELS[0])
    # All blocks are dispatched before the one wait for their results.
    host = jax.device_get([_simulate_indices(
        key, idx, lam, np.float32(rr_std), mode=mode, shape_k=shape_k,
        fields=program, exact_noise=exact_noise, survival_model=model)
                           for idx in blocks])
    for f in wanted:
      out[f] = jax.tree.map(
          lambda *xs: np.concatenate(xs, axis=0)[:len(indices)],
          *[h[f] for h in host])
  out = {f: out[f] for f in RECORD_FIELDS if f in out}
  if want_measures:
    out['measures'] = measures_from_measurements(out['measurements'])
    if not keep_measurements:
      del out['measurements']
  return out
