"""TFDS builder `ecg_folder`: a user's cohort of WFDB records or .npz arrays.

The manual directory holds a CSV (`csv_name`) with an id column, optional
label columns, optional `time`/`event` survival columns and an optional
`split` column, and a folder (`records_dir`) of records named by id: WFDB
`<id>.hea`/`<id>.dat` or `<id>.npz` (array `ecg` [n, c] mV, optional `fs`
and `leads`). A cohort is described by an `EcgFolderConfig`:

  config = EcgFolderConfig(name='my_cohort', file_format='npz',
                           sampling_rate=250, label_columns=('lvef_low',),
                           survival=True)
  builder = Builder(config=config, data_dir=data_dir,
                    file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=cohort_dir))
  source = tfds.data_source('ecg_folder/my_cohort', split='train',
                            data_dir=data_dir)

Bad records are skipped and listed in `skipped_records.tsv` in the data set
folder (see `factorecg_jax.data.ingest`); bad CSV columns fail up front.
"""

import dataclasses
import os
from typing import Any, Iterator

from etils import epath
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import tfds_compat

# Splits over 1 GB build without TensorFlow too.
tfds_compat.install()


@dataclasses.dataclass
class EcgFolderConfig(tfds.core.BuilderConfig):
  """How a cohort folder is read.

  Attributes:
    csv_name: the CSV file, relative to the manual directory.
    records_dir: folder of the records, relative to the manual directory.
    file_format: 'wfdb' or 'npz'.
    id_column: CSV column naming each record's file (without extension).
    label_columns: numeric CSV columns stored, in this order, as 'labels'
      [L] float32 (empty cells become NaN).
    survival: store the CSV's `time` (>= 0) and `event` (0/1) columns.
    split_column: CSV column with each record's split name; when the CSV
      has no such column every record goes to 'train'.
    sampling_rate: required rate in Hz; records at another rate are
      skipped (an .npz without 'fs' is taken to be at this rate).
    duration_s: stored length; longer records are cropped, shorter ones
      skipped.
    lead_names: names of the stored columns in order (e.g. ('I', 'II',
      'V1', ..., 'V6') for 8-lead arrays), overriding those of the files;
      empty: the files' names ('leads' of an .npz, the WFDB signal names),
      or the standard 12-lead order for unnamed 12-column arrays.
    with_strip: also store the strip [duration_s * sampling_rate, 12].
    batch_size: records per median-beat extraction call.
    strict: raise on the first bad record instead of skipping it.
  """

  csv_name: str = 'labels.csv'
  records_dir: str = 'records'
  file_format: str = 'wfdb'
  id_column: str = 'id'
  label_columns: tuple[str, ...] = ()
  survival: bool = False
  split_column: str = 'split'
  sampling_rate: float = 500.0
  duration_s: float = 10.0
  lead_names: tuple[str, ...] = ()
  with_strip: bool = False
  batch_size: int = 64
  strict: bool = False


class Builder(ingest.MedianBeatBuilder,
              tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for ecg_folder."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      EcgFolderConfig(
          name='default',
          description='WFDB records at 500 Hz, no labels.',
      ),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put <csv_name> (default labels.csv) and <records_dir>/ (default records/)
  into the manual directory; see the builder's README.md.
  """
  pkg_dir_path = epath.Path(__file__).parent
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    features = {
        'id': tfds.features.Text(doc='Record id (the CSV id column).'),
        **self._median_beat_features(),
    }
    if config.label_columns:
      features['labels'] = tfds.features.Tensor(
          shape=(len(config.label_columns),), dtype=np.float32,
          doc='CSV label columns, label_columns order (NaN: missing).',
      )
    if config.survival:
      features['time'] = tfds.features.Scalar(
          np.float32, doc='Follow-up time (CSV units).'
      )
      features['event'] = tfds.features.Scalar(np.bool_, doc='Event seen.')
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            leads=list(ingest.LEADS),
            label_names=list(config.label_columns),
            sampling_rate_hz=float(config.sampling_rate),
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns SplitGenerators, one per value of the split column."""
    config = self.builder_config
    if config.file_format not in ('wfdb', 'npz'):
      raise ValueError(f'file_format must be wfdb or npz, got '
                       f'{config.file_format!r}.')
    root = os.fspath(dl_manager.manual_dir)
    table = read_table(os.path.join(root, config.csv_name), config)
    self._report = ingest.SkippedRecords(strict=self._strict)
    if config.split_column in table.columns:
      splits = sorted(table[config.split_column].unique())
    else:
      splits, table = ['train'], table.assign(**{config.split_column: 'train'})
    return {
        split: self._generate_examples(
            split, root, table[table[config.split_column] == split]
        )
        for split in splits
    }

  def _items(self, root: str, rows: pd.DataFrame) -> Iterator[ingest.Item]:
    config = self.builder_config
    folder = os.path.join(root, config.records_dir)
    for _, row in rows.iterrows():
      record_id = str(row[config.id_column])
      path = os.path.join(folder, record_id)
      if config.file_format == 'npz':
        load = lambda path=path: ingest.read_npz(path + '.npz')
      else:
        load = lambda path=path: ingest.read_wfdb(path)
      yield ingest.Item(record_id, load, row)

  def _generate_examples(
      self, split: str, root: str, rows: pd.DataFrame
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields (id, example) for the records of `rows`."""
    config = self.builder_config
    for item, strip, out in ingest.ingest(
        self._items(root, rows),
        split=split,
        report=self._report,
        fs=config.sampling_rate,
        num_samples=self._num_samples(),
        lead_names=tuple(config.lead_names),
        batch_size=self._batch_size,
    ):
      row = item.meta
      example = {
          'id': item.record_id,
          'beat': out['beat'],
          'qrs_onset': out['qrs_onset'],
          'num_beats': out['num_beats'],
      }
      if config.label_columns:
        example['labels'] = np.array(
            [row[c] for c in config.label_columns], np.float32
        )
      if config.survival:
        example['time'] = np.float32(row['time'])
        example['event'] = bool(row['event'])
      if config.with_strip:
        example['strip'] = strip
      yield item.record_id, example
    self._report.write(self.data_dir)
    self._report.warn(f'ecg_folder/{config.name} {split}')


def read_table(path: str, config: EcgFolderConfig) -> pd.DataFrame:
  """Reads and validates the cohort CSV.

  Args:
    path: the CSV file.
    config: names the id, label, survival and split columns.

  Returns:
    The table, ids as text, labels float, `time` float, `event` 0/1 int.

  Raises:
    FileNotFoundError: no CSV.
    ValueError naming the column: missing id/label/time/event column,
      duplicate or empty ids, non-numeric labels, non-numeric or negative
      times, events other than 0/1 (survival cells may not be empty).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found.')
  table = pd.read_csv(path, dtype={config.id_column: str})
  name = os.path.basename(path)
  required = [config.id_column, *config.label_columns]
  if config.survival:
    required += ['time', 'event']
  for column in required:
    if column not in table.columns:
      raise ValueError(f'{name}: missing column {column!r}.')
  ids = table[config.id_column]
  if ids.isna().any() or (ids.str.strip() == '').any():
    raise ValueError(f'{name}: column {config.id_column!r} has empty ids.')
  table[config.id_column] = ids.str.strip()
  duplicated = table[config.id_column].duplicated()
  if duplicated.any():
    first = table[config.id_column][duplicated].iloc[0]
    raise ValueError(f'{name}: column {config.id_column!r} repeats id '
                     f'{first!r}.')

  def numeric(column: str, allow_empty: bool) -> pd.Series:
    values = pd.to_numeric(table[column], errors='coerce')
    bad = values.isna() & (table[column].notna() | (not allow_empty))
    if bad.any():
      example = table[config.id_column][bad].iloc[0]
      raise ValueError(
          f'{name}: column {column!r} must be numeric'
          + ('' if allow_empty else ' and filled')
          + f' (row id {example!r}: {table[column][bad].iloc[0]!r}).'
      )
    return values.astype(float)

  for column in config.label_columns:
    table[column] = numeric(column, allow_empty=True)
  if config.survival:
    time = numeric('time', allow_empty=False)
    if (time < 0).any():
      raise ValueError(f'{name}: column \'time\' has negative values.')
    event = table['event']
    if event.dtype == object:
      event = event.astype(str).str.strip().str.lower().map(
          {'true': 1, 'false': 0, '1': 1, '0': 0, '1.0': 1, '0.0': 0}
      )
    event = pd.to_numeric(event, errors='coerce')
    if not event.isin([0, 1]).all():
      raise ValueError(f'{name}: column \'event\' must hold 0/1 (or '
                       'true/false) in every row.')
    table['time'], table['event'] = time, event.astype(int)
  if config.split_column in table.columns:
    splits = table[config.split_column]
    if splits.isna().any():
      raise ValueError(f'{name}: column {config.split_column!r} has empty '
                       'cells.')
    table[config.split_column] = splits.astype(str).str.strip()
  return table
