"""Reading, checking and batching real ECG records for the TFDS builders.

Shared by the `ptbxl` and `ecg_folder` builders. A record is read from WFDB
(with the `wfdb` package) or from an .npz archive (`np.load` with
`allow_pickle=False`: no pickle is ever loaded from user files), its leads are
mapped to I, II, III, aVR, aVL, aVF, V1-V6 (III, aVR, aVL, aVF derived when
only the eight independent leads are given), and it is checked: sampling
rate, length, NaNs, then, from the flags of
`median_beat.extract_median_beats`, flat and saturated leads and the number
of detected beats. Good records are batched with a fixed batch shape, so the
median-beat extraction compiles once.

A record that fails a check is skipped: its id, split, reason code and a
detail go to a `SkippedRecords` report, written as `skipped_records.tsv` and
`ingest_summary.json` into the data set folder, and a warning gives the counts
per reason. `read + skipped = total` always holds. With `strict=True` the
first problem raises `RecordError` naming the record instead.
"""

import collections
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from factorecg_jax.data import median_beat
from factorecg_jax.data import simulator

LEADS = ('I', 'II', 'III', 'aVR', 'aVL', 'aVF',
         'V1', 'V2', 'V3', 'V4', 'V5', 'V6')
INDEPENDENT = ('I', 'II', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6')
LIMB_DERIVED = ('III', 'aVR', 'aVL', 'aVF')

# Reason codes of the skip report, in the order the checks run.
REASONS = (
    'no_record',  # no file for an id (of the CSV or the metadata table)
    'unreadable_header',  # WFDB header (or .npz archive) cannot be parsed
    'missing_signal_file',  # header names a signal file that is absent
    'unreadable_signal',  # signal file present but cannot be decoded
    'wrong_sampling_rate',
    'missing_lead',  # a lead neither present nor derivable
    'too_short',
    'nan_samples',
    'flat_lead',
    'saturated_lead',
    'too_few_beats',
    'bad_median_beat',  # a provided (e.g. PTB-XL+) median beat is unusable
)
REPORT_FILE = 'skipped_records.tsv'
SUMMARY_FILE = 'ingest_summary.json'

# Physical units that WFDB headers use for ECG leads, as factors to mV.
_UNITS_TO_MV = {'mv': 1.0, 'uv': 1e-3, 'µv': 1e-3, 'μv': 1e-3, 'v': 1e3}


class RecordError(Exception):
  """A record that cannot be used.

  Attributes:
    reason: one of `REASONS`.
    detail: human-readable detail (lead name, sampling rate, ...).
    record_id: the record, when known.
  """

  def __init__(self, reason: str, detail: str = '', record_id: str = ''):
    self.reason, self.detail, self.record_id = reason, detail, record_id
    where = f'record {record_id!r}: ' if record_id else ''
    super().__init__(f'{where}{reason}' + (f' ({detail})' if detail else ''))


@dataclasses.dataclass
class Signal:
  """A raw record as read from disk.

  Attributes:
    data: [n_samples, n_leads] float32, mV.
    fs: sampling rate, Hz.
    leads: lead names as stored (any case/spacing), or () when unnamed.
  """

  data: np.ndarray
  fs: float
  leads: tuple[str, ...]


class MedianBeatBuilder:
  """What the median-beat TFDS builders (ptbxl, ecg_folder) share.

  Mixed in before `tfds.core.GeneratorBasedBuilder`. Adds the run options
  `batch_size` and `strict` (they override the builder config's; neither
  changes the stored records, so they are not part of the config's name)
  and the features every such record has.
  """

  def __init__(self, *, batch_size: int | None = None,
               strict: bool | None = None, **kwargs):
    """As GeneratorBasedBuilder, plus the run options above."""
    super().__init__(**kwargs)
    config = self.builder_config
    self._batch_size = batch_size or config.batch_size
    self._strict = config.strict if strict is None else strict

  def _num_samples(self) -> int:
    """Stored strip length (duration_s x sampling_rate)."""
    config = self.builder_config
    return int(round(config.duration_s * config.sampling_rate))

  def _median_beat_features(self) -> dict[str, Any]:
    """'beat', 'qrs_onset', 'num_beats', and 'strip' if `with_strip`."""
    config = self.builder_config
    features = {
        'beat': tfds.features.Tensor(
            shape=(median_beat.BEAT_LEN, 12), dtype=np.float32,
            doc='Median beat [600, 12], mV, 500 Hz, QRS onset at 200.',
        ),
        'qrs_onset': tfds.features.Scalar(np.int32),
        'num_beats': tfds.features.Scalar(np.int32),
    }
    if config.with_strip:
      features['strip'] = tfds.features.Tensor(
          shape=(self._num_samples(), 12), dtype=np.float32,
          doc=f'Signal [n, 12], mV, {config.sampling_rate:g} Hz.',
      )
    return features

  @staticmethod
  def _measures_feature(source: str) -> Any:
    """The 'measures' [9] feature (simulator.MEASURE_NAMES and units)."""
    return tfds.features.Tensor(
        shape=(simulator.NUM_MEASURES,), dtype=np.float32,
        doc=f'{source} measurements, simulator.MEASURE_NAMES order and '
        'MEASURE_UNITS (bpm, ms, mV, deg); NaN where not reported.',
    )


def canonical_lead(name: str) -> str | None:
  """Standard name of a lead ('AVR', 'avr', ' aVR ' -> 'aVR'), or None."""
  key = str(name).strip().upper().replace(' ', '').replace('-', '')
  key = key.removeprefix('LEAD')
  for lead in LEADS:
    if key == lead.upper():
      return lead
  return None


def to_standard_leads(data: np.ndarray, names: Iterable[str]) -> np.ndarray:
  """Reorders leads to `LEADS`, deriving III, aVR, aVL, aVF if absent.

  Args:
    data: [n, c] float, mV, columns named by `names` (case and spaces are
      ignored; unknown names are dropped).
    names: c lead names.

  Returns:
    [n, 12] float32 in `LEADS` order.

  Raises:
    RecordError('missing_lead') naming the first lead that is neither
    present nor derivable (the limb leads need I and II).
  """
  names = [canonical_lead(n) for n in names]
  if len(names) != data.shape[1]:
    raise RecordError(
        'missing_lead', f'{data.shape[1]} columns but {len(names)} lead names'
    )
  columns = {}
  for i, name in enumerate(names):
    if name is not None and name not in columns:
      columns[name] = data[:, i].astype(np.float32)
  for lead in INDEPENDENT:
    if lead not in columns:
      raise RecordError('missing_lead', lead)
  lead_i, lead_ii = columns['I'], columns['II']
  # Einthoven's and Goldberger's relations between the limb leads.
  derived = {
      'III': lead_ii - lead_i,
      'aVR': -0.5 * (lead_i + lead_ii),
      'aVL': lead_i - 0.5 * lead_ii,
      'aVF': lead_ii - 0.5 * lead_i,
  }
  for lead in LIMB_DERIVED:
    columns.setdefault(lead, derived[lead])
  return np.stack([columns[lead] for lead in LEADS], axis=1)


def read_wfdb(path: str) -> Signal:
  """Reads a WFDB record (`path` without extension) in mV.

  Raises:
    RecordError: no_record (no .hea), unreadable_header,
      missing_signal_file, unreadable_signal.
  """
  import wfdb  # pylint: disable=g-import-not-at-top

  if not os.path.exists(path + '.hea'):
    raise RecordError('no_record', os.path.basename(path) + '.hea not found')
  try:
    header = wfdb.rdheader(path)
  except Exception as e:  # pylint: disable=broad-except
    raise RecordError('unreadable_header', type(e).__name__) from e
  # wfdb accepts a record line without its signal lines; such a header
  # describes no usable signal.
  n_sig = header.n_sig or 0
  if (n_sig < 1 or len(header.file_name or ()) != n_sig
      or not header.fs or header.fs <= 0):
    raise RecordError('unreadable_header', 'no signal specification')
  folder = os.path.dirname(path)
  for name in sorted(set(header.file_name or ())):
    if not os.path.exists(os.path.join(folder, name)):
      raise RecordError('missing_signal_file', name)
  try:
    record = wfdb.rdrecord(path, physical=True)
  except Exception as e:  # pylint: disable=broad-except
    raise RecordError('unreadable_signal', type(e).__name__) from e
  data = np.asarray(record.p_signal, np.float32)
  scale = np.ones(data.shape[1], np.float32)
  for i, unit in enumerate(record.units or ()):
    scale[i] = _UNITS_TO_MV.get(str(unit).strip().lower(), 1.0)
  return Signal(data * scale, float(record.fs), tuple(record.sig_name or ()))


def read_npz(path: str, key: str = 'ecg') -> Signal:
  """Reads an .npz archive: `key` [n, c] mV, optional 'fs' and 'leads'.

  Loaded with `allow_pickle=False`: object arrays are refused.

  Raises:
    RecordError: no_record, unreadable_header (not an archive, pickled
      content, no `key`), unreadable_signal (not a 2-D numeric array).
  """
  if not os.path.exists(path):
    raise RecordError('no_record', os.path.basename(path) + ' not found')
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {k: archive[k] for k in archive.files}
  except Exception as e:  # pylint: disable=broad-except
    raise RecordError('unreadable_header', type(e).__name__) from e
  if key not in arrays:
    raise RecordError('unreadable_header', f'no array {key!r}')
  data = arrays[key]
  if data.ndim != 2 or not np.issubdtype(data.dtype, np.number):
    raise RecordError('unreadable_signal', f'{key} {data.dtype} {data.shape}')
  fs = float(arrays['fs']) if 'fs' in arrays else float('nan')
  leads = tuple(str(x) for x in arrays['leads']) if 'leads' in arrays else ()
  return Signal(data.astype(np.float32), fs, leads)


def standardize(
    signal: Signal,
    *,
    fs: float,
    num_samples: int,
    lead_names: tuple[str, ...] = (),
) -> np.ndarray:
  """Checks rate and length, maps leads; [n, c] -> [num_samples, 12].

  Args:
    signal: the record as read; a NaN `signal.fs` means "as configured".
    fs: required sampling rate, Hz.
    num_samples: required length; longer records keep their first
      `num_samples` samples.
    lead_names: names of the stored columns, overriding those of the file.

  Returns:
    [num_samples, 12] float32, mV, `LEADS` order.

  Raises:
    RecordError: wrong_sampling_rate, missing_lead, too_short, nan_samples.
  """
  if not np.isnan(signal.fs) and abs(signal.fs - fs) > 1e-6 * fs:
    raise RecordError('wrong_sampling_rate', f'{signal.fs:g} Hz, not {fs:g}')
  names = lead_names or signal.leads
  if not names:
    if signal.data.shape[1] != len(LEADS):
      raise RecordError('missing_lead', 'no lead names')
    names = LEADS
  data = to_standard_leads(signal.data, names)
  if data.shape[0] < num_samples:
    raise RecordError(
        'too_short', f'{data.shape[0] / fs:.2f} s < {num_samples / fs:.2f} s'
    )
  data = data[:num_samples]
  nan_leads = [LEADS[i] for i in np.flatnonzero(np.isnan(data).any(axis=0))]
  if nan_leads:
    raise RecordError('nan_samples', ','.join(nan_leads))
  return data


def quality_problem(
    quality: dict[str, np.ndarray], i: int
) -> RecordError | None:
  """The first quality problem of record i of an extraction, if any."""
  flat = np.flatnonzero(quality['flat_leads'][i])
  if flat.size:
    return RecordError('flat_lead', ','.join(LEADS[j] for j in flat))
  saturated = np.flatnonzero(quality['saturated_leads'][i])
  if saturated.size:
    return RecordError('saturated_lead', ','.join(LEADS[j] for j in saturated))
  beats = int(quality['num_beats'][i])
  if beats < median_beat.MIN_BEATS:
    return RecordError('too_few_beats', f'{beats} < {median_beat.MIN_BEATS}')
  return None


class SkippedRecords:
  """Counts records and collects the skipped ones, per split.

  Attributes:
    rows: (record_id, split, reason, detail) of every skipped record.
    total, read: Counters by split.
    strict: raise on the first problem instead of skipping.
  """

  def __init__(self, strict: bool = False):
    self.strict = strict
    self.rows: list[tuple[str, str, str, str]] = []
    self.total = collections.Counter()
    self.read = collections.Counter()

  def skip(self, record_id: str, split: str, error: RecordError) -> None:
    """Records a skip (or raises, if strict)."""
    error.record_id = record_id
    if self.strict:
      raise RecordError(error.reason, error.detail, record_id) from error
    self.rows.append((record_id, split, error.reason, error.detail))

  def counts(self) -> dict[str, Any]:
    """JSON-able totals: overall, per split and per reason."""
    by_reason = collections.Counter(row[2] for row in self.rows)
    splits = sorted(self.total)
    return dict(
        total=sum(self.total.values()),
        read=sum(self.read.values()),
        skipped=len(self.rows),
        reasons=dict(sorted(by_reason.items())),
        splits={
            s: dict(
                total=self.total[s],
                read=self.read[s],
                skipped=sum(row[1] == s for row in self.rows),
            )
            for s in splits
        },
    )

  def write(self, directory: str) -> None:
    """Writes REPORT_FILE (tab separated) and SUMMARY_FILE into directory."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, REPORT_FILE), 'w') as f:
      f.write('id\tsplit\treason\tdetail\n')
      for row in self.rows:
        f.write('\t'.join(str(x).replace('\t', ' ') for x in row) + '\n')
    with open(os.path.join(directory, SUMMARY_FILE), 'w') as f:
      json.dump(self.counts(), f, indent=2)

  def warn(self, name: str) -> None:
    """Logs a warning with the skip counts (an info line if none)."""
    counts = self.counts()
    if counts['skipped']:
      logging.warning(
          '%s: so far read %d of %d records, skipped %d: %s (see %s).',
          name, counts['read'], counts['total'], counts['skipped'],
          ', '.join(f'{k} {v}' for k, v in counts['reasons'].items()),
          REPORT_FILE,
      )
    else:
      logging.info('%s: read all %d records.', name, counts['total'])


def read_report(directory: str) -> list[tuple[str, str, str, str]]:
  """Rows (id, split, reason, detail) of a written REPORT_FILE."""
  with open(os.path.join(directory, REPORT_FILE)) as f:
    lines = f.read().splitlines()[1:]
  return [tuple((line.split('\t') + [''] * 4)[:4]) for line in lines]


@dataclasses.dataclass
class Item:
  """One record to ingest.

  Attributes:
    record_id: id in the report and the stored example.
    load: reads the raw record (may raise RecordError).
    meta: anything the builder needs to make the example.
  """

  record_id: str
  load: Callable[[], Signal]
  meta: Any = None


def ingest(
    items: Iterable[Item],
    *,
    split: str,
    report: SkippedRecords,
    fs: float,
    num_samples: int,
    lead_names: tuple[str, ...] = (),
    batch_size: int = 64,
    align: str = 'onset',
) -> Iterator[tuple[Item, np.ndarray, dict[str, Any]]]:
  """Reads, checks and extracts median beats, skipping bad records.

  Args:
    items: the records of one split.
    split: split name, for the report.
    report: where skipped records and counts go.
    fs: required sampling rate, Hz.
    num_samples: required (cropped) record length.
    lead_names: overrides the lead names of the files.
    batch_size: records per median-beat call; every call has this batch
      shape (the last is zero padded), so extraction compiles once.
    align: as in `median_beat.extract_median_beats`.

  Raises:
    ValueError: no record of the split can be used (TFDS cannot store an
      empty split).

  Yields:
    (item, strip [num_samples, 12] float32 mV, extraction) of every good
    record in input order, extraction holding 'beat' [600, 12] float32 (mV,
    500 Hz), 'qrs_onset', 'r_peak', 'num_beats', 'rr_mean_ms' and
    'noise_mv' [12].
  """
  pending: list[tuple[Item, np.ndarray]] = []

  def flush():
    strips = np.stack([strip for _, strip in pending])
    out = median_beat.extract_median_beats_numpy(
        strips, fs, chunk_size=batch_size, align=align
    )
    quality = out['quality']
    for i, (item, strip) in enumerate(pending):
      problem = quality_problem(quality, i)
      if problem is not None:
        report.skip(item.record_id, split, problem)
        continue
      report.read[split] += 1
      yield item, strip, dict(
          beat=out['beat'][i].astype(np.float32),
          qrs_onset=np.int32(out['qrs_onset'][i]),
          r_peak=np.int32(out['r_peak'][i]),
          num_beats=np.int32(quality['num_beats'][i]),
          rr_mean_ms=np.float32(quality['rr_mean_ms'][i]),
          noise_mv=quality['noise_mv'][i].astype(np.float32),
      )
    pending.clear()

  report.total[split] += 0  # the split shows in the counts even if empty
  for item in items:
    report.total[split] += 1
    try:
      strip = standardize(
          item.load(), fs=fs, num_samples=num_samples, lead_names=lead_names
      )
    except RecordError as e:
      report.skip(item.record_id, split, e)
      continue
    pending.append((item, strip))
    if len(pending) == batch_size:
      yield from flush()
  if pending:
    yield from flush()
  if not report.read[split]:
    # TFDS cannot write an empty split; say why instead of its bare error.
    rows = [r for r in report.rows if r[1] == split]
    listed = '; '.join(f'{r[0]}: {r[2]} {r[3]}'.strip() for r in rows[:5])
    raise ValueError(
        f'split {split!r}: none of its {report.total[split]} records could '
        f'be used' + (f' ({listed}{", ..." if len(rows) > 5 else ""})'
                      if rows else '') + '.'
    )


def write_wfdb(
    path: str,
    data: np.ndarray,
    fs: float,
    leads: tuple[str, ...] = LEADS,
    adc_gain: float = 1000.0,
) -> None:
  """Writes [n, c] mV as a WFDB record (`path` without extension).

  16-bit samples at `adc_gain` units per mV (1 uV steps, +-32.7 mV by
  default); NaNs are stored as WFDB's missing-sample value. For tests and
  for converting other formats.
  """
  import wfdb  # pylint: disable=g-import-not-at-top

  folder, name = os.path.split(path)
  os.makedirs(folder or '.', exist_ok=True)
  data = np.asarray(data, np.float64)
  wfdb.wrsamp(
      name,
      fs=fs,
      units=['mV'] * data.shape[1],
      sig_name=list(leads),
      p_signal=data,
      fmt=['16'] * data.shape[1],
      adc_gain=[adc_gain] * data.shape[1],
      baseline=[0] * data.shape[1],
      write_dir=folder or '.',
  )
