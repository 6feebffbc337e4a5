"""Median-beat throughput: factorecg_jax (batched JAX) vs a NeuroKit2 pipeline.

Both pipelines run on the same simulated 10-s, 500 Hz, 12-lead strips in one
process; the script prints ECGs per second for each, their ratio, and how well
the two sets of median beats agree (per-lead Pearson correlation after one
shift per record, searched over +-120 ms).

The NeuroKit2 reference, per record: each lead band-passed with
`nk.signal_filter` (Butterworth order 5, 0.5-150 Hz, zero-phase: the first
stage of `nk.ecg_clean` without its 50 Hz moving average, which smooths the
QRS by 20 ms); the lead with the tallest R cleaned with `nk.ecg_clean` and
fed to `nk.ecg_peaks`; the median over 600-sample windows around its R peaks.
`--nk_clean_all_leads` times the literal `nk.ecg_clean` on all 12 leads
instead (slower, so the ratio grows).

Run: .venv/bin/python experiments/benchmarks/median_beat_bench.py
     [--num_ecgs=200] [--repeats=3]
On a shared 2-core CPU, 200 ECGs take about a minute in all, mostly NeuroKit2.
"""

import time
import warnings

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import neurokit2 as nk
import numpy as np

from factorecg_jax.data import median_beat
from factorecg_jax.data import simulator

import bench_report  # pylint: disable=g-bad-import-order

_NUM_ECGS = flags.DEFINE_integer('num_ecgs', 200, 'ECGs in the batch.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed JAX calls (best kept).')
_SEED = flags.DEFINE_integer('seed', 0, 'Simulator seed.')
_MODE = flags.DEFINE_enum(
    'mode', 'realistic', ['realistic', 'uniform'], 'Factor sampler.'
)
_NK_CLEAN_ALL = flags.DEFINE_bool(
    'nk_clean_all_leads', False, 'Reference uses nk.ecg_clean on all leads.'
)

PRE, POST = 300, 300  # NeuroKit2 windows around its R peak, samples.


def simulate(n: int, seed: int, mode: str) -> np.ndarray:
  """[n, 5000, 12] float32 noisy strips from the project's simulator."""
  key = jax.random.key(seed)
  factors = simulator.sample_factors(jax.random.fold_in(key, 1), n, mode)
  keys = jax.random.split(jax.random.fold_in(key, 2), n)
  strips = jax.jit(jax.vmap(simulator.simulate_strip))(factors, keys)
  return np.asarray(strips['ecg'])


def neurokit_median_beat(ecg: np.ndarray, clean_all: bool) -> np.ndarray:
  """[5000, 12] -> [600, 12] median beat, R peak at sample PRE (NaN if none)."""
  fs = simulator.FS
  if clean_all:
    leads = [nk.ecg_clean(ecg[:, i], sampling_rate=fs) for i in range(12)]
  else:
    leads = [
        nk.signal_filter(
            ecg[:, i], sampling_rate=fs, lowcut=0.5, highcut=150.0,
            method='butterworth', order=5,
        )
        for i in range(12)
    ]
  filtered = np.stack(leads, axis=1)
  lead = np.argmax(filtered.max(0) - np.median(filtered, 0))
  detect = nk.ecg_clean(ecg[:, lead], sampling_rate=fs)
  _, info = nk.ecg_peaks(detect, sampling_rate=fs)
  peaks = np.asarray(info['ECG_R_Peaks'], int)
  peaks = peaks[(peaks >= PRE) & (peaks + POST <= ecg.shape[0])]
  if not len(peaks):
    return np.full((PRE + POST, 12), np.nan, np.float32)
  windows = filtered[peaks[:, None] + np.arange(-PRE, POST)[None]]
  return np.median(windows, axis=0)


def aligned_correlation(beat: np.ndarray, ref: np.ndarray, max_lag: int = 60):
  """Per-lead correlation of beat [600, 12] with ref [600, 12] at the best lag.

  One lag per record (the one maximising the mean over leads) within
  +-max_lag samples, comparing the overlapping parts.
  """
  best = None
  for lag in range(-max_lag, max_lag + 1):
    lo, hi = max(0, -lag), min(len(beat), len(ref) - lag)
    a, b = beat[lo:hi], ref[lo + lag : hi + lag]
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0)) + 1e-12
    corr = (a * b).sum(0) / den
    if best is None or corr.mean() > best.mean():
      best = corr
  return best


def main(argv):
  del argv
  warnings.filterwarnings('ignore')
  n = _NUM_ECGS.value
  print(f'devices: {jax.devices()}')
  ecg = simulate(n, _SEED.value, _MODE.value)
  print(f'{n} simulated ECGs ({_MODE.value}), {ecg.shape}')

  x = jnp.asarray(ecg)
  start = time.perf_counter()
  out = jax.block_until_ready(median_beat.extract_median_beats(x))
  first = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    out = jax.block_until_ready(median_beat.extract_median_beats(x))
    times.append(time.perf_counter() - start)
  jax_time = min(times)
  beats = np.asarray(out['beat'])

  start = time.perf_counter()
  refs = [neurokit_median_beat(e, _NK_CLEAN_ALL.value) for e in ecg]
  nk_time = time.perf_counter() - start

  # Line up the R peaks (PRE in the NeuroKit2 beat), then search the lag.
  corr = []
  for beat, ref, r in zip(beats, refs, np.asarray(out['r_peak'])):
    if np.isnan(ref).any():
      corr.append(np.full(12, np.nan))
      continue
    start = PRE - int(r)
    lo, hi = max(0, -start), min(len(beat), len(ref) - start)
    corr.append(aligned_correlation(beat[lo:hi], ref[lo + start : hi + start]))
  corr = np.array(corr)
  valid = ~np.isnan(corr).any(1)

  print(f'JAX first call (compile + run): {first:.2f} s')
  print(f'JAX: {jax_time:.3f} s for {n} ECGs = {n / jax_time:.1f} ECGs/s '
        f'(best of {len(times)}: {", ".join(f"{t:.3f}" for t in times)})')
  print(f'NeuroKit2: {nk_time:.2f} s for {n} ECGs = {n / nk_time:.1f} ECGs/s'
        f' (clean all leads: {_NK_CLEAN_ALL.value})')
  print(f'speed-up (JAX / NeuroKit2 throughput): {nk_time / jax_time:.1f}x')
  print(f'NeuroKit2 found no beat in {np.sum(~valid)} ECGs')
  print(f'per-lead correlation JAX vs NeuroKit2 median beats: median '
        f'{np.median(corr[valid]):.4f}, 5th percentile '
        f'{np.percentile(corr[valid], 5):.4f}, records with every lead >= '
        f'0.98: {np.mean(corr[valid].min(1) >= 0.98):.1%}')
  bench_report.write('median_beat_bench', dict(
      num_ecgs=n, mode=_MODE.value, jax_first_call_s=first,
      jax_s=jax_time, jax_ecgs_per_s=n / jax_time, neurokit2_s=nk_time,
      neurokit2_ecgs_per_s=n / nk_time, speedup=nk_time / jax_time,
      neurokit2_no_beat=int(np.sum(~valid)),
      correlation_median=float(np.median(corr[valid])),
      correlation_p5=float(np.percentile(corr[valid], 5)),
      fraction_all_leads_ge_0_98=float(np.mean(corr[valid].min(1) >= 0.98))))


if __name__ == '__main__':
  app.run(main)
