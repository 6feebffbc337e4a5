"""Tests of the physiological 12-lead simulator (ECG_DOMAIN.md section 6)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.data import simulator as sim

L = sim.LEAD_INDEX
# XLA's optimisation passes off: compiling the simulator dominates here and
# halves the module's time; the asserted values hold either way.
pytestmark = pytest.mark.usefixtures('fast_compile')


@functools.lru_cache(maxsize=None)
def _records(n=900, mode='uniform', seed=3):
  return sim.simulate_records(jax.random.key(seed), n, mode=mode)


def _check_limb_identities(x, atol):
  np.testing.assert_allclose(x[..., L['I']] + x[..., L['III']],
                             x[..., L['II']], atol=atol)
  np.testing.assert_allclose(
      x[..., L['aVR']] + x[..., L['aVL']] + x[..., L['aVF']], 0.0, atol=atol)


def test_limb_identities_hold_clean_noisy_and_strip():
  r = sim.simulate_records(jax.random.key(0), 16, strips=True)
  assert r['factors'][:, sim.FACTOR_INDEX['noise_level']].max() > 0.3
  for name in ('beat', 'beat_clean', 'strip', 'strip_clean'):
    _check_limb_identities(r[name], atol=2e-6)
  # The noisy beat does differ from the clean one, so noise was added.
  assert np.abs(r['beat'] - r['beat_clean']).max() > 0.01


def test_inverse_dower_is_pinv_of_dower():
  pinv = np.linalg.pinv(sim.DOWER.astype(np.float64))  # [3, 8] I, II, V1..V6
  # INVERSE_DOWER columns are V1..V6, I, II.
  reordered = np.concatenate([pinv[:, 2:], pinv[:, :2]], axis=1)
  np.testing.assert_allclose(reordered, sim.INVERSE_DOWER, atol=1e-3)


def test_default_beat_matches_domain_targets():
  m = jax.jit(sim.measure)(sim.default_factors())
  r, s, t = m['r_amp'], m['s_amp'], m['t_amp']
  assert abs(r[L['V5']] - 1.3) < 0.2
  assert abs(s[L['V1']] - 1.1) < 0.2
  assert abs(m['qrs_axis_deg'] - 64) < 8
  assert abs(m['p_axis_deg'] - 63) < 8
  assert abs(m['t_axis_deg'] - 36) < 8
  assert abs(m['sokolow_lyon_mv'] - 2.4) < 0.25
  assert abs(m['cornell_mv'] - 1.0) < 0.2
  # R/S transition between V3 and V4.
  assert r[L['V3']] < s[L['V3']] and r[L['V4']] > s[L['V4']]
  for lead in ('I', 'II', 'V2', 'V3', 'V4', 'V5', 'V6'):
    assert t[L[lead]] > 0.05, lead
  assert t[L['aVR']] < -0.05
  # Axis is monotone in frontal rotation at default settings.
  axes = [float(sim.measure(sim.default_factors().at[9].set(rho))
                ['qrs_axis_deg']) for rho in (0., 30., 60.)]
  np.testing.assert_allclose(axes, [6., 64., 89.], atol=8)


def _numpy_beat(f, neighbours=True):
  """Independent NumPy rendering of ECG_DOMAIN.md section 1, wave by wave."""
  f = dict(zip(sim.FACTOR_NAMES, np.asarray(f, np.float64)))
  rr = 60000 / f['hr']
  qt = f['qtc'] * (rr / 1000) ** (1 / 3)
  qrsd, a, tau = f['qrs_dur'], f['qrs_amp'], f['conduction']

  def unit(phi, e):
    phi, e = np.deg2rad(phi), np.deg2rad(e)
    return np.array([np.cos(e) * np.cos(phi), np.cos(e) * np.sin(phi),
                     np.sin(e)])

  def rot(rho, h):
    rho, h = np.deg2rad(rho), np.deg2rad(h)
    rz = np.array([[np.cos(rho), -np.sin(rho), 0], [np.sin(rho),
                                                     np.cos(rho), 0],
                   [0, 0, 1]])
    ry = np.array([[np.cos(h), 0, np.sin(h)], [0, 1, 0],
                   [-np.sin(h), 0, np.cos(h)]])
    return rz @ ry

  rv = rot(f['frontal_rot'], f['horiz_rot'])
  rt = rot(f['frontal_rot'] + f['qrs_t_angle'], f['horiz_rot'])
  sq, ss = 0.07 * qrsd, 0.08 * qrsd
  t_peak = qt - 2.5 * 0.075 * qt
  waves = [  # (mu, sigma_left, sigma_right, dipole vector)
      (-f['pr'] + f['p_dur'] / 2, f['p_dur'] / 5, f['p_dur'] / 5,
       f['p_amp'] * unit(35, -10)),
      (2.5 * sq, sq, sq, 0.15 * a * (1 - max(tau, 0)) * rv @ unit(120, -50)),
      (0.45 * qrsd, 0.11 * qrsd, 0.11 * qrsd, a * rv @ unit(0, 25)),
      (qrsd - 2.5 * ss, ss, ss, 0.35 * a * rv @ unit(150, 40)),
      (t_peak, 0.125 * qt, 0.075 * qt, f['t_amp'] * rt @ unit(-15, -30)),
  ]
  if tau < 0:
    s = 0.10 * qrsd
    waves.append((qrsd - 2.5 * s, s, s, 0.6 * a * -tau * rv @ unit(130, -45)))
  else:
    s = 0.12 * qrsd
    waves.append((qrsd - 2.5 * s, s, s, 0.6 * a * tau * rv @ unit(-50, 45)))
  t = (np.arange(600) - 200) * 2.0
  dipole = np.zeros((600, 3))
  for shift in ((-rr, 0, rr) if neighbours else (0,)):
    for mu, sl, sr, vec in waves:
      x = t - shift - mu
      g = np.exp(-0.5 * (x / np.where(x < 0, sl, sr)) ** 2)
      dipole += g[:, None] * vec[None, :]
    rel = t - shift
    plateau = (1 / (1 + np.exp(-(rel - (qrsd - 10)) / 3))
               / (1 + np.exp(-(t_peak - rel) / 20)))
    dipole += plateau[:, None] * f['st_dev'] * unit(60, -50)[None, :]
  v8 = dipole @ sim.DOWER.T.astype(np.float64)
  i, ii = v8[:, 0], v8[:, 1]
  return np.column_stack([i, ii, ii - i, -(i + ii) / 2, i - ii / 2,
                          ii - i / 2, v8[:, 2:]])


@pytest.mark.parametrize('neighbours', [True, False])
def test_jax_beat_equals_numpy_reference(neighbours):
  f = np.array(sim.sample_factors(jax.random.key(7), 6))
  f[0, sim.FACTOR_INDEX['conduction']] = -0.8  # R' branch
  f[1, sim.FACTOR_INDEX['conduction']] = 0.9  # late-LV branch
  f[2, sim.FACTOR_INDEX['hr']] = 120.0  # neighbour beats inside the window
  got = np.asarray(jax.vmap(lambda x: sim.clean_beat(x, neighbours))(f))
  for k in range(len(f)):
    np.testing.assert_allclose(got[k], _numpy_beat(f[k], neighbours),
                               atol=2e-5, rtol=1e-4)


def test_same_key_same_record_different_key_different():
  a = sim.simulate_records(jax.random.key(11), 4, strips=True)
  b = sim.simulate_records(jax.random.key(11), 4, strips=True)
  c = sim.simulate_records(jax.random.key(12), 4, strips=True)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.allclose(a['beat'], c['beat'])


def test_a_record_is_bit_identical_whatever_the_request():
  key = jax.random.key(11)
  calls = sim._simulate_indices._cache_size()  # pylint: disable=protected-access
  n = sim.BLOCK + 6  # two calls, the second padded
  every = sim.simulate_records(key, n, strips=True)
  # Record i does not depend on how many records are drawn around it, on
  # where the block boundaries fall, nor on the other fields asked for.
  for indices, fields in (
      ([2, 3], ('beat',)),
      ([n - 1], ('beat', 'reduced_ef', 'age', 'time')),
      ([5, sim.BLOCK + 1, 0], ('factors', 'labels', 'beat_clean')),
      (list(range(3, n)), ('measurements', 'strip', 'r_peaks')),
      ([7], ('measures',)),
  ):
    got = sim.simulate_records(key, indices=np.array(indices), fields=fields)
    assert set(got) == set(fields)
    for name in fields:
      if name == 'measures':
        want = sim.measures_from_measurements(every['measurements'])
      else:
        want = every[name]
      jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y[indices]),
                   got[name], want)
  # One compiled program per group of fields, at one call size.
  added = sim._simulate_indices._cache_size() - calls  # pylint: disable=protected-access
  assert added <= len(sim._PROGRAMS), added  # pylint: disable=protected-access


def test_noise_stream_leaves_clean_beat_and_labels_unchanged():
  key = jax.random.key(5)
  r1 = sim.simulate_record(key)
  keys = sim.record_keys(key)
  other = sim.beat_noise(r1['factors'], jax.random.fold_in(key, 99))
  np.testing.assert_array_equal(r1['beat_clean'],
                                sim.clean_beat(r1['factors']))
  np.testing.assert_allclose(
      r1['beat'] - r1['beat_clean'],
      sim.beat_noise(r1['factors'], keys['noise']), atol=1e-6)
  assert not np.allclose(other, r1['beat'] - r1['beat_clean'])


def test_exact_and_bank_noise_have_the_specified_scale():
  f = sim.default_factors().at[sim.FACTOR_INDEX['noise_level']].set(1.0)
  keys = jax.random.split(jax.random.key(0), 256)
  for exact in (False, True):
    noise = np.asarray(jax.vmap(
        lambda k, e=exact: sim.beat_noise(f, k, exact=e))(keys))
    hf = np.diff(noise[..., [0, 1] + list(range(6, 12))], axis=1)
    # EMG RMS ~ U(0, 0.03) per record: E[rms^2] = 0.03^2 / 3; diff doubles it.
    rms = np.sqrt(np.mean(hf ** 2) / 2)
    assert 0.012 < rms < 0.022, (exact, rms)
    assert np.abs(noise).max() < 0.35


def _vcg(beat):
  """Exact dipole from the 8 independent leads (pinv of Dower)."""
  leads8 = beat[..., [0, 1, 6, 7, 8, 9, 10, 11]]
  return leads8 @ np.linalg.pinv(sim.DOWER.astype(np.float64)).T


def test_labels_recomputed_from_signal_agree_with_factor_labels():
  r = _records()
  f = r['factors']
  iso = np.asarray(jax.jit(jax.vmap(lambda x: sim.clean_beat(x, False)))(f))
  mag = np.linalg.norm(_vcg(iso), axis=-1)  # [n, 600]
  t = (np.arange(600) - 200) * 2.0
  rr = 60000 / f[:, 0]
  pr, qt = [], []
  for k in range(len(f)):
    # P onset: first crossing of 4.4 % of the P peak before QRS onset.
    p_region = mag[k, :200 - 5]
    p_on = np.argmax(p_region > 0.044 * p_region.max())
    # T end: last crossing of 4.4 % of the T peak after J + 40 ms.
    j = 200 + int(f[k, 3] / 2) + 20
    t_region = mag[k, j:]
    t_end = j + len(t_region) - 1 - np.argmax(
        t_region[::-1] > 0.044 * t_region.max())
    pr.append(-t[p_on])
    qt.append(t[t_end])
  pr, qt = np.array(pr), np.array(qt)
  qtc = qt / (rr / 1000) ** (1 / 3)
  lab = dict(zip(sim.LABEL_NAMES, r['labels'].T))
  np.testing.assert_allclose(pr, f[:, 1], atol=6)
  assert np.mean((pr > 200) == lab['av_block_1']) > 0.97
  assert np.mean((qtc >= 460) == lab['long_qt']) > 0.95
  assert np.mean((qtc <= 390) == lab['short_qt']) > 0.95

  # Voltage/axis/ST/T labels recomputed in NumPy from the sampled beat.
  qrs = (t[None] >= 0) & (t[None] <= f[:, 3:4])  # [n, 600]
  hi = np.where(qrs[..., None], iso, -np.inf).max(1)
  lo = np.where(qrs[..., None], iso, np.inf).min(1)
  rv, sv = np.maximum(hi, 0), np.maximum(-lo, 0)
  lvh = ((sv[:, L['V1']] + np.maximum(rv[:, L['V5']], rv[:, L['V6']]) >= 3.5)
         | (rv[:, L['aVL']] + sv[:, L['V3']] > 2.8))
  area = (iso * qrs[..., None]).sum(1)
  axis = np.rad2deg(np.arctan2(2 * area[:, L['aVF']] / np.sqrt(3),
                               area[:, L['I']]))
  low = ((hi - lo)[:, :6] < 0.5).all(1)
  assert np.mean(lvh == lab['lvh']) > 0.99
  assert np.mean((axis < -30) == lab['left_axis_deviation']) > 0.99
  assert np.mean((axis > 90) == lab['right_axis_deviation']) > 0.99
  assert np.mean(low == lab['low_qrs_voltage']) > 0.99
  # J-point level by linear interpolation of the sampled beat.
  j_pos = 200 + f[:, 3] / 2
  j0 = np.floor(j_pos).astype(int)
  w = (j_pos - j0)[:, None]
  rows = np.arange(len(f))
  st = (1 - w) * iso[rows, j0] + w * iso[rows, j0 + 1]
  thr = np.full(12, 0.1)
  thr[[L['V2'], L['V3']]] = 0.2
  groups = [[L[x] for x in g] for g in (('II', 'III', 'aVF'),
                                        ('I', 'aVL', 'V5', 'V6'),
                                        ('V1', 'V2', 'V3', 'V4'))]
  contiguous = lambda flags: np.any(
      [flags[:, g].sum(1) >= 2 for g in groups], axis=0)
  assert np.mean(contiguous(st >= thr) == lab['st_elevation']) > 0.98
  assert np.mean(contiguous(st <= -0.05) == lab['st_depression']) > 0.98


def _bbb_morphology(beat, qrsd):
  """AHA morphology on the isolated clean beat: (RBBB-like, LBBB-like)."""
  q = beat[200:200 + int(round(qrsd / 2)) + 1]
  term = q[int(0.6 * len(q)):]  # terminal 40 % of the QRS
  init = q[:11]  # first 20 ms
  i, v1, v6 = L['I'], L['V1'], L['V6']
  rbbb = (term[:, v1].max() > 0.1 and term[:, i].min() < -0.05
          and term[:, v6].min() < -0.05)
  lbbb = (init[:, i].min() > -0.05 and init[:, v6].min() > -0.05
          and -q[:, v1].min() > q[:, v1].max()
          and (q[:, v6] > 0).sum() * 2.0 >= 60)
  return rbbb, lbbb


def test_bundle_branch_block_morphology_rates():
  r = _records()
  f = r['factors']
  iso = np.asarray(jax.jit(jax.vmap(lambda x: sim.clean_beat(x, False)))(f))
  morph = np.array([_bbb_morphology(b, d) for b, d in zip(iso, f[:, 3])])
  lab = dict(zip(sim.LABEL_NAMES, r['labels'].T))
  # Wide QRS without a conduction delay: the morphology must be rarer.
  plain = (np.abs(f[:, sim.FACTOR_INDEX['conduction']]) < 0.2) & (
      f[:, 3] >= 120)
  assert lab['rbbb'].sum() > 50 and lab['lbbb'].sum() > 50
  assert morph[lab['rbbb'], 0].mean() >= 0.92  # prototype 98.5 %
  assert morph[lab['lbbb'], 1].mean() >= 0.85  # prototype 93 %
  assert morph[plain, 0].mean() < 0.5 * morph[lab['rbbb'], 0].mean()
  assert morph[plain, 1].mean() < 0.5 * morph[lab['lbbb'], 1].mean()


def test_label_prevalences_near_domain_prototype():
  r = _records()
  prev = dict(zip(sim.LABEL_NAMES, r['labels'].mean(0)))
  expected = dict(sinus_bradycardia=.19, sinus_tachycardia=.26,
                  av_block_1=.33, lbbb=.095, rbbb=.09, ivcd=.30, long_qt=.29,
                  short_qt=.21, left_axis_deviation=.23,
                  right_axis_deviation=.14, lvh=.30, st_elevation=.29,
                  st_depression=.36, t_wave_inversion=.26)
  for name, p in expected.items():
    assert abs(prev[name] - p) < 0.05, (name, prev[name], p)
  assert prev['low_qrs_voltage'] < 0.05


@pytest.mark.parametrize('mode,survival_model', [
    ('uniform', 'age_sex'), ('uniform', 'ecg_only'),
    ('realistic', 'age_sex'), ('realistic', 'ecg_only')])
def test_one_year_mortality_is_calibrated_on_a_fresh_sample(mode,
                                                             survival_model):
  lam = sim.calibrate_lambda(mode, survival_model=survival_model)
  n = sim.REFERENCE_SAMPLE_SIZE
  k_f, k_ef, k_s = jax.random.split(jax.random.key(777), 3)
  f = sim.sample_factors(k_f, n, mode)
  ef = jax.vmap(sim.ejection_fraction)(f, jax.random.split(k_ef, n))
  covariates = {}
  if survival_model == 'age_sex':
    age, sex = sim.sample_covariates(jax.random.key(778), n)
    covariates = dict(age=age, sex=sex)
  eta = sim.risk_score(f, ef, **covariates)
  # No censoring: the fraction of event times within one year.
  t_event, _ = sim.survival(eta, k_s, lam, censor_rate=1e-9,
                            max_follow_up=np.inf)
  mortality = float(np.mean(np.asarray(t_event) <= 1.0))
  assert 0.09 <= mortality <= 0.11
  # With the default censoring, Kaplan-Meier recovers it too.
  lifelines = pytest.importorskip('lifelines')
  time, event = sim.survival(eta, k_s, lam)
  km = lifelines.KaplanMeierFitter().fit(np.asarray(time), np.asarray(event))
  assert 0.09 <= 1 - float(km.predict(1.0)) <= 0.11
  reduced = float(np.mean(np.asarray(ef) <= 35))
  print(f'{mode}/{survival_model}: 1-year mortality {mortality:.3f}, '
        f'reduced-EF prevalence {reduced:.3f}, lambda {lam:.4f}')
  if mode == 'uniform':
    assert 0.05 < reduced < 0.15  # prototype 9 %


def test_ecg_only_lambda_is_the_one_used_before_age_and_sex():
  # calibrate_lambda('uniform') before the covariates: 0.060404598434048516.
  np.testing.assert_allclose(
      sim.calibrate_lambda('uniform', survival_model='ecg_only'),
      0.060404598434048516, rtol=1e-6)
  # Older people and men die sooner, so the age_sex baseline is lower.
  assert (sim.calibrate_lambda('uniform')
          < 0.8 * sim.calibrate_lambda('uniform', survival_model='ecg_only'))
  with pytest.raises(ValueError, match='survival_model'):
    sim.calibrate_lambda('uniform', survival_model='age')


def test_covariates_leave_every_other_stream_unchanged():
  key = jax.random.key(11)
  new = sim.simulate_records(key, 4, strips=True)
  old = sim.simulate_records(key, 4, strips=True,
                             survival_model='ecg_only')
  assert sim.STREAMS[:5] == ('factors', 'noise', 'ef', 'survival', 'strip')
  for name in new:
    if name in ('time', 'event'):
      continue
    jax.tree.map(np.testing.assert_array_equal, new[name], old[name])
  assert not np.array_equal(new['time'], old['time'])
  # Golden values of records 0-3 from the simulator before age and sex
  # (factors hr, qrs_dur, qtc; EF; time and event; beat II at sample 250;
  # strip V2 at sample 1000): 'ecg_only' reproduces them.
  np.testing.assert_allclose(old['factors'][:, [0, 3, 4]], [
      [73.9627, 130.1639, 425.2867], [49.660892, 101.48407, 388.40436],
      [113.99259, 112.29118, 433.96152], [99.18173, 80.976654, 364.61188]],
                             rtol=1e-6)
  np.testing.assert_allclose(old['ef'],
                             [38.25725, 42.040684, 50.669376, 47.278294],
                             rtol=1e-6)
  np.testing.assert_allclose(old['time'], [5.0, 5.0, 2.5308988, 1.0724962],
                             rtol=1e-5)
  np.testing.assert_array_equal(old['event'], [False, False, True, False])
  np.testing.assert_allclose(
      old['beat'][:, 250, 1],
      [0.4621071, -0.023056675, -0.03628864, 0.011693259], atol=1e-6)
  np.testing.assert_allclose(
      old['strip'][:, 1000, 7],
      [-0.0015645443, 0.029085446, -0.01609005, 0.037275568], atol=1e-6)
  # Age and sex come from the record's own 'covariates' stream.
  for i in range(4):
    age, sex = sim.sample_covariates(
        sim.record_keys(jax.random.fold_in(key, i))['covariates'], 1)
    np.testing.assert_allclose(new['age'][i], age[0], rtol=1e-6)
    assert new['sex'][i] == sex[0]
  assert new['age'].dtype == np.float32 and new['sex'].dtype == np.int32


_COX_FIELDS = ('factors', 'ef', 'age', 'sex', 'time', 'event')


@functools.lru_cache(maxsize=None)
def _outcome_records(survival_model='age_sex', n=20_000, seed=0):
  return sim.simulate_records(jax.random.key(seed), n, fields=_COX_FIELDS,
                              survival_model=survival_model)


def test_age_and_sex_distribution_and_independence_of_the_factors():
  r = _outcome_records()
  assert set(r) == set(_COX_FIELDS)
  age, male = r['age'], r['sex']
  assert age.min() >= 18.0 and age.max() <= 95.0
  assert (age == 18.0).any() and (age == 95.0).any()  # clipped, not cut
  assert abs(age.mean() - 62.0) < 0.4 and abs(age.std() - 14.0) < 0.3
  assert set(np.unique(male)) == {0, 1} and abs(male.mean() - 0.5) < 0.015
  # Independent of the factors, of EF and of each other: at n = 20k a
  # correlation has sd 0.007.
  columns = np.column_stack([r['factors'], r['ef'], male])
  for name, x in (('age', age), ('sex', male)):
    corr = np.array([np.corrcoef(x, c)[0, 1] for c in columns.T])
    if name == 'sex':
      corr = corr[:-1]
    assert np.abs(corr).max() < 0.03, (name, corr)


def _cox_fit(r):
  """Cox model on the generating covariates; summary indexed by _TRUE_LOG_HR."""
  import lifelines  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  f, idx = r['factors'].astype(np.float64), sim.FACTOR_INDEX
  table = pd.DataFrame(dict(
      qrs_dur=(f[:, idx['qrs_dur']] - 100) / 10,
      qtc=(f[:, idx['qtc']] - 440) / 10,
      hr=(f[:, idx['hr']] - 70) / 10,
      ef=(50 - r['ef'].astype(np.float64)) / 10,
      age=(r['age'].astype(np.float64) - 62) / 10,
      male=r['sex'].astype(np.float64),
      time=r['time'].astype(np.float64), event=r['event']))
  cph = lifelines.CoxPHFitter().fit(table, 'time', 'event')
  return cph.summary.loc[list(_TRUE_LOG_HR)]


# eta of simulator.risk_score (ECG_DOMAIN.md sections 4 and 4a), per unit of
# the Cox covariates of _cox_fit.
_TRUE_LOG_HR = dict(qrs_dur=0.15, qtc=0.10, hr=0.15, ef=0.25, age=0.55,
                    male=0.30)
# Six intervals at once: Bonferroni, simultaneous coverage 95 %.
_Z_95_OF_6 = 2.638


def test_cox_model_recovers_the_generating_log_hazard_ratios():
  # k = 1: exponential times, censoring independent of the covariates, so the
  # Cox model on the covariates of eta is correctly specified.
  s = _cox_fit(_outcome_records())
  true = np.array(list(_TRUE_LOG_HR.values()))
  coef, se = s['coef'].to_numpy(), s['se(coef)'].to_numpy()
  print(s[['coef', 'coef lower 95%', 'coef upper 95%', 'se(coef)']])
  assert np.all(np.abs(coef - true) <= _Z_95_OF_6 * se), (coef, true, se)
  assert se.max() < 0.03  # precise enough to tell 0.55 and 0.30 from 0
  # The old draw on the same records: age and sex have no effect.
  s_old = _cox_fit(_outcome_records('ecg_only'))
  true_old = np.where(np.isin(list(_TRUE_LOG_HR), ['age', 'male']), 0.0, true)
  coef, se = s_old['coef'].to_numpy(), s_old['se(coef)'].to_numpy()
  assert np.all(np.abs(coef - true_old) <= _Z_95_OF_6 * se), (coef, se)


def test_risk_score_covariates():
  f = sim.default_factors()[None].repeat(3, 0)
  ef = jnp.array([50.0, 50.0, 50.0])
  age, male = jnp.array([62.0, 72.0, 62.0]), jnp.array([0, 0, 1])
  base = sim.risk_score(f, ef)
  eta = sim.risk_score(f, ef, age=age, sex=male)
  np.testing.assert_allclose(eta - base, [0.0, 0.55, 0.30], atol=1e-6)
  with pytest.raises(ValueError, match='age and sex'):
    sim.risk_score(f, ef, age=age)
  with pytest.raises(ValueError, match='survival_model'):
    sim.simulate_records(jax.random.key(0), 2, fields=('time',),
                         survival_model='nope')


def test_strip_fiducials_and_template_sum():
  f = sim.default_factors().at[0].set(75.0)
  s = jax.jit(sim.simulate_strip)(f, jax.random.key(1))
  onsets = np.asarray(s['qrs_onsets'])
  n = int(s['num_beats'])
  assert np.all(onsets[:n] >= 0) and np.all(onsets[n:] == -1)
  assert abs(n - 75 / 6) <= 2
  rr = np.diff(onsets[:n]) * 2.0
  assert abs(rr.mean() - 800) < 40 and rr.std() > 0  # 5 % RR variability
  # Away from the edges, the clean strip around an onset equals the
  # isolated beat plus its neighbours at the actual RR intervals.
  k = n // 2
  t = (np.arange(-100, 250)) * 2.0
  offsets = (onsets[k - 1:k + 2] - onsets[k]) * 2.0
  want = sim._render(jnp.asarray(t), f, jnp.asarray(offsets))
  got = np.asarray(s['clean'])[onsets[k] - 100:onsets[k] + 250]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_relevance_masks_sit_on_the_right_waves():
  f = sim.default_factors()
  t = np.arange(600)
  for name, lo, hi in (('pr', 100, 185), ('qrs_dur', 200, 260),
                       ('qtc', 290, 420), ('t_amp', 250, 420)):
    mask = np.asarray(sim.relevance_mask(f, name)).any(axis=1)
    assert mask.any(), name
    assert t[mask].min() >= lo and t[mask].max() <= hi, (name, t[mask].min(),
                                                         t[mask].max())


def test_realistic_sampler_is_mostly_normal():
  u = _records()
  r = _records(mode='realistic')
  normal_u = np.mean(~u['labels'].any(1))
  normal_r = np.mean(~r['labels'].any(1))
  assert normal_u < 0.05 and normal_r > 0.25
  with pytest.raises(ValueError, match='mode'):
    sim.sample_factors(jax.random.key(0), 2, mode='nope')


def test_measures_are_the_named_measurements_in_physical_units():
  recs = sim.simulate_records(jax.random.key(4), 16,
                              fields=('factors', 'measurements', 'measures'))
  m, got = recs['measurements'], recs['measures']
  assert got.shape == (16, sim.NUM_MEASURES) and got.dtype == np.float32
  assert len(sim.MEASURE_NAMES) == len(sim.MEASURE_UNITS) == 9
  v5 = L['V5']
  expected = np.stack([
      m['hr_bpm'], m['pr_ms'], m['qrs_ms'], m['qt_ms'], m['qtc_bazett_ms'],
      m['r_amp'][:, v5], m['t_amp'][:, v5], m['st_j'][:, v5],
      m['qrs_axis_deg']], axis=1)
  np.testing.assert_array_equal(got, expected)
  # QTc is Bazett's: QT / sqrt(RR in s), HR and intervals as the factors.
  f = recs['factors']
  rr_s = 60.0 / f[:, sim.FACTOR_INDEX['hr']]
  np.testing.assert_allclose(got[:, 4], got[:, 3] / np.sqrt(rr_s), rtol=1e-5)
  np.testing.assert_allclose(got[:, 0], f[:, sim.FACTOR_INDEX['hr']])
  np.testing.assert_allclose(got[:, 2], f[:, sim.FACTOR_INDEX['qrs_dur']])
  # Asked for alone, the same bits; a single record carries them too.
  alone = sim.simulate_records(jax.random.key(4), 16, fields=('measures',))
  assert set(alone) == {'measures'}
  np.testing.assert_array_equal(alone['measures'], got)
  one = sim.simulate_record(jax.random.fold_in(jax.random.key(4), 2))
  np.testing.assert_allclose(one['measures'], got[2], rtol=1e-5, atol=1e-6)
