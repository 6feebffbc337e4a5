"""Builds `deepfake_ecg` from a simulated fixture in the DeepFake-ECG layout."""

import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from factorecg_jax.data import ingest
from factorecg_jax.data import simulator
from factorecg_jax.data import sources
from factorecg_jax.data.deepfake_ecg import deepfake_ecg_dataset_builder as db

_IDS = ('11', '12', '13', '14', '15')
_ASC_COLUMNS = [0, 1] + list(range(6, 12))  # I, II, V1..V6 of LEADS

# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


def setUpModule():
  tfds.disable_progress_bar()


def _write_fixture(root, records, missing):
  """<root>/ecgs/<id>.asc (uV integers) and a ';'-separated MUSE CSV.

  The CSV uses MUSE names in mixed case (R_PeakAmpl_v5 as Storas et al.),
  amplitudes in uV; record `missing` has no .asc file, and the second record
  has no PR and no ST-J value.
  """
  os.makedirs(os.path.join(root, 'ecgs'))
  rows = []
  for k, record_id in enumerate(_IDS):
    m = {key: np.asarray(v)[k] for key, v in records['measurements'].items()}
    if record_id != missing:
      uv = np.round(records['strip'][k][:, _ASC_COLUMNS] * 1000.0)
      np.savetxt(os.path.join(root, 'ecgs', f'{record_id}.asc'),
                 uv.astype(np.int64), fmt='%d')
    v5 = simulator.LEAD_INDEX['V5']
    rows.append(dict(
        patid=record_id, VentRate=float(m['hr_bpm']),
        pr=np.nan if k == 1 else float(m['pr_ms']), qrs=float(m['qrs_ms']),
        qt=float(m['qt_ms']), QTCorrected=float(m['qtc_bazett_ms']),
        R_PeakAmpl_v5=1000.0 * float(m['r_amp'][v5]),
        T_PeakAmpl_v5=1000.0 * float(m['t_amp'][v5]),
        STJ_v5=np.nan if k == 1 else 1000.0 * float(m['st_j'][v5]),
        RAxis=float(m['qrs_axis_deg'])))
  pd.DataFrame(rows).to_csv(os.path.join(root, 'ground_truth.csv'),
                            sep=';', index=False)


class DeepfakeEcgTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.root = os.path.join(cls._tmp.name, 'deepfake')
    cls.records = jax.device_get(simulator.simulate_records(
        jax.random.key(3), len(_IDS), strips=True,
        fields=('strip', 'beat_clean', 'measurements', 'measures')))
    cls.config = db.DeepfakeEcgConfig(
        name='fixture', ecg_dir='ecgs', ground_truth='ground_truth.csv',
        validation_fraction=0.2, test_fraction=0.2)
    cls.split_of = db.assign_splits(_IDS, cls.config)
    # The record without a file sits in 'train' (3 records), so every
    # split keeps at least one readable ECG.
    cls.missing = sorted(i for i, s in cls.split_of.items()
                         if s == 'train')[0]
    _write_fixture(cls.root, cls.records, cls.missing)
    cls.data_dir = os.path.join(cls._tmp.name, 'data')
    cls.builder = db.Builder(config=cls.config, data_dir=cls.data_dir,
                             batch_size=4, file_format='array_record')
    cls.builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=cls.root))

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _read_all(self):
    read = {}
    for split in db.SPLITS:
      source = sources.TfdsSource('deepfake_ecg/fixture', split,
                                  data_dir=self.data_dir, download=False)
      batch = source.get_batch(np.arange(len(source)))
      for j, record_id in enumerate(batch['id']):
        record_id = record_id.decode() if isinstance(record_id, bytes) else (
            str(record_id))
        read[record_id] = ({k: v[j] for k, v in batch.items()}, split)
    return read

  def test_splits_are_deterministic_and_skip_the_missing_file(self):
    read = self._read_all()
    self.assertEqual(set(read), set(_IDS) - {self.missing})
    for record_id, (_, split) in read.items():
      self.assertEqual(split, self.split_of[record_id])
    self.assertEqual(db.assign_splits(reversed(_IDS), self.config),
                     self.split_of)
    self.assertEqual(sorted(self.split_of.values()).count('test'), 1)
    rows = ingest.read_report(self.builder.data_dir)
    self.assertEqual([r[:3] for r in rows],
                     [(self.missing, 'train', 'no_record')])

  def test_strip_units_leads_and_median_beat(self):
    for record_id, (ex, _) in self._read_all().items():
      k = _IDS.index(record_id)
      strip = ex['strip']
      self.assertEqual(strip.shape, (5000, 12))
      self.assertEqual(strip.dtype, np.float32)
      self.assertEqual(ex['beat'].shape, (600, 12))
      # uV integers back in mV: within half a uV on I, II, V1-V6, and the
      # derived limb leads within 1.5 uV of the simulator's.
      np.testing.assert_allclose(strip, self.records['strip'][k], atol=1.6e-3)
      lead = {name: strip[:, i] for i, name in enumerate(simulator.LEADS)}
      np.testing.assert_allclose(lead['III'], lead['II'] - lead['I'],
                                 atol=1e-6)
      np.testing.assert_allclose(lead['aVR'], -(lead['I'] + lead['II']) / 2,
                                 atol=1e-6)
      np.testing.assert_allclose(lead['aVL'], lead['I'] - lead['II'] / 2,
                                 atol=1e-6)
      np.testing.assert_allclose(lead['aVF'], lead['II'] - lead['I'] / 2,
                                 atol=1e-6)
      clean = self.records['beat_clean'][k]
      corr = np.corrcoef(ex['beat'][150:450].ravel(),
                         clean[150:450].ravel())[0, 1]
      self.assertGreater(corr, 0.98)

  def test_measures_map_from_the_csv_in_physical_units(self):
    for record_id, (ex, _) in self._read_all().items():
      k = _IDS.index(record_id)
      expected = np.array(self.records['measures'][k], np.float32)
      if k == 1:  # no PR, no ST-J
        expected[simulator.MEASURE_NAMES.index('pr_ms')] = np.nan
        expected[simulator.MEASURE_NAMES.index('st_j_v5_mv')] = np.nan
      self.assertEqual(ex['measures'].shape, (simulator.NUM_MEASURES,))
      np.testing.assert_allclose(ex['measures'], expected, rtol=1e-5,
                                 atol=1e-6)

  def test_rate_falls_back_to_rr_and_absent_columns_are_nan(self):
    table = pd.DataFrame({'avgrrinterval': [800.0, 1000.0], 'QRS': [90, 100]},
                         index=['a', 'b'])
    out = db.measures_from_table(table)
    names = simulator.MEASURE_NAMES
    np.testing.assert_allclose(out['a'][names.index('hr_bpm')], 75.0)
    np.testing.assert_allclose(out['b'][names.index('qrs_ms')], 100.0)
    others = [i for i, n in enumerate(names) if n not in ('hr_bpm', 'qrs_ms')]
    self.assertTrue(np.isnan(out['a'][others]).all())

  def test_bad_asc_and_csv_fail_clearly(self):
    path = os.path.join(self._tmp.name, 'bad.asc')
    np.savetxt(path, np.zeros((10, 12)), fmt='%d')
    with self.assertRaisesRegex(ingest.RecordError, '12 columns, not 8'):
      db.read_asc(path)
    csv = os.path.join(self._tmp.name, 'no_id.csv')
    pd.DataFrame({'qt': [400]}).to_csv(csv, index=False)
    with self.assertRaisesRegex(ValueError, "missing column 'patid'"):
      db.read_ground_truth(csv, 'patid')


if __name__ == '__main__':
  absltest.main()
