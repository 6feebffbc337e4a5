"""Vectorised median-beat extraction from 12-lead ECG strips, in pure JAX.

A strip of any length and sampling rate becomes one 600-sample median beat
at 500 Hz, with fixed shapes throughout so that `jax.jit` and `jax.vmap` apply
and thousands of records run in one call. Per record, the steps are:

1. Resample to 500 Hz and filter, both in the frequency domain (one real FFT
   of the input, one inverse FFT per output band). The ends of the strip are
   joined by a straight line first so the periodic extension has no jump.
   Filters are zero-phase Butterworth magnitudes applied twice (as `filtfilt`):
   the beat band (0.5-150 Hz plus 50/60 Hz notches) keeps the morphology; the
   detection band (5-25 Hz, differentiated) keeps the QRS slopes.
2. Detection energy: per lead, the squared derivative in the detection band
   divided by its mean (so no lead dominates by gain or by one artefact),
   summed over leads and smoothed by an 80 ms moving average.
3. Beats: local maxima of the energy within +-250 ms (the refractory period,
   via a linear-time sliding maximum) above a threshold of 0.2 x the 3rd
   largest such maximum, packed into a fixed number of slots (-1 if empty).
4. Alignment: each beat is shifted (+-20 ms) to the lag that best matches a
   first template (the median QRS, +-40 ms) by cross-correlation over the
   eight independent leads.
5. Fiducials on the median QRS: the R peak is the maximum of the 12-lead
   power (sum of squares), the QRS onset is where the spatial velocity (norm of
   the 12-lead derivative) last rises through `ONSET_FRACTION` of its QRS
   maximum before the upstroke to the R peak.
6. Sample-wise median over the first `MEDIAN_BEATS` valid beats (windows that
   leave the strip are NaN there and ignored), with a min/max sorting network;
   the baseline is set to zero just before the QRS onset.

Every record gets quality flags (beat count, RR statistics, NaN, flat and
saturated leads, a per-lead noise estimate) so a caller can skip unusable ones.

Output alignment: by default (`align='onset'`) the estimated QRS onset is at
sample `QRS_ONSET` = 200, as in FactorECG median beats and the simulator;
with `align='r_peak'` the R peak is at sample `R_PEAK` = 220 instead. The R
peaks reported per beat are sample indices of the 500 Hz resampled strip.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FS = 500  # Hz, output sampling rate.
BEAT_LEN = 600  # samples of the median beat (1.2 s).
QRS_ONSET = 200  # sample of the QRS onset in the beat when align='onset'.
R_PEAK = 220  # sample of the R peak in the beat when align='r_peak'.
NUM_LEADS = 12

BEAT_BAND = (0.5, 150.0)  # Hz, morphology band (zero-phase).
NOTCH_HZ = (50.0, 60.0)  # Hz, powerline notches (+-1 Hz).
DETECT_BAND = (5.0, 25.0)  # Hz, QRS detection band.
DETECT_DECIMATION = 4  # beats are found at 500 / 4 = 125 Hz ...
DETECT_RATE = FS / DETECT_DECIMATION  # ... then aligned at 500 Hz.
SMOOTH_MS = 80  # moving average of the detection energy.
REFRACTORY_MS = 250  # minimum RR; also the non-maximum suppression radius.
THRESHOLD_FRACTION = 0.2  # of the 3rd-largest energy peak.
LAG_MS = 20  # largest cross-correlation shift of a beat.
QRS_HALF_MS = 40  # half width of the cross-correlation window.
# Independent leads I, II, V1-V6 (the other four are their combinations).
INDEPENDENT_LEADS = (0, 1, 6, 7, 8, 9, 10, 11)
R_SEARCH_MS = 60  # R peak searched this far from the aligned energy peak.
ONSET_SEARCH_MS = 120  # QRS onset searched this far before the R peak.
ONSET_FRACTION = 0.04  # of the QRS spatial-velocity maximum.
FLAT_MV = 0.02  # a lead whose peak-to-peak is below this is flat.
# A lead is saturated when runs of >= 10 ms pinned at its max or min cover
# >= 0.5 % of the strip (50 ms of 10 s).
SATURATION_RUN_MS = 10
SATURATION_FRACTION = 0.005
MIN_BEATS = 4  # fewer detected beats than this marks a record unusable.
MIN_SNR = 2.0  # median over leads of beat RMS / noise_mv for a usable record.
# Beats entering a median (the first ones; 24 in 10 s is 144 bpm). A sorting
# network over more slots spills registers and runs ~10x slower on CPU.
MEDIAN_BEATS = 24
PAD = BEAT_LEN  # NaN margin around the strip for window extraction.
CPU_CHUNK_SIZE = 8  # records per vectorised step on CPU (cache-sized).


def _butter_gain(freq, cutoff, order, highpass):
  """Zero-phase Butterworth gain |H|^2 (filtfilt of order `order`)."""
  ratio = cutoff / np.maximum(freq, 1e-6) if highpass else freq / cutoff
  return 1.0 / (1.0 + ratio ** (2 * order))


def _resample_filter(ecg, fs: float, n_out: int):
  """Resamples [12, n] at `fs` Hz in the beat and detection bands.

  Returns:
    beat: [12, n_out] float32 mV at 500 Hz, beat band.
    slope: [12, n_out // DETECT_DECIMATION] float32 mV/s at DETECT_RATE, the
      derivative in the detection band.
  """
  n_in = ecg.shape[-1]
  n_det = n_out // DETECT_DECIMATION
  # Remove the line joining both ends so the FFT's periodic extension is
  # continuous (no ringing from a jump at the wrap-around).
  ramp = jnp.linspace(0.0, 1.0, n_in)
  ecg = ecg - (ecg[:, :1] + ramp * (ecg[:, -1:] - ecg[:, :1]))
  spectrum = jnp.fft.rfft(ecg, axis=-1)
  # Output bin k is input bin k (both at fs / n_in Hz); beyond either
  # Nyquist frequency there is nothing to copy.
  n_bins = min(n_in // 2, n_out // 2) + 1
  freq = np.arange(n_bins) * fs / n_in
  beat = _butter_gain(freq, BEAT_BAND[0], 2, True)
  beat *= _butter_gain(freq, BEAT_BAND[1], 4, False)
  for f0 in NOTCH_HZ:
    beat *= 1.0 - np.exp(-0.5 * ((freq - f0) / 0.5) ** 2)
  beat_sig = jnp.fft.irfft(
      spectrum[:, :n_bins] * (beat * n_out / n_in).astype(np.complex64),
      n=n_out,
      axis=-1,
  )
  n_bins = min(n_in // 2, n_det // 2) + 1
  freq = freq[:n_bins]
  detect = _butter_gain(freq, DETECT_BAND[0], 2, True)
  detect *= _butter_gain(freq, DETECT_BAND[1], 4, False)
  # The derivative, in mV per second.
  detect = detect * 1j * 2 * np.pi * freq * n_det / n_in
  slope = jnp.fft.irfft(
      spectrum[:, :n_bins] * detect.astype(np.complex64), n=n_det, axis=-1
  )
  return beat_sig, slope


def _moving_average(x, width: int):
  """Centred moving average along the last axis (zero padded), via a cumsum."""
  half = width // 2
  pad = [(0, 0)] * (x.ndim - 1) + [(half + 1, half)]
  csum = jnp.cumsum(jnp.pad(x, pad), axis=-1)
  return (csum[..., width:] - csum[..., :-width]) / width


def _sliding_max(x, radius: int):
  """max(x[t - radius : t + radius + 1]) for every t, in linear time.

  The van Herk / Gil-Werman scheme: prefix and suffix maxima inside blocks of
  the window length give any window's maximum from two lookups.
  """
  n = x.shape[0]
  width = 2 * radius + 1
  n_blocks = -(-(n + 2 * radius) // width)
  padded = jnp.full((n_blocks * width,), -jnp.inf, x.dtype)
  padded = padded.at[radius : radius + n].set(x)
  blocks = padded.reshape(n_blocks, width)
  prefix = jax.lax.cummax(blocks, axis=1).reshape(-1)
  suffix = jax.lax.cummax(blocks, axis=1, reverse=True).reshape(-1)
  start = jnp.arange(n)
  return jnp.maximum(suffix[start], prefix[start + width - 1])


def _gather_windows(padded, starts, length: int, valid):
  """Windows padded[:, PAD + s : PAD + s + length] as [k, c, length].

  Whole contiguous slices (XLA copies each as a block, far faster on CPU than
  an element-wise gather); the NaN margins of `padded` fill what lies outside
  the strip and invalid slots are all NaN.

  Args:
    padded: [c, PAD + n + PAD] float32, the strip between NaN margins.
    starts: [k] int32 window starts in strip samples, within +-PAD.
    length: static window length (<= PAD).
    valid: [k] bool.

  Returns:
    [k, c, length] float32.
  """
  slice_at = lambda s: jax.lax.dynamic_slice_in_dim(padded, s + PAD, length, 1)
  windows = jax.vmap(slice_at)(starts)
  return jnp.where(valid[:, None, None], windows, jnp.nan)


@functools.lru_cache(maxsize=None)
def _median_network(n: int) -> tuple[tuple[int, int], ...]:
  """Compare-exchange pairs that sort positions 0..n//2 of n values.

  Batcher's odd-even merge sort on the next power of two, less the pairs
  that touch padding (padding is +inf and never moves) and, working
  backwards, the pairs that cannot reach the lower half read by a median.
  """
  size = 1 << max(n - 1, 0).bit_length()
  pairs = []
  p = 1
  while p < size:
    k = p
    while k >= 1:
      for j in range(k % p, size - k, 2 * k):
        for i in range(min(k, size - j - k)):
          if (i + j) // (2 * p) == (i + j + k) // (2 * p):
            pairs.append((i + j, i + j + k))
      k //= 2
    p *= 2
  needed, kept = set(range(n // 2 + 1)), []
  for a, b in reversed([(a, b) for a, b in pairs if b < n]):
    if a in needed or b in needed:
      kept.append((a, b))
      needed |= {a, b}
  return tuple(reversed(kept))


def nanmedian_over_beats(windows: jax.Array) -> jax.Array:
  """Median over axis 0 ignoring NaN (NaN where all are NaN).

  A sorting network of elementwise min/max: XLA's comparator sort is about
  100x slower on CPU for the short axis (<= 40 beats) sorted here.

  Args:
    windows: [k, ...] float.

  Returns:
    [...] float, the mean of the two middle values for an even count.
  """
  count = jnp.sum(~jnp.isnan(windows), axis=0)
  values = list(jnp.where(jnp.isnan(windows), jnp.inf, windows))
  for a, b in _median_network(len(values)):
    values[a], values[b] = (
        jnp.minimum(values[a], values[b]),
        jnp.maximum(values[a], values[b]),
    )
  lo, hi = (count - 1) // 2, count // 2
  total = jnp.zeros_like(values[0])
  for i in range(len(values) // 2 + 1):
    total += jnp.where(lo == i, values[i], 0.0)
    total += jnp.where(hi == i, values[i], 0.0)
  return jnp.where(count > 0, 0.5 * total, jnp.nan)


def _ms(ms: float, rate: float = FS) -> int:
  """Milliseconds as a whole number of samples at `rate` Hz."""
  return int(round(ms * rate / 1000))


def _detect_peaks(energy, max_beats: int):
  """Energy peaks at least a refractory period apart, packed into slots.

  Args:
    energy: [n] float32, the smoothed multi-lead detection energy at
      DETECT_RATE.
    max_beats: static number of slots.

  Returns:
    peaks: [max_beats] int32 sample indices at 500 Hz, ascending, -1 padded.
    valid: [max_beats] bool.
  """
  radius = _ms(REFRACTORY_MS, DETECT_RATE)
  is_max = energy >= _sliding_max(energy, radius)
  heights = jnp.where(is_max, energy, 0.0)
  # The 3rd-largest local maximum is a beat height robust to two artefacts;
  # the mean guards strips with fewer than three beats.
  ref = jax.lax.top_k(heights, 3)[0][-1]
  threshold = jnp.maximum(THRESHOLD_FRACTION * ref, 0.5 * jnp.mean(energy))
  threshold = jnp.maximum(threshold, 1e-3)
  mask = is_max & (energy > threshold)
  (peaks,) = jnp.nonzero(mask, size=max_beats, fill_value=-1)
  valid = peaks >= 0
  peaks = jnp.where(valid, peaks * DETECT_DECIMATION, -1)
  return peaks.astype(jnp.int32), valid


def _align_to_template(signal, peaks, valid):
  """Shifts each peak to the lag best matching the median QRS.  [k] -> [k]."""
  lag, half = _ms(LAG_MS), _ms(QRS_HALF_MS)
  length = 2 * half + 1
  signal = signal[np.array(INDEPENDENT_LEADS)]
  windows = _gather_windows(signal, peaks - half - lag, length + 2 * lag, valid)
  template = nanmedian_over_beats(windows[:MEDIAN_BEATS, :, lag : lag + length])
  template = jnp.nan_to_num(template - jnp.nanmean(template, axis=-1)[:, None])
  # Cross-correlation summed over leads: [k, 8, length + 2 lag] against a
  # [1, 8, length] kernel gives [k, 1, 2 lag + 1] scores.
  scores = jax.lax.conv_general_dilated(
      jnp.nan_to_num(windows),
      template[None],
      window_strides=(1,),
      padding='VALID',
  )[:, 0]
  return peaks + jnp.argmax(scores, axis=1).astype(jnp.int32) - lag


# The median QRS spans these samples before and after the aligned peak: the
# searches below plus a margin for the smoothing at the window edges.
QRS_PRE = _ms(R_SEARCH_MS) + _ms(ONSET_SEARCH_MS) + 6
QRS_POST = 2 * _ms(R_SEARCH_MS) + 6


def _qrs_fiducials(qrs):
  """R peak and QRS onset in the median QRS around the aligned peak.

  Args:
    qrs: [12, QRS_PRE + 1 + QRS_POST] median beat, the aligned energy peak at
      sample QRS_PRE.

  Returns:
    (r, onset): int32 sample offsets relative to the aligned peak.
  """
  t = jnp.arange(qrs.shape[-1]) - QRS_PRE
  qrs = jnp.nan_to_num(qrs)
  power = jnp.sum(qrs**2, axis=0)
  r = t[jnp.argmax(jnp.where(jnp.abs(t) <= _ms(R_SEARCH_MS), power, -1.0))]
  smooth = _moving_average(qrs, 5)
  velocity = jnp.sqrt(jnp.sum(jnp.gradient(smooth, axis=-1) ** 2, axis=0))
  near_r = jnp.abs(t - r) <= _ms(R_SEARCH_MS)
  level = ONSET_FRACTION * jnp.max(jnp.where(near_r, velocity, 0.0))
  # The velocity vanishes at the R apex itself, so search back from the
  # steepest point of the upstroke: the onset follows its last quiet sample.
  upstroke = (t <= r) & (t >= r - _ms(R_SEARCH_MS))
  steepest = t[jnp.argmax(jnp.where(upstroke, velocity, -1.0))]
  before = (t <= steepest) & (t >= r - _ms(ONSET_SEARCH_MS))
  quiet = before & (velocity < level)
  onset = jnp.max(jnp.where(quiet, t, r - _ms(ONSET_SEARCH_MS) - 1)) + 1
  return r.astype(jnp.int32), onset.astype(jnp.int32)


def _clipped(ecg, level, tol, width: int, min_runs: float):
  """[c] bool: the leads of [c, n] held at `level` [c] as by a clipping amp.

  Clipping holds a lead at one extreme for whole runs of samples and jumps
  into and out of such a run. A smooth peak touches its maximum for a sample
  or two; a noise-free lead may rest at its extreme (isoelectric line, ST
  plateau) but glides into that level, so the abrupt run edges tell the two
  apart.
  """
  n = ecg.shape[-1]
  off = jnp.abs(ecg - level[:, None])
  pinned = off <= tol[:, None]
  run = pinned[:, : n - width + 1]
  for i in range(1, width):
    run = run & pinned[:, i : n - width + 1 + i]
  away = off > 10 * tol[:, None]  # clearly off the level
  # Runs entered straight from away, or left straight to away.
  jumps = jnp.sum(run[:, 1:] & away[:, : n - width], axis=-1)
  jumps += jnp.sum(run[:, :-1] & away[:, width:], axis=-1)
  return (jnp.sum(run, axis=-1) >= min_runs) & (jumps >= 2)


def _quality_inputs(ecg, nan, fs: float):
  """Per-lead flags of [12, n] (NaNs filled, `nan` marks them)."""
  hi, lo = jnp.max(ecg, axis=-1), jnp.min(ecg, axis=-1)
  ptp = hi - lo
  tol = 1e-6 + 1e-3 * ptp
  width = max(3, int(round(SATURATION_RUN_MS * fs / 1000)))
  min_runs = SATURATION_FRACTION * ecg.shape[-1]
  clipped = _clipped(ecg, hi, tol, width, min_runs)
  clipped |= _clipped(ecg, lo, tol, width, min_runs)
  flat = ptp < FLAT_MV
  return dict(
      nan_fraction=jnp.mean(nan, axis=-1),
      flat_leads=flat,
      saturated_leads=~flat & clipped,
  )


def _extract_one(ecg, fs: float, align: str, max_beats: int):
  """Median beat of one record [n, 12].  See `extract_median_beats`."""
  n_out = int(round(ecg.shape[0] * FS / fs))
  # Leads first: every filter, window and shift below runs along the
  # contiguous time axis.
  ecg = ecg.astype(jnp.float32).T
  nan = jnp.isnan(ecg)
  count = jnp.maximum(jnp.sum(~nan, axis=-1), 1)
  fill = jnp.sum(jnp.where(nan, 0.0, ecg), axis=-1) / count
  ecg = jnp.where(nan, fill[:, None], ecg)
  quality = _quality_inputs(ecg, nan, fs)

  beat_sig, slope = _resample_filter(ecg, fs, n_out)
  energy = slope**2
  energy = energy / (jnp.mean(energy, axis=-1, keepdims=True) + 1e-10)
  smooth = _ms(SMOOTH_MS, DETECT_RATE) | 1
  energy = _moving_average(jnp.sum(energy, axis=0), smooth)
  beat_sig = jnp.pad(beat_sig, ((0, 0), (PAD, PAD)), constant_values=jnp.nan)

  peaks, valid = _detect_peaks(energy, max_beats)
  aligned = _align_to_template(beat_sig, peaks, valid)
  first, first_valid = aligned[:MEDIAN_BEATS], valid[:MEDIAN_BEATS]
  qrs_len = QRS_PRE + 1 + QRS_POST
  qrs = nanmedian_over_beats(
      _gather_windows(beat_sig, first - QRS_PRE, qrs_len, first_valid)
  )
  r, onset = _qrs_fiducials(qrs)

  anchor, target = (onset, QRS_ONSET) if align == 'onset' else (r, R_PEAK)
  windows = _gather_windows(
      beat_sig, first + anchor - target, BEAT_LEN, first_valid
  )
  median = nanmedian_over_beats(windows)  # [12, 600]
  # Isoelectric level: the mean from 16 ms to 6 ms before the QRS onset.
  onset_in_beat = onset - anchor + target
  pre = jax.lax.dynamic_slice_in_dim(
      median, jnp.clip(onset_in_beat - 8, 0, BEAT_LEN - 6), 6, axis=-1
  )
  beat = median - jnp.nanmean(pre, axis=-1, keepdims=True)

  r_peaks = jnp.where(valid, aligned + r, -1)
  num_beats = jnp.sum(valid).astype(jnp.int32)
  rr = jnp.diff(r_peaks).astype(jnp.float32) * (1000.0 / FS)
  rr_valid = valid[1:] & valid[:-1]
  n_rr = jnp.maximum(jnp.sum(rr_valid), 1)
  rr_mean = jnp.sum(jnp.where(rr_valid, rr, 0.0)) / n_rr
  rr_var = jnp.sum(jnp.where(rr_valid, (rr - rr_mean) ** 2, 0.0)) / n_rr
  rr_max = jnp.max(jnp.where(rr_valid, rr, 0.0))

  # Noise: RMS of each beat minus the median within +-0.4 RR of the R peak
  # (farther out, neighbouring beats move with the RR and are not noise),
  # on every 4th sample, then the median over beats.
  t = jnp.arange(0, BEAT_LEN, 4)
  near = jnp.abs(t - (r - anchor + target)) < 0.4 * rr_mean * FS / 1000
  residual = jnp.where(near, windows[..., ::4] - median[:, ::4], jnp.nan)
  noise = nanmedian_over_beats(jnp.sqrt(jnp.nanmean(residual**2, axis=-1)))
  quality.update(
      num_beats=num_beats,
      rr_mean_ms=rr_mean,
      rr_std_ms=jnp.sqrt(rr_var),
      rr_irregularity=jnp.sqrt(rr_var) / jnp.maximum(rr_mean, 1.0),
      rr_max_ratio=rr_max / jnp.maximum(rr_mean, 1.0),
      noise_mv=jnp.nan_to_num(noise, nan=jnp.inf, posinf=jnp.inf),
  )
  # Averaging N unrelated windows (no ECG in the strip) leaves a median of
  # about noise / sqrt(N): its SNR stays near or below one.
  rms = jnp.sqrt(jnp.mean(jnp.nan_to_num(beat) ** 2, axis=-1))
  quality['snr'] = rms / jnp.maximum(quality['noise_mv'], 1e-6)
  quality['usable'] = (
      (num_beats >= MIN_BEATS)
      & (jnp.median(quality['snr']) >= MIN_SNR)
      & ~jnp.any(quality['flat_leads'])
      & ~jnp.any(quality['saturated_leads'])
      & ~jnp.any(nan)
  )
  return dict(
      beat=jnp.nan_to_num(beat).T,
      r_peaks=r_peaks.astype(jnp.int32),
      qrs_onset=onset_in_beat.astype(jnp.int32),
      r_peak=(r - anchor + target).astype(jnp.int32),
      quality=quality,
  )


def default_max_beats(n_samples: int, fs: float) -> int:
  """Beat slots: the most peaks a strip can hold at the refractory period."""
  n_det = int(round(n_samples * FS / fs)) // DETECT_DECIMATION
  return n_det // (_ms(REFRACTORY_MS, DETECT_RATE) + 1) + 1


@functools.partial(
    jax.jit, static_argnames=('fs', 'align', 'max_beats', 'chunk_size', 'mesh')
)
def extract_median_beats(
    ecg: jax.Array,
    fs: float = FS,
    align: str = 'onset',
    max_beats: int | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
  """Median beats and quality flags of a batch of 12-lead ECG strips.

  Args:
    ecg: [batch, n_samples, 12] float, mV, lead order I, II, III, aVR, aVL,
      aVF, V1-V6. NaNs are allowed (filled with the lead mean, and flagged).
    fs: input sampling rate in Hz (static); the output is at 500 Hz.
    align: 'onset' puts the estimated QRS onset at sample `QRS_ONSET` (200);
      'r_peak' puts the R peak at sample `R_PEAK` (220).
    max_beats: static number of beat slots; defaults to the most beats the
      strip can hold at a 250 ms refractory period (40 for 10 s).
    chunk_size: records vectorised together; chunks run one after another
      (`jax.lax.map`). Defaults to CPU_CHUNK_SIZE on CPU, where chunks that
      stay in cache run ~2x faster than one wide batch, and to the whole
      batch on accelerators.
    mesh: split the batch over all axes of this mesh, each device working on
      its own records (`jax.shard_map`). Pass it for sharded inputs: XLA does
      not partition FFTs along batch dimensions by itself (it gathers the
      whole batch on every device, and on CPU it fails outright).

  Returns:
    A dict:
      beat: [batch, 600, 12] float32 mV at 500 Hz, baseline zero before QRS.
      r_peaks: [batch, max_beats] int32, R peaks as sample indices of the
        strip resampled to 500 Hz, ascending, -1 padded.
      qrs_onset, r_peak: [batch] int32 samples of the two fiducials in `beat`.
      quality: dict of per-record arrays: num_beats [batch], rr_mean_ms,
        rr_std_ms, rr_irregularity (RR standard deviation / mean),
        rr_max_ratio (longest RR / mean, > 1.5 hints at a missed beat),
        nan_fraction [batch, 12], flat_leads [batch, 12] bool (peak-to-peak <
        0.02 mV), saturated_leads [batch, 12] bool (runs of >= 10 ms held at
        the lead's max or min, jumped into, covering >= 0.5 % of the strip),
        noise_mv [batch, 12] (median over beats of the RMS of beat - median
        beat; inf without beats), snr [batch, 12] (RMS of the median beat /
        noise_mv), usable [batch] bool (>= 4 beats, median SNR over leads
        >= 2, no flat, saturated or NaN lead).
  """
  if ecg.ndim != 3 or ecg.shape[-1] != NUM_LEADS:
    raise ValueError(f'ecg must be [batch, n, 12], got {ecg.shape}.')
  if align not in ('onset', 'r_peak'):
    raise ValueError(f'align must be onset or r_peak, got {align!r}.')
  if max_beats is None:
    max_beats = default_max_beats(ecg.shape[1], fs)
  one = functools.partial(
      _extract_one, fs=fs, align=align, max_beats=max_beats
  )

  def run(batch):
    size = chunk_size
    if size is None:
      cpu = jax.default_backend() == 'cpu'
      size = CPU_CHUNK_SIZE if cpu else batch.shape[0]
    if size >= batch.shape[0]:
      return jax.vmap(one)(batch)
    return jax.lax.map(one, batch, batch_size=size)

  if mesh is None:
    return run(ecg)
  if ecg.shape[0] % mesh.size:
    raise ValueError(
        f'batch {ecg.shape[0]} does not divide over {mesh.size} devices.'
    )
  rows = jax.P(mesh.axis_names)
  return jax.shard_map(run, mesh=mesh, in_specs=rows, out_specs=rows)(ecg)


def extract_median_beats_numpy(
    ecg: np.ndarray,
    fs: float = FS,
    *,
    chunk_size: int = 256,
    align: str = 'onset',
) -> dict[str, Any]:
  """Runs `extract_median_beats` over a large host array in fixed chunks.

  Every chunk has the same shape (the last is padded with zeros) so the
  function compiles once; memory stays bounded by `chunk_size` records.

  Args:
    ecg: [n_records, n_samples, 12] numpy, mV.
    fs: input sampling rate in Hz.
    chunk_size: records per call.
    align: as in `extract_median_beats`.

  Returns:
    The dict of `extract_median_beats` as numpy arrays over all records.
  """
  n = ecg.shape[0]
  if n == 0:
    raise ValueError('ecg holds no records.')
  outputs = []
  for start in range(0, n, chunk_size):
    chunk = np.asarray(ecg[start : start + chunk_size], np.float32)
    pad = chunk_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                              np.float32)])
    out = extract_median_beats(jnp.asarray(chunk), fs=fs, align=align)
    outputs.append(jax.tree.map(lambda a, k=chunk_size - pad: a[:k],
                                jax.device_get(out)))
  return jax.tree.map(lambda *a: np.concatenate(a), *outputs)
