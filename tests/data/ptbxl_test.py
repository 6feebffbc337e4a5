"""Builds `ptbxl` from a PTB-XL-shaped fixture of simulated WFDB records."""

import os
import tempfile

from absl.testing import absltest
import jax
import pytest
import numpy as np
import pandas as pd
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import simulator
from factorecg_jax.data.ptbxl import ptbxl_dataset_builder as pb

_FOLDS = {1: 1, 2: 3, 3: 8, 4: 9, 5: 10, 6: 10, 7: 2}  # ecg_id -> strat_fold
_BAD_ID = 7  # its .dat file is missing
_SCP = {
    1: "{'NORM': 100.0, 'SR': 0.0}",
    2: "{'IMI': 50.0, 'LVH': 100.0}",
    3: "{'NDT': 100.0}",
    4: "{'CLBBB': 100.0, 'SR': 0.0}",
    5: "{'SR': 0.0}",
    6: "{'NORM': 80.0, 'IMI': 15.0}",
    7: "{'NORM': 100.0}",
}
_SUPER = {1: {'NORM'}, 2: {'MI', 'HYP'}, 3: {'STTC'}, 4: {'CD'}, 5: set(),
          6: {'NORM', 'MI'}}


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


def setUpModule():
  tfds.disable_progress_bar()


def _write_ptbxl(root: str, records: dict) -> None:
  """records500/00000/0000k_hr.{hea,dat} plus the two metadata CSVs."""
  rows = []
  for ecg_id, fold in _FOLDS.items():
    name = f'records500/00000/{ecg_id:05d}_hr'
    ingest.write_wfdb(os.path.join(root, name), records['strip'][ecg_id - 1],
                      500)
    rows.append(dict(
        ecg_id=ecg_id, patient_id=100.0 + ecg_id, age=40.0 + ecg_id,
        sex=ecg_id % 2, height=np.nan, scp_codes=_SCP[ecg_id],
        strat_fold=fold, filename_lr=f'records100/00000/{ecg_id:05d}_lr',
        filename_hr=name,
    ))
  os.remove(os.path.join(root, f'records500/00000/{_BAD_ID:05d}_hr.dat'))
  pd.DataFrame(rows).to_csv(os.path.join(root, 'ptbxl_database.csv'),
                            index=False)
  pd.DataFrame({
      'description': ['normal', 'inferior MI', 'LV hypertrophy', 'sinus',
                      'nonspecific T', 'LBBB'],
      'diagnostic': [1.0, 1.0, 1.0, np.nan, 1.0, 1.0],
      'diagnostic_class': ['NORM', 'MI', 'HYP', np.nan, 'STTC', 'CD'],
  }, index=['NORM', 'IMI', 'LVH', 'SR', 'NDT', 'CLBBB']).to_csv(
      os.path.join(root, 'scp_statements.csv'))
  # A PTB-XL+ median beat for record 1 only: its clean beat, 30 samples
  # late, as PTB-XL+ 1.0.1 ships them: in a thousand-record folder, the
  # header's record name with a folder (which wfdb refuses), microvolt
  # values under a 'mV' unit.
  plus = np.roll(records['beat_clean'][0], 30, axis=0)
  record = os.path.join(root, 'ptb-xl-plus/median_beats/12sl/00000/'
                        '00001_medians')
  ingest.write_wfdb(record, 1000.0 * plus, 500, adc_gain=1.0)
  with open(record + '.hea') as f:
    header = f.read()
  with open(record + '.hea', 'w') as f:
    f.write('ge_median_beats_wfdb/' + header)
  _write_plus_features(root, records)


# Records with a PTB-XL+ 12SL feature row (2 has none); 3 lacks its PR.
_PLUS_IDS = (1, 3, 4, 5, 6)


def _write_plus_features(root: str, records: dict) -> None:
  """ptb-xl-plus/features/12sl_features.csv in the PTB-XL+ layout.

  One row per ecg_id (not the first column), the 12SL names of
  pb.PLUS_FEATURE_COLUMNS['12sl'] in bpm, ms, mV and deg, and columns the
  builder does not read.
  """
  rows = []
  for ecg_id in _PLUS_IDS:
    values = records['measures'][ecg_id - 1]
    row = {'QRS_Count_Global': 10, 'ecg_id': ecg_id, 'P_Amp_II': 0.1}
    row.update(zip(pb.PLUS_FEATURE_COLUMNS['12sl'], map(float, values)))
    if ecg_id == 3:
      row['PR_Int_Global'] = np.nan
    rows.append(row)
  path = os.path.join(root, 'ptb-xl-plus/features/12sl_features.csv')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pd.DataFrame(rows).to_csv(path, index=False)


def _build(root, data_dir, config):
  builder = pb.Builder(config=config, data_dir=data_dir, batch_size=4,
                       file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root))
  return builder


class PtbxlTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.root = os.path.join(cls._tmp.name, 'ptb-xl')
    cls.records = jax.device_get(
        simulator.simulate_records(jax.random.key(5), len(_FOLDS),
                                   strips=True))
    assert 'measures' in cls.records
    _write_ptbxl(cls.root, cls.records)
    cls.data_dir = os.path.join(cls._tmp.name, 'data')
    cls.builder = _build(cls.root, cls.data_dir, 'default')

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _read(self, name, split, data_dir=None):
    source = tfds.data_source(name, split=split,
                              data_dir=data_dir or self.data_dir)
    return {int(ex['ecg_id']): ex for ex in (source[i] for i in
                                            range(len(source)))}

  def test_folds_make_the_benchmark_splits(self):
    expected = {'train': {1, 2, 3}, 'validation': {4}, 'test': {5, 6}}
    for split, ids in expected.items():
      read = self._read('ptbxl/default', split)
      self.assertEqual(set(read), ids, split)
      for ecg_id, ex in read.items():
        self.assertEqual(int(ex['strat_fold']), _FOLDS[ecg_id])

  def test_labels_and_demographics(self):
    read = {}
    for split in ('train', 'validation', 'test'):
      read.update(self._read('ptbxl/default', split))
    for ecg_id, ex in read.items():
      supers = {s for s, on in zip(pb.SUPERCLASSES, ex['superclass']) if on}
      self.assertEqual(supers, _SUPER[ecg_id], ecg_id)
      codes = {c for c, on in zip(pb.SCP_CODES, ex['labels']) if on}
      self.assertEqual(codes, set(pb.parse_scp_codes(_SCP[ecg_id])))
      self.assertEqual(int(ex['sex']), ecg_id % 2)
      self.assertAlmostEqual(float(ex['age']), 40.0 + ecg_id)
      self.assertEqual(int(ex['patient_id']), 100 + ecg_id)
      self.assertEqual(ex['strip'].shape, (5000, 12))
      np.testing.assert_allclose(
          ex['strip'], self.records['strip'][ecg_id - 1], atol=1e-3)
      corr = np.corrcoef(ex['beat'][150:450].ravel(),
                         self.records['beat_clean'][ecg_id - 1][150:450]
                         .ravel())[0, 1]
      self.assertGreater(corr, 0.98)
      self.assertEqual(int(ex['beat_source']), 0)

  def test_bad_record_is_reported(self):
    rows = ingest.read_report(self.builder.data_dir)
    self.assertEqual([(r[0], r[1], r[2]) for r in rows],
                     [(str(_BAD_ID), 'train', 'missing_signal_file')])
    total = sum(s.num_examples for s in self.builder.info.splits.values())
    self.assertEqual(total + len(rows), len(_FOLDS))

  def test_ptbxl_plus_beats_are_used_and_aligned(self):
    data_dir = os.path.join(self._tmp.name, 'plus')
    _build(self.root, data_dir, 'ptbxl_plus')
    read = self._read('ptbxl/ptbxl_plus', 'train', data_dir)
    sources = {k: int(v['beat_source']) for k, v in read.items()}
    self.assertEqual(sources, {1: 1, 2: 0, 3: 0})
    computed = self._read('ptbxl/default', 'train')[1]['beat']
    plus = read[1]['beat']
    # The clean beat, shifted back onto the computed beat's QRS onset.
    clean = self.records['beat_clean'][0]
    np.testing.assert_allclose(plus[150:450], clean[150:450], atol=0.02)
    self.assertGreater(
        np.corrcoef(plus[150:450].ravel(), computed[150:450].ravel())[0, 1],
        0.98)

  def test_plus_beats_in_microvolts_are_converted_only_then(self):
    reference = self.records['beat_clean'][0]
    np.testing.assert_allclose(pb.to_millivolts(1000.0 * reference,
                                                reference), reference,
                               rtol=1e-6, atol=1e-6)
    # A beat in mV, even twice as large or small, is left as it is.
    for scale in (0.5, 1.0, 2.0):
      np.testing.assert_array_equal(
          pb.to_millivolts(scale * reference, reference), scale * reference)
    # A flat reference decides nothing.
    np.testing.assert_array_equal(
        pb.to_millivolts(reference, np.zeros_like(reference)), reference)

  def test_ptbxl_plus_measures_come_through(self):
    data_dir = os.path.join(self._tmp.name, 'measures')
    _build(self.root, data_dir, 'plus_measures')
    read = {}
    for split in ('train', 'validation', 'test'):
      read.update(self._read('ptbxl/plus_measures', split, data_dir))
    self.assertEqual(set(read), {1, 2, 3, 4, 5, 6})
    for ecg_id, ex in read.items():
      got = ex['measures']
      self.assertEqual(got.shape, (simulator.NUM_MEASURES,))
      self.assertEqual(got.dtype, np.float32)
      if ecg_id not in _PLUS_IDS:
        self.assertTrue(np.isnan(got).all(), ecg_id)
        continue
      expected = np.array(self.records['measures'][ecg_id - 1])
      if ecg_id == 3:
        expected[simulator.MEASURE_NAMES.index('pr_ms')] = np.nan
      np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The other configs keep their features.
    self.assertNotIn('measures', self._read('ptbxl/default', 'test')[5])

  def test_plus_measures_need_the_feature_table(self):
    config = pb.PtbxlConfig(name='x', plus_features='12sl',
                            ptbxl_plus_dir='nowhere')
    with self.assertRaisesRegex(FileNotFoundError, 'nowhere'):
      pb.read_plus_measures(self.root, config)
    config = pb.PtbxlConfig(name='x', plus_features='ecgdeli')
    with self.assertRaisesRegex(FileNotFoundError, 'ecgdeli_features'):
      pb.read_plus_measures(self.root, config)
    with self.assertRaisesRegex(ValueError, 'must be one of'):
      pb.read_plus_measures(self.root, pb.PtbxlConfig(name='x',
                                                      plus_features='muse'))

  def test_scp_codes_are_parsed_as_literals_only(self):
    self.assertEqual(pb.parse_scp_codes("{'NORM': 100.0}"), ['NORM'])
    with self.assertRaises(ValueError):
      pb.parse_scp_codes("__import__('os').system('true')")

  def test_missing_database_column_fails_up_front(self):
    root = os.path.join(self._tmp.name, 'broken')
    os.makedirs(root)
    table = pd.read_csv(os.path.join(self.root, 'ptbxl_database.csv'))
    table.drop(columns='strat_fold').to_csv(
        os.path.join(root, 'ptbxl_database.csv'), index=False)
    with self.assertRaisesRegex(ValueError, "missing column 'strat_fold'"):
      pb.read_metadata(root)


if __name__ == '__main__':
  absltest.main()
