"""Independent check of the simulator's intervals with NeuroKit2 (section 6).

Clean beats tiled at a constant RR into 10-s strips; NeuroKit2's peak
detection and DWT delineation (Martinez et al. 2004) on V5, without its
cleaning filter; per record the median over beats of PR, QRS and QT.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.data import simulator as sim

nk = pytest.importorskip('neurokit2')

_NORMAL = dict(hr=(50, 100), pr=(120, 200), qrs_dur=(80, 110),
               qtc=(370, 440), conduction=(-0.3, 0.3), noise_level=(0, 0))


def _normal_range_factors(n, seed=0):
  # Every factor in its normal sub-range, intervals as in ECG_DOMAIN.md.
  rng = np.random.default_rng(seed)
  f = rng.uniform(sim.NORMAL_LOW, sim.NORMAL_HIGH, (n, sim.NUM_FACTORS))
  for name, (lo, hi) in _NORMAL.items():
    f[:, sim.FACTOR_INDEX[name]] = rng.uniform(lo, hi, n)
  return f


def _delineate(v5, fs=sim.FS):
  """Median PR, QRS, QT (ms) over beats, or None where DWT gives nothing."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    _, info = nk.ecg_peaks(v5, sampling_rate=fs)
    _, waves = nk.ecg_delineate(v5, info['ECG_R_Peaks'], sampling_rate=fs,
                                method='dwt')
  get = lambda k: np.asarray(waves[k], float)
  r_on, r_off = get('ECG_R_Onsets'), get('ECG_R_Offsets')
  pr = np.nanmedian(r_on - get('ECG_P_Onsets'))
  qrs = np.nanmedian(r_off - r_on)
  qt = np.nanmedian(get('ECG_T_Offsets') - r_on)
  out = np.array([pr, qrs, qt]) * 1000.0 / fs
  return None if np.isnan(out).any() else out


def _strips(f):
  fn = jax.jit(jax.vmap(lambda x, k: sim.simulate_strip(
      x, k, rr_std=0.0, noise=False)['clean']))
  keys = jax.random.split(jax.random.key(1), len(f))
  return np.asarray(fn(jnp.asarray(f), keys))


def test_neurokit2_intervals_agree_on_normal_range_records():
  f = _normal_range_factors(40)
  strips = _strips(f)
  truth = np.stack([f[:, sim.FACTOR_INDEX['pr']],
                    f[:, sim.FACTOR_INDEX['qrs_dur']],
                    np.asarray(sim.derived_times(jnp.asarray(f))['qt_ms'])],
                   axis=1)
  measured, ok = [], []
  for k in range(len(f)):
    m = _delineate(strips[k, :, sim.LEAD_INDEX['V5']])
    ok.append(m is not None)
    measured.append(m if m is not None else np.full(3, np.nan))
  measured = np.array(measured)
  f_usable = _usable_rate_full_range()
  assert np.mean(ok) >= 0.9
  err = (measured - truth)[np.array(ok)]
  median_err = np.median(err, axis=0)
  within = np.mean(np.abs(err) <= np.array([25, 25, 35]), axis=0)
  print('median error PR/QRS/QT (ms):', median_err.round(1),
        'within gate:', within.round(3),
        f'| usable DWT intervals over the full uniform range: {f_usable:.0%}')
  assert np.all(np.abs(median_err) <= 15), median_err
  assert np.all(within >= 0.9), within


def _usable_rate_full_range(n=20):
  """Share of uniform-range records with usable V5 intervals (reported)."""
  f = np.array(sim.sample_factors(jax.random.key(5), n))
  f[:, sim.FACTOR_INDEX['noise_level']] = 0.0
  strips = _strips(f)
  return np.mean([_delineate(s[:, sim.LEAD_INDEX['V5']]) is not None
                  for s in strips])
