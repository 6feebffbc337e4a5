"""Tests of median-beat extraction against simulator truth and NeuroKit2.

Simulated strips carry their true R peaks and QRS onsets, so detection is
scored beat by beat and the extracted median beat is compared with the clean
beat at the alignment the detector itself reports.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from factorecg_jax.data import median_beat as mb
from factorecg_jax.data import simulator as sim

# Compiling dominates (many strip shapes); the arrays are small.
pytestmark = pytest.mark.usefixtures('fast_compile')

_N = 32  # records per simulated data set
_TOL = 5  # samples at 500 Hz: +-10 ms


def _normal_range_factors(n, seed):
  rng = np.random.default_rng(seed)
  return rng.uniform(sim.NORMAL_LOW, sim.NORMAL_HIGH, (n, sim.NUM_FACTORS))


@functools.lru_cache(maxsize=None)
def _data(kind):
  """Strips, truth and extraction (QRS onset aligned) for one data set.

  'normal': normal-range factors, constant RR, so the clean median beat of
  the strip is exactly `sim.clean_beat`. 'realistic': the realistic sampler
  (15 % of factors from the full range) with 5 % RR variability.
  """
  if kind == 'normal':
    factors, rr_std = _normal_range_factors(_N, seed=0), 0.0
  else:
    key = jax.random.key(11)
    factors, rr_std = sim.sample_factors(key, _N, mode='realistic'), 0.05
  factors = jnp.asarray(factors, jnp.float32)
  keys = jax.random.split(jax.random.key(5), _N)
  strip_fn = jax.vmap(functools.partial(sim.simulate_strip, rr_std=rr_std))
  strips = jax.device_get(jax.jit(strip_fn)(factors, keys))
  strips['factors'] = np.asarray(factors)
  strips['clean_beat'] = np.asarray(jax.jit(jax.vmap(sim.clean_beat))(factors))
  out = mb.extract_median_beats_numpy(strips['ecg'], chunk_size=_N)
  return strips, out


def _match(detected, true):
  """Index into `detected` of the nearest detection for each true peak."""
  detected = detected[detected >= 0]
  dist = np.abs(detected[:, None] - true[None, :])
  return detected, dist.argmin(0), dist.min(0)


def _true_onset_in_beat(strips, out, i):
  """Where record i's true QRS onset falls in its extracted beat (samples).

  Beat sample j lies at strip sample r_k - r_peak + j for detected beat k, so
  the true onset o_k lies at o_k - r_k + r_peak; the median is over beats.
  """
  onsets = strips['qrs_onsets'][i]
  ok = onsets >= 0
  detected, nearest, _ = _match(out['r_peaks'][i], strips['r_peaks'][i][ok])
  return np.median(onsets[ok] - detected[nearest]) + out['r_peak'][i]


def _corr(a, b):
  """Per-lead Pearson correlation of [t, 12] arrays."""
  a = a - a.mean(0)
  b = b - b.mean(0)
  return (a * b).sum(0) / np.sqrt((a**2).sum(0) * (b**2).sum(0))


def _shifted_corr(beat, reference, shift):
  """Per-lead correlation of beat[j] with reference[j + shift]."""
  lo, hi = max(0, -shift), min(len(beat), len(reference) - shift)
  return _corr(beat[lo:hi], reference[lo + shift : hi + shift])


def test_r_peaks_found_within_10_ms():
  strips, out = _data('realistic')
  found = total = false = 0
  for i in range(_N):
    onsets, true = strips['qrs_onsets'][i], strips['r_peaks'][i]
    listed = true[onsets >= 0]
    # Beats cut by the strip ends are not scored.
    scored = listed[(onsets[onsets >= 0] >= 50) & (onsets[onsets >= 0] < 4950)]
    detected, _, dist = _match(out['r_peaks'][i], scored)
    found += np.sum(dist <= _TOL)
    total += len(scored)
    inner = detected[(detected >= 40) & (detected < 4960)]
    away = np.abs(inner[:, None] - listed[None, :]).min(1) > _TOL
    false += np.sum(away)
    assert out['quality']['num_beats'][i] == len(detected)
  assert total > 300
  assert found / total >= 0.99, (found, total)
  assert false / total <= 0.01, (false, total)


def test_median_beat_correlates_with_clean_beat_in_every_lead():
  strips, out = _data('normal')
  for i in range(_N):
    onset = _true_onset_in_beat(strips, out, i)
    shift = int(round(sim.QRS_ONSET - onset))
    corr = _shifted_corr(out['beat'][i], strips['clean_beat'][i], shift)
    assert corr.min() >= 0.98, (i, corr)


def test_qrs_onset_lands_at_sample_200():
  strips, out = _data('normal')
  assert np.all(out['qrs_onset'] == mb.QRS_ONSET)
  err = np.array([
      _true_onset_in_beat(strips, out, i) - mb.QRS_ONSET for i in range(_N)
  ])
  # 1 sample = 2 ms.
  assert np.median(np.abs(err)) <= 1.5, err
  assert np.max(np.abs(err)) <= 5, err
  # Without any realignment the beat already matches the clean one closely.
  corr = np.array([
      _corr(out['beat'][i], strips['clean_beat'][i]) for i in range(_N)
  ])
  assert np.median(corr) >= 0.99, np.median(corr)
  # The R peak is reported where the power of the beat peaks.
  power = np.sum(out['beat'] ** 2, axis=-1)
  near = np.array([
      np.argmax(power[i, r - 30 : r + 31]) - 30
      for i, r in enumerate(out['r_peak'])
  ])
  assert np.all(np.abs(near) <= 1), near


def test_median_beat_with_rr_variability_matches_clean_strip_median():
  # With a jittered RR the neighbouring waves smear, so the reference is the
  # median of the noise-free strip over windows at the true QRS onsets.
  strips, out = _data('realistic')
  for i in range(_N):
    onsets = strips['qrs_onsets'][i]
    onsets = onsets[(onsets >= 200) & (onsets + 400 <= 5000)]
    windows = strips['clean'][i][onsets[:, None] + np.arange(-200, 400)]
    reference = np.median(windows, axis=0)
    shift = int(round(sim.QRS_ONSET - _true_onset_in_beat(strips, out, i)))
    corr = _shifted_corr(out['beat'][i], reference, shift)
    assert corr.min() >= 0.98, (i, corr, strips['factors'][i])


@pytest.mark.parametrize('fs, up, down', [(250, 1, 2), (1000, 2, 1)])
def test_other_sampling_rates_give_the_same_beats(fs, up, down):
  strips, out = _data('normal')
  ecg = scipy.signal.resample_poly(strips['ecg'][:8], up, down, axis=1)
  res = jax.device_get(
      mb.extract_median_beats(jnp.asarray(ecg, jnp.float32), fs=fs)
  )
  assert res['beat'].shape == (8, mb.BEAT_LEN, 12)
  for i in range(8):
    # Away from the strip ends (where the resampler's edges differ) both
    # rates find the same peaks to a sample.
    ours, theirs = out['r_peaks'][i], res['r_peaks'][i]
    ours, theirs = (p[(p >= 100) & (p < 4900)] for p in (ours, theirs))
    assert len(ours) == len(theirs) > 5
    assert np.abs(ours - theirs).max() <= 1
    assert _corr(res['beat'][i], out['beat'][i]).min() >= 0.99


def _neurokit_median_beat(ecg, nk):
  """NeuroKit2 median beat [600, 12], R peak at sample 300 of it."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    # The first stage of nk.ecg_clean per lead, band-limited like ours (its
    # 50 Hz moving average would blur the QRS by 20 ms).
    filtered = np.stack(
        [
            nk.signal_filter(ecg[:, i], sampling_rate=sim.FS, lowcut=0.5,
                             highcut=150.0, method='butterworth', order=5)
            for i in range(12)
        ],
        axis=1,
    )
    lead = np.argmax(filtered.max(0) - np.median(filtered, 0))
    cleaned = nk.ecg_clean(ecg[:, lead], sampling_rate=sim.FS)
    _, info = nk.ecg_peaks(cleaned, sampling_rate=sim.FS)
  peaks = np.asarray(info['ECG_R_Peaks'], int)
  peaks = peaks[(peaks >= 300) & (peaks + 300 <= len(ecg))]
  return np.median(filtered[peaks[:, None] + np.arange(-300, 300)], axis=0)


def test_median_beats_agree_with_neurokit2():
  nk = pytest.importorskip('neurokit2')
  strips, out = _data('realistic')
  for i in range(12):
    reference = _neurokit_median_beat(strips['ecg'][i], nk)
    # Line up the R peaks, then allow one shift per record of +-30 ms.
    base = 300 - int(out['r_peak'][i])
    corr = max(
        (_shifted_corr(out['beat'][i], reference, base + lag)
         for lag in range(-15, 16)),
        key=np.mean,
    )
    assert corr.min() >= 0.98, (i, corr)


def test_quality_flags():
  strips, out = _data('realistic')
  q = out['quality']
  assert q['usable'].all()
  assert not q['flat_leads'].any() and not q['saturated_leads'].any()
  np.testing.assert_allclose(
      q['rr_mean_ms'],
      [np.mean(np.diff(p[p >= 0])) * 2 for p in strips['r_peaks']],
      rtol=0.02,
  )
  # The noise estimate follows the noise actually added (in the beat band).
  sos = scipy.signal.butter(2, [0.5, 150.0], 'bandpass', fs=500, output='sos')
  added = scipy.signal.sosfiltfilt(sos, strips['ecg'] - strips['clean'], axis=1)
  added = np.sqrt(np.mean(added**2, axis=1))
  rank = lambda v: np.argsort(np.argsort(v.ravel()))
  assert np.corrcoef(rank(q['noise_mv']), rank(added))[0, 1] > 0.7
  assert np.all(np.median(q['snr'], axis=1) > 2 * mb.MIN_SNR)

  ecg = np.repeat(strips['clean'][:1], 6, axis=0)
  ecg[1, 1000:1100, 3] = np.nan
  ecg[2, :, 7] = 0.003
  top = 0.6 * ecg[3, :, 9].max()
  ecg[3, :, 9] = np.minimum(ecg[3, :, 9], top)
  ecg[4] = 0.0
  ecg[5] = np.random.default_rng(0).normal(0, 1, ecg[5].shape)  # no ECG
  res = jax.device_get(mb.extract_median_beats(jnp.asarray(ecg)))
  q = res['quality']
  np.testing.assert_array_equal(q['usable'], [1, 0, 0, 0, 0, 0])
  assert q['nan_fraction'][1, 3] == pytest.approx(0.02)
  assert q['nan_fraction'].sum() == pytest.approx(0.02)
  np.testing.assert_array_equal(np.argwhere(q['flat_leads'][:4]), [[2, 7]])
  assert q['flat_leads'][4].all()
  np.testing.assert_array_equal(np.argwhere(q['saturated_leads']), [[3, 9]])
  np.testing.assert_array_equal(q['num_beats'][:4], q['num_beats'][0])
  assert q['num_beats'][4] == 0 and np.all(res['r_peaks'][4] == -1)
  assert np.isinf(q['noise_mv'][4]).all()
  assert np.isfinite(res['beat']).all()
  # A NaN gap, a flat or a clipped lead leaves the other leads' beats alone.
  for i in (1, 2, 3):
    keep = [l for l in range(12) if l not in (3, 7, 9)]
    np.testing.assert_allclose(
        res['beat'][i][:, keep], res['beat'][0][:, keep], atol=0.01
    )


@pytest.mark.parametrize('k', [1, 2, 5, 24, 40])
def test_nanmedian_over_beats_matches_numpy(k):
  rng = np.random.default_rng(k)
  x = rng.normal(size=(k, 7, 9)).astype(np.float32)
  x[rng.random(x.shape) < 0.3] = np.nan
  x[:, 0, 0] = np.nan  # a column without any value
  got = np.asarray(jax.jit(mb.nanmedian_over_beats)(jnp.asarray(x)))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    want = np.nanmedian(x, axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)


def test_chunks_sharding_and_no_retrace():
  strips, out = _data('normal')
  n = 3 * jax.device_count()
  ecg = jnp.asarray(strips['ecg'][:n])
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5)
  # Three records per device, each device running jax.lax.map over chunks
  # of two (and a remainder of one): the same numbers as one wide batch.
  mesh = jax.make_mesh(
      (jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  sharded = jax.device_put(ecg, jax.NamedSharding(mesh, jax.P('data')))
  res = mb.extract_median_beats(sharded, chunk_size=2, mesh=mesh)
  assert res['beat'].sharding.spec == jax.P('data')
  jax.tree.map(close, jax.device_get(res), jax.tree.map(lambda a: a[:n], out))
  size = mb.extract_median_beats._cache_size()
  mb.extract_median_beats(sharded, chunk_size=2, mesh=mesh)
  assert mb.extract_median_beats._cache_size() == size
  # The host helper pads the last chunk and drops the padding again (with
  # the shapes of `_data`, so nothing is compiled).
  res = mb.extract_median_beats_numpy(strips['ecg'][:13], chunk_size=_N)
  jax.tree.map(close, res, jax.tree.map(lambda a: a[:13], out))
  assert mb.extract_median_beats._cache_size() == size


def test_rejects_bad_shapes():
  with pytest.raises(ValueError, match='12'):
    mb.extract_median_beats(jnp.zeros((2, 5000, 8)))
  with pytest.raises(ValueError, match='align'):
    mb.extract_median_beats(jnp.zeros((2, 5000, 12)), align='t_peak')
