"""TFDS builder `ptbxl`: PTB-XL 12-lead ECGs with computed median beats.

Nothing is downloaded: the user puts PTB-XL (PhysioNet, v1.0.3) into the
manual directory, then builds as ArrayRecord without TensorFlow:

  builder = Builder(config='default', data_dir=data_dir,
                    file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=ptbxl_root))
  source = tfds.data_source('ptbxl/default', split='train', data_dir=data_dir)

Splits follow the PTB-XL benchmark: strat_fold 1-8 train, 9 validation,
10 test. Bad records are skipped and listed in `skipped_records.tsv` in the
data set folder (see `factorecg_jax.data.ingest`).
"""

import ast
import dataclasses
import os
import tempfile
from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import median_beat
from factorecg_jax.data import simulator
from factorecg_jax.data import tfds_compat

# Splits over 1 GB build without TensorFlow too.
tfds_compat.install()

# The 71 SCP-ECG statements of PTB-XL's scp_statements.csv (44 diagnostic,
# 19 form, 12 rhythm; four are both diagnostic and form), the order of the
# 'labels' vector. Codes of a user's CSV outside this list are dropped with a
# warning.
SCP_CODES = (
    'NDT', 'NST_', 'DIG', 'LNGQT', 'NORM', 'IMI', 'ASMI', 'LVH', 'LAFB',
    'ISC_', 'IRBBB', '1AVB', 'IVCD', 'ISCAL', 'CRBBB', 'CLBBB', 'ILMI',
    'LAO/LAE', 'AMI', 'ALMI', 'ISCIN', 'INJAS', 'LMI', 'ISCIL', 'LPFB',
    'ISCAS', 'INJAL', 'ISCLA', 'RVH', 'ANEUR', 'RAO/RAE', 'EL', 'WPW',
    'ILBBB', 'IPLMI', 'ISCAN', 'IPMI', 'SEHYP', 'INJIN', 'INJLA', 'PMI',
    '3AVB', 'INJIL', '2AVB', 'ABQRS', 'PVC', 'STD_', 'VCLVH', 'QWAVE',
    'LOWT', 'NT_', 'PAC', 'LPR', 'INVT', 'LVOLT', 'HVOLT', 'TAB_', 'STE_',
    'PRC(S)', 'SR', 'AFIB', 'STACH', 'SARRH', 'SBRAD', 'PACE', 'SVARR',
    'BIGU', 'AFLT', 'SVTAC', 'PSVT', 'TRIGU',
)
SUPERCLASSES = ('NORM', 'MI', 'STTC', 'CD', 'HYP')
# strat_fold -> split, as in the PTB-XL benchmark (Strodthoff et al. 2021).
SPLIT_FOLDS = {
    'train': (1, 2, 3, 4, 5, 6, 7, 8),
    'validation': (9,),
    'test': (10,),
}
DATABASE_COLUMNS = ('ecg_id', 'patient_id', 'age', 'sex', 'scp_codes',
                    'strat_fold', 'filename_lr', 'filename_hr')
STATEMENT_COLUMNS = ('diagnostic', 'diagnostic_class')
# Largest shift (samples) when aligning a PTB-XL+ median beat to ours.
_PLUS_MAX_LAG = 100
# PTB-XL+ feature-table columns of simulator.MEASURE_NAMES, per algorithm
# (features/<algorithm>_features.csv, one row per ecg_id; names as in
# PTB-XL+ 1.0.1 feature_description.csv, values stored in bpm, ms, mV, deg).
# None: the algorithm reports no such feature (NaN). ECGDeli has no heart
# rate (60000 / RR_Mean_Global is used), no Bazett QTc, no axis, and an ST
# elevation (ST_Elev) in place of 12SL's ST amplitude at J (ST_Amp).
PLUS_FEATURE_COLUMNS = {
    '12sl': ('HR__Global', 'PR_Int_Global', 'QRS_Dur_Global',
             'QT_Int_Global', 'QT_IntBazett_Global', 'R_Amp_V5', 'T_Amp_V5',
             'ST_Amp_V5', 'R_AxisFrontal_Global'),
    'unig': ('HR__Global', 'PR_Int_Global', 'QRS_Dur_Global',
             'QT_Int_Global', 'QT_IntBazett_Global', 'R_Amp_V5', 'T_Amp_V5',
             'ST_Amp_V5', 'QRS_AxisFront_Global'),
    'ecgdeli': ('RR_Mean_Global', 'PR_Int_Global', 'QRS_Dur_Global',
                'QT_Int_Global', None, 'R_Amp_V5', 'T_Amp_V5', 'ST_Elev_V5',
                None),
}


@dataclasses.dataclass
class PtbxlConfig(tfds.core.BuilderConfig):
  """How PTB-XL is read.

  Attributes:
    sampling_rate: 500 (records500, filename_hr) or 100 (filename_lr); the
      stored median beat is always at 500 Hz.
    duration_s: stored strip length; longer records are cropped.
    with_strip: also store the strip [duration_s * sampling_rate, 12].
    median_beats: 'computed' (from the strip) or 'ptbxl_plus' (the PTB-XL+
      median beat where its file exists, else computed; 'beat_source' says
      which).
    ptbxl_plus_dir: PTB-XL+ root, relative to the manual directory (or
      absolute).
    ptbxl_plus_pattern: a PTB-XL+ median beat record (WFDB, no extension)
      under ptbxl_plus_dir; formatted with ecg_id and folder (ecg_id
      rounded down to thousands, as PTB-XL's records500/<folder>/). The
      default is PTB-XL+ 1.0.1's 12SL layout,
      median_beats/12sl/14000/14203_medians (Uni-G's file names have six
      digits: 'median_beats/unig/{folder:05d}/{ecg_id:06d}_medians').
    plus_features: '' (none) or a PTB-XL+ algorithm ('12sl', 'unig',
      'ecgdeli'; PLUS_FEATURE_COLUMNS): store its measurements as
      'measures' [9] (simulator.MEASURE_NAMES), NaN where missing.
    plus_features_pattern: the feature table under ptbxl_plus_dir,
      formatted with the algorithm.
    batch_size: records per median-beat extraction call.
    strict: raise on the first bad record instead of skipping it.
  """

  sampling_rate: int = 500
  duration_s: float = 10.0
  with_strip: bool = True
  median_beats: str = 'computed'
  ptbxl_plus_dir: str = 'ptb-xl-plus'
  ptbxl_plus_pattern: str = 'median_beats/12sl/{folder:05d}/{ecg_id:05d}_medians'
  plus_features: str = ''
  plus_features_pattern: str = 'features/{algorithm}_features.csv'
  batch_size: int = 64
  strict: bool = False


class Builder(ingest.MedianBeatBuilder,
              tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for ptbxl."""

  # 1.1.0 changed only how 'ptbxl_plus' reads PTB-XL+ beats.
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'ptbxl_plus: PTB-XL+ median beats read from their '
               'thousand-record folders, headers whose record name has a '
               'folder accepted, microvolt beats stored in mV; the other '
               'configs unchanged.',
  }
  BUILDER_CONFIGS = [
      PtbxlConfig(
          name='default',
          description='500 Hz strips, median beats computed from them.',
      ),
      PtbxlConfig(
          name='ptbxl_plus',
          description='Median beats from PTB-XL+ (12SL) where present.',
          median_beats='ptbxl_plus',
      ),
      PtbxlConfig(
          name='plus_measures',
          description='As default, plus the PTB-XL+ 12SL measurements '
          "('measures', simulator.MEASURE_NAMES; NaN where missing).",
          plus_features='12sl',
      ),
      PtbxlConfig(
          name='lr',
          description='100 Hz strips (records100), median beats at 500 Hz.',
          sampling_rate=100,
      ),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download PTB-XL v1.0.3 from https://physionet.org/content/ptb-xl/1.0.3/
  (e.g. `wget -r -N -c -np https://physionet.org/files/ptb-xl/1.0.3/`) and
  pass the folder holding ptbxl_database.csv, scp_statements.csv and
  records500/ as the manual directory. For the `ptbxl_plus` and
  `plus_measures` configs, also put PTB-XL+
  (https://physionet.org/content/ptb-xl-plus/) into <manual_dir>/ptb-xl-plus/
  (its features/12sl_features.csv for `plus_measures`).
  """
  # As in synthetic_ecg: name this folder directly for README/CITATIONS.
  pkg_dir_path = epath.Path(__file__).parent
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    features = {
        'id': tfds.features.Text(doc='ecg_id as text.'),
        'ecg_id': tfds.features.Scalar(np.int32, doc='PTB-XL ecg_id.'),
        'patient_id': tfds.features.Scalar(np.int32),
        'age': tfds.features.Scalar(np.float32, doc='Years, NaN if unknown.'),
        'sex': tfds.features.Scalar(
            np.int32, doc='0 male, 1 female, -1 unknown.'
        ),
        'strat_fold': tfds.features.Scalar(np.int32),
        'beat_source': tfds.features.Scalar(
            np.int32, doc='0 computed, 1 PTB-XL+.'
        ),
        'labels': tfds.features.Tensor(
            shape=(len(SCP_CODES),), dtype=np.bool_,
            doc='Multi-hot SCP statements, SCP_CODES order.',
        ),
        'superclass': tfds.features.Tensor(
            shape=(len(SUPERCLASSES),), dtype=np.bool_,
            doc='Multi-hot diagnostic superclasses, SUPERCLASSES order.',
        ),
    }
    if config.plus_features:
      features['measures'] = self._measures_feature(
          f'PTB-XL+ {config.plus_features}')
    features.update(self._median_beat_features())
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        homepage='https://physionet.org/content/ptb-xl/1.0.3/',
        metadata=tfds.core.MetadataDict(
            leads=list(ingest.LEADS),
            scp_codes=list(SCP_CODES),
            superclasses=list(SUPERCLASSES),
            split_folds={k: list(v) for k, v in SPLIT_FOLDS.items()},
            sampling_rate_hz=config.sampling_rate,
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns SplitGenerators."""
    root = os.fspath(dl_manager.manual_dir)
    database, superclass_of = read_metadata(root)
    self._measures = (read_plus_measures(root, self.builder_config)
                      if self.builder_config.plus_features else None)
    self._report = ingest.SkippedRecords(strict=self._strict)
    return {
        split: self._generate_examples(
            split, root, database[database.strat_fold.isin(folds)],
            superclass_of,
        )
        for split, folds in SPLIT_FOLDS.items()
    }

  def _items(self, root: str, rows: pd.DataFrame) -> Iterator[ingest.Item]:
    column = 'filename_hr' if self.builder_config.sampling_rate == 500 else (
        'filename_lr')
    for row in rows.itertuples(index=False):
      path = os.path.join(root, str(getattr(row, column)))
      yield ingest.Item(
          str(row.ecg_id),
          lambda path=path: ingest.read_wfdb(path),
          row,
      )

  def _generate_examples(
      self, split: str, root: str, rows: pd.DataFrame,
      superclass_of: dict[str, str],
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (ecg_id, example) for the records of `rows`."""
    config = self.builder_config
    report = self._report
    code_index = {c: i for i, c in enumerate(SCP_CODES)}
    for item, strip, out in ingest.ingest(
        self._items(root, rows),
        split=split,
        report=report,
        fs=config.sampling_rate,
        num_samples=self._num_samples(),
        batch_size=self._batch_size,
    ):
      row = item.meta
      beat, source = out['beat'], 0
      if config.median_beats == 'ptbxl_plus':
        try:
          plus = read_plus_beat(root, config, int(row.ecg_id))
        except ingest.RecordError as e:
          report.read[split] -= 1
          report.skip(item.record_id, split, e)
          continue
        if plus is not None:
          beat, source = align_beat(to_millivolts(plus, beat), beat), 1
      codes = parse_scp_codes(row.scp_codes)
      labels = np.zeros(len(SCP_CODES), np.bool_)
      labels[[code_index[c] for c in codes if c in code_index]] = True
      supers = {superclass_of[c] for c in codes if c in superclass_of}
      example = {
          'id': item.record_id,
          'ecg_id': int(row.ecg_id),
          'patient_id': int(row.patient_id) if pd.notna(row.patient_id)
                        else -1,
          'age': float(row.age) if pd.notna(row.age) else float('nan'),
          'sex': int(row.sex) if pd.notna(row.sex) else -1,
          'strat_fold': int(row.strat_fold),
          'beat': beat,
          'beat_source': source,
          'qrs_onset': out['qrs_onset'],
          'num_beats': out['num_beats'],
          'labels': labels,
          'superclass': np.array([s in supers for s in SUPERCLASSES]),
      }
      if config.with_strip:
        example['strip'] = strip
      if self._measures is not None:
        example['measures'] = self._measures.get(
            int(row.ecg_id),
            np.full(simulator.NUM_MEASURES, np.nan, np.float32))
      yield int(row.ecg_id), example
    report.write(self.data_dir)
    report.warn(f'ptbxl/{config.name} {split}')


def parse_scp_codes(text: str) -> list[str]:
  """Codes of a scp_codes cell ("{'NORM': 100.0, 'SR': 0.0}"), any likelihood.

  Parsed with `ast.literal_eval` (literals only, never code).
  """
  try:
    value = ast.literal_eval(str(text))
  except (ValueError, SyntaxError) as e:
    raise ValueError(f'scp_codes: cannot parse {text!r}') from e
  if not isinstance(value, dict):
    raise ValueError(f'scp_codes: not a dict: {text!r}')
  return [str(k) for k in value]


def read_metadata(root: str) -> tuple[pd.DataFrame, dict[str, str]]:
  """Reads and validates ptbxl_database.csv and scp_statements.csv.

  Returns:
    (database with DATABASE_COLUMNS, {SCP code: diagnostic superclass}).

  Raises:
    ValueError naming the file and column that is missing or malformed.
  """
  path = os.path.join(root, 'ptbxl_database.csv')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {root} a PTB-XL folder?')
  database = pd.read_csv(path)
  for column in DATABASE_COLUMNS:
    if column not in database.columns:
      raise ValueError(f'ptbxl_database.csv: missing column {column!r}.')
  for column in ('ecg_id', 'strat_fold'):
    values = pd.to_numeric(database[column], errors='coerce')
    if values.isna().any() or (values % 1 != 0).any():
      raise ValueError(f'ptbxl_database.csv: column {column!r} must hold '
                       'whole numbers in every row.')
    database[column] = values.astype(int)
  for column in ('patient_id', 'age', 'sex'):
    values = pd.to_numeric(database[column], errors='coerce')
    if (values.isna() & database[column].notna()).any():
      raise ValueError(f'ptbxl_database.csv: column {column!r} is not '
                       'numeric.')
    database[column] = values
  if database.ecg_id.duplicated().any():
    raise ValueError('ptbxl_database.csv: column ecg_id has duplicates.')
  for text in database.scp_codes:
    try:
      parse_scp_codes(text)
    except ValueError as e:
      raise ValueError(f'ptbxl_database.csv: column scp_codes: {e}') from e
  path = os.path.join(root, 'scp_statements.csv')
  statements = pd.read_csv(path, index_col=0)
  for column in STATEMENT_COLUMNS:
    if column not in statements.columns:
      raise ValueError(f'scp_statements.csv: missing column {column!r}.')
  diagnostic = statements[statements.diagnostic == 1]
  superclass_of = {
      str(code): str(cls)
      for code, cls in diagnostic.diagnostic_class.items()
      if cls in SUPERCLASSES
  }
  unknown = sorted(set(map(str, statements.index)) - set(SCP_CODES))
  if unknown:
    logging.warning('scp_statements.csv: codes outside SCP_CODES are not '
                    'stored in labels: %s', unknown)
  return database.sort_values('ecg_id'), superclass_of


def read_plus_measures(
    root: str, config: PtbxlConfig
) -> dict[int, np.ndarray]:
  """`{ecg_id: [9] float32}` from a PTB-XL+ feature table, NaN if missing.

  Columns of PLUS_FEATURE_COLUMNS[config.plus_features] that the file lacks
  give NaN for every record (with a warning); ECGDeli's heart rate is
  60000 / RR_Mean_Global.

  Raises:
    ValueError: unknown algorithm, or a table without an ecg_id column.
    FileNotFoundError: the table is not in the manual directory.
  """
  algorithm = config.plus_features
  if algorithm not in PLUS_FEATURE_COLUMNS:
    raise ValueError(f'plus_features={algorithm!r}: must be one of '
                     f'{tuple(PLUS_FEATURE_COLUMNS)}.')
  path = os.path.join(root, config.ptbxl_plus_dir,
                      config.plus_features_pattern.format(algorithm=algorithm))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: put PTB-XL+ into <manual_dir>/'
        f'{config.ptbxl_plus_dir}/ for plus_features={algorithm!r}.')
  table = pd.read_csv(path)
  if 'ecg_id' not in table.columns:
    raise ValueError(f'{os.path.basename(path)}: missing column ecg_id.')
  columns = []
  for name, column in zip(simulator.MEASURE_NAMES,
                          PLUS_FEATURE_COLUMNS[algorithm]):
    if column is None or column not in table.columns:
      if column is not None:
        logging.warning('%s: no column %s; %s is NaN.',
                        os.path.basename(path), column, name)
      columns.append(np.full(len(table), np.nan))
      continue
    values = pd.to_numeric(table[column], errors='coerce').to_numpy(
        np.float64)
    if column == 'RR_Mean_Global':
      with np.errstate(divide='ignore', invalid='ignore'):
        values = np.where(values > 0, 60000.0 / values, np.nan)
    columns.append(values)
  stacked = np.stack(columns, axis=1).astype(np.float32)
  ids = pd.to_numeric(table['ecg_id'], errors='coerce')
  return {int(i): stacked[k] for k, i in enumerate(ids) if pd.notna(i)}


def read_plus_beat(
    root: str, config: PtbxlConfig, ecg_id: int
) -> np.ndarray | None:
  """The PTB-XL+ median beat [600, 12] of a record, None if it has none.

  Raises:
    RecordError('bad_median_beat') for a present but unusable file.
  """
  pattern = config.ptbxl_plus_pattern.format(
      ecg_id=ecg_id, folder=ecg_id // 1000 * 1000
  )
  path = os.path.join(root, config.ptbxl_plus_dir, pattern)
  if not os.path.exists(path + '.hea'):
    return None
  try:
    signal = _read_plus_wfdb(path)
    return ingest.standardize(
        signal, fs=median_beat.FS, num_samples=median_beat.BEAT_LEN
    )
  except ingest.RecordError as e:
    raise ingest.RecordError(
        'bad_median_beat', f'PTB-XL+: {e.reason} {e.detail}'.strip()
    ) from e


def _read_plus_wfdb(path: str) -> ingest.Signal:
  """Reads a PTB-XL+ WFDB record, whose header may name it with a folder.

  PTB-XL+ 1.0.1's 12SL headers begin 'ge_median_beats_wfdb/00001_medians 12
  500 600', which the wfdb package refuses (a record name has no '/';
  MIT-LCP/wfdb-python issue 528). Such a header is read from a copy without
  the folders (in the record line and the signal lines' file names), beside
  links to the record's signal files.
  """
  with open(path + '.hea', encoding='latin-1') as f:
    lines = f.read().splitlines()
  content = [i for i, line in enumerate(lines)
             if line.strip() and not line.lstrip().startswith('#')]
  if not content or '/' not in lines[content[0]].split()[0]:
    return ingest.read_wfdb(path)
  name = os.path.basename(path)
  signal_files = set()
  for k, i in enumerate(content):
    fields = lines[i].split()
    fields[0] = name if k == 0 else fields[0].rsplit('/', 1)[-1]
    if k:
      signal_files.add(fields[0])
    lines[i] = ' '.join(fields)
  folder = os.path.dirname(path)
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, name + '.hea'), 'w', encoding='latin-1') as f:
      f.write('\n'.join(lines) + '\n')
    # Only the files the header names (a folder holds 1,000 records).
    for entry in signal_files:
      if os.path.exists(os.path.join(folder, entry)):
        os.symlink(os.path.join(folder, entry), os.path.join(tmp, entry))
    return ingest.read_wfdb(os.path.join(tmp, name))


# A PTB-XL+ beat whose amplitudes are this many times those of the beat
# computed from the same strip is taken to be in microvolts.
_MICROVOLT_RATIO = (100.0, 10_000.0)


def to_millivolts(beat: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """`beat` [600, 12] in mV, judged against `reference` (mV, same record).

  PTB-XL+ headers say mV, but its median beats have been reported to hold
  microvolts (values ~1,000 times the feature tables' and the strips'). The
  median over leads of the peak-to-peak ratio to the beat computed from
  the record's own strip decides: between 100 and 10,000 the beat is
  divided by 1,000; otherwise it is returned unchanged.
  """
  span = np.ptp(reference, axis=0)
  usable = span > 1e-3
  if not usable.any():
    return beat
  ratio = float(np.median(np.ptp(beat, axis=0)[usable] / span[usable]))
  low, high = _MICROVOLT_RATIO
  if low <= ratio <= high:
    return (beat / 1000.0).astype(np.float32)
  return beat


def align_beat(beat: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Shifts `beat` [600, 12] to best match `reference` [600, 12].

  PTB-XL+ beats have their own fiducial position; matching them to the
  computed beat (QRS onset at 200) by cross-correlation over all leads
  (shifts up to `_PLUS_MAX_LAG` samples, edges padded with the edge value)
  keeps every stored beat aligned the same way.
  """
  n = beat.shape[0]
  padded = np.pad(beat, ((_PLUS_MAX_LAG, _PLUS_MAX_LAG), (0, 0)), 'edge')
  lags = np.arange(-_PLUS_MAX_LAG, _PLUS_MAX_LAG + 1)
  scores = [
      np.sum(padded[_PLUS_MAX_LAG - lag:_PLUS_MAX_LAG - lag + n] * reference)
      for lag in lags
  ]
  lag = lags[int(np.argmax(scores))]
  return padded[_PLUS_MAX_LAG - lag:_PLUS_MAX_LAG - lag + n].astype(np.float32)
