"""TFDS builder `deepfake_ecg`: DeepFake-ECG (Thambawita et al. 2021).

121,977 synthetic normal 10-s ECGs from the Pulse2Pulse GAN, with the MUSE
12SL measurements of each one (Sci Rep 11:21896; data on OSF,
https://osf.io/6hved/). Nothing is downloaded: the user puts the unpacked
release into the manual directory, then builds as ArrayRecord without
TensorFlow:

  builder = Builder(config='default', data_dir=data_dir,
                    file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=deepfake_root))
  source = tfds.data_source('deepfake_ecg/default', split='train',
                            data_dir=data_dir)

Layout read (README.md gives the sources): `<ecg_dir>/<id>.asc`, one ECG per
text file, 5000 rows (500 Hz) x 8 whitespace-separated integer columns, leads
I, II, V1-V6 in uV; and a ground-truth CSV (`ground_truth`) with one row per
ECG, its id in `id_column`, and MUSE measurements. The four other limb leads
are derived (Einthoven, Goldberger), amplitudes converted to mV, and the
median beat computed as in the `ptbxl` builder. `measures` [9] holds the
`simulator.MEASURE_NAMES` targets mapped from the CSV (NaN where a column or
cell is missing). Splits are a seeded permutation of the CSV's ids.
"""

import dataclasses
import os
from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import simulator
from factorecg_jax.data import tfds_compat

# Splits over 1 GB build without TensorFlow too.
tfds_compat.install()

# Columns of an .asc file (Thambawita et al. 2021; deepfake-ecg README).
ASC_LEADS = ('I', 'II', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6')
FS = 500
NUM_SAMPLES = 5000
# Ground-truth CSV columns tried, in order (case-insensitive), for each of
# simulator.MEASURE_NAMES. The public OSF file uses short lower-case names
# (patid, VentRate, avgrrinterval, pr, qrs, qt); the MUSE names cover other
# exports, e.g. the amplitude targets of Storas et al. (R_PeakAmpl_V5,
# T_PeakAmpl_V5, STJ_V5).
MEASURE_COLUMNS = {
    'hr_bpm': ('VentRate', 'VentricularRate', 'HR'),
    'pr_ms': ('pr', 'PRInterval', 'PR_Interval'),
    'qrs_ms': ('qrs', 'QRSDuration', 'QRS_Duration'),
    'qt_ms': ('qt', 'QTInterval', 'QT_Interval'),
    'qtc_ms': ('qtc', 'QTCorrected', 'QTc_Bazett', 'QTcB'),
    'r_amp_v5_mv': ('R_PeakAmpl_V5', 'RPeakAmp_V5'),
    't_amp_v5_mv': ('T_PeakAmpl_V5', 'TPeakAmp_V5'),
    'st_j_v5_mv': ('STJ_V5',),
    'qrs_axis_deg': ('RAxis', 'R_Axis', 'QRSAxis', 'qrs_axis'),
}
# Average RR (ms): heart rate = 60000 / RR when no rate column exists.
RR_COLUMNS = ('avgrrinterval', 'AvgRRInterval', 'RR_Interval')
_AMPLITUDES = ('r_amp_v5_mv', 't_amp_v5_mv', 'st_j_v5_mv')
SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass
class DeepfakeEcgConfig(tfds.core.BuilderConfig):
  """How DeepFake-ECG is read.

  Attributes:
    ecg_dir: folder of the .asc files, relative to the manual directory (or
      absolute).
    ground_truth: the measurements CSV, relative to the manual directory (or
      absolute); separator detected (',' in the OSF file, ';' in MUSE
      exports).
    id_column: CSV column naming each ECG's file (`<id>.asc`).
    signal_scale_to_mv: factor from the .asc integers to mV (1e-3: uV).
    amplitude_scale_to_mv: factor from the CSV amplitudes to mV (1e-3: MUSE
      reports amplitudes in uV).
    validation_fraction, test_fraction: split sizes (each at least one
      record when there are three or more).
    split_seed: seed of the permutation that assigns ids to splits.
    with_strip: also store the 10 s strip [5000, 12].
    batch_size: records per median-beat extraction call.
    strict: raise on the first bad record instead of skipping it.
    sampling_rate, duration_s: fixed by the release (500 Hz, 10 s).
  """

  ecg_dir: str = 'from_006_chck_2500_150k_filtered_all_normals_121977'
  ground_truth: str = 'filtered_all_normals_121977_ground_truth.csv'
  id_column: str = 'patid'
  signal_scale_to_mv: float = 1e-3
  amplitude_scale_to_mv: float = 1e-3
  validation_fraction: float = 0.1
  test_fraction: float = 0.1
  split_seed: int = 0
  with_strip: bool = True
  batch_size: int = 64
  strict: bool = False
  sampling_rate: int = FS
  duration_s: float = NUM_SAMPLES / FS


class Builder(ingest.MedianBeatBuilder,
              tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for deepfake_ecg."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      DeepfakeEcgConfig(
          name='default',
          description='The OSF release: strips, computed median beats and '
          'the MUSE measurements; 80/10/10 % splits.',
      ),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download DeepFake-ECG from https://osf.io/6hved/ (the archive
  filtered_all_normals_121977.tar.gz and
  filtered_all_normals_121977_ground_truth.csv), unpack the archive, and pass
  the folder holding both as the manual directory (config fields ecg_dir and
  ground_truth name them).
  """
  # As in synthetic_ecg: name this folder directly for README/CITATIONS.
  pkg_dir_path = epath.Path(__file__).parent
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        'id': tfds.features.Text(doc='The ECG id (its .asc file name).'),
        'measures': self._measures_feature('MUSE'),
    }
    features.update(self._median_beat_features())
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        homepage='https://osf.io/6hved/',
        metadata=tfds.core.MetadataDict(
            leads=list(ingest.LEADS),
            measure_names=list(simulator.MEASURE_NAMES),
            measure_units=list(simulator.MEASURE_UNITS),
            sampling_rate_hz=FS,
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns SplitGenerators."""
    config = self.builder_config
    root = os.fspath(dl_manager.manual_dir)
    table = read_ground_truth(
        os.path.join(root, config.ground_truth), config.id_column)
    measures = measures_from_table(table, config.amplitude_scale_to_mv)
    split_of = assign_splits(table.index, config)
    self._report = ingest.SkippedRecords(strict=self._strict)
    ecg_dir = os.path.join(root, config.ecg_dir)
    return {
        split: self._generate_examples(
            split, ecg_dir, [i for i in table.index if split_of[i] == split],
            measures,
        )
        for split in SPLITS
        if any(s == split for s in split_of.values())
    }

  def _generate_examples(
      self, split: str, ecg_dir: str, ids: list[str],
      measures: dict[str, np.ndarray],
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (id, example) for the ECGs `ids`."""
    config = self.builder_config
    report = self._report
    items = (
        ingest.Item(
            record_id,
            lambda path=os.path.join(ecg_dir, f'{record_id}.asc'): read_asc(
                path, config.signal_scale_to_mv),
        )
        for record_id in ids
    )
    for item, strip, out in ingest.ingest(
        items, split=split, report=report, fs=FS,
        num_samples=self._num_samples(), batch_size=self._batch_size,
    ):
      example = {
          'id': item.record_id,
          'measures': measures[item.record_id],
          'beat': out['beat'],
          'qrs_onset': out['qrs_onset'],
          'num_beats': out['num_beats'],
      }
      if config.with_strip:
        example['strip'] = strip
      yield item.record_id, example
    report.write(self.data_dir)
    report.warn(f'deepfake_ecg/{config.name} {split}')


def read_asc(path: str, scale_to_mv: float = 1e-3) -> ingest.Signal:
  """One DeepFake-ECG .asc file as an 8-lead `ingest.Signal` in mV.

  Args:
    path: the file: rows of 8 whitespace-separated numbers, I, II, V1-V6.
    scale_to_mv: factor from the stored numbers to mV (1e-3: uV).

  Raises:
    RecordError: no_record (no file), unreadable_signal (not a numeric
      table of 8 columns).
  """
  if not os.path.exists(path):
    raise ingest.RecordError('no_record', os.path.basename(path) +
                             ' not found')
  try:
    data = np.loadtxt(path, dtype=np.float64, ndmin=2)
  except ValueError as e:
    raise ingest.RecordError('unreadable_signal', str(e)[:80]) from e
  if data.shape[1] != len(ASC_LEADS):
    raise ingest.RecordError(
        'unreadable_signal', f'{data.shape[1]} columns, not {len(ASC_LEADS)}')
  return ingest.Signal((data * scale_to_mv).astype(np.float32), float(FS),
                       ASC_LEADS)


def read_ground_truth(path: str, id_column: str) -> pd.DataFrame:
  """The measurements CSV, indexed by id (text), sorted.

  Raises:
    FileNotFoundError: no such file.
    ValueError: no `id_column`, or duplicate ids.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is this a DeepFake-ECG '
                            'folder (see MANUAL_DOWNLOAD_INSTRUCTIONS)?')
  # sep=None sniffs ',' (OSF file) or ';' (MUSE exports).
  table = pd.read_csv(path, sep=None, engine='python', dtype={id_column: str})
  if id_column not in table.columns:
    raise ValueError(f'{os.path.basename(path)}: missing column '
                     f'{id_column!r} (columns: {list(table.columns)[:12]}).')
  ids = table[id_column].astype(str).str.strip()
  if ids.duplicated().any():
    raise ValueError(f'{os.path.basename(path)}: column {id_column!r} has '
                     'duplicates.')
  table = table.set_index(ids).drop(columns=id_column)
  return table.sort_index()


def _column(table: pd.DataFrame, candidates) -> pd.Series | None:
  """The first of `candidates` in `table` (case-insensitive), as floats."""
  lower = {str(c).strip().lower(): c for c in table.columns}
  for name in candidates:
    if name.lower() in lower:
      return pd.to_numeric(table[lower[name.lower()]], errors='coerce')
  return None


def measures_from_table(
    table: pd.DataFrame, amplitude_scale_to_mv: float = 1e-3
) -> dict[str, np.ndarray]:
  """`{id: [9] float32}` in MEASURE_NAMES order and units, NaN if missing.

  Heart rate falls back to 60000 / average RR (ms) when the CSV has no rate
  column; amplitudes are scaled to mV; QTc is taken as reported (MUSE's
  QTCorrected is Bazett's) and is NaN when the CSV has none.
  """
  columns = []
  for name in simulator.MEASURE_NAMES:
    values = _column(table, MEASURE_COLUMNS[name])
    if values is None and name == 'hr_bpm':
      rr = _column(table, RR_COLUMNS)
      values = None if rr is None else 60000.0 / rr.where(rr > 0)
    if values is None:
      logging.info('deepfake_ecg: no column for %s (tried %s); NaN.', name,
                   MEASURE_COLUMNS[name])
      values = pd.Series(np.nan, index=table.index)
    if name in _AMPLITUDES:
      values = values * amplitude_scale_to_mv
    columns.append(values.to_numpy(np.float64))
  stacked = np.stack(columns, axis=1).astype(np.float32)
  return {record_id: stacked[i] for i, record_id in enumerate(table.index)}


def assign_splits(ids, config: DeepfakeEcgConfig) -> dict[str, str]:
  """`{id: split}`: a permutation of the sorted ids seeded by split_seed.

  The first round(test_fraction * n) permuted ids go to 'test', the next
  round(validation_fraction * n) to 'validation' (each at least one when
  n >= 3), the rest to 'train'. Deterministic for a given set of ids.
  """
  ids = sorted(str(i) for i in ids)
  n = len(ids)
  order = np.random.default_rng(config.split_seed).permutation(n)
  at_least = 1 if n >= 3 else 0
  n_test = max(at_least, int(round(config.test_fraction * n)))
  n_val = max(at_least, int(round(config.validation_fraction * n)))
  split_of = {}
  for rank, i in enumerate(order):
    split_of[ids[i]] = ('test' if rank < n_test else 'validation'
                        if rank < n_test + n_val else 'train')
  return split_of
